//! Reading a log's lines as a stream, for answers that may be as big as the log (the REST
//! API's `contents` without a `limit`): one stored chunk at a time, so memory is bounded by
//! the chunk size (≤ [`crate::LOG_CHUNK_MAX_BYTES`], or one longer line), never by the log.

use futures_util::Stream;
use kiln_model::LogId;

use crate::logs::decompress;
use crate::{LOG_CHUNK_MAX_LINES, Result, Store, get_i64};

impl Store {
    /// Lines `first..=last` (0-based) of a log as text, one item per stored chunk: the chunk's
    /// lines that fall in the range, each ending in `\n`, decoded as lossy UTF-8 (as
    /// [`Store::read_log_lines`] does). One short query per chunk and no connection held in
    /// between, so a slow reader holds nothing but its place. Ends early if the log has fewer
    /// lines.
    pub fn log_lines_stream(
        &self,
        id: LogId,
        first: i64,
        last: i64,
    ) -> impl Stream<Item = Result<String>> + Send + 'static {
        let pool = self.pool.clone();
        futures_util::stream::try_unfold(first.max(0), move |next| {
            let pool = pool.clone();
            async move {
                if next > last {
                    return Ok(None);
                }
                // The chunk holding line `next`: it starts at most LOG_CHUNK_MAX_LINES before,
                // which keeps the index range tight.
                let row = sqlx::query(
                    "SELECT first_line, last_line, content, compressed, raw_len FROM logchunks \
                     WHERE logid = $1 AND first_line > $2 AND first_line <= $3 AND last_line >= $3 \
                     ORDER BY first_line LIMIT 1",
                )
                .bind(id.0)
                .bind(next - LOG_CHUNK_MAX_LINES as i64)
                .bind(next)
                .fetch_optional(&pool)
                .await?;
                let Some(r) = row else { return Ok(None) };
                let start = get_i64(&r, "first_line")?;
                let end = get_i64(&r, "last_line")?.min(last);
                let raw = decompress(&r)?;
                let text = lines_between(&raw, (next - start) as usize, (end - start) as usize);
                Ok(Some((text, end + 1)))
            }
        })
    }
}

/// Lines `skip..=upto` (counted from 0) of a chunk's text, each ending in `\n`.
fn lines_between(raw: &[u8], skip: usize, upto: usize) -> String {
    let mut at = 0;
    for _ in 0..skip {
        at = memchr::memchr(b'\n', &raw[at..]).map_or(raw.len(), |p| at + p + 1);
    }
    let mut end = at;
    for _ in skip..=upto {
        end = memchr::memchr(b'\n', &raw[end..]).map_or(raw.len(), |p| end + p + 1);
    }
    let mut text = String::from_utf8_lossy(&raw[at..end]).into_owned();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::lines_between;

    #[test]
    fn lines_between_cuts_whole_lines() {
        let raw = b"a\nbb\nccc\nd";
        assert_eq!(lines_between(raw, 0, 3), "a\nbb\nccc\nd\n");
        assert_eq!(lines_between(raw, 1, 2), "bb\nccc\n");
        assert_eq!(lines_between(raw, 3, 3), "d\n");
        assert_eq!(lines_between(b"x\xff\n", 0, 0), "x\u{fffd}\n");
    }
}
