//! Benchmark of the protection analysis on a large, densely connected pair
//! of generations.
//!
//! 5,000 services, each with five relations on average (`Requires=`,
//! `Wants=`, `PartOf=`, `BindsTo=`, `Conflicts=` and `PropagatesStopTo=`,
//! drawn with a fixed seed), both in the unit files and as live
//! properties; every tenth unit changes between the generations, and 20
//! units are protected. The figure that matters is the time `protect` adds
//! to planning: the goal is under 50 ms in release mode.
//!
//! Run with `cargo bench -p systemd-plan --bench protect`.

#![expect(clippy::expect_used, reason = "the fixture is generated here; a failure is a bug in the benchmark")]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use plan_model::policy::Selector;
use plan_model::{LiveState, LiveUnit, ProtectionSource};
use systemd_plan::protect::{Request, protect};
use systemd_plan::{GenerationUnits, UnitFile};

const UNITS: usize = 5_000;
const RELATIONS_PER_UNIT: usize = 5;
const PROTECTED: usize = 20;

/// A small deterministic generator (xorshift), so every run measures the
/// same graph.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn name(i: usize) -> String {
    format!("svc-{i:05}.service")
}

struct Fixture {
    old: GenerationUnits,
    new: GenerationUnits,
    live: LiveState,
}

fn fixture() -> Fixture {
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let keys = ["Requires", "Wants", "PartOf", "BindsTo", "Conflicts", "PropagatesStopTo"];
    let mut relations: Vec<Vec<(&str, String)>> = vec![Vec::new(); UNITS];
    for (i, rels) in relations.iter_mut().enumerate() {
        for _ in 0..RELATIONS_PER_UNIT {
            let mut j = rng.below(UNITS);
            if j == i {
                j = (j + 1) % UNITS;
            }
            // Conflicts between running units cannot exist in a live
            // system, so they are rare here, as on a real host.
            let key = match rng.below(100) {
                0..=34 => keys[0],
                35..=69 => keys[1],
                70..=84 => keys[2],
                85..=94 => keys[3],
                95..=97 => keys[5],
                _ => keys[4],
            };
            rels.push((key, name(j)));
        }
    }
    let unit_text = |i: usize, version: u32| {
        let mut text = String::from("[Unit]\nDescription=bench\n");
        for (key, target) in &relations[i] {
            text.push_str(&format!("{key}={target}\n"));
        }
        text.push_str(&format!("[Service]\nExecStart=/bin/svc-{version}\n"));
        text
    };
    let load = |version: &dyn Fn(usize) -> u32| {
        let units = (0..UNITS).map(|i| {
            let path = format!("/etc/systemd/system/{}", name(i));
            let unit = UnitFile::parse(Path::new(&path), &unit_text(i, version(i))).expect("generated unit parses");
            (name(i), unit)
        });
        GenerationUnits::from_units("/gen", units)
    };
    let old = load(&|_| 1);
    let new = load(&|i| if i % 10 == 0 { 2 } else { 1 });
    let mut live = LiveState::default();
    for (i, rels) in relations.iter().enumerate() {
        let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (key, target) in rels {
            deps.entry((*key).to_owned()).or_default().push(target.clone());
        }
        live.units.insert(
            name(i),
            LiveUnit {
                active_state: "active".into(),
                sub_state: "running".into(),
                load_state: "loaded".into(),
                fragment_path: format!("/etc/systemd/system/{}", name(i)),
                deps,
                ..LiveUnit::default()
            },
        );
    }
    Fixture { old, new, live }
}

fn request() -> Request {
    let selectors = (0..PROTECTED)
        .map(|k| {
            let selector = Selector::parse(&name(k * 241 + 7)).expect("valid selector");
            (selector, ProtectionSource::CommandLine)
        })
        .collect();
    Request { selectors, caller_cgroups: vec!["/system.slice/svc-00001.service".into()], ..Request::default() }
}

/// The CPU time this thread has used. Wall-clock time alone is misleading
/// on a shared machine: a loaded host stretches it several times over.
fn thread_cpu_time() -> Duration {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(u64::try_from(ts.tv_sec).unwrap_or(0), u32::try_from(ts.tv_nsec).unwrap_or(0))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs `f` `runs` times and returns the median wall-clock and CPU times.
fn measure(label: &str, runs: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    let mut wall = Vec::with_capacity(runs);
    let mut cpu = Vec::with_capacity(runs);
    for _ in 0..runs {
        let (t, c) = (Instant::now(), thread_cpu_time());
        f();
        wall.push(t.elapsed());
        cpu.push(thread_cpu_time().saturating_sub(c));
    }
    wall.sort();
    cpu.sort();
    let (w, c) = (wall[runs / 2], cpu[runs / 2]);
    println!(
        "{label:<30} cpu median {:>7.2} ms (min {:>7.2})   wall median {:>7.2} ms (min {:>7.2})   {runs} runs",
        ms(c),
        ms(cpu[0]),
        ms(w),
        ms(wall[0])
    );
    (w, c)
}

fn main() {
    // `cargo test --benches` runs bench binaries with `--bench` absent; keep
    // that quick.
    let runs = if std::env::args().any(|a| a == "--bench") { 21 } else { 3 };
    let f = fixture();
    let request = request();
    let base = systemd_plan::plan(&f.old, &f.new, &f.live);
    // `PROTECT_BENCH_ONLY=1` runs nothing but the protection analysis, for
    // `perf stat`, whose instruction counts do not depend on the load of
    // the machine.
    if std::env::var_os("PROTECT_BENCH_ONLY").is_some() {
        for _ in 0..runs {
            let mut plan = base.clone();
            black_box(protect(&mut plan, &f.old, &f.new, &f.live, &request));
        }
        return;
    }
    let mut last = None;
    let plan_time = measure("plan (no protection)", runs, || {
        black_box(systemd_plan::plan(&f.old, &f.new, &f.live));
    });
    let protect_time = measure("protect (20 protected units)", runs, || {
        let mut plan = base.clone();
        let analysis = protect(&mut plan, &f.old, &f.new, &f.live, &request);
        last = Some((plan, analysis.graph.unit_count(), analysis.graph.relation_count()));
    });
    measure("  of which: graph build", runs, || {
        black_box(systemd_plan::protect::UnitGraph::build(&f.old, &f.new, &f.live));
    });
    if let Some((plan, nodes, edges)) = last {
        println!(
            "graph: {nodes} units, {edges} relations; plan: {} units, {} deferred",
            plan.units.len(),
            plan.deferred().count()
        );
    }
    println!(
        "protection adds {:.2} ms of CPU time ({:.2} ms wall) to planning ({:.2} ms CPU); goal: under 50 ms",
        ms(protect_time.1),
        ms(protect_time.0),
        ms(plan_time.1)
    );
}
