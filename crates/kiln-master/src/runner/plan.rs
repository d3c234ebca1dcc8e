//! What a build will do, decided before anything runs: its properties, its directory on the
//! worker, its source stamps and its steps. Pure: the same inputs give the same plan.

use std::collections::BTreeMap;

use kiln_config::{Builder, MasterConfig};
use kiln_engine::build::StepDef;
use kiln_engine::results::StepFlags;
use kiln_model::{Properties, SourceStamp};
use kiln_remote::join_worker_path;
use kiln_store::RequestContext;

/// The worker as the plan needs it.
pub(crate) struct WorkerFacts<'a> {
    pub name: &'a str,
    /// Its base directory as it reported it.
    pub basedir: &'a str,
    pub windows: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BuildPlan {
    /// The build's properties at its start (`buildnumber` is added with the build row).
    pub properties: Properties,
    /// `B` in spec §8.2: the builder's directory on the worker.
    pub builder_dir: String,
    /// Source stamps by codebase (`""` is the default), for `%(src::branch)s`.
    pub sources: BTreeMap<String, SourceStamp>,
    pub steps: Vec<StepDef>,
}

/// Properties, lowest priority first: builder, worker, then the buildset's (scheduler, force
/// form, change; Buildbot's order puts them on top of the builder's and worker's), then the
/// build's own.
pub(crate) fn plan_build(
    config: &MasterConfig,
    builder: &Builder,
    worker: WorkerFacts<'_>,
    request: &RequestContext,
) -> BuildPlan {
    let sources: BTreeMap<String, SourceStamp> = request
        .sourcestamps
        .iter()
        .map(|ss| (ss.stamp.codebase.clone(), ss.stamp.clone()))
        .collect();
    let mut props = Properties::default();
    for (k, v) in &builder.properties {
        props.set(k.clone(), v.clone(), "Builder");
    }
    if let Some(w) = config.worker(worker.name) {
        for (k, v) in &w.properties {
            props.set(k.clone(), v.clone(), "Worker");
        }
    }
    props.update(&request.properties);
    let builddir = builder.builddir.as_deref().unwrap_or(&builder.name);
    let builder_dir = join_worker_path(worker.windows, worker.basedir, builddir);
    props.set("buildername", builder.name.clone(), "Builder");
    props.set("workername", worker.name.to_string(), "Worker");
    props.set("builddir", builder_dir.clone(), "Worker");
    if let Some(src) = sources.get("").or_else(|| sources.values().next()) {
        set_source_properties(&mut props, src);
    }
    BuildPlan {
        properties: props,
        builder_dir,
        sources,
        steps: builder
            .steps
            .iter()
            .map(|s| StepDef {
                name: s.name.clone(),
                flags: engine_flags(s),
            })
            .collect(),
    }
}

/// The default codebase's `branch`, `revision`, `repository`, `project` and `codebase`.
fn set_source_properties(props: &mut Properties, src: &SourceStamp) {
    let or_null = |v: &Option<String>| v.clone().map_or(serde_json::Value::Null, Into::into);
    props.set("branch", or_null(&src.branch), "Build");
    props.set("revision", or_null(&src.revision), "Build");
    props.set("repository", src.repository.clone(), "Build");
    props.set("project", src.project.clone(), "Build");
    props.set("codebase", src.codebase.clone(), "Build");
}

/// Engine flags of a configured step. Shell-like steps count WARNINGS towards the build,
/// as Buildbot's `ShellCommand`-derived steps (`warnOnWarnings`) do.
fn engine_flags(step: &kiln_config::Step) -> StepFlags {
    use kiln_config::StepKind as K;
    let shellish = matches!(
        step.kind,
        K::Shell(_) | K::Configure(_) | K::Compile(_) | K::Test(_) | K::Git(_)
    );
    StepFlags {
        halt_on_failure: step.flags.halt_on_failure,
        flunk_on_failure: step.flags.flunk_on_failure,
        warn_on_failure: step.flags.warn_on_failure,
        always_run: step.flags.always_run,
        warn_on_warnings: shellish || StepFlags::default().warn_on_warnings,
        ..StepFlags::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_config::SecretSource;
    use kiln_model::{BuildsetId, SourceStampId, StoredSourceStamp};

    const CONFIG: &str = r#"
WORKERS = [worker("w1", password_hash = "$argon2id$v=19$x", properties = {"cpus": 8, "os": "linux"})]
BUILDERS = [
    builder(name = "unit", workers = ["w1"], builddir = "u", properties = {"os": "any", "suite": "fast"},
            steps = [shell(command = "make"), mkdir(dir = "out", halt_on_failure = True)]),
]
"#;

    fn config() -> MasterConfig {
        let secrets = SecretSource {
            dir: None,
            use_env: false,
        };
        kiln_config::load_str("m.star", CONFIG, &secrets).expect("config loads")
    }

    fn request(branch: &str) -> RequestContext {
        let mut properties = Properties::default();
        properties.set("suite", "slow", "Force");
        RequestContext {
            buildsetid: BuildsetId(1),
            sourcestamps: vec![StoredSourceStamp {
                ssid: SourceStampId(1),
                created_at: 0,
                stamp: SourceStamp {
                    branch: Some(branch.into()),
                    repository: "https://example.invalid/r.git".into(),
                    project: "p".into(),
                    ..SourceStamp::default()
                },
            }],
            properties,
        }
    }

    fn worker(windows: bool) -> WorkerFacts<'static> {
        WorkerFacts {
            name: "w1",
            basedir: if windows { "C:\\w" } else { "/w" },
            windows,
        }
    }

    #[test]
    fn properties_in_buildbots_order() {
        let cfg = config();
        let plan = plan_build(
            &cfg,
            cfg.builder("unit").unwrap(),
            worker(false),
            &request("main"),
        );
        let p = &plan.properties;
        // The worker's overrides the builder's; the buildset's overrides both.
        assert_eq!(p.get("os"), Some(&"linux".into()));
        assert_eq!(p.get("cpus"), Some(&8.into()));
        assert_eq!(p.get("suite"), Some(&"slow".into()));
        assert_eq!(p.get("buildername"), Some(&"unit".into()));
        assert_eq!(p.get("workername"), Some(&"w1".into()));
        assert_eq!(p.get("branch"), Some(&"main".into()));
        assert_eq!(p.get("revision"), Some(&serde_json::Value::Null));
        assert_eq!(p.get("project"), Some(&"p".into()));
    }

    #[test]
    fn the_builder_directory_follows_the_workers_system() {
        let cfg = config();
        let b = cfg.builder("unit").unwrap();
        let plan = plan_build(&cfg, b, worker(false), &request("main"));
        assert_eq!(plan.builder_dir, "/w/u");
        assert_eq!(plan.properties.get("builddir"), Some(&"/w/u".into()));
        let plan = plan_build(&cfg, b, worker(true), &request("main"));
        assert_eq!(plan.builder_dir, "C:\\w\\u");
    }

    #[test]
    fn steps_and_sources() {
        let cfg = config();
        let plan = plan_build(
            &cfg,
            cfg.builder("unit").unwrap(),
            worker(false),
            &request("dev"),
        );
        let names: Vec<&str> = plan.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names.len(), 2);
        // Shell steps count warnings; a mkdir only as the engine's default says.
        assert!(plan.steps[0].flags.warn_on_warnings);
        let default = StepFlags::default();
        assert_eq!(
            plan.steps[1].flags.warn_on_warnings,
            default.warn_on_warnings
        );
        // The configured flags reach the engine.
        assert!(plan.steps[1].flags.halt_on_failure);
        assert_eq!(plan.steps[0].flags.halt_on_failure, default.halt_on_failure);
        assert_eq!(plan.sources[""].branch.as_deref(), Some("dev"));
        assert_eq!(plan.sources[""].repository, "https://example.invalid/r.git");
    }
}
