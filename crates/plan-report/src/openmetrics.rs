//! The OpenMetrics text report, for Prometheus through node-exporter's
//! textfile collector (a `.prom` file in its `--collector.textfile.directory`).
//!
//! Every metric is a gauge named `safe_switch_*`, in the OpenMetrics
//! conventions: `# TYPE` and `# HELP` before each family's samples, a
//! family's samples together, `# UNIT` for the families in seconds (whose
//! names end in `_seconds`), label values escaped, and `# EOF` as the last
//! line. No sample carries a timestamp (the textfile collector refuses
//! them); the time of the last apply is a gauge of its own. Prometheus's
//! text parser, which the collector uses, reads the same file: it takes
//! `# UNIT` and `# EOF` for comments.
//!
//! | family | labels | value |
//! |---|---|---|
//! | `safe_switch_plan_actions` | `fate`: `planned`, `deferred`, `refused` | unit actions of the plan (in a refused plan, the actions held back with it are `planned`) |
//! | `safe_switch_plan_verdict` | `verdict`: `safe`, `deferred`, `refused` | 1 for the plan's verdict, 0 for the others |
//! | `safe_switch_pending_deferrals` | | units with deferred actions pending on the host |
//! | `safe_switch_reboot_needed` | | 1 when the plan says part of the change takes effect only at boot |
//! | `safe_switch_last_apply_success` | | 1 when the last apply exited 0 |
//! | `safe_switch_last_apply_exit_code` | | the last apply's exit code (see the README) |
//! | `safe_switch_last_apply_duration_seconds` | | how long the last apply ran |
//! | `safe_switch_last_apply_timestamp_seconds` | | when it ended, in seconds since the epoch |
//!
//! A report of several hosts (`safe-switch report merge`) gives every
//! sample a `host` label.

use std::fmt::Write as _;

use plan_model::{Pending, Plan};

use crate::{ActionCounts, Report, Verdict, reboot_needs};

/// How the last apply on a host ended, for the `safe_switch_last_apply_*`
/// families.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ApplyResult {
    /// The exit code (0 done, 1 error, 3 refused, 4 units failed).
    pub exit_code: u8,
    /// How long it ran, in seconds.
    pub duration_seconds: f64,
    /// When it ended, in seconds since the epoch.
    pub finished_unix: f64,
}

/// What is known of one host: its plan, its pending deferrals, its last
/// apply. A family whose value is not known is left out.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostMetrics<'a> {
    /// The plan, when there is one.
    pub plan: Option<&'a Plan>,
    /// Whether the plan needs a reboot, when it is known apart from the
    /// plan (a merged plan file's `reboot` field); otherwise read from the
    /// plan.
    pub reboot: Option<bool>,
    /// The number of units with deferred actions pending, when known.
    pub pending: Option<usize>,
    /// The last apply, when this report follows one.
    pub apply: Option<ApplyResult>,
}

impl<'a> HostMetrics<'a> {
    /// What a plan's report knows: the plan and the earlier deferrals it
    /// shows (those whose unit was not restarted since are pending now).
    pub fn of_report(report: &Report<'a>) -> HostMetrics<'a> {
        HostMetrics {
            plan: Some(report.plan),
            reboot: None,
            pending: Some(crate::pending_now(report.pending)),
            apply: None,
        }
    }
}

/// Renders the metrics of one plan.
pub fn render(report: &Report<'_>) -> String {
    render_hosts(&[(None, HostMetrics::of_report(report))])
}

/// Renders the metrics of a plan followed by an apply, with the number of
/// units still pending after it (the record as the apply left it).
pub fn render_apply(plan: Option<&Plan>, pending: Option<usize>, apply: ApplyResult) -> String {
    render_hosts(&[(None, HostMetrics { plan, reboot: None, pending, apply: Some(apply) })])
}

/// Renders the record of pending deferrals: how many units have some.
pub fn render_pending(pending: &Pending) -> String {
    render_hosts(&[(None, HostMetrics { pending: Some(pending.deferrals.len()), ..HostMetrics::default() })])
}

/// One family: its name, unit (for `# UNIT`), help and samples.
struct Family {
    name: &'static str,
    unit: Option<&'static str>,
    help: &'static str,
    samples: Vec<(Vec<(&'static str, String)>, String)>,
}

/// Renders the metrics of several hosts; each sample of a host with a name
/// gets a `host` label.
pub fn render_hosts(hosts: &[(Option<&str>, HostMetrics<'_>)]) -> String {
    let mut families = [
        family(
            "safe_switch_plan_actions",
            None,
            "Unit actions of the plan, by fate: planned, deferred by protection, or refused",
        ),
        family("safe_switch_plan_verdict", None, "The plan's verdict: 1 for the verdict it has, 0 for the others"),
        family("safe_switch_pending_deferrals", None, "Units with deferred actions pending on the host"),
        family("safe_switch_reboot_needed", None, "1 when part of the change takes effect only at boot"),
        family("safe_switch_last_apply_success", None, "1 when the last apply exited 0"),
        family("safe_switch_last_apply_exit_code", None, "The exit code of the last apply"),
        family("safe_switch_last_apply_duration_seconds", Some("seconds"), "How long the last apply ran"),
        family(
            "safe_switch_last_apply_timestamp_seconds",
            Some("seconds"),
            "When the last apply ended, in seconds since the epoch",
        ),
    ];
    for (host, m) in hosts {
        let labels = |extra: Option<(&'static str, &str)>| {
            let mut l: Vec<(&'static str, String)> = host.map(|h| ("host", h.to_owned())).into_iter().collect();
            l.extend(extra.map(|(k, v)| (k, v.to_owned())));
            l
        };
        let mut add = |i: usize, extra: Option<(&'static str, &str)>, value: String| {
            families[i].samples.push((labels(extra), value));
        };
        if let Some(plan) = m.plan {
            let c = ActionCounts::of(plan);
            add(0, Some(("fate", "planned")), c.planned.to_string());
            add(0, Some(("fate", "deferred")), c.deferred.to_string());
            add(0, Some(("fate", "refused")), c.refused.to_string());
            let verdict = Verdict::of(plan);
            for v in [Verdict::Safe, Verdict::Deferred, Verdict::Refused] {
                add(1, Some(("verdict", v.as_str())), flag(v == verdict));
            }
        }
        if let Some(n) = m.pending {
            add(2, None, n.to_string());
        }
        let reboot = m.reboot.or_else(|| m.plan.map(|p| !reboot_needs(p).is_empty()));
        if let Some(reboot) = reboot {
            add(3, None, flag(reboot));
        }
        if let Some(a) = m.apply {
            add(4, None, flag(a.exit_code == 0));
            add(5, None, a.exit_code.to_string());
            add(6, None, seconds(a.duration_seconds));
            add(7, None, seconds(a.finished_unix));
        }
    }
    let mut out = String::new();
    for f in families.iter().filter(|f| !f.samples.is_empty()) {
        let _ = writeln!(out, "# TYPE {} gauge", f.name);
        if let Some(unit) = f.unit {
            let _ = writeln!(out, "# UNIT {} {unit}", f.name);
        }
        let _ = writeln!(out, "# HELP {} {}", f.name, escape_help(f.help));
        for (labels, value) in &f.samples {
            out.push_str(f.name);
            if !labels.is_empty() {
                let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape_label(v))).collect();
                let _ = write!(out, "{{{}}}", pairs.join(","));
            }
            let _ = writeln!(out, " {value}");
        }
    }
    out.push_str("# EOF\n");
    out
}

fn family(name: &'static str, unit: Option<&'static str>, help: &'static str) -> Family {
    Family { name, unit, help, samples: Vec::new() }
}

fn flag(b: bool) -> String {
    if b { "1" } else { "0" }.to_owned()
}

/// Seconds with millisecond precision; a value that is not finite (a clock
/// gone wrong) reads as 0 rather than as text the format forbids here.
fn seconds(s: f64) -> String {
    if s.is_finite() { format!("{:.3}", s.max(0.0)) } else { "0".to_owned() }
}

/// A `# HELP` text: backslashes and newlines escaped.
fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A label value: backslashes, double quotes and newlines escaped, as the
/// format asks; carriage returns and other controls pass as they are
/// (they are valid UTF-8 there), except that a host name holds none.
fn escape_label(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_and_help_are_escaped() {
        assert_eq!(escape_label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        assert_eq!(escape_help("a\\b\nc \"q\""), "a\\\\b\\nc \"q\"");
        assert_eq!(seconds(1.23456), "1.235");
        assert_eq!(seconds(f64::NAN), "0");
    }
}
