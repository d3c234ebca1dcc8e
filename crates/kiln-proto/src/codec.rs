//! Bytes ⇄ [`Message`], with a hard cap on size and on the number of values.

use std::io::Cursor;

use rmp::Marker;
use rmpv::Value;

use crate::args::{Args, WorkerSettings};
use crate::message::{Message, Op, Response};
use crate::update::UpdateItem;
use crate::value::{MapExt, text_of};

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
        Limits { max_message: 16 * 1024 * 1024, max_values: 1 << 20 }
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
    BadRequest { seq_number: i64, op: String, reason: String },
    /// A response whose `seq_number` is missing or not an integer.
    #[error("bad response: {0}")]
    BadResponse(String),
}

/// Decodes one WebSocket message.
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Message, DecodeError> {
    if bytes.len() > limits.max_message {
        return Err(DecodeError::TooLarge { len: bytes.len(), max: limits.max_message });
    }
    count_values(bytes, limits.max_values)?;
    let mut cur = Cursor::new(bytes);
    let value = rmpv::decode::read_value(&mut cur).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if cur.position() as usize != bytes.len() {
        return Err(DecodeError::Malformed(format!("{} trailing bytes after the map", bytes.len() - cur.position() as usize)));
    }
    let Value::Map(map) = value else {
        return Err(DecodeError::Malformed(format!("expected a map, got {}", kind(&value))));
    };
    let op = map.get_key("op").ok_or(DecodeError::NoEnvelope("op"))?;
    let op = text_of(op).ok_or_else(|| DecodeError::Malformed("\"op\" is not a string".into()))?;
    if op == "response" {
        let seq_number = map
            .get_key("seq_number")
            .and_then(Value::as_i64)
            .ok_or_else(|| DecodeError::BadResponse("no integer \"seq_number\"".into()))?;
        let is_exception = map.get_key("is_exception").is_some_and(truthy);
        let result = map.get_key("result").cloned().unwrap_or(Value::Nil);
        return Ok(Message::Response(Response { seq_number, result, is_exception }));
    }
    let seq_number = map.get_key("seq_number").ok_or(DecodeError::NoEnvelope("seq_number"))?;
    let seq_number = seq_number.as_i64().ok_or(DecodeError::NoEnvelope("seq_number"))?;
    let bad = |reason: String| DecodeError::BadRequest { seq_number, op: op.clone(), reason };
    let req = Req { map: &map };
    let op = match op.as_str() {
        "print" => Op::Print { message: req.text("message").map_err(bad)? },
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
            why: req.opt_text("why").unwrap_or_default(),
        },
        "update" => {
            let items = req.get("args").map_err(bad)?;
            let items = items.as_array().ok_or_else(|| bad("\"args\" is not an array".into()))?;
            Op::Update {
                command_id: req.text("command_id").map_err(bad)?,
                items: items.iter().map(UpdateItem::from_value).collect::<Result<_, _>>().map_err(bad)?,
            }
        }
        "complete" => Op::Complete {
            command_id: req.text("command_id").map_err(bad)?,
            failure: req.opt_text("args"),
        },
        "update_upload_file_write" => {
            Op::UploadFileWrite { command_id: req.text("command_id").map_err(bad)?, data: req.bin("args").map_err(bad)? }
        }
        "update_upload_directory_write" => {
            Op::UploadDirectoryWrite { command_id: req.text("command_id").map_err(bad)?, data: req.bin("args").map_err(bad)? }
        }
        "update_upload_file_close" => Op::UploadFileClose { command_id: req.text("command_id").map_err(bad)? },
        "update_upload_directory_unpack" => Op::UploadDirectoryUnpack { command_id: req.text("command_id").map_err(bad)? },
        "update_read_file_close" => Op::ReadFileClose { command_id: req.text("command_id").map_err(bad)? },
        "update_upload_file_utime" => Op::UploadFileUtime {
            command_id: req.text("command_id").map_err(bad)?,
            access_time: req.num("access_time").map_err(bad)?,
            modified_time: req.num("modified_time").map_err(bad)?,
        },
        "update_read_file" => {
            let length = req.get("length").map_err(bad)?;
            let length = length.as_u64().ok_or_else(|| bad("\"length\" is not a non-negative integer".into()))?;
            Op::ReadFile { command_id: req.text("command_id").map_err(bad)?, length }
        }
        other => Op::Unknown { op: other.to_owned() },
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
        Op::StartCommand { builder_name, command_id, command_name, args } => {
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
        Op::InterruptCommand { builder_name, command_id, why } => {
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
        Op::Complete { command_id, failure } => {
            start(buf, 2);
            w_str(buf, "args");
            match failure {
                Some(f) => w_str(buf, f),
                None => w_nil(buf),
            }
            kv_str(buf, "command_id", command_id);
        }
        Op::UploadFileWrite { command_id, data } | Op::UploadDirectoryWrite { command_id, data } => {
            start(buf, 2);
            w_str(buf, "args");
            rmp::encode::write_bin(buf, data).expect("Vec write");
            kv_str(buf, "command_id", command_id);
        }
        Op::UploadFileClose { command_id } | Op::UploadDirectoryUnpack { command_id } | Op::ReadFileClose { command_id } => {
            start(buf, 1);
            kv_str(buf, "command_id", command_id);
        }
        Op::UploadFileUtime { command_id, access_time, modified_time } => {
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
            rmp::encode::write_uint(buf, *length).expect("Vec write");
            kv_str(buf, "command_id", command_id);
        }
    }
    w_str(buf, "seq_number");
    w_int(buf, seq);
}

/// Field access on a request map, with Buildbot's error texts.
struct Req<'a> {
    map: &'a [(Value, Value)],
}

impl Req<'_> {
    fn get(&self, key: &str) -> Result<&Value, String> {
        self.map.get_key(key).ok_or_else(|| format!("message did not contain obligatory \"{key}\" key"))
    }
    fn text(&self, key: &str) -> Result<String, String> {
        text_of(self.get(key)?).ok_or_else(|| format!("\"{key}\" is not a string"))
    }
    fn opt_text(&self, key: &str) -> Option<String> {
        self.map.get_key(key).and_then(text_of)
    }
    fn num(&self, key: &str) -> Result<f64, String> {
        let v = self.get(key)?;
        v.as_f64().or_else(|| v.as_i64().map(|i| i as f64)).ok_or_else(|| format!("\"{key}\" is not a number"))
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

fn truthy(v: &Value) -> bool {
    match v {
        Value::Nil => false,
        Value::Boolean(b) => *b,
        Value::Integer(i) => i.as_i64() != Some(0),
        _ => true,
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

/// Walks the msgpack structure without building it, failing once more than
/// `max` values are seen or a length runs past the end.
fn count_values(bytes: &[u8], max: usize) -> Result<(), DecodeError> {
    let too_many = || DecodeError::Malformed(format!("more than {max} values in one message"));
    let truncated = || DecodeError::Malformed("truncated message".into());
    let mut pos = 0usize;
    let mut pending: usize = 1; // values still to read
    let mut seen = 0usize;
    let read_be = |pos: &mut usize, n: usize| -> Result<usize, DecodeError> {
        let end = pos.checked_add(n).filter(|e| *e <= bytes.len()).ok_or_else(truncated)?;
        let v = bytes[*pos..end].iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        *pos = end;
        Ok(v)
    };
    while pending > 0 {
        pending -= 1;
        seen += 1;
        if seen > max {
            return Err(too_many());
        }
        let b = *bytes.get(pos).ok_or_else(truncated)?;
        pos += 1;
        let (skip, children) = match Marker::from_u8(b) {
            Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null | Marker::True | Marker::False => (0, 0),
            Marker::U8 | Marker::I8 => (1, 0),
            Marker::U16 | Marker::I16 => (2, 0),
            Marker::U32 | Marker::I32 | Marker::F32 => (4, 0),
            Marker::U64 | Marker::I64 | Marker::F64 => (8, 0),
            Marker::FixStr(n) => (usize::from(n), 0),
            Marker::Str8 | Marker::Bin8 => (read_be(&mut pos, 1)?, 0),
            Marker::Str16 | Marker::Bin16 => (read_be(&mut pos, 2)?, 0),
            Marker::Str32 | Marker::Bin32 => (read_be(&mut pos, 4)?, 0),
            Marker::FixArray(n) => (0, usize::from(n)),
            Marker::Array16 => (0, read_be(&mut pos, 2)?),
            Marker::Array32 => (0, read_be(&mut pos, 4)?),
            Marker::FixMap(n) => (0, 2 * usize::from(n)),
            Marker::Map16 => (0, 2 * read_be(&mut pos, 2)?),
            Marker::Map32 => (0, 2 * read_be(&mut pos, 4)?),
            Marker::FixExt1 => (2, 0),
            Marker::FixExt2 => (3, 0),
            Marker::FixExt4 => (5, 0),
            Marker::FixExt8 => (9, 0),
            Marker::FixExt16 => (17, 0),
            Marker::Ext8 => (read_be(&mut pos, 1)? + 1, 0),
            Marker::Ext16 => (read_be(&mut pos, 2)? + 1, 0),
            Marker::Ext32 => (read_be(&mut pos, 4)? + 1, 0),
            Marker::Reserved => return Err(DecodeError::Malformed(format!("reserved msgpack marker 0x{b:02x}"))),
        };
        pos = pos.checked_add(skip).filter(|p| *p <= bytes.len()).ok_or_else(truncated)?;
        // Every child needs at least one byte, so a count beyond the bytes left is a lie.
        if children > bytes.len() - pos {
            return Err(truncated());
        }
        pending = pending.checked_add(children).ok_or_else(too_many)?;
        if seen + pending > max {
            return Err(too_many());
        }
    }
    Ok(())
}

// --- low-level writers; writing to a Vec cannot fail ---

pub(crate) fn w_map(buf: &mut Vec<u8>, n: usize) {
    rmp::encode::write_map_len(buf, n as u32).expect("Vec write");
}
pub(crate) fn w_array(buf: &mut Vec<u8>, n: usize) {
    rmp::encode::write_array_len(buf, n as u32).expect("Vec write");
}
pub(crate) fn w_str(buf: &mut Vec<u8>, s: &str) {
    rmp::encode::write_str(buf, s).expect("Vec write");
}
pub(crate) fn w_int(buf: &mut Vec<u8>, n: i64) {
    rmp::encode::write_sint(buf, n).expect("Vec write");
}
pub(crate) fn w_f64(buf: &mut Vec<u8>, f: f64) {
    rmp::encode::write_f64(buf, f).expect("Vec write");
}
pub(crate) fn w_nil(buf: &mut Vec<u8>) {
    rmp::encode::write_nil(buf).expect("Vec write");
}
pub(crate) fn w_value(buf: &mut Vec<u8>, v: &Value) {
    rmpv::encode::write_value(buf, v).expect("Vec write");
}
fn kv_str(buf: &mut Vec<u8>, k: &str, v: &str) {
    w_str(buf, k);
    w_str(buf, v);
}
