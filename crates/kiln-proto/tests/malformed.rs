//! Malformed input: what the decoder answers, and that it answers it cheaply
//! (no panic, no huge allocation, no deep recursion).

use std::time::{Duration, Instant};

use kiln_proto::update::UpdateItem;
use kiln_proto::{DecodeError, Limits, MAX_DEPTH, Message, Op, Response, Value, decode, encode};

fn golden(name: &str) -> Vec<u8> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|f| f.split_once('_').map(|(_, rest)| rest) == Some(&format!("{name}.msgpack")))
        .unwrap_or_else(|| panic!("no golden vector {name}"));
    std::fs::read(dir.join(file)).unwrap()
}

fn all_golden() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "msgpack"))
        .collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

fn dec(b: &[u8]) -> Result<Message, DecodeError> {
    decode(b, &Limits::default())
}

/// A map with string keys, in this order.
fn map(pairs: &[(&str, Value)]) -> Vec<u8> {
    let v = Value::Map(
        pairs
            .iter()
            .map(|(k, v)| (Value::from(*k), v.clone()))
            .collect(),
    );
    let mut b = Vec::new();
    rmpv::encode::write_value(&mut b, &v).unwrap();
    b
}

/// `(key, value)` pairs of a map under construction.
type Fields = Vec<(&'static str, Value)>;

fn s(x: &str) -> Value {
    Value::from(x)
}

fn malformed(r: Result<Message, DecodeError>, needle: &str) {
    match r {
        Err(DecodeError::Malformed(why)) => {
            assert!(why.contains(needle), "{why:?} does not mention {needle:?}")
        }
        other => panic!("expected Malformed({needle:?}), got {other:?}"),
    }
}

fn bad_request(r: Result<Message, DecodeError>, seq: i64, op: &str, reason: &str) {
    assert_eq!(
        r,
        Err(DecodeError::BadRequest {
            seq_number: seq,
            op: op.into(),
            reason: reason.into()
        })
    );
}

/// Buildbot's exact text for a missing key: `str(KeyError(...))`, quotes included.
fn missing(key: &str) -> String {
    format!("'message did not contain obligatory \"{key}\" key'")
}

// --------------------------------------------------------------------------

#[test]
fn every_truncation_of_every_golden_vector_is_malformed() {
    for b in all_golden() {
        for n in 0..b.len() {
            // A prefix can end inside any value; all of them are caught by the pre-scan.
            malformed(dec(&b[..n]), "truncated");
        }
    }
}

#[test]
fn oversized_messages_are_refused_before_parsing() {
    let b = golden("update_listdir");
    let limits = Limits {
        max_message: b.len() - 1,
        ..Limits::default()
    };
    assert_eq!(
        decode(&b, &limits),
        Err(DecodeError::TooLarge {
            len: b.len(),
            max: b.len() - 1
        })
    );
    let limits = Limits {
        max_message: b.len(),
        ..Limits::default()
    };
    assert!(decode(&b, &limits).is_ok(), "exactly max_message is fine");

    // Even garbage is refused by size first.
    let max = Limits::default().max_message;
    let huge = vec![0xc1u8; max + 1];
    assert_eq!(dec(&huge), Err(DecodeError::TooLarge { len: max + 1, max }));
    assert_eq!(
        DecodeError::TooLarge { len: 10, max: 5 }.to_string(),
        "message of 10 bytes exceeds the 5-byte limit",
        "the text a peer's log shows"
    );
}

#[test]
fn top_level_must_be_a_map() {
    let mut arr = Vec::new();
    rmpv::encode::write_value(&mut arr, &Value::Array(vec![s("op"), s("print")])).unwrap();
    malformed(dec(&arr), "expected a map, got an array");
    malformed(dec(&[0x2a]), "expected a map, got an integer");
    malformed(dec(&[0xc0]), "expected a map, got nil");
    malformed(dec(&[0xc3]), "expected a map, got a boolean");
    malformed(dec(&[0xa2, b'o', b'p']), "expected a map, got a string");
    malformed(dec(&[0xc4, 0x01, 0x00]), "expected a map, got binary data");
    malformed(
        dec(&[0xcb, 0, 0, 0, 0, 0, 0, 0, 0]),
        "expected a map, got a float",
    );
    malformed(
        dec(&[0xd4, 0x01, 0x00]),
        "expected a map, got an extension value",
    );
    malformed(dec(&[]), "truncated");
}

#[test]
fn trailing_bytes_are_malformed() {
    let mut b = golden("print_attached");
    b.push(0x00);
    malformed(dec(&b), "1 trailing bytes");
    // Two messages glued together are not one message.
    let mut two = golden("keepalive");
    two.extend(golden("keepalive"));
    malformed(dec(&two), "trailing bytes");
}

#[test]
fn reserved_marker_is_malformed() {
    let mut b = map(&[
        ("op", s("print")),
        ("message", s("x")),
        ("seq_number", Value::from(1)),
    ]);
    let at = b.len() - 1;
    b[at] = 0xc1;
    malformed(dec(&b), "reserved msgpack marker 0xc1");
}

#[test]
fn missing_envelope_is_dropped_without_a_response() {
    assert_eq!(
        dec(&map(&[("seq_number", Value::from(3)), ("message", s("x"))])),
        Err(DecodeError::NoEnvelope("op"))
    );
    assert_eq!(
        dec(&map(&[("op", s("print")), ("message", s("x"))])),
        Err(DecodeError::NoEnvelope("seq_number"))
    );
    assert_eq!(dec(&map(&[])), Err(DecodeError::NoEnvelope("op")));
    // A seq_number that is not an integer cannot be answered either.
    assert_eq!(
        dec(&map(&[("op", s("keepalive")), ("seq_number", s("3"))])),
        Err(DecodeError::NoEnvelope("seq_number"))
    );
    assert_eq!(
        dec(&map(&[
            ("op", s("keepalive")),
            ("seq_number", Value::F64(3.0))
        ])),
        Err(DecodeError::NoEnvelope("seq_number"))
    );
    assert_eq!(
        dec(&map(&[
            ("op", s("keepalive")),
            ("seq_number", Value::from(u64::MAX))
        ])),
        Err(DecodeError::NoEnvelope("seq_number"))
    );
    // An op that is not text.
    malformed(
        dec(&map(&[
            ("op", Value::from(7)),
            ("seq_number", Value::from(1)),
        ])),
        "\"op\" is not a string",
    );
    // A response without a usable seq_number.
    assert!(matches!(
        dec(&map(&[("op", s("response")), ("result", Value::Nil)])),
        Err(DecodeError::BadResponse(_))
    ));
    assert!(matches!(
        dec(&map(&[("op", s("response")), ("seq_number", s("1"))])),
        Err(DecodeError::BadResponse(_))
    ));
}

#[test]
fn missing_keys_get_buildbots_exact_text() {
    // The brief's example: interrupt_command without command_id.
    let msg = map(&[
        ("op", s("interrupt_command")),
        ("seq_number", Value::from(6)),
    ]);
    bad_request(dec(&msg), 6, "interrupt_command", &missing("command_id"));
    let r = dec(&msg);
    let Err(DecodeError::BadRequest { reason, .. }) = r else {
        unreachable!()
    };
    assert!(reason.contains(r#"message did not contain obligatory "command_id" key"#));
    assert_eq!(
        reason,
        r#"'message did not contain obligatory "command_id" key'"#
    );

    // Which key is reported first follows Buildbot's contains_msg_key order.
    let seq = || ("seq_number", Value::from(9));
    let cases: &[(&str, Fields, &str)] = &[
        ("print", vec![], "message"),
        ("set_worker_settings", vec![], "args"),
        (
            "start_command",
            vec![("args", Value::Map(vec![]))],
            "command_id",
        ),
        (
            "start_command",
            vec![("command_id", s("1")), ("args", Value::Map(vec![]))],
            "command_name",
        ),
        (
            "start_command",
            vec![("command_id", s("1")), ("command_name", s("shell"))],
            "args",
        ),
        ("interrupt_command", vec![("command_id", s("1"))], "why"),
        ("update", vec![], "command_id"),
        ("update", vec![("command_id", s("1"))], "args"),
        ("complete", vec![("command_id", s("1"))], "args"),
        ("complete", vec![("args", Value::Nil)], "command_id"),
        (
            "update_upload_file_write",
            vec![("command_id", s("1"))],
            "args",
        ),
        (
            "update_upload_directory_write",
            vec![("args", Value::Binary(vec![]))],
            "command_id",
        ),
        (
            "update_upload_file_utime",
            vec![("command_id", s("1")), ("modified_time", Value::F64(1.0))],
            "access_time",
        ),
        (
            "update_upload_file_utime",
            vec![("command_id", s("1")), ("access_time", Value::F64(1.0))],
            "modified_time",
        ),
        ("update_read_file", vec![("command_id", s("1"))], "length"),
        (
            "update_read_file",
            vec![("length", Value::from(1))],
            "command_id",
        ),
        ("update_upload_file_close", vec![], "command_id"),
        ("update_upload_directory_unpack", vec![], "command_id"),
        ("update_read_file_close", vec![], "command_id"),
    ];
    for (op, fields, key) in cases {
        let mut pairs = vec![("op", s(op))];
        pairs.extend(fields.iter().cloned());
        pairs.push(seq());
        bad_request(dec(&map(&pairs)), 9, op, &missing(key));
    }

    // The worker's own text for incomplete settings.
    let args = Value::Map(vec![
        (s("newline_re"), s("x")),
        (s("buffer_size"), Value::from(1)),
        (s("buffer_timeout"), Value::from(1)),
    ]);
    bad_request(
        dec(&map(&[
            ("op", s("set_worker_settings")),
            ("args", args),
            seq(),
        ])),
        9,
        "set_worker_settings",
        "'message did not contain obligatory settings for worker'",
    );
}

#[test]
fn wrong_field_types_are_bad_requests_that_can_be_answered() {
    let seq = || ("seq_number", Value::from(42));
    let cases: Vec<(Vec<(&str, Value)>, &str)> = vec![
        (
            vec![("op", s("print")), ("message", Value::from(1))],
            "\"message\" is not a string",
        ),
        (
            vec![
                ("op", s("interrupt_command")),
                ("command_id", Value::from(19)),
                ("why", s("x")),
            ],
            "\"command_id\" is not a string",
        ),
        (
            vec![
                ("op", s("start_command")),
                ("command_id", s("1")),
                ("command_name", s("shell")),
                ("args", Value::from(3)),
            ],
            "\"args\" is not a map",
        ),
        (
            vec![
                ("op", s("update")),
                ("command_id", s("1")),
                ("args", s("rc")),
            ],
            "\"args\" is not an array",
        ),
        (
            vec![
                ("op", s("update")),
                ("command_id", s("1")),
                ("args", Value::Array(vec![s("rc")])),
            ],
            "not a [key, value] pair",
        ),
        (
            vec![
                ("op", s("update")),
                ("command_id", s("1")),
                (
                    "args",
                    Value::Array(vec![Value::Array(vec![s("rc"), s("zero")])]),
                ),
            ],
            "rc is not an integer",
        ),
        (
            vec![
                ("op", s("update")),
                ("command_id", s("1")),
                (
                    "args",
                    Value::Array(vec![Value::Array(vec![
                        s("stdout"),
                        Value::Array(vec![s("x\n"), Value::Array(vec![])]),
                    ])]),
                ),
            ],
            "expected [text, newline positions, times]",
        ),
        (
            vec![
                ("op", s("update_upload_file_write")),
                ("command_id", s("1")),
                ("args", Value::from(5)),
            ],
            "\"args\" is not binary data",
        ),
        (
            vec![
                ("op", s("update_read_file")),
                ("command_id", s("1")),
                ("length", Value::from(-1)),
            ],
            "\"length\" is not a non-negative integer",
        ),
        (
            vec![
                ("op", s("update_upload_file_utime")),
                ("command_id", s("1")),
                ("access_time", s("now")),
                ("modified_time", Value::F64(1.0)),
            ],
            "\"access_time\" is not a number",
        ),
        (
            vec![
                ("op", s("set_worker_settings")),
                (
                    "args",
                    Value::Map(vec![
                        (s("newline_re"), s("x")),
                        (s("max_line_length"), s("4096")),
                        (s("buffer_timeout"), Value::from(5)),
                        (s("buffer_size"), Value::from(1)),
                    ]),
                ),
            ],
            "\"max_line_length\" must be an integer",
        ),
    ];
    for (mut pairs, want) in cases {
        pairs.push(seq());
        let op = match &pairs[0].1 {
            Value::String(o) => o.as_str().unwrap().to_owned(),
            _ => unreachable!(),
        };
        match dec(&map(&pairs)) {
            Err(DecodeError::BadRequest {
                seq_number: 42,
                op: got_op,
                reason,
            }) => {
                assert_eq!(got_op, op);
                assert!(
                    reason.contains(want),
                    "{op}: {reason:?} does not mention {want:?}"
                );
                // The caller answers with an exception response carrying the reason.
                let answer = encode(&Message::Response(Response::error(42, reason.clone())));
                assert_eq!(
                    dec(&answer),
                    Ok(Message::Response(Response {
                        seq_number: 42,
                        result: Value::from(reason),
                        is_exception: true
                    }))
                );
            }
            other => panic!("{op}: expected BadRequest, got {other:?}"),
        }
    }
}

#[test]
fn lenient_where_buildbot_is() {
    // str or bin both carry text (the worker converts bytes to text in start_command).
    let b = map(&[
        ("op", s("start_command")),
        ("command_id", Value::Binary(b"7".to_vec())),
        ("command_name", Value::Binary(b"shell".to_vec())),
        (
            "args",
            Value::Map(vec![(
                Value::Binary(b"workdir".to_vec()),
                Value::Binary(b"/w".to_vec()),
            )]),
        ),
        ("seq_number", Value::from(1)),
    ]);
    let Ok(Message::Request {
        op:
            Op::StartCommand {
                command_id,
                command_name,
                args,
                ..
            },
        ..
    }) = dec(&b)
    else {
        panic!()
    };
    assert_eq!((command_id.as_str(), command_name.as_str()), ("7", "shell"));
    assert_eq!(args.get(&["workdir"]), Some(&Value::Binary(b"/w".to_vec())));
    // File data may arrive as str (only bin is right, but it is still bytes).
    let b = map(&[
        ("op", s("update_upload_file_write")),
        ("args", s("abc")),
        ("command_id", s("9")),
        ("seq_number", Value::from(2)),
    ]);
    assert_eq!(
        dec(&b),
        Ok(Message::Request {
            seq_number: 2,
            op: Op::UploadFileWrite {
                command_id: "9".into(),
                data: b"abc".to_vec()
            }
        })
    );
    // is_exception is tested for presence, as both Python peers do: even `False` means failure.
    let b = map(&[
        ("op", s("response")),
        ("seq_number", Value::from(4)),
        ("result", s("boom")),
        ("is_exception", Value::Boolean(false)),
    ]);
    assert_eq!(dec(&b), Ok(Message::Response(Response::error(4, "boom"))));
    // A response without result has a nil one.
    assert_eq!(
        dec(&map(&[
            ("op", s("response")),
            ("seq_number", Value::from(4))
        ])),
        Ok(Message::Response(Response::ok(4)))
    );
    // Unknown keys are ignored; so is builder_name of any type.
    let b = map(&[
        ("op", s("keepalive")),
        ("extra", Value::Array(vec![])),
        ("seq_number", Value::from(5)),
    ]);
    assert_eq!(
        dec(&b),
        Ok(Message::Request {
            seq_number: 5,
            op: Op::Keepalive
        })
    );
    // Update items with keys kiln does not know are kept verbatim.
    let item = Value::Array(vec![
        s("custom"),
        Value::Map(vec![(s("a"), Value::from(1))]),
    ]);
    let b = map(&[
        ("op", s("update")),
        ("args", Value::Array(vec![item.clone()])),
        ("command_id", s("1")),
        ("seq_number", Value::from(6)),
    ]);
    let Ok(Message::Request {
        op: Op::Update { items, .. },
        ..
    }) = dec(&b)
    else {
        panic!()
    };
    assert_eq!(
        items,
        vec![UpdateItem::Other(
            "custom".into(),
            Value::Map(vec![(s("a"), Value::from(1))])
        )]
    );
    assert_eq!(encode(&dec(&b).unwrap()), b);
}

#[test]
fn unknown_op_decodes_and_gets_buildbots_text() {
    let b = map(&[
        ("op", s("frobnicate")),
        ("whatever", Value::from(1)),
        ("seq_number", Value::from(9)),
    ]);
    assert_eq!(
        dec(&b),
        Ok(Message::Request {
            seq_number: 9,
            op: Op::Unknown {
                op: "frobnicate".into()
            }
        })
    );
    assert_eq!(
        Op::unknown_error("frobnicate"),
        "Command frobnicate does not exist."
    );
    // The answer is byte for byte what Buildbot sends (golden vector from Python).
    let answer = Message::Response(Response::error(9, Op::unknown_error("frobnicate")));
    assert_eq!(encode(&answer), golden("response_unknown_op"));
    // Ops of the other direction are known, not Unknown.
    let b = map(&[
        ("op", s("update_read_file_close")),
        ("command_id", s("1")),
        ("seq_number", Value::from(1)),
    ]);
    assert!(matches!(
        dec(&b),
        Ok(Message::Request {
            op: Op::ReadFileClose { .. },
            ..
        })
    ));
}

fn assert_fast(what: &str, f: impl FnOnce()) {
    let t = Instant::now();
    f();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "{what} took {:?}",
        t.elapsed()
    );
}

#[test]
fn tiny_messages_claiming_huge_containers_are_refused_cheaply() {
    // {"op": "update", "args": <array32 of 4294967295 elements>, ...} in 22 bytes.
    let mut b = vec![0x83, 0xa2, b'o', b'p', 0xa6];
    b.extend_from_slice(b"update");
    b.extend_from_slice(&[0xa4, b'a', b'r', b'g', b's', 0xdd, 0xff, 0xff, 0xff, 0xff]);
    assert!(b.len() < 32);
    assert_fast("array32", || malformed(dec(&b), "truncated"));
    // The same with a map32, a str32, a bin32 and an ext32 claiming 4 GiB.
    for header in [
        &[0xdf, 0xff, 0xff, 0xff, 0xff][..],
        &[0xdb, 0xff, 0xff, 0xff, 0xff],
        &[0xc6, 0xff, 0xff, 0xff, 0xff],
        &[0xc9, 0xff, 0xff, 0xff, 0xff, 0x01],
    ] {
        let mut b = vec![0x81, 0xa4, b'a', b'r', b'g', b's'];
        b.extend_from_slice(header);
        assert_fast("32-bit length", || malformed(dec(&b), "truncated"));
    }
    // A map16 of 65535 entries at top level with nothing after it.
    assert_fast("map16", || malformed(dec(&[0xde, 0xff, 0xff]), "truncated"));
}

#[test]
fn more_values_than_max_values_is_malformed() {
    let nils = |n: usize| {
        let mut b = Vec::new();
        rmpv::encode::write_value(
            &mut b,
            &Value::Map(vec![
                (s("op"), s("keepalive")),
                (s("seq_number"), Value::from(1)),
                (s("pad"), Value::Array(vec![Value::Nil; n])),
            ]),
        )
        .unwrap();
        b
    };
    // The message has 1 (map) + 5 (keys and scalars) + 1 (array) + n values.
    let limits = Limits {
        max_values: 7 + 100,
        ..Limits::default()
    };
    assert!(decode(&nils(100), &limits).is_ok());
    match decode(&nils(101), &limits) {
        Err(DecodeError::Malformed(why)) => assert_eq!(why, "more than 107 values in one message"),
        other => panic!("{other:?}"),
    }
    // With the default limit (2^20 values): a 1 MiB message of nils is refused, fast.
    let max = Limits::default().max_values;
    let b = nils(max);
    assert!(b.len() < Limits::default().max_message);
    assert_fast("a million nils", || {
        malformed(dec(&b), "values in one message")
    });
}

/// `[[[[...]]]]` inside a message: `depth` containers counting the top-level map.
fn nested(depth: usize) -> Vec<u8> {
    let mut b = vec![0x82, 0xa2, b'o', b'p', 0xa9];
    b.extend_from_slice(b"keepalive");
    b.extend_from_slice(&[0xaa]);
    b.extend_from_slice(b"seq_number");
    b.push(0x01);
    // Make it a 3-entry map with a "deep" key holding the nest.
    b[0] = 0x83;
    b.extend_from_slice(&[0xa4, b'd', b'e', b'e', b'p']);
    b.extend(std::iter::repeat_n(0x91u8, depth - 2)); // fixarray of 1
    b.push(0x90); // the innermost, empty
    b
}

#[test]
fn deep_nesting_is_refused_without_recursion() {
    // Legit depth passes (MAX_DEPTH containers, counting the top-level map) ...
    let ok = nested(MAX_DEPTH);
    assert_eq!(
        dec(&ok),
        Ok(Message::Request {
            seq_number: 1,
            op: Op::Keepalive
        })
    );
    // ... one more does not.
    malformed(
        dec(&nested(MAX_DEPTH + 1)),
        &format!("nested deeper than {MAX_DEPTH} levels"),
    );
    // A million levels in a thread with a 64 KiB stack: the pre-scan is iterative
    // and rejects it before rmpv (which recurses) sees it.
    let deep = nested(1_000_000);
    let r = std::thread::Builder::new()
        .stack_size(64 * 1024)
        .spawn(move || dec(&deep))
        .unwrap()
        .join()
        .expect("no stack overflow");
    malformed(r, "nested deeper");
    // The deepest accepted message can be decoded, cloned, compared, re-encoded and
    // dropped on a 1 MiB thread stack, even in a debug build, where rmpv's recursive
    // reader takes about 4.5 KiB per level (100 levels need 384-512 KiB; without
    // MAX_DEPTH rmpv's own limit, ~512 levels, overflowed a 2 MiB thread stack).
    let mut args = Value::Array(vec![]);
    for _ in 0..MAX_DEPTH - 3 {
        args = Value::Array(vec![args]);
    }
    let m = Message::Request {
        seq_number: 1,
        op: Op::StartCommand {
            builder_name: None,
            command_id: "1".into(),
            command_name: "x".into(),
            args: kiln_proto::args::Args(vec![(s("deep"), args)]),
        },
    };
    let bytes = encode(&m);
    std::thread::Builder::new()
        .stack_size(1024 * 1024)
        .spawn(move || {
            let back = decode(&bytes, &Limits::default()).expect("MAX_DEPTH levels decode");
            assert_eq!(back.clone(), m);
            assert_eq!(encode(&back), bytes);
            malformed(
                decode(&[&[0x91u8][..], &bytes].concat(), &Limits::default()),
                "nested deeper",
            );
        })
        .unwrap()
        .join()
        .expect("no stack overflow");
}

#[test]
fn invalid_utf8_in_any_str_is_malformed() {
    // Python's unpackb(raw=False) refuses these outright; kiln does not decode them lossily.
    let bad: &[&[u8]] = &[
        b"\xff",
        b"ab\xc3",
        b"\xed\xa0\x80",     /* surrogate */
        b"\xc0\xaf",         /* overlong */
        b"\xf4\x90\x80\x80", /* > U+10FFFF */
    ];
    for raw in bad {
        let str_of = |x: &[u8]| [&[0xa0 | x.len() as u8][..], x].concat();
        // In the op name.
        let b = [
            &[0x82][..],
            &str_of(b"op"),
            &str_of(raw),
            &str_of(b"seq_number"),
            &[0x01],
        ]
        .concat();
        malformed(dec(&b), "invalid UTF-8");
        // In command_id.
        let b = [
            &[0x83][..],
            &str_of(b"op"),
            &str_of(b"update_read_file_close"),
            &str_of(b"command_id"),
            &str_of(raw),
            &str_of(b"seq_number"),
            &[0x01],
        ]
        .concat();
        malformed(dec(&b), "invalid UTF-8");
        // As a map key, deep inside args.
        let args = [&[0x81][..], &[0x91, 0x81], &str_of(raw), &[0xc0]].concat();
        let b = [
            &[0x85][..],
            &str_of(b"op"),
            &str_of(b"start_command"),
            &str_of(b"command_id"),
            &str_of(b"1"),
            &str_of(b"command_name"),
            &str_of(b"x"),
            &str_of(b"args"),
            &[0x81],
            &str_of(b"k"),
            &args,
            &str_of(b"seq_number"),
            &[0x01],
        ]
        .concat();
        malformed(dec(&b), "invalid UTF-8");
        // The same bytes as bin are just bytes.
        let b = [
            &[0x84][..],
            &str_of(b"op"),
            &str_of(b"update_upload_file_write"),
            &str_of(b"args"),
            &[0xc4, raw.len() as u8],
            raw,
            &str_of(b"command_id"),
            &str_of(b"1"),
            &str_of(b"seq_number"),
            &[0x01],
        ]
        .concat();
        assert_eq!(
            dec(&b),
            Ok(Message::Request {
                seq_number: 1,
                op: Op::UploadFileWrite {
                    command_id: "1".into(),
                    data: raw.to_vec()
                }
            })
        );
    }
}
