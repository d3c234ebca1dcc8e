//! Golden vectors: every distinct message of the captured Buildbot 4.3.0 session
//! (spec Appendix A), packed by Python's own `msgpack.packb(d, use_bin_type=True)`
//! (see `golden/gen_golden.py` and `golden/manifest.json`).
//!
//! Each vector must decode to the right variant with the right fields, and
//! re-encode to exactly the bytes Python produced.

use std::collections::BTreeSet;
use std::path::PathBuf;

use kiln_proto::args::{
    Args, CommandLine, Compression, CpdirArgs, DownloadFileArgs, EnvValue, PathArgs, PathsArgs,
    ShellArgs, UploadDirectoryArgs, UploadFileArgs,
};
use kiln_proto::update::{Lines, UpdateItem};
use kiln_proto::{Limits, MapExt, Message, Op, Response, Value, decode, encode, text_of};

const BUILD: &str = "/srv/bb-demo/worker/b1/build";

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

struct Vector {
    file: String,
    direction: String,
    op: String,
    typ: String,
    seq_number: i64,
    captured_len: Option<u64>,
    bytes: Vec<u8>,
}

fn manifest() -> Vec<Vector> {
    let text = std::fs::read_to_string(golden_dir().join("manifest.json")).expect("manifest.json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("manifest is JSON");
    json["vectors"]
        .as_array()
        .expect("vectors array")
        .iter()
        .map(|v| {
            let file = v["file"].as_str().unwrap().to_owned();
            let bytes =
                std::fs::read(golden_dir().join(&file)).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(
                v["len"].as_u64(),
                Some(bytes.len() as u64),
                "{file}: manifest len"
            );
            Vector {
                direction: v["direction"].as_str().unwrap().to_owned(),
                op: v["op"].as_str().unwrap().to_owned(),
                typ: v["type"].as_str().unwrap().to_owned(),
                seq_number: v["seq_number"].as_i64().unwrap(),
                captured_len: v["captured_len"].as_u64(),
                file,
                bytes,
            }
        })
        .collect()
}

/// The vector whose file name is `NN_<name>.msgpack`, decoded.
fn load(name: &str) -> (Message, Vec<u8>) {
    let v = manifest()
        .into_iter()
        .find(|v| v.file.split_once('_').map(|(_, rest)| rest) == Some(&format!("{name}.msgpack")))
        .unwrap_or_else(|| panic!("no golden vector {name}"));
    let msg = decode(&v.bytes, &Limits::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
    (msg, v.bytes)
}

fn request(name: &str) -> (i64, Op) {
    match load(name).0 {
        Message::Request { seq_number, op } => (seq_number, op),
        other => panic!("{name}: expected a request, got {other:?}"),
    }
}

fn response(name: &str) -> Response {
    match load(name).0 {
        Message::Response(r) => r,
        other => panic!("{name}: expected a response, got {other:?}"),
    }
}

fn update(name: &str) -> (i64, String, Vec<UpdateItem>) {
    match request(name) {
        (seq, Op::Update { command_id, items }) => (seq, command_id, items),
        (_, other) => panic!("{name}: expected update, got {other:?}"),
    }
}

fn start(name: &str) -> (i64, Option<String>, String, String, Args) {
    match request(name) {
        (
            seq,
            Op::StartCommand {
                builder_name,
                command_id,
                command_name,
                args,
            },
        ) => (seq, builder_name, command_id, command_name, args),
        (_, other) => panic!("{name}: expected start_command, got {other:?}"),
    }
}

fn variant(msg: &Message) -> &'static str {
    match msg {
        Message::Response(_) => "Response",
        Message::Request { op, .. } => match op {
            Op::Print { .. } => "Print",
            Op::Keepalive => "Keepalive",
            Op::GetWorkerInfo => "GetWorkerInfo",
            Op::SetWorkerSettings(_) => "SetWorkerSettings",
            Op::StartCommand { .. } => "StartCommand",
            Op::InterruptCommand { .. } => "InterruptCommand",
            Op::Shutdown => "Shutdown",
            Op::Update { .. } => "Update",
            Op::Complete { .. } => "Complete",
            Op::UploadFileWrite { .. } => "UploadFileWrite",
            Op::UploadFileClose { .. } => "UploadFileClose",
            Op::UploadFileUtime { .. } => "UploadFileUtime",
            Op::UploadDirectoryWrite { .. } => "UploadDirectoryWrite",
            Op::UploadDirectoryUnpack { .. } => "UploadDirectoryUnpack",
            Op::ReadFile { .. } => "ReadFile",
            Op::ReadFileClose { .. } => "ReadFileClose",
            Op::Unknown { .. } => "Unknown",
        },
    }
}

fn lines_of(item: &UpdateItem) -> &Lines {
    match item {
        UpdateItem::Header(l)
        | UpdateItem::Stdout(l)
        | UpdateItem::Stderr(l)
        | UpdateItem::Log(_, l) => l,
        other => panic!("not a line item: {other:?}"),
    }
}

fn keys(items: &[UpdateItem]) -> Vec<&str> {
    items.iter().map(UpdateItem::key).collect()
}

/// Newline positions and line times must describe the text (§7.2).
fn assert_consistent(l: &Lines) {
    assert!(l.text.ends_with('\n'), "{:?}", l.text);
    let pos: Vec<u32> = l
        .text
        .chars()
        .enumerate()
        .filter(|(_, c)| *c == '\n')
        .map(|(i, _)| i as u32)
        .collect();
    assert_eq!(l.newlines, pos);
    assert_eq!(l.times.len(), l.newlines.len());
}

// --------------------------------------------------------------------------

#[test]
fn every_vector_decodes_to_its_type_and_reencodes_byte_for_byte() {
    let vectors = manifest();
    assert!(vectors.len() >= 50, "only {} vectors", vectors.len());
    for v in &vectors {
        let msg =
            decode(&v.bytes, &Limits::default()).unwrap_or_else(|e| panic!("{}: {e}", v.file));
        assert_eq!(variant(&msg), v.typ, "{}", v.file);
        match &msg {
            Message::Response(r) => {
                assert_eq!(v.op, "response", "{}", v.file);
                assert_eq!(r.seq_number, v.seq_number, "{}", v.file);
            }
            Message::Request { seq_number, op } => {
                assert_eq!(op.name(), v.op, "{}", v.file);
                assert_eq!(*seq_number, v.seq_number, "{}", v.file);
                let expected = if op.is_master_to_worker() {
                    "M->W"
                } else {
                    "W->M"
                };
                assert_eq!(v.direction, expected, "{}", v.file);
            }
        }
        if let Some(n) = v.captured_len {
            assert_eq!(
                v.bytes.len() as u64,
                n,
                "{}: not the captured length",
                v.file
            );
        }
        let again = encode(&msg);
        assert!(
            again == v.bytes,
            "{}: re-encoding differs\n python: {:02x?}\n   rust: {:02x?}",
            v.file,
            &v.bytes[..v.bytes.len().min(200)],
            &again[..again.len().min(200)]
        );
        // encode_into appends.
        let mut buf = vec![0xAA];
        kiln_proto::encode_into(&msg, &mut buf);
        assert_eq!(&buf[1..], &v.bytes[..], "{}", v.file);
    }
}

#[test]
fn manifest_lists_every_vector_file_and_covers_every_op() {
    let listed: BTreeSet<String> = manifest().into_iter().map(|v| v.file).collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".msgpack"))
        .collect();
    assert_eq!(listed, on_disk);

    let types: BTreeSet<String> = manifest().into_iter().map(|v| v.typ).collect();
    for t in [
        "Print",
        "Keepalive",
        "GetWorkerInfo",
        "SetWorkerSettings",
        "StartCommand",
        "InterruptCommand",
        "Shutdown",
        "Update",
        "Complete",
        "UploadFileWrite",
        "UploadFileClose",
        "UploadFileUtime",
        "UploadDirectoryWrite",
        "UploadDirectoryUnpack",
        "ReadFile",
        "ReadFileClose",
        "Response",
    ] {
        assert!(types.contains(t), "no golden vector for {t}");
    }
    // Every command the master sends in the capture.
    let names: BTreeSet<String> = manifest()
        .into_iter()
        .filter_map(|v| match decode(&v.bytes, &Limits::default()).unwrap() {
            Message::Request {
                op: Op::StartCommand { command_name, .. },
                ..
            } => Some(command_name),
            _ => None,
        })
        .collect();
    for n in [
        "shell",
        "listdir",
        "mkdir",
        "rmdir",
        "cpdir",
        "stat",
        "glob",
        "download_file",
        "upload_file",
        "upload_directory",
    ] {
        assert!(names.contains(n), "no start_command {n}");
    }
}

// --- master → worker ---

#[test]
fn print_keepalive_info_shutdown() {
    assert_eq!(
        request("print_attached"),
        (
            0,
            Op::Print {
                message: "attached".into()
            }
        )
    );
    assert_eq!(
        request("print_ping"),
        (
            6,
            Op::Print {
                message: "ping".into()
            }
        )
    );
    assert_eq!(request("get_worker_info"), (1, Op::GetWorkerInfo));
    assert_eq!(request("keepalive"), (5, Op::Keepalive));
    assert_eq!(request("shutdown"), (27, Op::Shutdown));
}

#[test]
fn set_worker_settings() {
    let (seq, op) = request("set_worker_settings");
    assert_eq!(seq, 2);
    let Op::SetWorkerSettings(s) = op else {
        panic!("{op:?}")
    };
    assert_eq!(s.newline_re, kiln_proto::defaults::NEWLINE_RE);
    assert_eq!(s.max_line_length, 4096);
    assert_eq!(s.buffer_size, 65536);
    assert_eq!(s.buffer_timeout, 5.0);
    assert!(
        s.buffer_timeout_is_int,
        "the master sends buffer_timeout as int 5"
    );
    assert_eq!(s, kiln_proto::args::WorkerSettings::default());
}

#[test]
fn start_listdir_and_attach_mkdir_have_no_builder_name() {
    let (seq, builder, id, name, args) = start("start_listdir");
    assert_eq!(
        (seq, builder, id.as_str(), name.as_str()),
        (3, None, "0", "listdir")
    );
    assert_eq!(
        PathArgs::parse("WorkerListdirCommand", &args).unwrap().path,
        "/srv/bb-demo/worker"
    );

    let (seq, builder, id, name, args) = start("start_mkdir_attach");
    assert_eq!(
        (seq, builder, id.as_str(), name.as_str()),
        (4, None, "1", "mkdir")
    );
    assert_eq!(
        PathsArgs::parse("WorkerMkdirCommand", &args).unwrap().paths,
        vec!["/srv/bb-demo/worker/b1".to_owned()]
    );
}

#[test]
fn start_shell_string_with_env() {
    let (seq, builder, id, name, args) = start("start_shell_string_env");
    assert_eq!(
        (seq, builder.as_deref(), id.as_str(), name.as_str()),
        (7, Some("b1"), "2", "shell")
    );
    // Key order of args survives decoding (it is what makes re-encoding exact).
    let order: Vec<String> = args.0.iter().map(|(k, _)| text_of(k).unwrap()).collect();
    assert_eq!(
        order,
        [
            "workdir",
            "env",
            "want_stdout",
            "want_stderr",
            "logfiles",
            "timeout",
            "maxTime",
            "max_lines",
            "sigtermTime",
            "usePTY",
            "logEnviron",
            "initial_stdin",
            "interruptSignal",
            "command"
        ]
    );
    assert_eq!(args.0.get_key("maxTime"), Some(&Value::Nil));
    assert_eq!(args.0.get_key("timeout"), Some(&Value::from(1200)));
    let s = ShellArgs::parse(&args).unwrap();
    assert!(
        matches!(&s.command, CommandLine::Shell(c) if c.starts_with("echo hello; echo oops >&2;") && c.ends_with("printf 'no-newline'"))
    );
    assert_eq!(s.workdir, BUILD);
    assert_eq!(
        s.env,
        Some(vec![
            ("FOO".into(), EnvValue::Text("bar".into())),
            (
                "MYPATH".into(),
                EnvValue::List(vec!["/a".into(), "/b".into()])
            ),
            (
                "PYTHONPATH".into(),
                EnvValue::List(vec!["/x".into(), "/y".into()])
            ),
            ("HOMECOPY".into(), EnvValue::Text("${HOME}/sub".into())),
            ("LANG".into(), EnvValue::Unset),
        ])
    );
    assert_eq!(s.env_error, None);
    assert!(s.want_stdout && s.want_stderr && s.log_environ && !s.use_pty);
    assert_eq!(s.timeout, Some(1200.0));
    assert_eq!(
        (s.max_time, s.max_lines, s.sigterm_time),
        (None, None, None)
    );
    assert_eq!(s.interrupt_signal, "KILL");
    assert_eq!(s.initial_stdin, None);
    assert!(s.logfiles.is_empty());
}

#[test]
fn start_shell_variants() {
    let (seq, _, id, _, args) = start("start_shell_argv");
    assert_eq!((seq, id.as_str()), (8, "3"));
    let s = ShellArgs::parse(&args).unwrap();
    let CommandLine::Argv(argv) = &s.command else {
        panic!("{:?}", s.command)
    };
    let argv: Vec<&str> = argv.iter().map(|a| a.real()).collect();
    assert_eq!(
        argv,
        [
            "python3",
            "-c",
            "import sys; print(\"x\" * 10); sys.exit(3)"
        ]
    );
    assert_eq!(s.env, None, "an empty env map means: inherit");
    assert!(!s.log_environ);

    let (_, _, id, _, args) = start("start_shell_logfiles");
    assert_eq!(id, "4");
    let s = ShellArgs::parse(&args).unwrap();
    assert_eq!(s.logfiles.len(), 1);
    assert_eq!(
        (
            s.logfiles[0].name.as_str(),
            s.logfiles[0].filename.as_str(),
            s.logfiles[0].follow
        ),
        ("mylog", "out.log", false)
    );

    let (_, _, id, _, args) = start("start_shell_maxtime");
    assert_eq!(id, "5");
    let s = ShellArgs::parse(&args).unwrap();
    assert_eq!(
        (s.timeout, s.max_time, s.sigterm_time),
        (Some(1200.0), Some(2.0), Some(1.0))
    );

    let (_, _, id, _, args) = start("start_shell_timeout");
    assert_eq!(id, "6");
    let s = ShellArgs::parse(&args).unwrap();
    assert_eq!((s.timeout, s.max_time), (Some(2.0), None));
    assert!(matches!(&s.command, CommandLine::Shell(c) if c == "sleep 10"));

    let (seq, _, id, _, args) = start("start_shell_sleep_argv");
    assert_eq!((seq, id.as_str()), (24, "19"));
    let s = ShellArgs::parse(&args).unwrap();
    assert_eq!(s.sigterm_time, Some(1.0));
    assert!(matches!(&s.command, CommandLine::Argv(a) if a.len() == 2 && a[1].real() == "30"));
}

#[test]
fn start_transfers() {
    let (seq, _, id, name, args) = start("start_download_file");
    assert_eq!(
        (seq, id.as_str(), name.as_str()),
        (12, "7", "download_file")
    );
    let d = DownloadFileArgs::parse(&args).unwrap();
    assert_eq!(
        d,
        DownloadFileArgs {
            path: format!("{BUILD}/dl.txt"),
            blocksize: 16384,
            maxsize: None,
            mode: None
        }
    );

    let (_, _, id, name, args) = start("start_upload_file");
    assert_eq!((id.as_str(), name.as_str()), ("9", "upload_file"));
    let u = UploadFileArgs::parse(&args).unwrap();
    assert_eq!(
        u,
        UploadFileArgs {
            path: format!("{BUILD}/up.txt"),
            blocksize: 262144,
            maxsize: None,
            keepstamp: false
        }
    );

    let (_, _, id, _, args) = start("start_upload_file_abs");
    assert_eq!(id, "13");
    assert_eq!(UploadFileArgs::parse(&args).unwrap().blocksize, 16384);

    let (seq, _, id, _, args) = start("start_upload_file_keepstamp");
    assert_eq!((seq, id.as_str()), (26, "20"));
    assert!(UploadFileArgs::parse(&args).unwrap().keepstamp);

    let (_, _, id, name, args) = start("start_upload_directory");
    assert_eq!((id.as_str(), name.as_str()), ("10", "upload_directory"));
    let u = UploadDirectoryArgs::parse(&args).unwrap();
    assert_eq!(
        u,
        UploadDirectoryArgs {
            path: format!("{BUILD}/dir"),
            blocksize: 16384,
            maxsize: None,
            compress: Compression::None
        }
    );
}

#[test]
fn start_fs_commands() {
    let (_, _, id, name, args) = start("start_glob");
    assert_eq!((id.as_str(), name.as_str()), ("11", "glob"));
    assert_eq!(
        PathArgs::parse("WorkerGlobCommand", &args).unwrap().path,
        format!("{BUILD}/*.txt")
    );

    let (_, _, id, name, args) = start("start_stat_workdir");
    assert_eq!((id.as_str(), name.as_str()), ("12", "stat"));
    assert_eq!(
        args.0.get_key("workdir").and_then(text_of).as_deref(),
        Some("build")
    );
    assert_eq!(
        PathArgs::parse("WorkerStatCommand", &args).unwrap().path,
        format!("{BUILD}/dl.txt")
    );

    let (_, _, _, _, args) = start("start_stat_missing");
    assert_eq!(
        PathArgs::parse("WorkerStatCommand", &args).unwrap().path,
        "/srv/bb-demo/worker/b1/up.txt"
    );

    let (_, _, id, name, args) = start("start_mkdir");
    assert_eq!((id.as_str(), name.as_str()), ("16", "mkdir"));
    assert_eq!(
        PathsArgs::parse("WorkerMkdirCommand", &args).unwrap().paths,
        vec![format!("{BUILD}/newdir")]
    );

    let (_, _, id, name, args) = start("start_cpdir");
    assert_eq!((id.as_str(), name.as_str()), ("17", "cpdir"));
    let c = CpdirArgs::parse(&args).unwrap();
    assert_eq!(
        (c.from_path, c.to_path, c.timeout),
        (format!("{BUILD}/dir"), format!("{BUILD}/dir2"), Some(120.0))
    );

    let (_, _, id, name, args) = start("start_rmdir");
    assert_eq!((id.as_str(), name.as_str()), ("18", "rmdir"));
    let r = PathsArgs::parse("WorkerRmdirCommand", &args).unwrap();
    assert_eq!(r.paths, vec![format!("{BUILD}/dir2")]);
    assert!(r.log_environ, "rmdir logs the environment by default");
}

#[test]
fn interrupt_command() {
    assert_eq!(
        request("interrupt_command"),
        (
            25,
            Op::InterruptCommand {
                builder_name: Some("b1".into()),
                command_id: "19".into(),
                why: "bbproto test interrupt".into()
            }
        )
    );
}

// --- responses ---

#[test]
fn responses() {
    assert_eq!(response("response_none_m2w"), Response::ok(0));
    assert_eq!(response("response_none_w2m"), Response::ok(3));

    let r = response("response_exception_utime");
    assert!(r.is_exception);
    assert_eq!(r.seq_number, 52);
    assert_eq!(
        r.error_text().as_deref(),
        Some("FileWriter.remote_utime() takes 2 positional arguments but 3 were given")
    );
    assert_eq!(
        r,
        Response::error(
            52,
            "FileWriter.remote_utime() takes 2 positional arguments but 3 were given"
        )
    );

    let r = response("response_read_file_bin");
    assert_eq!(
        r,
        Response::with_result(14, Value::Binary(b"hello download\n".to_vec()))
    );
    assert_eq!(r.error_text(), None);

    let r = response("response_unknown_op");
    assert_eq!(r, Response::error(9, Op::unknown_error("frobnicate")));
}

#[test]
fn worker_info_response() {
    let r = response("response_worker_info");
    assert_eq!((r.seq_number, r.is_exception), (1, false));
    let Value::Map(info) = &r.result else {
        panic!("{:?}", r.result)
    };
    let order: Vec<String> = info.iter().map(|(k, _)| text_of(k).unwrap()).collect();
    assert_eq!(order.first().map(String::as_str), Some("admin"));
    assert_eq!(
        &order[order.len() - 7..],
        [
            "environ",
            "system",
            "basedir",
            "numcpus",
            "version",
            "worker_commands",
            "delete_leftover_dirs"
        ]
    );
    assert_eq!(info.get_key("system"), Some(&Value::from("posix")));
    assert_eq!(
        info.get_key("basedir"),
        Some(&Value::from("/srv/bb-demo/worker"))
    );
    assert_eq!(info.get_key("numcpus"), Some(&Value::from(2)));
    assert_eq!(info.get_key("version"), Some(&Value::from("4.3.0")));
    // An int, not a bool (§9, §11.11).
    assert_eq!(info.get_key("delete_leftover_dirs"), Some(&Value::from(0)));
    let Some(Value::Map(env)) = info.get_key("environ") else {
        panic!("environ")
    };
    assert_eq!(env.get_key("HOME"), Some(&Value::from("/root")));
    // worker_commands: exactly what kiln's WorkerInfo builds, in registry order.
    assert_eq!(
        info.get_key("worker_commands"),
        Some(&kiln_proto::info::WorkerInfo::commands(
            kiln_proto::COMMAND_VERSION
        ))
    );
    let Some(Value::Map(cmds)) = info.get_key("worker_commands") else {
        panic!()
    };
    let names: Vec<String> = cmds.iter().map(|(k, _)| text_of(k).unwrap()).collect();
    assert_eq!(names, kiln_proto::args::CommandName::ADVERTISED);
}

// --- worker → master ---

#[test]
fn update_listdir_glob_stat() {
    let (seq, id, items) = update("update_listdir");
    assert_eq!((seq, id.as_str()), (0, "0"));
    assert_eq!(
        items,
        vec![
            UpdateItem::Files(
                [
                    "buildbot.tac",
                    "twistd.pid",
                    "twistd.hostname",
                    "twistd.log",
                    "info"
                ]
                .map(String::from)
                .to_vec()
            ),
            UpdateItem::Rc(0),
            UpdateItem::Elapsed(7.724761962890625e-05),
        ]
    );

    let (_, id, items) = update("update_glob");
    assert_eq!(id, "11");
    assert_eq!(
        items[0],
        UpdateItem::Files(vec![format!("{BUILD}/dl.txt"), format!("{BUILD}/up.txt")])
    );

    let (seq, id, items) = update("update_stat");
    assert_eq!((seq, id.as_str()), (30, "12"));
    let UpdateItem::Stat(st) = &items[0] else {
        panic!("{items:?}")
    };
    assert_eq!(st.len(), 10);
    assert_eq!(&st[..3], &[33152, 10078566, 65024]);
    assert_eq!(st[0] & 0o170000, 0o100000, "a regular file");
    assert_eq!(keys(&items), ["stat", "rc", "elapsed"]);

    let (_, id, items) = update("update_stat_enoent");
    assert_eq!(id, "19");
    assert_eq!(
        keys(&items),
        ["rc", "elapsed", "header"],
        "the error header comes after rc/elapsed"
    );
    assert_eq!(items[0], UpdateItem::Rc(2));
    assert_eq!(
        lines_of(&items[2]).text,
        "stat: No such file or directory: /srv/bb-demo/worker/b1/up.txt\n"
    );
    assert_eq!(lines_of(&items[2]).newlines, [62]);
}

#[test]
fn update_rc_elapsed_and_complete() {
    let (seq, id, items) = update("update_rc_elapsed");
    assert_eq!((seq, id.as_str()), (2, "1"));
    assert_eq!(
        items,
        vec![UpdateItem::Rc(0), UpdateItem::Elapsed(0.0001678466796875)]
    );

    assert_eq!(
        request("complete_none"),
        (
            1,
            Op::Complete {
                command_id: "0".into(),
                failure: None
            }
        )
    );
    let (seq, op) = request("complete_failure");
    assert_eq!(seq, 54);
    let Op::Complete {
        command_id,
        failure: Some(f),
    } = op
    else {
        panic!("{op:?}")
    };
    assert_eq!(command_id, "20");
    assert_eq!(f.chars().count(), 751);
    assert!(f.starts_with("[Failure instance: Traceback: <class 'buildbot_worker.msgpack.RemoteWorkerError'>: FileWriter.remote_utime()"));
}

#[test]
fn update_shell_with_environment_and_final_flush() {
    let (seq, id, items) = update("update_shell_env");
    assert_eq!((seq, id.as_str()), (4, "2"));
    assert_eq!(
        keys(&items),
        [
            "header", "stdout", "stderr", "rc", "header", "elapsed", "stdout"
        ]
    );
    let header = lines_of(&items[0]);
    assert_eq!(header.text.chars().count(), 1822);
    assert_eq!(&header.newlines[..3], &[131, 188, 210]);
    assert_eq!(header.times[0], 1795460561.8780785);
    assert!(header.text.contains("\n  PYTHONPATH=/x:/y:\n"));
    assert!(!header.text.contains("  LANG="));
    for it in items
        .iter()
        .filter(|i| !matches!(i, UpdateItem::Rc(_) | UpdateItem::Elapsed(_)))
    {
        assert_consistent(lines_of(it));
    }
    assert_eq!(
        items[1],
        UpdateItem::Stdout(Lines {
            text: "hello\n".into(),
            newlines: vec![5],
            times: vec![1795460561.8958242]
        })
    );
    assert_eq!(
        items[2],
        UpdateItem::Stderr(Lines {
            text: "oops\n".into(),
            newlines: vec![4],
            times: vec![1795460561.8959298]
        })
    );
    assert_eq!(items[3], UpdateItem::Rc(0));
    assert_eq!(items[5], UpdateItem::Elapsed(0.020874977111816406));
    assert_eq!(
        lines_of(&items[6]).text,
        "no-newline\n",
        "the partial line is flushed after rc/elapsed"
    );
}

#[test]
fn update_shell_rc3_and_log_items() {
    let (seq, id, items) = update("update_shell_rc3");
    assert_eq!((seq, id.as_str()), (6, "3"));
    assert_eq!(
        keys(&items),
        ["header", "stdout", "rc", "header", "elapsed"]
    );
    assert_eq!(lines_of(&items[0]).newlines, [53, 110, 132, 204, 222]);
    assert_eq!(items[2], UpdateItem::Rc(3));
    assert_eq!(items[4], UpdateItem::Elapsed(0.1531975269317627));

    let (seq, id, items) = update("update_shell_log");
    assert_eq!((seq, id.as_str()), (8, "4"));
    assert_eq!(
        keys(&items),
        ["header", "log", "stdout", "log", "rc", "header", "elapsed"]
    );
    assert_eq!(
        items[1],
        UpdateItem::Log(
            "mylog".into(),
            Lines {
                text: "line1\nline2\n".into(),
                newlines: vec![5, 11],
                times: vec![1795460565.1309404, 1795460565.1309404]
            }
        )
    );
    assert_eq!(
        items[3],
        UpdateItem::Log(
            "mylog".into(),
            Lines {
                text: "line3\n".into(),
                newlines: vec![5],
                times: vec![1795460566.1453197]
            }
        )
    );
}

#[test]
fn update_kills_timeouts_and_interrupts() {
    let (_, id, items) = update("update_shell_maxtime");
    assert_eq!(id, "5");
    assert_eq!(
        keys(&items),
        [
            "header",
            "stdout",
            "failure_reason",
            "header",
            "rc",
            "header",
            "elapsed"
        ]
    );
    assert_eq!(items[2], UpdateItem::FailureReason("timeout".into()));
    assert_eq!(items[4], UpdateItem::Rc(-1));
    assert_eq!(lines_of(&items[3]).newlines, [0, 89, 117]);

    let (_, id, items) = update("update_shell_timeout");
    assert_eq!(id, "6");
    assert_eq!(
        items[1],
        UpdateItem::FailureReason("timeout_without_output".into())
    );
    assert_eq!(items[3], UpdateItem::Rc(-1));
    assert_eq!(items[5], UpdateItem::Elapsed(2.0138401985168457));

    let (seq, id, items) = update("update_interrupt_flush");
    assert_eq!((seq, id.as_str()), (47, "19"));
    assert_eq!(keys(&items), ["header"]);
    assert_eq!(lines_of(&items[0]).newlines, [8, 65, 87, 112, 130]);

    let (seq, _, items) = update("update_interrupt_killed");
    assert_eq!(seq, 48);
    assert_eq!(
        keys(&items),
        ["header", "rc", "header"],
        "no elapsed after an interrupt"
    );
    assert_eq!(items[1], UpdateItem::Rc(-1));
    assert_eq!(
        lines_of(&items[0]).times,
        [1795460663.0883098, 1795460663.0883098, 1795460663.0905583]
    );
}

#[test]
fn update_fs_child_processes() {
    let (seq, id, items) = update("update_cpdir");
    assert_eq!((seq, id.as_str()), (43, "17"));
    assert_eq!(
        keys(&items),
        ["header", "stdout", "header", "rc", "elapsed"]
    );
    assert_eq!(lines_of(&items[0]).text.chars().count(), 1678);
    assert_eq!(lines_of(&items[1]).newlines.len(), 4);
    for i in [0, 1, 2] {
        assert_consistent(lines_of(&items[i]));
    }

    let (seq, id, items) = update("update_rmdir");
    assert_eq!((seq, id.as_str()), (45, "18"));
    assert_eq!(keys(&items), ["header", "rc", "elapsed"]);
    let h = lines_of(&items[0]);
    assert_eq!(h.text.chars().count(), 1601);
    assert_eq!(&h.newlines[..3], &[40, 87, 109]);
    assert!(
        h.text
            .ends_with(" using PTY: False\nelapsedTime=0.012587\n")
    );
}

#[test]
fn transfer_ops() {
    assert_eq!(
        request("update_read_file"),
        (
            14,
            Op::ReadFile {
                command_id: "7".into(),
                length: 16384
            }
        )
    );
    assert_eq!(
        request("update_read_file_close"),
        (
            15,
            Op::ReadFileClose {
                command_id: "7".into()
            }
        )
    );
    assert_eq!(
        request("update_upload_file_write"),
        (
            20,
            Op::UploadFileWrite {
                command_id: "9".into(),
                data: b"abc".to_vec()
            }
        )
    );
    assert_eq!(
        request("update_upload_file_close"),
        (
            21,
            Op::UploadFileClose {
                command_id: "9".into()
            }
        )
    );
    assert_eq!(
        request("update_upload_file_utime"),
        (
            52,
            Op::UploadFileUtime {
                command_id: "20".into(),
                access_time: 1795460659.2217133,
                modified_time: 1795460648.724916
            }
        )
    );
    assert_eq!(
        request("update_upload_directory_unpack"),
        (
            25,
            Op::UploadDirectoryUnpack {
                command_id: "10".into()
            }
        )
    );

    let (seq, op) = request("update_upload_directory_write");
    assert_eq!(seq, 24);
    let Op::UploadDirectoryWrite { command_id, data } = op else {
        panic!("{op:?}")
    };
    assert_eq!(command_id, "10");
    assert_eq!(data.len(), 10240);
    assert!(data.starts_with(b"././@PaxHeader\0"));
    assert!(
        data[data.len() - 1024..].iter().all(|b| *b == 0),
        "tar end-of-archive padding"
    );

    let (_, id, items) = update("update_upload_header");
    assert_eq!(id, "9");
    assert_eq!(
        items,
        vec![
            UpdateItem::Header(Lines {
                text: format!("sending {BUILD}/up.txt\n"),
                newlines: vec![43],
                times: vec![1795460571.9441283]
            }),
            UpdateItem::Rc(0),
            UpdateItem::Elapsed(0.004705667495727539),
        ]
    );
}

/// Messages built from typed values (not decoded) encode to Python's bytes too.
#[test]
fn constructed_messages_encode_like_python() {
    let golden = |name: &str| load(name).1;
    let msg = Message::Request {
        seq_number: 0,
        op: Op::Print {
            message: "attached".into(),
        },
    };
    assert_eq!(encode(&msg), golden("print_attached"));
    let msg = Message::Request {
        seq_number: 2,
        op: Op::SetWorkerSettings(Default::default()),
    };
    assert_eq!(encode(&msg), golden("set_worker_settings"));
    assert_eq!(
        encode(&Message::Response(Response::ok(0))),
        golden("response_none_m2w")
    );
    assert_eq!(
        encode(&Message::Response(Response::error(
            52,
            "FileWriter.remote_utime() takes 2 positional arguments but 3 were given"
        ))),
        golden("response_exception_utime")
    );
    let msg = Message::Request {
        seq_number: 0,
        op: Op::Update {
            command_id: "0".into(),
            items: vec![
                UpdateItem::Files(
                    [
                        "buildbot.tac",
                        "twistd.pid",
                        "twistd.hostname",
                        "twistd.log",
                        "info",
                    ]
                    .map(String::from)
                    .to_vec(),
                ),
                UpdateItem::Rc(0),
                UpdateItem::Elapsed(7.724761962890625e-05),
            ],
        },
    };
    assert_eq!(encode(&msg), golden("update_listdir"));
    let msg = Message::Request {
        seq_number: 47,
        op: Op::Update {
            command_id: "19".into(),
            items: vec![
                UpdateItem::Rc(2),
                UpdateItem::Elapsed(0.00011110305786132812),
                UpdateItem::Header(Lines::from_text(
                    "stat: No such file or directory: /srv/bb-demo/worker/b1/up.txt\n",
                    1795460573.484778,
                )),
            ],
        },
    };
    assert_eq!(encode(&msg), golden("update_stat_enoent"));
    let msg = Message::Request {
        seq_number: 3,
        op: Op::StartCommand {
            builder_name: None,
            command_id: "0".into(),
            command_name: "listdir".into(),
            args: Args::from_pairs([("path", "/srv/bb-demo/worker")]),
        },
    };
    assert_eq!(encode(&msg), golden("start_listdir"));
    let msg = Message::Request {
        seq_number: 1,
        op: Op::Complete {
            command_id: "0".into(),
            failure: None,
        },
    };
    assert_eq!(encode(&msg), golden("complete_none"));
}
