//! The zbus adapter against a real systemd: a snapshot's states, PIDs,
//! invocation IDs and dependency lists match what `systemctl` reports, and
//! jobs, daemon-reload and failures come back as systemd reports them, and
//! a unit's processes tell whether it is idle.
//!
//! The adapter connects from the host to the test bed's bus through
//! `DBUS_SYSTEM_BUS_ADDRESS`, as it would on a host whose bus is elsewhere.
//! Needs root and namespaces: under `CI=true` it fails when it cannot run,
//! elsewhere it skips with a message.

use std::time::Duration;

use systemd_live::{Idleness, JobKind, JobResult, ServiceManager, SystemdBus};
use testbed::{Config, Generation, TestBed};

#[test]
fn the_adapter_sees_and_drives_a_real_systemd() {
    testbed::require!(bed);
    let generation = Generation::new("a")
        .service("web.service", "[Unit]\nPartOf=firewall.service\n\n[Service]\nExecStart=/bin/sleep infinity\n")
        .wanted_by("web.service", "multi-user.target")
        .service("firewall.service", "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n")
        .wanted_by("firewall.service", "multi-user.target")
        .dropin("web.service", "env.conf", "[Service]\nEnvironment=A=1\n")
        .service("broken.service", "[Service]\nType=oneshot\nExecStart=/bin/false\n")
        // A runner whose job is a child process, until /run/job-done.
        .service(
            "runner.service",
            "[Service]\nExecStart=/bin/sh -c '(while [ ! -e /run/job-done ]; do sleep 0.1; done) & exec sleep infinity'\n",
        )
        .wanted_by("runner.service", "multi-user.target");
    let bed = TestBed::boot(&Config::new(generation)).unwrap();
    // Boot returns once the bus is up; the units may still be starting.
    bed.wait_for_state("web.service", "active").unwrap();
    bed.wait_for_state("firewall.service", "active").unwrap();
    bed.wait_for_state("runner.service", "active").unwrap();
    // SAFETY: this is the only test of this binary (`tests/it`), so no
    // other thread reads the environment while it changes. A second test
    // needs the adapter to take the address instead.
    unsafe { std::env::set_var("DBUS_SYSTEM_BUS_ADDRESS", bed.dbus_address()) };
    let mut bus = SystemdBus::connect().unwrap();

    let live = bus.snapshot().unwrap();
    let web = live.get("web.service").expect("web.service is loaded");
    assert_eq!(web.active_state, "active");
    assert_eq!(web.sub_state, "running");
    assert_eq!(web.load_state, "loaded");
    assert_eq!(web.main_pid, bed.main_pid("web.service").unwrap());
    assert_eq!(web.invocation_id, bed.invocation_id("web.service").unwrap());
    assert_eq!(web.fragment_path, "/etc/systemd/system/web.service");
    assert!(!web.deps_unread, "a full snapshot reads every unit's dependencies");
    assert_eq!(web.deps["PartOf"], vec!["firewall.service".to_owned()]);
    assert!(web.deps["WantedBy"].contains(&"multi-user.target".to_owned()), "{web:?}");
    let firewall = live.get("firewall.service").unwrap();
    assert_eq!(firewall.deps["ConsistsOf"], vec!["web.service".to_owned()]);
    assert_eq!(firewall.sub_state, "exited");

    // A restart of firewall.service reaches web.service through PartOf=.
    let before = bus.unit_status(&["web.service".to_owned()]).unwrap()["web.service"].clone();
    let mut seen = Vec::new();
    let outcomes = bus
        .run_jobs(
            &[(JobKind::Restart, "firewall.service".to_owned()), (JobKind::Start, "broken.service".to_owned())],
            Duration::from_secs(30),
            &mut |o| seen.push(o.unit.clone()),
        )
        .unwrap();
    assert_eq!(outcomes[0].result, JobResult::Done);
    assert_eq!(outcomes[1].result, JobResult::Failed { systemd_result: "failed".into() });
    assert_eq!(seen.len(), 2);
    // web.service's restart is a job of its own in firewall.service's
    // transaction: its end may come after firewall.service's.
    let names = ["web.service".to_owned(), "broken.service".to_owned(), "nope.service".to_owned()];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let after = loop {
        let after = bus.unit_status(&names).unwrap();
        let web = &after["web.service"];
        if (web.invocation_id != before.invocation_id && web.active_state == "active")
            || std::time::Instant::now() > deadline
        {
            break after;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_ne!(after["web.service"].main_pid, before.main_pid);
    assert_ne!(after["web.service"].invocation_id, before.invocation_id);
    assert!(after["broken.service"].is_failed());
    assert_eq!(after["broken.service"].result, "exit-code");
    assert_eq!(after["broken.service"].exec_main_code, 1);
    assert_eq!(after["broken.service"].exec_main_status, 1);
    assert_eq!(after["nope.service"].load_state, "not-found");

    // A job for a unit that does not exist is refused at once, not awaited.
    let refused =
        bus.run_jobs(&[(JobKind::Start, "nope.service".to_owned())], Duration::from_secs(30), &mut |_| {}).unwrap();
    assert!(
        matches!(&refused[0].result, JobResult::NotQueued { message } if message.contains("nope.service")),
        "{refused:?}"
    );

    // The runner is busy while its job runs, and idle once it ended; a
    // target has no processes.
    let runner = bed.main_pid("runner.service").unwrap();
    let processes = bus.unit_processes("runner.service").unwrap();
    assert!(processes.iter().any(|p| p.pid == runner), "{processes:?}");
    assert!(processes.iter().all(|p| p.cgroup.ends_with("/runner.service")), "{processes:?}");
    match Idleness::read(&mut bus, "runner.service").unwrap() {
        Idleness::Busy { others } => {
            // The job's shell, and its `sleep` at times.
            assert!(others.iter().any(|p| p.command.contains("job-done")), "{others:?}");
            assert!(others.iter().all(|p| p.pid != runner), "{others:?}");
        }
        Idleness::Idle => panic!("the runner's job runs: {processes:?}"),
    }
    std::fs::write(bed.run_dir().join("job-done"), "").unwrap();
    let start = std::time::Instant::now();
    while !Idleness::read(&mut bus, "runner.service").unwrap().is_idle() {
        assert!(start.elapsed() < Duration::from_secs(30), "the runner never became idle");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(bus.unit_processes("multi-user.target").unwrap(), vec![]);
    assert!(bus.unit_processes("nope.service").is_err());

    bus.reset_failed().unwrap();
    bus.daemon_reload(Duration::from_secs(60)).unwrap();
    assert_eq!(bed.active_state("broken.service").unwrap(), "inactive", "ResetFailed cleared it");
    drop(bus);
    bed.shutdown().unwrap();
}
