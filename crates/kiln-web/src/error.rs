//! How the REST API fails: Buildbot's answers (`{"error": "..."}` as `text/plain`, with a
//! 400, 404 or 500) and, for a database error, its source kept for the master's log.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An error answered as Buildbot does for REST.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A query Buildbot refuses (a bad filter, order, limit or field): 400.
    #[error("{0}")]
    BadRequest(String),
    /// A path no endpoint serves, or an id that is not a number where one is needed: 404.
    #[error("Invalid path: {0}")]
    InvalidPath(String),
    /// A well-formed path that names nothing (`/builds/99`): 404.
    #[error("not found while getting from {0}")]
    NotFound(String),
    /// The store failed: 500, and the whole chain goes to the log.
    #[error("database error: {0}")]
    Database(#[source] kiln_store::StoreError),
}

impl ApiError {
    pub fn bad(msg: impl Into<String>) -> ApiError {
        ApiError::BadRequest(msg.into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::InvalidPath(_) | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Database(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<kiln_store::StoreError> for ApiError {
    fn from(e: kiln_store::StoreError) -> ApiError {
        ApiError::Database(e)
    }
}

/// The body of an error answer.
#[derive(Serialize)]
struct ErrorAnswer {
    error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Database(e) = &self {
            tracing::error!(error = %kiln_master::error_chain(e), "REST request failed on the database");
        }
        let body = serde_json::to_string(&ErrorAnswer {
            error: self.to_string(),
        })
        .unwrap_or_default();
        let mut r = (self.status(), body).into_response();
        // Buildbot sends REST errors as text/plain holding JSON.
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    }
}
