//! File transfers between the master and a worker: `file_upload`, `directory_upload`,
//! `file_download` and `string_download`, with the master-side ends Buildbot calls
//! `FileWriter`, `DirectoryWriter` and `FileReader` (spec §6.3–6.9, §8.4–8.6).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, UNIX_EPOCH};

use kiln_config::{
    Compress, DirectoryUploadArgs, FileDownloadArgs, FileUploadArgs, Renderable, Step,
    StringDownloadArgs,
};
use kiln_model::{LogType, Results};
use kiln_proto::Value;
use kiln_proto::args::Args;

use super::StepCtx;
use super::command::{CmdOpts, Done, Halt, LogSet, rel_workdir, render, run_cmd, worker_path};
use kiln_remote::{DownloadSource, Transfer, UploadSink, join_worker_path};

/// Buildbot's defaults (spec §8.2).
const FILE_UPLOAD_BLOCKSIZE: u64 = 256 * 1024;
const DIRECTORY_UPLOAD_BLOCKSIZE: u64 = 16 * 1024;
const DOWNLOAD_BLOCKSIZE: u64 = 16 * 1024;

struct WriterState {
    dest: PathBuf,
    /// The temp file next to `dest` while data arrives; `None` once closed (or cancelled).
    tmp: Option<tempfile::NamedTempFile>,
    /// Bytes still allowed (`maxsize`); more is dropped, as Buildbot's writer does.
    remaining: Option<u64>,
    mode: Option<u32>,
}

/// The master end of `upload_file` (Buildbot's `FileWriter`): chunks go to a temp file next to
/// the destination, which replaces the destination on close. Clones share one state, so the
/// step keeps a handle to clean up after the endpoint is done with its box.
#[derive(Clone)]
pub struct FileSink {
    state: Arc<Mutex<WriterState>>,
}

impl FileSink {
    /// Creates the destination's missing parent directories and the temp file.
    pub fn new(dest: &Path, maxsize: Option<u64>, mode: Option<u32>) -> io::Result<FileSink> {
        let dest = std::path::absolute(dest)?;
        let dir = dest.parent().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} has no parent directory", dest.display()),
            )
        })?;
        fs::create_dir_all(dir)?;
        let tmp = tempfile::Builder::new()
            .prefix("kiln-transfer-")
            .tempfile_in(dir)?;
        Ok(FileSink {
            state: Arc::new(Mutex::new(WriterState {
                dest,
                tmp: Some(tmp),
                remaining: maxsize,
                mode,
            })),
        })
    }

    fn lock(&self) -> MutexGuard<'_, WriterState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// After the command: a transfer that never closed leaves no partial file behind.
    pub fn cancel(&self) {
        self.lock().tmp = None;
    }

    /// A failed transfer: remove what it delivered.
    pub fn purge(&self) {
        let mut s = self.lock();
        s.tmp = None;
        let _ = fs::remove_file(&s.dest);
    }

    fn finish_close(&self) -> io::Result<PathBuf> {
        let mut s = self.lock();
        let tmp = s
            .tmp
            .take()
            .ok_or_else(|| io::Error::other("the upload was already closed"))?;
        let dest = s.dest.clone();
        tmp.persist(&dest).map_err(|e| e.error)?;
        #[cfg(unix)]
        if let Some(mode) = s.mode {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&dest, fs::Permissions::from_mode(mode))?;
        }
        Ok(dest)
    }
}

impl UploadSink for FileSink {
    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        let mut s = self.lock();
        let data = match s.remaining {
            Some(r) => {
                let n = (r as usize).min(data.len());
                s.remaining = Some(r - n as u64);
                &data[..n]
            }
            None => data,
        };
        match s.tmp.as_mut() {
            Some(t) => t.write_all(data),
            None => Err(io::Error::other("the upload is closed")),
        }
    }

    fn utime(&mut self, access_time: f64, modified_time: f64) -> io::Result<()> {
        let dest = self.lock().dest.clone();
        let at = |t: f64| UNIX_EPOCH + Duration::from_secs_f64(t.max(0.0));
        File::open(&dest)?.set_times(
            fs::FileTimes::new()
                .set_accessed(at(access_time))
                .set_modified(at(modified_time)),
        )
    }

    fn close(&mut self) -> io::Result<()> {
        self.finish_close().map(|_| ())
    }

    fn unpack(&mut self) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "unpack sent for a file upload, not a directory upload",
        ))
    }
}

/// The master end of `upload_directory` (Buildbot's `DirectoryWriter`): the tar stream goes to
/// a temp file, and `unpack` extracts it into the destination directory, refusing any entry
/// (or link) that would land outside it.
#[derive(Clone)]
pub struct DirectorySink {
    file: FileSink,
    root: PathBuf,
    compress: Option<Compress>,
}

impl DirectorySink {
    pub fn new(
        root: &Path,
        maxsize: Option<u64>,
        compress: Option<Compress>,
    ) -> io::Result<DirectorySink> {
        let root = std::path::absolute(root)?;
        let parent = root.parent().unwrap_or(&root).to_path_buf();
        fs::create_dir_all(&parent)?;
        let tarball = tempfile::Builder::new()
            .prefix("kiln-transfer-")
            .suffix(".tar")
            .tempfile_in(&parent)?
            .into_temp_path();
        let file = FileSink::new(&tarball, maxsize, Some(0o600))?;
        // The FileSink renames onto this path on close; `unpack`/`cancel` delete it.
        tarball.keep().map_err(|e| e.error)?;
        Ok(DirectorySink {
            file,
            root,
            compress,
        })
    }

    pub fn cancel(&self) {
        self.file.cancel();
        let _ = fs::remove_file(&self.file.lock().dest);
    }
}

impl UploadSink for DirectorySink {
    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write(data)
    }

    fn utime(&mut self, _: f64, _: f64) -> io::Result<()> {
        Ok(())
    }

    fn close(&mut self) -> io::Result<()> {
        self.file.close()
    }

    fn unpack(&mut self) -> io::Result<()> {
        // Buildbot closes first so the rename happens even if the worker skipped `close`.
        let tarball = match self.file.finish_close() {
            Ok(p) => p,
            Err(_) => self.file.lock().dest.clone(),
        };
        let result = File::open(&tarball).and_then(|f| {
            let f = io::BufReader::new(f);
            match self.compress {
                None => unpack_tar(f, &self.root),
                Some(Compress::Gz) => unpack_tar(flate2::read::GzDecoder::new(f), &self.root),
                Some(Compress::Bz2) => unpack_tar(bzip2::read::BzDecoder::new(f), &self.root),
            }
        });
        let _ = fs::remove_file(&tarball);
        result
    }
}

fn escapes(what: &str, path: &Path, root: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "refusing tar entry {what} {}: it would land outside {}",
            path.display(),
            root.display()
        ),
    )
}

/// How deep `rel` ends up below a directory `start` levels under the root; `None` if it leaves
/// the root or is absolute.
fn depth_after(start: usize, rel: &Path) -> Option<usize> {
    depth_in(start, rel, false)
}

/// Entry names lose their leading `/` first, as Python's `data` filter does: the stock
/// buildbot-worker names the uploaded directory itself `/`.
fn entry_depth(rel: &Path) -> Option<usize> {
    depth_in(0, rel, true)
}

fn depth_in(start: usize, rel: &Path, strip_root: bool) -> Option<usize> {
    let mut depth = start as isize;
    for c in rel.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return None;
                }
            }
            Component::RootDir if strip_root => {}
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(depth as usize)
}

/// Extracts a tar stream into `root`, like Python's `tarfile` with the `data` filter: only
/// files, directories and links that stay inside `root`.
pub(crate) fn unpack_tar(reader: impl Read, root: &Path) -> io::Result<()> {
    fs::create_dir_all(root)?;
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(false);
    archive.set_overwrite(true);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let Some(depth) = entry_depth(&path) else {
            return Err(escapes("", &path, root));
        };
        if depth == 0 {
            // The root itself (Python names it "").
            continue;
        }
        use tar::EntryType as T;
        match entry.header().entry_type() {
            T::Regular | T::Continuous | T::Directory => {}
            T::Symlink | T::Link => {
                let target = entry
                    .link_name()?
                    .ok_or_else(|| escapes("link without a target", &path, root))?
                    .into_owned();
                // Symlinks resolve from the link's directory, hard links from the archive root.
                let start = if entry.header().entry_type() == T::Symlink {
                    depth - 1
                } else {
                    0
                };
                if depth_after(start, &target).is_none() {
                    return Err(escapes(
                        &format!("link to {}", target.display()),
                        &path,
                        root,
                    ));
                }
            }
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "refusing tar entry {}: type {other:?} is not a file, directory or link",
                        path.display()
                    ),
                ));
            }
        }
        if !entry.unpack_in(root)? {
            return Err(escapes("", &path, root));
        }
    }
    Ok(())
}

/// The master end of `download_file` for a file on the master (Buildbot's `FileReader`).
pub struct FileSource {
    file: Option<File>,
}

impl FileSource {
    pub fn open(path: &Path) -> io::Result<FileSource> {
        Ok(FileSource {
            file: Some(File::open(path)?),
        })
    }
}

impl DownloadSource for FileSource {
    fn read(&mut self, length: usize) -> io::Result<Vec<u8>> {
        let Some(f) = self.file.as_mut() else {
            return Ok(Vec::new());
        };
        let mut buf = Vec::with_capacity(length.min(1 << 20));
        f.take(length as u64).read_to_end(&mut buf)?;
        Ok(buf)
    }

    fn close(&mut self) {
        self.file = None;
    }
}

/// The master end of `download_file` for `string_download`.
pub struct StringSource {
    data: Vec<u8>,
    pos: usize,
}

impl StringSource {
    pub fn new(data: impl Into<Vec<u8>>) -> StringSource {
        StringSource {
            data: data.into(),
            pos: 0,
        }
    }
}

impl DownloadSource for StringSource {
    fn read(&mut self, length: usize) -> io::Result<Vec<u8>> {
        let end = self.data.len().min(self.pos + length);
        let chunk = self.data[self.pos..end].to_vec();
        self.pos = end;
        Ok(chunk)
    }

    fn close(&mut self) {
        self.pos = self.data.len();
    }
}

/// A master path: `~` expanded, relative paths under the master's base directory.
fn master_path(ctx: &StepCtx<'_>, p: &str) -> PathBuf {
    let home = || std::env::var_os("HOME").map(PathBuf::from);
    let p = match p.strip_prefix("~/") {
        Some(rest) => home().map_or_else(|| PathBuf::from(p), |h| h.join(rest)),
        None if p == "~" => home().unwrap_or_else(|| PathBuf::from(p)),
        None => PathBuf::from(p),
    };
    if p.is_absolute() {
        p
    } else {
        ctx.master_dir.join(p)
    }
}

fn basename(p: &str) -> String {
    let trimmed = p.trim_end_matches(['/', '\\']);
    trimmed
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or(trimmed)
        .to_string()
}

/// A transfer's result: `rc` 0 (or none) is SUCCESS, anything else FAILURE.
fn transfer_result(rc: Option<i64>) -> Results {
    if rc.unwrap_or(0) == 0 {
        Results::Success
    } else {
        Results::Failure
    }
}

async fn add_url(
    ctx: &mut StepCtx<'_>,
    url: &Option<Renderable>,
    masterdest: &str,
) -> Result<(), Halt> {
    if let Some(u) = url {
        let u = render(ctx, u, "url")?;
        ctx.logs
            .add_url(&basename(masterdest), &u)
            .await
            .map_err(|e| Halt::Exception(format!("adding the step URL failed: {e:#}")))?;
    }
    Ok(())
}

/// `B/W/src`, plus the step-level keys the master leaves in `args`.
fn transfer_path(ctx: &StepCtx<'_>, workdir: &str, rel: &str) -> String {
    let dir = worker_path(ctx, workdir);
    join_worker_path(ctx.remote.is_windows(), &dir, rel)
}

fn sink_error(what: &str, path: &Path, e: io::Error) -> Halt {
    Halt::Exception(format!("cannot prepare {what} {}: {e}", path.display()))
}

pub(crate) async fn run_file_upload(
    step: &Step,
    a: &FileUploadArgs,
    ctx: &mut StepCtx<'_>,
    logs: &mut LogSet,
) -> Result<Done, Halt> {
    logs.stdio(&mut *ctx.logs).await?;
    let src = render(ctx, &a.workersrc, "workersrc")?;
    let masterdest = render(ctx, &a.masterdest, "masterdest")?;
    let dest = master_path(ctx, &masterdest);
    add_url(ctx, &a.url, &masterdest).await?;
    let sink = FileSink::new(&dest, None, a.mode)
        .map_err(|e| sink_error("the upload destination", &dest, e))?;
    let workdir = rel_workdir(ctx, &step.flags)?;
    let args = Args::from_pairs([
        ("workdir", Value::from(workdir.as_str())),
        ("maxsize", Value::Nil),
        ("blocksize", Value::from(FILE_UPLOAD_BLOCKSIZE)),
        ("keepstamp", Value::from(false)),
        ("workersrc", Value::from(src.as_str())),
        ("path", Value::from(transfer_path(ctx, &workdir, &src))),
    ]);
    let res = run_cmd(
        ctx,
        logs,
        "upload_file",
        args,
        Transfer::Upload(Box::new(sink.clone())),
        CmdOpts::default(),
    )
    .await;
    sink.cancel();
    let result = transfer_result(res?.rc);
    if result != Results::Success {
        sink.purge();
    }
    Ok(Done::new(result))
}

pub(crate) async fn run_directory_upload(
    step: &Step,
    a: &DirectoryUploadArgs,
    ctx: &mut StepCtx<'_>,
    logs: &mut LogSet,
) -> Result<Done, Halt> {
    logs.stdio(&mut *ctx.logs).await?;
    let src = render(ctx, &a.workersrc, "workersrc")?;
    let masterdest = render(ctx, &a.masterdest, "masterdest")?;
    let dest = master_path(ctx, &masterdest);
    add_url(ctx, &a.url, &masterdest).await?;
    let sink = DirectorySink::new(&dest, None, a.compress)
        .map_err(|e| sink_error("the upload directory", &dest, e))?;
    let workdir = rel_workdir(ctx, &step.flags)?;
    let compress = match a.compress {
        None => Value::Nil,
        Some(Compress::Gz) => Value::from("gz"),
        Some(Compress::Bz2) => Value::from("bz2"),
    };
    let args = Args::from_pairs([
        ("workdir", Value::from(workdir.as_str())),
        ("maxsize", Value::Nil),
        ("blocksize", Value::from(DIRECTORY_UPLOAD_BLOCKSIZE)),
        ("compress", compress),
        ("workersrc", Value::from(src.as_str())),
        ("path", Value::from(transfer_path(ctx, &workdir, &src))),
    ]);
    let res = run_cmd(
        ctx,
        logs,
        "upload_directory",
        args,
        Transfer::Upload(Box::new(sink.clone())),
        CmdOpts::default(),
    )
    .await;
    sink.cancel();
    Ok(Done::new(transfer_result(res?.rc)))
}

async fn download(
    step: &Step,
    ctx: &mut StepCtx<'_>,
    logs: &mut LogSet,
    source: Box<dyn DownloadSource>,
    workerdest: &Renderable,
    mode: Option<u32>,
) -> Result<Done, Halt> {
    let dest = render(ctx, workerdest, "workerdest")?;
    let workdir = rel_workdir(ctx, &step.flags)?;
    let args = Args::from_pairs([
        ("maxsize", Value::Nil),
        ("blocksize", Value::from(DOWNLOAD_BLOCKSIZE)),
        ("workdir", Value::from(workdir.as_str())),
        ("mode", mode.map_or(Value::Nil, Value::from)),
        ("workerdest", Value::from(dest.as_str())),
        ("path", Value::from(transfer_path(ctx, &workdir, &dest))),
    ]);
    let res = run_cmd(
        ctx,
        logs,
        "download_file",
        args,
        Transfer::Download(source),
        CmdOpts::default(),
    )
    .await?;
    Ok(Done::new(transfer_result(res.rc)))
}

pub(crate) async fn run_file_download(
    step: &Step,
    a: &FileDownloadArgs,
    ctx: &mut StepCtx<'_>,
    logs: &mut LogSet,
) -> Result<Done, Halt> {
    logs.stdio(&mut *ctx.logs).await?;
    let mastersrc = render(ctx, &a.mastersrc, "mastersrc")?;
    let source = match FileSource::open(&master_path(ctx, &mastersrc)) {
        Ok(s) => s,
        Err(e) => {
            // Buildbot's wording, in a log of its own.
            logs.write(
                &mut *ctx.logs,
                "stderr",
                LogType::Text,
                &format!("File '{mastersrc}' not available at master ({e})"),
            )
            .await?;
            return Ok(Done::new(Results::Failure));
        }
    };
    download(step, ctx, logs, Box::new(source), &a.workerdest, a.mode).await
}

pub(crate) async fn run_string_download(
    step: &Step,
    a: &StringDownloadArgs,
    ctx: &mut StepCtx<'_>,
    logs: &mut LogSet,
) -> Result<Done, Halt> {
    logs.stdio(&mut *ctx.logs).await?;
    let s = render(ctx, &a.s, "s")?;
    download(
        step,
        ctx,
        logs,
        Box::new(StringSource::new(s)),
        &a.workerdest,
        a.mode,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn header(kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h
    }

    #[test]
    fn unpacks_files_and_inner_links() {
        let dir = tempfile::tempdir().unwrap();
        let data = tar_of(|b| {
            b.append_data(
                &mut header(tar::EntryType::Regular, 5),
                "sub/a.txt",
                &b"hello"[..],
            )
            .unwrap();
            let mut l = header(tar::EntryType::Symlink, 0);
            b.append_link(&mut l, "sub/link", "a.txt").unwrap();
        });
        unpack_tar(&data[..], dir.path()).unwrap();
        assert_eq!(fs::read(dir.path().join("sub/a.txt")).unwrap(), b"hello");
        assert_eq!(fs::read(dir.path().join("sub/link")).unwrap(), b"hello");
    }

    /// The stock buildbot-worker's tar names the uploaded directory `/` and its files
    /// `/a.txt`: like Python's `data` filter, the leading slash is dropped.
    #[test]
    fn leading_slashes_are_stripped_like_pythons_data_filter() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let mut raw = Vec::new();
        for (name, ty, body) in [
            ("/", tar::EntryType::Directory, &b""[..]),
            ("/a.txt", tar::EntryType::Regular, &b"hi"[..]),
        ] {
            let mut h = header(ty, body.len() as u64);
            let n = name.as_bytes();
            h.as_old_mut().name[..n.len()].copy_from_slice(n);
            h.set_cksum();
            raw.extend_from_slice(h.as_bytes());
            if !body.is_empty() {
                let mut block = body.to_vec();
                block.resize(512, 0);
                raw.extend_from_slice(&block);
            }
        }
        raw.extend_from_slice(&[0; 1024]);
        unpack_tar(&raw[..], &root).unwrap();
        assert_eq!(fs::read(root.join("a.txt")).unwrap(), b"hi");
    }

    #[test]
    fn refuses_entries_and_links_that_escape() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        // A name with `..` (written raw: the tar builder refuses to make one).
        let mut h = header(tar::EntryType::Regular, 1);
        h.as_old_mut().name[..9].copy_from_slice(b"../evil\0\0");
        h.set_cksum();
        let mut raw = h.as_bytes().to_vec();
        raw.extend_from_slice(&[b'x'; 512][..]);
        raw.extend_from_slice(&[0; 1024]);
        let e = unpack_tar(&raw[..], &root).unwrap_err();
        assert!(e.to_string().contains("outside"), "{e}");
        assert!(!dir.path().join("evil").exists());

        let data = tar_of(|b| {
            let mut l = header(tar::EntryType::Symlink, 0);
            b.append_link(&mut l, "sub/up", "../../outside").unwrap();
        });
        let e = unpack_tar(&data[..], &root).unwrap_err();
        assert!(e.to_string().contains("link to ../../outside"), "{e}");
        let data = tar_of(|b| {
            let mut l = header(tar::EntryType::Symlink, 0);
            b.append_link(&mut l, "abs", "/etc/passwd").unwrap();
        });
        assert!(unpack_tar(&data[..], &root).is_err());
    }

    #[test]
    fn file_sink_truncates_at_maxsize_and_applies_mode() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("a/b/out.bin");
        let mut sink = FileSink::new(&dest, Some(4), Some(0o640)).unwrap();
        sink.write(b"abc").unwrap();
        sink.write(b"defg").unwrap();
        assert!(!dest.exists(), "nothing lands before close");
        sink.close().unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"abcd");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
                0o640
            );
        }
        sink.utime(1_000_000.0, 2_000_000.0).unwrap();
        let m = fs::metadata(&dest).unwrap().modified().unwrap();
        assert_eq!(m.duration_since(UNIX_EPOCH).unwrap().as_secs(), 2_000_000);
        // Only the destination is left: no temp files.
        assert_eq!(fs::read_dir(dest.parent().unwrap()).unwrap().count(), 1);
    }
}
