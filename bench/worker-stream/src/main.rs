//! The benchmark master for `bench/worker-stream`: a minimal Buildbot 4.3 master
//! (`msgpack_experimental_v7`) that makes one worker stream a known amount of log
//! output and throws it away, measuring how fast it arrives and how much memory
//! the worker process uses meanwhile.
//!
//! Sequence, as the real master does it (spec §4.1, §5.5): accept one worker on
//! 127.0.0.1 (HTTP Basic auth), `print "attached"`, `get_worker_info`,
//! `set_worker_settings`; stay idle for `--idle-secs` and read the worker's VmRSS;
//! reset its VmHWM, send one `shell` `start_command` that prints `--bytes` bytes in
//! 100-byte lines, answer every `update`/`complete` with a nil response (decoding
//! each one) until `complete`, then read VmHWM and send `shutdown`.
//!
//! Prints `PORT <n>` first, logs to stderr, and ends with one line
//! `RESULT {json}`; exits 1 if anything went wrong (the JSON then has `"ok": false`
//! and an `"error"`, with whatever was measured up to that point).

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use base64::Engine as _;
use clap::Parser;
use futures_util::{SinkExt as _, StreamExt as _};
use kiln_proto::args::{Args, WorkerSettings};
use kiln_proto::update::UpdateItem;
use kiln_proto::{
    DecodeError, Limits, MapExt as _, Message, Op, Response, Value, decode, encode, text_of,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout_at};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse, Request as HsRequest, Response as HsResponse,
};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

mod fast;

/// Every line the command prints: 99 characters and `\n`.
const LINE_LEN: u64 = 100;
/// The command id of the benchmark's shell command.
const COMMAND_ID: &str = "1";

#[derive(Parser, Debug)]
#[command(about = "Benchmark master: one worker, one big log stream, output discarded")]
struct Opts {
    /// Bytes of stdout the command prints (a multiple of 100).
    #[arg(long)]
    bytes: u64,
    /// Seconds to stay idle after the attach sequence before reading the idle RSS.
    #[arg(long, default_value_t = 5.0)]
    idle_secs: f64,
    /// Worker name expected in the Basic auth header.
    #[arg(long, default_value = "w")]
    user: String,
    /// Worker password expected in the Basic auth header.
    #[arg(long, default_value = "pass")]
    password: String,
    /// Port on 127.0.0.1 (0: any free port; the chosen one is printed).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// PID of the worker process (default: the process holding the connection's
    /// other end, found through /proc/net/tcp).
    #[arg(long)]
    pid: Option<u32>,
    /// Seconds to wait for the worker to connect.
    #[arg(long, default_value_t = 60.0)]
    connect_timeout: f64,
    /// Seconds to wait for the answer to each attach request.
    #[arg(long, default_value_t = 30.0)]
    request_timeout: f64,
    /// Seconds the whole stream (start_command to complete) may take.
    #[arg(long, default_value_t = 600.0)]
    stream_timeout: f64,
    /// How often to sample the worker's VmRSS while streaming, in milliseconds.
    #[arg(long, default_value_t = 50)]
    sample_ms: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let opts = Opts::parse();
    let mut report = Report::default();
    let outcome = run(&opts, &mut report).await;
    report.int("bytes_expected", opts.bytes as i64);
    match outcome {
        Ok(()) => report.boolean("ok", true),
        Err(e) => {
            eprintln!("bench master: {e:#}");
            report.boolean("ok", false);
            report.string("error", &format!("{e:#}"));
        }
    }
    let ok = outcome_ok(&report);
    println!("RESULT {}", report.to_json());
    let _ = std::io::stdout().flush();
    std::process::exit(if ok { 0 } else { 1 });
}

fn outcome_ok(r: &Report) -> bool {
    r.fields
        .iter()
        .any(|(k, v)| k == "ok" && matches!(v, Json::Bool(true)))
}

async fn run(opts: &Opts, report: &mut Report) -> anyhow::Result<()> {
    if opts.bytes == 0 || !opts.bytes.is_multiple_of(LINE_LEN) {
        bail!("--bytes must be a positive multiple of {LINE_LEN}");
    }
    let listener = TcpListener::bind(("127.0.0.1", opts.port))
        .await
        .context("bind 127.0.0.1")?;
    let local = listener.local_addr()?;
    println!("PORT {}", local.port());
    std::io::stdout().flush()?;

    let connect_deadline = Instant::now() + secs(opts.connect_timeout);
    let (ws, peer) = accept_worker(&listener, opts, connect_deadline).await?;
    drop(listener); // one worker only; a reconnect attempt gets "connection refused"
    let pid = match opts.pid {
        Some(p) => p,
        None => find_peer_pid(local, peer).with_context(|| {
            format!("no process holds the worker's end of the connection ({peer})")
        })?,
    };
    report.int("worker_pid", i64::from(pid));
    eprintln!("bench master: worker connected from {peer}, pid {pid}");

    let mut conn = Conn::new(ws);
    let req_deadline = || Instant::now() + secs(opts.request_timeout);

    // --- attach (spec §4.1) ---
    let r = conn
        .request(
            Op::Print {
                message: "attached".into(),
            },
            req_deadline(),
        )
        .await?;
    check_ok("print", &r)?;
    let r = conn.request(Op::GetWorkerInfo, req_deadline()).await?;
    check_ok("get_worker_info", &r)?;
    let info = match &r.result {
        Value::Map(m) => m.clone(),
        other => bail!("get_worker_info returned {other} instead of a map"),
    };
    let basedir = info
        .get_key("basedir")
        .and_then(text_of)
        .ok_or_else(|| anyhow!("worker info has no basedir"))?;
    let version = info
        .get_key("version")
        .and_then(text_of)
        .unwrap_or_default();
    report.string("worker_version", &version);
    report.string("worker_basedir", &basedir);
    let r = conn
        .request(
            Op::SetWorkerSettings(WorkerSettings::default()),
            req_deadline(),
        )
        .await?;
    check_ok("set_worker_settings", &r)?;
    report.int("attach_rss_kb", status_kb(pid, "VmRSS").unwrap_or(-1));

    // --- idle ---
    conn.idle_until(Instant::now() + secs(opts.idle_secs))
        .await?;
    let idle_rss = status_kb(pid, "VmRSS")
        .ok_or_else(|| anyhow!("cannot read VmRSS of pid {pid} (worker gone?)"))?;
    report.int("idle_rss_kb", idle_rss);
    report.float("idle_s", opts.idle_secs);

    // --- stream ---
    // Peak RSS while streaming: reset the high-water mark to the current RSS first
    // (`echo 5 > /proc/PID/clear_refs`, Linux ≥ 4.0); if that is not allowed, VmHWM
    // still covers the whole life of the process.
    let hwm_reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
    report.string(
        "peak_rss_method",
        if hwm_reset {
            "VmHWM reset just before start_command"
        } else {
            "VmHWM over the process lifetime (reset refused)"
        },
    );
    let sampler = Sampler::start(pid, Duration::from_millis(opts.sample_ms.max(1)));
    let cpu_before = cpu_seconds(&format!("/proc/{pid}/stat"));
    let master_cpu_before = cpu_seconds("/proc/self/stat");

    let command = format!("yes \"$(printf '%099d' 0)\" | head -c {}", opts.bytes);
    let workdir = format!("{}/bench/build", basedir.trim_end_matches('/'));
    let start = Instant::now();
    let seq = conn
        .send_request(Op::StartCommand {
            builder_name: Some("bench".into()),
            command_id: COMMAND_ID.into(),
            command_name: "shell".into(),
            args: shell_args(&workdir, &command),
        })
        .await?;
    let stream_deadline = start + secs(opts.stream_timeout);
    let mut started = None;
    let streamed = loop {
        if started.is_some() && conn.stats.complete_at.is_some() {
            break Ok(());
        }
        match conn.next_event(stream_deadline).await {
            Ok(Event::Response(r)) if r.seq_number == seq => {
                if let Some(e) = r.error_text() {
                    break Err(anyhow!("start_command refused: {e}"));
                }
                started = Some(());
            }
            Ok(Event::Response(r)) => eprintln!(
                "bench master: response to unknown seq_number {}",
                r.seq_number
            ),
            Ok(Event::Served) => {}
            Ok(Event::Deadline) => {
                break Err(anyhow!(
                    "stream not finished after {} s ({} of {} bytes, start_command {})",
                    opts.stream_timeout,
                    conn.stats.stdout_bytes,
                    opts.bytes,
                    if started.is_some() {
                        "answered"
                    } else {
                        "never answered"
                    }
                ));
            }
            Err(e) => break Err(e),
        }
    };
    let end = conn.stats.complete_at.unwrap_or_else(Instant::now);
    let elapsed = (end - start).as_secs_f64();
    let sampled_peak = sampler.stop();
    let peak = status_kb(pid, "VmHWM");
    let cpu_after = cpu_seconds(&format!("/proc/{pid}/stat"));
    let master_cpu_after = cpu_seconds("/proc/self/stat");

    let s = &conn.stats;
    report.int("bytes_received", s.stdout_bytes as i64);
    report.int("stdout_lines", s.stdout_lines as i64);
    report.int("bad_lines", s.bad_lines as i64);
    report.int("header_bytes", s.header_bytes as i64);
    report.int("stderr_bytes", s.stderr_bytes as i64);
    report.int("updates", s.updates as i64);
    report.int("wire_bytes", s.wire_bytes as i64);
    report.int("max_message_bytes", s.max_message as i64);
    report.opt_int("rc", s.rc);
    report.opt_float("worker_elapsed_s", s.elapsed);
    report.opt_string("failure_reason", s.failure_reason.as_deref());
    report.opt_string("complete_failure", s.complete.clone().flatten().as_deref());
    report.float("elapsed_s", elapsed);
    report.float("throughput_mb_s", s.stdout_bytes as f64 / 1e6 / elapsed);
    report.opt_float(
        "first_output_s",
        s.first_stdout_at.map(|t| (t - start).as_secs_f64()),
    );
    report.opt_int("peak_rss_kb", peak);
    report.int("sampled_peak_rss_kb", sampled_peak as i64);
    report.opt_float(
        "worker_cpu_s",
        cpu_before.zip(cpu_after).map(|(a, b)| b - a),
    );
    report.opt_float(
        "master_cpu_s",
        master_cpu_before.zip(master_cpu_after).map(|(a, b)| b - a),
    );
    report.int("fast_decoded_updates", s.fast_updates as i64);
    report.int("bad_line_triples", s.bad_triples as i64);
    report.opt_string("first_bad_line_triple", s.first_bad_triple.as_deref());
    report.int("protocol_errors", s.protocol_errors as i64);
    report.opt_string("first_protocol_error", s.first_protocol_error.as_deref());
    streamed?;

    // --- goodbye: ask the worker to exit, as the master's "kill" does ---
    let shutdown = conn.request(Op::Shutdown, req_deadline()).await;
    report.boolean(
        "shutdown_acked",
        matches!(&shutdown, Ok(r) if !r.is_exception),
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.ws.close(None)).await;

    let s = &conn.stats;
    if s.complete.as_ref().is_some_and(Option::is_some) {
        bail!(
            "the command completed with a failure: {}",
            s.complete.clone().flatten().unwrap_or_default()
        );
    }
    if s.rc != Some(0) {
        bail!("the command's rc is {:?}, not 0", s.rc);
    }
    if s.stdout_bytes != opts.bytes || s.bad_lines != 0 {
        bail!(
            "received {} stdout bytes ({} malformed lines), expected {}",
            s.stdout_bytes,
            s.bad_lines,
            opts.bytes
        );
    }
    if s.protocol_errors != 0 {
        bail!(
            "{} protocol errors, first: {}",
            s.protocol_errors,
            s.first_protocol_error.as_deref().unwrap_or("")
        );
    }
    peak.ok_or_else(|| anyhow!("cannot read VmHWM of pid {pid}"))?;
    Ok(())
}

/// The `shell` args exactly as the 4.3.0 master sends them for a ShellCommand step
/// (spec §5.5), with our workdir and command.
fn shell_args(workdir: &str, command: &str) -> Args {
    let empty = || Value::Map(Vec::new());
    Args(vec![
        (Value::from("workdir"), Value::from(workdir)),
        (Value::from("env"), empty()),
        (Value::from("want_stdout"), Value::from(true)),
        (Value::from("want_stderr"), Value::from(true)),
        (Value::from("logfiles"), empty()),
        (Value::from("timeout"), Value::from(1200)),
        (Value::from("maxTime"), Value::Nil),
        (Value::from("max_lines"), Value::Nil),
        (Value::from("sigtermTime"), Value::Nil),
        (Value::from("usePTY"), Value::from(false)),
        (Value::from("logEnviron"), Value::from(false)),
        (Value::from("initial_stdin"), Value::Nil),
        (Value::from("interruptSignal"), Value::from("KILL")),
        (Value::from("command"), Value::from(command)),
    ])
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

fn check_ok(what: &str, r: &Response) -> anyhow::Result<()> {
    match r.error_text() {
        Some(e) => bail!("{what} failed on the worker: {e}"),
        None => Ok(()),
    }
}

/// Accepts connections until one passes the WebSocket handshake with the right
/// Basic credentials (a wrong one gets 401 and the worker retries, as with Buildbot).
#[allow(clippy::result_large_err)] // the handshake callback's signature is tungstenite's
async fn accept_worker(
    listener: &TcpListener,
    opts: &Opts,
    deadline: Instant,
) -> anyhow::Result<(WebSocketStream<TcpStream>, SocketAddr)> {
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", opts.user, opts.password))
    );
    loop {
        let (tcp, peer) = timeout_at(deadline, listener.accept())
            .await
            .map_err(|_| anyhow!("no worker connected within {} s", opts.connect_timeout))??;
        tcp.set_nodelay(true)?;
        let want = want.clone();
        let check = move |req: &HsRequest, resp: HsResponse| -> Result<HsResponse, ErrorResponse> {
            let got = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            if got == Some(want.as_str()) {
                Ok(resp)
            } else {
                let mut e = ErrorResponse::new(Some("Unauthorized".into()));
                *e.status_mut() = StatusCode::UNAUTHORIZED;
                Err(e)
            }
        };
        let config = WebSocketConfig::default()
            .max_message_size(Some(Conn::LIMITS.max_message))
            .max_frame_size(Some(Conn::LIMITS.max_message));
        match timeout_at(
            deadline,
            tokio_tungstenite::accept_hdr_async_with_config(tcp, check, Some(config)),
        )
        .await
        {
            Err(_) => bail!(
                "no completed WebSocket handshake within {} s",
                opts.connect_timeout
            ),
            Ok(Ok(ws)) => return Ok((ws, peer)),
            Ok(Err(e)) => eprintln!("bench master: handshake from {peer} refused: {e}"),
        }
    }
}

#[derive(Default)]
struct Stats {
    updates: u64,
    wire_bytes: u64,
    max_message: usize,
    stdout_bytes: u64,
    stdout_lines: u64,
    /// Lines that are not the 99 characters + `\n` the command prints.
    bad_lines: u64,
    header_bytes: u64,
    stderr_bytes: u64,
    rc: Option<i64>,
    elapsed: Option<f64>,
    failure_reason: Option<String>,
    /// Some(None) = completed normally, Some(Some(text)) = completed with a failure.
    complete: Option<Option<String>>,
    complete_at: Option<Instant>,
    first_stdout_at: Option<Instant>,
    protocol_errors: u64,
    first_protocol_error: Option<String>,
    /// Line-triples whose position/time arrays do not match their lines (the 4.3
    /// master ignores both arrays, so this is reported, not fatal).
    bad_triples: u64,
    first_bad_triple: Option<String>,
    /// `update`s decoded by [`fast::parse_update`] rather than the generic decoder.
    fast_updates: u64,
}

#[derive(Debug, Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
    Header,
}

/// One `update` item as the statistics need it, from either decoder.
enum Item<'a> {
    /// Text, number of newline positions, number of line times.
    Lines(Stream, &'a str, usize, usize),
    Rc(i64),
    Elapsed(f64),
    FailureReason(&'a str),
    Other,
}

impl Stats {
    /// Applies one `update`; `Err` = the exception text the real master answers with.
    fn update<'a>(
        &mut self,
        command_id: &str,
        items: impl Iterator<Item = Item<'a>>,
    ) -> Result<(), String> {
        if command_id != COMMAND_ID {
            self.protocol_error(format!("update for unknown command_id {command_id:?}"));
            return Err("unknown \"command_id\"".into());
        }
        if self.complete.is_some() {
            self.protocol_error("update after complete".into());
        }
        self.updates += 1;
        for item in items {
            match item {
                Item::Lines(stream, text, positions, times) => {
                    let lines = memchr::memchr_iter(b'\n', text.as_bytes()).count();
                    if positions != lines || times != lines || !text.ends_with('\n') {
                        self.bad_triples += 1;
                        self.first_bad_triple.get_or_insert_with(|| {
                            format!("{stream:?} item: {lines} lines, {positions} newline positions, {times} times, ends with newline: {}", text.ends_with('\n'))
                        });
                    }
                    match stream {
                        Stream::Stdout => self.stdout(text),
                        Stream::Header => self.header_bytes += text.len() as u64,
                        Stream::Stderr => {
                            eprint!("bench master: worker stderr item: {text}");
                            self.stderr_bytes += text.len() as u64;
                        }
                    }
                }
                Item::Rc(rc) => self.rc = Some(rc),
                Item::Elapsed(e) => self.elapsed = Some(e),
                Item::FailureReason(r) => self.failure_reason = Some(r.to_owned()),
                Item::Other => {}
            }
        }
        Ok(())
    }

    fn protocol_error(&mut self, what: String) {
        eprintln!("bench master: protocol error: {what}");
        self.protocol_errors += 1;
        self.first_protocol_error.get_or_insert(what);
    }

    fn stdout(&mut self, text: &str) {
        self.first_stdout_at.get_or_insert_with(Instant::now);
        let bytes = text.as_bytes();
        self.stdout_bytes += bytes.len() as u64;
        // Every line must be exactly 99 characters and `\n`.
        let mut line_start = 0usize;
        for nl in memchr::memchr_iter(b'\n', bytes) {
            self.stdout_lines += 1;
            if nl - line_start != (LINE_LEN - 1) as usize {
                self.bad_lines += 1;
            }
            line_start = nl + 1;
        }
        if line_start != bytes.len() {
            self.bad_lines += 1; // a partial line: the master asserts this never happens
        }
    }
}

/// What [`Conn::next_event`] saw.
enum Event {
    /// A response to one of our requests.
    Response(Response),
    /// A worker request, already answered.
    Served,
    /// The deadline passed first.
    Deadline,
}

struct Conn {
    ws: WebSocketStream<TcpStream>,
    next_seq: i64,
    stats: Stats,
}

impl Conn {
    /// Generous: the worker's batches are ~64 KiB, file chunks ≤ 256 KiB.
    const LIMITS: Limits = Limits {
        max_message: 256 * 1024 * 1024,
        max_values: 1 << 26,
    };

    fn new(ws: WebSocketStream<TcpStream>) -> Conn {
        Conn {
            ws,
            next_seq: 0,
            stats: Stats::default(),
        }
    }

    async fn send(&mut self, msg: &Message) -> anyhow::Result<()> {
        self.ws
            .send(WsMessage::Binary(encode(msg).into()))
            .await
            .context("send to worker")
    }

    async fn send_request(&mut self, op: Op) -> anyhow::Result<i64> {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.send(&Message::Request {
            seq_number: seq,
            op,
        })
        .await?;
        Ok(seq)
    }

    /// Sends a request and serves the worker until its response arrives.
    async fn request(&mut self, op: Op, deadline: Instant) -> anyhow::Result<Response> {
        let name = op.name().to_owned();
        let seq = self.send_request(op).await?;
        loop {
            match self.next_event(deadline).await? {
                Event::Response(r) if r.seq_number == seq => return Ok(r),
                Event::Response(r) => eprintln!(
                    "bench master: response to unknown seq_number {}",
                    r.seq_number
                ),
                Event::Served => {}
                Event::Deadline => bail!("no response to {name} (seq {seq}) in time"),
            }
        }
    }

    /// Serves the worker (answering anything it asks) until `deadline`.
    async fn idle_until(&mut self, deadline: Instant) -> anyhow::Result<()> {
        loop {
            match self.next_event(deadline).await? {
                Event::Response(r) => eprintln!(
                    "bench master: response to unknown seq_number {}",
                    r.seq_number
                ),
                Event::Served => {}
                Event::Deadline => return Ok(()),
            }
        }
    }

    /// Reads WebSocket messages until one is a response to us (returned) or a
    /// worker request (answered here), or the deadline passes.
    async fn next_event(&mut self, deadline: Instant) -> anyhow::Result<Event> {
        loop {
            let frame = match timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Ok(Event::Deadline),
                Ok(None) => bail!("the worker closed the connection"),
                Ok(Some(Err(e))) => return Err(e).context("reading from the worker"),
                Ok(Some(Ok(f))) => f,
            };
            let bytes = match frame {
                WsMessage::Binary(b) => b,
                WsMessage::Text(t) => {
                    self.stats
                        .protocol_error(format!("text frame from the worker: {:.80}", t.as_str()));
                    continue;
                }
                WsMessage::Close(c) => bail!("the worker closed the connection: {c:?}"),
                WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => continue,
            };
            self.stats.wire_bytes += bytes.len() as u64;
            self.stats.max_message = self.stats.max_message.max(bytes.len());
            // Nearly every message is an `update`: walk those in place (no value tree,
            // no copies) so the master stays far faster than any worker; anything
            // else, or an update of an unexpected shape, goes through kiln-proto.
            if let Some(u) = fast::parse_update(&bytes) {
                self.stats.fast_updates += 1;
                let resp = match self.stats.update(u.command_id, u.items.into_iter()) {
                    Ok(()) => Response::ok(u.seq_number),
                    Err(e) => Response::error(u.seq_number, e),
                };
                self.send(&Message::Response(resp)).await?;
                return Ok(Event::Served);
            }
            match decode(&bytes, &Self::LIMITS) {
                Ok(Message::Response(r)) => return Ok(Event::Response(r)),
                Ok(Message::Request { seq_number, op }) => {
                    let answer = self.handle(op);
                    let resp = match answer {
                        Ok(()) => Response::ok(seq_number),
                        Err(e) => Response::error(seq_number, e),
                    };
                    self.send(&Message::Response(resp)).await?;
                    return Ok(Event::Served);
                }
                Err(DecodeError::BadRequest {
                    seq_number,
                    op,
                    reason,
                }) => {
                    self.stats
                        .protocol_error(format!("bad {op} request: {reason}"));
                    self.send(&Message::Response(Response::error(seq_number, reason)))
                        .await?;
                    return Ok(Event::Served);
                }
                Err(e @ DecodeError::NoEnvelope(_)) => self.stats.protocol_error(e.to_string()),
                Err(e) => {
                    self.stats.protocol_error(e.to_string());
                    bail!("undecodable message from the worker: {e}");
                }
            }
        }
    }

    /// What the master does with a worker request; `Err` = exception response text.
    fn handle(&mut self, op: Op) -> Result<(), String> {
        let s = &mut self.stats;
        match op {
            Op::Update { command_id, items } => s.update(
                &command_id,
                items.iter().map(|item| match item {
                    UpdateItem::Stdout(l) => {
                        Item::Lines(Stream::Stdout, &l.text, l.newlines.len(), l.times.len())
                    }
                    UpdateItem::Stderr(l) => {
                        Item::Lines(Stream::Stderr, &l.text, l.newlines.len(), l.times.len())
                    }
                    UpdateItem::Header(l) => {
                        Item::Lines(Stream::Header, &l.text, l.newlines.len(), l.times.len())
                    }
                    UpdateItem::Rc(rc) => Item::Rc(*rc),
                    UpdateItem::Elapsed(e) => Item::Elapsed(*e),
                    UpdateItem::FailureReason(r) => Item::FailureReason(r),
                    _ => Item::Other,
                }),
            ),
            Op::Complete {
                command_id,
                failure,
            } => {
                if command_id != COMMAND_ID {
                    s.protocol_error(format!("complete for unknown command_id {command_id:?}"));
                    return Err("unknown \"command_id\"".into());
                }
                if s.complete.is_some() {
                    s.protocol_error("second complete".into());
                }
                s.complete_at = Some(Instant::now());
                s.complete = Some(failure);
                Ok(())
            }
            op if op.is_master_to_worker() || matches!(op, Op::Unknown { .. }) => {
                s.protocol_error(format!("worker sent a {} request", op.name()));
                Err(Op::unknown_error(op.name()))
            }
            op => {
                s.protocol_error(format!(
                    "unexpected {} request (no transfer is running)",
                    op.name()
                ));
                Err("unknown \"command_id\"".into())
            }
        }
    }
}

/// Samples a process's VmRSS in the background; `stop` returns the largest seen (kB).
struct Sampler {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start(pid: u32, every: Duration) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(AtomicU64::new(0));
        let (s, m) = (stop.clone(), max.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            while !s.load(Ordering::Relaxed) {
                tick.tick().await;
                if let Some(kb) = status_kb(pid, "VmRSS") {
                    m.fetch_max(kb as u64, Ordering::Relaxed);
                }
            }
        });
        Sampler { stop, max, task }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.abort();
        self.max.load(Ordering::Relaxed)
    }
}

/// A `kB` field of /proc/PID/status (VmRSS, VmHWM, ...).
fn status_kb(pid: u32, field: &str) -> Option<i64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// utime + stime of a /proc/…/stat file, in seconds.
fn cpu_seconds(stat_path: &str) -> Option<f64> {
    let text = std::fs::read_to_string(stat_path).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields after "pid (comm) ": state is #3, utime #14, stime #15.
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks / if hz > 0 { hz as f64 } else { 100.0 })
}

/// The process (not us) that owns the socket whose local end is `peer` and remote
/// end `local`: the connection's inode from /proc/net/tcp{,6}, then /proc/*/fd.
fn find_peer_pid(local: SocketAddr, peer: SocketAddr) -> anyhow::Result<u32> {
    let mut inode = None;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let port = |a: &str| {
                a.rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
            };
            if port(f[1]) == Some(peer.port()) && port(f[2]) == Some(local.port()) {
                inode = Some(f[9].to_owned());
            }
        }
    }
    let inode = inode.ok_or_else(|| anyhow!("connection not found in /proc/net/tcp"))?;
    let target = format!("socket:[{inode}]");
    let me = std::process::id();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str()) {
                return Ok(pid);
            }
        }
    }
    bail!("no process has {target} open")
}

// --- a flat JSON object, enough for the driver ---

enum Json {
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
    Null,
}

#[derive(Default)]
struct Report {
    fields: Vec<(String, Json)>,
}

impl Report {
    fn set(&mut self, k: &str, v: Json) {
        self.fields.retain(|(key, _)| key != k);
        self.fields.push((k.to_owned(), v));
    }
    fn int(&mut self, k: &str, v: i64) {
        self.set(k, Json::Int(v));
    }
    fn float(&mut self, k: &str, v: f64) {
        self.set(
            k,
            if v.is_finite() {
                Json::Float(v)
            } else {
                Json::Null
            },
        );
    }
    fn string(&mut self, k: &str, v: &str) {
        self.set(k, Json::Str(v.to_owned()));
    }
    fn boolean(&mut self, k: &str, v: bool) {
        self.set(k, Json::Bool(v));
    }
    fn opt_int(&mut self, k: &str, v: Option<i64>) {
        self.set(k, v.map_or(Json::Null, Json::Int));
    }
    fn opt_float(&mut self, k: &str, v: Option<f64>) {
        match v {
            Some(f) => self.float(k, f),
            None => self.set(k, Json::Null),
        }
    }
    fn opt_string(&mut self, k: &str, v: Option<&str>) {
        self.set(k, v.map_or(Json::Null, |s| Json::Str(s.to_owned())));
    }

    fn to_json(&self) -> String {
        let mut out = String::from("{");
        for (i, (k, v)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            quote(&mut out, k);
            out.push(':');
            match v {
                Json::Int(n) => write!(out, "{n}").unwrap(),
                Json::Float(f) => write!(out, "{f}").unwrap(),
                Json::Str(s) => quote(&mut out, s),
                Json::Bool(b) => write!(out, "{b}").unwrap(),
                Json::Null => out.push_str("null"),
            }
        }
        out.push('}');
        out
    }
}

fn quote(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => write!(out, "\\u{:04x}", c as u32).unwrap(),
            c => out.push(c),
        }
    }
    out.push('"');
}
