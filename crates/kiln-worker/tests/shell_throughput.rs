//! Log streaming throughput, end to end: a child writing 100-byte lines as fast as it
//! can, through the pipe, the line splitter, the output batcher and msgpack encoding.
//!
//! `cargo test --release -p kiln-worker --test shell_throughput -- --ignored --nocapture`
//! (a measurement, not a check: it prints MB/s).

#![cfg(target_os = "linux")]

use std::sync::Arc;
use std::time::Instant;

use kiln_proto::args::{Args, WorkerSettings};
use kiln_proto::{Message, Op, Value};
use kiln_worker::commands::process::ExecPolicy;
use kiln_worker::commands::{self, CommandCtx, Interrupt, Output};
use kiln_worker::link::{MasterLink, Outgoing};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement"]
async fn streaming_100_byte_lines() {
    let total: u64 = 2_000_000_000;
    let dir = tempfile::tempdir().unwrap();
    let script = format!("yes \"$(head -c 99 /dev/zero | tr '\\0' x)\" | head -c {total}");
    let args = Args::from_pairs([
        ("command", Value::from(script.as_str())),
        ("workdir", Value::from(dir.path().to_str().unwrap())),
        ("logEnviron", Value::from(false)),
    ]);
    let prepared = commands::prepare("1", "shell", &args).unwrap();
    let (link, mut rx) = MasterLink::channel(64);
    let settings = WorkerSettings::default();
    let (_handle, interrupt) = Interrupt::new();
    let ctx = CommandCtx {
        command_id: "1".into(),
        out: Output::new(
            "1".into(),
            link.clone(),
            settings.buffer_size,
            settings.buffer_timeout,
        ),
        link,
        settings,
        policy: Arc::new(ExecPolicy {
            allow_root: true,
            ..ExecPolicy::default()
        }),
        basedir: dir.path().to_path_buf(),
        interrupt,
        started: std::time::Instant::now(),
    };
    let t0 = Instant::now();
    let task = tokio::spawn(commands::run(ctx, prepared));
    let mut bytes = 0u64;
    let mut wire = 0usize;
    let mut buf = Vec::new();
    let mut seq = 0;
    while let Some(msg) = rx.recv().await {
        if let Outgoing::Request { op, .. } = msg {
            if let Op::Update { items, .. } = &op {
                for i in items {
                    if let kiln_proto::update::UpdateItem::Stdout(l) = i {
                        bytes += l.text.len() as u64;
                    }
                }
            }
            seq += 1;
            buf.clear();
            kiln_proto::encode_into(
                &Message::Request {
                    seq_number: seq,
                    op,
                },
                &mut buf,
            );
            wire += buf.len();
        }
    }
    task.await.unwrap();
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(bytes, total);
    println!(
        "{:.0} MB/s of output ({} updates, {:.0} MB on the wire) in {secs:.2} s",
        bytes as f64 / secs / 1e6,
        seq,
        wire as f64 / 1e6
    );
}
