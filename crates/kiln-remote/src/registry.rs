//! Who may log in ([`Roster`], written by the core from the config) and who is connected
//! ([`Workers`], written by the endpoints, read by the core).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use tokio::sync::mpsc;

use crate::Connection;

/// How the master checks one worker's password.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordCheck {
    /// The password itself (from `secret("...")`); compared in constant time.
    Plain(String),
    /// An argon2 PHC string (`$argon2id$...`).
    Argon2(String),
}

/// Never prints the password.
impl std::fmt::Debug for PasswordCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PasswordCheck::Plain(_) => f.write_str("Plain(<redacted>)"),
            PasswordCheck::Argon2(_) => f.write_str("Argon2(<redacted>)"),
        }
    }
}

/// What an endpoint needs to know about one configured worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerEntry {
    pub password: PasswordCheck,
    /// Builder directory names (`builddir`, default the builder name) this worker serves;
    /// the attach sequence creates the missing ones (spec §4.1 step 4).
    pub builder_dirs: Vec<String>,
}

/// The configured workers; the core replaces the map on reconfig. A worker removed from the
/// roster is disconnected by the core (not by the endpoint). Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct Roster(pub Arc<RwLock<HashMap<String, WorkerEntry>>>);

impl Roster {
    pub fn new(entries: HashMap<String, WorkerEntry>) -> Roster {
        Roster(Arc::new(RwLock::new(entries)))
    }

    pub fn get(&self, name: &str) -> Option<WorkerEntry> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    pub fn replace(&self, entries: HashMap<String, WorkerEntry>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = entries;
    }
}

/// What the endpoints tell the core about workers.
pub enum WorkerEvent {
    /// The attach sequence completed; the worker can take builds.
    Attached(Arc<dyn Connection>),
    /// An attached connection ended (`conn_id` tells an old connection from its replacement).
    Detached { name: String, conn_id: u64 },
}

impl std::fmt::Debug for WorkerEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorkerEvent::Attached(c) => f
                .debug_struct("Attached")
                .field("name", &c.worker_name())
                .field("conn_id", &c.conn_id())
                .finish(),
            WorkerEvent::Detached { name, conn_id } => f
                .debug_struct("Detached")
                .field("name", name)
                .field("conn_id", conn_id)
                .finish(),
        }
    }
}

/// The workers connected to this master, by name. Endpoints [`attach`](Workers::attach) and
/// [`detach`](Workers::detach) connections; the core looks them up to run builds and hears
/// of every change through the [`WorkerEvent`] receiver that [`Workers::new`] returns.
/// Cheap to clone (shared).
#[derive(Clone)]
pub struct Workers(Arc<Shared>);

struct Shared {
    attached: Mutex<HashMap<String, Arc<dyn Connection>>>,
    events: mpsc::UnboundedSender<WorkerEvent>,
}

impl Workers {
    pub fn new() -> (Workers, mpsc::UnboundedReceiver<WorkerEvent>) {
        let (events, rx) = mpsc::unbounded_channel();
        let shared = Shared {
            attached: Mutex::new(HashMap::new()),
            events,
        };
        (Workers(Arc::new(shared)), rx)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<dyn Connection>>> {
        self.0.attached.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The attached connection of that worker.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Connection>> {
        self.lock().get(name).cloned()
    }

    pub fn connected(&self) -> Vec<Arc<dyn Connection>> {
        self.lock().values().cloned().collect()
    }

    /// How many workers are attached (without collecting them).
    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// Drops the worker's connection (it was removed from the config, or the master stops).
    pub fn disconnect(&self, name: &str) {
        let conn = self.lock().remove(name);
        if let Some(conn) = conn {
            conn.disconnect();
        }
    }

    /// Drops every attached connection.
    pub fn disconnect_all(&self) {
        let all: Vec<_> = self.lock().drain().map(|(_, c)| c).collect();
        for conn in all {
            conn.disconnect();
        }
    }

    /// For endpoints: `conn` finished attaching. A previous connection under the same name
    /// is dropped; the core hears [`WorkerEvent::Attached`].
    pub fn attach(&self, conn: Arc<dyn Connection>) {
        let name = conn.worker_name().to_string();
        let prev = self.lock().insert(name, conn.clone());
        if let Some(prev) = prev.filter(|p| p.conn_id() != conn.conn_id()) {
            prev.disconnect();
        }
        let _ = self.0.events.send(WorkerEvent::Attached(conn));
    }

    /// For endpoints: forgets `name` if its attached connection is `conn_id` (a replaced
    /// connection leaves its successor alone). Returns whether it was removed.
    pub fn forget(&self, name: &str, conn_id: u64) -> bool {
        let mut map = self.lock();
        if map.get(name).is_some_and(|c| c.conn_id() == conn_id) {
            map.remove(name);
            return true;
        }
        false
    }

    /// For endpoints: an attached connection ended. The core hears
    /// [`WorkerEvent::Detached`], whether or not a successor replaced it meanwhile.
    pub fn detach(&self, name: String, conn_id: u64) {
        self.forget(&name, conn_id);
        let _ = self.0.events.send(WorkerEvent::Detached { name, conn_id });
    }
}
