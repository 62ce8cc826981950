//! The crate's errors. None quotes a file's content: state files are
//! host state that a report must not echo.

use std::path::PathBuf;

/// What can go wrong with system-manager's state file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The state file is not one safe-switch can read.
    #[error("{}: not a system-manager state file safe-switch can read: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why, without quoting the file.
        message: String,
    },
    /// The state file has a version safe-switch does not know.
    #[error(
        "{}: system-manager state file version {version}; safe-switch reads and writes version 1 only \
         (the state file of this system-manager is newer or older than safe-switch knows)",
        path.display()
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// The version found (`0` when the file has none, as system-manager's
        /// first format had none).
        version: String,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io { path: path.into(), source }
    }
}
