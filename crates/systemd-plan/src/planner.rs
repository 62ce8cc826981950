//! The planner: NixOS's switch semantics as a pure function.
//!
//! [`plan`] follows the order of `switch-to-configuration`:
//!
//! 1. Work left over from an interrupted switch is resumed.
//! 2. Every unit that is active (per the live state) and was loaded from
//!    `/etc/systemd/system` is examined: removed or masked units are
//!    stopped (unless `X-StopOnRemoval=false`), active targets are started
//!    again, and other units are compared ([`crate::compare`]) and, when
//!    changed, classified by [`Planner::modified`].
//! 3. fstab entries are compared: changed mounts are restarted or
//!    reloaded, vanished mounts stopped, vanished swaps turned off.
//! 4. The global steps: activation, re-exec when the systemd binary or
//!    `system.conf` changed, daemon-reload, and the restart of
//!    `sysinit-reactivation.target`.
//! 5. The activation script's restart and reload requests are applied.
//! 6. Reloads of units that are not running become starts.
//!
//! 7. What the starts and restarts pull in (`Wants=` and friends, the
//!    `.wants` links) and is not running gets a start of its own: the
//!    units a generation adds come up through the targets that want them,
//!    as in NixOS, and the plan says so (see [`Planner::pulled_in`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;

use plan_model::{
    Action, Diagnostic, FORMAT_VERSION, Generation, KeyChange, LiveState, LiveUnit, Plan, Reason, Rule, Severity, Step,
    UnitPlan, unit_name,
};

use crate::compare::{Needs, compare_units};
use crate::fstab::{Fstab, automount_unit, mount_unit};
use crate::generation::GenerationUnits;
use crate::unit_file::{Fragment, UnitFile};

/// Where NixOS installs the units it manages.
const UNIT_DIR: &str = "/etc/systemd/system";

/// The target NixOS restarts after daemon-reload so that sysinit units come
/// back in order.
const SYSINIT_REACTIVATION: &str = "sysinit-reactivation.target";

/// Targets that are never started again by a switch.
const SLEEP_TARGETS: &[&str] = &["suspend.target", "hibernate.target", "hybrid-sleep.target"];

/// Units that cannot be restarted directly; their changes apply on
/// daemon-reload.
const NOT_RESTARTABLE: &[&str] = &["sysinit.target", "basic.target", "multi-user.target", "graphical.target"];

/// The file systems that are never unmounted by a switch.
const ROOT_MOUNTS: &[&str] = &["/", "/nix"];

/// The live state assumed when none is given: every non-template, unmasked
/// unit of the old generation is active and was loaded from
/// `/etc/systemd/system`, every fstab file system and swap of the old
/// generation is active (as units from the fstab generator), and the old
/// generation's kernel runs (the release of its module tree, when it has
/// exactly one), with no module loaded.
pub fn assumed_live_state(old: &GenerationUnits) -> LiveState {
    let mut live = LiveState::default();
    if let Some(tree) = &old.boot().modules
        && tree.releases.len() == 1
    {
        live.kernel_release = tree.releases.keys().next().cloned();
    }
    for (name, unit) in old.units() {
        if unit_name::is_template(name) || unit.is_masked() {
            continue;
        }
        let fragment_path = match unit_name::split_instance(name) {
            Some((template, _)) if !own_fragment(unit) => format!("{UNIT_DIR}/{template}"),
            _ => format!("{UNIT_DIR}/{name}"),
        };
        live.units.insert(name.to_owned(), assumed(fragment_path));
    }
    if let Some(fstab) = old.fstab() {
        for (mount_point, entry) in &fstab.file_systems {
            let unit = if entry.is_automount() { automount_unit(mount_point) } else { mount_unit(mount_point) };
            live.units.entry(unit.clone()).or_insert_with(|| assumed(format!("/run/systemd/generator/{unit}")));
        }
        for device in fstab.swaps.keys() {
            let unit = format!("{}.swap", unit_name::escape_path(device));
            live.units.entry(unit.clone()).or_insert_with(|| assumed(format!("/run/systemd/generator/{unit}")));
        }
    }
    live
}

fn assumed(fragment_path: String) -> LiveUnit {
    LiveUnit {
        active_state: plan_model::ActiveState::Active,
        sub_state: "running".to_owned(),
        fragment_path,
        ..LiveUnit::default()
    }
}

/// Tells whether `unit` (found under its own name) was loaded from a
/// fragment of its own (and not from its template's fragment).
fn own_fragment(unit: &UnitFile) -> bool {
    unit.fragment() == Some(Fragment::Own)
}

/// Plans the switch from `old` to `new` given the live state.
pub fn plan(old: &GenerationUnits, new: &GenerationUnits, live: &LiveState) -> Plan {
    let mut planner = Planner { old, new, live, entries: BTreeMap::new(), steps: Vec::new(), diagnostics: Vec::new() };
    let generation = |g: &GenerationUnits| Generation {
        path: g.root().display().to_string(),
        init_interface_version: g.init_interface_version().map(str::to_owned),
        ..Generation::default()
    };
    let (old_generation, new_generation) = (generation(old), generation(new));

    if old.init_interface_version() != new.init_interface_version() {
        let message = format!(
            "init-interface-version differs ({} -> {}): the new generation's init is incompatible with the \
             running one, so the switch changes no units and the new generation takes effect only after a reboot",
            old.init_interface_version().unwrap_or("none"),
            new.init_interface_version().unwrap_or("none"),
        );
        planner.diagnose(Severity::Warning, message, Some(&new.root().join("init-interface-version")));
    } else if let (Some(old_managed), Some(new_managed)) = (old.managed_units(), new.managed_units()) {
        planner.run_system_manager(old_managed, new_managed);
    } else {
        if old.managed_units().is_some() != new.managed_units().is_some() {
            let message =
                "one generation is a system-manager toplevel and the other is not; planned with NixOS's rules";
            planner.diagnose(Severity::Warning, message.to_owned(), None);
        }
        planner.run();
    }

    let Planner { entries, steps, diagnostics, .. } = planner;
    let units = entries.into_iter().filter(|(_, e)| e.keep()).map(|(unit, e)| e.into_plan(unit)).collect();
    let (reboot, kernel_modules) = crate::reboot::reboot(old, new, live);
    Plan {
        format_version: FORMAT_VERSION,
        old: old_generation,
        new: new_generation,
        units,
        steps,
        consequences: Vec::new(),
        protection: Default::default(),
        diagnostics,
        packages: None,
        reboot,
        kernel_modules,
    }
}

/// What the switch does to one unit, as a set of flags while planning.
#[derive(Default)]
struct Entry {
    stop: bool,
    skip: bool,
    reload: bool,
    restart: bool,
    start: bool,
    reasons: Vec<Reason>,
    changes: Vec<KeyChange>,
    /// Entries that say something even without actions.
    informative: bool,
}

impl Entry {
    fn keep(&self) -> bool {
        self.stop || self.skip || self.reload || self.restart || self.start || self.informative
    }

    fn into_plan(self, unit: String) -> UnitPlan {
        let mut actions = Vec::new();
        for (on, action) in [
            (self.stop, Action::Stop),
            (self.skip, Action::Skip),
            (self.reload, Action::Reload),
            (self.restart, Action::Restart),
            (self.start, Action::Start),
        ] {
            if on {
                actions.push(action);
            }
        }
        UnitPlan { unit, actions, reasons: self.reasons, changes: self.changes, deferral: None }
    }
}

struct Planner<'a> {
    old: &'a GenerationUnits,
    new: &'a GenerationUnits,
    live: &'a LiveState,
    entries: BTreeMap<String, Entry>,
    steps: Vec<Step>,
    diagnostics: Vec<Diagnostic>,
}

/// An action being recorded.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Set {
    Stop,
    Skip,
    Reload,
    Restart,
    Start,
}

impl<'a> Planner<'a> {
    fn entry(&mut self, unit: &str) -> &mut Entry {
        self.entries.entry(unit.to_owned()).or_default()
    }

    fn reason(&mut self, unit: &str, rule: Rule, detail: Option<String>) {
        let entry = self.entry(unit);
        let reason = Reason { rule, detail };
        if !entry.reasons.contains(&reason) {
            entry.reasons.push(reason);
        }
    }

    /// Records a diagnostic about the generation, naming a file when there
    /// is one.
    fn diagnose(&mut self, severity: Severity, message: String, path: Option<&Path>) {
        let path = path.map(|p| p.display().to_string());
        self.diagnostics.push(Diagnostic { severity, message, unit: None, path, line: None });
    }

    fn note(&mut self, unit: &str, rule: Rule, detail: Option<String>) {
        self.reason(unit, rule, detail);
        self.entry(unit).informative = true;
    }

    fn set(&mut self, unit: &str, set: Set, rule: Rule, detail: Option<String>) {
        self.reason(unit, rule, detail);
        let entry = self.entry(unit);
        match set {
            Set::Stop => entry.stop = true,
            Set::Skip => entry.skip = true,
            Set::Reload => entry.reload = true,
            Set::Restart => entry.restart = true,
            Set::Start => entry.start = true,
        }
    }

    fn is(&self, unit: &str, set: Set) -> bool {
        self.entries.get(unit).is_some_and(|e| match set {
            Set::Stop => e.stop,
            Set::Skip => e.skip,
            Set::Reload => e.reload,
            Set::Restart => e.restart,
            Set::Start => e.start,
        })
    }

    fn active_before(&self, unit: &str) -> bool {
        self.live.get(unit).is_some_and(LiveUnit::is_active_before)
    }

    fn run(&mut self) {
        self.resume();
        self.examine_units();
        self.fstab();
        self.global_steps();
        self.activation_lists();
        self.reload_fallback();
        self.new_units();
        self.user_units();
    }

    /// What system-manager's activation does to the units it manages
    /// (`services/services.json` of each generation): it installs the new
    /// `/etc` files, reloads systemd and restarts
    /// `sysinit-reactivation.target`; stops the units that left the map
    /// (unless their old file says `X-StopOnRemoval=false`) and every
    /// masked unit; asks `ReloadOrRestartUnit` of every unit whose file's
    /// store path changed (unless the new file's `[Service]` says
    /// `X-RestartIfChanged=false`), which reloads a running unit that has
    /// `ExecReload`, restarts one that has not, and starts one that is not
    /// running; and starts `system-manager.target`, which brings up the
    /// units it wants. Any change to a unit file changes its store path,
    /// so unlike NixOS nothing in the file is ignored.
    fn run_system_manager(
        &mut self,
        old_managed: &BTreeMap<String, crate::ManagedUnit>,
        new_managed: &BTreeMap<String, crate::ManagedUnit>,
    ) {
        let live = self.live;
        let running = |name: &str| live.units.get(name).is_some_and(|u| u.is_running());
        let message = "a system-manager generation: planned in the order of system-manager's own activation \
                       (its assertions, profile, files and state first, with the generation's own engine; then \
                       daemon-reload, the stops, reload-or-restart and the start of system-manager.target), \
                       which a switch carries out without the actions protection defers";
        self.diagnose(Severity::Info, message.to_owned(), Some(&self.new.root().join("services/services.json")));
        let script = |name: &str| self.new.root().join("bin").join(name).display().to_string();
        self.steps.extend([
            Step::Assertions { script: script("preActivationAssertions") },
            Step::RegisterProfile { script: script("register-profile") },
            Step::Prepopulate { script: script("prepopulate") },
            Step::DaemonReload,
            Step::RestartSysinitReactivation,
            Step::RestartUserborn,
            Step::Tmpfiles,
        ]);
        let masked: Vec<String> = new_managed.iter().filter(|(_, e)| e.masked).map(|(n, _)| n.clone()).collect();
        if !masked.is_empty() {
            self.steps.push(Step::Mask { units: masked });
        }
        self.steps.push(Step::SystemManagerState);

        for (name, old_entry) in old_managed.iter().filter(|(_, e)| !e.masked) {
            if new_managed.contains_key(name) {
                // Still managed, or masked now (stopped below, as every
                // masked unit is).
                continue;
            }
            let keeps_running = self.old.unit(name).is_some_and(|u| !u.bool_or("Unit", "X-StopOnRemoval", true));
            if keeps_running {
                self.note(name, Rule::UnitRemoved, None);
                self.note(name, Rule::StopOnRemovalFalse, None);
            } else if running(name) {
                self.set(name, Set::Stop, Rule::UnitRemoved, old_entry.store_path.clone());
            }
        }
        for (name, _) in new_managed.iter().filter(|(_, e)| e.masked) {
            if running(name) {
                self.set(name, Set::Stop, Rule::MaskedStop, None);
            }
        }
        for (name, new_entry) in new_managed.iter().filter(|(_, e)| !e.masked) {
            let Some(old_entry) = old_managed.get(name) else { continue };
            if old_entry.store_path == new_entry.store_path {
                continue;
            }
            let new_unit = self.new.unit(name).filter(|u| !u.is_masked());
            if let (Some(o), Some(n)) = (self.old.unit(name).filter(|u| !u.is_masked()), new_unit) {
                let changes = compare_units(o, n).changes;
                if !changes.is_empty() {
                    self.entry(name).changes = changes;
                }
            }
            let detail = Some(format!(
                "{} -> {}",
                old_entry.store_path.as_deref().unwrap_or("masked"),
                new_entry.store_path.as_deref().unwrap_or("none")
            ));
            // system-manager reads this key from [Service], where NixOS
            // writes it to [Unit].
            if new_unit.is_some_and(|u| !u.bool_or("Service", "X-RestartIfChanged", true)) {
                self.set(name, Set::Skip, Rule::RestartIfChangedFalse, detail);
            } else if !running(name) {
                self.set(name, Set::Start, Rule::StorePathChanged, detail);
            } else if new_unit.is_some_and(|u| u.get("Service", "ExecReload").is_some()) {
                self.set(name, Set::Reload, Rule::StorePathChanged, detail);
            } else {
                self.set(name, Set::Restart, Rule::StorePathChanged, detail);
            }
        }
        self.set(
            "system-manager.target",
            Set::Start,
            Rule::TargetStart,
            Some("system-manager starts it on every activation".to_owned()),
        );
        self.new_units();
    }

    /// NixOS's switch also goes through every logged-in user's systemd
    /// manager: it re-executes it, restarts the user units that changed in
    /// `etc/systemd/user` and runs the per-user activation
    /// (`nixos-activation.service`, e.g. home-manager). safe-switch leaves
    /// user managers alone, so the plan says what that leaves undone.
    fn user_units(&mut self) {
        let (old, new) = (self.old.user_units(), self.new.user_units());
        let (mut changed, mut added, mut removed) = (Vec::new(), Vec::new(), Vec::new());
        let names: BTreeSet<&str> = old.keys().chain(new.keys()).collect();
        for name in names {
            match (old.get(name), new.get(name)) {
                (Some(o), Some(n)) => {
                    let differs = match (o.is_masked(), n.is_masked()) {
                        (false, false) => compare_units(o, n).needs != Needs::Nothing,
                        (a, b) => a != b,
                    };
                    if differs {
                        changed.push(name);
                    }
                }
                (None, Some(_)) => added.push(name),
                (Some(_), None) => removed.push(name),
                (None, None) => {}
            }
        }
        let activation = new.get("nixos-activation.service").is_some_and(|u| !u.is_masked());
        let lists: Vec<String> = [("changed", &changed), ("added", &added), ("removed", &removed)]
            .into_iter()
            .filter(|(_, units)| !units.is_empty())
            .map(|(what, units)| format!("{what}: {}", units.join(", ")))
            .collect();
        let (severity, message) = if !lists.is_empty() {
            let mut message = format!(
                "user units differ ({}); safe-switch does not touch user managers, so running ones keep their \
                 units until they next start (NixOS's switch restarts them in every logged-in user's manager)",
                lists.join("; ")
            );
            if activation {
                message.push_str(", and the per-user activation nixos-activation.service is not run");
            }
            (Severity::Warning, message)
        } else if activation {
            (
                Severity::Info,
                "the per-user activation nixos-activation.service is not run: safe-switch does not touch user \
                 managers"
                    .to_owned(),
            )
        } else {
            return;
        };
        self.diagnose(severity, message, Some(&self.new.root().join("etc/systemd/user")));
    }

    /// Work recorded by an interrupted switch is carried out again.
    fn resume(&mut self) {
        let live = self.live;
        for (list, set) in [
            (&live.pending_start, Set::Start),
            (&live.pending_restart, Set::Restart),
            (&live.pending_reload, Set::Reload),
        ] {
            for unit in list {
                self.set(unit, set, Rule::Resumed, None);
            }
        }
    }

    fn examine_units(&mut self) {
        let live = self.live;
        for (name, state) in &live.units {
            if !state.is_active_before() || !state.fragment_path.starts_with(UNIT_DIR) {
                continue;
            }
            let Some(old_unit) = self.old.unit(name).filter(|u| !u.is_masked()) else { continue };
            if !state.active_state.is_up() {
                continue;
            }
            let new_unit = self.new.unit(name);
            let comparison = new_unit.filter(|n| !n.is_masked()).map(|n| compare_units(old_unit, n));
            if let Some(c) = comparison.as_ref().filter(|c| !c.changes.is_empty()) {
                self.entry(name).changes = c.changes.clone();
            }

            let removal = match new_unit {
                None => Some((Rule::UnitRemoved, None)),
                Some(n) if n.is_masked() => Some((Rule::UnitMasked, None)),
                Some(_) if self.instance_drop_ins_removed(name) => Some((Rule::InstanceDropInsRemoved, None)),
                Some(_) => None,
            };
            if let Some((rule, detail)) = removal {
                if old_unit.bool_or("Unit", "X-StopOnRemoval", true) {
                    self.set(name, Set::Stop, rule, detail);
                } else {
                    self.note(name, rule, detail);
                    self.note(name, Rule::StopOnRemovalFalse, None);
                }
                continue;
            }
            let (Some(new_unit), Some(comparison)) = (new_unit, comparison) else { continue };

            if unit_name::unit_type(name) == Some("target") {
                self.target(name, new_unit);
                continue;
            }
            match comparison.needs {
                Needs::Restart => {
                    self.reason(name, Rule::UnitChanged, None);
                    self.modified(name, Some(new_unit), false);
                }
                Needs::Reload => {
                    if !self.is(name, Set::Restart) {
                        for rule in comparison.reload_rules {
                            self.set(name, Set::Reload, rule, None);
                        }
                    }
                }
                Needs::Nothing => {
                    if !comparison.changes.is_empty() {
                        self.note(name, Rule::IgnoredKeysChanged, None);
                    }
                }
            }
        }
    }

    /// An instance whose drop-ins made it a NixOS-managed unit, and whose
    /// new generation has none, counts as removed.
    fn instance_drop_ins_removed(&self, name: &str) -> bool {
        if unit_name::split_instance(name).is_none() {
            return false;
        }
        let has_fragment = |g: &GenerationUnits| g.units.get(name).is_some_and(own_fragment);
        if has_fragment(self.old) || has_fragment(self.new) {
            return false;
        }
        let managed = |g: &GenerationUnits| g.units.get(name).is_some_and(|u| u.own_drop_ins().next().is_some());
        managed(self.old) && !managed(self.new)
    }

    /// An active target is started again so that new units it wants come
    /// up; targets are never compared.
    fn target(&mut self, name: &str, new_unit: &UnitFile) {
        // Restarted by a step of its own after daemon-reload; starting it
        // again afterwards would do nothing.
        if name == SYSINIT_REACTIVATION && self.new.has_unit(name) {
            return;
        }
        let changed = self.entries.get(name).is_some_and(|e| !e.changes.is_empty());
        let refusal = if SLEEP_TARGETS.contains(&name) {
            Some("a sleep target".to_owned())
        } else if new_unit.bool_or("Unit", "RefuseManualStart", false) {
            Some("RefuseManualStart=true".to_owned())
        } else if new_unit.bool_or("Unit", "X-OnlyManualStart", false) {
            Some("X-OnlyManualStart=true".to_owned())
        } else {
            None
        };
        match refusal {
            None => self.set(name, Set::Start, Rule::TargetStart, None),
            Some(why) if changed => self.note(name, Rule::TargetNotStarted, Some(why)),
            Some(why) => self.reason(name, Rule::TargetNotStarted, Some(why)),
        }
        if new_unit.bool_or("Unit", "X-StopOnReconfiguration", false) {
            self.set(name, Set::Stop, Rule::StopOnReconfiguration, None);
        }
    }

    /// Classifies a changed unit (`handle_modified_unit`). In list mode
    /// (the activation script's restart list) a restart replaces every
    /// stop and start.
    fn modified(&mut self, name: &str, new_unit: Option<&UnitFile>, list_mode: bool) {
        let empty = UnitFile::default();
        let unit = new_unit.unwrap_or(&empty);
        let unit_type = unit_name::unit_type(name);
        if NOT_RESTARTABLE.contains(&name) || matches!(unit_type, Some("path" | "slice")) {
            self.note(name, Rule::AppliedByDaemonReload, None);
            return;
        }
        if unit_type == Some("mount") {
            if name == "-.mount" || name == "nix.mount" {
                self.set(name, Set::Reload, Rule::RootMountReload, None);
            } else {
                self.set(name, Set::Restart, Rule::MountChanged, None);
            }
            return;
        }
        if unit_type == Some("socket") {
            self.note(name, Rule::SocketChangeIgnored, None);
            return;
        }
        let (stop, start) = if list_mode { (Set::Restart, Set::Restart) } else { (Set::Stop, Set::Start) };

        if unit.bool_or("Service", "X-ReloadIfChanged", false)
            && !self.is(name, Set::Restart)
            && !self.is(name, if list_mode { Set::Restart } else { Set::Stop })
        {
            self.set(name, Set::Reload, Rule::ReloadIfChanged, None);
            return;
        }
        let skip = if !unit.bool_or("Service", "X-RestartIfChanged", true) {
            Some(Rule::RestartIfChangedFalse)
        } else if unit.bool_or("Unit", "RefuseManualStop", false) {
            Some(Rule::RefuseManualStop)
        } else if unit.bool_or("Unit", "X-OnlyManualStart", false) {
            Some(Rule::OnlyManualStart)
        } else {
            None
        };
        if let Some(rule) = skip {
            self.set(name, Set::Skip, rule, None);
        } else if !unit.bool_or("Service", "X-StopIfChanged", true) {
            self.set(name, Set::Restart, Rule::StopIfChangedFalse, None);
        } else if unit_type != Some("service") {
            self.set(name, Set::Restart, Rule::RestartNonService, None);
        } else {
            let mut sockets: Vec<String> = unit.words("Service", "Sockets").into_iter().map(str::to_owned).collect();
            if sockets.is_empty() {
                sockets.push(format!("{}.socket", self.base_name(name).trim_end_matches('@')));
            }
            let mut activated_by = Vec::new();
            for socket in &sockets {
                if self.active_before(socket) {
                    self.set(socket, stop, Rule::SocketOfChangedService, Some(name.to_owned()));
                    if self.new.has_unit(socket) {
                        self.set(socket, start, Rule::SocketOfChangedService, Some(name.to_owned()));
                        activated_by.push(socket.clone());
                    }
                } else if self.new.has_unit(socket) {
                    activated_by.push(socket.clone());
                }
            }
            let not_socket_activated = unit.bool_or("Service", "X-NotSocketActivated", false);
            if !activated_by.is_empty() && not_socket_activated {
                self.reason(name, Rule::NotSocketActivated, Some(activated_by.join(" ")));
            }
            let socket_activated = !activated_by.is_empty() && !not_socket_activated;
            let (rule, detail) = if socket_activated {
                (Rule::SocketActivated, Some(activated_by.join(" ")))
            } else if list_mode {
                (Rule::ActivationRestartList, None)
            } else {
                (Rule::StopStart, None)
            };
            self.set(name, stop, rule, detail);
            if !socket_activated {
                self.set(name, start, rule, None);
            }
        }
        if let Some(entry) = self.entries.get_mut(name) {
            entry.reload = false;
        }
    }

    /// The unit name `handle_modified_unit` derives socket names from: the
    /// unit's stem, or for an instance without a fragment of its own the
    /// template's stem (`foo@`).
    fn base_name(&self, name: &str) -> String {
        if let Some((template, _)) = unit_name::split_instance(name) {
            let own = |g: &GenerationUnits| g.units.get(name).is_some_and(own_fragment);
            if !own(self.old) && !own(self.new) {
                return unit_name::stem(&template).to_owned();
            }
        }
        unit_name::stem(name).to_owned()
    }

    fn fstab(&mut self) {
        let empty = Fstab::default();
        let Some(old) = self.old.fstab() else { return };
        let new = self.new.fstab().unwrap_or(&empty);
        for (mount_point, before) in &old.file_systems {
            let unit = mount_unit(mount_point);
            match new.file_systems.get(mount_point) {
                Some(after) if after.fs_type != before.fs_type || after.device != before.device => {
                    let detail = Some(format!(
                        "{mount_point}: {} {} -> {} {}",
                        before.device, before.fs_type, after.device, after.fs_type
                    ));
                    if ROOT_MOUNTS.contains(&mount_point.as_str()) {
                        if after.options != before.options {
                            self.set(&unit, Set::Reload, Rule::FstabRootKept, detail);
                        } else {
                            self.set(&unit, Set::Skip, Rule::FstabRootKept, detail);
                        }
                    } else {
                        self.set(&unit, Set::Restart, Rule::FstabChanged, detail);
                    }
                }
                Some(after) if after.options != before.options => {
                    let detail = Some(format!("{mount_point}: {} -> {}", before.options, after.options));
                    self.set(&unit, Set::Reload, Rule::FstabOptionsChanged, detail);
                }
                Some(_) => {}
                None => {
                    let unit = if before.is_automount() { automount_unit(mount_point) } else { unit };
                    let detail = Some(format!("{mount_point} ({} {})", before.device, before.fs_type));
                    self.set(&unit, Set::Stop, Rule::FstabRemoved, detail);
                }
            }
        }
        for device in old.swaps.keys() {
            if !new.swaps.contains_key(device) {
                self.steps.push(Step::Swapoff { device: device.clone() });
            }
        }
    }

    fn global_steps(&mut self) {
        match self.new.activate() {
            Some(script) => self.steps.push(Step::Activate { script: script.display().to_string() }),
            None => {
                let message = "the new generation has no activate script; activation is skipped".to_owned();
                self.diagnose(Severity::Info, message, Some(&self.new.root().join("activate")));
            }
        }
        let mut reasons = Vec::new();
        let running = match &self.live.manager_exe {
            Some(path) => Some(path.clone()),
            None => self.old.systemd_exe().map(|id| id.path.clone()),
        };
        if let (Some(running), Some(next)) = (running, self.new.systemd_exe())
            && running != next.path
        {
            reasons.push(format!("systemd binary changed: {running} -> {}", next.path));
        }
        match (self.old.system_conf(), self.new.system_conf()) {
            (Some(a), Some(b)) if a.same_as(b) => {}
            (None, None) => {}
            (None, Some(_)) => reasons.push("system.conf added".to_owned()),
            (Some(_), None) => reasons.push("system.conf removed".to_owned()),
            (Some(_), Some(_)) => reasons.push("system.conf changed".to_owned()),
        }
        if !reasons.is_empty() {
            self.steps.push(Step::Reexec { reasons });
        }
        self.steps.push(Step::DaemonReload);
        if self.new.has_unit(SYSINIT_REACTIVATION) {
            self.steps.push(Step::RestartSysinitReactivation);
        }
    }

    fn activation_lists(&mut self) {
        let live = self.live;
        for unit in &live.activation_restart_list {
            if !self.active_before(unit) {
                self.set(unit, Set::Start, Rule::ActivationRestartList, None);
                continue;
            }
            self.reason(unit, Rule::ActivationRestartList, None);
            let new_unit = self.new.unit(unit).filter(|u| !u.is_masked());
            self.modified(unit, new_unit, true);
        }
        for unit in &live.activation_reload_list {
            if self.active_before(unit) && !self.is(unit, Set::Restart) && !self.is(unit, Set::Stop) {
                self.set(unit, Set::Reload, Rule::ActivationReloadList, None);
            }
        }
    }

    /// A unit due for a reload that is not running is started instead,
    /// unless it refuses manual starts.
    fn reload_fallback(&mut self) {
        let reloads: Vec<String> =
            self.entries.iter().filter(|(_, e)| e.reload).map(|(name, _)| name.clone()).collect();
        for name in reloads {
            let running = self.live.get(&name).is_some_and(|u| u.active_state.is_up());
            if running {
                continue;
            }
            self.entry(&name).reload = false;
            let refusal = match self.new.unit(&name).filter(|u| !u.is_masked()) {
                None => Some("no unit file in the new generation".to_owned()),
                Some(u) if u.bool_or("Unit", "RefuseManualStart", false) => Some("RefuseManualStart=true".to_owned()),
                Some(u) if u.bool_or("Unit", "X-OnlyManualStart", false) => Some("X-OnlyManualStart=true".to_owned()),
                Some(_) => None,
            };
            match refusal {
                None => self.set(&name, Set::Start, Rule::ReloadFallbackStart, None),
                Some(why) => self.note(&name, Rule::ReloadFallbackStart, Some(format!("not started: {why}"))),
            }
        }
    }

    /// Starts what the plan's starts and restarts pull in.
    ///
    /// A start job (and the start half of a restart) adds start jobs to the
    /// units the started unit `Wants=`, `Requires=`, `BindsTo=` or
    /// `Upholds=` (its unit file, or its `.wants`, `.requires` and
    /// `.upholds` links) that are not running. That is how the start of an
    /// active target brings up the units a generation adds, and also how it
    /// runs again an inactive unit it wants (a oneshot without
    /// `RemainAfterExit=`, a failed unit). NixOS's switch leaves that to
    /// systemd and does not list it; the plan lists each such unit with a
    /// start of its own, naming the unit that pulls it in, so that it still
    /// starts when protection defers the start of the target.
    ///
    /// A unit with `RefuseManualStart=true` cannot be started directly; it
    /// is listed, and starts only through the unit that pulls it in.
    fn pulled_in(&mut self) {
        let mut queue: VecDeque<String> =
            self.entries.iter().filter(|(_, e)| e.start || e.restart).map(|(name, _)| name.clone()).collect();
        if self.steps.contains(&Step::RestartSysinitReactivation) {
            queue.push_back(SYSINIT_REACTIVATION.to_owned());
        }
        let mut seen: BTreeSet<String> = queue.iter().cloned().collect();
        // Every unit that starts, with every started unit that pulls it in.
        let mut pulled: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut manual_only = BTreeSet::new();
        while let Some(puller) = queue.pop_front() {
            for (unit, how) in self.pulls(&puller) {
                if let Some(by) = pulled.get_mut(&unit) {
                    by.insert(format!("{puller} ({how})"));
                }
                if !seen.insert(unit.clone()) {
                    continue;
                }
                let running = self.live.get(&unit).is_some_and(|u| u.is_running());
                let Some(file) = self.new.unit(&unit).filter(|u| !u.is_masked()) else { continue };
                if running || unit_name::is_template(&unit) {
                    continue;
                }
                pulled.entry(unit.clone()).or_default().insert(format!("{puller} ({how})"));
                if file.bool_or("Unit", "RefuseManualStart", false) {
                    manual_only.insert(unit.clone());
                }
                queue.push_back(unit);
            }
        }
        for (unit, by) in pulled {
            let rule = if self.old.has_unit(&unit) { Rule::PulledIn } else { Rule::NewUnit };
            let detail = format!("pulled in by {}", by.into_iter().collect::<Vec<_>>().join(", "));
            if manual_only.contains(&unit) {
                self.note(&unit, rule, Some(format!("{detail}; RefuseManualStart=true: starts only through it")));
            } else {
                self.set(&unit, Set::Start, rule, Some(detail));
            }
        }
    }

    /// The units a start of `unit` pulls in, with the relation, from the
    /// new generation: its `.wants`, `.requires` and `.upholds` links and
    /// its `Wants=`, `Requires=`, `BindsTo=` and `Upholds=`. Names with
    /// specifiers are left out (the protection graph expands them).
    fn pulls(&self, unit: &str) -> Vec<(String, &'static str)> {
        let mut out = Vec::new();
        for (kind, how) in [("wants", "Wants"), ("requires", "Requires"), ("upholds", "Upholds")] {
            out.extend(self.new.linked(unit, kind).map(|u| (u.to_owned(), how)));
        }
        if let Some(file) = self.new.unit(unit).filter(|u| !u.is_masked()) {
            for key in ["Wants", "Requires", "BindsTo", "Upholds"] {
                for name in file.words("Unit", key) {
                    if !name.contains('%') && unit_name::is_valid(name) {
                        out.push((name.to_owned(), key));
                    }
                }
            }
        }
        out
    }

    /// Units new in this generation that nothing starts, with why.
    fn new_units(&mut self) {
        self.pulled_in();
        let new = self.new;
        let noted: Vec<&str> = new
            .units()
            .filter(|(name, unit)| !unit_name::is_template(name) && !unit.is_masked() && !self.old.has_unit(name))
            .filter(|(name, _)| !self.entries.get(*name).is_some_and(|e| e.start || e.restart || e.informative))
            .map(|(name, _)| name)
            .collect();
        // What links to those units (a host links thousands of units;
        // only these need naming).
        let mut pulled_by: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for (unit, kind, linked) in new.linked_all() {
            for name in linked.filter(|n| noted.binary_search(n).is_ok()) {
                pulled_by.entry(name).or_default().insert(format!("{unit} ({kind})"));
            }
        }
        for name in noted {
            let detail = match pulled_by.get(name) {
                Some(by) => format!(
                    "pulled in by {}, which the switch does not start",
                    by.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
                None => "no unit pulls it in; the switch does not start it".to_owned(),
            };
            self.note(name, Rule::NewUnit, Some(detail));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;

    use super::*;

    fn unit(name: &str, text: &str) -> (String, UnitFile) {
        (name.to_owned(), UnitFile::parse(Path::new(name), text).unwrap())
    }

    fn generation(units: &[(&str, &str)]) -> GenerationUnits {
        GenerationUnits::from_units("gen", units.iter().map(|(name, text)| unit(name, text)))
    }

    #[test]
    fn plans_are_pure_and_sorted() {
        let old = generation(&[
            ("b.service", "[Service]\nExecStart=/bin/b\n"),
            ("a.service", "[Service]\nExecStart=/bin/a\nX-StopIfChanged=false\n"),
            ("a.socket", "[Socket]\nListenStream=1\n"),
        ]);
        let new = generation(&[
            ("b.service", "[Service]\nExecStart=/bin/b2\n"),
            ("a.service", "[Service]\nExecStart=/bin/a2\nX-StopIfChanged=false\n"),
            ("a.socket", "[Socket]\nListenStream=1\n"),
        ]);
        let live = assumed_live_state(&old);
        let first = plan(&old, &new, &live);
        assert_eq!(first, plan(&old, &new, &live));
        let names: Vec<&str> = first.units.iter().map(|u| u.unit.as_str()).collect();
        assert_eq!(names, ["a.service", "b.service"]);
        assert_eq!(first.units_with(Action::Restart), ["a.service"]);
        assert_eq!(first.units_with(Action::Stop), ["b.service"]);
        assert_eq!(first.units_with(Action::Start), ["b.service"]);
    }

    #[test]
    fn user_managers_are_named_only_when_something_is_left_undone() {
        let with_users = |units: &[(&str, &str)]| {
            let mut g = generation(&[("a.service", "[Service]\nExecStart=/bin/a\n")]);
            g.user_units = units.iter().map(|(n, t)| unit(n, t)).collect();
            g
        };
        let agent = ("agent.service", "[Service]\nExecStart=/bin/agent\n");
        let activation = ("nixos-activation.service", "[Service]\nExecStart=/bin/activate-user\n");
        // The diagnostics about user managers (the generations have no
        // activate script, which is a note of its own).
        let diagnostics = |old: &GenerationUnits, new: &GenerationUnits| -> Vec<Diagnostic> {
            let all = plan(old, new, &assumed_live_state(old)).diagnostics;
            all.into_iter().filter(|d| d.path.as_deref().is_some_and(|p| p.ends_with("etc/systemd/user"))).collect()
        };
        // Nothing about users: no word.
        assert!(diagnostics(&with_users(&[agent]), &with_users(&[agent])).is_empty());
        // Equal user units, but a per-user activation NixOS would run.
        let d = diagnostics(&with_users(&[agent, activation]), &with_users(&[agent, activation]));
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].severity, Severity::Info);
        assert!(d[0].message.contains("nixos-activation.service is not run"), "{}", d[0].message);
        // A changed user unit is a warning that names it.
        let changed = ("agent.service", "[Service]\nExecStart=/bin/agent --v2\n");
        let d = diagnostics(&with_users(&[agent]), &with_users(&[changed]));
        assert_eq!(d[0].severity, Severity::Warning);
        assert!(d[0].message.contains("changed: agent.service"), "{}", d[0].message);
    }

    #[test]
    fn a_system_manager_generation_against_a_nixos_one_is_planned_with_nixos_rules() {
        let old = generation(&[("a.service", "[Service]\nExecStart=/bin/a\n")]);
        let mut new = generation(&[("a.service", "[Service]\nExecStart=/bin/a2\n")]);
        new.managed = Some(BTreeMap::new());
        let p = plan(&old, &new, &assumed_live_state(&old));
        assert!(p.diagnostics.iter().any(|d| d.severity == Severity::Warning && d.message.contains("NixOS's rules")));
        assert_eq!(p.units_with(Action::Stop), ["a.service"], "NixOS's stop-start, not system-manager's restart");
        assert_eq!(p.units_with(Action::Start), ["a.service"]);
    }

    #[test]
    fn assumed_live_state_skips_templates_and_masks() {
        let mut masked = unit("m.service", "");
        masked.1.masked = true;
        let old = GenerationUnits::from_units(
            "gen",
            [unit("t@.service", "[Service]\nExecStart=/bin/t\n"), unit("x.service", "[Unit]\n"), masked],
        );
        let live = assumed_live_state(&old);
        assert_eq!(live.units.keys().collect::<Vec<_>>(), ["x.service"]);
        assert_eq!(live.units["x.service"].fragment_path, "/etc/systemd/system/x.service");
    }

    #[test]
    fn without_a_live_state_the_old_generations_kernel_runs_and_the_plan_says_what_waits_for_the_boot() {
        use crate::generation::{Boot, ModuleRelease, ModuleTree};
        let tree = |identity: &str, release: &str| ModuleTree {
            identity: Some(identity.into()),
            releases: [(release.to_owned(), ModuleRelease::default())].into(),
        };
        let boot = |kernel: &str, modules| Boot { kernel: Some(kernel.into()), modules, ..Boot::default() };
        let old = generation(&[]).with_boot(boot("/nix/store/a/bzImage", Some(tree("/nix/store/m1", "6.6.1"))));
        let live = assumed_live_state(&old);
        assert_eq!(live.kernel_release.as_deref(), Some("6.6.1"));
        assert!(live.loaded_modules.is_empty() && live.booted_kernel_modules.is_none());
        let new = generation(&[]).with_boot(boot("/nix/store/b/bzImage", Some(tree("/nix/store/m2", "6.6.2"))));
        let p = plan(&old, &new, &live);
        assert!(p.needs_reboot());
        assert_eq!(p.reboot[0].detail, "the kernel changes: /nix/store/a/bzImage -> /nix/store/b/bzImage");
        // Two releases: which one runs is not assumed.
        let mut two = tree("/nix/store/m3", "6.6.1");
        two.releases.insert("6.6.2".into(), ModuleRelease::default());
        assert_eq!(assumed_live_state(&generation(&[]).with_boot(boot("/k", Some(two)))).kernel_release, None);
    }
}
