//! The `safe-switch` binary: parses the command line and hands over to the
//! library, which owns every decision, including the exit code.

fn main() -> std::process::ExitCode {
    malloc_arenas();
    safe_switch_cli::main()
}

/// Keeps the allocations of all threads in two malloc arenas. glibc gives
/// a thread that allocates while another holds the lock an arena of its
/// own, up to eight per core, and each arena keeps its high-water mark:
/// with the generations read on several threads and the bus on another, a
/// plan kept more than it uses (1.3 MiB at 2,000 units before the heap
/// was made smaller). One arena saves a little more memory but makes the
/// threads that read the generations wait for each other (2 ms of a 21-ms
/// plan at 500 units); two keep most of the saving (6.2 against 6.0 and
/// 6.4 MiB at 500 units) at no cost in time.
///
/// `MALLOC_ARENA_MAX` in the environment, read by glibc itself, still
/// decides.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    // SAFETY: `mallopt` only sets a tunable of the allocator, and this
    // runs first in `main`, before any thread is started.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn malloc_arenas() {}
