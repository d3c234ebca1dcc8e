//! For operators, not Buildbot clients: `GET /health` (can the master reach its database?)
//! for load balancers and service managers, and `GET /metrics`, the master's figures as
//! Prometheus text (exposition format 0.0.4).

use std::fmt::Write;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use kiln_master::metrics::MetricsSnapshot;
use kiln_model::Results;
use serde::Serialize;

use crate::ApiState;

/// The answer of `/health`: `{"status": "ok", "db": "ok"}`, or `"error"` and the database's
/// complaint with a 503.
#[derive(Serialize)]
struct HealthAnswer {
    db: String,
    status: &'static str,
}

/// `GET /health`.
pub(crate) async fn health(State(state): State<ApiState>) -> Response {
    match state.store.ping().await {
        Ok(()) => Json(HealthAnswer {
            db: "ok".into(),
            status: "ok",
        })
        .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(HealthAnswer {
                db: e.to_string(),
                status: "error",
            }),
        )
            .into_response(),
    }
}

/// `GET /metrics`. `kiln_log_bytes_stored` is read from the store on each scrape; when that
/// read fails the last figure read is shown.
pub(crate) async fn metrics(State(state): State<ApiState>) -> Response {
    if let Ok(n) = state.store.log_bytes_stored().await {
        state.log_bytes_stored.store(n, Ordering::Relaxed);
    }
    let stored = state.log_bytes_stored.load(Ordering::Relaxed);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        prometheus_text(&state.metrics.snapshot(), stored),
    )
        .into_response()
}

fn gauge(out: &mut String, name: &str, help: &str, v: i64) {
    let _ = write!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n"
    );
}

/// The text of `/metrics`.
fn prometheus_text(m: &MetricsSnapshot, log_bytes_stored: i64) -> String {
    let mut out = String::new();
    gauge(
        &mut out,
        "kiln_workers_connected",
        "Workers connected to this master.",
        m.workers_connected,
    );
    gauge(
        &mut out,
        "kiln_builds_running",
        "Builds running on this master.",
        m.builds_running,
    );
    gauge(
        &mut out,
        "kiln_buildrequests_pending",
        "Build requests waiting for a worker.",
        m.requests_pending,
    );
    gauge(
        &mut out,
        "kiln_log_bytes_stored",
        "Bytes of log text stored (before compression).",
        log_bytes_stored,
    );
    let _ = write!(
        out,
        "# HELP kiln_log_bytes_received_total Bytes of log text received from workers.\n\
         # TYPE kiln_log_bytes_received_total counter\nkiln_log_bytes_received_total {}\n",
        m.log_bytes_received
    );
    out.push_str(
        "# HELP kiln_builds_finished_total Builds finished, by result.\n\
         # TYPE kiln_builds_finished_total counter\n",
    );
    for r in Results::ALL {
        let n = m.builds_finished.get(&r).copied().unwrap_or(0);
        let name = r.name().to_ascii_lowercase();
        let _ = writeln!(out, "kiln_builds_finished_total{{results=\"{name}\"}} {n}");
    }
    out
}
