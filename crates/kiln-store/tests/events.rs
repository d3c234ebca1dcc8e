//! The event bus: in-process publish/subscribe, lagging subscribers, and on PostgreSQL two
//! buses on two connections to one database exchanging events with NOTIFY.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use kiln_engine::queue::{Bus, MemStore, block_on_ready, submit};
use kiln_engine::schedulers::BuildsetRequest;
use kiln_model::SourceStamp;
use kiln_model::{BuildRequestId, BuilderId, ChangeId, Event, Properties, Results, WorkerId};
use kiln_store::{EventBus, EventBusOptions, RecvError, Store, Subscription};

fn change(i: i64) -> Event {
    Event::ChangeNew {
        change: ChangeId(i),
    }
}

/// The next thing `sub` gets; fails the test if nothing comes within 10 s.
async fn next(sub: &mut Subscription) -> Result<Event, RecvError> {
    tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .expect("nothing arrived within 10 s")
}

async fn expect_events(sub: &mut Subscription, events: &[Event], who: &str) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(next(sub).await, Ok(e.clone()), "{who}: event {i}");
    }
}

#[tokio::test]
async fn in_process_subscribers_get_every_event_in_order() {
    let bus = EventBus::in_process(64);
    assert!(!bus.is_shared());
    let mut a = bus.subscribe();
    let mut b = bus.clone().subscribe();
    // Nobody listens yet on a fresh bus: publishing is still fine.
    EventBus::in_process(1).publish(change(0));
    let events: Vec<Event> = (1..=50).map(change).collect();
    for e in &events {
        bus.publish(e.clone());
    }
    let mut late = bus.subscribe();
    bus.publish(Event::BuildRequestCancelled {
        request: BuildRequestId(9),
    });
    expect_events(&mut a, &events, "a").await;
    expect_events(&mut b, &events, "b").await;
    let cancelled = Ok(Event::BuildRequestCancelled {
        request: BuildRequestId(9),
    });
    assert_eq!(next(&mut a).await, cancelled);
    assert_eq!(next(&mut b).await, cancelled);
    assert_eq!(next(&mut late).await, cancelled, "only what came after");
    assert_eq!(a.try_recv(), Ok(None));

    // The engine's queue publishes on it through the `Bus` trait.
    let bs = BuildsetRequest {
        scheduler: "force".into(),
        builders: vec!["b".into()],
        sources: vec![SourceStamp {
            codebase: String::new(),
            repository: "https://example.org/r.git".into(),
            branch: Some("main".into()),
            revision: None,
            project: "p".into(),
        }],
        changes: vec![],
        properties: Properties::default(),
        reason: "because".into(),
        waited_for: false,
        parent_build: None,
    };
    let builders = BTreeMap::from([("b".to_string(), (BuilderId(4), 0))]);
    let (bsid, ids) =
        block_on_ready(submit(&MemStore::default(), &bus, &bs, &builders, 10)).unwrap();
    assert_eq!(
        next(&mut a).await,
        Ok(Event::BuildsetNew {
            buildset: bsid,
            requests: ids.clone(),
        })
    );
    assert_eq!(
        next(&mut a).await,
        Ok(Event::BuildRequestNew {
            request: ids[0],
            buildset: bsid,
            builder: BuilderId(4),
        })
    );
    Bus::publish(&bus, change(99));
    assert_eq!(next(&mut a).await, Ok(change(99)));

    // The last handle gone: subscribers drain what is left, then hear that it closed.
    drop(bus);
    assert_eq!(next(&mut b).await.map(|_| ()), Ok(()));
    assert_eq!(next(&mut b).await.map(|_| ()), Ok(()));
    assert_eq!(next(&mut b).await, Ok(change(99)));
    assert_eq!(next(&mut b).await, Err(RecvError::Closed));
}

#[tokio::test]
async fn a_slow_subscriber_is_told_it_lagged_and_goes_on() {
    let bus = EventBus::in_process(4);
    let mut fast = bus.subscribe();
    let mut slow = bus.subscribe();
    let events: Vec<Event> = (0..10)
        .map(|i| Event::BuildRequestCompleted {
            request: BuildRequestId(i),
            results: Results::Success,
        })
        .collect();
    for e in &events {
        // The publisher never waits for `slow`, which reads nothing meanwhile.
        bus.publish(e.clone());
        assert_eq!(next(&mut fast).await, Ok(e.clone()));
    }
    assert_eq!(next(&mut slow).await, Err(RecvError::Lagged(6)));
    expect_events(&mut slow, &events[6..], "slow").await;
    // And it keeps up from there.
    bus.publish(change(1));
    assert_eq!(next(&mut slow).await, Ok(change(1)));
    assert_eq!(next(&mut fast).await, Ok(change(1)));
    assert_eq!(slow.try_recv(), Ok(None));
}

#[tokio::test]
async fn on_sqlite_the_bus_is_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&format!("sqlite:{}", dir.path().join("k.db").display()))
        .await
        .unwrap();
    let bus = EventBus::for_store(&store).await.unwrap();
    assert!(!bus.is_shared());
    let mut sub = bus.subscribe();
    bus.publish(change(1));
    assert_eq!(next(&mut sub).await, Ok(change(1)));
    bus.close().await;
    store.close().await;
}

/// Two stores (two pools) on one database, one bus each.
async fn two_buses(url: &str, opts_a: EventBusOptions) -> (Store, Store, EventBus, EventBus) {
    let store_a = Store::connect(url).await.unwrap();
    let store_b = Store::connect(url).await.unwrap();
    let a = EventBus::for_store_with(&store_a, opts_a).await.unwrap();
    let b = EventBus::for_store(&store_b).await.unwrap();
    assert!(a.is_shared() && b.is_shared());
    (store_a, store_b, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_events_cross_processes_in_order_exactly_once() {
    common::on_postgres_url(|url| async move {
        let (store_a, store_b, a, b) = two_buses(&url, EventBusOptions::default()).await;
        let mut sub_a = a.subscribe();
        let mut sub_b = b.subscribe();

        // Enough events for several NOTIFY payloads.
        let from_a: Vec<Event> = (0..400)
            .map(|i| Event::BuildStarted {
                build: kiln_model::BuildId(i),
                builder: BuilderId(1),
                number: i,
                request: BuildRequestId(i),
                worker: WorkerId(2),
            })
            .collect();
        for e in &from_a {
            a.publish(e.clone());
        }
        expect_events(&mut sub_a, &from_a, "a, its own").await;
        expect_events(&mut sub_b, &from_a, "b, from a").await;

        // B's events reach A. A's NOTIFYs were committed before B received them and B's
        // after, and a listener gets notifications in commit order: were A not skipping
        // its own payloads, their echoes would come first here.
        let from_b: Vec<Event> = (0..50)
            .map(|i| Event::WorkerConnected {
                worker: WorkerId(i),
                name: format!("worker-{i}"),
            })
            .collect();
        for e in &from_b {
            b.publish(e.clone());
        }
        expect_events(&mut sub_b, &from_b, "b, its own").await;
        expect_events(&mut sub_a, &from_b, "a, from b").await;

        // The same check the other way: B's echoes would come before A's marker.
        let marker = Event::ConfigReloaded {
            summary: "marker".into(),
        };
        a.publish(marker.clone());
        assert_eq!(next(&mut sub_a).await, Ok(marker.clone()));
        assert_eq!(next(&mut sub_b).await, Ok(marker.clone()));
        // And A once more, after B's marker.
        b.publish(change(7));
        assert_eq!(next(&mut sub_b).await, Ok(change(7)));
        assert_eq!(next(&mut sub_a).await, Ok(change(7)));
        assert_eq!(sub_a.try_recv(), Ok(None));
        assert_eq!(sub_b.try_recv(), Ok(None));
        assert_eq!((a.unsent(), b.unsent()), (0, 0));

        a.close().await;
        b.close().await;
        store_a.close().await;
        store_b.close().await;
    })
    .await;
}

/// Single-threaded: the publishes below run with no await between them, so the notifier
/// cannot take anything from its queue meanwhile and the drops are exact.
#[tokio::test(flavor = "current_thread")]
async fn pg_events_that_cannot_be_sent_are_reported_as_a_gap() {
    common::on_postgres_url(|url| async move {
        let opts = EventBusOptions {
            notify_queue: 8,
            ..Default::default()
        };
        let (store_a, store_b, a, b) = two_buses(&url, opts).await;
        let mut sub_a = a.subscribe();
        let mut sub_b = b.subscribe();

        // A full NOTIFY queue: the publisher goes on, the other process hears of a gap.
        let burst: Vec<Event> = (0..20).map(change).collect();
        for e in &burst {
            a.publish(e.clone());
        }
        assert_eq!(a.unsent(), 12);
        expect_events(&mut sub_a, &burst, "a, locally everything").await;
        expect_events(&mut sub_b, &burst[..8], "b, what was queued").await;
        assert_eq!(next(&mut sub_b).await, Err(RecvError::RemoteGap));

        // An event too big for a NOTIFY payload: not sent, reported, nothing else breaks.
        let big = Event::ConfigReloaded {
            summary: "x".repeat(10_000),
        };
        a.publish(big.clone());
        a.publish(change(100));
        assert!(next(&mut sub_a).await == Ok(big), "a gets it locally");
        assert_eq!(next(&mut sub_a).await, Ok(change(100)));
        assert_eq!(next(&mut sub_b).await, Ok(change(100)));
        assert_eq!(next(&mut sub_b).await, Err(RecvError::RemoteGap));
        assert_eq!(a.unsent(), 13, "counted when the notifier met it");

        // Then events flow again, with no gap.
        a.publish(change(101));
        assert_eq!(next(&mut sub_b).await, Ok(change(101)));
        b.publish(change(102));
        assert_eq!(next(&mut sub_a).await, Ok(change(101)));
        assert_eq!(next(&mut sub_a).await, Ok(change(102)));
        assert_eq!(next(&mut sub_b).await, Ok(change(102)));

        a.close().await;
        b.close().await;
        store_a.close().await;
        store_b.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_close_and_drop_stop_the_background_tasks() {
    common::on_postgres_url(|url| async move {
        let (store_a, store_b, a, b) = two_buses(&url, EventBusOptions::default()).await;
        let mut sub_a = a.subscribe();
        let mut sub_b = b.subscribe();

        // Dropping the last handle: what was queued is still sent, then the tasks end (the
        // listener held the last sender of the local channel: its subscribers hear "closed").
        let c = EventBus::for_store(&store_a).await.unwrap();
        let mut sub_c = c.subscribe();
        c.publish(change(1));
        drop(c);
        assert_eq!(next(&mut sub_b).await, Ok(change(1)));
        // A shares C's store, not its origin: it hears C too.
        assert_eq!(next(&mut sub_a).await, Ok(change(1)));
        assert_eq!(next(&mut sub_c).await, Ok(change(1)));
        assert_eq!(next(&mut sub_c).await, Err(RecvError::Closed));

        // `close` waits for both tasks; the bus stays usable in-process.
        a.publish(change(2));
        tokio::time::timeout(Duration::from_secs(10), a.close())
            .await
            .expect("close returns");
        assert_eq!(next(&mut sub_b).await, Ok(change(2)), "flushed by close");
        // Closing twice is fine.
        a.close().await;
        b.publish(change(3));
        a.publish(change(4));
        assert_eq!(next(&mut sub_b).await, Ok(change(3)));
        assert_eq!(next(&mut sub_a).await, Ok(change(2)));
        assert_eq!(next(&mut sub_a).await, Ok(change(4)), "A no longer listens");
        drop(a);
        assert_eq!(next(&mut sub_a).await, Err(RecvError::Closed));

        b.close().await;
        store_a.close().await;
        store_b.close().await;
    })
    .await;
}
