//! A fake master for command tests: runs one command over an in-memory link and
//! plays the master's side of it (answers transfer requests, records everything).
#![allow(dead_code)] // each test file uses a different part of it

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use kiln_proto::args::{Args, WorkerSettings};
use kiln_proto::update::UpdateItem;
use kiln_proto::{Op, Response, Value};
use kiln_worker::commands::{self, CommandCtx, ExecPolicy, Interrupt, InterruptHandle, Output};
use kiln_worker::link::{MasterLink, Outgoing};
use tokio::sync::mpsc;

pub const COMMAND_ID: &str = "7";

/// How the fake master answers.
#[derive(Default)]
pub struct Script {
    /// Answers to `update_read_file`, in order; nil once they run out.
    pub download: VecDeque<Value>,
    /// Answer `update_read_file` with this exception.
    pub read_error: Option<String>,
    /// Answer `update_upload_file_utime` with this exception (what Buildbot 4.3 always does).
    pub utime_error: Option<String>,
    /// Answer `update_upload_directory_unpack` with this exception.
    pub unpack_error: Option<String>,
    /// Answer the write chunk with this index (0-based) with an exception.
    pub write_error_at: Option<usize>,
    /// Interrupt the command when this many chunks (or reads) have arrived, before answering.
    pub interrupt_after: Option<usize>,
    /// Drop the connection when this many chunks (or reads) have arrived, without answering.
    pub close_after: Option<usize>,
}

/// Everything the command sent, in order.
#[derive(Debug, Default)]
pub struct Recorded {
    pub ops: Vec<Op>,
    /// The upload bytes, chunks concatenated.
    pub uploaded: Vec<u8>,
    /// The size of each upload chunk.
    pub chunks: Vec<usize>,
    /// The `length` of each `update_read_file`.
    pub read_lengths: Vec<u64>,
}

impl Recorded {
    /// All status items of all `update`s, in order.
    pub fn items(&self) -> Vec<UpdateItem> {
        self.ops
            .iter()
            .filter_map(|op| match op {
                Op::Update { items, .. } => Some(items.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// The keys of all status items, in order.
    pub fn keys(&self) -> Vec<String> {
        self.items().iter().map(|i| i.key().to_owned()).collect()
    }

    /// The `complete`'s failure: `None` if no `complete` was sent, `Some(None)` for success.
    pub fn complete(&self) -> Option<Option<String>> {
        let completes: Vec<_> = self
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::Complete { failure, .. } => Some(failure.clone()),
                _ => None,
            })
            .collect();
        assert!(
            completes.len() <= 1,
            "more than one complete: {completes:?}"
        );
        if let Some(pos) = self
            .ops
            .iter()
            .position(|op| matches!(op, Op::Complete { .. }))
        {
            assert_eq!(pos, self.ops.len() - 1, "complete is the last message");
        }
        completes.into_iter().next()
    }

    pub fn rc(&self) -> Option<i64> {
        self.items().iter().find_map(|i| match i {
            UpdateItem::Rc(rc) => Some(*rc),
            _ => None,
        })
    }

    /// The text of all items of one line stream (`header`, `stderr`, `stdout`).
    pub fn text(&self, key: &str) -> String {
        self.items()
            .iter()
            .filter(|i| i.key() == key)
            .map(|i| match i {
                UpdateItem::Header(l) | UpdateItem::Stderr(l) | UpdateItem::Stdout(l) => {
                    l.text.clone()
                }
                other => panic!("{other:?} is not a line item"),
            })
            .collect()
    }

    /// The names of the transfer requests (everything but `update`/`complete`), in order.
    pub fn transfer_ops(&self) -> Vec<String> {
        self.ops
            .iter()
            .filter(|op| !matches!(op, Op::Update { .. } | Op::Complete { .. }))
            .map(|op| op.name().to_owned())
            .collect()
    }

    pub fn files(&self) -> Option<Vec<String>> {
        self.items().iter().find_map(|i| match i {
            UpdateItem::Files(f) => Some(f.clone()),
            _ => None,
        })
    }

    pub fn stat(&self) -> Option<Vec<i64>> {
        self.items().iter().find_map(|i| match i {
            UpdateItem::Stat(s) => Some(s.clone()),
            _ => None,
        })
    }

    /// Asserts the usual ending: `rc` then `elapsed`, each exactly once.
    pub fn assert_rc_then_elapsed(&self, rc: i64) {
        let items = self.items();
        let rcs: Vec<_> = items
            .iter()
            .filter(|i| matches!(i, UpdateItem::Rc(_)))
            .collect();
        assert_eq!(
            rcs,
            vec![&UpdateItem::Rc(rc)],
            "exactly one rc {rc}: {items:?}"
        );
        let elapsed: Vec<_> = items
            .iter()
            .filter(|i| matches!(i, UpdateItem::Elapsed(_)))
            .collect();
        assert_eq!(elapsed.len(), 1, "exactly one elapsed: {items:?}");
        let rc_at = items
            .iter()
            .position(|i| matches!(i, UpdateItem::Rc(_)))
            .unwrap();
        let elapsed_at = items
            .iter()
            .position(|i| matches!(i, UpdateItem::Elapsed(_)))
            .unwrap();
        assert!(rc_at < elapsed_at, "rc comes before elapsed: {items:?}");
        assert_eq!(
            elapsed_at,
            items.len() - 1,
            "elapsed is the last item: {items:?}"
        );
    }
}

/// A context for one command, as the session builds it, and the link's far end.
pub fn make_ctx() -> (CommandCtx, mpsc::Receiver<Outgoing>, InterruptHandle) {
    let (link, rx) = MasterLink::channel(16);
    let (handle, interrupt) = Interrupt::new();
    let settings = WorkerSettings::default();
    let out = Output::new(
        COMMAND_ID.into(),
        link.clone(),
        settings.buffer_size,
        settings.buffer_timeout,
    );
    let ctx = CommandCtx {
        command_id: COMMAND_ID.into(),
        link,
        out,
        settings,
        policy: Arc::new(ExecPolicy::default()),
        basedir: std::env::temp_dir(),
        interrupt,
        started: Instant::now(),
    };
    (ctx, rx, handle)
}

/// Runs a command the way a `start_command` does and plays the master until the
/// command is done (its link dropped).
pub async fn run_command(name: &str, args: Args, script: Script) -> Recorded {
    let (ctx, rx, handle) = make_ctx();
    let prepared = match commands::prepare(COMMAND_ID, name, &args) {
        Ok(p) => p,
        Err(e) => panic!("{name} refused its args: {e}"),
    };
    let task = tokio::spawn(commands::run(ctx, prepared));
    let recorded = play_master(rx, handle, script).await;
    tokio::time::timeout(std::time::Duration::from_secs(30), task)
        .await
        .expect("command ends")
        .expect("command task");
    recorded
}

/// Answers the command's requests per `script` until the link closes (or the script drops it).
pub async fn play_master(
    mut rx: mpsc::Receiver<Outgoing>,
    handle: InterruptHandle,
    mut script: Script,
) -> Recorded {
    let mut rec = Recorded::default();
    let mut transfers = 0usize;
    loop {
        let item = tokio::time::timeout(std::time::Duration::from_secs(30), rx.recv())
            .await
            .expect("the command keeps talking or ends");
        let Some(item) = item else { break };
        let Outgoing::Request { op, reply } = item else {
            panic!("a command never answers requests")
        };
        let answer = match &op {
            Op::Update { command_id, .. } | Op::Complete { command_id, .. } => {
                assert_eq!(command_id, COMMAND_ID);
                assert!(reply.is_none(), "{} is fire-and-forget", op.name());
                None
            }
            Op::UploadFileWrite { command_id, data }
            | Op::UploadDirectoryWrite { command_id, data } => {
                assert_eq!(command_id, COMMAND_ID);
                assert!(!data.is_empty(), "no empty chunks");
                let index = rec.chunks.len();
                rec.chunks.push(data.len());
                rec.uploaded.extend_from_slice(data);
                transfers += 1;
                if script.write_error_at == Some(index) {
                    Some(Response::error(0, "disk full on the master"))
                } else {
                    Some(Response::ok(0))
                }
            }
            Op::ReadFile { command_id, length } => {
                assert_eq!(command_id, COMMAND_ID);
                rec.read_lengths.push(*length);
                transfers += 1;
                match &script.read_error {
                    Some(e) => Some(Response::error(0, e.clone())),
                    None => Some(Response::with_result(
                        0,
                        script.download.pop_front().unwrap_or(Value::Nil),
                    )),
                }
            }
            Op::UploadFileUtime { .. } => Some(match &script.utime_error {
                Some(e) => Response::error(0, e.clone()),
                None => Response::ok(0),
            }),
            Op::UploadDirectoryUnpack { .. } => Some(match &script.unpack_error {
                Some(e) => Response::error(0, e.clone()),
                None => Response::ok(0),
            }),
            Op::UploadFileClose { .. } | Op::ReadFileClose { .. } => Some(Response::ok(0)),
            other => panic!("a worker does not send {other:?}"),
        };
        let is_transfer = matches!(
            op,
            Op::UploadFileWrite { .. } | Op::UploadDirectoryWrite { .. } | Op::ReadFile { .. }
        );
        rec.ops.push(op);
        if is_transfer && script.close_after == Some(transfers) {
            break; // dropping `rx` (and `reply`) is the lost connection
        }
        if is_transfer && script.interrupt_after == Some(transfers) {
            handle.interrupt("stop it");
        }
        if let Some(answer) = answer {
            let reply = reply.expect("transfer requests wait for their answer");
            let _ = reply.send(answer);
        }
    }
    rec
}

/// `Args` from pairs.
pub fn args<const N: usize>(pairs: [(&str, Value); N]) -> Args {
    Args::from_pairs(pairs)
}

pub fn s(p: &Path) -> String {
    p.to_str().expect("test paths are UTF-8").to_owned()
}

/// Deterministic, incompressible-enough test bytes.
pub fn bytes(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// Runs `python3 -c <script> <args…>` and returns its stdout; panics with its stderr on failure.
pub fn python(script: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 runs (it is needed for these tests)");
    assert!(
        out.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}
