//! Kiln's domain types, shared by the config, the store, the engine and the web layer.
//!
//! Field names follow Buildbot's data API (`buildid`, `builderid`, `results`,
//! `started_at` …) so the REST layer can serialize these types as Buildbot does.
//! Times are Unix epoch seconds (`i64`), as Buildbot stores them.

mod events;
mod ids;
mod properties;
mod results;
mod rows;

pub use events::Event;
pub use ids::*;
pub use properties::{Properties, PropertyValue};
pub use results::Results;
pub use rows::*;

/// Unix time in whole seconds.
pub type Epoch = i64;
