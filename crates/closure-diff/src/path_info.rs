//! Reading closures with `nix path-info --json --recursive`, for when the
//! database cannot be opened (a non-root user, a remote or chroot store,
//! another layout).
//!
//! The JSON comes in two shapes. Nix up to 2.18 (and Lix) prints an array
//! of objects that each carry a `path` key; Nix 2.19 and later print an
//! object keyed by store path. Invalid paths show up as `"valid": false`
//! in the first shape and as `null` in the second. Both are accepted, and
//! paths given as bare base names are put under the store directory.
//!
//! `nix` runs through nix-compose's [`NixRunner`], like every other call to
//! Nix, so that the fallback can be tested with a fake.

use std::ffi::OsString;
use std::path::Path;

use nix_compose::{NixError, NixRunner, StderrMode};
use serde_json::Value;

use crate::closure::PathInfo;

/// Why `nix path-info` did not produce a closure.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// `nix` could not be run.
    #[error(transparent)]
    Nix(#[from] NixError),
    /// The program ran and failed.
    #[error("`{command}` exited with {status}: {stderr}")]
    Failed {
        /// The command line, for the message.
        command: String,
        /// The exit status.
        status: String,
        /// The end of its standard error.
        stderr: String,
    },
    /// The output was not the expected JSON.
    #[error("cannot parse the output of `{command}`: {detail}")]
    Parse {
        /// The command line, for the message.
        command: String,
        /// What was wrong.
        detail: String,
    },
    /// Nix reports the path as not valid.
    #[error("{store_path} is not a valid store path according to `{command}`")]
    NotValid {
        /// The command line, for the message.
        command: String,
        /// The store path asked for.
        store_path: String,
    },
}

/// The arguments of the `nix path-info` call (after the program name and
/// the options the runner gives every call).
pub fn args(store_path: &str, store_uri: Option<&str>) -> Vec<String> {
    let mut args: Vec<String> = ["path-info", "--json", "--recursive"].iter().map(|s| (*s).to_owned()).collect();
    if let Some(uri) = store_uri {
        args.push("--store".to_owned());
        args.push(uri.to_owned());
    }
    args.push(store_path.to_owned());
    args
}

/// Runs `nix path-info` through `nix` and parses its output.
pub fn read(
    nix: &dyn NixRunner,
    store_dir: &Path,
    store_uri: Option<&str>,
    store_path: &str,
) -> Result<Vec<PathInfo>, CommandError> {
    let argv = args(store_path, store_uri);
    let command = format!("nix {}", argv.join(" "));
    let output = nix.run(&argv.iter().map(OsString::from).collect::<Vec<_>>(), StderrMode::Capture)?;
    if !output.success {
        // Every Nix version words an unknown path this way; it is an
        // answer about the path, not a failure of the command.
        if output.stderr.contains(&format!("path '{store_path}' is not valid")) {
            return Err(CommandError::NotValid { command, store_path: store_path.to_owned() });
        }
        let tail: Vec<&str> = output.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = tail[tail.len().saturating_sub(3)..].join(" / ");
        let status = output.code.map_or_else(|| "a signal".to_owned(), |code| format!("exit status: {code}"));
        return Err(CommandError::Failed { command, status, stderr: tail });
    }
    parse(output.stdout.as_bytes(), store_dir, store_path).map_err(|e| match e {
        ParseError::NotValid => CommandError::NotValid { command, store_path: store_path.to_owned() },
        ParseError::Bad(detail) => CommandError::Parse { command, detail },
    })
}

/// Why parsing failed.
#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    /// The root is listed as invalid or missing.
    NotValid,
    /// The output is malformed.
    Bad(String),
}

fn full_path(store_dir: &Path, p: &str) -> String {
    if p.starts_with('/') { p.to_owned() } else { format!("{}/{p}", store_dir.display()) }
}

fn nar_size(info: &Value) -> u64 {
    info.get("narSize").and_then(Value::as_u64).unwrap_or(0)
}

/// Parses `nix path-info --json --recursive` output of either shape.
pub fn parse(stdout: &[u8], store_dir: &Path, root: &str) -> Result<Vec<PathInfo>, ParseError> {
    let value: Value = serde_json::from_slice(stdout).map_err(|e| ParseError::Bad(e.to_string()))?;
    let mut paths = Vec::new();
    match value {
        Value::Array(items) => {
            for item in items {
                let path = item
                    .get("path")
                    .and_then(Value::as_str)
                    .ok_or_else(|| ParseError::Bad("an entry has no \"path\"".to_owned()))?;
                let path = full_path(store_dir, path);
                if item.get("valid").and_then(Value::as_bool) == Some(false) {
                    if path == root {
                        return Err(ParseError::NotValid);
                    }
                    continue;
                }
                paths.push(PathInfo { nar_size: nar_size(&item), path });
            }
        }
        Value::Object(map) => {
            for (key, info) in map {
                let path = full_path(store_dir, &key);
                if info.is_null() {
                    if path == root {
                        return Err(ParseError::NotValid);
                    }
                    continue;
                }
                if !info.is_object() {
                    return Err(ParseError::Bad(format!("the entry for {key} is not an object")));
                }
                paths.push(PathInfo { nar_size: nar_size(&info), path });
            }
        }
        other => {
            return Err(ParseError::Bad(format!(
                "expected an array or an object, got {}",
                match other {
                    Value::Null => "null",
                    Value::Bool(_) => "a boolean",
                    Value::Number(_) => "a number",
                    _ => "a string",
                }
            )));
        }
    }
    if !paths.iter().any(|p| p.path == root) {
        return Err(ParseError::NotValid);
    }
    Ok(paths)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests may unwrap")]
mod tests {
    use super::*;

    const ROOT: &str = "/nix/store/g2xavc2jpzqxqql693khkwfkdb59d00d-app-2.3";
    const LIB: &str = "/nix/store/y3pan8q3lzkbkm1yh9drr4ckb75qdz4d-libfoo-1.0";

    fn store() -> &'static Path {
        Path::new("/nix/store")
    }

    #[test]
    fn array_shape() {
        let json = format!(
            r#"[{{"path":"{ROOT}","narSize":176,"references":["{LIB}"]}},{{"path":"{LIB}","narSize":128,"references":[]}}]"#
        );
        let got = parse(json.as_bytes(), store(), ROOT).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], PathInfo { path: ROOT.into(), nar_size: 176 });
        assert_eq!(got[1], PathInfo { path: LIB.into(), nar_size: 128 });
    }

    #[test]
    fn object_shape_with_full_and_base_names() {
        let json = format!(
            r#"{{"{ROOT}":{{"narSize":176,"references":["{LIB}"]}},"y3pan8q3lzkbkm1yh9drr4ckb75qdz4d-libfoo-1.0":{{"narSize":128}}}}"#
        );
        let mut got = parse(json.as_bytes(), store(), ROOT).unwrap();
        got.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(got[0], PathInfo { path: ROOT.into(), nar_size: 176 });
        assert_eq!(got[1], PathInfo { path: LIB.into(), nar_size: 128 });
    }

    #[test]
    fn invalid_root_in_either_shape() {
        let array = format!(r#"[{{"path":"{ROOT}","valid":false}}]"#);
        assert_eq!(parse(array.as_bytes(), store(), ROOT), Err(ParseError::NotValid));
        let object = format!(r#"{{"{ROOT}":null}}"#);
        assert_eq!(parse(object.as_bytes(), store(), ROOT), Err(ParseError::NotValid));
        assert_eq!(parse(b"[]", store(), ROOT), Err(ParseError::NotValid));
    }

    #[test]
    fn malformed_output() {
        assert!(matches!(parse(b"not json", store(), ROOT), Err(ParseError::Bad(_))));
        assert!(matches!(parse(b"42", store(), ROOT), Err(ParseError::Bad(_))));
        assert!(matches!(parse(b"[{\"narSize\":1}]", store(), ROOT), Err(ParseError::Bad(_))));
        assert!(matches!(parse(format!(r#"{{"{ROOT}":3}}"#).as_bytes(), store(), ROOT), Err(ParseError::Bad(_))));
    }
}
