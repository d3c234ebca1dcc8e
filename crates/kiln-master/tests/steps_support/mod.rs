//! Shared parts of the step tests: an in-process worker that runs the real `kiln-worker`
//! command implementations, a scripted remote for exact update sequences, and in-memory
//! step logs.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kiln_config::{Renderable, Secrets, Step};
use kiln_engine::results::StepEnd;
use kiln_master::steps::{
    LogError, LogHandle, StepCtx, StepLogs, TriggerError, Triggerer, run_step,
};
use kiln_model::{LogType, Properties, Results, SourceStamp};
use kiln_proto::args::WorkerSettings;
use kiln_proto::{Op, Response, Value};
use kiln_remote::{
    BoxFuture, CommandEvent, CommandSpec, Interrupt, Remote, RemoteError, RunningCommand, Transfer,
};
use kiln_worker::commands::{self, CommandCtx, ExecPolicy, InterruptHandle, Output};
use kiln_worker::link::{MasterLink, Outgoing};
use tokio::sync::{mpsc, watch};

/// A worker in this process: each command runs through `kiln_worker::commands`, exactly as
/// the worker binary runs it, with the master side of the transfer ops answered here.
pub struct LocalWorker {
    pub basedir: PathBuf,
    next_id: AtomicU64,
    pub started: Mutex<Vec<CommandSpec>>,
}

impl LocalWorker {
    pub fn new(basedir: &Path) -> LocalWorker {
        LocalWorker {
            basedir: basedir.to_path_buf(),
            next_id: AtomicU64::new(0),
            started: Mutex::new(Vec::new()),
        }
    }

    pub fn command_names(&self) -> Vec<String> {
        self.started
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.name.clone())
            .collect()
    }
}

struct LocalInterrupt(InterruptHandle);

impl Interrupt for LocalInterrupt {
    fn interrupt(&self, why: &str) {
        self.0.interrupt(why);
    }
}

fn io_answer(r: std::io::Result<()>) -> Response {
    match r {
        Ok(()) => Response::ok(0),
        Err(e) => Response::error(0, e.to_string()),
    }
}

/// Answers one worker→master request the way the endpoint does.
fn answer(
    op: Op,
    transfer: &mut Transfer,
    events: &mpsc::Sender<CommandEvent>,
) -> (Response, Option<CommandEvent>) {
    match op {
        Op::Update { items, .. } => (Response::ok(0), Some(CommandEvent::Update(items))),
        Op::Complete { failure, .. } => (Response::ok(0), Some(CommandEvent::Complete { failure })),
        Op::UploadFileWrite { data, .. } | Op::UploadDirectoryWrite { data, .. } => {
            match transfer {
                Transfer::Upload(s) => (io_answer(s.write(&data)), None),
                _ => (Response::error(0, "unknown \"command_id\""), None),
            }
        }
        Op::UploadFileClose { .. } => match transfer {
            Transfer::Upload(s) => (io_answer(s.close()), None),
            _ => (Response::error(0, "unknown \"command_id\""), None),
        },
        Op::UploadFileUtime {
            access_time,
            modified_time,
            ..
        } => match transfer {
            Transfer::Upload(s) => (io_answer(s.utime(access_time, modified_time)), None),
            _ => (Response::error(0, "unknown \"command_id\""), None),
        },
        Op::UploadDirectoryUnpack { .. } => match transfer {
            Transfer::Upload(s) => (io_answer(s.unpack()), None),
            _ => (Response::error(0, "unknown \"command_id\""), None),
        },
        Op::ReadFile { length, .. } => match transfer {
            Transfer::Download(s) => match s.read(length as usize) {
                Ok(data) => (Response::with_result(0, Value::Binary(data)), None),
                Err(e) => (Response::error(0, e.to_string()), None),
            },
            _ => (Response::error(0, "unknown \"command_id\""), None),
        },
        Op::ReadFileClose { .. } => {
            if let Transfer::Download(s) = transfer {
                s.close();
            }
            (Response::ok(0), None)
        }
        other => {
            let _ = events;
            (
                Response::error(0, format!("unexpected op {}", other.name())),
                None,
            )
        }
    }
}

impl Remote for LocalWorker {
    fn worker_name(&self) -> &str {
        "local"
    }
    fn basedir(&self) -> &str {
        self.basedir.to_str().unwrap()
    }
    fn is_windows(&self) -> bool {
        false
    }
    fn has_command(&self, _: &str) -> bool {
        true
    }
    fn ping(&self) -> BoxFuture<'_, Result<(), RemoteError>> {
        Box::pin(async { Ok(()) })
    }
    fn start(
        &self,
        spec: CommandSpec,
        mut transfer: Transfer,
    ) -> BoxFuture<'_, Result<RunningCommand, RemoteError>> {
        Box::pin(async move {
            self.started.lock().unwrap().push(spec.clone());
            let id = self.next_id.fetch_add(1, Ordering::SeqCst).to_string();
            let prepared =
                commands::prepare(&id, &spec.name, &spec.args).map_err(RemoteError::Refused)?;
            let (link, mut rx) = MasterLink::channel(64);
            let (handle, interrupt) = commands::Interrupt::new();
            let settings = WorkerSettings::default();
            let out = Output::new(
                id.clone(),
                link.clone(),
                settings.buffer_size,
                settings.buffer_timeout,
            );
            let ctx = CommandCtx {
                command_id: id.clone(),
                link,
                out,
                settings,
                policy: Arc::new(ExecPolicy {
                    allow_root: true,
                    ..Default::default()
                }),
                basedir: self.basedir.clone(),
                interrupt,
                started: Instant::now(),
            };
            tokio::spawn(commands::run(ctx, prepared));
            let (tx, events) = mpsc::channel(16);
            tokio::spawn(async move {
                while let Some(out) = rx.recv().await {
                    let Outgoing::Request { op, reply } = out else {
                        continue;
                    };
                    let (response, event) = answer(op, &mut transfer, &tx);
                    if let Some(r) = reply {
                        let _ = r.send(response);
                    }
                    if let Some(ev) = event {
                        let last = matches!(ev, CommandEvent::Complete { .. });
                        let _ = tx.send(ev).await;
                        if last {
                            break;
                        }
                    }
                }
            });
            Ok(RunningCommand {
                command_id: id,
                events,
                interrupt: Box::new(LocalInterrupt(handle)),
            })
        })
    }
}

/// One scripted command: the events it produces, in order.
pub type Script = Vec<CommandEvent>;

/// A remote that answers each started command with the next script. Interrupts are recorded;
/// a script may end early (no `Complete`) to wait for an interrupt, after which
/// `after_interrupt` is played.
pub struct ScriptedRemote {
    pub scripts: Mutex<Vec<Script>>,
    pub after_interrupt: Mutex<Script>,
    pub started: Mutex<Vec<CommandSpec>>,
    pub interrupts: Arc<Mutex<Vec<String>>>,
}

impl ScriptedRemote {
    pub fn new(scripts: Vec<Script>) -> ScriptedRemote {
        ScriptedRemote {
            scripts: Mutex::new(scripts),
            after_interrupt: Mutex::new(Vec::new()),
            started: Mutex::new(Vec::new()),
            interrupts: Arc::default(),
        }
    }
}

struct ScriptedInterrupt {
    why: Arc<Mutex<Vec<String>>>,
    tx: Mutex<Option<(mpsc::Sender<CommandEvent>, Script)>>,
}

impl Interrupt for ScriptedInterrupt {
    fn interrupt(&self, why: &str) {
        self.why.lock().unwrap().push(why.to_string());
        if let Some((tx, script)) = self.tx.lock().unwrap().take() {
            tokio::spawn(async move {
                for ev in script {
                    let _ = tx.send(ev).await;
                }
            });
        }
    }
}

impl Remote for ScriptedRemote {
    fn worker_name(&self) -> &str {
        "scripted"
    }
    fn basedir(&self) -> &str {
        "/w"
    }
    fn is_windows(&self) -> bool {
        false
    }
    fn has_command(&self, _: &str) -> bool {
        true
    }
    fn ping(&self) -> BoxFuture<'_, Result<(), RemoteError>> {
        Box::pin(async { Ok(()) })
    }
    fn start(
        &self,
        spec: CommandSpec,
        _transfer: Transfer,
    ) -> BoxFuture<'_, Result<RunningCommand, RemoteError>> {
        Box::pin(async move {
            self.started.lock().unwrap().push(spec);
            let mut scripts = self.scripts.lock().unwrap();
            if scripts.is_empty() {
                return Err(RemoteError::NotConnected);
            }
            let script = scripts.remove(0);
            let (tx, events) = mpsc::channel(64);
            for ev in script {
                tx.try_send(ev).expect("scripts fit the channel");
            }
            let after = std::mem::take(&mut *self.after_interrupt.lock().unwrap());
            let interrupt = ScriptedInterrupt {
                why: self.interrupts.clone(),
                tx: Mutex::new(Some((tx, after))),
            };
            Ok(RunningCommand {
                command_id: "1".into(),
                events,
                interrupt: Box::new(interrupt),
            })
        })
    }
}

/// A log as the store would hold it.
#[derive(Debug, Clone)]
pub struct MemLog {
    pub name: String,
    pub log_type: LogType,
    pub text: String,
    pub finished: bool,
}

#[derive(Default)]
pub struct MemLogs {
    pub logs: Vec<MemLog>,
    pub states: Vec<String>,
    pub urls: Vec<(String, String)>,
}

impl MemLogs {
    pub fn text(&self, name: &str) -> String {
        self.logs
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.text.clone())
            .unwrap_or_else(|| panic!("no log {name:?}; logs: {:?}", self.names()))
    }
    pub fn names(&self) -> Vec<String> {
        self.logs.iter().map(|l| l.name.clone()).collect()
    }
    pub fn last_state(&self) -> &str {
        self.states.last().map(String::as_str).unwrap_or("")
    }
}

impl StepLogs for MemLogs {
    fn add_log(
        &mut self,
        name: &str,
        log_type: LogType,
    ) -> BoxFuture<'_, Result<LogHandle, LogError>> {
        self.logs.push(MemLog {
            name: name.into(),
            log_type,
            text: String::new(),
            finished: false,
        });
        let id = self.logs.len() as i64 - 1;
        Box::pin(async move { Ok(LogHandle(id)) })
    }
    fn append(&mut self, log: LogHandle, text: String) -> BoxFuture<'_, Result<(), LogError>> {
        assert!(text.ends_with('\n'), "appends are whole lines: {text:?}");
        let l = &mut self.logs[log.0 as usize];
        assert!(!l.finished, "append to finished log {}", l.name);
        l.text.push_str(&text);
        Box::pin(async { Ok(()) })
    }
    fn finish(&mut self, log: LogHandle) -> BoxFuture<'_, Result<(), LogError>> {
        self.logs[log.0 as usize].finished = true;
        Box::pin(async { Ok(()) })
    }
    fn set_state_string(&mut self, text: &str) -> BoxFuture<'_, Result<(), LogError>> {
        self.states.push(text.into());
        Box::pin(async { Ok(()) })
    }
    fn add_url(&mut self, name: &str, url: &str) -> BoxFuture<'_, Result<(), LogError>> {
        self.urls.push((name.into(), url.into()));
        Box::pin(async { Ok(()) })
    }
}

/// One `trigger` call: scheduler names, properties, sources, wait.
pub type TriggerCall = (Vec<String>, Properties, BTreeMap<String, SourceStamp>, bool);

/// Records trigger calls and answers with `result`.
pub struct RecordingTriggerer {
    pub calls: Mutex<Vec<TriggerCall>>,
    pub result: Results,
}

impl Triggerer for RecordingTriggerer {
    fn trigger(
        &self,
        names: &[String],
        properties: Properties,
        sources: BTreeMap<String, SourceStamp>,
        wait: bool,
    ) -> BoxFuture<'_, Result<Results, TriggerError>> {
        self.calls
            .lock()
            .unwrap()
            .push((names.to_vec(), properties, sources, wait));
        let r = if wait { self.result } else { Results::Success };
        Box::pin(async move { Ok(r) })
    }
}

/// One build's worth of step context.
pub struct Harness {
    pub properties: Properties,
    pub sources: BTreeMap<String, SourceStamp>,
    pub secrets: Secrets,
    pub builder_env: BTreeMap<String, Renderable>,
    pub logs: MemLogs,
    pub master_dir: PathBuf,
    pub builder_dir: String,
    pub stop_tx: watch::Sender<Option<String>>,
    pub triggerer: RecordingTriggerer,
}

impl Harness {
    pub fn new(builder_dir: &str, master_dir: &Path) -> Harness {
        Harness {
            properties: Properties::default(),
            sources: BTreeMap::new(),
            secrets: Secrets::default(),
            builder_env: BTreeMap::new(),
            logs: MemLogs::default(),
            master_dir: master_dir.to_path_buf(),
            builder_dir: builder_dir.to_string(),
            stop_tx: watch::channel(None).0,
            triggerer: RecordingTriggerer {
                calls: Mutex::new(Vec::new()),
                result: Results::Success,
            },
        }
    }

    pub async fn run(&mut self, remote: &dyn Remote, step: &Step) -> StepEnd {
        self.logs = MemLogs::default();
        let mut ctx = StepCtx {
            remote,
            builder_name: "b1",
            builder_dir: self.builder_dir.clone(),
            properties: &mut self.properties,
            sources: &self.sources,
            secrets: &self.secrets,
            builder_env: &self.builder_env,
            logs: &mut self.logs,
            master_dir: self.master_dir.clone(),
            stop: self.stop_tx.subscribe(),
            triggerer: &self.triggerer,
        };
        let end = run_step(step, &mut ctx).await;
        for l in &self.logs.logs {
            assert!(l.finished, "log {} was left open", l.name);
        }
        end
    }
}

/// A step from its JSON form: `step("shell", json!({"command": "echo hi"}), json!({}))`.
pub fn step(kind: &str, args: serde_json::Value, flags: serde_json::Value) -> Step {
    serde_json::from_value(
        serde_json::json!({ "name": kind, "kind": { kind: args }, "flags": flags }),
    )
    .expect("a valid step")
}

/// Runs a command line in `dir`, panicking with its output if it fails.
pub fn sh(dir: &Path, cmd: &str) -> String {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
