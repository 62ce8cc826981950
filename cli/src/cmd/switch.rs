//! The `switch` subcommand.

use crate::args;
use crate::exit::Outcome;

/// Runs `switch`.
pub fn run(_args: args::SwitchArgs) -> anyhow::Result<Outcome> {
    anyhow::bail!("`switch` is not available in this build yet")
}
