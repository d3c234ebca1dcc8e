//! The web port: the REST API, metrics and health (and, with the web issue, the UI).

use std::sync::Arc;

use crate::master::{Inner, MasterControl};

pub(crate) fn router(inner: Arc<Inner>) -> axum::Router {
    let _control = Arc::new(MasterControl(inner));
    axum::Router::new()
}
