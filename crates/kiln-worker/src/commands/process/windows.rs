//! Windows process control: every command runs in its own job object
//! (`KILL_ON_JOB_CLOSE`); killing terminates the job, i.e. the whole tree
//! (the child is assigned right after it starts, as Buildbot does).
//!
//! A worker that crashes or is killed needs no run record here: the system closes
//! a dead process's handles, the last handle of each job goes with them, and
//! `KILL_ON_JOB_CLOSE` then kills every process in the job. Nothing of its builds
//! is left for the next start to find.

use std::io;
use std::process::Stdio;

use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use windows_sys::Win32::Foundation::{CloseHandle, HANDLE};
use windows_sys::Win32::System::JobObjects::{
    AssignProcessToJobObject, CreateJobObjectW, JOB_OBJECT_LIMIT_ACTIVE_PROCESS,
    JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE, JOB_OBJECT_LIMIT_PROCESS_MEMORY,
    JOBOBJECT_EXTENDED_LIMIT_INFORMATION, JobObjectExtendedLimitInformation,
    SetInformationJobObject, TerminateJobObject,
};

use super::{COOKIE_VAR, ExecPolicy, RunAs, SpawnSpec};

/// A way to stop a command; on Windows every signal terminates the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KillSignal(&'static str);

impl KillSignal {
    pub const TERM: KillSignal = KillSignal("TERM");
    pub const KILL: KillSignal = KillSignal("KILL");

    pub fn parse(name: &str) -> Option<KillSignal> {
        let upper = name.trim().to_ascii_uppercase();
        match upper.trim_start_matches("SIG") {
            "TERM" | "15" => Some(KillSignal::TERM),
            "KILL" | "9" => Some(KillSignal::KILL),
            "INT" | "2" => Some(KillSignal("INT")),
            "HUP" | "1" => Some(KillSignal("HUP")),
            "QUIT" | "3" => Some(KillSignal("QUIT")),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        self.0
    }
}

pub(super) fn running_as_root() -> bool {
    false
}

pub(super) fn lookup_user(name: &str) -> Result<RunAs, String> {
    Err(format!(
        "running build processes as another user ({name:?}) is not supported on Windows"
    ))
}

pub(super) fn init() {}

pub struct Spawned {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<OutputReader>,
    pub stderr: Option<OutputReader>,
    pub tree: ProcessTree,
}

pub enum OutputReader {
    Stdout(ChildStdout),
    Stderr(ChildStderr),
}

impl OutputReader {
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            OutputReader::Stdout(r) => r.read(buf).await,
            OutputReader::Stderr(r) => r.read(buf).await,
        }
    }
}

fn create_job(policy: &ExecPolicy) -> io::Result<HANDLE> {
    // SAFETY: plain Win32 calls; the info struct is fully initialised (zeroed) and outlives the call.
    unsafe {
        let job = CreateJobObjectW(std::ptr::null(), std::ptr::null());
        if job.is_null() {
            return Err(io::Error::last_os_error());
        }
        let mut info: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = std::mem::zeroed();
        info.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
        if let Some(m) = policy.limits.memory {
            info.BasicLimitInformation.LimitFlags |= JOB_OBJECT_LIMIT_PROCESS_MEMORY;
            info.ProcessMemoryLimit = m as usize;
        }
        if let Some(n) = policy.limits.processes {
            info.BasicLimitInformation.LimitFlags |= JOB_OBJECT_LIMIT_ACTIVE_PROCESS;
            info.BasicLimitInformation.ActiveProcessLimit = n.min(u32::MAX as u64) as u32;
        }
        let ok = SetInformationJobObject(
            job,
            JobObjectExtendedLimitInformation,
            &info as *const _ as *const core::ffi::c_void,
            std::mem::size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32,
        );
        if ok == 0 {
            let e = io::Error::last_os_error();
            CloseHandle(job);
            return Err(e);
        }
        Ok(job)
    }
}

/// Starts a command in a new job object. `use_pty` and the sandbox are not
/// available on Windows (the caller warns about the PTY).
pub fn spawn(policy: &ExecPolicy, spec: &SpawnSpec) -> io::Result<Spawned> {
    if spec.argv.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty command"));
    }
    let job = create_job(policy)?;
    let tree_job = JobHandle(job as isize);
    let mut cmd = Command::new(&spec.argv[0]);
    cmd.args(&spec.argv[1..])
        .current_dir(&spec.cwd)
        .env_clear()
        .kill_on_drop(true);
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    cmd.env(COOKIE_VAR, format!("{}-{}", std::process::id(), tree_job.0));
    cmd.stdin(if spec.stdin {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    if let Some(h) = child.raw_handle() {
        // SAFETY: both handles are valid for the duration of the call.
        unsafe {
            AssignProcessToJobObject(job, h as HANDLE);
        }
    }
    let pid = child.id().unwrap_or(0);
    let stdout = child.stdout.take().map(OutputReader::Stdout);
    let stderr = child.stderr.take().map(OutputReader::Stderr);
    let stdin = child.stdin.take();
    Ok(Spawned {
        child,
        stdin,
        stdout,
        stderr,
        tree: ProcessTree {
            pid,
            job: tree_job,
            done: false,
        },
    })
}

/// A job handle kept as an integer so the tree is `Send`.
struct JobHandle(isize);

impl Drop for JobHandle {
    fn drop(&mut self) {
        // SAFETY: the handle came from CreateJobObjectW and is closed once.
        unsafe {
            CloseHandle(self.0 as HANDLE);
        }
    }
}

pub struct ProcessTree {
    pid: u32,
    job: JobHandle,
    done: bool,
}

impl ProcessTree {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn cookie(&self) -> &str {
        ""
    }

    pub fn signal(&mut self, _sig: KillSignal) {
        self.kill_all();
    }

    pub fn kill_all(&mut self) {
        // SAFETY: a valid job handle.
        unsafe {
            TerminateJobObject(self.job.0 as HANDLE, 1);
        }
    }

    pub fn reaped(&mut self) {}

    pub fn finish(&mut self) {
        self.done = true;
    }
}

impl Drop for ProcessTree {
    fn drop(&mut self) {
        if !self.done {
            self.kill_all();
        }
        // Closing the job handle (JobHandle::drop) also kills what is left in it;
        // on normal completion a build's leftover background processes go with it,
        // as with Buildbot's job objects.
    }
}
