//! A running master: the core with its two ports. The core binds nothing; here the worker
//! port gets the msgpack endpoint (plain or TLS) and the web port the API and pages.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use kiln_endpoint::{Endpoint, EndpointOptions};
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
    let tls = match (&cfg.master.tls_cert, &cfg.master.tls_key) {
        (Some(cert), Some(key)) => Some(kiln_endpoint::tls::server_config(
            &farm.basedir().join(cert),
            &farm.basedir().join(key),
        )?),
        _ => None,
    };
    Ok(Ports { worker, web, tls })
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
        let worker_addr = ports.worker.local_addr()?;
        let web_addr = ports.web.local_addr()?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let stop = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let endpoint = Endpoint::new(
            farm.roster().clone(),
            EndpointOptions::default(),
            farm.workers().clone(),
        );
        let sd = stop(shutdown_rx.clone());
        let (worker_listener, tls) = (ports.worker, ports.tls);
        let serve_workers = tokio::spawn(async move {
            if let Err(e) = kiln_endpoint::serve(worker_listener, tls, endpoint, sd).await {
                tracing::error!("worker endpoint stopped: {e}");
            }
        });
        let state =
            kiln_web::ApiState::new(farm.store().clone(), farm.control(), farm.metrics().clone());
        let app = kiln_web::app(state);
        let sd = stop(shutdown_rx);
        let web_listener = axum::serve::ListenerExt::tap_io(ports.web, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let serve_web = tokio::spawn(async move {
            if let Err(e) = axum::serve(web_listener, app)
                .with_graceful_shutdown(sd)
                .await
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
        })
    }

    pub fn web_addr(&self) -> SocketAddr {
        self.web_addr
    }

    pub fn worker_addr(&self) -> SocketAddr {
        self.worker_addr
    }

    /// Re-reads `master.star` and applies the difference. A broken file is rejected with its
    /// error and the running config stays.
    pub async fn reconfig(&self) -> Result<ReconfigReport, kiln_config::ConfigError> {
        self.farm.reconfig().await
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
