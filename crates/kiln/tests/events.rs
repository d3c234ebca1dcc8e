//! The event bus, seen from outside: one build's events in the order the farm makes them,
//! on SQLite from the master's own bus, and on PostgreSQL also from a second connection to
//! the same database (LISTEN/NOTIFY). `KILN_SKIP_PG=1` skips the PostgreSQL half;
//! `KILN_PG_URL` points elsewhere.

mod common;

use std::time::Duration;

use common::*;
use kiln_master::ForceRequest;
use kiln_model::{BuildRequestId, Event, Results};
use kiln_store::{EventBus, Store, Subscription};

fn config(db_url: &str) -> String {
    format!(
        r#"
MASTER = master(db_url = "{db_url}")
WORKERS = [worker("w1", password = secret("worker"))]
BUILDERS = [builder(name = "b", workers = ["w1"], steps = [shell(name = "say", command = "echo hello")])]
SCHEDULERS = [force("force", builder_names = ["b"])]
"#
    )
}

/// The kinds of one build's events, in order, until its request completes.
async fn events_of_one_build(sub: &mut Subscription, request: BuildRequestId) -> Vec<&'static str> {
    let mut kinds = Vec::new();
    let mut build = None;
    let mut steps = Vec::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(60), sub.recv())
            .await
            .expect("the build's events within 60 s")
            .expect("no lag and no gap on a quiet farm");
        let ours = match &event {
            Event::BuildRequestNew { request: r, .. }
            | Event::BuildRequestClaimed { request: r, .. }
            | Event::BuildRequestCompleted { request: r, .. } => *r == request,
            Event::BuildStarted {
                build: b,
                request: r,
                ..
            } if *r == request => {
                build = Some(*b);
                true
            }
            Event::StepStarted { build: b, step, .. } if Some(*b) == build => {
                steps.push(*step);
                true
            }
            Event::StepFinished { build: b, .. } | Event::BuildFinished { build: b, .. } => {
                Some(*b) == build
            }
            Event::LogAppended { step, .. } => steps.contains(step),
            _ => false,
        };
        if !ours {
            continue;
        }
        let kind = kind_of(&event);
        if kinds.last() != Some(&kind) {
            kinds.push(kind);
        }
        if let Event::BuildRequestCompleted { results, .. } = event {
            assert_eq!(results, Results::Success);
            return kinds;
        }
    }
}

fn kind_of(e: &Event) -> &'static str {
    match e {
        Event::BuildRequestNew { .. } => "request new",
        Event::BuildRequestClaimed { .. } => "request claimed",
        Event::BuildStarted { .. } => "build started",
        Event::StepStarted { .. } => "step started",
        Event::LogAppended { .. } => "log appended",
        Event::StepFinished { .. } => "step finished",
        Event::BuildFinished { .. } => "build finished",
        Event::BuildRequestCompleted { .. } => "request completed",
        _ => "other",
    }
}

const IN_ORDER: [&str; 8] = [
    "request new",
    "request claimed",
    "build started",
    "step started",
    "log appended",
    "step finished",
    "build finished",
    "request completed",
];

/// Starts a master on `db_url` with a worker, subscribes to `extra_bus` (if any) and its own
/// bus, forces one build and checks both saw its events in order.
async fn one_build(tmp: &std::path::Path, db_url: &str, extra_bus: Option<&EventBus>) {
    let dir = master_dir(tmp, &config(db_url));
    let master = start_master(&dir).await;
    let mut local = master.events().subscribe();
    let mut remote = extra_bus.map(|b| b.subscribe());
    let _w = WorkerProc::start(tmp, "w1", master.worker_addr());
    // Wait for the worker to attach, so the build starts as soon as it is asked for.
    loop {
        match tokio::time::timeout(Duration::from_secs(60), local.recv()).await {
            Ok(Ok(Event::WorkerConnected { name, .. })) if name == "w1" => break,
            Ok(_) => {}
            Err(_) => panic!("worker w1 did not connect within 60 s"),
        }
    }
    let req = ForceRequest {
        builder_names: vec!["b".into()],
        ..Default::default()
    };
    let (_, requests) = master.control().force("force", req).await.unwrap();
    let kinds = events_of_one_build(&mut local, requests[0]).await;
    assert_eq!(kinds, IN_ORDER, "the master's own bus");
    if let Some(remote) = remote.as_mut() {
        let kinds = events_of_one_build(remote, requests[0]).await;
        assert_eq!(kinds, IN_ORDER, "a second connection, through NOTIFY");
    }
    master.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_builds_events_in_order_on_sqlite() {
    let tmp = tempfile::tempdir().unwrap();
    one_build(tmp.path(), "sqlite:state.sqlite", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_connection_sees_them_through_notify_on_postgresql() {
    kiln_testkit::pg::with_fresh_database("kiln_events_e2e", |url| async move {
        // The second connection: another process's view of the same database.
        let other = Store::connect(&url).await.unwrap();
        let bus = EventBus::for_store(&other).await.unwrap();
        assert!(
            bus.is_shared(),
            "a PostgreSQL bus listens for other processes"
        );
        let tmp = tempfile::tempdir().unwrap();
        one_build(tmp.path(), &url, Some(&bus)).await;
        bus.close().await;
        other.close().await;
    })
    .await;
}
