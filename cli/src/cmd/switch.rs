//! The `switch` subcommand: plan, protect, then carry out the safe part of
//! the switch on this host.
//!
//! The order of a switch:
//!
//! 1. Checks that change nothing: root, the toplevel exists and has an
//!    executable `activate` (a system-manager generation: its engine's
//!    wrappers, and a state file safe-switch can read, see
//!    [`crate::sysmgr`]), systemd answers on the system bus, no other
//!    safe-switch holds `/run/safe-switch/lock`.
//! 2. Unless `--no-isolate`, the same command line runs again inside a
//!    transient service (`safe-switch-<id>.service`, as `systemd-run
//!    --collect --service-type=exec` would start it). This process only
//!    relays its output and exit status; if it is killed, or the SSH
//!    connection or CI job it belongs to goes away, the switch carries on to
//!    the end, and its output stays in `/run/safe-switch/`.
//! 3. The lock is taken. An earlier apply that was interrupted is
//!    described and finished first.
//! 4. The plan is made (as `safe-switch plan` prints it) and printed. A plan
//!    refused by protection stops here with exit 3.
//! 5. The executor carries it out (stop, activate, re-exec, daemon-reload,
//!    `sysinit-reactivation.target`, reload, restart, start; a
//!    system-manager plan in system-manager's order), then checks every
//!    protected unit.
//! 6. With `--rollback-on-failure`, a failed unit or a disturbed protected
//!    unit makes it switch back to the previous generation with the same
//!    protections, and both results are reported.
//! 7. What the switch deferred is merged into the record of pending
//!    deferrals (`/run/safe-switch/pending.json`, see [`crate::pending`]),
//!    which `safe-switch pending` lists and `safe-switch settle` carries
//!    out.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use plan_model::Plan;
use plan_report::Blocker;
use systemd_live::{ApplyOptions, ApplyReport, RunDir, ServiceManager};

use crate::args::{self, ProtectArgs};
use crate::exit::Outcome;
use crate::host;
use crate::report::Applying;

/// Runs `switch`.
pub(crate) fn run(args: args::SwitchArgs) -> anyhow::Result<Outcome> {
    if crate::darwin::is_darwin_host() {
        return crate::darwin::switch(args);
    }
    let target = host::resolve_source(&args.source, &args.protect)?;
    preflight(&target.toplevel)?;
    let run = RunDir::system();
    if !args.apply.no_isolate {
        // A built flake is handed over as it is: the isolated apply must
        // switch to the generation this process built and showed, without
        // evaluating the flake again.
        let built = (args.source.flake.is_some() && args.source.resolved_file.is_none()).then_some(&target);
        return crate::isolate::run_isolated(&run, built, true);
    }
    let _lock = crate::isolate::lock(&run, args.apply.isolated)?;
    // The record of earlier deferrals is merged after the apply: one that
    // cannot be read stops the switch before any change.
    crate::pending::read(&run)?;
    let mut bus = host::connect()?;
    let options = apply_options(&args.apply);
    if let Some(outcome) = finish_interrupted(&mut bus, &run, &options, &args.protect)? {
        return Ok(outcome);
    }
    let lp = host::plan_to(&target, &args.protect, &mut bus)?;
    let reports = Applying { report: lp.report(), output: &args.output };
    let started = std::time::Instant::now();
    let outcome = if lp.plan.protection.refused {
        reports.refused()?;
        say!("refused: the switch would touch a protected unit (see the plan above); nothing was changed");
        Ok(Outcome::Blocked)
    } else {
        reports.before()?;
        apply_plan(&mut bus, &run, &lp.plan, &args.apply, &args.protect, Some(&reports))
    };
    crate::report::write_apply_metrics(&args.output.report, Some(&lp.plan), &run, &outcome, started);
    outcome
}

/// Refuses, before any change, what cannot be switched: a caller that is
/// not root and a toplevel without an executable `activate` (or, for a
/// system-manager generation, see [`crate::sysmgr::preflight`]).
pub(crate) fn preflight(toplevel: &Path) -> anyhow::Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!(
            "switch must run as root (it stops and starts units and runs the activation script); \
             nothing was changed. `safe-switch plan` shows the plan without root"
        );
    }
    if crate::sysmgr::is_generation(toplevel) {
        return crate::sysmgr::preflight(toplevel);
    }
    require_executable(&toplevel.join("activate"), "the toplevel has no activation script")
}

/// Refuses, before any change, a program the switch is to run that is
/// missing (`missing` says what it is) or not an executable file.
pub(crate) fn require_executable(path: &Path, missing: &str) -> anyhow::Result<()> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("{}: {missing}; refusing to switch, nothing was changed", path.display()))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        bail!("{}: not an executable file; refusing to switch, nothing was changed", path.display());
    }
    Ok(())
}

/// The executor's options from the command line.
pub(crate) fn apply_options(a: &args::ExecutionArgs) -> ApplyOptions {
    ApplyOptions { job_timeout: Duration::from_secs(a.job_timeout.max(1)), ..ApplyOptions::default() }
}

/// Finishes an apply that was interrupted, if there is one. Returns the
/// outcome to exit with when it could not be finished (the new switch is
/// then not attempted).
///
/// What remains of the interrupted plan is protected again with the
/// protections in force now (`protect`, the policy files, the caller)
/// besides those it was planned with: a unit protected only now is
/// deferred, or in refuse mode the resume is refused (exit 3) and nothing
/// more is changed.
pub(crate) fn finish_interrupted(
    mgr: &mut dyn ServiceManager,
    run: &RunDir,
    options: &ApplyOptions,
    protect: &ProtectArgs,
) -> anyhow::Result<Option<Outcome>> {
    let Some(mut interrupted) = run.interrupted()? else {
        return Ok(None);
    };
    say_text!("{}", interrupted.describe());
    let target = interrupted.progress.plan.new.path.clone();
    let plan = reprotect_remaining(mgr, &interrupted.progress, protect).with_context(|| {
        format!("cannot plan what remains of the interrupted switch to {target}; nothing more was changed")
    })?;
    if plan.protection.refused {
        say_text!("{}", plan_report::text::refusal_text(&plan));
        say!(
            "refused to finish the interrupted switch to {target}: what remains of it would touch a unit protected now; nothing more was changed"
        );
        return Ok(Some(Outcome::Blocked));
    }
    let before: std::collections::BTreeSet<&str> =
        interrupted.progress.plan.units.iter().filter(|u| u.deferral.is_some()).map(|u| u.unit.as_str()).collect();
    for unit in plan.units.iter().filter(|u| u.deferral.is_some() && !before.contains(u.unit.as_str())) {
        if let Some(d) = &unit.deferral {
            let line = plan_report::text::touch_line(&d.actions, "deferred", &Blocker::of_deferral(&unit.unit, d));
            say!("  {line} (protected now)");
        }
    }
    say!("resuming it first, with the protections in force now");
    interrupted.progress.plan = plan;
    let resumed = interrupted.progress.plan.clone();
    let report = crate::sysmgr::resume(interrupted, mgr, run, options)?;
    say_text!("{}", report_text(&report));
    if report.unchanged {
        let why = report.aborted.as_deref().unwrap_or("a check failed");
        bail!("the interrupted switch to {target} was refused ({why}); nothing more was changed");
    }
    record(run, &resumed, &report, mgr);
    if report.aborted.is_some() {
        bail!("the interrupted switch to {target} could not be finished (see above); run again to resume it");
    }
    if !report.success() {
        say!("the interrupted switch to {target} finished with failures; not switching further");
        return Ok(Some(Outcome::UnitsFailed));
    }
    say!("the interrupted switch to {target} is finished");
    Ok(None)
}

/// What remains of an interrupted apply's plan, protected with the
/// protections it was made with plus those in force now, against the live
/// state now.
fn reprotect_remaining(
    mgr: &mut dyn ServiceManager,
    progress: &systemd_live::ProgressFile,
    protect: &ProtectArgs,
) -> anyhow::Result<Plan> {
    let mut plan = systemd_live::remaining(progress);
    let (old, new) = systemd_plan::load_pair(Path::new(&plan.old.path), Path::new(&plan.new.path));
    let (old, new) = (old?, new?);
    let mut args = protect.clone();
    let earlier = crate::protect::recorded_in(&progress.plan);
    args.recorded = Some(match &args.recorded {
        Some(recorded) => crate::protect::union(recorded, earlier),
        None => earlier,
    });
    let request = crate::protect::request(&args)?;
    let live = host::read_live(&old, &new, &request, mgr).context("cannot read the live state from systemd")?;
    crate::protect::protect_plan(&mut plan, &old, &new, &live, &args)?;
    Ok(plan)
}

/// Records what `plan` deferred ([`crate::pending::record`]) and, when it
/// was carried out to the end, brings a system-manager host's state file
/// up to date with the record ([`crate::sysmgr::sync_state`]).
fn record(run: &RunDir, plan: &Plan, report: &ApplyReport, mgr: &mut dyn ServiceManager) {
    crate::pending::record(run, plan, mgr);
    if report.aborted.is_none() {
        crate::sysmgr::sync_state(run, plan);
    }
}

/// What an apply did, as text, with the status of the units that failed:
/// the `applied` section of the text report, as standard error shows it.
pub(crate) fn report_text(report: &ApplyReport) -> String {
    plan_report::text::render_applied(report, crate::report::stderr_style())
}

/// Carries out `plan` (the caller holds the lock), prints what happened,
/// writes the `reports` again with it, and rolls back when asked to and
/// needed. Returns the outcome: `Ok`, or `UnitsFailed` when a unit failed
/// or a protected unit was disturbed (its process or invocation changed,
/// or systemd acted on it where the plan did not say it would). An apply
/// that stopped early (systemd unreachable, a reload that never
/// finished) is an error that says which phases were done; the next run
/// resumes it.
pub(crate) fn apply_plan(
    bus: &mut dyn ServiceManager,
    run: &RunDir,
    plan: &Plan,
    apply: &args::ExecutionArgs,
    protect: &ProtectArgs,
    reports: Option<&Applying<'_>>,
) -> anyhow::Result<Outcome> {
    let options = apply_options(apply);
    let marker = crate::kernel::reboot_marker();
    let report = crate::sysmgr::apply(plan, bus, run, &options)?;
    say_text!("{}", report_text(&report));
    if report.unchanged {
        if let Some(reports) = reports {
            reports.after(&report)?;
        }
        let why = report.aborted.as_deref().unwrap_or("a check failed");
        bail!("the switch to {} was refused ({why}); nothing was changed", plan.new.path);
    }
    for line in crate::kernel::after_apply(plan, marker, crate::kernel::reboot_marker()) {
        say!("{line}");
    }
    record(run, plan, &report, bus);
    if let Some(reports) = reports {
        reports.after(&report)?;
    }
    if report.success() {
        say!("switched to {}", plan.new.path);
        return Ok(Outcome::Ok);
    }
    if apply.rollback_on_failure {
        say!("rolling back to {} with the same protections", plan.old.path);
        let back = host::live_plan(&host::running_generation(), Path::new(&plan.old.path), protect, bus)
            .context("cannot plan the rollback")?;
        let rb = crate::sysmgr::apply(&back.plan, bus, run, &options)?;
        say_text!("rollback:\n{}", report_text(&rb));
        if rb.unchanged {
            let why = rb.aborted.as_deref().unwrap_or("a check failed");
            bail!(
                "the switch to {} failed (see above), and the rollback to {} was refused ({why})",
                plan.new.path,
                plan.old.path
            );
        }
        record(run, &back.plan, &rb, bus);
        if rb.success() {
            say!("rolled back to {}; the switch to {} failed (see above)", plan.old.path, plan.new.path);
        } else {
            say!("the rollback to {} failed as well (see above)", plan.old.path);
        }
        if rb.aborted.is_some() {
            bail!("the rollback stopped early; run `safe-switch switch` again to resume it");
        }
        return Ok(Outcome::UnitsFailed);
    }
    if let Some(why) = &report.aborted {
        bail!(
            "the switch to {} stopped early ({why}); the phases above marked done were carried out, the rest was not; run again to resume",
            plan.new.path
        );
    }
    Ok(Outcome::UnitsFailed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use plan_model::{Action, Plan, UnitPlan};
    use systemd_live::fake::{Behaviour, FakeManager};

    use super::*;

    fn plan(units: &[(&str, Action)]) -> Plan {
        Plan::between("/gen/a", "/gen/b", units.iter().map(|(unit, action)| UnitPlan::new(unit, &[*action])).collect())
    }

    fn options() -> args::ExecutionArgs {
        args::ExecutionArgs { job_timeout: 5, no_isolate: true, isolated: false, rollback_on_failure: false }
    }

    /// The outcome of an apply on the fake manager: done, or a unit that
    /// failed (exit 4), with nothing left to resume either way.
    #[test]
    fn an_apply_ends_in_its_outcome_and_leaves_nothing_to_resume() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let mut m = FakeManager::new();
        m.inactive("good.service");
        m.inactive("bad.service").behaviour = Behaviour::FailsToStart;
        let protect = ProtectArgs::default();

        let done = apply_plan(&mut m, &run, &plan(&[("good.service", Action::Start)]), &options(), &protect, None);
        assert_eq!(done.unwrap(), Outcome::Ok);
        assert_eq!(m.units["good.service"].status.active_state, "active");

        let failed = apply_plan(&mut m, &run, &plan(&[("bad.service", Action::Start)]), &options(), &protect, None);
        assert_eq!(failed.unwrap(), Outcome::UnitsFailed);
        assert!(run.interrupted().unwrap().is_none(), "a finished apply leaves nothing to resume");
        assert!(finish_interrupted(&mut m, &run, &apply_options(&options()), &protect).unwrap().is_none());
    }

    /// A manager that goes away in the middle is an error that says what
    /// was done; the next run finds the apply to resume.
    #[test]
    fn an_apply_cut_short_is_an_error_and_left_to_resume() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let mut m = FakeManager::new();
        m.running("a.service");
        m.running("b.service");
        m.unreachable_after_jobs = Some(1);
        let p = plan(&[("a.service", Action::Stop), ("b.service", Action::Start)]);
        let err = apply_plan(&mut m, &run, &p, &options(), &ProtectArgs::default(), None).unwrap_err();
        assert!(format!("{err:#}").contains("stopped early"), "{err:#}");
        let interrupted = run.interrupted().unwrap().expect("the apply is left to resume");
        assert_eq!(interrupted.progress.plan.new.path, "/gen/b");
    }
}
