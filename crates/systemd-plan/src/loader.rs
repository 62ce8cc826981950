//! The loader: the only part of this crate that reads the file system.
//!
//! It turns a generation directory (a system toplevel) into a
//! [`GenerationUnits`] value: every unit in `etc/systemd/system` with its
//! drop-ins, the `.wants`/`.requires`/`.upholds` links, `etc/fstab`,
//! `etc/systemd/system.conf`, the systemd binary, `init-interface-version`
//! and the activation script.
//!
//! Symlinks are followed the way NixOS lays a generation out: unit files
//! and whole directories are links into the store, relative or absolute.
//! An absolute link is first looked up inside the generation directory
//! (so a fixture can carry its own `nix/store`), then on the machine. A
//! link to `/dev/null` masks a unit or a drop-in. A link that leads
//! nowhere is an error, because a real generation is a closed store
//! closure and a dangling link means the input is not what it claims.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use plan_model::unit_name;

use crate::fstab::Fstab;
use crate::generation::{FileIdentity, GenerationUnits};
use crate::unit_file::{ParseError, UnitFile};

/// Why a generation could not be loaded. Every variant names the path.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The generation directory itself is missing or not a directory.
    #[error("{}: not a generation directory: {reason}", path.display())]
    NotAGeneration {
        /// The directory as given.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The generation has no `etc/systemd/system` directory.
    #[error("{}: the generation has no etc/systemd/system directory", path.display())]
    NoUnitDirectory {
        /// The generation directory.
        path: PathBuf,
    },
    /// A file that describes the generation is not what it should be.
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A file or directory could not be read.
    #[error("{}: cannot read", path.display())]
    Io {
        /// The path inside the generation.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A file is not valid UTF-8.
    #[error("{}:{line}: not valid UTF-8", path.display())]
    NotUtf8 {
        /// The path inside the generation.
        path: PathBuf,
        /// The line with the first invalid byte.
        line: u32,
    },
    /// A file name in the unit directory is not valid UTF-8.
    #[error("{}: file name is not valid UTF-8", path.display())]
    NameNotUtf8 {
        /// The path inside the generation.
        path: PathBuf,
    },
    /// A symlink points at something that does not exist.
    #[error("{}: dangling symlink (to {})", path.display(), target.display())]
    Dangling {
        /// The path inside the generation.
        path: PathBuf,
        /// The first path on the way that does not exist.
        target: PathBuf,
    },
    /// Following symlinks did not end.
    #[error("{}: too many levels of symbolic links", path.display())]
    SymlinkLoop {
        /// The path inside the generation.
        path: PathBuf,
    },
    /// A unit file or drop-in has a syntax error.
    #[error(transparent)]
    Parse(#[from] ParseError),
}

/// Symlink resolution for one generation: its canonical root, and the
/// directories already seen not to be links (a NixOS generation links
/// thousands of units into the same store, so the same parents recur).
struct Walker<'a> {
    root: &'a Path,
    dirs: RefCell<HashSet<PathBuf>>,
    /// The generation directory, open, for [`Walker::open_in_root`];
    /// `None` once the kernel turned `openat2` down.
    root_fd: RefCell<Option<OwnedFd>>,
}

impl<'a> Walker<'a> {
    /// A walker for the generation at `root`, its canonical path.
    fn new(root: &'a Path) -> Walker<'a> {
        use rustix::fs::{Mode, OFlags};
        let root_fd = rustix::fs::open(root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).ok();
        Walker { root, dirs: RefCell::default(), root_fd: RefCell::new(root_fd) }
    }

    /// Opens `path` (a physical path under the generation directory) with
    /// every absolute link on the way resolved inside the generation, in
    /// one `openat2(RESOLVE_IN_ROOT)` call. Where it succeeds this is what
    /// the component-wise walk finds, since the walk, too, looks inside
    /// the generation first at every absolute link; where it fails (the
    /// path leaves the generation, or the kernel lacks `openat2`) the
    /// caller falls back to the walk. A generation linking thousands of
    /// units into its own store saves a `readlink` and most of the path
    /// lookups per unit.
    fn open_in_root(&self, path: &Path) -> Option<fs::File> {
        use rustix::fs::{Mode, OFlags, ResolveFlags};
        let rel = path.strip_prefix(self.root).ok()?;
        let mut root_fd = self.root_fd.borrow_mut();
        let fd = root_fd.as_ref()?;
        // O_NONBLOCK: a FIFO where a unit file should be must not hang the
        // planner; for regular files the flag changes nothing.
        let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
        match rustix::fs::openat2(fd, rel, flags, Mode::empty(), ResolveFlags::IN_ROOT) {
            Ok(file) => Some(fs::File::from(file)),
            Err(rustix::io::Errno::NOSYS | rustix::io::Errno::PERM) => {
                // No openat2 here (an old kernel, or a seccomp filter that
                // refuses it): use the slower path from now on.
                *root_fd = None;
                None
            }
            Err(_) => None,
        }
    }
}

/// Where a path leads after following symlinks.
#[derive(Debug)]
enum Resolved {
    /// An existing file or directory, by its physical path.
    Found(PathBuf),
    /// `/dev/null`: a mask.
    DevNull,
    /// Nothing: the first missing path, joined with what was left to
    /// resolve.
    Missing(PathBuf),
}

/// The longest chain of symlinks followed, as in the kernel.
const MAX_SYMLINKS: u32 = 40;

/// Follows symlinks component by component from the start of `path`.
/// `root` is the generation directory's canonical path: absolute link
/// targets are looked up inside it first.
fn resolve(w: &Walker, path: &Path, shown: &Path) -> Result<Resolved, LoadError> {
    let mut pending = Vec::new();
    let mut cur = PathBuf::new();
    push_components(path, &mut cur, &mut pending);
    walk(w, cur, pending, shown, &mut 0)
}

/// Resolves `name` inside a directory already resolved to `dir`.
fn resolve_in(w: &Walker, dir: &Path, name: &str, shown: &Path) -> Result<Resolved, LoadError> {
    walk(w, dir.to_owned(), vec![OsString::from(name)], shown, &mut 0)
}

/// Resolves the parts in `pending` (a stack, next part last) starting at
/// the physical directory `cur`.
fn walk(
    w: &Walker,
    mut cur: PathBuf,
    mut pending: Vec<OsString>,
    shown: &Path,
    hops: &mut u32,
) -> Result<Resolved, LoadError> {
    while let Some(part) = pending.pop() {
        if part == ".." {
            if cur.file_name().is_some() {
                cur.pop();
            } else {
                cur.push("..");
            }
            continue;
        }
        let next = cur.join(&part);
        if w.dirs.borrow().contains(&next) {
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
            Err(source) => return Err(LoadError::Io { path: shown.to_owned(), source }),
        };
        if !meta.file_type().is_symlink() {
            if meta.is_dir() && !pending.is_empty() {
                w.dirs.borrow_mut().insert(next.clone());
            }
            cur = next;
            continue;
        }
        *hops += 1;
        if *hops > MAX_SYMLINKS {
            return Err(LoadError::SymlinkLoop { path: shown.to_owned() });
        }
        let target = fs::read_link(&next).map_err(|source| LoadError::Io { path: shown.to_owned(), source })?;
        if target == Path::new("/dev/null") && pending.is_empty() {
            return Ok(Resolved::DevNull);
        }
        if target.is_absolute() {
            // Inside the generation first (a fixture with its own store),
            // then on this machine.
            let mut inside = pending.clone();
            push_components(&target, &mut PathBuf::new(), &mut inside);
            match walk(w, w.root.to_owned(), inside, shown, hops)? {
                Resolved::Missing(_) => {}
                found => return Ok(found),
            }
            push_components(&target, &mut cur, &mut pending);
        } else {
            push_components(&target, &mut PathBuf::new(), &mut pending);
        }
    }
    if cur == Path::new("/dev/null") {
        return Ok(Resolved::DevNull);
    }
    Ok(Resolved::Found(cur))
}

/// Pushes `path`'s components onto the stack of parts still to resolve
/// (last component first, so that `pop` yields them in order). A leading
/// `/` resets `cur` to the root directory.
fn push_components(path: &Path, cur: &mut PathBuf, pending: &mut Vec<OsString>) {
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::RootDir => *cur = PathBuf::from("/"),
            Component::Prefix(p) => *cur = PathBuf::from(p.as_os_str()),
            Component::CurDir => {}
            Component::ParentDir => parts.push(OsString::from("..")),
            Component::Normal(n) => parts.push(n.to_owned()),
        }
    }
    pending.extend(parts.into_iter().rev());
}

/// Reads a file as UTF-8 text.
fn read_text(shown: &Path, physical: &Path) -> Result<String, LoadError> {
    let bytes = fs::read(physical).map_err(|source| LoadError::Io { path: shown.to_owned(), source })?;
    utf8(shown, bytes)
}

/// A unit file or drop-in as found on disk.
enum Source {
    Masked,
    Text { shown: PathBuf, text: String },
}

/// Resolves and reads one unit file or drop-in, `name` in the physical
/// directory `dir`.
fn read_source(w: &Walker, dir: &Path, name: &str, shown: &Path) -> Result<Source, LoadError> {
    // The common cases take the kernel's path resolution: a regular file,
    // or a link whose target opens (inside the generation first for an
    // absolute target, then on this machine). Everything else (links that
    // lead nowhere, loops, links through absolute links inside a fixture)
    // goes through the component-wise walk, which also gives the precise
    // error.
    let path = dir.join(name);
    if let Some(file) = w.open_in_root(&path)
        && let Some(source) = read_open(file, shown)?
    {
        return Ok(source);
    }
    let candidates = match fs::read_link(&path) {
        Err(err) if err.kind() == io::ErrorKind::InvalidInput => vec![path],
        Err(_) => Vec::new(),
        Ok(target) if target == Path::new("/dev/null") => return Ok(Source::Masked),
        Ok(target) if target.is_absolute() => {
            vec![w.root.join(target.strip_prefix("/").unwrap_or(&target)), target]
        }
        Ok(target) => vec![dir.join(target)],
    };
    for candidate in candidates {
        if let Some(source) = open_source(&candidate, shown)? {
            return Ok(source);
        }
    }
    match resolve_in(w, dir, name, shown)? {
        Resolved::DevNull => Ok(Source::Masked),
        Resolved::Missing(target) => Err(LoadError::Dangling { path: shown.to_owned(), target }),
        Resolved::Found(physical) => Ok(Source::Text { shown: shown.to_owned(), text: read_text(shown, &physical)? }),
    }
}

/// Opens and reads a unit file or drop-in; `None` when the path does not
/// open (missing, a symlink loop, ...), so the caller can look closer. A
/// character device is `/dev/null`: a mask.
fn open_source(path: &Path, shown: &Path) -> Result<Option<Source>, LoadError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    // Non-blocking, so that a FIFO where a unit file should be cannot hang
    // the planner; for regular files the flag changes nothing.
    let nonblock = i32::try_from(rustix::fs::OFlags::NONBLOCK.bits()).unwrap_or(0);
    let Ok(file) = fs::OpenOptions::new().read(true).custom_flags(nonblock).open(path) else {
        // Missing, a loop, or not permitted: the walk tells which.
        return Ok(None);
    };
    read_open(file, shown)
}

/// Reads an opened unit file or drop-in. A character device is
/// `/dev/null`: a mask. Anything else but a regular file (a directory, a
/// FIFO, a socket) is an error naming the path, as systemd would not load
/// it either.
fn read_open(mut file: fs::File, shown: &Path) -> Result<Option<Source>, LoadError> {
    use std::io::Read as _;
    use std::os::unix::fs::FileTypeExt as _;
    let io_err = |source| LoadError::Io { path: shown.to_owned(), source };
    let meta = file.metadata().map_err(io_err)?;
    if meta.file_type().is_char_device() {
        return Ok(Some(Source::Masked));
    }
    if !meta.is_file() {
        let ty = meta.file_type();
        let what = if ty.is_dir() {
            "a directory"
        } else if ty.is_fifo() {
            "a FIFO"
        } else if ty.is_socket() {
            "a socket"
        } else {
            "a device"
        };
        return Err(io_err(io::Error::new(io::ErrorKind::InvalidInput, format!("{what}, not a regular file"))));
    }
    // One read for the size `fstat` gave and one to see the end; std's
    // `read_to_end` on a file would ask for the size again.
    let mut bytes = vec![0; usize::try_from(meta.len()).unwrap_or(0).saturating_add(1)];
    let mut filled = 0;
    loop {
        if filled == bytes.len() {
            bytes.resize(bytes.len() * 2, 0);
        }
        match file.read(&mut bytes[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(io_err(err)),
        }
    }
    bytes.truncate(filled);
    Ok(Some(Source::Text { shown: shown.to_owned(), text: utf8(shown, bytes)? }))
}

/// Checks that a file's bytes are UTF-8, naming the line of the first bad
/// byte.
fn utf8(shown: &Path, bytes: Vec<u8>) -> Result<String, LoadError> {
    String::from_utf8(bytes).map_err(|err| {
        let valid = err.utf8_error().valid_up_to();
        let line = err.as_bytes()[..valid].iter().filter(|&&b| b == b'\n').count() + 1;
        LoadError::NotUtf8 { path: shown.to_owned(), line: u32::try_from(line).unwrap_or(u32::MAX) }
    })
}

/// Lists a directory's entries by name, sorted.
fn list_dir(shown: &Path, physical: &Path) -> Result<Vec<String>, LoadError> {
    let io_err = |source| LoadError::Io { path: shown.to_owned(), source };
    let mut names = Vec::new();
    for entry in fs::read_dir(physical).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        let name = entry.file_name().into_string().map_err(|name| LoadError::NameNotUtf8 { path: shown.join(name) })?;
        names.push(name);
    }
    names.sort();
    Ok(names)
}

/// Resolves a path that must be an existing directory; `None` when it
/// does not exist or is not a directory.
fn resolve_dir(w: &Walker, path: &Path, shown: &Path) -> Result<Option<PathBuf>, LoadError> {
    match resolve(w, path, shown)? {
        Resolved::Found(physical) if physical.is_dir() => Ok(Some(physical)),
        _ => Ok(None),
    }
}

/// Like [`resolve_dir`] for `name` in the physical directory `dir`.
fn resolve_dir_in(w: &Walker, dir: &Path, name: &str, shown: &Path) -> Result<Option<PathBuf>, LoadError> {
    match resolve_in(w, dir, name, shown)? {
        Resolved::Found(physical) if physical.is_dir() => Ok(Some(physical)),
        _ => Ok(None),
    }
}

/// A unit directory's links: unit → kind (`wants`, ...) → linked units.
type Links = BTreeMap<String, BTreeMap<String, Vec<String>>>;

/// The kinds of link directories next to unit files.
const LINK_KINDS: [&str; 3] = ["wants", "requires", "upholds"];

/// Loads a generation directory.
pub fn load(root: &Path) -> Result<GenerationUnits, LoadError> {
    match fs::metadata(root) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(LoadError::NotAGeneration { path: root.to_owned(), reason: "not a directory".into() });
        }
        Err(err) => return Err(LoadError::NotAGeneration { path: root.to_owned(), reason: err.to_string() }),
    }
    let shown_root = root;
    let root = &fs::canonicalize(root).map_err(|source| LoadError::Io { path: root.to_owned(), source })?;
    let walker = Walker::new(root);
    let w = &walker;
    let (unit_dir_shown, unit_dir, managed) = locate_units(w, shown_root, root)?;
    let (mut units, deps) = read_unit_dir(w, &unit_dir_shown, &unit_dir)?;
    // system-manager masks units through systemd (`MaskUnitFiles`), not in
    // its unit directory: its masked units are masked units here too.
    for (name, entry) in managed.iter().flatten() {
        if entry.masked {
            units.insert(name.clone(), UnitFile { name: name.clone(), masked: true, ..UnitFile::default() });
        }
    }
    // User units (`etc/systemd/user`), for what the plan says about user
    // managers; a generation without them is fine.
    let user_dir_shown = shown_root.join("etc/systemd/user");
    let user_units = match resolve_dir(w, &root.join("etc/systemd/user"), &user_dir_shown)? {
        Some(dir) => read_unit_dir(w, &user_dir_shown, &dir)?.0,
        None => BTreeMap::new(),
    };

    let fstab_shown = shown_root.join("etc/fstab");
    let fstab = match resolve(w, &root.join("etc/fstab"), &fstab_shown)? {
        Resolved::Found(physical) => Some(Fstab::parse(&read_text(&fstab_shown, &physical)?)),
        _ => None,
    };
    let system_conf = match fs::symlink_metadata(root.join("etc/systemd/system.conf")) {
        Ok(_) => identity(w, shown_root, "etc/systemd/system.conf", true)?,
        Err(_) => None,
    };
    let systemd_exe = match fs::symlink_metadata(root.join("systemd")) {
        Ok(_) => identity(w, shown_root, "systemd/lib/systemd/systemd", false)?,
        Err(_) => None,
    };
    let init_path = shown_root.join("init-interface-version");
    let init_interface_version = match resolve(w, &root.join("init-interface-version"), &init_path)? {
        Resolved::Found(physical) => Some(read_text(&init_path, &physical)?.trim().to_owned()),
        _ => None,
    };
    let script = if managed.is_some() { "bin/activate" } else { "activate" };
    let activate = fs::symlink_metadata(root.join(script)).ok().map(|_| shown_root.join(script));

    Ok(GenerationUnits {
        root: shown_root.to_owned(),
        units,
        user_units,
        deps,
        fstab,
        system_conf,
        systemd_exe,
        init_interface_version,
        activate,
        managed,
    })
}

/// The units a system-manager generation manages, by name.
type Managed = BTreeMap<String, crate::generation::ManagedUnit>;

/// How a toplevel lays out its systemd units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// NixOS's (and the test bed's): `etc/systemd/system` in the toplevel.
    Nixos,
    /// system-manager's: `services/services.json` lists the managed units,
    /// whose files are in the static `/etc` tree `etcFiles/etcFiles.json`
    /// names.
    SystemManager,
}

/// Finds the unit directory of the generation at `toplevel` as [`load`]
/// does, following its links (inside the generation first): its path
/// after following them, and the generation's [`Layout`]. Errors name the
/// file at fault; a directory with neither layout is
/// [`LoadError::NoUnitDirectory`].
pub fn unit_directory(toplevel: &Path) -> Result<(PathBuf, Layout), LoadError> {
    let root = &fs::canonicalize(toplevel).map_err(|source| LoadError::Io { path: toplevel.to_owned(), source })?;
    let (_, dir, managed) = locate_units(&Walker::new(root), toplevel, root)?;
    Ok((dir, if managed.is_some() { Layout::SystemManager } else { Layout::Nixos }))
}

/// The unit directory as shown and as found, and for a system-manager
/// generation the units it manages.
fn locate_units(w: &Walker, shown_root: &Path, root: &Path) -> Result<(PathBuf, PathBuf, Option<Managed>), LoadError> {
    let shown = shown_root.join("etc/systemd/system");
    if let Some(dir) = resolve_dir(w, &root.join("etc/systemd/system"), &shown)? {
        return Ok((shown, dir, None));
    }
    if fs::symlink_metadata(root.join("services")).is_ok() {
        let (shown, dir, managed) = system_manager_units(w, shown_root, root)?;
        return Ok((shown, dir, Some(managed)));
    }
    Err(LoadError::NoUnitDirectory { path: shown_root.to_owned() })
}

/// The units of one unit directory (`etc/systemd/system` or
/// `etc/systemd/user`) with their drop-ins merged, and its
/// `.wants`/`.requires`/`.upholds` links.
fn read_unit_dir(w: &Walker, dir_shown: &Path, dir: &Path) -> Result<(BTreeMap<String, UnitFile>, Links), LoadError> {
    let mut fragments: BTreeMap<String, Source> = BTreeMap::new();
    let mut drop_in_dirs: BTreeMap<String, Vec<(String, Source)>> = BTreeMap::new();
    let mut deps = Links::new();

    for name in list_dir(dir_shown, dir)? {
        let shown = dir_shown.join(&name);
        if let Some(unit) = name.strip_suffix(".d").filter(|u| unit_name::is_valid(u)) {
            let Some(dir) = resolve_dir_in(w, dir, &name, &shown)? else { continue };
            let mut files = Vec::new();
            for file in list_dir(&shown, &dir)? {
                if file.ends_with(".conf") {
                    files.push((file.clone(), read_source(w, &dir, &file, &shown.join(&file))?));
                }
            }
            drop_in_dirs.insert(unit.to_owned(), files);
        } else if let Some((unit, kind)) =
            name.rsplit_once('.').filter(|(u, k)| LINK_KINDS.contains(k) && unit_name::is_valid(u))
        {
            let Some(dir) = resolve_dir_in(w, dir, &name, &shown)? else { continue };
            let linked = list_dir(&shown, &dir)?.into_iter().filter(|n| unit_name::is_valid(n)).collect();
            deps.entry(unit.to_owned()).or_default().insert(kind.to_owned(), linked);
        } else if unit_name::is_valid(&name) {
            fragments.insert(name.clone(), read_source(w, dir, &name, &shown)?);
        }
    }

    let mut units = BTreeMap::new();
    let names: std::collections::BTreeSet<&String> = fragments.keys().chain(drop_in_dirs.keys()).collect();
    for name in names {
        let template = unit_name::split_instance(name).map(|(template, _)| template);
        let fragment = fragments.get(name).or_else(|| template.as_ref().and_then(|t| fragments.get(t)));
        let Some(fragment) = fragment else {
            // Drop-ins without a fragment do not make a unit.
            continue;
        };
        let mut unit = UnitFile { name: name.clone(), ..UnitFile::default() };
        let Source::Text { shown, text } = fragment else {
            unit.masked = true;
            units.insert(name.clone(), unit);
            continue;
        };
        unit.apply(shown, text)?;
        unit.fragment = Some(shown.clone());

        // systemd orders all drop-ins of a unit by file name; a drop-in in
        // the instance's own directory replaces the template's drop-in of
        // the same name, and a link to /dev/null removes it.
        let mut by_name: BTreeMap<&str, &Source> = BTreeMap::new();
        if let Some(template) = &template {
            for (file, source) in drop_in_dirs.get(template).into_iter().flatten() {
                by_name.insert(file, source);
            }
        }
        for (file, source) in drop_in_dirs.get(name).into_iter().flatten() {
            by_name.insert(file, source);
            if let Source::Text { shown, .. } = source {
                unit.own_drop_ins.push(shown.clone());
            }
        }
        for source in by_name.values() {
            if let Source::Text { shown, text } = source {
                unit.apply(shown, text)?;
                unit.drop_ins.push(shown.clone());
            }
        }
        unit.finish();
        units.insert(name.clone(), unit);
    }
    Ok((units, deps))
}

/// The unit directory of a system-manager toplevel and the units it
/// manages. The toplevel has no `etc/`: `services/services.json` lists the
/// managed units, and `etcFiles/etcFiles.json` names the static `/etc` tree
/// (`staticEnv`) whose `systemd/system` system-manager links into `/etc`.
fn system_manager_units(w: &Walker, shown_root: &Path, root: &Path) -> Result<(PathBuf, PathBuf, Managed), LoadError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct EtcFiles {
        static_env: String,
    }
    let read_json = |rel: &str| -> Result<(PathBuf, String), LoadError> {
        let shown = shown_root.join(rel);
        match resolve(w, &root.join(rel), &shown)? {
            Resolved::Found(physical) => Ok((shown.clone(), read_text(&shown, &physical)?)),
            Resolved::DevNull | Resolved::Missing(_) => {
                Err(LoadError::Invalid { path: shown, message: "missing from the system-manager generation".into() })
            }
        }
    };
    let invalid = |path: &Path, err: serde_json::Error| LoadError::Invalid {
        path: path.to_owned(),
        message: format!("line {}: not what system-manager writes: {err}", err.line()),
    };
    let (services_path, services) = read_json("services/services.json")?;
    let managed = serde_json::from_str(&services).map_err(|e| invalid(&services_path, e))?;
    let (etc_path, etc) = read_json("etcFiles/etcFiles.json")?;
    let etc: EtcFiles = serde_json::from_str(&etc).map_err(|e| invalid(&etc_path, e))?;
    // Like a link's target, the static tree is looked up inside the
    // generation first (a fixture with its own store), then on the machine.
    let dir = Path::new(&etc.static_env).join("systemd/system");
    let inside = root.join(dir.strip_prefix("/").unwrap_or(&dir));
    for candidate in [inside, dir.clone()] {
        if let Some(physical) = resolve_dir(w, &candidate, &dir)? {
            return Ok((dir, physical, managed));
        }
    }
    Err(LoadError::Invalid {
        path: etc_path,
        message: format!("the static /etc tree it names has no systemd/system directory ({})", dir.display()),
    })
}

/// Loads two generations at once, the new one on a second thread: loading
/// is dominated by file-system calls, which overlap well.
pub fn load_pair(old: &Path, new: &Path) -> (Result<GenerationUnits, LoadError>, Result<GenerationUnits, LoadError>) {
    std::thread::scope(|scope| {
        let handle = scope.spawn(|| load(new));
        let old = load(old);
        let new = handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (old, new)
    })
}

/// Computes a file's identity for the re-exec decision. A file that does
/// not exist on this machine is identified by the path its link names.
fn identity(w: &Walker, shown_root: &Path, rel: &str, read: bool) -> Result<Option<FileIdentity>, LoadError> {
    let shown = &shown_root.join(rel);
    Ok(match resolve(w, &w.root.join(rel), shown)? {
        Resolved::Found(physical) => Some(FileIdentity {
            path: physical.display().to_string(),
            content: if read {
                Some(fs::read(&physical).map_err(|source| LoadError::Io { path: shown.to_owned(), source })?)
            } else {
                None
            },
        }),
        Resolved::Missing(target) if target.is_absolute() => {
            Some(FileIdentity { path: target.display().to_string(), content: None })
        }
        Resolved::Missing(_) | Resolved::DevNull => None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn write(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    #[test]
    fn loads_nixos_layout_with_templates_and_masks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("gen");
        let store = root.join("nix/store/abc-units");
        write(&store.join("a.service"), "[Service]\nExecStart=/bin/a\n");
        write(&store.join("t@.service"), "[Service]\nExecStart=/bin/t %i\n");
        write(&store.join("t@.service.d/10-x.conf"), "[Service]\nEnvironment=X=template\n");
        write(&store.join("t@.service.d/20-y.conf"), "[Service]\nEnvironment=Y=template\n");
        write(&store.join("t@one.service.d/15-z.conf"), "[Service]\nEnvironment=Z=one\n");
        symlink("/dev/null", store.join("t@one.service.d/20-y.conf")).unwrap();
        symlink("/dev/null", store.join("m.service")).unwrap();
        fs::create_dir_all(store.join("multi-user.target.wants")).unwrap();
        symlink("../a.service", store.join("multi-user.target.wants/a.service")).unwrap();
        fs::create_dir_all(root.join("etc/systemd")).unwrap();
        symlink("/nix/store/abc-units", root.join("etc/systemd/system")).unwrap();

        let g = load(&root).unwrap();
        assert_eq!(g.unit("a.service").unwrap().get("Service", "ExecStart"), Some("/bin/a"));
        assert!(g.unit("m.service").unwrap().is_masked());
        let one = g.unit("t@one.service").unwrap();
        assert_eq!(one.values("Service", "Environment"), ["X=template", "Z=one"]);
        assert_eq!(one.own_drop_ins().len(), 1);
        let two = g.unit("t@two.service").unwrap();
        assert_eq!(two.name(), "t@.service");
        assert_eq!(two.values("Service", "Environment"), ["X=template", "Y=template"]);
        assert_eq!(g.linked("multi-user.target", "wants"), ["a.service"]);
    }

    #[test]
    fn dangling_links_and_missing_unit_dir_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let err = load(root).unwrap_err();
        assert!(matches!(err, LoadError::NoUnitDirectory { .. }), "{err}");
        fs::create_dir_all(root.join("etc/systemd/system")).unwrap();
        symlink("/nix/store/nope/x.service", root.join("etc/systemd/system/x.service")).unwrap();
        let err = load(root).unwrap_err().to_string();
        assert!(err.contains("x.service: dangling symlink (to /nix/store/nope/x.service)"), "{err}");
    }

    #[test]
    fn a_fifo_or_directory_for_a_unit_file_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let units = dir.path().join("etc/systemd/system");
        fs::create_dir_all(units.join("d.service")).unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("d.service: cannot read"), "{err}");
        fs::remove_dir(units.join("d.service")).unwrap();
        let fifo = units.join("f.service");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());
        let err = load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("f.service: cannot read"), "{err}");
        let LoadError::Io { source, .. } = err else { panic!("{err:?}") };
        assert_eq!(source.to_string(), "a FIFO, not a regular file");
    }

    #[test]
    fn symlink_loops_end() {
        let dir = tempfile::tempdir().unwrap();
        let units = dir.path().join("etc/systemd/system");
        fs::create_dir_all(&units).unwrap();
        symlink("b.service", units.join("a.service")).unwrap();
        symlink("a.service", units.join("b.service")).unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(matches!(err, LoadError::SymlinkLoop { .. }), "{err}");
    }
}
