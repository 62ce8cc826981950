//! The `diff` subcommand.

use crate::args;
use crate::exit::Outcome;

/// Runs `diff`.
pub fn run(_args: args::DiffArgs) -> anyhow::Result<Outcome> {
    anyhow::bail!("`diff` is not available in this build yet")
}
