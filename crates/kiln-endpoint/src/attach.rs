//! The attach sequence the master runs after `101` (spec §4.1), in Buildbot's order.

use kiln_proto::args::{Args, WorkerSettings};
use kiln_proto::update::UpdateItem;
use kiln_proto::{Op, Value, text_of};

use super::conn::Link;
use kiln_remote::join_worker_path;
use kiln_remote::{CommandEvent, CommandSpec, RemoteError, Transfer, WorkerEntry};

/// Why the attach sequence failed; the connection is then dropped. `what` names the
/// request (`get_worker_info`) or the housekeeping command (`listdir`) that failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AttachError {
    /// The request or command could not be sent or started, or its answer never came.
    #[error("{what}")]
    Remote {
        what: String,
        #[source]
        source: RemoteError,
    },
    /// The worker answered the request with an exception: its text.
    #[error("{what} refused: {text}")]
    Exception { what: String, text: String },
    /// The command ran but completed with a failure: its text.
    #[error("{what} failed: {text}")]
    Failed { what: String, text: String },
    /// The connection went away while the command ran.
    #[error("{what}: connection lost")]
    Lost { what: String },
    /// The command ended with another rc than 0 (or none).
    #[error("{what} ended with rc {rc:?}")]
    Rc { what: String, rc: Option<i64> },
    /// The worker's answer lacks what the sequence needs; `expected` says what.
    #[error("{expected}")]
    Malformed { expected: &'static str },
}

/// What the attach sequence learnt about the worker.
pub(crate) struct Attached {
    pub info: serde_json::Map<String, serde_json::Value>,
    pub basedir: String,
    pub windows: bool,
}

async fn ask(link: &Link, op: Op) -> Result<Value, AttachError> {
    let what = op.name().to_owned();
    let resp = match link.request(op).await {
        Ok(resp) => resp,
        Err(source) => return Err(AttachError::Remote { what, source }),
    };
    match resp.error_text() {
        Some(text) => Err(AttachError::Exception { what, text }),
        None => Ok(resp.result),
    }
}

fn rc_of(items: &[UpdateItem]) -> Option<i64> {
    items.iter().rev().find_map(|i| match i {
        UpdateItem::Rc(rc) => Some(*rc),
        _ => None,
    })
}

/// Runs one of the endpoint's own commands and collects its updates.
async fn run_collect(link: &Link, name: &str, args: Args) -> Result<Vec<UpdateItem>, AttachError> {
    let what = name.to_owned();
    let spec = CommandSpec {
        builder: None,
        name: name.to_owned(),
        args,
    };
    let mut cmd = match link.start(spec, Transfer::None).await {
        Ok(cmd) => cmd,
        Err(source) => return Err(AttachError::Remote { what, source }),
    };
    let mut items = Vec::new();
    loop {
        match cmd.events.recv().await {
            Some(CommandEvent::Update(u)) => items.extend(u),
            Some(CommandEvent::Complete { failure: None }) => return Ok(items),
            Some(CommandEvent::Complete {
                failure: Some(text),
            }) => return Err(AttachError::Failed { what, text }),
            Some(CommandEvent::Lost) | None => return Err(AttachError::Lost { what }),
        }
    }
}

/// Runs a housekeeping command that must end with rc 0.
async fn run_ok(link: &Link, name: &str, args: Args) -> Result<Vec<UpdateItem>, AttachError> {
    let items = run_collect(link, name, args).await?;
    match rc_of(&items) {
        Some(0) => Ok(items),
        rc => Err(AttachError::Rc {
            what: name.to_owned(),
            rc,
        }),
    }
}

/// Python truthiness, for `delete_leftover_dirs` (observed as int 0/1, may be a bool).
fn truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Nil) => false,
        Some(Value::Boolean(b)) => *b,
        Some(Value::Integer(i)) => i.as_i64().is_none_or(|i| i != 0),
        Some(Value::F32(f)) => *f != 0.0,
        Some(Value::F64(f)) => *f != 0.0,
        Some(Value::String(s)) => !s.as_bytes().is_empty(),
        Some(Value::Binary(b)) => !b.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Map(m)) => !m.is_empty(),
        Some(Value::Ext(..)) => true,
    }
}

/// msgpack → JSON for the info map: bin as lossy text, ext and non-finite floats as null.
pub(crate) fn to_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Nil | Value::Ext(..) => J::Null,
        Value::Boolean(b) => J::Bool(*b),
        Value::Integer(i) => match (i.as_i64(), i.as_u64()) {
            (Some(n), _) => J::from(n),
            (None, Some(n)) => J::from(n),
            _ => J::Null,
        },
        Value::F32(f) => serde_json::Number::from_f64(f64::from(*f)).map_or(J::Null, J::Number),
        Value::F64(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        Value::String(_) | Value::Binary(_) => J::String(text_of(v).unwrap_or_default()),
        Value::Array(a) => J::Array(a.iter().map(to_json).collect()),
        Value::Map(m) => J::Object(
            m.iter()
                .map(|(k, v)| (text_of(k).unwrap_or_else(|| k.to_string()), to_json(v)))
                .collect(),
        ),
    }
}

fn is_dir_mode(mode: i64) -> bool {
    mode & 0o170000 == 0o040000
}

pub(crate) async fn attach(link: &Link, entry: &WorkerEntry) -> Result<Attached, AttachError> {
    ask(
        link,
        Op::Print {
            message: "attached".into(),
        },
    )
    .await?;
    let info = ask(link, Op::GetWorkerInfo).await?;
    let Value::Map(info) = info else {
        return Err(AttachError::Malformed {
            expected: "get_worker_info did not return a map",
        });
    };
    let get = |k: &str| {
        info.iter()
            .find(|(key, _)| text_of(key).as_deref() == Some(k))
            .map(|(_, v)| v)
    };
    let basedir = get("basedir")
        .and_then(text_of)
        .ok_or(AttachError::Malformed {
            expected: "the worker's info has no \"basedir\"",
        })?;
    let windows = get("system").and_then(text_of).as_deref() == Some("nt");
    let delete_leftovers = truthy(get("delete_leftover_dirs"));
    let json = info
        .iter()
        .map(|(k, v)| (text_of(k).unwrap_or_else(|| k.to_string()), to_json(v)))
        .collect();
    drop(info);

    ask(link, Op::SetWorkerSettings(WorkerSettings::default())).await?;

    let listing = run_ok(
        link,
        "listdir",
        Args::from_pairs([("path", basedir.as_str())]),
    )
    .await?;
    let files: Vec<String> = listing
        .into_iter()
        .find_map(|i| match i {
            UpdateItem::Files(f) => Some(f),
            _ => None,
        })
        .ok_or(AttachError::Malformed {
            expected: "listdir of the worker's basedir returned no \"files\"",
        })?;

    let wanted: Vec<&str> = entry
        .builder_dirs
        .iter()
        .map(String::as_str)
        .chain(["info"])
        .collect();
    if delete_leftovers {
        let mut dirs = Vec::new();
        for f in files.iter().filter(|f| !wanted.contains(&f.as_str())) {
            let path = join_worker_path(windows, &basedir, f);
            // An entry that vanished since the listing is simply not a leftover any more.
            let Ok(items) = run_ok(link, "stat", Args::from_pairs([("path", path.as_str())])).await
            else {
                continue;
            };
            let mode = items.iter().find_map(|i| match i {
                UpdateItem::Stat(s) => s.first().copied(),
                _ => None,
            });
            if mode.is_some_and(is_dir_mode) {
                dirs.push(Value::from(path));
            }
        }
        if !dirs.is_empty() {
            run_ok(
                link,
                "rmdir",
                Args::from_pairs([("paths", Value::Array(dirs))]),
            )
            .await?;
        }
    }

    let mut missing: Vec<String> = wanted
        .iter()
        .filter(|w| !files.iter().any(|f| f == *w))
        .map(|w| join_worker_path(windows, &basedir, w))
        .collect();
    missing.sort();
    missing.dedup();
    if !missing.is_empty() {
        let paths = Value::Array(missing.into_iter().map(Value::from).collect());
        run_ok(link, "mkdir", Args::from_pairs([("paths", paths)])).await?;
    }
    for _ in &entry.builder_dirs {
        ask(
            link,
            Op::Print {
                message: "attached".into(),
            },
        )
        .await?;
    }
    Ok(Attached {
        info: json,
        basedir,
        windows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::Out;
    use kiln_proto::Response;
    use kiln_remote::PasswordCheck;

    /// A worker on the other end of `link` that answers each request with `answer`.
    fn fake_worker(
        mut rx: tokio::sync::mpsc::UnboundedReceiver<Out>,
        answer: fn(&Op) -> Response,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            while let Some(out) = rx.recv().await {
                if let Out::Request(r) = out {
                    let (op, reply) = *r;
                    if let Some(reply) = reply {
                        let _ = reply.send(answer(&op));
                    }
                }
            }
        })
    }

    #[tokio::test]
    async fn attach_errors_tell_a_lost_link_from_an_exception_from_a_bad_answer() {
        let (link, rx) = Link::new();
        drop(rx);
        let e = ask(&link, Op::Keepalive).await.unwrap_err();
        assert!(
            matches!(&e, AttachError::Remote { what, source: RemoteError::NotConnected } if what == "keepalive"),
            "{e:?}"
        );
        assert_eq!(
            kiln_proto::error_chain(&e),
            "keepalive: the worker is not connected"
        );

        let (link, rx) = Link::new();
        let worker = fake_worker(rx, |_| Response::error(0, "no such op"));
        let e = ask(&link, Op::Keepalive).await.unwrap_err();
        assert!(
            matches!(&e, AttachError::Exception { what, text } if what == "keepalive" && text == "no such op"),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "keepalive refused: no such op");
        drop(link);
        worker.abort();

        let (link, rx) = Link::new();
        let worker = fake_worker(rx, |op| match op {
            Op::GetWorkerInfo => Response::with_result(0, Value::from("not a map")),
            _ => Response::ok(0),
        });
        let entry = WorkerEntry {
            password: PasswordCheck::Plain("p".into()),
            builder_dirs: vec![],
        };
        let e = attach(&link, &entry).await.err().unwrap();
        assert!(
            matches!(
                e,
                AttachError::Malformed {
                    expected: "get_worker_info did not return a map"
                }
            ),
            "{e:?}"
        );
        worker.abort();
    }

    #[test]
    fn python_truthiness() {
        assert!(!truthy(None));
        assert!(!truthy(Some(&Value::from(0))));
        assert!(truthy(Some(&Value::from(1))));
        assert!(truthy(Some(&Value::from(true))));
        assert!(!truthy(Some(&Value::from(""))));
        assert!(truthy(Some(&Value::from("0"))));
    }

    #[test]
    fn dir_modes() {
        assert!(is_dir_mode(0o040755));
        assert!(!is_dir_mode(0o100644));
    }

    #[test]
    fn info_to_json() {
        let v = Value::Map(vec![
            (Value::from("a"), Value::Binary(b"x\xff".to_vec())),
            (Value::from("n"), Value::from(3)),
        ]);
        assert_eq!(to_json(&v), serde_json::json!({"a": "x\u{fffd}", "n": 3}));
    }
}
