//! `kiln-worker`: runs builds for a Buildbot 4.3 or Kiln master.
//!
//! The binary's `main.rs` only calls [`cli::main`]; everything lives here.
//!
//! Lifecycle: [`cli`] parses the command line; [`create`] makes a worker
//! directory; [`lifecycle`] runs, starts (detaching on Unix), stops and restarts
//! it with `kiln_daemon`'s flock'ed pidfile, daemonizing, rotating log and
//! signals; [`service`] prints boot-time service files; [`doctor`] checks the
//! machine. [`connection::serve`] is the network side.

pub mod cli;
pub mod commands;
pub mod config;
pub mod connection;
pub mod create;
pub mod doctor;
pub mod info;
pub mod lifecycle;
pub mod link;
pub mod machine;
pub mod policy;
pub mod service;
#[cfg(feature = "tls")]
pub mod tls;
