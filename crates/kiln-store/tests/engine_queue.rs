//! The engine's queue trait on the real database: collapse keys stored with the requests,
//! claims that only one master wins, collapsed requests completed SKIPPED, cancel.

mod common;

use kiln_engine::distributor::Assignment;
use kiln_engine::queue::{NewRequest, Store as _};
use kiln_engine::schedulers::{BuildsetRequest, SourceSpec};
use kiln_model::{BuilderId, Properties, Results};
use kiln_store::{QueueStore, Store};

both!(sqlite_engine_queue, pg_engine_queue, engine_queue);

fn request(builders: &[&str]) -> BuildsetRequest {
    BuildsetRequest {
        scheduler: "force".into(),
        builders: builders.iter().map(|s| s.to_string()).collect(),
        sources: vec![SourceSpec {
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
    let strip = |v: &[kiln_model::SourceStamp]| {
        v.iter()
            .map(|s| {
                (
                    s.ssid,
                    s.branch.clone(),
                    s.repository.clone(),
                    s.codebase.clone(),
                    s.project.clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        strip(&from_memory.sourcestamps),
        strip(&from_db.sourcestamps)
    );

    // Several source stamps and builders: ids in order, same as the database says.
    let b2 = store.upsert_builder("b2", None, &[]).await.unwrap();
    let mut multi = request(&["b", "b2"]);
    multi.sources.push(SourceSpec {
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
