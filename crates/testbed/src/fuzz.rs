//! Support for the property tests that fuzz safe-switch's inputs: a
//! counting allocator, to bound the memory one case uses, and a watchdog,
//! so that a case that hangs fails with its input instead of stalling the
//! test run.
//!
//! A harness installs the allocator in its test binary and runs each
//! property with [`check`] (proptest, a fixed seed, a bounded number of
//! cases, each under a [`Watchdog`]):
//!
//! ```no_run
//! use proptest::prelude::*;
//!
//! #[global_allocator]
//! static ALLOC: testbed::fuzz::CountingAlloc = testbed::fuzz::CountingAlloc;
//!
//! testbed::fuzz::check("lengths", 256, ".*", |text: String| {
//!     let (n, peak) = testbed::fuzz::peak_memory(|| text.chars().count());
//!     prop_assert!(n <= text.len());
//!     prop_assert!(peak <= 64 + 4 * text.len() as u64);
//!     Ok(())
//! });
//! ```
//!
//! The allocator counts per thread (the code under test is single
//! threaded), so cases running in parallel test threads do not disturb one
//! another's figures.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngAlgorithm, RngSeed, TestCaseError, TestRunner};

thread_local! {
    /// Bytes this thread holds now (allocated minus freed by it).
    static LIVE: Cell<i64> = const { Cell::new(0) };
    /// The most [`LIVE`] reached since the last [`peak_memory`] began.
    static PEAK: Cell<i64> = const { Cell::new(0) };
}

/// The system allocator, counting what each thread allocates.
#[derive(Clone, Copy, Debug, Default)]
pub struct CountingAlloc;

fn count(delta: i64) {
    // During a thread's teardown the counters may be gone; nothing is
    // measured then.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

fn size(layout: Layout) -> i64 {
    i64::try_from(layout.size()).unwrap_or(i64::MAX)
}

// SAFETY: every method forwards to `System` unchanged; the counting only
// touches const-initialized thread-locals, which never allocate.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(size(layout));
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-size(layout));
        // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(size(layout));
        // SAFETY: the caller upholds `GlobalAlloc::alloc_zeroed`'s contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(i64::try_from(new_size).unwrap_or(i64::MAX) - size(layout));
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// The memory (in bytes) this thread holds now: what it allocated less
/// what it freed. Only meaningful when [`CountingAlloc`] is the global
/// allocator; 0 otherwise.
pub fn held_memory() -> i64 {
    LIVE.with(Cell::get)
}

/// Runs `f` and returns its result with the most memory (in bytes) this
/// thread held at once while it ran, above what it held before. Only
/// meaningful when [`CountingAlloc`] is the global allocator; 0 otherwise.
pub fn peak_memory<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let result = f();
    let peak = PEAK.with(Cell::get);
    (result, u64::try_from(peak - base).unwrap_or(0))
}

/// Aborts the process, printing the case at hand, when one case runs for
/// longer than its limit. A hang in a property test otherwise shows only
/// as a test run that never ends.
#[derive(Debug)]
pub struct Watchdog {
    state: Arc<Mutex<Option<(Instant, String)>>>,
    cases: Arc<AtomicU64>,
}

impl Watchdog {
    /// Starts the watchdog's thread; it lives as long as the process.
    pub fn start(limit: Duration) -> Watchdog {
        let state: Arc<Mutex<Option<(Instant, String)>>> = Arc::new(Mutex::new(None));
        let watched = Arc::clone(&state);
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(250));
                let Ok(current) = watched.lock() else { return };
                if let Some((since, input)) = current.as_ref()
                    && since.elapsed() > limit
                {
                    eprintln!("a fuzz case ran for more than {limit:?} (a hang?); its input:\n{input}");
                    std::process::abort();
                }
            }
        });
        Watchdog { state, cases: Arc::new(AtomicU64::new(0)) }
    }

    /// Runs one case, watched; `input` is what is printed if it hangs.
    pub fn case<R>(&self, input: &str, f: impl FnOnce() -> R) -> R {
        let mut shown = input.to_owned();
        if shown.len() > 64 * 1024 {
            let mut end = 64 * 1024;
            while !shown.is_char_boundary(end) {
                end -= 1;
            }
            shown.truncate(end);
            shown.push_str("\n... (cut)");
        }
        if let Ok(mut s) = self.state.lock() {
            *s = Some((Instant::now(), shown));
        }
        let result = f();
        if let Ok(mut s) = self.state.lock() {
            *s = None;
        }
        self.cases.fetch_add(1, Ordering::Relaxed);
        result
    }

    /// How many cases ran.
    pub fn cases(&self) -> u64 {
        self.cases.load(Ordering::Relaxed)
    }
}

/// The seed of every harness: the cases are the same on every run, so a
/// failure in CI is a failure locally.
pub const SEED: u64 = 0x5afe_5a17;

/// How long one case may run before the watchdog aborts the process. A
/// case takes milliseconds; this only catches hangs, on a loaded machine.
pub const CASE_LIMIT: Duration = Duration::from_secs(60);

/// Runs the property `test` on `cases` inputs drawn from `strategy` with
/// the fixed [`SEED`], each under a [`Watchdog`], and panics with the
/// (shrunk) failing input when one fails. Prints how many cases ran and
/// how long they took.
pub fn check<S>(name: &str, cases: u32, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: Debug,
{
    let config = Config {
        cases,
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: RngSeed::Fixed(SEED),
        failure_persistence: None,
        max_shrink_iters: 256,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let watchdog = Watchdog::start(CASE_LIMIT);
    let started = Instant::now();
    let result = runner.run(&strategy, |input| {
        let shown = format!("{input:?}");
        watchdog.case(&shown, || test(input))
    });
    eprintln!("{name}: {} cases (shrinking included) in {:.2?}", watchdog.cases(), started.elapsed());
    if let Err(err) = result {
        panic!("{name}: {err}");
    }
}

/// One of the strings of `list`, as a strategy for generators that build
/// inputs from known pieces.
pub fn select(list: &'static [&'static str]) -> impl Strategy<Value = String> + Clone {
    proptest::sample::select(list).prop_map(str::to_owned)
}

/// Set in the process [`alone`] starts, to the name of the test it runs.
const ALONE: &str = "TESTBED_ALONE";

/// Runs the calling test `test` (its name as the harness prints it,
/// [`test_name!`](crate::test_name)) again in a process of its own: this
/// test binary, filtered to that one test. Returns `true` in that process,
/// where the test goes on; in the calling one it waits for the run, panics
/// when it failed, and returns `false`.
///
/// For tests whose figures depend on the whole process: the peak memory
/// Linux reports for a child (`ru_maxrss`) includes the high-water mark of
/// the process that started it (carried across the child's exec), and
/// beside the other tests of a binary that process holds their memory too.
pub fn alone(test: &str) -> bool {
    if std::env::var_os(ALONE).is_some_and(|v| v == test) {
        return true;
    }
    let exe = std::env::current_exe().unwrap_or_else(|err| panic!("{test}: this test binary: {err}"));
    let out = std::process::Command::new(&exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(ALONE, test)
        .output()
        .unwrap_or_else(|err| panic!("{test}: running {} again: {err}", exe.display()));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprint!("{stdout}{stderr}");
    assert!(out.status.success(), "{test} failed in a process of its own ({})", out.status);
    assert!(stdout.contains("test result: ok. 1 passed"), "{test} did not run in a process of its own:\n{stdout}");
    false
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_passes_results_through_and_counts() {
        let w = Watchdog::start(Duration::from_secs(60));
        assert_eq!(w.case("input", || 7), 7);
        assert_eq!(w.cases(), 1);
    }
}
