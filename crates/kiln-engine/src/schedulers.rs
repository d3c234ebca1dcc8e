//! Schedulers: they turn changes, time, forces, triggers and finished buildsets into
//! [`BuildsetRequest`]s ("build builders X with sources S, properties P, because R").
//!
//! Every scheduler is a plain state machine: the caller feeds it events with the current time
//! (from a [`crate::Clock`]), calls [`Scheduler::poll`] at [`Scheduler::next_wakeup`], and stores
//! what comes out. Nothing here sleeps or reads the clock itself.

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::DateTime;
use chrono_tz::Tz;
use croner::Cron;
use kiln_model::{BuildId, Change, ChangeId, Epoch, Properties, Results, SourceStamp};
use serde_json::Value;

/// What a scheduler wants built.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildsetRequest {
    pub scheduler: String,
    pub builders: Vec<String>,
    pub sources: Vec<SourceStamp>,
    /// The changes this buildset builds (the blamelist), oldest first.
    pub changes: Vec<ChangeId>,
    pub properties: Properties,
    pub reason: String,
    /// A triggering build waits for it (`Trigger(waitForFinish=True)`).
    pub waited_for: bool,
    pub parent_build: Option<BuildId>,
}

/// A finished buildset, as [`Scheduler::on_buildset_complete`] sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletedBuildset {
    pub scheduler: String,
    pub results: Results,
    pub sources: Vec<SourceStamp>,
    pub properties: Properties,
}

/// The events a scheduler reacts to. Defaults ignore the event.
pub trait Scheduler {
    fn name(&self) -> &str;
    /// A new change arrived.
    fn on_change(&mut self, _change: &Change, _now: Epoch) -> Vec<BuildsetRequest> {
        Vec::new()
    }
    /// A buildset finished (for [`Dependent`]).
    fn on_buildset_complete(
        &mut self,
        _done: &CompletedBuildset,
        _now: Epoch,
    ) -> Vec<BuildsetRequest> {
        Vec::new()
    }
    /// Time passed: fire whatever is due at `now`.
    fn poll(&mut self, _now: Epoch) -> Vec<BuildsetRequest> {
        Vec::new()
    }
    /// When [`Scheduler::poll`] next has something to do, if ever.
    fn next_wakeup(&self) -> Option<Epoch> {
        None
    }
}

/// All of a master's schedulers, fed the same events. Requests come out tagged by scheduler.
#[derive(Default)]
pub struct Schedulers {
    pub list: Vec<Box<dyn Scheduler + Send>>,
}

impl Schedulers {
    pub fn on_change(&mut self, change: &Change, now: Epoch) -> Vec<BuildsetRequest> {
        self.list
            .iter_mut()
            .flat_map(|s| s.on_change(change, now))
            .collect()
    }

    pub fn on_buildset_complete(
        &mut self,
        done: &CompletedBuildset,
        now: Epoch,
    ) -> Vec<BuildsetRequest> {
        self.list
            .iter_mut()
            .flat_map(|s| s.on_buildset_complete(done, now))
            .collect()
    }

    /// Polls the schedulers that are due at `now`.
    pub fn poll(&mut self, now: Epoch) -> Vec<BuildsetRequest> {
        self.list
            .iter_mut()
            .filter(|s| s.next_wakeup().is_some_and(|t| t <= now))
            .flat_map(|s| s.poll(now))
            .collect()
    }

    /// The earliest wake-up of any scheduler: the master sleeps until then (or an event).
    pub fn next_wakeup(&self) -> Option<Epoch> {
        self.list.iter().filter_map(|s| s.next_wakeup()).min()
    }
}

// ---------------------------------------------------------------- change filtering

/// A glob over a file path: `*` matches within one path segment, `**` across segments, `?` one
/// character. A pattern without `/` matches the file's base name anywhere (`*.rst`); a pattern
/// ending in `/` matches everything under that directory (`Doc/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(String);

impl Glob {
    pub fn new(pattern: &str) -> Glob {
        let p = if pattern.ends_with('/') {
            format!("{pattern}**")
        } else {
            pattern.to_string()
        };
        Glob(p)
    }

    pub fn matches(&self, path: &str) -> bool {
        if self.0.contains('/') {
            glob_match(self.0.as_bytes(), path.as_bytes())
        } else {
            glob_match(
                self.0.as_bytes(),
                path.rsplit('/').next().unwrap_or(path).as_bytes(),
            )
        }
    }
}

fn glob_match(p: &[u8], s: &[u8]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some(b'*') if p.get(1) == Some(&b'*') => {
            // `**/` may also match nothing.
            let rest = &p[2..];
            let rest_no_slash = rest.strip_prefix(b"/").unwrap_or(rest);
            (0..=s.len()).any(|i| glob_match(rest, &s[i..])) || glob_match(rest_no_slash, s)
        }
        Some(b'*') => {
            let rest = &p[1..];
            for i in 0..=s.len() {
                if glob_match(rest, &s[i..]) {
                    return true;
                }
                if i < s.len() && s[i] == b'/' {
                    break;
                }
            }
            false
        }
        Some(b'?') => !s.is_empty() && s[0] != b'/' && glob_match(&p[1..], &s[1..]),
        Some(c) => s.first() == Some(c) && glob_match(&p[1..], &s[1..]),
    }
}

/// Which files matter (Buildbot's `fileIsImportant`, as globs). A file is important if it
/// matches no `unimportant` pattern and, when `important` is not empty, matches one of those.
/// A change is important if any of its files is, or if it lists no files at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileImportance {
    pub important: Vec<Glob>,
    pub unimportant: Vec<Glob>,
}

impl FileImportance {
    pub fn file_is_important(&self, path: &str) -> bool {
        !self.unimportant.iter().any(|g| g.matches(path))
            && (self.important.is_empty() || self.important.iter().any(|g| g.matches(path)))
    }

    pub fn change_is_important(&self, change: &Change) -> bool {
        change.files.is_empty() || change.files.iter().any(|f| self.file_is_important(f))
    }
}

/// Which changes a scheduler looks at (Buildbot's `ChangeFilter`). An empty list accepts all.
/// `branches` holds `None` for changes without a branch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeFilter {
    pub branches: Vec<Option<String>>,
    pub repositories: Vec<String>,
    pub projects: Vec<String>,
    pub codebases: Vec<String>,
    pub categories: Vec<Option<String>>,
    /// The change must carry this property with a true value (e.g. CPython's `should_test_pr`).
    pub required_property: Option<String>,
}

impl ChangeFilter {
    pub fn accepts(&self, c: &Change) -> bool {
        let ok = |list: &[String], v: &String| list.is_empty() || list.contains(v);
        let ok_opt =
            |list: &[Option<String>], v: &Option<String>| list.is_empty() || list.contains(v);
        ok_opt(&self.branches, &c.branch)
            && ok(&self.repositories, &c.repository)
            && ok(&self.projects, &c.project)
            && ok(&self.codebases, &c.codebase)
            && ok_opt(&self.categories, &c.category)
            && self
                .required_property
                .as_ref()
                .is_none_or(|p| matches!(c.properties.get(p), Some(v) if truthy(v)))
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

// ---------------------------------------------------------------- change-driven schedulers

/// How changes are grouped for the tree-stable timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BranchMode {
    /// `single_branch`: one timer for all accepted changes.
    Single,
    /// `any_branch`: one timer per (codebase, repository, branch, project).
    Any,
}

#[derive(Debug, Clone)]
pub struct ChangeSchedulerConfig {
    pub name: String,
    pub builders: Vec<String>,
    pub filter: ChangeFilter,
    pub importance: FileImportance,
    /// Seconds without new changes before building; `None` builds each important change at once.
    pub tree_stable_timer: Option<i64>,
    pub mode: BranchMode,
    pub properties: Properties,
    pub reason: String,
    /// A change property holding a regular expression that narrows the builders, matched
    /// case-insensitively against the whole name (CPython's PR scheduler and `!buildbot <regex>`).
    /// A buildset keeps the builders selected by any of its changes; a change without the
    /// property selects all. (Buildbot's CPython subclass used only the first change's filter
    /// when several arrived within one timer, psf/buildmaster-config#566.)
    pub builder_filter_property: Option<String>,
}

type TimerKey = (String, String, Option<String>, String);

/// A running tree-stable timer: when it fires and the changes it collected, with their importance.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingTimer {
    pub fire_at: Epoch,
    pub changes: Vec<(Change, bool)>,
}

#[derive(Debug, Default)]
struct Pending {
    fire_at: Epoch,
    /// Accepted changes with their importance, in arrival order.
    changes: Vec<(Change, bool)>,
}

/// `single_branch` and `any_branch` schedulers, with Buildbot's tree-stable timer rules:
/// an important change starts or restarts the timer; an unimportant change restarts a timer
/// that is already running (and is collected) but does not start one; when the timer fires,
/// all collected changes make one buildset, if at least one is important.
#[derive(Debug)]
pub struct ChangeScheduler {
    pub config: ChangeSchedulerConfig,
    timers: BTreeMap<TimerKey, Pending>,
}

impl ChangeScheduler {
    pub fn new(config: ChangeSchedulerConfig) -> Self {
        ChangeScheduler {
            config,
            timers: BTreeMap::new(),
        }
    }

    /// The running tree-stable timers with their collected changes (important or not), so the
    /// store can keep them across a master restart (Buildbot keeps classified changes in its
    /// database).
    pub fn timers(&self) -> Vec<PendingTimer> {
        self.timers
            .values()
            .map(|p| PendingTimer {
                fire_at: p.fire_at,
                changes: p.changes.clone(),
            })
            .collect()
    }

    /// Restores timers saved with [`ChangeScheduler::timers`]; a timer already due fires at the
    /// next [`Scheduler::poll`].
    pub fn restore(&mut self, timers: Vec<PendingTimer>) {
        for t in timers {
            if let Some((first, _)) = t.changes.first() {
                let key = self.key(first);
                let p = self.timers.entry(key).or_default();
                p.fire_at = p.fire_at.max(t.fire_at);
                p.changes.extend(t.changes);
            }
        }
    }

    fn key(&self, c: &Change) -> TimerKey {
        match self.config.mode {
            BranchMode::Single => Default::default(),
            BranchMode::Any => (
                c.codebase.clone(),
                c.repository.clone(),
                c.branch.clone(),
                c.project.clone(),
            ),
        }
    }

    fn select_builders(&self, changes: &[Change]) -> Vec<String> {
        let Some(prop) = &self.config.builder_filter_property else {
            return self.config.builders.clone();
        };
        let mut patterns = Vec::new();
        for c in changes {
            match c.properties.get(prop).and_then(|v| v.as_str()) {
                None => return self.config.builders.clone(),
                // A pattern that does not compile selects nothing (the webhook reports it).
                Some(p) => patterns.extend(regex::Regex::new(&format!("(?i)^(?:{p})$")).ok()),
            }
        }
        self.config
            .builders
            .iter()
            .filter(|b| patterns.iter().any(|r| r.is_match(b)))
            .cloned()
            .collect()
    }

    fn buildset(&self, changes: &[Change]) -> BuildsetRequest {
        // Per codebase, the newest change gives the branch and revision.
        let mut by_codebase: BTreeMap<&str, &Change> = BTreeMap::new();
        let mut properties = self.config.properties.clone();
        for c in changes {
            by_codebase.insert(&c.codebase, c);
            properties.update(&c.properties);
        }
        let sources = by_codebase
            .values()
            .map(|c| SourceStamp {
                codebase: c.codebase.clone(),
                repository: c.repository.clone(),
                branch: c.branch.clone(),
                revision: c.revision.clone(),
                project: c.project.clone(),
            })
            .collect();
        BuildsetRequest {
            scheduler: self.config.name.clone(),
            builders: self.select_builders(changes),
            sources,
            changes: changes.iter().map(|c| c.changeid).collect(),
            properties,
            reason: self.config.reason.clone(),
            waited_for: false,
            parent_build: None,
        }
    }
}

impl Scheduler for ChangeScheduler {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn on_change(&mut self, change: &Change, now: Epoch) -> Vec<BuildsetRequest> {
        if !self.config.filter.accepts(change) {
            return Vec::new();
        }
        let important = self.config.importance.change_is_important(change);
        let Some(stable) = self.config.tree_stable_timer else {
            return if important {
                vec![self.buildset(std::slice::from_ref(change))]
            } else {
                Vec::new()
            };
        };
        let key = self.key(change);
        let running = self.timers.contains_key(&key);
        if !important && !running {
            return Vec::new();
        }
        let p = self.timers.entry(key).or_default();
        p.fire_at = now + stable;
        p.changes.push((change.clone(), important));
        Vec::new()
    }

    fn poll(&mut self, now: Epoch) -> Vec<BuildsetRequest> {
        let due: Vec<TimerKey> = self
            .timers
            .iter()
            .filter(|(_, p)| p.fire_at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::new();
        for k in due {
            let p = self.timers.remove(&k).expect("due timer exists");
            if p.changes.iter().any(|(_, imp)| *imp) {
                let changes: Vec<Change> = p.changes.into_iter().map(|(c, _)| c).collect();
                let bs = self.buildset(&changes);
                if !bs.builders.is_empty() {
                    out.push(bs);
                }
            }
        }
        out
    }

    fn next_wakeup(&self) -> Option<Epoch> {
        self.timers.values().map(|p| p.fire_at).min()
    }
}

// ---------------------------------------------------------------- timed schedulers

/// Converts Buildbot's `Nightly(dayOfWeek=…)` numbering (Monday=0 … Sunday=6) to cron's
/// (Sunday=0 … Saturday=6).
pub fn buildbot_day_of_week_to_cron(dow: u8) -> u8 {
    (dow % 7 + 1) % 7
}

/// A cron pattern from Buildbot's `Nightly(minute=…, hour=…, dayOfMonth=…, month=…,
/// dayOfWeek=…)` fields; `None` is `'*'`. Buildbot's `dayOfWeek` is Monday=0 and is
/// translated to cron's Sunday=0.
pub fn buildbot_nightly_pattern(
    minute: Option<&[u8]>,
    hour: Option<&[u8]>,
    day_of_month: Option<&[u8]>,
    month: Option<&[u8]>,
    day_of_week: Option<&[u8]>,
) -> String {
    let field = |v: Option<&[u8]>| match v {
        None => "*".to_string(),
        Some(list) => list.iter().map(u8::to_string).collect::<Vec<_>>().join(","),
    };
    let dow: Option<Vec<u8>> =
        day_of_week.map(|d| d.iter().map(|x| buildbot_day_of_week_to_cron(*x)).collect());
    format!(
        "{} {} {} {} {}",
        field(minute),
        field(hour),
        field(day_of_month),
        field(month),
        field(dow.as_deref())
    )
}

#[derive(Debug)]
pub enum ScheduleError {
    BadCron(String),
}

/// `nightly`: fires on a cron pattern (5 fields: minute hour day-of-month month day-of-week,
/// Sunday=0) evaluated in an explicit time zone.
///
/// Daylight-saving transitions (croner's rules, tested in `tests/schedulers.rs`):
/// * A time that does not exist (02:30 on a spring-forward day in Europe/Berlin) fires once,
///   at the first instant after the gap (03:00 local), so the day's build is not lost.
/// * A time that happens twice (02:30 on the autumn fall-back day) fires once, at the first
///   of the two instants. Patterns with a step in the hour field (`*/15 * * * *`) fire on both.
/// * After the master was down, a missed time fires once (not once per missed time); the next
///   time is computed from `now`.
///
/// `only_if_changed` builds only if an important change arrived since the last firing
/// (Buildbot's `onlyIfChanged`); the collected changes become the blamelist.
#[derive(Debug)]
pub struct Nightly {
    pub name: String,
    pub builders: Vec<String>,
    pub sources: Vec<SourceStamp>,
    pub properties: Properties,
    pub cron: Cron,
    pub tz: Tz,
    pub only_if_changed: bool,
    pub filter: ChangeFilter,
    pub importance: FileImportance,
    next: Option<Epoch>,
    changes: Vec<(ChangeId, bool)>,
}

impl Nightly {
    /// `now` is when the scheduler starts: the first firing is the first match after it.
    pub fn new(
        name: &str,
        builders: Vec<String>,
        sources: Vec<SourceStamp>,
        pattern: &str,
        tz: Tz,
        now: Epoch,
    ) -> Result<Self, ScheduleError> {
        let cron = Cron::from_str(pattern)
            .map_err(|e| ScheduleError::BadCron(format!("{pattern:?}: {e}")))?;
        let mut n = Nightly {
            name: name.to_string(),
            builders,
            sources,
            properties: Properties::default(),
            cron,
            tz,
            only_if_changed: false,
            filter: ChangeFilter::default(),
            importance: FileImportance::default(),
            next: None,
            changes: Vec::new(),
        };
        n.next = n.next_after(now);
        Ok(n)
    }

    /// The first firing strictly after `t`.
    pub fn next_after(&self, t: Epoch) -> Option<Epoch> {
        let local = DateTime::from_timestamp(t, 0)?.with_timezone(&self.tz);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|d| d.timestamp())
    }
}

impl Scheduler for Nightly {
    fn name(&self) -> &str {
        &self.name
    }

    fn on_change(&mut self, change: &Change, _now: Epoch) -> Vec<BuildsetRequest> {
        if self.only_if_changed && self.filter.accepts(change) {
            self.changes
                .push((change.changeid, self.importance.change_is_important(change)));
        }
        Vec::new()
    }

    fn poll(&mut self, now: Epoch) -> Vec<BuildsetRequest> {
        let Some(at) = self.next else {
            return Vec::new();
        };
        if now < at {
            return Vec::new();
        }
        self.next = self.next_after(now);
        let changes = std::mem::take(&mut self.changes);
        if self.only_if_changed && !changes.iter().any(|(_, imp)| *imp) {
            return Vec::new();
        }
        vec![BuildsetRequest {
            scheduler: self.name.clone(),
            builders: self.builders.clone(),
            sources: self.sources.clone(),
            changes: changes.into_iter().map(|(id, _)| id).collect(),
            properties: self.properties.clone(),
            reason: format!(
                "The Nightly scheduler named '{}' triggered this build",
                self.name
            ),
            waited_for: false,
            parent_build: None,
        }]
    }

    fn next_wakeup(&self) -> Option<Epoch> {
        self.next
    }
}

/// `periodic`: fires every `period` seconds. It fires at once when it never fired before
/// (as Buildbot's `Periodic`), else `period` after the last firing; after downtime a missed
/// firing happens once.
#[derive(Debug)]
pub struct Periodic {
    pub name: String,
    pub builders: Vec<String>,
    pub sources: Vec<SourceStamp>,
    pub properties: Properties,
    pub period: i64,
    /// When it last fired (kept in the store across restarts).
    pub last_fired: Option<Epoch>,
}

impl Scheduler for Periodic {
    fn name(&self) -> &str {
        &self.name
    }

    fn poll(&mut self, now: Epoch) -> Vec<BuildsetRequest> {
        if self.last_fired.is_some_and(|l| now < l + self.period) {
            return Vec::new();
        }
        self.last_fired = Some(now);
        vec![BuildsetRequest {
            scheduler: self.name.clone(),
            builders: self.builders.clone(),
            sources: self.sources.clone(),
            changes: Vec::new(),
            properties: self.properties.clone(),
            reason: format!(
                "The Periodic scheduler named '{}' triggered this build",
                self.name
            ),
            waited_for: false,
            parent_build: None,
        }]
    }

    fn next_wakeup(&self) -> Option<Epoch> {
        // Never fired: due at once (0 is always in the past).
        Some(self.last_fired.map(|l| l + self.period).unwrap_or(0))
    }
}

// ---------------------------------------------------------------- event-driven schedulers

/// `triggerable`: fires when a `Trigger` step of another build asks.
#[derive(Debug, Clone)]
pub struct Triggerable {
    pub name: String,
    pub builders: Vec<String>,
    pub properties: Properties,
}

impl Triggerable {
    pub fn trigger(
        &self,
        parent_build: BuildId,
        sources: Vec<SourceStamp>,
        properties: &Properties,
        wait_for_finish: bool,
    ) -> BuildsetRequest {
        let mut props = self.properties.clone();
        props.update(properties);
        BuildsetRequest {
            scheduler: self.name.clone(),
            builders: self.builders.clone(),
            sources,
            changes: Vec::new(),
            properties: props,
            reason: format!(
                "The Triggerable scheduler named '{}' triggered this build",
                self.name
            ),
            waited_for: wait_for_finish,
            parent_build: Some(parent_build),
        }
    }
}

impl Scheduler for Triggerable {
    fn name(&self) -> &str {
        &self.name
    }
}

/// `dependent`: builds the same sources when a buildset of the `upstream` scheduler
/// completes with SUCCESS or WARNINGS (as Buildbot's `Dependent`).
#[derive(Debug, Clone)]
pub struct Dependent {
    pub name: String,
    pub upstream: String,
    pub builders: Vec<String>,
    pub properties: Properties,
}

impl Scheduler for Dependent {
    fn name(&self) -> &str {
        &self.name
    }

    fn on_buildset_complete(
        &mut self,
        done: &CompletedBuildset,
        _now: Epoch,
    ) -> Vec<BuildsetRequest> {
        if done.scheduler != self.upstream
            || !matches!(done.results, Results::Success | Results::Warnings)
        {
            return Vec::new();
        }
        vec![BuildsetRequest {
            scheduler: self.name.clone(),
            builders: self.builders.clone(),
            sources: done.sources.clone(),
            changes: Vec::new(),
            properties: self.properties.clone(),
            reason: format!("downstream of '{}'", self.upstream),
            waited_for: false,
            parent_build: None,
        }]
    }
}

// ---------------------------------------------------------------- force

/// The type of a force parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamKind {
    /// Free text; with `regex`-free validation by length only.
    String {
        max_len: usize,
    },
    Int {
        min: i64,
        max: i64,
    },
    Bool,
    Choice(Vec<String>),
    /// A value the user cannot change (Buildbot's `FixedParameter`): input is ignored.
    Fixed(Value),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ParamDef {
    pub name: String,
    pub kind: ParamKind,
    pub required: bool,
    pub default: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForceError {
    UnknownBuilder(String),
    NoBuilders,
    UnknownParameter(String),
    Missing(String),
    Invalid { name: String, why: String },
}

impl std::fmt::Display for ForceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ForceError::UnknownBuilder(b) => {
                write!(f, "builder {b:?} is not forceable by this scheduler")
            }
            ForceError::NoBuilders => write!(f, "no builder selected"),
            ForceError::UnknownParameter(p) => write!(f, "unknown parameter {p:?}"),
            ForceError::Missing(p) => write!(f, "parameter {p:?} is required"),
            ForceError::Invalid { name, why } => write!(f, "parameter {name:?}: {why}"),
        }
    }
}

impl std::error::Error for ForceError {}

/// `force`: a user asks for builds. Parameters named `reason`, `branch`, `revision`,
/// `repository` and `project` set the buildset's reason and sources; the others become build
/// properties (source "Force Build Form").
#[derive(Debug, Clone)]
pub struct Force {
    pub name: String,
    pub builders: Vec<String>,
    pub codebase: SourceStamp,
    pub params: Vec<ParamDef>,
}

impl Force {
    pub fn force(
        &self,
        owner: &str,
        builders: &[String],
        input: &BTreeMap<String, Value>,
    ) -> Result<BuildsetRequest, ForceError> {
        if builders.is_empty() {
            return Err(ForceError::NoBuilders);
        }
        if let Some(b) = builders.iter().find(|b| !self.builders.contains(b)) {
            return Err(ForceError::UnknownBuilder(b.clone()));
        }
        if let Some(k) = input
            .keys()
            .find(|k| !self.params.iter().any(|p| &p.name == *k))
        {
            return Err(ForceError::UnknownParameter(k.clone()));
        }
        let mut values: BTreeMap<String, Value> = BTreeMap::new();
        for p in &self.params {
            let given = input
                .get(&p.name)
                .filter(|v| !v.is_null() && **v != Value::String(String::new()));
            let v = match (&p.kind, given) {
                (ParamKind::Fixed(v), _) => v.clone(),
                (_, Some(v)) => validate(p, v)?,
                (_, None) => match &p.default {
                    Some(d) => d.clone(),
                    None if p.required => return Err(ForceError::Missing(p.name.clone())),
                    None => continue,
                },
            };
            values.insert(p.name.clone(), v);
        }
        let text = |k: &str| {
            values
                .get(k)
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let mut source = self.codebase.clone();
        if let Some(b) = text("branch") {
            source.branch = Some(b);
        }
        if let Some(r) = text("revision") {
            source.revision = Some(r);
        }
        if let Some(r) = text("repository") {
            source.repository = r;
        }
        if let Some(p) = text("project") {
            source.project = p;
        }
        let reason = format!(
            "A build was forced by '{owner}': {}",
            text("reason").unwrap_or_default()
        );
        let mut properties = Properties::default();
        properties.set("owner", owner, "Force Build Form");
        for (k, v) in &values {
            if !["reason", "branch", "revision", "repository", "project"].contains(&k.as_str()) {
                properties.set(k.clone(), v.clone(), "Force Build Form");
            }
        }
        Ok(BuildsetRequest {
            scheduler: self.name.clone(),
            builders: builders.to_vec(),
            sources: vec![source],
            changes: Vec::new(),
            properties,
            reason,
            waited_for: false,
            parent_build: None,
        })
    }
}

fn validate(p: &ParamDef, v: &Value) -> Result<Value, ForceError> {
    let bad = |why: String| ForceError::Invalid {
        name: p.name.clone(),
        why,
    };
    match &p.kind {
        ParamKind::String { max_len } => {
            let s = v.as_str().ok_or_else(|| bad("must be text".into()))?;
            if s.chars().count() > *max_len {
                return Err(bad(format!("longer than {max_len} characters")));
            }
            Ok(v.clone())
        }
        ParamKind::Int { min, max } => {
            // Web forms send numbers as text.
            let n = v
                .as_i64()
                .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                .ok_or_else(|| bad("must be an integer".into()))?;
            if n < *min || n > *max {
                return Err(bad(format!("must be between {min} and {max}")));
            }
            Ok(Value::from(n))
        }
        ParamKind::Bool => match v {
            Value::Bool(b) => Ok(Value::Bool(*b)),
            Value::String(s) if s == "true" || s == "on" || s == "1" => Ok(Value::Bool(true)),
            Value::String(s) if s == "false" || s == "off" || s == "0" => Ok(Value::Bool(false)),
            _ => Err(bad("must be true or false".into())),
        },
        ParamKind::Choice(choices) => {
            let s = v.as_str().ok_or_else(|| bad("must be text".into()))?;
            if !choices.iter().any(|c| c == s) {
                return Err(bad(format!("must be one of {choices:?}")));
            }
            Ok(v.clone())
        }
        ParamKind::Fixed(f) => Ok(f.clone()),
    }
}
