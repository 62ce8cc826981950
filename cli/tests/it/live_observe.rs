//! An apply that does more than its plan says, on a real systemd: the
//! plan is made wrong on purpose, and the apply must say so.
//!
//! After `plan --out`, a drop-in created on the host (in the bed's
//! `/run/systemd/system`, which the planner is told nothing about) ties a
//! running unit to a unit the plan acts on; a daemon-reload makes systemd
//! read it. The saved plan still passes its checks (nothing it recorded
//! changed), so `apply` carries it out, and systemd then acts on the tied
//! unit too. The apply watches every job systemd runs: the effect on the
//! tied unit is neither planned nor predicted, and is reported as
//! unplanned; on a protected unit it is exit 4, even when the unit keeps
//! its process and invocation (a reload).

use std::path::PathBuf;

use testbed::{Config, Generation, TestBed};

use crate::support::{assert_exact, path_str, safe_switch};

/// A web server whose change restarts it in place (`X-StopIfChanged=false`).
fn web(version: u32) -> String {
    format!(
        "[Unit]\nDescription=web\n\n[Service]\nEnvironment=V={version}\nExecStart=/bin/sleep infinity\nX-StopIfChanged=false\n"
    )
}

/// A web server whose change reloads it (`X-ReloadIfChanged=true`).
fn reloaded_web(version: u32) -> String {
    format!(
        "[Unit]\nDescription=web\nX-Reload-Triggers={version}\n\n[Service]\nExecStart=/bin/sleep infinity\nExecReload=/bin/true\nX-ReloadIfChanged=true\n"
    )
}

/// A service that runs on its own; its reload takes a second.
const VICTIM: &str =
    "[Unit]\nDescription=victim\n\n[Service]\nExecStart=/bin/sleep infinity\nExecReload=/bin/sleep 1\n";

/// Boots generation A with sshd, `web` and the victim, and builds B, in
/// which only `web` differs.
fn boot(web_a: String, web_b: String) -> (TestBed, PathBuf) {
    let a = Generation::new("a").sshd().service("web.service", web_a).service("victim.service", VICTIM);
    let bed = TestBed::boot(&Config::new(a.clone())).expect("test bed boots");
    for unit in ["web.service", "victim.service"] {
        bed.wait_for_state(unit, "active").unwrap();
    }
    let b = bed.build_generation(&a.renamed("b").service("web.service", web_b)).unwrap();
    (bed, b)
}

/// Saves the plan to `b` with `protect`, then makes it wrong: a drop-in
/// on `unit` with `lines`, which systemd reads at once.
fn wrong_saved_plan(bed: &TestBed, b: &std::path::Path, protect: &str, unit: &str, lines: &str) -> String {
    let out = safe_switch(bed, &["plan", "--toplevel", path_str(b), "--protect", protect, "--out", "/run/plan.json"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let dir = bed.run_dir().join(format!("systemd/system/{unit}.d"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("50-unknown-to-the-plan.conf"), format!("[Unit]\n{lines}\n")).unwrap();
    bed.systemctl(&["daemon-reload"]).unwrap();
    "/run/plan.json".to_owned()
}

/// The `applied` section of the JSON report the apply wrote.
fn applied(bed: &TestBed) -> serde_json::Value {
    let text = std::fs::read_to_string(bed.run_dir().join("report.json")).unwrap();
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    report["applied"].clone()
}

/// The unplanned effects of the report: `(unit, effect, protected)`.
fn unplanned(applied: &serde_json::Value) -> Vec<(String, String, bool)> {
    applied["observed"]["effects"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["class"] == "unplanned")
        .map(|e| {
            (e["unit"].as_str().unwrap().to_owned(), e["effect"].as_str().unwrap().to_owned(), e["protected"] == true)
        })
        .collect()
}

#[test]
fn a_restart_the_plan_does_not_know_about_is_reported_as_unplanned() {
    testbed::require!(bed);
    let (bed, b) = boot(web(1), web(2));
    let plan = wrong_saved_plan(&bed, &b, "sshd", "victim.service", "PartOf=web.service");
    let victim = bed.unit_states(&["victim.service"]).unwrap()["victim.service"].clone();

    let out = safe_switch(&bed, &["apply", &plan, "--no-isolate", "--report", "json=/run/report.json", "--json"]);
    // Not protected: reported, not a failure.
    assert_eq!(out.code(), Some(0), "{out:?}");
    // Standard output is one document, the plan with what the apply did,
    // as the file is.
    let stdout: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
    assert_eq!(
        stdout,
        serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(bed.run_dir().join("report.json")).unwrap())
            .unwrap()
    );
    // Its job reads `restart`, or `start` once systemd has done the stop
    // half of it: the new invocation tells the restart.
    assert!(out.stderr.contains("UNPLANNED: victim.service: restart (active -> active; jobs: "), "{}", out.stderr);
    assert!(!out.stderr.contains("[protected]"), "{}", out.stderr);
    assert!(out.stderr.contains(" predicted, 1 unplanned) of "), "{}", out.stderr);
    assert_eq!(bed.current_generation().unwrap(), b);
    // systemd did restart it, as the report says.
    let after = bed.unit_states(&["victim.service"]).unwrap()["victim.service"].clone();
    assert_ne!(after.invocation_id, victim.invocation_id);
    assert_ne!(after.main_pid, victim.main_pid);
    let applied = applied(&bed);
    assert_eq!(unplanned(&applied), [("victim.service".to_owned(), "restart".to_owned(), false)]);
    assert_eq!(applied["observed"]["unplanned"], 1);
    let web = applied["observed"]["effects"].as_array().unwrap().iter().find(|e| e["unit"] == "web.service").cloned();
    assert_eq!(web.map(|e| e["class"].clone()), Some("planned".into()), "{applied:#}");
}

#[test]
fn an_unplanned_restart_of_a_protected_unit_is_exit_4() {
    testbed::require!(bed);
    let (bed, b) = boot(web(1), web(2));
    // The plan protects the victim, and nothing it knows leads there.
    let plan = wrong_saved_plan(&bed, &b, "sshd,victim", "victim.service", "PartOf=web.service");

    let out = safe_switch(&bed, &["apply", &plan, "--no-isolate", "--report", "json=/run/report.json"]);
    assert_eq!(out.code(), Some(4), "{out:?}");
    let line = out.stderr.lines().find(|l| l.starts_with("UNPLANNED: ")).unwrap_or_else(|| panic!("{}", out.stderr));
    assert!(line.starts_with("UNPLANNED: victim.service: restart (active -> active; jobs: "), "{line}");
    assert!(line.ends_with(") [protected]"), "{line}");
    assert!(out.stderr.contains("PROTECTED UNIT DISTURBED: victim.service: "), "{}", out.stderr);
    assert_eq!(unplanned(&applied(&bed)), [("victim.service".to_owned(), "restart".to_owned(), true)]);
}

#[test]
fn an_unplanned_reload_of_a_protected_unit_is_exit_4_though_its_process_is_the_same() {
    testbed::require!(bed);
    let (bed, b) = boot(reloaded_web(1), reloaded_web(2));
    let plan = wrong_saved_plan(&bed, &b, "sshd,victim", "web.service", "PropagatesReloadTo=victim.service");
    let victim = bed.unit_states(&["victim.service"]).unwrap()["victim.service"].clone();

    let out = safe_switch(&bed, &["apply", &plan, "--no-isolate", "--report", "json=/run/report.json"]);
    assert_eq!(out.code(), Some(4), "{out:?}");
    assert!(out.stderr.contains("reloading the following units: web.service"), "{}", out.stderr);
    // Its process and invocation are those of before: the check of them
    // alone would have passed.
    assert_eq!(bed.unit_states(&["victim.service"]).unwrap()["victim.service"], victim);
    assert!(
        out.stderr.contains("UNPLANNED: victim.service: reload (active -> active; jobs: reload: done) [protected]\n"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("PROTECTED UNIT DISTURBED: victim.service: reload outside the plan\n"),
        "{}",
        out.stderr
    );
    let applied = applied(&bed);
    assert_eq!(unplanned(&applied), [("victim.service".to_owned(), "reload".to_owned(), true)]);
    let check = applied["protected"].as_array().unwrap().iter().find(|c| c["unit"] == "victim.service").cloned();
    assert_eq!(check.map(|c| c.get("disturbed").is_none()), Some(true), "{applied:#}");
}

/// The same tie, in the generations: the plan predicts the restart it
/// causes, and the apply sees nothing it did not expect.
#[test]
fn a_restart_the_plan_predicts_is_not_unplanned() {
    testbed::require!(bed);
    let helper = "[Unit]\nDescription=helper\nPartOf=web.service\n\n[Service]\nExecStart=/bin/sleep infinity\n";
    let a = Generation::new("a").sshd().service("web.service", web(1)).service("helper.service", helper);
    let bed = TestBed::boot(&Config::new(a.clone())).expect("test bed boots");
    for unit in ["web.service", "helper.service"] {
        bed.wait_for_state(unit, "active").unwrap();
    }
    let b = bed.build_generation(&a.renamed("b").service("web.service", web(2))).unwrap();
    let helper_before = bed.unit_states(&["helper.service"]).unwrap()["helper.service"].clone();
    let out = safe_switch(&bed, &["switch", "--toplevel", path_str(&b), "--protect", "sshd", "--no-isolate", "--json"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let predicted: Vec<usize> = crate::support::observed(&out).iter().map(|(_, _, p)| *p).collect();
    assert_exact("a_restart_the_plan_predicts_is_not_unplanned", &out);
    assert_eq!(predicted, [1], "{}", out.stderr);
    assert_ne!(
        bed.unit_states(&["helper.service"]).unwrap()["helper.service"].invocation_id,
        helper_before.invocation_id
    );
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let consequences = report["consequences"].as_array().unwrap();
    assert!(
        consequences
            .iter()
            .any(|c| c["unit"] == "helper.service" && c["effect"] == "restart" && c["by"] == "web.service"),
        "{report:#}"
    );
    let effect = report["applied"]["observed"]["effects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["unit"] == "helper.service")
        .cloned();
    assert_eq!(
        effect.map(|e| (e["class"].clone(), e["by"].clone())),
        Some(("predicted".into(), "web.service".into())),
        "{report:#}"
    );
}
