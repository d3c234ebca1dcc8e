//! REST API under `/api/v2` in Buildbot's shape (resource names, field names, `field__op`
//! filters, `order`, `limit`, `offset`, and the `{"<resource>": [...], "meta": {"total": N}}`
//! envelope), plus `/metrics` (Prometheus text) and `/health` for operators.
//!
//! * [`router`] serves everything below on the master's web port (mount at `/`):
//!   `GET /api/v2/{builders,builds,steps,logs,workers,changes,buildrequests,buildsets,
//!   forceschedulers,masters}` and their nested paths (see `rest.rs`), `/logs/{id}/contents`
//!   and `/raw`; JSON-RPC `POST`s `force`, `stop`, `cancel` (`control.rs`); `POST
//!   /change_hook/base`; `GET /metrics`; `GET /health`.
//! * Builds, build requests, changes and steps are filtered, ordered and paged in SQL
//!   (`kiln_store::api_queries`); a page holds at most `kiln_store::MAX_LIST_LIMIT` rows even
//!   without `limit`. Other collections are small and filtered in memory.
//! * Every JSON answer, log text and raw log goes through the config's redactor.
//! * The master core keeps [`Metrics`] current: `workers_connected(n)`, `builds_running(n)`,
//!   `requests_pending(n)`, `build_finished(results)`, `log_bytes_received(bytes)`.

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
    fn add_change(
        &self,
        change: ChangeRequest,
    ) -> BoxFuture<'_, Result<kiln_model::ChangeId, String>>;
    /// Stops a running build (it ends CANCELLED). False if it is not running here.
    fn stop_build(&self, build: BuildId, reason: String) -> BoxFuture<'_, bool>;
    /// Cancels an unclaimed build request. False if it was already claimed or complete.
    fn cancel_request(&self, request: BuildRequestId) -> BoxFuture<'_, bool>;
}

mod control;
mod metrics;
mod query;
mod rest;

pub use metrics::Metrics;
pub use query::{FType, Filter, Spec};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// What the API handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub store: kiln_store::Store,
    pub control: Arc<dyn Control>,
    pub metrics: Metrics,
}

/// The REST API, `/change_hook/base`, `/metrics` and `/health`, to mount at `/`.
pub fn router(state: ApiState) -> axum::Router {
    rest::routes().merge(control::routes()).with_state(state)
}

/// An error answered as Buildbot does for REST: `{"error": "..."}` with its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn bad(msg: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: msg.into(),
        }
    }
    pub fn not_found(msg: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: msg.into(),
        }
    }
    pub fn internal(msg: impl std::fmt::Display) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: msg.to_string(),
        }
    }
}

impl From<kiln_store::StoreError> for ApiError {
    fn from(e: kiln_store::StoreError) -> ApiError {
        ApiError::internal(format!("database error: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message }).to_string();
        let mut r = (self.status, body).into_response();
        // Buildbot sends REST errors as text/plain holding JSON.
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    }
}
