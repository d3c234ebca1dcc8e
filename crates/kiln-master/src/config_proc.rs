//! Running `master.star` in a short-lived child process.
//!
//! The `kiln` binary re-executes itself (`/proc/self/exe`) with the hidden first argument
//! [`EVALUATE_ARG`]; the child runs the Starlark half of loading
//! ([`kiln_config::evaluate_with`]) and prints the result, [`kiln_config::Evaluated`] or the
//! [`kiln_config::ConfigError`], as JSON on its stdout. The master types and validates it
//! ([`kiln_config::finish`]) and reads the secrets itself, so errors read exactly as with an
//! in-process load (file:line:col). The master thereby never faults in Starlark's code (a few
//! MB of its binary) nor keeps the allocator's pages Starlark's heap used, and a config that
//! overflows its stack kills the child, not the master.
//!
//! Only the `kiln` binary turns this on ([`use_child_process`]): a test or an embedder of the
//! library is not `kiln`, so it loads on a thread of its own as before.

use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use kiln_config::{ConfigError, Evaluated, LoadOptions, MasterConfig};

/// The hidden first argument of `kiln` that evaluates the config file given next.
pub const EVALUATE_ARG: &str = "__evaluate-config";

static CHILD_PROCESS: AtomicBool = AtomicBool::new(false);

/// Makes [`load`] evaluate in a child process that runs this very executable with
/// [`EVALUATE_ARG`]; for the `kiln` binary, whose `main` handles that argument
/// ([`child_main`]).
pub fn use_child_process() {
    CHILD_PROCESS.store(true, Ordering::Relaxed);
}

/// `kiln __evaluate-config FILE`: prints `{"Ok": Evaluated}` or `{"Err": ConfigError}` on
/// stdout. Exit status 0 when that was written, whatever the config's verdict.
pub fn child_main(file: &Path) -> ExitCode {
    let result = kiln_config::evaluate_with(file, &LoadOptions::default());
    let out = std::io::stdout().lock();
    match serde_json::to_writer(std::io::BufWriter::new(out), &result) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kiln: writing the evaluated config: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Loads and validates `file` (or `DIR/master.star`) like [`kiln_config::load`], with the
/// Starlark evaluation in a child process when [`use_child_process`] was called.
pub(crate) fn load(file: &Path) -> Result<MasterConfig, ConfigError> {
    if !CHILD_PROCESS.load(Ordering::Relaxed) {
        return kiln_config::load(file);
    }
    let evaluated = evaluate_in_child(file)?;
    kiln_config::finish(evaluated, file, &LoadOptions::default())
}

fn evaluate_in_child(file: &Path) -> Result<Evaluated, ConfigError> {
    // /proc/self/exe rather than current_exe(): still this binary after it was replaced on disk.
    let exe = if cfg!(target_os = "linux") {
        "/proc/self/exe".into()
    } else {
        std::env::current_exe().unwrap_or_default()
    };
    let failed =
        |what: String| ConfigError::one(None, format!("evaluating {}: {what}", file.display()));
    let out = Command::new(&exe)
        .arg(EVALUATE_ARG)
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| failed(format!("cannot run {}: {e}", exe.display())))?;
    if !out.status.success() {
        return Err(failed(format!(
            "the evaluating process ended with {} (a runaway recursion?)",
            out.status
        )));
    }
    decode(&out.stdout).map_err(|e| {
        failed(format!(
            "unreadable answer from the evaluating process: {e}"
        ))
    })?
}

fn decode(answer: &[u8]) -> serde_json::Result<Result<Evaluated, ConfigError>> {
    serde_json::from_slice(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What crosses from the child is enough: through JSON, the same config or the same errors.
    fn through_json(dir: &Path) -> Result<MasterConfig, ConfigError> {
        let file = dir.join("master.star");
        let evaluated = kiln_config::evaluate_with(&file, &LoadOptions::default());
        let text = serde_json::to_vec(&evaluated).unwrap();
        let evaluated = decode(&text).unwrap()?;
        kiln_config::finish(evaluated, &file, &LoadOptions::default())
    }

    fn config(src: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("master.star"), src).unwrap();
        std::fs::create_dir(dir.path().join("secrets")).unwrap();
        std::fs::write(dir.path().join("secrets").join("pw"), "hunter2\n").unwrap();
        dir
    }

    const GOOD: &str = r#"
MASTER = master(title = "t", worker_port = 0, web_port = 0, bind = "127.0.0.1")
WORKERS = [worker("w%d" % i, password = secret("pw")) for i in range(3)]
BUILDERS = [builder("b", workers = ["w0", "w1"], steps = [shell(name = "s", command = ["echo", "%(prop:x)s"], timeout = 90)])]
SCHEDULERS = [force("f", builder_names = ["b"])]
"#;

    #[test]
    fn a_good_config_comes_through_whole() {
        let dir = config(GOOD);
        let direct = kiln_config::load(dir.path().join("master.star")).unwrap();
        let via = through_json(dir.path()).unwrap();
        assert_eq!(format!("{direct:?}"), format!("{via:?}"));
        assert_eq!(via.secrets.len(), 1);
    }

    #[test]
    fn errors_come_through_with_their_places() {
        for src in [
            "WORKERS = [\nBUILDERS = []\n", // syntax
            "WORKERS = [worker(\"w\", password = 1 + \"a\")]\nBUILDERS = []\n", // evaluation
            "WORKERS = [{\"name\": \"w\", \"max_builds\": \"x\"}]\nBUILDERS = []\n", // typing
            "WORKERS = []\nBUILDERS = [builder(\"b\", workers = [\"nope\"], steps = [])]\n", // validation
            "WORKERS = [worker(\"w\", password = secret(\"missing\"))]\nBUILDERS = []\n", // secrets
        ] {
            let dir = config(src);
            let direct = kiln_config::load(dir.path().join("master.star")).unwrap_err();
            let via = through_json(dir.path()).unwrap_err();
            assert_eq!(direct, via, "{src}");
            assert!(direct.to_string().contains("master.star:"), "{direct}");
        }
    }
}
