//! The live launchd state, as `launchctl print` / `launchctl list` report
//! it, in a JSON form the planner takes as a plain value.
//!
//! Capturing it from a Mac is an executor's job; tests and offline `diff`
//! runs load it from a file. A domain that was not captured is `None`, and
//! the planner then assumes what nix-darwin's activation assumes: that every
//! job of the old generation is loaded.
//!
//! ```json
//! {
//!   "primary_user": { "name": "alice", "uid": 501, "home": "/Users/alice" },
//!   "system": { "org.nixos.nix-daemon": { "pid": 4711, "state": "running", "runs": 2 } },
//!   "gui": { "org.nixos.skhd": { "state": "not running", "last_exit_code": 0 } }
//! }
//! ```

use std::collections::BTreeMap;

use plan_model::json::Object;
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::LoadError;

/// The live state of launchd on the target machine.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchdLive {
    /// The user whose agents nix-darwin manages (`system.primaryUser`), and
    /// whose GUI domain receives launch agents.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "object")]
    pub primary_user: Option<PrimaryUser>,
    /// Jobs loaded in the `system` domain, by label; `None` when not
    /// captured.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "jobs")]
    pub system: Option<BTreeMap<String, LiveJob>>,
    /// Jobs loaded in the primary user's `gui/<uid>` domain, by label;
    /// `None` when not captured.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "jobs")]
    pub gui: Option<BTreeMap<String, LiveJob>>,
}

/// The primary user of a nix-darwin machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrimaryUser {
    /// The login name.
    pub name: String,
    /// The numeric user id, which names the `gui/<uid>` domain.
    pub uid: u32,
    /// The home directory, which holds `Library/LaunchAgents`.
    pub home: String,
}

/// One loaded job, with the fields of `launchctl print <service-target>`
/// that matter to a switch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveJob {
    /// `pid`: present while the job runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// `state`: `running`, `not running`, `waiting`, `spawn scheduled`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// `runs`: how often launchd started the job; an executor compares it
    /// before and after to prove a job was or was not restarted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs: Option<u64>,
    /// `last exit code`, when the job has exited before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit_code: Option<i64>,
    /// `path`: the plist the job was loaded from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl LiveJob {
    /// Describes the job's state in a few words, e.g. `running (pid 4711)`.
    pub fn describe(&self) -> String {
        match (self.pid, self.state.as_deref()) {
            (Some(pid), _) => format!("running (pid {pid})"),
            (None, Some(state)) => state.to_owned(),
            (None, None) => "loaded".to_owned(),
        }
    }
}

/// An optional struct given as a JSON object (see [`plan_model::json`]).
fn object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    Ok(Option::<Object<T>>::deserialize(d)?.map(|o| o.0))
}

/// A domain's jobs, each given as a JSON object.
fn jobs<'de, D: Deserializer<'de>>(d: D) -> Result<Option<BTreeMap<String, LiveJob>>, D::Error> {
    let jobs = Option::<BTreeMap<String, Object<LiveJob>>>::deserialize(d)?;
    Ok(jobs.map(|jobs| jobs.into_iter().map(|(label, job)| (label, job.0)).collect()))
}

impl LaunchdLive {
    /// Parses a snapshot from its JSON form, an object (as are its parts);
    /// `path` names it in errors.
    pub fn from_json(text: &str, path: &str) -> Result<LaunchdLive, LoadError> {
        plan_model::json::object_from_str(text).map_err(|source| LoadError::Live { path: path.to_owned(), source })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail by panicking")]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_rejected_with_the_file_name() {
        let err = LaunchdLive::from_json(r#"{"system":{"a":{"pid":1,"bogus":2}}}"#, "live.json").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("live.json: invalid launchd live state: unknown field `bogus`"), "{msg}");
    }

    #[test]
    fn what_is_not_an_object_is_refused_with_the_file_name() {
        for text in ["[]", "[null, {}]", r#"{"system":{"a":[1]}}"#, r#"{"primary_user":["alice",501,"/x"]}"#] {
            let msg = LaunchdLive::from_json(text, "live.json").unwrap_err().to_string();
            assert!(msg.starts_with("live.json: invalid launchd live state: invalid type"), "{text}: {msg}");
            assert!(msg.contains("expected a JSON object"), "{text}: {msg}");
        }
        let live = LaunchdLive::from_json(r#"{"primary_user":null,"system":{"a":{"pid":1}}}"#, "x").unwrap();
        assert_eq!(live.system.unwrap()["a"].pid, Some(1));
    }

    #[test]
    fn describes_state() {
        assert_eq!(LiveJob { pid: Some(7), ..LiveJob::default() }.describe(), "running (pid 7)");
        let waiting = LiveJob { state: Some("not running".into()), ..LiveJob::default() };
        assert_eq!(waiting.describe(), "not running");
    }
}
