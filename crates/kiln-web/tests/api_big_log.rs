//! A big log read whole through the REST API over a real socket: `contents` without a `limit`
//! and `raw` must stream it from the store, not build it in memory. A counting global
//! allocator (this test binary's own, so it is alone here) measures the heap's peak growth
//! while the answer is read.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use kiln_config::{MasterConfig, SecretSource};
use kiln_master::control::BoxFuture;
use kiln_model::{BuildId, BuildRequestId, BuildsetId, ChangeId, LogId, LogType};
use kiln_store::{NewBuild, NewBuildset, Store};
use kiln_web::{
    self as api, ApiState, ChangeRequest, Control, ControlError, ForceRequest, Metrics,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The system allocator, counting the bytes live now and the most live since the last reset.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The log: this many lines of [`LINE_BYTES`] (with the channel character and `\n`).
const LINES: usize = 2_000_000;
const LINE_BYTES: usize = 100;
/// The most the heap may grow while one answer is read; the log is several times bigger.
const PEAK_GROWTH_MAX: usize = 64 << 20;

fn line(n: usize) -> String {
    let head = format!("o{n:09} ");
    format!("{head}{}\n", "x".repeat(LINE_BYTES - head.len() - 1))
}

struct Ctl(Arc<MasterConfig>);

impl Control for Ctl {
    fn config(&self) -> Arc<MasterConfig> {
        self.0.clone()
    }
    fn connected_workers(&self) -> Vec<String> {
        vec![]
    }
    fn force(
        &self,
        _: &str,
        _: ForceRequest,
    ) -> BoxFuture<'_, Result<(BuildsetId, Vec<BuildRequestId>), ControlError>> {
        Box::pin(async { Err(ControlError::ShuttingDown) })
    }
    fn add_change(&self, _: ChangeRequest) -> BoxFuture<'_, Result<ChangeId, ControlError>> {
        Box::pin(async { Err(ControlError::ShuttingDown) })
    }
    fn stop_build(&self, _: BuildId, _: String) -> BoxFuture<'_, bool> {
        Box::pin(async { false })
    }
    fn cancel_request(&self, _: BuildRequestId) -> BoxFuture<'_, bool> {
        Box::pin(async { false })
    }
}

/// A build with one step whose stdio log is [`LINES`] lines, written through its `LogWriter`.
async fn big_log(store: &Store) -> LogId {
    let m = store.register_master("m", 1).await.unwrap();
    let w = store
        .upsert_worker("w", &serde_json::Map::new())
        .await
        .unwrap();
    let b = store.upsert_builder("b", None, &[]).await.unwrap();
    let (_, brs) = store
        .add_buildset(
            &NewBuildset {
                builders: vec![b],
                ..Default::default()
            },
            1,
        )
        .await
        .unwrap();
    let (build, _) = store
        .add_build(
            &NewBuild {
                builderid: b,
                buildrequestid: brs[0].1,
                workerid: w,
                masterid: m,
                state_string: "building".into(),
            },
            2,
        )
        .await
        .unwrap();
    let (step, _, _) = store.add_step(build, "compile").await.unwrap();
    let mut log = store
        .add_log_writer(step, "stdio", LogType::Stdio, None)
        .await
        .unwrap();
    let mut batch = String::new();
    for n in 0..LINES {
        batch.push_str(&line(n));
        if batch.len() >= 4 << 20 {
            log.append(&batch).await.unwrap();
            batch.clear();
        }
    }
    log.append(&batch).await.unwrap();
    let id = log.id();
    log.finish().await.unwrap();
    id
}

/// What a reader keeps of an answer: its size, its line ends (`\n` in raw text, the escape
/// `\n` in JSON), and its first and last bytes.
#[derive(Default)]
struct Seen {
    bytes: usize,
    line_ends: usize,
    head: Vec<u8>,
    tail: Vec<u8>,
    last: u8,
}

impl Seen {
    fn take(&mut self, buf: &[u8], json: bool) {
        for &b in buf {
            if json {
                // The log has no backslashes, so every `\` starts an escape of its own.
                if self.last == b'\\' && b == b'n' {
                    self.line_ends += 1;
                }
            } else if b == b'\n' {
                self.line_ends += 1;
            }
            self.last = b;
        }
        self.bytes += buf.len();
        if self.head.len() < 400 {
            let n = (400 - self.head.len()).min(buf.len());
            self.head.extend_from_slice(&buf[..n]);
        }
        self.tail.extend_from_slice(buf);
        if self.tail.len() > 400 {
            self.tail.drain(..self.tail.len() - 400);
        }
    }
}

/// GETs `path` over HTTP/1.0 (the body ends when the connection does) and reads the answer
/// as it comes, keeping only what [`Seen`] keeps; returns it and the heap's peak growth.
async fn read_answer(addr: std::net::SocketAddr, path: &str, json: bool) -> (String, Seen, usize) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let accept = if json {
        "Accept: application/json\r\n"
    } else {
        ""
    };
    let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{accept}\r\n");
    let mut buf = vec![0u8; 64 << 10];
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut seen = Seen::default();
    loop {
        let n = s.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        let mut data = &buf[..n];
        if !head.ends_with(b"\r\n\r\n") {
            let end = data
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|p| p + 4);
            let take = end.unwrap_or(data.len());
            head.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        seen.take(data, json);
    }
    let growth = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    (String::from_utf8(head).unwrap(), seen, growth)
}

#[tokio::test]
async fn a_big_log_is_streamed_whole_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::connect(&format!("sqlite:{}", dir.path().join("kiln.db").display()))
        .await
        .unwrap();
    store.set_log_max_bytes(None);
    let id = big_log(&store).await;
    let cfg = kiln_config::load_str(
        "m.star",
        "WORKERS = [worker(\"w\", password_hash = \"$argon2id$v=19$x\")]\nBUILDERS = [builder(name = \"b\", workers = [\"w\"], steps = [shell(command = \"x\")])]\n",
        &SecretSource { dir: None, use_env: false },
    )
    .unwrap();
    let app = api::router(ApiState::new(
        store,
        Arc::new(Ctl(Arc::new(cfg))),
        Metrics::new(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let log_bytes = LINES * LINE_BYTES;

    // `contents` without a limit: every line, in Buildbot's envelope.
    let (head, seen, growth) =
        read_answer(addr, &format!("/api/v2/logs/{}/contents", id.0), true).await;
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    let start = format!("{{\"logchunks\":[{{\"content\":\"{}", line(0).trim_end());
    assert!(
        seen.head.starts_with(start.as_bytes()),
        "{}",
        String::from_utf8_lossy(&seen.head)
    );
    let end = format!(
        "{}\\n\",\"firstline\":0,\"logid\":{}}}],\"meta\":{{}}}}",
        line(LINES - 1).trim_end(),
        id.0
    );
    assert!(
        seen.tail.ends_with(end.as_bytes()),
        "{}",
        String::from_utf8_lossy(&seen.tail)
    );
    assert_eq!(seen.line_ends, LINES);
    assert!(seen.bytes > log_bytes);
    eprintln!("contents of a {log_bytes}-byte log: the heap grew at most {growth} bytes");
    assert!(
        growth < PEAK_GROWTH_MAX,
        "the heap grew {growth} bytes answering a {log_bytes}-byte log's contents"
    );

    // `raw`: the same lines without their channel character, after Buildbot's header.
    let (head, seen, growth) =
        read_answer(addr, &format!("/api/v2/logs/{}/raw", id.0), false).await;
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    let start = format!(
        "Builder: b\nBuild number: 1\nWorker name: w\n{}",
        &line(0)[1..]
    );
    assert!(seen.head.starts_with(start.as_bytes()));
    assert!(seen.tail.ends_with(&line(LINES - 1).as_bytes()[1..]));
    assert_eq!(seen.line_ends, LINES + 3);
    eprintln!("raw of a {log_bytes}-byte log: the heap grew at most {growth} bytes");
    assert!(
        growth < PEAK_GROWTH_MAX,
        "the heap grew {growth} bytes answering a {log_bytes}-byte log's raw text"
    );
    server.abort();
}
