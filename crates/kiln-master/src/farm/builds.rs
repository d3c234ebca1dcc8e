//! A scheduling and distribution round, and the build tasks it starts.
//!
//! The farm task claims what the distributor assigns and hands each build an order with
//! everything resolved ([`BuildOrder`]). The build task runs it ([`crate::runner`]), does the
//! request's bookkeeping in the database itself (complete, or back to the queue), and reports
//! its end to the farm task, which only updates what it owns.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use kiln_engine::build::BuildOutcome;
use kiln_engine::distributor::Assignment;
use kiln_engine::queue::{self, Store as _};
use kiln_model::{BuildRequestId, Event, Results, WorkerId};
use tokio::sync::watch;
use tokio::time::Instant;

use super::Services;
use super::handle::{BuildEnded, FarmHandle};
use super::housekeeping::release_freed_memory;
use super::state::Running;
use super::task::FarmTask;
use crate::runner::{self, BuildEnd, BuildOrder};

impl FarmTask {
    /// Timers of schedulers, then distribution; and freed memory handed back when due.
    pub async fn round(&mut self) {
        self.state.round_due = false;
        let due = self.state.scheds.events.poll(self.services.now());
        self.submit_all(due).await;
        if let Err(e) = self.dispatch().await {
            tracing::error!("distribution: {}", crate::error_chain(&e));
        }
        if self.state.trim_at.is_some_and(|t| t <= Instant::now()) {
            self.state.trim_at = None;
            tokio::task::spawn_blocking(release_freed_memory);
        }
    }

    /// `kiln_engine::queue::dispatch` in two halves: the queue length is kept for /metrics,
    /// and no snapshot of the farm is built when nothing waits (a thousand workers attaching
    /// must not build a thousand snapshots).
    async fn dispatch(&mut self) -> Result<(), queue::StoreError> {
        let s = self.services.clone();
        let queued = s.queue.pending_requests().await?;
        let pending = queued.len();
        if pending == 0 {
            s.metrics.requests_pending(0);
            return Ok(());
        }
        let (world, paused) = self.state.snapshot(&s.workers, chrono::Utc::now());
        for (worker, paused) in paused {
            if let Some(name) = self.state.ids.worker_name(worker) {
                let name = name.to_string();
                s.bus.publish(Event::WorkerPaused {
                    worker,
                    name,
                    paused,
                });
            }
        }
        let won = queue::claim_pending(&s.queue, &s.bus, world, queued, s.now()).await?;
        let taken: usize = won.iter().map(|a| 1 + a.collapsed.len()).sum();
        s.metrics
            .requests_pending(pending.saturating_sub(taken) as i64);
        for a in won {
            self.start_build(a);
        }
        Ok(())
    }

    /// Starts a build task for a won claim, or sends the request back when its builder,
    /// worker or connection is gone since the snapshot.
    fn start_build(&mut self, a: Assignment) {
        let (stop, stop_rx) = watch::channel(None);
        let build = Arc::new(OnceLock::new());
        self.state.running.insert(
            a.request,
            Running {
                builder: a.builder,
                worker: a.worker,
                build: build.clone(),
                stop,
            },
        );
        let s = self.services.clone();
        s.metrics.builds_running(self.state.running.len() as i64);
        let order = self.order_for(&a, stop_rx, build);
        let farm = self.handle.clone();
        match order {
            Some(order) => drop(tokio::spawn(build_task(s, farm, order))),
            None => {
                let (request, worker) = (a.request, a.worker);
                let build = self.state.running[&request].build.clone();
                drop(tokio::spawn(requeue(s, farm, request, worker, build)));
            }
        }
    }

    fn order_for(
        &self,
        a: &Assignment,
        stop: watch::Receiver<Option<String>>,
        build: Arc<OnceLock<kiln_model::BuildId>>,
    ) -> Option<BuildOrder> {
        let builder = self.state.ids.builder_name(a.builder)?;
        let config = self.state.config.clone();
        if config.builder(builder).is_none() {
            tracing::info!(
                "builder {builder:?} is gone from the config; request {} waits",
                a.request.0
            );
            return None;
        }
        let worker = self.state.ids.worker_name(a.worker)?;
        let conn = self.services.workers.get(worker)?;
        Some(BuildOrder {
            assignment: a.clone(),
            builder: builder.to_string(),
            worker: worker.to_string(),
            config,
            conn,
            stop,
            build,
        })
    }
}

/// One build from its order to the farm's bookkeeping. A database error before the build's
/// row exists sends its request back; after, the build and its request end EXCEPTION, as
/// they do after a panic (retrying would likely break again).
async fn build_task(s: Arc<Services>, farm: FarmHandle, order: BuildOrder) {
    let (request, worker) = (order.assignment.request, order.assignment.worker);
    let build = order.build.clone();
    // A task of its own, so that a panic in a build is caught here.
    let run = tokio::spawn(runner::run(s.clone(), farm.clone(), order));
    let outcome = match run.await {
        Ok(Ok(BuildEnd::Finished { build, outcome })) => {
            tracing::info!(
                "build {} ({}) finished: {:?} {}",
                build.0,
                request.0,
                outcome.results,
                outcome.state_string
            );
            outcome
        }
        Ok(Ok(BuildEnd::NotStarted)) => return requeue(s, farm, request, worker, build).await,
        Ok(Err(e)) if build.get().is_none() => {
            tracing::error!("build request {}: {}", request.0, crate::error_chain(&e));
            return requeue(s, farm, request, worker, build).await;
        }
        Ok(Err(e)) => {
            tracing::error!("build request {}: {}", request.0, crate::error_chain(&e));
            crashed(&s, build.get().copied()).await
        }
        Err(panic) => {
            // A bug in a build task must not leave its request claimed forever.
            tracing::error!("build of request {} crashed: {panic}", request.0);
            crashed(&s, build.get().copied()).await
        }
    };
    if let Err(e) = queue::build_finished(&s.queue, &s.bus, request, &outcome, s.now()).await {
        tracing::error!("ending build request {}: {e}", request.0);
    }
    let ended = BuildEnded {
        request,
        build,
        worker,
        results: Some(outcome.results),
        requeued: outcome.requeue,
    };
    farm.build_ended(ended).await;
}

/// A build that broke after its row was made ends EXCEPTION, and so does its request
/// (retrying would likely break again).
async fn crashed(s: &Services, build: Option<kiln_model::BuildId>) -> BuildOutcome {
    if let Some(b) = build {
        let _ = s
            .store
            .set_build_state_string(b, "exception: internal error")
            .await;
        let _ = s.store.finish_build(b, Results::Exception, s.now()).await;
    }
    BuildOutcome {
        results: Results::Exception,
        requeue: false,
        state_string: "exception".into(),
    }
}

/// A claimed request whose build never started goes back to the queue.
async fn requeue(
    s: Arc<Services>,
    farm: FarmHandle,
    request: BuildRequestId,
    worker: WorkerId,
    build: Arc<OnceLock<kiln_model::BuildId>>,
) {
    // Not at once: the worker that failed may still look connected for a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    match s.queue.requeue(&[request]).await {
        Ok(_) => s.bus.publish(Event::BuildRequestRequeued { request }),
        Err(e) => tracing::error!(
            "putting request {} back in the queue: {}",
            request.0,
            crate::error_chain(&e)
        ),
    }
    let ended = BuildEnded {
        request,
        build,
        worker,
        results: None,
        requeued: true,
    };
    farm.build_ended(ended).await;
}
