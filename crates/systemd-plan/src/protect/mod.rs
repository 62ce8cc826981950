//! Protection: which units must not be stopped or restarted, and what a
//! plan does to them through systemd's dependency propagation.
//!
//! The analysis runs after planning, on the finished [`Plan`]:
//!
//! 1. Resolve the protections: selectors from the command line and the
//!    policy file ([`Selector`]), and the implicit ones (the D-Bus bus,
//!    logind, and the units holding the caller, see [`cgroup`]). Each is
//!    matched against every unit name in both generations and the live
//!    state.
//! 2. Build the [`UnitGraph`] of unit relations and compute, backwards from
//!    the protected units, which job on which unit would reach one
//!    ([`UnitGraph::reach`]).
//! 3. Look up every stop, restart and start in the plan. In `defer` mode
//!    the actions of a unit that touches a protected unit move into its
//!    [`Deferral`]; in `refuse` mode the plan is marked refused and every
//!    such action is listed as a [`Refusal`].
//! 4. Follow the jobs that remain forwards through the graph, and list
//!    what systemd will do to other units with them: the plan's
//!    [`Consequence`]s, which an apply compares with what it observes.
//!
//! Architecture Invariant: this module does no IO. The caller reads the
//! policy file and `/proc/self/cgroup` and passes their content in.

pub mod cgroup;
mod graph;

use std::collections::{BTreeMap, BTreeSet, HashSet};

use globset::{Glob, GlobSet, GlobSetBuilder};
use plan_model::observe::SYSINIT_REACTIVATION;
use plan_model::policy::{ImplicitProtections, Selector};
use plan_model::{
    Action, Consequence, Deferral, Diagnostic, LiveState, Mode, Phase, Plan, ProtectedUnit, ProtectionSource, Refusal,
    Severity, unit_name,
};

pub use graph::{Job, Reach, Relation, UnitGraph};
pub use plan_model::{Explanation, Touch};

use crate::generation::GenerationUnits;

/// What to protect and how: the input of [`protect`].
#[derive(Clone, Debug, Default)]
pub struct Request {
    /// Explicit selectors with where each came from, policy file first.
    pub selectors: Vec<(Selector, ProtectionSource)>,
    /// Which implicit protections are in force.
    pub implicit: ImplicitProtections,
    /// The caller's cgroup paths (from `/proc/self/cgroup`, and that of
    /// the process that asked for an isolated switch), when known.
    pub caller_cgroups: Vec<String>,
    /// What happens to actions that touch a protected unit.
    pub mode: Mode,
}

/// An explicit selector that matched no unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownSelector {
    /// The selector as written.
    pub selector: String,
    /// Where it came from.
    pub source: ProtectionSource,
    /// Names close to it, best first (at most three).
    pub close: Vec<String>,
}

/// What the analysis found, beyond the rewritten plan: the graph (for
/// `--explain`) and the selectors that matched nothing.
#[derive(Debug)]
pub struct Analysis {
    /// The relation graph the analysis used.
    pub graph: UnitGraph,
    /// Explicit selectors that matched no unit.
    pub unknown: Vec<UnknownSelector>,
    /// Every protected unit name.
    pub protected: BTreeSet<String>,
}

/// Runs the protection analysis on a finished plan and rewrites it.
///
/// Fills `plan.protection` (mode, every protection in force, refusal), moves
/// touching actions into [`Deferral`]s in `defer` mode, and adds a warning
/// diagnostic for each explicit selector that matched nothing.
pub fn protect(
    plan: &mut Plan,
    old: &GenerationUnits,
    new: &GenerationUnits,
    live: &LiveState,
    request: &Request,
) -> Analysis {
    let graph = UnitGraph::build(old, new, live);
    let universe = UnitNames::of_graph(&graph);
    let (protections, unknown) = resolve(request, &universe);
    let protected: BTreeSet<String> = protections.iter().flat_map(|p| p.units.iter().cloned()).collect();
    let names: Vec<&str> = protected.iter().map(String::as_str).collect();
    let reach = graph.reach(&names);

    plan.protection.mode = request.mode;
    plan.protection.protected = protections;
    plan.protection.refusals.clear();
    for entry in &mut plan.units {
        let touching: Vec<(Action, Touch)> = entry
            .actions
            .iter()
            .filter_map(|&a| Some((a, reach.touch(&graph, &entry.unit, Job::of_action(a)?)?)))
            .collect();
        let Some((cause, first)) = touching.first().cloned() else { continue };
        match request.mode {
            Mode::Defer => {
                // The stop and start of one unit are two halves of a
                // restart: when one half is deferred the other is too, so
                // the running instance stays exactly as it is.
                let deferred: Vec<Action> = entry
                    .actions
                    .iter()
                    .copied()
                    .filter(|a| matches!(a, Action::Stop | Action::Restart | Action::Start))
                    .collect();
                entry.actions.retain(|a| !deferred.contains(a));
                entry.deferral = Some(Deferral { actions: deferred, touch: Touch { cause: Some(cause), ..first } });
            }
            Mode::Refuse => plan.protection.refusals.push(Refusal {
                unit: entry.unit.clone(),
                actions: touching.iter().map(|(a, _)| *a).collect(),
                touch: Touch { cause: Some(cause), ..first },
            }),
        }
    }
    plan.protection.refused = !plan.protection.refusals.is_empty();
    plan.consequences = consequences(plan, &graph);
    for u in &unknown {
        let mut message = format!("protection selector {:?} ({}) matches no unit", u.selector, u.source.label());
        if !u.close.is_empty() {
            message.push_str(&format!("; did you mean {}?", u.close.join(", ")));
        }
        plan.diagnostics.push(Diagnostic {
            severity: Severity::Warning,
            message,
            unit: None,
            path: match &u.source {
                ProtectionSource::Policy { path } => Some(path.clone()),
                _ => None,
            },
            line: None,
        });
    }
    Analysis { graph, unknown, protected }
}

/// What systemd does to other units when it carries out `plan`'s jobs
/// (its units' actions and the restart of its sysinit-reactivation step):
/// the graph's consequences of them, but those a unit's own actions
/// already account for.
fn consequences(plan: &Plan, graph: &UnitGraph) -> Vec<Consequence> {
    let mut jobs: Vec<(String, Job)> = plan
        .units
        .iter()
        .flat_map(|u| u.actions.iter().filter_map(|&a| Some((u.unit.clone(), Job::of_action(a)?))))
        .collect();
    if plan.has_step(Phase::SysinitReactivation) {
        jobs.push((SYSINIT_REACTIVATION.to_owned(), Job::Restart));
    }
    let own = |unit: &str| -> BTreeSet<Action> {
        plan.unit(unit).map(|u| u.actions.iter().copied().collect()).unwrap_or_default()
    };
    graph
        .consequences(&jobs)
        .into_iter()
        .filter(|c| {
            let own = own(&c.unit);
            let accounted = match c.effect {
                Action::Start => own.contains(&Action::Start) || own.contains(&Action::Restart),
                Action::Restart => {
                    own.contains(&Action::Restart) || (own.contains(&Action::Stop) && own.contains(&Action::Start))
                }
                effect => own.contains(&effect),
            };
            let step = c.unit == SYSINIT_REACTIVATION && plan.has_step(Phase::SysinitReactivation);
            !accounted && !step
        })
        .collect()
}

/// Matches the request's selectors and implicit protections against the
/// known unit names: every protection in force, and the explicit
/// selectors that matched nothing.
fn resolve(request: &Request, universe: &UnitNames<'_>) -> (Vec<ProtectedUnit>, Vec<UnknownSelector>) {
    let mut protections = Vec::new();
    let mut unknown = Vec::new();
    for (selector, source) in &request.selectors {
        let units = matching(selector, universe);
        if units.is_empty() {
            unknown.push(UnknownSelector {
                selector: selector.as_str().to_owned(),
                source: source.clone(),
                close: close_matches(selector, universe),
            });
        }
        protections.push(ProtectedUnit {
            selector: selector.as_str().to_owned(),
            source: source.clone(),
            units,
            allow: Vec::new(),
        });
    }
    protections.extend(implicit_protections(request, universe));
    (protections, unknown)
}

/// The running units `request` protects, as far as the live state alone
/// tells: what can be asked of systemd while the generations are still
/// being read. Every running unit is in the live state, so the full
/// resolution (against both generations too) finds no running protected
/// unit that this misses.
pub fn running_protected(live: &LiveState, request: &Request) -> Vec<String> {
    let universe: UnitNames<'_> = live.units.keys().map(String::as_str).collect();
    let (protections, _) = resolve(request, &universe);
    let running: BTreeSet<String> =
        protections.into_iter().flat_map(|p| p.units).filter(|u| live.get(u).is_some_and(|l| l.is_running())).collect();
    running.into_iter().collect()
}

/// What points at a unit from elsewhere that can stop or restart it: a
/// unit that conflicts with it, one that propagates its stop to it, the
/// socket, timer or path that activates it. For a protected unit of a
/// generation, its own file says the rest.
pub const INTO_PROTECTED: [&str; 3] = ["ConflictedBy", "StopPropagatedFrom", "TriggeredBy"];

/// Which live dependency properties [`protect`] would use that the live
/// state lacks ([`plan_model::LiveUnit::deps_unread`]), round after round:
/// of a running protected unit, what points at it from outside the
/// generations ([`INTO_PROTECTED`]; every property for one in neither
/// generation, such as the caller's session); of a running unit in neither
/// generation from which a job reaches a protected unit, every property
/// ([`plan_model::DEPENDENCY_PROPERTIES`]). The generations' own units are
/// read from their files.
///
/// Ask [`DependencyReading::wanted`], read those, hand each answer to
/// [`DependencyReading::learn`], and ask again until it asks for nothing:
/// each answer can lead further. The relation graph is built once; an
/// answer adds its relations to it.
pub struct DependencyReading<'g> {
    old: &'g GenerationUnits,
    new: &'g GenerationUnits,
    graph: UnitGraph,
    protected: Vec<String>,
    asked: HashSet<String>,
}

impl<'g> DependencyReading<'g> {
    /// Starts from the generations and the live state as listed (no
    /// dependencies read yet, or some).
    pub fn new(old: &'g GenerationUnits, new: &'g GenerationUnits, live: &LiveState, request: &Request) -> Self {
        let graph = UnitGraph::build(old, new, live);
        let universe = UnitNames::of_graph(&graph);
        let (protections, _) = resolve(request, &universe);
        let protected: BTreeSet<String> = protections.into_iter().flat_map(|p| p.units).collect();
        DependencyReading { old, new, graph, protected: protected.into_iter().collect(), asked: HashSet::new() }
    }

    /// The units to read next and the properties to read of each, none
    /// asked before.
    pub fn wanted(&mut self, live: &LiveState) -> BTreeMap<String, &'static [&'static str]> {
        let (old, new) = (self.old, self.new);
        let protected: Vec<&str> = self.protected.iter().map(String::as_str).collect();
        let reach = self.graph.reach(&protected);
        let unread_and_running = |u: &str| live.get(u).is_some_and(|l| l.deps_unread && l.is_running());
        let foreign = |u: &str| !old.has_unit(u) && !new.has_unit(u);
        let mut wanted = BTreeMap::new();
        for &unit in protected.iter().filter(|u| unread_and_running(u)) {
            let properties: &'static [&'static str] =
                if foreign(unit) { &plan_model::DEPENDENCY_PROPERTIES } else { &INTO_PROTECTED };
            wanted.insert(unit.to_owned(), properties);
        }
        for unit in self.graph.known_units() {
            if foreign(unit) && unread_and_running(unit) && reach.reaches(&self.graph, unit) {
                wanted.insert(unit.to_owned(), &plan_model::DEPENDENCY_PROPERTIES[..]);
            }
        }
        wanted.retain(|unit, _| self.asked.insert(unit.clone()));
        wanted
    }

    /// Adds what systemd answered for `unit`: its dependency properties.
    pub fn learn(&mut self, unit: &str, deps: &BTreeMap<String, Vec<String>>) {
        self.graph.add_live_dependencies(unit, deps);
    }
}

fn compile(selector: &Selector) -> Option<GlobSet> {
    let mut builder = GlobSetBuilder::new();
    for pattern in selector.patterns() {
        // Selectors were validated when parsed; a pattern globset still
        // rejects simply matches nothing.
        builder.add(Glob::new(&pattern).ok()?);
    }
    builder.build().ok()
}

/// The unit names selectors are matched against: every unit of either
/// generation or the live state. Taken from the relation graph, which has
/// indexed them already; sorting thousands of names again would cost more
/// than the rest of the matching.
#[derive(Clone, Debug)]
pub struct UnitNames<'a> {
    /// The names, sorted when built from a list, unsorted from a graph.
    names: Vec<&'a str>,
    graph: Option<&'a UnitGraph>,
}

impl<'a> FromIterator<&'a str> for UnitNames<'a> {
    fn from_iter<I: IntoIterator<Item = &'a str>>(iter: I) -> Self {
        let mut names: Vec<&str> = iter.into_iter().collect();
        names.sort_unstable();
        names.dedup();
        UnitNames { names, graph: None }
    }
}

impl<'a> UnitNames<'a> {
    /// The known units of a graph.
    pub fn of_graph(graph: &'a UnitGraph) -> Self {
        UnitNames { names: graph.known_units().collect(), graph: Some(graph) }
    }

    /// Tells whether `name` is in the set.
    pub fn contains(&self, name: &str) -> bool {
        match self.graph {
            Some(graph) => graph.is_known(name),
            None => self.names.binary_search(&name).is_ok(),
        }
    }

    /// Iterates over the names, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.names.iter().copied()
    }
}

/// Returns the names in `universe` that `selector` matches, sorted.
pub fn matching(selector: &Selector, universe: &UnitNames<'_>) -> Vec<String> {
    if let Selector::Unit(unit) = selector {
        return universe.contains(unit.as_str()).then(|| unit.clone()).into_iter().collect();
    }
    let Some(set) = compile(selector) else { return Vec::new() };
    let mut found: Vec<String> = universe.iter().filter(|u| set.is_match(u)).map(str::to_owned).collect();
    found.sort_unstable();
    found.dedup();
    found
}

/// Up to three names close to an unmatched selector: unit names for a full
/// name, bare names (`sshd`) for a bare name, either for a glob (compared
/// without its glob characters).
pub fn close_matches(selector: &Selector, universe: &UnitNames<'_>) -> Vec<String> {
    let (wanted, bare): (String, bool) = match selector {
        Selector::Name(n) => (n.clone(), true),
        Selector::Unit(u) => (u.clone(), false),
        Selector::Glob(g) => (g.replace(['*', '?', '[', ']'], ""), false),
    };
    let candidates: BTreeSet<&str> =
        universe.iter().map(|u| if bare { bare_name(u) } else { u }).filter(|c| !c.is_empty()).collect();
    let mut scored: Vec<(f64, &str)> = candidates
        .into_iter()
        .map(|c| (strsim::normalized_damerau_levenshtein(&wanted, c), c))
        .filter(|(score, c)| *score >= 0.6 || (wanted.len() >= 3 && c.starts_with(wanted.as_str())))
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
    scored.into_iter().take(3).map(|(_, c)| c.to_owned()).collect()
}

/// `sshd.service` → `sshd`, `sshd@1.service` → `sshd`.
fn bare_name(unit: &str) -> &str {
    let stem = unit_name::stem(unit);
    stem.split_once('@').map_or(stem, |(prefix, _)| prefix)
}

fn implicit_protections(request: &Request, universe: &UnitNames<'_>) -> Vec<ProtectedUnit> {
    let present = |unit: &str| universe.contains(unit).then(|| unit.to_owned()).into_iter().collect::<Vec<_>>();
    let mut out = Vec::new();
    if request.implicit.dbus {
        for unit in ["dbus.service", "dbus-broker.service", "dbus.socket"] {
            out.push(ProtectedUnit {
                selector: unit.to_owned(),
                source: ProtectionSource::Implicit { why: "the D-Bus message bus".to_owned() },
                units: present(unit),
                allow: vec![Action::Reload],
            });
        }
    }
    if request.implicit.logind {
        out.push(ProtectedUnit {
            selector: "systemd-logind.service".to_owned(),
            source: ProtectionSource::Implicit { why: "the login manager".to_owned() },
            units: present("systemd-logind.service"),
            allow: vec![Action::Reload],
        });
    }
    for path in request.caller_cgroups.iter().filter(|_| request.implicit.caller) {
        // Only units that exist here are listed: the caller's units are
        // facts about the machine, and a unit that is in neither generation
        // nor the live state (an offline `diff` run from a login session)
        // cannot be touched by the plan.
        for unit in cgroup::caller_units(path).into_iter().filter(|u| universe.contains(u)) {
            // Two callers (an isolated switch and the process that asked
            // for it) may share a slice: it is listed once.
            if out.iter().any(|p| p.selector == unit && matches!(p.source, ProtectionSource::Implicit { .. })) {
                continue;
            }
            out.push(ProtectedUnit {
                selector: unit.clone(),
                source: ProtectionSource::Implicit { why: format!("holds this process (cgroup {path})") },
                units: present(&unit),
                allow: Vec::new(),
            });
        }
    }
    out
}

/// Explains the action a unit gets in a protected plan.
pub fn explain(plan: &Plan, analysis: &Analysis, unit: &str) -> Explanation {
    let entry = plan.unit(unit);
    let refusal = plan.protection.refusals.iter().find(|r| r.unit == unit).cloned();
    let mut jobs: Vec<Action> = entry.map(|e| e.actions.clone()).unwrap_or_default();
    if let Some(d) = entry.and_then(|e| e.deferral.as_ref()) {
        jobs.extend(d.actions.iter().copied());
    }
    jobs.sort();
    jobs.dedup();
    let protected: HashSet<&str> = analysis.protected.iter().map(String::as_str).collect();
    let touches = jobs
        .iter()
        .filter_map(|&a| Some((a, Job::of_action(a)?)))
        .map(|(a, job)| (a, analysis.graph.touches_from(unit, job, &protected)))
        .collect();
    let relations = analysis.graph.relations_of(unit);
    Explanation {
        unit: unit.to_owned(),
        running: analysis.graph.is_running(unit),
        actions: entry.map(|e| e.actions.clone()).unwrap_or_default(),
        reasons: entry.map(|e| e.reasons.clone()).unwrap_or_default(),
        deferral: entry.and_then(|e| e.deferral.clone()),
        refusal,
        protected_by: plan.protection.protected.iter().filter(|p| p.units.iter().any(|u| u == unit)).cloned().collect(),
        touches,
        known: entry.is_some() || analysis.graph.contains(unit),
        relations,
    }
}

#[cfg(test)]
mod tests;
