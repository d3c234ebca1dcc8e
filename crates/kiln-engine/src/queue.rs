//! The build-request queue behind the [`Store`] trait (the database implements it in
//! `kiln-store`; [`MemStore`] is the in-memory one for tests), the [`Bus`] the operations
//! publish their [`Event`]s on, and the engine's queue operations on top: submit a buildset,
//! dispatch, finish, cancel.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;

use kiln_model::{BuildRequestId, BuilderId, BuildsetId, Epoch, Results};

use crate::distributor::{
    Assignment, PendingRequest, Snapshot, SourceForCollapse, collapse_key, distribute,
};
use crate::schedulers::BuildsetRequest;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    NotFound(BuildRequestId),
    Backend(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::NotFound(id) => write!(f, "build request {id} not found"),
            StoreError::Backend(e) => write!(f, "store: {e}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// One request to insert with a buildset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRequest {
    pub builder: BuilderId,
    pub priority: i64,
    pub collapse_key: Option<String>,
}

/// What the engine needs from the database. Claims are atomic: [`Store::claim`] returns false
/// when another master claimed the request first (`FOR UPDATE SKIP LOCKED` on PostgreSQL).
pub trait Store: Send + Sync {
    /// Stores the buildset and its requests; the request ids come back in the order of
    /// `requests`.
    fn add_buildset(
        &self,
        bs: &BuildsetRequest,
        requests: &[NewRequest],
        now: Epoch,
    ) -> impl Future<Output = Result<(BuildsetId, Vec<BuildRequestId>), StoreError>> + Send;
    /// Unclaimed, incomplete requests.
    fn pending_requests(
        &self,
    ) -> impl Future<Output = Result<Vec<PendingRequest>, StoreError>> + Send;
    /// Claims `a.request` and completes `a.collapsed` as SKIPPED, in one transaction.
    fn claim(
        &self,
        a: &Assignment,
        now: Epoch,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    fn complete(
        &self,
        id: BuildRequestId,
        results: Results,
        now: Epoch,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Puts a claimed request back in the queue (its build ended RETRY, or its master died).
    fn unclaim(&self, id: BuildRequestId) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Completes an unclaimed request as CANCELLED; false if it was already claimed or complete.
    fn cancel_unclaimed(
        &self,
        id: BuildRequestId,
        now: Epoch,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// What changed, for the web layer and reporters: the model's event type, re-exported here
/// so a [`Bus`] implementation needs only this module.
pub use kiln_model::Event;

/// Where the queue operations publish their [`Event`]s. `publish` must not block or fail
/// the caller: a build never waits for a listener.
pub trait Bus: Send + Sync {
    fn publish(&self, event: Event);
}

/// A bus that keeps every event, for tests.
#[derive(Debug, Default)]
pub struct RecordingBus(pub Mutex<Vec<Event>>);

impl RecordingBus {
    /// The events recorded so far, leaving none behind.
    pub fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.0.lock().expect("bus lock"))
    }
}

impl Bus for RecordingBus {
    fn publish(&self, event: Event) {
        self.0.lock().expect("bus lock").push(event);
    }
}

/// Buildbot's default collapse key for a buildset request (see [`collapse_key`]).
pub fn default_collapse_key(bs: &BuildsetRequest) -> Option<String> {
    let sources: Vec<SourceForCollapse> = bs
        .sources
        .iter()
        .map(|stamp| SourceForCollapse {
            stamp,
            // Kiln takes no patches yet (`try` is to come).
            has_patch: false,
            has_changes: !bs.changes.is_empty(),
        })
        .collect();
    let props = serde_json::to_string(&bs.properties).unwrap_or_default();
    collapse_key(&sources, &props)
}

/// Stores a scheduler's buildset: one request per builder (`builders` maps the names to ids
/// and priorities; unknown names are skipped).
pub async fn submit(
    store: &impl Store,
    bus: &impl Bus,
    bs: &BuildsetRequest,
    builders: &BTreeMap<String, (BuilderId, i64)>,
    now: Epoch,
) -> Result<(BuildsetId, Vec<BuildRequestId>), StoreError> {
    let key = default_collapse_key(bs);
    let reqs: Vec<NewRequest> = bs
        .builders
        .iter()
        .filter_map(|name| builders.get(name))
        .map(|(id, prio)| NewRequest {
            builder: *id,
            priority: *prio,
            collapse_key: key.clone(),
        })
        .collect();
    let (bsid, ids) = store.add_buildset(bs, &reqs, now).await?;
    bus.publish(Event::BuildsetNew {
        buildset: bsid,
        requests: ids.clone(),
    });
    for (request, r) in ids.iter().zip(&reqs) {
        bus.publish(Event::BuildRequestNew {
            request: *request,
            buildset: bsid,
            builder: r.builder,
        });
    }
    Ok((bsid, ids))
}

/// One distribution round: reads the queue, decides with [`distribute`], claims. `world` holds
/// the builders, workers, running builds and locks (its `pending` is replaced). Returns the
/// assignments this master won.
pub async fn dispatch(
    store: &impl Store,
    bus: &impl Bus,
    world: Snapshot,
    now: Epoch,
) -> Result<Vec<Assignment>, StoreError> {
    let pending = store.pending_requests().await?;
    claim_pending(store, bus, world, pending, now).await
}

/// The second half of [`dispatch`], for a caller that read the queue itself (to skip
/// building `world` when nothing waits): decides on `pending` and claims.
pub async fn claim_pending(
    store: &impl Store,
    bus: &impl Bus,
    mut world: Snapshot,
    pending: Vec<PendingRequest>,
    now: Epoch,
) -> Result<Vec<Assignment>, StoreError> {
    world.pending = pending;
    let mut won = Vec::new();
    for a in distribute(&world, now) {
        if store.claim(&a, now).await? {
            bus.publish(Event::BuildRequestClaimed {
                request: a.request,
                builder: a.builder,
                worker: a.worker,
            });
            for c in &a.collapsed {
                bus.publish(Event::BuildRequestCompleted {
                    request: *c,
                    results: Results::Skipped,
                });
            }
            won.push(a);
        }
    }
    Ok(won)
}

/// A build ended: a RETRY build's request goes back to the queue, others complete.
pub async fn build_finished(
    store: &impl Store,
    bus: &impl Bus,
    request: BuildRequestId,
    outcome: &crate::build::BuildOutcome,
    now: Epoch,
) -> Result<(), StoreError> {
    if outcome.requeue {
        store.unclaim(request).await?;
        bus.publish(Event::BuildRequestRequeued { request });
    } else {
        store.complete(request, outcome.results, now).await?;
        bus.publish(Event::BuildRequestCompleted {
            request,
            results: outcome.results,
        });
    }
    Ok(())
}

/// Cancels a queued request. A request whose build already runs is not touched (stop the
/// build instead); returns whether it was cancelled.
pub async fn cancel_request(
    store: &impl Store,
    bus: &impl Bus,
    id: BuildRequestId,
    now: Epoch,
) -> Result<bool, StoreError> {
    let done = store.cancel_unclaimed(id, now).await?;
    if done {
        bus.publish(Event::BuildRequestCancelled { request: id });
    }
    Ok(done)
}

// ---------------------------------------------------------------- in-memory store

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemRequest {
    pub pending: PendingRequest,
    pub bsid: BuildsetId,
    pub claimed: bool,
    pub complete: bool,
    pub results: Option<Results>,
    pub complete_at: Option<Epoch>,
}

/// An in-memory [`Store`] for tests.
#[derive(Debug, Default)]
pub struct MemStore {
    inner: Mutex<MemInner>,
}

#[derive(Debug, Default)]
struct MemInner {
    next_bsid: i64,
    next_brid: i64,
    requests: BTreeMap<BuildRequestId, MemRequest>,
}

impl MemStore {
    pub fn request(&self, id: BuildRequestId) -> Option<MemRequest> {
        self.inner
            .lock()
            .expect("store lock")
            .requests
            .get(&id)
            .cloned()
    }
}

impl Store for MemStore {
    async fn add_buildset(
        &self,
        _bs: &BuildsetRequest,
        requests: &[NewRequest],
        now: Epoch,
    ) -> Result<(BuildsetId, Vec<BuildRequestId>), StoreError> {
        let mut g = self.inner.lock().expect("store lock");
        g.next_bsid += 1;
        let bsid = BuildsetId(g.next_bsid);
        let mut ids = Vec::new();
        for r in requests {
            g.next_brid += 1;
            let id = BuildRequestId(g.next_brid);
            let pending = PendingRequest {
                id,
                builder: r.builder,
                priority: r.priority,
                submitted_at: now,
                collapse_key: r.collapse_key.clone(),
            };
            g.requests.insert(
                id,
                MemRequest {
                    pending,
                    bsid,
                    claimed: false,
                    complete: false,
                    results: None,
                    complete_at: None,
                },
            );
            ids.push(id);
        }
        Ok((bsid, ids))
    }

    async fn pending_requests(&self) -> Result<Vec<PendingRequest>, StoreError> {
        let g = self.inner.lock().expect("store lock");
        Ok(g.requests
            .values()
            .filter(|r| !r.claimed && !r.complete)
            .map(|r| r.pending.clone())
            .collect())
    }

    async fn claim(&self, a: &Assignment, now: Epoch) -> Result<bool, StoreError> {
        let mut g = self.inner.lock().expect("store lock");
        let ids = std::iter::once(a.request).chain(a.collapsed.iter().copied());
        for id in ids.clone() {
            let r = g.requests.get(&id).ok_or(StoreError::NotFound(id))?;
            if r.claimed || r.complete {
                return Ok(false);
            }
        }
        for id in ids {
            let r = g.requests.get_mut(&id).expect("checked above");
            if id == a.request {
                r.claimed = true;
            } else {
                r.complete = true;
                r.results = Some(Results::Skipped);
                r.complete_at = Some(now);
            }
        }
        Ok(true)
    }

    async fn complete(
        &self,
        id: BuildRequestId,
        results: Results,
        now: Epoch,
    ) -> Result<(), StoreError> {
        let mut g = self.inner.lock().expect("store lock");
        let r = g.requests.get_mut(&id).ok_or(StoreError::NotFound(id))?;
        r.complete = true;
        r.results = Some(results);
        r.complete_at = Some(now);
        Ok(())
    }

    async fn unclaim(&self, id: BuildRequestId) -> Result<(), StoreError> {
        let mut g = self.inner.lock().expect("store lock");
        let r = g.requests.get_mut(&id).ok_or(StoreError::NotFound(id))?;
        r.claimed = false;
        Ok(())
    }

    async fn cancel_unclaimed(&self, id: BuildRequestId, now: Epoch) -> Result<bool, StoreError> {
        let mut g = self.inner.lock().expect("store lock");
        let r = g.requests.get_mut(&id).ok_or(StoreError::NotFound(id))?;
        if r.claimed || r.complete {
            return Ok(false);
        }
        r.complete = true;
        r.results = Some(Results::Cancelled);
        r.complete_at = Some(now);
        Ok(true)
    }
}

/// Runs a future that never waits (the [`MemStore`]'s) to completion, without a runtime.
pub fn block_on_ready<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => {
            panic!("block_on_ready: the future is not ready (use a real runtime)")
        }
    }
}
