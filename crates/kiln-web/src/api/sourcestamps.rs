//! Source stamps as changes and buildsets show them (Kiln serves no `/sourcestamps` of its
//! own yet): what was built, a branch and revision of one codebase.

use kiln_model::{Epoch, SourceStampId, StoredSourceStamp};
use serde::Serialize;
use serde_json::Value;

use crate::{ApiError, ApiState};

/// A source stamp, as Buildbot's `sourcestamps` resource.
#[derive(Serialize)]
pub(crate) struct SourceStampAnswer {
    ssid: SourceStampId,
    branch: Option<String>,
    revision: Option<String>,
    project: String,
    repository: String,
    codebase: String,
    created_at: Epoch,
    /// Kiln stores no patches yet.
    patch: Option<Value>,
}

impl From<StoredSourceStamp> for SourceStampAnswer {
    fn from(stored: StoredSourceStamp) -> SourceStampAnswer {
        let ss = stored.stamp;
        SourceStampAnswer {
            ssid: stored.ssid,
            branch: ss.branch,
            revision: ss.revision,
            project: ss.project,
            repository: ss.repository,
            codebase: ss.codebase,
            created_at: stored.created_at,
            patch: None,
        }
    }
}

/// The source stamp with this id, if the store has it.
pub(crate) async fn load(
    state: &ApiState,
    id: SourceStampId,
) -> Result<Option<SourceStampAnswer>, ApiError> {
    Ok(state
        .store
        .get_sourcestamp(id)
        .await?
        .map(SourceStampAnswer::from))
}
