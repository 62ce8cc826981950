//! The policy cannot be weakened from the command line, offline: the
//! system policy applies whatever `--policy` adds, `--on-protected` only
//! makes the mode stricter, `--cgroup-file` cannot replace the caller's
//! own cgroup, and policy files that others could change, or that are not
//! regular files, are refused (a FIFO does not hang the run).
//!
//! The binary runs `diff` on golden cases, with the system policy
//! redirected through the debug-build-only `SAFE_SWITCH_TEST_SYSTEM_POLICY`
//! (see `cli/src/test_hooks.rs`). The same attacks against `switch` and
//! `apply` on a real systemd are in `apply_saved.rs` and `live_switch.rs`.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use safe_switch_cli::test_hooks;

use crate::support::{BIN, NOWHERE, golden as case, text, write_policy as write};

/// `diff old new --live live.json ARGS` in `case`, with `system` as the
/// system policy, no caller cgroup unless `cgroup` names one.
fn diff(case: &Path, system: &Path, cgroup: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(["diff", "old", "new", "--live", "live.json"])
        .args(args)
        .current_dir(case)
        .env("NO_COLOR", "1")
        .env(test_hooks::SYSTEM_POLICY, system)
        .env(test_hooks::PROC_CGROUP, cgroup.unwrap_or(Path::new(NOWHERE)));
    let child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    wait_bounded(child, Duration::from_secs(30))
}

/// Waits for `child` at most `limit`; a run that takes longer (a FIFO
/// read) is killed and fails the test.
fn wait_bounded(mut child: std::process::Child, limit: Duration) -> Output {
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            child.kill().unwrap();
            let _ = child.wait();
            panic!("safe-switch did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// The units a `--json` plan refuses, and whether it is refused.
fn refused(out: &Output) -> Vec<String> {
    let plan: plan_model::Plan = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan.protection.refused, !plan.protection.refusals.is_empty());
    plan.protection.refusals.iter().map(|r| r.unit.clone()).collect()
}

/// A directory for policy files that passes root's checks: private, in a
/// sticky /tmp.
fn policy_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

const REFUSE_NGINX: &str = "protect = [\"nginx\"]\nmode = \"refuse\"\n";

#[test]
fn an_added_policy_never_replaces_the_system_policy() {
    let dir = policy_dir();
    let system = write(&dir.path().join("system.toml"), REFUSE_NGINX);
    let empty = write(&dir.path().join("empty.toml"), "");
    let c = case("protect-direct-changed");
    let out = diff(&c, &system, None, &["--policy", empty.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
    assert!(stdout.contains("protection (mode: refuse):"), "{stdout}");
    assert!(stdout.contains(&format!("nginx [policy {}]", system.display())), "{stdout}");
    let out = diff(&c, &system, None, &["--policy", empty.to_str().unwrap(), "--json"]);
    assert_eq!(refused(&out), ["nginx.service"]);

    // An added policy's protections and stricter mode add to a system
    // policy in defer mode.
    let system = write(&dir.path().join("system-defer.toml"), "protect = [\"nginx\"]\n");
    let added = write(&dir.path().join("added.toml"), "protect = [\"sshd\"]\nmode = \"refuse\"\n");
    let out = diff(&c, &system, None, &["--policy", added.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(3), "{:?}", text(&out));
    assert_eq!(refused(&out), ["nginx.service", "sshd.service"]);
    // Naming the system policy again loads it once.
    let out = diff(&c, &system, None, &["--policy", system.to_str().unwrap()]);
    let (stdout, _) = text(&out);
    assert_eq!(stdout.matches("nginx [policy").count(), 1, "{stdout}");
}

#[test]
fn on_protected_defer_does_not_weaken_a_refusing_policy() {
    let dir = policy_dir();
    let system = write(&dir.path().join("system.toml"), REFUSE_NGINX);
    let c = case("protect-direct-changed");
    let out = diff(&c, &system, None, &["--on-protected", "defer"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
    assert!(stdout.contains("protection (mode: refuse):"), "{stdout}");
    assert!(stderr.contains("note: --on-protected defer does not apply"), "{stderr}");
    assert!(stderr.contains("says mode = \"refuse\""), "{stderr}");
    // `refuse` on the command line makes a deferring policy stricter.
    let system = write(&dir.path().join("defer.toml"), "protect = [\"nginx\"]\nmode = \"defer\"\n");
    let out = diff(&c, &system, None, &["--on-protected", "refuse"]);
    assert_eq!(out.status.code(), Some(3), "{:?}", text(&out));
}

#[test]
fn an_implicit_protection_is_off_only_when_every_policy_says_so() {
    let dir = policy_dir();
    let c = case("protect-self-cgroup-service");
    let cgroup = c.join("cgroup");
    let system = write(&dir.path().join("system.toml"), "[implicit]\ncaller = false\n");
    let deferred = |out: &Output| {
        let plan: plan_model::Plan = serde_json::from_slice(&out.stdout).unwrap();
        plan.units.iter().filter(|u| u.deferral.is_some()).map(|u| u.unit.clone()).collect::<Vec<_>>()
    };
    let out = diff(&c, &system, Some(&cgroup), &["--json"]);
    assert!(deferred(&out).is_empty(), "the system policy switched it off: {:?}", text(&out));
    // An added policy that keeps it does not let the system policy
    // switch it off alone.
    let added = write(&dir.path().join("added.toml"), "protect = []\n");
    let out = diff(&c, &system, Some(&cgroup), &["--policy", added.to_str().unwrap(), "--json"]);
    assert_eq!(deferred(&out), ["gitlab-runner.service"]);
}

#[test]
fn a_cgroup_file_cannot_replace_the_callers_own_cgroup() {
    let c = case("protect-self-cgroup-service");
    let own = c.join("cgroup");
    let none = Path::new(NOWHERE);
    let protected = diff(&c, none, Some(&own), &[]);
    let (stdout, _) = text(&protected);
    assert!(stdout.contains("gitlab-runner.service [implicit: holds this process"), "{stdout}");
    for file in ["/dev/null", own.to_str().unwrap()] {
        let out = diff(&c, none, Some(&own), &["--cgroup-file", file]);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        assert_eq!(stdout, text(&protected).0, "--cgroup-file {file} changed the plan");
        assert!(stderr.contains(&format!("warning: ignoring --cgroup-file {file}")), "{stderr}");
        assert!(stderr.contains("only safe-switch's own hand-over file"), "{stderr}");
    }
}

#[test]
fn a_fifo_as_the_system_policy_is_an_error_not_a_hang() {
    let dir = policy_dir();
    let fifo = dir.path().join("policy.toml");
    rustix::fs::mkfifoat(rustix::fs::CWD, &fifo, rustix::fs::Mode::from_raw_mode(0o644)).unwrap();
    let out = diff(&case("protect-direct-changed"), &fifo, None, &[]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("policy file {}: not a regular file (a FIFO)", fifo.display())), "{stderr}");
}

#[test]
fn as_root_a_policy_others_could_change_is_refused() {
    testbed::require!(root);
    let dir = policy_dir();
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let system = write(&open.join("policy.toml"), REFUSE_NGINX);
    let c = case("protect-direct-changed");
    let out = diff(&c, &system, None, &[]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("refusing the policy file {}", system.display())), "{stderr}");
    assert!(
        stderr.contains(&format!("the directory {} is writable by others (mode 0777)", open.display())),
        "{stderr}"
    );
    // The same for `--policy`, and for a system policy removed from a
    // directory others may write.
    let good = write(&dir.path().join("good.toml"), "");
    let out = diff(&c, &good, None, &["--policy", system.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{:?}", text(&out));
    let out = diff(&c, &open.join("missing.toml"), None, &[]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("refusing the policy directory"), "{stderr}");
}
