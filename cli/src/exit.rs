//! Exit codes, in one place.
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | done, or the plan is safe |
//! | 1 | error: nothing was changed unless the message says otherwise |
//! | 2 | usage error |
//! | 3 | refused or blocked: something would touch a protected unit |
//! | 4 | applied, but units failed because of it, or a protected unit was disturbed |

use std::process::ExitCode;

/// The outcome of a command that did not fail outright.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done, or the plan is safe.
    Ok,
    /// Refused or blocked by protection.
    Blocked,
    /// Applied, but some units failed or a protected unit was disturbed.
    UnitsFailed,
}

/// Exit code for a successful run.
pub const OK: u8 = 0;
/// Exit code for an error.
pub const ERROR: u8 = 1;
/// Exit code for a usage error (also what clap uses).
pub const USAGE: u8 = 2;
/// Exit code for a refused or blocked switch.
pub const BLOCKED: u8 = 3;
/// Exit code for an applied switch in which units failed.
pub const UNITS_FAILED: u8 = 4;

impl Outcome {
    /// The process exit code for this outcome.
    pub fn code(self) -> u8 {
        match self {
            Outcome::Ok => OK,
            Outcome::Blocked => BLOCKED,
            Outcome::UnitsFailed => UNITS_FAILED,
        }
    }
}

/// A command line that asks for something impossible (a `--protect` name
/// that matches no unit, a missing source): exit code 2, as clap's own
/// usage errors, and nothing is changed.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Returns a usage error (exit code 2) with this message.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(message.into()))
}

/// The exit code for an error: [`USAGE`] for a [`UsageError`] anywhere in
/// its chain, [`ERROR`] otherwise.
pub fn error_code(err: &anyhow::Error) -> u8 {
    if err.chain().any(|e| e.downcast_ref::<UsageError>().is_some()) { USAGE } else { ERROR }
}

impl From<Outcome> for ExitCode {
    fn from(o: Outcome) -> ExitCode {
        ExitCode::from(o.code())
    }
}

/// The text appended to `--help`.
pub const HELP: &str = "\
Exit codes:
  0  done, or the plan is safe
  1  error (nothing was changed unless the message says otherwise)
  2  usage error
  3  refused or blocked: something would touch a protected unit
  4  applied, but units failed because of it (units failed before that it did
     not act on are listed apart), or a protected unit was disturbed";
