//! Buildsets (`/buildsets`, `/buildsets/{bsid}`): the requests a scheduler or a force made
//! together, with the source stamps they build. Filtered, ordered and paged in SQL (a buildset
//! is made per build request batch, so the table grows with the farm's history); the fields
//! Kiln always leaves null (`rebuilt_buildid`, `parent_relationship`) cannot be filtered or
//! ordered on.

use axum::extract::Path;
use kiln_model::{BuildId, Buildset, BuildsetId, Epoch, Results};
use kiln_store::StoreError;
use kiln_store::api_queries::{ApiQuery, ApiTable};
use serde::Serialize;

use super::sourcestamps::{self, SourceStampAnswer};
use super::{ApiRequest, ApiResult, Resource, SqlResource, path_id};
use crate::query::FType::{self, Bool, Int, Other, Str};
use crate::query::Spec;
use crate::{ApiError, ApiState};

/// A buildset, as Buildbot's `buildsets` resource.
#[derive(Serialize)]
pub(crate) struct BuildsetAnswer {
    bsid: BuildsetId,
    external_idstring: Option<String>,
    reason: String,
    /// Kiln has no rebuilds yet.
    rebuilt_buildid: Option<BuildId>,
    submitted_at: Epoch,
    complete: bool,
    complete_at: Option<Epoch>,
    /// Null until complete.
    results: Option<Results>,
    sourcestamps: Vec<SourceStampAnswer>,
    /// The build that triggered it.
    parent_buildid: Option<BuildId>,
    /// Kiln keeps no relationship names yet.
    parent_relationship: Option<String>,
}

impl Resource for BuildsetAnswer {
    const PLURAL: &'static str = "buildsets";
    const FIELDS: &'static [(&'static str, FType)] = &[
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
}

impl BuildsetAnswer {
    /// The answer without its source stamps (`[]`).
    fn shallow(bs: &Buildset) -> BuildsetAnswer {
        BuildsetAnswer {
            bsid: bs.bsid,
            external_idstring: bs.external_idstring.clone(),
            reason: bs.reason.clone(),
            rebuilt_buildid: None,
            submitted_at: bs.submitted_at,
            complete: bs.complete,
            complete_at: bs.complete_at,
            results: bs.results,
            sourcestamps: vec![],
            parent_buildid: bs.parent_buildid,
            parent_relationship: None,
        }
    }

    /// The whole answer: its source stamps read from the store.
    async fn load(state: &ApiState, bs: &Buildset) -> Result<BuildsetAnswer, ApiError> {
        let mut answer = BuildsetAnswer::shallow(bs);
        for id in &bs.sourcestamps {
            answer
                .sourcestamps
                .extend(sourcestamps::load(state, *id).await?);
        }
        Ok(answer)
    }
}

impl SqlResource for BuildsetAnswer {
    type Row = Buildset;
    const TABLE: ApiTable = ApiTable::Buildsets;
    const KEY: &'static str = "bsid";

    fn key(row: &Buildset) -> i64 {
        row.bsid.0
    }

    async fn fetch(state: &ApiState, sql: &ApiQuery) -> Result<Vec<Buildset>, StoreError> {
        state.store.api_buildsets(sql).await
    }

    async fn load(state: &ApiState, _: &Spec, bs: Buildset) -> Result<BuildsetAnswer, ApiError> {
        BuildsetAnswer::load(state, &bs).await
    }
}

/// `GET /buildsets`.
pub(crate) async fn list_buildsets(api: ApiRequest) -> ApiResult {
    api.sql_page::<BuildsetAnswer>(vec![]).await
}

/// `GET /buildsets/{bsid}`.
pub(crate) async fn get_buildset(api: ApiRequest, Path(id): Path<String>) -> ApiResult {
    let spec = api.single_query::<BuildsetAnswer>()?;
    let n = path_id(&id, || format!("buildsets/{id}"))?;
    let buildset = api.state.store.get_buildset(BuildsetId(n)).await?;
    let buildset = buildset.ok_or_else(|| ApiError::NotFound(format!("/buildsets/{id}")))?;
    Ok(api.one(&spec, &BuildsetAnswer::load(&api.state, &buildset).await?))
}
