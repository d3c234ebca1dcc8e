//! The seam through which the web port, the CLI and (later) the reporters act on the running
//! master: force a build, stop one, cancel a request, add a change. Reading is not here:
//! callers read the store and listen to events.

use std::collections::BTreeMap;
use std::sync::Arc;

use kiln_config::MasterConfig;
use kiln_model::{BuildId, BuildRequestId, BuildsetId, ChangeId};
pub use kiln_remote::BoxFuture;

/// A force request (`POST /api/v2/forceschedulers/{name}` with JSON-RPC method `force`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ForceRequest {
    pub builder_names: Vec<String>,
    pub owner: Option<String>,
    pub reason: Option<String>,
    pub branch: Option<String>,
    pub revision: Option<String>,
    pub repository: Option<String>,
    pub project: Option<String>,
    /// The scheduler's typed parameters and any extra properties, as sent.
    pub properties: BTreeMap<String, serde_json::Value>,
}

/// A change sent by `kiln sendchange` or a change hook.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChangeRequest {
    pub author: String,
    pub committer: Option<String>,
    pub files: Vec<String>,
    pub comments: String,
    pub revision: Option<String>,
    pub when_timestamp: Option<i64>,
    pub branch: Option<String>,
    pub category: Option<String>,
    pub revlink: Option<String>,
    pub properties: BTreeMap<String, serde_json::Value>,
    pub repository: String,
    pub project: String,
    pub codebase: String,
}

/// Why a control action was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The caller named a force scheduler the config does not have.
    #[error("no force scheduler named {0:?}")]
    NoForceScheduler(String),
    /// The force form did not fit the scheduler (unknown builder, bad parameter, …).
    #[error(transparent)]
    Force(#[from] kiln_engine::schedulers::ForceError),
    /// The database failed; nothing was submitted.
    #[error("database error")]
    Store(#[from] kiln_store::StoreError),
    /// The queue's database failed; nothing was submitted.
    #[error("build request queue error")]
    Queue(#[from] kiln_engine::queue::StoreError),
    /// The master is shutting down.
    #[error("the master is shutting down")]
    ShuttingDown,
}

impl ControlError {
    /// True when the caller's request was at fault (answer 400), false when the master was
    /// (answer 500).
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            ControlError::NoForceScheduler(_) | ControlError::Force(_)
        )
    }
}

/// What the web port and the CLI ask of the running master (everything else they read from
/// the store).
pub trait Control: Send + Sync {
    /// The config in force now.
    fn config(&self) -> Arc<MasterConfig>;
    /// Names of the workers connected to this master now.
    fn connected_workers(&self) -> Vec<String>;
    /// Validates the request against the force scheduler's parameters and submits a buildset.
    fn force(
        &self,
        scheduler: &str,
        req: ForceRequest,
    ) -> BoxFuture<'_, Result<(BuildsetId, Vec<BuildRequestId>), ControlError>>;
    /// Stores a change and hands it to the schedulers.
    fn add_change(&self, change: ChangeRequest) -> BoxFuture<'_, Result<ChangeId, ControlError>>;
    /// Stops a running build (it ends CANCELLED). False if it is not running here.
    fn stop_build(&self, build: BuildId, reason: String) -> BoxFuture<'_, bool>;
    /// Cancels an unclaimed build request. False if it was already claimed or complete.
    fn cancel_request(&self, request: BuildRequestId) -> BoxFuture<'_, bool>;
}
