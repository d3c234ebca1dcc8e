//! Worker commands: what runs between a `start_command` and its `complete`.
//!
//! [`start`] validates a command's arguments (a bad one is answered with an
//! exception and never completes), then runs it on its own task. Every command
//! reports through its [`CommandCtx`]: status items go into the [`Output`]
//! batcher, transfers call the master through the [`MasterLink`], and exactly
//! one `complete` is sent at the end, after the last `update`.

pub mod fs;
pub mod lines;
pub mod output;
pub mod process;
pub mod shell;
pub mod transfer;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use kiln_proto::args::{
    CommandName, CpdirArgs, DownloadFileArgs, PathArgs, PathsArgs, ShellArgs, UploadDirectoryArgs,
    UploadFileArgs, WorkerSettings,
};
use kiln_proto::update::UpdateItem;
use kiln_proto::{Op, args::Args};
use tokio::sync::watch;

use crate::link::MasterLink;
pub use output::Output;
pub use process::ExecPolicy;

/// Everything a running command needs.
pub struct CommandCtx {
    pub command_id: String,
    pub link: MasterLink,
    /// Batches status items into `update`s (64 KiB / 5 s by default).
    pub out: Output,
    /// The settings in force when the command started.
    pub settings: WorkerSettings,
    pub policy: Arc<ExecPolicy>,
    /// The worker's base directory (cwd of `rmdir`/`cpdir` children).
    pub basedir: PathBuf,
    pub interrupt: Interrupt,
    pub started: Instant,
}

impl CommandCtx {
    /// Seconds since the command started, for the `elapsed` item.
    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Queues one status item.
    pub async fn push(&mut self, item: UpdateItem) {
        self.out.push(item).await;
    }

    /// Queues a `header` line (a `\n` is added if missing).
    pub async fn header(&mut self, text: &str) {
        self.push(UpdateItem::Header(lines::whole_lines(text)))
            .await;
    }

    /// Queues a `stderr` line (a `\n` is added if missing).
    pub async fn stderr(&mut self, text: &str) {
        self.push(UpdateItem::Stderr(lines::whole_lines(text)))
            .await;
    }
}

/// Why a command was asked to stop; set once by `interrupt_command` or a lost session.
#[derive(Clone)]
pub struct Interrupt {
    rx: watch::Receiver<Option<String>>,
}

/// The sending side of an [`Interrupt`], kept by the session's command table.
#[derive(Clone)]
pub struct InterruptHandle {
    tx: Arc<watch::Sender<Option<String>>>,
}

impl Interrupt {
    pub fn new() -> (InterruptHandle, Interrupt) {
        let (tx, rx) = watch::channel(None);
        (InterruptHandle { tx: Arc::new(tx) }, Interrupt { rx })
    }

    /// The reason, if an interrupt has been asked for.
    pub fn reason(&self) -> Option<String> {
        self.rx.borrow().clone()
    }

    /// Resolves (with the reason) once an interrupt is asked for.
    pub async fn wait(&mut self) -> String {
        loop {
            if let Some(why) = self.rx.borrow_and_update().clone() {
                return why;
            }
            if self.rx.changed().await.is_err() {
                // The handle is gone: nobody can interrupt any more.
                std::future::pending::<()>().await;
            }
        }
    }
}

impl InterruptHandle {
    /// Asks the command to stop; later calls keep the first reason.
    pub fn interrupt(&self, why: &str) {
        self.tx.send_if_modified(|r| {
            if r.is_none() {
                *r = Some(why.to_owned());
                true
            } else {
                false
            }
        });
    }
}

/// A command whose arguments were accepted, ready to run.
pub enum Prepared {
    Shell(ShellArgs),
    UploadFile(UploadFileArgs),
    UploadDirectory(UploadDirectoryArgs),
    DownloadFile(DownloadFileArgs),
    Mkdir(PathsArgs),
    Rmdir(PathsArgs),
    Cpdir(CpdirArgs),
    Stat(PathArgs),
    Glob(PathArgs),
    Listdir(PathArgs),
    Rmfile(PathArgs),
}

/// Checks a `start_command`; the error text is the exception response Buildbot gives.
pub fn prepare(command_id: &str, name: &str, args: &Args) -> Result<Prepared, String> {
    let Some(command) = CommandName::parse(name) else {
        return Err(format!(
            "(command {command_id}): unrecognized WorkerCommand '{name}'"
        ));
    };
    let prepared = match command {
        CommandName::Shell => ShellArgs::parse(args).map(Prepared::Shell),
        CommandName::UploadFile => UploadFileArgs::parse(args).map(Prepared::UploadFile),
        CommandName::UploadDirectory => {
            UploadDirectoryArgs::parse(args).map(Prepared::UploadDirectory)
        }
        CommandName::DownloadFile => DownloadFileArgs::parse(args).map(Prepared::DownloadFile),
        CommandName::Mkdir => PathsArgs::parse("MakeDirectory", args).map(Prepared::Mkdir),
        CommandName::Rmdir => PathsArgs::parse("RemoveDirectory", args).map(Prepared::Rmdir),
        CommandName::Cpdir => CpdirArgs::parse(args).map(Prepared::Cpdir),
        CommandName::Stat => PathArgs::parse("StatFile", args).map(Prepared::Stat),
        CommandName::Glob => PathArgs::parse("GlobPath", args).map(Prepared::Glob),
        CommandName::Listdir => PathArgs::parse("ListDir", args).map(Prepared::Listdir),
        CommandName::Rmfile => PathArgs::parse("RemoveFile", args).map(Prepared::Rmfile),
    };
    prepared.map_err(|e| e.to_string())
}

/// Runs a prepared command to its end: flushes the last output and sends the one
/// `complete`. `Err` from a command becomes `complete.args` (the step turns EXCEPTION).
pub async fn run(mut ctx: CommandCtx, command: Prepared) {
    let result = match command {
        Prepared::Shell(a) => shell::run(&mut ctx, a).await,
        Prepared::Rmdir(a) => shell::rmdir(&mut ctx, a).await,
        Prepared::Cpdir(a) => shell::cpdir(&mut ctx, a).await,
        Prepared::UploadFile(a) => transfer::upload_file(&mut ctx, a).await,
        Prepared::UploadDirectory(a) => transfer::upload_directory(&mut ctx, a).await,
        Prepared::DownloadFile(a) => transfer::download_file(&mut ctx, a).await,
        Prepared::Mkdir(a) => fs::mkdir(&mut ctx, a).await,
        Prepared::Stat(a) => fs::stat(&mut ctx, a).await,
        Prepared::Glob(a) => fs::glob(&mut ctx, a).await,
        Prepared::Listdir(a) => fs::listdir(&mut ctx, a).await,
        Prepared::Rmfile(a) => fs::rmfile(&mut ctx, a).await,
    };
    ctx.out.flush().await;
    let failure = result.err().map(|e| format!("[Failure instance: {e}]"));
    // A lost session makes this fail; there is nobody left to tell.
    let _ = ctx
        .link
        .send(Op::Complete {
            command_id: ctx.command_id.clone(),
            failure,
        })
        .await;
}
