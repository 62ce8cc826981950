//! The errors of this crate. Each names the program, file or job at fault.

use std::path::PathBuf;

use thiserror::Error;

/// Something the live side could not do.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// `launchctl` could not be run, or did not end in time.
    #[error("{program}: {message}")]
    Run {
        /// The program.
        program: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// `launchctl` failed in a way that is not an answer (not "not
    /// loaded").
    #[error("`{command}` failed with exit status {code}: {stderr}")]
    Launchctl {
        /// The command line.
        command: String,
        /// The exit status.
        code: i32,
        /// The first line of its standard error.
        stderr: String,
    },
    /// `launchctl print` answered with output of an unexpected shape.
    #[error("`{command}`: {source}")]
    Capture {
        /// The command line.
        command: String,
        /// What the parser found.
        #[source]
        source: launchd_plan::CaptureError,
    },
    /// A file or directory of the host could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The activation script does not have the expected layout.
    #[error("{path}: {source}")]
    Markers {
        /// The script.
        path: PathBuf,
        /// What is missing.
        #[source]
        source: crate::activation::MarkerError,
    },
    /// The progress record cannot be read.
    #[error("{path}: not a progress record of a launchd switch: {message}")]
    BadProgress {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io { path: path.into(), source }
    }
}
