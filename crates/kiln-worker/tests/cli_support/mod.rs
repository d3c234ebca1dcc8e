//! Helpers shared by the `cli_*` tests: they drive the real binary in temp dirs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use kiln_daemon::pidfile::{self, Status};

pub const BIN: &str = env!("CARGO_BIN_EXE_kiln-worker");

/// The binary, with the environment that could change its behaviour cleared.
pub fn kiln() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_remove("KILN_WORKER_START_WAIT")
        .env_remove("KILN_WORKER_LOG");
    cmd
}

/// Runs with arguments and returns the output.
pub fn run(args: &[&str]) -> Output {
    kiln().args(args).output().expect("run kiln-worker")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
pub fn all(o: &Output) -> String {
    format!("{}{}", stdout(o), stderr(o))
}

/// Asserts success and returns stdout.
#[track_caller]
pub fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "expected success, got {:?}\n{}",
        o.status,
        all(&o)
    );
    stdout(&o)
}

/// Creates a worker (allowed to run as root, since tests may run as root).
pub fn create(basedir: &Path, extra: &[&str]) {
    let mut args = vec!["create-worker", "--allow-root"];
    args.extend_from_slice(extra);
    let dir = basedir.to_str().unwrap();
    args.extend_from_slice(&[dir, "127.0.0.1:1", "testworker", "pw"]);
    ok(run(&args));
}

/// Kills (SIGKILL) any worker still holding the pidfile lock when dropped.
pub struct Worker {
    pub dir: PathBuf,
}

impl Worker {
    pub fn new(dir: &Path) -> Worker {
        Worker {
            dir: dir.to_owned(),
        }
    }
    pub fn pidfile(&self) -> PathBuf {
        kiln_worker::lifecycle::pid_path(&self.dir)
    }
    pub fn status(&self) -> Status {
        pidfile::probe(&self.pidfile()).unwrap()
    }
    /// The pid of the worker holding the lock (waits briefly for it to be written).
    pub fn running_pid(&self) -> Option<u32> {
        match pidfile::probe_with_pid(&self.pidfile(), Duration::from_secs(5)).unwrap() {
            Status::Running(pid) => pid,
            _ => None,
        }
    }
    /// Waits until nobody holds the lock.
    pub fn wait_gone(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if !matches!(self.status(), Status::Running(_)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("kiln-worker.log")).unwrap_or_default()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Ok(Status::Running(Some(pid))) = pidfile::probe(&self.pidfile()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Whether a process exists (signal 0).
pub fn alive(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
