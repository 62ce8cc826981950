//! The plan: what a switch will do to each unit, and why.
//!
//! A [`Plan`] is an inert value. It is built by a planner, may be rewritten
//! by the protection analysis (which moves actions into a [`Deferral`]),
//! is printed, serialized and snapshotted, and only then carried out by an
//! executor, which performs exactly the actions listed here and nothing else.

use serde::{Deserialize, Serialize};

/// The version of the JSON form of [`Plan`]. Bump it when a field changes
/// meaning or disappears; adding an optional field does not need a bump.
pub const FORMAT_VERSION: u32 = 1;

/// A complete switch plan from one generation to another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Always [`FORMAT_VERSION`] when produced by this version.
    pub format_version: u32,
    /// The running generation.
    pub old: Generation,
    /// The generation being switched to.
    pub new: Generation,
    /// One entry per unit that the switch changes or acts on, sorted by
    /// unit name.
    pub units: Vec<UnitPlan>,
    /// Global steps (swapoff, activation script, re-exec, daemon-reload,
    /// ...), in execution order.
    pub steps: Vec<Step>,
    /// What systemd does to other units when it carries out the plan's
    /// jobs: the stops, restarts and starts it adds along the units'
    /// relations, for units the plan does not act on itself. The apply
    /// compares what it observes with this list and the actions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consequences: Vec<Consequence>,
    /// What is protected and how protection changed this plan.
    #[serde(default)]
    pub protection: Protection,
    /// Problems found in the inputs that did not stop planning, and things
    /// the planner could not model.
    #[serde(default)]
    pub diagnostics: Vec<Diagnostic>,
    /// Which packages the switch changes: the closure diff of the two
    /// generations, present when both are store paths whose closures could
    /// be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packages: Option<crate::packages::ClosureDiff>,
    /// What of the switch takes effect only at the next boot, in the order
    /// of [`crate::RebootReason`]; empty when nothing does. Always written.
    #[serde(default)]
    pub reboot: Vec<crate::Reboot>,
    /// The kernel modules the new generation adds or changes, sorted by
    /// release and path, with when each can be used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernel_modules: Vec<crate::KernelModule>,
}

impl Plan {
    /// A plan between two generations, named by their paths, with the
    /// given units and nothing else yet (no steps, protection, diagnostics
    /// or packages).
    pub fn between(old: &str, new: &str, units: Vec<UnitPlan>) -> Plan {
        let generation = |path: &str| Generation { path: path.to_owned(), ..Generation::default() };
        Plan {
            format_version: FORMAT_VERSION,
            old: generation(old),
            new: generation(new),
            units,
            steps: Vec::new(),
            consequences: Vec::new(),
            protection: Protection::default(),
            diagnostics: Vec::new(),
            packages: None,
            reboot: Vec::new(),
            kernel_modules: Vec::new(),
        }
    }
}

impl UnitPlan {
    /// A unit's entry with these actions and nothing else yet.
    pub fn new(unit: &str, actions: &[Action]) -> UnitPlan {
        UnitPlan {
            unit: unit.to_owned(),
            actions: actions.to_vec(),
            reasons: Vec::new(),
            changes: Vec::new(),
            deferral: None,
        }
    }
}

/// Identifies a generation (a system toplevel).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation {
    /// The toplevel path as given (e.g. `/run/current-system` resolved to
    /// its store path).
    pub path: String,
    /// The content of `init-interface-version`, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_interface_version: Option<String>,
    /// Where the generation came from (prebuilt, a flake attribute, or a
    /// composition of a base and an overlay), when safe-switch obtained it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<crate::Provenance>,
}

/// The plan for one unit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitPlan {
    /// The unit name, e.g. `sshd.service`.
    pub unit: String,
    /// The actions that will be carried out, in phase order (a service that
    /// is stopped before activation and started after it has
    /// `[stop, start]`). Empty when the unit changed but nothing is done to
    /// the running instance, or when every action was deferred.
    pub actions: Vec<Action>,
    /// Why the unit gets these actions: the rules that fired, in the order
    /// they fired.
    pub reasons: Vec<Reason>,
    /// The unit-file keys that differ between the generations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<KeyChange>,
    /// Actions that protection removed from this unit, with the chain of
    /// relations that led to a protected unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deferral: Option<Deferral>,
}

/// What a switch does to a running unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Stopped before the activation script runs.
    Stop,
    /// Reloaded after activation.
    Reload,
    /// Restarted after activation.
    Restart,
    /// Started after activation.
    Start,
    /// Changed, but deliberately not restarted ("NOT restarting").
    Skip,
}

impl Action {
    /// The phase this action belongs to.
    pub fn phase(self) -> Phase {
        match self {
            Action::Stop => Phase::Stop,
            Action::Reload => Phase::Reload,
            Action::Restart => Phase::Restart,
            Action::Start => Phase::Start,
            Action::Skip => Phase::Skip,
        }
    }

    /// The lowercase verb, as printed and serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Stop => "stop",
            Action::Reload => "reload",
            Action::Restart => "restart",
            Action::Start => "start",
            Action::Skip => "skip",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The phases of a switch. A plan runs them in one of two orders:
/// NixOS's ([`Phase::ORDER`]) or system-manager's
/// ([`Phase::SYSTEM_MANAGER_ORDER`]); [`Plan::phase_order`] says which.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// `swapoff` of swap devices that disappeared from fstab.
    Swapoff,
    /// Units stopped before activation.
    Stop,
    /// Changed units that are left running as they are.
    Skip,
    /// The generation's activation script.
    Activate,
    /// Re-execution of the service manager.
    Reexec,
    /// `daemon-reload`.
    DaemonReload,
    /// Restart of `sysinit-reactivation.target`.
    SysinitReactivation,
    /// Unit reloads.
    Reload,
    /// Unit restarts.
    Restart,
    /// Unit starts.
    Start,
    /// system-manager: the generation's pre-activation assertions.
    Assertions,
    /// system-manager: the generation registered as system-manager's
    /// profile.
    RegisterProfile,
    /// system-manager: the generation's `/etc` files and services map put
    /// in place, no unit touched.
    Prepopulate,
    /// system-manager: restart of `userborn.service`.
    Userborn,
    /// system-manager: `systemd-tmpfiles` on the generation's rules.
    Tmpfiles,
    /// system-manager: the units the generation masks, masked.
    Mask,
    /// system-manager: its state file, as the switch left the units.
    SystemManagerState,
}

impl Phase {
    /// The phase's name, as printed (`daemon-reload`, `re-exec`).
    pub fn name(self) -> &'static str {
        match self {
            Phase::Swapoff => "swapoff",
            Phase::Stop => "stop",
            Phase::Skip => "skip",
            Phase::Activate => "activate",
            Phase::Reexec => "re-exec",
            Phase::DaemonReload => "daemon-reload",
            Phase::SysinitReactivation => "sysinit-reactivation",
            Phase::Reload => "reload",
            Phase::Restart => "restart",
            Phase::Start => "start",
            Phase::Assertions => "assertions",
            Phase::RegisterProfile => "register-profile",
            Phase::Prepopulate => "prepopulate",
            Phase::Userborn => "userborn",
            Phase::Tmpfiles => "tmpfiles",
            Phase::Mask => "mask",
            Phase::SystemManagerState => "system-manager-state",
        }
    }

    /// Every phase of a NixOS switch, in the order it runs them: the
    /// executor carries such a plan out in it, and the reports list it in
    /// it.
    pub const ORDER: [Phase; 10] = [
        Phase::Swapoff,
        Phase::Stop,
        Phase::Skip,
        Phase::Activate,
        Phase::Reexec,
        Phase::DaemonReload,
        Phase::SysinitReactivation,
        Phase::Reload,
        Phase::Restart,
        Phase::Start,
    ];

    /// Every phase of a system-manager switch, in the order of
    /// system-manager's own activation: the files and state first (the
    /// generation's own engine), then daemon-reload,
    /// `sysinit-reactivation.target`, userborn and tmpfiles, then the
    /// units (stops after the daemon-reload: systemd keeps a running unit
    /// whose file is gone), the masks, and the state file last.
    pub const SYSTEM_MANAGER_ORDER: [Phase; 14] = [
        Phase::Assertions,
        Phase::RegisterProfile,
        Phase::Prepopulate,
        Phase::DaemonReload,
        Phase::SysinitReactivation,
        Phase::Userborn,
        Phase::Tmpfiles,
        Phase::Stop,
        Phase::Skip,
        Phase::Reload,
        Phase::Restart,
        Phase::Start,
        Phase::Mask,
        Phase::SystemManagerState,
    ];
}

/// A rule that fired and its particulars.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    /// Which rule.
    pub rule: Rule,
    /// Human-readable particulars, e.g. the socket name or the fstab line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The rules a planner applies. Each has a stable kebab-case identifier in
/// JSON and a one-line explanation ([`Rule::explain`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Rule {
    /// A key that matters changed: the unit must be restarted.
    UnitChanged,
    /// `X-Reload-Triggers` changed.
    ReloadTriggers,
    /// Only `ExecReload` changed.
    ExecReloadChanged,
    /// Only `[Mount] Options` changed.
    MountOptionsChanged,
    /// `X-ReloadIfChanged=true`: reload instead of restart.
    ReloadIfChanged,
    /// `X-RestartIfChanged=false`: left running.
    RestartIfChangedFalse,
    /// `RefuseManualStop=true`: left running.
    RefuseManualStop,
    /// `X-OnlyManualStart=true`: left running / not started.
    OnlyManualStart,
    /// `X-StopIfChanged=false`: restarted in place after activation.
    StopIfChangedFalse,
    /// Not a service: restarted in place after activation.
    RestartNonService,
    /// A changed service is stopped before activation and started after.
    StopStart,
    /// The service is socket-activated: stopped, and left to its socket.
    SocketActivated,
    /// The socket of a changed socket-activated service is restarted.
    SocketOfChangedService,
    /// `X-NotSocketActivated=true`: started directly despite its socket.
    NotSocketActivated,
    /// The unit is gone from the new generation.
    UnitRemoved,
    /// The unit is masked in the new generation.
    UnitMasked,
    /// A template instance lost the drop-ins that made it managed.
    InstanceDropInsRemoved,
    /// `X-StopOnRemoval=false`: a removed unit keeps running.
    StopOnRemovalFalse,
    /// An active target is started again so new units come up.
    TargetStart,
    /// `X-StopOnReconfiguration=true`: the target is stopped first.
    StopOnReconfiguration,
    /// The target is not started (`RefuseManualStart`, `X-OnlyManualStart`
    /// or a sleep target).
    TargetNotStarted,
    /// A changed slice, path or basic target: applied by daemon-reload.
    AppliedByDaemonReload,
    /// A changed socket unit is left alone, as NixOS's switch does.
    SocketChangeIgnored,
    /// A changed mount unit is restarted.
    MountChanged,
    /// `-.mount` and `nix.mount` are reloaded, never restarted.
    RootMountReload,
    /// An fstab entry changed device or type.
    FstabChanged,
    /// An fstab entry changed options only.
    FstabOptionsChanged,
    /// An fstab entry disappeared.
    FstabRemoved,
    /// The root or `/nix` file system is never unmounted.
    FstabRootKept,
    /// Requested by the activation script's restart list.
    ActivationRestartList,
    /// Requested by the activation script's reload list.
    ActivationReloadList,
    /// A reload target that is no longer active is started instead.
    ReloadFallbackStart,
    /// Left over from an interrupted earlier switch.
    Resumed,
    /// A new unit: started because a unit the switch starts pulls it in
    /// (the detail names it), or listed with why nothing starts it.
    NewUnit,
    /// A unit that is not running and that a unit the switch starts or
    /// restarts pulls in (`Wants=`, `Requires=`, `BindsTo=`, `Upholds=`,
    /// a `.wants` link): systemd starts it again with it.
    PulledIn,
    /// Only keys that need no action changed (`Description`, removed
    /// `X-Reload-Triggers`, ...).
    IgnoredKeysChanged,
    /// A launchd job is new in this generation: its plist is installed and
    /// the job bootstrapped.
    PlistAdded,
    /// A launchd job's plist changed: launchd only reads a plist when the job
    /// is bootstrapped, so the job is booted out and bootstrapped again.
    PlistChanged,
    /// A launchd job is gone from the new generation: it is booted out and
    /// its installed plist deleted.
    PlistRemoved,
    /// A launchd plist changed bytes but not content (formatting or
    /// encoding): the file is replaced and the job left alone.
    PlistReformatted,
    /// A launchd job of the generation is not loaded: it is bootstrapped.
    JobNotLoaded,
    /// `nix.conf` or `machines` changed: nix-darwin signals the Nix daemon,
    /// which makes it exit and launchd start it again.
    NixConfChanged,
    /// A protected launchd job keeps its old plist installed and loaded.
    OldPlistKept,
    /// nix-darwin's `services.openssh.enable = true` and Remote Login is
    /// off: macOS's own sshd (`com.openssh.sshd`) is enabled and
    /// bootstrapped.
    RemoteLoginOn,
    /// nix-darwin's `services.openssh.enable = false` and Remote Login is
    /// on: macOS's own sshd is booted out and disabled.
    RemoteLoginOff,
    /// system-manager: the unit file's store path changed, so its
    /// activation reloads the unit when it has `ExecReload`, restarts it
    /// otherwise, and starts it when it is not running
    /// (`ReloadOrRestartUnit`).
    StorePathChanged,
    /// system-manager: a masked unit is stopped on every activation.
    MaskedStop,
}

impl Rule {
    /// The rule's stable identifier (the JSON form).
    pub fn id(self) -> String {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::String(s)) => s,
            _ => format!("{self:?}"),
        }
    }

    /// A one-line explanation of the rule.
    pub fn explain(self) -> &'static str {
        match self {
            Rule::UnitChanged => "unit file changed",
            Rule::ReloadTriggers => "X-Reload-Triggers changed",
            Rule::ExecReloadChanged => "only ExecReload changed",
            Rule::MountOptionsChanged => "only mount Options changed",
            Rule::ReloadIfChanged => "X-ReloadIfChanged=true: reload instead of restart",
            Rule::RestartIfChangedFalse => "X-RestartIfChanged=false: not restarted",
            Rule::RefuseManualStop => "RefuseManualStop=true: not restarted",
            Rule::OnlyManualStart => "X-OnlyManualStart=true: not restarted or started",
            Rule::StopIfChangedFalse => "X-StopIfChanged=false: restarted after activation",
            Rule::RestartNonService => "not a service: restarted after activation",
            Rule::StopStart => "stopped before activation, started after",
            Rule::SocketActivated => "socket-activated: stopped, its socket brings it back",
            Rule::SocketOfChangedService => "socket of a changed socket-activated service",
            Rule::NotSocketActivated => "X-NotSocketActivated=true: started directly",
            Rule::UnitRemoved => "removed from the new generation",
            Rule::UnitMasked => "masked in the new generation",
            Rule::InstanceDropInsRemoved => "instance drop-ins removed from the new generation",
            Rule::StopOnRemovalFalse => "X-StopOnRemoval=false: removed but left running",
            Rule::TargetStart => "active target started again",
            Rule::StopOnReconfiguration => "X-StopOnReconfiguration=true: stopped first",
            Rule::TargetNotStarted => "target not started again",
            Rule::AppliedByDaemonReload => "applied by daemon-reload, never restarted",
            Rule::SocketChangeIgnored => "changed socket units are left alone",
            Rule::MountChanged => "mount unit changed",
            Rule::RootMountReload => "root and /nix mounts are reloaded, never restarted",
            Rule::FstabChanged => "fstab entry changed device or type",
            Rule::FstabOptionsChanged => "fstab entry changed options",
            Rule::FstabRemoved => "fstab entry removed",
            Rule::FstabRootKept => "root and /nix are never unmounted",
            Rule::ActivationRestartList => "requested by the activation script (restart list)",
            Rule::ActivationReloadList => "requested by the activation script (reload list)",
            Rule::ReloadFallbackStart => "no longer active: started instead of reloaded",
            Rule::Resumed => "left over from an interrupted switch",
            Rule::NewUnit => "new unit",
            Rule::PulledIn => "not running: started with the unit that pulls it in",
            Rule::IgnoredKeysChanged => "only keys that need no action changed",
            Rule::PlistAdded => "new launchd job: plist installed, job bootstrapped",
            Rule::PlistChanged => "launchd plist changed: job booted out and bootstrapped",
            Rule::PlistRemoved => "launchd job removed: booted out, plist deleted",
            Rule::PlistReformatted => "plist bytes changed, content equal: file replaced only",
            Rule::JobNotLoaded => "launchd job not loaded: bootstrapped",
            Rule::NixConfChanged => "nix.conf or machines changed: Nix daemon restarted",
            Rule::OldPlistKept => "protected: old plist kept installed and loaded",
            Rule::RemoteLoginOn => "services.openssh.enable = true: macOS's sshd enabled and bootstrapped",
            Rule::RemoteLoginOff => "services.openssh.enable = false: macOS's sshd booted out and disabled",
            Rule::StorePathChanged => "unit file's store path changed: reloaded if it has ExecReload, else restarted",
            Rule::MaskedStop => "masked by system-manager: stopped on every activation",
        }
    }
}

/// One unit-file key that differs between the generations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyChange {
    /// Section name without brackets, e.g. `Service`.
    pub section: String,
    /// Key name, e.g. `ExecStart`.
    pub key: String,
    /// Values in the old generation; `None` when the key was absent.
    pub old: Option<Vec<String>>,
    /// Values in the new generation; `None` when the key is absent.
    pub new: Option<Vec<String>>,
}

/// A global step of the switch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
    /// `swapoff` a device whose fstab entry disappeared.
    Swapoff {
        /// The device, as written in fstab.
        device: String,
    },
    /// Run the new generation's activation script.
    Activate {
        /// Path of the script.
        script: String,
    },
    /// Re-execute the service manager.
    Reexec {
        /// Why: which of the binary or `system.conf` changed.
        reasons: Vec<String>,
    },
    /// Reload the service manager's configuration.
    DaemonReload,
    /// Restart `sysinit-reactivation.target`.
    RestartSysinitReactivation,
    /// system-manager: run the new generation's
    /// `bin/preActivationAssertions`; a failure stops the switch before
    /// any change.
    Assertions {
        /// Path of the script.
        script: String,
    },
    /// system-manager: register the new generation as its profile, with
    /// the generation's `bin/register-profile`.
    RegisterProfile {
        /// Path of the script.
        script: String,
    },
    /// system-manager: put the new generation's `/etc` files in place and
    /// its services map in the state file, without starting, stopping or
    /// reloading anything, with the generation's `bin/prepopulate`.
    Prepopulate {
        /// Path of the script.
        script: String,
    },
    /// system-manager: restart `userborn.service` when it exists.
    RestartUserborn,
    /// system-manager: `systemd-tmpfiles --create --remove` on the
    /// generation's `tmpfiles.d` rules.
    Tmpfiles,
    /// system-manager: mask the units the generation masks, then
    /// daemon-reload.
    Mask {
        /// The units, sorted.
        units: Vec<String>,
    },
    /// system-manager: write its state file as the switch leaves the
    /// units: a unit whose action was deferred keeps its old store path.
    SystemManagerState,
}

impl Step {
    /// The phase this step runs in.
    pub fn phase(&self) -> Phase {
        match self {
            Step::Swapoff { .. } => Phase::Swapoff,
            Step::Activate { .. } => Phase::Activate,
            Step::Reexec { .. } => Phase::Reexec,
            Step::DaemonReload => Phase::DaemonReload,
            Step::RestartSysinitReactivation => Phase::SysinitReactivation,
            Step::Assertions { .. } => Phase::Assertions,
            Step::RegisterProfile { .. } => Phase::RegisterProfile,
            Step::Prepopulate { .. } => Phase::Prepopulate,
            Step::RestartUserborn => Phase::Userborn,
            Step::Tmpfiles => Phase::Tmpfiles,
            Step::Mask { .. } => Phase::Mask,
            Step::SystemManagerState => Phase::SystemManagerState,
        }
    }

    /// Whether the step is one of system-manager's activation.
    pub fn is_system_managers(&self) -> bool {
        Phase::SYSTEM_MANAGER_ORDER.contains(&self.phase()) && !Phase::ORDER.contains(&self.phase())
    }
}

/// How protection treats a plan that touches a protected unit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Drop the actions that touch protected units, apply the rest.
    #[default]
    Defer,
    /// Refuse the whole switch.
    Refuse,
}

/// The protection part of a plan.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Protection {
    /// The mode in force.
    pub mode: Mode,
    /// Every protection in force, explicit and implicit.
    #[serde(default)]
    pub protected: Vec<ProtectedUnit>,
    /// True when `mode` is `refuse` and something touched a protected unit:
    /// the switch must not be carried out.
    #[serde(default)]
    pub refused: bool,
    /// In `refuse` mode, every action that would touch a protected unit,
    /// with its reason chain. The actions stay in the plan (it is not
    /// carried out at all), so this list says why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refusals: Vec<Refusal>,
}

/// An action that made protection refuse the plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The unit whose actions would touch a protected unit.
    pub unit: String,
    /// Those actions.
    pub actions: Vec<Action>,
    /// What they would do to the protected unit.
    #[serde(flatten)]
    pub touch: Touch,
}

/// One protection and the units it matched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtectedUnit {
    /// The selector as written (`sshd`, `docker*.service`,
    /// `gitlab-runner.service`).
    pub selector: String,
    /// Where it came from.
    pub source: ProtectionSource,
    /// The units it matched in either generation or the live state.
    #[serde(default)]
    pub units: Vec<String>,
    /// Allowed actions on these units (D-Bus may be reloaded but never
    /// restarted); empty means nothing may stop or restart them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<Action>,
}

/// Where a protection came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ProtectionSource {
    /// `--protect` on the command line.
    CommandLine,
    /// The policy file.
    Policy {
        /// Path of the policy file.
        path: String,
    },
    /// Built in (D-Bus, logind, the caller's own cgroup).
    Implicit {
        /// Why, e.g. `the D-Bus broker` or `holds this process (cgroup ...)`.
        why: String,
    },
}

impl ProtectionSource {
    /// A short label for where a protection came from: `--protect`,
    /// `policy PATH`, `implicit: WHY`.
    pub fn label(&self) -> String {
        match self {
            ProtectionSource::CommandLine => "--protect".to_owned(),
            ProtectionSource::Policy { path } => format!("policy {path}"),
            ProtectionSource::Implicit { why } => format!("implicit: {why}"),
        }
    }
}

/// Why a unit gets its action, for `--explain`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    /// The unit.
    pub unit: String,
    /// Whether it counts as running.
    pub running: bool,
    /// The actions still planned.
    pub actions: Vec<Action>,
    /// The rules that gave it those actions.
    pub reasons: Vec<Reason>,
    /// What protection did to it in `defer` mode.
    pub deferral: Option<Deferral>,
    /// What protection found in `refuse` mode.
    pub refusal: Option<Refusal>,
    /// Protections that cover the unit itself.
    pub protected_by: Vec<ProtectedUnit>,
    /// For each job the plan has (or had) for the unit, every protected unit
    /// it would touch.
    pub touches: Vec<(Action, Vec<Touch>)>,
    /// Every relation naming the unit, in forward form.
    pub relations: Vec<Edge>,
    /// Whether the unit appears in either generation, the live state or the
    /// plan at all.
    pub known: bool,
}

/// The unified diff of one file of a unit (a unit file, a drop-in, a
/// launchd plist) between the two generations, as the reports show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileDiff {
    /// The unit (or launchd job) the file belongs to.
    pub unit: String,
    /// The file, relative to the generation (`etc/systemd/system/a.service`).
    pub path: String,
    /// The unified diff, with `a/` and `b/` headers, ending in a newline.
    pub diff: String,
}

impl FileDiff {
    /// Lines of context around each change.
    const CONTEXT: usize = 3;

    /// The diff of one of `unit`'s files, shown as `path`, from its text in
    /// each generation (`None` where it is missing, which reads as empty);
    /// `None` when the two read the same. A path with line breaks or other
    /// control characters is shown escaped (`\n`), so that each header
    /// stays one line.
    pub fn between(unit: &str, path: String, old: Option<&str>, new: Option<&str>) -> Option<FileDiff> {
        let (old, new) = (old.unwrap_or_default(), new.unwrap_or_default());
        if old == new {
            return None;
        }
        let shown = path.escape_default().to_string();
        let mut diff = similar::TextDiff::from_lines(old, new)
            .unified_diff()
            .context_radius(Self::CONTEXT)
            .header(&format!("a/{shown}"), &format!("b/{shown}"))
            .to_string();
        if !diff.ends_with('\n') {
            diff.push('\n');
        }
        Some(FileDiff { unit: unit.to_owned(), path, diff })
    }
}

/// Actions that protection removed from a unit, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deferral {
    /// The actions that will not be carried out.
    pub actions: Vec<Action>,
    /// What they would have done to the protected unit.
    #[serde(flatten)]
    pub touch: Touch,
}

/// What an action would do to a protected unit, and the chain of
/// relations through which it gets there. In the JSON form its keys sit
/// beside those of the [`Deferral`] or [`Refusal`] that holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Touch {
    /// The protected unit.
    pub touches: String,
    /// What would happen to it (`stop` or `restart`).
    pub effect: Action,
    /// The relations from the protected unit back to the acting unit;
    /// empty when that unit is itself protected. A long chain keeps its
    /// ends: the relations nearest the protected unit and nearest the
    /// acting unit, with [`Touch::omitted`] counting those left out between
    /// them, so that a report stays linear in the number of units.
    pub chain: Vec<Edge>,
    /// The action of the acting unit whose consequences reach the
    /// protected unit (the start of a target that pulls in a conflicting
    /// unit, say), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<Action>,
    /// How many relations were left out of the middle of `chain`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub omitted: usize,
}

/// A job systemd adds to carry out one of the plan's jobs: a stop,
/// restart or start of a unit the plan does not act on, reached along the
/// units' relations (`web-helper.service PartOf=web.service`: restarting
/// `web.service` restarts `web-helper.service`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consequence {
    /// The unit systemd acts on.
    pub unit: String,
    /// What it does to it: `stop` or `restart` (of a running unit) or
    /// `start` (of one that is not running).
    pub effect: Action,
    /// The unit whose planned job leads there.
    pub by: String,
    /// That job.
    pub cause: Action,
    /// The relations from `unit` back to `by`, as in [`Touch::chain`]
    /// (a long chain keeps its ends).
    pub chain: Vec<Edge>,
    /// How many relations were left out of the middle of `chain`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub omitted: usize,
}

/// How many relations a long reason chain keeps at each end. When
/// relations were left out ([`Touch::omitted`] is not zero), the last
/// `CHAIN_ENDS` relations of the chain are those nearest the blocked unit
/// and the ones before them lead up to the protected unit.
pub const CHAIN_ENDS: usize = 4;

/// Serde helper: leaves a zero count out of the JSON form.
fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// One relation in a reason chain: `from` has `relation=` `to`, as in
/// `sshd.service Requires=network-setup.service`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edge {
    /// The unit that holds the relation.
    pub from: String,
    /// The relation, as a unit-file key or D-Bus property (`Requires`).
    pub relation: String,
    /// The unit it points at.
    pub to: String,
}

/// A problem found while planning.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    /// How bad it is.
    pub severity: Severity,
    /// What happened, as one sentence.
    pub message: String,
    /// The unit concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The file concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The 1-based line in `path`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
}

/// Severity of a [`Diagnostic`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    /// Worth knowing; the plan is still complete.
    Info,
    /// The plan may be incomplete or surprising here.
    Warning,
}

impl Plan {
    /// Returns the units that get `action`, in name order, skipping deferred
    /// actions (they are not in `actions`).
    pub fn units_with(&self, action: Action) -> Vec<&str> {
        self.units.iter().filter(|u| u.actions.contains(&action)).map(|u| u.unit.as_str()).collect()
    }

    /// Returns the plan entry for `unit`.
    pub fn unit(&self, unit: &str) -> Option<&UnitPlan> {
        self.units.iter().find(|u| u.unit == unit)
    }

    /// Returns the entries whose actions protection deferred.
    pub fn deferred(&self) -> impl Iterator<Item = &UnitPlan> {
        self.units.iter().filter(|u| u.deferral.is_some())
    }

    /// Tells whether the plan would touch a protected unit if carried out
    /// without protection: something was deferred or the plan was refused.
    pub fn touches_protected(&self) -> bool {
        self.protection.refused || self.deferred().next().is_some()
    }

    /// Tells whether part of the switch takes effect only at the next boot.
    pub fn needs_reboot(&self) -> bool {
        !self.reboot.is_empty()
    }

    /// Tells whether the plan contains a global step of this phase.
    pub fn has_step(&self, phase: Phase) -> bool {
        self.steps.iter().any(|s| s.phase() == phase)
    }

    /// The order this plan's phases run in: system-manager's when it has a
    /// step of system-manager's activation, else NixOS's. (A plan with
    /// unit actions only runs them in the same order either way.)
    pub fn phase_order(&self) -> &'static [Phase] {
        if self.steps.iter().any(Step::is_system_managers) { &Phase::SYSTEM_MANAGER_ORDER } else { &Phase::ORDER }
    }

    /// Returns the plan as pretty-printed JSON with a trailing newline.
    pub fn to_json(&self) -> String {
        // Serializing plain structs of strings and vectors cannot fail.
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rule_ids_are_kebab_case() {
        assert_eq!(Rule::RestartIfChangedFalse.id(), "restart-if-changed-false");
        assert_eq!(Rule::StopStart.id(), "stop-start");
    }

    #[test]
    fn the_phase_order_is_the_declaration_order_and_holds_every_phase() {
        assert!(Phase::ORDER.windows(2).all(|w| w[0] < w[1]), "{:?}", Phase::ORDER);
        let actions = [Action::Stop, Action::Reload, Action::Restart, Action::Start, Action::Skip];
        let steps = [
            Step::Swapoff { device: "/dev/sda2".into() },
            Step::Activate { script: "/b/activate".into() },
            Step::Reexec { reasons: vec![] },
            Step::DaemonReload,
            Step::RestartSysinitReactivation,
        ];
        let used: Vec<Phase> = actions.iter().map(|a| a.phase()).chain(steps.iter().map(Step::phase)).collect();
        assert!(used.iter().all(|p| Phase::ORDER.contains(p)), "{used:?}");
        assert_eq!(used.len(), Phase::ORDER.len(), "every phase is an action's or a step's");
    }

    #[test]
    fn a_system_manager_plan_runs_in_system_managers_order_with_every_one_of_its_phases() {
        let actions = [Action::Stop, Action::Reload, Action::Restart, Action::Start, Action::Skip];
        let steps = [
            Step::Assertions { script: "/b/bin/preActivationAssertions".into() },
            Step::RegisterProfile { script: "/b/bin/register-profile".into() },
            Step::Prepopulate { script: "/b/bin/prepopulate".into() },
            Step::DaemonReload,
            Step::RestartSysinitReactivation,
            Step::RestartUserborn,
            Step::Tmpfiles,
            Step::Mask { units: vec!["ssh.service".into()] },
            Step::SystemManagerState,
        ];
        let mut used: Vec<Phase> = actions.iter().map(|a| a.phase()).chain(steps.iter().map(Step::phase)).collect();
        used.sort();
        let mut order = Phase::SYSTEM_MANAGER_ORDER.to_vec();
        order.sort();
        assert_eq!(used, order, "every phase is an action's or a step's");
        // The stops come after the files and the daemon-reload, as in
        // system-manager's activation, unlike NixOS's.
        let at = |p: Phase| Phase::SYSTEM_MANAGER_ORDER.iter().position(|q| *q == p).unwrap();
        assert!(at(Phase::Prepopulate) < at(Phase::DaemonReload) && at(Phase::DaemonReload) < at(Phase::Stop));
        assert!(at(Phase::Start) < at(Phase::SystemManagerState));

        let mut plan = Plan::between("/a", "/b", vec![]);
        assert_eq!(plan.phase_order(), Phase::ORDER);
        plan.steps = vec![Step::DaemonReload, Step::RestartSysinitReactivation];
        assert_eq!(plan.phase_order(), Phase::ORDER);
        plan.steps = steps.to_vec();
        assert_eq!(plan.phase_order(), Phase::SYSTEM_MANAGER_ORDER);
    }

    #[test]
    fn json_round_trip() {
        let plan = Plan {
            format_version: FORMAT_VERSION,
            old: Generation { path: "/a".into(), init_interface_version: None, provenance: None },
            new: Generation { path: "/b".into(), init_interface_version: Some("systemd 2".into()), provenance: None },
            units: vec![UnitPlan {
                unit: "x.service".into(),
                actions: vec![Action::Stop, Action::Start],
                reasons: vec![Reason { rule: Rule::StopStart, detail: None }],
                changes: vec![],
                deferral: None,
            }],
            steps: vec![Step::Activate { script: "/b/activate".into() }, Step::DaemonReload],
            consequences: vec![],
            protection: Protection::default(),
            diagnostics: vec![],
            packages: None,
            reboot: vec![crate::Reboot { reason: crate::RebootReason::KernelModules, detail: "x".into() }],
            kernel_modules: vec![],
        };
        let json = plan.to_json();
        let back: Plan = serde_json::from_str(&json).unwrap();
        assert_eq!(back, plan);
        assert_eq!(plan.units_with(Action::Start), vec!["x.service"]);
        assert!(json.contains("\"step\": \"daemon-reload\""), "{json}");
        assert!(json.contains("\"reason\": \"kernel-modules\""), "{json}");
        // A plan written before the field existed reads as needing none.
        let mut old: serde_json::Value = serde_json::from_str(&json).unwrap();
        old.as_object_mut().unwrap().remove("reboot");
        let back: Plan = serde_json::from_value(old).unwrap();
        assert!(!back.needs_reboot());
    }
}
