//! Every route of the web port, in one list: what Kiln serves, and which handler serves it.
//! The REST paths are grouped by the resource they answer (the module in `api/`), as
//! Buildbot's data modules group their path patterns; a `POST` on a resource is JSON-RPC
//! control (`rpc.rs`).

use axum::Router;
use axum::routing::{get, post};

use crate::api::{
    self, builders, buildrequests, builds, buildsets, changes, forceschedulers, logs, masters,
    properties, steps, workers,
};
use crate::{ApiState, change_hook, ops, rpc};

pub(crate) fn routes() -> Router<ApiState> {
    Router::new()
        // For operators.
        .route("/health", get(ops::health))
        .route("/metrics", get(ops::metrics))
        // Changes from scripts and other systems; `/change_hook/` without a dialect is the
        // base hook in Buildbot too.
        .route("/change_hook/base", post(change_hook::base))
        .route("/change_hook/", post(change_hook::base))
        .route("/change_hook", post(change_hook::base))
        // Buildbot's REST API.
        .route("/api/v2", get(api::root))
        .route("/api/v2/", get(api::root))
        .route("/api/v2/{*rest}", get(api::invalid_path))
        // builders
        .route("/api/v2/builders", get(builders::list_builders))
        .route("/api/v2/builders/{builder}", get(builders::get_builder))
        // builds
        .route("/api/v2/builds", get(builds::list_builds))
        .route(
            "/api/v2/builds/{buildid}",
            get(builds::get_build).post(rpc::stop_build),
        )
        .route(
            "/api/v2/builders/{builder}/builds",
            get(builds::list_builder_builds),
        )
        .route(
            "/api/v2/builders/{builder}/builds/{number}",
            get(builds::get_builder_build),
        )
        .route(
            "/api/v2/workers/{worker}/builds",
            get(builds::list_worker_builds),
        )
        .route(
            "/api/v2/buildrequests/{buildrequestid}/builds",
            get(builds::list_buildrequest_builds),
        )
        .route(
            "/api/v2/builds/{buildid}/properties",
            get(properties::list_build_properties),
        )
        // steps
        .route("/api/v2/steps/{stepid}", get(steps::get_step))
        .route(
            "/api/v2/builds/{buildid}/steps",
            get(steps::list_build_steps),
        )
        .route(
            "/api/v2/builds/{buildid}/steps/{step}",
            get(steps::get_build_step),
        )
        .route(
            "/api/v2/builders/{builder}/builds/{number}/steps",
            get(steps::list_builder_build_steps),
        )
        .route(
            "/api/v2/builders/{builder}/builds/{number}/steps/{step}",
            get(steps::get_builder_build_step),
        )
        // logs: each log path with its `/contents`, `/raw` and `/raw_inline` (see
        // `logs::LogRef`)
        .route("/api/v2/steps/{stepid}/logs", get(logs::list_step_logs))
        .route(
            "/api/v2/builds/{buildid}/steps/{step}/logs",
            get(logs::list_build_step_logs),
        )
        .route(
            "/api/v2/builders/{builder}/builds/{number}/steps/{step}/logs",
            get(logs::list_builder_build_step_logs),
        )
        .route("/api/v2/logs/{logid}", get(logs::get_log))
        .route("/api/v2/logs/{logid}/contents", get(logs::get_log_contents))
        .route("/api/v2/logs/{logid}/raw", get(logs::get_log_raw))
        .route(
            "/api/v2/logs/{logid}/raw_inline",
            get(logs::get_log_raw_inline),
        )
        .route("/api/v2/steps/{stepid}/logs/{slug}", get(logs::get_log))
        .route(
            "/api/v2/steps/{stepid}/logs/{slug}/contents",
            get(logs::get_log_contents),
        )
        .route(
            "/api/v2/steps/{stepid}/logs/{slug}/raw",
            get(logs::get_log_raw),
        )
        .route(
            "/api/v2/steps/{stepid}/logs/{slug}/raw_inline",
            get(logs::get_log_raw_inline),
        )
        .route(
            "/api/v2/builds/{buildid}/steps/{step}/logs/{slug}",
            get(logs::get_log),
        )
        .route(
            "/api/v2/builds/{buildid}/steps/{step}/logs/{slug}/contents",
            get(logs::get_log_contents),
        )
        .route(
            "/api/v2/builds/{buildid}/steps/{step}/logs/{slug}/raw",
            get(logs::get_log_raw),
        )
        .route(
            "/api/v2/builds/{buildid}/steps/{step}/logs/{slug}/raw_inline",
            get(logs::get_log_raw_inline),
        )
        .route(
            "/api/v2/builders/{builder}/builds/{number}/steps/{step}/logs/{slug}",
            get(logs::get_log),
        )
        .route(
            "/api/v2/builders/{builder}/builds/{number}/steps/{step}/logs/{slug}/contents",
            get(logs::get_log_contents),
        )
        .route(
            "/api/v2/builders/{builder}/builds/{number}/steps/{step}/logs/{slug}/raw",
            get(logs::get_log_raw),
        )
        .route(
            "/api/v2/builders/{builder}/builds/{number}/steps/{step}/logs/{slug}/raw_inline",
            get(logs::get_log_raw_inline),
        )
        // workers
        .route("/api/v2/workers", get(workers::list_workers))
        .route("/api/v2/workers/{worker}", get(workers::get_worker))
        .route(
            "/api/v2/builders/{builder}/workers",
            get(workers::list_builder_workers),
        )
        // changes
        .route("/api/v2/changes", get(changes::list_changes))
        .route("/api/v2/changes/{changeid}", get(changes::get_change))
        // build requests
        .route(
            "/api/v2/buildrequests",
            get(buildrequests::list_buildrequests),
        )
        .route(
            "/api/v2/buildrequests/{buildrequestid}",
            get(buildrequests::get_buildrequest).post(rpc::cancel_request),
        )
        .route(
            "/api/v2/builders/{builder}/buildrequests",
            get(buildrequests::list_builder_buildrequests),
        )
        // buildsets
        .route("/api/v2/buildsets", get(buildsets::list_buildsets))
        .route("/api/v2/buildsets/{bsid}", get(buildsets::get_buildset))
        // force schedulers
        .route(
            "/api/v2/forceschedulers",
            get(forceschedulers::list_forceschedulers),
        )
        .route(
            "/api/v2/forceschedulers/{name}",
            get(forceschedulers::get_forcescheduler).post(rpc::force),
        )
        .route(
            "/api/v2/builders/{builder}/forceschedulers",
            get(forceschedulers::list_builder_forceschedulers),
        )
        // masters
        .route("/api/v2/masters", get(masters::list_masters))
        .route("/api/v2/masters/{masterid}", get(masters::get_master))
}
