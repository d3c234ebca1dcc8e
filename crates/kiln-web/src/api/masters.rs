//! Masters (`/masters`, `/masters/{masterid}`): the masters that share the database, and
//! which of them is active — the one this process's builders and workers are reported on.

use axum::extract::Path;
use kiln_model::{Epoch, MasterId};
use kiln_store::MasterRow;
use serde::Serialize;

use super::{ApiRequest, ApiResult, Resource, path_id};
use crate::query::FType::{self, Bool, Int, Str};
use crate::{ApiError, ApiState};

/// A master, as Buildbot's `masters` resource.
#[derive(Serialize)]
pub(crate) struct MasterAnswer {
    masterid: MasterId,
    name: String,
    active: bool,
    last_active: Epoch,
}

impl Resource for MasterAnswer {
    const PLURAL: &'static str = "masters";
    const FIELDS: &'static [(&'static str, FType)] = &[
        ("masterid", Int),
        ("name", Str),
        ("active", Bool),
        ("last_active", Int),
    ];
}

impl From<MasterRow> for MasterAnswer {
    fn from(m: MasterRow) -> MasterAnswer {
        MasterAnswer {
            masterid: m.masterid,
            name: m.name,
            active: m.active,
            last_active: m.last_active,
        }
    }
}

/// The masters, lowest id first.
async fn masters_by_id(state: &ApiState) -> Result<Vec<MasterRow>, ApiError> {
    let mut masters = state.store.list_masters().await?;
    masters.sort_by_key(|m| m.masterid.0);
    Ok(masters)
}

/// The first master active now: the one this process's builders and workers are reported on
/// (a single-master farm has exactly one).
pub(crate) async fn active_master(state: &ApiState) -> Result<Option<MasterId>, ApiError> {
    let masters = masters_by_id(state).await?;
    Ok(masters.into_iter().find(|m| m.active).map(|m| m.masterid))
}

/// `GET /masters`.
pub(crate) async fn list_masters(api: ApiRequest) -> ApiResult {
    let spec = api.collection_query::<MasterAnswer>()?;
    let masters: Vec<MasterAnswer> = masters_by_id(&api.state)
        .await?
        .into_iter()
        .map(MasterAnswer::from)
        .collect();
    Ok(api.collection(&spec, &masters))
}

/// `GET /masters/{masterid}`.
pub(crate) async fn get_master(api: ApiRequest, Path(id): Path<String>) -> ApiResult {
    let spec = api.single_query::<MasterAnswer>()?;
    let n = path_id(&id, || format!("masters/{id}"))?;
    let master = api
        .state
        .store
        .list_masters()
        .await?
        .into_iter()
        .find(|m| m.masterid.0 == n)
        .ok_or_else(|| ApiError::NotFound(format!("/masters/{id}")))?;
    Ok(api.one(&spec, &MasterAnswer::from(master)))
}
