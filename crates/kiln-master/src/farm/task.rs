//! The farm task: the one owner of [`FarmState`]. It answers [`Message`]s, follows workers
//! as they come and go, and runs a scheduling and distribution round when something changed
//! or a second passed (`builds.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kiln_engine::queue;
use kiln_engine::schedulers::{BuildsetRequest, CompletedBuildset};
use kiln_model::{
    BuildId, BuildRequestId, BuilderId, BuildsetId, ChangeId, Event, Properties, Results,
    SourceStamp,
};
use kiln_remote::WorkerEvent;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Services;
use super::handle::{BuildEnded, FarmHandle, Message, Reply};
use super::state::{FarmState, Ids};
use crate::control::{ChangeRequest, ControlError, ForceRequest};
use crate::steps::TriggerError;

/// Requests handled before a round runs, when many arrive at once (a burst of forces).
const BATCH: usize = 64;

pub(super) struct FarmTask {
    pub services: Arc<Services>,
    pub state: FarmState,
    /// Given to build tasks, to report their end and trigger builds.
    pub handle: FarmHandle,
    requests: mpsc::Receiver<Message>,
    /// Set by a `Drain` request: no new builds; answer once none runs or time is up.
    draining: Option<(Instant, Reply<()>)>,
}

impl FarmTask {
    pub fn new(
        services: Arc<Services>,
        state: FarmState,
        handle: FarmHandle,
        requests: mpsc::Receiver<Message>,
    ) -> FarmTask {
        FarmTask {
            services,
            state,
            handle,
            requests,
            draining: None,
        }
    }

    /// Runs until the last [`FarmHandle`] is dropped or a drain ends.
    pub async fn run(mut self, mut worker_events: mpsc::UnboundedReceiver<WorkerEvent>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                r = self.requests.recv() => match r {
                    Some(r) => self.handle(r).await,
                    None => return,
                },
                Some(e) = worker_events.recv() => self.worker_event(e).await,
                _ = tick.tick() => self.state.round_due = true,
            }
            for _ in 0..BATCH {
                match self.requests.try_recv() {
                    Ok(r) => self.handle(r).await,
                    Err(_) => break,
                }
            }
            if self.drained() {
                return;
            }
            if self.state.round_due && self.draining.is_none() {
                self.round().await;
            }
        }
    }

    async fn handle(&mut self, request: Message) {
        match request {
            Message::Force {
                scheduler,
                req,
                reply,
            } => {
                let _ = reply.send(self.force(&scheduler, req).await);
            }
            Message::AddChange { change, reply } => {
                let _ = reply.send(self.add_change(change).await);
            }
            Message::StopBuild {
                build,
                reason,
                reply,
            } => {
                let _ = reply.send(self.stop_build(build, reason));
            }
            Message::CancelRequest { request, reply } => {
                let _ = reply.send(self.cancel_request(request).await);
            }
            Message::Trigger {
                scheduler,
                parent,
                sources,
                properties,
                wait,
                reply,
            } => {
                let r = self
                    .trigger(&scheduler, parent, sources, &properties, wait)
                    .await;
                let _ = reply.send(r);
            }
            Message::ApplyConfig { config, reply } => {
                let _ = reply.send(self.apply_config(*config).await);
            }
            Message::BuildEnded(ended) => self.build_ended(ended).await,
            Message::Drain { patience, reply } => {
                self.draining = Some((Instant::now() + patience, reply));
            }
        }
    }

    /// True (and the drain answered) once a drain has nothing left to wait for.
    fn drained(&mut self) -> bool {
        let done = match &self.draining {
            Some((deadline, _)) => self.state.running.is_empty() || Instant::now() >= *deadline,
            None => false,
        };
        if done && let Some((_, reply)) = self.draining.take() {
            let _ = reply.send(());
        }
        done
    }

    /// Makes sure every configured builder and worker has a row and an id.
    pub async fn sync_ids(&mut self) -> Result<(), kiln_store::StoreError> {
        let store = &self.services.store;
        let cfg = self.state.config.clone();
        let mut ids = Ids::default();
        for b in &cfg.builders {
            let id = store
                .upsert_builder(&b.name, b.description.as_deref(), &b.tags)
                .await?;
            ids.builders.insert(b.name.clone(), id);
        }
        for w in &cfg.workers {
            let id = match store.get_worker_by_name(&w.name).await? {
                Some(row) => row.workerid,
                None => {
                    store
                        .upsert_worker(&w.name, &serde_json::Map::new())
                        .await?
                }
            };
            ids.workers.insert(w.name.clone(), id);
        }
        self.state.ids = ids;
        Ok(())
    }

    async fn worker_event(&mut self, event: WorkerEvent) {
        let s = self.services.clone();
        match event {
            WorkerEvent::Attached(conn) => {
                let name = conn.worker_name().to_string();
                match s.store.upsert_worker(&name, conn.info()).await {
                    Ok(id) => {
                        self.state.ids.workers.insert(name.clone(), id);
                        tracing::info!("worker {name} attached from {}", conn.peer());
                        s.bus.publish(Event::WorkerConnected { worker: id, name });
                    }
                    Err(e) => {
                        tracing::error!("storing worker {name}: {}", crate::error_chain(&e))
                    }
                }
            }
            WorkerEvent::Detached { name, conn_id } => {
                tracing::info!("worker {name} detached");
                // A replaced connection's end is not the worker's.
                let replaced = s.workers.get(&name).is_some_and(|c| c.conn_id() != conn_id);
                if let Some(&id) = self.state.ids.workers.get(&name)
                    && !replaced
                {
                    s.bus
                        .publish(Event::WorkerDisconnected { worker: id, name });
                }
            }
        }
        s.metrics.workers_connected(s.workers.count() as i64);
        self.state.trim_at = Some(Instant::now() + Duration::from_secs(2));
        self.state.round_due = true;
    }

    /// Stores a scheduler's buildset; the next round distributes it.
    pub async fn submit(
        &mut self,
        bs: &BuildsetRequest,
    ) -> Result<(BuildsetId, Vec<BuildRequestId>), ControlError> {
        let cfg = &self.state.config;
        let ids = &self.state.ids.builders;
        let builders: BTreeMap<String, (BuilderId, i64)> = cfg
            .builders
            .iter()
            .filter_map(|b| Some((b.name.clone(), (*ids.get(&b.name)?, b.priority))))
            .collect();
        let unknown: Vec<&String> = bs
            .builders
            .iter()
            .filter(|b| !builders.contains_key(*b))
            .collect();
        if !unknown.is_empty() {
            tracing::warn!("scheduler {}: no such builders {unknown:?}", bs.scheduler);
        }
        let s = &self.services;
        let out = queue::submit(&s.queue, &s.bus, bs, &builders, s.now()).await?;
        self.state.round_due = true;
        Ok(out)
    }

    /// Submits what schedulers produced, logging failures (nobody waits for an answer).
    pub async fn submit_all(&mut self, due: Vec<BuildsetRequest>) {
        for bs in due {
            if let Err(e) = self.submit(&bs).await {
                tracing::error!("scheduler {}: {}", bs.scheduler, crate::error_chain(&e));
            }
        }
    }

    async fn force(
        &mut self,
        scheduler: &str,
        req: ForceRequest,
    ) -> Result<(BuildsetId, Vec<BuildRequestId>), ControlError> {
        let f = self
            .state
            .scheds
            .force
            .get(scheduler)
            .ok_or_else(|| ControlError::NoForceScheduler(scheduler.to_string()))?;
        let mut input = req.properties.clone();
        for (k, v) in [
            ("reason", &req.reason),
            ("branch", &req.branch),
            ("revision", &req.revision),
            ("repository", &req.repository),
            ("project", &req.project),
        ] {
            if let Some(v) = v {
                input.insert(k.to_string(), serde_json::Value::String(v.clone()));
            }
        }
        // Like Buildbot, values that are not parameters of this scheduler (the form's
        // `priority`, a client's extras) are ignored, not refused.
        input.retain(|k, _| f.params.iter().any(|p| &p.name == k));
        let builders = if req.builder_names.is_empty() {
            f.builders.clone()
        } else {
            req.builder_names.clone()
        };
        let owner = req.owner.as_deref().unwrap_or("anonymous");
        let bs = f.force(owner, &builders, &input)?;
        self.submit(&bs).await
    }

    async fn add_change(&mut self, c: ChangeRequest) -> Result<ChangeId, ControlError> {
        let s = self.services.clone();
        let now = s.now();
        let mut properties = Properties::default();
        for (k, v) in c.properties {
            properties.set(k, v, "Change");
        }
        let new = kiln_store::NewChange {
            author: c.author,
            committer: c.committer,
            comments: c.comments,
            branch: c.branch,
            revision: c.revision,
            when_timestamp: c.when_timestamp.unwrap_or(now),
            category: c.category,
            repository: c.repository,
            codebase: c.codebase,
            project: c.project,
            files: c.files,
            properties,
        };
        let id = s.store.add_change(&new, now).await?;
        s.bus.publish(Event::ChangeNew { change: id });
        let change = s
            .store
            .get_change(id)
            .await?
            .ok_or(kiln_store::StoreError::NotFound("change", id.0))?;
        let due = self.state.scheds.events.on_change(&change, now);
        for bs in due {
            self.submit(&bs).await?;
        }
        Ok(id)
    }

    fn stop_build(&mut self, build: BuildId, reason: String) -> bool {
        let running = self.state.running.values();
        match running.into_iter().find(|r| r.build.get() == Some(&build)) {
            Some(r) => {
                let _ = r.stop.send(Some(reason));
                true
            }
            None => false,
        }
    }

    async fn cancel_request(&mut self, request: BuildRequestId) -> bool {
        let s = self.services.clone();
        let done = match queue::cancel_request(&s.queue, &s.bus, request, s.now()).await {
            Ok(done) => done,
            Err(e) => {
                tracing::error!("cancelling request {}: {e}", request.0);
                false
            }
        };
        if done {
            self.after_request_complete(request).await;
        }
        done
    }

    async fn trigger(
        &mut self,
        scheduler: &str,
        parent: BuildId,
        sources: Vec<SourceStamp>,
        properties: &Properties,
        wait: bool,
    ) -> Result<BuildsetId, TriggerError> {
        let t = self
            .state
            .scheds
            .triggerable
            .get(scheduler)
            .ok_or_else(|| TriggerError::NoScheduler(scheduler.to_string()))?;
        let bs = t.trigger(parent, sources, properties, wait);
        Ok(self.submit(&bs).await?.0)
    }

    /// A build task ended: forget its build, note its result, tell `dependent` schedulers.
    async fn build_ended(&mut self, ended: BuildEnded) {
        let s = self.services.clone();
        let running = &mut self.state.running;
        if running
            .get(&ended.request)
            .is_some_and(|r| Arc::ptr_eq(&r.build, &ended.build))
        {
            running.remove(&ended.request);
        }
        s.metrics.builds_running(running.len() as i64);
        self.state.round_due = true;
        let Some(results) = ended.results else {
            return;
        };
        s.metrics.build_finished(results);
        self.state
            .quarantine
            .entry(ended.worker)
            .or_default()
            .build_finished(results, s.now());
        if !ended.requeued {
            self.after_request_complete(ended.request).await;
        }
    }

    /// A request completed: if its buildset is now complete, `dependent` schedulers hear.
    async fn after_request_complete(&mut self, request: BuildRequestId) {
        if !self.state.has_dependents {
            return;
        }
        let Some(done) = completed_buildset(&self.services.store, request).await else {
            return;
        };
        let now = self.services.now();
        let next = self.state.scheds.events.on_buildset_complete(&done, now);
        self.submit_all(next).await;
    }
}

/// The buildset of `request`, if it is complete, as `dependent` schedulers see it.
async fn completed_buildset(
    store: &kiln_store::Store,
    request: BuildRequestId,
) -> Option<CompletedBuildset> {
    let req = store.get_build_request(request).await.ok()??;
    let bs = store.get_buildset(req.buildsetid).await.ok()??;
    if !bs.complete {
        return None;
    }
    let scheduler = store.buildset_scheduler(bs.bsid).await.unwrap_or_default();
    let mut sources = Vec::new();
    for ss in &bs.sourcestamps {
        if let Ok(Some(s)) = store.get_sourcestamp(*ss).await {
            sources.push(s.stamp);
        }
    }
    let properties = store
        .get_buildset_properties(bs.bsid)
        .await
        .unwrap_or_default();
    Some(CompletedBuildset {
        scheduler,
        results: bs.results.unwrap_or(Results::Success),
        sources,
        properties,
    })
}
