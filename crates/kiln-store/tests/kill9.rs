//! `kill -9` of a process writing to the store: after it, everything it reported committed is
//! there, and `recover_after_crash` marks its build RETRY and puts its request back in the queue.
//!
//! The writer is this test binary run again (test `kill9_child`) with `KILN_KILL9_URL` set.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use kiln_model::{LogId, LogType, Results};
use kiln_store::*;

const CHILD_ENV: &str = "KILN_KILL9_URL";

/// The writer: claims a request, starts a build, then appends log lines forever, printing
/// `committed <lines>` after each append has committed.
#[tokio::test]
async fn kill9_child() {
    let Ok(url) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = Store::connect(&url).await.unwrap();
    let m = store.register_master("crashy", 1).await.unwrap();
    let w = store
        .upsert_worker("w", &serde_json::Map::new())
        .await
        .unwrap();
    let b = store.upsert_builder("b", None, &[]).await.unwrap();
    store
        .add_buildset(
            &NewBuildset {
                builders: vec![b, b],
                ..Default::default()
            },
            1,
        )
        .await
        .unwrap();
    let claimed = store.claim_build_requests(m, b, 1, 2).await.unwrap();
    let (build, _) = store
        .add_build(
            &NewBuild {
                builderid: b,
                buildrequestid: claimed[0],
                workerid: w,
                masterid: m,
                state_string: "building".into(),
            },
            3,
        )
        .await
        .unwrap();
    let (step, _, _) = store.add_step(build, "test").await.unwrap();
    store.start_step(step, 4).await.unwrap();
    let log = store.add_log(step, "stdio", LogType::Stdio).await.unwrap();
    println!("log {}", log.0);
    let mut n = 0u64;
    loop {
        let text: String = (0..10).map(|i| format!("line {}\n", n + i)).collect();
        let out = store.append_log(log, &text).await.unwrap();
        n += 10;
        println!("committed {}", out.num_lines);
    }
}

fn run_and_kill(url: &str) -> (LogId, i64) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "kill9_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut log = None;
    let mut committed = 0;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        // libtest may print "test kill9_child ... " on the same line first
        if let Some((_, id)) = line.split_once("log ") {
            log = Some(LogId(id.parse().unwrap()));
        } else if let Some(n) = line.strip_prefix("committed ") {
            committed = n.parse().unwrap();
            if committed >= 500 {
                child.kill().unwrap(); // SIGKILL
                break;
            }
        }
    }
    child.wait().unwrap();
    (log.expect("the child reported its log"), committed)
}

async fn check_after_crash(url: &str) {
    let url2 = url.to_string();
    let (log, committed) = tokio::task::spawn_blocking(move || run_and_kill(&url2))
        .await
        .unwrap();
    let store = Store::connect(url).await.unwrap();
    let m = store.register_master("crashy", 100).await.unwrap();
    let lines = store.read_log_lines(log, 0, 100_000).await.unwrap();
    assert!(
        lines.len() as i64 >= committed,
        "{} lines stored, {committed} reported committed",
        lines.len()
    );
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l, &format!("line {i}"));
    }
    let running = store
        .list_builds(&BuildFilter {
            complete: Some(false),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(running.len(), 1);
    let rec = store.recover_after_crash(m, 100).await.unwrap();
    assert_eq!(
        rec,
        Recovery {
            builds: 1,
            steps: 1,
            requests_requeued: 1
        }
    );
    let b = store.get_build(running[0].buildid).await.unwrap().unwrap();
    assert_eq!(b.results, Some(Results::Retry));
    assert!(store.get_log(log).await.unwrap().unwrap().complete);
    let b = store
        .get_builder_by_name("b")
        .await
        .unwrap()
        .unwrap()
        .builderid;
    let again = store.claim_build_requests(m, b, 5, 101).await.unwrap();
    assert_eq!(
        again.len(),
        2,
        "the interrupted request is back, with the never-claimed one"
    );
    eprintln!(
        "{:?}: killed after {committed} committed lines; {} found",
        store.backend(),
        lines.len()
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_sqlite() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    check_after_crash(&format!("sqlite:{}", dir.path().join("kiln.db").display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_postgres() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    common::on_postgres_url(|url| async move { check_after_crash(&url).await }).await;
}
