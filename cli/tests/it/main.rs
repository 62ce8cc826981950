//! The integration tests of the `safe-switch` binary, one test binary
//! (`cargo test -p safe-switch --test it`; one module:
//! `cargo test -p safe-switch --test it golden`). Each module runs the
//! binary built by this package; what they share is in [`support`].
//!
//! Tests that boot a test bed or run the real `nix` start with
//! `testbed::require!`: under `CI=true` they fail when they cannot run,
//! elsewhere they skip with a message. They run in parallel like the
//! others: each bed is a namespace of its own.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail by panicking")]

/// Counts what each thread allocates, for the property tests' memory
/// bounds (`testbed::fuzz::peak_memory`).
#[global_allocator]
static ALLOC: testbed::fuzz::CountingAlloc = testbed::fuzz::CountingAlloc;

mod support;

mod apply_saved;
mod closure_diff;
mod darwin_apply;
mod darwin_diff;
mod darwin_pending;
mod darwin_switch;
mod dbus_timeout;
mod demo;
mod e2e_switch;
mod fleet_ansible;
mod foreign_files;
mod fuzz_pipeline;
mod golden;
mod live_calls;
mod live_observe;
mod live_settle;
mod live_switch;
mod manual;
mod nix_source;
mod packages_in_plan;
mod policy_cli;
mod report_check;
mod report_cli;
mod report_formats;
mod report_merge;
mod report_openmetrics;
mod report_schema_doc;
mod scale_switch;
mod system_manager;
mod tidy;
