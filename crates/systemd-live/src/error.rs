//! The crate's error type.

use std::path::PathBuf;

/// What can go wrong while talking to systemd or carrying out a plan.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The system bus could not be reached.
    #[error("cannot connect to the D-Bus system bus ({address}): {message}")]
    Connect {
        /// The address tried (`DBUS_SYSTEM_BUS_ADDRESS` or the default).
        address: String,
        /// The underlying error.
        message: String,
    },
    /// A D-Bus call failed.
    #[error("D-Bus call {call} failed: {message}")]
    Call {
        /// The call, e.g. `ListUnits` or `GetAll(foo.service)`.
        call: String,
        /// The underlying error.
        message: String,
    },
    /// A D-Bus call (or the connection's set-up) got no reply in time.
    #[error("D-Bus call {call} got no reply within {timeout:?}")]
    Timeout {
        /// The call, e.g. `Hello (connection set-up on ...)` or
        /// `ListUnits`.
        call: String,
        /// The deadline it had.
        timeout: std::time::Duration,
    },
    /// systemd did not finish a reload or re-exec in time.
    #[error("systemd did not finish {what} within {seconds} s")]
    ReloadTimeout {
        /// `daemon-reload` or `re-exec`.
        what: &'static str,
        /// The limit.
        seconds: u64,
    },
    /// Another safe-switch holds the lock.
    #[error("another safe-switch is running (lock {path} is held); nothing was changed")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// A file of the run directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The persisted progress file is not valid.
    #[error("{path}: not a valid progress file: {message}")]
    BadProgress {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The record of pending deferrals is not valid.
    #[error("{path}: not a valid record of pending deferrals: {message}")]
    BadPending {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong, without quoting the file.
        message: String,
    },
    /// The activation script could not be started.
    #[error("cannot run the activation script {path}: {source}")]
    Activate {
        /// The script.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io { path: path.into(), source }
    }
}
