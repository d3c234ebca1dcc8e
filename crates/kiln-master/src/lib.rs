//! Kiln's master core: everything the master does except talking on a port.
//!
//! * [`farm`]: [`Farm::start`](farm::Farm::start) loads `master.star`, opens the store,
//!   recovers after a crash and runs the loops (worker arrivals, scheduling and distribution,
//!   heartbeat, retention); [`Farm::reconfig`](farm::Farm::reconfig) applies a config change;
//! * [`control`]: the [`Control`] seam the web, the CLI and later the reporters call (force,
//!   stop, cancel, changes), with its request and error types;
//! * `runner` (one build: plan, then the step loop), [`steps`] (configured steps → remote
//!   commands, logs and results), `locks` (step locks), [`sched`] (config → engine
//!   schedulers), [`metrics`] (counters for `/metrics`), [`config_proc`] (evaluating
//!   `master.star` in a child process).
//!
//! Workers reach the core through `kiln-remote`'s [`Workers`](kiln_remote::Workers)
//! registry, filled by an endpoint; the `kiln` binary wires the two with the web port.

pub mod config_proc;
pub mod control;
pub mod farm;
mod locks;
pub mod metrics;
mod runner;
pub mod sched;
pub mod steps;

pub use control::{ChangeRequest, Control, ControlError, ForceRequest};
pub use farm::{Farm, FarmOptions, ReconfigReport};
pub use metrics::Metrics;
