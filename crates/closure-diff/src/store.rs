//! The imperative shell: turning user-given paths into store paths and
//! reading their closures, from the database or through `nix`.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use nix_compose::{NixCommand, NixRunner};

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
/// snapshot when it can, else one by one through `nix path-info`, run by
/// `nix`.
fn read_all(inputs: &[&Path], options: &Options, nix: &dyn NixRunner) -> Result<Vec<Closure>, Error> {
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
            let paths = path_info::read(nix, &options.store_dir, options.store_uri.as_deref(), root)
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

/// The `nix` program of `options`.
fn nix_command(options: &Options) -> NixCommand {
    NixCommand { program: options.nix.clone(), ..NixCommand::default() }
}

/// Reads the closure of the store path `input` leads to.
pub fn read_closure(input: &Path, options: &Options) -> Result<Closure, Error> {
    read_closure_with(input, options, &nix_command(options))
}

/// [`read_closure`], running `nix` through `nix` (a fake in tests).
pub fn read_closure_with(input: &Path, options: &Options, nix: &dyn NixRunner) -> Result<Closure, Error> {
    let mut list = read_all(&[input], options, nix)?;
    list.pop().ok_or_else(|| Error::NotValid { input: input.to_path_buf(), store_path: String::new() })
}

/// Reads the closures of two store paths (or links to them, such as
/// `/run/current-system`) and compares them.
pub fn diff_store_paths(old: &Path, new: &Path, options: &Options) -> Result<ClosureDiff, Error> {
    diff_store_paths_with(old, new, options, &nix_command(options))
}

/// [`diff_store_paths`], running `nix` through `nix` (a fake in tests).
pub fn diff_store_paths_with(
    old: &Path,
    new: &Path,
    options: &Options,
    nix: &dyn NixRunner,
) -> Result<ClosureDiff, Error> {
    let mut both = read_all(&[old, new], options, nix)?.into_iter();
    match (both.next(), both.next()) {
        (Some(old), Some(new)) => Ok(diff(&old, &new)),
        // `read_all` returns one closure per input; this arm only keeps
        // the function total.
        _ => Err(Error::NotValid { input: new.to_path_buf(), store_path: String::new() }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests may unwrap")]
mod tests {
    use std::cell::RefCell;

    use nix_compose::{NixError, NixOutput, StderrMode};

    use super::*;
    use crate::path_info::CommandError;

    const OLD: &str = "g2xavc2jpzqxqql693khkwfkdb59d00d-app-2.3";
    const NEW: &str = "k9xavc2jpzqxqql693khkwfkdb59d00d-app-2.4";
    const LIB: &str = "y3pan8q3lzkbkm1yh9drr4ckb75qdz4d-libfoo-1.0";

    /// `nix path-info` as a function of the root asked for; the calls are
    /// recorded.
    struct FakeNix {
        answer: fn(&str) -> Result<NixOutput, NixError>,
        calls: RefCell<Vec<Vec<String>>>,
    }

    impl FakeNix {
        fn new(answer: fn(&str) -> Result<NixOutput, NixError>) -> Self {
            FakeNix { answer, calls: RefCell::new(Vec::new()) }
        }
    }

    impl NixRunner for FakeNix {
        fn run(&self, args: &[OsString], stderr: StderrMode) -> Result<NixOutput, NixError> {
            assert_eq!(stderr, StderrMode::Capture);
            let args: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
            let root = args.last().cloned().unwrap_or_default();
            self.calls.borrow_mut().push(args);
            (self.answer)(&root)
        }
    }

    /// Nix 2.19's object shape: the root and libfoo, with base names.
    fn closure_of(root: &str) -> Result<NixOutput, NixError> {
        let base = root.rsplit('/').next().unwrap();
        let size = if base == OLD { 100 } else { 120 };
        let stdout = format!(r#"{{"{base}":{{"narSize":{size}}},"{LIB}":{{"narSize":7}}}}"#);
        Ok(NixOutput { success: true, code: Some(0), stdout, stderr: String::new() })
    }

    fn failing(stderr: String) -> Result<NixOutput, NixError> {
        Ok(NixOutput { success: false, code: Some(1), stdout: String::new(), stderr })
    }

    /// A store directory (empty: only the names of its paths are read)
    /// and options whose database does not exist.
    fn store() -> (tempfile::TempDir, Options) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("store")).unwrap();
        let options = Options {
            store_dir: dir.path().join("store"),
            db_path: dir.path().join("no/db.sqlite"),
            ..Options::default()
        };
        (dir, options)
    }

    #[test]
    fn a_database_that_cannot_be_opened_falls_back_to_nix_path_info() {
        let (_dir, options) = store();
        let (old, new) = (options.store_dir.join(OLD), options.store_dir.join(NEW));
        let nix = FakeNix::new(closure_of);
        let d = diff_store_paths_with(&old, &new, &options, &nix).unwrap();
        assert_eq!(d.changed.len(), 1, "{d:?}");
        assert_eq!((d.changed[0].name.as_str(), d.size_delta), ("app", 20));
        let store_dir = options.store_dir.clone();
        let root = |base: &str| store_dir.join(base).display().to_string();
        let path_info =
            |root: String| ["path-info", "--json", "--recursive"].map(str::to_owned).into_iter().chain([root]);
        let expected: Vec<Vec<String>> = [OLD, NEW].iter().map(|b| path_info(root(b)).collect()).collect();
        assert_eq!(*nix.calls.borrow(), expected);

        let closure = read_closure_with(&old, &options, &nix).unwrap();
        assert_eq!(closure.source, Source::NixPathInfo);
        assert!(closure.fallback_reason.unwrap().contains("no/db.sqlite"));
        let mut paths: Vec<&str> = closure.paths.iter().map(|p| p.path.as_str()).collect();
        paths.sort_unstable();
        assert_eq!(paths, [root(OLD), root(LIB)]);

        // A store of its own is named to Nix; without the fallback, the
        // database's error is the answer.
        let remote = Options { store_uri: Some("ssh-ng://builder".into()), source: SourcePolicy::NixOnly, ..options };
        read_closure_with(&old, &remote, &nix).unwrap();
        let last = nix.calls.borrow().last().cloned().unwrap();
        assert_eq!(last[3..], ["--store".to_owned(), "ssh-ng://builder".to_owned(), root(OLD)]);
        let db_only = Options { source: SourcePolicy::DatabaseOnly, ..remote };
        let calls = nix.calls.borrow().len();
        assert!(matches!(read_closure_with(&old, &db_only, &nix), Err(Error::Database { .. })));
        assert_eq!(nix.calls.borrow().len(), calls, "nix is not asked");
    }

    #[test]
    fn what_nix_path_info_answers_is_told_apart_from_its_failures() {
        let (_dir, options) = store();
        let old = options.store_dir.join(OLD);

        // Nix's word for a path it does not have: the path is not valid.
        let nix = FakeNix::new(|root| failing(format!("error: path '{root}' is not valid\n")));
        let err = read_closure_with(&old, &options, &nix).unwrap_err();
        assert!(matches!(&err, Error::NotValid { store_path, .. } if store_path.ends_with(OLD)), "{err:?}");

        // Any other failure: both reasons, and the end of Nix's report.
        let nix = FakeNix::new(|_| failing("warning: a\n\nerror: b\n  c\n  d\n".to_owned()));
        let err = read_closure_with(&old, &options, &nix).unwrap_err();
        let Error::Unreadable { command, .. } = &err else { panic!("{err:?}") };
        let CommandError::Failed { command: line, status, stderr } = command.as_ref() else { panic!("{command:?}") };
        assert_eq!(line, &format!("nix path-info --json --recursive {}", old.display()));
        assert_eq!((status.as_str(), stderr.as_str()), ("exit status: 1", "error: b /   c /   d"));
        let msg = err.to_string();
        assert!(msg.contains("no/db.sqlite") && msg.contains("exited with exit status: 1"), "{msg}");

        // Output that is not Nix's JSON, and a `nix` that cannot run.
        let nix = FakeNix::new(|_| Ok(NixOutput { success: true, code: Some(0), ..NixOutput::default() }));
        let nix_only = Options { source: SourcePolicy::NixOnly, ..options };
        let err = read_closure_with(&old, &nix_only, &nix).unwrap_err();
        assert!(matches!(&err, Error::Command { source: CommandError::Parse { .. }, .. }), "{err:?}");
        let nix = FakeNix::new(|_| Err(NixError::NotFound { program: "/nowhere/bin/nix".into() }));
        let err = read_closure_with(&old, &nix_only, &nix).unwrap_err();
        assert!(matches!(&err, Error::Command { source: CommandError::Nix(_), .. }), "{err:?}");
        assert!(chain(&err).contains("/nowhere/bin/nix"), "{}", chain(&err));
    }
}
