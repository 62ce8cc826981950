//! The human-readable text report.
//!
//! The first block reads like NixOS's switch output, one line per phase in
//! execution order ("stopping the following units: ..."), so that people
//! who know `nixos-rebuild` recognise it; a refused plan leads with its
//! refusal instead. Then each unit with its actions, the rules that fired
//! and the unit-file keys that changed; the protections in force and what
//! they held back; the package changes; the diagnostics; the commands that
//! carry a launchd plan out; the unified diffs of the files that changed;
//! and last, once the plan was carried out, what the apply did
//! ([`render_applied`]).
//!
//! Everything that comes from the inputs (names, paths, values) is passed
//! through [`printable`] first, so it cannot move the cursor or hide text.
//! Colours are chosen while each line is written ([`Style::color`]).

use std::fmt::Write as _;

use anstyle::{AnsiColor, Style as Ansi};
use plan_model::{
    Action, ApplyReport, Earlier, KeyChange, Mode, ModuleUse, Pending, Phase, Plan, ProtectionSource, Rule, Severity,
    Step, UnitPlan,
};

use crate::{
    Blocker, HostReport, Report, Style, Verdict, chain_line, module_line, pending_generations, pending_hint,
    pending_line, printable, reboot_line,
};

/// What a line is, for its colour.
#[derive(Clone, Copy)]
enum Kind {
    Plain,
    Heading,
    /// A deferred or refused action, in the colour of the verdict.
    Blocked,
    Warning,
    Added,
    Removed,
    Hunk,
}

/// Writes lines, painting each by its kind when the style allows.
struct Out {
    text: String,
    style: Style,
    verdict: Verdict,
}

impl Out {
    fn line(&mut self, kind: Kind, line: &str) {
        let ansi = match kind {
            _ if !self.style.color => Ansi::new(),
            Kind::Plain => Ansi::new(),
            Kind::Heading => Ansi::new().bold(),
            Kind::Blocked => AnsiColor::from(self.verdict).on_default(),
            Kind::Warning => AnsiColor::Yellow.on_default(),
            Kind::Added => AnsiColor::Green.on_default(),
            Kind::Removed => AnsiColor::Red.on_default(),
            Kind::Hunk => AnsiColor::Cyan.on_default(),
        };
        if ansi == Ansi::new() {
            self.text.push_str(line);
        } else {
            let _ = write!(self.text, "{ansi}{line}{ansi:#}");
        }
        self.text.push('\n');
    }

    fn plain(&mut self, line: &str) {
        self.line(Kind::Plain, line);
    }

    fn blank(&mut self) {
        self.text.push('\n');
    }
}

impl From<Verdict> for AnsiColor {
    fn from(v: Verdict) -> AnsiColor {
        match v {
            Verdict::Safe => AnsiColor::Green,
            Verdict::Deferred => AnsiColor::Yellow,
            Verdict::Refused => AnsiColor::Red,
        }
    }
}

/// Renders the plan, the commands and the unit-file diffs as text.
pub fn render(report: &Report<'_>, style: Style) -> String {
    let plan = report.plan;
    let mut out = Out { text: String::new(), style, verdict: Verdict::of(plan) };
    out.plain(&printable(&format!("switch {} -> {}", plan.old.path, plan.new.path)));
    out.blank();
    if plan.protection.refused {
        // A refused plan leads with the refusal; what the switch would do
        // follows as a conditional, never as what will happen.
        refusal(&mut out, plan);
        out.blank();
        out.line(Kind::Heading, "without the refusal, the switch would go like this:");
        for line in phase_lines(plan) {
            out.plain(&format!("  {}", printable(&line)));
        }
    } else {
        for line in phase_lines(plan) {
            out.plain(&printable(&line));
        }
    }
    reboot(&mut out, plan);
    units(&mut out, plan);
    kernel_modules(&mut out, plan);
    protection(&mut out, plan);
    earlier(&mut out, report.pending);
    packages(&mut out, plan);
    diagnostics(&mut out, plan);
    if !report.commands.is_empty() {
        out.blank();
        out.line(Kind::Heading, "commands, in order:");
        for command in report.commands {
            out.plain(&format!("  {}", printable(command)));
        }
    }
    diffs(&mut out, report);
    if let Some(applied) = report.applied {
        out.blank();
        out.line(Kind::Heading, &format!("applied: {}", crate::applied_verdict(applied)));
        applied_lines(&mut out, applied);
    }
    out.text
}

/// What an apply did, as text: the lines `switch` and `apply` print when
/// the apply ends (each phase, what stopped it, the failed units and
/// their status, what systemd was seen doing compared with the plan, the
/// protected units, where the activation's output is kept).
pub fn render_applied(applied: &ApplyReport, style: Style) -> String {
    let verdict = if applied.protected_disturbed() { Verdict::Refused } else { Verdict::Deferred };
    let mut out = Out { text: String::new(), style, verdict };
    applied_lines(&mut out, applied);
    out.text
}

fn applied_lines(out: &mut Out, applied: &ApplyReport) {
    for line in applied.render_text().lines() {
        let kind = if line.starts_with("PROTECTED UNIT DISTURBED") || line.starts_with("UNPLANNED") {
            Kind::Blocked
        } else if line.starts_with("warning:") || line.starts_with("stopped early") {
            Kind::Warning
        } else {
            Kind::Plain
        };
        out.line(kind, &printable(line));
    }
    if let Some(status) = &applied.failed_status {
        for line in status.lines() {
            out.plain(&printable(line));
        }
    }
}

/// Renders the reports of several hosts: a line over all of them, a table
/// of the hosts (verdict, action counts, deferrals pending, reboot), then
/// each host's report as [`render`] makes it, under a line naming the host.
pub fn render_hosts(hosts: &[HostReport<'_>], style: Style) -> String {
    let verdicts: Vec<Verdict> = hosts.iter().map(|h| Verdict::of(h.report.plan)).collect();
    let worst = verdicts.iter().copied().max_by_key(|v| *v as u8).unwrap_or(Verdict::Safe);
    let mut out = Out { text: String::new(), style, verdict: worst };
    out.line(Kind::Heading, &crate::hosts_summary(hosts));
    out.blank();
    let rows: Vec<[String; 7]> = hosts
        .iter()
        .zip(&verdicts)
        .map(|(h, v)| {
            let c = crate::ActionCounts::of(h.report.plan);
            let reboot: Vec<&str> = h.reboot.iter().map(|r| r.reason.as_str()).collect();
            [
                printable(h.host).into_owned(),
                v.as_str().to_owned(),
                c.planned.to_string(),
                c.deferred.to_string(),
                c.refused.to_string(),
                crate::pending_now(h.report.pending).to_string(),
                if reboot.is_empty() { "no".to_owned() } else { printable(&reboot.join(",")).into_owned() },
            ]
        })
        .collect();
    let head = ["HOST", "VERDICT", "PLANNED", "DEFERRED", "REFUSED", "PENDING", "REBOOT"].map(str::to_owned);
    let mut widths = head.clone().map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |row: &[String; 7]| {
        let cells: Vec<String> = row.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        cells.join("  ").trim_end().to_owned()
    };
    out.line(Kind::Heading, &line(&head));
    for (row, v) in rows.iter().zip(&verdicts) {
        let kind = if *v == Verdict::Safe { Kind::Plain } else { Kind::Blocked };
        let saved = out.verdict;
        out.verdict = *v;
        out.line(kind, &line(row));
        out.verdict = saved;
    }
    for (h, v) in hosts.iter().zip(&verdicts) {
        out.blank();
        out.verdict = *v;
        out.line(Kind::Heading, &format!("== {}: {} ==", printable(h.host), v.as_str()));
        for r in h.reboot {
            out.line(Kind::Warning, &printable(&format!("reboot needed ({}): {}", r.reason, crate::clip(&r.detail))));
        }
        out.text.push_str(&render(&h.report, style));
    }
    out.text
}

/// The phase lines, as NixOS's switch prints them, in its order.
fn phase_lines(plan: &Plan) -> Vec<String> {
    let unit_line = |verb: &str, action: Action| {
        let units = plan.units_with(action);
        (!units.is_empty()).then(|| format!("{verb}: {}", units.join(", ")))
    };
    let mut lines = Vec::new();
    for &phase in plan.phase_order() {
        match phase {
            Phase::Stop => lines.extend(unit_line("stopping the following units", Action::Stop)),
            Phase::Skip => lines.extend(unit_line("NOT restarting the following changed units", Action::Skip)),
            Phase::Reload => lines.extend(unit_line("reloading the following units", Action::Reload)),
            Phase::Restart => lines.extend(unit_line("restarting the following units", Action::Restart)),
            Phase::Start => lines.extend(unit_line("starting the following units", Action::Start)),
            _ => lines.extend(plan.steps.iter().filter(|s| s.phase() == phase).map(step_line)),
        }
    }
    if lines.is_empty() {
        lines.push("nothing to do".to_owned());
    }
    lines
}

/// One global step, as the phase lines say it.
pub fn step_line(step: &Step) -> String {
    match step {
        Step::Swapoff { device } => format!("stopping swap device: {device}"),
        Step::Activate { script } => format!("activating the configuration: {script}"),
        Step::Reexec { reasons } => format!("restarting systemd ({})", reasons.join("; ")),
        Step::DaemonReload => "reloading systemd (daemon-reload)".to_owned(),
        Step::RestartSysinitReactivation => "restarting sysinit-reactivation.target".to_owned(),
        Step::Assertions { script } => format!("checking the pre-activation assertions: {script}"),
        Step::RegisterProfile { script } => format!("registering the profile: {script}"),
        Step::Prepopulate { script } => {
            format!("placing the files and the services map, no unit touched: {script}")
        }
        Step::RestartUserborn => "restarting userborn.service, when it exists".to_owned(),
        Step::Tmpfiles => "creating files from the generation's tmpfiles.d rules (systemd-tmpfiles)".to_owned(),
        Step::Mask { units } => format!("masking the following units: {}", units.join(", ")),
        Step::SystemManagerState => {
            "writing system-manager's state file (units deferred keep their old store paths)".to_owned()
        }
    }
}

/// What waits for the next boot, right after what the switch does.
fn reboot(out: &mut Out, plan: &Plan) {
    if plan.reboot.is_empty() {
        return;
    }
    out.blank();
    out.line(
        Kind::Heading,
        "needs a reboot: these changes take effect only at the next boot (nothing is restarted in their place):",
    );
    for r in &plan.reboot {
        out.line(Kind::Warning, &printable(&format!("  {}", reboot_line(r))));
    }
}

/// The kernel modules the new generation adds or changes, each with when
/// it can be used.
fn kernel_modules(out: &mut Out, plan: &Plan) {
    if plan.kernel_modules.is_empty() {
        return;
    }
    out.blank();
    out.line(Kind::Heading, "kernel modules the new generation adds or changes:");
    for m in &plan.kernel_modules {
        let kind = if m.usable == ModuleUse::Now { Kind::Plain } else { Kind::Warning };
        out.line(kind, &printable(&format!("  {}", module_line(m))));
    }
}

fn units(out: &mut Out, plan: &Plan) {
    if plan.units.is_empty() {
        return;
    }
    out.blank();
    out.line(Kind::Heading, "units:");
    for unit in &plan.units {
        unit_block(out, unit);
    }
}

fn unit_block(out: &mut Out, unit: &UnitPlan) {
    let actions = if unit.actions.is_empty() { "no action".to_owned() } else { verbs(&unit.actions) };
    let line = match &unit.deferral {
        Some(d) => format!("  {}: {actions} (deferred: {})", unit.unit, verbs(&d.actions)),
        None => format!("  {}: {actions}", unit.unit),
    };
    out.plain(&printable(&line));
    for reason in &unit.reasons {
        let mut line = format!("    {}: {}", reason.rule.id(), reason.rule.explain());
        if let Some(detail) = &reason.detail {
            let _ = write!(line, " ({detail})");
        }
        out.plain(&printable(&line));
    }
    for change in &unit.changes {
        out.plain(&printable(&format!("    changed {}", key_change(change))));
    }
}

fn verbs(actions: &[Action]) -> String {
    actions.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(", ")
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

/// The refusal that leads a refused plan: how many units touch a protected
/// unit, then each with its reason chain.
fn refusal(out: &mut Out, plan: &Plan) {
    let refusals = &plan.protection.refusals;
    out.plain(&format!(
        "REFUSED: nothing will be changed: {} unit{} would touch a protected unit",
        refusals.len(),
        if refusals.len() == 1 { "" } else { "s" }
    ));
    for r in refusals {
        out.line(
            Kind::Blocked,
            &printable(&format!("  {}", touch_line(&r.actions, "refused", &Blocker::of_refusal(r)))),
        );
    }
}

/// The refusal of a refused plan alone, as the text report leads with it.
pub fn refusal_text(plan: &Plan) -> String {
    let mut out = Out { text: String::new(), style: Style::default(), verdict: Verdict::of(plan) };
    refusal(&mut out, plan);
    out.text
}

/// The protections in force, then every deferred action with its reason
/// chain.
fn protection(out: &mut Out, plan: &Plan) {
    let p = &plan.protection;
    let mode = match p.mode {
        Mode::Defer => "defer",
        Mode::Refuse => "refuse",
    };
    out.blank();
    out.line(Kind::Heading, &format!("protection (mode: {mode}):"));
    // Implicit protections of units this machine does not have (dbus-broker
    // on a dbus-daemon host, say) are summed up in one line.
    let absent: Vec<&str> = p
        .protected
        .iter()
        .filter(|e| e.units.is_empty() && matches!(e.source, ProtectionSource::Implicit { .. }))
        .map(|e| e.selector.as_str())
        .collect();
    for entry in p.protected.iter().filter(|e| !absent.contains(&e.selector.as_str())) {
        let units = if entry.units.is_empty() { "no such unit".to_owned() } else { entry.units.join(", ") };
        let allow = if entry.allow.is_empty() { String::new() } else { format!("; may {}", verbs(&entry.allow)) };
        out.plain(&printable(&format!("  {} [{}{allow}]: {units}", entry.selector, entry.source.label())));
    }
    if !absent.is_empty() {
        out.plain(&printable(&format!("  implicit, not present here: {}", absent.join(", "))));
    }
    let deferred: Vec<_> = plan.units.iter().filter_map(|u| Some((u, u.deferral.as_ref()?))).collect();
    if !deferred.is_empty() {
        // launchd jobs cannot pick up a new plist without a restart, so a
        // deferred job keeps its old plist; systemd units get the new file.
        let old_plists = deferred.iter().any(|(u, _)| u.reasons.iter().any(|r| r.rule == Rule::OldPlistKept));
        out.line(
            Kind::Blocked,
            if old_plists {
                "  deferred (the old plists stay installed and the jobs loaded as they are):"
            } else {
                "  deferred (the new unit files are installed; the running units stay as they are):"
            },
        );
        for (unit, d) in deferred {
            let line = touch_line(&d.actions, "deferred", &Blocker::of_deferral(&unit.unit, d));
            out.line(Kind::Blocked, &printable(&format!("    {line}")));
        }
    }
    if p.refused {
        out.line(Kind::Blocked, "  refused: see the top of the plan");
    }
}

/// The deferrals earlier switches left pending, each with what this plan
/// does to it.
fn earlier(out: &mut Out, earlier: &[Earlier]) {
    if earlier.is_empty() {
        return;
    }
    out.blank();
    out.line(Kind::Heading, "pending from earlier switches:");
    for e in earlier {
        let kind = if e.fate.is_pending() { Kind::Blocked } else { Kind::Plain };
        out.line(kind, &printable(&format!("  {}; {}", pending_line(&e.deferral), e.fate.describe())));
    }
}

/// The record of pending deferrals as `safe-switch pending` prints it:
/// how many units have deferred actions, then each with its reason and
/// generations, and what carries them out.
pub fn render_pending(pending: &Pending, style: Style) -> String {
    let verdict = if pending.is_empty() { Verdict::Safe } else { Verdict::Deferred };
    let mut out = Out { text: String::new(), style, verdict };
    let n = pending.deferrals.len();
    if n == 0 {
        out.plain("nothing is pending: no deferred action waits to be carried out");
        return out.text;
    }
    out.line(Kind::Heading, &format!("pending: {n} unit{} with deferred actions", if n == 1 { "" } else { "s" }));
    for d in &pending.deferrals {
        out.line(Kind::Blocked, &printable(&format!("  {}", pending_line(d))));
        out.plain(&printable(&format!("    {}", pending_generations(d))));
    }
    out.blank();
    out.plain(pending_hint(pending));
    out.text
}

/// One deferred or refused action:
/// `network-setup.service: stop, start deferred: stopping it stops
/// protected sshd.service (sshd.service Requires=network-setup.service)`.
pub fn touch_line(actions: &[Action], verb: &str, blocker: &Blocker<'_>) -> String {
    format!("{}: {} {verb}: {}", blocker.unit, verbs(actions), chain_line(blocker))
}

/// The package changes (closure diff), when the plan carries them.
fn packages(out: &mut Out, plan: &Plan) {
    let Some(diff) = &plan.packages else { return };
    out.blank();
    out.line(Kind::Heading, "packages:");
    for line in crate::packages::text(diff).lines() {
        match line {
            "" => out.blank(),
            line => out.plain(&printable(&format!("  {line}"))),
        }
    }
}

fn diagnostics(out: &mut Out, plan: &Plan) {
    if plan.diagnostics.is_empty() {
        return;
    }
    out.blank();
    out.line(Kind::Heading, "diagnostics:");
    for d in &plan.diagnostics {
        let (severity, kind) = match d.severity {
            Severity::Info => ("info", Kind::Plain),
            Severity::Warning => ("warning", Kind::Warning),
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
        out.line(kind, &printable(&format!("  {severity}: {location}{}", d.message)));
    }
}

/// The unified diffs, one after the other, under a heading.
fn diffs(out: &mut Out, report: &Report<'_>) {
    if report.diffs.is_empty() {
        return;
    }
    out.blank();
    out.line(Kind::Heading, "Unit file changes:");
    for d in report.diffs {
        for line in printable(&d.diff).lines() {
            let kind = if line.starts_with("+++") || line.starts_with("---") {
                Kind::Heading
            } else if line.starts_with('+') {
                Kind::Added
            } else if line.starts_with('-') {
                Kind::Removed
            } else if line.starts_with("@@") {
                Kind::Hunk
            } else {
                Kind::Plain
            };
            out.line(kind, line);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use plan_model::{Edge, Touch};

    use super::*;

    #[test]
    fn touch_lines_follow_the_jobs_along_the_chain() {
        let edge =
            |from: &str, relation: &str, to: &str| Edge { from: from.into(), relation: relation.into(), to: to.into() };
        let touch = |effect, chain: Vec<Edge>, cause| Touch {
            touches: "sshd.service".into(),
            effect,
            chain,
            cause: Some(cause),
            omitted: 0,
        };
        let requires =
            touch(Action::Restart, vec![edge("sshd.service", "Requires", "network-setup.service")], Action::Restart);
        let blocker = Blocker { unit: "network-setup.service", touch: &requires };
        assert_eq!(
            touch_line(&[Action::Restart], "deferred", &blocker),
            "network-setup.service: restart deferred: restarting it restarts protected sshd.service \
             (sshd.service Requires=network-setup.service)"
        );
        let conflict = touch(
            Action::Stop,
            vec![
                edge("maintenance.service", "Conflicts", "sshd.service"),
                edge("multi-user.target", "Wants", "maintenance.service"),
            ],
            Action::Start,
        );
        let blocker = Blocker { unit: "multi-user.target", touch: &conflict };
        assert_eq!(
            touch_line(&[Action::Start], "deferred", &blocker),
            "multi-user.target: start deferred: starting it starts maintenance.service \
             (multi-user.target Wants=maintenance.service), which stops protected sshd.service \
             (maintenance.service Conflicts=sshd.service)"
        );
        let own = touch(Action::Stop, vec![], Action::Stop);
        assert_eq!(chain_line(&Blocker { unit: "sshd.service", touch: &own }), "sshd.service is protected");
    }
}
