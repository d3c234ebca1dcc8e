//! Turning a child's bytes into whole lines (§7.2): incremental UTF-8 decoding,
//! `newline_re` rewriting, over-long line splitting, and per-line times.

use std::time::{SystemTime, UNIX_EPOCH};

use kiln_proto::update::Lines;

/// The current Unix time as Buildbot stamps lines.
pub fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// `text` as whole lines stamped now, with a final `\n` added if missing.
pub fn whole_lines(text: &str) -> Lines {
    let mut t = text.to_owned();
    if !t.ends_with('\n') {
        t.push('\n');
    }
    Lines::from_text(t, now())
}
