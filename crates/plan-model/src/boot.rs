//! What a switch cannot carry out without a reboot, and the kernel
//! modules a new generation adds or changes.
//!
//! A switch changes the running system, not what it booted: a new kernel,
//! initrd or kernel command line, a module the kernel already holds in
//! another version, a message bus that is replaced, an init that speaks
//! another interface, all wait for the next boot. The plan lists each as a
//! [`Reboot`], with its [`RebootReason`], so that a gate can tell a switch
//! that is complete from one that is complete only after a reboot; nothing
//! is restarted to pretend otherwise.

use serde::{Deserialize, Serialize};

/// A part of the switch that takes effect only at the next boot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reboot {
    /// Why.
    pub reason: RebootReason,
    /// The particulars: what changed, from what to what.
    pub detail: String,
}

/// Why part of a switch needs a reboot. The JSON form is the kebab-case
/// name (`kernel-modules`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RebootReason {
    /// The kernel (`kernel`), its command line (`kernel-params`), or the
    /// kernel that runs is not the new generation's.
    Kernel,
    /// The initrd (`initrd`).
    Initrd,
    /// Kernel modules the new generation adds or changes that the running
    /// kernel cannot load now.
    KernelModules,
    /// The D-Bus implementation changes (dbus-daemon and dbus-broker).
    Dbus,
    /// systemd changes in a way a re-execution does not cover
    /// (`init-interface-version`).
    Systemd,
    /// The generation or an activation declares it: a NixOS switch
    /// inhibitor changed, or `/run/reboot-required` exists.
    Activation,
}

impl RebootReason {
    /// The reason's name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            RebootReason::Kernel => "kernel",
            RebootReason::Initrd => "initrd",
            RebootReason::KernelModules => "kernel-modules",
            RebootReason::Dbus => "dbus",
            RebootReason::Systemd => "systemd",
            RebootReason::Activation => "activation",
        }
    }
}

impl std::fmt::Display for RebootReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A kernel module that the new generation adds or changes, and whether
/// the running system can use it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelModule {
    /// The module's name, as its file names it (`wireguard` for
    /// `wireguard.ko.xz`).
    pub module: String,
    /// The kernel release it was built for: its directory under
    /// `kernel-modules/lib/modules`.
    pub release: String,
    /// Its file, relative to the release directory
    /// (`kernel/drivers/net/wireguard/wireguard.ko.xz`).
    pub path: String,
    /// Added or changed.
    pub change: ModuleChange,
    /// When it can be used.
    pub usable: ModuleUse,
    /// Why, in a few words.
    pub detail: String,
}

/// How a module differs from the running generation's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModuleChange {
    /// The running generation has no module at this path.
    Added,
    /// The running generation has another file at this path.
    Changed,
}

impl ModuleChange {
    /// The name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            ModuleChange::Added => "added",
            ModuleChange::Changed => "changed",
        }
    }
}

/// When a module the new generation adds or changes can be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModuleUse {
    /// Right after the switch: built for the running kernel and found by
    /// `modprobe`.
    Now,
    /// Only after a reboot: built for another kernel, already loaded from
    /// another file, or out of `modprobe`'s reach until the booted
    /// generation changes.
    AfterReboot,
    /// Never through `modprobe`: `modules.dep` of its release does not list
    /// it.
    Unreachable,
    /// Not known: the running kernel's release is not known.
    Unknown,
}

impl ModuleUse {
    /// The name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            ModuleUse::Now => "now",
            ModuleUse::AfterReboot => "after-reboot",
            ModuleUse::Unreachable => "unreachable",
            ModuleUse::Unknown => "unknown",
        }
    }
}
