//! One worker connection: a single task that reads the socket, writes outgoing requests,
//! routes the worker's requests to commands, and watches for silence. Everything else
//! (the attach sequence, builds) talks to it through a [`Link`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::extract::ws::{Message as WsMessage, WebSocket};
use futures_util::SinkExt as _;
use kiln_proto::{Limits, Message, Op, Response, Value};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until};

use kiln_remote::{
    BoxFuture, CommandEvent, CommandSpec, Connection, Interrupt, Remote, RemoteError,
    RunningCommand, Transfer,
};

/// Updates buffered per command before the connection stops reading (backpressure).
const COMMAND_EVENTS: usize = 32;

/// Command ids are unique per master process, like Buildbot's counter.
static NEXT_COMMAND_ID: AtomicU64 = AtomicU64::new(0);

/// Requests from the rest of the master to the connection task. Boxed so the channel's
/// slots stay small (the channel pre-allocates a block of them per connection).
pub(crate) enum Out {
    Request(Box<(Op, Option<oneshot::Sender<Response>>)>),
    Start(Box<StartReq>),
    /// Send a Close frame and end (a refused duplicate, an unregistered name).
    Close,
}

pub(crate) struct StartReq {
    op: Op,
    command_id: String,
    cmd: Cmd,
    reply: oneshot::Sender<Response>,
}

struct Cmd {
    events: mpsc::Sender<CommandEvent>,
    transfer: Transfer,
}

/// The state the connection task shares with its handles.
pub(crate) struct Shared {
    out: mpsc::UnboundedSender<Out>,
    abort: Notify,
    closed: watch::Sender<bool>,
    /// When the last frame came in, in milliseconds since `born`.
    last_rx_ms: AtomicU64,
    born: std::time::Instant,
}

/// A handle on a connection's task: send requests, start commands, drop it.
#[derive(Clone)]
pub(crate) struct Link(pub(crate) Arc<Shared>);

impl Link {
    pub(crate) fn new() -> (Link, mpsc::UnboundedReceiver<Out>) {
        let (out, rx) = mpsc::unbounded_channel();
        let (closed, _) = watch::channel(false);
        let shared = Shared {
            out,
            abort: Notify::new(),
            closed,
            last_rx_ms: AtomicU64::new(0),
            born: std::time::Instant::now(),
        };
        (Link(Arc::new(shared)), rx)
    }

    /// Sends a request and waits for its response.
    pub(crate) async fn request(&self, op: Op) -> Result<Response, RemoteError> {
        let (tx, rx) = oneshot::channel();
        self.0
            .out
            .send(Out::Request(Box::new((op, Some(tx)))))
            .map_err(|_| RemoteError::NotConnected)?;
        rx.await.map_err(|_| RemoteError::NotConnected)
    }

    /// Sends a request without waiting for the answer.
    pub(crate) fn notify(&self, op: Op) {
        let _ = self.0.out.send(Out::Request(Box::new((op, None))));
    }

    pub(crate) async fn start(
        &self,
        spec: CommandSpec,
        transfer: Transfer,
    ) -> Result<RunningCommand, RemoteError> {
        let command_id = NEXT_COMMAND_ID.fetch_add(1, Ordering::Relaxed).to_string();
        let (events, rx) = mpsc::channel(COMMAND_EVENTS);
        let (reply, answer) = oneshot::channel();
        let op = Op::StartCommand {
            builder_name: spec.builder.clone(),
            command_id: command_id.clone(),
            command_name: spec.name,
            args: spec.args,
        };
        let req = StartReq {
            op,
            command_id: command_id.clone(),
            cmd: Cmd { events, transfer },
            reply,
        };
        self.0
            .out
            .send(Out::Start(Box::new(req)))
            .map_err(|_| RemoteError::NotConnected)?;
        let resp = answer.await.map_err(|_| RemoteError::NotConnected)?;
        if let Some(err) = resp.error_text() {
            return Err(RemoteError::Refused(err));
        }
        let interrupt = Box::new(LinkInterrupt {
            link: self.clone(),
            command_id: command_id.clone(),
            builder: spec.builder,
            sent: AtomicBool::new(false),
        });
        Ok(RunningCommand {
            command_id,
            events: rx,
            interrupt,
        })
    }

    pub(crate) fn close(&self) {
        let _ = self.0.out.send(Out::Close);
    }

    /// Drops the connection at once (no close handshake, as Buildbot's `loseConnection`).
    pub(crate) fn abort(&self) {
        self.0.abort.notify_one();
    }

    pub(crate) async fn closed(&self) {
        let mut rx = self.0.closed.subscribe();
        until_set(&mut rx).await;
    }
}

struct LinkInterrupt {
    link: Link,
    command_id: String,
    builder: Option<String>,
    sent: AtomicBool,
}

impl Interrupt for LinkInterrupt {
    fn interrupt(&self, why: &str) {
        if !self.sent.swap(true, Ordering::Relaxed) {
            self.link.notify(Op::InterruptCommand {
                builder_name: self.builder.clone(),
                command_id: self.command_id.clone(),
                why: why.to_owned(),
            });
        }
    }
}

/// An attached worker.
pub struct WorkerConn {
    pub(crate) name: String,
    pub(crate) conn_id: u64,
    pub(crate) peer: SocketAddr,
    pub(crate) info: serde_json::Map<String, serde_json::Value>,
    pub(crate) basedir: String,
    pub(crate) windows: bool,
    pub(crate) link: Link,
}

impl std::fmt::Debug for WorkerConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerConn")
            .field("name", &self.name)
            .field("conn_id", &self.conn_id)
            .field("peer", &self.peer)
            .finish()
    }
}

impl Remote for WorkerConn {
    fn worker_name(&self) -> &str {
        &self.name
    }
    fn basedir(&self) -> &str {
        &self.basedir
    }
    fn is_windows(&self) -> bool {
        self.windows
    }
    fn has_command(&self, name: &str) -> bool {
        self.info
            .get("worker_commands")
            .and_then(|c| c.as_object())
            .is_some_and(|c| c.contains_key(name))
    }
    fn ping(&self) -> BoxFuture<'_, Result<(), RemoteError>> {
        self.print("ping")
    }
    fn start(
        &self,
        spec: CommandSpec,
        transfer: Transfer,
    ) -> BoxFuture<'_, Result<RunningCommand, RemoteError>> {
        Box::pin(self.link.start(spec, transfer))
    }
}

impl Connection for WorkerConn {
    fn conn_id(&self) -> u64 {
        self.conn_id
    }
    fn peer(&self) -> SocketAddr {
        self.peer
    }
    /// The `get_worker_info` result as JSON (bytes as lossy text).
    fn info(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.info
    }
    fn heard_within(&self, d: std::time::Duration) -> bool {
        let shared = &self.link.0;
        let last = shared.last_rx_ms.load(Ordering::Relaxed);
        last > 0 && shared.born.elapsed().as_millis() as u64 <= last + d.as_millis() as u64
    }
    fn print(&self, message: &str) -> BoxFuture<'_, Result<(), RemoteError>> {
        let op = Op::Print {
            message: message.to_string(),
        };
        Box::pin(async move {
            let resp = self.link.request(op).await?;
            match resp.error_text() {
                Some(e) => Err(RemoteError::Refused(e)),
                None => Ok(()),
            }
        })
    }
    fn disconnect(&self) {
        self.link.abort();
    }
    fn closed(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.link.closed())
    }
}

/// Settings of the connection loop.
pub(crate) struct LoopOpts {
    pub limits: Limits,
    pub idle_ping_after: std::time::Duration,
    pub dead_after: std::time::Duration,
}

/// Why the loop ended (for the log, through `Debug`).
#[allow(dead_code)]
#[derive(Debug)]
pub(crate) enum End {
    PeerClosed,
    Aborted,
    Closed,
    Shutdown,
    Dead,
    Error(String),
}

/// The connection loop: runs until the socket ends, the link aborts it, or `shutdown` is set.
pub(crate) async fn run_loop(
    ws: WebSocket,
    link: Link,
    mut rx: mpsc::UnboundedReceiver<Out>,
    opts: LoopOpts,
    mut shutdown: watch::Receiver<bool>,
) -> End {
    let mut io = Io {
        ws,
        next_seq: 0,
        pending: HashMap::new(),
        commands: HashMap::new(),
        limits: opts.limits,
        link: link.clone(),
    };
    let mut last_rx = Instant::now();
    let mut ping_sent: Option<Instant> = None;
    let end = loop {
        let deadline = match ping_sent {
            None => last_rx + opts.idle_ping_after,
            Some(at) => at + opts.dead_after,
        };
        // Biased: an abort wins, and the master's own (finite) queue goes before a worker
        // that floods us, so a busy worker cannot starve outgoing requests.
        tokio::select! {
            biased;
            _ = link.0.abort.notified() => break End::Aborted,
            _ = until_set(&mut shutdown) => break End::Shutdown,
            out = rx.recv() => match out {
                None => break End::Closed,
                Some(Out::Close) => {
                    let _ = io.ws.send(WsMessage::Close(None)).await;
                    break End::Closed;
                }
                Some(Out::Request(r)) => {
                    let (op, reply) = *r;
                    if let Err(e) = io.send_request(op, reply, None).await { break e }
                }
                Some(Out::Start(s)) => {
                    let StartReq { op, command_id, cmd, reply } = *s;
                    // Registered before sending: updates may arrive before the response.
                    io.commands.insert(command_id.clone(), cmd);
                    if let Err(e) = io.send_request(op, Some(reply), Some(command_id)).await { break e }
                }
            },
            msg = io.ws.recv() => {
                last_rx = Instant::now();
                link.0.last_rx_ms.store(link.0.born.elapsed().as_millis() as u64, Ordering::Relaxed);
                ping_sent = None;
                match msg {
                    None => break End::PeerClosed,
                    Some(Err(e)) => break End::Error(e.to_string()),
                    Some(Ok(m)) => if let Err(e) = io.on_frame(m).await { break e },
                }
            }
            _ = sleep_until(deadline) => {
                if ping_sent.is_some() {
                    break End::Dead;
                }
                ping_sent = Some(Instant::now());
                if let Err(e) = io.ws.send(WsMessage::Ping(Default::default())).await {
                    break End::Error(e.to_string());
                }
            }
        }
    };
    // Later sends fail at once; requests already queued are answered "not connected" by
    // dropping their reply senders.
    rx.close();
    while rx.try_recv().is_ok() {}
    link.0.closed.send_replace(true);
    io.pending.clear();
    for (_, cmd) in io.commands.drain() {
        lost(cmd.events);
    }
    end
}

/// Resolves once the flag is set (never, if its sender is gone).
async fn until_set(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Tells a command's consumer its connection went away, even if its channel is full.
fn lost(events: mpsc::Sender<CommandEvent>) {
    if let Err(mpsc::error::TrySendError::Full(ev)) = events.try_send(CommandEvent::Lost) {
        tokio::spawn(async move {
            let _ = events.send(ev).await;
        });
    }
}

struct Io {
    ws: WebSocket,
    next_seq: i64,
    /// Outstanding requests; the command id is set for `start_command`, whose command is
    /// forgotten again if the worker refuses it.
    pending: HashMap<i64, (Option<oneshot::Sender<Response>>, Option<String>)>,
    commands: HashMap<String, Cmd>,
    limits: Limits,
    /// For `abort` while waiting on a slow command consumer.
    link: Link,
}

const UNKNOWN_COMMAND: &str = "unknown \"command_id\"";

impl Io {
    async fn send(&mut self, msg: &Message) -> Result<(), End> {
        let bytes = kiln_proto::encode(msg);
        self.ws
            .send(WsMessage::Binary(bytes.into()))
            .await
            .map_err(|e| End::Error(e.to_string()))
    }

    async fn send_request(
        &mut self,
        op: Op,
        reply: Option<oneshot::Sender<Response>>,
        command_id: Option<String>,
    ) -> Result<(), End> {
        let seq_number = self.next_seq;
        self.next_seq += 1;
        if reply.is_some() || command_id.is_some() {
            self.pending.insert(seq_number, (reply, command_id));
        }
        self.send(&Message::Request { seq_number, op }).await
    }

    async fn respond(&mut self, resp: Response) -> Result<(), End> {
        self.send(&Message::Response(resp)).await
    }

    async fn on_frame(&mut self, frame: WsMessage) -> Result<(), End> {
        let data = match frame {
            WsMessage::Binary(b) => b,
            WsMessage::Text(_) => {
                tracing::debug!("text frame from worker ignored");
                return Ok(());
            }
            WsMessage::Ping(_) => {
                // tungstenite queued the Pong; flush it now rather than with the next write.
                return self.ws.flush().await.map_err(|e| End::Error(e.to_string()));
            }
            WsMessage::Pong(_) => return Ok(()),
            WsMessage::Close(_) => return Err(End::PeerClosed),
        };
        let msg = match kiln_proto::decode(&data, &self.limits) {
            Ok(m) => m,
            Err(kiln_proto::DecodeError::NoEnvelope(k)) => {
                tracing::warn!("message without {k:?} from worker dropped");
                return Ok(());
            }
            Err(kiln_proto::DecodeError::BadResponse(e)) => {
                tracing::warn!("bad response from worker ignored: {e}");
                return Ok(());
            }
            Err(kiln_proto::DecodeError::BadRequest {
                seq_number, reason, ..
            }) => {
                return self.respond(Response::error(seq_number, reason)).await;
            }
            Err(e) => return Err(End::Error(e.to_string())),
        };
        drop(data);
        match msg {
            Message::Response(resp) => {
                match self.pending.remove(&resp.seq_number) {
                    Some((reply, command_id)) => {
                        if resp.is_exception
                            && let Some(id) = command_id
                        {
                            self.commands.remove(&id);
                        }
                        if let Some(reply) = reply {
                            let _ = reply.send(resp);
                        }
                    }
                    None => {
                        tracing::warn!("response to unknown seq_number {} ignored", resp.seq_number)
                    }
                }
                Ok(())
            }
            Message::Request { seq_number, op } => {
                let resp = self.on_request(seq_number, op).await?;
                self.respond(resp).await
            }
        }
    }

    /// Hands an event to a command's consumer, waiting while its channel is full (the
    /// worker is slowed down, not buffered), but not past an abort.
    async fn deliver(
        &mut self,
        events: mpsc::Sender<CommandEvent>,
        ev: CommandEvent,
    ) -> Result<(), End> {
        let link = self.link.clone();
        tokio::select! {
            _ = events.send(ev) => Ok(()),
            _ = link.0.abort.notified() => Err(End::Aborted),
        }
    }

    async fn on_request(&mut self, seq: i64, op: Op) -> Result<Response, End> {
        Ok(match op {
            Op::Update { command_id, items } => match self.commands.get(&command_id) {
                Some(cmd) => {
                    let events = cmd.events.clone();
                    self.deliver(events, CommandEvent::Update(items)).await?;
                    Response::ok(seq)
                }
                None => Response::error(seq, UNKNOWN_COMMAND),
            },
            Op::Complete {
                command_id,
                failure,
            } => match self.commands.remove(&command_id) {
                Some(cmd) => {
                    self.deliver(cmd.events, CommandEvent::Complete { failure })
                        .await?;
                    Response::ok(seq)
                }
                None => Response::error(seq, UNKNOWN_COMMAND),
            },
            Op::UploadFileWrite { command_id, data }
            | Op::UploadDirectoryWrite { command_id, data } => {
                self.with_upload(seq, &command_id, |s| s.write(&data))
            }
            Op::UploadFileClose { command_id } => self.with_upload(seq, &command_id, |s| s.close()),
            Op::UploadFileUtime {
                command_id,
                access_time,
                modified_time,
            } => self.with_upload(seq, &command_id, |s| s.utime(access_time, modified_time)),
            Op::UploadDirectoryUnpack { command_id } => {
                self.with_upload(seq, &command_id, |s| s.unpack())
            }
            Op::ReadFile { command_id, length } => {
                // A worker cannot make the master read more than one message can carry.
                let length = (length as usize).min(self.limits.max_message.saturating_sub(64));
                match self.commands.get_mut(&command_id).map(|c| &mut c.transfer) {
                    Some(Transfer::Download(src)) => match src.read(length) {
                        Ok(bytes) => Response::with_result(seq, Value::Binary(bytes)),
                        Err(e) => Response::error(seq, e.to_string()),
                    },
                    _ => Response::error(seq, UNKNOWN_COMMAND),
                }
            }
            Op::ReadFileClose { command_id } => {
                match self.commands.get_mut(&command_id).map(|c| &mut c.transfer) {
                    Some(Transfer::Download(src)) => {
                        src.close();
                        Response::ok(seq)
                    }
                    _ => Response::error(seq, UNKNOWN_COMMAND),
                }
            }
            // Master→worker ops and unknown ones alike: the master has no handler for them.
            other => Response::error(seq, Op::unknown_error(other.name())),
        })
    }

    fn with_upload(
        &mut self,
        seq: i64,
        command_id: &str,
        f: impl FnOnce(&mut dyn kiln_remote::UploadSink) -> std::io::Result<()>,
    ) -> Response {
        match self.commands.get_mut(command_id).map(|c| &mut c.transfer) {
            Some(Transfer::Upload(sink)) => match f(sink.as_mut()) {
                Ok(()) => Response::ok(seq),
                Err(e) => Response::error(seq, e.to_string()),
            },
            _ => Response::error(seq, UNKNOWN_COMMAND),
        }
    }
}
