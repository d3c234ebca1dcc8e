//! The master's Prometheus metrics: a small registry of atomics rendered as Prometheus text at
//! `/metrics`. Hand-rolled rather than `metrics` + `metrics-exporter-prometheus` because those
//! install a process-global recorder, and tests (and embedders) run several masters in one
//! process; a handful of gauges does not need more.
//!
//! The master core updates it through the setters below; the `/metrics` handler adds the
//! store-derived figures (log bytes stored) when it renders.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kiln_model::Results;

#[derive(Debug, Default)]
struct Inner {
    workers_connected: AtomicI64,
    builds_running: AtomicI64,
    requests_pending: AtomicI64,
    log_bytes_stored: AtomicI64,
    log_bytes_received: AtomicU64,
    /// Finished builds by result name.
    finished: Mutex<BTreeMap<&'static str, u64>>,
}

/// Counters and gauges of one master; cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct Metrics(Arc<Inner>);

fn result_name(r: Results) -> &'static str {
    match r {
        Results::Success => "success",
        Results::Warnings => "warnings",
        Results::Failure => "failure",
        Results::Skipped => "skipped",
        Results::Exception => "exception",
        Results::Retry => "retry",
        Results::Cancelled => "cancelled",
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// Gauge `kiln_workers_connected`.
    pub fn workers_connected(&self, n: i64) {
        self.0.workers_connected.store(n, Ordering::Relaxed);
    }

    /// Gauge `kiln_builds_running`.
    pub fn builds_running(&self, n: i64) {
        self.0.builds_running.store(n, Ordering::Relaxed);
    }

    /// Gauge `kiln_buildrequests_pending` (unclaimed, incomplete).
    pub fn requests_pending(&self, n: i64) {
        self.0.requests_pending.store(n, Ordering::Relaxed);
    }

    /// Counter `kiln_builds_finished_total{results="..."}`: call once per finished build.
    pub fn build_finished(&self, results: Results) {
        let mut m = self.0.finished.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(result_name(results)).or_default() += 1;
    }

    /// Counter `kiln_log_bytes_received_total`: bytes of log text received from workers.
    pub fn log_bytes_received(&self, n: u64) {
        self.0.log_bytes_received.fetch_add(n, Ordering::Relaxed);
    }

    /// Gauge `kiln_log_bytes_stored` (the `/metrics` handler refreshes it from the store).
    pub fn log_bytes_stored(&self, n: i64) {
        self.0.log_bytes_stored.store(n, Ordering::Relaxed);
    }

    /// The Prometheus text exposition (version 0.0.4).
    pub fn render(&self) -> String {
        let i = &self.0;
        let mut out = String::new();
        let gauge = |out: &mut String, name: &str, help: &str, v: i64| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n"
            );
        };
        gauge(
            &mut out,
            "kiln_workers_connected",
            "Workers connected to this master.",
            i.workers_connected.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "kiln_builds_running",
            "Builds running on this master.",
            i.builds_running.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "kiln_buildrequests_pending",
            "Build requests waiting for a worker.",
            i.requests_pending.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "kiln_log_bytes_stored",
            "Bytes of log text stored (before compression).",
            i.log_bytes_stored.load(Ordering::Relaxed),
        );
        let _ = write!(
            out,
            "# HELP kiln_log_bytes_received_total Bytes of log text received from workers.\n\
             # TYPE kiln_log_bytes_received_total counter\nkiln_log_bytes_received_total {}\n",
            i.log_bytes_received.load(Ordering::Relaxed)
        );
        out.push_str("# HELP kiln_builds_finished_total Builds finished, by result.\n# TYPE kiln_builds_finished_total counter\n");
        let m = i.finished.lock().unwrap_or_else(|e| e.into_inner());
        for r in [
            Results::Success,
            Results::Warnings,
            Results::Failure,
            Results::Skipped,
            Results::Exception,
            Results::Retry,
            Results::Cancelled,
        ] {
            let n = result_name(r);
            let _ = writeln!(
                out,
                "kiln_builds_finished_total{{results=\"{n}\"}} {}",
                m.get(n).copied().unwrap_or(0)
            );
        }
        out
    }
}
