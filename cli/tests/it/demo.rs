//! The demo behind `scripts/demo` (`testbed::demo`), run with this
//! binary: it must show the contrast it claims. Without protection the
//! switch restarts sshd and the runner and kills the CI build (the SSH
//! session survives that too, because of sshd's `KillMode=process`, which
//! the demo says); with `--protect sshd,gitlab-runner` the PIDs, the build
//! and the session survive. The plan is printed once.
//!
//! Needs root and namespaces (two test beds): under `CI=true` it fails
//! when it cannot run, elsewhere it skips with a message.

use testbed::demo::{self, Options};

use crate::support::BIN;

#[test]
fn the_demo_shows_what_protection_changes() {
    testbed::require!(bed);
    let options = Options {
        safe_switch: BIN.into(),
        protect: "sshd,gitlab-runner".to_owned(),
        no_isolate: false,
        keep: false,
        bold: false,
    };
    let mut out = Vec::new();
    let outcome = demo::run(&options, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    demo::verdict(&outcome, &options.protect).unwrap_or_else(|wrong| panic!("{wrong}\n{text}"));

    let (u, p) = (&outcome.unprotected, &outcome.protected);
    for unit in ["sshd.service", "gitlab-runner.service"] {
        assert!(u.disturbed(unit), "{unit} restarted without protection\n{text}");
        assert_ne!(u.before[unit].main_pid, u.after[unit].main_pid, "{unit}: a new MainPID\n{text}");
        assert!(!p.disturbed(unit), "{unit} untouched with protection\n{text}");
    }
    assert!(u.build.is_some() && !u.build_alive, "the build is killed without protection\n{text}");
    assert!(p.build.is_some() && p.build_alive, "the build survives with protection\n{text}");
    // The session survives both, and the demo says why.
    assert!(u.session_intact() && p.session_intact(), "{text}");
    assert!(text.contains("KillMode=process"), "{text}");
    // The plan once: the protected switch's.
    assert_eq!(text.matches("protection (mode: defer):").count(), 1, "{text}");
    assert_eq!(text.matches("\nunits:\n").count(), 1, "{text}");
    assert!(text.contains("stopping the following units: collectd.service, gitlab-runner.service"), "{text}");
    let difference = text.split("== The difference").nth(1).unwrap_or_else(|| panic!("{text}"));
    let row = |name: &str| difference.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{text}"));
    assert!(row("the CI build").contains("KILLED") && row("the CI build").ends_with("still running"), "{text}");
    assert!(row("sshd.service").contains("restarted (PID "), "{text}");
}
