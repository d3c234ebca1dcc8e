//! The web port behind a reverse proxy: `X-Forwarded-For` from a trusted proxy names the
//! client, and the per-address cap counts that client's requests in flight (its connections
//! are the proxy's). Real sockets on loopback; a service that holds each request until told.

use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use kiln_listener::{Peer, Port, Settings};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Semaphore, watch};

/// Only there so a broken build fails instead of hanging; nothing is timed.
const GUARD: Duration = Duration::from_secs(25);

/// Answers each request once a permit is released; counts requests that got in.
#[derive(Clone)]
struct Held {
    entered: Arc<AtomicUsize>,
    release: Arc<Semaphore>,
}

impl tower_service::Service<Request<Incoming>> for Held {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let held = self.clone();
        let client = req.extensions().get::<Peer>().map(|p| p.client.ip());
        Box::pin(async move {
            held.entered.fetch_add(1, Ordering::SeqCst);
            held.release.acquire().await.unwrap().forget();
            let text = format!("client {client:?}\n");
            Ok(Response::new(Full::new(Bytes::from(text))))
        })
    }
}

async fn connect_from(host: u8, to: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(Ipv4Addr::new(127, 0, 0, host).into(), 0))
        .unwrap();
    sock.connect(to).await.unwrap()
}

async fn send(s: &mut TcpStream, forwarded_for: &str) {
    let req = format!(
        "GET / HTTP/1.1\r\nHost: kiln\r\nX-Forwarded-For: {forwarded_for}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
}

async fn answer(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    tokio::time::timeout(GUARD, s.read_to_end(&mut got))
        .await
        .expect("an answer")
        .unwrap();
    String::from_utf8_lossy(&got).into_owned()
}

async fn wait_entered(entered: &AtomicUsize, n: usize) {
    tokio::time::timeout(GUARD, async {
        while entered.load(Ordering::SeqCst) < n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{n} requests never got in"));
}

#[tokio::test]
async fn behind_a_trusted_proxy_requests_in_flight_are_capped_per_forwarded_client() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let settings = Settings {
        max_connections_per_address: 2,
        trusted_proxies: vec!["127.0.0.1/32".parse().unwrap()],
        ..Settings::default()
    };
    let (_tx, rx) = watch::channel(Arc::new(settings));
    let held = Held {
        entered: Arc::new(AtomicUsize::new(0)),
        release: Arc::new(Semaphore::new(0)),
    };
    let service = held.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(kiln_listener::serve(
        listener,
        Port::WEB,
        rx,
        move |_| service.clone(),
        async move {
            let _ = stopped.await;
        },
    ));

    // Two requests for 192.0.2.5 through the proxy (127.0.0.1) are in flight ...
    let mut first = connect_from(1, addr).await;
    send(&mut first, "198.51.100.1, 192.0.2.5").await;
    wait_entered(&held.entered, 1).await;
    let mut second = connect_from(1, addr).await;
    send(&mut second, "192.0.2.5").await;
    wait_entered(&held.entered, 2).await;
    // ... so its third is refused, though the proxy's connections are not capped ...
    let mut third = connect_from(1, addr).await;
    send(&mut third, "192.0.2.5").await;
    let refused = answer(&mut third).await;
    assert!(refused.starts_with("HTTP/1.1 429"), "{refused}");
    // ... while another client behind the same proxy gets in,
    let mut other = connect_from(1, addr).await;
    send(&mut other, "192.0.2.6").await;
    wait_entered(&held.entered, 3).await;
    // and a client that is not a proxy is not believed: it is itself, not 192.0.2.5.
    let mut liar = connect_from(2, addr).await;
    send(&mut liar, "192.0.2.5").await;
    wait_entered(&held.entered, 4).await;

    held.release.add_permits(4);
    let a = answer(&mut first).await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    assert!(
        a.contains("client Some(192.0.2.5)"),
        "the service sees the forwarded client: {a}"
    );
    let a = answer(&mut liar).await;
    assert!(a.contains("client Some(127.0.0.2)"), "{a}");
    for s in [&mut second, &mut other] {
        assert!(answer(s).await.starts_with("HTTP/1.1 200"));
    }
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
