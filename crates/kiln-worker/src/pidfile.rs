//! `BASEDIR/kiln-worker.pid`: the running worker holds an exclusive `flock` on it
//! for its whole life, and the lock — not the pid number in it — says whether a
//! worker is alive. A pidfile left by `kill -9` or a reboot is unlocked, so
//! `start` just takes it over, and `stop` never signals the (possibly reused) pid
//! written in an unlocked file.
//!
//! The lock is `std::fs::File::try_lock`, which is `flock(LOCK_EX|LOCK_NB)` on
//! Unix (and `LockFileEx` on Windows). The file is opened `O_CLOEXEC` (std's
//! default), so build processes never inherit it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// File name of the pidfile inside the base directory.
pub const PID_FILE: &str = "kiln-worker.pid";

/// The pidfile path in `basedir`.
pub fn path_in(basedir: &Path) -> PathBuf {
    basedir.join(PID_FILE)
}

/// The held lock. Dropping it removes the pidfile if it still names this
/// process, then releases the lock.
#[derive(Debug)]
pub struct PidLock {
    /// Always `Some` until dropped or [`PidLock::close_inherited`].
    file: Option<File>,
    path: PathBuf,
}

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// A live worker holds it; `pid` is what it wrote (None if not written yet).
    #[error("{}", held_message(.path, *.pid))]
    Held { path: PathBuf, pid: Option<u32> },
    #[error("cannot lock {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn held_message(path: &Path, pid: Option<u32>) -> String {
    let dir = path.parent().unwrap_or(Path::new(".")).display();
    match pid {
        Some(pid) => format!(
            "a kiln-worker is already running in {dir} (pid {pid}, it holds the lock on {PID_FILE}); \
             stop it first with `kiln-worker stop {dir}`, or use `kiln-worker restart {dir}`"
        ),
        None => format!(
            "a kiln-worker is already running in {dir} (it holds the lock on {PID_FILE}); stop it first"
        ),
    }
}

impl PidLock {
    /// Takes the lock, or says who holds it. Does not write the pid (see [`PidLock::write_pid`]).
    ///
    /// A brief collision with a `stop`/`status` probe is retried for a moment.
    pub fn acquire(path: &Path) -> Result<PidLock, LockError> {
        let io = |source| LockError::Io {
            path: path.to_owned(),
            source,
        };
        let deadline = Instant::now() + Duration::from_millis(500);
        loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(io)?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    if Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                    return Err(LockError::Held {
                        path: path.to_owned(),
                        pid: read_pid(path),
                    });
                }
                Err(TryLockError::Error(e)) => return Err(io(e)),
            }
            // A stopping worker unlinks the file before unlocking it: make sure we
            // locked the file that is at `path` now, not one just unlinked.
            if same_file(&file, path) {
                return Ok(PidLock {
                    file: Some(file),
                    path: path.to_owned(),
                });
            }
        }
    }

    /// Writes `pid` (normally this process's) into the locked file.
    pub fn write_pid(&mut self, pid: u32) -> std::io::Result<()> {
        let mut file = self.file.as_ref().expect("PidLock used after close");
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(format!("{pid}\n").as_bytes())?;
        file.sync_data()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes this descriptor without unlocking or removing anything: used by the
    /// `start` parent after forking, when the daemon keeps the same (inherited)
    /// open file description and therefore the lock.
    pub fn close_inherited(mut self) {
        drop(self.file.take());
    }
}

impl Drop for PidLock {
    fn drop(&mut self) {
        let Some(file) = self.file.take() else { return };
        if read_pid(&self.path) == Some(std::process::id()) && same_file(&file, &self.path) {
            let _ = std::fs::remove_file(&self.path);
        }
        let _ = file.unlock();
    }
}

#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_file: &File, path: &Path) -> bool {
    path.exists()
}

/// The pid written in the file, if it holds a number.
pub fn read_pid(path: &Path) -> Option<u32> {
    let mut text = String::new();
    File::open(path).ok()?.read_to_string(&mut text).ok()?;
    text.trim().parse().ok().filter(|p| *p > 0)
}

/// What the pidfile says about a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// No pidfile: no worker has run here since the last clean stop.
    NoFile,
    /// A pidfile nobody holds: left by a crash, `kill -9` or a reboot. Its pid
    /// (if any) may now belong to an unrelated process: never signal it.
    Stale(Option<u32>),
    /// A live worker holds the lock; the pid it wrote, once written.
    Running(Option<u32>),
}

/// Looks at the pidfile without disturbing a running worker.
pub fn probe(path: &Path) -> std::io::Result<Status> {
    let file = match OpenOptions::new().read(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Status::NoFile),
        Err(e) => return Err(e),
    };
    match file.try_lock_shared() {
        Ok(()) => {
            let pid = read_pid(path);
            let _ = file.unlock();
            Ok(Status::Stale(pid))
        }
        Err(TryLockError::WouldBlock) => Ok(Status::Running(read_pid(path))),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

/// Like [`probe`], but waits up to `patience` for a locked file's pid to be written
/// (a worker writes it once its signal handlers are in place).
pub fn probe_with_pid(path: &Path, patience: Duration) -> std::io::Result<Status> {
    let deadline = Instant::now() + patience;
    loop {
        let status = probe(path)?;
        match status {
            Status::Running(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            _ => return Ok(status),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_probe_release() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        assert_eq!(probe(&path).unwrap(), Status::NoFile);
        let mut lock = PidLock::acquire(&path).unwrap();
        assert_eq!(probe(&path).unwrap(), Status::Running(None));
        lock.write_pid(std::process::id()).unwrap();
        assert_eq!(
            probe(&path).unwrap(),
            Status::Running(Some(std::process::id()))
        );
        match PidLock::acquire(&path) {
            Err(LockError::Held { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("second lock: {other:?}"),
        }
        drop(lock);
        assert_eq!(
            probe(&path).unwrap(),
            Status::NoFile,
            "a clean exit removes the pidfile"
        );
        std::fs::write(&path, "1\n").unwrap();
        assert_eq!(probe(&path).unwrap(), Status::Stale(Some(1)));
        let mut lock = PidLock::acquire(&path).unwrap();
        lock.write_pid(std::process::id()).unwrap();
        assert_eq!(read_pid(&path), Some(std::process::id()));
    }
}
