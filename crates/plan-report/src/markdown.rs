//! The Markdown report: a summary for a merge-request comment or for
//! `$GITHUB_STEP_SUMMARY`.
//!
//! GitHub drops a step summary larger than 1 MiB entirely, so the report is
//! built section by section under a byte budget ([`LIMIT`]), most important
//! first: the verdict, what the apply did once the plan was carried out
//! (with the end of the activation's output, in a collapsible block), the
//! blocked actions, then the planned actions,
//! the steps, the deferrals pending from earlier switches, the diagnostics
//! and last the unit-file diffs (each in a
//! collapsible `<details>` block). What does not fit is counted and named
//! in a closing note instead of being cut mid-line.

use std::fmt::Write as _;

use plan_model::observe::Class;
use plan_model::{Action, ApplyReport, Pending, PendingDeferral, Plan, Severity};

use crate::{
    ActionCounts, HostReport, Report, Verdict, action_items, chain_line, reasons_line, reboot_reasons, usable_words,
    utc_time,
};

/// The default size limit, safely under GitHub's 1 MiB per step.
pub const LIMIT: usize = 1_000_000;

/// Bytes kept free for the truncation note.
const RESERVE: usize = 400;

/// Renders the Markdown report, at most `limit` bytes long.
pub fn render(report: &Report<'_>, limit: usize) -> String {
    render_titled(report, limit, "safe-switch")
}

/// The least room a host's details are given in a merged report; hosts
/// after the budget fell below it are named in the closing note instead.
const MIN_HOST_DETAILS: usize = 2_000;

/// Renders the reports of several hosts (`safe-switch report merge`), at
/// most `limit` bytes long: a table of the hosts (verdict, action counts,
/// pending deferrals, reboot), then each host's report as [`render`] makes
/// it, under a heading naming the host: the refused hosts first, then the
/// deferred ones, then the rest. The table comes first and is cut last;
/// as many hosts as can have [`MIN_HOST_DETAILS`] bytes each get an equal
/// share of what is left (a host that needs less leaves more to the next),
/// and the hosts whose details are not shown are counted in a closing
/// note.
pub fn render_hosts(hosts: &[HostReport<'_>], limit: usize) -> String {
    let mut b = Budget::new(limit);
    let verdicts: Vec<Verdict> = hosts.iter().map(|h| Verdict::of(h.report.plan)).collect();
    b.push(&format!("## safe-switch: {}\n\n", crate::hosts_summary(hosts)));
    b.push("| Host | Verdict | Planned | Deferred | Refused | Pending | Reboot |\n|---|---|---:|---:|---:|---:|---|\n");
    for (h, v) in hosts.iter().zip(&verdicts) {
        let c = ActionCounts::of(h.report.plan);
        let reboot = if h.reboot.is_empty() {
            "no".to_owned()
        } else {
            let reasons: Vec<&str> = h.reboot.iter().map(|r| r.reason.as_str()).collect();
            format!("yes: {}", cell(&reasons.join(", ")))
        };
        b.row(&format!(
            "| {} | {} | {} | {} | {} | {} | {reboot} |\n",
            code(h.host),
            v.as_str(),
            c.planned,
            c.deferred,
            c.refused,
            crate::pending_now(h.report.pending)
        ));
    }
    b.push("\n");
    // The details of the refused hosts first, then the deferred ones, then
    // the rest, each group in the order given.
    let mut order: Vec<usize> = (0..hosts.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(verdicts[i] as u8));
    let shown = if b.full { 0 } else { (b.room() / MIN_HOST_DETAILS).min(hosts.len()) };
    let mut left_out = hosts.len() - shown;
    for (n, &i) in order.iter().take(shown).enumerate() {
        let h = &hosts[i];
        let share = b.room() / (shown - n);
        if b.full || share < MIN_HOST_DETAILS {
            left_out += 1;
            continue;
        }
        let mut reboot = String::new();
        for r in h.reboot {
            let _ =
                writeln!(reboot, "- **reboot needed** ({}): {}", inline(&r.reason), inline(&crate::clip(&r.detail)));
        }
        if !reboot.is_empty() {
            reboot.push('\n');
        }
        let mut details = render_titled(&h.report, share.saturating_sub(reboot.len()), &code(h.host));
        details.push_str(&reboot);
        b.push(&details);
    }
    if left_out > 0 {
        b.note(&format!(
            "\n> **Truncated** to stay under {limit} bytes: the details of {left_out} host(s) are not shown. \
             The merged JSON report has every plan.\n"
        ));
    }
    b.finish()
}

/// [`render`] with another title before the verdict (a host's name).
fn render_titled(report: &Report<'_>, limit: usize, title: &str) -> String {
    let plan = report.plan;
    let mut b = Budget::new(limit);

    b.push(&header(plan, title));

    if let Some(applied) = report.applied {
        applied_section(&mut b, applied);
    }

    let items = action_items(plan);
    let blocked: Vec<_> = items.iter().filter(|i| i.status.is_blocked()).collect();
    if !blocked.is_empty() {
        let title = if plan.protection.refused {
            "### Refused: these actions touch a protected unit\n\n"
        } else {
            "### Deferred: these actions touch a protected unit and will not be carried out\n\n"
        };
        b.push(&format!("{title}| Unit | Action | Why |\n|---|---|---|\n"));
        for i in blocked {
            let why = i.blocker.map(|b| chain_line(&b)).unwrap_or_default();
            b.row(&format!("| {} | {} | {} |\n", code(&i.unit.unit), i.action, cell(&why)));
        }
        b.push("\n");
    }

    if !plan.reboot.is_empty() {
        b.push("### Needs a reboot: these take effect only at the next boot\n\n| Reason | What |\n|---|---|\n");
        for r in &plan.reboot {
            b.row(&format!("| {} | {} |\n", code(r.reason.as_str()), cell(&r.detail)));
        }
        b.push("\n");
    }

    let planned: Vec<_> = plan.units.iter().filter(|u| !u.actions.is_empty()).collect();
    if !planned.is_empty() {
        let title = if plan.protection.refused {
            "### Planned actions (not carried out while the switch is refused)\n\n"
        } else {
            "### Planned actions\n\n"
        };
        b.push(&format!("{title}| Unit | Actions | Why |\n|---|---|---|\n"));
        for u in planned {
            let actions: Vec<&str> = u.actions.iter().map(|a| a.as_str()).collect();
            b.row(&format!("| {} | {} | {} |\n", code(&u.unit), actions.join(", "), cell(&reasons_line(u))));
        }
        b.push("\n");
    }

    if !plan.steps.is_empty() {
        b.push("### Steps\n\n");
        for (n, step) in plan.steps.iter().enumerate() {
            b.row(&format!("{}. {}\n", n + 1, inline(&crate::text::step_line(step))));
        }
        b.push("\n");
    }

    if !plan.kernel_modules.is_empty() {
        b.push("### Kernel modules the new generation adds or changes\n\n| Module | Release | File | Change | When | Why |\n|---|---|---|---|---|---|\n");
        for m in &plan.kernel_modules {
            b.row(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                code(&m.module),
                code(&m.release),
                code(&m.path),
                m.change.as_str(),
                usable_words(m.usable),
                cell(&m.detail)
            ));
        }
        b.push("\n");
    }

    if !report.commands.is_empty() {
        let text: String = report.commands.iter().map(|c| format!("{c}\n")).collect();
        let fence = fence_for(&text);
        b.row(&format!("### Commands, in order\n\n{fence}sh\n{text}{fence}\n\n"));
    }

    if !report.pending.is_empty() {
        b.push("### Pending from earlier switches\n\n| Unit | Actions | Deferred since | Why | After this switch |\n|---|---|---|---|---|\n");
        for e in report.pending {
            b.row(&format!("{} {} |\n", pending_row(&e.deferral), cell(e.fate.describe())));
        }
        b.push("\n");
    }

    if !plan.diagnostics.is_empty() {
        b.push("### Diagnostics\n\n");
        for d in &plan.diagnostics {
            let sev = match d.severity {
                Severity::Warning => "**warning**",
                Severity::Info => "info",
            };
            let place = match (&d.unit, &d.path) {
                (Some(u), _) => format!(" {}", code(u)),
                (None, Some(p)) => format!(" {}", code(p)),
                (None, None) => String::new(),
            };
            b.row(&format!("- {sev}{place}: {}\n", inline(&d.message)));
        }
        b.push("\n");
    }

    if !report.diffs.is_empty() {
        b.push("### Unit file changes\n\n");
        for d in report.diffs {
            let diff = super::printable(&d.diff);
            let fence = fence_for(&diff);
            b.diff(&format!(
                "<details><summary><code>{}</code>: {}</summary>\n\n{fence}diff\n{}{fence}\n\n</details>\n\n",
                html(&d.unit),
                html(&d.path),
                diff
            ));
        }
    }

    b.finish()
}

/// What the apply did: its verdict, each phase, what stopped it, the
/// failed and protected units, what systemd was seen doing compared with
/// the plan (every unplanned effect, the predictions not seen), and the
/// end of the activation's output.
fn applied_section(b: &mut Budget, a: &ApplyReport) {
    b.push(&format!("### Applied: {}\n\n| Phase | Result |\n|---|---|\n", crate::applied_verdict(a)));
    for p in &a.phases {
        let done = p.jobs.iter().filter(|j| j.result.is_done()).count();
        let mut result = match &p.note {
            Some(note) => note.clone(),
            None => format!("{done} of {} jobs done", p.jobs.len()),
        };
        let failed: Vec<String> = p
            .jobs
            .iter()
            .filter(|j| !j.result.is_done())
            .map(|j| format!("{} {} ({})", j.kind, j.unit, j.result.describe()))
            .collect();
        if !failed.is_empty() {
            result.push_str(&format!("; failed: {}", failed.join(", ")));
        }
        let mark = if p.ok { "" } else { "❌ " };
        b.row(&format!("| {} | {mark}{} |\n", p.phase.name(), cell(&result)));
    }
    for phase in &a.not_done {
        b.row(&format!("| {} | not done |\n", phase.name()));
    }
    b.push("\n");
    if let Some(why) = &a.aborted {
        b.push(&format!("**Stopped early**: {}\n\n", inline(why)));
    }
    if !a.failed.is_empty() {
        b.push("**Failed units**\n\n");
        for f in &a.failed {
            b.row(&format!("- {}: {}\n", code(&f.unit), inline(&f.status.summary())));
        }
        b.push("\n");
    }
    let outside = |unit: &str| -> Vec<String> {
        a.unplanned_on_protected()
            .filter(|e| e.unit == unit)
            .map(|e| format!("{} outside the plan", e.effect))
            .collect()
    };
    if !a.protected.is_empty() {
        b.push("**Protected units**\n\n");
        for c in &a.protected {
            let outside = outside(&c.unit);
            let line = match &c.disturbed {
                Some(what) => format!("**disturbed**: {}", inline(what)),
                None if !outside.is_empty() => format!("**disturbed**: {}", inline(&outside.join(", "))),
                None => {
                    format!("untouched (MainPID {}, InvocationID {})", c.after.main_pid, code(&c.after.invocation_id))
                }
            };
            b.row(&format!("- {}: {line}\n", code(&c.unit)));
        }
        b.push("\n");
    }
    if let Some(o) = &a.observed {
        let summary = o.summary();
        let summary = summary.strip_prefix("observed ").unwrap_or(&summary);
        b.push(&format!("#### Observed: {}\n\n", inline(summary)));
        let unplanned: Vec<_> = o.effects.iter().filter(|e| e.class == Class::Unplanned).collect();
        if !unplanned.is_empty() {
            b.push("Unplanned: systemd did this although the plan neither lists nor predicts it.\n\n| Unit | Effect | Protected | State | Jobs |\n|---|---|---|---|---|\n");
            for e in unplanned {
                b.row(&format!(
                    "| {} | {} | {} | {} → {} | {} |\n",
                    code(&e.unit),
                    e.effect,
                    if e.protected { "**yes**" } else { "no" },
                    e.before,
                    e.after,
                    cell(&e.jobs.join(", "))
                ));
            }
            b.push("\n");
        }
        if !o.not_seen.is_empty() {
            b.push("Predicted, not seen:\n\n");
            for c in &o.not_seen {
                b.row(&format!("- {}\n", inline(&plan_model::observe::consequence_line(c))));
            }
            b.push("\n");
        }
        if o.dropped > 0 {
            b.push(&format!("> {}\n\n", inline(&o.dropped_note())));
        }
    }
    if let Some(log) = &a.log {
        let text = super::printable(&log.text);
        let fence = fence_for(&text);
        let shown = if log.cut { format!("the last {} bytes of", log.text.len()) } else { "all of".to_owned() };
        b.diff(&format!(
            "<details><summary>Output of the activation: {shown} <code>{}</code> ({} bytes)</summary>\n\n{fence}text\n{text}{}{fence}\n\n</details>\n\n",
            html(&log.path),
            log.bytes,
            if text.is_empty() || text.ends_with('\n') { "" } else { "\n" },
        ));
    }
}

/// Renders the record of pending deferrals, at most `limit` bytes long.
pub fn render_pending(pending: &Pending, limit: usize) -> String {
    let mut b = Budget::new(limit);
    let n = pending.deferrals.len();
    if n == 0 {
        b.push("## safe-switch: nothing is pending\n\nNo deferred action waits to be carried out.\n");
        return b.finish();
    }
    b.push(&format!(
        "## safe-switch: {n} unit{} with deferred actions pending\n\n| Unit | Actions | Deferred since | Why |\n|---|---|---|---|\n",
        if n == 1 { "" } else { "s" }
    ));
    for d in &pending.deferrals {
        b.row(&format!("{}\n", pending_row(d)));
    }
    b.push(&format!("\n{}.\n", crate::pending_hint(pending)));
    b.finish()
}

/// The first cells of a pending deferral's row, up to the closing pipe of
/// its reason: `| unit | actions | since | why |`.
fn pending_row(d: &PendingDeferral) -> String {
    let actions: Vec<&str> = d.actions.iter().map(|a| a.as_str()).collect();
    let why = chain_line(&crate::Blocker { unit: &d.unit, touch: &d.touch });
    format!("| {} | {} | {} | {} |", code(&d.unit), actions.join(", "), utc_time(d.since_unix), cell(&why))
}

fn header(plan: &Plan, title: &str) -> String {
    let mut s = String::new();
    let verdict = match Verdict::of(plan) {
        Verdict::Safe => "safe: nothing touches a protected unit",
        Verdict::Deferred => "deferred: some actions touch a protected unit and will not be carried out",
        Verdict::Refused => "refused: the switch touches a protected unit",
    };
    let _ = writeln!(s, "## {title}: {verdict}\n");
    let _ = writeln!(s, "{} → {}\n", code(&plan.old.path), code(&plan.new.path));
    let count = |a: Action| plan.units.iter().filter(|u| u.actions.contains(&a)).count();
    let blocked = action_items(plan).iter().filter(|i| i.status.is_blocked()).count();
    let _ = writeln!(s, "| Stop | Restart | Reload | Start | Left running | Blocked |");
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|");
    let _ = writeln!(
        s,
        "| {} | {} | {} | {} | {} | {} |\n",
        count(Action::Stop),
        count(Action::Restart),
        count(Action::Reload),
        count(Action::Start),
        count(Action::Skip),
        blocked
    );
    // Only protections that matched a unit are listed; a selector that
    // matched nothing shows up as a diagnostic instead.
    let protected: Vec<String> = plan
        .protection
        .protected
        .iter()
        .filter(|p| !p.units.is_empty())
        .map(|p| {
            let units: Vec<String> = p.units.iter().map(|u| code(u)).collect();
            if p.units.len() == 1 && p.units[0] == p.selector {
                code(&p.selector)
            } else {
                format!("{} ({})", code(&p.selector), units.join(", "))
            }
        })
        .collect();
    if plan.needs_reboot() {
        let _ = writeln!(
            s,
            "**Needs a reboot** ({}): part of this switch takes effect only at the next boot.\n",
            inline(&reboot_reasons(plan))
        );
    }
    if !protected.is_empty() {
        let mode = match plan.protection.mode {
            plan_model::Mode::Defer => "defer",
            plan_model::Mode::Refuse => "refuse",
        };
        let _ = writeln!(s, "Protected ({mode}): {}\n", protected.join(", "));
    }
    s
}

/// Appends text while it fits, and counts what it had to leave out.
struct Budget {
    out: String,
    limit: usize,
    full: bool,
    rows_left_out: usize,
    diffs_left_out: usize,
}

impl Budget {
    fn new(limit: usize) -> Budget {
        Budget { out: String::new(), limit, full: false, rows_left_out: 0, diffs_left_out: 0 }
    }

    fn fits(&self, s: &str) -> bool {
        self.out.len() + s.len() + RESERVE <= self.limit
    }

    /// The bytes still free, the reserve for the closing note kept.
    fn room(&self) -> usize {
        self.limit.saturating_sub(self.out.len() + RESERVE)
    }

    /// Appends a closing note into the reserve kept for it.
    fn note(&mut self, s: &str) {
        if self.out.len() + s.len() <= self.limit {
            self.out.push_str(s);
        }
    }

    /// Appends a heading or separator; once the budget is spent, nothing
    /// more is added, so a heading never appears without its rows.
    fn push(&mut self, s: &str) {
        if !self.full && self.fits(s) {
            self.out.push_str(s);
        } else {
            self.full = true;
        }
    }

    fn row(&mut self, s: &str) {
        if !self.full && self.fits(s) {
            self.out.push_str(s);
        } else {
            self.full = true;
            self.rows_left_out += 1;
        }
    }

    fn diff(&mut self, s: &str) {
        // A diff too large on its own is skipped, but smaller ones after it
        // may still fit: diffs are independent of each other.
        if self.fits(s) {
            self.out.push_str(s);
        } else {
            self.diffs_left_out += 1;
        }
    }

    fn finish(mut self) -> String {
        if self.rows_left_out > 0 || self.diffs_left_out > 0 {
            let _ = write!(
                self.out,
                "\n> **Truncated** to stay under {} bytes: {} row(s) and {} unit-file diff(s) are not shown. \
                 The JSON report (`--report json=PATH`) has the complete plan.\n",
                self.limit, self.rows_left_out, self.diffs_left_out
            );
        }
        self.out
    }
}

/// A code span that cannot be broken by the text: delimited by a run of
/// backticks longer than any in it, on one line, control characters
/// replaced, pipes escaped for tables.
fn code(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| match c {
            '\n' | '\r' => ' ',
            c if c.is_control() => '\u{fffd}',
            c => c,
        })
        .collect::<String>()
        .replace('|', "\\|");
    let fence = "`".repeat(longest_backtick_run(&s) + 1);
    if fence.len() > 1 || s.starts_with(' ') || s.ends_with(' ') {
        format!("{fence} {s} {fence}")
    } else {
        format!("`{s}`")
    }
}

/// Text for a table cell: one line, pipes escaped.
fn cell(s: &str) -> String {
    inline(s).replace('|', "\\|")
}

/// Text on one line, with the characters that start HTML or emphasis
/// escaped, so a unit's description cannot inject markup.
fn inline(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' | '\r' => out.push(' '),
            c if c.is_control() => out.push('\u{fffd}'),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '*' | '_' | '[' | ']' | '`' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

/// Text inside an HTML element on one line: a file name with newlines or
/// markup cannot end the `<details>` block it names.
fn html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '`' => out.push_str("&#96;"),
            '*' | '_' | '[' | ']' | '\\' => {
                out.push_str(&format!("&#{};", c as u32));
            }
            '\n' | '\r' => out.push(' '),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

fn longest_backtick_run(text: &str) -> usize {
    let mut longest = 0;
    let mut run = 0;
    for c in text.chars() {
        if c == '`' {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    longest
}

/// A code fence longer than any run of backticks in the text.
fn fence_for(text: &str) -> String {
    "`".repeat((longest_backtick_run(text) + 1).max(3))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn fences_outgrow_backticks_in_diffs() {
        assert_eq!(fence_for("a ``` b"), "````");
        assert_eq!(fence_for("plain"), "```");
        assert_eq!(code("a|b"), "`a\\|b`");
        assert_eq!(code("a`b"), "`` a`b ``");
        assert_eq!(code("a``b`"), "``` a``b` ```");
        assert_eq!(
            html("x\n\n</summary></details>\n# Owned\n[link](http://x)"),
            "x  &lt;/summary&gt;&lt;/details&gt; # Owned &#91;link&#93;(http://x)"
        );
        assert_eq!(inline("<b>*x*</b>"), "&lt;b&gt;\\*x\\*&lt;/b&gt;");
    }
}
