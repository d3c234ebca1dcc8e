//! The engine's queue trait and the queue's verbs on the real database: collapse keys stored
//! with the requests, claims that only one master wins (a lost claim changes nothing), a
//! claim of n that takes at most n, collapsed requests completed SKIPPED, cancel, requeue
//! and release_claims, and a buildset insert that stores all or nothing.

mod common;

use kiln_engine::distributor::Assignment;
use kiln_engine::queue::{NewRequest, Store as _};
use kiln_engine::schedulers::BuildsetRequest;
use kiln_model::SourceStamp;
use kiln_model::{BuilderId, Properties, Results};
use kiln_store::{QueueStore, Store};

both!(sqlite_engine_queue, pg_engine_queue, engine_queue);

fn request(builders: &[&str]) -> BuildsetRequest {
    BuildsetRequest {
        scheduler: "force".into(),
        builders: builders.iter().map(|s| s.to_string()).collect(),
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
    }
}

async fn engine_queue(store: Store) {
    let m1 = store.register_master("m1", 1).await.unwrap();
    let m2 = store.register_master("m2", 1).await.unwrap();
    let b = store.upsert_builder("b", None, &[]).await.unwrap();
    let q1 = QueueStore::new(store.clone(), m1);
    let q2 = QueueStore::new(store.clone(), m2);
    let new = |key: &str| NewRequest {
        builder: b,
        priority: 5,
        collapse_key: Some(key.to_string()),
    };
    let (bs1, r1) = q1
        .add_buildset(&request(&["b"]), &[new("k")], 10)
        .await
        .unwrap();
    let (_bs2, r2) = q1
        .add_buildset(&request(&["b"]), &[new("k")], 11)
        .await
        .unwrap();
    let (_bs3, r3) = q1
        .add_buildset(&request(&["b"]), &[new("other")], 12)
        .await
        .unwrap();
    assert_eq!(store.buildset_scheduler(bs1).await.unwrap(), "force");
    let props = store.get_buildset_properties(bs1).await.unwrap();
    assert_eq!(props.get("scheduler"), Some(&serde_json::json!("force")));

    let pending = q1.pending_requests().await.unwrap();
    assert_eq!(pending.len(), 3);
    assert_eq!(pending[0].collapse_key.as_deref(), Some("k"));
    assert_eq!(pending[2].collapse_key.as_deref(), Some("other"));
    assert_eq!(pending[0].priority, 5);
    assert_eq!(pending[0].builder, BuilderId(b.0));

    let worker = store.upsert_worker("w", &Default::default()).await.unwrap();
    let a = Assignment {
        request: r2[0],
        builder: b,
        worker,
        collapsed: vec![r1[0]],
    };
    assert!(q1.claim(&a, 20).await.unwrap(), "the first claim wins");
    assert!(
        !q2.claim(&a, 20).await.unwrap(),
        "a second master cannot claim it again"
    );
    let collapsed = store.get_build_request(r1[0]).await.unwrap().unwrap();
    assert!(collapsed.complete);
    assert_eq!(collapsed.results, Some(Results::Skipped));
    assert_eq!(q1.pending_requests().await.unwrap().len(), 1);
    assert_eq!(store.claimed_by(m1).await.unwrap(), vec![r2[0]]);

    // A claimed request cannot be cancelled; a pending one can, once.
    assert!(!q2.cancel_unclaimed(r2[0], 21).await.unwrap());
    assert!(q2.cancel_unclaimed(r3[0], 21).await.unwrap());
    assert!(!q2.cancel_unclaimed(r3[0], 22).await.unwrap());
    let cancelled = store.get_build_request(r3[0]).await.unwrap().unwrap();
    assert_eq!(cancelled.results, Some(Results::Cancelled));

    // Unclaim puts it back; complete ends it.
    q1.unclaim(r2[0]).await.unwrap();
    assert_eq!(q1.pending_requests().await.unwrap().len(), 1);
    assert!(
        q2.claim(
            &Assignment {
                collapsed: vec![],
                ..a
            },
            30
        )
        .await
        .unwrap()
    );
    q2.complete(r2[0], Results::Success, 31).await.unwrap();
    assert!(q1.pending_requests().await.unwrap().is_empty());
    let bs = store.get_buildset(bs1).await.unwrap().unwrap();
    assert!(
        bs.complete,
        "the buildset of the collapsed request is complete"
    );
}

both!(sqlite_cached_queue, pg_cached_queue, cached_queue);

/// The master's queue keeps pending requests and request contexts in memory: its own
/// submissions at once, other writers' after a refresh, unclaimed ones after a full re-read,
/// and the same answers as the database.
async fn cached_queue(store: Store) {
    use std::time::Duration;
    let m = store.register_master("m", 1).await.unwrap();
    let b = store.upsert_builder("b", None, &[]).await.unwrap();
    let worker = store.upsert_worker("w", &Default::default()).await.unwrap();
    let cached = QueueStore::cached(store.clone(), m, Duration::from_millis(300));
    let plain = QueueStore::new(store.clone(), m);
    let new = || NewRequest {
        builder: b,
        priority: 3,
        collapse_key: Some("k".into()),
    };

    assert!(cached.pending_requests().await.unwrap().is_empty());
    let mut req = request(&["b"]);
    req.properties.set("color", "red", "Force");
    let (bs, r1) = cached.add_buildset(&req, &[new()], 10).await.unwrap();
    // Own submission: pending at once, and the same as the database says.
    assert_eq!(
        cached.pending_requests().await.unwrap(),
        plain.pending_requests().await.unwrap()
    );
    assert_eq!(cached.pending_requests().await.unwrap().len(), 1);
    // Its context from memory equals the one read back from the database.
    let from_memory = cached.request_context(r1[0]).await.unwrap();
    let from_db = plain.request_context(r1[0]).await.unwrap();
    assert_eq!(from_memory.buildsetid, bs);
    assert_eq!(from_memory.properties, from_db.properties);
    assert_eq!(
        from_memory.properties.get("color"),
        Some(&serde_json::json!("red"))
    );
    assert_eq!(
        from_memory.properties.get("scheduler"),
        Some(&serde_json::json!("force"))
    );
    // The time a stamp was made is the submission's in memory, the row's in the database.
    let strip = |v: &[kiln_model::StoredSourceStamp]| {
        v.iter()
            .map(|s| (s.ssid, s.stamp.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        strip(&from_memory.sourcestamps),
        strip(&from_db.sourcestamps)
    );

    // Several source stamps and builders: ids in order, same as the database says.
    let b2 = store.upsert_builder("b2", None, &[]).await.unwrap();
    let mut multi = request(&["b", "b2"]);
    multi.sources.push(SourceStamp {
        codebase: "docs".into(),
        repository: "https://example.org/docs.git".into(),
        branch: None,
        revision: Some("abc".into()),
        project: "p".into(),
    });
    let (mbs, mr) = cached
        .add_buildset(
            &multi,
            &[
                NewRequest {
                    builder: b,
                    priority: 1,
                    collapse_key: None,
                },
                NewRequest {
                    builder: b2,
                    priority: 9,
                    collapse_key: None,
                },
            ],
            10,
        )
        .await
        .unwrap();
    assert_eq!(mr.len(), 2);
    for r in &mr {
        let mem = cached.request_context(*r).await.unwrap();
        let db = plain.request_context(*r).await.unwrap();
        assert_eq!(strip(&mem.sourcestamps), strip(&db.sourcestamps));
        assert_eq!(mem.properties, db.properties);
        assert_eq!(mem.buildsetid, mbs);
        assert_eq!(mem.sourcestamps.len(), 2);
    }
    let reqs: Vec<_> =
        futures_util::future::join_all(mr.iter().map(|r| store.get_build_request(*r))).await;
    let reqs: Vec<_> = reqs.into_iter().map(|r| r.unwrap().unwrap()).collect();
    assert_eq!((reqs[0].builderid, reqs[0].priority), (b, 1));
    assert_eq!((reqs[1].builderid, reqs[1].priority), (b2, 9));
    assert_eq!(store.buildset_scheduler(mbs).await.unwrap(), "force");
    for r in &mr {
        cached.cancel_unclaimed(*r, 10).await.unwrap();
    }

    // Another writer's request shows up once the refresh interval has passed.
    let (_, r2) = plain
        .add_buildset(&request(&["b"]), &[new()], 11)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(350)).await;
    let ids: Vec<_> = cached
        .pending_requests()
        .await
        .unwrap()
        .iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(ids, vec![r1[0], r2[0]]);

    // A claim (won or lost) takes a request out of the pending list.
    let a = Assignment {
        request: r1[0],
        builder: b,
        worker,
        collapsed: vec![],
    };
    assert!(plain.claim(&a, 20).await.unwrap());
    assert!(
        !cached.claim(&a, 20).await.unwrap(),
        "already claimed by the other handle"
    );
    let ids: Vec<_> = cached
        .pending_requests()
        .await
        .unwrap()
        .iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(ids, vec![r2[0]]);
    // Unclaimed again: back after the full re-read an unclaim asks for.
    cached.unclaim(r1[0]).await.unwrap();
    let ids: Vec<_> = cached
        .pending_requests()
        .await
        .unwrap()
        .iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(ids, vec![r1[0], r2[0]]);
    // Completed and cancelled requests are gone.
    assert!(cached.claim(&a, 30).await.unwrap());
    cached.complete(r1[0], Results::Success, 31).await.unwrap();
    assert!(cached.cancel_unclaimed(r2[0], 32).await.unwrap());
    assert!(cached.pending_requests().await.unwrap().is_empty());
    assert!(plain.pending_requests().await.unwrap().is_empty());
    // A completed request's context is read from the database (still there).
    assert_eq!(cached.request_context(r1[0]).await.unwrap().buildsetid, bs);
}

both!(sqlite_claim_lost_race, pg_claim_lost_race, claim_lost_race);

/// Every request row, oldest first, to show that a lost claim changed nothing.
async fn all_requests(store: &Store) -> Vec<kiln_model::BuildRequest> {
    let mut rows = store
        .list_build_requests(&kiln_store::BuildRequestFilter {
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap();
    rows.reverse();
    rows
}

/// The one claim: a claim that loses (to another master, to a completion, to a missing row)
/// returns false or nothing, and changes no row, collapsed requests included.
async fn claim_lost_race(store: Store) {
    let m1 = store.register_master("m1", 1).await.unwrap();
    let m2 = store.register_master("m2", 1).await.unwrap();
    let b = store.upsert_builder("b", None, &[]).await.unwrap();
    let worker = store.upsert_worker("w", &Default::default()).await.unwrap();
    let (q1, q2) = (
        QueueStore::new(store.clone(), m1),
        QueueStore::new(store.clone(), m2),
    );
    let new = || NewRequest {
        builder: b,
        priority: 0,
        collapse_key: Some("k".into()),
    };
    let mut ids = Vec::new();
    for now in 10..13 {
        let (_, r) = q1
            .add_buildset(&request(&["b"]), &[new()], now)
            .await
            .unwrap();
        ids.push(r[0]);
    }
    let (r1, r2, r3) = (ids[0], ids[1], ids[2]);
    let assign = |request, collapsed: Vec<_>| Assignment {
        request,
        builder: b,
        worker,
        collapsed,
    };
    assert!(q1.claim(&assign(r2, vec![]), 20).await.unwrap());

    // Claimed by another master: false, and neither it nor its collapsed request changed.
    let before = all_requests(&store).await;
    assert!(!q2.claim(&assign(r2, vec![r1]), 21).await.unwrap());
    assert!(!q2.cancel_unclaimed(r2, 21).await.unwrap());
    assert!(
        store
            .claim_build_requests(m2, b, 0, 21)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        all_requests(&store).await,
        before,
        "a lost claim changes nothing"
    );
    let r1_row = store.get_build_request(r1).await.unwrap().unwrap();
    assert!(
        !r1_row.claimed && !r1_row.complete,
        "the collapsed request is untouched"
    );

    // Complete, or not there at all: false as well.
    q1.complete(r2, Results::Success, 22).await.unwrap();
    let before = all_requests(&store).await;
    assert!(!q2.claim(&assign(r2, vec![]), 23).await.unwrap());
    let gone = kiln_model::BuildRequestId(r3.0 + 1000);
    assert!(!q2.claim(&assign(gone, vec![r1]), 23).await.unwrap());
    assert!(!q2.cancel_unclaimed(gone, 23).await.unwrap());
    assert_eq!(all_requests(&store).await, before);

    // Store::claim_build_requests: the other master finds nothing once all are taken.
    assert_eq!(
        store.claim_build_requests(m1, b, 10, 24).await.unwrap(),
        vec![r1, r3]
    );
    let before = all_requests(&store).await;
    assert!(
        store
            .claim_build_requests(m2, b, 10, 25)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(!q2.claim(&assign(r3, vec![r1]), 25).await.unwrap());
    assert_eq!(all_requests(&store).await, before);
    assert_eq!(store.claimed_by(m2).await.unwrap(), vec![]);
}

both!(sqlite_claim_takes_n, pg_claim_takes_n, claim_takes_n);

/// A claim of `n` requests takes at most `n`, highest priority first, then oldest, however
/// many are waiting (PostgreSQL must not re-run the limited sub-select per row).
async fn claim_takes_n(store: Store) {
    let m = store.register_master("m", 1).await.unwrap();
    let b = store.upsert_builder("b", None, &[]).await.unwrap();
    let q = QueueStore::new(store.clone(), m);
    let mut ids = Vec::new();
    for (now, priority) in [(10, 0), (11, 5), (12, 0), (13, 5), (14, 1)] {
        let r = NewRequest {
            builder: b,
            priority,
            collapse_key: None,
        };
        ids.push(q.add_buildset(&request(&["b"]), &[r], now).await.unwrap().1[0]);
    }
    let claimed = |store: Store| async move {
        let f = kiln_store::BuildRequestFilter {
            claimed: Some(true),
            ..Default::default()
        };
        store.list_build_requests(&f).await.unwrap().len()
    };
    assert_eq!(
        store.claim_build_requests(m, b, 1, 20).await.unwrap(),
        vec![ids[1]]
    );
    assert_eq!(claimed(store.clone()).await, 1);
    assert_eq!(
        store.claim_build_requests(m, b, 2, 21).await.unwrap(),
        vec![ids[3], ids[4]]
    );
    assert_eq!(claimed(store.clone()).await, 3);
    assert_eq!(
        store.claim_build_requests(m, b, 5, 22).await.unwrap(),
        vec![ids[0], ids[2]]
    );
    assert_eq!(claimed(store.clone()).await, 5);
}

both!(
    sqlite_requeue_and_release,
    pg_requeue_and_release,
    requeue_and_release
);

/// `requeue` gives back this master's claims and has the cached queue re-read the table;
/// `release_claims` gives back every claim of this master that is not complete.
async fn requeue_and_release(store: Store) {
    use std::time::Duration;
    let m1 = store.register_master("m1", 1).await.unwrap();
    let m2 = store.register_master("m2", 1).await.unwrap();
    let b = store.upsert_builder("b", None, &[]).await.unwrap();
    let worker = store.upsert_worker("w", &Default::default()).await.unwrap();
    // A refresh far away: only a requeue makes the cached queue read the table again.
    let q = QueueStore::cached(store.clone(), m1, Duration::from_secs(3600));
    let other = QueueStore::new(store.clone(), m2);
    let new = || NewRequest {
        builder: b,
        priority: 0,
        collapse_key: None,
    };
    let mut ids = Vec::new();
    for now in 10..13 {
        ids.push(
            q.add_buildset(&request(&["b"]), &[new()], now)
                .await
                .unwrap()
                .1[0],
        );
    }
    let (r1, r2, r3) = (ids[0], ids[1], ids[2]);
    let assign = |request| Assignment {
        request,
        builder: b,
        worker,
        collapsed: vec![],
    };
    let pending = |q: &QueueStore| {
        let q = q.clone();
        async move {
            let p = q.pending_requests().await.unwrap();
            p.iter().map(|p| p.id).collect::<Vec<_>>()
        }
    };
    assert_eq!(
        pending(&q).await,
        vec![r1, r2, r3],
        "the first call reads the table"
    );
    assert!(q.claim(&assign(r1), 20).await.unwrap());
    assert!(q.claim(&assign(r2), 20).await.unwrap());
    assert!(other.claim(&assign(r3), 20).await.unwrap());
    assert_eq!(
        pending(&q).await,
        vec![r3],
        "memory has not seen the other master's claim"
    );

    // Only this master's claims go back; the re-read shows them (and drops r3).
    assert_eq!(q.requeue(&[r1, r3]).await.unwrap(), 1);
    assert_eq!(pending(&q).await, vec![r1]);
    assert_eq!(store.claimed_by(m2).await.unwrap(), vec![r3]);
    assert_eq!(q.requeue(&[r1]).await.unwrap(), 0, "twice is harmless");
    assert_eq!(q.requeue(&[]).await.unwrap(), 0);

    // Shutdown: r1 (claimed again) goes back, r2 (complete) keeps its claim, r3 is m2's.
    assert!(q.claim(&assign(r1), 30).await.unwrap());
    q.complete(r2, Results::Success, 31).await.unwrap();
    assert_eq!(pending(&q).await, Vec::<kiln_model::BuildRequestId>::new());
    assert_eq!(q.release_claims().await.unwrap(), 1);
    assert_eq!(pending(&q).await, vec![r1]);
    let row = |id| {
        let store = store.clone();
        async move { store.get_build_request(id).await.unwrap().unwrap() }
    };
    assert!(!row(r1).await.claimed);
    let r2_row = row(r2).await;
    assert!(r2_row.complete && r2_row.claimed_by_masterid == Some(m1));
    assert_eq!(row(r3).await.claimed_by_masterid, Some(m2));
    assert_eq!(q.release_claims().await.unwrap(), 0);
    assert!(store.claimed_by(m1).await.unwrap().is_empty());
}

both!(
    sqlite_submit_all_or_nothing,
    pg_submit_all_or_nothing,
    submit_all_or_nothing
);

/// The one buildset insert stores everything or nothing: a request for a builder that does
/// not exist fails it after the buildset, its properties and a first request were written.
async fn submit_all_or_nothing(store: Store) {
    store.register_master("m", 1).await.unwrap();
    let b = store.upsert_builder("b", None, &[]).await.unwrap();
    let ss = store
        .add_sourcestamp(&kiln_model::SourceStamp::default(), 1)
        .await
        .unwrap();
    let before = store.table_counts().await.unwrap();
    let mut properties = Properties::default();
    properties.set("color", "red", "test");
    let bs = kiln_store::NewBuildset {
        sourcestamps: vec![ss],
        builders: vec![b, BuilderId(b.0 + 1000)],
        properties,
        ..Default::default()
    };
    assert!(store.add_buildset(&bs, 2).await.is_err());
    assert_eq!(store.table_counts().await.unwrap(), before);
    // The store is usable afterwards (on SQLite the batch's transaction was ended).
    let (_, brs) = store
        .add_buildset(
            &kiln_store::NewBuildset {
                builders: vec![b],
                ..bs
            },
            3,
        )
        .await
        .unwrap();
    assert_eq!(brs.len(), 1);
}
