//! Saved plans on a real systemd: `plan --out` then `apply` carries the
//! plan out, and every kind of stale or edited plan is refused with exit
//! code 3 and nothing changed: a unit restarted by someone else between
//! plan and apply, a different running generation, a plan file edited by
//! hand (with and without a recomputed digest).
//!
//! Each test boots a throwaway systemd (the `testbed` crate) and runs the
//! binary inside its namespaces. These tests need root and namespaces:
//! under `CI=true` they fail when they cannot run, elsewhere they skip with
//! a message.

use std::path::PathBuf;

use plan_model::Action;
use safe_switch_cli::saved::{PlanKey, SavedPlan};
use safe_switch_cli::test_hooks;
use testbed::{Config, Generation, TestBed};

use crate::support::{BED_STATE_DIR, bed_file, daemon, path_str as s, safe_switch, safe_switch_with};

/// Generation A: sshd, a daemon that will change, and one that stays.
fn generation_a() -> Generation {
    Generation::new("a").sshd().service("changed.service", daemon("V=1")).service("steady.service", daemon("V=1"))
}

fn generation_b(a: &Generation) -> Generation {
    a.clone().renamed("b").service("changed.service", daemon("V=2"))
}

struct Setup {
    bed: TestBed,
    a: PathBuf,
    b: PathBuf,
    dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let a = generation_a();
    let bed = TestBed::boot(&Config::new(a.clone())).expect("test bed boots");
    let b = bed.build_generation(&generation_b(&a)).unwrap();
    let a_path = bed.current_generation().unwrap();
    Setup { bed, a: a_path, b, dir: tempfile::tempdir().unwrap() }
}

/// This bed's saved-plan key, as `plan --out` created it.
fn bed_key(bed: &TestBed) -> PlanKey {
    let dir = bed.run_dir().join(BED_STATE_DIR.trim_start_matches("/run/"));
    PlanKey::load(&dir).unwrap().expect("plan --out created the key")
}

/// Writes a policy file inside the bed, at `/run/policy/NAME`; returns the
/// path as the bed sees it.
fn bed_policy(bed: &TestBed, name: &str, text: &str) -> String {
    bed_file(bed, &format!("policy/{name}"), text, 0o755, 0o644)
}

/// `plan --out` into the setup's directory; returns the file.
fn save_plan(st: &Setup) -> PathBuf {
    let file = st.dir.path().join("plan.json");
    let out = safe_switch(&st.bed, &["plan", "--toplevel", s(&st.b), "--protect", "sshd", "--out", s(&file)]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let saved = SavedPlan::load(&file).unwrap();
    assert_eq!(saved.inputs.running_generation, s(&st.a));
    assert_eq!(saved.inputs.target_toplevel, s(&st.b));
    let changed = saved.plan.unit("changed.service").expect("the plan restarts changed.service");
    assert!(changed.actions.contains(&Action::Start), "{changed:?}");
    let recorded = saved.inputs.live["changed.service"].clone().expect("recorded as loaded");
    assert_eq!(recorded.active_state, "active");
    assert!(!recorded.invocation_id.is_empty());
    file
}

/// The machine is as it was before `apply`: same generation, no
/// activation, the units untouched.
fn nothing_changed(st: &Setup, before: &std::collections::BTreeMap<String, testbed::UnitState>) {
    assert_eq!(st.bed.current_generation().unwrap(), st.a, "/run/current-system moved");
    assert_eq!(st.bed.activations(), Vec::<String>::new(), "an activation script ran");
    let after = st.bed.unit_states(&["changed.service", "steady.service", "sshd.service"]).unwrap();
    assert_eq!(&after, before, "units were touched");
    assert!(!st.bed.run_dir().join("safe-switch/progress.json").exists());
}

fn states(st: &Setup) -> std::collections::BTreeMap<String, testbed::UnitState> {
    st.bed.unit_states(&["changed.service", "steady.service", "sshd.service"]).unwrap()
}

#[test]
fn a_fresh_saved_plan_is_applied_exactly() {
    testbed::require!(bed);
    let st = setup();
    let file = save_plan(&st);
    let before = states(&st);
    let out = safe_switch(&st.bed, &["apply", s(&file), "--no-isolate"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    crate::support::assert_exact("a_fresh_saved_plan_is_applied_exactly", &out);
    assert_eq!(st.bed.current_generation().unwrap(), st.b);
    let after = states(&st);
    assert_ne!(after["changed.service"].invocation_id, before["changed.service"].invocation_id, "not restarted");
    assert_eq!(after["changed.service"].active_state, "active");
    assert_eq!(after["steady.service"], before["steady.service"], "steady.service was touched");
    assert_eq!(after["sshd.service"], before["sshd.service"], "sshd.service was touched");
}

#[test]
fn a_unit_restarted_by_someone_else_makes_the_plan_stale() {
    testbed::require!(bed);
    let st = setup();
    let file = save_plan(&st);
    // changed.service is in the plan; an operator restarts it by hand.
    // (A restart of steady.service, which the plan does not name, would not
    // make the plan stale: it records only the units it acts on.)
    st.bed.systemctl(&["restart", "changed.service"]).unwrap();
    let before = states(&st);
    let out = safe_switch(&st.bed, &["apply", s(&file), "--no-isolate"]);
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert!(out.stderr.contains("the plan is stale"), "{}", out.stderr);
    assert!(out.stderr.contains("changed.service: "), "{}", out.stderr);
    assert!(out.stderr.contains("InvocationID"), "{}", out.stderr);
    assert!(out.stderr.contains("nothing was changed"), "{}", out.stderr);
    nothing_changed(&st, &before);
}

#[test]
fn a_different_running_generation_makes_the_plan_stale() {
    testbed::require!(bed);
    let st = setup();
    let file = save_plan(&st);
    // Someone else switched to another generation (here only the link
    // moves, as after `switch-to-configuration boot` plus a manual
    // re-link; the point is that the plan's starting point is gone).
    let c = st.bed.build_generation(&generation_a().renamed("c")).unwrap();
    let link = st.bed.run_dir().join("current-system");
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&c, &link).unwrap();
    let before = states(&st);
    let out = safe_switch(&st.bed, &["apply", s(&file), "--no-isolate"]);
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert!(out.stderr.contains("running generation"), "{}", out.stderr);
    assert!(out.stderr.contains(s(&c)), "{}", out.stderr);
    assert_eq!(st.bed.current_generation().unwrap(), c);
    assert_eq!(st.bed.activations(), Vec::<String>::new(), "an activation script ran");
    assert_eq!(states(&st), before, "units were touched");
}

#[test]
fn a_hand_edited_plan_file_is_refused() {
    testbed::require!(bed);
    let st = setup();
    let file = save_plan(&st);
    let before = states(&st);

    // An edit that keeps the digest: the file no longer hashes to it.
    let mut edited = SavedPlan::load(&file).unwrap();
    for u in &mut edited.plan.units {
        if u.unit == "changed.service" {
            u.actions = vec![Action::Restart];
        }
    }
    let tampered = st.dir.path().join("tampered.json");
    std::fs::write(&tampered, edited.to_json()).unwrap();
    let out = safe_switch(&st.bed, &["apply", s(&tampered), "--no-isolate"]);
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert!(out.stderr.contains("digest"), "{}", out.stderr);
    nothing_changed(&st, &before);

    // The same edit with the digest recomputed: it carries no MAC, so it
    // was not written by root on this host.
    let resealed = SavedPlan::new(edited.plan.clone(), edited.inputs.clone());
    let resealed_file = st.dir.path().join("resealed.json");
    resealed.save(&resealed_file).unwrap();
    let out = safe_switch(&st.bed, &["apply", s(&resealed_file), "--no-isolate"]);
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert!(out.stderr.contains("the plan was not written by root on this host"), "{}", out.stderr);
    nothing_changed(&st, &before);

    // Even signed with this host's key, planning again from the recorded
    // inputs gives other actions, so it is still refused.
    let key = bed_key(&st.bed);
    let mut signed = resealed.clone();
    signed.sign(&key);
    signed.save(&resealed_file).unwrap();
    let out = safe_switch(&st.bed, &["apply", s(&resealed_file), "--no-isolate"]);
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert!(out.stderr.contains("does not match a fresh plan"), "{}", out.stderr);
    assert!(out.stderr.contains("changed.service"), "{}", out.stderr);
    nothing_changed(&st, &before);

    // An edit that adds a restart of the protected sshd, resealed and
    // signed.
    let mut sneaky = SavedPlan::load(&file).unwrap();
    if let Some(u) = sneaky.plan.units.iter_mut().find(|u| u.unit == "sshd.service") {
        u.actions.push(Action::Restart);
    } else {
        sneaky.plan.units.push(plan_model::UnitPlan {
            unit: "sshd.service".to_owned(),
            actions: vec![Action::Restart],
            reasons: vec![],
            changes: vec![],
            deferral: None,
        });
        sneaky.plan.units.sort_by(|a, b| a.unit.cmp(&b.unit));
    }
    let mut sneaky = SavedPlan::new(sneaky.plan, sneaky.inputs);
    sneaky.sign(&key);
    let sneaky_file = st.dir.path().join("sneaky.json");
    sneaky.save(&sneaky_file).unwrap();
    let out = safe_switch(&st.bed, &["apply", s(&sneaky_file), "--no-isolate"]);
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert!(out.stderr.contains("sshd.service"), "{}", out.stderr);
    nothing_changed(&st, &before);

    // The untouched file still applies, so the refusals above were about
    // the edits and nothing else.
    let out = safe_switch(&st.bed, &["apply", s(&file), "--no-isolate"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_eq!(st.bed.current_generation().unwrap(), st.b);
}

#[test]
fn an_isolated_apply_checks_and_applies_in_its_transient_unit() {
    testbed::require!(bed);
    let st = setup();
    let file = save_plan(&st);
    // Stale first: the refusal (exit 3) comes back through the transient
    // unit, and nothing changed.
    st.bed.systemctl(&["restart", "changed.service"]).unwrap();
    let before = states(&st);
    let out = safe_switch(&st.bed, &["apply", s(&file)]);
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert!(out.stderr.contains("applying in the transient unit"), "{}", out.stderr);
    assert!(out.stderr.contains("the plan is stale"), "{}", out.stderr);
    nothing_changed(&st, &before);
    // A fresh plan applies the same way.
    let file = save_plan(&st);
    let out = safe_switch(&st.bed, &["apply", s(&file)]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    crate::support::assert_exact("an_isolated_apply_checks_and_applies_in_its_transient_unit", &out);
    assert_eq!(st.bed.current_generation().unwrap(), st.b);
    assert_ne!(states(&st)["changed.service"].invocation_id, before["changed.service"].invocation_id);
}

/// A bed whose generation B changes sshd too, so that protecting sshd
/// defers its restart.
fn setup_sshd_changes() -> Setup {
    let a = generation_a();
    let bed = TestBed::boot(&Config::new(a.clone())).expect("test bed boots");
    let b = bed.build_generation(&generation_b(&a).sshd_with("", "Environment=VERSION=2\n")).unwrap();
    let a_path = bed.current_generation().unwrap();
    Setup { bed, a: a_path, b, dir: tempfile::tempdir().unwrap() }
}

/// The attack of a forged plan: the recorded protections cleared, sshd's
/// deferral turned into actions, the digest recomputed. Refused for its
/// MAC; and even with a valid MAC (a plan root made with fewer
/// protections), `apply` plans with the system policy in force now, whose
/// protection of sshd the plan does not have: refused as stale.
#[test]
fn a_forged_plan_without_the_protections_is_refused() {
    testbed::require!(bed);
    let st = setup_sshd_changes();
    let system = bed_policy(&st.bed, "system.toml", "protect = [\"sshd\"]\n");
    let with_policy = [(test_hooks::SYSTEM_POLICY, system.as_str())];
    let file = st.dir.path().join("plan.json");
    let out = safe_switch_with(&st.bed, &["plan", "--toplevel", s(&st.b), "--out", s(&file)], &with_policy);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let saved = SavedPlan::load(&file).unwrap();
    let sshd = saved.plan.unit("sshd.service").expect("sshd is in the plan");
    let deferral = sshd.deferral.clone().expect("the system policy defers sshd's restart");
    assert!(sshd.actions.is_empty());
    assert!(saved.inputs.protection.selectors.iter().any(|p| p.selector == "sshd"), "{:?}", saved.inputs.protection);

    let mut forged = saved.clone();
    forged.inputs.protection.selectors.clear();
    forged.plan.protection.protected.retain(|p| p.selector != "sshd");
    for u in &mut forged.plan.units {
        if u.unit == "sshd.service" {
            u.actions = deferral.actions.clone();
            u.deferral = None;
        }
    }
    let mut forged = SavedPlan::new(forged.plan, forged.inputs);
    let forged_file = st.dir.path().join("forged.json");
    forged.save(&forged_file).unwrap();
    let before = states(&st);
    let out = safe_switch_with(&st.bed, &["apply", s(&forged_file), "--no-isolate"], &with_policy);
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert!(out.stderr.contains("the plan was not written by root on this host"), "{}", out.stderr);
    nothing_changed(&st, &before);

    forged.sign(&bed_key(&st.bed));
    forged.save(&forged_file).unwrap();
    for isolation in [&["--no-isolate"][..], &[][..]] {
        let mut args = vec!["apply", s(&forged_file)];
        args.extend_from_slice(isolation);
        let out = safe_switch_with(&st.bed, &args, &with_policy);
        assert_eq!(out.code(), Some(3), "{out:?}");
        assert!(out.stderr.contains("does not match a fresh plan"), "{}", out.stderr);
        assert!(out.stderr.contains("sshd.service"), "{}", out.stderr);
        nothing_changed(&st, &before);
    }

    // A genuine plan made before the system policy protected sshd is
    // planned again with it, and refused as stale.
    let out = safe_switch(&st.bed, &["plan", "--toplevel", s(&st.b), "--out", s(&file)]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(SavedPlan::load(&file).unwrap().plan.unit("sshd.service").unwrap().deferral.is_none());
    let out = safe_switch_with(&st.bed, &["apply", s(&file), "--no-isolate"], &with_policy);
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert!(out.stderr.contains("does not match a fresh plan"), "{}", out.stderr);
    nothing_changed(&st, &before);

    // The plan made with the policy applies, and leaves sshd alone.
    let out = safe_switch_with(&st.bed, &["plan", "--toplevel", s(&st.b), "--out", s(&file)], &with_policy);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let out = safe_switch_with(&st.bed, &["apply", s(&file), "--no-isolate"], &with_policy);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_eq!(st.bed.current_generation().unwrap(), st.b);
    assert_eq!(states(&st)["sshd.service"], before["sshd.service"], "sshd was restarted");
}

#[test]
fn a_plan_from_another_host_or_outside_the_store_is_refused() {
    testbed::require!(bed);
    let st = setup();
    let file = save_plan(&st);
    assert!(SavedPlan::load(&file).unwrap().mac.is_some(), "plan --out as root signs the plan");
    let before = states(&st);

    // Another host: another key, or none yet.
    let other = st.bed.run_dir().join("other-state");
    PlanKey::load_or_create(&other).unwrap();
    let out =
        safe_switch_with(&st.bed, &["apply", s(&file), "--no-isolate"], &[(test_hooks::STATE_DIR, "/run/other-state")]);
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert!(out.stderr.contains("the plan was not written by root on this host"), "{}", out.stderr);
    assert!(out.stderr.contains("its MAC does not match this host's key"), "{}", out.stderr);
    nothing_changed(&st, &before);
    let out =
        safe_switch_with(&st.bed, &["apply", s(&file), "--no-isolate"], &[(test_hooks::STATE_DIR, "/run/no-state")]);
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert!(out.stderr.contains("this host has no saved-plan key yet"), "{}", out.stderr);
    nothing_changed(&st, &before);

    // A target outside the Nix store could have changed since planning.
    let out = safe_switch_with(
        &st.bed,
        &["apply", s(&file), "--no-isolate"],
        &[(test_hooks::STORE_DIR, "/run/another-store")],
    );
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert!(out.stderr.contains("is not in the Nix store"), "{}", out.stderr);
    nothing_changed(&st, &before);

    // The plan itself is fine.
    let out = safe_switch(&st.bed, &["apply", s(&file), "--no-isolate"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
}
