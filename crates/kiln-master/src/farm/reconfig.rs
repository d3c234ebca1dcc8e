//! Reconfig: a new config put in force by the farm task. Running builds keep the config they
//! started with (each holds its own `Arc`); unchanged schedulers keep their state.

use std::sync::Arc;

use kiln_config::{ConfigDiff, MasterConfig};
use kiln_model::Event;

use super::task::FarmTask;
use crate::sched::{self, SchedulerSet};

/// What a reconfig changed, for the log and the `kiln reconfig` output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconfigReport {
    pub summary: String,
}

impl FarmTask {
    pub async fn apply_config(&mut self, new: MasterConfig) -> ReconfigReport {
        let old = self.state.config.clone();
        let diff = ConfigDiff::between(&old, &new);
        let summary = describe(&diff);
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
        tracing::info!("reconfig applied: {summary}");
        self.services.bus.publish(Event::ConfigReloaded {
            summary: summary.clone(),
        });
        ReconfigReport { summary }
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

/// One line: what a reconfig added (+), removed (-) and changed (~).
fn describe(diff: &ConfigDiff) -> String {
    if diff.is_empty() {
        return "no changes".into();
    }
    let mut parts = Vec::new();
    if !diff.master.is_empty() {
        parts.push(
            "master settings changed (ports and database apply at the next restart)".to_string(),
        );
    }
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
