//! The `get_worker_info` result (§9), built in Buildbot's key order.

use rmpv::Value;

use crate::args::CommandName;
use crate::value::{Map, MapExt, entry, text_of};

/// Worker information as an ordered map: `info/` files, `os_*` keys, then the fixed keys.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WorkerInfo(pub Map);

impl WorkerInfo {
    /// Sets `key`, replacing an earlier value in place (later keys overwrite earlier ones).
    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        let value = value.into();
        match self
            .0
            .iter_mut()
            .find(|(k, _)| text_of(k).as_deref() == Some(key))
        {
            Some(slot) => slot.1 = value,
            None => self.0.push(entry(key, value)),
        }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get_key(key)
    }

    /// The `worker_commands` map every worker reports: all 14 names at `version`.
    pub fn commands(version: &str) -> Value {
        Value::Map(
            CommandName::ADVERTISED
                .iter()
                .map(|n| entry(n, version))
                .collect(),
        )
    }

    pub fn into_value(self) -> Value {
        Value::Map(self.0)
    }
}
