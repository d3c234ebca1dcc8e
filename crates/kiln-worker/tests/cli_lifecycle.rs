//! start / stop / restart / run / status with real daemons, a real flock'ed pidfile,
//! `kill -9`, and a stale pidfile naming a live unrelated process.
#![cfg(unix)]

mod cli_support;

use std::fs::File;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cli_support::*;
use kiln_daemon::pidfile::Status;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn d(w: &Worker) -> &str {
    w.dir.to_str().unwrap()
}

fn new_worker(tmp: &tempfile::TempDir, extra: &[&str]) -> Worker {
    let dir = tmp.path().join("worker");
    create(&dir, extra);
    Worker::new(&dir)
}

/// `start --wait 0` and the pid of the daemon it started.
fn start(w: &Worker) -> u32 {
    let out = ok(run(&["start", "--wait", "0", d(w)]));
    assert!(out.contains("started in the background"), "{out}");
    let pid = w
        .running_pid()
        .expect("a running worker holds the lock after start");
    assert!(
        out.contains(&format!("pid {pid}")),
        "start names the daemon's pid: {out}"
    );
    pid
}

/// The pidfile is locked: taking the lock ourselves must fail.
fn assert_locked(w: &Worker) {
    let f = File::open(w.pidfile()).unwrap();
    assert!(
        matches!(f.try_lock_shared(), Err(std::fs::TryLockError::WouldBlock)),
        "pidfile must be locked"
    );
}

#[test]
fn start_status_second_start_refused_stop() {
    let tmp = tempfile::tempdir().unwrap();
    let w = new_worker(&tmp, &[]);
    let pid = start(&w);
    assert_locked(&w);
    assert_eq!(
        std::fs::read_to_string(w.pidfile()).unwrap().trim(),
        pid.to_string()
    );
    assert!(w.dir.join("kiln-worker.hostname").exists());
    assert!(
        w.log().contains(&format!("pid={pid}")),
        "the daemon logs to kiln-worker.log: {}",
        w.log()
    );
    assert_ne!(pid, std::process::id());

    let o = run(&["status", d(&w)]);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        stdout(&o).contains(&format!("running (pid {pid})")),
        "{}",
        all(&o)
    );

    // A second start (and a foreground run) is refused while the lock is held.
    for args in [vec!["start", "--wait", "0", d(&w)], vec!["run", d(&w)]] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", all(&o));
        assert!(stderr(&o).contains("already running"), "{}", stderr(&o));
        assert!(stderr(&o).contains(&format!("pid {pid}")), "{}", stderr(&o));
    }
    assert_eq!(
        w.running_pid(),
        Some(pid),
        "the refused start did not disturb the worker"
    );

    let o = run(&["stop", d(&w)]);
    assert_eq!(o.status.code(), Some(0), "{}", all(&o));
    assert!(
        stdout(&o).contains(&format!("worker process {pid} is dead")),
        "{}",
        all(&o)
    );
    assert_eq!(
        w.status(),
        Status::NoFile,
        "a clean stop removes the pidfile"
    );
    assert!(w.log().contains("SIGTERM"), "{}", w.log());
    assert!(w.log().contains("kiln-worker stopped"), "{}", w.log());

    let o = run(&["status", d(&w)]);
    assert_eq!(o.status.code(), Some(3), "{}", all(&o));
}

#[test]
fn stop_without_a_worker_says_not_running() {
    let tmp = tempfile::tempdir().unwrap();
    let w = new_worker(&tmp, &[]);
    let o = run(&["stop", d(&w)]);
    assert_eq!(o.status.code(), Some(0), "{}", all(&o));
    assert!(stdout(&o).contains("worker not running"), "{}", all(&o));

    // Not a worker directory at all: a clear error.
    let o = run(&["stop", tmp.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", all(&o));
    assert!(
        stderr(&o).contains("not a kiln-worker directory"),
        "{}",
        all(&o)
    );
}

#[test]
fn restart_replaces_a_running_worker_and_logs_rotate() {
    let tmp = tempfile::tempdir().unwrap();
    let w = new_worker(&tmp, &["--log-size", "1024", "--log-count", "2"]);
    let mut pid = start(&w);
    for _ in 0..4 {
        let o = run(&["restart", "--wait", "0", d(&w)]);
        assert_eq!(o.status.code(), Some(0), "{}", all(&o));
        assert!(
            stdout(&o).contains(&format!("worker process {pid} is dead")),
            "{}",
            all(&o)
        );
        let new = w.running_pid().unwrap();
        assert_ne!(new, pid);
        pid = new;
    }
    assert_locked(&w);
    ok(run(&["stop", d(&w)]));
    // 5 runs of ~4 lines of ~150 bytes: more than 1024 bytes, so it rotated, keeping 2 old files.
    let log = w.dir.join("kiln-worker.log");
    assert!(std::fs::metadata(&log).unwrap().len() <= 1024);
    assert!(w.dir.join("kiln-worker.log.1").exists());
    assert!(w.dir.join("kiln-worker.log.2").exists());
    assert!(!w.dir.join("kiln-worker.log.3").exists());
}

#[test]
fn restart_after_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let w = new_worker(&tmp, &[]);
    let pid = start(&w);
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    assert!(w.wait_gone(Duration::from_secs(5)));
    assert_eq!(
        w.status(),
        Status::Stale(Some(pid)),
        "kill -9 leaves an unlocked pidfile behind"
    );

    // What CPython's crontab line runs after a crash or reboot.
    let o = run(&["restart", "--wait", "0", d(&w)]);
    assert_eq!(o.status.code(), Some(0), "{}", all(&o));
    let new = w.running_pid().unwrap();
    assert_ne!(new, pid);
    assert_locked(&w);

    // And plain `start` works after kill -9 too.
    kill(Pid::from_raw(new as i32), Signal::SIGKILL).unwrap();
    assert!(w.wait_gone(Duration::from_secs(5)));
    let again = start(&w);
    assert_ne!(again, new);
    ok(run(&["stop", d(&w)]));
}

struct Sleeper(Child);
impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn stale_pidfile_naming_a_live_unrelated_process_is_never_signalled() {
    let tmp = tempfile::tempdir().unwrap();
    let w = new_worker(&tmp, &[]);
    let mut sleeper = Sleeper(
        Command::new("sleep")
            .arg("60")
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let sleep_pid = sleeper.0.id();
    std::fs::write(w.pidfile(), format!("{sleep_pid}\n")).unwrap();

    // stop: the file names a live process, but nobody holds the lock.
    let o = run(&["stop", d(&w)]);
    assert_eq!(o.status.code(), Some(0), "{}", all(&o));
    assert!(stdout(&o).contains("worker not running"), "{}", all(&o));
    assert!(
        stdout(&o).contains(&format!("pid {sleep_pid} was not signalled")),
        "{}",
        all(&o)
    );
    assert!(
        sleeper.0.try_wait().unwrap().is_none(),
        "stop must not signal an unrelated process"
    );

    // start and restart take the pidfile over.
    let pid = start(&w);
    assert_ne!(pid, sleep_pid);
    let o = run(&["restart", "--wait", "0", d(&w)]);
    assert_eq!(o.status.code(), Some(0), "{}", all(&o));
    ok(run(&["stop", d(&w)]));

    // Same again through restart directly on the stale file.
    std::fs::write(w.pidfile(), format!("{sleep_pid}\n")).unwrap();
    let o = run(&["restart", "--wait", "0", d(&w)]);
    assert_eq!(o.status.code(), Some(0), "{}", all(&o));
    assert!(w.running_pid().is_some());
    ok(run(&["stop", d(&w)]));

    std::thread::sleep(Duration::from_millis(200));
    assert!(
        sleeper.0.try_wait().unwrap().is_none(),
        "the unrelated process was never signalled"
    );
}

#[test]
fn start_waits_for_the_master_and_explains_a_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let w = new_worker(&tmp, &[]);
    // The wait comes from the environment here (KILN_WORKER_START_WAIT).
    let started = Instant::now();
    let o = kiln()
        .env("KILN_WORKER_START_WAIT", "1")
        .args(["start", d(&w)])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "no master attached: {}", all(&o));
    assert!(started.elapsed() >= Duration::from_secs(1));
    let err = stderr(&o);
    assert!(err.contains("no master attached within 1 s"), "{err}");
    assert!(
        err.contains(&w.dir.join("kiln-worker.log").display().to_string()),
        "names the log file: {err}"
    );
    // The daemon keeps running (it keeps retrying), like buildbot-worker's.
    let pid = w.running_pid().expect("still running after the timeout");
    assert!(all(&o).contains(&format!("pid {pid}")));
    ok(run(&["stop", d(&w)]));

    // --quiet prints nothing and does not wait.
    let o = kiln()
        .env("KILN_WORKER_START_WAIT", "30")
        .args(["start", "--quiet", d(&w)])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", all(&o));
    assert_eq!(all(&o), "");
    assert!(w.running_pid().is_some());
    let o = run(&["stop", "--quiet", d(&w)]);
    assert_eq!((o.status.code(), all(&o).as_str()), (Some(0), ""));
}

/// Spawns `run` in the foreground and waits until it holds the lock with its own pid.
fn spawn_run(w: &Worker) -> Child {
    spawn_foreground(w, &["run"])
}

fn spawn_foreground(w: &Worker, cmd: &[&str]) -> Child {
    let child = kiln()
        .args(cmd)
        .arg(d(w))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.running_pid() != Some(child.id()) {
        assert!(Instant::now() < deadline, "run never took the lock");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

#[test]
fn run_in_the_foreground_handles_signals() {
    let tmp = tempfile::tempdir().unwrap();
    let w = new_worker(&tmp, &[]);

    let child = spawn_run(&w);
    assert_locked(&w);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", all(&out));
    let err = stderr(&out);
    assert!(
        err.contains("starting") && err.contains("SIGTERM") && err.contains("kiln-worker stopped"),
        "logs to stderr: {err}"
    );
    assert!(
        w.log().contains("SIGTERM"),
        "and to the log file: {}",
        w.log()
    );
    assert_eq!(w.status(), Status::NoFile);

    // SIGUSR1 = graceful (what `stop --graceful` sends).
    let child = spawn_run(&w);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGUSR1).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", all(&out));
    assert!(
        stderr(&out).contains("stopping once the running builds have finished"),
        "{}",
        stderr(&out)
    );

    // `start --nodaemon` is `run`: foreground, same pid, logs to stderr.
    let child = spawn_foreground(&w, &["start", "--nodaemon"]);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", all(&out));
    assert!(stderr(&out).contains("SIGTERM"), "{}", stderr(&out));

    // SIGINT (Ctrl-C) = now.
    let child = spawn_run(&w);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", all(&out));
    assert!(stderr(&out).contains("SIGINT"), "{}", stderr(&out));
}

#[test]
fn graceful_stop_of_a_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let w = new_worker(&tmp, &[]);
    let pid = start(&w);
    let o = run(&["stop", "--graceful", d(&w)]);
    assert_eq!(o.status.code(), Some(0), "{}", all(&o));
    assert!(
        stdout(&o).contains("once its running builds have finished"),
        "{}",
        all(&o)
    );
    assert!(
        stdout(&o).contains(&format!("worker process {pid} is dead")),
        "{}",
        all(&o)
    );
    assert!(w.log().contains("SIGUSR1"), "{}", w.log());
}

#[test]
fn warns_when_running_as_root_without_run_as_or_allow_root() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("worker");
    ok(run(&[
        "create-worker",
        "-q",
        dir.to_str().unwrap(),
        "127.0.0.1:1",
        "w",
        "pw",
    ]));
    let w = Worker::new(&dir);
    let o = run(&["start", "--wait", "0", d(&w)]);
    assert_eq!(o.status.code(), Some(0), "the worker starts: {}", all(&o));
    if is_root() {
        // It connects, but refuses build commands (tested in the command tests).
        assert!(
            stderr(&o).contains("will refuse every build command"),
            "{}",
            all(&o)
        );
        assert!(
            stderr(&o).contains("allow_root"),
            "says what to do: {}",
            all(&o)
        );
    } else {
        assert!(!stderr(&o).contains("will refuse"), "{}", all(&o));
    }
    ok(run(&["stop", d(&w)]));
}

#[test]
fn start_reports_a_broken_config_before_detaching() {
    let tmp = tempfile::tempdir().unwrap();
    let w = new_worker(&tmp, &[]);
    let path = w.dir.join("kiln-worker.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("name = \"testworker\"", "name = \"a:b\"");
    std::fs::write(&path, text).unwrap();
    let o = run(&["start", "--wait", "0", d(&w)]);
    assert_eq!(o.status.code(), Some(1), "{}", all(&o));
    assert!(
        stderr(&o).contains("kiln-worker.toml is not valid") && stderr(&o).contains("':'"),
        "{}",
        all(&o)
    );
    assert_eq!(w.status(), Status::NoFile);

    let o = run(&["start", tmp.path().join("nowhere").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", all(&o));
    assert!(stderr(&o).contains("create-worker"), "{}", all(&o));
}
