use std::fmt;

use serde::{Deserialize, Serialize};

use crate::types::Loc;

/// One problem in a config, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    /// `None` when the problem has no place in a file (an unreadable file, a missing global).
    pub loc: Option<Loc>,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.loc {
            Some(l) => write!(f, "{l}: error: {}", self.message),
            None => write!(f, "error: {}", self.message),
        }
    }
}

/// Why a config was rejected: one or more [`Diagnostic`]s, one per line when displayed
/// (`master.star:12:5: error: builder "x": unknown worker "w9"; ...`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub struct ConfigError {
    pub diagnostics: Vec<Diagnostic>,
}

impl ConfigError {
    /// One diagnostic, `loc: error: message` (or `error: message` without a place).
    pub fn one(loc: Option<Loc>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            diagnostics: vec![Diagnostic {
                loc,
                message: message.into(),
            }],
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}
