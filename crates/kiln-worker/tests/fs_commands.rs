//! `mkdir`, `stat`, `glob`, `listdir`, `rmfile` against real files (§8.7, §8.10–8.13).

mod transfer_support;

use std::collections::BTreeSet;

use kiln_proto::Value;
use kiln_proto::update::UpdateItem;
use transfer_support::{Script, args, run_command, s};

async fn fs(name: &str, key: &str, value: Value) -> transfer_support::Recorded {
    run_command(name, args([(key, value)]), Script::default()).await
}

fn path_value(p: &std::path::Path) -> Value {
    Value::from(s(p))
}

#[tokio::test]
async fn mkdir_creates_every_path_with_parents() {
    let tmp = tempfile::tempdir().unwrap();
    let existing = tmp.path().join("already");
    std::fs::create_dir(&existing).unwrap();
    let nested = tmp.path().join("a/b/c");
    let paths = Value::Array(vec![path_value(&existing), path_value(&nested)]);
    let rec = fs("mkdir", "paths", paths).await;
    assert!(nested.is_dir());
    assert_eq!(rec.keys(), ["rc", "elapsed"]);
    rec.assert_rc_then_elapsed(0);
    assert_eq!(rec.complete(), Some(None));
    assert!(rec.transfer_ops().is_empty());
}

#[tokio::test]
async fn mkdir_stops_at_the_first_failure_with_errno() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let under_file = file.join("sub");
    let after = tmp.path().join("never");
    let paths = Value::Array(vec![path_value(&under_file), path_value(&after)]);
    let rec = fs("mkdir", "paths", paths).await;
    assert_eq!(
        rec.text("header"),
        format!("mkdir: Not a directory: {}\n", s(&under_file))
    );
    rec.assert_rc_then_elapsed(20);
    assert!(!after.exists(), "mkdir stops at the first failure");
    assert_eq!(
        rec.complete(),
        Some(None),
        "an OS error is an rc, not an exception"
    );

    // The path itself is a file: EEXIST.
    let rec = fs("mkdir", "paths", Value::Array(vec![path_value(&file)])).await;
    assert_eq!(
        rec.text("header"),
        format!("mkdir: File exists: {}\n", s(&file))
    );
    rec.assert_rc_then_elapsed(17);
}

#[cfg(unix)]
#[tokio::test]
async fn stat_reports_os_stat_in_pythons_order() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("f.txt");
    std::fs::write(&file, "hello stat\n").unwrap();
    let times = std::fs::FileTimes::new()
        .set_accessed(std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_600_000_000_900))
        .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_500_000_000_600));
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_times(times)
        .unwrap();

    let rec = fs("stat", "path", path_value(&file)).await;
    let m = std::fs::metadata(&file).unwrap();
    let expected = vec![
        i64::from(m.mode()),
        m.ino() as i64,
        m.dev() as i64,
        m.nlink() as i64,
        i64::from(m.uid()),
        i64::from(m.gid()),
        m.size() as i64,
        m.atime(),
        m.mtime(),
        m.ctime(),
    ];
    let stat = rec.stat().expect("a stat item");
    assert_eq!(stat, expected);
    assert_eq!(stat[6], 11);
    assert_eq!(
        (stat[7], stat[8]),
        (1_600_000_000, 1_500_000_000),
        "times are truncated to whole seconds"
    );
    assert_eq!(rec.keys(), ["stat", "rc", "elapsed"]);
    rec.assert_rc_then_elapsed(0);

    // And exactly what Python's worker would send.
    let py = transfer_support::python(
        "import os, sys; print(list(tuple(os.stat(sys.argv[1]))))",
        &[&s(&file)],
    );
    assert_eq!(py.trim(), format!("{stat:?}"));
}

#[tokio::test]
async fn stat_of_a_missing_file_is_enoent() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("up.txt");
    let rec = fs("stat", "path", path_value(&missing)).await;
    assert_eq!(
        rec.text("header"),
        format!("stat: No such file or directory: {}\n", s(&missing))
    );
    assert_eq!(rec.keys(), ["header", "rc", "elapsed"]);
    rec.assert_rc_then_elapsed(2);
    assert_eq!(rec.stat(), None);
    assert_eq!(rec.complete(), Some(None));
}

#[tokio::test]
async fn a_path_python_would_raise_on_fails_the_command() {
    let rec = fs("stat", "path", Value::from("/tmp/nul\0byte")).await;
    let failure = rec
        .complete()
        .expect("a complete")
        .expect("a failure string");
    assert!(failure.contains("stat"), "{failure}");
    assert_eq!(rec.rc(), None);
}

/// A tree with nested, hidden and symlinked parts (no loops: Python follows those ~40 levels deep).
fn glob_tree() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    for dir in ["a/b/c", "a/.hid", ".h/x", "empty"] {
        std::fs::create_dir_all(d.join(dir)).unwrap();
    }
    for f in [
        "a/f.txt",
        "a/b/g.txt",
        "a/b/c/h.txt",
        "a/b/c/h.log",
        ".h/x/i.txt",
        "a/.hid/j.txt",
        "a/.k.txt",
        "top.txt",
        "b1.dat",
        "b2.dat",
        "c3.dat",
    ] {
        std::fs::write(d.join(f), f).unwrap();
    }
    #[cfg(unix)]
    std::os::unix::fs::symlink("a/b", d.join("link")).unwrap();
    tmp
}

async fn glob_of(pattern: &str) -> Vec<String> {
    let rec = fs("glob", "path", Value::from(pattern)).await;
    rec.assert_rc_then_elapsed(0);
    assert_eq!(rec.complete(), Some(None));
    let mut files = rec.files().expect("a files item");
    let n = files.len();
    files.sort();
    files.dedup();
    assert_eq!(files.len(), n, "no duplicates");
    files
}

#[tokio::test]
async fn glob_recurses_with_double_star() {
    let tmp = glob_tree();
    let d = s(tmp.path());
    let got = glob_of(&format!("{d}/a/**/*.txt")).await;
    let want: Vec<String> = ["a/b/c/h.txt", "a/b/g.txt", "a/f.txt"]
        .iter()
        .map(|f| format!("{d}/{f}"))
        .collect();
    assert_eq!(
        got, want,
        "`**` matches zero or more directories; hidden names are skipped"
    );
    assert!(glob_of(&format!("{d}/nothing/*")).await.is_empty());
    assert_eq!(
        glob_of(&format!("{d}/top.txt")).await,
        [format!("{d}/top.txt")]
    );
}

#[cfg(unix)]
#[tokio::test]
async fn glob_enters_a_symlink_loop_only_once() {
    let tmp = glob_tree();
    let d = s(tmp.path());
    std::os::unix::fs::symlink("..", tmp.path().join("a/b/c/up")).unwrap();
    let got = glob_of(&format!("{d}/a/**/*.txt")).await;
    let want: Vec<String> = ["a/b/c/h.txt", "a/b/c/up/g.txt", "a/b/g.txt", "a/f.txt"]
        .iter()
        .map(|f| format!("{d}/{f}"))
        .collect();
    assert_eq!(
        got, want,
        "the loop is listed once, never descended into again"
    );
}

#[cfg(unix)]
#[tokio::test]
async fn glob_matches_pythons_glob_module() {
    let tmp = glob_tree();
    let d = s(tmp.path());
    let patterns = [
        "**/*.txt",
        "**",
        "a/**",
        "**/",
        "*",
        "*/",
        ".*",
        "a/.*",
        "a/*.txt",
        "[bc]?.dat",
        "[!b]*.dat",
        "b[1-2].dat",
        "[",
        "x**",
        "**/c/*",
        "link/**",
        "*/b/*",
        "a/b/c/h.*",
        "missing",
        "a/",
        "top.txt/",
    ];
    for p in patterns {
        let pattern = format!("{d}/{p}");
        let ours: BTreeSet<String> = glob_of(&pattern).await.into_iter().collect();
        let py = transfer_support::python(
            "import glob, json, sys; print(json.dumps(glob.glob(sys.argv[1], recursive=True)))",
            &[&pattern],
        );
        let theirs: Vec<String> = parse_json_strings(&py);
        let n = theirs.len();
        let theirs: BTreeSet<String> = theirs.into_iter().collect();
        assert_eq!(theirs.len(), n, "Python gave duplicates for {p}?");
        assert_eq!(ours, theirs, "pattern {p}");
    }
}

/// A JSON list of plain strings (no escapes needed for these paths).
#[cfg(unix)]
fn parse_json_strings(json: &str) -> Vec<String> {
    let inner = json
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim();
    if inner.is_empty() {
        return Vec::new();
    }
    inner
        .split("\", \"")
        .map(|item| {
            let item = item.trim_matches('"');
            assert!(!item.contains('\\'), "unexpected escape in {item}");
            item.to_owned()
        })
        .collect()
}

#[tokio::test]
async fn listdir_gives_entry_names() {
    let tmp = tempfile::tempdir().unwrap();
    for f in ["one", "two", ".hidden"] {
        std::fs::write(tmp.path().join(f), "").unwrap();
    }
    std::fs::create_dir(tmp.path().join("sub")).unwrap();
    let rec = fs("listdir", "path", path_value(tmp.path())).await;
    let names: BTreeSet<String> = rec.files().expect("files").into_iter().collect();
    assert_eq!(
        names,
        [".hidden", "one", "sub", "two"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    assert_eq!(rec.keys(), ["files", "rc", "elapsed"]);
    rec.assert_rc_then_elapsed(0);
}

#[tokio::test]
async fn listdir_errors_carry_errno() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("gone");
    let rec = fs("listdir", "path", path_value(&missing)).await;
    assert_eq!(
        rec.text("header"),
        format!("listdir: No such file or directory: {}\n", s(&missing))
    );
    rec.assert_rc_then_elapsed(2);
    assert_eq!(rec.files(), None);

    let file = tmp.path().join("file");
    std::fs::write(&file, "").unwrap();
    let rec = fs("listdir", "path", path_value(&file)).await;
    assert_eq!(
        rec.text("header"),
        format!("listdir: Not a directory: {}\n", s(&file))
    );
    rec.assert_rc_then_elapsed(20);
}

#[tokio::test]
async fn rmfile_removes_and_reports_enoent() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("victim");
    std::fs::write(&file, "bye").unwrap();
    let rec = fs("rmfile", "path", path_value(&file)).await;
    assert!(!file.exists());
    assert_eq!(rec.items().len(), 2);
    assert_eq!(rec.items()[0], UpdateItem::Rc(0));
    rec.assert_rc_then_elapsed(0);

    let rec = fs("rmfile", "path", path_value(&file)).await;
    assert_eq!(
        rec.text("header"),
        format!("rmfile: No such file or directory: {}\n", s(&file))
    );
    assert_eq!(rec.keys(), ["header", "rc", "elapsed"]);
    rec.assert_rc_then_elapsed(2);
    assert_eq!(rec.complete(), Some(None));
}

/// With `run_as`, what the worker creates for builds belongs to the build user, or
/// builds running as that user could not write to their own directories.
#[cfg(unix)]
#[tokio::test]
async fn directories_and_downloads_belong_to_the_build_user() {
    use std::os::unix::fs::MetadataExt as _;
    use std::sync::Arc;

    use kiln_worker::commands::{self, ExecPolicy};

    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: changing owners needs root");
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("user nobody");
    let policy =
        Arc::new(ExecPolicy::new(Some("nobody"), false, None, Default::default()).unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let builder = tmp.path().join("b1");
    let deep = builder.join("build/sub");
    let download = builder.join("dl/new/file.txt");

    let (mut ctx, rx, handle) = transfer_support::make_ctx();
    ctx.policy = policy.clone();
    let prepared = commands::prepare(
        "1",
        "mkdir",
        &args([("paths", Value::Array(vec![Value::from(s(&deep))]))]),
    )
    .unwrap();
    let task = tokio::spawn(commands::run(ctx, prepared));
    let rec = transfer_support::play_master(rx, handle, Script::default()).await;
    task.await.unwrap();
    assert_eq!(rec.rc(), Some(0));

    let (mut ctx, rx, handle) = transfer_support::make_ctx();
    ctx.policy = policy;
    let dl_args = args([
        ("path", Value::from(s(&download))),
        ("blocksize", Value::from(16)),
        ("maxsize", Value::Nil),
        ("mode", Value::Nil),
    ]);
    let prepared = commands::prepare("2", "download_file", &dl_args).unwrap();
    let task = tokio::spawn(commands::run(ctx, prepared));
    let script = Script {
        download: [Value::Binary(b"data".to_vec()), Value::Binary(Vec::new())].into(),
        ..Script::default()
    };
    let rec = transfer_support::play_master(rx, handle, script).await;
    task.await.unwrap();
    assert_eq!(rec.rc(), Some(0));

    for p in [
        builder.clone(),
        builder.join("build"),
        deep,
        builder.join("dl"),
        builder.join("dl/new"),
        download,
    ] {
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (nobody.uid.as_raw(), nobody.gid.as_raw()),
            "{} belongs to nobody",
            p.display()
        );
    }
    assert_eq!(
        std::fs::metadata(tmp.path()).unwrap().uid(),
        0,
        "what existed before is left alone"
    );
}
