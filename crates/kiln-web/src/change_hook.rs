//! `POST /change_hook/base`: Buildbot's `base` change hook (`www/hooks/base.py`), how scripts
//! and other systems tell the master about a commit. The fields come as a form (query string
//! or urlencoded body) or as a JSON object with the same names; the master's
//! [`crate::Control::add_change`] does the rest. Answers 202 `1 change found`, or 400 with
//! what is wrong with the fields.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::{ApiState, ChangeRequest};

/// `POST /change_hook/base` (and `/change_hook`, the base hook in Buildbot too).
pub(crate) async fn base(
    State(state): State<ApiState>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let change = HookFields::read(q.as_deref(), ctype, &body).and_then(HookFields::change);
    let change = match change {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    match state.control.add_change(change).await {
        Ok(_) => (StatusCode::ACCEPTED, "1 change found").into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, crate::error_chain(&e)).into_response(),
    }
}

/// What is wrong with the hook's fields. The 400 answer is the error with its source (the
/// JSON parser's complaint, where there is one) on one line, as Buildbot's hook words it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HookError {
    #[error("the JSON body must be an object of change fields")]
    BodyNotAnObject,
    #[error("the JSON body is not valid JSON")]
    BodyNotJson(#[source] serde_json::Error),
    /// A form field that must hold JSON (`files`, `properties`) does not.
    #[error("{field} is not valid JSON")]
    FieldNotJson {
        field: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("files must be a JSON list of file names")]
    FilesNotAList,
    #[error("properties must be a JSON object")]
    PropertiesNotAnObject,
    #[error("when_timestamp {0:?} is not a number of seconds")]
    BadTimestamp(String),
    #[error("a change needs an author (field `author` or `who`)")]
    NoAuthor,
}

impl IntoResponse for HookError {
    fn into_response(self) -> Response {
        (StatusCode::BAD_REQUEST, crate::error_chain(&self)).into_response()
    }
}

/// The hook's fields: name → first value (Buildbot's `firstOrNothing`), as JSON.
struct HookFields(BTreeMap<String, Value>);

impl HookFields {
    /// The query string's fields, then the body's (a JSON object's keys replace them; a
    /// form's add the names not seen yet).
    fn read(query: Option<&str>, ctype: &str, body: &[u8]) -> Result<HookFields, HookError> {
        let mut fields = BTreeMap::new();
        let mut take_form = |bytes: &[u8]| {
            for (k, v) in form_urlencoded::parse(bytes) {
                fields
                    .entry(k.into_owned())
                    .or_insert(Value::String(v.into_owned()));
            }
        };
        take_form(query.unwrap_or("").as_bytes());
        if ctype.starts_with("application/json") {
            match serde_json::from_slice::<Value>(body) {
                Ok(Value::Object(m)) => fields.extend(m),
                Ok(_) => return Err(HookError::BodyNotAnObject),
                Err(e) => return Err(HookError::BodyNotJson(e)),
            }
        } else {
            take_form(body);
        }
        Ok(HookFields(fields))
    }

    fn text(&self, k: &str) -> Option<String> {
        match self.0.get(k) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(v) => Some(v.to_string()),
        }
    }

    /// `files` and `properties`: JSON in a form field, or JSON values in a JSON body.
    fn json(&self, k: &'static str) -> Result<Option<Value>, HookError> {
        match self.0.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => serde_json::from_str(s)
                .map(Some)
                .map_err(|source| HookError::FieldNotJson { field: k, source }),
            Some(v) => Ok(Some(v.clone())),
        }
    }

    fn files(&self) -> Result<Vec<String>, HookError> {
        match self.json("files")? {
            None => Ok(vec![]),
            Some(Value::Array(a)) => Ok(a
                .into_iter()
                .map(|v| {
                    v.as_str()
                        .map(String::from)
                        .unwrap_or_else(|| v.to_string())
                })
                .collect()),
            Some(_) => Err(HookError::FilesNotAList),
        }
    }

    fn properties(&self) -> Result<BTreeMap<String, Value>, HookError> {
        match self.json("properties")? {
            None => Ok(BTreeMap::new()),
            Some(Value::Object(m)) => Ok(m.into_iter().collect()),
            Some(_) => Err(HookError::PropertiesNotAnObject),
        }
    }

    /// `when_timestamp` (or `when`): seconds, fractions dropped.
    fn when(&self) -> Result<Option<i64>, HookError> {
        match self.text("when_timestamp").or_else(|| self.text("when")) {
            None => Ok(None),
            Some(s) => match s.trim().parse::<f64>() {
                Ok(f) => Ok(Some(f as i64)),
                Err(_) => Err(HookError::BadTimestamp(s)),
            },
        }
    }

    fn change(self) -> Result<ChangeRequest, HookError> {
        let files = self.files()?;
        let properties = self.properties()?;
        let when_timestamp = self.when()?;
        let author = self
            .text("author")
            .filter(|a| !a.is_empty())
            .or_else(|| self.text("who"))
            .ok_or(HookError::NoAuthor)?;
        Ok(ChangeRequest {
            author,
            committer: self.text("committer"),
            files,
            comments: self.text("comments").unwrap_or_default(),
            revision: self.text("revision"),
            when_timestamp,
            branch: self.text("branch"),
            category: self.text("category"),
            revlink: self.text("revlink"),
            properties,
            repository: self.text("repository").unwrap_or_default(),
            project: self.text("project").unwrap_or_default(),
            codebase: self.text("codebase").unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(query: &str, ctype: &str, body: &str) -> HookError {
        HookFields::read(Some(query), ctype, body.as_bytes())
            .and_then(HookFields::change)
            .unwrap_err()
    }

    #[test]
    fn answers_read_as_before_and_keep_the_parser_error() {
        let e = refused("", "application/json", "{\"author\": ");
        let HookError::BodyNotJson(source) = &e else {
            panic!("{e:?}")
        };
        assert_eq!(
            crate::error_chain(&e),
            format!("the JSON body is not valid JSON: {source}")
        );

        let e = refused("", "", "author=a&files=%5Bx");
        let HookError::FieldNotJson { field, source } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(*field, "files");
        assert_eq!(source.line(), 1);
        let parser = serde_json::from_str::<Value>("[x").unwrap_err();
        assert_eq!(
            crate::error_chain(&e),
            format!("files is not valid JSON: {parser}")
        );

        for (query, text) in [
            ("", "a change needs an author (field `author` or `who`)"),
            ("who=a&files=1", "files must be a JSON list of file names"),
            (
                "who=a&properties=%5B%5D",
                "properties must be a JSON object",
            ),
            (
                "who=a&when=noon",
                "when_timestamp \"noon\" is not a number of seconds",
            ),
        ] {
            assert_eq!(crate::error_chain(&refused(query, "", "")), text);
        }
        assert!(matches!(
            refused("", "application/json", "[]"),
            HookError::BodyNotAnObject
        ));
    }
}
