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
//! always shows at least one failure.
//!
//! Test case names are unique within the report: GitLab keeps only the
//! first of several test cases with the same name.

use std::borrow::Cow;
use std::io;

use plan_model::Plan;
use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesText, Event};

use crate::{ItemStatus, Report, Verdict, action_items, blockers, chain_line, reasons_line};

/// The `classname` of unit test cases.
const UNITS: &str = "safe-switch.units";
/// The `classname` of global steps.
const STEPS: &str = "safe-switch.steps";
/// The `classname` of the verdict test case.
const GATE: &str = "safe-switch.protection";

/// One test case before it is written.
struct Case {
    classname: &'static str,
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

/// Renders the JUnit XML report.
pub fn render(report: &Report<'_>) -> String {
    let cases = cases(report.plan);
    // Writing into a Vec cannot fail; an error here would be a bug in the
    // writer, and an empty report is the least harmful answer to it.
    let bytes = write(report.plan, &cases).unwrap_or_default();
    let mut s = String::from_utf8(bytes).unwrap_or_default();
    s.push('\n');
    s
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
        cases.push(Case { classname: UNITS, name, outcome, out: reasons });
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
        };
        let name = format!("step {}: {kind}", i + 1);
        cases.push(Case { classname: STEPS, name, outcome: Outcome::Pass, out: crate::text::step_line(step) });
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
    cases.push(Case { classname: GATE, name: "protection".to_owned(), outcome: gate, out: String::new() });
    cases
}

fn write(plan: &Plan, cases: &[Case]) -> io::Result<Vec<u8>> {
    let tests = cases.len().to_string();
    let failures = cases.iter().filter(|c| matches!(c.outcome, Outcome::Failure { .. })).count().to_string();
    let skipped = cases.iter().filter(|c| matches!(c.outcome, Outcome::Skipped(_))).count().to_string();
    let suite_name = "safe-switch plan";
    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    w.create_element("testsuites")
        .with_attributes([
            ("name", "safe-switch"),
            ("tests", tests.as_str()),
            ("failures", failures.as_str()),
            ("errors", "0"),
            ("skipped", skipped.as_str()),
            ("time", "0"),
        ])
        .write_inner_content(|w| {
            w.create_element("testsuite")
                .with_attributes([
                    ("name", suite_name),
                    ("tests", tests.as_str()),
                    ("failures", failures.as_str()),
                    ("errors", "0"),
                    ("skipped", skipped.as_str()),
                    ("time", "0"),
                ])
                .write_inner_content(|w| {
                    write_properties(w, plan)?;
                    for case in cases {
                        write_case(w, case)?;
                    }
                    let diags: Vec<String> = plan
                        .diagnostics
                        .iter()
                        .map(|d| {
                            let sev = serde_json::to_value(d.severity)
                                .ok()
                                .and_then(|v| v.as_str().map(str::to_owned))
                                .unwrap_or_default();
                            match &d.unit {
                                Some(u) => format!("{sev} [{u}]: {}", d.message),
                                None => format!("{sev}: {}", d.message),
                            }
                        })
                        .collect();
                    if !diags.is_empty() {
                        w.create_element("system-out")
                            .write_text_content(BytesText::new(&xml_safe(&diags.join("\n"))))?;
                    }
                    Ok(())
                })?;
            Ok(())
        })?;
    Ok(w.into_inner())
}

fn write_properties(w: &mut Writer<Vec<u8>>, plan: &Plan) -> io::Result<()> {
    let mode = match plan.protection.mode {
        plan_model::Mode::Defer => "defer",
        plan_model::Mode::Refuse => "refuse",
    };
    let protected: Vec<&str> = plan.protection.protected.iter().map(|p| p.selector.as_str()).collect();
    let protected = protected.join(",");
    let props = [
        ("format_version", plan.format_version.to_string()),
        ("old", plan.old.path.clone()),
        ("new", plan.new.path.clone()),
        ("verdict", Verdict::of(plan).as_str().to_owned()),
        ("protection.mode", mode.to_owned()),
        ("protection.selectors", protected),
    ];
    w.create_element("properties").write_inner_content(|w| {
        for (name, value) in &props {
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
        ("classname", case.classname),
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
