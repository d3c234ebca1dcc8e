//! Connection hygiene on both ports of a real in-process master, over loopback sockets:
//! header deadlines, the head size cap, connection caps (total and per address), the PROXY
//! protocol from trusted proxies, and reconfig of caps, timeouts and the TLS certificate.
//! Source addresses 127.0.0.x stand for different clients (all of 127/8 is loopback).

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use kiln_testkit::swarm::{self, ProxyVersion, SwarmConfig, proxied_client};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

/// Far longer than any deadline under test: only there so a broken build fails instead of
/// hanging. Nothing asserts how fast anything happened.
const GUARD: Duration = Duration::from_secs(25);

fn config(master_args: &str, workers: &[String]) -> String {
    let names: Vec<String> = workers.iter().map(|w| format!("\"{w}\"")).collect();
    let workers: Vec<String> = workers
        .iter()
        .map(|w| format!("worker(\"{w}\", password = secret(\"worker\"))"))
        .collect();
    format!(
        r#"
MASTER = master({master_args})
WORKERS = [{}]
BUILDERS = [builder(name = "b", workers = [{}], steps = [shell(name = "say", command = "echo hi")])]
SCHEDULERS = [force("force", builder_names = ["b"])]
"#,
        workers.join(", "),
        names.join(", ")
    )
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("w{i}")).collect()
}

/// A TCP connection to `to` from source address 127.0.0.`host`.
async fn connect_from(host: u8, to: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(Ipv4Addr::new(127, 0, 0, host).into(), 0))
        .unwrap();
    sock.connect(to).await.unwrap()
}

/// A connection that has sent part of a request's headers and stops there.
async fn half_sent(host: u8, to: SocketAddr) -> TcpStream {
    let mut s = connect_from(host, to).await;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: kiln\r\nX-Slow: ")
        .await
        .unwrap();
    s
}

/// Reads until the server closes the connection; what it sent first. Panics if the server
/// keeps it open.
async fn read_until_closed(s: &mut TcpStream, what: &str) -> Vec<u8> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(GUARD, async {
        loop {
            let mut buf = [0u8; 4096];
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server kept {what} open");
    got
}

/// Whether `s` is still open now (nothing to read and no EOF).
fn is_open(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 16];
    matches!(s.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Waits until the server closes one of `conns`; its index.
async fn first_closed(conns: &mut [TcpStream]) -> usize {
    let found = tokio::time::timeout(GUARD, async {
        loop {
            if let Some(i) = conns.iter_mut().position(|s| !is_open(s)) {
                return i;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    found.expect("the server closed none of the connections")
}

/// `GET /health` from 127.0.0.`host`: the status line.
async fn health_from(host: u8, web: SocketAddr) -> String {
    let mut s = connect_from(host, web).await;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let got = read_until_closed(&mut s, "a /health request").await;
    String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_finish_their_headers_are_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = master_dir(tmp.path(), &config("header_timeout_secs = 1", &names(1)));
    let master = start_master(&dir).await;
    for (port, addr) in [("web", master.web_addr()), ("worker", master.worker_addr())] {
        let mut slow = half_sent(1, addr).await;
        let mut silent = connect_from(1, addr).await;
        let got = read_until_closed(
            &mut slow,
            &format!("a half-sent request on the {port} port"),
        )
        .await;
        assert!(got.is_empty(), "nothing is answered: {got:?}");
        read_until_closed(
            &mut silent,
            &format!("a silent connection on the {port} port"),
        )
        .await;
    }
    master.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_web_connection_is_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let args = "idle_timeout_secs = 1, header_timeout_secs = 600";
    let dir = master_dir(tmp.path(), &config(args, &names(1)));
    let master = start_master(&dir).await;
    let mut s = connect_from(1, master.web_addr()).await;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: kiln\r\n\r\n")
        .await
        .unwrap();
    let got = read_until_closed(&mut s, "an idle keep-alive connection").await;
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "the request is answered first: {text}"
    );
    master.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_authorization_header_is_refused_with_431() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = master_dir(tmp.path(), &config("", &names(1)));
    let master = start_master(&dir).await;
    let mut s = connect_from(1, master.worker_addr()).await;
    let big = "A".repeat(200_000);
    let req = format!(
        "GET / HTTP/1.1\r\nHost: kiln\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Authorization: Basic {big}\r\n\r\n"
    );
    // The server may answer and close before all of it is written.
    let _ = s.write_all(req.as_bytes()).await;
    let got = read_until_closed(&mut s, "a request with a 200 KB header").await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    master.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_caps_health_and_worker_logins_still_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let args = "max_connections = 12, max_connections_per_address = 4, header_timeout_secs = 600";
    let dir = master_dir(tmp.path(), &config(args, &names(1)));
    let master = start_master(&dir).await;
    let web = master.web_addr();

    // Per address: of five connections from 127.0.0.2, one (whichever the server took
    // last) is closed at once.
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(half_sent(2, web).await);
    }
    let refused = first_closed(&mut held).await;
    held.remove(refused);
    for (i, s) in held.iter_mut().enumerate() {
        assert!(is_open(s), "connection {i} from 127.0.0.2 was closed too");
    }

    // In total: 12 half-sent connections from three addresses hold the cap ...
    for host in [3, 4] {
        for _ in 0..4 {
            held.push(half_sent(host, web).await);
        }
    }
    // ... and a real client still gets its answer: the oldest half-sent one made room.
    assert_eq!(health_from(9, web).await, "HTTP/1.1 200 OK");
    read_until_closed(&mut held[0], "the oldest half-sent connection at the cap").await;
    for (i, s) in held.iter_mut().enumerate().skip(1) {
        assert!(is_open(s), "half-sent connection {i} was closed too");
    }

    // The worker port likewise: a worker logs in while half-sent connections hold the cap.
    let mut held_workers = Vec::new();
    for host in [5, 6, 7] {
        for _ in 0..4 {
            held_workers.push(half_sent(host, master.worker_addr()).await);
        }
    }
    let sw = swarm::spawn(SwarmConfig::new(master.worker_addr(), 1, PASSWORD));
    assert!(
        sw.wait_attached(1, Duration::from_millis(0), GUARD).await,
        "the worker did not attach: {:?}",
        sw.stats.errors()
    );
    sw.stop().await;
    master.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_behind_a_proxy_protocol_proxy_attach_with_their_real_addresses() {
    let tmp = tempfile::tempdir().unwrap();
    let mut workers = names(57);
    workers.extend(["direct0".to_string(), "spy".to_string()]);
    // The per-address cap is far below 57: it must count the real clients, not the proxy.
    let args = r#"trusted_proxies = ["127.0.0.1"], max_connections_per_address = 4"#;
    let dir = master_dir(tmp.path(), &config(args, &workers));
    let master = start_master(&dir).await;
    let via_proxy = |first, count, version| {
        swarm::spawn(SwarmConfig {
            first,
            proxy_protocol: Some(version),
            ..SwarmConfig::new(master.worker_addr(), count, PASSWORD)
        })
    };
    let v1 = via_proxy(0, 29, ProxyVersion::V1);
    let v2 = via_proxy(29, 28, ProxyVersion::V2);
    for (sw, n) in [(&v1, 29), (&v2, 28)] {
        assert!(
            sw.wait_attached(n, Duration::from_millis(0), GUARD).await,
            "not all attached: {:?}",
            sw.stats.errors()
        );
    }
    for i in 0..57 {
        let conn = registered(&master, &format!("w{i}")).await;
        assert_eq!(conn.peer(), proxied_client(i), "w{i}'s address");
    }

    // The trusted proxy's own connection without a header is taken as direct.
    let direct = swarm::spawn(SwarmConfig {
        name_prefix: "direct".into(),
        ..SwarmConfig::new(master.worker_addr(), 1, PASSWORD)
    });
    assert!(
        direct
            .wait_attached(1, Duration::from_millis(0), GUARD)
            .await,
        "the proxy's own connection did not attach: {:?}",
        direct.stats.errors()
    );
    let conn = registered(&master, "direct0").await;
    assert_eq!(conn.peer().ip(), Ipv4Addr::LOCALHOST);

    // Anyone else's PROXY header is not believed: the handshake never happens.
    let mut s = connect_from(2, master.worker_addr()).await;
    let mut forged =
        swarm::proxy_header(ProxyVersion::V1, proxied_client(1000), master.worker_addr());
    forged.extend(login_request("spy"));
    s.write_all(&forged).await.unwrap();
    let answer = first_line(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(master.workers().get("spy").is_none());

    direct.stop().await;
    v1.stop().await;
    v2.stop().await;
    master.shutdown().await;
}

/// `name`'s connection, once the master has registered it (the swarm counts a worker
/// attached when it has answered the attach sequence, a moment before that).
async fn registered(master: &kiln::master::Master, name: &str) -> Arc<dyn kiln_remote::Connection> {
    let found = tokio::time::timeout(GUARD, async {
        loop {
            match master.workers().get(name) {
                Some(c) => return c,
                None => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("{name} never registered"))
}

/// A WebSocket upgrade request with `name`'s credentials.
fn login_request(name: &str) -> Vec<u8> {
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{name}:{PASSWORD}"));
    format!(
        "GET / HTTP/1.1\r\nHost: kiln\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Authorization: Basic {token}\r\n\r\n"
    )
    .into_bytes()
}

/// The first line the server sends.
async fn first_line(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(GUARD, async {
        while !got.ends_with(b"\r\n") {
            match s.read(&mut byte).await {
                Ok(1) => got.push(byte[0]),
                _ => break,
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer from the server");
    String::from_utf8_lossy(&got).trim_end().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconfig_applies_new_caps_and_timeouts_without_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = master_dir(tmp.path(), &config("header_timeout_secs = 600", &names(1)));
    let master = start_master(&dir).await;
    let tighter = "header_timeout_secs = 1, max_connections_per_address = 1";
    std::fs::write(dir.join("master.star"), config(tighter, &names(1))).unwrap();
    let report = master.reconfig().await.expect("the new config is good");
    assert!(!report.summary.contains("TLS"), "{}", report.summary);
    for (port, addr) in [("web", master.web_addr()), ("worker", master.worker_addr())] {
        let mut first = half_sent(2, addr).await;
        let mut second = half_sent(2, addr).await;
        read_until_closed(
            &mut second,
            &format!("a second connection from one address on the {port} port"),
        )
        .await;
        read_until_closed(
            &mut first,
            &format!("a half-sent request on the {port} port"),
        )
        .await;
    }
    master.shutdown().await;
}

/// A self-signed certificate for 127.0.0.1, written as `cert.pem` and `key.pem` in `dir`;
/// its DER.
fn write_certificate(dir: &Path) -> Vec<u8> {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    std::fs::write(dir.join("cert.pem"), ck.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
    ck.cert.der().to_vec()
}

/// The certificate the worker port serves now (the client trusts both `known` ones).
async fn served_certificate(addr: SocketAddr, known: &[&[u8]]) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    for der in known {
        roots
            .add(rustls::pki_types::CertificateDer::from(der.to_vec()))
            .unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let tls = tokio::time::timeout(GUARD, connector.connect(name, tcp))
        .await
        .expect("TLS handshake in time")
        .expect("TLS handshake");
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconfig_serves_the_new_tls_certificate_and_keeps_it_over_a_bad_one() {
    let tmp = tempfile::tempdir().unwrap();
    let args = r#"tls_cert = "cert.pem", tls_key = "key.pem""#;
    let dir = master_dir(tmp.path(), &config(args, &names(1)));
    let old = write_certificate(&dir);
    let master = start_master(&dir).await;
    let addr = master.worker_addr();
    let new = write_certificate(&dir);
    assert!(
        served_certificate(addr, &[&old, &new]).await == old,
        "the first certificate is served at start"
    );

    let report = master.reconfig().await.expect("reconfig");
    assert_eq!(
        report.applied,
        ["TLS certificate and key (their files changed)"],
        "the renewed files are reported as applied: {}",
        report.summary
    );
    assert!(
        served_certificate(addr, &[&old, &new]).await == new,
        "after the reconfig the new certificate is served"
    );

    std::fs::write(dir.join("key.pem"), "not a key\n").unwrap();
    let report = master.reconfig().await.expect("the config itself is fine");
    assert!(report.applied.is_empty(), "{}", report.summary);
    assert!(
        report
            .summary
            .contains("TLS certificate and key files NOT applied")
            && report.summary.contains("key.pem"),
        "the report says the TLS files were not used: {}",
        report.summary
    );
    // Unchanged files are not reported at all.
    let report = master.reconfig().await.expect("reconfig");
    assert!(report.applied.is_empty(), "{}", report.summary);
    assert!(
        served_certificate(addr, &[&old, &new]).await == new,
        "a bad key file leaves the certificate in use"
    );
    master.shutdown().await;
}
