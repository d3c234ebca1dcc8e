//! TEMPORARY: placeholders so the master compiles until the endpoint lands (removed at merge).
#![allow(dead_code, unused_variables)]
use std::sync::Arc;

use super::{EndpointOptions, Roster};

pub enum WorkerEvent { Attached(Arc<WorkerConn>), Detached { name: String, conn_id: u64 } }
#[derive(Clone)] pub struct Endpoint;
impl Endpoint {
    pub fn new(_r: Roster, _o: EndpointOptions, _e: tokio::sync::mpsc::UnboundedSender<WorkerEvent>) -> Endpoint { Endpoint }
    pub fn router(&self) -> axum::Router { unimplemented!("endpoint pending") }
    pub fn get(&self, _n: &str) -> Option<Arc<WorkerConn>> { None }
    pub fn connected(&self) -> Vec<Arc<WorkerConn>> { Vec::new() }
    pub fn disconnect(&self, _n: &str) {}
}
pub async fn serve(_l: tokio::net::TcpListener, _t: Option<Arc<rustls::ServerConfig>>, _e: Endpoint, _s: impl std::future::Future<Output=()> + Send + 'static) -> std::io::Result<()> { Ok(()) }
pub struct WorkerConn;
impl WorkerConn { pub fn name(&self) -> &str { "" } pub fn conn_id(&self) -> u64 { 0 } pub fn info(&self) -> &serde_json::Map<String, serde_json::Value> { unimplemented!() } pub fn peer(&self) -> std::net::SocketAddr { unimplemented!() } }
impl crate::remote::Remote for WorkerConn {
    fn worker_name(&self) -> &str { "" }
    fn basedir(&self) -> &str { "" }
    fn is_windows(&self) -> bool { false }
    fn has_command(&self, _n: &str) -> bool { false }
    fn ping(&self) -> crate::remote::BoxFuture<'_, Result<(), crate::remote::RemoteError>> { Box::pin(async { Err(crate::remote::RemoteError::NotConnected) }) }
    fn start(&self, _s: crate::remote::CommandSpec, _t: crate::remote::Transfer) -> crate::remote::BoxFuture<'_, Result<crate::remote::RunningCommand, crate::remote::RemoteError>> { Box::pin(async { Err(crate::remote::RemoteError::NotConnected) }) }
}
