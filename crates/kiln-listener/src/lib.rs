//! Accepting connections on a port: caps, timeouts, PROXY protocol, TLS.
//!
//! [`serve`] runs one port's accept loop and serves each connection with hyper's HTTP/1
//! (upgrades allowed, so the worker port's WebSocket handshake goes through it too):
//!
//! - a cap on open connections (at the cap the oldest connection still sending its first
//!   request's headers is closed to make room; if there is none the newcomer is refused) and
//!   on connections per client address (over it, closed at once);
//! - a deadline for the request head (PROXY header, TLS handshake and headers included,
//!   counted from the accept), a TLS handshake deadline, an idle keep-alive deadline, and a
//!   cap on the head's size (hyper answers 431 before the service sees anything);
//! - the real client behind a trusted proxy: the PROXY protocol (v1, v2) on a
//!   [`ClientAddress::ProxyProtocol`] port, `X-Forwarded-For` on a
//!   [`ClientAddress::ForwardedFor`] port (there the per-address cap counts requests in flight
//!   per real client, over it → 429, since the proxy's connections are shared).
//!
//! [`Settings`] come through a `watch` channel and are read at each accept: a reconfig
//! changes caps, timeouts, trusted proxies and the TLS certificate for the next connection.

mod io;
mod proxy;
mod table;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{Either, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use io::{Activity, Conn, IN_REQUEST};
use table::{Admission, HeadersMark, Slot, Table};

/// A port's connection settings; the master builds them from `master(...)` and sends new
/// ones on reconfig.
#[derive(Clone)]
pub struct Settings {
    /// Open connections allowed on the port.
    pub max_connections: usize,
    /// Open connections (or, behind a trusted proxy on the web port, requests in flight)
    /// allowed per client address.
    pub max_connections_per_address: usize,
    /// From the accept to the end of the request head (PROXY header and TLS included).
    pub header_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// How long a TLS handshake may take.
    pub tls_handshake_timeout: Duration,
    /// Proxies whose PROXY header or `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Serve TLS with this config (read at each handshake: a new certificate applies to the
    /// next connection).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_connections: 8192,
            max_connections_per_address: 128,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            tls_handshake_timeout: Duration::from_secs(10),
            trusted_proxies: Vec::new(),
            tls: None,
        }
    }
}

/// How a port learns the real client behind a trusted proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAddress {
    /// A PROXY protocol header (v1 or v2) before anything else; a trusted proxy's connection
    /// without one is taken as the proxy's own.
    ProxyProtocol,
    /// The `X-Forwarded-For` request header.
    ForwardedFor,
}

/// What kind of port this is (fixed for its life, unlike [`Settings`]).
#[derive(Debug, Clone, Copy)]
pub struct Port {
    /// For log lines: "worker", "web".
    pub name: &'static str,
    /// Largest request head (request line and headers); bigger ones get 431. hyper needs
    /// at least 8 KiB.
    pub max_head_bytes: usize,
    pub client_address: ClientAddress,
}

impl Port {
    /// The worker port: a WebSocket handshake's head is small; HAProxy sends PROXY headers.
    pub const WORKERS: Port = Port {
        name: "worker",
        max_head_bytes: 16 * 1024,
        client_address: ClientAddress::ProxyProtocol,
    };
    /// The web port: browsers send cookies; reverse proxies send `X-Forwarded-For`.
    pub const WEB: Port = Port {
        name: "web",
        max_head_bytes: 64 * 1024,
        client_address: ClientAddress::ForwardedFor,
    };
}

/// Who is at the other end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// The client: the PROXY header's source when a trusted proxy sent one, else the TCP
    /// peer. (On the web port each request also carries a `Peer` extension whose `client` is
    /// the `X-Forwarded-For` client.)
    pub client: SocketAddr,
    /// The trusted proxy the connection came through, if any.
    pub proxy: Option<SocketAddr>,
}

/// Serves `listener` until `shutdown` resolves: each connection gets the service
/// `make_service(peer)` makes for it. At shutdown the accept loop stops and open HTTP
/// connections finish their request in flight and close (upgraded ones are their owner's).
pub async fn serve<M, S, B>(
    listener: TcpListener,
    port: Port,
    settings: watch::Receiver<Arc<Settings>>,
    make_service: M,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()>
where
    M: Fn(Peer) -> S + Clone + Send + Sync + 'static,
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let table = Arc::new(Table::default());
    let mut refusals = Refusals::default();
    let (closing, closing_rx) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, addr) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and the like: wait for connections to close instead of spinning.
                    tracing::warn!(port = port.name, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let now = settings.borrow().clone();
        let slot = match table.admit(now.max_connections) {
            Admission::Admitted(slot) => slot,
            Admission::Full => {
                refusals.refused(port.name, addr, now.max_connections);
                continue;
            }
        };
        let job = Connection {
            port,
            settings: now,
            table: table.clone(),
            addr,
            closing: closing_rx.clone(),
        };
        tokio::spawn(job.run(tcp, slot, make_service.clone()));
    }
    closing.send_replace(true);
    Ok(())
}

/// Connections refused at the total cap, logged at most once a minute (a flood of them
/// must not become a flood of log lines).
#[derive(Default)]
struct Refusals {
    since_warning: u64,
    warned_at: Option<std::time::Instant>,
}

impl Refusals {
    fn refused(&mut self, port: &str, addr: SocketAddr, max: usize) {
        self.since_warning += 1;
        if self
            .warned_at
            .is_some_and(|t| t.elapsed() < Duration::from_secs(60))
        {
            return;
        }
        tracing::warn!(
            port,
            last = %addr,
            "{} connection(s) refused: {max} connections open and none is waiting for its \
             headers (raise max_connections if this is normal load)",
            self.since_warning
        );
        self.since_warning = 0;
        self.warned_at = Some(std::time::Instant::now());
    }
}

/// One accepted connection, before it knows its client.
struct Connection {
    port: Port,
    settings: Arc<Settings>,
    table: Arc<Table>,
    addr: SocketAddr,
    closing: watch::Receiver<bool>,
}

impl Connection {
    async fn run<M, S, B>(self, tcp: TcpStream, slot: Slot, make_service: M)
    where
        M: Fn(Peer) -> S,
        S: tower_service::Service<Request<Incoming>, Response = Response<B>>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // Small frames both ways (a command, its updates; an API answer): no Nagle delay.
        let _ = tcp.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let evicted = slot.evicted.clone();
        let (name, addr) = (self.port.name, self.addr);
        let settings = self.settings.clone();
        let deadline = overdue(&activity, &settings);
        tokio::select! {
            () = evicted.notified() => {
                tracing::debug!(port = name, %addr, "closed to make room: still sending its headers at the connection cap");
            }
            why = deadline => tracing::debug!(port = name, %addr, "connection closed: {why}"),
            r = self.serve(tcp, slot, activity.clone(), make_service) => {
                if let Err(e) = r {
                    tracing::debug!(port = name, %addr, "connection ended: {e}");
                }
            }
        }
    }

    async fn serve<M, S, B>(
        self,
        mut tcp: TcpStream,
        mut slot: Slot,
        activity: Arc<Activity>,
        make_service: M,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
    where
        M: Fn(Peer) -> S,
        S: tower_service::Service<Request<Incoming>, Response = Response<B>>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let s = &self.settings;
        let from_proxy = proxy::is_trusted(&s.trusted_proxies, self.addr.ip());
        let (peer, ahead) = self.opening(&mut tcp, from_proxy).await?;
        // Behind a proxy on the web port the connections are the proxy's: count requests per
        // real client instead (see `Answer::call`).
        let per_request = from_proxy && self.port.client_address == ClientAddress::ForwardedFor;
        if !per_request && !slot.claim_address(peer.client.ip(), s.max_connections_per_address) {
            // Debug only: a flood from one address would flood the log too.
            tracing::debug!(port = self.port.name, client = %peer.client,
                "connection refused: {} connections already open from this address",
                s.max_connections_per_address);
            return Ok(());
        }
        let answer = Answer {
            inner: make_service(peer),
            peer,
            per_request,
            table: self.table.clone(),
            headers: slot.mark(),
            activity: activity.clone(),
            settings: s.clone(),
        };
        let io = Conn::new(tcp, ahead, activity, slot);
        match &s.tls {
            None => self.http(io, answer).await,
            Some(config) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
                let tls = tokio::time::timeout(s.tls_handshake_timeout, acceptor.accept(io))
                    .await
                    .map_err(|_| "TLS handshake timed out")??;
                self.http(tls, answer).await
            }
        }
    }

    /// The client, and the bytes read past a PROXY header (or while looking for one).
    async fn opening(
        &self,
        tcp: &mut TcpStream,
        from_proxy: bool,
    ) -> std::io::Result<(Peer, Vec<u8>)> {
        let direct = Peer {
            client: self.addr,
            proxy: None,
        };
        // Anyone else's PROXY header is not believed: it reaches hyper as a bad request.
        if !from_proxy || self.port.client_address != ClientAddress::ProxyProtocol {
            return Ok((direct, Vec::new()));
        }
        let opening = proxy::read_opening(tcp).await?;
        let peer = match opening.client {
            Some(client) => Peer {
                client,
                proxy: Some(self.addr),
            },
            None => direct,
        };
        Ok((peer, opening.rest))
    }

    async fn http<I, S, B>(
        mut self,
        io: I,
        answer: Answer<S>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
    where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
        S: tower_service::Service<Request<Incoming>, Response = Response<B>>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let service = hyper::service::service_fn(move |req| answer.clone().call(req));
        let mut http = http1::Builder::new();
        // Our own deadlines (`overdue`) cover the head from the accept and the idle wait;
        // hyper's would also close idle keep-alive connections at the header deadline.
        http.header_read_timeout(None)
            .keep_alive(true)
            .max_buf_size(self.port.max_head_bytes.max(8192));
        let conn = http
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        let mut conn = std::pin::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => return r.map_err(Into::into),
            _ = self.closing.wait_for(|c| *c) => {}
        }
        conn.as_mut().graceful_shutdown();
        conn.await.map_err(Into::into)
    }
}

/// Resolves (with the reason) when the connection has missed a deadline: its request head
/// not in within `header_timeout` of its start (the accept, or the first byte after an idle
/// spell), or idle for `idle_timeout` between requests. Never while a request is answered.
async fn overdue(activity: &Activity, s: &Settings) -> &'static str {
    let header = s.header_timeout.as_millis() as u64;
    let idle = s.idle_timeout.as_millis() as u64;
    loop {
        let (head_since, last_io) = activity.snapshot();
        let now = activity.now_ms();
        let (due, why) = match head_since {
            IN_REQUEST => (now + header, ""),
            0 => (last_io + idle, "idle keep-alive connection timed out"),
            since => (since - 1 + header, "request headers not received in time"),
        };
        if head_since != IN_REQUEST && now >= due {
            return why;
        }
        let at = activity.start() + Duration::from_millis(due);
        tokio::select! {
            () = tokio::time::sleep_until(at.into()) => {}
            () = activity.changed.notified() => {}
        }
    }
}

/// The per-request side of a connection: marks the head as in, counts requests in flight
/// per client behind a proxy, then calls the port's service.
struct Answer<S> {
    inner: S,
    peer: Peer,
    per_request: bool,
    table: Arc<Table>,
    headers: HeadersMark,
    activity: Arc<Activity>,
    settings: Arc<Settings>,
}

impl<S: Clone> Clone for Answer<S> {
    fn clone(&self) -> Self {
        Answer {
            inner: self.inner.clone(),
            peer: self.peer,
            per_request: self.per_request,
            table: self.table.clone(),
            headers: self.headers.clone(),
            activity: self.activity.clone(),
            settings: self.settings.clone(),
        }
    }
}

type Answered<B> = Response<Either<B, Full<Bytes>>>;

impl<S, B> Answer<S>
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
{
    async fn call(mut self, mut req: Request<Incoming>) -> Result<Answered<B>, S::Error> {
        self.activity.request_started();
        self.headers.done();
        let mut peer = self.peer;
        let _in_flight = if self.per_request {
            let forwarded = req
                .headers()
                .get_all("x-forwarded-for")
                .iter()
                .map(|v| v.as_bytes());
            let client = proxy::forwarded_client(forwarded, &self.settings.trusted_proxies)
                .unwrap_or(peer.client.ip());
            peer.client = SocketAddr::new(client, 0);
            let max = self.settings.max_connections_per_address;
            match self.table.claim_request(client, max) {
                Some(slot) => Some(slot),
                None => {
                    self.activity.request_answered();
                    return Ok(too_many(max));
                }
            }
        } else {
            None
        };
        req.extensions_mut().insert(peer);
        std::future::poll_fn(|cx| self.inner.poll_ready(cx)).await?;
        let resp = self.inner.call(req).await?;
        // A 101 hands the socket to the upgrade's owner: no more requests, no deadlines.
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            self.activity.request_answered();
        }
        Ok(resp.map(Either::Left))
    }
}

fn too_many<B>(max: usize) -> Answered<B> {
    let text = format!(
        "Too many requests in flight from your address (at most {max}); retry when some finish\n"
    );
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(text))));
    *resp.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    resp
}
