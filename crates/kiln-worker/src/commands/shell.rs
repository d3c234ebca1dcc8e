//! `shell`, and the child-process commands `rmdir` and `cpdir` (spec §8.3, §8.8, §8.9).
//!
//! All three go through [`run_child`]: headers, spawn (via [`process`]), output
//! streaming through the command's [`LineSplitter`]s and output batcher, log file
//! polling, the `timeout`/`maxTime`/`max_lines` limits, interrupts, and the kill
//! procedure, which takes down the whole process tree.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, SystemTime};

use kiln_proto::args::{CommandLine, CpdirArgs, EnvValue, LogFile, PathsArgs, ShellArgs};
use kiln_proto::update::{Lines, UpdateItem};
use tokio::io::AsyncWriteExt;
use tokio::process::Child;
use tokio::time::{Instant, sleep_until};

use super::CommandCtx;
use super::lines::{LineConfig, LineSplitter, count_line_ends, whole_lines};
use super::process::{self, KillSignal, OutputReader, ProcessTree, SpawnSpec};

/// How long a process may take to die after the final signal (Buildbot's BACKUP_TIMEOUT).
const BACKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// After a killed command's main process is gone: how long to wait for the rest of
/// its output before the pipes are dropped.
const DRAIN_AFTER_KILL: Duration = Duration::from_secs(2);
/// Log files are polled this often.
const LOGFILE_POLL: Duration = Duration::from_secs(2);
/// Log files are read in chunks of this size.
const LOGFILE_CHUNK: usize = 10_000;
const READ_SIZE: usize = 64 * 1024;

/// The `shell` command.
pub async fn run(ctx: &mut CommandCtx, args: ShellArgs) -> Result<(), String> {
    refuse_root(ctx).await?;
    if let Some(e) = args.env_error {
        // Accepted, but no process: `elapsed`, then a failed `complete`.
        let elapsed = ctx.elapsed();
        ctx.push(UpdateItem::Elapsed(elapsed)).await;
        return Err(e);
    }
    let workdir = absolute(Path::new(&args.workdir));
    let env = build_env(args.env.as_deref(), &workdir);
    let (argv, display, argv_repr) = command_line(&args.command);
    let spec = ChildSpec {
        argv,
        display,
        argv_repr,
        workdir,
        env,
        want_stdout: args.want_stdout,
        want_stderr: args.want_stderr,
        logfiles: args.logfiles,
        timeout: args.timeout,
        max_time: args.max_time,
        max_lines: args.max_lines,
        sigterm_time: args.sigterm_time,
        interrupt_signal: args.interrupt_signal,
        use_pty: args.use_pty,
        log_environ: args.log_environ,
        initial_stdin: args.initial_stdin,
        send_rc: true,
        sandbox: true,
    };
    let outcome = run_child(ctx, &spec).await?;
    if !outcome.interrupted {
        let elapsed = ctx.elapsed();
        ctx.push(UpdateItem::Elapsed(elapsed)).await;
    }
    for item in outcome.tail {
        ctx.push(item).await;
    }
    Ok(())
}

/// `rmdir`: `rm -rf` each path (retrying once after `chmod -Rf u+rwx`); the final rc
/// is the last non-zero one.
pub async fn rmdir(ctx: &mut CommandCtx, args: PathsArgs) -> Result<(), String> {
    refuse_root(ctx).await?;
    let mut rc = 0;
    #[cfg_attr(windows, allow(unused_mut))]
    let mut interrupted = false;
    #[cfg(unix)]
    for path in &args.paths {
        let rm = [OsStr::new("rm"), OsStr::new("-rf"), OsStr::new(path)];
        let mut r = helper(ctx, &rm, args.log_environ, args.timeout, args.max_time).await?;
        if r.rc != 0 && !r.interrupted {
            let chmod: Vec<&OsStr> = if cfg!(target_os = "freebsd") {
                ["find", path.as_str(), "-exec", "chmod", "u+rwx", "{}", ";"]
                    .map(OsStr::new)
                    .into()
            } else {
                ["chmod", "-Rf", "u+rwx", path.as_str()]
                    .map(OsStr::new)
                    .into()
            };
            let c = helper(ctx, &chmod, args.log_environ, args.timeout, args.max_time).await?;
            r = if c.interrupted {
                c
            } else {
                helper(ctx, &rm, args.log_environ, args.timeout, args.max_time).await?
            };
        }
        if r.rc != 0 {
            rc = r.rc;
        }
        if r.interrupted {
            interrupted = true;
            break;
        }
    }
    #[cfg(windows)]
    for path in &args.paths {
        let p = PathBuf::from(path);
        let result = tokio::task::spawn_blocking(move || {
            if p.exists() {
                std::fs::remove_dir_all(&p)
            } else {
                Ok(())
            }
        })
        .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                ctx.header(&format!("exception from rmdirRecursive\n{e}"))
                    .await;
                rc = -1;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    finish_helper(ctx, rc, interrupted).await
}

/// The end of `rmdir`/`cpdir`: `rc`, then `elapsed` unless interrupted.
async fn finish_helper(ctx: &mut CommandCtx, rc: i64, interrupted: bool) -> Result<(), String> {
    ctx.push(UpdateItem::Rc(rc)).await;
    if !interrupted {
        let elapsed = ctx.elapsed();
        ctx.push(UpdateItem::Elapsed(elapsed)).await;
    }
    Ok(())
}

/// `cpdir`: `cp -R -P -p -v from to`, after creating the parent of `to`.
pub async fn cpdir(ctx: &mut CommandCtx, args: CpdirArgs) -> Result<(), String> {
    refuse_root(ctx).await?;
    if let Some(parent) = Path::new(&args.to_path)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
    {
        super::fs::create_dirs_for_builds(parent, ctx.policy.run_as.as_ref())
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    #[cfg(unix)]
    let (rc, interrupted) = {
        let cp = [
            "cp",
            "-R",
            "-P",
            "-p",
            "-v",
            args.from_path.as_str(),
            args.to_path.as_str(),
        ]
        .map(OsStr::new);
        let r = helper(ctx, &cp, args.log_environ, args.timeout, args.max_time).await?;
        (r.rc, r.interrupted)
    };
    #[cfg(windows)]
    let (rc, interrupted) = {
        let (from, to) = (PathBuf::from(&args.from_path), PathBuf::from(&args.to_path));
        match tokio::task::spawn_blocking(move || copy_tree(&from, &to)).await {
            Ok(Ok(())) => (0, false),
            Ok(Err(e)) => {
                ctx.header(&format!("exception from copytree\n{e}")).await;
                (-1, false)
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    finish_helper(ctx, rc, interrupted).await
}

#[cfg(windows)]
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    if from.is_dir() {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        Ok(())
    } else {
        std::fs::copy(from, to).map(|_| ())
    }
}

/// Refuses build processes when the policy says so (root without `run_as`/`allow_root`).
async fn refuse_root(ctx: &mut CommandCtx) -> Result<(), String> {
    match ctx.policy.check() {
        Ok(()) => Ok(()),
        Err(msg) => {
            ctx.header(msg).await;
            Err(msg.to_owned())
        }
    }
}

/// Runs one `rmdir`/`cpdir` helper process in the worker's base directory, no rc item.
#[cfg(unix)]
async fn helper(
    ctx: &mut CommandCtx,
    argv: &[&OsStr],
    log_environ: bool,
    timeout: Option<f64>,
    max_time: Option<f64>,
) -> Result<ChildOutcome, String> {
    let shown: Vec<String> = argv
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let workdir = absolute(&ctx.basedir);
    let spec = ChildSpec {
        argv: argv.iter().map(|a| a.to_os_string()).collect(),
        display: shell_quote(&shown),
        argv_repr: py_list(&shown),
        env: build_env(None, &workdir),
        workdir,
        want_stdout: true,
        want_stderr: true,
        logfiles: Vec::new(),
        timeout,
        max_time,
        max_lines: None,
        sigterm_time: None,
        interrupt_signal: "KILL".into(),
        use_pty: false,
        log_environ,
        initial_stdin: None,
        send_rc: false,
        sandbox: false,
    };
    let outcome = run_child(ctx, &spec).await?;
    for item in &outcome.tail {
        ctx.push(item.clone()).await;
    }
    Ok(outcome)
}

/// One child process to run, fully described.
struct ChildSpec {
    /// What is executed.
    argv: Vec<OsString>,
    /// The first header line: the command as the user wrote it (obfuscated parts hidden).
    display: String,
    /// Python repr of the (fake) command bytes, for the `argv:` header and kill reasons.
    argv_repr: String,
    workdir: PathBuf,
    env: BTreeMap<OsString, OsString>,
    want_stdout: bool,
    want_stderr: bool,
    logfiles: Vec<LogFile>,
    timeout: Option<f64>,
    max_time: Option<f64>,
    max_lines: Option<u64>,
    sigterm_time: Option<f64>,
    interrupt_signal: String,
    use_pty: bool,
    log_environ: bool,
    initial_stdin: Option<Vec<u8>>,
    /// Send `rc` (and `process killed by signal N`): `shell` does, `rmdir`/`cpdir` don't.
    send_rc: bool,
    /// Apply the policy's sandbox (`shell` only).
    sandbox: bool,
}

struct ChildOutcome {
    #[cfg_attr(windows, allow(dead_code))]
    rc: i64,
    interrupted: bool,
    /// The streams' flushed partial lines, to send after `rc`/`elapsed`.
    tail: Vec<UpdateItem>,
}

/// Runs a child to its end, streaming its output; see the module documentation.
/// `Err` only when the child could not be killed or its workdir not created.
async fn run_child(ctx: &mut CommandCtx, spec: &ChildSpec) -> Result<ChildOutcome, String> {
    let mut use_pty = spec.use_pty;
    if use_pty && (spec.initial_stdin.is_some() || cfg!(windows)) {
        ctx.header("WARNING: disabling usePTY for this command")
            .await;
        use_pty = false;
    }
    if !spec.workdir.is_dir() {
        super::fs::create_dirs_for_builds(&spec.workdir, ctx.policy.run_as.as_ref())
            .map_err(|e| format!("cannot create workdir {}: {e}", spec.workdir.display()))?;
    }
    send_headers(ctx, spec, use_pty).await;

    let config = LineConfig::from_settings(&ctx.settings);
    let watchers: Vec<LogWatcher> = spec
        .logfiles
        .iter()
        .map(|l| LogWatcher::new(l, &spec.workdir, &config))
        .collect();
    let sandbox_dir = (spec.sandbox && ctx.policy.sandbox.is_some())
        .then(|| process::builder_dir(&absolute(&ctx.basedir), &spec.workdir));
    let pspec = SpawnSpec {
        argv: spec.argv.clone(),
        cwd: spec.workdir.clone(),
        env: spec
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        use_pty,
        stdin: spec.initial_stdin.is_some(),
        sandbox_dir,
    };
    let started = Instant::now();
    let spawned = match process::spawn(&ctx.policy, &pspec) {
        Ok(s) => s,
        Err(e) => {
            // Like a shell: 127 for a program that is not there, 126 for one we may not run.
            let rc = match e.kind() {
                std::io::ErrorKind::NotFound => 127,
                std::io::ErrorKind::PermissionDenied => 126,
                _ => 1,
            };
            let argv0 = spec
                .argv
                .first()
                .map(|a| a.to_string_lossy().into_owned())
                .unwrap_or_default();
            ctx.stderr(&format!(
                "error in RunProcess._startCommand (cannot run {argv0:?}: {e})"
            ))
            .await;
            if spec.send_rc {
                ctx.push(UpdateItem::Rc(rc)).await;
            }
            ctx.header(&format!(
                "elapsedTime={:.6}",
                started.elapsed().as_secs_f64()
            ))
            .await;
            return Ok(ChildOutcome {
                rc,
                interrupted: false,
                tail: Vec::new(),
            });
        }
    };
    let process::Spawned {
        child,
        stdin,
        stdout,
        stderr,
        tree,
    } = spawned;
    if let (Some(mut pipe), Some(data)) = (stdin, spec.initial_stdin.clone()) {
        // Written on the side, so a child that does not read cannot block its output.
        tokio::spawn(async move {
            let _ = pipe.write_all(&data).await;
            let _ = pipe.shutdown().await;
        });
    }
    let timeout = spec
        .timeout
        .filter(|t| *t > 0.0)
        .map(Duration::from_secs_f64);
    let mut r = Runner {
        spec,
        child,
        tree,
        stdout,
        stderr,
        out: Stream::new(&config, spec.want_stdout),
        err: Stream::new(&config, spec.want_stderr),
        watchers,
        started,
        timeout,
        io_deadline: timeout.map(|t| started + t),
        max_deadline: spec
            .max_time
            .filter(|t| *t > 0.0)
            .map(|t| started + Duration::from_secs_f64(t)),
        status: None,
        phase: Phase::Running,
        killed: false,
        interrupted: false,
        drain_deadline: None,
        lines_written: 0,
        max_lines_hit: false,
        interrupt_signal: KillSignal::parse(&spec.interrupt_signal).unwrap_or(KillSignal::KILL),
    };
    r.run(ctx).await
}

async fn send_headers(ctx: &mut CommandCtx, spec: &ChildSpec, use_pty: bool) {
    ctx.header(&spec.display).await;
    let mut msg = format!(" in dir {}", spec.workdir.display());
    if let Some(t) = spec.timeout.filter(|t| *t != 0.0) {
        msg.push_str(&format!(
            " (timeout {} {})",
            py_num(t),
            if t == 1.0 { "sec" } else { "secs" }
        ));
    }
    if let Some(t) = spec.max_time.filter(|t| *t != 0.0) {
        msg.push_str(&format!(
            " (maxTime {} {})",
            py_num(t),
            if t == 1.0 { "sec" } else { "secs" }
        ));
    }
    ctx.header(&msg).await;
    ctx.header(&format!(
        " watching logfiles {}",
        logfiles_repr(&spec.logfiles)
    ))
    .await;
    ctx.header(&format!(" argv: {}", spec.argv_repr)).await;
    if spec.log_environ {
        let mut m = String::from(" environment:\n");
        for (k, v) in &spec.env {
            m.push_str(&format!(
                "  {}={}\n",
                k.to_string_lossy(),
                v.to_string_lossy()
            ));
        }
        ctx.push(UpdateItem::Header(whole_lines(&m))).await;
    }
    if let Some(data) = spec.initial_stdin.as_ref().filter(|d| !d.is_empty()) {
        ctx.header(&format!(" writing {} bytes to stdin", data.len()))
            .await;
    }
    ctx.header(&format!(
        " using PTY: {}",
        if use_pty { "True" } else { "False" }
    ))
    .await;
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Running,
    /// SIGTERM sent; the interrupt signal follows at this instant.
    Term(Instant),
    /// The final signal was sent; the process must be gone by this instant.
    Final(Instant),
    /// The main process is gone.
    Exited,
}

/// One output stream of the child.
struct Stream {
    split: LineSplitter,
    want: bool,
    /// For `max_lines`: whether the last chunk ended in `\r`.
    prev_cr: bool,
}

impl Stream {
    fn new(config: &LineConfig, want: bool) -> Stream {
        Stream {
            split: LineSplitter::new(config),
            want,
            prev_cr: false,
        }
    }
}

#[derive(Clone, Copy)]
enum Which {
    Out,
    Err,
}

struct Runner<'s> {
    spec: &'s ChildSpec,
    child: Child,
    tree: ProcessTree,
    stdout: Option<OutputReader>,
    stderr: Option<OutputReader>,
    out: Stream,
    err: Stream,
    watchers: Vec<LogWatcher>,
    started: Instant,
    timeout: Option<Duration>,
    /// When `timeout` (no output) fires; reset by output.
    io_deadline: Option<Instant>,
    /// When `maxTime` fires.
    max_deadline: Option<Instant>,
    status: Option<ExitStatus>,
    phase: Phase,
    /// We sent it a kill: an exit status of 0 becomes rc -1.
    killed: bool,
    interrupted: bool,
    /// When to stop waiting for the output pipes of a killed command.
    drain_deadline: Option<Instant>,
    lines_written: u64,
    max_lines_hit: bool,
    interrupt_signal: KillSignal,
}

/// A read buffer of [`READ_SIZE`] bytes, back to a small pool when dropped: a
/// command does not pay for zeroing fresh buffers (nor the allocator for growing
/// and trimming its heap around them) each time.
struct ReadBuffer(Vec<u8>);

/// At most this many buffers are kept for later commands.
const POOLED_BUFFERS: usize = 8;
static BUFFER_POOL: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

impl ReadBuffer {
    fn take() -> ReadBuffer {
        let pooled = BUFFER_POOL.lock().unwrap_or_else(|e| e.into_inner()).pop();
        ReadBuffer(pooled.unwrap_or_else(|| vec![0u8; READ_SIZE]))
    }
}

impl Drop for ReadBuffer {
    fn drop(&mut self) {
        let mut pool = BUFFER_POOL.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < POOLED_BUFFERS {
            pool.push(std::mem::take(&mut self.0));
        }
    }
}

impl std::ops::Deref for ReadBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl std::ops::DerefMut for ReadBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

async fn read_some(r: &mut Option<OutputReader>, buf: &mut [u8]) -> std::io::Result<usize> {
    match r {
        Some(r) => r.read(buf).await,
        None => std::future::pending().await,
    }
}

fn at(deadline: Option<Instant>) -> Instant {
    deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365))
}

impl Runner<'_> {
    async fn run(&mut self, ctx: &mut CommandCtx) -> Result<ChildOutcome, String> {
        let mut buf_out = ReadBuffer::take();
        let mut buf_err = ReadBuffer::take();
        let mut poll = tokio::time::interval_at(self.started + LOGFILE_POLL, LOGFILE_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let has_logfiles = !self.watchers.is_empty();
        while self.status.is_none() || self.stdout.is_some() || self.stderr.is_some() {
            let kill_at = match self.phase {
                Phase::Term(t) | Phase::Final(t) => Some(t),
                Phase::Running | Phase::Exited => None,
            };
            tokio::select! {
                r = read_some(&mut self.stdout, &mut buf_out), if self.stdout.is_some() => match r {
                    Ok(n) if n > 0 => self.data(ctx, Which::Out, &buf_out[..n]).await,
                    _ => self.stdout = None,
                },
                r = read_some(&mut self.stderr, &mut buf_err), if self.stderr.is_some() => match r {
                    Ok(n) if n > 0 => self.data(ctx, Which::Err, &buf_err[..n]).await,
                    _ => self.stderr = None,
                },
                st = self.child.wait(), if self.status.is_none() => {
                    let st = st.map_err(|e| format!("waiting for the child process failed: {e}"))?;
                    self.exited(st);
                }
                _ = ctx.out.due() => ctx.out.flush().await,
                _ = ctx.interrupt.wait(), if !self.interrupted => {
                    self.interrupted = true;
                    // Pending partial lines and buffered output go out before the kill.
                    for item in self.flush_partials() {
                        ctx.push(item).await;
                    }
                    ctx.out.flush().await;
                    if !self.killed {
                        self.start_kill(ctx, "command interrupted".into()).await;
                    }
                }
                _ = sleep_until(at(self.io_deadline)), if self.io_deadline.is_some() => {
                    ctx.push(UpdateItem::FailureReason("timeout_without_output".into())).await;
                    let secs = py_num(self.spec.timeout.unwrap_or_default());
                    self.start_kill(ctx, format!("command timed out: {secs} seconds without output running {}", self.spec.argv_repr)).await;
                }
                _ = sleep_until(at(self.max_deadline)), if self.max_deadline.is_some() => {
                    ctx.push(UpdateItem::FailureReason("timeout".into())).await;
                    let secs = py_num(self.spec.max_time.unwrap_or_default());
                    self.start_kill(ctx, format!("command timed out: {secs} seconds elapsed running {}", self.spec.argv_repr)).await;
                }
                _ = sleep_until(at(kill_at)), if kill_at.is_some() => {
                    if let Phase::Term(_) = self.phase {
                        self.final_signal();
                    } else {
                        return self.failed_to_kill(ctx).await;
                    }
                }
                _ = sleep_until(at(self.drain_deadline)), if self.drain_deadline.is_some() => {
                    // Something we could not find still holds the pipes: stop reading.
                    self.stdout = None;
                    self.stderr = None;
                }
                _ = poll.tick(), if has_logfiles => self.poll_logs(ctx).await,
            }
        }
        self.finished(ctx).await
    }

    async fn data(&mut self, ctx: &mut CommandCtx, which: Which, data: &[u8]) {
        if let Some(t) = self.timeout
            && self.io_deadline.is_some()
        {
            self.io_deadline = Some(Instant::now() + t);
        }
        let s = match which {
            Which::Out => &mut self.out,
            Which::Err => &mut self.err,
        };
        if !s.want {
            return;
        }
        if self.spec.max_lines.is_some() {
            self.lines_written += count_line_ends(data, &mut s.prev_cr);
        }
        if let Some(lines) = s.split.feed(data) {
            ctx.push(match which {
                Which::Out => UpdateItem::Stdout(lines),
                Which::Err => UpdateItem::Stderr(lines),
            })
            .await;
        }
        if let Some(max) = self.spec.max_lines
            && self.lines_written > max
            && !self.max_lines_hit
        {
            self.max_lines_hit = true;
            self.stdout = None; // Buildbot closes the child's stdout first
            ctx.push(UpdateItem::FailureReason("max_lines_failure".into()))
                .await;
            let reason = format!(
                "command exceeds max lines: {}/{max} written/allowed running {}",
                self.lines_written, self.spec.argv_repr
            );
            self.start_kill(ctx, reason).await;
        }
    }

    fn exited(&mut self, st: ExitStatus) {
        self.status = Some(st);
        self.tree.reaped();
        self.phase = Phase::Exited;
        if self.killed {
            // The main process is gone; nothing else of the tree may stay.
            self.tree.kill_all();
            self.drain_deadline
                .get_or_insert(Instant::now() + DRAIN_AFTER_KILL);
        }
    }

    async fn start_kill(&mut self, ctx: &mut CommandCtx, reason: String) {
        ctx.out.flush().await;
        self.io_deadline = None;
        self.max_deadline = None;
        ctx.header(&format!("\n{reason}, attempting to kill\n"))
            .await;
        self.killed = true;
        match self.spec.sigterm_time {
            Some(t) if self.status.is_none() => {
                self.tree.signal(KillSignal::TERM);
                self.phase = Phase::Term(Instant::now() + Duration::from_secs_f64(t.max(0.0)));
            }
            _ => self.final_signal(),
        }
    }

    fn final_signal(&mut self) {
        self.tree.signal(self.interrupt_signal);
        if self.status.is_some() {
            // Only leftovers (e.g. background jobs holding the pipes) remain.
            self.tree.kill_all();
            self.phase = Phase::Exited;
            self.drain_deadline
                .get_or_insert(Instant::now() + DRAIN_AFTER_KILL);
        } else {
            self.phase = Phase::Final(Instant::now() + BACKUP_TIMEOUT);
        }
    }

    async fn failed_to_kill(&mut self, ctx: &mut CommandCtx) -> Result<ChildOutcome, String> {
        let what = format!("SIG{} failed to kill process", self.interrupt_signal.name());
        ctx.header(&what).await;
        if self.spec.send_rc {
            ctx.header("using fake rc=-1").await;
            ctx.push(UpdateItem::Rc(-1)).await;
        }
        // Last resort: SIGKILL everything we can find; the child handle is left to tokio.
        self.tree.kill_all();
        self.tree.finish();
        Err(what)
    }

    async fn poll_logs(&mut self, ctx: &mut CommandCtx) {
        let mut got = false;
        for w in &mut self.watchers {
            for lines in w.poll(&mut got) {
                ctx.push(UpdateItem::Log(w.name.clone(), lines)).await;
            }
        }
        if got && let (Some(t), Some(_)) = (self.timeout, self.io_deadline) {
            self.io_deadline = Some(Instant::now() + t);
        }
    }

    fn flush_partials(&mut self) -> Vec<UpdateItem> {
        let mut items = Vec::new();
        if let Some(l) = self.out.split.flush() {
            items.push(UpdateItem::Stdout(l));
        }
        if let Some(l) = self.err.split.flush() {
            items.push(UpdateItem::Stderr(l));
        }
        for w in &mut self.watchers {
            if let Some(l) = w.split.flush() {
                items.push(UpdateItem::Log(w.name.clone(), l));
            }
        }
        items
    }

    /// The exit sequence: last log file data, `process killed by signal N`, `rc`,
    /// `elapsedTime=`; partial lines are returned for after `elapsed`.
    async fn finished(&mut self, ctx: &mut CommandCtx) -> Result<ChildOutcome, String> {
        self.poll_logs(ctx).await;
        let st = self.status.expect("the loop ends after the exit");
        let signal = exit_signal(&st);
        let mut rc = match (signal, st.code()) {
            (Some(_), _) => -1,
            (None, Some(code)) => i64::from(code),
            (None, None) => -1,
        };
        if self.killed && rc == 0 {
            rc = if cfg!(windows) { 1 } else { -1 };
        }
        if self.spec.send_rc {
            if let Some(sig) = signal {
                ctx.header(&format!("process killed by signal {sig}")).await;
            }
            ctx.push(UpdateItem::Rc(rc)).await;
        }
        ctx.header(&format!(
            "elapsedTime={:.6}",
            self.started.elapsed().as_secs_f64()
        ))
        .await;
        self.tree.finish();
        Ok(ChildOutcome {
            rc,
            interrupted: self.interrupted,
            tail: self.flush_partials(),
        })
    }
}

#[cfg(unix)]
fn exit_signal(st: &ExitStatus) -> Option<i32> {
    std::os::unix::process::ExitStatusExt::signal(st)
}

#[cfg(not(unix))]
fn exit_signal(_st: &ExitStatus) -> Option<i32> {
    None
}

/// A watched log file (§8.3.4).
struct LogWatcher {
    name: String,
    path: PathBuf,
    follow: bool,
    /// The file's signature before the command started; reading starts once it changes.
    old: Option<FileSig>,
    file: Option<std::fs::File>,
    split: LineSplitter,
}

#[derive(Debug, Clone, PartialEq)]
struct FileSig {
    ctime: Option<(i64, i64)>,
    mtime: Option<SystemTime>,
    size: u64,
}

fn file_sig(path: &Path) -> Option<FileSig> {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let ctime = {
        use std::os::unix::fs::MetadataExt;
        Some((m.ctime(), m.ctime_nsec()))
    };
    #[cfg(not(unix))]
    let ctime = None;
    Some(FileSig {
        ctime,
        mtime: m.modified().ok(),
        size: m.len(),
    })
}

impl LogWatcher {
    fn new(l: &LogFile, workdir: &Path, config: &LineConfig) -> LogWatcher {
        let path = workdir.join(&l.filename);
        LogWatcher {
            name: l.name.clone(),
            old: file_sig(&path),
            path,
            follow: l.follow,
            file: None,
            split: LineSplitter::new(config),
        }
    }

    /// New complete lines of the file; sets `got` when any data was read.
    fn poll(&mut self, got: &mut bool) -> Vec<Lines> {
        use std::io::{Read, Seek, SeekFrom};
        if self.file.is_none() {
            let sig = file_sig(&self.path);
            if sig == self.old {
                return Vec::new();
            }
            let Some(sig) = sig else {
                // It was deleted: whatever appears next is new.
                self.old = None;
                return Vec::new();
            };
            let Ok(mut f) = std::fs::File::open(&self.path) else {
                return Vec::new();
            };
            // `follow`: only what was added since the command started. (Buildbot seeks
            // to the size found when it noticed the change, which loses whatever was
            // written before its first poll; we keep it.)
            let start = match &self.old {
                Some(old) if self.follow && sig.size >= old.size => old.size,
                _ => 0,
            };
            if f.seek(SeekFrom::Start(start)).is_err() {
                return Vec::new();
            }
            self.file = Some(f);
        }
        let f = self.file.as_mut().expect("opened above");
        let mut out = Vec::new();
        let mut buf = vec![0u8; LOGFILE_CHUNK];
        loop {
            match f.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    *got = true;
                    if let Some(l) = self.split.feed(&buf[..n]) {
                        out.push(l);
                    }
                }
            }
        }
        out
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The child's environment (§8.3.2): the worker's, or the worker's changed by `env`
/// (lists joined with the path separator, `PYTHONPATH` extended, `${VAR}` substituted
/// from the worker's environment, nil deleting), then `PWD` = workdir.
fn build_env(spec: Option<&[(String, EnvValue)]>, workdir: &Path) -> BTreeMap<OsString, OsString> {
    let worker: BTreeMap<OsString, OsString> = std::env::vars_os().collect();
    let mut env = worker.clone();
    if let Some(list) = spec {
        let sep = if cfg!(windows) { ";" } else { ":" };
        for (key, value) in list {
            let value = match value {
                EnvValue::Unset => {
                    env.remove(OsStr::new(key));
                    continue;
                }
                EnvValue::Text(t) => t.clone(),
                EnvValue::List(items) => items.join(sep),
            };
            let value = if key == "PYTHONPATH" {
                format!("{value}{sep}${{PYTHONPATH}}")
            } else {
                value
            };
            env.insert(key.into(), substitute(&value, &worker));
        }
    }
    if env.get(OsStr::new("MACHTYPE")).map(|m| m.as_os_str()) != Some(OsStr::new("i686-pc-msys")) {
        env.insert("PWD".into(), absolute(workdir).into_os_string());
    }
    env
}

/// Replaces each `${NAME}` (NAME = `[0-9A-Za-z_]*`) with the worker's value or "".
fn substitute(value: &str, worker: &BTreeMap<OsString, OsString>) -> OsString {
    let mut out = OsString::new();
    let mut rest = value;
    while let Some(i) = rest.find("${") {
        let after = &rest[i + 2..];
        let name_len = after
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
            .count();
        if after.as_bytes().get(name_len) != Some(&b'}') {
            out.push(&rest[..i + 2]);
            rest = after;
            continue;
        }
        out.push(&rest[..i]);
        if let Some(v) = worker.get(OsStr::new(&after[..name_len])) {
            out.push(v);
        }
        rest = &after[name_len + 1..];
    }
    out.push(rest);
    out
}

/// The argv to run, the display line and the Python repr of the shown command.
fn command_line(command: &CommandLine) -> (Vec<OsString>, String, String) {
    match command {
        CommandLine::Shell(s) => {
            #[cfg(unix)]
            let argv = vec!["/bin/sh".into(), "-c".into(), s.into()];
            #[cfg(windows)]
            let argv = {
                let mut v: Vec<OsString> = comspec();
                v.push(s.into());
                v
            };
            (argv, s.clone(), py_bytes(s))
        }
        CommandLine::Argv(items) => {
            let shown: Vec<String> = items.iter().map(|i| i.shown().to_owned()).collect();
            #[allow(unused_mut)]
            let mut argv: Vec<OsString> = items.iter().map(|i| OsString::from(i.real())).collect();
            #[cfg(windows)]
            {
                // Like Buildbot: anything but an absolute .exe path goes through cmd.exe.
                let first = items
                    .first()
                    .map(|i| i.real().to_ascii_lowercase())
                    .unwrap_or_default();
                if !(first.ends_with(".exe") && Path::new(&first).is_absolute()) {
                    let mut v = comspec();
                    v.extend(argv);
                    argv = v;
                }
            }
            (argv, shell_quote(&shown), py_list(&shown))
        }
    }
}

#[cfg(windows)]
fn comspec() -> Vec<OsString> {
    let c = std::env::var("COMSPEC").unwrap_or_else(|_| "cmd.exe".into());
    let mut v: Vec<OsString> = c.split_whitespace().map(OsString::from).collect();
    if !v.iter().any(|a| a == "/c") {
        v.push("/c".into());
    }
    v
}

/// Python's `shlex.quote` of each word, joined with spaces (`""` for an empty word).
fn shell_quote(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            if w.is_empty() {
                "\"\"".to_owned()
            } else if w
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"@%+=:,./-_".contains(&b))
            {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', "'\"'\"'"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Python's repr of a bytes object holding `s` (UTF-8).
fn py_bytes(s: &str) -> String {
    let b = s.as_bytes();
    let quote = if b.contains(&b'\'') && !b.contains(&b'"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(b.len() + 3);
    out.push('b');
    out.push(quote);
    for &c in b {
        match c {
            b'\\' => out.push_str("\\\\"),
            b'\t' => out.push_str("\\t"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            c if c as char == quote => {
                out.push('\\');
                out.push(quote);
            }
            0x20..=0x7e => out.push(c as char),
            c => out.push_str(&format!("\\x{c:02x}")),
        }
    }
    out.push(quote);
    out
}

fn py_list(words: &[String]) -> String {
    format!(
        "[{}]",
        words
            .iter()
            .map(|w| py_bytes(w))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Python's repr of a str.
fn py_str(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(quote);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

fn logfiles_repr(logfiles: &[LogFile]) -> String {
    let items: Vec<String> = logfiles
        .iter()
        .map(|l| {
            let v = if l.follow {
                format!("{{'filename': {}, 'follow': True}}", py_str(&l.filename))
            } else {
                py_str(&l.filename)
            };
            format!("{}: {v}", py_str(&l.name))
        })
        .collect();
    format!("{{{}}}", items.join(", "))
}

/// A number as Python prints the int or float it came from.
fn py_num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_like_python() {
        assert_eq!(
            shell_quote(&[
                "echo".into(),
                "a b".into(),
                "".into(),
                "it's".into(),
                "x=1,y".into()
            ]),
            "echo 'a b' \"\" 'it'\"'\"'s' x=1,y"
        );
        assert_eq!(py_bytes("a'b"), "b\"a'b\"");
        assert_eq!(py_bytes("a\"'\n\\é"), "b'a\"\\'\\n\\\\\\xc3\\xa9'");
        assert_eq!(
            py_list(&["python3".into(), "-c".into()]),
            "[b'python3', b'-c']"
        );
        assert_eq!(py_num(1200.0), "1200");
        assert_eq!(py_num(1.5), "1.5");
        let lf = vec![
            LogFile {
                name: "a".into(),
                filename: "a.log".into(),
                follow: false,
            },
            LogFile {
                name: "b".into(),
                filename: "b.log".into(),
                follow: true,
            },
        ];
        assert_eq!(
            logfiles_repr(&lf),
            "{'a': 'a.log', 'b': {'filename': 'b.log', 'follow': True}}"
        );
        assert_eq!(logfiles_repr(&[]), "{}");
    }

    #[test]
    fn substitution() {
        let w: BTreeMap<OsString, OsString> = [
            ("HOME".into(), "/home/ci".into()),
            ("A_1".into(), "x".into()),
        ]
        .into();
        assert_eq!(substitute("${HOME}/sub", &w), "/home/ci/sub");
        assert_eq!(
            substitute("${A_1}${NOPE}-${}-$HOME-${bad-name}", &w),
            "x--$HOME-${bad-name}"
        );
    }
}
