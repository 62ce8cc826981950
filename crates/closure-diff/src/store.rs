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
    /// Stores with at most this many paths are read whole and walked in
    /// memory; larger ones are walked with a recursive query per root.
    pub scan_limit: u64,
}

/// The default `scan_limit`: reading a store this size whole costs about
/// as much as walking two typical system closures with recursive queries.
pub const DEFAULT_SCAN_LIMIT: u64 = 150_000;

impl Default for Options {
    fn default() -> Self {
        Options {
            store_dir: PathBuf::from("/nix/store"),
            db_path: PathBuf::from("/nix/var/nix/db/db.sqlite"),
            nix: PathBuf::from("nix"),
            store_uri: None,
            source: SourcePolicy::Auto,
            scan_limit: DEFAULT_SCAN_LIMIT,
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
            let local = matches!(remote.as_str(), "auto" | "daemon" | "local") || remote.starts_with("unix://");
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
    #[error("cannot follow {}", input.display())]
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
    #[error("{store_path}{} is not a valid path in the Nix store", via(input, store_path))]
    NotValid {
        /// The path given.
        input: PathBuf,
        /// The store path it resolved to.
        store_path: String,
    },
    /// The database could not be read and the fallback is off.
    #[error("reading the closure of {store_path}")]
    Database {
        /// The store path.
        store_path: String,
        /// The database error.
        #[source]
        source: DbError,
    },
    /// `nix path-info` failed and the database is not used.
    #[error("reading the closure of {store_path}")]
    Command {
        /// The store path.
        store_path: String,
        /// The command error.
        #[source]
        source: CommandError,
    },
    /// Neither the database nor `nix path-info` gave an answer.
    #[error("cannot read the closure of {store_path}: the Nix database failed ({}), and so did the fallback ({})", chain(db.as_ref()), chain(command.as_ref()))]
    Unreadable {
        /// The store path.
        store_path: String,
        /// The database error.
        db: Box<DbError>,
        /// The command error.
        command: Box<CommandError>,
    },
}

/// ` (from <input>)` when the user named the store path through a link.
fn via(input: &Path, store_path: &str) -> String {
    if input == Path::new(store_path) { String::new() } else { format!(" (from {})", input.display()) }
}

/// An error and its sources on one line, for messages that carry another
/// error inside their text.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}

/// How many symbolic links a path may go through, as in Linux.
const MAX_LINKS: usize = 40;

/// Follows a path (e.g. `/run/current-system` or a `result` link) to the
/// store path it leads into, without requiring the store path itself to
/// exist on this file system (chroot stores keep it elsewhere). A path
/// inside a store path (`/nix/store/<hash>-foo/bin/foo`) yields the store
/// path.
pub fn resolve_store_path(input: &Path, store_dir: &Path) -> Result<String, Error> {
    let start = std::path::absolute(input).map_err(|source| Error::Resolve { input: input.to_path_buf(), source })?;
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
        // Stop at the store path unless a later `..` climbs back out.
        if current.parent() == Some(store_dir) && !pending.iter().any(|p| p == "..") {
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
    Err(Error::NotStorePath { input: input.to_path_buf(), resolved: current, store_dir: store_dir.to_path_buf() })
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

/// Reads the closures of several inputs, from the database in one
/// snapshot when it can, else one by one through `nix path-info`.
fn read_all(inputs: &[&Path], options: &Options) -> Result<Vec<Closure>, Error> {
    let roots = inputs.iter().map(|i| resolve_store_path(i, &options.store_dir)).collect::<Result<Vec<_>, _>>()?;
    let not_valid = |store_path: &str| {
        let input = roots
            .iter()
            .position(|r| r == store_path)
            .and_then(|k| inputs.get(k))
            .map_or_else(|| PathBuf::from(store_path), |i| i.to_path_buf());
        Error::NotValid { input, store_path: store_path.to_owned() }
    };
    // Reads every root through `nix path-info`; a failure names the root
    // it happened on.
    let via_command = |fallback_reason: Option<String>| -> Result<Vec<Closure>, (String, CommandError)> {
        let mut closures = Vec::with_capacity(roots.len());
        for root in &roots {
            let paths = path_info::read(&options.nix, &options.store_dir, options.store_uri.as_deref(), root)
                .map_err(|e| (root.clone(), e))?;
            closures.push(Closure {
                root: root.clone(),
                paths,
                source: Source::NixPathInfo,
                fallback_reason: fallback_reason.clone(),
            });
        }
        Ok(closures)
    };

    if options.source == SourcePolicy::NixOnly {
        return via_command(None).map_err(|(store_path, source)| match source {
            CommandError::NotValid { .. } => not_valid(&store_path),
            source => Error::Command { store_path, source },
        });
    }

    let root_refs: Vec<&str> = roots.iter().map(String::as_str).collect();
    let from_db = Database::open(&options.db_path).and_then(|db| db.closures(&root_refs, options.scan_limit));
    let db_error = match from_db {
        Ok(lists) => {
            return Ok(roots
                .iter()
                .zip(lists)
                .map(|(root, paths)| Closure {
                    root: root.clone(),
                    paths,
                    source: Source::Database,
                    fallback_reason: None,
                })
                .collect());
        }
        // The database answered: the path is not in the store. Asking
        // `nix` would only repeat that more slowly.
        Err(DbError::NotValid { store_path, .. }) => return Err(not_valid(&store_path)),
        Err(e) => e,
    };
    if options.source == SourcePolicy::DatabaseOnly {
        let store_path = roots.first().cloned().unwrap_or_default();
        return Err(Error::Database { store_path, source: db_error });
    }
    via_command(Some(chain(&db_error))).map_err(|(store_path, command)| match command {
        CommandError::NotValid { .. } => not_valid(&store_path),
        command => Error::Unreadable { store_path, db: Box::new(db_error), command: Box::new(command) },
    })
}

/// Reads the closure of the store path `input` leads to.
pub fn read_closure(input: &Path, options: &Options) -> Result<Closure, Error> {
    let mut list = read_all(&[input], options)?;
    list.pop().ok_or_else(|| Error::NotValid { input: input.to_path_buf(), store_path: String::new() })
}

/// Reads the closures of two store paths (or links to them, such as
/// `/run/current-system`) and compares them.
pub fn diff_store_paths(old: &Path, new: &Path, options: &Options) -> Result<ClosureDiff, Error> {
    let mut both = read_all(&[old, new], options)?.into_iter();
    match (both.next(), both.next()) {
        (Some(old), Some(new)) => Ok(diff(&old, &new)),
        // `read_all` returns one closure per input; this arm only keeps
        // the function total.
        _ => Err(Error::NotValid { input: new.to_path_buf(), store_path: String::new() }),
    }
}
