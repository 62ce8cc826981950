//! The activation script without its launchd sections, in the two parts
//! that run before and after the launchd operations: the fixture
//! generations' `activate` (nix-darwin's layout) and the variants of the
//! sections nix-darwin has shipped, found by their markers; scripts whose
//! markers are not where nix-darwin puts them are refused.

use std::path::Path;

use launchd_live::activation::{NixDaemon, cut};
use launchd_plan::RemoteLogin;
use testbed::launchd::{DarwinGeneration, DarwinJob, STEPS_AFTER, STEPS_BEFORE};

fn generation() -> DarwinGeneration {
    DarwinGeneration::new("a", "alice")
        .job(DarwinJob::daemon("org.nixos.nix-daemon", "exec sleep 1"))
        .job(DarwinJob::user_agent("org.nixos.backup", "exec sleep 1"))
}

fn script(g: &DarwinGeneration) -> String {
    g.activate(Path::new("/nix/store/x-darwin-system-a"), Path::new("/"), Path::new("/tmp/markers"))
}

fn fixture() -> String {
    script(&generation())
}

/// The lines of `text` that append a step's name to the marker file.
fn steps(text: &str) -> Vec<&str> {
    text.lines().filter_map(|l| l.strip_prefix("echo ")?.strip_suffix(" >> '/tmp/markers'")).collect()
}

#[test]
fn the_launchd_steps_and_the_end_are_taken_out_and_the_rest_kept() {
    let text = fixture();
    let c = cut(&text).unwrap();
    assert_eq!(c.nix_daemon, NixDaemon::Managed);
    assert_eq!(c.users, ["alice"]);
    assert_eq!(c.remote_login, None);
    for part in [&c.before, &c.after] {
        for gone in ["launchctl", "/run/current-system", "setting up launchd services", "sudo --user"] {
            assert!(!part.contains(gone), "{gone} left in:\n{part}");
        }
        // Both parts run with the script's header.
        assert!(part.starts_with("#!/usr/bin/env -S -i /bin/bash\n"), "{part}");
        for header in ["set -e\n", "systemConfig=/nix/store/x-darwin-system-a\n", "umask 0022\n", "cd /\n"] {
            assert!(part.contains(header), "{header} missing from:\n{part}");
        }
    }
    assert!(c.before.contains("echo \"setting up /etc...\" >&2"), "{}", c.before);
    assert!(c.after.contains("mv /etc/nix/nix.custom.conf"), "{}", c.after);
    assert!(c.after.contains("# postActivation"), "{}", c.after);
    assert_eq!(c.removed.len(), 4, "{:?}", c.removed);
}

/// nix-darwin's order: the steps before launchd in the first part, the
/// nix-daemon section and those after it in the second, each once.
#[test]
fn the_steps_after_the_launchd_sections_run_in_the_second_part() {
    let c = cut(&fixture()).unwrap();
    let before: Vec<&str> = STEPS_BEFORE.iter().map(|(n, _)| *n).collect();
    let mut after = vec!["nix-daemon"];
    after.extend(STEPS_AFTER.iter().map(|(n, _)| *n));
    assert_eq!(steps(&c.before), before);
    assert_eq!(steps(&c.after), after);
}

/// The header of the versions with a root check ends after it.
#[test]
fn the_root_check_belongs_to_the_header() {
    let check =
        "if [[ $(id -u) -ne 0 ]]; then\n  printf >&2 'error: `activate` must be run as root\\n'\n  exit 2\nfi\n";
    let text = fixture().replacen("cd /\n", &format!("cd /\n\n{check}"), 1);
    let c = cut(&text).unwrap();
    assert!(c.after.contains(check), "{}", c.after);
    assert_eq!(steps(&c.after)[0], "nix-daemon");
    let headless = fixture().replacen("cd /\n", "", 1);
    let err = cut(&headless).unwrap_err();
    assert!(err.to_string().contains("header"), "{err}");
}

/// `services.openssh.enable` appends its block to the launchd section: it
/// is taken out with it, and what it does is told.
#[test]
fn the_openssh_block_is_taken_out_and_told() {
    for (enable, wanted) in [(true, RemoteLogin::On), (false, RemoteLogin::Off)] {
        let g = DarwinGeneration { openssh: Some(enable), ..generation() };
        let c = cut(&script(&g)).unwrap();
        assert_eq!(c.remote_login, Some(wanted));
        for part in [&c.before, &c.after] {
            assert!(!part.contains("com.openssh.sshd") && !part.contains("systemsetup"), "{part}");
        }
        // Wherever it is: here, in a part that is run.
        let text = script(&g);
        let start = text.find("if [[ \"$(systemsetup").unwrap();
        let end = start + text[start..].find("fi\n").unwrap() + 3;
        let block = &text[start..end];
        let moved =
            text.replacen(block, "", 1).replacen("# postActivation\n", &format!("# postActivation\n{block}"), 1);
        let c = cut(&moved).unwrap();
        assert_eq!(c.remote_login, Some(wanted));
        assert!(!c.after.contains("com.openssh.sshd"), "{}", c.after);
        assert!(c.after.contains("the openssh step"), "{}", c.after);
        // A block that runs something else, or a second one, is refused.
        let odd_block =
            block.replacen("  launchctl", "  launchctl kickstart -k system/com.openssh.sshd\n  launchctl", 1);
        let odd = text.replacen(block, &odd_block, 1);
        let twice = moved.replacen("# preActivation\n", &format!("# preActivation\n{block}"), 1);
        for case in [odd, twice] {
            let err = cut(&case).unwrap_err();
            assert!(err.to_string().contains("openssh block"), "{err}");
        }
    }
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
    assert!(!c.before.contains("user launchd") && !c.after.contains("user launchd"), "{}{}", c.before, c.after);
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
    assert!(!c.after.contains("launchctl"), "{}", c.after);
    assert!(c.after.contains("echo time >>"), "{}", c.after);
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
