//! A throwaway systemd, D-Bus and sshd for end-to-end tests of
//! safe-switch, and the NixOS-like generations they switch between.
//!
//! # The pieces
//!
//! - [`Generation`]: describes a NixOS-like system toplevel (units,
//!   drop-ins, wants links, `init-interface-version`, an `activate` that
//!   moves `/etc/systemd/system` and `/run/current-system`) and writes it.
//! - [`TestBed`]: boots a real systemd (the distribution's) as PID 1 of new
//!   PID and mount namespaces, with one generation as
//!   `/run/current-system`, a D-Bus system bus and, when the generation
//!   asks for it ([`Generation::sshd`]), a real sshd on a free loopback
//!   port. It is driven from the host with `nsenter`
//!   ([`TestBed::systemctl`], [`TestBed::run`], [`TestBed::command`]) or
//!   over D-Bus ([`TestBed::dbus_address`]). Dropping it kills the
//!   namespace's PID 1 (and thereby every process in it) and removes its
//!   files and cgroups.
//! - [`SshSession`]: a real SSH session into the bed that prints a tick
//!   every interval, to show that a switch did not interrupt it.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use testbed::{Config, Generation, TestBed};
//!
//! # fn main() -> Result<(), testbed::Error> {
//! if !testbed::available("example") { return Ok(()); }
//! let a = Generation::new("a")
//!     .sshd()
//!     .service("job.service", "[Service]\nExecStart=/bin/sleep infinity\n");
//! let bed = TestBed::boot(&Config::new(a.clone()))?;
//! let b = bed.build_generation(&a.renamed("b").without("job.service"))?;
//! let session = bed.ssh_session(Duration::from_millis(200))?;
//! let before = bed.main_pid("sshd.service")?;
//! // ... switch to `b` inside the bed, e.g.
//! // bed.command("/path/to/safe-switch").args(["switch", "--toplevel"]).arg(&b) ...
//! assert_eq!(bed.main_pid("sshd.service")?, before);
//! let report = session.finish();
//! assert!(report.consecutive() && report.alive_at_end);
//! # Ok(()) }
//! ```
//!
//! # Requirements
//!
//! Root, Linux namespaces, and the Debian packages `systemd`, `dbus`,
//! `openssh-server`, `openssh-client` and `util-linux` (`scripts/deps`
//! installs them). Tests call [`available`] first: it skips with a message
//! when the machine cannot host a bed, and fails under `CI=true`.

mod bed;
mod error;
pub mod example;
pub mod exec;
mod generation;
mod ssh;

pub use bed::{
    BASE_UNITS, Config, JOURNAL_UNITS, LOGIND_UNITS, TestBed, UnitState, available,
    unsupported_reason,
};
pub use error::{Error, Result};
pub use exec::Output;
pub use generation::{
    BuildContext, DEFAULT_SYSTEM_CONF, Generation, INIT_INTERFACE_VERSION, SSHD_UNIT, SshdSettings,
};
pub use ssh::{SessionReport, SshKeys, SshSession, Tick, free_port, ssh_command};
