//! Kiln's master. `main.rs` is the `kiln` command line; this library holds the parts:
//!
//! * [`endpoint`]: the worker endpoint (msgpack over WebSocket) and connected workers;
//! * [`remote`]: what a build needs from a worker, as a trait;
//! * [`steps`]: configured steps → remote commands, logs and results;
//! * [`api`]: the REST API (`/api/v2`), `/metrics` and `/health`.

pub mod api;
pub mod cli;
pub mod config_proc;
pub mod endpoint;
mod locks;
pub mod master;
pub mod remote;
mod runner;
pub mod sched;
pub mod steps;
pub mod tls;
mod web;
