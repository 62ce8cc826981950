//! Benchmark: two generated closures of 20,000 paths each, 2,000 of them
//! different, registered in a real Nix database with `nix-store
//! --load-db`, then read from the database and diffed. The same pair is
//! diffed with `nix store diff-closures` in the same run for comparison.
//!
//! Run with `cargo bench -p closure-diff`. The goal is under 150 ms for
//! reading both closures and diffing them (median of the runs), and at
//! least five times faster than `nix store diff-closures`; the program
//! exits with status 1 when the time goal is missed.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a benchmark may panic")]

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use closure_diff::{Options, SourcePolicy, diff_store_paths};

const PATHS: u64 = 20_000;
const CHANGES: u64 = 2_000;
const RUNS: usize = 21;
const NIX_RUNS: usize = 3;
const BUDGET: Duration = Duration::from_millis(150);

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    // `cargo test --benches` runs bench targets with `--bench` absent;
    // only do the expensive work when asked to benchmark.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("closure_diff bench: pass --bench (cargo bench) to run");
        return;
    }
    if !common::require_nix("closure_diff bench") {
        return;
    }

    let g = common::generations(90, PATHS, CHANGES);
    let store = common::TempStore::new();
    let t = Instant::now();
    store.register(&g.entries);
    println!(
        "registered {} store paths with nix-store --load-db in {}",
        g.entries.len(),
        ms(t.elapsed())
    );

    let options = Options { source: SourcePolicy::DatabaseOnly, ..store.options() };
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..RUNS {
        let t = Instant::now();
        let d = diff_store_paths(Path::new(&g.old), Path::new(&g.new), &options).unwrap();
        times.push(t.elapsed());
        last = Some(d);
    }
    let d = last.unwrap();
    assert_eq!((d.old.paths, d.new.paths), (PATHS as usize, PATHS as usize));
    assert_eq!(d.paths_added, CHANGES as usize);
    let ours = median(times.clone());
    let best = times.iter().min().copied().unwrap_or_default();
    println!(
        "closure-diff (read both closures from the database + diff): median {} (best {}, {RUNS} runs)",
        ms(ours),
        ms(best)
    );
    println!("  {}", d.render_summary());

    let mut nix_times = Vec::new();
    for _ in 0..NIX_RUNS {
        let t = Instant::now();
        let out = common::nix_command("nix")
            .args(["store", "diff-closures", "--store", &store.uri(), &g.old, &g.new])
            .output()
            .unwrap();
        nix_times.push(t.elapsed());
        assert!(out.status.success(), "nix store diff-closures: {}", String::from_utf8_lossy(&out.stderr));
        assert!(!out.stdout.is_empty(), "nix store diff-closures printed nothing");
    }
    let theirs = median(nix_times);
    println!("nix store diff-closures: median {} ({NIX_RUNS} runs)", ms(theirs));
    let ratio = theirs.as_secs_f64() / ours.as_secs_f64();
    println!("ratio: {ratio:.1}x faster than nix store diff-closures (goal: at least 5x)");

    if ours > BUDGET {
        println!("FAIL: {} is over the {} budget", ms(ours), ms(BUDGET));
        std::process::exit(1);
    }
    println!("ok: {} is within the {} budget", ms(ours), ms(BUDGET));
}
