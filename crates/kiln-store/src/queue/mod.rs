//! The engine's build-request queue ([`kiln_engine::queue::Store`]) on the database: the
//! queue is the `buildrequests` table; a claim is an `UPDATE … WHERE claimed_by_masterid IS
//! NULL` that only one master can win.
//!
//! A master asks for the pending requests on every distribution round (after every build),
//! so [`QueueStore::cached`] keeps them in memory: its own submissions go in at once, and the
//! table is re-read for other writers' new requests at most every `refresh`, and in full
//! every ten `refresh`es and after an unclaim. It also keeps what a build needs of its
//! request (source stamps, properties) from the submission, so starting a build reads
//! nothing back. [`QueueStore::new`] reads the table on every call.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_engine::distributor::{Assignment, PendingRequest};
use kiln_engine::queue::{NewRequest, Store as QueueStoreTrait, StoreError as QueueError};
use kiln_engine::schedulers::BuildsetRequest;
use kiln_model::{
    BuildRequestId, BuilderId, BuildsetId, Epoch, MasterId, Properties, Results, SourceStamp,
};

use crate::sourcestamps::insert_ss;
use crate::{Backend, NewBuildset, NewSourceStamp, Store, StoreError, get_i64, get_opt_str};

mod requests;

pub(crate) use requests::{BR_COLS, row_br};
pub use requests::{BuildRequestFilter, PendingBuilder};

/// What a build needs of its request: the buildset, its source stamps and properties.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestContext {
    pub buildsetid: BuildsetId,
    pub sourcestamps: Vec<SourceStamp>,
    pub properties: Properties,
}

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

struct Caches {
    refresh: Duration,
    pending: Mutex<PendingCache>,
    contexts: Mutex<HashMap<BuildRequestId, Arc<RequestContext>>>,
}

/// The queue as one master sees it: claims are made in its name.
#[derive(Clone)]
pub struct QueueStore {
    pub store: Store,
    pub master: MasterId,
    caches: Option<Arc<Caches>>,
}

const PENDING_COLS: &str = "id, builderid, priority, submitted_at, collapse_key";

fn row_pending(r: &sqlx::any::AnyRow) -> crate::Result<PendingRequest> {
    Ok(PendingRequest {
        id: BuildRequestId(get_i64(r, "id")?),
        builder: BuilderId(get_i64(r, "builderid")?),
        priority: get_i64(r, "priority")?,
        submitted_at: get_i64(r, "submitted_at")?,
        collapse_key: get_opt_str(r, "collapse_key")?,
    })
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
        let caches = Caches {
            refresh,
            pending: Mutex::new(PendingCache {
                full_due: true,
                ..Default::default()
            }),
            contexts: Mutex::new(HashMap::new()),
        };
        QueueStore {
            store,
            master,
            caches: Some(Arc::new(caches)),
        }
    }

    /// The buildset, source stamps and properties of a request: from memory when this master
    /// submitted it, else from the database.
    pub async fn request_context(&self, id: BuildRequestId) -> crate::Result<Arc<RequestContext>> {
        if let Some(c) = &self.caches
            && let Some(ctx) = c.contexts.lock().expect("contexts lock").get(&id)
        {
            return Ok(ctx.clone());
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
            let mut p = c.pending.lock().expect("pending lock");
            for id in ids {
                p.by_id.remove(id);
            }
            drop(p);
            if context_too {
                let mut ctx = c.contexts.lock().expect("contexts lock");
                for id in ids {
                    ctx.remove(id);
                }
            }
        }
    }

    /// Requests went back to the queue outside [`QueueStoreTrait::add_buildset`] (an
    /// unclaim here or by the master's own clean-up): the next round re-reads the table.
    pub fn requeued(&self) {
        if let Some(c) = &self.caches {
            c.pending.lock().expect("pending lock").full_due = true;
        }
    }

    async fn scan(&self, after: Option<i64>) -> crate::Result<Vec<PendingRequest>> {
        let rows = match after {
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {PENDING_COLS} FROM buildrequests \
                     WHERE complete = 0 AND claimed_by_masterid IS NULL ORDER BY id"
                )))
                .fetch_all(&self.store.pool)
                .await?
            }
            Some(after) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {PENDING_COLS} FROM buildrequests \
                     WHERE id > $1 AND complete = 0 AND claimed_by_masterid IS NULL ORDER BY id"
                )))
                .bind(after)
                .fetch_all(&self.store.pool)
                .await?
            }
        };
        rows.iter().map(row_pending).collect()
    }
}

fn backend(e: StoreError) -> QueueError {
    QueueError::Backend(e.to_string())
}

impl QueueStoreTrait for QueueStore {
    async fn add_buildset(
        &self,
        bs: &BuildsetRequest,
        requests: &[NewRequest],
        now: Epoch,
    ) -> Result<(BuildsetId, Vec<BuildRequestId>), QueueError> {
        let sources: Vec<NewSourceStamp> = bs
            .sources
            .iter()
            .map(|s| NewSourceStamp {
                branch: s.branch.clone(),
                revision: s.revision.clone(),
                repository: s.repository.clone(),
                codebase: s.codebase.clone(),
                project: s.project.clone(),
            })
            .collect();
        let mut props = bs.properties.clone();
        props.set("scheduler", bs.scheduler.clone(), "Scheduler");
        let priority = requests.iter().map(|r| r.priority).max().unwrap_or(0);
        let rows: Vec<(BuilderId, i64, Option<&str>)> = requests
            .iter()
            .map(|r| (r.builder, r.priority, r.collapse_key.as_deref()))
            .collect();
        let mut new = NewBuildset {
            sourcestamps: Vec::new(),
            builders: requests.iter().map(|r| r.builder).collect(),
            properties: props,
            reason: bs.reason.clone(),
            priority,
            external_idstring: None,
            parent_buildid: bs.parent_build,
            waited_for: bs.waited_for,
        };
        // Source stamps, buildset, properties and requests in one transaction (on SQLite
        // one batch: a force or a change costs one trip to the writer).
        let (ssids, bsid, brids) = if self.store.backend == Backend::Sqlite {
            self.store
                .add_buildset_batch(&sources, &new, now, &bs.scheduler, &rows)
                .await
                .map_err(backend)?
        } else {
            let mut tx = self.store.write_tx().await.map_err(backend)?;
            for ss in &sources {
                new.sourcestamps
                    .push(insert_ss(&mut tx, ss, now).await.map_err(backend)?);
            }
            let (bsid, brids) = Store::insert_buildset(&mut tx, &new, now, &bs.scheduler, &rows)
                .await
                .map_err(backend)?;
            tx.commit()
                .await
                .map_err(|e| QueueError::Backend(e.to_string()))?;
            (new.sourcestamps.clone(), bsid, brids)
        };
        if let Some(c) = &self.caches {
            let context = Arc::new(RequestContext {
                buildsetid: bsid,
                sourcestamps: sources
                    .into_iter()
                    .zip(ssids)
                    .map(|(s, ssid)| SourceStamp {
                        ssid,
                        branch: s.branch,
                        revision: s.revision,
                        repository: s.repository,
                        codebase: s.codebase,
                        project: s.project,
                        created_at: now,
                    })
                    .collect(),
                properties: new.properties,
            });
            let mut p = c.pending.lock().expect("pending lock");
            if p.by_id.len() < CACHE_MAX {
                for ((_, id), r) in brids.iter().zip(requests) {
                    p.by_id.insert(
                        *id,
                        PendingRequest {
                            id: *id,
                            builder: r.builder,
                            priority: r.priority,
                            submitted_at: now,
                            collapse_key: r.collapse_key.clone(),
                        },
                    );
                }
            } else {
                p.full_due = true;
            }
            drop(p);
            let mut ctx = c.contexts.lock().expect("contexts lock");
            if ctx.len() < CACHE_MAX {
                for (_, id) in &brids {
                    ctx.insert(*id, context.clone());
                }
            }
        }
        Ok((bsid, brids.into_iter().map(|(_, id)| id).collect()))
    }

    async fn pending_requests(&self) -> Result<Vec<PendingRequest>, QueueError> {
        let Some(c) = &self.caches else {
            return self.scan(None).await.map_err(backend);
        };
        let now = Instant::now();
        let (full, after) = {
            let p = c.pending.lock().expect("pending lock");
            let stale = |t: Option<Instant>, every: Duration| {
                t.is_none_or(|t| now.duration_since(t) >= every)
            };
            if p.full_due || stale(p.last_full, c.refresh * 10) {
                (true, None)
            } else if stale(p.last_scan, c.refresh) {
                (false, Some(p.max_seen))
            } else {
                return Ok(p.by_id.values().cloned().collect());
            }
        };
        let rows = self.scan(after).await.map_err(backend)?;
        let mut p = c.pending.lock().expect("pending lock");
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
        Ok(p.by_id.values().cloned().collect())
    }

    async fn claim(&self, a: &Assignment, now: Epoch) -> Result<bool, QueueError> {
        let won = sqlx::query(
            "UPDATE buildrequests SET claimed_by_masterid = $1, claimed_at = $2 \
             WHERE id = $3 AND claimed_by_masterid IS NULL AND complete = 0",
        )
        .bind(self.master.0)
        .bind(now)
        .bind(a.request.0)
        .execute(&self.store.wpool)
        .await
        .map_err(|e| QueueError::Backend(e.to_string()))?
        .rows_affected()
            == 1;
        // Won or lost, the request is no longer pending for this master.
        self.forget(&[a.request], !won);
        if won && !a.collapsed.is_empty() {
            // Collapsed requests are answered by this build: Buildbot completes them SKIPPED.
            // Only those still unclaimed (another master may have taken one meanwhile).
            let mut free = Vec::with_capacity(a.collapsed.len());
            for id in &a.collapsed {
                let n = sqlx::query(
                    "UPDATE buildrequests SET claimed_by_masterid = $1, claimed_at = $2 \
                     WHERE id = $3 AND claimed_by_masterid IS NULL AND complete = 0",
                )
                .bind(self.master.0)
                .bind(now)
                .bind(id.0)
                .execute(&self.store.wpool)
                .await
                .map_err(|e| QueueError::Backend(e.to_string()))?
                .rows_affected();
                if n == 1 {
                    free.push(*id);
                }
            }
            self.forget(&a.collapsed, true);
            self.store
                .complete_build_requests(&free, Results::Skipped, now)
                .await
                .map_err(backend)?;
        }
        Ok(won)
    }

    async fn complete(
        &self,
        id: BuildRequestId,
        results: Results,
        now: Epoch,
    ) -> Result<(), QueueError> {
        self.forget(&[id], true);
        self.store
            .complete_build_requests(&[id], results, now)
            .await
            .map(|_| ())
            .map_err(backend)
    }

    async fn unclaim(&self, id: BuildRequestId) -> Result<(), QueueError> {
        self.store
            .unclaim_build_requests(self.master, &[id])
            .await
            .map(|_| ())
            .map_err(backend)?;
        self.requeued();
        Ok(())
    }

    async fn cancel_unclaimed(&self, id: BuildRequestId, now: Epoch) -> Result<bool, QueueError> {
        let mut tx = self.store.write_tx().await.map_err(backend)?;
        let n = sqlx::query(
            "UPDATE buildrequests SET claimed_by_masterid = $1, claimed_at = $2 \
             WHERE id = $3 AND claimed_by_masterid IS NULL AND complete = 0",
        )
        .bind(self.master.0)
        .bind(now)
        .bind(id.0)
        .execute(&mut *tx)
        .await
        .map_err(|e| QueueError::Backend(e.to_string()))?
        .rows_affected();
        tx.commit()
            .await
            .map_err(|e| QueueError::Backend(e.to_string()))?;
        if n == 0 {
            return Ok(false);
        }
        self.complete(id, Results::Cancelled, now).await?;
        Ok(true)
    }
}
