//! The human-readable text form of a [`Plan`].
//!
//! The first block reads like NixOS's switch output, one line per phase in
//! execution order ("stopping the following units: ..."), so that people
//! who know `nixos-rebuild` recognise it. The second block explains each
//! unit: its actions, the rules that fired and the unit-file keys that
//! changed. Nothing here decides anything; it only prints the plan.

use std::fmt::Write as _;

use plan_model::{Action, KeyChange, Phase, Plan, Severity, Step, UnitPlan};

/// Renders a plan as text, ending in a newline.
pub fn text(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "switch {} -> {}", plan.old.path, plan.new.path);
    out.push('\n');
    if plan.protection.refused {
        // A refused plan leads with the refusal; what the switch would do
        // follows as a conditional, never as what will happen.
        crate::protect::render_refusal(&mut out, plan);
        out.push_str("\nwithout the refusal, the switch would go like this:\n");
        let mut lines = String::new();
        phases(&mut lines, plan);
        for line in lines.lines() {
            let _ = writeln!(out, "  {line}");
        }
    } else {
        phases(&mut out, plan);
    }
    units(&mut out, plan);
    crate::protect::render_text(&mut out, plan);
    packages(&mut out, plan);
    diagnostics(&mut out, plan);
    out
}

/// The package changes (closure diff), when the plan carries them.
fn packages(out: &mut String, plan: &Plan) {
    let Some(value) = &plan.packages else { return };
    // A plan file edited by hand may carry anything here; a value that is
    // not a closure diff is shown as a note rather than failing the render.
    match serde_json::from_value::<closure_diff::ClosureDiff>(value.clone()) {
        Ok(diff) => {
            out.push_str(
                "
packages:
",
            );
            for line in diff.render_text().lines() {
                match line {
                    "" => out.push('\n'),
                    line => {
                        let _ = writeln!(out, "  {line}");
                    }
                }
            }
        }
        Err(err) => {
            let _ = writeln!(
                out,
                "
packages: not shown, the plan's package diff is malformed: {err}"
            );
        }
    }
}

/// The units that get `action`, comma-separated.
fn unit_list(plan: &Plan, action: Action) -> Option<String> {
    let units = plan.units_with(action);
    (!units.is_empty()).then(|| units.join(", "))
}

fn phases(out: &mut String, plan: &Plan) {
    let mut lines = Vec::new();
    for phase in Phase::ORDER {
        let unit_line = |verb: &str, action: Action| unit_list(plan, action).map(|l| format!("{verb}: {l}"));
        match phase {
            Phase::Stop => lines.extend(unit_line("stopping the following units", Action::Stop)),
            Phase::Skip => lines.extend(unit_line("NOT restarting the following changed units", Action::Skip)),
            Phase::Reload => lines.extend(unit_line("reloading the following units", Action::Reload)),
            Phase::Restart => lines.extend(unit_line("restarting the following units", Action::Restart)),
            Phase::Start => lines.extend(unit_line("starting the following units", Action::Start)),
            _ => {
                for step in plan.steps.iter().filter(|s| s.phase() == phase) {
                    lines.push(step_line(step));
                }
            }
        }
    }
    if lines.is_empty() {
        lines.push("nothing to do".to_owned());
    }
    for line in lines {
        let _ = writeln!(out, "{line}");
    }
}

fn step_line(step: &Step) -> String {
    match step {
        Step::Swapoff { device } => format!("stopping swap device: {device}"),
        Step::Activate { script } => format!("activating the configuration: {script}"),
        Step::Reexec { reasons } => format!("restarting systemd ({})", reasons.join("; ")),
        Step::DaemonReload => "reloading systemd (daemon-reload)".to_owned(),
        Step::RestartSysinitReactivation => "restarting sysinit-reactivation.target".to_owned(),
    }
}

fn units(out: &mut String, plan: &Plan) {
    if plan.units.is_empty() {
        return;
    }
    out.push_str("\nunits:\n");
    for unit in &plan.units {
        unit_block(out, unit);
    }
}

fn unit_block(out: &mut String, unit: &UnitPlan) {
    let actions = if unit.actions.is_empty() {
        "no action".to_owned()
    } else {
        unit.actions.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(", ")
    };
    let _ = match &unit.deferral {
        Some(d) => {
            let deferred: Vec<&str> = d.actions.iter().map(|a| a.as_str()).collect();
            writeln!(out, "  {}: {actions} (deferred: {})", unit.unit, deferred.join(", "))
        }
        None => writeln!(out, "  {}: {actions}", unit.unit),
    };
    for reason in &unit.reasons {
        let _ = write!(out, "    {}: {}", reason.rule.id(), reason.rule.explain());
        if let Some(detail) = &reason.detail {
            let _ = write!(out, " ({detail})");
        }
        out.push('\n');
    }
    for change in &unit.changes {
        let _ = writeln!(out, "    changed {}", key_change(change));
    }
}

/// `[Service] ExecStart: /bin/a -> /bin/b`: each value as the unit file
/// writes it, several values of one key separated by ` | `, an empty value
/// as `""`, and a key that is not set as `unset`.
fn key_change(change: &KeyChange) -> String {
    let values = |v: &Option<Vec<String>>| match v {
        None => "unset".to_owned(),
        Some(values) if values.is_empty() => "unset".to_owned(),
        Some(values) => values
            .iter()
            .map(|v| if v.is_empty() { "\"\"".to_owned() } else { v.clone() })
            .collect::<Vec<_>>()
            .join(" | "),
    };
    format!("[{}] {}: {} -> {}", change.section, change.key, values(&change.old), values(&change.new))
}

fn diagnostics(out: &mut String, plan: &Plan) {
    if plan.diagnostics.is_empty() {
        return;
    }
    out.push_str("\ndiagnostics:\n");
    for d in &plan.diagnostics {
        let severity = match d.severity {
            Severity::Info => "info",
            Severity::Warning => "warning",
        };
        let mut location = String::new();
        if let Some(path) = &d.path {
            location.push_str(path);
            if let Some(line) = d.line {
                let _ = write!(location, ":{line}");
            }
            location.push_str(": ");
        }
        if let Some(unit) = &d.unit {
            let _ = write!(location, "{unit}: ");
        }
        let _ = writeln!(out, "  {severity}: {location}{}", d.message);
    }
}
