//! Steps: `/steps/{stepid}`, and the steps of a build by id (`/builds/{buildid}/steps`, one
//! by number or name) or by builder and number. Filtered, ordered and paged in SQL.

use axum::extract::Path;
use kiln_model::{BuildId, Epoch, Results, Step, StepId, StepUrl};
use kiln_store::StoreError;
use kiln_store::api_queries::{ApiQuery, ApiTable};
use serde::Serialize;

use super::builds::build_by_number;
use super::{ApiRequest, ApiResult, Resource, SqlResource, field_equals, path_id, path_number};
use crate::query::FType::{self, Bool, Int, Other, Str};
use crate::query::Spec;
use crate::{ApiError, ApiState};

/// A step, as Buildbot's `steps` resource.
#[derive(Serialize)]
pub(crate) struct StepAnswer {
    stepid: StepId,
    /// Its place in the build, from 0.
    number: i64,
    name: String,
    buildid: BuildId,
    started_at: Option<Epoch>,
    /// Kiln does not record when a step's locks were acquired.
    locks_acquired_at: Option<Epoch>,
    complete: bool,
    complete_at: Option<Epoch>,
    /// Null while the step runs.
    results: Option<Results>,
    state_string: String,
    /// Links the step added (`{"name": …, "url": …}`).
    urls: Vec<StepUrl>,
    hidden: bool,
}

impl Resource for StepAnswer {
    const PLURAL: &'static str = "steps";
    const FIELDS: &'static [(&'static str, FType)] = &[
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
}

impl SqlResource for StepAnswer {
    type Row = Step;
    const TABLE: ApiTable = ApiTable::Steps;
    const KEY: &'static str = "stepid";

    fn key(row: &Step) -> i64 {
        row.stepid.0
    }

    async fn fetch(state: &ApiState, sql: &ApiQuery) -> Result<Vec<Step>, StoreError> {
        state.store.api_steps(sql).await
    }

    async fn load(_: &ApiState, _: &Spec, s: Step) -> Result<StepAnswer, ApiError> {
        Ok(StepAnswer::from(s))
    }
}

impl From<Step> for StepAnswer {
    fn from(s: Step) -> StepAnswer {
        StepAnswer {
            stepid: s.stepid,
            number: s.number,
            name: s.name,
            buildid: s.buildid,
            started_at: s.started_at,
            locks_acquired_at: None,
            complete: s.complete,
            complete_at: s.complete_at,
            results: s.results,
            state_string: s.state_string,
            urls: s.urls,
            hidden: s.hidden,
        }
    }
}

/// The steps of a build that match the query, a page of them; no build, no steps.
async fn steps_of(api: &ApiRequest, build: Option<BuildId>) -> ApiResult {
    match build {
        Some(b) => {
            let of_build = field_equals("buildid", b.0);
            api.sql_page::<StepAnswer>(vec![of_build]).await
        }
        None => api.empty_collection::<StepAnswer>(),
    }
}

/// `GET /builds/{buildid}/steps`.
pub(crate) async fn list_build_steps(api: ApiRequest, Path(id): Path<String>) -> ApiResult {
    let n = path_id(&id, || format!("builds/{id}/steps"))?;
    steps_of(&api, Some(BuildId(n))).await
}

/// `GET /builders/{builder}/builds/{number}/steps`.
pub(crate) async fn list_builder_build_steps(
    api: ApiRequest,
    Path((builder, number)): Path<(String, String)>,
) -> ApiResult {
    let build = build_by_number(&api.state, &builder, &number).await?;
    steps_of(&api, build.map(|builder| builder.buildid)).await
}

/// A step of a build by number or by name (`/builds/{buildid}/steps/{step}`).
pub(crate) async fn step_of_build(
    state: &ApiState,
    id: &str,
    step: &str,
) -> Result<Option<Step>, ApiError> {
    let build = BuildId(path_id(id, || format!("builds/{id}/steps/{step}"))?);
    step_named(state, build, step).await
}

/// A build's step by number or by name (a path's `{step}`).
async fn step_named(
    state: &ApiState,
    build: BuildId,
    step: &str,
) -> Result<Option<Step>, ApiError> {
    let steps = state.store.list_steps(build).await?;
    Ok(match path_number(step) {
        Some(n) => steps.into_iter().find(|x| x.number == n),
        None => steps.into_iter().find(|x| x.name == step),
    })
}

/// A step of a builder's build by number or by name
/// (`/builders/{builder}/builds/{number}/steps/{step}`).
pub(crate) async fn step_of_builder_build(
    state: &ApiState,
    builder: &str,
    number: &str,
    step: &str,
) -> Result<Option<Step>, ApiError> {
    match build_by_number(state, builder, number).await? {
        Some(build) => step_named(state, build.buildid, step).await,
        None => Ok(None),
    }
}

/// `GET /builders/{builder}/builds/{number}/steps/{step}`.
pub(crate) async fn get_builder_build_step(
    api: ApiRequest,
    Path((builder, number, step)): Path<(String, String, String)>,
) -> ApiResult {
    let spec = api.single_query::<StepAnswer>()?;
    let found = step_of_builder_build(&api.state, &builder, &number, &step).await?;
    let found = found.ok_or_else(|| {
        ApiError::NotFound(format!("/builders/{builder}/builds/{number}/steps/{step}"))
    })?;
    Ok(api.one(&spec, &StepAnswer::from(found)))
}

/// `GET /steps/{stepid}`.
pub(crate) async fn get_step(api: ApiRequest, Path(id): Path<String>) -> ApiResult {
    let spec = api.single_query::<StepAnswer>()?;
    let n = path_id(&id, || format!("steps/{id}"))?;
    let step = api.state.store.get_step(StepId(n)).await?;
    let step = step.ok_or_else(|| ApiError::NotFound(format!("/steps/{id}")))?;
    Ok(api.one(&spec, &StepAnswer::from(step)))
}

/// `GET /builds/{buildid}/steps/{step}`.
pub(crate) async fn get_build_step(
    api: ApiRequest,
    Path((id, step)): Path<(String, String)>,
) -> ApiResult {
    let spec = api.single_query::<StepAnswer>()?;
    let found = step_of_build(&api.state, &id, &step).await?;
    let found = found.ok_or_else(|| ApiError::NotFound(format!("/builds/{id}/steps/{step}")))?;
    Ok(api.one(&spec, &StepAnswer::from(found)))
}
