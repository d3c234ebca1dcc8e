//! The master `kill -9` probe: a real `kiln run` process with a real `kiln-worker`, on SQLite
//! and on PostgreSQL, killed with SIGKILL at three moments of a build (as it starts, while
//! its log streams, while its step sleeps), then started again on the same database.
//! Every request forced before the kill must end up built and finished exactly once, and no
//! build may be left "running". `KILN_SKIP_PG=1` skips the PostgreSQL half.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use kiln_model::{Build, BuildRequest, Results};
use kiln_store::{BuildRequestFilter, Store};

/// Requests forced before the kill: one runs, the others wait in the queue behind it.
const FORCED: usize = 3;

/// When in a build the master is killed.
#[derive(Clone, Copy, Debug)]
enum Moment {
    /// As soon as the build row exists (the step may not have reached the worker yet).
    BuildStart,
    /// While the step's output is being written into its log.
    LogStreaming,
    /// While the step sleeps, with nothing on the wire.
    SleepingStep,
}

impl Moment {
    /// What the step does on its first run, after leaving the marker. Later runs (the
    /// retry after the kill, and the requests that were queued) succeed at once.
    fn first_run(self) -> &'static str {
        match self {
            // Killed before the step may have reached the worker: the retry can be the
            // first run, so keep it short.
            Moment::BuildStart => "echo first run; sleep 5",
            Moment::SleepingStep => "echo first run; sleep 30",
            // ~80 KB/s for up to 30 s: the worker sends a batch every second or so.
            Moment::LogStreaming => {
                "end=$(($(date +%s) + 30)); while [ $(date +%s) -lt $end ]; do seq 1000; sleep 0.05; done"
            }
        }
    }
}

fn master_star(db_url: &str, web: u16, wport: u16, marker: &Path, moment: Moment) -> String {
    format!(
        r#"
MASTER = master(web_port = {web}, worker_port = {wport}, bind = "127.0.0.1", db_url = "{db_url}")
WORKERS = [worker("w1", password = secret("worker"))]
BUILDERS = [
    # Every forced request is built on its own (no collapsing into the running one).
    builder(name = "probe", workers = ["w1"], collapse_requests = False, steps = [
        shell(name = "work", command = ["sh", "-c", "if [ -e {m} ]; then echo second run; exit 0; fi; touch {m}; {first}"]),
    ]),
]
SCHEDULERS = [force("force", builder_names = ["probe"])]
"#,
        m = marker.display(),
        first = moment.first_run(),
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_port(port: u16, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the master never listened on its web port {port}: see its run-*.log"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One `kiln run DIR` process; its stderr goes to `DIR/run-<n>.log`.
fn spawn_master(dir: &Path, n: u32) -> Child {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("run")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("run-{n}.log"))).unwrap())
        .spawn()
        .expect("spawn kiln run")
}

/// Forces one build the way a user does: `kiln force` over the web port's JSON-RPC.
fn force_with_cli(web: u16) {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["force", "probe", "--master"])
        .arg(format!("http://127.0.0.1:{web}"))
        .output()
        .expect("run kiln force");
    assert!(
        out.status.success(),
        "kiln force failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn all_requests(store: &Store) -> Vec<BuildRequest> {
    store
        .list_build_requests(&BuildRequestFilter::default())
        .await
        .unwrap()
}

/// Lines stored so far in the first build's `work` step's `stdio` log.
async fn streamed_lines(store: &Store, build: &Build) -> u64 {
    let Some(step) = store
        .list_steps(build.buildid)
        .await
        .unwrap()
        .into_iter()
        .next()
    else {
        return 0;
    };
    let logs = store.list_logs(step.stepid).await.unwrap();
    logs.iter().map(|l| l.num_lines as u64).sum()
}

/// Waits (polling the database every 5 ms) until the running build has reached `moment`.
async fn wait_for_moment(store: &Store, marker: &Path, moment: Moment) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "the build never reached {moment:?}: {:#?}",
            builds_of(store, "probe").await
        );
        let builds = builds_of(store, "probe").await;
        let reached = match (moment, builds.first()) {
            (_, None) => false,
            (Moment::BuildStart, Some(_)) => true,
            (Moment::LogStreaming, Some(b)) => streamed_lines(store, b).await >= 2000,
            // The marker is touched just before the sleep; give the shell a moment to be in it.
            (Moment::SleepingStep, Some(_)) => {
                if marker.exists() {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    true
                } else {
                    false
                }
            }
        };
        if reached {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn wait_all_complete(store: &Store, secs: u64) -> Vec<BuildRequest> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let reqs = all_requests(store).await;
        if reqs.iter().all(|r| r.complete) {
            return reqs;
        }
        assert!(
            Instant::now() < deadline,
            "after the restart some requests were never finished: {reqs:#?}\nbuilds: {:#?}",
            builds_of(store, "probe").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Kills the process on drop too, so a failed assertion leaves no master running.
struct Killed(Child);

impl Killed {
    fn kill9(&mut self) {
        let _ = self.0.kill(); // SIGKILL
        let _ = self.0.wait();
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        self.kill9();
    }
}

async fn probe(db_url: String, sqlite_file: Option<PathBuf>, root: &Path, moment: Moment) {
    let marker = root.join("marker");
    let (web, wport) = (free_port(), free_port());
    let dir = master_dir(root, &master_star(&db_url, web, wport, &marker, moment));
    let mut m1 = Killed(spawn_master(&dir, 1));
    wait_port(web, 60).await;
    let _w = WorkerProc::start(root, "w1", format!("127.0.0.1:{wport}").parse().unwrap());
    let store_url = match &sqlite_file {
        Some(f) => format!("sqlite:{}", f.display()),
        None => db_url.clone(),
    };
    let store = Store::connect(&store_url).await.unwrap();
    for _ in 0..FORCED {
        force_with_cli(web);
    }
    wait_for_moment(&store, &marker, moment).await;
    m1.kill9();

    let forced = all_requests(&store).await;
    assert_eq!(forced.len(), FORCED, "every force made one request");
    let before = builds_of(&store, "probe").await;
    assert!(
        before.iter().any(|b| !b.complete),
        "the kill came while a build ran: {before:#?}"
    );

    let _m2 = Killed(spawn_master(&dir, 2));
    let reqs = wait_all_complete(&store, 120).await;
    let builds = builds_of(&store, "probe").await;
    assert!(
        builds.iter().all(|b| b.complete),
        "no build is left running: {builds:#?}"
    );
    for r in &reqs {
        assert_eq!(
            r.results,
            Some(Results::Success),
            "request {:?} was built to success: {r:#?}",
            r.buildrequestid
        );
        let finished: Vec<_> = builds
            .iter()
            .filter(|b| b.buildrequestid == r.buildrequestid && b.results != Some(Results::Retry))
            .collect();
        assert_eq!(
            finished.len(),
            1,
            "request {:?} finished exactly once (RETRYs aside): {builds:#?}",
            r.buildrequestid
        );
    }
    let retried = builds
        .iter()
        .filter(|b| b.results == Some(Results::Retry))
        .count();
    assert_eq!(
        retried, 1,
        "the build the kill interrupted, and only it, was marked RETRY: {builds:#?}"
    );
}

async fn on_sqlite(moment: Moment) {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("master/state.sqlite");
    probe("sqlite:state.sqlite".into(), Some(file), tmp.path(), moment).await;
}

async fn on_postgres(moment: Moment) {
    kiln_testkit::pg::with_fresh_database("kiln_kill9", |url| async move {
        let tmp = tempfile::tempdir().unwrap();
        probe(url, None, tmp.path(), moment).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_master_killed_at_build_start() {
    on_sqlite(Moment::BuildStart).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_master_killed_while_the_log_streams() {
    on_sqlite(Moment::LogStreaming).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_master_killed_in_a_sleeping_step() {
    on_sqlite(Moment::SleepingStep).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_master_killed_at_build_start() {
    on_postgres(Moment::BuildStart).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_master_killed_while_the_log_streams() {
    on_postgres(Moment::LogStreaming).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_master_killed_in_a_sleeping_step() {
    on_postgres(Moment::SleepingStep).await;
}
