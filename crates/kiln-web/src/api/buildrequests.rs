//! Build requests (`/buildrequests`, `/buildrequests/{buildrequestid}`,
//! `/builders/{builder}/buildrequests`): the queue, a request per builder and buildset,
//! waiting, claimed or complete. Filtered, ordered and paged in SQL; properties (the
//! buildset's) only on request (`property=`).

use axum::extract::Path;
use kiln_model::{
    BuildRequest, BuildRequestId, BuilderId, BuildsetId, Epoch, MasterId, Properties, Results,
};
use kiln_store::StoreError;
use kiln_store::api_queries::{ApiQuery, ApiTable};
use serde::Serialize;

use super::{ApiRequest, ApiResult, Resource, SqlResource, field_equals, path_id, properties};
use crate::query::FType::{self, Bool, Int, Other};
use crate::query::Spec;
use crate::{ApiError, ApiState};

/// A build request, as Buildbot's `buildrequests` resource.
#[derive(Serialize)]
pub(crate) struct BuildRequestAnswer {
    buildrequestid: BuildRequestId,
    buildsetid: BuildsetId,
    builderid: BuilderId,
    priority: i64,
    claimed: bool,
    claimed_at: Option<Epoch>,
    claimed_by_masterid: Option<MasterId>,
    complete: bool,
    /// Null until complete.
    results: Option<Results>,
    submitted_at: Epoch,
    complete_at: Option<Epoch>,
    waited_for: bool,
    /// Those asked for with `property=`; null otherwise.
    properties: Option<Properties>,
}

impl Resource for BuildRequestAnswer {
    const PLURAL: &'static str = "buildrequests";
    const FIELDS: &'static [(&'static str, FType)] = &[
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
}

impl SqlResource for BuildRequestAnswer {
    type Row = BuildRequest;
    const TABLE: ApiTable = ApiTable::BuildRequests;
    const KEY: &'static str = "buildrequestid";

    fn key(row: &BuildRequest) -> i64 {
        row.buildrequestid.0
    }

    async fn fetch(state: &ApiState, sql: &ApiQuery) -> Result<Vec<BuildRequest>, StoreError> {
        state.store.api_build_requests(sql).await
    }

    /// The answer, with its buildset's properties read when the query names some.
    async fn load(
        state: &ApiState,
        spec: &Spec,
        r: BuildRequest,
    ) -> Result<BuildRequestAnswer, ApiError> {
        let properties = if spec.properties.is_empty() {
            None
        } else {
            let all = state.store.get_buildset_properties(r.buildsetid).await?;
            properties::selected(all, &spec.properties)
        };
        Ok(BuildRequestAnswer {
            buildrequestid: r.buildrequestid,
            buildsetid: r.buildsetid,
            builderid: r.builderid,
            priority: r.priority,
            claimed: r.claimed,
            claimed_at: r.claimed_at,
            claimed_by_masterid: r.claimed_by_masterid,
            complete: r.complete,
            results: r.results,
            submitted_at: r.submitted_at,
            complete_at: r.complete_at,
            waited_for: r.waited_for,
            properties,
        })
    }
}

/// `GET /buildrequests`.
pub(crate) async fn list_buildrequests(api: ApiRequest) -> ApiResult {
    api.sql_page::<BuildRequestAnswer>(vec![]).await
}

/// `GET /builders/{builder}/buildrequests` (the builder by id).
pub(crate) async fn list_builder_buildrequests(
    api: ApiRequest,
    Path(builder): Path<String>,
) -> ApiResult {
    let id = path_id(&builder, || format!("builders/{builder}/buildrequests"))?;
    let of_builder = field_equals("builderid", id);
    api.sql_page::<BuildRequestAnswer>(vec![of_builder]).await
}

/// `GET /buildrequests/{buildrequestid}`.
pub(crate) async fn get_buildrequest(api: ApiRequest, Path(id): Path<String>) -> ApiResult {
    let spec = api.single_query::<BuildRequestAnswer>()?;
    let n = path_id(&id, || format!("buildrequests/{id}"))?;
    let request = api.state.store.get_build_request(BuildRequestId(n)).await?;
    let request = request.ok_or_else(|| ApiError::NotFound(format!("/buildrequests/{id}")))?;
    let answer = BuildRequestAnswer::load(&api.state, &spec, request).await?;
    Ok(api.one(&spec, &answer))
}
