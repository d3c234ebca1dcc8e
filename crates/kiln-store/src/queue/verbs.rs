//! The queue's verbs: every statement that claims, gives back or completes build requests,
//! and the scan of what is pending. Storing a buildset with its requests is `submit.rs`.
//!
//! Each verb is one statement or one transaction, so a database error (always
//! `StoreError::Db`) leaves nothing half done; losing a race to another master is never an
//! error, only a smaller answer. Each verb's doc says what it does when it loses a race,
//! when the row is gone, and when the database fails.

use std::cmp::Reverse;

use kiln_engine::distributor::{Assignment, PendingRequest};
use kiln_model::{BuildRequestId, BuilderId, Epoch, MasterId, Results};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AnyPool};

use crate::{Backend, Params, Result, Store, get_bool, get_i64, get_opt_str, get_results};

/// The most ids one statement names (far below either database's parameter limit).
const IDS_PER_STATEMENT: usize = 500;

/// Which requests a [`claim`] asks for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Claim<'a> {
    /// These requests.
    Ids(&'a [BuildRequestId]),
    /// Up to `n` of the builder's pending requests, highest priority first, then oldest.
    Next { builder: BuilderId, n: i64 },
}

/// The one claim: sets `claimed_by_masterid`/`claimed_at` for `master` on those requests
/// `which` names that are still unclaimed and incomplete, with one conditional
/// `UPDATE … RETURNING` (one per 500 ids), and returns the ones it got, highest priority
/// first, then oldest.
///
/// * Lost race: a request another master or task claimed first is neither returned nor
///   touched. On PostgreSQL `Next` skips rows another transaction is claiming (`FOR UPDATE
///   SKIP LOCKED`) rather than wait for them; `Ids` waits, then finds the row claimed.
/// * Row complete or gone: not returned.
/// * Database error: `StoreError::Db`; the failed statement claimed nothing (with more than
///   500 ids, earlier statements stand unless the caller's transaction rolls back).
pub(crate) async fn claim(
    conn: &mut AnyConnection,
    backend: Backend,
    master: MasterId,
    which: Claim<'_>,
    now: Epoch,
) -> Result<Vec<BuildRequestId>> {
    let mut got = Vec::new();
    match which {
        Claim::Ids(ids) => {
            for chunk in ids.chunks(IDS_PER_STATEMENT) {
                let ids = Params(2).take(chunk.len());
                let sql = claim_sql(&format!("id IN ({ids}) AND complete = 0"));
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(master.0)
                    .bind(now);
                for id in chunk {
                    q = q.bind(id.0);
                }
                got.extend(q.fetch_all(&mut *conn).await?);
            }
        }
        Claim::Next { builder, n } => {
            // Without SKIP LOCKED a second master would queue behind the first one's rows.
            let skip = match backend {
                Backend::Postgres => " FOR UPDATE SKIP LOCKED",
                Backend::Sqlite => "",
            };
            // `complete = 0` only inside: outside too, PostgreSQL may scan the queue's partial
            // index for the outer rows and re-run the sub-select (and its LIMIT) for each,
            // claiming more than `n`.
            let sql = claim_sql(&format!(
                "id IN (SELECT id FROM buildrequests WHERE builderid = $3 AND complete = 0 AND claimed_by_masterid IS NULL \
                 ORDER BY priority DESC, submitted_at, id LIMIT $4{skip})"
            ));
            let q = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(master.0)
                .bind(now)
                .bind(builder.0)
                .bind(n.max(0));
            got = q.fetch_all(&mut *conn).await?;
        }
    }
    in_queue_order(&got)
}

/// The claim statement for the requests `target` names (a condition on ids), with the
/// master as `$1` and the time as `$2`. Re-checking "unclaimed" on the row itself is what
/// makes only one claimant win.
fn claim_sql(target: &str) -> String {
    format!(
        "UPDATE buildrequests SET claimed_by_masterid = $1, claimed_at = $2 \
         WHERE {target} AND claimed_by_masterid IS NULL RETURNING id, priority, submitted_at"
    )
}

/// Claimed rows, highest priority first, then oldest (`RETURNING` has no order).
fn in_queue_order(rows: &[AnyRow]) -> Result<Vec<BuildRequestId>> {
    let mut got = rows
        .iter()
        .map(|r| {
            Ok((
                Reverse(get_i64(r, "priority")?),
                get_i64(r, "submitted_at")?,
                get_i64(r, "id")?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    got.sort();
    Ok(got
        .into_iter()
        .map(|(_, _, id)| BuildRequestId(id))
        .collect())
}

/// The engine's claim of one assignment: `a.request` for `master` and, if that is won, the
/// `a.collapsed` requests still unclaimed, completed SKIPPED (Buildbot's answer to a
/// collapsed request: this build answers it). Returns whether `a.request` was won.
///
/// * Without collapsed requests: one statement. With them: one transaction that claims
///   them all in one statement and completes the collapsed ones it got.
/// * Lost race (`a.request` claimed first elsewhere, complete or gone): false, and nothing
///   changed (the transaction rolls back; the collapsed requests stay as they were).
/// * A collapsed request another master claimed meanwhile stays that master's.
/// * Database error: `StoreError::Db`; nothing claimed or completed.
pub(crate) async fn claim_assignment(
    store: &Store,
    master: MasterId,
    a: &Assignment,
    now: Epoch,
) -> Result<bool> {
    if a.collapsed.is_empty() {
        let mut conn = store.wpool.acquire().await?;
        let got = claim(
            &mut conn,
            store.backend,
            master,
            Claim::Ids(&[a.request]),
            now,
        )
        .await?;
        return Ok(!got.is_empty());
    }
    let ids: Vec<BuildRequestId> = std::iter::once(a.request)
        .chain(a.collapsed.iter().copied())
        .collect();
    let mut tx = store.write_tx().await?;
    let got = claim(&mut tx, store.backend, master, Claim::Ids(&ids), now).await?;
    if !got.contains(&a.request) {
        tx.rollback().await?;
        return Ok(false);
    }
    let collapsed: Vec<BuildRequestId> = got.into_iter().filter(|id| *id != a.request).collect();
    complete_in(&mut tx, &collapsed, Results::Skipped, now).await?;
    tx.commit().await?;
    Ok(true)
}

/// Cancels a request nobody has claimed: claims it for `master` and completes it CANCELLED
/// (and its buildset, if that was its last open request), in one transaction.
///
/// * Lost race (claimed, complete or gone): false, nothing changed.
/// * Database error: `StoreError::Db`; nothing changed.
pub(crate) async fn cancel(
    store: &Store,
    master: MasterId,
    id: BuildRequestId,
    now: Epoch,
) -> Result<bool> {
    let mut tx = store.write_tx().await?;
    if claim(&mut tx, store.backend, master, Claim::Ids(&[id]), now)
        .await?
        .is_empty()
    {
        tx.rollback().await?;
        return Ok(false);
    }
    complete_in(&mut tx, &[id], Results::Cancelled, now).await?;
    tx.commit().await?;
    Ok(true)
}

/// Gives back requests `master` claimed and has not completed, in one transaction (one
/// statement per 500 ids); returns how many went back.
///
/// * Claimed by another master, complete or gone: left as it is and not counted, so giving
///   back twice, or after the build completed its request, is harmless.
/// * Database error: `StoreError::Db`; none went back.
pub(crate) async fn unclaim(
    store: &Store,
    master: MasterId,
    ids: &[BuildRequestId],
) -> Result<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    let mut tx = store.write_tx().await?;
    let mut n = 0;
    for chunk in ids.chunks(IDS_PER_STATEMENT) {
        let sql = format!(
            "UPDATE buildrequests SET claimed_by_masterid = NULL, claimed_at = NULL \
             WHERE id IN ({}) AND claimed_by_masterid = $1 AND complete = 0",
            Params(1).take(chunk.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(master.0);
        for id in chunk {
            q = q.bind(id.0);
        }
        n += q.execute(&mut *tx).await?.rows_affected();
    }
    tx.commit().await?;
    Ok(n)
}

/// Gives back every request `master` claimed and has not completed, in one statement;
/// returns how many. Used by a clean shutdown and inside crash recovery's transaction.
///
/// * No race: only `master`'s own claims match. A completed request keeps its claim (the
///   record of which master ran it).
/// * Database error: `StoreError::Db`; none went back.
pub(crate) async fn release_all(conn: &mut AnyConnection, master: MasterId) -> Result<u64> {
    Ok(sqlx::query(
        "UPDATE buildrequests SET claimed_by_masterid = NULL, claimed_at = NULL \
         WHERE claimed_by_masterid = $1 AND complete = 0",
    )
    .bind(master.0)
    .execute(conn)
    .await?
    .rows_affected())
}

/// Completes requests with `results`, then every buildset of theirs whose requests are now
/// all complete, with the worst of their results (Buildbot's `worst_status`); returns how
/// many requests it completed. One transaction; on SQLite one request (a build ended: the
/// common case) is one batch, a single trip to the writer.
///
/// * Already complete (cancelled, or completed twice): left as it is, the first result
///   stands, not counted. Gone: skipped. Claims are not checked: callers complete what they
///   ran or claimed.
/// * Database error: `StoreError::Db`; nothing completed.
pub(crate) async fn complete(
    store: &Store,
    ids: &[BuildRequestId],
    results: Results,
    now: Epoch,
) -> Result<u64> {
    if let ([id], Backend::Sqlite) = (ids, store.backend) {
        return complete_one_sqlite(store, *id, results, now).await;
    }
    let mut tx = store.write_tx().await?;
    let n = complete_in(&mut tx, ids, results, now).await?;
    tx.commit().await?;
    Ok(n)
}

/// [`complete`] of one request on SQLite as one batch: the request, then its buildset if
/// that was its last open request, with the worst result computed in SQL.
async fn complete_one_sqlite(
    store: &Store,
    id: BuildRequestId,
    results: Results,
    now: Epoch,
) -> Result<u64> {
    // Buildbot's order of severity: SKIPPED < SUCCESS < WARNINGS < FAILURE < …
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
    let q = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(now)
        .bind(i64::from(results))
        .bind(id.0);
    Ok(store.sqlite_batch(q).await?.len() as u64)
}

/// [`complete`] inside the caller's transaction.
pub(crate) async fn complete_in(
    conn: &mut AnyConnection,
    ids: &[BuildRequestId],
    results: Results,
    now: Epoch,
) -> Result<u64> {
    let mut n = 0;
    let mut buildsets = Vec::new();
    for id in ids {
        let row = sqlx::query(
            "UPDATE buildrequests SET complete = 1, complete_at = $1, results = $2 WHERE id = $3 AND complete = 0 RETURNING buildsetid",
        )
        .bind(now)
        .bind(i64::from(results))
        .bind(id.0)
        .fetch_optional(&mut *conn)
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
        finish_buildset(conn, bs, now).await?;
    }
    Ok(n)
}

/// Completes buildset `bs` with the worst of its requests' results if all of them are
/// complete (and it is not complete yet).
async fn finish_buildset(conn: &mut AnyConnection, bs: i64, now: Epoch) -> Result<()> {
    let rows = sqlx::query("SELECT complete, results FROM buildrequests WHERE buildsetid = $1")
        .bind(bs)
        .fetch_all(&mut *conn)
        .await?;
    let mut worst: Option<Results> = None;
    for r in &rows {
        if !get_bool(r, "complete")? {
            return Ok(());
        }
        let res = get_results(r, "results")?.unwrap_or(Results::Success);
        worst = Some(worst.map_or(res, |w| w.worst(res)));
    }
    sqlx::query(
        "UPDATE buildsets SET complete = 1, complete_at = $1, results = $2 WHERE id = $3 AND complete = 0",
    )
    .bind(now)
    .bind(i64::from(worst.unwrap_or(Results::Success)))
    .bind(bs)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

const PENDING_COLS: &str = "id, builderid, priority, submitted_at, collapse_key";

/// The pending requests (unclaimed, incomplete) in id order, all of them or those after id
/// `after`: the queue as a master's distributor sees it.
///
/// * A read: nothing to lose; a request it returns may be claimed elsewhere by the time the
///   caller claims it, and [`claim`] says so.
/// * Database error: `StoreError::Db`.
pub(crate) async fn pending(pool: &AnyPool, after: Option<i64>) -> Result<Vec<PendingRequest>> {
    // Two texts rather than one with `id > MIN`: that bound could steer the planner of the
    // full scan away from the queue's partial index.
    let rows = match after {
        None => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {PENDING_COLS} FROM buildrequests \
                 WHERE complete = 0 AND claimed_by_masterid IS NULL ORDER BY id"
            )))
            .fetch_all(pool)
            .await?
        }
        Some(after) => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {PENDING_COLS} FROM buildrequests \
                 WHERE id > $1 AND complete = 0 AND claimed_by_masterid IS NULL ORDER BY id"
            )))
            .bind(after)
            .fetch_all(pool)
            .await?
        }
    };
    rows.iter().map(row_pending).collect()
}

fn row_pending(r: &AnyRow) -> Result<PendingRequest> {
    Ok(PendingRequest {
        id: BuildRequestId(get_i64(r, "id")?),
        builder: BuilderId(get_i64(r, "builderid")?),
        priority: get_i64(r, "priority")?,
        submitted_at: get_i64(r, "submitted_at")?,
        collapse_key: get_opt_str(r, "collapse_key")?,
    })
}
