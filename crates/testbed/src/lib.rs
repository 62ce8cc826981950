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
//! - [`demo`]: the demo behind `scripts/demo`.
//! - [`example`]: the demo's CI runner generations, also bundled in the
//!   repository as `examples/ci-runner/{a,b}`.
//! - [`nix`]: the offline Nix configuration of the tests, and the probe
//!   of whether Nix can build here.
//! - [`exec`]: running programs with a deadline; every wait of this crate
//!   has one, so a wedged bed fails a test instead of hanging it.
//! - [`fuzz`]: what the property tests that fuzz safe-switch's inputs
//!   share: a fixed-seed runner, a watchdog and a counting allocator.
//! - [`require!`]: the first line of a test that needs root, a bed or a
//!   Nix that builds; it skips or fails the test when the machine lacks it.
//! - [`launchd`]: a launchd simulator (a stand-in `launchctl`) and
//!   nix-darwin generations, for the nix-darwin path's tests.
//! - [`system_manager`]: generations with numtide system-manager's layout
//!   ([`Generation::system_manager`]), whose engine wrappers are stand-ins
//!   that behave as the engine's commands are documented to; a bed booted
//!   from one is a system-manager host (its profile and state file below
//!   [`system_manager::SYSTEM_MANAGER_ROOT`]).
//! - [`store`]: Nix stores in temporary directories, filled with generated
//!   closures; [`flakes`]: a private copy of the fixture flakes; [`unit`]:
//!   unit file text for test generations.
//!
//! # Inside a bed
//!
//! `/etc/systemd/system`, `/etc/systemd/system.conf` and
//! `/run/current-system` are symlinks into the current generation, which
//! its `activate` replaces, as on NixOS. `/run` is the host directory
//! [`TestBed::run_dir`], so `/run/safe-switch` and the sockets are visible
//! from the host too. The journal runs (units' output shows in
//! `systemctl status` and [`TestBed::journal`]), and so does D-Bus;
//! logind on request ([`Config::with_logind`]). Run the program under test
//! inside with [`TestBed::command`]: it then sees the bed's files and talks
//! to the bed's bus at the default address, as it would on a real host.
//!
//! Each bed has its own directory, cgroup, sshd port and keys, so tests
//! that boot beds run in parallel. A bed boots in about half a second
//! (`cargo bench -p testbed --bench boot`).
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use testbed::{Config, Generation, TestBed};
//!
//! # fn main() -> Result<(), testbed::Error> {
//! # if testbed::unsupported_reason().is_some() { return Ok(()); }
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
//! installs them). Tests start with [`require!`]`(bed)`: it skips with a
//! message when the machine cannot host a bed, and fails under `CI=true`.

mod bed;
pub mod demo;
mod error;
pub mod example;
pub mod exec;
pub mod flakes;
pub mod fuzz;
mod generation;
pub mod launchd;
pub mod nix;
pub mod require;
mod ssh;
pub mod store;
pub mod system_manager;
pub mod unit;

pub use bed::{BASE_UNITS, Config, JOURNAL_UNITS, LOGIND_UNITS, TestBed, UnitState, available, unsupported_reason};
pub use error::{Error, Result};
pub use exec::Output;
pub use generation::{BuildContext, DEFAULT_SYSTEM_CONF, Generation, INIT_INTERFACE_VERSION, SSHD_UNIT, SshdSettings};
pub use ssh::{SessionReport, SshKeys, SshSession, Tick, free_port, ssh_command};
