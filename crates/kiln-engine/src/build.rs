//! A build's state machine: which step runs next, how results merge, and what stop,
//! worker loss and internal errors do. The master drives it: it asks [`BuildMachine::next_action`]
//! what to do, runs the step on the worker, and reports how it ended.
//!
//! Rules (Buildbot's `process/build.py`):
//! * Steps run in order. After a step terminates the build (a FAILURE with `halt_on_failure`,
//!   or EXCEPTION, RETRY, CANCELLED), or after a stop, only `always_run` steps run.
//! * `do_step_if` false → the step is SKIPPED (it is shown, and does not change the result).
//! * Stop → the build is CANCELLED; the running step is interrupted (its result is CANCELLED,
//!   or EXCEPTION if it ended otherwise); `always_run` steps still run; the result stays
//!   CANCELLED whatever they return.
//! * Worker lost → the running step is RETRY, no further step runs (not even `always_run`:
//!   there is no worker), the build is RETRY and its request goes back to the queue.
//!   Divergence: in Buildbot a worker lost after a stop turns CANCELLED into RETRY and the
//!   stopped build is retried; here a stopped build stays CANCELLED and is not requeued.
//! * An internal error outside a step ends the build at once with EXCEPTION.

use kiln_model::Results;

use crate::results::{StepEnd, StepFlags, combine, should_run, step_result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepDef {
    pub name: String,
    pub flags: StepFlags,
}

/// What the master should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start step `index` (evaluate its `do_step_if` first; report [`StepEnd::Skipped`] if false).
    StartStep(usize),
    /// Wait: a step is running.
    Wait,
    /// The build is over.
    Finished(BuildOutcome),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOutcome {
    pub results: Results,
    /// The build request goes back to the queue (RETRY).
    pub requeue: bool,
    /// Buildbot's final state string ("build successful", "failed", "cancelled (reason)" …).
    pub state_string: String,
}

#[derive(Debug, Clone)]
pub struct BuildMachine {
    steps: Vec<StepDef>,
    next_index: usize,
    current: Option<usize>,
    results: Results,
    terminated: bool,
    stopped: bool,
    stop_reason: Option<String>,
    /// The step that was running when the build was stopped: only it is "interrupted"
    /// (`always_run` steps started after the stop run normally, as in Buildbot).
    interrupted: Option<usize>,
    worker_lost: bool,
    step_results: Vec<Option<Results>>,
    outcome: Option<BuildOutcome>,
}

impl BuildMachine {
    pub fn new(steps: Vec<StepDef>) -> Self {
        let n = steps.len();
        BuildMachine {
            steps,
            next_index: 0,
            current: None,
            results: Results::Success,
            terminated: false,
            stopped: false,
            stop_reason: None,
            interrupted: None,
            worker_lost: false,
            step_results: vec![None; n],
            outcome: None,
        }
    }

    /// Steps added while the build runs (Buildbot's `addStepsAfterLastStep`).
    pub fn add_steps(&mut self, steps: Vec<StepDef>) {
        self.step_results.extend(steps.iter().map(|_| None));
        self.steps.extend(steps);
    }

    pub fn steps(&self) -> &[StepDef] {
        &self.steps
    }

    /// Each step's result; `None` for steps that did not run (or are running).
    pub fn step_results(&self) -> &[Option<Results>] {
        &self.step_results
    }

    /// The build's result so far.
    pub fn results(&self) -> Results {
        self.results
    }

    pub fn current_step(&self) -> Option<usize> {
        self.current
    }

    pub fn next_action(&mut self) -> Action {
        if let Some(o) = &self.outcome {
            return Action::Finished(o.clone());
        }
        if self.current.is_some() {
            return Action::Wait;
        }
        while !self.worker_lost && self.next_index < self.steps.len() {
            let i = self.next_index;
            self.next_index += 1;
            if should_run(&self.steps[i].flags, self.terminated, self.stopped) {
                self.current = Some(i);
                return Action::StartStep(i);
            }
        }
        Action::Finished(self.finish())
    }

    /// The running step ended. Returns the step's final result.
    pub fn step_finished(&mut self, index: usize, end: StepEnd) -> Results {
        assert_eq!(
            self.current,
            Some(index),
            "step {index} is not the running step"
        );
        self.current = None;
        let r = step_result(end, self.interrupted == Some(index));
        self.step_results[index] = Some(r);
        let (build, terminate) = combine(&self.steps[index].flags, r, self.results);
        self.results = build;
        self.terminated |= terminate;
        if self.stopped {
            self.results = Results::Cancelled;
        } else if self.worker_lost {
            self.results = Results::Retry;
        }
        r
    }

    /// A user stops the build. Returns the step to interrupt, if one runs.
    pub fn stop(&mut self, reason: &str) -> Option<usize> {
        if self.outcome.is_some() || self.stopped {
            return None;
        }
        self.stopped = true;
        self.interrupted = self.current;
        self.stop_reason = Some(reason.to_string());
        self.results = Results::Cancelled;
        self.current
    }

    /// The worker went away. Returns the step to interrupt, if one runs (it ends with
    /// [`StepEnd::ConnectionLost`]).
    pub fn worker_lost(&mut self) -> Option<usize> {
        if self.outcome.is_some() || self.worker_lost {
            return None;
        }
        self.worker_lost = true;
        if !self.stopped {
            self.results = Results::Retry;
        }
        self.current
    }

    /// An internal error outside any step: the build ends now with EXCEPTION.
    pub fn internal_error(&mut self) -> BuildOutcome {
        if let Some(o) = &self.outcome {
            return o.clone();
        }
        self.current = None;
        self.results = self.results.worst(Results::Exception);
        let o = BuildOutcome {
            results: self.results,
            requeue: self.results == Results::Retry,
            state_string: "build exception".into(),
        };
        self.outcome = Some(o.clone());
        o
    }

    fn finish(&mut self) -> BuildOutcome {
        let text = match self.results {
            Results::Failure => "failed",
            Results::Warnings => "warnings",
            Results::Exception => "exception",
            Results::Retry => "retry",
            Results::Cancelled => "cancelled",
            Results::Success | Results::Skipped => "build successful",
        };
        let mut state_string = text.to_string();
        if let Some(r) = &self.stop_reason {
            state_string.push_str(&format!(" ({r})"));
        }
        let o = BuildOutcome {
            results: self.results,
            requeue: self.results == Results::Retry,
            state_string,
        };
        self.outcome = Some(o.clone());
        o
    }
}

/// Runs steps for [`run_build`]: a fake worker in tests, a synchronous runner in tools.
pub trait StepRunner {
    /// Evaluates the step's `do_step_if` (true by default).
    fn do_step_if(&mut self, _index: usize, _step: &StepDef) -> bool {
        true
    }
    /// Runs the step and says how it ended. It may call [`BuildMachine::stop`] or
    /// [`BuildMachine::worker_lost`] on `build` to simulate what happens while it runs.
    fn run(&mut self, index: usize, step: &StepDef, build: &mut BuildMachine) -> StepEnd;
}

/// Drives a build to its end with `runner`.
pub fn run_build(build: &mut BuildMachine, runner: &mut impl StepRunner) -> BuildOutcome {
    loop {
        match build.next_action() {
            Action::StartStep(i) => {
                let step = build.steps[i].clone();
                let end = if runner.do_step_if(i, &step) {
                    runner.run(i, &step, build)
                } else {
                    StepEnd::Skipped
                };
                build.step_finished(i, end);
            }
            Action::Wait => unreachable!("run_build reports every step it starts"),
            Action::Finished(o) => return o,
        }
    }
}
