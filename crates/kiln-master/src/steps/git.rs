//! `git`: Buildbot 4.3's Git source step (`buildbot/steps/source/git.py`), driven with `shell`
//! commands running `git`, plus `listdir` (is there a `.git`?), `rmdir` (clobber) and `cpdir`
//! (method `copy`). The sequence of commands follows Buildbot's, so a worker sees the same work.

use std::collections::BTreeMap;

use kiln_config::{GitArgs, GitMethod, GitMode, Shallow, Step, StepFlags};
use kiln_model::Results;
use kiln_proto::Value;
use kiln_proto::args::Args;

use super::StepCtx;
use super::command::{
    CmdOpts, Done, Halt, LogSet, rel_workdir, render, render_env, run_cmd, shell_args, worker_path,
};
use kiln_remote::Transfer;

/// `_sourcedirIsUpdatable`'s answer.
#[derive(Debug, PartialEq)]
enum Action {
    Update,
    Clone,
    Clobber,
}

struct Git<'s> {
    flags: &'s StepFlags,
    repourl: String,
    branch: String,
    revision: Option<String>,
    mode: GitMode,
    method: Option<GitMethod>,
    shallow: Option<u32>,
    filters: &'s [String],
    submodules: bool,
    clobber_on_failure: bool,
    retry_fetch: bool,
    /// Relative to the builder directory; `source` while method `copy` updates its copy.
    workdir: String,
    env: BTreeMap<String, String>,
}

pub(crate) async fn run_git(
    step: &Step,
    a: &GitArgs,
    ctx: &mut StepCtx<'_>,
    logs: &mut LogSet,
) -> Result<Done, Halt> {
    logs.stdio(&mut *ctx.logs).await?;
    let stamp = ctx.sources.get("");
    let step_branch = a
        .branch
        .as_ref()
        .map(|b| render(ctx, b, "branch"))
        .transpose()?;
    let branch = stamp
        .and_then(|s| s.branch.clone())
        .filter(|b| !b.is_empty())
        .or(step_branch)
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| "HEAD".into());
    let revision = stamp
        .and_then(|s| s.revision.clone())
        .filter(|r| !r.is_empty());
    let shallow = match a.shallow {
        None | Some(Shallow::Flag(false)) | Some(Shallow::Depth(0)) => None,
        Some(Shallow::Flag(true)) => Some(1),
        Some(Shallow::Depth(n)) => Some(n),
    };
    let method = match a.mode {
        GitMode::Incremental => None,
        GitMode::Full => Some(a.method.unwrap_or(GitMethod::Fresh)),
    };
    let mut git = Git {
        flags: &step.flags,
        repourl: render(ctx, &a.repourl, "repourl")?,
        branch,
        revision,
        mode: a.mode,
        method,
        shallow,
        filters: &a.filters,
        submodules: a.submodules,
        clobber_on_failure: a.clobber_on_failure,
        retry_fetch: a.retry_fetch,
        workdir: rel_workdir(ctx, &step.flags)?,
        env: render_env(ctx, &step.flags)?,
    };
    match git.mode {
        GitMode::Incremental => git.mode_incremental(ctx, logs).await?,
        GitMode::Full => git.mode_full(ctx, logs).await?,
    }
    let (_, out) = git
        .vc(ctx, logs, &["rev-parse", "HEAD"], true, true)
        .await?;
    let rev = out.trim();
    if rev.len() != 40 || !rev.bytes().all(|b| b.is_ascii_hexdigit()) {
        logs.stdio_lines(
            &mut *ctx.logs,
            'e',
            &format!("git rev-parse HEAD printed {rev:?}, not a commit id\n"),
        )
        .await?;
        return Err(Halt::Failed);
    }
    ctx.properties.set("got_revision", rev.to_string(), "Git");
    Ok(Done::new(Results::Success))
}

impl Git<'_> {
    fn timeout(&self) -> u64 {
        self.flags.timeout.unwrap_or(1200)
    }

    /// `_dovccmd`: `git <args>` in the workdir. With `abandon`, a non-zero exit fails the step.
    async fn vc(
        &self,
        ctx: &mut StepCtx<'_>,
        logs: &mut LogSet,
        args: &[&str],
        abandon: bool,
        collect: bool,
    ) -> Result<(i64, String), Halt> {
        let mut argv = vec![Value::from("git")];
        argv.extend(args.iter().map(|a| Value::from(*a)));
        let workdir = worker_path(ctx, &self.workdir);
        let wire = shell_args(&workdir, Value::Array(argv), &self.env, self.flags, false);
        let res = run_cmd(
            ctx,
            logs,
            "shell",
            wire,
            Transfer::None,
            CmdOpts {
                collect_stdout: collect,
                warnings: None,
            },
        )
        .await?;
        let rc = res.rc.unwrap_or(-1);
        if abandon && rc != 0 {
            return Err(Halt::Failed);
        }
        Ok((rc, res.stdout))
    }

    async fn vc_rc(
        &self,
        ctx: &mut StepCtx<'_>,
        logs: &mut LogSet,
        args: &[&str],
        abandon: bool,
    ) -> Result<i64, Halt> {
        Ok(self.vc(ctx, logs, args, abandon, false).await?.0)
    }

    async fn mode_full(&mut self, ctx: &mut StepCtx<'_>, logs: &mut LogSet) -> Result<(), Halt> {
        match self.method {
            Some(GitMethod::Clobber) => return self.clobber(ctx, logs).await,
            Some(GitMethod::Copy) => return self.copy(ctx, logs).await,
            _ => {}
        }
        match self.sourcedir_is_updatable(ctx, logs).await? {
            Action::Clobber => self.clobber(ctx, logs).await,
            Action::Clone => self.full_clone_or_fallback(ctx, logs).await,
            Action::Update if self.method == Some(GitMethod::Clean) => self.clean(ctx, logs).await,
            Action::Update => self.fresh(ctx, logs).await,
        }
    }

    async fn mode_incremental(
        &mut self,
        ctx: &mut StepCtx<'_>,
        logs: &mut LogSet,
    ) -> Result<(), Halt> {
        match self.sourcedir_is_updatable(ctx, logs).await? {
            Action::Clobber => self.clobber(ctx, logs).await,
            Action::Clone => self.full_clone_or_fallback(ctx, logs).await,
            Action::Update => {
                self.fetch_or_fallback(ctx, logs).await?;
                self.sync_submodule(ctx, logs).await?;
                self.update_submodule(ctx, logs).await?;
                Ok(())
            }
        }
    }

    async fn clean(&mut self, ctx: &mut StepCtx<'_>, logs: &mut LogSet) -> Result<(), Halt> {
        let clean = ["clean", "-f", "-f", "-d"];
        self.vc_rc(ctx, logs, &clean, true).await?;
        self.fetch_or_fallback(ctx, logs).await?;
        self.sync_submodule(ctx, logs).await?;
        self.update_submodule(ctx, logs).await?;
        self.clean_submodule(ctx, logs).await?;
        if self.submodules {
            self.vc_rc(ctx, logs, &clean, true).await?;
        }
        Ok(())
    }

    async fn fresh(&mut self, ctx: &mut StepCtx<'_>, logs: &mut LogSet) -> Result<(), Halt> {
        let clean = ["clean", "-f", "-f", "-d", "-x"];
        if self.vc_rc(ctx, logs, &clean, false).await? == 0 {
            self.fetch_or_fallback(ctx, logs).await?;
        } else {
            self.do_clobber(ctx, logs).await?;
            self.full_clone_or_fallback(ctx, logs).await?;
        }
        self.sync_submodule(ctx, logs).await?;
        self.update_submodule(ctx, logs).await?;
        self.clean_submodule(ctx, logs).await?;
        if self.submodules {
            self.vc_rc(ctx, logs, &clean, true).await?;
        }
        Ok(())
    }

    async fn clobber(&mut self, ctx: &mut StepCtx<'_>, logs: &mut LogSet) -> Result<(), Halt> {
        self.do_clobber(ctx, logs).await?;
        if self.full_clone(ctx, logs).await? != 0 {
            return Err(Halt::Failed);
        }
        Ok(())
    }

    /// Method `copy`: bring `source` up to date incrementally, then copy it over the workdir.
    async fn copy(&mut self, ctx: &mut StepCtx<'_>, logs: &mut LogSet) -> Result<(), Halt> {
        let workdir = self.workdir.clone();
        self.rmdir(ctx, logs, &workdir).await?;
        self.workdir = "source".into();
        let updated = self.mode_incremental(ctx, logs).await;
        self.workdir = workdir.clone();
        updated?;
        let args = Args::from_pairs([
            ("from_path", Value::from(worker_path(ctx, "source"))),
            ("to_path", Value::from(worker_path(ctx, &workdir))),
            ("logEnviron", Value::from(true)),
            ("timeout", Value::from(self.timeout())),
        ]);
        let res = run_cmd(ctx, logs, "cpdir", args, Transfer::None, CmdOpts::default()).await?;
        if res.rc.unwrap_or(0) != 0 {
            return Err(Halt::Failed);
        }
        Ok(())
    }

    /// `_fetch`: fetch the branch (unless the wanted revision is already here) and check it out.
    async fn fetch(
        &self,
        ctx: &mut StepCtx<'_>,
        logs: &mut LogSet,
        abandon: bool,
    ) -> Result<i64, Halt> {
        let mut fetch_required = true;
        if let Some(rev) = &self.revision
            && self
                .vc_rc(ctx, logs, &["cat-file", "-e", rev], false)
                .await?
                == 0
        {
            fetch_required = false;
        }
        if fetch_required {
            let depth = self.shallow.map(|d| d.to_string());
            let mut cmd = vec!["fetch", "-f"];
            if let Some(d) = &depth {
                cmd.extend(["--depth", d]);
            }
            cmd.extend([self.repourl.as_str(), self.branch.as_str()]);
            let rc = self.vc_rc(ctx, logs, &cmd, abandon).await?;
            if rc != 0 {
                return Ok(rc);
            }
        }
        let rev = self.revision.as_deref().unwrap_or("FETCH_HEAD");
        let rc = self
            .vc_rc(ctx, logs, &["checkout", "-f", rev], abandon)
            .await?;
        if rc == 0 && self.branch != "HEAD" {
            // Names the checkout after the branch; errors are ignored, as in Buildbot.
            self.vc_rc(ctx, logs, &["checkout", "-B", &self.branch], false)
                .await?;
        }
        Ok(rc)
    }

    async fn fetch_or_fallback(
        &mut self,
        ctx: &mut StepCtx<'_>,
        logs: &mut LogSet,
    ) -> Result<(), Halt> {
        let abandon = !self.retry_fetch && !self.clobber_on_failure;
        if self.fetch(ctx, logs, abandon).await? == 0 {
            return Ok(());
        }
        if self.retry_fetch {
            self.fetch(ctx, logs, true).await?;
            Ok(())
        } else if self.clobber_on_failure {
            self.clobber(ctx, logs).await
        } else {
            Err(Halt::Failed)
        }
    }

    async fn clone(&self, ctx: &mut StepCtx<'_>, logs: &mut LogSet) -> Result<i64, Halt> {
        let depth = self.shallow.map(|d| d.to_string());
        let mut cmd = vec!["clone"];
        let mut switch_to_branch = self.branch != "HEAD";
        if self.branch != "HEAD" {
            if self.branch.starts_with("refs/") {
                // `git clone --branch` cannot take a full ref: check it out after the clone.
                cmd.push("--no-checkout");
            } else {
                switch_to_branch = false;
                cmd.extend(["--branch", self.branch.as_str()]);
            }
        }
        if let Some(d) = &depth {
            cmd.extend(["--depth", d]);
        }
        for f in self.filters {
            cmd.extend(["--filter", f.as_str()]);
        }
        cmd.extend([self.repourl.as_str(), "."]);
        let mut rc = self.vc_rc(ctx, logs, &cmd, self.shallow.is_some()).await?;
        if switch_to_branch {
            rc = self.fetch(ctx, logs, true).await?;
        }
        Ok(rc)
    }

    async fn full_clone(&self, ctx: &mut StepCtx<'_>, logs: &mut LogSet) -> Result<i64, Halt> {
        let mut rc = self.clone(ctx, logs).await?;
        if rc != 0 {
            return Ok(rc);
        }
        let shallow = self.shallow.is_some();
        if let Some(rev) = &self.revision {
            rc = self
                .vc_rc(ctx, logs, &["checkout", "-f", rev], shallow)
                .await?;
        }
        if self.submodules {
            let depth = self.shallow.map(|d| d.to_string());
            let mut cmd = vec!["submodule", "update", "--init", "--recursive"];
            if let Some(d) = &depth {
                cmd.extend(["--depth", d]);
            }
            rc = self.vc_rc(ctx, logs, &cmd, shallow).await?;
        }
        Ok(rc)
    }

    async fn full_clone_or_fallback(
        &mut self,
        ctx: &mut StepCtx<'_>,
        logs: &mut LogSet,
    ) -> Result<(), Halt> {
        if self.full_clone(ctx, logs).await? != 0 {
            if !self.clobber_on_failure {
                return Err(Halt::Failed);
            }
            self.clobber(ctx, logs).await?;
        }
        Ok(())
    }

    async fn do_clobber(&self, ctx: &mut StepCtx<'_>, logs: &mut LogSet) -> Result<(), Halt> {
        let workdir = self.workdir.clone();
        if self.rmdir(ctx, logs, &workdir).await? != 0 {
            return Err(Halt::Exception(format!(
                "Failed to delete directory {}",
                worker_path(ctx, &workdir)
            )));
        }
        Ok(())
    }

    async fn rmdir(
        &self,
        ctx: &mut StepCtx<'_>,
        logs: &mut LogSet,
        rel: &str,
    ) -> Result<i64, Halt> {
        let args = Args::from_pairs([
            (
                "paths",
                Value::Array(vec![Value::from(worker_path(ctx, rel))]),
            ),
            ("logEnviron", Value::from(true)),
            ("timeout", Value::from(self.timeout())),
        ]);
        Ok(
            run_cmd(ctx, logs, "rmdir", args, Transfer::None, CmdOpts::default())
                .await?
                .rc
                .unwrap_or(0),
        )
    }

    async fn sync_submodule(&self, ctx: &mut StepCtx<'_>, logs: &mut LogSet) -> Result<(), Halt> {
        if self.submodules {
            self.vc_rc(ctx, logs, &["submodule", "sync"], true).await?;
        }
        Ok(())
    }

    async fn update_submodule(&self, ctx: &mut StepCtx<'_>, logs: &mut LogSet) -> Result<(), Halt> {
        if self.submodules {
            self.vc_rc(
                ctx,
                logs,
                &[
                    "submodule",
                    "update",
                    "--init",
                    "--recursive",
                    "--force",
                    "--checkout",
                ],
                true,
            )
            .await?;
        }
        Ok(())
    }

    async fn clean_submodule(&self, ctx: &mut StepCtx<'_>, logs: &mut LogSet) -> Result<(), Halt> {
        if self.submodules {
            let sub = if self.mode == GitMode::Full && self.method == Some(GitMethod::Fresh) {
                "git clean -f -f -d -x"
            } else {
                "git clean -f -f -d"
            };
            self.vc_rc(
                ctx,
                logs,
                &["submodule", "foreach", "--recursive", sub],
                true,
            )
            .await?;
        }
        Ok(())
    }

    /// `listdir` of the workdir: `.git` there → update; other files → clobber; empty or
    /// missing → clone.
    async fn sourcedir_is_updatable(
        &self,
        ctx: &mut StepCtx<'_>,
        logs: &mut LogSet,
    ) -> Result<Action, Halt> {
        let args = Args::from_pairs([("path", Value::from(worker_path(ctx, &self.workdir)))]);
        let res = run_cmd(
            ctx,
            logs,
            "listdir",
            args,
            Transfer::None,
            CmdOpts::default(),
        )
        .await?;
        Ok(match res.files {
            None => Action::Clone,
            Some(f) if f.iter().any(|n| n == ".git") => Action::Update,
            Some(f) if !f.is_empty() => Action::Clobber,
            Some(_) => Action::Clone,
        })
    }
}
