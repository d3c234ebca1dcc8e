//! The seam between the master's core and its worker endpoints.
//!
//! * [`Remote`]: what a build needs from a connected worker: start a remote command, watch
//!   its updates, interrupt it, and move files both ways. Steps only see this trait, so step
//!   tests can use a scripted fake.
//! * [`Connection`]: a worker connection as the farm sees it (who, from where, still alive?).
//!   The msgpack endpoint (`kiln-endpoint`) implements it, and a Perspective Broker endpoint
//!   can later do the same: the core drives builds without knowing which wire carries them.
//! * [`Workers`]: the registry of connected workers that endpoints fill and the core reads,
//!   with [`WorkerEvent`]s for arrivals and departures; [`Roster`]: who may log in.
//!
//! The command vocabulary ([`Args`], [`UpdateItem`]) is `kiln-proto`'s: it is the same in both
//! of Buildbot's worker protocols, and that crate does no I/O.

mod registry;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use kiln_proto::args::Args;
use kiln_proto::update::UpdateItem;
use tokio::sync::mpsc;

pub use registry::{
    Claim, Holder, PasswordCheck, Reservation, Roster, WorkerEntry, WorkerEvent, Workers,
};

/// One remote command as the msgpack master sends it (`start_command`): the wire name
/// (`shell`, `upload_file`, `download_file`, `mkdir`, `rmdir`, `rmfile`, `stat`, `listdir`,
/// `glob`, `cpdir`) and arguments whose paths are already absolute on the worker
/// (see spec §8.2: all path joining happens on the master).
#[derive(Debug, Clone)]
pub struct CommandSpec {
    /// `builder_name` on the wire; `None` for the endpoint's own housekeeping commands.
    pub builder: Option<String>,
    pub name: String,
    pub args: Args,
}

/// Receives what a worker uploads (`upload_file` chunks, or an `upload_directory` tar stream).
/// Runs on the endpoint's connection task: implementations do plain blocking file I/O on
/// small chunks (≤ 256 KiB), which is what Buildbot's `FileWriter` does too.
pub trait UploadSink: Send {
    fn write(&mut self, data: &[u8]) -> io::Result<()>;
    /// `update_upload_file_utime` (keepstamp).
    fn utime(&mut self, access_time: f64, modified_time: f64) -> io::Result<()>;
    /// `update_upload_file_close`.
    fn close(&mut self) -> io::Result<()>;
    /// `update_upload_directory_unpack`: the tar stream is complete; unpack it.
    fn unpack(&mut self) -> io::Result<()>;
}

/// Feeds a download (`download_file`): the worker asks for `length` bytes at a time.
pub trait DownloadSource: Send {
    /// Up to `length` bytes; empty at end of file.
    fn read(&mut self, length: usize) -> io::Result<Vec<u8>>;
    fn close(&mut self);
}

/// The master-side end of a transfer command.
pub enum Transfer {
    None,
    Upload(Box<dyn UploadSink>),
    Download(Box<dyn DownloadSource>),
}

/// What happens to a running command, in order: any number of `Update`s, then exactly one
/// of `Complete` or `Lost`.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandEvent {
    Update(Vec<UpdateItem>),
    /// `complete`; `failure` is the worker's failure text (the `args` of a failed
    /// `complete`), `None` on a normal end. The rc, if any, came in an earlier update.
    Complete {
        failure: Option<String>,
    },
    /// The connection went away before `complete`.
    Lost,
}

/// Why a command could not be started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteError {
    #[error("the worker is not connected")]
    NotConnected,
    #[error("the worker refused the command: {0}")]
    Refused(String),
}

/// A command that the worker accepted. Updates arrive through a bounded channel, so a slow
/// consumer (log storage) slows the connection down instead of buffering without limit.
pub struct RunningCommand {
    pub command_id: String,
    pub events: mpsc::Receiver<CommandEvent>,
    pub interrupt: Box<dyn Interrupt>,
}

/// Asks the worker to interrupt a running command (`interrupt_command`). Idempotent.
pub trait Interrupt: Send + Sync {
    fn interrupt(&self, why: &str);
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A connected worker, as a build sees it.
pub trait Remote: Send + Sync {
    fn worker_name(&self) -> &str;
    /// The worker's base directory as it reported it (`basedir` in its info).
    fn basedir(&self) -> &str;
    /// True when the worker reported `system == "nt"` (Windows path joining).
    fn is_windows(&self) -> bool;
    /// Command names the worker advertised (`worker_commands`).
    fn has_command(&self, name: &str) -> bool;
    /// Before a build: `print "ping"` must succeed (spec §4.1 step 6).
    fn ping(&self) -> BoxFuture<'_, Result<(), RemoteError>>;
    fn start(
        &self,
        spec: CommandSpec,
        transfer: Transfer,
    ) -> BoxFuture<'_, Result<RunningCommand, RemoteError>>;
}

/// A worker's connection, as the farm sees it: the [`Remote`] a build uses, plus who it is
/// and whether it is still there.
pub trait Connection: Remote {
    /// Tells this connection from an earlier or later one of the same worker.
    fn conn_id(&self) -> u64;
    fn peer(&self) -> SocketAddr;
    /// What the worker reported about itself (`get_worker_info`: admin, host, versions, OS,
    /// its commands) as JSON.
    fn info(&self) -> &serde_json::Map<String, serde_json::Value>;
    /// Whether anything came from the worker within `d`: a connection that just carried a
    /// build's last update needs no ping to prove it is alive before the next build.
    fn heard_within(&self, d: Duration) -> bool;
    /// Has the worker print `message` in its log; an answer proves it alive (a duplicate
    /// login is refused while the attached connection answers, spec §4.3).
    fn print(&self, message: &str) -> BoxFuture<'_, Result<(), RemoteError>>;
    /// Drops the connection at once. Its running commands end [`CommandEvent::Lost`].
    fn disconnect(&self);
    /// Resolves when the connection is gone.
    fn closed(&self) -> BoxFuture<'_, ()>;
}

/// Joins worker paths the way the master does for `system`: an absolute right-hand side
/// wins; `/` on POSIX, `\` on Windows.
pub fn join_worker_path(windows: bool, base: &str, rel: &str) -> String {
    let abs = if windows {
        rel.starts_with('\\') || rel.starts_with('/') || rel.as_bytes().get(1) == Some(&b':')
    } else {
        rel.starts_with('/')
    };
    if abs || base.is_empty() {
        return rel.to_string();
    }
    if rel.is_empty() {
        return base.to_string();
    }
    let sep = if windows { '\\' } else { '/' };
    let rel = if windows {
        rel.replace('/', "\\")
    } else {
        rel.to_string()
    };
    if base.ends_with(sep) {
        format!("{base}{rel}")
    } else {
        format!("{base}{sep}{rel}")
    }
}

#[cfg(test)]
mod tests {
    use super::join_worker_path;

    #[test]
    fn joins_like_the_master_does() {
        assert_eq!(join_worker_path(false, "/w", "b1"), "/w/b1");
        assert_eq!(join_worker_path(false, "/w/", "b1/build"), "/w/b1/build");
        assert_eq!(join_worker_path(false, "/w", "/abs"), "/abs");
        assert_eq!(
            join_worker_path(true, "C:\\w", "b1/build"),
            "C:\\w\\b1\\build"
        );
        assert_eq!(join_worker_path(true, "C:\\w", "D:\\x"), "D:\\x");
    }
}
