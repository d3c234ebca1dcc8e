//! File-system commands: `mkdir`, `stat`, `glob`, `listdir`, `rmfile`.

use kiln_proto::args::{PathArgs, PathsArgs};

use super::CommandCtx;

pub async fn mkdir(_ctx: &mut CommandCtx, _args: PathsArgs) -> Result<(), String> {
    Err("mkdir is not implemented yet".into())
}
pub async fn stat(_ctx: &mut CommandCtx, _args: PathArgs) -> Result<(), String> {
    Err("stat is not implemented yet".into())
}
pub async fn glob(_ctx: &mut CommandCtx, _args: PathArgs) -> Result<(), String> {
    Err("glob is not implemented yet".into())
}
pub async fn listdir(_ctx: &mut CommandCtx, _args: PathArgs) -> Result<(), String> {
    Err("listdir is not implemented yet".into())
}
pub async fn rmfile(_ctx: &mut CommandCtx, _args: PathArgs) -> Result<(), String> {
    Err("rmfile is not implemented yet".into())
}
