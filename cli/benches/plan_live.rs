//! How long `safe-switch plan` takes on a real systemd, cold and warm.
//!
//! For each size N (500, 1,000 and 2,000 by default; `PLAN_BENCH_SIZES=500,2000`
//! to choose, up to 10,000 and beyond), boots a test bed whose generation A
//! runs N services, builds a generation B that changes N/10 of them, and runs
//! `safe-switch plan --toplevel B --json` inside the bed:
//!
//! - cold: right after `systemctl daemon-reload`, as on a host after any
//!   switch (systemd has dropped every cache a query may fill);
//! - warm: the same plan again.
//!
//! Prints the median, minimum and maximum wall time, the peak resident
//! memory of the process, and the number of calls it made to systemd
//! (`SAFE_SWITCH_STATS=1`), of 9 runs each (`PLAN_BENCH_RUNS` to choose),
//! and the time of the `daemon-reload`s. With `PLAN_BENCH_VS=COMMAND`, runs
//! COMMAND with B's path as its argument inside the bed the same way, for a
//! side-by-side figure (e.g. a wrapper around NixOS's `switch-to-configuration
//! dry-activate`). Times include entering the bed's namespaces with
//! `nsenter`, printed apart. The peak memory (`wait4`) is never less than
//! this process's own when it starts the command, which the child shares
//! until it runs its program: the `nsenter /bin/true` line shows that
//! floor. Needs root; skips with a message otherwise.
//!
//! The services are wanted by `multi-user.target`, as NixOS's `wantedBy`
//! makes them, and by a `bench.target`. Starting them is what makes a large
//! bed slow: Debian 12's systemd (252), for each service it starts, and for
//! each unit at every `daemon-reload`, looks at every other unit of the
//! slice (`system.slice`) to see whether its cgroup must be set up again,
//! which is quadratic (on a 2-core virtual machine, 10,000 services take
//! 3 to 5 minutes to start and each `daemon-reload` 1 to 2 minutes). And it
//! runs all the jobs that can run in one go, answering no bus call
//! meanwhile: with 10,000 start jobs in one transaction (the boot's of
//! `multi-user.target`, or one `start bench.target`) it did not answer for
//! minutes, and the bed's first `systemctl start` failed at that client's
//! 25-second timeout. So the bed boots `basic.target` and the services are
//! started by name, 500 per `systemctl start` (which asks for them one by
//! one, and systemd answers the bus between them), then the two targets,
//! whose wants are by then all active. At 10,000, run with
//! `PLAN_BENCH_SIZES=10000 PLAN_BENCH_RUNS=5`: nine cold runs of safe-switch
//! and nine of `PLAN_BENCH_VS` would spend half an hour in `daemon-reload`.
//!
//! With `PLAN_BENCH_WRAP=PROGRAM`, each plan runs as `PROGRAM BIN plan ...`
//! (`scripts/link-order` traces the functions a plan runs that way).
//!
//! On a machine that other work shares, run the built benchmark under
//! `chrt -f 20`: the bed, started from it, then runs at that real-time
//! priority too, and the figures are those of a quiet machine.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testbed::{Config, Generation, TestBed};

/// Services started by one `systemctl start`.
const CHUNK: usize = 500;
const BIN: &str = env!("CARGO_BIN_EXE_safe-switch");

/// One run: wall time, peak resident memory in KiB, and standard error.
struct Run {
    wall: Duration,
    max_rss_kib: u64,
    stderr: String,
}

/// Runs `cmd` to the end and measures it: the wall time and the largest
/// resident set of the process and the children it waited for (`wait4`).
fn measure(cmd: &mut Command) -> Run {
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().expect("starts");
    let mut stderr = String::new();
    let mut pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::Read as _;
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    });
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value for wait4 to fill, and the
    // pid is this process's own child, waited for once.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: as above.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = start.elapsed();
    assert_eq!(waited, pid, "wait4");
    stderr.push_str(&reader.join().unwrap());
    let status = std::process::ExitStatus::from_raw(status);
    assert!(matches!(status.code(), Some(0 | 3)), "{status:?}: {stderr}");
    std::mem::forget(child);
    Run { wall, max_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0), stderr }
}

fn calls(stderr: &str) -> Option<u64> {
    stderr.lines().find_map(|l| l.strip_prefix("stats: ")?.split_whitespace().next()?.parse().ok())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `median ... ms  (min ..., max ...)` of `walls`.
fn spread(walls: &[Duration]) -> String {
    let mut walls = walls.to_vec();
    walls.sort();
    format!(
        "median {:>8.1} ms  (min {:>7.1}, max {:>7.1})",
        ms(walls[walls.len() / 2]),
        ms(walls[0]),
        ms(walls[walls.len() - 1])
    )
}

fn summary(label: &str, runs: &[Run]) {
    let walls: Vec<Duration> = runs.iter().map(|r| r.wall).collect();
    let rss = runs.iter().map(|r| r.max_rss_kib).max().unwrap_or(0);
    let calls = runs.iter().filter_map(|r| calls(&r.stderr)).max();
    println!(
        "  {label:<34} {}  peak RSS {:>6.1} MiB{}",
        spread(&walls),
        rss as f64 / 1024.0,
        calls.map(|c| format!("  {c} calls")).unwrap_or_default()
    );
}

fn service(version: u32) -> String {
    format!("[Unit]\nDescription=bench\n\n[Service]\nEnvironment=V={version}\nExecStart=/bin/sleep infinity\n")
}

fn bench(n: usize, runs: usize) {
    let name = |i: usize| format!("bench-{i:05}.service");
    let mut a = Generation::new("a").unit("bench.target", "[Unit]\nDescription=bench services\n");
    for i in 0..n {
        a = a.service(name(i), service(1)).wanted_by(name(i), "bench.target");
    }
    let mut b = a.clone().renamed("b");
    for i in (0..n).step_by(10) {
        b = b.service(name(i), service(2));
    }
    let mut config = Config::new(a);
    // Not multi-user.target, which wants every service: see the module
    // documentation.
    config.target = "basic.target".to_owned();
    config.timeout = Duration::from_secs(60 + n as u64 / 10);
    let booted = Instant::now();
    let bed = TestBed::boot(&config).expect("test bed boots");
    let names: Vec<String> = (0..n).map(name).collect();
    for chunk in names.chunks(CHUNK) {
        let mut start = vec!["start"];
        start.extend(chunk.iter().map(String::as_str));
        bed.systemctl(&start).expect("bench services start");
    }
    bed.systemctl(&["start", "multi-user.target", "bench.target"]).expect("targets start");
    let active = bed.systemctl(&["list-units", "--state=active", "--no-legend", "bench-*"]).unwrap_or_default();
    assert_eq!(active.lines().count(), n, "active bench services");
    let target = bed.build_generation(&b).expect("generation B");
    println!("{n} active services, {} changed (bed up in {:.1} s):", n / 10, booted.elapsed().as_secs_f64());

    let wrap = std::env::var("PLAN_BENCH_WRAP").ok();
    let plan = |bed: &TestBed| {
        let mut cmd = match &wrap {
            Some(wrap) => {
                let mut cmd = bed.command(wrap);
                cmd.arg(BIN);
                cmd
            }
            None => bed.command(BIN),
        };
        cmd.args(["plan", "--toplevel"]).arg(&target).arg("--json").env("SAFE_SWITCH_STATS", "1");
        cmd
    };
    let mut reloads = Vec::new();
    let mut reload = |bed: &TestBed| {
        let start = Instant::now();
        bed.systemctl(&["daemon-reload"]).expect("daemon-reload");
        reloads.push(start.elapsed());
    };
    let nsenter: Vec<Run> = (0..runs).map(|_| measure(&mut bed.command("/bin/true"))).collect();
    let cold: Vec<Run> = (0..runs)
        .map(|_| {
            reload(&bed);
            measure(&mut plan(&bed))
        })
        .collect();
    let _ = measure(&mut plan(&bed));
    let warm: Vec<Run> = (0..runs).map(|_| measure(&mut plan(&bed))).collect();
    summary("safe-switch plan, cold", &cold);
    summary("safe-switch plan, warm", &warm);
    if let Ok(vs) = std::env::var("PLAN_BENCH_VS") {
        let other = |bed: &TestBed| {
            let mut cmd = bed.command(&vs);
            cmd.arg(&target);
            cmd
        };
        let cold: Vec<Run> = (0..runs)
            .map(|_| {
                reload(&bed);
                measure(&mut other(&bed))
            })
            .collect();
        let warm: Vec<Run> = (0..runs).map(|_| measure(&mut other(&bed))).collect();
        let name = Path::new(&vs).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or(vs.clone());
        summary(&format!("{name}, cold"), &cold);
        summary(&format!("{name}, warm"), &warm);
    }
    summary("(entering the bed: nsenter /bin/true)", &nsenter);
    println!("  {:<34} {}", "(daemon-reload before a cold run)", spread(&reloads));
}

fn main() {
    if !testbed::available("plan benchmark") {
        return;
    }
    let sizes: Vec<usize> = std::env::var("PLAN_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![500, 1000, 2000]);
    let runs: usize =
        std::env::var("PLAN_BENCH_RUNS").ok().and_then(|r| r.trim().parse().ok()).filter(|&r| r > 0).unwrap_or(9);
    println!(
        "safe-switch plan on a test bed, {runs} runs each ({} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for n in sizes {
        bench(n, runs);
    }
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        println!("load average at the end: {}", load.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    }
}
