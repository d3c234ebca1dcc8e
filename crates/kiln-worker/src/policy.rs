//! Turns the worker configuration into the policy build processes run under.

use crate::commands::ExecPolicy;
use crate::config::WorkerConfig;

/// The execution policy for `config`; fails when it names something unusable
/// (an unknown `run_as` user or sandbox), so a typo shows at start, not at the first build.
pub fn from_config(config: &WorkerConfig) -> anyhow::Result<ExecPolicy> {
    ExecPolicy::from_config(config).map_err(|e| {
        anyhow::anyhow!(
            "{e} (in {})",
            config.basedir.join(crate::config::CONFIG_FILE).display()
        )
    })
}
