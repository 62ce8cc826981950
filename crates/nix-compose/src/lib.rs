//! Composing a machine's base system flake with a project's overlay, and
//! building the result with Nix, without activating anything.
//!
//! A CI runner's base configuration lives at a fixed place (`/etc/nixos`, a
//! registry alias); a project brings an overlay flake whose module adds what
//! its jobs need. The two are joined by a generated wrapper flake
//! ([`wrapper`]) whose inputs are overridden at run time, so the base keeps
//! its own inputs (nixpkgs and other pins) whatever the overlay pins, and no
//! `flake.lock` is written into either flake.
//!
//! - NixOS and nix-darwin: `base.<configs>.<host>.extendModules { modules =
//!   [ overlay.<modules>.<module> ]; }`, then `config.system.build.toplevel`.
//! - system-manager, whose configurations do not expose `extendModules`:
//!   the base exports its module list as `systemManagerModules.<host>`
//!   (optionally `systemManagerArgs.<host>` for the other arguments of
//!   `makeSystemConfig`) and has an input named `system-manager`; the
//!   wrapper calls `base.inputs.system-manager.lib.makeSystemConfig` with the
//!   base's modules plus the overlay's.
//! - `REF#attr`: a complete configuration (built through its
//!   `config.system.build.toplevel`) or a toplevel derivation.
//!
//! Architecture Invariant: the wrapper text is a pure function of the
//! request ([`WrapperSpec::render`]); every call to Nix goes through the
//! [`NixRunner`] trait, so the decisions here are tested with a fake and
//! the real Nix is exercised by the integration tests.

mod compose;
mod error;
pub mod parse;
mod runner;
mod setup;
pub mod wrapper;

pub use compose::{AttrRequest, Built, ComposeRequest, Composer, Request, local_dir, split_attr_path};
pub use error::{ComposeError, NixError, is_flakes_unsupported};
pub use runner::{NixCommand, NixOutput, NixRunner, StderrMode, starts_error_report, strip_ansi};
pub use setup::NixSetup;
pub use wrapper::{Platform, WrapperSpec, nix_string};
