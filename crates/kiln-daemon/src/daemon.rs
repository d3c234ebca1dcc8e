//! Detaching from the terminal (Unix): double fork + `setsid`, stdio to
//! `/dev/null`, `chdir` to the base directory. Must be called while the process
//! has a single thread (before any tokio runtime exists): after `fork` only the
//! calling thread survives.
//!
//! The daemon reports back through a pipe: one line, `ok PID` or `error: TEXT`.
//! The `start` process reads it, so a daemon that fails to come up is reported
//! on the terminal and not only in the log.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::path::Path;
use std::time::Duration;

use nix::unistd::{ForkResult, fork, setsid};

/// Which side of [`daemonize`] we are on.
pub enum Forked {
    /// The original process: read the daemon's report from here.
    Parent(ReportReader),
    /// The daemon (grandchild): send the report here once it is ready or has failed.
    Daemon(Reporter),
}

/// The daemon's end of the report pipe.
#[derive(Debug)]
pub struct Reporter(Option<File>);

impl Reporter {
    /// Tells `start` the daemon is up (pid written, signal handlers in place).
    pub fn ready(&mut self) {
        if let Some(mut f) = self.0.take() {
            let _ = writeln!(f, "ok {}", std::process::id());
        }
    }

    /// Tells `start` why the daemon could not come up (no-op after `ready`).
    pub fn failed(&mut self, why: &str) {
        if let Some(mut f) = self.0.take() {
            let _ = writeln!(f, "error: {}", why.replace('\n', " "));
        }
    }
}

/// The original process's end of the report pipe.
pub struct ReportReader(File);

/// What the daemon reported.
#[derive(Debug, PartialEq, Eq)]
pub enum Report {
    Ready {
        pid: u32,
    },
    Failed(String),
    /// The pipe closed without a report (the daemon died) or nothing came in time.
    Silent,
}

impl ReportReader {
    /// Waits up to `timeout` for the daemon's report.
    pub fn wait(self, timeout: Duration) -> Report {
        let (tx, rx) = std::sync::mpsc::channel();
        let pipe = self.0;
        // A reader thread, so a daemon that hangs before reporting cannot hang `start`.
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = pipe.take(4096).read_to_end(&mut text);
            let _ = tx.send(text);
        });
        match rx.recv_timeout(timeout) {
            Ok(text) => parse_report(&text),
            Err(_) => Report::Silent,
        }
    }
}

fn parse_report(text: &[u8]) -> Report {
    let text = String::from_utf8_lossy(text);
    let line = text.trim();
    if let Some(pid) = line.strip_prefix("ok ").and_then(|p| p.parse().ok()) {
        Report::Ready { pid }
    } else if let Some(why) = line.strip_prefix("error: ") {
        Report::Failed(why.to_owned())
    } else {
        Report::Silent
    }
}

/// Why [`daemonize`] failed, still in the original process. Failures after the first
/// fork are the daemon's: they go to its report, never back to the caller.
#[derive(Debug, thiserror::Error)]
pub enum DaemonizeError {
    #[error("cannot create a pipe")]
    Pipe(#[source] nix::Error),
    #[error("cannot fork")]
    Fork(#[source] nix::Error),
}

/// Detaches. Returns twice: in the original process ([`Forked::Parent`], after the
/// intermediate child has been reaped) and in the daemon ([`Forked::Daemon`]).
pub fn daemonize(basedir: &Path) -> Result<Forked, DaemonizeError> {
    let (read_end, write_end) = nix::unistd::pipe().map_err(DaemonizeError::Pipe)?;
    set_cloexec(&read_end);
    set_cloexec(&write_end);
    // SAFETY: the process is single-threaded here (no runtime, no helper threads),
    // so the child may run ordinary code.
    match unsafe { fork() }.map_err(DaemonizeError::Fork)? {
        ForkResult::Parent { child } => {
            drop(write_end);
            let _ = nix::sys::wait::waitpid(child, None);
            Ok(Forked::Parent(ReportReader(File::from(read_end))))
        }
        ForkResult::Child => {
            drop(read_end);
            let mut reporter = Reporter(Some(File::from(write_end)));
            // From here on this is not the caller's process any more: never return an
            // error into the caller's code, report it and leave.
            if let Err(e) = setsid() {
                reporter.failed(&format!("setsid failed: {e}"));
                exit_now(1);
            }
            // SAFETY: still single-threaded.
            match unsafe { fork() } {
                Ok(ForkResult::Parent { .. }) => exit_now(0),
                Ok(ForkResult::Child) => {}
                Err(e) => {
                    reporter.failed(&format!("second fork failed: {e}"));
                    exit_now(1);
                }
            }
            if let Err(e) = std::env::set_current_dir(basedir) {
                reporter.failed(&format!("cannot chdir to {}: {e}", basedir.display()));
                exit_now(1);
            }
            if let Err(e) = stdio_to_dev_null() {
                reporter.failed(&format!("cannot redirect stdio to /dev/null: {e}"));
                exit_now(1);
            }
            Ok(Forked::Daemon(reporter))
        }
    }
}

fn set_cloexec(fd: &OwnedFd) {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    let _ = fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
}

fn stdio_to_dev_null() -> std::io::Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    for fd in 0..=2 {
        // SAFETY: dup2 onto the standard descriptors; `null` stays open until then.
        if unsafe { libc::dup2(null.as_raw_fd(), fd) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Leaves at once, without running destructors or atexit handlers that belong
/// to the parent's state.
fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is always safe to call.
    unsafe { libc::_exit(code) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_parse() {
        assert_eq!(parse_report(b"ok 42\n"), Report::Ready { pid: 42 });
        assert_eq!(
            parse_report(b"error: no log\n"),
            Report::Failed("no log".into())
        );
        assert_eq!(parse_report(b""), Report::Silent);
    }
}
