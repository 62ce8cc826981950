//! launchd jobs as a nix-darwin generation ships them, and how one plist is
//! parsed and flattened into comparable keys.
//!
//! A generation holds three sets of plists (see [`Scope`]). Parsing here is
//! pure: it takes bytes and a name for error messages; reading them from
//! disk is the job of the `io` module.

use std::collections::BTreeMap;
use std::io::Cursor;

use crate::error::LoadError;

/// Where a plist lives, which decides the file it is installed to and the
/// launchd domain it is loaded into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// `launchd.daemons`: `Library/LaunchDaemons` in the generation,
    /// installed to `/Library/LaunchDaemons`, loaded into the `system`
    /// domain.
    Daemon,
    /// `launchd.agents`: `Library/LaunchAgents` in the generation, installed
    /// to `/Library/LaunchAgents`, loaded into each user's GUI session.
    Agent,
    /// `launchd.user.agents`: `user/Library/LaunchAgents` in the generation,
    /// installed to the primary user's `~/Library/LaunchAgents`, loaded into
    /// that user's GUI domain.
    UserAgent,
}

impl Scope {
    /// Every scope, in the order activation handles them.
    pub const ALL: [Scope; 3] = [Scope::Daemon, Scope::Agent, Scope::UserAgent];

    /// The directory holding this scope's plists, relative to the
    /// generation's toplevel.
    pub fn generation_dir(self) -> &'static str {
        match self {
            Scope::Daemon => "Library/LaunchDaemons",
            Scope::Agent => "Library/LaunchAgents",
            Scope::UserAgent => "user/Library/LaunchAgents",
        }
    }

    /// A short stable name, used in diagnostics.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Daemon => "daemon",
            Scope::Agent => "agent",
            Scope::UserAgent => "user-agent",
        }
    }
}

/// One launchd job of a generation: its plist, raw and parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    /// The scope the plist was found in.
    pub scope: Scope,
    /// The file name, e.g. `org.nixos.nix-daemon.plist`. nix-darwin names
    /// every plist after its label.
    pub file_name: String,
    /// The `Label` key, when the plist has one.
    pub label: Option<String>,
    /// The file's bytes. nix-darwin decides "changed" by comparing bytes,
    /// so they are kept next to the parsed form.
    pub bytes: Vec<u8>,
    /// The plist flattened into `key path → values` (see [`flatten`]).
    pub keys: BTreeMap<String, Vec<String>>,
    /// Whether launchd starts the job as soon as it is loaded (`RunAtLoad`,
    /// or `KeepAlive` set to true or to a dictionary of conditions).
    pub starts_at_load: bool,
}

impl Job {
    /// Parses a plist in any encoding the `plist` crate reads (XML, binary,
    /// OpenStep ASCII). `path` only names the file in errors.
    pub fn parse(scope: Scope, file_name: &str, path: &str, bytes: Vec<u8>) -> Result<Job, LoadError> {
        let value = plist::Value::from_reader(Cursor::new(&bytes))
            .map_err(|source| LoadError::Plist { path: path.to_owned(), source })?;
        let Some(dict) = value.as_dictionary() else {
            return Err(LoadError::NotADictionary { path: path.to_owned() });
        };
        let label = dict.get("Label").and_then(plist::Value::as_string).map(str::to_owned);
        let run_at_load = dict.get("RunAtLoad").and_then(plist::Value::as_boolean) == Some(true);
        // A KeepAlive dictionary states conditions under which launchd keeps
        // the job alive; launchd evaluates them at load, so such jobs may
        // start at once, and are reported as doing so.
        let keep_alive = match dict.get("KeepAlive") {
            Some(plist::Value::Boolean(b)) => *b,
            Some(plist::Value::Dictionary(d)) => !d.is_empty(),
            _ => false,
        };
        Ok(Job {
            scope,
            file_name: file_name.to_owned(),
            label,
            keys: flatten(&value),
            bytes,
            starts_at_load: run_at_load || keep_alive,
        })
    }

    /// The label launchd knows the job by: the `Label` key, or the file
    /// name without `.plist` when the key is missing.
    pub fn label_or_stem(&self) -> &str {
        self.label.as_deref().unwrap_or_else(|| self.file_name.strip_suffix(".plist").unwrap_or(&self.file_name))
    }
}

/// The launchd-relevant content of one nix-darwin generation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerationJobs {
    /// The toplevel path, as it should appear in plans and operations.
    pub path: String,
    /// Every plist of the generation.
    pub jobs: Vec<Job>,
    /// `etc/nix/nix.conf`, when the generation has one.
    pub nix_conf: Option<Vec<u8>>,
    /// `etc/nix/machines`, when the generation has one.
    pub nix_machines: Option<Vec<u8>>,
    /// What the generation's activation does to macOS's own sshd
    /// (`services.openssh.enable`), when the caller read it from the
    /// generation's `activate`; `None` when it does nothing or was not
    /// read. [`crate::load_generation`] leaves it `None`.
    pub remote_login: Option<RemoteLogin>,
}

/// What nix-darwin's `services.openssh.enable` does to Remote Login
/// (macOS's own sshd, [`crate::SSHD_LABEL`]), at the end of the launchd
/// activation step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoteLogin {
    /// `true`: when Remote Login is off, `launchctl enable` and
    /// `launchctl bootstrap` of `/System/Library/LaunchDaemons/ssh.plist`.
    On,
    /// `false`: when Remote Login is on, `launchctl bootout` and
    /// `launchctl disable` of `system/com.openssh.sshd`.
    Off,
}

impl GenerationJobs {
    /// Returns the job with this scope and file name.
    pub fn job(&self, scope: Scope, file_name: &str) -> Option<&Job> {
        self.jobs.iter().find(|j| j.scope == scope && j.file_name == file_name)
    }
}

/// The plists installed on the machine now, for the files the generations
/// name. nix-darwin decides "changed" against these copies.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Installed {
    /// The installed plists found; a file that is not installed is absent.
    pub jobs: Vec<Job>,
}

impl Installed {
    /// Returns the installed copy of this scope and file name.
    pub fn job(&self, scope: Scope, file_name: &str) -> Option<&Job> {
        self.jobs.iter().find(|j| j.scope == scope && j.file_name == file_name)
    }
}

/// Flattens a plist into `key path → values`.
///
/// Dictionaries are walked recursively and their keys joined with `.` (a key
/// that itself contains `.` or is empty is quoted, as in
/// `MachServices."org.nixos.foo"`), so a change to one environment variable
/// shows as `EnvironmentVariables.PATH` rather than as the whole dictionary.
/// Arrays are kept whole, one string per element, because their order
/// matters to launchd (`ProgramArguments`). An empty dictionary is recorded
/// as a key with no values, so adding one is still a change.
pub fn flatten(value: &plist::Value) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    flatten_into(value, "", &mut out);
    out
}

fn flatten_into(value: &plist::Value, prefix: &str, out: &mut BTreeMap<String, Vec<String>>) {
    match value {
        plist::Value::Dictionary(dict) if !dict.is_empty() => {
            for (key, v) in dict {
                let segment = quote_segment(key);
                let path = if prefix.is_empty() { segment } else { format!("{prefix}.{segment}") };
                flatten_into(v, &path, out);
            }
        }
        plist::Value::Dictionary(_) => {
            out.insert(prefix.to_owned(), Vec::new());
        }
        plist::Value::Array(items) => {
            out.insert(prefix.to_owned(), items.iter().map(render).collect());
        }
        other => {
            out.insert(prefix.to_owned(), vec![render(other)]);
        }
    }
}

fn quote_segment(key: &str) -> String {
    if key.is_empty() || key.contains('.') || key.contains('"') {
        format!("\"{}\"", key.replace('"', "\\\""))
    } else {
        key.to_owned()
    }
}

/// Renders one plist value as a single line of text for reports.
fn render(value: &plist::Value) -> String {
    match value {
        plist::Value::String(s) => s.clone(),
        plist::Value::Boolean(b) => b.to_string(),
        plist::Value::Integer(i) => i.to_string(),
        plist::Value::Real(r) => r.to_string(),
        plist::Value::Date(d) => d.to_xml_format(),
        plist::Value::Data(d) => format!("<{} bytes of data>", d.len()),
        plist::Value::Uid(u) => format!("<uid {}>", u.get()),
        plist::Value::Array(items) => {
            format!("[{}]", items.iter().map(render).collect::<Vec<_>>().join(", "))
        }
        plist::Value::Dictionary(dict) => {
            let inner: Vec<String> =
                dict.iter().map(|(k, v)| format!("{} = {}", quote_segment(k), render(v))).collect();
            format!("{{{}}}", inner.join("; "))
        }
        // `plist::Value` is non-exhaustive; a future variant is shown by its
        // debug form rather than dropped, so a change is never hidden.
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail by panicking")]
mod tests {
    use super::*;

    const XML: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
  <key>Label</key><string>org.nixos.x</string>
  <key>ProgramArguments</key><array><string>/bin/sh</string><string>-c</string></array>
  <key>EnvironmentVariables</key><dict><key>PATH</key><string>/bin</string></dict>
  <key>MachServices</key><dict><key>org.nixos.x.port</key><true/></dict>
  <key>KeepAlive</key><dict><key>SuccessfulExit</key><false/></dict>
  <key>Sockets</key><dict/>
</dict>
</plist>"#;

    #[test]
    fn flattens_nested_keys() {
        let job = Job::parse(Scope::Daemon, "org.nixos.x.plist", "x", XML.as_bytes().to_vec()).unwrap();
        let keys: Vec<_> = job.keys.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "EnvironmentVariables.PATH",
                "KeepAlive.SuccessfulExit",
                "Label",
                "MachServices.\"org.nixos.x.port\"",
                "ProgramArguments",
                "Sockets",
            ]
        );
        assert_eq!(job.keys["ProgramArguments"], ["/bin/sh", "-c"]);
        assert_eq!(job.keys["Sockets"], Vec::<String>::new());
        assert_eq!(job.label.as_deref(), Some("org.nixos.x"));
        assert!(job.starts_at_load);
    }

    #[test]
    fn non_dictionary_root_is_an_error() {
        let xml = r#"<?xml version="1.0"?><plist version="1.0"><array/></plist>"#;
        let err = Job::parse(Scope::Agent, "a.plist", "gen/a.plist", xml.as_bytes().to_vec()).unwrap_err();
        assert_eq!(err.to_string(), "gen/a.plist: the plist's root is not a dictionary");
    }

    #[test]
    fn label_falls_back_to_file_stem() {
        let xml = r#"<?xml version="1.0"?><plist version="1.0"><dict/></plist>"#;
        let job = Job::parse(Scope::Agent, "a.b.plist", "a", xml.as_bytes().to_vec()).unwrap();
        assert_eq!(job.label_or_stem(), "a.b");
        assert!(!job.starts_at_load);
    }
}
