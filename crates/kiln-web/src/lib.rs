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

use std::sync::Arc;
use std::sync::atomic::AtomicI64;

pub use kiln_master::{ChangeRequest, Control, ControlError, ForceRequest, Metrics};

mod api;
mod change_hook;
mod error;
mod landing;
mod ops;
mod query;
mod rest;
mod routes;
mod rpc;

pub use error::{ApiError, error_chain};
pub use query::{FType, Filter, Spec};

/// What the API handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub store: kiln_store::Store,
    pub control: Arc<dyn Control>,
    pub metrics: Metrics,
    /// The last `kiln_log_bytes_stored` read from the store (kept when a read fails).
    log_bytes_stored: Arc<AtomicI64>,
}

impl ApiState {
    pub fn new(store: kiln_store::Store, control: Arc<dyn Control>, metrics: Metrics) -> ApiState {
        ApiState {
            store,
            control,
            metrics,
            log_bytes_stored: Arc::default(),
        }
    }
}

/// The REST API, `/change_hook/base`, `/metrics` and `/health`, to mount at `/`.
pub fn router(state: ApiState) -> axum::Router {
    routes::routes().with_state(state)
}

/// Everything the web port serves: the API and a landing page at `/` that links it.
pub fn app(state: ApiState) -> axum::Router {
    let landing = landing::page(&state.control.config().master.title);
    router(state).merge(landing)
}
