//! The `safe-switch` command-line program: argument parsing, the glue
//! between the planners, executors and reports, and the exit-code policy.
//!
//! Architecture Invariant: decisions about units are made in the library
//! crates; this crate only wires inputs to them and renders their results.

/// Writes a line to standard error, ignoring a failed write: a reader
/// that went away (`safe-switch ... 2>&1 | head`) must not make the
/// program panic, as `eprintln!` would.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

/// Writes text to standard error, as [`say!`] without the newline.
macro_rules! say_text {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr().lock(), $($arg)*);
    }};
}

mod args;
mod cmd;
mod darwin;
mod exit;
mod host;
mod isolate;
mod kernel;
mod pending;
mod protect;
mod report;
pub mod saved;
mod source;
mod sysmgr;
pub mod test_hooks;

use std::process::ExitCode;

use clap::Parser;

pub use crate::args::command;
use crate::args::{Cli, Command};
use crate::exit::Outcome;

/// Runs the program and returns its exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(outcome) => outcome.into(),
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::from(exit::OK);
            }
            // An isolated run that lost the race for the lock leaves the
            // message to the safe-switch that started it.
            if err.downcast_ref::<isolate::LockHeld>().is_some_and(|held| held.isolated) {
                return ExitCode::from(exit::LOCK_HELD);
            }
            say!("error: {err:#}");
            ExitCode::from(exit::error_code(&err))
        }
    }
}

/// Runs one parsed command line.
fn run(cli: Cli) -> anyhow::Result<Outcome> {
    match cli.command {
        Command::Diff(a) => cmd::diff::run(a),
        Command::Plan(a) => cmd::plan::run(a),
        Command::Check(a) => cmd::check::run(a),
        Command::Switch(a) => cmd::switch::run(a),
        Command::Apply(a) => cmd::apply::run(a),
        Command::Pending(a) => cmd::pending::run(a),
        Command::Settle(a) => cmd::settle::run(a),
        Command::ClosureDiff(a) => cmd::closure_diff::run(a),
        Command::Report(a) => match a.command {
            args::ReportCommand::Merge(m) => cmd::merge::run(m),
        },
        Command::Completions(a) => cmd::manual::completions(a),
        Command::Man(a) => cmd::manual::man(a),
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|e| e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}
