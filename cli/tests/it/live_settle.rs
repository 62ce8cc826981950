//! Deferred actions converge, on a real systemd: a switch defers the
//! restart of a CI runner whose job runs as a child process, `pending`
//! lists it, and `settle --when-idle` restarts the runner once the job has
//! ended, while sshd stays protected and an SSH session keeps ticking.
//! Also: `--wait` that runs out, and the lock against a switch and a
//! second settle.
//!
//! The runner counts its starts in `/run/testbed/runner-starts`; on its
//! first start it runs a job (a child process in its control group) until
//! `/run/testbed/job-done` exists. Every assertion is checked against the
//! bed with `systemctl` and those files, independently of the code under
//! test.
//!
//! These tests need root and namespaces: under `CI=true` they fail when
//! they cannot run, elsewhere they skip with a message.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use testbed::{Config, Generation, Output, TestBed, UnitState};

use crate::support::{BIN, assert_exact, daemon, in_bed, path_str, safe_switch};

const RUNNER: &str = "runner.service";
const TICK: Duration = Duration::from_millis(200);
/// The longest pause between two ticks that still counts as "no gap" (see
/// `e2e_switch.rs`): it catches a stalled session, it is no speed goal.
const MAX_GAP: Duration = Duration::from_secs(5);

/// A CI runner: its first start runs a job that lasts until
/// `/run/testbed/job-done` exists; changing `concurrent` changes the unit.
fn runner(concurrent: u32) -> String {
    format!(
        "[Unit]\nDescription=CI runner\n\n[Service]\nEnvironment=CONCURRENT={concurrent}\n\
         ExecStartPre=/bin/sh -c 'echo started >> /run/testbed/runner-starts'\n\
         ExecStart=/bin/sh -c 'if [ $$(wc -l < /run/testbed/runner-starts) -le 1 ]; then \
         (while [ ! -e /run/testbed/job-done ]; do sleep 0.1; done) & fi; exec sleep infinity'\n\
         KillMode=mixed\n"
    )
}

fn generation_a() -> Generation {
    Generation::new("a")
        .sshd()
        .service(RUNNER, runner(1))
        .wanted_by(RUNNER, "multi-user.target")
        .service("exporter.service", daemon("V=1"))
        .wanted_by("exporter.service", "multi-user.target")
}

/// B changes the runner and the exporter; sshd stays as it is.
fn generation_b() -> Generation {
    generation_a().renamed("b").service(RUNNER, runner(2)).service("exporter.service", daemon("V=2"))
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Boots A with the runner's job running.
fn boot() -> TestBed {
    let bed = TestBed::boot(&Config::new(generation_a())).expect("test bed boots");
    for unit in [RUNNER, "exporter.service"] {
        bed.wait_for_state(unit, "active").unwrap();
    }
    wait_for("the runner's job to run", Duration::from_secs(30), || job_running(&bed));
    bed
}

/// Whether the runner's job runs: a process of the bed polls for
/// `job-done`.
fn job_running(bed: &TestBed) -> bool {
    let out = bed.run(&["pgrep", "-f", "job-done"]).unwrap();
    !out.stdout.trim().is_empty()
}

fn starts(bed: &TestBed) -> usize {
    std::fs::read_to_string(bed.run_dir().join("testbed/runner-starts")).unwrap_or_default().lines().count()
}

fn end_job(bed: &TestBed) {
    std::fs::write(bed.run_dir().join("testbed/job-done"), "").unwrap();
}

fn state(bed: &TestBed, unit: &str) -> UnitState {
    bed.unit_states(&[unit]).unwrap()[unit].clone()
}

fn spawn(bed: &TestBed, args: &[&str]) -> Child {
    let mut cmd = bed.command(BIN);
    in_bed(&mut cmd, bed).args(args).env("NO_COLOR", "1").stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.spawn().expect("safe-switch starts")
}

/// Waits for a spawned run to end, within a deadline.
fn finish(mut child: Child) -> Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("safe-switch did not end");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    Output {
        command: "safe-switch".to_owned(),
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Switches to B, protecting sshd and the runner: the runner's restart is
/// deferred and recorded. Returns B.
fn switch_deferring_the_runner(bed: &TestBed) -> PathBuf {
    let b = bed.build_generation(&generation_b()).unwrap();
    let out = safe_switch(bed, &["switch", "--toplevel", path_str(&b), "--protect", "sshd,runner", "--no-isolate"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_exact("switch_deferring_the_runner", &out);
    assert_eq!(bed.current_generation().unwrap(), b);
    b
}

#[test]
fn settle_when_idle_restarts_the_runner_once_its_job_ends() {
    testbed::require!(bed);
    let bed = boot();
    let sshd = state(&bed, "sshd.service");
    let runner_before = state(&bed, RUNNER);
    let mut session = bed.ssh_session(TICK).unwrap();
    session.wait_for_ticks(3, Duration::from_secs(10)).unwrap();

    switch_deferring_the_runner(&bed);
    assert_eq!(state(&bed, RUNNER), runner_before, "the switch restarted the protected runner");
    assert!(job_running(&bed));

    // `plan` shows it among the earlier deferrals.
    let out = safe_switch(&bed, &["plan", "--toplevel", path_str(&bed.current_generation().unwrap())]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(
        out.stdout.contains("pending from earlier switches:\n  runner.service: stop, start deferred since"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("runner.service is protected; still pending"), "{}", out.stdout);

    // `pending` lists the deferral, in text and JSON; exit 3.
    let out = safe_switch(&bed, &["pending"]);
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert!(out.stdout.contains("pending: 1 unit with deferred actions"), "{}", out.stdout);
    assert!(out.stdout.contains("runner.service: stop, start deferred since"), "{}", out.stdout);
    let out = safe_switch(&bed, &["pending", "--json"]);
    assert_eq!(out.code(), Some(3), "{out:?}");
    let record: plan_model::Pending = serde_json::from_str(&out.stdout).unwrap();
    let entry = record.get(plan_model::Manager::Systemd, RUNNER).expect("the runner is pending");
    assert_eq!(entry.invocation, runner_before.invocation_id);
    assert_eq!(record.deferrals.len(), 1, "{}", out.stdout);

    // settle waits while the job runs...
    let settle = spawn(&bed, &["settle", "--when-idle", "--protect", "sshd"]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(state(&bed, RUNNER), runner_before, "the runner was restarted while its job ran");
    assert_eq!(starts(&bed), 1);
    // ...and restarts the runner once it has ended.
    end_job(&bed);
    let out = finish(settle);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stderr.contains("waiting for runner.service to be idle"), "{}", out.stderr);
    assert!(out.stdout.contains("runner.service"), "the plan is shown: {}", out.stdout);
    let runner_after = state(&bed, RUNNER);
    assert!(runner_after.is_active(), "{runner_after:?}");
    assert_ne!(runner_after.main_pid, runner_before.main_pid);
    assert_ne!(runner_after.invocation_id, runner_before.invocation_id);
    assert_eq!(starts(&bed), 2, "the runner was restarted once");
    assert_eq!(bed.unit_property(RUNNER, "Environment").unwrap(), "CONCURRENT=2");

    let out = safe_switch(&bed, &["pending"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stdout.contains("nothing is pending"), "{}", out.stdout);

    // sshd was protected throughout, and the session went on.
    assert_eq!(state(&bed, "sshd.service"), sshd, "sshd was touched");
    let n = session.tick_count();
    session.wait_for_ticks(n + 5, Duration::from_secs(10)).unwrap();
    let report = session.finish();
    assert!(report.alive_at_end, "the session ended: {report:#?}");
    assert!(report.consecutive(), "ticks were lost or restarted: {report:#?}");
    assert!(report.max_gap() < MAX_GAP, "a gap of {:?} in the ticks: {report:#?}", report.max_gap());
}

#[test]
fn settle_whose_wait_runs_out_exits_3_and_changes_nothing_and_an_idle_command_decides() {
    testbed::require!(bed);
    let bed = boot();
    let runner_before = state(&bed, RUNNER);
    switch_deferring_the_runner(&bed);
    let record = std::fs::read_to_string(bed.run_dir().join("safe-switch/pending.json")).unwrap();
    for isolation in [&["--no-isolate"][..], &[][..]] {
        let mut args = vec!["settle", "--when-idle", "--wait", "2s", "--protect", "sshd"];
        args.extend_from_slice(isolation);
        let out = safe_switch(&bed, &args);
        assert_eq!(out.code(), Some(3), "{isolation:?}: {out:?}");
        assert!(out.stderr.contains("still busy after 2s: runner.service"), "{}", out.stderr);
        assert_eq!(state(&bed, RUNNER), runner_before, "{isolation:?}");
        assert_eq!(starts(&bed), 1);
        assert!(job_running(&bed));
        let after = std::fs::read_to_string(bed.run_dir().join("safe-switch/pending.json")).unwrap();
        let parse = |t: &str| serde_json::from_str::<plan_model::Pending>(t).unwrap().deferrals[0].clone();
        assert_eq!(parse(&after).invocation, parse(&record).invocation, "{isolation:?}");
        assert_eq!(safe_switch(&bed, &["pending"]).code(), Some(3));
    }
    // Without --when-idle, the protection in force decides: the runner
    // protected, nothing is done and it stays pending.
    let out = safe_switch(&bed, &["settle", "--protect", "sshd,runner", "--no-isolate"]);
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert!(out.stderr.contains("still pending:"), "{}", out.stderr);
    assert!(out.stderr.contains("runner.service is protected"), "{}", out.stderr);
    assert_eq!(state(&bed, RUNNER), runner_before);

    // With --idle-command, the command decides instead of the control
    // group (a runner whose jobs run elsewhere): busy while it fails...
    let idle_command = "[ \"$SAFE_SWITCH_UNIT\" = runner.service ] && [ -e /run/testbed/idle ]";
    let args = ["settle", "--when-idle", "--idle-command", idle_command, "--wait", "2s", "--protect", "sshd"];
    let out = safe_switch(&bed, &args);
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert!(out.stderr.contains("waiting for runner.service to be idle: the idle command exited"), "{}", out.stderr);
    assert_eq!(state(&bed, RUNNER), runner_before);
    // ...idle once it exits 0, although a process runs in the runner.
    std::fs::write(bed.run_dir().join("testbed/idle"), "").unwrap();
    let out = safe_switch(&bed, &args);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_exact("settle --idle-command", &out);
    assert_ne!(state(&bed, RUNNER).invocation_id, runner_before.invocation_id);
    assert_eq!(starts(&bed), 2);
    assert_eq!(safe_switch(&bed, &["pending"]).code(), Some(0));
}

/// A switch whose activation holds the lock until the test lets it go on.
fn held_c() -> Generation {
    generation_b()
        .renamed("c")
        .service("exporter.service", daemon("V=3"))
        .activate_lines("touch /run/testbed/activating\nwhile [ ! -e /run/testbed/go-on ]; do sleep 0.05; done")
}

#[test]
fn settle_meets_the_lock_of_a_switch_and_of_another_settle() {
    testbed::require!(bed);
    let bed = boot();
    let runner_before = state(&bed, RUNNER);
    switch_deferring_the_runner(&bed);

    // A switch holds the lock: a settle that does not wait is refused and
    // changes nothing; one that waits goes on once the switch is done.
    let c = bed.build_generation(&held_c()).unwrap();
    let switch = spawn(&bed, &["switch", "--toplevel", path_str(&c), "--protect", "sshd,runner", "--no-isolate"]);
    wait_for("the switch to activate", Duration::from_secs(60), || bed.run_dir().join("testbed/activating").exists());
    let out = safe_switch(&bed, &["settle", "--protect", "sshd", "--no-isolate"]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("another safe-switch is running"), "{}", out.stderr);
    assert_eq!(state(&bed, RUNNER), runner_before);
    // Two settles wait, one for the lock and both for the job.
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = bed.command(BIN);
    in_bed(&mut cmd, &bed)
        .args(["settle", "--when-idle", "--wait", "100s", "--protect", "sshd", "--no-isolate"])
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap());
    let one = cmd.spawn().unwrap();
    let two = spawn(&bed, &["settle", "--when-idle", "--protect", "sshd"]);
    let said = || std::fs::read_to_string(log.path()).unwrap();
    wait_for("a settle to wait for the lock", Duration::from_secs(60), || {
        said().contains("waiting for another safe-switch to finish (lock /run/safe-switch/lock is held)")
    });
    std::fs::write(bed.run_dir().join("testbed/go-on"), "").unwrap();
    let out = finish(switch);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_eq!(bed.current_generation().unwrap(), c);
    // The switch to C kept the runner's deferral: still from A, now for C.
    let record = std::fs::read_to_string(bed.run_dir().join("safe-switch/pending.json")).unwrap();
    let record: plan_model::Pending = serde_json::from_str(&record).unwrap();
    let entry = record.get(plan_model::Manager::Systemd, RUNNER).unwrap();
    assert!(entry.from.ends_with("/a"), "{entry:?}");
    assert_eq!(Path::new(&entry.generation), c, "{entry:?}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(state(&bed, RUNNER), runner_before, "the runner was restarted while its job ran");
    end_job(&bed);
    let (one, two) = (finish(one), finish(two));
    assert_eq!(one.code(), Some(0), "{one:?}: {}", said());
    assert_eq!(two.code(), Some(0), "{two:?}");
    // The restart happened once, by one of them.
    assert_eq!(starts(&bed), 2, "{}\n{}", said(), two.stderr);
    let settled = [said(), two.stderr.clone()].iter().filter(|e| e.contains("settling runner.service")).count();
    assert_eq!(settled, 1, "{}\n{}", said(), two.stderr);
    assert_ne!(state(&bed, RUNNER).invocation_id, runner_before.invocation_id);
    assert_eq!(safe_switch(&bed, &["pending"]).code(), Some(0));
}

/// A deferral is planned again, not replayed: the runner's file changed
/// again since (it gets C's), the exporter went away (it is stopped), and
/// the web server's file went back to what its running instance was
/// started with (nothing is done to it).
#[test]
fn settle_plans_again_what_changed_since() {
    testbed::require!(bed);
    let a = generation_a().service("web.service", daemon("V=1")).wanted_by("web.service", "multi-user.target");
    let bed = TestBed::boot(&Config::new(a.clone())).expect("test bed boots");
    for unit in [RUNNER, "exporter.service", "web.service"] {
        bed.wait_for_state(unit, "active").unwrap();
    }
    end_job(&bed);
    let (runner_before, web) = (state(&bed, RUNNER), state(&bed, "web.service"));
    let protect = "sshd,runner,exporter,web";
    let b = a.clone().renamed("b").service(RUNNER, runner(2)).service("exporter.service", daemon("V=2"));
    let b = bed.build_generation(&b.service("web.service", daemon("V=2"))).unwrap();
    let c = a.renamed("c").service(RUNNER, runner(3)).without("exporter.service");
    let c = bed.build_generation(&c).unwrap();
    for target in [&b, &c] {
        let out = safe_switch(&bed, &["switch", "--toplevel", path_str(target), "--protect", protect, "--no-isolate"]);
        assert_eq!(out.code(), Some(0), "{out:?}");
        assert_exact("switches deferring three units", &out);
    }
    assert_eq!(state(&bed, RUNNER), runner_before);
    assert_eq!(bed.active_state("exporter.service").unwrap(), "active", "the stop was deferred");
    let out = safe_switch(&bed, &["pending", "--json"]);
    let record: plan_model::Pending = serde_json::from_str(&out.stdout).unwrap();
    let units: Vec<&str> = record.deferrals.iter().map(|d| d.unit.as_str()).collect();
    assert_eq!(units, ["exporter.service", RUNNER, "web.service"], "{}", out.stdout);

    let out = safe_switch(&bed, &["settle", "--protect", "sshd", "--no-isolate"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_exact("settle of three units", &out);
    assert_eq!(bed.unit_property(RUNNER, "Environment").unwrap(), "CONCURRENT=3", "C's runner runs");
    assert_ne!(state(&bed, RUNNER).invocation_id, runner_before.invocation_id);
    assert_eq!(bed.active_state("exporter.service").unwrap(), "inactive", "the unit C removed is stopped");
    assert_eq!(state(&bed, "web.service"), web, "the web server runs what C has: nothing to do");
    assert!(out.stderr.contains("web.service: nothing left to do"), "{}", out.stderr);
    assert_eq!(safe_switch(&bed, &["pending"]).code(), Some(0));
}

/// A record that is not one (corrupt, or a link elsewhere) is an error
/// naming the file that never quotes it: `pending`, `settle` and `switch`
/// change nothing; `plan`, which changes nothing anyway, warns.
#[test]
fn a_bad_record_stops_settle_and_switch_before_any_change() {
    testbed::require!(bed);
    let bed = boot();
    end_job(&bed);
    let b = switch_deferring_the_runner(&bed);
    let runner_before = state(&bed, RUNNER);
    let c = bed.build_generation(&generation_b().renamed("c").service("exporter.service", daemon("V=3"))).unwrap();
    let exporter = state(&bed, "exporter.service");
    let record = bed.run_dir().join("safe-switch/pending.json");
    let secret = bed.run_dir().join("secret");
    std::fs::write(&secret, "{\"format_version\": 1, \"token\": \"hunter2-secret\"}\n").unwrap();
    for bad in ["garbage", "link"] {
        let _ = std::fs::remove_file(&record);
        if bad == "link" {
            std::os::unix::fs::symlink("/run/secret", &record).unwrap();
        } else {
            std::fs::write(&record, "token=hunter2-secret\n").unwrap();
        }
        let runs: [&[&str]; 4] = [
            &["pending"],
            &["settle", "--protect", "sshd", "--no-isolate"],
            &["settle", "--protect", "sshd"],
            &["switch", "--toplevel", path_str(&c), "--protect", "sshd", "--no-isolate"],
        ];
        for args in runs {
            let out = safe_switch(&bed, args);
            assert_eq!(out.code(), Some(1), "{bad}: {args:?}: {out:?}");
            assert!(out.stderr.contains("/run/safe-switch/pending.json"), "{bad}: {args:?}: {}", out.stderr);
            assert!(!out.stderr.contains("hunter2"), "{bad}: {args:?}: {}", out.stderr);
            assert_eq!(state(&bed, RUNNER), runner_before, "{bad}: {args:?}");
            assert_eq!(state(&bed, "exporter.service"), exporter, "{bad}: {args:?}");
            assert_eq!(bed.current_generation().unwrap(), b, "{bad}: {args:?}");
        }
        let out = safe_switch(&bed, &["plan", "--toplevel", path_str(&c)]);
        assert_eq!(out.code(), Some(0), "{bad}: {out:?}");
        assert!(out.stderr.contains("warning: /run/safe-switch/pending.json"), "{bad}: {}", out.stderr);
        assert!(!out.stderr.contains("hunter2") && !out.stdout.contains("hunter2"), "{bad}: {out:?}");
    }
}
