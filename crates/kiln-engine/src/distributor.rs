//! Which pending build requests start now, and on which workers.
//!
//! [`distribute`] is a pure function of a snapshot (pending requests, builders, workers, running
//! builds, locks, time). The store calls it, then claims what it returns in one transaction.
//!
//! Rules:
//! * A builder's requests go highest request priority first, then oldest, then lowest id.
//! * Builders go highest builder priority first, then highest head-request priority. Among equals
//!   the distribution is round-robin: a builder that already started a build in this pass
//!   waits until every other equal builder had its turn; then the oldest head request goes first.
//!   So one builder with 100 queued requests cannot take every free slot.
//!   (Buildbot's default sorts builders by their highest request priority, then oldest request,
//!   then name, and lets each builder fill all its idle workers in turn; it has no builder
//!   priority. Kiln adds the builder priority and the round-robin.)
//! * A worker runs at most `max_builds` builds, and at most one build of a given builder at a
//!   time (as in Buildbot, where a worker-for-builder is busy or idle).
//! * A worker must be connected, not paused, and outside all its downtime windows.
//! * Every lock of the builder must be available on the chosen worker (see [`LockDef`]).
//! * Among the workers that fit, the least loaded (`running / max_builds`) is chosen, then the
//!   lowest id — deterministic, where Buildbot picks at random.
//! * Collapsing: when a builder with `collapse_requests` starts a request that has a
//!   [`CollapseKey`], every pending request of that builder with the same key is merged: the
//!   newest of the group starts (so the build uses the newest revision) and the others are
//!   returned in `collapsed` for the store to complete as SKIPPED. Buildbot collapses when a
//!   request is submitted; collapsing at start-time gives the same queue, one build at the
//!   newest revision, and keeps the history of what was merged.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Datelike, Duration, NaiveTime, TimeZone, Timelike, Weekday};
use chrono_tz::Tz;
use kiln_model::{BuildRequestId, BuilderId, Epoch, SourceStamp, WorkerId};

/// What makes two requests of one builder mergeable. Build it with [`collapse_key`] (Buildbot's
/// default rule) or any other rule; requests without a key never collapse.
pub type CollapseKey = String;

/// One codebase's part of a request's sources, for [`collapse_key`]: the stamp and what
/// came with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceForCollapse<'a> {
    pub stamp: &'a SourceStamp,
    pub has_patch: bool,
    /// Whether the sourcestamp came with changes (then revisions may differ: the newest wins).
    pub has_changes: bool,
}

/// Buildbot's default `collapseRequests` rule as a key: same codebases, and per codebase the same
/// repository, branch and project; no patch; if it has changes, any revision, else the same
/// revision; and the same scheduler-set properties (pass them already filtered, e.g. as JSON).
pub fn collapse_key(
    sources: &[SourceForCollapse<'_>],
    buildset_properties: &str,
) -> Option<CollapseKey> {
    let mut parts: Vec<String> = Vec::new();
    for s in sources {
        if s.has_patch {
            return None;
        }
        let ss = s.stamp;
        let rev = if s.has_changes {
            "*changes*".to_string()
        } else {
            format!("rev={:?}", ss.revision)
        };
        parts.push(format!(
            "{:?}|{:?}|{:?}|{:?}|{}",
            ss.codebase, ss.repository, ss.branch, ss.project, rev
        ));
    }
    parts.sort();
    Some(format!("{}#{}", parts.join(";"), buildset_properties))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRequest {
    pub id: BuildRequestId,
    pub builder: BuilderId,
    pub priority: i64,
    pub submitted_at: Epoch,
    pub collapse_key: Option<CollapseKey>,
}

/// Whether a builder takes a lock shared (counting) or alone (exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LockAccess {
    Counting,
    Exclusive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LockScope {
    /// One lock for the whole farm (Buildbot's `MasterLock`).
    Master,
    /// One lock per worker (Buildbot's `WorkerLock`).
    Worker,
}

/// A lock: up to `max_count` counting holders, or one exclusive holder and nobody else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockDef {
    pub name: String,
    pub scope: LockScope,
    pub max_count: u32,
    /// For worker locks: a per-worker `max_count` (Buildbot's `maxCountForWorker`).
    pub max_count_for_worker: BTreeMap<WorkerId, u32>,
}

impl LockDef {
    fn max_for(&self, worker: WorkerId) -> u32 {
        match self.scope {
            LockScope::Master => self.max_count,
            LockScope::Worker => self
                .max_count_for_worker
                .get(&worker)
                .copied()
                .unwrap_or(self.max_count),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuilderDef {
    pub id: BuilderId,
    pub workers: Vec<WorkerId>,
    pub priority: i64,
    pub collapse_requests: bool,
    /// (lock name, access) pairs the builder takes for a whole build.
    pub locks: Vec<(String, LockAccess)>,
}

/// A weekly window during which a worker takes no new builds ("not 22:00–08:00 UTC",
/// "Wednesdays 08:00–10:00 America/Los_Angeles"). A window whose end is not after its start
/// runs over midnight; `days` (empty = every day) names the day the window starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downtime {
    pub days: Vec<Weekday>,
    pub start: NaiveTime,
    pub end: NaiveTime,
    pub tz: Tz,
}

impl Downtime {
    /// The next instant after `now` at which this window starts or ends (within 8 days), so
    /// the master knows when to run the distributor again. A boundary that falls in a DST gap
    /// is taken at the first instant after the gap.
    pub fn next_boundary(&self, now: Epoch) -> Option<Epoch> {
        let local = DateTime::from_timestamp(now, 0)?.with_timezone(&self.tz);
        let mut best: Option<Epoch> = None;
        for day in 0..=8 {
            let date = local.date_naive() + Duration::days(day);
            for t in [self.start, self.end] {
                let naive = date.and_time(t);
                let at = match self.tz.from_local_datetime(&naive) {
                    chrono::LocalResult::Single(d) => d.timestamp(),
                    chrono::LocalResult::Ambiguous(a, _) => a.timestamp(),
                    // In a gap: the first instant after it (gaps are at most a few hours).
                    chrono::LocalResult::None => (1..=4 * 60)
                        .find_map(|m| {
                            self.tz
                                .from_local_datetime(&(naive + Duration::minutes(m)))
                                .earliest()
                        })
                        .map(|d| d.timestamp() - d.timestamp() % 60)?,
                };
                if at > now && best.is_none_or(|b| at < b) {
                    best = Some(at);
                }
            }
        }
        best
    }

    pub fn contains(&self, now: Epoch) -> bool {
        let Some(utc) = DateTime::from_timestamp(now, 0) else {
            return false;
        };
        let local = utc.with_timezone(&self.tz);
        let t = NaiveTime::from_hms_opt(local.hour(), local.minute(), local.second())
            .unwrap_or_default();
        let day_ok = |d: Weekday| self.days.is_empty() || self.days.contains(&d);
        let today = local.weekday();
        if self.start < self.end {
            day_ok(today) && t >= self.start && t < self.end
        } else {
            let yesterday = (local - Duration::days(1)).weekday();
            (day_ok(today) && t >= self.start) || (day_ok(yesterday) && t < self.end)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerState {
    pub id: WorkerId,
    pub connected: bool,
    pub paused: bool,
    pub max_builds: u32,
    pub downtime: Vec<Downtime>,
    /// No new builds before this time (see [`Quarantine`]).
    pub quarantined_until: Option<Epoch>,
}

impl WorkerState {
    pub fn available(&self, now: Epoch) -> bool {
        self.connected
            && !self.paused
            && self.quarantined_until.is_none_or(|t| now >= t)
            && !self.downtime.iter().any(|d| d.contains(now))
    }
}

/// Buildbot's worker quarantine: a build that ends in EXCEPTION keeps its worker out of
/// distribution for a while (10 s, doubling up to an hour), so the next build tries another
/// worker; a build that ends in anything but EXCEPTION or RETRY resets the back-off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantine {
    pub next_timeout: i64,
    pub until: Option<Epoch>,
}

impl Default for Quarantine {
    fn default() -> Self {
        Quarantine {
            next_timeout: Self::INITIAL,
            until: None,
        }
    }
}

impl Quarantine {
    pub const INITIAL: i64 = 10;
    pub const MAX: i64 = 3600;

    pub fn build_finished(&mut self, results: kiln_model::Results, now: Epoch) {
        use kiln_model::Results;
        match results {
            Results::Exception => {
                if self.until.is_some_and(|t| now < t) {
                    return; // already in quarantine
                }
                self.until = Some(now + self.next_timeout);
                self.next_timeout = (self.next_timeout * 2).min(Self::MAX);
            }
            Results::Retry => {}
            _ => self.next_timeout = Self::INITIAL,
        }
    }

    pub fn active_until(&self, now: Epoch) -> Option<Epoch> {
        self.until.filter(|t| now < *t)
    }
}

/// When the distributor should next run because a worker's downtime starts or ends or its
/// quarantine ends.
pub fn next_availability_change(workers: &[WorkerState], now: Epoch) -> Option<Epoch> {
    let windows = workers
        .iter()
        .flat_map(|w| w.downtime.iter())
        .filter_map(|d| d.next_boundary(now));
    let quarantines = workers
        .iter()
        .filter_map(|w| w.quarantined_until)
        .filter(|t| *t > now);
    windows.chain(quarantines).min()
}

/// A build in progress, holding its builder's locks on its worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningBuild {
    pub builder: BuilderId,
    pub worker: WorkerId,
}

/// A snapshot of everything the distributor looks at.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub pending: Vec<PendingRequest>,
    pub builders: Vec<BuilderDef>,
    pub workers: Vec<WorkerState>,
    pub running: Vec<RunningBuild>,
    pub locks: Vec<LockDef>,
}

/// Start `request` for `builder` on `worker`; `collapsed` are merged into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub request: BuildRequestId,
    pub builder: BuilderId,
    pub worker: WorkerId,
    pub collapsed: Vec<BuildRequestId>,
}

#[derive(Default)]
struct LockUse {
    counting: u32,
    exclusive: u32,
}

struct State<'a> {
    locks: HashMap<&'a str, &'a LockDef>,
    usage: HashMap<(String, Option<WorkerId>), LockUse>,
    load: HashMap<WorkerId, u32>,
    busy_pairs: BTreeSet<(BuilderId, WorkerId)>,
}

impl<'a> State<'a> {
    fn key(lock: &LockDef, worker: WorkerId) -> (String, Option<WorkerId>) {
        (
            lock.name.clone(),
            if lock.scope == LockScope::Worker {
                Some(worker)
            } else {
                None
            },
        )
    }

    fn locks_free(&self, builder: &BuilderDef, worker: WorkerId) -> bool {
        builder.locks.iter().all(|(name, access)| {
            // An unknown lock cannot be taken: the config crate rejects it earlier.
            let Some(def) = self.locks.get(name.as_str()) else {
                return false;
            };
            let used = self.usage.get(&Self::key(def, worker));
            let (c, e) = used.map(|u| (u.counting, u.exclusive)).unwrap_or((0, 0));
            match access {
                LockAccess::Counting => e == 0 && c < def.max_for(worker),
                LockAccess::Exclusive => e == 0 && c == 0 && def.max_for(worker) > 0,
            }
        })
    }

    fn take(&mut self, builder: &BuilderDef, worker: WorkerId) {
        *self.load.entry(worker).or_default() += 1;
        self.busy_pairs.insert((builder.id, worker));
        for (name, access) in &builder.locks {
            if let Some(def) = self.locks.get(name.as_str()) {
                let u = self.usage.entry(Self::key(def, worker)).or_default();
                match access {
                    LockAccess::Counting => u.counting += 1,
                    LockAccess::Exclusive => u.exclusive += 1,
                }
            }
        }
    }
}

/// Decides which requests start now and where. See the module documentation for the rules.
pub fn distribute(snapshot: &Snapshot, now: Epoch) -> Vec<Assignment> {
    let builders: HashMap<BuilderId, &BuilderDef> =
        snapshot.builders.iter().map(|b| (b.id, b)).collect();
    let workers: HashMap<WorkerId, &WorkerState> =
        snapshot.workers.iter().map(|w| (w.id, w)).collect();
    let mut st = State {
        locks: snapshot
            .locks
            .iter()
            .map(|l| (l.name.as_str(), l))
            .collect(),
        usage: HashMap::new(),
        load: HashMap::new(),
        busy_pairs: BTreeSet::new(),
    };
    for r in &snapshot.running {
        match builders.get(&r.builder) {
            Some(b) => st.take(b, r.worker),
            None => *st.load.entry(r.worker).or_default() += 1,
        }
    }

    // Per builder: its queue, best request first.
    let mut queues: BTreeMap<BuilderId, Vec<&PendingRequest>> = BTreeMap::new();
    for p in &snapshot.pending {
        if builders.contains_key(&p.builder) {
            queues.entry(p.builder).or_default().push(p);
        }
    }
    for q in queues.values_mut() {
        q.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then(a.submitted_at.cmp(&b.submitted_at))
                .then(a.id.cmp(&b.id))
        });
    }

    let mut started: HashMap<BuilderId, u32> = HashMap::new();
    let mut blocked: BTreeSet<BuilderId> = BTreeSet::new();
    let mut out = Vec::new();
    let mut free_slots: u64 = snapshot
        .workers
        .iter()
        .filter(|w| w.available(now))
        .map(|w| {
            w.max_builds
                .saturating_sub(st.load.get(&w.id).copied().unwrap_or(0)) as u64
        })
        .sum();
    while free_slots > 0 {
        // The next builder to serve.
        let next = queues
            .iter()
            .filter(|(b, q)| !q.is_empty() && !blocked.contains(b))
            .min_by_key(|(b, q)| {
                let head = q[0];
                (
                    -builders[b].priority,
                    -head.priority,
                    started.get(b).copied().unwrap_or(0),
                    head.submitted_at,
                    head.id,
                )
            })
            .map(|(b, _)| *b);
        let Some(bid) = next else { break };
        let builder = builders[&bid];

        let worker = builder
            .workers
            .iter()
            .filter_map(|w| workers.get(w))
            .filter(|w| w.available(now))
            .filter(|w| st.load.get(&w.id).copied().unwrap_or(0) < w.max_builds)
            .filter(|w| !st.busy_pairs.contains(&(bid, w.id)))
            .filter(|w| st.locks_free(builder, w.id))
            .min_by(|a, b| {
                let la = st.load.get(&a.id).copied().unwrap_or(0) as u64 * b.max_builds as u64;
                let lb = st.load.get(&b.id).copied().unwrap_or(0) as u64 * a.max_builds as u64;
                la.cmp(&lb).then(a.id.cmp(&b.id))
            })
            .map(|w| w.id);
        let Some(wid) = worker else {
            blocked.insert(bid);
            continue;
        };

        let queue = queues.get_mut(&bid).expect("builder has a queue");
        let head = queue.remove(0);
        let mut group = vec![head];
        if builder.collapse_requests
            && let Some(key) = &head.collapse_key
        {
            let (same, rest): (Vec<_>, Vec<_>) = queue
                .drain(..)
                .partition(|p| p.collapse_key.as_ref() == Some(key));
            *queue = rest;
            group.extend(same);
        }
        // The newest of the group starts; the rest are merged into it.
        let newest = *group
            .iter()
            .max_by_key(|p| (p.submitted_at, p.id))
            .expect("group is not empty");
        let mut collapsed: Vec<BuildRequestId> = group
            .iter()
            .filter(|p| p.id != newest.id)
            .map(|p| p.id)
            .collect();
        collapsed.sort();
        st.take(builder, wid);
        *started.entry(bid).or_default() += 1;
        free_slots -= 1;
        out.push(Assignment {
            request: newest.id,
            builder: bid,
            worker: wid,
            collapsed,
        });
    }
    out
}
