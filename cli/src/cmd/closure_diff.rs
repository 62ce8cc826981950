//! The `closure_diff` subcommand.

use crate::args;
use crate::exit::Outcome;

/// Runs `closure_diff`.
pub fn run(_args: args::ClosureDiffArgs) -> anyhow::Result<Outcome> {
    anyhow::bail!("`closure_diff` is not available in this build yet")
}
