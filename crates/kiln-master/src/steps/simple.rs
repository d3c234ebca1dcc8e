//! `mkdir`, `rmdir`, `rmfile` (one worker command each, paths relative to the builder
//! directory as in spec §8.2) and `trigger`.

use std::collections::BTreeMap;

use kiln_config::{DirArgs, FileArgs, Step, TriggerArgs};
use kiln_model::{Properties, Results};
use kiln_proto::Value;
use kiln_proto::args::Args;

use super::StepCtx;
use super::command::{CmdOpts, Done, Halt, LogSet, render, run_cmd, worker_path};
use kiln_remote::Transfer;

async fn fs_command(
    ctx: &mut StepCtx<'_>,
    logs: &mut LogSet,
    name: &str,
    args: Args,
) -> Result<Done, Halt> {
    logs.stdio(&mut *ctx.logs).await?;
    let res = run_cmd(ctx, logs, name, args, Transfer::None, CmdOpts::default()).await?;
    Ok(Done::new(if res.rc == Some(0) {
        Results::Success
    } else {
        Results::Failure
    }))
}

pub(crate) async fn run_mkdir(
    _step: &Step,
    a: &DirArgs,
    ctx: &mut StepCtx<'_>,
    logs: &mut LogSet,
) -> Result<Done, Halt> {
    let dir = render(ctx, &a.dir, "dir")?;
    let args = Args::from_pairs([
        ("logEnviron", Value::from(true)),
        (
            "paths",
            Value::Array(vec![Value::from(worker_path(ctx, &dir))]),
        ),
    ]);
    fs_command(ctx, logs, "mkdir", args).await
}

pub(crate) async fn run_rmdir(
    step: &Step,
    a: &DirArgs,
    ctx: &mut StepCtx<'_>,
    logs: &mut LogSet,
) -> Result<Done, Halt> {
    let dir = render(ctx, &a.dir, "dir")?;
    let mut pairs = vec![
        ("logEnviron", Value::from(true)),
        (
            "paths",
            Value::Array(vec![Value::from(worker_path(ctx, &dir))]),
        ),
    ];
    if let Some(t) = step.flags.timeout {
        pairs.push(("timeout", Value::from(t)));
    }
    if let Some(t) = step.flags.max_time {
        pairs.push(("maxTime", Value::from(t)));
    }
    fs_command(ctx, logs, "rmdir", Args::from_pairs(pairs)).await
}

pub(crate) async fn run_rmfile(
    _step: &Step,
    a: &FileArgs,
    ctx: &mut StepCtx<'_>,
    logs: &mut LogSet,
) -> Result<Done, Halt> {
    let file = render(ctx, &a.file, "file")?;
    let args = Args::from_pairs([("path", Value::from(worker_path(ctx, &file)))]);
    fs_command(ctx, logs, "rmfile", args).await
}

/// Resolves once the build is stopped (never, if nobody can stop it any more).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<Option<String>>) {
    loop {
        if stop.borrow_and_update().is_some() {
            return;
        }
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

pub(crate) async fn run_trigger(
    _step: &Step,
    a: &TriggerArgs,
    ctx: &mut StepCtx<'_>,
    _logs: &mut LogSet,
) -> Result<Done, Halt> {
    let mut props = Properties::default();
    for (k, v) in &a.set_properties {
        props.set(
            k.clone(),
            render(ctx, v, &format!("set_properties {k}"))?,
            "Trigger",
        );
    }
    let sources = if a.update_sourcestamp {
        let mut s = ctx.sources.clone();
        // Buildbot's updateSourceStamp: the triggered builds get the revision this build got.
        if let (Some(stamp), Some(rev)) = (
            s.get_mut(""),
            ctx.properties.get("got_revision").and_then(|v| v.as_str()),
        ) {
            stamp.revision = Some(rev.to_string());
        }
        s
    } else {
        BTreeMap::new()
    };
    let mut stop = ctx.stop.clone();
    if stop.borrow_and_update().is_some() {
        return Err(Halt::Cancelled);
    }
    let triggered = ctx
        .triggerer
        .trigger(&a.scheduler_names, props, sources, a.wait_for_finish);
    let result = tokio::select! {
        r = triggered => r,
        _ = stopped(&mut stop) => return Err(Halt::Cancelled),
    };
    match result {
        Ok(r) if a.wait_for_finish => Ok(Done::new(r)),
        Ok(_) => Ok(Done::new(Results::Success)),
        Err(e) => Err(Halt::Exception(format!(
            "triggering {} failed: {}",
            a.scheduler_names.join(", "),
            crate::error_chain(&e)
        ))),
    }
}
