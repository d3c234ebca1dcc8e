//! Builds: `/builds`, `/builds/{buildid}`, and the builds of a builder (by number too), of a
//! worker and of a build request. Filtered, ordered and paged in SQL (the table is big);
//! properties only on request (`property=`).

use axum::extract::Path;
use kiln_model::{
    Build, BuildId, BuildRequestId, BuilderId, Epoch, MasterId, Properties, Results, WorkerId,
};
use kiln_store::StoreError;
use kiln_store::api_queries::{ApiQuery, ApiTable};
use serde::Serialize;

use super::builders::find_builder;
use super::{ApiRequest, ApiResult, Resource, SqlResource, field_equals, path_id, properties};
use crate::query::FType::{self, Bool, Int, Other, Str};
use crate::query::Spec;
use crate::{ApiError, ApiState};

/// A build, as Buildbot's `builds` resource.
#[derive(Serialize)]
pub(crate) struct BuildAnswer {
    buildid: BuildId,
    /// The builder's sequence number: "build #N".
    number: i64,
    builderid: BuilderId,
    buildrequestid: BuildRequestId,
    workerid: WorkerId,
    masterid: MasterId,
    started_at: Epoch,
    complete: bool,
    complete_at: Option<Epoch>,
    locks_duration_s: i64,
    state_string: String,
    /// Null while the build runs.
    results: Option<Results>,
    /// Those asked for with `property=`; `{}` otherwise.
    properties: Properties,
}

impl Resource for BuildAnswer {
    const PLURAL: &'static str = "builds";
    const FIELDS: &'static [(&'static str, FType)] = &[
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
}

impl SqlResource for BuildAnswer {
    type Row = Build;
    const TABLE: ApiTable = ApiTable::Builds;
    const KEY: &'static str = "buildid";

    fn key(row: &Build) -> i64 {
        row.buildid.0
    }

    async fn fetch(state: &ApiState, sql: &ApiQuery) -> Result<Vec<Build>, StoreError> {
        state.store.api_builds(sql).await
    }

    /// The answer, with the build's properties read when the query names some.
    async fn load(state: &ApiState, spec: &Spec, b: Build) -> Result<BuildAnswer, ApiError> {
        let mut properties = Properties::default();
        if !spec.properties.is_empty() {
            let all = state.store.get_build_properties(b.buildid).await?;
            if let Some(p) = properties::selected(all, &spec.properties) {
                properties = p;
            }
        }
        Ok(BuildAnswer {
            buildid: b.buildid,
            number: b.number,
            builderid: b.builderid,
            buildrequestid: b.buildrequestid,
            workerid: b.workerid,
            masterid: b.masterid,
            started_at: b.started_at,
            complete: b.complete,
            complete_at: b.complete_at,
            locks_duration_s: b.locks_duration_s,
            state_string: b.state_string,
            results: b.results,
            properties,
        })
    }
}

/// `GET /builds`.
pub(crate) async fn list_builds(api: ApiRequest) -> ApiResult {
    api.sql_page::<BuildAnswer>(vec![]).await
}

/// `GET /builders/{builder}/builds`: an unknown builder has no builds (as in Buildbot).
pub(crate) async fn list_builder_builds(api: ApiRequest, Path(builder): Path<String>) -> ApiResult {
    match find_builder(&api.state, &builder).await? {
        Some(row) => {
            let of_builder = field_equals("builderid", row.builderid.0);
            api.sql_page::<BuildAnswer>(vec![of_builder]).await
        }
        None => api.empty_collection::<BuildAnswer>(),
    }
}

/// `GET /workers/{worker}/builds` (the worker by id).
pub(crate) async fn list_worker_builds(api: ApiRequest, Path(worker): Path<String>) -> ApiResult {
    let id = path_id(&worker, || format!("workers/{worker}/builds"))?;
    let of_worker = field_equals("workerid", id);
    api.sql_page::<BuildAnswer>(vec![of_worker]).await
}

/// `GET /buildrequests/{buildrequestid}/builds`.
pub(crate) async fn list_buildrequest_builds(
    api: ApiRequest,
    Path(request): Path<String>,
) -> ApiResult {
    let id = path_id(&request, || format!("buildrequests/{request}/builds"))?;
    let of_request = field_equals("buildrequestid", id);
    api.sql_page::<BuildAnswer>(vec![of_request]).await
}

/// One build: `path` names it in a 404.
async fn one_build(api: &ApiRequest, build: Option<Build>, path: String) -> ApiResult {
    let spec = api.single_query::<BuildAnswer>()?;
    let build = build.ok_or(ApiError::NotFound(path))?;
    Ok(api.one(&spec, &BuildAnswer::load(&api.state, &spec, build).await?))
}

/// `GET /builds/{buildid}`.
pub(crate) async fn get_build(api: ApiRequest, Path(id): Path<String>) -> ApiResult {
    let n = path_id(&id, || format!("builds/{id}"))?;
    let build = api.state.store.get_build(BuildId(n)).await?;
    one_build(&api, build, format!("/builds/{id}")).await
}

/// A build by its builder (id or name) and number (`/builders/{builder}/builds/{number}`).
pub(crate) async fn build_by_number(
    state: &ApiState,
    builder: &str,
    number: &str,
) -> Result<Option<Build>, ApiError> {
    let number = path_id(number, || format!("builders/{builder}/builds/{number}"))?;
    Ok(match find_builder(state, builder).await? {
        Some(row) => {
            state
                .store
                .get_build_by_number(row.builderid, number)
                .await?
        }
        None => None,
    })
}

/// `GET /builders/{builder}/builds/{number}`.
pub(crate) async fn get_builder_build(
    api: ApiRequest,
    Path((builder, number)): Path<(String, String)>,
) -> ApiResult {
    let build = build_by_number(&api.state, &builder, &number).await?;
    one_build(&api, build, format!("/builders/{builder}/builds/{number}")).await
}
