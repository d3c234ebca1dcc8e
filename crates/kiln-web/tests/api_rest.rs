//! The REST API against a real store (a SQLite file, and a fresh PostgreSQL database unless
//! `KILN_SKIP_PG=1`): exact JSON of each resource, filters, order, limit/offset, field and
//! property selection, 404s and 400s, `/raw` of a multi-chunk log, secret redaction, JSON-RPC
//! control through a recording `Control`, the base change hook, `/metrics` and `/health`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use kiln_config::{MasterConfig, SecretSource};
use kiln_engine::schedulers::ForceError;
use kiln_master::control::BoxFuture;
use kiln_model::SourceStamp;
use kiln_model::{BuildId, BuildRequestId, BuildsetId, ChangeId, LogType, Properties, Results};
use kiln_store::{NewBuild, NewBuildset, NewChange, Store};
use kiln_web::{
    self as api, ApiState, ChangeRequest, Control, ControlError, ForceRequest, Metrics,
};
use serde_json::{Value, json};
use tower::ServiceExt;

const SECRET: &str = "hunter2secret";

const CONFIG: &str = r#"
MASTER = master(title = "t")
WORKERS = [worker("w1", password_hash = "$argon2id$v=19$x"), worker("w2", password_hash = "$argon2id$v=19$x")]
BUILDERS = [builder(name = "linux", workers = ["w1", "w2"], steps = [shell(command = "make")], tags = ["unix"], description = "Linux box")]
SCHEDULERS = [force("force", builder_names = ["linux"], params = [string_param("testopts", default = "")])]
"#;

#[derive(Debug, Clone, PartialEq)]
enum Call {
    Force(String, ForceRequest),
    Change(ChangeRequest),
    Stop(BuildId, String),
    Cancel(BuildRequestId),
}

struct TestControl {
    store: Store,
    cfg: Arc<MasterConfig>,
    calls: Mutex<Vec<Call>>,
}

impl Control for TestControl {
    fn config(&self) -> Arc<MasterConfig> {
        self.cfg.clone()
    }
    fn connected_workers(&self) -> Vec<String> {
        vec!["w1".into()]
    }
    fn force(
        &self,
        scheduler: &str,
        req: ForceRequest,
    ) -> BoxFuture<'_, Result<(BuildsetId, Vec<BuildRequestId>), ControlError>> {
        self.calls
            .lock()
            .unwrap()
            .push(Call::Force(scheduler.into(), req.clone()));
        Box::pin(async move {
            if req.properties.get("testopts") == Some(&json!("bad")) {
                return Err(ControlError::Force(ForceError::Invalid {
                    name: "testopts".into(),
                    why: "bad is not allowed".into(),
                }));
            }
            let b = self
                .store
                .get_builder_by_name(&req.builder_names[0])
                .await
                .unwrap()
                .unwrap();
            let (bs, brs) = self
                .store
                .add_buildset(
                    &NewBuildset {
                        builders: vec![b.builderid],
                        reason: req.reason.unwrap_or_default(),
                        ..Default::default()
                    },
                    5000,
                )
                .await
                .unwrap();
            Ok((bs, brs.into_iter().map(|(_, r)| r).collect()))
        })
    }
    fn add_change(&self, change: ChangeRequest) -> BoxFuture<'_, Result<ChangeId, ControlError>> {
        self.calls.lock().unwrap().push(Call::Change(change));
        Box::pin(async { Ok(ChangeId(99)) })
    }
    fn stop_build(&self, build: BuildId, reason: String) -> BoxFuture<'_, bool> {
        self.calls.lock().unwrap().push(Call::Stop(build, reason));
        Box::pin(async { true })
    }
    fn cancel_request(&self, request: BuildRequestId) -> BoxFuture<'_, bool> {
        self.calls.lock().unwrap().push(Call::Cancel(request));
        Box::pin(async { true })
    }
}

struct Fx {
    app: axum::Router,
    control: Arc<TestControl>,
    metrics: Metrics,
    store: Store,
    stdio: i64,
}

async fn populate(store: &Store) -> i64 {
    let m = store.register_master("m1", 1000).await.unwrap();
    assert_eq!(m.0, 1);
    let mut info = serde_json::Map::new();
    info.insert("admin".into(), json!("Alice"));
    info.insert("host".into(), json!(format!("box {SECRET}")));
    info.insert("access_token".into(), json!("tok-123"));
    let w1 = store.upsert_worker("w1", &info).await.unwrap();
    store
        .upsert_worker("w2", &serde_json::Map::new())
        .await
        .unwrap();
    let linux = store
        .upsert_builder("linux", Some("Linux box"), &["unix".into()])
        .await
        .unwrap();
    store.upsert_builder("old", None, &[]).await.unwrap();
    let mut props = Properties::default();
    props.set("testopts", "-j4", "force");
    let mut brs = Vec::new();
    for i in 0..4 {
        let ss = store
            .add_sourcestamp(
                &SourceStamp {
                    branch: Some("main".into()),
                    revision: Some(format!("r{i}")),
                    ..Default::default()
                },
                1100,
            )
            .await
            .unwrap();
        let (_, r) = store
            .add_buildset(
                &NewBuildset {
                    sourcestamps: vec![ss],
                    builders: vec![linux],
                    properties: props.clone(),
                    reason: format!("reason {i}"),
                    ..Default::default()
                },
                1100 + i,
            )
            .await
            .unwrap();
        brs.push(r[0].1);
    }
    let claimed = store.claim_build_requests(m, linux, 3, 1200).await.unwrap();
    assert_eq!(claimed.len(), 3);
    let mut builds = Vec::new();
    for (i, br) in claimed.iter().enumerate() {
        let (b, n) = store
            .add_build(
                &NewBuild {
                    builderid: linux,
                    buildrequestid: *br,
                    workerid: w1,
                    masterid: m,
                    state_string: "building".into(),
                },
                1300 + i as i64,
            )
            .await
            .unwrap();
        assert_eq!(n, i as i64 + 1);
        builds.push(b);
    }
    store
        .finish_build(builds[0], Results::Success, 1400)
        .await
        .unwrap();
    store
        .finish_build(builds[1], Results::Failure, 1500)
        .await
        .unwrap();
    store
        .complete_build_requests(&claimed[..2], Results::Success, 1500)
        .await
        .unwrap();
    let mut bp = Properties::default();
    bp.set("got_revision", "abc", "Git");
    bp.set("token", SECRET, "Secret");
    store.set_build_properties(builds[0], &bp).await.unwrap();

    let (git, _, _) = store.add_step(builds[0], "git").await.unwrap();
    let (compile, _, _) = store.add_step(builds[0], "compile").await.unwrap();
    store.start_step(git, 1301).await.unwrap();
    store
        .finish_step(git, Results::Success, false, 1302)
        .await
        .unwrap();
    store.start_step(compile, 1303).await.unwrap();
    store
        .add_step_url(compile, "report", "http://r/1")
        .await
        .unwrap();
    let log = store
        .add_log(compile, "stdio", LogType::Stdio)
        .await
        .unwrap();
    let mut text = String::from("hmake -j4\n");
    for i in 0..2500 {
        text.push_str(&format!("oline {i}\n"));
    }
    text.push_str(&format!("etoken={SECRET}\n"));
    store.append_log(log, &text).await.unwrap();
    store.finish_log(log, false).await.unwrap();
    assert!(
        store.log_chunks(log).await.unwrap().len() >= 3,
        "the log spans several chunks"
    );
    store
        .add_log(compile, "summary", LogType::Text)
        .await
        .unwrap();

    for (i, branch) in ["main", "dev", "main"].iter().enumerate() {
        store
            .add_change(
                &NewChange {
                    author: format!("dev{i} <d@x>"),
                    comments: format!("fix {i}"),
                    branch: Some(branch.to_string()),
                    revision: Some(format!("c{i}")),
                    when_timestamp: 900 + i as i64,
                    repository: "https://git/x".into(),
                    files: vec![format!("f{i}.c")],
                    ..Default::default()
                },
                2000,
            )
            .await
            .unwrap();
    }
    log.0
}

async fn fixture(store: Store) -> Fx {
    let stdio = populate(&store).await;
    let mut cfg = kiln_config::load_str(
        "master.star",
        CONFIG,
        &SecretSource {
            dir: None,
            use_env: false,
        },
    )
    .unwrap();
    cfg.secrets.insert("token", SECRET);
    let control = Arc::new(TestControl {
        store: store.clone(),
        cfg: Arc::new(cfg),
        calls: Mutex::new(vec![]),
    });
    let metrics = Metrics::new();
    let app = api::router(ApiState::new(
        store.clone(),
        control.clone(),
        metrics.clone(),
    ));
    Fx {
        app,
        control,
        metrics,
        store,
        stdio,
    }
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

impl Fx {
    async fn send(&self, req: Request<Body>) -> Answer {
        let r = self.app.clone().oneshot(req).await.unwrap();
        let status = r.status();
        let headers = r.headers().clone();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            headers,
            body: String::from_utf8(body.to_vec()).unwrap(),
        }
    }
    async fn get(&self, uri: &str) -> Answer {
        self.send(
            Request::get(uri)
                .header(header::ACCEPT, "application/json")
                .body(Body::empty())
                .unwrap(),
        )
        .await
    }
    /// GET expecting 200, returning the JSON.
    async fn ok(&self, uri: &str) -> Value {
        let a = self.get(uri).await;
        assert_eq!(a.status, StatusCode::OK, "{uri}: {}", a.body);
        a.json()
    }
    async fn ids(&self, uri: &str, plural: &str, key: &str) -> (Vec<i64>, i64) {
        let v = self.ok(uri).await;
        let ids = v[plural]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o[key].as_i64().unwrap())
            .collect();
        (ids, v["meta"]["total"].as_i64().unwrap())
    }
    async fn rpc(&self, uri: &str, body: Value) -> Answer {
        self.send(
            Request::post(uri)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await
    }
    fn calls(&self) -> Vec<Call> {
        std::mem::take(&mut *self.control.calls.lock().unwrap())
    }
}

async fn suite(store: Store) {
    let fx = fixture(store).await;
    builders(&fx).await;
    builds(&fx).await;
    steps_and_logs(&fx).await;
    log_paths(&fx).await;
    workers_changes_requests(&fx).await;
    errors(&fx).await;
    control(&fx).await;
    metrics_and_health(&fx).await;
}

async fn builders(fx: &Fx) {
    let linux = json!({"builderid": 1, "name": "linux", "masterids": [1], "description": "Linux box",
        "description_format": null, "description_html": null, "projectid": null, "tags": ["unix"]});
    let old = json!({"builderid": 2, "name": "old", "masterids": [], "description": null,
        "description_format": null, "description_html": null, "projectid": null, "tags": []});
    assert_eq!(
        fx.ok("/api/v2/builders").await,
        json!({"builders": [linux, old], "meta": {"total": 2}})
    );
    assert_eq!(
        fx.ok("/api/v2/builders/1").await,
        json!({"builders": [linux], "meta": {}})
    );
    assert_eq!(
        fx.ok("/api/v2/builders/linux").await,
        json!({"builders": [linux], "meta": {}})
    );
    assert_eq!(
        fx.ok("/api/v2/builders?tags__contains=unix").await["meta"]["total"],
        1
    );
    assert_eq!(
        fx.ok("/api/v2/builders?order=-name&field=name").await,
        json!({"builders": [{"name": "old"}, {"name": "linux"}], "meta": {"total": 2}})
    );
}

async fn builds(fx: &Fx) {
    let b1 = json!({"buildid": 1, "number": 1, "builderid": 1, "buildrequestid": 1, "workerid": 1, "masterid": 1,
        "started_at": 1300, "complete_at": 1400, "complete": true, "locks_duration_s": 0,
        "state_string": "building", "results": 0, "properties": {}});
    let v = fx.ok("/api/v2/builds").await;
    assert_eq!(v["meta"], json!({"total": 3}));
    assert_eq!(v["builds"][0], b1);
    assert_eq!(v["builds"][2]["complete"], false);
    assert_eq!(v["builds"][2]["results"], Value::Null);
    assert_eq!(v["builds"][2]["complete_at"], Value::Null);
    assert_eq!(
        fx.ok("/api/v2/builds/1").await,
        json!({"builds": [b1], "meta": {}})
    );
    assert_eq!(
        fx.ok("/api/v2/builders/1/builds/1").await,
        json!({"builds": [b1], "meta": {}})
    );
    assert_eq!(
        fx.ok("/api/v2/builders/linux/builds/1").await["builds"][0]["buildid"],
        1
    );

    // filters, order, limit/offset: total counts matches before the page is cut
    assert_eq!(
        fx.ids(
            "/api/v2/builds?complete=true&order=-buildid&limit=1",
            "builds",
            "buildid"
        )
        .await,
        (vec![2], 2)
    );
    assert_eq!(
        fx.ids("/api/v2/builds?complete=false", "builds", "buildid")
            .await,
        (vec![3], 1)
    );
    assert_eq!(
        fx.ids("/api/v2/builds?complete=no", "builds", "buildid")
            .await,
        (vec![3], 1)
    );
    assert_eq!(
        fx.ids("/api/v2/builds?results__ne=0", "builds", "buildid")
            .await,
        (vec![2], 1)
    );
    assert_eq!(
        fx.ids(
            "/api/v2/builds?number__in=1&number__in=3",
            "builds",
            "buildid"
        )
        .await,
        (vec![1, 3], 2)
    );
    assert_eq!(
        fx.ids("/api/v2/builds?number=1&number=2", "builds", "buildid")
            .await,
        (vec![1, 2], 2)
    );
    assert_eq!(
        fx.ids(
            "/api/v2/builds?started_at__ge=1301&started_at__lt=1302",
            "builds",
            "buildid"
        )
        .await,
        (vec![2], 1)
    );
    assert_eq!(
        fx.ids("/api/v2/builds?order=-results", "builds", "buildid")
            .await,
        (vec![2, 1, 3], 3)
    );
    assert_eq!(
        fx.ids("/api/v2/builds?order=results", "builds", "buildid")
            .await,
        (vec![3, 1, 2], 3)
    );
    assert_eq!(
        fx.ids(
            "/api/v2/builds?order=-number&offset=1&limit=5",
            "builds",
            "buildid"
        )
        .await,
        (vec![2, 1], 3)
    );
    assert_eq!(
        fx.ids(
            "/api/v2/builds?state_string__contains=uild",
            "builds",
            "buildid"
        )
        .await
        .1,
        3
    );
    assert_eq!(
        fx.ids("/api/v2/builders/1/builds?builderid=1", "builds", "buildid")
            .await
            .1,
        3
    );
    assert_eq!(
        fx.ids("/api/v2/builders/2/builds", "builds", "buildid")
            .await,
        (vec![], 0)
    );
    assert_eq!(
        fx.ids("/api/v2/builders/nosuch/builds", "builds", "buildid")
            .await,
        (vec![], 0)
    );

    // field selection
    assert_eq!(
        fx.ok("/api/v2/builds?field=buildid&field=results&limit=1")
            .await,
        json!({"builds": [{"buildid": 1, "results": 0}], "meta": {"total": 3}})
    );
    // properties only on request, filtered, with secrets redacted
    assert_eq!(
        fx.ok("/api/v2/builds/1?property=got_revision").await["builds"][0]["properties"],
        json!({"got_revision": ["abc", "Git"]})
    );
    assert_eq!(
        fx.ok("/api/v2/builds?property=*&buildid=1").await["builds"][0]["properties"],
        json!({"got_revision": ["abc", "Git"], "token": ["<secret:token>", "Secret"]})
    );
    assert_eq!(
        fx.ok("/api/v2/builds/2?property=*").await["builds"][0]["properties"],
        json!({})
    );
    assert_eq!(
        fx.ok("/api/v2/builds/1/properties").await,
        json!({"properties": [{"got_revision": ["abc", "Git"], "token": ["<secret:token>", "Secret"]}], "meta": {"total": 1}})
    );
}

async fn steps_and_logs(fx: &Fx) {
    let git = json!({"stepid": 1, "number": 0, "name": "git", "buildid": 1, "started_at": 1301,
        "locks_acquired_at": null, "complete": true, "complete_at": 1302, "results": 0,
        "state_string": "pending", "urls": [], "hidden": false});
    let compile = json!({"stepid": 2, "number": 1, "name": "compile", "buildid": 1, "started_at": 1303,
        "locks_acquired_at": null, "complete": false, "complete_at": null, "results": null,
        "state_string": "pending", "urls": [{"name": "report", "url": "http://r/1"}], "hidden": false});
    assert_eq!(
        fx.ok("/api/v2/builds/1/steps").await,
        json!({"steps": [git, compile], "meta": {"total": 2}})
    );
    assert_eq!(
        fx.ok("/api/v2/builds/1/steps?complete=false").await,
        json!({"steps": [compile], "meta": {"total": 1}})
    );
    assert_eq!(
        fx.ok("/api/v2/builds/1/steps?order=-number&limit=1").await["steps"][0]["name"],
        "compile"
    );
    assert_eq!(
        fx.ok("/api/v2/builders/1/builds/1/steps").await["meta"]["total"],
        2
    );
    assert_eq!(
        fx.ok("/api/v2/builds/2/steps").await,
        json!({"steps": [], "meta": {"total": 0}})
    );
    assert_eq!(
        fx.ok("/api/v2/steps/2").await,
        json!({"steps": [compile], "meta": {}})
    );
    assert_eq!(
        fx.ok("/api/v2/builds/1/steps/compile").await,
        json!({"steps": [compile], "meta": {}})
    );
    assert_eq!(
        fx.ok("/api/v2/builds/1/steps/1").await,
        json!({"steps": [compile], "meta": {}})
    );

    let id = fx.stdio;
    let stdio = json!({"logid": id, "name": "stdio", "slug": "stdio", "stepid": 2, "complete": true, "num_lines": 2502, "type": "s"});
    let summary = json!({"logid": id + 1, "name": "summary", "slug": "summary", "stepid": 2, "complete": false, "num_lines": 0, "type": "t"});
    assert_eq!(
        fx.ok("/api/v2/steps/2/logs").await,
        json!({"logs": [stdio, summary], "meta": {"total": 2}})
    );
    assert_eq!(
        fx.ok("/api/v2/builds/1/steps/compile/logs?type=t").await,
        json!({"logs": [summary], "meta": {"total": 1}})
    );
    assert_eq!(
        fx.ok(&format!("/api/v2/logs/{id}")).await,
        json!({"logs": [stdio], "meta": {}})
    );
    assert_eq!(
        fx.ok("/api/v2/steps/2/logs/stdio").await,
        json!({"logs": [stdio], "meta": {}})
    );
    assert_eq!(
        fx.ok("/api/v2/builds/1/steps/1/logs/stdio").await,
        json!({"logs": [stdio], "meta": {}})
    );

    // logchunks: offset/limit are a line range, across a chunk boundary
    assert_eq!(
        fx.ok(&format!("/api/v2/logs/{id}/contents?offset=999&limit=3"))
            .await,
        json!({"logchunks": [{"logid": id, "firstline": 999, "content": "oline 998\noline 999\noline 1000\n"}], "meta": {}})
    );
    let whole = fx.ok(&format!("/api/v2/logs/{id}/contents")).await;
    let content = whole["logchunks"][0]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(content.starts_with("hmake -j4\noline 0\n"));
    assert!(
        content.ends_with("oline 2499\netoken=<secret:token>\n"),
        "the secret is redacted"
    );
    assert_eq!(content.lines().count(), 2502);
    assert_eq!(
        fx.ok(&format!("/api/v2/logs/{}/contents", id + 1)).await,
        json!({"logchunks": [{"logid": id + 1, "firstline": 0, "content": ""}], "meta": {}})
    );
    assert_eq!(
        fx.ok("/api/v2/steps/2/logs/stdio/contents?offset=1&limit=1")
            .await["logchunks"][0]["content"],
        "oline 0\n"
    );
    assert_eq!(
        fx.get(&format!("/api/v2/logs/{id}/contents?offset=5&limit=0"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    // raw: streamed, channel characters stripped, Buildbot's header and file name
    let raw = fx.get(&format!("/api/v2/logs/{id}/raw")).await;
    assert_eq!(raw.status, StatusCode::OK);
    assert_eq!(
        raw.headers[header::CONTENT_TYPE],
        "text/plain; charset=utf-8"
    );
    assert_eq!(
        raw.headers[header::CONTENT_DISPOSITION],
        "attachment; filename=linux_build_1_step_compile_log_stdio"
    );
    let mut want = String::from("Builder: linux\nBuild number: 1\nWorker name: w1\nmake -j4\n");
    for i in 0..2500 {
        want.push_str(&format!("line {i}\n"));
    }
    want.push_str("token=<secret:token>\n");
    assert_eq!(raw.body, want);
    assert_eq!(
        fx.get("/api/v2/builds/1/steps/compile/logs/stdio/raw")
            .await
            .body,
        want
    );
    assert_eq!(fx.get("/api/v2/steps/2/logs/summary/raw").await.body, "");
    assert_eq!(
        fx.get("/api/v2/logs/9999/raw").await.status,
        StatusCode::NOT_FOUND
    );
}

/// The three paths that name a log (`kiln_web`'s `LogRef`), each bare and with `/contents`,
/// `/raw` and `/raw_inline`: the same log through each, and each one's 404s — an id that is not a number
/// (`Invalid path`, naming the path up to the part that is wrong) and a log that is not there
/// (`not found while getting from`, naming the whole path).
async fn log_paths(fx: &Fx) {
    let id = fx.stdio;
    let by_id = format!("/logs/{id}");
    let found = [
        by_id.as_str(),
        "/steps/2/logs/stdio",
        "/builds/1/steps/compile/logs/stdio",
        "/builds/1/steps/1/logs/stdio",
        "/builders/linux/builds/1/steps/compile/logs/stdio",
        "/builders/1/builds/1/steps/1/logs/stdio",
    ];
    let bad_id = [
        ("/logs/x", "logs/x"),
        ("/steps/x/logs/stdio", "steps/x/logs/stdio"),
        (
            "/builds/x/steps/compile/logs/stdio",
            "builds/x/steps/compile",
        ),
    ];
    let missing = [
        "/logs/9999",
        "/steps/2/logs/nosuch",
        "/steps/99/logs/stdio",
        "/builds/1/steps/compile/logs/nosuch",
        "/builds/1/steps/nosuch/logs/stdio",
        "/builds/99/steps/1/logs/stdio",
        "/builders/linux/builds/99/steps/1/logs/stdio",
        "/builders/nosuch/builds/1/steps/1/logs/stdio",
        "/builders/linux/builds/1/steps/nosuch/logs/stdio",
        // A slug that is also a tail is a slug.
        "/steps/2/logs/raw",
        "/steps/2/logs/raw_inline",
        "/steps/2/logs/contents",
    ];
    // A step and its logs through its builder's build, as through the build.
    assert_eq!(
        fx.ok("/api/v2/builders/linux/builds/1/steps/compile").await,
        fx.ok("/api/v2/builds/1/steps/compile").await
    );
    assert_eq!(
        fx.ok("/api/v2/builders/1/builds/1/steps/compile/logs")
            .await,
        fx.ok("/api/v2/builds/1/steps/compile/logs").await
    );
    let a = fx.get("/api/v2/builders/linux/builds/1/steps/nosuch").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let row = fx.ok(&format!("/api/v2{by_id}")).await;
    let contents = fx
        .ok(&format!("/api/v2{by_id}/contents?offset=1&limit=2"))
        .await;
    let raw = fx.get(&format!("/api/v2{by_id}/raw")).await;
    assert_eq!(row["logs"][0]["logid"], id);
    assert_eq!(contents["logchunks"][0]["content"], "oline 0\noline 1\n");
    assert!(raw.body.starts_with("Builder: linux\n"), "{}", raw.body);
    for path in found {
        assert_eq!(fx.ok(&format!("/api/v2{path}")).await, row, "{path}");
        let c = fx
            .ok(&format!("/api/v2{path}/contents?offset=1&limit=2"))
            .await;
        assert_eq!(c, contents, "{path}/contents");
        let r = fx.get(&format!("/api/v2{path}/raw")).await;
        assert_eq!(
            (r.status, &r.body),
            (StatusCode::OK, &raw.body),
            "{path}/raw"
        );
        assert_eq!(
            r.headers[header::CONTENT_DISPOSITION],
            "attachment; filename=linux_build_1_step_compile_log_stdio"
        );
        // `/raw_inline`: the same text, to show rather than save.
        let r = fx.get(&format!("/api/v2{path}/raw_inline")).await;
        assert_eq!(
            (r.status, &r.body),
            (StatusCode::OK, &raw.body),
            "{path}/raw_inline"
        );
        assert_eq!(r.headers[header::CONTENT_TYPE], "text/plain; charset=utf-8");
        assert!(r.headers.get(header::CONTENT_DISPOSITION).is_none());
    }
    for tail in ["", "/contents", "/raw", "/raw_inline"] {
        for (path, invalid) in bad_id {
            let a = fx.get(&format!("/api/v2{path}{tail}")).await;
            assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}{tail}");
            assert_eq!(
                a.json(),
                json!({"error": format!("Invalid path: {invalid}")}),
                "{path}{tail}"
            );
        }
        for path in missing {
            let a = fx.get(&format!("/api/v2{path}{tail}")).await;
            assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}{tail}");
            assert_eq!(
                a.json(),
                json!({"error": format!("not found while getting from {path}{tail}")}),
                "{path}{tail}"
            );
        }
    }
    // The query is checked before the log is looked for, as Buildbot does; `/raw` reads none.
    for path in ["/steps/2/logs/nosuch", "/steps/2/logs/nosuch/contents"] {
        let a = fx.get(&format!("/api/v2{path}?bogus=1")).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(
            a.json(),
            json!({"error": "unrecognized query parameter 'bogus'"})
        );
    }
    assert_eq!(
        fx.get("/api/v2/steps/2/logs/stdio/raw?bogus=1").await.body,
        raw.body
    );
}

async fn workers_changes_requests(fx: &Fx) {
    let w1 = json!({"workerid": 1, "name": "w1", "workerinfo": {"admin": "Alice", "host": "box <secret:token>"},
        "paused": false, "pause_reason": null, "graceful": false, "connected_to": [{"masterid": 1}],
        "configured_on": [{"builderid": 1, "masterid": 1}]});
    let v = fx.ok("/api/v2/workers").await;
    assert_eq!(v["meta"], json!({"total": 2}));
    assert_eq!(v["workers"][0], w1);
    assert_eq!(v["workers"][1]["connected_to"], json!([]));
    assert!(
        !fx.get("/api/v2/workers").await.body.contains("tok-123"),
        "credentials never leave"
    );
    assert!(!fx.get("/api/v2/workers").await.body.contains(SECRET));
    assert_eq!(
        fx.ok("/api/v2/workers/w1").await,
        json!({"workers": [w1], "meta": {}})
    );
    assert_eq!(
        fx.ok("/api/v2/workers/1").await,
        json!({"workers": [w1], "meta": {}})
    );
    assert_eq!(
        fx.ids("/api/v2/workers/1/builds", "builds", "buildid")
            .await
            .1,
        3
    );

    let c1 = fx.ok("/api/v2/changes/1").await;
    assert_eq!(
        c1,
        json!({"changes": [{"changeid": 1, "author": "dev0 <d@x>", "committer": null, "comments": "fix 0",
            "branch": "main", "revision": "c0", "revlink": null, "when_timestamp": 900, "category": null,
            "parent_changeids": [], "repository": "https://git/x", "codebase": "", "project": "",
            "files": ["f0.c"], "properties": {},
            "sourcestamp": {"ssid": 5, "branch": "main", "revision": "c0", "project": "", "repository": "https://git/x",
                "codebase": "", "created_at": 2000, "patch": null}}], "meta": {}})
    );
    assert_eq!(
        fx.ids(
            "/api/v2/changes?branch=main&order=-changeid",
            "changes",
            "changeid"
        )
        .await,
        (vec![3, 1], 2)
    );
    assert_eq!(
        fx.ids("/api/v2/changes?limit=1&offset=1", "changes", "changeid")
            .await,
        (vec![2], 3)
    );
    assert_eq!(
        fx.ids(
            "/api/v2/changes?author__contains=dev1",
            "changes",
            "changeid"
        )
        .await,
        (vec![2], 1)
    );

    let v = fx.ok("/api/v2/buildrequests?claimed=false").await;
    assert_eq!(
        v,
        json!({"buildrequests": [{"buildrequestid": 4, "buildsetid": 4, "builderid": 1, "priority": 0, "claimed": false,
            "claimed_at": null, "claimed_by_masterid": null, "complete": false, "results": null,
            "submitted_at": 1103, "complete_at": null, "waited_for": false, "properties": null}], "meta": {"total": 1}})
    );
    assert_eq!(
        fx.ids(
            "/api/v2/buildrequests?complete=true",
            "buildrequests",
            "buildrequestid"
        )
        .await,
        (vec![1, 2], 2)
    );
    assert_eq!(
        fx.ids(
            "/api/v2/builders/1/buildrequests?order=-submitted_at&limit=2",
            "buildrequests",
            "buildrequestid"
        )
        .await,
        (vec![4, 3], 4)
    );
    assert_eq!(
        fx.ok("/api/v2/buildrequests/1?property=testopts").await["buildrequests"][0]["properties"],
        json!({"testopts": ["-j4", "force"]})
    );
    assert_eq!(
        fx.ids("/api/v2/buildrequests/3/builds", "builds", "buildid")
            .await,
        (vec![3], 1)
    );

    let bs = fx
        .ok("/api/v2/buildsets?complete=false&order=-bsid&limit=1")
        .await;
    assert_eq!(
        bs,
        json!({"buildsets": [{"bsid": 4, "external_idstring": null, "reason": "reason 3", "rebuilt_buildid": null,
            "submitted_at": 1103, "complete": false, "complete_at": null, "results": null,
            "sourcestamps": [{"ssid": 4, "branch": "main", "revision": "r3", "project": "", "repository": "",
                "codebase": "", "created_at": 1100, "patch": null}],
            "parent_buildid": null, "parent_relationship": null}], "meta": {"total": 2}})
    );
    assert_eq!(
        fx.ok("/api/v2/buildsets/1").await["buildsets"][0]["complete"],
        true
    );

    let fs = fx.ok("/api/v2/forceschedulers").await;
    assert_eq!(fs["meta"], json!({"total": 1}));
    assert_eq!(fs["forceschedulers"][0]["name"], "force");
    assert_eq!(fs["forceschedulers"][0]["builder_names"], json!(["linux"]));
    let all = &fs["forceschedulers"][0]["all_fields"];
    let names = |v: &Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    // Buildbot 4.3's layout: owner/reason/priority, the source group, then the parameters.
    assert_eq!(names(all), vec!["", "", "testopts"]);
    assert_eq!(
        names(&all[0]["fields"]),
        vec!["username", "reason", "priority"]
    );
    assert_eq!(
        names(&all[1]["fields"]),
        vec!["branch", "project", "repository", "revision"]
    );
    assert_eq!(
        all[2],
        json!({"autopopulate": null, "default": "", "fullName": "testopts", "hide": false, "label": "testopts", "maxsize": null,
            "multiple": false, "name": "testopts", "regex": null, "required": false, "size": 10, "tablabel": "testopts",
            "tooltip": "", "type": "text"})
    );
    assert_eq!(
        fx.ids("/api/v2/builders/1/workers", "workers", "workerid")
            .await,
        (vec![1, 2], 2)
    );
    assert_eq!(
        fx.ids("/api/v2/builders/2/workers", "workers", "workerid")
            .await,
        (vec![], 0)
    );
    assert_eq!(
        fx.ok("/api/v2/builders/1/forceschedulers").await["meta"]["total"],
        1
    );
    assert_eq!(
        fx.ok("/api/v2/builders/2/forceschedulers").await["meta"]["total"],
        0
    );
    assert_eq!(
        fx.ok("/api/v2/forceschedulers/force").await["forceschedulers"][0]["label"],
        "force"
    );
    assert_eq!(
        fx.ok("/api/v2/masters").await,
        json!({"masters": [{"masterid": 1, "name": "m1", "active": true, "last_active": 1000}], "meta": {"total": 1}})
    );
}

async fn errors(fx: &Fx) {
    for uri in [
        "/api/v2/builds/99",
        "/api/v2/builders/nosuch",
        "/api/v2/steps/99",
        "/api/v2/logs/99",
        "/api/v2/changes/99",
        "/api/v2/workers/nosuch",
        "/api/v2/forceschedulers/nosuch",
        "/api/v2/builders/1/builds/99",
        "/api/v2/builds/1/steps/nosuch",
        "/api/v2/steps/2/logs/nosuch",
        "/api/v2/buildrequests/99",
        "/api/v2/nosuch",
        "/api/v2/builds/x",
    ] {
        let a = fx.get(uri).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{uri}: {}", a.body);
        assert!(a.json()["error"].is_string(), "{uri}: {}", a.body);
    }
    for (uri, msg) in [
        (
            "/api/v2/builds?bogus=1",
            "unrecognized query parameter 'bogus'",
        ),
        ("/api/v2/builds?order=bogus", "no such field 'bogus'"),
        (
            "/api/v2/builds?complete=maybe",
            "invalid filter value for complete",
        ),
        (
            "/api/v2/builds?number__gt=x",
            "invalid filter value for number__gt",
        ),
        (
            "/api/v2/builds?limit=x",
            "invalid limit 'x': not a whole number; limit takes 0 to 100000",
        ),
        (
            "/api/v2/builds?number__contains=1",
            "'number__contains' needs a text field",
        ),
        ("/api/v2/builds/1?complete=true", "this is not a collection"),
        (
            "/api/v2/builds?field=buildid&order=number",
            "cannot order on un-selected fields",
        ),
        (
            "/api/v2/builds?field=buildid&number=1",
            "cannot filter on un-selected fields",
        ),
    ] {
        let a = fx.get(uri).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{uri}: {}", a.body);
        assert_eq!(a.json(), json!({"error": msg}), "{uri}");
    }
    // Without `Accept: application/json`, Buildbot indents and says text/plain.
    let a = fx
        .send(Request::get("/api/v2/masters").body(Body::empty()).unwrap())
        .await;
    assert_eq!(a.headers[header::CONTENT_TYPE], "text/plain; charset=utf-8");
    assert!(a.body.contains("\n  \"masters\": ["), "{}", a.body);
}

async fn control(fx: &Fx) {
    fx.calls();
    let a = fx
        .rpc("/api/v2/forceschedulers/force", json!({"jsonrpc": "2.0", "id": 1, "method": "force",
            "params": {"builderid": 1, "owner": "me <me@x>", "reason": "try", "branch": "main", "revision": "", "testopts": "-v"}}))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(
        a.json(),
        json!({"jsonrpc": "2.0", "id": 1, "result": [5, {"1": 5}]})
    );
    assert_eq!(
        fx.calls(),
        vec![Call::Force(
            "force".into(),
            ForceRequest {
                builder_names: vec!["linux".into()],
                owner: Some("me <me@x>".into()),
                reason: Some("try".into()),
                branch: Some("main".into()),
                revision: Some("".into()),
                repository: None,
                project: None,
                properties: BTreeMap::from([("testopts".to_string(), json!("-v"))]),
            }
        )]
    );
    let a = fx
        .rpc(
            "/api/v2/forceschedulers/force",
            json!({"jsonrpc": "2.0", "id": "x", "method": "force", "params": {"testopts": "bad"}}),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        a.json(),
        json!({"jsonrpc": "2.0", "id": "x", "error": {"code": -32602, "message": "parameter \"testopts\": bad is not allowed"}})
    );
    let a = fx
        .rpc(
            "/api/v2/forceschedulers/nosuch",
            json!({"jsonrpc": "2.0", "id": 2, "method": "force", "params": {}}),
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.json()["error"]["code"], -32600);
    let a = fx
        .rpc(
            "/api/v2/forceschedulers/force",
            json!({"jsonrpc": "2.0", "id": 3, "method": "force"}),
        )
        .await;
    assert_eq!(
        a.json(),
        json!({"jsonrpc": "2.0", "error": {"code": -32600, "message": "missing key 'params'"}})
    );
    let a = fx
        .send(
            Request::post("/api/v2/builds/3")
                .header(header::CONTENT_TYPE, "text/plain")
                .body(Body::from("{}"))
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        a.json()["error"]["message"],
        "Invalid content-type (use application/json)"
    );
    fx.calls();

    let a = fx
        .rpc(
            "/api/v2/builds/3",
            json!({"jsonrpc": "2.0", "id": 4, "method": "stop", "params": {"reason": "enough"}}),
        )
        .await;
    assert_eq!(a.json(), json!({"jsonrpc": "2.0", "id": 4, "result": null}));
    assert_eq!(fx.calls(), vec![Call::Stop(BuildId(3), "enough".into())]);
    let a = fx
        .rpc(
            "/api/v2/builds/3",
            json!({"jsonrpc": "2.0", "id": 5, "method": "rebuildx", "params": {}}),
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_IMPLEMENTED);
    assert_eq!(a.json()["error"]["code"], -32601);
    let a = fx
        .rpc(
            "/api/v2/buildrequests/4",
            json!({"jsonrpc": "2.0", "id": 6, "method": "cancel", "params": {}}),
        )
        .await;
    assert_eq!(a.json(), json!({"jsonrpc": "2.0", "id": 6, "result": null}));
    assert_eq!(fx.calls(), vec![Call::Cancel(BuildRequestId(4))]);

    let form = "author=alice&files=%5B%22a.c%22%2C%22b.c%22%5D&comments=fix&revision=abc&when_timestamp=1700000000\
        &branch=main&category=cat&revlink=http%3A%2F%2Fr&properties=%7B%22k%22%3A1%7D&repository=repo&project=proj&codebase=cb";
    let a = fx
        .send(
            Request::post("/change_hook/base")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(form))
                .unwrap(),
        )
        .await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (StatusCode::ACCEPTED, "1 change found")
    );
    assert_eq!(
        fx.calls(),
        vec![Call::Change(ChangeRequest {
            author: "alice".into(),
            committer: None,
            files: vec!["a.c".into(), "b.c".into()],
            comments: "fix".into(),
            revision: Some("abc".into()),
            when_timestamp: Some(1_700_000_000),
            branch: Some("main".into()),
            category: Some("cat".into()),
            revlink: Some("http://r".into()),
            properties: BTreeMap::from([("k".to_string(), json!(1))]),
            repository: "repo".into(),
            project: "proj".into(),
            codebase: "cb".into(),
        })]
    );
    let a = fx
        .send(
            Request::post("/change_hook/base")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(
                    json!({"who": "bob", "files": ["x"], "comments": "c"}).to_string(),
                ))
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    match &fx.calls()[..] {
        [Call::Change(c)] => assert_eq!(
            (c.author.as_str(), c.files.clone()),
            ("bob", vec!["x".to_string()])
        ),
        other => panic!("{other:?}"),
    }
    let a = fx
        .send(
            Request::post("/change_hook/base")
                .body(Body::from("files=%5Bx"))
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(fx.calls().is_empty());
}

async fn metrics_and_health(fx: &Fx) {
    fx.metrics.workers_connected(1);
    fx.metrics.builds_running(2);
    fx.metrics.requests_pending(3);
    fx.metrics.build_finished(Results::Failure);
    fx.metrics.build_finished(Results::Failure);
    let a = fx.get("/metrics").await;
    assert_eq!(a.status, StatusCode::OK);
    for line in [
        "kiln_workers_connected 1",
        "kiln_builds_running 2",
        "kiln_buildrequests_pending 3",
        "kiln_builds_finished_total{results=\"failure\"} 2",
        "kiln_builds_finished_total{results=\"success\"} 0",
    ] {
        assert!(
            a.body.lines().any(|l| l == line),
            "missing {line:?} in\n{}",
            a.body
        );
    }
    let (_, stored, _) = fx
        .store
        .log_sizes(kiln_model::LogId(fx.stdio))
        .await
        .unwrap();
    assert!(stored > 0);
    assert!(
        a.body
            .lines()
            .any(|l| l == format!("kiln_log_bytes_stored {stored}")),
        "{}",
        a.body
    );

    let a = fx.get("/health").await;
    assert_eq!(
        (a.status, a.json()),
        (StatusCode::OK, json!({"status": "ok", "db": "ok"}))
    );
    fx.store.close().await;
    let a = fx.get("/health").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.json()["status"], "error");
    assert!(
        a.json()["db"].as_str().unwrap().contains("closed"),
        "{}",
        a.body
    );
}

#[tokio::test]
async fn api_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&format!("sqlite:{}", dir.path().join("kiln.db").display()))
        .await
        .unwrap();
    suite(store).await;
}

#[tokio::test]
async fn api_on_postgres() {
    kiln_testkit::pg::with_fresh_database("kiln_api_test", |url| async move {
        suite(Store::connect(&url).await.unwrap()).await;
    })
    .await;
}

/// Over a real socket, `/raw` is sent chunked (streamed from the store, no Content-Length).
#[tokio::test]
async fn api_raw_is_streamed_over_http() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&format!("sqlite:{}", dir.path().join("kiln.db").display()))
        .await
        .unwrap();
    let fx = fixture(store).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = fx.app.clone();
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /api/v2/logs/{}/raw HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        fx.stdio
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8(out).unwrap();
    let (head, mut rest) = text.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    // Undo the chunked framing.
    let (mut body, mut chunks) = (String::new(), 0);
    loop {
        let (size, after) = rest.split_once("\r\n").unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        body.push_str(&after[..n]);
        rest = &after[n + 2..];
        chunks += 1;
    }
    assert!(chunks >= 3, "one HTTP chunk per stored chunk, got {chunks}");
    assert!(
        body.starts_with("Builder: linux\nBuild number: 1\nWorker name: w1\nmake -j4\nline 0\n")
    );
    assert!(body.ends_with("line 2499\ntoken=<secret:token>\n"));
    server.abort();
}

async fn sqlite_fixture() -> (tempfile::TempDir, Fx) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&format!("sqlite:{}", dir.path().join("kiln.db").display()))
        .await
        .unwrap();
    let fx = fixture(store).await;
    (dir, fx)
}

/// `limit` and `offset` out of range are refused on every endpoint, with what they take.
#[tokio::test]
async fn api_refuses_limit_and_offset_out_of_range() {
    let (_dir, fx) = sqlite_fixture().await;
    let limits = [
        (
            "limit=-1",
            "invalid limit -1: negative; limit takes 0 to 100000",
        ),
        (
            "offset=-5",
            "invalid offset -5: negative; offset takes 0 to 9007199254740991",
        ),
        (
            "limit=abc",
            "invalid limit 'abc': not a whole number; limit takes 0 to 100000",
        ),
        (
            "limit=100001",
            "invalid limit 100001: more than 100000; leave limit out to get the whole collection or log, streamed",
        ),
    ];
    for path in [
        "/api/v2/builds",
        "/api/v2/builders",
        "/api/v2/builders/1",
        "/api/v2/workers",
        "/api/v2/buildsets",
        "/api/v2/changes",
        "/api/v2/logs/1/contents",
        "/api/v2/steps/2/logs",
    ] {
        for (q, msg) in limits {
            let uri = format!("{path}?{q}");
            let a = fx.get(&uri).await;
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "{uri}: {}", a.body);
            assert_eq!(a.json(), json!({"error": msg}), "{uri}");
        }
    }
}

/// A worker's environment (`environ` in its info) is not shown to anonymous readers, wherever
/// worker info shows; the rest of its info is.
#[tokio::test]
async fn api_hides_worker_environment_from_anonymous_readers() {
    let (_dir, fx) = sqlite_fixture().await;
    let mut info = serde_json::Map::new();
    info.insert("admin".into(), json!("Alice"));
    info.insert(
        "environ".into(),
        json!({"PATH": "/usr/bin", "GH_AUTH": "volunteer-own-tok-777"}),
    );
    fx.store.upsert_worker("w1", &info).await.unwrap();
    for uri in [
        "/api/v2/workers",
        "/api/v2/workers/w1",
        "/api/v2/workers/1",
        "/api/v2/builders/1/workers",
    ] {
        let a = fx.get(uri).await;
        assert_eq!(a.status, StatusCode::OK, "{uri}: {}", a.body);
        assert!(
            !a.body.contains("volunteer-own-tok-777"),
            "{uri}: {}",
            a.body
        );
        assert!(!a.body.contains("/usr/bin"), "{uri}: {}", a.body);
        assert_eq!(
            a.json()["workers"][0]["workerinfo"],
            json!({"admin": "Alice"}),
            "{uri}"
        );
    }
}

/// A collection longer than the store's page (`kiln_store::MAX_LIST_LIMIT`) is answered whole
/// without `limit`, as Buildbot does: streamed, in the very bytes the in-memory answer has.
#[tokio::test]
async fn api_answers_big_collections_whole() {
    use sqlx::Connection;
    const MORE: i64 = 12_000;
    let (dir, fx) = sqlite_fixture().await;
    let mut c = sqlx::SqliteConnection::connect(&format!(
        "sqlite:{}",
        dir.path().join("kiln.db").display()
    ))
    .await
    .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {MORE}) \
         INSERT INTO builds (number, builderid, buildrequestid, workerid, masterid, started_at, complete, state_string, locks_duration_s) \
         SELECT 1000 + x, 1, 1, 1, 1, 5000 + x, 0, 'building', 0 FROM c"
    )))
    .execute(&mut c)
    .await
    .unwrap();
    let all = MORE + 3;

    let (ids, total) = fx.ids("/api/v2/builds", "builds", "buildid").await;
    assert_eq!(total, all);
    assert_eq!(ids, (1..=all).collect::<Vec<_>>());
    let (ids, total) = fx
        .ids("/api/v2/builders/1/builds?offset=5", "builds", "buildid")
        .await;
    assert_eq!((ids.len() as i64, total), (all - 5, all));
    assert_eq!(ids[0], 6);
    let (ids, _) = fx
        .ids(
            "/api/v2/builds?order=-number&complete=false&offset=1&limit=11000",
            "builds",
            "buildid",
        )
        .await;
    assert_eq!(ids.len(), 11_000);
    assert_eq!(ids[0], all - 1);
    // Ordered by the key, the pages after the first start after the last key sent.
    let (ids, total) = fx
        .ids(
            "/api/v2/builds?order=-buildid&offset=2",
            "builds",
            "buildid",
        )
        .await;
    assert_eq!(total, all);
    assert_eq!(ids, (1..=all - 2).rev().collect::<Vec<_>>());
    let (ids, _) = fx
        .ids(
            "/api/v2/builds?buildid__gt=10&limit=2500",
            "builds",
            "buildid",
        )
        .await;
    assert_eq!(ids, (11..2511).collect::<Vec<_>>());

    // Compact and indented, byte for byte what serde_json writes for the whole answer.
    let compact = fx.get("/api/v2/builds?field=buildid&field=number").await;
    let v = compact.json();
    assert_eq!(v["builds"].as_array().unwrap().len() as i64, all);
    assert_eq!(compact.body, v.to_string());
    let pretty = fx
        .send(Request::get("/api/v2/builds").body(Body::empty()).unwrap())
        .await;
    assert_eq!(
        pretty.headers[header::CONTENT_TYPE],
        "text/plain; charset=utf-8"
    );
    let v: Value = serde_json::from_str(&pretty.body).unwrap();
    assert_eq!(pretty.body, serde_json::to_string_pretty(&v).unwrap());
    assert_eq!(v["builds"][all as usize - 1]["number"], 1000 + MORE);

    // Buildsets too (the fixture made 4).
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {MORE}) \
         INSERT INTO buildsets (reason, submitted_at, complete) SELECT 'bulk', 9000 + x, 1 FROM c"
    )))
    .execute(&mut c)
    .await
    .unwrap();
    let (ids, total) = fx.ids("/api/v2/buildsets", "buildsets", "bsid").await;
    assert_eq!(total, MORE + 4);
    assert_eq!(ids, (1..=MORE + 4).collect::<Vec<_>>());
    let (ids, total) = fx
        .ids(
            "/api/v2/buildsets?complete=true&order=-submitted_at",
            "buildsets",
            "bsid",
        )
        .await;
    assert_eq!((ids.len() as i64, total), (MORE + 2, MORE + 2));
    assert_eq!(ids[0], MORE + 4);
}

/// A log's `contents`, streamed, are the bytes the whole answer serialized at once has:
/// compact and indented, with fields selected, redacted.
#[tokio::test]
async fn api_streamed_contents_are_the_whole_answer_bytes() {
    let (_dir, fx) = sqlite_fixture().await;
    let uri = format!("/api/v2/logs/{}/contents", fx.stdio);
    let compact = fx.get(&uri).await;
    let v = compact.json();
    assert_eq!(compact.body, v.to_string());
    let content = v["logchunks"][0]["content"].as_str().unwrap();
    assert!(content.ends_with("oline 2499\netoken=<secret:token>\n"));
    assert!(!compact.body.contains(SECRET));
    let pretty = fx
        .send(Request::get(&uri).body(Body::empty()).unwrap())
        .await;
    assert_eq!(
        pretty.headers[header::CONTENT_TYPE],
        "text/plain; charset=utf-8"
    );
    assert_eq!(pretty.body, serde_json::to_string_pretty(&v).unwrap());
    assert_eq!(
        fx.ok(&format!("{uri}?field=firstline&offset=3")).await,
        json!({"logchunks": [{"firstline": 3}], "meta": {}})
    );
    assert_eq!(
        fx.ok(&format!("{uri}?field=content&offset=2500&limit=5"))
            .await,
        json!({"logchunks": [{"content": "oline 2499\netoken=<secret:token>\n"}], "meta": {}})
    );
}
