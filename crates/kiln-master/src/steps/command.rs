//! What every step shares: rendering, the step's logs, and running one remote command while
//! streaming its updates into the logs (Buildbot's `RemoteCommand`).

use std::collections::BTreeMap;

use kiln_config::{Command, RenderContext, Renderable, StepFlags};
use kiln_model::{LogType, Results};
use kiln_proto::Value;
use kiln_proto::args::Args;
use kiln_proto::update::UpdateItem;

use super::{LogHandle, StepCtx, StepLogs};
use kiln_remote::{CommandEvent, CommandSpec, RemoteError, Transfer, join_worker_path};

/// Why a step ended before it decided a result itself.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Halt {
    /// Buildbot's `BuildStepFailed`: the step is FAILURE.
    Failed,
    /// Stopped: the running command was interrupted.
    Cancelled,
    /// The worker went away.
    Lost,
    /// An internal error or a failed render; the text goes to `err.text`.
    Exception(String),
}

/// A step's own ending: its result and what the summary adds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Done {
    pub result: Results,
    /// A parenthesised note such as `warnings: 3`.
    pub note: Option<String>,
    pub timed_out: bool,
    /// Replaces the step's done text (e.g. `property 'x' set`), unless the user gave one.
    pub text: Option<String>,
}

impl Done {
    pub fn new(result: Results) -> Done {
        Done {
            result,
            note: None,
            timed_out: false,
            text: None,
        }
    }

    /// The final state string, Buildbot style: `compile (warnings: 3) (failure) (timed out)`.
    pub fn summary(&self, done_text: &str) -> String {
        let mut s = self.text.clone().unwrap_or_else(|| done_text.to_string());
        if let Some(n) = &self.note {
            s.push_str(&format!(" ({n})"));
        }
        // `compile (warnings: 3)` already says WARNINGS; other results are spelled out.
        let said = self.result == Results::Warnings && self.note.is_some();
        if self.result != Results::Success && !said {
            s.push_str(&format!(" ({})", self.result.name().to_lowercase()));
            if self.timed_out {
                s.push_str(" (timed out)");
            }
        }
        s
    }
}

fn log_error(e: super::LogError) -> Halt {
    Halt::Exception(format!(
        "writing the step's logs failed: {}",
        crate::error_chain(&e)
    ))
}

/// Text is written to the store in batches of up to this many bytes (fewer, bigger
/// transactions while a build streams a big log); a batch also goes out as soon as the
/// worker has nothing more queued, so live logs lag by one update at most.
const APPEND_BATCH: usize = 1 << 20;

/// The logs a step opened, by name, in the order it opened them, and text not yet written.
#[derive(Default)]
pub(crate) struct LogSet {
    named: BTreeMap<String, LogHandle>,
    order: Vec<LogHandle>,
    pending: Vec<(LogHandle, String)>,
    pending_bytes: usize,
}

impl LogSet {
    /// The log `name`, created with `log_type` on first use.
    pub async fn named(
        &mut self,
        logs: &mut dyn StepLogs,
        name: &str,
        log_type: LogType,
    ) -> Result<LogHandle, Halt> {
        if let Some(h) = self.named.get(name) {
            return Ok(*h);
        }
        let h = logs.add_log(name, log_type).await.map_err(log_error)?;
        self.named.insert(name.to_string(), h);
        self.order.push(h);
        Ok(h)
    }

    pub async fn stdio(&mut self, logs: &mut dyn StepLogs) -> Result<LogHandle, Halt> {
        self.named(logs, "stdio", LogType::Stdio).await
    }

    /// Appends whole lines (a missing final `\n` is added) to the log `name`.
    pub async fn write(
        &mut self,
        logs: &mut dyn StepLogs,
        name: &str,
        log_type: LogType,
        text: &str,
    ) -> Result<(), Halt> {
        let h = self.named(logs, name, log_type).await?;
        let mut text = text.to_string();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        self.queue(logs, h, &text).await
    }

    async fn queue(
        &mut self,
        logs: &mut dyn StepLogs,
        h: LogHandle,
        text: &str,
    ) -> Result<(), Halt> {
        self.queue_with(logs, h, |buf| buf.push_str(text)).await
    }

    /// Lets `write` add text to the log's pending batch in place (no copy in between).
    async fn queue_with(
        &mut self,
        logs: &mut dyn StepLogs,
        h: LogHandle,
        write: impl FnOnce(&mut String),
    ) -> Result<(), Halt> {
        let i = match self.pending.iter().position(|(p, _)| *p == h) {
            Some(i) => i,
            None => {
                self.pending.push((h, String::new()));
                self.pending.len() - 1
            }
        };
        let buf = &mut self.pending[i].1;
        let before = buf.len();
        write(buf);
        self.pending_bytes += buf.len() - before;
        if self.pending_bytes >= APPEND_BATCH {
            self.flush(logs).await?;
        }
        Ok(())
    }

    /// Writes the queued text of every log.
    pub async fn flush(&mut self, logs: &mut dyn StepLogs) -> Result<(), Halt> {
        for (h, text) in std::mem::take(&mut self.pending) {
            if !text.is_empty() {
                logs.append(h, text).await.map_err(log_error)?;
            }
        }
        self.pending_bytes = 0;
        Ok(())
    }

    /// Appends lines to stdio on channel `ch` (`h`, `o` or `e`).
    pub async fn stdio_lines(
        &mut self,
        logs: &mut dyn StepLogs,
        ch: char,
        text: &str,
    ) -> Result<(), Halt> {
        if text.is_empty() {
            return Ok(());
        }
        let h = self.stdio(logs).await?;
        self.queue_with(logs, h, |buf| push_prefixed(buf, ch, text))
            .await
    }

    pub async fn finish_all(&mut self, logs: &mut dyn StepLogs) {
        if let Err(e) = self.flush(logs).await {
            tracing::warn!("writing the step's last log lines: {e:?}");
        }
        for h in self.order.drain(..) {
            if let Err(e) = logs.finish(h).await {
                tracing::warn!("finishing log {h:?}: {e:#}");
            }
        }
        self.named.clear();
    }
}

/// Appends `text` to `out` in Buildbot's stdio format: every line starts with its channel
/// character and ends with `\n`.
fn push_prefixed(out: &mut String, ch: char, text: &str) {
    out.reserve(text.len() + text.len() / 32 + 2);
    let mut rest = text;
    while !rest.is_empty() {
        // Byte search: `\n` never occurs inside a multi-byte UTF-8 character.
        let end = memchr::memchr(b'\n', rest.as_bytes()).map_or(rest.len(), |p| p + 1);
        out.push(ch);
        out.push_str(&rest[..end]);
        if !rest[..end].ends_with('\n') {
            out.push('\n');
        }
        rest = &rest[end..];
    }
}

/// Renders a value against the build (properties, source stamps, secrets).
pub(crate) fn render(ctx: &StepCtx<'_>, r: &Renderable, what: &str) -> Result<String, Halt> {
    let sources = ctx.sources.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let rc = RenderContext {
        properties: Some(&*ctx.properties),
        sources,
        secrets: Some(ctx.secrets),
    };
    r.render(&rc)
        .map_err(|e| Halt::Exception(format!("cannot render {what}: {e}")))
}

/// The command as the wire carries it: a string for the shell, or an argv list.
pub(crate) fn render_command(ctx: &StepCtx<'_>, c: &Command) -> Result<Value, Halt> {
    Ok(match c {
        Command::Shell(r) => Value::from(render(ctx, r, "command")?),
        Command::Argv(items) => Value::Array(
            items
                .iter()
                .map(|r| render(ctx, r, "command").map(Value::from))
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// The builder's env with the step's env over it, rendered.
pub(crate) fn render_env(
    ctx: &StepCtx<'_>,
    flags: &StepFlags,
) -> Result<BTreeMap<String, String>, Halt> {
    let mut env = BTreeMap::new();
    for (k, v) in ctx.builder_env.iter().chain(flags.env.iter()) {
        env.insert(k.clone(), render(ctx, v, &format!("env {k}"))?);
    }
    Ok(env)
}

/// The step's workdir relative to the builder directory (default `build`).
pub(crate) fn rel_workdir(ctx: &StepCtx<'_>, flags: &StepFlags) -> Result<String, Halt> {
    match &flags.workdir {
        Some(w) => render(ctx, w, "workdir"),
        None => Ok("build".to_string()),
    }
}

/// `B/rel` on the worker.
pub(crate) fn worker_path(ctx: &StepCtx<'_>, rel: &str) -> String {
    join_worker_path(ctx.remote.is_windows(), &ctx.builder_dir, rel)
}

fn opt_secs(v: Option<u64>) -> Value {
    v.map_or(Value::Nil, Value::from)
}

/// `shell` arguments in the order and with the defaults the 4.3 master sends (spec §5.5, §8.3).
pub(crate) fn shell_args(
    workdir: &str,
    command: Value,
    env: &BTreeMap<String, String>,
    flags: &StepFlags,
    use_pty: bool,
) -> Args {
    let env = Value::Map(
        env.iter()
            .map(|(k, v)| (Value::from(k.as_str()), Value::from(v.as_str())))
            .collect(),
    );
    Args::from_pairs([
        ("workdir", Value::from(workdir)),
        ("env", env),
        ("want_stdout", Value::from(true)),
        ("want_stderr", Value::from(true)),
        ("logfiles", Value::Map(Vec::new())),
        ("timeout", Value::from(flags.timeout.unwrap_or(1200))),
        ("maxTime", opt_secs(flags.max_time)),
        ("max_lines", Value::Nil),
        ("sigtermTime", opt_secs(flags.sigterm_time)),
        ("usePTY", Value::from(use_pty)),
        ("logEnviron", Value::from(true)),
        ("initial_stdin", Value::Nil),
        ("interruptSignal", Value::from("KILL")),
        ("command", command),
    ])
}

/// Counts output lines that match a warning pattern (Buildbot's WarningCountingShellCommand;
/// the pattern is searched anywhere in the line).
pub(crate) struct Warnings {
    re: regex::Regex,
    pub count: u64,
    pub lines: String,
}

impl Warnings {
    pub fn new(pattern: &str) -> Result<Warnings, Halt> {
        let re = regex::Regex::new(pattern)
            .map_err(|e| Halt::Exception(format!("bad warning_pattern {pattern:?}: {e}")))?;
        Ok(Warnings {
            re,
            count: 0,
            lines: String::new(),
        })
    }

    fn scan(&mut self, text: &str) {
        for line in text.lines() {
            if self.re.is_match(line) {
                self.count += 1;
                self.lines.push_str(line);
                self.lines.push('\n');
            }
        }
    }
}

/// What a finished command reported.
#[derive(Debug, Default)]
pub(crate) struct CmdResult {
    pub rc: Option<i64>,
    pub failure_reason: Option<String>,
    /// Stdout, when asked to collect it.
    pub stdout: String,
    /// `listdir`/`glob` results.
    pub files: Option<Vec<String>>,
}

impl CmdResult {
    pub fn timed_out(&self) -> bool {
        matches!(
            self.failure_reason.as_deref(),
            Some("timeout" | "timeout_without_output")
        )
    }
}

#[derive(Default)]
pub(crate) struct CmdOpts<'w> {
    pub collect_stdout: bool,
    pub warnings: Option<&'w mut Warnings>,
}

/// Runs one remote command to its end, streaming output into the `stdio` log (and `log`
/// items into logs of their own). A stop interrupts the command, waits for its end and
/// gives [`Halt::Cancelled`]; a `complete` with failure text gives [`Halt::Exception`].
pub(crate) async fn run_cmd(
    ctx: &mut StepCtx<'_>,
    logs: &mut LogSet,
    name: &str,
    args: Args,
    transfer: Transfer,
    mut opts: CmdOpts<'_>,
) -> Result<CmdResult, Halt> {
    let mut stop = ctx.stop.clone();
    if stop.borrow_and_update().is_some() {
        return Err(Halt::Cancelled);
    }
    logs.stdio(&mut *ctx.logs).await?;
    let spec = CommandSpec {
        builder: Some(ctx.builder_name.to_string()),
        name: name.to_string(),
        args,
    };
    let mut running = match ctx.remote.start(spec, transfer).await {
        Ok(r) => r,
        Err(RemoteError::NotConnected) => return Err(Halt::Lost),
        Err(RemoteError::Refused(text)) => {
            return Err(Halt::Exception(format!(
                "the worker refused the `{name}` command: {text}"
            )));
        }
    };
    let mut res = CmdResult::default();
    let mut interrupted = false;
    let mut stop_open = true;
    loop {
        tokio::select! {
            ev = running.events.recv() => match ev {
                Some(CommandEvent::Update(items)) => {
                    for item in items {
                        apply(ctx, logs, &mut res, &mut opts, item).await?;
                    }
                    if running.events.is_empty() {
                        logs.flush(&mut *ctx.logs).await?;
                    }
                }
                Some(CommandEvent::Complete { failure }) => {
                    logs.flush(&mut *ctx.logs).await?;
                    if let Some(f) = failure {
                        logs.stdio_lines(&mut *ctx.logs, 'h', &format!("\nremoteFailed: {f}\n")).await?;
                        if interrupted {
                            return Err(Halt::Cancelled);
                        }
                        return Err(Halt::Exception(format!("the `{name}` command failed on worker {}: {f}", ctx.remote.worker_name())));
                    }
                    if interrupted {
                        return Err(Halt::Cancelled);
                    }
                    return Ok(res);
                }
                Some(CommandEvent::Lost) | None => return Err(Halt::Lost),
            },
            changed = stop.changed(), if stop_open && !interrupted => match changed {
                Err(_) => stop_open = false,
                Ok(()) => {
                    let why = stop.borrow_and_update().clone();
                    if let Some(why) = why {
                        running.interrupt.interrupt(&why);
                        interrupted = true;
                    }
                }
            },
        }
    }
}

async fn apply(
    ctx: &mut StepCtx<'_>,
    logs: &mut LogSet,
    res: &mut CmdResult,
    opts: &mut CmdOpts<'_>,
    item: UpdateItem,
) -> Result<(), Halt> {
    let l = &mut *ctx.logs;
    match item {
        UpdateItem::Header(lines) => logs.stdio_lines(l, 'h', &lines.text).await?,
        UpdateItem::Stdout(lines) => {
            if opts.collect_stdout {
                res.stdout.push_str(&lines.text);
            }
            if let Some(w) = opts.warnings.as_deref_mut() {
                w.scan(&lines.text);
            }
            logs.stdio_lines(l, 'o', &lines.text).await?
        }
        UpdateItem::Stderr(lines) => {
            if let Some(w) = opts.warnings.as_deref_mut() {
                w.scan(&lines.text);
            }
            logs.stdio_lines(l, 'e', &lines.text).await?
        }
        UpdateItem::Log(name, lines) => {
            if !lines.text.is_empty() {
                logs.write(l, &name, LogType::Text, &lines.text).await?
            }
        }
        UpdateItem::Rc(rc) => {
            res.rc = Some(rc);
            logs.stdio_lines(l, 'h', &format!("program finished with exit code {rc}\n"))
                .await?
        }
        UpdateItem::FailureReason(r) => res.failure_reason = Some(r),
        UpdateItem::Files(f) => res.files = Some(f),
        UpdateItem::Elapsed(_) | UpdateItem::Stat(_) | UpdateItem::Other(..) => {}
    }
    Ok(())
}
