//! Time as the engine sees it: a [`Clock`] trait, so tests drive time by hand with [`FakeClock`].

use std::sync::atomic::{AtomicI64, Ordering};

use kiln_model::Epoch;

/// The current time, in Unix epoch seconds (what the store keeps).
pub trait Clock: Send + Sync {
    fn now(&self) -> Epoch;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Epoch {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as Epoch)
            .unwrap_or(0)
    }
}

/// A clock that moves only when told to; shared by reference between the test and the engine.
#[derive(Debug, Default)]
pub struct FakeClock(AtomicI64);

impl FakeClock {
    pub fn new(now: Epoch) -> Self {
        FakeClock(AtomicI64::new(now))
    }

    /// Moves the clock forward (or back, with a negative `secs`).
    pub fn advance(&self, secs: i64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }

    pub fn set(&self, now: Epoch) {
        self.0.store(now, Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Epoch {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_clock_moves_only_when_told() {
        let c = FakeClock::new(1000);
        assert_eq!(c.now(), 1000);
        c.advance(30);
        assert_eq!(c.now(), 1030);
        c.set(5);
        assert_eq!(c.now(), 5);
        assert!(SystemClock.now() > 1_700_000_000);
    }
}
