//! Who may log in ([`Roster`], written by the core from the config) and who is connected
//! ([`Workers`], written by the endpoints, read by the core).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::SystemTime;

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

/// Who holds a worker's name: the connection's id, where it comes from and since when (for
/// the refusal a later connection gets, and the master's log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub conn_id: u64,
    pub peer: SocketAddr,
    pub since: SystemTime,
}

/// What [`Workers::reserve`] found.
pub enum Claim {
    /// The name was free and is now this connection's, while it attaches.
    Reserved(Reservation),
    /// Another connection is running the attach sequence under the name: never replaced.
    Attaching(Holder),
    /// Another connection is attached under the name; it may be dead (spec §4.3's probe
    /// decides, then [`Workers::reserve_replacing`]).
    Attached(Arc<dyn Connection>, Holder),
}

/// A worker name held by a connection that is attaching. Dropping it frees the name (the
/// attach failed or the connection ended); [`Workers::attach`] turns it into the attached
/// entry.
pub struct Reservation {
    workers: Workers,
    name: String,
    conn_id: u64,
    /// Cleared by `attach`, which has taken the slot over.
    held: bool,
}

impl Reservation {
    pub fn conn_id(&self) -> u64 {
        self.conn_id
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.held {
            let mut reg = self.workers.lock();
            if reg.attaching.get(&self.name).map(|h| h.conn_id) == Some(self.conn_id) {
                reg.attaching.remove(&self.name);
            }
        }
    }
}

/// The workers connected to this master, by name. Endpoints [`reserve`](Workers::reserve) a
/// name when a connection starts attaching (so at most one connection per name attaches, and
/// the first one wins), [`attach`](Workers::attach) it when the attach sequence is done and
/// [`detach`](Workers::detach) it when the connection ends; the core looks workers up to run
/// builds and hears of every change through the [`WorkerEvent`] receiver that
/// [`Workers::new`] returns. Cheap to clone (shared).
#[derive(Clone)]
pub struct Workers(Arc<Shared>);

struct Shared {
    registry: Mutex<Registry>,
    events: mpsc::UnboundedSender<WorkerEvent>,
}

/// A name is in at most one of the two maps.
#[derive(Default)]
struct Registry {
    attached: HashMap<String, AttachedConn>,
    attaching: HashMap<String, Holder>,
}

struct AttachedConn {
    conn: Arc<dyn Connection>,
    since: SystemTime,
}

impl AttachedConn {
    fn holder(&self) -> Holder {
        Holder {
            conn_id: self.conn.conn_id(),
            peer: self.conn.peer(),
            since: self.since,
        }
    }
}

impl Workers {
    pub fn new() -> (Workers, mpsc::UnboundedReceiver<WorkerEvent>) {
        let (events, rx) = mpsc::unbounded_channel();
        let shared = Shared {
            registry: Mutex::new(Registry::default()),
            events,
        };
        (Workers(Arc::new(shared)), rx)
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.0.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The attached connection of that worker.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Connection>> {
        self.lock().attached.get(name).map(|a| a.conn.clone())
    }

    pub fn connected(&self) -> Vec<Arc<dyn Connection>> {
        self.lock()
            .attached
            .values()
            .map(|a| a.conn.clone())
            .collect()
    }

    /// How many workers are attached (without collecting them).
    pub fn count(&self) -> usize {
        self.lock().attached.len()
    }

    /// Drops the worker's connection (it was removed from the config, or the master stops).
    /// A connection still attaching loses its reservation, so its attach fails.
    pub fn disconnect(&self, name: &str) {
        let conn = {
            let mut reg = self.lock();
            reg.attaching.remove(name);
            reg.attached.remove(name)
        };
        if let Some(a) = conn {
            a.conn.disconnect();
        }
    }

    /// Drops every attached connection (and every reservation).
    pub fn disconnect_all(&self) {
        let all: Vec<_> = {
            let mut reg = self.lock();
            reg.attaching.clear();
            reg.attached.drain().map(|(_, a)| a.conn).collect()
        };
        for conn in all {
            conn.disconnect();
        }
    }

    /// For endpoints: holds `name` for connection `conn_id` from `peer` while it attaches,
    /// if no other connection holds it.
    pub fn reserve(&self, name: &str, conn_id: u64, peer: SocketAddr) -> Claim {
        self.claim(name, conn_id, peer, None)
    }

    /// For endpoints: like [`reserve`](Workers::reserve), but first forgets the attached
    /// connection `dead` (it did not answer spec §4.3's probe and was disconnected). If
    /// another connection took the name meanwhile, that one is reported instead.
    pub fn reserve_replacing(
        &self,
        name: &str,
        conn_id: u64,
        peer: SocketAddr,
        dead: u64,
    ) -> Claim {
        self.claim(name, conn_id, peer, Some(dead))
    }

    fn claim(&self, name: &str, conn_id: u64, peer: SocketAddr, dead: Option<u64>) -> Claim {
        let mut reg = self.lock();
        if let Some(h) = reg.attaching.get(name) {
            return Claim::Attaching(h.clone());
        }
        if let Some(a) = reg.attached.get(name) {
            if Some(a.conn.conn_id()) != dead {
                return Claim::Attached(a.conn.clone(), a.holder());
            }
            reg.attached.remove(name);
        }
        let holder = Holder {
            conn_id,
            peer,
            since: SystemTime::now(),
        };
        reg.attaching.insert(name.to_owned(), holder);
        Claim::Reserved(Reservation {
            workers: self.clone(),
            name: name.to_owned(),
            conn_id,
            held: true,
        })
    }

    /// For endpoints: `conn` finished attaching under `reservation` (its own). It becomes the
    /// worker's attached connection and the core hears [`WorkerEvent::Attached`]. Returns
    /// false, and changes nothing, if the reservation was taken away meanwhile
    /// ([`disconnect`](Workers::disconnect)): the endpoint then drops the connection.
    pub fn attach(&self, mut reservation: Reservation, conn: Arc<dyn Connection>) -> bool {
        debug_assert_eq!(reservation.conn_id, conn.conn_id());
        {
            let mut reg = self.lock();
            let name = &reservation.name;
            if reg.attaching.get(name).map(|h| h.conn_id) != Some(reservation.conn_id) {
                return false;
            }
            reg.attaching.remove(name);
            let since = SystemTime::now();
            let entry = AttachedConn {
                conn: conn.clone(),
                since,
            };
            reg.attached.insert(name.clone(), entry);
            reservation.held = false;
        }
        let _ = self.0.events.send(WorkerEvent::Attached(conn));
        true
    }

    /// For endpoints: forgets `name` if its attached connection is `conn_id` (a replaced
    /// connection leaves its successor alone). Returns whether it was removed.
    pub fn forget(&self, name: &str, conn_id: u64) -> bool {
        let mut reg = self.lock();
        if reg
            .attached
            .get(name)
            .is_some_and(|a| a.conn.conn_id() == conn_id)
        {
            reg.attached.remove(name);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BoxFuture, CommandSpec, Remote, RemoteError, RunningCommand, Transfer};
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A connection that only remembers whether it was told to disconnect.
    struct Fake {
        conn_id: u64,
        dropped: AtomicBool,
        info: serde_json::Map<String, serde_json::Value>,
    }

    impl Remote for Fake {
        fn worker_name(&self) -> &str {
            "w1"
        }
        fn basedir(&self) -> &str {
            "/wk"
        }
        fn is_windows(&self) -> bool {
            false
        }
        fn has_command(&self, _: &str) -> bool {
            false
        }
        fn ping(&self) -> BoxFuture<'_, Result<(), RemoteError>> {
            Box::pin(async { Ok(()) })
        }
        fn start(
            &self,
            _: CommandSpec,
            _: Transfer,
        ) -> BoxFuture<'_, Result<RunningCommand, RemoteError>> {
            Box::pin(async { Err(RemoteError::NotConnected) })
        }
    }

    impl Connection for Fake {
        fn conn_id(&self) -> u64 {
            self.conn_id
        }
        fn peer(&self) -> SocketAddr {
            SocketAddr::from(([10, 0, 0, self.conn_id as u8], 4000))
        }
        fn info(&self) -> &serde_json::Map<String, serde_json::Value> {
            &self.info
        }
        fn heard_within(&self, _: std::time::Duration) -> bool {
            true
        }
        fn print(&self, _: &str) -> BoxFuture<'_, Result<(), RemoteError>> {
            Box::pin(async { Ok(()) })
        }
        fn disconnect(&self) {
            self.dropped.store(true, Ordering::SeqCst);
        }
        fn closed(&self) -> BoxFuture<'_, ()> {
            Box::pin(async {})
        }
    }

    fn fake(conn_id: u64) -> Arc<Fake> {
        Arc::new(Fake {
            conn_id,
            dropped: AtomicBool::new(false),
            info: Default::default(),
        })
    }

    fn peer(n: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, n], 4000))
    }

    fn reserved(c: Claim) -> Reservation {
        match c {
            Claim::Reserved(r) => r,
            Claim::Attaching(h) => panic!("held by attaching {h:?}"),
            Claim::Attached(_, h) => panic!("held by attached {h:?}"),
        }
    }

    #[test]
    fn the_first_reservation_wins_until_it_is_dropped_or_attached() {
        let (workers, mut events) = Workers::new();
        let first = reserved(workers.reserve("w1", 1, peer(1)));
        assert!(
            matches!(workers.reserve("w1", 2, peer(2)), Claim::Attaching(h) if h.conn_id == 1 && h.peer == peer(1))
        );
        assert!(workers.get("w1").is_none(), "attaching is not attached");
        assert_eq!(workers.count(), 0);
        drop(first);
        let second = reserved(workers.reserve("w1", 2, peer(2)));
        assert!(workers.attach(second, fake(2)));
        assert!(matches!(events.try_recv(), Ok(WorkerEvent::Attached(c)) if c.conn_id() == 2));
        assert_eq!(workers.count(), 1);
        assert!(
            matches!(workers.reserve("w1", 3, peer(3)), Claim::Attached(c, h) if c.conn_id() == 2 && h.peer == peer(2))
        );
    }

    #[test]
    fn a_dead_attached_connection_is_replaced_only_by_its_id() {
        let (workers, _events) = Workers::new();
        assert!(workers.attach(reserved(workers.reserve("w1", 1, peer(1))), fake(1)));
        assert!(matches!(
            workers.reserve_replacing("w1", 3, peer(3), 2),
            Claim::Attached(c, _) if c.conn_id() == 1
        ));
        let r = reserved(workers.reserve_replacing("w1", 3, peer(3), 1));
        assert!(workers.get("w1").is_none());
        // The replaced connection's late detach leaves the new reservation alone.
        workers.detach("w1".into(), 1);
        assert!(matches!(workers.reserve("w1", 4, peer(4)), Claim::Attaching(h) if h.conn_id == 3));
        assert!(workers.attach(r, fake(3)));
    }

    #[test]
    fn disconnect_takes_a_reservation_away() {
        let (workers, mut events) = Workers::new();
        let r = reserved(workers.reserve("w1", 1, peer(1)));
        workers.disconnect("w1");
        let conn = fake(1);
        assert!(
            !workers.attach(r, conn.clone()),
            "the worker was removed while attaching"
        );
        assert!(workers.get("w1").is_none());
        assert!(events.try_recv().is_err(), "the core hears nothing");
        // And an attached one is dropped.
        let conn = fake(2);
        assert!(workers.attach(reserved(workers.reserve("w1", 2, peer(2))), conn.clone()));
        workers.disconnect("w1");
        assert!(conn.dropped.load(Ordering::SeqCst));
    }
}
