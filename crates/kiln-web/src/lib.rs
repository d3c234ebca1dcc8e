//! Kiln's web port: Buildbot's REST API under `/api/v2` (resource names, field names,
//! `field__op` filters, `order`, `limit`, `offset`, `field`, `property`, and the
//! `{"<resource>": [...], "meta": {"total": N}}` envelope), so tools written for Buildbot keep
//! working; the JSON-RPC control the Buildbot UI sends; the base change hook; and `/metrics`
//! and `/health` for operators. It reads the store and asks the master's [`Control`] for the
//! rest; it never talks to a worker.
//!
//! * `routes.rs` — every route, in one list; [`router`] serves them (mount at `/`), [`app`]
//!   adds the landing page (`landing.rs`).
//! * `api/` — a module per resource family (builders, builds, steps, logs, workers, changes,
//!   build requests, buildsets, force schedulers, masters; properties and source stamps as
//!   they show inside others): its typed answer and its handlers. `api/mod.rs` has what they
//!   share: the `Resource` and `SqlResource` traits, the request (`ApiRequest`) and the
//!   envelope; `api/logs.rs` the `LogRef` extractor for the four paths that name a log.
//!   `query.rs` parses and applies Buildbot's query features.
//! * `rpc.rs` — JSON-RPC `force`, `stop`, `cancel`; `change_hook.rs` — `POST
//!   /change_hook/base`; `ops.rs` — `/health` and `/metrics`; `error.rs` — [`ApiError`].
//! * Builds, build requests, buildsets, changes and steps are filtered, ordered and paged in SQL
//!   (`kiln_store::api_queries`); without `limit` a collection is answered whole, as Buildbot
//!   does, streamed a page of SQL rows at a time when it is long. Other collections are small
//!   and filtered in memory. A log's `contents` and `raw` are streamed a stored chunk at a
//!   time. `limit` and `offset` out of range (negative, not a number, `limit` above
//!   100,000) are a 400 that says what they take.
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
mod routes;
mod rpc;

pub use error::ApiError;
pub use kiln_master::error_chain;
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
    routes::routes()
        .route("/", axum::routing::get(landing::page))
        .with_state(state)
}
