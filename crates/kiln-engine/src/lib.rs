//! Kiln's scheduling logic, pure and deterministic: schedulers, build-request distribution,
//! and build and step results with Buildbot's semantics.
//!
//! Nothing here does I/O or reads the time itself. Time comes in as an argument (from a
//! [`Clock`]; tests use [`FakeClock`]); the queue lives behind the [`queue::Store`] trait,
//! which `kiln-store` implements on the database ([`queue::MemStore`] is the in-memory one);
//! events go out through [`queue::Bus`].
//!
//! * [`results`] — how a step's result and flags (`halt_on_failure`, `flunk_on_failure`,
//!   `warn_on_failure`, `flunk_on_warnings`, `warn_on_warnings`, `always_run`) merge into the
//!   build's result; `decodeRC`; stopped steps.
//! * [`build`] — a build's state machine: next step, stop (CANCELLED), worker lost (RETRY and
//!   requeue), internal errors.
//! * [`schedulers`] — `single_branch`/`any_branch` with tree-stable timers and file
//!   importance, `nightly` (cron in a time zone, DST-safe), `periodic`, `triggerable`,
//!   `dependent`, `force` with typed parameters. They output [`schedulers::BuildsetRequest`]s.
//! * [`distributor`] — which pending requests start now on which worker: priorities,
//!   round-robin fairness, collapsing, `max_builds`, locks, downtime windows.
//! * [`queue`] — submit, dispatch, finish and cancel on top of a [`queue::Store`].
//!
//! The input types (builders, workers, locks, scheduler definitions) are the engine's own;
//! `kiln-config` maps the typed config into them.

pub mod build;
pub mod clock;
pub mod distributor;
pub mod queue;
pub mod results;
pub mod schedulers;

pub use clock::{Clock, FakeClock, SystemClock};
