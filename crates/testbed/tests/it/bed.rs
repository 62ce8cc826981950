//! The test bed itself works: it boots a real systemd, its D-Bus is
//! reachable from the host, its sshd accepts a session that survives other
//! units' restarts, restarting sshd's unit does change its MainPID, and a
//! generation's `activate` moves the system to it. Dropping a bed leaves
//! no process behind.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use testbed::{Config, Generation, TestBed};

const TICK: Duration = Duration::from_millis(200);

fn generation_a() -> Generation {
    Generation::new("a")
        .sshd()
        .service("job.service", "[Unit]\nDescription=A job\n\n[Service]\nExecStart=/bin/sleep infinity\n")
        .unit("idle.service", "[Service]\nExecStart=/bin/sleep infinity\n")
}

fn boot(generation: Generation) -> TestBed {
    match TestBed::boot(&Config::new(generation)) {
        Ok(bed) => bed,
        Err(err) => panic!("boot failed: {err}"),
    }
}

#[test]
fn boots_with_the_generation_units_running() {
    testbed::require!(bed);
    let bed = boot(generation_a());
    eprintln!("booted in {:?}", bed.boot_time());
    assert_eq!(bed.active_state("job.service").unwrap(), "active");
    assert_eq!(bed.active_state("sshd.service").unwrap(), "active");
    // A unit no target wants stays down.
    assert_eq!(bed.active_state("idle.service").unwrap(), "inactive");
    // Units load from /etc/systemd/system, as on NixOS.
    assert_eq!(bed.unit_property("job.service", "FragmentPath").unwrap(), "/etc/systemd/system/job.service");
    assert_eq!(bed.current_generation().unwrap(), bed.store_dir().join("a").canonicalize().unwrap());
    // systemd is PID 1 of its namespace.
    let pid1 = bed.run(&["cat", "/proc/1/comm"]).unwrap().check().unwrap();
    assert_eq!(pid1.stdout.trim(), "systemd");
}

#[test]
fn dbus_is_reachable_from_the_host() {
    testbed::require!(bed);
    let bed = boot(generation_a());
    let out = testbed::exec::run(
        Command::new("busctl").arg(format!("--address={}", bed.dbus_address())).args([
            "get-property",
            "org.freedesktop.systemd1",
            "/org/freedesktop/systemd1/unit/job_2eservice",
            "org.freedesktop.systemd1.Unit",
            "ActiveState",
        ]),
        Duration::from_secs(10),
    )
    .unwrap()
    .check()
    .unwrap();
    assert_eq!(out.stdout.trim(), "s \"active\"");
}

#[test]
fn ssh_session_survives_other_restarts_and_sshd_restart_changes_main_pid() {
    testbed::require!(bed);
    let bed = boot(generation_a());
    let mut session = bed.ssh_session(TICK).unwrap();
    let sshd_pid = bed.main_pid("sshd.service").unwrap();
    let job_pid = bed.main_pid("job.service").unwrap();

    bed.systemctl(&["daemon-reload"]).unwrap();
    bed.systemctl(&["restart", "job.service"]).unwrap();
    assert_ne!(bed.main_pid("job.service").unwrap(), job_pid, "a restart gives a new MainPID");
    assert_eq!(bed.main_pid("sshd.service").unwrap(), sshd_pid, "sshd was not touched");
    let n = session.tick_count();
    session.wait_for_ticks(n + 3, Duration::from_secs(10)).unwrap();

    // The opposite must be observable too, or the tests built on this
    // could not fail: restarting sshd's unit gives it a new MainPID (the
    // session survives anyway, thanks to KillMode=process).
    let invocation = bed.invocation_id("sshd.service").unwrap();
    bed.systemctl(&["restart", "sshd.service"]).unwrap();
    assert_ne!(bed.main_pid("sshd.service").unwrap(), sshd_pid);
    assert_ne!(bed.invocation_id("sshd.service").unwrap(), invocation);
    let n = session.tick_count();
    session.wait_for_ticks(n + 3, Duration::from_secs(10)).unwrap();

    let report = session.finish();
    assert!(report.alive_at_end, "{report:?}");
    assert!(report.consecutive(), "{report:?}");
    assert!(report.remote_pid.is_some(), "{report:?}");
    // A new connection works after the restart.
    let out = testbed::exec::run(&mut bed.ssh_command("echo hello"), Duration::from_secs(20)).unwrap().check().unwrap();
    assert_eq!(out.stdout.trim(), "hello");
}

#[test]
fn activate_moves_etc_and_current_system() {
    testbed::require!(bed);
    let bed = boot(generation_a());
    let b = bed
        .build_generation(
            &generation_a()
                .renamed("b")
                .without("job.service")
                .service("new.service", "[Service]\nExecStart=/bin/sleep infinity\n"),
        )
        .unwrap();
    let out = bed.run(&[b.join("activate").to_str().unwrap()]).unwrap().check().unwrap();
    assert!(out.stdout.contains("setting up /etc"), "{out:?}");
    assert_eq!(bed.current_generation().unwrap(), b);
    assert_eq!(bed.activations(), ["b"]);
    let listed = bed.run(&["ls", "/etc/systemd/system/"]).unwrap().check().unwrap().stdout;
    assert!(listed.contains("new.service") && !listed.contains("job.service"), "{listed}");
    // systemd sees the new generation after a reload, through the same path.
    bed.systemctl(&["daemon-reload"]).unwrap();
    bed.systemctl(&["start", "multi-user.target"]).unwrap();
    assert_eq!(bed.active_state("new.service").unwrap(), "active");
    assert_eq!(bed.unit_property("new.service", "FragmentPath").unwrap(), "/etc/systemd/system/new.service");
}

#[test]
fn activate_refuses_to_run_outside_a_test_bed() {
    testbed::require!(bed);
    let bed = boot(Generation::new("a"));
    let b = bed.build_generation(&Generation::new("b")).unwrap();
    // Run on the host, not in the bed: it must refuse and change nothing.
    let before = std::fs::symlink_metadata("/etc/systemd/system").map(|m| m.file_type()).ok();
    let out = testbed::exec::run(&mut Command::new(b.join("activate")), Duration::from_secs(10)).unwrap();
    assert!(!out.success());
    assert!(out.stderr.contains("not inside a test bed"), "{out:?}");
    assert_eq!(std::fs::symlink_metadata("/etc/systemd/system").map(|m| m.file_type()).ok(), before);
}

#[test]
fn teardown_leaves_nothing_behind() {
    testbed::require!(bed);
    let bed = boot(generation_a());
    let pid = bed.pid();
    let job = bed.main_pid("job.service").unwrap();
    let root = bed.root().to_path_buf();
    let cgroup = bed.cgroup_name().to_owned();
    assert!(
        Path::new("/sys/fs/cgroup/unified").join(&cgroup).exists()
            || Path::new("/sys/fs/cgroup").join(&cgroup).exists(),
        "the bed runs in its own cgroup {cgroup}"
    );
    // Every host PID below systemd (the job, sshd, dbus-daemon) must be
    // gone afterwards.
    let host_pids = descendants(pid);
    assert!(!host_pids.is_empty(), "systemd has children");
    assert!(job > 0);
    bed.shutdown().unwrap();
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "PID 1 is gone");
    for p in host_pids {
        assert!(!Path::new(&format!("/proc/{p}")).exists(), "process {p} is gone");
    }
    assert!(!root.exists(), "the bed's directory is removed");
    let left = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .chain([Path::new("/sys/fs/cgroup").to_path_buf()])
        .flat_map(|h| std::fs::read_dir(h).into_iter().flatten().flatten())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&format!("testbed-{}-", std::process::id())))
        .map(|e| e.path())
        .collect::<Vec<_>>();
    // Other tests of this process may have beds running right now, so only
    // this bed's cgroup is checked: its name ends with the bed's number.
    assert!(left.iter().all(|p| !p.ends_with(&cgroup)), "the bed's cgroups are removed: {left:?}");
}

#[test]
fn parallel_beds_are_isolated() {
    testbed::require!(bed);
    let one = boot(generation_a());
    let two = boot(generation_a());
    assert_ne!(one.ssh_port(), two.ssh_port());
    let pid_two = two.main_pid("job.service").unwrap();
    // Stopping a unit in one bed must not touch the same unit in the other
    // (systemd kills by cgroup; each bed has its own cgroup root).
    one.systemctl(&["stop", "job.service"]).unwrap();
    assert_eq!(one.active_state("job.service").unwrap(), "inactive");
    assert_eq!(two.active_state("job.service").unwrap(), "active");
    assert_eq!(two.main_pid("job.service").unwrap(), pid_two);
}

/// All host PIDs below `pid`.
fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        let children = std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        for c in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            out.push(c);
            stack.push(c);
        }
    }
    out
}

#[test]
fn unit_output_reaches_the_journal() {
    testbed::require!(bed);
    let bed = boot(Generation::new("a").service(
        "noisy.service",
        "[Service]\nType=oneshot\nExecStart=/bin/sh -c 'echo out-line; echo err-line >&2; exit 3'\n",
    ));
    assert_eq!(bed.active_state("noisy.service").unwrap(), "failed");
    let journal = bed.journal("noisy.service").unwrap();
    assert!(journal.contains("out-line") && journal.contains("err-line"), "{journal}");
    let status = bed.run(&["systemctl", "status", "--no-pager", "noisy.service"]).unwrap();
    assert!(status.stdout.contains("err-line"), "{status:?}");
}

#[test]
fn logind_answers_on_the_bus_when_asked_for() {
    testbed::require!(bed);
    let bed = TestBed::boot(&Config::new(Generation::new("a")).with_logind()).unwrap();
    assert_eq!(bed.active_state("systemd-logind.service").unwrap(), "active");
    let out = testbed::exec::run(
        Command::new("busctl").arg(format!("--address={}", bed.dbus_address())).args([
            "call",
            "org.freedesktop.login1",
            "/org/freedesktop/login1",
            "org.freedesktop.login1.Manager",
            "ListUsers",
        ]),
        Duration::from_secs(10),
    )
    .unwrap()
    .check()
    .unwrap();
    assert!(out.stdout.starts_with("a(uso)"), "{out:?}");
}

#[test]
fn a_failing_sshd_fails_the_boot_with_its_log() {
    testbed::require!(bed);
    // A bogus option makes sshd exit at once.
    let err = TestBed::boot(&Config::new(Generation::new("a").sshd_with("", "ExecStartPre=/bin/false"))).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("sshd.service is"), "{text}");
}

#[test]
fn a_self_contained_generation_activates_from_where_it_lies() {
    testbed::require!(bed);
    let bed = boot(Generation::new("a"));
    let dir = bed.root().join("exported");
    testbed::example::export(&dir).unwrap();
    let b = dir.join("b").canonicalize().unwrap();
    bed.run(&[b.join("activate").to_str().unwrap()]).unwrap().check().unwrap();
    assert_eq!(bed.current_generation().unwrap(), b);
    let unit = bed.run(&["cat", "/etc/systemd/system/docker.service"]).unwrap().check().unwrap();
    assert!(unit.stdout.contains("Docker"), "{unit:?}");
}
