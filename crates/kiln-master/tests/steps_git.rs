//! The `git` step against real repositories (`git init` in a temp dir, `file://` URLs),
//! through the in-process worker.

mod steps_support;

use std::fs;
use std::path::Path;

use kiln_engine::results::StepEnd;
use kiln_model::Results;
use serde_json::json;
use steps_support::{Harness, LocalWorker, sh, step};

struct Setup {
    dir: tempfile::TempDir,
    worker: LocalWorker,
    h: Harness,
    url: String,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    fs::create_dir_all(&repo).unwrap();
    sh(
        &repo,
        "git init -q -b main . && git config user.email t@example.org && git config user.name T && echo one > a.txt && git add a.txt && git commit -q -m one",
    );
    fs::create_dir_all(dir.path().join("worker/b1")).unwrap();
    let worker = LocalWorker::new(&dir.path().join("worker"));
    let h = Harness::new(dir.path().join("worker/b1").to_str().unwrap(), dir.path());
    let url = format!("file://{}", repo.display());
    Setup {
        dir,
        worker,
        h,
        url,
    }
}

fn head(repo: &Path) -> String {
    sh(repo, "git rev-parse HEAD").trim().to_string()
}

fn commit(repo: &Path, file: &str, text: &str) -> String {
    sh(
        repo,
        &format!("echo {text} > {file} && git add {file} && git commit -q -m {text}"),
    );
    head(repo)
}

#[tokio::test]
async fn incremental_clones_then_fetches_and_sets_got_revision() {
    let Setup {
        dir,
        worker,
        mut h,
        url,
    } = setup();
    let repo = dir.path().join("repo");
    let build = dir.path().join("worker/b1/build");
    let s = step("git", json!({"repourl": url, "branch": "main"}), json!({}));

    assert_eq!(
        h.run(&worker, &s).await,
        StepEnd::Finished(Results::Success),
        "{}",
        h.logs.text("stdio")
    );
    assert_eq!(h.properties.get("got_revision"), Some(&json!(head(&repo))));
    assert_eq!(fs::read_to_string(build.join("a.txt")).unwrap(), "one\n");
    assert_eq!(sh(&build, "git rev-parse --abbrev-ref HEAD").trim(), "main");
    let stdio = h.logs.text("stdio");
    assert!(
        stdio.contains("hprogram finished with exit code 0\n"),
        "{stdio}"
    );

    // A new commit: the second run fetches into the existing clone.
    let second = commit(&repo, "b.txt", "two");
    fs::write(build.join("local-junk.txt"), "kept by incremental").unwrap();
    assert_eq!(
        h.run(&worker, &s).await,
        StepEnd::Finished(Results::Success),
        "{}",
        h.logs.text("stdio")
    );
    assert_eq!(h.properties.get("got_revision"), Some(&json!(second)));
    assert_eq!(fs::read_to_string(build.join("b.txt")).unwrap(), "two\n");
    assert!(build.join("local-junk.txt").exists());
    let stdio = h.logs.text("stdio");
    // (Matched on the command lines: the environment dump may mention "clone" in a path.)
    assert!(
        stdio.contains("hgit fetch") && !stdio.contains("hgit clone"),
        "{stdio}"
    );
    let names = worker.command_names();
    assert_eq!(names[0], "listdir", "checks for .git first");
}

#[tokio::test]
async fn source_stamp_revision_and_branch_win() {
    let Setup {
        dir,
        worker,
        mut h,
        url,
    } = setup();
    let repo = dir.path().join("repo");
    let first = head(&repo);
    sh(&repo, "git checkout -q -b feature");
    let feature = commit(&repo, "f.txt", "feat");
    sh(&repo, "git checkout -q main");
    commit(&repo, "m.txt", "more");

    h.sources.insert(
        String::new(),
        kiln_model::SourceStamp {
            branch: Some("feature".into()),
            ..Default::default()
        },
    );
    let s = step(
        "git",
        json!({"repourl": url, "branch": "main", "mode": "full", "method": "clobber"}),
        json!({}),
    );
    assert_eq!(
        h.run(&worker, &s).await,
        StepEnd::Finished(Results::Success),
        "{}",
        h.logs.text("stdio")
    );
    assert_eq!(h.properties.get("got_revision"), Some(&json!(feature)));

    h.sources.insert(
        String::new(),
        kiln_model::SourceStamp {
            branch: Some("main".into()),
            revision: Some(first.clone()),
            ..Default::default()
        },
    );
    assert_eq!(
        h.run(&worker, &s).await,
        StepEnd::Finished(Results::Success),
        "{}",
        h.logs.text("stdio")
    );
    assert_eq!(h.properties.get("got_revision"), Some(&json!(first)));
    assert!(!dir.path().join("worker/b1/build/m.txt").exists());
}

#[tokio::test]
async fn full_fresh_and_clean_remove_untracked_files() {
    let Setup {
        dir,
        worker,
        mut h,
        url,
    } = setup();
    let repo = dir.path().join("repo");
    let build = dir.path().join("worker/b1/build");
    sh(
        &repo,
        "echo '*.o' > .gitignore && git add .gitignore && git commit -q -m ignore",
    );
    let clean = step(
        "git",
        json!({"repourl": url, "branch": "main", "mode": "full", "method": "clean"}),
        json!({}),
    );
    assert_eq!(
        h.run(&worker, &clean).await,
        StepEnd::Finished(Results::Success)
    );
    fs::write(build.join("untracked.txt"), "x").unwrap();
    fs::write(build.join("ignored.o"), "x").unwrap();
    assert_eq!(
        h.run(&worker, &clean).await,
        StepEnd::Finished(Results::Success),
        "{}",
        h.logs.text("stdio")
    );
    assert!(!build.join("untracked.txt").exists());
    assert!(
        build.join("ignored.o").exists(),
        "clean keeps ignored files"
    );

    let fresh = step(
        "git",
        json!({"repourl": url, "branch": "main", "mode": "full"}),
        json!({}),
    );
    assert_eq!(
        h.run(&worker, &fresh).await,
        StepEnd::Finished(Results::Success),
        "{}",
        h.logs.text("stdio")
    );
    assert!(
        !build.join("ignored.o").exists(),
        "fresh (the default method) removes ignored files too"
    );
    assert!(h.logs.text("stdio").contains("clean -f -f -d -x"));
    assert_eq!(h.properties.get("got_revision"), Some(&json!(head(&repo))));
}

#[tokio::test]
async fn copy_updates_source_then_copies_it() {
    let Setup {
        dir,
        worker,
        mut h,
        url,
    } = setup();
    let repo = dir.path().join("repo");
    let b = dir.path().join("worker/b1");
    let s = step(
        "git",
        json!({"repourl": url, "branch": "main", "mode": "full", "method": "copy"}),
        json!({}),
    );
    assert_eq!(
        h.run(&worker, &s).await,
        StepEnd::Finished(Results::Success),
        "{}",
        h.logs.text("stdio")
    );
    assert!(b.join("source/.git").is_dir());
    assert_eq!(fs::read_to_string(b.join("build/a.txt")).unwrap(), "one\n");
    fs::write(b.join("build/junk"), "x").unwrap();
    let second = commit(&repo, "c.txt", "three");
    assert_eq!(
        h.run(&worker, &s).await,
        StepEnd::Finished(Results::Success),
        "{}",
        h.logs.text("stdio")
    );
    assert!(
        !b.join("build/junk").exists(),
        "the workdir is replaced by the copy"
    );
    assert_eq!(
        fs::read_to_string(b.join("build/c.txt")).unwrap(),
        "three\n"
    );
    assert_eq!(h.properties.get("got_revision"), Some(&json!(second)));
    assert!(worker.command_names().contains(&"cpdir".to_string()));
}

#[tokio::test]
async fn shallow_and_filtered_clone() {
    let Setup {
        dir,
        worker,
        mut h,
        url,
    } = setup();
    let repo = dir.path().join("repo");
    commit(&repo, "b.txt", "two");
    let last = commit(&repo, "c.txt", "three");
    // Partial clones need the server side to allow filters.
    sh(&repo, "git config uploadpack.allowFilter true");
    let s = step(
        "git",
        json!({"repourl": url, "branch": "main", "mode": "full", "method": "clobber", "shallow": true, "filters": ["blob:none"]}),
        json!({}),
    );
    assert_eq!(
        h.run(&worker, &s).await,
        StepEnd::Finished(Results::Success),
        "{}",
        h.logs.text("stdio")
    );
    let build = dir.path().join("worker/b1/build");
    assert_eq!(
        sh(&build, "git rev-list --count HEAD").trim(),
        "1",
        "depth 1"
    );
    assert_eq!(h.properties.get("got_revision"), Some(&json!(last)));
    assert!(h.logs.text("stdio").contains("--filter"));
    assert_eq!(
        sh(&build, "git config remote.origin.partialclonefilter").trim(),
        "blob:none"
    );
}

#[tokio::test]
async fn clobber_on_failure_reclones_a_broken_checkout() {
    let Setup {
        dir,
        worker,
        mut h,
        url,
    } = setup();
    let repo = dir.path().join("repo");
    let build = dir.path().join("worker/b1/build");
    // A `.git` that is not a repository: listdir says "update", and the fetch fails.
    fs::create_dir_all(build.join(".git")).unwrap();
    let s = step("git", json!({"repourl": url, "branch": "main"}), json!({}));
    assert_eq!(
        h.run(&worker, &s).await,
        StepEnd::Finished(Results::Failure)
    );
    assert_eq!(h.logs.last_state(), "git (failure)");
    assert_eq!(h.properties.get("got_revision"), None);

    let s = step(
        "git",
        json!({"repourl": url, "branch": "main", "clobber_on_failure": true}),
        json!({}),
    );
    assert_eq!(
        h.run(&worker, &s).await,
        StepEnd::Finished(Results::Success),
        "{}",
        h.logs.text("stdio")
    );
    assert_eq!(h.properties.get("got_revision"), Some(&json!(head(&repo))));
    assert!(worker.command_names().contains(&"rmdir".to_string()));
}

#[tokio::test]
async fn submodules_are_checked_out() {
    let Setup {
        dir,
        worker,
        mut h,
        url,
    } = setup();
    let sub = dir.path().join("sub");
    fs::create_dir_all(&sub).unwrap();
    sh(
        &sub,
        "git init -q -b main . && git config user.email t@example.org && git config user.name T && echo inner > inner.txt && git add . && git commit -q -m inner",
    );
    let repo = dir.path().join("repo");
    sh(
        &repo,
        &format!(
            "git -c protocol.file.allow=always submodule add -q file://{} deps/sub && git commit -q -m sub",
            sub.display()
        ),
    );
    h.builder_env.insert(
        "GIT_CONFIG_COUNT".into(),
        kiln_config::Renderable::Text("1".into()),
    );
    h.builder_env.insert(
        "GIT_CONFIG_KEY_0".into(),
        kiln_config::Renderable::Text("protocol.file.allow".into()),
    );
    h.builder_env.insert(
        "GIT_CONFIG_VALUE_0".into(),
        kiln_config::Renderable::Text("always".into()),
    );
    let s = step(
        "git",
        json!({"repourl": url, "branch": "main", "submodules": true}),
        json!({}),
    );
    assert_eq!(
        h.run(&worker, &s).await,
        StepEnd::Finished(Results::Success),
        "{}",
        h.logs.text("stdio")
    );
    assert_eq!(
        fs::read_to_string(dir.path().join("worker/b1/build/deps/sub/inner.txt")).unwrap(),
        "inner\n"
    );
    // The incremental update path runs the submodule commands too.
    assert_eq!(
        h.run(&worker, &s).await,
        StepEnd::Finished(Results::Success),
        "{}",
        h.logs.text("stdio")
    );
    assert!(h.logs.text("stdio").contains("submodule"));
}
