//! Faults with real processes: a worker killed mid-build, a master killed mid-build, and a
//! reconfig while a 30 s build runs. Nothing committed may be lost, nothing may stay
//! "running".

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use kiln_master::ForceRequest;
use kiln_model::Results;
use kiln_store::{BuildRequestFilter, Store};

fn force(builder: &str) -> ForceRequest {
    ForceRequest {
        builder_names: vec![builder.into()],
        ..Default::default()
    }
}

/// A step that sleeps the first time (leaving a marker) and succeeds at once after that,
/// so a retried build can finish.
fn sleepy_config(marker: &std::path::Path, extra_builders: &str) -> String {
    format!(
        r#"
WORKERS = [worker("w1", password = secret("worker"))]
BUILDERS = [
    builder(name = "sleepy", workers = ["w1"], steps = [
        shell(name = "maybe-sleep", command = ["sh", "-c", "if [ -e {m} ]; then echo second run; exit 0; fi; touch {m}; echo first run; sleep 30"]),
    ]),
{extra_builders}
]
SCHEDULERS = [force("force", builder_names = [b["name"] for b in BUILDERS])]
"#,
        m = marker.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_mid_build_retries_and_later_succeeds() {
    let tmp = tempfile::tempdir().unwrap();
    let marker = tmp.path().join("marker");
    let dir = master_dir(tmp.path(), &sleepy_config(&marker, ""));
    let master = start_master(&dir).await;
    let store = master.store().clone();
    let wdir = WorkerProc::create(tmp.path(), "w1", master.worker_addr());
    let mut w = WorkerProc::run(&wdir);
    master
        .control()
        .force("force", force("sleepy"))
        .await
        .unwrap();
    wait_builds(&store, "sleepy", 60, "the first build to start", |b| {
        !b.is_empty()
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "the step never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    w.kill9();
    let b = wait_builds(&store, "sleepy", 30, "the RETRY", |b| finished_with(b, 1)).await;
    assert_eq!(
        b[0].results,
        Some(Results::Retry),
        "a lost worker makes the build RETRY"
    );
    let req = store
        .get_build_request(b[0].buildrequestid)
        .await
        .unwrap()
        .unwrap();
    assert!(!req.complete, "the request went back to the queue");

    let _w2 = WorkerProc::run(&wdir);
    let b = wait_builds(&store, "sleepy", 60, "the retried build", |b| {
        finished_with(b, 2)
    })
    .await;
    assert_eq!(results(&b), [Some(Results::Retry), Some(Results::Success)]);
    assert_eq!(
        b[1].buildrequestid, b[0].buildrequestid,
        "the same request ran again"
    );
    let req = store
        .get_build_request(b[1].buildrequestid)
        .await
        .unwrap()
        .unwrap();
    assert!(req.complete);
    assert_eq!(req.results, Some(Results::Success));
    master.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconfig_during_a_30s_build_keeps_it_and_applies_the_difference() {
    let tmp = tempfile::tempdir().unwrap();
    let config = |extra: &str| {
        format!(
            r#"
WORKERS = [worker("w1", password = secret("worker"))]
BUILDERS = [
    builder(name = "long", workers = ["w1"], steps = [shell(name = "sleep", command = "sleep 30; echo done")]),
{extra}
]
SCHEDULERS = [force("force", builder_names = [b["name"] for b in BUILDERS])]
"#
        )
    };
    let dir = master_dir(
        tmp.path(),
        &config(
            r#"    builder(name = "doomed", workers = ["w1"], steps = [shell(command = "true")]),"#,
        ),
    );
    let master = start_master(&dir).await;
    let store = master.store().clone();
    let _w = WorkerProc::start(tmp.path(), "w1", master.worker_addr());
    master
        .control()
        .force("force", force("long"))
        .await
        .unwrap();
    wait_builds(&store, "long", 60, "the long build to start", |b| {
        !b.is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // A broken file is refused with file:line:col and changes nothing.
    std::fs::write(dir.join("master.star"), "BUILDERS = [\n  builder(name = \"x\", workers = [\"nobody\"], steps = [])\n]\nWORKERS = []\n").unwrap();
    let err = master
        .reconfig()
        .await
        .expect_err("a broken config is refused")
        .to_string();
    assert!(
        err.contains("master.star:"),
        "error names the file and line: {err}"
    );
    let err2 = {
        std::fs::write(dir.join("master.star"), "BUILDERS = [\n").unwrap();
        master
            .reconfig()
            .await
            .expect_err("syntax error")
            .to_string()
    };
    assert!(err2.contains("master.star:"), "{err2}");

    // The real change: "doomed" goes, "fresh" arrives.
    std::fs::write(
        dir.join("master.star"),
        config(r#"    builder(name = "fresh", workers = ["w1"], steps = [shell(command = "echo fresh")]),"#),
    )
    .unwrap();
    let rep = master.reconfig().await.expect("reconfig applies");
    assert!(
        rep.summary.contains("+fresh") && rep.summary.contains("-doomed"),
        "{}",
        rep.summary
    );

    master
        .control()
        .force("force", force("fresh"))
        .await
        .expect("the new builder is forceable");
    let fresh = wait_builds(&store, "fresh", 60, "the new builder's build", |b| {
        finished_with(b, 1)
    })
    .await;
    assert_eq!(fresh[0].results, Some(Results::Success));
    assert!(
        master
            .control()
            .force("force", force("doomed"))
            .await
            .is_err(),
        "the removed builder is no longer forceable"
    );
    // A request for the removed builder that reaches the queue anyway is never started.
    let doomed = builder_id(&store, "doomed").await;
    let (_, brs) = store
        .add_buildset(
            &kiln_store::NewBuildset {
                builders: vec![doomed],
                reason: "stray".into(),
                ..Default::default()
            },
            0,
        )
        .await
        .unwrap();

    let long = wait_builds(&store, "long", 60, "the long build to finish", |b| {
        finished_with(b, 1)
    })
    .await;
    assert_eq!(long.len(), 1);
    assert_eq!(
        long[0].results,
        Some(Results::Success),
        "the running build finished on its definition"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stray = store.get_build_request(brs[0].1).await.unwrap().unwrap();
    assert!(
        stray.claimed_by_masterid.is_none() && !stray.complete,
        "a removed builder takes no requests: {stray:?}"
    );
    assert!(builds_of(&store, "doomed").await.is_empty());
    master.shutdown().await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_killed_mid_build_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let marker = tmp.path().join("marker");
    let (web, wport) = (free_port(), free_port());
    let body = format!(
        "MASTER = master(web_port = {web}, worker_port = {wport}, bind = \"127.0.0.1\", db_url = \"sqlite:state.sqlite\")\n{}",
        sleepy_config(&marker, "")
    );
    let dir = master_dir(tmp.path(), &body);
    let kiln = env!("CARGO_BIN_EXE_kiln");
    let spawn = || {
        Command::new(kiln)
            .arg("run")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("run-{}.log", free_port()))).unwrap())
            .spawn()
            .unwrap()
    };
    let mut m1 = spawn();
    wait_port(web, 30);
    let _w = WorkerProc::start(
        tmp.path(),
        "w1",
        format!("127.0.0.1:{wport}").parse().unwrap(),
    );
    let store = Store::connect(&format!("sqlite:{}", dir.join("state.sqlite").display()))
        .await
        .unwrap();
    // A request straight into the database: the master finds it on its next round.
    let b = builder_id(&store, "sleepy").await;
    let (_, brs) = store
        .add_buildset(
            &kiln_store::NewBuildset {
                builders: vec![b],
                reason: "test".into(),
                ..Default::default()
            },
            0,
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "the build never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = m1.kill(); // SIGKILL
    let _ = m1.wait();
    let running = builds_of(&store, "sleepy").await;
    assert_eq!(running.len(), 1);
    assert!(
        !running[0].complete,
        "the killed master left its build unfinished"
    );

    let mut m2 = spawn();
    let b = wait_builds(&store, "sleepy", 90, "recovery and the rerun", |b| {
        finished_with(b, 2)
    })
    .await;
    assert_eq!(results(&b), [Some(Results::Retry), Some(Results::Success)]);
    let req = store.get_build_request(brs[0].1).await.unwrap().unwrap();
    assert!(req.complete, "the request was not lost");
    let open = store
        .list_build_requests(&BuildRequestFilter {
            complete: Some(false),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(open.is_empty(), "no request left behind: {open:?}");
    assert!(
        builds_of(&store, "sleepy").await.iter().all(|b| b.complete),
        "no build stuck running"
    );
    let _ = m2.kill();
    let _ = m2.wait();
}
