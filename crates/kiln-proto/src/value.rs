//! Small helpers over `rmpv::Value` maps, which keep their keys in wire order.

use rmpv::Value;

/// An ordered msgpack map with string keys, as the protocol uses everywhere.
pub type Map = Vec<(Value, Value)>;

/// Text of a value that may arrive as msgpack str or bin: the Python worker
/// turns bytes into text inside `start_command` args, so both are accepted.
pub fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(match s.as_str() {
            Some(t) => t.to_owned(),
            None => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        }),
        Value::Binary(b) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    }
}

/// Lookups on an ordered map by string key.
pub trait MapExt {
    /// The value stored under `key`, if any.
    fn get_key(&self, key: &str) -> Option<&Value>;
    /// The first of `keys` present with a non-nil value (camelCase and snake_case aliases).
    fn get_any(&self, keys: &[&str]) -> Option<&Value> {
        keys.iter()
            .find_map(|k| self.get_key(k).filter(|v| !v.is_nil()))
    }
    /// Whether `key` is present at all (even with a nil value).
    fn has_key(&self, key: &str) -> bool {
        self.get_key(key).is_some()
    }
}

impl MapExt for [(Value, Value)] {
    fn get_key(&self, key: &str) -> Option<&Value> {
        self.iter().find(|(k, _)| key_is(k, key)).map(|(_, v)| v)
    }
}

impl MapExt for Vec<(Value, Value)> {
    fn get_key(&self, key: &str) -> Option<&Value> {
        self.as_slice().get_key(key)
    }
}

fn key_is(k: &Value, key: &str) -> bool {
    match k {
        Value::String(s) => s.as_bytes() == key.as_bytes(),
        Value::Binary(b) => b.as_slice() == key.as_bytes(),
        _ => false,
    }
}

/// Builds a `(Value::String, value)` map entry.
pub(crate) fn entry(key: &str, v: impl Into<Value>) -> (Value, Value) {
    (Value::from(key), v.into())
}
