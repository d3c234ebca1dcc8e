//! A Kiln master, real workers and the real store: a secret that a worker's line wrap, a read
//! chunk or a pause cut in two is stored in no log and shown in no API answer, and a capped
//! log keeps its head, a marker and its tail, with a cap that a reconfig changes for the next
//! logs.

mod common;

use common::*;
use kiln_master::ForceRequest;
use kiln_model::Build;
use kiln_store::Store;

const TOKEN: &str = "Zq7Kx9Wm2Pv4Ty8R";

/// Steps that print the secret where a worker cuts it (both workers wrap a long line into
/// pieces of 4,095 characters). `leak`, for both workers: at 4,090 of a 5,000-character line
/// written in two parts (`long`), and the same with the pause inside the secret, so its first
/// part reaches the master in an update of its own (`pause`). `leak_kiln`, for `kiln-worker`:
/// the 5,000-character line in one write, and the secret across the 16th wrap of a long line,
/// at the end of the worker's first 64 KiB read and update (`chunk`). `leak_one`, for the
/// stock buildbot-worker: the one-write line, which that worker 4.3 mangles itself (its
/// `LineBoundaryFinder` drops the character at a wrap when the line's end came in the same
/// read; the master redacts what is left). It loses text after a second wrap, so `chunk` is
/// for `kiln-worker` only.
const LEAK_CONFIG: &str = r#"
WORKERS = [worker("w1", password = secret("worker"))]
ENV = {"TOK": interpolate("%(secret:tok)s")}
PAD = "pad() { head -c $1 /dev/zero | tr '\\0' $2; }; "
BUILDERS = [
    builder(name = "leak", workers = ["w1"], steps = [
        shell(name = "long", env = ENV, command = ["sh", "-c", PAD + "printf '%s%s' $(pad 4090 a) $TOK; sleep 1; printf '%s\\n' $(pad 894 b)"]),
        shell(name = "pause", env = ENV, command = ["sh", "-c", PAD + "printf '%s%s' $(pad 4090 e) ${TOK%????????}; sleep 2; printf '%s%s\\n' ${TOK#????????} $(pad 894 f)"]),
    ]),
    builder(name = "leak_kiln", workers = ["w1"], steps = [
        shell(name = "long", env = ENV, command = ["sh", "-c", PAD + "printf '%s%s%s\\n' $(pad 4090 a) $TOK $(pad 894 b)"]),
        shell(name = "chunk", env = ENV, command = ["sh", "-c", PAD + "printf '%s%s%s\\n' $(pad 65512 c) $TOK $(pad 10 d)"]),
    ]),
]
BUILDERS.append(builder(name = "leak_one", workers = ["w1"], steps = [BUILDERS[1]["steps"][0]]))
SCHEDULERS = [force("force", builder_names = ["leak", "leak_kiln", "leak_one"])]
"#;

fn force(builder: &str) -> ForceRequest {
    ForceRequest {
        builder_names: vec![builder.into()],
        ..Default::default()
    }
}

/// A log's lines joined without their channel characters: what a reader sees once the
/// line wraps are undone. A secret cut in two by a wrap shows here whole.
fn unwrapped(text: &str) -> String {
    text.lines().map(|l| l.get(1..).unwrap_or("")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_cut_by_kiln_worker_is_never_stored() {
    secret_cut_by(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_cut_by_the_stock_buildbot_worker_is_never_stored() {
    let Some(bin) = stock_worker_bin() else {
        println!("SKIP: no buildbot-worker (set KILN_INTEROP_VENV to the Buildbot venv)");
        return;
    };
    secret_cut_by(Some(bin)).await;
}

async fn secret_cut_by(stock: Option<std::path::PathBuf>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = master_dir(tmp.path(), LEAK_CONFIG);
    std::fs::write(dir.join("secrets/tok"), TOKEN).unwrap();
    let master = start_master(&dir).await;
    let _w = match &stock {
        None => WorkerProc::start(tmp.path(), "w1", master.worker_addr()),
        Some(bin) => WorkerProc::start_stock(bin, tmp.path(), "w1", master.worker_addr()),
    };
    let builders = match stock {
        None => ["leak", "leak_kiln"],
        Some(_) => ["leak", "leak_one"],
    };
    let store = master.store().clone();
    let web = format!("http://{}", master.web_addr());
    let (a, bb, c, d, e, f) = (
        "a".repeat(4090),
        "b".repeat(894),
        "c".repeat(65512),
        "d".repeat(10),
        "e".repeat(4090),
        "f".repeat(894),
    );
    for builder in builders {
        master
            .control()
            .force("force", force(builder))
            .await
            .unwrap();
        let b = wait_builds(&store, builder, 90, "the build", |b| finished_with(b, 1)).await;
        let b = &b[0];
        let steps = match builder {
            "leak" => vec![("long", (&a, &bb)), ("pause", (&e, &f))],
            "leak_one" => vec![("long", (&a, &bb))],
            _ => vec![("long", (&a, &bb)), ("chunk", (&c, &d))],
        };
        for (step, around) in steps {
            let step_text = log_text(&store, b, step, "stdio").await;
            let flat = unwrapped(&step_text);
            let at = format!("{builder}/{step}");
            assert!(!step_text.contains(TOKEN), "{at}: stored whole");
            assert!(!flat.contains(TOKEN), "{at}: stored in pieces across lines");
            // The output around it is all there: only the secret was replaced.
            let want = format!("{}<secret:tok>{}", around.0, around.1);
            let near = flat.find("aaaaaZ").unwrap_or(0);
            assert!(
                flat.contains(&want),
                "{at}: {}",
                &flat[near..(near + 300).min(flat.len())]
            );
            let api = api_contents(&store, &web, b, step).await;
            assert!(!api.contains(TOKEN), "{at}: the API shows it whole");
            let api = unwrapped(&api);
            assert!(!api.contains(TOKEN), "{at}: the API shows it in pieces");
            assert!(api.contains(&want), "{at}: the API answer");
        }
    }
    master.shutdown().await;
}

/// The text of `GET /api/v2/logs/{id}/contents` for a step's stdio log.
async fn api_contents(store: &Store, web: &str, b: &Build, step: &str) -> String {
    let steps = store.list_steps(b.buildid).await.unwrap();
    let s = steps.iter().find(|s| s.name == step).unwrap();
    let logs = store.list_logs(s.stepid).await.unwrap();
    let l = logs.iter().find(|l| l.name == "stdio").unwrap();
    let base = kiln::cli::http::BaseUrl::parse(web).unwrap();
    let path = format!("/api/v2/logs/{}/contents", l.logid.0);
    let v = kiln::cli::http::get_json(&base, &path).await.unwrap();
    let chunks = v["logchunks"].as_array().expect("logchunks");
    chunks
        .iter()
        .map(|c| c["content"].as_str().unwrap().to_string())
        .collect()
}

fn cap_config(log_max: u64) -> String {
    format!(
        r#"
MASTER = master(log_max_bytes = {log_max}, log_max_tail_bytes = 2000)
WORKERS = [worker("w1", password = secret("worker"))]
BUILDERS = [
    builder(name = "big", workers = ["w1"], steps = [
        shell(name = "count", command = ["sh", "-c", "seq 1 20000; exit 3"]),
    ]),
]
SCHEDULERS = [force("force", builder_names = ["big"])]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_log_keeps_head_and_tail_and_a_reconfig_changes_the_next_cap() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = master_dir(tmp.path(), &cap_config(20_000));
    let master = start_master(&dir).await;
    let _w = WorkerProc::start(tmp.path(), "w1", master.worker_addr());
    let store = master.store().clone();
    let web = format!("http://{}", master.web_addr());
    master.control().force("force", force("big")).await.unwrap();
    let b = wait_builds(&store, "big", 90, "the build", |b| finished_with(b, 1)).await;

    let text = log_text(&store, &b[0], "count", "stdio").await;
    let lines: Vec<&str> = text.lines().collect();
    // The head: the header, then the count from 1.
    let first = lines.iter().position(|l| *l == "o1").expect("the head");
    assert_eq!(lines[first + 1], "o2");
    // The marker says what was left out, then the tail, ending with the count's end and the
    // exit status.
    let m = lines
        .iter()
        .position(|l| l.starts_with("[kiln: log truncated at 20000 bytes;"))
        .unwrap_or_else(|| panic!("no marker: {}", &text[text.len() - 3000..]));
    assert!(lines[m].contains("left out here, the last"), "{}", lines[m]);
    assert!(
        lines[m - 1].starts_with('o'),
        "whole lines before the marker"
    );
    let tail = &lines[m + 1..];
    assert!(tail.contains(&"o20000"), "the tail: {tail:?}");
    assert!(
        tail[tail.len().saturating_sub(3)..].contains(&"hprogram finished with exit code 3"),
        "the exit status is at the end: {tail:?}"
    );
    let tail_bytes: usize = tail.iter().map(|l| l.len() + 1).sum();
    assert!(tail_bytes <= 2000 && tail_bytes > 1500, "{tail_bytes}");
    assert!(text.len() <= 20_000 + 200, "{}", text.len());
    // The API shows the same.
    let api = api_contents(&store, &web, &b[0], "count").await;
    assert_eq!(api, text);

    // A reconfig lifts the cap: the next build's log is whole.
    std::fs::write(dir.join("master.star"), cap_config(0)).unwrap();
    master.reconfig().await.expect("reconfig");
    master.control().force("force", force("big")).await.unwrap();
    let b = wait_builds(&store, "big", 90, "the second build", |b| {
        finished_with(b, 2)
    })
    .await;
    let text = log_text(&store, &b[1], "count", "stdio").await;
    assert!(
        !text.contains("[kiln: log truncated"),
        "no cap after the reconfig"
    );
    let count: Vec<&str> = text.lines().filter(|l| l.starts_with('o')).collect();
    assert_eq!(count.len(), 20_000);
    assert_eq!(count[19_999], "o20000");
    master.shutdown().await;
}

const HANG_CONFIG: &str = r#"
MASTER = master(log_max_bytes = 20000, log_max_tail_bytes = 2000)
WORKERS = [worker("w1", password = secret("worker"), max_builds = 1)]
BUILDERS = [
    builder(name = "hang", workers = ["w1"], collapse_requests = False, steps = [
        shell(name = "count", command = ["sh", "-c", "seq 1 20000; sleep 600"]),
    ]),
]
SCHEDULERS = [force("force", builder_names = ["hang"])]
"#;

/// Waits until the running build's `count` log has received all of `seq 1 20000`.
async fn wait_for_the_count(store: &Store, builder: &str, n: usize) -> Build {
    // `o` + the number + `\n` for each line.
    let want: u64 = (1..=20000u64).map(|i| i.to_string().len() as u64 + 2).sum();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let builds = builds_of(store, builder).await;
        if let Some(b) = builds.get(n) {
            for s in store.list_steps(b.buildid).await.unwrap() {
                for l in store.list_logs(s.stepid).await.unwrap() {
                    if store.log_sizes(l.logid).await.unwrap().0 >= want {
                        return b.clone();
                    }
                }
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the count never arrived"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The log of a step that did not finish on its own: its tail is there all the same.
async fn assert_tail_kept(store: &Store, b: &Build) {
    let text = log_text(store, b, "count", "stdio").await;
    let lines: Vec<&str> = text.lines().collect();
    let m = lines
        .iter()
        .position(|l| l.starts_with("[kiln: log truncated at 20000 bytes;"))
        .expect("the marker");
    assert!(lines[m].contains("left out here, the last"), "{}", lines[m]);
    assert!(
        lines[m + 1..].contains(&"o20000"),
        "the tail: {:?}",
        &lines[m..]
    );
    let steps = store.list_steps(b.buildid).await.unwrap();
    let logs = store.list_logs(steps[0].stepid).await.unwrap();
    assert!(logs.iter().all(|l| l.complete), "{logs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_log_keeps_its_tail_when_the_build_is_stopped_or_the_worker_is_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = master_dir(tmp.path(), HANG_CONFIG);
    let master = start_master(&dir).await;
    let mut w = WorkerProc::start(tmp.path(), "w1", master.worker_addr());
    let store = master.store().clone();
    let control = master.control();

    // Stopped: the command is interrupted.
    control.force("force", force("hang")).await.unwrap();
    let b = wait_for_the_count(&store, "hang", 0).await;
    assert!(control.stop_build(b.buildid, "enough".into()).await);
    let b = wait_builds(&store, "hang", 60, "the stop", |b| finished_with(b, 1)).await;
    assert_tail_kept(&store, &b[0]).await;

    // Lost: the worker dies mid-step.
    control.force("force", force("hang")).await.unwrap();
    let b = wait_for_the_count(&store, "hang", 1).await;
    w.kill9();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let steps = store.list_steps(b.buildid).await.unwrap();
        if steps.first().is_some_and(|s| s.complete) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the step never ended");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_tail_kept(&store, &b).await;
    master.shutdown().await;
}
