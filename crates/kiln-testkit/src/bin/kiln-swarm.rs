//! `kiln-swarm`: N fake workers attached to one master, idle until killed.
//!
//! Prints one JSON status line per `--report-ms` (and `READY {json}` once `--count`
//! clients are attached and quiet for `--quiet-ms`), so a driver can wait for it.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Parser;
use kiln_testkit::swarm::{self, SwarmConfig};

#[derive(Parser)]
#[command(about = "A swarm of fake msgpack_experimental_v7 workers that attach and stay idle")]
struct Args {
    /// The master's worker port, e.g. 127.0.0.1:9989.
    #[arg(long)]
    master: SocketAddr,
    /// Number of workers.
    #[arg(long, default_value_t = 100)]
    count: usize,
    /// Worker i logs in as PREFIX{first+i}.
    #[arg(long, default_value = "w")]
    prefix: String,
    #[arg(long, default_value_t = 0)]
    first: usize,
    #[arg(long, env = "KILN_SWARM_PASSWORD", default_value = "pass")]
    password: String,
    /// Source addresses 127.0.0.1..=127.0.0.N (more ephemeral ports).
    #[arg(long, default_value_t = 1)]
    source_ips: u8,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    #[arg(long, default_value_t = 3)]
    retries: u32,
    /// How long the swarm must be quiet (no message received) before READY.
    #[arg(long, default_value_t = 2000)]
    quiet_ms: u64,
    #[arg(long, default_value_t = 1000)]
    report_ms: u64,
    /// Exit (status 1) if not READY within this many seconds.
    #[arg(long, default_value_t = 600)]
    ready_timeout: u64,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let fds = swarm::raise_fd_limit();
    if (fds as usize) < a.count + 64 {
        eprintln!(
            "kiln-swarm: the open-files limit is {fds}, below {} workers + 64; raise it (ulimit -Hn)",
            a.count
        );
    }
    // One thread: the master under test gets the other cores.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let cfg = SwarmConfig {
            first: a.first,
            name_prefix: a.prefix.clone(),
            source_ips: a.source_ips.max(1),
            connect_concurrency: a.concurrency,
            retries: a.retries,
            ..SwarmConfig::new(a.master, a.count, a.password.clone())
        };
        let sw = swarm::spawn(cfg);
        let stats = sw.stats.clone();
        let t0 = std::time::Instant::now();
        let mut ready = false;
        loop {
            tokio::time::sleep(Duration::from_millis(a.report_ms)).await;
            let snap = stats.snapshot();
            let attached = stats.attached.load(Ordering::Relaxed);
            if !ready
                && attached >= a.count
                && stats.idle_for() >= Duration::from_millis(a.quiet_ms)
            {
                ready = true;
                println!("READY {snap}");
            } else {
                println!("STATUS {snap}");
            }
            if !ready {
                let lost =
                    stats.failed.load(Ordering::Relaxed) + stats.closed.load(Ordering::Relaxed);
                if lost > 0 && attached + lost >= a.count {
                    println!("FAILED {snap}");
                    std::process::exit(1);
                }
                if t0.elapsed() > Duration::from_secs(a.ready_timeout) {
                    println!("FAILED {snap}");
                    std::process::exit(1);
                }
            }
        }
    })
}
