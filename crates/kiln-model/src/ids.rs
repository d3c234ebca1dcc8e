//! Typed ids: a build id cannot be passed where a step id is expected.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! id {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<i64> for $name {
            fn from(v: i64) -> Self {
                $name(v)
            }
        }
    )*};
}

id!(
    /// A master process (several can share a PostgreSQL database).
    MasterId,
    WorkerId,
    BuilderId,
    SchedulerId,
    ChangeId,
    SourceStampId,
    /// A set of build requests made together (one per builder).
    BuildsetId,
    BuildRequestId,
    BuildId,
    StepId,
    LogId,
);
