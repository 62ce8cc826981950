//! The integration tests of `systemd-plan`, one test binary
//! (`cargo test -p systemd-plan --test it`).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail by panicking")]

/// Counts what each thread allocates, for the property tests' memory
/// bounds (`testbed::fuzz::peak_memory`).
#[global_allocator]
static ALLOC: testbed::fuzz::CountingAlloc = testbed::fuzz::CountingAlloc;

// Unit files and fstab, fuzzed.
mod fuzz_inputs;
// What a loaded pair of generations holds.
mod heap;
// The protection analysis's propagation model against a real systemd.
mod protect_real_systemd;
