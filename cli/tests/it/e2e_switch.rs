//! End to end: `safe-switch switch --protect sshd` on a real systemd, with a
//! real SSH session that must not notice.
//!
//! Generation A runs sshd, a CI job, a metrics exporter (configured by a
//! drop-in), a legacy unit and two units sshd depends on: it `Requires=`
//! `ssh-host-keys.service` and is `PartOf=` `firewall.service`, so
//! restarting either would restart sshd too. Generation B changes sshd's
//! unit, the job, the metrics drop-in and both units sshd depends on, adds
//! `cache.service` and removes `legacy.service`.
//!
//! While an SSH session prints a tick every 200 ms, the binary runs inside
//! the test bed's namespaces (so `/run/current-system`, `/etc/systemd/system`
//! and `/run/safe-switch` are the bed's own and the default D-Bus address
//! is the bed's bus), first `plan --json`, then `switch` (in-process with
//! `--no-isolate`, and again in a transient unit). The test checks
//! the session, sshd, each unit, and that what happened to every service
//! is exactly what the plan said would happen. A control run without
//! `--protect` shows that sshd does get restarted then, so the protected
//! run's assertions can fail.
//!
//! These tests need root and namespaces: under `CI=true` they fail when
//! they cannot run, elsewhere they skip with a message.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use plan_model::{Action, Plan, Rule};
use testbed::unit::daemon;
use testbed::{Config, Generation, Output, TestBed, UnitState};

use crate::support::{self, path_str};

const TICK: Duration = Duration::from_millis(200);
/// The longest pause between two ticks that still counts as "no gap":
/// 25 tick intervals. It catches a session that stalled (held up by a
/// stopped or frozen sshd) without failing on a busy CI machine's
/// scheduling hiccups; it is not a speed goal. A session that was cut
/// shows up differently: no more ticks, or numbering that starts over.
const MAX_GAP: Duration = Duration::from_secs(5);

/// sshd's dependencies on the two units whose restart would cascade into it.
const SSHD_DEPS: &str = "Requires=ssh-host-keys.service\nAfter=ssh-host-keys.service\nPartOf=firewall.service\n";

fn oneshot(description: &str, env: &str) -> String {
    testbed::unit::oneshot(description, &format!("Environment={env}\nExecStart=/bin/true\n"))
}

fn generation_a() -> Generation {
    Generation::new("a")
        .sshd_with(SSHD_DEPS, "")
        .service("ssh-host-keys.service", oneshot("SSH host keys", "KEYS=1"))
        .service("firewall.service", oneshot("Firewall", "RULES=1"))
        .service("build-job.service", daemon("CI job", "JOB=1"))
        .service("metrics.service", daemon("Metrics exporter", "PORT=9100"))
        .dropin("metrics.service", "limits.conf", "[Service]\nEnvironment=LIMIT=1\n")
        .service("legacy.service", daemon("Legacy agent", "LEGACY=1"))
}

fn generation_b() -> Generation {
    generation_a()
        .renamed("b")
        .sshd_with(SSHD_DEPS, "Environment=SSHD_GENERATION=b")
        .service("ssh-host-keys.service", oneshot("SSH host keys", "KEYS=2"))
        .service("firewall.service", oneshot("Firewall", "RULES=2"))
        .service("build-job.service", daemon("CI job", "JOB=2"))
        .dropin("metrics.service", "limits.conf", "[Service]\nEnvironment=LIMIT=2\n")
        .service("cache.service", daemon("Build cache", "CACHE=1"))
        .without("legacy.service")
}

/// Every service either generation has, plus D-Bus (which nothing may
/// touch).
fn services() -> Vec<String> {
    let mut units: Vec<String> = generation_a().units().into_iter().chain(generation_b().units()).collect();
    units.push("dbus.service".to_owned());
    units.retain(|u| u.ends_with(".service"));
    units.sort();
    units.dedup();
    units
}

/// What happened to a unit between two observations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Effect {
    Untouched,
    Started,
    Stopped,
    Restarted,
}

fn observed(before: &UnitState, after: &UnitState) -> Effect {
    match (before.is_active(), after.is_active()) {
        (false, true) => Effect::Started,
        (true, false) => Effect::Stopped,
        (true, true) if before.invocation_id != after.invocation_id => Effect::Restarted,
        _ => Effect::Untouched,
    }
}

/// What the plan says will happen to a unit in the state `before`. Deferred
/// actions are not in `actions`, so they predict nothing. A new unit has no
/// action of its own: the plan says (rule `new-unit`) that the target that
/// wants it, which is started again, brings it up.
fn predicted(plan: &Plan, unit: &str, before: &UnitState) -> Effect {
    let entry = plan.unit(unit);
    let actions: Vec<Action> = entry.map(|u| u.actions.clone()).unwrap_or_default();
    let new_unit = entry.is_some_and(|u| u.deferral.is_none() && u.reasons.iter().any(|r| r.rule == Rule::NewUnit));
    let stops = actions.contains(&Action::Stop);
    let starts = actions.contains(&Action::Start) || actions.contains(&Action::Restart) || new_unit;
    match (before.is_active(), stops, starts, actions.contains(&Action::Restart)) {
        (true, _, _, true) | (true, true, true, _) => Effect::Restarted,
        (true, true, false, _) => Effect::Stopped,
        (false, _, true, _) => Effect::Started,
        _ => Effect::Untouched,
    }
}

fn boot() -> TestBed {
    TestBed::boot(&Config::new(generation_a())).unwrap_or_else(|e| panic!("test bed: {e}"))
}

/// Runs safe-switch inside the bed, with `toplevel` as the new generation.
fn safe_switch(bed: &TestBed, args: &[&str], toplevel: &Path) -> Output {
    let mut args = args.to_vec();
    args.extend(["--toplevel", path_str(toplevel)]);
    support::safe_switch(bed, &args)
}

fn states(bed: &TestBed) -> BTreeMap<String, UnitState> {
    let units = services();
    let units: Vec<&str> = units.iter().map(String::as_str).collect();
    bed.unit_states(&units).unwrap()
}

#[test]
fn protected_switch_keeps_the_ssh_session_and_does_what_the_plan_said() {
    testbed::require!(bed);
    protected_switch(&["--no-isolate"]);
}

/// The same switch, carried out the default way: in a transient unit of
/// the bed's systemd, which the command waits for.
#[test]
fn protected_switch_in_a_transient_unit() {
    testbed::require!(bed);
    protected_switch(&[]);
}

/// Switches from A to B with `--protect sshd` and `extra` options, and
/// checks everything the acceptance asks for.
fn protected_switch(extra: &[&str]) {
    let bed = boot();
    let b = bed.build_generation(&generation_b()).unwrap();
    let before = states(&bed);
    for unit in ["sshd.service", "ssh-host-keys.service", "firewall.service", "build-job.service", "legacy.service"] {
        assert!(before[unit].is_active(), "{unit} runs in generation A: {:?}", before[unit]);
    }
    assert!(!before["cache.service"].is_active());

    let mut session = bed.ssh_session(TICK).unwrap();
    session.wait_for_ticks(3, Duration::from_secs(10)).unwrap();

    // The prediction.
    let out = safe_switch(&bed, &["plan", "--protect", "sshd", "--json"], &b);
    assert!(out.success(), "plan failed: {out:#?}");
    let plan: Plan = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("plan JSON: {e}\n{}", out.stdout));
    // sshd's own restart and the cascading units' restarts are deferred:
    // each would take sshd down, through the relation named in the chain.
    for (unit, relation) in
        [("ssh-host-keys.service", Some("Requires")), ("firewall.service", Some("PartOf")), ("sshd.service", None)]
    {
        let entry = plan.unit(unit).unwrap_or_else(|| panic!("{unit} is in the plan: {}", out.stdout));
        let deferral = entry.deferral.as_ref().unwrap_or_else(|| panic!("{unit} is deferred: {entry:#?}"));
        assert_eq!(deferral.touch.touches, "sshd.service", "{entry:#?}");
        assert!(entry.actions.is_empty(), "{entry:#?}");
        let relations: Vec<(&str, &str, &str)> =
            deferral.touch.chain.iter().map(|e| (e.from.as_str(), e.relation.as_str(), e.to.as_str())).collect();
        match relation {
            Some(relation) => {
                assert_eq!(relations, [("sshd.service", relation, unit)], "{entry:#?}")
            }
            None => assert!(relations.is_empty(), "{entry:#?}"),
        }
    }

    // The switch.
    let switched_at = session.elapsed();
    let mut args = vec!["switch", "--protect", "sshd"];
    args.extend_from_slice(extra);
    let out = safe_switch(&bed, &args, &b);
    assert_eq!(out.code(), Some(0), "switch failed: {out:#?}");
    support::assert_exact(&format!("protected_switch {extra:?}"), &out);
    let after = states(&bed);

    // The session went on, tick after tick, and is still going.
    let n = session.tick_count();
    session.wait_for_ticks(n + 5, Duration::from_secs(10)).unwrap();
    let report = session.finish();
    assert!(report.alive_at_end, "the session ended: {report:#?}");
    assert!(report.consecutive(), "ticks were lost or restarted: {report:#?}");
    assert!(report.max_gap() < MAX_GAP, "a gap of {:?} in the ticks: {report:#?}", report.max_gap());
    assert!(report.ticks_after(switched_at) >= 5, "{report:#?}");

    // sshd was not touched.
    let (sshd_before, sshd_after) = (&before["sshd.service"], &after["sshd.service"]);
    assert!(sshd_after.is_active(), "{sshd_after:?}");
    assert_eq!(sshd_after.main_pid, sshd_before.main_pid, "sshd's MainPID changed");
    assert_eq!(sshd_after.invocation_id, sshd_before.invocation_id, "sshd's InvocationID changed");

    // The rest of the switch happened.
    assert_eq!(bed.current_generation().unwrap(), b);
    assert_eq!(bed.activations(), ["b"]);
    assert_ne!(after["build-job.service"].main_pid, before["build-job.service"].main_pid, "the job was restarted");
    assert!(after["build-job.service"].is_active());
    assert_ne!(after["metrics.service"].main_pid, before["metrics.service"].main_pid, "drop-in change restarts");
    assert!(after["metrics.service"].is_active());
    assert!(after["cache.service"].is_active(), "the new unit runs: {:?}", after["cache.service"]);
    assert!(!after["legacy.service"].is_active(), "the removed unit is stopped: {:?}", after["legacy.service"]);
    for unit in ["ssh-host-keys.service", "firewall.service"] {
        assert_eq!(after[unit].invocation_id, before[unit].invocation_id, "{unit} was deferred, yet restarted");
    }

    // What happened is what the plan said, unit by unit.
    let mut expected = BTreeMap::new();
    let mut actual = BTreeMap::new();
    for unit in services() {
        expected.insert(unit.clone(), predicted(&plan, &unit, &before[&unit]));
        actual.insert(unit.clone(), observed(&before[&unit], &after[&unit]));
    }
    assert_eq!(actual, expected, "observed effects differ from the plan:\n{}", plan.to_json());
}

#[test]
fn control_without_protection_restarts_sshd() {
    testbed::require!(bed);
    let bed = boot();
    let b = bed.build_generation(&generation_b()).unwrap();
    let before = states(&bed);

    let out = safe_switch(&bed, &["plan", "--json"], &b);
    assert!(out.success(), "plan failed: {out:#?}");
    let plan: Plan = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("plan JSON: {e}\n{}", out.stdout));
    assert!(plan.deferred().next().is_none(), "nothing is deferred without protection: {}", out.stdout);

    let out = safe_switch(&bed, &["switch", "--no-isolate"], &b);
    assert_eq!(out.code(), Some(0), "switch failed: {out:#?}");
    support::assert_exact("control_without_protection_restarts_sshd", &out);
    let after = states(&bed);
    assert!(after["sshd.service"].is_active(), "{:?}", after["sshd.service"]);
    assert_ne!(after["sshd.service"].main_pid, before["sshd.service"].main_pid, "sshd was restarted");
    assert_ne!(after["sshd.service"].invocation_id, before["sshd.service"].invocation_id);
    for unit in ["ssh-host-keys.service", "firewall.service"] {
        assert_ne!(after[unit].invocation_id, before[unit].invocation_id, "{unit} was restarted");
    }
    // A fresh connection still works after sshd's restart.
    let out = testbed::exec::run(&mut bed.ssh_command("echo still here"), Duration::from_secs(20)).unwrap();
    assert_eq!(out.stdout.trim(), "still here", "{out:#?}");
}
