//! system-manager's state file: what the engine believes it activated.
//!
//! Version 1, as system-manager writes it:
//!
//! ```json
//! {"fileTree": {"files": [...], "backedUpFiles": [...]},
//!  "services": {"nginx.service": {"storePath": "/nix/store/...", "masked": false}},
//!  "version": 1}
//! ```
//!
//! The engine compares `services` with the new generation's
//! `services.json` on its next activation: a unit whose `storePath`
//! differs is reloaded or restarted, one missing from the new map is
//! stopped. So after a switch that deferred a unit's actions, the unit's
//! entry must stay what it was ([`services_after`]): a later plain
//! `system-manager switch` then still sees it as changed.
//!
//! safe-switch reads version 1 only. A file of another version (or of
//! system-manager's first format, which had none) is an
//! [`Error::Version`]; anything else that is not such a file is an
//! [`Error::Invalid`]. Neither quotes the file. The `fileTree` and every
//! other key are kept as they are when the file is written again.

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::path::Path;

use serde_json::{Map, Value};

use crate::Error;

/// Where system-manager keeps its state file.
pub const STATE_FILE: &str = "/var/lib/system-manager/state/system-manager-state.json";

/// The largest state file read (it lists the managed `/etc` files and
/// units: far less on any real host).
const LIMIT: u64 = 64 << 20;

/// A services map: unit name to entry, as in the state file and in a
/// generation's `services/services.json`.
pub type Services = Map<String, Value>;

/// A version-1 state file, as read or as to be written.
#[derive(Clone, Debug, PartialEq)]
pub struct State {
    object: Map<String, Value>,
}

/// One entry of a services map, as system-manager writes it.
pub fn entry(store_path: Option<&str>, masked: bool) -> Value {
    let mut map = Map::new();
    map.insert("storePath".to_owned(), store_path.map_or(Value::Null, |p| Value::String(p.to_owned())));
    map.insert("masked".to_owned(), Value::Bool(masked));
    Value::Object(map)
}

/// The services map a switch leaves in the state file: `generation`'s
/// (the new generation's, or the running one's for a settle), except that
/// each unit of `keep` (whose running instance is not the generation's)
/// has its entry of `before`, or none when it had none there.
pub fn services_after(generation: &Services, before: &Services, keep: &BTreeSet<String>) -> Services {
    let mut out: Services = generation.iter().filter(|(unit, _)| !keep.contains(*unit)).map(clone).collect();
    out.extend(before.iter().filter(|(unit, _)| keep.contains(*unit)).map(clone));
    let mut sorted: Vec<(String, Value)> = out.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    sorted.into_iter().collect()
}

fn clone((unit, entry): (&String, &Value)) -> (String, Value) {
    (unit.clone(), entry.clone())
}

impl State {
    /// The state of a host system-manager never activated, with these
    /// services (an empty file tree).
    pub fn with_services(services: Services) -> State {
        let mut tree = Map::new();
        tree.insert("files".to_owned(), Value::Array(Vec::new()));
        tree.insert("backedUpFiles".to_owned(), Value::Array(Vec::new()));
        let mut object = Map::new();
        object.insert("fileTree".to_owned(), Value::Object(tree));
        object.insert("services".to_owned(), Value::Object(services));
        object.insert("version".to_owned(), Value::from(1));
        State { object }
    }

    /// Parses a state file's text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<State, Error> {
        let invalid = |message: String| Error::Invalid { path: path.to_owned(), message };
        let value: Value = serde_json::from_str(text).map_err(|e| {
            let what = match e.classify() {
                serde_json::error::Category::Eof => "ends too early",
                _ => "is not valid JSON",
            };
            invalid(format!("it {what} (line {}, column {})", e.line(), e.column()))
        })?;
        let Value::Object(object) = value else {
            return Err(invalid("it is not a JSON object".to_owned()));
        };
        match object.get("version") {
            None => return Err(Error::Version { path: path.to_owned(), version: "0".to_owned() }),
            Some(Value::Number(n)) if n.as_u64() == Some(1) => {}
            Some(Value::Number(n)) => return Err(Error::Version { path: path.to_owned(), version: n.to_string() }),
            Some(_) => return Err(invalid("its version is not a number".to_owned())),
        }
        if !object.get("fileTree").is_some_and(Value::is_object) {
            return Err(invalid("it has no fileTree object".to_owned()));
        }
        let Some(Value::Object(services)) = object.get("services") else {
            return Err(invalid("it has no services object".to_owned()));
        };
        for (i, (_, e)) in services.iter().enumerate() {
            let ok = match e {
                Value::Object(e) => {
                    e.get("storePath").is_none_or(|p| p.is_string() || p.is_null())
                        && e.get("masked").is_none_or(Value::is_boolean)
                }
                _ => false,
            };
            if !ok {
                return Err(invalid(format!(
                    "entry {} of services is not an object with a storePath (text or null) and masked (true or false)",
                    i + 1
                )));
            }
        }
        Ok(State { object })
    }

    /// Reads the state file at `path`; `None` when there is none (a host
    /// system-manager never activated). The file must be a regular file
    /// (a link or a FIFO is refused without being opened) of at most
    /// 64 MiB.
    pub fn read(path: &Path) -> Result<Option<State>, Error> {
        let invalid = |message: String| Error::Invalid { path: path.to_owned(), message };
        let meta = match std::fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(path, e)),
        };
        if !meta.file_type().is_file() {
            return Err(invalid("not a regular file".to_owned()));
        }
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(LIMIT + 1).read_to_end(&mut bytes))
            .map_err(|e| Error::io(path, e))?;
        if bytes.len() as u64 > LIMIT {
            return Err(invalid(format!("larger than {} MiB", LIMIT >> 20)));
        }
        let text = String::from_utf8(bytes).map_err(|_| invalid("not UTF-8 text".to_owned()))?;
        State::parse(&text, path).map(Some)
    }

    /// The services map.
    pub fn services(&self) -> &Services {
        static EMPTY: std::sync::OnceLock<Services> = std::sync::OnceLock::new();
        match self.object.get("services") {
            Some(Value::Object(s)) => s,
            _ => EMPTY.get_or_init(Map::new),
        }
    }

    /// Replaces the services map.
    pub fn set_services(&mut self, services: Services) {
        self.object.insert("services".to_owned(), Value::Object(services));
    }

    /// The file's text, compact, as system-manager writes it.
    pub fn to_json(&self) -> String {
        // A map of JSON values always serializes.
        serde_json::to_string(&self.object).unwrap_or_default()
    }

    /// Writes the state file atomically (a file next to it, synced, then
    /// renamed over it), so that system-manager and safe-switch read either
    /// the old or the new state, never half of one. The file keeps its
    /// mode (a new one gets 0644); its directory is created if needed.
    pub fn write(&self, path: &Path) -> Result<(), Error> {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mode = std::fs::metadata(path).map(|m| m.permissions().mode() & 0o7777).unwrap_or(0o644);
        let mut tmp = tempfile::Builder::new()
            .prefix(".system-manager-state.")
            .tempfile_in(dir)
            .map_err(|e| Error::io(dir, e))?;
        tmp.as_file().set_permissions(std::fs::Permissions::from_mode(mode)).map_err(|e| Error::io(path, e))?;
        tmp.write_all(self.to_json().as_bytes()).map_err(|e| Error::io(path, e))?;
        tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
        tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const V1: &str = r#"{"fileTree":{"files":["/etc/systemd/system/a.service"],"backedUpFiles":[]},"services":{"a.service":{"storePath":"/nix/store/1-a/a.service","masked":false},"ssh.service":{"storePath":null,"masked":true}},"version":1}"#;

    fn map(pairs: &[(&str, Option<&str>)]) -> Services {
        pairs.iter().map(|(u, p)| ((*u).to_owned(), entry(*p, p.is_none()))).collect()
    }

    #[test]
    fn a_version_1_file_round_trips_with_what_safe_switch_does_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/system-manager-state.json");
        let with_more = V1.replace(r#""version":1"#, r#""version":1,"extra":{"kept":true}"#);
        let state = State::parse(&with_more, &path).unwrap();
        assert_eq!(state.services().len(), 2);
        state.write(&path).unwrap();
        let back = State::read(&path).unwrap().unwrap();
        assert_eq!(back, state);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(r#""extra":{"kept":true}"#), "{text}");
        assert!(text.contains(r#""files":["/etc/systemd/system/a.service"]"#), "{text}");
        assert!(State::read(&dir.path().join("none.json")).unwrap().is_none(), "no file: never activated");
    }

    #[test]
    fn a_write_is_atomic_keeps_the_mode_and_leaves_nothing_behind() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("system-manager-state.json");
        State::with_services(Services::new()).write(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o644);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
        let before = inode(&path);
        State::parse(V1, &path).unwrap().write(&path).unwrap();
        assert_ne!(inode(&path), before, "replaced by a rename, not rewritten in place");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["system-manager-state.json"]);
    }

    #[test]
    fn an_unknown_version_is_refused_naming_the_file_and_the_version() {
        let path = Path::new("/var/lib/system-manager/state/system-manager-state.json");
        for (text, version) in [
            (V1.replace(r#""version":1"#, r#""version":2"#), "2"),
            (r#"{"files":[],"backedUpFiles":[]}"#.to_owned(), "0"),
        ] {
            let err = State::parse(&text, path).unwrap_err();
            assert!(matches!(&err, Error::Version { version: v, .. } if v == version), "{err}");
            let message = err.to_string();
            assert!(message.starts_with(&format!("{}: system-manager state file version {version};", path.display())));
            assert!(message.contains("version 1 only"), "{message}");
        }
    }

    #[test]
    fn a_corrupt_file_is_refused_naming_it_and_never_quoting_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("system-manager-state.json");
        for (text, why) in [
            ("{\"version\": 1, \"token\": \"secret-value\"", "ends too early (line 1"),
            ("secret-value", "is not valid JSON (line 1, column 1)"),
            ("[\"secret-value\"]", "it is not a JSON object"),
            (r#"{"version":"secret-value","fileTree":{},"services":{}}"#, "its version is not a number"),
            (r#"{"version":1,"services":{}}"#, "it has no fileTree object"),
            (r#"{"version":1,"fileTree":{},"services":["secret-value"]}"#, "it has no services object"),
            (
                r#"{"version":1,"fileTree":{},"services":{"a":{"storePath":"x"},"b":{"storePath":7}}}"#,
                "entry 2 of services is not an object",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = State::read(&path).unwrap_err().to_string();
            assert!(err.starts_with(&format!("{}: not a system-manager state file", path.display())), "{err}");
            assert!(err.contains(why), "{text}: {err}");
            assert!(!err.contains("secret-value"), "{err}");
        }
        std::fs::write(&path, b"\xff\xfe").unwrap();
        assert!(State::read(&path).unwrap_err().to_string().ends_with("not UTF-8 text"));
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &path).unwrap();
        assert!(State::read(&path).unwrap_err().to_string().ends_with("not a regular file"));
        std::fs::remove_file(&path).unwrap();
        std::fs::File::create(&path).unwrap().set_len(LIMIT + 1).unwrap();
        assert!(State::read(&path).unwrap_err().to_string().ends_with("larger than 64 MiB"));
    }

    #[test]
    fn units_kept_have_their_entry_from_before_or_none() {
        let generation = map(&[("a.service", Some("/new/a")), ("new.service", Some("/new/n")), ("ssh.service", None)]);
        let before = map(&[("a.service", Some("/old/a")), ("gone.service", Some("/old/g"))]);
        let keep: BTreeSet<String> =
            ["a.service", "new.service", "gone.service"].into_iter().map(str::to_owned).collect();
        let after = services_after(&generation, &before, &keep);
        assert_eq!(
            after,
            map(&[("a.service", Some("/old/a")), ("gone.service", Some("/old/g")), ("ssh.service", None)])
        );
        assert_eq!(services_after(&generation, &before, &BTreeSet::new()), generation);
    }
}
