//! Bytes ⇄ [`Message`], with a hard cap on size and on the number of values.

use std::io::Cursor;

use rmp::Marker;
use rmpv::Value;

use crate::args::{Args, WorkerSettings};
use crate::message::{Message, Op, Response};
use crate::update::UpdateItem;
use crate::value::{MapExt, text_of};
use crate::write::{w_array, w_f64, w_int, w_map, w_nil, w_str, w_uint, w_value};

/// Caps applied before anything is decoded.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted message, in bytes.
    pub max_message: usize,
    /// Most msgpack values (scalars, strings, containers) in one message; bounds the
    /// memory a small message full of tiny values could make the decoder allocate.
    pub max_values: usize,
}

impl Default for Limits {
    fn default() -> Self {
        // File chunks are ≤ 256 KiB and output batches ≤ 64 KiB; 16 MiB leaves room for
        // a master that configures larger blocks without letting a peer exhaust memory.
        Limits {
            max_message: 16 * 1024 * 1024,
            max_values: 1 << 20,
        }
    }
}

/// Why a message could not be decoded, and so what the receiver should do.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    /// Larger than [`Limits::max_message`]: drop the connection.
    #[error("message of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    /// Not one well-formed msgpack map: drop the connection.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A map without `op` or `seq_number`: Buildbot logs and drops it, without a response.
    #[error("message has no {0:?} key; dropped")]
    NoEnvelope(&'static str),
    /// A request with a usable `seq_number` whose fields are wrong: answer it with
    /// an exception response carrying `reason`.
    #[error("bad {op:?} request: {reason}")]
    BadRequest {
        seq_number: i64,
        op: String,
        reason: String,
    },
    /// A response whose `seq_number` is missing or not an integer.
    #[error("bad response: {0}")]
    BadResponse(String),
}

/// Decodes one WebSocket message.
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Message, DecodeError> {
    if bytes.len() > limits.max_message {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max: limits.max_message,
        });
    }
    scan(bytes, limits.max_values)?;
    let mut cur = Cursor::new(bytes);
    let value =
        rmpv::decode::read_value(&mut cur).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if cur.position() as usize != bytes.len() {
        return Err(DecodeError::Malformed(format!(
            "{} trailing bytes after the map",
            bytes.len() - cur.position() as usize
        )));
    }
    let Value::Map(map) = value else {
        return Err(DecodeError::Malformed(format!(
            "expected a map, got {}",
            kind(&value)
        )));
    };
    let op = map.get_key("op").ok_or(DecodeError::NoEnvelope("op"))?;
    let op = text_of(op).ok_or_else(|| DecodeError::Malformed("\"op\" is not a string".into()))?;
    if op == "response" {
        let seq_number = map
            .get_key("seq_number")
            .and_then(Value::as_i64)
            .ok_or_else(|| DecodeError::BadResponse("no integer \"seq_number\"".into()))?;
        // Both Python peers test `"is_exception" in msg`: presence, whatever the value.
        let is_exception = map.has_key("is_exception");
        let result = map.get_key("result").cloned().unwrap_or(Value::Nil);
        return Ok(Message::Response(Response {
            seq_number,
            result,
            is_exception,
        }));
    }
    let seq_number = map
        .get_key("seq_number")
        .ok_or(DecodeError::NoEnvelope("seq_number"))?;
    let seq_number = seq_number
        .as_i64()
        .ok_or(DecodeError::NoEnvelope("seq_number"))?;
    let bad = |reason: String| DecodeError::BadRequest {
        seq_number,
        op: op.clone(),
        reason,
    };
    let req = Req { map: &map };
    // Like Buildbot's `contains_msg_key`, every obligatory key is checked for
    // presence first, in Buildbot's order, so the first missing one is reported
    // with Buildbot's exact text; types are checked afterwards.
    if let Some(keys) = required_keys(&op) {
        req.require(keys).map_err(bad)?;
    }
    let op = match op.as_str() {
        "print" => Op::Print {
            message: req.text("message").map_err(bad)?,
        },
        "keepalive" => Op::Keepalive,
        "get_worker_info" => Op::GetWorkerInfo,
        "shutdown" => Op::Shutdown,
        "set_worker_settings" => {
            let args = req.map_arg("args").map_err(bad)?;
            Op::SetWorkerSettings(WorkerSettings::from_map(&args).map_err(bad)?)
        }
        "start_command" => Op::StartCommand {
            builder_name: req.opt_text("builder_name"),
            command_id: req.text("command_id").map_err(bad)?,
            command_name: req.text("command_name").map_err(bad)?,
            args: Args(req.map_arg("args").map_err(bad)?),
        },
        "interrupt_command" => Op::InterruptCommand {
            builder_name: req.opt_text("builder_name"),
            command_id: req.text("command_id").map_err(bad)?,
            why: req.text("why").map_err(bad)?,
        },
        "update" => {
            let items = req.get("args").map_err(bad)?;
            let items = items
                .as_array()
                .ok_or_else(|| bad("\"args\" is not an array".into()))?;
            Op::Update {
                command_id: req.text("command_id").map_err(bad)?,
                items: items
                    .iter()
                    .map(UpdateItem::from_value)
                    .collect::<Result<_, _>>()
                    .map_err(bad)?,
            }
        }
        "complete" => Op::Complete {
            command_id: req.text("command_id").map_err(bad)?,
            // nil: ran to completion; a string: the command raised (anything else is read as nil).
            failure: req.opt_text("args"),
        },
        "update_upload_file_write" => Op::UploadFileWrite {
            command_id: req.text("command_id").map_err(bad)?,
            data: req.bin("args").map_err(bad)?,
        },
        "update_upload_directory_write" => Op::UploadDirectoryWrite {
            command_id: req.text("command_id").map_err(bad)?,
            data: req.bin("args").map_err(bad)?,
        },
        "update_upload_file_close" => Op::UploadFileClose {
            command_id: req.text("command_id").map_err(bad)?,
        },
        "update_upload_directory_unpack" => Op::UploadDirectoryUnpack {
            command_id: req.text("command_id").map_err(bad)?,
        },
        "update_read_file_close" => Op::ReadFileClose {
            command_id: req.text("command_id").map_err(bad)?,
        },
        "update_upload_file_utime" => Op::UploadFileUtime {
            command_id: req.text("command_id").map_err(bad)?,
            access_time: req.num("access_time").map_err(bad)?,
            modified_time: req.num("modified_time").map_err(bad)?,
        },
        "update_read_file" => {
            let length = req.get("length").map_err(bad)?;
            let length = length
                .as_u64()
                .ok_or_else(|| bad("\"length\" is not a non-negative integer".into()))?;
            Op::ReadFile {
                command_id: req.text("command_id").map_err(bad)?,
                length,
            }
        }
        other => Op::Unknown {
            op: other.to_owned(),
        },
    };
    Ok(Message::Request { seq_number, op })
}

/// Encodes a message; map keys come out in the order Buildbot writes them.
pub fn encode(msg: &Message) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    encode_into(msg, &mut buf);
    buf
}

/// Like [`encode`], appending to `buf` (reuse one buffer on hot paths).
pub fn encode_into(msg: &Message, buf: &mut Vec<u8>) {
    match msg {
        Message::Response(r) => {
            w_map(buf, if r.is_exception { 4 } else { 3 });
            w_str(buf, "op");
            w_str(buf, "response");
            w_str(buf, "seq_number");
            w_int(buf, r.seq_number);
            w_str(buf, "result");
            w_value(buf, &r.result);
            if r.is_exception {
                w_str(buf, "is_exception");
                rmp::encode::write_bool(buf, true).expect("Vec write");
            }
        }
        Message::Request { seq_number, op } => encode_request(*seq_number, op, buf),
    }
}

fn encode_request(seq: i64, op: &Op, buf: &mut Vec<u8>) {
    // Each arm writes the op-specific keys between "op" and "seq_number", in Buildbot's order.
    let start = |buf: &mut Vec<u8>, fields: usize| {
        w_map(buf, fields + 2);
        w_str(buf, "op");
        w_str(buf, op.name());
    };
    match op {
        Op::Keepalive | Op::GetWorkerInfo | Op::Shutdown | Op::Unknown { .. } => start(buf, 0),
        Op::Print { message } => {
            start(buf, 1);
            kv_str(buf, "message", message);
        }
        Op::SetWorkerSettings(s) => {
            start(buf, 1);
            w_str(buf, "args");
            s.write(buf);
        }
        Op::StartCommand {
            builder_name,
            command_id,
            command_name,
            args,
        } => {
            start(buf, 3 + usize::from(builder_name.is_some()));
            if let Some(b) = builder_name {
                kv_str(buf, "builder_name", b);
            }
            kv_str(buf, "command_id", command_id);
            kv_str(buf, "command_name", command_name);
            w_str(buf, "args");
            w_map(buf, args.0.len());
            for (k, v) in &args.0 {
                w_value(buf, k);
                w_value(buf, v);
            }
        }
        Op::InterruptCommand {
            builder_name,
            command_id,
            why,
        } => {
            start(buf, 2 + usize::from(builder_name.is_some()));
            if let Some(b) = builder_name {
                kv_str(buf, "builder_name", b);
            }
            kv_str(buf, "command_id", command_id);
            kv_str(buf, "why", why);
        }
        Op::Update { command_id, items } => {
            start(buf, 2);
            w_str(buf, "args");
            w_array(buf, items.len());
            for item in items {
                item.write(buf);
            }
            kv_str(buf, "command_id", command_id);
        }
        Op::Complete {
            command_id,
            failure,
        } => {
            start(buf, 2);
            w_str(buf, "args");
            match failure {
                Some(f) => w_str(buf, f),
                None => w_nil(buf),
            }
            kv_str(buf, "command_id", command_id);
        }
        Op::UploadFileWrite { command_id, data }
        | Op::UploadDirectoryWrite { command_id, data } => {
            start(buf, 2);
            w_str(buf, "args");
            rmp::encode::write_bin(buf, data).expect("Vec write");
            kv_str(buf, "command_id", command_id);
        }
        Op::UploadFileClose { command_id }
        | Op::UploadDirectoryUnpack { command_id }
        | Op::ReadFileClose { command_id } => {
            start(buf, 1);
            kv_str(buf, "command_id", command_id);
        }
        Op::UploadFileUtime {
            command_id,
            access_time,
            modified_time,
        } => {
            start(buf, 3);
            w_str(buf, "access_time");
            w_f64(buf, *access_time);
            w_str(buf, "modified_time");
            w_f64(buf, *modified_time);
            kv_str(buf, "command_id", command_id);
        }
        Op::ReadFile { command_id, length } => {
            start(buf, 2);
            w_str(buf, "length");
            w_uint(buf, *length);
            kv_str(buf, "command_id", command_id);
        }
    }
    w_str(buf, "seq_number");
    w_int(buf, seq);
}

/// The keys Buildbot's handler for `op` requires (`contains_msg_key`), in its order.
fn required_keys(op: &str) -> Option<&'static [&'static str]> {
    Some(match op {
        // master → worker (buildbot_worker/msgpack.py)
        "print" => &["message"],
        "set_worker_settings" => &["args"],
        "start_command" => &["command_id", "command_name", "args"],
        "interrupt_command" => &["command_id", "why"],
        // worker → master (buildbot/worker/protocols/manager/msgpack.py)
        "update" | "complete" | "update_upload_file_write" | "update_upload_directory_write" => {
            &["command_id", "args"]
        }
        "update_upload_file_utime" => &["command_id", "access_time", "modified_time"],
        "update_read_file" => &["command_id", "length"],
        "update_upload_file_close"
        | "update_upload_directory_unpack"
        | "update_read_file_close" => &["command_id"],
        _ => return None,
    })
}

/// Buildbot's text for a missing key: `str(KeyError(...))`, which is the repr of
/// the message, so the single quotes are part of it.
pub(crate) fn missing_key_text(key: &str) -> String {
    format!("'message did not contain obligatory \"{key}\" key'")
}

/// Field access on a request map, with Buildbot's error texts.
struct Req<'a> {
    map: &'a [(Value, Value)],
}

impl Req<'_> {
    fn require(&self, keys: &[&str]) -> Result<(), String> {
        match keys.iter().find(|k| !self.map.has_key(k)) {
            Some(k) => Err(missing_key_text(k)),
            None => Ok(()),
        }
    }
    fn get(&self, key: &str) -> Result<&Value, String> {
        self.map.get_key(key).ok_or_else(|| missing_key_text(key))
    }
    fn text(&self, key: &str) -> Result<String, String> {
        text_of(self.get(key)?).ok_or_else(|| format!("\"{key}\" is not a string"))
    }
    fn opt_text(&self, key: &str) -> Option<String> {
        self.map.get_key(key).and_then(text_of)
    }
    fn num(&self, key: &str) -> Result<f64, String> {
        let v = self.get(key)?;
        v.as_f64()
            .or_else(|| v.as_i64().map(|i| i as f64))
            .ok_or_else(|| format!("\"{key}\" is not a number"))
    }
    fn bin(&self, key: &str) -> Result<Vec<u8>, String> {
        match self.get(key)? {
            Value::Binary(b) => Ok(b.clone()),
            Value::String(s) => Ok(s.as_bytes().to_vec()),
            _ => Err(format!("\"{key}\" is not binary data")),
        }
    }
    fn map_arg(&self, key: &str) -> Result<Vec<(Value, Value)>, String> {
        match self.get(key)? {
            Value::Map(m) => Ok(m.clone()),
            Value::Nil => Ok(Vec::new()),
            _ => Err(format!("\"{key}\" is not a map")),
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Nil => "nil",
        Value::Boolean(_) => "a boolean",
        Value::Integer(_) => "an integer",
        Value::F32(_) | Value::F64(_) => "a float",
        Value::String(_) => "a string",
        Value::Binary(_) => "binary data",
        Value::Array(_) => "an array",
        Value::Map(_) => "a map",
        Value::Ext(..) => "an extension value",
    }
}

/// Deepest nesting of arrays and maps accepted (the top-level map is depth 1).
///
/// Buildbot's messages nest at most 6 deep (`update` → args → item → `log` →
/// line-triple → times). Python's msgpack stops at 1024; rmpv at about 512. A
/// much lower cap keeps every recursive walk over a decoded [`Value`] (clone,
/// drop, compare, encode, the peer's own code) far from the stack limit of any
/// thread, whatever a peer sends.
pub const MAX_DEPTH: usize = 100;

/// Walks the msgpack structure without building it, before anything is
/// allocated, and rejects it when it is truncated (a length or count runs past
/// the end), holds more than `max` values, nests deeper than [`MAX_DEPTH`], uses
/// a reserved marker, or has a str that is not UTF-8 (Python's
/// `unpackb(raw=False)` refuses such a message outright).
fn scan(bytes: &[u8], max: usize) -> Result<(), DecodeError> {
    let too_many = || DecodeError::Malformed(format!("more than {max} values in one message"));
    let truncated = || DecodeError::Malformed("truncated message".into());
    let mut pos = 0usize;
    // Values still to read in each open container; the bottom entry is the top level.
    let mut open: Vec<usize> = vec![1];
    let mut seen = 0usize;
    let read_be = |pos: &mut usize, n: usize| -> Result<usize, DecodeError> {
        let end = pos
            .checked_add(n)
            .filter(|e| *e <= bytes.len())
            .ok_or_else(truncated)?;
        let v = bytes[*pos..end]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        *pos = end;
        Ok(v)
    };
    let mut pending: usize = 1; // values still to read, over all open containers
    while let Some(left) = open.last_mut() {
        if *left == 0 {
            open.pop();
            continue;
        }
        *left -= 1;
        pending -= 1;
        seen += 1;
        if seen > max {
            return Err(too_many());
        }
        let b = *bytes.get(pos).ok_or_else(truncated)?;
        pos += 1;
        let (skip, children, is_str) = match Marker::from_u8(b) {
            Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null | Marker::True | Marker::False => {
                (0, 0, false)
            }
            Marker::U8 | Marker::I8 => (1, 0, false),
            Marker::U16 | Marker::I16 => (2, 0, false),
            Marker::U32 | Marker::I32 | Marker::F32 => (4, 0, false),
            Marker::U64 | Marker::I64 | Marker::F64 => (8, 0, false),
            Marker::FixStr(n) => (usize::from(n), 0, true),
            Marker::Str8 => (read_be(&mut pos, 1)?, 0, true),
            Marker::Str16 => (read_be(&mut pos, 2)?, 0, true),
            Marker::Str32 => (read_be(&mut pos, 4)?, 0, true),
            Marker::Bin8 => (read_be(&mut pos, 1)?, 0, false),
            Marker::Bin16 => (read_be(&mut pos, 2)?, 0, false),
            Marker::Bin32 => (read_be(&mut pos, 4)?, 0, false),
            Marker::FixArray(n) => (0, usize::from(n), false),
            Marker::Array16 => (0, read_be(&mut pos, 2)?, false),
            Marker::Array32 => (0, read_be(&mut pos, 4)?, false),
            Marker::FixMap(n) => (0, 2 * usize::from(n), false),
            Marker::Map16 => (0, 2 * read_be(&mut pos, 2)?, false),
            Marker::Map32 => (0, 2 * read_be(&mut pos, 4)?, false),
            Marker::FixExt1 => (2, 0, false),
            Marker::FixExt2 => (3, 0, false),
            Marker::FixExt4 => (5, 0, false),
            Marker::FixExt8 => (9, 0, false),
            Marker::FixExt16 => (17, 0, false),
            Marker::Ext8 => (read_be(&mut pos, 1)? + 1, 0, false),
            Marker::Ext16 => (read_be(&mut pos, 2)? + 1, 0, false),
            Marker::Ext32 => (read_be(&mut pos, 4)? + 1, 0, false),
            Marker::Reserved => {
                return Err(DecodeError::Malformed(format!(
                    "reserved msgpack marker 0x{b:02x}"
                )));
            }
        };
        let end = pos
            .checked_add(skip)
            .filter(|p| *p <= bytes.len())
            .ok_or_else(truncated)?;
        if is_str && std::str::from_utf8(&bytes[pos..end]).is_err() {
            return Err(DecodeError::Malformed(format!(
                "invalid UTF-8 in a str at byte {pos}"
            )));
        }
        pos = end;
        if matches!(
            Marker::from_u8(b),
            Marker::FixArray(_)
                | Marker::Array16
                | Marker::Array32
                | Marker::FixMap(_)
                | Marker::Map16
                | Marker::Map32
        ) {
            // Every child needs at least one byte, so a count beyond the bytes left is a lie.
            if children > bytes.len() - pos {
                return Err(truncated());
            }
            pending = pending.checked_add(children).ok_or_else(too_many)?;
            if seen + pending > max {
                return Err(too_many());
            }
            if open.len() > MAX_DEPTH {
                return Err(DecodeError::Malformed(format!(
                    "nested deeper than {MAX_DEPTH} levels"
                )));
            }
            open.push(children);
        }
    }
    Ok(())
}

fn kv_str(buf: &mut Vec<u8>, k: &str, v: &str) {
    w_str(buf, k);
    w_str(buf, v);
}
