//! Helpers for Kiln's benchmarks and tests (never shipped):
//! [`swarm`], a fake-worker swarm that attaches thousands of idle workers to a master, and
//! [`master`], which starts a `kiln` master process on free loopback ports, and [`pg`], a
//! fresh PostgreSQL database per test.

pub mod master;
pub mod pg;
pub mod swarm;

pub use master::{MasterProc, free_port, http_get, start_master};
pub use swarm::{Swarm, SwarmConfig};
