//! Buildsets (`buildsets`, `buildset_sourcestamps`, `buildset_properties`): what a
//! scheduler or a force asked for — source stamps, properties, a reason — and, once all its
//! requests are done, the worst of their results. Storing one (with its requests) is the
//! queue's `submit` (`queue/submit.rs`); this file reads them back.

use kiln_model::{
    BuildId, BuildRequestId, BuilderId, Buildset, BuildsetId, Epoch, Properties, SourceStampId,
};

use crate::queue::{Submission, submit};
use crate::{
    Arg, Result, Sql, Store, clamp_limit, get_bool, get_i64, get_opt_i64, get_opt_str, get_results,
    get_str, read_props,
};

/// A buildset to store: `sourcestamps` are existing source stamps, one request is made per
/// entry of `builders`, all at `priority`.
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

/// Filters for [`Store::list_buildsets`]: newest first.
#[derive(Debug, Clone, Default)]
pub struct BuildsetFilter {
    pub complete: Option<bool>,
    pub before: Option<BuildsetId>,
    pub limit: Option<i64>,
}

const BS_COLS: &str =
    "id, external_idstring, reason, submitted_at, complete, complete_at, results, parent_buildid";

impl Store {
    /// Adds a buildset and one build request per builder, all or nothing (the queue's one
    /// buildset insert: a batch on SQLite, a transaction on PostgreSQL).
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
        let s = Submission {
            sources: &[],
            buildset: bs,
            scheduler: "",
            requests: &requests,
        };
        let done = submit(self, &s, now).await?;
        Ok((done.bsid, done.requests))
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

    pub async fn get_buildset_properties(&self, id: BuildsetId) -> Result<Properties> {
        let rows = sqlx::query(
            "SELECT property_name, property_value FROM buildset_properties WHERE buildsetid = $1",
        )
        .bind(id.0)
        .fetch_all(&self.pool)
        .await?;
        read_props(&rows)
    }

    /// The scheduler that made a buildset (`""` for buildsets stored without one).
    pub async fn buildset_scheduler(&self, id: BuildsetId) -> Result<String> {
        let r = sqlx::query("SELECT scheduler FROM buildsets WHERE id = $1")
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?;
        match r {
            Some(r) => get_str(&r, "scheduler"),
            None => Ok(String::new()),
        }
    }
}
