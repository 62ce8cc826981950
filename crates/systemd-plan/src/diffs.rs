//! The unit files that changed between two generations, as diffs for the
//! reports.
//!
//! A generation (a NixOS or synthetic toplevel) keeps its units under
//! `etc/systemd/system/`: the unit file itself, and drop-ins in
//! `<unit>.d/*.conf`. A system-manager toplevel keeps them in the static
//! `/etc` tree that `etcFiles/etcFiles.json` names, which becomes
//! `/etc/systemd/system` on the host; diffs name them by that path too. An
//! instance such as `getty@tty1.service` without a file of its own is
//! described by its template's file, as systemd does.
//!
//! The texts are those the loader read and the planner parsed
//! ([`GenerationUnits::unit_file_text`]): nothing here reads the disk, so
//! a diff can never show anything but what the plan was made from.

use std::collections::BTreeSet;

use plan_model::{FileDiff, Plan};

use crate::generation::GenerationUnits;

/// Where a generation keeps its system units.
const UNIT_DIR: &str = "etc/systemd/system";

/// Diffs the files of every unit in the plan between the two loaded
/// generations. Files that are equal, or missing in both, are left out.
pub fn unit_diffs(plan: &Plan, old: &GenerationUnits, new: &GenerationUnits) -> Vec<FileDiff> {
    let mut out = Vec::new();
    for unit in &plan.units {
        for rel in unit_files(&unit.unit, old, new) {
            let (a, b) = (old.unit_file_text(&rel), new.unit_file_text(&rel));
            out.extend(FileDiff::between(&unit.unit, format!("{UNIT_DIR}/{rel}"), a, b));
        }
    }
    out
}

/// The files that make up a unit in either generation, relative to their
/// unit directories: its own file or its template's, then its own
/// drop-ins, sorted.
fn unit_files(unit: &str, old: &GenerationUnits, new: &GenerationUnits) -> Vec<String> {
    let mut main = BTreeSet::new();
    let mut drop_ins = BTreeSet::new();
    for generation in [old, new] {
        let Some((name, file)) = generation.unit_with_name(unit) else { continue };
        // A masked unit has no fragment: its file in the other generation,
        // if any, shows what was masked.
        main.extend(file.fragment_name(name).map(|f| f.into_owned()));
        drop_ins.extend(file.own_drop_ins().map(|d| format!("{name}.d/{}", d.file_name())));
    }
    main.into_iter().chain(drop_ins).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use plan_model::UnitPlan;
    use std::fs;

    fn plan(units: &[&str]) -> Plan {
        Plan::between("", "", units.iter().map(|u| UnitPlan::new(u, &[])).collect())
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

        fs::write(old.join(UNIT_DIR).join("m.service"), "[Service]\nExecStart=/bin/m\n").unwrap();
        std::os::unix::fs::symlink("/dev/null", new.join(UNIT_DIR).join("m.service")).unwrap();

        let (old_units, new_units) = (crate::load(&old).unwrap(), crate::load(&new).unwrap());
        let units = ["a.service", "g@tty1.service", "m.service", "same.service"];
        let diffs = unit_diffs(&plan(&units), &old_units, &new_units);
        let paths: Vec<&str> = diffs.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "etc/systemd/system/a.service",
                "etc/systemd/system/a.service.d/x.conf",
                "etc/systemd/system/g@.service",
                "etc/systemd/system/m.service"
            ]
        );
        assert!(diffs[0].diff.contains("-ExecStart=/bin/a\n+ExecStart=/bin/a --new\n"), "{}", diffs[0].diff);
        assert!(diffs[0].diff.starts_with("--- a/etc/systemd/system/a.service\n+++ b/etc/systemd/system/a.service\n"));
        assert!(diffs[1].diff.contains("+After=b.service\n"));
        assert_eq!(diffs[2].unit, "g@tty1.service");
        assert!(diffs[3].diff.contains("-ExecStart=/bin/m\n"), "{}", diffs[3].diff);
    }

    #[test]
    fn diffs_show_what_the_planner_read_not_what_the_disk_holds_later() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (dir.path().join("old"), dir.path().join("new"));
        for (g, text) in [(&old, "ExecStart=/bin/a\n"), (&new, "ExecStart=/bin/b\n")] {
            fs::create_dir_all(g.join(UNIT_DIR)).unwrap();
            fs::write(g.join(UNIT_DIR).join("a.service"), format!("[Service]\n{text}")).unwrap();
        }
        let (old_units, new_units) = (crate::load(&old).unwrap(), crate::load(&new).unwrap());
        fs::write(new.join(UNIT_DIR).join("a.service"), "[Service]\nExecStart=/bin/swapped\n").unwrap();
        let diffs = unit_diffs(&plan(&["a.service"]), &old_units, &new_units);
        assert_eq!(diffs.len(), 1);
        assert!(diffs[0].diff.contains("+ExecStart=/bin/b\n"), "{}", diffs[0].diff);
        assert!(!diffs[0].diff.contains("swapped"), "{}", diffs[0].diff);
    }
}
