//! Nix stores in temporary directories, for tests of what reads Nix's
//! database: filled with `nix-store --load-db` (Nix's own registration
//! path, so the database has exactly the schema and contents Nix writes),
//! and two generated generations to fill them with. Whether Nix can run
//! here, and its offline configuration, are [`crate::nix`]'s.
//!
//! Test support: a failure to set a store up panics, failing the test.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test support fails the calling test by panicking")]

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// The store directory Nix uses inside chroot stores.
pub const STORE_DIR: &str = "/nix/store";

/// Nix's base-32 digits.
const BASE32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// A store path hash made from a number (distinct numbers give distinct
/// hashes) and a salt that keeps different tests apart.
pub fn fake_hash(salt: u64, n: u64) -> String {
    let mut out = Vec::with_capacity(32);
    let mut x = n;
    for _ in 0..16 {
        out.push(BASE32[(x % 32) as usize]);
        x /= 32;
    }
    let mut y = salt;
    for _ in 0..16 {
        out.push(BASE32[(y % 32) as usize]);
        y /= 32;
    }
    out.reverse();
    String::from_utf8(out).unwrap()
}

/// A full store path.
pub fn store_path(salt: u64, n: u64, name: &str) -> String {
    format!("{STORE_DIR}/{}-{name}", fake_hash(salt, n))
}

/// A store path to register: its NAR size and references.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The full store path.
    pub path: String,
    /// The NAR size to record.
    pub nar_size: u64,
    /// Full store paths it refers to.
    pub refs: Vec<String>,
}

/// A Nix store in a temporary directory (a chroot store: paths are named
/// under /nix/store, the files live under the root).
pub struct TempStore {
    /// The directory, removed when the store is dropped.
    pub dir: tempfile::TempDir,
}

impl Default for TempStore {
    fn default() -> Self {
        Self::new()
    }
}

impl TempStore {
    /// Creates an empty store.
    pub fn new() -> Self {
        TempStore { dir: tempfile::tempdir().unwrap() }
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Its database file.
    pub fn db_path(&self) -> PathBuf {
        self.root().join("nix/var/nix/db/db.sqlite")
    }

    /// The store URI for `--store`.
    pub fn uri(&self) -> String {
        self.root().display().to_string()
    }

    /// Registers paths with `nix-store --load-db`, which records them as
    /// valid without needing their contents.
    pub fn register(&self, entries: &[Entry]) {
        let mut input = String::new();
        for e in entries {
            let _ = writeln!(
                input,
                "{}\nsha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s\n{}\n\n{}",
                e.path,
                e.nar_size,
                e.refs.len()
            );
            for r in &e.refs {
                let _ = writeln!(input, "{r}");
            }
        }
        let mut child = crate::nix::command("nix-store")
            .args(["--store", &self.uri(), "--load-db"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "nix-store --load-db: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// Two generated generations that share most of their closure.
pub struct Generations {
    /// Every path of both closures.
    pub entries: Vec<Entry>,
    /// The old root.
    pub old: String,
    /// The new root.
    pub new: String,
}

/// Generates two closures of `size` paths each, of which the top
/// `changes` differ: most change version (a few downgrade), some are
/// rebuilt with the same version, and some are replaced by packages of
/// another name. Path `i` refers to `i-1`, `i/2`, `i/3` and `i/5`, so
/// every path is reachable from the root (the last one), and changed
/// paths are only referred to by changed paths, as after a real update.
pub fn generations(salt: u64, size: u64, changes: u64) -> Generations {
    assert!(changes <= size && size >= 2);
    let first_changed = size - changes;
    let outputs = ["", "-bin", "-dev", "-lib", "-man"];
    let old_name = |i: u64| {
        let minor = i % 50;
        format!("pkg{i}-1.{minor}.0{}", outputs[(i % 5) as usize])
    };
    let new_name = |i: u64| {
        let minor = i % 50;
        let k = i - first_changed;
        match k % 20 {
            // Renamed: the old package is removed and another added.
            0 | 1 => format!("newpkg{i}-0.1"),
            // Rebuilt with the same version.
            2..=4 => old_name(i),
            // Downgraded.
            5 => format!("pkg{i}-1.{minor}.0pre1{}", outputs[(i % 5) as usize]),
            _ => format!("pkg{i}-1.{minor}.1{}", outputs[(i % 5) as usize]),
        }
    };
    let path = |gen_salt: u64, i: u64, name: &str| store_path(salt * 4 + gen_salt, i, name);
    let old_path = |i: u64| path(0, i, &old_name(i));
    let new_path = |i: u64| {
        if i < first_changed { old_path(i) } else { path(1, i, &new_name(i)) }
    };
    let refs = |i: u64, p: &dyn Fn(u64) -> String| {
        let mut r: Vec<u64> = if i == 0 { vec![] } else { vec![i - 1, i / 2, i / 3, i / 5] };
        r.sort_unstable();
        r.dedup();
        r.retain(|&j| j != i);
        r.into_iter().map(p).collect::<Vec<_>>()
    };
    let mut entries = Vec::new();
    for i in 0..size {
        entries.push(Entry { path: old_path(i), nar_size: 1000 + i * 10, refs: refs(i, &old_path) });
    }
    for i in first_changed..size {
        entries.push(Entry { path: new_path(i), nar_size: 1100 + i * 10, refs: refs(i, &new_path) });
    }
    Generations { entries, old: old_path(size - 1), new: new_path(size - 1) }
}
