//! The integration tests of `closure-diff`, one test binary
//! (`cargo test -p closure-diff --test it`). The Nix stores they fill
//! are `testbed::store`'s.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail by panicking")]

// The diff: values, generated generations, closures built by Nix.
mod diff;
// Store path names and version order, golden.
mod names;
// The database reader, the `nix path-info` fallback and bad input.
mod store;

/// Options that read a test store: its database, and `nix --store` for
/// the fallback.
trait StoreOptions {
    fn options(&self) -> closure_diff::Options;
}

impl StoreOptions for testbed::store::TempStore {
    fn options(&self) -> closure_diff::Options {
        closure_diff::Options {
            db_path: self.db_path(),
            store_uri: Some(self.uri()),
            ..closure_diff::Options::default()
        }
    }
}
