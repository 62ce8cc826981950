//! Reading closures from Nix's SQLite database, read-only.
//!
//! The database is opened with `mode=ro`, never with `immutable=1`: an
//! immutable open skips SQLite's locking and the write-ahead log, so it
//! can read a half-written state while Nix registers paths. A read-only
//! open sees a consistent snapshot and never writes.
//!
//! Only two tables matter, and their shape has been the same from Nix
//! 2.0 through Nix 2.8 and current releases (schema version 10):
//! `ValidPaths(id, path, narSize, ...)` and `Refs(referrer, reference)`,
//! both columns of `Refs` being `ValidPaths.id`. What differs between
//! versions are the content-addressing tables (`Realisations` in Nix 2.8,
//! `BuildTrace` later), which a closure does not need. The reader checks
//! the columns it uses and reports any other layout as unsupported, so
//! the caller can fall back to asking `nix`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags};

use crate::closure::PathInfo;

/// Why the database could not answer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The file is missing or cannot be looked at.
    #[error("cannot open {path}: {source}")]
    Missing {
        /// The database file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// SQLite could not open the file (no permission, locked files).
    #[error("cannot open {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// The file is not an SQLite database, or a damaged one.
    #[error("{path} is not a readable SQLite database: {source}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// The database lacks the tables or columns of Nix's schema.
    #[error("{path} does not have Nix's schema ({detail})")]
    UnsupportedSchema {
        /// The database file.
        path: PathBuf,
        /// What is missing.
        detail: String,
    },
    /// A query failed for another reason (locked for too long, I/O).
    #[error("querying {path} failed: {source}")]
    Query {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// The database does not list the path as valid.
    #[error("{store_path} is not a valid store path according to {path}")]
    NotValid {
        /// The database file.
        path: PathBuf,
        /// The store path asked for.
        store_path: String,
    },
}

/// The recursive walk over references. `UNION` (not `UNION ALL`) makes
/// SQLite drop ids it has already seen, which both deduplicates and ends
/// the recursion on cycles (a path may refer to itself).
const CLOSURE_SQL: &str = "
WITH RECURSIVE closure(id) AS (
    SELECT id FROM ValidPaths WHERE path = ?1
    UNION
    SELECT Refs.reference FROM Refs JOIN closure ON Refs.referrer = closure.id
)
SELECT ValidPaths.path, ValidPaths.narSize
FROM closure JOIN ValidPaths ON ValidPaths.id = closure.id";

/// An open, read-only Nix database.
pub struct Database {
    conn: Connection,
    path: PathBuf,
}

/// Builds a `file:` URI for a path, escaping the characters that URIs
/// reserve so that any file name opens.
fn file_uri(path: &Path) -> String {
    let mut uri = String::from("file:");
    for b in path.as_os_str().as_encoded_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' | b'~' => {
                uri.push(char::from(*b));
            }
            _ => uri.push_str(&format!("%{b:02X}")),
        }
    }
    uri.push_str("?mode=ro");
    uri
}

fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt)
    )
}

impl Database {
    /// Opens the database read-only and checks that it has the tables and
    /// columns the closure query needs.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let path_buf = path.to_path_buf();
        // SQLite would report a missing file only as "unable to open";
        // checking first gives the reader the real reason.
        if let Err(source) = std::fs::metadata(path) {
            return Err(DbError::Missing { path: path_buf, source });
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(file_uri(path), flags)
            .map_err(|source| DbError::Open { path: path_buf.clone(), source })?;
        // Nix holds its write transactions briefly; wait for one rather
        // than failing (readers are not blocked in WAL mode anyway).
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(|source| DbError::Open { path: path_buf.clone(), source })?;
        let db = Database { conn, path: path_buf };
        db.check_schema()?;
        Ok(db)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn classify(&self, source: rusqlite::Error) -> DbError {
        let path = self.path.clone();
        if is_corruption(&source) {
            DbError::Corrupt { path, source }
        } else if matches!(
            source.sqlite_error_code(),
            Some(ErrorCode::CannotOpen | ErrorCode::PermissionDenied | ErrorCode::ReadOnly)
        ) {
            DbError::Open { path, source }
        } else {
            DbError::Query { path, source }
        }
    }

    fn check_schema(&self) -> Result<(), DbError> {
        for (table, columns) in
            [("ValidPaths", &["id", "path", "narSize"][..]), ("Refs", &["referrer", "reference"][..])]
        {
            let mut stmt = self
                .conn
                .prepare("SELECT name FROM pragma_table_info(?1)")
                .map_err(|e| self.classify(e))?;
            let present: Vec<String> = stmt
                .query_map([table], |row| row.get::<_, String>(0))
                .map_err(|e| self.classify(e))?
                .collect::<Result<_, _>>()
                .map_err(|e| self.classify(e))?;
            if present.is_empty() {
                return Err(DbError::UnsupportedSchema {
                    path: self.path.clone(),
                    detail: format!("no table {table}"),
                });
            }
            for column in columns {
                if !present.iter().any(|p| p == column) {
                    return Err(DbError::UnsupportedSchema {
                        path: self.path.clone(),
                        detail: format!("table {table} has no column {column}"),
                    });
                }
            }
        }
        Ok(())
    }

    /// The closure of one store path: every path reachable through
    /// references, the root included.
    pub fn closure(&self, store_path: &str) -> Result<Vec<PathInfo>, DbError> {
        let mut stmt = self.conn.prepare_cached(CLOSURE_SQL).map_err(|e| self.classify(e))?;
        let rows = stmt
            .query_map([store_path], |row| {
                let path: String = row.get(0)?;
                let size: Option<i64> = row.get(1)?;
                Ok(PathInfo { path, nar_size: size.and_then(|s| u64::try_from(s).ok()).unwrap_or(0) })
            })
            .map_err(|e| self.classify(e))?;
        let paths: Vec<PathInfo> =
            rows.collect::<Result<_, _>>().map_err(|e| self.classify(e))?;
        if paths.is_empty() {
            return Err(DbError::NotValid { path: self.path.clone(), store_path: store_path.to_owned() });
        }
        Ok(paths)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests may unwrap")]
mod tests {
    use super::*;

    #[test]
    fn uri_escapes_reserved_characters() {
        assert_eq!(file_uri(Path::new("/a b/c?d#e%f.sqlite")), "file:/a%20b/c%3Fd%23e%25f.sqlite?mode=ro");
    }
}
