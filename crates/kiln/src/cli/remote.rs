//! `kiln force` and `kiln sendchange`: talk to a running master over its web port, with
//! Buildbot's own endpoints (JSON-RPC `force` on `/api/v2/forceschedulers/{name}`, the
//! `base` change hook on `/change_hook/base`), so they work against Buildbot too.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use clap::Args;
use hyper::Method;
use kiln_model::Results;
use serde_json::{Value, json};

use super::http::{self, BaseUrl};

pub const DEFAULT_MASTER: &str = "http://127.0.0.1:8010";

#[derive(Debug, Args)]
pub struct ForceArgs {
    /// The builder to build.
    pub builder: String,
    /// The master's web address.
    #[arg(long, value_name = "URL", default_value = DEFAULT_MASTER)]
    pub master: String,
    /// The force scheduler [default: the one that lists BUILDER].
    #[arg(long, value_name = "NAME")]
    pub scheduler: Option<String>,
    /// The branch to build.
    #[arg(long)]
    pub branch: Option<String>,
    /// The revision to build.
    #[arg(long)]
    pub revision: Option<String>,
    /// A property or scheduler parameter (repeatable).
    #[arg(long = "prop", value_name = "K=V", value_parser = parse_eq)]
    pub props: Vec<(String, String)>,
    /// Why (shown on the build).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Who asks (shown as the build's owner) [default: $USER].
    #[arg(long, value_name = "NAME")]
    pub owner: Option<String>,
    /// Wait for the build; exit 0 on SUCCESS or WARNINGS, 1 otherwise.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Args)]
pub struct SendchangeArgs {
    /// The master's web address.
    #[arg(long, value_name = "URL", default_value = DEFAULT_MASTER)]
    pub master: String,
    /// The change's author.
    #[arg(long, short = 'W', value_name = "AUTHOR")]
    pub who: String,
    /// The repository URL.
    #[arg(long, short = 'R')]
    pub repository: Option<String>,
    #[arg(long, short = 'P')]
    pub project: Option<String>,
    #[arg(long, short = 'b')]
    pub branch: Option<String>,
    #[arg(long, short = 'r')]
    pub revision: Option<String>,
    #[arg(long, short = 'C')]
    pub category: Option<String>,
    /// The commit message.
    #[arg(long, short = 'c', value_name = "TEXT")]
    pub comments: Option<String>,
    /// A change property (repeatable).
    #[arg(long = "property", short = 's', value_name = "K:V", value_parser = parse_colon)]
    pub properties: Vec<(String, String)>,
    /// Files the change touches.
    pub files: Vec<String>,
}

fn parse_eq(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?}: expected NAME=VALUE"))
}

fn parse_colon(s: &str) -> Result<(String, String), String> {
    s.split_once(':')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?}: expected NAME:VALUE"))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// `kiln force BUILDER ...`.
pub fn force(a: ForceArgs) -> anyhow::Result<ExitCode> {
    let base = BaseUrl::parse(&a.master)?;
    runtime()?.block_on(async {
        let scheduler = match &a.scheduler {
            Some(s) => s.clone(),
            None => find_force_scheduler(&base, &a.builder).await?,
        };
        let mut params = serde_json::Map::new();
        params.insert("builderNames".into(), json!([a.builder]));
        params.insert(
            "reason".into(),
            json!(
                a.reason
                    .clone()
                    .unwrap_or_else(|| "forced from the command line".into())
            ),
        );
        // Buildbot's `username` form field wants "Name <email>"; `owner` is taken as given.
        let owner = a.owner.clone().or_else(|| {
            std::env::var("USER")
                .or_else(|_| std::env::var("LOGNAME"))
                .ok()
        });
        if let Some(o) = owner {
            params.insert("owner".into(), json!(o));
        }
        for (k, v) in [("branch", &a.branch), ("revision", &a.revision)] {
            if let Some(v) = v {
                params.insert(k.into(), json!(v));
            }
        }
        for (k, v) in &a.props {
            params.insert(k.clone(), json!(v));
        }
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "force", "params": params});
        let path = format!("/api/v2/forceschedulers/{}", http::percent(&scheduler));
        let resp = http::request(
            &base,
            Method::POST,
            &path,
            Some(("application/json", body.to_string().into_bytes())),
        )
        .await?;
        let answer = resp.json().ok();
        if let Some(err) = answer.as_ref().and_then(|v| v.get("error")) {
            let msg = err
                .get("message")
                .and_then(Value::as_str)
                .map_or_else(|| err.to_string(), str::to_owned);
            bail!("the master refused the force on scheduler {scheduler:?}: {msg}");
        }
        if !resp.status.is_success() {
            bail!(
                "POST {} answered {}: {}",
                base.url(&path),
                resp.status,
                resp.text().trim()
            );
        }
        let answer =
            answer.ok_or_else(|| anyhow!("the master's answer is not JSON: {}", resp.text()))?;
        let (bsid, brids) = parse_force_result(&answer)?;
        println!(
            "buildset {bsid} submitted through scheduler {scheduler:?}; build request{} {}",
            if brids.len() == 1 { "" } else { "s" },
            brids
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
        if !a.wait {
            return Ok(ExitCode::SUCCESS);
        }
        let mut worst: Option<Results> = None;
        for brid in brids {
            let r = wait_for_request(&base, brid, |line| println!("{line}")).await?;
            worst = Some(worst.map_or(r, |w| w.worst(r)));
        }
        Ok(match worst {
            Some(Results::Success | Results::Warnings) => ExitCode::SUCCESS,
            _ => ExitCode::FAILURE,
        })
    })
}

/// The force scheduler whose `builder_names` contains `builder`.
async fn find_force_scheduler(base: &BaseUrl, builder: &str) -> anyhow::Result<String> {
    let list = http::get_json(base, "/api/v2/forceschedulers").await?;
    let items = list
        .get("forceschedulers")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            anyhow!(
                "{} has no \"forceschedulers\" list",
                base.url("/api/v2/forceschedulers")
            )
        })?;
    let names_of = |s: &Value| -> Vec<String> {
        s.get("builder_names")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|n| n.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let found: Vec<&str> = items
        .iter()
        .filter(|s| names_of(s).iter().any(|n| n == builder))
        .filter_map(|s| s.get("name").and_then(Value::as_str))
        .collect();
    match found.as_slice() {
        [one] => Ok((*one).to_owned()),
        [] => {
            let all: Vec<String> = items.iter().flat_map(names_of).collect();
            bail!(
                "no force scheduler lists builder {builder:?}; builders that can be forced: {}",
                if all.is_empty() {
                    "none".to_owned()
                } else {
                    all.join(", ")
                }
            )
        }
        many => bail!(
            "several force schedulers list builder {builder:?} ({}); pick one with --scheduler",
            many.join(", ")
        ),
    }
}

/// Buildbot answers `[bsid, {builderid: brid, ...}]`.
pub fn parse_force_result(answer: &Value) -> anyhow::Result<(i64, Vec<i64>)> {
    let result = answer.get("result").unwrap_or(answer);
    let bad = || {
        anyhow!(
            "unexpected answer to force (want [buildsetid, {{builderid: requestid}}]): {answer}"
        )
    };
    let arr = result.as_array().ok_or_else(bad)?;
    let bsid = arr.first().and_then(Value::as_i64).ok_or_else(bad)?;
    let brids = match arr.get(1) {
        Some(Value::Object(m)) => m.values().filter_map(Value::as_i64).collect(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_i64).collect(),
        _ => Vec::new(),
    };
    Ok((bsid, brids))
}

fn first(v: &Value, key: &str) -> Option<Value> {
    v.get(key)
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .cloned()
}

fn results_of(v: &Value) -> Option<Results> {
    v.get("results")
        .and_then(Value::as_i64)
        .and_then(|r| Results::try_from(r).ok())
}

/// Polls a build request until it is complete; `say` gets progress lines. Returns its result.
pub async fn wait_for_request(
    base: &BaseUrl,
    brid: i64,
    mut say: impl FnMut(String),
) -> anyhow::Result<Results> {
    let mut seen_build: Option<i64> = None;
    loop {
        let br = http::get_json(base, &format!("/api/v2/buildrequests/{brid}")).await?;
        let req = first(&br, "buildrequests")
            .ok_or_else(|| anyhow!("build request {brid} not found on the master"))?;
        let builds = http::get_json(
            base,
            &format!("/api/v2/builds?buildrequestid={brid}&order=-buildid&limit=1"),
        )
        .await
        .ok()
        .and_then(|b| first(&b, "builds"));
        if let Some(b) = &builds
            && let Some(id) = b.get("buildid").and_then(Value::as_i64)
            && seen_build != Some(id)
        {
            seen_build = Some(id);
            let number = b.get("number").and_then(Value::as_i64).unwrap_or(0);
            say(format!(
                "build request {brid}: build #{number} started (build id {id})"
            ));
        }
        if req.get("complete").and_then(Value::as_bool) == Some(true) {
            let result = results_of(&req)
                .or_else(|| builds.as_ref().and_then(results_of))
                .unwrap_or(Results::Exception);
            let state = builds
                .as_ref()
                .and_then(|b| {
                    b.get("state_string")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .unwrap_or_default();
            say(format!(
                "build request {brid}: {}{}",
                result.name(),
                if state.is_empty() {
                    String::new()
                } else {
                    format!(" ({state})")
                }
            ));
            return Ok(result);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The form fields of Buildbot's `base` change hook.
pub fn sendchange_fields(a: &SendchangeArgs) -> Vec<(&'static str, String)> {
    let mut f = vec![
        ("author", a.who.clone()),
        ("files", serde_json::to_string(&a.files).expect("strings")),
        ("comments", a.comments.clone().unwrap_or_default()),
    ];
    for (k, v) in [
        ("repository", &a.repository),
        ("project", &a.project),
        ("branch", &a.branch),
        ("revision", &a.revision),
        ("category", &a.category),
    ] {
        if let Some(v) = v {
            f.push((k, v.clone()));
        }
    }
    if !a.properties.is_empty() {
        let props: BTreeMap<&str, &str> = a
            .properties
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        f.push((
            "properties",
            serde_json::to_string(&props).expect("strings"),
        ));
    }
    f
}

/// `kiln sendchange --who AUTHOR ...`.
pub fn sendchange(a: SendchangeArgs) -> anyhow::Result<ExitCode> {
    let base = BaseUrl::parse(&a.master)?;
    let body = http::form_encode(&sendchange_fields(&a));
    runtime()?.block_on(async {
        let resp = http::request(
            &base,
            Method::POST,
            "/change_hook/base",
            Some(("application/x-www-form-urlencoded", body.into_bytes())),
        )
        .await?;
        if !resp.status.is_success() {
            bail!(
                "the master refused the change ({}): {}",
                resp.status,
                resp.text().trim()
            );
        }
        println!("change sent successfully");
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn force_results_in_buildbot_shape() {
        let (bs, brs) =
            parse_force_result(&json!({"jsonrpc": "2.0", "id": 1, "result": [7, {"3": 12}]}))
                .unwrap();
        assert_eq!((bs, brs), (7, vec![12]));
        assert!(parse_force_result(&json!({"result": "nope"})).is_err());
    }
}
