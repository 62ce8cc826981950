//! Saved plans: the file `plan --out` writes and `apply` carries out.
//!
//! A saved plan is the [`Plan`] together with the inputs it was computed
//! from: the running generation, the target toplevel, the protection
//! options, and the live state (`ActiveState`, `MainPID`, `InvocationID`) of
//! every unit the plan names. A SHA-256 digest covers all of it.
//!
//! `apply` carries out exactly the saved actions, but only while the plan
//! is still true. It refuses, before changing anything, when
//!
//! - the digest does not match (the file was edited or damaged);
//! - the plan disagrees with its own recorded inputs (its `old`/`new` are
//!   not the recorded generations);
//! - the running generation or the target toplevel is not what was
//!   recorded;
//! - a unit the plan names changed state, was restarted (a new
//!   `InvocationID` or `MainPID`), appeared or disappeared;
//! - planning again from the recorded inputs and today's live state gives a
//!   different plan. This last check does not trust the digest: a file whose
//!   digest was recomputed after an edit is still caught, because its
//!   actions are not what the planner produces.
//!
//! The checks themselves are pure functions ([`verify_digest`],
//! [`check_fresh`]) over values, so they are tested without a service
//! manager; `cmd::apply` gathers the observations and calls them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use plan_model::{LiveState, Plan};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::args::{OnProtected, ProtectArgs};

/// The version of the saved-plan file format. Bump it when a field changes
/// meaning; `apply` refuses files of any other version.
pub const SAVED_FORMAT_VERSION: u32 = 1;

/// A plan saved for `apply`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedPlan {
    /// Always [`SAVED_FORMAT_VERSION`] when written by this version.
    pub saved_plan_version: u32,
    /// The safe-switch version that wrote the file (informational).
    pub written_by: String,
    /// What the plan was computed from.
    pub inputs: Inputs,
    /// The plan, as `plan --format json` prints it.
    pub plan: Plan,
    /// `sha256:` and the hex SHA-256 of the version, inputs and plan (see
    /// [`digest`]).
    pub digest: String,
}

/// The recorded inputs of a saved plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inputs {
    /// The running generation's store path when the plan was made.
    pub running_generation: String,
    /// The toplevel being switched to.
    pub target_toplevel: String,
    /// The protection options the plan was made with, so `apply` can plan
    /// again with the same ones.
    pub protection: RecordedProtection,
    /// The live state of every unit the plan names, by unit name; `null`
    /// for a unit that was not loaded.
    pub live: BTreeMap<String, Option<RecordedUnit>>,
}

/// The protection options of `plan`, as given.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedProtection {
    /// `--protect` selectors.
    #[serde(default)]
    pub protect: Vec<String>,
    /// `--policy`, as an absolute path.
    #[serde(default)]
    pub policy: Option<String>,
    /// `--on-protected`: `defer` or `refuse`, when given.
    #[serde(default)]
    pub on_protected: Option<String>,
    /// The cgroup of the process that planned (the `0::` line of
    /// `/proc/self/cgroup`). The units holding it are protected implicitly,
    /// and `apply` plans again with the same cgroup so that a plan made
    /// from, say, a CI runner's job keeps deferring that runner even when
    /// `apply` runs elsewhere.
    #[serde(default)]
    pub caller_cgroup: Option<String>,
}

impl RecordedProtection {
    /// Records the protection options of a command line.
    pub fn from_args(args: &ProtectArgs) -> RecordedProtection {
        RecordedProtection {
            protect: args.protect.clone(),
            policy: args
                .policy
                .as_ref()
                .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()).display().to_string()),
            on_protected: args.on_protected.map(|m| match m {
                OnProtected::Defer => "defer".to_owned(),
                OnProtected::Refuse => "refuse".to_owned(),
            }),
            caller_cgroup: caller_cgroup(args),
        }
    }

    /// Turns the recorded options back into command-line options. The
    /// caller cgroup is passed through a file, as `--cgroup-file` expects;
    /// `cgroup_file` is where to write it.
    pub fn to_args(&self, cgroup_file: &Path) -> anyhow::Result<ProtectArgs> {
        let on_protected = match self.on_protected.as_deref() {
            None => None,
            Some("defer") => Some(OnProtected::Defer),
            Some("refuse") => Some(OnProtected::Refuse),
            Some(other) => anyhow::bail!("the saved plan records an unknown protection mode {other:?}"),
        };
        let text = match &self.caller_cgroup {
            Some(c) => format!("0::{c}\n"),
            None => String::new(),
        };
        std::fs::write(cgroup_file, text).with_context(|| format!("cannot write {}", cgroup_file.display()))?;
        Ok(ProtectArgs {
            protect: self.protect.clone(),
            policy: self.policy.as_ref().map(PathBuf::from),
            on_protected,
            cgroup_file: Some(cgroup_file.to_path_buf()),
            explain: None,
        })
    }
}

/// The caller's cgroup as the protection analysis reads it: the `0::` line
/// of `--cgroup-file`, else of `/proc/self/cgroup`.
pub fn caller_cgroup(args: &ProtectArgs) -> Option<String> {
    let file = args.cgroup_file.clone().unwrap_or_else(|| PathBuf::from("/proc/self/cgroup"));
    std::fs::read_to_string(file).ok().and_then(|t| t.lines().find_map(|l| l.strip_prefix("0::").map(str::to_owned)))
}

/// Records the inputs of a plan made from `old` to `new` against `live`
/// with the protection options `protect`.
pub fn record_inputs(old: &Path, new: &Path, plan: &Plan, live: &LiveState, protect: &ProtectArgs) -> Inputs {
    Inputs {
        running_generation: old.display().to_string(),
        target_toplevel: new.display().to_string(),
        protection: RecordedProtection::from_args(protect),
        live: record_live(plan, live),
    }
}

/// The recorded live state of one unit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedUnit {
    /// `ActiveState`.
    pub active_state: String,
    /// `MainPID` (0 when none).
    pub main_pid: u32,
    /// `InvocationID` (empty when none).
    pub invocation_id: String,
}

impl RecordedUnit {
    /// Records a unit from a live-state snapshot; `None` when not loaded.
    pub fn from_live(live: &LiveState, unit: &str) -> Option<RecordedUnit> {
        live.get(unit).map(|u| RecordedUnit {
            active_state: u.active_state.clone(),
            main_pid: u.main_pid,
            invocation_id: u.invocation_id.clone(),
        })
    }
}

/// Records the live state of every unit the plan names (with or without
/// actions, deferred or not) and of every protected unit it lists.
pub fn record_live(plan: &Plan, live: &LiveState) -> BTreeMap<String, Option<RecordedUnit>> {
    let mut units: Vec<&str> = plan.units.iter().map(|u| u.unit.as_str()).collect();
    for p in &plan.protection.protected {
        units.extend(p.units.iter().map(String::as_str));
    }
    units.into_iter().map(|u| (u.to_owned(), RecordedUnit::from_live(live, u))).collect()
}

impl SavedPlan {
    /// Builds a saved plan and computes its digest.
    pub fn new(plan: Plan, inputs: Inputs) -> SavedPlan {
        let mut saved = SavedPlan {
            saved_plan_version: SAVED_FORMAT_VERSION,
            written_by: env!("CARGO_PKG_VERSION").to_owned(),
            inputs,
            plan,
            digest: String::new(),
        };
        saved.digest = digest(&saved);
        saved
    }

    /// The file's text: pretty JSON with a trailing newline.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Parses a saved plan, naming the file in errors.
    pub fn load(path: &Path) -> anyhow::Result<SavedPlan> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read the saved plan {}", path.display()))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a saved plan: invalid JSON", path.display()))?;
        let version = value.get("saved_plan_version").and_then(serde_json::Value::as_u64);
        match version {
            Some(v) if v == u64::from(SAVED_FORMAT_VERSION) => {}
            Some(v) => anyhow::bail!(
                "{}: saved plan format {v} is not supported by this version (it reads format {SAVED_FORMAT_VERSION}); plan again",
                path.display()
            ),
            None => anyhow::bail!(
                "{} is not a saved plan (no saved_plan_version); write one with `safe-switch plan --out`",
                path.display()
            ),
        }
        serde_json::from_value(value).with_context(|| format!("{} is not a valid saved plan", path.display()))
    }

    /// Writes the file atomically.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        crate::report::write_atomically(path, self.to_json().as_bytes())
            .with_context(|| format!("cannot write the saved plan to {}", path.display()))
    }
}

/// The digest of a saved plan: `sha256:` and the SHA-256 of the compact JSON
/// of its version, inputs and plan, in that order. The compact form of the
/// parsed values is used (not the file's bytes), so reformatting the file
/// does not change it but changing any value does.
pub fn digest(saved: &SavedPlan) -> String {
    #[derive(Serialize)]
    struct Covered<'a> {
        saved_plan_version: u32,
        inputs: &'a Inputs,
        plan: &'a Plan,
    }
    let covered = Covered { saved_plan_version: saved.saved_plan_version, inputs: &saved.inputs, plan: &saved.plan };
    let bytes = serde_json::to_vec(&covered).unwrap_or_default();
    format!("sha256:{}", crate::report::codequality::hex(&Sha256::digest(&bytes)))
}

/// Why a saved plan is not carried out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The digest does not match the content.
    DigestMismatch {
        /// The digest in the file.
        recorded: String,
        /// The digest of the content.
        computed: String,
    },
    /// The plan's own fields disagree with its recorded inputs.
    Inconsistent(String),
    /// The running generation is not the recorded one.
    RunningGenerationChanged {
        /// Recorded.
        recorded: String,
        /// Now.
        now: String,
    },
    /// The target toplevel is not the recorded one, or is gone.
    TargetChanged(String),
    /// Units changed state since the plan was made.
    UnitsChanged(Vec<UnitChange>),
    /// Planning again from the recorded inputs gives another plan.
    PlanMismatch(String),
}

/// How one unit's live state moved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitChange {
    /// The unit.
    pub unit: String,
    /// What changed, as a phrase.
    pub what: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::DigestMismatch { recorded, computed } => write!(
                f,
                "the plan file was changed after it was written: its digest is {recorded} but its content hashes to {computed}"
            ),
            Refusal::Inconsistent(what) => write!(f, "the plan file does not match its recorded inputs: {what}"),
            Refusal::RunningGenerationChanged { recorded, now } => {
                write!(f, "the plan is stale: it was made on running generation {recorded}, but {now} is running now")
            }
            Refusal::TargetChanged(what) => write!(f, "the plan is stale: {what}"),
            Refusal::UnitsChanged(changes) => {
                write!(f, "the plan is stale: units changed since it was made:")?;
                for c in changes {
                    write!(f, "\n  {}: {}", c.unit, c.what)?;
                }
                Ok(())
            }
            Refusal::PlanMismatch(what) => write!(
                f,
                "the plan file does not match a fresh plan from its recorded inputs ({what}); \
                 it was edited, or the machine changed since: plan again"
            ),
        }
    }
}

impl std::error::Error for Refusal {}

/// Checks the digest and that the plan agrees with its recorded inputs.
pub fn verify_digest(saved: &SavedPlan) -> Result<(), Refusal> {
    let computed = digest(saved);
    if computed != saved.digest {
        return Err(Refusal::DigestMismatch { recorded: saved.digest.clone(), computed });
    }
    if saved.plan.old.path != saved.inputs.running_generation {
        return Err(Refusal::Inconsistent(format!(
            "plan.old.path is {} but the recorded running generation is {}",
            saved.plan.old.path, saved.inputs.running_generation
        )));
    }
    if saved.plan.new.path != saved.inputs.target_toplevel {
        return Err(Refusal::Inconsistent(format!(
            "plan.new.path is {} but the recorded target is {}",
            saved.plan.new.path, saved.inputs.target_toplevel
        )));
    }
    if saved.plan.protection.refused {
        return Err(Refusal::Inconsistent("the plan is refused by protection and cannot be applied".to_owned()));
    }
    Ok(())
}

/// What `apply` sees on the machine right before it would act.
#[derive(Clone, Debug)]
pub struct Observed<'a> {
    /// The running generation's store path now.
    pub running_generation: &'a str,
    /// The target toplevel as it resolves now (its canonical path), or
    /// `None` when it no longer exists.
    pub target_toplevel: Option<&'a str>,
    /// The live state now.
    pub live: &'a LiveState,
}

/// Checks a saved plan against the machine as it is now, and against a
/// plan computed again from the recorded inputs and today's live state.
/// Call [`verify_digest`] first.
pub fn check_fresh(saved: &SavedPlan, now: &Observed<'_>, replanned: &Plan) -> Result<(), Refusal> {
    if now.running_generation != saved.inputs.running_generation {
        return Err(Refusal::RunningGenerationChanged {
            recorded: saved.inputs.running_generation.clone(),
            now: now.running_generation.to_owned(),
        });
    }
    match now.target_toplevel {
        None => {
            return Err(Refusal::TargetChanged(format!(
                "the target toplevel {} no longer exists",
                saved.inputs.target_toplevel
            )));
        }
        Some(t) if t != saved.inputs.target_toplevel => {
            return Err(Refusal::TargetChanged(format!(
                "the target toplevel {} now resolves to {t}",
                saved.inputs.target_toplevel
            )));
        }
        Some(_) => {}
    }
    let changes = live_changes(&saved.inputs.live, now.live);
    if !changes.is_empty() {
        return Err(Refusal::UnitsChanged(changes));
    }
    if let Some(diff) = first_difference(&saved.plan, replanned) {
        return Err(Refusal::PlanMismatch(diff));
    }
    Ok(())
}

/// Compares recorded unit states with the live state now.
pub fn live_changes(recorded: &BTreeMap<String, Option<RecordedUnit>>, live: &LiveState) -> Vec<UnitChange> {
    let mut out = Vec::new();
    for (unit, before) in recorded {
        let after = RecordedUnit::from_live(live, unit);
        let what = match (before, &after) {
            (None, None) => continue,
            (None, Some(a)) => format!("was not loaded, now {}", a.active_state),
            (Some(b), None) => format!("was {}, now not loaded", b.active_state),
            (Some(b), Some(a)) => {
                let mut parts = Vec::new();
                if b.active_state != a.active_state {
                    parts.push(format!("ActiveState {} -> {}", b.active_state, a.active_state));
                }
                if b.main_pid != a.main_pid {
                    parts.push(format!("MainPID {} -> {}", b.main_pid, a.main_pid));
                }
                if b.invocation_id != a.invocation_id {
                    parts.push(format!(
                        "InvocationID {} -> {} (restarted by someone else)",
                        or_none(&b.invocation_id),
                        or_none(&a.invocation_id)
                    ));
                }
                if parts.is_empty() {
                    continue;
                }
                parts.join(", ")
            }
        };
        out.push(UnitChange { unit: unit.clone(), what });
    }
    out
}

fn or_none(s: &str) -> &str {
    if s.is_empty() { "(none)" } else { s }
}

/// Names the first difference between the saved plan and a fresh one, in
/// terms a person can check: a unit's actions, a step, protection.
///
/// Only what the executor acts on counts: the units (actions, deferrals,
/// reasons, changes), the steps, the generations and whether the plan is
/// refused. The list of protections and the diagnostics may legitimately
/// differ (the implicit protection of the process that runs `apply`), and
/// the digest already covers them.
pub fn first_difference(saved: &Plan, fresh: &Plan) -> Option<String> {
    // Provenance (which flake built the target) is not compared: `apply`
    // plans again from the recorded toplevel, which has none.
    if saved.old.path != fresh.old.path || saved.new.path != fresh.new.path {
        return Some("the generations differ".to_owned());
    }
    if saved.units == fresh.units
        && saved.steps == fresh.steps
        && saved.protection.refused == fresh.protection.refused
        && saved.protection.refusals == fresh.protection.refusals
    {
        return None;
    }
    let saved_units: BTreeMap<&str, _> = saved.units.iter().map(|u| (u.unit.as_str(), u)).collect();
    let fresh_units: BTreeMap<&str, _> = fresh.units.iter().map(|u| (u.unit.as_str(), u)).collect();
    for (name, s) in &saved_units {
        match fresh_units.get(name) {
            None => return Some(format!("{name} is in the file but not in a fresh plan")),
            Some(f) if f.actions != s.actions => {
                return Some(format!(
                    "{name}: the file says [{}], a fresh plan says [{}]",
                    join(&s.actions),
                    join(&f.actions)
                ));
            }
            Some(f) if f.deferral != s.deferral => return Some(format!("{name}: deferral differs")),
            Some(f) if f != s => return Some(format!("{name}: reasons or changes differ")),
            Some(_) => {}
        }
    }
    if let Some(name) = fresh_units.keys().find(|n| !saved_units.contains_key(*n)) {
        return Some(format!("{name} is in a fresh plan but not in the file"));
    }
    if saved.steps != fresh.steps {
        return Some("the global steps differ".to_owned());
    }
    if saved.protection.refused != fresh.protection.refused || saved.protection.refusals != fresh.protection.refusals {
        return Some("protection refuses one of them and not the other".to_owned());
    }
    Some("the plans differ".to_owned())
}

fn join(actions: &[plan_model::Action]) -> String {
    actions.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use plan_model::{Action, FORMAT_VERSION, Generation, LiveUnit, Protection, UnitPlan};

    fn live(invocation: &str, pid: u32) -> LiveState {
        let mut live = LiveState::default();
        live.units.insert(
            "a.service".into(),
            LiveUnit {
                active_state: "active".into(),
                main_pid: pid,
                invocation_id: invocation.into(),
                ..LiveUnit::default()
            },
        );
        live
    }

    fn plan() -> Plan {
        Plan {
            format_version: FORMAT_VERSION,
            old: Generation { path: "/old".into(), ..Generation::default() },
            new: Generation { path: "/new".into(), ..Generation::default() },
            units: vec![
                UnitPlan {
                    unit: "a.service".into(),
                    actions: vec![Action::Restart],
                    reasons: vec![],
                    changes: vec![],
                    deferral: None,
                },
                UnitPlan {
                    unit: "b.service".into(),
                    actions: vec![Action::Start],
                    reasons: vec![],
                    changes: vec![],
                    deferral: None,
                },
            ],
            steps: vec![],
            protection: Protection::default(),
            diagnostics: vec![],
            packages: None,
        }
    }

    fn saved() -> SavedPlan {
        let p = plan();
        let inputs = Inputs {
            running_generation: "/old".into(),
            target_toplevel: "/new".into(),
            protection: RecordedProtection::default(),
            live: record_live(&p, &live("1111", 10)),
        };
        SavedPlan::new(p, inputs)
    }

    #[test]
    fn records_every_named_unit_and_null_for_unloaded_ones() {
        let s = saved();
        assert_eq!(s.inputs.live["a.service"].as_ref().map(|u| u.invocation_id.as_str()), Some("1111"));
        assert_eq!(s.inputs.live["b.service"], None);
        assert!(s.digest.starts_with("sha256:") && s.digest.len() == 7 + 64, "{}", s.digest);
    }

    #[test]
    fn the_digest_survives_a_round_trip_and_catches_edits() {
        let s = saved();
        let back: SavedPlan = serde_json::from_str(&s.to_json()).unwrap();
        assert_eq!(verify_digest(&back), Ok(()));
        // Reformatting the file does not matter, changing a value does.
        let compact: SavedPlan = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(verify_digest(&compact), Ok(()));
        let mut edited = s.clone();
        edited.plan.units[0].actions = vec![Action::Reload];
        assert!(matches!(verify_digest(&edited), Err(Refusal::DigestMismatch { .. })));
        let mut edited = s.clone();
        edited.inputs.live.insert("a.service".into(), None);
        assert!(matches!(verify_digest(&edited), Err(Refusal::DigestMismatch { .. })));
        // A resealed plan whose own paths disagree with its inputs.
        let mut p = s.plan.clone();
        p.old.path = "/elsewhere".into();
        let resealed = SavedPlan::new(p, s.inputs.clone());
        assert!(matches!(verify_digest(&resealed), Err(Refusal::Inconsistent(_))));
    }

    #[test]
    fn staleness_is_named() {
        let s = saved();
        let fresh = plan();
        let now = live("1111", 10);
        let ok = Observed { running_generation: "/old", target_toplevel: Some("/new"), live: &now };
        assert_eq!(check_fresh(&s, &ok, &fresh), Ok(()));

        let other = Observed { running_generation: "/other", ..ok.clone() };
        assert!(matches!(check_fresh(&s, &other, &fresh), Err(Refusal::RunningGenerationChanged { .. })));
        let gone = Observed { target_toplevel: None, ..ok.clone() };
        assert!(matches!(check_fresh(&s, &gone, &fresh), Err(Refusal::TargetChanged(_))));

        let restarted = live("2222", 11);
        let err = check_fresh(&s, &Observed { live: &restarted, ..ok.clone() }, &fresh).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("a.service: MainPID 10 -> 11, InvocationID 1111 -> 2222"), "{text}");

        let mut appeared = now.clone();
        appeared.units.insert("b.service".into(), LiveUnit { active_state: "active".into(), ..LiveUnit::default() });
        let err = check_fresh(&s, &Observed { live: &appeared, ..ok.clone() }, &fresh).unwrap_err();
        assert!(err.to_string().contains("b.service: was not loaded, now active"), "{err}");

        let mut different = fresh.clone();
        different.units[1].actions = vec![];
        let err = check_fresh(&s, &ok, &different).unwrap_err();
        assert!(err.to_string().contains("b.service: the file says [start], a fresh plan says []"), "{err}");
    }

    #[test]
    fn loading_names_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        std::fs::write(&path, "not json").unwrap();
        assert!(format!("{:#}", SavedPlan::load(&path).unwrap_err()).contains("p.json is not a saved plan"));
        std::fs::write(&path, "{\"format_version\": 1}").unwrap();
        assert!(format!("{:#}", SavedPlan::load(&path).unwrap_err()).contains("plan --out"));
        std::fs::write(&path, "{\"saved_plan_version\": 9}").unwrap();
        assert!(format!("{:#}", SavedPlan::load(&path).unwrap_err()).contains("format 9 is not supported"));
        saved().save(&path).unwrap();
        assert_eq!(SavedPlan::load(&path).unwrap(), saved());
    }
}
