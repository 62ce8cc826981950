//! The GitLab Code Quality report: a JSON array of findings in the subset of
//! the Code Climate format that GitLab reads (`description`, `check_name`,
//! `fingerprint`, `severity`, `location.path`, `location.lines.begin`).
//!
//! Findings, most severe first in the merge-request widget:
//!
//! | check | severity | when |
//! |-------|----------|------|
//! | `safe-switch/disturbed` | blocker | after the apply, a protected unit was disturbed (another process or invocation, or systemd acted on it outside the plan) |
//! | `safe-switch/unplanned` | critical | during the apply, systemd acted on a unit the plan neither lists nor predicts |
//! | `safe-switch/unit-failed` | critical | after the apply, a unit it acted on (or caused to fail) is failed |
//! | `safe-switch/stopped-early` | critical | the apply stopped before its last phase |
//! | `safe-switch/refused` | blocker | an action touches a protected unit and the switch is refused |
//! | `safe-switch/deferred` | critical | protection dropped an action |
//! | `safe-switch/pending` | major | an action an earlier switch deferred is still pending (and this plan leaves it so) |
//! | `safe-switch/reboot` | major | part of the switch takes effect only at the next boot |
//! | `safe-switch/kernel-module` | minor / info | a module the new generation adds or changes, usable only after a reboot or not by `modprobe` / usable now |
//! | `safe-switch/diagnostic` | minor / info | a planner warning / note |
//! | `safe-switch/stop`, `safe-switch/restart` | info | a running unit is interrupted |
//! | `safe-switch/skip` | info | a unit changed but is deliberately left running |
//!
//! A fingerprint is the SHA-256 of the check, the unit and the action (for a
//! diagnostic: its unit, file and message, with store hashes removed; for a
//! reboot: its reason and its place among those of the same reason; for a
//! module: its file under its release), never
//! of line numbers or store paths, so the same finding keeps its identity
//! from one pipeline to the next and GitLab can tell new findings from
//! resolved ones.

use std::collections::BTreeSet;

use plan_model::{
    Action, ApplyReport, Earlier, Fate, ModuleUse, Pending, PendingDeferral, Plan, RebootReason, Severity,
};
use serde::Serialize;
use sha2::{Digest, Sha256};

use plan_model::FileDiff;

use crate::{ItemStatus, Report, Verdict, action_items, chain_line, reasons_line};

/// Where a generation keeps its units; findings about a unit point there,
/// relative to the generation, since the plan does not know which file of
/// the repository declared the unit.
const UNIT_DIR: &str = "etc/systemd/system";

/// One finding.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    /// What was found, as one sentence.
    pub description: String,
    /// The check, `safe-switch/<kind>`.
    pub check_name: String,
    /// A stable identity of the finding.
    pub fingerprint: String,
    /// `info`, `minor`, `major`, `critical` or `blocker`.
    pub severity: &'static str,
    /// Where.
    pub location: Location,
}

/// The location of a finding.
#[derive(Clone, Debug, Serialize)]
pub struct Location {
    /// A path relative to the repository (or the generation).
    pub path: String,
    /// The lines.
    pub lines: Lines,
}

/// The lines of a finding.
#[derive(Clone, Debug, Serialize)]
pub struct Lines {
    /// The first line, 1-based.
    pub begin: u32,
}

/// Renders the Code Quality report.
pub fn render(report: &Report<'_>) -> String {
    to_json(&report_findings(report))
}

/// Renders the reports of several hosts (`safe-switch report merge`) as
/// one list: each finding's description starts with its host, and its
/// fingerprint covers the host, so the same finding on two hosts is two
/// findings, each keeping its identity from one pipeline to the next.
pub fn render_hosts(hosts: &[(&str, Report<'_>)]) -> String {
    let mut all = Vec::new();
    for (host, report) in hosts {
        for mut f in report_findings(report) {
            f.fingerprint = fingerprint(&["host", host, &f.fingerprint]);
            f.description = format!("{host}: {}", f.description);
            all.push(f);
        }
    }
    to_json(&all)
}

/// The findings of a report: what the apply did first (it is what
/// happened, not a plan), then the plan's, then the deferrals of earlier
/// switches it leaves pending.
fn report_findings(report: &Report<'_>) -> Vec<Finding> {
    let mut findings = report.applied.map(|a| applied_findings(a, report.diffs)).unwrap_or_default();
    findings.extend(self::findings(report.plan, report.diffs));
    // Deferred again: already a `deferred` finding of the plan.
    let still = report.pending.iter().filter(|e: &&Earlier| e.fate == Fate::StillPending);
    findings.extend(still.flat_map(|e| pending_findings(&e.deferral)));
    findings
}

/// Renders the record of pending deferrals: one finding per pending
/// action.
pub fn render_pending(pending: &Pending) -> String {
    to_json(&pending.deferrals.iter().flat_map(pending_findings).collect::<Vec<_>>())
}

fn to_json(findings: &[Finding]) -> String {
    let mut s = serde_json::to_string_pretty(findings).unwrap_or_else(|_| "[]".to_owned());
    s.push('\n');
    s
}

/// The findings of one pending deferral, one per action.
fn pending_findings(d: &PendingDeferral) -> Vec<Finding> {
    let check_name = "safe-switch/pending".to_owned();
    d.actions
        .iter()
        .map(|action| Finding {
            description: format!(
                "{action} {} is pending since {}: {}",
                d.unit,
                crate::utc_time(d.since_unix),
                chain_line(&crate::Blocker { unit: &d.unit, touch: &d.touch })
            ),
            check_name: check_name.clone(),
            fingerprint: fingerprint(&[&check_name, &d.unit, action.as_str()]),
            severity: "major",
            location: Location { path: format!("{UNIT_DIR}/{}", d.unit), lines: Lines { begin: 1 } },
        })
        .collect()
}

/// Where a finding about `unit` points: its unit file, unless the diffs
/// show only other files of it changing (a drop-in, a launchd plist); then
/// the first of those.
fn unit_path(unit: &str, diffs: &[FileDiff]) -> String {
    let fragment = format!("{UNIT_DIR}/{unit}");
    let changed: Vec<&str> = diffs.iter().filter(|d| d.unit == unit).map(|d| d.path.as_str()).collect();
    match changed.first() {
        Some(first) if !changed.contains(&fragment.as_str()) => (*first).to_owned(),
        _ => fragment,
    }
}

/// The findings of an apply: protected units disturbed, unplanned
/// effects, failed units, an apply that stopped early.
pub fn applied_findings(a: &ApplyReport, diffs: &[FileDiff]) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut push = |check: &str, severity: &'static str, unit: Option<&str>, what: &str, description: String| {
        let check_name = format!("safe-switch/{check}");
        let path = unit.map_or_else(|| UNIT_DIR.to_owned(), |u| unit_path(u, diffs));
        out.push(Finding {
            fingerprint: fingerprint(&[&check_name, unit.unwrap_or("apply"), what]),
            description,
            check_name,
            severity,
            location: Location { path, lines: Lines { begin: 1 } },
        });
    };
    for c in &a.protected {
        if let Some(what) = &c.disturbed {
            push(
                "disturbed",
                "blocker",
                Some(&c.unit),
                "check",
                format!("protected {} was disturbed by the switch: {what}", c.unit),
            );
        }
    }
    if let Some(o) = &a.observed {
        for e in o.unplanned() {
            let (check, severity) = if e.protected { ("disturbed", "blocker") } else { ("unplanned", "critical") };
            push(
                check,
                severity,
                Some(&e.unit),
                e.effect.as_str(),
                format!(
                    "during the switch systemd {} {}, which the plan neither lists nor predicts{}",
                    e.effect.past(),
                    e.unit,
                    if e.protected { " (a protected unit)" } else { "" }
                ),
            );
        }
    }
    for f in &a.failed {
        push("unit-failed", "critical", Some(&f.unit), "failed", format!("{} failed: {}", f.unit, f.status.summary()));
    }
    if let Some(why) = &a.aborted {
        push("stopped-early", "critical", None, "aborted", format!("the switch stopped early: {why}"));
    }
    out
}

/// Lists the findings of a plan, without duplicate fingerprints, pointing
/// each unit's findings at the file that changed (see [`unit_path`]).
pub fn findings(plan: &Plan, diffs: &[FileDiff]) -> Vec<Finding> {
    let mut out = Vec::new();
    for item in action_items(plan) {
        let unit = &item.unit.unit;
        let (check, severity, description) = match item.status {
            ItemStatus::Refused => (
                "refused",
                "blocker",
                format!(
                    "{} {unit} is refused: {}",
                    item.action,
                    item.blocker.map(|b| chain_line(&b)).unwrap_or_default()
                ),
            ),
            ItemStatus::Deferred => (
                "deferred",
                "critical",
                format!(
                    "{} {unit} is deferred: {}",
                    item.action,
                    item.blocker.map(|b| chain_line(&b)).unwrap_or_default()
                ),
            ),
            ItemStatus::Planned | ItemStatus::HeldByRefusal => match item.action {
                Action::Stop | Action::Restart => (
                    item.action.as_str(),
                    "info",
                    format!("{unit} will be {}: {}", past(item.action), reasons_line(item.unit)),
                ),
                Action::Skip => {
                    ("skip", "info", format!("{unit} changed but is left running: {}", reasons_line(item.unit)))
                }
                Action::Reload | Action::Start => continue,
            },
        };
        let check_name = format!("safe-switch/{check}");
        out.push(Finding {
            fingerprint: fingerprint(&[&check_name, unit, item.action.as_str()]),
            description,
            check_name,
            severity,
            location: Location { path: unit_path(unit, diffs), lines: Lines { begin: 1 } },
        });
    }
    if Verdict::of(plan) == Verdict::Refused {
        let check_name = "safe-switch/refused".to_owned();
        out.push(Finding {
            fingerprint: fingerprint(&[&check_name, "plan"]),
            description: "the switch is refused: it would touch a protected unit".to_owned(),
            check_name,
            severity: "blocker",
            location: Location { path: UNIT_DIR.to_owned(), lines: Lines { begin: 1 } },
        });
    }
    for (i, r) in plan.reboot.iter().enumerate() {
        let check_name = "safe-switch/reboot".to_owned();
        let nth = plan.reboot[..i].iter().filter(|o| o.reason == r.reason).count().to_string();
        let path = match r.reason {
            RebootReason::Kernel => "kernel",
            RebootReason::Initrd => "initrd",
            RebootReason::KernelModules => "kernel-modules",
            RebootReason::Dbus => "etc/systemd/system/dbus.service",
            RebootReason::Systemd => "init-interface-version",
            RebootReason::Activation => "switch-inhibitors",
        };
        out.push(Finding {
            fingerprint: fingerprint(&[&check_name, r.reason.as_str(), &nth]),
            description: format!("needs a reboot: {}", crate::reboot_line(r)),
            check_name,
            severity: "major",
            location: Location { path: path.to_owned(), lines: Lines { begin: 1 } },
        });
    }
    for m in &plan.kernel_modules {
        let check_name = "safe-switch/kernel-module".to_owned();
        out.push(Finding {
            fingerprint: fingerprint(&[&check_name, &m.path]),
            description: format!("kernel module {}", crate::module_line(m)),
            check_name,
            severity: match m.usable {
                ModuleUse::Now | ModuleUse::Unknown => "info",
                ModuleUse::AfterReboot | ModuleUse::Unreachable => "minor",
            },
            location: Location {
                path: format!("kernel-modules/lib/modules/{}/{}", m.release, m.path),
                lines: Lines { begin: 1 },
            },
        });
    }
    for d in &plan.diagnostics {
        let check_name = "safe-switch/diagnostic".to_owned();
        let unit = d.unit.clone().unwrap_or_default();
        let path = d.path.clone().unwrap_or_default();
        let fp = fingerprint(&[&check_name, &unit, &strip_store_hashes(&path), &strip_store_hashes(&d.message)]);
        let location_path = if !path.is_empty() {
            path.trim_start_matches('/').to_owned()
        } else if !unit.is_empty() {
            unit_path(&unit, diffs)
        } else {
            UNIT_DIR.to_owned()
        };
        out.push(Finding {
            fingerprint: fp,
            description: match &d.unit {
                Some(u) => format!("{u}: {}", d.message),
                None => d.message.clone(),
            },
            check_name,
            severity: match d.severity {
                Severity::Warning => "minor",
                Severity::Info => "info",
            },
            location: Location { path: location_path, lines: Lines { begin: d.line.unwrap_or(1).max(1) } },
        });
    }
    let mut seen = BTreeSet::new();
    out.retain(|f| seen.insert(f.fingerprint.clone()));
    out
}

fn past(action: Action) -> &'static str {
    match action {
        Action::Stop => "stopped",
        Action::Restart => "restarted",
        Action::Reload => "reloaded",
        Action::Start => "started",
        Action::Skip => "skipped",
    }
}

/// The SHA-256, in hex, of the parts joined by a separator that cannot occur
/// in unit names.
fn fingerprint(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    h.update(b"safe-switch-codequality-v1");
    for p in parts {
        h.update([0x1f]);
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Replaces `/nix/store/<hash>-` with `/nix/store/`, so that a message that
/// names a store path keeps its fingerprint when only the hash moves.
fn strip_store_hashes(s: &str) -> String {
    const STORE: &str = "/nix/store/";
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(STORE) {
        out.push_str(&rest[..i + STORE.len()]);
        rest = &rest[i + STORE.len()..];
        let hash_len = rest.bytes().take_while(u8::is_ascii_alphanumeric).count();
        if hash_len == 32 && rest.as_bytes().get(32) == Some(&b'-') {
            rest = &rest[33..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn findings_point_at_the_file_that_changed() {
        let diff = |unit: &str, path: &str| FileDiff { unit: unit.into(), path: path.into(), diff: String::new() };
        let diffs = [
            diff("a.service", "etc/systemd/system/a.service.d/override.conf"),
            diff("b.service", "etc/systemd/system/b.service"),
            diff("b.service", "etc/systemd/system/b.service.d/override.conf"),
            diff("org.nixos.x", "Library/LaunchDaemons/org.nixos.x.plist"),
        ];
        assert_eq!(unit_path("a.service", &diffs), "etc/systemd/system/a.service.d/override.conf");
        assert_eq!(unit_path("b.service", &diffs), "etc/systemd/system/b.service");
        assert_eq!(unit_path("org.nixos.x", &diffs), "Library/LaunchDaemons/org.nixos.x.plist");
        assert_eq!(unit_path("c.service", &diffs), "etc/systemd/system/c.service");
    }

    #[test]
    fn store_hashes_are_removed_from_fingerprint_input() {
        assert_eq!(
            strip_store_hashes("/nix/store/0123456789abcdfghijklmnpqrsvwxyz-unit-a/x and /nix/store/short"),
            "/nix/store/unit-a/x and /nix/store/short"
        );
    }
}
