//! `kiln start/stop/run/reconfig` and the pidfile, through the real binary.
//!
//! The lock on `DIR/kiln.pid`, not the pid written in it, says whether a master is alive:
//! these tests hold or leave that file in the states a crash, a reboot or a running master
//! leave it in.

#![cfg(unix)]

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env_remove("KILN_SECRET_LOCAL_WORKER")
        .output()
        .expect("run kiln")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A created master directory whose ports are picked by the OS (tests run side by side).
fn master_dir(tmp: &Path) -> PathBuf {
    let dir = tmp.join("m");
    let out = kiln(&["create-master", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let file = dir.join("master.star");
    let src = std::fs::read_to_string(&file)
        .unwrap()
        .replace("web_port = 8010", "web_port = 0, bind = \"127.0.0.1\"")
        .replace("worker_port = 9989", "worker_port = 0");
    std::fs::write(&file, src).unwrap();
    dir
}

/// The pid of a process that has exited (and been reaped).
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// Running (a zombie left for an init that does not reap counts as gone).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

#[test]
fn a_live_lock_holder_refuses_start_and_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = master_dir(tmp.path());
    let d = dir.to_str().unwrap();
    // This test process plays the running master: it holds the lock and wrote its pid.
    let mut pidfile = File::options()
        .create(true)
        .truncate(true)
        .write(true)
        .open(dir.join("kiln.pid"))
        .unwrap();
    pidfile.try_lock().unwrap();
    writeln!(pidfile, "{}", std::process::id()).unwrap();

    for cmd in ["start", "run"] {
        let out = kiln(&[cmd, d]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{cmd}: {stderr}");
        assert!(stderr.contains("already running"), "{cmd}: {stderr}");
        assert!(
            stderr.contains(&format!("pid {}", std::process::id())),
            "{cmd}: {stderr}"
        );
        assert!(
            stderr.contains("kiln stop"),
            "{cmd} says how to stop it: {stderr}"
        );
    }
    // The holder's pidfile is left alone.
    assert_eq!(
        std::fs::read_to_string(dir.join("kiln.pid"))
            .unwrap()
            .trim(),
        std::process::id().to_string()
    );
    assert!(
        !dir.join("kiln.log").exists()
            || !text(&std::fs::read(dir.join("kiln.log")).unwrap()).contains("starting")
    );
}

#[test]
fn stop_and_reconfig_never_signal_the_pid_in_a_stale_pidfile() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = master_dir(tmp.path());
    let d = dir.to_str().unwrap();
    // After a crash and a reboot the pid in the file may belong to anything: here, a sleep.
    let mut bystander = Command::new("sleep").arg("60").spawn().unwrap();
    std::fs::write(dir.join("kiln.pid"), format!("{}\n", bystander.id())).unwrap();

    let out = kiln(&["stop", d]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        stdout.contains("not running") && stdout.contains("not signalled"),
        "{stdout}"
    );

    let out = kiln(&["reconfig", d]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("not running"),
        "{}",
        text(&out.stderr)
    );

    assert!(
        bystander.try_wait().unwrap().is_none(),
        "the bystander was signalled"
    );
    bystander.kill().unwrap();
    bystander.wait().unwrap();
}

#[test]
fn start_refuses_a_broken_config_in_the_foreground() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = master_dir(tmp.path());
    let file = dir.join("master.star");
    let src = std::fs::read_to_string(&file)
        .unwrap()
        .replace("shell(command =", "shell(comand =");
    std::fs::write(&file, src).unwrap();
    let out = kiln(&["start", dir.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:", file.display())) && stderr.contains("comand"),
        "{stderr}"
    );
    assert!(!dir.join("kiln.pid").exists(), "nothing was started");
}

#[test]
fn stop_in_a_directory_that_is_not_a_master() {
    let tmp = tempfile::tempdir().unwrap();
    let out = kiln(&["stop", tmp.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("not a kiln master directory"),
        "{}",
        text(&out.stderr)
    );
}

/// `start` over a pidfile naming a dead pid, `start` again (refused), `reconfig` (OK, then
/// FAILED on a broken file), `restart`, `stop`.
#[test]
fn start_over_a_stale_pidfile_reconfig_and_stop() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = master_dir(tmp.path());
    let d = dir.to_str().unwrap();
    let stale = dead_pid();
    std::fs::write(dir.join("kiln.pid"), format!("{stale}\n")).unwrap();

    let out = kiln(&["start", d]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "start: {stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("kiln master is up: web http://"),
        "{stdout}"
    );
    let pid: u32 = std::fs::read_to_string(dir.join("kiln.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(pid, stale);
    assert!(alive(pid));

    let out = kiln(&["start", d]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(&format!("already running in {d} (pid {pid})")),
        "{}",
        text(&out.stderr)
    );

    let out = kiln(&["reconfig", d]);
    assert!(
        out.status.success(),
        "reconfig: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("reconfig: OK"),
        "{}",
        text(&out.stdout)
    );

    let file = dir.join("master.star");
    let good = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        good.replace("workers = [\"local\"]", "workers = [\"nosuch\"]"),
    )
    .unwrap();
    let out = kiln(&["reconfig", d]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("reconfig: FAILED") && stderr.contains("unknown worker \"nosuch\""),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{}:", file.display())),
        "file:line:col: {stderr}"
    );
    assert!(alive(pid), "a broken reconfig keeps the master running");

    // restart: the old master goes, a new one (with the good config back) comes.
    std::fs::write(&file, &good).unwrap();
    let out = kiln(&["restart", d]);
    assert!(
        out.status.success(),
        "restart: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains(&format!("master process {pid} is dead")),
        "{}",
        text(&out.stdout)
    );
    assert!(!alive(pid));
    let pid: u32 = std::fs::read_to_string(dir.join("kiln.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(alive(pid));

    let out = kiln(&["stop", d]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&format!("master process {pid} is dead")));
    assert!(
        !dir.join("kiln.pid").exists(),
        "a clean stop removes the pidfile"
    );
    let log = std::fs::read_to_string(dir.join("kiln.log")).unwrap();
    assert!(
        log.contains("SIGTERM: shutting down") && log.contains("kiln master stopped"),
        "{log}"
    );
}

#[test]
fn run_in_the_foreground_stops_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = master_dir(tmp.path());
    let child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["run", dir.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Wait for the log line saying both ports listen.
    let log = dir.join("kiln.log");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("kiln master is up")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the master never came up"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = kiln(&["stop", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "run exits 0 on SIGTERM");
    assert!(
        text(&out.stderr).contains("kiln master is up"),
        "run logs to stderr too"
    );
    assert!(!alive(pid));
}
