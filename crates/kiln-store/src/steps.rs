//! Steps (`steps`): a build's steps in order, with names unique in their build, state
//! strings, URLs and results. Their logs are in `logs.rs`.

use kiln_model::{BuildId, Epoch, Results, Step, StepId, StepUrl};
use sqlx::any::AnyRow;

use crate::{Result, Store, StoreError, get_bool, get_i64, get_opt_i64, get_results, get_str};

pub(crate) const STEP_COLS: &str = "id, number, name, buildid, started_at, complete, complete_at, state_string, results, urls, hidden";

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

impl Store {
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

    /// Adds a URL to a step unless it already has the same (name, url).
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
}
