//! Builders (`builders`): one row per builder name with its description and tags; the
//! config owns everything else about a builder.

use kiln_model::BuilderId;
use sqlx::any::AnyRow;

use crate::{Result, Store, StoreError, get_i64, get_opt_str, get_str};

/// A builder as the database knows it (the config owns the rest).
#[derive(Debug, Clone, PartialEq)]
pub struct BuilderRow {
    pub builderid: BuilderId,
    pub name: String,
    pub description: Option<String>,
    pub tags: Vec<String>,
}

const BUILDER_COLS: &str = "id, name, description, tags";

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
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {BUILDER_COLS} FROM builders WHERE id = $1"
        )))
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(row_builder).transpose()
    }

    pub async fn get_builder_by_name(&self, name: &str) -> Result<Option<BuilderRow>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {BUILDER_COLS} FROM builders WHERE name = $1"
        )))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(row_builder).transpose()
    }

    /// Builders by name (about a thousand for CPython).
    pub async fn list_builders(&self) -> Result<Vec<BuilderRow>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {BUILDER_COLS} FROM builders ORDER BY name"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(row_builder).collect()
    }
}
