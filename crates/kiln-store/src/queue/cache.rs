//! A master's memory of the queue ([`QueueStore::cached`](super::QueueStore::cached)): the
//! pending requests, so a distribution round (one after every build) does not read the
//! table, and each request's context from its submission, so starting a build reads
//! nothing back. No SQL here; the caller scans with `verbs::pending` when told to.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_engine::distributor::PendingRequest;
use kiln_engine::queue::NewRequest;
use kiln_model::{BuildRequestId, BuilderId, Epoch};

use super::RequestContext;

/// Caches kept no bigger than this; past it, entries are simply not added (and read back
/// from the database when needed).
const CACHE_MAX: usize = 100_000;

#[derive(Default)]
struct PendingCache {
    by_id: BTreeMap<BuildRequestId, PendingRequest>,
    /// The highest request id any scan saw.
    max_seen: i64,
    last_scan: Option<Instant>,
    last_full: Option<Instant>,
    full_due: bool,
}

pub(super) struct Caches {
    refresh: Duration,
    pending: Mutex<PendingCache>,
    contexts: Mutex<HashMap<BuildRequestId, Arc<RequestContext>>>,
}

/// What answering "which requests are pending" takes.
pub(super) enum Due {
    /// Memory is fresh: this is the answer.
    Fresh(Vec<PendingRequest>),
    /// Scan the table: in full (`None`), or for requests after this id (other writers' new
    /// ones); then hand the rows to [`Caches::merge`].
    Scan(Option<i64>),
}

impl Caches {
    /// Empty, with a full scan due.
    pub fn new(refresh: Duration) -> Caches {
        Caches {
            refresh,
            pending: Mutex::new(PendingCache {
                full_due: true,
                ..Default::default()
            }),
            contexts: Mutex::new(HashMap::new()),
        }
    }

    pub fn context(&self, id: BuildRequestId) -> Option<Arc<RequestContext>> {
        self.contexts
            .lock()
            .expect("contexts lock")
            .get(&id)
            .cloned()
    }

    /// This master's own submission: its requests are pending at once, with their context.
    pub fn submitted(
        &self,
        ids: &[(BuilderId, BuildRequestId)],
        requests: &[NewRequest],
        context: Arc<RequestContext>,
        now: Epoch,
    ) {
        let mut p = self.pending.lock().expect("pending lock");
        if p.by_id.len() < CACHE_MAX {
            for ((_, id), r) in ids.iter().zip(requests) {
                let pending = PendingRequest {
                    id: *id,
                    builder: r.builder,
                    priority: r.priority,
                    submitted_at: now,
                    collapse_key: r.collapse_key.clone(),
                };
                p.by_id.insert(*id, pending);
            }
        } else {
            p.full_due = true;
        }
        drop(p);
        let mut ctx = self.contexts.lock().expect("contexts lock");
        if ctx.len() < CACHE_MAX {
            for (_, id) in ids {
                ctx.insert(*id, context.clone());
            }
        }
    }

    /// Requests that are no longer pending (claimed here or elsewhere, completed,
    /// cancelled); with `context_too` once no build of this master will need their context.
    pub fn forget(&self, ids: &[BuildRequestId], context_too: bool) {
        let mut p = self.pending.lock().expect("pending lock");
        for id in ids {
            p.by_id.remove(id);
        }
        drop(p);
        if context_too {
            let mut ctx = self.contexts.lock().expect("contexts lock");
            for id in ids {
                ctx.remove(id);
            }
        }
    }

    /// Requests went back to the queue: only a full scan finds them (their ids are old).
    pub fn rescan(&self) {
        self.pending.lock().expect("pending lock").full_due = true;
    }

    /// A full scan every ten `refresh`es or when one is due, a scan for new ids every
    /// `refresh`, memory in between.
    pub fn due(&self, now: Instant) -> Due {
        let p = self.pending.lock().expect("pending lock");
        let stale =
            |t: Option<Instant>, every: Duration| t.is_none_or(|t| now.duration_since(t) >= every);
        if p.full_due || stale(p.last_full, self.refresh * 10) {
            Due::Scan(None)
        } else if stale(p.last_scan, self.refresh) {
            Due::Scan(Some(p.max_seen))
        } else {
            Due::Fresh(p.by_id.values().cloned().collect())
        }
    }

    /// Takes in the rows of the scan [`Caches::due`] asked for (`full`: all of them, made
    /// at `now`) and returns the pending requests.
    pub fn merge(
        &self,
        full: bool,
        now: Instant,
        rows: Vec<PendingRequest>,
    ) -> Vec<PendingRequest> {
        let mut p = self.pending.lock().expect("pending lock");
        if full {
            p.by_id.clear();
            p.full_due = false;
            p.last_full = Some(now);
        }
        p.last_scan = Some(now);
        for r in rows {
            p.max_seen = p.max_seen.max(r.id.0);
            if p.by_id.len() < CACHE_MAX {
                p.by_id.insert(r.id, r);
            } else {
                p.full_due = true;
            }
        }
        p.by_id.values().cloned().collect()
    }
}
