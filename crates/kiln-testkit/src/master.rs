//! Starts a `kiln` master process in a directory on free loopback ports, for benches and tests.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Placeholders [`start_master`] replaces in the `master.star` text.
pub const WORKER_PORT: &str = "@WORKER_PORT@";
pub const WEB_PORT: &str = "@WEB_PORT@";
/// The master directory (absolute), e.g. for `db_url = "sqlite:@DIR@/state.sqlite"`.
pub const DIR: &str = "@DIR@";

/// How long a master may take to answer `GET /api/v2/builders` with 200.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `kiln run DIR`; killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct MasterProc {
    pub web_port: u16,
    pub worker_port: u16,
    pub pid: u32,
    pub dir: PathBuf,
    /// From spawning the process to the first HTTP 200 on `/api/v2/builders`.
    pub startup: Duration,
    child: Child,
}

impl MasterProc {
    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.web_port)
    }

    /// The master's output so far (stdout and stderr go to `DIR/kiln.log`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("kiln.log")).unwrap_or_default()
    }

    /// Stops the master: SIGTERM, then SIGKILL after `grace`.
    pub fn stop(mut self, grace: Duration) -> std::io::Result<std::process::ExitStatus> {
        // SAFETY: plain kill(2) on our own child, which is not reaped yet (so the pid is ours).
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st);
            }
            if Instant::now() >= deadline {
                self.child.kill()?;
                return self.child.wait();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for MasterProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; the OS may hand it out again later).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

/// The `kiln` binary: `$KILN_BIN`, else `kiln` next to this executable (or one level up,
/// for test binaries in `target/<profile>/deps/`).
pub fn kiln_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("KILN_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    for d in [
        dir.clone(),
        dir.parent().map(Path::to_path_buf).unwrap_or_default(),
    ] {
        let cand = d.join("kiln");
        if cand.is_file() {
            return cand;
        }
    }
    dir.join("kiln")
}

/// Writes `master_star` (with [`WORKER_PORT`], [`WEB_PORT`] and [`DIR`] replaced) to
/// `dir/master.star`, runs `kiln run dir` and waits until its web port answers 200 on
/// `/api/v2/builders`.
pub fn start_master(dir: &Path, master_star: &str) -> anyhow::Result<MasterProc> {
    start_master_with(&kiln_bin(), dir, master_star)
}

/// [`start_master`] with an explicit binary.
pub fn start_master_with(bin: &Path, dir: &Path, master_star: &str) -> anyhow::Result<MasterProc> {
    if !bin.is_file() {
        bail!(
            "no kiln binary at {} (build it with `cargo build -p kiln`, or set KILN_BIN)",
            bin.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let worker_port = free_port()?;
    let web_port = loop {
        let p = free_port()?;
        if p != worker_port {
            break p;
        }
    };
    let text = master_star
        .replace(WORKER_PORT, &worker_port.to_string())
        .replace(WEB_PORT, &web_port.to_string())
        .replace(DIR, &dir.to_string_lossy());
    std::fs::write(dir.join("master.star"), text)?;
    let log = std::fs::File::create(dir.join("kiln.log"))?;
    let t0 = Instant::now();
    let child = Command::new(bin)
        .arg("run")
        .arg(&dir)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("spawning {} run {}", bin.display(), dir.display()))?;
    let mut m = MasterProc {
        web_port,
        worker_port,
        pid: child.id(),
        dir: dir.clone(),
        startup: Duration::ZERO,
        child,
    };
    loop {
        if let Ok((200, _)) = http_get(web_port, "/api/v2/builders") {
            m.startup = t0.elapsed();
            return Ok(m);
        }
        if let Some(st) = m.child.try_wait()? {
            bail!(
                "kiln run {} exited ({st}) before its web port answered; its output:\n{}",
                dir.display(),
                m.log()
            );
        }
        if t0.elapsed() > START_TIMEOUT {
            bail!(
                "kiln run {}: no HTTP 200 on 127.0.0.1:{web_port}/api/v2/builders within {:?}; its output:\n{}",
                dir.display(),
                START_TIMEOUT,
                m.log()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A minimal `GET` on 127.0.0.1:`port` (HTTP/1.0, whole body read): (status, body).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let status_line = String::from_utf8_lossy(&buf[..head_end])
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad(&format!("bad status line {status_line:?}")))?;
    Ok((status, buf[head_end + 4..].to_vec()))
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}
