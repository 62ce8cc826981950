//! The plan as people and CI systems read it: text, JSON, JUnit, GitLab
//! Code Quality, Markdown and OpenMetrics.
//!
//! Every renderer is a pure function from a [`Report`] (the plan, the
//! diffs of the files it was made from, the commands that carry it out,
//! the deferrals earlier switches left pending, and once it was carried
//! out, what the apply did) to a string, one module
//! per format, so that the planners' crates and the golden tests can test
//! what users read without touching the disk. The same modules render the
//! record of pending deferrals alone ([`render_pending`], for `safe-switch
//! pending`), with the same wording.
//! Colour is decided by the caller ([`Style`]) and applied while the text
//! is written, never by matching lines afterwards.
//!
//! Architecture Invariant: renderers never decide anything about units.
//! They only present what the plan says; a verdict such as "blocked" is
//! derived from the plan with the same helpers (`Plan::touches_protected`)
//! that the exit-code policy uses, so a report can never disagree with the
//! exit code. No IO: nothing here reads a file or writes one.

pub mod codequality;
mod explain;
pub mod json;
pub mod junit;
pub mod markdown;
pub mod openmetrics;
pub mod packages;
pub mod text;

use plan_model::{
    Action, ApplyReport, Earlier, Edge, FileDiff, KernelModule, Manager, ModuleUse, Pending, PendingDeferral, Plan,
    Reboot, Touch, UnitPlan,
};
use serde::Deserialize as _;

pub use explain::{explain_json, explain_text};

/// The report formats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Format {
    /// Human-readable text.
    #[default]
    Text,
    /// The versioned JSON plan (docs/plan-schema.md).
    Json,
    /// JUnit XML.
    Junit,
    /// GitLab Code Quality JSON.
    Codequality,
    /// Markdown for a merge-request comment or a job summary.
    Markdown,
    /// OpenMetrics text, for node-exporter's textfile collector.
    Openmetrics,
}

impl Format {
    /// Every format, in the order the command line lists them.
    pub const ALL: [Format; 6] =
        [Format::Text, Format::Json, Format::Junit, Format::Codequality, Format::Markdown, Format::Openmetrics];

    /// The format's name, as the command line spells it.
    pub fn name(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Json => "json",
            Format::Junit => "junit",
            Format::Codequality => "codequality",
            Format::Markdown => "markdown",
            Format::Openmetrics => "openmetrics",
        }
    }

    /// The format a name spells, in any case.
    pub fn from_name(name: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.name().eq_ignore_ascii_case(name))
    }
}

/// Everything a renderer may show: the plan and the unified diffs of the
/// unit files that changed between the two generations.
#[derive(Clone, Copy, Debug)]
pub struct Report<'a> {
    /// The plan, after protection.
    pub plan: &'a Plan,
    /// Unified diffs of changed unit files, sorted by unit then path, from
    /// the texts the planner parsed. Empty when the generations were not
    /// loaded (a saved plan being applied).
    pub diffs: &'a [FileDiff],
    /// The commands that carry the plan out, in order, as shell command
    /// lines: the `launchctl` calls and file operations of a nix-darwin
    /// plan. Empty for systemd plans, whose steps are part of the plan.
    pub commands: &'a [String],
    /// The deferrals earlier switches left pending, with what this plan
    /// does to each. Empty when none were pending (or they are not known:
    /// an offline `diff` without `--pending`).
    pub pending: &'a [Earlier],
    /// What carrying the plan out did, once `switch` or `apply` has done
    /// it: the phases, the failed and protected units, what systemd was
    /// seen doing compared with the plan, the activation's output.
    pub applied: Option<&'a ApplyReport>,
}

impl<'a> Report<'a> {
    /// The report of a plan alone: no diffs, commands, earlier deferrals
    /// or apply.
    pub fn of(plan: &'a Plan) -> Report<'a> {
        Report { plan, diffs: &[], commands: &[], pending: &[], applied: None }
    }
}

/// How an apply ended, in a few words, from the same helpers the exit
/// code uses: `done`, `stopped early`, `a protected unit was disturbed`,
/// `finished with failures`.
pub fn applied_verdict(applied: &ApplyReport) -> &'static str {
    if applied.aborted.is_some() {
        "stopped early"
    } else if applied.protected_disturbed() {
        "a protected unit was disturbed"
    } else if applied.success() {
        "done"
    } else {
        "finished with failures"
    }
}

/// One host's report in a merged report (`safe-switch report merge`): the
/// host's name, its plan's report and the reboot needs its plan file lists.
#[derive(Clone, Copy, Debug)]
pub struct HostReport<'a> {
    /// The host, as named on the command line (checked there: letters,
    /// digits, `.`, `-`, `_`, `:`).
    pub host: &'a str,
    /// Its plan, with the deferrals earlier switches left pending there.
    pub report: Report<'a>,
    /// Why its switch needs a reboot; empty when it does not.
    pub reboot: &'a [RebootNeed],
}

/// The line over the reports of several hosts: how many, and how many of
/// them are safe, deferred, refused and need a reboot.
fn hosts_summary(hosts: &[HostReport<'_>]) -> String {
    let count = |v: Verdict| hosts.iter().filter(|h| Verdict::of(h.report.plan) == v).count();
    format!(
        "{} host{}: {} safe, {} deferred, {} refused, {} needing a reboot",
        hosts.len(),
        if hosts.len() == 1 { "" } else { "s" },
        count(Verdict::Safe),
        count(Verdict::Deferred),
        count(Verdict::Refused),
        hosts.iter().filter(|h| !h.reboot.is_empty()).count()
    )
}

/// Renders the reports of several hosts as one, in one format: a JUnit
/// test suite per host, Code Quality findings whose fingerprints cover the
/// host, a Markdown table of hosts before their details (under 1 MiB), one
/// JSON document, OpenMetrics samples labelled with the host, or text.
pub fn render_hosts(format: Format, hosts: &[HostReport<'_>], style: Style) -> String {
    let pairs: Vec<(&str, Report<'_>)> = hosts.iter().map(|h| (h.host, h.report)).collect();
    match format {
        Format::Text => text::render_hosts(hosts, style),
        Format::Json => json::render_hosts(hosts),
        Format::Junit => junit::render_hosts(&pairs),
        Format::Codequality => codequality::render_hosts(&pairs),
        Format::Markdown => markdown::render_hosts(hosts, markdown::LIMIT),
        Format::Openmetrics => {
            let metrics: Vec<(Option<&str>, openmetrics::HostMetrics<'_>)> = hosts
                .iter()
                .map(|h| {
                    let mut m = openmetrics::HostMetrics::of_report(&h.report);
                    m.reboot = Some(!h.reboot.is_empty());
                    (Some(h.host), m)
                })
                .collect();
            openmetrics::render_hosts(&metrics)
        }
    }
}

/// How many units have deferred actions pending on the host now, of the
/// earlier deferrals a plan's report shows: all but those whose unit was
/// restarted or stopped since.
pub fn pending_now(earlier: &[Earlier]) -> usize {
    earlier.iter().filter(|e| e.fate != plan_model::Fate::RestartedSince).count()
}

/// How many unit actions of a plan go ahead, were deferred or refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ActionCounts {
    /// Actions the plan lists: carried out, or held back with a refused
    /// switch.
    pub planned: usize,
    /// Actions protection deferred.
    pub deferred: usize,
    /// Actions that make the switch refused.
    pub refused: usize,
}

impl ActionCounts {
    /// The counts of a plan's [`action_items`].
    pub fn of(plan: &Plan) -> ActionCounts {
        let mut c = ActionCounts::default();
        for item in action_items(plan) {
            match item.status {
                ItemStatus::Planned | ItemStatus::HeldByRefusal => c.planned += 1,
                ItemStatus::Deferred => c.deferred += 1,
                ItemStatus::Refused => c.refused += 1,
            }
        }
        c
    }
}

/// At most 500 characters of a text from an input, with `...` when cut.
pub(crate) fn clip(s: &str) -> std::borrow::Cow<'_, str> {
    const MAX: usize = 500;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => std::borrow::Cow::Owned(format!("{}...", &s[..i])),
        None => std::borrow::Cow::Borrowed(s),
    }
}

/// How text output is decorated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Style {
    /// Use ANSI colours.
    pub color: bool,
}

/// Renders one format. Text is rendered with `style`; files never get
/// colours, so callers pass `Style::default()` for them.
pub fn render(format: Format, report: &Report<'_>, style: Style) -> String {
    match format {
        Format::Text => text::render(report, style),
        Format::Json => json::render(report),
        Format::Junit => junit::render(report),
        Format::Codequality => codequality::render(report),
        Format::Markdown => markdown::render(report, markdown::LIMIT),
        Format::Openmetrics => openmetrics::render(report),
    }
}

/// Renders the record of deferred actions still pending (what `safe-switch
/// pending` prints) in one format: the record itself as JSON, and in the
/// other formats each deferred action as a blocked item.
pub fn render_pending(format: Format, pending: &Pending, style: Style) -> String {
    match format {
        Format::Text => text::render_pending(pending, style),
        Format::Json => pending.to_json(),
        Format::Junit => junit::render_pending(pending),
        Format::Codequality => codequality::render_pending(pending),
        Format::Markdown => markdown::render_pending(pending, markdown::LIMIT),
        Format::Openmetrics => openmetrics::render_pending(pending),
    }
}

/// One pending deferral as one line:
/// `gitlab-runner.service: restart deferred since 2025-03-01 10:00 UTC:
/// gitlab-runner.service is protected`.
pub fn pending_line(d: &PendingDeferral) -> String {
    let actions: Vec<&str> = d.actions.iter().map(|a| a.as_str()).collect();
    format!(
        "{}: {} deferred since {}: {}",
        d.unit,
        actions.join(", "),
        utc_time(d.since_unix),
        chain_line(&Blocker { unit: &d.unit, touch: &d.touch })
    )
}

/// What carries pending deferrals out, as the reports of `safe-switch
/// pending` end: `settle`, or for launchd jobs (nix-darwin, where there is
/// no `settle` yet) a later switch that does not protect them.
pub fn pending_hint(pending: &Pending) -> &'static str {
    if pending.deferrals.iter().all(|d| d.manager == Manager::Launchd) {
        "a later `safe-switch switch` that does not protect a job carries its deferral out (`safe-switch settle` is not built for nix-darwin hosts yet)"
    } else {
        "`safe-switch settle` carries out what the protections in force allow (`--when-idle`: once each unit is idle)"
    }
}

/// Where a pending deferral's running instance came from and what is
/// installed: `running as started from /nix/store/...-a; the unit file of
/// /nix/store/...-b is installed`. A launchd job keeps its old plist
/// installed and loaded: `loaded from the plist of ...-a; the plist of
/// ...-b is not installed yet`.
pub fn pending_generations(d: &PendingDeferral) -> String {
    match d.manager {
        Manager::Launchd => {
            format!("loaded from the plist of {}; the plist of {} is not installed yet", d.from, d.generation)
        }
        _ => format!("running as started from {}; the unit file of {} is installed", d.from, d.generation),
    }
}

/// A time as `2025-03-01 10:00 UTC`, from seconds since the epoch.
pub fn utc_time(unix: u64) -> String {
    // Days to a civil date (Howard Hinnant's `civil_from_days`).
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02} UTC", secs / 3_600, secs % 3_600 / 60)
}

/// One reason a switch needs a reboot, as the plan's `reboot` array lists
/// it: `{"reason": "kernel", "detail": "..."}`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RebootNeed {
    /// What changed: `kernel`, `initrd`, `kernel-modules`, `dbus`,
    /// `systemd`, `activation`.
    pub reason: String,
    /// What exactly, for a reader.
    #[serde(default)]
    pub detail: String,
}

/// The reboot needs a plan lists in its JSON form's `reboot` array; none
/// when it has no such field. Read from the JSON form, so that plans
/// written before the field existed read as needing no reboot.
pub fn reboot_needs(plan: &Plan) -> Vec<RebootNeed> {
    serde_json::to_value(plan).ok().and_then(|v| reboot_needs_in(&v).ok()).unwrap_or_default()
}

/// The reboot needs in a plan's JSON form (the `reboot` array of an
/// object); none when the field is absent or null. A field of another
/// shape is an error.
pub fn reboot_needs_in(plan: &serde_json::Value) -> Result<Vec<RebootNeed>, serde_json::Error> {
    match plan.get("reboot") {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(v) => Vec::<RebootNeed>::deserialize(v),
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

/// Why an action touches a protected unit: the unit that holds the
/// action and what it would do (from a [`plan_model::Deferral`] or a
/// [`plan_model::Refusal`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blocker<'a> {
    /// The unit that holds the action.
    pub unit: &'a str,
    /// What the action would do to the protected unit.
    pub touch: &'a Touch,
}

impl<'a> Blocker<'a> {
    /// The blocker a deferral records for `unit`.
    pub fn of_deferral(unit: &'a str, d: &'a plan_model::Deferral) -> Blocker<'a> {
        Blocker { unit, touch: &d.touch }
    }

    /// The blocker a refusal records.
    pub fn of_refusal(r: &'a plan_model::Refusal) -> Blocker<'a> {
        Blocker { unit: &r.unit, touch: &r.touch }
    }
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
                Some(r) if r.actions.contains(&action) => (ItemStatus::Refused, Some(Blocker::of_refusal(r))),
                _ if refused => (ItemStatus::HeldByRefusal, None),
                _ => (ItemStatus::Planned, None),
            };
            items.push(ActionItem { unit, action, status, blocker });
        }
        if let Some(d) = &unit.deferral {
            let blocker = Blocker::of_deferral(&unit.unit, d);
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
            let blocker = Blocker::of_refusal(r);
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

/// One reason for a reboot as one line: `kernel: the kernel changes:
/// /nix/store/...-linux-6.6.1/bzImage -> /nix/store/...-linux-6.6.2/bzImage`.
pub fn reboot_line(r: &Reboot) -> String {
    format!("{}: {}", r.reason, r.detail)
}

/// When a module can be used, in words: `usable now`, `usable after a
/// reboot`, `not reachable by modprobe`, `usable: not known`.
pub fn usable_words(usable: ModuleUse) -> &'static str {
    match usable {
        ModuleUse::Now => "usable now",
        ModuleUse::AfterReboot => "usable after a reboot",
        ModuleUse::Unreachable => "not reachable by modprobe",
        ModuleUse::Unknown => "usable: not known",
    }
}

/// One kernel module as one line: `wireguard (6.6.1,
/// extra/wireguard.ko.xz): added, usable now: built for the running
/// kernel 6.6.1 and listed in modules.dep`.
pub fn module_line(m: &KernelModule) -> String {
    format!("{} ({}, {}): {}, {}: {}", m.module, m.release, m.path, m.change.as_str(), usable_words(m.usable), m.detail)
}

/// The reboot reasons of a plan, once each, in order: `kernel, initrd`.
pub fn reboot_reasons(plan: &Plan) -> String {
    let mut names: Vec<&str> = plan.reboot.iter().map(|r| r.reason.as_str()).collect();
    names.dedup();
    names.join(", ")
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

/// What a blocked action would do to the protected unit, as one phrase
/// that follows the jobs systemd would add along the chain:
///
/// - `sshd.service is protected`;
/// - `stopping it stops protected sshd.service (sshd.service
///   Requires=network-setup.service)`;
/// - `starting it starts maintenance.service (multi-user.target
///   Wants=maintenance.service), which stops protected sshd.service
///   (maintenance.service Conflicts=sshd.service)`.
///
/// "it" is the blocked unit. A chain whose middle was left out says how
/// many relations are missing. A blocker without its cause (a plan saved
/// by an older version) is told without the jobs.
pub fn chain_line(b: &Blocker<'_>) -> String {
    let t = b.touch;
    if t.chain.is_empty() {
        return if t.touches == b.unit {
            format!("{} is protected", t.touches)
        } else {
            format!("it would {} protected {}", t.effect, t.touches)
        };
    }
    let Some(cause) = t.cause else {
        let links: Vec<String> = t.chain.iter().map(edge_text).collect();
        return format!("it would {} protected {} ({})", t.effect, t.touches, links.join(", "));
    };
    // The chain runs from the protected unit back to this one; split it
    // where relations were left out.
    let gap = if t.omitted > 0 { t.chain.len().saturating_sub(plan_model::CHAIN_ENDS) } else { 0 };
    let (near_protected, near_unit) = t.chain.split_at(gap);
    let mut steps = Vec::new();
    let mut unit = b.unit;
    let mut job = cause;
    for edge in near_unit.iter().rev() {
        let (next, next_job) = step_forward(unit, job, edge);
        steps.push((next, next_job, edge));
        unit = next;
        job = next_job;
    }
    // After a gap, the jobs are worked out backwards from the effect on
    // the protected unit.
    let mut tail = Vec::new();
    let (mut unit, mut job) = (t.touches.as_str(), t.effect);
    for edge in near_protected {
        tail.push((unit, job, edge));
        let (prev, prev_job) = step_backward(unit, job, edge);
        unit = prev;
        job = prev_job;
    }
    let mut out = format!("{} it", gerund(cause));
    for (i, (next, next_job, edge)) in steps.iter().enumerate() {
        if i > 0 {
            out.push_str(", which");
        }
        out.push_str(&clause(next, *next_job, edge, b));
    }
    if !tail.is_empty() {
        out.push_str(&format!(
            ", then {} more relation{}, then",
            b.touch.omitted,
            if b.touch.omitted == 1 { "" } else { "s" }
        ));
        for (i, (next, next_job, edge)) in tail.iter().rev().enumerate() {
            if i > 0 {
                out.push_str(", which");
            }
            out.push_str(&clause(next, *next_job, edge, b));
        }
    }
    out
}

/// ` stops protected sshd.service (sshd.service Requires=a.service)`.
fn clause(unit: &str, job: Action, edge: &Edge, b: &Blocker<'_>) -> String {
    let touches = b.touch.touches.as_str();
    let activation = edge.relation == "Triggers" && edge.to == touches && unit == touches;
    let what = if activation { "the activation of " } else { "" };
    let protected = if unit == touches { "protected " } else { "" };
    format!(" {} {what}{protected}{unit} ({})", third_person(job), edge_text(edge))
}

/// The unit at the other end of `edge` and the job it gets when `unit`
/// gets `job`, by systemd's propagation rules.
fn step_forward<'e>(unit: &str, job: Action, edge: &'e Edge) -> (&'e str, Action) {
    let other = if edge.from == unit { edge.to.as_str() } else { edge.from.as_str() };
    let next = match edge.relation.as_str() {
        "Conflicts" => Action::Stop,
        "Wants" | "Requires" | "BindsTo" | "Upholds" if edge.from == unit => Action::Start,
        "Triggers" | "PropagatesStopTo" => Action::Stop,
        _ => job,
    };
    (other, next)
}

/// The unit at the other end of `edge` and the job that gives `unit` its
/// `job`: [`step_forward`] turned around.
fn step_backward<'e>(unit: &str, job: Action, edge: &'e Edge) -> (&'e str, Action) {
    let other = if edge.from == unit { edge.to.as_str() } else { edge.from.as_str() };
    let prev = match (edge.relation.as_str(), job) {
        ("Conflicts", _) => Action::Start,
        ("Wants" | "Requires" | "BindsTo" | "Upholds", Action::Start) if edge.to == unit => Action::Start,
        ("Triggers", _) => Action::Stop,
        _ => job,
    };
    (other, prev)
}

fn gerund(action: Action) -> &'static str {
    match action {
        Action::Stop => "stopping",
        Action::Reload => "reloading",
        Action::Restart => "restarting",
        Action::Start => "starting",
        Action::Skip => "leaving",
    }
}

fn third_person(action: Action) -> &'static str {
    match action {
        Action::Stop => "stops",
        Action::Reload => "reloads",
        Action::Restart => "restarts",
        Action::Start => "starts",
        Action::Skip => "leaves",
    }
}

/// Text safe to print on a terminal: control characters other than
/// newline and tab, and the Unicode controls that reorder text (bidi
/// overrides and isolates), are shown as escapes (`\x1b`, `\u{202e}`).
/// Unit names, paths and values come from the generations, which a merge
/// request may have written: none of them may move the cursor, set a
/// title or hide text.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    let hidden = |c: char| {
        (c.is_control() && c != '\n' && c != '\t')
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !s.chars().any(hidden) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            c if hidden(c) && (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if hidden(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// `sshd.service Requires=network-setup.service`.
pub fn edge_text(edge: &Edge) -> String {
    format!("{} {}={}", edge.from, edge.relation, edge.to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_utc_dates() {
        assert_eq!(utc_time(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc_time(951_827_696), "2000-02-29 12:34 UTC");
        assert_eq!(utc_time(1_740_823_200), "2025-03-01 10:00 UTC");
        assert_eq!(utc_time(4_102_444_799), "2099-12-31 23:59 UTC");
    }
}
