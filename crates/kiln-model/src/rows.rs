//! The records the farm stores and shows, with Buildbot's field names.

use serde::{Deserialize, Serialize};

use crate::{
    BuildId, BuildRequestId, BuilderId, BuildsetId, ChangeId, Epoch, LogId, MasterId, Properties,
    Results, SourceStampId, StepId, WorkerId,
};

/// A change to the code: a commit seen by a poller or a webhook, or a `sendchange`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub changeid: ChangeId,
    pub author: String,
    pub committer: Option<String>,
    pub comments: String,
    pub branch: Option<String>,
    pub revision: Option<String>,
    pub when_timestamp: Epoch,
    pub category: Option<String>,
    pub repository: String,
    pub codebase: String,
    pub project: String,
    pub files: Vec<String>,
    pub properties: Properties,
    pub sourcestampid: SourceStampId,
}

/// What to build: a branch and revision of one codebase. Schedulers ask for them, the store
/// keeps them, steps check them out and render them (`%(src::branch)s`). An empty
/// repository, project or codebase is unset, as in Buildbot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SourceStamp {
    pub codebase: String,
    pub repository: String,
    pub branch: Option<String>,
    pub revision: Option<String>,
    pub project: String,
}

/// A source stamp as stored: its id and when it was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredSourceStamp {
    pub ssid: SourceStampId,
    pub created_at: Epoch,
    #[serde(flatten)]
    pub stamp: SourceStamp,
}

/// Build requests made together by one scheduler decision or force.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Buildset {
    pub bsid: BuildsetId,
    pub external_idstring: Option<String>,
    pub reason: String,
    pub submitted_at: Epoch,
    pub complete: bool,
    pub complete_at: Option<Epoch>,
    pub results: Option<Results>,
    pub sourcestamps: Vec<SourceStampId>,
    pub parent_buildid: Option<BuildId>,
}

/// A request for one builder to build a buildset; the queue is made of these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildRequest {
    pub buildrequestid: BuildRequestId,
    pub buildsetid: BuildsetId,
    pub builderid: BuilderId,
    pub priority: i64,
    pub submitted_at: Epoch,
    pub claimed: bool,
    pub claimed_at: Option<Epoch>,
    pub claimed_by_masterid: Option<MasterId>,
    pub complete: bool,
    pub complete_at: Option<Epoch>,
    pub results: Option<Results>,
    pub waited_for: bool,
}

/// One run of a builder on a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Build {
    pub buildid: BuildId,
    /// Per-builder sequence number (what the UI shows as "build #N").
    pub number: i64,
    pub builderid: BuilderId,
    pub buildrequestid: BuildRequestId,
    pub workerid: WorkerId,
    pub masterid: MasterId,
    pub started_at: Epoch,
    pub complete: bool,
    pub complete_at: Option<Epoch>,
    pub state_string: String,
    pub results: Option<Results>,
    pub locks_duration_s: i64,
}

/// One step of a build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub stepid: StepId,
    pub buildid: BuildId,
    pub number: i64,
    pub name: String,
    pub started_at: Option<Epoch>,
    pub complete: bool,
    pub complete_at: Option<Epoch>,
    pub state_string: String,
    pub results: Option<Results>,
    pub hidden: bool,
    pub urls: Vec<StepUrl>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepUrl {
    pub name: String,
    pub url: String,
}

/// The kind of a log: Buildbot's one-letter `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogType {
    /// `s`: stdio (header/stdout/stderr channels).
    #[serde(rename = "s")]
    Stdio,
    /// `t`: plain text.
    #[serde(rename = "t")]
    Text,
    /// `h`: HTML.
    #[serde(rename = "h")]
    Html,
    /// `d`: deleted by the retention janitor.
    #[serde(rename = "d")]
    Deleted,
}

/// A log of a step; its text lives in compressed chunks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Log {
    pub logid: LogId,
    pub stepid: StepId,
    pub name: String,
    pub slug: String,
    #[serde(rename = "type")]
    pub log_type: LogType,
    pub complete: bool,
    pub num_lines: i64,
}

/// A worker as the master knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Worker {
    pub workerid: WorkerId,
    pub name: String,
    /// What the worker reported (admin, host, version, OS, doctor results …).
    pub workerinfo: serde_json::Map<String, serde_json::Value>,
    pub paused: bool,
    pub graceful: bool,
}
