//! A log file rotated by size like twistd's log: when a write would take `NAME.log`
//! past `max_bytes` it becomes `NAME.log.1` (older ones shift up to `.N`, N = `keep`,
//! and the oldest is deleted).
//!
//! [`init`] installs it as the global subscriber's output, filtered by an environment
//! variable the binary names (tracing-subscriber `EnvFilter` syntax), default `info`.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::{SubscriberInitExt as _, TryInitError};

/// A log file rotated at a size; cloneable, usable as a tracing `MakeWriter`.
#[derive(Clone, Debug)]
pub struct RotatingLog {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: Option<File>,
    size: u64,
}

impl RotatingLog {
    /// Opens (appends to) `path`, rotating at `max_bytes`, keeping `keep` old files.
    pub fn open(path: impl Into<PathBuf>, max_bytes: u64, keep: u32) -> io::Result<RotatingLog> {
        let path = path.into();
        let file = open_append(&path)?;
        let size = file.metadata()?.len();
        Ok(RotatingLog {
            inner: Arc::new(Mutex::new(Inner {
                path,
                max_bytes: max_bytes.max(1),
                keep,
                file: Some(file),
                size,
            })),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// `NAME.log.N`
pub fn rotated_path(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

impl Inner {
    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        if self.keep == 0 {
            let _ = std::fs::remove_file(&self.path);
        } else {
            let _ = std::fs::remove_file(rotated_path(&self.path, self.keep));
            for n in (1..self.keep).rev() {
                let from = rotated_path(&self.path, n);
                if from.exists() {
                    std::fs::rename(&from, rotated_path(&self.path, n + 1))?;
                }
            }
            std::fs::rename(&self.path, rotated_path(&self.path, 1))?;
        }
        self.file = Some(open_append(&self.path)?);
        self.size = 0;
        Ok(())
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.size > 0 && self.size + buf.len() as u64 > self.max_bytes {
            // If rotation fails (e.g. permissions), keep appending rather than lose lines.
            if self.rotate().is_err() && self.file.is_none() {
                self.file = Some(open_append(&self.path)?);
            }
        }
        let file = match &mut self.file {
            Some(f) => f,
            None => self.file.insert(open_append(&self.path)?),
        };
        file.write_all(buf)?;
        self.size += buf.len() as u64;
        Ok(buf.len())
    }
}

/// The writer handed out for one log event (tracing formats a whole event, then writes it once).
pub struct RotatingWriter<'a>(MutexGuard<'a, Inner>);

impl Write for RotatingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.0.file {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl Write for RotatingLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.lock().write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for RotatingLog {
    type Writer = RotatingWriter<'a>;
    fn make_writer(&'a self) -> Self::Writer {
        RotatingWriter(self.lock())
    }
}

/// Why [`init`] failed. Each says only what its source says (the callers add which log).
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The log file could not be opened.
    #[error(transparent)]
    Open(#[from] io::Error),
    /// A global subscriber was already installed.
    #[error(transparent)]
    Install(#[from] TryInitError),
}

/// Installs the global subscriber: the log at `path` (see [`RotatingLog::open`]), plus
/// stderr when `stderr` is set (in colour on a terminal), both filtered by the
/// environment variable `filter_env`.
pub fn init(
    path: &Path,
    max_bytes: u64,
    keep: u32,
    filter_env: &str,
    stderr: bool,
) -> Result<RotatingLog, InitError> {
    let log = RotatingLog::open(path, max_bytes, keep)?;
    let filter = EnvFilter::try_from_env(filter_env).unwrap_or_else(|_| EnvFilter::new("info"));
    let file_layer = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(log.clone());
    let stderr_layer = stderr.then(|| {
        use std::io::IsTerminal as _;
        tracing_subscriber::fmt::layer()
            .with_ansi(io::stderr().is_terminal())
            .with_writer(io::stderr)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(file_layer)
        .with(stderr_layer)
        .try_init()?;
    Ok(log)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_keeps_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.log");
        let mut log = RotatingLog::open(&path, 100, 2).unwrap();
        for i in 0..10 {
            writeln!(log, "line {i:02} {}", "x".repeat(40)).unwrap(); // 49 bytes
        }
        // 2 lines per file; 10 lines = 5 files, only the newest 3 kept.
        let cur = std::fs::read_to_string(&path).unwrap();
        assert_eq!(cur.lines().count(), 2);
        assert!(cur.starts_with("line 08"), "{cur}");
        assert!(
            std::fs::read_to_string(rotated_path(&path, 1))
                .unwrap()
                .starts_with("line 06")
        );
        assert!(
            std::fs::read_to_string(rotated_path(&path, 2))
                .unwrap()
                .starts_with("line 04")
        );
        assert!(!rotated_path(&path, 3).exists());
        // Reopening continues from the current size.
        let mut log = RotatingLog::open(&path, 100, 2).unwrap();
        writeln!(log, "next").unwrap();
        assert!(
            std::fs::read_to_string(rotated_path(&path, 1))
                .unwrap()
                .starts_with("line 08")
        );
    }

    #[test]
    fn an_oversized_line_still_gets_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.log");
        let mut log = RotatingLog::open(&path, 10, 0).unwrap();
        log.write_all(&[b'a'; 50]).unwrap();
        log.write_all(&[b'b'; 50]).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), vec![b'b'; 50]);
    }
}
