//! The engine's build-request queue ([`kiln_engine::queue::Store`]) on the database: the
//! queue is the `buildrequests` table; a claim is an `UPDATE … WHERE claimed_by_masterid IS
//! NULL` that only one master can win.

use kiln_engine::distributor::{Assignment, PendingRequest};
use kiln_engine::queue::{NewRequest, Store as QueueStoreTrait, StoreError as QueueError};
use kiln_engine::schedulers::BuildsetRequest;
use kiln_model::{BuildRequestId, BuilderId, BuildsetId, Epoch, MasterId, Results};

use crate::{NewBuildset, NewSourceStamp, Store, StoreError, get_i64, get_opt_str, get_str};

/// The queue as one master sees it: claims are made in its name.
#[derive(Clone)]
pub struct QueueStore {
    pub store: Store,
    pub master: MasterId,
}

fn backend(e: StoreError) -> QueueError {
    QueueError::Backend(e.to_string())
}

impl Store {
    /// The scheduler that made a buildset (`""` for buildsets stored without one).
    pub async fn buildset_scheduler(&self, id: BuildsetId) -> crate::Result<String> {
        let r = sqlx::query("SELECT scheduler FROM buildsets WHERE id = $1")
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?;
        match r {
            Some(r) => get_str(&r, "scheduler"),
            None => Ok(String::new()),
        }
    }

    /// Requests claimed by `master` and not complete (for a clean shutdown's requeue).
    pub async fn claimed_by(&self, master: MasterId) -> crate::Result<Vec<BuildRequestId>> {
        let rows = sqlx::query(
            "SELECT id FROM buildrequests WHERE claimed_by_masterid = $1 AND complete = 0 ORDER BY id",
        )
        .bind(master.0)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| get_i64(r, "id").map(BuildRequestId))
            .collect()
    }
}

impl QueueStoreTrait for QueueStore {
    async fn add_buildset(
        &self,
        bs: &BuildsetRequest,
        requests: &[NewRequest],
        now: Epoch,
    ) -> Result<(BuildsetId, Vec<BuildRequestId>), QueueError> {
        let mut ssids = Vec::with_capacity(bs.sources.len());
        for s in &bs.sources {
            let ss = NewSourceStamp {
                branch: s.branch.clone(),
                revision: s.revision.clone(),
                repository: s.repository.clone(),
                codebase: s.codebase.clone(),
                project: s.project.clone(),
            };
            ssids.push(self.store.add_sourcestamp(&ss, now).await.map_err(backend)?);
        }
        let mut props = bs.properties.clone();
        props.set("scheduler", bs.scheduler.clone(), "Scheduler");
        let priority = requests.iter().map(|r| r.priority).max().unwrap_or(0);
        let new = NewBuildset {
            sourcestamps: ssids,
            builders: requests.iter().map(|r| r.builder).collect(),
            properties: props,
            reason: bs.reason.clone(),
            priority,
            external_idstring: None,
            parent_buildid: bs.parent_build,
            waited_for: bs.waited_for,
        };
        let (bsid, brids) = self.store.add_buildset(&new, now).await.map_err(backend)?;
        // The collapse key and scheduler name go in right after; a distributor round that
        // runs in between sees no key and simply does not collapse that request.
        sqlx::query("UPDATE buildsets SET scheduler = $1 WHERE id = $2")
            .bind(bs.scheduler.as_str())
            .bind(bsid.0)
            .execute(&self.store.pool)
            .await
            .map_err(|e| QueueError::Backend(e.to_string()))?;
        for ((_, brid), req) in brids.iter().zip(requests) {
            if req.priority != priority || req.collapse_key.is_some() {
                sqlx::query("UPDATE buildrequests SET priority = $1, collapse_key = $2 WHERE id = $3")
                    .bind(req.priority)
                    .bind(req.collapse_key.as_deref())
                    .bind(brid.0)
                    .execute(&self.store.pool)
                    .await
                    .map_err(|e| QueueError::Backend(e.to_string()))?;
            }
        }
        Ok((bsid, brids.into_iter().map(|(_, id)| id).collect()))
    }

    async fn pending_requests(&self) -> Result<Vec<PendingRequest>, QueueError> {
        let rows = sqlx::query(
            "SELECT id, builderid, priority, submitted_at, collapse_key FROM buildrequests \
             WHERE complete = 0 AND claimed_by_masterid IS NULL ORDER BY id",
        )
        .fetch_all(&self.store.pool)
        .await
        .map_err(|e| QueueError::Backend(e.to_string()))?;
        rows.iter()
            .map(|r| {
                Ok(PendingRequest {
                    id: BuildRequestId(get_i64(r, "id")?),
                    builder: BuilderId(get_i64(r, "builderid")?),
                    priority: get_i64(r, "priority")?,
                    submitted_at: get_i64(r, "submitted_at")?,
                    collapse_key: get_opt_str(r, "collapse_key")?,
                })
            })
            .collect::<crate::Result<Vec<_>>>()
            .map_err(backend)
    }

    async fn claim(&self, a: &Assignment, now: Epoch) -> Result<bool, QueueError> {
        let won = sqlx::query(
            "UPDATE buildrequests SET claimed_by_masterid = $1, claimed_at = $2 \
             WHERE id = $3 AND claimed_by_masterid IS NULL AND complete = 0",
        )
        .bind(self.master.0)
        .bind(now)
        .bind(a.request.0)
        .execute(&self.store.pool)
        .await
        .map_err(|e| QueueError::Backend(e.to_string()))?
        .rows_affected()
            == 1;
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
                .execute(&self.store.pool)
                .await
                .map_err(|e| QueueError::Backend(e.to_string()))?
                .rows_affected();
                if n == 1 {
                    free.push(*id);
                }
            }
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
            .map_err(backend)
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
