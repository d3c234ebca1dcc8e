//! `kiln-worker doctor`: tools, headers, resources, local sockets (required) and
//! outbound targets (advisory), pointed at loopback listeners only.
#![cfg(unix)]

mod cli_support;

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Output;

use cli_support::*;

/// A directory of fake tools: git, ld, make, and a `cc` that "finds" every
/// header except those whose name contains one of `missing`.
fn fake_tools(dir: &Path, missing: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    let script = |name: &str, body: &str| {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    for tool in ["git", "ld", "make"] {
        script(tool, "exit 0");
    }
    // Shell builtins only: PATH holds nothing else.
    let mut cases = String::new();
    for m in missing {
        cases.push_str(&format!(
            "    *{m}*) echo \"<stdin>:1:10: fatal error: header not found\" >&2; exit 1;;\n"
        ));
    }
    script(
        "cc",
        &format!("while read line; do\n  case \"$line\" in\n{cases}  esac\ndone\nexit 0"),
    );
}

/// A port with nothing listening on it (bound, then released).
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn doctor(cwd: &Path, path_env: &Path, args: &[&str]) -> Output {
    kiln()
        .current_dir(cwd)
        .env("PATH", path_env)
        .arg("doctor")
        .args(args)
        .output()
        .unwrap()
}

/// The table row of a check, by name.
fn row<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no row {name:?} in:\n{out}"))
}

#[test]
fn all_required_ok_with_one_target_up_and_one_down() {
    let tmp = tempfile::tempdir().unwrap();
    let tools = tmp.path().join("bin");
    fake_tools(&tools, &[]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let open = listener.local_addr().unwrap().port();
    let closed = closed_port();
    let up = format!("up=127.0.0.1:{open}");
    let down = format!("down=127.0.0.1:{closed}");

    // No BASEDIR: checks the current directory.
    let o = doctor(
        tmp.path(),
        &tools,
        &[
            "--min-cpus",
            "1",
            "--min-disk-gb",
            "0",
            "--target",
            &up,
            "--target",
            &down,
        ],
    );
    let out = stdout(&o);
    assert_eq!(
        o.status.code(),
        Some(0),
        "an unreachable outbound port is advisory:\n{}",
        all(&o)
    );
    for (name, status) in [
        ("git ", "OK"),
        ("C compiler", "OK"),
        ("linker", "OK"),
        ("make", "OK"),
        ("zlib headers", "OK"),
        ("OpenSSL headers", "OK"),
        ("CPUs", "OK"),
        ("memory", "OK"),
        ("free disk", "OK"),
        ("local TCP sockets", "OK"),
        ("localhost name", "OK"),
        (&format!("outbound up ({open}) *"), "OK"),
        (&format!("outbound down ({closed}) *"), "UNREACHABLE"),
    ] {
        let r = row(&out, name);
        assert!(
            r.contains(&format!("  {status}  ")),
            "{name}: want {status} in {r:?}\n{out}"
        );
    }
    assert!(row(&out, "git ").contains(&tools.join("git").display().to_string()));
    assert!(
        row(&out, "free disk").contains(&tmp.path().display().to_string()),
        "measured in the cwd"
    );
    let down_row = row(&out, "outbound down");
    assert!(
        down_row.contains(&format!("allow outbound TCP port {closed}")),
        "hint: {down_row}"
    );
    assert!(
        out.contains("* advisory"),
        "the choice is documented in the output:\n{out}"
    );
    assert!(out.contains("All required checks passed."), "{out}");
    assert!(
        !out.contains("python.org"),
        "--target replaces the default targets:\n{out}"
    );
    drop(listener);
}

#[test]
fn missing_tools_fail_with_install_hints() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let o = doctor(
        tmp.path(),
        &empty,
        &["--no-outbound", "--min-cpus", "1", "--min-disk-gb", "0"],
    );
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{}", all(&o));
    for name in [
        "git ",
        "C compiler",
        "linker",
        "make",
        "zlib headers",
        "OpenSSL headers",
    ] {
        let r = row(&out, name);
        assert!(r.contains("  MISSING  "), "{r}");
        assert!(
            r.contains("install") || r.contains("pkg") || r.contains("xcode"),
            "a hint: {r}"
        );
    }
    assert!(
        !out.lines().any(|l| l.starts_with("outbound")),
        "--no-outbound: {out}"
    );
    assert!(out.contains("required check(s) failed: git, C compiler, linker, make, zlib headers, OpenSSL headers."), "{out}");
}

#[test]
fn a_missing_header_is_found_by_the_compiler_probe() {
    let tmp = tempfile::tempdir().unwrap();
    let tools = tmp.path().join("bin");
    fake_tools(&tools, &["zlib.h"]);
    let o = doctor(
        tmp.path(),
        &tools,
        &["--no-outbound", "--min-cpus", "1", "--min-disk-gb", "0"],
    );
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{}", all(&o));
    let z = row(&out, "zlib headers");
    assert!(
        z.contains("MISSING") && z.contains("<zlib.h> not found: <stdin>:1:10: fatal error"),
        "{z}"
    );
    assert!(
        z.contains("zlib1g-dev") || z.contains("zlib-devel") || z.contains("zlib"),
        "{z}"
    );
    assert!(row(&out, "OpenSSL headers").contains("  OK  "), "{out}");
}

#[test]
fn low_resources_fail() {
    let tmp = tempfile::tempdir().unwrap();
    let tools = tmp.path().join("bin");
    fake_tools(&tools, &[]);
    let o = doctor(
        tmp.path(),
        &tools,
        &[
            "--no-outbound",
            "--min-cpus",
            "100000",
            "--min-memory-mb",
            "100000000",
            "--min-disk-gb",
            "100000000",
        ],
    );
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{}", all(&o));
    for name in ["CPUs", "memory", "free disk"] {
        assert!(row(&out, name).contains("  LOW  "), "{out}");
    }
}

#[test]
fn uses_the_workers_config_targets() {
    let tmp = tempfile::tempdir().unwrap();
    let tools = tmp.path().join("bin");
    fake_tools(&tools, &[]);
    let dir = tmp.path().join("w");
    create(&dir, &[]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let open = listener.local_addr().unwrap().port();
    let closed = closed_port();
    // doctor_targets is a top-level key: it goes before the [limits] table.
    let path = dir.join("kiln-worker.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = format!(
        "doctor_targets = [\"cfg-up=127.0.0.1:{open}\", \"cfg-down=127.0.0.1:{closed}\"]\n{text}"
    );
    std::fs::write(&path, text).unwrap();

    let o = doctor(
        tmp.path(),
        &tools,
        &[
            dir.to_str().unwrap(),
            "--min-cpus",
            "1",
            "--min-disk-gb",
            "0",
        ],
    );
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{}", all(&o));
    assert!(
        row(&out, &format!("outbound cfg-up ({open})")).contains("  OK  "),
        "{out}"
    );
    assert!(
        row(&out, &format!("outbound cfg-down ({closed})")).contains("  UNREACHABLE  "),
        "{out}"
    );
    assert!(!out.contains("python.org"), "{out}");

    // A broken config is a failed required check, not a crash.
    std::fs::write(&path, "nonsense = 1\n").unwrap();
    let o = doctor(
        tmp.path(),
        &tools,
        &[
            dir.to_str().unwrap(),
            "--no-outbound",
            "--min-cpus",
            "1",
            "--min-disk-gb",
            "0",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", all(&o));
    assert!(
        row(&stdout(&o), "kiln-worker.toml").contains("MISSING"),
        "{}",
        all(&o)
    );
    drop(listener);
}

#[test]
fn run_checks_results_serialize_for_the_master() {
    use kiln_worker::doctor::{CheckStatus, DoctorOptions, Target, run_checks};
    let tmp = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut opts = DoctorOptions::new(tmp.path());
    opts.targets = vec![Target::new(
        "up",
        "127.0.0.1",
        listener.local_addr().unwrap().port(),
        "",
    )];
    let results = run_checks(&opts);
    let up = results
        .iter()
        .find(|r| r.name.starts_with("outbound up"))
        .unwrap();
    assert_eq!(up.status, CheckStatus::Ok);
    assert!(!up.required);
    assert!(
        results
            .iter()
            .any(|r| r.name == "local TCP sockets" && r.required && r.status == CheckStatus::Ok)
    );
    let text = toml::to_string(&toml::Value::try_from(serde_helper(&results)).unwrap()).unwrap();
    assert!(
        text.contains("status = \"OK\"") && text.contains("required = true"),
        "{text}"
    );
}

/// Wraps the list in a table (TOML needs one at the top) to check the serde shape.
fn serde_helper(
    results: &[kiln_worker::doctor::CheckResult],
) -> std::collections::BTreeMap<&'static str, &[kiln_worker::doctor::CheckResult]> {
    std::collections::BTreeMap::from([("checks", results)])
}
