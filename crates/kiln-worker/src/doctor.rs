//! `kiln-worker doctor`: does this machine have what CPython's builds need?
//!
//! Required checks (they decide the exit status): git, a C compiler, a linker,
//! make, zlib and OpenSSL headers, CPUs, memory, free disk, local TCP sockets
//! and the `localhost` name. Advisory checks: outbound TCP to the hosts and ports
//! of CPython's "Required ports" table — network tests are skipped when a port is
//! unreachable, so a worker without them still runs builds.
//!
//! [`run_checks`] returns [`CheckResult`]s (serde `Serialize`) so the worker can
//! report them to the master too.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{self, WorkerConfig};
use crate::machine;

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum CheckStatus {
    Ok,
    /// A tool or header is not there.
    Missing,
    /// A host/port could not be reached (or a local socket did not work).
    Unreachable,
    /// A resource is below the recommended minimum.
    Low,
    /// Could not be measured on this system (does not count as a failure).
    Unknown,
}

impl CheckStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Ok => "OK",
            CheckStatus::Missing => "MISSING",
            CheckStatus::Unreachable => "UNREACHABLE",
            CheckStatus::Low => "LOW",
            CheckStatus::Unknown => "UNKNOWN",
        }
    }
}

/// One row of the doctor's table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    pub name: String,
    pub status: CheckStatus,
    /// What was found (a path, a number, an error).
    pub detail: String,
    /// What to do about a failure (empty when OK).
    pub hint: String,
    /// Whether a failure makes `doctor` exit non-zero.
    pub required: bool,
}

impl CheckResult {
    fn new(
        name: impl Into<String>,
        status: CheckStatus,
        detail: impl Into<String>,
        hint: impl Into<String>,
        required: bool,
    ) -> Self {
        let hint = if status == CheckStatus::Ok {
            String::new()
        } else {
            hint.into()
        };
        CheckResult {
            name: name.into(),
            status,
            detail: detail.into(),
            hint,
            required,
        }
    }

    /// Whether this check failed (UNKNOWN is not a failure).
    pub fn failed(&self) -> bool {
        !matches!(self.status, CheckStatus::Ok | CheckStatus::Unknown)
    }
}

/// An outbound TCP reachability target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub host: String,
    pub port: u16,
    /// Why it matters (shown in the hint).
    pub purpose: String,
}

impl Target {
    pub fn new(name: &str, host: &str, port: u16, purpose: &str) -> Target {
        Target {
            name: name.to_owned(),
            host: host.to_owned(),
            port,
            purpose: purpose.to_owned(),
        }
    }

    /// Parses `NAME=HOST:PORT` (or `HOST:PORT`).
    pub fn parse(text: &str) -> Result<Target, config::TargetError> {
        let (name, host, port) = config::parse_target(text)?;
        Ok(Target {
            name,
            host,
            port,
            purpose: String::new(),
        })
    }
}

/// What [`run_checks`] checks.
#[derive(Debug, Clone)]
pub struct DoctorOptions {
    /// Where the free disk space is measured (the worker's base directory).
    pub basedir: PathBuf,
    /// Outbound targets (advisory); empty = no outbound checks.
    pub targets: Vec<Target>,
    pub min_cpus: usize,
    pub min_memory_bytes: u64,
    pub min_disk_bytes: u64,
    /// Budget for resolving plus connecting to one target.
    pub timeout: Duration,
}

/// CPython's recommended minimum resources.
pub const MIN_CPUS: usize = 2;
pub const MIN_MEMORY_MB: u64 = 512;
pub const MIN_DISK_GB: u64 = 30;

impl DoctorOptions {
    /// CPython's minimums and default targets, disk measured in `basedir`.
    pub fn new(basedir: impl Into<PathBuf>) -> DoctorOptions {
        DoctorOptions {
            basedir: basedir.into(),
            targets: default_targets(),
            min_cpus: MIN_CPUS,
            min_memory_bytes: MIN_MEMORY_MB << 20,
            min_disk_bytes: MIN_DISK_GB << 30,
            timeout: Duration::from_secs(2),
        }
    }

    /// For a configured worker: its `doctor_targets` if any, else the defaults
    /// plus the worker's own master.
    pub fn for_config(config: &WorkerConfig) -> DoctorOptions {
        let mut opts = DoctorOptions::new(&config.basedir);
        if config.doctor_targets.is_empty() {
            opts.targets.push(Target::new(
                "master",
                &config.master_host,
                config.master_port,
                "the connection to the master",
            ));
        } else {
            opts.targets = config
                .doctor_targets
                .iter()
                .filter_map(|t| Target::parse(t).ok())
                .collect();
        }
        opts
    }
}

/// The hosts and ports of CPython's "Required ports" table (and your DNS resolver).
pub fn default_targets() -> Vec<Target> {
    let mut targets = Vec::new();
    if let Some(ns) = resolver() {
        targets.push(Target::new(
            "dns",
            &ns,
            53,
            "test_socket and name lookups (your DNS server)",
        ));
    }
    targets.extend([
        Target::new("http", "python.org", 80, "several tests"),
        Target::new("https", "python.org", 443, "test_ssl"),
        Target::new("smtps", "smtp.gmail.com", 465, "test_smtpnet"),
        Target::new("nntp", "news.gmane.io", 119, "test_nntplib"),
        Target::new("ftp", "ftp.kernel.org", 21, "test_urllib2net"),
        Target::new(
            "buildbot",
            "buildbot.python.org",
            9020,
            "the Buildbot connection",
        ),
    ]);
    targets
}

/// The first `nameserver` in /etc/resolv.conf.
fn resolver() -> Option<String> {
    let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next()? == "nameserver").then(|| {
            words
                .next()
                .map(|w| w.split('%').next().unwrap_or(w).to_owned())
        })?
    })
}

/// Runs every check. Outbound targets are checked in parallel, each within `timeout`.
pub fn run_checks(opts: &DoctorOptions) -> Vec<CheckResult> {
    let family = PkgFamily::detect();
    let mut results = Vec::new();
    let path_dirs = path_dirs();

    results.push(tool_check("git", &["git"], Need::Git, family, &path_dirs));
    let cc = find_first(&compiler_names(), &path_dirs);
    results.push(match &cc {
        Some(p) => CheckResult::new(
            "C compiler",
            CheckStatus::Ok,
            p.display().to_string(),
            "",
            true,
        ),
        None => CheckResult::new(
            "C compiler",
            CheckStatus::Missing,
            format!("none of {} on PATH", compiler_names().join(", ")),
            family.hint(Need::Compiler),
            true,
        ),
    });
    results.push(tool_check(
        "linker",
        &linker_names(),
        Need::Linker,
        family,
        &path_dirs,
    ));
    results.push(tool_check(
        "make",
        &["make", "gmake"],
        Need::Make,
        family,
        &path_dirs,
    ));
    results.push(header_check(
        "zlib headers",
        "zlib.h",
        cc.as_deref(),
        Need::Zlib,
        family,
    ));
    results.push(header_check(
        "OpenSSL headers",
        "openssl/ssl.h",
        cc.as_deref(),
        Need::Openssl,
        family,
    ));

    results.push(match machine::usable_cpus() {
        Some(n) if n >= opts.min_cpus => {
            CheckResult::new("CPUs", CheckStatus::Ok, format!("{n}"), "", true)
        }
        Some(n) => CheckResult::new(
            "CPUs",
            CheckStatus::Low,
            format!("{n} (at least {} recommended)", opts.min_cpus),
            "give the machine (or VM) more CPUs",
            true,
        ),
        None => CheckResult::new(
            "CPUs",
            CheckStatus::Unknown,
            "could not count them",
            "",
            true,
        ),
    });
    let mb = |b: u64| b >> 20;
    results.push(match machine::physical_memory() {
        Some(m) if m >= opts.min_memory_bytes => {
            CheckResult::new("memory", CheckStatus::Ok, format!("{} MB", mb(m)), "", true)
        }
        Some(m) => CheckResult::new(
            "memory",
            CheckStatus::Low,
            format!(
                "{} MB (at least {} MB recommended)",
                mb(m),
                mb(opts.min_memory_bytes)
            ),
            "give the machine (or VM) more memory",
            true,
        ),
        None => CheckResult::new(
            "memory",
            CheckStatus::Unknown,
            "could not measure it",
            "",
            true,
        ),
    });
    let disk_dir = existing_ancestor(&opts.basedir);
    let gb = |b: u64| b as f64 / (1u64 << 30) as f64;
    results.push(match machine::free_disk(&disk_dir) {
        Some(f) if f >= opts.min_disk_bytes => CheckResult::new(
            "free disk",
            CheckStatus::Ok,
            format!("{:.1} GB free in {}", gb(f), disk_dir.display()),
            "",
            true,
        ),
        Some(f) => CheckResult::new(
            "free disk",
            CheckStatus::Low,
            format!(
                "{:.1} GB free in {} (at least {:.0} GB recommended)",
                gb(f),
                disk_dir.display(),
                gb(opts.min_disk_bytes)
            ),
            "free some space or put the worker's base directory on a larger file system",
            true,
        ),
        None => CheckResult::new(
            "free disk",
            CheckStatus::Unknown,
            format!("could not measure {}", disk_dir.display()),
            "",
            true,
        ),
    });
    results.push(local_tcp_check(opts.timeout));
    results.push(localhost_check(opts.timeout));

    let timeout = opts.timeout;
    let outbound: Vec<CheckResult> = std::thread::scope(|scope| {
        let handles: Vec<_> = opts
            .targets
            .iter()
            .map(|t| scope.spawn(move || outbound_check(t, timeout)))
            .collect();
        handles
            .into_iter()
            .zip(&opts.targets)
            .map(|(h, t)| {
                h.join()
                    .unwrap_or_else(|_| outbound_result(t, Err("check panicked".into())))
            })
            .collect()
    });
    results.extend(outbound);
    results
}

/// Whether every required check passed.
pub fn required_ok(results: &[CheckResult]) -> bool {
    results.iter().all(|r| !r.required || !r.failed())
}

fn path_dirs() -> Vec<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default()
}

fn find_in_path(name: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    for dir in dirs {
        for candidate in executable_names(name) {
            let path = dir.join(&candidate);
            if is_executable(&path) {
                return Some(path);
            }
        }
    }
    None
}

fn find_first(names: &[&str], dirs: &[PathBuf]) -> Option<PathBuf> {
    names.iter().find_map(|n| find_in_path(n, dirs))
}

#[cfg(windows)]
fn executable_names(name: &str) -> Vec<String> {
    vec![
        format!("{name}.exe"),
        format!("{name}.cmd"),
        format!("{name}.bat"),
    ]
}
#[cfg(not(windows))]
fn executable_names(name: &str) -> Vec<String> {
    vec![name.to_owned()]
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    path.is_file()
}

fn compiler_names() -> Vec<&'static str> {
    if cfg!(windows) {
        vec!["cl", "gcc", "clang", "cc"]
    } else {
        vec!["cc", "gcc", "clang"]
    }
}

fn linker_names() -> Vec<&'static str> {
    if cfg!(windows) {
        vec!["link", "ld"]
    } else {
        vec!["ld"]
    }
}

fn tool_check(
    name: &str,
    names: &[&str],
    need: Need,
    family: PkgFamily,
    dirs: &[PathBuf],
) -> CheckResult {
    match find_first(names, dirs) {
        Some(p) => CheckResult::new(name, CheckStatus::Ok, p.display().to_string(), "", true),
        None => CheckResult::new(
            name,
            CheckStatus::Missing,
            format!("no {} on PATH", names.join(" or ")),
            family.hint(need),
            true,
        ),
    }
}

/// Preprocesses `#include <header>` with the compiler: success = the header is found.
fn header_check(
    name: &str,
    header: &str,
    cc: Option<&Path>,
    need: Need,
    family: PkgFamily,
) -> CheckResult {
    let Some(cc) = cc else {
        let hint = format!(
            "{}, then {}",
            family.hint(Need::Compiler),
            family.hint(need)
        );
        return CheckResult::new(
            name,
            CheckStatus::Missing,
            "no C compiler to look for it with",
            hint,
            true,
        );
    };
    let is_msvc = cc.file_stem().is_some_and(|s| s.eq_ignore_ascii_case("cl"));
    if is_msvc {
        return CheckResult::new(
            name,
            CheckStatus::Unknown,
            format!("not probed with {}", cc.display()),
            "",
            true,
        );
    }
    let child = Command::new(cc)
        .args(["-E", "-x", "c", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            return CheckResult::new(
                name,
                CheckStatus::Missing,
                format!("cannot run {}: {e}", cc.display()),
                family.hint(Need::Compiler),
                true,
            );
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = writeln!(stdin, "#include <{header}>");
    }
    let mut stderr = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(e) = stderr.as_mut() {
            let _ = e.read_to_string(&mut text);
        }
        text
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let errors = reader.join().unwrap_or_default();
    match status {
        Some(s) if s.success() => CheckResult::new(
            name,
            CheckStatus::Ok,
            format!("<{header}> found by {}", cc.display()),
            "",
            true,
        ),
        Some(_) => {
            let first = errors
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim();
            let detail = if first.is_empty() {
                format!("<{header}> not found")
            } else {
                format!("<{header}> not found: {first}")
            };
            CheckResult::new(name, CheckStatus::Missing, detail, family.hint(need), true)
        }
        None => CheckResult::new(
            name,
            CheckStatus::Missing,
            format!("{} did not finish in 30 s", cc.display()),
            family.hint(need),
            true,
        ),
    }
}

fn existing_ancestor(path: &Path) -> PathBuf {
    let abs = config::absolute(path).unwrap_or_else(|_| path.to_owned());
    abs.ancestors()
        .find(|p| p.exists())
        .map(Path::to_owned)
        .unwrap_or(abs)
}

/// Binds 127.0.0.1:0, connects to it, and sends a byte each way.
fn local_tcp_check(timeout: Duration) -> CheckResult {
    let name = "local TCP sockets";
    let hint = "many tests connect to 127.0.0.1/localhost: allow loopback TCP (firewall, sandbox, SELinux policy)";
    let result = (|| -> std::io::Result<String> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let addr = listener.local_addr()?;
        let mut client = TcpStream::connect_timeout(&addr, timeout)?;
        client.set_read_timeout(Some(timeout))?;
        listener.set_nonblocking(false)?;
        let (mut server, _) = listener.accept()?;
        server.set_read_timeout(Some(timeout))?;
        client.write_all(b"k")?;
        let mut byte = [0u8; 1];
        server.read_exact(&mut byte)?;
        server.write_all(b"w")?;
        client.read_exact(&mut byte)?;
        if byte != *b"w" {
            return Err(std::io::Error::other("garbled byte"));
        }
        Ok(format!(
            "listened on {addr}, connected, exchanged a byte each way"
        ))
    })();
    match result {
        Ok(detail) => CheckResult::new(name, CheckStatus::Ok, detail, "", true),
        Err(e) => CheckResult::new(name, CheckStatus::Unreachable, format!("{e}"), hint, true),
    }
}

/// `localhost` must resolve to a loopback address (from /etc/hosts).
fn localhost_check(timeout: Duration) -> CheckResult {
    let name = "localhost name";
    let hint = "add `127.0.0.1 localhost` and `::1 localhost` to /etc/hosts";
    match resolve_with_timeout("localhost", 0, timeout, |h, p| {
        (h, p).to_socket_addrs().map(Iterator::collect)
    }) {
        Ok(addrs) if !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()) => {
            let list: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
            CheckResult::new(
                name,
                CheckStatus::Ok,
                format!("localhost is {}", list.join(", ")),
                "",
                true,
            )
        }
        Ok(addrs) => CheckResult::new(
            name,
            CheckStatus::Missing,
            format!("localhost resolves to {addrs:?}, not only loopback"),
            hint,
            true,
        ),
        Err(e) => CheckResult::new(name, CheckStatus::Missing, e, hint, true),
    }
}

/// Resolves `host` in a helper thread so a hung resolver cannot block for longer than `timeout`.
pub fn resolve_with_timeout<F>(
    host: &str,
    port: u16,
    timeout: Duration,
    resolve: F,
) -> Result<Vec<SocketAddr>, String>
where
    F: FnOnce(&str, u16) -> std::io::Result<Vec<SocketAddr>> + Send + 'static,
{
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let owned = host.to_owned();
    let spawned = std::thread::Builder::new()
        .name("doctor-resolve".into())
        .spawn(move || {
            let _ = tx.send(resolve(&owned, port));
        });
    if let Err(e) = spawned {
        return Err(format!("cannot start a resolver thread: {e}"));
    }
    match rx.recv_timeout(timeout) {
        Ok(Ok(addrs)) if addrs.is_empty() => Err(format!("{host} has no address")),
        Ok(Ok(addrs)) => Ok(addrs),
        Ok(Err(e)) => Err(format!("cannot resolve {host}: {e}")),
        Err(_) => Err(format!(
            "cannot resolve {host}: no answer within {} s",
            timeout.as_secs_f64()
        )),
    }
}

fn outbound_check(target: &Target, timeout: Duration) -> CheckResult {
    let started = Instant::now();
    let addrs = resolve_with_timeout(&target.host, target.port, timeout, |h, p| {
        (h, p).to_socket_addrs().map(Iterator::collect)
    });
    let result = addrs.and_then(|addrs| {
        let mut last = String::from("no address");
        for addr in addrs.iter().take(4) {
            let left = timeout.saturating_sub(started.elapsed());
            if left.is_zero() {
                last = format!("timed out after {} s", timeout.as_secs_f64());
                break;
            }
            match TcpStream::connect_timeout(addr, left) {
                Ok(_) => {
                    return Ok(format!(
                        "connected to {addr} in {} ms",
                        started.elapsed().as_millis()
                    ));
                }
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    last = format!("{addr}: timed out after {} s", timeout.as_secs_f64())
                }
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        Err(last)
    });
    outbound_result(target, result)
}

fn outbound_result(target: &Target, result: Result<String, String>) -> CheckResult {
    let endpoint = config::format_host_port(&target.host, target.port);
    let name = format!("outbound {} ({})", target.name, target.port);
    match result {
        Ok(detail) => CheckResult::new(
            name,
            CheckStatus::Ok,
            format!("{endpoint}: {detail}"),
            "",
            false,
        ),
        Err(e) => {
            let why = if target.purpose.is_empty() {
                String::new()
            } else {
                format!(" (needed by {})", target.purpose)
            };
            CheckResult::new(
                name,
                CheckStatus::Unreachable,
                format!("{endpoint}: {e}"),
                format!(
                    "allow outbound TCP port {} to {}{why}",
                    target.port, target.host
                ),
                false,
            )
        }
    }
}

/// The table `doctor` prints, with a footnote on advisory checks and a summary.
pub fn render_table(results: &[CheckResult]) -> String {
    let rows: Vec<[String; 4]> = results
        .iter()
        .map(|r| {
            [
                format!("{}{}", r.name, if r.required { "" } else { " *" }),
                r.status.as_str().to_owned(),
                r.detail.clone(),
                r.hint.clone(),
            ]
        })
        .collect();
    let header = [
        "CHECK".to_owned(),
        "STATUS".to_owned(),
        "DETAIL".to_owned(),
        "HINT".to_owned(),
    ];
    let mut widths = [0usize; 3];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    widths[2] = widths[2].min(70);
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let line = format!(
            "{:w0$}  {:w1$}  {:w2$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.push_str(
        "\n* advisory: outbound ports do not decide the exit status. CPython's network tests are skipped\n  \
         when a port is unreachable, so the worker still runs builds; open them for full coverage.\n  \
         Required: tools, headers, CPUs, memory, disk, local sockets.\n",
    );
    let failed: Vec<&str> = results
        .iter()
        .filter(|r| r.required && r.failed())
        .map(|r| r.name.as_str())
        .collect();
    if failed.is_empty() {
        out.push_str("\nAll required checks passed.\n");
    } else {
        out.push_str(&format!(
            "\n{} required check(s) failed: {}.\n",
            failed.len(),
            failed.join(", ")
        ));
    }
    out
}

/// Packaging families, for install hints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PkgFamily {
    Apt,
    Dnf,
    Zypper,
    Apk,
    Pacman,
    FreeBsd,
    MacOs,
    Windows,
    Unknown,
}

#[derive(Debug, Clone, Copy)]
enum Need {
    Git,
    Compiler,
    Linker,
    Make,
    Zlib,
    Openssl,
}

impl PkgFamily {
    fn detect() -> PkgFamily {
        if cfg!(target_os = "macos") {
            return PkgFamily::MacOs;
        }
        if cfg!(target_os = "freebsd") {
            return PkgFamily::FreeBsd;
        }
        if cfg!(windows) {
            return PkgFamily::Windows;
        }
        let ids = format!(
            "{} {}",
            machine::os_release_value("ID").unwrap_or_default(),
            machine::os_release_value("ID_LIKE").unwrap_or_default()
        );
        let has = |w: &str| ids.split_whitespace().any(|id| id == w);
        if has("debian") || has("ubuntu") {
            PkgFamily::Apt
        } else if has("fedora") || has("rhel") || has("centos") {
            PkgFamily::Dnf
        } else if has("suse") || has("opensuse") || ids.contains("suse") {
            PkgFamily::Zypper
        } else if has("alpine") {
            PkgFamily::Apk
        } else if has("arch") {
            PkgFamily::Pacman
        } else {
            PkgFamily::Unknown
        }
    }

    fn hint(self, need: Need) -> String {
        use Need::*;
        let pkg = |apt: &str, dnf: &str, zypper: &str, apk: &str, pacman: &str| match self {
            PkgFamily::Apt => format!("apt-get install {apt}"),
            PkgFamily::Dnf => format!("dnf install {dnf}"),
            PkgFamily::Zypper => format!("zypper install {zypper}"),
            PkgFamily::Apk => format!("apk add {apk}"),
            PkgFamily::Pacman => format!("pacman -S {pacman}"),
            _ => format!("apt-get install {apt} / dnf install {dnf}"),
        };
        match (self, need) {
            (PkgFamily::MacOs, Openssl) => "brew install openssl@3 (and configure CPython --with-openssl=$(brew --prefix openssl@3))".into(),
            (PkgFamily::MacOs, _) => "xcode-select --install".into(),
            (PkgFamily::FreeBsd, Git) => "pkg install git".into(),
            (PkgFamily::FreeBsd, Make) => "pkg install gmake (or use the base system's make)".into(),
            (PkgFamily::FreeBsd, _) => "part of the FreeBSD base system: reinstall the base/toolchain set".into(),
            (PkgFamily::Windows, Git) => "install Git for Windows and put it on PATH".into(),
            (PkgFamily::Windows, _) => "install Visual Studio Build Tools (C++ workload) and run from its developer prompt".into(),
            (_, Git) => pkg("git", "git", "git", "git", "git"),
            (_, Compiler) => pkg("build-essential", "gcc", "gcc", "build-base", "base-devel"),
            (_, Linker) => pkg("binutils", "binutils", "binutils", "binutils", "binutils"),
            (_, Make) => pkg("make", "make", "make", "make", "make"),
            (_, Zlib) => pkg("zlib1g-dev", "zlib-devel", "zlib-devel", "zlib-dev", "zlib"),
            (_, Openssl) => pkg("libssl-dev", "openssl-devel", "libopenssl-devel", "openssl-dev", "openssl"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution_times_out_instead_of_hanging() {
        let started = Instant::now();
        let r = resolve_with_timeout("slow.example", 80, Duration::from_millis(200), |_, _| {
            std::thread::sleep(Duration::from_secs(5));
            Ok(vec![])
        });
        assert!(r.unwrap_err().contains("no answer"));
        assert!(started.elapsed() < Duration::from_secs(2));
        let r = resolve_with_timeout("bad.example", 80, Duration::from_secs(1), |_, _| {
            Err(std::io::Error::other("NXDOMAIN"))
        });
        assert!(r.unwrap_err().contains("NXDOMAIN"));
        assert_eq!(
            resolve_with_timeout("::1", 5, Duration::ZERO, |_, _| unreachable!()).unwrap(),
            vec!["[::1]:5".parse().unwrap()]
        );
    }

    #[test]
    fn outbound_loopback_ok_and_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap().port();
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let ok = outbound_check(
            &Target::new("open", "127.0.0.1", open, ""),
            Duration::from_secs(2),
        );
        assert_eq!(ok.status, CheckStatus::Ok, "{ok:?}");
        assert!(!ok.required);
        let bad = outbound_check(
            &Target::new("closed", "127.0.0.1", closed, "x"),
            Duration::from_secs(2),
        );
        assert_eq!(bad.status, CheckStatus::Unreachable, "{bad:?}");
        assert!(bad.hint.contains(&closed.to_string()));
    }

    #[test]
    fn table_and_required() {
        let rows = vec![
            CheckResult::new("git", CheckStatus::Ok, "/usr/bin/git", "ignored", true),
            CheckResult::new(
                "outbound http (80)",
                CheckStatus::Unreachable,
                "python.org:80: refused",
                "open it",
                false,
            ),
        ];
        assert!(required_ok(&rows));
        assert_eq!(rows[0].hint, "");
        let table = render_table(&rows);
        assert!(
            table.contains("outbound http (80) *") && table.contains("All required checks passed."),
            "{table}"
        );
        let mut rows = rows;
        rows.push(CheckResult::new(
            "make",
            CheckStatus::Missing,
            "no make",
            "apt-get install make",
            true,
        ));
        assert!(!required_ok(&rows));
        assert!(render_table(&rows).contains("1 required check(s) failed: make."));
    }

    #[test]
    fn hints_name_packages() {
        assert_eq!(
            PkgFamily::Apt.hint(Need::Zlib),
            "apt-get install zlib1g-dev"
        );
        assert_eq!(PkgFamily::Dnf.hint(Need::Zlib), "dnf install zlib-devel");
        assert!(
            PkgFamily::Unknown
                .hint(Need::Openssl)
                .contains("libssl-dev")
                && PkgFamily::Unknown
                    .hint(Need::Openssl)
                    .contains("openssl-devel")
        );
    }
}
