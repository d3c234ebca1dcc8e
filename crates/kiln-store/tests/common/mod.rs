//! Test harness: the same suite function runs on a SQLite tempfile and on a fresh PostgreSQL
//! database (created on 127.0.0.1:5432 and dropped afterwards).

#![allow(dead_code)]

use std::future::Future;

use kiln_store::{Store, StoreOptions};

pub async fn on_sqlite<F, Fut>(opts: StoreOptions, f: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("kiln.db").display());
    let store = Store::connect_with(&url, opts.clone()).await.unwrap();
    assert_eq!(
        store.sqlite_journal_mode().await.unwrap().as_deref(),
        Some("wal")
    );
    f(store.clone()).await;
    store.close().await;
    reopen(&url, opts).await;
}

pub async fn on_postgres<F, Fut>(opts: StoreOptions, f: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    on_postgres_url(|url| async move {
        let store = Store::connect_with(&url, opts.clone()).await.unwrap();
        assert_eq!(store.backend(), kiln_store::Backend::Postgres);
        f(store.clone()).await;
        store.close().await;
        reopen(&url, opts).await;
    })
    .await;
}

/// Runs `f` with the URL of a fresh PostgreSQL database, dropped afterwards (even on panic).
/// Fails clearly when the server is unreachable, unless `KILN_SKIP_PG=1`.
pub async fn on_postgres_url<F, Fut>(f: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    kiln_testkit::pg::with_fresh_database("kiln_test", f).await;
}

/// Opening an existing database again runs no migration twice and finds the data.
async fn reopen(url: &str, opts: StoreOptions) {
    let store = Store::connect_with(url, opts).await.unwrap();
    let counts = store.table_counts().await.unwrap();
    assert!(counts["masters"] >= 1, "data survives a reopen: {counts:?}");
    store.close().await;
}

/// `both!(sqlite_test, pg_test, suite_fn[, options])`: the same suite function on both databases.
#[macro_export]
macro_rules! both {
    ($sq:ident, $pg:ident, $f:path) => {
        both!($sq, $pg, $f, kiln_store::StoreOptions::default());
    };
    ($sq:ident, $pg:ident, $f:path, $opts:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $sq() {
            common::on_sqlite($opts, $f).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $pg() {
            common::on_postgres($opts, $f).await;
        }
    };
}
