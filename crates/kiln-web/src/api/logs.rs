//! Logs: the logs of a step, and one log's row, its lines (`/contents`, Buildbot's
//! `logchunks`) and its text (`/raw` to save, `/raw_inline` to show); all are streamed from
//! the store a chunk at a time, so a reader of a big log costs the master a chunk's memory,
//! not the log's. A log is named by any of four paths — `/logs/{logid}`,
//! `/steps/{stepid}/logs/{slug}`, `/builds/{buildid}/steps/{step}/logs/{slug}` and
//! `/builders/{builder}/builds/{number}/steps/{step}/logs/{slug}` — which [`LogRef`]
//! resolves, so each handler is written once.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{FromRequestParts, MatchedPath, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use kiln_config::Redactor;
use kiln_model::{Build, Log, LogId, LogType, Step, StepId, Worker};
use kiln_store::BuilderRow;
use serde::Serialize;

use super::steps::{step_of_build, step_of_builder_build};
use super::{ApiRequest, ApiResult, Resource, path_id};
use crate::query::FType::{self, Bool, Int, Str};
use crate::query::Spec;
use crate::{ApiError, ApiState};

/// A log, as Buildbot's `logs` resource.
#[derive(Serialize)]
pub(crate) struct LogAnswer {
    logid: LogId,
    name: String,
    /// The name made safe for a path: `/steps/{stepid}/logs/{slug}`.
    slug: String,
    stepid: StepId,
    complete: bool,
    num_lines: i64,
    /// `s` (stdio), `t` (text), `h` (HTML) or `d` (deleted).
    #[serde(rename = "type")]
    log_type: LogType,
}

impl Resource for LogAnswer {
    const PLURAL: &'static str = "logs";
    const FIELDS: &'static [(&'static str, FType)] = &[
        ("logid", Int),
        ("name", Str),
        ("slug", Str),
        ("stepid", Int),
        ("complete", Bool),
        ("num_lines", Int),
        ("type", Str),
    ];
}

impl From<Log> for LogAnswer {
    fn from(l: Log) -> LogAnswer {
        LogAnswer {
            logid: l.logid,
            name: l.name,
            slug: l.slug,
            stepid: l.stepid,
            complete: l.complete,
            num_lines: l.num_lines,
            log_type: l.log_type,
        }
    }
}

/// Lines of a log, as Buildbot's `logchunks` resource: each line ends in `\n`, stdio lines
/// keep their channel character.
#[derive(Serialize)]
pub(crate) struct LogChunkAnswer {
    logid: LogId,
    firstline: i64,
    content: String,
}

impl Resource for LogChunkAnswer {
    const PLURAL: &'static str = "logchunks";
    const FIELDS: &'static [(&'static str, FType)] =
        &[("logid", Int), ("firstline", Int), ("content", Str)];
}

/// A log named by the request's path, whichever of the four it is, with `/contents`, `/raw`
/// or `/raw_inline` after it or not. Extracting it checks the path (`Invalid path: …` for an id that is
/// not a number) and reads the log's row; a row that is missing is reported by
/// [`LogRef::found`], so a handler can refuse a bad query first, as Buildbot does.
pub(crate) struct LogRef {
    log: Option<Log>,
    /// The path as a 404 names it: `/steps/7/logs/stdio/raw`.
    path: String,
}

impl LogRef {
    /// The log, or `not found while getting from <path>`.
    pub(crate) fn found(&self) -> Result<&Log, ApiError> {
        self.log.as_ref().ok_or_else(|| self.not_found())
    }

    fn not_found(&self) -> ApiError {
        ApiError::NotFound(self.path.clone())
    }
}

/// The four ways a path names a log (the route's parameters).
enum LogPath<'a> {
    /// `/logs/{logid}`.
    Id(&'a str),
    /// `/steps/{stepid}/logs/{slug}`.
    StepSlug { step: &'a str, slug: &'a str },
    /// `/builds/{buildid}/steps/{step}/logs/{slug}`, the step by number or by name.
    BuildStepSlug {
        build: &'a str,
        step: &'a str,
        slug: &'a str,
    },
    /// `/builders/{builder}/builds/{number}/steps/{step}/logs/{slug}`: the builder by id or
    /// name, its build by number, the step by number or name.
    BuilderBuildStepSlug {
        builder: &'a str,
        number: &'a str,
        step: &'a str,
        slug: &'a str,
    },
}

impl<'a> LogPath<'a> {
    fn of(params: &'a HashMap<String, String>) -> Option<LogPath<'a>> {
        let param = |name: &str| params.get(name).map(String::as_str);
        if let (Some(builder), Some(slug)) = (param("builder"), param("slug")) {
            return Some(LogPath::BuilderBuildStepSlug {
                builder,
                number: param("number")?,
                step: param("step")?,
                slug,
            });
        }
        Some(match (param("logid"), param("buildid"), param("slug")) {
            (Some(id), _, _) => LogPath::Id(id),
            (None, None, Some(slug)) => LogPath::StepSlug {
                step: param("stepid")?,
                slug,
            },
            (None, Some(build), Some(slug)) => LogPath::BuildStepSlug {
                build,
                step: param("step")?,
                slug,
            },
            _ => return None,
        })
    }

    /// The log's row if there is one, and the path as a 404 names it.
    async fn resolve(self, state: &ApiState) -> Result<(Option<Log>, String), ApiError> {
        match self {
            LogPath::Id(id) => {
                let n = path_id(id, || format!("logs/{id}"))?;
                Ok((state.store.get_log(LogId(n)).await?, format!("/logs/{id}")))
            }
            LogPath::StepSlug { step, slug } => {
                let n = path_id(step, || format!("steps/{step}/logs/{slug}"))?;
                let log = state.store.get_log_by_slug(StepId(n), slug).await?;
                Ok((log, format!("/steps/{step}/logs/{slug}")))
            }
            LogPath::BuildStepSlug { build, step, slug } => {
                let log = match step_of_build(state, build, step).await? {
                    Some(s) => state.store.get_log_by_slug(s.stepid, slug).await?,
                    None => None,
                };
                Ok((log, format!("/builds/{build}/steps/{step}/logs/{slug}")))
            }
            LogPath::BuilderBuildStepSlug {
                builder,
                number,
                step,
                slug,
            } => {
                let log = match step_of_builder_build(state, builder, number, step).await? {
                    Some(s) => state.store.get_log_by_slug(s.stepid, slug).await?,
                    None => None,
                };
                let path = format!("/builders/{builder}/builds/{number}/steps/{step}/logs/{slug}");
                Ok((log, path))
            }
        }
    }
}

impl FromRequestParts<ApiState> for LogRef {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<LogRef, Response> {
        let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let route = parts
            .extensions
            .get::<MatchedPath>()
            .map(MatchedPath::as_str);
        let tail = match route {
            Some(r) if r.ends_with("/contents") => "/contents",
            Some(r) if r.ends_with("/raw") => "/raw",
            Some(r) if r.ends_with("/raw_inline") => "/raw_inline",
            _ => "",
        };
        // Only the log routes take a LogRef, and each names its log one of the four ways.
        let named = LogPath::of(&params)
            .ok_or_else(|| ApiError::InvalidPath(parts.uri.path().to_string()).into_response())?;
        let (log, path) = named
            .resolve(state)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(LogRef {
            log,
            path: path + tail,
        })
    }
}

/// The logs of a step that match the query; no step, no logs.
async fn logs_of(api: &ApiRequest, step: Option<StepId>) -> ApiResult {
    let spec = api.collection_query::<LogAnswer>()?;
    let logs: Vec<LogAnswer> = match step {
        Some(s) => api
            .state
            .store
            .list_logs(s)
            .await?
            .into_iter()
            .map(LogAnswer::from)
            .collect(),
        None => vec![],
    };
    Ok(api.collection(&spec, &logs))
}

/// `GET /steps/{stepid}/logs`.
pub(crate) async fn list_step_logs(api: ApiRequest, Path(id): Path<String>) -> ApiResult {
    let n = path_id(&id, || format!("steps/{id}/logs"))?;
    logs_of(&api, Some(StepId(n))).await
}

/// `GET /builds/{buildid}/steps/{step}/logs`.
pub(crate) async fn list_build_step_logs(
    api: ApiRequest,
    Path((id, step)): Path<(String, String)>,
) -> ApiResult {
    let found = step_of_build(&api.state, &id, &step).await?;
    logs_of(&api, found.map(|s| s.stepid)).await
}

/// `GET /builders/{builder}/builds/{number}/steps/{step}/logs`.
pub(crate) async fn list_builder_build_step_logs(
    api: ApiRequest,
    Path((builder, number, step)): Path<(String, String, String)>,
) -> ApiResult {
    let found = step_of_builder_build(&api.state, &builder, &number, &step).await?;
    logs_of(&api, found.map(|s| s.stepid)).await
}

/// `GET …/logs/{slug}` or `/logs/{logid}`: the log's row.
pub(crate) async fn get_log(api: ApiRequest, log: LogRef) -> ApiResult {
    let spec = api.single_query::<LogAnswer>()?;
    let answer = LogAnswer::from(log.found()?.clone());
    Ok(api.one(&spec, &answer))
}

/// `GET …/contents`: lines `offset .. offset+limit-1` (the whole log without them), as
/// Buildbot's `LogChunkEndpoint`; a range outside the log is a 404. The text is streamed a
/// stored chunk at a time into the JSON envelope (`limit` is at most `query::MAX_LIMIT`; a
/// whole log has no bound but its own).
pub(crate) async fn get_log_contents(api: ApiRequest, log: LogRef) -> ApiResult {
    let spec = api.single_query::<LogChunkAnswer>()?;
    let found = log.found()?;
    let (first, last) = line_range(&spec, found.num_lines).ok_or_else(|| log.not_found())?;
    let answer = LogChunkAnswer {
        logid: found.logid,
        firstline: first,
        content: String::new(),
    };
    let last = last.min(found.num_lines - 1);
    let text = api.state.store.log_lines_stream(found.logid, first, last);
    Ok(api.one_streamed(&spec, &answer, "content", text))
}

/// The first and last line `offset` and `limit` ask for; none for an empty or negative range.
fn line_range(spec: &Spec, num_lines: i64) -> Option<(i64, i64)> {
    let first = spec.offset.unwrap_or(0);
    let last = match spec.limit {
        Some(n) => first + n - 1,
        None => (num_lines - 1).max(0),
    };
    (first >= 0 && last >= 0 && first <= last).then_some((first, last))
}

/// `GET …/raw`: the log's text streamed a chunk at a time, as Buildbot's
/// `RawLogChunkEndpoint`: a stdio log gets a `Builder/Build number/Worker name` header and
/// loses its channel characters; the answer is a download (`Content-Disposition:
/// attachment`). The query string is not read.
pub(crate) async fn get_log_raw(State(state): State<ApiState>, log: LogRef) -> ApiResult {
    raw_answer(&state, &log, Disposition::Attachment).await
}

/// `GET …/raw_inline`: the same text as `/raw`, for the browser to show rather than save
/// (Buildbot's `RawInlineLogChunkEndpoint`: no `Content-Disposition`).
pub(crate) async fn get_log_raw_inline(State(state): State<ApiState>, log: LogRef) -> ApiResult {
    raw_answer(&state, &log, Disposition::Inline).await
}

/// Whether a raw log is sent as a file to save or as a page to show.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Disposition {
    Attachment,
    Inline,
}

/// A raw log's answer: its text streamed a stored chunk at a time, after the stdio header.
async fn raw_answer(state: &ApiState, log: &LogRef, disposition: Disposition) -> ApiResult {
    let log = log.found()?;
    let owners = LogOwners::load(state, log).await?;
    let stdio = log.log_type == LogType::Stdio;
    let header = if stdio {
        owners.header()
    } else {
        String::new()
    };
    let redactor = state.control.config().redactor();
    let head = (!header.is_empty()).then(|| Ok(redactor.redact(&header).into_bytes()));
    let body = raw_text(state, log, redactor);
    let mime = match log.log_type {
        LogType::Html => "text/html; charset=utf-8",
        _ => "text/plain; charset=utf-8",
    };
    let stream = futures_util::stream::iter(head).chain(body);
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    if disposition == Disposition::Attachment {
        let value = format!("attachment; filename={}", owners.file_name(&log.slug));
        if let Ok(v) = HeaderValue::from_str(&value) {
            r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
        }
    }
    Ok(r)
}

/// The log's stored chunks as `/raw` sends them: text (UTF-8), stdio lines without their
/// channel character, secrets redacted.
fn raw_text(
    state: &ApiState,
    log: &Log,
    redactor: Redactor,
) -> impl Stream<Item = std::io::Result<Vec<u8>>> + Send + 'static {
    let stdio = log.log_type == LogType::Stdio;
    state.store.log_raw(log.logid).map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        // Stored text is UTF-8 (it was appended as text): check it fast, copy only if not.
        let text = match String::from_utf8(chunk) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        };
        let text = if stdio { strip_channels(&text) } else { text };
        Ok(redactor.redact(&text).into_bytes())
    })
}

/// Where a log belongs, for `/raw`'s header and file name (any of them may be gone).
struct LogOwners {
    step: Option<Step>,
    build: Option<Build>,
    builder: Option<BuilderRow>,
    worker: Option<Worker>,
}

impl LogOwners {
    async fn load(state: &ApiState, log: &Log) -> Result<LogOwners, ApiError> {
        let step = state.store.get_step(log.stepid).await?;
        let build = match &step {
            Some(s) => state.store.get_build(s.buildid).await?,
            None => None,
        };
        let (builder, worker) = match &build {
            Some(b) => (
                state.store.get_builder(b.builderid).await?,
                state.store.get_worker(b.workerid).await?,
            ),
            None => (None, None),
        };
        Ok(LogOwners {
            step,
            build,
            builder,
            worker,
        })
    }

    /// Buildbot's header of a stdio log: `Builder: …`, `Build number: …`, `Worker name: …`.
    fn header(&self) -> String {
        let mut header = String::new();
        if let Some(b) = &self.builder {
            header.push_str(&format!("Builder: {}\n", b.name));
        }
        if let Some(b) = &self.build {
            header.push_str(&format!("Build number: {}\n", b.number));
        }
        if let Some(w) = &self.worker {
            header.push_str(&format!("Worker name: {}\n", w.name));
        }
        header
    }

    /// `<builder>_build_<n>_step_<step>_log_<slug>`, other characters than printable ASCII
    /// and spaces made `_`.
    fn file_name(&self, slug: &str) -> String {
        let mut parts: Vec<String> = Vec::new();
        if let Some(b) = &self.builder {
            parts.push(b.name.clone());
        }
        if let Some(b) = &self.build {
            parts.extend(["build".to_string(), b.number.to_string()]);
        }
        if let Some(s) = &self.step {
            parts.extend(["step".to_string(), s.name.clone()]);
        }
        parts.extend(["log".to_string(), slug.to_string()]);
        parts
            .join("_")
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    }
}

/// Drops the channel character that starts each stdio line (chunks hold whole lines).
fn strip_channels(chunk: &str) -> String {
    let mut out = String::with_capacity(chunk.len());
    let mut rest = chunk;
    while !rest.is_empty() {
        let end = memchr::memchr(b'\n', rest.as_bytes()).map_or(rest.len(), |p| p + 1);
        let line = &rest[..end];
        let mut cs = line.chars();
        cs.next();
        out.push_str(cs.as_str());
        rest = &rest[end..];
    }
    out
}
