//! The shared model of safe-switch: what a planner is given and what it
//! returns.
//!
//! Planners (`systemd-plan`, `launchd-plan`) are pure functions from an old
//! generation, a new generation, a [`LiveState`] and a protection policy to a
//! [`Plan`]. Executors (`systemd-live`) carry a [`Plan`] out; reports (the
//! `safe-switch` binary) render it. This crate holds only those values and
//! the small amount of logic that is a property of the values themselves
//! (ordering, phase lists, unit-name helpers).
//!
//! Architecture Invariant: this crate does no IO. Serialization is part of
//! its contract: the JSON form of [`Plan`] is a documented, versioned schema
//! (`docs/plan-schema.md`), so fields are added, never renamed.

#![warn(missing_docs)]

mod applied;
mod boot;
pub mod json;
mod live;
pub mod observe;
pub mod packages;
mod pending;
mod plan;
pub mod policy;
mod source;
pub mod unit_name;

pub use applied::{
    ApplyReport, JobKind, JobRecord, JobResult, LeftUnit, LogTail, PhaseRecord, ProtectedCheck, UnitFailure, UnitStatus,
};
pub use boot::{KernelModule, ModuleChange, ModuleUse, Reboot, RebootReason};
pub use live::{
    ActiveState, DEPENDENCY_PROPERTIES, LiveState, LiveUnit, LoadedModule, is_kernel_release, is_module_name,
    is_module_version,
};
pub use pending::{Earlier, Fate, Manager, Merged, PENDING_FORMAT_VERSION, Pending, PendingDeferral, PendingError};
pub use plan::{
    Action, CHAIN_ENDS, Consequence, Deferral, Diagnostic, Edge, Explanation, FORMAT_VERSION, FileDiff, Generation,
    KeyChange, Mode, Phase, Plan, ProtectedUnit, Protection, ProtectionSource, Reason, Refusal, Rule, Severity, Step,
    Touch, UnitPlan,
};
pub use source::{FlakeInput, Provenance};
