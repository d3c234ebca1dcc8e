//! A running step's logs in the store, with secrets redacted on the way in (even one a line
//! wrap or a batch cut in two: see [`kiln_config::LogRedactor`]), capped as the build's config
//! says when each log is opened, and `LogAppended` events at most a few times a second per log.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kiln_config::{LineBreaks, LogRedactor};
use kiln_model::{Event, LogId, LogType, StepId};
use kiln_remote::BoxFuture;
use kiln_store::{EventBus, LogCap, LogWriter, Store};

use crate::steps::{LogError, LogHandle, StepLogs};

/// Batches at least this big are written in the background.
const BACKGROUND_APPEND: usize = 64 * 1024;

/// A log's `LogAppended` events come at most this often while it grows (and once more when
/// it completes): live pages follow a fast log without an event per batch.
const LOG_EVENT_EVERY: Duration = Duration::from_millis(250);

/// A log's writer, idle or busy with a batch.
enum LogSlot {
    Idle(LogWriter),
    Writing(tokio::task::JoinHandle<(LogWriter, Result<(), kiln_store::StoreError>)>),
}

impl LogSlot {
    /// The writer, once its batch in flight (if any) is written; that batch's error, if any.
    async fn settle(self) -> Result<LogWriter, LogError> {
        match self {
            LogSlot::Idle(w) => Ok(w),
            LogSlot::Writing(task) => {
                let (w, r) = task.await?;
                r.map(|()| w).map_err(LogError::from)
            }
        }
    }
}

/// Each open log has its [`LogWriter`], which writes one batch in the background while the
/// step reads the next from the worker (at most one batch per log in flight, so memory stays
/// bounded).
///
/// A state string is written with the next store write of the step, or with its result
/// (the runner takes `deferred_state`): a step sets one when it starts, which the step row
/// already has, and one when it ends.
pub(super) struct StoreLogs {
    store: Store,
    bus: EventBus,
    step: StepId,
    redactor: kiln_config::Redactor,
    /// The cap of the logs this step opens (from the build's config; `None`: none).
    cap: Option<LogCap>,
    metrics: crate::Metrics,
    writers: HashMap<i64, LogSlot>,
    /// Each open log's redaction, with the lines it keeps back.
    redacting: HashMap<i64, LogRedactor>,
    /// When each log's last `LogAppended` went out.
    announced: HashMap<i64, Instant>,
    /// The state string in the step row.
    state: String,
    deferred_state: Option<String>,
}

impl StoreLogs {
    pub fn new(
        store: Store,
        bus: EventBus,
        step: StepId,
        redactor: kiln_config::Redactor,
        cap: Option<LogCap>,
        metrics: crate::Metrics,
        state: String,
    ) -> StoreLogs {
        StoreLogs {
            store,
            bus,
            step,
            redactor,
            cap,
            metrics,
            writers: HashMap::new(),
            redacting: HashMap::new(),
            announced: HashMap::new(),
            state,
            deferred_state: None,
        }
    }

    /// The state string still to be written (with the step's result).
    pub fn take_deferred_state(&mut self) -> Option<String> {
        self.deferred_state.take()
    }

    async fn write_deferred_state(&mut self) -> Result<(), LogError> {
        if let Some(s) = self.deferred_state.take() {
            self.store.set_step_state_string(self.step, &s).await?;
            self.state = s;
        }
        Ok(())
    }

    /// Publishes `LogAppended` unless one went out for this log a moment ago.
    fn announce(&mut self, log: i64, num_lines: i64, complete: bool) {
        let now = Instant::now();
        let recent = self
            .announced
            .get(&log)
            .is_some_and(|t| now.duration_since(*t) < LOG_EVENT_EVERY);
        if recent && !complete {
            return;
        }
        self.announced.insert(log, now);
        self.bus.publish(Event::LogAppended {
            step: self.step,
            log: LogId(log),
            num_lines,
            complete,
        });
    }

    /// Stores redacted text: through the log's writer, or for a log this step did not open
    /// (none today), through the store.
    async fn store_text(&mut self, log: LogHandle, text: String) -> Result<(), LogError> {
        if text.is_empty() {
            return Ok(());
        }
        match self.writers.remove(&log.0) {
            Some(slot) => self.append_to(log.0, slot, text).await,
            None => {
                let out = self.store.append_log(LogId(log.0), &text).await?;
                self.announce(log.0, out.num_lines, false);
                Ok(())
            }
        }
    }

    async fn append_to(&mut self, log: i64, slot: LogSlot, text: String) -> Result<(), LogError> {
        let mut w = slot.settle().await?;
        let lines_before = w.num_lines();
        if text.len() >= BACKGROUND_APPEND {
            let task = tokio::spawn(async move {
                let r = w.append(&text).await.map(|_| ());
                (w, r)
            });
            self.writers.insert(log, LogSlot::Writing(task));
            // The batch written before this one is stored now.
            if lines_before > 0 {
                self.announce(log, lines_before, false);
            }
            return Ok(());
        }
        // Small: a task of its own would cost more than it saves.
        let r = w.append(&text).await;
        let num_lines = w.num_lines();
        self.writers.insert(log, LogSlot::Idle(w));
        r?;
        self.announce(log, num_lines, false);
        Ok(())
    }
}

impl StepLogs for StoreLogs {
    fn add_log(
        &mut self,
        name: &str,
        log_type: LogType,
    ) -> BoxFuture<'_, Result<LogHandle, LogError>> {
        let name = name.to_string();
        Box::pin(async move {
            self.write_deferred_state().await?;
            let w = self
                .store
                .add_log_writer(self.step, &name, log_type, self.cap)
                .await?;
            let id = w.id();
            self.writers.insert(id.0, LogSlot::Idle(w));
            let breaks = match log_type {
                LogType::Stdio => LineBreaks::Stdio,
                _ => LineBreaks::Plain,
            };
            let redactor = LogRedactor::new(self.redactor.clone(), breaks);
            self.redacting.insert(id.0, redactor);
            Ok(LogHandle(id.0))
        })
    }

    fn append(&mut self, log: LogHandle, text: String) -> BoxFuture<'_, Result<(), LogError>> {
        self.metrics.log_bytes_received(text.len() as u64);
        let text = match self.redacting.get_mut(&log.0) {
            Some(r) => r.push(text),
            None => self.redactor.redact(&text),
        };
        Box::pin(async move {
            self.write_deferred_state().await?;
            self.store_text(log, text).await
        })
    }

    fn finish(&mut self, log: LogHandle) -> BoxFuture<'_, Result<(), LogError>> {
        Box::pin(async move {
            // The lines the redaction kept back go in before the log's tail and its end.
            if let Some(mut r) = self.redacting.remove(&log.0) {
                let held = r.finish();
                if !held.is_empty() {
                    self.store_text(log, held).await?;
                }
            }
            match self.writers.remove(&log.0) {
                Some(slot) => {
                    let w = slot.settle().await?;
                    let num_lines = w.num_lines();
                    w.finish().await?;
                    self.announce(log.0, num_lines, true);
                }
                None => self.store.finish_log(LogId(log.0), true).await?,
            }
            Ok(())
        })
    }

    fn set_state_string(&mut self, text: &str) -> BoxFuture<'_, Result<(), LogError>> {
        let text = self.redactor.redact(text);
        if text == self.state {
            self.deferred_state = None;
        } else {
            self.deferred_state = Some(text);
        }
        Box::pin(async { Ok(()) })
    }

    fn add_url(&mut self, name: &str, url: &str) -> BoxFuture<'_, Result<(), LogError>> {
        let (name, url) = (name.to_string(), url.to_string());
        Box::pin(async move {
            self.write_deferred_state().await?;
            self.store.add_step_url(self.step, &name, &url).await?;
            Ok(())
        })
    }
}
