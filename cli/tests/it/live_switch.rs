//! `safe-switch plan` and `switch` against a real systemd: failures, time
//! outs, refusals, the lock, the root check, an interrupted apply, and the
//! isolation in a transient unit.
//!
//! Each test boots a throwaway systemd (the `testbed` crate) and runs the
//! binary inside its namespaces, so `/run/current-system`,
//! `/etc/systemd/system`, `/run/safe-switch` and the default D-Bus address
//! are the bed's own. The assertions are checked against the bed with
//! `systemctl`, independently of the code under test.
//!
//! These tests need root and namespaces: under `CI=true` they fail when
//! they cannot run, elsewhere they skip with a message.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use testbed::{Config, Generation, TestBed};

use crate::support::{BIN, assert_exact, bed_file, daemon, in_bed, path_str, safe_switch, safe_switch_with};

fn oneshot(exec: &str) -> String {
    testbed::unit::oneshot("oneshot", &format!("ExecStart={exec}\n"))
}

/// Generation A: sshd, a daemon that will change, one that will be removed.
fn generation_a() -> Generation {
    Generation::new("a").sshd().service("changed.service", daemon("V=1")).service("removed.service", daemon("V=1"))
}

fn boot(a: &Generation) -> TestBed {
    let bed = TestBed::boot(&Config::new(a.clone())).expect("test bed boots");
    // Boot returns once sshd listens; the other units may still be
    // starting, and the tests compare against their running state.
    for unit in ["changed.service", "removed.service"] {
        wait_for(&format!("{unit} to start"), Duration::from_secs(60), || {
            bed.active_state(unit).is_ok_and(|s| s == "active")
        });
    }
    bed
}

fn spawn_switch(bed: &TestBed, args: &[&str]) -> Child {
    let mut cmd = bed.command(BIN);
    in_bed(&mut cmd, bed).args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.spawn().expect("safe-switch starts")
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn nothing_changed(bed: &TestBed, before_current: &Path) {
    assert_eq!(bed.current_generation().unwrap(), before_current, "/run/current-system moved");
    assert_eq!(bed.activations(), Vec::<String>::new(), "an activation script ran");
    assert_eq!(bed.active_state("changed.service").unwrap(), "active");
    assert_eq!(bed.active_state("removed.service").unwrap(), "active");
}

#[test]
fn switch_applies_the_plan_and_keeps_protected_units() {
    testbed::require!(bed);
    let a = generation_a();
    let bed = boot(&a);
    let b = bed
        .build_generation(
            &a.clone()
                .renamed("b")
                .service("changed.service", daemon("V=2"))
                .without("removed.service")
                .service("new.service", daemon("V=1"))
                .wanted_by("new.service", "multi-user.target"),
        )
        .unwrap();
    let sshd = bed.unit_states(&["sshd.service"]).unwrap()["sshd.service"].clone();
    let changed_pid = bed.main_pid("changed.service").unwrap();
    let out = safe_switch(&bed, &["switch", "--toplevel", path_str(&b), "--protect", "sshd", "--no-isolate"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stderr.contains("protected sshd.service: untouched"), "{}", out.stderr);
    assert_exact("switch_applies_the_plan_and_keeps_protected_units", &out);
    // The activation's output was shown as it came, and kept.
    assert!(out.stderr.contains("activating the configuration...\nsetting up /etc...\n"), "{}", out.stderr);
    let log = std::fs::read_to_string(bed.run_dir().join("safe-switch/activation.log")).unwrap();
    assert!(log.ends_with("setting up /etc...\n[safe-switch: the activation script exited with status 0]\n"), "{log}");
    assert_eq!(bed.current_generation().unwrap(), b);
    let after = bed.unit_states(&["sshd.service"]).unwrap()["sshd.service"].clone();
    assert_eq!(after, sshd, "sshd was touched");
    assert_ne!(bed.main_pid("changed.service").unwrap(), changed_pid);
    assert_eq!(bed.active_state("new.service").unwrap(), "active");
    assert_eq!(bed.active_state("removed.service").unwrap(), "inactive");
    assert!(!bed.run_dir().join("safe-switch/progress.json").exists());
}

/// A switch that needs a reboot carries out what it can and says what
/// waits, restarting nothing in its place; an activation that asks for a
/// reboot is heard.
#[test]
fn a_switch_that_needs_a_reboot_says_so_after_the_apply() {
    testbed::require!(bed);
    let a = generation_a().file("kernel", "kernel 1");
    let bed = boot(&a);
    let b = bed
        .build_generation(
            &a.clone()
                .renamed("b")
                .file("kernel", "kernel 2")
                .service("changed.service", daemon("V=2"))
                .activate_lines("touch /run/reboot-required\n"),
        )
        .unwrap();
    let sshd = bed.unit_states(&["sshd.service"]).unwrap()["sshd.service"].clone();
    let out = safe_switch(&bed, &["switch", "--toplevel", path_str(&b), "--protect", "sshd", "--no-isolate"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stdout.contains("needs a reboot: these changes take effect only at the next boot"), "{}", out.stdout);
    assert!(
        out.stderr.contains("needs a reboot: part of this switch takes effect only at the next boot (kernel)"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("the activation asked for one (/run/reboot-required appeared"), "{}", out.stderr);
    assert_eq!(bed.current_generation().unwrap(), b);
    assert_eq!(bed.unit_states(&["sshd.service"]).unwrap()["sshd.service"], sshd, "sshd was touched");
    // The next plan knows the marker.
    let out = safe_switch(&bed, &["plan", "--toplevel", path_str(&b), "--json"]);
    let plan: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(plan["reboot"][0]["reason"], "activation", "{plan}");
}

#[test]
fn a_unit_that_fails_to_start_is_reported_and_the_others_are_still_handled() {
    testbed::require!(bed);
    let a = generation_a();
    let bed = boot(&a);
    let b = bed
        .build_generation(
            &a.clone()
                .renamed("b")
                .service("broken.service", oneshot("/bin/sh -c 'echo broken on purpose; exit 3'"))
                .wanted_by("broken.service", "multi-user.target")
                .service("changed.service", daemon("V=2"))
                .service("new.service", daemon("V=1"))
                .wanted_by("new.service", "multi-user.target"),
        )
        .unwrap();
    let changed_pid = bed.main_pid("changed.service").unwrap();
    let out = safe_switch(&bed, &["switch", "--toplevel", path_str(&b), "--no-isolate"]);
    assert_eq!(out.code(), Some(4), "{out:?}");
    assert_exact("a_unit_that_fails_to_start_is_reported_and_the_others_are_still_handled", &out);
    assert!(out.stderr.contains("warning: the following units failed:"), "{}", out.stderr);
    assert!(
        out.stderr.contains("broken.service: failed/failed, result exit-code, main process exited with status 3"),
        "{}",
        out.stderr
    );
    assert_eq!(bed.active_state("broken.service").unwrap(), "failed");
    // The other units were handled all the same.
    assert_eq!(bed.active_state("new.service").unwrap(), "active");
    assert_ne!(bed.main_pid("changed.service").unwrap(), changed_pid);
    assert_eq!(bed.current_generation().unwrap(), b);
}

#[test]
fn a_job_that_hangs_times_out_and_is_cancelled() {
    testbed::require!(bed);
    let a =
        generation_a().service("hangs.service", oneshot("/bin/true")).wanted_by("hangs.service", "multi-user.target");
    let bed = boot(&a);
    let b = bed
        .build_generation(
            &a.clone()
                .renamed("b")
                .service("hangs.service", oneshot("/bin/sleep 600"))
                .service("new.service", daemon("V=1"))
                .wanted_by("new.service", "multi-user.target"),
        )
        .unwrap();
    let out = safe_switch(&bed, &["switch", "--toplevel", path_str(&b), "--no-isolate", "--job-timeout", "1"]);
    assert_eq!(out.code(), Some(4), "{out:?}");
    assert_exact("a_job_that_hangs_times_out_and_is_cancelled", &out);
    assert!(out.stderr.contains("failed to start hangs.service: timed out after 1 s, cancelled"), "{}", out.stderr);
    assert_eq!(bed.active_state("new.service").unwrap(), "active");
    // The hanging start was cancelled, not left in systemd's queue.
    let jobs = bed.systemctl(&["list-jobs", "--no-legend"]).unwrap();
    assert!(!jobs.contains("hangs.service"), "{jobs}");
    // Cancelling a job does not kill what it started (systemd's
    // TimeoutStartSec= does that); the unit is reported as still starting.
    assert!(out.stderr.contains("hangs.service: activating/start"), "{}", out.stderr);
}

#[test]
fn dbus_unreachable_is_a_clear_error_before_any_change() {
    testbed::require!(bed);
    let a = generation_a();
    let bed = boot(&a);
    let current = bed.current_generation().unwrap();
    let b = bed.build_generation(&a.clone().renamed("b").service("changed.service", daemon("V=2"))).unwrap();
    for extra in [&["--no-isolate"][..], &[][..]] {
        let mut cmd = bed.command(BIN);
        in_bed(&mut cmd, &bed).args(["switch", "--toplevel", path_str(&b)]).args(extra);
        cmd.env("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/run/no-such-bus");
        let out = testbed::exec::run(&mut cmd, Duration::from_secs(60)).unwrap();
        assert_eq!(out.code(), Some(1), "{out:?}");
        assert!(out.stderr.contains("cannot reach systemd over D-Bus; nothing was changed"), "{}", out.stderr);
        assert!(out.stderr.contains("/run/no-such-bus"), "{}", out.stderr);
        nothing_changed(&bed, &current);
    }
}

#[test]
fn a_toplevel_without_activate_is_refused_before_any_change() {
    testbed::require!(bed);
    let a = generation_a();
    let bed = boot(&a);
    let current = bed.current_generation().unwrap();
    let b = bed
        .build_generation(&a.clone().renamed("b").service("changed.service", daemon("V=2")).without_activate())
        .unwrap();
    for extra in [&["--no-isolate"][..], &[][..]] {
        let mut args = vec!["switch", "--toplevel", path_str(&b)];
        args.extend_from_slice(extra);
        let out = safe_switch(&bed, &args);
        assert_eq!(out.code(), Some(1), "{out:?}");
        assert!(out.stderr.contains("the toplevel has no activation script"), "{}", out.stderr);
        assert!(out.stderr.contains("nothing was changed"), "{}", out.stderr);
        nothing_changed(&bed, &current);
    }
}

#[test]
fn a_second_concurrent_switch_gets_a_lock_error_and_touches_nothing() {
    testbed::require!(bed);
    let a = generation_a();
    let bed = boot(&a);
    // The first switch's activation waits until the test lets it go on.
    let b = bed.build_generation(&held_b(&a)).unwrap();
    let c = bed.build_generation(&a.clone().renamed("c").service("removed.service", daemon("V=3"))).unwrap();
    let first = spawn_switch(&bed, &["switch", "--toplevel", path_str(&b), "--no-isolate"]);
    wait_for("the first switch to activate", Duration::from_secs(60), || {
        bed.run_dir().join("testbed/activating").exists()
    });
    let removed_pid = bed.main_pid("removed.service").unwrap();
    for extra in [&["--no-isolate"][..], &[][..]] {
        let mut args = vec!["switch", "--toplevel", path_str(&c)];
        args.extend_from_slice(extra);
        let out = safe_switch(&bed, &args);
        assert_eq!(out.code(), Some(1), "{out:?}");
        assert!(out.stderr.contains("another safe-switch is running"), "{}", out.stderr);
        assert!(out.stderr.contains("/run/safe-switch/lock"), "{}", out.stderr);
        assert_eq!(bed.main_pid("removed.service").unwrap(), removed_pid);
    }
    std::fs::write(bed.run_dir().join("testbed/go-on"), "").unwrap();
    let out = first.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(bed.activations(), vec!["b".to_owned()]);
}

#[test]
fn not_root_can_plan_but_not_switch() {
    testbed::require!(bed);
    let a = generation_a();
    let bed = boot(&a);
    let current = bed.current_generation().unwrap();
    let b = bed.build_generation(&a.clone().renamed("b").service("changed.service", daemon("V=2"))).unwrap();
    // The bed's directory is private to root; the generations in it must
    // be readable to plan as another user.
    make_readable(bed.root());
    let as_nobody = |args: &[&str]| {
        let mut cmd = bed.command("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN]).args(args);
        in_bed(&mut cmd, &bed);
        testbed::exec::run(&mut cmd, Duration::from_secs(60)).unwrap()
    };
    let plan = as_nobody(&["plan", "--toplevel", path_str(&b), "--json"]);
    assert_eq!(plan.code(), Some(0), "{plan:?}");
    let parsed: plan_model::Plan = serde_json::from_str(&plan.stdout).unwrap();
    assert!(parsed.unit("changed.service").is_some(), "{}", plan.stdout);
    let out = as_nobody(&["switch", "--toplevel", path_str(&b)]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("switch must run as root"), "{}", out.stderr);
    assert!(out.stderr.contains("nothing was changed"), "{}", out.stderr);
    nothing_changed(&bed, &current);
}

fn make_readable(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut p = PathBuf::from(root);
    loop {
        if let Ok(meta) = std::fs::metadata(&p) {
            let mode = meta.permissions().mode();
            let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode | 0o055));
        }
        if !p.pop() || p.as_os_str().is_empty() || p == Path::new("/") {
            break;
        }
    }
}

/// Generation B that changes sshd too, whose protection then touches
/// the plan.
fn sshd_changed_b(a: &Generation) -> Generation {
    a.clone().renamed("b").sshd_with("", "Environment=VERSION=2\n").service("changed.service", daemon("V=2"))
}

/// Generation B whose activation holds the switch (and its lock) until
/// the test lets it go on: it touches `/run/testbed/activating`, then waits
/// for `/run/testbed/go-on`.
fn held_b(a: &Generation) -> Generation {
    a.clone()
        .renamed("b")
        .service("changed.service", daemon("V=2"))
        .activate_lines("touch /run/testbed/activating\nwhile [ ! -e /run/testbed/go-on ]; do sleep 0.05; done")
}

/// Generation B for the interruption tests: its activation stops (the
/// first time only) until the test has killed the switch.
fn slow_b(a: &Generation) -> Generation {
    a.clone()
        .renamed("b")
        .service("changed.service", daemon("V=2"))
        .service("new.service", daemon("V=1"))
        .wanted_by("new.service", "multi-user.target")
        .activate_lines(
            "if [ ! -e /run/testbed/slow-once ]; then touch /run/testbed/slow-once; \
             echo $$ > /run/testbed/activate.pid; exec sleep 600; fi",
        )
}

fn kill_in_bed(bed: &TestBed, pid: &str) {
    let out = bed.run(&["kill", "-9", pid.trim()]).unwrap();
    assert!(out.success(), "{out:?}");
}

/// Starts a switch to a [`slow_b`] generation, waits until its activation
/// stopped, and kills the switch and its activation script where they
/// stand; returns the progress record the switch had written.
fn interrupt(bed: &TestBed, args: &[&str]) -> serde_json::Value {
    let first = spawn_switch(bed, args);
    let pid_file = bed.run_dir().join("testbed/activate.pid");
    wait_for("the activation to start", Duration::from_secs(60), || pid_file.exists());
    let progress: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bed.run_dir().join("safe-switch/progress.json")).unwrap())
            .unwrap();
    kill_in_bed(bed, &progress["pid"].to_string());
    kill_in_bed(bed, &std::fs::read_to_string(&pid_file).unwrap());
    let _ = first.wait_with_output();
    progress
}

#[test]
fn an_apply_killed_in_the_middle_is_reported_and_resumed_by_the_next_run() {
    testbed::require!(bed);
    let a = generation_a();
    let bed = boot(&a);
    let b = bed.build_generation(&slow_b(&a)).unwrap();
    interrupt(&bed, &["switch", "--toplevel", path_str(&b), "--no-isolate"]);
    assert_eq!(bed.active_state("changed.service").unwrap(), "inactive", "the stop phase ran");
    assert_ne!(bed.current_generation().unwrap(), b);

    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("plan.json");
    let plan = safe_switch(&bed, &["plan", "--toplevel", path_str(&b), "--out", path_str(&saved)]);
    assert!(plan.stderr.contains("was interrupted"), "{}", plan.stderr);

    // A saved plan does not finish someone else's interrupted switch.
    let out = safe_switch(&bed, &["apply", path_str(&saved), "--no-isolate"]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("an earlier switch was interrupted"), "{}", out.stderr);
    assert!(bed.run_dir().join("safe-switch/progress.json").exists(), "the record is kept for `switch`");
    assert_ne!(bed.current_generation().unwrap(), b);

    let out = safe_switch(&bed, &["switch", "--toplevel", path_str(&b), "--no-isolate"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_exact("an_apply_killed_in_the_middle_is_reported_and_resumed_by_the_next_run", &out);
    assert!(out.stderr.contains("was interrupted"), "{}", out.stderr);
    assert!(out.stderr.contains("phases done: stop"), "{}", out.stderr);
    assert!(out.stderr.contains("stopped during: activate"), "{}", out.stderr);
    assert!(out.stderr.contains("resuming it first"), "{}", out.stderr);
    assert_eq!(bed.current_generation().unwrap(), b);
    assert_eq!(bed.active_state("changed.service").unwrap(), "active");
    assert_eq!(bed.active_state("new.service").unwrap(), "active");
    assert!(!bed.run_dir().join("safe-switch/progress.json").exists());
    // The log of the activation's output kept the interrupted run's, the
    // resume's and the switch's that followed in the same run.
    let log = std::fs::read_to_string(bed.run_dir().join("safe-switch/activation.log")).unwrap();
    assert_eq!(log.matches("setting up /etc...\n").count(), 3, "{log}");
    assert!(log.contains("[safe-switch: resumed by process "), "{log}");
    assert_eq!(log.matches("[safe-switch: the activation script exited with status 0]\n").count(), 2, "{log}");
}

#[test]
fn an_isolated_switch_finishes_when_its_caller_is_killed() {
    testbed::require!(bed);
    let a = generation_a();
    let bed = boot(&a);
    let b = bed.build_generation(&held_b(&a)).unwrap();
    let mut caller = spawn_switch(&bed, &["switch", "--toplevel", path_str(&b)]);
    wait_for("the activation to start", Duration::from_secs(60), || bed.run_dir().join("testbed/activating").exists());
    // The caller goes away (as a dropped SSH connection would take it).
    caller.kill().unwrap();
    let _ = caller.wait();
    let units = bed.systemctl(&["list-units", "--no-legend", "safe-switch-*"]).unwrap();
    assert!(units.contains("safe-switch-"), "the apply runs in a transient unit: {units}");
    std::fs::write(bed.run_dir().join("testbed/go-on"), "").unwrap();
    wait_for("the switch to finish", Duration::from_secs(60), || bed.run_dir().join("safe-switch/last.json").exists());
    assert_eq!(bed.current_generation().unwrap(), b);
    wait_for("changed.service to run again", Duration::from_secs(30), || {
        bed.active_state("changed.service").unwrap() == "active"
    });
}

#[test]
fn an_isolated_switch_relays_output_and_exit_status() {
    testbed::require!(bed);
    let a = generation_a();
    let bed = boot(&a);
    let b = bed
        .build_generation(
            &a.clone()
                .renamed("b")
                .service("broken.service", oneshot("/bin/false"))
                .wanted_by("broken.service", "multi-user.target"),
        )
        .unwrap();
    let out = safe_switch(&bed, &["switch", "--toplevel", path_str(&b), "--protect", "sshd"]);
    assert_eq!(out.code(), Some(4), "{out:?}");
    assert_exact("an_isolated_switch_relays_output_and_exit_status", &out);
    assert!(out.stderr.contains("applying in the transient unit safe-switch-"), "{}", out.stderr);
    assert!(out.stderr.contains("broken.service: failed/failed"), "{}", out.stderr);
    assert!(out.stdout.contains("broken.service"), "the plan is relayed on stdout: {}", out.stdout);
    let units = bed.systemctl(&["list-units", "--all", "--no-legend", "safe-switch-*"]).unwrap();
    assert!(units.trim().is_empty(), "the transient unit is collected: {units}");
}

#[test]
fn rollback_on_failure_switches_back_with_the_same_protections() {
    testbed::require!(bed);
    let a = generation_a();
    let bed = boot(&a);
    let current = bed.current_generation().unwrap();
    let b = bed
        .build_generation(
            &a.clone()
                .renamed("b")
                .service("changed.service", daemon("V=2"))
                .service("broken.service", oneshot("/bin/false"))
                .wanted_by("broken.service", "multi-user.target"),
        )
        .unwrap();
    let sshd = bed.unit_states(&["sshd.service"]).unwrap()["sshd.service"].clone();
    let out = safe_switch(
        &bed,
        &["switch", "--toplevel", path_str(&b), "--protect", "sshd", "--rollback-on-failure", "--no-isolate"],
    );
    assert_eq!(out.code(), Some(4), "{out:?}");
    assert_eq!(crate::support::observed(&out).len(), 2, "the switch and its rollback: {}", out.stderr);
    assert_exact("rollback_on_failure_switches_back_with_the_same_protections", &out);
    assert!(out.stderr.contains("broken.service: failed/failed"), "{}", out.stderr);
    assert!(out.stderr.contains(&format!("rolling back to {}", current.display())), "{}", out.stderr);
    assert!(out.stderr.contains(&format!("rolled back to {}", current.display())), "{}", out.stderr);
    assert_eq!(bed.activations(), vec!["b".to_owned(), "a".to_owned()]);
    assert_eq!(bed.current_generation().unwrap(), current);
    assert_eq!(bed.active_state("changed.service").unwrap(), "active");
    assert_eq!(bed.unit_property("changed.service", "Environment").unwrap(), "V=1");
    assert_ne!(bed.active_state("broken.service").unwrap(), "failed");
    // Both switches kept their hands off the protected sshd.
    assert_eq!(bed.unit_states(&["sshd.service"]).unwrap()["sshd.service"], sshd);
}

#[test]
fn a_changed_system_conf_re_executes_systemd_and_jobs_still_complete() {
    testbed::require!(bed);
    let a = generation_a();
    let bed = boot(&a);
    let b = bed
        .build_generation(
            &a.clone()
                .renamed("b")
                .system_conf("[Manager]\nDefaultTasksAccounting=no\nDefaultTimeoutStopSec=42s\n")
                .service("changed.service", daemon("V=2")),
        )
        .unwrap();
    let changed_pid = bed.main_pid("changed.service").unwrap();
    let sshd = bed.unit_states(&["sshd.service"]).unwrap()["sshd.service"].clone();
    let out = safe_switch(&bed, &["switch", "--toplevel", path_str(&b), "--protect", "sshd", "--no-isolate"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_exact("a_changed_system_conf_re_executes_systemd_and_jobs_still_complete", &out);
    assert!(out.stderr.contains("restarting systemd..."), "{}", out.stderr);
    assert!(out.stderr.contains("re-exec: done"), "{}", out.stderr);
    // The manager runs with the new system.conf, and the jobs queued after
    // the re-exec were seen to finish.
    assert_eq!(
        bed.run(&["systemctl", "show", "-p", "DefaultTimeoutStopUSec", "--value"]).unwrap().stdout.trim(),
        "42s"
    );
    assert_ne!(bed.main_pid("changed.service").unwrap(), changed_pid);
    assert_eq!(bed.active_state("changed.service").unwrap(), "active");
    assert_eq!(bed.unit_states(&["sshd.service"]).unwrap()["sshd.service"], sshd);
}

#[test]
fn a_plan_refused_by_protection_exits_3_before_any_change() {
    testbed::require!(bed);
    let a = generation_a();
    let bed = boot(&a);
    let current = bed.current_generation().unwrap();
    let b = bed.build_generation(&sshd_changed_b(&a)).unwrap();
    let sshd = bed.unit_states(&["sshd.service"]).unwrap()["sshd.service"].clone();
    for extra in [&["--no-isolate"][..], &[][..]] {
        let mut args = vec!["switch", "--toplevel", path_str(&b), "--protect", "sshd", "--on-protected", "refuse"];
        args.extend_from_slice(extra);
        let out = safe_switch(&bed, &args);
        assert_eq!(out.code(), Some(3), "{out:?}");
        assert!(out.stderr.contains("refused"), "{}", out.stderr);
        assert!(out.stdout.contains("sshd.service"), "the refused plan is shown: {}", out.stdout);
        nothing_changed(&bed, &current);
        assert_eq!(bed.unit_states(&["sshd.service"]).unwrap()["sshd.service"], sshd);
    }
}

#[test]
fn a_resumed_apply_keeps_its_hands_off_what_is_protected_now() {
    testbed::require!(bed);
    // r.service changes in B with X-StopIfChanged=false: it is restarted
    // after the activation, which is where the first apply is killed.
    let a = generation_a().service("r.service", daemon("V=1"));
    let bed = boot(&a);
    bed.wait_for_state("r.service", "active").unwrap();
    let b = bed
        .build_generation(&slow_b(&a).service(
            "r.service",
            "[Unit]\nDescription=r\n\n[Service]\nEnvironment=V=2\nExecStart=/bin/sleep infinity\nX-StopIfChanged=false\n",
        ))
        .unwrap();
    let progress = interrupt(&bed, &["switch", "--toplevel", path_str(&b), "--protect", "sshd", "--no-isolate"]);
    assert!(progress["plan"].to_string().contains("r.service"), "the first plan restarts r.service");
    let r = bed.unit_states(&["r.service"]).unwrap()["r.service"].clone();

    // In refuse mode, the resume is refused and nothing more is done.
    let out = safe_switch(
        &bed,
        &["switch", "--toplevel", path_str(&b), "--protect", "r,sshd", "--on-protected", "refuse", "--no-isolate"],
    );
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert!(out.stderr.contains("refused to finish the interrupted switch"), "{}", out.stderr);
    assert!(bed.run_dir().join("safe-switch/progress.json").exists(), "the record is kept");
    assert_ne!(bed.current_generation().unwrap(), b);
    assert_eq!(bed.unit_states(&["r.service"]).unwrap()["r.service"], r);

    // In defer mode, the resume finishes the switch without restarting
    // r.service, and says so.
    let out = safe_switch(&bed, &["switch", "--toplevel", path_str(&b), "--protect", "r,sshd", "--no-isolate"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_exact("a_resumed_apply_keeps_its_hands_off_what_is_protected_now", &out);
    assert!(out.stderr.contains("resuming it first"), "{}", out.stderr);
    assert!(out.stderr.contains("r.service: restart deferred"), "{}", out.stderr);
    assert_eq!(bed.current_generation().unwrap(), b);
    assert_eq!(bed.active_state("new.service").unwrap(), "active", "the rest of the switch was carried out");
    let after = bed.unit_states(&["r.service"]).unwrap()["r.service"].clone();
    assert_eq!(after, r, "r.service was restarted although protected now");
    // What the reports call untouched was untouched.
    assert!(out.stderr.contains(&format!("protected r.service: untouched (MainPID {}", r.main_pid)), "{}", out.stderr);
    assert!(!bed.run_dir().join("safe-switch/progress.json").exists());
}

#[test]
fn of_two_isolated_switches_started_at_once_the_loser_reports_the_lock() {
    testbed::require!(bed);
    let a = generation_a();
    let bed = boot(&a);
    // The winner's activation waits until the test lets it go on, so it
    // holds the lock while the loser's isolated run starts.
    let b = bed.build_generation(&held_b(&a)).unwrap();
    // Both callers pass their own check of the lock before either
    // isolated run takes it: the race is lost in the transient unit.
    for round in 0..5 {
        let _ = std::fs::remove_file(bed.run_dir().join("testbed/go-on"));
        let _ = std::fs::remove_file(bed.run_dir().join("testbed/activating"));
        let one = spawn_switch(&bed, &["switch", "--toplevel", path_str(&b)]);
        let two = spawn_switch(&bed, &["switch", "--toplevel", path_str(&b)]);
        wait_for("an activation to start", Duration::from_secs(60), || {
            bed.run_dir().join("testbed/activating").exists()
        });
        // The loser ends on its own; then the winner may go on.
        let mut children = [one, two];
        wait_for("one of the switches to end", Duration::from_secs(60), || {
            children.iter_mut().any(|c| c.try_wait().unwrap().is_some())
        });
        std::fs::write(bed.run_dir().join("testbed/go-on"), "").unwrap();
        let [one, two] = children;
        let (one, two) = (one.wait_with_output().unwrap(), two.wait_with_output().unwrap());
        let outputs = [&one, &two];
        let codes: Vec<Option<i32>> = outputs.iter().map(|o| o.status.code()).collect();
        let loser = outputs.iter().find(|o| o.status.code() != Some(0)).unwrap_or_else(|| {
            panic!("round {round}: both switches succeeded: {codes:?}");
        });
        let stderr = String::from_utf8_lossy(&loser.stderr);
        assert_eq!(loser.status.code(), Some(1), "round {round}: {stderr}");
        assert!(
            stderr.contains(
                "error: another safe-switch is running (lock /run/safe-switch/lock is held); nothing was changed"
            ),
            "round {round}: {stderr}"
        );
        assert!(!stderr.contains("exited with status"), "round {round}: a failed transient unit: {stderr}");
        assert_eq!(codes.iter().filter(|c| **c == Some(0)).count(), 1, "round {round}: {codes:?}");
    }
}

/// With a root-owned system policy `protect = ["sshd"]`, `mode = "refuse"`:
/// `--on-protected defer` and `--policy EMPTY` do not weaken it, in
/// process or isolated; a policy in a directory others may write is
/// refused; and `--cgroup-file /dev/null` does not lift the protection of
/// the unit the caller runs in.
#[test]
fn the_policy_cannot_be_weakened_from_the_command_line() {
    testbed::require!(bed);
    use safe_switch_cli::test_hooks::{PROC_CGROUP, SYSTEM_POLICY};
    let a = generation_a();
    let bed = boot(&a);
    let current = bed.current_generation().unwrap();
    let b = bed.build_generation(&sshd_changed_b(&a)).unwrap();
    let sshd = bed.unit_states(&["sshd.service"]).unwrap()["sshd.service"].clone();
    let changed = bed.unit_states(&["changed.service"]).unwrap()["changed.service"].clone();
    let system = bed_file(&bed, "policy/system.toml", "protect = [\"sshd\"]\nmode = \"refuse\"\n", 0o755, 0o644);
    let empty = bed_file(&bed, "policy/empty.toml", "", 0o755, 0o644);
    let env = [(SYSTEM_POLICY, system.as_str())];
    let attacks: [&[&str]; 4] = [
        &["--on-protected", "defer", "--no-isolate"],
        &["--on-protected", "defer"],
        &["--policy", &empty, "--no-isolate"],
        &["--policy", &empty],
    ];
    for attack in attacks {
        let mut args = vec!["switch", "--toplevel", path_str(&b)];
        args.extend_from_slice(attack);
        let out = safe_switch_with(&bed, &args, &env);
        assert_eq!(out.code(), Some(3), "{attack:?}: {out:?}");
        assert!(out.stdout.contains("protection (mode: refuse):"), "{attack:?}: {}", out.stdout);
        nothing_changed(&bed, &current);
        assert_eq!(bed.unit_states(&["sshd.service"]).unwrap()["sshd.service"], sshd, "{attack:?}");
    }

    // A policy file in a directory others may write.
    let open = bed_file(&bed, "open/policy.toml", "protect = [\"sshd\"]\n", 0o777, 0o644);
    let out =
        safe_switch_with(&bed, &["switch", "--toplevel", path_str(&b), "--no-isolate"], &[(SYSTEM_POLICY, &open)]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("refusing the policy file /run/open/policy.toml"), "{}", out.stderr);
    assert!(out.stderr.contains("the directory /run/open is writable by others"), "{}", out.stderr);
    nothing_changed(&bed, &current);

    // The switch runs from changed.service's job (as a CI job runs in its
    // runner's unit): `--cgroup-file /dev/null` does not lift the implicit
    // protection of changed.service, in process or isolated (where the
    // caller hands its cgroup over).
    let cgroup = bed_file(&bed, "policy/cgroup", "0::/system.slice/changed.service\n", 0o755, 0o644);
    let c = bed.build_generation(&a.clone().renamed("c").service("changed.service", daemon("V=3"))).unwrap();
    for (target, isolation) in [(&b, &["--no-isolate"][..]), (&c, &[][..])] {
        let mut args =
            vec!["switch", "--toplevel", path_str(target), "--protect", "sshd", "--cgroup-file", "/dev/null"];
        args.extend_from_slice(isolation);
        let out = safe_switch_with(&bed, &args, &[(PROC_CGROUP, &cgroup)]);
        assert_eq!(out.code(), Some(0), "{out:?}");
        assert_exact("the_policy_cannot_be_weakened_from_the_command_line", &out);
        if isolation.is_empty() {
            // The isolated run gets the caller's hand-over file instead.
            assert!(out.stderr.contains("applying in the transient unit"), "{}", out.stderr);
        } else {
            assert!(out.stderr.contains("warning: ignoring --cgroup-file /dev/null"), "{}", out.stderr);
        }
        assert!(out.stdout.contains("changed.service [implicit: holds this process"), "{}", out.stdout);
        assert_eq!(
            bed.unit_states(&["changed.service"]).unwrap()["changed.service"],
            changed,
            "the caller's unit was restarted: {}",
            out.stderr
        );
        assert_eq!(bed.unit_states(&["sshd.service"]).unwrap()["sshd.service"], sshd);
        assert_eq!(&bed.current_generation().unwrap(), target);
    }
}

#[test]
fn a_protect_typo_is_a_usage_error_before_any_change() {
    testbed::require!(bed);
    let a = generation_a();
    let bed = boot(&a);
    let current = bed.current_generation().unwrap();
    let b = bed.build_generation(&sshd_changed_b(&a)).unwrap();
    let sshd = bed.unit_states(&["sshd.service"]).unwrap()["sshd.service"].clone();
    for extra in [&["--no-isolate"][..], &[][..]] {
        let mut args = vec!["switch", "--toplevel", path_str(&b), "--protect", "sshdd"];
        args.extend_from_slice(extra);
        let out = safe_switch(&bed, &args);
        assert_eq!(out.code(), Some(2), "{out:?}");
        assert!(out.stderr.contains("--protect \"sshdd\" matches no unit"), "{}", out.stderr);
        assert!(out.stderr.contains("close matches: sshd"), "{}", out.stderr);
        nothing_changed(&bed, &current);
        assert_eq!(bed.unit_states(&["sshd.service"]).unwrap()["sshd.service"], sshd, "sshd was touched");
    }
}
