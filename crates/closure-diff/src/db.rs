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
    #[error("cannot open {path}")]
    Missing {
        /// The database file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// SQLite could not open the file (no permission, locked files).
    #[error("cannot open {path}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// The file is not an SQLite database, or a damaged one.
    #[error("{path} is not a readable SQLite database")]
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
    #[error("querying {path} failed")]
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
    matches!(e.sqlite_error_code(), Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt))
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
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(file_uri(path), flags)
            .map_err(|source| DbError::Open { path: path_buf.clone(), source })?;
        // Nix holds its write transactions briefly; wait for one rather
        // than failing (readers are not blocked in WAL mode anyway).
        conn.busy_timeout(Duration::from_secs(5)).map_err(|source| DbError::Open { path: path_buf.clone(), source })?;
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
            let mut stmt = self.conn.prepare("SELECT name FROM pragma_table_info(?1)").map_err(|e| self.classify(e))?;
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

    /// The closures of several store paths, read in one snapshot of the
    /// database (a read transaction), so that a concurrent registration
    /// cannot make them inconsistent with each other.
    ///
    /// Two strategies give the same answer. A store of at most
    /// `scan_limit` paths is read whole (two sequential scans, about
    /// 0.5 µs per path) and walked in memory; a larger one is walked with
    /// a recursive query per root, whose cost follows the closure rather
    /// than the store (about 5 µs per path of the closure).
    pub fn closures(&self, roots: &[&str], scan_limit: u64) -> Result<Vec<Vec<PathInfo>>, DbError> {
        self.conn.execute_batch("BEGIN").map_err(|e| self.classify(e))?;
        // Membership is tracked with one bit per root in a u64.
        let result = roots
            .chunks(64)
            .map(|chunk| self.closures_in_snapshot(chunk, scan_limit))
            .collect::<Result<Vec<_>, _>>()
            .map(|chunks| chunks.into_iter().flatten().collect());
        // Ending a read transaction cannot lose anything; a failure here
        // only means SQLite already ended it.
        let _ = self.conn.execute_batch("COMMIT");
        result
    }

    fn closures_in_snapshot(&self, roots: &[&str], scan_limit: u64) -> Result<Vec<Vec<PathInfo>>, DbError> {
        let max_id: Option<i64> =
            self.conn.query_row("SELECT max(id) FROM ValidPaths", [], |r| r.get(0)).map_err(|e| self.classify(e))?;
        let max_id = max_id.and_then(|m| u64::try_from(m).ok()).unwrap_or(0);
        if max_id <= scan_limit {
            self.closures_by_scan(roots, max_id)
        } else {
            roots.iter().map(|root| self.closure_by_query(root)).collect()
        }
    }

    fn root_id(&self, store_path: &str) -> Result<u32, DbError> {
        let id: Option<i64> = self
            .conn
            .prepare_cached("SELECT id FROM ValidPaths WHERE path = ?1")
            .and_then(|mut s| s.query_row([store_path], |r| r.get(0)).map(Some))
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })
            .map_err(|e| self.classify(e))?;
        id.and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| DbError::NotValid { path: self.path.clone(), store_path: store_path.to_owned() })
    }

    /// Reads every reference and walks the graph in memory.
    fn closures_by_scan(&self, roots: &[&str], max_id: u64) -> Result<Vec<Vec<PathInfo>>, DbError> {
        let n = usize::try_from(max_id).unwrap_or(usize::MAX).saturating_add(1);
        let root_ids = roots.iter().map(|r| self.root_id(r)).collect::<Result<Vec<_>, _>>()?;

        // The references as adjacency lists in one array (compressed
        // sparse rows): `targets[starts[i]..starts[i + 1]]` are what `i`
        // refers to. Counting first avoids a vector per path.
        let mut edges: Vec<(u32, u32)> = Vec::new();
        {
            let mut stmt = self.conn.prepare("SELECT referrer, reference FROM Refs").map_err(|e| self.classify(e))?;
            let mut rows = stmt.query([]).map_err(|e| self.classify(e))?;
            while let Some(row) = rows.next().map_err(|e| self.classify(e))? {
                let a: i64 = row.get(0).map_err(|e| self.classify(e))?;
                let b: i64 = row.get(1).map_err(|e| self.classify(e))?;
                if let (Ok(a), Ok(b)) = (u32::try_from(a), u32::try_from(b))
                    && (a as usize) < n
                    && (b as usize) < n
                {
                    edges.push((a, b));
                }
            }
        }
        let mut starts = vec![0_u32; n + 1];
        for &(a, _) in &edges {
            starts[a as usize + 1] += 1;
        }
        for i in 0..n {
            starts[i + 1] += starts[i];
        }
        let mut fill = starts.clone();
        let mut targets = vec![0_u32; edges.len()];
        for &(a, b) in &edges {
            let slot = &mut fill[a as usize];
            targets[*slot as usize] = b;
            *slot += 1;
        }
        drop(edges);

        // One bit per root and path: which closures each path is in.
        let mut member = vec![0_u64; n];
        let mut stack = Vec::new();
        for (k, &root) in root_ids.iter().enumerate() {
            let bit = 1_u64 << k;
            stack.push(root);
            member[root as usize] |= bit;
            while let Some(id) = stack.pop() {
                let (from, to) = (starts[id as usize] as usize, starts[id as usize + 1] as usize);
                for &next in &targets[from..to] {
                    if member[next as usize] & bit == 0 {
                        member[next as usize] |= bit;
                        stack.push(next);
                    }
                }
            }
        }

        let mut out: Vec<Vec<PathInfo>> = vec![Vec::new(); roots.len()];
        let mut stmt = self.conn.prepare("SELECT id, path, narSize FROM ValidPaths").map_err(|e| self.classify(e))?;
        let mut rows = stmt.query([]).map_err(|e| self.classify(e))?;
        while let Some(row) = rows.next().map_err(|e| self.classify(e))? {
            let id: i64 = row.get(0).map_err(|e| self.classify(e))?;
            let Some(bits) = usize::try_from(id).ok().and_then(|i| member.get(i)).copied() else {
                continue;
            };
            if bits == 0 {
                continue;
            }
            let path: String = row.get(1).map_err(|e| self.classify(e))?;
            let size: Option<i64> = row.get(2).map_err(|e| self.classify(e))?;
            let info = PathInfo { path, nar_size: nar_size(size) };
            for (k, list) in out.iter_mut().enumerate() {
                if bits & (1_u64 << k) != 0 {
                    list.push(info.clone());
                }
            }
        }
        Ok(out)
    }

    /// The closure of one store path with a recursive query.
    fn closure_by_query(&self, store_path: &str) -> Result<Vec<PathInfo>, DbError> {
        let mut stmt = self.conn.prepare_cached(CLOSURE_SQL).map_err(|e| self.classify(e))?;
        let rows = stmt
            .query_map([store_path], |row| {
                let path: String = row.get(0)?;
                let size: Option<i64> = row.get(1)?;
                Ok(PathInfo { path, nar_size: nar_size(size) })
            })
            .map_err(|e| self.classify(e))?;
        let paths: Vec<PathInfo> = rows.collect::<Result<_, _>>().map_err(|e| self.classify(e))?;
        if paths.is_empty() {
            return Err(DbError::NotValid { path: self.path.clone(), store_path: store_path.to_owned() });
        }
        Ok(paths)
    }
}

/// A NAR size as recorded (NULL for paths registered without one).
fn nar_size(size: Option<i64>) -> u64 {
    size.and_then(|s| u64::try_from(s).ok()).unwrap_or(0)
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
