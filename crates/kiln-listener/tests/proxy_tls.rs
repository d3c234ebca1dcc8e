//! A TLS port behind a PROXY-protocol load balancer (HAProxy in TCP mode in front of
//! `wss://`): the PROXY header comes first, in clear, then the TLS handshake. Real sockets on
//! loopback.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use kiln_listener::{Peer, Port, Settings};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Only there so a broken build fails instead of hanging; nothing is timed.
const GUARD: Duration = Duration::from_secs(25);

/// Answers with the client address its connection was made for.
#[derive(Clone)]
struct WhoAmI(Peer);

impl tower_service::Service<Request<Incoming>> for WhoAmI {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<Incoming>) -> Self::Future {
        let text = format!("client {} proxy {:?}\n", self.0.client, self.0.proxy);
        Box::pin(async move { Ok(Response::new(Full::new(Bytes::from(text)))) })
    }
}

struct Tls {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

fn tls() -> Tls {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Tls {
        server: Arc::new(server),
        client: Arc::new(client),
    }
}

async fn start(settings: Settings) -> (SocketAddr, watch::Sender<Arc<Settings>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = watch::channel(Arc::new(settings));
    tokio::spawn(kiln_listener::serve(
        listener,
        Port::WORKERS,
        rx,
        WhoAmI,
        std::future::pending(),
    ));
    (addr, tx)
}

#[tokio::test]
async fn a_proxy_protocol_header_before_tls_names_the_client() {
    let tls = tls();
    let (addr, _settings) = start(Settings {
        tls: Some(tls.server.clone()),
        trusted_proxies: vec!["127.0.0.1/32".parse().unwrap()],
        ..Settings::default()
    })
    .await;
    let client: SocketAddr = "192.0.2.44:5555".parse().unwrap();
    let header = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (client, addr),
    )
    .build()
    .unwrap();
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&header).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let mut stream = tokio_rustls::TlsConnector::from(tls.client)
        .connect(name, tcp)
        .await
        .expect("the TLS handshake follows the PROXY header");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(GUARD, stream.read_to_end(&mut got))
        .await
        .expect("an answer")
        .unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.contains("client 192.0.2.44:5555 proxy Some(127.0.0.1:"),
        "{text}"
    );
}

#[tokio::test]
async fn a_tls_client_that_never_finishes_its_handshake_is_closed() {
    let tls = tls();
    let (addr, _settings) = start(Settings {
        tls: Some(tls.server),
        header_timeout: Duration::from_secs(1),
        tls_handshake_timeout: Duration::from_secs(600),
        ..Settings::default()
    })
    .await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    // The start of a TLS record header, then nothing.
    tcp.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(GUARD, tcp.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the server closes the connection: {read:?}"
    );
}
