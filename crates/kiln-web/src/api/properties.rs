//! Properties as the API shows them: `{"name": [value, "source"], ...}` (Buildbot's shape,
//! which [`Properties`] serializes to). A build or a build request shows them only when the
//! query asks with `property=name` (or `property=*`); `/builds/{buildid}/properties` shows
//! them all.

use axum::extract::Path;
use kiln_model::{BuildId, Properties};
use serde::Serialize;

use super::{ApiRequest, ApiResult, Resource, path_id};
use crate::ApiError;
use crate::query::{FType, Spec};

/// The properties named by `property=` (all of them for `*`); none when the query names none
/// or there are none.
pub(crate) fn selected(all: Properties, names: &[String]) -> Option<Properties> {
    if all.0.is_empty() || names.is_empty() {
        return None;
    }
    let every = names.iter().any(|n| n == "*");
    let mut props = all;
    props.0.retain(|k, _| every || names.contains(k));
    Some(props)
}

/// The answer of `/builds/{buildid}/properties`: one object of every property.
#[derive(Serialize)]
#[serde(transparent)]
pub(crate) struct PropertiesAnswer(Properties);

impl Resource for PropertiesAnswer {
    const PLURAL: &'static str = "properties";
    const FIELDS: &'static [(&'static str, FType)] = &[];
}

/// `GET /builds/{buildid}/properties` (the query string is not read).
pub(crate) async fn list_build_properties(api: ApiRequest, Path(id): Path<String>) -> ApiResult {
    let build = BuildId(path_id(&id, || format!("builds/{id}/properties"))?);
    if api.state.store.get_build(build).await?.is_none() {
        return Err(ApiError::NotFound(format!("/builds/{id}/properties")));
    }
    let props = api.state.store.get_build_properties(build).await?;
    Ok(api.page(&Spec::default(), &[PropertiesAnswer(props)], 1))
}
