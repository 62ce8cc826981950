//! Saved plans on a nix-darwin host, end to end on the launchd simulator
//! (see `darwin_switch`): `plan --out` then `apply` carries the plan out,
//! isolated as a launchd job; a plan made stale by a job restarted since,
//! or edited by hand (with and without a recomputed digest), is refused
//! with exit code 3 and nothing changed; a plan made for the other service
//! manager is refused. Signing needs root (the key is root's), so these
//! tests do too.

use std::path::{Path, PathBuf};

use safe_switch_cli::saved::{self, SavedPlan};

use crate::darwin_switch::{Mac, generations, other_steps, text};

const RUNNER: &str = "org.nixos.gitlab-runner";
const EXPORTER: &str = "org.nixos.node-exporter";

/// A Mac running generation A, generation B written, and a plan to B
/// that protects the runner saved (and signed) in `plan.json`.
fn saved_plan() -> (Mac, PathBuf, PathBuf, PathBuf) {
    let mac = Mac::new();
    let (a, b) = generations(&mac.user);
    let old = mac.boot(&a);
    let new = mac.write(&b);
    let file = mac.dir.path().join("plan.json");
    let out = mac.safe_switch(&[
        "plan",
        "--toplevel",
        new.to_str().unwrap(),
        "--protect",
        "gitlab-runner",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.code(), Some(0), "{}", text(&out));
    (mac, old, new, file)
}

/// Nothing was changed: no activation, the running generation, the jobs.
fn nothing_changed(mac: &Mac, old: &Path, pids: &[(&str, u32)]) {
    assert!(mac.markers().is_empty(), "an activation ran: {:?}", mac.markers());
    assert_eq!(mac.current_system(), old);
    for (label, pid) in pids {
        assert_eq!(mac.pid(label), Some(*pid), "{label}");
    }
}

#[test]
fn a_saved_plan_is_applied_exactly_and_isolated() {
    testbed::require!(root);
    let (mac, old, new, file) = saved_plan();
    let runner = mac.pid(RUNNER).unwrap();
    let exporter = mac.pid(EXPORTER).unwrap();
    let saved = SavedPlan::load(&file).unwrap();
    assert!(saved.mac.is_some(), "signed as root");
    assert_eq!(saved.inputs.running_generation, old.to_str().unwrap());
    assert_eq!(saved.inputs.target_toplevel, new.to_str().unwrap());
    let jobs = &saved.inputs.launchd.as_ref().expect("a launchd plan").jobs;
    assert_eq!(jobs["system/org.nixos.gitlab-runner"].as_ref().and_then(|j| j.pid), Some(runner));
    assert_eq!(jobs["system/org.nixos.node-exporter"].as_ref().and_then(|j| j.runs), Some(1));
    assert_eq!(jobs["system/org.nixos.docker"], None, "not loaded yet");
    assert!(saved.inputs.live.is_empty());
    assert_eq!(saved.inputs.protection.selectors[0].selector, "gitlab-runner");
    nothing_changed(&mac, &old, &[(RUNNER, runner), (EXPORTER, exporter)]);

    let out = mac.safe_switch(&["apply", file.to_str().unwrap()]);
    assert_eq!(out.code(), Some(0), "{}", text(&out));
    assert!(out.stderr.contains("applying in the launchd job system/safe-switch."), "{}", text(&out));
    assert!(out.stderr.contains("applying the saved plan"), "{}", text(&out));
    assert!(out.stdout.contains("org.nixos.gitlab-runner: restart deferred"), "{}", text(&out));
    assert_eq!(mac.current_system(), new);
    assert_eq!(mac.pid(RUNNER), Some(runner), "the protected runner kept its process");
    assert_ne!(mac.pid(EXPORTER), Some(exporter), "node-exporter was reloaded");
    assert!(mac.pid("org.nixos.docker").is_some());
    assert_eq!(mac.markers(), other_steps());
    // Its deferral is recorded, as a switch's.
    let pending = mac.safe_switch(&["pending"]);
    assert_eq!(pending.code(), Some(3), "{}", text(&pending));
    assert!(pending.stdout.contains("org.nixos.gitlab-runner: restart deferred"), "{}", text(&pending));
}

#[test]
fn a_plan_made_stale_by_a_restarted_job_is_refused() {
    testbed::require!(root);
    let (mac, old, _, file) = saved_plan();
    // node-exporter is in the plan; an operator restarts it by hand.
    assert!(mac.sim.run(&["kickstart", "-k", "system/org.nixos.node-exporter"]).unwrap().success());
    let runner = mac.pid(RUNNER).unwrap();
    let exporter = mac.sim.wait_running("system/org.nixos.node-exporter").unwrap();
    let out = mac.safe_switch(&["apply", file.to_str().unwrap(), "--no-isolate"]);
    assert_eq!(out.code(), Some(3), "{}", text(&out));
    assert!(out.stderr.contains("the plan is stale"), "{}", text(&out));
    assert!(out.stderr.contains("system/org.nixos.node-exporter: pid"), "{}", text(&out));
    assert!(out.stderr.contains("runs 1 -> 2 (restarted by someone else)"), "{}", text(&out));
    assert!(out.stderr.contains("nothing was changed"), "{}", text(&out));
    nothing_changed(&mac, &old, &[(RUNNER, runner), (EXPORTER, exporter)]);
}

#[test]
fn an_edited_plan_is_refused() {
    testbed::require!(root);
    let (mac, old, _, file) = saved_plan();
    let runner = mac.pid(RUNNER).unwrap();
    let exporter = mac.pid(EXPORTER).unwrap();
    let saved = SavedPlan::load(&file).unwrap();
    // The protected runner's deferred restart turned into an action.
    let mut edited = saved.clone();
    let unit = edited.plan.units.iter_mut().find(|u| u.unit == RUNNER).unwrap();
    unit.actions = unit.deferral.take().unwrap().actions;
    let write = |plan: &SavedPlan| std::fs::write(&file, plan.to_json()).unwrap();

    write(&edited);
    let out = mac.safe_switch(&["apply", file.to_str().unwrap(), "--no-isolate"]);
    assert_eq!(out.code(), Some(3), "{}", text(&out));
    assert!(out.stderr.contains("the plan file was changed after it was written"), "{}", text(&out));
    nothing_changed(&mac, &old, &[(RUNNER, runner), (EXPORTER, exporter)]);

    // With its digest made again: the MAC, which only root's key makes,
    // no longer matches.
    edited.digest = saved::digest(&edited);
    write(&edited);
    let out = mac.safe_switch(&["apply", file.to_str().unwrap(), "--no-isolate"]);
    assert_eq!(out.code(), Some(3), "{}", text(&out));
    assert!(out.stderr.contains("not written by root on this host"), "{}", text(&out));
    nothing_changed(&mac, &old, &[(RUNNER, runner), (EXPORTER, exporter)]);

    // Its recorded protection cleared and signed again with the key:
    // planned again without it, the runner is restarted, which the file
    // does not say.
    let mut cleared = saved.clone();
    cleared.inputs.protection.selectors.clear();
    let mut cleared = SavedPlan::new(cleared.plan, cleared.inputs);
    cleared.sign(&saved::PlanKey::load(&mac.dir.path().join("state")).unwrap().unwrap());
    write(&cleared);
    let out = mac.safe_switch(&["apply", file.to_str().unwrap(), "--no-isolate"]);
    assert_eq!(out.code(), Some(3), "{}", text(&out));
    assert!(out.stderr.contains("does not match a fresh plan"), "{}", text(&out));
    assert!(out.stderr.contains(RUNNER), "{}", text(&out));
    nothing_changed(&mac, &old, &[(RUNNER, runner), (EXPORTER, exporter)]);
}

#[test]
fn a_plan_for_the_other_service_manager_is_refused() {
    testbed::require!(root);
    let (mac, old, _, file) = saved_plan();
    let saved = SavedPlan::load(&file).unwrap();
    // On a host that is not a nix-darwin one (no /run/current-system
    // there), the systemd path refuses it before anything else.
    let elsewhere = tempfile::tempdir().unwrap();
    let mut cmd = mac.command(&["apply", file.to_str().unwrap(), "--no-isolate"]);
    cmd.env(safe_switch_cli::test_hooks::DARWIN_ROOT, elsewhere.path());
    let out = testbed::exec::run(&mut cmd, std::time::Duration::from_secs(60)).unwrap();
    assert_eq!(out.code(), Some(3), "{}", text(&out));
    assert!(out.stderr.contains("made for launchd (a nix-darwin host), and this host runs systemd"), "{}", text(&out));

    // A systemd plan on the Mac.
    let mut systemd = saved.clone();
    systemd.inputs.launchd = None;
    let systemd = SavedPlan::new(systemd.plan, systemd.inputs);
    std::fs::write(&file, systemd.to_json()).unwrap();
    let out = mac.safe_switch(&["apply", file.to_str().unwrap(), "--no-isolate"]);
    assert_eq!(out.code(), Some(3), "{}", text(&out));
    assert!(out.stderr.contains("made for systemd, and this host runs nix-darwin"), "{}", text(&out));
    assert!(mac.markers().is_empty());
    assert_eq!(mac.current_system(), old);
}
