//! The worker's configuration: `BASEDIR/kiln-worker.toml`, written by
//! `create-worker` and read by every other subcommand.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File name of the configuration inside the base directory.
pub const CONFIG_FILE: &str = "kiln-worker.toml";

/// The master port used when `MASTER` names no port (Buildbot's default).
pub const DEFAULT_MASTER_PORT: u16 = 9989;

/// The only sandbox driver there is.
pub const SANDBOX_BWRAP: &str = "bwrap";

/// Why the configuration file cannot be read, written or used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The base directory has no `kiln-worker.toml`.
    #[error(
        "{} is not a kiln-worker directory: it has no {file}. \
         Create one with `kiln-worker create-worker {} MASTER NAME PASSWORD`",
        basedir.display(),
        basedir.display(),
        file = CONFIG_FILE
    )]
    NotAWorkerDir { basedir: PathBuf },
    /// The file is there but cannot be read.
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not TOML, or has a key kiln-worker does not know, or a value of the
    /// wrong type (the source says which).
    #[error("{} is not valid", path.display())]
    Syntax {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    /// The file parses, but its values are wrong (the source lists them).
    #[error("{} is not valid", path.display())]
    Invalid {
        path: PathBuf,
        #[source]
        source: ValidationError,
    },
    /// [`WorkerConfig::save`] refused a configuration that does not validate.
    #[error(transparent)]
    Rejected(#[from] ValidationError),
    /// [`WorkerConfig::save`] could not write the configuration as TOML.
    #[error(transparent)]
    Serialize(#[from] toml::ser::Error),
    /// Writing the file (or its temporary) failed.
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `password_file` cannot be read.
    #[error("cannot read the password file {}", path.display())]
    PasswordFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `password_file`'s first line is empty.
    #[error(
        "the password file {} is empty: its first line must be the password",
        path.display()
    )]
    EmptyPasswordFile { path: PathBuf },
    /// A path cannot be made absolute (the current directory is gone, say).
    #[error("cannot make {} absolute", path.display())]
    Absolute {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What [`WorkerConfig::validate`] found wrong: every problem, one per key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .problems.join("; "))]
pub struct ValidationError {
    /// One line per problem, each starting with the key it is about.
    pub problems: Vec<String>,
}

/// Why a host name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("the host name is empty")]
    Empty,
    #[error("{host:?} is not a host name or address")]
    Invalid { host: String },
}

/// Why a worker name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("the worker name is empty")]
    Empty,
    /// Buildbot splits on ':' (and HTTP Basic auth cannot carry it in a name).
    #[error(
        "the worker name {name:?} contains ':', which is not allowed; use the name the master's admin gave you"
    )]
    Colon { name: String },
    #[error("the worker name {name:?} contains whitespace")]
    Whitespace { name: String },
}

/// Why `MASTER` (`HOST`, `HOST:PORT` or `[IPV6]:PORT`) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MasterError {
    /// A URL (`ws://…`, `http:…`) where a host is expected; `hint` is the advice for TLS
    /// schemes, if any.
    #[error(
        "MASTER {master:?} is a URL; give HOST or HOST:PORT instead, e.g. buildbot.example.org:9989{hint}"
    )]
    Url { master: String, hint: &'static str },
    #[error("MASTER {master:?}: missing ']' after the IPv6 address; write [ADDRESS]:PORT")]
    UnclosedBracket { master: String },
    #[error("MASTER {master:?}: expected ':PORT' after ']'; write [ADDRESS]:PORT")]
    NoPortAfterBracket { master: String },
    #[error("MASTER {master:?}: put an IPv6 address in brackets, e.g. [{master}]:9989")]
    UnbracketedIpv6 { master: String },
    #[error("MASTER {master:?}")]
    Host {
        master: String,
        #[source]
        source: HostError,
    },
    #[error("MASTER {master:?}: the port {port:?} is not a number from 1 to 65535")]
    Port { master: String, port: String },
}

/// Why a doctor target (`NAME=HOST:PORT`) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("target {target:?}: empty name; write NAME=HOST:PORT")]
    NoName { target: String },
    #[error("target {target:?}: write NAME=HOST:PORT")]
    Address {
        target: String,
        #[source]
        source: MasterError,
    },
    #[error("target {target:?}: no port; write NAME=HOST:PORT")]
    NoPort { target: String },
}

/// A umask that is not octal, or above 0o777.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("umask {text:?} is not an octal umask such as 022")]
pub struct UmaskError {
    pub text: String,
}

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

/// One line of documentation per key, written above the key in `kiln-worker.toml`.
const KEY_DOCS: &[(&str, &str)] = &[
    ("master_host", "Master host name or address."),
    ("master_port", "Master worker port (9989 when not given)."),
    ("name", "Worker name, as configured on the master."),
    (
        "password",
        "Worker password, as configured on the master (empty when password_file is used).",
    ),
    (
        "password_file",
        "A file whose first line is the password (keeps it out of this file).",
    ),
    ("use_tls", "Connect with wss:// (TLS) instead of ws://."),
    (
        "ca_file",
        "Extra CA certificate(s), PEM, trusted for wss:// besides the system roots.",
    ),
    (
        "protocol",
        "Wire protocol; only msgpack_experimental_v7 is spoken.",
    ),
    (
        "keepalive",
        "Seconds between WebSocket pings; a peer silent for 2 intervals is dropped.",
    ),
    (
        "umask",
        "umask applied when the worker starts (octal, e.g. 0o022); absent = inherited.",
    ),
    (
        "maxretries",
        "Give up (exit) after this many consecutive failed connection attempts; absent = never.",
    ),
    (
        "disconnect_grace",
        "Seconds running commands may go on after the connection drops, before they are killed.",
    ),
    (
        "delete_leftover_dirs",
        "Reported to the master: may it delete builder directories it no longer uses?",
    ),
    (
        "run_as",
        "Run build processes as this user (required when the worker runs as root).",
    ),
    (
        "allow_root",
        "Let build processes run as root (explicit opt-in).",
    ),
    (
        "sandbox",
        "\"bwrap\" runs every command under bubblewrap; absent = no sandbox.",
    ),
    (
        "sandbox_network",
        "With the sandbox: whether build processes keep network access.",
    ),
    (
        "log_size",
        "Rotate kiln-worker.log when it reaches this many bytes.",
    ),
    (
        "log_count",
        "Keep this many rotated logs (kiln-worker.log.1 ...).",
    ),
    (
        "doctor_targets",
        "Outbound checks for `kiln-worker doctor`, \"NAME=HOST:PORT\"; absent = CPython's list.",
    ),
    ("memory", "Address-space limit in bytes (RLIMIT_AS)."),
    (
        "processes",
        "Max processes of the build user (RLIMIT_NPROC).",
    ),
    ("open_files", "Max open files (RLIMIT_NOFILE)."),
    ("cpu_time", "CPU seconds (RLIMIT_CPU)."),
];

/// Examples shown, commented out, for optional keys that are not set.
const UNSET_EXAMPLES: &[(&str, &str)] = &[
    ("password_file", "\"/home/buildbot/worker.passwd\""),
    ("ca_file", "\"/etc/ssl/certs/my-master-ca.pem\""),
    ("umask", "0o022"),
    ("maxretries", "10"),
    ("run_as", "\"buildbot\""),
    ("sandbox", "\"bwrap\""),
    (
        "doctor_targets",
        "[\"master=buildbot.example.org:9989\", \"https=python.org:443\"]",
    ),
];

const HEADER: &str = "\
# kiln-worker configuration, written by `kiln-worker create-worker`.
# It holds the worker password: keep this file mode 0600.
# Every other subcommand (start, stop, run, doctor ...) reads it; edit it and
# restart the worker (`kiln-worker restart BASEDIR`) to apply a change.
";

impl WorkerConfig {
    /// A configuration with every optional setting at its default.
    pub fn new(
        basedir: impl Into<PathBuf>,
        master_host: impl Into<String>,
        master_port: u16,
        name: impl Into<String>,
    ) -> Self {
        WorkerConfig {
            basedir: basedir.into(),
            master_host: master_host.into(),
            master_port,
            name: name.into(),
            password: String::new(),
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

    /// Path of the configuration file in `basedir`.
    pub fn path_in(basedir: &Path) -> PathBuf {
        basedir.join(CONFIG_FILE)
    }

    /// Reads and validates `BASEDIR/kiln-worker.toml`; `basedir` is made absolute.
    pub fn load(basedir: &Path) -> Result<WorkerConfig, ConfigError> {
        let basedir = absolute(basedir)?;
        let path = Self::path_in(&basedir);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ConfigError::NotAWorkerDir { basedir });
            }
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        let mut config = match Self::from_toml(&text) {
            Ok(config) => config,
            Err(source) => return Err(ConfigError::Syntax { path, source }),
        };
        config.basedir = basedir;
        match config.validate() {
            Ok(()) => Ok(config),
            Err(source) => Err(ConfigError::Invalid { path, source }),
        }
    }

    /// Parses the TOML text of a configuration (no validation, `basedir` left empty).
    pub fn from_toml(text: &str) -> Result<WorkerConfig, toml::de::Error> {
        toml::from_str(text)
    }

    /// The file's text: a header, then every key with its documentation above it;
    /// optional keys that are not set appear commented out, as examples.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        let body = toml::to_string(self)?;
        let mut out = String::from(HEADER);
        let mut seen = Vec::new();
        let mut in_table = false;
        for line in body.lines() {
            let trimmed = line.trim_start();
            if trimmed.is_empty() {
                continue;
            }
            if trimmed.starts_with('[') {
                if !in_table {
                    self.push_unset_examples(&mut out, &seen);
                    in_table = true;
                }
                let _ = writeln!(out, "\n{line}");
                if trimmed == "[limits]" {
                    out.push_str("# Per-command resource limits (rlimits); an absent key means \"inherited\".\n");
                    out.push_str("# e.g. memory = 4000000000, processes = 2000, open_files = 4096, cpu_time = 36000\n");
                }
                continue;
            }
            let key = trimmed.split([' ', '=']).next().unwrap_or("");
            seen.push(key.to_owned());
            if let Some((_, doc)) = KEY_DOCS.iter().find(|(k, _)| *k == key) {
                let _ = write!(out, "\n# {doc}\n");
            }
            match (key, self.umask, in_table) {
                ("umask", Some(umask), false) => {
                    let _ = writeln!(out, "umask = 0o{umask:03o}");
                }
                _ => {
                    let _ = writeln!(out, "{line}");
                }
            }
        }
        if !in_table {
            self.push_unset_examples(&mut out, &seen);
        }
        Ok(out)
    }

    fn push_unset_examples(&self, out: &mut String, seen: &[String]) {
        for (key, example) in UNSET_EXAMPLES {
            if seen.iter().any(|k| k == key) {
                continue;
            }
            if let Some((_, doc)) = KEY_DOCS.iter().find(|(k, _)| k == key) {
                let _ = write!(out, "\n# {doc}\n# {key} = {example}\n");
            }
        }
    }

    /// Validates, then writes `BASEDIR/kiln-worker.toml` (mode 0600) through a temporary file.
    pub fn save(&self) -> Result<(), ConfigError> {
        self.validate()?;
        let text = self.to_toml()?;
        let path = Self::path_in(&self.basedir);
        let tmp = self.basedir.join(format!(".{CONFIG_FILE}.tmp"));
        if let Err(source) = write_private(&tmp, text.as_bytes()) {
            return Err(ConfigError::Write { path: tmp, source });
        }
        std::fs::rename(&tmp, &path).map_err(|source| ConfigError::Write { path, source })
    }

    /// Checks everything that can be checked without the network; the error lists every problem.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut problems = Vec::new();
        if let Err(e) = check_host(&self.master_host) {
            problems.push(format!("master_host: {e}"));
        }
        if self.master_port == 0 {
            problems.push("master_port: must be 1..65535".to_owned());
        }
        if let Err(e) = check_name(&self.name) {
            problems.push(format!("name: {e}"));
        }
        match (&self.password_file, self.password.is_empty()) {
            (Some(_), false) => {
                problems.push("password and password_file are both set: keep only one".to_owned())
            }
            (None, true) => problems.push("no password: set password or password_file".to_owned()),
            _ => {}
        }
        if self.protocol != kiln_proto::PROTOCOL_NAME {
            problems.push(format!(
                "protocol: {:?} is not supported; kiln-worker speaks {:?} only",
                self.protocol,
                kiln_proto::PROTOCOL_NAME
            ));
        }
        if self.keepalive == 0 {
            problems.push("keepalive: must be at least 1 second".to_owned());
        }
        if let Some(umask) = self.umask
            && umask > 0o777
        {
            problems.push(format!("umask: 0o{umask:o} is not a umask (0o000..0o777)"));
        }
        if !(self.disconnect_grace.is_finite() && self.disconnect_grace >= 0.0) {
            problems.push("disconnect_grace: must be a number of seconds >= 0".to_owned());
        }
        if let Some(sandbox) = &self.sandbox
            && sandbox != SANDBOX_BWRAP
        {
            problems.push(format!(
                "sandbox: {sandbox:?} is unknown; the only sandbox is \"bwrap\""
            ));
        }
        if let Some(user) = &self.run_as
            && user.trim().is_empty()
        {
            problems.push("run_as: empty user name".to_owned());
        }
        if self.log_size < 1024 {
            problems.push("log_size: must be at least 1024 bytes".to_owned());
        }
        for target in &self.doctor_targets {
            if let Err(e) = parse_target(target) {
                problems.push(format!("doctor_targets: {e}"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ValidationError { problems })
        }
    }

    /// The password: `password`, or the first line of `password_file` (relative to the basedir).
    pub fn resolved_password(&self) -> Result<String, ConfigError> {
        let Some(file) = &self.password_file else {
            return Ok(self.password.clone());
        };
        let path = self.basedir.join(file);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(source) => return Err(ConfigError::PasswordFile { path, source }),
        };
        let password = text.lines().next().unwrap_or("").trim_end_matches('\r');
        if password.is_empty() {
            return Err(ConfigError::EmptyPasswordFile { path });
        }
        Ok(password.to_owned())
    }

    /// `host:port` of the master, with brackets around an IPv6 address.
    pub fn master_address(&self) -> String {
        format_host_port(&self.master_host, self.master_port)
    }
}

/// `host:port`, bracketing an IPv6 literal.
pub fn format_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Parses `MASTER` as `host`, `host:port` or `[ipv6]:port`; the port defaults to 9989.
pub fn parse_master(master: &str) -> Result<(String, u16), MasterError> {
    let master = master.trim();
    let url = |hint| MasterError::Url {
        master: master.to_owned(),
        hint,
    };
    if let Some((scheme, _)) = master.split_once("://").or_else(|| master.split_once(":/")) {
        let hint = match scheme.to_ascii_lowercase().as_str() {
            "wss" | "https" => " (and add --use-tls for TLS)",
            _ => "",
        };
        return Err(url(hint));
    }
    if master.to_ascii_lowercase().starts_with("http:")
        || master.to_ascii_lowercase().starts_with("https:")
    {
        return Err(url(""));
    }
    let owned = || master.to_owned();
    let (host, port) = if let Some(rest) = master.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(MasterError::UnclosedBracket { master: owned() });
        };
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| MasterError::NoPortAfterBracket { master: owned() })?,
            ),
        };
        (host, port)
    } else {
        match master.matches(':').count() {
            0 => (master, None),
            1 => {
                let (host, port) = master.split_once(':').unwrap_or((master, ""));
                (host, Some(port))
            }
            _ => return Err(MasterError::UnbracketedIpv6 { master: owned() }),
        }
    };
    check_host(host).map_err(|source| MasterError::Host {
        master: owned(),
        source,
    })?;
    let port = match port {
        None => DEFAULT_MASTER_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => {
                return Err(MasterError::Port {
                    master: owned(),
                    port: p.to_owned(),
                });
            }
            Ok(port) => port,
        },
    };
    Ok((host.to_owned(), port))
}

fn check_host(host: &str) -> Result<(), HostError> {
    if host.is_empty() {
        return Err(HostError::Empty);
    }
    if host
        .chars()
        .any(|c| c.is_whitespace() || c == '/' || c == '@')
    {
        return Err(HostError::Invalid {
            host: host.to_owned(),
        });
    }
    Ok(())
}

/// A worker name must be non-empty, and without ':' (Buildbot splits on it) or whitespace.
pub fn check_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.contains(':') {
        return Err(NameError::Colon {
            name: name.to_owned(),
        });
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(NameError::Whitespace {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Parses a doctor target `NAME=HOST:PORT` (or `HOST:PORT`, named after itself).
pub fn parse_target(text: &str) -> Result<(String, String, u16), TargetError> {
    let target = || text.to_owned();
    let (name, addr) = match text.split_once('=') {
        Some((name, addr)) => (name.trim().to_owned(), addr.trim()),
        None => (text.trim().to_owned(), text.trim()),
    };
    if name.is_empty() {
        return Err(TargetError::NoName { target: target() });
    }
    let (host, port) = parse_master(addr).map_err(|source| TargetError::Address {
        target: target(),
        source,
    })?;
    if !addr.ends_with(&format!(":{port}")) {
        return Err(TargetError::NoPort { target: target() });
    }
    Ok((name, host, port))
}

/// Parses an octal umask such as `022`, `0022` or `0o022`.
pub fn parse_umask(text: &str) -> Result<u32, UmaskError> {
    let digits = text.trim();
    let digits = digits
        .strip_prefix("0o")
        .or_else(|| digits.strip_prefix("0O"))
        .unwrap_or(digits);
    match u32::from_str_radix(digits, 8) {
        Ok(umask) if umask <= 0o777 => Ok(umask),
        _ => Err(UmaskError {
            text: text.to_owned(),
        }),
    }
}

/// `path` made absolute against the current directory (without resolving symlinks).
pub fn absolute(path: &Path) -> Result<PathBuf, ConfigError> {
    std::path::absolute(path).map_err(|source| ConfigError::Absolute {
        path: path.to_owned(),
        source,
    })
}

/// Writes a file readable by its owner only (0600 on Unix).
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(data)?;
    file.sync_all()
}

impl WorkerConfig {
    /// A configuration with every default and a password, for tests and tools.
    #[doc(hidden)]
    pub fn for_tests(basedir: &Path) -> WorkerConfig {
        let mut config =
            WorkerConfig::new(basedir, "127.0.0.1", DEFAULT_MASTER_PORT, "test-worker");
        config.password = "pass".to_owned();
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_forms() {
        assert_eq!(
            parse_master("example.org").unwrap(),
            ("example.org".into(), 9989)
        );
        assert_eq!(
            parse_master("example.org:9020").unwrap(),
            ("example.org".into(), 9020)
        );
        assert_eq!(parse_master("[::1]:9000").unwrap(), ("::1".into(), 9000));
        assert_eq!(parse_master("[::1]").unwrap(), ("::1".into(), 9989));
        assert_eq!(parse_master("10.0.0.1:1").unwrap(), ("10.0.0.1".into(), 1));
        for bad in [
            "http://example.org",
            "http:example.org",
            "wss://x:1",
            "::1",
            "x:0",
            "x:70000",
            "x:",
            ":9",
            "[::1",
            "[::1]9",
            "",
        ] {
            assert!(parse_master(bad).is_err(), "{bad} accepted");
        }
        assert!(
            parse_master("wss://x")
                .unwrap_err()
                .to_string()
                .contains("--use-tls")
        );
    }

    #[test]
    fn umask_and_targets() {
        assert_eq!(parse_umask("022").unwrap(), 0o22);
        assert_eq!(parse_umask("0o077").unwrap(), 0o77);
        assert!(parse_umask("8").is_err());
        assert!(parse_umask("1777").is_err());
        assert_eq!(
            parse_target("web=python.org:80").unwrap(),
            ("web".into(), "python.org".into(), 80)
        );
        assert_eq!(
            parse_target("[::1]:53").unwrap(),
            ("[::1]:53".into(), "::1".into(), 53)
        );
        assert!(parse_target("web=python.org").is_err());
    }

    #[test]
    fn toml_round_trip_with_comments() {
        let mut c = WorkerConfig::new("/tmp/w", "::1", 9000, "w1");
        c.password = "pw".into();
        c.umask = Some(0o22);
        c.limits.memory = Some(1 << 30);
        let text = c.to_toml().unwrap();
        assert!(text.starts_with("# kiln-worker configuration"));
        assert!(
            text.contains("# Worker name, as configured on the master.\nname = \"w1\""),
            "{text}"
        );
        assert!(text.contains("umask = 0o022"), "{text}");
        let mut back = WorkerConfig::from_toml(&text).unwrap();
        back.basedir = c.basedir.clone();
        assert_eq!(back, c);
        back.validate().unwrap();
    }

    #[test]
    fn load_tells_a_missing_file_from_a_bad_key_from_a_bad_value() {
        let dir = tempfile::tempdir().unwrap();
        let e = WorkerConfig::load(dir.path()).unwrap_err();
        assert!(matches!(e, ConfigError::NotAWorkerDir { .. }), "{e:?}");
        assert!(e.to_string().contains("create-worker"), "{e}");

        WorkerConfig::for_tests(dir.path()).save().unwrap();
        let path = WorkerConfig::path_in(dir.path());
        let good = std::fs::read_to_string(&path).unwrap();

        std::fs::write(&path, format!("{good}\nno_such_key = 1\n")).unwrap();
        let e = WorkerConfig::load(dir.path()).unwrap_err();
        let ConfigError::Syntax { path: p, source } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(p, &path);
        assert!(source.to_string().contains("no_such_key"), "{source}");
        let chain = kiln_proto::error_chain(&e);
        assert!(
            chain.starts_with(&format!("{} is not valid: ", path.display()))
                && chain.contains("no_such_key"),
            "{chain}"
        );

        std::fs::write(&path, good.replace("keepalive = 30", "keepalive = 0")).unwrap();
        let e = WorkerConfig::load(dir.path()).unwrap_err();
        let ConfigError::Invalid { source, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(source.problems, ["keepalive: must be at least 1 second"]);
        assert_eq!(
            kiln_proto::error_chain(&e),
            format!(
                "{} is not valid: keepalive: must be at least 1 second",
                path.display()
            )
        );

        let mut c = WorkerConfig::for_tests(dir.path());
        c.password.clear();
        c.password_file = Some("missing".into());
        let e = c.resolved_password().unwrap_err();
        let ConfigError::PasswordFile { source, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn address_errors_keep_what_was_wrong() {
        let e = parse_master("a b:1").unwrap_err();
        assert_eq!(
            e,
            MasterError::Host {
                master: "a b:1".into(),
                source: HostError::Invalid { host: "a b".into() }
            }
        );
        assert_eq!(
            kiln_proto::error_chain(&e),
            "MASTER \"a b:1\": \"a b\" is not a host name or address"
        );
        let e = parse_target("web=x:0").unwrap_err();
        assert!(
            matches!(
                &e,
                TargetError::Address {
                    source: MasterError::Port { .. },
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "target \"web=x:0\": write NAME=HOST:PORT");
        assert!(matches!(
            check_name("a b"),
            Err(NameError::Whitespace { .. })
        ));
        assert_eq!(
            parse_umask("9").unwrap_err(),
            UmaskError { text: "9".into() }
        );
    }

    #[test]
    fn validation_lists_problems() {
        let mut c = WorkerConfig::new("/tmp/w", "h", 1, "a:b");
        c.protocol = "pb".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("name") && e.contains("protocol") && e.contains("no password"),
            "{e}"
        );
    }
}
