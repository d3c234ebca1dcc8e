//! `shell`, and the child-process commands `rmdir` and `cpdir`.

use kiln_proto::args::{CpdirArgs, PathsArgs, ShellArgs};

use super::CommandCtx;

pub async fn run(_ctx: &mut CommandCtx, _args: ShellArgs) -> Result<(), String> {
    Err("shell is not implemented yet".into())
}

pub async fn rmdir(_ctx: &mut CommandCtx, _args: PathsArgs) -> Result<(), String> {
    Err("rmdir is not implemented yet".into())
}

pub async fn cpdir(_ctx: &mut CommandCtx, _args: CpdirArgs) -> Result<(), String> {
    Err("cpdir is not implemented yet".into())
}
