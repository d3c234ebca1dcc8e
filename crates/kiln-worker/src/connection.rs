//! The worker's side of the connection: connect out to the master, keep the
//! session alive, answer the master's requests and run its commands, and come
//! back by itself when the connection drops.
//!
//! One session = one WebSocket connection. A reader task decodes what the
//! master sends; a writer task owns the socket's sending half, numbers our
//! requests and routes the master's responses back to whoever waits for them.
//! Commands outlive a lost session only for `disconnect_grace` seconds, and
//! never into the next session: an orphan must not write into a builder
//! directory that the master's retried build is using.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use kiln_proto::args::WorkerSettings;
use kiln_proto::{DecodeError, Limits, Message, Op, Response, Value};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tracing::{debug, error, info, warn};

use crate::commands::{self, CommandCtx, ExecPolicy, Interrupt, InterruptHandle, Output};
use crate::config::WorkerConfig;
use crate::link::{MasterLink, Outgoing};

/// What the process asks of the connection loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopRequest {
    /// Keep serving.
    Running,
    /// Stop now: interrupt running commands and exit.
    Now,
    /// Stop once no build has run for a short quiet period.
    Graceful,
}

/// The longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A session that lasted this long resets the backoff: the master was really there.
const STABLE_SESSION: Duration = Duration::from_secs(30);
/// With a graceful stop, the worker leaves once no command has run for this long
/// (steps of one build follow each other within a second).
const GRACEFUL_QUIET: Duration = Duration::from_secs(5);
/// Handshake and TLS must finish within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why [`serve`] ended other than by a stop or the master's shutdown.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration names a build user or sandbox that cannot be used.
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    /// The password file cannot be read.
    #[error(transparent)]
    Password(#[from] crate::config::ConfigError),
    /// HTTP Basic auth cannot carry a name with ':'.
    #[error(
        "worker name {name:?} contains ':', which HTTP Basic auth cannot carry; rename the worker"
    )]
    NameWithColon { name: String },
    /// `maxretries` connection attempts in a row failed (each is in the log).
    #[error("gave up after {failures} failed connection attempts to {url} (maxretries = {max})")]
    GaveUp {
        failures: u32,
        url: String,
        max: u32,
    },
}

/// Runs the worker until stopped, the master shuts it down, or `maxretries` is exhausted.
pub async fn serve(
    config: WorkerConfig,
    stop: watch::Receiver<StopRequest>,
) -> Result<(), ServeError> {
    let policy = Arc::new(crate::policy::from_config(&config)?);
    commands::process::init_process_control();
    serve_with_policy(config, policy, stop).await
}

/// [`serve`] with an already built execution policy.
pub async fn serve_with_policy(
    config: WorkerConfig,
    policy: Arc<ExecPolicy>,
    mut stop: watch::Receiver<StopRequest>,
) -> Result<(), ServeError> {
    let password = config.resolved_password()?;
    if config.name.contains(':') {
        return Err(ServeError::NameWithColon { name: config.name });
    }
    let state = Arc::new(WorkerState {
        settings: Mutex::new(WorkerSettings::default()),
        policy,
        orphans: Mutex::new(Vec::new()),
        last_busy: Mutex::new(Instant::now()),
        doctor: doctor_in_background(&config),
        config,
    });
    let url = state.config.master_url();
    let mut backoff = Backoff::default();
    let mut failures: u32 = 0;
    loop {
        if *stop.borrow() == StopRequest::Now {
            break;
        }
        info!("connecting to {url}");
        let attempt = tokio::select! {
            r = connect(&state.config, &password) => r,
            _ = stop_requested(&mut stop) => break,
        };
        match attempt {
            Ok(ws) => {
                info!("connected to {url}");
                let began = Instant::now();
                let end = run_session(ws, &state, &mut stop).await;
                match end {
                    SessionEnd::Shutdown => {
                        info!("the master asked this worker to shut down");
                        break;
                    }
                    SessionEnd::Stop => break,
                    SessionEnd::Lost(why) => warn!("lost the connection to the master: {why}"),
                }
                if began.elapsed() >= STABLE_SESSION {
                    backoff.reset();
                    failures = 0;
                }
            }
            Err(ConnectError::Unauthorized) => {
                error!(
                    "the master at {url} refused worker {:?}: wrong name or password (HTTP 401); \
                     check `name` and the password in {}",
                    state.config.name,
                    state
                        .config
                        .basedir
                        .join(crate::config::CONFIG_FILE)
                        .display()
                );
            }
            Err(e) => warn!("cannot connect to {url}: {}", kiln_proto::error_chain(&e)),
        }
        failures += 1;
        if let Some(max) = state.config.maxretries
            && failures >= max
        {
            state.kill_orphans("worker is exiting").await;
            return Err(ServeError::GaveUp { failures, url, max });
        }
        let delay = backoff.next_delay();
        info!("retrying in {:.1} s", delay.as_secs_f64());
        tokio::select! {
            _ = sleep(delay) => {}
            _ = stop_requested(&mut stop) => break,
        }
    }
    state.kill_orphans("worker is stopping").await;
    Ok(())
}

/// Runs the doctor's checks on a blocking thread; the results go to the master in
/// the `kiln` worker-info key. Outbound reachability is checked only for targets the
/// config names: a worker never probes outside hosts on its own.
fn doctor_in_background(config: &WorkerConfig) -> watch::Receiver<Option<Value>> {
    let (tx, rx) = watch::channel(None);
    let mut opts = crate::doctor::DoctorOptions::for_config(config);
    if config.doctor_targets.is_empty() {
        opts.targets.clear();
    }
    tokio::task::spawn_blocking(move || {
        let checks = crate::doctor::run_checks(&opts)
            .into_iter()
            .map(|c| {
                Value::Map(vec![
                    (Value::from("name"), Value::from(c.name)),
                    (Value::from("status"), Value::from(c.status.as_str())),
                    (Value::from("detail"), Value::from(c.detail)),
                    (Value::from("hint"), Value::from(c.hint)),
                    (Value::from("required"), Value::from(c.required)),
                ])
            })
            .collect();
        let _ = tx.send(Some(Value::Array(checks)));
    });
    rx
}

/// Resolves when a stop (of either kind) that should end the connection loop is asked for.
async fn stop_requested(stop: &mut watch::Receiver<StopRequest>) {
    loop {
        if *stop.borrow_and_update() != StopRequest::Running {
            return;
        }
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// State kept across sessions.
struct WorkerState {
    config: WorkerConfig,
    settings: Mutex<WorkerSettings>,
    policy: Arc<ExecPolicy>,
    /// Commands of lost sessions, in their grace period.
    orphans: Mutex<Vec<RunningCommand>>,
    /// When a command last ran (for graceful stop).
    last_busy: Mutex<Instant>,
    /// The doctor's results for the `kiln` worker-info key, once they are in.
    doctor: watch::Receiver<Option<Value>>,
}

struct RunningCommand {
    id: String,
    interrupt: InterruptHandle,
    task: JoinHandle<()>,
}

impl WorkerState {
    /// Interrupts every orphan and waits (bounded) for them to finish.
    async fn kill_orphans(&self, why: &str) {
        let orphans: Vec<RunningCommand> = std::mem::take(&mut *self.orphans.lock().unwrap());
        for c in &orphans {
            debug!("interrupting command {} of an earlier session: {why}", c.id);
            c.interrupt.interrupt(why);
        }
        for c in orphans {
            // The kill procedure escalates within a few seconds; don't hang on a stuck one.
            let _ = timeout(Duration::from_secs(15), c.task).await;
        }
    }
}

/// Why a session ended.
enum SessionEnd {
    Lost(String),
    Shutdown,
    Stop,
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why one attempt to connect to the master failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The master refused the worker's name or password.
    #[error("wrong worker name or password (HTTP 401)")]
    Unauthorized,
    /// The master answered the upgrade with another HTTP status; `reason` is the first line
    /// of its body, clipped (a Kiln master says why, e.g. who already holds the name on 409).
    #[error("the master answered HTTP {status}{}", .reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    Http {
        status: StatusCode,
        reason: Option<String>,
    },
    /// The master's URL cannot be made into a request.
    #[error("bad master address {url}")]
    BadAddress {
        url: String,
        #[source]
        source: tungstenite::Error,
    },
    /// The credentials cannot go into an HTTP header.
    #[error("the worker name or password cannot be sent in an HTTP header")]
    Header(#[source] tungstenite::http::header::InvalidHeaderValue),
    /// The TCP, TLS and WebSocket handshakes did not finish in time.
    #[error("no answer within {} s", .after.as_secs())]
    Timeout { after: Duration },
    /// The socket failed: the connection was refused, reset, or the host is unreachable.
    #[error("IO error")]
    Io(#[source] std::io::Error),
    /// The TLS client cannot be set up (the CA file, say).
    #[cfg(feature = "tls")]
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// `use_tls` in a worker built without TLS.
    #[cfg(not(feature = "tls"))]
    #[error("this kiln-worker was built without TLS support; rebuild it with the `tls` feature")]
    NoTls,
    /// Anything else the WebSocket client reports (the TLS handshake, the protocol).
    #[error(transparent)]
    WebSocket(tungstenite::Error),
}

async fn connect(config: &WorkerConfig, password: &str) -> Result<Ws, ConnectError> {
    let url = config.master_url();
    let mut request =
        url.as_str()
            .into_client_request()
            .map_err(|source| ConnectError::BadAddress {
                url: url.clone(),
                source,
            })?;
    let token =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{password}", config.name));
    request.headers_mut().insert(
        "Authorization",
        HeaderValue::from_str(&format!("Basic {token}")).map_err(ConnectError::Header)?,
    );
    let limits = Limits::default();
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(limits.max_message))
        .max_frame_size(Some(limits.max_message))
        .write_buffer_size(128 * 1024);
    match timeout(CONNECT_TIMEOUT, open(config, request, ws_config)).await {
        Err(_) => Err(ConnectError::Timeout {
            after: CONNECT_TIMEOUT,
        }),
        Ok(Err(e)) => Err(e),
        Ok(Ok(Ok(ws))) => Ok(ws),
        Ok(Ok(Err(e))) => Err(ConnectError::from_handshake(e)),
    }
}

impl ConnectError {
    /// Sorts what the WebSocket client reports into the cases a worker treats apart.
    fn from_handshake(e: tungstenite::Error) -> ConnectError {
        match e {
            tungstenite::Error::Http(resp) if resp.status() == StatusCode::UNAUTHORIZED => {
                ConnectError::Unauthorized
            }
            tungstenite::Error::Http(resp) => ConnectError::Http {
                status: resp.status(),
                reason: resp.body().as_deref().and_then(first_line),
            },
            tungstenite::Error::Io(e) => ConnectError::Io(e),
            e => ConnectError::WebSocket(e),
        }
    }
}

/// The most of a master's refusal a log line shows.
const REASON_CHARS: usize = 400;

/// The first non-empty line of a refusal's body, at most [`REASON_CHARS`] characters, with
/// control characters escaped: the body is the master's (or whatever answers on its port).
fn first_line(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    let mut out = String::new();
    for c in line.chars().take(REASON_CHARS) {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    if line.chars().nth(REASON_CHARS).is_some() {
        out.push('…');
    }
    Some(out)
}

#[cfg(feature = "tls")]
async fn open(
    config: &WorkerConfig,
    request: Request,
    ws_config: WebSocketConfig,
) -> Result<Result<Ws, tungstenite::Error>, ConnectError> {
    let connector = if config.use_tls {
        let tls = crate::tls::client_config(config.ca_file.as_deref())?;
        Some(tokio_tungstenite::Connector::Rustls(tls))
    } else {
        None
    };
    Ok(
        tokio_tungstenite::connect_async_tls_with_config(request, Some(ws_config), true, connector)
            .await
            .map(|(ws, _)| ws),
    )
}

#[cfg(not(feature = "tls"))]
async fn open(
    config: &WorkerConfig,
    request: Request,
    ws_config: WebSocketConfig,
) -> Result<Result<Ws, tungstenite::Error>, ConnectError> {
    if config.use_tls {
        return Err(ConnectError::NoTls);
    }
    Ok(
        tokio_tungstenite::connect_async_with_config(request, Some(ws_config), true)
            .await
            .map(|(ws, _)| ws),
    )
}

/// Exponential backoff with jitter: 1.5^n seconds, capped at [`MAX_BACKOFF`],
/// each delay drawn from the upper half of its step so many workers spread out.
#[derive(Default)]
struct Backoff {
    attempts: u32,
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        self.attempts = self.attempts.saturating_add(1);
        let base = 1.5f64
            .powi(self.attempts.min(32) as i32)
            .min(MAX_BACKOFF.as_secs_f64());
        let jittered = base * rand::random_range(0.5..=1.0);
        Duration::from_secs_f64(jittered.max(1.0))
    }
    fn reset(&mut self) {
        self.attempts = 0;
    }
}

type Pending = Arc<Mutex<HashMap<i64, oneshot::Sender<Response>>>>;

async fn run_session(
    ws: Ws,
    state: &Arc<WorkerState>,
    stop: &mut watch::Receiver<StopRequest>,
) -> SessionEnd {
    let (sink, mut stream) = ws.split();
    let (link, out_rx) = MasterLink::channel(64);
    let pending: Pending = Arc::default();
    let keepalive = Duration::from_secs(state.config.keepalive.max(1));
    let mut writer = tokio::spawn(write_loop(sink, out_rx, pending.clone(), keepalive));
    let limits = Limits::default();
    let mut commands: HashMap<String, RunningCommand> = HashMap::new();
    let mut first_command = true;
    // A peer silent for three ping intervals (no message, no pong) is dead.
    let dead_after = keepalive * 3;
    let mut last_heard = Instant::now();
    let mut graceful_check = tokio::time::interval(Duration::from_secs(1));

    let end = loop {
        tokio::select! {
            frame = timeout(dead_after.saturating_sub(last_heard.elapsed()), stream.next()) => {
                let frame = match frame {
                    Err(_) => break SessionEnd::Lost(format!("nothing heard from the master for {} s", dead_after.as_secs())),
                    Ok(None) => break SessionEnd::Lost("connection closed".into()),
                    Ok(Some(Err(e))) => break SessionEnd::Lost(e.to_string()),
                    Ok(Some(Ok(f))) => f,
                };
                last_heard = Instant::now();
                let bytes = match frame {
                    WsMessage::Binary(b) => b,
                    WsMessage::Text(t) => {
                        warn!("ignoring a text message from the master ({} bytes)", t.len());
                        continue;
                    }
                    WsMessage::Close(c) => break SessionEnd::Lost(format!("master closed the connection ({c:?})")),
                    // Pongs only prove liveness; tungstenite answers pings itself.
                    _ => continue,
                };
                let message = match kiln_proto::decode(&bytes, &limits) {
                    Ok(m) => m,
                    Err(DecodeError::NoEnvelope(key)) => {
                        warn!("dropping a message without {key:?} from the master");
                        continue;
                    }
                    Err(DecodeError::BadRequest { seq_number, op, reason }) => {
                        warn!("bad {op} request from the master: {reason}");
                        if link.respond(Response::error(seq_number, reason)).await.is_err() {
                            break SessionEnd::Lost("writer stopped".into());
                        }
                        continue;
                    }
                    Err(DecodeError::BadResponse(why)) => {
                        warn!("ignoring a bad response from the master: {why}");
                        continue;
                    }
                    Err(e) => break SessionEnd::Lost(format!("undecodable message from the master: {e}")),
                };
                match message {
                    Message::Response(r) => {
                        let waiter = pending.lock().unwrap().remove(&r.seq_number);
                        match waiter {
                            Some(tx) => { let _ = tx.send(r); }
                            None => debug!("response to request {} that nobody waits for", r.seq_number),
                        }
                    }
                    Message::Request { seq_number, op } => {
                        commands.retain(|_, c| !c.task.is_finished());
                        match handle_request(seq_number, op, state, &link, &mut commands, &mut first_command).await {
                            Ok(Flow::Continue) => {}
                            Ok(Flow::Shutdown) => break SessionEnd::Shutdown,
                            Err(_) => break SessionEnd::Lost("writer stopped".into()),
                        }
                    }
                }
            }
            r = &mut writer => {
                break SessionEnd::Lost(match r {
                    Ok(Ok(())) => "writer finished".into(),
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => format!("writer task failed: {e}"),
                });
            }
            _ = stop.changed() => {
                if *stop.borrow() == StopRequest::Now {
                    break SessionEnd::Stop;
                }
            }
            _ = graceful_check.tick() => {
                commands.retain(|_, c| !c.task.is_finished());
                if !commands.is_empty() {
                    *state.last_busy.lock().unwrap() = Instant::now();
                } else if *stop.borrow() == StopRequest::Graceful
                    && state.last_busy.lock().unwrap().elapsed() >= GRACEFUL_QUIET
                {
                    info!("no build running; stopping as asked");
                    break SessionEnd::Stop;
                }
            }
        }
    };

    // Commands still running belong to a session that is over.
    {
        let mut orphans = state.orphans.lock().unwrap();
        for (_, c) in commands.drain() {
            if !c.task.is_finished() {
                orphans.push(c);
            }
        }
    }
    arm_grace_period(state);
    drop(link);
    writer.abort();
    pending.lock().unwrap().clear();
    end
}

/// After `disconnect_grace` seconds, interrupts the orphans still running.
fn arm_grace_period(state: &Arc<WorkerState>) {
    let ids: Vec<String> = state
        .orphans
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.id.clone())
        .collect();
    if ids.is_empty() {
        return;
    }
    let grace = Duration::from_secs_f64(state.config.disconnect_grace.max(0.0));
    warn!(
        "{} command(s) still running after the connection dropped; they are killed in {:.0} s unless they end",
        ids.len(),
        grace.as_secs_f64()
    );
    let state = state.clone();
    tokio::spawn(async move {
        sleep(grace).await;
        for c in state
            .orphans
            .lock()
            .unwrap()
            .iter()
            .filter(|c| ids.contains(&c.id))
        {
            c.interrupt.interrupt("connection to the master lost");
        }
    });
}

enum Flow {
    Continue,
    Shutdown,
}

async fn handle_request(
    seq: i64,
    op: Op,
    state: &Arc<WorkerState>,
    link: &MasterLink,
    commands: &mut HashMap<String, RunningCommand>,
    first_command: &mut bool,
) -> Result<Flow, crate::link::LinkClosed> {
    match op {
        Op::Print { message } => {
            // `kiln-worker start` waits for this exact text in the log. The master
            // pings before every build: that one is not worth a line each time.
            if message == "ping" {
                debug!("message from master: {message}");
            } else {
                info!("message from master: {message}");
            }
            link.respond(Response::ok(seq)).await?;
        }
        Op::Keepalive => {
            debug!("keepalive from master");
            link.respond(Response::ok(seq)).await?;
        }
        Op::GetWorkerInfo => {
            // The checks take a moment at start-up; don't hold the attach up for long.
            let mut doctor = state.doctor.clone();
            let _ = timeout(Duration::from_secs(5), doctor.wait_for(Option::is_some)).await;
            let extra = doctor
                .borrow()
                .clone()
                .map(|checks| Value::Map(vec![(Value::from("doctor"), checks)]));
            let config = state.config.clone();
            let info =
                tokio::task::spawn_blocking(move || crate::info::gather(&config, extra)).await;
            match info {
                Ok(info) => {
                    link.respond(Response::with_result(seq, info.into_value()))
                        .await?
                }
                Err(e) => {
                    link.respond(Response::error(
                        seq,
                        format!("cannot gather worker info: {e}"),
                    ))
                    .await?
                }
            }
        }
        Op::SetWorkerSettings(s) => {
            debug!("worker settings from master: {s:?}");
            *state.settings.lock().unwrap() = s;
            link.respond(Response::ok(seq)).await?;
        }
        Op::StartCommand {
            command_id,
            command_name,
            args,
            builder_name,
        } => {
            if *first_command {
                // Nothing of an earlier session may run beside this session's commands.
                *first_command = false;
                state
                    .kill_orphans("a new session with the master started")
                    .await;
            }
            if commands.contains_key(&command_id) {
                link.respond(Response::error(
                    seq,
                    format!("command id {command_id:?} is already running"),
                ))
                .await?;
                return Ok(Flow::Continue);
            }
            let prepared = match commands::prepare(&command_id, &command_name, &args) {
                Ok(p) => p,
                Err(e) => {
                    warn!("refusing command {command_id} ({command_name}): {e}");
                    link.respond(Response::error(seq, e)).await?;
                    return Ok(Flow::Continue);
                }
            };
            debug!("starting command {command_id}: {command_name} for builder {builder_name:?}");
            let settings = state.settings.lock().unwrap().clone();
            let (handle, interrupt) = Interrupt::new();
            let ctx = CommandCtx {
                out: Output::new(
                    command_id.clone(),
                    link.clone(),
                    settings.buffer_size,
                    settings.buffer_timeout,
                ),
                command_id: command_id.clone(),
                link: link.clone(),
                settings,
                policy: state.policy.clone(),
                basedir: state.config.basedir.clone(),
                interrupt,
                started: std::time::Instant::now(),
            };
            link.respond(Response::ok(seq)).await?;
            *state.last_busy.lock().unwrap() = Instant::now();
            let task = tokio::spawn(commands::run(ctx, prepared));
            commands.insert(
                command_id.clone(),
                RunningCommand {
                    id: command_id,
                    interrupt: handle,
                    task,
                },
            );
        }
        Op::InterruptCommand {
            command_id, why, ..
        } => {
            match commands.get(&command_id) {
                Some(c) if !c.task.is_finished() => {
                    info!("interrupting command {command_id}: {why}");
                    c.interrupt.interrupt(&why);
                }
                _ => info!("asked to interrupt command {command_id} ({why}), but none was running"),
            }
            link.respond(Response::ok(seq)).await?;
        }
        Op::Shutdown => {
            link.respond(Response::ok(seq)).await?;
            // Let the writer put the response on the wire before the session ends.
            sleep(Duration::from_millis(200)).await;
            for c in commands.values() {
                c.interrupt.interrupt("the master shut this worker down");
            }
            return Ok(Flow::Shutdown);
        }
        Op::Unknown { op } => {
            warn!("the master sent an unknown op {op:?}");
            link.respond(Response::error(seq, Op::unknown_error(&op)))
                .await?;
        }
        other => {
            // A worker→master op sent to us: unknown to a worker, like Buildbot answers.
            warn!(
                "the master sent {:?}, which only workers send",
                other.name()
            );
            link.respond(Response::error(seq, Op::unknown_error(other.name())))
                .await?;
        }
    }
    Ok(Flow::Continue)
}

/// Owns the sending half: numbers requests, registers response waiters, sends pings.
async fn write_loop(
    mut sink: futures_util::stream::SplitSink<Ws, WsMessage>,
    mut rx: tokio::sync::mpsc::Receiver<Outgoing>,
    pending: Pending,
    keepalive: Duration,
) -> Result<(), tungstenite::Error> {
    let mut next_seq: i64 = 0;
    let mut ping = tokio::time::interval_at(Instant::now() + keepalive, keepalive);
    let mut size_hint = 256;
    loop {
        let item = tokio::select! {
            item = rx.recv() => item,
            _ = ping.tick() => {
                sink.send(WsMessage::Ping(Vec::new().into())).await?;
                continue;
            }
        };
        let Some(item) = item else { return Ok(()) };
        let message = match item {
            Outgoing::Response(r) => Message::Response(r),
            Outgoing::Request { op, reply } => {
                let seq = next_seq;
                next_seq += 1;
                if let Some(reply) = reply {
                    pending.lock().unwrap().insert(seq, reply);
                }
                Message::Request {
                    seq_number: seq,
                    op,
                }
            }
        };
        let mut buf = Vec::with_capacity(size_hint);
        kiln_proto::encode_into(&message, &mut buf);
        size_hint = buf.len().clamp(256, 256 * 1024);
        // Batch what is already queued into one flush.
        sink.feed(WsMessage::Binary(buf.into())).await?;
        if rx.is_empty() {
            sink.flush().await?;
        }
    }
}

impl WorkerConfig {
    /// `ws://host:port/` or `wss://…`; IPv6 literals get brackets.
    pub fn master_url(&self) -> String {
        let scheme = if self.use_tls { "wss" } else { "ws" };
        let host = if self.master_host.contains(':') && !self.master_host.starts_with('[') {
            format!("[{}]", self.master_host)
        } else {
            self.master_host.clone()
        };
        format!("{scheme}://{host}:{}/", self.master_port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_and_resets() {
        let mut b = Backoff::default();
        let first = b.next_delay();
        assert!(first >= Duration::from_secs(1) && first <= Duration::from_secs_f64(1.5));
        let mut last = first;
        for _ in 0..20 {
            last = b.next_delay();
            assert!(last <= MAX_BACKOFF);
        }
        assert!(
            last >= MAX_BACKOFF / 2,
            "after many failures the delay is near the cap: {last:?}"
        );
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs_f64(1.5));
    }

    /// A master that refuses every login with 401.
    async fn refusing_master() -> (tokio::task::JoinHandle<()>, u16) {
        refusing_master_with(StatusCode::UNAUTHORIZED, "Unauthorized").await
    }

    /// A master that refuses one login with `status` and `body`.
    #[allow(clippy::result_large_err)] // tungstenite's handshake callback signature
    async fn refusing_master_with(
        status: StatusCode,
        body: &'static str,
    ) -> (tokio::task::JoinHandle<()>, u16) {
        use tungstenite::handshake::server::{ErrorResponse, Request, Response};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let refuse = |_: &Request, _: Response| -> Result<Response, ErrorResponse> {
                let mut e = ErrorResponse::new(Some(body.into()));
                *e.status_mut() = status;
                Err(e)
            };
            let _ = tokio_tungstenite::accept_hdr_async(tcp, refuse).await;
        });
        (task, port)
    }

    #[tokio::test]
    async fn connect_tells_a_401_from_a_refused_connection() {
        let mut config = WorkerConfig::for_tests(std::path::Path::new("/tmp"));
        let (master, port) = refusing_master().await;
        config.master_port = port;
        let e = connect(&config, "pass").await.unwrap_err();
        assert!(matches!(e, ConnectError::Unauthorized), "{e:?}");
        master.await.unwrap();

        // A port nobody listens on.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        config.master_port = closed.local_addr().unwrap().port();
        drop(closed);
        let e = connect(&config, "pass").await.unwrap_err();
        let ConnectError::Io(io) = &e else {
            panic!("{e:?}")
        };
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            kiln_proto::error_chain(&e),
            format!("IO error: {io}"),
            "the log line reads as it did before the error was typed"
        );
    }

    #[tokio::test]
    async fn a_refusal_carries_the_first_line_of_the_masters_reason() {
        let mut config = WorkerConfig::for_tests(std::path::Path::new("/tmp"));
        let (master, port) = refusing_master_with(
            StatusCode::CONFLICT,
            "worker \"w1\" is already connected from 10.0.0.1:4000\nsecond line",
        )
        .await;
        config.master_port = port;
        let e = connect(&config, "pass").await.unwrap_err();
        master.await.unwrap();
        assert_eq!(
            kiln_proto::error_chain(&e),
            "the master answered HTTP 409 Conflict: worker \"w1\" is already connected from 10.0.0.1:4000"
        );
    }

    #[test]
    fn a_refusals_reason_is_one_bounded_line() {
        assert_eq!(
            first_line(b"\n  why \x1b[31m\r\nmore"),
            Some("why \\u{1b}[31m".into())
        );
        assert_eq!(first_line(b" \n"), None);
        let long = "x".repeat(100_000);
        let shown = first_line(long.as_bytes()).unwrap();
        assert_eq!(shown, format!("{}…", "x".repeat(REASON_CHARS)));
    }

    #[test]
    fn serve_errors_keep_their_sources() {
        let mut config = WorkerConfig::for_tests(std::path::Path::new("/nonexistent-kiln"));
        config.password.clear();
        config.password_file = Some("pw".into());
        let (_tx, stop) = watch::channel(StopRequest::Running);
        let policy = Arc::new(crate::policy::from_config(&config).unwrap());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = runtime
            .block_on(serve_with_policy(config, policy, stop))
            .unwrap_err();
        let ServeError::Password(crate::config::ConfigError::PasswordFile { source, .. }) = &e
        else {
            panic!("{e:?}")
        };
        assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        assert!(
            kiln_proto::error_chain(&e)
                .starts_with("cannot read the password file /nonexistent-kiln/pw: "),
            "{e}"
        );
    }

    #[test]
    fn master_url_brackets_ipv6() {
        let mut c = WorkerConfig::for_tests(std::path::Path::new("/tmp"));
        c.master_host = "::1".into();
        c.master_port = 9989;
        assert_eq!(c.master_url(), "ws://[::1]:9989/");
        c.use_tls = true;
        c.master_host = "example.org".into();
        assert_eq!(c.master_url(), "wss://example.org:9989/");
    }
}
