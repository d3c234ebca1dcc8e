//! Force schedulers (`/forceschedulers`, `/forceschedulers/{name}`,
//! `/builders/{builder}/forceschedulers`): the config's force schedulers with the form the UI
//! draws for each, laid out as Buildbot 4.3 does. Forcing is a JSON-RPC `POST` (`rpc.rs`).

use axum::extract::Path;
use kiln_config::{ForceParam, ForceParamType, Scheduler, SchedulerKind};
use kiln_model::BuilderId;
use serde::Serialize;
use serde_json::{Value, json};

use super::{ApiRequest, ApiResult, Resource, path_id};
use crate::ApiError;
use crate::query::FType::{self, Bool, Other, Str, StrList};

/// A force scheduler, as Buildbot's `forceschedulers` resource.
#[derive(Serialize)]
pub(crate) struct ForceSchedulerAnswer {
    name: String,
    button_name: String,
    label: String,
    builder_names: Vec<String>,
    enabled: bool,
    /// The form: a group with `username`, `reason` and `priority`, a two-column group with
    /// the source fields (when the scheduler asks for them), then the typed parameters.
    all_fields: Vec<ForceFieldAnswer>,
}

impl Resource for ForceSchedulerAnswer {
    const PLURAL: &'static str = "forceschedulers";
    const FIELDS: &'static [(&'static str, FType)] = &[
        ("name", Str),
        ("button_name", Str),
        ("label", Str),
        ("builder_names", StrList),
        ("enabled", Bool),
        ("all_fields", Other),
    ];
}

/// A field of the force form (Buildbot's `BaseParameter` and its kinds), or a group of them.
#[derive(Serialize)]
pub(crate) struct ForceFieldAnswer {
    name: String,
    #[serde(rename = "fullName")]
    full_name: Option<String>,
    label: String,
    tablabel: String,
    /// `text`, `textarea`, `int`, `bool`, `list`, `username`, or `nested` for a group.
    #[serde(rename = "type")]
    kind: &'static str,
    default: Value,
    multiple: bool,
    regex: Option<String>,
    hide: bool,
    maxsize: Option<i64>,
    autopopulate: Option<Value>,
    tooltip: String,
    required: bool,
    /// The input's width; groups have none.
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<i64>,
    /// The owner field asks for a name with an email address.
    #[serde(skip_serializing_if = "Option::is_none")]
    need_email: Option<bool>,
    /// A `list` field's choices.
    #[serde(skip_serializing_if = "Option::is_none")]
    choices: Option<Vec<String>>,
    #[serde(flatten)]
    group: Option<FieldGroup>,
}

/// The fields of a group and how they are laid out.
#[derive(Serialize)]
struct FieldGroup {
    layout: &'static str,
    columns: i64,
    fields: Vec<ForceFieldAnswer>,
}

impl ForceFieldAnswer {
    /// An input: its name is also its full name, its label also its tab label.
    fn input(name: &str, label: &str, kind: &'static str, default: Value) -> ForceFieldAnswer {
        ForceFieldAnswer {
            name: name.into(),
            full_name: Some(name.into()),
            label: label.into(),
            tablabel: label.into(),
            kind,
            default,
            multiple: false,
            regex: None,
            hide: false,
            maxsize: None,
            autopopulate: None,
            tooltip: String::new(),
            required: false,
            size: Some(10),
            need_email: None,
            choices: None,
            group: None,
        }
    }

    /// A nameless group of fields in `columns` columns.
    fn group(columns: i64, fields: Vec<ForceFieldAnswer>) -> ForceFieldAnswer {
        ForceFieldAnswer {
            full_name: None,
            size: None,
            group: Some(FieldGroup {
                layout: "vertical",
                columns,
                fields,
            }),
            ..ForceFieldAnswer::input("", "", "nested", json!(""))
        }
    }

    fn with_size(self, size: i64) -> ForceFieldAnswer {
        ForceFieldAnswer {
            size: Some(size),
            ..self
        }
    }

    /// The first group: who asks (`username`), why, and at which priority.
    fn request_group() -> ForceFieldAnswer {
        let owner = ForceFieldAnswer {
            need_email: Some(true),
            ..ForceFieldAnswer::input("username", "Your name:", "username", json!(""))
        };
        let reason = ForceFieldAnswer::input("reason", "reason", "text", json!("force build"));
        let priority = ForceFieldAnswer::input("priority", "priority", "int", json!(0));
        let fields = vec![owner.with_size(30), reason.with_size(20), priority];
        ForceFieldAnswer::group(1, fields)
    }

    /// The source fields, in two columns.
    fn source_group() -> ForceFieldAnswer {
        let fields = [
            ("branch", "Branch:"),
            ("project", "Project:"),
            ("repository", "Repository:"),
            ("revision", "Revision:"),
        ]
        .into_iter()
        .map(|(name, label)| ForceFieldAnswer::input(name, label, "text", json!("")))
        .collect();
        ForceFieldAnswer::group(2, fields)
    }

    /// A typed parameter of the scheduler.
    fn param(p: &ForceParam) -> ForceFieldAnswer {
        let kind = match p.kind {
            ForceParamType::String => "text",
            ForceParamType::Text => "textarea",
            ForceParamType::Int => "int",
            ForceParamType::Bool => "bool",
            ForceParamType::Choice => "list",
        };
        let default = p.default.clone().unwrap_or_else(|| match p.kind {
            ForceParamType::Int => json!(0),
            ForceParamType::Bool => json!(false),
            _ => json!(""),
        });
        let label = p.label.as_deref().unwrap_or(&p.name);
        ForceFieldAnswer {
            required: p.required,
            choices: (p.kind == ForceParamType::Choice).then(|| p.choices.clone()),
            ..ForceFieldAnswer::input(&p.name, label, kind, default)
        }
    }
}

impl ForceSchedulerAnswer {
    /// The answer for a force scheduler; none for the other kinds.
    fn of(s: &Scheduler) -> Option<ForceSchedulerAnswer> {
        let SchedulerKind::Force(args) = &s.kind else {
            return None;
        };
        let mut all_fields = vec![ForceFieldAnswer::request_group()];
        if args.source {
            all_fields.push(ForceFieldAnswer::source_group());
        }
        all_fields.extend(args.params.iter().map(ForceFieldAnswer::param));
        let label = args.label.clone().unwrap_or_else(|| s.name.clone());
        Some(ForceSchedulerAnswer {
            name: s.name.clone(),
            button_name: label.clone(),
            label,
            builder_names: s.builder_names.clone(),
            enabled: true,
            all_fields,
        })
    }
}

/// `GET /forceschedulers`.
pub(crate) async fn list_forceschedulers(api: ApiRequest) -> ApiResult {
    let spec = api.collection_query::<ForceSchedulerAnswer>()?;
    let cfg = api.state.control.config();
    let all: Vec<_> = cfg
        .schedulers
        .iter()
        .filter_map(ForceSchedulerAnswer::of)
        .collect();
    Ok(api.collection(&spec, &all))
}

/// `GET /builders/{builder}/forceschedulers`: those that can start the builder (by id).
pub(crate) async fn list_builder_forceschedulers(
    api: ApiRequest,
    Path(builder): Path<String>,
) -> ApiResult {
    let spec = api.collection_query::<ForceSchedulerAnswer>()?;
    let id = path_id(&builder, || format!("builders/{builder}/forceschedulers"))?;
    let cfg = api.state.control.config();
    let found: Vec<_> = match api.state.store.get_builder(BuilderId(id)).await? {
        Some(row) => cfg
            .schedulers
            .iter()
            .filter(|s| s.builder_names.contains(&row.name))
            .filter_map(ForceSchedulerAnswer::of)
            .collect(),
        None => vec![],
    };
    Ok(api.collection(&spec, &found))
}

/// `GET /forceschedulers/{name}`.
pub(crate) async fn get_forcescheduler(api: ApiRequest, Path(name): Path<String>) -> ApiResult {
    let spec = api.single_query::<ForceSchedulerAnswer>()?;
    let answer = api
        .state
        .control
        .config()
        .scheduler(&name)
        .and_then(ForceSchedulerAnswer::of)
        .ok_or_else(|| ApiError::NotFound(format!("/forceschedulers/{name}")))?;
    Ok(api.one(&spec, &answer))
}
