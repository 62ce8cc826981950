//! Exit codes, in one place.
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | done, or the plan is safe |
//! | 1 | error: nothing was changed unless the message says otherwise |
//! | 2 | usage error |
//! | 3 | refused or blocked: something would touch a protected unit; for `check`, what `--fail-on` names holds (a reboot, say); for `pending` and `settle`, something is still pending |
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
pub(crate) const OK: u8 = 0;
/// Exit code for an error.
pub(crate) const ERROR: u8 = 1;
/// Exit code for a usage error (also what clap uses).
pub(crate) const USAGE: u8 = 2;
/// Exit code for a refused or blocked switch.
pub(crate) const BLOCKED: u8 = 3;
/// Exit code for an applied switch in which units failed.
pub(crate) const UNITS_FAILED: u8 = 4;
/// Exit code of an isolated run that found the lock held by another
/// safe-switch. Only the calling safe-switch sees it: it reports the lock
/// and exits 1 itself.
pub(crate) const LOCK_HELD: u8 = 75;

/// How the isolated run of this program (`switch` and `apply` in a
/// transient unit) ended, by its exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IsolatedExit {
    /// An outcome to pass on as it is.
    Outcome(Outcome),
    /// It refused its command line.
    Usage,
    /// It found the lock held.
    LockHeld,
    /// It failed (the message is in its relayed output).
    Failed,
}

/// Reads the exit code of an isolated run.
pub(crate) fn of_isolated_run(code: i32) -> IsolatedExit {
    match u8::try_from(code) {
        Ok(OK) => IsolatedExit::Outcome(Outcome::Ok),
        Ok(BLOCKED) => IsolatedExit::Outcome(Outcome::Blocked),
        Ok(UNITS_FAILED) => IsolatedExit::Outcome(Outcome::UnitsFailed),
        Ok(USAGE) => IsolatedExit::Usage,
        Ok(LOCK_HELD) => IsolatedExit::LockHeld,
        _ => IsolatedExit::Failed,
    }
}

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
pub(crate) struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Returns a usage error (exit code 2) with this message.
pub(crate) fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(message.into()))
}

/// The exit code for an error: [`USAGE`] for a [`UsageError`] anywhere in
/// its chain, [`ERROR`] otherwise.
pub(crate) fn error_code(err: &anyhow::Error) -> u8 {
    if err.chain().any(|e| e.downcast_ref::<UsageError>().is_some()) { USAGE } else { ERROR }
}

impl From<Outcome> for ExitCode {
    fn from(o: Outcome) -> ExitCode {
        ExitCode::from(o.code())
    }
}

/// The text appended to `--help`.
pub(crate) const HELP: &str = "\
Exit codes:
  0  done, or the plan is safe
  1  error (nothing was changed unless the message says otherwise)
  2  usage error
  3  refused or blocked: something would touch a protected unit (check: what
     --fail-on names holds, such as a reboot; pending, settle: something is
     still pending)
  4  applied, but units failed because of it (units failed before that it did
     not act on are listed apart), or a protected unit was disturbed";
