//! One connection per worker name: the first connection to reserve a name keeps it while it
//! attaches and while it is attached and alive; later ones get 409 with the reason before
//! the upgrade; a dead one is replaced once its pings go unanswered.

mod endpoint_common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use endpoint_common::*;
use futures_util::FutureExt as _;
use kiln_endpoint::EndpointOptions;
use kiln_remote::WorkerEvent;

const RACERS: usize = 20;
const ROUNDS: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_connection_wins_every_race_while_it_attaches() {
    let mut srv = Server::start(&[("w1", "pw", &[])], quick_opts()).await;
    let port = srv.port;
    for round in 0..ROUNDS {
        // The handshake reserves the name before answering 101, and the first connection's
        // attach stays open while this client does not answer the master's first request:
        // the race below always runs "while attaching".
        let first = connect_raw(port, "/", Some(basic("w1", "pw")))
            .await
            .expect("the first login is let in");
        let first_addr = local_addr(&first);

        let racers: Vec<_> = (0..RACERS)
            .map(|_| tokio::spawn(connect_raw(port, "/", Some(basic("w1", "pw")))))
            .collect();
        for racer in racers {
            let (code, body) = refusal(racer.await.unwrap());
            assert_eq!(
                code, 409,
                "round {round}: a duplicate was let in ({body:?})"
            );
            assert!(
                body.starts_with(&format!(
                    "worker \"w1\" is already connected from {first_addr} since "
                )),
                "round {round}: the refusal names the worker and the first connection: {body:?}"
            );
            assert_eq!(body.lines().count(), 1, "one line: {body:?}");
        }

        let worker = FakeWorker::spawn(first, Script::new("/wk"));
        let conn = srv.attached().await;
        assert_eq!(
            conn.peer(),
            first_addr,
            "round {round}: the first one attached"
        );
        assert_eq!(
            srv.endpoint.workers().get("w1").unwrap().conn_id(),
            conn.conn_id()
        );
        // Closing it frees the name for the next round; no duplicate ever attached.
        drop(worker);
        match srv.next_event().await {
            WorkerEvent::Detached { conn_id, .. } => assert_eq!(conn_id, conn.conn_id()),
            other => panic!("round {round}: expected the first one detached, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_connection_that_fails_to_attach_frees_the_name() {
    let mut srv = Server::start(&[("w1", "pw", &[])], quick_opts()).await;
    let first = connect_raw(srv.port, "/", Some(basic("w1", "pw")))
        .await
        .unwrap();
    let (code, _) = refusal(connect_raw(srv.port, "/", Some(basic("w1", "pw"))).await);
    assert_eq!(code, 409);
    // The first one goes away in the middle of its attach.
    drop(first);
    let next = loop {
        match connect_raw(srv.port, "/", Some(basic("w1", "pw"))).await {
            Ok(ws) => break ws,
            // Its connection task may not have seen the close yet.
            Err(e) => assert_eq!(refusal(Err(e)).0, 409),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let next_addr = local_addr(&next);
    let _w = FakeWorker::spawn(next, Script::new("/wk"));
    assert_eq!(srv.attached().await.peer(), next_addr);
}

#[tokio::test]
async fn a_dead_attached_connection_is_replaced_once_its_pings_go_unanswered() {
    let opts = EndpointOptions {
        idle_ping_after: Duration::from_millis(300),
        dead_after: Duration::from_millis(300),
        // The duplicate check cannot be what lets the next one in: only the pings can.
        duplicate_check_timeout: Duration::from_secs(3600),
        ..quick_opts()
    };
    let mut srv = Server::start(&[("w1", "pw", &[])], opts).await;
    let old = login(srv.port, "w1", "pw", Script::new("/wk")).await;
    let old_conn = srv.attached().await;
    // A peer that stops reading answers neither the pings nor the duplicate check.
    old.reading.store(false, Ordering::SeqCst);

    let new = connect_raw(srv.port, "/", Some(basic("w1", "pw")))
        .await
        .expect("let in once the old connection was found dead");
    assert!(
        old_conn.closed().now_or_never().is_some(),
        "the new connection was let in while the old one was still open"
    );
    assert!(
        srv.endpoint.workers().get("w1").is_none(),
        "the dead connection left the registry before the new one was let in"
    );
    match srv.next_event().await {
        WorkerEvent::Detached { conn_id, .. } => assert_eq!(conn_id, old_conn.conn_id()),
        other => panic!("expected the dead one detached, got {other:?}"),
    }
    let new_addr = local_addr(&new);
    let _w = FakeWorker::spawn(new, Script::new("/wk"));
    let new_conn = srv.attached().await;
    assert_eq!(new_conn.peer(), new_addr);
    assert_ne!(new_conn.conn_id(), old_conn.conn_id());
}
