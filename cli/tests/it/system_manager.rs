//! `switch` on a system-manager host, on a real systemd: the test bed
//! (Debian standing in for Ubuntu) booted from a system-manager generation
//! whose engine wrappers are the `testbed` crate's stand-ins, which behave
//! as the real engine's commands are documented to. No real
//! system-manager runs.
//!
//! Generation A runs sshd (with a real SSH session), a GitLab runner, a
//! metrics exporter, a legacy agent and a userborn stand-in. Generation B
//! changes sshd, the runner and the exporter, adds a cache, removes the
//! legacy agent and has a `tmpfiles.d` rule. The binary runs inside the
//! bed, with system-manager's state file and profile below the bed's
//! `/run`.
//!
//! These tests need root and namespaces: under `CI=true` they fail when
//! they cannot run, elsewhere they skip with a message.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use testbed::unit::{daemon, oneshot};
use testbed::{Config, Generation, TestBed, UnitState};

use crate::support::{BIN, in_bed, path_str, safe_switch};

const TICK: Duration = Duration::from_millis(200);
/// The longest pause between two ticks that still counts as no gap (see
/// `e2e_switch`).
const MAX_GAP: Duration = Duration::from_secs(5);

const UNITS: [&str; 7] = [
    "sshd.service",
    "gitlab-runner.service",
    "metrics.service",
    "legacy.service",
    "cache.service",
    "userborn.service",
    "system-manager.target",
];

/// A stand-in for userborn (system-manager restarts it when it exists):
/// each run leaves a line.
fn userborn() -> String {
    oneshot("userborn", "ExecStart=/bin/sh -c 'echo run >> /run/testbed/userborn.log'\n")
}

fn generation_a() -> Generation {
    Generation::new("a")
        .system_manager()
        .sshd()
        .service("gitlab-runner.service", daemon("GitLab Runner", "RUNNER=1"))
        .service("metrics.service", daemon("Metrics exporter", "PORT=9100"))
        .service("legacy.service", daemon("Legacy agent", "LEGACY=1"))
        .service("userborn.service", userborn())
}

fn generation_b() -> Generation {
    generation_a()
        .renamed("b")
        .sshd_with("", "Environment=SSHD_GENERATION=b")
        .service("gitlab-runner.service", daemon("GitLab Runner", "RUNNER=2"))
        .service("metrics.service", daemon("Metrics exporter", "PORT=9200"))
        .service("cache.service", daemon("Build cache", "CACHE=1"))
        .without("legacy.service")
        .tmpfiles("cache.conf", "d /run/cache-b 0750 root root -\n")
}

fn boot(a: &Generation) -> TestBed {
    let bed = TestBed::boot(&Config::new(a.clone())).unwrap_or_else(|e| panic!("test bed: {e}"));
    for unit in ["gitlab-runner.service", "metrics.service", "legacy.service", "userborn.service"] {
        bed.wait_for_state(unit, "active").unwrap_or_else(|e| panic!("{unit}: {e}"));
    }
    bed
}

fn states(bed: &TestBed) -> BTreeMap<String, UnitState> {
    bed.unit_states(&UNITS).unwrap()
}

/// The services map of a generation's `services.json`.
fn services_of(toplevel: &Path) -> serde_json::Map<String, Value> {
    let text = std::fs::read_to_string(toplevel.join("services/services.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// What `/etc/systemd/system` points to inside the bed.
fn unit_dir(bed: &TestBed) -> String {
    bed.run(&["readlink", "/etc/systemd/system"]).unwrap().stdout.trim().to_owned()
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The state file's entry of `unit`.
fn entry(state: &Value, unit: &str) -> Value {
    state["services"][unit].clone()
}

/// The unit actions and engine steps a switch from A to B with sshd and
/// the runner protected leaves behind, checked on the bed: the protected
/// units untouched, the others changed, the engine run in order, the
/// files placed, the state file true and the deferrals pending.
fn check_switched(bed: &TestBed, before: &BTreeMap<String, UnitState>, a: &Path, b: &Path) {
    let after = states(bed);
    for unit in ["sshd.service", "gitlab-runner.service"] {
        assert!(after[unit].is_active(), "{unit}: {:?}", after[unit]);
        assert_eq!(after[unit].main_pid, before[unit].main_pid, "{unit}'s MainPID changed");
        assert_eq!(after[unit].invocation_id, before[unit].invocation_id, "{unit}'s InvocationID changed");
    }
    assert!(after["metrics.service"].is_active());
    assert_ne!(after["metrics.service"].invocation_id, before["metrics.service"].invocation_id, "not restarted");
    assert!(after["cache.service"].is_active(), "the new unit runs: {:?}", after["cache.service"]);
    assert!(!after["legacy.service"].is_active(), "the removed unit is stopped: {:?}", after["legacy.service"]);
    assert_ne!(after["userborn.service"].invocation_id, before["userborn.service"].invocation_id);
    assert!(bed.run_dir().join("cache-b").is_dir(), "tmpfiles created B's directory");
    assert_eq!(bed.system_manager_profile().unwrap(), b);
    let units = unit_dir(bed);
    assert!(units.ends_with("-etc-static-env/systemd/system"), "{units}");
    assert_eq!(units, testbed::system_manager::unit_dir_of(b).unwrap().display().to_string(), "B's files");
    assert!(bed.engine_log().iter().all(|l| !l.starts_with("activate")), "{:?}", bed.engine_log());

    // The state file: version 1, B's services, but the protected units
    // keep A's store paths, so that system-manager still sees them as
    // changed; the removed unit is gone from it.
    let state = bed.system_manager_state().unwrap();
    let (a_services, b_services) = (services_of(a), services_of(b));
    assert_eq!(state["version"], 1);
    for unit in ["sshd.service", "gitlab-runner.service"] {
        assert_eq!(entry(&state, unit), a_services[unit], "{unit} keeps its old store path");
        assert_ne!(a_services[unit], b_services[unit], "{unit} changed between A and B");
    }
    for unit in ["metrics.service", "cache.service", "system-manager.target", "userborn.service"] {
        assert_eq!(entry(&state, unit), b_services[unit], "{unit} is B's");
    }
    assert!(state["services"].get("legacy.service").is_none(), "{state}");
    assert_eq!(state["fileTree"]["files"][0], "/etc/systemd/system");
}

/// The record of pending deferrals lists the protected units.
fn check_pending(bed: &TestBed) {
    let out = safe_switch(bed, &["pending", "--json"]);
    assert_eq!(out.code(), Some(3), "{out:?}");
    let pending: Value = serde_json::from_str(&out.stdout).unwrap();
    let units: Vec<&str> =
        pending["deferrals"].as_array().unwrap().iter().map(|d| d["unit"].as_str().unwrap()).collect();
    assert_eq!(units, ["gitlab-runner.service", "sshd.service"], "{}", out.stdout);
}

#[test]
fn a_protected_switch_keeps_sshd_and_the_runner_and_the_state_file_tells_the_truth() {
    testbed::require!(bed);
    let a_gen = generation_a();
    let bed = boot(&a_gen);
    let a = bed.system_manager_profile().unwrap();
    let b = bed.build_generation(&generation_b()).unwrap();
    let before = states(&bed);
    let state_before = bed.system_manager_state().unwrap();
    assert_eq!(state_before["services"], Value::Object(services_of(&a)));
    let mut session = bed.ssh_session(TICK).unwrap();
    session.wait_for_ticks(3, Duration::from_secs(10)).unwrap();

    let out = safe_switch(&bed, &["plan", "--toplevel", path_str(&b), "--protect", "sshd,gitlab-runner"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_eq!(a, bed.system_manager_profile().unwrap(), "plan changes nothing");

    let switched_at = session.elapsed();
    let out =
        safe_switch(&bed, &["switch", "--toplevel", path_str(&b), "--protect", "sshd,gitlab-runner", "--no-isolate"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    for line in [
        "gitlab-runner.service: restart deferred: gitlab-runner.service is protected",
        "sshd.service: restart deferred: sshd.service is protected",
        "protected sshd.service: untouched",
        "protected gitlab-runner.service: untouched",
        "system-manager-state: ",
        "kept from before the switch: gitlab-runner.service, sshd.service",
    ] {
        assert!(out.stdout.contains(line) || out.stderr.contains(line), "{line}: {out:?}");
    }
    // systemd did nothing the plan does not list, in system-manager's
    // steps either; the engine's output is in the activation log.
    crate::support::assert_exact(
        "a_protected_switch_keeps_sshd_and_the_runner_and_the_state_file_tells_the_truth",
        &out,
    );
    let log = std::fs::read_to_string(bed.run_dir().join("safe-switch/activation.log")).unwrap();
    for step in ["assertions", "register-profile", "prepopulate", "tmpfiles", "system-manager-state"] {
        assert!(log.contains(&format!("[safe-switch: the {step} step]\n")), "{step}: {log}");
    }

    let n = session.tick_count();
    session.wait_for_ticks(n + 5, Duration::from_secs(10)).unwrap();
    let report = session.finish();
    assert!(report.alive_at_end, "the session ended: {report:#?}");
    assert!(report.consecutive(), "ticks were lost or restarted: {report:#?}");
    assert!(report.max_gap() < MAX_GAP, "a gap of {:?} in the ticks: {report:#?}", report.max_gap());
    assert!(report.ticks_after(switched_at) >= 5, "{report:#?}");

    check_switched(&bed, &before, &a, &b);
    assert_eq!(
        bed.engine_log(),
        ["preActivationAssertions b", "register-profile b", "prepopulate b", "preActivationAssertions b"],
        "the engine's commands, in system-manager's order, once each"
    );
    assert_eq!(std::fs::read_to_string(bed.run_dir().join("testbed/userborn.log")).unwrap(), "run\nrun\n");
    check_pending(&bed);

    // Settling the runner restarts it, and the state file then gives it
    // B's store path; sshd stays pending with A's.
    let runner = bed.unit_states(&["gitlab-runner.service"]).unwrap()["gitlab-runner.service"].clone();
    let out = safe_switch(&bed, &["settle", "gitlab-runner", "--no-isolate"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let now = bed.unit_states(&["gitlab-runner.service"]).unwrap()["gitlab-runner.service"].clone();
    assert_ne!(now.invocation_id, runner.invocation_id, "the runner was restarted");
    let state = bed.system_manager_state().unwrap();
    assert_eq!(entry(&state, "gitlab-runner.service"), services_of(&b)["gitlab-runner.service"]);
    assert_eq!(entry(&state, "sshd.service"), services_of(&a)["sshd.service"]);
}

/// The control: without protection the same switch restarts sshd and the
/// runner, and the state file has B's store paths for every unit. It runs
/// isolated, in a transient unit of the bed's systemd.
#[test]
fn without_protection_sshd_and_the_runner_are_restarted() {
    testbed::require!(bed);
    let bed = boot(&generation_a());
    let b = bed.build_generation(&generation_b()).unwrap();
    let before = states(&bed);
    let out = safe_switch(&bed, &["switch", "--toplevel", path_str(&b)]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stderr.contains("safe-switch-"), "isolated in a transient unit: {}", out.stderr);
    crate::support::assert_exact("without_protection_sshd_and_the_runner_are_restarted", &out);
    let after = states(&bed);
    for unit in ["sshd.service", "gitlab-runner.service", "metrics.service"] {
        assert!(after[unit].is_active(), "{unit}: {:?}", after[unit]);
        assert_ne!(after[unit].main_pid, before[unit].main_pid, "{unit} was restarted");
    }
    let state = bed.system_manager_state().unwrap();
    assert_eq!(state["services"], Value::Object(services_of(&b)));
    assert!(!bed.run_dir().join("safe-switch/pending.json").exists(), "nothing is pending");
}

/// Runs a switch to `b` that must be refused or stop before the unit
/// actions, and checks that no unit was touched and the state file is as
/// it was.
fn nothing_acted_on(bed: &TestBed, before: &BTreeMap<String, UnitState>, state: &Value) {
    let after = states(bed);
    for unit in ["sshd.service", "gitlab-runner.service", "metrics.service", "legacy.service"] {
        assert_eq!(after[unit], before[unit], "{unit} was touched");
    }
    assert!(!after["cache.service"].is_active());
    assert_eq!(&bed.system_manager_state().unwrap(), state, "the state file changed");
    assert!(!bed.run_dir().join("cache-b").exists(), "tmpfiles ran");
}

#[test]
fn a_failing_prepopulate_stops_the_switch_there_naming_the_step() {
    testbed::require!(bed);
    let bed = boot(&generation_a());
    let a = bed.system_manager_profile().unwrap();
    let b = bed.build_generation(
        &generation_b().engine_lines("prepopulate", "echo 'prepopulate: /etc/hosts exists' >&2; exit 1"),
    );
    let b = b.unwrap();
    let (before, state, units) = (states(&bed), bed.system_manager_state().unwrap(), unit_dir(&bed));
    let out = safe_switch(&bed, &["switch", "--toplevel", path_str(&b), "--protect", "sshd", "--no-isolate"]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    let step = format!("prepopulate phase: {} exited with status 1", b.join("bin/prepopulate").display());
    assert!(out.stderr.contains(&step), "{}", out.stderr);
    assert!(out.stderr.contains("stopped early"), "{}", out.stderr);
    assert!(out.stderr.contains("not done: daemon-reload, sysinit-reactivation, userborn, tmpfiles"), "{}", out.stderr);
    assert_eq!(bed.engine_log(), ["preActivationAssertions b", "register-profile b", "prepopulate b"]);
    nothing_acted_on(&bed, &before, &state);
    assert_eq!(unit_dir(&bed), units, "the files were not placed");
    assert_eq!(bed.system_manager_profile().unwrap(), b, "the profile was registered before prepopulate");
    assert_ne!(a, b);
    assert!(bed.run_dir().join("safe-switch/progress.json").exists(), "left for the next run to resume");
}

#[test]
fn a_failing_assertion_refuses_the_switch_before_any_change() {
    testbed::require!(bed);
    let bed = boot(&generation_a());
    let a = bed.system_manager_profile().unwrap();
    let b = bed
        .build_generation(
            &generation_b()
                .engine_lines("preActivationAssertions", "echo 'assertion osVersion failed: not ubuntu' >&2; exit 1"),
        )
        .unwrap();
    let (before, state) = (states(&bed), bed.system_manager_state().unwrap());
    let out = safe_switch(&bed, &["switch", "--toplevel", path_str(&b), "--protect", "sshd", "--no-isolate"]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    let refused = format!(
        "was refused (assertions phase: {} exited with status 1); nothing was changed",
        b.join("bin/preActivationAssertions").display()
    );
    assert!(out.stderr.contains(&refused), "{}", out.stderr);
    assert!(out.stderr.contains("assertion osVersion failed: not ubuntu"), "the engine's own words: {}", out.stderr);
    assert_eq!(bed.engine_log(), ["preActivationAssertions b"]);
    nothing_acted_on(&bed, &before, &state);
    assert_eq!(bed.system_manager_profile().unwrap(), a);
    assert!(!bed.run_dir().join("safe-switch/progress.json").exists(), "nothing to resume");
    assert!(!bed.run_dir().join("safe-switch/pending.json").exists(), "nothing deferred");
}

#[test]
fn a_state_file_safe_switch_cannot_read_refuses_the_switch_naming_it() {
    testbed::require!(bed);
    let bed = boot(&generation_a());
    let a = bed.system_manager_profile().unwrap();
    let b = bed.build_generation(&generation_b()).unwrap();
    let host_path = bed.system_manager_root().join(testbed::system_manager::STATE_FILE);
    let in_bed_path =
        format!("{}/{}", testbed::system_manager::SYSTEM_MANAGER_ROOT, testbed::system_manager::STATE_FILE);
    let before = states(&bed);
    for (text, why) in [
        ("{\"version\": 1, \"services\": {\"token\": \"secret-value\"", "ends too early".to_owned()),
        ("{\"fileTree\":{},\"services\":{},\"version\":2}", "system-manager state file version 2;".to_owned()),
    ] {
        std::fs::write(&host_path, text).unwrap();
        for extra in [&["--no-isolate"][..], &[][..]] {
            let mut args = vec!["switch", "--toplevel", path_str(&b), "--protect", "sshd"];
            args.extend_from_slice(extra);
            let out = safe_switch(&bed, &args);
            assert_eq!(out.code(), Some(1), "{out:?}");
            assert!(out.stderr.contains(&format!("{in_bed_path}: ")), "{}", out.stderr);
            assert!(out.stderr.contains(&why), "{}", out.stderr);
            assert!(out.stderr.contains("nothing was changed"), "{}", out.stderr);
            assert!(!out.stderr.contains("secret-value"), "{}", out.stderr);
            assert!(bed.engine_log().is_empty(), "{:?}", bed.engine_log());
            assert_eq!(std::fs::read_to_string(&host_path).unwrap(), text);
            assert_eq!(bed.system_manager_profile().unwrap(), a);
            assert_eq!(states(&bed), before);
        }
    }
}

/// Starts a switch in the bed, its output piped.
fn spawn_switch(bed: &TestBed, args: &[&str]) -> Child {
    let mut cmd = bed.command(BIN);
    in_bed(&mut cmd, bed).args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.spawn().expect("safe-switch starts")
}

fn kill_in_bed(bed: &TestBed, pid: &str) {
    let out = bed.run(&["kill", "-9", pid.trim()]).unwrap();
    assert!(out.success(), "{out:?}");
}

#[test]
fn a_switch_killed_between_steps_is_resumed_by_the_next_run_and_the_state_file_stays_true() {
    testbed::require!(bed);
    let a_gen = generation_a();
    let bed = boot(&a_gen);
    let a = bed.system_manager_profile().unwrap();
    // B's prepopulate stops the first time, before it does anything,
    // until the test has killed the switch.
    let b = bed
        .build_generation(&generation_b().engine_lines(
            "prepopulate",
            "if [ ! -e /run/testbed/slow-once ]; then touch /run/testbed/slow-once; \
             echo $$ > /run/testbed/prepopulate.pid; exec sleep 600; fi",
        ))
        .unwrap();
    let before = states(&bed);
    let state = bed.system_manager_state().unwrap();
    let session = bed.ssh_session(TICK).unwrap();
    let args = ["switch", "--toplevel", path_str(&b), "--protect", "sshd,gitlab-runner", "--no-isolate"];

    let first = spawn_switch(&bed, &args);
    let pid_file = bed.run_dir().join("testbed/prepopulate.pid");
    wait_for("prepopulate to start", Duration::from_secs(60), || pid_file.exists());
    let progress: Value =
        serde_json::from_str(&std::fs::read_to_string(bed.run_dir().join("safe-switch/progress.json")).unwrap())
            .unwrap();
    kill_in_bed(&bed, &progress["pid"].to_string());
    kill_in_bed(&bed, &std::fs::read_to_string(&pid_file).unwrap());
    let _ = first.wait_with_output();
    // Killed after the profile, before the files: no unit was touched yet.
    assert_eq!(bed.engine_log(), ["preActivationAssertions b", "register-profile b", "prepopulate b"]);
    nothing_acted_on(&bed, &before, &state);

    let plan = safe_switch(&bed, &["plan", "--toplevel", path_str(&b)]);
    assert!(plan.stderr.contains("was interrupted"), "{}", plan.stderr);

    let out = safe_switch(&bed, &args);
    assert_eq!(out.code(), Some(0), "{out:?}");
    for line in [
        "phases done: assertions, register-profile\n",
        "stopped during: prepopulate\n",
        "resuming it first",
        "the interrupted switch to",
    ] {
        assert!(out.stderr.contains(line), "{line}: {}", out.stderr);
    }
    // The resume went on from prepopulate; then the switch to B (already
    // running) ran the engine once more.
    assert_eq!(
        bed.engine_log(),
        [
            "preActivationAssertions b",
            "register-profile b",
            "prepopulate b",
            "prepopulate b",
            "preActivationAssertions b",
            "preActivationAssertions b",
            "register-profile b",
            "prepopulate b",
            "preActivationAssertions b",
        ]
    );
    let report = session.finish();
    assert!(report.alive_at_end && report.consecutive(), "{report:#?}");
    check_switched(&bed, &before, &a, &b);
    check_pending(&bed);
    assert!(!bed.run_dir().join("safe-switch/progress.json").exists());
}

/// A switch whose new unit fails rolls back to the generation it came
/// from, system-manager's profile before the switch, with the same
/// protection: A's engine registers A again and places its files, and the
/// state file is A's.
#[test]
fn a_failed_switch_rolls_back_to_the_profiles_previous_generation() {
    testbed::require!(bed);
    let bed = boot(&generation_a());
    let a = bed.system_manager_profile().unwrap();
    let a_units = unit_dir(&bed);
    let b = bed
        .build_generation(
            &generation_b().service("broken.service", oneshot("broken", "ExecStart=/bin/sh -c 'exit 3'\n")),
        )
        .unwrap();
    let before = states(&bed);
    let out = safe_switch(
        &bed,
        &["switch", "--toplevel", path_str(&b), "--protect", "sshd", "--rollback-on-failure", "--no-isolate"],
    );
    assert_eq!(out.code(), Some(4), "{out:?}");
    assert!(out.stderr.contains("broken.service: failed/failed"), "{}", out.stderr);
    assert!(out.stderr.contains(&format!("rolled back to {}", a.display())), "{}", out.stderr);
    assert_eq!(
        bed.engine_log(),
        [
            "preActivationAssertions b",
            "register-profile b",
            "prepopulate b",
            "preActivationAssertions b",
            "preActivationAssertions a",
            "register-profile a",
            "prepopulate a",
            "preActivationAssertions a",
        ]
    );
    assert_eq!(bed.system_manager_profile().unwrap(), a);
    assert_eq!(unit_dir(&bed), a_units);
    let after = states(&bed);
    assert_eq!(after["sshd.service"], before["sshd.service"], "sshd was protected both ways");
    assert!(after["legacy.service"].is_active(), "A's unit runs again");
    assert!(!after["cache.service"].is_active(), "B's new unit is stopped");
    assert_eq!(bed.system_manager_state().unwrap()["services"], Value::Object(services_of(&a)));
}

/// `plan --out` then `apply` of the saved plan: the same switch.
#[test]
fn a_saved_plan_is_applied_on_a_system_manager_host() {
    testbed::require!(bed);
    let bed = boot(&generation_a());
    let a = bed.system_manager_profile().unwrap();
    let b = bed.build_generation(&generation_b()).unwrap();
    let before = states(&bed);
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("plan.json");
    let out = safe_switch(
        &bed,
        &["plan", "--toplevel", path_str(&b), "--protect", "sshd,gitlab-runner", "--out", path_str(&saved)],
    );
    assert_eq!(out.code(), Some(0), "{out:?}");
    let out = safe_switch(&bed, &["apply", path_str(&saved), "--no-isolate", "--json"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    check_switched(&bed, &before, &a, &b);
    check_pending(&bed);
    // The JSON report has what the apply did, in system-manager's order,
    // and systemd did nothing the plan does not list.
    crate::support::assert_exact("a_saved_plan_is_applied_on_a_system_manager_host", &out);
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    let phases: Vec<&str> =
        report["applied"]["phases"].as_array().unwrap().iter().map(|p| p["phase"].as_str().unwrap()).collect();
    assert_eq!(&phases[..3], ["assertions", "register-profile", "prepopulate"], "{phases:?}");
    assert_eq!(phases.last(), Some(&"system-manager-state"), "{phases:?}");
    assert_eq!(report["applied"]["observed"]["unplanned"], 0, "{}", out.stdout);
    assert!(report["applied"]["log"]["text"].as_str().unwrap().contains("[safe-switch: the prepopulate step]"));
}
