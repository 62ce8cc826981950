//! What `safe-switch plan` asks systemd, seen on the bus: `busctl monitor`
//! records every call the binary makes, and none may make systemd work
//! out a unit's file state (`GetAll`, `UnitFileState`, `UnitFilePreset`),
//! which it drops on every daemon-reload and which made a cold plan of
//! thousands of units take seconds. The units are listed once; properties
//! are read one by one, and only those the plan uses.
//!
//! Needs root and namespaces: under `CI=true` it fails when it cannot run,
//! elsewhere it skips with a message.

use std::io::{BufRead as _, BufReader};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use testbed::{Config, Generation, TestBed};

use crate::support::{daemon, path_str, safe_switch_with};

const MANAGER: &str = "/org/freedesktop/systemd1";

/// Properties that make systemd look at unit files on disk.
const FILE_STATE: [&str; 2] = ["UnitFileState", "UnitFilePreset"];

/// `busctl monitor` on systemd's name, its messages as JSON values.
struct Monitor {
    child: std::process::Child,
    seen: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Monitor {
    fn start(bed: &TestBed) -> Monitor {
        let mut cmd = bed.command("busctl");
        cmd.args(["monitor", "--json=short", "org.freedesktop.systemd1"]).stdout(Stdio::piped()).stderr(Stdio::null());
        let mut child = cmd.spawn().expect("busctl monitor starts");
        let out = child.stdout.take().expect("piped");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(value) = serde_json::from_str(&line) {
                    sink.lock().unwrap().push(value);
                }
            }
        });
        let monitor = Monitor { child, seen };
        monitor.mark(bed);
        monitor
    }

    /// Pings systemd until the ping shows in the monitor: everything sent
    /// before it has been seen.
    fn mark(&self, bed: &TestBed) {
        let start = Instant::now();
        let before = self.seen.lock().unwrap().len();
        loop {
            bed.run(&["busctl", "call", "org.freedesktop.systemd1", MANAGER, "org.freedesktop.DBus.Peer", "Ping"])
                .expect("ping");
            std::thread::sleep(Duration::from_millis(100));
            if self.seen.lock().unwrap()[before..].iter().any(|m| m["member"] == "Ping") {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "busctl monitor shows nothing");
        }
    }

    fn stop(mut self, bed: &TestBed) -> Vec<serde_json::Value> {
        self.mark(bed);
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

#[test]
fn a_plan_asks_systemd_only_what_it_uses_and_nothing_that_reads_unit_files() {
    testbed::require!(bed);
    let a = Generation::new("a").sshd().service("changed.service", daemon("V=1"));
    let b = a.clone().renamed("b").service("changed.service", daemon("V=2"));
    let bed = TestBed::boot(&Config::new(a)).expect("test bed boots");
    let b = bed.build_generation(&b).expect("generation B");
    // A running unit of neither generation whose stop reaches sshd: the
    // plan must read its dependencies from systemd.
    bed.run(&["systemd-run", "--unit=foreign-helper", "-p", "PropagatesStopTo=sshd.service", "sleep", "infinity"])
        .expect("transient unit");

    let monitor = Monitor::start(&bed);
    let out = safe_switch_with(
        &bed,
        &["plan", "--toplevel", path_str(&b), "--protect", "sshd", "--json"],
        &[("SAFE_SWITCH_STATS", "1")],
    );
    let seen = monitor.stop(&bed);
    assert!(matches!(out.status.code(), Some(0 | 3)), "{}", out.stderr);

    let calls: Vec<&serde_json::Value> = seen.iter().filter(|m| m["type"] == "method_call").collect();
    let list = calls.iter().find(|m| m["member"] == "ListUnits").expect("the plan lists the units");
    let ours: Vec<&serde_json::Value> = calls.iter().copied().filter(|m| m["sender"] == list["sender"]).collect();
    let members: Vec<&str> = ours.iter().filter_map(|m| m["member"].as_str()).collect();
    assert_eq!(members.iter().filter(|m| **m == "ListUnits").count(), 1, "{members:?}");
    assert!(!members.contains(&"GetAll"), "{members:?}");
    let read: Vec<(String, String)> = ours
        .iter()
        .filter(|m| m["member"] == "Get")
        .map(|m| {
            let path = m["path"].as_str().unwrap_or_default().to_owned();
            (path, m["payload"]["data"][1].as_str().unwrap_or_default().to_owned())
        })
        .collect();
    for (path, property) in &read {
        assert!(!FILE_STATE.contains(&property.as_str()), "{path} {property}: a file state was asked");
    }
    // The foreign unit's relations were read, and nothing was asked of
    // the units the generations describe but what points at sshd.
    assert!(read.iter().any(|(path, p)| path.contains("foreign_2dhelper") && p == "PropagatesStopTo"), "{read:?}");
    assert!(!read.iter().any(|(path, _)| path.contains("changed_2eservice")), "{read:?}");
    // The figure the benchmark prints is the number of calls made.
    let stats = out.stderr.lines().find_map(|l| l.strip_prefix("stats: ")).expect("stats line");
    let counted: usize = stats.split_whitespace().next().and_then(|n| n.parse().ok()).expect("a count");
    let on_the_bus = ours.iter().filter(|m| m["member"] != "Hello" && m["member"] != "AddMatch").count();
    assert_eq!(counted, on_the_bus, "{members:?}");
}
