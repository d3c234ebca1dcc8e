//! One build, from its order to its result: a pure plan ([`plan::plan_build`]: properties,
//! builder directory, steps), then a short I/O loop that walks the engine's
//! [`BuildMachine`] step by step through [`crate::steps::run_step`], storing every step, log
//! and property and publishing each as an event. It returns its outcome to its caller (the
//! farm's build task), which completes or requeues the request.
//!
//! A build runs on the config it started with: its order holds its own `Arc` of the config,
//! so a reconfig that changes or removes the builder does not touch it.

mod logs;
mod plan;
mod trigger;

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use kiln_config::{Builder, MasterConfig, Step};
use kiln_engine::build::{Action, BuildMachine, BuildOutcome};
use kiln_engine::distributor::Assignment;
use kiln_engine::results::StepEnd;
use kiln_model::{BuildId, Event, Properties, StepId};
use kiln_remote::Connection;
use kiln_store::NewBuild;
use tokio::sync::watch;

use crate::farm::{FarmHandle, Services};
use crate::steps::StepCtx;
use logs::StoreLogs;
use plan::{BuildPlan, WorkerFacts, plan_build};
use trigger::BuildTriggerer;

/// What the farm hands a build task: everything resolved, nothing to look up in the farm.
pub(crate) struct BuildOrder {
    pub assignment: Assignment,
    /// The config the build runs on; it has `builder`.
    pub config: Arc<MasterConfig>,
    pub builder: String,
    pub worker: String,
    pub conn: Arc<dyn Connection>,
    /// Becomes `Some(reason)` when someone stops the build.
    pub stop: watch::Receiver<Option<String>>,
    /// Set once the build row exists (the farm finds a build to stop by it).
    pub build: Arc<OnceLock<BuildId>>,
}

pub(crate) enum BuildEnd {
    /// The worker did not answer its ping, or the builder is gone: the request goes back.
    NotStarted,
    Finished {
        build: BuildId,
        outcome: BuildOutcome,
    },
}

/// A build that could not go on; its caller ends it EXCEPTION (or requeues its request when
/// no build row was made).
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    #[error("the database failed")]
    Store(#[from] kiln_store::StoreError),
    #[error("reading the build request failed")]
    Queue(#[from] kiln_engine::queue::StoreError),
}

/// Runs the build to its end.
pub(crate) async fn run(
    s: Arc<Services>,
    farm: FarmHandle,
    order: BuildOrder,
) -> Result<BuildEnd, RunError> {
    let Some(builder) = order.config.builder(&order.builder) else {
        return Ok(BuildEnd::NotStarted);
    };
    // Buildbot pings a worker before every build; a worker heard from a moment ago (the
    // last build's final update) is known to be there.
    let conn = &order.conn;
    if !conn.heard_within(Duration::from_secs(1)) && conn.ping().await.is_err() {
        tracing::warn!(
            "worker {} did not answer the ping; request {} goes back",
            order.worker,
            order.assignment.request.0
        );
        return Ok(BuildEnd::NotStarted);
    }
    // What the build needs of its request; from memory when this master submitted it.
    let request = s.queue.request_context(order.assignment.request).await?;
    let facts = WorkerFacts {
        name: &order.worker,
        basedir: conn.basedir(),
        windows: conn.is_windows(),
    };
    let plan = plan_build(&order.config, builder, facts, &request);
    let mut run = BuildRun::start(&s, &farm, &order, builder, plan).await?;
    let outcome = run.steps().await?;
    run.finish(&outcome).await?;
    Ok(BuildEnd::Finished {
        build: run.build,
        outcome,
    })
}

/// The cap of a log opened under `master` (its `log_max_bytes`, 0 for none, keeping
/// `log_max_tail_bytes` of its end). A build's logs take it from the config the build started
/// on, so a reconfig of the cap applies to the logs of the builds that start after it.
fn log_cap(master: &kiln_config::MasterSettings) -> Option<kiln_store::LogCap> {
    (master.log_max_bytes > 0).then(|| kiln_store::LogCap {
        max_bytes: master.log_max_bytes,
        tail_bytes: master.log_max_tail_bytes.min(master.log_max_bytes / 2),
    })
}

/// A started build: its row exists; its steps run one at a time.
struct BuildRun<'a> {
    s: &'a Services,
    order: &'a BuildOrder,
    builder: &'a Builder,
    plan: BuildPlan,
    build: BuildId,
    properties_at_start: Properties,
    machine: BuildMachine,
    triggerer: BuildTriggerer,
    redactor: kiln_config::Redactor,
    stop: watch::Receiver<Option<String>>,
    step_names: HashSet<String>,
    step_number: i64,
}

impl<'a> BuildRun<'a> {
    /// Makes the build row with its properties (and `buildnumber`) in one transaction.
    async fn start(
        s: &'a Services,
        farm: &FarmHandle,
        order: &'a BuildOrder,
        builder: &'a Builder,
        mut plan: BuildPlan,
    ) -> Result<BuildRun<'a>, RunError> {
        let a = &order.assignment;
        let new = NewBuild {
            builderid: a.builder,
            buildrequestid: a.request,
            workerid: a.worker,
            masterid: s.master_id,
            state_string: "building".into(),
        };
        let (build, number) = s
            .store
            .add_build_with_properties(&new, &mut plan.properties, s.now())
            .await?;
        let _ = order.build.set(build);
        s.bus.publish(Event::BuildStarted {
            build,
            builder: a.builder,
            number,
            request: a.request,
            worker: a.worker,
        });
        Ok(BuildRun {
            s,
            order,
            builder,
            properties_at_start: plan.properties.clone(),
            machine: BuildMachine::new(plan.steps.clone()),
            plan,
            build,
            triggerer: BuildTriggerer {
                farm: farm.clone(),
                store: s.store.clone(),
                bus: s.bus.clone(),
                build,
            },
            redactor: order.config.redactor(),
            stop: order.stop.clone(),
            step_names: HashSet::new(),
            step_number: 0,
        })
    }

    /// Walks the build's state machine to its outcome.
    async fn steps(&mut self) -> Result<BuildOutcome, RunError> {
        // After a stop, `always_run` steps still run to their end: they get a stop signal
        // that never fires.
        let (_keep, never) = watch::channel(None);
        loop {
            if let Some(reason) = self.stop.borrow().clone() {
                self.machine.stop(&reason);
            }
            match self.machine.next_action() {
                Action::StartStep(i) => {
                    let stop = if self.stop.borrow().is_some() {
                        never.clone()
                    } else {
                        self.stop.clone()
                    };
                    self.step(i, stop).await?;
                }
                // Steps run one at a time here, so there is never a step to wait for.
                Action::Wait => {
                    let _ = self.stop.changed().await;
                }
                Action::Finished(outcome) => return Ok(outcome),
            }
        }
    }

    /// Runs step `i`: its row, its locks, its commands, its result.
    async fn step(
        &mut self,
        i: usize,
        stop: watch::Receiver<Option<String>>,
    ) -> Result<(), RunError> {
        let builder: &'a Builder = self.builder;
        let step = &builder.steps[i];
        let name = self.unique_name(&step.name);
        let skip = step
            .flags
            .do_step_if
            .as_ref()
            .is_some_and(|c| !c.eval(&self.plan.properties));
        let first_state = self.first_state(step, skip);
        let s = self.s;
        let step_id = s
            .store
            .add_started_step(self.build, self.step_number, &name, &first_state, s.now())
            .await?;
        s.bus.publish(Event::StepStarted {
            build: self.build,
            step: step_id,
            number: self.step_number,
            name,
        });
        self.step_number += 1;
        let mut logs = StoreLogs::new(
            s.store.clone(),
            s.bus.clone(),
            step_id,
            self.redactor.clone(),
            log_cap(&self.order.config.master),
            s.metrics.clone(),
            first_state,
        );
        let end = if skip {
            StepEnd::Skipped
        } else {
            self.run_with_locks(step, step_id, stop, &mut logs).await
        };
        if end == StepEnd::ConnectionLost {
            self.machine.worker_lost();
        }
        if let Some(reason) = self.stop.borrow().clone() {
            self.machine.stop(&reason);
        }
        let results = self.machine.step_finished(i, end);
        // The step's last state string goes in with its result.
        let state = logs.take_deferred_state();
        s.store
            .finish_step_with_state(step_id, results, skip, state.as_deref(), s.now())
            .await?;
        s.bus.publish(Event::StepFinished {
            build: self.build,
            step: step_id,
            results,
        });
        Ok(())
    }

    /// Waits for the step's locks (unless the build is stopped meanwhile), then runs it.
    async fn run_with_locks(
        &mut self,
        step: &Step,
        step_id: StepId,
        mut stop: watch::Receiver<Option<String>>,
        logs: &mut StoreLogs,
    ) -> StepEnd {
        let _held = match step.flags.locks.is_empty() {
            true => None,
            false => tokio::select! {
                h = self.s.step_locks.acquire(&step.flags.locks, &self.order.worker) => Some(h),
                _ = stop.wait_for(|s| s.is_some()) => return StepEnd::Cancelled,
            },
        };
        tracing::debug!(step = step_id.0, "step {} runs", step.name);
        let mut ctx = StepCtx {
            remote: self.order.conn.as_ref(),
            builder_name: &self.builder.name,
            builder_dir: self.plan.builder_dir.clone(),
            properties: &mut self.plan.properties,
            sources: &self.plan.sources,
            secrets: &self.order.config.secrets,
            builder_env: &self.builder.env,
            logs,
            master_dir: self.s.basedir.clone(),
            stop,
            triggerer: &self.triggerer,
        };
        crate::steps::run_step(step, &mut ctx).await
    }

    /// The runner is its build's only step writer: it names the steps itself (a repeated
    /// name gets `_2`, `_3` … as in Buildbot).
    fn unique_name(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut k = 1;
        while !self.step_names.insert(name.clone()) {
            k += 1;
            name = format!("{base}_{k}");
        }
        name
    }

    fn first_state(&self, step: &Step, skip: bool) -> String {
        if skip {
            "skipped".to_string()
        } else if step.flags.locks.is_empty() {
            self.redactor.redact(&crate::steps::running_text(step))
        } else {
            "waiting for locks".to_string()
        }
    }

    /// Stores what the steps changed of the properties, and the build's result.
    async fn finish(&self, outcome: &BuildOutcome) -> Result<(), RunError> {
        let s = self.s;
        if self.plan.properties != self.properties_at_start {
            s.store
                .set_build_properties(self.build, &self.plan.properties)
                .await?;
        }
        s.store
            .finish_build_with_state(
                self.build,
                outcome.results,
                Some(&outcome.state_string),
                s.now(),
            )
            .await?;
        s.bus.publish(Event::BuildFinished {
            build: self.build,
            builder: self.order.assignment.builder,
            results: outcome.results,
        });
        Ok(())
    }
}
