//! Masters (`masters`): the master processes sharing this database, their heartbeats, and
//! which of them look dead (for [`Store::recover_after_crash`]).

use kiln_model::{Epoch, MasterId};

use crate::{Result, Store, get_bool, get_i64, get_str};

/// A master process as the database knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterRow {
    pub masterid: MasterId,
    pub name: String,
    pub active: bool,
    pub last_active: Epoch,
}

impl Store {
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
}
