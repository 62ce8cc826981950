//! The loader: the only part of this crate that reads the file system.
//!
//! It turns a generation directory (a system toplevel) into a
//! [`GenerationUnits`] value: every unit in `etc/systemd/system` with its
//! drop-ins, the `.wants`/`.requires`/`.upholds` links, `etc/fstab`,
//! `etc/systemd/system.conf`, the systemd binary, `init-interface-version`
//! and the activation script.
//!
//! A generation is read from the generation itself and the Nix store
//! only, through [`generation_fs::GenerationDir`]: links are followed the
//! way NixOS lays a generation out (unit files and whole directories are
//! links into the store, relative or absolute), and a link anywhere else
//! is an error naming it. A fixture that is not in a store may carry its
//! own `nix/store`, which absolute links find first. A link to
//! `/dev/null` masks a unit or a drop-in. A link that leads nowhere is an
//! error, because a real generation is a closed store closure and a
//! dangling link means the input is not what it claims. Every file is
//! opened non-blocking, must be a regular file and is read up to a limit
//! (a unit file up to [`UNIT_FILE_LIMIT`]).
//!
//! Two links out are NixOS's own: `etc/fstab -> /etc/fstab` and
//! `etc/systemd/system.conf -> /etc/systemd/system.conf` name the host
//! file that NixOS's switch reads for that purpose anyway. The loader
//! reads that host file for planning; nothing of it reaches a report (it
//! is not a unit file, so no diff shows it, and no error quotes a file).
//!
//! The text of every unit file and drop-in is kept
//! ([`GenerationUnits::unit_file_text`]), so that a report shows exactly
//! the bytes the planner parsed.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use generation_fs::{GenerationDir, Limit, ReadError, Resolved};

use crate::fstab::Fstab;
use crate::generation::{FileIdentity, GenerationUnits, Links, Units};
use crate::unit_file::{ParseError, UnitFile};

mod boot;
mod scan;

/// The most read from a unit file or drop-in. systemd reads lines of up to
/// 1 MiB; no real unit comes near this.
pub const UNIT_FILE_LIMIT: Limit = Limit::new(4 << 20, "a unit file");
/// The most read from `etc/fstab`.
const FSTAB_LIMIT: Limit = Limit::new(1 << 20, "fstab");
/// The most read from `etc/systemd/system.conf`.
const SYSTEM_CONF_LIMIT: Limit = Limit::new(1 << 20, "system.conf");
/// The most read from `init-interface-version` (`systemd 2`).
const INIT_INTERFACE_LIMIT: Limit = Limit::new(1 << 10, "init-interface-version");
/// The most read from system-manager's `services.json` and `etcFiles.json`.
const SYSTEM_MANAGER_JSON_LIMIT: Limit = Limit::new(16 << 20, "a system-manager JSON file");
/// The most of a JSON parser's message quoted in an error.
const QUOTED_MESSAGE: usize = 160;

/// The host files a generation may link to: its file, and the host file
/// that NixOS's switch reads for the same purpose.
const HOST_FILES: [(&str, &str); 2] =
    [("etc/fstab", "/etc/fstab"), ("etc/systemd/system.conf", "/etc/systemd/system.conf")];

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
    /// A directory could not be listed.
    #[error("{}: cannot read", path.display())]
    Io {
        /// The path inside the generation.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A file could not be read under the read rule: a link out of the
    /// generation and the store, a dangling link, a loop, not a regular
    /// file, too large.
    #[error(transparent)]
    Read(#[from] ReadError),
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
    /// A unit file or drop-in has a syntax error.
    #[error(transparent)]
    Parse(#[from] ParseError),
}

/// Reads a file of the generation at `rel` as UTF-8 text; `None` when it
/// does not exist or is a link to `/dev/null`. A link out of the
/// generation and the store is an error, except a link from `rel` to the
/// host file [`HOST_FILES`] pairs with it.
fn read_text(g: &GenerationDir, rel: &str, shown: &Path, limit: Limit) -> Result<Option<String>, LoadError> {
    let bytes = match g.resolve(Path::new(rel), shown)? {
        Resolved::Found(physical) => g.read(&physical, shown, limit)?,
        Resolved::DevNull | Resolved::Missing(_) => return Ok(None),
        Resolved::Outside { target, rest, .. } if host_file(rel, &target, &rest) => {
            match generation_fs::read_host(&target, shown, limit)? {
                Some(bytes) => bytes,
                None => return Ok(None),
            }
        }
        outside @ Resolved::Outside { .. } => return Err(outside_error(&outside, shown)),
    };
    utf8(shown, bytes).map(Some)
}

/// Tells whether a link out of the generation, met while resolving `rel`,
/// is `rel`'s own link to the host file NixOS's switch reads for it.
fn host_file(rel: &str, target: &Path, rest: &Path) -> bool {
    rest.as_os_str().is_empty() && HOST_FILES.iter().any(|(file, host)| *file == rel && target == Path::new(host))
}

/// The error for a resolution that left the generation and the store.
fn outside_error(resolved: &Resolved, shown: &Path) -> LoadError {
    match resolved.outside_error(shown) {
        Some(err) => LoadError::Read(err),
        None => LoadError::Invalid { path: shown.to_owned(), message: "cannot be read".into() },
    }
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

/// What a resolution found, as a directory: its physical path, `None`
/// when there is none (missing, a mask, a file). A link out of the
/// generation and the store is an error.
fn as_dir(resolved: Resolved, shown: &Path) -> Result<Option<PathBuf>, LoadError> {
    match resolved {
        Resolved::Found(physical) if physical.is_dir() => Ok(Some(physical)),
        outside @ Resolved::Outside { .. } => Err(outside_error(&outside, shown)),
        _ => Ok(None),
    }
}

/// Resolves `rel` in the generation as a directory (see [`as_dir`]).
fn resolve_dir(g: &GenerationDir, rel: &str, shown: &Path) -> Result<Option<PathBuf>, LoadError> {
    as_dir(g.resolve(Path::new(rel), shown)?, shown)
}

/// Like [`resolve_dir`] for `name` in the physical directory `dir`.
fn resolve_dir_in(g: &GenerationDir, dir: &Path, name: &str, shown: &Path) -> Result<Option<PathBuf>, LoadError> {
    as_dir(g.resolve_in(dir, name, shown)?, shown)
}

/// A unit directory's links as read: unit → kind (one of
/// [`crate::generation::LINK_KINDS`]) → linked units
/// ([`crate::generation::Links::join`]).
type ReadLinks = BTreeMap<String, BTreeMap<&'static str, Box<str>>>;

/// A generation opened, with its system unit directory found and listed.
struct Opened {
    shown_root: PathBuf,
    g: GenerationDir,
    unit_dir_shown: PathBuf,
    unit_dir: PathBuf,
    names: Vec<String>,
    managed: Option<Managed>,
}

impl Opened {
    fn open(root: &Path) -> Result<Opened, LoadError> {
        match fs::metadata(root) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(LoadError::NotAGeneration { path: root.to_owned(), reason: "not a directory".into() });
            }
            Err(err) => return Err(LoadError::NotAGeneration { path: root.to_owned(), reason: err.to_string() }),
        }
        let g = GenerationDir::open(root)?;
        let (unit_dir_shown, unit_dir, managed) = locate_units(&g, root)?;
        let names = list_dir(&unit_dir_shown, &unit_dir)?;
        Ok(Opened { shown_root: root.to_owned(), g, unit_dir_shown, unit_dir, names, managed })
    }

    fn dir(&self) -> scan::Dir<'_> {
        scan::Dir { root: &self.shown_root, shown: &self.unit_dir_shown, physical: &self.unit_dir, names: &self.names }
    }
}

/// Loads a generation directory.
pub fn load(root: &Path) -> Result<GenerationUnits, LoadError> {
    let opened = Opened::open(root)?;
    let (scan, _) = scan::scan_dirs(Some(&opened.dir()), None);
    let scan = scan.unwrap_or_else(|| Ok(scan::Scan::default()))?;
    finish(opened, &scan, None, true)
}

/// Loads two generations at once. Most of their files are the same files
/// of the store: each is read once, and the units made of them are parsed
/// once (see [`scan`]).
pub fn load_pair(old: &Path, new: &Path) -> (Result<GenerationUnits, LoadError>, Result<GenerationUnits, LoadError>) {
    let (old, new) = (Opened::open(old), Opened::open(new));
    // Two trees of kernel modules that are the same store path hold the
    // same modules: they are not listed.
    let list_modules = match (&old, &new) {
        (Ok(old), Ok(new)) => boot::must_list(&old.g, &new.g),
        _ => true,
    };
    let (old_dir, new_dir) = (old.as_ref().ok().map(Opened::dir), new.as_ref().ok().map(Opened::dir));
    let (old_scan, new_scan) = scan::scan_dirs(old_dir.as_ref(), new_dir.as_ref());
    let scanned = |opened: Result<Opened, LoadError>, scan: scan::Outcome| {
        let scan = scan.unwrap_or_else(|| Ok(scan::Scan::default()));
        opened.and_then(|opened| Ok((opened, scan?)))
    };
    // Each scan is dropped once its units are put together.
    let old = scanned(old, old_scan).and_then(|(opened, scan)| finish(opened, &scan, None, list_modules));
    let twin = old.as_ref().ok().map(|old| &old.units);
    let new = scanned(new, new_scan).and_then(|(opened, scan)| finish(opened, &scan, twin, list_modules));
    (old, new)
}

/// Puts a generation together from its scanned unit directory and reads
/// the rest: user units, fstab, system.conf, the systemd binary's identity,
/// init-interface-version, the activation script and what it boots (its
/// module files only when `list_modules` is set). `twin` is the other
/// generation's units, whose parsed settings this one shares where they
/// are made of the same texts.
fn finish(
    opened: Opened,
    scan: &scan::Scan,
    twin: Option<&Units>,
    list_modules: bool,
) -> Result<GenerationUnits, LoadError> {
    let Opened { shown_root, g, unit_dir_shown, managed, .. } = opened;
    let g = &g;
    let shown_root = shown_root.as_path();
    let mut units = scan::units(scan, &unit_dir_shown, twin)?;
    // system-manager masks units through systemd (`MaskUnitFiles`), not in
    // its unit directory: its masked units are masked units here too.
    let mut masks = managed.iter().flatten().filter(|(_, entry)| entry.masked).peekable();
    if masks.peek().is_some() {
        let masked = masks.map(|(name, _)| (name.as_str().into(), UnitFile { masked: true, ..UnitFile::default() }));
        units = units.into_iter().chain(masked).collect();
    }
    // User units (`etc/systemd/user`), for what the plan says about user
    // managers; a generation without them is fine.
    let user_dir_shown = shown_root.join("etc/systemd/user");
    let user_units = match resolve_dir(g, "etc/systemd/user", &user_dir_shown)? {
        Some(physical) => {
            let names = list_dir(&user_dir_shown, &physical)?;
            let dir = scan::Dir { root: shown_root, shown: &user_dir_shown, physical: &physical, names: &names };
            match scan::scan_dirs(Some(&dir), None).0 {
                Some(scan) => scan::units(&scan?, &user_dir_shown, None)?,
                None => Units::default(),
            }
        }
        None => Units::default(),
    };

    let fstab = read_text(g, "etc/fstab", &shown_root.join("etc/fstab"), FSTAB_LIMIT)?.map(|text| Fstab::parse(&text));
    let system_conf = match fs::symlink_metadata(g.root().join("etc/systemd/system.conf")) {
        Ok(_) => system_conf_identity(g, &shown_root.join("etc/systemd/system.conf"))?,
        Err(_) => None,
    };
    let systemd_exe = match fs::symlink_metadata(g.root().join("systemd")) {
        Ok(_) => systemd_identity(g, &shown_root.join("systemd/lib/systemd/systemd"))?,
        Err(_) => None,
    };
    let init_path = shown_root.join("init-interface-version");
    let init_interface_version =
        read_text(g, "init-interface-version", &init_path, INIT_INTERFACE_LIMIT)?.map(|text| text.trim().to_owned());
    let script = if managed.is_some() { "bin/activate" } else { "activate" };
    let activate = fs::symlink_metadata(g.root().join(script)).ok().map(|_| shown_root.join(script));
    let boot = boot::read(g, shown_root, list_modules)?;

    Ok(GenerationUnits {
        root: shown_root.to_owned(),
        units,
        user_units,
        deps: Links::new(&scan.deps),
        unit_dir: unit_dir_shown,
        fstab,
        system_conf,
        systemd_exe,
        init_interface_version,
        activate,
        managed,
        boot,
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
/// does, following its links under the same rule: its path after
/// following them, and the generation's [`Layout`]. Errors name the file
/// at fault; a directory with neither layout is
/// [`LoadError::NoUnitDirectory`].
pub fn unit_directory(toplevel: &Path) -> Result<(PathBuf, Layout), LoadError> {
    let g = &GenerationDir::open(toplevel)?;
    let (_, dir, managed) = locate_units(g, toplevel)?;
    Ok((dir, if managed.is_some() { Layout::SystemManager } else { Layout::Nixos }))
}

/// The unit directory as shown and as found, and for a system-manager
/// generation the units it manages.
fn locate_units(g: &GenerationDir, shown_root: &Path) -> Result<(PathBuf, PathBuf, Option<Managed>), LoadError> {
    let shown = shown_root.join("etc/systemd/system");
    if let Some(dir) = resolve_dir(g, "etc/systemd/system", &shown)? {
        return Ok((shown, dir, None));
    }
    if fs::symlink_metadata(g.root().join("services")).is_ok() {
        let (shown, dir, managed) = system_manager_units(g, shown_root)?;
        return Ok((shown, dir, Some(managed)));
    }
    Err(LoadError::NoUnitDirectory { path: shown_root.to_owned() })
}

/// The unit directory of a system-manager toplevel and the units it
/// manages. The toplevel has no `etc/`: `services/services.json` lists the
/// managed units, and `etcFiles/etcFiles.json` names the static `/etc` tree
/// (`staticEnv`) whose `systemd/system` system-manager links into `/etc`.
fn system_manager_units(g: &GenerationDir, shown_root: &Path) -> Result<(PathBuf, PathBuf, Managed), LoadError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct EtcFiles {
        static_env: String,
    }
    let read_json = |rel: &str| -> Result<(PathBuf, String), LoadError> {
        let shown = shown_root.join(rel);
        match read_text(g, rel, &shown, SYSTEM_MANAGER_JSON_LIMIT)? {
            Some(text) => Ok((shown, text)),
            None => {
                Err(LoadError::Invalid { path: shown, message: "missing from the system-manager generation".into() })
            }
        }
    };
    let invalid = |path: &Path, err: serde_json::Error| LoadError::Invalid {
        path: path.to_owned(),
        message: format!("line {}: not what system-manager writes: {}", err.line(), bounded(&err.to_string())),
    };
    let (services_path, services) = read_json("services/services.json")?;
    let managed = serde_json::from_str(&services).map_err(|e| invalid(&services_path, e))?;
    let (etc_path, etc) = read_json("etcFiles/etcFiles.json")?;
    let etc: EtcFiles = serde_json::from_str(&etc).map_err(|e| invalid(&etc_path, e))?;
    // The static tree is followed as a link from etcFiles.json would be:
    // into the store only (inside a fixture's own store first).
    let dir = Path::new(&etc.static_env).join("systemd/system");
    let resolved = g.resolve_named(&dir, &etc_path, &etc_path)?;
    if let Some(physical) = as_dir(resolved, &etc_path)? {
        return Ok((dir, physical, managed));
    }
    Err(LoadError::Invalid {
        path: etc_path,
        message: format!("the static /etc tree it names has no systemd/system directory ({})", dir.display()),
    })
}

/// A message from a parser, cut to [`QUOTED_MESSAGE`] characters: it may
/// quote the file.
fn bounded(message: &str) -> String {
    match message.char_indices().nth(QUOTED_MESSAGE) {
        Some((end, _)) => format!("{}...", &message[..end]),
        None => message.to_owned(),
    }
}

/// The identity of `etc/systemd/system.conf` for the re-exec decision:
/// its path after following links, and its content. A link to a store
/// path that is not on this machine is identified by the path it names;
/// NixOS's `-> /etc/systemd/system.conf` by that path and the host file's
/// content.
fn system_conf_identity(g: &GenerationDir, shown: &Path) -> Result<Option<FileIdentity>, LoadError> {
    const REL: &str = "etc/systemd/system.conf";
    Ok(match g.resolve(Path::new(REL), shown)? {
        Resolved::Found(physical) => Some(FileIdentity {
            content: Some(g.read(&physical, shown, SYSTEM_CONF_LIMIT)?),
            path: physical.display().to_string(),
        }),
        Resolved::Missing(target) if target.is_absolute() => {
            Some(FileIdentity { path: target.display().to_string(), content: None })
        }
        Resolved::Missing(_) | Resolved::DevNull => None,
        Resolved::Outside { target, rest, .. } if host_file(REL, &target, &rest) => Some(FileIdentity {
            content: generation_fs::read_host(&target, shown, SYSTEM_CONF_LIMIT)?,
            path: target.display().to_string(),
        }),
        outside @ Resolved::Outside { .. } => return Err(outside_error(&outside, shown)),
    })
}

/// The identity of the systemd binary (`systemd/lib/systemd/systemd`) for
/// the re-exec decision: its path after following links, never its
/// content. A link out of the generation and the store is not followed:
/// the binary is identified by the path the link names.
fn systemd_identity(g: &GenerationDir, shown: &Path) -> Result<Option<FileIdentity>, LoadError> {
    Ok(match g.resolve(Path::new("systemd/lib/systemd/systemd"), shown)? {
        Resolved::Found(physical) => Some(FileIdentity { path: physical.display().to_string(), content: None }),
        Resolved::Missing(target) if target.is_absolute() => {
            Some(FileIdentity { path: target.display().to_string(), content: None })
        }
        Resolved::Outside { target, rest, .. } if target.is_absolute() => {
            Some(FileIdentity { path: target.join(rest).display().to_string(), content: None })
        }
        Resolved::Missing(_) | Resolved::DevNull => None,
        outside @ Resolved::Outside { .. } => return Err(outside_error(&outside, shown)),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
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
        assert_eq!(one.own_drop_ins().count(), 1);
        assert_eq!(one.drop_ins().len(), 2);
        assert_eq!(one.fragment_name("t@one.service").as_deref(), Some("t@.service"));
        let (name, two) = g.unit_with_name("t@two.service").unwrap();
        assert_eq!(name, "t@.service");
        assert_eq!(two.values("Service", "Environment"), ["X=template", "Y=template"]);
        assert_eq!(g.linked("multi-user.target", "wants").collect::<Vec<_>>(), ["a.service"]);
        assert_eq!(g.linked("multi-user.target", "requires").count(), 0);
        assert_eq!(
            g.linked_all().map(|(u, k, n)| (u, k, n.count())).collect::<Vec<_>>(),
            [("multi-user.target", "wants", 1)]
        );
    }

    #[test]
    fn syntax_errors_name_the_file_they_are_in() {
        let dir = tempfile::tempdir().unwrap();
        let units = dir.path().join("etc/systemd/system");
        let cases: [(&[(&str, &str)], &str); 4] = [
            (&[("a.service", "[Service]\nExecStart=/bin/a\nbad\n")], "a.service:3"),
            (&[("a.service", "[Service]\n"), ("a.service.d/x.conf", "[Service]\n\nbad\n")], "a.service.d/x.conf:3"),
            // An instance's file and its template's drop-in, the template
            // without a file of its own.
            (&[("t@one.service", "[Service]\n"), ("t@.service.d/x.conf", "bad\n")], "t@.service.d/x.conf:1"),
            // An instance without a file, its template's, and its own drop-in.
            (&[("t@.service", "[Service]\n"), ("t@one.service.d/x.conf", "[Unit\n")], "t@one.service.d/x.conf:1"),
        ];
        for (files, shown) in cases {
            let _ = fs::remove_dir_all(&units);
            for (rel, text) in files {
                write(&units.join(rel), text);
            }
            let err = load(dir.path()).unwrap_err().to_string();
            assert!(err.starts_with(&format!("{}: ", units.join(shown).display())), "{shown}: {err}");
        }
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
        let LoadError::Read(ReadError::Io { source, .. }) = err else { panic!("{err:?}") };
        assert_eq!(source.to_string(), "a FIFO, not a regular file");
    }

    /// A generation at `root` with a kernel, an initrd, a command line and
    /// a module tree of release 6.6.1 in its own store, as NixOS lays them
    /// out: the tree a `buildEnv` of links into the kernel's modules and an
    /// extra module package.
    fn booting_generation(root: &Path, tree: &str) {
        fs::create_dir_all(root.join("etc/systemd/system")).unwrap();
        let store = root.join("nix/store");
        write(&store.join("aaaa-linux/bzImage"), "kernel");
        symlink("/nix/store/aaaa-linux/bzImage", root.join("kernel")).unwrap();
        symlink("/nix/store/bbbb-initrd/initrd", root.join("initrd")).unwrap();
        write(&root.join("kernel-params"), "loglevel=4 init=/x\n");
        write(&store.join("iiii-switch-inhibitors"), r#"{"dbus-implementation":"broker"}"#);
        symlink("/nix/store/iiii-switch-inhibitors", root.join("switch-inhibitors")).unwrap();
        let modules = store.join("kkkk-linux-modules/lib/modules/6.6.1");
        write(&modules.join("kernel/drivers/net/dummy.ko.xz"), "dummy");
        write(&modules.join("kernel/fs/loop.ko.zst"), "loop");
        write(&store.join("wwww-wireguard/lib/modules/6.6.1/extra/wireguard.ko"), "wg");
        let release = store.join(tree).join("lib/modules/6.6.1");
        fs::create_dir_all(release.join("extra")).unwrap();
        symlink("/nix/store/kkkk-linux-modules/lib/modules/6.6.1/kernel", release.join("kernel")).unwrap();
        symlink("/nix/store/wwww-wireguard/lib/modules/6.6.1/extra/wireguard.ko", release.join("extra/wireguard.ko"))
            .unwrap();
        write(&release.join("extra/README"), "not a module");
        // Headers and sources are not entered (this one leads nowhere).
        symlink("/nix/store/dddd-linux-dev/lib/modules/6.6.1/build", release.join("build")).unwrap();
        write(
            &release.join("modules.dep"),
            "kernel/drivers/net/dummy.ko.xz:\n/lib/modules/6.6.1/extra/wireguard.ko: kernel/fs/loop.ko.zst\n",
        );
        symlink(format!("/nix/store/{tree}"), root.join("kernel-modules")).unwrap();
    }

    #[test]
    fn reads_what_a_generation_boots_without_reading_kernel_or_initrd() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("gen");
        booting_generation(&root, "mmmm-kernel-modules");
        let boot = load(&root).unwrap().boot;
        assert_eq!(boot.kernel.as_deref(), Some("/nix/store/aaaa-linux/bzImage"));
        assert_eq!(boot.initrd.as_deref(), Some("/nix/store/bbbb-initrd/initrd"));
        assert_eq!(boot.kernel_params.as_deref(), Some("loglevel=4 init=/x"));
        assert_eq!(boot.switch_inhibitors.unwrap()["dbus-implementation"], "broker");
        let tree = boot.modules.unwrap();
        assert_eq!(tree.identity.as_deref(), Some("/nix/store/mmmm-kernel-modules"));
        let release = &tree.releases["6.6.1"];
        let modules: Vec<(&str, &str)> = release.modules.iter().map(|(p, i)| (p.as_str(), i.as_str())).collect();
        assert_eq!(
            modules,
            [
                ("extra/wireguard.ko", "/nix/store/wwww-wireguard/lib/modules/6.6.1/extra/wireguard.ko"),
                (
                    "kernel/drivers/net/dummy.ko.xz",
                    "/nix/store/kkkk-linux-modules/lib/modules/6.6.1/kernel/drivers/net/dummy.ko.xz"
                ),
                ("kernel/fs/loop.ko.zst", "/nix/store/kkkk-linux-modules/lib/modules/6.6.1/kernel/fs/loop.ko.zst"),
            ]
        );
        let dep: Vec<&str> = release.dep.iter().map(String::as_str).collect();
        assert_eq!(dep, ["extra/wireguard.ko", "kernel/drivers/net/dummy.ko.xz"]);
        // A module file in no store is known by its content.
        let plain = dir.path().join("plain");
        fs::create_dir_all(plain.join("etc/systemd/system")).unwrap();
        write(&plain.join("kernel-modules/lib/modules/6.6.1/extra/a.ko"), "a");
        let tree = load(&plain).unwrap().boot.modules.unwrap();
        assert_eq!(tree.identity, None);
        let a = &tree.releases["6.6.1"].modules["extra/a.ko"];
        assert!(a.starts_with("sha256:ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"), "{a}");
    }

    #[test]
    fn a_pair_lists_two_module_trees_only_when_they_differ() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("c"));
        booting_generation(&a, "mmmm-kernel-modules");
        booting_generation(&b, "mmmm-kernel-modules");
        booting_generation(&c, "nnnn-kernel-modules");
        let (old, new) = load_pair(&a, &b);
        let (old, new) = (old.unwrap().boot.modules.unwrap(), new.unwrap().boot.modules.unwrap());
        assert!(old.releases["6.6.1"].modules.is_empty() && new.releases["6.6.1"].modules.is_empty());
        assert_eq!(new.releases["6.6.1"].dep.len(), 2, "modules.dep is read all the same");
        let (old, new) = load_pair(&a, &c);
        assert_eq!(old.unwrap().boot.modules.unwrap().releases["6.6.1"].modules.len(), 3);
        assert_eq!(new.unwrap().boot.modules.unwrap().releases["6.6.1"].modules.len(), 3);
    }

    #[test]
    fn files_of_generations_in_a_store_are_known_by_their_content_not_their_paths() {
        // Two generations, two store paths, one kernel file each, the same.
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        for side in ["a", "b"] {
            let root = store.join(side);
            fs::create_dir_all(root.join("etc/systemd/system")).unwrap();
            write(&root.join("kernel"), "the same kernel");
            write(&root.join("kernel-modules/lib/modules/6.6.1/extra/a.ko"), "a");
        }
        let (a, b) = load_pair(&store.join("a"), &store.join("b"));
        let (a, b) = (a.unwrap().boot, b.unwrap().boot);
        assert_eq!(a.kernel, b.kernel);
        assert!(a.kernel.as_deref().unwrap().starts_with("sha256:"), "{:?}", a.kernel);
        let (ta, tb) = (a.modules.unwrap(), b.modules.unwrap());
        assert_eq!((&ta.identity, &tb.identity), (&None, &None));
        assert_eq!(ta.releases["6.6.1"].modules, tb.releases["6.6.1"].modules);
    }

    #[test]
    fn a_module_tree_that_leads_out_nowhere_or_around_in_circles_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("gen");
        booting_generation(&root, "mmmm-kernel-modules");
        let extra = root.join("nix/store/mmmm-kernel-modules/lib/modules/6.6.1/extra");
        let shown = |name: &str| root.join("kernel-modules/lib/modules/6.6.1/extra").join(name);
        symlink("/etc/passwd", extra.join("passwd.ko")).unwrap();
        let err = load(&root).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{}: ", shown("passwd.ko").display())), "{err}");
        assert!(err.ends_with("passwd.ko links outside the generation and the Nix store (to /etc/passwd)"), "{err}");
        fs::remove_file(extra.join("passwd.ko")).unwrap();
        symlink("/nix/store/gone/x.ko", extra.join("gone.ko")).unwrap();
        let err = load(&root).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{}: dangling symlink", shown("gone.ko").display())), "{err}");
        fs::remove_file(extra.join("gone.ko")).unwrap();
        symlink(".", extra.join("again")).unwrap();
        let err = load(&root).unwrap_err().to_string();
        assert!(err.ends_with("nested more than 16 directories deep"), "{err}");
        fs::remove_file(extra.join("again")).unwrap();
        // Switch inhibitors that are not what NixOS writes are named, not quoted.
        let inhibitors = root.join("nix/store/iiii-switch-inhibitors");
        fs::write(&inhibitors, "[\"SECRET\"]").unwrap();
        let err = load(&root).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "{}: line 1: not a JSON object of strings, as NixOS writes its switch inhibitors",
                root.join("switch-inhibitors").display()
            )
        );
        fs::write(&inhibitors, "{\"a\": 1}").unwrap();
        assert!(load(&root).unwrap_err().to_string().contains("not a JSON object of strings"));
    }

    /// Loads `root` on another thread, failing instead of hanging.
    fn load_within_seconds(root: &Path) -> Result<GenerationUnits, LoadError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let root = root.to_owned();
        std::thread::spawn(move || {
            let _ = tx.send(load(&root));
        });
        rx.recv_timeout(std::time::Duration::from_secs(10)).expect("loading hangs")
    }

    fn mkfifo(path: &Path) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        assert!(std::process::Command::new("mkfifo").arg(path).status().unwrap().success());
    }

    #[test]
    fn a_fifo_for_fstab_system_conf_or_init_interface_version_is_an_error_not_a_hang() {
        for rel in ["etc/fstab", "etc/systemd/system.conf", "init-interface-version"] {
            let dir = tempfile::tempdir().unwrap();
            fs::create_dir_all(dir.path().join("etc/systemd/system")).unwrap();
            mkfifo(&dir.path().join(rel));
            let err = load_within_seconds(dir.path()).unwrap_err();
            let LoadError::Read(ReadError::Io { path, source }) = &err else { panic!("{rel}: {err:?}") };
            assert_eq!(path, &dir.path().join(rel));
            assert_eq!(source.to_string(), "a FIFO, not a regular file", "{rel}");
            // Linked from the generation's own store, the same.
            fs::remove_file(dir.path().join(rel)).unwrap();
            mkfifo(&dir.path().join("nix/store/ffff-fifo/fifo"));
            symlink("/nix/store/ffff-fifo/fifo", dir.path().join(rel)).unwrap();
            let err = load_within_seconds(dir.path()).unwrap_err();
            assert!(err.to_string().ends_with(&format!("{rel}: cannot read")), "{rel}: {err}");
        }
    }

    #[test]
    fn reads_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let units = dir.path().join("etc/systemd/system");
        fs::create_dir_all(&units).unwrap();
        // Sparse: the size, without writing it.
        let big = fs::File::create(units.join("big.service")).unwrap();
        big.set_len(UNIT_FILE_LIMIT.bytes + 1).unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(matches!(err, LoadError::Read(ReadError::TooLarge { .. })), "{err:?}");
        assert!(err.to_string().ends_with("big.service: larger than 4 MiB, the most read from a unit file"), "{err}");
        fs::remove_file(units.join("big.service")).unwrap();
        fs::File::create(dir.path().join("etc/fstab")).unwrap().set_len(FSTAB_LIMIT.bytes + 1).unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.ends_with("etc/fstab: larger than 1 MiB, the most read from fstab"), "{err}");
        fs::remove_file(dir.path().join("etc/fstab")).unwrap();
        fs::write(dir.path().join("init-interface-version"), "x".repeat(2048)).unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.ends_with("init-interface-version: larger than 1 KiB, the most read from init-interface-version"));
        assert!(!err.contains("xxx"), "{err}");
    }

    #[test]
    fn links_out_of_the_generation_are_errors_naming_the_link() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("gen");
        let units = root.join("etc/systemd/system");
        fs::create_dir_all(&units).unwrap();
        write(&dir.path().join("secret.ini"), "[Service]\nSecret=MARKER\n");
        symlink(dir.path().join("secret.ini"), units.join("a.service")).unwrap();
        let err = load(&root).unwrap_err().to_string();
        let expected = format!(
            "{}: links outside the generation and the Nix store (to {})",
            units.join("a.service").display(),
            dir.path().join("secret.ini").display()
        );
        assert_eq!(err, expected);
        fs::remove_file(units.join("a.service")).unwrap();
        // A unit directory linked out of the generation.
        fs::create_dir_all(dir.path().join("units")).unwrap();
        symlink(dir.path().join("units"), units.join("a.service.d")).unwrap();
        let err = load(&root).unwrap_err().to_string();
        assert!(err.contains("a.service.d: links outside the generation"), "{err}");
        fs::remove_file(units.join("a.service.d")).unwrap();
        // Only NixOS's own links to the host files may leave it.
        for (rel, target) in [("init-interface-version", "/etc/os-release"), ("etc/fstab", "/etc/mtab")] {
            symlink(target, root.join(rel)).unwrap();
            let err = load(&root).unwrap_err().to_string();
            assert!(err.ends_with(&format!("{rel}: links outside the generation and the Nix store (to {target})")));
            fs::remove_file(root.join(rel)).unwrap();
        }
    }

    #[test]
    fn nixos_links_to_the_host_fstab_and_system_conf_are_read() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("etc/systemd/system")).unwrap();
        symlink("/etc/fstab", dir.path().join("etc/fstab")).unwrap();
        symlink("/etc/systemd/system.conf", dir.path().join("etc/systemd/system.conf")).unwrap();
        let g = load(dir.path()).unwrap();
        let host_fstab = fs::read_to_string("/etc/fstab").ok().map(|text| Fstab::parse(&text));
        assert_eq!(g.fstab(), host_fstab.as_ref());
        let conf = g.system_conf().unwrap();
        assert_eq!(conf.path, "/etc/systemd/system.conf");
        assert_eq!(conf.content, fs::read("/etc/systemd/system.conf").ok());
    }

    #[test]
    fn keeps_the_text_it_parsed() {
        let dir = tempfile::tempdir().unwrap();
        let units = dir.path().join("etc/systemd/system");
        write(&units.join("a.service"), "\u{feff}[Service]\nExecStart=/bin/a\n");
        write(&units.join("a.service.d/x.conf"), "[Service]\nNice=1\n");
        symlink("/dev/null", units.join("m.service")).unwrap();
        let g = load(dir.path()).unwrap();
        assert_eq!(g.unit_dir(), units);
        assert_eq!(g.unit_file_text("a.service"), Some("\u{feff}[Service]\nExecStart=/bin/a\n"));
        assert_eq!(g.unit_file_text("a.service.d/x.conf"), Some("[Service]\nNice=1\n"));
        assert_eq!(g.unit_file_text("m.service"), None);
        assert_eq!(g.unit("a.service").unwrap().get("Service", "ExecStart"), Some("/bin/a"));
    }

    #[test]
    fn symlink_loops_end() {
        let dir = tempfile::tempdir().unwrap();
        let units = dir.path().join("etc/systemd/system");
        fs::create_dir_all(&units).unwrap();
        symlink("b.service", units.join("a.service")).unwrap();
        symlink("a.service", units.join("b.service")).unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(matches!(err, LoadError::Read(ReadError::Loop { .. })), "{err}");
    }

    /// A store (a directory named `store`) holding two generations `a` and
    /// `b` of `n` units each, linked by absolute paths as NixOS links
    /// them; every tenth unit differs in `b`. Unit 1 has a drop-in in
    /// both, the same file.
    fn store_pair(n: usize) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        for (side, changed) in [("a", false), ("b", true)] {
            let units = store.join(side).join("etc/systemd/system");
            fs::create_dir_all(&units).unwrap();
            for i in 0..n {
                let name = format!("u-{i:04}.service");
                let version = if changed && i % 10 == 0 { 2 } else { 1 };
                let path = store.join(format!("{i:04}-v{version}-unit/{name}"));
                write(&path, &format!("[Service]\nExecStart=/bin/u {i}\nEnvironment=V={version}\n"));
                symlink(&path, units.join(&name)).unwrap();
            }
            let drop_in = store.join("dd-drop-in/over.conf");
            write(&drop_in, "[Service]\nNice=5\n");
            fs::create_dir_all(units.join("u-0001.service.d")).unwrap();
            symlink(&drop_in, units.join("u-0001.service.d/over.conf")).unwrap();
        }
        let (a, b) = (store.join("a"), store.join("b"));
        (dir, a, b)
    }

    #[test]
    fn a_pair_reads_the_files_both_generations_link_once_and_loads_what_each_alone_loads() {
        let (_dir, a, b) = store_pair(700);
        let (old, new) = load_pair(&a, &b);
        let (old, new) = (old.unwrap(), new.unwrap());
        assert_eq!(old.units, load(&a).unwrap().units);
        assert_eq!(new.units, load(&b).unwrap().units);
        let text_shared = |rel: &str| {
            std::ptr::eq(old.unit_file_text(rel).unwrap().as_ptr(), new.unit_file_text(rel).unwrap().as_ptr())
        };
        let settings_shared = |name: &str| {
            std::sync::Arc::ptr_eq(&old.units.get(name).unwrap().settings, &new.units.get(name).unwrap().settings)
        };
        let shared = |name: &str| text_shared(name) && settings_shared(name);
        assert!(shared("u-0001.service") && text_shared("u-0001.service.d/over.conf") && shared("u-0699.service"));
        assert!(!text_shared("u-0000.service") && !text_shared("u-0690.service"));
        assert!(!settings_shared("u-0690.service"));
        assert_eq!(new.unit("u-0690.service").unwrap().values("Service", "Environment"), ["V=2"]);
        assert_eq!(new.unit("u-0001.service").unwrap().get("Service", "Nice"), Some("5"));
        let unit = new.unit("u-0001.service").unwrap();
        assert_eq!(unit.fragment(), Some(crate::unit_file::Fragment::Own));
        assert_eq!(
            unit.drop_ins().iter().map(|d| (d.file_name(), d.is_own())).collect::<Vec<_>>(),
            [("over.conf", true)]
        );
    }

    #[test]
    fn a_unit_system_manager_masked_in_the_old_generation_has_its_settings_in_the_new_one() {
        // Two system-manager generations in one store, with one static
        // /etc tree: the old one masks x.service, the new one does not.
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        write(&store.join("env/systemd/system/x.service"), "[Service]\nExecStart=/bin/x\n");
        for (side, masked) in [("old", true), ("new", false)] {
            let root = store.join(side);
            let services = format!("{{\"x.service\": {{\"masked\": {masked}}}}}");
            write(&root.join("services/services.json"), &services);
            let static_env = store.join("env").display().to_string();
            write(
                &root.join("etcFiles/etcFiles.json"),
                &format!("{{\"entries\": {{}}, \"staticEnv\": {static_env:?}}}"),
            );
        }
        let (old, new) = load_pair(&store.join("old"), &store.join("new"));
        assert!(old.unwrap().unit("x.service").unwrap().is_masked());
        let new = new.unwrap();
        assert_eq!(new.unit("x.service").unwrap().get("Service", "ExecStart"), Some("/bin/x"));
    }

    #[test]
    fn generations_outside_a_store_share_nothing_their_own_stores_hold() {
        // The same absolute link names each fixture's own file.
        let dir = tempfile::tempdir().unwrap();
        for (side, version) in [("a", 1), ("b", 2)] {
            let root = dir.path().join(side);
            write(&root.join("nix/store/abc-unit/x.service"), &format!("[Service]\nEnvironment=V={version}\n"));
            fs::create_dir_all(root.join("etc/systemd/system")).unwrap();
            symlink("/nix/store/abc-unit/x.service", root.join("etc/systemd/system/x.service")).unwrap();
        }
        let (old, new) = load_pair(&dir.path().join("a"), &dir.path().join("b"));
        assert_eq!(old.unwrap().unit("x.service").unwrap().values("Service", "Environment"), ["V=1"]);
        assert_eq!(new.unwrap().unit("x.service").unwrap().values("Service", "Environment"), ["V=2"]);
    }

    #[test]
    fn each_generation_of_a_pair_fails_alone_at_its_first_bad_file_in_name_order() {
        let (_dir, a, b) = store_pair(700);
        // Two bad files far apart (read by different threads): the first
        // by name is named, as when read alone.
        for name in ["u-0100.service", "u-0600.service"] {
            fs::remove_file(a.join("etc/systemd/system").join(name)).unwrap();
            symlink("/nowhere/at/all", a.join("etc/systemd/system").join(name)).unwrap();
        }
        let (old, new) = load_pair(&a, &b);
        let err = old.unwrap_err().to_string();
        assert!(err.contains("u-0100.service"), "{err}");
        assert_eq!(err, load(&a).unwrap_err().to_string());
        assert_eq!(new.unwrap().units, load(&b).unwrap().units);
        // A file the new generation alone has wrong.
        write(&b.join("etc/systemd/system/u-0300.service.d/bad.conf"), "no key here\n");
        let (old, new) = load_pair(&b, &b.clone());
        let (old, new) = (old.unwrap_err().to_string(), new.unwrap_err().to_string());
        assert!(new.contains("u-0300.service.d/bad.conf:1"), "{new}");
        assert_eq!(old, new);
    }
}
