//! The queue's `submit` verb: one buildset with its new source stamps, properties and
//! requests, stored all or nothing. [`Store::add_buildset`] and the engine's
//! `QueueStore::add_buildset` both come here: on SQLite it is one batch, on PostgreSQL one
//! transaction, and both build their statements from the same pieces below.

use kiln_model::{BuildRequestId, BuilderId, BuildsetId, Epoch, SourceStamp, SourceStampId};
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::{Any, AnyConnection};

use crate::sourcestamps::{bind_ss, insert_ss, insert_ss_sql};
use crate::{Backend, NewBuildset, Params, Result, Store, StoreError, get_i64, get_str, prop_json};

type Query<'q> = sqlx::query::Query<'q, Any, AnyArguments>;

/// What [`submit`] stores.
pub(crate) struct Submission<'a> {
    /// Source stamps to create and link to the buildset.
    pub sources: &'a [SourceStamp],
    /// The buildset row; its `sourcestamps` are existing ones to link as well. Its
    /// `builders` and `priority` are not read: `requests` says which requests to make.
    pub buildset: &'a NewBuildset,
    pub scheduler: &'a str,
    /// One request each: builder, priority, collapse key.
    pub requests: &'a [(BuilderId, i64, Option<&'a str>)],
}

/// What [`submit`] made.
pub(crate) struct Submitted {
    /// The new source stamps, in `sources` order.
    pub ssids: Vec<SourceStampId>,
    pub bsid: BuildsetId,
    /// The new requests, in `requests` order.
    pub requests: Vec<(BuilderId, BuildRequestId)>,
}

/// Stores a submission, all or nothing: on SQLite as one batch (one trip to the writer
/// connection instead of one per statement: a measured speed-up for every force and
/// change), on PostgreSQL as one transaction.
///
/// * No race to lose: it only inserts, and every id comes from the database.
/// * A reference that does not exist (builder, source stamp, parent build) fails a
///   constraint: `StoreError::Db`, nothing stored.
/// * Database error: `StoreError::Db`; nothing stored.
pub(crate) async fn submit(store: &Store, s: &Submission<'_>, now: Epoch) -> Result<Submitted> {
    match store.backend {
        Backend::Sqlite => submit_batch(store, s, now).await,
        Backend::Postgres => submit_tx(store, s, now).await,
    }
}

/// Properties per multi-row statement: a force sets a few, a scheduler a dozen; the cap
/// keeps a statement's parameters well inside both databases' limits.
const PROPS_PER_STATEMENT: usize = 200;

// ---- the statements, with the buildset's id as `bsid` (a placeholder in a transaction,
// `(SELECT MAX(id) FROM buildsets)` in a batch)

fn buildset_sql(p: &mut Params) -> String {
    format!(
        "INSERT INTO buildsets (external_idstring, reason, submitted_at, parent_buildid, scheduler, complete) \
         VALUES ({}, 0) RETURNING id",
        p.take(5)
    )
}

fn bind_buildset<'q>(q: Query<'q>, s: &'q Submission<'_>, now: Epoch) -> Query<'q> {
    let bs = s.buildset;
    q.bind(bs.external_idstring.as_deref())
        .bind(bs.reason.as_str())
        .bind(now)
        .bind(bs.parent_buildid.map(|b| b.0))
        .bind(s.scheduler)
}

fn links_sql(bsid: &str, n: usize, p: &mut Params) -> String {
    format!(
        "INSERT INTO buildset_sourcestamps (buildsetid, sourcestampid) VALUES {}",
        p.rows(n, bsid, 1)
    )
}

fn props_sql(bsid: &str, n: usize, p: &mut Params) -> String {
    format!(
        "INSERT INTO buildset_properties (buildsetid, property_name, property_value) VALUES {}",
        p.rows(n, bsid, 2)
    )
}

fn bind_props<'q>(
    mut q: Query<'q>,
    props: &[(&'q String, &'q kiln_model::PropertyValue)],
) -> Query<'q> {
    for (name, v) in props {
        q = q.bind(name.as_str()).bind(prop_json(v));
    }
    q
}

fn request_sql(bsid: &str, p: &mut Params) -> String {
    format!(
        "INSERT INTO buildrequests (buildsetid, builderid, priority, submitted_at, waited_for, collapse_key, complete) \
         VALUES ({bsid}, {}, 0) RETURNING id",
        p.take(5)
    )
}

fn bind_request<'q>(
    q: Query<'q>,
    r: &(BuilderId, i64, Option<&'q str>),
    waited_for: bool,
    now: Epoch,
) -> Query<'q> {
    q.bind(r.0.0)
        .bind(r.1)
        .bind(now)
        .bind(waited_for as i64)
        .bind(r.2)
}

// ---- PostgreSQL: one transaction

async fn submit_tx(store: &Store, s: &Submission<'_>, now: Epoch) -> Result<Submitted> {
    let mut tx = store.write_tx().await?;
    let mut ssids = Vec::with_capacity(s.sources.len());
    for ss in s.sources {
        ssids.push(insert_ss(&mut tx, ss, now).await?);
    }
    let sql = buildset_sql(&mut Params::default());
    let row = bind_buildset(sqlx::query(sqlx::AssertSqlSafe(sql)), s, now)
        .fetch_one(&mut *tx)
        .await?;
    let bsid = get_i64(&row, "id")?;
    let links: Vec<SourceStampId> = s
        .buildset
        .sourcestamps
        .iter()
        .chain(&ssids)
        .copied()
        .collect();
    insert_links(&mut tx, bsid, &links).await?;
    let props: Vec<_> = s.buildset.properties.0.iter().collect();
    for batch in props.chunks(PROPS_PER_STATEMENT) {
        let sql = props_sql("$1", batch.len(), &mut Params(1));
        let q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(bsid);
        bind_props(q, batch).execute(&mut *tx).await?;
    }
    let mut requests = Vec::with_capacity(s.requests.len());
    for r in s.requests {
        let sql = request_sql("$1", &mut Params(1));
        let q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(bsid);
        let row = bind_request(q, r, s.buildset.waited_for, now)
            .fetch_one(&mut *tx)
            .await?;
        requests.push((r.0, BuildRequestId(get_i64(&row, "id")?)));
    }
    tx.commit().await?;
    Ok(Submitted {
        ssids,
        bsid: BuildsetId(bsid),
        requests,
    })
}

async fn insert_links(conn: &mut AnyConnection, bsid: i64, links: &[SourceStampId]) -> Result<()> {
    if links.is_empty() {
        return Ok(());
    }
    let sql = links_sql("$1", links.len(), &mut Params(1));
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(bsid);
    for id in links {
        q = q.bind(id.0);
    }
    q.execute(conn).await?;
    Ok(())
}

// ---- SQLite: one batch

/// Inside the batch's write transaction the newest ids are the ones it just made (ids only
/// grow: `AUTOINCREMENT`), so later statements find the buildset and the new source stamps
/// with `MAX(id)`.
const BSID: &str = "(SELECT MAX(id) FROM buildsets)";

async fn submit_batch(store: &Store, s: &Submission<'_>, now: Epoch) -> Result<Submitted> {
    let props: Vec<_> = s.buildset.properties.0.iter().collect();
    let sql = batch_sql(s, props.len());
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for ss in s.sources {
        q = bind_ss(q, ss, now);
    }
    q = bind_buildset(q, s, now);
    for id in &s.buildset.sourcestamps {
        q = q.bind(id.0);
    }
    q = bind_props(q, &props);
    for r in s.requests {
        q = bind_request(q, r, s.buildset.waited_for, now);
    }
    batch_ids(s, &store.sqlite_batch(q).await?)
}

/// The batch's text; its placeholders are numbered in the order [`submit_batch`] binds.
fn batch_sql(s: &Submission<'_>, nprops: usize) -> String {
    let mut p = Params::default();
    let mut sql = String::from("BEGIN IMMEDIATE; ");
    for _ in s.sources {
        sql += &format!("{}, 'ss' AS kind; ", insert_ss_sql(&mut p));
    }
    sql += &format!("{}, 'bs' AS kind; ", buildset_sql(&mut p));
    if !s.sources.is_empty() {
        sql += &format!(
            "INSERT INTO buildset_sourcestamps (buildsetid, sourcestampid) \
             SELECT {BSID}, id FROM (SELECT id FROM sourcestamps ORDER BY id DESC LIMIT {}); ",
            s.sources.len()
        );
    }
    if !s.buildset.sourcestamps.is_empty() {
        sql += &format!(
            "{}; ",
            links_sql(BSID, s.buildset.sourcestamps.len(), &mut p)
        );
    }
    let mut left = nprops;
    while left > 0 {
        let n = left.min(PROPS_PER_STATEMENT);
        sql += &format!("{}; ", props_sql(BSID, n, &mut p));
        left -= n;
    }
    for _ in s.requests {
        sql += &format!("{}, 'br' AS kind; ", request_sql(BSID, &mut p));
    }
    sql + "COMMIT"
}

/// The ids the batch's `RETURNING`s gave, each row tagged with its kind.
fn batch_ids(s: &Submission<'_>, rows: &[AnyRow]) -> Result<Submitted> {
    let (mut ssids, mut bsid, mut brids) = (Vec::new(), None, Vec::new());
    for r in rows {
        let id = get_i64(r, "id")?;
        match get_str(r, "kind")?.as_str() {
            "ss" => ssids.push(SourceStampId(id)),
            "bs" => bsid = Some(BuildsetId(id)),
            _ => brids.push(BuildRequestId(id)),
        }
    }
    let bsid = bsid.ok_or_else(|| StoreError::Corrupt("buildset insert returned no id".into()))?;
    if ssids.len() != s.sources.len() || brids.len() != s.requests.len() {
        return Err(StoreError::Corrupt(
            "buildset batch returned the wrong number of ids".into(),
        ));
    }
    let requests = s.requests.iter().map(|r| r.0).zip(brids).collect();
    Ok(Submitted {
        ssids,
        bsid,
        requests,
    })
}
