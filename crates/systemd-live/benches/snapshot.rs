//! How long a live snapshot of 500 active units takes on a real systemd.
//!
//! Boots a test bed whose generation has 500 running services (plus the
//! bed's own units), connects to its bus from the host the way
//! `safe-switch plan` would connect to a host's bus, and takes the
//! snapshot repeatedly. Prints the minimum, median and maximum, and exits
//! non-zero when the median misses the goal of 150 ms. Needs root; skips
//! with a message otherwise (and fails under `CI=true`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use systemd_live::{ServiceManager, SystemdBus};
use testbed::{Config, Generation, TestBed};

const UNITS: usize = 500;
const RUNS: usize = 20;
const GOAL: Duration = Duration::from_millis(150);

fn main() {
    if !testbed::available("snapshot benchmark") {
        return;
    }
    let mut generation = Generation::new("bench");
    for i in 0..UNITS {
        let name = format!("bench-{i:03}.service");
        generation = generation
            .service(&name, "[Unit]\nDescription=bench\n\n[Service]\nExecStart=/bin/sleep infinity\n")
            .wanted_by(&name, "multi-user.target");
    }
    let mut config = Config::new(generation);
    config.timeout = Duration::from_secs(120);
    let bed = TestBed::boot(&config).expect("test bed boots");
    // SAFETY: no other thread of this program runs yet, so none reads the
    // environment while it changes.
    unsafe { std::env::set_var("DBUS_SYSTEM_BUS_ADDRESS", bed.dbus_address()) };
    let mut bus = SystemdBus::connect().expect("connects to the bed's bus");

    // Wait until every unit has started, so each run sees the same state.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let live = bus.snapshot().expect("snapshot");
        let running = live
            .units
            .iter()
            .filter(|(n, u)| n.starts_with("bench-") && u.active_state == "active" && u.main_pid != 0)
            .count();
        if running == UNITS {
            break;
        }
        assert!(Instant::now() < deadline, "only {running} of {UNITS} bench units came up");
        std::thread::sleep(Duration::from_millis(200));
    }

    let cpu_before = cpu_time();
    let mut times = Vec::new();
    let mut total = 0;
    for _ in 0..RUNS {
        let start = Instant::now();
        let live = bus.snapshot().expect("snapshot");
        times.push(start.elapsed());
        total = live.units.len();
    }
    let cpu = cpu_time().saturating_sub(cpu_before) / RUNS as u32;
    times.sort();
    let median = times[RUNS / 2];
    println!(
        "snapshot of {total} loaded units ({UNITS} active services): min {:.1} ms, median {:.1} ms, max {:.1} ms over {RUNS} runs (goal: under {} ms)",
        ms(times[0]),
        ms(median),
        ms(times[RUNS - 1]),
        GOAL.as_millis()
    );
    println!("CPU time of this process (the client side) per snapshot: {:.1} ms", ms(cpu));
    // The machine's load changes these figures a lot (the bus daemon and
    // systemd share the CPUs with everything else), so it is printed too.
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        println!("load average at the end: {}", load.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    }
    drop(bus);
    bed.shutdown().expect("test bed shuts down");
    if median > GOAL {
        eprintln!("the median snapshot time misses the goal");
        std::process::exit(1);
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// User and system CPU time of this process so far, from `/proc/self/stat`.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12].iter().filter_map(|i| fields.get(*i)?.parse::<u64>().ok()).sum();
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Duration::from_millis(ticks * 1000 / hz)
}
