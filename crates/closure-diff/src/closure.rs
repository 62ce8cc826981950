//! A closure as a plain value: the store paths reachable from one root,
//! each with its NAR size. This is what the readers produce and what the
//! diff consumes.

use serde::{Deserialize, Serialize};

/// One store path of a closure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathInfo {
    /// The full store path (`/nix/store/<hash>-<name>`).
    pub path: String,
    /// The size of the path's NAR serialisation in bytes (0 when Nix did
    /// not record it).
    pub nar_size: u64,
}

pub use plan_model::packages::Source;

/// The closure of one root store path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Closure {
    /// The root store path.
    pub root: String,
    /// Every path of the closure, the root included, in no particular
    /// order.
    pub paths: Vec<PathInfo>,
    /// Where the closure came from.
    pub source: Source,
    /// Why the database was not used, when the closure came from the
    /// fallback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
}

impl Closure {
    /// A closure built from `(path, nar_size)` pairs, for tests and for
    /// callers that already hold the data.
    pub fn from_pairs<S: Into<String>>(root: impl Into<String>, paths: impl IntoIterator<Item = (S, u64)>) -> Self {
        Closure {
            root: root.into(),
            paths: paths.into_iter().map(|(path, nar_size)| PathInfo { path: path.into(), nar_size }).collect(),
            source: Source::Memory,
            fallback_reason: None,
        }
    }

    /// The sum of the NAR sizes of all paths.
    pub fn nar_size(&self) -> u64 {
        self.paths.iter().map(|p| p.nar_size).sum()
    }
}
