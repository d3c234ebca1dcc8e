//! Serving the endpoint on the worker port through `kiln-listener` (caps, timeouts, PROXY
//! protocol, TLS); the client's address reaches the handshake as axum's `ConnectInfo`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Extension;
use axum::extract::ConnectInfo;
use kiln_listener::{Peer, Port, Settings};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::Endpoint;

/// A client address given as `ConnectInfo<PeerAddr>` (the handshake also reads
/// `ConnectInfo<SocketAddr>`, which is what [`serve`] gives it).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Serves the endpoint on `listener` (TLS when `tls` is set) with the listener's default
/// caps and timeouts until `shutdown` resolves; then drops every worker connection.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    endpoint: Endpoint,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (_settings, rx) = watch::channel(Arc::new(Settings {
        tls,
        ..Settings::default()
    }));
    serve_with(listener, rx, endpoint, shutdown).await
}

/// [`serve`] with settings that may change while it runs (reconfig): each new connection
/// uses the latest.
pub async fn serve_with(
    listener: TcpListener,
    settings: watch::Receiver<Arc<Settings>>,
    endpoint: Endpoint,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = endpoint.router();
    let ep = endpoint.clone();
    let shutdown = async move {
        shutdown.await;
        ep.close_all();
    };
    // The client behind a trusted proxy (PROXY protocol) is the one failed logins count.
    let per_connection = move |peer: Peer| app.clone().layer(Extension(ConnectInfo(peer.client)));
    kiln_listener::serve(listener, Port::WORKERS, settings, per_connection, shutdown).await
}
