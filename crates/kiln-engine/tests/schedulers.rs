use std::collections::BTreeMap;

use chrono::TimeZone;
use chrono_tz::{America::New_York, Europe::Berlin, Tz};
use kiln_engine::schedulers::*;
use kiln_engine::{Clock, FakeClock};
use kiln_model::{BuildId, Change, ChangeId, Properties, Results, SourceStamp, SourceStampId};
use serde_json::json;

const T0: i64 = 1_800_000_000;

fn change(id: i64, branch: &str, files: &[&str]) -> Change {
    Change {
        changeid: ChangeId(id),
        author: "a <a@example.org>".into(),
        committer: None,
        comments: String::new(),
        branch: Some(branch.into()),
        revision: Some(format!("rev{id}")),
        when_timestamp: T0,
        category: None,
        repository: "https://github.com/python/cpython".into(),
        codebase: String::new(),
        project: "cpython".into(),
        files: files.iter().map(|s| s.to_string()).collect(),
        properties: Properties::default(),
        sourcestampid: SourceStampId(id),
    }
}

fn cpython_importance() -> FileImportance {
    FileImportance {
        important: vec![],
        unimportant: ["Doc/", "Misc/", ".github/", "*.rst", "*.md", "*.yml"]
            .iter()
            .map(|g| Glob::new(g))
            .collect(),
    }
}

fn branch_scheduler(stable: Option<i64>, mode: BranchMode, branches: &[&str]) -> ChangeScheduler {
    ChangeScheduler::new(ChangeSchedulerConfig {
        name: "main".into(),
        builders: vec!["AMD64 Ubuntu".into(), "ARM64 macOS".into()],
        filter: ChangeFilter {
            branches: branches.iter().map(|b| Some(b.to_string())).collect(),
            ..Default::default()
        },
        importance: cpython_importance(),
        tree_stable_timer: stable,
        mode,
        properties: Properties::default(),
        reason: "The SingleBranchScheduler scheduler named 'main' triggered this build".into(),
        builder_filter_property: None,
    })
}

/// Drives a scheduler with a fake clock: polls whenever a wake-up is due, up to `until`.
fn run_until(s: &mut dyn Scheduler, clock: &FakeClock, until: i64) -> Vec<(i64, BuildsetRequest)> {
    let mut out = Vec::new();
    while let Some(at) = s.next_wakeup() {
        if at > until {
            break;
        }
        clock.set(at.max(clock.now()));
        out.extend(s.poll(clock.now()).into_iter().map(|b| (clock.now(), b)));
    }
    clock.set(until);
    out
}

#[test]
fn globs() {
    let g = |p: &str, s: &str| Glob::new(p).matches(s);
    assert!(g("Doc/", "Doc/library/os.rst"));
    assert!(!g("Doc/", "Lib/Doc/x"));
    assert!(g("*.rst", "Doc/library/os.rst"));
    assert!(g("*.rst", "README.rst"));
    assert!(!g("*.rst", "Lib/os.py"));
    assert!(g("Lib/*.py", "Lib/os.py"));
    assert!(!g("Lib/*.py", "Lib/test/test_os.py"));
    assert!(g("Lib/**/*.py", "Lib/test/test_os.py"));
    assert!(g("Lib/**/*.py", "Lib/os.py"));
    assert!(g("Lib/**", "Lib/a/b/c"));
    assert!(g("?.c", "a.c"));
    assert!(!g("?.c", "ab.c"));
}

#[test]
fn file_importance() {
    let imp = cpython_importance();
    assert!(!imp.change_is_important(&change(
        1,
        "main",
        &["Doc/whatsnew/3.14.rst", "Misc/NEWS.d/next/x.rst"]
    )));
    assert!(imp.change_is_important(&change(1, "main", &["Doc/x.rst", "Lib/os.py"])));
    assert!(imp.change_is_important(&change(1, "main", &[])));
    let only_c = FileImportance {
        important: vec![Glob::new("*.c")],
        unimportant: vec![Glob::new("Doc/")],
    };
    assert!(only_c.file_is_important("Modules/x.c"));
    assert!(!only_c.file_is_important("Doc/x.c"));
    assert!(!only_c.file_is_important("Lib/x.py"));
}

#[test]
fn five_pushes_within_20s_give_one_buildset_with_all_changes() {
    let clock = FakeClock::new(T0);
    let mut s = branch_scheduler(Some(30), BranchMode::Single, &["main"]);
    for i in 1..=5 {
        assert!(
            s.on_change(&change(i, "main", &["Lib/os.py"]), clock.now())
                .is_empty()
        );
        assert_eq!(
            s.next_wakeup(),
            Some(clock.now() + 30),
            "each change restarts the timer"
        );
        clock.advance(5);
    }
    // The last change came at T0+20; the timer fires at T0+50, not before.
    assert!(s.poll(T0 + 49).is_empty());
    let fired = run_until(&mut s, &clock, T0 + 1000);
    assert_eq!(fired.len(), 1);
    let (at, bs) = &fired[0];
    assert_eq!(*at, T0 + 50);
    assert_eq!(bs.changes, (1..=5).map(ChangeId).collect::<Vec<_>>());
    assert_eq!(
        bs.sources[0].revision.as_deref(),
        Some("rev5"),
        "the newest change gives the revision"
    );
    assert_eq!(bs.sources[0].branch.as_deref(), Some("main"));
    assert_eq!(bs.builders.len(), 2);
    assert_eq!(s.next_wakeup(), None);
}

#[test]
fn refleak_timer_waits_for_an_hour_of_quiet() {
    let clock = FakeClock::new(T0);
    let mut s = branch_scheduler(Some(3600), BranchMode::Single, &["main"]);
    // A change every 50 minutes for 5 hours: the 1 h timer never fires (Buildbot's known quirk).
    for i in 0..6 {
        s.on_change(&change(i, "main", &["Lib/os.py"]), clock.now());
        assert!(run_until(&mut s, &clock, clock.now() + 3000).is_empty());
    }
    // Then an hour of quiet: one buildset with all six changes.
    let fired = run_until(&mut s, &clock, clock.now() + 3600);
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].1.changes.len(), 6);
}

#[test]
fn unimportant_changes_restart_a_running_timer_but_never_start_one() {
    let clock = FakeClock::new(T0);
    let mut s = branch_scheduler(Some(30), BranchMode::Single, &["main"]);
    // A doc-only push: nothing.
    s.on_change(&change(1, "main", &["Doc/x.rst"]), clock.now());
    assert_eq!(s.next_wakeup(), None);
    assert!(run_until(&mut s, &clock, T0 + 100).is_empty());
    // An important change, then a doc change 20 s later: the doc change restarts the timer
    // and is part of the buildset.
    s.on_change(&change(2, "main", &["Lib/os.py"]), clock.now());
    clock.advance(20);
    s.on_change(&change(3, "main", &["Doc/y.rst"]), clock.now());
    assert_eq!(s.next_wakeup(), Some(clock.now() + 30));
    let fired = run_until(&mut s, &clock, clock.now() + 100);
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].1.changes, vec![ChangeId(2), ChangeId(3)]);
}

#[test]
fn without_timer_each_important_change_builds_at_once() {
    let mut s = branch_scheduler(None, BranchMode::Single, &["main"]);
    assert_eq!(s.on_change(&change(1, "main", &["Lib/os.py"]), T0).len(), 1);
    assert!(
        s.on_change(&change(2, "main", &["Doc/os.rst"]), T0)
            .is_empty()
    );
    assert!(
        s.on_change(&change(3, "3.13", &["Lib/os.py"]), T0)
            .is_empty(),
        "filtered branch"
    );
    assert_eq!(s.next_wakeup(), None);
}

#[test]
fn any_branch_keeps_one_timer_per_branch() {
    let clock = FakeClock::new(T0);
    let mut s = branch_scheduler(Some(30), BranchMode::Any, &[]);
    s.on_change(&change(1, "main", &["Lib/os.py"]), clock.now());
    clock.advance(20);
    s.on_change(&change(2, "3.13", &["Lib/os.py"]), clock.now());
    clock.advance(5);
    // A change on 3.13 does not delay main's timer.
    s.on_change(&change(3, "3.13", &["Lib/os.py"]), clock.now());
    let fired = run_until(&mut s, &clock, T0 + 1000);
    let got: Vec<(i64, Option<String>, Vec<ChangeId>)> = fired
        .iter()
        .map(|(t, b)| (*t - T0, b.sources[0].branch.clone(), b.changes.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (30, Some("main".into()), vec![ChangeId(1)]),
            (55, Some("3.13".into()), vec![ChangeId(2), ChangeId(3)])
        ]
    );
}

#[test]
fn single_branch_shares_one_timer() {
    let clock = FakeClock::new(T0);
    let mut s = branch_scheduler(Some(30), BranchMode::Single, &[]);
    s.on_change(&change(1, "main", &["Lib/os.py"]), clock.now());
    clock.advance(20);
    s.on_change(&change(2, "3.13", &["Lib/os.py"]), clock.now());
    let fired = run_until(&mut s, &clock, T0 + 1000);
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].0, T0 + 50);
}

#[test]
fn pr_filter_on_change_property() {
    let mut s = ChangeScheduler::new(ChangeSchedulerConfig {
        name: "pull-request".into(),
        builders: vec!["b".into()],
        filter: ChangeFilter {
            required_property: Some("should_test_pr".into()),
            ..Default::default()
        },
        importance: FileImportance::default(),
        tree_stable_timer: None,
        mode: BranchMode::Any,
        properties: Properties::default(),
        reason: "pr".into(),
        builder_filter_property: None,
    });
    let mut c = change(1, "refs/pull/1/merge", &["Lib/os.py"]);
    assert!(s.on_change(&c, T0).is_empty());
    c.properties.set("should_test_pr", true, "Change");
    let bs = s.on_change(&c, T0);
    assert_eq!(bs.len(), 1);
    assert_eq!(
        bs[0].properties.get("should_test_pr"),
        Some(&json!(true)),
        "change properties are passed on"
    );
}

// ------------------------------------------------------------- nightly and DST

fn ts(tz: Tz, y: i32, mo: u32, d: u32, h: u32, mi: u32) -> i64 {
    tz.with_ymd_and_hms(y, mo, d, h, mi, 0)
        .earliest()
        .unwrap()
        .timestamp()
}

fn utc(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .unwrap()
        .format("%Y-%m-%d %H:%M UTC")
        .to_string()
}

fn nightly(pattern: &str, tz: Tz, start: i64) -> Nightly {
    let src = SourceStamp {
        codebase: String::new(),
        repository: "r".into(),
        branch: Some("main".into()),
        revision: None,
        project: "p".into(),
    };
    Nightly::new("nightly", vec!["b".into()], vec![src], pattern, tz, start).unwrap()
}

fn firings(s: &mut dyn Scheduler, from: i64, to: i64) -> Vec<String> {
    let clock = FakeClock::new(from);
    run_until(s, &clock, to)
        .into_iter()
        .map(|(t, _)| utc(t))
        .collect()
}

#[test]
fn nightly_at_3am_berlin_follows_dst() {
    // 03:00 Berlin is 02:00 UTC in winter and 01:00 UTC in summer (DST starts 28 March 2027).
    let start = ts(Berlin, 2027, 3, 26, 12, 0);
    let mut n = nightly("0 3 * * *", Berlin, start);
    assert_eq!(
        firings(&mut n, start, ts(Berlin, 2027, 3, 30, 12, 0)),
        vec![
            "2027-03-27 02:00 UTC",
            "2027-03-28 01:00 UTC",
            "2027-03-29 01:00 UTC",
            "2027-03-30 01:00 UTC"
        ]
    );
}

#[test]
fn nightly_in_the_spring_forward_gap_runs_once_after_the_gap() {
    // 02:30 does not exist in Berlin on 28 March 2027 (02:00 → 03:00): it runs at 03:00 CEST.
    let start = ts(Berlin, 2027, 3, 26, 12, 0);
    let mut n = nightly("30 2 * * *", Berlin, start);
    assert_eq!(
        firings(&mut n, start, ts(Berlin, 2027, 3, 30, 12, 0)),
        vec![
            "2027-03-27 01:30 UTC",
            "2027-03-28 01:00 UTC",
            "2027-03-29 00:30 UTC",
            "2027-03-30 00:30 UTC"
        ]
    );
    // New York, 14 March 2027 (02:00 → 03:00).
    let start = ts(New_York, 2027, 3, 13, 12, 0);
    let mut n = nightly("30 2 * * *", New_York, start);
    assert_eq!(
        firings(&mut n, start, ts(New_York, 2027, 3, 15, 12, 0)),
        vec!["2027-03-14 07:00 UTC", "2027-03-15 06:30 UTC"]
    );
}

#[test]
fn nightly_in_the_repeated_autumn_hour_runs_once() {
    // 02:30 happens twice in Berlin on 31 October 2027 (03:00 CEST → 02:00 CET): once, the first.
    let start = ts(Berlin, 2027, 10, 30, 12, 0);
    let mut n = nightly("30 2 * * *", Berlin, start);
    assert_eq!(
        firings(&mut n, start, ts(Berlin, 2027, 11, 1, 12, 0)),
        vec!["2027-10-31 00:30 UTC", "2027-11-01 01:30 UTC"]
    );
    // New York, 7 November 2027 (02:00 EDT → 01:00 EST): 01:30 happens twice.
    let start = ts(New_York, 2027, 11, 6, 12, 0);
    let mut n = nightly("30 1 * * *", New_York, start);
    assert_eq!(
        firings(&mut n, start, ts(New_York, 2027, 11, 8, 12, 0)),
        vec!["2027-11-07 05:30 UTC", "2027-11-08 06:30 UTC"]
    );
}

#[test]
fn interval_pattern_runs_in_both_repeated_hours() {
    // Every 30 minutes through the Berlin fall-back: 02:00 and 02:30 happen twice, each fires.
    let start = ts(Berlin, 2027, 10, 31, 1, 45);
    let mut n = nightly("*/30 * * * *", Berlin, start);
    let f = firings(&mut n, start, start + 4 * 3600);
    assert_eq!(
        f,
        vec![
            "2027-10-31 00:00 UTC", // 02:00 CEST
            "2027-10-31 00:30 UTC", // 02:30 CEST
            "2027-10-31 01:00 UTC", // 02:00 CET
            "2027-10-31 01:30 UTC", // 02:30 CET
            "2027-10-31 02:00 UTC",
            "2027-10-31 02:30 UTC",
            "2027-10-31 03:00 UTC",
            "2027-10-31 03:30 UTC",
        ]
    );
}

#[test]
fn nightly_after_downtime_fires_once_and_only_if_changed() {
    let start = ts(Berlin, 2027, 1, 4, 12, 0);
    let mut n = nightly("0 3 * * *", Berlin, start);
    // The master was down for three nights: one catch-up firing, then the normal schedule.
    let late = ts(Berlin, 2027, 1, 7, 12, 0);
    assert_eq!(n.poll(late).len(), 1);
    assert_eq!(n.next_wakeup(), Some(ts(Berlin, 2027, 1, 8, 3, 0)));

    n.only_if_changed = true;
    n.importance = cpython_importance();
    let night = |d| ts(Berlin, 2027, 1, d, 3, 0);
    assert!(n.poll(night(8)).is_empty(), "no changes: no build");
    n.on_change(&change(1, "main", &["Doc/a.rst"]), night(8) + 60);
    assert!(
        n.poll(night(9)).is_empty(),
        "only unimportant changes: no build"
    );
    n.on_change(&change(2, "main", &["Lib/os.py"]), night(9) + 60);
    let bs = n.poll(night(10));
    assert_eq!(bs.len(), 1);
    assert_eq!(bs[0].changes, vec![ChangeId(2)]);
}

#[test]
fn buildbot_day_of_week() {
    // Buildbot Monday=0 … Sunday=6 → cron Sunday=0 … Saturday=6.
    assert_eq!(buildbot_day_of_week_to_cron(0), 1);
    assert_eq!(buildbot_day_of_week_to_cron(5), 6);
    assert_eq!(buildbot_day_of_week_to_cron(6), 0);
    // A Buildbot "Saturday" (5) nightly at 04:00 New York time fires on Saturdays.
    let start = ts(New_York, 2027, 1, 4, 0, 0); // Monday
    let pattern = format!("0 4 * * {}", buildbot_day_of_week_to_cron(5));
    let mut n = nightly(&pattern, New_York, start);
    assert_eq!(
        firings(&mut n, start, start + 14 * 86400),
        vec!["2027-01-09 09:00 UTC", "2027-01-16 09:00 UTC"]
    );
    assert!(Nightly::new("x", vec![], vec![], "not cron", Berlin, start).is_err());
}

#[test]
fn periodic() {
    let mut p = Periodic {
        name: "p".into(),
        builders: vec!["b".into()],
        sources: vec![],
        properties: Properties::default(),
        period: 3600,
        last_fired: None,
    };
    let clock = FakeClock::new(T0);
    let fired = run_until(&mut p, &clock, T0 + 3 * 3600 + 10);
    assert_eq!(
        fired.iter().map(|(t, _)| t - T0).collect::<Vec<_>>(),
        vec![0, 3600, 7200, 10800]
    );
    // After a long downtime, one firing, then one period later.
    assert_eq!(p.poll(T0 + 100_000).len(), 1);
    assert!(p.poll(T0 + 100_000 + 3599).is_empty());
    assert_eq!(p.next_wakeup(), Some(T0 + 103_600));
}

#[test]
fn triggerable_and_dependent() {
    let t = Triggerable {
        name: "t".into(),
        builders: vec!["docs".into()],
        properties: Properties::default(),
    };
    let mut props = Properties::default();
    props.set("got_revision", "abc", "Build");
    let src = SourceStamp {
        codebase: String::new(),
        repository: "r".into(),
        branch: Some("main".into()),
        revision: Some("abc".into()),
        project: "p".into(),
    };
    let bs = t.trigger(BuildId(7), vec![src.clone()], &props, true);
    assert!(bs.waited_for);
    assert_eq!(bs.parent_build, Some(BuildId(7)));
    assert_eq!(bs.properties.get("got_revision"), Some(&json!("abc")));

    let mut d = Dependent {
        name: "d".into(),
        upstream: "main".into(),
        builders: vec!["deploy".into()],
        properties: Properties::default(),
    };
    let done = |sched: &str, r| CompletedBuildset {
        scheduler: sched.into(),
        results: r,
        sources: vec![src.clone()],
        properties: Properties::default(),
    };
    assert_eq!(
        d.on_buildset_complete(&done("main", Results::Success), T0)
            .len(),
        1
    );
    assert_eq!(
        d.on_buildset_complete(&done("main", Results::Warnings), T0)[0].sources,
        vec![src.clone()]
    );
    for r in [
        Results::Failure,
        Results::Exception,
        Results::Cancelled,
        Results::Retry,
        Results::Skipped,
    ] {
        assert!(
            d.on_buildset_complete(&done("main", r), T0).is_empty(),
            "{r:?}"
        );
    }
    assert!(
        d.on_buildset_complete(&done("other", Results::Success), T0)
            .is_empty()
    );
}

#[test]
fn force_with_typed_parameters() {
    let f = Force {
        name: "force".into(),
        builders: vec!["a".into(), "b".into()],
        codebase: SourceStamp {
            codebase: String::new(),
            repository: "https://github.com/python/cpython".into(),
            branch: Some("main".into()),
            revision: None,
            project: "cpython".into(),
        },
        params: vec![
            ParamDef {
                name: "reason".into(),
                kind: ParamKind::String { max_len: 100 },
                required: false,
                default: None,
            },
            ParamDef {
                name: "branch".into(),
                kind: ParamKind::Fixed(json!("")),
                required: false,
                default: None,
            },
            ParamDef {
                name: "jobs".into(),
                kind: ParamKind::Int { min: 1, max: 64 },
                required: false,
                default: Some(json!(4)),
            },
            ParamDef {
                name: "clean".into(),
                kind: ParamKind::Bool,
                required: false,
                default: Some(json!(false)),
            },
            ParamDef {
                name: "mode".into(),
                kind: ParamKind::Choice(vec!["debug".into(), "release".into()]),
                required: true,
                default: None,
            },
        ],
    };
    let input = |pairs: &[(&str, serde_json::Value)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    let b = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    let bs = f
        .force(
            "alice",
            &b(&["a"]),
            &input(&[
                ("mode", json!("debug")),
                ("jobs", json!("8")),
                ("reason", json!("why")),
                ("branch", json!("evil")),
            ]),
        )
        .unwrap();
    assert_eq!(bs.builders, b(&["a"]));
    assert_eq!(
        bs.sources[0].branch.as_deref(),
        Some("main"),
        "a fixed parameter ignores input: the builder's branch HEAD"
    );
    assert_eq!(bs.sources[0].revision, None);
    assert_eq!(bs.properties.get("jobs"), Some(&json!(8)));
    assert_eq!(bs.properties.get("clean"), Some(&json!(false)));
    assert_eq!(bs.properties.get("owner"), Some(&json!("alice")));
    assert!(bs.properties.get("reason").is_none());
    assert!(bs.reason.contains("alice") && bs.reason.contains("why"));

    assert_eq!(
        f.force("x", &b(&["a"]), &input(&[])),
        Err(ForceError::Missing("mode".into()))
    );
    assert!(matches!(
        f.force("x", &b(&["a"]), &input(&[("mode", json!("fast"))])),
        Err(ForceError::Invalid { .. })
    ));
    assert!(matches!(
        f.force(
            "x",
            &b(&["a"]),
            &input(&[("mode", json!("debug")), ("jobs", json!(0))])
        ),
        Err(ForceError::Invalid { .. })
    ));
    assert!(matches!(
        f.force(
            "x",
            &b(&["a"]),
            &input(&[("mode", json!("debug")), ("clean", json!("maybe"))])
        ),
        Err(ForceError::Invalid { .. })
    ));
    assert_eq!(
        f.force("x", &b(&["c"]), &input(&[("mode", json!("debug"))])),
        Err(ForceError::UnknownBuilder("c".into()))
    );
    assert_eq!(f.force("x", &[], &input(&[])), Err(ForceError::NoBuilders));
    assert_eq!(
        f.force(
            "x",
            &b(&["a"]),
            &input(&[("mode", json!("debug")), ("nope", json!(1))])
        ),
        Err(ForceError::UnknownParameter("nope".into()))
    );
}

#[test]
fn tree_stable_timers_survive_a_restart() {
    let clock = FakeClock::new(T0);
    let mut s = branch_scheduler(Some(30), BranchMode::Any, &[]);
    s.on_change(&change(1, "main", &["Lib/os.py"]), clock.now());
    s.on_change(&change(2, "3.13", &["Lib/os.py"]), clock.now() + 10);
    let saved = s.timers();
    assert_eq!(saved.len(), 2);
    // A new master process restores them; the timers fire as they would have.
    let mut s2 = branch_scheduler(Some(30), BranchMode::Any, &[]);
    s2.restore(saved);
    assert_eq!(s2.next_wakeup(), Some(T0 + 30));
    let fired = run_until(&mut s2, &clock, T0 + 100);
    let got: Vec<(i64, Vec<ChangeId>)> = fired
        .iter()
        .map(|(t, b)| (*t - T0, b.changes.clone()))
        .collect();
    assert_eq!(got, vec![(30, vec![ChangeId(1)]), (40, vec![ChangeId(2)])]);
}

#[test]
fn pr_builder_filter_is_the_union_of_the_changes_filters() {
    let clock = FakeClock::new(T0);
    let mut s = ChangeScheduler::new(ChangeSchedulerConfig {
        name: "pull-request".into(),
        builders: vec![
            "AMD64 Ubuntu PR".into(),
            "ARM64 macOS PR".into(),
            "iOS ARM64 Simulator PR".into(),
            "aarch64 Android PR".into(),
        ],
        filter: ChangeFilter::default(),
        importance: FileImportance::default(),
        tree_stable_timer: Some(30),
        mode: BranchMode::Any,
        properties: Properties::default(),
        reason: "pr".into(),
        builder_filter_property: Some("builderfilter".into()),
    });
    let pr = |id, filter: Option<&str>| {
        let mut c = change(id, "refs/pull/1/merge", &["Lib/os.py"]);
        if let Some(f) = filter {
            c.properties.set("builderfilter", f, "Change");
        }
        c
    };
    // `!buildbot ios|android` selects exactly those, case-insensitively, whole names.
    s.on_change(&pr(1, Some(".*(ios|android).*")), clock.now());
    let fired = run_until(&mut s, &clock, T0 + 100);
    assert_eq!(
        fired[0].1.builders,
        vec![
            "iOS ARM64 Simulator PR".to_string(),
            "aarch64 Android PR".to_string()
        ]
    );
    // Two comments within one timer: both filters count (#566).
    s.on_change(&pr(2, Some(".*macos.*")), clock.now());
    s.on_change(&pr(3, Some(".*ubuntu.*")), clock.now() + 5);
    let fired = run_until(&mut s, &clock, T0 + 300);
    assert_eq!(
        fired[0].1.builders,
        vec!["AMD64 Ubuntu PR".to_string(), "ARM64 macOS PR".to_string()]
    );
    // A filter matching nothing builds nothing; no filter builds all.
    s.on_change(&pr(4, Some("nothing")), clock.now());
    assert!(run_until(&mut s, &clock, T0 + 500).is_empty());
    s.on_change(&pr(5, None), clock.now());
    assert_eq!(run_until(&mut s, &clock, T0 + 700)[0].1.builders.len(), 4);
}

#[test]
fn a_master_s_schedulers_together() {
    let clock = FakeClock::new(T0);
    let mut all = Schedulers::default();
    all.list.push(Box::new(branch_scheduler(
        Some(30),
        BranchMode::Single,
        &["main"],
    )));
    all.list.push(Box::new(Dependent {
        name: "after-main".into(),
        upstream: "main".into(),
        builders: vec!["docs".into()],
        properties: Properties::default(),
    }));
    all.list.push(Box::new(Periodic {
        name: "hourly".into(),
        builders: vec!["b".into()],
        sources: vec![],
        properties: Properties::default(),
        period: 3600,
        last_fired: Some(T0),
    }));
    assert_eq!(all.next_wakeup(), Some(T0 + 3600));
    assert!(
        all.on_change(&change(1, "main", &["Lib/os.py"]), clock.now())
            .is_empty()
    );
    assert_eq!(all.next_wakeup(), Some(T0 + 30));
    assert!(all.poll(T0 + 29).is_empty());
    let fired = all.poll(T0 + 30);
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].scheduler, "main");
    let done = CompletedBuildset {
        scheduler: "main".into(),
        results: Results::Success,
        sources: fired[0].sources.clone(),
        properties: Properties::default(),
    };
    let downstream = all.on_buildset_complete(&done, T0 + 600);
    assert_eq!(downstream.len(), 1);
    assert_eq!(downstream[0].builders, vec!["docs".to_string()]);
    assert_eq!(all.next_wakeup(), Some(T0 + 3600));
    assert_eq!(all.poll(T0 + 3600).len(), 1);
}

#[test]
fn buildbot_nightly_fields() {
    assert_eq!(
        buildbot_nightly_pattern(Some(&[0]), Some(&[3]), None, None, None),
        "0 3 * * *"
    );
    // Buildbot dayOfWeek=[0, 6] (Monday, Sunday) → cron 1,0.
    assert_eq!(
        buildbot_nightly_pattern(Some(&[0, 30]), None, None, Some(&[1]), Some(&[0, 6])),
        "0,30 * * 1 1,0"
    );
}
