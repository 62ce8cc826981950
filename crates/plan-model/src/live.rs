//! A snapshot of the service manager's state, as the planner sees it.
//!
//! On a host the snapshot comes from systemd over D-Bus (`systemd-live`); in
//! tests and offline `diff` runs it is loaded from a JSON file. Both produce
//! the same value, so the planner cannot tell the difference.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::json::Object;

/// The dependency properties the protection analysis reads, in both
/// directions: every relation through which a job on one unit can reach
/// another (`systemd_plan::protect::Relation`): the keys of
/// [`LiveUnit::deps`].
pub const DEPENDENCY_PROPERTIES: [&str; 18] = [
    "Requires",
    "Requisite",
    "Wants",
    "BindsTo",
    "PartOf",
    "Upholds",
    "Conflicts",
    "PropagatesStopTo",
    "Triggers",
    "RequiredBy",
    "RequisiteOf",
    "WantedBy",
    "BoundBy",
    "ConsistsOf",
    "UpheldBy",
    "ConflictedBy",
    "StopPropagatedFrom",
    "TriggeredBy",
];

/// The live state of the service manager: every loaded unit, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveState {
    /// Loaded units, keyed by unit name. A `BTreeMap` keeps iteration, and
    /// so every plan, deterministic.
    #[serde(default, deserialize_with = "units_from_objects")]
    pub units: BTreeMap<String, LiveUnit>,
    /// The canonical path of the running service manager binary
    /// (`/proc/1/exe`), when known. Used for the re-exec decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager_exe: Option<String>,
    /// Units the activation script asked to restart
    /// (`/run/nixos/activation-restart-list`, a deprecated NixOS interface).
    /// The script writes the list while it runs, so a plan made beforehand
    /// knows it only when the caller supplies it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub activation_restart_list: Vec<String>,
    /// Units the activation script asked to reload
    /// (`/run/nixos/activation-reload-list`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub activation_reload_list: Vec<String>,
    /// Starts left over from an interrupted switch (`/run/nixos/start-list`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_start: Vec<String>,
    /// Restarts left over from an interrupted switch
    /// (`/run/nixos/restart-list`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_restart: Vec<String>,
    /// Reloads left over from an interrupted switch
    /// (`/run/nixos/reload-list`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_reload: Vec<String>,
    /// The running kernel's release (`uname -r`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "kernel_release")]
    pub kernel_release: Option<String>,
    /// The kernel module tree that NixOS's `modprobe` reads for the
    /// running kernel, when it is the booted generation's: where
    /// `/run/booted-system/kernel-modules` leads, when it has
    /// `lib/modules/<kernel_release>` (NixOS's kmod looks there before the
    /// running generation's tree). Without it, `modprobe` reads the
    /// running generation's tree, which is the new one after a switch.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "store_path")]
    pub booted_kernel_modules: Option<String>,
    /// The kernel modules loaded now (`/proc/modules`), by name, as the
    /// kernel spells it (`-` read as `_`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "loaded_modules")]
    pub loaded_modules: BTreeMap<String, LoadedModule>,
    /// `/run/reboot-required` exists: something (an activation script, a
    /// package manager) asked for a reboot that has not happened yet.
    #[serde(default, skip_serializing_if = "is_false")]
    pub reboot_required: bool,
}

/// A loaded kernel module.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadedModule {
    /// Its version (`/sys/module/<name>/version`), when it declares one.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "module_version")]
    pub version: Option<String>,
}

/// The longest kernel release, module name and module version a live
/// state may give.
const KERNEL_WORD: usize = 64;

/// Tells whether `s` is a kernel release as `uname -r` prints one: 1 to
/// 64 letters, digits and `._+~-`.
pub fn is_kernel_release(s: &str) -> bool {
    (1..=KERNEL_WORD).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._+~-".contains(&b))
        && s != "."
        && s != ".."
}

/// Tells whether `s` is a kernel module name: 1 to 64 letters, digits,
/// `_` and `-`.
pub fn is_module_name(s: &str) -> bool {
    (1..=KERNEL_WORD).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Tells whether `s` can be a module's version: 1 to 64 printable ASCII
/// characters.
pub fn is_module_version(s: &str) -> bool {
    (1..=KERNEL_WORD).contains(&s.len()) && s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

fn kernel_release<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    checked(d, is_kernel_release, "kernel_release: not a kernel release (1 to 64 letters, digits and ._+~-)")
}

fn module_version<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    checked(d, is_module_version, "version: not a module version (1 to 64 printable ASCII characters)")
}

fn store_path<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let valid = |s: &str| s.starts_with('/') && s.len() <= 4096 && !s.chars().any(char::is_control);
    checked(d, valid, "booted_kernel_modules: not an absolute path")
}

/// An optional string that must pass `valid`; the error never quotes it.
fn checked<'de, D: serde::Deserializer<'de>>(
    d: D,
    valid: fn(&str) -> bool,
    message: &'static str,
) -> Result<Option<String>, D::Error> {
    let value = Option::<String>::deserialize(d)?;
    match value {
        Some(s) if !valid(&s) => Err(serde::de::Error::custom(message)),
        other => Ok(other),
    }
}

/// The loaded modules, each given as a JSON object, named as the kernel
/// names modules.
fn loaded_modules<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, LoadedModule>, D::Error> {
    let modules = BTreeMap::<String, Object<LoadedModule>>::deserialize(d)?;
    if modules.keys().any(|name| !is_module_name(name)) {
        return Err(serde::de::Error::custom(
            "loaded_modules: a name that is not a module name (1 to 64 letters, digits, _ and -)",
        ));
    }
    Ok(modules.into_iter().map(|(name, m)| (name.replace('-', "_"), m.0)).collect())
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A unit's `ActiveState`, as systemd reports it. The JSON form is the
/// state's name (`"active"`); a name this version does not know is kept
/// as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum ActiveState {
    /// `active`.
    Active,
    /// `reloading`.
    Reloading,
    /// `inactive`.
    #[default]
    Inactive,
    /// `failed`.
    Failed,
    /// `activating`.
    Activating,
    /// `deactivating`.
    Deactivating,
    /// `maintenance`.
    Maintenance,
    /// `refreshing`.
    Refreshing,
    /// Any other name.
    Other(String),
}

impl ActiveState {
    /// The state's name, as systemd spells it.
    pub fn as_str(&self) -> &str {
        match self {
            ActiveState::Active => "active",
            ActiveState::Reloading => "reloading",
            ActiveState::Inactive => "inactive",
            ActiveState::Failed => "failed",
            ActiveState::Activating => "activating",
            ActiveState::Deactivating => "deactivating",
            ActiveState::Maintenance => "maintenance",
            ActiveState::Refreshing => "refreshing",
            ActiveState::Other(name) => name,
        }
    }

    /// Running or starting: `active`, `activating`, `reloading`,
    /// `refreshing`.
    pub fn is_running(&self) -> bool {
        matches!(self, ActiveState::Active | ActiveState::Activating | ActiveState::Reloading | ActiveState::Refreshing)
    }

    /// Up, or on its way up: `active` or `activating` (what NixOS's
    /// switch examines and reloads).
    pub fn is_up(&self) -> bool {
        matches!(self, ActiveState::Active | ActiveState::Activating)
    }

    /// Half-way through a change: `activating` or `deactivating`.
    pub fn is_changing(&self) -> bool {
        matches!(self, ActiveState::Activating | ActiveState::Deactivating)
    }
}

impl From<String> for ActiveState {
    fn from(name: String) -> ActiveState {
        ActiveState::from(name.as_str())
    }
}

impl From<&str> for ActiveState {
    fn from(name: &str) -> ActiveState {
        match name {
            "active" => ActiveState::Active,
            "reloading" => ActiveState::Reloading,
            "inactive" => ActiveState::Inactive,
            "failed" => ActiveState::Failed,
            "activating" => ActiveState::Activating,
            "deactivating" => ActiveState::Deactivating,
            "maintenance" => ActiveState::Maintenance,
            "refreshing" => ActiveState::Refreshing,
            other => ActiveState::Other(other.to_owned()),
        }
    }
}

impl From<ActiveState> for String {
    fn from(state: ActiveState) -> String {
        state.as_str().to_owned()
    }
}

impl PartialEq<&str> for ActiveState {
    fn eq(&self, name: &&str) -> bool {
        self.as_str() == *name
    }
}

impl std::fmt::Display for ActiveState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One loaded unit as the service manager reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveUnit {
    /// `ActiveState`: `active`, `reloading`, `inactive`, `failed`,
    /// `activating`, `deactivating` (or `maintenance`, `refreshing`).
    pub active_state: ActiveState,
    /// `SubState`, e.g. `running`, `exited`, `dead`, `auto-restart`.
    #[serde(default)]
    pub sub_state: String,
    /// `LoadState`: `loaded`, `masked`, `not-found`, ...
    #[serde(default = "loaded")]
    pub load_state: String,
    /// `FragmentPath`: the file the unit was loaded from; empty for
    /// transient and some generated units. A live state read from systemd
    /// has it for the units a plan examines (active units of the old
    /// generation) only.
    #[serde(default)]
    pub fragment_path: String,
    /// `DropInPaths`, when a live-state file gives them; nothing plans
    /// with them, and a live state read from systemd leaves them out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drop_in_paths: Vec<String>,
    /// The `following` field of `ListUnits`: set for aliases that follow
    /// another unit (device units mostly); such entries are not examined.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub following: String,
    /// `MainPID` of a service (0 when none). A live state read from
    /// systemd has it, and the invocation, for the units a saved plan
    /// records only.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub main_pid: u32,
    /// `InvocationID`, as 32 lowercase hex digits (empty when none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub invocation_id: String,
    /// `ExecMainStatus` of a service, used to tell failed auto-restarts.
    #[serde(default, skip_serializing_if = "is_zero_i32")]
    pub exec_main_status: i32,
    /// Dependency properties as systemd reports them, keyed by property name
    /// (`Requires`, `RequiredBy`, `BindsTo`, `BoundBy`, `PartOf`,
    /// `ConsistsOf`, `Conflicts`, `ConflictedBy`, `Triggers`,
    /// `TriggeredBy`, ...). Only non-empty lists are kept.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub deps: BTreeMap<String, Vec<String>>,
    /// Whether `deps` was left unread: a live state listed from the
    /// manager reads a unit's dependencies only where protection needs
    /// them. A live state read from JSON has them as given.
    #[serde(skip)]
    pub deps_unread: bool,
}

/// The units, each given as a JSON object (see [`crate::json`]).
fn units_from_objects<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, LiveUnit>, D::Error> {
    let units = BTreeMap::<String, Object<LiveUnit>>::deserialize(d)?;
    Ok(units.into_iter().map(|(name, unit)| (name, unit.0)).collect())
}

fn loaded() -> String {
    "loaded".to_owned()
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero_i32(n: &i32) -> bool {
    *n == 0
}

impl LiveUnit {
    /// Tells whether the unit counts as "active before" the switch in the
    /// sense of NixOS's switch: not inactive and not following another unit.
    /// Failed, activating, deactivating and reloading units are included.
    pub fn is_active_before(&self) -> bool {
        self.following.is_empty() && self.active_state != ActiveState::Inactive
    }

    /// Tells whether the unit is running or starting (`active`,
    /// `activating`, `reloading`, `refreshing`).
    pub fn is_running(&self) -> bool {
        self.active_state.is_running()
    }
}

impl LiveState {
    /// Parses a live-state snapshot from its JSON form: an object, as are
    /// its units (an array, which serde would read field by field, is an
    /// error).
    pub fn from_json(text: &str) -> Result<LiveState, crate::json::JsonError> {
        crate::json::object_from_str(text)
    }

    /// Returns the unit's live state, if it is loaded.
    pub fn get(&self, unit: &str) -> Option<&LiveUnit> {
        self.units.get(unit)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_minimal_snapshot() {
        let live = LiveState::from_json(
            r#"{"units":{"a.service":{"active_state":"active","fragment_path":"/etc/systemd/system/a.service"}}}"#,
        )
        .unwrap();
        let a = live.get("a.service").unwrap();
        assert!(a.is_active_before());
        assert_eq!(a.load_state, "loaded");
    }

    #[test]
    fn rejects_what_is_not_an_object() {
        for text in ["[]", "[{}]", "null", r#"{"units":{"a.service":["active"]}}"#] {
            let err = LiveState::from_json(text).unwrap_err();
            assert!(err.to_string().contains("expected a JSON object"), "{text}: {err}");
        }
    }

    #[test]
    fn reads_the_kernel_fields_and_names_modules_as_the_kernel_does() {
        let live = LiveState::from_json(
            r#"{"kernel_release":"6.6.1-rt+","booted_kernel_modules":"/nix/store/a-kernel-modules",
                "loaded_modules":{"wire-guard":{"version":"1.0.0"},"loop":{}},"reboot_required":true}"#,
        )
        .unwrap();
        assert_eq!(live.kernel_release.as_deref(), Some("6.6.1-rt+"));
        assert_eq!(live.loaded_modules["wire_guard"].version.as_deref(), Some("1.0.0"));
        assert_eq!(live.loaded_modules["loop"].version, None);
        assert!(live.reboot_required);
        let again = LiveState::from_json(&serde_json::to_string(&live).unwrap()).unwrap();
        assert_eq!(again, live);
    }

    #[test]
    fn rejects_kernel_fields_that_are_not_what_the_kernel_writes_without_quoting_them() {
        for (text, field) in [
            (r#"{"kernel_release":"../../etc"}"#, "kernel_release"),
            (r#"{"kernel_release":""}"#, "kernel_release"),
            (r#"{"kernel_release":"6.6\u001b[31m"}"#, "kernel_release"),
            (r#"{"booted_kernel_modules":"relative/path"}"#, "booted_kernel_modules"),
            (r#"{"loaded_modules":{"a/b":{}}}"#, "loaded_modules"),
            (r#"{"loaded_modules":{"a":{"version":"\u0007"}}}"#, "version"),
            (r#"{"loaded_modules":{"a":["1.0"]}}"#, "expected a JSON object"),
            (r#"{"loaded_modules":{"a":{"srcversion":"x"}}}"#, "unknown field"),
        ] {
            let err = LiveState::from_json(text).unwrap_err().to_string();
            assert!(err.contains(field) && err.contains("line 1"), "{text}: {err}");
            assert!(!err.contains("etc") && !err.contains("a/b") && !err.contains("relative"), "{text}: {err}");
        }
        let long = format!(r#"{{"kernel_release":"{}"}}"#, "6".repeat(65));
        assert!(LiveState::from_json(&long).is_err());
    }

    #[test]
    fn rejects_unknown_fields() {
        let err = LiveState::from_json(r#"{"units":{"a.service":{"active_state":"active","bogus":1}}}"#).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }
}
