//! Build steps: turns one configured [`kiln_config::Step`] into remote commands on a worker
//! ([`kiln_remote::Remote`]), streams their output into logs ([`StepLogs`]), and decides the
//! step's end ([`StepEnd`]). Path joining follows the msgpack master (spec §8.2): every path
//! sent is absolute, `builder_dir/workdir/...`.
//!
//! * `command`: rendering, the step's logs, and [`run_step`]'s one way of running a remote
//!   command (output → `stdio` as `h`/`o`/`e` lines, `rc` → "program finished with exit code",
//!   stop → interrupt → CANCELLED, `complete` with failure text → EXCEPTION, lost → RETRY);
//! * `shell`: `shell`/`configure`/`compile`/`test` (decode_rc, warning_pattern) and
//!   `set_property_from_command`;
//! * `git`: Buildbot 4.3's Git step, command for command (listdir, clone/fetch/checkout,
//!   clean, rmdir, cpdir, submodules), ending with `got_revision`;
//! * `transfer`: uploads and downloads with the master ends ([`FileSink`], [`DirectorySink`],
//!   [`FileSource`], [`StringSource`]) that an endpoint hands the worker's transfer ops to;
//! * `simple`: `mkdir`, `rmdir`, `rmfile`, `trigger`.
//!
//! Differences from Buildbot worth knowing: `warning_pattern` is searched anywhere in a line
//! (Buildbot anchors it at the start); a failed `directory_upload` leaves an already unpacked
//! destination in place (Buildbot deletes the whole tree).

mod command;
mod git;
mod shell;
mod simple;
mod transfer;

use std::collections::BTreeMap;
use std::path::PathBuf;

use kiln_config::{Renderable, Secrets, Step, StepKind};
use kiln_engine::results::StepEnd;
use kiln_model::{LogType, Properties, Results, SourceStamp};
use tokio::sync::watch;

use kiln_remote::{BoxFuture, Remote};

pub use transfer::{DirectorySink, FileSink, FileSource, StringSource};

use command::{Halt, LogSet};

/// A step's log, status text or URL could not be stored; the step ends EXCEPTION.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("the database failed")]
    Store(#[from] kiln_store::StoreError),
    /// The task writing a batch in the background died.
    #[error("the log writer task ended abnormally")]
    Writer(#[from] tokio::task::JoinError),
}

/// Why a `trigger` step could not start or follow its builds.
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    #[error("no triggerable scheduler named {0:?}")]
    NoScheduler(String),
    #[error("the database failed")]
    Store(#[from] kiln_store::StoreError),
    #[error("submitting the triggered builds failed")]
    Submit(#[from] crate::ControlError),
    #[error("buildset {0} vanished while its builds were awaited")]
    Vanished(kiln_model::BuildsetId),
    #[error("the master is shutting down")]
    ShuttingDown,
}

/// A log of the running step, as the store numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LogHandle(pub i64);

/// Where a step's logs, status text and URLs go (the build runner writes them to the store
/// and publishes events). Stdio logs (`LogType::Stdio`) get Buildbot's line format: each line
/// starts with its channel, `h` (header), `o` (stdout) or `e` (stderr).
pub trait StepLogs: Send {
    fn add_log(
        &mut self,
        name: &str,
        log_type: LogType,
    ) -> BoxFuture<'_, Result<LogHandle, LogError>>;
    /// Whole lines, each ending in `\n` (already channel-prefixed for stdio logs). Secrets
    /// are redacted by the implementation, not by the caller. The text is handed over: a
    /// big log's batches are not copied again. An implementation may write in the
    /// background; an error then shows on a later call for the same log.
    fn append(&mut self, log: LogHandle, text: String) -> BoxFuture<'_, Result<(), LogError>>;
    fn finish(&mut self, log: LogHandle) -> BoxFuture<'_, Result<(), LogError>>;
    fn set_state_string(&mut self, text: &str) -> BoxFuture<'_, Result<(), LogError>>;
    fn add_url(&mut self, name: &str, url: &str) -> BoxFuture<'_, Result<(), LogError>>;
}

/// Starts builds for a `trigger` step through the named triggerable schedulers. Returns the
/// worst result of the triggered builds when `wait` is set (SUCCESS otherwise).
pub trait Triggerer: Send + Sync {
    fn trigger(
        &self,
        scheduler_names: &[String],
        properties: Properties,
        sources: BTreeMap<String, SourceStamp>,
        wait: bool,
    ) -> BoxFuture<'_, Result<kiln_model::Results, TriggerError>>;
}

/// Everything a step runs against.
pub struct StepCtx<'a> {
    pub remote: &'a dyn Remote,
    pub builder_name: &'a str,
    /// `B` in spec §8.2: the builder's directory on the worker (basedir joined with builddir).
    pub builder_dir: String,
    /// The build's properties; `set_property_from_command` writes into them.
    pub properties: &'a mut Properties,
    /// Source stamps by codebase (`""` is the default), for `%(src::branch)s`.
    pub sources: &'a BTreeMap<String, SourceStamp>,
    pub secrets: &'a Secrets,
    /// The builder's `env`, merged under each step's own `env`.
    pub builder_env: &'a BTreeMap<String, Renderable>,
    pub logs: &'a mut dyn StepLogs,
    /// The master's base directory: relative `masterdest`/`mastersrc` paths start here.
    pub master_dir: PathBuf,
    /// Becomes `Some(reason)` when the build is stopped: interrupt the running command and
    /// end with [`StepEnd::Cancelled`].
    pub stop: watch::Receiver<Option<String>>,
    pub triggerer: &'a dyn Triggerer,
}

/// A step's state string while it runs: its description, else its name.
pub fn running_text(step: &Step) -> String {
    step.flags
        .description
        .clone()
        .unwrap_or_else(|| step.name.clone())
}

/// Runs one step to its end. `do_step_if` has already been evaluated by the caller.
/// A lost connection ends with [`StepEnd::ConnectionLost`]; a bad argument or a failed
/// render (missing secret) with [`StepEnd::Exception`] and the reason in a log.
pub async fn run_step(step: &Step, ctx: &mut StepCtx<'_>) -> StepEnd {
    let mut logs = LogSet::default();
    let running = running_text(step);
    let done_text = step
        .flags
        .description_done
        .clone()
        .or_else(|| step.flags.description.clone())
        .unwrap_or_else(|| step.name.clone());
    let _ = ctx.logs.set_state_string(&running).await;
    let outcome = match &step.kind {
        StepKind::Shell(a) | StepKind::Configure(a) | StepKind::Compile(a) | StepKind::Test(a) => {
            shell::run_shell(step, a, ctx, &mut logs).await
        }
        StepKind::SetPropertyFromCommand(a) => {
            shell::run_set_property(step, a, ctx, &mut logs).await
        }
        StepKind::Git(a) => git::run_git(step, a, ctx, &mut logs).await,
        StepKind::FileUpload(a) => transfer::run_file_upload(step, a, ctx, &mut logs).await,
        StepKind::DirectoryUpload(a) => {
            transfer::run_directory_upload(step, a, ctx, &mut logs).await
        }
        StepKind::FileDownload(a) => transfer::run_file_download(step, a, ctx, &mut logs).await,
        StepKind::StringDownload(a) => transfer::run_string_download(step, a, ctx, &mut logs).await,
        StepKind::Mkdir(a) => simple::run_mkdir(step, a, ctx, &mut logs).await,
        StepKind::Rmdir(a) => simple::run_rmdir(step, a, ctx, &mut logs).await,
        StepKind::Rmfile(a) => simple::run_rmfile(step, a, ctx, &mut logs).await,
        StepKind::Trigger(a) => simple::run_trigger(step, a, ctx, &mut logs).await,
    };
    let (end, summary) = match outcome {
        Ok(done) => (StepEnd::Finished(done.result), done.summary(&done_text)),
        Err(Halt::Failed) => (
            StepEnd::Finished(Results::Failure),
            format!("{done_text} (failure)"),
        ),
        Err(Halt::Cancelled) => {
            // Buildbot records why in a log named `cancelled`.
            let why = ctx.stop.borrow().clone().unwrap_or_default();
            let _ = logs
                .write(&mut *ctx.logs, "cancelled", LogType::Text, &why)
                .await;
            (StepEnd::Cancelled, format!("{done_text} (cancelled)"))
        }
        Err(Halt::Lost) => (StepEnd::ConnectionLost, format!("{done_text} (retry)")),
        Err(Halt::Exception(text)) => {
            // Buildbot shows a step's exception in a text log named `err.text`.
            if let Ok(log) = logs.named(&mut *ctx.logs, "err.text", LogType::Text).await {
                let mut text = text;
                if !text.ends_with('\n') {
                    text.push('\n');
                }
                let _ = ctx.logs.append(log, text).await;
            }
            (StepEnd::Exception, format!("{done_text} (exception)"))
        }
    };
    let _ = ctx.logs.set_state_string(&summary).await;
    logs.finish_all(&mut *ctx.logs).await;
    end
}
