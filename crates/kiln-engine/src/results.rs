//! How step results combine into a build result, with Buildbot's rules
//! (`buildbot/process/results.py` `computeResultAndTermination`, `process/build.py`
//! `getNextStep`/`stepDone`, `process/buildstep.py` `startStep`, `process/remotecommand.py` `results`).

use std::collections::BTreeMap;

use kiln_model::Results;

/// The result flags of a step, with Buildbot's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepFlags {
    /// A FAILURE of this step stops the build (later steps run only if `always_run`).
    pub halt_on_failure: bool,
    /// A FAILURE of this step makes the build FAILURE (default true).
    pub flunk_on_failure: bool,
    /// A FAILURE of this step makes the build WARNINGS (when `flunk_on_failure` is false).
    pub warn_on_failure: bool,
    /// WARNINGS of this step make the build FAILURE.
    pub flunk_on_warnings: bool,
    /// WARNINGS of this step make the build WARNINGS (otherwise they count as SUCCESS).
    pub warn_on_warnings: bool,
    /// Run even after the build was halted or stopped.
    pub always_run: bool,
}

impl Default for StepFlags {
    fn default() -> Self {
        StepFlags {
            halt_on_failure: false,
            flunk_on_failure: true,
            warn_on_failure: false,
            flunk_on_warnings: false,
            warn_on_warnings: false,
            always_run: false,
        }
    }
}

/// Merges one step's `result` into the build's result so far.
/// Returns the new build result and whether the build must stop running steps
/// (except `always_run` ones). This is Buildbot's `computeResultAndTermination`:
///
/// * FAILURE counts as FAILURE if `flunk_on_failure`, else WARNINGS if `warn_on_failure`,
///   else SUCCESS; it terminates the build if `halt_on_failure`.
/// * WARNINGS count as FAILURE if `flunk_on_warnings`, else WARNINGS if `warn_on_warnings`,
///   else SUCCESS. (Buildbot's default `warn_on_warnings` is false, so a WARNINGS step alone
///   leaves a build SUCCESS.)
/// * EXCEPTION, RETRY and CANCELLED count as themselves and always terminate.
/// * SUCCESS and SKIPPED count as themselves (SKIPPED is the mildest result, so it never
///   changes a build's result).
pub fn combine(flags: &StepFlags, result: Results, build_so_far: Results) -> (Results, bool) {
    let mut terminate = false;
    let counted = match result {
        Results::Failure => {
            if flags.halt_on_failure {
                terminate = true;
            }
            if flags.flunk_on_failure {
                Results::Failure
            } else if flags.warn_on_failure {
                Results::Warnings
            } else {
                Results::Success
            }
        }
        Results::Warnings => {
            if flags.flunk_on_warnings {
                Results::Failure
            } else if flags.warn_on_warnings {
                Results::Warnings
            } else {
                Results::Success
            }
        }
        Results::Exception | Results::Retry | Results::Cancelled => {
            terminate = true;
            result
        }
        Results::Success | Results::Skipped => result,
    };
    (build_so_far.worst(counted), terminate)
}

/// Whether a step runs, given the build's state (`Build.getNextStep`): every step runs
/// until the build is halted or stopped; after that only `always_run` steps do.
/// (A worker that is gone runs nothing: the caller stops asking.)
pub fn should_run(flags: &StepFlags, terminated: bool, stopped: bool) -> bool {
    !(terminated || stopped) || flags.always_run
}

/// Maps a command's exit code to a result (Buildbot's `decodeRC`, default `{0: SUCCESS}`).
/// Codes not in the map are FAILURE; an interrupted command is CANCELLED.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeRc(pub BTreeMap<i32, Results>);

impl Default for DecodeRc {
    fn default() -> Self {
        DecodeRc(BTreeMap::from([(0, Results::Success)]))
    }
}

impl DecodeRc {
    pub fn decode(&self, rc: Option<i32>, interrupted: bool) -> Results {
        if interrupted {
            return Results::Cancelled;
        }
        rc.and_then(|rc| self.0.get(&rc).copied())
            .unwrap_or(Results::Failure)
    }
}

/// How a step's run ended, before the `stopped` rule is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepEnd {
    /// The step ran and produced this result (e.g. from [`DecodeRc::decode`]).
    Finished(Results),
    /// `do_step_if` said no: SKIPPED.
    Skipped,
    /// The step was cancelled (stop while waiting for locks, or interrupted): CANCELLED.
    Cancelled,
    /// The worker connection was lost: RETRY.
    ConnectionLost,
    /// The step raised an internal error: EXCEPTION.
    Exception,
}

/// A step's final result (`BuildStep.startStep`): a stopped (interrupted) step that did not
/// end in RETRY or CANCELLED is EXCEPTION, whatever its command returned.
pub fn step_result(end: StepEnd, stopped: bool) -> Results {
    let r = match end {
        StepEnd::Finished(r) => r,
        StepEnd::Skipped => Results::Skipped,
        StepEnd::Cancelled => Results::Cancelled,
        StepEnd::ConnectionLost => Results::Retry,
        StepEnd::Exception => Results::Exception,
    };
    if stopped && r != Results::Retry && r != Results::Cancelled {
        Results::Exception
    } else {
        r
    }
}

/// A warning-counting step's result (`WarningCountingShellCommand.evaluateCommand`):
/// more than `max_warn_count` warnings is FAILURE, any warnings at least WARNINGS.
pub fn with_warnings(result: Results, warn_count: u64, max_warn_count: Option<u64>) -> Results {
    match max_warn_count {
        Some(max) if warn_count > max => result.worst(Results::Failure),
        _ if warn_count > 0 => result.worst(Results::Warnings),
        _ => result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Results::*;

    fn flags(f: impl FnOnce(&mut StepFlags)) -> StepFlags {
        let mut s = StepFlags::default();
        f(&mut s);
        s
    }

    #[test]
    fn failure_flags() {
        let d = StepFlags::default();
        assert_eq!(combine(&d, Failure, Success), (Failure, false));
        let halt = flags(|f| f.halt_on_failure = true);
        assert_eq!(combine(&halt, Failure, Success), (Failure, true));
        let warn = flags(|f| {
            f.flunk_on_failure = false;
            f.warn_on_failure = true
        });
        assert_eq!(combine(&warn, Failure, Success), (Warnings, false));
        let ignore = flags(|f| f.flunk_on_failure = false);
        assert_eq!(combine(&ignore, Failure, Success), (Success, false));
        // flunk wins over warn, as in Buildbot (it is checked last).
        let both = flags(|f| f.warn_on_failure = true);
        assert_eq!(combine(&both, Failure, Success), (Failure, false));
        // halt terminates even when the failure is not counted.
        let halt_ignored = flags(|f| {
            f.flunk_on_failure = false;
            f.halt_on_failure = true
        });
        assert_eq!(combine(&halt_ignored, Failure, Success), (Success, true));
    }

    #[test]
    fn warnings_flags() {
        assert_eq!(
            combine(&StepFlags::default(), Warnings, Success),
            (Success, false)
        );
        assert_eq!(
            combine(&flags(|f| f.warn_on_warnings = true), Warnings, Success),
            (Warnings, false)
        );
        assert_eq!(
            combine(&flags(|f| f.flunk_on_warnings = true), Warnings, Success),
            (Failure, false)
        );
        assert_eq!(
            combine(&flags(|f| f.flunk_on_warnings = true), Warnings, Exception),
            (Exception, false)
        );
    }

    #[test]
    fn severe_results_terminate_and_skipped_is_neutral() {
        for r in [Exception, Retry, Cancelled] {
            assert_eq!(combine(&StepFlags::default(), r, Warnings), (r, true));
        }
        assert_eq!(
            combine(&StepFlags::default(), Skipped, Success),
            (Success, false)
        );
        assert_eq!(
            combine(&StepFlags::default(), Skipped, Warnings),
            (Warnings, false)
        );
        assert_eq!(
            combine(&StepFlags::default(), Success, Failure),
            (Failure, false)
        );
    }

    #[test]
    fn always_run_runs_after_halt() {
        let d = StepFlags::default();
        let a = flags(|f| f.always_run = true);
        assert!(should_run(&d, false, false));
        assert!(!should_run(&d, true, false));
        assert!(!should_run(&d, false, true));
        assert!(should_run(&a, true, true));
    }

    #[test]
    fn decode_rc() {
        let d = DecodeRc::default();
        assert_eq!(d.decode(Some(0), false), Success);
        assert_eq!(d.decode(Some(1), false), Failure);
        assert_eq!(d.decode(None, false), Failure);
        assert_eq!(d.decode(Some(0), true), Cancelled);
        let custom = DecodeRc(BTreeMap::from([(0, Success), (2, Warnings), (77, Skipped)]));
        assert_eq!(custom.decode(Some(2), false), Warnings);
        assert_eq!(custom.decode(Some(77), false), Skipped);
        assert_eq!(custom.decode(Some(3), false), Failure);
    }

    #[test]
    fn stopped_step_is_exception_unless_retry_or_cancelled() {
        assert_eq!(step_result(StepEnd::Finished(Success), true), Exception);
        assert_eq!(step_result(StepEnd::Finished(Failure), false), Failure);
        assert_eq!(step_result(StepEnd::ConnectionLost, true), Retry);
        assert_eq!(step_result(StepEnd::Cancelled, true), Cancelled);
        assert_eq!(step_result(StepEnd::Skipped, false), Skipped);
        assert_eq!(step_result(StepEnd::Exception, false), Exception);
    }

    #[test]
    fn warning_counts() {
        assert_eq!(with_warnings(Success, 0, None), Success);
        assert_eq!(with_warnings(Success, 3, None), Warnings);
        assert_eq!(with_warnings(Success, 3, Some(2)), Failure);
        assert_eq!(with_warnings(Success, 2, Some(2)), Warnings);
    }
}

/// A buildset's result from its requests' results (Buildbot's `maybeBuildsetComplete`):
/// the worst of them, starting from SUCCESS, so a buildset whose requests were all collapsed
/// (SKIPPED) is SUCCESS.
pub fn buildset_result(requests: impl IntoIterator<Item = Results>) -> Results {
    requests.into_iter().fold(Results::Success, Results::worst)
}

#[cfg(test)]
mod buildset_tests {
    use super::*;

    #[test]
    fn buildset_result_is_the_worst() {
        use Results::*;
        assert_eq!(buildset_result([]), Success);
        assert_eq!(buildset_result([Skipped, Skipped]), Success);
        assert_eq!(buildset_result([Success, Warnings, Skipped]), Warnings);
        assert_eq!(buildset_result([Failure, Retry, Warnings]), Retry);
    }
}
