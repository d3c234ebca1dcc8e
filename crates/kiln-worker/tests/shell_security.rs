//! Build processes and privileges: refusing root, dropping to a build user,
//! the bubblewrap sandbox, rlimits.

#![cfg(target_os = "linux")]

mod shell_util;

use kiln_proto::Value;
use kiln_proto::args::Args;
use kiln_worker::commands::process::{ExecPolicy, ROOT_REFUSAL, RunAs, Sandbox};
use kiln_worker::config::Limits;
use shell_util::{Run, marker, processes_with, sh, survivors};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[tokio::test]
async fn root_without_run_as_or_allow_root_is_refused() {
    if !is_root() {
        eprintln!("skipped: not running as root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let marker_file = dir.path().join("ran");
    let mut run = Run::new(dir.path());
    run.policy = ExecPolicy::default();
    let c = run
        .shell(&sh(dir.path(), &format!("touch {}", marker_file.display())))
        .await;
    let failure = c.complete().expect("the command fails");
    assert!(failure.contains(ROOT_REFUSAL), "{failure}");
    assert!(c.header().contains("kiln-worker is running as root and will not run build commands as root; restart it with --run-as USER"), "{}", c.header());
    assert!(!marker_file.exists(), "nothing ran");
    assert_eq!(c.rc(), None);

    // rmdir and cpdir run processes too.
    let victim = dir.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    let mut run = Run::new(dir.path());
    run.policy = ExecPolicy::default();
    let c = run
        .command(
            "rmdir",
            Args::from_pairs([(
                "paths",
                Value::Array(vec![Value::from(victim.to_str().unwrap())]),
            )]),
        )
        .await;
    assert!(c.complete().unwrap().contains(ROOT_REFUSAL));
    assert!(victim.exists());
    let mut run = Run::new(dir.path());
    run.policy = ExecPolicy::default();
    let args = Args::from_pairs([
        ("from_path", Value::from(victim.to_str().unwrap())),
        (
            "to_path",
            Value::from(dir.path().join("copy").to_str().unwrap()),
        ),
    ]);
    assert!(
        run.command("cpdir", args)
            .await
            .complete()
            .unwrap()
            .contains(ROOT_REFUSAL)
    );
}

#[tokio::test]
async fn run_as_nobody() {
    if !is_root() {
        eprintln!("skipped: not running as root");
        return;
    }
    let nobody = RunAs::lookup("nobody").expect("the nobody user exists");
    let dir = tempfile::tempdir().unwrap();
    let mut run = Run::new(dir.path());
    run.policy = ExecPolicy::new(Some("nobody"), false, None, Limits::default()).unwrap();
    let c = run
        .shell(&sh(dir.path(), "id -u; id -g; touch made-here"))
        .await;
    assert_eq!(c.complete(), None);
    assert_eq!(c.rc(), Some(0), "{}", c.stderr());
    assert_eq!(c.stdout(), format!("{}\n{}\n", nobody.uid, nobody.gid));
    assert_eq!(nobody.uid, 65534);
    // The workdir it created was given to the build user, who could write in it.
    use std::os::unix::fs::MetadataExt;
    let made = std::fs::metadata(dir.path().join("build/made-here")).unwrap();
    assert_eq!(made.uid(), nobody.uid);
    assert_eq!(
        std::fs::metadata(dir.path().join("build")).unwrap().uid(),
        nobody.uid
    );
    // Supplementary groups are the user's, not root's.
    let c = {
        let mut run = Run::new(dir.path());
        run.policy = ExecPolicy::new(Some("nobody"), false, None, Limits::default()).unwrap();
        run.shell(&sh(dir.path(), "id -G")).await
    };
    let groups: Vec<u32> = c
        .stdout()
        .split_whitespace()
        .map(|g| g.parse().unwrap())
        .collect();
    assert!(!groups.contains(&0), "{groups:?}");
    assert!(ExecPolicy::new(Some("no-such-user-kiln"), false, None, Limits::default()).is_err());
}

/// A directory for sandbox tests outside /tmp (inside the sandbox /tmp is a private
/// tmpfs, where any write "succeeds" and vanishes), wherever the checkout lives.
fn sandbox_test_dir() -> tempfile::TempDir {
    let target = env!("CARGO_TARGET_TMPDIR");
    let parent = if std::path::Path::new(target).starts_with("/tmp") {
        "/var/tmp"
    } else {
        target
    };
    tempfile::tempdir_in(parent).unwrap()
}

#[tokio::test]
async fn bwrap_sandbox_confines_writes_to_the_builder_directory() {
    if !std::path::Path::new("/usr/bin/bwrap").exists() {
        eprintln!("skipped: no bwrap");
        return;
    }
    // Outside /tmp: inside the sandbox /tmp is a private tmpfs.
    let base = sandbox_test_dir();
    let workdir = base.path().join("b1/build");
    let script = "echo in > inside.txt && echo inside-ok; \
                  echo b > ../builder-level.txt && echo builder-ok; \
                  (echo out > ../../outside.txt) 2>/dev/null || echo outside-failed; \
                  (echo e > /etc/kiln-sandbox-test) 2>/dev/null || echo etc-failed; \
                  echo t > /tmp/t && echo tmp-ok; \
                  wc -l < /proc/net/dev";
    let args = vec![
        ("command", Value::from(script)),
        ("workdir", Value::from(workdir.to_str().unwrap())),
    ];
    let mut run = Run::new(base.path());
    run.policy = ExecPolicy {
        allow_root: true,
        sandbox: Some(Sandbox::Bwrap { network: false }),
        ..ExecPolicy::default()
    };
    let c = run.shell(&args).await;
    assert_eq!(c.complete(), None);
    assert_eq!(
        c.stdout(),
        "inside-ok\nbuilder-ok\noutside-failed\netc-failed\ntmp-ok\n3\n",
        "stderr: {}",
        c.stderr()
    );
    assert!(workdir.join("inside.txt").exists());
    assert!(base.path().join("b1/builder-level.txt").exists());
    assert!(!base.path().join("outside.txt").exists());
    assert!(!std::path::Path::new("/etc/kiln-sandbox-test").exists());
}

#[tokio::test]
async fn a_sandboxed_tree_is_killed_too() {
    if !std::path::Path::new("/usr/bin/bwrap").exists() {
        eprintln!("skipped: no bwrap");
        return;
    }
    let base = sandbox_test_dir();
    let m = marker(20);
    let workdir = base.path().join("b1/build");
    let script = format!("sleep {m} & setsid sh -c 'sleep {m}' & sleep 0.2; echo started; wait");
    let args = vec![
        ("command", Value::from(script)),
        ("workdir", Value::from(workdir.to_str().unwrap())),
    ];
    let mut run = Run::new(base.path());
    run.policy = ExecPolicy {
        allow_root: true,
        sandbox: Some(Sandbox::Bwrap { network: true }),
        ..ExecPolicy::default()
    };
    run.interrupt_on = Some("started".into());
    let c = run.shell(&args).await;
    assert_eq!(c.rc(), Some(-1));
    assert!(survivors(&m).await.is_empty(), "{:?}", processes_with(&m));
}

#[tokio::test]
async fn rlimits_apply_to_build_processes() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = Run::new(dir.path());
    run.policy = ExecPolicy {
        allow_root: true,
        limits: Limits {
            memory: Some(2 << 30),
            processes: Some(500),
            open_files: Some(64),
            cpu_time: Some(100),
        },
        ..ExecPolicy::default()
    };
    let c = run.shell(&sh(dir.path(), "cat /proc/self/limits")).await;
    let out = c.stdout();
    let limit = |name: &str| -> Vec<String> {
        let line = out
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in {out}"));
        line[name.len()..]
            .split_whitespace()
            .take(2)
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        limit("Max address space"),
        [(2u64 << 30).to_string(), (2u64 << 30).to_string()]
    );
    assert_eq!(limit("Max processes"), ["500", "500"]);
    assert_eq!(limit("Max open files"), ["64", "64"]);
    assert_eq!(limit("Max cpu time"), ["100", "100"]);
}
