//! Reading closures from real Nix databases: Nix 2.8's (written by the
//! installed `nix-store`), the current schema, the `nix path-info`
//! fallback, and bad input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use closure_diff::db::DbError;
use closure_diff::{Error, Options, Source, SourcePolicy, read_closure};
use testbed::store::{Entry, STORE_DIR, TempStore, store_path};

use crate::StoreOptions as _;

/// A small graph with a shared library, a chain, self-references and a
/// path outside the closure. (Nix refuses cycles other than a path
/// referring to itself.)
fn small_store(salt: u64) -> (TempStore, String, BTreeMap<String, u64>) {
    let libc = store_path(salt, 1, "glibc-2.38-44");
    let ssl = store_path(salt, 2, "openssl-3.0.13");
    let ssl_bin = store_path(salt, 3, "openssl-3.0.13-bin");
    let app = store_path(salt, 4, "app-2.3");
    let cycle_a = store_path(salt, 5, "chain-a-1");
    let cycle_b = store_path(salt, 6, "chain-b-1");
    let unrelated = store_path(salt, 7, "unrelated-9.9");
    let e = |path: &str, nar_size, refs: &[&str]| Entry {
        path: path.to_owned(),
        nar_size,
        refs: refs.iter().map(|r| (*r).to_owned()).collect(),
    };
    let entries = vec![
        e(&libc, 30_000_000, &[&libc]),
        e(&ssl, 6_000_000, &[&libc]),
        e(&ssl_bin, 1_000_000, &[&ssl, &libc]),
        e(&cycle_a, 100, &[&cycle_b]),
        e(&cycle_b, 200, &[&cycle_b]),
        e(&app, 500_000, &[&ssl_bin, &cycle_a, &app]),
        e(&unrelated, 1, &[]),
    ];
    let store = TempStore::new();
    store.register(&entries);
    let expected = [
        (libc, 30_000_000),
        (ssl, 6_000_000),
        (ssl_bin, 1_000_000),
        (cycle_a, 100),
        (cycle_b, 200),
        (app.clone(), 500_000),
    ]
    .into_iter()
    .collect();
    (store, app, expected)
}

fn as_map(c: &closure_diff::Closure) -> BTreeMap<String, u64> {
    let map: BTreeMap<String, u64> = c.paths.iter().map(|p| (p.path.clone(), p.nar_size)).collect();
    assert_eq!(map.len(), c.paths.len(), "no path twice");
    map
}

#[test]
fn database_written_by_nix_2_8() {
    testbed::require!(nix);
    let (store, app, expected) = small_store(1);
    // Both strategies: the whole store read into memory, and the
    // recursive query.
    for scan_limit in [u64::MAX, 0] {
        let options = Options { source: SourcePolicy::DatabaseOnly, scan_limit, ..store.options() };
        let closure = read_closure(Path::new(&app), &options).unwrap();
        assert_eq!(closure.source, Source::Database);
        assert_eq!(closure.root, app);
        assert_eq!(as_map(&closure), expected, "scan_limit {scan_limit}");
    }
}

#[test]
fn nix_path_info_gives_the_same_closure() {
    testbed::require!(nix);
    let (store, app, expected) = small_store(2);
    let options = Options { source: SourcePolicy::NixOnly, ..store.options() };
    let closure = read_closure(Path::new(&app), &options).unwrap();
    assert_eq!(closure.source, Source::NixPathInfo);
    assert_eq!(as_map(&closure), expected);
}

#[test]
fn missing_database_falls_back_to_nix() {
    testbed::require!(nix);
    let (store, app, expected) = small_store(3);
    let options = Options { db_path: store.root().join("no/such/db.sqlite"), ..store.options() };
    let closure = read_closure(Path::new(&app), &options).unwrap();
    assert_eq!(closure.source, Source::NixPathInfo);
    let reason = closure.fallback_reason.clone().unwrap();
    assert!(reason.contains("no/such/db.sqlite"), "{reason}");
    assert_eq!(as_map(&closure), expected);
}

#[test]
fn corrupt_database_falls_back_or_fails_clearly() {
    testbed::require!(nix);
    let (store, app, expected) = small_store(4);
    let bad = tempfile::tempdir().unwrap();
    let bad_db = bad.path().join("db.sqlite");
    std::fs::write(&bad_db, vec![0x5a_u8; 8192]).unwrap();

    // With the fallback: the closure comes from `nix path-info`.
    let options = Options { db_path: bad_db.clone(), ..store.options() };
    let closure = read_closure(Path::new(&app), &options).unwrap();
    assert_eq!(closure.source, Source::NixPathInfo);
    assert_eq!(as_map(&closure), expected);

    // Without it: an error naming the file.
    let options = Options { source: SourcePolicy::DatabaseOnly, ..options };
    let err = read_closure(Path::new(&app), &options).unwrap_err();
    assert!(matches!(&err, Error::Database { source: DbError::Corrupt { .. }, .. }), "{err:?}");
    let msg = closure_diff::store::chain(&err);
    assert!(msg.contains(&bad_db.display().to_string()), "{msg}");
    assert!(msg.contains("file is not a database"), "{msg}");

    // With a fallback that fails too: both reasons in one message.
    let options = Options { source: SourcePolicy::Auto, nix: PathBuf::from("/nonexistent/bin/nix"), ..options };
    let err = read_closure(Path::new(&app), &options).unwrap_err();
    assert!(matches!(err, Error::Unreadable { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("not a readable SQLite database"), "{msg}");
    assert!(msg.contains("/nonexistent/bin/nix"), "{msg}");
}

#[test]
fn truncated_database_is_an_error_not_a_panic() {
    testbed::require!(nix);
    let (store, app, _) = small_store(5);
    let bad = tempfile::tempdir().unwrap();
    let copy = bad.path().join("db.sqlite");
    let bytes = std::fs::read(store.db_path()).unwrap();
    // Keep the header (so SQLite recognises the file) but cut the pages.
    std::fs::write(&copy, &bytes[..bytes.len().min(2048)]).unwrap();
    let options = Options { db_path: copy, source: SourcePolicy::DatabaseOnly, ..store.options() };
    let err = read_closure(Path::new(&app), &options).unwrap_err();
    assert!(matches!(err, Error::Database { .. }), "{err:?}");
}

#[test]
fn path_not_in_the_store() {
    testbed::require!(nix);
    let (store, _, _) = small_store(6);
    let ghost = store_path(6, 99, "ghost-1.0");
    for (source, scan_limit) in [
        (SourcePolicy::DatabaseOnly, u64::MAX),
        (SourcePolicy::DatabaseOnly, 0),
        (SourcePolicy::NixOnly, 0),
        (SourcePolicy::Auto, u64::MAX),
    ] {
        let options = Options { source, scan_limit, ..store.options() };
        let err = read_closure(Path::new(&ghost), &options).unwrap_err();
        assert!(matches!(&err, Error::NotValid { store_path, .. } if *store_path == ghost), "{source:?}: {err:?}");
        assert!(err.to_string().contains("is not a valid path in the Nix store"), "{err}");
    }

    // A file outside the store, and a path that does not exist.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain");
    std::fs::write(&file, "x").unwrap();
    let err = read_closure(&file, &store.options()).unwrap_err();
    assert!(matches!(err, Error::NotStorePath { .. }), "{err:?}");
    assert!(err.to_string().contains("not a path in the Nix store /nix/store"), "{err}");
    let err = read_closure(&dir.path().join("missing"), &store.options()).unwrap_err();
    assert!(matches!(err, Error::Resolve { .. }), "{err:?}");

    // Something in the store directory that is not a store path.
    let err = read_closure(Path::new("/nix/store/.links"), &store.options()).unwrap_err();
    assert!(matches!(err, Error::NotStorePath { .. }), "{err:?}");
}

#[test]
fn links_resolve_to_the_store_path() {
    let dir = tempfile::tempdir().unwrap();
    let target = store_path(7, 1, "nixos-system-host-24.05");
    // Absolute link into the store (the store path need not exist here).
    std::os::unix::fs::symlink(&target, dir.path().join("current-system")).unwrap();
    // A relative link to that link, and a link into a store path.
    std::os::unix::fs::symlink("current-system", dir.path().join("result")).unwrap();
    std::os::unix::fs::symlink(format!("{target}/sw/bin/bash"), dir.path().join("bash")).unwrap();
    let store_dir = Path::new(STORE_DIR);
    for name in ["current-system", "result", "bash"] {
        let got = closure_diff::resolve_store_path(&dir.path().join(name), store_dir).unwrap();
        assert_eq!(got, target, "{name}");
    }
    assert_eq!(closure_diff::resolve_store_path(Path::new(&target), store_dir).unwrap(), target);
    // `..` out of a store path leaves the store (here the store path is
    // not on disk, so the walk stops at it with an error).
    let out = format!("{target}/sw/../..");
    let err = closure_diff::resolve_store_path(Path::new(&out), store_dir).unwrap_err();
    assert!(matches!(err, Error::NotStorePath { .. } | Error::Resolve { .. }), "{err:?}");
    let err = closure_diff::resolve_store_path(Path::new("/nix/store/../etc"), store_dir).unwrap_err();
    assert!(matches!(err, Error::NotStorePath { .. } | Error::Resolve { .. }), "{err:?}");
    // A loop is an error, not a hang.
    std::os::unix::fs::symlink("loop-b", dir.path().join("loop-a")).unwrap();
    std::os::unix::fs::symlink("loop-a", dir.path().join("loop-b")).unwrap();
    let err = closure_diff::resolve_store_path(&dir.path().join("loop-a"), store_dir).unwrap_err();
    assert!(matches!(err, Error::LinkLoop { .. }), "{err:?}");
}

/// Builds a database with the current schema by hand, registers the same
/// graph as `small_store`, and reads it with both the reader and Nix.
#[test]
fn database_with_the_current_schema() {
    testbed::require!(nix);
    let (reference, app, expected) = small_store(8);
    let store = TempStore::new();
    let db_dir = store.root().join("nix/var/nix/db");
    std::fs::create_dir_all(&db_dir).unwrap();
    std::fs::create_dir_all(store.root().join("nix/store")).unwrap();
    std::fs::write(db_dir.join("schema"), "10").unwrap();
    let conn = rusqlite::Connection::open(db_dir.join("db.sqlite")).unwrap();
    conn.execute_batch(include_str!("../fixtures/schema-current.sql")).unwrap();
    conn.pragma_update(None, "journal_mode", "wal").unwrap();
    // Copy the rows Nix wrote into the other store.
    let src = rusqlite::Connection::open(reference.db_path()).unwrap();
    let mut rows = src.prepare("select id, path, hash, registrationTime, narSize from ValidPaths").unwrap();
    let rows: Vec<(i64, String, String, i64, i64)> = rows
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (id, path, hash, time, size) in rows {
        conn.execute(
            "insert into ValidPaths (id, path, hash, registrationTime, narSize) values (?1, ?2, ?3, ?4, ?5)",
            rusqlite::params![id, path, hash, time, size],
        )
        .unwrap();
    }
    let mut refs = src.prepare("select referrer, reference from Refs").unwrap();
    let refs: Vec<(i64, i64)> =
        refs.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().collect::<Result<_, _>>().unwrap();
    for (a, b) in refs {
        conn.execute("insert into Refs values (?1, ?2)", [a, b]).unwrap();
    }
    drop(conn);

    let options = Options { source: SourcePolicy::DatabaseOnly, ..store.options() };
    let closure = read_closure(Path::new(&app), &options).unwrap();
    assert_eq!(as_map(&closure), expected);
    // Nix itself reads the hand-built database the same way.
    let options = Options { source: SourcePolicy::NixOnly, ..store.options() };
    let closure = read_closure(Path::new(&app), &options).unwrap();
    assert_eq!(as_map(&closure), expected);
}

#[test]
fn database_of_another_layout_is_unsupported() {
    testbed::require!(nix);
    let (store, app, expected) = small_store(9);
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("db.sqlite");
    let conn = rusqlite::Connection::open(&other).unwrap();
    conn.execute_batch("create table ValidPaths (id integer primary key, path text); create table Refs (a, b);")
        .unwrap();
    drop(conn);
    let options = Options { db_path: other, source: SourcePolicy::DatabaseOnly, ..store.options() };
    let err = read_closure(Path::new(&app), &options).unwrap_err();
    assert!(matches!(&err, Error::Database { source: DbError::UnsupportedSchema { .. }, .. }), "{err:?}");
    let msg = closure_diff::store::chain(&err);
    assert!(msg.contains("has no column narSize"), "{msg}");
    let options = Options { source: SourcePolicy::Auto, ..options };
    let closure = read_closure(Path::new(&app), &options).unwrap();
    assert_eq!(closure.source, Source::NixPathInfo);
    assert_eq!(as_map(&closure), expected);
}

#[test]
fn options_follow_nix_environment() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
    };
    let o = Options::from_nix_env(env(&[]));
    assert_eq!(o, Options::default());
    let o = Options::from_nix_env(env(&[("NIX_STATE_DIR", "/state"), ("NIX_STORE_DIR", "/s")]));
    assert_eq!(o.db_path, Path::new("/state/db/db.sqlite"));
    assert_eq!(o.store_dir, Path::new("/s"));
    let o = Options::from_nix_env(env(&[("NIX_STATE_DIR", "/state"), ("NIX_DB_DIR", "/db")]));
    assert_eq!(o.db_path, Path::new("/db/db.sqlite"));
    assert_eq!(Options::from_nix_env(env(&[("NIX_REMOTE", "daemon")])).source, SourcePolicy::Auto);
    assert_eq!(Options::from_nix_env(env(&[("NIX_REMOTE", "ssh-ng://builder")])).source, SourcePolicy::NixOnly);
}

/// Paths registered without a NAR size (NULL in old databases) count as
/// zero bytes, and ids with large gaps (left by garbage collection) work
/// with both strategies.
#[test]
fn null_sizes_and_sparse_ids() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(include_str!("../fixtures/schema-current.sql")).unwrap();
    let root = store_path(12, 1, "root-1.0");
    let dep = store_path(12, 2, "dep-2.0");
    let other = store_path(12, 3, "other-3.0");
    for (id, path, size) in [(5_i64, &dep, None), (90_000, &root, Some(42_i64)), (7, &other, Some(1))] {
        conn.execute(
            "insert into ValidPaths (id, path, hash, registrationTime, narSize) values (?1, ?2, 'sha256:x', 0, ?3)",
            rusqlite::params![id, path, size],
        )
        .unwrap();
    }
    conn.execute("insert into Refs values (90000, 5)", []).unwrap();
    conn.execute("insert into Refs values (90000, 90000)", []).unwrap();
    drop(conn);
    for scan_limit in [u64::MAX, 0] {
        let options =
            Options { db_path: db.clone(), source: SourcePolicy::DatabaseOnly, scan_limit, ..Options::default() };
        let closure = read_closure(Path::new(&root), &options).unwrap();
        let expected: BTreeMap<String, u64> = [(root.clone(), 42), (dep.clone(), 0)].into_iter().collect();
        assert_eq!(as_map(&closure), expected, "scan_limit {scan_limit}");
    }
}
