//! Changes (`/changes`, `/changes/{changeid}`): the commits the master has heard of, each
//! with its source stamp. Filtered, ordered and paged in SQL.

use axum::extract::Path;
use kiln_model::{Change, ChangeId, Epoch, Properties};
use kiln_store::StoreError;
use kiln_store::api_queries::{ApiQuery, ApiTable};
use serde::Serialize;

use super::sourcestamps::{self, SourceStampAnswer};
use super::{ApiRequest, ApiResult, Resource, SqlResource, path_id};
use crate::query::FType::{self, Int, IntList, Other, Str, StrList};
use crate::query::Spec;
use crate::{ApiError, ApiState};

/// A change, as Buildbot's `changes` resource.
#[derive(Serialize)]
pub(crate) struct ChangeAnswer {
    changeid: ChangeId,
    author: String,
    committer: Option<String>,
    comments: String,
    branch: Option<String>,
    revision: Option<String>,
    /// Kiln keeps no revision links yet.
    revlink: Option<String>,
    when_timestamp: Epoch,
    category: Option<String>,
    /// Kiln keeps no parents yet.
    parent_changeids: Vec<ChangeId>,
    repository: String,
    codebase: String,
    project: String,
    files: Vec<String>,
    sourcestamp: Option<SourceStampAnswer>,
    properties: Properties,
}

impl Resource for ChangeAnswer {
    const PLURAL: &'static str = "changes";
    const FIELDS: &'static [(&'static str, FType)] = &[
        ("changeid", Int),
        ("parent_changeids", IntList),
        ("author", Str),
        ("committer", Str),
        ("files", StrList),
        ("comments", Str),
        ("revision", Str),
        ("when_timestamp", Int),
        ("branch", Str),
        ("category", Str),
        ("revlink", Str),
        ("properties", Other),
        ("repository", Str),
        ("project", Str),
        ("codebase", Str),
    ];
}

impl SqlResource for ChangeAnswer {
    type Row = Change;
    const TABLE: ApiTable = ApiTable::Changes;
    const KEY: &'static str = "changeid";

    fn key(row: &Change) -> i64 {
        row.changeid.0
    }

    async fn fetch(state: &ApiState, sql: &ApiQuery) -> Result<Vec<Change>, StoreError> {
        state.store.api_changes(sql).await
    }

    /// The answer, with the change's source stamp.
    async fn load(state: &ApiState, _: &Spec, c: Change) -> Result<ChangeAnswer, ApiError> {
        Ok(ChangeAnswer {
            sourcestamp: sourcestamps::load(state, c.sourcestampid).await?,
            changeid: c.changeid,
            author: c.author,
            committer: c.committer,
            comments: c.comments,
            branch: c.branch,
            revision: c.revision,
            revlink: None,
            when_timestamp: c.when_timestamp,
            category: c.category,
            parent_changeids: vec![],
            repository: c.repository,
            codebase: c.codebase,
            project: c.project,
            files: c.files,
            properties: c.properties,
        })
    }
}

/// `GET /changes`.
pub(crate) async fn list_changes(api: ApiRequest) -> ApiResult {
    api.sql_page::<ChangeAnswer>(vec![]).await
}

/// `GET /changes/{changeid}`.
pub(crate) async fn get_change(api: ApiRequest, Path(id): Path<String>) -> ApiResult {
    let spec = api.single_query::<ChangeAnswer>()?;
    let n = path_id(&id, || format!("changes/{id}"))?;
    let change = api.state.store.get_change(ChangeId(n)).await?;
    let change = change.ok_or_else(|| ApiError::NotFound(format!("/changes/{id}")))?;
    Ok(api.one(&spec, &ChangeAnswer::load(&api.state, &spec, change).await?))
}
