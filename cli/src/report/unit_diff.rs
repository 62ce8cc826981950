//! Unified diffs of the unit files that changed between two generations.
//!
//! A generation (a NixOS or synthetic toplevel) keeps its units under
//! `etc/systemd/system/`: the unit file itself, and drop-ins in
//! `<unit>.d/*.conf`. A system-manager toplevel keeps them in the static
//! `/etc` tree that `etcFiles/etcFiles.json` names, which becomes
//! `/etc/systemd/system` on the host; diffs name them by that path too. An instance such as `getty@tty1.service` without a
//! file of its own is described by its template's file, so the template is
//! read in that case, as systemd does. This is the only part of the reports
//! that reads the disk; the renderers get its result as plain values.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use plan_model::{Plan, unit_name};
use similar::TextDiff;

/// Where a generation keeps its system units.
const UNIT_DIR: &str = "etc/systemd/system";

/// Lines of context around each change.
const CONTEXT: usize = 3;

/// The unified diff of one unit file (or drop-in).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitDiff {
    /// The unit the file belongs to.
    pub unit: String,
    /// The file, relative to the generation (`etc/systemd/system/a.service`).
    pub path: String,
    /// The unified diff, with `a/` and `b/` headers, ending in a newline.
    pub diff: String,
}

/// Diffs the files of every unit in the plan between the two generation
/// directories. Files that are equal, or missing or unreadable in both
/// generations, are left out.
pub fn unit_diffs(plan: &Plan, old: &Path, new: &Path) -> Vec<UnitDiff> {
    let (old, new) = (&unit_dir(old), &unit_dir(new));
    let mut out = Vec::new();
    for unit in &plan.units {
        for rel in unit_files(&unit.unit, old, new) {
            let (a, b) = (read_text(&old.join(&rel)), read_text(&new.join(&rel)));
            out.extend(file_diff(&unit.unit, format!("{UNIT_DIR}/{rel}"), a, b));
        }
    }
    out
}

/// The directory of a generation's system units, found as the planner
/// finds it (for a system-manager toplevel, in its static `/etc` tree);
/// `etc/systemd/system` when it cannot be found, so that the diff is empty.
fn unit_dir(toplevel: &Path) -> PathBuf {
    systemd_plan::unit_directory(toplevel).map_or_else(|_| toplevel.join(UNIT_DIR), |(dir, _)| dir)
}

/// The diff of one of `unit`'s files, shown as `path`, from its text in
/// each generation (`None` where it is missing, which reads as empty);
/// `None` when the two read the same.
pub fn file_diff(unit: &str, path: String, old: Option<String>, new: Option<String>) -> Option<UnitDiff> {
    let (old, new) = (old.unwrap_or_default(), new.unwrap_or_default());
    (old != new).then(|| UnitDiff { unit: unit.to_owned(), diff: unified(&old, &new, &path), path })
}

/// Returns a unified diff of two texts with `a/PATH` and `b/PATH` headers.
/// A path with line breaks or other control characters is shown escaped
/// (`\n`), so that each header stays one line.
pub fn unified(old: &str, new: &str, path: &str) -> String {
    let diff = TextDiff::from_lines(old, new);
    let path = path.escape_default().to_string();
    let mut text =
        diff.unified_diff().context_radius(CONTEXT).header(&format!("a/{path}"), &format!("b/{path}")).to_string();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// The files that make up a unit in either generation, relative to the
/// unit directories: its own file or its template's, then its drop-ins,
/// sorted.
fn unit_files(unit: &str, old: &Path, new: &Path) -> Vec<String> {
    let main = match unit_name::split_instance(unit) {
        Some((template, _)) if !old.join(unit).exists() && !new.join(unit).exists() => template,
        _ => unit.to_owned(),
    };
    let mut drop_ins = BTreeSet::new();
    for dir in [old, new] {
        let Ok(entries) = fs::read_dir(dir.join(format!("{unit}.d"))) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".conf") {
                drop_ins.insert(format!("{unit}.d/{name}"));
            }
        }
    }
    std::iter::once(main).chain(drop_ins).collect()
}

/// Reads a file as text, replacing invalid UTF-8 so that a binary or
/// mis-encoded unit still shows up in the diff rather than vanishing.
fn read_text(path: &Path) -> Option<String> {
    fs::read(path).ok().map(|b| String::from_utf8_lossy(&b).into_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use plan_model::{FORMAT_VERSION, Generation, Protection, UnitPlan};

    fn plan(units: &[&str]) -> Plan {
        Plan {
            format_version: FORMAT_VERSION,
            old: Generation::default(),
            new: Generation::default(),
            units: units
                .iter()
                .map(|u| UnitPlan {
                    unit: (*u).into(),
                    actions: vec![],
                    reasons: vec![],
                    changes: vec![],
                    deferral: None,
                })
                .collect(),
            steps: vec![],
            protection: Protection::default(),
            diagnostics: vec![],
            packages: None,
        }
    }

    #[test]
    fn diffs_unit_files_drop_ins_and_templates() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (dir.path().join("old"), dir.path().join("new"));
        for g in [&old, &new] {
            fs::create_dir_all(g.join(UNIT_DIR).join("a.service.d")).unwrap();
        }
        fs::write(old.join(UNIT_DIR).join("a.service"), "[Service]\nExecStart=/bin/a\n").unwrap();
        fs::write(new.join(UNIT_DIR).join("a.service"), "[Service]\nExecStart=/bin/a --new\n").unwrap();
        fs::write(new.join(UNIT_DIR).join("a.service.d/x.conf"), "[Unit]\nAfter=b.service\n").unwrap();
        fs::write(old.join(UNIT_DIR).join("same.service"), "[Service]\n").unwrap();
        fs::write(new.join(UNIT_DIR).join("same.service"), "[Service]\n").unwrap();
        fs::write(old.join(UNIT_DIR).join("g@.service"), "[Service]\nExecStart=/bin/g %i\n").unwrap();
        fs::write(new.join(UNIT_DIR).join("g@.service"), "[Service]\nExecStart=/bin/g2 %i\n").unwrap();

        let diffs = unit_diffs(&plan(&["a.service", "g@tty1.service", "same.service"]), &old, &new);
        let paths: Vec<&str> = diffs.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(
            paths,
            ["etc/systemd/system/a.service", "etc/systemd/system/a.service.d/x.conf", "etc/systemd/system/g@.service"]
        );
        assert!(diffs[0].diff.contains("-ExecStart=/bin/a\n+ExecStart=/bin/a --new\n"), "{}", diffs[0].diff);
        assert!(diffs[0].diff.starts_with("--- a/etc/systemd/system/a.service\n+++ b/etc/systemd/system/a.service\n"));
        assert!(diffs[1].diff.contains("+After=b.service\n"));
        assert_eq!(diffs[2].unit, "g@tty1.service");
    }
}
