//! The worker's connection loop against a master played by the test over a real
//! loopback WebSocket: the handshake, the attach requests, bad input, dead
//! peers, reconnects, backoff on a wrong password, and shutdown.
#![allow(clippy::result_large_err)] // tungstenite's handshake callback signature

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use kiln_proto::args::{Args, WorkerSettings};
use kiln_proto::{Limits, Message, Op, Response, Value};
use kiln_worker::config::WorkerConfig;
use kiln_worker::connection::{StopRequest, serve};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse, Request, Response as HttpResponse,
};
use tokio_tungstenite::tungstenite::http::StatusCode;

type MasterSide = WebSocketStream<TcpStream>;

const T: Duration = Duration::from_secs(10);

/// Accepts one worker connection, checking Basic auth for `name:pass`; a wrong
/// password gets a 401 and `None`.
async fn accept(listener: &TcpListener, expected: &str) -> Option<MasterSide> {
    let (tcp, _) = timeout(T, listener.accept())
        .await
        .expect("worker connects")
        .unwrap();
    let expected = format!("Basic {}", base64_encode(expected));
    let check = move |req: &Request, resp: HttpResponse| -> Result<HttpResponse, ErrorResponse> {
        let ok = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            == Some(expected.as_str());
        if ok {
            Ok(resp)
        } else {
            let mut e = ErrorResponse::new(Some("Unauthorized".into()));
            *e.status_mut() = StatusCode::UNAUTHORIZED;
            Err(e)
        }
    };
    tokio_tungstenite::accept_hdr_async(tcp, check).await.ok()
}

fn base64_encode(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

async fn send(ws: &mut MasterSide, seq: i64, op: Op) {
    ws.send(WsMessage::Binary(
        kiln_proto::encode(&Message::Request {
            seq_number: seq,
            op,
        })
        .into(),
    ))
    .await
    .unwrap();
}

/// The next protocol message from the worker (pings/pongs skipped).
async fn recv(ws: &mut MasterSide) -> Message {
    loop {
        let frame = timeout(T, ws.next())
            .await
            .expect("worker answers in time")
            .expect("connection open")
            .unwrap();
        if let WsMessage::Binary(b) = frame {
            return kiln_proto::decode(&b, &Limits::default())
                .expect("worker sends valid messages");
        }
    }
}

async fn expect_response(ws: &mut MasterSide, seq: i64) -> Response {
    match recv(ws).await {
        Message::Response(r) => {
            assert_eq!(r.seq_number, seq, "responses echo the request's seq_number");
            r
        }
        other => panic!("expected a response to {seq}, got {other:?}"),
    }
}

fn config(dir: &std::path::Path, port: u16) -> WorkerConfig {
    let mut c = WorkerConfig::for_tests(dir);
    c.master_port = port;
    c.name = "w1".into();
    c.password = "pass1".into();
    c.keepalive = 1;
    c
}

#[tokio::test]
async fn attach_requests_bad_input_and_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("info")).unwrap();
    std::fs::write(dir.path().join("info/admin"), "Ada <ada@example.invalid>\n").unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (_stop_tx, stop) = watch::channel(StopRequest::Running);
    let worker = tokio::spawn(serve(config(dir.path(), port), stop));

    let mut ws = accept(&listener, "w1:pass1")
        .await
        .expect("good credentials are accepted");
    send(
        &mut ws,
        0,
        Op::Print {
            message: "attached".into(),
        },
    )
    .await;
    assert_eq!(expect_response(&mut ws, 0).await, Response::ok(0));

    send(&mut ws, 1, Op::GetWorkerInfo).await;
    let info = expect_response(&mut ws, 1).await;
    assert!(!info.is_exception);
    let map = info.result.as_map().expect("worker info is a map");
    let get = |k: &str| {
        map.iter()
            .find(|(key, _)| key.as_str() == Some(k))
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        get("admin"),
        Some(Value::from("Ada <ada@example.invalid>\n"))
    );
    assert_eq!(
        get("basedir"),
        Some(Value::from(dir.path().to_str().unwrap()))
    );
    assert_eq!(get("delete_leftover_dirs"), Some(Value::from(0)));
    assert_eq!(get("worker_commands").unwrap().as_map().unwrap().len(), 14);
    // Kiln's extension key carries the doctor's results (ignored by a Buildbot master).
    let kiln = get("kiln").expect("kiln key");
    let kiln = kiln.as_map().unwrap();
    let doctor = kiln
        .iter()
        .find(|(k, _)| k.as_str() == Some("doctor"))
        .map(|(_, v)| v)
        .expect("doctor results");
    let checks = doctor.as_array().unwrap();
    assert!(
        checks.len() >= 5,
        "tools, headers and resources are checked: {checks:?}"
    );
    for c in checks {
        let c = c.as_map().unwrap();
        let status = c
            .iter()
            .find(|(k, _)| k.as_str() == Some("status"))
            .unwrap()
            .1
            .as_str()
            .unwrap();
        assert!(
            ["OK", "MISSING", "UNREACHABLE", "LOW", "UNKNOWN"].contains(&status),
            "{status}"
        );
    }

    send(&mut ws, 2, Op::SetWorkerSettings(WorkerSettings::default())).await;
    assert_eq!(expect_response(&mut ws, 2).await, Response::ok(2));

    // An op the worker does not know gets Buildbot's exception text.
    send(
        &mut ws,
        3,
        Op::Unknown {
            op: "frobnicate".into(),
        },
    )
    .await;
    let r = expect_response(&mut ws, 3).await;
    assert!(r.is_exception);
    assert_eq!(
        r.error_text().as_deref(),
        Some("Command frobnicate does not exist.")
    );

    // An unknown command is refused at start, and never completes.
    let start = Op::StartCommand {
        builder_name: None,
        command_id: "9".into(),
        command_name: "teleport".into(),
        args: Args::default(),
    };
    send(&mut ws, 4, start).await;
    let r = expect_response(&mut ws, 4).await;
    assert_eq!(
        r.error_text().as_deref(),
        Some("(command 9): unrecognized WorkerCommand 'teleport'")
    );

    // Missing required args: Buildbot's wording.
    let start = Op::StartCommand {
        builder_name: Some("b1".into()),
        command_id: "10".into(),
        command_name: "shell".into(),
        args: Args::from_pairs([("workdir", "/tmp")]),
    };
    send(&mut ws, 5, start).await;
    let r = expect_response(&mut ws, 5).await;
    assert_eq!(
        r.error_text().as_deref(),
        Some("WorkerShellCommand is missing args: command")
    );

    // A map without seq_number is dropped silently; a request missing a key gets an exception.
    let mut no_seq = Vec::new();
    rmp::encode::write_map_len(&mut no_seq, 1).unwrap();
    rmp::encode::write_str(&mut no_seq, "op").unwrap();
    rmp::encode::write_str(&mut no_seq, "print").unwrap();
    ws.send(WsMessage::Binary(no_seq.into())).await.unwrap();
    let mut no_command_id = Vec::new();
    rmp::encode::write_map_len(&mut no_command_id, 2).unwrap();
    for s in ["op", "interrupt_command", "seq_number"] {
        rmp::encode::write_str(&mut no_command_id, s).unwrap();
    }
    rmp::encode::write_sint(&mut no_command_id, 6).unwrap();
    ws.send(WsMessage::Binary(no_command_id.into()))
        .await
        .unwrap();
    let r = expect_response(&mut ws, 6).await;
    assert_eq!(
        r.error_text().as_deref(),
        Some("'message did not contain obligatory \"command_id\" key'")
    );

    // Text frames are ignored; an interrupt for an unknown command is still answered.
    ws.send(WsMessage::Text("hello".into())).await.unwrap();
    send(
        &mut ws,
        7,
        Op::InterruptCommand {
            builder_name: None,
            command_id: "77".into(),
            why: "test".into(),
        },
    )
    .await;
    assert_eq!(expect_response(&mut ws, 7).await, Response::ok(7));

    send(&mut ws, 8, Op::Keepalive).await;
    assert_eq!(expect_response(&mut ws, 8).await, Response::ok(8));

    send(&mut ws, 9, Op::Shutdown).await;
    assert_eq!(expect_response(&mut ws, 9).await, Response::ok(9));
    let result = timeout(T, worker)
        .await
        .expect("shutdown ends the worker")
        .unwrap();
    assert!(result.is_ok(), "shutdown is a clean exit: {result:?}");
}

#[tokio::test]
async fn malformed_frame_closes_the_connection_and_the_worker_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop_tx, stop) = watch::channel(StopRequest::Running);
    let worker = tokio::spawn(serve(config(dir.path(), port), stop));

    let mut ws = accept(&listener, "w1:pass1").await.unwrap();
    // 0xc1 is never valid msgpack.
    ws.send(WsMessage::Binary(vec![0xc1, 0x00].into()))
        .await
        .unwrap();
    let end = timeout(T, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(WsMessage::Close(_))) => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(
        end.is_ok(),
        "the worker drops a connection that sent garbage"
    );

    // It reconnects by itself and serves the new session.
    let mut ws = accept(&listener, "w1:pass1")
        .await
        .expect("worker reconnects");
    send(
        &mut ws,
        0,
        Op::Print {
            message: "attached".into(),
        },
    )
    .await;
    assert_eq!(
        expect_response(&mut ws, 0).await,
        Response::ok(0),
        "a new session numbers from 0"
    );

    stop_tx.send(StopRequest::Now).unwrap();
    timeout(T, worker)
        .await
        .expect("stop ends the worker")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_silent_master_is_noticed_and_the_worker_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop_tx, stop) = watch::channel(StopRequest::Running);
    let worker = tokio::spawn(serve(config(dir.path(), port), stop));

    // Accept, then never read again: pings go unanswered (keepalive = 1 s).
    let silent = accept(&listener, "w1:pass1").await.unwrap();
    let began = Instant::now();
    let again = accept(&listener, "w1:pass1").await;
    assert!(
        again.is_some(),
        "the worker reconnects after declaring the silent master dead"
    );
    assert!(
        began.elapsed() >= Duration::from_secs(2),
        "not before the liveness timeout"
    );
    drop(silent);

    stop_tx.send(StopRequest::Now).unwrap();
    timeout(T, worker).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn a_wrong_password_backs_off_and_maxretries_gives_up() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut cfg = config(dir.path(), port);
    cfg.password = "wrong".into();
    cfg.maxretries = Some(4);
    let (_stop_tx, stop) = watch::channel(StopRequest::Running);
    let worker = tokio::spawn(serve(cfg, stop));

    let mut attempts = Vec::new();
    for _ in 0..4 {
        assert!(
            accept(&listener, "w1:pass1").await.is_none(),
            "a wrong password is refused"
        );
        attempts.push(Instant::now());
    }
    let result = timeout(T, worker)
        .await
        .expect("maxretries ends the worker")
        .unwrap();
    let err = result.expect_err("giving up is an error exit");
    assert!(err.to_string().contains("gave up after 4"), "{err}");
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps[0] >= Duration::from_millis(900),
        "no immediate retry after a 401: {gaps:?}"
    );
    assert!(
        gaps[2] > gaps[0],
        "the delay grows after repeated 401s (unlike buildbot-worker's ~2 s): {gaps:?}"
    );
}

/// `wss://` with the farm's own CA: trusted with `ca_file`, refused without it.
#[tokio::test]
async fn tls_master_with_a_private_ca() {
    use std::sync::Arc;
    use tokio_rustls::rustls;

    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("farm-ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();

    let mut cfg = config(dir.path(), port);
    cfg.master_host = "localhost".into();
    cfg.use_tls = true;

    // Without the CA the worker must refuse the master's certificate.
    let mut untrusting = cfg.clone();
    untrusting.maxretries = Some(1);
    let (_tx, stop) = watch::channel(StopRequest::Running);
    let refused = tokio::spawn(serve(untrusting, stop));
    let (tcp, _) = timeout(T, listener.accept()).await.unwrap().unwrap();
    assert!(
        acceptor.accept(tcp).await.is_err(),
        "the handshake fails: unknown issuer"
    );
    assert!(timeout(T, refused).await.unwrap().unwrap().is_err());

    cfg.ca_file = Some(ca_file);
    let (stop_tx, stop) = watch::channel(StopRequest::Running);
    let worker = tokio::spawn(serve(cfg, stop));
    let (tcp, _) = timeout(T, listener.accept()).await.unwrap().unwrap();
    let tls = acceptor
        .accept(tcp)
        .await
        .expect("the worker trusts the farm CA");
    let mut ws = tokio_tungstenite::accept_async(tls).await.unwrap();
    ws.send(WsMessage::Binary(
        kiln_proto::encode(&Message::Request {
            seq_number: 0,
            op: Op::Print {
                message: "attached".into(),
            },
        })
        .into(),
    ))
    .await
    .unwrap();
    let frame = timeout(T, ws.next()).await.unwrap().unwrap().unwrap();
    let WsMessage::Binary(b) = frame else {
        panic!("expected a binary message, got {frame:?}")
    };
    assert_eq!(
        kiln_proto::decode(&b, &Limits::default()).unwrap(),
        Message::Response(Response::ok(0))
    );
    stop_tx.send(StopRequest::Now).unwrap();
    timeout(T, worker).await.unwrap().unwrap().unwrap();
}

/// Whether any process has `marker` in its command line.
fn alive_with(marker: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            return false;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // Zombies are dead already; they only wait to be reaped.
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        !zombie && String::from_utf8_lossy(&cmdline).contains(marker)
    })
}

/// A build whose connection drops keeps running for `disconnect_grace`, then its whole
/// process tree is killed: an orphan must not write into a directory that the
/// master's retried build is about to use.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn commands_of_a_lost_session_are_killed_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut cfg = config(dir.path(), port);
    cfg.allow_root = true;
    cfg.disconnect_grace = 1.5;
    let policy = std::sync::Arc::new(kiln_worker::policy::from_config(&cfg).unwrap());
    let (stop_tx, stop) = watch::channel(StopRequest::Running);
    let worker = tokio::spawn(kiln_worker::connection::serve_with_policy(
        cfg, policy, stop,
    ));

    let marker = format!("1000.{}", std::process::id());
    let mut ws = accept(&listener, "w1:pass1").await.unwrap();
    let workdir = dir.path().join("b1/build");
    let args = Args::from_pairs([
        ("workdir", Value::from(workdir.to_str().unwrap())),
        (
            "command",
            Value::from(format!("sleep {marker} & echo started; wait")),
        ),
    ]);
    send(
        &mut ws,
        0,
        Op::StartCommand {
            builder_name: Some("b1".into()),
            command_id: "1".into(),
            command_name: "shell".into(),
            args,
        },
    )
    .await;
    assert_eq!(expect_response(&mut ws, 0).await, Response::ok(0));
    let deadline = Instant::now() + T;
    while !alive_with(&marker) {
        assert!(
            Instant::now() < deadline,
            "the build started its background process"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The master vanishes mid-build.
    drop(ws);
    let lost = Instant::now();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        alive_with(&marker),
        "within the grace period the build goes on"
    );
    while alive_with(&marker) {
        assert!(
            lost.elapsed() < Duration::from_secs(10),
            "the orphaned build was never killed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        lost.elapsed() >= Duration::from_millis(1400),
        "not before the grace period ended: {:?}",
        lost.elapsed()
    );

    stop_tx.send(StopRequest::Now).unwrap();
    timeout(T, worker).await.unwrap().unwrap().unwrap();
}

/// A new session's first command waits until builds of the lost session are dead,
/// however long their grace period.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_new_session_kills_orphans_before_its_first_command() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut cfg = config(dir.path(), port);
    cfg.allow_root = true;
    cfg.disconnect_grace = 3600.0;
    let policy = std::sync::Arc::new(kiln_worker::policy::from_config(&cfg).unwrap());
    let (stop_tx, stop) = watch::channel(StopRequest::Running);
    let worker = tokio::spawn(kiln_worker::connection::serve_with_policy(
        cfg, policy, stop,
    ));

    let marker = format!("1001.{}", std::process::id());
    let workdir = dir.path().join("b1/build");
    let shell = |cmd: String| {
        Args::from_pairs([
            ("workdir", Value::from(workdir.to_str().unwrap())),
            ("command", Value::from(cmd)),
        ])
    };
    let mut ws = accept(&listener, "w1:pass1").await.unwrap();
    send(
        &mut ws,
        0,
        Op::StartCommand {
            builder_name: None,
            command_id: "1".into(),
            command_name: "shell".into(),
            args: shell(format!("sleep {marker}")),
        },
    )
    .await;
    assert_eq!(expect_response(&mut ws, 0).await, Response::ok(0));
    let deadline = Instant::now() + T;
    while !alive_with(&marker) {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(ws);

    let mut ws = accept(&listener, "w1:pass1")
        .await
        .expect("the worker reconnects");
    assert!(
        alive_with(&marker),
        "a long grace period keeps the orphan alive while nothing else runs"
    );
    send(
        &mut ws,
        0,
        Op::StartCommand {
            builder_name: None,
            command_id: "1".into(),
            command_name: "shell".into(),
            args: shell("true".into()),
        },
    )
    .await;
    assert_eq!(expect_response(&mut ws, 0).await, Response::ok(0));
    assert!(
        !alive_with(&marker),
        "the orphan is dead before the new session's command starts"
    );
    // The new command (same id as the orphan's: ids restart per session) completes normally.
    loop {
        match recv(&mut ws).await {
            Message::Request {
                op:
                    Op::Complete {
                        command_id,
                        failure,
                    },
                ..
            } => {
                assert_eq!((command_id.as_str(), failure), ("1", None));
                break;
            }
            Message::Request { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    stop_tx.send(StopRequest::Now).unwrap();
    timeout(T, worker).await.unwrap().unwrap().unwrap();
}
