//! File transfers: `upload_file`, `upload_directory` (tar), `download_file` (§8.4–8.6).
//!
//! All three are stop-and-wait: one transfer request at a time, the next only
//! after the master answered. They end like Buildbot's `TransferCommand`:
//! `rc` (0, or 1 on a local failure, `maxsize` or interrupt), the `stderr`
//! text if any, then `elapsed` unless interrupted. A transfer request the
//! master answers with an exception fails the command (`complete` carries the
//! text); a lost connection stops it at once.

use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use kiln_proto::args::{Compression, DownloadFileArgs, UploadDirectoryArgs, UploadFileArgs};
use kiln_proto::update::UpdateItem;
use kiln_proto::{Op, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::CommandCtx;
use super::fs::{blocking, python_oserror};

/// The largest chunk sent or asked for, whatever `blocksize` says: well under the
/// 16 MiB message cap. Smaller chunks than `blocksize` are allowed by the protocol.
pub const MAX_CHUNK: u64 = 8 * 1024 * 1024;

/// Tar streams are padded to a multiple of this, like Python's `tarfile` (20 × 512).
const RECORD_SIZE: u64 = 10240;

/// How a transfer request went.
enum CallError {
    /// The session is gone: stop now, there is nobody to report to.
    Closed,
    /// The master answered with an exception; the text is its message.
    Remote(String),
}

impl CallError {
    fn into_failure(self, op: &str) -> String {
        match self {
            CallError::Closed => lost(op),
            CallError::Remote(text) => remote_failure(op, &text),
        }
    }
}

fn lost(op: &str) -> String {
    format!("the connection to the master was lost during {op}")
}

fn remote_failure(op: &str, text: &str) -> String {
    format!("RemoteWorkerError: {op}: {text}")
}

/// Sends one transfer request and waits for its answer.
async fn call(ctx: &CommandCtx, op: Op) -> Result<Value, CallError> {
    let response = ctx.link.call(op).await.map_err(|_| CallError::Closed)?;
    match response.error_text() {
        Some(text) => Err(CallError::Remote(text)),
        None => Ok(response.result),
    }
}

/// Sends the pending output if its `buffer_timeout` has passed (a long transfer
/// must not hold its header back until the end).
async fn flush_if_due(ctx: &mut CommandCtx) {
    if ctx
        .out
        .deadline()
        .is_some_and(|d| d <= tokio::time::Instant::now())
    {
        ctx.out.flush().await;
    }
}

fn interrupted(ctx: &CommandCtx) -> bool {
    ctx.interrupt.reason().is_some()
}

/// The bytes allowed for the next block: `min(blocksize, remaining maxsize)`.
fn next_length(blocksize: u64, remaining: Option<u64>) -> u64 {
    let length = blocksize.min(MAX_CHUNK);
    remaining.map_or(length, |r| length.min(r))
}

fn truncated(path: &str) -> String {
    format!("Maximum filesize reached, truncating file '{path}'")
}

/// The end of every transfer: `rc`, the error text if any, and `elapsed` unless
/// the command was interrupted (an interrupt at any point makes `rc` 1).
async fn finish(
    ctx: &mut CommandCtx,
    mut rc: i64,
    stderr: Option<String>,
    result: Result<(), String>,
) -> Result<(), String> {
    let was_interrupted = interrupted(ctx);
    if was_interrupted {
        rc = 1;
    }
    ctx.push(UpdateItem::Rc(rc)).await;
    if let Some(text) = stderr {
        ctx.stderr(&text).await;
    }
    if !was_interrupted {
        let elapsed = ctx.elapsed();
        ctx.push(UpdateItem::Elapsed(elapsed)).await;
    }
    result
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
async fn read_full(file: &mut tokio::fs::File, length: u64) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; length as usize];
    let mut filled = 0;
    while filled < buf.len() {
        let n = file.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    buf.truncate(filled);
    Ok(buf)
}

/// How the chunk loop of an upload ended.
enum Sent {
    /// End of file, `maxsize` reached, or interrupted: the normal closing path.
    Done,
    /// Reading the local file failed.
    ReadFailed(String),
    /// The master refused a chunk.
    Refused(String),
}

/// What an upload sends: the source (for messages), its limits, and which write op.
struct Upload<'a> {
    path: &'a str,
    blocksize: u64,
    maxsize: Option<u64>,
    directory: bool,
}

/// Sends `file` in stop-and-wait chunks; `rc`/`stderr` are set when `maxsize` cuts it short.
async fn send_chunks(
    ctx: &mut CommandCtx,
    file: &mut tokio::fs::File,
    up: &Upload<'_>,
    rc: &mut i64,
    stderr: &mut Option<String>,
) -> Result<Sent, String> {
    let Upload {
        path,
        blocksize,
        maxsize,
        directory,
    } = *up;
    let op_name = if directory {
        "update_upload_directory_write"
    } else {
        "update_upload_file_write"
    };
    let mut remaining = maxsize;
    loop {
        flush_if_due(ctx).await;
        if interrupted(ctx) {
            return Ok(Sent::Done);
        }
        let length = next_length(blocksize, remaining);
        if length == 0 {
            *rc = 1;
            *stderr = Some(truncated(path));
            return Ok(Sent::Done);
        }
        let data = match read_full(file, length).await {
            Ok(data) => data,
            Err(e) => return Ok(Sent::ReadFailed(format!("reading '{path}': {e}"))),
        };
        if data.is_empty() {
            return Ok(Sent::Done);
        }
        if let Some(r) = remaining.as_mut() {
            *r -= data.len() as u64;
        }
        let command_id = ctx.command_id.clone();
        let op = if directory {
            Op::UploadDirectoryWrite { command_id, data }
        } else {
            Op::UploadFileWrite { command_id, data }
        };
        match call(ctx, op).await {
            Ok(_) => {}
            Err(CallError::Closed) => return Err(lost(op_name)),
            Err(CallError::Remote(text)) => {
                return Ok(Sent::Refused(remote_failure(op_name, &text)));
            }
        }
    }
}

fn unix_time(t: io::Result<SystemTime>) -> f64 {
    match t.map(|t| t.duration_since(UNIX_EPOCH)) {
        Ok(Ok(d)) => d.as_secs_f64(),
        Ok(Err(e)) => -e.duration().as_secs_f64(),
        Err(_) => 0.0,
    }
}

pub async fn upload_file(ctx: &mut CommandCtx, args: UploadFileArgs) -> Result<(), String> {
    let path = args.path.clone();
    let mut rc = 0;
    let mut stderr = None;

    // Open first (and take the times for `keepstamp`); a directory cannot be opened for upload.
    let p = path.clone();
    let opened = blocking(move || -> io::Result<(std::fs::File, f64, f64)> {
        let file = std::fs::File::open(&p)?;
        let meta = file.metadata()?;
        if meta.is_dir() {
            return Err(io::Error::other("is a directory"));
        }
        Ok((file, unix_time(meta.accessed()), unix_time(meta.modified())))
    })
    .await?;
    let (mut file, times) = match opened {
        Ok((f, atime, mtime)) => (Some(tokio::fs::File::from_std(f)), Some((atime, mtime))),
        Err(_) => {
            stderr = Some(format!("Cannot open file '{path}' for upload"));
            rc = 1;
            (None, None)
        }
    };
    ctx.header(&format!("sending {path}\n")).await;

    let sent = match file.as_mut() {
        Some(f) => {
            send_chunks(
                ctx,
                f,
                &Upload {
                    path: &path,
                    blocksize: args.blocksize,
                    maxsize: args.maxsize,
                    directory: false,
                },
                &mut rc,
                &mut stderr,
            )
            .await?
        }
        None => Sent::Done,
    };
    drop(file);
    let close = Op::UploadFileClose {
        command_id: ctx.command_id.clone(),
    };
    let result = match sent {
        Sent::Done => match call(ctx, close).await {
            Err(CallError::Closed) => return Err(lost("update_upload_file_close")),
            Err(e) => Err(e.into_failure("update_upload_file_close")),
            Ok(_) => match times {
                Some((access_time, modified_time)) if args.keepstamp && !interrupted(ctx) => {
                    let op = Op::UploadFileUtime {
                        command_id: ctx.command_id.clone(),
                        access_time,
                        modified_time,
                    };
                    match call(ctx, op).await {
                        Err(CallError::Closed) => return Err(lost("update_upload_file_utime")),
                        // Buildbot 4.3's master always answers this one with an exception;
                        // the file is in place, `rc` stays 0, the command fails (step EXCEPTION).
                        Err(e) => Err(e.into_failure("update_upload_file_utime")),
                        Ok(_) => Ok(()),
                    }
                }
                _ => Ok(()),
            },
        },
        Sent::ReadFailed(failure) | Sent::Refused(failure) => {
            // Close the master's side anyway; its answer cannot change the outcome.
            rc = 1;
            if let Err(CallError::Closed) = call(ctx, close).await {
                return Err(lost("update_upload_file_close"));
            }
            Err(failure)
        }
    };
    finish(ctx, rc, stderr, result).await
}

pub async fn upload_directory(
    ctx: &mut CommandCtx,
    args: UploadDirectoryArgs,
) -> Result<(), String> {
    let path = args.path.clone();
    let root = PathBuf::from(&path);
    let compress = args.compress;
    let built = blocking(move || build_archive(&root, compress)).await?;
    let (archive, _guard) = match built {
        Ok(done) => done,
        Err(error) => {
            let stderr = format!("Cannot read directory '{path}' for upload: {error}");
            return finish(ctx, 1, Some(stderr), Ok(())).await;
        }
    };
    let mut file = tokio::fs::File::from_std(archive);
    ctx.header(&format!("sending {path}\n")).await;

    let mut rc = 0;
    let mut stderr = None;
    let sent = send_chunks(
        ctx,
        &mut file,
        &Upload {
            path: &path,
            blocksize: args.blocksize,
            maxsize: args.maxsize,
            directory: true,
        },
        &mut rc,
        &mut stderr,
    )
    .await?;
    drop(file);
    let result = match sent {
        // A truncated or abandoned archive is not unpacked: the master would extract a broken tree.
        Sent::Done if rc != 0 || interrupted(ctx) => Ok(()),
        Sent::Done => match call(
            ctx,
            Op::UploadDirectoryUnpack {
                command_id: ctx.command_id.clone(),
            },
        )
        .await
        {
            Ok(_) => Ok(()),
            Err(CallError::Closed) => return Err(lost("update_upload_directory_unpack")),
            Err(e) => {
                rc = 1;
                Err(e.into_failure("update_upload_directory_unpack"))
            }
        },
        Sent::ReadFailed(failure) | Sent::Refused(failure) => {
            rc = 1;
            Err(failure)
        }
    };
    finish(ctx, rc, stderr, result).await
}

pub async fn download_file(ctx: &mut CommandCtx, args: DownloadFileArgs) -> Result<(), String> {
    let path = args.path.clone();
    let mut rc = 0;
    let mut stderr = None;

    let p = PathBuf::from(&path);
    let mode = args.mode;
    let run_as = ctx.policy.run_as.clone();
    let opened = blocking(move || -> io::Result<std::fs::File> {
        if let Some(parent) = p
            .parent()
            .filter(|d| !d.as_os_str().is_empty() && !d.exists())
        {
            super::fs::create_dirs_for_builds(parent, run_as.as_ref())?;
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)?;
        if let Some(mode) = mode {
            set_mode(&p, mode)?;
        }
        // Builds that run as the build user must be able to rewrite what they downloaded.
        #[cfg(unix)]
        if let Some(user) = &run_as {
            std::os::unix::fs::chown(&p, Some(user.uid), Some(user.gid))?;
        }
        Ok(file)
    })
    .await?;
    let mut file = match opened {
        Ok(f) => Some(tokio::fs::File::from_std(f)),
        Err(_) => {
            stderr = Some(format!("Cannot open file '{path}' for download"));
            rc = 1;
            None
        }
    };

    let mut result = Ok(());
    if let Some(f) = file.as_mut() {
        let mut remaining = args.maxsize;
        loop {
            flush_if_due(ctx).await;
            if interrupted(ctx) {
                break;
            }
            let length = next_length(args.blocksize, remaining);
            if length == 0 {
                rc = 1;
                stderr = Some(truncated(&path));
                break;
            }
            let op = Op::ReadFile {
                command_id: ctx.command_id.clone(),
                length,
            };
            let data = match call(ctx, op).await {
                Err(CallError::Closed) => return Err(lost("update_read_file")),
                Err(e) => {
                    rc = 1;
                    result = Err(e.into_failure("update_read_file"));
                    break;
                }
                // Buildbot 4.3's master answers nil whatever it has: that is the end of the file.
                Ok(Value::Nil) => break,
                Ok(Value::Binary(b)) => b,
                Ok(Value::String(s)) => s.into_bytes(),
                Ok(other) => {
                    rc = 1;
                    result = Err(format!(
                        "update_read_file: expected bytes from the master, got {other}"
                    ));
                    break;
                }
            };
            if data.is_empty() {
                break;
            }
            if data.len() as u64 > length {
                rc = 1;
                result = Err(format!(
                    "update_read_file: the master sent {} bytes, more than the {length} asked for",
                    data.len()
                ));
                break;
            }
            if let Some(r) = remaining.as_mut() {
                *r -= data.len() as u64;
            }
            if let Err(e) = f.write_all(&data).await {
                rc = 1;
                result = Err(format!("writing '{path}': {e}"));
                break;
            }
        }
        if let Err(e) = f.flush().await
            && result.is_ok()
        {
            rc = 1;
            result = Err(format!("writing '{path}': {e}"));
        }
    }
    drop(file);
    // Sent on every path; a failure here is only logged, like Buildbot's worker does.
    match call(
        ctx,
        Op::ReadFileClose {
            command_id: ctx.command_id.clone(),
        },
    )
    .await
    {
        Ok(_) => {}
        Err(CallError::Closed) => return Err(lost("update_read_file_close")),
        Err(CallError::Remote(text)) => {
            tracing::warn!(command_id = %ctx.command_id, "update_read_file_close failed: {text}")
        }
    }
    finish(ctx, rc, stderr, result).await
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Windows has only the read-only flag: Python's `os.chmod` sets it when the owner-write bit is clear.
#[cfg(not(unix))]
fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    let mut perms = std::fs::metadata(path)?.permissions();
    perms.set_readonly(mode & 0o200 == 0);
    std::fs::set_permissions(path, perms)
}

// ---------------------------------------------------------------------------------------------
// The directory archive.

/// Deletes the temporary archive when dropped. On Unix there is nothing to do: the
/// file is unlinked as soon as it is created and lives on only through its handle.
struct TempGuard(Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A new, private temporary file.
fn temp_file() -> io::Result<(std::fs::File, TempGuard)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    for _ in 0..1000 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(
            "kiln-transfer-{}-{n}-{nanos:x}.tar",
            std::process::id()
        ));
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(&path) {
            Ok(file) => {
                if cfg!(unix) && std::fs::remove_file(&path).is_ok() {
                    return Ok((file, TempGuard(None)));
                }
                return Ok((file, TempGuard(Some(path))));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "no free name for a temporary file",
    ))
}

/// Counts the bytes of the uncompressed tar stream, to pad it to whole records.
struct Counting<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the tree under `root` as a tar stream into a temporary file (compressed as
/// asked) and returns it rewound. The error text is Python's `str(OSError)`.
fn build_archive(root: &Path, compress: Compression) -> Result<(std::fs::File, TempGuard), String> {
    let meta = std::fs::metadata(root).map_err(|e| python_oserror(&e, root))?;
    if !meta.is_dir() {
        return Err(python_oserror(&not_a_directory(), root));
    }
    let (file, guard) = temp_file().map_err(|e| e.to_string())?;
    let out = io::BufWriter::new(file);
    let out = match compress {
        Compression::None => write_tar(root, out)?,
        Compression::Gzip => {
            let gz = flate2::write::GzEncoder::new(out, flate2::Compression::default());
            write_tar(root, gz)?.finish().map_err(|e| e.to_string())?
        }
        Compression::Bzip2 => {
            let bz = bzip2::write::BzEncoder::new(out, bzip2::Compression::default());
            write_tar(root, bz)?.finish().map_err(|e| e.to_string())?
        }
    };
    let mut file = out.into_inner().map_err(|e| e.error().to_string())?;
    file.rewind().map_err(|e| e.to_string())?;
    Ok((file, guard))
}

#[cfg(unix)]
fn not_a_directory() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOTDIR)
}

#[cfg(not(unix))]
fn not_a_directory() -> io::Error {
    io::Error::from_raw_os_error(267) // ERROR_DIRECTORY
}

/// The tar stream: every entry below `root`, named relative to it, parents before
/// children and names sorted (as Python's `tarfile.add` walks), symlinks stored as
/// links, then the end-of-archive blocks and zero padding to a whole record.
fn write_tar<W: Write>(root: &Path, out: W) -> Result<W, String> {
    let mut builder = tar::Builder::new(Counting {
        inner: out,
        count: 0,
    });
    // The directory itself comes first (Python's tarfile names it ''; we write "./"),
    // so an empty directory still arrives, with its mode.
    let meta = std::fs::symlink_metadata(root).map_err(|e| python_oserror(&e, root))?;
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
    #[cfg(unix)]
    header.set_mode(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777);
    header.set_entry_type(tar::EntryType::Directory);
    header.set_size(0);
    // tar's path setter drops "." components, so the name is written directly.
    header.as_old_mut().name[..2].copy_from_slice(b"./");
    header.set_cksum();
    builder
        .append(&header, io::empty())
        .map_err(|e| python_oserror(&e, root))?;
    add_children(&mut builder, root, Path::new(""))?;
    let mut counting = builder.into_inner().map_err(|e| e.to_string())?;
    let pad = (RECORD_SIZE - counting.count % RECORD_SIZE) % RECORD_SIZE;
    counting
        .write_all(&vec![0u8; pad as usize])
        .map_err(|e| e.to_string())?;
    Ok(counting.inner)
}

fn add_children<W: Write>(
    builder: &mut tar::Builder<W>,
    dir: &Path,
    rel: &Path,
) -> Result<(), String> {
    let mut names = std::fs::read_dir(dir)
        .and_then(|entries| {
            entries
                .map(|e| e.map(|e| e.file_name()))
                .collect::<io::Result<Vec<_>>>()
        })
        .map_err(|e| python_oserror(&e, dir))?;
    names.sort();
    for name in names {
        let full = dir.join(&name);
        let name_in_tar = rel.join(&name);
        let fail = |e: io::Error| python_oserror(&e, &full);
        let meta = std::fs::symlink_metadata(&full).map_err(fail)?;
        let kind = meta.file_type();
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        #[cfg(unix)]
        header.set_mode(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777);
        if kind.is_symlink() {
            let target = std::fs::read_link(&full).map_err(fail)?;
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            builder
                .append_link(&mut header, &name_in_tar, &target)
                .map_err(fail)?;
        } else if kind.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            builder
                .append_data(&mut header, &name_in_tar, io::empty())
                .map_err(fail)?;
            add_children(builder, &full, &name_in_tar)?;
        } else if kind.is_file() {
            let file = std::fs::File::open(&full).map_err(fail)?;
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(meta.len());
            let exact = Exact {
                inner: file.take(meta.len()),
                left: meta.len(),
            };
            builder
                .append_data(&mut header, &name_in_tar, exact)
                .map_err(fail)?;
        }
        // Sockets, FIFOs and devices are left out: the master's `data` filter refuses them.
    }
    Ok(())
}

/// Reads exactly `left` bytes, failing if the file shrank since its size was taken
/// (a grown file is cut at the recorded size), so the archive stays well-formed.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "unexpected end of data",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}
