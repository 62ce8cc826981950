//! Exit codes, in one place.
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | done, or the plan is safe |
//! | 1 | error: nothing was changed unless the message says otherwise |
//! | 2 | usage error |
//! | 3 | refused or blocked: something would touch a protected unit |
//! | 4 | applied, but some units failed |

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
  4  applied, but some units failed or a protected unit was disturbed";
