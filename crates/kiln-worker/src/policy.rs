//! Turns the worker configuration into the policy build processes run under.

use std::path::PathBuf;

use crate::commands::ExecPolicy;
use crate::config::WorkerConfig;

/// The configuration names something build processes cannot run under (an unknown
/// `run_as` user or sandbox).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} (in {})", file.display())]
pub struct PolicyError {
    /// The configuration file.
    pub file: PathBuf,
    /// What is unusable, as the process layer words it.
    pub reason: String,
}

/// The execution policy for `config`; fails when it names something unusable
/// (an unknown `run_as` user or sandbox), so a typo shows at start, not at the first build.
pub fn from_config(config: &WorkerConfig) -> Result<ExecPolicy, PolicyError> {
    ExecPolicy::from_config(config).map_err(|reason| PolicyError {
        file: WorkerConfig::path_in(&config.basedir),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_sandbox_names_the_file() {
        let mut config = WorkerConfig::for_tests(std::path::Path::new("/w"));
        config.sandbox = Some("jail".into());
        let e = from_config(&config).unwrap_err();
        assert_eq!(e.file, PathBuf::from("/w/kiln-worker.toml"));
        assert_eq!(
            e.to_string(),
            "unknown sandbox \"jail\" (expected \"bwrap\" or \"none\") (in /w/kiln-worker.toml)"
        );
    }
}
