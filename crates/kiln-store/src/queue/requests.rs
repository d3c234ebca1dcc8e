//! The build requests (`buildrequests`): inserting a buildset with its requests, claiming,
//! unclaiming and completing them, and reading them back.

use kiln_model::{
    BuildRequest, BuildRequestId, BuilderId, BuildsetId, Epoch, MasterId, Results, SourceStampId,
};
use sqlx::any::AnyRow;
use sqlx::{Any, Transaction};

use crate::{
    Arg, Backend, NewBuildset, NewSourceStamp, Result, Sql, Store, StoreError, clamp_limit,
    get_bool, get_i64, get_opt_i64, get_results, get_str, prop_json,
};

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
    /// SQLite: new source stamps, a buildset and its requests (as [`Store::insert_buildset`])
    /// in one batch, one trip to the writer. Inside the batch's write transaction the newest
    /// ids are the ones it just made (ids only grow: `AUTOINCREMENT`), so later statements
    /// find them with `MAX(id)`. Returns the source stamp ids in `sources` order.
    pub(crate) async fn add_buildset_batch(
        &self,
        sources: &[NewSourceStamp],
        bs: &NewBuildset,
        now: Epoch,
        scheduler: &str,
        requests: &[(BuilderId, i64, Option<&str>)],
    ) -> Result<(
        Vec<SourceStampId>,
        BuildsetId,
        Vec<(BuilderId, BuildRequestId)>,
    )> {
        let mut n = 0;
        let mut p = || {
            n += 1;
            format!("${n}")
        };
        let mut sql = String::from("BEGIN IMMEDIATE; ");
        for _ in sources {
            sql += &format!(
                "INSERT INTO sourcestamps (branch, revision, repository, codebase, project, created_at) \
                 VALUES ({}, {}, {}, {}, {}, {}) RETURNING id, 'ss' AS kind; ",
                p(),
                p(),
                p(),
                p(),
                p(),
                p()
            );
        }
        sql += &format!(
            "INSERT INTO buildsets (external_idstring, reason, submitted_at, complete, parent_buildid, scheduler) \
             VALUES ({}, {}, {}, 0, {}, {}) RETURNING id, 'bs' AS kind; ",
            p(),
            p(),
            p(),
            p(),
            p()
        );
        const BSID: &str = "(SELECT MAX(id) FROM buildsets)";
        if !sources.is_empty() {
            sql += &format!(
                "INSERT INTO buildset_sourcestamps (buildsetid, sourcestampid) \
                 SELECT {BSID}, id FROM (SELECT id FROM sourcestamps ORDER BY id DESC LIMIT {}); ",
                sources.len()
            );
        }
        let props: Vec<_> = bs.properties.0.iter().collect();
        for batch in props.chunks(200) {
            let values: Vec<String> = batch
                .iter()
                .map(|_| format!("({}, {})", p(), p()))
                .collect();
            sql += &format!(
                "INSERT INTO buildset_properties (buildsetid, property_name, property_value) \
                 SELECT {BSID}, column1, column2 FROM (VALUES {}); ",
                values.join(", ")
            );
        }
        for _ in requests {
            sql += &format!(
                "INSERT INTO buildrequests (buildsetid, builderid, priority, submitted_at, complete, waited_for, collapse_key) \
                 VALUES ({BSID}, {}, {}, {}, 0, {}, {}) RETURNING id, 'br' AS kind; ",
                p(),
                p(),
                p(),
                p(),
                p()
            );
        }
        sql += "COMMIT";
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for ss in sources {
            q = q
                .bind(ss.branch.as_deref())
                .bind(ss.revision.as_deref())
                .bind(ss.repository.as_str())
                .bind(ss.codebase.as_str())
                .bind(ss.project.as_str())
                .bind(now);
        }
        q = q
            .bind(bs.external_idstring.as_deref())
            .bind(bs.reason.as_str())
            .bind(now)
            .bind(bs.parent_buildid.map(|b| b.0))
            .bind(scheduler);
        for batch in props.chunks(200) {
            for (name, v) in batch {
                q = q.bind(name.as_str()).bind(prop_json(v));
            }
        }
        for (b, priority, key) in requests {
            q = q
                .bind(b.0)
                .bind(*priority)
                .bind(now)
                .bind(bs.waited_for as i64)
                .bind(*key);
        }
        let rows = self.sqlite_batch(q).await?;
        let (mut ssids, mut bsid, mut brids) = (Vec::new(), None, Vec::new());
        for r in &rows {
            let id = get_i64(r, "id")?;
            match get_str(r, "kind")?.as_str() {
                "ss" => ssids.push(SourceStampId(id)),
                "bs" => bsid = Some(BuildsetId(id)),
                _ => brids.push(BuildRequestId(id)),
            }
        }
        let bsid =
            bsid.ok_or_else(|| StoreError::Corrupt("buildset insert returned no id".into()))?;
        if ssids.len() != sources.len() || brids.len() != requests.len() {
            return Err(StoreError::Corrupt(
                "buildset batch returned the wrong number of ids".into(),
            ));
        }
        Ok((
            ssids,
            bsid,
            requests.iter().map(|r| r.0).zip(brids).collect(),
        ))
    }

    /// The buildset row, its source stamp links, properties and requests (builder, priority,
    /// collapse key), inside the caller's transaction.
    pub(crate) async fn insert_buildset(
        tx: &mut Transaction<'static, Any>,
        bs: &NewBuildset,
        now: Epoch,
        scheduler: &str,
        requests: &[(BuilderId, i64, Option<&str>)],
    ) -> Result<(BuildsetId, Vec<(BuilderId, BuildRequestId)>)> {
        let row = sqlx::query(
            "INSERT INTO buildsets (external_idstring, reason, submitted_at, complete, parent_buildid, scheduler) \
             VALUES ($1, $2, $3, 0, $4, $5) RETURNING id",
        )
        .bind(bs.external_idstring.as_deref())
        .bind(bs.reason.as_str())
        .bind(now)
        .bind(bs.parent_buildid.map(|b| b.0))
        .bind(scheduler)
        .fetch_one(&mut **tx)
        .await?;
        let bsid = get_i64(&row, "id")?;
        if !bs.sourcestamps.is_empty() {
            let values: Vec<String> = (0..bs.sourcestamps.len())
                .map(|i| format!("($1, ${})", 2 + i))
                .collect();
            let sql = format!(
                "INSERT INTO buildset_sourcestamps (buildsetid, sourcestampid) VALUES {}",
                values.join(", ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(bsid);
            for ss in &bs.sourcestamps {
                q = q.bind(ss.0);
            }
            q.execute(&mut **tx).await?;
        }
        let props: Vec<_> = bs.properties.0.iter().collect();
        for batch in props.chunks(200) {
            let values: Vec<String> = (0..batch.len())
                .map(|i| format!("($1, ${}, ${})", 2 + 2 * i, 3 + 2 * i))
                .collect();
            let sql = format!(
                "INSERT INTO buildset_properties (buildsetid, property_name, property_value) VALUES {}",
                values.join(", ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(bsid);
            for (name, v) in batch {
                q = q.bind(name.as_str()).bind(prop_json(v));
            }
            q.execute(&mut **tx).await?;
        }
        let mut brids = Vec::with_capacity(requests.len());
        for (b, priority, key) in requests {
            let row = sqlx::query(
                "INSERT INTO buildrequests (buildsetid, builderid, priority, submitted_at, complete, waited_for, collapse_key) \
                 VALUES ($1, $2, $3, $4, 0, $5, $6) RETURNING id",
            )
            .bind(bsid)
            .bind(b.0)
            .bind(*priority)
            .bind(now)
            .bind(bs.waited_for as i64)
            .bind(*key)
            .fetch_one(&mut **tx)
            .await?;
            brids.push((*b, BuildRequestId(get_i64(&row, "id")?)));
        }
        Ok((BuildsetId(bsid), brids))
    }

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

    /// Claims up to `n` unclaimed, incomplete requests of `builder` for `master`: highest priority
    /// first, then oldest. Two masters (or tasks) claiming at once never get the same request.
    pub async fn claim_build_requests(
        &self,
        master: MasterId,
        builder: BuilderId,
        n: i64,
        now: Epoch,
    ) -> Result<Vec<BuildRequestId>> {
        let sql = match self.backend {
            Backend::Postgres => {
                "UPDATE buildrequests SET claimed_by_masterid = $1, claimed_at = $2 WHERE id IN (\
                 SELECT id FROM buildrequests WHERE builderid = $3 AND complete = 0 AND claimed_by_masterid IS NULL \
                 ORDER BY priority DESC, submitted_at, id LIMIT $4 FOR UPDATE SKIP LOCKED) \
                 AND claimed_by_masterid IS NULL RETURNING id, priority, submitted_at"
            }
            Backend::Sqlite => {
                "UPDATE buildrequests SET claimed_by_masterid = $1, claimed_at = $2 WHERE id IN (\
                 SELECT id FROM buildrequests WHERE builderid = $3 AND complete = 0 AND claimed_by_masterid IS NULL \
                 ORDER BY priority DESC, submitted_at, id LIMIT $4) \
                 AND claimed_by_masterid IS NULL RETURNING id, priority, submitted_at"
            }
        };
        let rows = sqlx::query(sql)
            .bind(master.0)
            .bind(now)
            .bind(builder.0)
            .bind(n.max(0))
            .fetch_all(&self.wpool)
            .await?;
        let mut got = rows
            .iter()
            .map(|r| {
                Ok((
                    get_i64(r, "priority")?,
                    get_i64(r, "submitted_at")?,
                    get_i64(r, "id")?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        got.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        Ok(got
            .into_iter()
            .map(|(_, _, id)| BuildRequestId(id))
            .collect())
    }

    /// Gives back requests claimed by `master` that are not complete; returns how many.
    pub async fn unclaim_build_requests(
        &self,
        master: MasterId,
        ids: &[BuildRequestId],
    ) -> Result<u64> {
        let mut tx = self.write_tx().await?;
        let mut n = 0;
        for id in ids {
            n += sqlx::query(
                "UPDATE buildrequests SET claimed_by_masterid = NULL, claimed_at = NULL \
                 WHERE id = $1 AND claimed_by_masterid = $2 AND complete = 0",
            )
            .bind(id.0)
            .bind(master.0)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(n)
    }

    /// Completes requests (those not already complete) and then every buildset all of whose
    /// requests are complete, with the worst of their results. Returns how many requests.
    pub async fn complete_build_requests(
        &self,
        ids: &[BuildRequestId],
        results: Results,
        now: Epoch,
    ) -> Result<u64> {
        if let ([id], Backend::Sqlite) = (ids, self.backend) {
            // The common case (a build ended) in one trip to the writer: the request, then
            // its buildset if that was its last open request, with the worst result
            // (Buildbot's `worst_status`: SKIPPED < SUCCESS < WARNINGS < FAILURE < …).
            const SEVERITY: &str = "CASE COALESCE(results, 0) WHEN 3 THEN 0 WHEN 0 THEN 1 WHEN 1 THEN 2 WHEN 2 THEN 3 \
                                    ELSE COALESCE(results, 0) END";
            let sql = format!(
                "BEGIN IMMEDIATE; \
                 UPDATE buildrequests SET complete = 1, complete_at = $1, results = $2 WHERE id = $3 AND complete = 0 RETURNING id; \
                 UPDATE buildsets SET complete = 1, complete_at = $1, results = \
                   (SELECT CASE MAX({SEVERITY}) WHEN 0 THEN 3 WHEN 1 THEN 0 WHEN 2 THEN 1 WHEN 3 THEN 2 ELSE MAX({SEVERITY}) END \
                    FROM buildrequests WHERE buildsetid = buildsets.id) \
                 WHERE id = (SELECT buildsetid FROM buildrequests WHERE id = $3) AND complete = 0 \
                   AND NOT EXISTS (SELECT 1 FROM buildrequests WHERE buildsetid = buildsets.id AND complete = 0); \
                 COMMIT"
            );
            let rows = self
                .sqlite_batch(
                    sqlx::query(sqlx::AssertSqlSafe(sql))
                        .bind(now)
                        .bind(i64::from(results))
                        .bind(id.0),
                )
                .await?;
            return Ok(rows.len() as u64);
        }
        let mut tx = self.write_tx().await?;
        let mut n = 0;
        let mut buildsets = Vec::new();
        for id in ids {
            let row = sqlx::query(
                "UPDATE buildrequests SET complete = 1, complete_at = $1, results = $2 WHERE id = $3 AND complete = 0 RETURNING buildsetid",
            )
            .bind(now)
            .bind(i64::from(results))
            .bind(id.0)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(r) = row {
                n += 1;
                let bs = get_i64(&r, "buildsetid")?;
                if !buildsets.contains(&bs) {
                    buildsets.push(bs);
                }
            }
        }
        for bs in buildsets {
            let rows =
                sqlx::query("SELECT complete, results FROM buildrequests WHERE buildsetid = $1")
                    .bind(bs)
                    .fetch_all(&mut *tx)
                    .await?;
            let mut worst: Option<Results> = None;
            let mut all = true;
            for r in &rows {
                if !get_bool(r, "complete")? {
                    all = false;
                    break;
                }
                let res = get_results(r, "results")?.unwrap_or(Results::Success);
                worst = Some(worst.map_or(res, |w| w.worst(res)));
            }
            if all {
                sqlx::query("UPDATE buildsets SET complete = 1, complete_at = $1, results = $2 WHERE id = $3 AND complete = 0")
                    .bind(now)
                    .bind(i64::from(worst.unwrap_or(Results::Success)))
                    .bind(bs)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(n)
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
