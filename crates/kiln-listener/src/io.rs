//! The socket as HTTP sees it: bytes already read while looking for a PROXY header are
//! replayed first, reads and writes are timed for the header and idle timeouts, and the
//! connection's place in the port's table lives as long as the socket (past an upgrade).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::table::Slot;

/// When a connection last did what, in milliseconds since it was accepted.
pub(crate) struct Activity {
    start: Instant,
    /// When the request head now being read began (+1; `0`: idle between requests,
    /// [`IN_REQUEST`]: a request is being answered).
    head_since: AtomicU64,
    last_io: AtomicU64,
    /// Rung when `head_since` changes, so the deadline watcher recomputes its deadline.
    pub(crate) changed: Notify,
}

pub(crate) const IN_REQUEST: u64 = u64::MAX;

impl Activity {
    /// The first request's head is due from the moment of the accept: a client that connects
    /// and sends nothing is timed out like one that sends half a line.
    pub(crate) fn new() -> Activity {
        Activity {
            start: Instant::now(),
            head_since: AtomicU64::new(1),
            last_io: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub(crate) fn start(&self) -> Instant {
        self.start
    }

    fn read(&self) {
        let now = self.now_ms();
        self.last_io.store(now, Ordering::Relaxed);
        // The first byte after an idle spell starts the next request's head.
        if self
            .head_since
            .compare_exchange(0, now + 1, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.changed.notify_one();
        }
    }

    fn wrote(&self) {
        self.last_io.store(self.now_ms(), Ordering::Relaxed);
    }

    pub(crate) fn request_started(&self) {
        self.head_since.store(IN_REQUEST, Ordering::Relaxed);
        self.changed.notify_one();
    }

    pub(crate) fn request_answered(&self) {
        self.last_io.store(self.now_ms(), Ordering::Relaxed);
        self.head_since.store(0, Ordering::Relaxed);
        self.changed.notify_one();
    }

    /// `(head_since, last_io)` as stored.
    pub(crate) fn snapshot(&self) -> (u64, u64) {
        (
            self.head_since.load(Ordering::Relaxed),
            self.last_io.load(Ordering::Relaxed),
        )
    }
}

/// A TCP stream with the bytes read ahead of it replayed first.
pub(crate) struct Conn {
    ahead: Vec<u8>,
    pos: usize,
    tcp: TcpStream,
    activity: Arc<Activity>,
    _slot: Slot,
}

impl Conn {
    pub(crate) fn new(tcp: TcpStream, ahead: Vec<u8>, activity: Arc<Activity>, slot: Slot) -> Conn {
        Conn {
            ahead,
            pos: 0,
            tcp,
            activity,
            _slot: slot,
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.ahead.len() {
            let n = buf.remaining().min(this.ahead.len() - this.pos);
            buf.put_slice(&this.ahead[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.ahead.len() {
                this.ahead = Vec::new();
                this.pos = 0;
            }
            this.activity.read();
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.tcp).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.read();
        }
        r
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.tcp).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.wrote();
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.wrote();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}
