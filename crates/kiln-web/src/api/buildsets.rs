//! Buildsets (`/buildsets`, `/buildsets/{bsid}`): the requests a scheduler or a force made
//! together, with the source stamps they build. Every buildset is read (narrowed by
//! `complete=` in SQL, a store page at a time), then filtered, ordered and paged here; source
//! stamps are read for the page only.

use axum::extract::Path;
use kiln_model::{BuildId, Buildset, BuildsetId, Epoch, Results};
use kiln_store::BuildsetFilter;
use kiln_store::api_queries::ApiOp;
use serde::Serialize;

use super::sourcestamps::{self, SourceStampAnswer};
use super::{ApiRequest, ApiResult, Resource, path_id, to_row};
use crate::query::FType::{self, Bool, Int, Other, Str};
use crate::query::{self, Spec};
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

/// `complete=true|false` from the query, the one filter SQL applies here.
fn complete_filter(spec: &Spec) -> Option<bool> {
    spec.filters
        .iter()
        .find(|f| f.field == "complete" && f.op == ApiOp::Eq && f.values.len() == 1)
        .and_then(|f| f.values[0].as_bool())
}

/// Every buildset (`complete` as asked), read a store page at a time: the store's list stops
/// at `kiln_store::MAX_LIST_LIMIT`, Buildbot's answer does not.
async fn all_buildsets(
    state: &ApiState,
    complete: Option<bool>,
) -> Result<Vec<Buildset>, ApiError> {
    let mut all: Vec<Buildset> = Vec::new();
    loop {
        let filter = BuildsetFilter {
            complete,
            before: all.last().map(|b| b.bsid),
            limit: Some(kiln_store::MAX_LIST_LIMIT),
        };
        let page = state.store.list_buildsets(&filter).await?;
        let full = page.len() as i64 == kiln_store::MAX_LIST_LIMIT;
        all.extend(page);
        if !full {
            return Ok(all);
        }
    }
}

/// `GET /buildsets`.
pub(crate) async fn list_buildsets(api: ApiRequest) -> ApiResult {
    let spec = api.collection_query::<BuildsetAnswer>()?;
    let mut buildsets = all_buildsets(&api.state, complete_filter(&spec)).await?;
    buildsets.sort_by_key(|b| b.bsid.0);
    let rows: Vec<_> = buildsets
        .iter()
        .map(|bs| to_row(&BuildsetAnswer::shallow(bs)))
        .collect();
    let (picked, total) = query::page_indices(&spec, &rows);
    let mut page = Vec::with_capacity(picked.len());
    for i in picked {
        page.push(BuildsetAnswer::load(&api.state, &buildsets[i]).await?);
    }
    Ok(api.page(&spec, &page, total))
}

/// `GET /buildsets/{bsid}`.
pub(crate) async fn get_buildset(api: ApiRequest, Path(id): Path<String>) -> ApiResult {
    let spec = api.single_query::<BuildsetAnswer>()?;
    let n = path_id(&id, || format!("buildsets/{id}"))?;
    let buildset = api.state.store.get_buildset(BuildsetId(n)).await?;
    let buildset = buildset.ok_or_else(|| ApiError::NotFound(format!("/buildsets/{id}")))?;
    Ok(api.one(&spec, &BuildsetAnswer::load(&api.state, &buildset).await?))
}
