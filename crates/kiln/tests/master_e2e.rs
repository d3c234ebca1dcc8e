//! A Kiln master and a real `kiln-worker` process on loopback: a build of every step type,
//! with results, logs, properties and transferred files checked in the real SQLite store.

mod common;

use std::collections::BTreeMap;

use common::*;
use kiln_master::ForceRequest;
use kiln_model::Results;

const CONFIG: &str = r#"
WORKERS = [worker("w1", password = secret("worker"))]

def all_steps():
    return [
        shell(name = "hello", command = ["sh", "-c", "echo hello; echo oops >&2"]),
        set_property_from_command(name = "getprop", command = "echo  from-worker  ", property = "got", strip = True),
        shell(name = "useprop", command = interpolate("echo prop=%(prop:got)s builder=%(prop:buildername)s")),
        mkdir(name = "mkdir", dir = "build/sub"),
        string_download(name = "strdl", s = "downloaded text\n", workerdest = "sub/s.txt"),
        file_download(name = "filedl", mastersrc = "to-worker.bin", workerdest = "f.bin"),
        shell(name = "check", command = ["sh", "-c", "cat sub/s.txt && cmp f.bin sub/../f.bin && wc -c < f.bin"]),
        file_upload(name = "upload", workersrc = "f.bin", masterdest = "uploads/back.bin"),
        directory_upload(name = "dirupload", workersrc = "sub", masterdest = "uploads/tree"),
        compile(name = "warn", command = ["sh", "-c", "echo 'a.c:1: warning: x'; echo ok"], warning_pattern = "warning:"),
        test(name = "rc5", command = ["sh", "-c", "exit 5"], decode_rc = {0: SUCCESS, 5: WARNINGS}),
        rmfile(name = "rmfile", file = "build/f.bin"),
        rmdir(name = "rmdir", dir = "build/sub"),
        shell(name = "skipped", command = "false", do_step_if = prop_equals("got", "nope")),
        shell(name = "fails", command = "exit 3", flunk_on_failure = False, warn_on_failure = True),
        shell(name = "always", command = "echo after", always_run = True),
    ]

BUILDERS = [
    builder(name = "all", workers = ["w1"], steps = all_steps()),
    builder(name = "halts", workers = ["w1"], steps = [
        shell(name = "bad", command = "exit 1", halt_on_failure = True),
        shell(name = "never", command = "echo never"),
        shell(name = "cleanup", command = "echo cleanup", always_run = True),
    ]),
    builder(name = "parent", workers = ["w1"], steps = [
        trigger(name = "trig", scheduler_names = ["child"], wait_for_finish = True),
    ]),
    builder(name = "child", workers = ["w1"], steps = [shell(command = "echo child")]),
]

SCHEDULERS = [
    force("force", builder_names = ["all", "halts", "parent"]),
    triggerable("child", builder_names = ["child"]),
]
"#;

fn force(builder: &str) -> ForceRequest {
    ForceRequest {
        builder_names: vec![builder.into()],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_step_type_runs_on_kiln_worker() {
    every_step_type(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_step_type_runs_on_the_stock_buildbot_worker() {
    let Some(bin) = stock_worker_bin() else {
        println!("SKIP: no buildbot-worker (set KILN_INTEROP_VENV to the Buildbot venv)");
        return;
    };
    every_step_type(Some(bin)).await;
}

async fn every_step_type(stock: Option<std::path::PathBuf>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = master_dir(tmp.path(), CONFIG);
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.join("to-worker.bin"), &payload).unwrap();
    let master = start_master(&dir).await;
    let _w = match &stock {
        None => WorkerProc::start(tmp.path(), "w1", master.worker_addr()),
        Some(bin) => WorkerProc::start_stock(bin, tmp.path(), "w1", master.worker_addr()),
    };
    let control = master.control();
    for b in ["all", "halts", "parent"] {
        control.force("force", force(b)).await.expect("force");
    }
    let store = master.store().clone();

    let all = wait_builds(&store, "all", 60, "the build", |b| finished_with(b, 1)).await;
    let b = &all[0];
    let steps = store.list_steps(b.buildid).await.unwrap();
    let got: BTreeMap<String, Option<Results>> =
        steps.iter().map(|s| (s.name.clone(), s.results)).collect();
    let want: BTreeMap<String, Option<Results>> = [
        ("hello", Results::Success),
        ("getprop", Results::Success),
        ("useprop", Results::Success),
        ("mkdir", Results::Success),
        ("strdl", Results::Success),
        ("filedl", Results::Success),
        ("check", Results::Success),
        ("upload", Results::Success),
        ("dirupload", Results::Success),
        ("warn", Results::Warnings),
        ("rc5", Results::Warnings),
        ("rmfile", Results::Success),
        ("rmdir", Results::Success),
        ("skipped", Results::Skipped),
        ("fails", Results::Failure),
        ("always", Results::Success),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), Some(v)))
    .collect();
    if got != want {
        let mut why = String::new();
        for s in steps.iter().filter(|s| s.results != Some(Results::Success)) {
            for l in store.list_logs(s.stepid).await.unwrap() {
                let text = store
                    .read_log_lines(l.logid, 0, l.num_lines.max(1) - 1)
                    .await
                    .unwrap();
                why.push_str(&format!(
                    "--- {} / {}\n{}\n",
                    s.name,
                    l.name,
                    text.join("\n")
                ));
            }
        }
        panic!("per-step results differ:\n got {got:?}\nwant {want:?}\n{why}");
    }
    assert_eq!(
        b.results,
        Some(Results::Warnings),
        "warnings from warn/rc5/fails(warn_on_failure)"
    );

    let hello = log_text(&store, b, "hello", "stdio").await;
    assert!(
        hello.contains("ohello\n"),
        "stdout with its channel: {hello}"
    );
    assert!(
        hello.contains("eoops\n"),
        "stderr with its channel: {hello}"
    );
    let useprop = log_text(&store, b, "useprop", "stdio").await;
    assert!(
        useprop.contains("oprop=from-worker builder=all\n"),
        "{useprop}"
    );
    let check = log_text(&store, b, "check", "stdio").await;
    assert!(check.contains("odownloaded text\n"), "{check}");
    assert!(check.contains("o200000\n"), "{check}");
    assert_eq!(
        std::fs::read(dir.join("uploads/back.bin")).unwrap(),
        payload,
        "uploaded bytes"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("uploads/tree/s.txt")).unwrap(),
        "downloaded text\n"
    );
    let props = store.get_build_properties(b.buildid).await.unwrap();
    assert_eq!(props.get("got"), Some(&serde_json::json!("from-worker")));
    assert_eq!(props.get("workername"), Some(&serde_json::json!("w1")));

    let halts = wait_builds(&store, "halts", 60, "the build", |b| finished_with(b, 1)).await;
    let steps = store.list_steps(halts[0].buildid).await.unwrap();
    let names: Vec<_> = steps.iter().map(|s| (s.name.as_str(), s.results)).collect();
    assert_eq!(
        names,
        [
            ("bad", Some(Results::Failure)),
            ("cleanup", Some(Results::Success))
        ],
        "halt_on_failure skips the rest but always_run steps run"
    );
    assert_eq!(halts[0].results, Some(Results::Failure));

    let parent = wait_builds(&store, "parent", 60, "the build", |b| finished_with(b, 1)).await;
    let child = builds_of(&store, "child").await;
    assert_eq!(child.len(), 1, "the trigger step started one child build");
    assert!(child[0].complete, "the parent waited for the child");
    assert_eq!(parent[0].results, Some(Results::Success));
    master.shutdown().await;
}

const STOP_CONFIG: &str = r#"
WORKERS = [worker("w1", password = secret("worker"), max_builds = 1)]
BUILDERS = [
    builder(name = "long", workers = ["w1"], collapse_requests = False, steps = [
        shell(name = "sleep", command = "sleep 60"),
        shell(name = "after", command = "echo after-stop", always_run = True),
    ]),
]
SCHEDULERS = [force("force", builder_names = ["long"])]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_a_build_and_cancel_a_queued_request() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = master_dir(tmp.path(), STOP_CONFIG);
    let master = start_master(&dir).await;
    let _w = WorkerProc::start(tmp.path(), "w1", master.worker_addr());
    let control = master.control();
    let store = master.store().clone();
    control.force("force", force("long")).await.unwrap();
    let (_, queued) = control.force("force", force("long")).await.unwrap();
    let b = wait_builds(&store, "long", 60, "the first build", |b| !b.is_empty()).await;
    // The running step must exist before the stop, so the stop interrupts a real command.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while store.list_steps(b[0].buildid).await.unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        control.cancel_request(queued[0]).await,
        "a queued request can be cancelled"
    );
    assert!(!control.cancel_request(queued[0]).await, "only once");
    assert!(
        control
            .stop_build(b[0].buildid, "no longer needed".into())
            .await
    );
    let b = wait_builds(&store, "long", 30, "the stop", |b| finished_with(b, 1)).await;
    assert_eq!(b[0].results, Some(Results::Cancelled));
    assert!(
        b[0].state_string.contains("no longer needed"),
        "{}",
        b[0].state_string
    );
    let steps = store.list_steps(b[0].buildid).await.unwrap();
    let got: Vec<_> = steps.iter().map(|s| (s.name.as_str(), s.results)).collect();
    assert_eq!(
        got,
        [
            ("sleep", Some(Results::Cancelled)),
            ("after", Some(Results::Success))
        ]
    );
    let req = store.get_build_request(queued[0]).await.unwrap().unwrap();
    assert_eq!(req.results, Some(Results::Cancelled));
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(
        builds_of(&store, "long").await.len(),
        1,
        "the cancelled request never ran"
    );
    master.shutdown().await;
}

/// Two builders on two workers share an exclusive master lock around one step: the steps
/// never overlap (each fails if it finds the other's marker), while the unlocked steps do run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_locks_serialize_steps_across_workers() {
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let guarded = format!(
        "if [ -e {d}/held ]; then echo OVERLAP; exit 1; fi; touch {d}/held; sleep 1; rm {d}/held",
        d = shared.display()
    );
    let config = format!(
        r#"
WORKERS = [worker("w1", password = secret("worker")), worker("w2", password = secret("worker"))]
ONE = master_lock("one-at-a-time", max_count = 1)
def steps():
    return [shell(name = "guarded", command = ["sh", "-c", {guarded:?}], locks = [exclusive(ONE)])]
BUILDERS = [
    builder(name = "a", workers = ["w1"], steps = steps()),
    builder(name = "b", workers = ["w2"], steps = steps()),
]
SCHEDULERS = [force("force", builder_names = ["a", "b"])]
"#
    );
    let dir = master_dir(tmp.path(), &config);
    let master = start_master(&dir).await;
    let _w1 = WorkerProc::start(tmp.path(), "w1", master.worker_addr());
    let _w2 = WorkerProc::start(tmp.path(), "w2", master.worker_addr());
    let store = master.store().clone();
    // Both workers attached before the force, so both builds start together.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while master.control().connected_workers().len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "workers did not attach"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let req = ForceRequest {
        builder_names: vec!["a".into(), "b".into()],
        ..Default::default()
    };
    master.control().force("force", req).await.unwrap();
    let a = wait_builds(&store, "a", 60, "build a", |b| finished_with(b, 1)).await;
    let b = wait_builds(&store, "b", 60, "build b", |b| finished_with(b, 1)).await;
    assert_eq!(
        (a[0].results, b[0].results),
        (Some(Results::Success), Some(Results::Success)),
        "a: {}\nb: {}",
        log_text(&store, &a[0], "guarded", "stdio").await,
        log_text(&store, &b[0], "guarded", "stdio").await
    );
    master.shutdown().await;
}
