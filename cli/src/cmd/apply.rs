//! The `apply` subcommand: carry out exactly a plan saved with
//! `plan --out`, or refuse.
//!
//! Before anything is changed, `apply` checks that the plan is still true
//! and was written by root on this host (see [`crate::saved`]): the file's
//! digest and MAC, the target toplevel (in the Nix store), the running
//! generation, the live state of every unit the plan names, and a fresh
//! plan from the recorded inputs with the recorded protections plus those
//! in force now (the system policy, the caller's cgroup), which must have
//! the same actions. Any mismatch refuses the apply with exit code 3 and
//! changes nothing. Otherwise the saved plan itself is handed to the
//! executor, exactly as `switch` hands over its own plan, with the same
//! lock, isolation in a transient unit, resumption record and
//! protected-unit check.

use std::path::Path;

use anyhow::Context;
use plan_report::Report;
use systemd_live::RunDir;

use crate::args;
use crate::cmd::switch;
use crate::exit::Outcome;
use crate::host;
use crate::report::Applying;
use crate::saved::{self, Observed, PlanKey, Rejection, SavedPlan};

/// Runs `apply`, then writes its `--report openmetrics=PATH` files (the
/// process the caller started does, once the isolated apply is over; the
/// other formats are written by the apply itself, before and after).
pub(crate) fn run(args: args::ApplyArgs) -> anyhow::Result<Outcome> {
    let (started, isolated, reports, file) =
        (std::time::Instant::now(), args.apply.isolated, args.output.report.clone(), args.plan.clone());
    let outcome = apply(args);
    if !isolated {
        let plan = SavedPlan::load(&file).ok().map(|saved| saved.plan);
        crate::report::write_apply_metrics(&reports, plan.as_ref(), &RunDir::system(), &outcome, started);
    }
    outcome
}

fn apply(args: args::ApplyArgs) -> anyhow::Result<Outcome> {
    if crate::darwin::is_darwin_host() {
        return crate::darwin::apply(args);
    }
    let saved = SavedPlan::load(&args.plan)?;
    if let Err(refusal) = saved::verify_digest(&saved) {
        return Ok(refuse(&args.plan, &refusal));
    }
    if saved.inputs.launchd.is_some() {
        let refusal = Rejection::Inconsistent(
            "it was made for launchd (a nix-darwin host), and this host runs systemd".to_owned(),
        );
        return Ok(refuse(&args.plan, &refusal));
    }
    let target = Path::new(&saved.inputs.target_toplevel);
    if !target.exists() {
        let refusal = Rejection::TargetChanged(format!("the target toplevel {} no longer exists", target.display()));
        return Ok(refuse(&args.plan, &refusal));
    }
    switch::preflight(target)?;
    let key = PlanKey::load(&saved::state_dir())?;
    if let Err(refusal) = saved::verify_mac(&saved, key.as_ref()) {
        return Ok(refuse(&args.plan, &refusal));
    }
    let canonical_target = std::fs::canonicalize(target)
        .with_context(|| format!("{}: cannot resolve the target toplevel; nothing was changed", target.display()))?;
    if let Err(refusal) = saved::check_target_in_store(&canonical_target, &saved::store_dir()) {
        return Ok(refuse(&args.plan, &refusal));
    }
    let run = RunDir::system();
    if !args.apply.no_isolate {
        // The caller's cgroup is protected in the isolated apply too: a
        // fresh plan that would touch it differs from the saved one.
        return crate::isolate::run_isolated(&run, None, true);
    }
    let _lock = crate::isolate::lock(&run, args.apply.isolated)?;
    crate::pending::read(&run)?;
    let mut bus = host::connect()?;
    if let Some(interrupted) = run.interrupted()? {
        anyhow::bail!(
            "{}an earlier switch was interrupted; finish it with `safe-switch switch` and plan again; nothing was changed",
            interrupted.describe()
        );
    }

    // Plan again from the recorded inputs, against the machine as it is
    // now, with the recorded protections plus those in force now: the
    // system policy as it is today and this process's cgroup (and its
    // isolating caller's). Protection only adds: a plan made with fewer
    // protections than apply today gets other actions, and is refused.
    let mut protect = saved.inputs.protection.to_args()?;
    protect.cgroup_file = args.cgroup_file.clone();
    let running = host::running_generation();
    let current = std::fs::canonicalize(&running).with_context(|| {
        format!("{}: cannot resolve the running generation; nothing was changed", running.display())
    })?;
    let current = current.display().to_string();
    if current != saved.inputs.running_generation {
        let refusal =
            Rejection::RunningGenerationChanged { recorded: saved.inputs.running_generation.clone(), now: current };
        return Ok(refuse(&args.plan, &refusal));
    }
    let mut fresh = host::live_plan(&running, target, &protect, &mut bus)?;
    host::read_processes(&mut fresh, &mut bus)?;
    let canonical_target = canonical_target.display().to_string();
    let observed = Observed {
        running_generation: &current,
        target_toplevel: Some(&canonical_target),
        live: &fresh.live,
        launchd: None,
    };
    if let Err(refusal) = saved::check_fresh(&saved, &observed, &fresh.plan) {
        return Ok(refuse(&args.plan, &refusal));
    }

    say!("applying the saved plan {} ({})", args.plan.display(), saved.digest);
    let reports = Applying { report: Report::of(&saved.plan), output: &args.output };
    reports.before()?;
    switch::apply_plan(&mut bus, &run, &saved.plan, &args.apply, &protect, Some(&reports))
}

/// Says why the saved plan is refused and returns the exit outcome.
pub(crate) fn refuse(path: &Path, refusal: &Rejection) -> Outcome {
    say!("refused to apply {}: {refusal}", path.display());
    say!("nothing was changed");
    Outcome::Blocked
}
