//! Source stamps (`sourcestamps`): what a build checks out — repository, branch, revision,
//! codebase, project. Changes make one each; buildsets name one per codebase.

use kiln_model::{Epoch, SourceStamp, SourceStampId, StoredSourceStamp};
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::{Any, AnyConnection};

use crate::{Params, Result, Store, get_i64, get_opt_str, get_str};

const SS_COLS: &str = "id, branch, revision, repository, codebase, project, created_at";

fn row_ss(r: &AnyRow) -> Result<StoredSourceStamp> {
    Ok(StoredSourceStamp {
        ssid: SourceStampId(get_i64(r, "id")?),
        created_at: get_i64(r, "created_at")?,
        stamp: SourceStamp {
            codebase: get_str(r, "codebase")?,
            repository: get_str(r, "repository")?,
            branch: get_opt_str(r, "branch")?,
            revision: get_opt_str(r, "revision")?,
            project: get_str(r, "project")?,
        },
    })
}

/// `INSERT … RETURNING id` of one source stamp with the next six placeholders of `p`; bind
/// them with [`bind_ss`]. Shared by the one-row insert and the queue's SQLite batch.
pub(crate) fn insert_ss_sql(p: &mut Params) -> String {
    format!(
        "INSERT INTO sourcestamps (branch, revision, repository, codebase, project, created_at) \
         VALUES ({}) RETURNING id",
        p.take(6)
    )
}

pub(crate) fn bind_ss<'q>(
    q: sqlx::query::Query<'q, Any, AnyArguments>,
    ss: &'q SourceStamp,
    now: Epoch,
) -> sqlx::query::Query<'q, Any, AnyArguments> {
    q.bind(ss.branch.as_deref())
        .bind(ss.revision.as_deref())
        .bind(ss.repository.as_str())
        .bind(ss.codebase.as_str())
        .bind(ss.project.as_str())
        .bind(now)
}

/// Inserts one source stamp on the caller's connection (usually inside its transaction).
pub(crate) async fn insert_ss(
    conn: &mut AnyConnection,
    ss: &SourceStamp,
    now: Epoch,
) -> Result<SourceStampId> {
    let sql = insert_ss_sql(&mut Params::default());
    let row = bind_ss(sqlx::query(sqlx::AssertSqlSafe(sql)), ss, now)
        .fetch_one(conn)
        .await?;
    Ok(SourceStampId(get_i64(&row, "id")?))
}

impl Store {
    pub async fn add_sourcestamp(&self, ss: &SourceStamp, now: Epoch) -> Result<SourceStampId> {
        let mut tx = self.write_tx().await?;
        let id = insert_ss(&mut tx, ss, now).await?;
        tx.commit().await?;
        Ok(id)
    }

    pub async fn get_sourcestamp(&self, id: SourceStampId) -> Result<Option<StoredSourceStamp>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SS_COLS} FROM sourcestamps WHERE id = $1"
        )))
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(row_ss).transpose()
    }
}
