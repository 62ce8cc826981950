//! `safe-switch closure-diff OLD NEW [--json]` end to end: the real
//! binary against real Nix stores, found through Nix's own environment
//! variables, and its errors on bad input.

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Output};

use testbed::store::{TempStore, generations, store_path};

use crate::support::BIN;

fn safe_switch() -> Command {
    let mut c = Command::new(BIN);
    for var in ["NIX_REMOTE", "NIX_STORE_DIR", "NIX_STORE", "NIX_STATE_DIR", "NIX_DB_DIR"] {
        c.env_remove(var);
    }
    c
}

/// Runs the binary against a temporary store's database.
fn run_on(store: &TempStore, args: &[&str]) -> Output {
    safe_switch().env("NIX_DB_DIR", store.db_path().parent().unwrap()).arg("closure-diff").args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[test]
fn text_and_json() {
    testbed::require!(nix);
    let g = generations(21, 60, 20);
    let store = TempStore::new();
    store.register(&g.entries);

    let out = run_on(&store, &[&g.old, &g.new]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "");
    insta::assert_snapshot!("text", text(&out.stdout));

    let out = run_on(&store, &[&g.old, &g.new, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["old"]["root"], g.old.as_str());
    assert_eq!(json["old"]["source"], "database");
    assert_eq!(json["old"]["paths"], 60);
    assert_eq!(json["paths_added"], 20);
    assert_eq!(json["changed"].as_array().unwrap().len(), 20 - 2 - 3);
    assert_eq!(json["added"].as_array().unwrap().len(), 2);
    assert_eq!(json["removed"][0]["name"], "pkg40");
    assert_eq!(json["rebuilt"].as_array().unwrap().len(), 3);
}

#[test]
fn links_and_the_fallback() {
    testbed::require!(nix);
    let g = generations(22, 30, 5);
    let store = TempStore::new();
    store.register(&g.entries);
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&g.old, dir.path().join("current-system")).unwrap();
    std::os::unix::fs::symlink(&g.new, dir.path().join("result")).unwrap();
    let via_db = safe_switch()
        .current_dir(dir.path())
        .env("NIX_DB_DIR", store.db_path().parent().unwrap())
        .args(["closure-diff", "current-system", "result"])
        .output()
        .unwrap();
    assert!(via_db.status.success(), "{}", text(&via_db.stderr));

    // A remote store URI means the local database says nothing: the
    // command asks `nix`, which reads the same store.
    let via_nix = safe_switch()
        .current_dir(dir.path())
        .env("NIX_REMOTE", store.uri())
        .args(["closure-diff", "current-system", "result"])
        .output()
        .unwrap();
    assert!(via_nix.status.success(), "{}", text(&via_nix.stderr));
    assert_eq!(text(&via_nix.stdout), text(&via_db.stdout));
}

#[test]
fn bad_input_is_a_clear_error() {
    testbed::require!(nix);
    let g = generations(23, 10, 2);
    let store = TempStore::new();
    store.register(&g.entries);
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let ghost = store_path(23, 999, "ghost-1.0");
    let plain = dir.path().join("plain");
    std::fs::write(&plain, "x").unwrap();
    for (arg, needle) in [
        (missing.display().to_string(), "No such file or directory".to_owned()),
        (ghost.clone(), format!("{ghost} is not a valid path in the Nix store")),
        (plain.display().to_string(), "not a path in the Nix store /nix/store".to_owned()),
    ] {
        let out = run_on(&store, &[&g.old, &arg]);
        assert_eq!(out.status.code(), Some(1), "{arg}");
        let err = text(&out.stderr);
        assert!(err.starts_with("error: comparing the closures of"), "{err}");
        assert!(err.contains(&needle), "{arg}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(text(&out.stdout), "");
    }

    // A store named by `NIX_REMOTE` is not the machine's store, so its
    // closures come from `nix` and a broken local database is not read.
    let bad = tempfile::tempdir().unwrap();
    std::fs::write(bad.path().join("db.sqlite"), vec![7_u8; 4096]).unwrap();
    let out = safe_switch()
        .env("NIX_DB_DIR", bad.path())
        .env("NIX_REMOTE", format!("local?root={}", store.uri()))
        .args(["closure-diff", &g.old, &g.new])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json_free = text(&out.stdout);
    assert!(json_free.contains("Paths: 10 → 10 (+2 -2)"), "{json_free}");
}

/// A user who may not read the database gets a clear error naming it
/// (here the fallback cannot reach a daemon either), never a panic.
#[test]
fn no_permission() {
    // Root, to run the binary as another user.
    testbed::require!(nix, root);
    let g = generations(24, 10, 2);
    let store = TempStore::new();
    store.register(&g.entries);
    let db_dir = store.db_path().parent().unwrap().to_path_buf();
    std::fs::set_permissions(&db_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    // The binary, somewhere the unprivileged user can run it from.
    let bin_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(bin_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = bin_dir.path().join("safe-switch");
    testbed::exec::copy_executable(Path::new(BIN), &bin).unwrap();
    let home = tempfile::tempdir().unwrap();
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = Command::new(&bin)
        .uid(65534)
        .gid(65534)
        .env("HOME", home.path())
        .env("NIX_DB_DIR", &db_dir)
        .env_remove("NIX_REMOTE")
        .args(["closure-diff", &g.old, &g.new])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(err.contains(&db_dir.join("db.sqlite").display().to_string()), "{err}");
    assert!(err.contains("Permission denied"), "{err}");
    assert!(err.contains("the fallback"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    eprintln!("{err}");
    assert!(Path::new(&store.db_path()).exists());
}
