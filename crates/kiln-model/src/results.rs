//! Build and step results, with Buildbot's numbering and ordering.

use serde::{Deserialize, Serialize};

/// A step's or build's result. The numbers are Buildbot's (`results` in its API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "i64", try_from = "i64")]
pub enum Results {
    Success = 0,
    Warnings = 1,
    Failure = 2,
    Skipped = 3,
    Exception = 4,
    Retry = 5,
    Cancelled = 6,
}

impl Results {
    pub const ALL: [Results; 7] = [
        Results::Success,
        Results::Warnings,
        Results::Failure,
        Results::Skipped,
        Results::Exception,
        Results::Retry,
        Results::Cancelled,
    ];

    /// Buildbot's severity order: SKIPPED < SUCCESS < WARNINGS < FAILURE < EXCEPTION < RETRY < CANCELLED.
    fn severity(self) -> u8 {
        match self {
            Results::Skipped => 0,
            Results::Success => 1,
            Results::Warnings => 2,
            Results::Failure => 3,
            Results::Exception => 4,
            Results::Retry => 5,
            Results::Cancelled => 6,
        }
    }

    /// The worse of two results (`worst_status` in Buildbot).
    pub fn worst(self, other: Results) -> Results {
        if other.severity() > self.severity() {
            other
        } else {
            self
        }
    }

    /// Upper-case name as Buildbot prints it.
    pub fn name(self) -> &'static str {
        match self {
            Results::Success => "SUCCESS",
            Results::Warnings => "WARNINGS",
            Results::Failure => "FAILURE",
            Results::Skipped => "SKIPPED",
            Results::Exception => "EXCEPTION",
            Results::Retry => "RETRY",
            Results::Cancelled => "CANCELLED",
        }
    }

    pub fn from_name(name: &str) -> Option<Results> {
        Results::ALL
            .into_iter()
            .find(|r| r.name().eq_ignore_ascii_case(name))
    }
}

impl From<Results> for i64 {
    fn from(r: Results) -> i64 {
        r as i64
    }
}

impl TryFrom<i64> for Results {
    type Error = String;
    fn try_from(v: i64) -> Result<Results, String> {
        Results::ALL
            .into_iter()
            .find(|r| *r as i64 == v)
            .ok_or_else(|| format!("{v} is not a build result (0..=6)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worst_follows_buildbot() {
        use Results::*;
        assert_eq!(Success.worst(Skipped), Success);
        assert_eq!(Warnings.worst(Success), Warnings);
        assert_eq!(Failure.worst(Warnings), Failure);
        assert_eq!(Exception.worst(Failure), Exception);
        assert_eq!(Retry.worst(Exception), Retry);
        assert_eq!(Cancelled.worst(Retry), Cancelled);
        for a in Results::ALL {
            for b in Results::ALL {
                assert_eq!(a.worst(b), b.worst(a), "symmetric");
            }
        }
    }

    #[test]
    fn numbers_and_names_round_trip() {
        for r in Results::ALL {
            assert_eq!(Results::try_from(i64::from(r)), Ok(r));
            assert_eq!(Results::from_name(r.name()), Some(r));
            assert_eq!(serde_json::to_string(&r).unwrap(), (r as i64).to_string());
        }
        assert!(Results::try_from(7).is_err());
    }
}
