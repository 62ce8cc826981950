//! The test bed's error type.
//!
//! Every error names what it was doing (the command line, the file, the unit)
//! so that a failing test explains itself without a debugger.

use std::path::PathBuf;
use std::time::Duration;

/// What went wrong while preparing, booting, driving or tearing down a
/// test bed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be created, read or removed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done, e.g. "writing".
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A program could not be started at all.
    #[error("cannot run {command}: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A program ran but exited unsuccessfully.
    #[error("{command} failed ({status}){}", detail(stdout, stderr))]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status, as text.
        status: String,
        /// What it printed on standard output.
        stdout: String,
        /// What it printed on standard error.
        stderr: String,
    },
    /// A program or a condition did not finish in time.
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long it was awaited.
        timeout: Duration,
    },
    /// The namespace's systemd exited or never came up.
    #[error("the test bed's systemd did not come up: {reason}{}", console_tail(console))]
    Boot {
        /// Why the boot is considered failed.
        reason: String,
        /// The last lines of the boot console (the boot script's and
        /// systemd's own output).
        console: String,
    },
    /// A generation description is inconsistent (e.g. a drop-in for a
    /// unit name that is not a valid unit file name).
    #[error("invalid generation {generation}: {reason}")]
    Generation {
        /// The generation's name.
        generation: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The machine cannot host a test bed (not root, no namespaces, a
    /// missing program).
    #[error("this machine cannot run a test bed: {0}")]
    Unsupported(String),
}

/// Formats captured output for an error message, leaving out empty parts.
fn detail(stdout: &str, stderr: &str) -> String {
    let mut out = String::new();
    for (name, text) in [("stdout", stdout), ("stderr", stderr)] {
        let text = text.trim();
        if !text.is_empty() {
            out.push_str(&format!("\n--- {name} ---\n{text}"));
        }
    }
    out
}

/// Formats the end of the boot console for an error message.
fn console_tail(console: &str) -> String {
    let lines: Vec<&str> = console.lines().collect();
    let start = lines.len().saturating_sub(40);
    if lines.is_empty() { String::new() } else { format!("\n--- console ---\n{}", lines[start..].join("\n")) }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Wraps an I/O error with what was done and to which path.
pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { what, path, source }
}
