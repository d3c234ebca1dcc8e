//! The command line: parsing (clap) and dispatch to the subcommands.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::config::{self, WorkerConfig};
use crate::create::{self, CreateOptions};
use crate::doctor::{self, DoctorOptions, Target};
use crate::lifecycle::{self, StartOptions};
use crate::service::{self, ServiceSpec};

/// A build worker for Buildbot 4.3 and Kiln masters: create it, start it, forget it.
#[derive(Debug, Parser)]
#[command(name = "kiln-worker", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Create a worker base directory (kiln-worker.toml, info/).
    CreateWorker(Box<CreateArgs>),
    /// Start the worker in the background and wait for a master to attach.
    Start(StartArgs),
    /// Stop the running worker.
    Stop(StopArgs),
    /// Stop the worker if it runs, then start it (use this from `@reboot` in crontab).
    Restart(StartArgs),
    /// Run the worker in the foreground (for systemd, launchd, containers).
    Run(DirArg),
    /// Tell whether the worker runs (exit 0) or not (exit 3).
    Status(DirArg),
    /// Print service definitions (systemd, launchd, rc.d, crontab) for this worker.
    InstallService(ServiceArgs),
    /// Check that this machine has what builds need.
    Doctor(DoctorArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The worker's base directory (created with its parents).
    pub basedir: PathBuf,
    /// The master: HOST, HOST:PORT or [IPV6]:PORT (port 9989 by default).
    pub master: Option<String>,
    /// The worker name given to you by the master's admin.
    pub name: Option<String>,
    /// The worker password (or use --passwd-file).
    pub passwd: Option<String>,
    /// Read the password from the first line of FILE (the config records the file, not the password).
    #[arg(long, value_name = "FILE")]
    pub passwd_file: Option<PathBuf>,
    /// Import an existing buildbot-worker directory: its buildbot.tac and info/.
    #[arg(long, value_name = "OLD_BASEDIR")]
    pub from_buildbot: Option<PathBuf>,
    /// Connect with TLS (wss://).
    #[arg(long)]
    pub use_tls: bool,
    /// Extra CA certificates (PEM) to trust for TLS.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Seconds between keepalive pings [default: 30].
    #[arg(long, short = 'k', value_name = "SECS")]
    pub keepalive: Option<u64>,
    /// umask for the worker and its builds, octal (e.g. 022) [default: inherited].
    #[arg(long, value_parser = parse_umask_arg)]
    pub umask: Option<u32>,
    /// Exit after this many failed connection attempts in a row [default: retry for ever].
    #[arg(long, value_name = "N")]
    pub maxretries: Option<u32>,
    /// Wire protocol (only msgpack_experimental_v7).
    #[arg(long)]
    pub protocol: Option<String>,
    /// Tell the master it may delete builder directories it no longer uses.
    #[arg(long)]
    pub delete_leftover_dirs: bool,
    /// Run builds as USER (needed when the worker runs as root).
    #[arg(long, value_name = "USER")]
    pub run_as: Option<String>,
    /// Allow builds to run as root.
    #[arg(long)]
    pub allow_root: bool,
    /// Run every command in a sandbox (only "bwrap").
    #[arg(long, value_parser = ["bwrap"])]
    pub sandbox: Option<String>,
    /// With --sandbox: cut build processes off the network.
    #[arg(long)]
    pub no_sandbox_network: bool,
    /// Rotate kiln-worker.log at this many bytes [default: 10000000].
    #[arg(long, short = 's', value_name = "BYTES")]
    pub log_size: Option<u64>,
    /// Keep this many rotated logs [default: 10].
    #[arg(long, short = 'l', value_name = "N")]
    pub log_count: Option<u32>,
    /// Replace an existing kiln-worker.toml.
    #[arg(long, short = 'f')]
    pub force: bool,
    /// Print nothing on success.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct DirArg {
    /// The worker's base directory [default: the current directory].
    #[arg(default_value = ".")]
    pub basedir: PathBuf,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// The worker's base directory [default: the current directory].
    #[arg(default_value = ".")]
    pub basedir: PathBuf,
    /// Print nothing and don't wait for the master.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Stay in the foreground (same as `run`).
    #[arg(long)]
    pub nodaemon: bool,
    /// Seconds to wait for a master to attach; 0 = don't wait.
    #[arg(
        long,
        value_name = "SECS",
        env = "KILN_WORKER_START_WAIT",
        default_value_t = 10.0
    )]
    pub wait: f64,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    /// The worker's base directory [default: the current directory].
    #[arg(default_value = ".")]
    pub basedir: PathBuf,
    /// Let running builds finish first (waits as long as they take).
    #[arg(long, short = 'g')]
    pub graceful: bool,
    /// Print nothing.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct ServiceArgs {
    /// The worker's base directory [default: the current directory].
    #[arg(default_value = ".")]
    pub basedir: PathBuf,
    /// The account the service runs the worker as [default: you].
    #[arg(long)]
    pub user: Option<String>,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The worker's base directory [default: the current directory].
    #[arg(default_value = ".")]
    pub basedir: PathBuf,
    /// Check outbound TCP to NAME=HOST:PORT instead of the default list (repeatable).
    #[arg(long = "target", value_name = "NAME=HOST:PORT", value_parser = parse_target_arg)]
    pub targets: Vec<Target>,
    /// Skip the outbound checks.
    #[arg(long)]
    pub no_outbound: bool,
    /// Seconds allowed for each outbound check (name lookup + connect).
    #[arg(long, value_name = "SECS", default_value_t = 2.0)]
    pub timeout: f64,
    /// Required number of CPUs.
    #[arg(long, value_name = "N", default_value_t = doctor::MIN_CPUS)]
    pub min_cpus: usize,
    /// Required memory, in MB.
    #[arg(long, value_name = "MB", default_value_t = doctor::MIN_MEMORY_MB)]
    pub min_memory_mb: u64,
    /// Required free disk space in the base directory, in GB.
    #[arg(long, value_name = "GB", default_value_t = doctor::MIN_DISK_GB)]
    pub min_disk_gb: u64,
}

fn parse_umask_arg(s: &str) -> Result<u32, String> {
    config::parse_umask(s).map_err(|e| e.to_string())
}

fn parse_target_arg(s: &str) -> Result<Target, String> {
    Target::parse(s).map_err(|e| e.to_string())
}

fn seconds(s: f64, what: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s)
        .with_context(|| format!("{what}: {s} is not a number of seconds"))
}

/// The binary's entry point.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kiln-worker: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one parsed command line.
pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Cmd::CreateWorker(a) => create_worker(*a),
        Cmd::Start(a) => lifecycle::start(&a.basedir, &start_options(&a)?),
        Cmd::Restart(a) => lifecycle::restart(&a.basedir, &start_options(&a)?),
        Cmd::Stop(a) => lifecycle::stop(&a.basedir, a.graceful, a.quiet),
        Cmd::Run(a) => lifecycle::run(&a.basedir),
        Cmd::Status(a) => lifecycle::status(&a.basedir),
        Cmd::InstallService(a) => install_service(a),
        Cmd::Doctor(a) => run_doctor(a),
    }
}

fn start_options(a: &StartArgs) -> anyhow::Result<StartOptions> {
    Ok(StartOptions {
        quiet: a.quiet,
        nodaemon: a.nodaemon,
        wait: seconds(a.wait, "--wait")?,
    })
}

fn current_exe() -> PathBuf {
    std::env::current_exe()
        .and_then(|p| p.canonicalize())
        .unwrap_or_else(|_| PathBuf::from("kiln-worker"))
}

fn create_worker(a: CreateArgs) -> anyhow::Result<ExitCode> {
    let opts = CreateOptions {
        basedir: a.basedir,
        master: a.master,
        name: a.name,
        password: a.passwd,
        password_file: a.passwd_file,
        from_buildbot: a.from_buildbot,
        use_tls: a.use_tls,
        ca_file: a.ca_file,
        keepalive: a.keepalive,
        umask: a.umask,
        maxretries: a.maxretries,
        protocol: a.protocol,
        delete_leftover_dirs: a.delete_leftover_dirs,
        run_as: a.run_as,
        allow_root: a.allow_root,
        sandbox: a.sandbox,
        no_sandbox_network: a.no_sandbox_network,
        log_size: a.log_size,
        log_count: a.log_count,
        force: a.force,
    };
    let created = create::create_worker(&opts)?;
    if !a.quiet {
        for note in &created.notes {
            eprintln!("{note}");
        }
        print!("{}", create::next_steps(&created.config, &current_exe()));
    }
    Ok(ExitCode::SUCCESS)
}

fn install_service(a: ServiceArgs) -> anyhow::Result<ExitCode> {
    let config = WorkerConfig::load(&a.basedir)?;
    let basedir = config
        .basedir
        .canonicalize()
        .unwrap_or(config.basedir.clone());
    let user = match a.user {
        Some(u) => u,
        None => current_user(),
    };
    let exe = current_exe();
    let spec = ServiceSpec {
        exe: &exe,
        basedir: &basedir,
        user: &user,
        name: &config.name,
    };
    print!("{}", service::render_all(&spec));
    Ok(ExitCode::SUCCESS)
}

fn current_user() -> String {
    #[cfg(unix)]
    if let Ok(Some(u)) = nix::unistd::User::from_uid(nix::unistd::geteuid()) {
        return u.name;
    }
    std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "buildbot".to_owned())
}

fn run_doctor(a: DoctorArgs) -> anyhow::Result<ExitCode> {
    let basedir: &Path = &a.basedir;
    let mut opts = DoctorOptions::new(basedir);
    let mut config_problem = None;
    if WorkerConfig::path_in(basedir).exists() {
        match WorkerConfig::load(basedir) {
            Ok(config) => opts = DoctorOptions::for_config(&config),
            Err(e) => config_problem = Some(format!("{e:#}")),
        }
    }
    if !a.targets.is_empty() {
        opts.targets = a.targets;
    }
    if a.no_outbound {
        opts.targets.clear();
    }
    opts.timeout = seconds(a.timeout, "--timeout")?;
    opts.min_cpus = a.min_cpus;
    opts.min_memory_bytes = a.min_memory_mb << 20;
    opts.min_disk_bytes = a.min_disk_gb << 30;

    let mut results = Vec::new();
    if let Some(problem) = config_problem {
        results.push(doctor::CheckResult {
            name: config::CONFIG_FILE.to_owned(),
            status: doctor::CheckStatus::Missing,
            detail: problem,
            hint: "fix the file, or recreate it with `kiln-worker create-worker --force`"
                .to_owned(),
            required: true,
        });
    }
    results.extend(doctor::run_checks(&opts));
    print!("{}", doctor::render_table(&results));
    Ok(if doctor::required_ok(&results) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
