//! Shared by the master's end-to-end tests: a master directory with a `master.star`, an
//! in-process [`Master`] on loopback port 0, real `kiln-worker` processes, and waiting on
//! builds through the real store.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kiln::master::{Master, MasterOptions};
use kiln_model::{Build, BuilderId, Results};
use kiln_store::{BuildFilter, Store};

pub const PASSWORD: &str = "pw-for-tests";

/// `target/debug/kiln-worker`, built once per test binary (cargo releases its lock while
/// tests run, so building from a test works).
pub fn kiln_worker_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo)
            .args(["build", "-q", "-p", "kiln-worker"])
            .status()
            .expect("run cargo build -p kiln-worker");
        assert!(st.success(), "cargo build -p kiln-worker failed");
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
        let bin = target.join("debug/kiln-worker");
        assert!(bin.exists(), "no kiln-worker at {}", bin.display());
        bin
    })
    .clone()
}

/// A master directory: `master.star` from `body` (which may use `{PASSWORD_SECRET}` workers:
/// every worker's password is `secret("worker")`), a secrets dir, SQLite.
pub fn master_dir(root: &Path, body: &str) -> PathBuf {
    let dir = root.join("master");
    std::fs::create_dir_all(dir.join("secrets")).unwrap();
    std::fs::write(dir.join("secrets/worker"), PASSWORD).unwrap();
    std::fs::write(dir.join("master.star"), body).unwrap();
    dir
}

pub async fn start_master(dir: &Path) -> Master {
    let mut opts = MasterOptions::new(dir);
    opts.bind = "127.0.0.1".parse().unwrap();
    opts.web_port = Some(0);
    opts.worker_port = Some(0);
    Master::start(opts).await.expect("master starts")
}

/// A real kiln-worker process, run in the foreground; killed on drop.
pub struct WorkerProc {
    pub dir: PathBuf,
    pub child: Child,
}

impl WorkerProc {
    pub fn create(root: &Path, name: &str, master: SocketAddr) -> PathBuf {
        let dir = root.join(format!("worker-{name}"));
        let st = Command::new(kiln_worker_bin())
            .arg("create-worker")
            .arg("--allow-root")
            .arg(&dir)
            .arg(format!("127.0.0.1:{}", master.port()))
            .arg(name)
            .arg(PASSWORD)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "create-worker {name}");
        dir
    }

    pub fn run(dir: &Path) -> WorkerProc {
        let log = std::fs::File::create(dir.join("test-run.log")).unwrap();
        let child = Command::new(kiln_worker_bin())
            .arg("run")
            .arg(dir)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        WorkerProc {
            dir: dir.to_path_buf(),
            child,
        }
    }

    pub fn start(root: &Path, name: &str, master: SocketAddr) -> WorkerProc {
        let dir = Self::create(root, name, master);
        Self::run(&dir)
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub async fn builder_id(store: &Store, name: &str) -> BuilderId {
    store
        .get_builder_by_name(name)
        .await
        .unwrap()
        .expect("builder row")
        .builderid
}

pub async fn builds_of(store: &Store, builder: &str) -> Vec<Build> {
    let id = builder_id(store, builder).await;
    let mut b = store
        .list_builds(&BuildFilter {
            builderid: Some(id),
            ..Default::default()
        })
        .await
        .unwrap();
    b.sort_by_key(|b| b.buildid.0);
    b
}

/// Waits until `pred` holds for the builder's builds (oldest first), or panics after `secs`.
pub async fn wait_builds(
    store: &Store,
    builder: &str,
    secs: u64,
    what: &str,
    pred: impl Fn(&[Build]) -> bool,
) -> Vec<Build> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let b = builds_of(store, builder).await;
        if pred(&b) {
            return b;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what} on {builder}: {b:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn finished_with(b: &[Build], n: usize) -> bool {
    b.iter().filter(|b| b.complete).count() >= n
}

pub fn results(b: &[Build]) -> Vec<Option<Results>> {
    b.iter().map(|b| b.results).collect()
}

/// The text of a step's log, channel prefixes included (Buildbot's stdio format).
pub async fn log_text(store: &Store, build: &Build, step: &str, log: &str) -> String {
    let steps = store.list_steps(build.buildid).await.unwrap();
    let s = steps
        .iter()
        .find(|s| s.name == step)
        .unwrap_or_else(|| panic!("no step {step}: {steps:#?}"));
    let logs = store.list_logs(s.stepid).await.unwrap();
    let l = logs
        .iter()
        .find(|l| l.name == log)
        .unwrap_or_else(|| panic!("no log {log}: {logs:#?}"));
    let lines = store
        .read_log_lines(l.logid, 0, l.num_lines.max(1) - 1)
        .await
        .unwrap();
    lines.iter().map(|l| format!("{l}\n")).collect()
}

/// The stock `buildbot-worker` 4.3 from the interop venv (`KILN_INTEROP_VENV`, default
/// `/tmp/bbvenv`), or `None` (the caller prints SKIP).
pub fn stock_worker_bin() -> Option<PathBuf> {
    let venv = std::env::var_os("KILN_INTEROP_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/tmp/bbvenv".into());
    let bin = venv.join("bin/buildbot-worker");
    bin.exists().then_some(bin)
}

impl WorkerProc {
    /// A stock buildbot-worker in the foreground (`start --nodaemon`).
    pub fn start_stock(bin: &Path, root: &Path, name: &str, master: SocketAddr) -> WorkerProc {
        let dir = root.join(format!("stock-{name}"));
        let st = Command::new(bin)
            .args(["create-worker", "--protocol", "msgpack_experimental_v7"])
            .arg(&dir)
            .arg(format!("127.0.0.1:{}", master.port()))
            .arg(name)
            .arg(PASSWORD)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "buildbot-worker create-worker {name}");
        let log = std::fs::File::create(root.join(format!("stock-{name}.log"))).unwrap();
        let child = Command::new(bin)
            .args(["start", "--nodaemon"])
            .arg(&dir)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        WorkerProc { dir, child }
    }
}
