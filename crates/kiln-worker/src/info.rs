//! What the worker tells the master about itself (`get_worker_info`, spec §9).

use std::path::Path;

use kiln_proto::Value;
use kiln_proto::info::WorkerInfo;

use crate::config::WorkerConfig;

/// The version reported to the master.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Kiln-to-Kiln extensions this worker speaks, advertised under the `kiln` key
/// (a stock Buildbot master stores the key as a worker property and otherwise ignores it).
pub const FEATURES: &[&str] = &["download-data", "long-lines", "process-tree-kill"];

/// Builds the worker-info map in Buildbot's order: one key per file in
/// `info/`, the `os_*` keys, then the fixed keys, then Kiln's extension key.
pub fn gather(config: &WorkerConfig, kiln_extra: Option<Value>) -> WorkerInfo {
    let mut info = WorkerInfo::default();
    for (name, text) in info_files(&config.basedir.join("info")) {
        info.set(&name, text);
    }
    if let Ok(text) = std::fs::read_to_string("/etc/os-release") {
        for (k, v) in os_release(&text) {
            info.set(&k, v);
        }
    }
    let environ: Vec<(Value, Value)> = std::env::vars_os()
        .map(|(k, v)| {
            (
                Value::from(k.to_string_lossy().into_owned()),
                Value::from(v.to_string_lossy().into_owned()),
            )
        })
        .collect();
    info.set("environ", Value::Map(environ));
    info.set("system", if cfg!(windows) { "nt" } else { "posix" });
    info.set("basedir", config.basedir.to_string_lossy().into_owned());
    info.set(
        "numcpus",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as i64,
    );
    info.set("version", format!("kiln-worker {VERSION}"));
    info.set(
        "worker_commands",
        WorkerInfo::commands(kiln_proto::COMMAND_VERSION),
    );
    // The master indexes this key directly; Buildbot's worker reports it as 0/1.
    info.set(
        "delete_leftover_dirs",
        i64::from(config.delete_leftover_dirs),
    );
    let mut kiln = vec![
        (Value::from("version"), Value::from(VERSION)),
        (
            Value::from("features"),
            Value::Array(FEATURES.iter().map(|f| Value::from(*f)).collect()),
        ),
    ];
    if let Some(Value::Map(extra)) = kiln_extra {
        kiln.extend(extra);
    }
    info.set("kiln", Value::Map(kiln));
    info
}

/// Regular files in `info/` whose contents are text, sorted by name.
fn info_files(dir: &Path) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            // Editor backups and hidden files are not information.
            if name.starts_with('.') || name.ends_with('~') {
                return None;
            }
            let text = std::fs::read_to_string(e.path()).ok()?;
            Some((name, text))
        })
        .collect();
    files.sort();
    files
}

/// `KEY=value` lines of `/etc/os-release` as `os_key` pairs, quotes stripped.
fn os_release(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim().trim_matches('"').trim_matches('\'')))
        .filter(|(k, v)| !k.is_empty() && !v.is_empty())
        .map(|(k, v)| (format!("os_{}", k.to_lowercase()), v.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_keys_are_prefixed_and_unquoted() {
        let text = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n# comment\nID=debian\nEMPTY=\nVERSION_ID=\"12\"\n";
        assert_eq!(
            os_release(text),
            vec![
                (
                    "os_pretty_name".to_owned(),
                    "Debian GNU/Linux 12 (bookworm)".to_owned()
                ),
                ("os_id".to_owned(), "debian".to_owned()),
                ("os_version_id".to_owned(), "12".to_owned()),
            ]
        );
    }

    #[test]
    fn info_has_the_keys_a_buildbot_master_indexes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("info")).unwrap();
        std::fs::write(dir.path().join("info/admin"), "Ada <ada@example.invalid>\n").unwrap();
        std::fs::write(dir.path().join("info/host"), "a test box\n").unwrap();
        let config = crate::config::WorkerConfig::for_tests(dir.path());
        let info = gather(&config, None);
        let keys: Vec<String> = info
            .0
            .iter()
            .map(|(k, _)| kiln_proto::text_of(k).unwrap())
            .collect();
        assert_eq!(&keys[..2], ["admin", "host"]);
        assert_eq!(
            info.get("admin").and_then(|v| v.as_str()),
            Some("Ada <ada@example.invalid>\n")
        );
        assert_eq!(
            info.get("delete_leftover_dirs").and_then(Value::as_i64),
            Some(0)
        );
        assert_eq!(
            info.get("basedir").and_then(|v| v.as_str()),
            Some(dir.path().to_str().unwrap())
        );
        let commands = info.get("worker_commands").and_then(Value::as_map).unwrap();
        assert_eq!(commands.len(), 14);
        assert!(
            info.get("environ")
                .and_then(Value::as_map)
                .is_some_and(|m| !m.is_empty())
        );
        assert!(info.get("kiln").and_then(Value::as_map).is_some());
        // The fixed keys come after the info files and os keys, as in Buildbot.
        let pos = |k: &str| keys.iter().position(|x| x == k).unwrap();
        assert!(pos("host") < pos("environ") && pos("environ") < pos("worker_commands"));
    }
}
