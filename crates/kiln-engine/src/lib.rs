//! Kiln's scheduling logic, pure and deterministic: schedulers, build-request distribution,
//! build and step results. Time comes from a [`Clock`],
//! so the tests run with a [`FakeClock`].

pub mod clock;
pub mod results;

pub use clock::{Clock, FakeClock, SystemClock};
pub mod build;
pub mod distributor;
pub mod queue;
pub mod schedulers;
