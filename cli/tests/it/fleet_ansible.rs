//! The example playbook of `deploy/ansible` rolls a switch out to three
//! test beds, each a throwaway systemd with its own sshd on a loopback
//! port, reached by Ansible over real SSH with the key made for the bed:
//!
//! - `canary`: the new generation changes a service nothing protected
//!   depends on;
//! - `failing`: the new generation's version of that service fails;
//! - `deferred`: the new generation changes the protected runner, whose
//!   restart is deferred.
//!
//! The plan phase gathers three plans, the gate lets one host with
//! deferrals through, the canary's batch applies, the failing host's
//! batch fails the playbook and the rollout stops there (the deferred
//! host is never switched), every protected unit keeps its process, and
//! the merged reports validate. A second test runs the gate alone on
//! merged plans that must stop a rollout.
//!
//! Ansible (`ansible-core`, pinned in `deploy/ansible/requirements.txt`)
//! comes from the virtual environment `scripts/deps` makes under
//! `$SAFE_SWITCH_CACHE` (default `/var/cache/safe-switch`). Without it, or
//! without a test bed, the tests fail under `CI=true` and skip elsewhere.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use testbed::{Config, Generation, TestBed, UnitState};

use crate::support::{BED_STATE_DIR, BIN, NOWHERE, daemon};

/// The repository's `deploy/ansible`.
fn ansible_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/ansible")
}

/// The virtual environment with the pinned Ansible, or why there is none.
fn venv() -> Result<PathBuf, String> {
    let cache =
        std::env::var_os("SAFE_SWITCH_CACHE").map_or_else(|| PathBuf::from("/var/cache/safe-switch"), PathBuf::from);
    let venv = cache.join("ansible");
    let wanted = std::fs::read_to_string(ansible_dir().join("requirements.txt")).map_err(|e| e.to_string())?;
    match std::fs::read_to_string(venv.join("requirements.txt")) {
        Ok(installed) if installed == wanted && venv.join("bin/ansible-playbook").exists() => Ok(venv),
        Ok(_) => Err(format!(
            "{} holds other versions than deploy/ansible/requirements.txt (run scripts/deps as root)",
            venv.display()
        )),
        Err(_) => Err(format!("no Ansible in {} (run scripts/deps as root)", venv.display())),
    }
}

/// `ansible-playbook` with an environment of its own: a UTF-8 locale, its
/// home and temporary files in `dir`, no host key checks (the beds' keys are new),
/// SSH multiplexing, pipelining, files over the SSH connection itself (the
/// beds' sshd has no SFTP subsystem), and the hosts' temporary files in
/// their own `/run`.
fn ansible_playbook(venv: &Path, dir: &Path) -> Command {
    let mut cmd = Command::new(venv.join("bin/ansible-playbook"));
    let path = format!("{}:{}", venv.join("bin").display(), std::env::var("PATH").unwrap_or_default());
    cmd.current_dir(dir)
        .env("PATH", path)
        // Ansible refuses to run without a UTF-8 locale.
        .env("LANG", "C.UTF-8")
        .env("LC_ALL", "C.UTF-8")
        .env("ANSIBLE_HOME", dir.join("ansible-home"))
        .env("ANSIBLE_LOCAL_TEMP", dir.join("ansible-tmp"))
        .env("ANSIBLE_REMOTE_TMP", "/run/ansible-tmp")
        .env("ANSIBLE_HOST_KEY_CHECKING", "False")
        .env(
            "ANSIBLE_SSH_ARGS",
            "-o ControlMaster=auto -o ControlPersist=60s -o UserKnownHostsFile=/dev/null -o IdentitiesOnly=yes",
        )
        .env("ANSIBLE_SSH_CONTROL_PATH_DIR", dir.join("cp"))
        .env("ANSIBLE_PIPELINING", "True")
        .env("ANSIBLE_SSH_TRANSFER_METHOD", "piped")
        .env("ANSIBLE_FORKS", "10")
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_RETRY_FILES_ENABLED", "False")
        .env("ANSIBLE_PYTHON_INTERPRETER", "/usr/bin/python3")
        .env_remove("ANSIBLE_CONFIG");
    cmd
}

fn run(cmd: &mut Command, deadline: Duration) -> testbed::Output {
    testbed::exec::run(cmd, deadline).expect("ansible-playbook runs")
}

/// Waits until every unit is active.
fn wait_active(bed: &TestBed, units: &[&str]) {
    let start = Instant::now();
    while !units.iter().all(|u| bed.active_state(u).is_ok_and(|s| s == "active")) {
        assert!(start.elapsed() < Duration::from_secs(60), "{units:?} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The protected units whose processes must survive the rollout.
const PROTECTED: [&str; 2] = ["sshd.service", "runner.service"];

struct Host {
    name: &'static str,
    bed: TestBed,
    old: PathBuf,
    new: PathBuf,
    protected: BTreeMap<String, UnitState>,
    app: UnitState,
}

/// Boots a bed running `a` and builds `new` in it.
fn host(name: &'static str, a: &Generation, new: Generation) -> Host {
    let bed = TestBed::boot(&Config::new(a.clone())).expect("test bed boots");
    wait_active(&bed, &["sshd.service", "runner.service", "app.service"]);
    let new = bed.build_generation(&new).unwrap();
    let old = bed.current_generation().unwrap();
    let protected = bed.unit_states(&PROTECTED).unwrap();
    let app = bed.unit_states(&["app.service"]).unwrap()["app.service"].clone();
    Host { name, bed, old, new, protected, app }
}

/// The inventory: the group `safe_switch` with the hosts in this order
/// (the first is the canary), each reached on its bed's sshd as root with
/// the bed's key, with its own toplevel. The test-only variables of the
/// debug build under test keep each host's saved-plan key in its bed and
/// take the bed's generations for the Nix store.
fn inventory(hosts: &[Host]) -> Value {
    let mut members = serde_json::Map::new();
    for h in hosts {
        let store = h.new.parent().unwrap().display().to_string();
        members.insert(
            h.name.to_owned(),
            serde_json::json!({
                "ansible_host": "127.0.0.1",
                "ansible_port": h.bed.ssh_port(),
                "ansible_user": "root",
                "ansible_ssh_private_key_file": h.bed.ssh_keys().client_key,
                "safe_switch_toplevel": h.new,
                "safe_switch_environment": {
                    safe_switch_cli::test_hooks::SYSTEM_POLICY: NOWHERE,
                    safe_switch_cli::test_hooks::STATE_DIR: BED_STATE_DIR,
                    safe_switch_cli::test_hooks::STORE_DIR: store,
                },
            }),
        );
    }
    serde_json::json!({"safe_switch": {"hosts": members}})
}

#[test]
fn the_example_playbook_rolls_out_canary_first_and_stops_at_the_failing_host() {
    testbed::require!(bed);
    let venv = match venv() {
        Ok(v) => v,
        Err(reason) => return testbed::require::skip_or_fail(testbed::test_name!(), &reason),
    };
    let started = Instant::now();
    let a = Generation::new("a").sshd().service("runner.service", daemon("V=1")).service("app.service", daemon("V=1"));
    let failing_app = testbed::unit::oneshot("app", "ExecStart=/bin/false\n");
    let hosts = [
        host("canary", &a, a.clone().renamed("b-canary").service("app.service", daemon("V=2"))),
        host("failing", &a, a.clone().renamed("b-failing").service("app.service", failing_app)),
        host(
            "deferred",
            &a,
            a.clone()
                .renamed("b-deferred")
                .service("app.service", daemon("V=2"))
                .service("runner.service", daemon("V=2")),
        ),
    ];
    let booted = started.elapsed();

    let dir = tempfile::tempdir().unwrap();
    let artifacts = dir.path().join("artifacts");
    std::fs::write(dir.path().join("inventory.json"), inventory(&hosts).to_string()).unwrap();
    let extra = serde_json::json!({
        "safe_switch_bin": BIN,
        "safe_switch_controller_bin": BIN,
        "safe_switch_become": false,
        "safe_switch_protect": ["sshd", "runner"],
        "safe_switch_max_deferred": 1,
        "safe_switch_artifacts_dir": artifacts,
        "safe_switch_textfile_dir": "/run/textfile",
        "safe_switch_settle": true,
        "safe_switch_settle_wait": "20s",
    });
    std::fs::write(dir.path().join("extra.json"), extra.to_string()).unwrap();
    let out = run(
        ansible_playbook(&venv, dir.path())
            .args(["-i", "inventory.json", "-e", "@extra.json"])
            .arg(ansible_dir().join("site.yml")),
        Duration::from_secs(300),
    );
    let log = format!("{}\n{}", out.stdout, out.stderr);
    let elapsed = started.elapsed();
    eprintln!("fleet rollout: beds booted in {booted:?}, the playbook ended after {elapsed:?}");
    if std::env::var_os("FLEET_SHOW_LOG").is_some() {
        eprintln!("{log}");
    }

    // The plan phase gathered three plans, and the gate let them through.
    for h in &hosts {
        assert!(artifacts.join(format!("plans/{}.json", h.name)).exists(), "{}: no plan fetched\n{log}", h.name);
        assert!(artifacts.join(format!("saved/{}.json", h.name)).exists(), "{}: no saved plan fetched\n{log}", h.name);
    }
    let merged =
        std::fs::read_to_string(artifacts.join("merged.json")).unwrap_or_else(|e| panic!("merged.json: {e}\n{log}"));
    let merged: Value = serde_json::from_str(&merged).unwrap();
    let verdicts: Vec<(&str, &str)> = merged["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["host"].as_str().unwrap(), h["verdict"].as_str().unwrap()))
        .collect();
    assert_eq!(verdicts, [("canary", "safe"), ("failing", "safe"), ("deferred", "deferred")], "{log}");
    assert!(log.contains("3 hosts planned: 1 with deferrals (at most 1 allowed), 0 needing a reboot"), "{log}");

    // The failing host failed the playbook.
    assert_eq!(out.code(), Some(2), "the playbook fails with the failing host\n{log}");
    let applied = |name: &str| -> Option<Value> {
        let text = std::fs::read_to_string(artifacts.join(format!("apply/{name}.json"))).ok()?;
        Some(serde_json::from_str(&text).unwrap())
    };

    // The canary's batch applied, alone and first; then it settled.
    let canary = &hosts[0];
    assert_eq!(applied("canary").expect("the canary applied")["rc"], 0, "{log}");
    assert_eq!(canary.bed.current_generation().unwrap(), canary.new);
    let app = canary.bed.unit_states(&["app.service"]).unwrap()["app.service"].clone();
    assert!(
        app.is_active() && app.invocation_id != canary.app.invocation_id,
        "the canary's app was not restarted: {app:?}"
    );
    let settled: Value =
        serde_json::from_str(&std::fs::read_to_string(artifacts.join("settle/canary.json")).unwrap()).unwrap();
    assert_eq!(settled["rc"], 0, "nothing was pending on the canary: {settled}");

    // The failing host's apply ended in exit 4 and stopped the rollout: the
    // host after it was never switched.
    let failing = &hosts[1];
    let failed = applied("failing").expect("the failing host applied");
    assert_eq!(failed["rc"], 4, "{failed}");
    assert!(failed["failure"].as_str().unwrap().contains("a unit failed"), "{failed}");
    assert_eq!(failing.bed.current_generation().unwrap(), failing.new);
    assert_eq!(failing.bed.active_state("app.service").unwrap(), "failed");
    assert!(log.contains("fatal: [failing]"), "{log}");
    let deferred = &hosts[2];
    assert!(applied("deferred").is_none(), "the rollout went on after the failing host\n{log}");
    assert_eq!(deferred.bed.current_generation().unwrap(), deferred.old, "the host after the failure was switched");
    assert_eq!(deferred.bed.activations(), Vec::<String>::new());
    let recap = log.rsplit_once("PLAY RECAP").map(|(_, r)| r).unwrap_or_default();
    assert!(recap.lines().any(|l| l.starts_with("failing") && l.contains("failed=1")), "{recap}");

    // Every protected unit kept its process, on every host.
    for h in &hosts {
        let now = h.bed.unit_states(&PROTECTED).unwrap();
        assert_eq!(now, h.protected, "{}: a protected unit was restarted", h.name);
        assert!(now.values().all(UnitState::is_active), "{}: {now:?}", h.name);
    }

    // The merged reports validate.
    let reports = dir.path().join("reports");
    std::fs::create_dir_all(&reports).unwrap();
    for (from, to) in [
        ("junit/safe-switch.xml", "junit.xml"),
        ("gl-code-quality-report.json", "codequality.json"),
        ("summary.md", "summary.md"),
        ("merged.json", "merged.json"),
        ("safe_switch.prom", "safe_switch.prom"),
    ] {
        std::fs::copy(artifacts.join(from), reports.join(to)).unwrap_or_else(|e| panic!("{from}: {e}"));
    }
    crate::report_merge::check_merged_reports(&reports, &["canary", "failing", "deferred"]);

    // Each host's textfile-collector file reads with the reference
    // OpenMetrics parser: the canary's and the failing host's with their
    // apply, the deferred host's with its plan only.
    let mut files = vec![("merged".to_owned(), artifacts.join("safe_switch.prom"))];
    files.extend(hosts.iter().map(|h| (h.name.to_owned(), h.bed.run_dir().join("textfile/safe_switch.prom"))));
    let parsed = openmetrics_by_reference(&venv, &files);
    assert_eq!(parsed["canary"]["safe_switch_last_apply_exit_code"], 0.0, "{parsed:?}");
    assert_eq!(parsed["failing"]["safe_switch_last_apply_exit_code"], 4.0, "{parsed:?}");
    assert!(!parsed["deferred"].contains_key("safe_switch_last_apply_exit_code"), "{parsed:?}");
    assert_eq!(parsed["deferred"]["safe_switch_plan_verdict{verdict=deferred}"], 1.0, "{parsed:?}");
    assert_eq!(parsed["merged"]["safe_switch_plan_verdict{host=deferred,verdict=deferred}"], 1.0, "{parsed:?}");
}

/// Reads OpenMetrics files with `prometheus_client`'s parser (from the
/// pinned virtual environment): by name, each sample as
/// `name{label=value,...}` and its value. A file the parser refuses fails
/// the test.
fn openmetrics_by_reference(venv: &Path, files: &[(String, PathBuf)]) -> BTreeMap<String, BTreeMap<String, f64>> {
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for name, path in json.loads(sys.argv[1]):
    samples = {}
    with open(path) as f:
        for family in text_string_to_metric_families(f.read()):
            for s in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in s.labels.items())
                samples[s.name + ("{" + labels + "}" if labels else "")] = s.value
    out[name] = samples
print(json.dumps(out))
"#;
    let arg = serde_json::to_string(files).unwrap();
    let out = Command::new(venv.join("bin/python")).args(["-c", script, &arg]).output().unwrap();
    assert!(out.status.success(), "the reference parser refused a file: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The gate alone, on the controller, over plans of the `merge-fleet`
/// golden case: a refused host, more hosts with deferrals than allowed (as
/// a number or a share), a host that needs a reboot, and a host that was
/// not planned each stop the rollout, with a message naming the hosts;
/// within the limits it passes.
#[test]
fn the_gate_stops_a_rollout_on_the_merged_plans() {
    let venv = match venv() {
        Ok(v) => v,
        Err(reason) => return testbed::require::skip_or_fail(testbed::test_name!(), &reason),
    };
    let dir = tempfile::tempdir().unwrap();
    let plans = crate::support::golden("merge-fleet/plans");
    let file = |host: &str| if host == "kernel-1" { "kernel-1.saved.json".to_owned() } else { format!("{host}.json") };
    /// A scenario: its name, the hosts planned, the hosts that should have
    /// been, the most hosts with deferrals, whether a reboot is allowed,
    /// and what the gate says ("passed" or part of its message).
    type Scenario<'a> = (&'a str, &'a [&'a str], &'a [&'a str], &'a str, bool, &'a str);
    let scenarios: [Scenario<'_>; 9] = [
        ("within-the-limit", &["web-1", "web-2"], &["web-1", "web-2"], "1", false, "passed"),
        (
            "too-many-deferred",
            &["web-1", "web-2"],
            &["web-1", "web-2"],
            "0",
            false,
            "deferred on 1 hosts, more than the 0 allowed (safe_switch_max_deferred): web-2",
        ),
        ("share-allows-one", &["web-1", "web-2"], &["web-1", "web-2"], "50%", false, "passed"),
        ("share-allows-none", &["web-1", "web-2"], &["web-1", "web-2"], "49%", false, "more than the 0 allowed"),
        ("refused", &["web-1", "db-1"], &["web-1", "db-1"], "5", false, "refused: db-1"),
        (
            "reboot",
            &["web-1", "kernel-1"],
            &["web-1", "kernel-1"],
            "0",
            false,
            "a reboot is needed (safe_switch_allow_reboot is false): kernel-1",
        ),
        ("reboot-allowed", &["web-1", "kernel-1"], &["web-1", "kernel-1"], "0", true, "passed"),
        ("not-planned", &["web-1"], &["web-1", "web-2"], "5", false, "not every host could be planned: web-2"),
        (
            "every-reason",
            &["db-1", "web-2", "kernel-1"],
            &["db-1", "web-2", "kernel-1"],
            "0",
            false,
            "refused: db-1; deferred on 1 hosts",
        ),
    ];
    let mut list = Vec::new();
    for (name, planned, targeted, max, reboot, _) in &scenarios {
        let artifacts = dir.path().join(name);
        std::fs::create_dir_all(artifacts.join("plans")).unwrap();
        for host in *planned {
            std::fs::copy(plans.join(file(host)), artifacts.join(format!("plans/{host}.json"))).unwrap();
        }
        list.push(serde_json::json!({
            "name": name, "planned": planned, "targeted": targeted, "max": max, "reboot": reboot, "artifacts": artifacts,
        }));
    }
    let vars = serde_json::json!({"scenarios": list, "bin": BIN, "outcomes_file": dir.path().join("outcomes.json")});
    std::fs::write(dir.path().join("vars.json"), vars.to_string()).unwrap();
    std::fs::write(
        dir.path().join("gate.yml"),
        "- hosts: localhost\n  connection: local\n  gather_facts: false\n  tasks:\n\
         \x20   - ansible.builtin.include_tasks: scenario.yml\n      loop: \"{{ scenarios }}\"\n      loop_control: {loop_var: scenario}\n\
         \x20   - ansible.builtin.copy: {content: \"{{ outcomes | to_json }}\", dest: \"{{ outcomes_file }}\", mode: \"0644\"}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("scenario.yml"),
        "- block:\n\
         \x20   - ansible.builtin.set_fact:\n\
         \x20       safe_switch_planned_hosts: \"{{ scenario.planned }}\"\n\
         \x20       safe_switch_targeted_hosts: \"{{ scenario.targeted }}\"\n\
         \x20       safe_switch_rollout: {controller_bin: \"{{ bin }}\", artifacts_dir: \"{{ scenario.artifacts }}\", max_deferred: \"{{ scenario.max }}\", allow_reboot: \"{{ scenario.reboot }}\"}\n\
         \x20   - ansible.builtin.include_role: {name: safe_switch, tasks_from: gate}\n\
         \x20   - ansible.builtin.set_fact: {outcomes: \"{{ outcomes | default({}) | combine({scenario.name: 'passed'}) }}\"}\n\
         \x20 rescue:\n\
         \x20   - ansible.builtin.set_fact: {outcomes: \"{{ outcomes | default({}) | combine({scenario.name: ansible_failed_result.msg}) }}\"}\n",
    )
    .unwrap();
    let out = run(
        ansible_playbook(&venv, dir.path()).env("ANSIBLE_ROLES_PATH", ansible_dir().join("roles")).args([
            "-e",
            "@vars.json",
            "gate.yml",
        ]),
        Duration::from_secs(120),
    );
    let log = format!("{}\n{}", out.stdout, out.stderr);
    assert_eq!(out.code(), Some(0), "{log}");
    if std::env::var_os("FLEET_SHOW_LOG").is_some() {
        eprintln!("{}", std::fs::read_to_string(dir.path().join("outcomes.json")).unwrap_or_default());
    }
    let outcomes: BTreeMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("outcomes.json")).unwrap()).unwrap();
    for (name, .., expected) in &scenarios {
        let got = outcomes.get(*name).unwrap_or_else(|| panic!("{name}: no outcome\n{log}"));
        if *expected == "passed" {
            assert_eq!(got, "passed", "{name}");
        } else {
            assert!(got.contains(expected), "{name}: expected {expected:?} in {got:?}");
            assert!(
                got.contains("the rollout is stopped before any change") || name == &"not-planned",
                "{name}: {got}"
            );
        }
    }
}
