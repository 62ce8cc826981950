//! Where a generation came from: a prebuilt toplevel, a flake attribute, or
//! a base configuration extended with an overlay's module.
//!
//! A plan records this so that a reader can tell exactly what was built
//! (which revisions of which flakes, through which generated wrapper flake),
//! and so that a saved plan can be recognised as stale when the base moved.

use serde::{Deserialize, Serialize};

/// How the new generation was obtained.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Provenance {
    /// A prebuilt toplevel given with `--toplevel`.
    Toplevel {
        /// The path as given on the command line.
        given: String,
    },
    /// A complete configuration named with `--flake REF#attr`.
    FlakeAttr {
        /// The flake that holds the configuration.
        flake: FlakeInput,
        /// The attribute as given after `#`.
        attr: String,
        /// The attribute path that was built, relative to the flake's
        /// outputs (e.g. `nixosConfigurations.vm.config.system.build.toplevel`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        built: Option<String>,
        /// The generated wrapper flake's text.
        wrapper: String,
    },
    /// A base configuration extended with an overlay flake's module.
    Composed {
        /// The base flake (`--base`).
        base: FlakeInput,
        /// The overlay flake (`--flake`).
        overlay: FlakeInput,
        /// The kind of system: `nixos`, `darwin` or `system-manager`.
        platform: String,
        /// The base configuration that was extended.
        host: String,
        /// The overlay's module that was added (`--module`).
        module: String,
        /// The generated wrapper flake's text.
        wrapper: String,
    },
}

/// One flake as it was resolved for a build.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlakeInput {
    /// The reference as given (command line or policy file).
    #[serde(rename = "ref")]
    pub reference: String,
    /// The locked reference Nix resolved it to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked_url: Option<String>,
    /// The revision, for flakes fetched from a version-control system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rev: Option<String>,
    /// The NAR hash of the flake's source tree (`sha256-...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nar_hash: Option<String>,
    /// The last-modified time Nix reports for the source (seconds since the
    /// epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<u64>,
}
