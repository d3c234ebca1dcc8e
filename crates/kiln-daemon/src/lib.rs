//! A Kiln process's life, shared by `kiln` (the master) and `kiln-worker`.
//!
//! - [`pidfile`]: the flock'd pidfile; the lock, not the pid in it, says whether a
//!   process is alive, so a stale pid is never signalled.
//! - [`daemon`] (Unix): detaching, with a pipe on which the daemon tells `start` whether
//!   it came up.
//! - [`logging`]: the size-rotated log file and the global tracing subscriber.
//! - [`signals`]: the signals a running process answers, as one stream.
//!
//! File names, log filter variables and the wording of messages belong to the binaries.

#[cfg(unix)]
pub mod daemon;
pub mod logging;
pub mod pidfile;
pub mod signals;
