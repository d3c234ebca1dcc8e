//! `kiln-worker`: runs builds for a Buildbot 4.3 or Kiln master.
//!
//! The binary's `main.rs` only parses the command line; everything lives here.

pub mod commands;
pub mod config;
pub mod connection;
pub mod info;
pub mod link;
pub mod policy;
#[cfg(feature = "tls")]
pub mod tls;
