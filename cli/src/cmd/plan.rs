//! The `plan` subcommand.

use crate::args;
use crate::exit::Outcome;

/// Runs `plan`.
pub fn run(_args: args::PlanArgs) -> anyhow::Result<Outcome> {
    anyhow::bail!("`plan` is not available in this build yet")
}
