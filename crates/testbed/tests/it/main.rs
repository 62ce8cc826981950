//! The integration tests of `testbed`, one test binary
//! (`cargo test -p testbed --test it`): the bed itself, the bundled
//! examples, and `scripts/test`.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail by panicking")]

mod bed;
mod examples;
mod test_script;
