//! The worker endpoint: Buildbot's `msgpack_experimental_v7` over WebSocket (spec
//! `shared/spec/worker-protocol.md`). HTTP Basic auth checked in constant time before the
//! upgrade, failed logins rate-limited per address and name in bounded memory (and logged
//! clipped, a few lines a second), one connection per worker name (the first reserves it
//! before the upgrade; later ones get 409 with the reason, spec §4.3's check lets a dead
//! attached one be replaced), a message size cap, the attach sequence of spec §4.1,
//! dead-connection detection, and
//! [`WorkerConn`], which implements [`kiln_remote::Connection`] for builds. Attached workers
//! go into the [`Workers`] registry the core reads; who may log in comes from its [`Roster`].
//! TLS (`wss://`) comes from [`tls::server_config`].

mod attach;
mod auth;
mod clip;
mod conn;
mod serve;
pub mod tls;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, FromRequestParts as _, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use kiln_remote::{Claim, Holder, RemoteError, Reservation, Roster, Workers};
use tokio::sync::watch;

pub use conn::WorkerConn;
pub use serve::{PeerAddr, serve, serve_with};

use auth::{CredError, FailedLogins};
use clip::{Allow, Clipped, LineBudget};
use conn::{Link, LoopOpts};

#[derive(Debug, Clone)]
pub struct EndpointOptions {
    /// Largest WebSocket message accepted; a bigger one closes that connection only.
    pub max_message_bytes: usize,
    /// Failed logins allowed per remote address and worker name per minute; more get 429
    /// without a check. (The bookkeeping keeps a hash of the name, never the name, and has a
    /// fixed bound on entries.)
    pub failed_logins_per_minute: u32,
    /// A WebSocket ping is sent after this long without traffic from the worker …
    pub idle_ping_after: Duration,
    /// … and the connection is dropped if nothing arrives this long after it. Their sum is
    /// how long a dead connection can hold its worker's name against a new one that the
    /// duplicate check did not let in (60 s by default).
    pub dead_after: Duration,
    /// How long the old connection has to answer the duplicate-connection `print` (§4.3).
    pub duplicate_check_timeout: Duration,
}

impl Default for EndpointOptions {
    fn default() -> Self {
        EndpointOptions {
            max_message_bytes: 16 * 1024 * 1024,
            failed_logins_per_minute: 10,
            idle_ping_after: Duration::from_secs(30),
            dead_after: Duration::from_secs(30),
            duplicate_check_timeout: Duration::from_secs(10),
        }
    }
}

/// The worker endpoint. Cheap to clone.
#[derive(Clone)]
pub struct Endpoint(Arc<Inner>);

struct Inner {
    roster: Roster,
    opts: EndpointOptions,
    /// `opts.failed_logins_per_minute`, changed in place by a reconfig.
    failed_logins_per_minute: AtomicU32,
    workers: Workers,
    next_conn_id: AtomicU64,
    failed: FailedLogins,
    /// Failed-login lines a second in the log; a flood of failures is summed up.
    failed_lines: LineBudget,
    shutdown: watch::Sender<bool>,
}

/// Socket buffers per connection: small, because most workers are idle most of the time
/// (tungstenite's default is 128 KiB each way). Bigger messages still work; the buffers grow.
const READ_BUFFER: usize = 2 * 1024;
const WRITE_BUFFER: usize = 4 * 1024;

/// At most this many failed logins a second are logged one by one.
const FAILED_LOGIN_LINES_PER_SECOND: u32 = 5;

impl Endpoint {
    /// An endpoint that checks logins against `roster` and puts attached workers in `workers`.
    pub fn new(roster: Roster, opts: EndpointOptions, workers: Workers) -> Endpoint {
        let (shutdown, _) = watch::channel(false);
        Endpoint(Arc::new(Inner {
            roster,
            failed_logins_per_minute: AtomicU32::new(opts.failed_logins_per_minute),
            opts,
            workers,
            next_conn_id: AtomicU64::new(1),
            failed: FailedLogins::default(),
            failed_lines: LineBudget::new(FAILED_LOGIN_LINES_PER_SECOND),
            shutdown,
        }))
    }

    /// Accepts the WebSocket upgrade on any path and method (Buildbot ignores the path).
    /// Serve it with connect info (`SocketAddr` or [`PeerAddr`]) so failed logins are
    /// counted per address; without it all clients share one counter.
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
            .fallback(handshake)
            .with_state(self.clone())
    }

    /// The registry this endpoint attaches workers to.
    pub fn workers(&self) -> &Workers {
        &self.0.workers
    }

    /// How many (address, worker name) pairs with failed logins are remembered: never more
    /// than a fixed bound, whatever the clients send.
    pub fn failed_logins_remembered(&self) -> usize {
        self.0.failed.entries()
    }

    /// Sets the failed logins allowed per address and worker name per minute (reconfig);
    /// the next login attempt is checked against it.
    pub fn set_failed_logins_per_minute(&self, limit: u32) {
        self.0
            .failed_logins_per_minute
            .store(limit, Ordering::Relaxed);
    }

    /// Drops every connection, attached or not (master shutdown).
    pub fn close_all(&self) {
        self.0.shutdown.send_replace(true);
    }
}

fn status(code: StatusCode, text: impl Into<String>) -> Response {
    let mut r = (code, text.into()).into_response();
    if code == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"kiln\""),
        );
    }
    r
}

/// The opening handshake: credentials first, then the upgrade.
async fn handshake(State(ep): State<Endpoint>, req: Request) -> Response {
    let (mut parts, _body) = req.into_parts();
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .or_else(|| {
            parts
                .extensions
                .get::<ConnectInfo<PeerAddr>>()
                .map(|c| c.0.0)
        })
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let inner = &ep.0;
    let (name, password) = match auth::parse_basic(
        parts
            .headers
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes()),
    ) {
        Ok(c) => c,
        Err(e) => {
            let key = inner.failed.key(peer.ip(), "");
            if let Some(refused) = refuse_if_blocked(inner, key) {
                return refused;
            }
            inner.failed.record(key, Instant::now());
            return match e {
                CredError::Missing => status(StatusCode::UNAUTHORIZED, "Unauthorized\n"),
                CredError::Malformed => status(
                    StatusCode::BAD_REQUEST,
                    "Bad request: expected Authorization: Basic base64(name:password)\n",
                ),
            };
        }
    };
    let key = inner.failed.key(peer.ip(), &name);
    if let Some(refused) = refuse_if_blocked(inner, key) {
        return refused;
    }
    // A name that is not configured (any name longer than every configured one, say) is
    // refused by the lookup, with no argon2 check.
    let check = inner.roster.get(&name).map(|e| e.password);
    let ok = match check {
        Some(check) => auth::verify(&check, password).await,
        None => false,
    };
    if !ok {
        inner.failed.record(key, Instant::now());
        log_failed_login(inner, &name, peer);
        return status(StatusCode::UNAUTHORIZED, "Unauthorized\n");
    }
    let conn_id = inner.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let reservation = match claim_name(inner, &name, conn_id, peer).await {
        Ok(r) => r,
        Err(held) => return refuse_duplicate(&name, peer, &held),
    };
    let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let max = inner.opts.max_message_bytes;
    // The reservation moves into the upgraded connection; if the upgrade never happens,
    // dropping the callback frees the name.
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(max.saturating_add(WRITE_BUFFER + 1024))
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| connection(ep, socket, name, peer, reservation))
}

/// 429 if `key` used up its failed logins for this minute.
fn refuse_if_blocked(inner: &Inner, key: auth::LoginKey) -> Option<Response> {
    let limit = inner.failed_logins_per_minute.load(Ordering::Relaxed);
    inner.failed.blocked(key, limit, Instant::now()).then(|| {
        status(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many failed logins; try again in a minute\n",
        )
    })
}

/// One line per failed login, a few a second at most, the client's name clipped: a flood
/// of failures must not fill the disk.
fn log_failed_login(inner: &Inner, name: &str, peer: SocketAddr) {
    if let Allow::Log { held_back } = inner.failed_lines.take(Instant::now()) {
        if held_back > 0 {
            tracing::info!("{held_back} more failed logins not logged");
        }
        tracing::info!(worker = %Clipped(name), %peer, "worker login refused: unknown name or wrong password");
    }
}

/// Holds the worker's name for this connection (spec §4.3): the first connection wins. A
/// connection still attaching is never replaced; an attached one keeps the name while it
/// answers a `print` within `duplicate_check_timeout`, and is dropped if it does not (its
/// pings find a dead one on their own within `idle_ping_after + dead_after`). `Err` names
/// the connection that holds the name.
async fn claim_name(
    inner: &Inner,
    name: &str,
    conn_id: u64,
    peer: SocketAddr,
) -> Result<Reservation, Holder> {
    let (old, held) = match inner.workers.reserve(name, conn_id, peer) {
        Claim::Reserved(r) => return Ok(r),
        Claim::Attaching(held) => return Err(held),
        Claim::Attached(old, held) => (old, held),
    };
    let probe = old.print("master got a duplicate connection");
    let answer = tokio::time::timeout(inner.opts.duplicate_check_timeout, probe).await;
    // Any answer, even an error, proves the old connection alive.
    if matches!(answer, Ok(Ok(()) | Err(RemoteError::Refused(_)))) {
        return Err(held);
    }
    tracing::warn!(
        worker = %Clipped(name),
        %peer,
        old_peer = %held.peer,
        "the attached connection did not answer the duplicate check; replacing it"
    );
    old.disconnect();
    old.closed().await;
    match inner
        .workers
        .reserve_replacing(name, conn_id, peer, held.conn_id)
    {
        Claim::Reserved(r) => Ok(r),
        Claim::Attaching(h) | Claim::Attached(_, h) => Err(h),
    }
}

/// 409 for a second connection under a worker's name, with a one-line reason the worker logs.
fn refuse_duplicate(name: &str, peer: SocketAddr, held: &Holder) -> Response {
    let since = httpdate::fmt_http_date(held.since);
    let ago = held.since.elapsed().unwrap_or_default().as_secs();
    let reason = format!(
        "worker {} is already connected from {} since {since} ({ago} s ago); \
         this connection from {peer} is refused (one connection per worker name: stop the \
         other one, or give this worker a name of its own)\n",
        Clipped(name),
        held.peer,
    );
    tracing::warn!("duplicate connection refused: {}", reason.trim_end());
    status(StatusCode::CONFLICT, reason)
}

/// One upgraded connection that holds its worker's name (`reservation`), from the attach
/// sequence to `Detached`; the name is freed if the attach fails or the connection ends.
/// Runs as one task: the attach sequence and the socket loop are two futures polled side by
/// side; the attach one is boxed so its state is freed once the worker is attached (memory
/// per idle worker).
async fn connection(
    ep: Endpoint,
    ws: WebSocket,
    name: String,
    peer: SocketAddr,
    reservation: Reservation,
) {
    let inner = ep.0.clone();
    let conn_id = reservation.conn_id();
    let (link, rx) = Link::new();
    let opts = LoopOpts {
        limits: kiln_proto::Limits {
            max_message: inner.opts.max_message_bytes,
            ..Default::default()
        },
        idle_ping_after: inner.opts.idle_ping_after,
        dead_after: inner.opts.dead_after,
    };
    let io = conn::run_loop(ws, link.clone(), rx, opts, inner.shutdown.subscribe());
    let attached: OnceLock<()> = OnceLock::new();
    let driver = async {
        let Some(entry) = inner.roster.get(&name) else {
            tracing::info!(worker = %name, "worker no longer configured; closing");
            link.close();
            return;
        };
        match attach::attach(&link, &entry).await {
            Ok(a) => {
                let conn = Arc::new(WorkerConn {
                    name: name.clone(),
                    conn_id,
                    peer,
                    info: a.info,
                    basedir: a.basedir,
                    windows: a.windows,
                    link: link.clone(),
                });
                if !inner.workers.attach(reservation, conn) {
                    tracing::info!(worker = %name, %peer, "worker removed while attaching; closing");
                    link.abort();
                    return;
                }
                let _ = attached.set(());
                tracing::info!(worker = %name, %peer, conn_id, "worker attached");
            }
            Err(e) => {
                tracing::warn!(
                    worker = %name,
                    %peer,
                    "attach failed, dropping the connection: {}",
                    kiln_proto::error_chain(&e)
                );
                link.abort();
            }
        }
    };
    let mut io = std::pin::pin!(io);
    let mut driver = Some(Box::pin(driver));
    let end = loop {
        match driver.as_mut() {
            Some(d) => tokio::select! {
                end = &mut io => break end,
                () = d => driver = None,
            },
            None => break io.await,
        }
    };
    drop(driver);
    tracing::info!(worker = %name, %peer, conn_id, "worker connection ended: {end:?}");
    if attached.get().is_some() {
        inner.workers.detach(name, conn_id);
    }
}
