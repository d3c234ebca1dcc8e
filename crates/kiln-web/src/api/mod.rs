//! `GET /api/v2/...`: Buildbot 4.3's REST resources (`buildbot/data/*.py`), a module per
//! resource family. A module holds the resource's answer (a serde struct with Buildbot's field
//! names, values and nulls) and the handlers of every path that answers it, as Buildbot's data
//! modules do (`/builders/{builder}/builds` is in `builds.rs`).
//!
//! A handler takes an [`ApiRequest`] and its path, parses the query string against the
//! resource's fields ([`Resource::FIELDS`], `query.rs`), reads the store and answers through
//! [`ApiRequest::one`], [`ApiRequest::collection`] or [`ApiRequest::page`]: Buildbot's envelope
//! `{"<resource>": [...], "meta": {"total": N}}`, field selection applied, secrets redacted.

pub(crate) mod builders;
pub(crate) mod buildrequests;
pub(crate) mod builds;
pub(crate) mod buildsets;
pub(crate) mod changes;
pub(crate) mod forceschedulers;
pub(crate) mod logs;
pub(crate) mod masters;
pub(crate) mod properties;
pub(crate) mod sourcestamps;
pub(crate) mod steps;
pub(crate) mod workers;

use std::convert::Infallible;

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use kiln_store::StoreError;
use kiln_store::api_queries::{ApiCond, ApiOp, ApiPage, ApiQuery, ApiTable, ApiValue};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::query::{self, FType, Spec};
use crate::{ApiError, ApiState};

/// What a REST handler answers.
pub(crate) type ApiResult = Result<Response, ApiError>;

/// One of Buildbot's resources as Kiln answers it.
pub(crate) trait Resource: Serialize {
    /// The envelope's key: `builds` in `{"builds": [...], "meta": {...}}`.
    const PLURAL: &'static str;
    /// The fields a query may select, filter or order on, with their types.
    const FIELDS: &'static [(&'static str, FType)];
}

/// A resource whose collections the database filters, orders and pages
/// (`kiln_store::api_queries`): the big tables.
pub(crate) trait SqlResource: Resource + Sized {
    /// The store's record the answer is made of.
    type Row;
    const TABLE: ApiTable;
    /// A page of rows, and how many match in all.
    fn fetch(
        state: &ApiState,
        sql: &ApiQuery,
    ) -> impl Future<Output = Result<ApiPage<Self::Row>, StoreError>> + Send;
    /// The answer for a row, with what else it shows read from the store.
    fn load(
        state: &ApiState,
        spec: &Spec,
        row: Self::Row,
    ) -> impl Future<Output = Result<Self, ApiError>> + Send;
}

/// Who is asking. Kiln has no logins yet, so every reader is anonymous; what a reader may see
/// is decided from this (worker info: `workers::shown_info`), so the change that adds logins
/// adds its variants here and opens those places.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reader {
    Anonymous,
}

/// What a `GET` handler needs besides its path: the state, the query string, and whether the
/// client takes compact JSON. Handlers parse the query themselves, so each keeps its order of
/// checks: mostly the path first, as Buildbot (a bad path is a 404 before a bad query is a
/// 400, and a bad query a 400 before a missing row is a 404).
pub(crate) struct ApiRequest {
    pub(crate) state: ApiState,
    query: Option<String>,
    compact: bool,
}

impl FromRequestParts<ApiState> for ApiRequest {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Infallible> {
        let compact = parts
            .headers
            .get(header::ACCEPT)
            .and_then(|a| a.to_str().ok())
            .is_some_and(|a| a.contains("application/json"));
        Ok(ApiRequest {
            state: state.clone(),
            query: parts.uri.query().map(String::from),
            compact,
        })
    }
}

impl ApiRequest {
    /// Who is asking: always anonymous until the web port has logins.
    pub(crate) fn reader(&self) -> Reader {
        Reader::Anonymous
    }

    /// The query of a collection: filters, `order`, `limit`/`offset`, `field`, `property`.
    pub(crate) fn collection_query<R: Resource>(&self) -> Result<Spec, ApiError> {
        query::parse(self.query.as_deref(), R::FIELDS, true)
    }

    /// The query of a single resource: filters are refused.
    pub(crate) fn single_query<R: Resource>(&self) -> Result<Spec, ApiError> {
        query::parse(self.query.as_deref(), R::FIELDS, false)
    }

    /// One resource: `{"<plural>": [answer], "meta": {}}`.
    pub(crate) fn one<R: Resource>(&self, spec: &Spec, answer: &R) -> Response {
        let row = query::select(spec, to_row(answer));
        self.envelope(R::PLURAL, vec![row], None)
    }

    /// A whole collection, filtered, ordered and paged here (the small ones).
    pub(crate) fn collection<R: Resource>(&self, spec: &Spec, all: &[R]) -> Response {
        let (rows, total) = query::apply(spec, all.iter().map(to_row).collect());
        self.envelope(R::PLURAL, rows, Some(total))
    }

    /// A page the database filtered, ordered and cut; `total` counts every match.
    pub(crate) fn page<R: Resource>(&self, spec: &Spec, page: &[R], total: usize) -> Response {
        let rows = page
            .iter()
            .map(|a| query::select(spec, to_row(a)))
            .collect();
        self.envelope(R::PLURAL, rows, Some(total))
    }

    /// A page of an [`SqlResource`] collection: the query, and `parent` (a nested path's
    /// condition, `builderid = …`), applied in SQL.
    pub(crate) async fn sql_page<R: SqlResource>(&self, parent: Vec<ApiCond>) -> ApiResult {
        let spec = self.collection_query::<R>()?;
        let sql = query::to_sql(&spec, R::TABLE, parent)?;
        let page = R::fetch(&self.state, &sql).await?;
        let mut answers = Vec::with_capacity(page.rows.len());
        for row in page.rows {
            answers.push(R::load(&self.state, &spec, row).await?);
        }
        Ok(self.page(&spec, &answers, page.total as usize))
    }

    /// The empty collection of a parent that is not there (as Buildbot answers); a bad query
    /// is still refused.
    pub(crate) fn empty_collection<R: Resource>(&self) -> ApiResult {
        let spec = self.collection_query::<R>()?;
        Ok(self.page::<R>(&spec, &[], 0))
    }

    /// Buildbot's envelope, redacted; compact JSON when the client accepts
    /// `application/json`, else indented `text/plain` (as Buildbot does for browsers).
    fn envelope(
        &self,
        plural: &str,
        rows: Vec<Map<String, Value>>,
        total: Option<usize>,
    ) -> Response {
        let mut meta = Map::new();
        if let Some(t) = total {
            meta.insert("total".into(), t.into());
        }
        let mut body = Map::new();
        body.insert(plural.into(), rows.into_iter().map(Value::Object).collect());
        body.insert("meta".into(), Value::Object(meta));
        let mut body = Value::Object(body);
        let redactor = self.state.control.config().redactor();
        if !redactor.is_empty() {
            redactor.redact_json(&mut body);
        }
        let (text, ctype) = if self.compact {
            (body.to_string(), "application/json; charset=utf-8")
        } else {
            let pretty = serde_json::to_string_pretty(&body).unwrap_or_default();
            (pretty, "text/plain; charset=utf-8")
        };
        let mut r = text.into_response();
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
        r
    }
}

/// An answer as the JSON object the query features work on. Answers are plain structs, so
/// this cannot fail.
pub(crate) fn to_row<R: Serialize>(answer: &R) -> Map<String, Value> {
    match serde_json::to_value(answer) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

/// Buildbot's `n:` path components: digits only.
pub(crate) fn path_number(segment: &str) -> Option<i64> {
    (!segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()))
        .then(|| segment.parse().ok())
        .flatten()
}

/// A path component that must be a number; `Invalid path: <path>` when it is not.
pub(crate) fn path_id(segment: &str, path: impl FnOnce() -> String) -> Result<i64, ApiError> {
    path_number(segment).ok_or_else(|| ApiError::InvalidPath(path()))
}

/// The SQL condition `field = value`, for the parent in a nested path
/// (`/builders/{builder}/builds` → `builderid = …`).
pub(crate) fn field_equals(field: &str, value: i64) -> ApiCond {
    ApiCond {
        field: field.into(),
        op: ApiOp::Eq,
        values: vec![ApiValue::Int(value)],
    }
}

/// The answer of `/api/v2`: the API's version and its root resources.
#[derive(Serialize)]
struct RootAnswer {
    api_version: i64,
    links: Vec<RootLink>,
}

#[derive(Serialize)]
struct RootLink {
    name: &'static str,
}

/// `GET /api/v2`.
pub(crate) async fn root() -> Response {
    let names = [
        "builders",
        "builds",
        "buildrequests",
        "buildsets",
        "changes",
        "forceschedulers",
        "logs",
        "masters",
        "steps",
        "workers",
    ];
    let answer = RootAnswer {
        api_version: 2,
        links: names.into_iter().map(|name| RootLink { name }).collect(),
    };
    (
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        serde_json::to_string(&answer).unwrap_or_default(),
    )
        .into_response()
}

/// `GET /api/v2/<anything else>`.
pub(crate) async fn invalid_path(Path(rest): Path<String>) -> ApiError {
    ApiError::InvalidPath(rest)
}
