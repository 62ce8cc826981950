//! The integration tests of `launchd-plan`, one test binary
//! (`cargo test -p launchd-plan --test it`): fixture generations planned
//! and rendered as `launchctl` operations, compared with insta snapshots.
//!
//! Each directory under `tests/fixtures/<case>` holds an `old` and a `new`
//! generation toplevel (`Library/LaunchDaemons`, `Library/LaunchAgents`,
//! `user/Library/LaunchAgents`, `etc/nix`), a `live.json` launchd snapshot
//! and optionally a `policy.json` (`{"mode": "defer", "protect": [...]}`).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail by panicking")]

// Fixture walk: plan and operations snapshots for every case.
mod fixtures;
// Properties checked directly on the values, beyond the snapshots.
mod properties;
// House rules for this crate's files.
mod tidy;
