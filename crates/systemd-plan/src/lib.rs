//! The offline systemd planner: what switching from one NixOS generation to
//! another does to systemd units, computed as a value.
//!
//! # Overview
//!
//! - [`load`] reads a generation directory (a system toplevel) into a
//!   [`GenerationUnits`]: every unit in `etc/systemd/system` merged with
//!   its drop-ins, the `.wants`/`.requires` links, `etc/fstab`,
//!   `system.conf`, the systemd binary, `init-interface-version` and the
//!   activation script.
//! - [`plan`] compares two generations against a [`LiveState`] and returns a
//!   [`Plan`]: per unit the actions (stop, reload, restart, start, skip),
//!   the rules that fired and the unit-file keys that changed, plus the
//!   global steps (swapoff, activation, re-exec, daemon-reload,
//!   `sysinit-reactivation.target`), and what only a reboot brings
//!   ([`reboot`]: a new kernel, initrd or kernel modules, another D-Bus
//!   implementation or init interface, a declared reboot).
//!
//! The rules are those of NixOS's `switch-to-configuration`; where that
//! program misreads a unit file, this crate follows what systemd itself
//! reads, and the difference is documented in `tests/golden/README.md`
//! next to a golden case that shows it.
//!
//! # Reading units
//!
//! The unit API is stable and meant for other analyses (the protection
//! analysis extracts dependency relations from it):
//!
//! ```no_run
//! # fn main() -> Result<(), systemd_plan::LoadError> {
//! let generation = systemd_plan::load(std::path::Path::new("/run/current-system"))?;
//! for name in generation.unit_names() {
//!     let unit = generation.unit(name).expect("listed names resolve");
//!     let requires: Vec<&str> = unit.words("Unit", "Requires");
//!     let part_of: Vec<&str> = unit.values("Unit", "PartOf").to_vec();
//!     let refuse = unit.bool_or("Unit", "RefuseManualStop", false);
//!     # let _ = (requires, part_of, refuse);
//! }
//! // Instances fall back to their template (with the template's drop-ins).
//! let getty = generation.unit("getty@tty1.service");
//! # let _ = getty;
//! # Ok(()) }
//! ```
//!
//! - [`GenerationUnits::unit`] returns the merged [`UnitFile`] for a name
//!   ([`GenerationUnits::unit_with_name`] with the name it was found
//!   under: an instance's template's, when it falls back to it),
//!   [`GenerationUnits::unit_names`] / [`GenerationUnits::units`] iterate
//!   over all of them, [`GenerationUnits::linked`] lists `<unit>.wants/`.
//!   A unit knows which of its files are its fragment and drop-ins
//!   ([`UnitFile::fragment`], [`UnitFile::drop_ins`]) by name, relative to
//!   the unit directory, and keeps their texts.
//! - [`UnitFile::values`] returns every value of a key after resets,
//!   [`UnitFile::get`] the last one, [`UnitFile::words`] the
//!   whitespace-separated words of a list setting, and
//!   [`UnitFile::get_bool`] / [`UnitFile::bool_or`] a boolean as systemd
//!   parses it.
//!
//! # Live state
//!
//! The planner looks at the live state only to know which units are active
//! and where they were loaded from. [`assumed_live_state`] builds the state
//! used when none is given: every non-template, unmasked unit of the old
//! generation active and loaded from `/etc/systemd/system`.
//!
//! Architecture Invariant: the planner does no D-Bus and spawns no
//! processes. The file system is read only in the [`loader`] module;
//! [`plan`] is a pure function of its arguments, so the same inputs always
//! give the same plan, byte for byte.

pub mod compare;
pub mod diffs;
pub mod fstab;
pub mod generation;
pub mod loader;
pub mod planner;
pub mod protect;
pub mod reboot;
pub mod unit_file;

pub use compare::{Comparison, Needs, compare_units};
pub use diffs::unit_diffs;
pub use generation::{Boot, FileIdentity, GenerationUnits, ManagedUnit, ModuleRelease, ModuleTree, Units, module_name};
pub use loader::{Layout, LoadError, load, load_pair, unit_directory};
pub use plan_model::{LiveState, Plan};
pub use planner::{assumed_live_state, plan};
pub use unit_file::{DropIn, Fragment, ParseError, Section, Settings, UnitFile, Values};
