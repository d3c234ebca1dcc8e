//! `kiln create-master` and `kiln checkconfig`, through the real binary.

use std::path::Path;
use std::process::{Command, Output};

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        // A stray KILN_SECRET_LOCAL_WORKER must not make a missing secret file pass.
        .env_remove("KILN_SECRET_LOCAL_WORKER")
        .output()
        .expect("run kiln")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn create(dir: &Path) {
    let out = kiln(&["create-master", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "create-master failed: {}",
        text(&out.stderr)
    );
}

#[test]
fn created_master_passes_checkconfig() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    create(&dir);

    // The library agrees with the binary, and the config is the promised one.
    let summary = kiln_config::check(&dir).expect("the new master.star loads");
    assert_eq!(
        (summary.workers, summary.builders, summary.schedulers),
        (1, 1, 1)
    );
    let cfg = kiln_config::load(&dir).unwrap();
    assert_eq!(cfg.master.web_port, 8010);
    assert_eq!(cfg.master.worker_port, 9989);
    assert_eq!(
        cfg.master.db_url,
        format!("sqlite://{}/state.sqlite", dir.display())
    );
    assert!(cfg.builder("hello").is_some());
    assert!(cfg.worker("local").is_some());
    let secret = std::fs::read_to_string(dir.join("secrets/local-worker")).unwrap();
    assert_eq!(cfg.secrets.get("local-worker"), Some(secret.trim_end()));
    assert!(
        secret.trim().len() >= 16,
        "a real random password: {secret:?}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.join("secrets/local-worker"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let out = kiln(&["checkconfig", dir.to_str().unwrap()]);
    assert!(out.status.success(), "checkconfig: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("1 workers, 1 builders, 1 schedulers"),
        "{stdout}"
    );

    // Without its secret the config no longer loads: the password really is read from there.
    std::fs::remove_file(dir.join("secrets/local-worker")).unwrap();
    let out = kiln(&["checkconfig", dir.join("master.star").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("local-worker"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn create_master_with_db_url_and_refuses_to_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pg");
    let d = dir.to_str().unwrap();
    let out = kiln(&[
        "create-master",
        d,
        "--db",
        "postgresql://kiln@127.0.0.1/kiln",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        kiln_config::load(&dir).unwrap().master.db_url,
        "postgresql://kiln@127.0.0.1/kiln"
    );
    let before = std::fs::read_to_string(dir.join("master.star")).unwrap();
    let out = kiln(&["create-master", d]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("already exists"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("master.star")).unwrap(),
        before
    );
}

/// Writes a variant of the created master.star and checks it fails at `line:col` of `needle`.
fn assert_broken(edit: impl Fn(&str) -> String, expect_in_message: &str, needle: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    create(&dir);
    let file = dir.join("master.star");
    let src = edit(&std::fs::read_to_string(&file).unwrap());
    std::fs::write(&file, &src).unwrap();
    let out = kiln(&["checkconfig", dir.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        out.stdout.is_empty(),
        "nothing on stdout: {}",
        text(&out.stdout)
    );
    assert!(
        stderr.contains(expect_in_message),
        "want {expect_in_message:?} in: {stderr}"
    );
    // file:line:col of the offending text.
    let at = src.find(needle).expect("needle in source");
    let line = src[..at].matches('\n').count() + 1;
    let prefix = format!("{}:{line}:", file.display());
    assert!(stderr.contains(&prefix), "want {prefix:?} in: {stderr}");
    let col = stderr[stderr.find(&prefix).unwrap() + prefix.len()..]
        .split(':')
        .next()
        .unwrap()
        .to_owned();
    assert!(
        col.parse::<u32>().is_ok(),
        "a column after the line: {stderr}"
    );
}

#[test]
fn checkconfig_reports_a_syntax_error() {
    // Drop the `)` closing worker(...): the parser trips on the `]` on the next line.
    assert_broken(
        |s| s.replace("max_builds = 1),", "max_builds = 1,"),
        "error",
        "]\n\n# Builders",
    );
}

#[test]
fn checkconfig_reports_an_unknown_step_argument() {
    assert_broken(
        |s| s.replace("shell(command =", "shell(comand ="),
        "unknown argument `comand`",
        "shell(comand",
    );
}

#[test]
fn checkconfig_reports_an_unknown_worker() {
    assert_broken(
        |s| s.replace("workers = [\"local\"]", "workers = [\"nosuch\"]"),
        "unknown worker \"nosuch\"",
        "builder(\n",
    );
}

#[test]
fn checkconfig_reports_a_duplicate_builder() {
    assert_broken(
        |s| {
            s.replace("BUILDERS = [\n", "BUILDERS = [\n    builder(name = \"hello\", workers = [\"local\"], steps = []),\n    ")
        },
        "duplicate builder name \"hello\"",
        "builder(\n",
    );
}

#[test]
fn checkconfig_of_a_missing_directory_fails_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let out = kiln(&["checkconfig", tmp.path().join("nope").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot read"),
        "{}",
        text(&out.stderr)
    );
}
