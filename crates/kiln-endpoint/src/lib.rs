//! The worker endpoint: Buildbot's `msgpack_experimental_v7` over WebSocket (spec
//! `shared/spec/worker-protocol.md`). HTTP Basic auth checked in constant time before the
//! upgrade, failed logins rate-limited per address, a message size cap, the attach sequence
//! of spec §4.1, duplicate-name arbitration (§4.3), dead-connection detection, and
//! [`WorkerConn`], which implements [`kiln_remote::Connection`] for builds. Attached workers
//! go into the [`Workers`] registry the core reads; who may log in comes from its [`Roster`].
//! TLS (`wss://`) comes from [`tls::server_config`].

mod attach;
mod auth;
mod conn;
mod serve;
pub mod tls;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, FromRequestParts as _, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use kiln_remote::{Roster, Workers};
use tokio::sync::watch;

pub use conn::WorkerConn;
pub use serve::{PeerAddr, serve, serve_with};

use auth::{CredError, FailedLogins};
use conn::{Link, LoopOpts};

#[derive(Debug, Clone)]
pub struct EndpointOptions {
    /// Largest WebSocket message accepted; a bigger one closes that connection only.
    pub max_message_bytes: usize,
    /// Failed logins allowed per remote address and worker name per minute; more get 429
    /// without a check.
    pub failed_logins_per_minute: u32,
    /// A WebSocket ping is sent after this long without traffic from the worker …
    pub idle_ping_after: Duration,
    /// … and the connection is dropped if nothing arrives this long after it.
    pub dead_after: Duration,
    /// How long the old connection has to answer the duplicate-connection `print` (§4.3).
    pub duplicate_check_timeout: Duration,
}

impl Default for EndpointOptions {
    fn default() -> Self {
        EndpointOptions {
            max_message_bytes: 16 * 1024 * 1024,
            failed_logins_per_minute: 10,
            idle_ping_after: Duration::from_secs(60),
            dead_after: Duration::from_secs(60),
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
    workers: Workers,
    next_conn_id: AtomicU64,
    failed: FailedLogins,
    shutdown: watch::Sender<bool>,
}

/// Socket buffers per connection: small, because most workers are idle most of the time
/// (tungstenite's default is 128 KiB each way). Bigger messages still work; the buffers grow.
const READ_BUFFER: usize = 2 * 1024;
const WRITE_BUFFER: usize = 4 * 1024;

impl Endpoint {
    /// An endpoint that checks logins against `roster` and puts attached workers in `workers`.
    pub fn new(roster: Roster, opts: EndpointOptions, workers: Workers) -> Endpoint {
        let (shutdown, _) = watch::channel(false);
        Endpoint(Arc::new(Inner {
            roster,
            opts,
            workers,
            next_conn_id: AtomicU64::new(1),
            failed: FailedLogins::default(),
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

    /// Drops every connection, attached or not (master shutdown).
    pub fn close_all(&self) {
        self.0.shutdown.send_replace(true);
    }
}

fn status(code: StatusCode, text: &'static str) -> Response {
    let mut r = (code, text).into_response();
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
    let limit = inner.opts.failed_logins_per_minute;
    let too_many = || {
        status(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many failed logins; try again in a minute\n",
        )
    };
    let (name, password) = match auth::parse_basic(
        parts
            .headers
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes()),
    ) {
        Ok(c) => c,
        Err(e) => {
            if inner.failed.blocked(peer.ip(), "", limit) {
                return too_many();
            }
            inner.failed.record(peer.ip(), "");
            return match e {
                CredError::Missing => status(StatusCode::UNAUTHORIZED, "Unauthorized\n"),
                CredError::Malformed => status(
                    StatusCode::BAD_REQUEST,
                    "Bad request: expected Authorization: Basic base64(name:password)\n",
                ),
            };
        }
    };
    if inner.failed.blocked(peer.ip(), &name, limit) {
        return too_many();
    }
    let check = inner.roster.get(&name).map(|e| e.password);
    let ok = match check {
        Some(check) => auth::verify(&check, password).await,
        None => false,
    };
    if !ok {
        inner.failed.record(peer.ip(), &name);
        tracing::info!(worker = %name, %peer, "worker login refused: unknown name or wrong password");
        return status(StatusCode::UNAUTHORIZED, "Unauthorized\n");
    }
    let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let max = inner.opts.max_message_bytes;
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(max.saturating_add(WRITE_BUFFER + 1024))
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| connection(ep, socket, name, peer))
}

/// One upgraded connection, from duplicate arbitration to `Detached`. Runs as one task: the
/// attach sequence and the socket loop are two futures polled side by side; the attach one
/// is boxed so its state is freed once the worker is attached (memory per idle worker).
async fn connection(ep: Endpoint, mut ws: WebSocket, name: String, peer: SocketAddr) {
    let inner = ep.0.clone();
    let conn_id = inner.next_conn_id.fetch_add(1, Ordering::Relaxed);

    // Spec §4.3: the old connection gets a chance to prove it is alive.
    if let Some(old) = inner.workers.get(&name) {
        let probe = old.print("master got a duplicate connection");
        let answer = tokio::time::timeout(inner.opts.duplicate_check_timeout, probe).await;
        if matches!(answer, Ok(Ok(()))) {
            tracing::warn!(worker = %name, %peer, "duplicate connection refused: the attached one still answers");
            let _ = ws.send(WsMessage::Close(None)).await;
            return;
        }
        tracing::warn!(worker = %name, %peer, "old connection did not answer; replacing it");
        inner.workers.forget(&name, old.conn_id());
        old.disconnect();
        old.closed().await;
    }

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
                let _ = attached.set(());
                tracing::info!(worker = %name, %peer, conn_id, "worker attached");
                inner.workers.attach(conn);
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
