//! The connection to the master. PLACEHOLDER: the real loop (connect, attach,
//! run commands, reconnect) replaces this module; only its signature is fixed.
//!
//! Contract with the lifecycle code (`run`/`start`):
//! - `serve` is called inside a tokio runtime built after any daemonizing, with
//!   the config already validated and `password` resolved from `password_file`;
//! - it logs `message from master: attached` (tracing `info!`) each time a master
//!   attaches — `kiln-worker start` waits for that line in the log;
//! - it returns when `stop` changes: [`StopRequest::Now`] (SIGTERM/SIGINT) means
//!   interrupt running commands and return; [`StopRequest::Graceful`] (SIGUSR1,
//!   `kiln-worker stop --graceful`) means take no new builds, let running ones
//!   finish, then return. `Now` may follow `Graceful`.

use tokio::sync::watch;

use crate::config::WorkerConfig;

/// What the lifecycle code asks of a running [`serve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopRequest {
    Running,
    /// Stop at once (running commands are interrupted).
    Now,
    /// Stop once the running builds have finished.
    Graceful,
}

/// Serves builds for the master until asked to stop.
pub async fn serve(
    config: WorkerConfig,
    mut stop: watch::Receiver<StopRequest>,
) -> anyhow::Result<()> {
    tracing::warn!(master = %config.master_address(), "placeholder connection: not connecting to the master");
    let request = *stop.wait_for(|r| *r != StopRequest::Running).await?;
    tracing::info!(?request, "stop requested; no builds are running");
    Ok(())
}
