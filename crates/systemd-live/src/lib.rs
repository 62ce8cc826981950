//! The live side of safe-switch on systemd: reading the service manager's
//! state and carrying out a [`plan_model::Plan`] on a running host.
//!
//! The crate has three layers:
//!
//! - [`ServiceManager`] is the narrow, domain-shaped view of systemd that
//!   the rest of the crate needs: a snapshot, jobs queued and awaited as a
//!   batch, daemon-reload and re-exec, unit status, transient units.
//!   [`SystemdBus`] implements it over D-Bus with zbus; a recording fake
//!   (feature `fake`) implements it in memory for tests.
//! - [`RunDir`] owns `/run/safe-switch/`: the exclusive lock and the
//!   persisted progress of an apply, so that an interrupted apply can say
//!   where it stopped and be resumed, the record of deferred actions still
//!   pending, and every other file kept there.
//! - [`apply`] (the executor) carries out a plan phase by phase, exactly as
//!   listed, checks job results and protected units, and returns an
//!   [`ApplyReport`].
//!
//! Architecture Invariant: zbus types never leave the `dbus` module. The
//! executor makes no decision about *what* to do to a unit; that is the
//! planner's job. It only decides *how* to carry the plan out.

mod dbus;
mod error;
mod executor;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
mod manager;
mod rundir;
mod search_path;

pub use dbus::{DEFAULT_CALL_TIMEOUT, SystemdBus};
pub use error::Error;
pub use executor::{
    ApplyOptions, ApplyReport, Host, JobRecord, LeftUnit, PhaseRecord, ProcessHost, Progress, ProtectedCheck,
    StderrProgress, UnitFailure, apply, remaining, resume, tee,
};
pub use manager::{
    Dependencies, Idleness, JobKind, JobOutcome, JobResult, ServiceManager, TransientExit, TransientSpec, UnitProcess,
    UnitStatus, WatchedJobs,
};
pub use rundir::{
    DEFAULT_RUN_DIR, Interrupted, LOG_KEEP, LockGuard, LogFile, PersistedJob, PhaseState, ProgressFile, RunDir,
    phase_name,
};
