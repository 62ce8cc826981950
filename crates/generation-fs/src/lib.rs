//! Reading a generation from the generation itself and the Nix store only.
//!
//! A generation (a system toplevel) is untrusted input: a merge request's
//! overlay decides what its files hold and where its links point, and
//! safe-switch reads it as root and posts what it read to the merge
//! request. Every file of a generation that safe-switch reads goes through
//! a [`GenerationDir`], which keeps one rule:
//!
//! - Links are followed inside the generation and into the Nix store, and
//!   nowhere else. The store is `/nix/store`, and the directory holding
//!   the generation when that is a store too (a toplevel at
//!   `/x/store/name` may link into `/x/store`). An absolute link to any
//!   other path, or a relative one that climbs out of the generation and
//!   the store, resolves to [`Resolved::Outside`]: callers turn it into
//!   [`ReadError::Outside`], naming the link, without opening its target.
//! - A generation that is not itself in a store (a test fixture) may carry
//!   its own `nix/store`: an absolute link into the store is looked up
//!   there first, then in the machine's store. A generation in a store
//!   resolves links as systemd will, in the machine's store only.
//! - A link to `/dev/null` is [`Resolved::DevNull`]: systemd's mask.
//! - Files are opened non-blocking and must be regular files, so that a
//!   FIFO cannot hang the reader and a device cannot feed it forever; at
//!   most a [`Limit`] is read, and a longer file is
//!   [`ReadError::TooLarge`], naming the file and the limit.
//!
//! Reading a host file that a generation links to (NixOS's
//! `etc/fstab -> /etc/fstab`) is the caller's decision, made per file
//! through [`read_host`].
//!
//! Links are resolved component by component ([`GenerationDir::resolve`]),
//! which gives precise errors. Reading a directory's entries
//! ([`GenerationDir::read_entry`]) takes a faster path where the kernel
//! can check the rule itself: `openat2(RESOLVE_BENEATH)` from the
//! generation or the store directory, which fails on any absolute link and
//! on any `..` that would leave it; the component-wise walk then decides.
//! Elsewhere than on Linux (macOS) there is no `openat2`: the walk alone.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::{self, Read as _};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt as _;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

/// The machine's Nix store.
pub const NIX_STORE: &str = "/nix/store";

/// The longest chain of symlinks followed, as in the kernel.
const MAX_SYMLINKS: u32 = 40;

/// The most bytes read from one kind of file, and what the kind is called
/// in the error for a longer file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// The most bytes read.
    pub bytes: u64,
    /// What the file is, for the error: `a unit file`, `fstab`.
    pub what: &'static str,
}

impl Limit {
    /// A limit of `bytes` for files called `what`.
    pub const fn new(bytes: u64, what: &'static str) -> Limit {
        Limit { bytes, what }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const KIB: u64 = 1 << 10;
        const MIB: u64 = 1 << 20;
        match self.bytes {
            b if b >= MIB && b % MIB == 0 => write!(f, "{} MiB", b / MIB),
            b if b >= KIB && b % KIB == 0 => write!(f, "{} KiB", b / KIB),
            b => write!(f, "{b} bytes"),
        }
    }
}

/// A file of the generation could not be read under the rule. Every
/// variant names the file as the caller shows it; none carries any of the
/// file's content.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A file or directory could not be opened or read, or is not a
    /// regular file.
    #[error("{}: cannot read", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A link points at something that does not exist.
    #[error("{}: dangling symlink (to {})", path.display(), target.display())]
    Dangling {
        /// The file.
        path: PathBuf,
        /// The first path on the way that does not exist.
        target: PathBuf,
    },
    /// Following links did not end.
    #[error("{}: too many levels of symbolic links", path.display())]
    Loop {
        /// The file.
        path: PathBuf,
    },
    /// A link leads outside the generation and the Nix store.
    #[error("{}: {}links outside the generation and the Nix store (to {})", path.display(), via(path, link), target.display())]
    Outside {
        /// The file.
        path: PathBuf,
        /// The link that leads out (the file itself, or a link on the way).
        link: PathBuf,
        /// The link's target, as written.
        target: PathBuf,
    },
    /// A file is longer than its limit.
    #[error("{}: larger than {limit}, the most read from {}", path.display(), limit.what)]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        limit: Limit,
    },
}

/// Names the link in an [`ReadError::Outside`] message when it is not the
/// file itself.
fn via(path: &Path, link: &Path) -> String {
    if path == link { String::new() } else { format!("{} ", link.display()) }
}

/// Where a path of the generation leads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// An existing file or directory inside the generation or the store,
    /// by its physical path (no links left in it).
    Found(PathBuf),
    /// A link to `/dev/null`: a mask.
    DevNull,
    /// Nothing: the first missing path, joined with what was left to
    /// resolve.
    Missing(PathBuf),
    /// A link out of the generation and the store. Its target was not
    /// looked at.
    Outside {
        /// The link, as shown (inside the generation: under the root as
        /// given; elsewhere: its physical path).
        link: PathBuf,
        /// Its target, as written.
        target: PathBuf,
        /// What was left to resolve behind the link (empty when the link
        /// was the last component).
        rest: PathBuf,
    },
}

impl Resolved {
    /// The error for a file that resolved outside the generation and the
    /// store; `None` for the other outcomes.
    pub fn outside_error(&self, shown: &Path) -> Option<ReadError> {
        match self {
            Resolved::Outside { link, target, .. } => {
                Some(ReadError::Outside { path: shown.to_owned(), link: link.clone(), target: target.clone() })
            }
            _ => None,
        }
    }
}

/// A directory entry read with [`GenerationDir::read_entry`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// The file's bytes.
    Bytes(Vec<u8>),
    /// A link to `/dev/null` (or `/dev/null` itself): a mask.
    Masked,
}

/// A directory entry seen without being followed: whether it is a link
/// and where to ([`GenerationDir::peek`]). Two generations of one machine
/// mostly link the same files of the store; comparing peeks tells which
/// entries need reading only once ([`Peek::same_file`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Peek {
    /// What `readlink` said: `Some(target)` for a link, `None` for
    /// anything else, unknown when the fast path is not available.
    seen: Option<Seen>,
    /// The file's physical path, where it is certain to be the same file
    /// for every generation that names it the same way: a link to an
    /// absolute path in a store that the generation itself is in, or a
    /// file that is no link.
    file: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    Link(PathBuf),
    NotLink,
}

impl Peek {
    /// Tells whether two entries, peeked in the same or in different
    /// generations, are certainly the same file, so that what one read
    /// holds for the other.
    pub fn same_file(&self, other: &Peek) -> bool {
        self.file.is_some() && self.file == other.file
    }

    /// The physical path that [`Peek::same_file`] compares: two entries
    /// with the same one are the same file. `None` when that cannot be
    /// told without following the entry.
    pub fn identity(&self) -> Option<&Path> {
        self.file.as_deref()
    }
}

/// Reads a file of the host by its path, following the host's links: a
/// file that a generation's link names where the caller allows it
/// (NixOS's `etc/fstab -> /etc/fstab`), or a host file that is no part of
/// a generation. Non-blocking, a regular file, at most `limit` bytes;
/// `None` when it does not exist. A generation's link to it does not make
/// it the generation's: what it holds must never be quoted in a report.
pub fn read_host(path: &Path, shown: &Path, limit: Limit) -> Result<Option<Vec<u8>>, ReadError> {
    match rustix::fs::open(path, OPEN_FLAGS, Mode::empty()) {
        Ok(fd) => match read_open(fs::File::from(fd), shown, limit, false)? {
            Entry::Bytes(bytes) => Ok(Some(bytes)),
            Entry::Masked => Err(not_regular(shown, "a device")),
        },
        Err(Errno::NOENT) => Ok(None),
        Err(err) => Err(ReadError::Io { path: shown.to_owned(), source: err.into() }),
    }
}

/// One store directory: as links name it, and where it is on this
/// machine (the same unless the machine links `/nix` elsewhere).
#[derive(Debug)]
struct Store {
    logical: PathBuf,
    physical: PathBuf,
    fd: Option<OwnedFd>,
}

/// A generation directory open for reading under the rule (see the crate
/// documentation). Not `Sync`: one per thread.
#[derive(Debug)]
pub struct GenerationDir {
    /// The canonical path.
    root: PathBuf,
    /// The path as given, for what errors show.
    shown_root: PathBuf,
    root_fd: Option<OwnedFd>,
    stores: Vec<Store>,
    /// The generation is not in a store: absolute store links are looked
    /// up inside it first.
    inside_first: bool,
    /// Physical directories already seen not to be links (a generation
    /// links thousands of units into the same store paths).
    dirs: RefCell<HashSet<PathBuf>>,
    /// The directory [`GenerationDir::read_entry`] read last, open.
    last_dir: RefCell<Option<(PathBuf, OwnedFd)>>,
    /// `openat2` works here (not an old kernel or a seccomp filter).
    openat2: Cell<bool>,
}

/// How the fast path of [`GenerationDir::read_entry`] ended.
enum Fast {
    File(fs::File),
    Masked,
}

const OPEN_FLAGS: OFlags = OFlags::RDONLY.union(OFlags::CLOEXEC).union(OFlags::NOCTTY).union(OFlags::NONBLOCK);

impl GenerationDir {
    /// Opens the generation at `toplevel` (any path that leads to it; errors
    /// show it as given).
    pub fn open(toplevel: &Path) -> Result<GenerationDir, ReadError> {
        let root = fs::canonicalize(toplevel).map_err(|source| ReadError::Io { path: toplevel.to_owned(), source })?;
        let mut stores = vec![Store::new(Path::new(NIX_STORE))];
        if let Some(parent) = root.parent()
            && parent.file_name().is_some_and(|name| name == "store")
            && !stores.iter().any(|s| s.physical == parent)
        {
            stores.push(Store::new(parent));
        }
        let inside_first = !stores.iter().any(|s| root.starts_with(&s.physical));
        let root_fd = open_dir_fd(&root);
        Ok(GenerationDir {
            shown_root: toplevel.to_owned(),
            root_fd,
            stores,
            inside_first,
            dirs: RefCell::default(),
            last_dir: RefCell::default(),
            openat2: Cell::new(cfg!(target_os = "linux")),
            root,
        })
    }

    /// The generation's canonical path.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The generation's path as given to [`GenerationDir::open`].
    pub fn shown_root(&self) -> &Path {
        &self.shown_root
    }

    /// A physical path as errors show it: under the root as given when it
    /// is inside the generation, else as it is.
    pub fn show(&self, physical: &Path) -> PathBuf {
        match physical.strip_prefix(&self.root) {
            Ok(rel) if rel.as_os_str().is_empty() => self.shown_root.clone(),
            Ok(rel) => self.shown_root.join(rel),
            Err(_) => physical.to_owned(),
        }
    }

    /// A physical path that a resolution found, as links into the store
    /// name it (`/nix/store/...-linux-6.6/bzImage`): for a path in a store,
    /// and for one in a fixture's own `nix/store`, which stands for the
    /// machine's. `None` for a path in no store (a file of a generation
    /// that is not in a store). Two paths with the same store path are the
    /// same file, as store paths are.
    pub fn store_path(&self, physical: &Path) -> Option<PathBuf> {
        if self.inside_first
            && let Ok(rest) = physical.strip_prefix(self.root.join("nix/store"))
        {
            return Some(Path::new(NIX_STORE).join(rest));
        }
        self.stores.iter().find_map(|store| Some(store.logical.join(physical.strip_prefix(&store.physical).ok()?)))
    }

    /// Resolves `rel`, a path inside the generation. `shown` names the
    /// file in errors.
    pub fn resolve(&self, rel: &Path, shown: &Path) -> Result<Resolved, ReadError> {
        let mut pending = Vec::new();
        push_components(rel, &mut pending);
        self.walk(self.root.clone(), pending, shown, &mut 0)
    }

    /// Resolves `name` in `dir`, a physical directory that an earlier
    /// resolution found.
    pub fn resolve_in(&self, dir: &Path, name: &str, shown: &Path) -> Result<Resolved, ReadError> {
        self.walk(dir.to_owned(), vec![OsString::from(name)], shown, &mut 0)
    }

    /// Resolves an absolute path that a file of the generation names (as
    /// system-manager's `etcFiles.json` names its static `/etc` tree): as
    /// if `named_in` were a link to it.
    pub fn resolve_named(&self, target: &Path, named_in: &Path, shown: &Path) -> Result<Resolved, ReadError> {
        let mut cur = self.root.clone();
        let mut pending = Vec::new();
        let mut hops = 0;
        if let Some(done) =
            self.follow(named_in.to_owned(), target.to_owned(), &mut cur, &mut pending, shown, &mut hops)?
        {
            return Ok(done);
        }
        self.walk(cur, pending, shown, &mut hops)
    }

    /// Reads a file that a resolution found, at most `limit` bytes. It
    /// must be a regular file.
    pub fn read(&self, physical: &Path, shown: &Path, limit: Limit) -> Result<Vec<u8>, ReadError> {
        let file = self.open_physical(physical, shown)?;
        match read_open(file, shown, limit, false)? {
            Entry::Bytes(bytes) => Ok(bytes),
            Entry::Masked => Err(not_regular(shown, "a device")),
        }
    }

    /// Reads `name` in the physical directory `dir` (a unit file, a
    /// drop-in, a plist), at most `limit` bytes: a regular file, or a
    /// mask (a link to `/dev/null`). A dangling link, a loop, a link out of
    /// the generation and the store, and anything else but a regular file
    /// are errors naming `shown`.
    pub fn read_entry(&self, dir: &Path, name: &str, shown: &Path, limit: Limit) -> Result<Entry, ReadError> {
        let peek = self.peek(dir, name);
        self.read_peeked(dir, name, &peek, shown, limit)
    }

    /// Looks at `name` in the physical directory `dir` without following
    /// it (one `readlink`), for [`GenerationDir::read_peeked`] and
    /// [`Peek::same_file`].
    pub fn peek(&self, dir: &Path, name: &str) -> Peek {
        if !self.openat2.get() {
            return Peek::default();
        }
        let read = self.with_dir_fd(dir, |fd| rustix::fs::readlinkat(fd, name, Vec::new()));
        let seen = match read {
            Some(Err(Errno::INVAL)) => Seen::NotLink,
            None | Some(Err(_)) => return Peek::default(),
            Some(Ok(target)) => Seen::Link(PathBuf::from(OsString::from_vec(target.into_bytes()))),
        };
        let file = match &seen {
            Seen::NotLink => Some(dir.join(name)),
            Seen::Link(target) if target.is_absolute() && !self.inside_first => {
                self.store_of(target).map(|(store, rest)| store.physical.join(rest))
            }
            Seen::Link(_) => None,
        };
        Peek { seen: Some(seen), file }
    }

    /// [`GenerationDir::read_entry`] for an entry already peeked.
    pub fn read_peeked(
        &self,
        dir: &Path,
        name: &str,
        peek: &Peek,
        shown: &Path,
        limit: Limit,
    ) -> Result<Entry, ReadError> {
        match self.open_fast(dir, name, peek) {
            Some(Fast::Masked) => return Ok(Entry::Masked),
            Some(Fast::File(file)) => return read_open(file, shown, limit, true),
            None => {}
        }
        match self.resolve_in(dir, name, shown)? {
            Resolved::DevNull => Ok(Entry::Masked),
            Resolved::Missing(target) => {
                Err(ReadError::Dangling { path: shown.to_owned(), target: self.show(&target) })
            }
            Resolved::Outside { link, target, .. } => Err(ReadError::Outside { path: shown.to_owned(), link, target }),
            Resolved::Found(physical) => read_open(self.open_physical(&physical, shown)?, shown, limit, true),
        }
    }

    /// Runs `f` on `dir` opened as a handle for `*at` calls; the last one
    /// is kept open, as entries are read directory by directory.
    fn with_dir_fd<T>(&self, dir: &Path, f: impl FnOnce(BorrowedFd<'_>) -> T) -> Option<T> {
        let mut last_dir = self.last_dir.borrow_mut();
        if last_dir.as_ref().is_none_or(|(path, _)| path != dir) {
            *last_dir = Some((dir.to_owned(), open_dir_fd(dir)?));
        }
        let (_, fd) = last_dir.as_ref()?;
        Some(f(fd.as_fd()))
    }

    /// Tells whether a physical path is inside the generation or a store.
    fn allowed(&self, physical: &Path) -> bool {
        physical.starts_with(&self.root) || self.stores.iter().any(|s| physical.starts_with(&s.physical))
    }

    /// The store an absolute link target leads into, and the rest of the
    /// target inside it.
    fn store_of<'t>(&self, target: &'t Path) -> Option<(&Store, &'t Path)> {
        self.stores.iter().find_map(|store| {
            let rest = target.strip_prefix(&store.logical).or_else(|_| target.strip_prefix(&store.physical)).ok()?;
            Some((store, rest))
        })
    }

    /// Resolves the parts in `pending` (a stack, next part last) from the
    /// physical directory `cur`.
    fn walk(
        &self,
        mut cur: PathBuf,
        mut pending: Vec<OsString>,
        shown: &Path,
        hops: &mut u32,
    ) -> Result<Resolved, ReadError> {
        // The last link followed, for the error when a `..` climbs out.
        let mut last_link: Option<(PathBuf, PathBuf)> = None;
        while let Some(part) = pending.pop() {
            if part == ".." {
                cur.pop();
                if !self.allowed(&cur) {
                    let (link, target) = last_link.unwrap_or_else(|| (shown.to_owned(), PathBuf::from("..")));
                    return Ok(Resolved::Outside { link, target, rest: rest_of(pending) });
                }
                continue;
            }
            let next = cur.join(&part);
            if self.dirs.borrow().contains(&next) {
                cur = next;
                continue;
            }
            let meta = match fs::symlink_metadata(&next) {
                Ok(meta) => meta,
                Err(err) if err.kind() == io::ErrorKind::NotFound || err.kind() == io::ErrorKind::NotADirectory => {
                    let mut missing = next;
                    while let Some(rest) = pending.pop() {
                        missing.push(rest);
                    }
                    return Ok(Resolved::Missing(missing));
                }
                Err(source) => return Err(ReadError::Io { path: shown.to_owned(), source }),
            };
            if !meta.file_type().is_symlink() {
                if meta.is_dir() && !pending.is_empty() {
                    self.dirs.borrow_mut().insert(next.clone());
                }
                cur = next;
                continue;
            }
            *hops += 1;
            if *hops > MAX_SYMLINKS {
                return Err(ReadError::Loop { path: shown.to_owned() });
            }
            let target = fs::read_link(&next).map_err(|source| ReadError::Io { path: shown.to_owned(), source })?;
            let link = self.show(&next);
            last_link = Some((link.clone(), target.clone()));
            if let Some(done) = self.follow(link, target, &mut cur, &mut pending, shown, hops)? {
                return Ok(done);
            }
        }
        Ok(Resolved::Found(cur))
    }

    /// Follows one link to `target`: updates `cur` and `pending` to go on
    /// from there, or returns where the resolution ends.
    fn follow(
        &self,
        link: PathBuf,
        target: PathBuf,
        cur: &mut PathBuf,
        pending: &mut Vec<OsString>,
        shown: &Path,
        hops: &mut u32,
    ) -> Result<Option<Resolved>, ReadError> {
        if target == Path::new("/dev/null") && pending.is_empty() {
            return Ok(Some(Resolved::DevNull));
        }
        if !target.is_absolute() {
            push_components(&target, pending);
            return Ok(None);
        }
        let Some((store, rest)) = self.store_of(&target) else {
            return Ok(Some(Resolved::Outside { link, target, rest: rest_of(std::mem::take(pending)) }));
        };
        if self.inside_first {
            // A fixture's own store first.
            let mut inside = pending.clone();
            push_components(&target, &mut inside);
            match self.walk(self.root.clone(), inside, shown, hops)? {
                Resolved::Missing(_) => {}
                found => return Ok(Some(found)),
            }
        }
        *cur = store.physical.clone();
        push_components(rest, pending);
        Ok(None)
    }

    /// The fast path of [`GenerationDir::read_entry`]: the entry opened by
    /// the kernel within the generation or the store, or `None` when the
    /// walk must decide (a link out, a dangling link, a loop, no
    /// `openat2`).
    fn open_fast(&self, dir: &Path, name: &str, peek: &Peek) -> Option<Fast> {
        if !self.openat2.get() {
            return None;
        }
        let target = match peek.seen.as_ref()? {
            // Not a link: the file itself, in a directory already resolved.
            Seen::NotLink => {
                return self
                    .with_dir_fd(dir, |fd| rustix::fs::openat(fd, name, OPEN_FLAGS | OFlags::NOFOLLOW, Mode::empty()))?
                    .ok()
                    .map(|fd| Fast::File(fd.into()));
            }
            Seen::Link(target) => target,
        };
        if target == Path::new("/dev/null") {
            return Some(Fast::Masked);
        }
        if target.is_absolute() {
            let (store, rest) = self.store_of(target)?;
            if self.inside_first {
                let inside = target.strip_prefix("/").ok()?;
                match self.open_beneath(self.root_fd.as_ref()?.as_fd(), inside) {
                    Ok(file) => return Some(Fast::File(file)),
                    Err(Errno::NOENT) => {}
                    Err(_) => return None,
                }
            }
            return self.open_beneath(store.fd.as_ref()?.as_fd(), rest).ok().map(Fast::File);
        }
        // Relative links may climb from the generation into the store
        // that holds it: the widest directory holding `dir` is the limit.
        let (jail_fd, jail) = match self.stores.iter().find(|s| dir.starts_with(&s.physical)) {
            Some(store) => (store.fd.as_ref()?.as_fd(), store.physical.as_path()),
            None if dir.starts_with(&self.root) => (self.root_fd.as_ref()?.as_fd(), self.root.as_path()),
            None => return None,
        };
        let rel = dir.strip_prefix(jail).ok()?.join(target);
        self.open_beneath(jail_fd, &rel).ok().map(Fast::File)
    }

    /// Opens `rel` beneath the directory `fd`: every link on the way must
    /// be relative and stay beneath it.
    fn open_beneath(&self, fd: BorrowedFd<'_>, rel: &Path) -> Result<fs::File, Errno> {
        let rel = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
        match openat2(fd, rel, Resolve::Beneath) {
            Ok(fd) => Ok(fd.into()),
            Err(err @ (Errno::NOSYS | Errno::PERM)) => {
                self.openat2.set(false);
                Err(err)
            }
            Err(err) => Err(err),
        }
    }

    /// Opens a path that a resolution found, refusing any link that
    /// appeared on the way since.
    fn open_physical(&self, physical: &Path, shown: &Path) -> Result<fs::File, ReadError> {
        let io_err = |err: Errno| ReadError::Io { path: shown.to_owned(), source: err.into() };
        if self.openat2.get() {
            match openat2(rustix::fs::CWD, physical, Resolve::NoSymlinks) {
                Ok(fd) => return Ok(fd.into()),
                Err(Errno::NOSYS | Errno::PERM) => self.openat2.set(false),
                Err(err) => return Err(io_err(err)),
            }
        }
        rustix::fs::open(physical, OPEN_FLAGS | OFlags::NOFOLLOW, Mode::empty()).map(Into::into).map_err(io_err)
    }
}

impl Store {
    fn new(logical: &Path) -> Store {
        let physical = fs::canonicalize(logical).unwrap_or_else(|_| logical.to_owned());
        let fd = open_dir_fd(&physical);
        Store { logical: logical.to_owned(), physical, fd }
    }
}

/// Opens a directory as a handle for `*at` calls.
fn open_dir_fd(dir: &Path) -> Option<OwnedFd> {
    rustix::fs::open(dir, DIR_FLAGS | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).ok()
}

/// How a directory handle is opened: `O_PATH` where there is one (Linux).
#[cfg(target_os = "linux")]
const DIR_FLAGS: OFlags = OFlags::PATH;
#[cfg(not(target_os = "linux"))]
const DIR_FLAGS: OFlags = OFlags::RDONLY;

/// The rule `openat2` holds a resolution to.
#[derive(Clone, Copy)]
enum Resolve {
    /// Beneath the directory: no absolute link, no `..` above it.
    Beneath,
    /// No symbolic link at all.
    NoSymlinks,
}

/// `openat2` with [`OPEN_FLAGS`] and `resolve` (and never a magic link).
#[cfg(target_os = "linux")]
fn openat2<P: rustix::path::Arg>(fd: BorrowedFd<'_>, path: P, resolve: Resolve) -> Result<OwnedFd, Errno> {
    use rustix::fs::ResolveFlags;
    let resolve = match resolve {
        Resolve::Beneath => ResolveFlags::BENEATH,
        Resolve::NoSymlinks => ResolveFlags::NO_SYMLINKS,
    } | ResolveFlags::NO_MAGICLINKS;
    rustix::fs::openat2(fd, path, OPEN_FLAGS, Mode::empty(), resolve)
}

/// No `openat2` but on Linux: only the component-wise walk.
#[cfg(not(target_os = "linux"))]
fn openat2<P: rustix::path::Arg>(_: BorrowedFd<'_>, _: P, _: Resolve) -> Result<OwnedFd, Errno> {
    Err(Errno::NOSYS)
}

/// Pushes `path`'s components onto the stack of parts still to resolve
/// (last component first, so that `pop` yields them in order); a leading
/// `/` is dropped.
fn push_components(path: &Path, pending: &mut Vec<OsString>) {
    let parts: Vec<OsString> = path
        .components()
        .filter_map(|component| match component {
            Component::Normal(part) => Some(part.to_owned()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    pending.extend(parts.into_iter().rev());
}

/// The parts still to resolve, as a path.
fn rest_of(mut pending: Vec<OsString>) -> PathBuf {
    let mut rest = PathBuf::new();
    while let Some(part) = pending.pop() {
        rest.push(part);
    }
    rest
}

fn not_regular(shown: &Path, what: &str) -> ReadError {
    ReadError::Io {
        path: shown.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidInput, format!("{what}, not a regular file")),
    }
}

/// Tells whether a character device is `/dev/null` (1:3 on Linux).
#[cfg(target_os = "linux")]
fn is_dev_null(rdev: u64) -> bool {
    rustix::fs::major(rdev) == 1 && rustix::fs::minor(rdev) == 3
}

/// Tells whether a character device is `/dev/null` (its number differs
/// between systems: the device of `/dev/null` itself).
#[cfg(not(target_os = "linux"))]
fn is_dev_null(rdev: u64) -> bool {
    fs::metadata("/dev/null").is_ok_and(|m| m.rdev() == rdev)
}

/// Reads an opened file: a regular file, at most `limit` bytes; with
/// `masks`, `/dev/null` itself reads as a mask. Anything else (a
/// directory, a FIFO, a socket, another device) is an error naming the
/// file.
fn read_open(mut file: fs::File, shown: &Path, limit: Limit, masks: bool) -> Result<Entry, ReadError> {
    let io_err = |source| ReadError::Io { path: shown.to_owned(), source };
    let meta = file.metadata().map_err(io_err)?;
    let ty = meta.file_type();
    if !ty.is_file() {
        if masks && ty.is_char_device() && is_dev_null(meta.rdev()) {
            return Ok(Entry::Masked);
        }
        let what = if ty.is_dir() {
            "a directory"
        } else if ty.is_fifo() {
            "a FIFO"
        } else if ty.is_socket() {
            "a socket"
        } else {
            "a device"
        };
        return Err(not_regular(shown, what));
    }
    // One read for the size `fstat` gave; another only when the file is
    // not that size (a file that grew or a size the kernel does not know,
    // as in /proc). Never more than the limit and one byte, to tell a
    // longer file.
    let max = usize::try_from(limit.bytes.saturating_add(1)).unwrap_or(usize::MAX);
    let hint = usize::try_from(meta.len()).unwrap_or(usize::MAX).saturating_add(1);
    let mut bytes = vec![0; hint.min(max)];
    let mut filled = 0;
    loop {
        if filled == bytes.len() {
            if filled >= max {
                return Err(ReadError::TooLarge { path: shown.to_owned(), limit });
            }
            let grown = bytes.len().saturating_mul(2).max(8192).min(max);
            bytes.resize(grown, 0);
        }
        match file.read(&mut bytes[filled..]) {
            Ok(0) => break,
            Ok(n) => {
                filled += n;
                if filled > 0 && filled < max && u64::try_from(filled).is_ok_and(|f| f == meta.len()) {
                    break;
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(io_err(err)),
        }
    }
    bytes.truncate(filled);
    Ok(Entry::Bytes(bytes))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const LIMIT: Limit = Limit::new(64, "a test file");

    fn write(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    /// Reads `dir/name` of the generation, shown as `gen/dir/name`.
    fn entry(g: &GenerationDir, dir: &str, name: &str) -> Result<Entry, ReadError> {
        let dir = g.root().join(dir);
        g.read_entry(&dir, name, &g.show(&dir.join(name)), LIMIT)
    }

    /// Opens `root` as a generation shown as `gen`.
    fn open(root: &Path) -> GenerationDir {
        let mut g = GenerationDir::open(root).unwrap();
        g.shown_root = PathBuf::from("gen");
        g
    }

    #[test]
    fn links_inside_the_generation_and_its_own_store_are_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("gen");
        write(&root.join("nix/store/aaaa-unit/a.service"), "a");
        write(&root.join("nix/store/bbbb-unit/b.service"), "b");
        fs::create_dir_all(root.join("etc")).unwrap();
        symlink("/nix/store/aaaa-unit/a.service", root.join("etc/a.service")).unwrap();
        symlink("../nix/store/bbbb-unit/b.service", root.join("etc/b.service")).unwrap();
        symlink("../bbbb-unit/b.service", root.join("nix/store/aaaa-unit/c.service")).unwrap();
        symlink("/nix/store/aaaa-unit/c.service", root.join("etc/c.service")).unwrap();
        symlink("/dev/null", root.join("etc/m.service")).unwrap();
        let g = open(&root);
        assert_eq!(entry(&g, "etc", "a.service").unwrap(), Entry::Bytes(b"a".to_vec()));
        assert_eq!(entry(&g, "etc", "b.service").unwrap(), Entry::Bytes(b"b".to_vec()));
        assert_eq!(entry(&g, "etc", "c.service").unwrap(), Entry::Bytes(b"b".to_vec()));
        assert_eq!(entry(&g, "etc", "m.service").unwrap(), Entry::Masked);
        // The walk agrees with the fast path.
        let found = g.resolve(Path::new("etc/c.service"), Path::new("c")).unwrap();
        assert_eq!(found, Resolved::Found(root.canonicalize().unwrap().join("nix/store/bbbb-unit/b.service")));
    }

    #[test]
    fn links_out_of_the_generation_and_the_store_are_refused_unread() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("gen");
        write(&tmp.path().join("secret"), "[Service]\nSECRET=1\n");
        // A harmless file of the same name inside the generation is not
        // what an absolute link names.
        write(&root.join("etc/os-release"), "[Unit]\n");
        write(&root.join("nix/store/aaaa/ok"), "ok");
        fs::create_dir_all(root.join("units")).unwrap();
        symlink("/etc/os-release", root.join("units/abs.service")).unwrap();
        symlink("../../secret", root.join("units/rel.service")).unwrap();
        symlink("/proc/self/environ", root.join("units/proc.service")).unwrap();
        symlink("/dev/zero", root.join("units/zero.service")).unwrap();
        symlink("/nix/store/../../secret", root.join("units/dots.service")).unwrap();
        // Into the store, then out again.
        symlink(tmp.path().join("secret"), root.join("nix/store/aaaa/out")).unwrap();
        symlink("/nix/store/aaaa/out", root.join("units/twice.service")).unwrap();
        let g = open(&root);
        for name in ["abs.service", "rel.service", "proc.service", "zero.service", "dots.service", "twice.service"] {
            let err = entry(&g, "units", name).unwrap_err();
            assert!(matches!(err, ReadError::Outside { .. }), "{name}: {err:?}");
            let message = err.to_string();
            assert!(message.starts_with(&format!("gen/units/{name}: ")), "{message}");
            assert!(message.contains("links outside the generation and the Nix store"), "{message}");
            assert!(!message.contains("SECRET"), "{message}");
        }
        let err = entry(&g, "units", "twice.service").unwrap_err().to_string();
        assert!(err.starts_with("gen/units/twice.service: gen/nix/store/aaaa/out links outside"), "{err}");
        let err = entry(&g, "units", "abs.service").unwrap_err().to_string();
        assert_eq!(err, "gen/units/abs.service: links outside the generation and the Nix store (to /etc/os-release)");
    }

    #[test]
    fn the_store_holding_the_generation_counts_as_the_store() {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("store");
        let root = store.join("gen");
        write(&store.join("aaaa-unit/a.service"), "a");
        write(&tmp.path().join("elsewhere/b.service"), "b");
        fs::create_dir_all(root.join("etc")).unwrap();
        symlink(store.join("aaaa-unit/a.service"), root.join("etc/a.service")).unwrap();
        symlink("../../aaaa-unit/a.service", root.join("etc/r.service")).unwrap();
        symlink(tmp.path().join("elsewhere/b.service"), root.join("etc/b.service")).unwrap();
        let g = open(&root);
        assert_eq!(entry(&g, "etc", "a.service").unwrap(), Entry::Bytes(b"a".to_vec()));
        assert_eq!(entry(&g, "etc", "r.service").unwrap(), Entry::Bytes(b"a".to_vec()));
        assert!(matches!(entry(&g, "etc", "b.service").unwrap_err(), ReadError::Outside { .. }));
        // Named in a file, as system-manager names its /etc tree.
        let named = g.resolve_named(&store.join("aaaa-unit"), Path::new("x.json"), Path::new("x.json")).unwrap();
        assert_eq!(named, Resolved::Found(store.canonicalize().unwrap().join("aaaa-unit")));
        let named = g.resolve_named(Path::new("/etc"), Path::new("x.json"), Path::new("x.json")).unwrap();
        assert!(matches!(named, Resolved::Outside { .. }), "{named:?}");
        // Store paths are named as the links name them.
        let Resolved::Found(a) = g.resolve(Path::new("etc/r.service"), Path::new("r")).unwrap() else { panic!() };
        assert_eq!(g.store_path(&a), Some(store.join("aaaa-unit/a.service")));
        assert_eq!(g.store_path(&g.root().join("etc")), Some(store.join("gen/etc")));
        assert_eq!(g.store_path(&tmp.path().join("elsewhere")), None);
    }

    #[test]
    fn a_fixtures_own_store_stands_for_the_machines() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("gen");
        write(&root.join("nix/store/aaaa-linux/bzImage"), "k");
        write(&root.join("etc/plain"), "p");
        symlink("/nix/store/aaaa-linux/bzImage", root.join("kernel")).unwrap();
        let g = open(&root);
        let Resolved::Found(kernel) = g.resolve(Path::new("kernel"), Path::new("kernel")).unwrap() else { panic!() };
        assert_eq!(g.store_path(&kernel), Some(PathBuf::from("/nix/store/aaaa-linux/bzImage")));
        assert_eq!(g.store_path(&g.root().join("etc/plain")), None);
    }

    #[test]
    fn fifos_devices_and_long_files_are_errors_not_hangs() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("gen");
        write(&root.join("long"), &"x".repeat(65));
        write(&root.join("exact"), &"x".repeat(64));
        let made = std::process::Command::new("mkfifo").arg(root.join("fifo")).status().unwrap();
        assert!(made.success());
        fs::create_dir_all(root.join("dir")).unwrap();
        let g = open(&root);
        let err = entry(&g, "", "long").unwrap_err();
        assert_eq!(err.to_string(), "gen/long: larger than 64 bytes, the most read from a test file");
        assert_eq!(entry(&g, "", "exact").unwrap(), Entry::Bytes(vec![b'x'; 64]));
        let err = entry(&g, "", "fifo").unwrap_err();
        let ReadError::Io { source, .. } = &err else { panic!("{err:?}") };
        assert_eq!(source.to_string(), "a FIFO, not a regular file");
        let Resolved::Found(fifo) = g.resolve(Path::new("fifo"), Path::new("fifo")).unwrap() else { panic!() };
        assert!(g.read(&fifo, Path::new("fifo"), LIMIT).is_err());
        let err = entry(&g, "", "dir").unwrap_err();
        let ReadError::Io { source, .. } = &err else { panic!("{err:?}") };
        assert_eq!(source.to_string(), "a directory, not a regular file");
        // A host file read on purpose is held to the same rules.
        let err = read_host(Path::new("/dev/zero"), Path::new("zero"), LIMIT).unwrap_err();
        assert_eq!(err.to_string(), "zero: cannot read");
        assert_eq!(read_host(&root.join("none"), Path::new("none"), LIMIT).unwrap(), None);
        let err = read_host(&root.join("fifo"), Path::new("fifo"), LIMIT).unwrap_err();
        assert!(matches!(err, ReadError::Io { .. }), "{err:?}");
    }

    #[test]
    fn loops_and_dangling_links_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("gen");
        fs::create_dir_all(&root).unwrap();
        symlink("b", root.join("a")).unwrap();
        symlink("a", root.join("b")).unwrap();
        symlink("/nix/store/zzzz-none/x", root.join("d")).unwrap();
        let g = open(&root);
        assert!(matches!(entry(&g, "", "a").unwrap_err(), ReadError::Loop { .. }));
        let err = entry(&g, "", "d").unwrap_err().to_string();
        assert_eq!(err, "gen/d: dangling symlink (to /nix/store/zzzz-none/x)");
    }

    #[test]
    fn limits_print_in_binary_units() {
        assert_eq!(Limit::new(4 << 20, "x").to_string(), "4 MiB");
        assert_eq!(Limit::new(1024, "x").to_string(), "1 KiB");
        assert_eq!(Limit::new(1000, "x").to_string(), "1000 bytes");
    }
}
