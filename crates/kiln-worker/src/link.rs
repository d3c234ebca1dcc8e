//! The channel through which commands talk to the master over the current session.
//!
//! A session's writer task owns the WebSocket; everything else sends it
//! [`Outgoing`] items through a bounded channel, which gives back-pressure: a
//! command that produces output faster than the master takes it waits here
//! instead of buffering without bound.

use kiln_proto::{Op, Response};
use tokio::sync::{mpsc, oneshot};

/// One item for the session's writer task.
#[derive(Debug)]
pub enum Outgoing {
    /// A request; the writer numbers it, and routes the response to `reply` if given.
    Request {
        op: Op,
        reply: Option<oneshot::Sender<Response>>,
    },
    /// Our answer to one of the master's requests.
    Response(Response),
}

/// The session is gone (connection lost or closed); nothing more reaches that master.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the connection to the master is gone")]
pub struct LinkClosed;

/// A cloneable handle for sending to the master over one session.
#[derive(Clone, Debug)]
pub struct MasterLink {
    tx: mpsc::Sender<Outgoing>,
}

impl MasterLink {
    /// A link and the receiving end its session's writer drains.
    pub fn channel(capacity: usize) -> (MasterLink, mpsc::Receiver<Outgoing>) {
        let (tx, rx) = mpsc::channel(capacity);
        (MasterLink { tx }, rx)
    }

    /// Sends a request without waiting for its response (`update`, `complete`).
    pub async fn send(&self, op: Op) -> Result<(), LinkClosed> {
        self.tx
            .send(Outgoing::Request { op, reply: None })
            .await
            .map_err(|_| LinkClosed)
    }

    /// Sends a request and waits for the master's response (file transfers).
    pub async fn call(&self, op: Op) -> Result<Response, LinkClosed> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Outgoing::Request {
                op,
                reply: Some(reply),
            })
            .await
            .map_err(|_| LinkClosed)?;
        rx.await.map_err(|_| LinkClosed)
    }

    /// Answers one of the master's requests.
    pub async fn respond(&self, response: Response) -> Result<(), LinkClosed> {
        self.tx
            .send(Outgoing::Response(response))
            .await
            .map_err(|_| LinkClosed)
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}
