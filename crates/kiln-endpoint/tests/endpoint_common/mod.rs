//! Shared helpers for the endpoint tests: a served endpoint and a scripted raw worker.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use kiln_endpoint::{Endpoint, EndpointOptions};
use kiln_proto::update::UpdateItem;
use kiln_proto::{Message, Op, Response, Value};
use kiln_remote::{Connection, PasswordCheck, Roster, WorkerEntry, WorkerEvent, Workers};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::{self, Message as Ws};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Server {
    pub port: u16,
    pub endpoint: Endpoint,
    pub roster: Roster,
    pub events: mpsc::UnboundedReceiver<WorkerEvent>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl Server {
    /// Serves an endpoint on 127.0.0.1 with workers `(name, password, builder_dirs)`.
    pub async fn start(workers: &[(&str, &str, &[&str])], opts: EndpointOptions) -> Server {
        Server::start_with(workers, opts, None).await
    }

    /// Like [`Server::start`], over TLS when `tls` is set.
    pub async fn start_with(
        workers: &[(&str, &str, &[&str])],
        opts: EndpointOptions,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Server {
        let map: HashMap<String, WorkerEntry> = workers
            .iter()
            .map(|(n, p, dirs)| {
                let entry = WorkerEntry {
                    password: PasswordCheck::Plain(p.to_string()),
                    builder_dirs: dirs.iter().map(|d| d.to_string()).collect(),
                };
                (n.to_string(), entry)
            })
            .collect();
        let roster = Roster(Arc::new(RwLock::new(map)));
        let (workers, events) = Workers::new();
        let endpoint = Endpoint::new(roster.clone(), opts, workers);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, stopped) = oneshot::channel::<()>();
        let ep = endpoint.clone();
        // Every test client comes from 127.0.0.1: no per-address cap (the memory bench
        // attaches thousands).
        let (_settings, settings) =
            tokio::sync::watch::channel(Arc::new(kiln_listener::Settings {
                tls,
                max_connections: 1 << 20,
                max_connections_per_address: 1 << 20,
                ..Default::default()
            }));
        tokio::spawn(async move {
            kiln_endpoint::serve_with(listener, settings, ep, async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Server {
            port,
            endpoint,
            roster,
            events,
            stop: Some(stop),
        }
    }

    /// Resolves the `shutdown` future given to `serve`.
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    pub async fn next_event(&mut self) -> WorkerEvent {
        tokio::time::timeout(Duration::from_secs(60), self.events.recv())
            .await
            .expect("no worker event within 60 s")
            .expect("event channel closed")
    }

    pub async fn attached(&mut self) -> Arc<dyn Connection> {
        match self.next_event().await {
            WorkerEvent::Attached(c) => c,
            other => panic!("expected Attached, got {other:?}"),
        }
    }
}

/// Opens a WebSocket with `Authorization` set to `auth` (verbatim) or none.
pub async fn connect_raw(
    port: u16,
    path: &str,
    auth: Option<String>,
) -> Result<Client, tungstenite::Error> {
    let mut req = format!("ws://127.0.0.1:{port}{path}")
        .into_client_request()
        .unwrap();
    if let Some(a) = auth {
        req.headers_mut()
            .insert("authorization", a.parse().unwrap());
    }
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
}

pub fn basic(name: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{name}:{password}"))
    )
}

/// The HTTP status of a refused handshake.
pub fn http_status(r: Result<Client, tungstenite::Error>) -> u16 {
    match r {
        Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("expected an HTTP error, got {e}"),
        Ok(_) => 101,
    }
}

/// The HTTP status and body of a refused handshake.
pub fn refusal(r: Result<Client, tungstenite::Error>) -> (u16, String) {
    match r {
        Err(tungstenite::Error::Http(resp)) => (
            resp.status().as_u16(),
            String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned(),
        ),
        Err(e) => panic!("expected an HTTP error, got {e}"),
        Ok(_) => (101, String::new()),
    }
}

/// The client's own address: the peer the endpoint sees.
pub fn local_addr(ws: &Client) -> std::net::SocketAddr {
    match ws.get_ref() {
        MaybeTlsStream::Plain(tcp) => tcp.local_addr().unwrap(),
        _ => panic!("a plain connection was expected"),
    }
}

pub fn encode(m: &Message) -> Ws {
    Ws::Binary(kiln_proto::encode(m).into())
}

pub fn decode(b: &[u8]) -> Message {
    kiln_proto::decode(b, &Default::default()).expect("master sent an undecodable message")
}

/// How the scripted worker behaves.
#[derive(Clone)]
pub struct Script {
    pub basedir: String,
    pub listing: Vec<String>,
    pub delete_leftover_dirs: i64,
    /// Paths whose `stat` reports a directory (others: a regular file).
    pub dirs: Vec<String>,
}

impl Script {
    pub fn new(basedir: &str) -> Script {
        Script {
            basedir: basedir.into(),
            listing: vec![],
            delete_leftover_dirs: 0,
            dirs: vec![],
        }
    }
}

/// A scripted worker running in its own task. Every request the master sends is recorded
/// in `seen`; `inject` sends raw frames; `silent` stops all answers.
pub struct FakeWorker {
    pub seen: mpsc::UnboundedReceiver<Message>,
    pub inject: mpsc::UnboundedSender<Ws>,
    pub silent: Arc<AtomicBool>,
    /// Frames the worker got that were not requests (responses, Close, ...).
    pub other: mpsc::UnboundedReceiver<Option<Ws>>,
    /// Whether the worker reads its socket (a worker that does not read does not answer pings).
    pub reading: Arc<AtomicBool>,
}

impl FakeWorker {
    pub fn spawn(mut ws: Client, script: Script) -> FakeWorker {
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let (inject, mut inject_rx) = mpsc::unbounded_channel::<Ws>();
        let (other_tx, other) = mpsc::unbounded_channel();
        let silent = Arc::new(AtomicBool::new(false));
        let reading = Arc::new(AtomicBool::new(true));
        let (s2, r2) = (silent.clone(), reading.clone());
        tokio::spawn(async move {
            let mut seq = 1000i64;
            loop {
                let frame = tokio::select! {
                    f = ws.next(), if r2.load(Ordering::SeqCst) => f,
                    i = inject_rx.recv() => match i {
                        Some(m) => { if ws.send(m).await.is_err() { break } continue }
                        None => break,
                    },
                    _ = tokio::time::sleep(Duration::from_millis(20)) => continue,
                };
                let Some(Ok(frame)) = frame else {
                    let _ = other_tx.send(None);
                    break;
                };
                let Ws::Binary(data) = frame else {
                    let _ = other_tx.send(Some(frame));
                    continue;
                };
                let msg = decode(&data);
                let _ = seen_tx.send(msg.clone());
                if s2.load(Ordering::SeqCst) {
                    continue;
                }
                let Message::Request { seq_number, op } = msg else {
                    continue;
                };
                for m in answer(&script, seq_number, op, &mut seq) {
                    if ws.send(encode(&m)).await.is_err() {
                        return;
                    }
                }
            }
        });
        FakeWorker {
            seen,
            inject,
            silent,
            other,
            reading,
        }
    }

    /// The next request from the master (responses to the worker's own requests skipped).
    pub async fn next_seen(&mut self) -> Message {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(20), self.seen.recv())
                .await
                .expect("master sent nothing")
                .expect("worker gone");
            if matches!(m, Message::Request { .. }) {
                return m;
            }
        }
    }

    /// Waits for the worker's socket to end (or a Close frame), skipping other frames.
    pub async fn wait_closed(&mut self) -> Option<Ws> {
        loop {
            match tokio::time::timeout(Duration::from_secs(20), self.other.recv())
                .await
                .expect("connection still open")
            {
                None | Some(None) => return None,
                Some(Some(Ws::Close(c))) => return Some(Ws::Close(c)),
                Some(Some(_)) => continue,
            }
        }
    }
}

fn info_map(s: &Script) -> Value {
    Value::Map(vec![
        (Value::from("admin"), Value::from("me\n")),
        (Value::from("basedir"), Value::from(s.basedir.as_str())),
        (Value::from("system"), Value::from("posix")),
        (
            Value::from("delete_leftover_dirs"),
            Value::from(s.delete_leftover_dirs),
        ),
        (
            Value::from("worker_commands"),
            Value::Map(vec![(Value::from("shell"), Value::from("3.3"))]),
        ),
    ])
}

fn update(id: &str, items: Vec<UpdateItem>, seq: &mut i64) -> Message {
    *seq += 1;
    Message::Request {
        seq_number: *seq,
        op: Op::Update {
            command_id: id.into(),
            items,
        },
    }
}

fn complete(id: &str, seq: &mut i64) -> Message {
    *seq += 1;
    Message::Request {
        seq_number: *seq,
        op: Op::Complete {
            command_id: id.into(),
            failure: None,
        },
    }
}

fn answer(s: &Script, seq_number: i64, op: Op, seq: &mut i64) -> Vec<Message> {
    let ok = |r| vec![Message::Response(r)];
    match op {
        Op::GetWorkerInfo => ok(Response::with_result(seq_number, info_map(s))),
        Op::StartCommand {
            command_id: id,
            command_name,
            args,
            ..
        } => {
            let mut out = vec![Message::Response(Response::ok(seq_number))];
            match command_name.as_str() {
                "listdir" => {
                    out.push(update(
                        &id,
                        vec![UpdateItem::Files(s.listing.clone()), UpdateItem::Rc(0)],
                        seq,
                    ));
                    out.push(complete(&id, seq));
                }
                "stat" => {
                    let path = args
                        .get(&["path"])
                        .and_then(kiln_proto::text_of)
                        .unwrap_or_default();
                    let mode = if s.dirs.contains(&path) {
                        0o040755
                    } else {
                        0o100644
                    };
                    out.push(update(
                        &id,
                        vec![
                            UpdateItem::Stat(vec![mode, 1, 2, 3, 0, 0, 10, 0, 0, 0]),
                            UpdateItem::Rc(0),
                        ],
                        seq,
                    ));
                    out.push(complete(&id, seq));
                }
                "shell" => {
                    let lines = kiln_proto::update::Lines::from_text("fake\n", 1.0);
                    out.push(update(
                        &id,
                        vec![UpdateItem::Stdout(lines), UpdateItem::Rc(3)],
                        seq,
                    ));
                    out.push(complete(&id, seq));
                }
                // More updates than a command channel holds, then complete.
                "flood" => {
                    for _ in 0..100 {
                        out.push(update(&id, vec![UpdateItem::Rc(0)], seq));
                    }
                    out.push(complete(&id, seq));
                }
                // Never answers: the test drops the connection meanwhile.
                "hang" => {}
                "refuse" => {
                    out = ok(Response::error(
                        seq_number,
                        "(command x): unrecognized WorkerCommand 'refuse'",
                    ));
                }
                _ => {
                    out.push(update(&id, vec![UpdateItem::Rc(0)], seq));
                    out.push(complete(&id, seq));
                }
            }
            out
        }
        _ => ok(Response::ok(seq_number)),
    }
}

/// A lean scripted worker (no injection, no recording): answers until the socket ends.
pub async fn serve_script(mut ws: Client, script: Script) {
    let mut seq = 1000i64;
    while let Some(Ok(frame)) = ws.next().await {
        let Ws::Binary(data) = frame else { continue };
        let Message::Request { seq_number, op } = decode(&data) else {
            continue;
        };
        for m in answer(&script, seq_number, op, &mut seq) {
            if ws.send(encode(&m)).await.is_err() {
                return;
            }
        }
    }
}

/// Logs a worker in and runs the scripted worker on the connection.
pub async fn login(port: u16, name: &str, password: &str, script: Script) -> FakeWorker {
    let ws = connect_raw(port, "/", Some(basic(name, password)))
        .await
        .expect("login refused");
    FakeWorker::spawn(ws, script)
}

pub fn quick_opts() -> EndpointOptions {
    EndpointOptions {
        failed_logins_per_minute: 1000,
        ..Default::default()
    }
}
