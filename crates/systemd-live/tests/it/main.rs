//! The integration tests of `systemd-live`, one test binary
//! (`cargo test -p systemd-live --test it`).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail by panicking")]

// The zbus adapter against a real systemd in a test bed.
mod live_snapshot;
