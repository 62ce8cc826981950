//! Deferred actions that are still pending on a host, across switches.
//!
//! A switch that defers an action leaves the running instance of a unit as
//! it was while the new unit file is installed. The [`Pending`] record
//! (`/run/safe-switch/pending.json` on a host, see `systemd-live`) keeps,
//! for each such unit, what was deferred, why, from which generation the
//! running instance was started and which instance that is (systemd's
//! `InvocationID`), so that `safe-switch pending` can list it and
//! `safe-switch settle` can carry it out later.
//!
//! Each later switch merges its own plan into the record
//! ([`Pending::merge`]): a deferral whose unit was restarted since is no
//! longer pending, one the plan carries out is done, one the plan defers
//! again takes the new reason, and the rest stay pending, now for the new
//! generation. The record is generic over the service manager
//! ([`Manager`]): a unit name for systemd, a job for launchd (nix-darwin),
//! each with what identifies its running instance.

use serde::{Deserialize, Serialize};

use crate::json::{JsonError, Object};
use crate::{Action, LiveState, Plan, Reason, Touch};

/// The version of the record's JSON form. A file with another version is
/// not read.
pub const PENDING_FORMAT_VERSION: u32 = 1;

/// The longest unit name (or job label) a record may hold.
const MAX_NAME: usize = 512;

/// The longest generation path or invocation a record may hold.
const MAX_VALUE: usize = 4096;

/// The deferred actions still pending on a host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pending {
    /// Always [`PENDING_FORMAT_VERSION`] when written by this version.
    pub format_version: u32,
    /// One entry per unit, sorted by manager and unit.
    #[serde(default, deserialize_with = "deferrals_from_objects")]
    pub deferrals: Vec<PendingDeferral>,
}

impl Default for Pending {
    fn default() -> Pending {
        Pending { format_version: PENDING_FORMAT_VERSION, deferrals: Vec::new() }
    }
}

/// The service manager a deferral belongs to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Manager {
    /// systemd (NixOS, system-manager): `unit` is a unit name and
    /// `invocation` its `InvocationID`.
    #[default]
    Systemd,
    /// launchd (nix-darwin): `unit` is a job as a launchd plan names it
    /// (its label) and `invocation` what the job runs: the digest of its
    /// installed plist (a protected job keeps its old plist loaded until
    /// the deferral is carried out), and its pid when only a process
    /// restart was deferred (the Nix daemon's, for a changed `nix.conf`).
    Launchd,
}

/// The actions deferred on one unit that are still to be carried out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingDeferral {
    /// The service manager that runs the unit.
    pub manager: Manager,
    /// The unit (or job label).
    pub unit: String,
    /// The deferred actions, in phase order.
    pub actions: Vec<Action>,
    /// The generation the running instance was started from: the old
    /// generation of the switch that first deferred its actions. A later
    /// `settle` plans from it to the running generation.
    pub from: String,
    /// The generation the deferral belongs to: the new generation of the
    /// latest switch that recorded it, whose unit file is installed.
    pub generation: String,
    /// What identifies the running instance whose actions were deferred:
    /// systemd's `InvocationID` (32 hex digits; empty when the unit was not
    /// running), or for launchd what [`Manager::Launchd`] says. Another one
    /// means the unit was restarted since.
    pub invocation: String,
    /// Seconds since the epoch when the action was first deferred.
    pub since_unix: u64,
    /// Why the unit got the actions: the rules that fired.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<Reason>,
    /// What the actions would do to a protected unit, and through which
    /// relations: why they were deferred.
    pub touch: Touch,
}

/// What a plan does to a deferral recorded by an earlier switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fate {
    /// The unit was restarted or stopped since the deferral (it has another
    /// invocation), or is gone: nothing is pending any more.
    RestartedSince,
    /// The plan stops or restarts the unit, or carries out every deferred
    /// action: the switch settles it.
    CarriedOut,
    /// The plan defers actions on the unit again: still pending, with the
    /// new reason.
    DeferredAgain,
    /// The plan leaves the unit alone: still pending, now for the plan's
    /// new generation.
    StillPending,
}

impl Fate {
    /// Tells whether the deferral is still pending after the plan.
    pub fn is_pending(self) -> bool {
        matches!(self, Fate::DeferredAgain | Fate::StillPending)
    }

    /// A short phrase: `still pending`, `carried out by this switch`, ...
    pub fn describe(self) -> &'static str {
        match self {
            Fate::RestartedSince => "no longer pending: the unit was restarted or stopped since",
            Fate::CarriedOut => "carried out by this switch",
            Fate::DeferredAgain => "deferred again by this switch",
            Fate::StillPending => "still pending",
        }
    }
}

/// A deferral recorded by an earlier switch, and what the plan at hand does
/// to it: the section of a plan's reports on earlier deferrals.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Earlier {
    /// The deferral as recorded.
    #[serde(flatten)]
    pub deferral: PendingDeferral,
    /// What the plan does to it.
    pub fate: Fate,
}

/// The record after a plan is merged into it, and what became of each
/// earlier deferral.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Merged {
    /// The record once the plan is carried out.
    pub pending: Pending,
    /// Every deferral of the earlier record of the plan's manager, with its
    /// fate, in the record's order.
    pub earlier: Vec<Earlier>,
}

/// Why a record cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum PendingError {
    /// Not JSON of the record's shape.
    #[error("{0}")]
    Json(#[from] JsonError),
    /// Another version of the record.
    #[error("format_version {found}, but this safe-switch reads version {PENDING_FORMAT_VERSION}")]
    Version {
        /// The version the file says.
        found: u32,
    },
    /// A value the record cannot hold: an invalid or repeated unit name,
    /// no action, an overlong value.
    #[error("deferral {index}: {what}")]
    Entry {
        /// The 1-based position of the entry.
        index: usize,
        /// What is wrong, without quoting the value.
        what: &'static str,
    },
}

/// The entries, each given as a JSON object (see [`crate::json`]).
fn deferrals_from_objects<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<PendingDeferral>, D::Error> {
    let entries = Vec::<Object<PendingDeferral>>::deserialize(d)?;
    Ok(entries.into_iter().map(|e| e.0).collect())
}

impl Pending {
    /// Reads a record from its JSON form, checking its version and every
    /// entry. Errors never quote a value from the text.
    pub fn from_json(text: &str) -> Result<Pending, PendingError> {
        let pending: Pending = crate::json::object_from_str(text)?;
        if pending.format_version != PENDING_FORMAT_VERSION {
            return Err(PendingError::Version { found: pending.format_version });
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, d) in pending.deferrals.iter().enumerate() {
            let index = i + 1;
            let what = if d.unit.is_empty() || d.unit.len() > MAX_NAME || d.unit.contains('/') {
                Some("not a unit name")
            } else if d.unit.chars().any(|c| c.is_control() || c.is_whitespace()) {
                Some("a unit name with control characters or spaces")
            } else if !seen.insert((d.manager, d.unit.as_str())) {
                Some("a unit recorded twice")
            } else if d.actions.is_empty() {
                Some("no deferred action")
            } else if [&d.from, &d.generation, &d.invocation, &d.touch.touches].iter().any(|v| v.len() > MAX_VALUE) {
                Some("a value too long")
            } else {
                None
            };
            if let Some(what) = what {
                return Err(PendingError::Entry { index, what });
            }
        }
        Ok(pending)
    }

    /// The record as pretty-printed JSON with a trailing newline.
    pub fn to_json(&self) -> String {
        // Plain structs of strings and vectors cannot fail to serialize.
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Tells whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.deferrals.is_empty()
    }

    /// The entry of `unit` of `manager`, if any.
    pub fn get(&self, manager: Manager, unit: &str) -> Option<&PendingDeferral> {
        self.deferrals.iter().find(|d| d.manager == manager && d.unit == unit)
    }

    /// Keeps the entries sorted by manager and unit.
    fn sort(&mut self) {
        self.deferrals.sort_by(|a, b| (a.manager, &a.unit).cmp(&(b.manager, &b.unit)));
    }

    /// The record as it stands with the units of `manager` as they are in
    /// `live`: a deferral whose unit was restarted or stopped since (see
    /// [`Pending::merge`]) is dropped, the rest is kept as it is.
    pub fn checked(&self, manager: Manager, live: &LiveState) -> Merged {
        let mut pending = Pending { format_version: PENDING_FORMAT_VERSION, deferrals: Vec::new() };
        let mut earlier = Vec::new();
        for d in &self.deferrals {
            if d.manager != manager {
                pending.deferrals.push(d.clone());
                continue;
            }
            let fate = if instance(live, &d.unit).is_none_or(|now| now != d.invocation) {
                Fate::RestartedSince
            } else {
                pending.deferrals.push(d.clone());
                Fate::StillPending
            };
            earlier.push(Earlier { deferral: d.clone(), fate });
        }
        Merged { pending, earlier }
    }

    /// Merges the plan of a switch of `manager` into the record, as it
    /// stands once the plan is carried out:
    ///
    /// - an earlier deferral whose unit has another invocation in `live`
    ///   than recorded, or is not loaded, is dropped (restarted since);
    /// - one whose unit the plan stops or restarts, or whose every action
    ///   the plan carries out, is dropped (carried out);
    /// - one whose unit the plan defers again takes the plan's actions and
    ///   reason (the stronger actions win: those that replace the running
    ///   process over a reload or start), keeping the generation its
    ///   running instance came from and the time it was first deferred;
    /// - any other stays pending, for the plan's new generation;
    /// - each deferral of the plan on a unit not recorded yet is added,
    ///   with the plan's old generation as where its instance came from,
    ///   the unit's invocation in `live` and `now_unix`.
    ///
    /// A refused plan changes nothing but drops what was restarted since.
    /// `live` must carry the state and invocation of every unit the record
    /// names and the plan defers; a unit that is not running has no
    /// instance (an empty invocation), so one stopped since is no longer
    /// pending either. Deferrals of other managers are kept as they are.
    pub fn merge(&self, plan: &Plan, manager: Manager, live: &LiveState, now_unix: u64) -> Merged {
        let invocation = |unit: &str| instance(live, unit);
        let mut out = Pending { format_version: PENDING_FORMAT_VERSION, deferrals: Vec::new() };
        let mut earlier = Vec::new();
        for d in &self.deferrals {
            if d.manager != manager {
                out.deferrals.push(d.clone());
                continue;
            }
            let entry = plan.unit(&d.unit);
            let fate = if invocation(&d.unit).is_none_or(|now| now != d.invocation) {
                Fate::RestartedSince
            } else if plan.protection.refused {
                Fate::StillPending
            } else if entry.is_some_and(|e| carries_out(&e.actions, &d.actions)) {
                Fate::CarriedOut
            } else if entry.is_some_and(|e| e.deferral.is_some()) {
                Fate::DeferredAgain
            } else {
                Fate::StillPending
            };
            match (fate, entry.and_then(|e| Some((e, e.deferral.as_ref()?)))) {
                (Fate::DeferredAgain, Some((e, again))) => {
                    let stronger = replaces_process(&again.actions) || !replaces_process(&d.actions);
                    let mut kept = d.clone();
                    kept.generation = plan.new.path.clone();
                    if stronger {
                        kept.actions = again.actions.clone();
                        kept.reasons = e.reasons.clone();
                    }
                    kept.touch = again.touch.clone();
                    out.deferrals.push(kept);
                }
                (Fate::StillPending, _) => {
                    let mut kept = d.clone();
                    if !plan.protection.refused {
                        kept.generation = plan.new.path.clone();
                    }
                    out.deferrals.push(kept);
                }
                _ => {}
            }
            earlier.push(Earlier { deferral: d.clone(), fate });
        }
        if !plan.protection.refused {
            for unit in plan.deferred() {
                let Some(deferral) = &unit.deferral else { continue };
                if out.get(manager, &unit.unit).is_some() {
                    continue;
                }
                out.deferrals.push(PendingDeferral {
                    manager,
                    unit: unit.unit.clone(),
                    actions: deferral.actions.clone(),
                    from: plan.old.path.clone(),
                    generation: plan.new.path.clone(),
                    invocation: invocation(&unit.unit).unwrap_or_default(),
                    since_unix: now_unix,
                    reasons: unit.reasons.clone(),
                    touch: deferral.touch.clone(),
                });
            }
        }
        out.sort();
        Merged { pending: out, earlier }
    }
}

/// The running instance of `unit` in `live`: its invocation while it runs,
/// empty when it does not; `None` when it is not loaded.
fn instance(live: &LiveState, unit: &str) -> Option<String> {
    live.get(unit).map(|u| if u.is_running() { u.invocation_id.clone() } else { String::new() })
}

/// Tells whether these actions replace the running process: a stop or a
/// restart.
fn replaces_process(actions: &[Action]) -> bool {
    actions.iter().any(|a| matches!(a, Action::Stop | Action::Restart))
}

/// Tells whether `done` (the actions a plan carries out on a unit) settles
/// every action of `deferred`. A deferral that would replace the running
/// process (a stop or restart, or a stop and a start) is settled by
/// anything that replaces it: the instance it was about is gone either
/// way. Otherwise each action must be done: a reload by a reload, stop or
/// restart, a start by a start or restart.
fn carries_out(done: &[Action], deferred: &[Action]) -> bool {
    if replaces_process(deferred) {
        return replaces_process(done);
    }
    let has = |wanted: &[Action]| done.iter().any(|a| wanted.contains(a));
    deferred.iter().all(|a| match a {
        Action::Reload => has(&[Action::Reload, Action::Stop, Action::Restart]),
        Action::Start => has(&[Action::Start, Action::Restart]),
        Action::Stop | Action::Restart | Action::Skip => true,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::{Deferral, LiveUnit, Mode, Rule, UnitPlan};

    fn touch(protected: &str) -> Touch {
        Touch { touches: protected.into(), effect: Action::Restart, chain: vec![], cause: None, omitted: 0 }
    }

    fn deferred(unit: &str, actions: &[Action]) -> UnitPlan {
        let mut u = UnitPlan::new(unit, &[]);
        u.reasons = vec![Reason { rule: Rule::UnitChanged, detail: None }];
        u.deferral = Some(Deferral { actions: actions.to_vec(), touch: touch(unit) });
        u
    }

    fn record(unit: &str, actions: &[Action], invocation: &str) -> PendingDeferral {
        PendingDeferral {
            manager: Manager::Systemd,
            unit: unit.into(),
            actions: actions.to_vec(),
            from: "/gen/a".into(),
            generation: "/gen/b".into(),
            invocation: invocation.into(),
            since_unix: 100,
            reasons: vec![],
            touch: touch(unit),
        }
    }

    fn live(units: &[(&str, &str)]) -> LiveState {
        let units = units
            .iter()
            .map(|(name, inv)| {
                let unit = LiveUnit {
                    active_state: "active".into(),
                    invocation_id: (*inv).into(),
                    load_state: "loaded".into(),
                    ..LiveUnit::default()
                };
                ((*name).to_owned(), unit)
            })
            .collect();
        LiveState { units, ..LiveState::default() }
    }

    #[test]
    fn a_switch_records_what_it_defers_with_where_the_instance_came_from() {
        let plan = Plan::between("/gen/a", "/gen/b", vec![deferred("runner.service", &[Action::Restart])]);
        let merged = Pending::default().merge(&plan, Manager::Systemd, &live(&[("runner.service", "i1")]), 7);
        assert!(merged.earlier.is_empty());
        assert_eq!(merged.pending.deferrals.len(), 1);
        let d = &merged.pending.deferrals[0];
        assert_eq!((d.from.as_str(), d.generation.as_str(), d.invocation.as_str()), ("/gen/a", "/gen/b", "i1"));
        assert_eq!((d.actions.as_slice(), d.since_unix), (&[Action::Restart][..], 7));
        assert_eq!(d.reasons[0].rule, Rule::UnitChanged);
    }

    #[test]
    fn each_earlier_deferral_meets_its_fate() {
        let earlier = Pending {
            format_version: PENDING_FORMAT_VERSION,
            deferrals: vec![
                record("again.service", &[Action::Restart], "i1"),
                record("done.service", &[Action::Restart], "i2"),
                record("kept.service", &[Action::Restart], "i3"),
                record("reloaded.service", &[Action::Restart], "i4"),
                record("restarted.service", &[Action::Restart], "old"),
                record("gone.service", &[Action::Stop], "i6"),
            ],
        };
        let mut again = deferred("again.service", &[Action::Reload]);
        again.deferral.as_mut().unwrap().touch = touch("sshd.service");
        let plan = Plan::between(
            "/gen/b",
            "/gen/c",
            vec![
                again,
                UnitPlan::new("done.service", &[Action::Stop, Action::Start]),
                UnitPlan::new("reloaded.service", &[Action::Reload]),
            ],
        );
        let now = live(&[
            ("again.service", "i1"),
            ("done.service", "i2"),
            ("kept.service", "i3"),
            ("reloaded.service", "i4"),
            ("restarted.service", "new"),
        ]);
        let merged = earlier.merge(&plan, Manager::Systemd, &now, 9);
        let fates: Vec<(&str, Fate)> = merged.earlier.iter().map(|e| (e.deferral.unit.as_str(), e.fate)).collect();
        assert_eq!(
            fates,
            [
                ("again.service", Fate::DeferredAgain),
                ("done.service", Fate::CarriedOut),
                ("kept.service", Fate::StillPending),
                ("reloaded.service", Fate::StillPending),
                ("restarted.service", Fate::RestartedSince),
                ("gone.service", Fate::RestartedSince),
            ]
        );
        let units: Vec<&str> = merged.pending.deferrals.iter().map(|d| d.unit.as_str()).collect();
        assert_eq!(units, ["again.service", "kept.service", "reloaded.service"]);
        // Deferred again with a weaker action: the restart stays, the
        // reason is the new one, the instance still comes from /gen/a.
        let again = merged.pending.get(Manager::Systemd, "again.service").unwrap();
        assert_eq!(again.actions, [Action::Restart]);
        assert_eq!(again.touch.touches, "sshd.service");
        assert_eq!((again.from.as_str(), again.generation.as_str(), again.since_unix), ("/gen/a", "/gen/c", 100));
        assert_eq!(merged.pending.get(Manager::Systemd, "kept.service").unwrap().generation, "/gen/c");
    }

    #[test]
    fn a_unit_stopped_since_is_no_longer_pending_and_a_deferred_start_of_one_not_running_is() {
        let earlier = Pending {
            format_version: PENDING_FORMAT_VERSION,
            deferrals: vec![
                record("stopped.service", &[Action::Restart], "i1"),
                record("idle.target", &[Action::Start], ""),
            ],
        };
        let mut now = live(&[("stopped.service", "i1"), ("idle.target", "i9")]);
        for unit in now.units.values_mut() {
            unit.active_state = "inactive".into();
        }
        let merged = earlier.merge(&Plan::between("/gen/b", "/gen/c", vec![]), Manager::Systemd, &now, 9);
        let fates: Vec<Fate> = merged.earlier.iter().map(|e| e.fate).collect();
        assert_eq!(fates, [Fate::RestartedSince, Fate::StillPending]);
        // Checked as they stand, without a plan: the same, and nothing else
        // changes.
        let checked = earlier.checked(Manager::Systemd, &now);
        assert_eq!(checked.earlier.iter().map(|e| e.fate).collect::<Vec<_>>(), fates);
        assert_eq!(checked.pending.deferrals, vec![record("idle.target", &[Action::Start], "")]);
    }

    #[test]
    fn a_refused_plan_changes_nothing_but_what_was_restarted_since() {
        let earlier = Pending {
            format_version: PENDING_FORMAT_VERSION,
            deferrals: vec![
                record("a.service", &[Action::Restart], "i1"),
                record("b.service", &[Action::Restart], "x"),
            ],
        };
        let mut plan = Plan::between("/gen/b", "/gen/c", vec![UnitPlan::new("a.service", &[Action::Restart])]);
        plan.protection.mode = Mode::Refuse;
        plan.protection.refused = true;
        let merged = earlier.merge(&plan, Manager::Systemd, &live(&[("a.service", "i1"), ("b.service", "y")]), 9);
        assert_eq!(merged.pending.deferrals, vec![record("a.service", &[Action::Restart], "i1")]);
        assert_eq!(merged.earlier[0].fate, Fate::StillPending);
        assert_eq!(merged.earlier[1].fate, Fate::RestartedSince);
    }

    #[test]
    fn what_carries_a_deferral_out() {
        use Action::*;
        assert!(carries_out(&[Stop], &[Restart]));
        assert!(carries_out(&[Restart], &[Stop, Start]));
        assert!(carries_out(&[Stop], &[Stop, Start]), "a unit removed since: its instance is gone");
        assert!(!carries_out(&[Reload], &[Restart]));
        assert!(carries_out(&[Restart], &[Reload]));
        assert!(!carries_out(&[Start], &[Reload]));
        assert!(carries_out(&[Start], &[Start]));
        assert!(!carries_out(&[], &[Start]));
    }

    #[test]
    fn records_round_trip_and_bad_ones_are_named_without_their_values() {
        let pending = Pending {
            format_version: PENDING_FORMAT_VERSION,
            deferrals: vec![record("a.service", &[Action::Restart], "i1")],
        };
        assert_eq!(Pending::from_json(&pending.to_json()).unwrap(), pending);
        let bad = [
            (r#"{"format_version": 2, "deferrals": []}"#, "format_version 2"),
            (r#"[]"#, "expected a JSON object"),
            (r#"{"format_version": 1, "deferrals": [[]]}"#, "expected a JSON object"),
            (r#"{"format_version": 1, "other": "secret-value"}"#, "unknown field"),
            (r#"{"format_version": 1, "deferrals": [{"unit": "secret-value"}]}"#, "missing field"),
        ];
        for (text, expected) in bad {
            let err = Pending::from_json(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text}: {err}");
            assert!(!err.contains("secret-value"), "{err}");
        }
        let mut twice = pending.clone();
        twice.deferrals.push(record("a.service", &[Action::Stop], "i1"));
        let err = Pending::from_json(&twice.to_json()).unwrap_err().to_string();
        assert_eq!(err, "deferral 2: a unit recorded twice");
        let mut odd = pending.clone();
        odd.deferrals[0].unit = "../etc\n".into();
        assert_eq!(Pending::from_json(&odd.to_json()).unwrap_err().to_string(), "deferral 1: not a unit name");
        let mut none = pending;
        none.deferrals[0].actions.clear();
        assert_eq!(Pending::from_json(&none.to_json()).unwrap_err().to_string(), "deferral 1: no deferred action");
    }
}
