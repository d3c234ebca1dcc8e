//! A master on PostgreSQL (what a real farm runs): a fresh database on the server at
//! 127.0.0.1:5432, a real kiln-worker, a build whose results, properties and log are read back
//! from that database. `KILN_SKIP_PG=1` skips it; `KILN_PG_URL` points elsewhere.

mod common;

use common::*;
use kiln_master::ForceRequest;
use kiln_model::Results;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_on_a_master_backed_by_postgresql() {
    kiln_testkit::pg::with_fresh_database("kiln_master_e2e", build_on).await;
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
