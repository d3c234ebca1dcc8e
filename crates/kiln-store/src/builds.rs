//! Builds (`builds`, `build_properties`): one row per build, numbered per builder, with its
//! state string, result and properties.

use std::collections::BTreeMap;

use kiln_model::{
    Build, BuildId, BuildRequestId, BuilderId, Epoch, MasterId, Properties, PropertyValue, Results,
    WorkerId,
};
use sqlx::AnyConnection;
use sqlx::any::{AnyArguments, AnyRow};

use crate::{
    Arg, Backend, Result, Sql, Store, StoreError, clamp_limit, get_bool, get_i64, get_opt_i64,
    get_results, get_str,
};

#[derive(Debug, Clone)]
pub struct NewBuild {
    pub builderid: BuilderId,
    pub buildrequestid: BuildRequestId,
    pub workerid: WorkerId,
    pub masterid: MasterId,
    pub state_string: String,
}

/// Filters for [`Store::list_builds`]: newest first.
#[derive(Debug, Clone, Default)]
pub struct BuildFilter {
    pub builderid: Option<BuilderId>,
    pub workerid: Option<WorkerId>,
    pub buildrequestid: Option<BuildRequestId>,
    pub complete: Option<bool>,
    pub before: Option<BuildId>,
    pub limit: Option<i64>,
}

pub(crate) const BUILD_COLS: &str = "id, number, builderid, buildrequestid, workerid, masterid, started_at, complete, complete_at, state_string, results, locks_duration_s";

pub(crate) fn row_build(r: &AnyRow) -> Result<Build> {
    Ok(Build {
        buildid: BuildId(get_i64(r, "id")?),
        number: get_i64(r, "number")?,
        builderid: BuilderId(get_i64(r, "builderid")?),
        buildrequestid: BuildRequestId(get_i64(r, "buildrequestid")?),
        workerid: WorkerId(get_i64(r, "workerid")?),
        masterid: MasterId(get_i64(r, "masterid")?),
        started_at: get_i64(r, "started_at")?,
        complete: get_bool(r, "complete")?,
        complete_at: get_opt_i64(r, "complete_at")?,
        state_string: get_str(r, "state_string")?,
        results: get_results(r, "results")?,
        locks_duration_s: get_i64(r, "locks_duration_s")?,
    })
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// The build row, numbered in the same statement (the builder's highest number + 1), with
/// parameters `$1..$6` bound by [`bind_new_build`].
const INSERT_BUILD: &str = "INSERT INTO builds (number, builderid, buildrequestid, workerid, masterid, started_at, complete, state_string, \
     locks_duration_s) SELECT COALESCE(MAX(number), 0) + 1, $1, $2, $3, $4, $5, 0, $6, 0 FROM builds WHERE builderid = $1 \
     RETURNING id, number";

fn bind_new_build<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, AnyArguments>,
    b: &'q NewBuild,
    now: Epoch,
) -> sqlx::query::Query<'q, sqlx::Any, AnyArguments> {
    q.bind(b.builderid.0)
        .bind(b.buildrequestid.0)
        .bind(b.workerid.0)
        .bind(b.masterid.0)
        .bind(now)
        .bind(b.state_string.as_str())
}

/// Binds (name, value, source) of each property, in order.
fn bind_build_props<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, AnyArguments>,
    props: &[(&'q String, &'q PropertyValue)],
) -> sqlx::query::Query<'q, sqlx::Any, AnyArguments> {
    for (name, PropertyValue(v, source)) in props {
        q = q
            .bind(name.as_str())
            .bind(v.to_string())
            .bind(source.as_str());
    }
    q
}

impl Store {
    /// Starts a build; its number is the builder's next one. Returns (id, number).
    pub async fn add_build(&self, b: &NewBuild, now: Epoch) -> Result<(BuildId, i64)> {
        self.insert_build(b, None, now).await
    }

    /// Starts a build with its properties, in one transaction (what a master does for every
    /// build it starts); the `buildnumber` property is set to the number it gets. Returns
    /// (id, number).
    pub async fn add_build_with_properties(
        &self,
        b: &NewBuild,
        props: &mut Properties,
        now: Epoch,
    ) -> Result<(BuildId, i64)> {
        if self.backend == Backend::Sqlite {
            return self.add_build_batch(b, props, now).await;
        }
        self.insert_build(b, Some(props), now).await
    }

    /// The build row (numbered in the same statement) and, if given, its properties with
    /// `buildnumber`, in one transaction; retried when another master took the number.
    async fn insert_build(
        &self,
        b: &NewBuild,
        mut props: Option<&mut Properties>,
        now: Epoch,
    ) -> Result<(BuildId, i64)> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut tx = self.write_tx().await?;
            let ins = bind_new_build(sqlx::query(INSERT_BUILD), b, now)
                .fetch_one(&mut *tx)
                .await;
            match ins {
                Ok(row) => {
                    let id = BuildId(get_i64(&row, "id")?);
                    let number = get_i64(&row, "number")?;
                    if let Some(props) = props.as_deref_mut() {
                        props.set("buildnumber", number, "Build");
                        insert_build_properties(&mut tx, id, props).await?;
                    }
                    tx.commit().await?;
                    return Ok((id, number));
                }
                // Another master took the number first (PostgreSQL): try the next one.
                Err(e) if is_unique_violation(&e) && attempt < 20 => {
                    tx.rollback().await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// SQLite: [`Store::add_build_with_properties`] as one batch. Inside its write
    /// transaction the newest build is the one it just made, so the properties (and
    /// `buildnumber`, computed in SQL) find it with `MAX(id)`.
    async fn add_build_batch(
        &self,
        b: &NewBuild,
        props: &mut Properties,
        now: Epoch,
    ) -> Result<(BuildId, i64)> {
        props.0.remove("buildnumber");
        let rows: Vec<_> = props.0.iter().collect();
        let mut sql = format!(
            "BEGIN IMMEDIATE; {INSERT_BUILD}; \
             INSERT INTO build_properties (buildid, name, value, source) \
             SELECT id, 'buildnumber', CAST(number AS TEXT), 'Build' FROM builds WHERE id = (SELECT MAX(id) FROM builds); "
        );
        let mut p = crate::Params(6);
        for batch in rows.chunks(200) {
            sql += &format!(
                "INSERT INTO build_properties (buildid, name, value, source) \
                 SELECT (SELECT MAX(id) FROM builds), column1, column2, column3 FROM (VALUES {}); ",
                p.rows(batch.len(), "", 3)
            );
        }
        sql += "COMMIT";
        let q = bind_new_build(sqlx::query(sqlx::AssertSqlSafe(sql)), b, now);
        let out = self.sqlite_batch(bind_build_props(q, &rows)).await?;
        let row = out
            .first()
            .ok_or_else(|| StoreError::Corrupt("build insert returned no id".into()))?;
        let (id, number) = (BuildId(get_i64(row, "id")?), get_i64(row, "number")?);
        props.set("buildnumber", number, "Build");
        Ok((id, number))
    }

    pub async fn get_build(&self, id: BuildId) -> Result<Option<Build>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {BUILD_COLS} FROM builds WHERE id = $1"
        )))
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(row_build).transpose()
    }

    pub async fn get_build_by_number(
        &self,
        builder: BuilderId,
        number: i64,
    ) -> Result<Option<Build>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {BUILD_COLS} FROM builds WHERE builderid = $1 AND number = $2"
        )))
        .bind(builder.0)
        .bind(number)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(row_build).transpose()
    }

    /// Builds, newest first (indexed on builder and on worker).
    pub async fn list_builds(&self, f: &BuildFilter) -> Result<Vec<Build>> {
        let mut q = Sql::new(&format!("SELECT {BUILD_COLS} FROM builds"));
        if let Some(b) = f.builderid {
            q.and("builderid = ?", Arg::I(b.0));
        }
        if let Some(w) = f.workerid {
            q.and("workerid = ?", Arg::I(w.0));
        }
        if let Some(r) = f.buildrequestid {
            q.and("buildrequestid = ?", Arg::I(r.0));
        }
        if let Some(c) = f.complete {
            q.and("complete = ?", Arg::I(c as i64));
        }
        if let Some(b) = f.before {
            q.and("id < ?", Arg::I(b.0));
        }
        q.tail("id DESC", clamp_limit(f.limit));
        q.fetch_all(&self.pool)
            .await?
            .iter()
            .map(row_build)
            .collect()
    }

    pub async fn set_build_state_string(&self, id: BuildId, state: &str) -> Result<()> {
        let r = sqlx::query("UPDATE builds SET state_string = $1 WHERE id = $2")
            .bind(state)
            .bind(id.0)
            .execute(&self.wpool)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound("build", id.0));
        }
        Ok(())
    }

    pub async fn add_locks_duration(&self, id: BuildId, secs: i64) -> Result<()> {
        sqlx::query("UPDATE builds SET locks_duration_s = locks_duration_s + $1 WHERE id = $2")
            .bind(secs)
            .bind(id.0)
            .execute(&self.wpool)
            .await?;
        Ok(())
    }

    /// Finishes a build (no-op if already finished); returns whether it changed.
    pub async fn finish_build(&self, id: BuildId, results: Results, now: Epoch) -> Result<bool> {
        self.finish_build_with_state(id, results, None, now).await
    }

    /// Finishes a build and, if given, sets its state string in the same statement.
    pub async fn finish_build_with_state(
        &self,
        id: BuildId,
        results: Results,
        state: Option<&str>,
        now: Epoch,
    ) -> Result<bool> {
        let r = sqlx::query("UPDATE builds SET complete = 1, complete_at = $1, results = $2, \
                             state_string = COALESCE($3, state_string) WHERE id = $4 AND complete = 0")
            .bind(now)
            .bind(i64::from(results))
            .bind(state)
            .bind(id.0)
            .execute(&self.wpool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Sets build properties (replacing same-named ones).
    pub async fn set_build_properties(&self, id: BuildId, props: &Properties) -> Result<()> {
        let mut tx = self.write_tx().await?;
        insert_build_properties(&mut tx, id, props).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn get_build_properties(&self, id: BuildId) -> Result<Properties> {
        let mut p = Properties(BTreeMap::new());
        for r in sqlx::query("SELECT name, value, source FROM build_properties WHERE buildid = $1")
            .bind(id.0)
            .fetch_all(&self.pool)
            .await?
        {
            let v: serde_json::Value = serde_json::from_str(&get_str(&r, "value")?)
                .map_err(|e| StoreError::Corrupt(format!("build property: {e}")))?;
            p.0.insert(
                get_str(&r, "name")?,
                PropertyValue(v, get_str(&r, "source")?),
            );
        }
        Ok(p)
    }
}

/// Build properties (value and source in columns of their own, unlike changes' and
/// buildsets'), replacing same-named ones, inside the caller's transaction.
async fn insert_build_properties(
    conn: &mut AnyConnection,
    id: BuildId,
    props: &Properties,
) -> Result<()> {
    // One multi-row statement per 200 properties: a build sets a dozen at once, and every
    // statement is a round trip to the database.
    let rows: Vec<_> = props.0.iter().collect();
    for batch in rows.chunks(200) {
        let mut p = crate::Params(1);
        let sql = format!(
            "INSERT INTO build_properties (buildid, name, value, source) VALUES {} \
             ON CONFLICT (buildid, name) DO UPDATE SET value = excluded.value, source = excluded.source",
            p.rows(batch.len(), "$1", 3)
        );
        let q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id.0);
        bind_build_props(q, batch).execute(&mut *conn).await?;
    }
    Ok(())
}
