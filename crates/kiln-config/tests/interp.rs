use std::collections::BTreeMap;

use kiln_config::interp::{Fallback, Part};
use kiln_config::*;
use kiln_model::{Properties, SourceStamp};

fn render(fmt: &str, props: &Properties, kw: &[(&str, &str)]) -> String {
    let i = Interpolation::parse(fmt).unwrap();
    let main = SourceStamp {
        branch: Some("main".into()),
        revision: Some("abc123".into()),
        ..Default::default()
    };
    let docs = SourceStamp {
        branch: Some("gh-pages".into()),
        ..Default::default()
    };
    let mut secrets = Secrets::default();
    secrets.insert("tok", "T0K");
    let ctx = RenderContext {
        properties: Some(props),
        sources: [("", &main), ("docs", &docs)].into_iter().collect(),
        secrets: Some(&secrets),
    };
    let kw: BTreeMap<String, String> = kw
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    i.render(&ctx, &kw).unwrap()
}

#[test]
fn parses_every_form() {
    let i = Interpolation::parse("a %(prop:x)s %(prop:y:-dflt)s %(src::branch)s %(src:docs:revision:~none)s %(secret:s)s %(kw:k:+yes)s 100%%").unwrap();
    let parts = i.parts();
    assert_eq!(
        parts[1],
        Part::Prop {
            name: "x".into(),
            fallback: Fallback::None
        }
    );
    assert_eq!(
        parts[3],
        Part::Prop {
            name: "y".into(),
            fallback: Fallback::IfMissing("dflt".into())
        }
    );
    assert!(matches!(&parts[5], Part::Src { codebase, .. } if codebase.is_empty()));
    assert!(
        matches!(&parts[7], Part::Src { codebase, fallback: Fallback::IfFalsy(d), .. } if codebase == "docs" && d == "none")
    );
    assert_eq!(parts[9], Part::Secret { name: "s".into() });
    assert_eq!(
        parts[11],
        Part::Kw {
            name: "k".into(),
            fallback: Fallback::IfPresent("yes".into())
        }
    );
    assert_eq!(parts[12], Part::Literal(" 100%".into()));
    assert_eq!(i.secret_names().collect::<Vec<_>>(), ["s"]);
    assert_eq!(i.to_string(), i.source());
}

#[test]
fn syntax_errors() {
    for (bad, why) in [
        ("%(prop:x", "without a closing"),
        ("%(prop:x)d", "expected `s`"),
        ("50% off", "lone `%`"),
        ("%(x)s", "no kind"),
        ("%(env:HOME)s", "unknown kind"),
        ("%(src:branch)s", "src needs"),
        ("%(src::color)s", "unknown source attribute"),
        ("%(prop:)s", "bad prop name"),
    ] {
        let e = Interpolation::parse(bad).unwrap_err();
        assert!(e.to_string().contains(why), "{bad}: {e}");
    }
}

#[test]
fn renders_against_properties_sources_secrets_and_keywords() {
    let mut p = Properties::default();
    p.set("buildnumber", 42, "Build");
    p.set("empty", "", "Build");
    p.set("flag", true, "Build");
    assert_eq!(render("build-%(prop:buildnumber)s", &p, &[]), "build-42");
    assert_eq!(render("[%(prop:missing)s]", &p, &[]), "[]");
    assert_eq!(render("%(prop:missing:-dflt)s", &p, &[]), "dflt");
    assert_eq!(render("%(prop:empty:-dflt)s", &p, &[]), "");
    assert_eq!(render("%(prop:empty:~dflt)s", &p, &[]), "dflt");
    assert_eq!(
        render("%(prop:flag:+--verbose)s|%(prop:missing:+x)s", &p, &[]),
        "--verbose|"
    );
    assert_eq!(
        render(
            "%(src::branch)s@%(src::revision)s %(src:docs:branch)s %(src:nope:branch:-none)s",
            &p,
            &[]
        ),
        "main@abc123 gh-pages none"
    );
    assert_eq!(render("token=%(secret:tok)s", &p, &[]), "token=T0K");
    assert_eq!(
        render("-j%(kw:jobs)s %(kw:other:-x)s", &p, &[("jobs", "8")]),
        "-j8 x"
    );
    assert_eq!(render("100%% done, ünïcode", &p, &[]), "100% done, ünïcode");
}

#[test]
fn renderables_from_a_config() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("master.star"),
        r#"WORKERS = [worker("w1", password_hash = "$argon2id$x")]
BUILDERS = [builder(name = "b", workers = ["w1"], steps = [
    shell(command = ["make", interpolate("-j%(kw:n)s", n = prop("jobs", default = 2)), prop("target")],
          env = {"TESTOPTS": interpolate("%(prop:testopts:--j2)s")}),
])]
"#,
    )
    .unwrap();
    let cfg = load_with(
        d.path(),
        &LoadOptions {
            ignore_env: true,
            ..Default::default()
        },
    )
    .unwrap();
    let step = &cfg.builders[0].steps[0];
    let StepKind::Shell(s) = &step.kind else {
        panic!()
    };
    let Command::Argv(argv) = &s.command else {
        panic!()
    };
    let mut p = Properties::default();
    p.set("target", "all", "Builder");
    let ctx = RenderContext {
        properties: Some(&p),
        ..Default::default()
    };
    let out: Vec<String> = argv.iter().map(|a| a.render(&ctx).unwrap()).collect();
    assert_eq!(out, ["make", "-j2", "all"]);
    p.set("jobs", 16, "Force");
    let ctx = RenderContext {
        properties: Some(&p),
        ..Default::default()
    };
    assert_eq!(argv[1].render(&ctx).unwrap(), "-j16");
    assert_eq!(step.flags.env["TESTOPTS"].render(&ctx).unwrap(), "-j2");
}
