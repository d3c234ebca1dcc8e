//! `run`, `start`, `stop`, `restart` and `reconfig`: the master process's life.
//!
//! Same shape as `kiln-worker`'s (both use kiln-daemon): `DIR/kiln.pid` is held with an
//! exclusive `flock` for the master's whole life ([`kiln_daemon::pidfile`]), so a pidfile left
//! by a crash is never mistaken for a live master and its pid is never signalled. `start`
//! checks the config in the foreground, detaches ([`kiln_daemon::daemon`]) and waits for the
//! daemon to report that [`Master::start`] returned (both ports listening) or failed. The
//! tokio runtime is built only after detaching.
//!
//! Signals: SIGHUP → [`Master::reconfig`] (result logged as `reconfig: OK ...` or
//! `reconfig: FAILED ...`, which `kiln reconfig` follows in the log); SIGTERM/SIGINT →
//! [`Master::shutdown`], exit 0.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use kiln_daemon::logging::RotatingLog;
use kiln_daemon::pidfile::{self, LockError, PidLock, Status};
use kiln_daemon::signals::{Sig, Signals};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::master::{Master, MasterOptions};

/// The pidfile in the master directory.
pub const PID_FILE: &str = "kiln.pid";
/// The log file in the master directory (rotated at 10 MB, 10 kept).
pub const LOG_FILE: &str = "kiln.log";
/// Logged once both ports listen; `start` prints this line.
pub const UP_MARKER: &str = "kiln master is up";
/// Prefixes of the reconfig outcome in the log; `kiln reconfig` waits for one of them.
pub const RECONFIG_OK: &str = "reconfig: OK";
pub const RECONFIG_FAILED: &str = "reconfig: FAILED";
/// Log filter variable (tracing-subscriber `EnvFilter` syntax), default `info`.
pub const LOG_ENV: &str = "KILN_LOG";

const LOG_SIZE: u64 = 10_000_000;
const LOG_COUNT: u32 = 10;

pub fn pid_path(dir: &Path) -> PathBuf {
    dir.join(PID_FILE)
}

pub fn log_path(dir: &Path) -> PathBuf {
    dir.join(LOG_FILE)
}

/// Logs to `DIR/kiln.log`, and to stderr as well when `stderr` (foreground runs).
pub fn init_logging(dir: &Path, stderr: bool) -> anyhow::Result<()> {
    let path = log_path(dir);
    let file = RotatingLog::open(&path, LOG_SIZE, LOG_COUNT)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let filter = || EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new("info"));
    let file_layer = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(file)
        .with_filter(filter());
    let stderr_layer = stderr.then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter())
    });
    tracing_subscriber::registry()
        .with(file_layer)
        .with(stderr_layer)
        .try_init()
        .context("cannot install the logger")?;
    Ok(())
}

use tracing_subscriber::Layer as _;

/// A master directory: absolute, and holding a `master.star`.
fn master_dir(basedir: &Path) -> anyhow::Result<PathBuf> {
    let dir = super::create::absolute(basedir)?;
    if !dir.join(kiln_config::DEFAULT_FILE).exists() && !pid_path(&dir).exists() {
        bail!(
            "{} is not a kiln master directory (no {}); create one with `kiln create-master {}`",
            dir.display(),
            kiln_config::DEFAULT_FILE,
            basedir.display()
        );
    }
    Ok(dir)
}

/// Checks `master.star` before anything is started, so errors land on the terminal.
fn check_config(dir: &Path) -> anyhow::Result<()> {
    if let Err(e) = kiln_config::check(dir) {
        bail!(
            "{} is broken; the master was not started:\n{e}",
            dir.join(kiln_config::DEFAULT_FILE).display()
        );
    }
    Ok(())
}

fn held_message(dir: &Path, pid: Option<u32>) -> String {
    let who = pid.map_or_else(String::new, |p| format!(" (pid {p})"));
    format!(
        "a kiln master is already running in {d}{who}: it holds the lock on {d}/{PID_FILE}. \
         Stop it with `kiln stop {d}`, or use `kiln restart {d}`",
        d = dir.display()
    )
}

/// Takes the pidfile lock; `Err(message)` when a live master holds it.
fn lock_master(dir: &Path) -> anyhow::Result<Result<PidLock, String>> {
    match PidLock::acquire(&pid_path(dir)) {
        Ok(lock) => Ok(Ok(lock)),
        Err(LockError::Held { pid, .. }) => Ok(Err(held_message(dir, pid))),
        Err(e) => Err(e.into()),
    }
}

#[cfg(unix)]
type Reporter = kiln_daemon::daemon::Reporter;
#[cfg(not(unix))]
type Reporter = ();

/// `kiln run DIR`.
pub fn run(basedir: &Path) -> anyhow::Result<ExitCode> {
    let dir = master_dir(basedir)?;
    check_config(&dir)?;
    let lock = match lock_master(&dir)? {
        Ok(lock) => lock,
        Err(message) => {
            eprintln!("kiln: {message}");
            return Ok(ExitCode::FAILURE);
        }
    };
    init_logging(&dir, true)?;
    master_main(MasterOptions::new(&dir), lock, None)
}

/// The master proper: runtime, signals, pid, [`Master::start`], then serve until SIGTERM.
fn master_main(
    opts: MasterOptions,
    mut lock: PidLock,
    mut report: Option<Reporter>,
) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("kiln")
        .build()
        .context("cannot start the async runtime")?;
    let result: anyhow::Result<()> = runtime.block_on(async {
        let mut signals = Signals::install()
            .and_then(Signals::with_hup)
            .context("cannot install signal handlers")?;
        lock.write_pid(std::process::id())
            .with_context(|| format!("cannot write {}", lock.path().display()))?;
        tracing::info!(
            pid = std::process::id(),
            basedir = %opts.basedir.display(),
            "kiln master {} starting",
            env!("CARGO_PKG_VERSION")
        );
        let master = Master::start(opts).await?;
        tracing::info!(
            "{UP_MARKER}: web http://{}/ workers ws://{}",
            master.web_addr(),
            master.worker_addr()
        );
        #[cfg(unix)]
        if let Some(r) = report.as_mut() {
            r.ready();
        }
        loop {
            match signals.next().await {
                Sig::Hup => match master.reconfig().await {
                    Ok(rep) => tracing::info!("{RECONFIG_OK} {}", rep.summary),
                    Err(e) => tracing::error!("{RECONFIG_FAILED} {}", one_entry(&e.to_string())),
                },
                Sig::Stop(name) => {
                    tracing::info!("{name}: shutting down");
                    break;
                }
                Sig::Usr1 => {}
            }
        }
        master.shutdown().await;
        Ok(())
    });
    #[cfg(unix)]
    if let (Some(r), Err(e)) = (report.as_mut(), &result) {
        r.failed(&format!("{e:#}"));
    }
    #[cfg(not(unix))]
    let _ = &mut report;
    runtime.shutdown_timeout(Duration::from_secs(5));
    drop(lock);
    match result {
        Ok(()) => {
            tracing::info!("kiln master stopped");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            tracing::error!("kiln master stopped: {e:#}");
            Err(e)
        }
    }
}

/// A multi-line message as one log entry: continuation lines indented by four spaces,
/// which is how `kiln reconfig` tells them from the next entry.
fn one_entry(text: &str) -> String {
    text.trim_end().replace('\n', "\n    ")
}

/// `kiln start DIR`: detach, then wait until the master listens (exit 0) or fails (exit 1).
#[cfg(unix)]
pub fn start(basedir: &Path, wait: Duration) -> anyhow::Result<ExitCode> {
    use kiln_daemon::daemon::{Forked, Report, daemonize};
    let dir = master_dir(basedir)?;
    check_config(&dir)?;
    let lock = match lock_master(&dir)? {
        Ok(lock) => lock,
        Err(message) => {
            eprintln!("kiln: {message}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let log = log_path(&dir);
    let offset = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    match daemonize(&dir)? {
        Forked::Daemon(mut reporter) => {
            // The detached master: errors go to the report (and the log once it is open).
            if let Err(e) = init_logging(&dir, false) {
                reporter.failed(&format!("{e:#}"));
                std::process::exit(1);
            }
            let code = match master_main(MasterOptions::new(&dir), lock, Some(reporter)) {
                Ok(_) => 0,
                Err(_) => 1,
            };
            std::process::exit(code);
        }
        Forked::Parent(reader) => {
            lock.close_inherited();
            match reader.wait(wait) {
                Report::Ready { pid } => {
                    if let Some(line) = find_in_log(&log, offset, UP_MARKER) {
                        println!("{line}");
                    }
                    println!("kiln master started (pid {pid}); log: {}", log.display());
                    Ok(ExitCode::SUCCESS)
                }
                Report::Failed(why) => {
                    eprintln!(
                        "kiln: the master could not start: {why}\n(more in {})",
                        log.display()
                    );
                    Ok(ExitCode::FAILURE)
                }
                Report::Silent => {
                    let running = matches!(pidfile::probe(&pid_path(&dir)), Ok(Status::Running(_)));
                    if running {
                        eprintln!(
                            "kiln: the master is still starting after {} s; it keeps going in the \
                             background. Watch {} for \"{UP_MARKER}\", or stop it with `kiln stop {}`",
                            wait.as_secs(),
                            log.display(),
                            dir.display()
                        );
                    } else {
                        eprintln!(
                            "kiln: the master exited during startup; the reason is at the end of its log:\n  tail -n 50 {}",
                            log.display()
                        );
                    }
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}

#[cfg(not(unix))]
pub fn start(basedir: &Path, _wait: Duration) -> anyhow::Result<ExitCode> {
    bail!(
        "`kiln start` cannot detach on this system; run `kiln run {}` under a service manager",
        basedir.display()
    )
}

/// The first complete line containing `needle` in `log` after `offset`.
fn find_in_log(log: &Path, offset: u64, needle: &str) -> Option<String> {
    let text = read_from(log, offset)?;
    text.lines()
        .find(|l| l.contains(needle))
        .map(|l| l[l.find(needle).unwrap_or(0)..].to_owned())
}

fn read_from(log: &Path, offset: u64) -> Option<String> {
    let mut f = std::fs::File::open(log).ok()?;
    let len = f.metadata().ok()?.len();
    // A rotation since `offset` was taken: read the new file from its start.
    f.seek(SeekFrom::Start(if len < offset { 0 } else { offset }))
        .ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// The running master's pid, or a message saying why there is none.
fn running_pid(dir: &Path) -> anyhow::Result<Result<u32, String>> {
    let path = pid_path(dir);
    Ok(
        match pidfile::probe_with_pid(&path, Duration::from_secs(2))
            .with_context(|| format!("cannot read {}", path.display()))?
        {
            Status::NoFile => Err("master not running".to_owned()),
            Status::Stale(pid) => Err(match pid {
                Some(pid) => format!(
                    "master not running ({PID_FILE} names pid {pid}, but no master holds its lock: \
                     it was left by a crash or reboot; pid {pid} was not signalled)"
                ),
                None => "master not running".to_owned(),
            }),
            Status::Running(None) => bail!(
                "a master holds the lock on {} but has not written its pid yet; it may be starting: try again",
                path.display()
            ),
            Status::Running(Some(pid)) => Ok(pid),
        },
    )
}

#[cfg(unix)]
fn signal(pid: u32, sig: nix::sys::signal::Signal) -> anyhow::Result<()> {
    let target = nix::unistd::Pid::from_raw(i32::try_from(pid).context("pid out of range")?);
    nix::sys::signal::kill(target, sig)
        .with_context(|| format!("cannot send {sig} to the master (pid {pid})"))
}

/// `kiln stop DIR`: SIGTERM, wait; after `timeout` SIGKILL (unless `clean`).
#[cfg(unix)]
pub fn stop(basedir: &Path, clean: bool, timeout: Duration) -> anyhow::Result<ExitCode> {
    use nix::sys::signal::Signal;
    let dir = master_dir(basedir)?;
    let pid = match running_pid(&dir)? {
        Ok(pid) => pid,
        Err(message) => {
            println!("{message}");
            return Ok(ExitCode::SUCCESS);
        }
    };
    signal(pid, Signal::SIGTERM)?;
    let path = pid_path(&dir);
    let note = |waited: Duration| {
        println!(
            "still waiting for the master (pid {pid}) to shut down ({} s)",
            waited.as_secs()
        )
    };
    let killed = if clean {
        pidfile::wait_released(&path, None, note);
        false
    } else if pidfile::wait_released(&path, Some(timeout), |_| {}) {
        false
    } else {
        eprintln!(
            "the master (pid {pid}) did not stop within {} s; sending SIGKILL",
            timeout.as_secs()
        );
        signal(pid, Signal::SIGKILL)?;
        if !pidfile::wait_released(&path, Some(Duration::from_secs(10)), |_| {}) {
            eprintln!(
                "never saw process {pid} go away, even after SIGKILL; it still holds {}",
                path.display()
            );
            return Ok(ExitCode::FAILURE);
        }
        true
    };
    if killed {
        // A killed master cannot remove its pidfile; it is stale now (unlocked), so harmless,
        // but tidy it if it still names that pid.
        if pidfile::read_pid(&path) == Some(pid) {
            let _ = std::fs::remove_file(&path);
        }
    }
    println!("master process {pid} is dead");
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(unix))]
pub fn stop(basedir: &Path, _clean: bool, _timeout: Duration) -> anyhow::Result<ExitCode> {
    bail!(
        "`kiln stop` is not supported on this system; stop `kiln run {}` with Ctrl-C",
        basedir.display()
    )
}

/// `kiln restart DIR`: stop (a failure is reported, not fatal), then start.
pub fn restart(basedir: &Path, wait: Duration) -> anyhow::Result<ExitCode> {
    if let Err(e) = stop(basedir, false, Duration::from_secs(10)) {
        eprintln!("kiln: stopping the old master failed ({e:#}); starting anyway");
    }
    start(basedir, wait)
}

/// `kiln reconfig DIR`: SIGHUP, then print the outcome the master logs.
#[cfg(unix)]
pub fn reconfig(basedir: &Path, wait: Duration) -> anyhow::Result<ExitCode> {
    let dir = master_dir(basedir)?;
    let pid = match running_pid(&dir)? {
        Ok(pid) => pid,
        Err(message) => {
            eprintln!(
                "kiln: {message}; start it with `kiln start {}`",
                dir.display()
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    let log = log_path(&dir);
    let offset = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    signal(pid, nix::sys::signal::Signal::SIGHUP)?;
    println!("sent SIGHUP to the master (pid {pid}); waiting for its reconfig ...");
    let deadline = Instant::now() + wait;
    loop {
        std::thread::sleep(Duration::from_millis(100));
        if let Some(text) = read_from(&log, offset)
            && let Some(outcome) = reconfig_outcome(&text)
        {
            return Ok(match outcome {
                Ok(line) => {
                    println!("{line}");
                    ExitCode::SUCCESS
                }
                Err(lines) => {
                    eprintln!("{lines}");
                    eprintln!(
                        "the master keeps running its previous config; fix {} and run `kiln reconfig` again",
                        dir.join(kiln_config::DEFAULT_FILE).display()
                    );
                    ExitCode::FAILURE
                }
            });
        }
        if !matches!(pidfile::probe(&pid_path(&dir)), Ok(Status::Running(_))) {
            eprintln!(
                "kiln: the master (pid {pid}) exited; see the end of {}",
                log.display()
            );
            return Ok(ExitCode::FAILURE);
        }
        if Instant::now() >= deadline {
            eprintln!(
                "kiln: no reconfig result in {} after {} s; look there for \"reconfig:\"",
                log.display(),
                wait.as_secs()
            );
            return Ok(ExitCode::FAILURE);
        }
    }
}

#[cfg(not(unix))]
pub fn reconfig(basedir: &Path, _wait: Duration) -> anyhow::Result<ExitCode> {
    bail!(
        "`kiln reconfig` needs signals; restart `kiln run {}` instead",
        basedir.display()
    )
}

/// Finds the reconfig outcome in log text: `Ok(line)` or `Err(lines)` (the FAILED entry
/// with its indented continuation lines). `None` until a complete entry is there.
pub fn reconfig_outcome(text: &str) -> Option<Result<String, String>> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    for (i, line) in lines.iter().enumerate() {
        if !line.ends_with('\n') {
            return None; // still being written
        }
        if let Some(at) = line.find(RECONFIG_OK) {
            return Some(Ok(line[at..].trim_end().to_owned()));
        }
        if let Some(at) = line.find(RECONFIG_FAILED) {
            let mut out = line[at..].trim_end().to_owned();
            let mut j = i + 1;
            while j < lines.len() && lines[j].starts_with("    ") {
                if !lines[j].ends_with('\n') {
                    return None;
                }
                out.push('\n');
                out.push_str(lines[j].trim_end());
                j += 1;
            }
            if j == lines.len() {
                // A continuation line may still come; the master writes an entry in one
                // write, so the entry is complete when anything follows or after a moment.
                std::thread::sleep(Duration::from_millis(200));
            }
            return Some(Err(out));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconfig_outcome_reads_ok_and_multiline_failures() {
        assert_eq!(reconfig_outcome("x INFO a: starting\n"), None);
        assert_eq!(
            reconfig_outcome("x INFO a: reconfig: OK 2 builders chan"),
            None
        );
        assert_eq!(
            reconfig_outcome("t INFO k: reconfig: OK builders +1\n"),
            Some(Ok("reconfig: OK builders +1".into()))
        );
        let failed = format!(
            "t ERROR k: {RECONFIG_FAILED} {}\nt INFO k: other\n",
            one_entry("m.star:3:1: error: a\nm.star:9:5: error: b\n")
        );
        assert_eq!(
            reconfig_outcome(&failed),
            Some(Err(
                "reconfig: FAILED m.star:3:1: error: a\n    m.star:9:5: error: b".into()
            ))
        );
    }
}
