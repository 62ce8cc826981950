//! The `check` subcommand: plan only, as a CI gate.
//!
//! `safe-switch check --toplevel PATH --protect sshd --report junit=r.xml`
//! plans exactly as `plan` does (running generation, live state from
//! systemd, protection), prints and writes the reports, and turns the
//! verdict into the exit code. It never changes the machine.
//!
//! | `--fail-on` | exit 3 when |
//! |-------------|-------------|
//! | `blocked` (default) | an action touches a protected unit: deferred, or the plan is refused |
//! | `deferred` | protection deferred actions (`defer` mode); a refused plan alone does not fail |
//! | `reboot` | part of the switch takes effect only at the next boot (the plan's `reboot` is not empty) |
//! | `never` | never; the reports still say what is blocked and what waits for a reboot |
//!
//! Several conditions (`--fail-on blocked,reboot`, or the option repeated)
//! fail when any of them holds; `never` goes alone.

use plan_model::Plan;

use crate::args::{self, FailOn};
use crate::exit::Outcome;
use crate::host;

/// Runs `check`.
pub(crate) fn run(args: args::CheckArgs) -> anyhow::Result<Outcome> {
    if crate::darwin::is_darwin_host() {
        return crate::darwin::check(args);
    }
    fail_on_alone(&args.fail_on)?;
    let target = host::resolve_source(&args.source, &args.protect)?;
    // Reading the generations overlaps connecting to systemd.
    let loading = host::start_loading(&target)?;
    let mut bus = host::connect()?;
    host::report_interrupted(&systemd_live::RunDir::system());
    let lp = host::plan_loading(&target, loading, &args.protect, &mut bus)?;
    host::report_stats(&bus);
    let outcome = outcome(&lp.plan, &args.fail_on);
    if host::explain(&lp, &args.protect, &args.output)? {
        return Ok(outcome);
    }
    host::print(&lp, &args.output)?;
    for message in failed_messages(&lp.plan, &args.fail_on) {
        say!("{message}");
    }
    Ok(outcome)
}

/// Refuses `never` beside another condition: it would say two things.
pub(crate) fn fail_on_alone(fail_on: &[FailOn]) -> anyhow::Result<()> {
    if fail_on.contains(&FailOn::Never) && fail_on.iter().any(|f| *f != FailOn::Never) {
        return Err(crate::exit::usage("--fail-on never cannot be combined with another condition"));
    }
    Ok(())
}

/// Tells whether one `--fail-on` condition holds for the plan.
fn fails(plan: &Plan, fail_on: FailOn) -> bool {
    match fail_on {
        FailOn::Blocked => plan.touches_protected(),
        FailOn::Deferred => plan.deferred().next().is_some(),
        FailOn::Reboot => plan.needs_reboot(),
        FailOn::Never => false,
    }
}

/// The exit policy of `check`: exit 3 when any condition holds.
pub(crate) fn outcome(plan: &Plan, fail_on: &[FailOn]) -> Outcome {
    if fail_on.iter().any(|f| fails(plan, *f)) { Outcome::Blocked } else { Outcome::Ok }
}

/// Why the check failed: one line per condition that holds.
pub(crate) fn failed_messages(plan: &Plan, fail_on: &[FailOn]) -> Vec<String> {
    let mut out = Vec::new();
    for &f in fail_on {
        if !fails(plan, f) {
            continue;
        }
        let message = match f {
            FailOn::Blocked | FailOn::Deferred => {
                let units: Vec<String> = plan_report::blockers(plan).iter().map(|b| b.unit.to_owned()).collect();
                let what = if plan.protection.refused { "refused" } else { "blocked" };
                let flag = if f == FailOn::Blocked { "blocked" } else { "deferred" };
                format!(
                    "check failed (--fail-on={flag}): the switch is {what}: {} touch a protected unit",
                    if units.is_empty() { "actions".to_owned() } else { units.join(", ") }
                )
            }
            FailOn::Reboot => format!(
                "check failed (--fail-on=reboot): the switch needs a reboot ({}): part of it takes effect only at \
                 the next boot",
                plan_report::reboot_reasons(plan)
            ),
            FailOn::Never => continue,
        };
        if !out.contains(&message) {
            out.push(message);
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use plan_model::{Action, Deferral, FORMAT_VERSION, Generation, Protection, UnitPlan};

    fn plan(deferred: bool, refused: bool) -> Plan {
        Plan {
            format_version: FORMAT_VERSION,
            old: Generation::default(),
            new: Generation::default(),
            units: vec![UnitPlan {
                unit: "a.service".into(),
                actions: vec![],
                reasons: vec![],
                changes: vec![],
                deferral: deferred.then(|| Deferral {
                    actions: vec![Action::Restart],
                    touch: plan_model::Touch {
                        touches: "sshd.service".into(),
                        effect: Action::Stop,
                        chain: vec![],
                        cause: None,
                        omitted: 0,
                    },
                }),
            }],
            steps: vec![],
            consequences: Vec::new(),
            protection: Protection { refused, ..Protection::default() },
            diagnostics: vec![],
            packages: None,
            reboot: vec![],
            kernel_modules: Vec::new(),
        }
    }

    #[test]
    fn fail_on_policy() {
        let safe = plan(false, false);
        let deferred = plan(true, false);
        let refused = plan(false, true);
        let mut reboot = plan(false, false);
        reboot.reboot = vec![plan_model::Reboot { reason: plan_model::RebootReason::Initrd, detail: "x".into() }];
        use FailOn::*;
        for (fail_on, expect) in [
            (&[Blocked][..], [Outcome::Ok, Outcome::Blocked, Outcome::Blocked, Outcome::Ok]),
            (&[Deferred], [Outcome::Ok, Outcome::Blocked, Outcome::Ok, Outcome::Ok]),
            (&[Reboot], [Outcome::Ok, Outcome::Ok, Outcome::Ok, Outcome::Blocked]),
            (&[Blocked, Reboot], [Outcome::Ok, Outcome::Blocked, Outcome::Blocked, Outcome::Blocked]),
            (&[Never], [Outcome::Ok, Outcome::Ok, Outcome::Ok, Outcome::Ok]),
        ] {
            let got = [&safe, &deferred, &refused, &reboot].map(|p| outcome(p, fail_on));
            assert_eq!(got, expect, "{fail_on:?}");
        }
        assert_eq!(
            failed_messages(&reboot, &[Blocked, Reboot]),
            ["check failed (--fail-on=reboot): the switch needs a reboot (initrd): part of it takes effect only at \
              the next boot"]
        );
        assert!(fail_on_alone(&[Never]).is_ok() && fail_on_alone(&[Blocked, Reboot]).is_ok());
        let err = fail_on_alone(&[Never, Reboot]).unwrap_err();
        assert_eq!(crate::exit::error_code(&err), crate::exit::USAGE);
    }
}
