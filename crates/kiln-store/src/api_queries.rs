//! Queries for the REST API: Buildbot's `field__op` filters, `order`, `limit` and `offset`
//! pushed into SQL for the big tables (builds, build requests, buildsets, changes, steps), and
//! the total count Buildbot puts in `meta.total` (a query of its own, so a caller that pages
//! through a whole collection counts once).
//!
//! Only whitelisted fields reach SQL (see [`ApiTable::sql_fields`]); the API layer refuses the
//! others before calling. NULL sorts first ascending and last descending on both backends, as
//! Buildbot's in-memory `NoneComparator` does; ties are broken by the primary key.

use kiln_model::{Build, BuildRequest, Buildset, BuildsetId, Change, ChangeId, Step};
use sqlx::any::AnyRow;

use crate::builds::{BUILD_COLS, row_build};
use crate::queue::{BR_COLS, row_br};
use crate::steps::{STEP_COLS, row_step};
use crate::{Arg, Backend, MAX_LIST_LIMIT, Result, Sql, Store, StoreError, get_i64};

/// A filter value, already parsed with the field's type (booleans are 0/1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiValue {
    Int(i64),
    Str(String),
}

/// Buildbot's filter operators. With several values, `eq` means "in", `ne` "not in" and
/// `contains` "contains any".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Contains,
    In,
    NotIn,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiCond {
    pub field: String,
    pub op: ApiOp,
    pub values: Vec<ApiValue>,
}

/// A list query: conditions (ANDed), order (`(field, descending)`), offset and limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiQuery {
    pub conds: Vec<ApiCond>,
    pub order: Vec<(String, bool)>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiTable {
    Builds,
    BuildRequests,
    Buildsets,
    Changes,
    Steps,
}

const CLAIMED: &str = "(CASE WHEN claimed_by_masterid IS NULL THEN 0 ELSE 1 END)";

/// Columns that may hold NULL (the others sort the same on both backends without help).
const NULLABLE: &[&str] = &[
    "complete_at",
    "results",
    "started_at",
    "claimed_at",
    "claimed_by_masterid",
    "committer",
    "revision",
    "branch",
    "category",
    "external_idstring",
    "parent_buildid",
];

impl ApiTable {
    fn table(self) -> &'static str {
        match self {
            ApiTable::Builds => "builds",
            ApiTable::BuildRequests => "buildrequests",
            ApiTable::Buildsets => "buildsets",
            ApiTable::Changes => "changes",
            ApiTable::Steps => "steps",
        }
    }

    fn key(self) -> &'static str {
        match self {
            ApiTable::Changes => "changeid",
            _ => "id",
        }
    }

    /// (API field, SQL expression) of the fields that can be filtered and ordered in SQL.
    pub fn sql_fields(self) -> &'static [(&'static str, &'static str)] {
        match self {
            ApiTable::Builds => &[
                ("buildid", "id"),
                ("number", "number"),
                ("builderid", "builderid"),
                ("buildrequestid", "buildrequestid"),
                ("workerid", "workerid"),
                ("masterid", "masterid"),
                ("started_at", "started_at"),
                ("complete", "complete"),
                ("complete_at", "complete_at"),
                ("locks_duration_s", "locks_duration_s"),
                ("results", "results"),
                ("state_string", "state_string"),
            ],
            ApiTable::BuildRequests => &[
                ("buildrequestid", "id"),
                ("buildsetid", "buildsetid"),
                ("builderid", "builderid"),
                ("priority", "priority"),
                ("claimed", CLAIMED),
                ("claimed_at", "claimed_at"),
                ("claimed_by_masterid", "claimed_by_masterid"),
                ("complete", "complete"),
                ("results", "results"),
                ("submitted_at", "submitted_at"),
                ("complete_at", "complete_at"),
                ("waited_for", "waited_for"),
            ],
            ApiTable::Buildsets => &[
                ("bsid", "id"),
                ("external_idstring", "external_idstring"),
                ("reason", "reason"),
                ("submitted_at", "submitted_at"),
                ("complete", "complete"),
                ("complete_at", "complete_at"),
                ("results", "results"),
                ("parent_buildid", "parent_buildid"),
            ],
            ApiTable::Changes => &[
                ("changeid", "changeid"),
                ("author", "author"),
                ("committer", "committer"),
                ("comments", "comments"),
                ("revision", "revision"),
                ("when_timestamp", "when_timestamp"),
                ("branch", "branch"),
                ("category", "category"),
                ("repository", "repository"),
                ("project", "project"),
                ("codebase", "codebase"),
            ],
            ApiTable::Steps => &[
                ("stepid", "id"),
                ("number", "number"),
                ("name", "name"),
                ("buildid", "buildid"),
                ("started_at", "started_at"),
                ("complete", "complete"),
                ("complete_at", "complete_at"),
                ("results", "results"),
                ("state_string", "state_string"),
                ("hidden", "hidden"),
            ],
        }
    }

    fn column(self, field: &str) -> Result<&'static str> {
        self.sql_fields()
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(_, c)| *c)
            .ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "field {field:?} of {} cannot be queried in SQL",
                    self.table()
                ))
            })
    }
}

fn push(q: &mut Sql, v: &ApiValue) -> String {
    q.args.push(match v {
        ApiValue::Int(i) => Arg::I(*i),
        ApiValue::Str(s) => Arg::S(s.clone()),
    });
    format!("${}", q.args.len())
}

/// Adds the WHERE clause of `query` to `q`.
fn conditions(q: &mut Sql, table: ApiTable, backend: Backend, query: &ApiQuery) -> Result<()> {
    for c in &query.conds {
        let col = table.column(&c.field)?;
        if c.values.is_empty() {
            return Err(StoreError::Corrupt(format!(
                "filter on {} without a value",
                c.field
            )));
        }
        // `claimed=true/false` as IS [NOT] NULL, which an index on the column can serve.
        if col == CLAIMED
            && c.values.len() == 1
            && matches!(c.op, ApiOp::Eq | ApiOp::Ne)
            && let ApiValue::Int(v) = c.values[0]
        {
            let want = (v != 0) == (c.op == ApiOp::Eq);
            q.and_raw(if want {
                "claimed_by_masterid IS NOT NULL"
            } else {
                "claimed_by_masterid IS NULL"
            });
            continue;
        }
        let many = c.values.len() > 1;
        let op = match (c.op, many) {
            (ApiOp::Eq, true) => ApiOp::In,
            (ApiOp::Ne, true) => ApiOp::NotIn,
            (op, _) => op,
        };
        let cond = match op {
            ApiOp::In | ApiOp::NotIn => {
                let ps: Vec<String> = c.values.iter().map(|v| push(q, v)).collect();
                if op == ApiOp::In {
                    format!("{col} IN ({})", ps.join(", "))
                } else {
                    // SQL semantics, as Buildbot's SQL pushdown: NULL rows do not match.
                    format!("{col} NOT IN ({})", ps.join(", "))
                }
            }
            ApiOp::Contains => {
                let parts: Vec<String> = c
                    .values
                    .iter()
                    .map(|v| {
                        let p = push(q, v);
                        match backend {
                            Backend::Sqlite => format!("instr({col}, {p}) > 0"),
                            Backend::Postgres => format!("strpos({col}, {p}) > 0"),
                        }
                    })
                    .collect();
                format!("({})", parts.join(" OR "))
            }
            _ => {
                let p = push(q, &c.values[0]);
                let sym = match op {
                    ApiOp::Eq => "=",
                    ApiOp::Lt => "<",
                    ApiOp::Le => "<=",
                    ApiOp::Gt => ">",
                    ApiOp::Ne => "<>",
                    _ => ">=",
                };
                format!("{col} {sym} {p}")
            }
        };
        q.and_raw(&cond);
    }
    Ok(())
}

impl Store {
    /// Whether the database answers (`SELECT 1`), for `/health`.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").fetch_one(&self.pool).await?;
        Ok(())
    }

    /// Bytes of log text stored (before compression), over all logs; for `/metrics`.
    pub async fn log_bytes_stored(&self) -> Result<i64> {
        let r = sqlx::query("SELECT CAST(COALESCE(SUM(stored_bytes), 0) AS BIGINT) AS n FROM logs")
            .fetch_one(&self.pool)
            .await?;
        get_i64(&r, "n")
    }

    /// How many rows of `table` match `query`'s conditions (its order, limit and offset
    /// aside): Buildbot's `meta.total`.
    pub async fn api_total(&self, table: ApiTable, query: &ApiQuery) -> Result<i64> {
        let mut count = Sql::new(&format!("SELECT COUNT(*) AS n FROM {}", table.table()));
        conditions(&mut count, table, self.backend, query)?;
        get_i64(&count.fetch_all(&self.pool).await?[0], "n")
    }

    /// Runs `query` on `table`: the columns `cols` of the page's rows, at most
    /// [`MAX_LIST_LIMIT`] of them (a caller that wants more pages with `offset`).
    async fn api_rows(&self, table: ApiTable, query: &ApiQuery, cols: &str) -> Result<Vec<AnyRow>> {
        let t = table.table();
        let mut q = Sql::new(&format!("SELECT {cols} FROM {t}"));
        conditions(&mut q, table, self.backend, query)?;
        let mut order = Vec::new();
        for (field, desc) in &query.order {
            let col = table.column(field)?;
            let dir = if *desc { "DESC" } else { "ASC" };
            // NULL first ascending, last descending: SQLite's own order; PostgreSQL is told.
            // Plain terms elsewhere, so indexes serve ORDER BY … LIMIT.
            let nulls = match (
                self.backend,
                NULLABLE.contains(&col) || col == CLAIMED,
                desc,
            ) {
                (Backend::Postgres, true, false) => " NULLS FIRST",
                (Backend::Postgres, true, true) => " NULLS LAST",
                _ => "",
            };
            order.push(format!("{col} {dir}{nulls}"));
        }
        if !query
            .order
            .iter()
            .any(|(f, _)| table.column(f).ok() == Some(table.key()))
        {
            order.push(format!("{} ASC", table.key()));
        }
        let limit = query
            .limit
            .unwrap_or(MAX_LIST_LIMIT)
            .clamp(0, MAX_LIST_LIMIT);
        let offset = query.offset.unwrap_or(0).max(0);
        q.args.push(Arg::I(limit));
        q.args.push(Arg::I(offset));
        let n = q.args.len();
        q.sql.push_str(&format!(
            " ORDER BY {} LIMIT ${} OFFSET ${n}",
            order.join(", "),
            n - 1
        ));
        q.fetch_all(&self.pool).await
    }

    /// A page of the builds matching a REST query (at most [`MAX_LIST_LIMIT`]).
    pub async fn api_builds(&self, query: &ApiQuery) -> Result<Vec<Build>> {
        let rows = self.api_rows(ApiTable::Builds, query, BUILD_COLS).await?;
        rows.iter().map(row_build).collect()
    }

    /// A page of the build requests matching a REST query (at most [`MAX_LIST_LIMIT`]).
    pub async fn api_build_requests(&self, query: &ApiQuery) -> Result<Vec<BuildRequest>> {
        let rows = self
            .api_rows(ApiTable::BuildRequests, query, BR_COLS)
            .await?;
        rows.iter().map(row_br).collect()
    }

    /// A page of the steps matching a REST query (at most [`MAX_LIST_LIMIT`]).
    pub async fn api_steps(&self, query: &ApiQuery) -> Result<Vec<Step>> {
        let rows = self.api_rows(ApiTable::Steps, query, STEP_COLS).await?;
        rows.iter().map(row_step).collect()
    }

    /// A page of the buildsets matching a REST query (at most [`MAX_LIST_LIMIT`]), with their
    /// source stamps' ids (one extra read per buildset of the page).
    pub async fn api_buildsets(&self, query: &ApiQuery) -> Result<Vec<Buildset>> {
        let rows = self.api_rows(ApiTable::Buildsets, query, "id").await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            // A buildset deleted between the two reads is simply left out.
            if let Some(bs) = self.get_buildset(BuildsetId(get_i64(r, "id")?)).await? {
                out.push(bs);
            }
        }
        Ok(out)
    }

    /// A page of the changes matching a REST query (at most [`MAX_LIST_LIMIT`]), with their
    /// files and properties (one extra read per change of the page).
    pub async fn api_changes(&self, query: &ApiQuery) -> Result<Vec<Change>> {
        let rows = self.api_rows(ApiTable::Changes, query, "changeid").await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let id = ChangeId(get_i64(r, "changeid")?);
            // A change deleted between the two reads is simply left out.
            if let Some(c) = self.get_change(id).await? {
                out.push(c);
            }
        }
        Ok(out)
    }
}
