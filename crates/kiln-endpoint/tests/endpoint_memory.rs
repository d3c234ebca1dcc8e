//! Master memory per idle worker connection. Not a pass/fail test (figures go to the report
//! and `bench/`): run with
//! `cargo test -p kiln-endpoint --test endpoint_memory -- --ignored --nocapture memory_per_idle_worker`
//! (`KILN_MEM_WORKERS` sets the count, default 2000). The endpoint runs in a child process
//! (this test binary re-run as `memory_server`) so client memory is not counted.

mod endpoint_common;

use std::io::{BufRead as _, Write as _};
use std::process::{Command, Stdio};

use endpoint_common::*;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn workers() -> usize {
    std::env::var("KILN_MEM_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

/// The server half: serves the endpoint, prints `PORT n`, then answers each stdin line with
/// `RSS bytes attached`.
#[test]
#[ignore]
fn memory_server() {
    if std::env::var_os("KILN_MEM_SERVER").is_none() {
        return;
    }
    raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let names: Vec<String> = (0..workers() + 1).map(|i| format!("w{i}")).collect();
        let list: Vec<(&str, &str, &[&str])> =
            names.iter().map(|n| (n.as_str(), "pw", &[][..])).collect();
        let mut srv = Server::start(&list, quick_opts()).await;
        println!("PORT {}", srv.port);
        let endpoint = srv.endpoint.clone();
        tokio::spawn(async move { while srv.events.recv().await.is_some() {} });
        tokio::task::spawn_blocking(move || {
            for _ in std::io::stdin().lines().map_while(Result::ok) {
                println!("RSS {} {}", rss_bytes(), endpoint.workers().count());
            }
        })
        .await
        .unwrap();
    });
}

#[test]
#[ignore]
fn memory_per_idle_worker() {
    raise_fd_limit();
    let n = workers();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "memory_server", "--ignored", "--nocapture"])
        .env("KILN_MEM_SERVER", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let port: u16 = loop {
        let line = out.next().expect("server exited").unwrap();
        if let Some(p) = line.strip_prefix("PORT ") {
            break p.parse().unwrap();
        }
    };
    let mut ask = |want: usize| -> u64 {
        loop {
            writeln!(stdin, "rss").unwrap();
            let line = loop {
                let l = out.next().expect("server exited").unwrap();
                if l.starts_with("RSS ") {
                    break l;
                }
            };
            let f: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .map(|x| x.parse().unwrap())
                .collect();
            if f[1] as usize >= want {
                return f[0];
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let script = |i: usize| {
        let mut s = Script::new(&format!("/w/{i}"));
        s.listing = vec!["info".into()];
        s
    };
    // One warm-up worker so lazily allocated state is in the baseline.
    let _g = rt.enter();
    rt.spawn(async move {
        let ws = connect_raw(port, "/", Some(basic("w0", "pw")))
            .await
            .unwrap();
        serve_script(ws, script(0)).await
    });
    let before = ask(1);
    // Bounded concurrency with retries: the listen backlog cannot take 10,000 SYNs at once.
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(100));
    for i in 1..=n {
        let gate = gate.clone();
        rt.spawn(async move {
            let permit = gate.acquire_owned().await.unwrap();
            let ws = loop {
                match connect_raw(port, "/", Some(basic(&format!("w{i}"), "pw"))).await {
                    Ok(ws) => break ws,
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
                }
            };
            drop(permit);
            serve_script(ws, script(i)).await
        });
    }
    let after = ask(n + 1);
    let per = (after.saturating_sub(before)) as f64 / n as f64;
    println!(
        "endpoint memory: {n} idle workers, RSS {before} -> {after} bytes, {per:.0} bytes ({:.1} KiB) per worker",
        per / 1024.0
    );
    let _ = child.kill();
    let _ = child.wait();
}
