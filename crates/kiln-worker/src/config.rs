//! The worker's configuration: `BASEDIR/kiln-worker.toml`, written by
//! `create-worker` and read by every other subcommand.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// File name of the configuration inside the base directory.
pub const CONFIG_FILE: &str = "kiln-worker.toml";

/// Everything `create-worker` records about one worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Absolute base directory (builder directories, `info/`, logs, pidfile).
    #[serde(skip)]
    pub basedir: PathBuf,
    /// Master host name or address.
    pub master_host: String,
    /// Master worker port (9989 when not given).
    pub master_port: u16,
    /// Worker name, as configured on the master.
    pub name: String,
    /// Password; empty when `password_file` is used.
    #[serde(default)]
    pub password: String,
    /// A file holding the password (first line), so it stays out of this file and shell history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Connect with `wss://` (TLS) instead of `ws://`.
    #[serde(default)]
    pub use_tls: bool,
    /// Extra CA certificate(s) (PEM) trusted for `wss://`, beside the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Wire protocol; only `msgpack_experimental_v7` is spoken.
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// Seconds between WebSocket pings; a peer silent for 2 intervals is dropped.
    #[serde(default = "default_keepalive")]
    pub keepalive: u64,
    /// umask applied at start (e.g. 0o022), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub umask: Option<u32>,
    /// Give up (exit) after this many consecutive failed connection attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maxretries: Option<u32>,
    /// Seconds running commands may go on after the connection drops, before they are killed.
    #[serde(default = "default_grace")]
    pub disconnect_grace: f64,
    /// Reported to the master: may it delete builder directories it no longer uses?
    #[serde(default)]
    pub delete_leftover_dirs: bool,
    /// Run build processes as this user (required when the worker runs as root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as: Option<String>,
    /// Let build processes run as root (only with an explicit opt-in).
    #[serde(default)]
    pub allow_root: bool,
    /// `"bwrap"` to run every command under bubblewrap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// With the sandbox: whether build processes keep network access.
    #[serde(default = "default_true")]
    pub sandbox_network: bool,
    /// Per-command resource limits.
    #[serde(default)]
    pub limits: Limits,
    /// Rotate `kiln-worker.log` at this many bytes.
    #[serde(default = "default_log_size")]
    pub log_size: u64,
    /// Keep this many rotated log files.
    #[serde(default = "default_log_count")]
    pub log_count: u32,
    /// Outbound reachability targets for `doctor` (`host:port`); empty = the defaults.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub doctor_targets: Vec<String>,
}

/// rlimits applied to every build process (unset = inherited).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Address-space limit in bytes (RLIMIT_AS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// Max processes of the build user (RLIMIT_NPROC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<u64>,
    /// Max open files (RLIMIT_NOFILE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_files: Option<u64>,
    /// CPU seconds (RLIMIT_CPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_time: Option<u64>,
}

fn default_protocol() -> String {
    kiln_proto::PROTOCOL_NAME.to_owned()
}
fn default_keepalive() -> u64 {
    30
}
fn default_grace() -> f64 {
    30.0
}
fn default_true() -> bool {
    true
}
fn default_log_size() -> u64 {
    10_000_000
}
fn default_log_count() -> u32 {
    10
}

impl WorkerConfig {
    /// A configuration with every default, for tests and tools.
    #[doc(hidden)]
    pub fn for_tests(basedir: &std::path::Path) -> WorkerConfig {
        WorkerConfig {
            basedir: basedir.to_path_buf(),
            master_host: "127.0.0.1".to_owned(),
            master_port: kiln_proto::DEFAULT_MASTER_PORT,
            name: "test-worker".to_owned(),
            password: "pass".to_owned(),
            password_file: None,
            use_tls: false,
            ca_file: None,
            protocol: default_protocol(),
            keepalive: default_keepalive(),
            umask: None,
            maxretries: None,
            disconnect_grace: default_grace(),
            delete_leftover_dirs: false,
            run_as: None,
            allow_root: false,
            sandbox: None,
            sandbox_network: true,
            limits: Limits::default(),
            log_size: default_log_size(),
            log_count: default_log_count(),
            doctor_targets: Vec::new(),
        }
    }
}
