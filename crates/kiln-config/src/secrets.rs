//! Secrets: read from a secrets directory (one file per secret, trailing newline dropped) or from
//! the environment (`KILN_SECRET_<NAME>`, which wins), and a [`Redactor`] that hides their values.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where secret values come from.
#[derive(Debug, Clone, Default)]
pub struct SecretSource {
    /// Directory holding one file per secret; `None` means the environment only.
    pub dir: Option<PathBuf>,
    /// Read `KILN_SECRET_<NAME>` variables (on by default through [`SecretSource::new`]).
    pub use_env: bool,
}

impl SecretSource {
    pub fn new(dir: Option<PathBuf>) -> SecretSource {
        SecretSource { dir, use_env: true }
    }

    /// The environment variable that holds secret `name`: `KILN_SECRET_` + the name upper-cased,
    /// with every character that is not a letter or digit turned into `_`.
    pub fn env_var(name: &str) -> String {
        let mut v = String::from("KILN_SECRET_");
        v.extend(name.chars().map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        }));
        v
    }

    /// Looks a secret up. `Ok(None)` when it is in neither place.
    pub fn lookup(&self, name: &str) -> std::io::Result<Option<String>> {
        if self.use_env
            && let Ok(v) = std::env::var(Self::env_var(name))
        {
            return Ok(Some(v));
        }
        if let Some(dir) = &self.dir {
            if name.contains('/') || name.contains('\\') || name.starts_with('.') {
                return Ok(None);
            }
            match std::fs::read_to_string(dir.join(name)) {
                Ok(mut s) => {
                    while s.ends_with('\n') || s.ends_with('\r') {
                        s.pop();
                    }
                    return Ok(Some(s));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }
}

/// The secret values a config uses, by name. Its `Debug` shows names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets {
    values: BTreeMap<String, String>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.values.keys()).finish()
    }
}

impl Secrets {
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.values.insert(name.into(), value.into());
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// A redactor for these secrets.
    pub fn redactor(&self) -> Redactor {
        Redactor::new(self.values.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }
}

/// Replaces every secret value in a text with `<secret:name>`; for log lines and API answers.
/// Longer values are replaced first, so a secret that contains another is hidden whole.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    // (value, replacement), longest value first
    pairs: Vec<(String, String)>,
}

impl Redactor {
    pub fn new<'a>(secrets: impl IntoIterator<Item = (&'a str, &'a str)>) -> Redactor {
        let mut pairs: Vec<(String, String)> = secrets
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (v.to_string(), format!("<secret:{k}>")))
            .collect();
        pairs.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Redactor { pairs }
    }

    /// The text with every secret value replaced.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (v, r) in &self.pairs {
            if out.contains(v.as_str()) {
                out = out.replace(v.as_str(), r);
            }
        }
        out
    }

    /// Redacts every string inside a JSON value (keys and values), for API answers.
    pub fn redact_json(&self, v: &mut serde_json::Value) {
        match v {
            serde_json::Value::String(s) => *s = self.redact(s),
            serde_json::Value::Array(a) => a.iter_mut().for_each(|x| self.redact_json(x)),
            serde_json::Value::Object(m) => {
                let old = std::mem::take(m);
                for (k, mut x) in old {
                    self.redact_json(&mut x);
                    m.insert(self.redact(&k), x);
                }
            }
            _ => {}
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// (value, replacement), longest value first.
    pub(crate) fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }
}
