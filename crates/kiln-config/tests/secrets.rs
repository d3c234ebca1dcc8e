mod common;

use common::Dir;
use kiln_config::*;

#[test]
fn secrets_come_from_the_dir_or_the_environment() {
    let d = Dir::new();
    d.secret("from-dir", "dir-value\n");
    std::fs::write(d.file(), "WORKERS = [worker(\"w1\", password = secret(\"from-dir\")), worker(\"w2\", password = secret(\"kiln-test-env-only\"))]\nBUILDERS = []\n").unwrap();
    // ignore_env: the env-only secret is missing
    let e = load_with(
        d.dir.path(),
        &LoadOptions {
            ignore_env: true,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("KILN_SECRET_KILN_TEST_ENV_ONLY"),
        "{e}"
    );
    // SAFETY: this variable is used by this test only.
    unsafe { std::env::set_var("KILN_SECRET_KILN_TEST_ENV_ONLY", "env-value") };
    let cfg = load(d.dir.path()).unwrap();
    assert_eq!(cfg.secrets.get("from-dir"), Some("dir-value"));
    assert_eq!(cfg.secrets.get("kiln-test-env-only"), Some("env-value"));
    // an explicit secrets dir
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("from-dir"), "other").unwrap();
    let cfg = load_with(
        d.dir.path(),
        &LoadOptions {
            secrets_dir: Some(other.path().into()),
            ignore_env: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(cfg.secrets.get("from-dir"), Some("other"));
}

#[test]
fn redactor_hides_every_secret() {
    let r = Redactor::new([
        ("pw", "hunter2"),
        ("token", "ghp_abc123"),
        ("long", "hunter2hunter2"),
        ("empty", ""),
    ]);
    assert_eq!(
        r.redact("login hunter2 then ghp_abc123 and hunter2hunter2, hunter2"),
        "login <secret:pw> then <secret:token> and <secret:long>, <secret:pw>"
    );
    assert_eq!(r.redact("nothing here"), "nothing here");
    let mut v = serde_json::json!({"cmd": ["git", "clone", "https://x:ghp_abc123@github.com"], "hunter2": 1});
    r.redact_json(&mut v);
    assert_eq!(
        v,
        serde_json::json!({"cmd": ["git", "clone", "https://x:<secret:token>@github.com"], "<secret:pw>": 1})
    );
}

#[test]
fn config_secrets_redact_and_render() {
    let d = Dir::new();
    d.secret("gh-token", "ghp_s3cr3t");
    d.secret("w1", "pw1");
    let cfg = d
        .load(
            r#"WORKERS = [worker("w1", password = secret("w1"))]
BUILDERS = [builder(name = "b", workers = ["w1"], steps = [
    git(repourl = interpolate("https://bot:%(secret:gh-token)s@github.com/python/cpython.git")),
])]
"#,
        )
        .unwrap();
    let red = cfg.redactor();
    let StepKind::Git(g) = &cfg.builders[0].steps[0].kind else {
        panic!()
    };
    let ctx = RenderContext {
        secrets: Some(&cfg.secrets),
        ..Default::default()
    };
    let url = g.repourl.render(&ctx).unwrap();
    assert_eq!(url, "https://bot:ghp_s3cr3t@github.com/python/cpython.git");
    assert_eq!(
        red.redact(&format!("fatal: could not read {url}")),
        "fatal: could not read https://bot:<secret:gh-token>@github.com/python/cpython.git"
    );
    assert_eq!(red.redact("auth pw1"), "auth <secret:w1>");
    // no secret value in the serialized config or its Debug form
    let text = format!("{} {cfg:?}", serde_json::to_string(&cfg).unwrap());
    assert!(!text.contains("ghp_s3cr3t") && !text.contains("pw1"));
    // rendering without the secrets fails rather than leaking a placeholder into a command
    assert!(g.repourl.render(&RenderContext::default()).is_err());
}
