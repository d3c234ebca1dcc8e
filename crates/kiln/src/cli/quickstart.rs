//! `kiln quickstart`: a master directory, a demo git repository, a local `kiln-worker`, and
//! one forced build of the demo, all in one command. The master runs in this process; the
//! worker is a child process (the real `kiln-worker` binary).

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use kiln_model::Results;

use super::create::{self, LOCAL_WORKER_SECRET};
use super::lifecycle;
use crate::master::{Master, MasterOptions};
use kiln_master::ForceRequest;

/// The `master.star` quickstart writes (placeholders `{{DB_URL}}`, `{{REPO_URL}}`, ports).
pub const QUICKSTART_TEMPLATE: &str = include_str!("../../templates/quickstart.star");

/// The demo project's build script.
const BUILD_SH: &str = r#"#!/bin/sh
# The demo project: `sh build.sh` builds ./hello, `sh build.sh test` tests it.
set -e
if [ "$1" = test ]; then
    if [ "$(./hello)" = "hello from kiln" ]; then
        echo "test passed: ./hello says hello"
    else
        echo "test FAILED: ./hello printed '$(./hello)'" >&2
        exit 1
    fi
    exit 0
fi
printf '#!/bin/sh\necho "hello from kiln"\n' > hello
chmod +x hello
echo "built ./hello"
"#;

#[derive(Debug, Args)]
pub struct QuickstartArgs {
    /// Where to put the master, the worker and the demo repository.
    #[arg(long, value_name = "DIR", default_value = "./kiln-quickstart")]
    pub dir: PathBuf,
    /// The web port (0 = any free port).
    #[arg(long, default_value_t = 8010)]
    pub port: u16,
    /// Exit after the demo build: 0 on SUCCESS, 1 otherwise.
    #[arg(long)]
    pub once: bool,
    /// Give up on the demo build after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    pub timeout: u64,
}

/// `kiln quickstart`.
pub fn quickstart(a: QuickstartArgs) -> anyhow::Result<ExitCode> {
    let dir = create::absolute(&a.dir)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let worker_bin = find_worker_binary()?;
    let repo = dir.join("demo-repo");
    if !repo.join(".git").exists() {
        make_demo_repo(&repo)?;
        println!("created the demo repository {}", repo.display());
    }
    create::ensure_secret(&dir, LOCAL_WORKER_SECRET)?;
    let config = dir.join(kiln_config::DEFAULT_FILE);
    if !config.exists() {
        let text = create::render(
            QUICKSTART_TEMPLATE,
            &[
                (
                    "DB_URL",
                    &create::star_escape(&create::default_db_url(&dir)),
                ),
                (
                    "REPO_URL",
                    &create::star_escape(&format!("file://{}", repo.display())),
                ),
                ("WEB_PORT", &a.port.to_string()),
                ("WORKER_PORT", "9989"),
            ],
        );
        std::fs::write(&config, text)
            .with_context(|| format!("cannot write {}", config.display()))?;
        println!("wrote {}", config.display());
    } else {
        println!("using the existing {}", config.display());
    }
    if let Err(e) = kiln_config::check(&dir) {
        bail!("{} is broken:\n{e}", config.display());
    }
    let mut lock = match kiln_daemon::pidfile::PidLock::acquire(&lifecycle::pid_path(&dir)) {
        Ok(lock) => lock,
        Err(kiln_daemon::pidfile::LockError::Held { .. }) => bail!(
            "a kiln master is already running in {d}; stop it with `kiln stop {d}` first",
            d = dir.display()
        ),
        Err(e) => return Err(e.into()),
    };
    lock.write_pid(std::process::id())?;
    // Relative paths in master.star (a `sqlite:state.sqlite`) mean what they mean under
    // `kiln start`, which runs in the master directory.
    std::env::set_current_dir(&dir)
        .with_context(|| format!("cannot chdir to {}", dir.display()))?;
    lifecycle::init_logging(&dir, false)?;
    println!("master log: {}", lifecycle::log_path(&dir).display());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("kiln")
        .build()
        .context("cannot start the async runtime")?;
    let code = runtime.block_on(run(
        &dir,
        &worker_bin,
        a.port,
        a.once,
        Duration::from_secs(a.timeout),
    ));
    runtime.shutdown_timeout(Duration::from_secs(5));
    drop(lock);
    code
}

async fn run(
    dir: &Path,
    worker_bin: &Path,
    port: u16,
    once: bool,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let mut opts = MasterOptions::new(dir);
    opts.bind = IpAddr::V4(Ipv4Addr::LOCALHOST);
    opts.web_port = Some(port);
    // Any free worker port: the worker is (re)created below with whatever was picked.
    opts.worker_port = Some(0);
    let master = Master::start(opts)
        .await
        .context("the master could not start")?;
    let web = master.web_addr();
    let worker_addr = master.worker_addr();
    tracing::info!(
        "{}: web http://{web}/ workers ws://{worker_addr}",
        lifecycle::UP_MARKER
    );
    println!("kiln master is up: web http://{web}/ workers ws://{worker_addr}");

    let mut worker = match start_worker(dir, worker_bin, worker_addr.port()) {
        Ok(w) => w,
        Err(e) => {
            master.shutdown().await;
            return Err(e);
        }
    };
    let outcome = tokio::select! {
        r = tokio::time::timeout(timeout, demo_build(&master)) => r.unwrap_or_else(|_| Err(anyhow::anyhow!(
            "no result after {} s; the master log {} and the worker log {} say what is going on",
            timeout.as_secs(),
            lifecycle::log_path(dir).display(),
            dir.join("worker/kiln-worker.log").display()
        ))),
        _ = wait_for_stop() => {
            println!("interrupted; stopping ...");
            stop_worker(&mut worker);
            master.shutdown().await;
            return Ok(ExitCode::from(130));
        }
    };
    let code = match &outcome {
        Ok(r) => {
            println!("demo build finished: {}", r.name());
            println!("see it at http://{web}/");
            if *r == Results::Success {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("kiln: the demo build did not complete: {e:#}");
            ExitCode::FAILURE
        }
    };
    if !once {
        println!("the master and worker keep running; press Ctrl-C to stop them");
        wait_for_stop().await;
        println!("stopping ...");
    }
    stop_worker(&mut worker);
    master.shutdown().await;
    println!("stopped");
    Ok(if once { code } else { ExitCode::SUCCESS })
}

/// Forces the demo build through the Control and waits for its result.
async fn demo_build(master: &Master) -> anyhow::Result<Results> {
    let control = master.control();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !control.connected_workers().iter().any(|w| w == "local") {
        if Instant::now() >= deadline {
            println!(
                "the worker has not connected after 30 s; forcing anyway (the build waits for it)"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let req = ForceRequest {
        builder_names: vec!["demo".into()],
        owner: Some("kiln quickstart".into()),
        reason: Some("the quickstart's demo build".into()),
        ..ForceRequest::default()
    };
    let (bsid, brids) = control
        .force("force", req)
        .await
        .map_err(|e| anyhow::anyhow!("forcing the demo build failed: {e}"))?;
    println!("forced the demo build (buildset {bsid})");
    // Read the outcome from the master's own database (this process owns the master, so it
    // needs no web API for that; `kiln force --wait` is the over-the-wire equivalent).
    let db_url = control.config().master.db_url.clone();
    let store = kiln_store::Store::connect(&db_url)
        .await
        .with_context(|| format!("cannot open the master's database {db_url}"))?;
    let mut worst: Option<Results> = None;
    for brid in brids {
        let r = wait_in_store(&store, brid).await?;
        worst = Some(worst.map_or(r, |w| w.worst(r)));
    }
    worst.ok_or_else(|| anyhow::anyhow!("the force made no build request"))
}

/// Polls build request `brid` until it is complete, printing its builds as they start.
async fn wait_in_store(
    store: &kiln_store::Store,
    brid: kiln_model::BuildRequestId,
) -> anyhow::Result<Results> {
    let mut seen = None;
    loop {
        let req = store
            .get_build_request(brid)
            .await?
            .with_context(|| format!("build request {brid} is not in the database"))?;
        let filter = kiln_store::BuildFilter {
            buildrequestid: Some(brid),
            limit: Some(1),
            ..Default::default()
        };
        let build = store.list_builds(&filter).await?.into_iter().next();
        if let Some(b) = &build
            && seen != Some(b.buildid)
        {
            seen = Some(b.buildid);
            println!("build #{} started (build id {})", b.number, b.buildid);
        }
        if req.complete {
            let result = req
                .results
                .or(build.as_ref().and_then(|b| b.results))
                .unwrap_or(Results::Exception);
            if let Some(b) = &build {
                println!(
                    "build #{}: {} ({})",
                    b.number,
                    result.name(),
                    b.state_string
                );
            }
            return Ok(result);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn wait_for_stop() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// `kiln-worker` next to this executable, else `$KILN_WORKER_BIN`, else on `PATH`.
fn find_worker_binary() -> anyhow::Result<PathBuf> {
    let name = format!("kiln-worker{}", std::env::consts::EXE_SUFFIX);
    if let Some(p) = std::env::var_os("KILN_WORKER_BIN") {
        return Ok(PathBuf::from(p));
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(sibling) = exe.parent().map(|d| d.join(&name))
        && sibling.is_file()
    {
        return Ok(sibling);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let p = d.join(&name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!(
        "cannot find the kiln-worker binary next to {} or on PATH; install it \
         (e.g. `cargo install --path crates/kiln-worker`) or set KILN_WORKER_BIN",
        std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "kiln".into())
    )
}

fn git(repo: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args([
            "-c",
            "user.name=Kiln Quickstart",
            "-c",
            "user.email=quickstart@kiln.invalid",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()
        .context("cannot run git; the demo needs git installed")?;
    if !out.status.success() {
        bail!(
            "git {} failed in {}: {}",
            args.join(" "),
            repo.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn make_demo_repo(repo: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(repo).with_context(|| format!("cannot create {}", repo.display()))?;
    git(repo, &["init", "-q"])?;
    git(repo, &["symbolic-ref", "HEAD", "refs/heads/main"])?;
    std::fs::write(repo.join("build.sh"), BUILD_SH)?;
    std::fs::write(
        repo.join("README"),
        "The demo project of `kiln quickstart`.\n",
    )?;
    git(repo, &["add", "build.sh", "README"])?;
    git(repo, &["commit", "-q", "-m", "The demo project"])?;
    Ok(())
}

#[cfg(unix)]
fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[cfg(not(unix))]
fn is_root() -> bool {
    false
}

/// (Re)creates `DIR/worker` for the picked port and runs `kiln-worker run` on it.
fn start_worker(dir: &Path, bin: &Path, port: u16) -> anyhow::Result<std::process::Child> {
    let wdir = dir.join("worker");
    let mut create = Command::new(bin);
    create
        .arg("create-worker")
        .arg(&wdir)
        .arg(format!("127.0.0.1:{port}"))
        .arg("local")
        // The worker reads the master's secret file: no second copy of the password.
        .arg("--passwd-file")
        .arg(dir.join("secrets").join(LOCAL_WORKER_SECRET))
        .args(["--force", "--quiet"]);
    if is_root() {
        println!(
            "note: running as root, so the demo worker is created with --allow-root \
             (a real worker should run as an unprivileged user)"
        );
        create.arg("--allow-root");
    }
    let out = create
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "{} create-worker failed: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let child = Command::new(bin)
        .arg("run")
        .arg(&wdir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {} run", bin.display()))?;
    println!(
        "started the local worker (pid {}); its log: {}",
        child.id(),
        wdir.join("kiln-worker.log").display()
    );
    Ok(child)
}

fn stop_worker(child: &mut std::process::Child) {
    #[cfg(unix)]
    {
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The demo repository builds and tests with the same commands the `demo` builder runs,
    /// and the quickstart config loads with it.
    #[test]
    fn demo_repo_builds_and_config_loads() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let repo = dir.join("demo-repo");
        make_demo_repo(&repo).unwrap();
        create::ensure_secret(dir, LOCAL_WORKER_SECRET).unwrap();
        let text = create::render(
            QUICKSTART_TEMPLATE,
            &[
                ("DB_URL", &create::default_db_url(dir)),
                ("REPO_URL", &format!("file://{}", repo.display())),
                ("WEB_PORT", "0"),
                ("WORKER_PORT", "9989"),
            ],
        );
        assert!(!text.contains("{{"), "every placeholder filled: {text}");
        std::fs::write(dir.join("master.star"), text).unwrap();
        let cfg = kiln_config::load(dir).unwrap();
        assert_eq!(cfg.builder("demo").unwrap().steps.len(), 3);

        // What the git step checks out (branch main), built and tested as the steps do.
        let work = dir.join("checkout");
        let st = Command::new("git")
            .args(["clone", "-q", "--branch", "main"])
            .arg(format!("file://{}", repo.display()))
            .arg(&work)
            .status()
            .unwrap();
        assert!(st.success());
        let run = |args: &[&str]| {
            Command::new("sh")
                .args(args)
                .current_dir(&work)
                .output()
                .unwrap()
        };
        let build = run(&["build.sh"]);
        assert!(
            build.status.success(),
            "{}",
            String::from_utf8_lossy(&build.stderr)
        );
        let test = run(&["build.sh", "test"]);
        assert!(
            test.status.success(),
            "{}",
            String::from_utf8_lossy(&test.stderr)
        );
        assert!(String::from_utf8_lossy(&test.stdout).contains("test passed"));
        // The test step really tests: a broken ./hello fails it.
        std::fs::write(work.join("hello"), "#!/bin/sh\necho bye\n").unwrap();
        assert!(!run(&["build.sh", "test"]).status.success());
    }
}
