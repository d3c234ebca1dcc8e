//! `shell`, `configure`, `compile`, `test` (Buildbot's ShellCommand and
//! WarningCountingShellCommand) and `set_property_from_command`.

use kiln_config::{SetPropertyArgs, ShellArgs, Step};
use kiln_engine::results::{DecodeRc, with_warnings};
use kiln_model::{LogType, Results};

use super::StepCtx;
use super::command::{
    CmdOpts, Done, Halt, LogSet, Warnings, rel_workdir, render_command, render_env, run_cmd,
    shell_args, worker_path,
};
use kiln_remote::Transfer;

fn rc_i32(rc: Option<i64>) -> Option<i32> {
    rc.and_then(|r| i32::try_from(r).ok())
}

pub(crate) async fn run_shell(
    step: &Step,
    a: &ShellArgs,
    ctx: &mut StepCtx<'_>,
    logs: &mut LogSet,
) -> Result<Done, Halt> {
    // Buildbot opens stdio before anything can fail, so it is always the first log.
    logs.stdio(&mut *ctx.logs).await?;
    let command = render_command(ctx, &a.command)?;
    let env = render_env(ctx, &step.flags)?;
    let workdir = worker_path(ctx, &rel_workdir(ctx, &step.flags)?);
    let mut warnings = a
        .warning_pattern
        .as_deref()
        .map(Warnings::new)
        .transpose()?;
    let args = shell_args(
        &workdir,
        command,
        &env,
        &step.flags,
        a.use_pty.unwrap_or(false),
    );
    let res = run_cmd(
        ctx,
        logs,
        "shell",
        args,
        Transfer::None,
        CmdOpts {
            collect_stdout: false,
            warnings: warnings.as_mut(),
        },
    )
    .await?;
    let decode = if a.decode_rc.is_empty() {
        DecodeRc::default()
    } else {
        DecodeRc(a.decode_rc.clone())
    };
    let mut done = Done::new(decode.decode(rc_i32(res.rc), false));
    done.timed_out = res.timed_out();
    if let Some(w) = warnings {
        if w.count > 0 {
            logs.write(&mut *ctx.logs, "warnings", LogType::Text, &w.lines)
                .await?;
            done.note = Some(format!("warnings: {}", w.count));
        }
        done.result = with_warnings(done.result, w.count, None);
        // A build-wide count, as Buildbot keeps it.
        let before = ctx
            .properties
            .get("warnings-count")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        ctx.properties.set(
            "warnings-count",
            before + w.count,
            "WarningCountingShellCommand",
        );
    }
    Ok(done)
}

pub(crate) async fn run_set_property(
    step: &Step,
    a: &SetPropertyArgs,
    ctx: &mut StepCtx<'_>,
    logs: &mut LogSet,
) -> Result<Done, Halt> {
    logs.stdio(&mut *ctx.logs).await?;
    let command = render_command(ctx, &a.command)?;
    let env = render_env(ctx, &step.flags)?;
    let workdir = worker_path(ctx, &rel_workdir(ctx, &step.flags)?);
    let args = shell_args(&workdir, command, &env, &step.flags, false);
    let res = run_cmd(
        ctx,
        logs,
        "shell",
        args,
        Transfer::None,
        CmdOpts {
            collect_stdout: true,
            warnings: None,
        },
    )
    .await?;
    let result = DecodeRc::default().decode(rc_i32(res.rc), false);
    if result != Results::Success {
        let mut done = Done::new(Results::Failure);
        done.timed_out = res.timed_out();
        return Ok(done);
    }
    let value = if a.strip {
        res.stdout.trim().to_string()
    } else {
        res.stdout
    };
    ctx.properties.set(
        a.property.clone(),
        value.clone(),
        "SetPropertyFromCommand Step",
    );
    logs.write(
        &mut *ctx.logs,
        "property changes",
        LogType::Text,
        &format!("{}: {:?}", a.property, value),
    )
    .await?;
    let mut done = Done::new(Results::Success);
    if step.flags.description_done.is_none() {
        done.text = Some(format!("property '{}' set", a.property));
    }
    Ok(done)
}
