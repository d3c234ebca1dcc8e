//! Property tests: `decode(encode(m)) == m` for arbitrary messages of every op,
//! and decoding arbitrary or mutated bytes never panics.
//!
//! Floats are drawn without NaN (rmpv compares floats with `==`, so NaN != NaN);
//! NaN itself is covered by a separate test that compares bytes.

use kiln_proto::args::{Args, WorkerSettings};
use kiln_proto::update::{Lines, UpdateItem};
use kiln_proto::{Limits, Message, Op, Response, Value, decode, encode};
use proptest::prelude::*;

/// Op names the decoder knows; `Op::Unknown` must carry none of them.
const KNOWN_OPS: &[&str] = &[
    "response",
    "print",
    "keepalive",
    "get_worker_info",
    "set_worker_settings",
    "start_command",
    "interrupt_command",
    "shutdown",
    "update",
    "complete",
    "update_upload_file_write",
    "update_upload_file_close",
    "update_upload_file_utime",
    "update_upload_directory_write",
    "update_upload_directory_unpack",
    "update_read_file",
    "update_read_file_close",
];

/// Update item keys with a typed variant; `UpdateItem::Other` must carry none of them.
const KNOWN_ITEMS: &[&str] = &[
    "header",
    "stdout",
    "stderr",
    "log",
    "rc",
    "elapsed",
    "failure_reason",
    "files",
    "stat",
];

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => any::<String>(),
        1 => "[a-z_]{0,12}",
        1 => Just(String::new()),
        1 => "[ -~]{30,40}", // around the fixstr / str8 boundary (31/32)
        1 => "\\PC{200,300}", // str8 / str16 boundary (255/256)
        1 => Just("é✓🦀\u{0}\u{10FFFF}".to_owned()),
    ]
}

/// Integers around every msgpack width boundary, plus any i64 / u64.
fn int() -> impl Strategy<Value = Value> {
    let edges: Vec<i128> = vec![
        0,
        1,
        127,
        128,
        255,
        256,
        65535,
        65536,
        (1 << 32) - 1,
        1 << 32,
        i64::MAX as i128,
        i64::MAX as i128 + 1,
        u64::MAX as i128,
        -1,
        -32,
        -33,
        -128,
        -129,
        -32768,
        -32769,
        i32::MIN as i128,
        i32::MIN as i128 - 1,
        i64::MIN as i128,
    ];
    prop_oneof![
        prop::sample::select(edges).prop_map(|n| if n < 0 {
            Value::from(n as i64)
        } else {
            Value::from(n as u64)
        }),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
    ]
}

fn float() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>().prop_filter("NaN != NaN", |f| !f.is_nan()),
        Just(0.0),
        Just(-0.0),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(f64::MIN_POSITIVE),
        Just(1795460561.8780785),
        Just(7.724761962890625e-05),
    ]
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        Just(Vec::new()),
        Just(vec![0u8; 70_000])
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Nil),
        any::<bool>().prop_map(Value::Boolean),
        int(),
        float().prop_map(Value::F64),
        any::<f32>()
            .prop_filter("NaN", |f| !f.is_nan())
            .prop_map(Value::F32),
        text().prop_map(Value::from),
        prop::collection::vec(any::<u8>(), 0..40).prop_map(Value::Binary),
        (any::<i8>(), prop::collection::vec(any::<u8>(), 0..20))
            .prop_map(|(t, d)| Value::Ext(t, d)),
    ]
}

/// Arbitrary nested values (arrays and maps with any keys, not only strings).
fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(5, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((inner.clone(), inner), 0..8).prop_map(Value::Map),
        ]
    })
}

fn args() -> impl Strategy<Value = Args> {
    prop::collection::vec(
        (
            prop_oneof![4 => text().prop_map(Value::from), 1 => value()],
            value(),
        ),
        0..12,
    )
    .prop_map(Args)
}

fn settings() -> impl Strategy<Value = WorkerSettings> {
    // buffer_timeout_is_int means "an integer f64 holds exactly" (see its docs).
    let timeout = prop_oneof![
        (-(1i64 << 53)..=(1i64 << 53)).prop_map(|i| (i as f64, true)),
        float().prop_map(|f| (f, false)),
    ];
    (text(), any::<usize>(), timeout, any::<usize>()).prop_map(
        |(newline_re, max_line_length, (buffer_timeout, is_int), buffer_size)| WorkerSettings {
            newline_re,
            max_line_length,
            buffer_timeout,
            buffer_size,
            buffer_timeout_is_int: is_int,
        },
    )
}

fn lines() -> impl Strategy<Value = Lines> {
    (
        text(),
        prop::collection::vec(any::<u32>(), 0..20),
        prop::collection::vec(float(), 0..20),
    )
        .prop_map(|(text, newlines, times)| Lines {
            text,
            newlines,
            times,
        })
}

fn item() -> impl Strategy<Value = UpdateItem> {
    prop_oneof![
        lines().prop_map(UpdateItem::Header),
        lines().prop_map(UpdateItem::Stdout),
        lines().prop_map(UpdateItem::Stderr),
        (text(), lines()).prop_map(|(n, l)| UpdateItem::Log(n, l)),
        any::<i64>().prop_map(UpdateItem::Rc),
        float().prop_map(UpdateItem::Elapsed),
        text().prop_map(UpdateItem::FailureReason),
        prop::collection::vec(text(), 0..10).prop_map(UpdateItem::Files),
        prop::collection::vec(any::<i64>(), 0..12).prop_map(UpdateItem::Stat),
        (
            text().prop_filter("typed key", |k| !KNOWN_ITEMS.contains(&k.as_str())),
            value()
        )
            .prop_map(|(k, v)| UpdateItem::Other(k, v)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let id = text;
    prop_oneof![
        text().prop_map(|message| Op::Print { message }),
        Just(Op::Keepalive),
        Just(Op::GetWorkerInfo),
        settings().prop_map(Op::SetWorkerSettings),
        (prop::option::of(text()), id(), text(), args()).prop_map(
            |(builder_name, command_id, command_name, args)| Op::StartCommand {
                builder_name,
                command_id,
                command_name,
                args
            }
        ),
        (prop::option::of(text()), id(), text()).prop_map(|(builder_name, command_id, why)| {
            Op::InterruptCommand {
                builder_name,
                command_id,
                why,
            }
        }),
        Just(Op::Shutdown),
        (id(), prop::collection::vec(item(), 0..12))
            .prop_map(|(command_id, items)| Op::Update { command_id, items }),
        (id(), prop::option::of(text())).prop_map(|(command_id, failure)| Op::Complete {
            command_id,
            failure
        }),
        (id(), bytes()).prop_map(|(command_id, data)| Op::UploadFileWrite { command_id, data }),
        id().prop_map(|command_id| Op::UploadFileClose { command_id }),
        (id(), float(), float()).prop_map(|(command_id, access_time, modified_time)| {
            Op::UploadFileUtime {
                command_id,
                access_time,
                modified_time,
            }
        }),
        (id(), bytes())
            .prop_map(|(command_id, data)| Op::UploadDirectoryWrite { command_id, data }),
        id().prop_map(|command_id| Op::UploadDirectoryUnpack { command_id }),
        (id(), any::<u64>()).prop_map(|(command_id, length)| Op::ReadFile { command_id, length }),
        id().prop_map(|command_id| Op::ReadFileClose { command_id }),
        text()
            .prop_filter("known op", |o| !KNOWN_OPS.contains(&o.as_str()))
            .prop_map(|op| Op::Unknown { op }),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        4 => (any::<i64>(), op()).prop_map(|(seq_number, op)| Message::Request { seq_number, op }),
        1 => (any::<i64>(), value(), any::<bool>())
            .prop_map(|(seq_number, result, is_exception)| Message::Response(Response { seq_number, result, is_exception })),
    ]
}

fn golden() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "msgpack"))
        .collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// What the fuzz target checks: a decoded message re-encodes to bytes that decode
/// to the same message, and encoding is then a fixed point. Compared through
/// `Debug` so NaN payloads compare equal to themselves.
fn check_reencode(bytes: &[u8]) {
    let limits = Limits::default();
    let Ok(m1) = decode(bytes, &limits) else {
        return;
    };
    let e1 = encode(&m1);
    let m2 = decode(&e1, &limits)
        .unwrap_or_else(|e| panic!("re-encoded message does not decode: {e}\n{m1:?}"));
    assert_eq!(format!("{m1:?}"), format!("{m2:?}"));
    assert_eq!(encode(&m2), e1);
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Set(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
    Splice(usize, Vec<u8>),
}

fn apply(mut b: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        let n = b.len().max(1);
        match m {
            Mutation::Flip(i, bit) if !b.is_empty() => b[i % n] ^= 1 << (bit % 8),
            Mutation::Set(i, v) if !b.is_empty() => b[i % n] = *v,
            Mutation::Insert(i, v) => b.insert(i % (b.len() + 1), *v),
            Mutation::Remove(i) if !b.is_empty() => {
                b.remove(i % n);
            }
            Mutation::Truncate(i) => b.truncate(i % (b.len() + 1)),
            Mutation::Splice(i, bytes) => {
                let at = i % (b.len() + 1);
                b.splice(at..at, bytes.iter().copied());
            }
            _ => {}
        }
    }
    b
}

fn mutation() -> impl Strategy<Value = Mutation> {
    // Bytes that are msgpack markers with lengths: the interesting ones to plant.
    let marker = prop::sample::select(vec![
        0xc0u8, 0xc4, 0xc5, 0xc6, 0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0x9f, 0x8f, 0xbf, 0xff,
        0xc1,
    ]);
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), marker).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Remove),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Mutation::Splice(i, b)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn decode_inverts_encode(m in message()) {
        let bytes = encode(&m);
        let back = decode(&bytes, &Limits::default());
        prop_assert_eq!(back.as_ref(), Ok(&m), "bytes: {:02x?}", &bytes[..bytes.len().min(120)]);
        // And encoding is deterministic.
        prop_assert_eq!(encode(&back.unwrap()), bytes);
    }

    #[test]
    fn arbitrary_values_in_args_and_results_survive(v in value(), seq in any::<i64>()) {
        let m = Message::Response(Response::with_result(seq, v.clone()));
        prop_assert_eq!(decode(&encode(&m), &Limits::default()), Ok(m));
        let m = Message::Request { seq_number: seq, op: Op::StartCommand {
            builder_name: None, command_id: "1".into(), command_name: "shell".into(),
            args: Args(vec![(Value::from("k"), v)]),
        }};
        prop_assert_eq!(decode(&encode(&m), &Limits::default()), Ok(m));
    }

    #[test]
    fn arbitrary_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..512)) {
        check_reencode(&b);
    }

    #[test]
    fn arbitrary_bytes_after_a_map_header_never_panic(n in 0u8..16, b in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut bytes = vec![0x80 | n];
        bytes.extend(b);
        check_reencode(&bytes);
    }

    #[test]
    fn mutated_golden_vectors_never_panic(i in any::<prop::sample::Index>(), muts in prop::collection::vec(mutation(), 1..6)) {
        let vectors = golden();
        let b = apply(i.get(&vectors).clone(), &muts);
        check_reencode(&b);
    }

    #[test]
    fn mutated_encoded_messages_never_panic(m in message(), muts in prop::collection::vec(mutation(), 1..6)) {
        check_reencode(&apply(encode(&m), &muts));
    }
}

/// NaN survives bit for bit (it just cannot be compared with `==`).
#[test]
fn nan_roundtrips_bitwise() {
    let quiet = f64::from_bits(0x7ff8_0000_0000_0001);
    for nan in [f64::NAN, -f64::NAN, quiet] {
        let m = Message::Request {
            seq_number: 1,
            op: Op::Update {
                command_id: "c".into(),
                items: vec![
                    UpdateItem::Elapsed(nan),
                    UpdateItem::Other("x".into(), Value::F64(nan)),
                ],
            },
        };
        let bytes = encode(&m);
        let Ok(Message::Request {
            op: Op::Update { items, .. },
            ..
        }) = decode(&bytes, &Limits::default())
        else {
            panic!()
        };
        let UpdateItem::Elapsed(e) = items[0] else {
            panic!()
        };
        assert_eq!(e.to_bits(), nan.to_bits());
        assert!(
            matches!(items[1], UpdateItem::Other(_, Value::F64(f)) if f.to_bits() == nan.to_bits())
        );
        check_reencode(&bytes);
    }
}

/// Python writes the smallest int and always float 64; so must we, at every boundary.
#[test]
fn int_and_float_widths_match_python() {
    // (value, msgpack bytes as Python's packb writes them)
    let ints: &[(i64, &[u8])] = &[
        (0, &[0x00]),
        (127, &[0x7f]),
        (128, &[0xcc, 0x80]),
        (255, &[0xcc, 0xff]),
        (256, &[0xcd, 0x01, 0x00]),
        (65535, &[0xcd, 0xff, 0xff]),
        (65536, &[0xce, 0, 1, 0, 0]),
        (4294967295, &[0xce, 0xff, 0xff, 0xff, 0xff]),
        (4294967296, &[0xcf, 0, 0, 0, 1, 0, 0, 0, 0]),
        (-1, &[0xff]),
        (-32, &[0xe0]),
        (-33, &[0xd0, 0xdf]),
        (-128, &[0xd0, 0x80]),
        (-129, &[0xd1, 0xff, 0x7f]),
        (-32768, &[0xd1, 0x80, 0x00]),
        (-32769, &[0xd2, 0xff, 0xff, 0x7f, 0xff]),
        (-2147483648, &[0xd2, 0x80, 0, 0, 0]),
        (
            -2147483649,
            &[0xd3, 0xff, 0xff, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff],
        ),
    ];
    for (n, want) in ints {
        // seq_number, rc and a value inside args all go through the same writers.
        let m = Message::Request {
            seq_number: *n,
            op: Op::Keepalive,
        };
        let mut expect = vec![0x82, 0xa2, b'o', b'p', 0xa9];
        expect.extend_from_slice(b"keepalive");
        expect.push(0xaa);
        expect.extend_from_slice(b"seq_number");
        expect.extend_from_slice(want);
        assert_eq!(encode(&m), expect, "seq_number {n}");
        let m = Message::Request {
            seq_number: 0,
            op: Op::Update {
                command_id: "c".into(),
                items: vec![UpdateItem::Rc(*n)],
            },
        };
        let bytes = encode(&m);
        let needle: Vec<u8> = [&[0x92, 0xa2, b'r', b'c'][..], want].concat();
        assert!(
            bytes.windows(needle.len()).any(|w| w == needle),
            "rc {n}: {bytes:02x?}"
        );
    }
    // u64 above i64::MAX: uint 64, as Python.
    let m = Message::Request {
        seq_number: 0,
        op: Op::ReadFile {
            command_id: "c".into(),
            length: u64::MAX,
        },
    };
    assert!(
        encode(&m)
            .windows(9)
            .any(|w| w == [0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
    );
    // Floats are always float 64, even integral ones.
    let m = Message::Request {
        seq_number: 0,
        op: Op::Update {
            command_id: "c".into(),
            items: vec![UpdateItem::Elapsed(2.0)],
        },
    };
    let needle = [&[0xcb][..], &2.0f64.to_be_bytes()].concat();
    assert!(encode(&m).windows(9).any(|w| w == needle));
}

#[test]
fn worker_settings_edge_values_roundtrip() {
    for s in [
        WorkerSettings {
            max_line_length: usize::MAX,
            buffer_size: usize::MAX,
            ..WorkerSettings::default()
        },
        WorkerSettings {
            buffer_timeout: 2.5,
            buffer_timeout_is_int: false,
            ..WorkerSettings::default()
        },
        WorkerSettings {
            buffer_timeout: 5.0,
            buffer_timeout_is_int: false,
            ..WorkerSettings::default()
        },
        WorkerSettings {
            buffer_timeout: -3.0,
            buffer_timeout_is_int: true,
            ..WorkerSettings::default()
        },
        WorkerSettings {
            buffer_timeout: 9007199254740992.0,
            buffer_timeout_is_int: true,
            ..WorkerSettings::default()
        },
    ] {
        let m = Message::Request {
            seq_number: 2,
            op: Op::SetWorkerSettings(s),
        };
        assert_eq!(decode(&encode(&m), &Limits::default()), Ok(m));
    }
    // An int timeout too large for f64 to hold exactly is read as a float, and stays stable.
    let mut bytes = Vec::new();
    rmp::encode::write_map_len(&mut bytes, 3).unwrap();
    rmp::encode::write_str(&mut bytes, "op").unwrap();
    rmp::encode::write_str(&mut bytes, "set_worker_settings").unwrap();
    rmp::encode::write_str(&mut bytes, "args").unwrap();
    rmp::encode::write_map_len(&mut bytes, 4).unwrap();
    for (k, v) in [
        ("newline_re", None),
        ("max_line_length", Some(4096u64)),
        ("buffer_timeout", Some(u64::MAX)),
        ("buffer_size", Some(1)),
    ] {
        rmp::encode::write_str(&mut bytes, k).unwrap();
        match v {
            Some(n) => rmp::encode::write_uint(&mut bytes, n).map(drop).unwrap(),
            None => rmp::encode::write_str(&mut bytes, "x").unwrap(),
        }
    }
    rmp::encode::write_str(&mut bytes, "seq_number").unwrap();
    rmp::encode::write_uint(&mut bytes, 2).unwrap();
    let Ok(Message::Request {
        op: Op::SetWorkerSettings(s),
        ..
    }) = decode(&bytes, &Limits::default())
    else {
        panic!()
    };
    assert!(!s.buffer_timeout_is_int);
    assert_eq!(s.buffer_timeout, u64::MAX as f64);
    check_reencode(&bytes);
}

#[test]
fn stat_beyond_i64_is_kept_verbatim() {
    let st = Value::Array(vec![
        Value::from(33152u64),
        Value::from(u64::MAX),
        Value::from(-5i64),
    ]);
    let m = Message::Request {
        seq_number: 0,
        op: Op::Update {
            command_id: "c".into(),
            items: vec![
                UpdateItem::Other("stat".into(), st.clone()),
                UpdateItem::Rc(0),
            ],
        },
    };
    let bytes = encode(&m);
    assert_eq!(decode(&bytes, &Limits::default()), Ok(m));
}

#[test]
fn golden_vectors_pass_the_fuzz_check() {
    for b in golden() {
        check_reencode(&b);
    }
}
