//! Integration tests of launchd-live.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail by panicking")]

mod activation;
