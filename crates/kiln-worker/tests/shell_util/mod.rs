//! Runs worker commands without a network: a `CommandCtx` on a `MasterLink::channel`,
//! and everything the command sends collected from the receiver.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_proto::Op;
use kiln_proto::Value;
use kiln_proto::args::{Args, WorkerSettings};
use kiln_proto::update::{Lines, UpdateItem};
use kiln_worker::commands::process::ExecPolicy;
use kiln_worker::commands::{self, CommandCtx, Interrupt, Output};
use kiln_worker::link::{MasterLink, Outgoing};

/// Every `update` and `complete` of one command.
#[derive(Debug, Default)]
pub struct Collected {
    pub updates: Vec<Vec<UpdateItem>>,
    /// `complete.args` of each `complete` (there must be exactly one).
    pub completes: Vec<Option<String>>,
    /// Messages after the `complete` (there must be none).
    pub after_complete: usize,
}

impl Collected {
    pub fn items(&self) -> Vec<&UpdateItem> {
        self.updates.iter().flatten().collect()
    }

    fn text(&self, pick: impl Fn(&UpdateItem) -> Option<&Lines>) -> String {
        let mut s = String::new();
        for i in self.items() {
            if let Some(l) = pick(i) {
                check_lines(l);
                s.push_str(&l.text);
            }
        }
        s
    }

    pub fn stdout(&self) -> String {
        self.text(|i| {
            if let UpdateItem::Stdout(l) = i {
                Some(l)
            } else {
                None
            }
        })
    }
    pub fn stderr(&self) -> String {
        self.text(|i| {
            if let UpdateItem::Stderr(l) = i {
                Some(l)
            } else {
                None
            }
        })
    }
    pub fn header(&self) -> String {
        self.text(|i| {
            if let UpdateItem::Header(l) = i {
                Some(l)
            } else {
                None
            }
        })
    }
    pub fn log(&self, name: &str) -> String {
        self.text(|i| {
            if let UpdateItem::Log(n, l) = i
                && n == name
            {
                Some(l)
            } else {
                None
            }
        })
    }
    pub fn rc(&self) -> Option<i64> {
        let rcs: Vec<i64> = self
            .items()
            .iter()
            .filter_map(|i| {
                if let UpdateItem::Rc(rc) = i {
                    Some(*rc)
                } else {
                    None
                }
            })
            .collect();
        assert!(rcs.len() <= 1, "more than one rc: {rcs:?}");
        rcs.first().copied()
    }
    pub fn elapsed(&self) -> Option<f64> {
        self.items().iter().find_map(|i| {
            if let UpdateItem::Elapsed(e) = i {
                Some(*e)
            } else {
                None
            }
        })
    }
    pub fn failure_reason(&self) -> Option<String> {
        self.items().iter().find_map(|i| {
            if let UpdateItem::FailureReason(r) = i {
                Some(r.clone())
            } else {
                None
            }
        })
    }
    /// The one `complete`: `None` = success (nil args), `Some(text)` = failure.
    pub fn complete(&self) -> Option<String> {
        assert_eq!(self.completes.len(), 1, "exactly one complete");
        assert_eq!(self.after_complete, 0, "nothing after complete");
        self.completes[0].clone()
    }
    /// The index (in `items()`) of the first item with this key.
    pub fn position(&self, key: &str) -> Option<usize> {
        self.items().iter().position(|i| i.key() == key)
    }
}

/// Positions and times of a line-triple are consistent with its text.
pub fn check_lines(l: &Lines) {
    assert!(l.text.ends_with('\n'), "partial line sent: {:?}", l.text);
    let expect: Vec<u32> = l
        .text
        .chars()
        .enumerate()
        .filter(|(_, c)| *c == '\n')
        .map(|(i, _)| i as u32)
        .collect();
    assert_eq!(l.newlines, expect, "newline positions of {:?}", l.text);
    assert_eq!(l.times.len(), l.newlines.len());
    assert!(l.times.iter().all(|t| *t > 1.6e9), "times are Unix times");
}

/// How to run a command.
pub struct Run {
    pub policy: ExecPolicy,
    pub settings: WorkerSettings,
    pub basedir: PathBuf,
    /// Interrupt once this text has appeared in stdout.
    pub interrupt_on: Option<String>,
    /// Interrupt this long after the start.
    pub interrupt_after: Option<Duration>,
}

impl Run {
    pub fn new(basedir: &Path) -> Run {
        kiln_worker::commands::process::init_process_control();
        // Quick flushes so tests can react to output.
        let settings = WorkerSettings {
            buffer_timeout: 0.05,
            ..WorkerSettings::default()
        };
        Run {
            policy: ExecPolicy {
                allow_root: true,
                ..ExecPolicy::default()
            },
            settings,
            basedir: basedir.to_path_buf(),
            interrupt_on: None,
            interrupt_after: None,
        }
    }

    pub async fn command(self, name: &str, args: Args) -> Collected {
        let prepared = match commands::prepare("7", name, &args) {
            Ok(p) => p,
            Err(e) => panic!("{name} refused: {e}"),
        };
        let (link, mut rx) = MasterLink::channel(64);
        let (handle, interrupt) = Interrupt::new();
        let ctx = CommandCtx {
            command_id: "7".into(),
            out: Output::new(
                "7".into(),
                link.clone(),
                self.settings.buffer_size,
                self.settings.buffer_timeout,
            ),
            link,
            settings: self.settings.clone(),
            policy: Arc::new(self.policy.clone()),
            basedir: self.basedir.clone(),
            interrupt,
            started: Instant::now(),
        };
        let task = tokio::spawn(commands::run(ctx, prepared));
        if let Some(after) = self.interrupt_after {
            let h = handle.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                h.interrupt("test interrupt");
            });
        }
        let mut c = Collected::default();
        let mut seen = String::new();
        while let Some(msg) = rx.recv().await {
            match msg {
                Outgoing::Request {
                    op: Op::Update { command_id, items },
                    ..
                } => {
                    assert_eq!(command_id, "7");
                    if !c.completes.is_empty() {
                        c.after_complete += 1;
                    }
                    for i in &items {
                        if let UpdateItem::Stdout(l) = i {
                            seen.push_str(&l.text);
                        }
                    }
                    c.updates.push(items);
                    if let Some(marker) = &self.interrupt_on
                        && seen.contains(marker.as_str())
                    {
                        handle.interrupt("test interrupt");
                    }
                }
                Outgoing::Request {
                    op:
                        Op::Complete {
                            command_id,
                            failure,
                        },
                    ..
                } => {
                    assert_eq!(command_id, "7");
                    if !c.completes.is_empty() {
                        c.after_complete += 1;
                    }
                    c.completes.push(failure);
                }
                other => panic!("unexpected message {other:?}"),
            }
        }
        task.await.expect("the command task does not panic");
        c
    }

    pub async fn shell(self, args: &[(&str, Value)]) -> Collected {
        self.command(
            "shell",
            Args::from_pairs(args.iter().map(|(k, v)| (*k, v.clone()))),
        )
        .await
    }
}

/// Standard shell args: `command` plus a workdir under `dir`.
pub fn sh(dir: &Path, command: &str) -> Vec<(&'static str, Value)> {
    vec![
        ("command", Value::from(command)),
        ("workdir", Value::from(dir.join("build").to_str().unwrap())),
    ]
}

pub fn argv(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| Value::from(*s)).collect())
}

pub fn map(pairs: &[(&str, Value)]) -> Value {
    Value::Map(
        pairs
            .iter()
            .map(|(k, v)| (Value::from(*k), v.clone()))
            .collect(),
    )
}

/// Pids of live (non-zombie) processes whose command line contains `marker`.
pub fn processes_with(marker: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true);
        if cmdline.contains(marker) && !zombie {
            found.push(pid);
        }
    }
    found
}

/// Waits (up to 2 s) until no process carries `marker`; returns the survivors.
pub async fn survivors(marker: &str) -> Vec<i32> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let left = processes_with(marker);
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A unique sleep duration, so each test finds its own processes in /proc.
pub fn marker(n: u32) -> String {
    format!("1000.{}{:03}", std::process::id() % 100_000, n)
}
