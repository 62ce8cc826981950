//! Benchmark: load and plan a pair of generated generations with 5,000
//! units each, laid out as NixOS lays them out (every unit file an absolute
//! link into the store, drop-ins, templates, sockets, `.wants` links).
//!
//! Run with `cargo bench -p systemd-plan --bench plan`
//! (`PLAN_BENCH_UNITS=1000,2000,5000,10000` for other sizes, to see how the
//! cost grows; the peak memory is then that of the largest so far). It prints the wall
//! time of load+plan (best, median and worst of several rounds; the two
//! generations load in parallel), the CPU time the same work took (which,
//! unlike wall time, does not grow when other processes compete for the
//! CPU), and the peak resident memory of the process (`VmHWM`). The goal
//! is under 200 ms and under 100 MB on a 2-core machine.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::time::{Duration, Instant};

mod common;

use common::{generation, live};

/// Units per generation, unless `PLAN_BENCH_UNITS` says otherwise.
const UNITS: usize = 5_000;
/// Timed rounds.
const ROUNDS: usize = 15;

/// CPU time (user + system) of the whole process, all threads included,
/// from `/proc/self/stat` (clock ticks, usually 10 ms). Unlike wall time
/// it does not grow when other processes compete for the CPU.
fn cpu_time() -> Option<Duration> {
    let stat = fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold
    // blanks: state is field 3, utime field 14, stime field 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

fn peak_rss_kib() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() {
    let sizes: Vec<usize> = std::env::var("PLAN_BENCH_UNITS")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).filter(|n| *n > 100).collect())
        .unwrap_or_else(|| vec![UNITS]);
    for units in sizes {
        bench(units);
    }
}

fn bench(units: usize) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (old_root, new_root) = (dir.path().join("old"), dir.path().join("new"));
    generation(&old_root, 1, units);
    generation(&new_root, 2, units);
    let before = peak_rss_kib().unwrap_or(0);

    let mut times: Vec<Duration> = Vec::new();
    let mut cpu: Vec<Duration> = Vec::new();
    let mut summary = String::new();
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let cpu_start = cpu_time();
        let (old, new) = systemd_plan::load_pair(&old_root, &new_root);
        let (old, new) = (old.expect("load old"), new.expect("load new"));
        let loaded = start.elapsed();
        let live = live(&old);
        let plan = systemd_plan::plan(&old, &new, &live);
        if std::env::var_os("BENCH_SPLIT").is_some() {
            eprintln!("load {:?} plan {:?}", loaded, start.elapsed() - loaded);
        }
        times.push(start.elapsed());
        if let (Some(a), Some(b)) = (cpu_start, cpu_time()) {
            cpu.push(b.saturating_sub(a));
        }
        summary = format!(
            "{} units per generation; plan: {} entries, {} stop, {} restart, {} reload, {} start, {} skip",
            old.unit_names().count(),
            plan.units.len(),
            plan.units_with(plan_model::Action::Stop).len(),
            plan.units_with(plan_model::Action::Restart).len(),
            plan.units_with(plan_model::Action::Reload).len(),
            plan.units_with(plan_model::Action::Start).len(),
            plan.units_with(plan_model::Action::Skip).len(),
        );
    }
    times.sort();
    cpu.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("{summary}");
    println!(
        "load+plan: best {:.1} ms, median {:.1} ms, worst {:.1} ms ({ROUNDS} rounds)",
        ms(times[0]),
        ms(times[ROUNDS / 2]),
        ms(times[ROUNDS - 1])
    );
    if cpu.len() == ROUNDS {
        println!(
            "load+plan CPU time (user+system, all threads): best {:.0} ms, median {:.0} ms, worst {:.0} ms",
            ms(cpu[0]),
            ms(cpu[ROUNDS / 2]),
            ms(cpu[ROUNDS - 1])
        );
    }
    let peak = peak_rss_kib().unwrap_or(0);
    println!(
        "peak resident memory (VmHWM): {:.1} MiB (after generating fixtures: {:.1} MiB)",
        peak as f64 / 1024.0,
        before as f64 / 1024.0
    );
}
