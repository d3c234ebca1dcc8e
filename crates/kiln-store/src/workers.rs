//! Workers (`workers`): one row per worker name, with the info map it sent on attach and its
//! paused/graceful state.

use kiln_model::{Worker, WorkerId};
use sqlx::any::AnyRow;

use crate::{Result, Store, StoreError, get_bool, get_i64, get_str};

const WORKER_COLS: &str = "id, name, info, paused, graceful";

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

impl Store {
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
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {WORKER_COLS} FROM workers WHERE id = $1"
        )))
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(row_worker).transpose()
    }

    pub async fn get_worker_by_name(&self, name: &str) -> Result<Option<Worker>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {WORKER_COLS} FROM workers WHERE name = $1"
        )))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(row_worker).transpose()
    }

    /// Workers by name (there are tens, not millions).
    pub async fn list_workers(&self) -> Result<Vec<Worker>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {WORKER_COLS} FROM workers ORDER BY name"
        )))
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
}
