//! `kiln reconfig` tells the truth: each changed `master(...)` setting is reported as applied
//! (and is then in force), as waiting for a restart, or as not applied.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};

use common::*;

fn config(title: &str, web_port: u16) -> String {
    format!(
        r#"
MASTER = master(title = "{title}", web_port = {web_port}, log_horizon_days = 30)
WORKERS = [worker("w1", password = secret("worker"))]
BUILDERS = [builder(name = "b", workers = ["w1"], steps = [shell(command = "true")])]
"#
    )
}

/// The landing page's HTML, over a plain socket.
fn landing(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_names_what_was_applied_and_what_waits_for_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = master_dir(tmp.path(), &config("Old farm", 8010));
    let master = start_master(&dir).await;
    let web = master.web_addr();
    let page = tokio::task::spawn_blocking(move || landing(web))
        .await
        .unwrap();
    assert!(page.contains("<h1>Old farm</h1>"), "{page}");

    std::fs::write(dir.join("master.star"), config("New farm", 8011)).unwrap();
    let rep = master.reconfig().await.expect("reconfig");
    assert_eq!(rep.applied, ["title"], "{}", rep.summary);
    assert_eq!(rep.at_restart, ["web_port"], "{}", rep.summary);
    assert!(
        rep.summary.contains("master settings applied: title")
            && rep.summary.contains("wait for a restart: web_port"),
        "{}",
        rep.summary
    );
    // What is reported as applied is in force: the page shows the new title at once.
    let page = tokio::task::spawn_blocking(move || landing(web))
        .await
        .unwrap();
    assert!(page.contains("<h1>New farm</h1>"), "{page}");
    // And what waits for a restart did not move: the web port is still the one bound.
    assert_eq!(master.web_addr(), web);

    let rep = master.reconfig().await.expect("reconfig");
    assert_eq!(rep.summary, "no changes");
    master.shutdown().await;
}

/// The status line of a worker-port request with a wrong password for `w1`.
fn wrong_login(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    // base64("w1:wrong")
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Basic dzE6d3Jvbmc=\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.lines().next().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconfig_of_the_failed_login_limit_applies_to_the_next_login() {
    let tmp = tempfile::tempdir().unwrap();
    let star = |limit: u32| {
        format!(
            "MASTER = master(failed_logins_per_minute = {limit})\nWORKERS = [worker(\"w1\", password = secret(\"worker\"))]\nBUILDERS = []\n"
        )
    };
    let dir = master_dir(tmp.path(), &star(50));
    let master = start_master(&dir).await;
    let addr = master.worker_addr();
    for _ in 0..3 {
        let line = tokio::task::spawn_blocking(move || wrong_login(addr))
            .await
            .unwrap();
        assert!(line.contains("401"), "{line}");
    }
    std::fs::write(dir.join("master.star"), star(2)).unwrap();
    let rep = master.reconfig().await.expect("reconfig");
    assert_eq!(rep.applied, ["failed_logins_per_minute"], "{}", rep.summary);
    let line = tokio::task::spawn_blocking(move || wrong_login(addr))
        .await
        .unwrap();
    assert!(
        line.contains("429"),
        "the lower limit is in force at once: {line}"
    );
    master.shutdown().await;
}
