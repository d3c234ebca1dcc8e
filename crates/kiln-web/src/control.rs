//! Control: JSON-RPC 2.0 `POST`s on resources (`www/rest.py: renderJsonRpc`) — `force` on a
//! force scheduler, `stop` on a build, `cancel` on a build request — and the `base` change
//! hook (`www/hooks/base.py`).

use std::collections::BTreeMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use kiln_model::{BuildId, BuildRequestId, BuilderId};
use kiln_store::BuildFilter;
use serde_json::{Map, Value, json};

use super::{ApiState, ChangeRequest, ForceRequest};

const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;
const INTERNAL_ERROR: i64 = -32603;

pub(super) fn routes() -> Router<ApiState> {
    // `/change_hook/` without a dialect is the base hook in Buildbot too.
    Router::new()
        .route("/change_hook/base", post(change_hook))
        .route("/change_hook/", post(change_hook))
        .route("/change_hook", post(change_hook))
}

/// A JSON-RPC failure: HTTP status, JSON-RPC code, message.
struct RpcError(StatusCode, i64, String);

struct Rpc {
    method: String,
    id: Value,
    params: Map<String, Value>,
}

/// The reply; `id` is `None` when the request could not be decoded far enough to have one
/// (Buildbot then leaves the key out).
fn reply(id: Option<Value>, r: Result<Value, RpcError>) -> Response {
    let (status, mut body) = match r {
        Ok(v) => (StatusCode::OK, json!({"jsonrpc": "2.0", "result": v})),
        Err(RpcError(s, code, msg)) => (
            s,
            json!({"jsonrpc": "2.0", "error": {"code": code, "message": msg}}),
        ),
    };
    if let Some(id) = id {
        body["id"] = id;
    }
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Buildbot's `decodeJsonRPC2`: content type, object root, and the four keys with their types.
fn decode(headers: &HeaderMap, body: &[u8]) -> Result<Rpc, RpcError> {
    let bad = |code, msg: String| RpcError(StatusCode::BAD_REQUEST, code, msg);
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ctype.split(';').next().map(str::trim) != Some("application/json") {
        return Err(bad(
            INVALID_REQUEST,
            "Invalid content-type (use application/json)".into(),
        ));
    }
    let data: Value = serde_json::from_slice(body)
        .map_err(|e| bad(PARSE_ERROR, format!("JSON parse error: {e}")))?;
    let Value::Object(mut data) = data else {
        let msg = if data.is_array() {
            "JSONRPC batch requests are not supported"
        } else {
            "JSONRPC root object must be an object"
        };
        return Err(bad(INVALID_REQUEST, msg.into()));
    };
    for (k, ok, ty) in [
        (
            "jsonrpc",
            data.get("jsonrpc").is_some_and(Value::is_string),
            "a string",
        ),
        (
            "method",
            data.get("method").is_some_and(Value::is_string),
            "a string",
        ),
        (
            "id",
            data.get("id")
                .is_some_and(|v| v.is_string() || v.is_i64() || v.is_u64() || v.is_null()),
            "a string, number, or null",
        ),
        (
            "params",
            data.get("params").is_some_and(Value::is_object),
            "an object",
        ),
    ] {
        if !data.contains_key(k) {
            return Err(bad(INVALID_REQUEST, format!("missing key '{k}'")));
        }
        if !ok {
            return Err(bad(INVALID_REQUEST, format!("'{k}' must be {ty}")));
        }
    }
    if data["jsonrpc"] != "2.0" {
        return Err(bad(INVALID_REQUEST, "only JSONRPC 2.0 is supported".into()));
    }
    let params = match data.remove("params") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    Ok(Rpc {
        method: data["method"].as_str().unwrap_or("").to_string(),
        id: data.remove("id").unwrap_or(Value::Null),
        params,
    })
}

/// Runs a JSON-RPC handler: decode, dispatch, reply with the request's id.
async fn rpc<F, Fut>(headers: &HeaderMap, body: &[u8], f: F) -> Response
where
    F: FnOnce(Rpc) -> Fut,
    Fut: Future<Output = Result<Value, RpcError>>,
{
    match decode(headers, body) {
        Err(e) => reply(None, Err(e)),
        Ok(r) => {
            let id = r.id.clone();
            reply(Some(id), f(r).await)
        }
    }
}

fn not_found(what: String) -> RpcError {
    RpcError(
        StatusCode::NOT_FOUND,
        INVALID_REQUEST,
        format!("Invalid path: {what}"),
    )
}

fn internal(e: impl std::fmt::Display) -> RpcError {
    RpcError(
        StatusCode::INTERNAL_SERVER_ERROR,
        INTERNAL_ERROR,
        e.to_string(),
    )
}

fn unknown_action(method: &str) -> RpcError {
    RpcError(
        StatusCode::NOT_IMPLEMENTED,
        METHOD_NOT_FOUND,
        format!("action: {method} is not supported"),
    )
}

fn num(s: &str, what: &str) -> Result<i64, RpcError> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().map_err(|_| not_found(what.to_string()))
    } else {
        Err(not_found(what.to_string()))
    }
}

fn opt_string(v: Option<Value>) -> Option<String> {
    match v {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => Some(other.to_string()),
    }
}

/// `POST /api/v2/forceschedulers/{name}` `force`: answers `[bsid, {"<builderid>": brid}]` as
/// Buildbot's `ForceScheduler.force`.
pub(super) async fn force_rpc(
    State(st): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    rpc(&headers, &body, |r| async move {
        let cfg = st.control.config();
        let Some(sched) = cfg
            .scheduler(&name)
            .filter(|s| matches!(s.kind, kiln_config::SchedulerKind::Force(_)))
        else {
            return Err(not_found(format!("forceschedulers/{name}")));
        };
        if r.method != "force" {
            return Err(unknown_action(&r.method));
        }
        let mut p = r.params;
        let mut builder_names: Vec<String> = match p.remove("builderNames") {
            Some(Value::Array(a)) => a
                .into_iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
            Some(Value::String(s)) => vec![s],
            _ => vec![],
        };
        match p.remove("builderid") {
            None | Some(Value::Null) => {}
            Some(v) => {
                let id = v
                    .as_i64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                    .ok_or_else(|| {
                        RpcError(
                            StatusCode::BAD_REQUEST,
                            INVALID_PARAMS,
                            format!("builderid {v} is not a number"),
                        )
                    })?;
                let b = st
                    .store
                    .get_builder(BuilderId(id))
                    .await
                    .map_err(internal)?
                    .ok_or_else(|| {
                        RpcError(
                            StatusCode::BAD_REQUEST,
                            INVALID_PARAMS,
                            format!("no builder with id {id}"),
                        )
                    })?;
                builder_names = vec![b.name];
            }
        }
        if builder_names.is_empty() {
            builder_names = sched.builder_names.clone();
        }
        let req = ForceRequest {
            builder_names,
            // The form's owner field is `username`; Buildbot fills `owner` from the session.
            owner: opt_string(p.remove("owner"))
                .or_else(|| opt_string(p.remove("username")).filter(|u| !u.is_empty()))
                .or_else(|| Some("anonymous".into())),
            reason: opt_string(p.remove("reason")),
            branch: opt_string(p.remove("branch")),
            revision: opt_string(p.remove("revision")),
            repository: opt_string(p.remove("repository")),
            project: opt_string(p.remove("project")),
            properties: p.into_iter().collect::<BTreeMap<_, _>>(),
        };
        let (bsid, brids) =
            st.control
                .force(&name, req)
                .await
                .map_err(|e| match e.is_user_error() {
                    true => RpcError(StatusCode::BAD_REQUEST, INVALID_PARAMS, e.to_string()),
                    false => internal(crate::error_chain(&e)),
                })?;
        let mut by_builder = Map::new();
        for brid in brids {
            if let Some(br) = st.store.get_build_request(brid).await.map_err(internal)? {
                by_builder.insert(br.builderid.0.to_string(), json!(brid.0));
            }
        }
        Ok(json!([bsid.0, by_builder]))
    })
    .await
}

/// `POST /api/v2/builds/{id}` `stop`: answers `null` as Buildbot does.
pub(super) async fn build_rpc(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    rpc(&headers, &body, |r| async move {
        let n = num(&id, &format!("builds/{id}"))?;
        if st
            .store
            .get_build(BuildId(n))
            .await
            .map_err(internal)?
            .is_none()
        {
            return Err(not_found(format!("builds/{id}")));
        }
        if r.method != "stop" {
            return Err(unknown_action(&r.method));
        }
        let reason =
            opt_string(r.params.get("reason").cloned()).unwrap_or_else(|| "no reason".into());
        st.control.stop_build(BuildId(n), reason).await;
        Ok(Value::Null)
    })
    .await
}

/// `POST /api/v2/buildrequests/{id}` `cancel`: an unclaimed request is cancelled; a claimed
/// one has its running builds stopped (as Buildbot's `cancel`). Answers `null`.
pub(super) async fn buildrequest_rpc(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    rpc(&headers, &body, |r| async move {
        let n = num(&id, &format!("buildrequests/{id}"))?;
        if st
            .store
            .get_build_request(BuildRequestId(n))
            .await
            .map_err(internal)?
            .is_none()
        {
            return Err(not_found(format!("buildrequests/{id}")));
        }
        if r.method != "cancel" {
            return Err(unknown_action(&r.method));
        }
        let reason =
            opt_string(r.params.get("reason").cloned()).unwrap_or_else(|| "no reason".into());
        if !st.control.cancel_request(BuildRequestId(n)).await {
            let running = st
                .store
                .list_builds(&BuildFilter {
                    buildrequestid: Some(BuildRequestId(n)),
                    complete: Some(false),
                    ..Default::default()
                })
                .await
                .map_err(internal)?;
            for b in running {
                st.control.stop_build(b.buildid, reason.clone()).await;
            }
        }
        Ok(Value::Null)
    })
    .await
}

/// `POST /change_hook/base`: form fields (query string or urlencoded body) as Buildbot's base
/// hook, or the same names in a JSON object body. Answers 202 `1 change found`.
async fn change_hook(
    State(st): State<ApiState>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let bad = |msg: String| (StatusCode::BAD_REQUEST, msg).into_response();
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // Field name → first value (Buildbot's firstOrNothing), as JSON.
    let mut args: BTreeMap<String, Value> = BTreeMap::new();
    let mut take_form = |bytes: &[u8]| {
        for (k, v) in form_urlencoded::parse(bytes) {
            args.entry(k.into_owned())
                .or_insert(Value::String(v.into_owned()));
        }
    };
    take_form(q.as_deref().unwrap_or("").as_bytes());
    if ctype.starts_with("application/json") {
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(m)) => args.extend(m),
            Ok(_) => return bad("the JSON body must be an object of change fields".into()),
            Err(e) => return bad(format!("the JSON body is not valid JSON: {e}")),
        }
    } else {
        take_form(&body);
    }
    let text = |k: &str| match args.get(k) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(v) => Some(v.to_string()),
    };
    // `files` and `properties` are JSON in a form field, or JSON values in a JSON body.
    let json_field = |k: &str| -> Result<Option<Value>, String> {
        match args.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => serde_json::from_str(s)
                .map(Some)
                .map_err(|e| format!("{k} is not valid JSON: {e}")),
            Some(v) => Ok(Some(v.clone())),
        }
    };
    let files = match json_field("files") {
        Ok(None) => vec![],
        Ok(Some(Value::Array(a))) => a
            .into_iter()
            .map(|v| {
                v.as_str()
                    .map(String::from)
                    .unwrap_or_else(|| v.to_string())
            })
            .collect(),
        Ok(Some(_)) => return bad("files must be a JSON list of file names".into()),
        Err(e) => return bad(e),
    };
    let properties = match json_field("properties") {
        Ok(None) => BTreeMap::new(),
        Ok(Some(Value::Object(m))) => m.into_iter().collect(),
        Ok(Some(_)) => return bad("properties must be a JSON object".into()),
        Err(e) => return bad(e),
    };
    let when = match text("when_timestamp").or_else(|| text("when")) {
        None => None,
        Some(s) => match s.trim().parse::<f64>() {
            Ok(f) => Some(f as i64),
            Err(_) => return bad(format!("when_timestamp {s:?} is not a number of seconds")),
        },
    };
    let author = text("author")
        .filter(|a| !a.is_empty())
        .or_else(|| text("who"));
    let Some(author) = author else {
        return bad("a change needs an author (field `author` or `who`)".into());
    };
    let change = ChangeRequest {
        author,
        committer: text("committer"),
        files,
        comments: text("comments").unwrap_or_default(),
        revision: text("revision"),
        when_timestamp: when,
        branch: text("branch"),
        category: text("category"),
        revlink: text("revlink"),
        properties,
        repository: text("repository").unwrap_or_default(),
        project: text("project").unwrap_or_default(),
        codebase: text("codebase").unwrap_or_default(),
    };
    match st.control.add_change(change).await {
        Ok(_) => (StatusCode::ACCEPTED, "1 change found").into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, crate::error_chain(&e)).into_response(),
    }
}
