use std::collections::{BTreeMap, HashMap};

use chrono::{NaiveTime, TimeZone, Weekday};
use kiln_engine::distributor::*;
use kiln_model::{BuildRequestId, BuilderId, SourceStamp, WorkerId};
use proptest::prelude::*;

fn req(
    id: i64,
    builder: i64,
    priority: i64,
    submitted_at: i64,
    key: Option<&str>,
) -> PendingRequest {
    PendingRequest {
        id: BuildRequestId(id),
        builder: BuilderId(builder),
        priority,
        submitted_at,
        collapse_key: key.map(str::to_string),
    }
}

fn builder(id: i64, workers: &[i64]) -> BuilderDef {
    BuilderDef {
        id: BuilderId(id),
        workers: workers.iter().map(|w| WorkerId(*w)).collect(),
        priority: 0,
        collapse_requests: true,
        locks: vec![],
    }
}

fn worker(id: i64, max_builds: u32) -> WorkerState {
    WorkerState {
        id: WorkerId(id),
        connected: true,
        paused: false,
        max_builds,
        downtime: vec![],
        quarantined_until: None,
    }
}

fn started(a: &[Assignment]) -> Vec<(i64, i64)> {
    a.iter().map(|a| (a.request.0, a.worker.0)).collect()
}

const T0: i64 = 1_800_000_000;

#[test]
fn oldest_first_and_request_priority_wins() {
    let snap = Snapshot {
        pending: vec![
            req(1, 1, 0, T0 + 5, None),
            req(2, 1, 0, T0, None),
            req(3, 1, 10, T0 + 9, None),
        ],
        builders: vec![builder(1, &[1])],
        workers: vec![worker(1, 1)],
        ..Default::default()
    };
    assert_eq!(started(&distribute(&snap, T0 + 10)), vec![(3, 1)]);
    let mut snap2 = snap.clone();
    snap2.pending.retain(|p| p.id.0 != 3);
    assert_eq!(started(&distribute(&snap2, T0 + 10)), vec![(2, 1)]);
}

#[test]
fn builder_priority_goes_first() {
    let mut hi = builder(2, &[1]);
    hi.priority = 5;
    let snap = Snapshot {
        pending: vec![req(1, 1, 0, T0, None), req(2, 2, 0, T0 + 100, None)],
        builders: vec![builder(1, &[1]), hi],
        workers: vec![worker(1, 1)],
        ..Default::default()
    };
    assert_eq!(started(&distribute(&snap, T0 + 200)), vec![(2, 1)]);
}

#[test]
fn one_build_per_builder_per_worker_and_max_builds() {
    // Builder 1 has 3 requests, no collapsing; worker 1 takes 2 builds, worker 2 one.
    let mut b = builder(1, &[1, 2]);
    b.collapse_requests = false;
    let snap = Snapshot {
        pending: vec![
            req(1, 1, 0, T0, None),
            req(2, 1, 0, T0 + 1, None),
            req(3, 1, 0, T0 + 2, None),
        ],
        builders: vec![b],
        workers: vec![worker(1, 2), worker(2, 1)],
        ..Default::default()
    };
    // One build of builder 1 per worker: two starts, the third waits.
    assert_eq!(started(&distribute(&snap, T0 + 10)), vec![(1, 1), (2, 2)]);
}

#[test]
fn fair_across_builders_of_equal_priority() {
    // Builder 1 has many old requests; builders 2 and 3 one newer request each; 3 slots.
    let mut b1 = builder(1, &[1, 2, 3]);
    b1.collapse_requests = false;
    let mut pending: Vec<_> = (0..20).map(|i| req(100 + i, 1, 0, T0 + i, None)).collect();
    pending.push(req(200, 2, 0, T0 + 1000, None));
    pending.push(req(300, 3, 0, T0 + 2000, None));
    let snap = Snapshot {
        pending,
        builders: vec![b1, builder(2, &[1, 2, 3]), builder(3, &[1, 2, 3])],
        workers: vec![worker(1, 1), worker(2, 1), worker(3, 1)],
        ..Default::default()
    };
    let a = distribute(&snap, T0 + 3000);
    let mut builders: Vec<i64> = a.iter().map(|a| a.builder.0).collect();
    builders.sort();
    assert_eq!(builders, vec![1, 2, 3], "each builder gets one slot: {a:?}");
}

#[test]
fn collapsing_starts_newest_and_merges_the_rest() {
    // 10 queued requests on a busy builder, same branch: one follow-up build at the newest.
    let mut pending: Vec<_> = (1..=10)
        .map(|i| req(i, 1, 0, T0 + i, Some("main")))
        .collect();
    pending.push(req(11, 1, 0, T0 + 11, Some("3.13")));
    pending.push(req(12, 1, 0, T0 + 12, None));
    let snap = Snapshot {
        pending: pending.clone(),
        builders: vec![builder(1, &[1])],
        workers: vec![worker(1, 1)],
        ..Default::default()
    };
    let a = distribute(&snap, T0 + 100);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].request, BuildRequestId(10));
    assert_eq!(
        a[0].collapsed,
        (1..=9).map(BuildRequestId).collect::<Vec<_>>()
    );

    // Without collapsing, the oldest starts alone.
    let mut b = builder(1, &[1]);
    b.collapse_requests = false;
    let snap = Snapshot {
        pending,
        builders: vec![b],
        workers: vec![worker(1, 1)],
        ..Default::default()
    };
    let a = distribute(&snap, T0 + 100);
    assert_eq!((a[0].request, a[0].collapsed.len()), (BuildRequestId(1), 0));
}

#[test]
fn busy_worker_holds_requests() {
    let snap = Snapshot {
        pending: vec![req(1, 1, 0, T0, Some("main"))],
        builders: vec![builder(1, &[1])],
        workers: vec![worker(1, 1)],
        running: vec![RunningBuild {
            builder: BuilderId(2),
            worker: WorkerId(1),
        }],
        ..Default::default()
    };
    assert!(distribute(&snap, T0).is_empty());
}

#[test]
fn disconnected_and_paused_workers_take_nothing() {
    let mut w1 = worker(1, 1);
    w1.connected = false;
    let mut w2 = worker(2, 1);
    w2.paused = true;
    let snap = Snapshot {
        pending: vec![req(1, 1, 0, T0, None)],
        builders: vec![builder(1, &[1, 2, 3])],
        workers: vec![w1, w2, worker(3, 1)],
        ..Default::default()
    };
    assert_eq!(started(&distribute(&snap, T0)), vec![(1, 3)]);
}

fn lock(name: &str, scope: LockScope, max: u32) -> LockDef {
    LockDef {
        name: name.into(),
        scope,
        max_count: max,
        max_count_for_worker: BTreeMap::new(),
    }
}

#[test]
fn counting_master_lock_limits_the_farm() {
    let mut bs = Vec::new();
    let mut pending = Vec::new();
    for b in 1..=4 {
        let mut d = builder(b, &[b]);
        d.locks = vec![("release".into(), LockAccess::Counting)];
        bs.push(d);
        pending.push(req(b, b, 0, T0 + b, None));
    }
    let snap = Snapshot {
        pending,
        builders: bs,
        workers: (1..=4).map(|w| worker(w, 1)).collect(),
        locks: vec![lock("release", LockScope::Master, 2)],
        ..Default::default()
    };
    assert_eq!(started(&distribute(&snap, T0 + 10)), vec![(1, 1), (2, 2)]);
    // With one of them running, only one more starts.
    let mut snap2 = snap.clone();
    snap2.pending.retain(|p| p.id.0 != 1);
    snap2.running = vec![RunningBuild {
        builder: BuilderId(1),
        worker: WorkerId(1),
    }];
    assert_eq!(started(&distribute(&snap2, T0 + 10)), vec![(2, 2)]);
}

#[test]
fn exclusive_worker_lock() {
    let mut excl = builder(1, &[1]);
    excl.locks = vec![("cpu".into(), LockAccess::Exclusive)];
    let mut shared = builder(2, &[1]);
    shared.locks = vec![("cpu".into(), LockAccess::Counting)];
    let mut shared3 = builder(3, &[1]);
    shared3.locks = vec![("cpu".into(), LockAccess::Counting)];
    let mut cpu = lock("cpu", LockScope::Worker, 1);
    cpu.max_count_for_worker.insert(WorkerId(1), 2);
    let snap = Snapshot {
        pending: vec![
            req(1, 1, 0, T0, None),
            req(2, 2, 0, T0 + 1, None),
            req(3, 3, 0, T0 + 2, None),
        ],
        builders: vec![excl, shared, shared3],
        workers: vec![worker(1, 4)],
        locks: vec![cpu],
        ..Default::default()
    };
    // The exclusive one goes first (oldest) and keeps the others out.
    assert_eq!(started(&distribute(&snap, T0 + 10)), vec![(1, 1)]);
    // While a counting holder runs, the exclusive one waits but another counting one fits.
    let mut snap2 = snap.clone();
    snap2.pending.retain(|p| p.id.0 != 2);
    snap2.running = vec![RunningBuild {
        builder: BuilderId(2),
        worker: WorkerId(1),
    }];
    assert_eq!(started(&distribute(&snap2, T0 + 10)), vec![(3, 1)]);
}

#[test]
fn downtime_window_blocks_only_that_worker() {
    // Worker 1 is down 22:00–08:00 UTC every day; worker 2 always up.
    let mut w1 = worker(1, 1);
    w1.downtime = vec![Downtime {
        days: vec![],
        start: NaiveTime::from_hms_opt(22, 0, 0).unwrap(),
        end: NaiveTime::from_hms_opt(8, 0, 0).unwrap(),
        tz: chrono_tz::UTC,
    }];
    let snap = Snapshot {
        pending: vec![req(1, 1, 0, T0, None), req(2, 2, 0, T0, None)],
        builders: vec![builder(1, &[1]), builder(2, &[2])],
        workers: vec![w1, worker(2, 1)],
        ..Default::default()
    };
    let at = |h, m| {
        chrono::Utc
            .with_ymd_and_hms(2027, 3, 10, h, m, 0)
            .unwrap()
            .timestamp()
    };
    assert_eq!(started(&distribute(&snap, at(23, 0))), vec![(2, 2)]);
    assert_eq!(started(&distribute(&snap, at(3, 0))), vec![(2, 2)]);
    assert_eq!(started(&distribute(&snap, at(8, 0))), vec![(1, 1), (2, 2)]);
    assert_eq!(
        started(&distribute(&snap, at(21, 59))),
        vec![(1, 1), (2, 2)]
    );
}

#[test]
fn weekly_downtime_in_local_time() {
    // Wednesdays 08:00–10:00 Pacific time (AWS reprovisioning).
    let d = Downtime {
        days: vec![Weekday::Wed],
        start: NaiveTime::from_hms_opt(8, 0, 0).unwrap(),
        end: NaiveTime::from_hms_opt(10, 0, 0).unwrap(),
        tz: chrono_tz::America::Los_Angeles,
    };
    let la = chrono_tz::America::Los_Angeles;
    let t = |day, h| {
        la.with_ymd_and_hms(2027, 1, day, h, 30, 0)
            .unwrap()
            .timestamp()
    };
    assert!(d.contains(t(6, 8))); // Wednesday 6 January 2027, 08:30 PST
    assert!(d.contains(t(6, 9)));
    assert!(!d.contains(t(6, 10)));
    assert!(!d.contains(t(7, 8))); // Thursday
    // Over midnight, the day is the day it starts: Friday 22:00 – Saturday 06:00.
    let w = Downtime {
        days: vec![Weekday::Fri],
        start: NaiveTime::from_hms_opt(22, 0, 0).unwrap(),
        end: NaiveTime::from_hms_opt(6, 0, 0).unwrap(),
        tz: chrono_tz::UTC,
    };
    let u = |day, h| {
        chrono::Utc
            .with_ymd_and_hms(2027, 1, day, h, 0, 0)
            .unwrap()
            .timestamp()
    };
    assert!(w.contains(u(8, 23))); // Fri
    assert!(w.contains(u(9, 5))); // Sat morning
    assert!(!w.contains(u(9, 23))); // Sat night
    assert!(!w.contains(u(8, 5))); // Fri morning
}

#[test]
fn unknown_builder_or_worker_is_ignored() {
    let snap = Snapshot {
        pending: vec![req(1, 9, 0, T0, None), req(2, 1, 0, T0, None)],
        builders: vec![builder(1, &[7, 1])],
        workers: vec![worker(1, 1)],
        ..Default::default()
    };
    assert_eq!(started(&distribute(&snap, T0)), vec![(2, 1)]);
}

#[test]
fn collapse_key_follows_buildbot_rules() {
    let stamps: Vec<SourceStamp> = ["main", "3.13"]
        .iter()
        .flat_map(|branch| ["a", "b"].map(|rev| (branch, rev)))
        .map(|(branch, rev)| SourceStamp {
            codebase: "".into(),
            repository: "https://github.com/python/cpython".into(),
            branch: Some(branch.to_string()),
            project: "cpython".into(),
            revision: Some(rev.into()),
        })
        .collect();
    let ss = |branch: &str, rev: &str, changes: bool, patch: bool| SourceForCollapse {
        stamp: stamps
            .iter()
            .find(|s| s.branch.as_deref() == Some(branch) && s.revision.as_deref() == Some(rev))
            .unwrap(),
        has_patch: patch,
        has_changes: changes,
    };
    // With changes, revisions may differ.
    assert_eq!(
        collapse_key(&[ss("main", "a", true, false)], "{}"),
        collapse_key(&[ss("main", "b", true, false)], "{}")
    );
    // Without, they must match.
    assert_ne!(
        collapse_key(&[ss("main", "a", false, false)], "{}"),
        collapse_key(&[ss("main", "b", false, false)], "{}")
    );
    assert_ne!(
        collapse_key(&[ss("main", "a", true, false)], "{}"),
        collapse_key(&[ss("3.13", "a", true, false)], "{}")
    );
    assert_ne!(
        collapse_key(&[ss("main", "a", true, false)], "{}"),
        collapse_key(&[ss("main", "a", true, false)], "{\"x\":1}")
    );
    assert_ne!(
        collapse_key(&[ss("main", "a", true, false)], "{}"),
        collapse_key(&[ss("main", "a", false, false)], "{}")
    );
    assert_eq!(collapse_key(&[ss("main", "a", true, true)], "{}"), None);
}

proptest! {
    /// Whatever the snapshot, the distributor never exceeds max_builds, never runs two builds of
    /// one builder on one worker, never breaks a lock, never uses an unavailable worker, and
    /// never starts or collapses a request twice.
    #[test]
    fn never_violates_limits(
        nb in 1usize..6, nw in 1usize..5,
        reqs in prop::collection::vec((0usize..6, 0i64..3, 0i64..50, 0u8..3), 0..30),
        wcfg in prop::collection::vec((any::<bool>(), 0u32..3), 5),
        bcfg in prop::collection::vec((prop::collection::vec(0usize..5, 1..4), 0u8..4, any::<bool>()), 6),
        running in prop::collection::vec((0usize..6, 0usize..5), 0..5),
        lockmax in (0u32..3, 0u32..3),
    ) {
        let workers: Vec<WorkerState> = (0..nw).map(|i| WorkerState {
            id: WorkerId(i as i64), connected: wcfg[i].0, paused: false, max_builds: wcfg[i].1, downtime: vec![], quarantined_until: None }).collect();
        let builders: Vec<BuilderDef> = (0..nb).map(|i| {
            let (ws, lk, collapse) = &bcfg[i];
            let locks = match lk {
                1 => vec![("m".to_string(), LockAccess::Counting)],
                2 => vec![("w".to_string(), LockAccess::Exclusive)],
                3 => vec![("m".to_string(), LockAccess::Exclusive), ("w".to_string(), LockAccess::Counting)],
                _ => vec![],
            };
            BuilderDef { id: BuilderId(i as i64), workers: ws.iter().map(|w| WorkerId(*w as i64)).collect(), priority: (i % 2) as i64, collapse_requests: *collapse, locks }
        }).collect();
        let pending: Vec<PendingRequest> = reqs.iter().enumerate().filter(|(_, r)| r.0 < nb).map(|(i, (b, p, t, k))| PendingRequest {
            id: BuildRequestId(i as i64), builder: BuilderId(*b as i64), priority: *p, submitted_at: *t,
            collapse_key: if *k == 0 { None } else { Some(k.to_string()) } }).collect();
        let running: Vec<RunningBuild> = running.iter().filter(|(b, w)| *b < nb && *w < nw)
            .map(|(b, w)| RunningBuild { builder: BuilderId(*b as i64), worker: WorkerId(*w as i64) }).collect();
        let locks = vec![
            LockDef { name: "m".into(), scope: LockScope::Master, max_count: lockmax.0 + 1, max_count_for_worker: BTreeMap::new() },
            LockDef { name: "w".into(), scope: LockScope::Worker, max_count: lockmax.1, max_count_for_worker: BTreeMap::new() },
        ];
        let snap = Snapshot { pending: pending.clone(), builders: builders.clone(), workers: workers.clone(), running: running.clone(), locks: locks.clone() };
        let out = distribute(&snap, 0);

        let mut seen = std::collections::HashSet::new();
        for a in &out {
            prop_assert!(seen.insert(a.request));
            for c in &a.collapsed { prop_assert!(seen.insert(*c)); }
            let w = workers.iter().find(|w| w.id == a.worker).unwrap();
            prop_assert!(w.connected);
            let b = builders.iter().find(|b| b.id == a.builder).unwrap();
            prop_assert!(b.workers.contains(&a.worker));
            let r = pending.iter().find(|p| p.id == a.request).unwrap();
            prop_assert_eq!(r.builder, a.builder);
        }
        // Only requests present were used.
        for id in &seen { prop_assert!(pending.iter().any(|p| p.id == *id)); }

        // Everything running after the decision, checked against the limits.
        let mut all: Vec<(BuilderId, WorkerId)> = out.iter().map(|a| (a.builder, a.worker)).collect();
        let new_pairs = all.clone();
        let old: Vec<(BuilderId, WorkerId)> = running.iter().map(|r| (r.builder, r.worker)).collect();
        all.extend(old.iter().copied());
        let mut load: HashMap<WorkerId, u32> = HashMap::new();
        for (_, w) in &all { *load.entry(*w).or_default() += 1; }
        for (w, n) in &load {
            let max = workers.iter().find(|x| x.id == *w).unwrap().max_builds;
            // Already-running builds may exceed a lowered max_builds; new ones may not be added then.
            if new_pairs.iter().any(|(_, nw)| nw == w) { prop_assert!(*n <= max, "worker {} load {} > {}", w, n, max); }
        }
        for (i, p) in new_pairs.iter().enumerate() {
            let dup = new_pairs.iter().skip(i + 1).any(|q| q == p) || old.contains(p);
            prop_assert!(!dup, "two builds of one builder on one worker");
        }
        // Locks: count holders per (lock, scope key) and check when something new was added.
        let mut usage: HashMap<(String, Option<WorkerId>), (u32, u32, bool)> = HashMap::new();
        for (idx, (b, w)) in all.iter().enumerate() {
            let is_new = idx < new_pairs.len();
            let bd = builders.iter().find(|x| x.id == *b).unwrap();
            for (name, access) in &bd.locks {
                let def = locks.iter().find(|l| &l.name == name).unwrap();
                let key = (name.clone(), if def.scope == LockScope::Worker { Some(*w) } else { None });
                let u = usage.entry(key).or_default();
                match access { LockAccess::Counting => u.0 += 1, LockAccess::Exclusive => u.1 += 1 }
                u.2 |= is_new;
            }
        }
        for ((name, _), (c, e, touched)) in &usage {
            if !touched { continue; }
            let def = locks.iter().find(|l| &l.name == name).unwrap();
            prop_assert!(*e <= 1 && (*e == 0 || *c == 0), "exclusive lock {} shared: {} {}", name, c, e);
            prop_assert!(*c <= def.max_count, "lock {} over count", name);
        }
    }
}

proptest! {
    /// Fairness: builders of equal priority sharing workers each get a build before any of
    /// them gets a second one, however many requests each has queued and however old.
    #[test]
    fn round_robin_among_equal_builders(
        queued in prop::collection::vec((1usize..8, 0i64..1000), 2..8),
        slots in 1u32..10,
    ) {
        let mut pending = Vec::new();
        let mut next_id = 0;
        let mut builders = Vec::new();
        for (b, (count, age)) in queued.iter().enumerate() {
            let mut d = builder(b as i64, &(0..10).collect::<Vec<_>>());
            d.collapse_requests = false;
            builders.push(d);
            for k in 0..*count {
                pending.push(req(next_id, b as i64, 0, T0 + age + k as i64, None));
                next_id += 1;
            }
        }
        // Ten workers with one slot each, of which `slots` are connected.
        let workers: Vec<WorkerState> = (0..10).map(|w| { let mut s = worker(w, 1); s.connected = (w as u32) < slots; s }).collect();
        let snap = Snapshot { pending, builders, workers, ..Default::default() };
        let out = distribute(&snap, T0 + 5000);
        prop_assert_eq!(out.len(), (slots as usize).min(queued.iter().map(|(c, _)| (*c).min(10)).sum()));
        let mut per: HashMap<BuilderId, usize> = HashMap::new();
        for (i, a) in out.iter().enumerate() {
            let c = per.entry(a.builder).or_default();
            *c += 1;
            // When a builder gets its k-th build, every builder with ≥ k requests already had k-1.
            let k = *c;
            for (b, (count, _)) in queued.iter().enumerate() {
                let had = out[..i].iter().filter(|x| x.builder == BuilderId(b as i64)).count();
                if *count >= k - 1 && BuilderId(b as i64) != a.builder {
                    prop_assert!(had >= k - 1, "builder {} got build {} before builder {} had {}", a.builder, k, b, k - 1);
                }
            }
        }
    }
}

#[test]
fn next_availability_change_for_wakeups() {
    let nightly = Downtime {
        days: vec![],
        start: NaiveTime::from_hms_opt(22, 0, 0).unwrap(),
        end: NaiveTime::from_hms_opt(8, 0, 0).unwrap(),
        tz: chrono_tz::UTC,
    };
    let at = |d, h, m| {
        chrono::Utc
            .with_ymd_and_hms(2027, 3, d, h, m, 0)
            .unwrap()
            .timestamp()
    };
    assert_eq!(nightly.next_boundary(at(10, 12, 0)), Some(at(10, 22, 0)));
    assert_eq!(nightly.next_boundary(at(10, 23, 0)), Some(at(11, 8, 0)));
    assert_eq!(nightly.next_boundary(at(11, 8, 0)), Some(at(11, 22, 0)));
    // A Berlin window ending at 02:30 on the spring-forward night ends at 03:00 CEST (01:00 UTC).
    let berlin = Downtime {
        days: vec![],
        start: NaiveTime::from_hms_opt(1, 0, 0).unwrap(),
        end: NaiveTime::from_hms_opt(2, 30, 0).unwrap(),
        tz: chrono_tz::Europe::Berlin,
    };
    let b = chrono_tz::Europe::Berlin
        .with_ymd_and_hms(2027, 3, 28, 1, 10, 0)
        .unwrap()
        .timestamp();
    assert!(berlin.contains(b));
    assert_eq!(berlin.next_boundary(b), Some(at(28, 1, 0)));
    assert!(!berlin.contains(at(28, 1, 0)));
    let mut w = worker(1, 1);
    assert_eq!(
        next_availability_change(std::slice::from_ref(&w), at(10, 12, 0)),
        None
    );
    w.downtime = vec![nightly];
    assert_eq!(
        next_availability_change(&[w, worker(2, 1)], at(10, 12, 0)),
        Some(at(10, 22, 0))
    );
}

proptest! {
    /// Priorities: with shared workers and no locks, nothing left waiting ranks above anything
    /// that started (builder priority first, then request priority).
    #[test]
    fn nothing_waiting_outranks_what_started(
        reqs in prop::collection::vec((0i64..5, 0i64..4, 0i64..100), 1..40),
        builder_prio in prop::collection::vec(0i64..3, 5),
        nworkers in 1i64..6,
    ) {
        let ws: Vec<i64> = (0..nworkers).collect();
        let builders: Vec<BuilderDef> = (0..5).map(|b| { let mut d = builder(b, &ws); d.priority = builder_prio[b as usize]; d.collapse_requests = false; d }).collect();
        let pending: Vec<PendingRequest> = reqs.iter().enumerate().map(|(i, (b, p, t))| req(i as i64, *b, *p, T0 + t, None)).collect();
        let snap = Snapshot { pending: pending.clone(), builders, workers: ws.iter().map(|w| worker(*w, 1)).collect(), ..Default::default() };
        let out = distribute(&snap, T0 + 1000);
        prop_assert_eq!(out.len(), (nworkers as usize).min(pending.len()).min(
            (0..5).map(|b| pending.iter().filter(|p| p.builder.0 == b).count().min(nworkers as usize)).sum()));
        let rank = |id: BuildRequestId| { let p = pending.iter().find(|p| p.id == id).unwrap(); (builder_prio[p.builder.0 as usize], p.priority) };
        let started: Vec<BuildRequestId> = out.iter().map(|a| a.request).collect();
        if let Some(min_started) = started.iter().map(|id| rank(*id)).min() {
            for p in pending.iter().filter(|p| !started.contains(&p.id)) {
                // A builder cannot run twice on one worker: its extra requests may wait while
                // every worker already runs it.
                let runs = out.iter().filter(|a| a.builder == p.builder).count();
                if runs < nworkers as usize {
                    prop_assert!(rank(p.id) <= min_started, "{:?} waits but outranks {:?}", p, min_started);
                }
            }
        }
    }
}

#[test]
fn cpython_scale_decides_within_invariants() {
    // 1,036 builders on 63 workers (up to 58 builders on one worker), 5,000 pending requests.
    let workers: Vec<WorkerState> = (0..63)
        .map(|w| worker(w, if w % 10 == 0 { 2 } else { 1 }))
        .collect();
    let builders: Vec<BuilderDef> = (0..1036)
        .map(|b| builder(b, &[b % 63, (b * 7 + 3) % 63]))
        .collect();
    let pending: Vec<PendingRequest> = (0..5000)
        .map(|i| {
            req(
                i,
                (i * 31) % 1036,
                0,
                T0 + i,
                Some(if i % 3 == 0 { "main" } else { "3.14" }),
            )
        })
        .collect();
    let running: Vec<RunningBuild> = (0..20)
        .map(|w| RunningBuild {
            builder: BuilderId(w),
            worker: WorkerId(w),
        })
        .collect();
    let snap = Snapshot {
        pending,
        builders,
        workers,
        running,
        ..Default::default()
    };
    let out = distribute(&snap, T0 + 10_000);
    // 63 workers, 7 of them with 2 slots, 20 slots taken: 50 free.
    assert_eq!(out.len(), 70 - 20);
    let mut seen = std::collections::HashSet::new();
    for a in &out {
        assert!(
            seen.insert(a.builder),
            "each builder gets at most one build while others wait"
        );
    }
}

#[test]
fn quarantine_after_exception_backs_off() {
    use kiln_model::Results;
    let mut q = Quarantine::default();
    q.build_finished(Results::Exception, T0);
    assert_eq!(q.active_until(T0), Some(T0 + 10));
    q.build_finished(Results::Exception, T0 + 5); // already in quarantine: unchanged
    assert_eq!(q.active_until(T0 + 5), Some(T0 + 10));
    q.build_finished(Results::Exception, T0 + 10);
    assert_eq!(
        q.active_until(T0 + 10),
        Some(T0 + 30),
        "20 s the second time"
    );
    q.build_finished(Results::Retry, T0 + 40);
    q.build_finished(Results::Exception, T0 + 40);
    assert_eq!(
        q.active_until(T0 + 40),
        Some(T0 + 80),
        "RETRY does not reset"
    );
    q.build_finished(Results::Failure, T0 + 100);
    q.build_finished(Results::Exception, T0 + 100);
    assert_eq!(
        q.active_until(T0 + 100),
        Some(T0 + 110),
        "a normal result resets"
    );
    for i in 0..20 {
        q.build_finished(Results::Exception, T0 + 10_000 * (i + 1));
    }
    assert!(q.next_timeout <= Quarantine::MAX);

    // A quarantined worker takes nothing until the time is up; others still do.
    let mut w1 = worker(1, 1);
    w1.quarantined_until = Some(T0 + 10);
    let snap = Snapshot {
        pending: vec![req(1, 1, 0, T0, None)],
        builders: vec![builder(1, &[1, 2])],
        workers: vec![w1.clone()],
        ..Default::default()
    };
    assert!(distribute(&snap, T0 + 9).is_empty());
    assert_eq!(started(&distribute(&snap, T0 + 10)), vec![(1, 1)]);
    let snap2 = Snapshot {
        workers: vec![w1, worker(2, 1)],
        ..snap
    };
    assert_eq!(started(&distribute(&snap2, T0 + 9)), vec![(1, 2)]);
    assert_eq!(
        next_availability_change(&snap2.workers, T0 + 5),
        Some(T0 + 10)
    );
    assert_eq!(next_availability_change(&snap2.workers, T0 + 10), None);
}
