//! File transfers: `upload_file`, `upload_directory` (tar), `download_file`.

use kiln_proto::args::{DownloadFileArgs, UploadDirectoryArgs, UploadFileArgs};

use super::CommandCtx;

pub async fn upload_file(_ctx: &mut CommandCtx, _args: UploadFileArgs) -> Result<(), String> {
    Err("upload_file is not implemented yet".into())
}
pub async fn upload_directory(_ctx: &mut CommandCtx, _args: UploadDirectoryArgs) -> Result<(), String> {
    Err("upload_directory is not implemented yet".into())
}
pub async fn download_file(_ctx: &mut CommandCtx, _args: DownloadFileArgs) -> Result<(), String> {
    Err("download_file is not implemented yet".into())
}
