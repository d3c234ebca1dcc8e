//! The worker endpoint against a raw WebSocket client: handshake statuses, the attach
//! sequence on the wire, bad frames, unknown ops, duplicates, dead peers, commands.

mod endpoint_common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use endpoint_common::*;
use kiln_endpoint::EndpointOptions;
use kiln_proto::args::Args;
use kiln_proto::update::UpdateItem;
use kiln_proto::{Message, Op, Response, Value};
use kiln_remote::{CommandEvent, CommandSpec, RemoteError, Transfer};
use kiln_remote::{PasswordCheck, WorkerEntry, WorkerEvent};
use tokio_tungstenite::tungstenite::Message as Ws;

fn op_of(m: &Message) -> &Op {
    match m {
        Message::Request { op, .. } => op,
        other => panic!("expected a request, got {other:?}"),
    }
}

#[tokio::test]
async fn handshake_statuses() {
    let srv = Server::start(&[("w1", "pa:ss", &[])], quick_opts()).await;
    let p = srv.port;
    assert_eq!(
        http_status(connect_raw(p, "/", None).await),
        401,
        "no Authorization"
    );
    assert_eq!(
        http_status(connect_raw(p, "/", Some("Bearer abc".into())).await),
        400,
        "not Basic"
    );
    assert_eq!(
        http_status(connect_raw(p, "/", Some("Basic %%%".into())).await),
        400,
        "not base64"
    );
    assert_eq!(
        http_status(connect_raw(p, "/", Some(basic_raw("nocolon"))).await),
        400,
        "no colon"
    );
    assert_eq!(
        http_status(connect_raw(p, "/", Some(basic("nobody", "pa:ss"))).await),
        401,
        "unknown name"
    );
    assert_eq!(
        http_status(connect_raw(p, "/", Some(basic("w1", "pa:sx"))).await),
        401,
        "wrong password"
    );
    // The password may contain ':' (split on the first colon); any path is accepted.
    assert_eq!(
        http_status(connect_raw(p, "/some/other/path", Some(basic("w1", "pa:ss"))).await),
        101
    );
}

fn basic_raw(s: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(s)
    )
}

#[tokio::test]
async fn argon2_passwords_are_checked() {
    use argon2::PasswordHasher as _;
    let mut srv = Server::start(&[], quick_opts()).await;
    let phc = argon2::Argon2::default()
        .hash_password_with_salt(b"hashed pw", b"0123456789abcdef")
        .unwrap()
        .to_string();
    let entry = WorkerEntry {
        password: PasswordCheck::Argon2(phc),
        builder_dirs: vec![],
    };
    srv.roster.0.write().unwrap().insert("wa".into(), entry);
    assert_eq!(
        http_status(connect_raw(srv.port, "/", Some(basic("wa", "wrong"))).await),
        401
    );
    let _w = login(srv.port, "wa", "hashed pw", Script::new("/wk")).await;
    assert_eq!(srv.attached().await.worker_name(), "wa");
}

#[tokio::test]
async fn failed_logins_are_rate_limited_per_address() {
    let opts = EndpointOptions {
        failed_logins_per_minute: 3,
        ..Default::default()
    };
    let srv = Server::start(&[("w1", "good", &[]), ("w2", "good2", &[])], opts).await;
    for _ in 0..3 {
        assert_eq!(
            http_status(connect_raw(srv.port, "/", Some(basic("w1", "bad"))).await),
            401
        );
    }
    // Beyond the limit even the right password is not checked …
    assert_eq!(
        http_status(connect_raw(srv.port, "/", Some(basic("w1", "good"))).await),
        429
    );
    // … but another worker at the same address (a NAT, a shared host) still logs in.
    assert_eq!(
        http_status(connect_raw(srv.port, "/", Some(basic("w2", "good2"))).await),
        101
    );
}

#[tokio::test]
async fn attach_sequence_in_order() {
    let mut srv = Server::start(&[("w1", "pw", &["zeta", "alpha"])], quick_opts()).await;
    let mut script = Script::new("/wk");
    script.listing = vec!["buildbot.tac".into(), "alpha".into()];
    let mut w = login(srv.port, "w1", "pw", script).await;

    assert_eq!(
        op_of(&w.next_seen().await),
        &Op::Print {
            message: "attached".into()
        }
    );
    assert_eq!(op_of(&w.next_seen().await), &Op::GetWorkerInfo);
    assert!(
        matches!(op_of(&w.next_seen().await), Op::SetWorkerSettings(s) if *s == Default::default())
    );
    match op_of(&w.next_seen().await) {
        Op::StartCommand {
            builder_name: None,
            command_name,
            args,
            ..
        } => {
            assert_eq!(command_name, "listdir");
            assert_eq!(args.get(&["path"]), Some(&Value::from("/wk")));
        }
        other => panic!("expected listdir, got {other:?}"),
    }
    // delete_leftover_dirs is 0: no stat/rmdir for buildbot.tac; mkdir of the missing, sorted.
    match op_of(&w.next_seen().await) {
        Op::StartCommand {
            builder_name: None,
            command_name,
            args,
            ..
        } => {
            assert_eq!(command_name, "mkdir");
            let want = Value::Array(vec![Value::from("/wk/info"), Value::from("/wk/zeta")]);
            assert_eq!(args.get(&["paths"]), Some(&want));
        }
        other => panic!("expected mkdir, got {other:?}"),
    }
    for _ in 0..2 {
        assert_eq!(
            op_of(&w.next_seen().await),
            &Op::Print {
                message: "attached".into()
            }
        );
    }
    let conn = srv.attached().await;
    assert_eq!(conn.worker_name(), "w1");
    assert_eq!(conn.info()["basedir"], "/wk");
    assert_eq!(conn.info()["admin"], "me\n");
    assert_eq!(conn.basedir(), "/wk");
    assert!(!conn.is_windows());
    assert!(conn.has_command("shell") && !conn.has_command("glob"));
    assert_eq!(
        srv.endpoint.workers().get("w1").map(|c| c.conn_id()),
        Some(conn.conn_id())
    );
    assert_eq!(srv.endpoint.workers().connected().len(), 1);
}

#[tokio::test]
async fn leftover_directories_are_removed_when_the_worker_allows_it() {
    let mut srv = Server::start(&[("w1", "pw", &["b1"])], quick_opts()).await;
    let mut script = Script::new("/wk");
    script.listing = vec![
        "b1".into(),
        "info".into(),
        "old".into(),
        "buildbot.tac".into(),
    ];
    script.delete_leftover_dirs = 1;
    script.dirs = vec!["/wk/old".into()];
    let mut w = login(srv.port, "w1", "pw", script).await;
    let _conn = srv.attached().await;
    let mut commands = vec![];
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), w.seen.recv()).await {
        if let Message::Request {
            op: Op::StartCommand {
                command_name, args, ..
            },
            ..
        } = &m
        {
            commands.push((command_name.clone(), args.clone()));
        }
    }
    let names: Vec<&str> = commands.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["listdir", "stat", "stat", "rmdir"],
        "nothing missing ⇒ no mkdir"
    );
    let stats: Vec<_> = commands[1..3]
        .iter()
        .map(|(_, a)| a.get(&["path"]).cloned().unwrap())
        .collect();
    assert!(
        stats.contains(&Value::from("/wk/old")) && stats.contains(&Value::from("/wk/buildbot.tac"))
    );
    assert_eq!(
        commands[3].1.get(&["paths"]),
        Some(&Value::Array(vec![Value::from("/wk/old")]))
    );
}

#[tokio::test]
async fn bad_frames_close_only_that_connection() {
    let opts = EndpointOptions {
        max_message_bytes: 64 * 1024,
        ..quick_opts()
    };
    let mut srv = Server::start(
        &[("a", "pw", &[]), ("b", "pw", &[]), ("c", "pw", &[])],
        opts,
    )
    .await;
    let mut a = login(srv.port, "a", "pw", Script::new("/a")).await;
    let a_conn = srv.attached().await;
    let mut b = login(srv.port, "b", "pw", Script::new("/b")).await;
    let b_conn = srv.attached().await;
    let mut c = login(srv.port, "c", "pw", Script::new("/c")).await;
    let c_conn = srv.attached().await;

    // a: not msgpack at all (0xc1 is the one never-used marker).
    a.inject.send(Ws::Binary(vec![0xc1, 0x00].into())).unwrap();
    a.wait_closed().await;
    a_conn.closed().await;
    // c: a well-formed message over the cap (under it, it would get an exception response).
    let big = kiln_proto::update::Lines::from_text(format!("{}\n", "x".repeat(100 * 1024)), 1.0);
    let upd = Message::Request {
        seq_number: 1,
        op: Op::Update {
            command_id: "x".into(),
            items: vec![UpdateItem::Stdout(big)],
        },
    };
    c.inject.send(encode(&upd)).unwrap();
    c.wait_closed().await;
    c_conn.closed().await;
    let mut gone = vec![];
    for _ in 0..2 {
        match srv.next_event().await {
            WorkerEvent::Detached { name, conn_id } => gone.push((name, conn_id)),
            other => panic!("expected Detached, got {other:?}"),
        }
    }
    gone.sort();
    assert_eq!(
        gone,
        [
            ("a".to_string(), a_conn.conn_id()),
            ("c".to_string(), c_conn.conn_id())
        ]
    );
    assert_eq!(a_conn.ping().await, Err(RemoteError::NotConnected));

    // b is unaffected.
    while b.seen.try_recv().is_ok() {}
    b_conn.ping().await.expect("b still answers");
    assert_eq!(
        op_of(&b.next_seen().await),
        &Op::Print {
            message: "ping".into()
        }
    );
    assert!(srv.endpoint.workers().get("a").is_none() && srv.endpoint.workers().get("b").is_some());
}

/// Reads frames until a response to `seq` arrives.
async fn response_to(w: &mut FakeWorker, seq: i64) -> Response {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), w.seen.recv())
            .await
            .expect("no response")
            .unwrap()
        {
            Message::Response(r) if r.seq_number == seq => return r,
            _ => continue,
        }
    }
}

#[tokio::test]
async fn unknown_ops_and_ids_get_exception_responses() {
    let mut srv = Server::start(&[("w1", "pw", &[])], quick_opts()).await;
    let mut w = login(srv.port, "w1", "pw", Script::new("/wk")).await;
    let conn = srv.attached().await;
    // A raw map: {"op": "frobnicate", "seq_number": 5}
    let mut raw = vec![0x82];
    rmp::encode::write_str(&mut raw, "op").unwrap();
    rmp::encode::write_str(&mut raw, "frobnicate").unwrap();
    rmp::encode::write_str(&mut raw, "seq_number").unwrap();
    rmp::encode::write_sint(&mut raw, 5).unwrap();
    w.inject.send(Ws::Binary(raw.into())).unwrap();
    let r = response_to(&mut w, 5).await;
    assert!(r.is_exception);
    assert_eq!(r.result, Value::from("Command frobnicate does not exist."));

    // A text frame is ignored; an update for an unknown command is refused by id.
    w.inject.send(Ws::Text("hello".into())).unwrap();
    let upd = Message::Request {
        seq_number: 6,
        op: Op::Update {
            command_id: "nope".into(),
            items: vec![UpdateItem::Rc(0)],
        },
    };
    w.inject.send(encode(&upd)).unwrap();
    let r = response_to(&mut w, 6).await;
    assert_eq!(r.error_text().as_deref(), Some("unknown \"command_id\""));
    // A worker may not send master ops either.
    let p = Message::Request {
        seq_number: 7,
        op: Op::Print {
            message: "x".into(),
        },
    };
    w.inject.send(encode(&p)).unwrap();
    assert_eq!(
        response_to(&mut w, 7).await.error_text().as_deref(),
        Some("Command print does not exist.")
    );
    conn.ping().await.expect("connection still usable");
}

#[tokio::test]
async fn duplicate_login_refused_while_the_old_one_answers_then_replaces_it() {
    let opts = EndpointOptions {
        duplicate_check_timeout: Duration::from_millis(500),
        ..quick_opts()
    };
    let mut srv = Server::start(&[("w1", "pw", &[])], opts).await;
    let mut old = login(srv.port, "w1", "pw", Script::new("/wk")).await;
    let old_conn = srv.attached().await;
    while old.seen.try_recv().is_ok() {}

    let dup = connect_raw(srv.port, "/", Some(basic("w1", "pw"))).await;
    assert_eq!(
        http_status(dup),
        409,
        "the new connection is refused before the upgrade"
    );
    assert_eq!(
        op_of(&old.next_seen().await),
        &Op::Print {
            message: "master got a duplicate connection".into()
        }
    );
    assert_eq!(
        srv.endpoint.workers().get("w1").unwrap().conn_id(),
        old_conn.conn_id()
    );

    // Now the old one goes silent: the next login replaces it.
    old.silent.store(true, Ordering::SeqCst);
    let _new = login(srv.port, "w1", "pw", Script::new("/wk")).await;
    match srv.next_event().await {
        WorkerEvent::Detached { name, conn_id } => {
            assert_eq!((name.as_str(), conn_id), ("w1", old_conn.conn_id()))
        }
        other => panic!("expected the old one detached first, got {other:?}"),
    }
    let new_conn = srv.attached().await;
    assert_ne!(new_conn.conn_id(), old_conn.conn_id());
    assert_eq!(
        srv.endpoint.workers().get("w1").unwrap().conn_id(),
        new_conn.conn_id()
    );
    old_conn.closed().await;
}

#[tokio::test]
async fn silent_peer_is_pinged_then_dropped() {
    let opts = EndpointOptions {
        idle_ping_after: Duration::from_millis(300),
        dead_after: Duration::from_millis(300),
        ..quick_opts()
    };
    let mut srv = Server::start(&[("live", "pw", &[]), ("dead", "pw", &[])], opts).await;
    let live = login(srv.port, "live", "pw", Script::new("/l")).await;
    let _live_conn = srv.attached().await;
    let dead = login(srv.port, "dead", "pw", Script::new("/d")).await;
    let dead_conn = srv.attached().await;
    // A peer that stops reading never answers the WebSocket Ping.
    dead.reading.store(false, Ordering::SeqCst);
    match srv.next_event().await {
        WorkerEvent::Detached { name, .. } => assert_eq!(name, "dead"),
        other => panic!("expected dead detached, got {other:?}"),
    }
    dead_conn.closed().await;
    // The reading peer answered its pings (tungstenite's automatic Pong) and is still there.
    assert!(srv.endpoint.workers().get("live").is_some());
    drop(live);
}

#[tokio::test]
async fn commands_route_updates_and_report_loss() {
    let mut srv = Server::start(&[("w1", "pw", &[])], quick_opts()).await;
    let mut w = login(srv.port, "w1", "pw", Script::new("/wk")).await;
    let conn = srv.attached().await;
    while w.seen.try_recv().is_ok() {}

    let spec = CommandSpec {
        builder: Some("b1".into()),
        name: "shell".into(),
        args: Args::from_pairs([("command", "x")]),
    };
    let mut cmd = conn.start(spec, Transfer::None).await.unwrap();
    match op_of(&w.next_seen().await) {
        Op::StartCommand {
            builder_name,
            command_id,
            ..
        } => {
            assert_eq!(builder_name.as_deref(), Some("b1"));
            assert_eq!(command_id, &cmd.command_id);
        }
        other => panic!("{other:?}"),
    }
    match cmd.events.recv().await.unwrap() {
        CommandEvent::Update(items) => assert!(items.contains(&UpdateItem::Rc(3))),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        cmd.events.recv().await.unwrap(),
        CommandEvent::Complete { failure: None }
    );

    let refused = conn
        .start(
            CommandSpec {
                builder: None,
                name: "refuse".into(),
                args: Args::default(),
            },
            Transfer::None,
        )
        .await;
    assert!(
        matches!(refused, Err(RemoteError::Refused(ref t)) if t.contains("unrecognized")),
        "{:?}",
        refused.err()
    );

    let spec = CommandSpec {
        builder: None,
        name: "hang".into(),
        args: Args::default(),
    };
    let mut hung = conn.start(spec, Transfer::None).await.unwrap();
    hung.interrupt.interrupt("test");
    loop {
        if let Op::InterruptCommand {
            command_id, why, ..
        } = op_of(&w.next_seen().await)
        {
            assert_eq!(
                (command_id.as_str(), why.as_str()),
                (hung.command_id.as_str(), "test")
            );
            break;
        }
    }
    srv.endpoint.workers().disconnect("w1");
    assert_eq!(hung.events.recv().await.unwrap(), CommandEvent::Lost);
    conn.closed().await;
    let again = conn
        .start(
            CommandSpec {
                builder: None,
                name: "shell".into(),
                args: Args::default(),
            },
            Transfer::None,
        )
        .await;
    assert_eq!(again.err(), Some(RemoteError::NotConnected));
    assert_eq!(conn.ping().await, Err(RemoteError::NotConnected));
    assert!(matches!(
        srv.next_event().await,
        WorkerEvent::Detached { .. }
    ));
}

#[tokio::test]
async fn a_stalled_consumer_slows_the_worker_but_disconnect_still_works() {
    let mut srv = Server::start(&[("w1", "pw", &[])], quick_opts()).await;
    let _w = login(srv.port, "w1", "pw", Script::new("/wk")).await;
    let conn = srv.attached().await;
    let spec = CommandSpec {
        builder: None,
        name: "flood".into(),
        args: Args::default(),
    };
    let mut cmd = conn.start(spec, Transfer::None).await.unwrap();
    // Nobody reads `cmd.events`: the connection waits for room instead of buffering ...
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        tokio::time::timeout(Duration::ZERO, conn.closed())
            .await
            .is_err(),
        "the connection is still open"
    );
    // ... and can still be dropped while it waits.
    srv.endpoint.workers().disconnect("w1");
    conn.closed().await;
    let mut updates = 0;
    let last = loop {
        match cmd.events.recv().await.expect("a final event") {
            CommandEvent::Update(_) => updates += 1,
            other => break other,
        }
    };
    assert_eq!(last, CommandEvent::Lost);
    assert!(
        updates < 100,
        "the channel is bounded, got {updates} updates"
    );
}

#[tokio::test]
async fn shutdown_drops_every_worker() {
    let mut srv = Server::start(&[("w1", "pw", &[]), ("w2", "pw", &[])], quick_opts()).await;
    let mut w1 = login(srv.port, "w1", "pw", Script::new("/1")).await;
    let c1 = srv.attached().await;
    // w2 is mid-handshake-sequence: it never answers, so it is not attached yet.
    let ws = connect_raw(srv.port, "/", Some(basic("w2", "pw")))
        .await
        .unwrap();
    let mut w2 = FakeWorker::spawn(ws, Script::new("/2"));
    w2.silent.store(true, Ordering::SeqCst);
    assert_eq!(
        op_of(&w2.next_seen().await),
        &Op::Print {
            message: "attached".into()
        }
    );
    srv.stop();
    c1.closed().await;
    w1.wait_closed().await;
    w2.wait_closed().await;
    match srv.next_event().await {
        WorkerEvent::Detached { name, .. } => assert_eq!(name, "w1"),
        other => panic!("{other:?}"),
    }
    assert!(srv.endpoint.workers().connected().is_empty());
}
