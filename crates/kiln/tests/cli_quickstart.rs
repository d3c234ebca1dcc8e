//! `kiln quickstart --once`: master in process, a real `kiln-worker` child, a git checkout of
//! the demo repository, build and test steps; exit 0 only when the build succeeded.

#![cfg(unix)]

use std::path::PathBuf;
use std::process::Command;

/// The `kiln-worker` binary beside `kiln` in the target dir, built if missing.
fn worker_binary() -> PathBuf {
    let kiln = PathBuf::from(env!("CARGO_BIN_EXE_kiln"));
    let bin = kiln.with_file_name("kiln-worker");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo)
            .args(["build", "-p", "kiln-worker", "--bin", "kiln-worker"])
            .status()
            .unwrap();
        assert!(st.success(), "cannot build kiln-worker");
    }
    bin
}

#[test]
fn quickstart_once_runs_the_demo_build() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("qs");
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "quickstart",
            "--port",
            "0",
            "--once",
            "--timeout",
            "300",
            "--dir",
        ])
        .arg(&dir)
        .env("KILN_WORKER_BIN", worker_binary())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "quickstart: {stdout}{stderr}");
    assert!(stdout.contains("demo build finished: SUCCESS"), "{stdout}");
    assert!(
        stdout.contains("kiln master is up: web http://127.0.0.1:"),
        "{stdout}"
    );
    assert!(dir.join("demo-repo/.git").exists() && dir.join("worker/kiln-worker.toml").exists());
    // Everything stopped: the pidfile lock was released and removed.
    assert!(!dir.join("kiln.pid").exists());
    let worker_log = std::fs::read_to_string(dir.join("worker/kiln-worker.log")).unwrap();
    assert!(
        worker_log.contains("message from master: attached"),
        "{worker_log}"
    );
}
