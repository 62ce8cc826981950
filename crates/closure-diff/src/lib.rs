//! Which packages a switch changes, and by how much: the closure diff
//! that nvd, dix and `nix store diff-closures` show, as a library.
//!
//! The crate has a pure core and a thin shell:
//!
//! - [`name`] splits store path names into package name, version and
//!   output, and [`version`] orders versions the way `nix-env` does;
//! - [`diff()`] compares two [`Closure`] values and returns a
//!   [`ClosureDiff`] (a value of `plan_model::packages`; `plan-report`
//!   renders it as text), which serialises to JSON;
//! - [`store`] resolves links such as `/run/current-system` to store paths
//!   and reads closures from Nix's database (read-only), falling back to
//!   `nix path-info` (run through nix-compose's `NixRunner`) when the
//!   database cannot be used.
//!
//! Architecture Invariant: `name`, `version` and `diff` do no
//! I/O; only `store`, `db` and `path_info` touch the file system or run
//! programs, and nothing in the crate ever writes to the store or its
//! database.
//!
//! ```no_run
//! use closure_diff::{Options, diff_store_paths};
//! let options = Options::default();
//! let d = diff_store_paths(
//!     "/run/current-system".as_ref(),
//!     "./result".as_ref(),
//!     &options,
//! )?;
//! println!("{} paths added", d.paths_added);
//! # Ok::<(), closure_diff::Error>(())
//! ```

pub mod closure;
pub mod db;
pub mod diff;
pub mod name;
pub mod path_info;
pub mod store;
pub mod version;

pub use closure::{Closure, PathInfo, Source};
pub use diff::{ClosureDiff, ClosureSummary, Package, Rebuilt, VersionChange, diff};
pub use store::{
    Error, Options, SourcePolicy, diff_store_paths, diff_store_paths_with, read_closure, read_closure_with,
    resolve_store_path,
};
pub use version::Direction;
