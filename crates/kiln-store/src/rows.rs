//! What the table modules share: typed column readers for `AnyRow`, properties as Buildbot's
//! JSON text `[value, source]`, numbered placeholders for statements built at run time, and
//! the list-query builder with its limit clamp.

use kiln_model::{Properties, PropertyValue, Results};
use sqlx::AnyPool;
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use crate::{Result, StoreError};

pub(crate) fn get_i64(row: &AnyRow, col: &str) -> Result<i64> {
    Ok(row.try_get::<i64, _>(col)?)
}

pub(crate) fn get_opt_i64(row: &AnyRow, col: &str) -> Result<Option<i64>> {
    Ok(row.try_get::<Option<i64>, _>(col)?)
}

pub(crate) fn get_bool(row: &AnyRow, col: &str) -> Result<bool> {
    Ok(get_i64(row, col)? != 0)
}

pub(crate) fn get_str(row: &AnyRow, col: &str) -> Result<String> {
    Ok(row.try_get::<String, _>(col)?)
}

pub(crate) fn get_opt_str(row: &AnyRow, col: &str) -> Result<Option<String>> {
    Ok(row.try_get::<Option<String>, _>(col)?)
}

pub(crate) fn get_results(row: &AnyRow, col: &str) -> Result<Option<Results>> {
    match get_opt_i64(row, col)? {
        None => Ok(None),
        Some(v) => Results::try_from(v).map(Some).map_err(StoreError::Corrupt),
    }
}

/// A property as the `*_properties` tables of changes and buildsets store it.
pub(crate) fn prop_json(v: &PropertyValue) -> String {
    serde_json::to_string(&(&v.0, &v.1)).expect("json values serialize")
}

/// Properties from rows of `property_name` and `property_value` (the [`prop_json`] text).
pub(crate) fn read_props(rows: &[AnyRow]) -> Result<Properties> {
    let mut props = Properties::default();
    for r in rows {
        let name = get_str(r, "property_name")?;
        let (v, s): (serde_json::Value, String) =
            serde_json::from_str(&get_str(r, "property_value")?)
                .map_err(|e| StoreError::Corrupt(format!("property {name}: {e}")))?;
        props.0.insert(name, PropertyValue(v, s));
    }
    Ok(props)
}

/// Placeholders `$1, $2, …` numbered across one statement, or across a whole SQLite batch
/// (whose parameters are numbered through all its statements).
#[derive(Debug, Default)]
pub(crate) struct Params(pub usize);

impl Params {
    /// The next `k` placeholders, comma-separated.
    pub fn take(&mut self, k: usize) -> String {
        let list: Vec<String> = (self.0 + 1..=self.0 + k).map(|i| format!("${i}")).collect();
        self.0 += k;
        list.join(", ")
    }

    /// `n` parenthesised groups of `k` placeholders: the rows of a multi-row `VALUES`, each
    /// led by `first` if it is not empty (a placeholder or an expression every row shares).
    pub fn rows(&mut self, n: usize, first: &str, k: usize) -> String {
        let lead = if first.is_empty() {
            String::new()
        } else {
            format!("{first}, ")
        };
        let rows: Vec<String> = (0..n)
            .map(|_| format!("({lead}{})", self.take(k)))
            .collect();
        rows.join(", ")
    }
}

/// A query argument for dynamically built SQL.
pub(crate) enum Arg {
    I(i64),
    S(String),
}

/// Builds `WHERE … ORDER BY … LIMIT` with numbered placeholders.
pub(crate) struct Sql {
    pub sql: String,
    pub args: Vec<Arg>,
    has_where: bool,
}

impl Sql {
    pub fn new(base: &str) -> Sql {
        Sql {
            sql: base.to_string(),
            args: Vec::new(),
            has_where: false,
        }
    }

    /// Adds `cond` where `?` stands for the next placeholder.
    pub fn and(&mut self, cond: &str, arg: Arg) -> &mut Sql {
        self.args.push(arg);
        let n = self.args.len();
        self.sql
            .push_str(if self.has_where { " AND " } else { " WHERE " });
        self.has_where = true;
        self.sql.push_str(&cond.replace('?', &format!("${n}")));
        self
    }

    pub fn and_raw(&mut self, cond: &str) -> &mut Sql {
        self.sql
            .push_str(if self.has_where { " AND " } else { " WHERE " });
        self.has_where = true;
        self.sql.push_str(cond);
        self
    }

    pub fn tail(&mut self, order: &str, limit: i64) -> &mut Sql {
        self.args.push(Arg::I(limit));
        let n = self.args.len();
        self.sql.push_str(&format!(" ORDER BY {order} LIMIT ${n}"));
        self
    }

    pub async fn fetch_all(self, pool: &AnyPool) -> Result<Vec<AnyRow>> {
        let mut q = sqlx::query(AssertSqlSafe(self.sql));
        for a in self.args {
            q = match a {
                Arg::I(v) => q.bind(v),
                Arg::S(s) => q.bind(s),
            };
        }
        Ok(q.fetch_all(pool).await?)
    }
}

/// The most rows a list query returns, whatever the caller asks.
pub const MAX_LIST_LIMIT: i64 = 10_000;

pub(crate) fn clamp_limit(limit: Option<i64>) -> i64 {
    limit.unwrap_or(100).clamp(1, MAX_LIST_LIMIT)
}
