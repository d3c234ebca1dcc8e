//! REST API under `/api/v2` in Buildbot's shape (resource names, field names, `field__op`
//! filters, `order`, `limit`, `offset`, and the `{"<resource>": [...], "meta": {"total": N}}`
//! envelope), plus `/metrics` (Prometheus text) and `/health` for operators.

use std::collections::BTreeMap;
use std::sync::Arc;

use kiln_config::MasterConfig;
use kiln_model::{BuildId, BuildRequestId, BuildsetId};

use crate::remote::BoxFuture;

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

/// What the API asks of the running master (everything else it reads from the store).
pub trait Control: Send + Sync {
    /// The config in force now.
    fn config(&self) -> Arc<MasterConfig>;
    /// Names of the workers connected to this master now.
    fn connected_workers(&self) -> Vec<String>;
    /// Validates the request against the force scheduler's parameters and submits a buildset.
    /// `Err` is a message for the user (unknown scheduler, builder not in it, bad parameter).
    fn force(
        &self,
        scheduler: &str,
        req: ForceRequest,
    ) -> BoxFuture<'_, Result<(BuildsetId, Vec<BuildRequestId>), String>>;
    /// Stores a change and hands it to the schedulers.
    fn add_change(&self, change: ChangeRequest) -> BoxFuture<'_, Result<kiln_model::ChangeId, String>>;
    /// Stops a running build (it ends CANCELLED). False if it is not running here.
    fn stop_build(&self, build: BuildId, reason: String) -> BoxFuture<'_, bool>;
    /// Cancels an unclaimed build request. False if it was already claimed or complete.
    fn cancel_request(&self, request: BuildRequestId) -> BoxFuture<'_, bool>;
}
