//! Killing a command kills its whole process tree: background jobs, orphans,
//! `setsid` escapees and double forks. Each test gives its sleeps a unique
//! duration and checks `/proc` afterwards; the processes seen while the command
//! ran must also be gone from `/proc` entirely (reaped, not left as zombies).

#![cfg(target_os = "linux")]

mod shell_util;

use std::time::Duration;

use kiln_proto::Value;
use shell_util::{Collected, Run, marker, processes_with, sh, survivors};

/// Runs `run` while watching for processes carrying `marker`; returns what the
/// command sent and the pids seen.
async fn run_watching(
    run: Run,
    args: Vec<(&'static str, Value)>,
    marker: &str,
    expect: usize,
) -> (Collected, Vec<i32>) {
    let m = marker.to_owned();
    let watcher = tokio::spawn(async move {
        let mut seen: Vec<i32> = Vec::new();
        for _ in 0..200 {
            for p in processes_with(&m) {
                if !seen.contains(&p) {
                    seen.push(p);
                }
            }
            if seen.len() >= expect {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        seen
    });
    let c = run.shell(&args).await;
    let seen = watcher.await.unwrap();
    assert!(
        seen.len() >= expect,
        "saw {seen:?} running, expected {expect}"
    );
    (c, seen)
}

/// Every pid is gone from /proc (killed and reaped) within 10 s (generous: CI machines are busy).
async fn all_gone(pids: &[i32]) {
    for _ in 0..200 {
        if pids
            .iter()
            .all(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left: Vec<String> = pids
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .collect();
    panic!("still in /proc: {left:?}");
}

#[tokio::test]
async fn interrupt_kills_background_jobs_and_escapees() {
    let dir = tempfile::tempdir().unwrap();
    let m = marker(10);
    // A background job, an orphan (its parent subshell exits), a setsid escapee,
    // a setsid'd double fork with its output closed, and one that clears its environment.
    let script = format!(
        "sleep {m} & (sleep {m} &); setsid sh -c 'sleep {m}' & \
         (setsid sh -c 'sleep {m} & exit 0' </dev/null >/dev/null 2>&1 &); setsid env -i sleep {m} & \
         sleep 0.3; echo started; wait"
    );
    let mut run = Run::new(dir.path());
    run.interrupt_on = Some("started".into());
    let (c, seen) = run_watching(run, sh(dir.path(), &script), &m, 5).await;
    assert_eq!(c.complete(), None);
    assert_eq!(c.rc(), Some(-1));
    let left = survivors(&m).await;
    let info: Vec<String> = left
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .collect();
    let env: Vec<String> = left
        .iter()
        .filter_map(|p| {
            std::fs::read(format!("/proc/{p}/environ"))
                .ok()
                .map(|e| String::from_utf8_lossy(&e).into_owned())
        })
        .collect();
    assert!(left.is_empty(), "survivors: {info:?} {env:?} seen {seen:?}");
    all_gone(&seen).await;
}

#[tokio::test]
async fn timeout_kills_the_whole_tree() {
    let dir = tempfile::tempdir().unwrap();
    let m = marker(11);
    let script = format!(
        "sleep {m} & (sleep {m} &); setsid sh -c 'sleep {m}' & echo started; exec sleep 30"
    );
    let mut args = sh(dir.path(), &script);
    args.push(("timeout", Value::from(1)));
    let (c, seen) = run_watching(Run::new(dir.path()), args, &m, 3).await;
    assert_eq!(
        c.failure_reason().as_deref(),
        Some("timeout_without_output")
    );
    assert_eq!(c.rc(), Some(-1));
    assert!(
        survivors(&m).await.is_empty(),
        "survivors: {:?}",
        processes_with(&m)
    );
    all_gone(&seen).await;
}

#[tokio::test]
async fn max_time_kills_the_whole_tree() {
    let dir = tempfile::tempdir().unwrap();
    let m = marker(12);
    let script = format!(
        "sleep {m} & setsid sh -c 'sleep {m} & sleep {m}' </dev/null >/dev/null 2>&1 & while :; do echo tick; sleep 0.2; done"
    );
    let mut args = sh(dir.path(), &script);
    args.push(("maxTime", Value::from(1)));
    let (c, seen) = run_watching(Run::new(dir.path()), args, &m, 3).await;
    assert_eq!(c.failure_reason().as_deref(), Some("timeout"));
    assert_eq!(c.rc(), Some(-1));
    assert!(
        survivors(&m).await.is_empty(),
        "survivors: {:?}",
        processes_with(&m)
    );
    all_gone(&seen).await;
}

#[tokio::test]
async fn a_background_job_holding_the_output_keeps_the_step_until_the_timeout() {
    // Like Buildbot: the step waits for the output pipes to close. The timeout then
    // kills the job (the main process already exited 0, so rc is -1).
    let dir = tempfile::tempdir().unwrap();
    let m = marker(13);
    let mut args = sh(dir.path(), &format!("sleep {m} & echo done"));
    args.push(("timeout", Value::from(1)));
    let (c, seen) = run_watching(Run::new(dir.path()), args, &m, 1).await;
    assert_eq!(c.stdout(), "done\n");
    assert_eq!(
        c.failure_reason().as_deref(),
        Some("timeout_without_output")
    );
    assert_eq!(c.rc(), Some(-1));
    assert!(survivors(&m).await.is_empty());
    all_gone(&seen).await;
}

#[tokio::test]
async fn a_detached_daemon_outlives_a_normal_exit_and_is_reaped_when_it_dies() {
    // A properly detached process is left alone when the command ends normally.
    // It was reparented to the worker (a subreaper); once it dies it is reaped.
    let dir = tempfile::tempdir().unwrap();
    let m = marker(14);
    let args = sh(
        dir.path(),
        &format!("(setsid sleep {m} </dev/null >/dev/null 2>&1 &); echo done"),
    );
    let (c, seen) = run_watching(Run::new(dir.path()), args, &m, 1).await;
    assert_eq!(c.rc(), Some(0));
    assert_eq!(c.failure_reason(), None);
    let alive = processes_with(&m);
    assert_eq!(alive.len(), 1, "the daemon still runs");
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", alive[0])).unwrap();
    let ppid: u32 = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(ppid, std::process::id(), "the worker adopted it");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(alive[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    all_gone(&seen).await;
}

#[tokio::test]
async fn an_orphan_never_seen_with_a_cookie_is_reaped_when_it_dies() {
    // A detached process that cleared its environment is adopted by the worker (a
    // subreaper) but never recognised by its cookie; it dies on its own a second
    // later, and must not stay a zombie of the worker.
    let dir = tempfile::tempdir().unwrap();
    let short = format!("1.{}", &marker(20)[5..]);
    let args = sh(
        dir.path(),
        &format!("(setsid env -i sleep {short} </dev/null >/dev/null 2>&1 &); echo done"),
    );
    let (c, seen) = run_watching(Run::new(dir.path()), args, &short, 1).await;
    assert_eq!(c.rc(), Some(0));
    all_gone(&seen).await;
}
