//! Not a test: figures for the API on a big builds table. Run with
//! `cargo test -p kiln-web --test api_bench -- --ignored --nocapture`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use kiln_config::{MasterConfig, SecretSource};
use kiln_master::control::BoxFuture;
use kiln_model::{BuildId, BuildRequestId, BuildsetId, ChangeId};
use kiln_store::{NewBuildset, Store};
use kiln_web::{
    self as api, ApiState, ChangeRequest, Control, ControlError, ForceRequest, Metrics,
};
use sqlx::Connection;
use tower::ServiceExt;

struct Ctl(Arc<MasterConfig>);

impl Control for Ctl {
    fn config(&self) -> Arc<MasterConfig> {
        self.0.clone()
    }
    fn connected_workers(&self) -> Vec<String> {
        vec![]
    }
    fn force(
        &self,
        _: &str,
        _: ForceRequest,
    ) -> BoxFuture<'_, Result<(BuildsetId, Vec<BuildRequestId>), ControlError>> {
        Box::pin(async { Err(ControlError::ShuttingDown) })
    }
    fn add_change(&self, _: ChangeRequest) -> BoxFuture<'_, Result<ChangeId, ControlError>> {
        Box::pin(async { Err(ControlError::ShuttingDown) })
    }
    fn stop_build(&self, _: BuildId, _: String) -> BoxFuture<'_, bool> {
        Box::pin(async { false })
    }
    fn cancel_request(&self, _: BuildRequestId) -> BoxFuture<'_, bool> {
        Box::pin(async { false })
    }
}

#[tokio::test]
#[ignore = "benchmark: prints figures"]
async fn api_bench_big_builds_table() {
    const N: i64 = 300_000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kiln.db");
    let store = Store::connect(&format!("sqlite:{}", path.display()))
        .await
        .unwrap();
    let m = store.register_master("m", 1).await.unwrap();
    store
        .upsert_worker("w", &serde_json::Map::new())
        .await
        .unwrap();
    let b = store.upsert_builder("b", None, &[]).await.unwrap();
    store
        .add_buildset(
            &NewBuildset {
                builders: vec![b],
                ..Default::default()
            },
            1,
        )
        .await
        .unwrap();
    assert_eq!(m.0, 1);
    let mut c = sqlx::SqliteConnection::connect(&format!("sqlite:{}", path.display()))
        .await
        .unwrap();
    let t = Instant::now();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {N}) \
         INSERT INTO builds (number, builderid, buildrequestid, workerid, masterid, started_at, complete, complete_at, state_string, results, locks_duration_s) \
         SELECT x, 1, 1, 1, 1, 1000 + x, CASE WHEN x % 1000 = 0 THEN 0 ELSE 1 END, CASE WHEN x % 1000 = 0 THEN NULL ELSE 2000 + x END, 'done', \
         CASE WHEN x % 1000 = 0 THEN NULL ELSE x % 3 END, 0 FROM c"
    )))
    .execute(&mut c)
    .await
    .unwrap();
    eprintln!("inserted {N} builds in {:?}", t.elapsed());
    let cfg = kiln_config::load_str(
        "m.star",
        "WORKERS = [worker(\"w\", password_hash = \"$argon2id$v=19$x\")]\nBUILDERS = [builder(name = \"b\", workers = [\"w\"], steps = [shell(command = \"x\")])]\n",
        &SecretSource { dir: None, use_env: false },
    )
    .unwrap();
    let app = api::router(ApiState::new(
        store,
        Arc::new(Ctl(Arc::new(cfg))),
        Metrics::new(),
    ));
    for uri in [
        "/api/v2/builds?order=-buildid&limit=50",
        "/api/v2/builds?complete=false&limit=50",
        "/api/v2/builders/1/builds?order=-number&limit=20",
        "/api/v2/builds?buildid__gt=299000&limit=50",
        "/api/v2/builds?results=2&limit=50",
        "/api/v2/builds?limit=50&offset=150000",
        // The whole table, streamed: on the key, and (any other order) with OFFSET pages.
        "/api/v2/builds",
        "/api/v2/builds?order=started_at",
    ] {
        let mut best = f64::MAX;
        let mut total = String::new();
        for _ in 0..5 {
            let t = Instant::now();
            let r = app
                .clone()
                .oneshot(
                    Request::get(uri)
                        .header("accept", "application/json")
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            let body = r.into_body().collect().await.unwrap().to_bytes();
            best = best.min(t.elapsed().as_secs_f64() * 1000.0);
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            total = v["meta"]["total"].to_string();
        }
        eprintln!("{uri}: best of 5 {best:.2} ms (total {total})");
    }
}
