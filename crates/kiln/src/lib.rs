//! The `kiln` command. `main.rs` calls [`cli::main`]; [`master`] wires a running master
//! together: the core ([`kiln_master::Farm`]), the worker endpoint
//! ([`kiln_endpoint::Endpoint`]) on the worker port and the web port ([`kiln_web`]).

pub mod cli;
pub mod master;

pub use master::{Master, MasterOptions};
