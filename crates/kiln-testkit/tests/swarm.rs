//! The swarm against a scripted master that runs Buildbot's attach sequence (spec §4.1).

use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use kiln_proto::args::Args;
use kiln_proto::update::UpdateItem;
use kiln_proto::{Limits, MapExt, Message, Op, Response, Value, text_of};
use kiln_testkit::swarm::{self, SwarmConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMsg;
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse, Request, Response as HsResponse,
};
use tokio_tungstenite::tungstenite::http::StatusCode;

type Ws = WebSocketStream<TcpStream>;

/// Accepts one connection; checks Basic auth against `password`; returns the worker name.
// The callback signature is tungstenite's; its large error type is not ours to box.
#[allow(clippy::result_large_err)]
async fn accept(l: &TcpListener, password: &str) -> Option<(String, Ws)> {
    let (s, _) = l.accept().await.unwrap();
    let mut name = None;
    let ws = tokio_tungstenite::accept_hdr_async(s, |req: &Request, resp: HsResponse| {
        let creds = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .and_then(|b| String::from_utf8(b).ok());
        match creds.as_deref().and_then(|c| c.split_once(':')) {
            Some((n, p)) if p == password => {
                name = Some(n.to_string());
                Ok(resp)
            }
            _ => {
                let mut e = ErrorResponse::new(Some("Unauthorized".into()));
                *e.status_mut() = StatusCode::UNAUTHORIZED;
                Err(e)
            }
        }
    })
    .await
    .ok()?;
    Some((name?, ws))
}

struct Conn {
    ws: Ws,
    seq: i64,
}

impl Conn {
    async fn send(&mut self, op: Op) -> i64 {
        let seq = self.seq;
        self.seq += 1;
        let bytes = kiln_proto::encode(&Message::Request {
            seq_number: seq,
            op,
        });
        self.ws.send(WsMsg::Binary(bytes.into())).await.unwrap();
        seq
    }

    async fn recv(&mut self) -> Message {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("worker answers")
                .unwrap()
                .unwrap();
            if let WsMsg::Binary(b) = m {
                return kiln_proto::decode(&b, &Limits::default()).unwrap();
            }
        }
    }

    async fn response(&mut self, seq: i64) -> Response {
        match self.recv().await {
            Message::Response(r) => {
                assert_eq!(
                    r.seq_number, seq,
                    "responses come in order for a sequential master"
                );
                assert!(
                    !r.is_exception,
                    "request {seq} failed: {:?}",
                    r.error_text()
                );
                r
            }
            other => panic!("expected the response to {seq}, got {other:?}"),
        }
    }

    /// Runs one command; returns its update items (after checking `complete`).
    async fn command(&mut self, name: &str, args: Args) -> Vec<UpdateItem> {
        let id = format!("cmd-{name}-{}", self.seq);
        let seq = self
            .send(Op::StartCommand {
                builder_name: None,
                command_id: id.clone(),
                command_name: name.into(),
                args,
            })
            .await;
        self.response(seq).await;
        let mut items = Vec::new();
        loop {
            match self.recv().await {
                Message::Request {
                    seq_number,
                    op:
                        Op::Update {
                            command_id,
                            items: it,
                        },
                } => {
                    assert_eq!(command_id, id);
                    items.extend(it);
                    self.ws
                        .send(WsMsg::Binary(
                            kiln_proto::encode(&Message::Response(Response::ok(seq_number))).into(),
                        ))
                        .await
                        .unwrap();
                }
                Message::Request {
                    seq_number,
                    op:
                        Op::Complete {
                            command_id,
                            failure,
                        },
                } => {
                    assert_eq!(command_id, id);
                    assert_eq!(failure, None, "{name} completes without a failure");
                    self.ws
                        .send(WsMsg::Binary(
                            kiln_proto::encode(&Message::Response(Response::ok(seq_number))).into(),
                        ))
                        .await
                        .unwrap();
                    return items;
                }
                other => panic!("unexpected message during {name}: {other:?}"),
            }
        }
    }
}

fn path_args(key: &str, v: Value) -> Args {
    Args::from_pairs([(key, v)])
}

/// Buildbot's attach sequence, checking every answer the way the 4.3 master does.
async fn attach(mut c: Conn, name: &str) -> Conn {
    let s = c
        .send(Op::Print {
            message: "attached".into(),
        })
        .await;
    c.response(s).await;
    let s = c.send(Op::GetWorkerInfo).await;
    let info = c.response(s).await.result;
    let info = info.as_map().expect("info is a map");
    let basedir = text_of(info.get_key("basedir").expect("basedir")).unwrap();
    assert!(
        basedir.ends_with(&format!("/{name}")),
        "basedir {basedir} names the worker"
    );
    assert_eq!(
        text_of(info.get_key("system").unwrap()).as_deref(),
        Some("posix")
    );
    assert_eq!(
        info.get_key("delete_leftover_dirs"),
        Some(&Value::Boolean(false))
    );
    assert!(text_of(info.get_key("version").unwrap()).is_some());
    let cmds = info
        .get_key("worker_commands")
        .and_then(Value::as_map)
        .expect("worker_commands");
    for needed in ["listdir", "mkdir", "stat", "rmdir", "shell"] {
        assert!(
            cmds.get_key(needed).is_some(),
            "worker_commands has {needed}"
        );
    }
    assert!(
        info.get_key("environ").and_then(Value::as_map).is_some(),
        "environ is a map"
    );
    let s = c
        .send(Op::SetWorkerSettings(
            kiln_proto::args::WorkerSettings::default(),
        ))
        .await;
    c.response(s).await;
    let items = c
        .command("listdir", path_args("path", Value::from(basedir.clone())))
        .await;
    assert!(
        items.contains(&UpdateItem::Files(vec![])),
        "listdir reports files: {items:?}"
    );
    assert!(
        items.contains(&UpdateItem::Rc(0)),
        "listdir rc 0: {items:?}"
    );
    let items = c
        .command(
            "mkdir",
            path_args(
                "paths",
                Value::Array(vec![Value::from(format!("{basedir}/b"))]),
            ),
        )
        .await;
    assert!(items.contains(&UpdateItem::Rc(0)));
    let items = c
        .command("stat", path_args("path", Value::from(basedir.clone())))
        .await;
    let stat = items.iter().find_map(|i| {
        if let UpdateItem::Stat(s) = i {
            Some(s.clone())
        } else {
            None
        }
    });
    assert_eq!(
        stat.map(|s| (s.len(), s[0] & 0o170000)),
        Some((10, 0o040000)),
        "stat is a directory: {items:?}"
    );
    let items = c
        .command(
            "rmdir",
            path_args(
                "paths",
                Value::Array(vec![Value::from(format!("{basedir}/old"))]),
            ),
        )
        .await;
    assert!(items.contains(&UpdateItem::Rc(0)));
    let s = c
        .send(Op::Print {
            message: "attached".into(),
        })
        .await;
    c.response(s).await;
    c
}

#[tokio::test]
async fn swarm_answers_the_attach_sequence_then_idles_and_answers_pings() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let sw = swarm::spawn(SwarmConfig {
        connect_concurrency: 2,
        ..SwarmConfig::new(addr, 3, "sesame")
    });
    let mut conns = Vec::new();
    let mut names = Vec::new();
    for _ in 0..3 {
        let (name, ws) = accept(&l, "sesame").await.expect("a swarm client logs in");
        names.push(name.clone());
        conns.push(attach(Conn { ws, seq: 0 }, &name).await);
    }
    names.sort();
    assert_eq!(names, ["w0", "w1", "w2"]);
    assert!(
        sw.wait_attached(3, Duration::from_millis(200), Duration::from_secs(10))
            .await
    );
    assert_eq!(sw.stats.commands.load(Ordering::Relaxed), 12);
    // Idle: a build-time ping, a keepalive and a WebSocket ping are all answered.
    for c in &mut conns {
        let s = c
            .send(Op::Print {
                message: "ping".into(),
            })
            .await;
        c.response(s).await;
        let s = c.send(Op::Keepalive).await;
        c.response(s).await;
        c.ws.send(WsMsg::Ping(b"hi"[..].into())).await.unwrap();
        let pong = tokio::time::timeout(Duration::from_secs(10), c.ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(pong, WsMsg::Pong(b"hi"[..].into()));
    }
    assert_eq!(sw.stats.pings.load(Ordering::Relaxed), 3);
    // An unknown op gets Buildbot's error text.
    let c = &mut conns[0];
    let s = c
        .send(Op::Unknown {
            op: "frobnicate".into(),
        })
        .await;
    match c.recv().await {
        Message::Response(r) => {
            assert_eq!(r.seq_number, s);
            assert_eq!(
                r.error_text().as_deref(),
                Some("Command frobnicate does not exist.")
            );
        }
        other => panic!("{other:?}"),
    }
    // shutdown: the client answers and closes; the swarm counts it closed.
    let s = c.send(Op::Shutdown).await;
    c.response(s).await;
    for _ in 0..100 {
        if sw.stats.closed.load(Ordering::Relaxed) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sw.stats.closed.load(Ordering::Relaxed), 1);
    assert_eq!(sw.stats.attached.load(Ordering::Relaxed), 2);
    sw.stop().await;
}

#[tokio::test]
async fn wrong_password_is_counted_as_failed_with_the_reason() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let sw = swarm::spawn(SwarmConfig {
        retries: 1,
        ..SwarmConfig::new(addr, 1, "wrong")
    });
    for _ in 0..2 {
        assert!(accept(&l, "right").await.is_none());
    }
    assert!(
        !sw.wait_attached(1, Duration::ZERO, Duration::from_secs(10))
            .await
    );
    assert_eq!(sw.stats.failed.load(Ordering::Relaxed), 1);
    let errs = sw.stats.errors();
    assert!(
        errs[0].contains("w0") && errs[0].contains("401"),
        "{errs:?}"
    );
}

#[tokio::test]
async fn source_addresses_spread_over_loopback() {
    let l = TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let sw = swarm::spawn(SwarmConfig {
        source_ips: 3,
        ..SwarmConfig::new(([127, 0, 0, 1], port).into(), 3, "p")
    });
    let mut ips = Vec::new();
    for _ in 0..3 {
        let (s, peer) = l.accept().await.unwrap();
        ips.push(peer.ip().to_string());
        drop(s);
    }
    ips.sort();
    assert_eq!(ips, ["127.0.0.1", "127.0.0.2", "127.0.0.3"]);
    sw.stop().await;
}
