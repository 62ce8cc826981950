//! Failures of `nix` whose cause is the host's Nix set-up rather than the
//! flakes: no build users, an unreachable daemon, a store this user cannot
//! write, no sandbox, flakes switched off. Each is recognised in Nix's own
//! error report and named with the setting that fixes it, so that a user
//! who meets Nix for the first time through safe-switch knows where to
//! look.

use std::fmt;

/// A cause of a failing `nix` in the host's Nix set-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NixSetup {
    /// `build-users-group` names a group that does not exist or has no
    /// members (Debian's `nix-bin` run as root, without
    /// `nix-setup-systemd`).
    BuildUsers,
    /// The store is the Nix daemon's, and its socket cannot be reached.
    Daemon,
    /// This user may not write to the store or Nix's state directory.
    StorePermissions,
    /// Nix could not set up its build sandbox (no user, mount or PID
    /// namespaces, as in many containers).
    Sandbox,
    /// Flakes or the `nix` command are switched off or unknown to this Nix.
    ExperimentalFeatures,
}

impl NixSetup {
    /// Recognises a set-up problem in Nix's standard error. Only Nix's own
    /// error report counts: warnings before it and the build log lines it
    /// quotes (`> ...`) are left out, so that a builder's own failure is
    /// never taken for the host's.
    pub fn diagnose(stderr: &str) -> Option<NixSetup> {
        let plain = crate::runner::strip_ansi(stderr);
        let report: Vec<&str> = plain
            .lines()
            .skip_while(|l| !l.starts_with("error:"))
            .filter(|l| !l.trim_start().starts_with('>') && !l.starts_with("warning:"))
            .collect();
        let any = |needles: &[&str]| report.iter().any(|l| needles.iter().any(|n| l.contains(n)));
        if any(&[
            "experimental Nix feature 'flakes' is disabled",
            "experimental Nix feature 'nix-command' is disabled",
            "unrecognised flag '--extra-experimental-features'",
            "unknown setting 'experimental-features'",
        ]) {
            return Some(NixSetup::ExperimentalFeatures);
        }
        if any(&["specified in 'build-users-group' does not exist", "the build users group '"]) {
            return Some(NixSetup::BuildUsers);
        }
        if any(&["cannot connect to socket at '", "cannot open connection to remote store 'daemon'"]) {
            return Some(NixSetup::Daemon);
        }
        if any(&[
            "unable to start build process",
            "cloning builder process",
            "cannot perform a sandboxed build",
            "sandboxing builds is not supported",
            "while setting up the build environment",
            "setgroups failed",
        ]) {
            return Some(NixSetup::Sandbox);
        }
        let store_line = |l: &&str| {
            l.contains("/nix/")
                && ["Permission denied", "Operation not permitted", "Read-only file system", "writable"]
                    .iter()
                    .any(|n| l.contains(n))
        };
        if report.iter().any(|l| l.starts_with("error:") && store_line(l)) {
            return Some(NixSetup::StorePermissions);
        }
        None
    }

    /// What is wrong, in one line.
    pub fn cause(self) -> &'static str {
        match self {
            NixSetup::BuildUsers => {
                "this host's Nix builds as the users of the group named by `build-users-group` \
                 (`nixbld` by default for root), and that group does not exist or has no members"
            }
            NixSetup::Daemon => "this host's Nix uses the Nix daemon, and its socket cannot be reached",
            NixSetup::StorePermissions => "this user cannot write to the Nix store or Nix's state directory (/nix)",
            NixSetup::Sandbox => {
                "Nix cannot set up its build sandbox here (it needs user, mount and PID namespaces, \
                 which containers often deny)"
            }
            NixSetup::ExperimentalFeatures => "this Nix does not have flakes and the `nix` command enabled",
        }
    }

    /// The setting or step that fixes it, in one line.
    pub fn fix(self) -> &'static str {
        match self {
            NixSetup::BuildUsers => {
                "create the group and its build users, as Debian's nix-setup-systemd package does, \
                 or, for a single-user store used by root, set `build-users-group =` (empty) in \
                 /etc/nix/nix.conf"
            }
            NixSetup::Daemon => {
                "start the daemon (`systemctl start nix-daemon`; Debian's nix-setup-systemd \
                 package installs it) and let this user reach its socket (Debian: the nix-users \
                 group), or, as root, use the store directly: `store = local` in /etc/nix/nix.conf \
                 and NIX_REMOTE unset"
            }
            NixSetup::StorePermissions => {
                "run safe-switch as root, or through the Nix daemon (`store = daemon` in \
                 /etc/nix/nix.conf or NIX_REMOTE=daemon, with the daemon running)"
            }
            NixSetup::Sandbox => "set `sandbox = false` in /etc/nix/nix.conf, or allow these namespaces",
            NixSetup::ExperimentalFeatures => {
                "use Nix 2.4 or later and set `experimental-features = nix-command flakes` in \
                 /etc/nix/nix.conf"
            }
        }
    }
}

impl fmt::Display for NixSetup {
    /// Two lines: `note: <cause>` and `help: <fix>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "note: {}\nhelp: {}", self.cause(), self.fix())
    }
}

/// Nix's report followed, when it shows a set-up problem, by its cause and
/// fix on lines of their own.
pub(crate) fn report_with_setup(stderr: &str) -> String {
    match NixSetup::diagnose(stderr) {
        None => stderr.to_owned(),
        Some(setup) => {
            let sep = if stderr.is_empty() || stderr.ends_with('\n') { "" } else { "\n" };
            format!("{stderr}{sep}{setup}")
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    // Nix 2.8's reports, as it printed them on a Debian machine.

    /// Debian's nix-bin as root, without `nix-setup-systemd`: warnings
    /// while opening the store and trying the binary cache, then the
    /// error when a build is due.
    const NO_BUILD_USERS: &str = "warning: the group 'nixbld' specified in 'build-users-group' does not exist\n\
        warning: error: unable to download 'https://cache.nixos.org/nix-cache-info': Couldn't resolve host name (6); retrying in 305 ms\n\
        warning: unable to download 'https://cache.nixos.org/nix-cache-info': Couldn't resolve host name (6)\n\
        warning: the group 'nixbld' specified in 'build-users-group' does not exist\n\
        error: the group 'nixbld' specified in 'build-users-group' does not exist\n";

    /// `NIX_REMOTE=daemon` without a daemon.
    const NO_DAEMON: &str =
        "error: cannot connect to socket at '/nix/var/nix/daemon-socket/socket': No such file or directory\n";

    /// A user other than root, with a root-owned store and no daemon.
    const NOT_ROOT: &str =
        "error: could not set permissions on '/nix/var/nix/profiles/per-user' to 755: Operation not permitted\n";

    /// /nix mounted read-only.
    const READ_ONLY: &str = "error: remounting /nix/store writable: Invalid argument\n";

    /// `sandbox = true` and `sandbox-fallback = false` in a user namespace
    /// where setgroups is denied (the helper's error is coloured).
    const NO_SANDBOX: &str = "\u{1b}[31;1merror:\u{1b}[0m setgroups failed: \u{1b}[35;1mOperation not permitted\u{1b}[0m\n\
        error: unable to start build process\n";

    /// `nix build` without `--extra-experimental-features`.
    const NO_FLAKES: &str = "error: experimental Nix feature 'nix-command' is disabled; use \
        '--extra-experimental-features nix-command' to override\n";

    /// A builder that fails on its own: the host's set-up is fine.
    const BUILDER_FAILED: &str = "error: builder for '/nix/store/cgpvw9grc9lslz24zj4wqc185l85fg5m-probe.drv' failed with exit code 1;\n       \
        last 2 log lines:\n       \
        > mkdir: cannot create directory '/nix/store/x': Permission denied\n       \
        > error: unable to start build process\n       \
        For full logs, run 'nix log /nix/store/cgpvw9grc9lslz24zj4wqc185l85fg5m-probe.drv'.\n";

    #[test]
    fn each_set_up_problem_is_recognised_in_nix_s_own_words() {
        assert_eq!(NixSetup::diagnose(NO_BUILD_USERS), Some(NixSetup::BuildUsers));
        assert_eq!(NixSetup::diagnose(NO_DAEMON), Some(NixSetup::Daemon));
        assert_eq!(NixSetup::diagnose(NOT_ROOT), Some(NixSetup::StorePermissions));
        assert_eq!(NixSetup::diagnose(READ_ONLY), Some(NixSetup::StorePermissions));
        assert_eq!(NixSetup::diagnose(NO_SANDBOX), Some(NixSetup::Sandbox));
        assert_eq!(NixSetup::diagnose(NO_FLAKES), Some(NixSetup::ExperimentalFeatures));
    }

    #[test]
    fn failures_of_the_flakes_themselves_are_not_set_up_problems() {
        assert_eq!(NixSetup::diagnose(BUILDER_FAILED), None);
        assert_eq!(NixSetup::diagnose("error: attribute 'noSuchPackage' missing\n"), None);
        // A warning about build users on a command that failed for another
        // reason does not make it a build-users problem.
        let lock_failed = "warning: the group 'nixbld' specified in 'build-users-group' does not exist\n\
            error: getting status of '/srv/ci/flake.nix': No such file or directory\n";
        assert_eq!(NixSetup::diagnose(lock_failed), None);
        assert_eq!(NixSetup::diagnose(""), None);
    }

    #[test]
    fn the_cause_and_the_setting_follow_nix_s_report() {
        let text = report_with_setup(NO_BUILD_USERS);
        assert!(text.starts_with(NO_BUILD_USERS), "{text}");
        let added: Vec<&str> = text[NO_BUILD_USERS.len()..].lines().collect();
        assert_eq!(added.len(), 2, "{text}");
        assert!(added[0].starts_with("note: ") && added[0].contains("`build-users-group`"), "{text}");
        assert!(added[1].starts_with("help: ") && added[1].contains("nix-setup-systemd"), "{text}");
        assert!(added[1].contains("`build-users-group =`"), "{text}");
        assert!(
            report_with_setup(NO_SANDBOX)
                .ends_with("set `sandbox = false` in /etc/nix/nix.conf, or allow these namespaces")
        );
        assert_eq!(report_with_setup("error: attribute 'x' missing\n"), "error: attribute 'x' missing\n");
        assert!(report_with_setup(NO_DAEMON.trim_end()).contains("such file or directory\nnote: "));
    }
}
