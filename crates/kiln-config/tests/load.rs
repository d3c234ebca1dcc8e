mod common;

use common::{Dir, W};
use kiln_config::*;
use kiln_model::Results;

#[test]
fn complete_example_loads() {
    let d = Dir::new();
    d.secret("bcannon-wasi", "hunter2\n");
    let src = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/example.star"
    ))
    .unwrap();
    let cfg = d.load(&src).unwrap();

    assert_eq!(cfg.master.title, "Python");
    assert_eq!(cfg.master.worker_port, 9020);
    assert_eq!(cfg.master.tls_key.as_deref(), Some("/etc/kiln/key.pem"));

    let w = cfg.worker("bcannon-wasi").unwrap();
    assert_eq!(
        w.password,
        Some(SecretRef {
            name: "bcannon-wasi".into()
        })
    );
    assert_eq!(w.max_builds, Some(2));
    assert_eq!(cfg.secrets.get("bcannon-wasi"), Some("hunter2"));
    let win = cfg.worker("ware-win11").unwrap();
    assert!(
        win.password_hash
            .as_deref()
            .unwrap()
            .starts_with("$argon2id$")
    );
    let a = &win.availability[0];
    assert!(a.not && a.start == 22 * 60 && a.end == 8 * 60);
    let at = |h: u32| {
        chrono::DateTime::parse_from_rfc3339(&format!("2026-01-01T{h:02}:30:00Z"))
            .unwrap()
            .to_utc()
    };
    assert!(!a.allows(at(23)) && !a.allows(at(3)) && a.allows(at(12)));

    assert_eq!(cfg.builders.len(), 2);
    let b = cfg.builder("x86-64 main").unwrap();
    assert!(b.collapse_requests, "collapse_requests defaults on");
    assert_eq!(b.priority, 1);
    assert_eq!(b.tags, ["main", "unix"]);
    let kinds: Vec<_> = b.steps.iter().map(|s| s.kind.name()).collect();
    assert_eq!(
        kinds,
        [
            "git",
            "configure",
            "compile",
            "test",
            "file_upload",
            "rmdir"
        ]
    );
    match &b.steps[0].kind {
        StepKind::Git(g) => {
            assert_eq!((g.mode, g.method), (GitMode::Full, Some(GitMethod::Fresh)));
            assert_eq!(g.shallow, Some(Shallow::Flag(true)));
            assert_eq!(g.filters, ["blob:none"]);
            assert!(g.clobber_on_failure);
        }
        k => panic!("{k:?}"),
    }
    assert!(b.steps[0].flags.halt_on_failure);
    assert!(b.steps[0].loc.line > 1);
    match &b.steps[3].kind {
        StepKind::Test(t) => {
            assert_eq!(t.decode_rc.get(&0), Some(&Results::Success));
            assert_eq!(t.decode_rc.get(&5), Some(&Results::Warnings));
        }
        k => panic!("{k:?}"),
    }
    assert_eq!(b.steps[3].flags.timeout, Some(1200));
    assert_eq!(b.steps[3].flags.max_time, Some(7200));
    let upload = &b.steps[4];
    assert_eq!(upload.flags.locks[0].lock.name, "upload");
    assert_eq!(upload.flags.locks[0].access, AccessMode::Counting);
    let mut props = kiln_model::Properties::default();
    assert!(!upload.flags.do_step_if.as_ref().unwrap().eval(&props));
    props.set("upload", true, "test");
    assert!(upload.flags.do_step_if.as_ref().unwrap().eval(&props));
    assert!(b.steps[5].flags.always_run);
    match &b.steps[2].flags.locks[..] {
        [l] => assert_eq!(
            (l.lock.scope, l.lock.max_count, l.access),
            (LockScope::Worker, 2, AccessMode::Exclusive)
        ),
        l => panic!("{l:?}"),
    }
    assert_eq!(cfg.locks.len(), 2);

    assert_eq!(cfg.schedulers.len(), 3);
    match &cfg.scheduler("main").unwrap().kind {
        SchedulerKind::SingleBranch(s) => {
            assert_eq!(s.tree_stable_timer, Some(5));
            assert_eq!(s.file_not_important, ["Doc/**"]);
        }
        k => panic!("{k:?}"),
    }
    match &cfg.scheduler("force").unwrap().kind {
        SchedulerKind::Force(f) => {
            assert_eq!(f.params.len(), 2);
            assert_eq!(f.params[1].kind, ForceParamType::Bool);
        }
        k => panic!("{k:?}"),
    }
    assert_eq!(cfg.scheduler("force").unwrap().builder_names.len(), 2);
    match &cfg.scheduler("nightly").unwrap().kind {
        SchedulerKind::Nightly(n) => assert_eq!(n.timezone, "Europe/Amsterdam"),
        k => panic!("{k:?}"),
    }

    // The typed config round-trips through JSON (the form a master may keep), without secrets.
    let json = serde_json::to_string(&cfg).unwrap();
    assert!(!json.contains("hunter2"));
    let back: MasterConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back.builders, cfg.builders);
    assert!(!format!("{cfg:?}").contains("hunter2"));

    let s = check(d.dir.path()).unwrap();
    assert_eq!(
        (s.workers, s.builders, s.schedulers, s.locks, s.secrets),
        (2, 2, 3, 2, 1)
    );
}

#[test]
fn every_step_and_scheduler_kind() {
    let d = Dir::new();
    let src = format!(
        r#"{W}
BUILDERS = [builder(name = "b", workers = ["w1"], builddir = "bd", description = "all kinds", steps = [
    shell(command = "echo hi", workdir = "build", env = {{"A": prop("a", default = "x")}}, description = "saying hi"),
    set_property_from_command(command = ["git", "rev-parse", "HEAD"], property = "rev"),
    file_upload(workersrc = "a", masterdest = "b"),
    directory_upload(workersrc = "d", masterdest = "e", compress = "gz"),
    file_download(mastersrc = "f", workerdest = "g", mode = 0o644),
    string_download(s = interpolate("%(prop:x)s"), workerdest = "h"),
    mkdir(dir = "m"), rmdir(dir = "m"), rmfile(file = "x"),
    trigger(scheduler_names = ["t"], wait_for_finish = True, set_properties = {{"p": "v"}}),
    git(repourl = "https://example.org/r.git", mode = "incremental", shallow = 10),
    shell(command = "x", do_step_if = prop_not_equals("os", "windows"), sigterm_time = 5),
])]
SCHEDULERS = [
    triggerable("t", builder_names = ["b"]),
    periodic("p", period = 3600, builder_names = ["b"]),
    dependent("d", upstream = "p", builder_names = ["b"]),
    any_branch("a", branches = ["main", "3.14"], file_is_important = ["Lib/**"], only_important = True, builder_names = ["b"]),
    force("f", builder_names = ["b"], params = [choice_param("c", choices = ["x", "y"], default = "y"), int_param("n", default = 3), text_param("t")]),
]
"#
    );
    let cfg = d.load(&src).unwrap();
    let b = &cfg.builders[0];
    assert_eq!(b.steps.len(), 12);
    assert_eq!(b.steps[1].name, "set_property_from_command");
    match &b.steps[10].kind {
        StepKind::Git(g) => assert_eq!(
            (g.mode, g.shallow),
            (GitMode::Incremental, Some(Shallow::Depth(10)))
        ),
        k => panic!("{k:?}"),
    }
    assert_eq!(cfg.schedulers.len(), 5);
    let mut props = kiln_model::Properties::default();
    props.set("os", "windows", "worker");
    assert!(!b.steps[11].flags.do_step_if.as_ref().unwrap().eval(&props));
}

#[test]
fn cpython_sized_config_loads() {
    let d = Dir::new();
    for i in 0..4 {
        d.secret(&format!("worker-{i}"), &format!("pw{i}-secret"));
    }
    let src = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/cpython.star"
    ))
    .unwrap();
    std::fs::write(d.file(), &src).unwrap();
    let t = std::time::Instant::now();
    // The tick budget here is 1% of the default: the real config has plenty of headroom.
    let cfg = load_with(
        d.dir.path(),
        &LoadOptions {
            ignore_env: true,
            max_ticks: Some(1_000_000),
            ..Default::default()
        },
    )
    .unwrap();
    let took = t.elapsed();
    println!(
        "cpython.star: {} builders, {} workers, {} schedulers loaded in {took:?} (unoptimized test build)",
        cfg.builders.len(),
        cfg.workers.len(),
        cfg.schedulers.len()
    );
    assert_eq!(cfg.builders.len(), 1036);
    assert_eq!(cfg.workers.len(), 57);
    assert_eq!(cfg.schedulers.len(), 16);
    assert_eq!(
        cfg.builders
            .iter()
            .filter(|b| b.name.ends_with(" 3.x"))
            .count(),
        141
    );
    assert_eq!(
        cfg.builders
            .iter()
            .filter(|b| b.name.ends_with(" PR"))
            .count(),
        141
    );
    assert_eq!(
        cfg.builders
            .iter()
            .filter(|b| b.name.ends_with(" 3.10"))
            .count(),
        117
    );
    match &cfg.scheduler("force").unwrap().kind {
        SchedulerKind::Force(_) => {
            assert_eq!(cfg.scheduler("force").unwrap().builder_names.len(), 1036)
        }
        k => panic!("{k:?}"),
    }
}

#[test]
fn directory_without_master_star_is_an_error() {
    let d = Dir::new();
    let e = load(d.dir.path()).unwrap_err();
    assert!(e.to_string().starts_with("error: cannot read "), "{e}");
}

#[test]
fn load_splits_a_config_over_files() {
    let d = Dir::new();
    std::fs::create_dir(d.dir.path().join("lib")).unwrap();
    std::fs::write(
        d.dir.path().join("lib/factories.star"),
        "load(\"lib/consts.star\", \"REPO\")\ndef unix(branch):\n    return [git(repourl = REPO, branch = branch), compile(command = \"make\")]\n",
    )
    .unwrap();
    std::fs::write(
        d.dir.path().join("lib/consts.star"),
        "REPO = \"https://github.com/python/cpython.git\"\n",
    )
    .unwrap();
    let cfg = d
        .load(&format!("load(\"lib/factories.star\", \"unix\")\n{}BUILDERS = [builder(name = \"b\", workers = [\"w1\"], steps = unix(\"main\"))]\n", common::W))
        .unwrap();
    let s = &cfg.builders[0].steps[0];
    assert_eq!(
        s.loc.file,
        d.dir
            .path()
            .join("lib/factories.star")
            .display()
            .to_string()
    );
    assert_eq!((s.loc.line, s.loc.col), (3, 13));

    // errors inside a loaded file point into it
    std::fs::write(
        d.dir.path().join("lib/consts.star"),
        "REPO = \"x\"\nBAD = shell(bogus = 1)\n",
    )
    .unwrap();
    let e = d
        .load(&format!(
            "load(\"lib/factories.star\", \"unix\")\n{}BUILDERS = []\n",
            common::W
        ))
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("consts.star:2:7: error: shell(): unknown argument `bogus`"),
        "{e}"
    );

    // no escaping the config directory
    let e = d
        .load(&format!(
            "load(\"../x.star\", \"y\")\n{}BUILDERS = []\n",
            common::W
        ))
        .unwrap_err();
    assert!(e.to_string().contains("without `..`"), "{e}");
}

#[test]
fn availability_windows() {
    let a = Availability::parse("not 22:00–08:00 UTC").unwrap();
    assert!(a.not && (a.start, a.end) == (1320, 480) && a.tz == chrono_tz::UTC);
    assert!(a.window_contains(23 * 60) && a.window_contains(0) && !a.window_contains(12 * 60));
    let b = Availability::parse("09:30-17:00 Europe/Berlin").unwrap();
    assert!(!b.not && b.window_contains(10 * 60) && !b.window_contains(18 * 60));
    // 08:30 UTC in January is 09:30 in Berlin: inside the window
    let t = chrono::DateTime::parse_from_rfc3339("2026-01-05T08:30:00Z")
        .unwrap()
        .to_utc();
    assert!(b.allows(t));
    for bad in [
        "",
        "not",
        "22:00",
        "25:00-01:00",
        "22:00-08:00 Mars/Base",
        "22:00-08:00 UTC extra",
        "10-12",
    ] {
        assert!(
            Availability::parse(bad).is_err(),
            "{bad:?} should be rejected"
        );
    }
}

#[test]
fn hardening_settings_have_farm_defaults_and_parse() {
    let d = Dir::new();
    let c = d.load("WORKERS = []\nBUILDERS = []\n").unwrap();
    assert_eq!(
        c.master.log_max_bytes,
        256 << 20,
        "logs are capped by default"
    );
    assert_eq!(c.master.log_max_tail_bytes, 1 << 20);
    assert!(c.master.trusted_proxies.is_empty());
    let c = d
        .load(
            "MASTER = master(trusted_proxies = [\"10.0.0.5\", \"10.1.2.3/16\", \"::1\"], log_max_bytes = 0)\nWORKERS = []\nBUILDERS = []\n",
        )
        .unwrap();
    let nets: Vec<String> = c
        .master
        .trusted_proxies
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(nets, ["10.0.0.5/32", "10.1.0.0/16", "::1/128"]);
    assert_eq!(c.master.log_max_bytes, 0);
}

#[test]
fn hardening_settings_are_checked() {
    let d = Dir::new();
    let (_, msg) = d.error(
        "MASTER = master(trusted_proxies = [\"proxy.example\"])\nWORKERS = []\nBUILDERS = []\n",
    );
    assert!(
        msg.contains("\"proxy.example\" is not an address or a CIDR range"),
        "{msg}"
    );
    let (_, msg) = d.error("MASTER = master(log_max_bytes = 1000, log_max_tail_bytes = 800)\nWORKERS = []\nBUILDERS = []\n");
    assert!(msg.contains("at most half of log_max_bytes"), "{msg}");
    let (_, msg) = d.error("MASTER = master(max_connections = 0)\nWORKERS = []\nBUILDERS = []\n");
    assert!(msg.contains("max_connections must be at least 1"), "{msg}");
}
