//! A master on PostgreSQL (what a real farm runs): a fresh database on the server at
//! 127.0.0.1:5432, a real kiln-worker, a build whose results, properties and log are read back
//! from that database. `KILN_SKIP_PG=1` skips it; `KILN_PG_URL` points elsewhere.

mod common;

use std::panic::AssertUnwindSafe;

use common::*;
use futures_util::FutureExt;
use kiln_master::ForceRequest;
use kiln_model::Results;
use sqlx::Connection;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_on_a_master_backed_by_postgresql() {
    if std::env::var("KILN_SKIP_PG").as_deref() == Ok("1") {
        eprintln!("KILN_SKIP_PG=1: skipped");
        return;
    }
    let base = std::env::var("KILN_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let name = format!("kiln_master_e2e_{}", std::process::id());
    let mut admin = sqlx::PgConnection::connect(&format!("{base}/postgres"))
        .await
        .unwrap_or_else(|e| {
            panic!("PostgreSQL is unreachable at {base} ({e}); start it or set KILN_SKIP_PG=1")
        });
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap();
    let url = format!("{base}/{name}");
    let outcome = AssertUnwindSafe(build_on(url)).catch_unwind().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    if let Err(p) = outcome {
        std::panic::resume_unwind(p);
    }
}

async fn build_on(url: String) {
    let tmp = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
MASTER = master(db_url = "{url}")
WORKERS = [worker("w1", password = secret("worker"))]
BUILDERS = [builder(name = "pg", workers = ["w1"], steps = [
    set_property_from_command(name = "who", command = "echo on-postgres", property = "where"),
    shell(name = "say", command = interpolate("echo built %(prop:where)s")),
])]
SCHEDULERS = [force("force", builder_names = ["pg"])]
"#
    );
    let dir = master_dir(tmp.path(), &config);
    let master = start_master(&dir).await;
    let store = master.store().clone();
    assert_eq!(store.backend(), kiln_store::Backend::Postgres);
    let _w = WorkerProc::start(tmp.path(), "w1", master.worker_addr());
    let req = ForceRequest {
        builder_names: vec!["pg".into()],
        ..Default::default()
    };
    master.control().force("force", req).await.unwrap();
    let b = wait_builds(&store, "pg", 60, "the build", |b| finished_with(b, 1)).await;
    assert_eq!(b[0].results, Some(Results::Success));
    let say = log_text(&store, &b[0], "say", "stdio").await;
    assert!(say.contains("obuilt on-postgres\n"), "{say}");
    let props = store.get_build_properties(b[0].buildid).await.unwrap();
    assert_eq!(props.get("where"), Some(&serde_json::json!("on-postgres")));
    master.shutdown().await;
}
