//! Workers (`/workers`, `/workers/{worker}`, `/builders/{builder}/workers`): every worker the
//! store knows, whether it is connected, and the builders the config gives it. What of the
//! info a worker reports each reader sees is decided in one place, [`shown_info`].

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::Path;
use kiln_config::MasterConfig;
use kiln_model::{BuilderId, MasterId, Worker, WorkerId};
use serde::Serialize;
use serde_json::{Map, Value};

use super::masters::active_master;
use super::{ApiRequest, ApiResult, Reader, Resource, path_id, path_number};
use crate::ApiError;
use crate::query::FType::{self, Bool, Int, Other, Str};

/// A worker, as Buildbot's `workers` resource.
#[derive(Serialize)]
pub(crate) struct WorkerAnswer {
    workerid: WorkerId,
    name: String,
    /// The master it is connected to (this one), if it is.
    connected_to: Vec<ConnectedTo>,
    /// The builders the config runs on it.
    configured_on: Vec<ConfiguredOn>,
    /// What the worker reported, as [`shown_info`] lets the reader see it.
    workerinfo: Map<String, Value>,
    paused: bool,
    /// Kiln keeps no pause reason yet.
    pause_reason: Option<String>,
    graceful: bool,
}

#[derive(Serialize)]
struct ConnectedTo {
    masterid: MasterId,
}

#[derive(Serialize)]
struct ConfiguredOn {
    builderid: BuilderId,
    masterid: MasterId,
}

impl Resource for WorkerAnswer {
    const PLURAL: &'static str = "workers";
    const FIELDS: &'static [(&'static str, FType)] = &[
        ("workerid", Int),
        ("name", Str),
        ("connected_to", Other),
        ("configured_on", Other),
        ("workerinfo", Other),
        ("paused", Bool),
        ("pause_reason", Str),
        ("graceful", Bool),
    ];
}

/// Keys of worker info that may hold credentials are never shown, to anyone.
fn is_secret_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    ["passw", "secret", "token", "credential", "private"]
        .iter()
        .any(|s| k.contains(s))
}

/// The worker info `reader` may see: never the keys that look secret, and not the worker's
/// environment (`environ`, Buildbot's copy of the worker process's variables) for an anonymous
/// reader — on a volunteer's machine it may hold the volunteer's own tokens. Every answer that
/// shows worker info goes through here; the change that brings logins opens `environ` to
/// admins here.
pub(crate) fn shown_info(reader: Reader, mut info: Map<String, Value>) -> Map<String, Value> {
    info.retain(|k, _| !is_secret_key(k));
    match reader {
        Reader::Anonymous => {
            info.remove("environ");
        }
    }
    info
}

/// What every worker's answer needs to know of the farm.
struct Farm {
    master: Option<MasterId>,
    builder_ids: HashMap<String, BuilderId>,
    connected: Vec<String>,
    config: Arc<MasterConfig>,
    reader: Reader,
}

impl WorkerAnswer {
    fn new(farm: &Farm, w: Worker) -> WorkerAnswer {
        let configured_on = match farm.master {
            Some(masterid) => farm
                .config
                .builders
                .iter()
                .filter(|b| b.workers.contains(&w.name))
                .filter_map(|b| farm.builder_ids.get(&b.name))
                .map(|&builderid| ConfiguredOn {
                    builderid,
                    masterid,
                })
                .collect(),
            None => vec![],
        };
        let connected_to = farm
            .master
            .filter(|_| farm.connected.contains(&w.name))
            .map(|masterid| ConnectedTo { masterid })
            .into_iter()
            .collect();
        WorkerAnswer {
            workerid: w.workerid,
            name: w.name,
            connected_to,
            configured_on,
            workerinfo: shown_info(farm.reader, w.workerinfo),
            paused: w.paused,
            pause_reason: None,
            graceful: w.graceful,
        }
    }
}

/// Every worker, lowest id first, as `api`'s reader may see it.
async fn all_workers(api: &ApiRequest) -> Result<Vec<WorkerAnswer>, ApiError> {
    let state = &api.state;
    let builders = state.store.list_builders().await?;
    let farm = Farm {
        master: active_master(state).await?,
        builder_ids: builders
            .into_iter()
            .map(|b| (b.name, b.builderid))
            .collect(),
        connected: state.control.connected_workers(),
        config: state.control.config(),
        reader: api.reader(),
    };
    let mut workers = state.store.list_workers().await?;
    workers.sort_by_key(|w| w.workerid.0);
    let answers = workers.into_iter().map(|w| WorkerAnswer::new(&farm, w));
    Ok(answers.collect())
}

/// `GET /workers`.
pub(crate) async fn list_workers(api: ApiRequest) -> ApiResult {
    let spec = api.collection_query::<WorkerAnswer>()?;
    let workers = all_workers(&api).await?;
    Ok(api.collection(&spec, &workers))
}

/// `GET /builders/{builder}/workers`: the workers configured on a builder (by id only).
pub(crate) async fn list_builder_workers(
    api: ApiRequest,
    Path(builder): Path<String>,
) -> ApiResult {
    let spec = api.collection_query::<WorkerAnswer>()?;
    let id = BuilderId(path_id(&builder, || format!("builders/{builder}/workers"))?);
    let mut workers = all_workers(&api).await?;
    workers.retain(|w| w.configured_on.iter().any(|c| c.builderid == id));
    Ok(api.collection(&spec, &workers))
}

/// `GET /workers/{worker}`: by id or by name.
pub(crate) async fn get_worker(api: ApiRequest, Path(worker): Path<String>) -> ApiResult {
    let spec = api.single_query::<WorkerAnswer>()?;
    let id = path_number(&worker).map(WorkerId);
    let worker = all_workers(&api)
        .await?
        .into_iter()
        .find(|x| match id {
            Some(id) => x.workerid == id,
            None => x.name == worker,
        })
        .ok_or_else(|| ApiError::NotFound(format!("/workers/{worker}")))?;
    Ok(api.one(&spec, &worker))
}
