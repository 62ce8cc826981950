//! Typed errors. Each names the flake, attribute or command involved, and
//! those that come from a failing `nix` carry Nix's own report verbatim
//! under a one-line summary of what safe-switch was doing.

use std::path::PathBuf;

use crate::setup::{NixSetup, report_with_setup};

/// `nix` could not be run at all.
#[derive(Debug, thiserror::Error)]
pub enum NixError {
    /// The program is not installed (or not on `PATH`).
    #[error(
        "`{}` was not found: install Nix (Debian: `apt-get install nix-bin`) or put it on PATH",
        program.display()
    )]
    NotFound {
        /// The program that was looked for.
        program: PathBuf,
    },
    /// The program exists but could not be started or waited for.
    #[error("could not run `{}`", program.display())]
    Spawn {
        /// The program.
        program: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Everything that can go wrong while composing and building.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    /// `nix` could not be run.
    #[error(transparent)]
    Nix(#[from] NixError),

    /// This Nix does not support flakes or the `nix` command line.
    #[error(
        "this Nix does not support flakes and the `nix` command (they need Nix 2.4 or \
         later with `experimental-features = nix-command flakes`)\n{stderr}"
    )]
    FlakesUnsupported {
        /// Nix's report.
        stderr: String,
    },

    /// A local flake reference names a path that is not there, or that
    /// holds no `flake.nix`.
    #[error("the {role} flake `{reference}` does not exist: {detail}")]
    FlakeNotFound {
        /// `base`, `overlay` or `flake`.
        role: &'static str,
        /// The reference as given.
        reference: String,
        /// What is missing.
        detail: String,
    },

    /// Nix could not fetch or lock one of the flakes.
    #[error("could not fetch and lock {what}\n{}", report_with_setup(stderr))]
    Lock {
        /// Which flakes, by reference.
        what: String,
        /// Nix's report, verbatim.
        stderr: String,
    },

    /// The base flake has none of the configurations asked for.
    #[error(
        "the base flake `{base}` has no {output}.{} (available: {})",
        tried.join(" or "),
        list_or_none(available)
    )]
    MissingConfiguration {
        /// The base reference.
        base: String,
        /// The output looked in (`nixosConfigurations`, ...).
        output: &'static str,
        /// The names tried, in order.
        tried: Vec<String>,
        /// The names the base has.
        available: Vec<String>,
    },

    /// The base's configuration cannot be extended with `extendModules`.
    #[error(
        "the base flake's {output}.{host} in `{base}` has no `extendModules`: it is not a \
         configuration made by `lib.evalModules` (nixosSystem, darwinSystem)"
    )]
    NotExtendable {
        /// The base reference.
        base: String,
        /// The output (`nixosConfigurations`, `darwinConfigurations`).
        output: &'static str,
        /// The configuration.
        host: String,
    },

    /// A system-manager base does not follow the composition convention.
    #[error(
        "the base flake `{base}` does not follow safe-switch's system-manager convention: {problem}. \
         A system-manager base must export its module list as `systemManagerModules.<host>` \
         and have an input named `system-manager` (whose `lib.makeSystemConfig` builds the \
         configuration); see the README, \"Composing with system-manager\""
    )]
    SystemManagerConvention {
        /// The base reference.
        base: String,
        /// What is missing, in words.
        problem: String,
    },

    /// The overlay flake lacks the module asked for.
    #[error("the overlay flake `{overlay}` has no {output}.{module} (available: {})", list_or_none(available))]
    MissingModule {
        /// The overlay reference.
        overlay: String,
        /// The output looked in (`nixosModules`, ...).
        output: &'static str,
        /// The module asked for.
        module: String,
        /// The modules the overlay has.
        available: Vec<String>,
    },

    /// `REF#attr` names nothing in the flake.
    #[error("the flake `{flake}` has no attribute {}", tried.join(" or "))]
    MissingAttribute {
        /// The flake reference.
        flake: String,
        /// The attribute paths tried.
        tried: Vec<String>,
    },

    /// `REF#attr` names something that is neither a configuration nor a
    /// derivation.
    #[error(
        "`{flake}#{attr}` is neither a system configuration (with \
         config.system.build.toplevel) nor a derivation"
    )]
    NotAConfiguration {
        /// The flake reference.
        flake: String,
        /// The attribute path found.
        attr: String,
    },

    /// Evaluation failed.
    #[error("evaluating {what} failed\n{}", report_with_setup(stderr))]
    Eval {
        /// What was being evaluated.
        what: String,
        /// Nix's report, verbatim.
        stderr: String,
    },

    /// The build failed.
    #[error("building {what} failed\n{}", report_with_setup(stderr))]
    Build {
        /// What was being built.
        what: String,
        /// Nix's report, verbatim.
        stderr: String,
    },

    /// Nix printed something this version of safe-switch does not
    /// understand.
    #[error("unexpected output from `nix {command}`: {detail}")]
    UnexpectedOutput {
        /// The subcommand.
        command: &'static str,
        /// What was wrong with it.
        detail: String,
    },

    /// A local file operation failed (the wrapper's private directory).
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

impl ComposeError {
    /// The host's Nix set-up problem that Nix's report shows, if any
    /// (named with its fix in the message, under Nix's report).
    pub fn nix_setup(&self) -> Option<NixSetup> {
        match self {
            ComposeError::Lock { stderr, .. }
            | ComposeError::Eval { stderr, .. }
            | ComposeError::Build { stderr, .. }
            | ComposeError::FlakesUnsupported { stderr } => NixSetup::diagnose(stderr),
            _ => None,
        }
    }
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() { "none".to_owned() } else { items.join(", ") }
}

/// Whether Nix's report says that flakes or the `nix` command are not
/// available, which older Nix versions answer to `--extra-experimental-features`
/// or to the subcommands themselves.
pub fn is_flakes_unsupported(stderr: &str) -> bool {
    NixSetup::diagnose(stderr) == Some(NixSetup::ExperimentalFeatures)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn flakes_unsupported_is_recognised() {
        assert!(is_flakes_unsupported(
            "error: experimental Nix feature 'flakes' is disabled; use '--extra-experimental-features flakes' to override"
        ));
        assert!(is_flakes_unsupported("error: unrecognised flag '--extra-experimental-features'"));
        assert!(!is_flakes_unsupported("error: attribute 'x' missing"));
    }

    #[test]
    fn missing_configuration_lists_what_exists() {
        let e = ComposeError::MissingConfiguration {
            base: "/etc/nixos".into(),
            output: "nixosConfigurations",
            tried: vec!["runner1".into(), "default".into()],
            available: vec!["vm".into()],
        };
        assert_eq!(
            e.to_string(),
            "the base flake `/etc/nixos` has no nixosConfigurations.runner1 or default (available: vm)"
        );
    }
}
