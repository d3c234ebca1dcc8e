//! A running master: the core with its two ports. The core binds nothing; here the worker
//! port gets the msgpack endpoint (plain or TLS) and the web port the API and pages.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use kiln_config::MasterSettings;
use kiln_endpoint::{Endpoint, EndpointOptions};
use kiln_listener::Settings as PortSettings;
use kiln_master::{Control, Farm, FarmOptions, ReconfigReport};
use kiln_store::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, Clone)]
pub struct MasterOptions {
    /// The master directory (holds `master.star`, the SQLite file by default, uploads, logs).
    pub basedir: PathBuf,
    /// Defaults to `basedir/master.star`.
    pub config_file: Option<PathBuf>,
    /// Address both ports listen on (`0.0.0.0` for a real farm; tests use 127.0.0.1). When
    /// left unspecified, `master(bind = ...)` in the config decides.
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

/// A started master. Dropping it does not stop it; call [`Master::shutdown`].
pub struct Master {
    farm: Farm,
    web_addr: SocketAddr,
    worker_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// What each port's listener reads at its next accept; reconfig sends new ones.
    worker_settings: watch::Sender<Arc<PortSettings>>,
    web_settings: watch::Sender<Arc<PortSettings>>,
    endpoint: Endpoint,
    /// A fingerprint of the TLS certificate and key files in use, so a reconfig can tell a
    /// replaced file (a renewed certificate under the same name) from an unchanged one.
    tls_files: std::sync::Mutex<Option<u64>>,
}

/// The two listening sockets and the worker port's TLS, bound before anything is served.
struct Ports {
    worker: TcpListener,
    web: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
}

async fn bind_ports(opts: &MasterOptions, farm: &Farm) -> anyhow::Result<Ports> {
    let cfg = farm.config();
    let bind = match (opts.bind, cfg.master.bind) {
        (IpAddr::V4(a), Some(b)) if a.is_unspecified() => b,
        (a, _) => a,
    };
    let worker_port = opts.worker_port.unwrap_or(cfg.master.worker_port);
    let web_port = opts.web_port.unwrap_or(cfg.master.web_port);
    let worker = TcpListener::bind((bind, worker_port))
        .await
        .with_context(|| format!("cannot listen for workers on {bind}:{worker_port}"))?;
    let web = TcpListener::bind((bind, web_port))
        .await
        .with_context(|| format!("cannot listen for the web on {bind}:{web_port}"))?;
    let tls = load_tls(&cfg.master, farm.basedir())?;
    Ok(Ports { worker, web, tls })
}

/// The worker port's TLS from `master(tls_cert=..., tls_key=...)` (paths relative to the
/// master directory); `None` when they are not set.
fn load_tls(
    m: &MasterSettings,
    basedir: &Path,
) -> Result<Option<Arc<rustls::ServerConfig>>, kiln_endpoint::tls::TlsError> {
    match (&m.tls_cert, &m.tls_key) {
        (Some(cert), Some(key)) => {
            kiln_endpoint::tls::server_config(&basedir.join(cert), &basedir.join(key)).map(Some)
        }
        _ => Ok(None),
    }
}

/// What a reconfig did with the worker port's TLS.
enum TlsReload {
    /// Same files, same contents (or no TLS before and after).
    Unchanged,
    /// New files or new contents, loaded: the next handshake serves them.
    Reloaded,
    /// They could not be used (why); the old certificate is still served.
    Failed(String),
}

/// A fingerprint of the configured TLS files' names and contents (`None` without TLS, or
/// when a file cannot be read: then loading it fails too).
fn tls_fingerprint(m: &MasterSettings, basedir: &Path) -> Option<u64> {
    use std::hash::{Hash as _, Hasher as _};
    let (cert, key) = (m.tls_cert.as_ref()?, m.tls_key.as_ref()?);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for f in [cert, key] {
        f.hash(&mut h);
        std::fs::read(basedir.join(f)).ok()?.hash(&mut h);
    }
    Some(h.finish())
}

/// A port's listener settings from `master(...)`.
fn port_settings(m: &MasterSettings, tls: Option<Arc<rustls::ServerConfig>>) -> PortSettings {
    let secs = |s: u32| Duration::from_secs(u64::from(s));
    PortSettings {
        max_connections: m.max_connections as usize,
        max_connections_per_address: m.max_connections_per_address as usize,
        header_timeout: secs(m.header_timeout_secs),
        idle_timeout: secs(m.idle_timeout_secs),
        // A handshake is a few round trips; the header deadline bounds it too.
        tls_handshake_timeout: secs(m.header_timeout_secs),
        trusted_proxies: m.trusted_proxies.clone(),
        tls,
    }
}

/// Raises the soft open-files limit to the hard one (each connection is a descriptor; the
/// default soft limit of 1024 is far below the connection caps) and warns when both ports
/// at their caps would still not fit.
#[cfg(unix)]
fn raise_fd_limit(m: &MasterSettings) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let limit = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    warn_if_caps_exceed(m, limit);
}

#[cfg(not(unix))]
fn raise_fd_limit(_: &MasterSettings) {}

/// Descriptors kept apart from connections: the database, logs, uploads, the config child.
const SPARE_FDS: u64 = 256;

fn warn_if_caps_exceed(m: &MasterSettings, fd_limit: u64) {
    if let Some(warning) = fd_shortfall(m.max_connections, fd_limit) {
        tracing::warn!("{warning}");
    }
}

/// What to tell the operator when both ports at `max_connections` would not fit in
/// `fd_limit` open files.
fn fd_shortfall(max_connections: u32, fd_limit: u64) -> Option<String> {
    let needed = 2 * u64::from(max_connections) + SPARE_FDS;
    (needed > fd_limit).then(|| {
        format!(
            "max_connections = {max_connections} on each port needs about {needed} open files \
             but this process may open {fd_limit}: accepts will fail before the cap is reached; \
             raise the hard limit (ulimit -Hn, LimitNOFILE= in a systemd unit) or lower \
             max_connections"
        )
    })
}

impl Master {
    /// Starts the core (config, store, crash recovery, loops), then binds both ports and
    /// serves them. A port that cannot be bound stops the core again.
    pub async fn start(opts: MasterOptions) -> anyhow::Result<Master> {
        let farm = Farm::start(FarmOptions {
            basedir: opts.basedir.clone(),
            config_file: opts.config_file.clone(),
        })
        .await?;
        let ports = match bind_ports(&opts, &farm).await {
            Ok(p) => p,
            Err(e) => {
                farm.shutdown().await;
                return Err(e);
            }
        };
        raise_fd_limit(&farm.config().master);
        let worker_addr = ports.worker.local_addr()?;
        let web_addr = ports.web.local_addr()?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let stop = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let settings = &farm.config().master;
        let endpoint = Endpoint::new(
            farm.roster().clone(),
            EndpointOptions {
                failed_logins_per_minute: settings.failed_logins_per_minute,
                ..EndpointOptions::default()
            },
            farm.workers().clone(),
        );
        let tls_files = std::sync::Mutex::new(tls_fingerprint(settings, farm.basedir()));
        let (worker_settings, worker_rx) =
            watch::channel(Arc::new(port_settings(settings, ports.tls)));
        let (web_settings, web_rx) = watch::channel(Arc::new(port_settings(settings, None)));
        let sd = stop(shutdown_rx.clone());
        let worker_listener = ports.worker;
        let ep = endpoint.clone();
        let serve_workers = tokio::spawn(async move {
            if let Err(e) = kiln_endpoint::serve_with(worker_listener, worker_rx, ep, sd).await {
                tracing::error!("worker endpoint stopped: {e}");
            }
        });
        let state =
            kiln_web::ApiState::new(farm.store().clone(), farm.control(), farm.metrics().clone());
        let app = kiln_web::app(state);
        let sd = stop(shutdown_rx);
        let web_listener = ports.web;
        let serve_web = tokio::spawn(async move {
            let per_connection = move |_| app.clone();
            let web = kiln_listener::Port::WEB;
            if let Err(e) =
                kiln_listener::serve(web_listener, web, web_rx, per_connection, sd).await
            {
                tracing::error!("web server stopped: {e}");
            }
        });
        Ok(Master {
            farm,
            web_addr,
            worker_addr,
            shutdown,
            tasks: vec![serve_workers, serve_web],
            worker_settings,
            web_settings,
            endpoint,
            tls_files,
        })
    }

    pub fn web_addr(&self) -> SocketAddr {
        self.web_addr
    }

    pub fn worker_addr(&self) -> SocketAddr {
        self.worker_addr
    }

    /// Re-reads `master.star` and applies the difference. A broken file is rejected with its
    /// error and the running config stays. The ports' caps, timeouts and trusted proxies
    /// apply to their next connections, and the TLS certificate and key are read again (the
    /// next handshake serves the new certificate); a TLS file that cannot be used leaves the
    /// old certificate in place, and the report's summary says so.
    pub async fn reconfig(&self) -> Result<ReconfigReport, kiln_config::ConfigError> {
        let mut report = self.farm.reconfig().await?;
        let config = self.farm.config();
        let m = &config.master;
        self.endpoint
            .set_failed_logins_per_minute(m.failed_logins_per_minute);
        match self.apply_port_settings(m) {
            TlsReload::Unchanged => {}
            TlsReload::Reloaded => {
                if !report.applied.iter().any(|n| n.starts_with("tls_")) {
                    report.also_applied("TLS certificate and key (their files changed)");
                }
            }
            TlsReload::Failed(why) => {
                tracing::error!(
                    "reconfig: TLS not reloaded, the old certificate is still served: {why}"
                );
                let named: Vec<String> = report
                    .applied
                    .iter()
                    .filter(|n| n.starts_with("tls_"))
                    .cloned()
                    .collect();
                if named.is_empty() {
                    report.not_applied("TLS certificate and key files", why);
                } else {
                    for n in named {
                        report.not_applied(&n, why.clone());
                    }
                }
            }
        }
        Ok(report)
    }

    /// Sends `m`'s listener settings to both ports, with the TLS certificate and key read
    /// again from their files (a file that cannot be used keeps the old ones).
    fn apply_port_settings(&self, m: &MasterSettings) -> TlsReload {
        let fingerprint = tls_fingerprint(m, self.farm.basedir());
        let mut in_use = self.tls_files.lock().unwrap_or_else(|e| e.into_inner());
        let (tls, outcome) = match load_tls(m, self.farm.basedir()) {
            Ok(tls) if fingerprint == *in_use => (tls, TlsReload::Unchanged),
            Ok(tls) => (tls, TlsReload::Reloaded),
            Err(e) => (
                self.worker_settings.borrow().tls.clone(),
                TlsReload::Failed(kiln_master::error_chain(&e)),
            ),
        };
        if !matches!(outcome, TlsReload::Failed(_)) {
            *in_use = fingerprint;
        }
        self.worker_settings
            .send_replace(Arc::new(port_settings(m, tls)));
        self.web_settings
            .send_replace(Arc::new(port_settings(m, None)));
        #[cfg(unix)]
        if let Ok((soft, _)) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        {
            warn_if_caps_exceed(m, soft);
        }
        outcome
    }

    /// The attached workers (each with the address it connected from).
    pub fn workers(&self) -> &kiln_remote::Workers {
        self.farm.workers()
    }

    pub fn control(&self) -> Arc<dyn Control> {
        self.farm.control()
    }

    /// Every change the farm makes, as it happens.
    pub fn events(&self) -> &kiln_store::EventBus {
        self.farm.events()
    }

    /// The database this master uses (tests and the quickstart read results from it).
    pub fn store(&self) -> &Store {
        self.farm.store()
    }

    /// Stops serving both ports, then the core: running builds end RETRY and are requeued
    /// by the next start.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        self.farm.shutdown().await;
        for t in self.tasks {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fd_limit_must_hold_both_ports_at_their_caps() {
        assert_eq!(fd_shortfall(8192, 1 << 20), None);
        let warning = fd_shortfall(8192, 1024).expect("8192 connections do not fit in 1024");
        assert!(
            warning.contains("16640") && warning.contains("1024"),
            "{warning}"
        );
    }
}
