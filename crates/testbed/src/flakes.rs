//! The fixture flakes of `crates/nix-compose/tests/fixtures` for tests
//! that run the real `nix` (`nix-compose`'s and the `safe-switch`
//! binary's): a private copy of them and the offline configuration with
//! their registry, and what a built toplevel holds. Whether Nix can run
//! here, and that configuration, are [`crate::nix`]'s.
//!
//! Test support: a failure panics, failing the calling test.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test support fails the calling test by panicking")]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The fixture flakes in the source tree.
fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../nix-compose/tests/fixtures")
}

/// The Nix system type of this machine (`x86_64-linux`, ...).
pub fn nix_system() -> String {
    let arch = std::env::consts::ARCH;
    let os = match std::env::consts::OS {
        "macos" => "darwin",
        other => other,
    };
    format!("{arch}-{os}")
}

/// A private copy of the fixture flakes with `@FIXTURES@` and `@SYSTEM@`
/// filled in, plus an empty flake registry file.
pub struct Fixtures {
    /// The copy, removed when the fixtures are dropped.
    pub dir: tempfile::TempDir,
}

impl Default for Fixtures {
    fn default() -> Self {
        Self::new()
    }
}

impl Fixtures {
    /// Copies the fixture flakes into a new temporary directory.
    pub fn new() -> Fixtures {
        let dir = tempfile::Builder::new().prefix("safe-switch-fixtures-").tempdir().unwrap();
        copy_filled(&fixtures_dir(), dir.path(), dir.path(), &nix_system());
        std::fs::write(dir.path().join("registry.json"), r#"{"flakes":[],"version":2}"#).unwrap();
        Fixtures { dir }
    }

    /// The path of one fixture flake.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The path of one fixture flake, as a string reference.
    pub fn flake(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// The registry file used as `flake-registry`.
    pub fn registry(&self) -> PathBuf {
        self.dir.path().join("registry.json")
    }

    /// Adds a registry alias for a fixture flake.
    pub fn alias(&self, name: &str, fixture: &str) {
        let json = serde_json::json!({
            "version": 2,
            "flakes": [{
                "from": { "type": "indirect", "id": name },
                "to": { "type": "path", "path": self.flake(fixture) },
            }],
        });
        std::fs::write(self.registry(), json.to_string()).unwrap();
    }

    /// The environment for `nix` in these tests.
    pub fn env(&self) -> Vec<(OsString, OsString)> {
        vec![("NIX_CONFIG".into(), crate::nix::config(Some(&self.registry())).into())]
    }

    /// Every `flake.lock` under the copy (there should be none).
    pub fn lock_files(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        walk(self.dir.path(), &mut |p| {
            if p.file_name().is_some_and(|n| n == "flake.lock") {
                found.push(p.to_owned());
            }
        });
        found
    }

    /// Makes a fixture a Git repository with one commit, so that it is
    /// fetched as `git+file`.
    pub fn git_init(&self, name: &str) {
        let dir = self.path(name);
        for args in [
            vec!["init", "-q"],
            vec!["add", "-A"],
            vec!["-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-q", "-m", "fixture"],
        ] {
            let st = Command::new("git").args(&args).current_dir(&dir).status().unwrap();
            assert!(st.success(), "git {args:?} failed in {}", dir.display());
        }
    }
}

fn copy_filled(from: &Path, to: &Path, root: &Path, system: &str) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let src = entry.path();
        let dst = to.join(entry.file_name());
        if src.is_dir() {
            copy_filled(&src, &dst, root, system);
        } else {
            let text = std::fs::read_to_string(&src).unwrap();
            let text = text.replace("@FIXTURES@", &root.display().to_string()).replace("@SYSTEM@", system);
            std::fs::write(&dst, text).unwrap();
        }
    }
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let p = entry.path();
        f(&p);
        if p.is_dir() && !p.is_symlink() {
            walk(&p, f);
        }
    }
}

/// The unit files of a generation: file name to bytes (the `.wants`
/// directories are left out; see [`wants`]).
pub fn units(toplevel: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let dir = unit_dir(toplevel);
    let mut out = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        if entry.path().is_file() {
            out.insert(entry.file_name().to_string_lossy().into_owned(), std::fs::read(entry.path()).unwrap());
        }
    }
    out
}

/// The unit directory of a toplevel: `etc/systemd/system`, or for a
/// system-manager toplevel `systemd/system` of the static /etc tree that
/// `etcFiles/etcFiles.json` names.
pub fn unit_dir(toplevel: &Path) -> PathBuf {
    let nixos = toplevel.join("etc/systemd/system");
    if nixos.exists() {
        return nixos;
    }
    let etc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(toplevel.join("etcFiles/etcFiles.json")).unwrap()).unwrap();
    Path::new(etc["staticEnv"].as_str().unwrap()).join("systemd/system")
}

/// The units a target of a generation wants (its `.wants` links).
pub fn wants(toplevel: &Path, target: &str) -> Vec<String> {
    let dir = unit_dir(toplevel).join(format!("{target}.wants"));
    let mut out: Vec<String> = std::fs::read_dir(&dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    out.sort();
    out
}
