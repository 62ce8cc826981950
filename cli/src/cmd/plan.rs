//! The `plan` subcommand: the plan from the running generation to a new
//! one, with the live state read from systemd.
//!
//! `safe-switch plan --toplevel PATH` takes `/run/current-system`
//! (canonicalized) as the old generation and PATH as the new one, reads
//! the live state over D-Bus, plans, applies protection and prints the
//! result exactly as `diff` would. It changes nothing and needs no root
//! (reading systemd's state over the system bus is unprivileged).
//!
//! The steps it shares with `check`, `switch` and `apply` are in
//! [`crate::host`].

use std::path::Path;

use crate::args;
use crate::exit::Outcome;
use crate::host::{self, LivePlan};

/// Runs `plan`.
pub(crate) fn run(args: args::PlanArgs) -> anyhow::Result<Outcome> {
    if crate::darwin::is_darwin_host() {
        return crate::darwin::plan(args);
    }
    let target = host::resolve_source(&args.source, &args.protect)?;
    let mut bus = host::connect()?;
    host::report_interrupted(&systemd_live::RunDir::system());
    let mut lp = host::plan_to(&target, &args.protect, &mut bus)?;
    host::report_stats(&bus);
    if !host::explain(&lp, &args.protect, &args.output)? {
        if let Some(out) = &args.out {
            host::read_processes(&mut lp, &mut bus)?;
            save_plan(&lp, out)?;
        }
        host::print(&lp, &args.output)?;
    }
    Ok(crate::protect::outcome(&lp.plan))
}

/// Writes the saved plan for `apply`.
fn save_plan(lp: &LivePlan, out: &Path) -> anyhow::Result<()> {
    let inputs = crate::saved::record_inputs(&lp.old, &lp.new, &lp.plan, &lp.live, &lp.protection.request);
    save(lp.plan.clone(), inputs, out)
}

/// Writes a saved plan (systemd's or launchd's) for `apply`, with its MAC
/// when running as root (creating this host's key on first use). Without
/// root there is no MAC, and `apply` will refuse the plan; a warning says
/// so.
pub(crate) fn save(plan: plan_model::Plan, inputs: crate::saved::Inputs, out: &Path) -> anyhow::Result<()> {
    let mut saved = crate::saved::SavedPlan::new(plan, inputs);
    if rustix::process::geteuid().is_root() {
        saved.sign(&crate::saved::PlanKey::load_or_create(&crate::saved::state_dir())?);
    } else {
        say!(
            "warning: {} carries no MAC (only root can sign a plan with this host's key): `apply` will refuse it",
            out.display()
        );
    }
    saved.save(out)
}
