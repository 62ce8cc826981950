//! Comparing two versions of a unit, as NixOS's switch compares them.
//!
//! The needs is one of equal, reload or restart:
//!
//! - `[Install]` is never compared: it only matters to `systemctl enable`,
//!   and NixOS installs units through `.wants` links instead.
//! - In `[Unit]`, keys that change how the unit is described or stopped but
//!   not what runs (`Description`, `Documentation`, `OnFailure`, ...) are
//!   ignored. `X-Reload-Triggers` is ignored too, except that adding or
//!   changing it asks for a reload (removing it does not).
//! - `[Service] ExecReload` asks for a reload when added or changed, and
//!   for nothing when removed.
//! - `[Mount] Options` asks for a reload when changed (not when added or
//!   removed).
//! - Any other difference asks for a restart, which wins over a reload.
//!   So do two or more sections that exist only in the new version.
//!
//! Every differing key is reported as a [`KeyChange`], ignored keys
//! included, so a reader sees all that changed and the needs explains
//! which keys mattered.

use std::collections::BTreeSet;
use std::sync::Arc;

use itertools::{EitherOrBoth, Itertools as _};

use plan_model::{KeyChange, Rule};

use crate::unit_file::{Section, UnitFile, Values};

/// Walks two sequences sorted by their string keys side by side, in key
/// order: each key of either with its value in each (`None` where one
/// lacks the key).
fn zip_sorted<'a, V>(
    a: impl Iterator<Item = (&'a str, V)>,
    b: impl Iterator<Item = (&'a str, V)>,
) -> impl Iterator<Item = (&'a str, Option<V>, Option<V>)> {
    a.merge_join_by(b, |(ka, _), (kb, _)| ka.cmp(kb)).map(|pair| match pair {
        EitherOrBoth::Both((k, va), (_, vb)) => (k, Some(va), Some(vb)),
        EitherOrBoth::Left((k, va)) => (k, Some(va), None),
        EitherOrBoth::Right((k, vb)) => (k, None, Some(vb)),
    })
}

/// The keys of a section, if there is one.
fn keys<'a>(section: Option<Section<'a>>) -> impl Iterator<Item = (&'a str, Values<'a>)> {
    section.into_iter().flat_map(|s| s.iter())
}

/// Values as the plan lists them.
fn owned(values: Values<'_>) -> Vec<String> {
    values.iter().map(str::to_owned).collect()
}

/// The `[Unit]` keys whose changes need no action.
pub const IGNORED_UNIT_KEYS: &[&str] = &[
    "X-Reload-Triggers",
    "Description",
    "Documentation",
    "OnFailure",
    "OnSuccess",
    "OnFailureJobMode",
    "IgnoreOnIsolate",
    "StopWhenUnneeded",
    "RefuseManualStart",
    "RefuseManualStop",
    "AllowIsolate",
    "CollectMode",
    "SourcePath",
];

/// What a difference between two versions of a unit needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Needs {
    /// Nothing (no difference, or only ignored keys differ).
    Nothing,
    /// A reload.
    Reload,
    /// A restart (or stop and start).
    Restart,
}

/// The result of [`compare_units`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Comparison {
    /// What the difference needs.
    pub needs: Needs,
    /// For [`Needs::Reload`], the rules that asked for it.
    pub reload_rules: Vec<Rule>,
    /// Every key that differs, in section and key order.
    pub changes: Vec<KeyChange>,
}

/// Compares two versions of a unit.
pub fn compare_units(old: &UnitFile, new: &UnitFile) -> Comparison {
    if Arc::ptr_eq(&old.settings, &new.settings) {
        return Comparison { needs: Needs::Nothing, reload_rules: Vec::new(), changes: Vec::new() };
    }
    let mut restart = false;
    let mut reload_rules = BTreeSet::new();
    let mut changes = Vec::new();

    // Sections and keys are sorted maps: one merge walk over both versions
    // visits every (section, key) pair once, in order, without building a
    // set of keys or looking each one up again.
    for (section, old_keys, new_keys) in zip_sorted(old.sections(), new.sections()) {
        if section == "Install" || old_keys == new_keys {
            continue;
        }
        for (key, before, after) in zip_sorted(keys(old_keys), keys(new_keys)) {
            if before == after {
                continue;
            }
            changes.push(KeyChange {
                section: section.to_owned(),
                key: key.to_owned(),
                old: before.map(owned),
                new: after.map(owned),
            });
            match (section, key) {
                ("Unit", "X-Reload-Triggers") => {
                    if after.is_some() {
                        reload_rules.insert(Rule::ReloadTriggers);
                    }
                }
                ("Unit", key) if IGNORED_UNIT_KEYS.contains(&key) => {}
                ("Service", "ExecReload") => {
                    if after.is_some() {
                        reload_rules.insert(Rule::ExecReloadChanged);
                    }
                }
                ("Mount", "Options") if before.is_some() && after.is_some() => {
                    reload_rules.insert(Rule::MountOptionsChanged);
                }
                _ => restart = true,
            }
        }
    }
    let new_sections = new.sections().filter(|(s, _)| *s != "Install" && old.section(s).is_none()).count();
    if new_sections >= 2 {
        restart = true;
    }
    let needs = if restart {
        Needs::Restart
    } else if reload_rules.is_empty() {
        Needs::Nothing
    } else {
        Needs::Reload
    };
    if needs != Needs::Reload {
        reload_rules.clear();
    }
    Comparison { needs, reload_rules: reload_rules.into_iter().collect(), changes }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;

    use super::*;

    fn unit(text: &str) -> UnitFile {
        UnitFile::parse(Path::new("x.service"), text).unwrap()
    }

    fn needs(old: &str, new: &str) -> Needs {
        compare_units(&unit(old), &unit(new)).needs
    }

    #[test]
    fn classifies_like_nixos() {
        let base = "[Unit]\nDescription=a\n[Service]\nExecStart=/bin/a\n";
        assert_eq!(needs(base, base), Needs::Nothing);
        assert_eq!(needs(base, "[Unit]\nDescription=b\n[Service]\nExecStart=/bin/a\n"), Needs::Nothing);
        assert_eq!(needs(base, "[Unit]\nDescription=a\n[Service]\nExecStart=/bin/b\n"), Needs::Restart);
        assert_eq!(
            needs(base, "[Unit]\nDescription=a\nX-Reload-Triggers=/x\n[Service]\nExecStart=/bin/a\n"),
            Needs::Reload
        );
        assert_eq!(
            needs("[Unit]\nX-Reload-Triggers=/x\n[Service]\nExecStart=/bin/a\n", "[Service]\nExecStart=/bin/a\n"),
            Needs::Nothing
        );
        assert_eq!(needs(base, &format!("{base}ExecReload=/bin/kill -HUP $MAINPID\n")), Needs::Reload);
        assert_eq!(needs(&format!("{base}ExecReload=/bin/r\n"), base), Needs::Nothing);
        assert_eq!(needs("[Mount]\nWhat=a\nOptions=ro\n", "[Mount]\nWhat=a\nOptions=rw\n"), Needs::Reload);
        assert_eq!(needs("[Mount]\nWhat=a\n", "[Mount]\nWhat=a\nOptions=rw\n"), Needs::Restart);
        assert_eq!(needs(base, &format!("{base}[Install]\nWantedBy=multi-user.target\n")), Needs::Nothing);
        assert_eq!(needs("[Service]\nA=b\n", "[Service]\nA=b\n[Unit]\nDescription=x\n[X-Foo]\nB=c\n"), Needs::Restart);
    }

    #[test]
    fn restart_wins_and_changes_are_listed() {
        let c = compare_units(
            &unit("[Unit]\nDescription=a\n[Service]\nExecStart=/bin/a\n"),
            &unit("[Unit]\nDescription=b\nX-Reload-Triggers=/t\n[Service]\nExecStart=/bin/b\n"),
        );
        assert_eq!(c.needs, Needs::Restart);
        assert!(c.reload_rules.is_empty());
        let keys: Vec<_> = c.changes.iter().map(|k| format!("{}.{}", k.section, k.key)).collect();
        assert_eq!(keys, ["Service.ExecStart", "Unit.Description", "Unit.X-Reload-Triggers"]);
    }
}
