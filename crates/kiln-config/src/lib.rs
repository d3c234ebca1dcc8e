//! `master.star` → a typed, validated [`MasterConfig`].
//!
//! Kiln's master is configured in [Starlark](https://github.com/bazelbuild/starlark) (Python
//! syntax, evaluated by starlark-rust with the extended dialect: top-level `for`/`if`, functions,
//! list comprehensions; no `import`, `class`, `try` or `while`). This crate is the only one that
//! links starlark: everything it produces is plain serde data.
//!
//! # The shape of `master.star`
//!
//! The file sets well-known globals; each object is made by a builtin that checks its arguments
//! at the call, so mistakes are reported at the call's `file:line:col`:
//!
//! | global | type | required |
//! |---|---|---|
//! | `MASTER` | `master(...)` | no (defaults: title "Kiln", `sqlite:state.sqlite`, ports 9989 / 8010) |
//! | `WORKERS` | list of `worker(...)` | yes |
//! | `BUILDERS` | list of `builder(...)` | yes |
//! | `SCHEDULERS` | list of `force`/`single_branch`/`any_branch`/`nightly`/`periodic`/`triggerable`/`dependent` | no |
//!
//! Other globals and helper functions are free for the user. A config may be split over files:
//! `load("lib/factories.star", "unix_steps")` reads a path relative to the config's directory
//! (no `..`), evaluated once with the same builtins; its values are frozen. A complete example:
//!
//! ```python
//! MASTER = master(
//!     title = "Python", title_url = "https://www.python.org/", url = "https://buildbot.python.org/",
//!     db_url = "postgresql://kiln@localhost/kiln", worker_port = 9020, web_port = 8010,
//!     tls_cert = "/etc/kiln/cert.pem", tls_key = "/etc/kiln/key.pem",
//! )
//!
//! WORKERS = [
//!     worker("bcannon-wasi", password = secret("bcannon-wasi"), max_builds = 2,
//!            admin = "Brett <brett@example.org>", properties = {"os": "wasi"}),
//!     worker("ware-win11", password_hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA",
//!            availability = ["not 22:00-08:00 UTC"]),
//! ]
//!
//! CPU = worker_lock("cpu", max_count = 2)
//! UPLOAD = master_lock("upload")
//!
//! def unix_steps(branch):
//!     return [
//!         git(repourl = "https://github.com/python/cpython.git", branch = branch,
//!             mode = "full", method = "fresh", shallow = True, filters = ["blob:none"],
//!             clobber_on_failure = True, halt_on_failure = True),
//!         configure(command = ["./configure", "--with-pydebug"], halt_on_failure = True),
//!         compile(command = ["make", "-j4"], warning_pattern = r"warning:", locks = [exclusive(CPU)]),
//!         test(command = interpolate("make buildbottest TESTOPTS=%(prop:testopts:-)s"),
//!              decode_rc = {0: SUCCESS, 5: WARNINGS}, timeout = 1200, max_time = 7200),
//!         file_upload(workersrc = "python.tar.gz", masterdest = interpolate("/srv/%(prop:buildnumber)s.tgz"),
//!                     do_step_if = prop_equals("upload", True), locks = [UPLOAD]),
//!         rmdir(dir = "build/tmp", always_run = True),
//!     ]
//!
//! BUILDERS = [
//!     builder(name = "x86-64 %s" % b, workers = ["bcannon-wasi"], steps = unix_steps(b),
//!             tags = [b, "unix"], env = {"PYTHONSTRICT": "1"}, priority = 1)
//!     for b in ["3.13", "main"]
//! ]
//!
//! SCHEDULERS = [
//!     single_branch("main", branch = "main", tree_stable_timer = 5,
//!                   file_not_important = ["Doc/**"], builder_names = ["x86-64 main"]),
//!     force("force", builder_names = [b["name"] for b in BUILDERS],
//!           params = [string_param("testopts", default = ""), bool_param("upload")]),
//!     nightly("nightly", cron = "0 3 * * *", timezone = "Europe/Amsterdam", builder_names = ["x86-64 3.13"]),
//! ]
//! ```
//!
//! Builtins: `master`, `worker`, `secret`, `builder`; steps `shell`, `git`, `configure`,
//! `compile`, `test`, `set_property_from_command`, `file_upload`, `directory_upload`,
//! `file_download`, `string_download`, `mkdir`, `rmdir`, `rmfile`, `trigger`, each also taking the
//! flags `name`, `halt_on_failure`, `flunk_on_failure`, `warn_on_failure`, `always_run`,
//! `do_step_if`, `timeout`, `max_time`, `sigterm_time`, `env`, `workdir`, `description`,
//! `description_done`, `locks`; schedulers `force`, `single_branch`, `any_branch`, `nightly`,
//! `periodic`, `triggerable`, `dependent`; force parameters `string_param`, `text_param`,
//! `int_param`, `bool_param`, `choice_param`; locks `master_lock`, `worker_lock`, `counting`,
//! `exclusive`; values `interpolate`, `prop`, `prop_equals`, `prop_not_equals`; the result
//! constants `SUCCESS` … `CANCELLED`. Field-by-field meaning is on the types in [`types`].
//! A builtin returns a plain dict (its checked arguments, with `_loc`), so `b["name"]` works.
//! Editing such a dict afterwards is allowed; the edit is checked when the config is
//! assembled, and its error then points at the object's call rather than at the edit.
//!
//! `do_step_if` cannot take a Starlark function: the file is evaluated once, at load, and
//! functions do not exist at build time. Use `prop("x")` (truthy), `prop_equals`,
//! `prop_not_equals`, or a constant.
//!
//! # Errors
//!
//! [`ConfigError`] lists every problem, one per line, as
//! `master.star:14:5: error: builder "x86-64 main": unknown worker "w9": define it with ...`.
//! Syntax errors, bad arguments (`shell(): unknown argument `comand`, expected one of ...`),
//! bad interpolations, unknown names across objects, duplicates, bad cron or time zone, and
//! missing secrets are all reported this way.
//!
//! # Threads
//!
//! [`load`] evaluates on the caller's thread and is CPU-bound (CPython's 1,036 builders take a
//! fraction of a second); async callers use `tokio::task::spawn_blocking`.
//!
//! # Secrets
//!
//! `secret("name")` and `%(secret:name)s` read `KILN_SECRET_<NAME>` from the environment, else the
//! file `name` in the secrets directory (default: `secrets/` beside `master.star`). The values
//! live only in [`MasterConfig::secrets`] (never serialized); [`Redactor`] hides them in text.

pub mod diff;
pub mod error;
mod eval;
pub mod interp;
pub mod log_redact;
pub mod secrets;
pub mod types;
mod validate;

use std::path::{Path, PathBuf};

use starlark::environment::Module;
use starlark::eval::Evaluator;
use starlark::syntax::{AstModule, Dialect};

pub use diff::{ConfigDiff, NamedDiff};
pub use error::{ConfigError, Diagnostic};
pub use interp::{Interpolation, RenderContext};
pub use log_redact::{LineBreaks, LogRedactor};
pub use secrets::{Redactor, SecretSource, Secrets};
pub use types::*;

/// The file [`load`] reads when given a directory.
pub const DEFAULT_FILE: &str = "master.star";

/// Options for [`load_with`].
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Secrets directory; default `secrets/` beside the config file.
    pub secrets_dir: Option<PathBuf>,
    /// Don't read `KILN_SECRET_*` variables (tests).
    pub ignore_env: bool,
    /// Give up when evaluation takes longer than this (default 30 s), so a runaway loop in
    /// `master.star` cannot hang `checkconfig` or a reconfig.
    pub timeout: Option<std::time::Duration>,
    /// Give up after this many Starlark "ticks" (function calls and loop iterations; default
    /// 100 million; the 1,036-builder CPython fixture loads within 1 million).
    pub max_ticks: Option<u64>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            secrets_dir: None,
            ignore_env: false,
            timeout: Some(std::time::Duration::from_secs(30)),
            max_ticks: Some(100_000_000),
        }
    }
}

/// What `kiln checkconfig` prints on success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub path: PathBuf,
    pub workers: usize,
    pub builders: usize,
    pub schedulers: usize,
    pub locks: usize,
    pub secrets: usize,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: config is good: {} workers, {} builders, {} schedulers, {} locks, {} secrets",
            self.path.display(),
            self.workers,
            self.builders,
            self.schedulers,
            self.locks,
            self.secrets
        )
    }
}

/// `path` itself, or `path/master.star` when it is a directory.
pub fn config_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(DEFAULT_FILE)
    } else {
        path.to_path_buf()
    }
}

/// Loads and validates a config file (or `DIR/master.star`), with default options.
pub fn load(path: impl AsRef<Path>) -> Result<MasterConfig, ConfigError> {
    load_with(path, &LoadOptions::default())
}

/// For `kiln checkconfig [DIR|FILE]`: loads, and sums up what was found.
pub fn check(path: impl AsRef<Path>) -> Result<Summary, ConfigError> {
    let file = config_file(path.as_ref());
    let cfg = load(&file)?;
    Ok(Summary {
        path: file,
        workers: cfg.workers.len(),
        builders: cfg.builders.len(),
        schedulers: cfg.schedulers.len(),
        locks: cfg.locks.len(),
        secrets: cfg.secrets.len(),
    })
}

/// Loads and validates a config file (or `DIR/master.star`).
pub fn load_with(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<MasterConfig, ConfigError> {
    let evaluated = evaluate_with(path.as_ref(), opts)?;
    finish_with(evaluated, &secret_source(path.as_ref(), opts))
}

/// Loads a config from text; `name` is the file name used in locations. `load()` statements
/// are refused (there is no directory to load from).
pub fn load_str(
    name: &str,
    src: &str,
    secrets: &SecretSource,
) -> Result<MasterConfig, ConfigError> {
    finish_with(
        evaluate_source(name, src.to_string(), None, &LoadOptions::default())?,
        secrets,
    )
}

/// The first half of [`load_with`]: what running `master.star` (Starlark) gave, before it
/// is checked and typed by [`finish`]. Serializable, so that the evaluation can run in a
/// short-lived process of its own (the `kiln` master does) and only this crosses over.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Evaluated {
    /// The file name used in locations.
    pub name: String,
    /// `{"master": .., "workers": [..], "builders": [..], "schedulers": [..]}`, objects with
    /// their `_loc`.
    pub json: serde_json::Value,
    /// Each secret named in the config, with where.
    pub secret_uses: Vec<(String, Loc)>,
}

/// Runs a config file (or `DIR/master.star`): the Starlark half of [`load_with`]. Errors
/// carry file:line:col.
pub fn evaluate_with(path: &Path, opts: &LoadOptions) -> Result<Evaluated, ConfigError> {
    let file = config_file(path);
    let src = std::fs::read_to_string(&file)
        .map_err(|e| ConfigError::one(None, format!("cannot read {}: {e}", file.display())))?;
    evaluate_source(
        &file.display().to_string(),
        src,
        file.parent().map(Path::to_path_buf),
        opts,
    )
}

/// The second half of [`load_with`], for what [`evaluate_with`] gave for `path` with the same
/// `opts`: types and validates it and reads its secrets.
pub fn finish(
    evaluated: Evaluated,
    path: &Path,
    opts: &LoadOptions,
) -> Result<MasterConfig, ConfigError> {
    finish_with(evaluated, &secret_source(path, opts))
}

fn secret_source(path: &Path, opts: &LoadOptions) -> SecretSource {
    let file = config_file(path);
    let secrets_dir = opts
        .secrets_dir
        .clone()
        .or_else(|| file.parent().map(|p| p.join("secrets")));
    SecretSource {
        dir: secrets_dir,
        use_env: !opts.ignore_env,
    }
}

fn starlark_diag_in(file: &str, e: starlark::Error) -> ConfigError {
    let mut err = starlark_diag(e);
    for d in &mut err.diagnostics {
        if d.loc.is_none() {
            d.message = format!(
                "{file}: {} (a runaway loop? see LoadOptions::timeout and max_ticks)",
                d.message
            );
        }
    }
    err
}

fn starlark_diag(e: starlark::Error) -> ConfigError {
    let loc = e.span().map(|s| {
        let r = s.resolve();
        Loc {
            file: r.file,
            line: r.span.begin.line + 1,
            col: r.span.begin.column + 1,
        }
    });
    let msg = format!("{}", e.without_diagnostic());
    let msg = msg.trim().to_string();
    ConfigError::one(loc, msg)
}

fn evaluate_source(
    name: &str,
    src: String,
    dir: Option<PathBuf>,
    opts: &LoadOptions,
) -> Result<Evaluated, ConfigError> {
    let ast = AstModule::parse(name, src, &Dialect::Extended).map_err(starlark_diag)?;
    let globals = eval::globals();
    eval::SECRET_USES.with(|s| s.borrow_mut().clear());
    let json = Module::with_temp_heap(|module| -> Result<serde_json::Value, ConfigError> {
        {
            let limits = eval::Limits {
                deadline: opts.timeout.map(|t| std::time::Instant::now() + t),
                max_ticks: opts.max_ticks,
            };
            let loader = eval::Loader::new(dir, &globals, limits.clone());
            let mut ev = Evaluator::new(&module);
            ev.set_loader(&loader);
            limits
                .apply(&mut ev)
                .map_err(|e| ConfigError::one(None, e.to_string()))?;
            ev.eval_module(ast, &globals)
                .map_err(|e| starlark_diag_in(name, e))?;
        }
        let file_loc = Some(Loc {
            file: name.to_string(),
            line: 1,
            col: 1,
        });
        let get = |g: &str, required: bool| -> Result<serde_json::Value, ConfigError> {
            match module.get(g) {
                Some(v) => eval::to_json(v)
                    .map_err(|e| ConfigError::one(file_loc.clone(), format!("{g}: {e}"))),
                None if required => Err(ConfigError::one(
                    file_loc.clone(),
                    format!("{name} must set {g} = [...]"),
                )),
                None => Ok(serde_json::Value::Null),
            }
        };
        let master = get("MASTER", false)?;
        let master = if master.is_null() {
            serde_json::json!({})
        } else {
            master
        };
        let schedulers = get("SCHEDULERS", false)?;
        let schedulers = if schedulers.is_null() {
            serde_json::json!([])
        } else {
            schedulers
        };
        Ok(serde_json::json!({
            "master": master,
            "workers": get("WORKERS", true)?,
            "builders": get("BUILDERS", true)?,
            "schedulers": schedulers,
        }))
    })?;
    let uses = eval::SECRET_USES.with(|s| std::mem::take(&mut *s.borrow_mut()));
    Ok(Evaluated {
        name: name.to_string(),
        json,
        secret_uses: uses,
    })
}

fn finish_with(
    evaluated: Evaluated,
    secret_source: &SecretSource,
) -> Result<MasterConfig, ConfigError> {
    let Evaluated {
        name,
        json,
        secret_uses: uses,
    } = evaluated;
    let name = name.as_str();
    let mut cfg: MasterConfig = serde_path_to_error::deserialize(&json).map_err(|e| {
        // Point at the object that failed when it carries a location.
        let path = e.path().to_string();
        let mut loc = Some(Loc { file: name.to_string(), line: 1, col: 1 });
        let mut cur = &json;
        for seg in path.split('.') {
            let (key, idx) = match seg.split_once('[') {
                Some((k, i)) => (k, i.trim_end_matches(']').parse::<usize>().ok()),
                None => (seg, None),
            };
            cur = &cur[key];
            if let Some(i) = idx {
                cur = &cur[i];
            }
            if let Some(l) = cur.get("_loc").and_then(|l| serde_json::from_value::<Loc>(l.clone()).ok()) {
                loc = Some(l);
            }
        }
        let first = path.split(['.', '[']).next().unwrap_or("");
        let shown = format!("{}{}", first.to_uppercase(), &path[first.len()..]);
        ConfigError::one(loc, format!("{shown}: {}; make each object with its builtin (worker(...), builder(...), shell(...), ...)", e.into_inner()))
    })?;

    let mut diags = validate::validate(&mut cfg);
    let mut seen = std::collections::HashSet::new();
    for (n, loc) in uses {
        if !seen.insert(n.clone()) {
            continue;
        }
        match secret_source.lookup(&n) {
            Ok(Some(v)) => cfg.secrets.insert(n, v),
            Ok(None) => {
                let dir = secret_source
                    .dir()
                    .map(|d| format!("create the file {} or ", d.join(&n).display()))
                    .unwrap_or_default();
                diags.push(Diagnostic {
                    loc: Some(loc),
                    message: format!(
                        "secret {n:?} not found: {dir}set {}",
                        SecretSource::env_var(&n)
                    ),
                });
            }
            Err(e) => diags.push(Diagnostic {
                loc: Some(loc),
                message: format!("secret {n:?}: cannot read it: {e}"),
            }),
        }
    }
    if diags.is_empty() {
        Ok(cfg)
    } else {
        Err(ConfigError { diagnostics: diags })
    }
}
