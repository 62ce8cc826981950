//! The integration tests of `plan-model`, one test binary
//! (`cargo test -p plan-model --test it`).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail by panicking")]

/// Counts what each thread allocates, for the property tests' memory
/// bounds (`testbed::fuzz::peak_memory`).
#[global_allocator]
static ALLOC: testbed::fuzz::CountingAlloc = testbed::fuzz::CountingAlloc;

mod fuzz_inputs;
