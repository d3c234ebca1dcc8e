//! Control as Buildbot's web UI sends it: JSON-RPC 2.0 `POST`s on REST resources
//! (`www/rest.py: renderJsonRpc`) — `force` on a force scheduler, `stop` on a build, `cancel`
//! on a build request. The work is the master's ([`crate::Control`]); this module decodes the
//! request, finds the resource and answers `{"jsonrpc": "2.0", "id": …, "result": …}` or an
//! `"error"` with Buildbot's codes and HTTP statuses.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kiln_model::{BuildId, BuildRequestId, BuilderId, BuildsetId};
use kiln_store::BuildFilter;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::api::path_number;
use crate::{ApiState, ForceRequest};

const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;
const INTERNAL_ERROR: i64 = -32603;

/// A JSON-RPC failure: the HTTP status, the JSON-RPC code and the message.
struct RpcError {
    status: StatusCode,
    code: i64,
    message: String,
}

impl RpcError {
    fn new(status: StatusCode, code: i64, message: impl Into<String>) -> RpcError {
        let message = message.into();
        RpcError {
            status,
            code,
            message,
        }
    }

    fn bad(code: i64, message: impl Into<String>) -> RpcError {
        RpcError::new(StatusCode::BAD_REQUEST, code, message)
    }

    fn invalid_params(message: String) -> RpcError {
        RpcError::bad(INVALID_PARAMS, message)
    }

    fn invalid_path(path: String) -> RpcError {
        let message = format!("Invalid path: {path}");
        RpcError::new(StatusCode::NOT_FOUND, INVALID_REQUEST, message)
    }

    fn internal(e: impl std::fmt::Display) -> RpcError {
        RpcError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            INTERNAL_ERROR,
            e.to_string(),
        )
    }

    fn unknown_method(method: &str) -> RpcError {
        let message = format!("action: {method} is not supported");
        RpcError::new(StatusCode::NOT_IMPLEMENTED, METHOD_NOT_FOUND, message)
    }
}

/// A decoded request.
struct RpcRequest {
    method: String,
    id: Value,
    params: Map<String, Value>,
}

impl RpcRequest {
    /// Refuses every method but the one the resource has.
    fn expect(&self, method: &str) -> Result<(), RpcError> {
        if self.method == method {
            Ok(())
        } else {
            Err(RpcError::unknown_method(&self.method))
        }
    }
}

/// The row a `POST` is on; `path` (`Invalid path: …`) when the store has none.
fn must_exist<T>(
    row: kiln_store::Result<Option<T>>,
    path: impl FnOnce() -> RpcError,
) -> Result<T, RpcError> {
    row.map_err(RpcError::internal)?.ok_or_else(path)
}

/// The reply; `id` is left out when the request could not be decoded far enough to have one,
/// as Buildbot does.
#[derive(Serialize)]
struct RpcReply<T> {
    jsonrpc: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<Value>,
    #[serde(flatten)]
    outcome: RpcOutcome<T>,
}

/// `"result": …` or `"error": {"code": …, "message": …}`.
#[derive(Serialize)]
#[serde(rename_all = "lowercase")]
enum RpcOutcome<T> {
    Result(T),
    Error { code: i64, message: String },
}

fn reply<T: Serialize>(id: Option<Value>, r: Result<T, RpcError>) -> Response {
    let (status, outcome) = match r {
        Ok(v) => (StatusCode::OK, RpcOutcome::Result(v)),
        Err(e) => (
            e.status,
            RpcOutcome::Error {
                code: e.code,
                message: e.message,
            },
        ),
    };
    let body = RpcReply {
        jsonrpc: "2.0",
        id,
        outcome,
    };
    (status, Json(body)).into_response()
}

/// Runs a JSON-RPC handler: decode, dispatch, reply with the request's id.
async fn rpc<F, Fut, T>(headers: &HeaderMap, body: &[u8], f: F) -> Response
where
    F: FnOnce(RpcRequest) -> Fut,
    Fut: Future<Output = Result<T, RpcError>>,
    T: Serialize,
{
    match decode(headers, body) {
        Err(e) => reply::<()>(None, Err(e)),
        Ok(r) => {
            let id = r.id.clone();
            reply(Some(id), f(r).await)
        }
    }
}

/// Buildbot's `decodeJsonRPC2`: content type, object root, and the four keys with their types.
fn decode(headers: &HeaderMap, body: &[u8]) -> Result<RpcRequest, RpcError> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ctype.split(';').next().map(str::trim) != Some("application/json") {
        let msg = "Invalid content-type (use application/json)";
        return Err(RpcError::bad(INVALID_REQUEST, msg));
    }
    let data: Value = serde_json::from_slice(body)
        .map_err(|e| RpcError::bad(PARSE_ERROR, format!("JSON parse error: {e}")))?;
    let Value::Object(mut data) = data else {
        let msg = if data.is_array() {
            "JSONRPC batch requests are not supported"
        } else {
            "JSONRPC root object must be an object"
        };
        return Err(RpcError::bad(INVALID_REQUEST, msg));
    };
    check_keys(&data)?;
    let params = match data.remove("params") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    Ok(RpcRequest {
        method: data["method"].as_str().unwrap_or("").to_string(),
        id: data.remove("id").unwrap_or(Value::Null),
        params,
    })
}

/// A request key, the test of its value's type, and the type's name for the error.
type KeyCheck = (&'static str, fn(&Value) -> bool, &'static str);

const KEYS: [KeyCheck; 4] = [
    ("jsonrpc", Value::is_string, "a string"),
    ("method", Value::is_string, "a string"),
    ("id", is_id, "a string, number, or null"),
    ("params", Value::is_object, "an object"),
];

fn is_id(v: &Value) -> bool {
    v.is_string() || v.is_i64() || v.is_u64() || v.is_null()
}

/// The four keys of a request, each of its type, and version 2.0.
fn check_keys(data: &Map<String, Value>) -> Result<(), RpcError> {
    let invalid = |msg: String| Err(RpcError::bad(INVALID_REQUEST, msg));
    for (key, ok, ty) in KEYS {
        match data.get(key) {
            None => return invalid(format!("missing key '{key}'")),
            Some(v) if !ok(v) => return invalid(format!("'{key}' must be {ty}")),
            Some(_) => {}
        }
    }
    if data["jsonrpc"] != "2.0" {
        return invalid("only JSONRPC 2.0 is supported".into());
    }
    Ok(())
}

/// A `params` value as text: `null` is none, a string is itself, anything else its JSON.
fn text_param(v: Option<Value>) -> Option<String> {
    match v {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => Some(other.to_string()),
    }
}

/// What `force` answers, as Buildbot's `ForceScheduler.force`: `[bsid, {"<builderid>": brid}]`.
#[derive(Serialize)]
struct ForceAnswer(BuildsetId, BTreeMap<String, BuildRequestId>);

/// `POST /api/v2/forceschedulers/{name}`, method `force`.
pub(crate) async fn force(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    rpc(&headers, &body, |r| async move {
        let cfg = state.control.config();
        let Some(sched) = cfg
            .scheduler(&name)
            .filter(|s| matches!(s.kind, kiln_config::SchedulerKind::Force(_)))
        else {
            return Err(RpcError::invalid_path(format!("forceschedulers/{name}")));
        };
        r.expect("force")?;
        let req = force_request(&state, &sched.builder_names, r.params).await?;
        let (bsid, brids) = state.control.force(&name, req).await.map_err(|e| {
            if e.is_user_error() {
                RpcError::invalid_params(e.to_string())
            } else {
                RpcError::internal(crate::error_chain(&e))
            }
        })?;
        let mut by_builder = BTreeMap::new();
        for brid in brids {
            let request = state.store.get_build_request(brid).await;
            if let Some(br) = request.map_err(RpcError::internal)? {
                by_builder.insert(br.builderid.0.to_string(), brid);
            }
        }
        Ok(ForceAnswer(bsid, by_builder))
    })
    .await
}

/// The force form's fields as a [`ForceRequest`]: the builders (`builderid`, else
/// `builderNames`, else all of the scheduler's), the owner, the source fields, and every
/// other field as a property.
async fn force_request(
    state: &ApiState,
    scheduler_builders: &[String],
    mut p: Map<String, Value>,
) -> Result<ForceRequest, RpcError> {
    let mut builder_names: Vec<String> = match p.remove("builderNames") {
        Some(Value::Array(a)) => a
            .into_iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect(),
        Some(Value::String(s)) => vec![s],
        _ => vec![],
    };
    if let Some(name) = builder_by_id(state, p.remove("builderid")).await? {
        builder_names = vec![name];
    }
    if builder_names.is_empty() {
        builder_names = scheduler_builders.to_vec();
    }
    Ok(ForceRequest {
        builder_names,
        // The form's owner field is `username`; Buildbot fills `owner` from the session.
        owner: text_param(p.remove("owner"))
            .or_else(|| text_param(p.remove("username")).filter(|u| !u.is_empty()))
            .or_else(|| Some("anonymous".into())),
        reason: text_param(p.remove("reason")),
        branch: text_param(p.remove("branch")),
        revision: text_param(p.remove("revision")),
        repository: text_param(p.remove("repository")),
        project: text_param(p.remove("project")),
        properties: p.into_iter().collect(),
    })
}

/// The name of the builder a `builderid` param names (a number or a numeric string).
async fn builder_by_id(state: &ApiState, id: Option<Value>) -> Result<Option<String>, RpcError> {
    let v = match id {
        None | Some(Value::Null) => return Ok(None),
        Some(v) => v,
    };
    let id = v
        .as_i64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .ok_or_else(|| RpcError::invalid_params(format!("builderid {v} is not a number")))?;
    let builder = state.store.get_builder(BuilderId(id)).await;
    match builder.map_err(RpcError::internal)? {
        Some(b) => Ok(Some(b.name)),
        None => Err(RpcError::invalid_params(format!("no builder with id {id}"))),
    }
}

/// The `reason` param, `no reason` without one.
fn reason(r: &RpcRequest) -> String {
    text_param(r.params.get("reason").cloned()).unwrap_or_else(|| "no reason".into())
}

/// `POST /api/v2/builds/{buildid}`, method `stop`: answers `null` as Buildbot does.
pub(crate) async fn stop_build(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    rpc(&headers, &body, |r| async move {
        let path = || RpcError::invalid_path(format!("builds/{id}"));
        let build = BuildId(path_number(&id).ok_or_else(path)?);
        must_exist(state.store.get_build(build).await, path)?;
        r.expect("stop")?;
        state.control.stop_build(build, reason(&r)).await;
        Ok(())
    })
    .await
}

/// `POST /api/v2/buildrequests/{buildrequestid}`, method `cancel`: an unclaimed request is
/// cancelled; a claimed one has its running builds stopped (as Buildbot's `cancel`). Answers
/// `null`.
pub(crate) async fn cancel_request(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    rpc(&headers, &body, |r| async move {
        let path = || RpcError::invalid_path(format!("buildrequests/{id}"));
        let request = BuildRequestId(path_number(&id).ok_or_else(path)?);
        must_exist(state.store.get_build_request(request).await, path)?;
        r.expect("cancel")?;
        if !state.control.cancel_request(request).await {
            let running = state
                .store
                .list_builds(&BuildFilter {
                    buildrequestid: Some(request),
                    complete: Some(false),
                    ..Default::default()
                })
                .await
                .map_err(RpcError::internal)?;
            for b in running {
                state.control.stop_build(b.buildid, reason(&r)).await;
            }
        }
        Ok(())
    })
    .await
}
