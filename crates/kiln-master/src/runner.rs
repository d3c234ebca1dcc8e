//! Runs one claimed build request on its worker: makes the build row, walks the build's
//! state machine ([`kiln_engine::build::BuildMachine`]) step by step through
//! [`crate::steps::run_step`], stores every step, log and property, and ends the build and its
//! request (a RETRY build's request goes back to the queue).
//!
//! A build runs on the builder definition it started with: it holds its own `Arc` of the
//! config, so a reconfig that changes or removes the builder does not touch it.

use std::collections::BTreeMap;
use std::sync::Arc;

use kiln_config::{MasterConfig, SourceAttrs};
use kiln_engine::build::{Action, BuildMachine, BuildOutcome, StepDef};
use kiln_engine::distributor::Assignment;
use kiln_engine::results::{StepEnd, StepFlags};
use kiln_model::{BuildId, LogId, LogType, Properties, Results, StepId};
use kiln_store::{NewBuild, Store};
use tokio::sync::watch;

use crate::master::Inner;
use crate::remote::{BoxFuture, Remote, join_worker_path};
use crate::steps::{LogHandle, StepCtx, StepLogs, Triggerer};

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
        tracing::info!("builder {builder_name:?} is gone from the config; request {} waits", a.request.0);
        return Ok(None);
    };
    let Some(worker_name) = inner.worker_name(a.worker) else {
        return Ok(None);
    };
    let Some(conn) = inner.endpoint.get(&worker_name) else {
        return Ok(None);
    };
    if conn.ping().await.is_err() {
        tracing::warn!("worker {worker_name} did not answer the ping; request {} goes back", a.request.0);
        return Ok(None);
    }
    let store = &inner.store;
    let req = store
        .get_build_request(a.request)
        .await?
        .ok_or_else(|| anyhow::anyhow!("build request {} vanished", a.request.0))?;
    let bs = store
        .get_buildset(req.buildsetid)
        .await?
        .ok_or_else(|| anyhow::anyhow!("buildset {} vanished", req.buildsetid.0))?;
    let mut sources: BTreeMap<String, SourceAttrs> = BTreeMap::new();
    for ssid in &bs.sourcestamps {
        if let Some(ss) = store.get_sourcestamp(*ssid).await? {
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
    }
    let now = inner.now();
    let (build_id, number) = store
        .add_build(
            &NewBuild {
                builderid: a.builder,
                buildrequestid: a.request,
                workerid: a.worker,
                masterid: inner.master_id,
                state_string: "building".into(),
            },
            now,
        )
        .await?;
    inner.build_started(a.request, build_id);

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
    props.update(&store.get_buildset_properties(req.buildsetid).await?);
    let builddir = bcfg.builddir.clone().unwrap_or_else(|| bcfg.name.clone());
    let builder_dir = join_worker_path(conn.is_windows(), conn.basedir(), &builddir);
    props.set("buildername", bcfg.name.clone(), "Builder");
    props.set("buildnumber", number, "Build");
    props.set("workername", worker_name.clone(), "Worker");
    props.set("builddir", builder_dir.clone(), "Worker");
    if let Some(src) = sources.get("").or_else(|| sources.values().next()) {
        props.set("branch", src.branch.clone().map_or(serde_json::Value::Null, Into::into), "Build");
        props.set("revision", src.revision.clone().map_or(serde_json::Value::Null, Into::into), "Build");
        props.set("repository", src.repository.clone().unwrap_or_default(), "Build");
        props.set("project", src.project.clone().unwrap_or_default(), "Build");
        props.set("codebase", src.codebase.clone().unwrap_or_default(), "Build");
    }
    store.set_build_properties(build_id, &props).await?;
    let props_at_start = props.clone();

    let defs = bcfg
        .steps
        .iter()
        .map(|s| StepDef { name: s.name.clone(), flags: engine_flags(s) })
        .collect();
    let mut machine = BuildMachine::new(defs);
    let redactor = config.redactor();
    let triggerer = BuildTriggerer { inner: inner.clone(), build: build_id };
    let (_keep_no_stop, no_stop) = watch::channel(None);
    let outcome = loop {
        if let Some(reason) = stop.borrow().clone() {
            machine.stop(&reason);
        }
        match machine.next_action() {
            Action::StartStep(i) => {
                let step = &bcfg.steps[i];
                let (step_id, _, _) = store.add_step(build_id, &step.name).await?;
                store.start_step(step_id, inner.now()).await?;
                let skip = step.flags.do_step_if.as_ref().is_some_and(|c| !c.eval(&props));
                // After a stop, `always_run` steps still run to their end.
                let step_stop = if stop.borrow().is_some() { no_stop.clone() } else { stop.clone() };
                // Step locks: wait for them, unless the build is stopped meanwhile.
                let mut held = None;
                let mut cancelled_waiting = false;
                if !skip && !step.flags.locks.is_empty() {
                    let _ = store.set_step_state_string(step_id, "waiting for locks").await;
                    let mut stop_w = step_stop.clone();
                    tokio::select! {
                        h = inner.step_locks.acquire(&step.flags.locks, &worker_name) => held = Some(h),
                        _ = stop_w.wait_for(|s| s.is_some()) => cancelled_waiting = true,
                    }
                }
                let end = if skip {
                    StepEnd::Skipped
                } else if cancelled_waiting {
                    StepEnd::Cancelled
                } else {
                    let mut logs = StoreLogs {
                        store: store.clone(),
                        step: step_id,
                        redactor: redactor.clone(),
                        metrics: inner.metrics.clone(),
                    };
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
                if skip {
                    let _ = store.set_step_state_string(step_id, "skipped").await;
                }
                store.finish_step(step_id, r, skip, inner.now()).await?;
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
    store.set_build_state_string(build_id, &outcome.state_string).await?;
    store.finish_build(build_id, outcome.results, inner.now()).await?;
    Ok(Some((build_id, outcome)))
}

/// Step logs in the store, with secrets redacted on the way in.
struct StoreLogs {
    store: Store,
    step: StepId,
    redactor: kiln_config::Redactor,
    metrics: crate::api::Metrics,
}

impl StepLogs for StoreLogs {
    fn add_log(&mut self, name: &str, log_type: LogType) -> BoxFuture<'_, anyhow::Result<LogHandle>> {
        let name = name.to_string();
        Box::pin(async move {
            let id = self.store.add_log(self.step, &name, log_type).await?;
            Ok(LogHandle(id.0))
        })
    }

    fn append(&mut self, log: LogHandle, text: &str) -> BoxFuture<'_, anyhow::Result<()>> {
        self.metrics.log_bytes_received(text.len() as u64);
        let text = if self.redactor.is_empty() { text.to_string() } else { self.redactor.redact(text) };
        Box::pin(async move {
            self.store.append_log(LogId(log.0), &text).await?;
            Ok(())
        })
    }

    fn finish(&mut self, log: LogHandle) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            self.store.finish_log(LogId(log.0), true).await?;
            Ok(())
        })
    }

    fn set_state_string(&mut self, text: &str) -> BoxFuture<'_, anyhow::Result<()>> {
        let text = self.redactor.redact(text);
        Box::pin(async move {
            self.store.set_step_state_string(self.step, &text).await?;
            Ok(())
        })
    }

    fn add_url(&mut self, name: &str, url: &str) -> BoxFuture<'_, anyhow::Result<()>> {
        let (name, url) = (name.to_string(), url.to_string());
        Box::pin(async move {
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
