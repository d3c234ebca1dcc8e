//! A ~100 MB log streams in and out with bounded memory. Its own test binary, so the process's
//! peak RSS belongs to this test alone. Prints the growth; asserts only a generous bound.

mod common;

use futures_util::StreamExt;
use kiln_model::{LogType, Results};
use kiln_store::*;

fn rss_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

const TOTAL: usize = 100 << 20;
const APPEND: usize = 256 << 10;

async fn big_log(store: Store) {
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
                state_string: String::new(),
            },
            1,
        )
        .await
        .unwrap();
    let (step, _, _) = store.add_step(build, "big").await.unwrap();
    let log = store.add_log(step, "stdio", LogType::Stdio).await.unwrap();

    // Reset the peak-RSS counter (Linux: writing 5 to clear_refs), then measure from here.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = rss_kib("VmRSS:");
    let mut line_no = 0u64;
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut written = 0usize;
    let mut buf = String::with_capacity(APPEND + 200);
    while written < TOTAL {
        buf.clear();
        while buf.len() < APPEND {
            use std::fmt::Write;
            // xorshift: a random-looking token keeps the compression ratio near real logs'
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            writeln!(
                buf,
                "[{line_no:>9}] compiling Objects/obj{}.c -O2 -Wall id={rng:016x} ... ok ✓",
                line_no % 9973
            )
            .unwrap();
            line_no += 1;
        }
        store.append_log(log, &buf).await.unwrap();
        written += buf.len();
    }
    let after_write = rss_kib("VmHWM:");
    let chunks = store.log_chunks(log).await.unwrap();
    let stored: i64 = chunks.iter().map(|c| c.stored_len).sum();
    assert_eq!(
        store.get_log(log).await.unwrap().unwrap().num_lines as u64,
        line_no
    );

    // read a range in the middle, then stream everything
    let mid = line_no / 2;
    let got = store
        .read_log_lines(log, mid as i64, mid as i64 + 2)
        .await
        .unwrap();
    assert!(got[0].starts_with(&format!("[{mid:>9}]")), "{got:?}");
    let mut total = 0usize;
    let mut lines = 0u64;
    let mut stream = std::pin::pin!(store.log_raw(log));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        total += chunk.len();
        lines += chunk.iter().filter(|&&c| c == b'\n').count() as u64;
    }
    assert_eq!((total, lines), (written, line_no));
    store.finish_log(log, false).await.unwrap();
    store
        .finish_build(build, Results::Success, 2)
        .await
        .unwrap();
    let peak = rss_kib("VmHWM:");
    eprintln!(
        "{:?}: {} MiB in {} lines, {} chunks, stored {} MiB compressed; RSS before {} MiB, peak growth while writing {} MiB, \
         peak growth overall (incl. reading) {} MiB",
        store.backend(),
        written >> 20,
        line_no,
        chunks.len(),
        stored >> 20,
        before >> 10,
        after_write.saturating_sub(before) >> 10,
        peak.saturating_sub(before) >> 10,
    );
    // Far below the log's size: memory does not grow with the log.
    assert!(
        peak.saturating_sub(before) < 64 << 10,
        "peak RSS grew by {} KiB",
        peak - before
    );

    // retention drops the whole thing in small batches
    let rep = store.delete_old_logs(10).await.unwrap();
    assert_eq!(rep.chunks as usize, chunks.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_log_sqlite_and_postgres() {
    // One after the other, so each measurement is alone in the process.
    common::on_sqlite(
        StoreOptions {
            log_max_bytes: None,
            ..Default::default()
        },
        big_log,
    )
    .await;
    common::on_postgres(
        StoreOptions {
            log_max_bytes: None,
            ..Default::default()
        },
        big_log,
    )
    .await;
}
