//! How long a test bed takes to boot: with a small generation (sshd and
//! one service) and with 500 running services. Run as root with
//! `cargo bench -p testbed --bench boot`; prints one line per case and
//! fails when a bed does not come up.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use testbed::{Config, Generation, TestBed};

fn small() -> Generation {
    Generation::new("small").sshd().service("job.service", "[Service]\nExecStart=/bin/sleep infinity\n")
}

fn many(n: usize) -> Generation {
    (0..n).fold(Generation::new("many").sshd(), |g, i| {
        g.service(format!("svc-{i:03}.service"), "[Service]\nExecStart=/bin/sleep infinity\n")
    })
}

/// Boots `runs` beds one after another; returns the boot times, sorted.
fn measure(generation: &Generation, runs: usize) -> Vec<Duration> {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            let bed = TestBed::boot(&Config::new(generation.clone())).unwrap_or_else(|e| panic!("boot: {e}"));
            let took = started.elapsed();
            drop(bed);
            took
        })
        .collect();
    times.sort();
    times
}

fn report(name: &str, times: &[Duration]) {
    let median = times[times.len() / 2];
    let (min, max) = (times[0], times[times.len() - 1]);
    println!(
        "{name:<28} median {:>7.1} ms   min {:>7.1} ms   max {:>7.1} ms   ({} runs)",
        median.as_secs_f64() * 1e3,
        min.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        times.len()
    );
}

fn main() {
    if !testbed::available("bench boot") {
        return;
    }
    report("boot: sshd + 1 service", &measure(&small(), 7));
    report("boot: sshd + 500 services", &measure(&many(500), 3));
}
