//! Checks across objects: names that must exist, names that must be unique, cron, zones, regexes.

use std::collections::{BTreeMap, HashMap};

use crate::error::Diagnostic;
use crate::types::*;

struct Diags(Vec<Diagnostic>);

impl Diags {
    fn err(&mut self, loc: &Loc, message: String) {
        let loc = if loc.file.is_empty() {
            None
        } else {
            Some(loc.clone())
        };
        self.0.push(Diagnostic { loc, message });
    }
}

fn dupes<'a, T>(d: &mut Diags, what: &str, items: impl Iterator<Item = (&'a str, &'a Loc, T)>) {
    let mut seen: HashMap<&str, &Loc> = HashMap::new();
    for (name, loc, _) in items {
        if name.is_empty() {
            d.err(
                loc,
                format!("{what} with an empty name: give it name=\"...\""),
            );
        } else if let Some(first) = seen.get(name) {
            d.err(
                loc,
                format!(
                    "duplicate {what} name {name:?} (first defined at {first}): rename one of them"
                ),
            );
        } else {
            seen.insert(name, loc);
        }
    }
}

fn check_regex(d: &mut Diags, loc: &Loc, what: &str, re: &str) {
    if let Err(e) = regex::Regex::new(re) {
        d.err(loc, format!("{what}: bad regular expression {re:?}: {e}"));
    }
}

fn add_locks(d: &mut Diags, locks: &mut BTreeMap<String, Lock>, uses: &[LockAccess], user: &str) {
    for a in uses {
        match locks.get(&a.lock.name) {
            None => {
                locks.insert(a.lock.name.clone(), a.lock.clone());
            }
            Some(l) => {
                let same = l.scope == a.lock.scope
                    && l.max_count == a.lock.max_count
                    && l.max_count_for_worker == a.lock.max_count_for_worker;
                if !same {
                    d.err(
                        &a.lock.loc,
                        format!(
                            "{user}: lock {:?} is defined twice with different settings (other definition at {}): make one lock value and reuse it",
                            a.lock.name, l.loc
                        ),
                    );
                }
            }
        }
    }
}

pub(crate) fn validate(cfg: &mut MasterConfig) -> Vec<Diagnostic> {
    let mut d = Diags(Vec::new());
    let m = &cfg.master;
    if m.tls_cert.is_some() != m.tls_key.is_some() {
        d.err(
            &m.loc,
            "master(): give both tls_cert= and tls_key=, or neither".into(),
        );
    }
    if m.log_max_bytes != 0 && m.log_max_tail_bytes > m.log_max_bytes / 2 {
        d.err(
            &m.loc,
            format!(
                "master(): log_max_tail_bytes ({}) must be at most half of log_max_bytes ({}), so the log's head is kept too",
                m.log_max_tail_bytes, m.log_max_bytes
            ),
        );
    }
    for (what, v) in [
        ("max_connections", m.max_connections),
        ("max_connections_per_address", m.max_connections_per_address),
        ("header_timeout_secs", m.header_timeout_secs),
        ("idle_timeout_secs", m.idle_timeout_secs),
        ("failed_logins_per_minute", m.failed_logins_per_minute),
    ] {
        if v == 0 {
            d.err(&m.loc, format!("master(): {what} must be at least 1"));
        }
    }
    if m.header_timeout_secs > 3600 {
        d.err(
            &m.loc,
            "master(): header_timeout_secs is over an hour; a client that slow is an attack".into(),
        );
    }
    if m.worker_port == m.web_port && m.worker_port != 0 {
        d.err(
            &m.loc,
            format!(
                "master(): worker_port and web_port are both {}: use two ports",
                m.worker_port
            ),
        );
    }

    dupes(
        &mut d,
        "worker",
        cfg.workers.iter().map(|w| (w.name.as_str(), &w.loc, ())),
    );
    dupes(
        &mut d,
        "builder",
        cfg.builders.iter().map(|b| (b.name.as_str(), &b.loc, ())),
    );
    dupes(
        &mut d,
        "scheduler",
        cfg.schedulers.iter().map(|s| (s.name.as_str(), &s.loc, ())),
    );

    let workers: HashMap<&str, &Worker> =
        cfg.workers.iter().map(|w| (w.name.as_str(), w)).collect();
    let builders: HashMap<&str, &Builder> =
        cfg.builders.iter().map(|b| (b.name.as_str(), b)).collect();
    let schedulers: HashMap<&str, &Scheduler> = cfg
        .schedulers
        .iter()
        .map(|s| (s.name.as_str(), s))
        .collect();

    let mut locks = BTreeMap::new();
    for b in &cfg.builders {
        let what = format!("builder {:?}", b.name);
        if b.workers.is_empty() {
            d.err(
                &b.loc,
                format!("{what} has no workers: give workers=[\"...\"]"),
            );
        }
        for w in &b.workers {
            if !workers.contains_key(w.as_str()) {
                d.err(&b.loc, format!("{what}: unknown worker {w:?}: define it with worker(\"{w}\", ...) in WORKERS, or fix the name"));
            }
        }
        add_locks(&mut d, &mut locks, &b.locks, &what);
        for s in &b.steps {
            let swhat = format!("{what}, step {:?}", s.name);
            add_locks(&mut d, &mut locks, &s.flags.locks, &swhat);
            match &s.kind {
                StepKind::Shell(a)
                | StepKind::Configure(a)
                | StepKind::Compile(a)
                | StepKind::Test(a) => {
                    if let Some(p) = &a.warning_pattern {
                        check_regex(&mut d, &s.loc, &format!("{swhat}: warning_pattern"), p);
                    }
                }
                StepKind::Trigger(t) => {
                    for n in &t.scheduler_names {
                        match schedulers.get(n.as_str()) {
                            None => d.err(&s.loc, format!("{swhat}: trigger names unknown scheduler {n:?}: define triggerable(name=\"{n}\", ...) in SCHEDULERS")),
                            Some(sc) if !matches!(sc.kind, SchedulerKind::Triggerable(_)) => d.err(
                                &s.loc,
                                format!("{swhat}: trigger names scheduler {n:?}, which is {} (defined at {}); trigger needs a triggerable scheduler", sc.kind.name(), sc.loc),
                            ),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
    }
    for l in locks.values() {
        for w in l.max_count_for_worker.keys() {
            if !workers.contains_key(w.as_str()) {
                d.err(
                    &l.loc,
                    format!(
                        "worker_lock {:?}: max_count_for_worker names unknown worker {w:?}",
                        l.name
                    ),
                );
            }
        }
    }
    cfg.locks = locks;

    for s in &cfg.schedulers {
        let what = format!("scheduler {:?} ({})", s.name, s.kind.name());
        if s.builder_names.is_empty() {
            d.err(
                &s.loc,
                format!("{what} starts no builders: give builder_names=[...]"),
            );
        }
        for b in &s.builder_names {
            if !builders.contains_key(b.as_str()) {
                d.err(&s.loc, format!("{what}: unknown builder {b:?}: define it with builder(name=\"{b}\", ...) in BUILDERS, or fix the name"));
            }
        }
        match &s.kind {
            SchedulerKind::Nightly(n) => {
                if let Err(e) = n.cron.parse::<croner::Cron>() {
                    d.err(&s.loc, format!("{what}: bad cron {:?}: {e}; the form is \"minute hour day-of-month month day-of-week\", e.g. \"0 3 * * *\"", n.cron));
                }
                if n.timezone.parse::<chrono_tz::Tz>().is_err() {
                    d.err(&s.loc, format!("{what}: unknown time zone {:?}: use an IANA name such as \"UTC\" or \"Europe/Amsterdam\"", n.timezone));
                }
            }
            SchedulerKind::SingleBranch(b) => {
                if b.branch.is_none() {
                    d.err(
                        &s.loc,
                        format!("{what}: give branch=\"...\" (or use any_branch)"),
                    );
                }
            }
            SchedulerKind::AnyBranch(b) => {
                if let Some(r) = &b.branch_regex {
                    check_regex(&mut d, &s.loc, &format!("{what}: branch_regex"), r);
                }
            }
            SchedulerKind::Periodic(p) => {
                if p.period == 0 {
                    d.err(&s.loc, format!("{what}: period must be at least 1 second"));
                }
            }
            SchedulerKind::Dependent(dep) => match schedulers.get(dep.upstream.as_str()) {
                None => d.err(
                    &s.loc,
                    format!("{what}: unknown upstream scheduler {:?}", dep.upstream),
                ),
                Some(u) if u.name == s.name => d.err(
                    &s.loc,
                    format!("{what}: a scheduler cannot depend on itself"),
                ),
                _ => {}
            },
            SchedulerKind::Force(f) => {
                let mut seen = std::collections::HashSet::new();
                for p in &f.params {
                    if !seen.insert(p.name.as_str()) {
                        d.err(
                            &s.loc,
                            format!("{what}: parameter {:?} is given twice", p.name),
                        );
                    }
                    if p.kind == ForceParamType::Choice
                        && let Some(serde_json::Value::String(def)) = &p.default
                        && !p.choices.contains(def)
                    {
                        d.err(
                            &s.loc,
                            format!(
                                "{what}: parameter {:?}: default {def:?} is not one of its choices",
                                p.name
                            ),
                        );
                    }
                }
            }
            SchedulerKind::Triggerable(_) => {}
        }
    }
    d.0
}
