//! Starting and killing build processes: process groups, the whole-tree kill,
//! dropping to a build user, bubblewrap and rlimits.

/// How build processes are started on this worker (from the command line / config).
#[derive(Debug, Clone, Default)]
pub struct ExecPolicy {}
