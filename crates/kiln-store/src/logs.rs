//! Logs: zstd-compressed chunks with a line index (Buildbot's `logchunks`), a per-log byte cap,
//! and the retention janitor.
//!
//! * An append is split on line ends into chunks of at most [`LOG_CHUNK_MAX_BYTES`] and
//!   [`LOG_CHUNK_MAX_LINES`] (a single longer line gets a chunk of its own), so UTF-8 is never
//!   split and memory is bounded by the append, not the log.
//! * Lines are numbered from 0; a chunk holds `first_line..=last_line` and never more than
//!   [`LOG_CHUNK_MAX_LINES`] lines, which lets a range read use a tight index range.
//! * Each chunk stores its raw length, which bounds decompression.
//! * A capped log ([`LogCap`]) keeps its head up to the cap less the tail, then a marker line,
//!   then its last lines: those are held in a bounded [`TailRing`] by the log's writer and
//!   written when the log is finished, however the step ended.

use futures_util::Stream;
use kiln_model::{Epoch, Log, LogId, LogType, StepId};
use sqlx::any::AnyRow;
use sqlx::{Any, AnyPool, Transaction};

use crate::{Backend, Result, Store, StoreError, get_bool, get_i64, get_str};

pub const LOG_CHUNK_MAX_BYTES: usize = 64 * 1024;
pub const LOG_CHUNK_MAX_LINES: usize = 1000;
/// The most a chunk may claim to decompress to (a single huge line); refuses bombs.
const MAX_CHUNK_RAW: i64 = 256 << 20;
const COMPRESS_RAW: i64 = 0;
/// Buildbot's id for zstd.
const COMPRESS_ZSTD: i64 = 4;
const BATCH: i64 = 1000;
/// The most lines one [`Store::read_log_lines`] call returns.
pub const MAX_READ_LINES: i64 = 100_000;

/// What an append did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Lines stored by this append (including a truncation marker).
    pub lines_stored: i64,
    /// Bytes of this append that the cap dropped.
    pub bytes_dropped: u64,
    /// The log's line count afterwards.
    pub num_lines: i64,
}

/// What a janitor pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JanitorReport {
    pub logs: u64,
    pub chunks: u64,
    pub steps: u64,
    pub builds: u64,
}

fn type_char(t: LogType) -> &'static str {
    match t {
        LogType::Stdio => "s",
        LogType::Text => "t",
        LogType::Html => "h",
        LogType::Deleted => "d",
    }
}

fn parse_type(s: &str) -> Result<LogType> {
    Ok(match s {
        "s" => LogType::Stdio,
        "t" => LogType::Text,
        "h" => LogType::Html,
        "d" => LogType::Deleted,
        o => return Err(StoreError::Corrupt(format!("log type {o:?}"))),
    })
}

/// Buildbot's slug: lower-case, anything but `[a-z0-9_-]` becomes `_`.
pub fn slugify(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

fn row_log(r: &AnyRow) -> Result<Log> {
    Ok(Log {
        logid: LogId(get_i64(r, "id")?),
        stepid: StepId(get_i64(r, "stepid")?),
        name: get_str(r, "name")?,
        slug: get_str(r, "slug")?,
        log_type: parse_type(&get_str(r, "type")?)?,
        complete: get_bool(r, "complete")?,
        num_lines: get_i64(r, "num_lines")?,
    })
}

thread_local! {
    /// One compression context per thread and level: making one per chunk allocated and
    /// cleared its tables every 64 KiB of log.
    static COMPRESSORS: std::cell::RefCell<Vec<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

thread_local! {
    /// Likewise for reading: a decompression context per chunk showed in profiles.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

fn compress(raw: &[u8], level: i32) -> (Vec<u8>, i64) {
    let out = COMPRESSORS.with(|cs| {
        let mut cs = cs.borrow_mut();
        let i = match cs.iter().position(|(l, _)| *l == level) {
            Some(i) => i,
            None => {
                cs.push((level, zstd::bulk::Compressor::new(level)?));
                cs.len() - 1
            }
        };
        cs[i].1.compress(raw)
    });
    match out {
        Ok(c) if c.len() < raw.len() => (c, COMPRESS_ZSTD),
        _ => (raw.to_vec(), COMPRESS_RAW),
    }
}

pub(crate) fn decompress(r: &AnyRow) -> Result<Vec<u8>> {
    let content: Vec<u8> = sqlx::Row::try_get(r, "content")?;
    let method = get_i64(r, "compressed")?;
    let raw_len = get_i64(r, "raw_len")?;
    match method {
        COMPRESS_RAW => Ok(content),
        COMPRESS_ZSTD => {
            if !(0..=MAX_CHUNK_RAW).contains(&raw_len) {
                return Err(StoreError::Corrupt(format!(
                    "log chunk claims {raw_len} bytes"
                )));
            }
            let out = DECOMPRESSOR
                .with(|d| match &mut *d.borrow_mut() {
                    Some(d) => d.decompress(&content, raw_len as usize),
                    slot => {
                        let mut d = zstd::bulk::Decompressor::new()?;
                        let out = d.decompress(&content, raw_len as usize);
                        *slot = Some(d);
                        out
                    }
                })
                .map_err(|e| StoreError::Corrupt(format!("log chunk: {e}")))?;
            if out.len() as i64 != raw_len {
                return Err(StoreError::Corrupt(format!(
                    "log chunk is {} bytes, expected {raw_len}",
                    out.len()
                )));
            }
            Ok(out)
        }
        m => Err(StoreError::Corrupt(format!("log chunk compression {m}"))),
    }
}

/// A log's size cap, fixed when the log is opened (so a reconfig applies to the next logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogCap {
    /// The most bytes stored (head, tail and nothing else but the marker line).
    pub max_bytes: u64,
    /// How much of the log's end is kept (whole lines); 0 keeps the head only.
    pub tail_bytes: u64,
}

impl LogCap {
    /// Head only: what the store's own cap ([`crate::StoreOptions::log_max_bytes`]) does.
    pub fn head_only(max_bytes: u64) -> LogCap {
        LogCap {
            max_bytes,
            tail_bytes: 0,
        }
    }

    /// Bytes of head kept before the rest goes to the tail.
    fn head_bytes(self) -> u64 {
        self.max_bytes - self.tail_bytes.min(self.max_bytes)
    }
}

/// The marker line between a capped log's head and its tail. It says what was left out, so
/// a reader never mistakes a capped log for a whole one.
fn marker(cap: LogCap, after: LogState, tail: &TailRing, finished: bool) -> String {
    let max = cap.max_bytes;
    // Counted from the log's totals, so a last line stored with an added `\n` does not
    // count that byte.
    let out = after.total - (after.stored + tail.bytes()).min(after.total);
    if cap.tail_bytes == 0 {
        format!("[kiln: log truncated at {max} bytes; {out} bytes dropped]\n")
    } else if finished {
        let lines = tail.left_out_lines;
        let kept = tail.bytes();
        format!(
            "[kiln: log truncated at {max} bytes; {out} bytes ({lines} lines) left out here, the last {kept} bytes follow]\n"
        )
    } else {
        let keep = cap.tail_bytes;
        format!(
            "[kiln: log truncated at {max} bytes; {out} bytes left out so far, the last {keep} bytes follow when the log ends]\n"
        )
    }
}

/// The end of a capped log, past its head: the longest run of last whole lines that fits in
/// `capacity` bytes, and counts of what fell out of it. Memory stays within the capacity (plus
/// one line-length entry per line held).
#[derive(Debug, Clone, Default)]
pub struct TailRing {
    capacity: usize,
    bytes: std::collections::VecDeque<u8>,
    line_lens: std::collections::VecDeque<usize>,
    /// Bytes and lines that went past the head and are not held (left out of the log).
    pub left_out_bytes: u64,
    pub left_out_lines: u64,
}

impl TailRing {
    pub fn new(capacity: u64) -> TailRing {
        TailRing {
            capacity: usize::try_from(capacity).unwrap_or(usize::MAX),
            ..TailRing::default()
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Lines held.
    pub fn lines(&self) -> usize {
        self.line_lens.len()
    }

    /// Adds whole lines (a last line without `\n` gets one, as the store does) and drops
    /// the oldest lines that no longer fit.
    pub fn push(&mut self, text: &[u8]) {
        let mut rest = text;
        while !rest.is_empty() {
            let end = memchr_nl(rest).map_or(rest.len(), |p| p + 1);
            let (line, after) = rest.split_at(end);
            let len = line.len() + usize::from(!line.ends_with(b"\n"));
            if len > self.capacity {
                // Longer than the whole tail: it and everything before it is left out.
                self.evict(self.line_lens.len());
                self.left_out_bytes += len as u64;
                self.left_out_lines += 1;
            } else {
                while self.bytes.len() + len > self.capacity {
                    self.evict(1);
                }
                self.bytes.extend(line);
                if len > line.len() {
                    self.bytes.push_back(b'\n');
                }
                self.line_lens.push_back(len);
            }
            rest = after;
        }
    }

    fn evict(&mut self, lines: usize) {
        for _ in 0..lines {
            let Some(len) = self.line_lens.pop_front() else {
                return;
            };
            self.bytes.drain(..len);
            self.left_out_bytes += len as u64;
            self.left_out_lines += 1;
        }
    }

    /// The lines held, as one slice.
    fn text(&mut self) -> &[u8] {
        self.bytes.make_contiguous()
    }
}

async fn insert_chunk(
    tx: &mut Transaction<'static, Any>,
    logid: i64,
    first: i64,
    last: i64,
    raw: &[u8],
    level: i32,
) -> Result<()> {
    let (content, method) = compress(raw, level);
    sqlx::query("INSERT INTO logchunks (logid, first_line, last_line, content, compressed, raw_len) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(logid)
        .bind(first)
        .bind(last)
        .bind(content)
        .bind(method)
        .bind(raw.len() as i64)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A log's running totals: its row's counters, and whether its head is full.
#[derive(Debug, Clone, Copy, Default)]
struct LogState {
    num_lines: i64,
    total: u64,
    stored: u64,
    /// The marker line is stored (the last line, until the tail is written).
    truncated: bool,
    /// The head reached its cap: what comes now goes to the tail. Only a log's writer knows
    /// it before the marker is stored; for others it is `truncated`.
    head_full: bool,
}

/// One chunk ready to store: lines `first..=last`, compressed.
struct PlannedChunk {
    first: i64,
    last: i64,
    content: Vec<u8>,
    method: i64,
    raw_len: i64,
}

impl PlannedChunk {
    fn new(first: i64, last: i64, raw: &[u8], level: i32) -> PlannedChunk {
        let (content, method) = compress(raw, level);
        PlannedChunk {
            first,
            last,
            content,
            method,
            raw_len: raw.len() as i64,
        }
    }
}

/// What one append writes: a refreshed marker chunk, new chunks, and the counters.
struct AppendPlan {
    marker_refresh: Option<PlannedChunk>,
    chunks: Vec<PlannedChunk>,
    after: LogState,
    outcome: AppendOutcome,
}

/// Splits text into chunks numbered from `first_line` (at most [`LOG_CHUNK_MAX_LINES`] lines
/// and [`LOG_CHUNK_MAX_BYTES`] bytes each, a longer line alone); a last line without `\n`
/// gets one. Returns the chunks and the line count.
fn plan_chunks(first_line: i64, text: &[u8], out: &mut Vec<PlannedChunk>) -> i64 {
    let mut num_lines = first_line;
    let mut rest = text;
    while !rest.is_empty() {
        // Take up to MAX_LINES lines and MAX_BYTES bytes (at least one line).
        let mut end = 0;
        let mut lines = 0;
        while end < rest.len() && lines < LOG_CHUNK_MAX_LINES {
            let line_end = memchr_nl(&rest[end..]).map_or(rest.len(), |p| end + p + 1);
            if lines > 0 && line_end > LOG_CHUNK_MAX_BYTES {
                break;
            }
            end = line_end;
            lines += 1;
        }
        let last = num_lines + lines as i64 - 1;
        if rest[end - 1] == b'\n' {
            out.push(PlannedChunk::new(num_lines, last, &rest[..end], 3));
        } else {
            let mut owned = rest[..end].to_vec();
            owned.push(b'\n');
            out.push(PlannedChunk::new(num_lines, last, &owned, 3));
        }
        num_lines += lines as i64;
        rest = &rest[end..];
    }
    num_lines - first_line
}

/// Splits, caps and compresses an append; touches no database, so a log's only writer can
/// do it before taking the write lock. Past the head (`cap` less its tail), text goes to
/// `tail` (the writer's ring; an empty ring of capacity 0 for a log without one); once the
/// ring leaves something out, the marker line is stored after the head and kept current.
fn plan_append(
    state: LogState,
    bytes: &[u8],
    cap: Option<LogCap>,
    tail: &mut TailRing,
) -> AppendPlan {
    let mut after = state;
    after.total += bytes.len() as u64;
    let keep = match cap {
        _ if state.head_full => 0,
        Some(cap) if state.stored + bytes.len() as u64 > cap.head_bytes() => {
            let room = (cap.head_bytes() - state.stored.min(cap.head_bytes())) as usize;
            after.head_full = true;
            // The longest prefix of whole lines that fits.
            bytes[..room.min(bytes.len())]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |p| p + 1)
        }
        _ => bytes.len(),
    };
    let mut chunks = Vec::new();
    let mut num_lines = state.num_lines + plan_chunks(state.num_lines, &bytes[..keep], &mut chunks);
    after.stored += keep as u64;
    let mut marker_refresh = None;
    if after.head_full {
        let left_out = tail.left_out_bytes;
        tail.push(&bytes[keep..]);
        // `head_full` implies a cap (the state of a log read back says `truncated`).
        let cap = cap.unwrap_or(LogCap::head_only(state.stored));
        if tail.left_out_bytes > 0 && !state.truncated {
            let m = marker(cap, after, tail, false);
            chunks.push(PlannedChunk::new(num_lines, num_lines, m.as_bytes(), 3));
            num_lines += 1;
            after.truncated = true;
        } else if state.truncated && tail.left_out_bytes != left_out {
            let m = marker(cap, after, tail, false);
            let line = state.num_lines - 1;
            marker_refresh = Some(PlannedChunk::new(line, line, m.as_bytes(), 3));
        }
    }
    after.num_lines = num_lines;
    AppendPlan {
        marker_refresh,
        chunks,
        after,
        outcome: AppendOutcome {
            lines_stored: num_lines - state.num_lines,
            bytes_dropped: (bytes.len() - keep) as u64,
            num_lines,
        },
    }
}

/// What finishing a capped log writes: the marker's final text (what was left out, now
/// known) and the tail's lines after it. Nothing when the log never outgrew its head.
fn plan_tail(state: LogState, cap: Option<LogCap>, tail: &mut TailRing) -> Option<AppendPlan> {
    let cap = cap?;
    if tail.lines() == 0 {
        return None;
    }
    let mut after = state;
    let marker_refresh = state.truncated.then(|| {
        let line = state.num_lines - 1;
        PlannedChunk::new(line, line, marker(cap, state, tail, true).as_bytes(), 3)
    });
    let text = tail.text();
    let mut chunks = Vec::new();
    after.num_lines += plan_chunks(state.num_lines, text, &mut chunks);
    after.stored += text.len() as u64;
    Some(AppendPlan {
        marker_refresh,
        chunks,
        after,
        outcome: AppendOutcome {
            lines_stored: after.num_lines - state.num_lines,
            bytes_dropped: 0,
            num_lines: after.num_lines,
        },
    })
}

/// Chunks per INSERT statement (6 parameters each).
const CHUNKS_PER_INSERT: usize = 64;

/// SQLite: the whole append (marker, chunks and counters) as one batch, one trip to the writer.
async fn write_plan_sqlite(store: &Store, id: LogId, plan: &AppendPlan) -> Result<()> {
    let mut sql = String::from("BEGIN IMMEDIATE; ");
    let mut n = 0;
    let mut p = || {
        n += 1;
        format!("${n}")
    };
    if plan.marker_refresh.is_some() {
        sql += &format!(
            "UPDATE logchunks SET content = {}, compressed = {}, raw_len = {} WHERE logid = {} AND first_line = {}; ",
            p(),
            p(),
            p(),
            p(),
            p()
        );
    }
    for batch in plan.chunks.chunks(CHUNKS_PER_INSERT) {
        let values: Vec<String> = batch
            .iter()
            .map(|_| format!("({}, {}, {}, {}, {}, {})", p(), p(), p(), p(), p(), p()))
            .collect();
        sql += &format!(
            "INSERT INTO logchunks (logid, first_line, last_line, content, compressed, raw_len) VALUES {}; ",
            values.join(", ")
        );
    }
    sql += &format!(
        "UPDATE logs SET num_lines = {}, total_bytes = {}, stored_bytes = {}, truncated = {} WHERE id = {}; ",
        p(),
        p(),
        p(),
        p(),
        p()
    );
    sql += "COMMIT";
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    if let Some(m) = &plan.marker_refresh {
        q = q
            .bind(m.content.as_slice())
            .bind(m.method)
            .bind(m.raw_len)
            .bind(id.0)
            .bind(m.first);
    }
    for c in &plan.chunks {
        q = q
            .bind(id.0)
            .bind(c.first)
            .bind(c.last)
            .bind(c.content.as_slice())
            .bind(c.method)
            .bind(c.raw_len);
    }
    q = q
        .bind(plan.after.num_lines)
        .bind(plan.after.total as i64)
        .bind(plan.after.stored as i64)
        .bind(plan.after.truncated as i64)
        .bind(id.0);
    store.sqlite_batch(q).await?;
    Ok(())
}

async fn write_plan(
    tx: &mut Transaction<'static, Any>,
    id: LogId,
    plan: &AppendPlan,
) -> Result<()> {
    if let Some(m) = &plan.marker_refresh {
        sqlx::query("UPDATE logchunks SET content = $1, compressed = $2, raw_len = $3 WHERE logid = $4 AND first_line = $5")
            .bind(m.content.as_slice())
            .bind(m.method)
            .bind(m.raw_len)
            .bind(id.0)
            .bind(m.first)
            .execute(&mut **tx)
            .await?;
    }
    for batch in plan.chunks.chunks(CHUNKS_PER_INSERT) {
        let values: Vec<String> = (0..batch.len())
            .map(|i| {
                let b = 6 * i;
                format!(
                    "(${}, ${}, ${}, ${}, ${}, ${})",
                    b + 1,
                    b + 2,
                    b + 3,
                    b + 4,
                    b + 5,
                    b + 6
                )
            })
            .collect();
        let sql = format!(
            "INSERT INTO logchunks (logid, first_line, last_line, content, compressed, raw_len) VALUES {}",
            values.join(", ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for c in batch {
            q = q
                .bind(id.0)
                .bind(c.first)
                .bind(c.last)
                .bind(c.content.as_slice())
                .bind(c.method)
                .bind(c.raw_len);
        }
        q.execute(&mut **tx).await?;
    }
    sqlx::query("UPDATE logs SET num_lines = $1, total_bytes = $2, stored_bytes = $3, truncated = $4 WHERE id = $5")
        .bind(plan.after.num_lines)
        .bind(plan.after.total as i64)
        .bind(plan.after.stored as i64)
        .bind(plan.after.truncated as i64)
        .bind(id.0)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The writer of one open log, for the log's only writer (a running step): it keeps the
/// log's counters in memory, so an append reads nothing back and compresses before it takes
/// the write lock, and finishing skips the merge pass when no two chunks could be merged.
/// Other writers to the same log at the same time would be lost track of: use
/// [`Store::append_log`] for those.
pub struct LogWriter {
    store: Store,
    id: LogId,
    state: LogState,
    /// The cap the log was opened with.
    cap: Option<LogCap>,
    /// The log's end past its head, written by [`LogWriter::finish`] (boxed: a writer is
    /// moved around while idle).
    tail: Box<TailRing>,
    /// (first line, raw bytes) of the newest chunk.
    last_chunk: Option<(i64, i64)>,
    /// Some two neighbouring chunks fit the chunk limits together.
    mergeable: bool,
}

impl LogWriter {
    pub fn id(&self) -> LogId {
        self.id
    }

    /// The log's line count after the appends so far.
    pub fn num_lines(&self) -> i64 {
        self.state.num_lines
    }

    /// Like [`Store::append_log`].
    pub async fn append(&mut self, text: &str) -> Result<AppendOutcome> {
        if text.is_empty() {
            return Ok(AppendOutcome {
                num_lines: self.state.num_lines,
                ..Default::default()
            });
        }
        let plan = plan_append(self.state, text.as_bytes(), self.cap, &mut self.tail);
        self.write(&plan).await?;
        Ok(plan.outcome)
    }

    async fn write(&mut self, plan: &AppendPlan) -> Result<()> {
        if self.store.backend == Backend::Sqlite {
            write_plan_sqlite(&self.store, self.id, plan).await?;
        } else {
            let mut tx = self.store.write_tx().await?;
            write_plan(&mut tx, self.id, plan).await?;
            tx.commit().await?;
        }
        for c in &plan.chunks {
            if let Some((first, raw)) = self.last_chunk
                && raw + c.raw_len <= LOG_CHUNK_MAX_BYTES as i64
                && (c.last - first + 1) as usize <= LOG_CHUNK_MAX_LINES
            {
                self.mergeable = true;
            }
            self.last_chunk = Some((c.first, c.raw_len));
        }
        self.state = plan.after;
        Ok(())
    }

    /// Writes a capped log's tail (after the marker, which now says what was left out), then
    /// marks the log complete, merging small chunks (as [`Store::finish_log`]) only when
    /// there are any to merge. Call it however the step ended, or the tail is lost.
    pub async fn finish(mut self) -> Result<()> {
        if let Some(plan) = plan_tail(self.state, self.cap, &mut self.tail) {
            self.write(&plan).await?;
        }
        self.store.finish_log(self.id, self.mergeable).await
    }
}

const CHUNK_COLS: &str = "first_line, last_line, content, compressed, raw_len";

impl Store {
    /// Adds an empty log to a step; its slug comes from the name and is unique in the step.
    pub async fn add_log(&self, step: StepId, name: &str, log_type: LogType) -> Result<LogId> {
        let row = sqlx::query("INSERT INTO logs (name, slug, stepid, complete, num_lines, type) VALUES ($1, $2, $3, 0, 0, $4) RETURNING id")
            .bind(name)
            .bind(slugify(name))
            .bind(step.0)
            .bind(type_char(log_type))
            .fetch_one(&self.wpool)
            .await?;
        Ok(LogId(get_i64(&row, "id")?))
    }

    pub async fn get_log(&self, id: LogId) -> Result<Option<Log>> {
        let row = sqlx::query(
            "SELECT id, stepid, name, slug, type, complete, num_lines FROM logs WHERE id = $1",
        )
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(row_log).transpose()
    }

    pub async fn get_log_by_slug(&self, step: StepId, slug: &str) -> Result<Option<Log>> {
        let row = sqlx::query("SELECT id, stepid, name, slug, type, complete, num_lines FROM logs WHERE stepid = $1 AND slug = $2")
            .bind(step.0)
            .bind(slug)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(row_log).transpose()
    }

    pub async fn list_logs(&self, step: StepId) -> Result<Vec<Log>> {
        let rows = sqlx::query("SELECT id, stepid, name, slug, type, complete, num_lines FROM logs WHERE stepid = $1 ORDER BY id")
            .bind(step.0)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(row_log).collect()
    }

    /// (bytes received, bytes stored, truncated) of a log.
    pub async fn log_sizes(&self, id: LogId) -> Result<(u64, u64, bool)> {
        let r = sqlx::query("SELECT total_bytes, stored_bytes, truncated FROM logs WHERE id = $1")
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound("log", id.0))?;
        Ok((
            get_i64(&r, "total_bytes")? as u64,
            get_i64(&r, "stored_bytes")? as u64,
            get_bool(&r, "truncated")?,
        ))
    }

    /// Appends whole lines (a last line without `\n` is stored as a whole line). Past the
    /// store's per-log cap, one marker line is stored and the rest is counted and dropped;
    /// the marker's count is kept up to date.
    pub async fn append_log(&self, id: LogId, text: &str) -> Result<AppendOutcome> {
        if text.is_empty() {
            let log = self
                .get_log(id)
                .await?
                .ok_or(StoreError::NotFound("log", id.0))?;
            return Ok(AppendOutcome {
                num_lines: log.num_lines,
                ..Default::default()
            });
        }
        let mut tx = self.write_tx().await?;
        let sel = match self.backend {
            Backend::Postgres => {
                "SELECT num_lines, total_bytes, stored_bytes, truncated FROM logs WHERE id = $1 FOR UPDATE"
            }
            Backend::Sqlite => {
                "SELECT num_lines, total_bytes, stored_bytes, truncated FROM logs WHERE id = $1"
            }
        };
        let r = sqlx::query(sel)
            .bind(id.0)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound("log", id.0))?;
        let state = LogState {
            num_lines: get_i64(&r, "num_lines")?,
            total: get_i64(&r, "total_bytes")? as u64,
            stored: get_i64(&r, "stored_bytes")? as u64,
            truncated: get_bool(&r, "truncated")?,
            head_full: get_bool(&r, "truncated")?,
        };
        // No writer keeps a tail between calls: the store's cap keeps the head only.
        let cap = self.opts.log_max_bytes.map(LogCap::head_only);
        let plan = plan_append(state, text.as_bytes(), cap, &mut TailRing::new(0));
        write_plan(&mut tx, id, &plan).await?;
        tx.commit().await?;
        Ok(plan.outcome)
    }

    /// Adds an empty log to a step and returns its writer (see [`LogWriter`]), capped at
    /// `cap` (`None`: never), which keeps a tail in memory up to `cap.tail_bytes`.
    pub async fn add_log_writer(
        &self,
        step: StepId,
        name: &str,
        log_type: LogType,
        cap: Option<LogCap>,
    ) -> Result<LogWriter> {
        let id = self.add_log(step, name, log_type).await?;
        Ok(LogWriter {
            store: self.clone(),
            id,
            state: LogState::default(),
            cap,
            tail: Box::new(TailRing::new(cap.map_or(0, |c| c.tail_bytes))),
            last_chunk: None,
            mergeable: false,
        })
    }

    /// Lines `first..=last` (0-based, without their `\n`, decoded as lossy UTF-8), reading and
    /// decompressing only the chunks that overlap the range. At most [`MAX_READ_LINES`] lines
    /// are returned (page with `first`); stream a whole log with [`Store::log_raw`].
    pub async fn read_log_lines(&self, id: LogId, first: i64, last: i64) -> Result<Vec<String>> {
        let first = first.max(0);
        let last = last.min(first.saturating_add(MAX_READ_LINES - 1));
        if last < first {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT first_line, last_line, content, compressed, raw_len FROM logchunks \
             WHERE logid = $1 AND first_line > $2 AND first_line <= $3 AND last_line >= $4 ORDER BY first_line",
        )
        .bind(id.0)
        .bind(first - LOG_CHUNK_MAX_LINES as i64)
        .bind(last)
        .bind(first)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::new();
        for r in &rows {
            let raw = decompress(r)?;
            let start = get_i64(r, "first_line")?;
            for (n, line) in (start..).zip(raw.split_inclusive(|&b| b == b'\n')) {
                if n > last {
                    break;
                }
                if n >= first {
                    let line = line.strip_suffix(b"\n").unwrap_or(line);
                    out.push(String::from_utf8_lossy(line).into_owned());
                }
            }
        }
        Ok(out)
    }

    /// The whole text of a log, one decompressed chunk at a time (one short query per chunk, no
    /// connection held in between), so memory stays bounded by the chunk size.
    pub fn log_raw(&self, id: LogId) -> impl Stream<Item = Result<Vec<u8>>> + Send + 'static {
        let pool = self.pool.clone();
        futures_util::stream::try_unfold(Some(0i64), move |next| {
            let pool = pool.clone();
            async move {
                let Some(next) = next else { return Ok(None) };
                let row = sqlx::query(
                    "SELECT first_line, last_line, content, compressed, raw_len FROM logchunks \
                     WHERE logid = $1 AND first_line >= $2 ORDER BY first_line LIMIT 1",
                )
                .bind(id.0)
                .bind(next)
                .fetch_optional(&pool)
                .await?;
                match row {
                    None => Ok(None),
                    Some(r) => {
                        let after = get_i64(&r, "last_line")? + 1;
                        Ok(Some((decompress(&r)?, Some(after))))
                    }
                }
            }
        })
    }

    /// Marks a log complete and, if `compress`, merges runs of small chunks into chunks of up to
    /// the chunk limits, recompressed harder (one short transaction per merged run).
    pub async fn finish_log(&self, id: LogId, compress: bool) -> Result<()> {
        let r = sqlx::query("UPDATE logs SET complete = 1 WHERE id = $1")
            .bind(id.0)
            .execute(&self.wpool)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound("log", id.0));
        }
        if compress {
            self.merge_chunks(id).await?;
        }
        Ok(())
    }

    async fn merge_chunks(&self, id: LogId) -> Result<()> {
        let Some(r) = sqlx::query("SELECT num_lines, truncated FROM logs WHERE id = $1")
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Err(StoreError::NotFound("log", id.0));
        };
        let num_lines = get_i64(&r, "num_lines")?;
        // Keep the marker chunk apart so it can still be refreshed.
        let end = if get_bool(&r, "truncated")? {
            num_lines - 1
        } else {
            num_lines
        };
        // Plan the merge from the chunk index alone (no content read): runs of contiguous
        // chunks that fit the limits together. A log streamed in big batches has nothing to
        // merge, and then nothing is read.
        let index = sqlx::query(
            "SELECT first_line, last_line, raw_len FROM logchunks WHERE logid = $1 AND first_line < $2 ORDER BY first_line",
        )
        .bind(id.0)
        .bind(end)
        .fetch_all(&self.pool)
        .await?;
        let mut runs: Vec<(i64, i64, usize)> = Vec::new(); // (first, last, chunks)
        let mut bytes = 0i64;
        for r in &index {
            let (f, l, len) = (
                get_i64(r, "first_line")?,
                get_i64(r, "last_line")?,
                get_i64(r, "raw_len")?,
            );
            match runs.last_mut() {
                Some(run)
                    if f == run.1 + 1
                        && bytes + len <= LOG_CHUNK_MAX_BYTES as i64
                        && (l - run.0 + 1) as usize <= LOG_CHUNK_MAX_LINES =>
                {
                    run.1 = l;
                    run.2 += 1;
                    bytes += len;
                }
                _ => {
                    runs.push((f, l, 1));
                    bytes = len;
                }
            }
        }
        for (first, last, n) in runs {
            if n < 2 {
                continue;
            }
            let mut group: Vec<u8> = Vec::new();
            let mut next = first;
            while next <= last {
                let Some(row) = next_chunk(&self.pool, id, next, last + 1).await? else {
                    break;
                };
                group.extend_from_slice(&decompress(&row)?);
                next = get_i64(&row, "last_line")? + 1;
            }
            let mut tx = self.write_tx().await?;
            sqlx::query(
                "DELETE FROM logchunks WHERE logid = $1 AND first_line >= $2 AND first_line <= $3",
            )
            .bind(id.0)
            .bind(first)
            .bind(last)
            .execute(&mut *tx)
            .await?;
            insert_chunk(&mut tx, id.0, first, last, &group, 9).await?;
            tx.commit().await?;
        }
        Ok(())
    }

    // ---------------------------------------------------------------- janitor

    /// Deletes the text of logs of builds completed before `horizon` (the logs stay, with type
    /// `d`). Works in batches of at most 1000 rows per statement, so no lock is held long.
    pub async fn delete_old_logs(&self, horizon: Epoch) -> Result<JanitorReport> {
        let mut rep = JanitorReport::default();
        loop {
            let ids = sqlx::query(
                "SELECT l.id FROM builds b JOIN steps s ON s.buildid = b.id JOIN logs l ON l.stepid = s.id \
                 WHERE b.complete_at < $1 AND l.type <> 'd' ORDER BY l.id LIMIT $2",
            )
            .bind(horizon)
            .bind(BATCH)
            .fetch_all(&self.pool)
            .await?;
            if ids.is_empty() {
                return Ok(rep);
            }
            for r in &ids {
                let logid = get_i64(r, "id")?;
                rep.chunks += self.delete_chunks(logid).await?;
                sqlx::query("UPDATE logs SET type = 'd' WHERE id = $1")
                    .bind(logid)
                    .execute(&self.wpool)
                    .await?;
                rep.logs += 1;
            }
        }
    }

    async fn delete_chunks(&self, logid: i64) -> Result<u64> {
        let mut n = 0;
        loop {
            let d = sqlx::query(
                "DELETE FROM logchunks WHERE logid = $1 AND first_line IN \
                 (SELECT first_line FROM logchunks WHERE logid = $1 ORDER BY first_line LIMIT $2)",
            )
            .bind(logid)
            .bind(BATCH)
            .execute(&self.wpool)
            .await?
            .rows_affected();
            n += d;
            if d == 0 {
                return Ok(n);
            }
        }
    }

    /// Deletes builds completed before `horizon` with their steps, logs, chunks and properties,
    /// a build at a time (chunks in batches of 1000), so no lock is held long.
    pub async fn delete_old_builds(&self, horizon: Epoch) -> Result<JanitorReport> {
        let mut rep = JanitorReport::default();
        loop {
            let builds = sqlx::query(
                "SELECT id FROM builds WHERE complete_at < $1 ORDER BY complete_at LIMIT $2",
            )
            .bind(horizon)
            .bind(BATCH)
            .fetch_all(&self.pool)
            .await?;
            if builds.is_empty() {
                return Ok(rep);
            }
            for b in &builds {
                let buildid = get_i64(b, "id")?;
                let logs = sqlx::query(
                    "SELECT l.id FROM steps s JOIN logs l ON l.stepid = s.id WHERE s.buildid = $1",
                )
                .bind(buildid)
                .fetch_all(&self.pool)
                .await?;
                for l in &logs {
                    rep.chunks += self.delete_chunks(get_i64(l, "id")?).await?;
                }
                let mut tx = self.write_tx().await?;
                rep.logs += sqlx::query(
                    "DELETE FROM logs WHERE stepid IN (SELECT id FROM steps WHERE buildid = $1)",
                )
                .bind(buildid)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                rep.steps += sqlx::query("DELETE FROM steps WHERE buildid = $1")
                    .bind(buildid)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                sqlx::query("DELETE FROM build_properties WHERE buildid = $1")
                    .bind(buildid)
                    .execute(&mut *tx)
                    .await?;
                rep.builds += sqlx::query("DELETE FROM builds WHERE id = $1")
                    .bind(buildid)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                tx.commit().await?;
            }
        }
    }
}

async fn next_chunk(pool: &AnyPool, id: LogId, from: i64, end: i64) -> Result<Option<AnyRow>> {
    Ok(sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {CHUNK_COLS} FROM logchunks WHERE logid = $1 AND first_line >= $2 AND first_line < $3 ORDER BY first_line LIMIT 1"
    )))
    .bind(id.0)
    .bind(from)
    .bind(end)
    .fetch_optional(pool)
    .await?)
}

fn memchr_nl(b: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', b)
}

/// One row of a log's chunk index (for diagnostics and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkInfo {
    pub first_line: i64,
    pub last_line: i64,
    pub raw_len: i64,
    pub stored_len: i64,
    pub compressed: i64,
}

impl Store {
    /// The chunk index of a log, in line order.
    pub async fn log_chunks(&self, id: LogId) -> Result<Vec<ChunkInfo>> {
        let rows = sqlx::query(
            "SELECT first_line, last_line, raw_len, compressed, LENGTH(content) AS stored_len FROM logchunks WHERE logid = $1 ORDER BY first_line",
        )
        .bind(id.0)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ChunkInfo {
                    first_line: get_i64(r, "first_line")?,
                    last_line: get_i64(r, "last_line")?,
                    raw_len: get_i64(r, "raw_len")?,
                    stored_len: get_i64(r, "stored_len")?,
                    compressed: get_i64(r, "compressed")?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(t: &mut TailRing) -> String {
        String::from_utf8(t.text().to_vec()).unwrap()
    }

    #[test]
    fn the_tail_keeps_the_last_whole_lines_within_its_capacity() {
        let mut t = TailRing::new(10);
        t.push(b"one\ntwo\n");
        t.push(b"three\nfour");
        // "four" gets its `\n`; "one", "two" and "three" no longer fit.
        assert_eq!(held(&mut t), "four\n");
        t.push(b"ab\n");
        assert_eq!(held(&mut t), "four\nab\n");
        assert_eq!((t.left_out_lines, t.left_out_bytes), (3, 14));
        assert!(t.bytes() <= 10);
        // A line longer than the whole tail leaves everything before it out, and itself.
        t.push(b"0123456789abc\n");
        assert_eq!((t.lines(), t.bytes()), (0, 0));
        assert_eq!((t.left_out_lines, t.left_out_bytes), (6, 36));
    }

    #[test]
    fn the_tail_is_planned_after_the_marker_which_says_what_was_left_out() {
        let cap = LogCap {
            max_bytes: 20,
            tail_bytes: 8,
        };
        let mut tail = TailRing::new(cap.tail_bytes);
        // 12 bytes of head fit; the rest goes to the tail, which leaves some out.
        let text = b"aaa\nbbb\nccc\nddd\neee\nfff\n";
        let plan = plan_append(LogState::default(), text, Some(cap), &mut tail);
        assert_eq!(
            plan.outcome.lines_stored, 4,
            "three head lines and the marker"
        );
        assert_eq!(plan.after.stored, 12);
        assert!(plan.after.truncated);
        assert_eq!(held(&mut tail), "eee\nfff\n");
        assert_eq!(
            marker(cap, plan.after, &tail, true),
            "[kiln: log truncated at 20 bytes; 4 bytes (1 lines) left out here, the last 8 bytes follow]\n"
        );
        let done = plan_tail(plan.after, Some(cap), &mut tail).expect("a tail");
        assert_eq!(done.after.num_lines, 6);
        assert_eq!(done.after.stored, 20);
        let marker = done.marker_refresh.expect("the marker's final text");
        assert_eq!(marker.first, 3);
        assert_eq!((done.chunks[0].first, done.chunks[0].last), (4, 5));
        // Nothing past the head: no tail to write.
        let mut tail = TailRing::new(cap.tail_bytes);
        let plan = plan_append(LogState::default(), b"aaa\n", Some(cap), &mut tail);
        assert!(plan_tail(plan.after, Some(cap), &mut tail).is_none());
    }
}
