//! Changes (`changes`, `change_files`, `change_properties`): a commit or a push the farm
//! heard of, stored with its files, its properties and a source stamp of its own.

use kiln_model::{Change, ChangeId, Epoch, Properties, SourceStamp, SourceStampId};
use sqlx::AnyConnection;
use sqlx::any::AnyRow;

use crate::sourcestamps::insert_ss;
use crate::{
    Arg, Result, Sql, Store, clamp_limit, get_i64, get_opt_str, get_str, prop_json, read_props,
};

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

/// Filters for [`Store::list_changes`]: newest first, keyset paging with `before`.
#[derive(Debug, Clone, Default)]
pub struct ChangeFilter {
    pub branch: Option<String>,
    pub repository: Option<String>,
    pub before: Option<ChangeId>,
    pub limit: Option<i64>,
}

const CHANGE_COLS: &str = "changeid, author, committer, comments, branch, revision, when_timestamp, category, repository, codebase, project, sourcestampid";

impl Store {
    /// Adds a change with its files, properties and a new source stamp, in one transaction.
    pub async fn add_change(&self, c: &NewChange, now: Epoch) -> Result<ChangeId> {
        let mut tx = self.write_tx().await?;
        let ss = SourceStamp {
            branch: c.branch.clone(),
            revision: c.revision.clone(),
            repository: c.repository.clone(),
            codebase: c.codebase.clone(),
            project: c.project.clone(),
        };
        let ssid = insert_ss(&mut tx, &ss, now).await?;
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
        insert_files_and_properties(&mut tx, id, c).await?;
        tx.commit().await?;
        Ok(ChangeId(id))
    }

    /// A change row with its files and properties.
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
        let props = sqlx::query(
            "SELECT property_name, property_value FROM change_properties WHERE changeid = $1",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
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
            properties: read_props(&props)?,
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
}

/// The change's files and properties, one statement each, inside its transaction.
async fn insert_files_and_properties(
    conn: &mut AnyConnection,
    id: i64,
    c: &NewChange,
) -> Result<()> {
    for f in &c.files {
        sqlx::query("INSERT INTO change_files (changeid, filename) VALUES ($1, $2)")
            .bind(id)
            .bind(f.as_str())
            .execute(&mut *conn)
            .await?;
    }
    for (name, v) in &c.properties.0 {
        sqlx::query(
            "INSERT INTO change_properties (changeid, property_name, property_value) VALUES ($1, $2, $3)",
        )
        .bind(id)
        .bind(name.as_str())
        .bind(prop_json(v))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
