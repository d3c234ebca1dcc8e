//! `run`, `start`, `stop`, `restart` and `status`: the worker process's life.
//!
//! `run` stays in the foreground (for systemd and friends) and logs to stderr and
//! the log file. `start` checks everything it can in the foreground, detaches
//! (Unix), then follows the log for `message from master: attached` like
//! buildbot-worker does. The tokio runtime is built only after detaching.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::sync::watch;

use kiln_daemon::logging;
use kiln_daemon::pidfile::{self, LockError, PidLock, Status};
use kiln_daemon::signals::{Sig, Signals};

use crate::commands::process;
use crate::config::{self, WorkerConfig};
use crate::connection::{self, StopRequest};

/// File name of the pidfile inside the base directory.
pub const PID_FILE: &str = "kiln-worker.pid";

/// File name of the log inside the base directory (rotated at `log_size`, `log_count` kept).
pub const LOG_FILE: &str = "kiln-worker.log";

/// Environment variable holding the log filter.
pub const LOG_ENV: &str = "KILN_WORKER_LOG";

/// The log line that tells `start` a master has accepted the worker.
pub const ATTACHED_MARKER: &str = "message from master: attached";

/// File the worker writes its host name into at start (like twistd.hostname).
pub const HOSTNAME_FILE: &str = "kiln-worker.hostname";

/// How long `stop` waits for the worker to exit (graceful stops wait for ever).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Options of `start` (and `restart`).
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// Print nothing and don't follow the log.
    pub quiet: bool,
    /// Stay in the foreground (same as `run`).
    pub nodaemon: bool,
    /// How long to wait for a master to attach; zero = don't wait.
    pub wait: Duration,
}

/// Loads the config and checks what can be checked before detaching.
pub fn prepare(basedir: &Path) -> anyhow::Result<WorkerConfig> {
    let mut config = WorkerConfig::load(basedir)?;
    if config.password_file.is_some() {
        config.password = config.resolved_password()?;
        config.password_file = None;
    }
    check_user_policy(&config)?;
    Ok(config)
}

/// Checks `run_as`/`allow_root`, and warns when builds would be refused (root without either).
#[cfg(unix)]
fn check_user_policy(config: &WorkerConfig) -> anyhow::Result<()> {
    use nix::unistd::{User, geteuid};
    let euid = geteuid();
    if let Some(name) = &config.run_as {
        let Some(user) = User::from_name(name).ok().flatten() else {
            bail!(
                "run_as = {name:?} in {}: no such user on this machine",
                config::CONFIG_FILE
            );
        };
        if !euid.is_root() && user.uid != euid {
            bail!(
                "run_as = {name:?}: switching builds to another user needs the worker to run as root; \
                 start it as root, or remove run_as from {}",
                config::CONFIG_FILE
            );
        }
        if user.uid.is_root() && !config.allow_root {
            bail!(
                "run_as = {name:?} is root; set allow_root = true in {} if you really mean it",
                config::CONFIG_FILE
            );
        }
    } else if euid.is_root() && !config.allow_root {
        // The worker still connects, so the master's admins see why its builds fail:
        // every build command is refused with this same advice in the step log.
        let advice = format!(
            "kiln-worker is running as root and will refuse every build command. Run it as an \
             unprivileged user (e.g. `su - buildbot -c 'kiln-worker start {dir}'`), or set \
             run_as = \"USER\" (builds run as USER) or allow_root = true in {dir}/{}",
            config::CONFIG_FILE,
            dir = config.basedir.display()
        );
        eprintln!("warning: {advice}");
        tracing::warn!("{advice}");
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_user_policy(_config: &WorkerConfig) -> anyhow::Result<()> {
    Ok(())
}

/// The configured umask; a daemon without one gets 077, as `buildbot-worker start`
/// (twistd) gives its builds, so files a build writes stay private to its user. In the
/// foreground (`run`, under a service manager) the inherited umask is kept, as twistd does.
fn apply_umask(config: &WorkerConfig, daemon: bool) {
    #[cfg(unix)]
    if let Some(umask) = config.umask.or(daemon.then_some(0o077)) {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(
            umask as nix::libc::mode_t,
        ));
    }
    #[cfg(not(unix))]
    let _ = (config, daemon);
}

/// The pidfile path in `basedir`.
pub fn pid_path(basedir: &Path) -> PathBuf {
    basedir.join(PID_FILE)
}

fn lock_or_report(path: &Path) -> anyhow::Result<Result<PidLock, String>> {
    match PidLock::acquire(path) {
        Ok(lock) => Ok(Ok(lock)),
        Err(LockError::Held { path, pid }) => Ok(Err(held_message(&path, pid))),
        Err(e) => Err(e.into()),
    }
}

fn held_message(path: &Path, pid: Option<u32>) -> String {
    let dir = path.parent().unwrap_or(Path::new(".")).display();
    match pid {
        Some(pid) => format!(
            "a kiln-worker is already running in {dir} (pid {pid}, it holds the lock on {PID_FILE}); \
             stop it first with `kiln-worker stop {dir}`, or use `kiln-worker restart {dir}`"
        ),
        None => format!(
            "a kiln-worker is already running in {dir} (it holds the lock on {PID_FILE}); stop it first"
        ),
    }
}

/// `kiln-worker run BASEDIR`: the worker in the foreground.
pub fn run(basedir: &Path) -> anyhow::Result<ExitCode> {
    let config = prepare(basedir)?;
    let lock = match lock_or_report(&pid_path(&config.basedir))? {
        Ok(lock) => lock,
        Err(message) => {
            eprintln!("kiln-worker: {message}");
            return Ok(ExitCode::FAILURE);
        }
    };
    std::env::set_current_dir(&config.basedir)
        .with_context(|| format!("cannot chdir to {}", config.basedir.display()))?;
    apply_umask(&config, false);
    let log = config.basedir.join(LOG_FILE);
    logging::init(&log, config.log_size, config.log_count, LOG_ENV, true)
        .context("cannot open the log")?;
    worker_main(config, lock, None)
}

#[cfg(unix)]
type Reporter = kiln_daemon::daemon::Reporter;
#[cfg(not(unix))]
type Reporter = ();

/// The worker proper: runtime, signals, pid, `serve`. Returns when `serve` does.
fn worker_main(
    config: WorkerConfig,
    mut lock: PidLock,
    mut report: Option<Reporter>,
) -> anyhow::Result<ExitCode> {
    let _ = std::fs::write(
        config.basedir.join(HOSTNAME_FILE),
        format!("{}\n", crate::machine::hostname()),
    );
    // One thread for the connection, its writer and every command: they hand each
    // other a message per step, and a hop between threads costs a context switch
    // each (blocking work goes to the blocking pool, whose threads are named too).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("kiln-worker")
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async {
        let (stop_tx, stop_rx) = watch::channel(StopRequest::Running);
        let signals = Signals::install()
            .and_then(Signals::with_usr1)
            .context("cannot install signal handlers")?;
        lock.write_pid(std::process::id())
            .with_context(|| format!("cannot write {}", lock.path().display()))?;
        tracing::info!(
            pid = std::process::id(),
            basedir = %config.basedir.display(),
            master = %config.master_address(),
            name = %config.name,
            "kiln-worker {} starting",
            env!("CARGO_PKG_VERSION")
        );
        // Before anything runs and before the first connection: what a crashed run
        // left must not run next to the builds the master retries, in the same
        // directories. (It blocks: nothing else runs on this runtime yet.)
        process::kill_leftovers_of_previous_run(&config.basedir);
        if let Err(e) = process::start_run_record(&config.basedir) {
            tracing::warn!(
                "cannot write {} in {}: {e}; should this worker crash, its builds' processes may be \
                 left running (check the directory's owner and free space)",
                process::RUN_RECORD_FILE,
                config.basedir.display()
            );
        }
        #[cfg(unix)]
        if let Some(r) = report.as_mut() {
            r.ready();
        }
        tokio::spawn(forward_signals(signals, stop_tx));
        Ok(connection::serve(config, stop_rx).await?)
    });
    #[cfg(unix)]
    if let (Some(r), Err(e)) = (report.as_mut(), &result) {
        r.failed(&format!("{e:#}"));
    }
    #[cfg(not(unix))]
    let _ = &mut report;
    runtime.shutdown_timeout(Duration::from_secs(5));
    // The runtime's tasks are gone, and with them the running commands (killed on
    // drop): what is left is background processes of finished builds.
    process::end_run_record();
    drop(lock);
    match result {
        Ok(()) => {
            tracing::info!("kiln-worker stopped");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            tracing::error!("kiln-worker stopped: {e:#}");
            Err(e)
        }
    }
}

/// SIGTERM/SIGINT (Ctrl-C) → [`StopRequest::Now`]; SIGUSR1 → [`StopRequest::Graceful`].
async fn forward_signals(mut signals: Signals, stop: watch::Sender<StopRequest>) {
    loop {
        match signals.next().await {
            Sig::Stop(name) => {
                tracing::info!("{name}: stopping now");
                stop.send_replace(StopRequest::Now);
            }
            Sig::Usr1 if *stop.borrow() == StopRequest::Running => {
                tracing::info!("SIGUSR1: stopping once the running builds have finished");
                stop.send_replace(StopRequest::Graceful);
            }
            Sig::Usr1 | Sig::Hup => {}
        }
    }
}

/// `kiln-worker start BASEDIR`.
#[cfg(unix)]
pub fn start(basedir: &Path, opts: &StartOptions) -> anyhow::Result<ExitCode> {
    use kiln_daemon::daemon::{Forked, Report, daemonize};
    if opts.nodaemon {
        return run(basedir);
    }
    let config = prepare(basedir)?;
    let dir = config.basedir.clone();
    let lock = match lock_or_report(&pid_path(&dir))? {
        Ok(lock) => lock,
        Err(message) => {
            eprintln!("kiln-worker: {message}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let log_path = dir.join(LOG_FILE);
    let log_offset = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);

    match daemonize(&dir)? {
        Forked::Daemon(mut reporter) => {
            // The detached worker. Errors end up in the report (and the log if it is open).
            apply_umask(&config, true);
            if let Err(e) =
                logging::init(&log_path, config.log_size, config.log_count, LOG_ENV, false)
            {
                reporter.failed(&format!("cannot open {}: {e}", log_path.display()));
                std::process::exit(1);
            }
            let code = match worker_main(config, lock, Some(reporter)) {
                Ok(_) => 0,
                Err(_) => 1,
            };
            std::process::exit(code);
        }
        Forked::Parent(reader) => {
            lock.close_inherited();
            let pid = match reader.wait(Duration::from_secs(30)) {
                Report::Ready { pid } => pid,
                Report::Failed(why) => {
                    eprintln!("kiln-worker: the worker could not start: {why}");
                    return Ok(ExitCode::FAILURE);
                }
                Report::Silent => {
                    eprintln!(
                        "kiln-worker: the worker did not report back after starting; see {}",
                        log_path.display()
                    );
                    return Ok(ExitCode::FAILURE);
                }
            };
            if opts.quiet {
                return Ok(ExitCode::SUCCESS);
            }
            if opts.wait.is_zero() {
                println!(
                    "kiln-worker started in the background (pid {pid}); log: {}",
                    log_path.display()
                );
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "Following {} until a master attaches (up to {} s) ...",
                log_path.display(),
                opts.wait.as_secs_f64()
            );
            match follow_log(&log_path, log_offset, &pid_path(&dir), opts.wait) {
                Follow::Attached => {
                    println!("kiln-worker appears to have (re)started correctly (pid {pid}).");
                    Ok(ExitCode::SUCCESS)
                }
                Follow::Exited => {
                    eprintln!(
                        "kiln-worker (pid {pid}) exited during startup. The reason is at the end of its log:\n  tail -n 50 {}",
                        log_path.display()
                    );
                    Ok(ExitCode::FAILURE)
                }
                Follow::TimedOut => {
                    eprintln!("{}", troubleshooting(&dir, pid, opts.wait));
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}

#[cfg(not(unix))]
pub fn start(basedir: &Path, opts: &StartOptions) -> anyhow::Result<ExitCode> {
    if opts.nodaemon {
        return run(basedir);
    }
    unsupported("start", basedir)
}

#[cfg(not(unix))]
fn unsupported(what: &str, basedir: &Path) -> anyhow::Result<ExitCode> {
    bail!(
        "`kiln-worker {what}` is not supported on this system (it cannot detach from the console). \
         Run `kiln-worker run {}` in the foreground, under a service manager (e.g. a Windows service \
         wrapper such as NSSM, or the Task Scheduler \"at startup\")",
        basedir.display()
    )
}

#[cfg_attr(not(unix), allow(dead_code))]
fn troubleshooting(dir: &Path, pid: u32, wait: Duration) -> String {
    let log = dir.join(LOG_FILE);
    format!(
        "The kiln-worker process (pid {pid}) is running, but no master attached within {} s.\n\
         It keeps retrying in the background. Look at the end of its log for the reason:\n\
         \x20   tail -n 50 {log}\n\
         Common causes: a wrong master host or port, a firewall blocking the connection,\n\
         or a worker name or password the master does not know (check {dir}/{cfg}).\n\
         Stop it with `kiln-worker stop {dir}`; if the master is just slow, wait and\n\
         look for \"{ATTACHED_MARKER}\" in the log.",
        wait.as_secs_f64(),
        log = log.display(),
        dir = dir.display(),
        cfg = config::CONFIG_FILE,
    )
}

#[cfg_attr(not(unix), allow(dead_code))]
#[derive(Debug, PartialEq, Eq)]
enum Follow {
    Attached,
    Exited,
    TimedOut,
}

/// Reads the log from `offset` on until the attached marker appears, the worker
/// lets go of the pidfile lock, or `wait` passes.
#[cfg_attr(not(unix), allow(dead_code))]
fn follow_log(log: &Path, mut offset: u64, pid_path: &Path, wait: Duration) -> Follow {
    let deadline = Instant::now() + wait;
    let mut carry = String::new();
    loop {
        if let Ok(mut f) = std::fs::File::open(log) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            if len < offset {
                offset = 0; // rotated
            }
            if f.seek(SeekFrom::Start(offset)).is_ok() {
                let mut buf = Vec::new();
                if let Ok(n) = f.read_to_end(&mut buf) {
                    offset += n as u64;
                    carry.push_str(&String::from_utf8_lossy(&buf));
                    if carry.contains(ATTACHED_MARKER) {
                        return Follow::Attached;
                    }
                    // Keep only the unfinished last line.
                    let keep_from = carry.rfind('\n').map_or(0, |i| i + 1);
                    carry.drain(..keep_from);
                }
            }
        }
        if !matches!(pidfile::probe(pid_path), Ok(Status::Running(_))) {
            return Follow::Exited;
        }
        if Instant::now() >= deadline {
            return Follow::TimedOut;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `kiln-worker stop [--graceful] BASEDIR`.
#[cfg(unix)]
pub fn stop(basedir: &Path, graceful: bool, quiet: bool) -> anyhow::Result<ExitCode> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let dir = worker_dir(basedir)?;
    let pid_path = pid_path(&dir);
    let say = |text: String| {
        if !quiet {
            println!("{text}");
        }
    };
    let pid = match pidfile::probe_with_pid(&pid_path, Duration::from_secs(2))
        .with_context(|| format!("cannot read {}", pid_path.display()))?
    {
        Status::NoFile => {
            say("worker not running".to_owned());
            return Ok(ExitCode::SUCCESS);
        }
        Status::Stale(pid) => {
            let about = match pid {
                Some(pid) => format!(
                    " ({PID_FILE} names pid {pid} but no kiln-worker holds its lock: it was left by a crash or reboot; \
                     pid {pid} was not signalled)"
                ),
                None => String::new(),
            };
            say(format!("worker not running{about}"));
            return Ok(ExitCode::SUCCESS);
        }
        Status::Running(None) => bail!(
            "a kiln-worker holds the lock on {} but has not written its pid; it may be starting: try again",
            pid_path.display()
        ),
        Status::Running(Some(pid)) => pid,
    };
    let signal = if graceful {
        Signal::SIGUSR1
    } else {
        Signal::SIGTERM
    };
    let target = Pid::from_raw(i32::try_from(pid).context("pid out of range")?);
    kill(target, signal)
        .with_context(|| format!("cannot send {signal} to the worker (pid {pid})"))?;
    if graceful {
        say(format!(
            "asked kiln-worker (pid {pid}) to stop once its running builds have finished; waiting ..."
        ));
    }
    let note = |waited: Duration| {
        say(format!(
            "still waiting for kiln-worker (pid {pid}) to finish its builds ({} s); \
             `kiln-worker stop {}` stops it now",
            waited.as_secs(),
            dir.display()
        ))
    };
    if pidfile::wait_released(&pid_path, (!graceful).then_some(STOP_TIMEOUT), note) {
        say(format!("worker process {pid} is dead"));
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "never saw process {pid} go away (waited {} s); it still holds {}",
            STOP_TIMEOUT.as_secs(),
            pid_path.display()
        );
        Ok(ExitCode::FAILURE)
    }
}

#[cfg(not(unix))]
pub fn stop(basedir: &Path, _graceful: bool, _quiet: bool) -> anyhow::Result<ExitCode> {
    unsupported("stop", basedir)
}

/// `kiln-worker restart BASEDIR`: stop (a failure is not fatal), then start.
pub fn restart(basedir: &Path, opts: &StartOptions) -> anyhow::Result<ExitCode> {
    #[cfg(not(unix))]
    if !opts.nodaemon {
        return unsupported("restart", basedir);
    }
    match stop(basedir, false, opts.quiet) {
        Ok(_) => {}
        Err(e) => eprintln!("kiln-worker: stopping the old worker failed ({e:#}); starting anyway"),
    }
    start(basedir, opts)
}

/// `kiln-worker status BASEDIR`: exit 0 when running, 3 when not (like LSB init scripts).
pub fn status(basedir: &Path) -> anyhow::Result<ExitCode> {
    let dir = worker_dir(basedir)?;
    let pid_path = pid_path(&dir);
    match pidfile::probe_with_pid(&pid_path, Duration::from_secs(1))? {
        Status::Running(Some(pid)) => {
            println!("kiln-worker is running (pid {pid})");
            Ok(ExitCode::SUCCESS)
        }
        Status::Running(None) => {
            println!("kiln-worker is starting");
            Ok(ExitCode::SUCCESS)
        }
        Status::NoFile | Status::Stale(_) => {
            println!("kiln-worker is not running");
            Ok(ExitCode::from(3))
        }
    }
}

/// `basedir` made absolute, refusing a directory that is not a worker's.
fn worker_dir(basedir: &Path) -> anyhow::Result<PathBuf> {
    let dir = config::absolute(basedir)?;
    if !WorkerConfig::path_in(&dir).exists() && !pid_path(&dir).exists() {
        bail!(
            "{} is not a kiln-worker directory (no {})",
            dir.display(),
            config::CONFIG_FILE
        );
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follow_sees_the_marker_and_the_exit() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(LOG_FILE);
        let pid = pid_path(dir.path());
        std::fs::write(&log, format!("old {ATTACHED_MARKER}\n")).unwrap();
        let offset = std::fs::metadata(&log).unwrap().len();
        let mut lock = PidLock::acquire(&pid).unwrap();
        lock.write_pid(std::process::id()).unwrap();
        assert_eq!(
            follow_log(&log, offset, &pid, Duration::from_millis(300)),
            Follow::TimedOut,
            "an old line does not count"
        );
        let writer = {
            let log = log.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                let mut text = std::fs::read_to_string(&log).unwrap();
                text.push_str("2026 INFO kiln_worker::connection: message from ");
                std::fs::write(&log, &text).unwrap();
                std::thread::sleep(Duration::from_millis(200));
                text.push_str("master: attached\n");
                std::fs::write(&log, &text).unwrap();
            })
        };
        assert_eq!(
            follow_log(&log, offset, &pid, Duration::from_secs(5)),
            Follow::Attached
        );
        writer.join().unwrap();
        drop(lock);
        assert_eq!(
            follow_log(&log, 0, &pid, Duration::from_secs(5)),
            Follow::Attached
        );
        std::fs::write(&log, "").unwrap();
        assert_eq!(
            follow_log(&log, 0, &pid, Duration::from_secs(5)),
            Follow::Exited
        );
    }
}
