//! Every route of the web port, in one list: what Kiln serves, and which handler serves it.

use axum::Router;
use axum::routing::{get, post};

use crate::{ApiState, change_hook, ops, rest};

pub(crate) fn routes() -> Router<ApiState> {
    Router::new()
        // For operators.
        .route("/health", get(ops::health))
        .route("/metrics", get(ops::metrics))
        .merge(rest::routes())
        // Changes from scripts and other systems; `/change_hook/` without a dialect is the
        // base hook in Buildbot too.
        .route("/change_hook/base", post(change_hook::base))
        .route("/change_hook/", post(change_hook::base))
        .route("/change_hook", post(change_hook::base))
}
