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
//! | `never` | never; the reports still say what is blocked |

use plan_model::Plan;

use crate::args::{self, FailOn};
use crate::exit::Outcome;
use crate::host;

/// Runs `check`.
pub(crate) fn run(args: args::CheckArgs) -> anyhow::Result<Outcome> {
    if crate::darwin::is_darwin_host() {
        return crate::darwin::check(args);
    }
    let target = host::resolve_source(&args.source, &args.protect)?;
    let mut bus = host::connect()?;
    host::report_interrupted(&systemd_live::RunDir::system());
    let lp = host::plan_to(&target, &args.protect, &mut bus)?;
    host::report_stats(&bus);
    let outcome = outcome(&lp.plan, args.fail_on);
    if host::explain(&lp, &args.protect, &args.output)? {
        return Ok(outcome);
    }
    host::print(&lp, &args.output)?;
    if outcome == Outcome::Blocked {
        say!("{}", blocked_message(&lp.plan, args.fail_on));
    }
    Ok(outcome)
}

/// The exit policy of `check`.
pub(crate) fn outcome(plan: &Plan, fail_on: FailOn) -> Outcome {
    let blocked = match fail_on {
        FailOn::Blocked => plan.touches_protected(),
        FailOn::Deferred => plan.deferred().next().is_some(),
        FailOn::Never => false,
    };
    if blocked { Outcome::Blocked } else { Outcome::Ok }
}

fn blocked_message(plan: &Plan, fail_on: FailOn) -> String {
    let units: Vec<String> = plan_report::blockers(plan).iter().map(|b| b.unit.to_owned()).collect();
    let what = if plan.protection.refused { "refused" } else { "blocked" };
    let flag = match fail_on {
        FailOn::Blocked => "blocked",
        FailOn::Deferred => "deferred",
        FailOn::Never => "never",
    };
    format!(
        "check failed (--fail-on={flag}): the switch is {what}: {} touch a protected unit",
        if units.is_empty() { "actions".to_owned() } else { units.join(", ") }
    )
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
        }
    }

    #[test]
    fn fail_on_policy() {
        let safe = plan(false, false);
        let deferred = plan(true, false);
        let refused = plan(false, true);
        for (fail_on, expect) in [
            (FailOn::Blocked, [Outcome::Ok, Outcome::Blocked, Outcome::Blocked]),
            (FailOn::Deferred, [Outcome::Ok, Outcome::Blocked, Outcome::Ok]),
            (FailOn::Never, [Outcome::Ok, Outcome::Ok, Outcome::Ok]),
        ] {
            assert_eq!([outcome(&safe, fail_on), outcome(&deferred, fail_on), outcome(&refused, fail_on)], expect);
        }
    }
}
