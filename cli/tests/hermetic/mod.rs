//! What every test that runs the binary shares: runs that do not depend
//! on the machine.
//!
//! The binary under test is a debug build, which reads the test-only
//! variables of `safe_switch_cli::test_hooks`: [`hermetic`] points the
//! system policy at a file that does not exist, so a machine with
//! `/etc/safe-switch/policy.toml` gives the same results as one without;
//! [`in_bed`] also keeps the saved-plan key inside a test bed (its `/run`)
//! and takes the bed's generations directory as the Nix store.

#![allow(dead_code, reason = "each test binary uses a part")]

use std::path::Path;
use std::process::Command;

use safe_switch_cli::test_hooks;

/// A path that does not exist.
pub(crate) const NOWHERE: &str = "/nonexistent/safe-switch-test";

/// Where [`in_bed`] keeps the saved-plan key, inside the bed.
pub(crate) const BED_STATE_DIR: &str = "/run/safe-switch-state";

/// No system policy for this run of the binary.
pub(crate) fn hermetic(cmd: &mut Command) -> &mut Command {
    // Reports are written as sudo's caller when these are set.
    cmd.env(test_hooks::SYSTEM_POLICY, NOWHERE).env_remove("SUDO_UID").env_remove("SUDO_GID")
}

/// A run inside `bed` (a command from `TestBed::command`): no system
/// policy, the saved-plan key in the bed's `/run`, and the bed's
/// generations as the Nix store.
pub(crate) fn in_bed<'a>(cmd: &'a mut Command, bed: &testbed::TestBed) -> &'a mut Command {
    hermetic(cmd).env(test_hooks::STATE_DIR, BED_STATE_DIR).env(test_hooks::STORE_DIR, generations(bed))
}

/// The directory the bed builds its generations in.
pub(crate) fn generations(bed: &testbed::TestBed) -> std::path::PathBuf {
    bed.current_generation().ok().and_then(|g| g.parent().map(Path::to_path_buf)).unwrap_or_default()
}
