//! The run record: what a running worker started, kept in its base directory, so
//! that the next run can kill what a crashed (or `kill -9`ed) run left running.
//!
//! A worker killed mid-build cannot kill its build's processes: they are reparented
//! to init and go on running next to the retried build, in the same directory. So a
//! run writes [`RUN_RECORD_FILE`](super::super::RUN_RECORD_FILE) in its base
//! directory: the boot id, the cookie prefix of its commands (`KILN_COMMAND_COOKIE`
//! is `<prefix>-<n>`) and, as commands start, their process groups with the start
//! time of each group's leader (and, as commands finish with nothing left in their
//! group, that the group ended). The next run reads it before it connects and kills:
//!
//! * Linux: every process carrying the previous run's cookie; every process in one
//!   of its recorded groups once the group is proven to be still ours (its leader
//!   alive with the recorded start time, or a member carrying the cookie: a group id
//!   cannot be reused while the group has members); and their descendants.
//! * other Unixes (no `/proc`): the recorded process groups, when the boot is the
//!   same. A group id reused by another process within the same boot is not told
//!   apart there.
//!
//! A record from another boot kills nothing: nothing of that boot still runs, and
//! its ids may be anyone's now. A record that cannot be read is reported and
//! ignored. A clean exit kills what its commands left and removes the record.
//!
//! Builds run as another user (`run_as`) are killed with the privilege the worker
//! started them with (root). The bubblewrap sandbox needs nothing here: it runs with
//! `--die-with-parent`, so its PID namespace dies with the worker.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::super::RUN_RECORD_FILE;
use super::cookie_prefix;

/// The first line of a record; another first line means the file is not one.
const MAGIC: &str = "kiln-worker run record 1";

/// How long left processes get to exit on SIGTERM before they are SIGKILLed.
const TERM_GRACE: Duration = Duration::from_secs(2);

/// How long to wait for SIGKILLed processes to be gone.
const KILL_WAIT: Duration = Duration::from_secs(2);

/// The record is rewritten with only the live groups once it lists this many.
const COMPACT_AT: usize = 1024;

/// What one worker run started (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    /// The boot the run happened in; `None` where the system does not say.
    pub boot: Option<String>,
    /// The prefix of the run's command cookies (a cookie is `<prefix>-<n>`).
    pub cookie_prefix: String,
    /// The worker process of that run.
    pub worker_pid: u32,
    /// The process groups of its commands, in the order they were created.
    pub groups: Vec<Group>,
}

/// A command's process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Group {
    pub pgid: i32,
    /// The leader's start time (clock ticks since boot, Linux); 0: unknown.
    pub leader_start: u64,
}

impl Record {
    /// The record of this worker process.
    fn of_this_run() -> Record {
        Record {
            boot: boot_id(),
            cookie_prefix: cookie_prefix().to_owned(),
            worker_pid: std::process::id(),
            groups: Vec::new(),
        }
    }

    pub(crate) fn to_text(&self) -> String {
        let mut text = format!(
            "{MAGIC}\nboot {}\ncookie {}\nworker {}\n",
            self.boot.as_deref().unwrap_or("unknown"),
            self.cookie_prefix,
            self.worker_pid
        );
        for g in &self.groups {
            text.push_str(&g.line());
        }
        text
    }

    /// Reads a record. A last line without its newline is a group line the crashed
    /// run was writing when it died: it is dropped.
    pub(crate) fn parse(text: &str) -> Result<Record, String> {
        let complete = match text.rfind('\n') {
            Some(end) => &text[..end],
            None => "",
        };
        let mut lines = complete.lines();
        if lines.next() != Some(MAGIC) {
            return Err(format!("it does not start with {MAGIC:?}"));
        }
        let mut boot = None;
        let mut cookie = None;
        let mut worker_pid = None;
        let mut groups = Vec::new();
        for (n, line) in lines.enumerate() {
            let bad = || format!("line {} is not understood: {line:?}", n + 2);
            let (key, value) = line.split_once(' ').ok_or_else(bad)?;
            match key {
                "boot" => boot = Some((value != "unknown").then(|| value.to_owned())),
                "cookie" if !value.is_empty() && !value.contains(char::is_whitespace) => {
                    cookie = Some(value.to_owned())
                }
                "worker" => worker_pid = Some(value.parse().map_err(|_| bad())?),
                "group" => {
                    let (pgid, start) = value.split_once(' ').ok_or_else(bad)?;
                    let pgid: i32 = pgid.parse().map_err(|_| bad())?;
                    if pgid <= 1 {
                        return Err(bad());
                    }
                    groups.push(Group {
                        pgid,
                        leader_start: start.parse().map_err(|_| bad())?,
                    });
                }
                // The group emptied when its command finished: its id is free for
                // anyone's use from then on.
                "ended" => {
                    let pgid: i32 = value.parse().map_err(|_| bad())?;
                    groups.retain(|g| g.pgid != pgid);
                }
                _ => return Err(bad()),
            }
        }
        let missing = |what: &str| format!("it has no {what} line");
        Ok(Record {
            boot: boot.ok_or_else(|| missing("boot"))?,
            cookie_prefix: cookie.ok_or_else(|| missing("cookie"))?,
            worker_pid: worker_pid.ok_or_else(|| missing("worker"))?,
            groups,
        })
    }

    /// The value every cookie of the run starts with.
    #[cfg(target_os = "linux")]
    fn cookie_start(&self) -> String {
        format!("{}-", self.cookie_prefix)
    }
}

impl Group {
    fn line(&self) -> String {
        format!("group {} {}\n", self.pgid, self.leader_start)
    }
}

/// This boot's identity: Linux's random boot id, the BSDs' and macOS's boot time.
pub(crate) fn boot_id() -> Option<String> {
    #[cfg(target_os = "linux")]
    {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    }
    #[cfg(any(target_os = "macos", target_os = "freebsd"))]
    {
        let mut tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        };
        let mut len = std::mem::size_of::<libc::timeval>();
        // SAFETY: sysctlbyname writes at most `len` bytes into a valid timeval.
        let r = unsafe {
            libc::sysctlbyname(
                c"kern.boottime".as_ptr(),
                (&mut tv as *mut libc::timeval).cast(),
                &mut len,
                std::ptr::null_mut(),
                0,
            )
        };
        (r == 0).then(|| format!("boottime-{}.{:06}", tv.tv_sec, tv.tv_usec))
    }
    #[cfg(not(any(target_os = "linux", target_os = "macos", target_os = "freebsd")))]
    {
        None
    }
}

// ---- the previous run ----

/// Reads the previous run's record in `basedir`, if any, and kills what it left
/// running. Never fails: what goes wrong is logged.
pub(crate) fn kill_previous_run(basedir: &Path) {
    let path = basedir.join(RUN_RECORD_FILE);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return,
        Err(e) => {
            tracing::warn!(
                "cannot read {}: {e}; ignoring it (build processes of the previous run, if any, \
                 are left running; check the file's owner and permissions)",
                path.display()
            );
            return;
        }
    };
    let record = match Record::parse(&String::from_utf8_lossy(&text)) {
        Ok(record) => record,
        Err(why) => {
            tracing::warn!(
                "{} is not a readable run record ({why}); ignoring it (build processes of the \
                 previous run, if any, are left running)",
                path.display()
            );
            return;
        }
    };
    tracing::info!(
        "the previous run (pid {}) did not exit cleanly ({} is left); looking for build processes it left running",
        record.worker_pid,
        path.display()
    );
    let now = boot_id();
    if record.boot.is_none() || record.boot != now {
        tracing::info!(
            "{} was written during another boot ({}, this one is {}): nothing of that run still runs; killing nothing",
            path.display(),
            record.boot.as_deref().unwrap_or("unknown"),
            now.as_deref().unwrap_or("unknown"),
        );
        return;
    }
    sweep(&record, "the previous run");
}

/// Kills what `record`'s run left running (`whose` names the run in the log).
fn sweep(record: &Record, whose: &str) {
    #[cfg(target_os = "linux")]
    linux_sweep::sweep(record, whose);
    #[cfg(not(target_os = "linux"))]
    sweep_groups(record, whose);
}

/// Other Unixes: the recorded groups, TERM then KILL.
#[cfg(not(target_os = "linux"))]
fn sweep_groups(record: &Record, whose: &str) {
    let mut groups: Vec<i32> = record.groups.iter().map(|g| g.pgid).collect();
    groups.sort_unstable();
    groups.dedup();
    groups.retain(|g| group_exists(*g));
    for g in &groups {
        tracing::warn!(
            "killing process group {g}, left running by {whose} (recognised by the process group \
             recorded in {RUN_RECORD_FILE} during this boot)"
        );
        signal_group(*g, Signal::SIGTERM);
    }
    wait_for(TERM_GRACE, || !groups.iter().any(|g| group_exists(*g)));
    groups.retain(|g| group_exists(*g));
    for g in &groups {
        tracing::warn!("process group {g} did not stop on SIGTERM: sending SIGKILL");
        let _ = killpg(Pid::from_raw(*g), Signal::SIGKILL);
    }
    if !wait_for(KILL_WAIT, || !groups.iter().any(|g| group_exists(*g))) {
        tracing::warn!("process groups left by {whose} survived SIGKILL: {groups:?}");
    }
}

/// Whether a process group has members (one we may not signal still counts).
fn group_exists(pgid: i32) -> bool {
    !matches!(
        killpg(Pid::from_raw(pgid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// TERM (then CONT, so a stopped process gets it) to a whole group.
#[cfg_attr(target_os = "linux", allow(dead_code))]
fn signal_group(pgid: i32, sig: Signal) {
    if let Err(e) = killpg(Pid::from_raw(pgid), sig) {
        tracing::warn!(
            "cannot signal process group {pgid}: {e} (the worker needs the privilege it had when \
             it started the build, e.g. root for run_as builds)"
        );
    }
    let _ = killpg(Pid::from_raw(pgid), Signal::SIGCONT);
}

/// Polls `gone` every 50 ms until it says yes or `limit` passes; whether it did.
fn wait_for(limit: Duration, mut gone: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if gone() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Linux: find by cookie, group and parentage in `/proc`; plan, then signal.
#[cfg(target_os = "linux")]
pub(crate) mod linux_sweep {
    use std::collections::{HashMap, HashSet};
    use std::fmt;

    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    use super::super::linux::{all, environ, has_cookie, stat};
    use super::{KILL_WAIT, Record, TERM_GRACE, wait_for};

    /// A process as the plan sees it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) struct Seen {
        pub pid: i32,
        pub ppid: i32,
        pub pgrp: i32,
        pub start: u64,
        pub zombie: bool,
        /// Its environment carries a cookie of the recorded run.
        pub cookie: bool,
    }

    /// How a left process was recognised as the recorded run's.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Why {
        Cookie,
        Group(i32),
        ChildOf(i32),
    }

    impl fmt::Display for Why {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                Why::Cookie => write!(f, "its environment carries the run's KILN_COMMAND_COOKIE"),
                Why::Group(g) => write!(f, "it is in process group {g}, recorded by the run"),
                Why::ChildOf(p) => write!(f, "its parent, pid {p}, was left by the run"),
            }
        }
    }

    /// A process to kill: pid and start time (to never signal a reused pid).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct Target {
        pub pid: i32,
        pub start: u64,
        pub why: Why,
    }

    /// Which of `procs` the recorded run left (pure): processes carrying its cookie,
    /// members of its groups still proven ours, and their descendants; never `me`,
    /// init or a zombie (it is dead already).
    pub(crate) fn plan(record: &Record, procs: &[Seen], me: i32) -> Vec<Target> {
        let candidate = |p: &Seen| p.pid != me && p.pid > 1;
        // A group is still ours while its leader lives (same start time), or while a
        // member carries the cookie: a group id is not reused while it has members.
        let proven: HashSet<i32> = record
            .groups
            .iter()
            .filter(|g| {
                procs.iter().any(|p| {
                    p.pgrp == g.pgid
                        && ((p.pid == g.pgid && g.leader_start != 0 && p.start == g.leader_start)
                            || p.cookie)
                })
            })
            .map(|g| g.pgid)
            .collect();
        let mut found: HashMap<i32, Why> = HashMap::new();
        let mut queue = Vec::new();
        for p in procs.iter().filter(|p| candidate(p)) {
            let why = if p.cookie {
                Why::Cookie
            } else if proven.contains(&p.pgrp) {
                Why::Group(p.pgrp)
            } else {
                continue;
            };
            found.insert(p.pid, why);
            queue.push(p.pid);
        }
        let mut children: HashMap<i32, Vec<&Seen>> = HashMap::new();
        for p in procs {
            children.entry(p.ppid).or_default().push(p);
        }
        while let Some(parent) = queue.pop() {
            for c in children.get(&parent).into_iter().flatten() {
                if candidate(c) && !found.contains_key(&c.pid) {
                    found.insert(c.pid, Why::ChildOf(parent));
                    queue.push(c.pid);
                }
            }
        }
        let mut targets: Vec<Target> = procs
            .iter()
            .filter(|p| !p.zombie)
            .filter_map(|p| {
                found.get(&p.pid).map(|why| Target {
                    pid: p.pid,
                    start: p.start,
                    why: *why,
                })
            })
            .collect();
        targets.sort_by_key(|t| t.pid);
        targets
    }

    /// Every process, with whether it carries one of `record`'s cookies.
    fn snapshot(record: &Record) -> Vec<Seen> {
        let cookie = record.cookie_start();
        all()
            .into_iter()
            .map(|p| Seen {
                cookie: !p.zombie && environ(p.pid).is_some_and(|e| has_cookie(&e, &cookie, true)),
                pid: p.pid,
                ppid: p.ppid,
                pgrp: p.pgrp,
                start: p.start,
                zombie: p.zombie,
            })
            .collect()
    }

    /// The process's command line for the log, at most 200 characters.
    fn command_line(pid: i32) -> String {
        const MAX: usize = 200;
        let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let text = String::from_utf8_lossy(&raw).replace('\0', " ");
        let text = text.trim_end();
        if text.chars().count() > MAX {
            let cut: String = text.chars().take(MAX).collect();
            format!("{cut}…")
        } else {
            text.to_owned()
        }
    }

    fn alive(t: &Target) -> bool {
        stat(t.pid).is_some_and(|p| !p.zombie && p.start == t.start)
    }

    fn signal(t: &Target, sig: Signal) {
        if let Err(e) = kill(Pid::from_raw(t.pid), sig) {
            tracing::warn!(
                "cannot send {sig} to pid {}: {e} (the worker needs the privilege it had when it \
                 started the build, e.g. root for run_as builds)",
                t.pid
            );
        }
    }

    pub(super) fn sweep(record: &Record, whose: &str) {
        let me = std::process::id() as i32;
        let targets = plan(record, &snapshot(record), me);
        if targets.is_empty() {
            tracing::info!("nothing {whose} started is still running");
            return;
        }
        for t in &targets {
            tracing::warn!(
                "killing pid {} left running by {whose}: {:?} (recognised: {})",
                t.pid,
                command_line(t.pid),
                t.why
            );
            signal(t, Signal::SIGTERM);
            // A stopped process acts on SIGTERM only once continued.
            let _ = kill(Pid::from_raw(t.pid), Signal::SIGCONT);
        }
        wait_for(TERM_GRACE, || !targets.iter().any(alive));
        // A second look: what ignored SIGTERM, and anything forked meanwhile.
        let stubborn: Vec<Target> = plan(record, &snapshot(record), me)
            .into_iter()
            .filter(alive)
            .collect();
        for t in &stubborn {
            tracing::warn!(
                "pid {} ({:?}) is still running after SIGTERM: sending SIGKILL",
                t.pid,
                command_line(t.pid)
            );
            signal(t, Signal::SIGKILL);
        }
        let gone = wait_for(KILL_WAIT, || !stubborn.iter().any(alive));
        let left: Vec<i32> = stubborn
            .iter()
            .filter(|t| alive(t))
            .map(|t| t.pid)
            .collect();
        if gone {
            tracing::info!("killed {} build processes left by {whose}", targets.len());
        } else {
            tracing::warn!("build processes left by {whose} survived SIGKILL: {left:?}");
        }
    }
}

// ---- this run ----

/// This run's record: the open file (appended to as groups are made) and its contents.
struct Open {
    path: PathBuf,
    file: File,
    record: Record,
    /// Compact again once the record lists this many groups.
    compact_at: usize,
}

static THIS_RUN: Mutex<Option<Open>> = Mutex::new(None);

fn this_run() -> MutexGuard<'static, Option<Open>> {
    THIS_RUN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts this run's record in `basedir` (replacing the previous run's): from now
/// on every command's process group is noted in it.
pub(crate) fn start_record(basedir: &Path) -> io::Result<()> {
    let path = basedir.join(RUN_RECORD_FILE);
    let record = Record::of_this_run();
    write_atomically(&path, &record.to_text())?;
    let file = OpenOptions::new().append(true).open(&path)?;
    *this_run() = Some(Open {
        path,
        file,
        record,
        compact_at: COMPACT_AT,
    });
    Ok(())
}

/// Notes a new command's process group (a no-op without a record, e.g. in tests of
/// the library). One `write` per line in append mode: a crash leaves at most a
/// partial last line, which [`Record::parse`] drops. Not fsync'd: the record only
/// matters while this boot lasts, and the page cache outlives a killed worker.
pub(super) fn note_group(pgid: i32, leader_start: u64) {
    let mut guard = this_run();
    let Some(open) = guard.as_mut() else { return };
    let group = Group { pgid, leader_start };
    open.record.groups.push(group);
    if let Err(e) = open.file.write_all(group.line().as_bytes()) {
        tracing::warn!(
            "cannot write to {}: {e}; should the worker crash, this build's processes may be left running",
            open.path.display()
        );
    }
    if open.record.groups.len() >= open.compact_at {
        compact(open);
    }
}

/// Notes that a finished command's group is empty, so a later group that reuses
/// its id is never taken for it. (A group with leftovers stays: its id cannot be
/// reused while it has members; compaction drops it once it is empty.)
pub(super) fn forget_group_if_empty(pgid: i32) {
    let mut guard = this_run();
    let Some(open) = guard.as_mut() else { return };
    if group_exists(pgid) {
        return;
    }
    open.record.groups.retain(|g| g.pgid != pgid);
    let _ = open.file.write_all(format!("ended {pgid}\n").as_bytes());
}

/// Rewrites the record with only the groups that still have members, so a worker
/// that runs for months keeps a small record.
fn compact(open: &mut Open) {
    open.record.groups.retain(|g| group_exists(g.pgid));
    open.compact_at = (open.record.groups.len() * 2).max(COMPACT_AT);
    let reopened = write_atomically(&open.path, &open.record.to_text())
        .and_then(|()| OpenOptions::new().append(true).open(&open.path));
    match reopened {
        Ok(file) => open.file = file,
        Err(e) => tracing::warn!("cannot rewrite {}: {e}", open.path.display()),
    }
}

/// The clean end of this run: kills what its commands left running (a clean exit
/// leaves nothing for the next run to find) and removes the record.
pub(crate) fn end_record() {
    let Some(open) = this_run().take() else {
        return;
    };
    drop(open.file);
    sweep(&open.record, "this run's finished builds");
    if let Err(e) = std::fs::remove_file(&open.path) {
        tracing::warn!(
            "cannot remove {}: {e}; the next start will look for leftovers in vain",
            open.path.display()
        );
    }
}

/// Writes `path` whole or not at all: a temporary file, fsync'd, renamed over it,
/// then the directory fsync'd so the rename itself is durable.
fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("record")
    ));
    crate::config::write_private(&tmp, text.as_bytes())?;
    std::fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            boot: Some("b00t".into()),
            cookie_prefix: "abc".into(),
            worker_pid: 42,
            groups: vec![
                Group {
                    pgid: 100,
                    leader_start: 7,
                },
                Group {
                    pgid: 200,
                    leader_start: 9,
                },
            ],
        }
    }

    #[test]
    fn a_record_reads_back_and_a_partial_last_line_is_dropped() {
        let r = record();
        assert_eq!(Record::parse(&r.to_text()), Ok(r.clone()));
        let torn = format!("{}group 30", r.to_text());
        assert_eq!(Record::parse(&torn), Ok(r.clone()));
        let ended = format!("{}ended 100\n", r.to_text());
        assert_eq!(
            Record::parse(&ended).unwrap().groups,
            vec![r.groups[1]],
            "an emptied group is no longer the run's"
        );
    }

    #[test]
    fn a_damaged_record_is_refused_with_the_reason() {
        assert!(Record::parse("").unwrap_err().contains(MAGIC));
        assert!(Record::parse("hello\n").unwrap_err().contains(MAGIC));
        let no_cookie = format!("{MAGIC}\nboot x\nworker 1\n");
        assert!(Record::parse(&no_cookie).unwrap_err().contains("cookie"));
        let bad_group = format!("{MAGIC}\nboot x\ncookie c\nworker 1\ngroup 1 0\n");
        assert!(Record::parse(&bad_group).unwrap_err().contains("line 5"));
        let unknown = format!("{MAGIC}\nboot unknown\ncookie c\nworker 1\n");
        assert_eq!(Record::parse(&unknown).unwrap().boot, None);
    }

    #[test]
    fn compaction_keeps_the_live_groups_and_appending_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(RUN_RECORD_FILE);
        let live = nix::unistd::getpgrp().as_raw();
        // Far above any pid_max: no such group.
        let dead = 1_999_999_999;
        let mut record = record();
        record.groups = vec![
            Group {
                pgid: dead,
                leader_start: 1,
            },
            Group {
                pgid: live,
                leader_start: 2,
            },
        ];
        write_atomically(&path, &record.to_text()).unwrap();
        let mut open = Open {
            file: OpenOptions::new().append(true).open(&path).unwrap(),
            path: path.clone(),
            record,
            compact_at: 2,
        };
        compact(&mut open);
        let kept = Record::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(
            kept.groups.iter().map(|g| g.pgid).collect::<Vec<_>>(),
            vec![live]
        );
        assert_eq!(open.compact_at, COMPACT_AT);
        open.file
            .write_all(
                Group {
                    pgid: 77,
                    leader_start: 3,
                }
                .line()
                .as_bytes(),
            )
            .unwrap();
        let grown = Record::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(grown.groups.len(), 2, "appends go to the rewritten file");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_plan_takes_cookies_proven_groups_and_their_children() {
        use linux_sweep::{Seen, Target, Why, plan};
        let p = |pid, ppid, pgrp, start, cookie| Seen {
            pid,
            ppid,
            pgrp,
            start,
            zombie: false,
            cookie,
        };
        let procs = vec![
            // Group 100: its leader lives with the recorded start time; 101 cleared its env.
            p(100, 1, 100, 7, true),
            p(101, 100, 100, 8, false),
            // A setsid'd daemon with the cookie, and its env-clearing child.
            p(300, 1, 300, 10, true),
            p(301, 300, 300, 11, false),
            // Group 200 was reused: leader start differs and nobody has the cookie.
            p(200, 1, 200, 99, false),
            p(201, 200, 200, 100, false),
            // Strangers, the worker itself, init.
            p(500, 1, 500, 5, false),
            p(42, 1, 42, 1, false),
            p(1, 0, 1, 0, false),
        ];
        let got = plan(&record(), &procs, 42);
        let t = |pid, start, why| Target { pid, start, why };
        assert_eq!(
            got,
            vec![
                t(100, 7, Why::Cookie),
                t(101, 8, Why::Group(100)),
                t(300, 10, Why::Cookie),
                t(301, 11, Why::ChildOf(300)),
            ]
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_group_whose_leader_is_gone_is_ours_only_with_a_cookie_member() {
        use linux_sweep::{Seen, plan};
        let p = |pid, pgrp, cookie| Seen {
            pid,
            ppid: 1,
            pgrp,
            start: 50,
            zombie: false,
            cookie,
        };
        // Leader 100 is gone; 102 cleared its environment, 103 did not.
        let with_cookie = vec![p(102, 100, false), p(103, 100, true)];
        let pids = |v: &[Seen]| {
            plan(&record(), v, 42)
                .iter()
                .map(|t| t.pid)
                .collect::<Vec<_>>()
        };
        assert_eq!(pids(&with_cookie), vec![102, 103]);
        let without = vec![p(102, 100, false)];
        assert_eq!(
            pids(&without),
            Vec::<i32>::new(),
            "not proven ours: left alone"
        );
    }
}
