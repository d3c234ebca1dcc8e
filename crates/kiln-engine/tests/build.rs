use std::collections::HashMap;

use kiln_engine::build::*;
use kiln_engine::results::{StepEnd, StepFlags};
use kiln_model::Results::{self, *};

fn step(name: &str, f: impl FnOnce(&mut StepFlags)) -> StepDef {
    let mut flags = StepFlags::default();
    f(&mut flags);
    StepDef {
        name: name.into(),
        flags,
    }
}

/// CPython's factory, roughly: git, configure and compile halt on failure; test; clean always runs.
fn cpython_steps() -> Vec<StepDef> {
    vec![
        step("git", |f| f.halt_on_failure = true),
        step("configure", |f| f.halt_on_failure = true),
        step("compile", |f| {
            f.halt_on_failure = true;
            f.warn_on_warnings = true
        }),
        step("pythoninfo", |f| {
            f.flunk_on_failure = false;
            f.warn_on_failure = true
        }),
        step("test", |_| {}),
        step("clean", |f| {
            f.always_run = true;
            f.flunk_on_failure = false;
            f.warn_on_failure = true
        }),
    ]
}

/// A fake worker: each step's scripted end; unnamed steps succeed.
#[derive(Default)]
struct Script {
    ends: HashMap<String, StepEnd>,
    skip: Vec<String>,
    stop_during: Option<String>,
    lose_worker_during: Option<String>,
    ran: Vec<String>,
}

impl StepRunner for Script {
    fn do_step_if(&mut self, _: usize, step: &StepDef) -> bool {
        !self.skip.contains(&step.name)
    }
    fn run(&mut self, i: usize, step: &StepDef, build: &mut BuildMachine) -> StepEnd {
        self.ran.push(step.name.clone());
        if self.stop_during.as_deref() == Some(&step.name) {
            assert_eq!(build.stop("no longer needed"), Some(i));
            return StepEnd::Cancelled; // the interrupted command
        }
        if self.lose_worker_during.as_deref() == Some(&step.name) {
            assert_eq!(build.worker_lost(), Some(i));
            return StepEnd::ConnectionLost;
        }
        self.ends
            .get(&step.name)
            .copied()
            .unwrap_or(StepEnd::Finished(Success))
    }
}

fn run(script: &mut Script) -> (BuildOutcome, BuildMachine) {
    let mut b = BuildMachine::new(cpython_steps());
    let o = run_build(&mut b, script);
    (o, b)
}

fn ends(pairs: &[(&str, Results)]) -> HashMap<String, StepEnd> {
    pairs
        .iter()
        .map(|(n, r)| (n.to_string(), StepEnd::Finished(*r)))
        .collect()
}

#[test]
fn all_green() {
    let mut s = Script::default();
    let (o, b) = run(&mut s);
    assert_eq!(
        o,
        BuildOutcome {
            results: Success,
            requeue: false,
            state_string: "build successful".into()
        }
    );
    assert_eq!(s.ran.len(), 6);
    assert!(b.step_results().iter().all(|r| *r == Some(Success)));
}

#[test]
fn compile_failure_halts_but_clean_runs() {
    let mut s = Script {
        ends: ends(&[("compile", Failure)]),
        ..Default::default()
    };
    let (o, b) = run(&mut s);
    assert_eq!((o.results, o.state_string.as_str()), (Failure, "failed"));
    assert_eq!(s.ran, vec!["git", "configure", "compile", "clean"]);
    assert_eq!(b.step_results()[4], None, "test did not run");
}

#[test]
fn test_failure_does_not_halt() {
    let mut s = Script {
        ends: ends(&[("test", Failure), ("clean", Failure)]),
        ..Default::default()
    };
    let (o, _) = run(&mut s);
    assert_eq!(o.results, Failure);
    assert_eq!(s.ran.len(), 6);
}

#[test]
fn warnings_and_warn_only_failures() {
    // compile warns (warn_on_warnings) → WARNINGS; pythoninfo fails (warn_on_failure) → WARNINGS.
    let mut s = Script {
        ends: ends(&[("compile", Warnings)]),
        ..Default::default()
    };
    assert_eq!(run(&mut s).0.results, Warnings);
    let mut s = Script {
        ends: ends(&[("pythoninfo", Failure)]),
        ..Default::default()
    };
    assert_eq!(run(&mut s).0.results, Warnings);
    // test's WARNINGS with default flags count as SUCCESS.
    let mut s = Script {
        ends: ends(&[("test", Warnings)]),
        ..Default::default()
    };
    assert_eq!(run(&mut s).0.results, Success);
}

#[test]
fn do_step_if_false_is_skipped_and_neutral() {
    let mut s = Script {
        skip: vec!["pythoninfo".into()],
        ..Default::default()
    };
    let (o, b) = run(&mut s);
    assert_eq!(o.results, Success);
    assert_eq!(b.step_results()[3], Some(Skipped));
    assert!(!s.ran.contains(&"pythoninfo".to_string()));
}

#[test]
fn step_exception_terminates_but_always_run_runs() {
    let mut s = Script::default();
    s.ends.insert("test".into(), StepEnd::Exception);
    let (o, _) = run(&mut s);
    assert_eq!(o.results, Exception);
    assert_eq!(s.ran.last().map(String::as_str), Some("clean"));
    assert!(!o.requeue);
}

#[test]
fn stop_cancels_and_runs_always_run_steps() {
    let mut s = Script {
        stop_during: Some("compile".into()),
        ..Default::default()
    };
    let (o, b) = run(&mut s);
    assert_eq!(o.results, Cancelled);
    assert_eq!(o.state_string, "cancelled (no longer needed)");
    assert!(!o.requeue);
    assert_eq!(s.ran, vec!["git", "configure", "compile", "clean"]);
    assert_eq!(b.step_results()[2], Some(Cancelled));
}

#[test]
fn interrupted_step_that_ends_normally_is_exception() {
    let mut b = BuildMachine::new(cpython_steps());
    assert_eq!(b.next_action(), Action::StartStep(0));
    assert_eq!(b.next_action(), Action::Wait);
    assert_eq!(b.stop("x"), Some(0));
    assert_eq!(b.stop("again"), None);
    // The command returned 0 after the interrupt: EXCEPTION, as Buildbot does.
    assert_eq!(b.step_finished(0, StepEnd::Finished(Success)), Exception);
    assert_eq!(b.next_action(), Action::StartStep(5));
    // An always_run step started after the stop was not interrupted: it keeps its result.
    assert_eq!(b.step_finished(5, StepEnd::Finished(Success)), Success);
    match b.next_action() {
        Action::Finished(o) => assert_eq!(o.results, Cancelled),
        a => panic!("{a:?}"),
    }
}

#[test]
fn stop_between_steps() {
    let mut b = BuildMachine::new(cpython_steps());
    assert_eq!(b.next_action(), Action::StartStep(0));
    b.step_finished(0, StepEnd::Finished(Success));
    assert_eq!(b.stop("user"), None);
    assert_eq!(b.next_action(), Action::StartStep(5));
}

#[test]
fn worker_lost_is_retry_and_requeued() {
    let mut s = Script {
        lose_worker_during: Some("test".into()),
        ..Default::default()
    };
    let (o, b) = run(&mut s);
    assert_eq!(
        o,
        BuildOutcome {
            results: Retry,
            requeue: true,
            state_string: "retry".into()
        }
    );
    assert_eq!(
        s.ran,
        vec!["git", "configure", "compile", "pythoninfo", "test"],
        "no always_run step without a worker"
    );
    assert_eq!(b.step_results()[4], Some(Retry));
}

#[test]
fn worker_lost_after_stop_stays_cancelled() {
    let mut b = BuildMachine::new(cpython_steps());
    assert_eq!(b.next_action(), Action::StartStep(0));
    b.stop("user");
    b.worker_lost();
    b.step_finished(0, StepEnd::ConnectionLost);
    match b.next_action() {
        Action::Finished(o) => assert_eq!((o.results, o.requeue), (Cancelled, false)),
        a => panic!("{a:?}"),
    }
}

#[test]
fn internal_error_ends_with_exception() {
    let mut b = BuildMachine::new(cpython_steps());
    assert_eq!(b.next_action(), Action::StartStep(0));
    let o = b.internal_error();
    assert_eq!((o.results, o.requeue), (Exception, false));
    assert_eq!(b.next_action(), Action::Finished(o));
}

#[test]
fn added_steps_run_at_the_end() {
    let mut b = BuildMachine::new(vec![step("a", |_| {})]);
    assert_eq!(b.next_action(), Action::StartStep(0));
    b.add_steps(vec![step("b", |_| {})]);
    b.step_finished(0, StepEnd::Finished(Success));
    assert_eq!(b.next_action(), Action::StartStep(1));
}
