//! The imperative shell: turning user-given paths into store paths and
//! reading their closures, from the database or through `nix`.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use crate::closure::{Closure, Source};
use crate::db::{Database, DbError};
use crate::diff::{ClosureDiff, diff};
use crate::name::split_base_name;
use crate::path_info::{self, CommandError};

/// Where closures may be read from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SourcePolicy {
    /// The database, and `nix path-info` when the database cannot be
    /// opened or read.
    #[default]
    Auto,
    /// The database only.
    DatabaseOnly,
    /// `nix path-info` only.
    NixOnly,
}

/// Where the store and its database are, and how to reach them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The store directory as Nix names it in store paths.
    pub store_dir: PathBuf,
    /// Nix's SQLite database.
    pub db_path: PathBuf,
    /// The `nix` program for the fallback.
    pub nix: PathBuf,
    /// A store URI for `nix path-info --store` (none: Nix's default).
    pub store_uri: Option<String>,
    /// Where closures may be read from.
    pub source: SourcePolicy,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            store_dir: PathBuf::from("/nix/store"),
            db_path: PathBuf::from("/nix/var/nix/db/db.sqlite"),
            nix: PathBuf::from("nix"),
            store_uri: None,
            source: SourcePolicy::Auto,
        }
    }
}

impl Options {
    /// Options that follow the environment variables Nix itself reads:
    /// `NIX_STORE_DIR` (or `NIX_STORE`) for the store directory,
    /// `NIX_DB_DIR` or `NIX_STATE_DIR` for the database, and `NIX_REMOTE`:
    /// when that names a store other than the local one, the local
    /// database says nothing about it, so only `nix` is asked. `get`
    /// looks a variable up (`|k| std::env::var(k).ok()` in a program).
    pub fn from_nix_env(get: impl Fn(&str) -> Option<String>) -> Self {
        let mut o = Options::default();
        let set = |k: &str| get(k).filter(|v| !v.is_empty());
        if let Some(dir) = set("NIX_STORE_DIR").or_else(|| set("NIX_STORE")) {
            o.store_dir = PathBuf::from(dir);
        }
        if let Some(dir) = set("NIX_DB_DIR") {
            o.db_path = Path::new(&dir).join("db.sqlite");
        } else if let Some(dir) = set("NIX_STATE_DIR") {
            o.db_path = Path::new(&dir).join("db").join("db.sqlite");
        }
        if let Some(remote) = set("NIX_REMOTE") {
            let local = matches!(remote.as_str(), "auto" | "daemon" | "local")
                || remote.starts_with("unix://");
            if !local {
                o.source = SourcePolicy::NixOnly;
            }
        }
        o
    }
}

/// Why a closure could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input does not exist or a link on the way cannot be read.
    #[error("{}: {source}", input.display())]
    Resolve {
        /// The path given.
        input: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The input does not lead into the store.
    #[error("{}: not a path in the Nix store {} (resolved to {})", input.display(), store_dir.display(), resolved.display())]
    NotStorePath {
        /// The path given.
        input: PathBuf,
        /// Where it led.
        resolved: PathBuf,
        /// The store directory.
        store_dir: PathBuf,
    },
    /// Symbolic links loop or nest too deeply.
    #[error("{}: too many levels of symbolic links", input.display())]
    LinkLoop {
        /// The path given.
        input: PathBuf,
    },
    /// The store does not know the path.
    #[error("{store_path} (from {}) is not a valid path in the Nix store", input.display())]
    NotValid {
        /// The path given.
        input: PathBuf,
        /// The store path it resolved to.
        store_path: String,
    },
    /// The database could not be read and the fallback is off.
    #[error("reading the closure of {store_path}: {source}")]
    Database {
        /// The store path.
        store_path: String,
        /// The database error.
        #[source]
        source: DbError,
    },
    /// `nix path-info` failed and the database is not used.
    #[error("reading the closure of {store_path}: {source}")]
    Command {
        /// The store path.
        store_path: String,
        /// The command error.
        #[source]
        source: CommandError,
    },
    /// Neither the database nor `nix path-info` gave an answer.
    #[error("cannot read the closure of {store_path}: the Nix database failed ({db}), and so did the fallback ({command})")]
    Unreadable {
        /// The store path.
        store_path: String,
        /// The database error.
        db: Box<DbError>,
        /// The command error.
        command: Box<CommandError>,
    },
}

/// How many symbolic links a path may go through, as in Linux.
const MAX_LINKS: usize = 40;

/// Follows a path (e.g. `/run/current-system` or a `result` link) to the
/// store path it leads into, without requiring the store path itself to
/// exist on this file system (chroot stores keep it elsewhere). A path
/// inside a store path (`/nix/store/<hash>-foo/bin/foo`) yields the store
/// path.
pub fn resolve_store_path(input: &Path, store_dir: &Path) -> Result<String, Error> {
    let start = std::path::absolute(input)
        .map_err(|source| Error::Resolve { input: input.to_path_buf(), source })?;
    let mut pending: VecDeque<OsString> = VecDeque::new();
    push_front(&mut pending, &start);
    let mut current = PathBuf::from("/");
    let mut links = 0;
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            current.pop();
            continue;
        }
        current.push(&part);
        if current.parent() == Some(store_dir) {
            let base = part.to_string_lossy();
            if split_base_name(&base).is_none() {
                break;
            }
            return Ok(current.to_string_lossy().into_owned());
        }
        match std::fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(Error::LinkLoop { input: input.to_path_buf() });
                }
                let target = std::fs::read_link(&current)
                    .map_err(|source| Error::Resolve { input: input.to_path_buf(), source })?;
                current.pop();
                if target.is_absolute() {
                    current = PathBuf::from("/");
                }
                push_front(&mut pending, &target);
            }
            Ok(_) => {}
            Err(source) => {
                return Err(Error::Resolve { input: input.to_path_buf(), source });
            }
        }
    }
    Err(Error::NotStorePath {
        input: input.to_path_buf(),
        resolved: current,
        store_dir: store_dir.to_path_buf(),
    })
}

/// Puts a path's components in front of the queue, in order.
fn push_front(queue: &mut VecDeque<OsString>, path: &Path) {
    let parts: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    for part in parts.into_iter().rev() {
        queue.push_front(part);
    }
}

/// Reads closures for one or more roots, opening the database once.
struct Reader<'a> {
    options: &'a Options,
    db: Option<Database>,
}

impl<'a> Reader<'a> {
    fn new(options: &'a Options) -> Self {
        Reader { options, db: None }
    }

    fn via_command(&self, store_path: &str) -> Result<Vec<crate::closure::PathInfo>, CommandError> {
        path_info::read(
            &self.options.nix,
            &self.options.store_dir,
            self.options.store_uri.as_deref(),
            store_path,
        )
    }

    fn via_database(&mut self, store_path: &str) -> Result<Vec<crate::closure::PathInfo>, DbError> {
        // A failed open is retried for the next root rather than cached:
        // it costs one failed system call and keeps the real error.
        if self.db.is_none() {
            self.db = Some(Database::open(&self.options.db_path)?);
        }
        match &self.db {
            Some(db) => db.closure(store_path),
            None => Database::open(&self.options.db_path)?.closure(store_path),
        }
    }

    fn read(&mut self, input: &Path) -> Result<Closure, Error> {
        let store_path = resolve_store_path(input, &self.options.store_dir)?;
        let not_valid =
            || Error::NotValid { input: input.to_path_buf(), store_path: store_path.clone() };
        let closure = |paths, source, fallback_reason| Closure {
            root: store_path.clone(),
            paths,
            source,
            fallback_reason,
        };
        if self.options.source == SourcePolicy::NixOnly {
            return match self.via_command(&store_path) {
                Ok(paths) => Ok(closure(paths, Source::NixPathInfo, None)),
                Err(CommandError::NotValid { .. }) => Err(not_valid()),
                Err(source) => Err(Error::Command { store_path: store_path.clone(), source }),
            };
        }
        match self.via_database(&store_path) {
            Ok(paths) => Ok(closure(paths, Source::Database, None)),
            Err(DbError::NotValid { .. }) => Err(not_valid()),
            Err(db_error) if self.options.source == SourcePolicy::DatabaseOnly => {
                Err(Error::Database { store_path: store_path.clone(), source: db_error })
            }
            Err(db_error) => match self.via_command(&store_path) {
                Ok(paths) => {
                    Ok(closure(paths, Source::NixPathInfo, Some(db_error.to_string())))
                }
                Err(CommandError::NotValid { .. }) => Err(not_valid()),
                Err(command) => {
                    Err(Error::Unreadable {
                    store_path: store_path.clone(),
                    db: Box::new(db_error),
                    command: Box::new(command),
                })
                }
            },
        }
    }
}

/// Reads the closure of the store path `input` leads to.
pub fn read_closure(input: &Path, options: &Options) -> Result<Closure, Error> {
    Reader::new(options).read(input)
}

/// Reads the closures of two store paths (or links to them, such as
/// `/run/current-system`) and compares them.
pub fn diff_store_paths(old: &Path, new: &Path, options: &Options) -> Result<ClosureDiff, Error> {
    let mut reader = Reader::new(options);
    let old = reader.read(old)?;
    let new = reader.read(new)?;
    Ok(diff(&old, &new))
}
