//! Step locks: a step with `locks = [...]` waits until it holds them all. A master lock is one
//! semaphore for the farm; a worker lock one per worker. Counting access takes one permit,
//! exclusive access all of them (Buildbot's `maxCount` semantics). Builder-level locks are
//! decided earlier, by the distributor, before a build starts.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use kiln_config::{AccessMode, LockAccess, LockScope};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// (lock name, worker for worker locks).
type LockKey = (String, Option<String>);

#[derive(Default)]
pub(crate) struct StepLocks {
    /// Each lock's semaphore and size.
    sems: Mutex<HashMap<LockKey, (Arc<Semaphore>, u32)>>,
}

/// Held locks; dropping releases them.
pub(crate) struct Held(#[allow(dead_code)] Vec<OwnedSemaphorePermit>);

impl StepLocks {
    fn semaphore(&self, access: &LockAccess, worker: &str) -> (Arc<Semaphore>, u32) {
        let lock = &access.lock;
        let (key, max) = match lock.scope {
            LockScope::Master => ((lock.name.clone(), None), lock.max_count),
            _ => (
                (lock.name.clone(), Some(worker.to_string())),
                lock.max_count_for_worker
                    .get(worker)
                    .copied()
                    .unwrap_or(lock.max_count),
            ),
        };
        let max = max.max(1);
        let mut sems = self.sems.lock().expect("locks");
        let entry = sems
            .entry(key)
            .or_insert_with(|| (Arc::new(Semaphore::new(max as usize)), max));
        entry.clone()
    }

    /// Waits for every lock (in name order, so two steps never wait on each other in a cycle).
    pub(crate) async fn acquire(&self, locks: &[LockAccess], worker: &str) -> Held {
        let mut wanted: BTreeMap<(String, bool), (Arc<Semaphore>, u32)> = BTreeMap::new();
        for l in locks {
            let (sem, max) = self.semaphore(l, worker);
            let n = if l.access == AccessMode::Exclusive {
                max
            } else {
                1
            };
            let e = wanted
                .entry((
                    l.lock.name.clone(),
                    matches!(l.lock.scope, LockScope::Master),
                ))
                .or_insert((sem, 0));
            e.1 = e.1.max(n);
        }
        let mut held = Vec::new();
        for (_, (sem, n)) in wanted {
            held.push(
                sem.acquire_many_owned(n)
                    .await
                    .expect("lock semaphores are never closed"),
            );
        }
        Held(held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn access(name: &str, scope: LockScope, max: u32, mode: AccessMode) -> LockAccess {
        LockAccess {
            lock: kiln_config::Lock {
                name: name.into(),
                scope,
                max_count: max,
                max_count_for_worker: BTreeMap::new(),
                loc: Default::default(),
            },
            access: mode,
        }
    }

    async fn blocks(locks: &StepLocks, want: &[LockAccess], worker: &str) -> bool {
        tokio::time::timeout(Duration::from_millis(50), locks.acquire(want, worker))
            .await
            .is_err()
    }

    #[tokio::test]
    async fn counting_exclusive_and_scopes() {
        let locks = StepLocks::default();
        let cpu2 = access("cpu", LockScope::Worker, 2, AccessMode::Counting);
        let cpu_x = access("cpu", LockScope::Worker, 2, AccessMode::Exclusive);
        let up = access("upload", LockScope::Master, 1, AccessMode::Counting);
        let a = locks.acquire(std::slice::from_ref(&cpu2), "w1").await;
        let b = locks.acquire(std::slice::from_ref(&cpu2), "w1").await;
        assert!(
            blocks(&locks, std::slice::from_ref(&cpu2), "w1").await,
            "two counting holders max"
        );
        assert!(
            !blocks(&locks, std::slice::from_ref(&cpu2), "w2").await,
            "worker locks are per worker"
        );
        drop(a);
        assert!(
            blocks(&locks, std::slice::from_ref(&cpu_x), "w1").await,
            "exclusive waits for every holder"
        );
        drop(b);
        let x = locks.acquire(std::slice::from_ref(&cpu_x), "w1").await;
        assert!(
            blocks(&locks, std::slice::from_ref(&cpu2), "w1").await,
            "nobody beside an exclusive holder"
        );
        drop(x);
        let u = locks.acquire(std::slice::from_ref(&up), "w1").await;
        assert!(
            blocks(&locks, std::slice::from_ref(&up), "w2").await,
            "master locks span workers"
        );
        drop(u);
        assert!(!blocks(&locks, &[up, cpu2], "w2").await);
    }
}
