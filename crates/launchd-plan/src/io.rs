//! The only module that touches the filesystem: it reads a generation's
//! plists and `nix.conf`, and a live-state snapshot, into plain values for
//! the planner.
//!
//! A generation is read from itself and the Nix store only
//! ([`generation_fs::GenerationDir`]): a plist or `nix.conf` linked
//! anywhere else is an error naming the link, every file is opened
//! non-blocking and must be a regular file, and at most a limit is read.

use std::fs;
use std::io::ErrorKind;
use std::path::Path;

use generation_fs::{Entry, GenerationDir, Limit, Resolved};

use crate::error::LoadError;
use crate::job::{GenerationJobs, Installed, Job, Scope};
use crate::live::LaunchdLive;

/// The most read from a plist.
const PLIST_LIMIT: Limit = Limit::new(4 << 20, "a plist");
/// The most read from `nix.conf` or `machines`.
const NIX_CONF_LIMIT: Limit = Limit::new(1 << 20, "a Nix configuration file");

/// Reads the launchd part of a nix-darwin generation (a system toplevel):
/// every `*.plist` in `Library/LaunchDaemons`, `Library/LaunchAgents` and
/// `user/Library/LaunchAgents`, plus `etc/nix/nix.conf` and
/// `etc/nix/machines`. A missing directory holds no jobs (generations older
/// than user agents have no `user/`). Links are followed inside the
/// generation and into the Nix store, as the generation's entries are
/// links into the store; a link elsewhere is an error.
pub fn load_generation(toplevel: &Path) -> Result<GenerationJobs, LoadError> {
    // A mistyped toplevel must not read as a generation without jobs, which
    // would plan the removal of every job.
    fs::read_dir(toplevel).map_err(|source| io_error(toplevel, source))?;
    let g = GenerationDir::open(toplevel)?;
    let mut jobs = Vec::new();
    for scope in Scope::ALL {
        let shown_dir = toplevel.join(scope.generation_dir());
        let dir = match g.resolve(Path::new(scope.generation_dir()), &shown_dir)? {
            Resolved::Found(dir) if dir.is_dir() => dir,
            outside @ Resolved::Outside { .. } => return Err(outside_error(&outside, &shown_dir)),
            _ => continue,
        };
        let entries = fs::read_dir(&dir).map_err(|source| io_error(&shown_dir, source))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| io_error(&shown_dir, source))?;
            // nix-darwin only ever places `<Label>.plist` here; anything
            // else is not a job launchd would load from these directories.
            if let Ok(name) = entry.file_name().into_string()
                && name.ends_with(".plist")
            {
                names.push(name);
            }
        }
        names.sort();
        for name in names {
            let path = shown_dir.join(&name);
            let bytes = match g.read_entry(&dir, &name, &path, PLIST_LIMIT)? {
                Entry::Bytes(bytes) => bytes,
                Entry::Masked => return Err(not_a_plist(&path)),
            };
            jobs.push(Job::parse(scope, &name, &path.display().to_string(), bytes)?);
        }
    }
    Ok(GenerationJobs {
        path: toplevel.display().to_string(),
        jobs,
        nix_conf: read_generation_file(&g, toplevel, "etc/nix/nix.conf")?,
        nix_machines: read_generation_file(&g, toplevel, "etc/nix/machines")?,
        remote_login: None,
    })
}

/// Reads a file of the generation; `None` when it does not exist.
fn read_generation_file(g: &GenerationDir, toplevel: &Path, rel: &str) -> Result<Option<Vec<u8>>, LoadError> {
    let shown = toplevel.join(rel);
    match g.resolve(Path::new(rel), &shown)? {
        Resolved::Found(physical) => Ok(Some(g.read(&physical, &shown, NIX_CONF_LIMIT)?)),
        Resolved::Missing(_) => Ok(None),
        Resolved::DevNull => Ok(Some(Vec::new())),
        outside @ Resolved::Outside { .. } => Err(outside_error(&outside, &shown)),
    }
}

/// The error for a file that resolved outside the generation and the store.
fn outside_error(resolved: &Resolved, shown: &Path) -> LoadError {
    match resolved.outside_error(shown) {
        Some(err) => LoadError::Read(err),
        None => not_a_plist(shown),
    }
}

/// A plist that is a link to `/dev/null`: launchd has no masks.
fn not_a_plist(path: &Path) -> LoadError {
    io_error(path, std::io::Error::new(ErrorKind::InvalidInput, "a link to /dev/null, not a regular file"))
}

/// Reads the installed copies of every plist the two generations name:
/// `<root>/Library/LaunchDaemons`, `<root>/Library/LaunchAgents` and, when
/// the primary user's home is known, `<home>/Library/LaunchAgents`. On a
/// Mac `root` is `/`. Only the generations' file names are read, because
/// those directories also hold plists nix-darwin does not manage.
pub fn load_installed(
    root: &Path,
    home: Option<&Path>,
    old: &GenerationJobs,
    new: &GenerationJobs,
) -> Result<Installed, LoadError> {
    let mut wanted: Vec<(Scope, &str)> =
        old.jobs.iter().chain(&new.jobs).map(|j| (j.scope, j.file_name.as_str())).collect();
    wanted.sort();
    wanted.dedup();
    let mut jobs = Vec::new();
    for (scope, name) in wanted {
        let dir = match scope {
            Scope::Daemon => root.join("Library/LaunchDaemons"),
            Scope::Agent => root.join("Library/LaunchAgents"),
            Scope::UserAgent => match home {
                Some(home) => home.join("Library/LaunchAgents"),
                None => continue,
            },
        };
        let path = dir.join(name);
        if let Some(bytes) = read_optional(&path)? {
            jobs.push(Job::parse(scope, name, &path.display().to_string(), bytes)?);
        }
    }
    Ok(Installed { jobs })
}

/// Reads a live-state snapshot in the JSON form described in `live`.
pub fn load_live(path: &Path) -> Result<LaunchdLive, LoadError> {
    let text = fs::read_to_string(path).map_err(|source| io_error(path, source))?;
    LaunchdLive::from_json(&text, &path.display().to_string())
}

/// Reads an installed plist of the host; `None` when it does not exist.
/// Non-blocking, a regular file, at most [`PLIST_LIMIT`].
fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, LoadError> {
    Ok(generation_fs::read_host(path, path, PLIST_LIMIT)?)
}

fn io_error(path: &Path, source: std::io::Error) -> LoadError {
    LoadError::Io { path: path.display().to_string(), source }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail by panicking")]
mod tests {
    use super::*;

    #[test]
    fn missing_toplevel_is_an_error_naming_it() {
        let err = load_generation(Path::new("/nonexistent/darwin-system")).unwrap_err();
        assert!(err.to_string().starts_with("/nonexistent/darwin-system: "), "{err}");
    }

    #[test]
    fn missing_live_state_is_an_error_naming_it() {
        let err = load_live(Path::new("/nonexistent/live.json")).unwrap_err();
        assert!(err.to_string().starts_with("/nonexistent/live.json: "), "{err}");
    }
}
