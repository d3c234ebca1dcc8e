//! The flock'd pidfile: the running process holds an exclusive `flock` on it for its
//! whole life, and the lock — not the pid number in it — says whether the process is
//! alive. A pidfile left by `kill -9` or a reboot is unlocked, so `start` just takes it
//! over, and `stop` never signals the (possibly reused) pid written in an unlocked file.
//!
//! The lock is `std::fs::File::try_lock`, which is `flock(LOCK_EX|LOCK_NB)` on
//! Unix (and `LockFileEx` on Windows). The file is opened `O_CLOEXEC` (std's
//! default), so build processes never inherit it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
    /// A live process holds it; `pid` is what it wrote (None if not written yet). The
    /// binaries say this in their own words (which process, how to stop it).
    #[error("{}", held_message(.path, *.pid))]
    Held { path: PathBuf, pid: Option<u32> },
    #[error("cannot lock {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn held_message(path: &Path, pid: Option<u32>) -> String {
    let who = pid.map_or_else(String::new, |p| format!(" (pid {p})"));
    format!(
        "a running process{who} holds the lock on {}",
        path.display()
    )
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
            // A stopping process unlinks the file before unlocking it: make sure we
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

/// What the pidfile says about the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// No pidfile: nothing has run here since the last clean stop.
    NoFile,
    /// A pidfile nobody holds: left by a crash, `kill -9` or a reboot. Its pid
    /// (if any) may now belong to an unrelated process: never signal it.
    Stale(Option<u32>),
    /// A live process holds the lock; the pid it wrote, once written.
    Running(Option<u32>),
}

/// Looks at the pidfile without disturbing a running process.
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
/// (the binaries write it once their signal handlers are in place).
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

/// How often [`wait_released`] says it is still waiting, when it waits for ever.
pub const NOTE_EVERY: Duration = Duration::from_secs(30);

/// Waits for the process holding the lock on `path` to let go of it (to exit), looking
/// every 100 ms: `true` once it has. With a `limit`, `false` when that passes first.
/// Without one it waits for ever, calling `note` with the time waited every
/// [`NOTE_EVERY`], so a patient `stop` can say what it is waiting for.
pub fn wait_released(path: &Path, limit: Option<Duration>, mut note: impl FnMut(Duration)) -> bool {
    let started = Instant::now();
    let mut next_note = NOTE_EVERY;
    loop {
        std::thread::sleep(Duration::from_millis(100));
        if !matches!(probe(path), Ok(Status::Running(_))) {
            return true;
        }
        let waited = started.elapsed();
        match limit {
            Some(limit) if waited >= limit => return false,
            Some(_) => {}
            None if waited >= next_note => {
                note(waited);
                next_note += NOTE_EVERY;
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_probe_release() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.pid");
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

    #[test]
    fn wait_released_sees_the_lock_go_or_gives_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.pid");
        assert!(
            wait_released(&path, Some(Duration::ZERO), |_| {}),
            "no file"
        );
        let lock = PidLock::acquire(&path).unwrap();
        let started = Instant::now();
        assert!(!wait_released(
            &path,
            Some(Duration::from_millis(300)),
            |_| {}
        ));
        assert!(started.elapsed() >= Duration::from_millis(300));
        let holder = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(lock);
        });
        let mut notes = 0;
        assert!(wait_released(&path, None, |_| notes += 1));
        assert_eq!(notes, 0, "no note before {NOTE_EVERY:?}");
        holder.join().unwrap();
    }
}
