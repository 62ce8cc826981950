//! Reports: the plan rendered in the formats people and CI systems read.
//!
//! Every planning command (`diff`, `plan`, `check`) ends the same way: it
//! hands its [`Plan`] and the diffs of the unit files it was made from to
//! [`write_outputs`], which prints one format on standard output and writes
//! any `--report FORMAT=PATH` files. The renderers themselves are pure
//! functions from a [`Report`] to a string, one module per format, so that
//! golden tests can snapshot them without touching the disk.
//!
//! Architecture Invariant: renderers never decide anything about units. They
//! only present what the plan says; a verdict such as "blocked" is derived
//! from the plan with the same helpers (`Plan::touches_protected`) that the
//! exit-code policy uses, so a report can never disagree with the exit code.

pub mod codequality;
pub mod json;
pub mod junit;
pub mod markdown;
pub mod text;
pub mod unit_diff;

use std::fs;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use plan_model::{Action, Edge, Plan, UnitPlan};

use crate::args::{Format, OutputArgs};

pub use unit_diff::UnitDiff;

/// Everything a renderer may show: the plan and the unified diffs of the
/// unit files that changed between the two generations.
#[derive(Clone, Copy, Debug)]
pub struct Report<'a> {
    /// The plan, after protection.
    pub plan: &'a Plan,
    /// Unified diffs of changed unit files, sorted by unit then path, from
    /// the texts the planner parsed. Empty when the generations were not
    /// loaded (a saved plan being applied).
    pub diffs: &'a [UnitDiff],
    /// The commands that carry the plan out, in order, as shell command
    /// lines: the `launchctl` calls and file operations of a nix-darwin
    /// plan. Empty for systemd plans, whose steps are part of the plan.
    pub commands: &'a [String],
}

/// How text output is decorated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Style {
    /// Use ANSI colours.
    pub color: bool,
}

impl Style {
    /// The style for standard output: colours only on a terminal, and never
    /// when `NO_COLOR` is set to a non-empty value (<https://no-color.org>).
    pub fn for_stdout() -> Style {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Style { color: !no_color && std::io::stdout().is_terminal() }
    }
}

/// One `--report FORMAT=PATH` request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportFile {
    /// The format to write.
    pub format: Format,
    /// Where to write it.
    pub path: PathBuf,
}

/// Parses the `--report` values, naming the bad one in the error.
pub fn parse_report_files(values: &[String]) -> anyhow::Result<Vec<ReportFile>> {
    values.iter().map(|v| parse_report_file(v)).collect()
}

fn parse_report_file(value: &str) -> anyhow::Result<ReportFile> {
    let Some((format, path)) = value.split_once('=') else {
        anyhow::bail!(
            "--report {value:?}: expected FORMAT=PATH, e.g. junit=report.xml \
             (formats: text, json, junit, codequality, markdown)"
        );
    };
    let format = parse_format(format).with_context(|| format!("--report {value:?}"))?;
    if path.is_empty() {
        anyhow::bail!("--report {value:?}: the path after '=' is empty");
    }
    Ok(ReportFile { format, path: PathBuf::from(path) })
}

/// Parses a format name as the command line spells it.
pub fn parse_format(name: &str) -> anyhow::Result<Format> {
    use clap::ValueEnum;
    Format::from_str(name, true).map_err(|_| {
        anyhow::anyhow!("unknown report format {name:?} (formats: text, json, junit, codequality, markdown)")
    })
}

/// Renders one format. Text is rendered with `style`; files never get
/// colours, so callers pass `Style::default()` for them.
pub fn render(format: Format, report: &Report<'_>, style: Style) -> String {
    match format {
        Format::Text => text::render(report, style),
        Format::Json => json::render(report.plan),
        Format::Junit => junit::render(report),
        Format::Codequality => codequality::render(report),
        Format::Markdown => markdown::render(report, markdown::LIMIT),
    }
}

/// Prints the standard-output format and writes every `--report` file.
///
/// The `--report` values are parsed before anything is written, so a typo
/// in the last one does not leave the others half written. Each file is
/// written to a temporary sibling and renamed into place, so a CI job never
/// picks up a truncated report.
pub fn write_outputs(report: &Report<'_>, output: &OutputArgs) -> anyhow::Result<()> {
    let files = parse_report_files(&output.report)?;
    for file in &files {
        let text = render(file.format, report, Style::default());
        write_atomically(&file.path, text.as_bytes()).with_context(|| {
            format!("cannot write the {} report to {}", format_name(file.format), file.path.display())
        })?;
    }
    let text = render(output.stdout_format(), report, Style::for_stdout());
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Prints and writes the reports of a systemd plan with its unit-file
/// diffs ([`unit_diff::unit_diffs`]).
pub fn write_plan(plan: &Plan, diffs: &[UnitDiff], output: &OutputArgs) -> anyhow::Result<()> {
    write_outputs(&Report { plan, diffs, commands: &[] }, output)
}

/// Writes `bytes` to `path` through a temporary file in the same directory,
/// renamed into place. A path that exists and is not a plain file (a
/// symbolic link, `/dev/stdout`, a named pipe) is written in place instead:
/// renaming over it would replace the link or device node itself.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Ok(meta) = fs::symlink_metadata(path)
        && !meta.file_type().is_file()
    {
        return fs::write(path, bytes);
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = fs::write(&tmp, bytes).and_then(|()| fs::rename(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The command-line name of a format.
pub fn format_name(format: Format) -> &'static str {
    match format {
        Format::Text => "text",
        Format::Json => "json",
        Format::Junit => "junit",
        Format::Codequality => "codequality",
        Format::Markdown => "markdown",
    }
}

/// The verdict a gate reports, derived from the plan alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing touches a protected unit.
    Safe,
    /// Actions that touch protected units were dropped; the rest may run.
    Deferred,
    /// The switch is refused as a whole.
    Refused,
}

impl Verdict {
    /// The verdict for a plan.
    pub fn of(plan: &Plan) -> Verdict {
        if plan.protection.refused {
            Verdict::Refused
        } else if plan.deferred().next().is_some() {
            Verdict::Deferred
        } else {
            Verdict::Safe
        }
    }

    /// A short lowercase word for the verdict.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Safe => "safe",
            Verdict::Deferred => "deferred",
            Verdict::Refused => "refused",
        }
    }
}

/// What happens to one action of one unit, as every report lists it: one
/// entry per action carried out and one per action protection removed or
/// refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionItem<'a> {
    /// The unit's plan entry.
    pub unit: &'a UnitPlan,
    /// The action.
    pub action: Action,
    /// Whether protection removed the action, and how.
    pub status: ItemStatus,
    /// For a deferred or refused action: the protected unit it touches and
    /// the chain of relations that leads there.
    pub blocker: Option<Blocker<'a>>,
}

/// Why an action touches a protected unit (from a [`plan_model::Deferral`]
/// or a [`plan_model::Refusal`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blocker<'a> {
    /// The unit that holds the action.
    pub unit: &'a str,
    /// The protected unit that would be touched.
    pub touches: &'a str,
    /// What would happen to it.
    pub effect: Action,
    /// The relations from the protected unit back to `unit`.
    pub chain: &'a [Edge],
}

/// The fate of an [`ActionItem`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemStatus {
    /// The action will be carried out.
    Planned,
    /// The action would be carried out, but the whole switch is refused
    /// because another action touches a protected unit.
    HeldByRefusal,
    /// Protection dropped the action; the rest of the switch goes ahead.
    Deferred,
    /// The action touches a protected unit and the switch is refused.
    Refused,
}

impl ItemStatus {
    /// Tells whether the action touches a protected unit.
    pub fn is_blocked(self) -> bool {
        matches!(self, ItemStatus::Deferred | ItemStatus::Refused)
    }
}

/// Lists every unit action of the plan, units in plan order, each unit's
/// planned actions first and then its deferred ones. In a refused plan the
/// actions named by a refusal are `Refused` and every other action is
/// `HeldByRefusal`.
pub fn action_items(plan: &Plan) -> Vec<ActionItem<'_>> {
    let refused = plan.protection.refused;
    let mut items = Vec::new();
    for unit in &plan.units {
        let refusal = plan.protection.refusals.iter().find(|r| r.unit == unit.unit);
        for &action in &unit.actions {
            let (status, blocker) = match refusal {
                Some(r) if r.actions.contains(&action) => (
                    ItemStatus::Refused,
                    Some(Blocker { unit: &unit.unit, touches: &r.touches, effect: r.effect, chain: &r.chain }),
                ),
                _ if refused => (ItemStatus::HeldByRefusal, None),
                _ => (ItemStatus::Planned, None),
            };
            items.push(ActionItem { unit, action, status, blocker });
        }
        if let Some(d) = &unit.deferral {
            let blocker = Blocker { unit: &unit.unit, touches: &d.touches, effect: d.effect, chain: &d.chain };
            for &action in &d.actions {
                items.push(ActionItem { unit, action, status: ItemStatus::Deferred, blocker: Some(blocker) });
            }
        }
    }
    // A refusal that names a unit or action the plan does not list (a
    // plan edited by hand, or written by another version) is still shown:
    // hiding why a switch is refused would be worse than repeating it.
    for r in &plan.protection.refusals {
        let Some(unit) = plan.units.iter().find(|u| u.unit == r.unit) else { continue };
        for &action in r.actions.iter().filter(|a| !unit.actions.contains(a)) {
            let blocker = Blocker { unit: &unit.unit, touches: &r.touches, effect: r.effect, chain: &r.chain };
            items.push(ActionItem { unit, action, status: ItemStatus::Refused, blocker: Some(blocker) });
        }
    }
    items
}

/// The units whose actions touch a protected unit, once each, in plan
/// order, with the first blocker found for each.
pub fn blockers(plan: &Plan) -> Vec<Blocker<'_>> {
    let mut seen = std::collections::BTreeSet::new();
    action_items(plan).into_iter().filter_map(|i| i.blocker).filter(|b| seen.insert(b.unit)).collect()
}

/// The reasons of a unit as one line: `stop-start: stopped before ...`.
pub fn reasons_line(unit: &UnitPlan) -> String {
    unit.reasons
        .iter()
        .map(|r| match &r.detail {
            Some(d) => format!("{}: {} ({d})", r.rule.id(), r.rule.explain()),
            None => format!("{}: {}", r.rule.id(), r.rule.explain()),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The reason chain of a blocked action as one phrase, e.g. `would stop
/// protected unit sshd.service, because
/// sshd.service Requires=network-setup.service`.
pub fn chain_line(b: &Blocker<'_>) -> String {
    let mut s = format!("would {} protected unit {}", b.effect, b.touches);
    if b.chain.is_empty() {
        if b.touches != b.unit {
            s.push_str(&format!(" (via {})", b.unit));
        }
    } else {
        let links: Vec<String> = b.chain.iter().map(|e| format!("{} {}={}", e.from, e.relation, e.to)).collect();
        s.push_str(&format!(", because {}", links.join(", ")));
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn links_and_devices_are_written_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("real.xml");
        let link = dir.path().join("link.xml");
        fs::write(&target, "old").unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_atomically(&link, b"new").unwrap();
        assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link was replaced");
        assert_eq!(fs::read_to_string(&target).unwrap(), "new");
        let plain = dir.path().join("plain.xml");
        write_atomically(&plain, b"x").unwrap();
        write_atomically(&plain, b"y").unwrap();
        assert_eq!(fs::read_to_string(&plain).unwrap(), "y");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 3, "temporary files left behind: {names:?}");
        write_atomically(Path::new("/dev/null"), b"z").unwrap();
    }

    #[test]
    fn report_values_parse_and_bad_ones_are_named() {
        let files = parse_report_files(&["junit=out/r.xml".into(), "CodeQuality=cq.json".into()]).unwrap();
        assert_eq!(files[0], ReportFile { format: Format::Junit, path: "out/r.xml".into() });
        assert_eq!(files[1].format, Format::Codequality);
        let err = parse_report_files(&["xml=r.xml".into()]).unwrap_err();
        assert!(format!("{err:#}").contains("\"xml\""), "{err:#}");
        let err = parse_report_files(&["junit".into()]).unwrap_err();
        assert!(format!("{err:#}").contains("FORMAT=PATH"), "{err:#}");
        let err = parse_report_files(&["junit=".into()]).unwrap_err();
        assert!(format!("{err:#}").contains("empty"), "{err:#}");
    }
}
