//! The running master: loads `master.star`, opens the store, recovers after a crash, serves
//! the worker endpoint and the web port, runs schedulers and the distribution loop, and
//! applies `reconfig` in place.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use crate::api::Control;

#[derive(Debug, Clone)]
pub struct MasterOptions {
    /// The master directory (holds `master.star`, the SQLite file by default, uploads, logs).
    pub basedir: PathBuf,
    /// Defaults to `basedir/master.star`.
    pub config_file: Option<PathBuf>,
    /// Address both ports listen on (`0.0.0.0` for a real farm; tests use 127.0.0.1).
    pub bind: IpAddr,
    /// Override the config's ports (0 = pick a free port; tests and benchmarks use it).
    pub web_port: Option<u16>,
    pub worker_port: Option<u16>,
}

impl MasterOptions {
    pub fn new(basedir: impl Into<PathBuf>) -> MasterOptions {
        MasterOptions {
            basedir: basedir.into(),
            config_file: None,
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            web_port: None,
            worker_port: None,
        }
    }
}

/// What a reconfig changed, for the log and the `kiln reconfig` output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconfigReport {
    pub summary: String,
}

/// A started master. Dropping it does not stop it; call [`Master::shutdown`].
pub struct Master {
    _private: (),
}

impl Master {
    /// Loads the config (an error carries file:line:col), opens and migrates the store,
    /// requeues what a crashed master left, binds both ports and starts every loop.
    pub async fn start(opts: MasterOptions) -> anyhow::Result<Master> {
        let _ = opts;
        todo!("core")
    }

    pub fn web_addr(&self) -> SocketAddr {
        todo!("core")
    }

    pub fn worker_addr(&self) -> SocketAddr {
        todo!("core")
    }

    /// Re-reads `master.star` and applies the difference. A broken file is rejected with its
    /// error and the running config stays.
    pub async fn reconfig(&self) -> Result<ReconfigReport, kiln_config::ConfigError> {
        todo!("core")
    }

    pub fn control(&self) -> Arc<dyn Control> {
        todo!("core")
    }

    /// Stops accepting work, disconnects workers (their builds end RETRY and are requeued by
    /// the next start), closes the store.
    pub async fn shutdown(self) {
        todo!("core")
    }
}
