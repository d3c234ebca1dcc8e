//! The web port: the REST API, `/change_hook/base`, `/metrics` and `/health` (and, with the
//! web issue, the UI).

use std::sync::Arc;

use crate::api::{ApiState, router as api_router};
use crate::master::{Inner, MasterControl};

pub(crate) fn router(inner: Arc<Inner>) -> axum::Router {
    let state = ApiState {
        store: inner.store.clone(),
        metrics: inner.metrics.clone(),
        control: Arc::new(MasterControl(inner)),
    };
    api_router(state)
}
