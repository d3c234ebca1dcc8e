//! The README's path on a Kiln master: `create-master`, `start`, a `kiln-worker` with the
//! created secret, `kiln force --wait`, `kiln sendchange`, `stop`.

#![cfg(unix)]

use std::path::PathBuf;
use std::process::{Command, Output};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env_remove("KILN_SECRET_LOCAL_WORKER")
        .output()
        .unwrap()
}

/// The `kiln-worker` binary beside `kiln` in the target dir, built if missing.
fn worker_binary() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_kiln")).with_file_name("kiln-worker");
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

/// `HOST:PORT` after `prefix` in the "kiln master is up" line.
fn port_after(line: &str, prefix: &str) -> u16 {
    let rest = &line[line
        .find(prefix)
        .unwrap_or_else(|| panic!("{prefix} in {line}"))
        + prefix.len()..];
    let addr: String = rest
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '/')
        .collect();
    addr.rsplit_once(':').unwrap().1.parse().unwrap()
}

struct Stop(Vec<Vec<String>>);

impl Drop for Stop {
    fn drop(&mut self) {
        for cmd in &self.0 {
            let _ = Command::new(&cmd[0]).args(&cmd[1..]).output();
        }
    }
}

#[test]
fn force_wait_and_sendchange_on_a_kiln_master() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    let d = dir.to_str().unwrap();
    assert!(kiln(&["create-master", d]).status.success());
    let file = dir.join("master.star");
    let src = std::fs::read_to_string(&file)
        .unwrap()
        .replace("web_port = 8010", "web_port = 0, bind = \"127.0.0.1\"")
        .replace("worker_port = 9989", "worker_port = 0");
    std::fs::write(&file, src).unwrap();

    let out = kiln(&["start", d]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let up = text(&out.stdout);
    let (web, wport) = (
        port_after(&up, "web http://"),
        port_after(&up, "workers ws://"),
    );
    let worker = worker_binary();
    let wdir = tmp.path().join("w");
    let mut stop = Stop(vec![
        vec![
            worker.display().to_string(),
            "stop".into(),
            wdir.display().to_string(),
        ],
        vec![env!("CARGO_BIN_EXE_kiln").into(), "stop".into(), d.into()],
    ]);
    let secret = dir.join("secrets/local-worker");
    let mut create = Command::new(&worker);
    create
        .args(["create-worker", "-q"])
        .arg(&wdir)
        .arg(format!("127.0.0.1:{wport}"))
        .arg("local")
        .arg("--passwd-file")
        .arg(&secret);
    if nix::unistd::geteuid().is_root() {
        create.arg("--allow-root");
    }
    assert!(create.status().unwrap().success());
    let out = Command::new(&worker)
        .arg("start")
        .arg(&wdir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "worker start: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    let master = format!("http://127.0.0.1:{web}");
    let out = kiln(&[
        "force", "hello", "--master", &master, "--reason", "cli test", "--wait",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "force: {stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("build #1 started") && stdout.contains(": SUCCESS"),
        "{stdout}"
    );

    let out = kiln(&[
        "sendchange",
        "--master",
        &master,
        "--who",
        "Ada <ada@example.org>",
        "--branch",
        "main",
        "src/a.c",
    ]);
    assert!(out.status.success(), "sendchange: {}", text(&out.stderr));

    let out = kiln(&["force", "nosuch", "--master", &master]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("nosuch"),
        "{}",
        text(&out.stderr)
    );

    drop(
        std::mem::take(&mut stop.0)
            .into_iter()
            .map(|c| Command::new(&c[0]).args(&c[1..]).output())
            .collect::<Vec<_>>(),
    );
    assert!(!dir.join("kiln.pid").exists(), "the master stopped cleanly");
}
