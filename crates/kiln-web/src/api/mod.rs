//! `GET /api/v2/...`: Buildbot 4.3's REST resources (`buildbot/data/*.py`), a module per
//! resource family. A module holds the resource's answer (a serde struct with Buildbot's field
//! names, values and nulls) and the handlers of every path that answers it, as Buildbot's data
//! modules do (`/builders/{builder}/builds` is in `builds.rs`).
//!
//! A handler takes an [`ApiRequest`] and its path, parses the query string against the
//! resource's fields ([`Resource::FIELDS`], `query.rs`), reads the store and answers through
//! [`ApiRequest::one`], [`ApiRequest::collection`] or [`ApiRequest::page`]: Buildbot's envelope
//! `{"<resource>": [...], "meta": {"total": N}}`, field selection applied, secrets redacted.
//!
//! Answers that can be big are streamed with bounded memory: a collection of an
//! [`SqlResource`] longer than [`PAGE_ROWS`] is read and written a page at a time
//! ([`ApiRequest::sql_page`]), a log's `contents` a stored chunk at a time
//! ([`ApiRequest::one_streamed`]). Both write the very bytes the in-memory envelope would: the
//! envelope is rendered around a placeholder and the streamed part goes where it stands.

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

use axum::body::Body;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use kiln_config::Redactor;
use kiln_store::StoreError;
use kiln_store::api_queries::{ApiCond, ApiOp, ApiQuery, ApiTable, ApiValue};
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

/// The most rows of an [`SqlResource`] collection read and answered at once; a longer answer
/// is streamed, this many rows at a time.
pub(crate) const PAGE_ROWS: i64 = 1000;

/// A resource whose collections the database filters, orders and pages
/// (`kiln_store::api_queries`): the big tables.
pub(crate) trait SqlResource: Resource + Sized + Send + 'static {
    /// The store's record the answer is made of.
    type Row: Send;
    const TABLE: ApiTable;
    /// The field of the table's primary key (`buildid`): a streamed collection ordered by it
    /// pages on it (`buildid > last`) rather than with `OFFSET`, which rescans what was sent.
    const KEY: &'static str;
    /// A row's primary key.
    fn key(row: &Self::Row) -> i64;
    /// A page of rows (the store's `api_*`, at most `kiln_store::MAX_LIST_LIMIT`).
    fn fetch(
        state: &ApiState,
        sql: &ApiQuery,
    ) -> impl Future<Output = Result<Vec<Self::Row>, StoreError>> + Send;
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
    /// condition, `builderid = …`), applied in SQL. Without `limit` the whole collection, as
    /// Buildbot answers it: up to [`PAGE_ROWS`] rows in memory, more streamed page by page.
    pub(crate) async fn sql_page<R: SqlResource>(&self, parent: Vec<ApiCond>) -> ApiResult {
        let spec = self.collection_query::<R>()?;
        let mut sql = query::to_sql(&spec, R::TABLE, parent)?;
        let total = self.state.store.api_total(R::TABLE, &sql).await?;
        let rows = rows_to_send(total, sql.offset, sql.limit);
        if rows > PAGE_ROWS {
            sql.limit = Some(rows);
            return Ok(self.stream_collection::<R>(spec, sql, total));
        }
        let page = R::fetch(&self.state, &sql).await?;
        let mut answers = Vec::with_capacity(page.len());
        for row in page {
            answers.push(R::load(&self.state, &spec, row).await?);
        }
        Ok(self.page(&spec, &answers, total as usize))
    }

    /// The envelope of `total` rows of `R`, the rows `sql` picks read and written
    /// [`PAGE_ROWS`] at a time (`sql.limit` is how many to send). A database error midway
    /// can no longer change the status: it is logged and the answer is cut short.
    fn stream_collection<R: SqlResource>(&self, spec: Spec, sql: ApiQuery, total: i64) -> Response {
        let redactor = self.state.control.config().redactor();
        let placeholder = vec![Value::String(PLACEHOLDER.into())];
        let envelope = self.envelope_value(R::PLURAL, placeholder, Some(total as usize));
        let (head, tail) = self.frame(&envelope);
        let format = RowFormat {
            compact: self.compact,
            redactor,
        };
        let pages = collection_pages::<R>(self.state.clone(), spec, sql, format);
        let body = futures_util::stream::once(async move { Ok(head) })
            .chain(pages)
            .chain(futures_util::stream::once(async move { Ok(tail) }));
        self.respond(Body::from_stream(body))
    }

    /// One resource whose text field `field` is streamed: `text` is its text, in pieces (not
    /// yet redacted). The rest of the answer is as [`ApiRequest::one`] writes it; if `field`
    /// is not selected the text is not read.
    pub(crate) fn one_streamed<R, S>(
        &self,
        spec: &Spec,
        answer: &R,
        field: &str,
        text: S,
    ) -> Response
    where
        R: Resource,
        S: Stream<Item = Result<String, StoreError>> + Send + 'static,
    {
        let mut row = query::select(spec, to_row(answer));
        if !row.contains_key(field) {
            return self.envelope(R::PLURAL, vec![row], None);
        }
        row.insert(field.into(), Value::String(PLACEHOLDER.into()));
        let envelope = self.envelope_value(R::PLURAL, vec![Value::Object(row)], None);
        let (head, tail) = self.frame(&envelope);
        let redactor = self.state.control.config().redactor();
        let pieces = text.map(move |piece| match piece {
            Ok(piece) => Ok(json_string_body(&redactor.redact(&piece))),
            Err(e) => Err(stream_failed(e)),
        });
        let body = futures_util::stream::once(async move { Ok(head + "\"") })
            .chain(pieces)
            .chain(futures_util::stream::once(async move {
                Ok("\"".to_string() + &tail)
            }));
        self.respond(Body::from_stream(body))
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
        let rows = rows.into_iter().map(Value::Object).collect();
        let body = self.envelope_value(plural, rows, total);
        self.respond(Body::from(self.render(&body)))
    }

    /// Buildbot's envelope as JSON, redacted.
    fn envelope_value(&self, plural: &str, rows: Vec<Value>, total: Option<usize>) -> Value {
        let mut meta = Map::new();
        if let Some(t) = total {
            meta.insert("total".into(), t.into());
        }
        let mut body = Map::new();
        body.insert(plural.into(), Value::Array(rows));
        body.insert("meta".into(), Value::Object(meta));
        let mut body = Value::Object(body);
        let redactor = self.state.control.config().redactor();
        if !redactor.is_empty() {
            redactor.redact_json(&mut body);
        }
        body
    }

    /// A JSON value as this client takes it: compact, or indented as Buildbot does.
    fn render(&self, body: &Value) -> String {
        if self.compact {
            body.to_string()
        } else {
            serde_json::to_string_pretty(body).unwrap_or_default()
        }
    }

    /// The text of `envelope` before and after the one [`PLACEHOLDER`] it holds (standing
    /// for a string's text, or for a list's rows).
    fn frame(&self, envelope: &Value) -> (String, String) {
        let text = self.render(envelope);
        let mark = format!("\"{PLACEHOLDER_JSON}\"");
        if let Some(at) = text.find(&mark) {
            let tail = text[at + mark.len()..].to_string();
            let mut head = text;
            head.truncate(at);
            return (head, tail);
        }
        // Only reached if the redactor rewrote the placeholder itself (a secret inside it).
        tracing::error!("a streamed answer's placeholder is missing; sending it empty");
        (text, String::new())
    }

    /// An answer with this client's content type.
    fn respond(&self, body: Body) -> Response {
        let ctype = if self.compact {
            "application/json; charset=utf-8"
        } else {
            "text/plain; charset=utf-8"
        };
        let mut r = body.into_response();
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
        r
    }
}

/// Stands for a streamed text in a rendered envelope: a NUL, which JSON writes `\u0000` and
/// no answer's other strings hold.
const PLACEHOLDER: &str = "\u{0}";
const PLACEHOLDER_JSON: &str = "\\u0000";

/// How many rows a collection answer holds: those after `offset`, at most `limit`.
fn rows_to_send(total: i64, offset: Option<i64>, limit: Option<i64>) -> i64 {
    let after = (total - offset.unwrap_or(0)).max(0);
    limit.map_or(after, |l| l.min(after))
}

/// A text as the inside of a JSON string (escaped, without its quotes).
fn json_string_body(text: &str) -> String {
    let quoted = Value::String(text.to_string()).to_string();
    quoted[1..quoted.len() - 1].to_string()
}

/// A store error in the middle of a streamed answer: logged here, and the answer is cut
/// short (its status is already sent).
fn stream_failed(e: impl std::error::Error + 'static) -> std::io::Error {
    let chain = kiln_master::error_chain(&e);
    tracing::error!(error = %chain, "a streamed REST answer failed midway; it is cut short");
    std::io::Error::other(chain)
}

/// How the rows of a streamed collection are written.
#[derive(Clone)]
struct RowFormat {
    compact: bool,
    redactor: Redactor,
}

impl RowFormat {
    /// One row as it stands in the envelope's list, after the rows before it (`first` if
    /// none): compact, or indented two levels deep as `to_string_pretty` puts it there.
    fn write(&self, out: &mut String, row: Map<String, Value>, first: bool) {
        let mut row = Value::Object(row);
        if !self.redactor.is_empty() {
            self.redactor.redact_json(&mut row);
        }
        if self.compact {
            if !first {
                out.push(',');
            }
            out.push_str(&row.to_string());
        } else {
            if !first {
                out.push_str(",\n    ");
            }
            // JSON strings escape their newlines: every newline here is between tokens.
            let pretty = serde_json::to_string_pretty(&row).unwrap_or_default();
            out.push_str(&pretty.replace('\n', "\n    "));
        }
    }
}

/// Where a streamed collection is: the query of the next page, how many rows are left, and,
/// when the order is the primary key's, the last key sent (the next page starts after it).
struct PageCursor {
    sql: ApiQuery,
    left: i64,
    first: bool,
    /// The collection's own conditions, to which the keyset condition is added.
    conds: Vec<ApiCond>,
    /// `Some(descending)` when the rows are ordered by the primary key alone.
    keyset: Option<bool>,
}

impl PageCursor {
    fn new<R: SqlResource>(sql: ApiQuery) -> PageCursor {
        let keyset = match sql.order.as_slice() {
            [] => Some(false),
            [(field, desc)] if field == R::KEY => Some(*desc),
            _ => None,
        };
        PageCursor {
            left: sql.limit.unwrap_or(0),
            conds: sql.conds.clone(),
            sql,
            first: true,
            keyset,
        }
    }

    /// Moves past a page of `n` rows whose last key is `last`.
    fn advance<R: SqlResource>(&mut self, n: i64, last: i64) {
        self.left -= n;
        match self.keyset {
            Some(desc) => {
                let op = if desc { ApiOp::Lt } else { ApiOp::Gt };
                let mut conds = self.conds.clone();
                conds.push(ApiCond {
                    field: R::KEY.into(),
                    op,
                    values: vec![ApiValue::Int(last)],
                });
                self.sql.conds = conds;
                self.sql.offset = None;
            }
            None => self.sql.offset = Some(self.sql.offset.unwrap_or(0) + n),
        }
    }
}

/// The rows `sql` picks (`sql.limit` of them), as the text between the envelope's brackets,
/// one item per page of [`PAGE_ROWS`] read from the store.
fn collection_pages<R: SqlResource>(
    state: ApiState,
    spec: Spec,
    sql: ApiQuery,
    format: RowFormat,
) -> impl Stream<Item = Result<String, std::io::Error>> + Send + 'static {
    futures_util::stream::try_unfold(PageCursor::new::<R>(sql), move |mut at| {
        let (state, spec) = (state.clone(), spec.clone());
        let format = format.clone();
        async move {
            if at.left <= 0 {
                return Ok(None);
            }
            at.sql.limit = Some(at.left.min(PAGE_ROWS));
            let rows = R::fetch(&state, &at.sql).await.map_err(stream_failed)?;
            let Some(last) = rows.last().map(R::key) else {
                // Rows deleted since they were counted: the answer ends here.
                return Ok(None);
            };
            let n = rows.len() as i64;
            let mut text = String::new();
            for row in rows {
                let answer = R::load(&state, &spec, row).await.map_err(stream_failed)?;
                format.write(&mut text, query::select(&spec, to_row(&answer)), at.first);
                at.first = false;
            }
            at.advance::<R>(n, last);
            Ok(Some((text, at)))
        }
    })
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
