//! The pipeline of the commands that plan against this host (`plan`,
//! `check`, `switch`, `apply`): the new generation is resolved, systemd is
//! reached over the system bus, the running generation is found, the plan
//! is made and protected, and it ends in `--explain` or the reports. Each
//! command runs the same steps from here, in the same order.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use plan_model::{LiveState, Plan};
use systemd_live::{RunDir, ServiceManager, SystemdBus};
use systemd_plan::GenerationUnits;

use crate::args::{OutputArgs, ProtectArgs, SourceArgs};

/// Where the units of a NixOS generation are installed.
pub(crate) const UNIT_DIR: &str = "/etc/systemd/system";

/// Where NixOS keeps the running generation.
pub(crate) const CURRENT_SYSTEM: &str = "/run/current-system";

/// The running generation to plan from: `/run/current-system`, or
/// system-manager's profile (where it registers the generation it
/// activated) when only that is a toplevel: on a system-manager host
/// `/run/current-system` links to `/run/system-manager`, which is not one.
pub(crate) fn running_generation() -> PathBuf {
    pick_running(Path::new(CURRENT_SYSTEM), &crate::sysmgr::SystemManagerEnv::get().profile())
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
    /// The deferrals earlier switches left pending, and what this plan
    /// does to each (filled by [`plan_to`]).
    pub earlier: Vec<plan_model::Earlier>,
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
    live_plan_with(current, toplevel, protect, mgr, &|_| {})
}

/// [`live_plan`], with the live state adjusted by `adjust` before planning
/// (`settle` makes a unit whose file is gone since look as it was when its
/// actions were deferred).
pub(crate) fn live_plan_with(
    current: &Path,
    toplevel: &Path,
    protect: &ProtectArgs,
    mgr: &mut dyn ServiceManager,
    adjust: &dyn Fn(&mut LiveState),
) -> anyhow::Result<LivePlan> {
    live_plan_loading(Loading::start(current, toplevel)?, protect, mgr, adjust)
}

/// The two generations of a plan, read in the background. A planning
/// command starts reading them before it connects to systemd: reading
/// takes longer than connecting and listing the units, and needs neither.
pub(crate) struct Loading {
    thread: std::thread::JoinHandle<anyhow::Result<Loaded>>,
}

/// Both generations, read, with their resolved paths.
struct Loaded {
    old_path: PathBuf,
    new_path: PathBuf,
    old: GenerationUnits,
    new: GenerationUnits,
}

impl Loading {
    /// Starts resolving and reading `current` (usually
    /// `/run/current-system`) and `toplevel`. What goes wrong is told by
    /// [`Loading::finish`], so that a command that cannot reach systemd
    /// says that first, as it would without reading ahead.
    pub(crate) fn start(current: &Path, toplevel: &Path) -> anyhow::Result<Loading> {
        let (current, toplevel) = (current.to_owned(), toplevel.to_owned());
        let thread = std::thread::Builder::new()
            .name("load".to_owned())
            .spawn(move || {
                let old_path = std::fs::canonicalize(&current)
                    .with_context(|| format!("{}: cannot resolve the running generation", current.display()))?;
                let new_path = std::fs::canonicalize(&toplevel)
                    .with_context(|| format!("{}: cannot resolve the toplevel", toplevel.display()))?;
                let (old, new) = timed("load", || systemd_plan::load_pair(&old_path, &new_path));
                Ok(Loaded { old: old?, new: new?, old_path, new_path })
            })
            .context("cannot start reading the generations")?;
        Ok(Loading { thread })
    }

    /// Waits for both generations.
    fn finish(self) -> anyhow::Result<Loaded> {
        self.thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

/// [`live_plan_with`], with the generations already being read.
pub(crate) fn live_plan_loading(
    loading: Loading,
    protect: &ProtectArgs,
    mgr: &mut dyn ServiceManager,
    adjust: &dyn Fn(&mut LiveState),
) -> anyhow::Result<LivePlan> {
    // While the generations are read: the units systemd has, and the
    // relations of the running protected units among them (of those the
    // generations turn out to have, only what points at them from
    // elsewhere is kept, as if read afterwards).
    let request = crate::protect::request(protect);
    let listed = timed("list-units", || mgr.list_units());
    let listed = match (&request, listed) {
        (Ok(request), Ok(live)) => read_protected(request, mgr, live),
        (_, listed) => listed.map(|live| (live, Vec::new())),
    };
    let Loaded { old_path, new_path, old, new } = loading.finish()?;
    let request = request?;
    let (listed, read_early) = listed.context("cannot read the live state from systemd")?;
    let mut live = timed("live", || complete_live(&old, &new, &request, mgr, listed, &read_early))
        .context("cannot read the live state from systemd")?;
    timed("kernel", || crate::kernel::read_into(&mut live));
    adjust(&mut live);
    let mut plan = timed("plan", || systemd_plan::plan(&old, &new, &live));
    crate::cmd::closure_diff::attach_to_plan(&mut plan, &old_path, &new_path);
    let protection = timed("protect", || crate::protect::protect_plan(&mut plan, &old, &new, &live, protect))?;
    let diffs = timed("diffs", || systemd_plan::unit_diffs(&plan, &old, &new));
    Ok(LivePlan { plan, live, old: old_path, new: new_path, protection, diffs, earlier: Vec::new() })
}

/// Reads every relation property of the running units `request` protects
/// that the live state names ([`systemd_plan::protect::running_protected`]);
/// returns the live state with them, and the units read.
fn read_protected(
    request: &systemd_plan::protect::Request,
    mgr: &mut dyn ServiceManager,
    mut live: LiveState,
) -> Result<(LiveState, Vec<String>), systemd_live::Error> {
    let units = systemd_plan::protect::running_protected(&live, request);
    if units.is_empty() {
        return Ok((live, units));
    }
    let read = timed("protected", || mgr.dependencies(&units, &plan_model::DEPENDENCY_PROPERTIES))?;
    let mut done = Vec::new();
    for (unit, deps) in read {
        if let Some(u) = live.units.get_mut(&unit) {
            u.deps = deps;
            u.deps_unread = false;
            done.push(unit);
        }
    }
    Ok((live, done))
}

/// Reads what a plan needs of the live host, and nothing more: the loaded
/// units with their states (one `ListUnits`), the fragment paths of the
/// units NixOS's switch examines (active ones the old generation has),
/// and the dependencies of the units protection asks for
/// ([`systemd_plan::protect::DependencyReading`]), round after
/// round until it asks for nothing new. Nothing asked makes systemd work
/// out a unit's file state.
pub(crate) fn read_live(
    old: &GenerationUnits,
    new: &GenerationUnits,
    request: &systemd_plan::protect::Request,
    mgr: &mut dyn ServiceManager,
) -> Result<LiveState, systemd_live::Error> {
    let listed = mgr.list_units()?;
    complete_live(old, new, request, mgr, listed, &[])
}

/// [`read_live`] after `ListUnits`: what else the plan needs of the units
/// `listed`. Of the units whose relations were `read_early`, before the
/// generations were known, those a generation has keep only what points
/// at them from elsewhere ([`systemd_plan::protect::INTO_PROTECTED`]),
/// as if read now: their files say the rest.
fn complete_live(
    old: &GenerationUnits,
    new: &GenerationUnits,
    request: &systemd_plan::protect::Request,
    mgr: &mut dyn ServiceManager,
    mut live: LiveState,
    read_early: &[String],
) -> Result<LiveState, systemd_live::Error> {
    for name in read_early {
        if (old.has_unit(name) || new.has_unit(name))
            && let Some(u) = live.units.get_mut(name)
        {
            u.deps.retain(|property, _| systemd_plan::protect::INTO_PROTECTED.contains(&property.as_str()));
        }
    }
    let examined: Vec<String> = live
        .units
        .iter()
        .filter(|(name, u)| {
            u.is_active_before() && u.load_state == "loaded" && old.unit(name).is_some_and(|f| !f.is_masked())
        })
        .map(|(name, _)| name.clone())
        .collect();
    for (unit, path) in timed("fragments", || mgr.fragment_paths(&examined))? {
        if let Some(u) = live.units.get_mut(&unit) {
            u.fragment_path = path;
        }
    }
    let mut reading = systemd_plan::protect::DependencyReading::new(old, new, &live, request);
    loop {
        // Units that want the same properties are read in one batch.
        let mut batches: BTreeMap<&[&str], Vec<String>> = BTreeMap::new();
        for (unit, properties) in reading.wanted(&live) {
            batches.entry(properties).or_default().push(unit);
        }
        if batches.is_empty() {
            return Ok(live);
        }
        for (properties, units) in batches {
            for (unit, deps) in timed("dependencies", || mgr.dependencies(&units, properties))? {
                reading.learn(&unit, &deps);
                if let Some(u) = live.units.get_mut(&unit) {
                    u.deps = deps;
                    u.deps_unread = false;
                }
            }
        }
    }
}

/// With `SAFE_SWITCH_STATS=1` in the environment, says on standard error
/// how many calls the command made to the service manager (for the
/// benchmarks; it changes nothing else).
pub(crate) fn report_stats(mgr: &dyn ServiceManager) {
    if stats_wanted() {
        let phases = PHASES.lock().map(|p| p.clone()).unwrap_or_default();
        let phases: Vec<String> =
            phases.iter().map(|(name, took)| format!("{name} {:.1} ms", took.as_secs_f64() * 1000.0)).collect();
        say!("stats: {} calls to the service manager; {}{}", mgr.calls_made(), phases.join(", "), memory());
    }
}

/// This process's resident memory so far, by kind, as `/proc/self/status`
/// tells it (Linux only; empty elsewhere).
fn memory() -> String {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return String::new() };
    let kib = |key: &str| {
        status.lines().find_map(|l| l.strip_prefix(key)?.trim().strip_suffix(" kB")?.trim().parse::<u64>().ok())
    };
    match (kib("VmHWM:"), kib("RssAnon:"), kib("RssFile:")) {
        (Some(peak), Some(anon), Some(file)) => format!(
            "; peak resident {:.1} MiB (now {:.1} MiB anonymous, {:.1} MiB mapped files)",
            peak as f64 / 1024.0,
            anon as f64 / 1024.0,
            file as f64 / 1024.0
        ),
        _ => String::new(),
    }
}

/// Whether `SAFE_SWITCH_STATS=1` asks for the figures.
fn stats_wanted() -> bool {
    std::env::var_os("SAFE_SWITCH_STATS").is_some_and(|v| v == "1")
}

/// How long each phase of planning took, for [`report_stats`].
static PHASES: std::sync::Mutex<Vec<(&str, std::time::Duration)>> = std::sync::Mutex::new(Vec::new());

/// Runs one phase of planning, timing it when the figures are wanted.
fn timed<T>(phase: &'static str, f: impl FnOnce() -> T) -> T {
    let start = std::time::Instant::now();
    let out = f();
    if stats_wanted()
        && let Ok(mut phases) = PHASES.lock()
    {
        phases.push((phase, start.elapsed()));
    }
    out
}

/// Reads the main process and invocation of every unit a saved plan
/// records (each unit the plan names or protects), into the plan's live
/// state: what `plan --out` records and `apply` compares, to tell that no
/// one restarted them since.
pub(crate) fn read_processes(lp: &mut LivePlan, mgr: &mut dyn ServiceManager) -> anyhow::Result<()> {
    let mut units: BTreeSet<String> = lp.plan.units.iter().map(|u| u.unit.clone()).collect();
    units.extend(lp.plan.protection.protected.iter().flat_map(|p| p.units.iter().cloned()));
    let units: Vec<String> = units.into_iter().filter(|u| lp.live.units.contains_key(u)).collect();
    let status = mgr.unit_status(&units).context("cannot read the units' processes from systemd")?;
    for (unit, st) in status {
        if let Some(u) = lp.live.units.get_mut(&unit) {
            u.main_pid = st.main_pid;
            u.invocation_id = st.invocation_id;
            u.exec_main_status = st.exec_main_status;
        }
    }
    Ok(())
}

/// Plans from the running generation to the resolved target against
/// `mgr`, recording where the target came from, with what the plan does
/// to the deferrals earlier switches left pending.
pub(crate) fn plan_to(
    target: &crate::source::Resolved,
    protect: &ProtectArgs,
    mgr: &mut dyn ServiceManager,
) -> anyhow::Result<LivePlan> {
    plan_loading(target, start_loading(target)?, protect, mgr)
}

/// Starts reading the running generation and the resolved target, for
/// [`plan_loading`].
pub(crate) fn start_loading(target: &crate::source::Resolved) -> anyhow::Result<Loading> {
    Loading::start(&running_generation(), &target.toplevel)
}

/// [`plan_to`], with the generations already being read
/// ([`start_loading`]).
pub(crate) fn plan_loading(
    target: &crate::source::Resolved,
    loading: Loading,
    protect: &ProtectArgs,
    mgr: &mut dyn ServiceManager,
) -> anyhow::Result<LivePlan> {
    let mut lp = live_plan_loading(loading, protect, mgr, &|_| {})?;
    lp.plan.new.provenance = Some(target.provenance.clone());
    lp.earlier = crate::pending::preview(&RunDir::system(), &lp.plan, mgr);
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
    crate::report::write_outputs(&lp.report(), output)
}

impl LivePlan {
    /// The report of the plan: its diffs and the earlier deferrals.
    pub(crate) fn report(&self) -> plan_report::Report<'_> {
        plan_report::Report {
            plan: &self.plan,
            diffs: &self.diffs,
            commands: &[],
            pending: &self.earlier,
            applied: None,
        }
    }
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
