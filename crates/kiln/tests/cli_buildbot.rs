//! `kiln force` and `kiln sendchange` against a real Buildbot 4.3 master (they speak
//! Buildbot's own endpoints, so the same commands drive either master). Skipped, with a
//! message, when no Buildbot venv is found (`KILN_BUILDBOT_VENV`, default `/tmp/bbvenv`).

#![cfg(unix)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .expect("run kiln")
}

fn venv() -> Option<PathBuf> {
    let v = PathBuf::from(
        std::env::var_os("KILN_BUILDBOT_VENV").unwrap_or_else(|| "/tmp/bbvenv".into()),
    );
    (v.join("bin/buildbot").exists() && v.join("bin/buildbot-worker").exists()).then_some(v)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// A Buildbot master (builders `hello` and `broken`, a force and an any-branch scheduler,
/// the `base` change hook) and a buildbot-worker; both stopped on drop.
struct Farm {
    venv: PathBuf,
    master: PathBuf,
    worker: PathBuf,
    url: String,
}

impl Farm {
    fn start(venv: &Path, tmp: &Path) -> Farm {
        let (web, pb) = (free_port(), free_port());
        let master = tmp.join("bb");
        run_ok(
            Command::new(venv.join("bin/buildbot"))
                .args(["create-master", "-q"])
                .arg(&master),
        );
        std::fs::write(
            master.join("master.cfg"),
            format!(
                r#"from buildbot.plugins import *
c = BuildmasterConfig = {{}}
c['workers'] = [worker.Worker("w1", "pass")]
c['protocols'] = {{'pb': {{'port': "tcp:{pb}:interface=127.0.0.1"}}}}
c['schedulers'] = [schedulers.ForceScheduler(name="force", builderNames=["hello", "broken"]),
                   schedulers.AnyBranchScheduler(name="changes", builderNames=["hello"], treeStableTimer=None)]
c['builders'] = [
    util.BuilderConfig(name="hello", workernames=["w1"],
                       factory=util.BuildFactory([steps.ShellCommand(command=["echo", "hi"])])),
    util.BuilderConfig(name="broken", workernames=["w1"],
                       factory=util.BuildFactory([steps.ShellCommand(command=["false"])])),
]
c['buildbotURL'] = "http://127.0.0.1:{web}/"
c['www'] = dict(port="tcp:{web}:interface=127.0.0.1", plugins={{}}, change_hook_dialects={{'base': True}})
c['db'] = {{'db_url': "sqlite:///state.sqlite"}}
c['buildbotNetUsageData'] = None
"#
            ),
        )
        .unwrap();
        let worker = tmp.join("worker");
        let farm = Farm {
            venv: venv.to_owned(),
            master,
            worker,
            url: format!("http://127.0.0.1:{web}"),
        };
        run_ok(
            Command::new(venv.join("bin/buildbot"))
                .arg("start")
                .arg(&farm.master),
        );
        run_ok(
            Command::new(venv.join("bin/buildbot-worker"))
                .args(["create-worker", "-q"])
                .arg(&farm.worker)
                .arg(format!("127.0.0.1:{pb}"))
                .args(["w1", "pass"]),
        );
        run_ok(
            Command::new(venv.join("bin/buildbot-worker"))
                .arg("start")
                .arg(&farm.worker),
        );
        farm
    }
}

impl Drop for Farm {
    fn drop(&mut self) {
        let _ = Command::new(self.venv.join("bin/buildbot-worker"))
            .arg("stop")
            .arg(&self.worker)
            .output();
        let _ = Command::new(self.venv.join("bin/buildbot"))
            .arg("stop")
            .arg(&self.master)
            .output();
    }
}

fn get(url: &str) -> serde_json::Value {
    // Reuse kiln's own client through the library.
    let base = kiln::cli::http::BaseUrl::parse(url).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(kiln::cli::http::get_json(&base, "")).unwrap()
}

#[test]
fn force_and_sendchange_drive_a_real_buildbot() {
    let Some(venv) = venv() else {
        eprintln!("skipped: no Buildbot venv (set KILN_BUILDBOT_VENV)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let farm = Farm::start(&venv, tmp.path());
    let m = farm.url.as_str();

    // The scheduler is found from the builder name; --wait follows the build to its result.
    let out = kiln(&[
        "force",
        "hello",
        "--master",
        m,
        "--reason",
        "from kiln",
        "--owner",
        "ada",
        "--wait",
    ]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "force hello: {stdout}{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("through scheduler \"force\""), "{stdout}");
    assert!(
        stdout.contains("build #1 started") && stdout.contains(": SUCCESS"),
        "{stdout}"
    );
    let bs = get(&format!("{m}/api/v2/buildsets/1"));
    // (Buildbot's web layer replaces the owner with the logged-in user; the reason is ours.)
    assert!(
        bs["buildsets"][0]["reason"]
            .as_str()
            .unwrap()
            .ends_with(": from kiln"),
        "{bs}"
    );

    // A failing build: exit 1, the result printed.
    let out = kiln(&[
        "force",
        "broken",
        "--master",
        m,
        "--scheduler",
        "force",
        "--wait",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains(": FAILURE"),
        "{}",
        text(&out.stdout)
    );

    // Errors the user can act on.
    let out = kiln(&["force", "nosuch", "--master", m]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no force scheduler lists builder \"nosuch\""),
        "{}",
        text(&out.stderr)
    );
    let out = kiln(&["force", "hello", "--master", m, "--scheduler", "changes"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));

    // sendchange through the base change hook: every field arrives.
    let out = kiln(&[
        "sendchange",
        "--master",
        m,
        "--who",
        "Ada <ada@example.org>",
        "--repository",
        "https://example.org/r.git",
        "--project",
        "proj",
        "--branch",
        "main",
        "--revision",
        "abc123",
        "--category",
        "cat",
        "--comments",
        "fix: the thing",
        "--property",
        "ticket:42",
        "src/a.c",
        "doc/b d.txt",
    ]);
    assert!(out.status.success(), "sendchange: {}", text(&out.stderr));
    let changes = get(&format!("{m}/api/v2/changes"));
    let c = &changes["changes"][0];
    assert_eq!(c["author"], "Ada <ada@example.org>");
    assert_eq!(c["repository"], "https://example.org/r.git");
    assert_eq!(c["project"], "proj");
    assert_eq!(c["branch"], "main");
    assert_eq!(c["revision"], "abc123");
    assert_eq!(c["category"], "cat");
    assert_eq!(c["comments"], "fix: the thing");
    assert_eq!(c["files"], serde_json::json!(["src/a.c", "doc/b d.txt"]));
    assert_eq!(c["properties"]["ticket"][0], "42", "{c}");
}
