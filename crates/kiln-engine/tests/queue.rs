//! The whole path with a fake clock and the in-memory store: changes → scheduler → queue →
//! distributor → build → results.

use std::collections::BTreeMap;

use kiln_engine::build::{BuildMachine, BuildOutcome, StepDef};
use kiln_engine::distributor::{BuilderDef, RunningBuild, Snapshot, WorkerState};
use kiln_engine::queue::*;
use kiln_engine::results::{StepEnd, StepFlags};
use kiln_engine::schedulers::*;
use kiln_engine::{Clock, FakeClock};
use kiln_model::{
    BuildRequestId, BuilderId, BuildsetId, Change, ChangeId, Properties, Results, SourceStampId,
    WorkerId,
};

const T0: i64 = 1_800_000_000;

fn change(id: i64) -> Change {
    Change {
        changeid: ChangeId(id),
        author: "a".into(),
        committer: None,
        comments: String::new(),
        branch: Some("main".into()),
        revision: Some(format!("rev{id}")),
        when_timestamp: T0,
        category: None,
        repository: "https://github.com/python/cpython".into(),
        codebase: String::new(),
        project: "cpython".into(),
        files: vec!["Lib/os.py".into()],
        properties: Properties::default(),
        sourcestampid: SourceStampId(id),
    }
}

fn world(running: Vec<RunningBuild>) -> Snapshot {
    Snapshot {
        pending: vec![],
        builders: vec![BuilderDef {
            id: BuilderId(1),
            workers: vec![WorkerId(1)],
            priority: 0,
            collapse_requests: true,
            locks: vec![],
        }],
        workers: vec![WorkerState {
            id: WorkerId(1),
            connected: true,
            paused: false,
            max_builds: 1,
            downtime: vec![],
            quarantined_until: None,
        }],
        running,
        locks: vec![],
    }
}

fn builders() -> BTreeMap<String, (BuilderId, i64)> {
    BTreeMap::from([("AMD64 Ubuntu".to_string(), (BuilderId(1), 0))])
}

fn scheduler() -> ChangeScheduler {
    ChangeScheduler::new(ChangeSchedulerConfig {
        name: "main".into(),
        builders: vec!["AMD64 Ubuntu".into()],
        filter: ChangeFilter::default(),
        importance: FileImportance::default(),
        tree_stable_timer: None,
        mode: BranchMode::Single,
        properties: Properties::default(),
        reason: "change".into(),
        builder_filter_property: None,
    })
}

fn steps() -> Vec<StepDef> {
    vec![StepDef {
        name: "test".into(),
        flags: StepFlags::default(),
    }]
}

#[test]
fn busy_builder_collapses_ten_requests_into_one_build_at_the_newest_revision() {
    let clock = FakeClock::new(T0);
    let store = MemStore::default();
    let bus = RecordingBus::default();
    let mut s = scheduler();
    // The first change builds at once.
    for bs in s.on_change(&change(1), clock.now()) {
        block_on_ready(submit(&store, &bus, &bs, &builders(), clock.now())).unwrap();
    }
    assert_eq!(
        bus.take(),
        vec![
            Event::BuildsetNew {
                buildset: BuildsetId(1),
                requests: vec![BuildRequestId(1)],
            },
            Event::BuildRequestNew {
                request: BuildRequestId(1),
                buildset: BuildsetId(1),
                builder: BuilderId(1),
            },
        ]
    );
    let first = block_on_ready(dispatch(&store, &bus, world(vec![]), clock.now())).unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(
        bus.take(),
        vec![Event::BuildRequestClaimed {
            request: BuildRequestId(1),
            builder: BuilderId(1),
            worker: WorkerId(1),
        }]
    );
    // Ten more changes while it runs: the worker is busy, nothing starts.
    for i in 2..=11 {
        clock.advance(60);
        for bs in s.on_change(&change(i), clock.now()) {
            block_on_ready(submit(&store, &bus, &bs, &builders(), clock.now())).unwrap();
        }
        let running = vec![RunningBuild {
            builder: BuilderId(1),
            worker: WorkerId(1),
        }];
        assert!(
            block_on_ready(dispatch(&store, &bus, world(running), clock.now()))
                .unwrap()
                .is_empty()
        );
    }
    block_on_ready(build_finished(
        &store,
        &bus,
        first[0].request,
        &BuildOutcome {
            results: Results::Success,
            requeue: false,
            state_string: String::new(),
        },
        clock.now(),
    ))
    .unwrap();
    // Ten buildsets of one request each, nothing claimed while the worker was busy.
    let events = bus.take();
    assert_eq!(events.len(), 10 * 2 + 1);
    assert!(
        events[..20]
            .iter()
            .all(|e| matches!(e, Event::BuildsetNew { .. } | Event::BuildRequestNew { .. }))
    );
    assert_eq!(
        events[20],
        Event::BuildRequestCompleted {
            request: first[0].request,
            results: Results::Success,
        }
    );
    // Exactly one follow-up build, the newest request; the other nine are SKIPPED.
    let next = block_on_ready(dispatch(&store, &bus, world(vec![]), clock.now())).unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].request, BuildRequestId(11));
    assert_eq!(next[0].collapsed.len(), 9);
    for id in 2..=10 {
        assert_eq!(
            store.request(BuildRequestId(id)).unwrap().results,
            Some(Results::Skipped)
        );
    }
    assert!(block_on_ready(store.pending_requests()).unwrap().is_empty());
    // The claim, then the nine collapsed requests completed SKIPPED.
    let mut expected = vec![Event::BuildRequestClaimed {
        request: BuildRequestId(11),
        builder: BuilderId(1),
        worker: WorkerId(1),
    }];
    expected.extend(
        next[0]
            .collapsed
            .iter()
            .map(|c| Event::BuildRequestCompleted {
                request: *c,
                results: Results::Skipped,
            }),
    );
    assert_eq!(bus.take(), expected);
}

#[test]
fn worker_lost_requeues_the_request_and_it_runs_again() {
    let clock = FakeClock::new(T0);
    let store = MemStore::default();
    let bus = RecordingBus::default();
    let bs = scheduler().on_change(&change(1), clock.now()).remove(0);
    let (_, ids) = block_on_ready(submit(&store, &bus, &bs, &builders(), clock.now())).unwrap();
    let a = block_on_ready(dispatch(&store, &bus, world(vec![]), clock.now()))
        .unwrap()
        .remove(0);
    assert_eq!(a.request, ids[0]);

    // The build starts; the worker disappears during the step.
    let mut build = BuildMachine::new(steps());
    let kiln_engine::build::Action::StartStep(i) = build.next_action() else {
        panic!()
    };
    build.worker_lost();
    build.step_finished(i, StepEnd::ConnectionLost);
    let kiln_engine::build::Action::Finished(outcome) = build.next_action() else {
        panic!()
    };
    assert_eq!((outcome.results, outcome.requeue), (Results::Retry, true));
    block_on_ready(build_finished(
        &store,
        &bus,
        a.request,
        &outcome,
        clock.now(),
    ))
    .unwrap();
    assert!(
        bus.0
            .lock()
            .unwrap()
            .contains(&Event::BuildRequestRequeued { request: a.request })
    );

    // The request is pending again and starts when the worker is back.
    clock.advance(120);
    let again = block_on_ready(dispatch(&store, &bus, world(vec![]), clock.now())).unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].request, a.request);
}

#[test]
fn cancel_a_queued_request_but_not_a_running_one() {
    let store = MemStore::default();
    let bus = RecordingBus::default();
    let mut bs = scheduler().on_change(&change(1), T0).remove(0);
    let (_, running) = block_on_ready(submit(&store, &bus, &bs, &builders(), T0)).unwrap();
    block_on_ready(dispatch(&store, &bus, world(vec![]), T0)).unwrap();
    bs.sources[0].branch = Some("3.13".into());
    let (_, queued) = block_on_ready(submit(&store, &bus, &bs, &builders(), T0 + 1)).unwrap();
    bus.take();
    assert!(block_on_ready(cancel_request(&store, &bus, queued[0], T0 + 2)).unwrap());
    assert_eq!(
        bus.take(),
        vec![Event::BuildRequestCancelled { request: queued[0] }]
    );
    assert_eq!(
        store.request(queued[0]).unwrap().results,
        Some(Results::Cancelled)
    );
    assert!(
        !block_on_ready(cancel_request(&store, &bus, running[0], T0 + 2)).unwrap(),
        "claimed: stop the build instead"
    );
    assert!(
        !block_on_ready(cancel_request(&store, &bus, queued[0], T0 + 3)).unwrap(),
        "already cancelled"
    );
    assert!(block_on_ready(cancel_request(&store, &bus, BuildRequestId(99), T0)).is_err());
    assert!(
        bus.take().is_empty(),
        "nothing cancelled, nothing published"
    );
}

#[test]
fn a_lost_claim_race_is_not_returned() {
    let store = MemStore::default();
    let bus = RecordingBus::default();
    let bs = scheduler().on_change(&change(1), T0).remove(0);
    block_on_ready(submit(&store, &bus, &bs, &builders(), T0)).unwrap();
    // Another master decided on the same snapshot and claimed first.
    let mut snap = world(vec![]);
    snap.pending = block_on_ready(store.pending_requests()).unwrap();
    let decided = kiln_engine::distributor::distribute(&snap, T0);
    assert!(block_on_ready(store.claim(&decided[0], T0)).unwrap());
    assert!(!block_on_ready(store.claim(&decided[0], T0)).unwrap());
}
