//! The `kiln` command line: parsing (clap) and dispatch. `main.rs` only calls [`main`].
//!
//! * [`create`]: `create-master`, `checkconfig`;
//! * [`lifecycle`]: `start`, `stop`, `restart`, `run`, `reconfig` (pidfile and daemon code
//!   are shared with the worker: `kiln_daemon::pidfile`, `kiln_daemon::daemon`);
//! * [`remote`]: `force`, `sendchange` (HTTP to a running master, see [`http`]);
//! * [`quickstart`]: a master, a worker and a demo build in one command.

pub mod create;
pub mod http;
pub mod lifecycle;
pub mod quickstart;
pub mod remote;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Kiln: a fast, Buildbot-compatible build master.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Create a master directory with a working, commented master.star.
    CreateMaster(CreateArgs),
    /// Check master.star (exit 1 with file:line:col on errors).
    Checkconfig(CheckArgs),
    /// Start the master in the background and wait until it listens.
    Start(StartArgs),
    /// Stop the running master.
    Stop(StopArgs),
    /// Stop the master if it runs, then start it.
    Restart(StartArgs),
    /// Run the master in the foreground (systemd, containers); logs to stderr and kiln.log.
    Run(DirArg),
    /// Re-read master.star in the running master and print the outcome.
    Reconfig(ReconfigArgs),
    /// Start a build through a force scheduler of a running master.
    Force(remote::ForceArgs),
    /// Send a change to a running master (like `buildbot sendchange`).
    Sendchange(remote::SendchangeArgs),
    /// Set up a master, a local worker and a demo repository, and run one build.
    Quickstart(quickstart::QuickstartArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The master directory (created with its parents).
    pub basedir: PathBuf,
    /// Database URL [default: sqlite:///BASEDIR/state.sqlite].
    #[arg(long, value_name = "URL")]
    pub db: Option<String>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// A master directory or a config file.
    #[arg(default_value = ".")]
    pub path: PathBuf,
}

#[derive(Debug, Args)]
pub struct DirArg {
    /// The master directory.
    #[arg(default_value = ".")]
    pub basedir: PathBuf,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// The master directory.
    #[arg(default_value = ".")]
    pub basedir: PathBuf,
    /// Seconds to wait for the master to listen before giving up.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub wait: u64,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    /// The master directory.
    #[arg(default_value = ".")]
    pub basedir: PathBuf,
    /// Wait as long as the shutdown takes; never SIGKILL.
    #[arg(long)]
    pub clean: bool,
    /// Seconds to wait after SIGTERM before SIGKILL.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub timeout: u64,
}

#[derive(Debug, Args)]
pub struct ReconfigArgs {
    /// The master directory.
    #[arg(default_value = ".")]
    pub basedir: PathBuf,
    /// Seconds to wait for the master to report the result.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub wait: u64,
}

/// The binary's entry point.
pub fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kiln: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Cmd::CreateMaster(a) => create::create_master(&a.basedir, a.db.as_deref()),
        Cmd::Checkconfig(a) => Ok(create::checkconfig(&a.path)),
        Cmd::Start(a) => lifecycle::start(&a.basedir, Duration::from_secs(a.wait)),
        Cmd::Stop(a) => lifecycle::stop(&a.basedir, a.clean, Duration::from_secs(a.timeout)),
        Cmd::Restart(a) => lifecycle::restart(&a.basedir, Duration::from_secs(a.wait)),
        Cmd::Run(a) => lifecycle::run(&a.basedir),
        Cmd::Reconfig(a) => lifecycle::reconfig(&a.basedir, Duration::from_secs(a.wait)),
        Cmd::Force(a) => remote::force(a),
        Cmd::Sendchange(a) => remote::sendchange(a),
        Cmd::Quickstart(a) => quickstart::quickstart(a),
    }
}

/// The allocator's settings: mimalloc (the `kiln` binary's allocator; its huge pages are
/// turned off in `main.rs`, before its first allocation) gives freed memory back after
/// `PURGE_DELAY_MS`; glibc (used when the library is embedded) keeps two arenas, not one per
/// thread.
const PURGE_DELAY_MS: std::ffi::c_long = 0;

fn limit_malloc_arenas() {
    // SAFETY: both calls only tune allocators, before any other thread exists.
    unsafe {
        // mimalloc's `mi_option_purge_delay` (the -sys crate names only some options).
        const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
        libmimalloc_sys::mi_option_set(PURGE_DELAY, PURGE_DELAY_MS);
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
