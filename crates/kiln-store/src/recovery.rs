//! Crash recovery: what a master that died (`kill -9`) left unfinished is finished as RETRY
//! and its claimed requests go back to the queue; and [`Store::table_counts`] for tests and
//! `kiln doctor`.

use std::collections::HashMap;

use kiln_model::{Epoch, MasterId, Results};

use crate::queue::release_all;
use crate::{Result, Store, get_i64};

/// What [`Store::recover_after_crash`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovery {
    pub builds: u64,
    pub steps: u64,
    pub requests_requeued: u64,
}

impl Store {
    /// After a crash of `master` (`kill -9`): its unfinished builds and steps become RETRY and
    /// complete, their logs complete, and every request it had claimed and not completed goes
    /// back to the queue, in one transaction. Nothing committed is lost; running it again
    /// finds nothing to do.
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
        // The queue's own verb, so the rule for giving back claims is written once.
        let requests = release_all(&mut tx, master).await?;
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
