//! Builders (`/builders`, `/builders/{builder}`): every builder the store knows, by id or by
//! name — the config's, and those a past config had (shown on no master).

use axum::extract::Path;
use kiln_model::{BuilderId, MasterId};
use kiln_store::BuilderRow;
use serde::Serialize;

use super::masters::active_master;
use super::{ApiRequest, ApiResult, Resource, path_number};
use crate::query::FType::{self, Int, IntList, Str, StrList};
use crate::{ApiError, ApiState};

/// A builder, as Buildbot's `builders` resource.
#[derive(Serialize)]
pub(crate) struct BuilderAnswer {
    builderid: BuilderId,
    name: String,
    /// The active master while the config has the builder; none otherwise.
    masterids: Vec<MasterId>,
    description: Option<String>,
    /// Kiln's descriptions are plain text: no format, no HTML.
    description_format: Option<String>,
    description_html: Option<String>,
    /// Kiln has no projects yet.
    projectid: Option<i64>,
    tags: Vec<String>,
}

impl Resource for BuilderAnswer {
    const PLURAL: &'static str = "builders";
    const FIELDS: &'static [(&'static str, FType)] = &[
        ("builderid", Int),
        ("name", Str),
        ("masterids", IntList),
        ("description", Str),
        ("description_format", Str),
        ("description_html", Str),
        ("projectid", Int),
        ("tags", StrList),
    ];
}

impl BuilderAnswer {
    fn new(state: &ApiState, b: BuilderRow, master: Option<MasterId>) -> BuilderAnswer {
        let configured = state.control.config().builder(&b.name).is_some();
        BuilderAnswer {
            builderid: b.builderid,
            masterids: master.filter(|_| configured).into_iter().collect(),
            name: b.name,
            description: b.description,
            description_format: None,
            description_html: None,
            projectid: None,
            tags: b.tags,
        }
    }
}

/// A builder by id, or by name (Buildbot's `builderid` path component takes either).
pub(crate) async fn find_builder(
    state: &ApiState,
    builder: &str,
) -> Result<Option<BuilderRow>, ApiError> {
    Ok(match path_number(builder) {
        Some(id) => state.store.get_builder(BuilderId(id)).await?,
        None => state.store.get_builder_by_name(builder).await?,
    })
}

/// `GET /builders`.
pub(crate) async fn list_builders(api: ApiRequest) -> ApiResult {
    let spec = api.collection_query::<BuilderAnswer>()?;
    let master = active_master(&api.state).await?;
    let mut rows = api.state.store.list_builders().await?;
    rows.sort_by_key(|b| b.builderid.0);
    let builders: Vec<BuilderAnswer> = rows
        .into_iter()
        .map(|b| BuilderAnswer::new(&api.state, b, master))
        .collect();
    Ok(api.collection(&spec, &builders))
}

/// `GET /builders/{builder}`.
pub(crate) async fn get_builder(api: ApiRequest, Path(builder): Path<String>) -> ApiResult {
    let spec = api.single_query::<BuilderAnswer>()?;
    let master = active_master(&api.state).await?;
    let row = find_builder(&api.state, &builder)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("/builders/{builder}")))?;
    Ok(api.one(&spec, &BuilderAnswer::new(&api.state, row, master)))
}
