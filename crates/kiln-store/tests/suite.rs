//! The store test suite. Every function here takes a `Store` and runs once on a SQLite tempfile
//! and once on a fresh PostgreSQL database (see `common`).

mod common;

use std::collections::HashSet;

use futures_util::TryStreamExt;
use kiln_model::{
    BuildRequestId, BuilderId, LogType, MasterId, Properties, Results, SourceStamp, WorkerId,
};
use kiln_store::*;

both!(sqlite_entities, pg_entities, entities);
both!(sqlite_queue, pg_queue, queue);
both!(
    sqlite_concurrent_claims,
    pg_concurrent_claims,
    concurrent_claims
);
both!(sqlite_builds_steps, pg_builds_steps, builds_steps);
both!(sqlite_crash_recovery, pg_crash_recovery, crash_recovery);
both!(sqlite_log_chunks, pg_log_chunks, log_chunks);
both!(
    sqlite_log_cap,
    pg_log_cap,
    log_cap,
    StoreOptions {
        log_max_bytes: Some(1000),
        ..Default::default()
    }
);
both!(
    sqlite_log_head_and_tail,
    pg_log_head_and_tail,
    log_head_and_tail
);
both!(sqlite_retention, pg_retention, retention);
both!(sqlite_runner_paths, pg_runner_paths, runner_paths);
both!(
    sqlite_log_writer,
    pg_log_writer,
    log_writer,
    StoreOptions {
        log_max_bytes: Some(5000),
        ..Default::default()
    }
);

fn info(k: &str, v: &str) -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    m.insert(k.into(), v.into());
    m
}

async fn setup(store: &Store) -> (MasterId, WorkerId, BuilderId, BuilderId) {
    let m = store.register_master("m1", 10).await.unwrap();
    let w = store
        .upsert_worker("w1", &info("os", "linux"))
        .await
        .unwrap();
    let b1 = store
        .upsert_builder("b1", Some("first"), &["tier-1".into()])
        .await
        .unwrap();
    let b2 = store.upsert_builder("b2", None, &[]).await.unwrap();
    (m, w, b1, b2)
}

async fn buildset(
    store: &Store,
    builders: &[BuilderId],
    priority: i64,
    now: i64,
) -> Vec<BuildRequestId> {
    let (_, brs) = store
        .add_buildset(
            &NewBuildset {
                builders: builders.to_vec(),
                priority,
                reason: "test".into(),
                ..Default::default()
            },
            now,
        )
        .await
        .unwrap();
    brs.into_iter().map(|(_, id)| id).collect()
}

async fn entities(store: Store) {
    // masters: re-registering keeps the id
    let m = store.register_master("m1", 10).await.unwrap();
    assert_eq!(store.register_master("m1", 20).await.unwrap(), m);
    assert_ne!(store.register_master("m2", 20).await.unwrap(), m);
    let m3 = store.register_master("m3", 20).await.unwrap();
    store.heartbeat_master(m, 100).await.unwrap();
    assert_eq!(
        store.stale_masters(50).await.unwrap().len(),
        2,
        "m2 and m3 last seen at 20"
    );
    store.set_master_inactive(m3).await.unwrap();
    assert_eq!(store.stale_masters(50).await.unwrap().len(), 1);
    let ms = store.list_masters().await.unwrap();
    assert_eq!(
        ms.iter()
            .map(|m| (m.name.as_str(), m.active, m.last_active))
            .collect::<Vec<_>>(),
        [("m1", true, 100), ("m2", true, 20), ("m3", false, 20)]
    );
    assert_eq!(store.register_master("m3", 30).await.unwrap(), m3);
    assert!(
        store.list_masters().await.unwrap()[2].active,
        "re-registering re-activates"
    );

    // workers
    let w = store
        .upsert_worker("w1", &info("os", "linux"))
        .await
        .unwrap();
    assert_eq!(
        store
            .upsert_worker("w1", &info("os", "freebsd"))
            .await
            .unwrap(),
        w
    );
    let got = store.get_worker(w).await.unwrap().unwrap();
    assert_eq!(got.name, "w1");
    assert_eq!(got.workerinfo.get("os").unwrap(), "freebsd");
    assert!(!got.paused && !got.graceful);
    store.set_worker_state(w, true, false).await.unwrap();
    assert!(
        store
            .get_worker_by_name("w1")
            .await
            .unwrap()
            .unwrap()
            .paused
    );
    store
        .upsert_worker("a0", &serde_json::Map::new())
        .await
        .unwrap();
    let names: Vec<_> = store
        .list_workers()
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.name)
        .collect();
    assert_eq!(names, ["a0", "w1"]);
    assert!(store.get_worker(WorkerId(9999)).await.unwrap().is_none());
    assert!(matches!(
        store.set_worker_state(WorkerId(9999), true, true).await,
        Err(StoreError::NotFound("worker", 9999))
    ));

    // builders
    let b = store
        .upsert_builder("b1", Some("d"), &["x".into(), "y".into()])
        .await
        .unwrap();
    assert_eq!(store.upsert_builder("b1", None, &[]).await.unwrap(), b);
    store
        .upsert_builder("b0", Some("zero"), &["t".into()])
        .await
        .unwrap();
    let bl = store.list_builders().await.unwrap();
    assert_eq!(
        bl.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(),
        ["b0", "b1"]
    );
    assert_eq!(bl[0].tags, ["t"]);
    assert_eq!(
        store.get_builder(b).await.unwrap().unwrap().description,
        None
    );
    assert_eq!(
        store
            .get_builder_by_name("b0")
            .await
            .unwrap()
            .unwrap()
            .description
            .as_deref(),
        Some("zero")
    );

    // source stamps
    let ss = store
        .add_sourcestamp(
            &SourceStamp {
                branch: Some("main".into()),
                revision: Some("abc".into()),
                repository: "r".into(),
                ..Default::default()
            },
            5,
        )
        .await
        .unwrap();
    let got = store.get_sourcestamp(ss).await.unwrap().unwrap();
    assert_eq!(
        (
            got.stamp.branch.as_deref(),
            got.stamp.revision.as_deref(),
            got.created_at
        ),
        (Some("main"), Some("abc"), 5)
    );

    // changes
    let mut ids = Vec::new();
    for i in 0..25 {
        let mut props = Properties::default();
        props.set("event", serde_json::json!({"n": i}), "Change");
        let c = NewChange {
            author: format!("Ann <a{i}@x>"),
            comments: "fix: ünïcode ✓".into(),
            branch: Some(if i % 2 == 0 { "main" } else { "3.13" }.into()),
            revision: Some(format!("{i:040x}")),
            when_timestamp: 1000 + i,
            repository: "https://github.com/python/cpython".into(),
            project: "cpython".into(),
            files: vec!["b.c".into(), "a.py".into()],
            properties: props,
            ..Default::default()
        };
        ids.push(store.add_change(&c, 2000).await.unwrap());
    }
    let c = store.get_change(ids[3]).await.unwrap().unwrap();
    assert_eq!(c.author, "Ann <a3@x>");
    assert_eq!(c.comments, "fix: ünïcode ✓");
    assert_eq!(c.files, ["a.py", "b.c"]);
    assert_eq!(
        c.properties.get("event").unwrap(),
        &serde_json::json!({"n": 3})
    );
    assert_eq!(c.properties.0["event"].1, "Change");
    let css = store
        .get_sourcestamp(c.sourcestampid)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(css.stamp.revision, c.revision);
    // newest first, filtered, keyset pages
    let page1 = store
        .list_changes(&ChangeFilter {
            branch: Some("main".into()),
            limit: Some(5),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page1.len(), 5);
    assert!(page1.windows(2).all(|w| w[0].changeid > w[1].changeid));
    assert!(page1.iter().all(|c| c.branch.as_deref() == Some("main")));
    assert_eq!(page1[0].changeid, ids[24]);
    let page2 = store
        .list_changes(&ChangeFilter {
            branch: Some("main".into()),
            before: Some(page1[4].changeid),
            limit: Some(100),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page1.len() + page2.len(), 13);
    assert!(page2[0].changeid < page1[4].changeid);
    assert_eq!(
        store
            .list_changes(&ChangeFilter::default())
            .await
            .unwrap()
            .len(),
        25
    );
    assert!(
        store
            .get_change(kiln_model::ChangeId(99999))
            .await
            .unwrap()
            .is_none()
    );
}

async fn queue(store: Store) {
    let (m, _w, b1, b2) = setup(&store).await;
    let m2 = store.register_master("m2", 10).await.unwrap();
    let ss = store
        .add_sourcestamp(
            &SourceStamp {
                branch: Some("main".into()),
                ..Default::default()
            },
            1,
        )
        .await
        .unwrap();
    let mut props = Properties::default();
    props.set("reason_detail", "forced", "Force Build Form");
    let (bsid, brs) = store
        .add_buildset(
            &NewBuildset {
                sourcestamps: vec![ss],
                builders: vec![b1, b2],
                properties: props.clone(),
                reason: "forced".into(),
                priority: 0,
                external_idstring: Some("ext".into()),
                ..Default::default()
            },
            100,
        )
        .await
        .unwrap();
    assert_eq!(brs.len(), 2);
    assert_eq!(brs[0].0, b1);
    let bs = store.get_buildset(bsid).await.unwrap().unwrap();
    assert_eq!(
        (bs.reason.as_str(), bs.complete, bs.sourcestamps.clone()),
        ("forced", false, vec![ss])
    );
    assert_eq!(bs.external_idstring.as_deref(), Some("ext"));
    assert_eq!(store.get_buildset_properties(bsid).await.unwrap(), props);

    // more requests on b1: an older low-priority one exists; add newer ones with priorities
    let low_new = buildset(&store, &[b1], 0, 200).await[0];
    let high = buildset(&store, &[b1], 5, 300).await[0];
    let first = brs[0].1;
    let pending = store.pending_builders().await.unwrap();
    assert_eq!(
        pending,
        [
            PendingBuilder {
                builderid: b1,
                requests: 3,
                max_priority: 5,
                oldest_submitted_at: 100
            },
            PendingBuilder {
                builderid: b2,
                requests: 1,
                max_priority: 0,
                oldest_submitted_at: 100
            }
        ]
    );
    let bss = store
        .list_buildsets(&BuildsetFilter {
            limit: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(bss.len(), 2);
    assert!(bss[0].bsid > bss[1].bsid);
    let older = store
        .list_buildsets(&BuildsetFilter {
            before: Some(bss[1].bsid),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(older.iter().map(|b| b.bsid).collect::<Vec<_>>(), [bsid]);
    // highest priority first, then oldest
    let got = store.claim_build_requests(m, b1, 2, 400).await.unwrap();
    assert_eq!(got, vec![high, first]);
    let br = store.get_build_request(high).await.unwrap().unwrap();
    assert!(
        br.claimed
            && br.claimed_by_masterid == Some(m)
            && br.claimed_at == Some(400)
            && !br.complete
    );
    // claimed ones are not claimable by anyone
    assert_eq!(
        store.claim_build_requests(m2, b1, 10, 401).await.unwrap(),
        vec![low_new]
    );
    assert!(
        store
            .claim_build_requests(m2, b1, 10, 402)
            .await
            .unwrap()
            .is_empty()
    );
    // unclaim only by the owner
    assert_eq!(store.unclaim_build_requests(m2, &[high]).await.unwrap(), 0);
    assert_eq!(store.unclaim_build_requests(m, &[high]).await.unwrap(), 1);
    assert!(
        !store
            .get_build_request(high)
            .await
            .unwrap()
            .unwrap()
            .claimed
    );
    assert_eq!(
        store.claim_build_requests(m2, b1, 1, 403).await.unwrap(),
        vec![high]
    );
    // filters
    let unclaimed = store
        .list_build_requests(&BuildRequestFilter {
            claimed: Some(false),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        unclaimed
            .iter()
            .map(|r| r.buildrequestid)
            .collect::<Vec<_>>(),
        vec![brs[1].1]
    );
    let on_b1 = store
        .list_build_requests(&BuildRequestFilter {
            builderid: Some(b1),
            limit: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        on_b1.iter().map(|r| r.buildrequestid).collect::<Vec<_>>(),
        vec![high, low_new]
    );
    let older = store
        .list_build_requests(&BuildRequestFilter {
            builderid: Some(b1),
            before: Some(low_new),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        older.iter().map(|r| r.buildrequestid).collect::<Vec<_>>(),
        vec![first]
    );
    let of_bs = store
        .list_build_requests(&BuildRequestFilter {
            buildsetid: Some(bsid),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(of_bs.len(), 2);

    // completion: buildset completes when all its requests do, with the worst result
    assert_eq!(
        store
            .complete_build_requests(&[first], Results::Warnings, 500)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .complete_build_requests(&[first], Results::Success, 501)
            .await
            .unwrap(),
        0,
        "already complete"
    );
    assert!(!store.get_buildset(bsid).await.unwrap().unwrap().complete);
    // complete requests are never claimable; an incomplete unclaimed one is
    assert_eq!(
        store.claim_build_requests(m, b2, 5, 502).await.unwrap(),
        vec![brs[1].1]
    );
    store
        .complete_build_requests(&[brs[1].1], Results::Failure, 600)
        .await
        .unwrap();
    let bs = store.get_buildset(bsid).await.unwrap().unwrap();
    assert_eq!(
        (bs.complete, bs.complete_at, bs.results),
        (true, Some(600), Some(Results::Failure))
    );
    let br = store.get_build_request(first).await.unwrap().unwrap();
    assert_eq!(
        (br.complete, br.complete_at, br.results),
        (true, Some(500), Some(Results::Warnings))
    );
    assert_eq!(
        store.unclaim_build_requests(m, &[first]).await.unwrap(),
        0,
        "complete requests stay claimed"
    );
    let done = store
        .list_build_requests(&BuildRequestFilter {
            complete: Some(true),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(done.len(), 2);
    assert!(
        store
            .claim_build_requests(m, b2, 5, 700)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.pending_builders().await.unwrap().is_empty());
    assert_eq!(
        store
            .list_buildsets(&BuildsetFilter {
                complete: Some(true),
                ..Default::default()
            })
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        store
            .list_buildsets(&BuildsetFilter {
                complete: Some(false),
                ..Default::default()
            })
            .await
            .unwrap()
            .len(),
        2
    );
}

async fn concurrent_claims(store: Store) {
    let (m1, _w, b1, _b2) = setup(&store).await;
    let m2 = store.register_master("m2", 10).await.unwrap();
    let mut all = HashSet::new();
    for i in 0..40 {
        for id in buildset(&store, &[b1, b1, b1, b1, b1], i % 3, 100 + i).await {
            all.insert(id);
        }
    }
    assert_eq!(all.len(), 200);
    let mut tasks = Vec::new();
    for t in 0..6 {
        let store = store.clone();
        let master = if t % 2 == 0 { m1 } else { m2 };
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = store
                    .claim_build_requests(master, b1, 1 + (t % 3), 1000)
                    .await
                    .unwrap();
                if got.is_empty() {
                    break;
                }
                mine.extend(got);
                tokio::task::yield_now().await;
            }
            mine
        }));
    }
    let mut seen = HashSet::new();
    let mut per_task = Vec::new();
    for t in tasks {
        let mine = t.await.unwrap();
        per_task.push(mine.len());
        for id in mine {
            assert!(seen.insert(id), "request {id} claimed twice");
        }
    }
    assert_eq!(seen, all, "every request claimed exactly once");
    eprintln!("{:?}: claims per task {per_task:?}", store.backend());
    let claimed = store
        .list_build_requests(&BuildRequestFilter {
            claimed: Some(true),
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(claimed.len(), 200);
}

async fn builds_steps(store: Store) {
    let (m, w, b1, b2) = setup(&store).await;
    let brs = buildset(&store, &[b1, b1, b2], 0, 100).await;
    let nb = |builderid, br| NewBuild {
        builderid,
        buildrequestid: br,
        workerid: w,
        masterid: m,
        state_string: "starting".into(),
    };
    let (id1, n1) = store.add_build(&nb(b1, brs[0]), 200).await.unwrap();
    let (id2, n2) = store.add_build(&nb(b1, brs[1]), 201).await.unwrap();
    let (id3, n3) = store.add_build(&nb(b2, brs[2]), 202).await.unwrap();
    assert_eq!((n1, n2, n3), (1, 2, 1), "numbers are per builder");
    // concurrent starts on one builder get distinct consecutive numbers
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        let b = nb(b1, brs[0]);
        tasks.push(tokio::spawn(async move {
            store.add_build(&b, 300).await.unwrap().1
        }));
    }
    let mut nums = Vec::new();
    for t in tasks {
        nums.push(t.await.unwrap());
    }
    nums.sort();
    assert_eq!(nums, (3..=10).collect::<Vec<_>>());

    let b = store.get_build(id1).await.unwrap().unwrap();
    assert_eq!(
        (
            b.number,
            b.builderid,
            b.workerid,
            b.masterid,
            b.started_at,
            b.complete
        ),
        (1, b1, w, m, 200, false)
    );
    assert_eq!(b.state_string, "starting");
    assert_eq!(
        store
            .get_build_by_number(b1, 2)
            .await
            .unwrap()
            .unwrap()
            .buildid,
        id2
    );
    store.set_build_state_string(id1, "building").await.unwrap();
    store.add_locks_duration(id1, 7).await.unwrap();
    let mut props = Properties::default();
    props.set("got_revision", "abc", "Git");
    props.set("buildnumber", 1, "Build");
    store.set_build_properties(id1, &props).await.unwrap();
    let mut p2 = Properties::default();
    p2.set("got_revision", "def", "Git");
    store.set_build_properties(id1, &p2).await.unwrap();
    let got = store.get_build_properties(id1).await.unwrap();
    assert_eq!(got.get("got_revision").unwrap(), "def");
    assert_eq!(got.get("buildnumber").unwrap(), 1);

    // steps
    let (s0, sn0, _) = store.add_step(id1, "git").await.unwrap();
    let (s1, sn1, _) = store.add_step(id1, "compile").await.unwrap();
    assert_eq!((sn0, sn1), (0, 1));
    let (_, sn2, name2) = store.add_step(id1, "git").await.unwrap();
    let (_, sn3, name3) = store.add_step(id1, "git").await.unwrap();
    assert_eq!(
        (sn2, name2.as_str(), sn3, name3.as_str()),
        (2, "git_2", 3, "git_3")
    );
    store.start_step(s0, 210).await.unwrap();
    store.set_step_state_string(s0, "updating").await.unwrap();
    store
        .add_step_url(s0, "PR", "https://example.invalid/1")
        .await
        .unwrap();
    store
        .add_step_url(s0, "PR", "https://example.invalid/1")
        .await
        .unwrap();
    assert!(
        store
            .finish_step(s0, Results::Success, false, 220)
            .await
            .unwrap()
    );
    assert!(
        !store
            .finish_step(s0, Results::Failure, false, 221)
            .await
            .unwrap(),
        "finishing twice is a no-op"
    );
    store.start_step(s1, 221).await.unwrap();
    store
        .finish_step(s1, Results::Warnings, true, 230)
        .await
        .unwrap();
    let steps = store.list_steps(id1).await.unwrap();
    assert_eq!(steps.len(), 4);
    assert_eq!(
        (
            steps[0].name.as_str(),
            steps[0].results,
            steps[0].started_at,
            steps[0].complete_at
        ),
        ("git", Some(Results::Success), Some(210), Some(220))
    );
    assert_eq!(steps[0].urls.len(), 1);
    assert_eq!(steps[0].state_string, "updating");
    assert!(steps[1].hidden && steps[1].complete);
    assert_eq!(
        store.get_step(s1).await.unwrap().unwrap().results,
        Some(Results::Warnings)
    );

    // finish
    assert!(
        store
            .finish_build(id1, Results::Warnings, 240)
            .await
            .unwrap()
    );
    assert!(
        !store
            .finish_build(id1, Results::Failure, 241)
            .await
            .unwrap()
    );
    let b = store.get_build(id1).await.unwrap().unwrap();
    assert_eq!(
        (b.complete, b.complete_at, b.results, b.locks_duration_s),
        (true, Some(240), Some(Results::Warnings), 7)
    );
    assert_eq!(b.state_string, "building");

    // lists: newest first, by builder, by worker, complete filter, keyset
    let all_b1 = store
        .list_builds(&BuildFilter {
            builderid: Some(b1),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all_b1.len(), 10);
    assert!(all_b1.windows(2).all(|w| w[0].buildid > w[1].buildid));
    let page = store
        .list_builds(&BuildFilter {
            builderid: Some(b1),
            limit: Some(3),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.len(), 3);
    let next = store
        .list_builds(&BuildFilter {
            builderid: Some(b1),
            before: Some(page[2].buildid),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(next.len(), 7);
    assert_eq!(
        store
            .list_builds(&BuildFilter {
                complete: Some(true),
                ..Default::default()
            })
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        store
            .list_builds(&BuildFilter {
                builderid: Some(b2),
                ..Default::default()
            })
            .await
            .unwrap()[0]
            .buildid,
        id3
    );
    assert_eq!(
        store
            .list_builds(&BuildFilter {
                workerid: Some(w),
                limit: Some(100),
                ..Default::default()
            })
            .await
            .unwrap()
            .len(),
        11
    );
    assert_eq!(
        store
            .list_builds(&BuildFilter {
                buildrequestid: Some(brs[1]),
                ..Default::default()
            })
            .await
            .unwrap()[0]
            .buildid,
        id2
    );
    let counts = store.table_counts().await.unwrap();
    assert_eq!(counts["builds"], 11);
    assert_eq!(counts["steps"], 4);
}

async fn crash_recovery(store: Store) {
    let (m, w, b1, _b2) = setup(&store).await;
    let other = store.register_master("other", 10).await.unwrap();
    let brs = buildset(&store, &[b1, b1, b1], 0, 100).await;
    let mine = store.claim_build_requests(m, b1, 2, 110).await.unwrap();
    let theirs = store.claim_build_requests(other, b1, 1, 110).await.unwrap();
    assert_eq!(mine.len() + theirs.len(), 3);
    let nb = |br, master| NewBuild {
        builderid: b1,
        buildrequestid: br,
        workerid: w,
        masterid: master,
        state_string: "building".into(),
    };
    // one of mine finished cleanly before the crash; one is running
    let (done, _) = store.add_build(&nb(mine[0], m), 120).await.unwrap();
    store
        .finish_build(done, Results::Success, 130)
        .await
        .unwrap();
    store
        .complete_build_requests(&[mine[0]], Results::Success, 130)
        .await
        .unwrap();
    let (running, _) = store.add_build(&nb(mine[1], m), 140).await.unwrap();
    let (s_done, _, _) = store.add_step(running, "git").await.unwrap();
    store
        .finish_step(s_done, Results::Success, false, 145)
        .await
        .unwrap();
    let (s_run, _, _) = store.add_step(running, "test").await.unwrap();
    store.start_step(s_run, 146).await.unwrap();
    let log = store.add_log(s_run, "stdio", LogType::Stdio).await.unwrap();
    store.append_log(log, "line 1\nline 2\n").await.unwrap();
    let (theirs_build, _) = store.add_build(&nb(theirs[0], other), 141).await.unwrap();

    // kill -9; the master comes back
    let rec = store.recover_after_crash(m, 1000).await.unwrap();
    assert_eq!(
        rec,
        Recovery {
            builds: 1,
            steps: 1,
            requests_requeued: 1
        }
    );
    let b = store.get_build(running).await.unwrap().unwrap();
    assert_eq!(
        (b.complete, b.results, b.complete_at),
        (true, Some(Results::Retry), Some(1000))
    );
    let st = store.get_step(s_run).await.unwrap().unwrap();
    assert_eq!((st.complete, st.results), (true, Some(Results::Retry)));
    assert_eq!(
        store.get_step(s_done).await.unwrap().unwrap().results,
        Some(Results::Success),
        "finished steps untouched"
    );
    let l = store.get_log(log).await.unwrap().unwrap();
    assert!(l.complete);
    assert_eq!(
        store.read_log_lines(log, 0, 10).await.unwrap(),
        ["line 1", "line 2"],
        "committed log text survives"
    );
    assert_eq!(
        store.get_build(done).await.unwrap().unwrap().results,
        Some(Results::Success)
    );
    assert!(
        !store
            .get_build(theirs_build)
            .await
            .unwrap()
            .unwrap()
            .complete,
        "other master's build untouched"
    );
    assert!(
        store
            .get_build_request(theirs[0])
            .await
            .unwrap()
            .unwrap()
            .claimed
    );
    // the interrupted request is back in the queue, the completed one is not
    let br = store.get_build_request(mine[1]).await.unwrap().unwrap();
    assert!(!br.claimed && !br.complete);
    assert_eq!(
        store.claim_build_requests(m, b1, 10, 1001).await.unwrap(),
        vec![mine[1]]
    );
    assert!(brs.contains(&mine[1]));
    // idempotent
    store.unclaim_build_requests(m, &[mine[1]]).await.unwrap();
    assert_eq!(
        store.recover_after_crash(m, 1002).await.unwrap(),
        Recovery::default()
    );
}

fn lines_text(lines: &[String]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

async fn log_chunks(store: Store) {
    let (m, w, b1, _) = setup(&store).await;
    let br = buildset(&store, &[b1], 0, 1).await[0];
    let (build, _) = store
        .add_build(
            &NewBuild {
                builderid: b1,
                buildrequestid: br,
                workerid: w,
                masterid: m,
                state_string: String::new(),
            },
            2,
        )
        .await
        .unwrap();
    let (step, _, _) = store.add_step(build, "test").await.unwrap();
    let log = store.add_log(step, "Std IO", LogType::Stdio).await.unwrap();
    let l = store.get_log(log).await.unwrap().unwrap();
    assert_eq!(
        (l.slug.as_str(), l.log_type, l.num_lines, l.complete),
        ("std_io", LogType::Stdio, 0, false)
    );
    assert_eq!(
        store
            .get_log_by_slug(step, "std_io")
            .await
            .unwrap()
            .unwrap()
            .logid,
        log
    );
    assert!(
        store.add_log(step, "std io", LogType::Text).await.is_err(),
        "slugs are unique in a step"
    );

    // expected content, built as we go
    let mut expect: Vec<String> = Vec::new();
    // 1) 2500 short lines in one append: chunks of at most 1000 lines
    let a: Vec<String> = (0..2500).map(|i| format!("short line {i}")).collect();
    let out = store.append_log(log, &lines_text(&a)).await.unwrap();
    assert_eq!(
        (out.lines_stored, out.num_lines, out.bytes_dropped),
        (2500, 2500, 0)
    );
    expect.extend(a);
    // 2) multi-byte lines sized so chunk edges fall inside what would be a character
    let b: Vec<String> = (0..300)
        .map(|i| format!("{i:05} {}", "é✓😀".repeat(40 + i % 7)))
        .collect();
    store.append_log(log, &lines_text(&b)).await.unwrap();
    expect.extend(b);
    // 3) one line longer than a chunk, then a last line without a newline
    let long = "x".repeat(200_000);
    store
        .append_log(log, &format!("{long}\nno newline at end"))
        .await
        .unwrap();
    expect.push(long);
    expect.push("no newline at end".into());
    // 4) empty lines and an empty append
    store.append_log(log, "\n\n").await.unwrap();
    store.append_log(log, "").await.unwrap();
    expect.push(String::new());
    expect.push(String::new());

    let chunks = store.log_chunks(log).await.unwrap();
    let mut next = 0;
    for c in &chunks {
        assert_eq!(c.first_line, next, "chunks are contiguous");
        assert!(c.last_line - c.first_line < LOG_CHUNK_MAX_LINES as i64);
        assert!(
            c.raw_len <= LOG_CHUNK_MAX_BYTES as i64 || c.first_line == c.last_line,
            "{c:?}"
        );
        next = c.last_line + 1;
    }
    assert_eq!(next as usize, expect.len());
    assert_eq!(
        &chunks[..3]
            .iter()
            .map(|c| (c.first_line, c.last_line))
            .collect::<Vec<_>>(),
        &[(0, 999), (1000, 1999), (2000, 2499)]
    );
    assert!(
        chunks
            .iter()
            .any(|c| c.compressed == 4 && c.stored_len < c.raw_len / 3)
    );
    assert!(
        chunks
            .iter()
            .filter(|c| c.first_line >= 2500 && c.first_line < 2800)
            .count()
            >= 2,
        "the UTF-8 lines span chunks"
    );
    assert_eq!(
        store.get_log(log).await.unwrap().unwrap().num_lines,
        expect.len() as i64
    );

    // every line, and ranges across chunk edges
    assert_eq!(
        store.read_log_lines(log, 0, 1_000_000).await.unwrap(),
        expect
    );
    for (f, l) in [
        (0, 0),
        (998, 1001),
        (1999, 2000),
        (2490, 2650),
        (2799, 2803),
        (2500, 2500),
        (2801, 2801),
        (5, 4),
    ] {
        let want: Vec<String> = expect
            .iter()
            .skip(f as usize)
            .take((l - f + 1).max(0) as usize)
            .cloned()
            .collect();
        assert_eq!(
            store.read_log_lines(log, f, l).await.unwrap(),
            want,
            "lines {f}..={l}"
        );
    }
    assert!(
        store
            .read_log_lines(log, 10_000, 20_000)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.read_log_lines(log, -5, 1).await.unwrap(), expect[..2]);
    assert_eq!(
        store.read_log_lines(log, 0, i64::MAX).await.unwrap().len(),
        expect.len()
    );
    let raw: Vec<Vec<u8>> = store.log_raw(log).try_collect().await.unwrap();
    assert_eq!(raw.len(), chunks.len());
    assert_eq!(
        String::from_utf8(raw.concat()).unwrap(),
        lines_text(&expect)
    );

    // finish with merging: many one-line appends become few chunks, same text
    let small = store.add_log(step, "small", LogType::Text).await.unwrap();
    let mut want = Vec::new();
    for i in 0..1500 {
        let t = format!("{i} ünï\n");
        store.append_log(small, &t).await.unwrap();
        want.push(format!("{i} ünï"));
    }
    assert_eq!(store.log_chunks(small).await.unwrap().len(), 1500);
    store.finish_log(small, true).await.unwrap();
    let merged = store.log_chunks(small).await.unwrap();
    assert_eq!(
        merged
            .iter()
            .map(|c| (c.first_line, c.last_line))
            .collect::<Vec<_>>(),
        [(0, 999), (1000, 1499)]
    );
    assert_eq!(store.read_log_lines(small, 0, 2000).await.unwrap(), want);
    assert_eq!(
        store.read_log_lines(small, 995, 1004).await.unwrap(),
        want[995..=1004]
    );
    let l = store.get_log(small).await.unwrap().unwrap();
    assert!(l.complete);
    assert_eq!(l.num_lines, 1500);
    store.finish_log(log, true).await.unwrap();
    assert_eq!(
        store.read_log_lines(log, 0, 1_000_000).await.unwrap(),
        expect,
        "merging keeps the text"
    );
    assert_eq!(
        store
            .list_logs(step)
            .await
            .unwrap()
            .iter()
            .map(|l| l.logid)
            .collect::<Vec<_>>(),
        [log, small]
    );
}

async fn log_cap(store: Store) {
    assert_eq!(store.options().log_max_bytes, Some(1000));
    let (m, w, b1, _) = setup(&store).await;
    let br = buildset(&store, &[b1], 0, 1).await[0];
    let (build, _) = store
        .add_build(
            &NewBuild {
                builderid: b1,
                buildrequestid: br,
                workerid: w,
                masterid: m,
                state_string: String::new(),
            },
            2,
        )
        .await
        .unwrap();
    let (step, _, _) = store.add_step(build, "test").await.unwrap();
    let log = store.add_log(step, "stdio", LogType::Stdio).await.unwrap();
    let line = format!("{}\n", "a".repeat(99)); // 100 bytes
    let out = store.append_log(log, &line.repeat(6)).await.unwrap();
    assert_eq!((out.lines_stored, out.bytes_dropped), (6, 0));
    // 600 more bytes: 4 lines fit (1000), 200 dropped, one marker line
    let out = store.append_log(log, &line.repeat(6)).await.unwrap();
    assert_eq!(
        (out.lines_stored, out.bytes_dropped, out.num_lines),
        (5, 200, 11)
    );
    let tail = store.read_log_lines(log, 9, 10).await.unwrap();
    assert_eq!(
        tail[1],
        "[kiln: log truncated at 1000 bytes; 200 bytes dropped]"
    );
    // later appends are counted and dropped; the marker stays the last line and is kept current
    let out = store.append_log(log, "more\n").await.unwrap();
    assert_eq!(
        (out.lines_stored, out.bytes_dropped, out.num_lines),
        (0, 5, 11)
    );
    store.append_log(log, &line.repeat(10)).await.unwrap();
    assert_eq!(
        store.read_log_lines(log, 10, 10).await.unwrap(),
        ["[kiln: log truncated at 1000 bytes; 1205 bytes dropped]"]
    );
    assert_eq!(store.log_sizes(log).await.unwrap(), (2205, 1000, true));
    store.finish_log(log, true).await.unwrap();
    let all = store.read_log_lines(log, 0, 100).await.unwrap();
    assert_eq!(all.len(), 11);
    assert!(all[..10].iter().all(|l| l == &"a".repeat(99)));
    assert_eq!(
        all[10],
        "[kiln: log truncated at 1000 bytes; 1205 bytes dropped]"
    );
    // the build goes on: other logs are unaffected
    let other = store.add_log(step, "other", LogType::Text).await.unwrap();
    assert_eq!(
        store.append_log(other, "ok\n").await.unwrap().lines_stored,
        1
    );
    // a store without a cap never truncates
    let mut uncapped = store.clone();
    uncapped.set_log_max_bytes(None);
    let big = uncapped.add_log(step, "big", LogType::Text).await.unwrap();
    assert_eq!(
        uncapped
            .append_log(big, &line.repeat(50))
            .await
            .unwrap()
            .bytes_dropped,
        0
    );
}

async fn retention(store: Store) {
    let (m, w, b1, _) = setup(&store).await;
    let brs = buildset(&store, &[b1, b1, b1], 0, 1).await;
    let mut builds = Vec::new();
    let mut logs = Vec::new();
    for (i, (br, done_at)) in brs.iter().zip([Some(100), Some(900), None]).enumerate() {
        let (b, _) = store
            .add_build(
                &NewBuild {
                    builderid: b1,
                    buildrequestid: *br,
                    workerid: w,
                    masterid: m,
                    state_string: String::new(),
                },
                50,
            )
            .await
            .unwrap();
        let (s, _, _) = store.add_step(b, "test").await.unwrap();
        let l = store.add_log(s, "stdio", LogType::Stdio).await.unwrap();
        // the old build's log has more than one batch of chunks
        let n = if i == 0 { 1100 } else { 3 };
        for k in 0..n {
            store.append_log(l, &format!("line {k}\n")).await.unwrap();
        }
        let mut p = Properties::default();
        p.set("k", i as i64, "test");
        store.set_build_properties(b, &p).await.unwrap();
        if let Some(t) = done_at {
            store.finish_build(b, Results::Success, t).await.unwrap();
        }
        builds.push(b);
        logs.push(l);
    }
    let rep = store.delete_old_logs(500).await.unwrap();
    assert_eq!((rep.logs, rep.chunks), (1, 1100));
    let old = store.get_log(logs[0]).await.unwrap().unwrap();
    assert_eq!(old.log_type, LogType::Deleted);
    assert!(
        store
            .read_log_lines(logs[0], 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.read_log_lines(logs[1], 0, 10).await.unwrap().len(), 3);
    assert_eq!(
        store.read_log_lines(logs[2], 0, 10).await.unwrap().len(),
        3,
        "running builds keep their logs"
    );
    assert_eq!(
        store.delete_old_logs(500).await.unwrap(),
        JanitorReport::default(),
        "idempotent"
    );

    let rep = store.delete_old_builds(1000).await.unwrap();
    assert_eq!((rep.builds, rep.steps, rep.logs, rep.chunks), (2, 2, 2, 3));
    assert!(store.get_build(builds[0]).await.unwrap().is_none());
    assert!(store.get_build(builds[1]).await.unwrap().is_none());
    assert!(
        store.get_build(builds[2]).await.unwrap().is_some(),
        "unfinished builds are never deleted"
    );
    let counts = store.table_counts().await.unwrap();
    assert_eq!(
        (
            counts["builds"],
            counts["steps"],
            counts["logs"],
            counts["logchunks"],
            counts["build_properties"]
        ),
        (1, 1, 1, 3, 1)
    );
    assert_eq!(
        store.delete_old_builds(1000).await.unwrap(),
        JanitorReport::default()
    );
}

/// The one-statement paths a build's runner uses give the same rows as the general ones.
async fn runner_paths(store: Store) {
    let (m, w, b1, _) = setup(&store).await;
    let brs = buildset(&store, &[b1, b1], 0, 100).await;
    let new = |br| NewBuild {
        builderid: b1,
        buildrequestid: br,
        workerid: w,
        masterid: m,
        state_string: "building".into(),
    };
    let mut props = Properties::default();
    props.set("color", "red", "Force");
    let (id1, n1) = store
        .add_build_with_properties(&new(brs[0]), &mut props, 110)
        .await
        .unwrap();
    let (id2, n2) = store
        .add_build_with_properties(&new(brs[1]), &mut props, 111)
        .await
        .unwrap();
    assert_eq!((n1, n2), (1, 2), "numbers follow the builder's");
    let stored = store.get_build_properties(id2).await.unwrap();
    assert_eq!(stored.get("buildnumber"), Some(&serde_json::json!(2)));
    assert_eq!(stored.get("color"), Some(&serde_json::json!("red")));
    assert_eq!(store.get_build(id1).await.unwrap().unwrap().number, 1);

    let s0 = store
        .add_started_step(id1, 0, "compile", "compiling", 120)
        .await
        .unwrap();
    let s1 = store
        .add_started_step(id1, 1, "compile_2", "compiling", 121)
        .await
        .unwrap();
    let steps = store.list_steps(id1).await.unwrap();
    assert_eq!(
        steps
            .iter()
            .map(|s| (s.number, s.name.as_str()))
            .collect::<Vec<_>>(),
        [(0, "compile"), (1, "compile_2")]
    );
    assert_eq!(steps[0].started_at, Some(120));
    assert_eq!(steps[0].state_string, "compiling");
    assert!(
        store
            .finish_step_with_state(s0, Results::Warnings, false, Some("compiled"), 130)
            .await
            .unwrap()
    );
    assert!(
        !store
            .finish_step_with_state(s0, Results::Failure, false, Some("again"), 131)
            .await
            .unwrap(),
        "finishes once"
    );
    assert!(
        store
            .finish_step_with_state(s1, Results::Success, true, None, 132)
            .await
            .unwrap()
    );
    let steps = store.list_steps(id1).await.unwrap();
    assert_eq!(
        (steps[0].results, steps[0].state_string.as_str()),
        (Some(Results::Warnings), "compiled")
    );
    assert_eq!(
        (steps[1].state_string.as_str(), steps[1].hidden),
        ("compiling", true),
        "None keeps the state"
    );

    // Requests completed one at a time (a build's end): the buildset completes with the
    // last one, with Buildbot's worst result (SKIPPED counts below SUCCESS).
    for (results, want) in [
        ([Results::Success, Results::Skipped], Results::Success),
        ([Results::Skipped, Results::Skipped], Results::Skipped),
        ([Results::Warnings, Results::Failure], Results::Failure),
        ([Results::Cancelled, Results::Retry], Results::Cancelled),
        ([Results::Exception, Results::Warnings], Results::Exception),
    ] {
        let (bsid, brs) = store
            .add_buildset(
                &NewBuildset {
                    builders: vec![b1, b1],
                    reason: "r".into(),
                    ..Default::default()
                },
                150,
            )
            .await
            .unwrap();
        assert_eq!(
            store
                .complete_build_requests(&[brs[0].1], results[0], 151)
                .await
                .unwrap(),
            1
        );
        assert!(
            !store.get_buildset(bsid).await.unwrap().unwrap().complete,
            "one request still open"
        );
        assert_eq!(
            store
                .complete_build_requests(&[brs[1].1], results[1], 152)
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            store
                .complete_build_requests(&[brs[1].1], Results::Failure, 153)
                .await
                .unwrap(),
            0,
            "completes once"
        );
        let bs = store.get_buildset(bsid).await.unwrap().unwrap();
        assert_eq!(
            (bs.complete, bs.results, bs.complete_at),
            (true, Some(want), Some(152)),
            "{results:?}"
        );
    }

    assert!(
        store
            .finish_build_with_state(id1, Results::Warnings, Some("build warnings"), 140)
            .await
            .unwrap()
    );
    assert!(
        !store
            .finish_build_with_state(id1, Results::Failure, None, 141)
            .await
            .unwrap()
    );
    let b = store.get_build(id1).await.unwrap().unwrap();
    assert_eq!(
        (b.results, b.state_string.as_str(), b.complete_at),
        (Some(Results::Warnings), "build warnings", Some(140))
    );
}

/// A log written through its [`LogWriter`] reads back exactly like one written with
/// `append_log`, cap and marker included; finishing merges small chunks.
async fn log_writer(store: Store) {
    let (m, w, b1, _) = setup(&store).await;
    let brs = buildset(&store, &[b1], 0, 100).await;
    let (build, _) = store
        .add_build(
            &NewBuild {
                builderid: b1,
                buildrequestid: brs[0],
                workerid: w,
                masterid: m,
                state_string: String::new(),
            },
            1,
        )
        .await
        .unwrap();
    let (step, _, _) = store.add_step(build, "s").await.unwrap();
    let appends: Vec<String> = (0..40)
        .map(|i| format!("line {i} {}\nmore {i}\n", "x".repeat(i * 7)))
        .chain(["no newline".to_string()])
        .collect();
    let plain = store.add_log(step, "plain", LogType::Stdio).await.unwrap();
    let mut writer = store
        .add_log_writer(
            step,
            "writer",
            LogType::Stdio,
            Some(LogCap::head_only(5000)),
        )
        .await
        .unwrap();
    for a in &appends {
        let o1 = store.append_log(plain, a).await.unwrap();
        let o2 = writer.append(a).await.unwrap();
        assert_eq!(o1, o2, "same outcome for {a:?}");
    }
    assert!(
        store.log_sizes(plain).await.unwrap().2,
        "the cap was reached"
    );
    let wid = writer.id();
    let before = store.log_chunks(wid).await.unwrap().len();
    writer.finish().await.unwrap();
    store.finish_log(plain, true).await.unwrap();
    let a = store.read_log_lines(plain, 0, 10_000).await.unwrap();
    let b = store.read_log_lines(wid, 0, 10_000).await.unwrap();
    assert_eq!(a, b);
    assert!(
        b.last()
            .unwrap()
            .starts_with("[kiln: log truncated at 5000 bytes;"),
        "{:?}",
        b.last()
    );
    assert_eq!(
        store.log_sizes(plain).await.unwrap(),
        store.log_sizes(wid).await.unwrap()
    );
    assert!(store.get_log(wid).await.unwrap().unwrap().complete);
    assert!(
        store.log_chunks(wid).await.unwrap().len() < before,
        "small chunks were merged"
    );
    assert_eq!(
        store.log_chunks(wid).await.unwrap(),
        store.log_chunks(plain).await.unwrap()
    );

    // One big append: nothing to merge, and the writer skips the merge pass.
    let mut big = store
        .add_log_writer(step, "big", LogType::Stdio, None)
        .await
        .unwrap();
    let text: String = (0..2000).map(|i| format!("{i:04}\n")).collect();
    big.append(&text).await.unwrap();
    let id = big.id();
    big.finish().await.unwrap();
    assert_eq!(
        store.read_log_lines(id, 0, 5).await.unwrap(),
        ["0000", "0001", "0002", "0003", "0004", "0005"]
    );
}

/// A capped log keeps its head, a marker saying what was left out, and its last whole lines
/// (with the exit status); a log within its cap is stored whole, with no marker.
async fn log_head_and_tail(store: Store) {
    let (m, w, b1, _) = setup(&store).await;
    let br = buildset(&store, &[b1], 0, 1).await[0];
    let (build, _) = store
        .add_build(
            &NewBuild {
                builderid: b1,
                buildrequestid: br,
                workerid: w,
                masterid: m,
                state_string: String::new(),
            },
            1,
        )
        .await
        .unwrap();
    let (step, _, _) = store.add_step(build, "test").await.unwrap();
    let cap = LogCap {
        max_bytes: 1000,
        tail_bytes: 300,
    };
    let mut big = store
        .add_log_writer(step, "stdio", LogType::Stdio, Some(cap))
        .await
        .unwrap();
    // 400 lines of 10 bytes, in appends of 7 lines, then the exit status (35 bytes).
    let lines: Vec<String> = (0..400).map(|i| format!("oline {i:03}\n")).collect();
    for batch in lines.chunks(7) {
        big.append(&batch.concat()).await.unwrap();
    }
    big.append("hprogram finished with exit code 3\n")
        .await
        .unwrap();
    let id = big.id();
    // Live, the head and the marker are there; the tail is held until the log ends.
    let live = store.read_log_lines(id, 0, 10_000).await.unwrap();
    assert_eq!(live.len(), 71, "{live:?}");
    assert!(
        live[70].starts_with("[kiln: log truncated at 1000 bytes;"),
        "{}",
        live[70]
    );
    big.finish().await.unwrap();

    let all = store.read_log_lines(id, 0, 10_000).await.unwrap();
    // The head: 700 bytes of whole lines.
    let head: Vec<String> = (0..70).map(|i| format!("oline {i:03}")).collect();
    assert_eq!(all[..70], head[..]);
    // The tail: the last whole lines within 300 bytes, the exit status last.
    let mut tail: Vec<String> = (374..400).map(|i| format!("oline {i:03}")).collect();
    tail.push("hprogram finished with exit code 3".into());
    assert_eq!(all[71..], tail[..], "{all:?}");
    // Between them, what was left out.
    assert_eq!(
        all[70],
        "[kiln: log truncated at 1000 bytes; 3040 bytes (304 lines) left out here, the last 295 bytes follow]"
    );
    assert_eq!(store.log_sizes(id).await.unwrap(), (4035, 995, true));
    let log = store.get_log(id).await.unwrap().unwrap();
    assert!(log.complete);
    assert_eq!(log.num_lines, 98);
    let raw: Vec<Vec<u8>> = store.log_raw(id).try_collect().await.unwrap();
    assert!(
        raw.concat()
            .ends_with(b"\nhprogram finished with exit code 3\n")
    );

    // Within the cap but past the head: nothing is left out, so no marker.
    let mut small = store
        .add_log_writer(step, "small", LogType::Stdio, Some(cap))
        .await
        .unwrap();
    let text = lines[..90].concat();
    small.append(&text).await.unwrap();
    let id = small.id();
    small.finish().await.unwrap();
    assert_eq!(
        store
            .read_log_lines(id, 0, 10_000)
            .await
            .unwrap()
            .join("\n")
            + "\n",
        text
    );
    assert_eq!(store.log_sizes(id).await.unwrap(), (900, 900, false));

    // A line longer than the whole tail leaves it out with everything before it.
    let mut long = store
        .add_log_writer(step, "long", LogType::Stdio, Some(cap))
        .await
        .unwrap();
    long.append(&lines[..80].concat()).await.unwrap();
    long.append(&format!("o{}\n", "x".repeat(400)))
        .await
        .unwrap();
    long.append("hprogram finished with exit code 0\n")
        .await
        .unwrap();
    let id = long.id();
    long.finish().await.unwrap();
    let all = store.read_log_lines(id, 0, 10_000).await.unwrap();
    assert_eq!(all.len(), 72, "{all:?}");
    assert!(all[70].contains("(11 lines) left out here"), "{}", all[70]);
    assert_eq!(all[71], "hprogram finished with exit code 0");
}
