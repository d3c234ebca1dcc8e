//! Output batching (§7.3): items accumulate until they would exceed
//! `buffer_size` or `buffer_timeout` has passed since the first one, then go out
//! as one `update`. Consecutive items of the same stream are merged.

use std::time::Duration;

use kiln_proto::Op;
use kiln_proto::update::{Lines, UpdateItem};
use tokio::time::Instant;

use crate::link::MasterLink;

/// A command's pending status items.
pub struct Output {
    command_id: String,
    link: MasterLink,
    pending: Vec<UpdateItem>,
    weight: usize,
    buffer_size: usize,
    buffer_timeout: Duration,
    /// When the pending batch must go out at the latest.
    deadline: Option<Instant>,
    /// Set once a send failed: the session is gone, later items are dropped.
    closed: bool,
}

impl Output {
    pub fn new(command_id: String, link: MasterLink, buffer_size: usize, buffer_timeout: f64) -> Output {
        Output {
            command_id,
            link,
            pending: Vec::new(),
            weight: 0,
            buffer_size: buffer_size.max(1),
            buffer_timeout: Duration::from_secs_f64(buffer_timeout.max(0.0)),
            deadline: None,
            closed: false,
        }
    }

    /// Adds an item, sending the pending batch first if this one would overflow it.
    pub async fn push(&mut self, item: UpdateItem) {
        let w = item.weight();
        if !self.pending.is_empty() && self.weight + w > self.buffer_size {
            self.flush().await;
        }
        if w > self.buffer_size {
            // Too big for one batch: split along line boundaries.
            for part in split_item(item, self.buffer_size) {
                self.add(part);
                self.flush().await;
            }
            return;
        }
        self.add(item);
        if self.weight >= self.buffer_size {
            self.flush().await;
        }
    }

    fn add(&mut self, item: UpdateItem) {
        self.weight += item.weight();
        if self.deadline.is_none() {
            self.deadline = Some(Instant::now() + self.buffer_timeout);
        }
        if let Some(last) = self.pending.last_mut() {
            match (last, &item) {
                (UpdateItem::Header(a), UpdateItem::Header(b))
                | (UpdateItem::Stdout(a), UpdateItem::Stdout(b))
                | (UpdateItem::Stderr(a), UpdateItem::Stderr(b)) => {
                    a.extend(b);
                    return;
                }
                (UpdateItem::Log(na, a), UpdateItem::Log(nb, b)) if na == nb => {
                    a.extend(b);
                    return;
                }
                _ => {}
            }
        }
        self.pending.push(item);
    }

    /// Sends whatever is pending as one `update`.
    pub async fn flush(&mut self) {
        self.deadline = None;
        self.weight = 0;
        if self.pending.is_empty() {
            return;
        }
        let items = std::mem::take(&mut self.pending);
        if self.closed {
            return;
        }
        if self.link.send(Op::Update { command_id: self.command_id.clone(), items }).await.is_err() {
            self.closed = true;
        }
    }

    /// When the pending batch is due (`None`: nothing pending).
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Resolves when the pending batch is due; never, if nothing is pending.
    /// Use in a `select!` beside the command's own work, then call [`Output::flush`].
    pub async fn due(&self) {
        match self.deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    }

    /// Whether the session this output goes to has gone away.
    pub fn is_closed(&self) -> bool {
        self.closed || self.link.is_closed()
    }
}

/// Splits an oversized line item into items of at most `max` weight, at line ends.
fn split_item(item: UpdateItem, max: usize) -> Vec<UpdateItem> {
    let rebuild = |l: Lines| match &item {
        UpdateItem::Header(_) => UpdateItem::Header(l),
        UpdateItem::Stdout(_) => UpdateItem::Stdout(l),
        UpdateItem::Stderr(_) => UpdateItem::Stderr(l),
        UpdateItem::Log(name, _) => UpdateItem::Log(name.clone(), l),
        _ => unreachable!("only line items are split"),
    };
    let lines = match &item {
        UpdateItem::Header(l) | UpdateItem::Stdout(l) | UpdateItem::Stderr(l) | UpdateItem::Log(_, l) => l.clone(),
        other => return vec![other.clone()],
    };
    let mut parts = Vec::new();
    let mut cur = Lines::default();
    let mut cur_chars = 0u32;
    for (line, time) in lines.text.split_inclusive('\n').zip(&lines.times) {
        if !cur.text.is_empty() && cur.weight() + line.len() + 16 > max {
            parts.push(rebuild(std::mem::take(&mut cur)));
            cur_chars = 0;
        }
        cur_chars += line.chars().count() as u32;
        cur.text.push_str(line);
        cur.newlines.push(cur_chars - 1);
        cur.times.push(*time);
    }
    if !cur.text.is_empty() {
        parts.push(rebuild(cur));
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(rx: &mut tokio::sync::mpsc::Receiver<crate::link::Outgoing>) -> Vec<Vec<UpdateItem>> {
        let mut out = Vec::new();
        while let Ok(crate::link::Outgoing::Request { op: Op::Update { items, .. }, .. }) = rx.try_recv() {
            out.push(items);
        }
        out
    }

    #[tokio::test]
    async fn merges_same_stream_and_flushes_on_size() {
        let (link, mut rx) = MasterLink::channel(64);
        let mut out = Output::new("1".into(), link, 100, 5.0);
        out.push(UpdateItem::Stdout(Lines::from_text("a\n", 1.0))).await;
        out.push(UpdateItem::Stdout(Lines::from_text("bc\n", 2.0))).await;
        out.push(UpdateItem::Stderr(Lines::from_text("e\n", 3.0))).await;
        assert!(collect(&mut rx).is_empty(), "nothing is sent before the buffer fills");
        out.push(UpdateItem::Stdout(Lines::from_text("x".repeat(80) + "\n", 4.0))).await;
        let batches = collect(&mut rx);
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0][0], UpdateItem::Stdout(Lines { text: "a\nbc\n".into(), newlines: vec![1, 4], times: vec![1.0, 2.0] }));
        assert_eq!(batches[0][1], UpdateItem::Stderr(Lines::from_text("e\n", 3.0)));
    }

    #[tokio::test]
    async fn splits_an_oversized_item_at_line_ends() {
        let (link, mut rx) = MasterLink::channel(64);
        let mut out = Output::new("1".into(), link, 64, 5.0);
        let text: String = (0..20).map(|i| format!("line{i:02}\n")).collect();
        out.push(UpdateItem::Stdout(Lines::from_text(text.clone(), 1.0))).await;
        out.flush().await;
        let batches = collect(&mut rx);
        assert!(batches.len() > 1, "an item heavier than the buffer is split");
        let mut joined = String::new();
        for b in &batches {
            for item in b {
                let UpdateItem::Stdout(l) = item else { panic!("unexpected {item:?}") };
                assert!(l.text.ends_with('\n'));
                assert_eq!(*l, Lines::from_text(l.text.clone(), 1.0), "positions restart in each part");
                joined.push_str(&l.text);
            }
        }
        assert_eq!(joined, text, "nothing is lost or reordered");
    }
}
