//! A small landing page at `/` that links the API (the waterfall, grid and build pages come
//! later).

use axum::extract::State;
use axum::response::Html;

use crate::ApiState;

/// `GET /`: the title is read per request, so a reconfig of `master(title=...)` shows at once.
pub(crate) async fn page(State(state): State<ApiState>) -> Html<String> {
    let title = html_escape(&state.control.config().master.title);
    Html(format!(
        "<!doctype html><meta charset=utf-8><title>{title}</title>\
         <h1>{title}</h1><p>Kiln master. Results so far, as JSON (Buildbot's <code>/api/v2</code>):</p><ul>\
         <li><a href=\"api/v2/builds?order=-buildid&amp;limit=50\">latest builds</a></li>\
         <li><a href=\"api/v2/builders\">builders</a></li>\
         <li><a href=\"api/v2/workers\">workers</a></li>\
         <li><a href=\"api/v2/buildrequests?complete=false\">build requests waiting</a></li>\
         <li><a href=\"api/v2/changes?order=-changeid&amp;limit=50\">changes</a></li>\
         <li><a href=\"metrics\">metrics</a> · <a href=\"health\">health</a></li></ul>"
    ))
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
