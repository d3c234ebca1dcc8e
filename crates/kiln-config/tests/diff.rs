mod common;

use common::Dir;
use kiln_config::*;

const OLD: &str = r#"
WORKERS = [worker("w1", password = secret("w1")), worker("w2", password_hash = "$argon2id$a"), worker("w3", password_hash = "$argon2id$b")]
BUILDERS = [
    builder(name = "keep", workers = ["w1"], steps = [shell(command = "make")]),
    builder(name = "change", workers = ["w1"], steps = [shell(command = "make")]),
    builder(name = "drop", workers = ["w2"]),
]
SCHEDULERS = [
    single_branch("main", branch = "main", tree_stable_timer = 30, builder_names = ["keep", "change"]),
    force("force", builder_names = ["keep", "change", "drop"]),
]
"#;

// Same objects moved to other lines, one builder's step changed, one builder and worker
// removed, one added, the force scheduler changed, w2's hash changed.
const NEW: &str = r#"


WORKERS = [
    worker("w1", password = secret("w1")),
    worker("w2", password_hash = "$argon2id$CHANGED"),
    worker("w4", password_hash = "$argon2id$c"),
]
BUILDERS = [
    builder(name = "keep", workers = ["w1"], steps = [shell(command = "make")]),
    builder(name = "change", workers = ["w1"], steps = [shell(command = "make -j8")]),
    builder(name = "new", workers = ["w4"]),
]
SCHEDULERS = [
    single_branch("main", branch = "main", tree_stable_timer = 30, builder_names = ["keep", "change"]),
    force("force", builder_names = ["keep", "change", "new"]),
]
"#;

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn diff_names_what_was_added_removed_and_changed() {
    let a = Dir::new();
    a.secret("w1", "pw");
    let old = a.load(OLD).unwrap();
    let b = Dir::new();
    b.secret("w1", "pw");
    let new = b.load(NEW).unwrap();

    let d = ConfigDiff::between(&old, &new);
    assert_eq!(
        d.builders,
        NamedDiff {
            added: s(&["new"]),
            removed: s(&["drop"]),
            changed: s(&["change"])
        }
    );
    assert_eq!(
        d.workers,
        NamedDiff {
            added: s(&["w4"]),
            removed: s(&["w3"]),
            changed: s(&["w2"])
        }
    );
    assert_eq!(
        d.schedulers,
        NamedDiff {
            added: vec![],
            removed: vec![],
            changed: s(&["force"])
        }
    );
    assert!(d.master.is_empty());
    assert!(!d.is_empty());

    // A config against itself (even reloaded from another place) has no difference.
    assert!(ConfigDiff::between(&old, &old).is_empty());
    assert!(ConfigDiff::between(&new, &b.load(NEW).unwrap()).is_empty());
}

#[test]
fn a_rotated_secret_changes_the_worker() {
    let a = Dir::new();
    a.secret("w1", "old-pw");
    let old = a.load(OLD).unwrap();
    a.secret("w1", "new-pw");
    let new = a.load(OLD).unwrap();
    let d = ConfigDiff::between(&old, &new);
    assert_eq!(d.workers.changed, s(&["w1"]));
    assert!(d.builders.is_empty() && d.schedulers.is_empty());
}

#[test]
fn master_settings_change() {
    let a = Dir::new();
    let old = a.load("WORKERS = []\nBUILDERS = []\n").unwrap();
    let new = a
        .load("MASTER = master(web_port = 8080)\nWORKERS = []\nBUILDERS = []\n")
        .unwrap();
    let d = ConfigDiff::between(&old, &new);
    assert_eq!(
        d.master,
        ["web_port"],
        "names exactly the setting that changed"
    );
    assert_eq!(new.master.web_port, 8080);
    assert_eq!(old.master.db_url, "sqlite:state.sqlite");
}

#[test]
fn a_broken_reload_leaves_the_running_config() {
    // The reload contract: load() either returns a whole new config or an error; the caller
    // keeps the old one on error.
    let a = Dir::new();
    a.secret("w1", "pw");
    let running = a.load(OLD).unwrap();
    let broken = OLD.replace(
        "builder(name = \"drop\", workers = [\"w2\"])",
        "builder(name = \"drop\", workers = [\"w9\"])",
    );
    let e = a.load(&broken).unwrap_err();
    assert!(e.to_string().contains("unknown worker \"w9\""), "{e}");
    assert_eq!(running.builders.len(), 3);
}
