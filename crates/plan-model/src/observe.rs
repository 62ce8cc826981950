//! What systemd did while a plan was carried out, and how that compares
//! with the plan.
//!
//! The executor watches the service manager from before the first job to
//! after the last phase: every job systemd ran (those the executor queued,
//! matched by job path, and those systemd added or anybody else queued),
//! and the state and invocation of the units before and after
//! ([`Observed`]). [`classify`] turns that into effects (a unit started,
//! stopped, restarted or reloaded) and sorts each one: **planned** (an
//! action of the plan, or one of its steps, explains it), **predicted**
//! (one of the plan's [`Consequence`]s does) or **unplanned**. Predicted
//! effects that were not seen are listed too. A plan is exact when
//! nothing is unplanned.
//!
//! Everything here is a pure function of the plan and what was seen.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{Action, ActiveState, Consequence, Phase, Plan};

/// The unit the `sysinit-reactivation` step restarts.
pub const SYSINIT_REACTIVATION: &str = "sysinit-reactivation.target";

/// The unit system-manager's `userborn` step restarts.
pub const USERBORN: &str = "userborn.service";

/// A job systemd ran while the plan was carried out, as its signals
/// (`JobNew`, `JobRemoved`) told.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenJob {
    /// The unit.
    pub unit: String,
    /// systemd's `JobType` (`start`, `stop`, `restart`, `reload`,
    /// `try-restart`, `verify-active`, ...), when it could be read before
    /// the job ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_type: Option<String>,
    /// systemd's result (`done`, `canceled`, `failed`, ...); `None` when
    /// the job had not ended when the watch stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// Whether the executor queued it (its job path was the answer to one
    /// of the executor's calls).
    #[serde(default)]
    pub ours: bool,
}

impl SeenJob {
    /// Tells whether the job acted on its unit: it ran to its end,
    /// failed, timed out, or had not ended yet. A job that was cancelled
    /// before it ran, skipped, or not applicable did nothing.
    fn acted(&self) -> bool {
        matches!(self.result.as_deref(), None | Some("done" | "failed" | "timeout"))
    }

    /// `restart: done`, `(type not seen): not ended`.
    fn describe(&self) -> String {
        format!(
            "{}: {}{}",
            self.job_type.as_deref().unwrap_or("(type not seen)"),
            self.result.as_deref().unwrap_or("not ended"),
            if self.ours { " (queued by the apply)" } else { "" }
        )
    }
}

/// A unit's state at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activity {
    /// `ActiveState`; `inactive` for a unit systemd had not loaded.
    pub active_state: ActiveState,
    /// `InvocationID`, when it was read (empty: the unit has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invocation_id: Option<String>,
}

/// What the executor saw while it carried a plan out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// The jobs systemd ran, in the order they were queued, at most the
    /// watch's bound.
    pub jobs: Vec<SeenJob>,
    /// How many more jobs were seen than kept.
    pub dropped: usize,
    /// The units' states before the first job: every loaded unit's
    /// `ActiveState`, and the invocation of those the plan names and of
    /// every running one.
    pub before: BTreeMap<String, Activity>,
    /// Their states after the last phase: the same, and the invocation of
    /// every unit a job was seen for.
    pub after: BTreeMap<String, Activity>,
}

/// What happened to a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EffectKind {
    /// It was not running and was started (or ran and ended).
    Start,
    /// It was running and is no longer.
    Stop,
    /// It was running and runs again, in another invocation.
    Restart,
    /// It was reloaded.
    Reload,
    /// A job acted on it whose type could not be read, and what it did
    /// cannot be told from its state.
    Job,
}

impl EffectKind {
    /// The lowercase name, as printed and serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            EffectKind::Start => "start",
            EffectKind::Stop => "stop",
            EffectKind::Restart => "restart",
            EffectKind::Reload => "reload",
            EffectKind::Job => "job",
        }
    }

    /// What systemd did, as a verb in the past: `restarted`, `ran a job
    /// on` (for [`EffectKind::Job`]).
    pub fn past(self) -> &'static str {
        match self {
            EffectKind::Start => "started",
            EffectKind::Stop => "stopped",
            EffectKind::Restart => "restarted",
            EffectKind::Reload => "reloaded",
            EffectKind::Job => "ran a job on",
        }
    }

    /// Tells whether actions `done` (planned ones, or planned and
    /// predicted ones) account for this effect: a restart is a restart or
    /// a stop and a start; a start of a unit that was not running is a
    /// start or a restart.
    fn explained_by(self, done: &BTreeSet<Action>) -> bool {
        match self {
            EffectKind::Start => done.contains(&Action::Start) || done.contains(&Action::Restart),
            EffectKind::Stop => done.contains(&Action::Stop),
            EffectKind::Restart => {
                done.contains(&Action::Restart) || (done.contains(&Action::Stop) && done.contains(&Action::Start))
            }
            EffectKind::Reload => done.contains(&Action::Reload),
            EffectKind::Job => done.iter().any(|a| *a != Action::Skip),
        }
    }

    /// Tells whether this effect is what a consequence predicted.
    fn fulfils(self, predicted: Action) -> bool {
        match self {
            EffectKind::Restart => matches!(predicted, Action::Restart | Action::Stop | Action::Start),
            EffectKind::Job => true,
            kind => kind.as_str() == predicted.as_str(),
        }
    }
}

impl std::fmt::Display for EffectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an effect compares with the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    /// An action of the plan (or one of its steps) accounts for it.
    Planned,
    /// A consequence the plan lists accounts for it.
    Predicted,
    /// Nothing in the plan does.
    Unplanned,
}

/// One unit's effect, classified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Effect {
    /// The unit.
    pub unit: String,
    /// What happened to it.
    pub effect: EffectKind,
    /// How that compares with the plan.
    pub class: Class,
    /// Whether the unit is protected.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub protected: bool,
    /// Its `ActiveState` before the first job.
    pub before: ActiveState,
    /// Its `ActiveState` after the last phase.
    pub after: ActiveState,
    /// The jobs seen for it (`restart: done`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<String>,
    /// For a predicted effect, the unit whose planned job the consequence
    /// follows from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// What was observed during an apply, compared with the plan.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    /// How many jobs systemd ran (as kept).
    pub jobs: usize,
    /// How many of them the executor queued.
    pub ours: usize,
    /// How many more jobs were seen than the watch keeps: when not zero,
    /// some effects may be missing.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped: usize,
    /// How many effects the plan's actions account for.
    pub planned: usize,
    /// How many the plan's consequences account for.
    pub predicted: usize,
    /// How many nothing in the plan accounts for.
    pub unplanned: usize,
    /// Every effect, sorted by unit.
    #[serde(default)]
    pub effects: Vec<Effect>,
    /// The consequences the plan lists that were not seen, in the plan's
    /// order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_seen: Vec<Consequence>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Observation {
    /// The unplanned effects.
    pub fn unplanned(&self) -> impl Iterator<Item = &Effect> {
        self.effects.iter().filter(|e| e.class == Class::Unplanned)
    }

    /// The unplanned effects on protected units.
    pub fn unplanned_on_protected(&self) -> impl Iterator<Item = &Effect> {
        self.unplanned().filter(|e| e.protected)
    }

    /// How many effects there are.
    pub fn total(&self) -> usize {
        self.effects.len()
    }

    /// One line: `observed 5 effects (3 planned, 2 predicted, 0
    /// unplanned) of 12 jobs systemd ran`.
    pub fn summary(&self) -> String {
        format!(
            "observed {} effects ({} planned, {} predicted, {} unplanned) of {} jobs systemd ran",
            self.total(),
            self.planned,
            self.predicted,
            self.unplanned,
            self.jobs
        )
    }

    /// The observation as text: the summary, every unplanned effect, what
    /// was predicted and not seen, and whether jobs were left out.
    pub fn render_text(&self) -> String {
        let mut s = format!("{}\n", self.summary());
        for e in self.unplanned() {
            s.push_str(&format!("UNPLANNED: {}\n", effect_line(e)));
        }
        for c in &self.not_seen {
            s.push_str(&format!("predicted, not seen: {}\n", consequence_line(c)));
        }
        if self.dropped > 0 {
            s.push_str(&format!("{}\n", self.dropped_note()));
        }
        s
    }

    /// Says that jobs were left out, and what that means.
    pub fn dropped_note(&self) -> String {
        format!(
            "note: {} more jobs were seen than the {} kept; effects of those may be missing",
            self.dropped, self.jobs
        )
    }
}

/// `victim.service: restart (active -> active; jobs: restart: done)
/// [protected]`.
pub fn effect_line(e: &Effect) -> String {
    let mut s = format!("{}: {} ({} -> {}", e.unit, e.effect, e.before, e.after);
    if !e.jobs.is_empty() {
        s.push_str(&format!("; jobs: {}", e.jobs.join(", ")));
    }
    s.push(')');
    if e.protected {
        s.push_str(" [protected]");
    }
    s
}

/// `helper.service: restart (by the restart of web.service;
/// helper.service PartOf=web.service)`.
pub fn consequence_line(c: &Consequence) -> String {
    let chain: Vec<String> = c.chain.iter().map(|e| format!("{} {}={}", e.from, e.relation, e.to)).collect();
    let mut s = format!("{}: {} (by the {} of {}", c.unit, c.effect, c.cause, c.by);
    if !chain.is_empty() {
        s.push_str(&format!("; {}", chain.join(", ")));
        if c.omitted > 0 {
            s.push_str(&format!(" and {} more", c.omitted));
        }
    }
    s.push(')');
    s
}

/// What happened to one unit, from its states before and after and the
/// jobs seen for it; `None` when nothing did (a start of a unit that was
/// running, a job that was cancelled).
///
/// The states decide when they can: running before and not after is a
/// stop, the reverse a start, another invocation of a unit running before
/// and after a restart, and of a unit running neither before nor after
/// (a service that ran and ended) a start. Where the invocations were not
/// read (a unit the plan does not name), the jobs' types decide, and a job
/// whose type was not seen is reported as such.
pub fn effect_of(before: Option<&Activity>, after: Option<&Activity>, jobs: &[&SeenJob]) -> Option<EffectKind> {
    let state = |a: Option<&Activity>| a.map(|a| a.active_state.clone()).unwrap_or_default();
    let (b, a) = (state(before), state(after));
    let invocation = |x: Option<&Activity>| x.and_then(|x| x.invocation_id.clone());
    let renewed = match (invocation(before), invocation(after)) {
        (Some(x), Some(y)) => Some(x != y && !y.is_empty()),
        _ => None,
    };
    let ran =
        |types: &[&str]| jobs.iter().any(|j| j.acted() && j.job_type.as_deref().is_some_and(|t| types.contains(&t)));
    let untyped = jobs.iter().any(|j| j.acted() && j.job_type.is_none());
    match (b.is_running(), a.is_running()) {
        (false, true) => Some(EffectKind::Start),
        (true, false) => Some(EffectKind::Stop),
        (true, true) => {
            let restarted = match renewed {
                Some(renewed) => renewed,
                None => ran(&["restart", "try-restart"]) || (ran(&["stop"]) && ran(&["start"])),
            };
            if restarted {
                Some(EffectKind::Restart)
            } else if ran(&["reload", "try-reload", "reload-or-start"]) {
                Some(EffectKind::Reload)
            } else if renewed.is_none() && untyped {
                Some(EffectKind::Job)
            } else {
                None
            }
        }
        (false, false) => {
            let ran_and_ended = match renewed {
                Some(renewed) => renewed,
                None => ran(&["start", "restart", "try-restart", "reload-or-start"]),
            };
            let failed_now = a == ActiveState::Failed && b != ActiveState::Failed;
            (ran_and_ended || failed_now).then_some(EffectKind::Start)
        }
    }
}

/// The units protection covers in `plan`.
fn protected(plan: &Plan) -> BTreeSet<&str> {
    plan.protection.protected.iter().flat_map(|p| p.units.iter().map(String::as_str)).collect()
}

/// The actions `plan` carries out itself, by unit: its units' actions and
/// the jobs of its steps.
fn planned(plan: &Plan) -> BTreeMap<&str, BTreeSet<Action>> {
    let mut out: BTreeMap<&str, BTreeSet<Action>> = BTreeMap::new();
    for u in &plan.units {
        out.entry(u.unit.as_str()).or_default().extend(u.actions.iter().copied().filter(|a| *a != Action::Skip));
    }
    if plan.has_step(Phase::SysinitReactivation) {
        out.entry(SYSINIT_REACTIVATION).or_default().insert(Action::Restart);
    }
    if plan.has_step(Phase::Userborn) {
        out.entry(USERBORN).or_default().insert(Action::Restart);
    }
    out
}

/// Compares what was observed with the plan: every effect, classified,
/// with the counts, and the consequences not seen.
pub fn classify(plan: &Plan, observed: &Observed) -> Observation {
    let protected = protected(plan);
    let planned = planned(plan);
    let mut predicted: BTreeMap<&str, Vec<&Consequence>> = BTreeMap::new();
    for c in &plan.consequences {
        predicted.entry(c.unit.as_str()).or_default().push(c);
    }
    let mut jobs: BTreeMap<&str, Vec<&SeenJob>> = BTreeMap::new();
    for j in &observed.jobs {
        jobs.entry(j.unit.as_str()).or_default().push(j);
    }
    // The units jobs were seen for, and those whose invocation was read
    // before and after (the units the plan names): a unit can change
    // without a job being seen (its signal lost, its process gone).
    let mut units: BTreeSet<&str> = jobs.keys().copied().collect();
    units.extend(
        observed
            .after
            .iter()
            .filter(|(u, a)| {
                a.invocation_id.is_some() && observed.before.get(*u).is_some_and(|b| b.invocation_id.is_some())
            })
            .map(|(u, _)| u.as_str()),
    );
    let none = BTreeSet::new();
    let mut out = Observation {
        jobs: observed.jobs.len(),
        ours: observed.jobs.iter().filter(|j| j.ours).count(),
        dropped: observed.dropped,
        ..Observation::default()
    };
    for unit in units {
        let seen = jobs.get(unit).map(Vec::as_slice).unwrap_or_default();
        let (before, after) = (observed.before.get(unit), observed.after.get(unit));
        let Some(kind) = effect_of(before, after, seen) else { continue };
        let own = planned.get(unit).unwrap_or(&none);
        let consequences = predicted.get(unit).map(Vec::as_slice).unwrap_or_default();
        let mut with_predicted = own.clone();
        with_predicted.extend(consequences.iter().map(|c| c.effect));
        let (class, by) = if kind.explained_by(own) {
            (Class::Planned, None)
        } else if kind.explained_by(&with_predicted) {
            let by = consequences.iter().find(|c| kind.fulfils(c.effect)).map(|c| c.by.clone());
            (Class::Predicted, by)
        } else {
            (Class::Unplanned, None)
        };
        match class {
            Class::Planned => out.planned += 1,
            Class::Predicted => out.predicted += 1,
            Class::Unplanned => out.unplanned += 1,
        }
        out.effects.push(Effect {
            unit: unit.to_owned(),
            effect: kind,
            class,
            protected: protected.contains(unit),
            before: before.map(|b| b.active_state.clone()).unwrap_or_default(),
            after: after.map(|a| a.active_state.clone()).unwrap_or_default(),
            jobs: seen.iter().map(|j| j.describe()).collect(),
            by,
        });
    }
    let seen: BTreeMap<&str, EffectKind> = out.effects.iter().map(|e| (e.unit.as_str(), e.effect)).collect();
    out.not_seen = plan
        .consequences
        .iter()
        .filter(|c| !seen.get(c.unit.as_str()).is_some_and(|k| k.fulfils(c.effect)))
        .cloned()
        .collect();
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{Edge, ProtectedUnit, ProtectionSource, Step, UnitPlan};

    fn up(invocation: &str) -> Activity {
        Activity { active_state: ActiveState::Active, invocation_id: Some(invocation.into()) }
    }

    fn down(invocation: &str) -> Activity {
        Activity { active_state: ActiveState::Inactive, invocation_id: Some(invocation.into()) }
    }

    fn listed(state: ActiveState) -> Activity {
        Activity { active_state: state, invocation_id: None }
    }

    fn job(unit: &str, job_type: Option<&str>, result: Option<&str>, ours: bool) -> SeenJob {
        SeenJob { unit: unit.into(), job_type: job_type.map(str::to_owned), result: result.map(str::to_owned), ours }
    }

    fn consequence(unit: &str, effect: Action, by: &str, cause: Action, relation: &str) -> Consequence {
        Consequence {
            unit: unit.into(),
            effect,
            by: by.into(),
            cause,
            chain: vec![Edge { from: unit.into(), relation: relation.into(), to: by.into() }],
            omitted: 0,
        }
    }

    #[test]
    fn an_effect_is_told_by_the_states_and_where_they_cannot_tell_by_the_jobs() {
        let restart = job("a", Some("restart"), Some("done"), false);
        let stop = job("a", Some("stop"), Some("done"), false);
        let start = job("a", Some("start"), Some("done"), false);
        let reload = job("a", Some("reload"), Some("done"), false);
        let untyped = job("a", None, Some("done"), false);
        let cancelled = job("a", Some("restart"), Some("canceled"), false);
        let e = |b: Activity, a: Activity, jobs: &[&SeenJob]| effect_of(Some(&b), Some(&a), jobs);
        // The invocations decide, whatever the jobs say.
        assert_eq!(e(up("1"), up("2"), &[]), Some(EffectKind::Restart), "a restart whose signals were lost");
        assert_eq!(e(up("1"), up("1"), &[&restart]), None, "a restart job that restarted nothing");
        assert_eq!(e(up("1"), up("1"), &[&reload]), Some(EffectKind::Reload));
        assert_eq!(e(up("1"), down("1"), &[]), Some(EffectKind::Stop));
        assert_eq!(e(down(""), up("2"), &[]), Some(EffectKind::Start));
        assert_eq!(e(down("1"), down("2"), &[&start]), Some(EffectKind::Start), "a oneshot that ran and ended");
        assert_eq!(e(down("1"), down("1"), &[&start]), None, "a start whose condition failed");
        // Without invocations, the jobs decide.
        let (on, off) = (listed(ActiveState::Active), listed(ActiveState::Inactive));
        assert_eq!(e(on.clone(), on.clone(), &[&restart]), Some(EffectKind::Restart));
        assert_eq!(e(on.clone(), on.clone(), &[&stop, &start]), Some(EffectKind::Restart));
        assert_eq!(e(on.clone(), on.clone(), &[&start]), None, "a start of a running unit");
        assert_eq!(e(on.clone(), on.clone(), &[&cancelled]), None);
        assert_eq!(e(on.clone(), on.clone(), &[&untyped]), Some(EffectKind::Job));
        assert_eq!(e(off.clone(), off.clone(), &[&untyped]), None);
        assert_eq!(e(off.clone(), off.clone(), &[&start]), Some(EffectKind::Start));
        assert_eq!(e(off, listed(ActiveState::Failed), &[]), Some(EffectKind::Start), "a start that failed");
        // A unit not loaded before counts as inactive.
        assert_eq!(effect_of(None, Some(&on), &[&start]), Some(EffectKind::Start));
    }

    fn plan() -> Plan {
        let mut plan = Plan::between(
            "/a",
            "/b",
            vec![
                UnitPlan::new("web.service", &[Action::Restart]),
                UnitPlan::new("changed.service", &[Action::Stop, Action::Start]),
                UnitPlan::new("new.service", &[Action::Start]),
                UnitPlan::new("kept.service", &[Action::Skip]),
            ],
        );
        plan.steps = vec![Step::DaemonReload, Step::RestartSysinitReactivation];
        plan.consequences = vec![
            consequence("helper.service", Action::Restart, "web.service", Action::Restart, "PartOf"),
            consequence("late.service", Action::Stop, "changed.service", Action::Stop, "Requires"),
        ];
        plan.protection.protected = vec![ProtectedUnit {
            selector: "sshd".into(),
            source: ProtectionSource::CommandLine,
            units: vec!["sshd.service".into(), "victim.service".into()],
            allow: vec![],
        }];
        plan
    }

    #[test]
    fn effects_are_planned_predicted_or_unplanned_and_predictions_not_seen_are_listed() {
        let plan = plan();
        let mut observed = Observed::default();
        for (unit, b, a) in [
            ("web.service", up("1"), up("2")),
            ("changed.service", up("3"), up("4")),
            ("new.service", down(""), up("5")),
            ("helper.service", up("6"), up("7")),
            ("late.service", up("8"), up("8")),
            ("sshd.service", up("9"), up("9")),
            ("kept.service", up("10"), up("10")),
        ] {
            observed.before.insert(unit.into(), b);
            observed.after.insert(unit.into(), a);
        }
        observed.before.insert("victim.service".into(), listed(ActiveState::Active));
        observed.after.insert("victim.service".into(), listed(ActiveState::Active));
        observed.before.insert(SYSINIT_REACTIVATION.into(), listed(ActiveState::Active));
        observed.after.insert(SYSINIT_REACTIVATION.into(), listed(ActiveState::Active));
        observed.jobs = vec![
            job("changed.service", Some("stop"), Some("done"), true),
            job(SYSINIT_REACTIVATION, Some("restart"), Some("done"), true),
            job("web.service", Some("restart"), Some("done"), true),
            job("helper.service", Some("restart"), Some("done"), false),
            job("victim.service", Some("restart"), Some("done"), false),
            job("changed.service", Some("start"), Some("done"), true),
            job("new.service", Some("start"), Some("done"), true),
        ];
        let o = classify(&plan, &observed);
        let classes: Vec<(&str, EffectKind, Class)> =
            o.effects.iter().map(|e| (e.unit.as_str(), e.effect, e.class)).collect();
        assert_eq!(
            classes,
            [
                ("changed.service", EffectKind::Restart, Class::Planned),
                ("helper.service", EffectKind::Restart, Class::Predicted),
                ("new.service", EffectKind::Start, Class::Planned),
                (SYSINIT_REACTIVATION, EffectKind::Restart, Class::Planned),
                ("victim.service", EffectKind::Restart, Class::Unplanned),
                ("web.service", EffectKind::Restart, Class::Planned),
            ]
        );
        assert_eq!((o.planned, o.predicted, o.unplanned, o.jobs, o.ours), (4, 1, 1, 7, 5));
        assert_eq!(o.effects[1].by.as_deref(), Some("web.service"));
        let unplanned: Vec<&str> = o.unplanned_on_protected().map(|e| e.unit.as_str()).collect();
        assert_eq!(unplanned, ["victim.service"]);
        assert_eq!(o.not_seen.iter().map(|c| c.unit.as_str()).collect::<Vec<_>>(), ["late.service"]);
        let text = o.render_text();
        assert!(
            text.starts_with("observed 6 effects (4 planned, 1 predicted, 1 unplanned) of 7 jobs systemd ran\n"),
            "{text}"
        );
        assert!(
            text.contains("UNPLANNED: victim.service: restart (active -> active; jobs: restart: done) [protected]\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "predicted, not seen: late.service: stop (by the stop of changed.service; late.service Requires=changed.service)\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_stop_that_was_predicted_and_a_start_that_brought_the_unit_back_make_a_restart() {
        let mut plan = plan();
        plan.consequences.push(consequence("late.service", Action::Start, "multi-user.target", Action::Start, "Wants"));
        let mut observed = Observed::default();
        observed.before.insert("late.service".into(), up("1"));
        observed.after.insert("late.service".into(), up("2"));
        let o = classify(&plan, &observed);
        assert_eq!(o.effects.len(), 1);
        assert_eq!(o.effects[0].class, Class::Predicted);
        assert!(o.not_seen.iter().all(|c| c.unit != "late.service"), "{:?}", o.not_seen);
        // A stop alone does not account for a restart.
        plan.consequences.pop();
        assert_eq!(classify(&plan, &observed).effects[0].class, Class::Unplanned);
    }

    #[test]
    fn a_planned_unit_whose_effect_differs_from_its_action_is_unplanned() {
        let plan = plan();
        let mut observed = Observed::default();
        // new.service is planned to start; it was running and got stopped.
        observed.before.insert("new.service".into(), up("1"));
        observed.after.insert("new.service".into(), down("1"));
        // kept.service is changed but left running: any effect is unplanned.
        observed.before.insert("kept.service".into(), up("2"));
        observed.after.insert("kept.service".into(), up("3"));
        let o = classify(&plan, &observed);
        let classes: Vec<(&str, Class)> = o.effects.iter().map(|e| (e.unit.as_str(), e.class)).collect();
        assert_eq!(classes, [("kept.service", Class::Unplanned), ("new.service", Class::Unplanned)]);
        assert!(o.unplanned_on_protected().next().is_none());
    }

    #[test]
    fn nothing_observed_is_nothing_unplanned_and_every_prediction_not_seen() {
        let o = classify(&plan(), &Observed::default());
        assert_eq!((o.total(), o.unplanned), (0, 0));
        assert_eq!(o.not_seen.len(), 2);
        assert_eq!(o.summary(), "observed 0 effects (0 planned, 0 predicted, 0 unplanned) of 0 jobs systemd ran");
    }
}
