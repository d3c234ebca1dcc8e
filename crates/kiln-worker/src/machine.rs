//! What this machine is: OS, kernel, CPU, memory, free disk. Used to prefill
//! `info/host` and by `doctor`. Every probe is best-effort and never fails.

use std::path::Path;

/// Facts about the machine, each `None` when it could not be found out.
#[derive(Debug, Clone, Default)]
pub struct Machine {
    /// e.g. "Debian GNU/Linux 12 (bookworm)" (from /etc/os-release, else the kernel name).
    pub os: Option<String>,
    /// Kernel name, release and architecture, e.g. "Linux 6.1.0-18-amd64 x86_64".
    pub kernel: Option<String>,
    pub cpu_model: Option<String>,
    /// Online CPUs.
    pub cpus: Option<usize>,
    /// Physical memory in bytes.
    pub memory: Option<u64>,
}

impl Machine {
    pub fn probe() -> Machine {
        Machine {
            os: os_release_value("PRETTY_NAME")
                .or_else(|| kernel().map(|k| k.split(' ').next().unwrap_or("").to_owned())),
            kernel: kernel(),
            cpu_model: cpu_model(),
            cpus: online_cpus(),
            memory: physical_memory(),
        }
    }

    /// The prefilled text of `info/host`.
    pub fn describe(&self) -> String {
        let unknown = || "unknown".to_owned();
        let memory = self
            .memory
            .map(|m| format!("{:.1} GiB", m as f64 / (1u64 << 30) as f64));
        format!(
            "{os}; kernel {kernel}; {cpus} x {cpu}; {memory} RAM\n",
            os = self.os.clone().unwrap_or_else(unknown),
            kernel = self.kernel.clone().unwrap_or_else(unknown),
            cpus = self.cpus.map(|c| c.to_string()).unwrap_or_else(unknown),
            cpu = self
                .cpu_model
                .clone()
                .unwrap_or_else(|| "unknown CPU".to_owned()),
            memory = memory.unwrap_or_else(unknown),
        )
    }
}

/// A value from `/etc/os-release` (quotes stripped).
pub fn os_release_value(key: &str) -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release")
        .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
        .ok()?;
    text.lines().find_map(|line| {
        let (k, v) = line.split_once('=')?;
        (k.trim() == key)
            .then(|| v.trim().trim_matches('"').trim_matches('\'').to_owned())
            .filter(|v| !v.is_empty())
    })
}

#[cfg(unix)]
fn kernel() -> Option<String> {
    let u = nix::sys::utsname::uname().ok()?;
    Some(format!(
        "{} {} {}",
        u.sysname().to_string_lossy(),
        u.release().to_string_lossy(),
        u.machine().to_string_lossy()
    ))
}

#[cfg(not(unix))]
fn kernel() -> Option<String> {
    Some(format!(
        "{} {}",
        std::env::consts::OS,
        std::env::consts::ARCH
    ))
}

fn cpu_model() -> Option<String> {
    if let Ok(text) = std::fs::read_to_string("/proc/cpuinfo") {
        let model = text.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            matches!(
                k.trim(),
                "model name" | "Processor" | "cpu model" | "uarch" | "cpu"
            )
            .then(|| v.trim().to_owned())
        });
        if model.is_some() {
            return model;
        }
    }
    #[cfg(unix)]
    for key in ["machdep.cpu.brand_string", "hw.model"] {
        if let Ok(out) = std::process::Command::new("sysctl")
            .arg("-n")
            .arg(key)
            .stderr(std::process::Stdio::null())
            .output()
            && out.status.success()
        {
            let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if !text.is_empty() {
                return Some(text);
            }
        }
    }
    #[cfg(windows)]
    if let Ok(id) = std::env::var("PROCESSOR_IDENTIFIER") {
        return Some(id);
    }
    None
}

/// CPUs online on the machine.
pub fn online_cpus() -> Option<usize> {
    #[cfg(unix)]
    {
        // SAFETY: sysconf has no preconditions.
        let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        if n > 0 {
            return Some(n as usize);
        }
    }
    std::thread::available_parallelism().ok().map(|n| n.get())
}

/// CPUs this process may use (affinity and cgroup quota), which is what builds get.
pub fn usable_cpus() -> Option<usize> {
    std::thread::available_parallelism().ok().map(|n| n.get())
}

/// Physical memory in bytes.
pub fn physical_memory() -> Option<u64> {
    if let Ok(text) = std::fs::read_to_string("/proc/meminfo")
        && let Some(kb) = text
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    {
        return Some(kb * 1024);
    }
    #[cfg(unix)]
    {
        for key in ["hw.memsize", "hw.physmem"] {
            if let Ok(out) = std::process::Command::new("sysctl")
                .arg("-n")
                .arg(key)
                .stderr(std::process::Stdio::null())
                .output()
                && let Ok(bytes) = String::from_utf8_lossy(&out.stdout).trim().parse::<u64>()
            {
                return Some(bytes);
            }
        }
    }
    None
}

/// Bytes available to an unprivileged user on the file system holding `path`.
#[cfg(unix)]
pub fn free_disk(path: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    Some(u64::from(st.blocks_available()) * u64::from(st.fragment_size()))
}

#[cfg(not(unix))]
pub fn free_disk(_path: &Path) -> Option<u64> {
    None
}

/// The machine's host name (`uname -n`).
pub fn hostname() -> String {
    #[cfg(unix)]
    if let Ok(name) = nix::unistd::gethostname() {
        return name.to_string_lossy().into_owned();
    }
    std::env::var("COMPUTERNAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn describe_has_facts() {
        let m = super::Machine::probe();
        let text = m.describe();
        assert!(text.ends_with('\n'));
        assert!(m.cpus.unwrap_or(0) >= 1, "{text}");
        #[cfg(target_os = "linux")]
        assert!(text.contains("Linux") && m.memory.is_some(), "{text}");
    }
}
