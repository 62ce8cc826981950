//! Direct checks of planner properties on the fixture cases, so a wrong
//! snapshot accepted by mistake still fails here.

use launchd_plan::{
    Host, Launchctl, LaunchdPlan, LiveJob, Operation, OpsError, RemoteLogin, Request, SSHD_LABEL, SSHD_PLIST,
    load_generation, load_live, operations, plan,
};
use plan_model::{Action, Mode, ProtectionSource, Rule};

use crate::fixtures::{NEW, run_case};

fn argvs(case: &str) -> Vec<Vec<String>> {
    let plan = run_case(case).unwrap();
    operations(&plan).unwrap().iter().map(Operation::argv).collect()
}

#[test]
fn changed_daemon_is_booted_out_before_its_plist_is_replaced_and_bootstrapped() {
    let plan = run_case("changed-daemon").unwrap();
    let redis = plan.plan.unit("org.nixos.redis").unwrap();
    assert_eq!(redis.actions, [Action::Restart]);
    assert_eq!(redis.reasons[0].rule, Rule::PlistChanged);
    assert_eq!(redis.reasons[0].detail.as_deref(), Some("running (pid 812)"));
    let keys: Vec<&str> = redis.changes.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(keys, ["EnvironmentVariables.REDIS_PORT", "ProgramArguments"]);
    assert!(plan.plan.unit("org.nixos.nix-daemon").is_none(), "unchanged jobs are not in the plan");

    let ops = argvs("changed-daemon");
    let pos = |argv: &[&str]| ops.iter().position(|o| o == argv).unwrap_or_else(|| panic!("{argv:?} in {ops:?}"));
    let source = format!("{NEW}/Library/LaunchDaemons/org.nixos.redis.plist");
    let installed = "/Library/LaunchDaemons/org.nixos.redis.plist";
    let bootout = pos(&["launchctl", "bootout", "system/org.nixos.redis"]);
    let install = pos(&["install", "-m", "0644", "-o", "root", "-g", "wheel", &source, installed]);
    let bootstrap = pos(&["launchctl", "bootstrap", "system", installed]);
    assert!(bootout < install && install < bootstrap, "{ops:?}");
    assert_eq!(ops.len(), 4, "bootout, install, enable, bootstrap: {ops:?}");
}

#[test]
fn user_agents_use_the_gui_domain_and_the_users_home() {
    let ops = argvs("changed-agent");
    assert!(ops.contains(&vec!["launchctl".into(), "bootout".into(), "gui/501/org.nixos.yabai".into()]));
    assert!(ops.contains(&vec![
        "launchctl".into(),
        "bootstrap".into(),
        "gui/501".into(),
        "/Users/alice/Library/LaunchAgents/org.nixos.yabai.plist".into()
    ]));
    assert!(ops.iter().all(|o| !o.contains(&"system".to_owned())), "no agent goes to the system domain: {ops:?}");
}

#[test]
fn protected_changed_job_keeps_its_old_plist_in_defer_mode() {
    let plan = run_case("protected-defer").unwrap();
    let runner = plan.plan.unit("org.nixos.gitlab-runner").unwrap();
    assert!(runner.actions.is_empty());
    let deferral = runner.deferral.as_ref().unwrap();
    assert_eq!(deferral.actions, [Action::Restart]);
    assert_eq!(deferral.touch.effect, Action::Restart);
    assert!(runner.reasons.iter().any(|r| r.rule == Rule::OldPlistKept));
    let removed = plan.plan.unit("org.nixos.github-runner-ci1").unwrap();
    assert_eq!(removed.deferral.as_ref().unwrap().touch.effect, Action::Stop);

    // Nothing at all touches the protected jobs: no launchctl call names
    // them and neither of their plists is replaced or deleted.
    let ops = operations(&plan).unwrap();
    for op in &ops {
        let line = op.to_string();
        assert!(!line.contains("gitlab-runner") && !line.contains("github-runner"), "{line}");
    }
    // The unprotected change still goes through.
    assert!(ops.contains(&Operation::Launchctl(Launchctl::Bootout {
        domain: launchd_plan::Domain::System,
        label: "org.nixos.prometheus-node-exporter".into()
    })));
}

#[test]
fn protected_changed_job_refuses_the_plan_in_refuse_mode() {
    let plan = run_case("protected-refuse").unwrap();
    assert_eq!(plan.plan.protection.mode, Mode::Refuse);
    assert!(plan.plan.protection.refused);
    assert!(plan.plan.deferred().next().is_none());
    let touched: Vec<&str> = plan.plan.protection.refusals.iter().map(|r| r.touch.touches.as_str()).collect();
    assert_eq!(touched, ["org.nixos.github-runner-ci1", "org.nixos.gitlab-runner"]);
    assert_eq!(
        operations(&plan),
        Err(OpsError::Refused { labels: vec!["org.nixos.github-runner-ci1".into(), "org.nixos.gitlab-runner".into()] })
    );
}

#[test]
fn binary_and_xml_encodings_of_the_same_plist_are_equal_in_content() {
    let plan = run_case("binary-plist").unwrap();
    let daemon = plan.plan.unit("org.nixos.nix-daemon").unwrap();
    assert_eq!(daemon.reasons[0].rule, Rule::PlistReformatted);
    assert!(daemon.actions.is_empty(), "re-encoding alone must not restart the Nix daemon");
    let dnsmasq = plan.plan.unit("org.nixos.dnsmasq").unwrap();
    assert_eq!(dnsmasq.actions, [Action::Restart]);
    assert_eq!(dnsmasq.changes.len(), 1);
}

#[test]
fn unchanged_generation_with_everything_loaded_plans_nothing() {
    let plan = run_case("unchanged").unwrap();
    assert!(plan.plan.units.is_empty(), "{:?}", plan.plan.units);
    assert!(plan.plan.diagnostics.is_empty());
    assert!(operations(&plan).unwrap().is_empty());
}

#[test]
fn bad_plist_error_names_the_file() {
    let err = run_case("bad-plist").unwrap_err().to_string();
    assert!(err.contains("bad-plist/new/Library/LaunchDaemons/org.nixos.broken.plist"), "{err}");
    assert!(err.contains("not a valid property list"), "{err}");
}

#[test]
fn nix_conf_change_restarts_the_daemon_with_kickstart() {
    let ops = argvs("nix-conf-changed");
    assert_eq!(ops, [["launchctl", "kickstart", "-k", "system/org.nixos.nix-daemon"]]);
}

#[test]
fn unloaded_job_of_the_generation_is_bootstrapped() {
    let plan = run_case("not-loaded").unwrap();
    let daemon = plan.plan.unit("org.nixos.nix-daemon").unwrap();
    assert_eq!(daemon.actions, [Action::Start]);
    assert_eq!(daemon.reasons[0].rule, Rule::JobNotLoaded);
    assert!(plan.plan.unit("org.nixos.activate-system").is_none(), "loaded and unchanged");
}

#[test]
fn change_deferred_by_an_earlier_switch_is_applied_once_unprotected() {
    // The generations agree; only the installed copy is behind.
    let plan = run_case("pending-deferral").unwrap();
    let runner = plan.plan.unit("org.nixos.gitlab-runner").unwrap();
    assert_eq!(runner.actions, [Action::Restart]);
    assert_eq!(runner.changes.len(), 1, "{:?}", runner.changes);
    assert!(plan.plan.diagnostics.iter().any(|d| d.unit.as_deref() == Some("org.nixos.gitlab-runner")));
}

#[test]
fn protected_nix_daemon_is_not_kickstarted_when_nix_conf_changes() {
    let plan = run_case("nix-conf-protected").unwrap();
    let daemon = plan.plan.unit("org.nixos.nix-daemon").unwrap();
    assert!(daemon.actions.is_empty());
    assert_eq!(daemon.deferral.as_ref().unwrap().actions, [Action::Restart]);
    assert!(operations(&plan).unwrap().is_empty());
}

#[test]
fn new_job_whose_label_is_loaded_is_booted_out_first() {
    let ops = argvs("added-already-loaded");
    assert_eq!(ops[0], ["launchctl", "bootout", "gui/501/org.nixos.spotifyd"]);
    assert_eq!(ops.last().unwrap()[..3], ["launchctl", "bootstrap", "gui/501"]);
}

/// The `unchanged` case with the new generation's `services.openssh.enable`
/// read from its `activate`, and macOS's sshd loaded or not.
fn remote_login(wanted: RemoteLogin, sshd_loaded: bool, protect: &[&str], mode: Mode) -> LaunchdPlan {
    let dir = crate::fixtures::fixtures_dir().join("unchanged");
    let old = load_generation(&dir.join("old")).unwrap();
    let mut new = load_generation(&dir.join("new")).unwrap();
    new.remote_login = Some(wanted);
    let mut live = load_live(&dir.join("live.json")).unwrap();
    if sshd_loaded {
        let sshd = LiveJob { state: Some("not running".into()), runs: Some(3), ..LiveJob::default() };
        live.system.as_mut().unwrap().insert(SSHD_LABEL.to_owned(), sshd);
    }
    let request = Request::from_selectors(mode, protect, &ProtectionSource::CommandLine).unwrap();
    plan(&old, &new, &Host { live, installed: None }, &request)
}

#[test]
fn remote_login_turned_off_boots_sshd_out_and_disables_it() {
    let planned = remote_login(RemoteLogin::Off, true, &[], Mode::Defer);
    let sshd = planned.plan.unit(SSHD_LABEL).unwrap();
    assert_eq!(sshd.actions, [Action::Stop]);
    assert_eq!(sshd.reasons[0].rule, Rule::RemoteLoginOff);
    let ops: Vec<Vec<String>> = operations(&planned).unwrap().iter().map(Operation::argv).collect();
    assert_eq!(
        ops,
        [["launchctl", "bootout", "system/com.openssh.sshd"], ["launchctl", "disable", "system/com.openssh.sshd"]],
        "macOS's own plist is never deleted"
    );
    // Already off: nothing to do.
    assert!(remote_login(RemoteLogin::Off, false, &[], Mode::Defer).plan.units.is_empty());
}

#[test]
fn remote_login_turned_on_enables_and_bootstraps_macos_plist() {
    let planned = remote_login(RemoteLogin::On, false, &[], Mode::Defer);
    let sshd = planned.plan.unit(SSHD_LABEL).unwrap();
    assert_eq!(sshd.actions, [Action::Start]);
    assert_eq!(sshd.reasons[0].rule, Rule::RemoteLoginOn);
    let ops: Vec<Vec<String>> = operations(&planned).unwrap().iter().map(Operation::argv).collect();
    assert_eq!(
        ops,
        [
            ["launchctl", "enable", "system/com.openssh.sshd"].as_slice(),
            &["launchctl", "bootstrap", "system", SSHD_PLIST]
        ],
        "no plist is installed over macOS's"
    );
    assert!(remote_login(RemoteLogin::On, true, &[], Mode::Defer).plan.units.is_empty());
}

#[test]
fn protected_sshd_is_not_booted_out_by_remote_login() {
    let planned = remote_login(RemoteLogin::Off, true, &["sshd"], Mode::Defer);
    let sshd = planned.plan.unit(SSHD_LABEL).unwrap();
    assert!(sshd.actions.is_empty());
    let deferral = sshd.deferral.as_ref().unwrap();
    assert_eq!(deferral.actions, [Action::Stop]);
    assert_eq!(deferral.touch.touches, SSHD_LABEL);
    assert!(operations(&planned).unwrap().is_empty());
    assert_eq!(planned.plan.protection.protected[0].units, [SSHD_LABEL]);

    let refused = remote_login(RemoteLogin::Off, true, &["com.openssh.sshd"], Mode::Refuse);
    assert!(refused.plan.protection.refused);
    assert!(matches!(operations(&refused), Err(OpsError::Refused { .. })));
}
