//! The typed configuration. Every struct denies unknown fields; `_loc` is where the object was
//! made in `master.star` (`file:line:col`) and is ignored by [`crate::ConfigDiff`].

use std::collections::BTreeMap;
use std::fmt;

use kiln_model::Results;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::interp::Interpolation;
use crate::secrets::Secrets;

/// A place in a config file: `file:line:col`, 1-based.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Loc {
    pub file: String,
    pub line: usize,
    pub col: usize,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.col)
    }
}

impl Serialize for Loc {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Loc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let mut it = s.rsplitn(3, ':');
        let col = it.next().and_then(|c| c.parse().ok());
        let line = it.next().and_then(|c| c.parse().ok());
        match (it.next(), line, col) {
            (Some(file), Some(line), Some(col)) => Ok(Loc {
                file: file.to_string(),
                line,
                col,
            }),
            _ => Err(D::Error::custom(format!("bad location {s:?}"))),
        }
    }
}

pub type Props = BTreeMap<String, serde_json::Value>;

/// The whole master configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MasterConfig {
    pub master: MasterSettings,
    pub workers: Vec<Worker>,
    pub builders: Vec<Builder>,
    #[serde(default)]
    pub schedulers: Vec<Scheduler>,
    /// Every lock that builders or steps use, by name (filled in by validation).
    #[serde(default)]
    pub locks: BTreeMap<String, Lock>,
    /// Values of the secrets the config names; never serialized.
    #[serde(skip)]
    pub secrets: Secrets,
}

impl MasterConfig {
    pub fn builder(&self, name: &str) -> Option<&Builder> {
        self.builders.iter().find(|b| b.name == name)
    }
    pub fn worker(&self, name: &str) -> Option<&Worker> {
        self.workers.iter().find(|w| w.name == name)
    }
    pub fn scheduler(&self, name: &str) -> Option<&Scheduler> {
        self.schedulers.iter().find(|s| s.name == name)
    }
    /// A redactor for every secret this config uses.
    pub fn redactor(&self) -> crate::Redactor {
        self.secrets.redactor()
    }
}

fn default_title() -> String {
    "Kiln".into()
}
fn default_db() -> String {
    "sqlite:state.sqlite".into()
}
fn default_worker_port() -> u16 {
    9989
}
fn default_web_port() -> u16 {
    8010
}
fn yes() -> bool {
    true
}
/// 256 MiB: far above a verbose test run, far below what fills a disk.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 256 << 20;
fn default_log_max_bytes() -> u64 {
    DEFAULT_LOG_MAX_BYTES
}
fn default_log_max_tail_bytes() -> u64 {
    1 << 20
}
fn default_max_connections() -> u32 {
    8192
}
fn default_max_connections_per_address() -> u32 {
    128
}
fn default_header_timeout_secs() -> u32 {
    10
}
fn default_idle_timeout_secs() -> u32 {
    120
}
fn default_failed_logins_per_minute() -> u32 {
    10
}

/// `trusted_proxies`: each entry an address ("10.0.0.5", a single host) or a CIDR range.
mod proxy_nets {
    use ipnet::IpNet;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(nets: &[IpNet], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(nets.iter().map(|n| n.to_string()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|t| parse(t).map_err(serde::de::Error::custom))
            .collect()
    }

    pub fn parse(text: &str) -> Result<IpNet, String> {
        let t = text.trim();
        if let Ok(n) = t.parse::<IpNet>() {
            return Ok(n.trunc());
        }
        t.parse::<std::net::IpAddr>().map(IpNet::from).map_err(|_| {
            format!("trusted_proxies: {text:?} is not an address or a CIDR range (e.g. \"10.0.0.5\" or \"10.0.0.0/24\")")
        })
    }
}

/// `master(...)`: settings of the master itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MasterSettings {
    #[serde(default = "default_title")]
    pub title: String,
    #[serde(default)]
    pub title_url: Option<String>,
    /// The public URL of the web UI.
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default = "default_db")]
    pub db_url: String,
    #[serde(default = "default_worker_port")]
    pub worker_port: u16,
    #[serde(default = "default_web_port")]
    pub web_port: u16,
    /// The address both ports listen on (default all interfaces; "127.0.0.1" keeps a
    /// test or single-machine master on loopback).
    #[serde(default)]
    pub bind: Option<std::net::IpAddr>,
    #[serde(default)]
    pub tls_cert: Option<String>,
    #[serde(default)]
    pub tls_key: Option<String>,
    /// Properties every build gets.
    #[serde(default)]
    pub properties: Props,
    /// Logs of builds older than this many days are deleted by the janitor (CPython: 180).
    #[serde(default)]
    pub log_horizon_days: Option<u32>,
    /// Builds (with their steps and logs) older than this many days are deleted.
    #[serde(default)]
    pub build_horizon_days: Option<u32>,
    /// Per-log cap in bytes (default 256 MiB; 0 turns the cap off). A log that outgrows it
    /// keeps its head, a visible marker line, and its last `log_max_tail_bytes` (where test
    /// summaries are); Buildbot's `logMaxSize`.
    #[serde(default = "default_log_max_bytes")]
    pub log_max_bytes: u64,
    /// How much of a capped log's end is kept (default 1 MiB); Buildbot's `logMaxTailSize`.
    #[serde(default = "default_log_max_tail_bytes")]
    pub log_max_tail_bytes: u64,
    /// Open connections allowed on each port (default 8192). At the cap, the oldest
    /// connection still sending its request headers is closed to make room.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Open connections allowed from one client address on each port (default 128). Behind a
    /// trusted proxy the client is the address the proxy reports.
    #[serde(default = "default_max_connections_per_address")]
    pub max_connections_per_address: u32,
    /// Seconds a client has to send its request headers (and a worker its WebSocket
    /// handshake) before the connection is closed (default 10).
    #[serde(default = "default_header_timeout_secs")]
    pub header_timeout_secs: u32,
    /// Seconds an idle keep-alive web connection stays open (default 120).
    #[serde(default = "default_idle_timeout_secs")]
    pub idle_timeout_secs: u32,
    /// Failed worker logins allowed per client address and worker name per minute
    /// (default 10); more are answered 429 without a check.
    #[serde(default = "default_failed_logins_per_minute")]
    pub failed_logins_per_minute: u32,
    /// Proxies in front of the master (addresses or CIDR ranges, e.g. HAProxy at
    /// "10.0.0.5"): the worker port accepts the PROXY protocol (v1 or v2) from them and the
    /// web port their `X-Forwarded-For`, so limits apply to the real client.
    #[serde(default, with = "proxy_nets")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    #[serde(rename = "_loc", default)]
    pub loc: Loc,
}

impl Default for MasterSettings {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("defaults")
    }
}

/// `secret("name")`: a reference to a secret, whose value is in [`MasterConfig::secrets`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    #[serde(rename = "__secret")]
    pub name: String,
}

/// `worker(...)`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Worker {
    pub name: String,
    /// `password=secret("...")`
    #[serde(default)]
    pub password: Option<SecretRef>,
    /// An argon2 PHC string (`$argon2id$...`).
    #[serde(default)]
    pub password_hash: Option<String>,
    #[serde(default)]
    pub max_builds: Option<u32>,
    #[serde(default)]
    pub properties: Props,
    /// Who runs the machine (Buildbot's `admin` info).
    #[serde(default)]
    pub admin: Option<String>,
    /// Availability windows, e.g. `"not 22:00-08:00 UTC"`.
    #[serde(default)]
    pub availability: Vec<Availability>,
    #[serde(default)]
    pub notify_on_missing: Vec<String>,
    #[serde(rename = "_loc", default)]
    pub loc: Loc,
}

/// A daily time window in a time zone; `not` inverts it (the worker is unavailable inside it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Availability {
    pub text: String,
    pub not: bool,
    /// Minutes after midnight.
    pub start: u16,
    pub end: u16,
    pub tz: chrono_tz::Tz,
}

impl Availability {
    /// Parses `[not ]HH:MM-HH:MM [TZ]` (an en dash works too; the zone defaults to UTC).
    pub fn parse(text: &str) -> Result<Availability, String> {
        let help = "write it as \"HH:MM-HH:MM [ZONE]\" or \"not HH:MM-HH:MM [ZONE]\", e.g. \"not 22:00-08:00 UTC\"";
        let t = text.trim();
        let (not, t) = match t.strip_prefix("not ") {
            Some(r) => (true, r.trim()),
            None => (false, t),
        };
        let mut words = t.split_whitespace();
        let range = words
            .next()
            .ok_or_else(|| format!("empty availability window: {help}"))?;
        let zone = words.next().unwrap_or("UTC");
        if words.next().is_some() {
            return Err(format!(
                "availability window {text:?} has extra words: {help}"
            ));
        }
        let range = range.replace('–', "-");
        let (a, b) = range
            .split_once('-')
            .ok_or_else(|| format!("availability window {text:?} has no range: {help}"))?;
        let hm = |s: &str| -> Option<u16> {
            let (h, m) = s.split_once(':')?;
            let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60 && s.len() <= 5).then_some(h * 60 + m)
        };
        let start = hm(a)
            .ok_or_else(|| format!("bad time {a:?} in availability window {text:?}: {help}"))?;
        let end = hm(b)
            .ok_or_else(|| format!("bad time {b:?} in availability window {text:?}: {help}"))?;
        let tz: chrono_tz::Tz = zone
            .parse()
            .map_err(|_| format!("unknown time zone {zone:?} in availability window {text:?}: use an IANA name such as UTC or Europe/Berlin"))?;
        Ok(Availability {
            text: text.to_string(),
            not,
            start,
            end,
            tz,
        })
    }

    /// Whether `minute` (minutes after local midnight in `self.tz`) falls in the window, before `not`.
    pub fn window_contains(&self, minute: u16) -> bool {
        if self.start <= self.end {
            (self.start..self.end).contains(&minute)
        } else {
            minute >= self.start || minute < self.end
        }
    }

    /// Whether the worker may take builds at `now` according to this window.
    pub fn allows(&self, now: chrono::DateTime<chrono::Utc>) -> bool {
        use chrono::Timelike;
        let local = now.with_timezone(&self.tz);
        let inside = self.window_contains((local.hour() * 60 + local.minute()) as u16);
        inside != self.not
    }
}

impl Serialize for Availability {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Availability {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Availability::parse(&String::deserialize(d)?).map_err(D::Error::custom)
    }
}

/// A string that may be rendered at build time: plain text, `interpolate(...)`, `prop(...)`,
/// or `secret(...)`.
#[derive(Debug, Clone, PartialEq)]
pub enum Renderable {
    Text(String),
    Interpolate {
        format: Interpolation,
        kwargs: BTreeMap<String, Renderable>,
    },
    Prop {
        name: String,
        default: Option<serde_json::Value>,
    },
    Secret(String),
}

impl Renderable {
    /// Secrets named here (directly or in `%(secret:...)s`).
    pub fn secret_names(&self, out: &mut Vec<String>) {
        match self {
            Renderable::Secret(n) => out.push(n.clone()),
            Renderable::Interpolate { format, kwargs } => {
                out.extend(format.secret_names().map(str::to_string));
                kwargs.values().for_each(|k| k.secret_names(out));
            }
            _ => {}
        }
    }

    /// Renders against a build's context.
    pub fn render(
        &self,
        ctx: &crate::interp::RenderContext<'_>,
    ) -> Result<String, crate::interp::RenderError> {
        match self {
            Renderable::Text(s) => Ok(s.clone()),
            Renderable::Secret(n) => ctx
                .secrets
                .and_then(|s| s.get(n))
                .map(str::to_string)
                .ok_or_else(|| crate::interp::RenderError::MissingSecret(n.clone())),
            Renderable::Prop { name, default } => {
                let v = ctx
                    .properties
                    .and_then(|p| p.get(name))
                    .or(default.as_ref());
                Ok(match v {
                    None | Some(serde_json::Value::Null) => String::new(),
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(o) => o.to_string(),
                })
            }
            Renderable::Interpolate { format, kwargs } => {
                let mut kw = BTreeMap::new();
                for (k, v) in kwargs {
                    kw.insert(k.clone(), v.render(ctx)?);
                }
                format.render(ctx, &kw)
            }
        }
    }

    pub(crate) fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Renderable::Text(s) => json!(s),
            Renderable::Secret(n) => json!({ "__secret": n }),
            Renderable::Prop { name, default } => json!({ "__prop": name, "default": default }),
            Renderable::Interpolate { format, kwargs } => {
                let kw: serde_json::Map<_, _> = kwargs
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_json()))
                    .collect();
                json!({ "__interpolate": format.source(), "kwargs": kw })
            }
        }
    }

    pub(crate) fn from_json(v: serde_json::Value) -> Result<Renderable, String> {
        const WHAT: &str = "expected a string, interpolate(...), prop(...) or secret(...)";
        match v {
            serde_json::Value::String(s) => Ok(Renderable::Text(s)),
            serde_json::Value::Number(n) => Ok(Renderable::Text(n.to_string())),
            serde_json::Value::Object(mut m) => {
                if let Some(f) = m.remove("__interpolate") {
                    let f = f.as_str().ok_or(WHAT)?;
                    let format = Interpolation::parse(f).map_err(|e| e.to_string())?;
                    let mut kwargs = BTreeMap::new();
                    if let Some(serde_json::Value::Object(kw)) = m.remove("kwargs") {
                        for (k, v) in kw {
                            kwargs.insert(k, Renderable::from_json(v)?);
                        }
                    }
                    for k in format.kw_names() {
                        if !kwargs.contains_key(k) {
                            return Err(format!(
                                "interpolation {:?} uses %(kw:{k})s but interpolate() got no `{k}=` keyword",
                                format.source()
                            ));
                        }
                    }
                    Ok(Renderable::Interpolate { format, kwargs })
                } else if let Some(p) = m.remove("__prop") {
                    let name = p.as_str().ok_or(WHAT)?.to_string();
                    let default = m.remove("default").filter(|d| !d.is_null());
                    Ok(Renderable::Prop { name, default })
                } else if let Some(s) = m.remove("__secret") {
                    Ok(Renderable::Secret(s.as_str().ok_or(WHAT)?.to_string()))
                } else {
                    Err(WHAT.into())
                }
            }
            other => Err(format!("{WHAT}, got {other}")),
        }
    }
}

impl Serialize for Renderable {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Renderable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Renderable::from_json(serde_json::Value::deserialize(d)?).map_err(D::Error::custom)
    }
}

/// A command: one string run by the shell, or a list of arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Command {
    Argv(Vec<Renderable>),
    Shell(Renderable),
}

/// `builder(...)`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Builder {
    pub name: String,
    pub workers: Vec<String>,
    #[serde(default)]
    pub steps: Vec<Step>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub properties: Props,
    #[serde(default)]
    pub env: BTreeMap<String, Renderable>,
    #[serde(default)]
    pub builddir: Option<String>,
    #[serde(default = "yes")]
    pub collapse_requests: bool,
    #[serde(default)]
    pub priority: i64,
    #[serde(default)]
    pub locks: Vec<LockAccess>,
    #[serde(rename = "_loc", default)]
    pub loc: Loc,
}

/// `master_lock(...)` / `worker_lock(...)`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    pub name: String,
    pub scope: LockScope,
    #[serde(default = "one")]
    pub max_count: u32,
    /// Worker locks: a different `max_count` on some workers.
    #[serde(default)]
    pub max_count_for_worker: BTreeMap<String, u32>,
    #[serde(rename = "_loc", default)]
    pub loc: Loc,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockScope {
    Master,
    Worker,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessMode {
    Counting,
    Exclusive,
}

/// A lock and how it is taken: `counting(lock)`, `exclusive(lock)`, or a bare lock (counting).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockAccess {
    pub lock: Lock,
    pub access: AccessMode,
}

/// One step: its kind with the kind's arguments, and the flags every step has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub name: String,
    pub kind: StepKind,
    pub flags: StepFlags,
    #[serde(rename = "_loc", default)]
    pub loc: Loc,
}

/// Flags shared by every step constructor.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepFlags {
    #[serde(default)]
    pub halt_on_failure: bool,
    #[serde(default = "yes")]
    pub flunk_on_failure: bool,
    #[serde(default)]
    pub warn_on_failure: bool,
    #[serde(default)]
    pub always_run: bool,
    #[serde(default)]
    pub do_step_if: Option<Condition>,
    /// Seconds without output before the command is killed.
    #[serde(default)]
    pub timeout: Option<u64>,
    /// Seconds the command may run in all.
    #[serde(default)]
    pub max_time: Option<u64>,
    /// Seconds between SIGTERM and SIGKILL.
    #[serde(default)]
    pub sigterm_time: Option<u64>,
    #[serde(default)]
    pub env: BTreeMap<String, Renderable>,
    #[serde(default)]
    pub workdir: Option<Renderable>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub description_done: Option<String>,
    #[serde(default)]
    pub locks: Vec<LockAccess>,
}

/// `do_step_if`: a constant, or a test on a property (`prop("x")` is "x is truthy";
/// `prop_equals("x", v)`, `prop_not_equals("x", v)`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Condition {
    Const(bool),
    Prop(PropCondition),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PropCondition {
    #[serde(rename = "__prop")]
    pub name: String,
    #[serde(default)]
    pub default: Option<serde_json::Value>,
    #[serde(default)]
    pub equals: Option<serde_json::Value>,
    #[serde(default)]
    pub not_equals: Option<serde_json::Value>,
}

impl Condition {
    /// Evaluates against a build's properties.
    pub fn eval(&self, props: &kiln_model::Properties) -> bool {
        match self {
            Condition::Const(b) => *b,
            Condition::Prop(p) => {
                let v = props.get(&p.name).or(p.default.as_ref());
                if let Some(e) = &p.equals {
                    return v == Some(e);
                }
                if let Some(e) = &p.not_equals {
                    return v != Some(e);
                }
                match v {
                    None | Some(serde_json::Value::Null) => false,
                    Some(serde_json::Value::Bool(b)) => *b,
                    Some(serde_json::Value::String(s)) => !s.is_empty(),
                    Some(serde_json::Value::Number(n)) => n.as_f64() != Some(0.0),
                    Some(serde_json::Value::Array(a)) => !a.is_empty(),
                    Some(serde_json::Value::Object(o)) => !o.is_empty(),
                }
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    Shell(ShellArgs),
    Configure(ShellArgs),
    Compile(ShellArgs),
    Test(ShellArgs),
    Git(GitArgs),
    SetPropertyFromCommand(SetPropertyArgs),
    FileUpload(FileUploadArgs),
    DirectoryUpload(DirectoryUploadArgs),
    FileDownload(FileDownloadArgs),
    StringDownload(StringDownloadArgs),
    Mkdir(DirArgs),
    Rmdir(DirArgs),
    Rmfile(FileArgs),
    Trigger(TriggerArgs),
}

impl StepKind {
    pub fn name(&self) -> &'static str {
        match self {
            StepKind::Shell(_) => "shell",
            StepKind::Configure(_) => "configure",
            StepKind::Compile(_) => "compile",
            StepKind::Test(_) => "test",
            StepKind::Git(_) => "git",
            StepKind::SetPropertyFromCommand(_) => "set_property_from_command",
            StepKind::FileUpload(_) => "file_upload",
            StepKind::DirectoryUpload(_) => "directory_upload",
            StepKind::FileDownload(_) => "file_download",
            StepKind::StringDownload(_) => "string_download",
            StepKind::Mkdir(_) => "mkdir",
            StepKind::Rmdir(_) => "rmdir",
            StepKind::Rmfile(_) => "rmfile",
            StepKind::Trigger(_) => "trigger",
        }
    }
}

/// `shell`, `configure`, `compile`, `test`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShellArgs {
    pub command: Command,
    /// A regex; matching output lines count as warnings.
    #[serde(default)]
    pub warning_pattern: Option<String>,
    /// Exit code → result, e.g. `{0: SUCCESS, 5: WARNINGS}`; other codes are FAILURE.
    #[serde(default)]
    pub decode_rc: BTreeMap<i32, Results>,
    #[serde(default)]
    pub use_pty: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GitMode {
    #[default]
    Incremental,
    Full,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GitMethod {
    Fresh,
    Clean,
    Clobber,
    Copy,
}

/// `shallow=True` (depth 1) or `shallow=N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Shallow {
    Flag(bool),
    Depth(u32),
}

/// `git`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitArgs {
    pub repourl: Renderable,
    #[serde(default)]
    pub branch: Option<Renderable>,
    #[serde(default)]
    pub mode: GitMode,
    /// Only with `mode="full"`; defaults to `fresh` there.
    #[serde(default)]
    pub method: Option<GitMethod>,
    #[serde(default)]
    pub shallow: Option<Shallow>,
    /// Partial clone filters, e.g. `["blob:none"]`.
    #[serde(default)]
    pub filters: Vec<String>,
    #[serde(default)]
    pub clobber_on_failure: bool,
    #[serde(default)]
    pub submodules: bool,
    #[serde(default)]
    pub retry_fetch: bool,
}

/// `set_property_from_command`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetPropertyArgs {
    pub command: Command,
    pub property: String,
    #[serde(default = "yes")]
    pub strip: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUploadArgs {
    pub workersrc: Renderable,
    pub masterdest: Renderable,
    #[serde(default)]
    pub mode: Option<u32>,
    #[serde(default)]
    pub url: Option<Renderable>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compress {
    Gz,
    Bz2,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryUploadArgs {
    pub workersrc: Renderable,
    pub masterdest: Renderable,
    #[serde(default)]
    pub compress: Option<Compress>,
    #[serde(default)]
    pub url: Option<Renderable>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDownloadArgs {
    pub mastersrc: Renderable,
    pub workerdest: Renderable,
    #[serde(default)]
    pub mode: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StringDownloadArgs {
    pub s: Renderable,
    pub workerdest: Renderable,
    #[serde(default)]
    pub mode: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirArgs {
    pub dir: Renderable,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileArgs {
    pub file: Renderable,
}

/// `trigger`: starts builds through triggerable schedulers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerArgs {
    pub scheduler_names: Vec<String>,
    #[serde(default)]
    pub wait_for_finish: bool,
    #[serde(default = "yes")]
    pub update_sourcestamp: bool,
    #[serde(default)]
    pub set_properties: BTreeMap<String, Renderable>,
}

/// A scheduler: a name, the builders it starts, and its kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scheduler {
    pub name: String,
    pub builder_names: Vec<String>,
    pub kind: SchedulerKind,
    #[serde(default)]
    pub properties: Props,
    #[serde(default)]
    pub priority: Option<i64>,
    #[serde(rename = "_loc", default)]
    pub loc: Loc,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerKind {
    Force(ForceArgs),
    SingleBranch(BranchArgs),
    AnyBranch(BranchArgs),
    Nightly(NightlyArgs),
    Periodic(PeriodicArgs),
    Triggerable(TriggerableArgs),
    Dependent(DependentArgs),
}

impl SchedulerKind {
    pub fn name(&self) -> &'static str {
        match self {
            SchedulerKind::Force(_) => "force",
            SchedulerKind::SingleBranch(_) => "single_branch",
            SchedulerKind::AnyBranch(_) => "any_branch",
            SchedulerKind::Nightly(_) => "nightly",
            SchedulerKind::Periodic(_) => "periodic",
            SchedulerKind::Triggerable(_) => "triggerable",
            SchedulerKind::Dependent(_) => "dependent",
        }
    }
}

/// `force`: builds started by hand, with typed parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForceArgs {
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub params: Vec<ForceParam>,
    /// Whether the form asks for branch/revision/repository.
    #[serde(default = "yes")]
    pub source: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForceParam {
    pub name: String,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(rename = "type")]
    pub kind: ForceParamType,
    #[serde(default)]
    pub default: Option<serde_json::Value>,
    #[serde(default)]
    pub required: bool,
    /// For `choice_param`.
    #[serde(default)]
    pub choices: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForceParamType {
    String,
    Text,
    Int,
    Bool,
    Choice,
}

/// `single_branch` / `any_branch`: builds on changes, after the tree has been stable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BranchArgs {
    /// `single_branch`: the branch; `any_branch`: ignored (use `branches` / `branch_regex`).
    #[serde(default)]
    pub branch: Option<String>,
    #[serde(default)]
    pub branches: Vec<String>,
    #[serde(default)]
    pub branch_regex: Option<String>,
    #[serde(default)]
    pub repository: Option<String>,
    #[serde(default)]
    pub codebase: Option<String>,
    /// Seconds without a new change before the build starts.
    #[serde(default)]
    pub tree_stable_timer: Option<u64>,
    /// Globs (`Lib/**`): a change is important if any file matches.
    #[serde(default)]
    pub file_is_important: Vec<String>,
    /// Globs: files that never make a change important (`Doc/**`).
    #[serde(default)]
    pub file_not_important: Vec<String>,
    /// Unimportant changes are dropped rather than included with the next important one.
    #[serde(default)]
    pub only_important: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NightlyArgs {
    /// Five-field cron: `min hour day-of-month month day-of-week`.
    pub cron: String,
    #[serde(default = "utc")]
    pub timezone: String,
    #[serde(default)]
    pub branch: Option<String>,
    #[serde(default)]
    pub only_if_changed: bool,
}

fn utc() -> String {
    "UTC".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeriodicArgs {
    /// Seconds between builds.
    pub period: u64,
    #[serde(default)]
    pub branch: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerableArgs {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DependentArgs {
    /// The upstream scheduler's name.
    pub upstream: String,
}
