//! The diff of two closures, as a pure function over values.
//!
//! Paths are grouped into packages by the name part of their store path
//! (see [`crate::name`]); a package's versions are the set of versions
//! its paths carry (a closure may hold several, e.g. two Python
//! interpreters), and its size is the sum of its paths' NAR sizes.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::Serialize;

use crate::closure::{Closure, Source};
use crate::name::{parse_name, split_base_name};
use crate::version::{Direction, classify};

/// One side of the diff, summarised.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
}

/// A package whose set of versions changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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

/// One package's paths within one closure.
#[derive(Default)]
struct Group<'a> {
    versions: BTreeSet<&'a str>,
    size: u64,
}

/// The package name and version of a store path.
fn identity(path: &str) -> (String, String) {
    let base = path.rsplit('/').next().unwrap_or(path);
    let name = split_base_name(base).map_or(base, |(_, name)| name);
    let parsed = parse_name(name);
    (parsed.name, parsed.version)
}

/// Groups a closure's paths by package (given each path's identity, in
/// the same order) and records which packages own a path that is not in
/// `other`.
fn group<'a>(
    closure: &'a Closure,
    names: &'a [(String, String)],
    other: &HashSet<&str>,
) -> (BTreeMap<&'a str, Group<'a>>, HashSet<&'a str>) {
    let mut groups: BTreeMap<&str, Group<'_>> = BTreeMap::new();
    let mut touched = HashSet::new();
    for (info, (name, version)) in closure.paths.iter().zip(names) {
        let g = groups.entry(name.as_str()).or_default();
        g.versions.insert(version.as_str());
        g.size = g.size.saturating_add(info.nar_size);
        if !other.contains(info.path.as_str()) {
            touched.insert(name.as_str());
        }
    }
    (groups, touched)
}

fn delta(old: u64, new: u64) -> i64 {
    let d = i128::from(new) - i128::from(old);
    i64::try_from(d).unwrap_or(if d < 0 { i64::MIN } else { i64::MAX })
}

fn sorted_versions(set: &BTreeSet<&str>) -> Vec<String> {
    let mut v: Vec<String> = set.iter().map(|s| (*s).to_owned()).collect();
    v.sort_by(|a, b| crate::version::compare_versions(a, b).then_with(|| a.cmp(b)));
    v
}

fn summary(c: &Closure) -> ClosureSummary {
    // A closure read from Nix never lists a path twice, but one built by
    // a caller might; count each path once.
    let distinct: HashSet<&str> = c.paths.iter().map(|p| p.path.as_str()).collect();
    ClosureSummary {
        root: c.root.clone(),
        paths: distinct.len(),
        nar_size: c.nar_size(),
        source: c.source,
        fallback_reason: c.fallback_reason.clone(),
    }
}

/// Compares two closures.
pub fn diff(old: &Closure, new: &Closure) -> ClosureDiff {
    let old_set: HashSet<&str> = old.paths.iter().map(|p| p.path.as_str()).collect();
    let new_set: HashSet<&str> = new.paths.iter().map(|p| p.path.as_str()).collect();
    let old_names: Vec<(String, String)> = old.paths.iter().map(|p| identity(&p.path)).collect();
    let new_names: Vec<(String, String)> = new.paths.iter().map(|p| identity(&p.path)).collect();
    let (old_groups, old_touched) = group(old, &old_names, &new_set);
    let (new_groups, new_touched) = group(new, &new_names, &old_set);

    let mut changed = Vec::new();
    let mut removed = Vec::new();
    let mut rebuilt = Vec::new();
    for (name, og) in &old_groups {
        let Some(ng) = new_groups.get(name) else {
            removed.push(Package {
                name: (*name).to_owned(),
                versions: sorted_versions(&og.versions),
                size: og.size,
            });
            continue;
        };
        if og.versions != ng.versions {
            let gone: Vec<&str> = og.versions.difference(&ng.versions).copied().collect();
            let came: Vec<&str> = ng.versions.difference(&og.versions).copied().collect();
            changed.push(VersionChange {
                name: (*name).to_owned(),
                old_versions: sorted_versions(&og.versions),
                new_versions: sorted_versions(&ng.versions),
                direction: classify(&gone, &came),
                old_size: og.size,
                new_size: ng.size,
                size_delta: delta(og.size, ng.size),
            });
        } else if old_touched.contains(name) || new_touched.contains(name) {
            rebuilt.push(Rebuilt {
                name: (*name).to_owned(),
                versions: sorted_versions(&og.versions),
                old_size: og.size,
                new_size: ng.size,
                size_delta: delta(og.size, ng.size),
            });
        }
    }
    let added = new_groups
        .iter()
        .filter(|(name, _)| !old_groups.contains_key(*name))
        .map(|(name, g)| Package {
            name: (*name).to_owned(),
            versions: sorted_versions(&g.versions),
            size: g.size,
        })
        .collect();

    let old_summary = summary(old);
    let new_summary = summary(new);
    let size_delta = delta(old_summary.nar_size, new_summary.nar_size);
    ClosureDiff {
        old: old_summary,
        new: new_summary,
        changed,
        added,
        removed,
        rebuilt,
        paths_added: new_set.difference(&old_set).count(),
        paths_removed: old_set.difference(&new_set).count(),
        size_delta,
    }
}
