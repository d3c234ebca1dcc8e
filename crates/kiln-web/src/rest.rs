//! `GET /api/v2/...`: Buildbot 4.3's resources (`buildbot/data/*.py`) with their field names,
//! the `{"<plural>": [...], "meta": {...}}` envelope (`www/rest.py`), `/metrics` and `/health`.

use std::collections::{BTreeMap, HashMap};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt;
use kiln_config::SchedulerKind;
use kiln_model::{
    Build, BuildId, BuildRequest, BuildRequestId, BuilderId, BuildsetId, Change, ChangeId, Log,
    LogId, LogType, MasterId, Properties, SourceStamp, Step, StepId, Worker, WorkerId,
};
use kiln_store::api_queries::{ApiCond, ApiOp, ApiTable, ApiValue};
use kiln_store::{BuilderRow, BuildsetFilter, MAX_READ_LINES};
use serde_json::{Map, Value, json};

use super::query::{self, FType, Spec};
use super::{ApiError, ApiState};

type Obj = Map<String, Value>;
type Res = Result<Response, ApiError>;

use FType::{Bool, Int, IntList, Other, Str, StrList};

pub(super) const BUILDER_F: &[(&str, FType)] = &[
    ("builderid", Int),
    ("name", Str),
    ("masterids", IntList),
    ("description", Str),
    ("description_format", Str),
    ("description_html", Str),
    ("projectid", Int),
    ("tags", StrList),
];
pub(super) const BUILD_F: &[(&str, FType)] = &[
    ("buildid", Int),
    ("number", Int),
    ("builderid", Int),
    ("buildrequestid", Int),
    ("workerid", Int),
    ("masterid", Int),
    ("started_at", Int),
    ("complete", Bool),
    ("complete_at", Int),
    ("locks_duration_s", Int),
    ("results", Int),
    ("state_string", Str),
    ("properties", Other),
];
const STEP_F: &[(&str, FType)] = &[
    ("stepid", Int),
    ("number", Int),
    ("name", Str),
    ("buildid", Int),
    ("started_at", Int),
    ("locks_acquired_at", Int),
    ("complete", Bool),
    ("complete_at", Int),
    ("results", Int),
    ("state_string", Str),
    ("urls", Other),
    ("hidden", Bool),
];
const LOG_F: &[(&str, FType)] = &[
    ("logid", Int),
    ("name", Str),
    ("slug", Str),
    ("stepid", Int),
    ("complete", Bool),
    ("num_lines", Int),
    ("type", Str),
];
const LOGCHUNK_F: &[(&str, FType)] = &[("logid", Int), ("firstline", Int), ("content", Str)];
const WORKER_F: &[(&str, FType)] = &[
    ("workerid", Int),
    ("name", Str),
    ("connected_to", Other),
    ("configured_on", Other),
    ("workerinfo", Other),
    ("paused", Bool),
    ("pause_reason", Str),
    ("graceful", Bool),
];
const CHANGE_F: &[(&str, FType)] = &[
    ("changeid", Int),
    ("parent_changeids", IntList),
    ("author", Str),
    ("committer", Str),
    ("files", StrList),
    ("comments", Str),
    ("revision", Str),
    ("when_timestamp", Int),
    ("branch", Str),
    ("category", Str),
    ("revlink", Str),
    ("properties", Other),
    ("repository", Str),
    ("project", Str),
    ("codebase", Str),
];
const BR_F: &[(&str, FType)] = &[
    ("buildrequestid", Int),
    ("buildsetid", Int),
    ("builderid", Int),
    ("priority", Int),
    ("claimed", Bool),
    ("claimed_at", Int),
    ("claimed_by_masterid", Int),
    ("complete", Bool),
    ("results", Int),
    ("submitted_at", Int),
    ("complete_at", Int),
    ("waited_for", Bool),
    ("properties", Other),
];
const BUILDSET_F: &[(&str, FType)] = &[
    ("bsid", Int),
    ("external_idstring", Str),
    ("reason", Str),
    ("rebuilt_buildid", Int),
    ("submitted_at", Int),
    ("complete", Bool),
    ("complete_at", Int),
    ("results", Int),
    ("sourcestamps", Other),
    ("parent_buildid", Int),
    ("parent_relationship", Str),
];
const FS_F: &[(&str, FType)] = &[
    ("name", Str),
    ("button_name", Str),
    ("label", Str),
    ("builder_names", StrList),
    ("enabled", Bool),
    ("all_fields", Other),
];
const MASTER_F: &[(&str, FType)] = &[
    ("masterid", Int),
    ("name", Str),
    ("active", Bool),
    ("last_active", Int),
];

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v2/builders", get(builders))
        .route("/api/v2/builders/{b}", get(builder))
        .route("/api/v2/builders/{b}/builds", get(builder_builds))
        .route("/api/v2/builders/{b}/builds/{n}", get(builder_build))
        .route(
            "/api/v2/builders/{b}/builds/{n}/steps",
            get(builder_build_steps),
        )
        .route("/api/v2/builders/{b}/buildrequests", get(builder_requests))
        .route("/api/v2/builders/{b}/workers", get(builder_workers))
        .route(
            "/api/v2/builders/{b}/forceschedulers",
            get(builder_forceschedulers),
        )
        .route("/api/v2/builds", get(builds))
        .route(
            "/api/v2/builds/{id}",
            get(build).post(crate::rpc::stop_build),
        )
        .route("/api/v2/builds/{id}/properties", get(build_properties))
        .route("/api/v2/builds/{id}/steps", get(build_steps))
        .route("/api/v2/builds/{id}/steps/{s}", get(build_step))
        .route("/api/v2/builds/{id}/steps/{s}/logs", get(build_step_logs))
        .route(
            "/api/v2/builds/{id}/steps/{s}/logs/{slug}",
            get(build_step_log),
        )
        .route(
            "/api/v2/builds/{id}/steps/{s}/logs/{slug}/contents",
            get(build_step_log_contents),
        )
        .route(
            "/api/v2/builds/{id}/steps/{s}/logs/{slug}/raw",
            get(build_step_log_raw),
        )
        .route("/api/v2/steps/{id}", get(step))
        .route("/api/v2/steps/{id}/logs", get(step_logs))
        .route("/api/v2/steps/{id}/logs/{slug}", get(step_log))
        .route(
            "/api/v2/steps/{id}/logs/{slug}/contents",
            get(step_log_contents),
        )
        .route("/api/v2/steps/{id}/logs/{slug}/raw", get(step_log_raw))
        .route("/api/v2/logs/{id}", get(log))
        .route("/api/v2/logs/{id}/contents", get(log_contents))
        .route("/api/v2/logs/{id}/raw", get(log_raw))
        .route("/api/v2/workers", get(workers))
        .route("/api/v2/workers/{w}", get(worker))
        .route("/api/v2/workers/{w}/builds", get(worker_builds))
        .route("/api/v2/changes", get(changes))
        .route("/api/v2/changes/{id}", get(change))
        .route("/api/v2/buildrequests", get(buildrequests))
        .route(
            "/api/v2/buildrequests/{id}",
            get(buildrequest).post(crate::rpc::cancel_request),
        )
        .route(
            "/api/v2/buildrequests/{id}/builds",
            get(buildrequest_builds),
        )
        .route("/api/v2/buildsets", get(buildsets))
        .route("/api/v2/buildsets/{id}", get(buildset))
        .route("/api/v2/forceschedulers", get(forceschedulers))
        .route(
            "/api/v2/forceschedulers/{name}",
            get(forcescheduler).post(crate::rpc::force),
        )
        .route("/api/v2/masters", get(masters))
        .route("/api/v2/masters/{id}", get(master))
        .route("/api/v2", get(root))
        .route("/api/v2/", get(root))
        .route("/api/v2/{*rest}", get(invalid_path))
}

// ------------------------------------------------------------------ rendering

/// The envelope, redacted; compact JSON when the client accepts `application/json`, else
/// indented `text/plain` (as Buildbot does for browsers).
pub(super) fn render(
    st: &ApiState,
    headers: &HeaderMap,
    plural: &str,
    rows: Vec<Obj>,
    total: Option<usize>,
) -> Response {
    let mut meta = Map::new();
    if let Some(t) = total {
        meta.insert("total".into(), t.into());
    }
    let mut v = json!({ plural: rows, "meta": meta });
    let red = st.control.config().redactor();
    if !red.is_empty() {
        red.redact_json(&mut v);
    }
    let compact = headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("application/json"));
    let (body, ctype) = if compact {
        (v.to_string(), "application/json; charset=utf-8")
    } else {
        (
            serde_json::to_string_pretty(&v).unwrap_or_default(),
            "text/plain; charset=utf-8",
        )
    };
    let mut r = body.into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

fn one(
    st: &ApiState,
    h: &HeaderMap,
    plural: &str,
    spec: &Spec,
    obj: Option<Obj>,
    what: String,
) -> Res {
    match obj {
        Some(o) => Ok(render(st, h, plural, vec![query::select(spec, o)], None)),
        None => Err(not_found(what)),
    }
}

fn many(st: &ApiState, h: &HeaderMap, plural: &str, spec: &Spec, rows: Vec<Obj>) -> Res {
    let (rows, total) = query::apply(spec, rows);
    Ok(render(st, h, plural, rows, Some(total)))
}

fn not_found(what: String) -> ApiError {
    ApiError::NotFound(what)
}

fn obj(v: Value) -> Obj {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

async fn root() -> Response {
    Json404::root()
}

async fn invalid_path(Path(rest): Path<String>) -> ApiError {
    ApiError::InvalidPath(rest)
}

struct Json404;
impl Json404 {
    fn root() -> Response {
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
        let v = json!({ "api_version": 2, "links": names.iter().map(|n| json!({"name": n})).collect::<Vec<_>>() });
        (
            [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
            v.to_string(),
        )
            .into_response()
    }
}

use crate::api::path_number as num;

fn num_or_invalid(s: &str, path: &str) -> Result<i64, ApiError> {
    num(s).ok_or_else(|| ApiError::InvalidPath(path.to_string()))
}

// ------------------------------------------------------------------ JSON of each resource

fn props_json(p: &Properties, filters: &[String]) -> Option<Value> {
    if p.0.is_empty() || filters.is_empty() {
        return None;
    }
    let all = filters.iter().any(|f| f == "*");
    let m: Map<String, Value> =
        p.0.iter()
            .filter(|(k, _)| all || filters.contains(k))
            .map(|(k, v)| (k.clone(), json!([v.0, v.1])))
            .collect();
    Some(Value::Object(m))
}

fn build_json(b: &Build) -> Obj {
    obj(json!({
        "buildid": b.buildid.0, "number": b.number, "builderid": b.builderid.0,
        "buildrequestid": b.buildrequestid.0, "workerid": b.workerid.0, "masterid": b.masterid.0,
        "started_at": b.started_at, "complete_at": b.complete_at, "complete": b.complete,
        "locks_duration_s": b.locks_duration_s, "state_string": b.state_string,
        "results": b.results.map(i64::from), "properties": {},
    }))
}

/// Builds with `properties` filled as Buildbot does: only with `?property=`, and only when
/// some match.
async fn builds_json(st: &ApiState, spec: &Spec, builds: &[Build]) -> Result<Vec<Obj>, ApiError> {
    let mut out = Vec::with_capacity(builds.len());
    for b in builds {
        let mut o = build_json(b);
        if !spec.properties.is_empty() {
            let p = st.store.get_build_properties(b.buildid).await?;
            if let Some(v) = props_json(&p, &spec.properties) {
                o.insert("properties".into(), v);
            }
        }
        out.push(o);
    }
    Ok(out)
}

fn step_json(s: &Step) -> Obj {
    obj(json!({
        "stepid": s.stepid.0, "number": s.number, "name": s.name, "buildid": s.buildid.0,
        "started_at": s.started_at, "locks_acquired_at": null, "complete": s.complete,
        "complete_at": s.complete_at, "results": s.results.map(i64::from),
        "state_string": s.state_string,
        "urls": s.urls.iter().map(|u| json!({"name": u.name, "url": u.url})).collect::<Vec<_>>(),
        "hidden": s.hidden,
    }))
}

fn log_type(t: LogType) -> &'static str {
    match t {
        LogType::Stdio => "s",
        LogType::Text => "t",
        LogType::Html => "h",
        LogType::Deleted => "d",
    }
}

fn log_json(l: &Log) -> Obj {
    obj(json!({
        "logid": l.logid.0, "name": l.name, "slug": l.slug, "stepid": l.stepid.0,
        "complete": l.complete, "num_lines": l.num_lines, "type": log_type(l.log_type),
    }))
}

fn ss_json(ss: &SourceStamp) -> Value {
    json!({
        "ssid": ss.ssid.0, "branch": ss.branch, "revision": ss.revision, "project": ss.project,
        "repository": ss.repository, "codebase": ss.codebase, "created_at": ss.created_at,
        "patch": null,
    })
}

async fn change_json(st: &ApiState, c: &Change) -> Result<Obj, ApiError> {
    let ss = st.store.get_sourcestamp(c.sourcestampid).await?;
    Ok(obj(json!({
        "changeid": c.changeid.0, "author": c.author, "committer": c.committer,
        "comments": c.comments, "branch": c.branch, "revision": c.revision, "revlink": null,
        "when_timestamp": c.when_timestamp, "category": c.category, "parent_changeids": [],
        "repository": c.repository, "codebase": c.codebase, "project": c.project,
        "files": c.files, "sourcestamp": ss.as_ref().map(ss_json),
        "properties": c.properties.0.iter().map(|(k, v)| (k.clone(), json!([v.0, v.1]))).collect::<Map<_, _>>(),
    })))
}

async fn br_json(st: &ApiState, spec: &Spec, r: &BuildRequest) -> Result<Obj, ApiError> {
    let props = if spec.properties.is_empty() {
        None
    } else {
        props_json(
            &st.store.get_buildset_properties(r.buildsetid).await?,
            &spec.properties,
        )
    };
    Ok(obj(json!({
        "buildrequestid": r.buildrequestid.0, "buildsetid": r.buildsetid.0,
        "builderid": r.builderid.0, "priority": r.priority, "claimed": r.claimed,
        "claimed_at": r.claimed_at, "claimed_by_masterid": r.claimed_by_masterid.map(|m| m.0),
        "complete": r.complete, "results": r.results.map(i64::from),
        "submitted_at": r.submitted_at, "complete_at": r.complete_at,
        "waited_for": r.waited_for, "properties": props,
    })))
}

/// The masters active now, lowest id first: the ones this process's builders and workers are
/// reported on (a single-master farm has exactly one).
async fn active_master(st: &ApiState) -> Result<Option<MasterId>, ApiError> {
    let mut ms: Vec<_> = st
        .store
        .list_masters()
        .await?
        .into_iter()
        .filter(|m| m.active)
        .collect();
    ms.sort_by_key(|m| m.masterid.0);
    Ok(ms.first().map(|m| m.masterid))
}

async fn builder_json(st: &ApiState, b: &BuilderRow, master: Option<MasterId>) -> Obj {
    let configured = st.control.config().builder(&b.name).is_some();
    let masterids: Vec<i64> = if configured {
        master.map(|m| m.0).into_iter().collect()
    } else {
        vec![]
    };
    obj(json!({
        "builderid": b.builderid.0, "name": b.name, "masterids": masterids,
        "description": b.description, "description_format": null, "description_html": null,
        "projectid": null, "tags": b.tags,
    }))
}

/// Keys of worker info that may hold credentials are never shown.
fn is_secret_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    ["passw", "secret", "token", "credential", "private"]
        .iter()
        .any(|s| k.contains(s))
}

fn worker_json(
    st: &ApiState,
    w: &Worker,
    master: Option<MasterId>,
    builder_ids: &HashMap<String, BuilderId>,
) -> Obj {
    let cfg = st.control.config();
    let connected = st.control.connected_workers().contains(&w.name);
    let mut info = w.workerinfo.clone();
    info.retain(|k, _| !is_secret_key(k));
    let mut configured_on = Vec::new();
    if let Some(m) = master {
        for b in cfg.builders.iter().filter(|b| b.workers.contains(&w.name)) {
            if let Some(id) = builder_ids.get(&b.name) {
                configured_on.push(json!({"builderid": id.0, "masterid": m.0}));
            }
        }
    }
    let connected_to: Vec<Value> = match (connected, master) {
        (true, Some(m)) => vec![json!({"masterid": m.0})],
        _ => vec![],
    };
    obj(json!({
        "workerid": w.workerid.0, "name": w.name, "workerinfo": info, "paused": w.paused,
        "pause_reason": null, "graceful": w.graceful, "connected_to": connected_to,
        "configured_on": configured_on,
    }))
}

// ------------------------------------------------------------------ builders

async fn find_builder(st: &ApiState, b: &str) -> Result<Option<BuilderRow>, ApiError> {
    Ok(match num(b) {
        Some(id) => st.store.get_builder(BuilderId(id)).await?,
        None => st.store.get_builder_by_name(b).await?,
    })
}

async fn builders(State(st): State<ApiState>, h: HeaderMap, RawQuery(q): RawQuery) -> Res {
    let spec = query::parse(q.as_deref(), BUILDER_F, true)?;
    let master = active_master(&st).await?;
    let mut rows = Vec::new();
    let mut list = st.store.list_builders().await?;
    list.sort_by_key(|b| b.builderid.0);
    for b in &list {
        rows.push(builder_json(&st, b, master).await);
    }
    many(&st, &h, "builders", &spec, rows)
}

async fn builder(
    State(st): State<ApiState>,
    h: HeaderMap,
    Path(b): Path<String>,
    RawQuery(q): RawQuery,
) -> Res {
    let spec = query::parse(q.as_deref(), BUILDER_F, false)?;
    let master = active_master(&st).await?;
    let row = match find_builder(&st, &b).await? {
        Some(r) => Some(builder_json(&st, &r, master).await),
        None => None,
    };
    one(&st, &h, "builders", &spec, row, format!("/builders/{b}"))
}

// ------------------------------------------------------------------ builds

fn eq_cond(field: &str, v: i64) -> ApiCond {
    ApiCond {
        field: field.into(),
        op: ApiOp::Eq,
        values: vec![ApiValue::Int(v)],
    }
}

async fn builds_where(st: &ApiState, h: &HeaderMap, q: Option<&str>, extra: Vec<ApiCond>) -> Res {
    let spec = query::parse(q, BUILD_F, true)?;
    let sql = query::to_sql(&spec, ApiTable::Builds, extra)?;
    let page = st.store.api_builds(&sql).await?;
    let rows = builds_json(st, &spec, &page.rows).await?;
    let rows = rows.into_iter().map(|r| query::select(&spec, r)).collect();
    Ok(render(st, h, "builds", rows, Some(page.total as usize)))
}

async fn builds(State(st): State<ApiState>, h: HeaderMap, RawQuery(q): RawQuery) -> Res {
    builds_where(&st, &h, q.as_deref(), vec![]).await
}

async fn builder_builds(
    State(st): State<ApiState>,
    h: HeaderMap,
    Path(b): Path<String>,
    RawQuery(q): RawQuery,
) -> Res {
    match find_builder(&st, &b).await? {
        Some(row) => {
            builds_where(
                &st,
                &h,
                q.as_deref(),
                vec![eq_cond("builderid", row.builderid.0)],
            )
            .await
        }
        // Buildbot answers an empty collection for an unknown builder.
        None => {
            query::parse(q.as_deref(), BUILD_F, true)?;
            Ok(render(&st, &h, "builds", vec![], Some(0)))
        }
    }
}

async fn worker_builds(
    State(st): State<ApiState>,
    h: HeaderMap,
    Path(w): Path<String>,
    RawQuery(q): RawQuery,
) -> Res {
    let id = num_or_invalid(&w, &format!("workers/{w}/builds"))?;
    builds_where(&st, &h, q.as_deref(), vec![eq_cond("workerid", id)]).await
}

async fn buildrequest_builds(
    State(st): State<ApiState>,
    h: HeaderMap,
    Path(r): Path<String>,
    RawQuery(q): RawQuery,
) -> Res {
    let id = num_or_invalid(&r, &format!("buildrequests/{r}/builds"))?;
    builds_where(&st, &h, q.as_deref(), vec![eq_cond("buildrequestid", id)]).await
}

async fn one_build(
    st: &ApiState,
    h: &HeaderMap,
    q: Option<&str>,
    b: Option<Build>,
    what: String,
) -> Res {
    let spec = query::parse(q, BUILD_F, false)?;
    let row = match b {
        Some(b) => builds_json(st, &spec, &[b]).await?.pop(),
        None => None,
    };
    one(st, h, "builds", &spec, row, what)
}

async fn build(
    State(st): State<ApiState>,
    h: HeaderMap,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Res {
    let n = num_or_invalid(&id, &format!("builds/{id}"))?;
    let b = st.store.get_build(BuildId(n)).await?;
    one_build(&st, &h, q.as_deref(), b, format!("/builds/{id}")).await
}

/// `/builds/{id}/properties`: Buildbot answers one object of `name: [value, source]`.
async fn build_properties(State(st): State<ApiState>, h: HeaderMap, Path(id): Path<String>) -> Res {
    let n = num_or_invalid(&id, &format!("builds/{id}/properties"))?;
    if st.store.get_build(BuildId(n)).await?.is_none() {
        return Err(not_found(format!("/builds/{id}/properties")));
    }
    let p = st.store.get_build_properties(BuildId(n)).await?;
    let m: Obj =
        p.0.iter()
            .map(|(k, v)| (k.clone(), json!([v.0, v.1])))
            .collect();
    Ok(render(&st, &h, "properties", vec![m], Some(1)))
}

async fn build_by_number(st: &ApiState, b: &str, n: &str) -> Result<Option<Build>, ApiError> {
    let n = num_or_invalid(n, &format!("builders/{b}/builds/{n}"))?;
    Ok(match find_builder(st, b).await? {
        Some(row) => st.store.get_build_by_number(row.builderid, n).await?,
        None => None,
    })
}

async fn builder_build(
    State(st): State<ApiState>,
    h: HeaderMap,
    Path((b, n)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Res {
    let build = build_by_number(&st, &b, &n).await?;
    one_build(
        &st,
        &h,
        q.as_deref(),
        build,
        format!("/builders/{b}/builds/{n}"),
    )
    .await
}

// ------------------------------------------------------------------ steps

async fn steps_where(st: &ApiState, h: &HeaderMap, q: Option<&str>, build: Option<BuildId>) -> Res {
    let spec = query::parse(q, STEP_F, true)?;
    let Some(build) = build else {
        return Ok(render(st, h, "steps", vec![], Some(0)));
    };
    let sql = query::to_sql(&spec, ApiTable::Steps, vec![eq_cond("buildid", build.0)])?;
    let page = st.store.api_steps(&sql).await?;
    let rows = page
        .rows
        .iter()
        .map(|s| query::select(&spec, step_json(s)))
        .collect();
    Ok(render(st, h, "steps", rows, Some(page.total as usize)))
}

async fn build_steps(
    State(st): State<ApiState>,
    h: HeaderMap,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Res {
    let n = num_or_invalid(&id, &format!("builds/{id}/steps"))?;
    steps_where(&st, &h, q.as_deref(), Some(BuildId(n))).await
}

async fn builder_build_steps(
    State(st): State<ApiState>,
    h: HeaderMap,
    Path((b, n)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Res {
    let build = build_by_number(&st, &b, &n).await?;
    steps_where(&st, &h, q.as_deref(), build.map(|b| b.buildid)).await
}

/// A step of a build by number or name (`/builds/{id}/steps/{s}`).
async fn find_build_step(st: &ApiState, id: &str, s: &str) -> Result<Option<Step>, ApiError> {
    let build = BuildId(num_or_invalid(id, &format!("builds/{id}/steps/{s}"))?);
    let steps = st.store.list_steps(build).await?;
    Ok(match num(s) {
        Some(n) => steps.into_iter().find(|x| x.number == n),
        None => steps.into_iter().find(|x| x.name == s),
    })
}

async fn step(
    State(st): State<ApiState>,
    h: HeaderMap,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Res {
    let spec = query::parse(q.as_deref(), STEP_F, false)?;
    let n = num_or_invalid(&id, &format!("steps/{id}"))?;
    let s = st.store.get_step(StepId(n)).await?;
    one(
        &st,
        &h,
        "steps",
        &spec,
        s.as_ref().map(step_json),
        format!("/steps/{id}"),
    )
}

async fn build_step(
    State(st): State<ApiState>,
    h: HeaderMap,
    Path((id, s)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Res {
    let spec = query::parse(q.as_deref(), STEP_F, false)?;
    let step = find_build_step(&st, &id, &s).await?;
    one(
        &st,
        &h,
        "steps",
        &spec,
        step.as_ref().map(step_json),
        format!("/builds/{id}/steps/{s}"),
    )
}

// ------------------------------------------------------------------ logs

async fn logs_of(st: &ApiState, h: &HeaderMap, q: Option<&str>, step: Option<StepId>) -> Res {
    let spec = query::parse(q, LOG_F, true)?;
    let rows = match step {
        Some(s) => st.store.list_logs(s).await?.iter().map(log_json).collect(),
        None => vec![],
    };
    many(st, h, "logs", &spec, rows)
}

async fn step_logs(
    State(st): State<ApiState>,
    h: HeaderMap,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Res {
    let n = num_or_invalid(&id, &format!("steps/{id}/logs"))?;
    logs_of(&st, &h, q.as_deref(), Some(StepId(n))).await
}

async fn build_step_logs(
    State(st): State<ApiState>,
    h: HeaderMap,
    Path((id, s)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Res {
    let step = find_build_step(&st, &id, &s).await?;
    logs_of(&st, &h, q.as_deref(), step.map(|s| s.stepid)).await
}

async fn log_by_id(st: &ApiState, id: &str) -> Result<Option<Log>, ApiError> {
    let n = num_or_invalid(id, &format!("logs/{id}"))?;
    Ok(st.store.get_log(LogId(n)).await?)
}

async fn log_by_step(st: &ApiState, step: &str, slug: &str) -> Result<Option<Log>, ApiError> {
    let n = num_or_invalid(step, &format!("steps/{step}/logs/{slug}"))?;
    Ok(st.store.get_log_by_slug(StepId(n), slug).await?)
}

async fn log_by_build_step(
    st: &ApiState,
    id: &str,
    s: &str,
    slug: &str,
) -> Result<Option<Log>, ApiError> {
    Ok(match find_build_step(st, id, s).await? {
        Some(step) => st.store.get_log_by_slug(step.stepid, slug).await?,
        None => None,
    })
}

fn one_log(st: &ApiState, h: &HeaderMap, q: Option<&str>, l: Option<Log>, what: String) -> Res {
    let spec = query::parse(q, LOG_F, false)?;
    one(st, h, "logs", &spec, l.as_ref().map(log_json), what)
}

async fn log(
    State(st): State<ApiState>,
    h: HeaderMap,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Res {
    let l = log_by_id(&st, &id).await?;
    one_log(&st, &h, q.as_deref(), l, format!("/logs/{id}"))
}

async fn step_log(
    State(st): State<ApiState>,
    h: HeaderMap,
    Path((id, slug)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Res {
    let l = log_by_step(&st, &id, &slug).await?;
    one_log(&st, &h, q.as_deref(), l, format!("/steps/{id}/logs/{slug}"))
}

async fn build_step_log(
    State(st): State<ApiState>,
    h: HeaderMap,
    Path((id, s, slug)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
) -> Res {
    let l = log_by_build_step(&st, &id, &s, &slug).await?;
    one_log(
        &st,
        &h,
        q.as_deref(),
        l,
        format!("/builds/{id}/steps/{s}/logs/{slug}"),
    )
}

/// `logchunks`: lines `offset .. offset+limit-1` (the whole log without them), each ending in
/// `\n`, as Buildbot's `LogChunkEndpoint`.
async fn contents(
    st: &ApiState,
    h: &HeaderMap,
    q: Option<&str>,
    l: Option<Log>,
    what: String,
) -> Res {
    let spec = query::parse(q, LOGCHUNK_F, false)?;
    let Some(l) = l else {
        return Err(not_found(what));
    };
    let first = spec.offset.unwrap_or(0);
    let last = match spec.limit {
        Some(n) => first + n - 1,
        None => (l.num_lines - 1).max(0),
    };
    if first < 0 || last < 0 || first > last {
        return Err(not_found(what));
    }
    let mut content = String::new();
    let mut at = first;
    while at <= last.min(l.num_lines - 1) {
        let to = last.min(at + MAX_READ_LINES - 1);
        let lines = st.store.read_log_lines(l.logid, at, to).await?;
        if lines.is_empty() {
            break;
        }
        for line in &lines {
            content.push_str(line);
            content.push('\n');
        }
        at += lines.len() as i64;
    }
    let o = obj(json!({"logid": l.logid.0, "firstline": first, "content": content}));
    one(st, h, "logchunks", &spec, Some(o), what)
}

async fn log_contents(
    State(st): State<ApiState>,
    h: HeaderMap,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Res {
    let l = log_by_id(&st, &id).await?;
    contents(&st, &h, q.as_deref(), l, format!("/logs/{id}/contents")).await
}

async fn step_log_contents(
    State(st): State<ApiState>,
    h: HeaderMap,
    Path((id, slug)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Res {
    let l = log_by_step(&st, &id, &slug).await?;
    contents(
        &st,
        &h,
        q.as_deref(),
        l,
        format!("/steps/{id}/logs/{slug}/contents"),
    )
    .await
}

async fn build_step_log_contents(
    State(st): State<ApiState>,
    h: HeaderMap,
    Path((id, s, slug)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
) -> Res {
    let l = log_by_build_step(&st, &id, &s, &slug).await?;
    contents(
        &st,
        &h,
        q.as_deref(),
        l,
        format!("/builds/{id}/steps/{s}/logs/{slug}/contents"),
    )
    .await
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

/// `/raw`: the log streamed a chunk at a time from the store, as Buildbot's
/// `RawLogChunkEndpoint`: stdio logs get a `Builder/Build number/Worker name` header and lose
/// their channel characters; the file name is `<builder>_build_<n>_step_<step>_log_<slug>`.
async fn raw(st: &ApiState, l: Option<Log>, what: String) -> Res {
    let Some(l) = l else {
        return Err(not_found(what));
    };
    let step = st.store.get_step(l.stepid).await?;
    let build = match &step {
        Some(s) => st.store.get_build(s.buildid).await?,
        None => None,
    };
    let builder = match &build {
        Some(b) => st.store.get_builder(b.builderid).await?,
        None => None,
    };
    let worker = match &build {
        Some(b) => st.store.get_worker(b.workerid).await?,
        None => None,
    };
    let mut prefix = String::new();
    let stdio = l.log_type == LogType::Stdio;
    if stdio {
        if let Some(b) = &builder {
            prefix.push_str(&format!("Builder: {}\n", b.name));
        }
        if let Some(b) = &build {
            prefix.push_str(&format!("Build number: {}\n", b.number));
        }
        if let Some(w) = &worker {
            prefix.push_str(&format!("Worker name: {}\n", w.name));
        }
    }
    let mut parts: Vec<String> = Vec::new();
    if let Some(b) = &builder {
        parts.push(b.name.clone());
    }
    if let Some(b) = &build {
        parts.extend(["build".to_string(), b.number.to_string()]);
    }
    if let Some(s) = &step {
        parts.extend(["step".to_string(), s.name.clone()]);
    }
    parts.extend(["log".to_string(), l.slug.clone()]);
    let filename: String = parts
        .join("_")
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let red = st.control.config().redactor();
    let head = futures_util::stream::iter(
        (!prefix.is_empty()).then(|| Ok::<_, std::io::Error>(red.redact(&prefix).into_bytes())),
    );
    let red2 = red.clone();
    let body = st.store.log_raw(l.logid).map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        // Stored text is UTF-8 (it was appended as text): check it fast, copy only if not.
        let text = match String::from_utf8(chunk) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        };
        let text = if stdio { strip_channels(&text) } else { text };
        Ok(red2.redact(&text).into_bytes())
    });
    let mime = if l.log_type == LogType::Html {
        "text/html; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut r = Response::new(Body::from_stream(head.chain(body)));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename={filename}")) {
        r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(r)
}

async fn log_raw(State(st): State<ApiState>, Path(id): Path<String>) -> Res {
    let l = log_by_id(&st, &id).await?;
    raw(&st, l, format!("/logs/{id}/raw")).await
}

async fn step_log_raw(State(st): State<ApiState>, Path((id, slug)): Path<(String, String)>) -> Res {
    let l = log_by_step(&st, &id, &slug).await?;
    raw(&st, l, format!("/steps/{id}/logs/{slug}/raw")).await
}

async fn build_step_log_raw(
    State(st): State<ApiState>,
    Path((id, s, slug)): Path<(String, String, String)>,
) -> Res {
    let l = log_by_build_step(&st, &id, &s, &slug).await?;
    raw(&st, l, format!("/builds/{id}/steps/{s}/logs/{slug}/raw")).await
}

// ------------------------------------------------------------------ workers

async fn worker_rows(st: &ApiState) -> Result<Vec<(Worker, Obj)>, ApiError> {
    let master = active_master(st).await?;
    let ids: HashMap<String, BuilderId> = st
        .store
        .list_builders()
        .await?
        .into_iter()
        .map(|b| (b.name, b.builderid))
        .collect();
    let mut ws = st.store.list_workers().await?;
    ws.sort_by_key(|w| w.workerid.0);
    Ok(ws
        .into_iter()
        .map(|w| {
            let o = worker_json(st, &w, master, &ids);
            (w, o)
        })
        .collect())
}

async fn workers(State(st): State<ApiState>, h: HeaderMap, RawQuery(q): RawQuery) -> Res {
    let spec = query::parse(q.as_deref(), WORKER_F, true)?;
    let rows = worker_rows(&st)
        .await?
        .into_iter()
        .map(|(_, o)| o)
        .collect();
    many(&st, &h, "workers", &spec, rows)
}

/// Workers configured on a builder (`/builders/n:builderid/workers`).
async fn builder_workers(
    State(st): State<ApiState>,
    h: HeaderMap,
    Path(b): Path<String>,
    RawQuery(q): RawQuery,
) -> Res {
    let spec = query::parse(q.as_deref(), WORKER_F, true)?;
    let id = num_or_invalid(&b, &format!("builders/{b}/workers"))?;
    let rows = worker_rows(&st)
        .await?
        .into_iter()
        .map(|(_, o)| o)
        .filter(|o| {
            o["configured_on"]
                .as_array()
                .is_some_and(|c| c.iter().any(|x| x["builderid"] == id))
        })
        .collect();
    many(&st, &h, "workers", &spec, rows)
}

async fn worker(
    State(st): State<ApiState>,
    h: HeaderMap,
    Path(w): Path<String>,
    RawQuery(q): RawQuery,
) -> Res {
    let spec = query::parse(q.as_deref(), WORKER_F, false)?;
    let id = num(&w);
    let row = worker_rows(&st)
        .await?
        .into_iter()
        .find(|(x, _)| match id {
            Some(id) => x.workerid == WorkerId(id),
            None => x.name == w,
        })
        .map(|(_, o)| o);
    one(&st, &h, "workers", &spec, row, format!("/workers/{w}"))
}

// ------------------------------------------------------------------ changes

async fn changes(State(st): State<ApiState>, h: HeaderMap, RawQuery(q): RawQuery) -> Res {
    let spec = query::parse(q.as_deref(), CHANGE_F, true)?;
    let sql = query::to_sql(&spec, ApiTable::Changes, vec![])?;
    let page = st.store.api_changes(&sql).await?;
    let mut rows = Vec::with_capacity(page.rows.len());
    for c in &page.rows {
        rows.push(query::select(&spec, change_json(&st, c).await?));
    }
    Ok(render(&st, &h, "changes", rows, Some(page.total as usize)))
}

async fn change(
    State(st): State<ApiState>,
    h: HeaderMap,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Res {
    let spec = query::parse(q.as_deref(), CHANGE_F, false)?;
    let n = num_or_invalid(&id, &format!("changes/{id}"))?;
    let row = match st.store.get_change(ChangeId(n)).await? {
        Some(c) => Some(change_json(&st, &c).await?),
        None => None,
    };
    one(&st, &h, "changes", &spec, row, format!("/changes/{id}"))
}

// ------------------------------------------------------------------ build requests, buildsets

async fn requests_where(st: &ApiState, h: &HeaderMap, q: Option<&str>, extra: Vec<ApiCond>) -> Res {
    let spec = query::parse(q, BR_F, true)?;
    let sql = query::to_sql(&spec, ApiTable::BuildRequests, extra)?;
    let page = st.store.api_build_requests(&sql).await?;
    let mut rows = Vec::with_capacity(page.rows.len());
    for r in &page.rows {
        rows.push(query::select(&spec, br_json(st, &spec, r).await?));
    }
    Ok(render(
        st,
        h,
        "buildrequests",
        rows,
        Some(page.total as usize),
    ))
}

async fn buildrequests(State(st): State<ApiState>, h: HeaderMap, RawQuery(q): RawQuery) -> Res {
    requests_where(&st, &h, q.as_deref(), vec![]).await
}

async fn builder_requests(
    State(st): State<ApiState>,
    h: HeaderMap,
    Path(b): Path<String>,
    RawQuery(q): RawQuery,
) -> Res {
    let id = num_or_invalid(&b, &format!("builders/{b}/buildrequests"))?;
    requests_where(&st, &h, q.as_deref(), vec![eq_cond("builderid", id)]).await
}

async fn buildrequest(
    State(st): State<ApiState>,
    h: HeaderMap,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Res {
    let spec = query::parse(q.as_deref(), BR_F, false)?;
    let n = num_or_invalid(&id, &format!("buildrequests/{id}"))?;
    let row = match st.store.get_build_request(BuildRequestId(n)).await? {
        Some(r) => Some(br_json(&st, &spec, &r).await?),
        None => None,
    };
    one(
        &st,
        &h,
        "buildrequests",
        &spec,
        row,
        format!("/buildrequests/{id}"),
    )
}

async fn buildset_json(st: &ApiState, bs: &kiln_model::Buildset) -> Result<Obj, ApiError> {
    let mut sss = Vec::new();
    for id in &bs.sourcestamps {
        if let Some(ss) = st.store.get_sourcestamp(*id).await? {
            sss.push(ss_json(&ss));
        }
    }
    Ok(obj(json!({
        "bsid": bs.bsid.0, "external_idstring": bs.external_idstring, "reason": bs.reason,
        "rebuilt_buildid": null, "submitted_at": bs.submitted_at, "complete": bs.complete,
        "complete_at": bs.complete_at, "results": bs.results.map(i64::from),
        "sourcestamps": sss, "parent_buildid": bs.parent_buildid.map(|b| b.0),
        "parent_relationship": null,
    })))
}

/// Buildsets: the newest [`kiln_store::MAX_LIST_LIMIT`] (narrowed by `complete` in SQL), then
/// filtered and ordered in memory; source stamps are read for the returned page only.
async fn buildsets(State(st): State<ApiState>, h: HeaderMap, RawQuery(q): RawQuery) -> Res {
    let spec = query::parse(q.as_deref(), BUILDSET_F, true)?;
    let complete = spec
        .filters
        .iter()
        .find(|f| f.field == "complete" && f.op == ApiOp::Eq && f.values.len() == 1)
        .and_then(|f| f.values[0].as_bool());
    let mut list = st
        .store
        .list_buildsets(&BuildsetFilter {
            complete,
            before: None,
            limit: Some(kiln_store::MAX_LIST_LIMIT),
        })
        .await?;
    list.sort_by_key(|b| b.bsid.0);
    let mut rows = Vec::with_capacity(list.len());
    for bs in &list {
        let mut o = buildset_json_shallow(bs);
        o.insert("sourcestamps".into(), json!([]));
        rows.push(o);
    }
    let unselected = Spec {
        fields: None,
        ..spec.clone()
    };
    let (page, total) = query::apply(&unselected, rows);
    let by_id: BTreeMap<i64, &kiln_model::Buildset> = list.iter().map(|b| (b.bsid.0, b)).collect();
    let mut out = Vec::with_capacity(page.len());
    for o in page {
        let id = o.get("bsid").and_then(Value::as_i64).unwrap_or(0);
        let full = match by_id.get(&id) {
            Some(bs) => buildset_json(&st, bs).await?,
            None => o,
        };
        out.push(query::select(&spec, full));
    }
    Ok(render(&st, &h, "buildsets", out, Some(total)))
}

fn buildset_json_shallow(bs: &kiln_model::Buildset) -> Obj {
    obj(json!({
        "bsid": bs.bsid.0, "external_idstring": bs.external_idstring, "reason": bs.reason,
        "rebuilt_buildid": null, "submitted_at": bs.submitted_at, "complete": bs.complete,
        "complete_at": bs.complete_at, "results": bs.results.map(i64::from),
        "parent_buildid": bs.parent_buildid.map(|b| b.0), "parent_relationship": null,
    }))
}

async fn buildset(
    State(st): State<ApiState>,
    h: HeaderMap,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Res {
    let spec = query::parse(q.as_deref(), BUILDSET_F, false)?;
    let n = num_or_invalid(&id, &format!("buildsets/{id}"))?;
    let row = match st.store.get_buildset(BuildsetId(n)).await? {
        Some(bs) => Some(buildset_json(&st, &bs).await?),
        None => None,
    };
    one(&st, &h, "buildsets", &spec, row, format!("/buildsets/{id}"))
}

// ------------------------------------------------------------------ force schedulers, masters

fn field(name: &str, label: &str, ty: &str, default: Value, size: i64) -> Value {
    json!({
        "name": name, "fullName": name, "label": label, "tablabel": label, "type": ty,
        "default": default, "multiple": false, "regex": null, "hide": false, "maxsize": null,
        "autopopulate": null, "tooltip": "", "required": false, "size": size,
    })
}

fn group(columns: i64, fields: Vec<Value>) -> Value {
    json!({
        "name": "", "fullName": null, "label": "", "tablabel": "", "type": "nested",
        "default": "", "multiple": false, "regex": null, "hide": false, "maxsize": null,
        "autopopulate": null, "tooltip": "", "required": false, "layout": "vertical",
        "columns": columns, "fields": fields,
    })
}

/// Buildbot's `ForceScheduler` as the UI reads it, laid out as Buildbot 4.3 does: a group with
/// `username`, `reason` and `priority`, a two-column group with the source fields, then the
/// typed parameters.
pub(super) fn forcescheduler_json(s: &kiln_config::Scheduler) -> Option<Obj> {
    let SchedulerKind::Force(args) = &s.kind else {
        return None;
    };
    let mut user = field("username", "Your name:", "username", json!(""), 30);
    user["need_email"] = json!(true);
    let mut all = vec![group(
        1,
        vec![
            user,
            field("reason", "reason", "text", json!("force build"), 20),
            field("priority", "priority", "int", json!(0), 10),
        ],
    )];
    if args.source {
        let src = [
            ("branch", "Branch:"),
            ("project", "Project:"),
            ("repository", "Repository:"),
            ("revision", "Revision:"),
        ]
        .iter()
        .map(|(n, l)| field(n, l, "text", json!(""), 10))
        .collect();
        all.push(group(2, src));
    }
    for p in &args.params {
        let ty = match p.kind {
            kiln_config::ForceParamType::String => "text",
            kiln_config::ForceParamType::Text => "textarea",
            kiln_config::ForceParamType::Int => "int",
            kiln_config::ForceParamType::Bool => "bool",
            kiln_config::ForceParamType::Choice => "list",
        };
        let label = p.label.clone().unwrap_or_else(|| p.name.clone());
        let default = p.default.clone().unwrap_or_else(|| match p.kind {
            kiln_config::ForceParamType::Int => json!(0),
            kiln_config::ForceParamType::Bool => json!(false),
            _ => json!(""),
        });
        let mut f = field(&p.name, &label, ty, default, 10);
        f["required"] = json!(p.required);
        if p.kind == kiln_config::ForceParamType::Choice {
            f["choices"] = json!(p.choices);
        }
        all.push(f);
    }
    let label = args.label.clone().unwrap_or_else(|| s.name.clone());
    Some(obj(json!({
        "name": s.name, "button_name": label, "label": label,
        "builder_names": s.builder_names, "enabled": true, "all_fields": all,
    })))
}

async fn forceschedulers(State(st): State<ApiState>, h: HeaderMap, RawQuery(q): RawQuery) -> Res {
    let spec = query::parse(q.as_deref(), FS_F, true)?;
    let rows = st
        .control
        .config()
        .schedulers
        .iter()
        .filter_map(forcescheduler_json)
        .collect();
    many(&st, &h, "forceschedulers", &spec, rows)
}

/// Force schedulers that can start a builder (`/builders/n:builderid/forceschedulers`).
async fn builder_forceschedulers(
    State(st): State<ApiState>,
    h: HeaderMap,
    Path(b): Path<String>,
    RawQuery(q): RawQuery,
) -> Res {
    let spec = query::parse(q.as_deref(), FS_F, true)?;
    let id = num_or_invalid(&b, &format!("builders/{b}/forceschedulers"))?;
    let rows = match st.store.get_builder(BuilderId(id)).await? {
        Some(row) => st
            .control
            .config()
            .schedulers
            .iter()
            .filter(|s| s.builder_names.contains(&row.name))
            .filter_map(forcescheduler_json)
            .collect(),
        None => vec![],
    };
    many(&st, &h, "forceschedulers", &spec, rows)
}

async fn forcescheduler(
    State(st): State<ApiState>,
    h: HeaderMap,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Res {
    let spec = query::parse(q.as_deref(), FS_F, false)?;
    let row = st
        .control
        .config()
        .scheduler(&name)
        .and_then(forcescheduler_json);
    one(
        &st,
        &h,
        "forceschedulers",
        &spec,
        row,
        format!("/forceschedulers/{name}"),
    )
}

fn master_json(m: &kiln_store::MasterRow) -> Obj {
    obj(
        json!({"masterid": m.masterid.0, "name": m.name, "active": m.active, "last_active": m.last_active}),
    )
}

async fn masters(State(st): State<ApiState>, h: HeaderMap, RawQuery(q): RawQuery) -> Res {
    let spec = query::parse(q.as_deref(), MASTER_F, true)?;
    let mut ms = st.store.list_masters().await?;
    ms.sort_by_key(|m| m.masterid.0);
    many(
        &st,
        &h,
        "masters",
        &spec,
        ms.iter().map(master_json).collect(),
    )
}

async fn master(
    State(st): State<ApiState>,
    h: HeaderMap,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Res {
    let spec = query::parse(q.as_deref(), MASTER_F, false)?;
    let n = num_or_invalid(&id, &format!("masters/{id}"))?;
    let row = st
        .store
        .list_masters()
        .await?
        .iter()
        .find(|m| m.masterid.0 == n)
        .map(master_json);
    one(&st, &h, "masters", &spec, row, format!("/masters/{id}"))
}
