//! The diff of two closures, as a pure function over values.
//!
//! Paths are grouped into packages by the name part of their store path
//! (see [`crate::name`]); a package's versions are the set of versions
//! its paths carry (a closure may hold several, e.g. two Python
//! interpreters), and its size is the sum of its paths' NAR sizes.

use std::collections::{HashMap, HashSet};

// Store paths are not attacker-chosen keys here, and the diff hashes
// tens of thousands of them; a fast non-cryptographic hasher pays off.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;
type FastSet<K> = HashSet<K, foldhash::fast::FixedState>;

pub use plan_model::packages::{ClosureDiff, ClosureSummary, Package, Rebuilt, VersionChange};

use crate::closure::Closure;
use crate::name::{split_base_name, split_name};
use crate::version::{classify, compare_versions};

/// A package's distinct versions within one closure. Nearly every
/// package has exactly one, so the first lives inline and only further
/// ones allocate (tens of thousands of groups are built per diff).
#[derive(Default, PartialEq, Eq)]
struct Versions<'a> {
    first: Option<&'a str>,
    rest: Vec<&'a str>,
}

impl<'a> Versions<'a> {
    fn insert(&mut self, version: &'a str) {
        match self.first {
            None => self.first = Some(version),
            Some(f) if f == version => {}
            Some(_) => {
                if !self.rest.contains(&version) {
                    self.rest.push(version);
                }
            }
        }
    }

    fn contains(&self, version: &str) -> bool {
        self.first == Some(version) || self.rest.contains(&version)
    }

    fn iter(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.first.into_iter().chain(self.rest.iter().copied())
    }

    /// Puts the versions in version order (ties broken by bytes, so the
    /// order is total and two equal sets compare equal).
    fn sort(&mut self) {
        if self.rest.is_empty() {
            return;
        }
        let mut all: Vec<&str> = self.iter().collect();
        all.sort_by(|a, b| compare_versions(a, b).then_with(|| a.cmp(b)));
        self.first = all.first().copied();
        self.rest = all.into_iter().skip(1).collect();
    }

    fn owned(&self) -> Vec<String> {
        self.iter().map(str::to_owned).collect()
    }
}

/// One package's paths within one closure.
#[derive(Default)]
struct Group<'a> {
    versions: Versions<'a>,
    size: u64,
    /// Whether one of its paths is missing from the other closure.
    touched: bool,
}

impl<'a> Group<'a> {
    fn add(&mut self, version: &'a str, size: u64, touched: bool) {
        self.versions.insert(version);
        self.size = self.size.saturating_add(size);
        self.touched |= touched;
    }
}

/// The package name and version of a store path, as slices of it.
fn identity(path: &str) -> (&str, &str) {
    let base = path.rsplit('/').next().unwrap_or(path);
    let name = split_base_name(base).map_or(base, |(_, name)| name);
    let (name, version, _) = split_name(name);
    (name, version)
}

/// A closure's paths, each counted once, grouped by package; `other` is
/// the other closure's path set, to tell which packages changed paths.
fn group<'a>(closure: &'a Closure, own: &FastSet<&'a str>, other: &FastSet<&str>) -> FastMap<&'a str, Group<'a>> {
    let mut groups: FastMap<&str, Group<'_>> =
        FastMap::with_capacity_and_hasher(own.len(), foldhash::fast::FixedState::default());
    let mut seen: FastSet<&str> = FastSet::default();
    let duplicates = own.len() != closure.paths.len();
    for info in &closure.paths {
        // A closure read from Nix never lists a path twice, but one
        // built by a caller might; count each path once.
        if duplicates && !seen.insert(info.path.as_str()) {
            continue;
        }
        let (name, version) = identity(&info.path);
        let touched = !other.contains(info.path.as_str());
        groups.entry(name).or_default().add(version, info.nar_size, touched);
    }
    for g in groups.values_mut() {
        g.versions.sort();
    }
    groups
}

fn delta(old: u64, new: u64) -> i64 {
    let d = i128::from(new) - i128::from(old);
    i64::try_from(d).unwrap_or(if d < 0 { i64::MIN } else { i64::MAX })
}

fn summary(c: &Closure, distinct: usize, groups: &FastMap<&str, Group<'_>>) -> ClosureSummary {
    ClosureSummary {
        root: c.root.clone(),
        paths: distinct,
        nar_size: groups.values().map(|g| g.size).fold(0, u64::saturating_add),
        source: c.source,
        fallback_reason: c.fallback_reason.clone(),
    }
}

/// Compares two closures.
pub fn diff(old: &Closure, new: &Closure) -> ClosureDiff {
    let old_set: FastSet<&str> = old.paths.iter().map(|p| p.path.as_str()).collect();
    let new_set: FastSet<&str> = new.paths.iter().map(|p| p.path.as_str()).collect();
    let old_groups = group(old, &old_set, &new_set);
    let new_groups = group(new, &new_set, &old_set);

    let mut changed = Vec::new();
    let mut removed = Vec::new();
    let mut rebuilt = Vec::new();
    for (name, og) in &old_groups {
        let Some(ng) = new_groups.get(name) else {
            removed.push(Package { name: (*name).to_owned(), versions: og.versions.owned(), size: og.size });
            continue;
        };
        if og.versions != ng.versions {
            let gone: Vec<&str> = og.versions.iter().filter(|v| !ng.versions.contains(v)).collect();
            let came: Vec<&str> = ng.versions.iter().filter(|v| !og.versions.contains(v)).collect();
            changed.push(VersionChange {
                name: (*name).to_owned(),
                old_versions: og.versions.owned(),
                new_versions: ng.versions.owned(),
                direction: classify(&gone, &came),
                old_size: og.size,
                new_size: ng.size,
                size_delta: delta(og.size, ng.size),
            });
        } else if og.touched || ng.touched {
            rebuilt.push(Rebuilt {
                name: (*name).to_owned(),
                versions: og.versions.owned(),
                old_size: og.size,
                new_size: ng.size,
                size_delta: delta(og.size, ng.size),
            });
        }
    }
    let mut added: Vec<Package> = new_groups
        .iter()
        .filter(|(name, _)| !old_groups.contains_key(*name))
        .map(|(name, g)| Package { name: (*name).to_owned(), versions: g.versions.owned(), size: g.size })
        .collect();
    changed.sort_by(|a, b| a.name.cmp(&b.name));
    added.sort_by(|a, b| a.name.cmp(&b.name));
    removed.sort_by(|a, b| a.name.cmp(&b.name));
    rebuilt.sort_by(|a, b| a.name.cmp(&b.name));

    let paths_added = new_set.iter().filter(|p| !old_set.contains(*p)).count();
    let paths_removed = old_set.len() - (new_set.len() - paths_added);
    let old_summary = summary(old, old_set.len(), &old_groups);
    let new_summary = summary(new, new_set.len(), &new_groups);
    let size_delta = delta(old_summary.nar_size, new_summary.nar_size);
    ClosureDiff {
        old: old_summary,
        new: new_summary,
        changed,
        added,
        removed,
        rebuilt,
        paths_added,
        paths_removed,
        size_delta,
    }
}
