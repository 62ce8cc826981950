//! The live side of safe-switch on nix-darwin: launchd's state read
//! through `launchctl`, the activation script without its launchd steps,
//! and the executor that carries a [`launchd_plan::LaunchdPlan`] out.
//!
//! - [`Launchd`] is the narrow view of launchd: one `launchctl` command
//!   and how it ended. [`LaunchctlProgram`] runs the real program
//!   (`/bin/launchctl`, or the launchd simulator of the `testbed` crate in
//!   tests); [`print`] and the executor read launchctl's exit codes.
//! - [`read_live`] reads the state a plan needs: `launchctl print` of each
//!   label the generations name, in its domain.
//! - [`activation::cut`] takes nix-darwin's launchd sections out of
//!   `activate`, found by their markers, and refuses a script whose
//!   markers are not where nix-darwin puts them.
//! - [`Machine`] is the rest of the Mac (the installed plists, the
//!   activation script, `/run/current-system`, the profile), with
//!   [`DarwinHost`] doing it below a root directory.
//! - [`apply`] and [`resume`] carry a plan out step by step, recording
//!   progress, and check jobs and protected jobs afterwards.
//!
//! Architecture Invariant: the executor decides how to carry a plan out,
//! never what to do to a job: it runs exactly the operations
//! [`launchd_plan::operations`] lists. Only `launchctl.rs`, `host.rs` and
//! the executor's progress file touch the machine.

#![warn(missing_docs)]

pub mod activation;
mod error;
mod executor;
mod host;
mod launchctl;
mod read;

pub use error::Error;
pub use executor::{
    JobFailure, JobState, Options, Progress, ProgressFile, ProtectedCheck, Report, Show, Stderr, Step, StepRecord,
    StepState, apply, protected_running, resume, steps,
};
pub use host::{Account, CURRENT_SYSTEM, CURRENT_SYSTEM_GCROOT, DarwinHost, Machine, SYSTEM_PROFILE, account, below};
pub use launchctl::{
    CallOutput, DEFAULT_LAUNCHCTL, IN_PROGRESS, IO_ERROR, LaunchctlProgram, Launchd, NO_SUCH_PROCESS, NOT_LOADED,
    NOW_IN_PROGRESS, call, command, print, target,
};
pub use read::{Reading, read_live};
