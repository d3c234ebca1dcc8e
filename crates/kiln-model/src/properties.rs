//! Build properties: name → (JSON value, source), as Buildbot keeps them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A property value and where it came from ("Builder", "Worker", "Force Build Form", …).
/// Serialized as Buildbot does: `[value, source]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PropertyValue(pub serde_json::Value, pub String);

/// A set of properties, ordered by name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Properties(pub BTreeMap<String, PropertyValue>);

impl Properties {
    pub fn set(
        &mut self,
        name: impl Into<String>,
        value: impl Into<serde_json::Value>,
        source: impl Into<String>,
    ) {
        self.0
            .insert(name.into(), PropertyValue(value.into(), source.into()));
    }

    pub fn get(&self, name: &str) -> Option<&serde_json::Value> {
        self.0.get(name).map(|p| &p.0)
    }

    /// Adds every property of `other`, replacing same-named ones (later sources win).
    pub fn update(&mut self, other: &Properties) {
        for (k, v) in &other.0 {
            self.0.insert(k.clone(), v.clone());
        }
    }
}
