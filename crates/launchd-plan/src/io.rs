//! The only module that touches the filesystem: it reads a generation's
//! plists and `nix.conf`, and a live-state snapshot, into plain values for
//! the planner.

use std::fs;
use std::io::ErrorKind;
use std::path::Path;

use crate::error::LoadError;
use crate::job::{Generation, Installed, Job, Scope};
use crate::live::LaunchdLive;

/// Reads the launchd part of a nix-darwin generation (a system toplevel):
/// every `*.plist` in `Library/LaunchDaemons`, `Library/LaunchAgents` and
/// `user/Library/LaunchAgents`, plus `etc/nix/nix.conf` and
/// `etc/nix/machines`. A missing directory holds no jobs (generations older
/// than user agents have no `user/`). Symlinks are followed, as the
/// generation's entries are links into the store.
pub fn load_generation(toplevel: &Path) -> Result<Generation, LoadError> {
    // A mistyped toplevel must not read as a generation without jobs, which
    // would plan the removal of every job.
    fs::read_dir(toplevel).map_err(|source| io_error(toplevel, source))?;
    let mut jobs = Vec::new();
    for scope in Scope::ALL {
        let dir = toplevel.join(scope.generation_dir());
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(source) => return Err(io_error(&dir, source)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| io_error(&dir, source))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // nix-darwin only ever places `<Label>.plist` here; anything
            // else is not a job launchd would load from these directories.
            if name.ends_with(".plist") {
                names.push(name);
            }
        }
        names.sort();
        for name in names {
            let path = dir.join(&name);
            let bytes = fs::read(&path).map_err(|source| io_error(&path, source))?;
            jobs.push(Job::parse(scope, &name, &path.display().to_string(), bytes)?);
        }
    }
    Ok(Generation {
        path: toplevel.display().to_string(),
        jobs,
        nix_conf: read_optional(&toplevel.join("etc/nix/nix.conf"))?,
        nix_machines: read_optional(&toplevel.join("etc/nix/machines"))?,
    })
}

/// Reads the installed copies of every plist the two generations name:
/// `<root>/Library/LaunchDaemons`, `<root>/Library/LaunchAgents` and, when
/// the primary user's home is known, `<home>/Library/LaunchAgents`. On a
/// Mac `root` is `/`. Only the generations' file names are read, because
/// those directories also hold plists nix-darwin does not manage.
pub fn load_installed(
    root: &Path,
    home: Option<&Path>,
    old: &Generation,
    new: &Generation,
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

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, LoadError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(source) => Err(io_error(path, source)),
    }
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
