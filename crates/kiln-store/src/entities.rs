//! Masters, workers, builders, changes, source stamps, buildsets, the build-request queue,
//! builds, steps and their properties.

use std::collections::{BTreeMap, HashMap};

use kiln_model::{
    Build, BuildId, BuildRequest, BuildRequestId, BuilderId, Buildset, BuildsetId, Change,
    ChangeId, Epoch, MasterId, Properties, PropertyValue, Results, SourceStamp, SourceStampId,
    Step, StepId, StepUrl, Worker, WorkerId,
};
use sqlx::any::AnyRow;
use sqlx::{Any, Transaction};

use crate::{
    Arg, Backend, Result, Sql, Store, StoreError, clamp_limit, get_bool, get_i64, get_opt_i64,
    get_opt_str, get_results, get_str,
};

/// A builder as the database knows it (the config owns the rest).
#[derive(Debug, Clone, PartialEq)]
pub struct BuilderRow {
    pub builderid: BuilderId,
    pub name: String,
    pub description: Option<String>,
    pub tags: Vec<String>,
}

/// What a new change carries; its source stamp is made with it.
#[derive(Debug, Clone, Default)]
pub struct NewChange {
    pub author: String,
    pub committer: Option<String>,
    pub comments: String,
    pub branch: Option<String>,
    pub revision: Option<String>,
    pub when_timestamp: Epoch,
    pub category: Option<String>,
    pub repository: String,
    pub codebase: String,
    pub project: String,
    pub files: Vec<String>,
    pub properties: Properties,
}

#[derive(Debug, Clone, Default)]
pub struct NewSourceStamp {
    pub branch: Option<String>,
    pub revision: Option<String>,
    pub repository: String,
    pub codebase: String,
    pub project: String,
}

#[derive(Debug, Clone, Default)]
pub struct NewBuildset {
    pub sourcestamps: Vec<SourceStampId>,
    pub builders: Vec<BuilderId>,
    pub properties: Properties,
    pub reason: String,
    pub priority: i64,
    pub external_idstring: Option<String>,
    pub parent_buildid: Option<BuildId>,
    pub waited_for: bool,
}

#[derive(Debug, Clone)]
pub struct NewBuild {
    pub builderid: BuilderId,
    pub buildrequestid: BuildRequestId,
    pub workerid: WorkerId,
    pub masterid: MasterId,
    pub state_string: String,
}

/// Filters for [`Store::list_changes`]: newest first, keyset paging with `before`.
#[derive(Debug, Clone, Default)]
pub struct ChangeFilter {
    pub branch: Option<String>,
    pub repository: Option<String>,
    pub before: Option<ChangeId>,
    pub limit: Option<i64>,
}

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

/// A master process as the database knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterRow {
    pub masterid: MasterId,
    pub name: String,
    pub active: bool,
    pub last_active: Epoch,
}

/// A builder with requests waiting in the queue (unclaimed and incomplete).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingBuilder {
    pub builderid: BuilderId,
    pub requests: i64,
    pub max_priority: i64,
    pub oldest_submitted_at: Epoch,
}

/// Filters for [`Store::list_buildsets`]: newest first.
#[derive(Debug, Clone, Default)]
pub struct BuildsetFilter {
    pub complete: Option<bool>,
    pub before: Option<BuildsetId>,
    pub limit: Option<i64>,
}

/// What [`Store::recover_after_crash`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovery {
    pub builds: u64,
    pub steps: u64,
    pub requests_requeued: u64,
}

fn prop_json(v: &PropertyValue) -> String {
    serde_json::to_string(&(&v.0, &v.1)).expect("json values serialize")
}

fn parse_prop(name: String, text: &str) -> Result<(String, PropertyValue)> {
    let (v, s): (serde_json::Value, String) = serde_json::from_str(text)
        .map_err(|e| StoreError::Corrupt(format!("property {name}: {e}")))?;
    Ok((name, PropertyValue(v, s)))
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

const SS_COLS: &str = "id, branch, revision, repository, codebase, project, created_at";
const BS_COLS: &str =
    "id, external_idstring, reason, submitted_at, complete, complete_at, results, parent_buildid";
pub(crate) const BR_COLS: &str = "id, buildsetid, builderid, priority, submitted_at, complete, complete_at, results, waited_for, claimed_by_masterid, claimed_at";
pub(crate) const BUILD_COLS: &str = "id, number, builderid, buildrequestid, workerid, masterid, started_at, complete, complete_at, state_string, results, locks_duration_s";
pub(crate) const STEP_COLS: &str = "id, number, name, buildid, started_at, complete, complete_at, state_string, results, urls, hidden";
const CHANGE_COLS: &str = "changeid, author, committer, comments, branch, revision, when_timestamp, category, repository, codebase, project, sourcestampid";

fn row_ss(r: &AnyRow) -> Result<SourceStamp> {
    Ok(SourceStamp {
        ssid: SourceStampId(get_i64(r, "id")?),
        branch: get_opt_str(r, "branch")?,
        revision: get_opt_str(r, "revision")?,
        repository: get_str(r, "repository")?,
        codebase: get_str(r, "codebase")?,
        project: get_str(r, "project")?,
        created_at: get_i64(r, "created_at")?,
    })
}

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

pub(crate) fn row_step(r: &AnyRow) -> Result<Step> {
    let urls: Vec<(String, String)> = serde_json::from_str(&get_str(r, "urls")?)
        .map_err(|e| StoreError::Corrupt(format!("step urls: {e}")))?;
    Ok(Step {
        stepid: StepId(get_i64(r, "id")?),
        buildid: BuildId(get_i64(r, "buildid")?),
        number: get_i64(r, "number")?,
        name: get_str(r, "name")?,
        started_at: get_opt_i64(r, "started_at")?,
        complete: get_bool(r, "complete")?,
        complete_at: get_opt_i64(r, "complete_at")?,
        state_string: get_str(r, "state_string")?,
        results: get_results(r, "results")?,
        hidden: get_bool(r, "hidden")?,
        urls: urls
            .into_iter()
            .map(|(name, url)| StepUrl { name, url })
            .collect(),
    })
}

fn row_worker(r: &AnyRow) -> Result<Worker> {
    let info: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&get_str(r, "info")?)
            .map_err(|e| StoreError::Corrupt(format!("worker info: {e}")))?;
    Ok(Worker {
        workerid: WorkerId(get_i64(r, "id")?),
        name: get_str(r, "name")?,
        workerinfo: info,
        paused: get_bool(r, "paused")?,
        graceful: get_bool(r, "graceful")?,
    })
}

fn row_builder(r: &AnyRow) -> Result<BuilderRow> {
    Ok(BuilderRow {
        builderid: BuilderId(get_i64(r, "id")?),
        name: get_str(r, "name")?,
        description: get_opt_str(r, "description")?,
        tags: serde_json::from_str(&get_str(r, "tags")?)
            .map_err(|e| StoreError::Corrupt(format!("builder tags: {e}")))?,
    })
}

impl Store {
    // ---------------------------------------------------------------- masters

    /// Registers (or re-activates) a master by name.
    pub async fn register_master(&self, name: &str, now: Epoch) -> Result<MasterId> {
        let row = sqlx::query(
            "INSERT INTO masters (name, active, last_active) VALUES ($1, 1, $2) \
             ON CONFLICT (name) DO UPDATE SET active = 1, last_active = excluded.last_active RETURNING id",
        )
        .bind(name)
        .bind(now)
        .fetch_one(&self.wpool)
        .await?;
        Ok(MasterId(get_i64(&row, "id")?))
    }

    /// Records that a master is alive.
    pub async fn heartbeat_master(&self, id: MasterId, now: Epoch) -> Result<()> {
        sqlx::query("UPDATE masters SET active = 1, last_active = $1 WHERE id = $2")
            .bind(now)
            .bind(id.0)
            .execute(&self.wpool)
            .await?;
        Ok(())
    }

    /// Marks a master inactive (it stopped, or another master found it stale).
    pub async fn set_master_inactive(&self, id: MasterId) -> Result<()> {
        sqlx::query("UPDATE masters SET active = 0 WHERE id = $1")
            .bind(id.0)
            .execute(&self.wpool)
            .await?;
        Ok(())
    }

    /// Active masters whose last heartbeat is older than `before`: candidates for
    /// [`Store::recover_after_crash`] by a surviving master.
    pub async fn stale_masters(&self, before: Epoch) -> Result<Vec<MasterId>> {
        let rows =
            sqlx::query("SELECT id FROM masters WHERE active = 1 AND last_active < $1 ORDER BY id")
                .bind(before)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| get_i64(r, "id").map(MasterId))
            .collect()
    }

    pub async fn list_masters(&self) -> Result<Vec<MasterRow>> {
        let rows = sqlx::query("SELECT id, name, active, last_active FROM masters ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(MasterRow {
                    masterid: MasterId(get_i64(r, "id")?),
                    name: get_str(r, "name")?,
                    active: get_bool(r, "active")?,
                    last_active: get_i64(r, "last_active")?,
                })
            })
            .collect()
    }

    // ---------------------------------------------------------------- workers

    /// Creates a worker or updates its info; returns its id.
    pub async fn upsert_worker(
        &self,
        name: &str,
        info: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<WorkerId> {
        let info = serde_json::Value::Object(info.clone()).to_string();
        let row = sqlx::query(
            "INSERT INTO workers (name, info) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET info = excluded.info RETURNING id",
        )
        .bind(name)
        .bind(info)
        .fetch_one(&self.wpool)
        .await?;
        Ok(WorkerId(get_i64(&row, "id")?))
    }

    pub async fn get_worker(&self, id: WorkerId) -> Result<Option<Worker>> {
        let row = sqlx::query("SELECT id, name, info, paused, graceful FROM workers WHERE id = $1")
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(row_worker).transpose()
    }

    pub async fn get_worker_by_name(&self, name: &str) -> Result<Option<Worker>> {
        let row =
            sqlx::query("SELECT id, name, info, paused, graceful FROM workers WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        row.as_ref().map(row_worker).transpose()
    }

    /// Workers by name (there are tens, not millions).
    pub async fn list_workers(&self) -> Result<Vec<Worker>> {
        let rows =
            sqlx::query("SELECT id, name, info, paused, graceful FROM workers ORDER BY name")
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(row_worker).collect()
    }

    pub async fn set_worker_state(&self, id: WorkerId, paused: bool, graceful: bool) -> Result<()> {
        let r = sqlx::query("UPDATE workers SET paused = $1, graceful = $2 WHERE id = $3")
            .bind(paused as i64)
            .bind(graceful as i64)
            .bind(id.0)
            .execute(&self.wpool)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound("worker", id.0));
        }
        Ok(())
    }

    // ---------------------------------------------------------------- builders

    pub async fn upsert_builder(
        &self,
        name: &str,
        description: Option<&str>,
        tags: &[String],
    ) -> Result<BuilderId> {
        let tags = serde_json::to_string(tags).expect("strings serialize");
        let row = sqlx::query(
            "INSERT INTO builders (name, description, tags) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET description = excluded.description, tags = excluded.tags RETURNING id",
        )
        .bind(name)
        .bind(description)
        .bind(tags)
        .fetch_one(&self.wpool)
        .await?;
        Ok(BuilderId(get_i64(&row, "id")?))
    }

    pub async fn get_builder(&self, id: BuilderId) -> Result<Option<BuilderRow>> {
        let row = sqlx::query("SELECT id, name, description, tags FROM builders WHERE id = $1")
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(row_builder).transpose()
    }

    pub async fn get_builder_by_name(&self, name: &str) -> Result<Option<BuilderRow>> {
        let row = sqlx::query("SELECT id, name, description, tags FROM builders WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(row_builder).transpose()
    }

    /// Builders by name (about a thousand for CPython).
    pub async fn list_builders(&self) -> Result<Vec<BuilderRow>> {
        let rows = sqlx::query("SELECT id, name, description, tags FROM builders ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(row_builder).collect()
    }

    // ---------------------------------------------------------------- source stamps

    pub(crate) async fn insert_ss(
        tx: &mut Transaction<'static, Any>,
        ss: &NewSourceStamp,
        now: Epoch,
    ) -> Result<SourceStampId> {
        let row = sqlx::query(
            "INSERT INTO sourcestamps (branch, revision, repository, codebase, project, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(ss.branch.as_deref())
        .bind(ss.revision.as_deref())
        .bind(ss.repository.as_str())
        .bind(ss.codebase.as_str())
        .bind(ss.project.as_str())
        .bind(now)
        .fetch_one(&mut **tx)
        .await?;
        Ok(SourceStampId(get_i64(&row, "id")?))
    }

    pub async fn add_sourcestamp(&self, ss: &NewSourceStamp, now: Epoch) -> Result<SourceStampId> {
        let mut tx = self.write_tx().await?;
        let id = Self::insert_ss(&mut tx, ss, now).await?;
        tx.commit().await?;
        Ok(id)
    }

    pub async fn get_sourcestamp(&self, id: SourceStampId) -> Result<Option<SourceStamp>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SS_COLS} FROM sourcestamps WHERE id = $1"
        )))
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(row_ss).transpose()
    }

    // ---------------------------------------------------------------- changes

    /// Adds a change with its files, properties and a new source stamp, in one transaction.
    pub async fn add_change(&self, c: &NewChange, now: Epoch) -> Result<ChangeId> {
        let mut tx = self.write_tx().await?;
        let ss = NewSourceStamp {
            branch: c.branch.clone(),
            revision: c.revision.clone(),
            repository: c.repository.clone(),
            codebase: c.codebase.clone(),
            project: c.project.clone(),
        };
        let ssid = Self::insert_ss(&mut tx, &ss, now).await?;
        let row = sqlx::query(
            "INSERT INTO changes (author, committer, comments, branch, revision, when_timestamp, category, repository, codebase, \
             project, sourcestampid) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING changeid",
        )
        .bind(c.author.as_str())
        .bind(c.committer.as_deref())
        .bind(c.comments.as_str())
        .bind(c.branch.as_deref())
        .bind(c.revision.as_deref())
        .bind(c.when_timestamp)
        .bind(c.category.as_deref())
        .bind(c.repository.as_str())
        .bind(c.codebase.as_str())
        .bind(c.project.as_str())
        .bind(ssid.0)
        .fetch_one(&mut *tx)
        .await?;
        let id = get_i64(&row, "changeid")?;
        for f in &c.files {
            sqlx::query("INSERT INTO change_files (changeid, filename) VALUES ($1, $2)")
                .bind(id)
                .bind(f.as_str())
                .execute(&mut *tx)
                .await?;
        }
        for (name, v) in &c.properties.0 {
            sqlx::query("INSERT INTO change_properties (changeid, property_name, property_value) VALUES ($1, $2, $3)")
                .bind(id)
                .bind(name.as_str())
                .bind(prop_json(v))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(ChangeId(id))
    }

    async fn complete_change(&self, r: &AnyRow) -> Result<Change> {
        let id = get_i64(r, "changeid")?;
        let files =
            sqlx::query("SELECT filename FROM change_files WHERE changeid = $1 ORDER BY filename")
                .bind(id)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| get_str(r, "filename"))
                .collect::<Result<Vec<_>>>()?;
        let mut properties = Properties::default();
        for pr in sqlx::query(
            "SELECT property_name, property_value FROM change_properties WHERE changeid = $1",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?
        {
            let (k, v) = parse_prop(
                get_str(&pr, "property_name")?,
                &get_str(&pr, "property_value")?,
            )?;
            properties.0.insert(k, v);
        }
        Ok(Change {
            changeid: ChangeId(id),
            author: get_str(r, "author")?,
            committer: get_opt_str(r, "committer")?,
            comments: get_str(r, "comments")?,
            branch: get_opt_str(r, "branch")?,
            revision: get_opt_str(r, "revision")?,
            when_timestamp: get_i64(r, "when_timestamp")?,
            category: get_opt_str(r, "category")?,
            repository: get_str(r, "repository")?,
            codebase: get_str(r, "codebase")?,
            project: get_str(r, "project")?,
            files,
            properties,
            sourcestampid: SourceStampId(get_i64(r, "sourcestampid")?),
        })
    }

    pub async fn get_change(&self, id: ChangeId) -> Result<Option<Change>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CHANGE_COLS} FROM changes WHERE changeid = $1"
        )))
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            None => Ok(None),
            Some(r) => Ok(Some(self.complete_change(&r).await?)),
        }
    }

    /// Changes, newest first.
    pub async fn list_changes(&self, f: &ChangeFilter) -> Result<Vec<Change>> {
        let mut q = Sql::new(&format!("SELECT {CHANGE_COLS} FROM changes"));
        if let Some(b) = &f.branch {
            q.and("branch = ?", Arg::S(b.clone()));
        }
        if let Some(r) = &f.repository {
            q.and("repository = ?", Arg::S(r.clone()));
        }
        if let Some(b) = f.before {
            q.and("changeid < ?", Arg::I(b.0));
        }
        q.tail("changeid DESC", clamp_limit(f.limit));
        let rows = q.fetch_all(&self.pool).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push(self.complete_change(r).await?);
        }
        Ok(out)
    }

    // ---------------------------------------------------------------- buildsets and requests

    /// Adds a buildset and one build request per builder, in one transaction.
    pub async fn add_buildset(
        &self,
        bs: &NewBuildset,
        now: Epoch,
    ) -> Result<(BuildsetId, Vec<(BuilderId, BuildRequestId)>)> {
        let requests: Vec<(BuilderId, i64, Option<&str>)> = bs
            .builders
            .iter()
            .map(|b| (*b, bs.priority, None))
            .collect();
        let mut tx = self.write_tx().await?;
        let out = Self::insert_buildset(&mut tx, bs, now, "", &requests).await?;
        tx.commit().await?;
        Ok(out)
    }

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

    pub async fn get_buildset(&self, id: BuildsetId) -> Result<Option<Buildset>> {
        let Some(r) = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {BS_COLS} FROM buildsets WHERE id = $1"
        )))
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let sourcestamps = sqlx::query("SELECT sourcestampid FROM buildset_sourcestamps WHERE buildsetid = $1 ORDER BY sourcestampid")
            .bind(id.0)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| get_i64(r, "sourcestampid").map(SourceStampId))
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(Buildset {
            bsid: id,
            external_idstring: get_opt_str(&r, "external_idstring")?,
            reason: get_str(&r, "reason")?,
            submitted_at: get_i64(&r, "submitted_at")?,
            complete: get_bool(&r, "complete")?,
            complete_at: get_opt_i64(&r, "complete_at")?,
            results: get_results(&r, "results")?,
            sourcestamps,
            parent_buildid: get_opt_i64(&r, "parent_buildid")?.map(BuildId),
        }))
    }

    /// Buildsets, newest first.
    pub async fn list_buildsets(&self, f: &BuildsetFilter) -> Result<Vec<Buildset>> {
        let mut q = Sql::new("SELECT id FROM buildsets");
        if let Some(c) = f.complete {
            q.and("complete = ?", Arg::I(c as i64));
        }
        if let Some(b) = f.before {
            q.and("id < ?", Arg::I(b.0));
        }
        q.tail("id DESC", clamp_limit(f.limit));
        let mut out = Vec::new();
        for r in q.fetch_all(&self.pool).await? {
            if let Some(bs) = self.get_buildset(BuildsetId(get_i64(&r, "id")?)).await? {
                out.push(bs);
            }
        }
        Ok(out)
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

    pub async fn get_buildset_properties(&self, id: BuildsetId) -> Result<Properties> {
        let mut p = Properties::default();
        for r in sqlx::query(
            "SELECT property_name, property_value FROM buildset_properties WHERE buildsetid = $1",
        )
        .bind(id.0)
        .fetch_all(&self.pool)
        .await?
        {
            let (k, v) = parse_prop(
                get_str(&r, "property_name")?,
                &get_str(&r, "property_value")?,
            )?;
            p.0.insert(k, v);
        }
        Ok(p)
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

    // ---------------------------------------------------------------- builds

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
            let ins = sqlx::query(
                "INSERT INTO builds (number, builderid, buildrequestid, workerid, masterid, started_at, complete, state_string, \
                 locks_duration_s) SELECT COALESCE(MAX(number), 0) + 1, $1, $2, $3, $4, $5, 0, $6, 0 FROM builds WHERE builderid = $1 \
                 RETURNING id, number",
            )
            .bind(b.builderid.0)
            .bind(b.buildrequestid.0)
            .bind(b.workerid.0)
            .bind(b.masterid.0)
            .bind(now)
            .bind(b.state_string.as_str())
            .fetch_one(&mut *tx)
            .await;
            match ins {
                Ok(row) => {
                    let id = BuildId(get_i64(&row, "id")?);
                    let number = get_i64(&row, "number")?;
                    if let Some(props) = props.as_deref_mut() {
                        props.set("buildnumber", number, "Build");
                        Self::insert_build_properties(&mut tx, id, props).await?;
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
        let mut sql = String::from(
            "BEGIN IMMEDIATE; \
             INSERT INTO builds (number, builderid, buildrequestid, workerid, masterid, started_at, complete, state_string, \
             locks_duration_s) SELECT COALESCE(MAX(number), 0) + 1, $1, $2, $3, $4, $5, 0, $6, 0 FROM builds WHERE builderid = $1 \
             RETURNING id, number; \
             INSERT INTO build_properties (buildid, name, value, source) \
             SELECT id, 'buildnumber', CAST(number AS TEXT), 'Build' FROM builds WHERE id = (SELECT MAX(id) FROM builds); ",
        );
        let mut n = 6;
        for batch in rows.chunks(200) {
            let values: Vec<String> = batch
                .iter()
                .map(|_| {
                    n += 3;
                    format!("(${}, ${}, ${})", n - 2, n - 1, n)
                })
                .collect();
            sql += &format!(
                "INSERT INTO build_properties (buildid, name, value, source) \
                 SELECT (SELECT MAX(id) FROM builds), column1, column2, column3 FROM (VALUES {}); ",
                values.join(", ")
            );
        }
        sql += "COMMIT";
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(b.builderid.0)
            .bind(b.buildrequestid.0)
            .bind(b.workerid.0)
            .bind(b.masterid.0)
            .bind(now)
            .bind(b.state_string.as_str());
        for (name, PropertyValue(v, source)) in &rows {
            q = q
                .bind(name.as_str())
                .bind(v.to_string())
                .bind(source.as_str());
        }
        let out = self.sqlite_batch(q).await?;
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
        Self::insert_build_properties(&mut tx, id, props).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn insert_build_properties(
        tx: &mut Transaction<'static, Any>,
        id: BuildId,
        props: &Properties,
    ) -> Result<()> {
        // One multi-row statement per 200 properties: a build sets a dozen at once, and every
        // statement is a round trip to the database.
        let rows: Vec<_> = props.0.iter().collect();
        for batch in rows.chunks(200) {
            let values: Vec<String> = (0..batch.len())
                .map(|i| format!("($1, ${}, ${}, ${})", 2 + 3 * i, 3 + 3 * i, 4 + 3 * i))
                .collect();
            let sql = format!(
                "INSERT INTO build_properties (buildid, name, value, source) VALUES {} \
                 ON CONFLICT (buildid, name) DO UPDATE SET value = excluded.value, source = excluded.source",
                values.join(", ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id.0);
            for (name, PropertyValue(v, source)) in batch {
                q = q
                    .bind(name.as_str())
                    .bind(v.to_string())
                    .bind(source.as_str());
            }
            q.execute(&mut **tx).await?;
        }
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

    // ---------------------------------------------------------------- steps

    /// Adds a step with the build's next number (from 0). Names are unique in a build, as in
    /// Buildbot: a repeated name gets `_2`, `_3` … Returns (id, number, the name given).
    pub async fn add_step(&self, build: BuildId, name: &str) -> Result<(StepId, i64, String)> {
        let mut tx = self.write_tx().await?;
        let row =
            sqlx::query("SELECT COALESCE(MAX(number), -1) + 1 AS n FROM steps WHERE buildid = $1")
                .bind(build.0)
                .fetch_one(&mut *tx)
                .await?;
        let number = get_i64(&row, "n")?;
        let mut unique = name.to_string();
        let mut k = 1;
        while sqlx::query("SELECT id FROM steps WHERE buildid = $1 AND name = $2")
            .bind(build.0)
            .bind(unique.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .is_some()
        {
            k += 1;
            unique = format!("{name}_{k}");
        }
        let row = sqlx::query(
            "INSERT INTO steps (number, name, buildid, complete, state_string, urls, hidden) VALUES ($1, $2, $3, 0, 'pending', '[]', 0) \
             RETURNING id",
        )
        .bind(number)
        .bind(unique.as_str())
        .bind(build.0)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((StepId(get_i64(&row, "id")?), number, unique))
    }

    /// Adds a step that starts now, numbered and named by the caller: a build's runner, the
    /// only writer of its build's steps, knows both (one statement instead of a transaction
    /// of four). `state` is its first state string.
    pub async fn add_started_step(
        &self,
        build: BuildId,
        number: i64,
        name: &str,
        state: &str,
        now: Epoch,
    ) -> Result<StepId> {
        let row = sqlx::query(
            "INSERT INTO steps (number, name, buildid, started_at, complete, state_string, urls, hidden) \
             VALUES ($1, $2, $3, $4, 0, $5, '[]', 0) RETURNING id",
        )
        .bind(number)
        .bind(name)
        .bind(build.0)
        .bind(now)
        .bind(state)
        .fetch_one(&self.wpool)
        .await?;
        Ok(StepId(get_i64(&row, "id")?))
    }

    pub async fn start_step(&self, id: StepId, now: Epoch) -> Result<()> {
        let r = sqlx::query("UPDATE steps SET started_at = $1 WHERE id = $2")
            .bind(now)
            .bind(id.0)
            .execute(&self.wpool)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound("step", id.0));
        }
        Ok(())
    }

    pub async fn set_step_state_string(&self, id: StepId, state: &str) -> Result<()> {
        sqlx::query("UPDATE steps SET state_string = $1 WHERE id = $2")
            .bind(state)
            .bind(id.0)
            .execute(&self.wpool)
            .await?;
        Ok(())
    }

    pub async fn add_step_url(&self, id: StepId, name: &str, url: &str) -> Result<()> {
        let mut tx = self.write_tx().await?;
        let row = sqlx::query("SELECT urls FROM steps WHERE id = $1")
            .bind(id.0)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound("step", id.0))?;
        let mut urls: Vec<(String, String)> = serde_json::from_str(&get_str(&row, "urls")?)
            .map_err(|e| StoreError::Corrupt(format!("step urls: {e}")))?;
        if !urls.iter().any(|(n, u)| n == name && u == url) {
            urls.push((name.to_string(), url.to_string()));
        }
        sqlx::query("UPDATE steps SET urls = $1 WHERE id = $2")
            .bind(serde_json::to_string(&urls).expect("strings serialize"))
            .bind(id.0)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Finishes a step (no-op if already finished); returns whether it changed.
    pub async fn finish_step(
        &self,
        id: StepId,
        results: Results,
        hidden: bool,
        now: Epoch,
    ) -> Result<bool> {
        self.finish_step_with_state(id, results, hidden, None, now)
            .await
    }

    /// Finishes a step and, if given, sets its state string in the same statement.
    pub async fn finish_step_with_state(
        &self,
        id: StepId,
        results: Results,
        hidden: bool,
        state: Option<&str>,
        now: Epoch,
    ) -> Result<bool> {
        let r = sqlx::query("UPDATE steps SET complete = 1, complete_at = $1, results = $2, hidden = $3, \
                             state_string = COALESCE($4, state_string) WHERE id = $5 AND complete = 0")
            .bind(now)
            .bind(i64::from(results))
            .bind(hidden as i64)
            .bind(state)
            .bind(id.0)
            .execute(&self.wpool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn get_step(&self, id: StepId) -> Result<Option<Step>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {STEP_COLS} FROM steps WHERE id = $1"
        )))
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(row_step).transpose()
    }

    /// The steps of a build, in order.
    pub async fn list_steps(&self, build: BuildId) -> Result<Vec<Step>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {STEP_COLS} FROM steps WHERE buildid = $1 ORDER BY number"
        )))
        .bind(build.0)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(row_step).collect()
    }

    // ---------------------------------------------------------------- crash recovery

    /// After a crash of `master` (`kill -9`): its unfinished builds and steps become RETRY and
    /// complete, their logs complete, and every request it had claimed and not completed goes
    /// back to the queue. Nothing committed is lost.
    pub async fn recover_after_crash(&self, master: MasterId, now: Epoch) -> Result<Recovery> {
        let mut tx = self.write_tx().await?;
        let retry = i64::from(Results::Retry);
        sqlx::query(
            "UPDATE logs SET complete = 1 WHERE complete = 0 AND stepid IN (SELECT s.id FROM steps s JOIN builds b ON s.buildid = b.id \
             WHERE b.masterid = $1 AND b.complete = 0)",
        )
        .bind(master.0)
        .execute(&mut *tx)
        .await?;
        let steps = sqlx::query(
            "UPDATE steps SET complete = 1, complete_at = $1, results = $2 WHERE complete = 0 AND buildid IN \
             (SELECT id FROM builds WHERE masterid = $3 AND complete = 0)",
        )
        .bind(now)
        .bind(retry)
        .bind(master.0)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let builds = sqlx::query(
            "UPDATE builds SET complete = 1, complete_at = $1, results = $2, state_string = 'interrupted (master restarted)' \
             WHERE masterid = $3 AND complete = 0",
        )
        .bind(now)
        .bind(retry)
        .bind(master.0)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let requests = sqlx::query(
            "UPDATE buildrequests SET claimed_by_masterid = NULL, claimed_at = NULL WHERE claimed_by_masterid = $1 AND complete = 0",
        )
        .bind(master.0)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(Recovery {
            builds,
            steps,
            requests_requeued: requests,
        })
    }

    /// How many rows each table holds (for tests and `kiln doctor`).
    pub async fn table_counts(&self) -> Result<HashMap<&'static str, i64>> {
        let mut out = HashMap::new();
        for t in [
            "masters",
            "workers",
            "builders",
            "changes",
            "change_files",
            "change_properties",
            "sourcestamps",
            "buildsets",
            "buildset_sourcestamps",
            "buildset_properties",
            "buildrequests",
            "builds",
            "build_properties",
            "steps",
            "logs",
            "logchunks",
        ] {
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT COUNT(*) AS n FROM {t}"
            )))
            .fetch_one(&self.pool)
            .await?;
            out.insert(t, get_i64(&row, "n")?);
        }
        Ok(out)
    }
}
