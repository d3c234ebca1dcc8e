//! Build steps: turns one configured [`kiln_config::Step`] into remote commands on a worker
//! ([`crate::remote::Remote`]), streams their output into logs ([`StepLogs`]), and decides the
//! step's end ([`StepEnd`]). Path joining follows the msgpack master (spec §8.2): every path
//! sent is absolute, `builder_dir/workdir/...`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kiln_config::{Renderable, Secrets, SourceAttrs, Step};
use kiln_engine::results::StepEnd;
use kiln_model::{LogType, Properties};
use tokio::sync::watch;

use crate::remote::{BoxFuture, Remote};

/// A log of the running step, as the store numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LogHandle(pub i64);

/// Where a step's logs, status text and URLs go (the build runner writes them to the store
/// and publishes events). Stdio logs (`LogType::Stdio`) get Buildbot's line format: each line
/// starts with its channel, `h` (header), `o` (stdout) or `e` (stderr).
pub trait StepLogs: Send {
    fn add_log(&mut self, name: &str, log_type: LogType) -> BoxFuture<'_, anyhow::Result<LogHandle>>;
    /// Whole lines, each ending in `\n` (already channel-prefixed for stdio logs). Secrets
    /// are redacted by the implementation, not by the caller.
    fn append(&mut self, log: LogHandle, text: &str) -> BoxFuture<'_, anyhow::Result<()>>;
    fn finish(&mut self, log: LogHandle) -> BoxFuture<'_, anyhow::Result<()>>;
    fn set_state_string(&mut self, text: &str) -> BoxFuture<'_, anyhow::Result<()>>;
    fn add_url(&mut self, name: &str, url: &str) -> BoxFuture<'_, anyhow::Result<()>>;
}

/// Starts builds for a `trigger` step through the named triggerable schedulers. Returns the
/// worst result of the triggered builds when `wait` is set (SUCCESS otherwise).
pub trait Triggerer: Send + Sync {
    fn trigger(
        &self,
        scheduler_names: &[String],
        properties: Properties,
        sources: BTreeMap<String, SourceAttrs>,
        wait: bool,
    ) -> BoxFuture<'_, anyhow::Result<kiln_model::Results>>;
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
    pub sources: &'a BTreeMap<String, SourceAttrs>,
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

/// Runs one step to its end. `do_step_if` has already been evaluated by the caller.
/// A lost connection ends with [`StepEnd::ConnectionLost`]; a bad argument or a failed
/// render (missing secret) with [`StepEnd::Exception`] and the reason in a log.
pub async fn run_step(step: &Step, ctx: &mut StepCtx<'_>) -> StepEnd {
    let _ = (step, ctx);
    todo!("steps helper")
}
