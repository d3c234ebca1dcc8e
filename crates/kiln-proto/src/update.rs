//! The `update.args` payload: an ordered list of `[key, value]` status items.

use rmpv::Value;

use crate::value::text_of;

/// Whole lines of text with, for each line, the index of its ending `\n`
/// (in characters of `text`) and the Unix time its first character arrived.
///
/// `text` always ends with `\n`: the Buildbot master asserts it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Lines {
    pub text: String,
    pub newlines: Vec<u32>,
    pub times: Vec<f64>,
}

impl Lines {
    /// Lines from text that already ends with `\n`, all stamped with `time`.
    pub fn from_text(text: impl Into<String>, time: f64) -> Lines {
        let text = text.into();
        debug_assert!(text.ends_with('\n'), "line items carry whole lines");
        let mut newlines = Vec::new();
        for (chars, c) in text.chars().enumerate() {
            if c == '\n' {
                newlines.push(chars as u32);
            }
        }
        let times = vec![time; newlines.len()];
        Lines {
            text,
            newlines,
            times,
        }
    }

    /// Appends `other` (merging two batches of the same stream).
    pub fn extend(&mut self, other: &Lines) {
        // Text ends with its last newline, so the character count is that index + 1.
        let shift = self.newlines.last().map_or(0, |p| p + 1);
        self.text.push_str(&other.text);
        self.newlines
            .extend(other.newlines.iter().map(|p| p + shift));
        self.times.extend_from_slice(&other.times);
    }

    /// The size Buildbot's buffer accounting gives this item.
    pub fn weight(&self) -> usize {
        self.text.len() + 8 * (self.newlines.len() + self.times.len())
    }
}

/// One `[key, value]` item of an `update`.
#[derive(Debug, Clone, PartialEq)]
pub enum UpdateItem {
    Header(Lines),
    Stdout(Lines),
    Stderr(Lines),
    /// A watched log file's new lines: `['log', [name, lines]]`.
    Log(String, Lines),
    Rc(i64),
    Elapsed(f64),
    /// `"timeout"`, `"timeout_without_output"` or `"max_lines_failure"`.
    FailureReason(String),
    /// `listdir` entry names or `glob` matches.
    Files(Vec<String>),
    /// `tuple(os.stat(path))`: 10 integers. (A `stat` value that is not a list of
    /// i64 — e.g. an inode number above `i64::MAX` — decodes as `Other("stat", _)`.)
    Stat(Vec<i64>),
    /// Any other key (or a `stat` that does not fit [`UpdateItem::Stat`]), kept as it came.
    Other(String, Value),
}

impl UpdateItem {
    /// The item's key on the wire.
    pub fn key(&self) -> &str {
        match self {
            UpdateItem::Header(_) => "header",
            UpdateItem::Stdout(_) => "stdout",
            UpdateItem::Stderr(_) => "stderr",
            UpdateItem::Log(..) => "log",
            UpdateItem::Rc(_) => "rc",
            UpdateItem::Elapsed(_) => "elapsed",
            UpdateItem::FailureReason(_) => "failure_reason",
            UpdateItem::Files(_) => "files",
            UpdateItem::Stat(_) => "stat",
            UpdateItem::Other(k, _) => k,
        }
    }

    /// Size for output batching: text plus 8 per index/time entry, 20 for anything else.
    pub fn weight(&self) -> usize {
        match self {
            UpdateItem::Header(l)
            | UpdateItem::Stdout(l)
            | UpdateItem::Stderr(l)
            | UpdateItem::Log(_, l) => l.weight(),
            _ => 20,
        }
    }

    /// Writes `[key, value]` straight into `buf` (the hot path of log streaming:
    /// no intermediate `Value` tree).
    pub(crate) fn write(&self, buf: &mut Vec<u8>) {
        use crate::write::{w_array, w_f64, w_int, w_str, w_value};
        w_array(buf, 2);
        w_str(buf, self.key());
        match self {
            UpdateItem::Header(l) | UpdateItem::Stdout(l) | UpdateItem::Stderr(l) => {
                write_lines(buf, l)
            }
            UpdateItem::Log(name, l) => {
                w_array(buf, 2);
                w_str(buf, name);
                write_lines(buf, l);
            }
            UpdateItem::Rc(rc) => w_int(buf, *rc),
            UpdateItem::Elapsed(e) => w_f64(buf, *e),
            UpdateItem::FailureReason(r) => w_str(buf, r),
            UpdateItem::Files(f) => {
                w_array(buf, f.len());
                for s in f {
                    w_str(buf, s);
                }
            }
            UpdateItem::Stat(s) => {
                w_array(buf, s.len());
                for n in s {
                    w_int(buf, *n);
                }
            }
            UpdateItem::Other(_, v) => w_value(buf, v),
        }
    }

    pub(crate) fn from_value(v: &Value) -> Result<UpdateItem, String> {
        let pair = v
            .as_array()
            .filter(|a| a.len() == 2)
            .ok_or("update item is not a [key, value] pair")?;
        let key = text_of(&pair[0]).ok_or("update item key is not a string")?;
        let val = &pair[1];
        let bad = |what: &str| format!("update item {key:?}: {what}");
        Ok(match key.as_str() {
            "header" => UpdateItem::Header(lines_from(val).map_err(|e| bad(&e))?),
            "stdout" => UpdateItem::Stdout(lines_from(val).map_err(|e| bad(&e))?),
            "stderr" => UpdateItem::Stderr(lines_from(val).map_err(|e| bad(&e))?),
            "log" => {
                let a = val
                    .as_array()
                    .filter(|a| a.len() == 2)
                    .ok_or_else(|| bad("expected [name, lines]"))?;
                let name = text_of(&a[0]).ok_or_else(|| bad("log name is not a string"))?;
                UpdateItem::Log(name, lines_from(&a[1]).map_err(|e| bad(&e))?)
            }
            "rc" => UpdateItem::Rc(val.as_i64().ok_or_else(|| bad("rc is not an integer"))?),
            "elapsed" => {
                UpdateItem::Elapsed(val.as_f64().ok_or_else(|| bad("elapsed is not a number"))?)
            }
            "failure_reason" => {
                UpdateItem::FailureReason(text_of(val).ok_or_else(|| bad("not a string"))?)
            }
            "files" => UpdateItem::Files(
                val.as_array()
                    .ok_or_else(|| bad("not an array"))?
                    .iter()
                    .map(|f| text_of(f).ok_or_else(|| bad("file name is not a string")))
                    .collect::<Result<_, _>>()?,
            ),
            // `tuple(os.stat())` is ints, but st_ino/st_dev are unsigned 64-bit and may
            // exceed i64 (some network and FUSE file systems): such a tuple, or any other
            // shape, is kept as it came rather than failing the whole update.
            "stat" => match val
                .as_array()
                .and_then(|a| a.iter().map(Value::as_i64).collect::<Option<Vec<_>>>())
            {
                Some(st) => UpdateItem::Stat(st),
                None => UpdateItem::Other(key, val.clone()),
            },
            _ => UpdateItem::Other(key, val.clone()),
        })
    }
}

fn write_lines(buf: &mut Vec<u8>, l: &Lines) {
    use crate::write::{w_array, w_f64, w_int, w_str};
    w_array(buf, 3);
    w_str(buf, &l.text);
    w_array(buf, l.newlines.len());
    for p in &l.newlines {
        w_int(buf, i64::from(*p));
    }
    w_array(buf, l.times.len());
    for t in &l.times {
        w_f64(buf, *t);
    }
}

fn lines_from(v: &Value) -> Result<Lines, String> {
    let a = v
        .as_array()
        .filter(|a| a.len() == 3)
        .ok_or("expected [text, newline positions, times]")?;
    let text = text_of(&a[0]).ok_or("text is not a string")?;
    let newlines = a[1]
        .as_array()
        .ok_or("newline positions are not an array")?
        .iter()
        .map(|p| {
            p.as_u64()
                .and_then(|p| u32::try_from(p).ok())
                .ok_or("newline position is not an index")
        })
        .collect::<Result<_, _>>()?;
    let times = a[2]
        .as_array()
        .ok_or("line times are not an array")?
        .iter()
        .map(|t| t.as_f64().ok_or("line time is not a number"))
        .collect::<Result<_, _>>()?;
    Ok(Lines {
        text,
        newlines,
        times,
    })
}
