//! What changed between two configs, for `kiln reconfig`.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::types::MasterConfig;

/// Names added, removed and changed in one kind of object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NamedDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl NamedDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    fn between(old: BTreeMap<String, Value>, new: BTreeMap<String, Value>) -> NamedDiff {
        let mut d = NamedDiff::default();
        for (k, v) in &new {
            match old.get(k) {
                None => d.added.push(k.clone()),
                Some(o) if o != v => d.changed.push(k.clone()),
                _ => {}
            }
        }
        d.removed = old
            .keys()
            .filter(|k| !new.contains_key(*k))
            .cloned()
            .collect();
        d
    }
}

/// The difference between a running config and a new one. Moving an object to another line
/// is not a change; a changed secret value changes the workers (and builders, schedulers)
/// that use it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ConfigDiff {
    /// The `master(...)` settings that differ, by name (some apply only at a restart).
    pub master: Vec<String>,
    pub workers: NamedDiff,
    pub builders: NamedDiff,
    pub schedulers: NamedDiff,
    pub locks: NamedDiff,
}

fn strip(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("_loc");
            m.values_mut().for_each(strip);
        }
        Value::Array(a) => a.iter_mut().for_each(strip),
        _ => {}
    }
}

fn secret_values(v: &Value, cfg: &MasterConfig, out: &mut BTreeMap<String, Option<String>>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(n)) = m.get("__secret") {
                out.insert(n.clone(), cfg.secrets.get(n).map(str::to_string));
            }
            if let Some(Value::String(f)) = m.get("__interpolate")
                && let Ok(i) = crate::interp::Interpolation::parse(f)
            {
                for n in i.secret_names() {
                    out.insert(n.to_string(), cfg.secrets.get(n).map(str::to_string));
                }
            }
            m.values().for_each(|x| secret_values(x, cfg, out));
        }
        Value::Array(a) => a.iter().for_each(|x| secret_values(x, cfg, out)),
        _ => {}
    }
}

fn keyed<T: Serialize>(
    cfg: &MasterConfig,
    items: impl Iterator<Item = (String, T)>,
) -> BTreeMap<String, Value> {
    items
        .map(|(name, t)| {
            let mut v = serde_json::to_value(t).unwrap_or(Value::Null);
            strip(&mut v);
            // Fold in the values of the secrets it names, so a rotated password counts as a change.
            let mut sv = BTreeMap::new();
            secret_values(&v, cfg, &mut sv);
            if !sv.is_empty() {
                v = serde_json::json!([v, sv]);
            }
            (name, v)
        })
        .collect()
}

impl ConfigDiff {
    pub fn between(old: &MasterConfig, new: &MasterConfig) -> ConfigDiff {
        let master = |c: &MasterConfig| {
            let mut v = serde_json::to_value(&c.master).unwrap_or(Value::Null);
            strip(&mut v);
            match v {
                Value::Object(m) => m.into_iter().collect::<BTreeMap<_, _>>(),
                _ => BTreeMap::new(),
            }
        };
        let (old_m, new_m) = (master(old), master(new));
        let changed: std::collections::BTreeSet<String> = old_m
            .keys()
            .chain(new_m.keys())
            .filter(|k| old_m.get(*k) != new_m.get(*k))
            .cloned()
            .collect();
        ConfigDiff {
            master: changed.into_iter().collect(),
            workers: NamedDiff::between(
                keyed(old, old.workers.iter().map(|w| (w.name.clone(), w))),
                keyed(new, new.workers.iter().map(|w| (w.name.clone(), w))),
            ),
            builders: NamedDiff::between(
                keyed(old, old.builders.iter().map(|b| (b.name.clone(), b))),
                keyed(new, new.builders.iter().map(|b| (b.name.clone(), b))),
            ),
            schedulers: NamedDiff::between(
                keyed(old, old.schedulers.iter().map(|s| (s.name.clone(), s))),
                keyed(new, new.schedulers.iter().map(|s| (s.name.clone(), s))),
            ),
            locks: NamedDiff::between(
                keyed(old, old.locks.iter().map(|(n, l)| (n.clone(), l))),
                keyed(new, new.locks.iter().map(|(n, l)| (n.clone(), l))),
            ),
        }
    }

    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.master.is_empty()
            && self.workers.is_empty()
            && self.builders.is_empty()
            && self.schedulers.is_empty()
            && self.locks.is_empty()
    }
}
