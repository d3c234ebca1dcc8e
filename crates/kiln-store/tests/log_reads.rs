//! `Store::log_lines_stream`, the REST API's streamed read of a log's lines, on both databases:
//! the same text as `read_log_lines` for any range (across chunk edges, a line longer than a
//! chunk, multi-byte characters, a last line without a newline, past the end), one item per
//! stored chunk.

mod common;

use futures_util::TryStreamExt;
use kiln_model::LogType;
use kiln_store::*;

both!(
    sqlite_log_lines_stream,
    pg_log_lines_stream,
    log_lines_stream
);

fn lines_text(lines: &[String]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

async fn log_lines_stream(store: Store) {
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
            2,
        )
        .await
        .unwrap();
    let (step, _, _) = store.add_step(build, "test").await.unwrap();
    let log = store.add_log(step, "stdio", LogType::Stdio).await.unwrap();
    let mut text = String::new();
    for i in 0..2500 {
        text.push_str(&format!("oshort line {i}\n"));
    }
    for i in 0..300 {
        text.push_str(&format!("e{i:05} {}\n", "é✓😀".repeat(40 + i % 7)));
    }
    text.push_str(&format!("o{}\n\n", "x".repeat(200_000)));
    store.append_log(log, &text).await.unwrap();
    store.append_log(log, "ono newline at end").await.unwrap();
    let num_lines = store.get_log(log).await.unwrap().unwrap().num_lines;
    assert_eq!(num_lines, 2803);
    let chunks = store.log_chunks(log).await.unwrap();

    let streamed = |f: i64, l: i64| {
        let store = store.clone();
        async move {
            let pieces: Vec<String> = store
                .log_lines_stream(log, f, l)
                .try_collect()
                .await
                .unwrap();
            pieces
        }
    };
    let whole = streamed(0, num_lines - 1).await;
    assert_eq!(whole.len(), chunks.len(), "one item per stored chunk");
    let all = store.read_log_lines(log, 0, num_lines).await.unwrap();
    assert_eq!(whole.concat(), lines_text(&all));
    for (f, l) in [
        (0, 0),
        (998, 1001),
        (1999, 2000),
        (2490, 2650),
        (2799, 2802),
        (2800, 2800),
        (2802, 2802),
        (2801, 5000),
        (3000, 4000),
        (5, 4),
    ] {
        let want = lines_text(&store.read_log_lines(log, f, l).await.unwrap());
        assert_eq!(streamed(f, l).await.concat(), want, "lines {f}..={l}");
    }
}
