//! The JUnit XML report, in the shape GitLab, GitHub and CircleCI read (the
//! Jenkins/Ant JUnit schema; our own copy of that schema is
//! `docs/schema/junit.xsd`).
//!
//! One test case per unit action: `restart nginx.service`, `stop
//! network-setup.service`. Actions that go ahead pass; actions protection
//! deferred or that make the switch refused fail, with the chain of unit
//! relations that leads to the protected unit as the failure text. Actions
//! that would go ahead but are held back only because the whole switch is
//! refused are reported as skipped. Global steps (activation script,
//! daemon-reload, re-exec) are test cases of their own, and one more test
//! case, `protection`, carries the gate's verdict so that a refused plan
//! always shows at least one failure. Actions earlier switches deferred
//! and that are still pending after this plan are skipped test cases
//! (`pending restart gitlab-runner.service`); they do not fail the plan,
//! whose exit code does not count them.
//!
//! What waits for the next boot is one skipped test case per reason
//! (`reboot 1: kernel`, its detail as the message), and each kernel module
//! the new generation adds or changes a test case of its own, passed when
//! it is usable now and skipped otherwise: a reboot is not a failure of
//! the plan unless `check --fail-on reboot` makes it one, and the exit
//! code says so.
//!
//! Once the plan was carried out (`switch`, `apply`), the apply adds its
//! own test cases: one per phase (failed when a job of it failed or the
//! step did), one per unit that failed, one per protected unit checked
//! (failed when disturbed), one per unplanned effect systemd was seen
//! having (failed: the plan did not list it), and `observed`, which
//! passes when nothing was unplanned and carries the counts.
//!
//! The record of pending deferrals alone (`safe-switch pending`) is one
//! failed test case per pending action, or one passing `pending` case when
//! nothing is pending.
//!
//! Test case names are unique within the report: GitLab keeps only the
//! first of several test cases with the same name.

use std::borrow::Cow;
use std::io;

use plan_model::{ApplyReport, Earlier, Pending, Plan};
use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesText, Event};

use crate::{
    ItemStatus, Report, Verdict, action_items, blockers, chain_line, pending_generations, pending_line, reasons_line,
};

/// The `classname` of unit test cases.
const UNITS: &str = "safe-switch.units";
/// The `classname` of global steps.
const STEPS: &str = "safe-switch.steps";
/// The `classname` of the verdict test case.
const GATE: &str = "safe-switch.protection";
/// The `classname` of deferrals pending from earlier switches.
const PENDING: &str = "safe-switch.pending";
/// The `classname` of what waits for the next boot.
const REBOOT: &str = "safe-switch.reboot";
/// The `classname` of the kernel modules the new generation adds or
/// changes.
const MODULES: &str = "safe-switch.kernel-modules";
/// The `classname` of what the apply did.
const APPLIED: &str = "safe-switch.applied";

/// One test case before it is written.
struct Case {
    classname: String,
    name: String,
    outcome: Outcome,
    /// Text for `<system-out>`: why the action happens.
    out: String,
}

enum Outcome {
    Pass,
    Skipped(String),
    Failure { kind: &'static str, message: String, text: String },
}

/// One test suite before it is written.
struct Suite<'a> {
    name: &'a str,
    props: Vec<(&'static str, String)>,
    cases: Vec<Case>,
    system_out: String,
}

/// Renders the JUnit XML report.
pub fn render(report: &Report<'_>) -> String {
    finish(write(&[suite("safe-switch plan", "", report)]))
}

/// Renders the reports of several hosts (`safe-switch report merge`): a
/// test suite per host, named after it, whose test cases' classnames start
/// with the host (`web-1.safe-switch.units`), so that the same unit on two
/// hosts makes two test cases.
pub fn render_hosts(hosts: &[(&str, Report<'_>)]) -> String {
    let suites: Vec<Suite<'_>> = hosts
        .iter()
        .map(|(host, report)| {
            let mut suite = suite(host, &format!("{host}."), report);
            suite.props.insert(0, ("host", (*host).to_owned()));
            suite
        })
        .collect();
    finish(write(&suites))
}

/// The test suite of one plan, its classnames prefixed with `prefix`.
fn suite<'a>(name: &'a str, prefix: &str, report: &Report<'_>) -> Suite<'a> {
    let plan = report.plan;
    let mut cases = cases(plan);
    cases.extend(earlier_cases(report.pending));
    let mut props: Vec<(&'static str, String)> = properties(plan).into();
    if let Some(applied) = report.applied {
        cases.extend(applied_cases(applied));
        props.push(("applied", crate::applied_verdict(applied).to_owned()));
        if let Some(o) = &applied.observed {
            props.extend([
                ("observed.effects", o.total().to_string()),
                ("observed.planned", o.planned.to_string()),
                ("observed.predicted", o.predicted.to_string()),
                ("observed.unplanned", o.unplanned.to_string()),
                ("observed.jobs", o.jobs.to_string()),
            ]);
        }
    }
    for case in &mut cases {
        case.classname.insert_str(0, prefix);
    }
    let diags: Vec<String> = plan
        .diagnostics
        .iter()
        .map(|d| {
            let sev =
                serde_json::to_value(d.severity).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
            match &d.unit {
                Some(u) => format!("{sev} [{u}]: {}", d.message),
                None => format!("{sev}: {}", d.message),
            }
        })
        .collect();
    Suite { name, props, cases, system_out: diags.join("\n") }
}

/// Renders the record of pending deferrals: one failed test case per
/// pending action.
pub fn render_pending(pending: &Pending) -> String {
    let mut cases = Vec::new();
    for d in &pending.deferrals {
        let line = pending_line(d);
        for action in &d.actions {
            cases.push(Case {
                classname: PENDING.to_owned(),
                name: format!("pending {action} {}", d.unit),
                outcome: Outcome::Failure {
                    kind: "pending",
                    message: format!("pending: {}", chain_line(&crate::Blocker { unit: &d.unit, touch: &d.touch })),
                    text: format!("{line}\n{}\n", pending_generations(d)),
                },
                out: String::new(),
            });
        }
    }
    if cases.is_empty() {
        cases.push(Case {
            classname: PENDING.to_owned(),
            name: "pending".to_owned(),
            outcome: Outcome::Pass,
            out: "nothing is pending".to_owned(),
        });
    }
    let props =
        vec![("format_version", pending.format_version.to_string()), ("pending", pending.deferrals.len().to_string())];
    finish(write(&[Suite { name: "safe-switch pending", props, cases, system_out: String::new() }]))
}

/// The XML as text with a final newline. Writing into a Vec cannot fail;
/// an error there would be a bug in the writer, and an empty report is the
/// least harmful answer to it.
fn finish(written: io::Result<Vec<u8>>) -> String {
    let mut s = String::from_utf8(written.unwrap_or_default()).unwrap_or_default();
    s.push('\n');
    s
}

/// The deferrals of earlier switches: skipped while still pending, passed
/// once this plan settles them.
fn earlier_cases(earlier: &[Earlier]) -> Vec<Case> {
    let mut cases = Vec::new();
    for e in earlier {
        let d = &e.deferral;
        let text = format!("{}; {}", pending_line(d), e.fate.describe());
        for action in &d.actions {
            let outcome = if e.fate.is_pending() { Outcome::Skipped(text.clone()) } else { Outcome::Pass };
            cases.push(Case {
                classname: PENDING.to_owned(),
                name: format!("pending {action} {}", d.unit),
                outcome,
                out: text.clone(),
            });
        }
    }
    cases
}

/// What the apply did, as test cases.
fn applied_cases(a: &ApplyReport) -> Vec<Case> {
    let mut cases = Vec::new();
    for (i, p) in a.phases.iter().enumerate() {
        let done = p.jobs.iter().filter(|j| j.result.is_done()).count();
        let out = match &p.note {
            Some(note) => note.clone(),
            None => format!("{done} of {} jobs done", p.jobs.len()),
        };
        let outcome = if p.ok {
            Outcome::Pass
        } else {
            let failed: Vec<String> = p
                .jobs
                .iter()
                .filter(|j| !j.result.is_done())
                .map(|j| format!("{} {}: {}", j.kind, j.unit, j.result.describe()))
                .collect();
            Outcome::Failure {
                kind: "phase-failed",
                message: format!("{}: {out}", p.phase.name()),
                text: format!("{}\n", failed.join("\n")),
            }
        };
        cases.push(Case {
            classname: APPLIED.to_owned(),
            name: format!("phase {}: {}", i + 1, p.phase.name()),
            outcome,
            out,
        });
    }
    if let Some(why) = &a.aborted {
        let not_done: Vec<&str> = a.not_done.iter().map(|p| p.name()).collect();
        cases.push(Case {
            classname: APPLIED.to_owned(),
            name: "finished".to_owned(),
            outcome: Outcome::Failure {
                kind: "stopped-early",
                message: format!("stopped early: {why}"),
                text: format!("not done: {}\n", not_done.join(", ")),
            },
            out: String::new(),
        });
    }
    for f in &a.failed {
        let summary = f.status.summary();
        cases.push(Case {
            classname: APPLIED.to_owned(),
            name: format!("unit {}", f.unit),
            outcome: Outcome::Failure {
                kind: "unit-failed",
                message: format!("{} failed: {summary}", f.unit),
                text: f
                    .job
                    .as_ref()
                    .map(|j| format!("{} {}: {}\n", j.kind, j.unit, j.result.describe()))
                    .unwrap_or_default(),
            },
            out: String::new(),
        });
    }
    for c in &a.protected {
        let outside: Vec<String> = a
            .unplanned_on_protected()
            .filter(|e| e.unit == c.unit)
            .map(|e| format!("{} outside the plan", e.effect))
            .collect();
        let disturbed = c.disturbed.clone().or_else(|| (!outside.is_empty()).then(|| outside.join(", ")));
        let outcome = match disturbed {
            None => Outcome::Pass,
            Some(what) => Outcome::Failure {
                kind: "protected-disturbed",
                message: format!("protected {} disturbed: {what}", c.unit),
                text: String::new(),
            },
        };
        let out = format!("MainPID {}, InvocationID {}", c.after.main_pid, c.after.invocation_id);
        cases.push(Case { classname: APPLIED.to_owned(), name: format!("protected {}", c.unit), outcome, out });
    }
    if let Some(o) = &a.observed {
        for e in o.unplanned() {
            cases.push(Case {
                classname: APPLIED.to_owned(),
                name: format!("unplanned {} {}", e.effect, e.unit),
                outcome: Outcome::Failure {
                    kind: "unplanned",
                    message: format!(
                        "systemd {} {}, which the plan neither lists nor predicts{}",
                        e.effect.past(),
                        e.unit,
                        if e.protected { "; the unit is protected" } else { "" }
                    ),
                    text: format!("{}\n", plan_model::observe::effect_line(e)),
                },
                out: String::new(),
            });
        }
        let mut out = format!("{}\n", o.summary());
        for c in &o.not_seen {
            out.push_str(&format!("predicted, not seen: {}\n", plan_model::observe::consequence_line(c)));
        }
        if o.dropped > 0 {
            out.push_str(&format!("{}\n", o.dropped_note()));
        }
        cases.push(Case { classname: APPLIED.to_owned(), name: "observed".to_owned(), outcome: Outcome::Pass, out });
    }
    cases
}

fn cases(plan: &Plan) -> Vec<Case> {
    let mut cases = Vec::new();
    for item in action_items(plan) {
        let name = format!("{} {}", item.action, item.unit.unit);
        let reasons = reasons_line(item.unit);
        let outcome = match item.status {
            ItemStatus::Planned => Outcome::Pass,
            ItemStatus::HeldByRefusal => Outcome::Skipped(
                "not carried out: the switch is refused because another action touches a protected unit".to_owned(),
            ),
            ItemStatus::Deferred | ItemStatus::Refused => {
                let kind = if item.status == ItemStatus::Deferred { "deferred" } else { "refused" };
                let chain =
                    item.blocker.map(|b| chain_line(&b)).unwrap_or_else(|| "touches a protected unit".to_owned());
                let mut text = format!("{} {}: {chain}\n", item.action, item.unit.unit);
                if let Some(b) = &item.blocker {
                    text.push_str(&format!("reason chain, from the protected unit {}:\n", b.touch.touches));
                    for e in &b.touch.chain {
                        text.push_str(&format!("  {} {}={}\n", e.from, e.relation, e.to));
                    }
                }
                if !reasons.is_empty() {
                    text.push_str(&format!("planned because: {reasons}\n"));
                }
                Outcome::Failure { kind, message: format!("{kind}: {chain}"), text }
            }
        };
        cases.push(Case { classname: UNITS.to_owned(), name, outcome, out: reasons });
    }
    for (i, step) in plan.steps.iter().enumerate() {
        // Steps can repeat (two swapoffs of different devices have different
        // lines, but nothing forbids the same step twice), so a position
        // keeps the names unique.
        // The name leaves out store paths, which change with every build, so
        // that CI systems can follow a test case from one pipeline to the
        // next; the full line goes to the case's output.
        let kind = match step {
            plan_model::Step::Swapoff { device } => format!("swapoff {device}"),
            plan_model::Step::Activate { .. } => "activation script".to_owned(),
            plan_model::Step::Reexec { .. } => "re-execute the service manager".to_owned(),
            plan_model::Step::DaemonReload => "daemon-reload".to_owned(),
            plan_model::Step::RestartSysinitReactivation => "restart sysinit-reactivation.target".to_owned(),
            plan_model::Step::Assertions { .. } => "pre-activation assertions".to_owned(),
            plan_model::Step::RegisterProfile { .. } => "register the profile".to_owned(),
            plan_model::Step::Prepopulate { .. } => "files and state (prepopulate)".to_owned(),
            plan_model::Step::RestartUserborn => "restart userborn.service".to_owned(),
            plan_model::Step::Tmpfiles => "tmpfiles".to_owned(),
            plan_model::Step::Mask { .. } => "mask units".to_owned(),
            plan_model::Step::SystemManagerState => "system-manager state file".to_owned(),
        };
        let name = format!("step {}: {kind}", i + 1);
        cases.push(Case {
            classname: STEPS.to_owned(),
            name,
            outcome: Outcome::Pass,
            out: crate::text::step_line(step),
        });
    }
    for (i, r) in plan.reboot.iter().enumerate() {
        cases.push(Case {
            classname: REBOOT.to_owned(),
            name: format!("reboot {}: {}", i + 1, r.reason),
            outcome: Outcome::Skipped(format!("needs a reboot: {}", crate::reboot_line(r))),
            out: crate::reboot_line(r),
        });
    }
    for m in &plan.kernel_modules {
        let line = crate::module_line(m);
        let outcome = match m.usable {
            plan_model::ModuleUse::Now => Outcome::Pass,
            _ => Outcome::Skipped(line.clone()),
        };
        cases.push(Case {
            classname: MODULES.to_owned(),
            name: format!("module {}/{}", m.release, m.path),
            outcome,
            out: line,
        });
    }
    let gate = match Verdict::of(plan) {
        Verdict::Safe => Outcome::Pass,
        v => {
            let blocked: Vec<String> =
                blockers(plan).iter().map(|b| format!("{}: {}", b.unit, chain_line(b))).collect();
            let message = if v == Verdict::Refused {
                "the switch is refused: it touches a protected unit".to_owned()
            } else {
                format!("{} unit(s) deferred: their actions touch a protected unit", blocked.len())
            };
            Outcome::Failure { kind: v.as_str(), text: format!("{message}\n{}\n", blocked.join("\n")), message }
        }
    };
    cases.push(Case { classname: GATE.to_owned(), name: "protection".to_owned(), outcome: gate, out: String::new() });
    cases
}

/// Counts of a list of test cases: tests, failures, skipped.
fn counts(cases: &[Case]) -> (usize, usize, usize) {
    let failures = cases.iter().filter(|c| matches!(c.outcome, Outcome::Failure { .. })).count();
    let skipped = cases.iter().filter(|c| matches!(c.outcome, Outcome::Skipped(_))).count();
    (cases.len(), failures, skipped)
}

/// The attributes `<testsuites>` and each `<testsuite>` carry: a name and
/// the counts of `(tests, failures, skipped)`.
fn suite_attributes(name: &str, (tests, failures, skipped): (usize, usize, usize)) -> [(&'static str, String); 6] {
    [
        ("name", xml_safe(name).into_owned()),
        ("tests", tests.to_string()),
        ("failures", failures.to_string()),
        ("errors", "0".to_owned()),
        ("skipped", skipped.to_string()),
        ("time", "0".to_owned()),
    ]
}

/// Writes the test suites, each with its properties, cases and a closing
/// `<system-out>` (when there is one), under one `<testsuites>` holding
/// their totals.
fn write(suites: &[Suite<'_>]) -> io::Result<Vec<u8>> {
    let totals = suites.iter().map(|s| counts(&s.cases)).fold((0, 0, 0), |a, c| (a.0 + c.0, a.1 + c.1, a.2 + c.2));
    let attributes = suite_attributes("safe-switch", totals);
    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    w.create_element("testsuites")
        .with_attributes(attributes.iter().map(|(k, v)| (*k, v.as_str())))
        .write_inner_content(|w| {
            for suite in suites {
                let attributes = suite_attributes(suite.name, counts(&suite.cases));
                w.create_element("testsuite")
                    .with_attributes(attributes.iter().map(|(k, v)| (*k, v.as_str())))
                    .write_inner_content(|w| {
                        write_properties(w, &suite.props)?;
                        for case in &suite.cases {
                            write_case(w, case)?;
                        }
                        if !suite.system_out.is_empty() {
                            w.create_element("system-out")
                                .write_text_content(BytesText::new(&xml_safe(&suite.system_out)))?;
                        }
                        Ok(())
                    })?;
            }
            Ok(())
        })?;
    Ok(w.into_inner())
}

/// The properties of a plan's test suite.
fn properties(plan: &Plan) -> [(&'static str, String); 7] {
    let mode = match plan.protection.mode {
        plan_model::Mode::Defer => "defer",
        plan_model::Mode::Refuse => "refuse",
    };
    let protected: Vec<&str> = plan.protection.protected.iter().map(|p| p.selector.as_str()).collect();
    [
        ("format_version", plan.format_version.to_string()),
        ("old", plan.old.path.clone()),
        ("new", plan.new.path.clone()),
        ("verdict", Verdict::of(plan).as_str().to_owned()),
        ("protection.mode", mode.to_owned()),
        ("protection.selectors", protected.join(",")),
        ("reboot", crate::reboot_reasons(plan).replace(", ", ",")),
    ]
}

fn write_properties(w: &mut Writer<Vec<u8>>, props: &[(&str, String)]) -> io::Result<()> {
    w.create_element("properties").write_inner_content(|w| {
        for (name, value) in props {
            w.create_element("property")
                .with_attributes([("name", *name), ("value", xml_safe(value).as_ref())])
                .write_empty()?;
        }
        Ok(())
    })?;
    Ok(())
}

fn write_case(w: &mut Writer<Vec<u8>>, case: &Case) -> io::Result<()> {
    let name = xml_safe(&case.name);
    let el = w.create_element("testcase").with_attributes([
        ("name", name.as_ref()),
        ("classname", xml_safe(&case.classname).as_ref()),
        ("time", "0"),
    ]);
    if matches!(case.outcome, Outcome::Pass) && case.out.is_empty() {
        el.write_empty()?;
        return Ok(());
    }
    el.write_inner_content(|w| {
        match &case.outcome {
            Outcome::Pass => {}
            Outcome::Skipped(message) => {
                w.create_element("skipped").with_attribute(("message", xml_safe(message).as_ref())).write_empty()?;
            }
            Outcome::Failure { kind, message, text } => {
                w.create_element("failure")
                    .with_attributes([("message", xml_safe(message).as_ref()), ("type", *kind)])
                    .write_text_content(BytesText::new(&xml_safe(text)))?;
            }
        }
        if !case.out.is_empty() {
            w.create_element("system-out").write_text_content(BytesText::new(&xml_safe(&case.out)))?;
        }
        Ok(())
    })?;
    Ok(())
}

/// Replaces characters XML 1.0 cannot carry at all, even escaped (control
/// characters other than tab, newline and carriage return), with U+FFFD.
/// Unit-file text and diagnostics can contain them; a report that a CI
/// system rejects as malformed would hide the whole result.
fn xml_safe(s: &str) -> Cow<'_, str> {
    let bad =
        |c: char| matches!(c, '\u{0}'..='\u{8}' | '\u{b}' | '\u{c}' | '\u{e}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}');
    if s.chars().any(bad) {
        Cow::Owned(s.chars().map(|c| if bad(c) { '\u{fffd}' } else { c }).collect())
    } else {
        Cow::Borrowed(s)
    }
}
