//! Unix process control: process groups, pseudo-terminals, the build user, rlimits;
//! on Linux also the cookie scan of `/proc`, the subreaper and reaping of adopted orphans.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex, MutexGuard, Once, OnceLock};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::io::unix::AsyncFd;
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};

use super::{COOKIE_VAR, ExecPolicy, RunAs, Sandbox, SpawnSpec, bwrap_argv};

pub(super) mod leftovers;

/// A signal used to stop a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KillSignal(Signal);

impl KillSignal {
    pub const TERM: KillSignal = KillSignal(Signal::SIGTERM);
    pub const KILL: KillSignal = KillSignal(Signal::SIGKILL);

    /// `"KILL"`, `"SIGKILL"` or `"9"`.
    pub fn parse(name: &str) -> Option<KillSignal> {
        let name = name.trim();
        if let Ok(n) = name.parse::<i32>() {
            return Signal::try_from(n).ok().map(KillSignal);
        }
        let upper = name.to_ascii_uppercase();
        let full = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        Signal::from_str(&full).ok().map(KillSignal)
    }

    /// The name without `SIG`, as Buildbot writes it in `SIG<name> failed to kill process`.
    pub fn name(self) -> &'static str {
        self.0.as_str().trim_start_matches("SIG")
    }
}

pub(super) fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

pub(super) fn lookup_user(name: &str) -> Result<RunAs, String> {
    use nix::unistd::{Uid, User};
    let found = match name.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)),
        Err(_) => User::from_name(name),
    };
    let user = found
        .map_err(|e| format!("cannot look up user {name:?}: {e}"))?
        .ok_or_else(|| format!("no such user: {name:?}"))?;
    let gid = user.gid.as_raw();
    #[cfg(not(any(target_os = "macos", target_os = "ios")))]
    let groups = {
        let cname = std::ffi::CString::new(user.name.clone()).map_err(|e| e.to_string())?;
        nix::unistd::getgrouplist(&cname, user.gid)
            .map_err(|e| format!("cannot list the groups of {name:?}: {e}"))?
            .into_iter()
            .map(|g| g.as_raw())
            .collect()
    };
    #[cfg(any(target_os = "macos", target_os = "ios"))]
    let groups = vec![gid];
    Ok(RunAs {
        name: user.name,
        uid: user.uid.as_raw(),
        gid,
        groups,
    })
}

/// Processes this worker spawned (owned by tokio: never reaped here), and processes
/// of build commands to reap once they are our zombie children (pid → start time, so
/// a reused pid is never mistaken for one).
struct Registry {
    spawned: HashSet<i32>,
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    adopted: HashMap<i32, u64>,
}

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(|| {
    Mutex::new(Registry {
        spawned: HashSet::new(),
        adopted: HashMap::new(),
    })
});
static COOKIE_PREFIX: OnceLock<String> = OnceLock::new();
static COOKIE_COUNTER: AtomicU64 = AtomicU64::new(0);

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Unique to this worker process: pid and start time.
fn cookie_prefix() -> &'static str {
    COOKIE_PREFIX.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!("{:x}{:x}", std::process::id(), nanos)
    })
}

pub(super) fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        #[cfg(target_os = "linux")]
        {
            if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
                tracing::warn!("cannot become a child subreaper: {e}; escaped build processes may survive a kill");
            }
            let spawned = std::thread::Builder::new().name("kiln-reaper".into()).spawn(|| {
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(1));
                    linux::reap_adopted();
                }
            });
            if let Err(e) = spawned {
                tracing::warn!("cannot start the reaper thread: {e}");
            }
        }
    });
}

/// A started command.
pub struct Spawned {
    pub child: Child,
    /// Present when [`SpawnSpec::stdin`] was set.
    pub stdin: Option<ChildStdin>,
    /// Under a PTY: the terminal (stdout and stderr together).
    pub stdout: Option<OutputReader>,
    /// `None` under a PTY.
    pub stderr: Option<OutputReader>,
    pub tree: ProcessTree,
}

/// One output stream of a child.
pub enum OutputReader {
    Stdout(ChildStdout),
    Stderr(ChildStderr),
    /// The master side of a pseudo-terminal; `EIO` (no slave left open) is EOF.
    Pty(AsyncFd<OwnedFd>),
}

impl OutputReader {
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            OutputReader::Stdout(r) => r.read(buf).await,
            OutputReader::Stderr(r) => r.read(buf).await,
            OutputReader::Pty(fd) => loop {
                let mut guard = fd.readable().await?;
                match guard.try_io(|inner| {
                    nix::unistd::read(inner.get_ref(), buf).map_err(io::Error::from)
                }) {
                    Ok(Ok(n)) => return Ok(n),
                    Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                    Ok(Err(e)) => return Err(e),
                    Err(_would_block) => continue,
                }
            },
        }
    }
}

/// rlimits to set in the child (already capped at the current hard limits).
#[derive(Debug, Clone, Copy, Default)]
struct ChildLimits {
    memory: Option<libc::rlim_t>,
    processes: Option<libc::rlim_t>,
    open_files: Option<libc::rlim_t>,
    cpu: Option<libc::rlim_t>,
}

impl ChildLimits {
    fn any(&self) -> bool {
        self.memory.is_some()
            || self.processes.is_some()
            || self.open_files.is_some()
            || self.cpu.is_some()
    }
}

/// The file `execvp` would run for `program` with the child's environment `env`:
/// the first executable regular file `<dir>/<program>` along the child's `PATH`.
/// `None` when `program` holds a slash (no search), when the child has no `PATH`
/// or a relative entry comes first (those depend on the child's directory), or
/// when nothing is found (the child's `execvp` then reports the error).
fn resolve_program(program: &OsStr, env: &[(OsString, OsString)]) -> Option<PathBuf> {
    if program.is_empty() || program.as_bytes().contains(&b'/') {
        return None;
    }
    let path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v)?;
    for dir in path.as_bytes().split(|b| *b == b':') {
        if dir.first() != Some(&b'/') {
            return None;
        }
        let candidate = Path::new(OsStr::from_bytes(dir)).join(program);
        if is_executable_file(&candidate) {
            return Some(candidate);
        }
    }
    None
}

fn is_executable_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return false;
    }
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: access reads a NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), libc::X_OK) == 0 }
}

/// `want` capped at the current hard limit of `resource` (a `libc::RLIMIT_*`).
macro_rules! capped {
    ($resource:expr, $want:expr) => {{
        $want.map(|want: u64| {
            let want = want as libc::rlim_t;
            let mut cur = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit writes into a valid rlimit.
            let ok = unsafe { libc::getrlimit($resource, &mut cur) } == 0;
            if ok && cur.rlim_max != libc::RLIM_INFINITY {
                want.min(cur.rlim_max)
            } else {
                want
            }
        })
    }};
}

/// The credentials to switch to in the child.
#[derive(Debug, Clone)]
struct Ids {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
}

/// Runs in the forked child before `exec`: only async-signal-safe system calls,
/// no allocation, no locks.
fn child_setup(pty: bool, limits: &ChildLimits, ids: Option<&Ids>) -> io::Result<()> {
    fn check(r: libc::c_int) -> io::Result<()> {
        if r == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
    // SAFETY: plain system calls on values prepared before the fork.
    unsafe {
        if pty {
            // A new session whose controlling terminal is the PTY on fd 0.
            check(libc::setsid() as libc::c_int)?;
            check(libc::ioctl(0, libc::TIOCSCTTY as _, 0))?;
        }
        let set = |v: libc::rlim_t| libc::rlimit {
            rlim_cur: v,
            rlim_max: v,
        };
        if let Some(v) = limits.memory {
            check(libc::setrlimit(libc::RLIMIT_AS, &set(v)))?;
        }
        if let Some(v) = limits.processes {
            check(libc::setrlimit(libc::RLIMIT_NPROC, &set(v)))?;
        }
        if let Some(v) = limits.open_files {
            check(libc::setrlimit(libc::RLIMIT_NOFILE, &set(v)))?;
        }
        if let Some(v) = limits.cpu {
            check(libc::setrlimit(libc::RLIMIT_CPU, &set(v)))?;
        }
        if let Some(ids) = ids {
            check(libc::setgroups(ids.groups.len() as _, ids.groups.as_ptr()))?;
            check(libc::setgid(ids.gid))?;
            check(libc::setuid(ids.uid))?;
        }
    }
    Ok(())
}

/// A pseudo-terminal: (master, slave), both close-on-exec, master non-blocking.
fn open_pty() -> io::Result<(OwnedFd, OwnedFd)> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    #[cfg(target_os = "linux")]
    let (master, slave) = {
        // Opened close-on-exec from the start: a process spawned meanwhile by another
        // thread must not inherit the slave (it would keep the terminal open).
        use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
        let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
        grantpt(&master)?;
        unlockpt(&master)?;
        let name = ptsname_r(&master)?;
        let slave = nix::fcntl::open(
            name.as_str(),
            OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        (OwnedFd::from(master), slave)
    };
    #[cfg(not(target_os = "linux"))]
    let (master, slave) = {
        let pty = nix::pty::openpty(None, None)?;
        for fd in [&pty.master, &pty.slave] {
            fcntl(fd, FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))?;
        }
        (pty.master, pty.slave)
    };
    let ws = libc::winsize {
        ws_row: 24,
        ws_col: 80,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer.
    unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&slave),
            libc::TIOCSWINSZ as _,
            &ws,
        );
    }
    let flags = OFlag::from_bits_truncate(fcntl(&master, FcntlArg::F_GETFL)?);
    fcntl(&master, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok((master, slave))
}

/// Starts a command in its own process group (or session, under a PTY), with the
/// policy's user, limits and sandbox, and a fresh cookie in its environment.
pub fn spawn(policy: &ExecPolicy, spec: &SpawnSpec) -> io::Result<Spawned> {
    init();
    if spec.argv.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty command"));
    }
    let cookie = format!(
        "{}-{}",
        cookie_prefix(),
        COOKIE_COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let argv: Vec<OsString> = match (&policy.sandbox, &spec.sandbox_dir) {
        (Some(Sandbox::Bwrap { network }), Some(dir)) => {
            bwrap_argv(*network, dir, &spec.cwd, &spec.argv)
        }
        _ => spec.argv.clone(),
    };
    let euid = nix::unistd::geteuid().as_raw();
    let ids = policy
        .run_as
        .as_ref()
        .filter(|r| r.uid != euid)
        .map(|r| Ids {
            uid: r.uid,
            gid: r.gid,
            groups: r.groups.clone(),
        });
    let limits = ChildLimits {
        memory: capped!(libc::RLIMIT_AS, policy.limits.memory),
        processes: capped!(libc::RLIMIT_NPROC, policy.limits.processes),
        open_files: capped!(libc::RLIMIT_NOFILE, policy.limits.open_files),
        cpu: capped!(libc::RLIMIT_CPU, policy.limits.cpu_time),
    };
    // Without anything to do between fork and exec the child can be started with
    // posix_spawn (a vfork: no copy of the worker's page tables), which std does
    // only for a program given by path: look it up in the child's PATH here.
    let setup = spec.use_pty || ids.is_some() || limits.any();
    let resolved = if setup {
        None
    } else {
        resolve_program(&argv[0], &spec.env)
    };

    let mut pty_master = None;
    let mut pty_slave = None;
    if spec.use_pty {
        let (master, slave) = open_pty()?;
        pty_master = Some(master);
        pty_slave = Some(slave);
    }
    let command = |program: &OsStr| -> io::Result<Command> {
        let mut cmd = Command::new(program);
        if program != argv[0].as_os_str() {
            cmd.arg0(&argv[0]);
        }
        cmd.args(&argv[1..])
            .current_dir(&spec.cwd)
            .env_clear()
            .kill_on_drop(true);
        for (k, v) in &spec.env {
            cmd.env(k, v);
        }
        cmd.env(COOKIE_VAR, &cookie);
        if let Some(slave) = &pty_slave {
            cmd.stdin(Stdio::from(slave.try_clone()?))
                .stdout(Stdio::from(slave.try_clone()?))
                .stderr(Stdio::from(slave.try_clone()?));
        } else {
            cmd.stdin(if spec.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
            cmd.process_group(0);
        }
        if setup {
            let pty = spec.use_pty;
            let ids = ids.clone();
            // SAFETY: `child_setup` only makes async-signal-safe system calls.
            unsafe {
                cmd.pre_exec(move || child_setup(pty, &limits, ids.as_ref()));
            }
        }
        Ok(cmd)
    };
    let start = |cmd: &mut Command| -> io::Result<Child> {
        // Registered before the reaper can look: it must never take tokio's children.
        let mut reg = registry();
        let child = cmd.spawn()?;
        let pid = child.id().expect("a child that was just spawned has a pid") as i32;
        reg.spawned.insert(pid);
        Ok(child)
    };
    let mut cmd = command(
        resolved
            .as_ref()
            .map_or(argv[0].as_os_str(), |p| p.as_os_str()),
    )?;
    let mut child = match start(&mut cmd) {
        // posix_spawn does not run a script without `#!` through /bin/sh as
        // execvp does: let execvp have it.
        Err(e) if e.raw_os_error() == Some(libc::ENOEXEC) && !setup => {
            cmd = command(&argv[0])?;
            // SAFETY: does nothing; a pre_exec hook keeps std from using posix_spawn.
            unsafe {
                cmd.pre_exec(|| Ok(()));
            }
            start(&mut cmd)?
        }
        r => r?,
    };
    drop(pty_slave);
    drop(cmd); // closes our copies of the PTY slave
    let pid = child.id().expect("not yet waited for") as i32;
    leftovers::note_group(pid, leader_start(pid));
    let tree = ProcessTree {
        pid,
        cookie,
        known: HashMap::new(),
        reaped: false,
        done: false,
    };
    let (stdout, stderr) = match pty_master {
        Some(master) => {
            // Nobody will type: an end-of-file at the start of the line makes a
            // reader of the terminal see EOF instead of waiting for ever.
            let _ = nix::unistd::write(&master, b"\x04");
            // SAFETY: the AsyncFd owns the OwnedFd, which stays open and the same until dropped.
            let fd =
                unsafe { AsyncFd::register_with_interest(master, tokio::io::Interest::READABLE) }
                    .map_err(|e| e.into_parts().1)?;
            (Some(OutputReader::Pty(fd)), None)
        }
        None => (
            child.stdout.take().map(OutputReader::Stdout),
            child.stderr.take().map(OutputReader::Stderr),
        ),
    };
    let stdin = child.stdin.take();
    Ok(Spawned {
        child,
        stdin,
        stdout,
        stderr,
        tree,
    })
}

/// The start time of a command's group leader for the run record (0: unknown).
fn leader_start(pid: i32) -> u64 {
    #[cfg(target_os = "linux")]
    return linux::stat(pid).map_or(0, |p| p.start);
    #[cfg(not(target_os = "linux"))]
    {
        let _ = pid;
        0
    }
}

/// The members that still need a signal of their own: all of them, unless the
/// command's process group was signalled, which already reached its members.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn outside_group(group: i32, group_signalled: bool, members: &[(i32, u64, i32)]) -> Vec<i32> {
    members
        .iter()
        .filter(|(_, _, pgrp)| !(group_signalled && *pgrp == group))
        .map(|(pid, _, _)| *pid)
        .collect()
}

/// Everything one command started. Dropping it before [`ProcessTree::finish`]
/// kills the whole tree.
pub struct ProcessTree {
    pid: i32,
    cookie: String,
    /// Processes seen in this tree (pid → start time), tracked even once orphaned.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    known: HashMap<i32, u64>,
    /// The main child was waited for: its pid (and group id) may be reused.
    reaped: bool,
    done: bool,
}

impl ProcessTree {
    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// The value of `KILN_COMMAND_COOKIE` in this command's processes.
    pub fn cookie(&self) -> &str {
        &self.cookie
    }

    /// Sends `sig` to every process of the command.
    pub fn signal(&mut self, sig: KillSignal) {
        // Found before anything dies: a dead parent's children are reparented, and the
        // link to them is lost.
        #[cfg(target_os = "linux")]
        let members = linux::members(self.pid, &self.cookie, self.reaped, &mut self.known);
        // Each process gets the signal once: a shell's TERM trap must not run twice.
        let group = Pid::from_raw(self.pid);
        let group_signalled = !self.reaped && killpg(group, sig.0).is_ok();
        if !self.reaped && !group_signalled {
            let _ = kill(group, sig.0);
        }
        #[cfg(target_os = "linux")]
        for p in outside_group(self.pid, group_signalled, &members) {
            let _ = kill(Pid::from_raw(p), sig.0);
        }
    }

    /// SIGKILLs every process of the command. On Linux they are first stopped, and
    /// the search repeated until no new one appears, so a process forking in a loop
    /// cannot outrun the kill.
    pub fn kill_all(&mut self) {
        #[cfg(target_os = "linux")]
        {
            let mut frozen: HashMap<i32, u64> = HashMap::new();
            for _ in 0..50 {
                let fresh: Vec<(i32, u64)> =
                    linux::members(self.pid, &self.cookie, self.reaped, &mut self.known)
                        .into_iter()
                        .map(|(p, start, _)| (p, start))
                        .filter(|(p, start)| frozen.insert(*p, *start).is_none())
                        .collect();
                if fresh.is_empty() {
                    break;
                }
                for (p, _) in fresh {
                    let _ = kill(Pid::from_raw(p), Signal::SIGSTOP);
                }
            }
            if !self.reaped {
                let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
            }
            for p in frozen.keys() {
                let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
            }
            linux::reap_adopted();
        }
        #[cfg(not(target_os = "linux"))]
        if !self.reaped {
            let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        }
    }

    /// The main child has been waited for (by tokio).
    pub fn reaped(&mut self) {
        if !self.reaped {
            self.reaped = true;
            registry().spawned.remove(&self.pid);
        }
    }

    /// The command is over; whatever it left running is left alone (but orphans
    /// that come back to the worker will be reaped).
    pub fn finish(&mut self) {
        self.done = true;
        if self.reaped {
            leftovers::forget_group_if_empty(self.pid);
        }
        #[cfg(target_os = "linux")]
        linux::reap_orphans();
    }
}

impl Drop for ProcessTree {
    fn drop(&mut self) {
        if !self.done {
            self.kill_all();
        }
    }
}

#[cfg(target_os = "linux")]
pub(super) mod linux {
    use std::collections::{HashMap, HashSet};

    use nix::sys::wait::{WaitPidFlag, waitpid};
    use nix::unistd::Pid;

    use super::{COOKIE_VAR, cookie_prefix, registry};

    pub(super) struct Proc {
        pub pid: i32,
        pub ppid: i32,
        pub pgrp: i32,
        pub zombie: bool,
        /// Start time (clock ticks since boot): with the pid, identifies the process.
        pub start: u64,
    }

    pub(super) fn stat(pid: i32) -> Option<Proc> {
        let s = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
        // "pid (comm) state ppid pgrp ..."; comm may hold spaces and parentheses.
        let close = memchr::memrchr(b')', &s)?;
        let rest = std::str::from_utf8(&s[close + 1..]).ok()?;
        let mut f = rest.split_ascii_whitespace();
        let state = f.next()?;
        let ppid = f.next()?.parse().ok()?;
        let pgrp = f.next()?.parse().ok()?;
        // Field 22 (starttime); the next field is 6 (session).
        let start = f.nth(16)?.parse().ok()?;
        Some(Proc {
            pid,
            ppid,
            pgrp,
            zombie: state == "Z" || state == "X",
            start,
        })
    }

    pub(super) fn all() -> Vec<Proc> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter_map(stat)
            .collect()
    }

    pub(super) fn environ(pid: i32) -> Option<Vec<u8>> {
        std::fs::read(format!("/proc/{pid}/environ")).ok()
    }

    /// Whether `env` (NUL-separated) holds the entry `KILN_COMMAND_COOKIE=<value>`;
    /// with `prefix`, any value starting with it.
    pub(super) fn has_cookie(env: &[u8], value: &str, prefix: bool) -> bool {
        let needle = format!("{COOKIE_VAR}={value}");
        memchr::memmem::find_iter(env, needle.as_bytes()).any(|at| {
            let starts_entry = at == 0 || env[at - 1] == 0;
            let end = at + needle.len();
            starts_entry && (prefix || end == env.len() || env[end] == 0)
        })
    }

    /// The live processes of a command: its main process (unless reaped) and group,
    /// every process carrying its cookie, every process seen before (`known`, pid and
    /// start time), and all their descendants. All are added to `known`, and noted
    /// for reaping should they end up as the worker's zombie children.
    /// The command's live processes as (pid, start time, process group).
    pub(super) fn members(
        pid: i32,
        cookie: &str,
        reaped: bool,
        known: &mut HashMap<i32, u64>,
    ) -> Vec<(i32, u64, i32)> {
        let me = std::process::id() as i32;
        let procs = all();
        let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
        for p in &procs {
            children.entry(p.ppid).or_default().push(p.pid);
        }
        let mut found: HashSet<i32> = HashSet::new();
        let mut queue: Vec<i32> = Vec::new();
        for p in &procs {
            if p.pid == me || p.pid <= 1 {
                continue;
            }
            let ours = known.get(&p.pid) == Some(&p.start)
                || (!reaped && (p.pid == pid || p.pgrp == pid))
                || (!p.zombie && environ(p.pid).is_some_and(|e| has_cookie(&e, cookie, false)));
            if ours && found.insert(p.pid) {
                queue.push(p.pid);
            }
        }
        // Descendants (through zombies too: their children are not reparented yet).
        while let Some(p) = queue.pop() {
            for &c in children.get(&p).into_iter().flatten() {
                if c != me && found.insert(c) {
                    queue.push(c);
                }
            }
        }
        let members: Vec<&Proc> = procs.iter().filter(|p| found.contains(&p.pid)).collect();
        let mut reg = registry();
        for p in &members {
            known.insert(p.pid, p.start);
            if !reg.spawned.contains(&p.pid) {
                reg.adopted.insert(p.pid, p.start);
            }
        }
        members
            .iter()
            .filter(|p| !p.zombie)
            .map(|p| (p.pid, p.start, p.pgrp))
            .collect()
    }

    /// Children of the worker's main thread, where orphans are reparented (the
    /// subreaper's first live thread), from `/proc/self/task/<pid>/children`; `None`
    /// when that file cannot be read.
    fn children_of_main_thread() -> Option<Vec<i32>> {
        use std::io::Read;
        let mut f =
            std::fs::File::open(format!("/proc/self/task/{}/children", std::process::id())).ok()?;
        // Read by hand: read_to_string would stat the file first, for nothing.
        let mut text = Vec::new();
        let mut chunk = [0u8; 512];
        loop {
            match f.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => text.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
        Some(
            text.split(|b| b.is_ascii_whitespace())
                .filter_map(|p| std::str::from_utf8(p).ok()?.parse::<i32>().ok())
                .collect(),
        )
    }

    /// The worker's children, from `/proc/self/task/*/children` (or a full scan).
    fn children_of_self() -> Vec<i32> {
        let mut out = Vec::new();
        let mut ok = false;
        if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
            for t in tasks.flatten() {
                if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                    ok = true;
                    out.extend(
                        s.split_ascii_whitespace()
                            .filter_map(|p| p.parse::<i32>().ok()),
                    );
                }
            }
        }
        if !ok {
            let me = std::process::id() as i32;
            out = all()
                .into_iter()
                .filter(|p| p.ppid == me)
                .map(|p| p.pid)
                .collect();
        }
        out
    }

    /// Reaps orphans of build commands that were reparented to the worker (it is a
    /// subreaper). Only pids known to be such orphans are waited for, never tokio's
    /// children and never with `waitpid(-1)`: a process seen alive with one of our
    /// cookies, or a zombie child outside the worker's own process group. Every
    /// child the worker makes itself is either [`spawn`]'s (registered, left to
    /// tokio) or a plain `Command` (doctor's compiler, `sysctl`), which stays in the
    /// worker's group; so a zombie child in another group that `spawn` did not make
    /// can only be a build's orphan. That rule needs no earlier sighting: an orphan
    /// adopted after the last scan (or while its environment was unreadable, in the
    /// middle of an `exec`) and dead before the next would otherwise stay a zombie.
    pub(super) fn reap_adopted() {
        reap(children_of_self());
    }

    /// [`reap_adopted`] for the end of a command, looking only where orphans go:
    /// the children of the main thread (the reaper thread still looks at all).
    pub(super) fn reap_orphans() {
        reap(children_of_main_thread().unwrap_or_else(children_of_self));
    }

    fn reap(kids: Vec<i32>) {
        let worker_group = nix::unistd::getpgrp().as_raw();
        let mut reg = registry();
        for pid in kids {
            if reg.spawned.contains(&pid) {
                continue;
            }
            let Some(p) = stat(pid) else { continue };
            if p.zombie {
                if reg.adopted.get(&pid) == Some(&p.start) || p.pgrp != worker_group {
                    let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
                    reg.adopted.remove(&pid);
                }
            } else if !reg.adopted.contains_key(&pid)
                && environ(pid).is_some_and(|e| has_cookie(&e, cookie_prefix(), true))
            {
                reg.adopted.insert(pid, p.start);
            }
        }
        // Forget processes that are gone (reaped above, or by their own parent).
        reg.adopted
            .retain(|p, start| stat(*p).is_some_and(|s| s.start == *start));
    }

    #[cfg(test)]
    mod tests {
        use super::{children_of_main_thread, has_cookie, stat};

        #[test]
        fn the_main_threads_children_are_readable() {
            // The test runs on a thread of its own; the file of the main thread is there.
            assert!(children_of_main_thread().is_some());
        }

        #[test]
        fn stat_fields() {
            let me = std::process::id() as i32;
            let p = stat(me).unwrap();
            let raw = std::fs::read_to_string("/proc/self/stat").unwrap();
            let fields: Vec<&str> = raw.rsplit(')').next().unwrap().split_whitespace().collect();
            // fields[0] is field 3 (state).
            assert_eq!(p.ppid.to_string(), fields[1]);
            assert_eq!(p.pgrp.to_string(), fields[2]);
            assert_eq!(p.start.to_string(), fields[19]);
            assert!(!p.zombie);
        }

        #[test]
        fn cookie_entries_match_exactly() {
            let env = b"A=1\0KILN_COMMAND_COOKIE=ab-12\0B=2\0";
            assert!(has_cookie(env, "ab-12", false));
            assert!(!has_cookie(env, "ab-1", false));
            assert!(has_cookie(env, "ab-", true));
            assert!(!has_cookie(b"XKILN_COMMAND_COOKIE=ab-12\0", "ab-12", false));
            assert!(has_cookie(b"KILN_COMMAND_COOKIE=ab-12", "ab-12", false));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{outside_group, resolve_program};
    use std::ffi::OsString;
    use std::path::PathBuf;

    #[test]
    fn programs_resolve_along_the_childs_path_only_when_execvp_would_agree() {
        let env = |path: &str| {
            vec![
                (OsString::from("HOME"), OsString::from("/")),
                (OsString::from("PATH"), OsString::from(path)),
            ]
        };
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        assert_eq!(
            resolve_program("sh".as_ref(), &env(&format!("{d}:/bin:/usr/bin"))),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(
            resolve_program("sh".as_ref(), &env("rel:/bin")),
            None,
            "a relative entry depends on the child's cwd"
        );
        assert_eq!(
            resolve_program("sh".as_ref(), &env(":/bin")),
            None,
            "an empty entry is the child's cwd"
        );
        assert_eq!(
            resolve_program("/bin/sh".as_ref(), &env("/bin")),
            None,
            "a path is not searched"
        );
        assert_eq!(
            resolve_program("sh".as_ref(), &[]),
            None,
            "no PATH: execvp's default"
        );
        assert_eq!(
            resolve_program("no-such-program-kiln".as_ref(), &env("/bin:/usr/bin")),
            None
        );
        std::fs::create_dir(dir.path().join("sh")).unwrap();
        assert_eq!(
            resolve_program("sh".as_ref(), &env(&format!("{d}:/bin"))),
            Some(PathBuf::from("/bin/sh")),
            "a directory is passed over"
        );
    }

    #[test]
    fn a_signalled_group_is_not_signalled_again_member_by_member() {
        // (pid, start, pgrp): 10 leads the group, 11 is in it, 12 escaped with setsid.
        let members = [(10, 1, 10), (11, 2, 10), (12, 3, 12)];
        assert_eq!(
            outside_group(10, true, &members),
            vec![12],
            "each process gets the signal once"
        );
        assert_eq!(
            outside_group(10, false, &members),
            vec![10, 11, 12],
            "without the group signal, everyone individually"
        );
    }
}
