//! The `check` subcommand.

use crate::args;
use crate::exit::Outcome;

/// Runs `check`.
pub fn run(_args: args::CheckArgs) -> anyhow::Result<Outcome> {
    anyhow::bail!("`check` is not available in this build yet")
}
