//! The running master core.
//!
//! [`Farm::start`] loads `master.star`, opens the store and the event bus, requeues what a
//! crashed run left and starts one **farm task** ([`task`]) that owns the farm's state: the
//! builds running, the schedulers, worker quarantine, builder and worker ids. Everything
//! else talks to it by message through a [`FarmHandle`]: the web port and the CLI (through
//! [`Control`]), build tasks (a build's end, a `trigger` step), reconfig. Build tasks
//! ([`builds`]) do their own database work and report their end; the services they share
//! ([`Services`]: store, queue, bus, worker registry, metrics, step locks) each synchronise
//! themselves and hold no farm state.
//!
//! Workers come and go through the [`Workers`] registry (an endpoint fills it); the ports
//! are bound by the `kiln` binary.

mod builds;
mod handle;
mod housekeeping;
mod reconfig;
mod state;
mod task;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kiln_config::{ConfigError, MasterConfig};
use kiln_engine::Clock as _;
use kiln_model::{Epoch, MasterId};
use kiln_remote::{Roster, WorkerEvent, Workers};
use kiln_store::{EventBus, QueueStore, Store, StoreError, StoreOptions};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::control::Control;
use crate::locks::StepLocks;
use crate::metrics::Metrics;

pub(crate) use handle::FarmHandle;
pub use reconfig::ReconfigReport;

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

/// Why the master could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("master directory {}", path.display())]
    Basedir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `master.star` is wrong; the error says where (file:line:col) and what to fix.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `url` has its password blanked out.
    #[error("opening the database {url}")]
    Database {
        url: String,
        #[source]
        source: StoreError,
    },
    #[error("registering this master in the database")]
    Store(#[from] StoreError),
}

/// The master's services, shared by the farm task and the build tasks. Each is a handle that
/// synchronises itself; none of them holds farm state.
pub(crate) struct Services {
    pub basedir: PathBuf,
    pub store: Store,
    pub queue: QueueStore,
    pub bus: EventBus,
    pub master_id: MasterId,
    pub workers: Workers,
    pub metrics: Metrics,
    pub step_locks: StepLocks,
    clock: kiln_engine::SystemClock,
}

impl Services {
    pub fn now(&self) -> Epoch {
        self.clock.now()
    }
}

/// A started master core. Dropping it does not stop it; call [`Farm::shutdown`].
pub struct Farm {
    services: Arc<Services>,
    handle: FarmHandle,
    roster: Roster,
    config_file: PathBuf,
    /// One reconfig at a time: the file read last is the one applied last.
    reconfig_lock: tokio::sync::Mutex<()>,
    task: JoinHandle<()>,
    stop_housekeeping: watch::Sender<bool>,
    housekeeping: Vec<JoinHandle<()>>,
}

/// How many requests may wait for the farm task before their senders wait too.
const REQUEST_QUEUE: usize = 1024;

impl Farm {
    /// Loads the config (an error carries file:line:col), opens and migrates the store,
    /// requeues what a crashed master left and starts the farm task.
    pub async fn start(opts: FarmOptions) -> Result<Farm, StartError> {
        let basedir = std::path::absolute(&opts.basedir).map_err(|source| StartError::Basedir {
            path: opts.basedir.clone(),
            source,
        })?;
        let config_file = opts
            .config_file
            .clone()
            .unwrap_or_else(|| basedir.join("master.star"));
        let config = load_config(config_file.clone()).await?;
        let (services, worker_events) = open_services(&basedir, &config).await?;
        let services = Arc::new(services);
        let roster = Roster::new(state::roster_entries(&config));
        let (tx, requests) = mpsc::channel(REQUEST_QUEUE);
        let (config_tx, config_rx) = watch::channel(Arc::new(config));
        let handle = FarmHandle::new(tx, config_rx.clone(), services.workers.clone());
        let farm_state = state::FarmState::new(config_tx, roster.clone(), services.now());
        let mut task = task::FarmTask::new(services.clone(), farm_state, handle.clone(), requests);
        task.sync_ids().await?;
        let task = tokio::spawn(task.run(worker_events));
        let (stop_housekeeping, stop_rx) = watch::channel(false);
        let housekeeping = housekeeping::spawn(services.clone(), config_rx, stop_rx);
        housekeeping::release_freed_memory();
        Ok(Farm {
            services,
            handle,
            roster,
            config_file,
            reconfig_lock: tokio::sync::Mutex::new(()),
            task,
            stop_housekeeping,
            housekeeping,
        })
    }

    /// The config in force now.
    pub fn config(&self) -> Arc<MasterConfig> {
        self.handle.config()
    }

    /// The master directory (absolute).
    pub fn basedir(&self) -> &Path {
        &self.services.basedir
    }

    /// Who may log in, kept current on reconfig: an endpoint checks logins against it.
    pub fn roster(&self) -> &Roster {
        &self.roster
    }

    /// The registry an endpoint attaches workers to.
    pub fn workers(&self) -> &Workers {
        &self.services.workers
    }

    pub fn metrics(&self) -> &Metrics {
        &self.services.metrics
    }

    /// Every change the farm makes, as it happens (and, on PostgreSQL, other masters'
    /// changes on the same database).
    pub fn events(&self) -> &EventBus {
        &self.services.bus
    }

    /// The database this master uses (tests and the quickstart read results from it).
    pub fn store(&self) -> &Store {
        &self.services.store
    }

    pub fn control(&self) -> Arc<dyn Control> {
        Arc::new(self.handle.clone())
    }

    /// Re-reads `master.star` and applies the difference. A broken file is rejected with its
    /// error and the running config stays.
    pub async fn reconfig(&self) -> Result<ReconfigReport, ConfigError> {
        let _one_at_a_time = self.reconfig_lock.lock().await;
        let config = load_config(self.config_file.clone()).await?;
        self.handle.apply_config(config).await.ok_or_else(|| {
            ConfigError::one(None, "the master is shutting down; nothing was applied")
        })
    }

    /// Disconnects the workers (their builds end RETRY and go back to the queue), waits up to
    /// five seconds for the builds to record that, gives back what is still claimed, and
    /// closes the store.
    pub async fn shutdown(self) {
        self.services.workers.disconnect_all();
        self.handle.drain(Duration::from_secs(5)).await;
        let _ = self.stop_housekeeping.send(true);
        for t in self.housekeeping {
            t.abort();
        }
        self.task.abort();
        let s = &self.services;
        if let Err(e) = s.queue.release_claims().await {
            tracing::error!(
                "giving back claimed build requests at shutdown: {} (the next start does it)",
                crate::error_chain(&e)
            );
        }
        let _ = s.store.set_master_inactive(s.master_id).await;
        s.bus.close().await;
        s.store.close().await;
    }
}

/// The store, the queue and the bus for `config`, with this master registered and what a
/// crashed run of it left requeued; and the worker registry with its events.
async fn open_services(
    basedir: &Path,
    config: &MasterConfig,
) -> Result<(Services, mpsc::UnboundedReceiver<WorkerEvent>), StartError> {
    let db_url = resolve_db_url(&config.master.db_url, basedir);
    // A step's logs take their cap from the build's config when they are opened (see
    // `runner::log_cap`); this one, fixed at start, only caps appends made without a writer.
    let store_opts = StoreOptions {
        log_max_bytes: (config.master.log_max_bytes > 0).then_some(config.master.log_max_bytes),
        ..StoreOptions::default()
    };
    let store = Store::connect_with(&db_url, store_opts)
        .await
        .map_err(|source| StartError::Database {
            url: redact_url(&config.master.db_url),
            source,
        })?;
    let clock = kiln_engine::SystemClock;
    let now = clock.now();
    let master_name = format!("{}:{}", hostname(), basedir.display());
    let master_id = store.register_master(&master_name, now).await?;
    let rec = store.recover_after_crash(master_id, now).await?;
    if rec.builds + rec.requests_requeued > 0 {
        tracing::warn!(
            "recovered after an unclean stop: {} unfinished builds marked RETRY, {} requests back in the queue",
            rec.builds,
            rec.requests_requeued
        );
    }
    let bus = EventBus::for_store(&store).await?;
    let (workers, worker_events) = Workers::new();
    let services = Services {
        basedir: basedir.to_path_buf(),
        queue: QueueStore::cached(store.clone(), master_id, Duration::from_secs(1)),
        store,
        bus,
        master_id,
        workers,
        metrics: Metrics::new(),
        step_locks: StepLocks::default(),
        clock,
    };
    Ok((services, worker_events))
}

/// Loads `file` on a thread of its own. In the `kiln` binary the thread only waits for the
/// evaluating child ([`crate::config_proc`]); in-process (tests, embedders) Starlark's
/// evaluation allocates a lot and frees it, and a thread that ends lets the allocator give
/// that back.
async fn load_config(file: PathBuf) -> Result<MasterConfig, ConfigError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("kiln-config".into())
        // Generous, like a main thread's: configs may nest function calls deeply.
        .stack_size(8 << 20)
        .spawn(move || {
            let _ = tx.send(crate::config_proc::load(&file));
        });
    if let Err(e) = spawned {
        return Err(ConfigError::one(
            None,
            format!("cannot start a thread to load the config: {e}"),
        ));
    }
    rx.await.unwrap_or_else(|_| {
        Err(ConfigError::one(
            None,
            "loading the config panicked (a bug in Kiln; please report it)",
        ))
    })
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

/// `postgresql://user:secret@host/db` → `postgresql://user:***@host/db`, for messages.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}{path}")
        }
        _ => url.to_string(),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::{redact_url, resolve_db_url};
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

    #[test]
    fn database_passwords_stay_out_of_messages() {
        assert_eq!(
            redact_url("postgresql://kiln:s3cr%40t@db.example:5432/farm"),
            "postgresql://kiln:***@db.example:5432/farm"
        );
        assert_eq!(redact_url("postgresql://u@h/db"), "postgresql://u@h/db");
        assert_eq!(redact_url("sqlite:state.sqlite"), "sqlite:state.sqlite");
    }
}
