//! The activation script without its launchd sections: the fixture
//! generations' `activate` (nix-darwin's layout) and the variants of the
//! sections nix-darwin has shipped, found by their markers; scripts whose
//! markers are not where nix-darwin puts them are refused.

use std::path::Path;

use launchd_live::activation::{NixDaemon, cut};
use testbed::launchd::{DarwinGeneration, DarwinJob};

fn fixture() -> String {
    let g = DarwinGeneration::new("a", "alice")
        .job(DarwinJob::daemon("org.nixos.nix-daemon", "exec sleep 1"))
        .job(DarwinJob::user_agent("org.nixos.backup", "exec sleep 1"));
    g.activate(Path::new("/nix/store/x-darwin-system-a"), Path::new("/"), Path::new("/tmp/markers"))
}

#[test]
fn the_launchd_steps_and_the_end_are_taken_out_and_the_rest_kept() {
    let text = fixture();
    let c = cut(&text).unwrap();
    assert_eq!(c.nix_daemon, NixDaemon::Managed);
    assert_eq!(c.users, ["alice"]);
    for gone in ["launchctl", "/run/current-system", "setting up launchd services", "sudo --user"] {
        assert!(!c.script.contains(gone), "{gone} left in:\n{}", c.script);
    }
    for kept in ["echo \"setting up /etc...\" >&2", "mv /etc/nix/nix.custom.conf", "# postActivation", "set -e"] {
        assert!(c.script.contains(kept), "{kept} missing from:\n{}", c.script);
    }
    assert!(c.script.starts_with("#!/usr/bin/env -S -i /bin/bash\n"));
    assert_eq!(c.removed.len(), 4, "{:?}", c.removed);
}

/// nix-darwin's userLaunchd section in the version that starts it with
/// its `echo`, and whose comment is inside (`modules/system/launchd.nix`).
#[test]
fn a_user_section_that_starts_with_its_echo_is_cut_too() {
    let text = fixture().replace(
        "# Set up user launchd services in ~/Library/LaunchAgents\necho \"setting up user launchd services...\"\n",
        "echo \"setting up user launchd services...\"\n\n# Set up user launchd services in ~/Library/LaunchAgents\n",
    );
    let c = cut(&text).unwrap();
    assert!(!c.script.contains("user launchd"), "{}", c.script);
}

#[test]
fn the_unmanaged_nix_daemon_section_is_recognised() {
    let text = fixture();
    let start = text.find("# Follow up on the `/etc/nix/nix.custom.conf` check.").unwrap();
    let wait = text.find("waiting for nix-daemon").unwrap();
    let end = wait + text[wait..].find("done\n").unwrap() + "done\n".len();
    let unmanaged = "# Restore unmanaged Nix daemon if present\nunmanagedNixProfile=/nix/var/nix/profiles/default\nif [[\n  -e /run/current-system/Library/LaunchDaemons/org.nixos.nix-daemon.plist\n  && -e $unmanagedNixProfile/Library/LaunchDaemons/org.nixos.nix-daemon.plist\n]]; then\n  printf >&2 'restoring unmanaged Nix daemon...\\n'\n  cp \\\n    \"$unmanagedNixProfile/Library/LaunchDaemons/org.nixos.nix-daemon.plist\" \\\n    /Library/LaunchDaemons\n  launchctl load -w /Library/LaunchDaemons/org.nixos.nix-daemon.plist\nfi\n";
    let text = format!("{}{unmanaged}{}", &text[..start], &text[end..]);
    let c = cut(&text).unwrap();
    assert_eq!(c.nix_daemon, NixDaemon::Unmanaged);
    assert!(!c.script.contains("launchctl"), "{}", c.script);
}

#[test]
fn scripts_without_the_markers_in_order_are_refused() {
    let text = fixture();
    let cases = [
        text.replace("# Set up launchd services in /Library/LaunchAgents and /Library/LaunchDaemons\n", ""),
        text.replace("# Follow up on the `/etc/nix/nix.custom.conf` check.\n", ""),
        text.replace("# Make this configuration the current configuration.\n", ""),
        text.replace("launchctl kill HUP system/org.nixos.nix-daemon\n", ""),
        format!("{text}\n# Set up launchd services in /Library/LaunchAgents and /Library/LaunchDaemons\n"),
        text.replace("# preActivation\n", "# Make this configuration the current configuration.\n"),
        "#!/bin/sh\necho hello\n".to_owned(),
    ];
    for (i, case) in cases.iter().enumerate() {
        let err = cut(case).unwrap_err();
        assert!(err.to_string().contains("refusing to run it, nothing was changed"), "case {i}: {err}");
    }
}
