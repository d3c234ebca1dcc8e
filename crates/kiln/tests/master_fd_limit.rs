//! The `kiln` process raises its soft open-files limit to the hard one at start: each
//! connection is a descriptor, and the usual soft limit (1024) is far below the connection
//! caps. Its own test binary: it lowers this process's soft limit, which a `kiln run` child
//! inherits.

use std::time::Duration;

use kiln_testkit::master::start_master_with;
use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// `(soft, hard)` "Max open files" of process `pid`, from `/proc/PID/limits`.
fn open_files_limits(pid: u32) -> (String, String) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let mut fields = line["Max open files".len()..].split_whitespace();
    (
        fields.next().unwrap().to_string(),
        fields.next().unwrap().to_string(),
    )
}

#[test]
fn the_master_raises_its_open_files_limit_to_the_hard_one() {
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if hard <= 256 {
        println!("SKIP: the hard open-files limit ({hard}) leaves nothing to raise");
        return;
    }
    setrlimit(Resource::RLIMIT_NOFILE, 256, hard).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let star = "MASTER = master(worker_port = @WORKER_PORT@, web_port = @WEB_PORT@, \
                db_url = \"sqlite:@DIR@/s.sqlite\", bind = \"127.0.0.1\")\n\
                WORKERS = []\nBUILDERS = []\nSCHEDULERS = []\n";
    let m = start_master_with(env!("CARGO_BIN_EXE_kiln").as_ref(), tmp.path(), star)
        .expect("the master starts");
    let (soft, hard_seen) = open_files_limits(m.pid);
    assert_eq!(hard_seen, hard.to_string());
    assert_eq!(soft, hard_seen, "the soft limit is raised to the hard one");
    let _ = m.stop(Duration::from_secs(5));
}
