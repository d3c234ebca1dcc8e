//! The build-request queue: the `buildrequests` table and every statement on it, as a few
//! named verbs (`verbs.rs`, `submit.rs`), and [`QueueStore`], the queue as one master sees
//! it: the engine's [`kiln_engine::queue::Store`] plus [`QueueStore::requeue`] and
//! [`QueueStore::release_claims`].
//!
//! * `submit.rs` — `submit`: a buildset with its source stamps, properties and requests.
//! * `verbs.rs` — `claim` (the one claim statement), `claim_assignment`, `cancel`,
//!   `unclaim`, `release_all`, `complete`, and `pending` (the scan).
//! * `requests.rs` — the `Store` methods on requests: reads, and the public
//!   claim/unclaim/complete as thin calls into the verbs.
//! * `cache.rs` — a master's memory of the pending requests and request contexts.
//!
//! A claim is an `UPDATE … WHERE claimed_by_masterid IS NULL` that only one master can win.
//! A master asks for the pending requests on every distribution round (after every build),
//! so [`QueueStore::cached`] keeps them in memory: its own submissions go in at once, and the
//! table is re-read for other writers' new requests at most every `refresh`, and in full
//! every ten `refresh`es and after a requeue. It also keeps what a build needs of its
//! request (source stamps, properties) from the submission, so starting a build reads
//! nothing back. [`QueueStore::new`] reads the table on every call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_engine::distributor::{Assignment, PendingRequest};
use kiln_engine::queue::{NewRequest, Store as QueueStoreTrait, StoreError as QueueError};
use kiln_engine::schedulers::BuildsetRequest;
use kiln_model::{
    BuildRequestId, BuilderId, BuildsetId, Epoch, MasterId, Properties, Results, SourceStamp,
    SourceStampId, StoredSourceStamp,
};

use crate::{NewBuildset, Store, StoreError};

mod cache;
mod requests;
mod submit;
mod verbs;

use cache::{Caches, Due};
pub(crate) use requests::{BR_COLS, row_br};
pub use requests::{BuildRequestFilter, PendingBuilder};
pub(crate) use submit::{Submission, submit};
pub(crate) use verbs::release_all;

/// What a build needs of its request: the buildset, its source stamps and properties.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestContext {
    pub buildsetid: BuildsetId,
    pub sourcestamps: Vec<StoredSourceStamp>,
    pub properties: Properties,
}

/// The queue as one master sees it: claims are made in its name.
#[derive(Clone)]
pub struct QueueStore {
    pub store: Store,
    pub master: MasterId,
    caches: Option<Arc<Caches>>,
}

impl QueueStore {
    /// Reads the queue from the database on every call (several masters, tests).
    pub fn new(store: Store, master: MasterId) -> QueueStore {
        QueueStore {
            store,
            master,
            caches: None,
        }
    }

    /// Keeps the pending requests and the request contexts in memory (see the module doc).
    pub fn cached(store: Store, master: MasterId, refresh: Duration) -> QueueStore {
        QueueStore {
            store,
            master,
            caches: Some(Arc::new(Caches::new(refresh))),
        }
    }

    /// Puts requests this master claimed back in the queue (a build that never started, or
    /// one that ended RETRY), and has the next distribution round re-read the table so they
    /// are seen at once. Returns how many went back.
    ///
    /// * Claimed by another master, complete or gone: left as it is and not counted.
    /// * Database error: `StoreError::Db`, none went back (one transaction). The re-read is
    ///   asked for all the same: it costs one scan, and is right if the commit happened and
    ///   only its answer was lost.
    pub async fn requeue(&self, ids: &[BuildRequestId]) -> crate::Result<u64> {
        let n = verbs::unclaim(&self.store, self.master, ids).await;
        self.requeued();
        n
    }

    /// Gives back every request this master claimed and did not complete, in one statement,
    /// for a clean shutdown: the next start, or another master, runs them. Returns how many.
    ///
    /// * No race: only this master's claims match; completed requests keep theirs.
    /// * Database error: `StoreError::Db`, none went back; the next start's crash recovery
    ///   gives them back then. The re-read is asked for either way, as in [`Self::requeue`].
    pub async fn release_claims(&self) -> crate::Result<u64> {
        let n = match self.store.wpool.acquire().await {
            Ok(mut conn) => release_all(&mut conn, self.master).await,
            Err(e) => Err(e.into()),
        };
        self.requeued();
        n
    }

    /// Requests went back to the queue: the next round re-reads the table (their ids are
    /// older than any the cache would scan for).
    fn requeued(&self) {
        if let Some(c) = &self.caches {
            c.rescan();
        }
    }

    /// The buildset, source stamps and properties of a request: from memory when this master
    /// submitted it, else from the database.
    pub async fn request_context(&self, id: BuildRequestId) -> crate::Result<Arc<RequestContext>> {
        if let Some(ctx) = self.caches.as_ref().and_then(|c| c.context(id)) {
            return Ok(ctx);
        }
        let store = &self.store;
        let req = store
            .get_build_request(id)
            .await?
            .ok_or(StoreError::NotFound("build request", id.0))?;
        let bs = store
            .get_buildset(req.buildsetid)
            .await?
            .ok_or(StoreError::NotFound("buildset", req.buildsetid.0))?;
        let mut sourcestamps = Vec::with_capacity(bs.sourcestamps.len());
        for ssid in &bs.sourcestamps {
            if let Some(ss) = store.get_sourcestamp(*ssid).await? {
                sourcestamps.push(ss);
            }
        }
        let properties = store.get_buildset_properties(req.buildsetid).await?;
        Ok(Arc::new(RequestContext {
            buildsetid: req.buildsetid,
            sourcestamps,
            properties,
        }))
    }

    /// A request is done with (complete, cancelled, claimed elsewhere): drop it from memory.
    fn forget(&self, ids: &[BuildRequestId], context_too: bool) {
        if let Some(c) = &self.caches {
            c.forget(ids, context_too);
        }
    }
}

fn backend(e: StoreError) -> QueueError {
    QueueError::Backend(e.to_string())
}

/// The engine's buildset as the store's: the scheduler's name joins its properties (as
/// Buildbot's `scheduler` property), and the buildset's priority is its highest request's.
fn engine_buildset(bs: &BuildsetRequest, requests: &[NewRequest]) -> NewBuildset {
    let mut properties = bs.properties.clone();
    properties.set("scheduler", bs.scheduler.clone(), "Scheduler");
    NewBuildset {
        sourcestamps: Vec::new(),
        builders: requests.iter().map(|r| r.builder).collect(),
        properties,
        reason: bs.reason.clone(),
        priority: requests.iter().map(|r| r.priority).max().unwrap_or(0),
        external_idstring: None,
        parent_buildid: bs.parent_build,
        waited_for: bs.waited_for,
    }
}

/// The source stamps as stored, for a request context kept in memory.
fn stored_stamps(
    sources: &[SourceStamp],
    ids: &[SourceStampId],
    now: Epoch,
) -> Vec<StoredSourceStamp> {
    sources
        .iter()
        .zip(ids)
        .map(|(stamp, ssid)| StoredSourceStamp {
            ssid: *ssid,
            created_at: now,
            stamp: stamp.clone(),
        })
        .collect()
}

impl QueueStoreTrait for QueueStore {
    /// The queue's `submit`; the requests are pending in memory at once.
    async fn add_buildset(
        &self,
        bs: &BuildsetRequest,
        requests: &[NewRequest],
        now: Epoch,
    ) -> Result<(BuildsetId, Vec<BuildRequestId>), QueueError> {
        let buildset = engine_buildset(bs, requests);
        let rows: Vec<(BuilderId, i64, Option<&str>)> = requests
            .iter()
            .map(|r| (r.builder, r.priority, r.collapse_key.as_deref()))
            .collect();
        let s = Submission {
            sources: &bs.sources,
            buildset: &buildset,
            scheduler: &bs.scheduler,
            requests: &rows,
        };
        let done = submit(&self.store, &s, now).await.map_err(backend)?;
        if let Some(c) = &self.caches {
            let context = Arc::new(RequestContext {
                buildsetid: done.bsid,
                sourcestamps: stored_stamps(&bs.sources, &done.ssids, now),
                properties: buildset.properties,
            });
            c.submitted(&done.requests, requests, context, now);
        }
        Ok((
            done.bsid,
            done.requests.into_iter().map(|(_, id)| id).collect(),
        ))
    }

    /// From memory when cached and fresh, else the queue's `pending` scan.
    async fn pending_requests(&self) -> Result<Vec<PendingRequest>, QueueError> {
        let Some(c) = &self.caches else {
            return verbs::pending(&self.store.pool, None)
                .await
                .map_err(backend);
        };
        let now = Instant::now();
        let after = match c.due(now) {
            Due::Fresh(pending) => return Ok(pending),
            Due::Scan(after) => after,
        };
        let rows = verbs::pending(&self.store.pool, after)
            .await
            .map_err(backend)?;
        Ok(c.merge(after.is_none(), now, rows))
    }

    /// The queue's `claim_assignment` (see its failure policy); won or lost, the request is
    /// no longer pending for this master.
    async fn claim(&self, a: &Assignment, now: Epoch) -> Result<bool, QueueError> {
        let won = verbs::claim_assignment(&self.store, self.master, a, now)
            .await
            .map_err(backend)?;
        self.forget(&[a.request], !won);
        if won {
            self.forget(&a.collapsed, true);
        }
        Ok(won)
    }

    /// The queue's `complete`.
    async fn complete(
        &self,
        id: BuildRequestId,
        results: Results,
        now: Epoch,
    ) -> Result<(), QueueError> {
        self.forget(&[id], true);
        verbs::complete(&self.store, &[id], results, now)
            .await
            .map(|_| ())
            .map_err(backend)
    }

    /// [`QueueStore::requeue`] of one request.
    async fn unclaim(&self, id: BuildRequestId) -> Result<(), QueueError> {
        self.requeue(&[id]).await.map(|_| ()).map_err(backend)
    }

    /// The queue's `cancel` (see its failure policy).
    async fn cancel_unclaimed(&self, id: BuildRequestId, now: Epoch) -> Result<bool, QueueError> {
        let done = verbs::cancel(&self.store, self.master, id, now)
            .await
            .map_err(backend)?;
        if done {
            self.forget(&[id], true);
        }
        Ok(done)
    }
}
