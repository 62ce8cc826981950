//! The pipeline of the commands that plan against this host (`plan`,
//! `check`, `switch`, `apply`): the new generation is resolved, systemd is
//! reached over the system bus, the running generation is found, the plan
//! is made and protected, and it ends in `--explain` or the reports. Each
//! command runs the same steps from here, in the same order.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use plan_model::{LiveState, Plan};
use systemd_live::{RunDir, ServiceManager, SystemdBus};

use crate::args::{OutputArgs, ProtectArgs, SourceArgs};

/// Where NixOS keeps the running generation.
pub(crate) const CURRENT_SYSTEM: &str = "/run/current-system";

/// Where system-manager registers the generation it activated. On a
/// system-manager host `/run/current-system` links to `/run/system-manager`,
/// which is not a toplevel.
pub(crate) const SYSTEM_MANAGER_PROFILE: &str = "/nix/var/nix/profiles/system-manager-profiles/system-manager";

/// The running generation to plan from: `/run/current-system`, or
/// system-manager's profile when only that is a toplevel.
pub(crate) fn running_generation() -> PathBuf {
    pick_running(Path::new(CURRENT_SYSTEM), Path::new(SYSTEM_MANAGER_PROFILE))
}

fn pick_running(current: &Path, profile: &Path) -> PathBuf {
    let toplevel = |p: &Path| systemd_plan::unit_directory(p).is_ok();
    if !toplevel(current) && toplevel(profile) { profile.to_owned() } else { current.to_owned() }
}

/// A plan made against the live host, with what it was made from.
#[derive(Debug)]
pub(crate) struct LivePlan {
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

/// The toplevel to switch to (built first for `--flake`), canonicalized,
/// with where it came from, naming it in errors. Store the provenance in
/// the plan's `new.provenance`.
///
/// For `--flake`, the policy files (the system's first, then `--policy`)
/// supply the default base and host, read with the same ownership checks
/// protection applies.
pub(crate) fn resolve_source(source: &SourceArgs, protect: &ProtectArgs) -> anyhow::Result<crate::source::Resolved> {
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

/// Connects to systemd over the system bus, with an error that says that
/// nothing was changed.
pub(crate) fn connect() -> anyhow::Result<SystemdBus> {
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
pub(crate) fn report_interrupted(run: &RunDir) {
    if let Ok(Some(i)) = run.interrupted() {
        say_text!("warning: {}", i.describe());
        say!("  `safe-switch switch` resumes it before switching.");
    }
}

/// Plans the switch from `current` (usually `/run/current-system`) to
/// `toplevel` against the live state of `mgr`, and applies protection.
pub(crate) fn live_plan(
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

/// Plans from the running generation to the resolved target against
/// `mgr`, recording where the target came from.
pub(crate) fn plan_to(
    target: &crate::source::Resolved,
    protect: &ProtectArgs,
    mgr: &mut dyn ServiceManager,
) -> anyhow::Result<LivePlan> {
    let mut lp = live_plan(&running_generation(), &target.toplevel, protect, mgr)?;
    lp.plan.new.provenance = Some(target.provenance.clone());
    Ok(lp)
}

/// Prints the explanation `--explain UNITS` asks for, if it does: a
/// planning command then ends there. Returns whether it explained.
pub(crate) fn explain(lp: &LivePlan, protect: &ProtectArgs, output: &OutputArgs) -> anyhow::Result<bool> {
    let Some(units) = &protect.explain else { return Ok(false) };
    let text = lp.protection.explain(&lp.plan, units, output.stdout_format())?;
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(true)
}

/// Prints the plan in the requested format and writes the `--report`
/// files.
pub(crate) fn print(lp: &LivePlan, output: &OutputArgs) -> anyhow::Result<()> {
    crate::report::write_plan(&lp.plan, &lp.diffs, output)
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
