//! `%(...)s` interpolation: parsed when the config loads, rendered later against a build's
//! properties, source stamps, secrets and the interpolation's own keywords.

use std::collections::BTreeMap;
use std::fmt;

use kiln_model::{Properties, SourceStamp};
use serde::{Deserialize, Serialize};

use crate::secrets::Secrets;

/// What to do when the looked-up value is missing (Buildbot's `:-`, `:~`, `:+`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fallback {
    /// No modifier: a missing value renders as the empty string.
    None,
    /// `:-text`: `text` if the value is missing.
    IfMissing(String),
    /// `:~text`: `text` if the value is missing or false-ish (empty, 0, false, null).
    IfFalsy(String),
    /// `:+text`: `text` if the value is present, else the empty string.
    IfPresent(String),
}

/// One piece of a parsed interpolation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Literal(String),
    /// `%(prop:name)s`
    Prop {
        name: String,
        fallback: Fallback,
    },
    /// `%(src:codebase:attr)s`; `codebase` may be empty (the default codebase).
    Src {
        codebase: String,
        attr: SrcAttr,
        fallback: Fallback,
    },
    /// `%(secret:name)s`
    Secret {
        name: String,
    },
    /// `%(kw:name)s`: a keyword given to `interpolate(...)`.
    Kw {
        name: String,
        fallback: Fallback,
    },
}

/// Source-stamp attributes that `%(src:...)s` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SrcAttr {
    Branch,
    Revision,
    Repository,
    Project,
    Codebase,
}

impl SrcAttr {
    fn parse(s: &str) -> Option<SrcAttr> {
        Some(match s {
            "branch" => SrcAttr::Branch,
            "revision" => SrcAttr::Revision,
            "repository" => SrcAttr::Repository,
            "project" => SrcAttr::Project,
            "codebase" => SrcAttr::Codebase,
            _ => return None,
        })
    }
}

/// A parsed format string such as `"build-%(prop:buildnumber)s on %(src::branch:-main)s"`.
/// Serialized as its source text, so a config round-trips through JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Interpolation {
    source: String,
    parts: Vec<Part>,
}

/// A syntax error in an interpolation, with the byte offset in the format string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad interpolation {text:?} at offset {offset}: {message}")]
pub struct InterpolationError {
    pub text: String,
    pub offset: usize,
    pub message: String,
}

impl TryFrom<String> for Interpolation {
    type Error = InterpolationError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Interpolation::parse(&s)
    }
}

impl From<Interpolation> for String {
    fn from(i: Interpolation) -> String {
        i.source
    }
}

impl fmt::Display for Interpolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

fn split_fallback(s: &str) -> (&str, Fallback) {
    // The first `:-`, `:~` or `:+` ends the key.
    let bytes = s.as_bytes();
    for i in 0..bytes.len().saturating_sub(1) {
        if bytes[i] == b':' {
            let rest = s[i + 2..].to_string();
            match bytes[i + 1] {
                b'-' => return (&s[..i], Fallback::IfMissing(rest)),
                b'~' => return (&s[..i], Fallback::IfFalsy(rest)),
                b'+' => return (&s[..i], Fallback::IfPresent(rest)),
                _ => {}
            }
        }
    }
    (s, Fallback::None)
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

impl Interpolation {
    /// Parses a format string. `%%` is a literal `%`.
    pub fn parse(text: &str) -> Result<Interpolation, InterpolationError> {
        let err = |offset: usize, message: String| InterpolationError {
            text: text.to_string(),
            offset,
            message,
        };
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut i = 0;
        let b = text.as_bytes();
        while i < b.len() {
            if b[i] != b'%' {
                let ch = text[i..].chars().next().unwrap();
                lit.push(ch);
                i += ch.len_utf8();
                continue;
            }
            match b.get(i + 1) {
                Some(b'%') => {
                    lit.push('%');
                    i += 2;
                    continue;
                }
                Some(b'(') => {}
                _ => {
                    return Err(err(
                        i,
                        "a lone `%`: write `%%` for a percent sign, or `%(prop:name)s`".into(),
                    ));
                }
            }
            let start = i;
            let close = text[i..]
                .find(')')
                .ok_or_else(|| err(start, "`%(` without a closing `)s`".into()))?
                + i;
            if b.get(close + 1) != Some(&b's') {
                return Err(err(
                    close,
                    "expected `s` after `)`: the form is `%(kind:name)s`".into(),
                ));
            }
            let inner = &text[i + 2..close];
            let (kind, rest) = inner.split_once(':').ok_or_else(|| {
                err(
                    start,
                    format!("`%({inner})s` has no kind: use prop:, src:, secret: or kw:"),
                )
            })?;
            let part = match kind {
                "prop" | "kw" => {
                    let (name, fallback) = split_fallback(rest);
                    if !valid_name(name) {
                        return Err(err(start, format!("bad {kind} name {name:?}")));
                    }
                    if kind == "prop" {
                        Part::Prop {
                            name: name.into(),
                            fallback,
                        }
                    } else {
                        Part::Kw {
                            name: name.into(),
                            fallback,
                        }
                    }
                }
                "src" => {
                    let (codebase, attr) = rest.split_once(':').ok_or_else(|| {
                        err(
                            start,
                            "src needs `%(src:codebase:attr)s` (codebase may be empty)".into(),
                        )
                    })?;
                    let (attr, fallback) = split_fallback(attr);
                    let attr = SrcAttr::parse(attr).ok_or_else(|| {
                        err(start, format!("unknown source attribute {attr:?}: use branch, revision, repository, project or codebase"))
                    })?;
                    Part::Src {
                        codebase: codebase.into(),
                        attr,
                        fallback,
                    }
                }
                "secret" => {
                    if !valid_name(rest) {
                        return Err(err(start, format!("bad secret name {rest:?}")));
                    }
                    Part::Secret { name: rest.into() }
                }
                other => {
                    return Err(err(
                        start,
                        format!("unknown kind {other:?}: use prop, src, secret or kw"),
                    ));
                }
            };
            if !lit.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut lit)));
            }
            parts.push(part);
            i = close + 2;
        }
        if !lit.is_empty() {
            parts.push(Part::Literal(lit));
        }
        Ok(Interpolation {
            source: text.to_string(),
            parts,
        })
    }

    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Names of the secrets this interpolation reads.
    pub fn secret_names(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Secret { name } => Some(name.as_str()),
            _ => None,
        })
    }

    /// Names of the `%(kw:...)s` keywords used.
    pub fn kw_names(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Kw { name, .. } => Some(name.as_str()),
            _ => None,
        })
    }

    /// Renders against `ctx`. `kwargs` are the keywords given to `interpolate(...)`, already rendered.
    pub fn render(
        &self,
        ctx: &RenderContext<'_>,
        kwargs: &BTreeMap<String, String>,
    ) -> Result<String, RenderError> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Literal(s) => out.push_str(s),
                Part::Prop { name, fallback } => {
                    let v = ctx.properties.and_then(|p| p.get(name)).map(json_to_text);
                    apply(&mut out, v, fallback);
                }
                Part::Kw { name, fallback } => apply(&mut out, kwargs.get(name).cloned(), fallback),
                Part::Src {
                    codebase,
                    attr,
                    fallback,
                } => {
                    let v = ctx
                        .sources
                        .get(codebase.as_str())
                        .and_then(|s| source_attr(s, *attr))
                        .map(str::to_string);
                    apply(&mut out, v, fallback);
                }
                Part::Secret { name } => {
                    let secrets = ctx
                        .secrets
                        .ok_or_else(|| RenderError::MissingSecret(name.clone()))?;
                    out.push_str(
                        secrets
                            .get(name)
                            .ok_or_else(|| RenderError::MissingSecret(name.clone()))?,
                    );
                }
            }
        }
        Ok(out)
    }
}

fn json_to_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn falsy(s: &str) -> bool {
    matches!(s, "" | "0" | "false" | "False" | "null" | "None")
}

fn apply(out: &mut String, v: Option<String>, fallback: &Fallback) {
    match (fallback, v) {
        (Fallback::None, v) => out.push_str(v.as_deref().unwrap_or("")),
        (Fallback::IfMissing(d), None) => out.push_str(d),
        (Fallback::IfMissing(_), Some(v)) => out.push_str(&v),
        (Fallback::IfFalsy(d), v) => match v {
            Some(v) if !falsy(&v) => out.push_str(&v),
            _ => out.push_str(d),
        },
        (Fallback::IfPresent(r), Some(_)) => out.push_str(r),
        (Fallback::IfPresent(_), None) => {}
    }
}

/// A source stamp's attribute, as `%(src:codebase:attr)s` sees it.
fn source_attr(s: &SourceStamp, a: SrcAttr) -> Option<&str> {
    match a {
        SrcAttr::Branch => s.branch.as_deref(),
        SrcAttr::Revision => s.revision.as_deref(),
        SrcAttr::Repository => Some(&s.repository),
        SrcAttr::Project => Some(&s.project),
        SrcAttr::Codebase => Some(&s.codebase),
    }
}

/// What an interpolation is rendered against.
#[derive(Debug, Clone, Default)]
pub struct RenderContext<'a> {
    pub properties: Option<&'a Properties>,
    /// Source stamps by codebase name (`""` is the default codebase).
    pub sources: BTreeMap<&'a str, &'a SourceStamp>,
    pub secrets: Option<&'a Secrets>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("secret {0:?} is not available")]
    MissingSecret(String),
}
