//! `kiln-worker install-service`: prints systemd, launchd, rc.d and crontab text; writes nothing.
#![cfg(unix)]

mod cli_support;

use cli_support::*;

fn listing(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = walk(dir);
    names.sort();
    names
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        out.push(e.path().display().to_string());
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        }
    }
    out
}

#[test]
fn prints_all_service_definitions_with_absolute_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("buildarea");
    create(&dir, &[]);
    let before = listing(tmp.path());
    let bin = std::fs::canonicalize(BIN).unwrap().display().to_string();
    let base = std::fs::canonicalize(&dir).unwrap().display().to_string();

    // A relative BASEDIR is made absolute.
    let o = kiln()
        .current_dir(tmp.path())
        .args(["install-service", "--user", "buildbot", "buildarea"])
        .output()
        .unwrap();
    let out = ok(o);

    // systemd
    assert!(
        out.contains("/etc/systemd/system/kiln-worker-testworker.service"),
        "{out}"
    );
    assert!(
        out.contains(&format!("ExecStart={bin} run {base}\n")),
        "{out}"
    );
    assert!(out.contains("Restart=always\n"), "{out}");
    assert!(out.contains("User=buildbot\n"), "{out}");
    assert!(
        out.contains("[Install]\nWantedBy=multi-user.target"),
        "{out}"
    );
    // launchd
    assert!(
        out.contains("/Library/LaunchDaemons/org.kiln.worker.testworker.plist"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "<string>{bin}</string>\n    <string>run</string>\n    <string>{base}</string>"
        )),
        "{out}"
    );
    assert!(
        out.contains("<key>UserName</key>\n  <string>buildbot</string>"),
        "{out}"
    );
    assert!(out.contains("<key>KeepAlive</key>"), "{out}");
    // FreeBSD rc.d
    assert!(out.contains("/usr/local/etc/rc.d/kiln_worker"), "{out}");
    assert!(out.contains("# PROVIDE: kiln_worker"), "{out}");
    assert!(out.contains(&format!("command={bin}\n")), "{out}");
    assert!(
        out.contains("pidfile=\"${kiln_worker_basedir}/kiln-worker.pid\""),
        "{out}"
    );
    assert!(out.contains(": ${kiln_worker_user:=buildbot}"), "{out}");
    // crontab, as CPython's volunteer page asks
    assert!(out.contains("crontab -e"), "{out}");
    assert!(
        out.contains(&format!("\n@reboot {bin} restart {base}\n")),
        "{out}"
    );

    assert_eq!(
        listing(tmp.path()),
        before,
        "install-service writes nothing"
    );
}

#[test]
fn defaults_to_the_current_user_and_refuses_a_non_worker_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("w");
    create(&dir, &[]);
    let me = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .unwrap()
        .unwrap()
        .name;
    let out = ok(run(&["install-service", dir.to_str().unwrap()]));
    assert!(out.contains(&format!("User={me}\n")), "{out}");

    let o = run(&["install-service", tmp.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("not a kiln-worker directory"),
        "{}",
        all(&o)
    );
}
