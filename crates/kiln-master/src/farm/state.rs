//! The farm's state, owned by the farm task alone, and the pure functions that read it: the
//! distributor's view of the farm ([`FarmState::snapshot`]) and who may log in
//! ([`roster_entries`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, OnceLock};
use tokio::time::Instant;

use kiln_config::MasterConfig;
use kiln_engine::distributor::{
    BuilderDef, LockAccess, LockDef, LockScope, Quarantine, RunningBuild, Snapshot, WorkerState,
};
use kiln_model::{BuildId, BuildRequestId, BuilderId, Epoch, WorkerId};
use kiln_remote::{PasswordCheck, Roster, WorkerEntry, Workers};
use tokio::sync::watch;

use crate::sched::{self, SchedulerSet};

/// A build this master runs.
pub(super) struct Running {
    pub builder: BuilderId,
    pub worker: WorkerId,
    /// Set by the build task once its build row exists.
    pub build: Arc<OnceLock<BuildId>>,
    pub stop: watch::Sender<Option<String>>,
}

/// Builder and worker ids by name, as stored.
#[derive(Default)]
pub(super) struct Ids {
    pub builders: BTreeMap<String, BuilderId>,
    pub workers: BTreeMap<String, WorkerId>,
}

impl Ids {
    pub fn builder_name(&self, id: BuilderId) -> Option<&str> {
        self.builders
            .iter()
            .find(|(_, v)| **v == id)
            .map(|(k, _)| k.as_str())
    }

    pub fn worker_name(&self, id: WorkerId) -> Option<&str> {
        self.workers
            .iter()
            .find(|(_, v)| **v == id)
            .map(|(k, _)| k.as_str())
    }
}

pub(super) struct FarmState {
    /// The config in force; readers outside the task see it through `config_tx`.
    pub config: Arc<MasterConfig>,
    pub config_tx: watch::Sender<Arc<MasterConfig>>,
    pub roster: Roster,
    pub ids: Ids,
    pub running: HashMap<BuildRequestId, Running>,
    pub quarantine: HashMap<WorkerId, Quarantine>,
    /// Workers outside their availability windows at the last look (for `WorkerPaused`).
    pub paused: HashSet<WorkerId>,
    pub scheds: SchedulerSet,
    /// Whether any `dependent` scheduler is configured (finished buildsets are looked at
    /// only then).
    pub has_dependents: bool,
    /// Scheduling and distribution are due (something changed, or a second passed).
    pub round_due: bool,
    /// When to hand freed memory back (workers came or went: a burst may have left a peak).
    pub trim_at: Option<Instant>,
}

impl FarmState {
    pub fn new(config_tx: watch::Sender<Arc<MasterConfig>>, roster: Roster, now: Epoch) -> Self {
        let config = config_tx.borrow().clone();
        FarmState {
            scheds: sched::build(&config, now),
            has_dependents: has_dependents(&config),
            config,
            config_tx,
            roster,
            ids: Ids::default(),
            running: HashMap::new(),
            quarantine: HashMap::new(),
            paused: HashSet::new(),
            round_due: true,
            trim_at: None,
        }
    }

    /// Puts `config` in force for new builds (running ones keep theirs).
    pub fn set_config(&mut self, config: Arc<MasterConfig>) {
        self.roster.replace(roster_entries(&config));
        self.has_dependents = has_dependents(&config);
        self.config_tx.send_replace(config.clone());
        self.config = config;
    }

    /// The farm as the distributor sees it (its `pending` is left empty), and which workers'
    /// paused state changed since the last look.
    pub fn snapshot(
        &mut self,
        workers: &Workers,
        now: chrono::DateTime<chrono::Utc>,
    ) -> (Snapshot, Vec<(WorkerId, bool)>) {
        let cfg = &self.config;
        let worker_states: Vec<WorkerState> = cfg
            .workers
            .iter()
            .filter_map(|w| {
                let id = *self.ids.workers.get(&w.name)?;
                Some(WorkerState {
                    id,
                    connected: workers.get(&w.name).is_some(),
                    paused: !w.availability.iter().all(|a| a.allows(now)),
                    max_builds: w.max_builds.unwrap_or(u32::MAX),
                    downtime: Vec::new(),
                    quarantined_until: self.quarantine.get(&id).and_then(|q| q.until),
                })
            })
            .collect();
        let mut changed = Vec::new();
        for w in &worker_states {
            if w.paused != self.paused.contains(&w.id) {
                changed.push((w.id, w.paused));
            }
        }
        self.paused = worker_states
            .iter()
            .filter(|w| w.paused)
            .map(|w| w.id)
            .collect();
        let snapshot = Snapshot {
            pending: Vec::new(),
            builders: builder_defs(cfg, &self.ids),
            workers: worker_states,
            running: self
                .running
                .values()
                .map(|r| RunningBuild {
                    builder: r.builder,
                    worker: r.worker,
                })
                .collect(),
            locks: lock_defs(cfg, &self.ids),
        };
        (snapshot, changed)
    }
}

fn builder_defs(cfg: &MasterConfig, ids: &Ids) -> Vec<BuilderDef> {
    cfg.builders
        .iter()
        .filter_map(|b| {
            Some(BuilderDef {
                id: *ids.builders.get(&b.name)?,
                workers: b
                    .workers
                    .iter()
                    .filter_map(|w| ids.workers.get(w).copied())
                    .collect(),
                priority: b.priority,
                collapse_requests: b.collapse_requests,
                locks: b
                    .locks
                    .iter()
                    .map(|l| {
                        let access = match l.access {
                            kiln_config::AccessMode::Exclusive => LockAccess::Exclusive,
                            _ => LockAccess::Counting,
                        };
                        (l.lock.name.clone(), access)
                    })
                    .collect(),
            })
        })
        .collect()
}

fn lock_defs(cfg: &MasterConfig, ids: &Ids) -> Vec<LockDef> {
    cfg.locks
        .values()
        .map(|l| LockDef {
            name: l.name.clone(),
            scope: match l.scope {
                kiln_config::LockScope::Master => LockScope::Master,
                _ => LockScope::Worker,
            },
            max_count: l.max_count,
            max_count_for_worker: l
                .max_count_for_worker
                .iter()
                .filter_map(|(w, n)| Some((*ids.workers.get(w)?, *n)))
                .collect(),
        })
        .collect()
}

/// Who may log in: every configured worker with a password (a missing secret leaves the
/// worker out), and the builder directories its attach sequence creates.
pub(super) fn roster_entries(config: &MasterConfig) -> HashMap<String, WorkerEntry> {
    let mut out = HashMap::new();
    for w in &config.workers {
        let password = match (&w.password, &w.password_hash) {
            (_, Some(hash)) => PasswordCheck::Argon2(hash.clone()),
            (Some(s), None) => match config.secrets.get(&s.name) {
                Some(v) => PasswordCheck::Plain(v.to_string()),
                None => continue,
            },
            (None, None) => continue,
        };
        let mut dirs: Vec<String> = config
            .builders
            .iter()
            .filter(|b| b.workers.contains(&w.name))
            .map(|b| b.builddir.clone().unwrap_or_else(|| b.name.clone()))
            .collect();
        dirs.sort();
        dirs.dedup();
        out.insert(
            w.name.clone(),
            WorkerEntry {
                password,
                builder_dirs: dirs,
            },
        );
    }
    out
}

fn has_dependents(config: &MasterConfig) -> bool {
    config
        .schedulers
        .iter()
        .any(|s| matches!(s.kind, kiln_config::SchedulerKind::Dependent(_)))
}
