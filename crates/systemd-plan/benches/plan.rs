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

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::{Duration, Instant};

use plan_model::{LiveState, LiveUnit};

/// Units per generation, unless `PLAN_BENCH_UNITS` says otherwise.
const UNITS: usize = 5_000;
/// Timed rounds.
const ROUNDS: usize = 15;

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().expect("paths in the tree have parents")).expect("create directory");
    fs::write(path, text).expect("write file");
}

/// Writes one generation. `version` changes every tenth service and every
/// hundredth drop-in, so the plan has work to do.
fn generation(root: &Path, version: u32, count: usize) {
    let store = format!("nix/store/{version:08}-system-units");
    let units = root.join(&store);
    fs::create_dir_all(root.join("etc/systemd")).expect("create etc");
    fs::create_dir_all(&units).expect("create unit directory");
    symlink(format!("/{store}"), root.join("etc/systemd/system")).expect("link unit dir");
    write(&root.join("init-interface-version"), "systemd 2\n");
    write(&root.join("activate"), "#!/bin/sh\n");
    write(&root.join("etc/fstab"), "/dev/sda1 / ext4 defaults 0 1\n/dev/sda2 /nix ext4 defaults 0 2\n");
    let mut wants = Vec::new();
    let services = count - 100;
    for i in 0..services {
        let name = format!("svc-{i:05}.service");
        let changed = if i % 10 == 0 { version } else { 0 };
        let mut text = String::new();
        let _ = write!(
            text,
            "[Unit]\nDescription=Service {i}\nAfter=network.target svc-{:05}.service\nRequires=svc-{:05}.service\n\
             X-Restart-Triggers=/nix/store/{changed:08}-config-{i}\n\n[Service]\nType=simple\n\
             ExecStart=/nix/store/aaaa-app/bin/app --id {i} --flag \\\n  --more-flags\nEnvironment=ID={i}\n\
             Environment=\"PATH=/nix/store/bbbb-coreutils/bin\"\nRestart=always\nUser=svc{i}\n",
            (i + 1) % services,
            (i + 7) % services,
        );
        match i % 50 {
            10 => text.push_str("X-RestartIfChanged=false\n"),
            20 => text.push_str("X-ReloadIfChanged=true\nExecReload=/bin/kill -HUP $MAINPID\n"),
            30 => text.push_str("X-StopIfChanged=false\n"),
            _ => {}
        }
        text.push_str("\n[Install]\nWantedBy=multi-user.target\n");
        let file = root.join(format!("nix/store/{i:05}-{version}-unit-{name}/{name}"));
        write(&file, &text);
        symlink(format!("/nix/store/{i:05}-{version}-unit-{name}/{name}"), units.join(&name)).expect("link unit");
        if i % 20 == 0 {
            let drop_in_version = if i % 100 == 0 { version } else { 0 };
            write(
                &units.join(format!("{name}.d/overrides.conf")),
                &format!("[Service]\nNice={drop_in_version}\nLimitNOFILE=4096\n"),
            );
        }
        if i % 25 == 0 {
            write(&units.join(format!("svc-{i:05}.socket")), &format!("[Socket]\nListenStream=/run/svc-{i}.sock\n"));
        }
        wants.push(name);
    }
    for i in 0..50 {
        write(&units.join(format!("tpl-{i}@.service")), &format!("[Service]\nExecStart=/bin/tpl {i} %i v{version}\n"));
        write(&units.join(format!("other-{i}.target")), &format!("[Unit]\nDescription=Target {i}\n"));
    }
    write(&units.join("multi-user.target"), "[Unit]\nDescription=Multi-User System\n");
    let wants_dir = units.join("multi-user.target.wants");
    fs::create_dir_all(&wants_dir).expect("create wants");
    for name in wants {
        symlink(format!("../{name}"), wants_dir.join(&name)).expect("link wants");
    }
}

/// The live state: every unit of the old generation active, plus a few
/// template instances.
fn live(old: &systemd_plan::GenerationUnits) -> LiveState {
    let mut live = systemd_plan::assumed_live_state(old);
    for i in 0..50 {
        live.units.insert(
            format!("tpl-{i}@x.service"),
            LiveUnit {
                active_state: "active".into(),
                fragment_path: format!("/etc/systemd/system/tpl-{i}@.service"),
                ..LiveUnit::default()
            },
        );
    }
    live
}

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
