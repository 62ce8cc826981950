//! The integration tests of `nix-compose`, one test binary
//! (`cargo test -p nix-compose --test it`). The fixture flakes are in
//! `tests/fixtures`; `testbed::flakes` copies them for each test.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail by panicking")]

// Composition and builds with the real `nix`, offline.
mod nix_compose;
// The generated wrapper flakes, golden.
mod wrapper_golden;
