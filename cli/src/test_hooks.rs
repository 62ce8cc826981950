//! Inputs that only tests may redirect, and only in a debug build.
//!
//! A test must not depend on the machine it runs on: the system policy
//! file, the process's own cgroup, the saved-plan key and the Nix store are
//! host state.
//! In a debug build (the binary `cargo test` runs) these environment
//! variables point safe-switch elsewhere:
//!
//! | variable | replaces |
//! |---|---|
//! | `SAFE_SWITCH_TEST_SYSTEM_POLICY` | `/etc/safe-switch/policy.toml` |
//! | `SAFE_SWITCH_TEST_PROC_CGROUP` | `/proc/self/cgroup` |
//! | `SAFE_SWITCH_TEST_STATE_DIR` | `/var/lib/safe-switch` (the saved-plan key) |
//! | `SAFE_SWITCH_TEST_STORE_DIR` | `/nix/store` (where `apply` accepts a target) |
//! | `SAFE_SWITCH_TEST_DARWIN_ROOT` | `/` of a nix-darwin host: `/run/current-system`, `/run/safe-switch`, `/Library`, the users' homes, `/nix/var/nix/profiles`; a switch there needs no root |
//! | `SAFE_SWITCH_TEST_LAUNCHCTL` | `/bin/launchctl` (the launchd simulator of the `testbed` crate) |
//! | `SAFE_SWITCH_TEST_SYSTEM_MANAGER_ROOT` | `/` of a system-manager host: its state file (`/var/lib/system-manager/state`) and its profile (`/nix/var/nix/profiles/system-manager-profiles`) |
//! | `SAFE_SWITCH_TEST_KERNEL_ROOT` | `/` of the kernel state a plan reads: `/proc/modules`, `/sys/module`, `/run/booted-system`, `/run/reboot-required` (see `crate::kernel`) |
//!
//! A release build (`cfg(not(debug_assertions))`) ignores them: nothing a
//! caller puts in the environment changes which policy applies, which
//! cgroup is protected, which key signs a plan, where a target must be or
//! which state file a system-manager switch keeps.

use std::ffi::OsString;
use std::path::PathBuf;

/// Replaces the system policy file.
pub const SYSTEM_POLICY: &str = "SAFE_SWITCH_TEST_SYSTEM_POLICY";
/// Replaces `/proc/self/cgroup`.
pub const PROC_CGROUP: &str = "SAFE_SWITCH_TEST_PROC_CGROUP";
/// Replaces the state directory that holds the saved-plan key.
pub const STATE_DIR: &str = "SAFE_SWITCH_TEST_STATE_DIR";
/// Replaces the Nix store directory for `apply`'s check of the target.
pub const STORE_DIR: &str = "SAFE_SWITCH_TEST_STORE_DIR";
/// Replaces `/` for the paths of a nix-darwin host.
pub const DARWIN_ROOT: &str = "SAFE_SWITCH_TEST_DARWIN_ROOT";
/// Replaces `/bin/launchctl`.
pub const LAUNCHCTL: &str = "SAFE_SWITCH_TEST_LAUNCHCTL";
/// Replaces `/` for the state file and the profile of a system-manager
/// host.
pub const SYSTEM_MANAGER_ROOT: &str = "SAFE_SWITCH_TEST_SYSTEM_MANAGER_ROOT";
/// Replaces `/` for the kernel state a plan reads.
pub const KERNEL_ROOT: &str = "SAFE_SWITCH_TEST_KERNEL_ROOT";
/// Every test-only variable, for handing them on to an isolated apply.
pub const ALL: &[&str] =
    &[SYSTEM_POLICY, PROC_CGROUP, STATE_DIR, STORE_DIR, DARWIN_ROOT, LAUNCHCTL, SYSTEM_MANAGER_ROOT, KERNEL_ROOT];

/// Whether this build honours the test-only variables.
pub const ENABLED: bool = cfg!(debug_assertions);

/// The path a test-only variable names, in a debug build; `None` in a
/// release build, and when the variable is unset or empty.
pub fn path(name: &str) -> Option<PathBuf> {
    gated(ENABLED, std::env::var_os(name))
}

fn gated(enabled: bool, value: Option<OsString>) -> Option<PathBuf> {
    if !enabled {
        return None;
    }
    value.filter(|v| !v.is_empty()).map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_build_ignores_the_variables() {
        let set = Some(OsString::from("/tmp/policy.toml"));
        assert_eq!(gated(false, set.clone()), None);
        assert_eq!(gated(true, set), Some(PathBuf::from("/tmp/policy.toml")));
        assert_eq!(gated(true, Some(OsString::new())), None);
        assert_eq!(gated(true, None), None);
        // The switch itself follows the build profile.
        assert_eq!(ENABLED, cfg!(debug_assertions));
    }
}
