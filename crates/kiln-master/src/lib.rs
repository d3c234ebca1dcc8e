//! Kiln's master core: everything the master does except talking on a port.
//!
//! * [`farm`]: [`Farm::start`] loads `master.star`, opens the store and the event bus,
//!   recovers after a crash and starts the farm task, which owns the farm's state (builds
//!   running, schedulers, worker ids) and runs scheduling and distribution;
//!   [`Farm::reconfig`] applies a config change without stopping a build;
//! * [`control`]: the [`Control`] seam the web, the CLI and later the reporters call (force,
//!   stop, cancel, changes), with its request and error types;
//! * `runner`: one build, planned (`plan_build`, pure) and then run step by step;
//!   [`steps`]: configured steps → remote commands, logs and results; `locks`: step locks;
//!   [`sched`]: config → engine schedulers; [`metrics`]: counters for `/metrics`;
//!   [`config_proc`]: evaluating `master.star` in a child process.
//!
//! Workers reach the core through `kiln-remote`'s [`Workers`](kiln_remote::Workers)
//! registry, which an endpoint fills; everything the farm changes is published as a
//! [`kiln_model::Event`] on its [`EventBus`](kiln_store::EventBus). The `kiln` binary wires
//! the core to the worker endpoint and the web port.

pub mod config_proc;
pub mod control;
pub mod farm;
mod locks;
pub mod metrics;
mod runner;
pub mod sched;
pub mod steps;

pub use control::{ChangeRequest, Control, ControlError, ForceRequest};
pub use farm::{Farm, FarmOptions, ReconfigReport, StartError};
pub use metrics::Metrics;

/// An error and its sources on one line (`outer: inner: root`), for a log line, a step's
/// `err.text` or an answer.
pub use kiln_proto::error_chain;
