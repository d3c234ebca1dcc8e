//! `upload_file` and `download_file` against a fake master (§8.4, §8.6, §6.3–6.9).

mod transfer_support;

use std::collections::VecDeque;
use std::time::{Duration, UNIX_EPOCH};

use kiln_proto::args::{DownloadFileArgs, UploadFileArgs};
use kiln_proto::update::UpdateItem;
use kiln_proto::{Op, Value};
use kiln_worker::commands::transfer;
use transfer_support::{Script, args, bytes, make_ctx, play_master, run_command, s};

/// Buildbot 4.3's answer to every `update_upload_file_utime`.
const UTIME_BUG: &str = "FileWriter.remote_utime() takes 2 positional arguments but 3 were given";

fn upload_args(
    path: &str,
    blocksize: i64,
    maxsize: Option<i64>,
    keepstamp: bool,
) -> kiln_proto::args::Args {
    args([
        ("workdir", Value::from("build")),
        ("maxsize", maxsize.map_or(Value::Nil, Value::from)),
        ("blocksize", Value::from(blocksize)),
        ("keepstamp", Value::from(keepstamp)),
        ("workersrc", Value::from("up.bin")),
        ("path", Value::from(path)),
    ])
}

fn download_args(
    path: &str,
    blocksize: i64,
    maxsize: Option<i64>,
    mode: Option<i64>,
) -> kiln_proto::args::Args {
    args([
        ("maxsize", maxsize.map_or(Value::Nil, Value::from)),
        ("blocksize", Value::from(blocksize)),
        ("workdir", Value::from("build")),
        ("mode", mode.map_or(Value::Nil, Value::from)),
        ("workerdest", Value::from("dl.txt")),
        ("path", Value::from(path)),
    ])
}

fn count(ops: &[String], name: &str) -> usize {
    ops.iter().filter(|o| *o == name).count()
}

#[tokio::test]
async fn upload_sends_stop_and_wait_chunks_reassembled_byte_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("up.bin");
    let content = bytes(100_000, 1);
    std::fs::write(&file, &content).unwrap();

    let rec = run_command(
        "upload_file",
        upload_args(&s(&file), 4096, None, false),
        Script::default(),
    )
    .await;
    assert_eq!(
        rec.uploaded, content,
        "the master got the file byte for byte"
    );
    assert_eq!(rec.chunks.len(), 100_000usize.div_ceil(4096));
    assert!(rec.chunks.iter().all(|&c| c <= 4096));
    assert!(
        rec.chunks[..rec.chunks.len() - 1]
            .iter()
            .all(|&c| c == 4096),
        "full blocks until the last: {:?}",
        rec.chunks
    );
    let ops = rec.transfer_ops();
    assert_eq!(count(&ops, "update_upload_file_write"), rec.chunks.len());
    assert_eq!(
        ops.last().map(String::as_str),
        Some("update_upload_file_close")
    );
    assert_eq!(
        count(&ops, "update_upload_file_utime"),
        0,
        "no utime without keepstamp"
    );
    assert_eq!(rec.text("header"), format!("sending {}\n", s(&file)));
    assert_eq!(rec.keys(), ["header", "rc", "elapsed"]);
    rec.assert_rc_then_elapsed(0);
    assert_eq!(rec.complete(), Some(None));
}

#[tokio::test]
async fn upload_with_the_trace_s_arguments_sends_one_chunk() {
    // Appendix A: a 3-byte file, blocksize 262144 → write(bin 'abc') → close → update → complete.
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("up.txt");
    std::fs::write(&file, "abc").unwrap();
    let rec = run_command(
        "upload_file",
        upload_args(&s(&file), 262_144, None, false),
        Script::default(),
    )
    .await;
    let names: Vec<&str> = rec.ops.iter().map(Op::name).collect();
    assert_eq!(
        names,
        [
            "update_upload_file_write",
            "update_upload_file_close",
            "update",
            "complete"
        ]
    );
    assert_eq!(rec.uploaded, b"abc");
}

#[tokio::test]
async fn upload_stops_at_maxsize_with_rc_1() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("big.bin");
    let content = bytes(20_000, 2);
    std::fs::write(&file, &content).unwrap();

    let rec = run_command(
        "upload_file",
        upload_args(&s(&file), 4096, Some(10_000), false),
        Script::default(),
    )
    .await;
    assert_eq!(
        rec.uploaded,
        &content[..10_000],
        "exactly maxsize bytes are sent"
    );
    assert_eq!(
        rec.chunks,
        [4096, 4096, 1808],
        "the last block is cut to what maxsize allows"
    );
    assert_eq!(
        rec.transfer_ops().last().map(String::as_str),
        Some("update_upload_file_close"),
        "the truncated file is still closed"
    );
    assert_eq!(
        rec.text("stderr"),
        format!("Maximum filesize reached, truncating file '{}'\n", s(&file))
    );
    assert_eq!(rec.keys(), ["header", "rc", "stderr", "elapsed"]);
    rec.assert_rc_then_elapsed(1);
    assert_eq!(rec.complete(), Some(None));
}

#[tokio::test]
async fn upload_of_a_missing_file_still_closes() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope.txt");
    let rec = run_command(
        "upload_file",
        upload_args(&s(&missing), 4096, None, true),
        Script::default(),
    )
    .await;
    assert_eq!(
        rec.transfer_ops(),
        ["update_upload_file_close"],
        "no data, but the master's file is closed"
    );
    assert_eq!(rec.text("header"), format!("sending {}\n", s(&missing)));
    assert_eq!(
        rec.text("stderr"),
        format!("Cannot open file '{}' for upload\n", s(&missing))
    );
    rec.assert_rc_then_elapsed(1);
    assert_eq!(rec.complete(), Some(None));
}

fn stamp(path: &std::path::Path, atime: f64, mtime: f64) {
    let at = |t: f64| UNIX_EPOCH + Duration::from_secs_f64(t);
    let times = std::fs::FileTimes::new()
        .set_accessed(at(atime))
        .set_modified(at(mtime));
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_times(times)
        .unwrap();
}

#[tokio::test]
async fn keepstamp_sends_the_source_times_after_close() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("up.txt");
    std::fs::write(&file, "abc").unwrap();
    stamp(&file, 1_700_000_000.25, 1_600_000_000.5);

    let rec = run_command(
        "upload_file",
        upload_args(&s(&file), 4096, None, true),
        Script::default(),
    )
    .await;
    let tail: Vec<&Op> = rec
        .ops
        .iter()
        .filter(|op| !matches!(op, Op::Update { .. } | Op::Complete { .. }))
        .collect();
    assert_eq!(tail.len(), 3);
    assert!(matches!(tail[1], Op::UploadFileClose { .. }));
    let Op::UploadFileUtime {
        access_time,
        modified_time,
        ..
    } = tail[2]
    else {
        panic!("utime last, got {tail:?}")
    };
    assert!(
        (access_time - 1_700_000_000.25).abs() < 1e-3,
        "atime {access_time}"
    );
    assert!(
        (modified_time - 1_600_000_000.5).abs() < 1e-3,
        "mtime {modified_time}"
    );
    rec.assert_rc_then_elapsed(0);
    assert_eq!(rec.complete(), Some(None));
}

#[tokio::test]
async fn keepstamp_against_buildbot_4_3_fails_like_the_python_worker() {
    // §6.5: the master answers utime with an exception; the Python worker then sends
    // `update [header, rc 0, elapsed]` and a `complete` with a failure string.
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("up.txt");
    std::fs::write(&file, "abc").unwrap();
    let script = Script {
        utime_error: Some(UTIME_BUG.into()),
        ..Script::default()
    };
    let rec = run_command(
        "upload_file",
        upload_args(&s(&file), 262_144, None, true),
        script,
    )
    .await;
    let names: Vec<&str> = rec.ops.iter().map(Op::name).collect();
    assert_eq!(
        names,
        [
            "update_upload_file_write",
            "update_upload_file_close",
            "update_upload_file_utime",
            "update",
            "complete"
        ]
    );
    assert_eq!(rec.keys(), ["header", "rc", "elapsed"]);
    rec.assert_rc_then_elapsed(0);
    let failure = rec.complete().expect("complete").expect("a failure string");
    assert!(failure.contains(UTIME_BUG), "{failure}");
}

#[tokio::test]
async fn a_refused_chunk_closes_and_fails_the_command() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("up.bin");
    std::fs::write(&file, bytes(10_000, 3)).unwrap();
    let script = Script {
        write_error_at: Some(1),
        ..Script::default()
    };
    let rec = run_command(
        "upload_file",
        upload_args(&s(&file), 4096, None, false),
        script,
    )
    .await;
    assert_eq!(
        rec.transfer_ops(),
        [
            "update_upload_file_write",
            "update_upload_file_write",
            "update_upload_file_close"
        ],
        "stops at the refused chunk"
    );
    rec.assert_rc_then_elapsed(1);
    let failure = rec.complete().expect("complete").expect("a failure string");
    assert!(failure.contains("disk full on the master"), "{failure}");
}

#[tokio::test]
async fn an_interrupt_stops_the_upload_at_the_next_block() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("up.bin");
    std::fs::write(&file, bytes(50_000, 4)).unwrap();
    let script = Script {
        interrupt_after: Some(3),
        ..Script::default()
    };
    let rec = run_command(
        "upload_file",
        upload_args(&s(&file), 1000, None, true),
        script,
    )
    .await;
    assert_eq!(rec.chunks.len(), 3, "no block after the interrupt");
    assert_eq!(
        rec.transfer_ops().last().map(String::as_str),
        Some("update_upload_file_close")
    );
    assert_eq!(
        count(&rec.transfer_ops(), "update_upload_file_utime"),
        0,
        "an abandoned file keeps no stamp"
    );
    assert_eq!(rec.rc(), Some(1));
    assert!(
        !rec.keys().contains(&"elapsed".to_owned()),
        "no elapsed after an interrupt: {:?}",
        rec.keys()
    );
    assert_eq!(rec.complete(), Some(None));
}

#[tokio::test]
async fn a_lost_connection_ends_the_upload_with_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("up.bin");
    std::fs::write(&file, bytes(50_000, 5)).unwrap();
    let (mut ctx, rx, handle) = make_ctx();
    let a = UploadFileArgs::parse(&upload_args(&s(&file), 1000, None, false)).unwrap();
    let master = tokio::spawn(play_master(
        rx,
        handle,
        Script {
            close_after: Some(2),
            ..Script::default()
        },
    ));
    let result = tokio::time::timeout(Duration::from_secs(30), transfer::upload_file(&mut ctx, a))
        .await
        .expect("no hang");
    let err = result.expect_err("a lost connection fails the command");
    assert!(err.contains("lost"), "{err}");
    assert_eq!(master.await.unwrap().chunks.len(), 2);
}

#[tokio::test]
async fn download_writes_blocks_until_an_empty_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("new/sub/dl.txt");
    let script = Script {
        download: VecDeque::from([
            Value::Binary(b"hello ".to_vec()),
            Value::Binary(b"download\n".to_vec()),
            Value::Binary(Vec::new()),
        ]),
        ..Script::default()
    };
    let rec = run_command(
        "download_file",
        download_args(&s(&dest), 16, None, None),
        script,
    )
    .await;
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        b"hello download\n",
        "parent directories are created"
    );
    assert_eq!(rec.read_lengths, [16, 16, 16]);
    assert_eq!(
        rec.transfer_ops(),
        [
            "update_read_file",
            "update_read_file",
            "update_read_file",
            "update_read_file_close"
        ]
    );
    assert_eq!(rec.keys(), ["rc", "elapsed"], "no header for downloads");
    rec.assert_rc_then_elapsed(0);
    assert_eq!(rec.complete(), Some(None));
}

#[tokio::test]
async fn download_from_buildbot_4_3_nil_answer_gives_an_empty_file() {
    // §6.8: the stock master answers every update_read_file with nil.
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("dl.txt");
    std::fs::write(&dest, "stale content").unwrap();
    let rec = run_command(
        "download_file",
        download_args(&s(&dest), 16_384, None, None),
        Script::default(),
    )
    .await;
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        b"",
        "truncated and left empty"
    );
    let names: Vec<&str> = rec.ops.iter().map(Op::name).collect();
    assert_eq!(
        names,
        [
            "update_read_file",
            "update_read_file_close",
            "update",
            "complete"
        ],
        "the trace's sequence"
    );
    assert_eq!(rec.read_lengths, [16_384]);
    assert_eq!(rec.keys(), ["rc", "elapsed"]);
    rec.assert_rc_then_elapsed(0);
    assert_eq!(rec.complete(), Some(None));
}

#[cfg(unix)]
#[tokio::test]
async fn download_applies_mode() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    for mode in [0o755, 0o600] {
        let dest = tmp.path().join(format!("tool-{mode:o}"));
        let script = Script {
            download: VecDeque::from([Value::Binary(b"#!/bin/sh\n".to_vec())]),
            ..Script::default()
        };
        let rec = run_command(
            "download_file",
            download_args(&s(&dest), 1024, None, Some(mode)),
            script,
        )
        .await;
        rec.assert_rc_then_elapsed(0);
        assert_eq!(
            std::fs::metadata(&dest).unwrap().permissions().mode() & 0o7777,
            mode as u32
        );
        assert_eq!(std::fs::read(&dest).unwrap(), b"#!/bin/sh\n");
    }
}

#[tokio::test]
async fn download_stops_at_maxsize_with_rc_1() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("dl.bin");
    let script = Script {
        download: VecDeque::from([
            Value::Binary(b"abcd".to_vec()),
            Value::Binary(b"efgh".to_vec()),
            Value::Binary(b"ij".to_vec()),
            Value::Binary(b"zz".to_vec()),
        ]),
        ..Script::default()
    };
    let rec = run_command(
        "download_file",
        download_args(&s(&dest), 4, Some(10), None),
        script,
    )
    .await;
    assert_eq!(
        rec.read_lengths,
        [4, 4, 2],
        "asks for min(blocksize, what maxsize leaves)"
    );
    assert_eq!(std::fs::read(&dest).unwrap(), b"abcdefghij");
    assert_eq!(
        rec.transfer_ops().last().map(String::as_str),
        Some("update_read_file_close")
    );
    assert_eq!(
        rec.text("stderr"),
        format!("Maximum filesize reached, truncating file '{}'\n", s(&dest))
    );
    assert_eq!(rec.keys(), ["rc", "stderr", "elapsed"]);
    rec.assert_rc_then_elapsed(1);
}

#[tokio::test]
async fn download_to_an_unwritable_path_reports_and_closes() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("a-directory");
    std::fs::create_dir(&dest).unwrap();
    let rec = run_command(
        "download_file",
        download_args(&s(&dest), 1024, None, None),
        Script::default(),
    )
    .await;
    assert_eq!(
        rec.transfer_ops(),
        ["update_read_file_close"],
        "nothing is read, the reader is closed"
    );
    assert_eq!(
        rec.text("stderr"),
        format!("Cannot open file '{}' for download\n", s(&dest))
    );
    rec.assert_rc_then_elapsed(1);
    assert_eq!(rec.complete(), Some(None));
}

#[tokio::test]
async fn a_refused_read_fails_the_download() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("dl.txt");
    let script = Script {
        read_error: Some("no such source".into()),
        ..Script::default()
    };
    let rec = run_command(
        "download_file",
        download_args(&s(&dest), 1024, None, None),
        script,
    )
    .await;
    assert_eq!(
        rec.transfer_ops(),
        ["update_read_file", "update_read_file_close"]
    );
    let failure = rec.complete().expect("complete").expect("a failure string");
    assert!(failure.contains("no such source"), "{failure}");
    assert_eq!(rec.rc(), Some(1));
}

#[tokio::test]
async fn an_interrupt_stops_the_download() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("dl.txt");
    let script = Script {
        download: (0..10).map(|_| Value::Binary(vec![b'x'; 8])).collect(),
        interrupt_after: Some(2),
        ..Script::default()
    };
    let rec = run_command(
        "download_file",
        download_args(&s(&dest), 8, None, None),
        script,
    )
    .await;
    assert_eq!(rec.read_lengths.len(), 2);
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        vec![b'x'; 16],
        "what arrived before the interrupt is kept"
    );
    assert_eq!(
        rec.transfer_ops().last().map(String::as_str),
        Some("update_read_file_close")
    );
    assert_eq!(rec.items(), [UpdateItem::Rc(1)], "rc 1 and no elapsed");
    assert_eq!(rec.complete(), Some(None));
}

#[tokio::test]
async fn a_lost_connection_ends_the_download_with_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("dl.txt");
    let (mut ctx, rx, handle) = make_ctx();
    let a = DownloadFileArgs::parse(&download_args(&s(&dest), 8, None, None)).unwrap();
    let script = Script {
        download: (0..10).map(|_| Value::Binary(vec![b'y'; 8])).collect(),
        close_after: Some(3),
        ..Script::default()
    };
    let master = tokio::spawn(play_master(rx, handle, script));
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        transfer::download_file(&mut ctx, a),
    )
    .await
    .expect("no hang");
    assert!(
        result
            .expect_err("a lost connection fails the command")
            .contains("lost")
    );
    assert_eq!(master.await.unwrap().read_lengths.len(), 3);
}
