//! Every route of the web port, in one list: what Kiln serves, and which handler serves it.

use axum::Router;
use axum::routing::get;

use crate::{ApiState, control, ops, rest};

pub(crate) fn routes() -> Router<ApiState> {
    Router::new()
        // For operators.
        .route("/health", get(ops::health))
        .route("/metrics", get(ops::metrics))
        .merge(rest::routes())
        .merge(control::routes())
}
