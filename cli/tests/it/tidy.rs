//! The architecture invariants a test can check (ARCHITECTURE.md): which
//! files of the library crates may touch the file system, run a program or
//! speak D-Bus, and that only the binary uses `anyhow`. Test code (the
//! `#[cfg(test)]` part of a file) is not held to them.

use std::path::{Path, PathBuf};

/// What a file may do: open files, run programs, use zbus.
#[derive(Clone, Copy, Default)]
struct May {
    fs: bool,
    process: bool,
    dbus: bool,
}

const NONE: May = May { fs: false, process: false, dbus: false };

/// The crates and the files in each that may do more than compute.
const RULES: &[(&str, &[(&str, May)])] = &[
    ("plan-model", &[]),
    ("plan-report", &[]),
    ("systemd-plan", &[("loader.rs", May { fs: true, ..NONE })]),
    ("launchd-plan", &[("io.rs", May { fs: true, ..NONE })]),
    (
        "launchd-live",
        &[
            // `LaunchctlProgram`: the one place `launchctl` runs.
            ("launchctl.rs", May { process: true, ..NONE }),
            // `DarwinHost`: plists, links, the profile, the activation
            // script, and `id` for a user's account.
            ("host.rs", May { fs: true, process: true, ..NONE }),
            // The progress record.
            ("executor.rs", May { fs: true, ..NONE }),
        ],
    ),
    ("generation-fs", &[("lib.rs", May { fs: true, ..NONE })]),
    ("closure-diff", &[("store.rs", May { fs: true, ..NONE }), ("db.rs", May { fs: true, ..NONE })]),
    (
        "systemd-live",
        &[
            ("rundir.rs", May { fs: true, ..NONE }),
            // The unit search path's directories, read for fragment paths.
            ("search_path.rs", May { fs: true, ..NONE }),
            // The running manager's binary, `/proc/1/exe`, read with the
            // snapshot.
            ("dbus.rs", May { fs: true, dbus: true, ..NONE }),
            // `ProcessHost`: the activation script, swapoff, systemctl status.
            ("executor.rs", May { process: true, ..NONE }),
        ],
    ),
    (
        "system-manager-live",
        &[
            // The state file.
            ("state.rs", May { fs: true, ..NONE }),
            // `SystemManagerHost`: the generation's engine wrappers,
            // systemd-tmpfiles and systemctl mask, the state file.
            ("host.rs", May { fs: true, process: true, ..NONE }),
        ],
    ),
    ("nix-compose", &[("runner.rs", May { process: true, ..NONE }), ("compose.rs", May { fs: true, ..NONE })]),
];

const FS: &[&str] = &["std::fs", "File::", "OpenOptions", "read_dir(", "tempfile::"];
const PROCESS: &[&str] = &["std::process::Command", "Command::new", "process::Command"];
const DBUS: &[&str] = &["zbus::", "use zbus"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Whether `code` uses `pattern` as a path of its own (`File::`, not
/// `UnitFile::`).
fn uses(code: &str, pattern: &str) -> bool {
    code.match_indices(pattern)
        .any(|(at, _)| !code[..at].chars().next_back().is_some_and(|c| c.is_alphanumeric() || c == '_'))
}

/// A file's code without its tests: everything before its first
/// `#[cfg(test)]`, and without comment lines.
fn code_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    code.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

#[test]
fn library_crates_touch_the_outside_only_where_architecture_md_says() {
    let mut broken = Vec::new();
    for (krate, allowed) in RULES {
        let src = workspace().join("crates").join(krate).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        assert!(!files.is_empty(), "{krate}: no source files under {}", src.display());
        for file in files {
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            if name == "tests.rs" {
                continue;
            }
            let may = allowed.iter().find(|(f, _)| *f == name).map(|(_, m)| *m).unwrap_or_default();
            let code = code_of(&file);
            for (what, patterns, ok) in
                [("the file system", FS, may.fs), ("a program", PROCESS, may.process), ("zbus", DBUS, may.dbus)]
            {
                if let Some(p) = patterns.iter().find(|p| uses(&code, p)).filter(|_| !ok) {
                    broken.push(format!("crates/{krate}/src/{name} uses {what} ({p})"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "architecture invariants broken:\n{}", broken.join("\n"));
}

#[test]
fn only_the_binary_depends_on_anyhow() {
    for entry in std::fs::read_dir(workspace().join("crates")).unwrap() {
        let manifest = entry.unwrap().path().join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest).unwrap();
        let deps = text.split("[dependencies]").nth(1).unwrap_or_default();
        let deps = deps.split("\n[").next().unwrap_or_default();
        assert!(!deps.contains("anyhow"), "{} depends on anyhow; libraries have typed errors", manifest.display());
    }
}
