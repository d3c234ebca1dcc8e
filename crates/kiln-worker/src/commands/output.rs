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
    pub fn new(
        command_id: String,
        link: MasterLink,
        buffer_size: usize,
        buffer_timeout: f64,
    ) -> Output {
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

    /// Adds an item. A line item that does not fit the pending batch fills it up,
    /// along line boundaries; each full batch goes out and the rest stays pending,
    /// so a fast stream travels in batches of close to `buffer_size`.
    pub async fn push(&mut self, item: UpdateItem) {
        let mut item = item;
        loop {
            if self.weight + item.weight() <= self.buffer_size {
                self.add(item);
                if self.weight >= self.buffer_size {
                    self.flush().await;
                }
                return;
            }
            let room = self.buffer_size - self.weight;
            match split_off_prefix(item, room) {
                // Nothing of it fits (or it has no lines): send what is pending first.
                (None, Some(rest)) if !self.pending.is_empty() => {
                    self.flush().await;
                    item = rest;
                }
                // A single line heavier than a whole batch goes out alone.
                (None, Some(rest)) => {
                    self.add(rest);
                    self.flush().await;
                    return;
                }
                (Some(head), rest) => {
                    self.add(head);
                    self.flush().await;
                    match rest {
                        Some(rest) => item = rest,
                        None => return,
                    }
                }
                (None, None) => return,
            }
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
        if self
            .link
            .send(Op::Update {
                command_id: self.command_id.clone(),
                items,
            })
            .await
            .is_err()
        {
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

/// Splits a line item after as many whole lines as fit in `room` weight: the
/// fitting prefix (if any line fits) and the rest (if anything is left).
fn split_off_prefix(item: UpdateItem, room: usize) -> (Option<UpdateItem>, Option<UpdateItem>) {
    let (lines, rebuild): (&Lines, fn(&UpdateItem, Lines) -> UpdateItem) = match &item {
        UpdateItem::Header(l) => (l, |_, l| UpdateItem::Header(l)),
        UpdateItem::Stdout(l) => (l, |_, l| UpdateItem::Stdout(l)),
        UpdateItem::Stderr(l) => (l, |_, l| UpdateItem::Stderr(l)),
        UpdateItem::Log(_, l) => (l, |i, l| match i {
            UpdateItem::Log(name, _) => UpdateItem::Log(name.clone(), l),
            _ => unreachable!(),
        }),
        _ => return (None, Some(item)),
    };
    // Each line weighs its bytes plus 16 (its index and its time).
    let mut bytes = 0usize;
    let mut count = 0usize;
    for line in lines.text.split_inclusive('\n') {
        if bytes + line.len() + 16 * (count + 1) > room {
            break;
        }
        bytes += line.len();
        count += 1;
    }
    if count == 0 {
        return (None, Some(item));
    }
    if count == lines.newlines.len() {
        return (Some(item), None);
    }
    let (head_text, tail_text) = lines.text.split_at(bytes);
    let head_chars = lines.newlines[count - 1] + 1;
    let head = Lines {
        text: head_text.to_owned(),
        newlines: lines.newlines[..count].to_vec(),
        times: lines.times[..count].to_vec(),
    };
    let tail = Lines {
        text: tail_text.to_owned(),
        newlines: lines.newlines[count..]
            .iter()
            .map(|p| p - head_chars)
            .collect(),
        times: lines.times[count..].to_vec(),
    };
    (Some(rebuild(&item, head)), Some(rebuild(&item, tail)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(
        rx: &mut tokio::sync::mpsc::Receiver<crate::link::Outgoing>,
    ) -> Vec<Vec<UpdateItem>> {
        let mut out = Vec::new();
        while let Ok(crate::link::Outgoing::Request {
            op: Op::Update { items, .. },
            ..
        }) = rx.try_recv()
        {
            out.push(items);
        }
        out
    }

    #[tokio::test]
    async fn merges_same_stream_and_flushes_on_size() {
        let (link, mut rx) = MasterLink::channel(64);
        let mut out = Output::new("1".into(), link, 100, 5.0);
        out.push(UpdateItem::Stdout(Lines::from_text("a\n", 1.0)))
            .await;
        out.push(UpdateItem::Stdout(Lines::from_text("bc\n", 2.0)))
            .await;
        out.push(UpdateItem::Stderr(Lines::from_text("e\n", 3.0)))
            .await;
        assert!(
            collect(&mut rx).is_empty(),
            "nothing is sent before the buffer fills"
        );
        out.push(UpdateItem::Stdout(Lines::from_text(
            "x".repeat(80) + "\n",
            4.0,
        )))
        .await;
        let batches = collect(&mut rx);
        assert_eq!(batches.len(), 1);
        assert_eq!(
            batches[0][0],
            UpdateItem::Stdout(Lines {
                text: "a\nbc\n".into(),
                newlines: vec![1, 4],
                times: vec![1.0, 2.0]
            })
        );
        assert_eq!(
            batches[0][1],
            UpdateItem::Stderr(Lines::from_text("e\n", 3.0))
        );
    }

    #[tokio::test]
    async fn splits_an_oversized_item_at_line_ends() {
        let (link, mut rx) = MasterLink::channel(64);
        let mut out = Output::new("1".into(), link, 64, 5.0);
        let text: String = (0..20).map(|i| format!("line{i:02}\n")).collect();
        out.push(UpdateItem::Stdout(Lines::from_text(text.clone(), 1.0)))
            .await;
        out.flush().await;
        let batches = collect(&mut rx);
        assert!(
            batches.len() > 1,
            "an item heavier than the buffer is split"
        );
        let mut joined = String::new();
        for b in &batches {
            for item in b {
                let UpdateItem::Stdout(l) = item else {
                    panic!("unexpected {item:?}")
                };
                assert!(l.text.ends_with('\n'));
                assert_eq!(
                    *l,
                    Lines::from_text(l.text.clone(), 1.0),
                    "positions restart in each part"
                );
                joined.push_str(&l.text);
            }
        }
        assert_eq!(joined, text, "nothing is lost or reordered");
    }

    #[tokio::test]
    async fn a_fast_stream_fills_each_batch() {
        let (link, mut rx) = MasterLink::channel(256);
        let mut out = Output::new("1".into(), link, 1000, 5.0);
        out.push(UpdateItem::Header(Lines::from_text("hdr\n", 0.5)))
            .await;
        // Output arrives in reads of many lines, each read heavier than a batch.
        let mut sent = String::new();
        for read in 0..5 {
            let text: String = (0..40)
                .map(|i| format!("r{read}l{i:02}xxxxxxxx\n"))
                .collect();
            sent.push_str(&text);
            out.push(UpdateItem::Stdout(Lines::from_text(text, f64::from(read))))
                .await;
        }
        out.flush().await;
        let batches = collect(&mut rx);
        let weights: Vec<usize> = batches
            .iter()
            .map(|b| b.iter().map(UpdateItem::weight).sum())
            .collect();
        assert!(
            weights.iter().all(|w| *w <= 1000),
            "no batch over buffer_size: {weights:?}"
        );
        let line_weight = "r0l00xxxxxxxx\n".len() + 16;
        for w in &weights[..weights.len() - 1] {
            assert!(
                w + line_weight > 1000,
                "every batch but the last is full: {weights:?}"
            );
        }
        let stdout: String = batches
            .iter()
            .flatten()
            .filter_map(|i| match i {
                UpdateItem::Stdout(l) => {
                    assert_eq!(
                        l.newlines,
                        Lines::from_text(l.text.clone(), 0.0).newlines,
                        "positions restart in each part"
                    );
                    assert_eq!(l.times.len(), l.newlines.len());
                    Some(l.text.clone())
                }
                _ => None,
            })
            .collect();
        assert_eq!(stdout, sent, "nothing is lost or reordered");
    }
}
