//! The Mac's files and processes besides launchd: the installed plists,
//! the activation script, `/run/current-system` and the system profile.
//!
//! [`Machine`] is what the executor needs; [`DarwinHost`] does it on the
//! real file system, every absolute path taken below a root directory
//! (`/` on a Mac; a temporary directory in tests).

use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Error;

/// Where nix-darwin's system profile is.
pub const SYSTEM_PROFILE: &str = "/nix/var/nix/profiles/system";
/// The running generation.
pub const CURRENT_SYSTEM: &str = "/run/current-system";
/// The GC root nix-darwin keeps for the running generation.
pub const CURRENT_SYSTEM_GCROOT: &str = "/nix/var/nix/gcroots/current-system";

/// The most read of a plist that is installed.
const PLIST_LIMIT: u64 = 4 << 20;

/// A user as the files of their agents need them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// The numeric user id.
    pub uid: u32,
    /// The primary group id.
    pub gid: u32,
    /// The home directory.
    pub home: String,
}

/// What the executor does to the machine besides calling `launchctl`.
pub trait Machine {
    /// The path at which an absolute path of the Mac is found here.
    fn path(&self, absolute: &str) -> PathBuf;
    /// Runs an activation script (its text) and returns its exit status (a
    /// negative signal number when killed).
    fn activate(&mut self, script: &str) -> Result<i32, Error>;
    /// Copies `source` to `target` as a regular file, mode 0644, owned by
    /// root:wheel or by `owner`, replacing a link or file there.
    fn install_plist(&mut self, source: &str, target: &str, owner: Option<&str>) -> Result<(), Error>;
    /// Deletes an installed plist; one that is not there is no error.
    fn remove_plist(&mut self, path: &str) -> Result<(), Error>;
    /// Points `/run/current-system` (and its GC root, when the GC roots
    /// directory exists) at `toplevel`, as the end of `activate` does.
    fn link_current_system(&mut self, toplevel: &str) -> Result<(), Error>;
    /// Makes `toplevel` the system profile's newest generation, as
    /// `nix-env --profile /nix/var/nix/profiles/system --set` does; nothing
    /// when the profile is it already.
    fn set_profile(&mut self, toplevel: &str) -> Result<(), Error>;
}

/// The machine this runs on.
#[derive(Clone, Debug)]
pub struct DarwinHost {
    /// The root every absolute path is taken below: `/` on a Mac.
    pub root: PathBuf,
    /// Where the activation script is written before it runs.
    pub scratch: PathBuf,
}

impl DarwinHost {
    /// The host at root `/`, writing scripts to `scratch`.
    pub fn new(root: impl Into<PathBuf>, scratch: impl Into<PathBuf>) -> DarwinHost {
        DarwinHost { root: root.into(), scratch: scratch.into() }
    }

    /// The generation `/run/current-system` points at.
    pub fn current_system(&self) -> PathBuf {
        self.path(CURRENT_SYSTEM)
    }
}

impl Machine for DarwinHost {
    fn path(&self, absolute: &str) -> PathBuf {
        below(&self.root, absolute)
    }

    fn activate(&mut self, script: &str) -> Result<i32, Error> {
        std::fs::create_dir_all(&self.scratch).map_err(|e| Error::io(&self.scratch, e))?;
        let path = self.scratch.join(format!("activate-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o700)
                .open(&path)
                .map_err(|e| Error::io(&path, e))?;
            file.write_all(script.as_bytes()).map_err(|e| Error::io(&path, e))?;
        }
        // Its output goes to standard error with the rest of the progress,
        // so that standard output holds only the report.
        let status = Command::new(&path).stdout(std::io::stderr()).status().map_err(|e| Error::io(&path, e));
        let _ = std::fs::remove_file(&path);
        use std::os::unix::process::ExitStatusExt;
        let status = status?;
        Ok(status.code().unwrap_or_else(|| -status.signal().unwrap_or(0)))
    }

    fn install_plist(&mut self, source: &str, target: &str, owner: Option<&str>) -> Result<(), Error> {
        let source = Path::new(source);
        let mut bytes = Vec::new();
        std::fs::File::open(source)
            .and_then(|f| f.take(PLIST_LIMIT + 1).read_to_end(&mut bytes))
            .map_err(|e| Error::io(source, e))?;
        if bytes.len() as u64 > PLIST_LIMIT {
            return Err(Error::io(source, std::io::Error::other("larger than 4 MiB")));
        }
        let target = self.path(target);
        let dir = target.parent().unwrap_or(Path::new("/"));
        let owner = match owner {
            Some(user) => Some(account(user)?),
            None => None,
        };
        if owner.is_some() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let mut tmp =
            tempfile::Builder::new().prefix(".safe-switch.").tempfile_in(dir).map_err(|e| Error::io(dir, e))?;
        tmp.write_all(&bytes).map_err(|e| Error::io(&target, e))?;
        tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644)).map_err(|e| Error::io(&target, e))?;
        // launchd refuses plists of the system domain that root does not
        // own; only root can give them away, and only root switches a Mac.
        if rustix::process::geteuid().is_root() {
            let (uid, gid) = owner.as_ref().map_or((0, 0), |a| (a.uid, a.gid));
            rustix::fs::fchown(
                tmp.as_file(),
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )
            .map_err(|e| Error::io(&target, e.into()))?;
        }
        tmp.as_file().sync_all().map_err(|e| Error::io(&target, e))?;
        tmp.persist(&target).map_err(|e| Error::io(&target, e.error))?;
        Ok(())
    }

    fn remove_plist(&mut self, path: &str) -> Result<(), Error> {
        let path = self.path(path);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&path, e)),
            _ => Ok(()),
        }
    }

    fn link_current_system(&mut self, toplevel: &str) -> Result<(), Error> {
        let link = self.path(CURRENT_SYSTEM);
        replace_link(Path::new(toplevel), &link)?;
        let gcroot = self.path(CURRENT_SYSTEM_GCROOT);
        if gcroot.parent().is_some_and(Path::is_dir) {
            replace_link(&link, &gcroot)?;
        }
        Ok(())
    }

    fn set_profile(&mut self, toplevel: &str) -> Result<(), Error> {
        let profile = self.path(SYSTEM_PROFILE);
        if std::fs::canonicalize(&profile).is_ok_and(|p| p == Path::new(toplevel)) {
            return Ok(());
        }
        let dir = profile.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let name = profile.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut newest = 0u64;
        for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if let Some(n) = file.strip_prefix(&format!("{name}-")).and_then(|r| r.strip_suffix("-link"))
                && let Ok(n) = n.parse::<u64>()
            {
                newest = newest.max(n);
            }
        }
        let generation = format!("{name}-{}-link", newest + 1);
        replace_link(Path::new(toplevel), &dir.join(&generation))?;
        replace_link(Path::new(&generation), &profile)
    }
}

/// `absolute` below `root`.
pub fn below(root: &Path, absolute: &str) -> PathBuf {
    root.join(absolute.trim_start_matches('/'))
}

/// Points `link` at `target`, replacing what is there in one rename.
fn replace_link(target: &Path, link: &Path) -> Result<(), Error> {
    let dir = link.parent().unwrap_or(Path::new("/"));
    let tmp = dir.join(format!(".safe-switch-link-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, link).map_err(|e| Error::io(link, e))
}

/// A user name as nix-darwin writes it: letters, digits, `_`, `-`, `.`,
/// not starting with `-`.
fn valid_user(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('-')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// The account of `user`: `id -u`, `id -g` and the home `~user`, as
/// nix-darwin's activation finds them.
pub fn account(user: &str) -> Result<Account, Error> {
    let bad = |m: String| Error::Run { program: PathBuf::from("id"), message: m };
    if !valid_user(user) {
        return Err(bad(format!("{user:?} is not a user name")));
    }
    let output = |program: &str, args: &[&str]| -> Result<String, Error> {
        let out = Command::new(program).args(args).output().map_err(|e| bad(format!("{program}: {e}")))?;
        if !out.status.success() {
            return Err(bad(format!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let number = |s: String| s.parse::<u32>().map_err(|_| bad(format!("{user}: not a number: {s:?}")));
    let uid = number(output("id", &["-u", "--", user])?)?;
    let gid = number(output("id", &["-g", "--", user])?)?;
    // The name is checked above, so the shell sees a plain `~name`.
    let home = output("/bin/sh", &["-c", &format!("printf %s ~{user}")])?;
    if !home.starts_with('/') {
        return Err(bad(format!("{user}: no home directory")));
    }
    Ok(Account { uid, gid, home })
}
