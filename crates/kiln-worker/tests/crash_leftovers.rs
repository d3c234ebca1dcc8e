//! A worker killed with `kill -9` mid-build leaves the build's processes running
//! (reparented to init); the next start kills them before it connects, and logs
//! what it killed. The real `kiln-worker` binary runs as a daemon in a base
//! directory; the test plays the master over a loopback WebSocket and starts a
//! build whose shell leaves a `setsid` daemon, a background child and a child
//! that cleared its environment.
#![cfg(target_os = "linux")]

mod cli_support;
mod shell_util;

use std::time::{Duration, Instant};

use cli_support::*;
use futures_util::{SinkExt, StreamExt};
use kiln_proto::args::Args;
use kiln_proto::{Limits, Message, Op, Response, Value};
use kiln_worker::commands::process::RUN_RECORD_FILE;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use shell_util::{marker, processes_with};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

type MasterSide = WebSocketStream<TcpStream>;

const T: Duration = Duration::from_secs(15);

/// SIGKILLs whatever still carries the test's marker, however the test ends.
struct KillOnDrop(String);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for p in processes_with(&self.0) {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
    }
}

/// A worker directory whose master is the test's listener; builds run as root
/// (tests run as root or as their own user), or as `run_as`.
async fn worker_for_test_master(
    tmp: &tempfile::TempDir,
    run_as: Option<&str>,
) -> (Worker, TcpListener) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let master = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    let dir = tmp.path().join("worker");
    let d = dir.to_str().unwrap();
    let user = match run_as {
        Some(user) => vec!["--run-as", user],
        None => vec!["--allow-root"],
    };
    let mut args = vec!["create-worker"];
    args.extend(user);
    args.extend([d, master.as_str(), "testworker", "pw"]);
    ok(run(&args));
    (Worker::new(&dir), listener)
}

/// `start --wait 0`; returns the daemon's pid.
fn start(w: &Worker) -> u32 {
    ok(run(&["start", "--wait", "0", w.dir.to_str().unwrap()]));
    w.running_pid().expect("the started worker holds the lock")
}

async fn accept(listener: &TcpListener) -> MasterSide {
    let (tcp, _) = timeout(T, listener.accept())
        .await
        .expect("the worker connects")
        .unwrap();
    tokio_tungstenite::accept_async(tcp).await.unwrap()
}

/// Starts a `shell` command running `script` in `builder/build`.
async fn start_shell(ws: &mut MasterSide, w: &Worker, script: &str) {
    let workdir = w.dir.join("builder/build");
    let args = Args::from_pairs([
        ("workdir", Value::from(workdir.to_str().unwrap())),
        ("command", Value::from(script)),
    ]);
    let op = Op::StartCommand {
        builder_name: Some("builder".into()),
        command_id: "1".into(),
        command_name: "shell".into(),
        args,
    };
    let frame = kiln_proto::encode(&Message::Request { seq_number: 0, op });
    ws.send(WsMessage::Binary(frame.into())).await.unwrap();
    loop {
        let frame = timeout(T, ws.next()).await.unwrap().unwrap().unwrap();
        if let WsMessage::Binary(b) = frame {
            let msg = kiln_proto::decode(&b, &Limits::default()).unwrap();
            assert_eq!(
                msg,
                Message::Response(Response::ok(0)),
                "the command starts"
            );
            return;
        }
    }
}

/// Waits until at least `n` live processes carry `marker`; returns them.
async fn wait_for_processes(marker: &str, n: usize) -> Vec<i32> {
    let deadline = Instant::now() + T;
    loop {
        let found = processes_with(marker);
        if found.len() >= n {
            return found;
        }
        assert!(Instant::now() < deadline, "only {found:?} started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the worker's run record lists a process group (the worker notes a
/// command's group just after starting it); returns the record.
async fn wait_for_recorded_group(w: &Worker) -> String {
    let path = w.dir.join(RUN_RECORD_FILE);
    let deadline = Instant::now() + T;
    loop {
        let record = std::fs::read_to_string(&path).unwrap_or_default();
        if record.contains("\ngroup ") {
            return record;
        }
        assert!(
            Instant::now() < deadline,
            "a running worker records its commands' groups in {}: {record:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads the worker's messages until the command completes.
async fn wait_for_complete(ws: &mut MasterSide) {
    loop {
        let frame = timeout(T, ws.next()).await.unwrap().unwrap().unwrap();
        let WsMessage::Binary(b) = frame else {
            continue;
        };
        if let Message::Request {
            op: Op::Complete { .. },
            ..
        } = kiln_proto::decode(&b, &Limits::default()).unwrap()
        {
            return;
        }
    }
}

/// The build: the shell (its command line holds the marker), a `setsid` daemon, a
/// plain background child and a child that cleared its environment (so it keeps no
/// cookie, only the process group).
fn crashing_build(m: &str) -> String {
    format!(
        "setsid sleep {m} </dev/null >/dev/null 2>&1 & sleep {m} & env -i /bin/sleep {m} & \
         echo started; wait"
    )
}

/// Starts a worker, runs [`crashing_build`] on it and `kill -9`s the worker
/// mid-build; returns the build's processes, still running.
async fn crash_mid_build(w: &Worker, listener: &TcpListener, m: &str) -> Vec<i32> {
    let pid = start(w);
    let mut ws = accept(listener).await;
    start_shell(&mut ws, w, &crashing_build(m)).await;
    let build = wait_for_processes(m, 4).await;
    wait_for_recorded_group(w).await;
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    assert!(w.wait_gone(T), "the killed worker lets go of its lock");
    drop(ws);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut alive = processes_with(m);
    alive.sort_unstable();
    let mut expected = build.clone();
    expected.sort_unstable();
    assert_eq!(alive, expected, "kill -9 leaves the build running");
    build
}

#[tokio::test]
async fn a_start_after_kill_9_kills_what_the_killed_build_left_before_connecting() {
    let tmp = tempfile::tempdir().unwrap();
    let (w, listener) = worker_for_test_master(&tmp, None).await;
    let m = marker(1);
    let _cleanup = KillOnDrop(m.clone());
    let build = crash_mid_build(&w, &listener, &m).await;

    start(&w);
    let _ws = accept(&listener).await;
    // The worker connected: the previous run's processes must be dead by now.
    assert_eq!(
        processes_with(&m),
        Vec::<i32>::new(),
        "nothing of the killed build survives the restart\n{}",
        w.log()
    );
    let log = w.log();
    for pid in &build {
        assert!(
            log.contains(&format!(
                "killing pid {pid} left running by the previous run"
            )),
            "the log names pid {pid}:\n{log}"
        );
    }
    assert!(
        log.contains(&format!("sleep {m}")),
        "and its command line:\n{log}"
    );
    assert!(
        log.contains("recognised: its environment carries the run's KILN_COMMAND_COOKIE"),
        "{log}"
    );
    assert!(
        log.contains("recognised: it is in process group"),
        "the child without a cookie is found by its group:\n{log}"
    );
    ok(run(&["stop", w.dir.to_str().unwrap()]));
}

#[tokio::test]
async fn a_record_from_another_boot_kills_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (w, listener) = worker_for_test_master(&tmp, None).await;
    let m = marker(2);
    let _cleanup = KillOnDrop(m.clone());
    let mut build = crash_mid_build(&w, &listener, &m).await;

    // The same record, as if written before a reboot: its pids and groups are
    // anyone's now.
    let path = w.dir.join(RUN_RECORD_FILE);
    let record = std::fs::read_to_string(&path).expect("the killed run left its record");
    let other_boot: String = record
        .lines()
        .map(|l| match l.starts_with("boot ") {
            true => "boot 00000000-0000-4000-8000-000000000000\n".to_owned(),
            false => format!("{l}\n"),
        })
        .collect();
    assert_ne!(other_boot, record);
    std::fs::write(&path, other_boot).unwrap();

    start(&w);
    let _ws = accept(&listener).await;
    let mut alive = processes_with(&m);
    alive.sort_unstable();
    build.sort_unstable();
    assert_eq!(alive, build, "nothing is killed\n{}", w.log());
    assert!(w.log().contains("during another boot"), "{}", w.log());
    assert!(!w.log().contains("killing pid"), "{}", w.log());
    ok(run(&["stop", w.dir.to_str().unwrap()]));
}

#[tokio::test]
async fn a_clean_stop_leaves_no_record_and_nothing_to_kill() {
    let tmp = tempfile::tempdir().unwrap();
    let (w, listener) = worker_for_test_master(&tmp, None).await;
    let m = marker(3);
    let _cleanup = KillOnDrop(m.clone());
    start(&w);
    let mut ws = accept(&listener).await;
    // A finished build that detached a daemon.
    start_shell(
        &mut ws,
        &w,
        &format!("(setsid sleep {m} </dev/null >/dev/null 2>&1 &); echo done"),
    )
    .await;
    wait_for_complete(&mut ws).await;
    assert_eq!(processes_with(&m).len(), 1, "the daemon outlives its build");
    wait_for_recorded_group(&w).await;
    let path = w.dir.join(RUN_RECORD_FILE);

    ok(run(&["stop", w.dir.to_str().unwrap()]));
    assert!(!path.exists(), "a clean stop removes the record");
    assert_eq!(
        processes_with(&m),
        Vec::<i32>::new(),
        "a clean stop leaves nothing running\n{}",
        w.log()
    );
    drop(ws);

    start(&w);
    let _ws = accept(&listener).await;
    assert!(!w.log().contains("did not exit cleanly"), "{}", w.log());
    ok(run(&["stop", w.dir.to_str().unwrap()]));
}

/// Builds run as another user (the worker is root) are killed with the same privilege.
#[tokio::test]
async fn run_as_builds_are_killed_after_kill_9_too() {
    if !is_root() {
        eprintln!("skipped: run_as needs the worker to run as root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (w, listener) = worker_for_test_master(&tmp, Some("nobody")).await;
    let m = marker(4);
    let _cleanup = KillOnDrop(m.clone());
    let build = crash_mid_build(&w, &listener, &m).await;
    for pid in &build {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        assert!(
            uid.split_whitespace().nth(1) == Some("65534"),
            "pid {pid} runs as nobody: {uid}"
        );
    }

    start(&w);
    let _ws = accept(&listener).await;
    assert_eq!(
        processes_with(&m),
        Vec::<i32>::new(),
        "nothing of the killed build survives the restart\n{}",
        w.log()
    );
    ok(run(&["stop", w.dir.to_str().unwrap()]));
}

/// A damaged record is reported and ignored: the worker still starts and connects,
/// and writes a record of its own.
#[tokio::test]
async fn a_damaged_record_is_reported_and_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let (w, listener) = worker_for_test_master(&tmp, None).await;
    let path = w.dir.join(RUN_RECORD_FILE);
    std::fs::write(&path, "\u{0}\u{1}garbage\nmore\n").unwrap();
    start(&w);
    let _ws = accept(&listener).await;
    assert!(
        w.log().contains("is not a readable run record"),
        "{}",
        w.log()
    );
    let record = std::fs::read_to_string(&path).unwrap();
    assert!(
        record.starts_with("kiln-worker run record"),
        "replaced by this run's: {record:?}"
    );
    ok(run(&["stop", w.dir.to_str().unwrap()]));
}
