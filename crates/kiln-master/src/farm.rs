//! The running master core: loads `master.star`, opens the store, recovers after a crash,
//! runs schedulers and the distribution loop, and applies `reconfig` in place. Workers come
//! and go through the [`Workers`] registry (an endpoint fills it); the ports are bound by the
//! `kiln` binary.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use kiln_config::{ConfigDiff, MasterConfig};
use kiln_engine::Clock as _;
use kiln_engine::distributor::{
    Assignment, BuilderDef, LockAccess, LockDef, LockScope, Quarantine, RunningBuild, Snapshot,
    WorkerState,
};
use kiln_engine::queue::{self, Bus, Event};
use kiln_engine::schedulers::{BuildsetRequest, CompletedBuildset, SourceSpec};
use kiln_model::{
    BuildId, BuildRequestId, BuilderId, BuildsetId, ChangeId, Epoch, MasterId, Properties, Results,
    WorkerId,
};
use kiln_store::{QueueStore, Store, StoreOptions};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

use kiln_remote::{BoxFuture, PasswordCheck, Roster, WorkerEntry, WorkerEvent, Workers};

use crate::control::{ChangeRequest, Control, ControlError, ForceRequest};
use crate::runner::{self, Claimed};
use crate::sched::{self, SchedulerSet};

#[derive(Debug, Clone)]
pub struct FarmOptions {
    /// The master directory (holds `master.star`, the SQLite file by default, uploads, logs).
    pub basedir: PathBuf,
    /// Defaults to `basedir/master.star`.
    pub config_file: Option<PathBuf>,
}

impl FarmOptions {
    pub fn new(basedir: impl Into<PathBuf>) -> FarmOptions {
        FarmOptions {
            basedir: basedir.into(),
            config_file: None,
        }
    }
}

/// What a reconfig changed, for the log and the `kiln reconfig` output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconfigReport {
    pub summary: String,
}

/// A build this master runs (claimed; `build` is set once its row exists).
struct Running {
    builder: BuilderId,
    worker: WorkerId,
    build: Option<BuildId>,
    stop: watch::Sender<Option<String>>,
}

/// Events go to the log at debug level; the web issue adds live subscribers.
struct LogBus;

impl Bus for LogBus {
    fn publish(&self, event: Event) {
        tracing::debug!(?event, "event");
    }
}

pub(crate) struct Inner {
    pub(crate) basedir: PathBuf,
    config_file: PathBuf,
    pub(crate) store: Store,
    pub(crate) queue: QueueStore,
    pub(crate) master_id: MasterId,
    config: RwLock<Arc<MasterConfig>>,
    builder_ids: RwLock<BTreeMap<String, BuilderId>>,
    worker_ids: RwLock<BTreeMap<String, WorkerId>>,
    pub(crate) workers: Workers,
    roster: Roster,
    running: Mutex<HashMap<BuildRequestId, Running>>,
    quarantine: Mutex<HashMap<WorkerId, Quarantine>>,
    wake: Notify,
    buildset_done: Notify,
    scheds: tokio::sync::Mutex<SchedulerSet>,
    clock: kiln_engine::SystemClock,
    reconfig_lock: tokio::sync::Mutex<()>,
    pub(crate) metrics: crate::Metrics,
    pub(crate) step_locks: crate::locks::StepLocks,
    /// Whether any `dependent` scheduler is configured (finished buildsets are looked at
    /// only then).
    has_dependents: std::sync::atomic::AtomicBool,
    /// Set when workers came or went: the memory trimmer runs at its next tick.
    trim_wanted: std::sync::atomic::AtomicBool,
}

/// A started master core. Dropping it does not stop it; call [`Farm::shutdown`].
pub struct Farm {
    inner: Arc<Inner>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// `sqlite:state.sqlite` is relative to the master directory.
fn resolve_db_url(url: &str, basedir: &Path) -> String {
    if let Some(rest) = url.strip_prefix("sqlite:") {
        let path = rest.trim_start_matches("//");
        let (file, query) = path
            .split_once('?')
            .map_or((path, None), |(f, q)| (f, Some(q)));
        if !file.starts_with('/') && !file.is_empty() {
            let abs = basedir.join(file);
            return match query {
                Some(q) => format!("sqlite:{}?{q}", abs.display()),
                None => format!("sqlite:{}", abs.display()),
            };
        }
        return format!("sqlite:{}", path);
    }
    url.to_string()
}

fn roster_entries(config: &MasterConfig) -> HashMap<String, WorkerEntry> {
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

/// In the `kiln` binary the Starlark evaluation runs in a child process (see
/// [`crate::config_proc`]), so the master never holds Starlark's code or heap.
fn load_config(file: &Path) -> Result<MasterConfig, kiln_config::ConfigError> {
    crate::config_proc::load(file)
}

impl Farm {
    /// Loads the config (an error carries file:line:col), opens and migrates the store,
    /// requeues what a crashed master left and starts every loop.
    pub async fn start(opts: FarmOptions) -> anyhow::Result<Farm> {
        let basedir = std::path::absolute(&opts.basedir)
            .with_context(|| format!("master directory {}", opts.basedir.display()))?;
        let config_file = opts
            .config_file
            .clone()
            .unwrap_or_else(|| basedir.join("master.star"));
        // In-process (tests, embedders) Starlark's evaluation allocates a lot and frees it;
        // a thread of its own lets the allocator give that back when it ends. In `kiln` the
        // thread only waits for the evaluating child.
        let config = {
            let file = config_file.clone();
            std::thread::Builder::new()
                .name("kiln-config".into())
                // Generous, like a main thread's: configs may nest function calls deeply.
                .stack_size(8 << 20)
                .spawn(move || load_config(&file))?
                .join()
                .map_err(|_| anyhow::anyhow!("loading {} panicked", config_file.display()))?
        }
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let db_url = resolve_db_url(&config.master.db_url, &basedir);
        let store_opts = StoreOptions {
            log_max_bytes: config.master.log_max_bytes,
            ..StoreOptions::default()
        };
        let store = Store::connect_with(&db_url, store_opts)
            .await
            .with_context(|| format!("opening the database {}", config.master.db_url))?;
        let clock = kiln_engine::SystemClock;
        let now = clock.now();
        let host = nix_hostname();
        let master_name = format!("{host}:{}", basedir.display());
        let master_id = store.register_master(&master_name, now).await?;
        let rec = store.recover_after_crash(master_id, now).await?;
        if rec.builds + rec.requests_requeued > 0 {
            tracing::warn!(
                "recovered after an unclean stop: {} unfinished builds marked RETRY, {} requests back in the queue",
                rec.builds,
                rec.requests_requeued
            );
        }

        let roster = Roster::new(roster_entries(&config));
        let (workers, events_rx) = Workers::new();

        let scheds = sched::build(&config, now);
        let config_arc = Arc::new(config);
        let inner = Arc::new(Inner {
            basedir: basedir.clone(),
            config_file,
            queue: QueueStore::cached(store.clone(), master_id, Duration::from_secs(1)),
            store,
            master_id,
            config: RwLock::new(config_arc.clone()),
            builder_ids: RwLock::new(BTreeMap::new()),
            worker_ids: RwLock::new(BTreeMap::new()),
            workers,
            roster,
            running: Mutex::new(HashMap::new()),
            quarantine: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            buildset_done: Notify::new(),
            scheds: tokio::sync::Mutex::new(scheds),
            clock,
            reconfig_lock: tokio::sync::Mutex::new(()),
            metrics: crate::Metrics::new(),
            step_locks: crate::locks::StepLocks::default(),
            has_dependents: std::sync::atomic::AtomicBool::new(has_dependents(&config_arc)),
            trim_wanted: std::sync::atomic::AtomicBool::new(false),
        });
        inner.sync_ids().await?;

        let (shutdown, shutdown_rx) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(worker_events(inner.clone(), events_rx, shutdown_rx.clone())),
            tokio::spawn(distribute_loop(inner.clone(), shutdown_rx.clone())),
            tokio::spawn(heartbeat(inner.clone(), shutdown_rx.clone())),
            tokio::spawn(janitor(inner.clone(), shutdown_rx.clone())),
            tokio::spawn(memory_trimmer(inner.clone(), shutdown_rx.clone())),
        ];
        inner.wake.notify_one();
        release_freed_memory();
        Ok(Farm {
            inner,
            shutdown,
            tasks,
        })
    }

    /// The config in force now.
    pub fn config(&self) -> Arc<MasterConfig> {
        self.inner.config()
    }

    /// The master directory (absolute).
    pub fn basedir(&self) -> &Path {
        &self.inner.basedir
    }

    /// Who may log in, kept current on reconfig: an endpoint checks logins against it.
    pub fn roster(&self) -> &Roster {
        &self.inner.roster
    }

    /// The registry an endpoint attaches workers to.
    pub fn workers(&self) -> &Workers {
        &self.inner.workers
    }

    pub fn metrics(&self) -> &crate::Metrics {
        &self.inner.metrics
    }

    /// Re-reads `master.star` and applies the difference. A broken file is rejected with its
    /// error and the running config stays.
    pub async fn reconfig(&self) -> Result<ReconfigReport, kiln_config::ConfigError> {
        self.inner.reconfig().await
    }

    pub fn control(&self) -> Arc<dyn Control> {
        Arc::new(MasterControl(self.inner.clone()))
    }

    /// The database this master uses (tests and the quickstart read results from it).
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Stops accepting work, disconnects workers (their builds end RETRY and are requeued by
    /// the next start), closes the store.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        self.inner.workers.disconnect_all();
        // Give running builds a moment to record the lost worker (RETRY, requeued).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !self.inner.running.lock().expect("running lock").is_empty()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for t in self.tasks {
            t.abort();
        }
        // Anything still claimed goes back to the queue for the next start.
        if let Ok(ids) = self.inner.store.claimed_by(self.inner.master_id).await {
            let _ = self
                .inner
                .store
                .unclaim_build_requests(self.inner.master_id, &ids)
                .await;
        }
        let _ = self
            .inner
            .store
            .set_master_inactive(self.inner.master_id)
            .await;
        self.inner.store.close().await;
    }
}

/// Loading the config (Starlark) and migrating the store allocate and free a few MB; give
/// that back to the system so an idle master stays small.
fn release_freed_memory() {
    // The `kiln` binary allocates with mimalloc; tests and embedders may use the system's.
    // SAFETY: both calls only return free memory to the kernel.
    unsafe {
        libmimalloc_sys::mi_collect(true);
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        libc::malloc_trim(0);
    }
}

/// One line: what a reconfig added (+), removed (-) and changed (~).
fn describe(diff: &ConfigDiff) -> String {
    if diff.is_empty() {
        return "no changes".into();
    }
    let mut parts = Vec::new();
    if diff.master_changed {
        parts.push(
            "master settings changed (ports and database apply at the next restart)".to_string(),
        );
    }
    for (what, d) in [
        ("workers", &diff.workers),
        ("builders", &diff.builders),
        ("schedulers", &diff.schedulers),
        ("locks", &diff.locks),
    ] {
        if d.is_empty() {
            continue;
        }
        let mut p = format!("{what}:");
        for (sign, names) in [("+", &d.added), ("-", &d.removed), ("~", &d.changed)] {
            for n in names {
                p.push_str(&format!(" {sign}{n}"));
            }
        }
        parts.push(p);
    }
    parts.join("; ")
}

fn nix_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "localhost".into())
}

async fn heartbeat(inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let _ = inner
            .store
            .heartbeat_master(inner.master_id, inner.now())
            .await;
    }
}

/// Applies the retention horizons once an hour (and once shortly after start). The store
/// deletes in small batches, so builds keep running while it works.
async fn janitor(inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    let mut wait = Duration::from_secs(60);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        wait = Duration::from_secs(3600);
        let m = inner.config().master.clone();
        let now = inner.now();
        let day = 86_400;
        if let Some(days) = m.build_horizon_days {
            match inner
                .store
                .delete_old_builds(now - i64::from(days) * day)
                .await
            {
                Ok(r) if r.builds > 0 => tracing::info!(
                    "janitor: deleted {} builds older than {days} days",
                    r.builds
                ),
                Ok(_) => {}
                Err(e) => tracing::error!("janitor (builds): {e}"),
            }
        }
        if let Some(days) = m.log_horizon_days {
            match inner
                .store
                .delete_old_logs(now - i64::from(days) * day)
                .await
            {
                Ok(r) if r.logs > 0 => {
                    tracing::info!("janitor: deleted {} logs older than {days} days", r.logs)
                }
                Ok(_) => {}
                Err(e) => tracing::error!("janitor (logs): {e}"),
            }
        }
    }
}

/// After a burst (hundreds of workers attaching at once, a big log streamed in) the
/// allocator keeps the freed peak; hand it back to the system once things are quiet again.
async fn memory_trimmer(inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        if inner
            .trim_wanted
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            tokio::task::spawn_blocking(release_freed_memory);
        }
    }
}

async fn worker_events(
    inner: Arc<Inner>,
    mut rx: mpsc::UnboundedReceiver<WorkerEvent>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let ev = tokio::select! {
            ev = rx.recv() => match ev { Some(ev) => ev, None => return },
            _ = shutdown.wait_for(|s| *s) => return,
        };
        match ev {
            WorkerEvent::Attached(conn) => {
                let name = conn.worker_name().to_string();
                match inner.store.upsert_worker(&name, conn.info()).await {
                    Ok(id) => {
                        inner
                            .worker_ids
                            .write()
                            .expect("ids lock")
                            .insert(name.clone(), id);
                        tracing::info!("worker {name} attached from {}", conn.peer());
                    }
                    Err(e) => tracing::error!("storing worker {name}: {e}"),
                }
            }
            WorkerEvent::Detached { name, .. } => tracing::info!("worker {name} detached"),
        }
        inner
            .metrics
            .workers_connected(inner.workers.count() as i64);
        inner
            .trim_wanted
            .store(true, std::sync::atomic::Ordering::Relaxed);
        inner.wake.notify_one();
    }
}

async fn distribute_loop(inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = inner.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let due = {
            let mut s = inner.scheds.lock().await;
            s.events.poll(inner.now())
        };
        for bs in due {
            if let Err(e) = inner.submit(&bs).await {
                tracing::error!("scheduler {}: {e}", bs.scheduler);
            }
        }
        if let Err(e) = inner.dispatch_round().await {
            tracing::error!("distribution: {e}");
        }
    }
}

impl Inner {
    pub(crate) fn config(&self) -> Arc<MasterConfig> {
        self.config.read().expect("config lock").clone()
    }

    pub(crate) fn now(&self) -> Epoch {
        self.clock.now()
    }

    pub(crate) fn builder_name(&self, id: BuilderId) -> Option<String> {
        self.builder_ids
            .read()
            .expect("ids lock")
            .iter()
            .find(|(_, v)| **v == id)
            .map(|(k, _)| k.clone())
    }

    pub(crate) fn worker_name(&self, id: WorkerId) -> Option<String> {
        self.worker_ids
            .read()
            .expect("ids lock")
            .iter()
            .find(|(_, v)| **v == id)
            .map(|(k, _)| k.clone())
    }

    /// Makes sure every configured builder and worker has a row and an id.
    async fn sync_ids(&self) -> anyhow::Result<()> {
        let cfg = self.config();
        let mut b = BTreeMap::new();
        for builder in &cfg.builders {
            let id = self
                .store
                .upsert_builder(&builder.name, builder.description.as_deref(), &builder.tags)
                .await?;
            b.insert(builder.name.clone(), id);
        }
        let mut w = BTreeMap::new();
        for worker in &cfg.workers {
            let id = match self.store.get_worker_by_name(&worker.name).await? {
                Some(row) => row.workerid,
                None => {
                    self.store
                        .upsert_worker(&worker.name, &serde_json::Map::new())
                        .await?
                }
            };
            w.insert(worker.name.clone(), id);
        }
        *self.builder_ids.write().expect("ids lock") = b;
        *self.worker_ids.write().expect("ids lock") = w;
        Ok(())
    }

    fn snapshot(&self, cfg: &MasterConfig) -> Snapshot {
        let bids = self.builder_ids.read().expect("ids lock");
        let wids = self.worker_ids.read().expect("ids lock");
        let now_dt = chrono::Utc::now();
        let builders = cfg
            .builders
            .iter()
            .filter_map(|b| {
                Some(BuilderDef {
                    id: *bids.get(&b.name)?,
                    workers: b
                        .workers
                        .iter()
                        .filter_map(|w| wids.get(w).copied())
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
            .collect();
        let quarantine = self.quarantine.lock().expect("quarantine lock").clone();
        let workers = cfg
            .workers
            .iter()
            .filter_map(|w| {
                let id = *wids.get(&w.name)?;
                let available = w.availability.iter().all(|a| a.allows(now_dt));
                Some(WorkerState {
                    id,
                    connected: self.workers.get(&w.name).is_some(),
                    paused: !available,
                    max_builds: w.max_builds.unwrap_or(u32::MAX),
                    downtime: Vec::new(),
                    quarantined_until: quarantine.get(&id).and_then(|q| q.until),
                })
            })
            .collect();
        let running = self
            .running
            .lock()
            .expect("running lock")
            .values()
            .map(|r| RunningBuild {
                builder: r.builder,
                worker: r.worker,
            })
            .collect();
        let locks = cfg
            .locks
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
                    .filter_map(|(w, n)| Some((*wids.get(w)?, *n)))
                    .collect(),
            })
            .collect();
        Snapshot {
            pending: Vec::new(),
            builders,
            workers,
            running,
            locks,
        }
    }

    async fn dispatch_round(self: &Arc<Self>) -> anyhow::Result<()> {
        use kiln_engine::queue::Store as _;
        // `kiln_engine::queue::dispatch` in two halves: the queue length is kept for /metrics,
        // and no snapshot of the farm is built when nothing waits (a thousand workers
        // attaching must not build a thousand snapshots).
        let queued = self
            .queue
            .pending_requests()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let pending = queued.len();
        if pending == 0 {
            self.metrics.requests_pending(0);
            return Ok(());
        }
        let cfg = self.config();
        let world = self.snapshot(&cfg);
        let won = queue::claim_pending(&self.queue, &LogBus, world, queued, self.now())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let taken: usize = won.iter().map(|a| 1 + a.collapsed.len()).sum();
        self.metrics
            .requests_pending(pending.saturating_sub(taken) as i64);
        for a in won {
            let (tx, rx) = watch::channel(None);
            self.running.lock().expect("running lock").insert(
                a.request,
                Running {
                    builder: a.builder,
                    worker: a.worker,
                    build: None,
                    stop: tx,
                },
            );
            self.metrics
                .builds_running(self.running.lock().expect("running lock").len() as i64);
            let inner = self.clone();
            tokio::spawn(async move {
                let task = tokio::spawn(runner::run(
                    inner.clone(),
                    Claimed {
                        assignment: a.clone(),
                        stop: rx,
                    },
                ));
                if let Err(e) = task.await {
                    // A bug in a build task must not leave its request claimed forever.
                    tracing::error!("build of request {} crashed: {e}", a.request.0);
                    inner.build_crashed(a).await;
                }
            });
        }
        Ok(())
    }

    /// The build row of a running request, once it exists.
    pub(crate) fn build_of(&self, request: BuildRequestId) -> Option<BuildId> {
        self.running
            .lock()
            .expect("running lock")
            .get(&request)
            .and_then(|r| r.build)
    }

    pub(crate) fn build_started(&self, request: BuildRequestId, build: BuildId) {
        if let Some(r) = self.running.lock().expect("running lock").get_mut(&request) {
            r.build = Some(build);
        }
    }

    /// A claimed request whose build never started goes back to the queue.
    pub(crate) async fn requeue_unstarted(&self, a: Assignment) {
        self.running
            .lock()
            .expect("running lock")
            .remove(&a.request);
        let _ = self
            .store
            .unclaim_build_requests(self.master_id, &[a.request])
            .await;
        self.queue.requeued();
        // Not at once: the worker that failed may still look connected for a moment.
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.wake.notify_one();
    }

    /// A build task panicked or hit a store error after its build row was made: the build
    /// ends EXCEPTION and so does its request (retrying would likely fail again).
    pub(crate) async fn build_crashed(&self, a: Assignment) {
        let build = self.build_of(a.request);
        let now = self.now();
        if let Some(b) = build {
            let _ = self
                .store
                .set_build_state_string(b, "exception: internal error")
                .await;
            let _ = self.store.finish_build(b, Results::Exception, now).await;
        }
        let outcome = kiln_engine::build::BuildOutcome {
            results: Results::Exception,
            requeue: false,
            state_string: "exception".into(),
        };
        self.build_ended(a, outcome).await;
    }

    pub(crate) async fn build_ended(
        &self,
        a: Assignment,
        outcome: kiln_engine::build::BuildOutcome,
    ) {
        let n = {
            let mut running = self.running.lock().expect("running lock");
            running.remove(&a.request);
            running.len()
        };
        self.metrics.builds_running(n as i64);
        self.metrics.build_finished(outcome.results);
        let now = self.now();
        self.quarantine
            .lock()
            .expect("quarantine lock")
            .entry(a.worker)
            .or_default()
            .build_finished(outcome.results, now);
        if let Err(e) = queue::build_finished(&self.queue, &LogBus, a.request, &outcome, now).await
        {
            tracing::error!("ending build request {}: {e}", a.request.0);
        }
        self.wake.notify_one();
        if !outcome.requeue {
            self.after_request_complete(a.request).await;
        }
    }

    /// A request completed: if its buildset is now complete, tell `dependent` schedulers and
    /// anyone waiting on it (a `trigger` step with `wait_for_finish`).
    async fn after_request_complete(&self, request: BuildRequestId) {
        // Trigger steps waiting on a buildset re-read it themselves.
        self.buildset_done.notify_waiters();
        if !self
            .has_dependents
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let Ok(Some(req)) = self.store.get_build_request(request).await else {
            return;
        };
        let Ok(Some(bs)) = self.store.get_buildset(req.buildsetid).await else {
            return;
        };
        if !bs.complete {
            return;
        }
        let scheduler = self
            .store
            .buildset_scheduler(bs.bsid)
            .await
            .unwrap_or_default();
        let mut sources = Vec::new();
        for ss in &bs.sourcestamps {
            if let Ok(Some(s)) = self.store.get_sourcestamp(*ss).await {
                sources.push(SourceSpec {
                    codebase: s.codebase,
                    repository: s.repository,
                    branch: s.branch,
                    revision: s.revision,
                    project: s.project,
                });
            }
        }
        let properties = self
            .store
            .get_buildset_properties(bs.bsid)
            .await
            .unwrap_or_default();
        let done = CompletedBuildset {
            scheduler,
            results: bs.results.unwrap_or(Results::Success),
            sources,
            properties,
        };
        let next = self
            .scheds
            .lock()
            .await
            .events
            .on_buildset_complete(&done, self.now());
        for bs in next {
            if let Err(e) = self.submit(&bs).await {
                tracing::error!("scheduler {}: {e}", bs.scheduler);
            }
        }
    }

    /// Stores a scheduler's buildset and wakes the distributor.
    pub(crate) async fn submit(
        &self,
        bs: &BuildsetRequest,
    ) -> Result<(BuildsetId, Vec<BuildRequestId>), ControlError> {
        let cfg = self.config();
        let ids = self.builder_ids.read().expect("ids lock").clone();
        let builders: BTreeMap<String, (BuilderId, i64)> = cfg
            .builders
            .iter()
            .filter_map(|b| Some((b.name.clone(), (*ids.get(&b.name)?, b.priority))))
            .collect();
        let unknown: Vec<&String> = bs
            .builders
            .iter()
            .filter(|b| !builders.contains_key(*b))
            .collect();
        if !unknown.is_empty() {
            tracing::warn!("scheduler {}: no such builders {unknown:?}", bs.scheduler);
        }
        let out = queue::submit(&self.queue, &LogBus, bs, &builders, self.now()).await?;
        self.wake.notify_one();
        Ok(out)
    }

    pub(crate) async fn trigger_request(
        &self,
        scheduler: &str,
        parent: BuildId,
        sources: Vec<SourceSpec>,
        properties: &Properties,
        wait: bool,
    ) -> anyhow::Result<BuildsetId> {
        let bs = {
            let s = self.scheds.lock().await;
            let t = s
                .triggerable
                .get(scheduler)
                .ok_or_else(|| anyhow::anyhow!("no triggerable scheduler named {scheduler:?}"))?;
            t.trigger(parent, sources, properties, wait)
        };
        Ok(self.submit(&bs).await?.0)
    }

    pub(crate) async fn wait_for_buildset(&self, bs: BuildsetId) -> anyhow::Result<Results> {
        loop {
            let notified = self.buildset_done.notified();
            let row = self
                .store
                .get_buildset(bs)
                .await?
                .ok_or_else(|| anyhow::anyhow!("buildset {} vanished", bs.0))?;
            if row.complete {
                return Ok(row.results.unwrap_or(Results::Success));
            }
            // Completion elsewhere (another master) has no notification: poll as well.
            let _ = tokio::time::timeout(Duration::from_secs(2), notified).await;
        }
    }

    async fn reconfig(&self) -> Result<ReconfigReport, kiln_config::ConfigError> {
        let _guard = self.reconfig_lock.lock().await;
        let new = load_config(&self.config_file)?;
        let old = self.config();
        let diff = ConfigDiff::between(&old, &new);
        let summary = describe(&diff);
        let removed_workers: Vec<String> = old
            .workers
            .iter()
            .filter(|w| new.worker(&w.name).is_none())
            .map(|w| w.name.clone())
            .collect();
        self.roster.replace(roster_entries(&new));
        let new = Arc::new(new);
        self.has_dependents
            .store(has_dependents(&new), std::sync::atomic::Ordering::Relaxed);
        *self.config.write().expect("config lock") = new.clone();
        if let Err(e) = self.sync_ids().await {
            tracing::error!("reconfig: storing builders and workers: {e}");
        }
        {
            // Unchanged schedulers keep their state (running tree-stable timers, the next
            // nightly firing); changed and added ones start fresh.
            let mut fresh = sched::build(&new, self.now());
            let mut current = self.scheds.lock().await;
            let keep = |name: &str| {
                !diff.schedulers.changed.iter().any(|n| n == name)
                    && !diff.schedulers.added.iter().any(|n| n == name)
            };
            let mut old: Vec<_> = std::mem::take(&mut current.events.list);
            for slot in fresh.events.list.iter_mut() {
                if keep(slot.name())
                    && let Some(pos) = old.iter().position(|o| o.name() == slot.name())
                {
                    *slot = old.swap_remove(pos);
                }
            }
            *current = fresh;
        }
        for w in removed_workers {
            self.workers.disconnect(&w);
        }
        self.wake.notify_one();
        tracing::info!("reconfig applied: {summary}");
        Ok(ReconfigReport { summary })
    }

    async fn add_change(&self, c: ChangeRequest) -> Result<ChangeId, ControlError> {
        let now = self.now();
        let new = kiln_store::NewChange {
            author: c.author,
            committer: c.committer,
            comments: c.comments,
            branch: c.branch,
            revision: c.revision,
            when_timestamp: c.when_timestamp.unwrap_or(now),
            category: c.category,
            repository: c.repository,
            codebase: c.codebase,
            project: c.project,
            files: c.files,
            properties: {
                let mut p = Properties::default();
                for (k, v) in c.properties {
                    p.set(k, v, "Change");
                }
                p
            },
        };
        let id = self.store.add_change(&new, now).await?;
        let change = self
            .store
            .get_change(id)
            .await?
            .ok_or(kiln_store::StoreError::NotFound("change", id.0))?;
        let due = self.scheds.lock().await.events.on_change(&change, now);
        for bs in due {
            self.submit(&bs).await?;
        }
        Ok(id)
    }

    pub(crate) fn connected_workers(&self) -> Vec<String> {
        self.workers
            .connected()
            .iter()
            .map(|c| c.worker_name().to_string())
            .collect()
    }
}

/// The API's handle on the master.
pub(crate) struct MasterControl(pub(crate) Arc<Inner>);

impl Control for MasterControl {
    fn config(&self) -> Arc<MasterConfig> {
        self.0.config()
    }

    fn connected_workers(&self) -> Vec<String> {
        self.0.connected_workers()
    }

    fn force(
        &self,
        scheduler: &str,
        req: ForceRequest,
    ) -> BoxFuture<'_, Result<(BuildsetId, Vec<BuildRequestId>), ControlError>> {
        let scheduler = scheduler.to_string();
        Box::pin(async move {
            let bs = {
                let s = self.0.scheds.lock().await;
                let f = s
                    .force
                    .get(&scheduler)
                    .ok_or_else(|| ControlError::NoForceScheduler(scheduler.clone()))?;
                let mut input = req.properties.clone();
                for (k, v) in [
                    ("reason", &req.reason),
                    ("branch", &req.branch),
                    ("revision", &req.revision),
                    ("repository", &req.repository),
                    ("project", &req.project),
                ] {
                    if let Some(v) = v {
                        input.insert(k.to_string(), serde_json::Value::String(v.clone()));
                    }
                }
                // Like Buildbot, values that are not parameters of this scheduler (the
                // form's `priority`, a client's extras) are ignored, not refused.
                input.retain(|k, _| f.params.iter().any(|p| &p.name == k));
                let builders = if req.builder_names.is_empty() {
                    f.builders.clone()
                } else {
                    req.builder_names.clone()
                };
                let owner = req.owner.clone().unwrap_or_else(|| "anonymous".into());
                f.force(&owner, &builders, &input)?
            };
            self.0.submit(&bs).await
        })
    }

    fn add_change(&self, change: ChangeRequest) -> BoxFuture<'_, Result<ChangeId, ControlError>> {
        Box::pin(self.0.add_change(change))
    }

    fn stop_build(&self, build: BuildId, reason: String) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            let running = self.0.running.lock().expect("running lock");
            match running.values().find(|r| r.build == Some(build)) {
                Some(r) => {
                    let _ = r.stop.send(Some(reason));
                    true
                }
                None => false,
            }
        })
    }

    fn cancel_request(&self, request: BuildRequestId) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            let now = self.0.now();
            let done = queue::cancel_request(&self.0.queue, &LogBus, request, now)
                .await
                .unwrap_or(false);
            if done {
                self.0.after_request_complete(request).await;
            }
            done
        })
    }
}

#[cfg(test)]
mod tests {
    use super::resolve_db_url;
    use std::path::Path;

    #[test]
    fn sqlite_paths_are_relative_to_the_master_directory() {
        let d = Path::new("/m");
        assert_eq!(
            resolve_db_url("sqlite:state.sqlite", d),
            "sqlite:/m/state.sqlite"
        );
        assert_eq!(resolve_db_url("sqlite:///abs/s.db", d), "sqlite:/abs/s.db");
        assert_eq!(
            resolve_db_url("sqlite:s.db?mode=rwc", d),
            "sqlite:/m/s.db?mode=rwc"
        );
        assert_eq!(
            resolve_db_url("postgresql://u@h/db", d),
            "postgresql://u@h/db"
        );
    }
}
