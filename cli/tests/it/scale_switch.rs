//! A switch of a thousand changed services in one run, on a real systemd:
//! every one is stopped and started again (NixOS's way for a changed
//! service), the switch exits 0, and no job is reported timed out or
//! unanswered although systemd finished it.
//!
//! A thousand jobs in flight produce a thousand `JobRemoved` signals while
//! the calls that queue them still wait for their replies; a client that
//! does not read the signals as they come stops reading the replies too.
//! Timing goals are in `cargo bench -p systemd-live --bench switch`, not
//! here.
//!
//! Needs root and namespaces: under `CI=true` it fails when it cannot run,
//! elsewhere it skips with a message.

use std::time::Duration;

use testbed::{Config, Generation, TestBed};

use crate::support::{BIN, in_bed, path_str};

const SERVICES: usize = 1000;

/// Generation `name` with [`SERVICES`] services that differ from those of
/// every other version by `V=version`: minimal units (no dependencies but
/// the target that wants them), so the bed boots fast.
fn many(name: &str, version: u32) -> Generation {
    (0..SERVICES).fold(Generation::new(name), |g, i| {
        g.service(
            format!("scale-{i:04}.service"),
            format!("[Service]\nEnvironment=V={version}\nExecStart=/bin/sleep infinity\n"),
        )
    })
}

#[test]
fn a_thousand_changed_services_are_switched_in_one_run() {
    testbed::require!(bed);
    let mut config = Config::new(many("a", 1));
    config.timeout = Duration::from_secs(300);
    let bed = TestBed::boot(&config).expect("test bed boots");
    let b = bed.build_generation(&many("b", 2)).unwrap();
    let names: Vec<String> = (0..SERVICES).map(|i| format!("scale-{i:04}.service")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let before = bed.unit_states(&names).unwrap();
    let inactive: Vec<&String> = before.iter().filter(|(_, s)| !s.is_active()).map(|(n, _)| n).collect();
    assert!(inactive.is_empty(), "not running after boot: {inactive:?}");

    let mut cmd = bed.command(BIN);
    in_bed(&mut cmd, &bed).args(["switch", "--toplevel", path_str(&b), "--no-isolate"]).env("NO_COLOR", "1");
    let started = std::time::Instant::now();
    let out = testbed::exec::run(&mut cmd, Duration::from_secs(600)).expect("safe-switch runs");
    // For the reader (`--nocapture`); timing goals are the benchmark's.
    eprintln!("the switch of {SERVICES} services took {:.1} s", started.elapsed().as_secs_f64());
    // The report's own lines, without the `systemctl status` it appends.
    let report: String = out
        .stderr
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with(['●', '○', '×']) && !l.is_empty())
        .map(|l| format!("{}\n", l.chars().take(300).collect::<String>()))
        .collect();
    for wrong in ["timed out", "NoReply", "no reply", "not queued", "failed to"] {
        let lines: Vec<&str> = out.stderr.lines().filter(|l| l.contains(wrong)).collect();
        assert!(
            lines.is_empty(),
            "{} lines say {wrong:?}, e.g. {:?}\n{report}",
            lines.len(),
            &lines[..lines.len().min(3)]
        );
    }
    assert_eq!(out.code(), Some(0), "{report}");
    // Every restart systemd ran was the plan's.
    let effects = crate::support::assert_exact("a_thousand_changed_services_are_switched_in_one_run", &out);
    assert!(effects >= SERVICES, "{effects} effects seen for {SERVICES} restarts: {report}");
    assert_eq!(bed.current_generation().unwrap(), b);

    let after = bed.unit_states(&names).unwrap();
    let not_restarted: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| {
            let (old, new) = (&before[*n], &after[*n]);
            !new.is_active() || new.main_pid == old.main_pid || new.invocation_id == old.invocation_id
        })
        .collect();
    assert!(not_restarted.is_empty(), "{} services not restarted: {not_restarted:?}", not_restarted.len());
    let jobs = bed.systemctl(&["list-jobs", "--no-legend"]).unwrap();
    assert!(jobs.trim().is_empty(), "jobs left in systemd's queue: {jobs}");
}
