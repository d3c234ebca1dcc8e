//! A swarm of fake workers: N WebSocket clients that log in as `w{i}` and answer the
//! master's attach sequence (spec §4.1, §9) the way a real worker does, then stay idle.
//!
//! Each client is one tokio task with small buffers (4 KiB read buffer, no write
//! buffering, 16 KiB socket buffers), so 10,000 of them fit on a small machine. They run
//! no real commands: `listdir` answers `files []`, `stat` a directory stat, everything
//! else (`mkdir`, `rmdir`, `shell`, ...) `rc 0`, each as one `update` and a `complete`.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use kiln_proto::info::WorkerInfo;
use kiln_proto::update::UpdateItem;
use kiln_proto::{DecodeError, Limits, Message, Op, Response, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMsg;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

type Ws = WebSocketStream<TcpStream>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How many connection errors are kept verbatim for the report.
const KEPT_ERRORS: usize = 20;

/// What the swarm connects to and as whom.
#[derive(Debug, Clone)]
pub struct SwarmConfig {
    /// The master's worker port (`ws://ADDR/`).
    pub addr: SocketAddr,
    /// How many clients.
    pub count: usize,
    /// Client `i` logs in as `{name_prefix}{first + i}`.
    pub first: usize,
    pub name_prefix: String,
    /// The same password for every client.
    pub password: String,
    /// Spread clients over 127.0.0.1 ..= 127.0.0.N as source addresses (1: let the OS pick),
    /// for when one source address runs out of ephemeral ports.
    pub source_ips: u8,
    /// Most connection handshakes in flight at once (the rest wait their turn).
    pub connect_concurrency: usize,
    /// Connection attempts after the first failed one, per client.
    pub retries: u32,
    /// Reported `basedir` is `{basedir_root}/{name}`.
    pub basedir_root: String,
    /// Reported worker `version`.
    pub version: String,
    /// Arrive as a load balancer would: a PROXY protocol header naming
    /// [`proxied_client`]`(first + i)` as client `i`'s address, before the WebSocket
    /// handshake (the master must trust the source address as a proxy).
    pub proxy_protocol: Option<ProxyVersion>,
}

/// Which PROXY protocol header the swarm sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    /// `PROXY TCP4 src dst sport dport\r\n`.
    V1,
    /// The binary header (IPv4, TCP).
    V2,
}

/// The client address a proxied swarm client number `n` (counting from `first`) claims:
/// 198.18.x.y (the benchmarking range), port 20000 + n.
pub fn proxied_client(n: usize) -> SocketAddr {
    let n16 = n as u16;
    SocketAddr::new(
        Ipv4Addr::new(198, 18, (n16 >> 8) as u8, n16 as u8).into(),
        20000u16.wrapping_add(n16),
    )
}

/// The PROXY header for `client` connecting to `server`.
pub fn proxy_header(version: ProxyVersion, client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(c), SocketAddr::V4(s)) = (client, server) else {
        panic!("the swarm's PROXY headers are IPv4 only");
    };
    match version {
        ProxyVersion::V1 => format!(
            "PROXY TCP4 {} {} {} {}\r\n",
            c.ip(),
            s.ip(),
            c.port(),
            s.port()
        )
        .into_bytes(),
        ProxyVersion::V2 => {
            let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
            h.extend_from_slice(&[0x21, 0x11, 0, 12]); // v2 PROXY, TCP over IPv4, 12 bytes
            h.extend_from_slice(&c.ip().octets());
            h.extend_from_slice(&s.ip().octets());
            h.extend_from_slice(&c.port().to_be_bytes());
            h.extend_from_slice(&s.port().to_be_bytes());
            h
        }
    }
}

impl SwarmConfig {
    pub fn new(addr: SocketAddr, count: usize, password: impl Into<String>) -> SwarmConfig {
        SwarmConfig {
            addr,
            count,
            first: 0,
            name_prefix: "w".into(),
            password: password.into(),
            source_ips: 1,
            connect_concurrency: 128,
            retries: 3,
            basedir_root: "/var/lib/kiln-swarm".into(),
            version: "4.3.0".into(),
            proxy_protocol: None,
        }
    }
}

/// Live counters, shared by every client.
#[derive(Debug)]
pub struct Stats {
    started: Instant,
    /// Clients whose WebSocket handshake succeeded and that are still connected.
    pub connected: AtomicUsize,
    /// Connected clients that have been through `get_worker_info` and `set_worker_settings`.
    pub attached: AtomicUsize,
    /// `start_command`s answered (all kinds).
    pub commands: AtomicUsize,
    /// `print "ping"` requests answered.
    pub pings: AtomicUsize,
    /// Clients that gave up connecting.
    pub failed: AtomicUsize,
    /// Clients whose connection ended after it was established.
    pub closed: AtomicUsize,
    /// Milliseconds since `started` of the last message received by any client.
    last_activity_ms: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            started: Instant::now(),
            connected: AtomicUsize::new(0),
            attached: AtomicUsize::new(0),
            commands: AtomicUsize::new(0),
            pings: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            closed: AtomicUsize::new(0),
            last_activity_ms: AtomicU64::new(0),
            errors: Mutex::new(Vec::new()),
        }
    }

    fn touch(&self) {
        self.last_activity_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Time since any client last received a message (the swarm is quiet when this grows).
    pub fn idle_for(&self) -> Duration {
        let now = self.started.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_activity_ms.load(Ordering::Relaxed)))
    }

    fn error(&self, e: String) {
        let mut errs = self.errors.lock().expect("stats lock");
        if errs.len() < KEPT_ERRORS {
            errs.push(e);
        }
    }

    /// The first few errors clients met.
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().expect("stats lock").clone()
    }

    /// One JSON object with every counter (what `kiln-swarm` prints).
    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "elapsed_s": self.started.elapsed().as_secs_f64(),
            "connected": self.connected.load(Ordering::Relaxed),
            "attached": self.attached.load(Ordering::Relaxed),
            "commands": self.commands.load(Ordering::Relaxed),
            "pings": self.pings.load(Ordering::Relaxed),
            "failed": self.failed.load(Ordering::Relaxed),
            "closed": self.closed.load(Ordering::Relaxed),
            "idle_ms": self.idle_for().as_millis() as u64,
            "errors": self.errors(),
        })
    }
}

/// A running swarm.
pub struct Swarm {
    pub stats: Arc<Stats>,
    count: usize,
    tasks: tokio::task::JoinSet<()>,
}

impl Swarm {
    /// Waits until `n` clients are attached and no client has received anything for `quiet`,
    /// or until `limit`; returns whether that happened. Fails early when clients gave up.
    pub async fn wait_attached(&self, n: usize, quiet: Duration, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let s = &self.stats;
            if s.attached.load(Ordering::Relaxed) >= n && s.idle_for() >= quiet {
                return true;
            }
            // Clients that gave up or were closed never come back: stop waiting when too few are left.
            if s.failed.load(Ordering::Relaxed) + s.closed.load(Ordering::Relaxed)
                > self.count.saturating_sub(n)
            {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Stops every client (their connections are dropped).
    pub async fn stop(mut self) {
        self.tasks.shutdown().await;
    }
}

/// Starts `cfg.count` clients on the current tokio runtime.
pub fn spawn(cfg: SwarmConfig) -> Swarm {
    raise_fd_limit();
    let stats = Arc::new(Stats::new());
    let cfg = Arc::new(cfg);
    let gate = Arc::new(Semaphore::new(cfg.connect_concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for idx in 0..cfg.count {
        tasks.spawn(client(cfg.clone(), stats.clone(), gate.clone(), idx));
    }
    Swarm {
        stats,
        count: cfg.count,
        tasks,
    }
}

/// Raises the soft open-files limit to the hard one (each client is one socket).
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return want.rlim_cur;
            }
        }
        lim.rlim_cur
    }
}

async fn client(cfg: Arc<SwarmConfig>, stats: Arc<Stats>, gate: Arc<Semaphore>, idx: usize) {
    let name = format!("{}{}", cfg.name_prefix, cfg.first + idx);
    let mut attempt = 0;
    loop {
        let ws = {
            let _permit = gate.acquire().await.expect("gate never closes");
            connect(&cfg, idx, &name).await
        };
        match ws {
            Ok(ws) => {
                stats.connected.fetch_add(1, Ordering::Relaxed);
                let mut attached = false;
                let end = serve(ws, &cfg, &stats, &name, &mut attached).await;
                stats.connected.fetch_sub(1, Ordering::Relaxed);
                if attached {
                    stats.attached.fetch_sub(1, Ordering::Relaxed);
                }
                stats.closed.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = end {
                    stats.error(format!("{name}: {e}"));
                }
                // A session that ended stays ended: the master closed it on purpose (or died).
                return;
            }
            Err(e) => {
                attempt += 1;
                if attempt > cfg.retries {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    stats.error(format!("{name}: {e}"));
                    return;
                }
                tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt))).await;
            }
        }
    }
}

async fn connect(cfg: &SwarmConfig, idx: usize, name: &str) -> Result<Ws, String> {
    let sock = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    if cfg.source_ips > 1 {
        let ip = Ipv4Addr::new(127, 0, 0, 1 + (idx % usize::from(cfg.source_ips)) as u8);
        sock.bind(SocketAddr::new(ip.into(), 0))
            .map_err(|e| format!("bind {ip}: {e}"))?;
    }
    // Small kernel buffers: idle connections carry a few hundred bytes.
    let _ = sock.set_recv_buffer_size(16 * 1024);
    let _ = sock.set_send_buffer_size(16 * 1024);
    let stream = timeout(CONNECT_TIMEOUT, sock.connect(cfg.addr))
        .await
        .map_err(|_| format!("connect to {} timed out", cfg.addr))?
        .map_err(|e| {
            format!(
                "connect to {}: {e} (fd limit / ephemeral ports? try --source-ips)",
                cfg.addr
            )
        })?;
    let mut stream = stream;
    let _ = stream.set_nodelay(true);
    if let Some(version) = cfg.proxy_protocol {
        use tokio::io::AsyncWriteExt as _;
        let header = proxy_header(version, proxied_client(cfg.first + idx), cfg.addr);
        stream
            .write_all(&header)
            .await
            .map_err(|e| format!("sending the PROXY header: {e}"))?;
    }
    let mut req = format!("ws://{}/", cfg.addr)
        .into_client_request()
        .map_err(|e| e.to_string())?;
    let token =
        base64::engine::general_purpose::STANDARD.encode(format!("{name}:{}", cfg.password));
    req.headers_mut().insert(
        "Authorization",
        HeaderValue::from_str(&format!("Basic {token}")).map_err(|e| e.to_string())?,
    );
    let limits = Limits::default();
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(limits.max_message))
        .max_frame_size(Some(limits.max_message));
    let (ws, _) = timeout(
        CONNECT_TIMEOUT,
        tokio_tungstenite::client_async_with_config(req, stream, Some(ws_config)),
    )
    .await
    .map_err(|_| "WebSocket handshake timed out".to_string())?
    .map_err(|e| format!("WebSocket handshake: {e}"))?;
    Ok(ws)
}

async fn send(ws: &mut Ws, msg: &Message) -> Result<(), String> {
    ws.send(WsMsg::Binary(kiln_proto::encode(msg).into()))
        .await
        .map_err(|e| format!("send: {e}"))
}

async fn respond(ws: &mut Ws, r: Response) -> Result<(), String> {
    send(ws, &Message::Response(r)).await
}

/// Answers the master until it closes the connection.
async fn serve(
    mut ws: Ws,
    cfg: &SwarmConfig,
    stats: &Stats,
    name: &str,
    attached: &mut bool,
) -> Result<(), String> {
    let limits = Limits::default();
    let mut seq: i64 = 0;
    let mut got_info = false;
    while let Some(frame) = ws.next().await {
        let frame = frame.map_err(|e| format!("receive: {e}"))?;
        stats.touch();
        let data = match frame {
            WsMsg::Binary(b) => b,
            WsMsg::Close(_) => return Ok(()),
            // Pings are answered by tungstenite on the next read; text frames are ignored (§2.3).
            _ => continue,
        };
        let (seq_number, op) = match kiln_proto::decode(&data, &limits) {
            Ok(Message::Request { seq_number, op }) => (seq_number, op),
            Ok(Message::Response(_)) => continue,
            Err(DecodeError::BadRequest {
                seq_number, reason, ..
            }) => {
                respond(&mut ws, Response::error(seq_number, reason)).await?;
                continue;
            }
            Err(DecodeError::NoEnvelope(_)) => continue,
            Err(e) => return Err(format!("undecodable message from the master: {e}")),
        };
        match op {
            Op::Print { message } => {
                if message == "ping" {
                    stats.pings.fetch_add(1, Ordering::Relaxed);
                }
                respond(&mut ws, Response::ok(seq_number)).await?;
            }
            Op::Keepalive | Op::InterruptCommand { .. } => {
                respond(&mut ws, Response::ok(seq_number)).await?
            }
            Op::GetWorkerInfo => {
                got_info = true;
                respond(
                    &mut ws,
                    Response::with_result(seq_number, worker_info(cfg, name)),
                )
                .await?;
            }
            Op::SetWorkerSettings(_) => {
                respond(&mut ws, Response::ok(seq_number)).await?;
                if got_info && !*attached {
                    *attached = true;
                    stats.attached.fetch_add(1, Ordering::Relaxed);
                }
            }
            Op::StartCommand {
                command_id,
                command_name,
                ..
            } => {
                respond(&mut ws, Response::ok(seq_number)).await?;
                let items = command_result(&command_name);
                send(
                    &mut ws,
                    &Message::Request {
                        seq_number: seq,
                        op: Op::Update {
                            command_id: command_id.clone(),
                            items,
                        },
                    },
                )
                .await?;
                send(
                    &mut ws,
                    &Message::Request {
                        seq_number: seq + 1,
                        op: Op::Complete {
                            command_id,
                            failure: None,
                        },
                    },
                )
                .await?;
                seq += 2;
                stats.commands.fetch_add(1, Ordering::Relaxed);
            }
            Op::Shutdown => {
                respond(&mut ws, Response::ok(seq_number)).await?;
                let _ = ws.close(None).await;
                return Ok(());
            }
            other => {
                respond(
                    &mut ws,
                    Response::error(seq_number, Op::unknown_error(other.name())),
                )
                .await?
            }
        }
    }
    Ok(())
}

/// The one `update` a command gets: what a real worker reports for an empty basedir.
pub fn command_result(command_name: &str) -> Vec<UpdateItem> {
    let mut items = Vec::with_capacity(3);
    match command_name {
        "listdir" => items.push(UpdateItem::Files(Vec::new())),
        // A directory (mode 040755), as `tuple(os.stat(path))`.
        "stat" => items.push(UpdateItem::Stat(vec![
            0o40755, 1, 1, 2, 0, 0, 4096, 0, 0, 0,
        ])),
        "glob" => items.push(UpdateItem::Files(Vec::new())),
        _ => {}
    }
    items.push(UpdateItem::Rc(0));
    items.push(UpdateItem::Elapsed(0.0));
    items
}

/// A small, realistic `get_worker_info` answer (§9), in Buildbot's key order.
pub fn worker_info(cfg: &SwarmConfig, name: &str) -> Value {
    let mut info = WorkerInfo::default();
    info.set("admin", "kiln-swarm <bench@127.0.0.1>\n");
    info.set("host", "fake worker (kiln-swarm)\n");
    info.set("os_id", "linux");
    let basedir = format!("{}/{name}", cfg.basedir_root);
    info.set(
        "environ",
        Value::Map(vec![
            (
                Value::from("PATH"),
                Value::from("/usr/local/bin:/usr/bin:/bin"),
            ),
            (Value::from("HOME"), Value::from(basedir.clone())),
            (Value::from("LANG"), Value::from("C.UTF-8")),
        ]),
    );
    info.set("system", "posix");
    info.set("basedir", basedir);
    info.set("numcpus", 1);
    info.set("version", cfg.version.clone());
    info.set(
        "worker_commands",
        WorkerInfo::commands(kiln_proto::COMMAND_VERSION),
    );
    info.set("delete_leftover_dirs", false);
    info.into_value()
}
