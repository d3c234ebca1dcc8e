//! Steps against a real worker in-process (`kiln-worker`'s command implementations): real
//! processes, real files.

mod steps_support;

use std::fs;

use kiln_config::Renderable;
use kiln_engine::results::StepEnd;
use kiln_model::{LogType, Results};
use serde_json::json;
use steps_support::{Harness, LocalWorker, step};

fn setup() -> (tempfile::TempDir, LocalWorker, Harness) {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("worker/b1")).unwrap();
    fs::create_dir_all(dir.path().join("master")).unwrap();
    let worker = LocalWorker::new(&dir.path().join("worker"));
    let h = Harness::new(
        dir.path().join("worker/b1").to_str().unwrap(),
        &dir.path().join("master"),
    );
    (dir, worker, h)
}

#[tokio::test]
async fn shell_streams_prefixed_stdio_and_decodes_rc() {
    let (dir, worker, mut h) = setup();
    h.builder_env
        .insert("FROM_BUILDER".into(), Renderable::Text("b".into()));
    let s = step(
        "shell",
        json!({"command": "echo out; echo err >&2; printf 'a\\nb\\n'; echo $FROM_BUILDER$FROM_STEP; exit 3"}),
        json!({"env": {"FROM_STEP": "s"}}),
    );
    let end = h.run(&worker, &s).await;
    assert_eq!(end, StepEnd::Finished(Results::Failure));
    let stdio = h.logs.text("stdio");
    assert_eq!(h.logs.logs[0].log_type, LogType::Stdio);
    for line in [
        "oout\n",
        "eerr\n",
        "oa\nob\n",
        "obs\n",
        "hprogram finished with exit code 3\n",
    ] {
        assert!(stdio.contains(line), "{line:?} missing from:\n{stdio}");
    }
    // Every line carries its channel.
    assert!(
        stdio.lines().all(|l| l.starts_with(['h', 'o', 'e'])),
        "{stdio}"
    );
    // The command ran in the default workdir `build` under the builder directory.
    assert!(dir.path().join("worker/b1/build").is_dir());
    let spec = worker.started.lock().unwrap()[0].clone();
    assert_eq!(spec.name, "shell");
    assert_eq!(spec.builder.as_deref(), Some("b1"));
    assert_eq!(h.logs.last_state(), "shell (failure)");

    let ok = step(
        "shell",
        json!({"command": ["sh", "-c", "exit 5"], "decode_rc": {"0": 0, "5": 1}}),
        json!({"workdir": "other"}),
    );
    assert_eq!(
        h.run(&worker, &ok).await,
        StepEnd::Finished(Results::Warnings)
    );
    assert!(dir.path().join("worker/b1/other").is_dir());
}

#[tokio::test]
async fn warning_pattern_counts_lines() {
    let (_dir, worker, mut h) = setup();
    let s = step(
        "compile",
        json!({"command": "echo 'a.c:1: warning: x'; echo fine; echo 'b.c:2: warning: y' >&2", "warning_pattern": "warning:"}),
        json!({}),
    );
    assert_eq!(
        h.run(&worker, &s).await,
        StepEnd::Finished(Results::Warnings)
    );
    // stdout and stderr are separate pipes: their relative order is not fixed.
    let mut warnings: Vec<String> = h.logs.text("warnings").lines().map(String::from).collect();
    warnings.sort();
    assert_eq!(warnings, ["a.c:1: warning: x", "b.c:2: warning: y"]);
    assert_eq!(h.logs.last_state(), "compile (warnings: 2)");
    assert_eq!(h.properties.get("warnings-count"), Some(&json!(2)));
}

#[tokio::test]
async fn set_property_from_command_strips_stdout() {
    let (_dir, worker, mut h) = setup();
    let s = step(
        "set_property_from_command",
        json!({"command": "echo '  v1.2 '", "property": "version"}),
        json!({}),
    );
    assert_eq!(
        h.run(&worker, &s).await,
        StepEnd::Finished(Results::Success)
    );
    assert_eq!(h.properties.get("version"), Some(&json!("v1.2")));
    assert_eq!(h.properties.0["version"].1, "SetPropertyFromCommand Step");
    assert_eq!(h.logs.last_state(), "property 'version' set");
    let raw = step(
        "set_property_from_command",
        json!({"command": "echo x", "property": "raw", "strip": false}),
        json!({}),
    );
    h.run(&worker, &raw).await;
    assert_eq!(h.properties.get("raw"), Some(&json!("x\n")));
    let bad = step(
        "set_property_from_command",
        json!({"command": "echo y; exit 1", "property": "bad"}),
        json!({}),
    );
    assert_eq!(
        h.run(&worker, &bad).await,
        StepEnd::Finished(Results::Failure)
    );
    assert_eq!(h.properties.get("bad"), None);
}

#[tokio::test]
async fn missing_secret_is_an_exception_in_err_text() {
    let (_dir, worker, mut h) = setup();
    let s = step(
        "shell",
        json!({"command": {"__interpolate": "echo %(secret:token)s", "kwargs": {}}}),
        json!({}),
    );
    assert_eq!(h.run(&worker, &s).await, StepEnd::Exception);
    assert!(
        h.logs.text("err.text").contains("\"token\""),
        "{}",
        h.logs.text("err.text")
    );
    assert!(
        worker.started.lock().unwrap().is_empty(),
        "nothing runs after a failed render"
    );
    // With the secret, the same step runs.
    h.secrets.insert("token", "s3cret");
    assert_eq!(
        h.run(&worker, &s).await,
        StepEnd::Finished(Results::Success)
    );
    assert!(h.logs.text("stdio").contains("os3cret\n"));
}

#[tokio::test]
async fn timeout_kills_and_says_so() {
    let (_dir, worker, mut h) = setup();
    let s = step(
        "shell",
        json!({"command": "sleep 30"}),
        json!({"max_time": 1}),
    );
    assert_eq!(
        h.run(&worker, &s).await,
        StepEnd::Finished(Results::Failure)
    );
    assert!(
        h.logs.last_state().contains("timed out"),
        "{}",
        h.logs.last_state()
    );
}

#[tokio::test]
async fn stop_interrupts_the_running_command() {
    let (_dir, worker, mut h) = setup();
    let s = step(
        "shell",
        json!({"command": "echo started; sleep 30"}),
        json!({}),
    );
    let tx = h.stop_tx.clone();
    let mut rx = tx.subscribe();
    let stopper = tokio::spawn(async move {
        // Stop once the step is running (it has subscribed and the command started).
        while tx.receiver_count() < 3 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        tx.send_replace(Some("user asked".into()));
    });
    let end = h.run(&worker, &s).await;
    stopper.await.unwrap();
    assert_eq!(end, StepEnd::Cancelled);
    assert!(rx.borrow_and_update().is_some());
    assert!(
        h.logs.text("stdio").contains("command interrupted"),
        "{}",
        h.logs.text("stdio")
    );
}

#[tokio::test]
async fn file_upload_and_download_move_real_bytes() {
    let (dir, worker, mut h) = setup();
    let build = dir.path().join("worker/b1/build");
    fs::create_dir_all(&build).unwrap();
    let payload: Vec<u8> = (0..600_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(build.join("art.bin"), &payload).unwrap();
    let up = step(
        "file_upload",
        json!({"workersrc": "art.bin", "masterdest": "out/deep/art.bin", "mode": 0o600, "url": "http://x/art.bin"}),
        json!({}),
    );
    assert_eq!(
        h.run(&worker, &up).await,
        StepEnd::Finished(Results::Success)
    );
    let dest = dir.path().join("master/out/deep/art.bin");
    assert_eq!(fs::read(&dest).unwrap(), payload);
    assert_eq!(
        h.logs.urls,
        vec![("art.bin".to_string(), "http://x/art.bin".to_string())]
    );
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let spec = worker.started.lock().unwrap().last().cloned().unwrap();
    assert_eq!(spec.name, "upload_file");
    assert_eq!(
        kiln_proto::text_of(spec.args.get(&["path"]).unwrap()).unwrap(),
        build.join("art.bin").to_str().unwrap()
    );
    assert_eq!(
        spec.args.get(&["blocksize"]).unwrap().as_u64(),
        Some(262144)
    );

    // A missing source: FAILURE, and no file left on the master.
    let missing = step(
        "file_upload",
        json!({"workersrc": "nope.bin", "masterdest": "out/nope.bin"}),
        json!({}),
    );
    assert_eq!(
        h.run(&worker, &missing).await,
        StepEnd::Finished(Results::Failure)
    );
    assert!(!dir.path().join("master/out/nope.bin").exists());
    assert_eq!(
        fs::read_dir(dir.path().join("master/out")).unwrap().count(),
        1,
        "no temp files left"
    );

    let down = step(
        "file_download",
        json!({"mastersrc": "out/deep/art.bin", "workerdest": "sub/copy.bin", "mode": 0o755}),
        json!({}),
    );
    assert_eq!(
        h.run(&worker, &down).await,
        StepEnd::Finished(Results::Success)
    );
    assert_eq!(fs::read(build.join("sub/copy.bin")).unwrap(), payload);
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(build.join("sub/copy.bin"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o755
        );
    }
    let absent = step(
        "file_download",
        json!({"mastersrc": "no/such", "workerdest": "x"}),
        json!({}),
    );
    assert_eq!(
        h.run(&worker, &absent).await,
        StepEnd::Finished(Results::Failure)
    );
    assert!(
        h.logs
            .text("stderr")
            .contains("File 'no/such' not available at master")
    );

    h.properties.set("who", "world", "test");
    let s = step(
        "string_download",
        json!({"s": {"__interpolate": "hello %(prop:who)s\n", "kwargs": {}}, "workerdest": "greeting.txt"}),
        json!({}),
    );
    assert_eq!(
        h.run(&worker, &s).await,
        StepEnd::Finished(Results::Success)
    );
    assert_eq!(
        fs::read_to_string(build.join("greeting.txt")).unwrap(),
        "hello world\n"
    );
}

#[tokio::test]
async fn directory_upload_unpacks_each_compression() {
    let (dir, worker, mut h) = setup();
    let tree = dir.path().join("worker/b1/build/dist");
    fs::create_dir_all(tree.join("lib/x")).unwrap();
    fs::write(tree.join("README"), "readme\n").unwrap();
    fs::write(tree.join("lib/x/big.bin"), vec![42u8; 100_000]).unwrap();
    std::os::unix::fs::symlink("../README", tree.join("lib/readme-link")).unwrap();
    for (compress, dest) in [
        (json!(null), "plain"),
        (json!("gz"), "gz"),
        (json!("bz2"), "bz2"),
    ] {
        let mut args = json!({"workersrc": "dist", "masterdest": format!("up/{dest}")});
        if !compress.is_null() {
            args["compress"] = compress;
        }
        let s = step("directory_upload", args, json!({}));
        assert_eq!(
            h.run(&worker, &s).await,
            StepEnd::Finished(Results::Success),
            "{dest}: {:?}",
            h.logs.logs
        );
        let root = dir.path().join("master/up").join(dest);
        assert_eq!(fs::read_to_string(root.join("README")).unwrap(), "readme\n");
        assert_eq!(
            fs::read(root.join("lib/x/big.bin")).unwrap(),
            vec![42u8; 100_000]
        );
        assert_eq!(
            fs::read_link(root.join("lib/readme-link"))
                .unwrap()
                .to_str(),
            Some("../README")
        );
    }
    // Only the three trees: the temporary tarballs are gone.
    let mut left: Vec<_> = fs::read_dir(dir.path().join("master/up"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["bz2", "gz", "plain"]);
}

#[tokio::test]
async fn mkdir_rmdir_rmfile_use_builder_relative_paths() {
    let (dir, worker, mut h) = setup();
    let b = dir.path().join("worker/b1");
    assert_eq!(
        h.run(
            &worker,
            &step("mkdir", json!({"dir": "build/a/b"}), json!({}))
        )
        .await,
        StepEnd::Finished(Results::Success)
    );
    assert!(b.join("build/a/b").is_dir());
    fs::write(b.join("build/a/f.txt"), "x").unwrap();
    assert_eq!(
        h.run(
            &worker,
            &step("rmfile", json!({"file": "build/a/f.txt"}), json!({}))
        )
        .await,
        StepEnd::Finished(Results::Success)
    );
    assert!(!b.join("build/a/f.txt").exists());
    assert_eq!(
        h.run(
            &worker,
            &step("rmfile", json!({"file": "build/a/f.txt"}), json!({}))
        )
        .await,
        StepEnd::Finished(Results::Failure)
    );
    assert_eq!(
        h.run(
            &worker,
            &step("rmdir", json!({"dir": "build/a"}), json!({}))
        )
        .await,
        StepEnd::Finished(Results::Success)
    );
    assert!(!b.join("build/a").exists());
    assert!(b.join("build").is_dir());
    let names = worker.command_names();
    assert_eq!(names, ["mkdir", "rmfile", "rmfile", "rmdir"]);
}

#[tokio::test]
async fn trigger_passes_rendered_properties_and_sources() {
    let (_dir, worker, mut h) = setup();
    h.properties.set("got_revision", "abc123", "Git");
    h.sources.insert(
        String::new(),
        kiln_model::SourceStamp {
            branch: Some("main".into()),
            ..Default::default()
        },
    );
    let s = step(
        "trigger",
        json!({"scheduler_names": ["t1"], "wait_for_finish": true, "set_properties": {"parent": {"__interpolate": "rev-%(prop:got_revision)s", "kwargs": {}}}}),
        json!({}),
    );
    h.triggerer.result = Results::Warnings;
    assert_eq!(
        h.run(&worker, &s).await,
        StepEnd::Finished(Results::Warnings)
    );
    {
        let calls = h.triggerer.calls.lock().unwrap();
        let (names, props, sources, wait) = &calls[0];
        assert_eq!(names, &["t1".to_string()]);
        assert_eq!(props.get("parent"), Some(&json!("rev-abc123")));
        assert_eq!(sources[""].revision.as_deref(), Some("abc123"));
        assert_eq!(sources[""].branch.as_deref(), Some("main"));
        assert!(*wait);
    }
    let nowait = step(
        "trigger",
        json!({"scheduler_names": ["t1"], "update_sourcestamp": false}),
        json!({}),
    );
    assert_eq!(
        h.run(&worker, &nowait).await,
        StepEnd::Finished(Results::Success)
    );
    assert!(h.triggerer.calls.lock().unwrap()[1].2.is_empty());
}
