//! `switch`, `apply` and `settle` on a host managed by system-manager:
//! the systemd pipeline (plan from the running generation, protect, lock,
//! isolate, carry out, check, roll back, record what was deferred), with
//! the executor's host the generation's own engine
//! ([`system_manager_live::SystemManagerHost`]) and system-manager's state
//! file kept true.
//!
//! The running generation is system-manager's profile
//! (`/nix/var/nix/profiles/system-manager-profiles/system-manager`), since
//! `/run/current-system` is not a toplevel there ([`crate::host`]). A
//! system-manager plan lists its steps in system-manager's order
//! ([`plan_model::Phase::SYSTEM_MANAGER_ORDER`]): the generation's
//! `bin/preActivationAssertions`, `bin/register-profile` and
//! `bin/prepopulate`, daemon-reload, `sysinit-reactivation.target`,
//! userborn and tmpfiles, the unit actions without those protection
//! deferred, the masks, and the state file.
//!
//! Before a plan is carried out (not when an interrupted one is resumed),
//! the state file is checked (version 1; anything else stops the switch
//! before any change, naming the file) and copied to the run directory:
//! the units whose actions are deferred keep their entries from that copy.
//! After a switch or settle that finished, and once its deferrals are
//! recorded, the entries of the units no longer pending are the running
//! generation's again.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use plan_model::{Phase, Plan};
use system_manager_live::state::{self, Services, State};
use system_manager_live::{PROFILE, STATE_FILE, SystemManagerHost};
use systemd_live::{ApplyOptions, ApplyReport, Host, Interrupted, ProcessHost, RunDir, ServiceManager, StderrProgress};

/// The engine wrappers a system-manager generation has in `bin/`, which a
/// switch runs.
const WRAPPERS: [&str; 3] = ["preActivationAssertions", "register-profile", "prepopulate"];

/// Where a system-manager host keeps its state: below `/`, or below the
/// directory a test names ([`crate::test_hooks::SYSTEM_MANAGER_ROOT`]).
#[derive(Clone, Debug)]
pub(crate) struct SystemManagerEnv {
    root: PathBuf,
}

impl SystemManagerEnv {
    /// This host's.
    pub(crate) fn get() -> SystemManagerEnv {
        let root = crate::test_hooks::path(crate::test_hooks::SYSTEM_MANAGER_ROOT);
        SystemManagerEnv { root: root.unwrap_or_else(|| PathBuf::from("/")) }
    }

    /// system-manager's state file.
    pub(crate) fn state_file(&self) -> PathBuf {
        system_manager_live::below(&self.root, STATE_FILE)
    }

    /// system-manager's profile.
    pub(crate) fn profile(&self) -> PathBuf {
        system_manager_live::below(&self.root, PROFILE)
    }
}

/// Whether `toplevel` is a system-manager generation.
pub(crate) fn is_generation(toplevel: &Path) -> bool {
    matches!(systemd_plan::unit_directory(toplevel), Ok((_, systemd_plan::Layout::SystemManager)))
}

/// Whether `plan` is carried out in system-manager's order, with its
/// steps.
pub(crate) fn is_plan(plan: &Plan) -> bool {
    plan.phase_order() == Phase::SYSTEM_MANAGER_ORDER
}

/// Refuses, before any change, a system-manager generation that cannot be
/// switched to: one without the engine's wrappers, or a host whose state
/// file safe-switch cannot read.
pub(crate) fn preflight(toplevel: &Path) -> anyhow::Result<()> {
    for name in WRAPPERS {
        let missing = format!("the system-manager generation has no {name}");
        crate::cmd::switch::require_executable(&toplevel.join("bin").join(name), &missing)?;
    }
    read_state(&SystemManagerEnv::get().state_file())?;
    Ok(())
}

/// The state file, or `None` when system-manager never activated this
/// host; one safe-switch cannot read is an error saying that nothing was
/// changed.
fn read_state(path: &Path) -> anyhow::Result<Option<State>> {
    State::read(path).context("refusing to switch: safe-switch keeps system-manager's state file true and cannot read this one; nothing was changed")
}

/// A generation's services map, as system-manager writes it into its
/// state file.
fn services_of(toplevel: &Path) -> anyhow::Result<(Services, Option<PathBuf>)> {
    let g =
        systemd_plan::load(toplevel).with_context(|| format!("{}: cannot read the generation", toplevel.display()))?;
    let Some(managed) = g.managed_units() else {
        bail!("{}: not a system-manager generation", toplevel.display());
    };
    let services = managed.iter().map(|(u, m)| (u.clone(), state::entry(m.store_path.as_deref(), m.masked))).collect();
    // The static /etc tree: the unit directory is its `systemd/system`.
    let static_etc = g.unit_dir().parent().and_then(Path::parent).map(Path::to_path_buf);
    Ok((services, static_etc))
}

/// The executor's host for `plan`: system-manager's for a system-manager
/// plan, else the plain one.
fn host_for(run: &RunDir, plan: &Plan) -> anyhow::Result<Box<dyn Host>> {
    if !is_plan(plan) {
        return Ok(Box::new(ProcessHost));
    }
    let (generation, static_etc) = services_of(Path::new(&plan.new.path))?;
    let pending = crate::pending::read(run)?;
    Ok(Box::new(SystemManagerHost::new(
        SystemManagerEnv::get().state_file(),
        run.system_manager_state_before_path(),
        generation,
        pending,
        static_etc,
    )))
}

/// Carries out `plan` (the caller holds the lock): for a system-manager
/// plan, the state file is checked and copied first, and the generation's
/// engine is the host.
pub(crate) fn apply(
    plan: &Plan,
    mgr: &mut dyn ServiceManager,
    run: &RunDir,
    options: &ApplyOptions,
) -> anyhow::Result<ApplyReport> {
    if is_plan(plan) {
        save_before(run, plan)?;
    }
    let mut host = host_for(run, plan)?;
    Ok(systemd_live::apply(plan, mgr, host.as_mut(), run, options, &mut StderrProgress)?)
}

/// Resumes an interrupted apply (the caller holds the lock), with the host
/// its plan needs; the copy of the state file it began with is kept.
pub(crate) fn resume(
    interrupted: Interrupted,
    mgr: &mut dyn ServiceManager,
    run: &RunDir,
    options: &ApplyOptions,
) -> anyhow::Result<ApplyReport> {
    let mut host = host_for(run, &interrupted.progress.plan)?;
    Ok(systemd_live::resume(interrupted, mgr, host.as_mut(), run, options, &mut StderrProgress)?)
}

/// Checks the state file and copies it into the run directory as it is
/// before the switch; a host system-manager never activated gets the
/// state of the running generation (its services map), which is what its
/// units run.
fn save_before(run: &RunDir, plan: &Plan) -> anyhow::Result<()> {
    let path = SystemManagerEnv::get().state_file();
    let before = match read_state(&path)? {
        Some(state) => state,
        None => State::with_services(services_of(Path::new(&plan.old.path))?.0),
    };
    run.create()?;
    let copy = run.system_manager_state_before_path();
    before.write(&copy).with_context(|| format!("cannot keep a copy of {}; nothing was changed", path.display()))
}

/// After a switch or settle on a system-manager host that finished and
/// whose deferrals were recorded: in the state file, every unit but those
/// still pending (and those `plan` deferred) gets the entry of the
/// generation switched to (`plan.new`, the running one), and those keep
/// theirs. Nothing happens elsewhere; a failure is a warning: the switch
/// itself is done.
pub(crate) fn sync_state(run: &RunDir, plan: &Plan) {
    let generation = Path::new(&plan.new.path);
    if !is_generation(generation) {
        return;
    }
    if let Err(e) = try_sync_state(run, generation, plan) {
        say!("warning: system-manager's state file was not brought up to date: {e:#}");
    }
}

fn try_sync_state(run: &RunDir, generation: &Path, plan: &Plan) -> anyhow::Result<()> {
    let path = SystemManagerEnv::get().state_file();
    let Some(mut now) = State::read(&path)? else {
        return Ok(());
    };
    let (services, _) = services_of(generation)?;
    let mut keep: BTreeSet<String> = crate::pending::read(run)?
        .deferrals
        .into_iter()
        .filter(|d| d.manager == plan_model::Manager::Systemd)
        .map(|d| d.unit)
        .collect();
    keep.extend(plan.deferred().map(|u| u.unit.clone()));
    let synced = state::services_after(&services, now.services(), &keep);
    if &synced != now.services() {
        now.set_services(synced);
        now.write(&path)?;
    }
    Ok(())
}
