//! Command arguments: the ordered `args` map of `start_command`, and typed views
//! of it for each command, accepting Buildbot's camelCase and snake_case names.

use rmpv::Value;

use crate::value::{Map, MapExt, entry, text_of};

/// The `args` map of a `start_command`, kept in wire order so it re-encodes unchanged.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Args(pub Map);

impl Args {
    /// Builds args from `(key, value)` pairs.
    pub fn from_pairs<I, K, V>(pairs: I) -> Args
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: Into<Value>,
    {
        Args(
            pairs
                .into_iter()
                .map(|(k, v)| entry(k.as_ref(), v))
                .collect(),
        )
    }

    pub fn get(&self, keys: &[&str]) -> Option<&Value> {
        self.0.get_any(keys)
    }

    fn text(&self, keys: &[&str]) -> Result<Option<String>, ArgsError> {
        match self.get(keys) {
            None => Ok(None),
            Some(v) => text_of(v)
                .map(Some)
                .ok_or_else(|| ArgsError::wrong_type(keys[0], "a string")),
        }
    }

    fn number(&self, keys: &[&str]) -> Result<Option<f64>, ArgsError> {
        match self.get(keys) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .or_else(|| v.as_i64().map(|i| i as f64))
                .map(Some)
                .ok_or_else(|| ArgsError::wrong_type(keys[0], "a number")),
        }
    }

    fn uint(&self, keys: &[&str]) -> Result<Option<u64>, ArgsError> {
        match self.get(keys) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
                .map(Some)
                .ok_or_else(|| ArgsError::wrong_type(keys[0], "a non-negative integer")),
        }
    }

    fn flag(&self, keys: &[&str], default: bool) -> bool {
        match self.get(keys) {
            None => default,
            Some(Value::Boolean(b)) => *b,
            Some(Value::Integer(i)) => i.as_i64() != Some(0),
            Some(Value::String(s)) => !s.as_bytes().is_empty(),
            Some(_) => true,
        }
    }

    fn paths(&self, keys: &[&str]) -> Result<Option<Vec<String>>, ArgsError> {
        match self.get(keys) {
            None => Ok(None),
            Some(Value::Array(a)) => a
                .iter()
                .map(|p| {
                    text_of(p).ok_or_else(|| ArgsError::wrong_type(keys[0], "a list of strings"))
                })
                .collect::<Result<_, _>>()
                .map(Some),
            Some(v) => text_of(v)
                .map(|p| Some(vec![p]))
                .ok_or_else(|| ArgsError::wrong_type(keys[0], "a list of strings")),
        }
    }
}

/// Why a command's arguments were refused; the text goes back to the master.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ArgsError {
    /// Buildbot's wording: `"<Command> is missing args: a, b"`.
    #[error("{command} is missing args: {}", missing.join(", "))]
    Missing {
        command: &'static str,
        missing: Vec<&'static str>,
    },
    #[error("argument {key:?} must be {expected}")]
    WrongType { key: String, expected: &'static str },
}

impl ArgsError {
    fn wrong_type(key: &str, expected: &'static str) -> ArgsError {
        ArgsError::WrongType {
            key: key.to_owned(),
            expected,
        }
    }
}

fn require(command: &'static str, fields: &[(&'static str, bool)]) -> Result<(), ArgsError> {
    let missing: Vec<_> = fields
        .iter()
        .filter(|(_, present)| !present)
        .map(|(k, _)| *k)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ArgsError::Missing { command, missing })
    }
}

/// The worker commands and the names they are known by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandName {
    Shell,
    UploadFile,
    UploadDirectory,
    DownloadFile,
    Mkdir,
    Rmdir,
    Cpdir,
    Stat,
    Glob,
    Listdir,
    Rmfile,
}

impl CommandName {
    /// Every name a worker advertises in `worker_commands` (§8.1: 14 names).
    pub const ADVERTISED: [&'static str; 14] = [
        "shell",
        "uploadFile",
        "upload_file",
        "uploadDirectory",
        "upload_directory",
        "downloadFile",
        "download_file",
        "mkdir",
        "rmdir",
        "cpdir",
        "stat",
        "glob",
        "listdir",
        "rmfile",
    ];

    pub fn parse(name: &str) -> Option<CommandName> {
        Some(match name {
            "shell" => CommandName::Shell,
            "upload_file" | "uploadFile" => CommandName::UploadFile,
            "upload_directory" | "uploadDirectory" => CommandName::UploadDirectory,
            "download_file" | "downloadFile" => CommandName::DownloadFile,
            "mkdir" => CommandName::Mkdir,
            "rmdir" => CommandName::Rmdir,
            "cpdir" => CommandName::Cpdir,
            "stat" => CommandName::Stat,
            "glob" => CommandName::Glob,
            "listdir" => CommandName::Listdir,
            "rmfile" => CommandName::Rmfile,
            _ => return None,
        })
    }

    /// The snake_case name a msgpack master sends.
    pub fn wire_name(self) -> &'static str {
        match self {
            CommandName::Shell => "shell",
            CommandName::UploadFile => "upload_file",
            CommandName::UploadDirectory => "upload_directory",
            CommandName::DownloadFile => "download_file",
            CommandName::Mkdir => "mkdir",
            CommandName::Rmdir => "rmdir",
            CommandName::Cpdir => "cpdir",
            CommandName::Stat => "stat",
            CommandName::Glob => "glob",
            CommandName::Listdir => "listdir",
            CommandName::Rmfile => "rmfile",
        }
    }
}

/// `set_worker_settings.args`: all four keys are mandatory.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerSettings {
    pub newline_re: String,
    pub max_line_length: usize,
    pub buffer_timeout: f64,
    pub buffer_size: usize,
    /// Whether `buffer_timeout` arrived as an integer (so it re-encodes the same way).
    /// Set on decoding only for integers within ±2^53, which f64 holds exactly; the
    /// encoder writes an int only when the value is such an integer.
    pub buffer_timeout_is_int: bool,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        use crate::defaults::*;
        WorkerSettings {
            newline_re: NEWLINE_RE.to_owned(),
            max_line_length: MAX_LINE_LENGTH,
            buffer_timeout: BUFFER_TIMEOUT,
            buffer_size: BUFFER_SIZE,
            buffer_timeout_is_int: true,
        }
    }
}

impl WorkerSettings {
    pub(crate) fn from_map(m: &Map) -> Result<WorkerSettings, String> {
        if [
            "buffer_size",
            "buffer_timeout",
            "newline_re",
            "max_line_length",
        ]
        .iter()
        .any(|k| !m.has_key(k))
        {
            // The worker's text, verbatim: `str(KeyError(...))`, quotes included.
            return Err("'message did not contain obligatory settings for worker'".to_owned());
        }
        let uint = |k: &str| {
            m.get_key(k)
                .and_then(Value::as_u64)
                .map(|n| n as usize)
                .ok_or(format!("{k:?} must be an integer"))
        };
        let timeout = m.get_key("buffer_timeout").expect("checked above");
        Ok(WorkerSettings {
            newline_re: m
                .get_key("newline_re")
                .and_then(text_of)
                .ok_or("\"newline_re\" must be a string")?,
            max_line_length: uint("max_line_length")?,
            buffer_size: uint("buffer_size")?,
            buffer_timeout: timeout
                .as_f64()
                .or_else(|| timeout.as_i64().map(|i| i as f64))
                .ok_or("\"buffer_timeout\" must be a number")?,
            // Only an integer that f64 holds exactly can go back out as the same integer.
            buffer_timeout_is_int: timeout
                .as_i64()
                .is_some_and(|i| i.unsigned_abs() <= 1 << 53),
        })
    }

    pub(crate) fn write(&self, buf: &mut Vec<u8>) {
        use crate::write::{w_f64, w_int, w_map, w_str, w_uint};
        // The order Buildbot 4.3's master writes them in.
        w_map(buf, 4);
        w_str(buf, "newline_re");
        w_str(buf, &self.newline_re);
        w_str(buf, "max_line_length");
        w_uint(buf, self.max_line_length as u64);
        w_str(buf, "buffer_timeout");
        // As an int only when that is exact (an integral value within ±2^53).
        if self.buffer_timeout_is_int
            && self.buffer_timeout.fract() == 0.0
            && self.buffer_timeout.abs() <= (1u64 << 53) as f64
        {
            w_int(buf, self.buffer_timeout as i64);
        } else {
            w_f64(buf, self.buffer_timeout);
        }
        w_str(buf, "buffer_size");
        w_uint(buf, self.buffer_size as u64);
    }
}

/// `shell`'s `command`: a string for `/bin/sh -c`, or an argv.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandLine {
    Shell(String),
    Argv(Vec<ArgvItem>),
}

/// One argv element; `["obfuscated", real, fake]` runs `real` and shows `fake`.
#[derive(Debug, Clone, PartialEq)]
pub enum ArgvItem {
    Plain(String),
    Obfuscated { real: String, fake: String },
}

impl ArgvItem {
    pub fn real(&self) -> &str {
        match self {
            ArgvItem::Plain(s) => s,
            ArgvItem::Obfuscated { real, .. } => real,
        }
    }
    pub fn shown(&self) -> &str {
        match self {
            ArgvItem::Plain(s) => s,
            ArgvItem::Obfuscated { fake, .. } => fake,
        }
    }
}

/// An `env` value: a string, a list joined with the path separator, or nil (= unset).
#[derive(Debug, Clone, PartialEq)]
pub enum EnvValue {
    Text(String),
    List(Vec<String>),
    Unset,
}

/// A watched log file: streamed as `['log', [name, lines]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LogFile {
    pub name: String,
    pub filename: String,
    pub follow: bool,
}

/// Arguments of `shell` (§8.3).
#[derive(Debug, Clone, PartialEq)]
pub struct ShellArgs {
    pub command: CommandLine,
    pub workdir: String,
    /// `None`: inherit the worker's environment unchanged.
    pub env: Option<Vec<(String, EnvValue)>>,
    /// Set when an env value had an unusable type; the command fails after it is accepted.
    pub env_error: Option<String>,
    pub want_stdout: bool,
    pub want_stderr: bool,
    pub logfiles: Vec<LogFile>,
    /// Seconds without output before the command is killed.
    pub timeout: Option<f64>,
    /// Seconds in total before the command is killed.
    pub max_time: Option<f64>,
    pub max_lines: Option<u64>,
    pub sigterm_time: Option<f64>,
    /// Signal name without `SIG`; default `KILL`.
    pub interrupt_signal: String,
    pub use_pty: bool,
    pub log_environ: bool,
    pub initial_stdin: Option<Vec<u8>>,
}

impl ShellArgs {
    pub fn parse(a: &Args) -> Result<ShellArgs, ArgsError> {
        let workdir = a.text(&["workdir"])?;
        let command = match a.get(&["command"]) {
            None => None,
            Some(Value::Array(items)) => Some(CommandLine::Argv(
                items
                    .iter()
                    .map(argv_item)
                    .collect::<Option<_>>()
                    .ok_or_else(|| {
                        ArgsError::wrong_type("command", "a string or a list of strings")
                    })?,
            )),
            Some(v) => Some(CommandLine::Shell(text_of(v).ok_or_else(|| {
                ArgsError::wrong_type("command", "a string or a list of strings")
            })?)),
        };
        require(
            "WorkerShellCommand",
            &[
                ("workdir", workdir.is_some()),
                ("command", command.is_some()),
            ],
        )?;
        let (env, env_error) = match a.get(&["env"]) {
            None => (None, None),
            Some(Value::Map(m)) if m.is_empty() => (None, None),
            Some(Value::Map(m)) => {
                let mut env = Vec::new();
                let mut error = None;
                for (k, v) in m {
                    let key = text_of(k).unwrap_or_default();
                    let value = match v {
                        Value::Nil => EnvValue::Unset,
                        Value::Array(items) => {
                            match items.iter().map(text_of).collect::<Option<Vec<_>>>() {
                                Some(list) => EnvValue::List(list),
                                None => {
                                    error.get_or_insert(format!("'env' values must be strings or lists; key '{key}' is incorrect"));
                                    continue;
                                }
                            }
                        }
                        other => match text_of(other) {
                            Some(t) => EnvValue::Text(t),
                            None => {
                                error.get_or_insert(format!("'env' values must be strings or lists; key '{key}' is incorrect"));
                                continue;
                            }
                        },
                    };
                    env.push((key, value));
                }
                (Some(env), error)
            }
            Some(_) => return Err(ArgsError::wrong_type("env", "a map")),
        };
        let logfiles = match a.get(&["logfiles"]) {
            None => Vec::new(),
            Some(Value::Map(m)) => m
                .iter()
                .map(|(k, v)| {
                    let name = text_of(k)
                        .ok_or_else(|| ArgsError::wrong_type("logfiles", "a map of names"))?;
                    let (filename, follow) = match v {
                        Value::Map(spec) => (
                            spec.get_key("filename").and_then(text_of).ok_or_else(|| {
                                ArgsError::wrong_type(
                                    "logfiles",
                                    "name → filename or {filename, follow}",
                                )
                            })?,
                            spec.get_key("follow")
                                .is_some_and(|f| f.as_bool().unwrap_or(false)),
                        ),
                        other => (
                            text_of(other).ok_or_else(|| {
                                ArgsError::wrong_type(
                                    "logfiles",
                                    "name → filename or {filename, follow}",
                                )
                            })?,
                            false,
                        ),
                    };
                    Ok(LogFile {
                        name,
                        filename,
                        follow,
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(ArgsError::wrong_type("logfiles", "a map")),
        };
        let initial_stdin = match a.get(&["initial_stdin", "initialStdin"]) {
            None => None,
            Some(Value::Binary(b)) => Some(b.clone()),
            Some(v) => Some(
                text_of(v)
                    .ok_or_else(|| ArgsError::wrong_type("initial_stdin", "a string"))?
                    .into_bytes(),
            ),
        };
        Ok(ShellArgs {
            command: command.expect("required"),
            workdir: workdir.expect("required"),
            env,
            env_error,
            want_stdout: a.flag(&["want_stdout", "wantStdout"], true),
            want_stderr: a.flag(&["want_stderr", "wantStderr"], true),
            logfiles,
            timeout: a.number(&["timeout"])?,
            max_time: a.number(&["maxTime", "max_time"])?,
            max_lines: a.uint(&["max_lines", "maxLines"])?,
            sigterm_time: a.number(&["sigtermTime", "sigterm_time"])?,
            interrupt_signal: a
                .text(&["interruptSignal", "interrupt_signal"])?
                .unwrap_or_else(|| "KILL".to_owned()),
            use_pty: a.flag(&["usePTY", "use_pty"], false),
            log_environ: a.flag(&["logEnviron", "log_environ"], true),
            initial_stdin,
        })
    }
}

fn argv_item(v: &Value) -> Option<ArgvItem> {
    if let Value::Array(parts) = v
        && parts.len() == 3
        && text_of(&parts[0]).as_deref() == Some("obfuscated")
    {
        return Some(ArgvItem::Obfuscated {
            real: text_of(&parts[1])?,
            fake: text_of(&parts[2])?,
        });
    }
    text_of(v).map(ArgvItem::Plain)
}

/// Arguments of `upload_file` (§8.4).
#[derive(Debug, Clone, PartialEq)]
pub struct UploadFileArgs {
    pub path: String,
    pub blocksize: u64,
    pub maxsize: Option<u64>,
    pub keepstamp: bool,
}

impl UploadFileArgs {
    pub fn parse(a: &Args) -> Result<UploadFileArgs, ArgsError> {
        let path = a.text(&["path"])?;
        let blocksize = a.uint(&["blocksize"])?;
        require(
            "WorkerFileUploadCommand",
            &[("path", path.is_some()), ("blocksize", blocksize.is_some())],
        )?;
        Ok(UploadFileArgs {
            path: path.expect("required"),
            blocksize: blocksize.expect("required").max(1),
            maxsize: a.uint(&["maxsize"])?,
            keepstamp: a.flag(&["keepstamp"], false),
        })
    }
}

/// Compression of a directory upload's tar stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Bzip2,
}

/// Arguments of `upload_directory` (§8.5).
#[derive(Debug, Clone, PartialEq)]
pub struct UploadDirectoryArgs {
    pub path: String,
    pub blocksize: u64,
    pub maxsize: Option<u64>,
    pub compress: Compression,
}

impl UploadDirectoryArgs {
    pub fn parse(a: &Args) -> Result<UploadDirectoryArgs, ArgsError> {
        let path = a.text(&["path"])?;
        let blocksize = a.uint(&["blocksize"])?;
        require(
            "WorkerDirectoryUploadCommand",
            &[("path", path.is_some()), ("blocksize", blocksize.is_some())],
        )?;
        let compress = match a.text(&["compress"])?.as_deref() {
            None => Compression::None,
            Some("gz") => Compression::Gzip,
            Some("bz2") => Compression::Bzip2,
            Some(_) => return Err(ArgsError::wrong_type("compress", "nil, \"gz\" or \"bz2\"")),
        };
        Ok(UploadDirectoryArgs {
            path: path.expect("required"),
            blocksize: blocksize.expect("required").max(1),
            maxsize: a.uint(&["maxsize"])?,
            compress,
        })
    }
}

/// Arguments of `download_file` (§8.6).
#[derive(Debug, Clone, PartialEq)]
pub struct DownloadFileArgs {
    pub path: String,
    pub blocksize: u64,
    pub maxsize: Option<u64>,
    /// Permission bits to apply, e.g. 0o755.
    pub mode: Option<u32>,
}

impl DownloadFileArgs {
    pub fn parse(a: &Args) -> Result<DownloadFileArgs, ArgsError> {
        let path = a.text(&["path"])?;
        let blocksize = a.uint(&["blocksize"])?;
        require(
            "WorkerFileDownloadCommand",
            &[("path", path.is_some()), ("blocksize", blocksize.is_some())],
        )?;
        Ok(DownloadFileArgs {
            path: path.expect("required"),
            blocksize: blocksize.expect("required").max(1),
            maxsize: a.uint(&["maxsize"])?,
            mode: a.uint(&["mode"])?.map(|m| m as u32),
        })
    }
}

/// Arguments of `mkdir`, and of `rmdir` (which also runs a child process with limits).
#[derive(Debug, Clone, PartialEq)]
pub struct PathsArgs {
    pub paths: Vec<String>,
    pub log_environ: bool,
    pub timeout: Option<f64>,
    pub max_time: Option<f64>,
}

impl PathsArgs {
    pub fn parse(command: &'static str, a: &Args) -> Result<PathsArgs, ArgsError> {
        let paths = a.paths(&["paths"])?;
        require(command, &[("paths", paths.is_some())])?;
        Ok(PathsArgs {
            paths: paths.expect("required"),
            log_environ: a.flag(&["logEnviron", "log_environ"], true),
            timeout: a.number(&["timeout"])?.or(Some(120.0)),
            max_time: a.number(&["maxTime", "max_time"])?,
        })
    }
}

/// Arguments of `cpdir` (§8.9).
#[derive(Debug, Clone, PartialEq)]
pub struct CpdirArgs {
    pub from_path: String,
    pub to_path: String,
    pub log_environ: bool,
    pub timeout: Option<f64>,
    pub max_time: Option<f64>,
}

impl CpdirArgs {
    pub fn parse(a: &Args) -> Result<CpdirArgs, ArgsError> {
        let from_path = a.text(&["from_path"])?;
        let to_path = a.text(&["to_path"])?;
        require(
            "WorkerCpdirCommand",
            &[
                ("from_path", from_path.is_some()),
                ("to_path", to_path.is_some()),
            ],
        )?;
        Ok(CpdirArgs {
            from_path: from_path.expect("required"),
            to_path: to_path.expect("required"),
            log_environ: a.flag(&["logEnviron", "log_environ"], true),
            timeout: a.number(&["timeout"])?.or(Some(120.0)),
            max_time: a.number(&["maxTime", "max_time"])?,
        })
    }
}

/// Arguments of `stat`, `glob`, `listdir` and `rmfile`: one absolute `path`.
#[derive(Debug, Clone, PartialEq)]
pub struct PathArgs {
    pub path: String,
}

impl PathArgs {
    pub fn parse(command: &'static str, a: &Args) -> Result<PathArgs, ArgsError> {
        let path = a.text(&["path"])?;
        require(command, &[("path", path.is_some())])?;
        Ok(PathArgs {
            path: path.expect("required"),
        })
    }
}
