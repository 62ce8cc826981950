//! The `plan` subcommand: the plan from the running generation to a new
//! one, with the live state read from systemd.
//!
//! `safe-switch plan --toplevel PATH` takes `/run/current-system`
//! (canonicalized) as the old generation and PATH as the new one, reads
//! the live state over D-Bus, plans, applies protection and prints the
//! result exactly as `diff` would. It changes nothing and needs no root
//! (reading systemd's state over the system bus is unprivileged).
//!
//! [`live_plan`] is shared with `switch`, which must carry out the very
//! plan this command prints.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use plan_model::{LiveState, Plan};
use systemd_live::{RunDir, ServiceManager, SystemdBus};

use crate::args::{self, ProtectArgs, SourceArgs};
use crate::exit::Outcome;

/// Where NixOS keeps the running generation.
pub const CURRENT_SYSTEM: &str = "/run/current-system";

/// Where system-manager registers the generation it activated. On a
/// system-manager host `/run/current-system` links to `/run/system-manager`,
/// which is not a toplevel.
pub const SYSTEM_MANAGER_PROFILE: &str = "/nix/var/nix/profiles/system-manager-profiles/system-manager";

/// The running generation to plan from: `/run/current-system`, or
/// system-manager's profile when only that is a toplevel.
pub fn running_generation() -> PathBuf {
    pick_running(Path::new(CURRENT_SYSTEM), Path::new(SYSTEM_MANAGER_PROFILE))
}

fn pick_running(current: &Path, profile: &Path) -> PathBuf {
    let toplevel = |p: &Path| systemd_plan::unit_directory(p).is_ok();
    if !toplevel(current) && toplevel(profile) { profile.to_owned() } else { current.to_owned() }
}

/// A plan made against the live host, with what it was made from.
#[derive(Debug)]
pub struct LivePlan {
    /// The plan, protection applied.
    pub plan: Plan,
    /// The live state it was made from.
    pub live: LiveState,
    /// The running generation (canonical).
    pub old: PathBuf,
    /// The generation switched to (canonical).
    pub new: PathBuf,
    /// What protection found (for `--explain`).
    pub protection: crate::protect::ProtectReport,
    /// The diffs of the unit files the plan was made from.
    pub diffs: Vec<plan_model::FileDiff>,
}

/// Runs `plan`.
pub fn run(args: args::PlanArgs) -> anyhow::Result<Outcome> {
    let resolved = resolve_source(&args.source, &args.protect)?;
    let toplevel = resolved.toplevel.clone();
    let mut bus = connect()?;
    report_interrupted(&RunDir::system());
    let mut lp = live_plan(&running_generation(), &toplevel, &args.protect, &mut bus)?;
    lp.plan.new.provenance = Some(resolved.provenance);
    if let Some(unit) = &args.protect.explain {
        let text = lp.protection.explain(&lp.plan, unit, args.output.stdout_format())?;
        std::io::stdout().lock().write_all(text.as_bytes())?;
        return Ok(crate::protect::outcome(&lp.plan));
    }
    if let Some(out) = &args.out {
        save_plan(&lp, out)?;
    }
    print_plan(&lp, &args.output)?;
    Ok(crate::protect::outcome(&lp.plan))
}

/// Writes the saved plan for `apply`, with its MAC when running as root
/// (creating this host's key on first use). Without root there is no MAC,
/// and `apply` will refuse the plan; a warning says so.
fn save_plan(lp: &LivePlan, out: &Path) -> anyhow::Result<()> {
    let inputs = crate::saved::record_inputs(&lp.old, &lp.new, &lp.plan, &lp.live, &lp.protection.request);
    let mut saved = crate::saved::SavedPlan::new(lp.plan.clone(), inputs);
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

/// Prints a plan in the requested format and writes the `--report` files,
/// as `diff` does.
pub fn print_plan(lp: &LivePlan, output: &args::OutputArgs) -> anyhow::Result<()> {
    crate::report::write_plan(&lp.plan, &lp.diffs, output)
}

/// The toplevel to switch to (built first for `--flake`), canonicalized,
/// with where it came from, naming it in errors. Store the provenance in
/// the plan's `new.provenance`.
///
/// For `--flake`, the policy files (the system's first, then `--policy`)
/// supply the default base and host, read with the same ownership checks
/// protection applies.
pub fn resolve_source(source: &SourceArgs, protect: &ProtectArgs) -> anyhow::Result<crate::source::Resolved> {
    if source.toplevel.is_none() && source.flake.is_none() {
        return Err(crate::exit::usage("give the new generation with --toplevel PATH or --flake REF"));
    }
    let mut resolved = match (&source.resolved_file, &source.flake) {
        (Some(file), _) => crate::source::read_resolved(file)?,
        (None, Some(_)) => {
            let loaded = crate::protect::load_policies(protect)?;
            let policies: Vec<&plan_model::policy::Policy> = loaded.iter().map(|(p, _)| p).collect();
            let policy = (!policies.is_empty()).then(|| plan_model::policy::Policy::merge(&policies));
            crate::source::resolve_for_policy(source, policy.as_ref())?
        }
        (None, None) => crate::source::resolve_for_policy(source, None)?,
    };
    resolved.toplevel = std::fs::canonicalize(&resolved.toplevel)
        .with_context(|| format!("{}: cannot resolve the toplevel", resolved.toplevel.display()))?;
    Ok(resolved)
}

/// The toplevel to switch to, as [`resolve_source`] finds it.
pub fn resolve_toplevel(source: &SourceArgs, protect: &ProtectArgs) -> anyhow::Result<PathBuf> {
    Ok(resolve_source(source, protect)?.toplevel)
}

/// Connects to systemd over the system bus, with an error that says that
/// nothing was changed.
pub fn connect() -> anyhow::Result<SystemdBus> {
    SystemdBus::connect_with_timeout(dbus_timeout()).context("cannot reach systemd over D-Bus; nothing was changed")
}

/// The deadline of every D-Bus call: [`systemd_live::DEFAULT_CALL_TIMEOUT`]
/// (25 s). Debug builds take `SAFE_SWITCH_TEST_DBUS_TIMEOUT_MS` from the
/// environment, so that tests of a bus that never answers end quickly.
fn dbus_timeout() -> std::time::Duration {
    #[cfg(debug_assertions)]
    if let Some(ms) = std::env::var("SAFE_SWITCH_TEST_DBUS_TIMEOUT_MS").ok().and_then(|v| v.parse().ok()) {
        return std::time::Duration::from_millis(ms);
    }
    systemd_live::DEFAULT_CALL_TIMEOUT
}

/// Says on standard error that an earlier apply was interrupted, when one
/// was. Unreadable run directories are not an error for planning.
pub fn report_interrupted(run: &RunDir) {
    if let Ok(Some(i)) = run.interrupted() {
        say_text!("warning: {}", i.describe());
        say!("  `safe-switch switch` resumes it before switching.");
    }
}

/// Plans the switch from `current` (usually `/run/current-system`) to
/// `toplevel` against the live state of `mgr`, and applies protection.
pub fn live_plan(
    current: &Path,
    toplevel: &Path,
    protect: &ProtectArgs,
    mgr: &mut dyn ServiceManager,
) -> anyhow::Result<LivePlan> {
    let old_path = std::fs::canonicalize(current)
        .with_context(|| format!("{}: cannot resolve the running generation", current.display()))?;
    let new_path = std::fs::canonicalize(toplevel)
        .with_context(|| format!("{}: cannot resolve the toplevel", toplevel.display()))?;
    let old = systemd_plan::load(&old_path)?;
    let new = systemd_plan::load(&new_path)?;
    let live = mgr.snapshot().context("cannot read the live state from systemd")?;
    let mut plan = systemd_plan::plan(&old, &new, &live);
    crate::cmd::closure_diff::attach_to_plan(&mut plan, &old_path, &new_path);
    let protection = crate::protect::protect_plan(&mut plan, &old, &new, &live, protect)?;
    let diffs = systemd_plan::unit_diffs(&plan, &old, &new);
    Ok(LivePlan { plan, live, old: old_path, new: new_path, protection, diffs })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_system_manager_host_plans_from_its_profile() {
        let dir = tempfile::tempdir().unwrap();
        // The profile and its static /etc tree in a store, as on a host.
        let store = dir.path().join("store");
        let (current, profile) = (dir.path().join("current-system"), store.join("aaaa-system-manager"));
        std::fs::create_dir_all(current.join("sw")).unwrap();
        let static_etc = store.join("bbbb-etc-static-env");
        std::fs::create_dir_all(static_etc.join("systemd/system")).unwrap();
        std::fs::create_dir_all(profile.join("services")).unwrap();
        std::fs::create_dir_all(profile.join("etcFiles")).unwrap();
        std::fs::write(profile.join("services/services.json"), "{}").unwrap();
        let etc_files = format!(r#"{{"entries":{{}},"staticEnv":"{}"}}"#, static_etc.display());
        std::fs::write(profile.join("etcFiles/etcFiles.json"), etc_files).unwrap();
        assert_eq!(pick_running(&current, &profile), profile);
        // A NixOS host, or no system-manager profile: /run/current-system.
        std::fs::create_dir_all(current.join("etc/systemd/system")).unwrap();
        assert_eq!(pick_running(&current, &profile), current);
        assert_eq!(pick_running(&current, &dir.path().join("none")), current);
    }
}
