//! Redaction of a log as it streams in, for secrets that a line wrap cut in two.
//!
//! A worker wraps a line longer than its limit (Kiln's and Buildbot's workers at 4,096
//! characters), and batches and chunks end anywhere, so a secret can reach the master as
//! `...sec\n` in one batch and `ret...` in the next. [`LogRedactor`] matches each secret with
//! a line break allowed between any two of its characters, and keeps back, until the next
//! batch or the log's end, only the lines from where a secret could still be starting. What
//! it gives out is whole lines, with every match replaced and the line breaks inside a match
//! kept (so the log keeps its lines).

use crate::secrets::Redactor;

/// How a log's lines break, i.e. what may stand between two characters of a wrapped secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineBreaks {
    /// `\n` or `\r\n`.
    Plain,
    /// A stdio log: `\n` or `\r\n`, then the next line's channel character (`o`, `e`, `h`).
    Stdio,
}

/// Where a secret matches at a position of a text.
#[derive(Debug, PartialEq, Eq)]
enum Match {
    No,
    /// The whole secret, ending at this byte offset; the line breaks inside it (a wrap's, and
    /// the secret's own line ends).
    Full(usize, Vec<std::ops::Range<usize>>),
    /// The text ends while it still matches: the secret may go on in the next batch.
    Partial,
}

/// The end of the line break at `at`, if one starts there (`None` if not, `Err` if the text
/// ends inside one).
fn line_break(text: &[u8], at: usize, breaks: LineBreaks) -> Result<Option<usize>, ()> {
    let mut k = at;
    if text.get(k) == Some(&b'\r') {
        k += 1;
    }
    match text.get(k) {
        None if k > at => return Err(()),
        Some(b'\n') => k += 1,
        _ => return Ok(None),
    }
    if breaks == LineBreaks::Stdio {
        match text.get(k) {
            None => return Err(()),
            Some(b'o' | b'e' | b'h') => k += 1,
            Some(_) => return Ok(None),
        }
    }
    Ok(Some(k))
}

/// Matches `secret` at byte `at` of `text`, allowing one line break between any two of its
/// characters.
fn match_at(text: &[u8], at: usize, secret: &str, breaks: LineBreaks) -> Match {
    let s = secret.as_bytes();
    let (mut j, mut k) = (0, at);
    let mut inside = Vec::new();
    let (mut just_broke, mut dropped) = (false, false);
    while j < s.len() {
        let Some(&b) = text.get(k) else {
            return Match::Partial;
        };
        if b == s[j] {
            (j, k, just_broke) = (j + 1, k + 1, false);
            if b == b'\n' {
                // A secret of several lines (a key file): its line ends are kept, and in a
                // stdio log its next line starts with its channel.
                let line_end = k - 1;
                if breaks == LineBreaks::Stdio && j < s.len() {
                    match text.get(k) {
                        None => return Match::Partial,
                        Some(b'o' | b'e' | b'h') => k += 1,
                        Some(_) => return Match::No,
                    }
                }
                inside.push(line_end..k);
            }
            continue;
        }
        if just_broke && !dropped && wrapped_line_before(text, k) {
            // Buildbot's worker 4.3 loses the character at its wrap when the line's end came
            // in the same read (its `LineBoundaryFinder` slices one short): the secret goes
            // on one character later, or has ended.
            let next = j + secret[j..].chars().next().map_or(1, char::len_utf8);
            if next == s.len() {
                return Match::Full(k, inside);
            }
            if b == s[next] {
                (j, dropped) = (next, true);
                continue;
            }
        }
        if j == 0 || just_broke || !secret.is_char_boundary(j) {
            return Match::No;
        }
        match line_break(text, k, breaks) {
            Err(()) => return Match::Partial,
            Ok(None) => return Match::No,
            Ok(Some(end)) => {
                inside.push(k..end);
                (k, just_broke) = (end, true);
            }
        }
    }
    Match::Full(k, inside)
}

/// A worker's wrap: the stock worker cuts a long line after 4,095 characters.
const WRAP_CHARS: usize = 4095;

/// Whether the line that ends at the break just before `k` is as long as a worker's wrap
/// makes it (only there does Buildbot's worker lose a character).
fn wrapped_line_before(text: &[u8], k: usize) -> bool {
    let Some(nl) = text[..k].iter().rposition(|&b| b == b'\n') else {
        return false;
    };
    let start = text[..nl]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    nl - start >= WRAP_CHARS
}

/// Redacts `text` (whole lines). Unless `at_end`, stops at the first place where a secret
/// could still be starting when the text ends, and returns the redacted text before the
/// start of that line and the offset of that line (the text to keep back); otherwise the
/// whole text redacted and its length.
pub(crate) fn redact_lines(
    pairs: &[(String, String)],
    breaks: LineBreaks,
    text: &str,
    at_end: bool,
) -> (String, usize) {
    let bytes = text.as_bytes();
    let mut starts = [false; 256];
    for (v, _) in pairs {
        starts[usize::from(v.as_bytes()[0])] = true;
    }
    let mut out = String::with_capacity(text.len());
    // Text before `copied` is in `out`; (raw offset, out length) of the last line start
    // outside a match, where keeping back may begin.
    let mut copied = 0;
    let mut line_start = (0, 0);
    let mut i = 0;
    'scan: while i < bytes.len() {
        let b = bytes[i];
        if b == b'\n' {
            line_start = (i + 1, out.len() + (i + 1 - copied));
        }
        if starts[usize::from(b)] {
            for (secret, replacement) in pairs {
                match match_at(bytes, i, secret, breaks) {
                    Match::No => {}
                    Match::Full(end, inside) => {
                        out.push_str(&text[copied..i]);
                        out.push_str(replacement);
                        for r in inside {
                            out.push_str(&text[r]);
                        }
                        (copied, i) = (end, end);
                        continue 'scan;
                    }
                    Match::Partial if at_end => {}
                    // A longer secret still matching wins over a shorter one that matched.
                    Match::Partial => {
                        out.push_str(&text[copied..i]);
                        out.truncate(line_start.1);
                        return (out, line_start.0);
                    }
                }
            }
        }
        i += 1;
    }
    out.push_str(&text[copied..]);
    (out, text.len())
}

/// One log's redaction as it streams in: see the module's doc.
#[derive(Debug, Clone)]
pub struct LogRedactor {
    redactor: Redactor,
    breaks: LineBreaks,
    /// Lines kept back: a secret may start in them and go on in the next batch.
    held: String,
}

impl LogRedactor {
    pub fn new(redactor: Redactor, breaks: LineBreaks) -> LogRedactor {
        LogRedactor {
            redactor,
            breaks,
            held: String::new(),
        }
    }

    /// The next batch of whole lines in; the lines that can be stored now out, redacted.
    pub fn push(&mut self, text: String) -> String {
        if self.redactor.is_empty() {
            return text;
        }
        let text = if self.held.is_empty() {
            text
        } else {
            std::mem::take(&mut self.held) + &text
        };
        let (out, hold_from) = redact_lines(self.redactor.pairs(), self.breaks, &text, false);
        self.held = text[hold_from..].to_string();
        out
    }

    /// At the log's end: the lines kept back, redacted (text that only began like a secret
    /// comes out as it was).
    pub fn finish(&mut self) -> String {
        let held = std::mem::take(&mut self.held);
        redact_lines(self.redactor.pairs(), self.breaks, &held, true).0
    }

    /// Bytes kept back.
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redactor() -> Redactor {
        Redactor::new([("tok", "s3cr3tValue42"), ("short", "s3cr")])
    }

    /// Whole text through the stream in the given batches, then the end.
    fn stream(breaks: LineBreaks, batches: &[&str]) -> String {
        let mut r = LogRedactor::new(redactor(), breaks);
        let mut out = String::new();
        for b in batches {
            out += &r.push(b.to_string());
        }
        out + &r.finish()
    }

    #[test]
    fn a_secret_cut_at_every_position_by_a_line_break_is_redacted() {
        let secret = "s3cr3tValue42";
        for cut in 1..secret.len() {
            let (a, b) = secret.split_at(cut);
            for nl in ["\n", "\r\n"] {
                // Plain log, one batch and split between batches at the break.
                let text = format!("before {a}{nl}{b} after\n");
                let want = format!("before <secret:tok>{nl} after\n");
                assert_eq!(stream(LineBreaks::Plain, &[&text]), want, "cut {cut}");
                let (x, y) = text.split_at(text.find(nl).unwrap() + nl.len());
                assert_eq!(stream(LineBreaks::Plain, &[x, y]), want, "cut {cut}");
                // Stdio log: the next line starts with its channel.
                let text = format!("obefore {a}{nl}o{b} after\n");
                let want = format!("obefore <secret:tok>{nl}o after\n");
                let (x, y) = text.split_at(text.find(nl).unwrap() + nl.len());
                assert_eq!(stream(LineBreaks::Stdio, &[x, y]), want, "cut {cut}");
                assert_eq!(stream(LineBreaks::Stdio, &[&text]), want, "cut {cut}");
            }
        }
    }

    #[test]
    fn whole_secrets_and_the_longer_of_two_are_redacted() {
        assert_eq!(
            stream(LineBreaks::Stdio, &["os3cr3tValue42 and s3cr\n", "os3cr\n"]),
            "o<secret:tok> and <secret:short>\no<secret:short>\n"
        );
    }

    #[test]
    fn text_that_only_shares_a_prefix_is_held_until_the_next_batch_or_the_end() {
        let mut r = LogRedactor::new(redactor(), LineBreaks::Stdio);
        assert_eq!(r.push("oline one\nois it s3c\n".into()), "oline one\n");
        assert!(r.held() > 0);
        // The next batch shows it was not a secret: both lines go out as they were.
        assert_eq!(
            r.push("oalley\nonext\n".into()),
            "ois it s3c\noalley\nonext\n"
        );
        assert_eq!(r.held(), 0);
        // At the end, a prefix is flushed unredacted.
        assert_eq!(r.push("ostarts s3\n".into()), "");
        assert_eq!(r.finish(), "ostarts s3\n");
        assert_eq!(r.held(), 0);
    }

    #[test]
    fn lines_without_a_secret_start_pass_at_once() {
        let mut r = LogRedactor::new(redactor(), LineBreaks::Plain);
        assert_eq!(r.push("nothing here\n".into()), "nothing here\n");
        assert_eq!(r.held(), 0);
    }

    #[test]
    fn a_break_that_is_not_a_wrap_is_not_matched() {
        // Two breaks in a row, or a stdio break without its channel, is not a wrapped line.
        assert_eq!(
            stream(LineBreaks::Plain, &["s3cr3t\n\nValue42\n"]),
            "s3cr3t\n\nValue42\n".replace("s3cr", "<secret:short>")
        );
        assert_eq!(
            stream(LineBreaks::Stdio, &["os3cr3t\nValue42\n"]),
            "o<secret:short>3t\nValue42\n"
        );
    }

    #[test]
    fn a_secret_of_several_lines_is_redacted_in_a_stdio_log() {
        let r = Redactor::new([("key", "-----BEGIN-----\nAbCd\n-----END-----")]);
        let mut s = LogRedactor::new(r, LineBreaks::Stdio);
        let out = s.push("o-----BEGIN-----\noAb\n".into())
            + &s.push("oCd\no-----END-----\n".into())
            + &s.finish();
        assert_eq!(out, "o<secret:key>\no\no\no\n");
    }

    #[test]
    fn a_character_lost_at_the_stock_workers_wrap_still_redacts_the_rest() {
        let secret = "s3cr3tValue42";
        for cut in 1..secret.len() {
            let (a, b) = secret.split_at(cut);
            let b = &b[1..]; // the worker dropped the character after its wrap
            let pad = "a".repeat(WRAP_CHARS - cut); // the wrapped piece is 4,095 characters
            let text = format!("o{pad}{a}\no{b} after\n");
            let out = stream(LineBreaks::Stdio, &[&text]);
            assert_eq!(out, format!("o{pad}<secret:tok>\no after\n"), "cut {cut}");
        }
        // A short line that ends like a secret's start is not a wrap: nothing is lost there.
        assert_eq!(
            stream(LineBreaks::Stdio, &["os3cr3tValu\no2 after\n"]),
            "o<secret:short>3tValu\no2 after\n"
        );
    }

    #[test]
    fn multibyte_secrets_are_cut_only_between_characters() {
        let r = Redactor::new([("k", "clé-é")]);
        let mut s = LogRedactor::new(r, LineBreaks::Plain);
        let out = s.push("a clé\n-é b\n".into()) + &s.finish();
        assert_eq!(out, "a <secret:k>\n b\n");
    }
}
