//! Client input in the master's log, bounded: a hostile client chooses the worker name it
//! sends, and as many failed logins as it likes. [`Clipped`] shows at most the first
//! [`SHOWN_CHARS`] characters of a string, escaped onto one line; [`LineBudget`] lets a few
//! lines a second through and counts the rest.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many characters of a client's string a log line shows.
pub const SHOWN_CHARS: usize = 64;

/// Shows a client's string quoted and escaped (one line whatever it holds), cut after
/// [`SHOWN_CHARS`] characters with its full length: `"abc…" (200000 bytes)`.
pub struct Clipped<'a>(pub &'a str);

impl fmt::Display for Clipped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut chars = self.0.chars();
        f.write_str("\"")?;
        for c in chars.by_ref().take(SHOWN_CHARS) {
            write!(f, "{}", c.escape_debug())?;
        }
        if chars.next().is_some() {
            write!(f, "…\" ({} bytes)", self.0.len())
        } else {
            f.write_str("\"")
        }
    }
}

/// At most `per_second` lines a second; the lines held back are counted, and the next
/// line let through says how many there were.
pub struct LineBudget {
    per_second: u32,
    state: Mutex<Budget>,
}

struct Budget {
    second: Option<Instant>,
    logged: u32,
    held_back: u64,
}

/// What [`LineBudget::take`] allows.
#[derive(Debug, PartialEq, Eq)]
pub enum Allow {
    /// Log this line; `held_back` lines were not logged before it.
    Log { held_back: u64 },
    /// Do not log it (it is counted).
    Quiet,
}

impl LineBudget {
    pub fn new(per_second: u32) -> LineBudget {
        LineBudget {
            per_second,
            state: Mutex::new(Budget {
                second: None,
                logged: 0,
                held_back: 0,
            }),
        }
    }

    /// Asks for one line at `now`.
    pub fn take(&self, now: Instant) -> Allow {
        let mut b = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let new_second = b
            .second
            .is_none_or(|s| now.saturating_duration_since(s) >= Duration::from_secs(1));
        if new_second {
            b.second = Some(now);
            b.logged = 0;
        }
        if b.logged >= self.per_second {
            b.held_back += 1;
            return Allow::Quiet;
        }
        b.logged += 1;
        Allow::Log {
            held_back: std::mem::take(&mut b.held_back),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipped_is_short_escaped_and_says_the_length() {
        assert_eq!(Clipped("w1").to_string(), "\"w1\"");
        assert_eq!(Clipped("a\nb\"").to_string(), "\"a\\nb\\\"\"");
        let long = "é".repeat(100_000);
        let shown = Clipped(&long).to_string();
        assert_eq!(shown, format!("\"{}…\" (200000 bytes)", "é".repeat(64)));
        let exact = "x".repeat(SHOWN_CHARS);
        assert_eq!(Clipped(&exact).to_string(), format!("\"{exact}\""));
    }

    #[test]
    fn budget_holds_back_then_reports_the_count() {
        let b = LineBudget::new(2);
        let t = Instant::now();
        assert_eq!(b.take(t), Allow::Log { held_back: 0 });
        assert_eq!(b.take(t), Allow::Log { held_back: 0 });
        for _ in 0..1000 {
            assert_eq!(b.take(t + Duration::from_millis(999)), Allow::Quiet);
        }
        let next = t + Duration::from_secs(1);
        assert_eq!(b.take(next), Allow::Log { held_back: 1000 });
        assert_eq!(b.take(next), Allow::Log { held_back: 0 });
        assert_eq!(b.take(next), Allow::Quiet);
    }
}
