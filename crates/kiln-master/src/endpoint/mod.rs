//! The worker endpoint: Buildbot's `msgpack_experimental_v7` over WebSocket (spec
//! `shared/spec/worker-protocol.md`). HTTP Basic auth checked in constant time before the
//! upgrade, failed logins rate-limited per address, a message size cap, the attach sequence
//! of spec §4.1, duplicate-name arbitration (§4.3), dead-connection detection, and
//! [`WorkerConn`], which implements [`crate::remote::Remote`] for builds.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How the master checks one worker's password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordCheck {
    /// The password itself (from `secret("...")`); compared in constant time.
    Plain(String),
    /// An argon2 PHC string (`$argon2id$...`).
    Argon2(String),
}

/// What the endpoint needs to know about one configured worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerEntry {
    pub password: PasswordCheck,
    /// Builder directory names (`builddir`, default the builder name) this worker serves;
    /// the attach sequence creates the missing ones (spec §4.1 step 4).
    pub builder_dirs: Vec<String>,
}

/// The configured workers; the master replaces the map on reconfig. A worker removed from
/// the roster is disconnected by the master (not by the endpoint).
#[derive(Debug, Clone, Default)]
pub struct Roster(pub Arc<RwLock<HashMap<String, WorkerEntry>>>);

#[derive(Debug, Clone)]
pub struct EndpointOptions {
    /// Largest WebSocket message accepted; a bigger one closes that connection only.
    pub max_message_bytes: usize,
    /// Failed logins allowed per remote address per minute; more get 429 without a check.
    pub failed_logins_per_minute: u32,
    /// A WebSocket ping is sent after this long without traffic from the worker …
    pub idle_ping_after: Duration,
    /// … and the connection is dropped if nothing arrives this long after it.
    pub dead_after: Duration,
    /// How long the old connection has to answer the duplicate-connection `print` (§4.3).
    pub duplicate_check_timeout: Duration,
}

impl Default for EndpointOptions {
    fn default() -> Self {
        EndpointOptions {
            max_message_bytes: 16 * 1024 * 1024,
            failed_logins_per_minute: 10,
            idle_ping_after: Duration::from_secs(60),
            dead_after: Duration::from_secs(60),
            duplicate_check_timeout: Duration::from_secs(10),
        }
    }
}

mod stub;
pub use stub::*;
