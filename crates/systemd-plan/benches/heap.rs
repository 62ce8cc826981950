//! Benchmark: the heap a plan holds at its peak.
//!
//! Loads the benchmarks' pair of generations (2,000 units each unless
//! `PLAN_BENCH_UNITS` says otherwise; every tenth service changed), laid
//! out twice: each generation with files of its own, as in the `plan`
//! benchmark, and both in one store, where a file the new generation has
//! unchanged is the old one's, as on a host; and once more as the test bed
//! of `cli/benches/plan_live.rs` has them (plain services wanted by a
//! target, one store). Then it does what `safe-switch plan` does with
//! them, keeping what it keeps:
//! asks what protection wants of the live state, plans, runs the
//! protection analysis (the implicit protections, plus the units
//! `HEAP_BENCH_PROTECT` lists, comma-separated) and makes the diffs. A
//! counting global allocator records the bytes and blocks alive at the
//! peak, and what is alive after each step.
//!
//! Run with `cargo bench -p systemd-plan --bench heap`.
//!
//! Bytes are what the program asked for. "malloc" estimates what glibc's
//! allocator takes for the same blocks (8 bytes of header, 16-byte
//! alignment, 32 bytes at least): the structures are made of many small
//! blocks, so this is noticeably more.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use plan_model::ProtectionSource;
use plan_model::policy::Selector;
use systemd_plan::protect::{DependencyReading, Request, protect};

mod common;

/// Counts live bytes and blocks, and keeps their most.
struct Counting;

static BYTES: AtomicUsize = AtomicUsize::new(0);
static CHUNKS: AtomicUsize = AtomicUsize::new(0);
static BLOCKS: AtomicUsize = AtomicUsize::new(0);
static PEAK_BYTES: AtomicUsize = AtomicUsize::new(0);
static PEAK_CHUNKS: AtomicUsize = AtomicUsize::new(0);
static PEAK_BLOCKS: AtomicUsize = AtomicUsize::new(0);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

/// What glibc's malloc takes for a block of `size` bytes.
fn chunk(size: usize) -> usize {
    ((size + 8 + 15) & !15).max(32)
}

impl Counting {
    fn grow(size: usize, blocks: usize) {
        let bytes = BYTES.fetch_add(size, Relaxed) + size;
        let chunks = CHUNKS.fetch_add(chunk(size), Relaxed) + chunk(size);
        let blocks = BLOCKS.fetch_add(blocks, Relaxed) + blocks;
        if PEAK_BYTES.fetch_max(bytes, Relaxed) < bytes {
            PEAK_BLOCKS.store(blocks, Relaxed);
            PEAK_CHUNKS.store(chunks, Relaxed);
        }
    }

    fn shrink(size: usize, blocks: usize) {
        BYTES.fetch_sub(size, Relaxed);
        CHUNKS.fetch_sub(chunk(size), Relaxed);
        BLOCKS.fetch_sub(blocks, Relaxed);
    }
}

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is the system allocator's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            ALLOCATIONS.fetch_add(1, Relaxed);
            Counting::grow(layout.size(), 1);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) };
        Counting::shrink(layout.size(), 1);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            ALLOCATIONS.fetch_add(1, Relaxed);
            Counting::shrink(layout.size(), 1);
            Counting::grow(new_size, 1);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What is alive now, less `base`.
fn alive(base: (usize, usize, usize)) -> (usize, usize, usize) {
    (
        BYTES.load(Relaxed).saturating_sub(base.0),
        CHUNKS.load(Relaxed).saturating_sub(base.1),
        BLOCKS.load(Relaxed).saturating_sub(base.2),
    )
}

fn show(label: &str, (bytes, chunks, blocks): (usize, usize, usize)) {
    println!(
        "{label:<34} {:>8.1} KiB in {blocks:>7} blocks (malloc ~{:>8.1} KiB)",
        bytes as f64 / 1024.0,
        chunks as f64 / 1024.0
    );
}

/// [`show`], with the peak so far.
fn step(label: &str, base: (usize, usize, usize)) {
    show(label, alive(base));
    println!("{:<34} {:>8.1} KiB", "  peak so far", PEAK_BYTES.load(Relaxed).saturating_sub(base.0) as f64 / 1024.0);
}

fn main() {
    let units: usize = std::env::var("PLAN_BENCH_UNITS")
        .ok()
        .and_then(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).find(|n| *n > 100))
        .unwrap_or(2_000);
    let mut selectors = Vec::new();
    for unit in std::env::var("HEAP_BENCH_PROTECT").unwrap_or_default().split(',').filter(|u| !u.is_empty()) {
        selectors.push((Selector::parse(unit).expect("valid selector"), ProtectionSource::CommandLine));
    }
    let request = Request {
        selectors,
        caller_cgroups: vec!["/user.slice/user-0.slice/session-1.scope".into()],
        ..Request::default()
    };

    let dir = tempfile::tempdir().expect("temporary directory");
    let (old_root, new_root) = (dir.path().join("old"), dir.path().join("new"));
    common::generation(&old_root, 1, units);
    common::generation(&new_root, 2, units);
    println!("Each generation's files its own:");
    measure(&old_root, &new_root, &request, common::live);
    drop(dir);

    let dir = tempfile::tempdir().expect("temporary directory");
    let store = dir.path().join("store");
    let (old_root, new_root) = (store.join("old-system"), store.join("new-system"));
    common::generation_in(common::Layout::Shared(&store), &old_root, 1, units);
    common::generation_in(common::Layout::Shared(&store), &new_root, 2, units);
    println!("\nOne store, the files of unchanged units shared:");
    measure(&old_root, &new_root, &request, common::live);
    drop(dir);

    let dir = tempfile::tempdir().expect("temporary directory");
    let store = dir.path().join("store");
    plain(&store, 1, units);
    plain(&store, 2, units);
    println!("\nPlain services, as in the live plan benchmark's test bed:");
    let live = systemd_plan::assumed_live_state;
    measure(&store.join("1-system"), &store.join("2-system"), &request, live);
}

/// Writes a generation of `count` plain services into `store` as the live
/// plan benchmark's test bed has them: each wanted by `bench.target` and
/// `multi-user.target`, every tenth changed with `version`, each unit file
/// linked from a store path of its own.
fn plain(store: &std::path::Path, version: u32, count: usize) {
    use std::fs;
    use std::os::unix::fs::symlink;
    let units = store.join(format!("{version}-units"));
    let root = store.join(format!("{version}-system"));
    fs::create_dir_all(root.join("etc/systemd")).expect("create etc");
    symlink(&units, root.join("etc/systemd/system")).expect("link the unit directory");
    for target in ["bench.target", "multi-user.target"] {
        fs::create_dir_all(units.join(format!("{target}.wants"))).expect("create wants");
        let file = store.join(format!("{target}-unit")).join(target);
        if !file.exists() {
            fs::create_dir_all(file.parent().expect("a parent")).expect("create store path");
            fs::write(&file, format!("[Unit]\nDescription={target}\n")).expect("write unit");
        }
        symlink(&file, units.join(target)).expect("link unit");
    }
    for i in 0..count {
        let name = format!("bench-{i:05}.service");
        let v = if i % 10 == 0 { version } else { 1 };
        let file = store.join(format!("{i:05}-{v}-unit")).join(&name);
        if !file.exists() {
            fs::create_dir_all(file.parent().expect("a parent")).expect("create store path");
            let text =
                format!("[Unit]\nDescription=bench\n\n[Service]\nEnvironment=V={v}\nExecStart=/bin/sleep infinity\n");
            fs::write(&file, text).expect("write unit");
        }
        symlink(&file, units.join(&name)).expect("link unit");
        for target in ["bench.target", "multi-user.target"] {
            symlink(format!("../{name}"), units.join(format!("{target}.wants")).join(&name)).expect("link wants");
        }
    }
}

/// Loads, plans, protects and makes the diffs, printing what is alive
/// after each step and at the peak.
fn measure(
    old_root: &std::path::Path,
    new_root: &std::path::Path,
    request: &Request,
    live: fn(&systemd_plan::GenerationUnits) -> plan_model::LiveState,
) {
    let base = (BYTES.load(Relaxed), CHUNKS.load(Relaxed), BLOCKS.load(Relaxed));
    PEAK_BYTES.store(base.0, Relaxed);
    let allocations = ALLOCATIONS.load(Relaxed);

    let (old, new) = systemd_plan::load_pair(old_root, new_root);
    let (old, new) = (old.expect("load old"), new.expect("load new"));
    step("after loading both generations", base);
    let live = live(&old);
    let mut reading = DependencyReading::new(&old, &new, &live, request);
    assert!(reading.wanted(&live).is_empty(), "the fixture's live state has every unit's relations it needs");
    drop(reading);
    step("after the live state", base);
    let mut plan = systemd_plan::plan(&old, &new, &live);
    step("after planning", base);
    let analysis = protect(&mut plan, &old, &new, &live, request);
    step("after protection", base);
    let diffs = systemd_plan::unit_diffs(&plan, &old, &new);
    step("after the diffs", base);

    let peak = PEAK_BYTES.load(Relaxed).saturating_sub(base.0);
    let peak_chunks = PEAK_CHUNKS.load(Relaxed).saturating_sub(base.1);
    let peak_blocks = PEAK_BLOCKS.load(Relaxed).saturating_sub(base.2);
    let before_graph = alive((0, 0, 0));
    let graph = systemd_plan::protect::UnitGraph::build(&old, &new, &live);
    show("the relation graph, built alone", alive(before_graph));
    drop(graph);
    println!(
        "{} units per generation; plan: {} entries, {} consequences, {} diffs; graph: {} units, {} relations",
        old.unit_names().count(),
        plan.units.len(),
        plan.consequences.len(),
        diffs.len(),
        analysis.graph.unit_count(),
        analysis.graph.relation_count(),
    );
    show("peak", (peak, peak_chunks, peak_blocks));
    println!("allocations made: {}", ALLOCATIONS.load(Relaxed) - allocations);
    drop((old, new, live, plan, analysis, diffs));
}
