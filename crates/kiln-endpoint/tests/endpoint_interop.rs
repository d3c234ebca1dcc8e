//! The endpoint against REAL workers: Kiln's own `kiln-worker` binary and the stock
//! `buildbot-worker` 4.3 (from a venv; skipped when absent). Each attaches, then runs
//! shell, upload_file, download_file, mkdir, stat and rmdir through `Remote::start`.

mod endpoint_common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use endpoint_common::*;
use kiln_proto::Value;
use kiln_proto::args::Args;
use kiln_proto::update::UpdateItem;
use kiln_remote::{CommandEvent, CommandSpec, Connection, DownloadSource, Transfer, UploadSink};
use tokio::process::{Child, Command};

/// Writes an upload into a local file, like Buildbot's `FileWriter`.
struct FileSink {
    file: Option<std::fs::File>,
    closed: Arc<AtomicBool>,
}

impl UploadSink for FileSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.file
            .as_mut()
            .expect("write after close")
            .write_all(data)
    }
    fn utime(&mut self, _: f64, _: f64) -> std::io::Result<()> {
        Ok(())
    }
    fn close(&mut self) -> std::io::Result<()> {
        self.file.take();
        self.closed.store(true, Ordering::SeqCst);
        Ok(())
    }
    fn unpack(&mut self) -> std::io::Result<()> {
        Err(std::io::Error::other("not a directory upload"))
    }
}

/// Collects an `upload_directory` tar stream.
struct TarSink {
    data: Arc<std::sync::Mutex<Vec<u8>>>,
    unpacked: Arc<AtomicBool>,
}

impl UploadSink for TarSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.data.lock().unwrap().extend_from_slice(data);
        Ok(())
    }
    fn utime(&mut self, _: f64, _: f64) -> std::io::Result<()> {
        Ok(())
    }
    fn close(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    fn unpack(&mut self) -> std::io::Result<()> {
        self.unpacked.store(true, Ordering::SeqCst);
        Ok(())
    }
}

struct BytesSource {
    data: Vec<u8>,
    pos: usize,
    closed: Arc<AtomicBool>,
}

impl DownloadSource for BytesSource {
    fn read(&mut self, length: usize) -> std::io::Result<Vec<u8>> {
        let end = (self.pos + length).min(self.data.len());
        let chunk = self.data[self.pos..end].to_vec();
        self.pos = end;
        Ok(chunk)
    }
    fn close(&mut self) {
        self.closed.store(true, Ordering::SeqCst);
    }
}

/// Runs a command to its end; returns (stdout, rc, all items).
async fn run(
    conn: &dyn Connection,
    name: &str,
    args: Args,
    transfer: Transfer,
) -> (String, Option<i64>, Vec<UpdateItem>) {
    let spec = CommandSpec {
        builder: Some("b1".into()),
        name: name.into(),
        args,
    };
    let mut cmd = conn
        .start(spec, transfer)
        .await
        .unwrap_or_else(|e| panic!("{name} not started: {e}"));
    let (mut out, mut rc, mut all) = (String::new(), None, vec![]);
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(60), cmd.events.recv())
            .await
            .expect("command hangs");
        match ev.expect("event channel closed") {
            CommandEvent::Update(items) => {
                for i in items {
                    match &i {
                        UpdateItem::Stdout(l) => out.push_str(&l.text),
                        UpdateItem::Rc(r) => rc = Some(*r),
                        _ => {}
                    }
                    all.push(i);
                }
            }
            CommandEvent::Complete { failure: None } => return (out, rc, all),
            CommandEvent::Complete { failure: Some(f) } => panic!("{name} failed: {f}"),
            CommandEvent::Lost => panic!("{name}: connection lost"),
        }
    }
}

fn s(v: &str) -> Value {
    Value::from(v)
}

/// The same commands a build would send, with the 4.3 master's argument shapes.
async fn exercise(conn: &dyn Connection, basedir: &Path) {
    let b1 = kiln_remote::join_worker_path(false, conn.basedir(), "b1");
    assert!(
        basedir.join("b1").is_dir(),
        "attach created the builder directory"
    );
    assert!(conn.ping().await.is_ok());

    let shell = Args(vec![
        (s("workdir"), s(&format!("{b1}/build"))),
        (s("env"), Value::Map(vec![])),
        (s("want_stdout"), Value::from(true)),
        (s("want_stderr"), Value::from(true)),
        (s("logfiles"), Value::Map(vec![])),
        (s("timeout"), Value::from(1200)),
        (s("maxTime"), Value::Nil),
        (s("usePTY"), Value::from(false)),
        (s("logEnviron"), Value::from(false)),
        (s("interruptSignal"), s("KILL")),
        (s("command"), s("echo hi")),
    ]);
    let (stdout, rc, _) = run(conn, "shell", shell, Transfer::None).await;
    assert_eq!((stdout.as_str(), rc), ("hi\n", Some(0)));

    // upload_file: several chunks, every byte value.
    let payload: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(basedir.join("b1/up.bin"), &payload).unwrap();
    let dest = tempfile::NamedTempFile::new().unwrap();
    let closed = Arc::new(AtomicBool::new(false));
    let sink = FileSink {
        file: Some(dest.reopen().unwrap()),
        closed: closed.clone(),
    };
    let up = Args(vec![
        (s("workdir"), s("build")),
        (s("workersrc"), s("../up.bin")),
        (s("path"), s(&format!("{b1}/up.bin"))),
        (s("maxsize"), Value::Nil),
        (s("blocksize"), Value::from(16384)),
        (s("keepstamp"), Value::from(false)),
    ]);
    let (_, rc, _) = run(conn, "upload_file", up, Transfer::Upload(Box::new(sink))).await;
    assert_eq!(rc, Some(0));
    assert!(
        closed.load(Ordering::SeqCst),
        "update_upload_file_close reached the sink"
    );
    assert_eq!(std::fs::read(dest.path()).unwrap(), payload);

    // download_file: the worker gets the master's bytes.
    let data: Vec<u8> = (0..40_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let closed = Arc::new(AtomicBool::new(false));
    let src = BytesSource {
        data: data.clone(),
        pos: 0,
        closed: closed.clone(),
    };
    let down = Args(vec![
        (s("path"), s(&format!("{b1}/dl/down.bin"))),
        (s("workdir"), s("build")),
        (s("workerdest"), s("../dl/down.bin")),
        (s("maxsize"), Value::Nil),
        (s("blocksize"), Value::from(16384)),
        (s("mode"), Value::Nil),
    ]);
    let (_, rc, _) = run(
        conn,
        "download_file",
        down,
        Transfer::Download(Box::new(src)),
    )
    .await;
    assert_eq!(rc, Some(0));
    assert!(
        closed.load(Ordering::SeqCst),
        "update_read_file_close reached the source"
    );
    assert_eq!(std::fs::read(basedir.join("b1/dl/down.bin")).unwrap(), data);

    // upload_directory: the tar stream reaches the sink, then unpack.
    std::fs::create_dir_all(basedir.join("b1/tree/sub")).unwrap();
    std::fs::write(basedir.join("b1/tree/sub/f.txt"), b"in a tree\n").unwrap();
    let tar = Arc::new(std::sync::Mutex::new(Vec::new()));
    let unpacked = Arc::new(AtomicBool::new(false));
    let sink = TarSink {
        data: tar.clone(),
        unpacked: unpacked.clone(),
    };
    let updir = Args(vec![
        (s("workdir"), s("build")),
        (s("workersrc"), s("../tree")),
        (s("path"), s(&format!("{b1}/tree"))),
        (s("maxsize"), Value::Nil),
        (s("blocksize"), Value::from(4096)),
        (s("compress"), Value::Nil),
    ]);
    let (_, rc, _) = run(
        conn,
        "upload_directory",
        updir,
        Transfer::Upload(Box::new(sink)),
    )
    .await;
    assert_eq!(rc, Some(0));
    assert!(
        unpacked.load(Ordering::SeqCst),
        "update_upload_directory_unpack reached the sink"
    );
    let tar = tar.lock().unwrap().clone();
    let names: Vec<String> = tar::Archive::new(&tar[..])
        .entries()
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .unwrap()
                .to_string_lossy()
                .trim_end_matches('/')
                .to_string()
        })
        .collect();
    assert!(
        names.iter().any(|n| n.ends_with("sub/f.txt")),
        "tar members: {names:?}"
    );

    // interrupt: a long shell command ends early.
    let sleeper = Args(vec![
        (s("workdir"), s(&b1)),
        (s("command"), s("sleep 30")),
        (s("interruptSignal"), s("KILL")),
    ]);
    let spec = CommandSpec {
        builder: Some("b1".into()),
        name: "shell".into(),
        args: sleeper,
    };
    let mut cmd = conn.start(spec, Transfer::None).await.unwrap();
    cmd.interrupt.interrupt("test interrupt");
    let mut rc = None;
    loop {
        match tokio::time::timeout(Duration::from_secs(20), cmd.events.recv())
            .await
            .expect("interrupt ignored")
            .unwrap()
        {
            CommandEvent::Update(items) => {
                rc = items
                    .iter()
                    .find_map(|i| {
                        if let UpdateItem::Rc(r) = i {
                            Some(*r)
                        } else {
                            None
                        }
                    })
                    .or(rc)
            }
            CommandEvent::Complete { .. } => break,
            CommandEvent::Lost => panic!("connection lost"),
        }
    }
    assert!(rc.is_some_and(|r| r != 0), "interrupted shell rc: {rc:?}");

    // mkdir / stat / rmdir
    let newdir = format!("{b1}/newdir/sub");
    let (_, rc, _) = run(
        conn,
        "mkdir",
        Args(vec![(s("paths"), Value::Array(vec![s(&newdir)]))]),
        Transfer::None,
    )
    .await;
    assert_eq!(rc, Some(0));
    assert!(basedir.join("b1/newdir/sub").is_dir());
    let (_, rc, items) = run(
        conn,
        "stat",
        Args(vec![(s("path"), s(&newdir))]),
        Transfer::None,
    )
    .await;
    assert_eq!(rc, Some(0));
    let mode = items.iter().find_map(|i| match i {
        UpdateItem::Stat(st) => Some(st[0]),
        _ => None,
    });
    assert_eq!(
        mode.map(|m| m & 0o170000),
        Some(0o040000),
        "stat reports a directory: {items:?}"
    );
    let rmdir = Args(vec![
        (s("paths"), Value::Array(vec![s(&format!("{b1}/newdir"))])),
        (s("logEnviron"), Value::from(false)),
    ]);
    let (_, rc, _) = run(conn, "rmdir", rmdir, Transfer::None).await;
    assert_eq!(rc, Some(0));
    assert!(!basedir.join("b1/newdir").exists());
}

fn kiln_worker_bin() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../../target"));
    let bin = target.join("debug/kiln-worker");
    if !bin.exists() {
        eprintln!(
            "{} is missing: building it with `cargo build -p kiln-worker`",
            bin.display()
        );
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = std::process::Command::new(cargo)
            .args(["build", "-p", "kiln-worker"])
            .current_dir(manifest)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok && bin.exists(),
            "could not build kiln-worker; run `cargo build -p kiln-worker` first"
        );
    }
    bin
}

fn sync_run(cmd: &mut std::process::Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn finish(mut child: Child) {
    let _ = child.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_kiln_worker() {
    let mut srv = Server::start(&[("kw", "kpass", &["b1"])], quick_opts()).await;
    let dir = tempfile::tempdir().unwrap();
    let basedir = dir.path().join("worker");
    let bin = kiln_worker_bin();
    let master = format!("127.0.0.1:{}", srv.port);
    sync_run(
        std::process::Command::new(&bin)
            .arg("create-worker")
            .arg("--allow-root")
            .arg(&basedir)
            .args([&master, "kw", "kpass"]),
    );
    let child = Command::new(&bin)
        .arg("run")
        .arg(&basedir)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let conn = srv.attached().await;
    assert_eq!(conn.worker_name(), "kw");
    exercise(conn.as_ref(), &basedir).await;
    finish(child).await;
}

/// A second `kiln-worker` under an attached worker's name is refused, and its own log says
/// why: the master's 409 and the connection that holds the name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_kiln_worker_refused_as_a_duplicate_logs_the_masters_reason() {
    use tokio::io::AsyncBufReadExt as _;
    let mut srv = Server::start(&[("kw", "kpass", &["b1"])], quick_opts()).await;
    let holder = connect_raw(srv.port, "/", Some(basic("kw", "kpass")))
        .await
        .unwrap();
    let holder_addr = local_addr(&holder);
    let _holder = FakeWorker::spawn(holder, Script::new("/wk"));
    srv.attached().await;

    let dir = tempfile::tempdir().unwrap();
    let basedir = dir.path().join("worker");
    let bin = kiln_worker_bin();
    let master = format!("127.0.0.1:{}", srv.port);
    sync_run(
        std::process::Command::new(&bin)
            .arg("create-worker")
            .arg("--allow-root")
            .arg(&basedir)
            .args([&master, "kw", "kpass"]),
    );
    let mut child = Command::new(&bin)
        .arg("run")
        .arg(&basedir)
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    // The first line about the failed attempt, whatever it says.
    let failure = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push(line.clone());
            if line.contains("cannot connect") || line.contains("lost the connection") {
                return line;
            }
        }
        panic!("kiln-worker exited without a connection failure: {seen:#?}");
    })
    .await
    .expect("kiln-worker logged no connection failure within 60 s");
    assert!(
        failure.contains(&format!(
            "the master answered HTTP 409 Conflict: worker \"kw\" is already connected from {holder_addr} since "
        )),
        "the worker's log gives the master's reason: {failure}"
    );
    // … and backs off before the next attempt, as for any refusal.
    let next = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("kiln-worker logged nothing after the refusal")
        .unwrap()
        .unwrap_or_default();
    assert!(next.contains("retrying in"), "{next}");
    assert_eq!(
        srv.endpoint.workers().get("kw").unwrap().peer(),
        holder_addr,
        "the first connection keeps the name"
    );
    finish(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_buildbot_worker() {
    let venv = PathBuf::from(
        std::env::var_os("KILN_INTEROP_VENV").unwrap_or_else(|| "/tmp/bbvenv".into()),
    );
    let bin = venv.join("bin/buildbot-worker");
    if !bin.exists() {
        println!(
            "SKIP real_buildbot_worker: {} not found (set KILN_INTEROP_VENV)",
            bin.display()
        );
        return;
    }
    let mut srv = Server::start(&[("bw", "bpass", &["b1"])], quick_opts()).await;
    let dir = tempfile::tempdir().unwrap();
    let basedir = dir.path().join("worker");
    let master = format!("127.0.0.1:{}", srv.port);
    sync_run(
        std::process::Command::new(&bin)
            .args(["create-worker", "--protocol", "msgpack_experimental_v7"])
            .arg(&basedir)
            .args([&master, "bw", "bpass"]),
    );
    let child = Command::new(&bin)
        .args(["start", "--nodaemon"])
        .arg(&basedir)
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let conn = srv.attached().await;
    assert_eq!(conn.worker_name(), "bw");
    assert_eq!(conn.info()["version"], "4.3.0");
    exercise(conn.as_ref(), &basedir).await;
    finish(child).await;
}

/// A self-signed certificate for 127.0.0.1: (server config, CA PEM for the worker).
fn tls_config() -> (Arc<rustls::ServerConfig>, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![ck.cert.der().clone()], key)
    .unwrap();
    (Arc::new(config), ck.cert.pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_kiln_worker_over_tls() {
    let (config, ca) = tls_config();
    let mut srv = Server::start_with(&[("kt", "tpass", &["b1"])], quick_opts(), Some(config)).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    let basedir = dir.path().join("worker");
    let bin = kiln_worker_bin();
    let master = format!("127.0.0.1:{}", srv.port);
    sync_run(
        std::process::Command::new(&bin)
            .args(["create-worker", "--allow-root", "--use-tls", "--ca-file"])
            .arg(&ca_file)
            .arg(&basedir)
            .args([&master, "kt", "tpass"]),
    );
    let child = Command::new(&bin)
        .arg("run")
        .arg(&basedir)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let conn = srv.attached().await;
    assert_eq!(conn.worker_name(), "kt");
    let b1 = kiln_remote::join_worker_path(false, conn.basedir(), "b1");
    let shell = Args(vec![
        (s("workdir"), s(&b1)),
        (s("command"), Value::Array(vec![s("echo"), s("tls")])),
    ]);
    let (stdout, rc, _) = run(conn.as_ref(), "shell", shell, Transfer::None).await;
    assert_eq!((stdout.as_str(), rc), ("tls\n", Some(0)));
    finish(child).await;
}
