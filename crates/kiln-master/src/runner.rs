//! Runs one claimed build request on its worker: makes the build row, walks the build's
//! state machine ([`kiln_engine::build::BuildMachine`]) step by step through
//! [`crate::steps::run_step`], stores every step, log and property, and ends the build and its
//! request (a RETRY build's request goes back to the queue).
//!
//! A build runs on the builder definition it started with: it holds its own `Arc` of the
//! config, so a reconfig that changes or removes the builder does not touch it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use kiln_config::{MasterConfig, SourceAttrs};
use kiln_engine::build::{Action, BuildMachine, BuildOutcome, StepDef};
use kiln_engine::distributor::Assignment;
use kiln_engine::results::{StepEnd, StepFlags};
use kiln_model::{BuildId, LogId, LogType, Properties, Results, StepId};
use kiln_store::{LogWriter, NewBuild, Store};
use tokio::sync::watch;

use crate::farm::Inner;
use crate::steps::{LogHandle, StepCtx, StepLogs, Triggerer};
use kiln_remote::{BoxFuture, join_worker_path};

/// Engine flags of a configured step. Shell-like steps count WARNINGS towards the build,
/// as Buildbot's `ShellCommand`-derived steps (`warnOnWarnings`) do.
fn engine_flags(step: &kiln_config::Step) -> StepFlags {
    use kiln_config::StepKind as K;
    let shellish = matches!(
        step.kind,
        K::Shell(_) | K::Configure(_) | K::Compile(_) | K::Test(_) | K::Git(_)
    );
    StepFlags {
        halt_on_failure: step.flags.halt_on_failure,
        flunk_on_failure: step.flags.flunk_on_failure,
        warn_on_failure: step.flags.warn_on_failure,
        always_run: step.flags.always_run,
        warn_on_warnings: shellish || StepFlags::default().warn_on_warnings,
        ..StepFlags::default()
    }
}

/// What the distributor hands a build task.
pub(crate) struct Claimed {
    pub assignment: Assignment,
    pub stop: watch::Receiver<Option<String>>,
}

/// Runs the build to its end; never panics on store errors (they end the build EXCEPTION
/// where possible, and the request is requeued if no build row could be made).
pub(crate) async fn run(inner: Arc<Inner>, claimed: Claimed) {
    let a = claimed.assignment.clone();
    let request = a.request;
    match run_inner(&inner, claimed).await {
        Ok(Some((build, outcome))) => {
            tracing::info!(
                "build {} ({}) finished: {:?} {}",
                build.0,
                request.0,
                outcome.results,
                outcome.state_string
            );
            inner.build_ended(a, outcome).await;
        }
        Ok(None) => inner.requeue_unstarted(a).await,
        Err(e) => {
            tracing::error!("build request {}: {e:#}", request.0);
            if inner.build_of(request).is_some() {
                // The build row exists: end it EXCEPTION rather than leave it "running".
                inner.build_crashed(a).await;
            } else {
                inner.requeue_unstarted(a).await;
            }
        }
    }
}

/// `Ok(None)`: the build never started (worker gone, builder removed): requeue.
async fn run_inner(
    inner: &Arc<Inner>,
    claimed: Claimed,
) -> anyhow::Result<Option<(BuildId, BuildOutcome)>> {
    let a = &claimed.assignment;
    let mut stop = claimed.stop;
    let config: Arc<MasterConfig> = inner.config();
    let Some(builder_name) = inner.builder_name(a.builder) else {
        return Ok(None);
    };
    let Some(bcfg) = config.builder(&builder_name).cloned() else {
        tracing::info!(
            "builder {builder_name:?} is gone from the config; request {} waits",
            a.request.0
        );
        return Ok(None);
    };
    let Some(worker_name) = inner.worker_name(a.worker) else {
        return Ok(None);
    };
    let Some(conn) = inner.workers.get(&worker_name) else {
        return Ok(None);
    };
    // Buildbot pings a worker before every build; a worker heard from a moment ago (the
    // last build's final update) is known to be there.
    if !conn.heard_within(std::time::Duration::from_secs(1)) && conn.ping().await.is_err() {
        tracing::warn!(
            "worker {worker_name} did not answer the ping; request {} goes back",
            a.request.0
        );
        return Ok(None);
    }
    let store = &inner.store;
    // What the build needs of its request; from memory when this master submitted it.
    let context = inner.queue.request_context(a.request).await?;
    let mut sources: BTreeMap<String, SourceAttrs> = BTreeMap::new();
    for ss in &context.sourcestamps {
        sources.insert(
            ss.codebase.clone(),
            SourceAttrs {
                branch: ss.branch.clone(),
                revision: ss.revision.clone(),
                repository: Some(ss.repository.clone()),
                project: Some(ss.project.clone()),
                codebase: Some(ss.codebase.clone()),
            },
        );
    }

    // Properties, lowest priority first: buildset (scheduler, force form, change), builder,
    // worker, then the build's own (Buildbot's order puts the buildset's on top of the
    // builder's and worker's; we do the same by applying it last).
    let mut props = Properties::default();
    for (k, v) in &bcfg.properties {
        props.set(k.clone(), v.clone(), "Builder");
    }
    if let Some(w) = config.worker(&worker_name) {
        for (k, v) in &w.properties {
            props.set(k.clone(), v.clone(), "Worker");
        }
    }
    props.update(&context.properties);
    let builddir = bcfg.builddir.clone().unwrap_or_else(|| bcfg.name.clone());
    let builder_dir = join_worker_path(conn.is_windows(), conn.basedir(), &builddir);
    props.set("buildername", bcfg.name.clone(), "Builder");
    props.set("workername", worker_name.clone(), "Worker");
    props.set("builddir", builder_dir.clone(), "Worker");
    if let Some(src) = sources.get("").or_else(|| sources.values().next()) {
        props.set(
            "branch",
            src.branch
                .clone()
                .map_or(serde_json::Value::Null, Into::into),
            "Build",
        );
        props.set(
            "revision",
            src.revision
                .clone()
                .map_or(serde_json::Value::Null, Into::into),
            "Build",
        );
        props.set(
            "repository",
            src.repository.clone().unwrap_or_default(),
            "Build",
        );
        props.set("project", src.project.clone().unwrap_or_default(), "Build");
        props.set(
            "codebase",
            src.codebase.clone().unwrap_or_default(),
            "Build",
        );
    }
    // The build row and its properties (with `buildnumber`) in one transaction.
    let (build_id, _number) = store
        .add_build_with_properties(
            &NewBuild {
                builderid: a.builder,
                buildrequestid: a.request,
                workerid: a.worker,
                masterid: inner.master_id,
                state_string: "building".into(),
            },
            &mut props,
            inner.now(),
        )
        .await?;
    inner.build_started(a.request, build_id);
    let props_at_start = props.clone();

    let defs = bcfg
        .steps
        .iter()
        .map(|s| StepDef {
            name: s.name.clone(),
            flags: engine_flags(s),
        })
        .collect();
    let mut machine = BuildMachine::new(defs);
    let redactor = config.redactor();
    let triggerer = BuildTriggerer {
        inner: inner.clone(),
        build: build_id,
    };
    let (_keep_no_stop, no_stop) = watch::channel(None);
    let mut step_names: HashSet<String> = HashSet::new();
    let mut step_number = 0i64;
    let outcome = loop {
        if let Some(reason) = stop.borrow().clone() {
            machine.stop(&reason);
        }
        match machine.next_action() {
            Action::StartStep(i) => {
                let step = &bcfg.steps[i];
                // The runner is its build's only step writer: it numbers and names the steps
                // itself (a repeated name gets `_2`, `_3` … as in Buildbot).
                let mut name = step.name.clone();
                let mut k = 1;
                while !step_names.insert(name.clone()) {
                    k += 1;
                    name = format!("{}_{k}", step.name);
                }
                let skip = step
                    .flags
                    .do_step_if
                    .as_ref()
                    .is_some_and(|c| !c.eval(&props));
                let first_state = if skip {
                    "skipped".to_string()
                } else if step.flags.locks.is_empty() {
                    redactor.redact(&crate::steps::running_text(step))
                } else {
                    "waiting for locks".to_string()
                };
                let step_id = store
                    .add_started_step(build_id, step_number, &name, &first_state, inner.now())
                    .await?;
                step_number += 1;
                // After a stop, `always_run` steps still run to their end.
                let step_stop = if stop.borrow().is_some() {
                    no_stop.clone()
                } else {
                    stop.clone()
                };
                // Step locks: wait for them, unless the build is stopped meanwhile.
                let mut held = None;
                let mut cancelled_waiting = false;
                if !skip && !step.flags.locks.is_empty() {
                    let mut stop_w = step_stop.clone();
                    tokio::select! {
                        h = inner.step_locks.acquire(&step.flags.locks, &worker_name) => held = Some(h),
                        _ = stop_w.wait_for(|s| s.is_some()) => cancelled_waiting = true,
                    }
                }
                let mut logs = StoreLogs {
                    store: store.clone(),
                    step: step_id,
                    redactor: redactor.clone(),
                    metrics: inner.metrics.clone(),
                    writers: HashMap::new(),
                    state: first_state,
                    deferred_state: None,
                };
                let end = if skip {
                    StepEnd::Skipped
                } else if cancelled_waiting {
                    StepEnd::Cancelled
                } else {
                    let mut ctx = StepCtx {
                        remote: conn.as_ref(),
                        builder_name: &bcfg.name,
                        builder_dir: builder_dir.clone(),
                        properties: &mut props,
                        sources: &sources,
                        secrets: &config.secrets,
                        builder_env: &bcfg.env,
                        logs: &mut logs,
                        master_dir: inner.basedir.clone(),
                        stop: step_stop.clone(),
                        triggerer: &triggerer,
                    };
                    crate::steps::run_step(step, &mut ctx).await
                };
                drop(held);
                if end == StepEnd::ConnectionLost {
                    machine.worker_lost();
                }
                if let Some(reason) = stop.borrow().clone() {
                    machine.stop(&reason);
                }
                let r = machine.step_finished(i, end);
                // The step's last state string goes in with its result.
                let state = logs.deferred_state.take();
                store
                    .finish_step_with_state(step_id, r, skip, state.as_deref(), inner.now())
                    .await?;
            }
            Action::Wait => {
                // Steps run one at a time here, so there is never a step to wait for.
                let _ = stop.changed().await;
            }
            Action::Finished(o) => break o,
        }
    };
    if props != props_at_start {
        store.set_build_properties(build_id, &props).await?;
    }
    store
        .finish_build_with_state(
            build_id,
            outcome.results,
            Some(&outcome.state_string),
            inner.now(),
        )
        .await?;
    Ok(Some((build_id, outcome)))
}

/// Step logs in the store, with secrets redacted on the way in. Each open log has its
/// [`LogWriter`], which writes one batch in the background while the step reads the next
/// from the worker (at most one batch per log in flight, so memory stays bounded).
///
/// A state string is written with the next store write of the step, or with its result
/// (the runner takes `deferred_state`): a step sets one when it starts, which the step row
/// already has, and one when it ends.
struct StoreLogs {
    store: Store,
    step: StepId,
    redactor: kiln_config::Redactor,
    metrics: crate::Metrics,
    writers: HashMap<i64, LogSlot>,
    /// The state string in the step row.
    state: String,
    deferred_state: Option<String>,
}

/// Batches at least this big are written in the background.
const BACKGROUND_APPEND: usize = 64 * 1024;

/// A log's writer, idle or busy with a batch.
enum LogSlot {
    Idle(LogWriter),
    Writing(tokio::task::JoinHandle<(LogWriter, anyhow::Result<()>)>),
}

impl LogSlot {
    /// The writer, once its batch in flight (if any) is written; that batch's error, if any.
    async fn settle(self) -> anyhow::Result<LogWriter> {
        match self {
            LogSlot::Idle(w) => Ok(w),
            LogSlot::Writing(task) => {
                let (w, r) = task
                    .await
                    .map_err(|e| anyhow::anyhow!("log writer task: {e}"))?;
                r.map(|()| w)
            }
        }
    }
}

impl StoreLogs {
    async fn write_deferred_state(&mut self) -> anyhow::Result<()> {
        if let Some(s) = self.deferred_state.take() {
            self.store.set_step_state_string(self.step, &s).await?;
            self.state = s;
        }
        Ok(())
    }
}

impl StepLogs for StoreLogs {
    fn add_log(
        &mut self,
        name: &str,
        log_type: LogType,
    ) -> BoxFuture<'_, anyhow::Result<LogHandle>> {
        let name = name.to_string();
        Box::pin(async move {
            self.write_deferred_state().await?;
            let w = self
                .store
                .add_log_writer(self.step, &name, log_type)
                .await?;
            let id = w.id();
            self.writers.insert(id.0, LogSlot::Idle(w));
            Ok(LogHandle(id.0))
        })
    }

    fn append(&mut self, log: LogHandle, text: String) -> BoxFuture<'_, anyhow::Result<()>> {
        self.metrics.log_bytes_received(text.len() as u64);
        let text = if self.redactor.is_empty() {
            text
        } else {
            self.redactor.redact(&text)
        };
        Box::pin(async move {
            self.write_deferred_state().await?;
            match self.writers.remove(&log.0) {
                Some(slot) => {
                    let mut w = slot.settle().await?;
                    if text.len() < BACKGROUND_APPEND {
                        // Small: a task of its own would cost more than it saves.
                        let r = w.append(&text).await;
                        self.writers.insert(log.0, LogSlot::Idle(w));
                        r?;
                        return Ok(());
                    }
                    let task = tokio::spawn(async move {
                        let r = w
                            .append(&text)
                            .await
                            .map(|_| ())
                            .map_err(anyhow::Error::from);
                        (w, r)
                    });
                    self.writers.insert(log.0, LogSlot::Writing(task));
                }
                None => {
                    self.store.append_log(LogId(log.0), &text).await?;
                }
            }
            Ok(())
        })
    }

    fn finish(&mut self, log: LogHandle) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            match self.writers.remove(&log.0) {
                Some(slot) => slot.settle().await?.finish().await?,
                None => self.store.finish_log(LogId(log.0), true).await?,
            }
            Ok(())
        })
    }

    fn set_state_string(&mut self, text: &str) -> BoxFuture<'_, anyhow::Result<()>> {
        let text = self.redactor.redact(text);
        if text == self.state {
            self.deferred_state = None;
        } else {
            self.deferred_state = Some(text);
        }
        Box::pin(async { Ok(()) })
    }

    fn add_url(&mut self, name: &str, url: &str) -> BoxFuture<'_, anyhow::Result<()>> {
        let (name, url) = (name.to_string(), url.to_string());
        Box::pin(async move {
            self.write_deferred_state().await?;
            self.store.add_step_url(self.step, &name, &url).await?;
            Ok(())
        })
    }
}

/// `trigger` steps: buildsets through the master's triggerable schedulers.
struct BuildTriggerer {
    inner: Arc<Inner>,
    build: BuildId,
}

impl Triggerer for BuildTriggerer {
    fn trigger(
        &self,
        scheduler_names: &[String],
        properties: Properties,
        sources: BTreeMap<String, SourceAttrs>,
        wait: bool,
    ) -> BoxFuture<'_, anyhow::Result<Results>> {
        let names = scheduler_names.to_vec();
        Box::pin(async move {
            let specs: Vec<kiln_engine::schedulers::SourceSpec> = sources
                .iter()
                .map(|(cb, s)| kiln_engine::schedulers::SourceSpec {
                    codebase: cb.clone(),
                    repository: s.repository.clone().unwrap_or_default(),
                    branch: s.branch.clone(),
                    revision: s.revision.clone(),
                    project: s.project.clone().unwrap_or_default(),
                })
                .collect();
            let mut buildsets = Vec::new();
            for name in &names {
                let bs = self
                    .inner
                    .trigger_request(name, self.build, specs.clone(), &properties, wait)
                    .await?;
                buildsets.push(bs);
            }
            if !wait {
                return Ok(Results::Success);
            }
            let mut worst = Results::Success;
            for bs in buildsets {
                worst = worst.worst(self.inner.wait_for_buildset(bs).await?);
            }
            Ok(worst)
        })
    }
}
