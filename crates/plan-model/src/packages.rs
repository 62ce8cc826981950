//! Which packages a switch changes: the closure diff of the two
//! generations, as the `closure-diff` crate computes it and the reports
//! show it (`Plan::packages`). Values only; reading closures and
//! comparing them happens in `closure-diff`.

use serde::{Deserialize, Serialize};

/// Where a closure was read from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// Nix's SQLite database, opened read-only.
    Database,
    /// `nix path-info --json --recursive`.
    NixPathInfo,
    /// Built in memory (tests, snapshots).
    #[default]
    Memory,
}

/// How a package's version moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Every old version is older than every new one.
    Upgrade,
    /// Every old version is newer than every new one.
    Downgrade,
    /// The versions cannot be ordered (commit hashes with equal prefixes).
    Unordered,
    /// Some versions moved up and others down, or versions were only
    /// added to or dropped from a set that other versions remain in.
    Mixed,
}

/// One side of the diff, summarised.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosureSummary {
    /// The root store path.
    pub root: String,
    /// How many store paths the closure holds.
    pub paths: usize,
    /// The sum of their NAR sizes, in bytes.
    pub nar_size: u64,
    /// Where the closure was read from.
    pub source: Source,
    /// Why the database was not used, when it was not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
}

/// A package whose set of versions changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionChange {
    /// The package name.
    pub name: String,
    /// Its versions in the old closure, in version order.
    pub old_versions: Vec<String>,
    /// Its versions in the new closure, in version order.
    pub new_versions: Vec<String>,
    /// Which way the versions moved.
    pub direction: Direction,
    /// Its size in the old closure, in bytes.
    pub old_size: u64,
    /// Its size in the new closure, in bytes.
    pub new_size: u64,
    /// `new_size - old_size`.
    pub size_delta: i64,
}

/// A package present on one side only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    /// The package name.
    pub name: String,
    /// Its versions, in version order (a single empty string when the
    /// store path name carries no version).
    pub versions: Vec<String>,
    /// Its size in bytes.
    pub size: u64,
}

/// A package with the same versions on both sides whose store paths
/// differ (rebuilt because a dependency or its recipe changed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rebuilt {
    /// The package name.
    pub name: String,
    /// Its versions, in version order.
    pub versions: Vec<String>,
    /// Its size in the old closure, in bytes.
    pub old_size: u64,
    /// Its size in the new closure, in bytes.
    pub new_size: u64,
    /// `new_size - old_size`.
    pub size_delta: i64,
}

/// Which packages change between two closures, and how much.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosureDiff {
    /// The old closure.
    pub old: ClosureSummary,
    /// The new closure.
    pub new: ClosureSummary,
    /// Packages whose versions changed, by name.
    pub changed: Vec<VersionChange>,
    /// Packages only in the new closure, by name.
    pub added: Vec<Package>,
    /// Packages only in the old closure, by name.
    pub removed: Vec<Package>,
    /// Packages with unchanged versions but different store paths, by
    /// name.
    pub rebuilt: Vec<Rebuilt>,
    /// Store paths only in the new closure.
    pub paths_added: usize,
    /// Store paths only in the old closure.
    pub paths_removed: usize,
    /// `new.nar_size - old.nar_size`.
    pub size_delta: i64,
}

impl ClosureDiff {
    /// Whether the two closures hold exactly the same store paths.
    pub fn is_empty(&self) -> bool {
        self.paths_added == 0 && self.paths_removed == 0
    }

    /// How many changed packages moved in the given direction.
    pub fn count(&self, direction: Direction) -> usize {
        self.changed.iter().filter(|c| c.direction == direction).count()
    }
}
