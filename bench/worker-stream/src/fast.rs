//! An in-place reader for `update` messages, the bulk of the benchmark's traffic.
//!
//! `kiln_proto::decode` builds a value tree (one `Value` per newline position and
//! per line time: two per 100-byte line here) and copies the text; on a 2-core
//! machine that CPU would be taken from the worker being measured. This walks the
//! same msgpack without allocating, and accepts only the exact shapes the protocol
//! defines (spec §6.1, §7): a map of `op`, `seq_number`, `command_id`, `args`;
//! `args` an array of `[key, value]`; line-triples `[str, [int…], [float64…]]`.
//! Anything else (another op, a `bin` where a `str` should be, an item it does not
//! know) returns `None`, and the caller falls back to `kiln_proto::decode`, which
//! also produces the error text for malformed input.

use rmp::Marker;
use rmp::decode::{read_array_len, read_map_len, read_marker, read_str_len};

use crate::{Item, Stream};

pub struct Update<'a> {
    pub seq_number: i64,
    pub command_id: &'a str,
    pub items: Vec<Item<'a>>,
}

pub fn parse_update(bytes: &[u8]) -> Option<Update<'_>> {
    let mut r = bytes;
    let n = read_map_len(&mut r).ok()?;
    let (mut is_update, mut seq_number, mut command_id, mut items) = (false, None, None, None);
    for _ in 0..n {
        match read_str(&mut r)? {
            "op" => is_update = read_str(&mut r)? == "update",
            "seq_number" => seq_number = Some(read_i64(&mut r)?),
            "command_id" => command_id = Some(read_str(&mut r)?),
            "args" => items = Some(read_items(&mut r)?),
            _ => return None,
        }
        if !is_update && seq_number.is_none() && command_id.is_none() && items.is_none() {
            // "op" comes first from both Buildbot and kiln; bail out early on other ops.
            return None;
        }
    }
    if !r.is_empty() || !is_update {
        return None;
    }
    Some(Update {
        seq_number: seq_number?,
        command_id: command_id?,
        items: items?,
    })
}

fn read_items<'a>(r: &mut &'a [u8]) -> Option<Vec<Item<'a>>> {
    let n = read_array_len(r).ok()?;
    let mut items = Vec::with_capacity(n as usize);
    for _ in 0..n {
        if read_array_len(r).ok()? != 2 {
            return None;
        }
        let item = match read_str(r)? {
            "stdout" => read_lines(r, Stream::Stdout)?,
            "stderr" => read_lines(r, Stream::Stderr)?,
            "header" => read_lines(r, Stream::Header)?,
            "rc" => Item::Rc(read_i64(r)?),
            "elapsed" => Item::Elapsed(read_f64(r)?),
            "failure_reason" => Item::FailureReason(read_str(r)?),
            _ => return None,
        };
        items.push(item);
    }
    Some(items)
}

/// `[text, [newline positions], [line times]]`.
fn read_lines<'a>(r: &mut &'a [u8], stream: Stream) -> Option<Item<'a>> {
    if read_array_len(r).ok()? != 3 {
        return None;
    }
    let text = read_str(r)?;
    let positions = read_array_len(r).ok()? as usize;
    for _ in 0..positions {
        read_u64(r)?;
    }
    let times = read_array_len(r).ok()? as usize;
    for _ in 0..times {
        read_f64(r)?;
    }
    Some(Item::Lines(stream, text, positions, times))
}

fn read_str<'a>(r: &mut &'a [u8]) -> Option<&'a str> {
    let len = read_str_len(r).ok()? as usize;
    if r.len() < len {
        return None;
    }
    let (s, rest) = r.split_at(len);
    *r = rest;
    std::str::from_utf8(s).ok()
}

fn take<const N: usize>(r: &mut &[u8]) -> Option<[u8; N]> {
    let (head, rest) = r.split_first_chunk::<N>()?;
    *r = rest;
    Some(*head)
}

fn read_i64(r: &mut &[u8]) -> Option<i64> {
    Some(match read_marker(r).ok()? {
        Marker::FixPos(n) => i64::from(n),
        Marker::FixNeg(n) => i64::from(n),
        Marker::U8 => i64::from(take::<1>(r)?[0]),
        Marker::U16 => i64::from(u16::from_be_bytes(take(r)?)),
        Marker::U32 => i64::from(u32::from_be_bytes(take(r)?)),
        Marker::U64 => i64::try_from(u64::from_be_bytes(take(r)?)).ok()?,
        Marker::I8 => i64::from(take::<1>(r)?[0] as i8),
        Marker::I16 => i64::from(i16::from_be_bytes(take(r)?)),
        Marker::I32 => i64::from(i32::from_be_bytes(take(r)?)),
        Marker::I64 => i64::from_be_bytes(take(r)?),
        _ => return None,
    })
}

fn read_u64(r: &mut &[u8]) -> Option<u64> {
    u64::try_from(read_i64(r)?).ok()
}

/// Python floats are float64; an integer is accepted too (as kiln-proto does).
fn read_f64(r: &mut &[u8]) -> Option<f64> {
    let mut peek = *r;
    match read_marker(&mut peek).ok()? {
        Marker::F64 => {
            *r = peek;
            Some(f64::from_be_bytes(take(r)?))
        }
        Marker::F32 => {
            *r = peek;
            Some(f64::from(f32::from_be_bytes(take(r)?)))
        }
        _ => read_i64(r).map(|i| i as f64),
    }
}

#[cfg(test)]
mod tests {
    use kiln_proto::update::{Lines, UpdateItem};
    use kiln_proto::{Message, Op, encode};

    use super::*;

    fn update(items: Vec<UpdateItem>) -> Vec<u8> {
        encode(&Message::Request {
            seq_number: 7,
            op: Op::Update {
                command_id: "1".into(),
                items,
            },
        })
    }

    #[test]
    fn reads_what_kiln_proto_writes() {
        let b = update(vec![
            UpdateItem::Header(Lines::from_text("sh -c x\n in dir /w\n", 1.5)),
            UpdateItem::Stdout(Lines::from_text("a\nbb\n", 2.0)),
            UpdateItem::Stderr(Lines::from_text("oops\n", 2.0)),
            UpdateItem::Rc(-1),
            UpdateItem::Elapsed(0.25),
            UpdateItem::FailureReason("timeout".into()),
        ]);
        let u = parse_update(&b).expect("parsed");
        assert_eq!((u.seq_number, u.command_id, u.items.len()), (7, "1", 6));
        assert!(matches!(
            u.items[0],
            Item::Lines(Stream::Header, "sh -c x\n in dir /w\n", 2, 2)
        ));
        assert!(matches!(
            u.items[1],
            Item::Lines(Stream::Stdout, "a\nbb\n", 2, 2)
        ));
        assert!(matches!(
            u.items[2],
            Item::Lines(Stream::Stderr, "oops\n", 1, 1)
        ));
        assert!(matches!(u.items[3], Item::Rc(-1)));
        assert!(matches!(u.items[4], Item::Elapsed(e) if e == 0.25));
        assert!(matches!(u.items[5], Item::FailureReason("timeout")));
    }

    #[test]
    fn leaves_everything_else_to_kiln_proto() {
        let complete = encode(&Message::Request {
            seq_number: 1,
            op: Op::Complete {
                command_id: "1".into(),
                failure: None,
            },
        });
        assert!(parse_update(&complete).is_none());
        let files = update(vec![UpdateItem::Files(vec!["a".into()])]);
        assert!(parse_update(&files).is_none());
        let good = update(vec![UpdateItem::Stdout(Lines::from_text("x\n", 0.0))]);
        assert!(parse_update(&good[..good.len() - 1]).is_none(), "truncated");
        let mut trailing = good.clone();
        trailing.push(0xc0);
        assert!(parse_update(&trailing).is_none(), "trailing bytes");
    }
}
