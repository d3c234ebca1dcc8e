//! Starting and killing build processes: process groups, the whole-tree kill,
//! dropping to a build user, bubblewrap and rlimits.
//!
//! * [`ExecPolicy`] says how build processes run on this worker (build user,
//!   sandbox, limits) and refuses to run them as root without an explicit opt-in.
//! * [`spawn`] starts one command (pipes or a pseudo-terminal) and returns its
//!   [`ProcessTree`], the handle that signals and kills everything the command
//!   started:
//!   - Linux: the process group, every process whose environment carries the
//!     command's cookie (`KILN_COMMAND_COOKIE`, like Jenkins' ProcessTreeKiller;
//!     catches `setsid`/double-fork escapees) and all their descendants. The worker
//!     is a child subreaper ([`init_process_control`]) so orphans come back to it;
//!     adopted ones are reaped by pid, never with `waitpid(-1)`, so tokio keeps
//!     its own children.
//!     Processes found once stay tracked by pid and start time even after their
//!     parent dies. Not caught: a process that both clears its environment and
//!     detaches (setsid + double fork) before the kill looks for it; the bubblewrap
//!     sandbox (a PID namespace dying with it) closes that gap.
//!   - other Unixes: the process group.
//!   - Windows: a job object (`KILL_ON_JOB_CLOSE`).
//! * The run record ([`RUN_RECORD_FILE`]): a worker killed mid-build (crash,
//!   `kill -9`) cannot kill its build's processes, so each run records what it
//!   starts and the next run kills what is left before it connects
//!   ([`kill_leftovers_of_previous_run`], [`start_run_record`], [`end_run_record`];
//!   Unix, see `unix/leftovers.rs`). On Windows the jobs die with the worker.

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use crate::config::{Limits, WorkerConfig};

#[cfg(unix)]
mod unix;
#[cfg(unix)]
use unix as sys;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as sys;

pub use sys::{KillSignal, OutputReader, ProcessTree, Spawned, spawn};

/// What a worker running as root says when it refuses to run build commands.
pub const ROOT_REFUSAL: &str = "kiln-worker is running as root and will not run build commands as root; \
restart it with --run-as USER (e.g. a dedicated 'buildbot' user) or --allow-root";

/// The environment variable that marks every process of one command.
pub const COOKIE_VAR: &str = "KILN_COMMAND_COOKIE";

/// The file in the base directory where a running worker records what it starts
/// (boot id, cookie prefix, process groups); removed at a clean exit, so one found
/// at start means the previous run crashed or was killed.
pub const RUN_RECORD_FILE: &str = "kiln-worker.processes";

/// At start, before anything runs and before the first connection: reads the
/// previous run's record in `basedir` and kills (TERM, then KILL) the build
/// processes that run left, logging each (pid, command line, how it was
/// recognised). A missing record is a clean previous exit; an unreadable one is
/// logged and ignored. Never fails.
pub fn kill_leftovers_of_previous_run(basedir: &Path) {
    #[cfg(unix)]
    sys::leftovers::kill_previous_run(basedir);
    // Windows: every command runs in a job object created with
    // KILL_ON_JOB_CLOSE; the handles close when the worker dies, however it dies,
    // and the jobs' processes die with them. Nothing is left to find.
    #[cfg(windows)]
    let _ = basedir;
}

/// Starts this run's record in `basedir` (after [`kill_leftovers_of_previous_run`]):
/// from now on every command's process group is noted in it.
pub fn start_run_record(basedir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    return sys::leftovers::start_record(basedir);
    #[cfg(windows)]
    {
        let _ = basedir;
        Ok(())
    }
}

/// The clean end of the run: kills what this run's commands left running (e.g. a
/// daemon a finished build detached) and removes the record, so the next start
/// finds nothing to do.
pub fn end_run_record() {
    #[cfg(unix)]
    sys::leftovers::end_record();
}

/// How build processes are started on this worker (from the command line / config).
/// `Default` is: the worker's own user, no sandbox, no limits, root refused.
#[derive(Debug, Clone, Default)]
pub struct ExecPolicy {
    /// Run build processes as this user (the worker must be root to switch).
    pub run_as: Option<RunAs>,
    /// Let build processes run as root (when the worker is root and `run_as` is unset).
    pub allow_root: bool,
    /// Run `shell` commands inside a sandbox.
    pub sandbox: Option<Sandbox>,
    /// rlimits applied to every build process.
    pub limits: Limits,
}

/// A sandbox for `shell` commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sandbox {
    /// bubblewrap: read-only `/`, writable builder directory, private `/tmp`,
    /// all namespaces unshared (the network too unless `network`).
    Bwrap { network: bool },
}

/// A resolved build user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (including `gid`).
    pub groups: Vec<u32>,
}

impl RunAs {
    /// Looks a user up by name (or numeric uid): uid, primary gid, supplementary groups.
    pub fn lookup(name: &str) -> Result<RunAs, String> {
        sys::lookup_user(name)
    }
}

impl ExecPolicy {
    /// A policy; `run_as` is looked up now so a typo fails at start, not at the first build.
    pub fn new(
        run_as: Option<&str>,
        allow_root: bool,
        sandbox: Option<Sandbox>,
        limits: Limits,
    ) -> Result<ExecPolicy, String> {
        let run_as = run_as.map(RunAs::lookup).transpose()?;
        Ok(ExecPolicy {
            run_as,
            allow_root,
            sandbox,
            limits,
        })
    }

    /// The policy a worker configuration asks for (`sandbox`: `"bwrap"`, `"none"` or unset).
    pub fn from_config(config: &WorkerConfig) -> Result<ExecPolicy, String> {
        let sandbox = match config.sandbox.as_deref() {
            None | Some("") | Some("none") => None,
            Some("bwrap") => Some(Sandbox::Bwrap {
                network: config.sandbox_network,
            }),
            Some(other) => {
                return Err(format!(
                    "unknown sandbox {other:?} (expected \"bwrap\" or \"none\")"
                ));
            }
        };
        ExecPolicy::new(
            config.run_as.as_deref(),
            config.allow_root,
            sandbox,
            config.limits.clone(),
        )
    }

    /// `Err` (with the text for the build log) when build processes may not run:
    /// the worker is root and neither `run_as` nor `allow_root` is set.
    pub fn check(&self) -> Result<(), &'static str> {
        if sys::running_as_root() && self.run_as.is_none() && !self.allow_root {
            Err(ROOT_REFUSAL)
        } else {
            Ok(())
        }
    }
}

/// Makes this process ready to control build processes; call once at start (it is
/// also done, idempotently, before the first spawn). On Linux the worker becomes a
/// child subreaper, so orphans of build processes are reparented to it (and can be
/// found and killed), and a small thread reaps the adopted ones.
pub fn init_process_control() {
    sys::init();
}

/// One process to start.
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    /// The real argv (before any sandbox wrapping); `argv[0]` is looked up in the child's `PATH`.
    pub argv: Vec<OsString>,
    pub cwd: PathBuf,
    /// The complete environment of the child (the cookie is added to it).
    pub env: Vec<(OsString, OsString)>,
    /// Run under a pseudo-terminal (Unix only).
    pub use_pty: bool,
    /// Give the child a stdin pipe (for `initial_stdin`); otherwise it reads `/dev/null`.
    pub stdin: bool,
    /// The directory the sandbox leaves writable; `None`: no sandbox for this process.
    pub sandbox_dir: Option<PathBuf>,
}

/// The directory a build may write to: `basedir/<builder>` when `workdir` lies under
/// `basedir`, else `workdir` itself.
pub fn builder_dir(basedir: &Path, workdir: &Path) -> PathBuf {
    if let Ok(rest) = workdir.strip_prefix(basedir)
        && let Some(Component::Normal(first)) = rest.components().next()
    {
        return basedir.join(first);
    }
    workdir.to_path_buf()
}

/// The argv that runs `argv` inside bubblewrap with `dir` writable and `cwd` as
/// working directory. `/tmp` is a private tmpfs, mounted before the bind so a
/// builder directory under `/tmp` stays visible.
pub fn bwrap_argv(network: bool, dir: &Path, cwd: &Path, argv: &[OsString]) -> Vec<OsString> {
    let mut v: Vec<OsString> = ["bwrap", "--die-with-parent", "--unshare-all"]
        .map(OsString::from)
        .into();
    if network {
        v.push("--share-net".into());
    }
    for a in [
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--tmpfs",
        "/tmp",
        "--bind",
    ] {
        v.push(a.into());
    }
    v.push(dir.into());
    v.push(dir.into());
    v.push("--chdir".into());
    v.push(cwd.into());
    v.push("--".into());
    v.extend(argv.iter().cloned());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_dir_is_the_first_component_under_basedir() {
        let base = Path::new("/srv/worker");
        assert_eq!(
            builder_dir(base, Path::new("/srv/worker/b1/build")),
            PathBuf::from("/srv/worker/b1")
        );
        assert_eq!(
            builder_dir(base, Path::new("/srv/worker/b1")),
            PathBuf::from("/srv/worker/b1")
        );
        assert_eq!(
            builder_dir(base, Path::new("/elsewhere/x")),
            PathBuf::from("/elsewhere/x")
        );
        assert_eq!(
            builder_dir(base, Path::new("/srv/worker")),
            PathBuf::from("/srv/worker")
        );
    }

    #[test]
    fn bwrap_wraps_argv() {
        let v = bwrap_argv(false, Path::new("/b"), Path::new("/b/w"), &["ls".into()]);
        let s: Vec<_> = v.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(
            s.join(" "),
            "bwrap --die-with-parent --unshare-all --ro-bind / / --dev /dev --proc /proc --tmpfs /tmp --bind /b /b --chdir /b/w -- ls"
        );
        assert!(
            bwrap_argv(true, Path::new("/b"), Path::new("/b"), &[])
                .iter()
                .any(|a| a == "--share-net")
        );
    }
}
