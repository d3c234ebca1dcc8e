//! The farm task's mailbox: the [`Message`]s it answers and [`FarmHandle`], the cheap handle
//! that sends them. The web port and the CLI reach it as [`Control`]; build tasks report
//! their end and ask for triggered builds through it.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use kiln_config::MasterConfig;
use kiln_model::{
    BuildId, BuildRequestId, BuildsetId, ChangeId, Properties, Results, SourceStamp, WorkerId,
};
use kiln_remote::{BoxFuture, Workers};
use tokio::sync::{mpsc, oneshot, watch};

use super::reconfig::ReconfigReport;
use crate::control::{ChangeRequest, Control, ControlError, ForceRequest};
use crate::steps::TriggerError;

pub(crate) type Reply<T> = oneshot::Sender<T>;

/// A build task's last word to the farm.
#[derive(Debug)]
pub(crate) struct BuildEnded {
    pub request: BuildRequestId,
    /// The task's cell for its build id: tells this build from a later one of the same request
    /// (a RETRY can be claimed again before this report arrives).
    pub build: Arc<OnceLock<BuildId>>,
    pub worker: WorkerId,
    /// `None`: the build never started and its request is back in the queue.
    pub results: Option<Results>,
    /// The request went back to the queue (a lost worker's RETRY, or never started).
    pub requeued: bool,
}

/// What the farm task is asked to do.
pub(crate) enum Message {
    Force {
        scheduler: String,
        req: ForceRequest,
        reply: Reply<Result<(BuildsetId, Vec<BuildRequestId>), ControlError>>,
    },
    AddChange {
        change: ChangeRequest,
        reply: Reply<Result<ChangeId, ControlError>>,
    },
    StopBuild {
        build: BuildId,
        reason: String,
        reply: Reply<bool>,
    },
    CancelRequest {
        request: BuildRequestId,
        reply: Reply<bool>,
    },
    /// A `trigger` step: a buildset through a triggerable scheduler.
    Trigger {
        scheduler: String,
        parent: BuildId,
        sources: Vec<SourceStamp>,
        properties: Properties,
        wait: bool,
        reply: Reply<Result<BuildsetId, TriggerError>>,
    },
    ApplyConfig {
        config: Box<MasterConfig>,
        reply: Reply<ReconfigReport>,
    },
    BuildEnded(BuildEnded),
    /// Shutdown: start nothing more, wait up to `patience` for running builds to end, answer.
    Drain {
        patience: Duration,
        reply: Reply<()>,
    },
}

/// Sends [`Message`]s to the farm task; reads the config and the connected workers without
/// asking it. Cheap to clone.
#[derive(Clone)]
pub(crate) struct FarmHandle {
    tx: mpsc::Sender<Message>,
    config: watch::Receiver<Arc<MasterConfig>>,
    workers: Workers,
}

impl FarmHandle {
    pub fn new(
        tx: mpsc::Sender<Message>,
        config: watch::Receiver<Arc<MasterConfig>>,
        workers: Workers,
    ) -> FarmHandle {
        FarmHandle {
            tx,
            config,
            workers,
        }
    }

    /// Sends a request and waits for its reply; `None` when the farm task is gone.
    async fn ask<T>(&self, request: impl FnOnce(Reply<T>) -> Message) -> Option<T> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(request(reply)).await.ok()?;
        answer.await.ok()
    }

    /// `None` when the farm task is gone (the master is stopping): nothing was applied.
    pub async fn apply_config(&self, config: MasterConfig) -> Option<ReconfigReport> {
        let config = Box::new(config);
        self.ask(|reply| Message::ApplyConfig { config, reply })
            .await
    }

    pub async fn trigger(
        &self,
        scheduler: String,
        parent: BuildId,
        sources: Vec<SourceStamp>,
        properties: Properties,
        wait: bool,
    ) -> Result<BuildsetId, TriggerError> {
        self.ask(|reply| Message::Trigger {
            scheduler,
            parent,
            sources,
            properties,
            wait,
            reply,
        })
        .await
        .unwrap_or(Err(TriggerError::ShuttingDown))
    }

    pub async fn build_ended(&self, ended: BuildEnded) {
        if self.tx.send(Message::BuildEnded(ended)).await.is_err() {
            tracing::debug!("a build ended after the farm task stopped");
        }
    }

    pub async fn drain(&self, patience: Duration) {
        self.ask(|reply| Message::Drain { patience, reply }).await;
    }
}

impl Control for FarmHandle {
    fn config(&self) -> Arc<MasterConfig> {
        self.config.borrow().clone()
    }

    fn connected_workers(&self) -> Vec<String> {
        self.workers
            .connected()
            .iter()
            .map(|c| c.worker_name().to_string())
            .collect()
    }

    fn force(
        &self,
        scheduler: &str,
        req: ForceRequest,
    ) -> BoxFuture<'_, Result<(BuildsetId, Vec<BuildRequestId>), ControlError>> {
        let scheduler = scheduler.to_string();
        Box::pin(async move {
            self.ask(|reply| Message::Force {
                scheduler,
                req,
                reply,
            })
            .await
            .unwrap_or(Err(ControlError::ShuttingDown))
        })
    }

    fn add_change(&self, change: ChangeRequest) -> BoxFuture<'_, Result<ChangeId, ControlError>> {
        Box::pin(async move {
            self.ask(|reply| Message::AddChange { change, reply })
                .await
                .unwrap_or(Err(ControlError::ShuttingDown))
        })
    }

    fn stop_build(&self, build: BuildId, reason: String) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            self.ask(|reply| Message::StopBuild {
                build,
                reason,
                reply,
            })
            .await
            .unwrap_or(false)
        })
    }

    fn cancel_request(&self, request: BuildRequestId) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            self.ask(|reply| Message::CancelRequest { request, reply })
                .await
                .unwrap_or(false)
        })
    }
}
