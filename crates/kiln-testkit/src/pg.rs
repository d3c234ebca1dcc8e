//! A fresh PostgreSQL database for one test: created on the server the tests use
//! (`KILN_PG_URL`, default `postgres://postgres@127.0.0.1:5432`, trust auth) and dropped
//! afterwards, even when the test panics. `KILN_SKIP_PG=1` skips PostgreSQL tests.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::FutureExt as _;
use sqlx::Connection as _;

/// The server's URL, without a database.
pub fn server_url() -> String {
    std::env::var("KILN_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// Runs `body` with the URL of a new database named `<prefix>_<pid>_<n>`, then drops it.
/// Returns false (and says so on stderr) when `KILN_SKIP_PG=1`; panics with what to do
/// when the server is unreachable.
pub async fn with_fresh_database<F, Fut>(prefix: &str, body: F) -> bool
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    static N: AtomicUsize = AtomicUsize::new(0);
    if std::env::var("KILN_SKIP_PG").as_deref() == Ok("1") {
        eprintln!("KILN_SKIP_PG=1: PostgreSQL part skipped");
        return false;
    }
    let base = server_url();
    let n = N.fetch_add(1, Ordering::Relaxed);
    let name = format!("{prefix}_{}_{n}", std::process::id());
    let mut admin = sqlx::PgConnection::connect(&format!("{base}/postgres"))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is unreachable at {base} ({e}); start it \
                 (pg_ctlcluster --skip-systemctl-redirect <version> main start) or set KILN_SKIP_PG=1"
            )
        });
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap();
    let outcome = AssertUnwindSafe(body(format!("{base}/{name}")))
        .catch_unwind()
        .await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    if let Err(p) = outcome {
        std::panic::resume_unwind(p);
    }
    true
}
