//! Who is connected to a port: the open connections, how many come from each client address,
//! and which are still sending their first request's headers (those may be closed to make
//! room at the total cap). Plain bookkeeping under one lock; no I/O.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// The connection table of one port. Shared by its accept loop and its connections.
#[derive(Default)]
pub(crate) struct Table {
    inner: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    open: usize,
    next_id: u64,
    /// Connections (or, behind a proxy, requests in flight) per client address.
    per_address: HashMap<IpAddr, usize>,
    /// Connections that have not finished their first request's headers, oldest first (ids
    /// grow with accept order); each with the bell that closes it.
    in_headers: BTreeMap<u64, Arc<Notify>>,
}

/// What the accept loop decides for a new connection at the total cap.
pub(crate) enum Admission {
    /// Room for it (possibly after closing the oldest connection still in its headers).
    Admitted(Slot),
    /// The cap is held by connections past their headers (attached workers, requests being
    /// answered): the new one is refused.
    Full,
}

/// One open connection's place in the table; dropping it (when the socket closes, even after
/// an upgrade) gives the place back.
pub(crate) struct Slot {
    table: Arc<Table>,
    id: u64,
    address: Option<IpAddr>,
    /// Rung when the connection is closed to make room for a newer one.
    pub(crate) evicted: Arc<Notify>,
}

impl Table {
    fn lock(&self) -> MutexGuard<'_, Counts> {
        // A panic under this lock leaves plain counters behind; they are still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a place for a new connection. At `max` open connections, the oldest one still
    /// sending its first request's headers is told to close and the new one takes its place:
    /// thousands of half-sent requests cannot lock out a real client.
    pub(crate) fn admit(self: &Arc<Self>, max: usize) -> Admission {
        let mut c = self.lock();
        if c.open >= max {
            match c.in_headers.pop_first() {
                Some((_, bell)) => bell.notify_one(),
                None => return Admission::Full,
            }
        }
        c.open += 1;
        c.next_id += 1;
        let id = c.next_id;
        let evicted = Arc::new(Notify::new());
        c.in_headers.insert(id, evicted.clone());
        Admission::Admitted(Slot {
            table: self.clone(),
            id,
            address: None,
            evicted,
        })
    }

    /// Counts one more connection or request from `address`; `false` (nothing counted) when
    /// it already has `max`.
    fn claim(&self, address: IpAddr, max: usize) -> bool {
        let mut c = self.lock();
        let n = c.per_address.entry(address).or_insert(0);
        if *n >= max {
            if *n == 0 {
                c.per_address.remove(&address);
            }
            return false;
        }
        *n += 1;
        true
    }

    fn release(&self, address: IpAddr) {
        let mut c = self.lock();
        if let Some(n) = c.per_address.get_mut(&address) {
            *n -= 1;
            if *n == 0 {
                c.per_address.remove(&address);
            }
        }
    }

    /// A request in flight from `address` (a client behind a trusted proxy, whose connections
    /// are the proxy's); `None` when that client already has `max` in flight.
    pub(crate) fn claim_request(
        self: &Arc<Self>,
        address: IpAddr,
        max: usize,
    ) -> Option<RequestSlot> {
        self.claim(address, max).then(|| RequestSlot {
            table: self.clone(),
            address,
        })
    }

    #[cfg(test)]
    fn open(&self) -> usize {
        self.lock().open
    }
}

impl Slot {
    /// Counts this connection against `address`'s cap; `false` when the address is already
    /// at `max` (the connection should be closed at once).
    pub(crate) fn claim_address(&mut self, address: IpAddr, max: usize) -> bool {
        debug_assert!(self.address.is_none());
        let ok = self.table.claim(address, max);
        if ok {
            self.address = Some(address);
        }
        ok
    }

    /// The first request's headers are in: this connection is no longer the one closed to
    /// make room.
    #[cfg(test)]
    fn headers_done(&self) {
        self.mark().done();
    }

    /// What the connection's HTTP side calls when its first request's headers are in (the
    /// slot itself goes with the socket).
    pub(crate) fn mark(&self) -> HeadersMark {
        HeadersMark {
            table: self.table.clone(),
            id: self.id,
        }
    }
}

/// See [`Slot::mark`].
#[derive(Clone)]
pub(crate) struct HeadersMark {
    table: Arc<Table>,
    id: u64,
}

impl HeadersMark {
    pub(crate) fn done(&self) {
        self.table.lock().in_headers.remove(&self.id);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(a) = self.address {
            self.table.release(a);
        }
        let mut c = self.table.lock();
        c.open -= 1;
        c.in_headers.remove(&self.id);
    }
}

/// One request in flight from a client behind a proxy; dropping it gives the place back.
pub(crate) struct RequestSlot {
    table: Arc<Table>,
    address: IpAddr,
}

impl Drop for RequestSlot {
    fn drop(&mut self) {
        self.table.release(self.address);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admitted(a: Admission) -> Slot {
        match a {
            Admission::Admitted(s) => s,
            Admission::Full => panic!("expected a place"),
        }
    }

    #[test]
    fn at_the_cap_the_oldest_connection_in_its_headers_makes_room() {
        let t = Arc::new(Table::default());
        let first = admitted(t.admit(3));
        let second = admitted(t.admit(3));
        let third = admitted(t.admit(3));
        first.headers_done();
        let _fourth = admitted(t.admit(3));
        // `first` is past its headers; `second` is the oldest still in them.
        assert!(second.evicted.notified().now_or_never_ready());
        assert!(!third.evicted.notified().now_or_never_ready());
    }

    #[test]
    fn a_full_table_of_finished_headers_refuses_the_newcomer() {
        let t = Arc::new(Table::default());
        let a = admitted(t.admit(1));
        a.headers_done();
        assert!(matches!(t.admit(1), Admission::Full));
        drop(a);
        assert_eq!(t.open(), 0);
        assert!(matches!(t.admit(1), Admission::Admitted(_)));
    }

    #[test]
    fn an_address_at_its_cap_is_refused_until_one_closes() {
        let t = Arc::new(Table::default());
        let ip: IpAddr = [127, 0, 0, 2].into();
        let mut a = admitted(t.admit(10));
        let mut b = admitted(t.admit(10));
        assert!(a.claim_address(ip, 1));
        assert!(!b.claim_address(ip, 1));
        drop(a);
        assert!(b.claim_address(ip, 1));
        let r = t.claim_request(ip, 2).expect("one more fits");
        assert!(t.claim_request(ip, 2).is_none());
        drop(r);
        drop(b);
        assert!(t.lock().per_address.is_empty());
    }

    /// `Notify::notified` resolves at once when a permit is stored.
    trait NowOrNever {
        fn now_or_never_ready(self) -> bool;
    }
    impl<F: std::future::Future> NowOrNever for F {
        fn now_or_never_ready(self) -> bool {
            let waker = std::task::Waker::noop();
            let mut cx = std::task::Context::from_waker(waker);
            let mut f = std::pin::pin!(self);
            f.as_mut().poll(&mut cx).is_ready()
        }
    }
}
