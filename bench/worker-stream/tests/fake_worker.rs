//! The benchmark master against a scripted worker (this test process): it must run
//! the attach sequence, count exactly what was streamed, and fail loudly when bytes
//! are missing. The happy path also prints the master's own ceiling (how fast it
//! decodes and answers updates), which must stay far above any real worker's rate.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use kiln_proto::update::{Lines, UpdateItem};
use kiln_proto::{Limits, Message, Op, Response, Value, decode, encode};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const LINE: &str = "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\n";

fn start_master(bytes: u64) -> (Child, u16) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln-bench-worker-stream"))
        .args([
            "--bytes",
            &bytes.to_string(),
            "--idle-secs",
            "0.2",
            "--connect-timeout",
            "20",
            "--stream-timeout",
            "30",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the bench master");
    let mut first = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    let port = first
        .strip_prefix("PORT ")
        .expect("PORT line")
        .trim()
        .parse()
        .unwrap();
    (child, port)
}

/// Waits for the master and returns its RESULT json line.
fn finish(mut child: Child) -> (bool, String) {
    let mut out = String::new();
    let stdout = child.stdout.take().unwrap();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(r) = line.strip_prefix("RESULT ") {
            out = r.to_owned();
        }
    }
    let status = child.wait().unwrap();
    (status.success(), out)
}

/// Plays a worker: answers the attach requests, then on `start_command` streams
/// `lines` lines of 100 bytes in ~55 kB updates (as Buildbot batches them), `rc 0`,
/// `complete`; answers `shutdown` and returns the wall time of the stream.
async fn fake_worker(port: u16, password: &str, lines: usize) -> anyhow::Result<Duration> {
    let mut req = format!("ws://127.0.0.1:{port}").into_client_request()?;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("w:{password}"));
    req.headers_mut().insert(
        "Authorization",
        HeaderValue::from_str(&format!("Basic {token}"))?,
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
    let mut seq = 0i64;
    let mut took = Duration::ZERO;
    while let Some(frame) = ws.next().await {
        let WsMessage::Binary(b) = frame? else {
            continue;
        };
        let Message::Request { seq_number, op } = decode(&b, &Limits::default())? else {
            continue;
        };
        let result = match &op {
            Op::GetWorkerInfo => Value::Map(vec![
                (Value::from("basedir"), Value::from("/nonexistent/bench")),
                (Value::from("version"), Value::from("fake")),
            ]),
            _ => Value::Nil,
        };
        ws.send(WsMessage::Binary(
            encode(&Message::Response(Response::with_result(
                seq_number, result,
            )))
            .into(),
        ))
        .await?;
        match op {
            Op::StartCommand { command_id, .. } => {
                let started = Instant::now();
                let per_update = 550;
                let mut left = lines;
                let mut send = |op: Op| {
                    let m = Message::Request {
                        seq_number: seq,
                        op,
                    };
                    seq += 1;
                    WsMessage::Binary(encode(&m).into())
                };
                ws.send(send(Op::Update {
                    command_id: command_id.clone(),
                    items: vec![UpdateItem::Header(Lines::from_text("fake header\n", 0.0))],
                }))
                .await?;
                let full = Lines::from_text(LINE.repeat(per_update), 1.0); // built once: the fake must outrun the master
                while left > 0 {
                    let n = left.min(per_update);
                    left -= n;
                    let lines = if n == per_update {
                        full.clone()
                    } else {
                        Lines::from_text(LINE.repeat(n), 1.0)
                    };
                    let msg = send(Op::Update {
                        command_id: command_id.clone(),
                        items: vec![UpdateItem::Stdout(lines)],
                    });
                    ws.feed(msg).await?;
                }
                ws.feed(send(Op::Update {
                    command_id: command_id.clone(),
                    items: vec![UpdateItem::Rc(0), UpdateItem::Elapsed(0.5)],
                }))
                .await?;
                ws.send(send(Op::Complete {
                    command_id,
                    failure: None,
                }))
                .await?;
                took = started.elapsed();
            }
            Op::Shutdown => break,
            _ => {}
        }
    }
    Ok(took)
}

fn field<'a>(json: &'a str, key: &str) -> &'a str {
    let start = json
        .find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("{key} missing in {json}"))
        + key.len()
        + 3;
    let rest = &json[start..];
    &rest[..rest.find([',', '}']).unwrap()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_a_full_stream_and_reports_it() {
    let bytes = 200_000_000u64;
    let (master, port) = start_master(bytes);
    let took = fake_worker(port, "pass", (bytes / 100) as usize)
        .await
        .expect("fake worker");
    let (ok, json) = finish(master);
    assert!(ok, "master failed: {json}");
    assert_eq!(field(&json, "bytes_received"), bytes.to_string());
    assert_eq!(field(&json, "stdout_lines"), (bytes / 100).to_string());
    assert_eq!(field(&json, "bad_lines"), "0");
    assert_eq!(field(&json, "rc"), "0");
    assert_eq!(field(&json, "worker_version"), "\"fake\"");
    assert_eq!(field(&json, "worker_pid"), std::process::id().to_string());
    assert_eq!(field(&json, "shutdown_acked"), "true");
    assert_eq!(field(&json, "bad_line_triples"), "0");
    assert_eq!(
        field(&json, "fast_decoded_updates"),
        field(&json, "updates"),
        "every update took the in-place path"
    );
    let tp: f64 = field(&json, "throughput_mb_s").parse().unwrap();
    let build = if cfg!(debug_assertions) {
        "debug build: not representative"
    } else {
        "release build"
    };
    eprintln!(
        "master ceiling with a scripted worker: {tp:.0} MB/s (worker side {:.2} s), master CPU {} s ({build})",
        took.as_secs_f64(),
        field(&json, "master_cpu_s")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_bytes_fail_the_run() {
    let (master, port) = start_master(1_000_000);
    fake_worker(port, "pass", 9_999).await.expect("fake worker");
    let (ok, json) = finish(master);
    assert!(!ok, "a short stream must fail: {json}");
    assert_eq!(field(&json, "ok"), "false");
    assert_eq!(field(&json, "bytes_received"), "999900");
    assert!(json.contains("expected 1000000"), "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_refused() {
    let (mut master, port) = start_master(1_000_000);
    let err = fake_worker(port, "wrong", 1)
        .await
        .expect_err("must be refused");
    assert!(err.to_string().contains("401"), "{err}");
    master.kill().unwrap();
    master.wait().unwrap();
}
