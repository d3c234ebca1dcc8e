//! Steps against a scripted remote: exact update sequences, the wire arguments, lost
//! connections and stops.

mod steps_support;

use kiln_config::Renderable;
use kiln_engine::results::StepEnd;
use kiln_model::{LogType, Results};
use kiln_proto::update::{Lines, UpdateItem};
use kiln_proto::{MapExt, Value, text_of};
use kiln_remote::CommandEvent;
use serde_json::json;
use steps_support::{Harness, ScriptedRemote, step};

fn lines(t: &str) -> Lines {
    Lines::from_text(t, 1.0)
}

fn harness() -> Harness {
    Harness::new("/w/b1", std::path::Path::new("/nonexistent-master"))
}

fn complete() -> CommandEvent {
    CommandEvent::Complete { failure: None }
}

#[tokio::test]
async fn update_items_become_prefixed_stdio_lines_and_logs() {
    let remote = ScriptedRemote::new(vec![vec![
        CommandEvent::Update(vec![
            UpdateItem::Header(lines("echo hi\n in dir /w/b1/build\n")),
            UpdateItem::Stdout(lines("one\ntwo\n")),
            UpdateItem::Stderr(lines("oops\n")),
            UpdateItem::Log("out.log".into(), lines("file line\n")),
        ]),
        CommandEvent::Update(vec![
            UpdateItem::Rc(0),
            UpdateItem::Header(lines("elapsedTime=0.1\n")),
            UpdateItem::Elapsed(0.1),
        ]),
        complete(),
    ]]);
    let mut h = harness();
    let s = step(
        "test",
        json!({"command": "echo hi"}),
        json!({"description": "testing", "description_done": "tested"}),
    );
    assert_eq!(
        h.run(&remote, &s).await,
        StepEnd::Finished(Results::Success)
    );
    assert_eq!(
        h.logs.text("stdio"),
        "hecho hi\nh in dir /w/b1/build\noone\notwo\neoops\nhprogram finished with exit code 0\nhelapsedTime=0.1\n"
    );
    assert_eq!(h.logs.text("out.log"), "file line\n");
    assert_eq!(h.logs.logs[1].log_type, LogType::Text);
    assert_eq!(h.logs.states, ["testing", "tested"]);
}

#[tokio::test]
async fn shell_wire_arguments_match_the_buildbot_master() {
    let remote = ScriptedRemote::new(vec![vec![
        CommandEvent::Update(vec![UpdateItem::Rc(0)]),
        complete(),
    ]]);
    let mut h = harness();
    h.builder_env
        .insert("A".into(), Renderable::Text("builder".into()));
    h.builder_env
        .insert("B".into(), Renderable::Text("builder".into()));
    h.properties.set("n", 7, "test");
    let s = step(
        "shell",
        json!({"command": ["make", {"__interpolate": "-j%(prop:n)s", "kwargs": {}}]}),
        json!({"env": {"B": "step"}, "max_time": 60, "sigterm_time": 5, "workdir": "src"}),
    );
    assert_eq!(
        h.run(&remote, &s).await,
        StepEnd::Finished(Results::Success)
    );
    let spec = remote.started.lock().unwrap()[0].clone();
    assert_eq!(spec.name, "shell");
    let a = &spec.args;
    let keys: Vec<String> = a.0.iter().map(|(k, _)| text_of(k).unwrap()).collect();
    assert_eq!(
        keys,
        [
            "workdir",
            "env",
            "want_stdout",
            "want_stderr",
            "logfiles",
            "timeout",
            "maxTime",
            "max_lines",
            "sigtermTime",
            "usePTY",
            "logEnviron",
            "initial_stdin",
            "interruptSignal",
            "command"
        ]
    );
    assert_eq!(text_of(a.get(&["workdir"]).unwrap()).unwrap(), "/w/b1/src");
    let Value::Map(env) = a.0.get_key("env").unwrap() else {
        panic!("env is a map")
    };
    assert_eq!(text_of(env.get_key("A").unwrap()).unwrap(), "builder");
    assert_eq!(text_of(env.get_key("B").unwrap()).unwrap(), "step");
    assert_eq!(a.get(&["timeout"]).unwrap().as_u64(), Some(1200));
    assert_eq!(a.get(&["maxTime"]).unwrap().as_u64(), Some(60));
    assert_eq!(a.get(&["sigtermTime"]).unwrap().as_u64(), Some(5));
    assert_eq!(a.get(&["interruptSignal"]).unwrap().as_str(), Some("KILL"));
    assert_eq!(a.get(&["usePTY"]).unwrap().as_bool(), Some(false));
    assert_eq!(a.get(&["logEnviron"]).unwrap().as_bool(), Some(true));
    assert_eq!(a.0.get_key("logfiles"), Some(&Value::Map(vec![])));
    assert_eq!(
        a.get(&["command"]).unwrap(),
        &Value::Array(vec![Value::from("make"), Value::from("-j7")])
    );
}

#[tokio::test]
async fn decode_rc_and_warnings_combine() {
    let out = |rc| {
        vec![
            CommandEvent::Update(vec![
                UpdateItem::Stdout(lines("x: warning: a\nclean\n")),
                UpdateItem::Rc(rc),
            ]),
            complete(),
        ]
    };
    let remote = ScriptedRemote::new(vec![out(0), out(2), out(3)]);
    let mut h = harness();
    let s = step(
        "compile",
        json!({"command": "make", "warning_pattern": "warning:", "decode_rc": {"0": 0, "2": 1}}),
        json!({}),
    );
    assert_eq!(
        h.run(&remote, &s).await,
        StepEnd::Finished(Results::Warnings)
    );
    assert_eq!(h.logs.text("warnings"), "x: warning: a\n");
    assert_eq!(
        h.run(&remote, &s).await,
        StepEnd::Finished(Results::Warnings)
    );
    assert_eq!(
        h.run(&remote, &s).await,
        StepEnd::Finished(Results::Failure),
        "an unlisted code is FAILURE"
    );
    assert_eq!(h.logs.last_state(), "compile (warnings: 1) (failure)");
    assert_eq!(h.properties.get("warnings-count"), Some(&json!(3)));
}

#[tokio::test]
async fn timeout_failure_reason_shows_in_the_state() {
    let remote = ScriptedRemote::new(vec![vec![
        CommandEvent::Update(vec![
            UpdateItem::FailureReason("timeout_without_output".into()),
            UpdateItem::Rc(-1),
        ]),
        complete(),
    ]]);
    let mut h = harness();
    let s = step("shell", json!({"command": "sleep 99"}), json!({}));
    assert_eq!(
        h.run(&remote, &s).await,
        StepEnd::Finished(Results::Failure)
    );
    assert_eq!(h.logs.last_state(), "shell (failure) (timed out)");
}

#[tokio::test]
async fn complete_with_failure_text_is_an_exception() {
    let remote = ScriptedRemote::new(vec![vec![
        CommandEvent::Update(vec![UpdateItem::Elapsed(0.0)]),
        CommandEvent::Complete {
            failure: Some("[Failure instance: boom]".into()),
        },
    ]]);
    let mut h = harness();
    let s = step("shell", json!({"command": "x"}), json!({}));
    assert_eq!(h.run(&remote, &s).await, StepEnd::Exception);
    assert!(h.logs.text("err.text").contains("[Failure instance: boom]"));
    assert!(
        h.logs
            .text("stdio")
            .contains("hremoteFailed: [Failure instance: boom]\n")
    );
    assert_eq!(h.logs.last_state(), "shell (exception)");
}

#[tokio::test]
async fn lost_connection_is_retry() {
    let remote = ScriptedRemote::new(vec![vec![
        CommandEvent::Update(vec![UpdateItem::Stdout(lines("partial\n"))]),
        CommandEvent::Lost,
    ]]);
    let mut h = harness();
    let s = step("shell", json!({"command": "x"}), json!({}));
    assert_eq!(h.run(&remote, &s).await, StepEnd::ConnectionLost);
    assert_eq!(h.logs.text("stdio"), "opartial\n");
    // A worker that is gone before the command starts: the same.
    let gone = ScriptedRemote::new(vec![]);
    assert_eq!(h.run(&gone, &s).await, StepEnd::ConnectionLost);
}

#[tokio::test]
async fn stop_interrupts_waits_for_the_end_and_cancels() {
    let remote = ScriptedRemote::new(vec![vec![CommandEvent::Update(vec![UpdateItem::Header(
        lines("sleep 30\n"),
    )])]]);
    *remote.after_interrupt.lock().unwrap() = vec![
        CommandEvent::Update(vec![
            UpdateItem::Header(lines("\ncommand interrupted, attempting to kill\n")),
            UpdateItem::Rc(-1),
        ]),
        complete(),
    ];
    let mut h = harness();
    let tx = h.stop_tx.clone();
    let stopper = tokio::spawn(async move {
        // The step holds two receivers (the context's and the running command's).
        while tx.receiver_count() < 2 {
            tokio::task::yield_now().await;
        }
        tx.send_replace(Some("stopped by alice".into()));
    });
    let s = step("shell", json!({"command": "sleep 30"}), json!({}));
    assert_eq!(h.run(&remote, &s).await, StepEnd::Cancelled);
    stopper.await.unwrap();
    assert_eq!(*remote.interrupts.lock().unwrap(), ["stopped by alice"]);
    // The output after the interrupt still reached the log.
    assert!(
        h.logs
            .text("stdio")
            .ends_with("hprogram finished with exit code -1\n"),
        "{}",
        h.logs.text("stdio")
    );
    assert_eq!(h.logs.last_state(), "shell (cancelled)");
    assert_eq!(h.logs.text("cancelled"), "stopped by alice\n");

    // Already stopped: nothing starts.
    let idle = ScriptedRemote::new(vec![vec![complete()]]);
    assert_eq!(h.run(&idle, &s).await, StepEnd::Cancelled);
    assert!(idle.started.lock().unwrap().is_empty());
}

#[tokio::test]
async fn transfer_and_fs_wire_arguments() {
    let ok = || vec![CommandEvent::Update(vec![UpdateItem::Rc(0)]), complete()];
    let remote = ScriptedRemote::new(vec![ok(), ok(), ok(), ok(), ok()]);
    let mut h = harness();
    h.run(
        &remote,
        &step("mkdir", json!({"dir": "build/out"}), json!({})),
    )
    .await;
    h.run(
        &remote,
        &step("rmdir", json!({"dir": "build/out"}), json!({})),
    )
    .await;
    h.run(
        &remote,
        &step("rmfile", json!({"file": "build/x.txt"}), json!({})),
    )
    .await;
    h.run(
        &remote,
        &step(
            "string_download",
            json!({"s": "abc", "workerdest": "cfg/x.ini", "mode": 0o644}),
            json!({"workdir": "wd"}),
        ),
    )
    .await;
    h.run(
        &remote,
        &step(
            "file_upload",
            json!({"workersrc": "/abs/art.tgz", "masterdest": "/tmp/kiln-never-written"}),
            json!({}),
        ),
    )
    .await;
    let started = remote.started.lock().unwrap();
    let path = |i: usize, k: &str| -> Value { started[i].args.get(&[k]).unwrap().clone() };
    assert_eq!(started[0].name, "mkdir");
    assert_eq!(
        path(0, "paths"),
        Value::Array(vec![Value::from("/w/b1/build/out")])
    );
    assert_eq!(started[1].name, "rmdir");
    assert_eq!(
        path(1, "paths"),
        Value::Array(vec![Value::from("/w/b1/build/out")])
    );
    assert_eq!(started[2].name, "rmfile");
    assert_eq!(path(2, "path"), Value::from("/w/b1/build/x.txt"));
    assert_eq!(started[3].name, "download_file");
    assert_eq!(path(3, "path"), Value::from("/w/b1/wd/cfg/x.ini"));
    assert_eq!(path(3, "blocksize").as_u64(), Some(16384));
    assert_eq!(path(3, "mode").as_u64(), Some(0o644));
    assert_eq!(started[4].name, "upload_file");
    assert_eq!(
        path(4, "path"),
        Value::from("/abs/art.tgz"),
        "an absolute workersrc wins"
    );
    assert_eq!(path(4, "blocksize").as_u64(), Some(262144));
    assert_eq!(path(4, "keepstamp").as_bool(), Some(false));
    assert_eq!(started[4].args.0.get_key("maxsize"), Some(&Value::Nil));
}

#[tokio::test]
async fn no_rc_is_failure_for_shell_and_success_for_transfers() {
    let remote = ScriptedRemote::new(vec![vec![complete()], vec![complete()]]);
    let mut h = harness();
    assert_eq!(
        h.run(&remote, &step("shell", json!({"command": "x"}), json!({})))
            .await,
        StepEnd::Finished(Results::Failure)
    );
    let s = step(
        "string_download",
        json!({"s": "abc", "workerdest": "x"}),
        json!({}),
    );
    assert_eq!(
        h.run(&remote, &s).await,
        StepEnd::Finished(Results::Success)
    );
}
