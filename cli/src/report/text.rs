//! The human-readable text report: the plan, then the unified diffs of the
//! unit files that changed.
//!
//! Colours are ANSI escapes and are used only when [`Style::color`] says so
//! (standard output is a terminal and `NO_COLOR` is not set); files and
//! pipes get plain text.

use plan_model::{Plan, Step};

use super::{Report, Style, UnitDiff, Verdict, printable};

const RESET: &str = "\x1b[0m";
const BOLD: &str = "\x1b[1m";
const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const CYAN: &str = "\x1b[36m";

/// Renders the plan and the unit-file diffs as text.
pub fn render(report: &Report<'_>, style: Style) -> String {
    let mut out = plan_text(report.plan, style);
    if !report.commands.is_empty() {
        out.push_str(&format!("\n{}\n", paint(style, BOLD, "commands, in order:")));
        for command in report.commands {
            out.push_str(&format!("  {}\n", printable(command)));
        }
    }
    out.push_str(&diffs_text(report.diffs, style));
    out
}

/// Renders the unit-file diffs, one after the other, under a heading.
/// Returns an empty string when there are none.
pub fn diffs_text(diffs: &[UnitDiff], style: Style) -> String {
    if diffs.is_empty() {
        return String::new();
    }
    let mut out = format!("\n{}\n", paint(style, BOLD, "Unit file changes:"));
    for d in diffs {
        for line in printable(&d.diff).lines() {
            let color = if line.starts_with("+++") || line.starts_with("---") {
                BOLD
            } else if line.starts_with('+') {
                GREEN
            } else if line.starts_with('-') {
                RED
            } else if line.starts_with("@@") {
                CYAN
            } else {
                ""
            };
            out.push_str(&paint(style, color, line));
            out.push('\n');
        }
    }
    out
}

/// Renders the plan with the shared text renderer (`crate::render`) and
/// colours its headings and protection lines when the style allows.
pub fn plan_text(plan: &Plan, style: Style) -> String {
    let text = printable(&crate::render::text(plan)).into_owned();
    if !style.color {
        return text;
    }
    let verdict_color = match Verdict::of(plan) {
        Verdict::Safe => GREEN,
        Verdict::Deferred => YELLOW,
        Verdict::Refused => RED,
    };
    let mut out = String::with_capacity(text.len() + 256);
    for line in text.lines() {
        let trimmed = line.trim_start();
        let color = if !line.starts_with(' ') && line.ends_with(':') {
            BOLD
        } else if trimmed.starts_with("refused")
            || trimmed.starts_with("deferred")
            || line.contains(" refused:")
            || line.contains(" deferred:")
        {
            verdict_color
        } else if trimmed.starts_with("warning:") {
            YELLOW
        } else {
            ""
        };
        out.push_str(&paint(style, color, line));
        out.push('\n');
    }
    out
}

/// One global step as a line.
pub fn step_line(step: &Step) -> String {
    match step {
        Step::Swapoff { device } => format!("swapoff {device}"),
        Step::Activate { script } => format!("run the activation script {script}"),
        Step::Reexec { reasons } => format!("re-execute the service manager ({})", reasons.join(", ")),
        Step::DaemonReload => "daemon-reload".to_owned(),
        Step::RestartSysinitReactivation => "restart sysinit-reactivation.target".to_owned(),
    }
}

/// Wraps `text` in a colour when the style allows it.
fn paint(style: Style, color: &str, text: &str) -> String {
    if style.color && !color.is_empty() { format!("{color}{text}{RESET}") } else { text.to_owned() }
}
