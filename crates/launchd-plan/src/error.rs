//! The errors of this crate. Each names the file or value at fault.

use thiserror::Error;

/// An input could not be read or parsed. Nothing has been planned.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LoadError {
    /// A file or directory could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file of the generation could not be read under the read rule: a
    /// link out of the generation and the store, a dangling link, not a
    /// regular file, too large.
    #[error(transparent)]
    Read(#[from] generation_fs::ReadError),
    /// A plist is not valid XML, binary or ASCII plist.
    #[error("{path}: not a valid property list: {source}")]
    Plist {
        /// The plist file.
        path: String,
        /// What the parser reported.
        #[source]
        source: plist::Error,
    },
    /// A plist parsed, but its root is not a dictionary, so it cannot
    /// describe a launchd job.
    #[error("{path}: the plist's root is not a dictionary")]
    NotADictionary {
        /// The plist file.
        path: String,
    },
    /// The live-state snapshot is not valid JSON of the expected shape.
    #[error("{path}: invalid launchd live state: {source}")]
    Live {
        /// The snapshot file, or `<input>` when parsed from a string.
        path: String,
        /// What the JSON parser reported.
        #[source]
        source: plan_model::json::JsonError,
    },
}

/// A protection selector is not a valid label or glob.
#[derive(Debug, Error)]
#[error("invalid protection selector {selector:?}: {reason}")]
pub struct SelectorError {
    /// The selector as written.
    pub selector: String,
    /// Why it is invalid.
    pub reason: String,
}

/// A plan cannot be turned into operations.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpsError {
    /// The plan was refused by protection; carrying it out would touch the
    /// listed protected jobs.
    #[error("the plan was refused: it would stop or restart protected launchd jobs: {}", labels.join(", "))]
    Refused {
        /// The protected jobs the plan would touch.
        labels: Vec<String>,
    },
    /// A unit of the plan has no job target (the plan was not made by this
    /// crate's planner, or was edited).
    #[error("the plan lists {unit:?}, which is not a launchd job of this plan")]
    UnknownUnit {
        /// The unit name.
        unit: String,
    },
    /// A unit must be loaded or unloaded but its launchd domain is unknown
    /// (a launch agent while the live state names no primary user).
    #[error("{unit}: no launchd domain is known for this job")]
    NoDomain {
        /// The unit name.
        unit: String,
    },
}
