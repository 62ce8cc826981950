//! The `apply` subcommand.

use crate::args;
use crate::exit::Outcome;

/// Runs `apply`.
pub fn run(_args: args::ApplyArgs) -> anyhow::Result<Outcome> {
    anyhow::bail!("`apply` is not available in this build yet")
}
