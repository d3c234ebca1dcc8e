//! `shell`: exit codes, headers, environment, streams, stdin, PTY, line handling, batching.

#![cfg(unix)]

mod shell_util;

use kiln_proto::Value;
use kiln_proto::update::UpdateItem;
use shell_util::{Run, argv, map, sh};

#[tokio::test]
async fn exit_code_headers_and_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = sh(dir.path(), "echo hello; echo oops >&2; exit 3");
    args.push(("timeout", Value::from(1200)));
    args.push(("logEnviron", Value::from(false)));
    let c = Run::new(dir.path()).shell(&args).await;
    assert_eq!(c.complete(), None);
    assert_eq!(c.rc(), Some(3));
    assert_eq!(c.stdout(), "hello\n");
    assert_eq!(c.stderr(), "oops\n");
    let workdir = dir.path().join("build");
    assert!(workdir.is_dir(), "the workdir is created");
    let h = c.header();
    let expect = format!(
        "echo hello; echo oops >&2; exit 3\n in dir {} (timeout 1200 secs)\n watching logfiles {{}}\n argv: b'echo hello; echo oops >&2; exit 3'\n using PTY: False\n",
        workdir.display()
    );
    assert!(h.starts_with(&expect), "header:\n{h}");
    assert!(h.lines().last().unwrap().starts_with("elapsedTime="), "{h}");
    // Order at exit: rc, elapsedTime header, elapsed.
    let items = c.items();
    let rc = c.position("rc").unwrap();
    assert!(matches!(items[rc + 1], UpdateItem::Header(l) if l.text.starts_with("elapsedTime=")));
    assert!(matches!(items[rc + 2], UpdateItem::Elapsed(_)));
    assert_eq!(rc + 3, items.len());
    // A short command is one update.
    assert_eq!(c.updates.len(), 1, "{:?}", c.updates);
}

#[tokio::test]
async fn argv_with_path_lookup_and_obfuscation() {
    let dir = tempfile::tempdir().unwrap();
    let cmd = Value::Array(vec![
        Value::from("echo"),
        Value::from("a b"),
        Value::Array(vec![
            Value::from("obfuscated"),
            Value::from("s3cret"),
            Value::from("XXXX"),
        ]),
    ]);
    let args = vec![
        ("command", cmd),
        ("workdir", Value::from(dir.path().to_str().unwrap())),
        ("logEnviron", Value::from(false)),
    ];
    let c = Run::new(dir.path()).shell(&args).await;
    assert_eq!(c.rc(), Some(0));
    assert_eq!(c.stdout(), "a b s3cret\n", "the real value runs");
    let h = c.header();
    assert!(
        h.starts_with("echo 'a b' XXXX\n"),
        "the fake value is shown: {h}"
    );
    assert!(h.contains(" argv: [b'echo', b'a b', b'XXXX']\n"), "{h}");
    assert!(!h.contains("s3cret"));
}

#[tokio::test]
async fn a_missing_program_fails_the_step_not_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let args = vec![
        ("command", argv(&["no-such-program-kiln"])),
        ("workdir", Value::from(dir.path().to_str().unwrap())),
    ];
    let c = Run::new(dir.path()).shell(&args).await;
    assert_eq!(c.complete(), None);
    assert_eq!(c.rc(), Some(127));
    assert!(
        c.stderr().contains("no-such-program-kiln"),
        "{}",
        c.stderr()
    );
}

/// Programs are looked up like `execvp` does, in the child's `PATH`: argv[0] stays
/// the name given, a script without `#!` runs through /bin/sh, a file that is not
/// executable is passed over, and a relative `PATH` entry is relative to the workdir.
#[tokio::test]
async fn programs_are_found_like_execvp_finds_them() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let workdir = dir.path().join("build");
    let (first, second, rel) = (
        dir.path().join("first"),
        dir.path().join("second"),
        workdir.join("rel"),
    );
    for d in [&first, &second, &rel] {
        std::fs::create_dir_all(d).unwrap();
    }
    let script = |path: std::path::PathBuf, text: &str, mode: u32| {
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    script(first.join("kiln-probe"), "echo not executable\n", 0o644);
    script(
        second.join("kiln-probe"),
        "echo found \"$0\" \"$1\"\n",
        0o755,
    );
    script(rel.join("kiln-rel-probe"), "echo relative\n", 0o755);
    let run = |command: Value, path: String| {
        let env = map(&[("PATH", Value::from(path))]);
        let args = vec![
            ("command", command),
            ("workdir", Value::from(workdir.to_str().unwrap())),
            ("env", env),
            ("logEnviron", Value::from(false)),
        ];
        let basedir = dir.path().to_owned();
        async move { Run::new(&basedir).shell(&args).await }
    };
    let path = format!("{}:{}:/usr/bin:/bin", first.display(), second.display());

    let c = run(argv(&["kiln-probe", "x"]), path.clone()).await;
    assert_eq!(c.rc(), Some(0), "{}", c.stderr());
    assert!(
        c.stdout().ends_with("found kiln-probe x\n")
            || c.stdout().ends_with(&format!(
                "found {} x\n",
                second.join("kiln-probe").display()
            )),
        "{}",
        c.stdout()
    );

    let c = run(argv(&["sh", "-c", "echo $0"]), path.clone()).await;
    assert_eq!(c.stdout(), "sh\n", "argv[0] is the name as given");

    let by_path = second.join("kiln-probe");
    let c = run(argv(&[by_path.to_str().unwrap(), "y"]), path.clone()).await;
    assert_eq!(c.rc(), Some(0), "{}", c.stderr());
    assert!(
        c.stdout().starts_with("found ") && c.stdout().ends_with(" y\n"),
        "{}",
        c.stdout()
    );

    let c = run(argv(&["kiln-rel-probe"]), format!("rel:{path}")).await;
    assert_eq!(c.rc(), Some(0), "{}", c.stderr());
    assert_eq!(c.stdout(), "relative\n");

    let c = run(argv(&["kiln-rel-probe"]), path).await;
    assert_eq!(c.rc(), Some(127), "not in PATH: {}", c.stdout());
}

#[tokio::test]
async fn killed_by_a_signal_is_rc_minus_one() {
    let dir = tempfile::tempdir().unwrap();
    let c = Run::new(dir.path())
        .shell(&sh(dir.path(), "kill -USR1 $$"))
        .await;
    assert_eq!(c.complete(), None);
    assert_eq!(c.rc(), Some(-1));
    assert!(
        c.header().contains("process killed by signal 10\n"),
        "{}",
        c.header()
    );
    assert!(c.position("header").unwrap() < c.position("rc").unwrap());
}

#[tokio::test]
async fn environment_rules_observed_example() {
    // SAFETY (set_var): this test binary only reads HOME and PYTHONPATH concurrently.
    let home = std::env::var("HOME").unwrap_or_default();
    let dir = tempfile::tempdir().unwrap();
    let env = map(&[
        ("FOO", Value::from("bar")),
        ("MYPATH", argv(&["/a", "/b"])),
        ("PYTHONPATH", argv(&["/x", "/y"])),
        ("HOMECOPY", Value::from("${HOME}/sub")),
        ("LANG", Value::Nil),
        ("PATH", Value::from("/usr/local/bin:/usr/bin:/bin")),
    ]);
    let script = "echo FOO=$FOO; echo MYPATH=$MYPATH; echo PYTHONPATH=$PYTHONPATH; echo HOMECOPY=$HOMECOPY; echo LANG=${LANG-unset}; echo PWD=$PWD; echo COOKIE=${KILN_COMMAND_COOKIE:+set}";
    let mut args = sh(dir.path(), script);
    args.push(("env", env));
    let c = Run::new(dir.path()).shell(&args).await;
    let worker_pp = std::env::var("PYTHONPATH").unwrap_or_default();
    let expect = format!(
        "FOO=bar\nMYPATH=/a:/b\nPYTHONPATH=/x:/y:{worker_pp}\nHOMECOPY={home}/sub\nLANG=unset\nPWD={}\nCOOKIE=set\n",
        dir.path().join("build").display()
    );
    assert_eq!(c.stdout(), expect);
    // The environment is dumped in the header, sorted; the internal cookie is not shown.
    let h = c.header();
    let env_lines: Vec<&str> = h
        .lines()
        .skip_while(|l| *l != " environment:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .collect();
    assert!(env_lines.contains(&"  FOO=bar"), "{h}");
    let mut sorted = env_lines.clone();
    sorted.sort();
    assert_eq!(env_lines, sorted);
    assert!(!env_lines.iter().any(|l| l.contains("KILN_COMMAND_COOKIE")));
}

#[tokio::test]
async fn no_env_inherits_the_worker_environment_plus_pwd() {
    let dir = tempfile::tempdir().unwrap();
    let path = std::env::var("PATH").unwrap();
    let c = Run::new(dir.path())
        .shell(&sh(dir.path(), "echo \"$PATH\"; echo \"$PWD\""))
        .await;
    assert_eq!(
        c.stdout(),
        format!("{path}\n{}\n", dir.path().join("build").display())
    );
}

#[tokio::test]
async fn a_bad_env_value_fails_after_acceptance() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = sh(dir.path(), "echo never");
    args.push(("env", map(&[("BAD", Value::from(3))])));
    let c = Run::new(dir.path()).shell(&args).await;
    let failure = c.complete().expect("a failure string");
    assert!(
        failure.contains("'env' values must be strings or lists; key 'BAD' is incorrect"),
        "{failure}"
    );
    assert!(c.elapsed().is_some());
    assert!(c.stdout().is_empty());
    assert_eq!(c.rc(), None);
}

#[tokio::test]
async fn want_stdout_false_hides_stdout_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = sh(dir.path(), "echo out; echo err >&2");
    args.push(("want_stdout", Value::from(false)));
    let c = Run::new(dir.path()).shell(&args).await;
    assert_eq!(c.stdout(), "");
    assert_eq!(c.stderr(), "err\n");
    let mut args = sh(dir.path(), "echo out; echo err >&2");
    args.push(("want_stderr", Value::from(false)));
    let c = Run::new(dir.path()).shell(&args).await;
    assert_eq!(c.stdout(), "out\n");
    assert_eq!(c.stderr(), "");
}

#[tokio::test]
async fn initial_stdin_is_written_then_closed() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = sh(dir.path(), "cat; echo done");
    args.push(("initial_stdin", Value::from("line one\nline two\n")));
    args.push(("usePTY", Value::from(true)));
    let c = Run::new(dir.path()).shell(&args).await;
    assert_eq!(c.stdout(), "line one\nline two\ndone\n");
    let h = c.header();
    assert!(
        h.starts_with("WARNING: disabling usePTY for this command\n"),
        "{h}"
    );
    assert!(
        h.contains(" writing 18 bytes to stdin\n using PTY: False\n"),
        "{h}"
    );
}

#[tokio::test]
async fn without_initial_stdin_stdin_is_at_eof() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = sh(dir.path(), "cat; echo eof");
    args.push(("timeout", Value::from(5)));
    let c = Run::new(dir.path()).shell(&args).await;
    assert_eq!(c.stdout(), "eof\n");
    assert_eq!(c.rc(), Some(0));
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn pty_gives_a_controlling_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let script = "test -t 0 && test -t 1 && echo tty; \
                  [ \"$(awk '{print $6}' /proc/$$/stat)\" = \"$$\" ] && echo leader; \
                  echo err >&2; cat; echo after-cat";
    let mut args = sh(dir.path(), script);
    args.push(("usePTY", Value::from(true)));
    args.push(("timeout", Value::from(5)));
    let c = Run::new(dir.path()).shell(&args).await;
    assert_eq!(c.rc(), Some(0));
    // Under a PTY stderr joins stdout, and the terminal's \r\n are plain newlines.
    assert_eq!(c.stdout(), "tty\nleader\nerr\nafter-cat\n");
    assert_eq!(c.stderr(), "");
    assert!(c.header().contains(" using PTY: True\n"));
}

#[tokio::test]
async fn newline_re_turns_crlf_cr_and_ansi_into_lines() {
    let dir = tempfile::tempdir().unwrap();
    let script = r"printf 'a\r\nb\r\n'; printf '10%%\r20%%\r30%%\n'; printf 'x\033[2Jy\033[3;4Hz\n'; printf 'back\010\010\010space\n'";
    let c = Run::new(dir.path()).shell(&sh(dir.path(), script)).await;
    assert_eq!(c.stdout(), "a\nb\n10%\n20%\n30%\nx\ny\nz\nback\nspace\n");
}

#[tokio::test]
async fn a_10000_char_line_arrives_split_but_whole() {
    let dir = tempfile::tempdir().unwrap();
    let script = "head -c 10000 /dev/zero | tr '\\0' 'x'; echo; echo é$(head -c 5000 /dev/zero | tr '\\0' 'y')";
    let c = Run::new(dir.path()).shell(&sh(dir.path(), script)).await;
    let out = c.stdout();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.iter().map(|l| l.chars().count()).collect::<Vec<_>>(),
        vec![4095, 4095, 1810, 4095, 906]
    );
    assert_eq!(
        out.replace('\n', ""),
        format!("{}é{}", "x".repeat(10_000), "y".repeat(5000)),
        "nothing lost"
    );
}

#[tokio::test]
async fn a_partial_last_line_is_flushed_after_elapsed() {
    let dir = tempfile::tempdir().unwrap();
    let c = Run::new(dir.path())
        .shell(&sh(dir.path(), "echo first; printf no-newline"))
        .await;
    assert_eq!(c.stdout(), "first\nno-newline\n");
    let items = c.items();
    let last = items.last().unwrap();
    assert!(
        matches!(last, UpdateItem::Stdout(l) if l.text == "no-newline\n"),
        "{last:?}"
    );
    assert!(c.position("elapsed").unwrap() < items.len() - 1);
}

#[tokio::test]
async fn much_output_is_batched_into_several_updates() {
    let dir = tempfile::tempdir().unwrap();
    let c = Run::new(dir.path())
        .shell(&sh(dir.path(), "seq 1 100000"))
        .await;
    let out = c.stdout();
    assert_eq!(out.lines().count(), 100_000);
    assert!(out.starts_with("1\n2\n") && out.ends_with("99999\n100000\n"));
    assert!(c.updates.len() > 5, "{} updates", c.updates.len());
    for u in &c.updates {
        let weight: usize = u.iter().map(|i| i.weight()).sum();
        assert!(weight <= 65_536 + 64, "an update of weight {weight}");
    }
    assert_eq!(c.rc(), Some(0));
}

#[tokio::test]
async fn quiet_output_is_sent_by_the_buffer_timer() {
    let dir = tempfile::tempdir().unwrap();
    let c = Run::new(dir.path())
        .shell(&sh(dir.path(), "echo one; sleep 0.5; echo two"))
        .await;
    // buffer_timeout is 0.05 s in tests: `one` goes out long before `two`.
    let first_with_one = c
        .updates
        .iter()
        .position(|u| {
            u.iter()
                .any(|i| matches!(i, UpdateItem::Stdout(l) if l.text.contains("one")))
        })
        .unwrap();
    let first_with_two = c
        .updates
        .iter()
        .position(|u| {
            u.iter()
                .any(|i| matches!(i, UpdateItem::Stdout(l) if l.text.contains("two")))
        })
        .unwrap();
    assert!(first_with_one < first_with_two);
}

#[tokio::test]
async fn rmdir_and_cpdir() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    std::fs::create_dir_all(base.join("b1/src/sub")).unwrap();
    std::fs::write(base.join("b1/src/sub/f.txt"), "data").unwrap();
    std::os::unix::fs::symlink("f.txt", base.join("b1/src/sub/link")).unwrap();
    let args = kiln_proto::args::Args::from_pairs([
        (
            "from_path",
            Value::from(base.join("b1/src").to_str().unwrap()),
        ),
        (
            "to_path",
            Value::from(base.join("b1/new/copy").to_str().unwrap()),
        ),
    ]);
    let c = Run::new(base).command("cpdir", args).await;
    assert_eq!(c.complete(), None);
    assert_eq!(c.rc(), Some(0));
    assert_eq!(
        std::fs::read_to_string(base.join("b1/new/copy/sub/f.txt")).unwrap(),
        "data"
    );
    assert!(
        std::fs::symlink_metadata(base.join("b1/new/copy/sub/link"))
            .unwrap()
            .file_type()
            .is_symlink(),
        "-P keeps links"
    );
    assert!(
        c.stdout().contains("f.txt"),
        "cp -v output is streamed: {}",
        c.stdout()
    );
    assert!(
        c.header()
            .starts_with(&format!("cp -R -P -p -v {}", base.join("b1/src").display()))
    );

    // A read-only tree needs the chmod retry... as a normal user; root removes it anyway.
    std::fs::set_permissions(
        base.join("b1/src/sub"),
        std::os::unix::fs::PermissionsExt::from_mode(0o500),
    )
    .unwrap();
    let paths = Value::Array(vec![
        Value::from(base.join("b1/src").to_str().unwrap()),
        Value::from(base.join("b1/new").to_str().unwrap()),
    ]);
    let c = Run::new(base)
        .command(
            "rmdir",
            kiln_proto::args::Args::from_pairs([("paths", paths)]),
        )
        .await;
    assert_eq!(c.complete(), None);
    assert_eq!(c.rc(), Some(0));
    assert!(c.elapsed().is_some());
    assert!(!base.join("b1/src").exists() && !base.join("b1/new").exists());
    assert!(
        c.header()
            .contains(&format!("rm -rf {}", base.join("b1/src").display()))
    );
    assert!(
        c.header()
            .contains(&format!(" in dir {} (timeout 120 secs)", base.display()))
    );
    let rcs = c
        .items()
        .iter()
        .filter(|i| matches!(i, UpdateItem::Rc(_)))
        .count();
    assert_eq!(rcs, 1, "one rc for the whole rmdir");
}

#[tokio::test]
async fn rmdir_reports_the_last_failure() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    // rm -rf of "." fails ("refusing to remove '.'"), the other path is removed.
    std::fs::create_dir_all(base.join("gone")).unwrap();
    let paths = Value::Array(vec![
        Value::from("."),
        Value::from(base.join("gone").to_str().unwrap()),
    ]);
    let c = Run::new(base)
        .command(
            "rmdir",
            kiln_proto::args::Args::from_pairs([("paths", paths)]),
        )
        .await;
    assert_eq!(c.rc(), Some(1));
    assert!(!base.join("gone").exists());
    assert!(
        c.stderr().contains("refusing") || c.stderr().contains("'.'"),
        "{}",
        c.stderr()
    );
}
