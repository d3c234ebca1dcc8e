//! What changed in the farm: one typed [`Event`] for every change, published by whoever made
//! the change (the queue, a build, the worker endpoint, reconfig) and read by the web layer,
//! the reporters and the other masters.
//!
//! An event says *what* changed and carries the ids to read the rest from the database; it is
//! not a copy of the rows. It travels as one JSON object tagged by `"event"`:
//! `{"event":"build_request_claimed","request":7,"builder":2,"worker":3}` (ids and results
//! are plain numbers).

use serde::{Deserialize, Serialize};

use crate::{
    BuildId, BuildRequestId, BuilderId, BuildsetId, ChangeId, LogId, Results, StepId, WorkerId,
};

/// A change the farm made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A buildset was stored with its build requests (one per builder), in the order of
    /// `requests`.
    BuildsetNew {
        buildset: BuildsetId,
        requests: Vec<BuildRequestId>,
    },
    /// A build request was added to the queue (follows its [`Event::BuildsetNew`]).
    BuildRequestNew {
        request: BuildRequestId,
        buildset: BuildsetId,
        builder: BuilderId,
    },
    /// A master claimed a request: its build is about to start on `worker`.
    BuildRequestClaimed {
        request: BuildRequestId,
        builder: BuilderId,
        worker: WorkerId,
    },
    /// A queued (unclaimed) request was cancelled; it is complete with CANCELLED.
    BuildRequestCancelled { request: BuildRequestId },
    /// A claimed request went back to the queue (its build ended RETRY, or its master died).
    BuildRequestRequeued { request: BuildRequestId },
    /// A request is complete: its build finished, or it was collapsed into a newer request
    /// (`results` SKIPPED).
    BuildRequestCompleted {
        request: BuildRequestId,
        results: Results,
    },
    /// A build started (its row exists) with Buildbot's per-builder `number`.
    BuildStarted {
        build: BuildId,
        builder: BuilderId,
        number: i64,
        request: BuildRequestId,
        worker: WorkerId,
    },
    /// A build finished with `results`.
    BuildFinished {
        build: BuildId,
        builder: BuilderId,
        results: Results,
    },
    /// A step of a build started; `number` is its position in the build (from 0).
    StepStarted {
        build: BuildId,
        step: StepId,
        number: i64,
        name: String,
    },
    /// A step finished with `results`.
    StepFinished {
        build: BuildId,
        step: StepId,
        results: Results,
    },
    /// Lines were appended to a step's log: it now holds `num_lines` lines; `complete` once
    /// the log is closed.
    LogAppended {
        step: StepId,
        log: LogId,
        num_lines: i64,
        complete: bool,
    },
    /// A worker connected (attached) to this master.
    WorkerConnected { worker: WorkerId, name: String },
    /// A worker's connection ended.
    WorkerDisconnected { worker: WorkerId, name: String },
    /// A worker was paused (`paused: true`: it takes no new builds) or unpaused.
    WorkerPaused {
        worker: WorkerId,
        name: String,
        paused: bool,
    },
    /// A change (commit, push, `sendchange`) was stored.
    ChangeNew { change: ChangeId },
    /// The master's configuration was reloaded; `summary` says what changed.
    ConfigReloaded { summary: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn travels_as_tagged_json_with_plain_numbers() {
        let e = Event::BuildRequestClaimed {
            request: BuildRequestId(7),
            builder: BuilderId(2),
            worker: WorkerId(3),
        };
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(
            json,
            r#"{"event":"build_request_claimed","request":7,"builder":2,"worker":3}"#
        );
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), e);

        let e = Event::BuildFinished {
            build: BuildId(11),
            builder: BuilderId(2),
            results: Results::Cancelled,
        };
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"event": "build_finished", "build": 11, "builder": 2, "results": 6})
        );
    }

    #[test]
    fn every_variant_round_trips() {
        let all = vec![
            Event::BuildsetNew {
                buildset: BuildsetId(1),
                requests: vec![BuildRequestId(2), BuildRequestId(3)],
            },
            Event::BuildRequestNew {
                request: BuildRequestId(2),
                buildset: BuildsetId(1),
                builder: BuilderId(4),
            },
            Event::BuildRequestClaimed {
                request: BuildRequestId(2),
                builder: BuilderId(4),
                worker: WorkerId(5),
            },
            Event::BuildRequestCancelled {
                request: BuildRequestId(3),
            },
            Event::BuildRequestRequeued {
                request: BuildRequestId(2),
            },
            Event::BuildRequestCompleted {
                request: BuildRequestId(2),
                results: Results::Skipped,
            },
            Event::BuildStarted {
                build: BuildId(6),
                builder: BuilderId(4),
                number: 17,
                request: BuildRequestId(2),
                worker: WorkerId(5),
            },
            Event::BuildFinished {
                build: BuildId(6),
                builder: BuilderId(4),
                results: Results::Warnings,
            },
            Event::StepStarted {
                build: BuildId(6),
                step: StepId(8),
                number: 0,
                name: "git".into(),
            },
            Event::StepFinished {
                build: BuildId(6),
                step: StepId(8),
                results: Results::Success,
            },
            Event::LogAppended {
                step: StepId(8),
                log: LogId(9),
                num_lines: 120,
                complete: true,
            },
            Event::WorkerConnected {
                worker: WorkerId(5),
                name: "w1".into(),
            },
            Event::WorkerDisconnected {
                worker: WorkerId(5),
                name: "w1".into(),
            },
            Event::WorkerPaused {
                worker: WorkerId(5),
                name: "w1".into(),
                paused: true,
            },
            Event::ChangeNew {
                change: ChangeId(10),
            },
            Event::ConfigReloaded {
                summary: "2 builders added".into(),
            },
        ];
        let mut tags = std::collections::BTreeSet::new();
        for e in all {
            let v = serde_json::to_value(&e).unwrap();
            let tag = v["event"].as_str().unwrap().to_string();
            assert!(
                tag.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{tag}"
            );
            assert!(tags.insert(tag), "tags are distinct");
            assert_eq!(serde_json::from_value::<Event>(v).unwrap(), e);
        }
        assert_eq!(tags.len(), 16);
        assert!(tags.contains("build_request_cancelled") && tags.contains("change_new"));
    }
}
