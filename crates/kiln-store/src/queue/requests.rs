//! The `Store` methods on build requests: reading them (one, a filtered list, the builders
//! with pending ones, a master's claims) and the public claim, unclaim and complete, thin
//! calls into the queue's verbs (`verbs.rs`), where their failure policies are written.

use kiln_model::{BuildRequest, BuildRequestId, BuilderId, BuildsetId, Epoch, MasterId, Results};
use sqlx::any::AnyRow;

use super::verbs::{Claim, claim, complete, unclaim};
use crate::{Arg, Result, Sql, Store, clamp_limit, get_bool, get_i64, get_opt_i64, get_results};

/// Filters for [`Store::list_build_requests`]: newest first.
#[derive(Debug, Clone, Default)]
pub struct BuildRequestFilter {
    pub builderid: Option<BuilderId>,
    pub buildsetid: Option<BuildsetId>,
    pub complete: Option<bool>,
    pub claimed: Option<bool>,
    pub before: Option<BuildRequestId>,
    pub limit: Option<i64>,
}

/// A builder with requests waiting in the queue (unclaimed and incomplete).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingBuilder {
    pub builderid: BuilderId,
    pub requests: i64,
    pub max_priority: i64,
    pub oldest_submitted_at: Epoch,
}

pub(crate) const BR_COLS: &str = "id, buildsetid, builderid, priority, submitted_at, complete, complete_at, results, waited_for, claimed_by_masterid, claimed_at";

pub(crate) fn row_br(r: &AnyRow) -> Result<BuildRequest> {
    let claimed_by = get_opt_i64(r, "claimed_by_masterid")?;
    Ok(BuildRequest {
        buildrequestid: BuildRequestId(get_i64(r, "id")?),
        buildsetid: BuildsetId(get_i64(r, "buildsetid")?),
        builderid: BuilderId(get_i64(r, "builderid")?),
        priority: get_i64(r, "priority")?,
        submitted_at: get_i64(r, "submitted_at")?,
        claimed: claimed_by.is_some(),
        claimed_at: get_opt_i64(r, "claimed_at")?,
        claimed_by_masterid: claimed_by.map(MasterId),
        complete: get_bool(r, "complete")?,
        complete_at: get_opt_i64(r, "complete_at")?,
        results: get_results(r, "results")?,
        waited_for: get_bool(r, "waited_for")?,
    })
}

impl Store {
    /// Builders with unclaimed, incomplete requests (read from the queue's partial index), for
    /// the dispatcher's wake-up scan.
    pub async fn pending_builders(&self) -> Result<Vec<PendingBuilder>> {
        let rows = sqlx::query(
            "SELECT builderid, COUNT(*) AS n, MAX(priority) AS p, MIN(submitted_at) AS t FROM buildrequests \
             WHERE complete = 0 AND claimed_by_masterid IS NULL GROUP BY builderid ORDER BY builderid",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PendingBuilder {
                    builderid: BuilderId(get_i64(r, "builderid")?),
                    requests: get_i64(r, "n")?,
                    max_priority: get_i64(r, "p")?,
                    oldest_submitted_at: get_i64(r, "t")?,
                })
            })
            .collect()
    }

    pub async fn get_build_request(&self, id: BuildRequestId) -> Result<Option<BuildRequest>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {BR_COLS} FROM buildrequests WHERE id = $1"
        )))
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(row_br).transpose()
    }

    /// Build requests, newest first.
    pub async fn list_build_requests(&self, f: &BuildRequestFilter) -> Result<Vec<BuildRequest>> {
        let mut q = Sql::new(&format!("SELECT {BR_COLS} FROM buildrequests"));
        if let Some(b) = f.builderid {
            q.and("builderid = ?", Arg::I(b.0));
        }
        if let Some(b) = f.buildsetid {
            q.and("buildsetid = ?", Arg::I(b.0));
        }
        if let Some(c) = f.complete {
            q.and("complete = ?", Arg::I(c as i64));
        }
        match f.claimed {
            Some(true) => {
                q.and_raw("claimed_by_masterid IS NOT NULL");
            }
            Some(false) => {
                q.and_raw("claimed_by_masterid IS NULL");
            }
            None => {}
        }
        if let Some(b) = f.before {
            q.and("id < ?", Arg::I(b.0));
        }
        q.tail("id DESC", clamp_limit(f.limit));
        q.fetch_all(&self.pool).await?.iter().map(row_br).collect()
    }

    /// Claims up to `n` unclaimed, incomplete requests of `builder` for `master`: highest
    /// priority first, then oldest. Two masters (or tasks) claiming at once never get the
    /// same request. The queue's `claim` (see its failure policy): a lost race is a shorter
    /// list, never an error.
    pub async fn claim_build_requests(
        &self,
        master: MasterId,
        builder: BuilderId,
        n: i64,
        now: Epoch,
    ) -> Result<Vec<BuildRequestId>> {
        let mut conn = self.wpool.acquire().await?;
        let which = Claim::Next { builder, n };
        claim(&mut conn, self.backend, master, which, now).await
    }

    /// Gives back requests claimed by `master` that are not complete; returns how many. The
    /// queue's `unclaim`. A master should call [`QueueStore::requeue`](crate::QueueStore::requeue),
    /// which also has its cached queue re-read the table.
    pub async fn unclaim_build_requests(
        &self,
        master: MasterId,
        ids: &[BuildRequestId],
    ) -> Result<u64> {
        unclaim(self, master, ids).await
    }

    /// Completes requests (those not already complete) and then every buildset all of whose
    /// requests are complete, with the worst result. Returns how many requests. The queue's
    /// `complete`.
    pub async fn complete_build_requests(
        &self,
        ids: &[BuildRequestId],
        results: Results,
        now: Epoch,
    ) -> Result<u64> {
        complete(self, ids, results, now).await
    }

    /// Requests claimed by `master` and not complete. (A clean shutdown gives them back with
    /// [`QueueStore::release_claims`](crate::QueueStore::release_claims), in one statement.)
    pub async fn claimed_by(&self, master: MasterId) -> Result<Vec<BuildRequestId>> {
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
