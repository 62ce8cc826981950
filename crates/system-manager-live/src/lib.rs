//! The live side of safe-switch on hosts managed by numtide's
//! system-manager (systemd on a distribution that is not NixOS).
//!
//! The units are systemd's, so a switch is planned by `systemd-plan` and
//! its unit actions are carried out by `systemd-live`'s executor, in
//! system-manager's order ([`plan_model::Phase::SYSTEM_MANAGER_ORDER`]).
//! What this crate adds is the rest of system-manager's activation:
//!
//! - [`state`]: system-manager's state file
//!   (`/var/lib/system-manager/state/system-manager-state.json`), read
//!   (version 1 only, bounded) and written as the engine writes it
//!   (atomically), and the services map a switch leaves in it: a unit
//!   whose actions were deferred keeps its entry from before, so that a
//!   later activation still sees it as changed;
//! - [`SystemManagerHost`], the executor's [`systemd_live::Host`] on such
//!   a host: the generation's own engine wrappers (`bin/preActivationAssertions`,
//!   `bin/register-profile`, `bin/prepopulate`), `systemd-tmpfiles` on the
//!   generation's rules, `systemctl mask`, and the state file.
//!
//! Architecture Invariant: nothing here decides what to do to a unit; the
//! plan says it. Only `host.rs` runs programs, and only `state.rs` and
//! `host.rs` touch files.

#![warn(missing_docs)]

mod error;
mod host;
pub mod state;

pub use error::Error;
pub use host::{PROFILE, SystemManagerHost, below, kept_after, kept_until_acted};
pub use state::{STATE_FILE, State};
