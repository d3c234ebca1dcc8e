//! Each class of error, with its exact line:col and what to fix.
mod common;

use common::{Dir, W};

fn has(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "{msg:?} should contain {p:?}");
    }
}

#[test]
fn syntax_error() {
    let (at, msg) = Dir::new().error("WORKERS = [\nBUILDERS = []\n");
    assert_eq!(at, "2:10");
    has(&msg, &["Parse error"]);
}

#[test]
fn python_features_starlark_lacks() {
    let (at, msg) = Dir::new().error("import os\n");
    assert_eq!(at, "1:1");
    has(&msg, &["Parse error"]);
}

#[test]
fn unknown_step_argument() {
    let src = format!(
        "{W}BUILDERS = [\n  builder(name = \"b\", workers = [\"w1\"], steps = [\n    shell(comand = \"make\")])]\n"
    );
    let (at, msg) = Dir::new().error(&src);
    assert_eq!(at, "4:5");
    has(
        &msg,
        &[
            "shell(): unknown argument `comand`",
            "expected one of `command`",
            "halt_on_failure",
        ],
    );
}

#[test]
fn unknown_argument_inside_a_function_points_at_the_call() {
    let src = format!(
        "{W}def mk():\n    return [compile(command = \"make\", halt_on_falure = True)]\nBUILDERS = [builder(name = \"b\", workers = [\"w1\"], steps = mk())]\n"
    );
    let (at, msg) = Dir::new().error(&src);
    assert_eq!(at, "3:13");
    has(&msg, &["compile(): unknown argument `halt_on_falure`"]);
}

#[test]
fn bad_argument_type() {
    let src = format!(
        "{W}BUILDERS = [builder(name = \"b\", workers = [\"w1\"], steps = [test(command = \"x\", timeout = \"soon\")])]\n"
    );
    let (at, msg) = Dir::new().error(&src);
    assert_eq!(at, "2:60");
    has(
        &msg,
        &["test(): `timeout`: invalid type: string \"soon\", expected u64"],
    );
}

#[test]
fn unknown_worker_name() {
    let src = format!("{W}BUILDERS = [\n    builder(name = \"b\", workers = [\"w2\"]),\n]\n");
    let (at, msg) = Dir::new().error(&src);
    assert_eq!(at, "3:5");
    has(
        &msg,
        &[
            "builder \"b\": unknown worker \"w2\"",
            "worker(\"w2\", ...)",
        ],
    );
}

#[test]
fn duplicate_builder() {
    let src = format!(
        "{W}BUILDERS = [\n  builder(name = \"b\", workers = [\"w1\"]),\n  builder(name = \"b\", workers = [\"w1\"]),\n]\n"
    );
    let d = Dir::new();
    let (at, msg) = d.error(&src);
    assert_eq!(at, "4:3");
    has(
        &msg,
        &[
            "duplicate builder name \"b\"",
            &format!("first defined at {}:3:3", d.file().display()),
            "rename",
        ],
    );
}

#[test]
fn duplicate_worker_and_scheduler() {
    let src = "WORKERS = [worker(\"w1\", password_hash = \"$argon2id$x\"), worker(\"w1\", password_hash = \"$argon2id$y\")]\nBUILDERS = [builder(name = \"b\", workers = [\"w1\"])]\nSCHEDULERS = [force(\"f\", builder_names = [\"b\"]),\n  force(\"f\", builder_names = [\"b\"])]\n";
    let e = Dir::new().load(src).unwrap_err();
    assert_eq!(e.diagnostics.len(), 2, "{e}");
    let s = e.to_string();
    has(
        &s,
        &[
            ":1:57: error: duplicate worker name \"w1\"",
            ":4:3: error: duplicate scheduler name \"f\"",
        ],
    );
}

#[test]
fn scheduler_names_unknown_builder() {
    let src = format!(
        "{W}BUILDERS = [builder(name = \"b\", workers = [\"w1\"])]\nSCHEDULERS = [\n  single_branch(\"main\", branch = \"main\", builder_names = [\"b\", \"nope\"])]\n"
    );
    let (at, msg) = Dir::new().error(&src);
    assert_eq!(at, "4:3");
    has(
        &msg,
        &["scheduler \"main\" (single_branch): unknown builder \"nope\""],
    );
}

#[test]
fn bad_cron_and_bad_time_zone() {
    let d = Dir::new();
    let (at, msg) = d.error(&format!(
        "{W}BUILDERS = [builder(name = \"b\", workers = [\"w1\"])]\nSCHEDULERS = [nightly(\"n\", cron = \"0 25 * * *\", builder_names = [\"b\"])]\n"
    ));
    assert_eq!(at, "3:15");
    has(
        &msg,
        &[
            "bad cron \"0 25 * * *\"",
            "minute hour day-of-month month day-of-week",
        ],
    );
    let (at, msg) = d.error(&format!(
        "{W}BUILDERS = [builder(name = \"b\", workers = [\"w1\"])]\nSCHEDULERS = [nightly(\"n\", cron = \"0 3 * * *\", timezone = \"Mars/Olympus\", builder_names = [\"b\"])]\n"
    ));
    assert_eq!(at, "3:15");
    has(&msg, &["unknown time zone \"Mars/Olympus\""]);
}

#[test]
fn bad_availability_window() {
    let src = "WORKERS = [\n  worker(\"w1\", password_hash = \"$argon2id$x\", availability = [\"not 22:00-8 UTC\"])]\nBUILDERS = []\n";
    let (at, msg) = Dir::new().error(src);
    assert_eq!(at, "2:3");
    has(
        &msg,
        &[
            "`availability[0]`",
            "bad time \"8\"",
            "\"not 22:00-08:00 UTC\"",
        ],
    );
    let src = "WORKERS = [worker(\"w1\", password_hash = \"$argon2id$x\", availability = [\"22:00-08:00 Nowhere/Land\"])]\nBUILDERS = []\n";
    has(
        &Dir::new().error(src).1,
        &["unknown time zone \"Nowhere/Land\""],
    );
}

#[test]
fn bad_decode_rc() {
    let d = Dir::new();
    let (at, msg) = d.error(&format!("{W}BUILDERS = [builder(name = \"b\", workers = [\"w1\"], steps = [\n  test(command = \"x\", decode_rc = {{\"zero\": SUCCESS}})])]\n"));
    assert_eq!(at, "3:3");
    has(&msg, &["test(): `decode_rc", "{0: SUCCESS, 5: WARNINGS}"]);
    let (_, msg) = d.error(&format!("{W}BUILDERS = [builder(name = \"b\", workers = [\"w1\"], steps = [\n  test(command = \"x\", decode_rc = {{0: 9}})])]\n"));
    has(&msg, &["`decode_rc.0`", "not a build result"]);
}

#[test]
fn bad_interpolation_is_caught_at_load() {
    let src = format!(
        "{W}BUILDERS = [builder(name = \"b\", workers = [\"w1\"], steps = [\n  shell(command = interpolate(\"x %(prop:y\"))])]\n"
    );
    let (at, msg) = Dir::new().error(&src);
    assert_eq!(at, "3:19");
    has(
        &msg,
        &["interpolate(): bad interpolation", "without a closing `)s`"],
    );
    let src = format!(
        "{W}BUILDERS = [builder(name = \"b\", workers = [\"w1\"], steps = [\n  shell(command = interpolate(\"%(kw:x)s\"))])]\n"
    );
    has(&Dir::new().error(&src).1, &["%(kw:x)s", "no `x=` keyword"]);
}

#[test]
fn missing_secret() {
    let d = Dir::new();
    let (at, msg) =
        d.error("WORKERS = [\n  worker(\"w1\", password = secret(\"nope\"))]\nBUILDERS = []\n");
    assert_eq!(at, "2:27");
    has(
        &msg,
        &[
            "secret \"nope\" not found",
            "secrets/nope",
            "KILN_SECRET_NOPE",
        ],
    );
    let (at, _) = d.error(&format!("{W}BUILDERS = [builder(name = \"b\", workers = [\"w1\"], steps = [\n   shell(command = interpolate(\"%(secret:tok)s\"))])]\n"));
    assert_eq!(at, "3:20");
}

#[test]
fn worker_password_rules() {
    let d = Dir::new();
    has(
        &d.error("WORKERS = [worker(\"w1\")]\nBUILDERS = []\n").1,
        &["give password=secret"],
    );
    has(
        &d.error("WORKERS = [worker(\"w1\", password_hash = \"md5:abc\")]\nBUILDERS = []\n")
            .1,
        &["argon2"],
    );
    has(
        &d.error("WORKERS = [worker(\"w1\", password = \"plain\")]\nBUILDERS = []\n")
            .1,
        &["worker(): `password`"],
    );
}

#[test]
fn trigger_needs_a_triggerable_scheduler() {
    let src = format!(
        "{W}BUILDERS = [builder(name = \"b\", workers = [\"w1\"], steps = [\n  trigger(scheduler_names = [\"f\"])])]\nSCHEDULERS = [force(\"f\", builder_names = [\"b\"])]\n"
    );
    let (at, msg) = Dir::new().error(&src);
    assert_eq!(at, "3:3");
    has(
        &msg,
        &[
            "trigger names scheduler \"f\", which is force",
            "needs a triggerable scheduler",
        ],
    );
}

#[test]
fn lock_defined_twice_differently() {
    let src = format!(
        "{W}BUILDERS = [\n  builder(name = \"a\", workers = [\"w1\"], locks = [master_lock(\"l\")]),\n  builder(name = \"b\", workers = [\"w1\"], locks = [exclusive(master_lock(\"l\", max_count = 2))])]\n"
    );
    let (at, msg) = Dir::new().error(&src);
    assert_eq!(at, "4:60");
    has(
        &msg,
        &["lock \"l\" is defined twice with different settings"],
    );
}

#[test]
fn git_method_needs_full_mode() {
    let src = format!(
        "{W}BUILDERS = [builder(name = \"b\", workers = [\"w1\"], steps = [git(repourl = \"r\", method = \"clobber\")])]\n"
    );
    let (at, msg) = Dir::new().error(&src);
    assert_eq!(at, "2:60");
    has(&msg, &["method= applies only to mode=\"full\""]);
}

#[test]
fn missing_global_and_plain_dicts() {
    let d = Dir::new();
    let (at, msg) = d.error("WORKERS = []\n");
    assert_eq!(at, "1:1");
    has(&msg, &["must set BUILDERS"]);
    let (_, msg) = d.error(&format!("{W}BUILDERS = [{{\"name\": \"b\"}}]\n"));
    has(&msg, &["BUILDERS[0]: missing field `workers`"]);
}

#[test]
fn fail_and_runtime_errors_have_locations() {
    let (at, msg) = Dir::new().error("x = 1\nfail(\"boom\")\n");
    assert_eq!(at, "2:1");
    has(&msg, &["boom"]);
    let (at, _) = Dir::new().error("x = {}\ny = x[\"missing\"]\n");
    assert_eq!(at, "2:5");
}

#[test]
fn several_errors_are_all_reported() {
    let src = format!(
        "{W}BUILDERS = [builder(name = \"a\", workers = [\"x\"]), builder(name = \"b\", workers = [\"y\"])]\n"
    );
    let e = Dir::new().load(&src).unwrap_err();
    assert_eq!(e.diagnostics.len(), 2);
    assert_eq!(e.to_string().lines().count(), 2);
}

#[test]
fn runaway_loops_are_stopped() {
    let d = Dir::new();
    std::fs::write(d.file(), "x = 0\nfor i in range(1000000000):\n    x += i\n").unwrap();
    let opts = kiln_config::LoadOptions {
        max_ticks: Some(10_000),
        ignore_env: true,
        ..Default::default()
    };
    let e = kiln_config::load_with(d.file(), &opts).unwrap_err();
    assert!(
        e.to_string().contains("10000 ticks has been exceeded"),
        "{e}"
    );
    let opts = kiln_config::LoadOptions {
        max_ticks: None,
        timeout: Some(std::time::Duration::from_millis(100)),
        ignore_env: true,
        ..Default::default()
    };
    let t = std::time::Instant::now();
    let e = kiln_config::load_with(d.file(), &opts).unwrap_err();
    assert!(t.elapsed() < std::time::Duration::from_secs(20));
    assert!(e.to_string().contains("master.star"), "{e}");
}
