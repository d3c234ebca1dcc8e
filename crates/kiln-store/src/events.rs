//! The event bus: every [`Event`] the farm publishes reaches every subscriber in this process,
//! and on PostgreSQL the subscribers of the other processes on the same database too.
//!
//! * In-process it is a tokio `broadcast` channel. [`EventBus::publish`] never waits and never
//!   fails; a subscriber that falls more than `capacity` events behind is told how many it
//!   missed ([`RecvError::Lagged`]) and goes on with the newer ones. The publisher is never
//!   slowed by a subscriber.
//! * On PostgreSQL, a background *notifier* task sends the events published here with
//!   `pg_notify` on [`CHANNEL`]. It is fed through a bounded queue: when the queue is full the
//!   event is not sent to the other processes (counted in [`EventBus::unsent`]); a build never
//!   waits for a NOTIFY. The notifier packs the events that wait in its queue into one payload
//!   (a JSON object, below PostgreSQL's 8000-byte limit), one statement per payload.
//! * One *listener* task holds a `LISTEN` connection (sqlx's `PgListener`, which reconnects)
//!   and rebroadcasts the other processes' events to the local subscribers. Each payload
//!   carries its bus's random origin id, and a bus skips its own payloads: a local subscriber
//!   sees an event published here once (from the local channel), and an event from another
//!   process once (from the listener).
//! * Events of other processes that cannot arrive (their notifier's queue was full, an event
//!   was too big for a payload, a NOTIFY failed, or our LISTEN connection dropped and
//!   reconnected: notifications sent meanwhile are gone) are reported to the subscribers as
//!   [`RecvError::RemoteGap`], at or after the place where they would have been. A subscriber
//!   that must not miss a change (a web page, a reporter) re-reads the database then.
//!
//! Dropping the last handle of a bus stops its tasks (the notifier first sends what is
//! already queued); [`EventBus::close`] does the same and waits for them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_model::Event;
use serde::Deserialize;
use sqlx::AnyPool;
use sqlx::postgres::PgListener;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use crate::{Backend, Result, Store};

/// The PostgreSQL `LISTEN`/`NOTIFY` channel of the event bus.
pub const CHANNEL: &str = "kiln_events";

/// PostgreSQL refuses a NOTIFY payload of 8000 bytes or more (with the default build
/// configuration); a payload holds at most this many bytes of events, which leaves room for
/// the envelope (`{"origin":…,"missed":…,"events":[…]}`, under 80 bytes).
const MAX_EVENTS_BYTES: usize = 7900;

/// The database URL a store was opened with, kept for the bus's `LISTEN` connection (which
/// cannot come from the `Any` pool). Its `Debug` hides it: it may hold a password.
#[derive(Clone)]
pub(crate) struct DbUrl(pub(crate) Arc<str>);

impl std::fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DbUrl(..)")
    }
}

/// Sizes of an [`EventBus`].
#[derive(Debug, Clone)]
pub struct EventBusOptions {
    /// How many events a subscriber may fall behind before it is told it lagged (at least 1).
    pub capacity: usize,
    /// PostgreSQL: how many events may wait to be sent to the other processes (at least 1);
    /// past it, events are not sent (and counted in [`EventBus::unsent`]).
    pub notify_queue: usize,
}

impl Default for EventBusOptions {
    fn default() -> Self {
        EventBusOptions {
            capacity: 4096,
            notify_queue: 8192,
        }
    }
}

/// What a [`Subscription`] can get instead of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    /// This subscriber fell behind: the bus dropped the given number of the oldest events
    /// for it. The next `recv` gives the oldest event still kept.
    #[error("lagged behind: {0} events missed")]
    Lagged(u64),
    /// Events from another process did not arrive (it could not send them, or the `LISTEN`
    /// connection was lost and re-established); the number is not known.
    #[error("events from other processes were lost")]
    RemoteGap,
    /// The bus is gone (every handle dropped) and every event was received.
    #[error("event bus closed")]
    Closed,
}

/// What travels on the local channel.
#[derive(Debug, Clone)]
enum Msg {
    Event(Arc<Event>),
    RemoteGap,
}

/// A broadcast bus of [`Event`]s, in-process and, on PostgreSQL, between processes.
/// Cheap to clone: clones share the channel and the background tasks.
#[derive(Clone, Debug)]
pub struct EventBus {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    local: broadcast::Sender<Msg>,
    remote: Option<Remote>,
}

/// The PostgreSQL side of a bus.
#[derive(Debug)]
struct Remote {
    outbox: mpsc::Sender<Arc<Event>>,
    counters: Arc<Counters>,
    /// Set (or dropped with the last handle): the tasks stop.
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

#[derive(Debug, Default)]
struct Counters {
    /// Not queued for NOTIFY: the queue was full (publish increments it).
    queue_full: AtomicU64,
    /// Taken from the queue but not sent: too big, or the NOTIFY failed.
    not_sent: AtomicU64,
}

impl Drop for Remote {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// One subscriber's view of an [`EventBus`]: every event published after
/// [`EventBus::subscribe`], in order.
#[derive(Debug)]
pub struct Subscription {
    rx: broadcast::Receiver<Msg>,
}

impl Subscription {
    /// The next event; waits for one. An `Err` other than [`RecvError::Closed`] is a report:
    /// call `recv` again for the events after it.
    pub async fn recv(&mut self) -> Result<Event, RecvError> {
        match self.rx.recv().await {
            Ok(m) => Ok(unwrap_msg(m)?),
            Err(broadcast::error::RecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
            Err(broadcast::error::RecvError::Closed) => Err(RecvError::Closed),
        }
    }

    /// The next event if one is waiting (`Ok(None)`: none is, for now).
    pub fn try_recv(&mut self) -> Result<Option<Event>, RecvError> {
        use broadcast::error::TryRecvError;
        match self.rx.try_recv() {
            Ok(m) => Ok(Some(unwrap_msg(m)?)),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
            Err(TryRecvError::Closed) => Err(RecvError::Closed),
        }
    }
}

fn unwrap_msg(m: Msg) -> Result<Event, RecvError> {
    match m {
        Msg::Event(e) => Ok(Arc::unwrap_or_clone(e)),
        Msg::RemoteGap => Err(RecvError::RemoteGap),
    }
}

impl EventBus {
    /// A bus for this process only (SQLite, tests): subscribers may fall `capacity` events
    /// behind before they lag (at least 1).
    pub fn in_process(capacity: usize) -> EventBus {
        EventBus {
            inner: Arc::new(Inner {
                local: broadcast::channel(capacity.max(1)).0,
                remote: None,
            }),
        }
    }

    /// The bus for `store`'s database with default sizes: see [`EventBus::for_store_with`].
    pub async fn for_store(store: &Store) -> Result<EventBus> {
        EventBus::for_store_with(store, EventBusOptions::default()).await
    }

    /// The bus for `store`'s database. On SQLite: in-process only (one process owns the file).
    /// On PostgreSQL: opens the `LISTEN` connection (events published by other processes
    /// after this returns arrive here) and starts the listener and the notifier. Must be
    /// called inside a tokio runtime.
    pub async fn for_store_with(store: &Store, opts: EventBusOptions) -> Result<EventBus> {
        if store.backend != Backend::Postgres {
            return Ok(EventBus::in_process(opts.capacity));
        }
        let mut listener = PgListener::connect(&store.url.0).await?;
        listener.listen(CHANNEL).await?;
        let origin = new_origin();
        let local = broadcast::channel(opts.capacity.max(1)).0;
        let (outbox, outbox_rx) = mpsc::channel(opts.notify_queue.max(1));
        let (stop, stop_rx) = watch::channel(false);
        let counters = Arc::new(Counters::default());
        let tasks = vec![
            tokio::spawn(listen_loop(
                listener,
                origin,
                local.clone(),
                stop_rx.clone(),
            )),
            tokio::spawn(notify_loop(
                store.wpool.clone(),
                origin,
                outbox_rx,
                counters.clone(),
                stop_rx,
            )),
        ];
        Ok(EventBus {
            inner: Arc::new(Inner {
                local,
                remote: Some(Remote {
                    outbox,
                    counters,
                    stop,
                    tasks: Mutex::new(tasks),
                }),
            }),
        })
    }

    /// Sends `event` to every subscriber (here and, on PostgreSQL, in the other processes).
    /// Never waits and never fails: nobody listening is fine, a full NOTIFY queue drops the
    /// event for the other processes only.
    pub fn publish(&self, event: Event) {
        let event = Arc::new(event);
        if let Some(r) = &self.inner.remote {
            match r.outbox.try_send(event.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    // Reported (logged, and to the other processes as a gap) by the notifier
                    // with its next payload: the queue is full, so one follows.
                    r.counters.queue_full.fetch_add(1, Ordering::Relaxed);
                }
                // Closed: after `close`, the bus is in-process only.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        // An error only says that nobody subscribes.
        let _ = self.inner.local.send(Msg::Event(event));
    }

    /// A new subscriber: it gets the events published from now on.
    pub fn subscribe(&self) -> Subscription {
        Subscription {
            rx: self.inner.local.subscribe(),
        }
    }

    /// Whether the bus carries events between processes (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        self.inner.remote.is_some()
    }

    /// How many events published here were not sent to the other processes (the NOTIFY
    /// queue was full, an event was too big for a payload, or a NOTIFY failed).
    pub fn unsent(&self) -> u64 {
        self.inner.remote.as_ref().map_or(0, |r| {
            r.counters.queue_full.load(Ordering::Relaxed)
                + r.counters.not_sent.load(Ordering::Relaxed)
        })
    }

    /// Stops the cross-process part and waits for its tasks: the listener stops at once (its
    /// `LISTEN` connection closes), the notifier sends what is already queued, then ends. The
    /// bus stays usable in-process. Dropping the last handle stops the tasks the same way,
    /// without waiting. Closing twice is fine.
    pub async fn close(&self) {
        let Some(r) = &self.inner.remote else {
            return;
        };
        r.stop.send_replace(true);
        let tasks = std::mem::take(&mut *r.tasks.lock().expect("event bus tasks"));
        for t in tasks {
            let _ = t.await;
        }
    }
}

impl kiln_engine::queue::Bus for EventBus {
    fn publish(&self, event: Event) {
        EventBus::publish(self, event);
    }
}

/// A random id for one bus (two buses in one process are two origins).
fn new_origin() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u64(COUNT.fetch_add(1, Ordering::Relaxed));
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    h.finish()
}

/// A NOTIFY payload as received.
#[derive(Deserialize)]
struct Payload {
    origin: u64,
    #[serde(default)]
    missed: u64,
    /// Each decoded on its own: an event this version does not know (from a newer master)
    /// costs only itself.
    #[serde(default)]
    events: Vec<serde_json::Value>,
}

/// Builds a payload from events already serialized and joined with commas.
fn payload(origin: u64, missed: u64, events: &str) -> String {
    format!(r#"{{"origin":{origin},"missed":{missed},"events":[{events}]}}"#)
}

/// Sends the events queued in `outbox` with `pg_notify`, batched: a payload holds every event
/// that waits (up to [`MAX_EVENTS_BYTES`]). An event too big for a payload on its own is not
/// sent: it is counted, logged, and reported to the other processes as `missed` (they tell
/// their subscribers [`RecvError::RemoteGap`]). The bus's events are small (ids, and a name
/// or a summary), so that takes a reconfig summary of several kilobytes.
async fn notify_loop(
    pool: AnyPool,
    origin: u64,
    mut outbox: mpsc::Receiver<Arc<Event>>,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) {
    let mut stopping = false;
    // An event taken from the queue that did not fit the previous payload.
    let mut carry: Option<String> = None;
    let mut batch = Batch::default();
    let mut queue_full_seen: u64 = 0;
    loop {
        // The first event of the payload: waits for one.
        if let Some(json) = carry.take() {
            batch.add(json, &counters);
        } else {
            let next = if stopping {
                outbox.recv().await
            } else {
                tokio::select! {
                    ev = outbox.recv() => ev,
                    _ = stop.changed() => {
                        // Take no more; send what is queued, then end.
                        stopping = true;
                        outbox.close();
                        continue;
                    }
                }
            };
            let Some(ev) = next else { break };
            batch.add(to_json(&ev), &counters);
        }
        // Then whatever else waits, while it fits.
        while let Ok(ev) = outbox.try_recv() {
            if let Some(json) = batch.add(to_json(&ev), &counters) {
                carry = Some(json);
                break;
            }
        }
        // The drops so far come before the next payload's events: report them with this one.
        let full = counters.queue_full.load(Ordering::Relaxed);
        if full > queue_full_seen {
            tracing::warn!(
                events = full - queue_full_seen,
                "NOTIFY queue full: events not sent to the other processes"
            );
            batch.missed += full - queue_full_seen;
            queue_full_seen = full;
        }
        if batch.n == 0 && batch.missed == 0 {
            continue;
        }
        let sent = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(payload(origin, batch.missed, &batch.body))
            .execute(&pool)
            .await;
        match sent {
            Ok(_) => batch.missed = 0,
            Err(sqlx::Error::PoolClosed) => {
                tracing::warn!(
                    "the store was closed: events are no longer sent to the other processes"
                );
                counters.not_sent.fetch_add(batch.n, Ordering::Relaxed);
                break;
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    events = batch.n,
                    "NOTIFY failed: events not sent to the other processes"
                );
                counters.not_sent.fetch_add(batch.n, Ordering::Relaxed);
                // Reported with the next payload that goes through.
                batch.missed += batch.n;
                // Do not spin on a database that is down; the queue absorbs (then drops).
                if !stopping {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        batch.body.clear();
        batch.n = 0;
    }
}

/// The payload being filled.
#[derive(Default)]
struct Batch {
    /// Serialized events joined with commas.
    body: String,
    /// Events in `body`.
    n: u64,
    /// Events not sent and not yet reported to the other processes.
    missed: u64,
}

impl Batch {
    /// Adds one serialized event; gives it back if it does not fit (send this payload first).
    fn add(&mut self, json: String, counters: &Counters) -> Option<String> {
        if json.is_empty() || json.len() > MAX_EVENTS_BYTES {
            tracing::warn!(
                bytes = json.len(),
                "event too big for a NOTIFY payload: the other processes are told they missed one"
            );
            counters.not_sent.fetch_add(1, Ordering::Relaxed);
            self.missed += 1;
            return None;
        }
        let sep = usize::from(!self.body.is_empty());
        if self.body.len() + sep + json.len() > MAX_EVENTS_BYTES {
            return Some(json);
        }
        if sep == 1 {
            self.body.push(',');
        }
        self.body.push_str(&json);
        self.n += 1;
        None
    }
}

fn to_json(ev: &Event) -> String {
    // Serializing an `Event` cannot fail (string keys, no maps); if it did, the empty string
    // is counted as not sent.
    serde_json::to_string(ev).unwrap_or_default()
}

/// Receives the other processes' payloads and rebroadcasts their events here.
async fn listen_loop(
    mut listener: PgListener,
    origin: u64,
    local: broadcast::Sender<Msg>,
    mut stop: watch::Receiver<bool>,
) {
    let mut down_since_gap = false;
    let mut backoff = Duration::from_millis(100);
    loop {
        let got = tokio::select! {
            // Set, or the last handle was dropped.
            _ = stop.changed() => return,
            got = listener.try_recv() => got,
        };
        match got {
            Ok(Some(n)) => {
                down_since_gap = false;
                backoff = Duration::from_millis(100);
                rebroadcast(n.payload(), origin, &local);
            }
            // The connection was lost and is open again: what was sent meanwhile is gone.
            Ok(None) => {
                tracing::warn!("event bus: LISTEN connection lost and re-established");
                let _ = local.send(Msg::RemoteGap);
            }
            Err(e) => {
                if !down_since_gap {
                    tracing::warn!(error = %e, "event bus: LISTEN connection down; retrying");
                    let _ = local.send(Msg::RemoteGap);
                    down_since_gap = true;
                }
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

fn rebroadcast(payload: &str, origin: u64, local: &broadcast::Sender<Msg>) {
    let p: Payload = match serde_json::from_str(payload) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "event bus: unreadable NOTIFY payload");
            let _ = local.send(Msg::RemoteGap);
            return;
        }
    };
    if p.origin == origin {
        // Ours: the local subscribers had these from `publish`.
        return;
    }
    let mut gap = p.missed > 0;
    for v in p.events {
        match serde_json::from_value::<Event>(v) {
            Ok(e) => {
                let _ = local.send(Msg::Event(Arc::new(e)));
            }
            Err(e) => {
                tracing::warn!(error = %e, "event bus: unknown event from another process");
                gap = true;
            }
        }
    }
    // After the payload's events: the lost ones were published before they were sent.
    if gap {
        let _ = local.send(Msg::RemoteGap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_model::{BuildRequestId, ChangeId};

    fn change(i: i64) -> Event {
        Event::ChangeNew {
            change: ChangeId(i),
        }
    }

    #[test]
    fn a_payload_fits_notify_and_round_trips() {
        let events = [
            change(1),
            Event::BuildRequestCancelled {
                request: BuildRequestId(2),
            },
        ];
        let body: Vec<String> = events.iter().map(to_json).collect();
        let p = payload(u64::MAX, u64::MAX, &"x".repeat(MAX_EVENTS_BYTES));
        assert!(p.len() < 8000, "{}", p.len());
        let p = payload(7, 0, &body.join(","));
        let (tx, mut rx) = broadcast::channel(8);
        rebroadcast(&p, 7, &tx);
        assert!(rx.try_recv().is_err(), "its own payload is skipped");
        rebroadcast(&p, 8, &tx);
        for e in events {
            assert!(matches!(rx.try_recv().unwrap(), Msg::Event(got) if *got == e));
        }
        assert!(rx.try_recv().is_err(), "no gap");
    }

    #[test]
    fn missed_and_unknown_events_are_reported_after_the_payload() {
        let (tx, mut rx) = broadcast::channel(8);
        let p = format!(
            r#"{{"origin":1,"missed":0,"events":[{},{{"event":"from_the_future"}}]}}"#,
            to_json(&change(1))
        );
        rebroadcast(&p, 2, &tx);
        assert!(matches!(rx.try_recv().unwrap(), Msg::Event(e) if *e == change(1)));
        assert!(matches!(rx.try_recv().unwrap(), Msg::RemoteGap));
        rebroadcast(&payload(1, 3, ""), 2, &tx);
        assert!(matches!(rx.try_recv().unwrap(), Msg::RemoteGap));
        rebroadcast("not json", 2, &tx);
        assert!(matches!(rx.try_recv().unwrap(), Msg::RemoteGap));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn origins_differ() {
        assert_ne!(new_origin(), new_origin());
        assert!(!EventBus::in_process(1).is_shared());
    }
}
