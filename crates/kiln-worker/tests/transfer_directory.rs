//! `upload_directory`: the tar stream a fake master receives is unpacked by Python's
//! `tarfile` (as Buildbot's master does) and compared with the source tree (§8.5, §6.6–6.7).

mod transfer_support;

use std::collections::BTreeMap;
use std::path::Path;

use kiln_proto::Value;
use transfer_support::{Script, args, bytes, python, run_command, s};

fn dir_args(
    path: &str,
    blocksize: i64,
    maxsize: Option<i64>,
    compress: Option<&str>,
) -> kiln_proto::args::Args {
    args([
        ("workdir", Value::from("build")),
        ("maxsize", maxsize.map_or(Value::Nil, Value::from)),
        ("blocksize", Value::from(blocksize)),
        ("compress", compress.map_or(Value::Nil, Value::from)),
        ("workersrc", Value::from("dir")),
        ("path", Value::from(path)),
    ])
}

/// A tree with the awkward parts: nested and empty directories, a symlink, an
/// executable, a binary file larger than a block, a name longer than 100 bytes.
fn source_tree(root: &Path) {
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    std::fs::create_dir_all(root.join("empty")).unwrap();
    std::fs::write(root.join("a.txt"), "a\n").unwrap();
    std::fs::write(root.join("sub/b.txt"), "b\n").unwrap();
    std::fs::write(root.join("sub/deeper/blob.bin"), bytes(70_000, 9)).unwrap();
    std::fs::write(root.join("sub/zero.txt"), "").unwrap();
    let long = format!("{}.txt", "n".repeat(120));
    std::fs::write(root.join("sub").join(long), "long name\n").unwrap();
    std::fs::write(root.join("run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root.join("run.sh"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::os::unix::fs::symlink("sub/b.txt", root.join("link-to-b")).unwrap();
    }
    let times = std::fs::FileTimes::new()
        .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_500_000_000));
    std::fs::File::options()
        .write(true)
        .open(root.join("a.txt"))
        .unwrap()
        .set_times(times)
        .unwrap();
}

#[derive(Debug, PartialEq)]
enum Node {
    Dir,
    File {
        content: Vec<u8>,
        executable: bool,
        mtime: i64,
    },
    Link(String),
}

/// Every entry below `root`, by relative path.
fn snapshot(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Node>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let rel = s(path.strip_prefix(root).unwrap());
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let node = if meta.file_type().is_symlink() {
            Node::Link(s(&std::fs::read_link(&path).unwrap()))
        } else if meta.is_dir() {
            walk(root, &path, out);
            Node::Dir
        } else {
            #[cfg(unix)]
            let executable =
                std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o100 != 0;
            #[cfg(not(unix))]
            let executable = false;
            let mtime = meta
                .modified()
                .unwrap()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
            Node::File {
                content: std::fs::read(&path).unwrap(),
                executable,
                mtime,
            }
        };
        out.insert(rel, node);
    }
}

/// What Buildbot's master does with the uploaded bytes (`DirectoryWriter.remote_unpack`).
const EXTRACT: &str = r#"
import sys, tarfile
archive, mode, dest = sys.argv[1], sys.argv[2], sys.argv[3]
with tarfile.open(name=archive, mode=mode) as t:
    if hasattr(tarfile, 'data_filter'):
        t.extractall(path=dest, filter='data')
    else:
        t.extractall(path=dest)
"#;

async fn upload_and_extract(compress: Option<&str>, modes: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("dir");
    source_tree(&src);

    let rec = run_command(
        "upload_directory",
        dir_args(&s(&src), 4096, None, compress),
        Script::default(),
    )
    .await;
    assert!(rec.chunks.len() > 1, "a multi-chunk transfer");
    assert!(rec.chunks.iter().all(|&c| c <= 4096));
    let ops = rec.transfer_ops();
    assert!(
        ops[..ops.len() - 1]
            .iter()
            .all(|o| o == "update_upload_directory_write"),
        "{ops:?}"
    );
    assert_eq!(
        ops.last().map(String::as_str),
        Some("update_upload_directory_unpack")
    );
    assert_eq!(rec.text("header"), format!("sending {}\n", s(&src)));
    assert_eq!(rec.keys(), ["header", "rc", "elapsed"]);
    rec.assert_rc_then_elapsed(0);
    assert_eq!(rec.complete(), Some(None));

    let archive = tmp.path().join("upload.tar");
    std::fs::write(&archive, &rec.uploaded).unwrap();
    let want = snapshot(&src);
    assert!(want.contains_key("empty") && want.contains_key("sub/deeper/blob.bin"));
    for mode in modes {
        let dest = tmp.path().join(format!("out-{}", mode.replace('|', "-")));
        std::fs::create_dir(&dest).unwrap();
        python(EXTRACT, &[&s(&archive), mode, &s(&dest)]);
        assert_eq!(snapshot(&dest), want, "tree extracted with mode {mode:?}");
    }
}

/// The directory itself is an entry: an empty directory arrives, with its mode.
#[cfg(unix)]
#[tokio::test]
async fn an_empty_directory_arrives_with_its_mode() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("emptydir");
    std::fs::create_dir(&src).unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o750)).unwrap();
    let rec = run_command(
        "upload_directory",
        dir_args(&s(&src), 16_384, None, None),
        Script::default(),
    )
    .await;
    rec.assert_rc_then_elapsed(0);
    let archive = tmp.path().join("upload.tar");
    std::fs::write(&archive, &rec.uploaded).unwrap();
    let dest = tmp.path().join("on-master/emptydir");
    python(EXTRACT, &[&s(&archive), "r|", &s(&dest)]);
    let meta = std::fs::metadata(&dest).expect("the master gets the directory");
    assert!(meta.is_dir());
    assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 0);
    // The 'data' filter gives extracted directories default modes; the archive has the real one.
    let listing = python(
        "import sys, tarfile\nwith tarfile.open(sys.argv[1], 'r|') as t:\n    for m in t: print(m.name, oct(m.mode), m.isdir())",
        &[&s(&archive)],
    );
    assert_eq!(listing.trim(), format!(". {} True", "0o750"));
}

#[tokio::test]
async fn plain_tar_unpacks_with_python_tarfile() {
    upload_and_extract(None, &["r", "r|"]).await;
}

#[tokio::test]
async fn gzip_tar_unpacks_with_python_tarfile() {
    upload_and_extract(Some("gz"), &["r|gz", "r"]).await;
}

#[tokio::test]
async fn bzip2_tar_unpacks_with_python_tarfile() {
    upload_and_extract(Some("bz2"), &["r|bz2", "r"]).await;
}

#[tokio::test]
async fn plain_tar_is_padded_to_whole_records_and_lists_members() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("dir");
    source_tree(&src);
    let rec = run_command(
        "upload_directory",
        dir_args(&s(&src), 16_384, None, None),
        Script::default(),
    )
    .await;
    assert_eq!(
        rec.uploaded.len() % 10_240,
        0,
        "10240-byte records, like Python's tarfile"
    );
    let archive = tmp.path().join("upload.tar");
    std::fs::write(&archive, &rec.uploaded).unwrap();
    let listing = python(
        "import sys, tarfile\nwith tarfile.open(sys.argv[1], 'r|') as t:\n    for m in t: print(m.name, m.type.decode(), m.linkname)",
        &[&s(&archive)],
    );
    let lines: Vec<&str> = listing.lines().collect();
    let first: Vec<&str> = lines.iter().map(|l| l.split(' ').next().unwrap()).collect();
    let long = format!("sub/{}.txt", "n".repeat(120));
    let mut expected = vec![
        ".",
        "a.txt",
        "empty",
        "link-to-b",
        "run.sh",
        "sub",
        "sub/b.txt",
        "sub/deeper",
        "sub/deeper/blob.bin",
        long.as_str(),
        "sub/zero.txt",
    ];
    if cfg!(not(unix)) {
        expected.retain(|n| *n != "link-to-b");
    }
    assert_eq!(
        first, expected,
        "relative names, parents first, sorted like tarfile.add"
    );
    #[cfg(unix)]
    assert!(
        lines.contains(&"link-to-b 2 sub/b.txt"),
        "the symlink is stored as a link: {lines:?}"
    );
}

#[tokio::test]
async fn an_unreadable_directory_sends_no_transfer_ops() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing");
    let rec = run_command(
        "upload_directory",
        dir_args(&s(&missing), 16_384, None, None),
        Script::default(),
    )
    .await;
    assert!(rec.transfer_ops().is_empty(), "{:?}", rec.transfer_ops());
    let p = s(&missing);
    assert_eq!(
        rec.text("stderr"),
        format!(
            "Cannot read directory '{p}' for upload: [Errno 2] No such file or directory: '{p}'\n"
        )
    );
    assert_eq!(rec.keys(), ["rc", "stderr", "elapsed"]);
    rec.assert_rc_then_elapsed(1);
    assert_eq!(rec.complete(), Some(None));
}

#[tokio::test]
async fn maxsize_truncates_and_skips_the_unpack() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("dir");
    source_tree(&src);
    let rec = run_command(
        "upload_directory",
        dir_args(&s(&src), 4096, Some(10_000), None),
        Script::default(),
    )
    .await;
    assert_eq!(rec.uploaded.len(), 10_000);
    assert!(
        !rec.transfer_ops()
            .contains(&"update_upload_directory_unpack".to_owned()),
        "a cut archive is not unpacked"
    );
    assert_eq!(
        rec.text("stderr"),
        format!("Maximum filesize reached, truncating file '{}'\n", s(&src))
    );
    rec.assert_rc_then_elapsed(1);
}

#[tokio::test]
async fn a_failed_unpack_fails_the_command_with_rc_1() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("dir");
    source_tree(&src);
    let script = Script {
        unpack_error: Some("ReadError: bad archive".into()),
        ..Script::default()
    };
    let rec = run_command(
        "upload_directory",
        dir_args(&s(&src), 65_536, None, Some("gz")),
        script,
    )
    .await;
    rec.assert_rc_then_elapsed(1);
    let failure = rec.complete().expect("complete").expect("a failure string");
    assert!(failure.contains("ReadError: bad archive"), "{failure}");
}

#[tokio::test]
async fn an_interrupt_stops_the_directory_upload() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("dir");
    source_tree(&src);
    let script = Script {
        interrupt_after: Some(2),
        ..Script::default()
    };
    let rec = run_command(
        "upload_directory",
        dir_args(&s(&src), 1024, None, None),
        script,
    )
    .await;
    assert_eq!(rec.chunks.len(), 2);
    assert!(
        !rec.transfer_ops()
            .contains(&"update_upload_directory_unpack".to_owned())
    );
    assert_eq!(rec.rc(), Some(1));
    assert!(!rec.keys().contains(&"elapsed".to_owned()));
}
