//! `kiln-worker`: runs builds for a Buildbot 4.3 or Kiln master.
//!
//! The binary's `main.rs` only calls [`cli::main`]; everything lives here.
//!
//! Lifecycle: [`cli`] parses the command line; [`create`] makes a worker
//! directory; [`lifecycle`] runs, starts (detaching through [`daemon`] on Unix),
//! stops and restarts it, guarded by the flock'ed [`pidfile`] and logging to a
//! size-rotated file ([`logging`]); [`service`] prints boot-time service files;
//! [`doctor`] checks the machine. [`connection::serve`] is the network side.

pub mod cli;
pub mod commands;
pub mod config;
pub mod connection;
pub mod create;
#[cfg(unix)]
pub mod daemon;
pub mod doctor;
pub mod info;
pub mod lifecycle;
pub mod link;
pub mod logging;
pub mod machine;
pub mod pidfile;
pub mod policy;
pub mod service;
#[cfg(feature = "tls")]
pub mod tls;
