//! `kiln-worker create-worker`: makes a base directory with `kiln-worker.toml`
//! and `info/`, optionally importing an existing buildbot-worker directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::config::{self, WorkerConfig};
use crate::machine::Machine;

/// The text `info/admin` starts with (Buildbot's placeholder).
pub const ADMIN_PLACEHOLDER: &str = "Your Name Here <admin@youraddress.invalid>\n";

/// What `create-worker` was asked for; `None` = not given (default, or the imported value).
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    pub basedir: PathBuf,
    pub master: Option<String>,
    pub name: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    pub from_buildbot: Option<PathBuf>,
    pub use_tls: bool,
    pub ca_file: Option<PathBuf>,
    pub keepalive: Option<u64>,
    pub umask: Option<u32>,
    pub maxretries: Option<u32>,
    pub protocol: Option<String>,
    pub delete_leftover_dirs: bool,
    pub run_as: Option<String>,
    pub allow_root: bool,
    pub sandbox: Option<String>,
    pub no_sandbox_network: bool,
    pub log_size: Option<u64>,
    pub log_count: Option<u32>,
    pub force: bool,
}

/// What was done, for the summary printed to the user.
#[derive(Debug)]
pub struct Created {
    pub config: WorkerConfig,
    /// Lines worth telling the user (imported settings, warnings).
    pub notes: Vec<String>,
}

/// Creates (or with `force`, rewrites) a worker directory.
pub fn create_worker(opts: &CreateOptions) -> anyhow::Result<Created> {
    let basedir = config::absolute(&opts.basedir)?;
    let mut notes = Vec::new();

    let imported = match &opts.from_buildbot {
        Some(old) => Some(read_buildbot_dir(old)?),
        None => None,
    };
    let tac = imported.as_ref().map(|i| &i.settings);

    // Master and name: the positional arguments win over the imported tac.
    let (host, port) = match (&opts.master, tac.and_then(|t| t.master.clone())) {
        (Some(master), _) => config::parse_master(master)?,
        (None, Some(master)) => master,
        (None, None) if opts.from_buildbot.is_some() => {
            bail!(
                "the buildbot.tac names no master (buildmaster_host/port or connection_string); give MASTER on the command line"
            )
        }
        (None, None) => bail!(
            "MASTER is missing: kiln-worker create-worker BASEDIR MASTERHOST:PORT NAME PASSWORD"
        ),
    };
    let name = match (opts.name.clone(), tac.and_then(|t| t.name.clone())) {
        (Some(name), _) | (None, Some(name)) => name,
        (None, None) => bail!(
            "NAME is missing: kiln-worker create-worker BASEDIR MASTERHOST:PORT NAME PASSWORD"
        ),
    };
    config::check_name(&name).context("NAME")?;

    let mut config = WorkerConfig::new(basedir.clone(), host, port, name);

    match (
        &opts.password,
        &opts.password_file,
        tac.and_then(|t| t.password.clone()),
    ) {
        (Some(_), Some(_), _) => {
            bail!("give the password either as PASSWD or with --passwd-file, not both")
        }
        (Some(pw), None, _) => config.password = pw.clone(),
        (None, Some(file), _) => {
            let file = config::absolute(file)?;
            config.password_file = Some(file);
            config.resolved_password().context("--passwd-file")?;
        }
        (None, None, Some(pw)) => config.password = pw,
        (None, None, None) => bail!(
            "no password: give it as the last argument (PASSWD) or with --passwd-file FILE (first line = the password)"
        ),
    }
    if config.password.chars().any(|c| c == '\n' || c == '\r') {
        bail!("the password must be a single line");
    }

    if let Some(t) = tac {
        if let Some(k) = t.keepalive {
            config.keepalive = k;
        }
        config.umask = t.umask;
        config.maxretries = t.maxretries;
        config.use_tls = t.use_tls;
        config.delete_leftover_dirs = t.delete_leftover_dirs;
        if let Some(size) = t.log_size {
            config.log_size = size;
        }
        if let Some(count) = t.log_count {
            config.log_count = count;
        }
        if let Some(proto) = &t.protocol
            && proto != kiln_proto::PROTOCOL_NAME
        {
            notes.push(format!(
                "warning: the old worker spoke protocol {proto:?}; kiln-worker speaks {} only. The master must accept \
                 msgpack workers, usually on its web port, not the PB port {}: check with the master's admin \
                 and fix master_port in {} if needed.",
                kiln_proto::PROTOCOL_NAME,
                config.master_port,
                config::CONFIG_FILE
            ));
        }
        for ignored in &t.ignored {
            notes.push(format!(
                "note: buildbot.tac setting {ignored} has no kiln-worker equivalent; ignored"
            ));
        }
    }

    // Explicit options win over imported values.
    config.use_tls |= opts.use_tls;
    config.delete_leftover_dirs |= opts.delete_leftover_dirs;
    if let Some(ca) = &opts.ca_file {
        let ca = config::absolute(ca)?;
        if !ca.is_file() {
            bail!("--ca-file {}: no such file", ca.display());
        }
        config.ca_file = Some(ca);
        if !config.use_tls {
            notes.push("note: --ca-file only matters with --use-tls".to_owned());
        }
    }
    if let Some(k) = opts.keepalive {
        config.keepalive = k;
    }
    if let Some(u) = opts.umask {
        config.umask = Some(u);
    }
    if let Some(m) = opts.maxretries {
        config.maxretries = Some(m);
    }
    if let Some(p) = &opts.protocol {
        if p == "pb" {
            bail!(
                "--protocol pb is not supported yet; kiln-worker speaks {}",
                kiln_proto::PROTOCOL_NAME
            );
        }
        config.protocol = p.clone();
    }
    config.run_as = opts.run_as.clone();
    config.allow_root = opts.allow_root;
    config.sandbox = opts.sandbox.clone();
    config.sandbox_network = !opts.no_sandbox_network;
    if opts.no_sandbox_network && config.sandbox.is_none() {
        notes.push("note: --no-sandbox-network only matters with --sandbox bwrap".to_owned());
    }
    if let Some(size) = opts.log_size {
        config.log_size = size;
    }
    if let Some(count) = opts.log_count {
        config.log_count = count;
    }
    #[cfg(unix)]
    if let Some(user) = &config.run_as
        && nix::unistd::User::from_name(user).ok().flatten().is_none()
    {
        bail!(
            "--run-as {user}: no such user on this machine; create it first (e.g. `useradd --create-home {user}`)"
        );
    }
    config.validate()?;

    // Write.
    let config_path = WorkerConfig::path_in(&basedir);
    if config_path.exists() && !opts.force {
        bail!(
            "{} already exists; not overwriting it. Use --force to replace it (info/ and logs are kept)",
            config_path.display()
        );
    }
    std::fs::create_dir_all(&basedir)
        .with_context(|| format!("cannot create the directory {}", basedir.display()))?;
    config.save()?;

    let info = basedir.join("info");
    std::fs::create_dir_all(&info).with_context(|| format!("cannot create {}", info.display()))?;
    if let Some(imp) = &imported {
        for (file, text) in &imp.info {
            let target = info.join(file);
            if target.exists() {
                notes.push(format!("kept the existing info/{}", file));
            } else {
                std::fs::write(&target, text)
                    .with_context(|| format!("cannot write {}", target.display()))?;
                notes.push(format!("copied info/{file} from {}", imp.dir.display()));
            }
        }
    }
    write_if_absent(&info.join("admin"), ADMIN_PLACEHOLDER)?;
    write_if_absent(&info.join("host"), &Machine::probe().describe())?;

    #[cfg(unix)]
    if nix::unistd::geteuid().is_root() && config.run_as.is_none() && !config.allow_root {
        notes.push(
            "warning: you are root; the worker refuses to run builds as root. Create the worker as an \
             unprivileged user, or add --run-as USER (builds run as USER) or --allow-root."
                .to_owned(),
        );
    }
    Ok(Created { config, notes })
}

fn write_if_absent(path: &Path, text: &str) -> anyhow::Result<()> {
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(mut f) => {
            use std::io::Write as _;
            f.write_all(text.as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot create {}", path.display())),
    }
}

/// The next-steps text printed after a successful `create-worker`.
pub fn next_steps(config: &WorkerConfig, exe: &Path) -> String {
    let dir = config.basedir.display();
    let exe = exe.display();
    format!(
        "Created worker {name:?} in {dir} (master {master}{tls}).\n\
         \n\
         Next steps:\n\
         \x20 1. Put your name and e-mail address in {dir}/info/admin, and check the\n\
         \x20    machine description in {dir}/info/host (the master shows both).\n\
         \x20 2. Check that the machine has what builds need:\n\
         \x20      {exe} doctor {dir}\n\
         \x20 3. Start the worker:\n\
         \x20      {exe} start {dir}\n\
         \x20 4. Start it again after a reboot: run `crontab -e` and add the line\n\
         \x20      @reboot {exe} restart {dir}\n\
         \x20    (or use a service manager: {exe} install-service {dir})\n",
        name = config.name,
        master = config.master_address(),
        tls = if config.use_tls { ", TLS" } else { "" },
    )
}

/// Settings read from a buildbot-worker `buildbot.tac`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TacSettings {
    pub master: Option<(String, u16)>,
    pub name: Option<String>,
    pub password: Option<String>,
    pub keepalive: Option<u64>,
    pub umask: Option<u32>,
    pub maxretries: Option<u32>,
    pub use_tls: bool,
    pub delete_leftover_dirs: bool,
    pub protocol: Option<String>,
    pub log_size: Option<u64>,
    pub log_count: Option<u32>,
    /// Settings that were set but have no equivalent (e.g. `allow_shutdown = 'file'`).
    pub ignored: Vec<String>,
}

/// An imported buildbot-worker directory.
#[derive(Debug)]
pub struct BuildbotDir {
    pub dir: PathBuf,
    pub settings: TacSettings,
    /// Regular files of `info/` (name → content).
    pub info: BTreeMap<String, Vec<u8>>,
}

/// Reads `OLD/buildbot.tac` and `OLD/info/*`.
pub fn read_buildbot_dir(dir: &Path) -> anyhow::Result<BuildbotDir> {
    let dir = config::absolute(dir)?;
    let tac_path = dir.join("buildbot.tac");
    let text = std::fs::read_to_string(&tac_path).with_context(|| {
        format!("--from-buildbot {}: cannot read {}; give the buildbot-worker base directory (the one holding buildbot.tac)", dir.display(), tac_path.display())
    })?;
    let settings =
        parse_tac(&text).with_context(|| format!("cannot use {}", tac_path.display()))?;
    let mut info = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir(dir.join("info")) {
        for entry in entries.flatten() {
            let Ok(ft) = entry.file_type() else { continue };
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if ft.is_file() && !name.starts_with('.') {
                let data = std::fs::read(entry.path())
                    .with_context(|| format!("cannot read {}", entry.path().display()))?;
                info.insert(name, data);
            }
        }
    }
    Ok(BuildbotDir {
        dir,
        settings,
        info,
    })
}

/// A Python literal as written in a tac file.
#[derive(Debug, Clone, PartialEq)]
enum PyValue {
    Str(String),
    Int(i64),
    Bool(bool),
    None,
}

impl PyValue {
    fn truthy(&self) -> bool {
        match self {
            PyValue::Str(s) => !s.is_empty(),
            PyValue::Int(i) => *i != 0,
            PyValue::Bool(b) => *b,
            PyValue::None => false,
        }
    }
}

/// Parses the top-level `name = literal` assignments of a `buildbot.tac`.
pub fn parse_tac(text: &str) -> anyhow::Result<TacSettings> {
    let mut vars: BTreeMap<String, PyValue> = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with(char::is_whitespace) {
            continue; // inside a block or a continuation line
        }
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        let name = name.trim();
        if name.is_empty()
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            || value.starts_with('=')
        {
            continue;
        }
        if let Some(v) = parse_py_literal(value) {
            vars.insert(name.to_owned(), v);
        }
    }
    if !text.contains("Application('buildbot-worker')")
        && !text.contains("Application(\"buildbot-worker\")")
        && !vars.contains_key("buildmaster_host")
    {
        bail!(
            "this does not look like a buildbot-worker buildbot.tac (no Application('buildbot-worker'), no buildmaster_host)"
        );
    }
    let string = |k: &str| match vars.get(k) {
        Some(PyValue::Str(s)) => Some(s.clone()),
        _ => None,
    };
    let int = |k: &str| match vars.get(k) {
        Some(PyValue::Int(i)) => Some(*i),
        _ => None,
    };
    let flag = |k: &str| vars.get(k).is_some_and(PyValue::truthy);

    let mut s = TacSettings::default();
    let mut use_tls = flag("use_tls");
    s.master = match string("connection_string") {
        Some(cs) => {
            let (host, port, tls) = parse_connection_string(&cs)?;
            use_tls |= tls;
            Some((host, port))
        }
        None => match (string("buildmaster_host"), int("port")) {
            (Some(host), Some(port)) => {
                let port = u16::try_from(port)
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| anyhow::anyhow!("port = {port} is not a TCP port"))?;
                Some((host, port))
            }
            (Some(host), None) => Some((host, config::DEFAULT_MASTER_PORT)),
            _ => None,
        },
    };
    s.use_tls = use_tls;
    s.name = string("workername").or_else(|| string("slavename"));
    s.password = string("passwd");
    s.keepalive = int("keepalive")
        .and_then(|k| u64::try_from(k).ok())
        .filter(|k| *k > 0);
    s.umask = int("umask")
        .and_then(|u| u32::try_from(u).ok())
        .filter(|u| *u <= 0o777);
    s.maxretries = int("maxretries").and_then(|m| u32::try_from(m).ok());
    s.delete_leftover_dirs = flag("delete_leftover_dirs");
    s.protocol = string("protocol");
    s.log_size = int("rotateLength")
        .and_then(|v| u64::try_from(v).ok())
        .filter(|v| *v >= 1024);
    s.log_count = int("maxRotatedFiles").and_then(|v| u32::try_from(v).ok());
    for key in ["allow_shutdown", "proxy_connection_string"] {
        if let Some(v) = vars.get(key)
            && *v != PyValue::None
        {
            s.ignored.push(format!("{key} = {v:?}"));
        }
    }
    Ok(s)
}

/// Parses a Twisted client endpoint string: `tcp:host=H:port=P` or `tls:host=H:port=P`
/// (`\:` escapes a colon, as in IPv6 addresses). Returns host, port, TLS.
fn parse_connection_string(cs: &str) -> anyhow::Result<(String, u16, bool)> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = cs.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.extend(chars.next()),
            ':' => parts.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    parts.push(cur);
    let kind = parts
        .first()
        .map(|k| k.to_ascii_lowercase())
        .unwrap_or_default();
    let tls = match kind.as_str() {
        "tcp" | "tcp6" | "tcp4" => false,
        "tls" | "ssl" => true,
        _ => bail!(
            "connection_string {cs:?}: only tcp: and tls: endpoints can be imported; give MASTER on the command line"
        ),
    };
    let mut host = None;
    let mut port = None;
    for (i, part) in parts.iter().enumerate().skip(1) {
        match part.split_once('=') {
            Some(("host", h)) => host = Some(h.to_owned()),
            Some(("port", p)) => port = p.parse::<u16>().ok(),
            Some(_) => {}
            // positional form: tcp:HOST:PORT
            None if i == 1 => host = Some(part.clone()),
            None if i == 2 => port = part.parse::<u16>().ok(),
            None => {}
        }
    }
    match (host, port) {
        (Some(h), Some(p)) if !h.is_empty() && p != 0 => Ok((h, p, tls)),
        _ => bail!(
            "connection_string {cs:?}: no host=... and port=...; give MASTER on the command line"
        ),
    }
}

/// Parses the right-hand side of an assignment if it is a simple literal
/// (a string, an int, True/False/None), followed by nothing but a comment.
fn parse_py_literal(text: &str) -> Option<PyValue> {
    let text = text.trim();
    let mut chars = text.chars();
    let first = chars.next()?;
    let (raw, quote) = match first {
        '\'' | '"' => (false, first),
        'r' | 'R' | 'u' | 'U' | 'b' | 'B' if matches!(chars.clone().next(), Some('\'' | '"')) => {
            (matches!(first, 'r' | 'R'), chars.next()?)
        }
        _ => {
            let value = text.split('#').next().unwrap_or("").trim();
            return match value {
                "None" => Some(PyValue::None),
                "True" => Some(PyValue::Bool(true)),
                "False" => Some(PyValue::Bool(false)),
                _ => parse_py_int(value).map(PyValue::Int),
            };
        }
    };
    let mut out = String::new();
    loop {
        let c = chars.next()?; // unterminated (or triple-quoted) string: not a simple literal
        if c == quote {
            let rest = chars.as_str().trim();
            return (rest.is_empty() || rest.starts_with('#')).then_some(PyValue::Str(out));
        }
        if c == '\\' && !raw {
            match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                '\\' => out.push('\\'),
                '\'' => out.push('\''),
                '"' => out.push('"'),
                other => {
                    out.push('\\');
                    out.push(other);
                }
            }
        } else {
            out.push(c);
        }
    }
}

fn parse_py_int(text: &str) -> Option<i64> {
    let t = text.replace('_', "");
    let t = t.trim_end_matches(['L', 'l']); // Python 2 long
    if let Some(oct) = t.strip_prefix("0o").or_else(|| t.strip_prefix("0O")) {
        return i64::from_str_radix(oct, 8).ok();
    }
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return i64::from_str_radix(hex, 16).ok();
    }
    if t.len() > 1 && t.starts_with('0') {
        return i64::from_str_radix(&t[1..], 8).ok(); // Python 2 octal, e.g. umask = 022
    }
    t.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAC: &str = r#"import os

from buildbot_worker.bot import Worker
from twisted.application import service

basedir = '/home/buildbot/buildarea'
rotateLength = 10000000
maxRotatedFiles = 10

# if this is a relocatable tac file, get the directory containing the TAC
if basedir == '.':
    basedir = os.path.abspath(os.path.dirname(__file__))

# note: this line is matched against to check that this is a worker
# directory; do not edit it.
application = service.Application('buildbot-worker')

buildmaster_host = 'buildbot.python.org'
port = 9020
connection_string = None
workername = 'cstratak-fedora'
passwd = 'it\'s secret'  # from the admins
keepalive = 600
umask = 0o22
maxdelay = 300
numcpus = None
allow_shutdown = None
maxretries = None
use_tls = 0
delete_leftover_dirs = 1
proxy_connection_string = None
protocol = 'pb'

s = Worker(buildmaster_host, port, workername, passwd, basedir,
           keepalive, umask=umask, maxdelay=maxdelay)
s.setServiceParent(application)
"#;

    #[test]
    fn parses_a_real_tac() {
        let s = parse_tac(TAC).unwrap();
        assert_eq!(s.master, Some(("buildbot.python.org".into(), 9020)));
        assert_eq!(s.name.as_deref(), Some("cstratak-fedora"));
        assert_eq!(s.password.as_deref(), Some("it's secret"));
        assert_eq!(s.keepalive, Some(600));
        assert_eq!(s.umask, Some(0o22));
        assert_eq!(s.maxretries, None);
        assert!(!s.use_tls);
        assert!(s.delete_leftover_dirs);
        assert_eq!(s.protocol.as_deref(), Some("pb"));
        assert_eq!(s.log_size, Some(10_000_000));
        assert!(s.ignored.is_empty());
    }

    #[test]
    fn connection_strings_and_python2_octal() {
        let tac = "application = service.Application('buildbot-worker')\n\
                   connection_string = 'tls:host=\\\\:\\\\:1:port=9989'\nbuildmaster_host = None\nport = None\n\
                   slavename = \"old\"\numask = 022\nuse_tls = False\nallow_shutdown = 'file'\n";
        let s = parse_tac(tac).unwrap();
        assert_eq!(s.master, Some(("::1".into(), 9989)));
        assert!(s.use_tls);
        assert_eq!(s.name.as_deref(), Some("old"));
        assert_eq!(s.umask, Some(0o22));
        assert_eq!(s.ignored.len(), 1);
        assert_eq!(
            parse_connection_string("tcp:host=m.example:port=9989").unwrap(),
            ("m.example".into(), 9989, false)
        );
        assert!(parse_connection_string("unix:/tmp/sock").is_err());
        assert!(parse_tac("x = 1\n").is_err());
    }
}
