//! Reconfig: a new config put in force by the farm task. Running builds keep the config they
//! started with (each holds its own `Arc`); unchanged schedulers keep their state.

use std::sync::Arc;

use kiln_config::{ConfigDiff, MasterConfig};
use kiln_model::Event;

use super::task::FarmTask;
use crate::sched::{self, SchedulerSet};

/// What a reconfig changed, for the log and the `kiln reconfig` output. Every `master(...)`
/// setting that changed is in exactly one list: put in force, waiting for a restart, or not
/// applied (with the reason) — nothing is reported as applied that was not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconfigReport {
    /// One line: the settings as below, then workers, builders, schedulers and locks added
    /// (+), removed (-) and changed (~).
    pub summary: String,
    /// `master(...)` settings in force from now on.
    pub applied: Vec<String>,
    /// `master(...)` settings that take effect at the next restart (ports, database).
    pub at_restart: Vec<String>,
    /// `master(...)` settings that could not be applied, with why; the old value stays.
    pub not_applied: Vec<(String, String)>,
    /// The objects part of the summary.
    objects: String,
}

/// Settings read once at start: the listening sockets and the database connection.
pub const RESTART_ONLY: &[&str] = &["bind", "db_url", "web_port", "worker_port"];

impl ReconfigReport {
    fn new(diff: &ConfigDiff) -> ReconfigReport {
        let (at_restart, applied) = diff
            .master
            .iter()
            .cloned()
            .partition(|n| RESTART_ONLY.contains(&n.as_str()));
        let mut r = ReconfigReport {
            applied,
            at_restart,
            objects: describe_objects(diff),
            ..Default::default()
        };
        r.summary = r.render();
        r
    }

    /// Moves `setting` from the applied ones to those that could not be applied (the caller
    /// could not put it in force, e.g. an unreadable TLS key file).
    pub fn not_applied(&mut self, setting: &str, reason: impl Into<String>) {
        self.applied.retain(|n| n != setting);
        self.not_applied.push((setting.to_string(), reason.into()));
        self.summary = self.render();
    }

    /// Adds something put in force that the config diff could not see (e.g. a TLS
    /// certificate file replaced under the same name).
    pub fn also_applied(&mut self, what: impl Into<String>) {
        self.applied.push(what.into());
        self.summary = self.render();
    }

    fn render(&self) -> String {
        let mut parts = Vec::new();
        if !self.applied.is_empty() {
            parts.push(format!(
                "master settings applied: {}",
                self.applied.join(", ")
            ));
        }
        if !self.at_restart.is_empty() {
            parts.push(format!(
                "master settings that wait for a restart: {}",
                self.at_restart.join(", ")
            ));
        }
        for (name, why) in &self.not_applied {
            parts.push(format!("{name} NOT applied ({why}); the old value stays"));
        }
        if !self.objects.is_empty() {
            parts.push(self.objects.clone());
        }
        if parts.is_empty() {
            return "no changes".into();
        }
        parts.join("; ")
    }
}

impl FarmTask {
    pub async fn apply_config(&mut self, new: MasterConfig) -> ReconfigReport {
        let old = self.state.config.clone();
        let diff = ConfigDiff::between(&old, &new);
        let report = ReconfigReport::new(&diff);
        let new = Arc::new(new);
        self.state.set_config(new.clone());
        if let Err(e) = self.sync_ids().await {
            tracing::error!(
                "reconfig: storing builders and workers: {}",
                crate::error_chain(&e)
            );
        }
        let fresh = sched::build(&new, self.services.now());
        keep_unchanged_schedulers(&mut self.state.scheds, fresh, &diff);
        for w in old.workers.iter().filter(|w| new.worker(&w.name).is_none()) {
            self.services.workers.disconnect(&w.name);
        }
        self.state.round_due = true;
        self.services.bus.publish(Event::ConfigReloaded {
            summary: report.summary.clone(),
        });
        report
    }
}

/// Puts `fresh` in force, but unchanged schedulers keep their state (running tree-stable
/// timers, the next nightly firing); changed and added ones start fresh.
fn keep_unchanged_schedulers(
    current: &mut SchedulerSet,
    mut fresh: SchedulerSet,
    diff: &ConfigDiff,
) {
    let keep = |name: &str| {
        !diff.schedulers.changed.iter().any(|n| n == name)
            && !diff.schedulers.added.iter().any(|n| n == name)
    };
    let mut old: Vec<_> = std::mem::take(&mut current.events.list);
    for slot in fresh.events.list.iter_mut() {
        if keep(slot.name())
            && let Some(pos) = old.iter().position(|o| o.name() == slot.name())
        {
            *slot = old.swap_remove(pos);
        }
    }
    *current = fresh;
}

/// What a reconfig added (+), removed (-) and changed (~) among the named objects.
fn describe_objects(diff: &ConfigDiff) -> String {
    let mut parts = Vec::new();
    for (what, d) in [
        ("workers", &diff.workers),
        ("builders", &diff.builders),
        ("schedulers", &diff.schedulers),
        ("locks", &diff.locks),
    ] {
        if d.is_empty() {
            continue;
        }
        let mut p = format!("{what}:");
        for (sign, names) in [("+", &d.added), ("-", &d.removed), ("~", &d.changed)] {
            for n in names {
                p.push_str(&format!(" {sign}{n}"));
            }
        }
        parts.push(p);
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diff(master: &[&str]) -> ConfigDiff {
        ConfigDiff {
            master: master.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn ports_and_database_wait_for_a_restart_and_the_rest_is_applied() {
        let r = ReconfigReport::new(&diff(&["log_max_bytes", "tls_cert", "web_port", "db_url"]));
        assert_eq!(r.applied, ["log_max_bytes", "tls_cert"]);
        assert_eq!(r.at_restart, ["web_port", "db_url"]);
        assert_eq!(
            r.summary,
            "master settings applied: log_max_bytes, tls_cert; master settings that wait for a restart: web_port, db_url"
        );
    }

    #[test]
    fn a_setting_that_could_not_be_applied_is_not_reported_as_applied() {
        let mut r = ReconfigReport::new(&diff(&["tls_cert", "tls_key", "title"]));
        r.not_applied("tls_key", "cannot read key.pem: no such file");
        assert_eq!(r.applied, ["tls_cert", "title"]);
        assert!(
            r.summary.ends_with(
                "tls_key NOT applied (cannot read key.pem: no such file); the old value stays"
            ),
            "{}",
            r.summary
        );
        assert_eq!(
            ReconfigReport::new(&ConfigDiff::default()).summary,
            "no changes"
        );
    }
}
