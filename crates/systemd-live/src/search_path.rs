//! Where systemd found a unit's file, told from the unit search path
//! instead of asked unit by unit.
//!
//! NixOS's switch examines the active units whose `FragmentPath` lies
//! under `/etc/systemd/system`, and asks systemd for that property once
//! per active unit: on a host with hundreds of units, most of a plan's
//! time. systemd loads a unit from the first directory of its search
//! path that holds a file of that name (or, for an instance without one,
//! its template's). Only four directories outrank `/etc/systemd/system`
//! (`systemd.unit(5)`, "Unit File Load Path"). So for a unit whose name
//! is in `/etc/systemd/system` and in none of those four, the answer is
//! known without asking; every other unit is asked about.

use std::collections::HashSet;
use std::path::Path;

use plan_model::unit_name;

/// The directory NixOS installs its units in.
pub(crate) const UNIT_DIR: &str = "/etc/systemd/system";

/// The directories of systemd's system unit search path that come before
/// [`UNIT_DIR`].
pub(crate) const OUTRANKING: [&str; 4] = [
    "/etc/systemd/system.control",
    "/run/systemd/system.control",
    "/run/systemd/transient",
    "/run/systemd/generator.early",
];

/// The most names read from one directory; a larger directory is left
/// unread, and its units are asked about.
const MAX_ENTRIES: usize = 1 << 17;

/// The file names in [`UNIT_DIR`] and in the directories that outrank it.
#[derive(Debug, Default)]
pub(crate) struct SearchPath {
    unit_dir: HashSet<String>,
    outranking: HashSet<String>,
    /// Whether [`UNIT_DIR`] could be read.
    complete: bool,
}

impl SearchPath {
    /// Reads the names in the directories under `root` (`/` on a host).
    pub(crate) fn read(root: &Path) -> SearchPath {
        let names = |dir: &str| -> Option<HashSet<String>> {
            let entries = std::fs::read_dir(root.join(dir.trim_start_matches('/'))).ok()?;
            let mut out = HashSet::new();
            for entry in entries.take(MAX_ENTRIES + 1) {
                out.insert(entry.ok()?.file_name().to_string_lossy().into_owned());
            }
            (out.len() <= MAX_ENTRIES).then_some(out)
        };
        let mut outranking = HashSet::new();
        for dir in OUTRANKING {
            match names(dir) {
                Some(found) => outranking.extend(found),
                // A directory that is there but cannot be read could hold
                // anything: then nothing is told, everything is asked.
                None if root.join(dir.trim_start_matches('/')).exists() => return SearchPath::default(),
                None => {}
            }
        }
        match names(UNIT_DIR) {
            Some(unit_dir) => SearchPath { unit_dir, outranking, complete: true },
            None => SearchPath::default(),
        }
    }

    /// `unit`'s fragment path when the search path tells it: under
    /// [`UNIT_DIR`], with nothing of that name in a directory that outranks
    /// it. `None` means: ask systemd.
    pub(crate) fn fragment(&self, unit: &str) -> Option<String> {
        if !self.complete {
            return None;
        }
        let template = unit_name::split_instance(unit).map(|(template, _)| template);
        let names: Vec<&str> = std::iter::once(unit).chain(template.as_deref()).collect();
        if names.iter().any(|n| self.outranking.contains(*n)) {
            return None;
        }
        names.iter().find(|n| self.unit_dir.contains(**n)).map(|n| format!("{UNIT_DIR}/{n}"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn root(files: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for f in files {
            let path = dir.path().join(f.trim_start_matches('/'));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "").unwrap();
        }
        dir
    }

    #[test]
    fn a_unit_in_etc_is_told_and_anything_that_outranks_it_is_asked() {
        let dir = root(&[
            "/etc/systemd/system/a.service",
            "/etc/systemd/system/b.service",
            "/etc/systemd/system/getty@.service",
            "/run/systemd/transient/b.service",
            "/run/systemd/generator.early/x@.service",
            "/etc/systemd/system/x@.service",
        ]);
        let search = SearchPath::read(dir.path());
        assert_eq!(search.fragment("a.service").as_deref(), Some("/etc/systemd/system/a.service"));
        assert_eq!(search.fragment("getty@tty1.service").as_deref(), Some("/etc/systemd/system/getty@.service"));
        assert_eq!(search.fragment("b.service"), None, "a transient file outranks it");
        assert_eq!(search.fragment("x@1.service"), None, "its template is outranked");
        assert_eq!(search.fragment("c.service"), None, "not in /etc/systemd/system: asked");
    }

    #[test]
    fn without_the_unit_directory_everything_is_asked() {
        let dir = root(&["/run/systemd/transient/a.service"]);
        assert_eq!(SearchPath::read(dir.path()).fragment("a.service"), None);
    }
}
