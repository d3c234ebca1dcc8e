//! The configured schedulers as the engine's state machines: `master.star`'s `schedulers`
//! become [`kiln_engine::schedulers`] values. Force and triggerable schedulers are kept by
//! name as well, because they fire on request rather than on events.

use std::collections::BTreeMap;

use kiln_config::{ForceParamType, MasterConfig, SchedulerKind};
use kiln_engine::schedulers::{
    BranchMode, ChangeFilter, ChangeScheduler, ChangeSchedulerConfig, Dependent, FileImportance,
    Force, Glob, Nightly, ParamDef, ParamKind, Periodic, Schedulers, Triggerable,
};
use kiln_model::{Epoch, Properties, SourceStamp};

/// Every scheduler of one config.
#[derive(Default)]
pub struct SchedulerSet {
    /// Those fed changes, time and finished buildsets.
    pub events: Schedulers,
    pub force: BTreeMap<String, Force>,
    pub triggerable: BTreeMap<String, Triggerable>,
}

fn props(p: &kiln_config::Props) -> Properties {
    let mut out = Properties::default();
    for (k, v) in p {
        out.set(k.clone(), v.clone(), "Scheduler");
    }
    out
}

fn source(branch: Option<String>) -> SourceStamp {
    SourceStamp {
        codebase: String::new(),
        repository: String::new(),
        branch,
        revision: None,
        project: String::new(),
    }
}

/// Text parameters a force form always has (Buildbot's `ForceScheduler` defaults).
fn source_params(with_source: bool) -> Vec<ParamDef> {
    let text = |name: &str| ParamDef {
        name: name.into(),
        kind: ParamKind::String { max_len: 4096 },
        required: false,
        default: None,
    };
    let mut out = vec![text("reason")];
    if with_source {
        out.extend(["branch", "revision", "repository", "project"].map(text));
    }
    out
}

/// Builds the schedulers of `config`. `now` starts the clocks of nightly and periodic ones.
/// The config was validated, so a cron pattern or time zone that does not parse here is a
/// bug; such a scheduler is left out with an error in the log.
pub fn build(config: &MasterConfig, now: Epoch) -> SchedulerSet {
    let mut set = SchedulerSet::default();
    for s in &config.schedulers {
        let properties = props(&s.properties);
        let builders = s.builder_names.clone();
        match &s.kind {
            SchedulerKind::Force(f) => {
                let force = Force {
                    name: s.name.clone(),
                    builders,
                    codebase: source(None),
                    params: force_params(f),
                };
                set.force.insert(s.name.clone(), force);
            }
            SchedulerKind::SingleBranch(b) | SchedulerKind::AnyBranch(b) => {
                let config = change_scheduler(s, b, builders, properties);
                set.events.list.push(Box::new(ChangeScheduler::new(config)));
            }
            SchedulerKind::Nightly(n) => {
                let tz = n.timezone.parse().unwrap_or(chrono_tz::UTC);
                let sources = vec![source(n.branch.clone())];
                match Nightly::new(&s.name, builders, sources, &n.cron, tz, now) {
                    Ok(mut sched) => {
                        sched.properties = properties;
                        sched.only_if_changed = n.only_if_changed;
                        set.events.list.push(Box::new(sched));
                    }
                    Err(e) => tracing::error!("scheduler {:?} left out: {e:?}", s.name),
                }
            }
            SchedulerKind::Periodic(p) => set.events.list.push(Box::new(Periodic {
                name: s.name.clone(),
                builders,
                sources: vec![source(p.branch.clone())],
                properties,
                period: p.period as i64,
                last_fired: None,
            })),
            SchedulerKind::Triggerable(_) => {
                let t = Triggerable {
                    name: s.name.clone(),
                    builders,
                    properties,
                };
                set.triggerable.insert(s.name.clone(), t);
            }
            SchedulerKind::Dependent(d) => set.events.list.push(Box::new(Dependent {
                name: s.name.clone(),
                upstream: d.upstream.clone(),
                builders,
                properties,
            })),
        }
    }
    set
}

/// A force form's parameters: the source ones, replaced or joined by the configured ones.
fn force_params(f: &kiln_config::ForceArgs) -> Vec<ParamDef> {
    let mut params = source_params(f.source);
    for p in &f.params {
        let kind = match p.kind {
            ForceParamType::String | ForceParamType::Text => ParamKind::String { max_len: 65536 },
            ForceParamType::Int => ParamKind::Int {
                min: i64::MIN,
                max: i64::MAX,
            },
            ForceParamType::Bool => ParamKind::Bool,
            ForceParamType::Choice => ParamKind::Choice(p.choices.clone()),
        };
        params.retain(|d| d.name != p.name);
        params.push(ParamDef {
            name: p.name.clone(),
            kind,
            required: p.required,
            default: p.default.clone(),
        });
    }
    params
}

/// A single- or any-branch scheduler: which changes it takes, which files matter, its timer.
fn change_scheduler(
    s: &kiln_config::Scheduler,
    b: &kiln_config::BranchArgs,
    builders: Vec<String>,
    properties: Properties,
) -> ChangeSchedulerConfig {
    let mode = if matches!(s.kind, SchedulerKind::SingleBranch(_)) {
        BranchMode::Single
    } else {
        BranchMode::Any
    };
    let mut branches: Vec<Option<String>> = b.branches.iter().cloned().map(Some).collect();
    if let Some(br) = &b.branch {
        branches.push(Some(br.clone()));
    }
    let filter = ChangeFilter {
        branches,
        repositories: b.repository.iter().cloned().collect(),
        codebases: b.codebase.iter().cloned().collect(),
        ..ChangeFilter::default()
    };
    let importance = FileImportance {
        important: b.file_is_important.iter().map(|g| Glob::new(g)).collect(),
        unimportant: b.file_not_important.iter().map(|g| Glob::new(g)).collect(),
    };
    ChangeSchedulerConfig {
        name: s.name.clone(),
        builders,
        filter,
        importance,
        tree_stable_timer: b.tree_stable_timer.map(|t| t as i64),
        mode,
        properties,
        reason: format!(
            "The {} scheduler named '{}' triggered this build",
            s.kind.name(),
            s.name
        ),
        builder_filter_property: None,
    }
}

/// Names of the event-driven schedulers, for logs.
pub fn names(set: &SchedulerSet) -> Vec<String> {
    set.events
        .list
        .iter()
        .map(|s| s.name().to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_built() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("w"), "p").unwrap();
        let secrets = kiln_config::SecretSource {
            dir: Some(dir.path().into()),
            use_env: false,
        };
        let cfg = kiln_config::load_str(
            "master.star",
            r#"
WORKERS = [worker("w", password = secret("w"))]
BUILDERS = [builder(name = "b", workers = ["w"], steps = [shell(command = "true")])]
SCHEDULERS = [
    force("f", builder_names = ["b"]),
    single_branch("s", builder_names = ["b"], branch = "main", tree_stable_timer = 5),
    nightly("n", builder_names = ["b"], cron = "0 3 * * *", timezone = "Europe/Berlin"),
    periodic("p", builder_names = ["b"], period = 60),
    triggerable("t", builder_names = ["b"]),
    dependent("d", builder_names = ["b"], upstream = "s"),
]
"#,
            &secrets,
        )
        .expect("config loads");
        let set = build(&cfg, 1_700_000_000);
        assert_eq!(set.force.keys().collect::<Vec<_>>(), ["f"]);
        assert_eq!(set.triggerable.keys().collect::<Vec<_>>(), ["t"]);
        assert_eq!(names(&set), ["s", "n", "p", "d"]);
        let f = &set.force["f"];
        let bs = f
            .force(
                "me",
                &["b".into()],
                &[("branch".to_string(), serde_json::json!("dev"))].into(),
            )
            .expect("branch is a force parameter");
        assert_eq!(bs.sources[0].branch.as_deref(), Some("dev"));
    }
}
