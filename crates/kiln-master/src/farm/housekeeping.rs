//! Work beside the farm task that needs none of its state: the master's heartbeat row, the
//! retention janitor, and handing freed memory back to the system.

use std::sync::Arc;
use std::time::Duration;

use kiln_config::MasterConfig;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Services;

const DAY: i64 = 86_400;

pub(super) fn spawn(
    s: Arc<Services>,
    config: watch::Receiver<Arc<MasterConfig>>,
    stop: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    vec![
        tokio::spawn(heartbeat(s.clone(), stop.clone())),
        tokio::spawn(janitor(s, config, stop)),
    ]
}

/// Sleeps `d`; false when the master stops meanwhile.
async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stop.wait_for(|s| *s) => false,
    }
}

/// Tells other masters on the database that this one is alive.
async fn heartbeat(s: Arc<Services>, mut stop: watch::Receiver<bool>) {
    while sleep_or_stop(Duration::from_secs(30), &mut stop).await {
        let _ = s.store.heartbeat_master(s.master_id, s.now()).await;
    }
}

/// Applies the retention horizons once an hour (and once shortly after start). The store
/// deletes in small batches, so builds keep running while it works.
async fn janitor(
    s: Arc<Services>,
    config: watch::Receiver<Arc<MasterConfig>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut wait = Duration::from_secs(60);
    while sleep_or_stop(wait, &mut stop).await {
        wait = Duration::from_secs(3600);
        let m = config.borrow().master.clone();
        let now = s.now();
        if let Some(days) = m.build_horizon_days {
            match s.store.delete_old_builds(now - i64::from(days) * DAY).await {
                Ok(r) if r.builds > 0 => tracing::info!(
                    "janitor: deleted {} builds older than {days} days",
                    r.builds
                ),
                Ok(_) => {}
                Err(e) => tracing::error!("janitor (builds): {}", crate::error_chain(&e)),
            }
        }
        if let Some(days) = m.log_horizon_days {
            match s.store.delete_old_logs(now - i64::from(days) * DAY).await {
                Ok(r) if r.logs > 0 => {
                    tracing::info!("janitor: deleted {} logs older than {days} days", r.logs)
                }
                Ok(_) => {}
                Err(e) => tracing::error!("janitor (logs): {}", crate::error_chain(&e)),
            }
        }
    }
}

/// Loading the config and migrating the store at start, and bursts later (hundreds of workers
/// attaching, a big log streamed in), leave freed memory with the allocator; hand it back so
/// an idle master stays small.
pub(super) fn release_freed_memory() {
    // The `kiln` binary allocates with mimalloc; tests and embedders may use the system's.
    // SAFETY: both calls only return free memory to the kernel.
    unsafe {
        libmimalloc_sys::mi_collect(true);
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        libc::malloc_trim(0);
    }
}
