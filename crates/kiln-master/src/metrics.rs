//! The master's counters and gauges, kept current by the core and read by the web port's
//! `/metrics` (which renders them as Prometheus text). Hand-rolled rather than `metrics` +
//! `metrics-exporter-prometheus` because those install a process-global recorder, and tests
//! (and embedders) run several masters in one process; a handful of gauges does not need more.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kiln_model::Results;

#[derive(Debug, Default)]
struct Inner {
    workers_connected: AtomicI64,
    builds_running: AtomicI64,
    requests_pending: AtomicI64,
    log_bytes_received: AtomicU64,
    /// Finished builds by result.
    finished: Mutex<HashMap<Results, u64>>,
}

/// Counters and gauges of one master; cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct Metrics(Arc<Inner>);

/// The figures at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    pub workers_connected: i64,
    pub builds_running: i64,
    /// Unclaimed, incomplete build requests.
    pub requests_pending: i64,
    /// Bytes of log text received from workers since the start.
    pub log_bytes_received: u64,
    /// Builds finished since the start, by result.
    pub builds_finished: HashMap<Results, u64>,
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
        *m.entry(results).or_default() += 1;
    }

    /// Counter `kiln_log_bytes_received_total`: bytes of log text received from workers.
    pub fn log_bytes_received(&self, n: u64) {
        self.0.log_bytes_received.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let i = &self.0;
        MetricsSnapshot {
            workers_connected: i.workers_connected.load(Ordering::Relaxed),
            builds_running: i.builds_running.load(Ordering::Relaxed),
            requests_pending: i.requests_pending.load(Ordering::Relaxed),
            log_bytes_received: i.log_bytes_received.load(Ordering::Relaxed),
            builds_finished: i.finished.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }
}
