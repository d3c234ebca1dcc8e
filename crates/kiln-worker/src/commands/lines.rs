//! Turning a child's bytes into whole lines (§7.2): incremental UTF-8 decoding,
//! `newline_re` rewriting, over-long line splitting, and per-line times.
//!
//! One [`LineSplitter`] per stream (stdout, stderr, each watched log file). Feed it
//! raw bytes as they arrive; it returns the complete lines they finish, as a
//! [`Lines`] ready for an update item. [`LineSplitter::flush`] ends a pending
//! partial line with a `\n` when the command completes.
//!
//! Two matchers rewrite `newline_re` matches into `\n`:
//! * the default regex of Buildbot 4.3 (`kiln_proto::defaults::NEWLINE_RE`) is
//!   matched by hand: `memchr3` finds the rare `\r`, ESC and backspace bytes and
//!   everything between them is copied as is — the hot path of log streaming;
//! * any other regex is translated from Python syntax (`\033` octal escapes; the
//!   lookahead `(?=.)` is dropped and emulated) and run with `regex`.
//!
//! Both make the result independent of how the input was chunked: a match that
//! ends exactly where the data ends so far (a lone `\r`, a run of backspaces, an
//! escape sequence cut in two) is held back until more data or the final flush.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use kiln_proto::args::WorkerSettings;
use kiln_proto::update::Lines;
use memchr::{memchr, memchr3, memrchr};
use regex::Regex;

/// The current Unix time as Buildbot stamps lines.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `text` as whole lines stamped now, with a final `\n` added if missing.
pub fn whole_lines(text: &str) -> Lines {
    let mut t = text.to_owned();
    if !t.ends_with('\n') {
        t.push('\n');
    }
    Lines::from_text(t, now())
}

/// Longest escape-sequence prefix held back while waiting for its end; a longer
/// one is taken literally (no sane terminal sequence has 250 digits).
const MAX_ESCAPE_HOLD: usize = 256;

/// How lines are found: the newline regex and the line length limit, shared by
/// all streams of a command (cheap to clone).
#[derive(Debug, Clone)]
pub struct LineConfig {
    matcher: Matcher,
    max_line_length: usize,
}

#[derive(Debug, Clone)]
enum Matcher {
    /// Buildbot's default regex, matched by hand.
    Default,
    /// Any other regex (already translated to Rust syntax).
    Regex(Regex),
}

impl Default for LineConfig {
    fn default() -> Self {
        LineConfig {
            matcher: Matcher::Default,
            max_line_length: kiln_proto::defaults::MAX_LINE_LENGTH,
        }
    }
}

impl LineConfig {
    /// A config from a Python-syntax `newline_re` and `max_line_length` (in characters;
    /// values below 2 are raised to 2 so that splitting always makes progress).
    pub fn new(newline_re: &str, max_line_length: usize) -> Result<LineConfig, String> {
        let matcher = if newline_re == kiln_proto::defaults::NEWLINE_RE {
            Matcher::Default
        } else {
            Matcher::Regex(compile_python_regex(newline_re)?)
        };
        Ok(LineConfig {
            matcher,
            max_line_length: max_line_length.max(2),
        })
    }

    /// The config for a command started under `settings`. A `newline_re` that cannot
    /// be translated falls back to the default one (with a warning in the log).
    pub fn from_settings(settings: &WorkerSettings) -> LineConfig {
        LineConfig::new(&settings.newline_re, settings.max_line_length).unwrap_or_else(|e| {
            tracing::warn!(
                "newline_re {:?} is not usable ({e}); using the default",
                settings.newline_re
            );
            LineConfig {
                max_line_length: settings.max_line_length.max(2),
                ..LineConfig::default()
            }
        })
    }

    /// Forces the general regex engine even for the default regex (for tests and benchmarks).
    #[doc(hidden)]
    pub fn with_regex_engine(
        newline_re: &str,
        max_line_length: usize,
    ) -> Result<LineConfig, String> {
        Ok(LineConfig {
            matcher: Matcher::Regex(compile_python_regex(newline_re)?),
            max_line_length: max_line_length.max(2),
        })
    }

    pub fn max_line_length(&self) -> usize {
        self.max_line_length
    }
}

/// Translates a Python `re` pattern into `regex` syntax: octal escapes (`\033`,
/// `\0`) become `\x{..}`, and the lookahead `(?=.)` is removed (its effect — a
/// match may not end where the data ends — is emulated by the splitter holding
/// such matches back).
pub fn compile_python_regex(py: &str) -> Result<Regex, String> {
    let mut out = String::with_capacity(py.len() + 8);
    let b = py.as_bytes();
    let mut i = 0;
    let mut in_class = false;
    while i < b.len() {
        let c = b[i];
        if c == b'\\' && i + 1 < b.len() {
            let rest = &b[i + 1..];
            let octal =
                |n: usize| rest.len() >= n && rest[..n].iter().all(|d| (b'0'..=b'7').contains(d));
            // Python: `\0` plus up to two octal digits, or exactly three octal digits.
            let digits = if rest[0] == b'0' {
                1 + rest[1..]
                    .iter()
                    .take(2)
                    .take_while(|d| (b'0'..=b'7').contains(d))
                    .count()
            } else if octal(3) && rest[0] <= b'3' {
                3
            } else {
                0
            };
            if digits > 0 {
                let s = std::str::from_utf8(&rest[..digits]).expect("ASCII digits");
                let v = u32::from_str_radix(s, 8).expect("octal digits");
                out.push_str(&format!("\\x{{{v:x}}}"));
                i += 1 + digits;
                continue;
            }
            // Any other escape is copied with the character it escapes.
            let ch = py[i + 1..].chars().next().expect("not at end");
            out.push('\\');
            out.push(ch);
            i += 1 + ch.len_utf8();
            continue;
        }
        if !in_class && py[i..].starts_with("(?=.)") {
            i += "(?=.)".len();
            continue;
        }
        if c == b'[' {
            in_class = true;
        } else if c == b']' {
            in_class = false;
        }
        let ch = py[i..].chars().next().expect("in bounds");
        out.push(ch);
        i += ch.len_utf8();
    }
    Regex::new(&out).map_err(|e| e.to_string())
}

/// Splits one stream into lines. See the module documentation.
#[derive(Debug, Clone)]
pub struct LineSplitter {
    matcher: Matcher,
    /// The first bytes of a UTF-8 sequence cut by the end of the last read.
    utf8_carry: Vec<u8>,
    /// Decoded text not yet rewritten: for the default matcher, a possible match
    /// cut by the end of the data; for a regex, the current line's raw text.
    hold: String,
    asm: Assembler,
}

impl LineSplitter {
    pub fn new(config: &LineConfig) -> LineSplitter {
        LineSplitter {
            matcher: config.matcher.clone(),
            utf8_carry: Vec::new(),
            hold: String::new(),
            asm: Assembler::new(config.max_line_length),
        }
    }

    /// Feeds bytes that arrived now; returns the lines they complete.
    pub fn feed(&mut self, data: &[u8]) -> Option<Lines> {
        self.feed_at(data, now())
    }

    /// Feeds bytes that arrived at Unix time `time`.
    pub fn feed_at(&mut self, data: &[u8], time: f64) -> Option<Lines> {
        if data.is_empty() {
            return None;
        }
        let text = self.decode(data);
        self.asm.begin(text.len(), time);
        match &self.matcher {
            Matcher::Default => scan_default(&mut self.hold, &mut self.asm, &text, false),
            Matcher::Regex(re) => scan_regex(re, &mut self.hold, &mut self.asm, &text, false),
        }
        if !self.hold.is_empty() && self.asm.line_time.is_none() {
            // The held text belongs to the current line: it started it.
            self.asm.line_time = Some(time);
        }
        self.asm.finish()
    }

    /// Ends the stream now: held text is rewritten and a pending partial line is
    /// completed with a `\n`.
    pub fn flush(&mut self) -> Option<Lines> {
        self.flush_at(now())
    }

    pub fn flush_at(&mut self, time: f64) -> Option<Lines> {
        let mut text = String::new();
        if !self.utf8_carry.is_empty() {
            self.utf8_carry.clear();
            text.push(char::REPLACEMENT_CHARACTER);
        }
        self.asm.begin(text.len(), time);
        match &self.matcher {
            Matcher::Default => scan_default(&mut self.hold, &mut self.asm, &text, true),
            Matcher::Regex(re) => scan_regex(re, &mut self.hold, &mut self.asm, &text, true),
        }
        if self.asm.has_partial() {
            self.asm.end_line();
        }
        self.asm.finish()
    }

    /// Whether a partial line (or held text) is waiting for more data.
    pub fn has_pending(&self) -> bool {
        !self.hold.is_empty() || !self.utf8_carry.is_empty() || self.asm.has_partial()
    }

    /// Incremental UTF-8 decoding; invalid bytes become U+FFFD (one per maximal
    /// invalid subpart, like Python's `errors='replace'`).
    fn decode<'a>(&mut self, data: &'a [u8]) -> Cow<'a, str> {
        let joined;
        let input: &[u8] = if self.utf8_carry.is_empty() {
            if let Ok(s) = std::str::from_utf8(data) {
                return Cow::Borrowed(s);
            }
            data
        } else {
            let mut v = std::mem::take(&mut self.utf8_carry);
            v.extend_from_slice(data);
            joined = v;
            &joined
        };
        let mut out = String::with_capacity(input.len() + 3);
        let mut chunks = input.utf8_chunks().peekable();
        while let Some(chunk) = chunks.next() {
            out.push_str(chunk.valid());
            let bad = chunk.invalid();
            if bad.is_empty() {
                continue;
            }
            let incomplete = chunks.peek().is_none()
                && std::str::from_utf8(bad)
                    .err()
                    .is_some_and(|e| e.error_len().is_none());
            if incomplete {
                self.utf8_carry = bad.to_vec();
            } else {
                out.push(char::REPLACEMENT_CHARACTER);
            }
        }
        Cow::Owned(out)
    }
}

/// Rewrites `text` (after any held text) with the default regex
/// `(\r\n|\r(?=.)|\033\[u|\033\[[0-9]+;[0-9]+[Hf]|\033\[2J|\x08+)`.
fn scan_default(hold: &mut String, asm: &mut Assembler, text: &str, last: bool) {
    let joined;
    let text: &str = if hold.is_empty() {
        text
    } else {
        let mut h = std::mem::take(hold);
        h.push_str(text);
        joined = h;
        &joined
    };
    let b = text.as_bytes();
    let mut lit = 0; // start of the literal run not yet given to the assembler
    let mut pos = 0;
    while let Some(off) = memchr3(b'\r', 0x1b, 0x08, &b[pos..]) {
        let i = pos + off;
        let end = match b[i] {
            b'\r' => {
                if i + 1 < b.len() {
                    if b[i + 1] == b'\n' { i + 2 } else { i + 1 }
                } else if last {
                    i + 1 // the final `\n` Buildbot appends makes it `\r\n`
                } else {
                    hold.push_str(&text[i..]);
                    asm.text(&text[lit..i]);
                    return;
                }
            }
            0x08 => {
                let run = b[i..].iter().take_while(|&&c| c == 0x08).count();
                if i + run == b.len() && !last {
                    hold.push_str(&text[i..]);
                    asm.text(&text[lit..i]);
                    return;
                }
                i + run
            }
            _ => match escape(&b[i..]) {
                Esc::Match(n) => i + n,
                Esc::NoMatch => {
                    pos = i + 1;
                    continue;
                }
                Esc::Incomplete if last || b.len() - i > MAX_ESCAPE_HOLD => {
                    pos = i + 1;
                    continue;
                }
                Esc::Incomplete => {
                    hold.push_str(&text[i..]);
                    asm.text(&text[lit..i]);
                    return;
                }
            },
        };
        asm.text(&text[lit..i]);
        asm.end_line();
        lit = end;
        pos = end;
    }
    asm.text(&text[lit..]);
}

enum Esc {
    Match(usize),
    NoMatch,
    Incomplete,
}

/// Matches `\033\[u|\033\[[0-9]+;[0-9]+[Hf]|\033\[2J` at the start of `b` (b[0] is ESC),
/// leftmost-first like Python.
fn escape(b: &[u8]) -> Esc {
    if b.len() < 2 {
        return Esc::Incomplete;
    }
    if b[1] != b'[' {
        return Esc::NoMatch;
    }
    if b.len() < 3 {
        return Esc::Incomplete;
    }
    if b[2] == b'u' {
        return Esc::Match(3);
    }
    // [0-9]+;[0-9]+[Hf]
    let digits = |from: usize| b[from..].iter().take_while(|c| c.is_ascii_digit()).count();
    let d1 = digits(2);
    let alt2 = if d1 == 0 {
        Esc::NoMatch
    } else {
        let j = 2 + d1;
        if j == b.len() {
            Esc::Incomplete
        } else if b[j] != b';' {
            Esc::NoMatch
        } else {
            let d2 = digits(j + 1);
            let k = j + 1 + d2;
            if k == b.len() {
                Esc::Incomplete
            } else if d2 > 0 && (b[k] == b'H' || b[k] == b'f') {
                Esc::Match(k + 1)
            } else {
                Esc::NoMatch
            }
        }
    };
    match alt2 {
        Esc::NoMatch => {}
        other => return other,
    }
    // 2J
    match (b[2], b.get(3)) {
        (b'2', None) => Esc::Incomplete,
        (b'2', Some(b'J')) => Esc::Match(4),
        _ => Esc::NoMatch,
    }
}

/// Rewrites with a general regex. `hold` keeps the current line's raw text, which is
/// scanned again with the next data (a match may start in it); a match ending where
/// the data ends is held back too, since more data could extend it.
fn scan_regex(re: &Regex, hold: &mut String, asm: &mut Assembler, text: &str, last: bool) {
    let mut buf = std::mem::take(hold);
    buf.push_str(text);
    let mut pos = 0;
    let mut held_match = None;
    for m in re.find_iter(&buf) {
        if m.is_empty() {
            continue;
        }
        if m.end() == buf.len() && !last {
            held_match = Some(m.start());
            break;
        }
        asm.text(&buf[pos..m.start()]);
        asm.end_line();
        pos = m.end();
    }
    let end = held_match.unwrap_or(buf.len());
    if last {
        asm.text(&buf[pos..end]);
        return;
    }
    // Whole lines of literal text are final; the rest of the line stays raw.
    let mut keep = match memrchr(b'\n', &buf.as_bytes()[pos..end]) {
        Some(k) => pos + k + 1,
        None => pos,
    };
    // Bound the rescanned text: commit all but the last stretch of a very long line.
    let bound = (4 * asm.max).max(4 * MAX_ESCAPE_HOLD);
    if end - keep > bound {
        let mut cut = end - bound / 2;
        while !buf.is_char_boundary(cut) {
            cut -= 1;
        }
        keep = cut;
    }
    asm.text(&buf[pos..keep]);
    buf.drain(..keep);
    *hold = buf;
}

/// Builds the output lines: the current partial line, long-line splitting, and the
/// `Lines` item of one feed.
#[derive(Debug, Clone)]
struct Assembler {
    max: usize,
    /// The current line's text so far (no `\n`), carried between feeds.
    line: String,
    line_chars: usize,
    /// When the current line's first character arrived.
    line_time: Option<f64>,
    /// Arrival time of the data being fed.
    now: f64,
    /// Whether the data being fed is all ASCII (chars == bytes).
    ascii: bool,
    out: Lines,
    out_chars: u32,
}

impl Assembler {
    fn new(max: usize) -> Assembler {
        Assembler {
            max: max.max(2),
            line: String::new(),
            line_chars: 0,
            line_time: None,
            now: 0.0,
            ascii: true,
            out: Lines::default(),
            out_chars: 0,
        }
    }

    fn begin(&mut self, len_hint: usize, now: f64) {
        self.now = now;
        self.ascii = true;
        self.out = Lines {
            text: String::with_capacity(len_hint + self.line.len() + 1),
            newlines: Vec::new(),
            times: Vec::new(),
        };
        self.out_chars = 0;
    }

    fn finish(&mut self) -> Option<Lines> {
        let out = std::mem::take(&mut self.out);
        if out.newlines.is_empty() {
            None
        } else {
            Some(out)
        }
    }

    fn has_partial(&self) -> bool {
        !self.line.is_empty()
    }

    /// Literal text (may contain `\n`).
    fn text(&mut self, s: &str) {
        if s.is_empty() {
            return;
        }
        self.ascii = s.is_ascii();
        let mut rest = s;
        while let Some(i) = memchr(b'\n', rest.as_bytes()) {
            let piece = &rest[..i];
            let n = self.count(piece);
            if self.line.is_empty() && n <= self.max {
                // The common case: a whole line inside this data, copied once.
                let time = self.line_time.take().unwrap_or(self.now);
                self.out.text.push_str(piece);
                self.push_newline(n, time);
            } else {
                self.add(piece, n);
                self.end_line();
            }
            rest = &rest[i + 1..];
        }
        if !rest.is_empty() {
            let n = self.count(rest);
            self.add(rest, n);
        }
    }

    fn count(&self, s: &str) -> usize {
        if self.ascii {
            s.len()
        } else {
            s.chars().count()
        }
    }

    /// Adds text without `\n` to the current line, splitting it when it grows over
    /// `max` characters: `max - 1` characters and an inserted `\n`, nothing lost.
    fn add(&mut self, mut piece: &str, mut n: usize) {
        if piece.is_empty() {
            return;
        }
        if self.line_time.is_none() {
            self.line_time = Some(self.now);
        }
        let keep = self.max - 1;
        while self.line_chars + n > self.max {
            if self.line_chars >= keep {
                // The carried line alone fills a piece; its last char(s) start the next.
                let cut = byte_of_char(&self.line, keep);
                let tail = self.line.split_off(cut);
                self.out.text.push_str(&self.line);
                let time = self.line_time.unwrap_or(self.now);
                self.push_newline(keep, time);
                self.line = tail;
                self.line_chars -= keep;
                if self.line.is_empty() {
                    self.line_time = Some(self.now);
                }
            } else {
                let k = keep - self.line_chars;
                let cut = if self.ascii {
                    k
                } else {
                    byte_of_char(piece, k)
                };
                self.out.text.push_str(&self.line);
                self.out.text.push_str(&piece[..cut]);
                let time = self.line_time.unwrap_or(self.now);
                self.push_newline(keep, time);
                self.line.clear();
                self.line_chars = 0;
                self.line_time = Some(self.now);
                piece = &piece[cut..];
                n -= k;
            }
        }
        self.line.push_str(piece);
        self.line_chars += n;
    }

    /// Ends the current line (which may be empty).
    fn end_line(&mut self) {
        let time = self.line_time.take().unwrap_or(self.now);
        self.out.text.push_str(&self.line);
        let n = self.line_chars;
        self.line.clear();
        self.line_chars = 0;
        self.push_newline(n, time);
    }

    /// Appends the `\n` ending a line of `chars` characters already in `out.text`.
    fn push_newline(&mut self, chars: usize, time: f64) {
        self.out.text.push('\n');
        self.out_chars += chars as u32;
        self.out.newlines.push(self.out_chars);
        self.out_chars += 1;
        self.out.times.push(time);
    }
}

fn byte_of_char(s: &str, chars: usize) -> usize {
    s.char_indices().nth(chars).map_or(s.len(), |(i, _)| i)
}

/// Counts lines as Buildbot's `max_lines` check does: matches of `\r\n|\r|\n`.
/// `prev_cr` carries whether the previous chunk ended in `\r` (so a `\r\n` cut in
/// two counts once).
pub fn count_line_ends(data: &[u8], prev_cr: &mut bool) -> u64 {
    let mut n = 0u64;
    let mut pos = 0;
    let mut after_cr = *prev_cr;
    while let Some(off) = memchr::memchr2(b'\r', b'\n', &data[pos..]) {
        let i = pos + off;
        if data[i] == b'\r' {
            n += 1;
            after_cr = true;
        } else {
            if !(after_cr && off == 0) {
                n += 1;
            }
            after_cr = false;
        }
        pos = i + 1;
    }
    if pos < data.len() {
        after_cr = false;
    }
    *prev_cr = after_cr;
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_proto::defaults::NEWLINE_RE;
    use proptest::prelude::*;

    fn cfg(max: usize) -> LineConfig {
        LineConfig::new(NEWLINE_RE, max).unwrap()
    }

    /// Feeds `chunks` (each with its index as time) then flushes; returns every line
    /// (text without `\n`, time) and checks the positions of each `Lines`.
    fn run(config: &LineConfig, chunks: &[&[u8]]) -> Vec<(String, f64)> {
        let mut s = LineSplitter::new(config);
        let mut all = Vec::new();
        let mut take = |l: Option<Lines>| {
            if let Some(l) = l {
                check(&l);
                for (line, t) in l.text.split_inclusive('\n').zip(&l.times) {
                    all.push((line.trim_end_matches('\n').to_owned(), *t));
                }
            }
        };
        for (i, c) in chunks.iter().enumerate() {
            take(s.feed_at(c, i as f64));
        }
        take(s.flush_at(chunks.len() as f64));
        assert!(!s.has_pending());
        all
    }

    fn texts(lines: &[(String, f64)]) -> Vec<&str> {
        lines.iter().map(|(l, _)| l.as_str()).collect()
    }

    fn check(l: &Lines) {
        assert!(l.text.ends_with('\n'));
        let expect: Vec<u32> = l
            .text
            .chars()
            .enumerate()
            .filter(|(_, c)| *c == '\n')
            .map(|(i, _)| i as u32)
            .collect();
        assert_eq!(l.newlines, expect, "newline positions of {:?}", l.text);
        assert_eq!(l.times.len(), l.newlines.len());
    }

    #[test]
    fn plain_lines_and_times() {
        let out = run(&cfg(4096), &[b"one\ntw", b"o\nthree\n", b"four"]);
        assert_eq!(
            out,
            vec![
                ("one".into(), 0.0),
                ("two".into(), 0.0),
                ("three".into(), 1.0),
                ("four".into(), 2.0)
            ]
        );
    }

    #[test]
    fn a_line_starting_at_a_chunk_end_gets_the_next_time() {
        let out = run(&cfg(4096), &[b"a\n", b"b\n"]);
        assert_eq!(out, vec![("a".into(), 0.0), ("b".into(), 1.0)]);
    }

    #[test]
    fn empty_input_and_empty_lines() {
        assert!(run(&cfg(4096), &[]).is_empty());
        assert!(run(&cfg(4096), &[b""]).is_empty());
        assert_eq!(texts(&run(&cfg(4096), &[b"\n\n"])), vec!["", ""]);
    }

    #[test]
    fn crlf_and_lone_cr_and_ansi() {
        let out = run(
            &cfg(4096),
            &[b"a\r\nb\rc\x1b[2Jd\x1b[uf\x1b[12;4Hg\x1b[1;2fh\x08\x08\x08i\n"],
        );
        assert_eq!(texts(&out), vec!["a", "b", "c", "d", "f", "g", "h", "i"]);
        // Sequences that do not match stay as they are.
        let out = run(&cfg(4096), &[b"x\x1b[31my\x1b[;1Hz\x1b[2Kw\n"]);
        assert_eq!(texts(&out), vec!["x\x1b[31my\x1b[;1Hz\x1b[2Kw"]);
    }

    #[test]
    fn crlf_cut_between_reads_is_one_newline() {
        let out = run(&cfg(4096), &[b"abc\r", b"\ndef\r", b"\n"]);
        assert_eq!(texts(&out), vec!["abc", "def"]);
    }

    #[test]
    fn trailing_cr_is_held_until_more_data() {
        let mut s = LineSplitter::new(&cfg(4096));
        assert!(
            s.feed_at(b"progress 10%\r", 0.0).is_none(),
            "a lone trailing \\r is not a newline yet"
        );
        let l = s.feed_at(b"progress 20%\r", 1.0).unwrap();
        assert_eq!(l.text, "progress 10%\n");
        let l = s.flush_at(2.0).unwrap();
        assert_eq!(l.text, "progress 20%\n", "the final flush ends it once");
        assert!(s.flush_at(3.0).is_none());
    }

    #[test]
    fn backspace_runs_and_escapes_across_reads() {
        assert_eq!(
            texts(&run(&cfg(4096), &[b"a\x08", b"\x08", b"\x08b\n"])),
            vec!["a", "b"]
        );
        assert_eq!(
            texts(&run(&cfg(4096), &[b"a\x1b", b"[1", b"2;", b"3", b"Hb\n"])),
            vec!["a", "b"]
        );
        assert_eq!(
            texts(&run(&cfg(4096), &[b"a\x1b[", b"2", b"J", b"b\n"])),
            vec!["a", "b"]
        );
        // An escape prefix left at the very end is literal text.
        assert_eq!(texts(&run(&cfg(4096), &[b"a\x1b[12"])), vec!["a\x1b[12"]);
    }

    #[test]
    fn utf8_cut_inside_a_sequence() {
        let text = "héllo wörld €uro 𝄞\n".as_bytes();
        for cut in 0..text.len() {
            let out = run(&cfg(4096), &[&text[..cut], &text[cut..]]);
            assert_eq!(texts(&out), vec!["héllo wörld €uro 𝄞"], "cut at {cut}");
        }
        // One byte at a time.
        let chunks: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(texts(&run(&cfg(4096), &chunks)), vec!["héllo wörld €uro 𝄞"]);
    }

    #[test]
    fn invalid_utf8_becomes_replacement_chars() {
        let out = run(&cfg(4096), &[b"a\xffb\xe2\x82c\n"]);
        assert_eq!(texts(&out), vec!["a\u{fffd}b\u{fffd}c"]);
        // A truncated sequence at the very end.
        let out = run(&cfg(4096), &[b"x\xe2\x82"]);
        assert_eq!(texts(&out), vec!["x\u{fffd}"]);
        // Split invalid: lead byte, then a non-continuation byte.
        let out = run(&cfg(4096), &[b"x\xe2", b"y\n"]);
        assert_eq!(texts(&out), vec!["x\u{fffd}y"]);
    }

    #[test]
    fn positions_count_characters_not_bytes() {
        let mut s = LineSplitter::new(&cfg(4096));
        let l = s.feed_at("é\nüü\n".as_bytes(), 0.0).unwrap();
        assert_eq!(l.newlines, vec![1, 4]);
    }

    #[test]
    fn long_lines_are_split_without_loss() {
        let line = "x".repeat(10_000);
        let out = run(&cfg(4096), &[format!("{line}\n").as_bytes()]);
        assert_eq!(
            texts(&out),
            vec!["x".repeat(4095), "x".repeat(4095), "x".repeat(1810)]
        );
        // A line of exactly max_line_length is not split; one more char is.
        assert_eq!(texts(&run(&cfg(5), &[b"abcde\n"])), vec!["abcde"]);
        assert_eq!(texts(&run(&cfg(5), &[b"abcdef\n"])), vec!["abcd", "ef"]);
        // Chunked, and with multi-byte characters.
        assert_eq!(
            texts(&run(&cfg(5), &[b"abc", b"de", b"f", b"ghijk\n"])),
            vec!["abcd", "efgh", "ijk"]
        );
        assert_eq!(
            texts(&run(&cfg(3), &["ééé".as_bytes(), "éé\n".as_bytes()])),
            vec!["éé", "ééé"]
        );
    }

    #[test]
    fn python_regex_translation() {
        let re = compile_python_regex(NEWLINE_RE).unwrap();
        assert!(re.is_match("\x1b[2J"));
        assert!(re.is_match("\r"));
        assert_eq!(compile_python_regex(r"\0").unwrap().as_str(), r"\x{0}");
        assert_eq!(compile_python_regex(r"\101").unwrap().as_str(), r"\x{41}");
        assert_eq!(
            compile_python_regex(r"[\d(?=.)]").unwrap().as_str(),
            r"[\d(?=.)]"
        );
        assert!(
            LineConfig::new("(?<=a)b", 10).is_err(),
            "other lookarounds are refused"
        );
    }

    #[test]
    fn custom_regex() {
        let c = LineConfig::new(r";", 4096).unwrap();
        assert_eq!(texts(&run(&c, &[b"a;b", b";c\n"])), vec!["a", "b", "c"]);
        let c = LineConfig::new(r"(\r\n|\r(?=.)|\n)", 4096).unwrap();
        assert_eq!(
            texts(&run(&c, &[b"a\r", b"b\r", b"\nc\r"])),
            vec!["a", "b", "c"]
        );
    }

    #[test]
    fn max_lines_counting() {
        let mut cr = false;
        assert_eq!(count_line_ends(b"a\r\nb\rc\n", &mut cr), 3);
        assert_eq!(count_line_ends(b"a\r", &mut cr), 1);
        assert_eq!(count_line_ends(b"\nb\n", &mut cr), 1);
    }

    fn lines_of(config: &LineConfig, data: &[u8], cuts: &[usize]) -> Vec<String> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        cuts.sort_unstable();
        let mut chunks = Vec::new();
        let mut prev = 0;
        for c in cuts {
            chunks.push(&data[prev..c]);
            prev = c;
        }
        chunks.push(&data[prev..]);
        run(config, &chunks).into_iter().map(|(l, _)| l).collect()
    }

    fn input() -> impl Strategy<Value = Vec<u8>> {
        let atom = prop_oneof![
            Just(b"\r".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"\x08".to_vec()),
            Just(b"\x1b[".to_vec()),
            Just(b"\x1b[u".to_vec()),
            Just(b"\x1b[2J".to_vec()),
            Just(b"\x1b[12;3H".to_vec()),
            Just(b";".to_vec()),
            Just("é€𝄞".as_bytes().to_vec()),
            Just(vec![0xff]),
            Just(vec![0xe2, 0x82]),
            "[a-z0-9]{1,12}".prop_map(String::into_bytes),
        ];
        prop::collection::vec(atom, 0..40).prop_map(|v| v.concat())
    }

    /// `cargo test --release -p kiln-worker --lib splitter_throughput -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement, not a check"]
    fn splitter_throughput() {
        let line = format!("{}\n", &"0123456789abcdefghij".repeat(5)[..99]).into_bytes();
        let mut chunk = Vec::new();
        while chunk.len() + 100 <= 65536 {
            chunk.extend_from_slice(&line);
        }
        chunk.extend_from_slice(&line[..65536 - chunk.len()]);
        for (name, c) in [
            ("default", cfg(4096)),
            (
                "regex",
                LineConfig::with_regex_engine(NEWLINE_RE, 4096).unwrap(),
            ),
        ] {
            let mut s = LineSplitter::new(&c);
            let start = std::time::Instant::now();
            let mut total = 0usize;
            let mut lines = 0usize;
            while start.elapsed().as_secs_f64() < 1.0 {
                for _ in 0..100 {
                    if let Some(l) = s.feed_at(&chunk, 0.0) {
                        lines += l.newlines.len();
                    }
                    total += chunk.len();
                }
            }
            let secs = start.elapsed().as_secs_f64();
            println!(
                "{name}: {:.0} MB/s, {:.1} M lines/s",
                total as f64 / secs / 1e6,
                lines as f64 / secs / 1e6
            );
        }
    }

    proptest! {
        #[test]
        fn chunking_does_not_change_the_lines(data in input(), cuts in prop::collection::vec(any::<usize>(), 0..8), max in 3usize..20) {
            let c = cfg(max);
            let whole = lines_of(&c, &data, &[]);
            prop_assert_eq!(&lines_of(&c, &data, &cuts), &whole);
            // The general regex engine agrees with the hand-written matcher.
            let r = LineConfig::with_regex_engine(NEWLINE_RE, max).unwrap();
            prop_assert_eq!(&lines_of(&r, &data, &cuts), &whole);
            // Nothing is lost: without rewriting, the lines rejoin into the input.
            let plain = LineConfig::new(r"\n", max).unwrap();
            let joined: String = lines_of(&plain, &data, &cuts).concat();
            let expect = String::from_utf8_lossy(&data).replace('\n', "");
            prop_assert_eq!(joined, expect);
            for l in &whole {
                prop_assert!(l.chars().count() <= max);
            }
        }
    }
}
