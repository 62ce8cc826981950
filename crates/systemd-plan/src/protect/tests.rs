//! Unit tests of the protection analysis on small hand-made graphs.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly on bad fixtures")]

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use plan_model::policy::Selector;
use plan_model::{Action, Edge, LiveState, LiveUnit, Mode, Plan, ProtectionSource, UnitPlan};

use super::*;
use crate::UnitFile;

fn generation(units: &[(&str, &str)]) -> GenerationUnits {
    GenerationUnits::from_units(
        "/units",
        units.iter().map(|(name, text)| {
            (*name, UnitFile::parse(Path::new(&format!("/etc/systemd/system/{name}")), text).unwrap())
        }),
    )
}

/// One live unit: `(unit, active_state, [(property, [targets])])`.
type LiveEntry<'a> = (&'a str, &'a str, &'a [(&'a str, &'a [&'a str])]);

/// A live state made of entries.
fn live(units: &[LiveEntry<'_>]) -> LiveState {
    let mut state = LiveState::default();
    for (name, active, deps) in units {
        let deps: BTreeMap<String, Vec<String>> =
            deps.iter().map(|(p, ts)| ((*p).to_owned(), ts.iter().map(|t| (*t).to_owned()).collect())).collect();
        state
            .units
            .insert((*name).to_owned(), LiveUnit { active_state: (*active).into(), deps, ..LiveUnit::default() });
    }
    state
}

fn plan(actions: &[(&str, &[Action])]) -> Plan {
    Plan::between("", "", actions.iter().map(|(unit, acts)| UnitPlan::new(unit, acts)).collect())
}

fn request(selectors: &[&str], mode: Mode) -> Request {
    Request {
        selectors: selectors.iter().map(|s| (Selector::parse(s).unwrap(), ProtectionSource::CommandLine)).collect(),
        mode,
        ..Request::default()
    }
}

fn edge(from: &str, relation: &str, to: &str) -> Edge {
    Edge { from: from.into(), relation: relation.into(), to: to.into() }
}

#[test]
fn requires_chain_three_deep_defers_with_chain() {
    let units = generation(&[
        ("a.service", "[Unit]\nRequires=b.service\n"),
        ("b.service", "[Unit]\nRequires=c.service\n"),
        ("c.service", "[Service]\nExecStart=/x\n"),
    ]);
    let state = live(&[("a.service", "active", &[]), ("b.service", "active", &[]), ("c.service", "active", &[])]);
    let mut p = plan(&[("c.service", &[Action::Restart])]);
    protect(&mut p, &units, &units, &state, &request(&["a.service"], Mode::Defer));
    let d = p.units[0].deferral.as_ref().expect("deferred");
    assert!(p.units[0].actions.is_empty());
    assert_eq!(d.actions, vec![Action::Restart]);
    assert_eq!(d.touch.touches, "a.service");
    assert_eq!(d.touch.effect, Action::Restart);
    assert_eq!(
        d.touch.chain,
        vec![edge("a.service", "Requires", "b.service"), edge("b.service", "Requires", "c.service")]
    );
}

#[test]
fn restart_stops_at_units_that_are_not_running_but_stop_does_not() {
    let units = generation(&[
        ("a.service", "[Unit]\nRequires=b.service\n"),
        ("b.service", "[Unit]\nRequires=c.service\n"),
        ("c.service", "[Service]\nExecStart=/x\n"),
    ]);
    let state = live(&[("a.service", "active", &[]), ("b.service", "inactive", &[]), ("c.service", "active", &[])]);
    let mut p = plan(&[("c.service", &[Action::Restart])]);
    protect(&mut p, &units, &units, &state, &request(&["a.service"], Mode::Defer));
    assert!(p.units[0].deferral.is_none(), "try-restart does nothing to inactive b");

    let mut p = plan(&[("c.service", &[Action::Stop])]);
    protect(&mut p, &units, &units, &state, &request(&["a.service"], Mode::Defer));
    assert_eq!(
        p.units[0].deferral.as_ref().unwrap().touch.effect,
        Action::Stop,
        "stop jobs pass through inactive units"
    );
}

#[test]
fn stop_and_start_halves_are_deferred_together() {
    let units = generation(&[("a.service", "[Unit]\nBindsTo=b.service\n"), ("b.service", "")]);
    let state = live(&[("a.service", "active", &[]), ("b.service", "active", &[])]);
    let mut p = plan(&[("b.service", &[Action::Stop, Action::Start])]);
    protect(&mut p, &units, &units, &state, &request(&["a"], Mode::Defer));
    let d = p.units[0].deferral.as_ref().unwrap();
    assert_eq!(d.actions, vec![Action::Stop, Action::Start]);
    assert_eq!(d.touch.chain, vec![edge("a.service", "BindsTo", "b.service")]);
}

#[test]
fn live_reverse_properties_are_turned_around() {
    let empty = generation(&[]);
    let state = live(&[
        ("net.service", "active", &[("RequiredBy", &["sshd.service"]), ("ConsistsOf", &["part.service"])]),
        ("sshd.service", "active", &[]),
        ("part.service", "active", &[]),
    ]);
    let mut p = plan(&[("net.service", &[Action::Restart])]);
    protect(&mut p, &empty, &empty, &state, &request(&["sshd", "part.service"], Mode::Defer));
    let d = p.units[0].deferral.as_ref().unwrap();
    // Both are one step away; the tie goes to the first protected name.
    assert_eq!(d.touch.touches, "part.service");
    assert_eq!(d.touch.chain, vec![edge("part.service", "PartOf", "net.service")]);
}

#[test]
fn conflicts_work_in_both_directions_for_starts() {
    let units = generation(&[("new.service", "[Unit]\nConflicts=sshd.service\n"), ("sshd.service", "")]);
    let state = live(&[("sshd.service", "active", &[]), ("other.service", "active", &[("Conflicts", &["x.service"])])]);
    let mut p = plan(&[("new.service", &[Action::Start]), ("x.service", &[Action::Start])]);
    protect(&mut p, &units, &units, &state, &request(&["sshd", "other.service"], Mode::Defer));
    assert_eq!(
        p.units[0].deferral.as_ref().unwrap().touch.chain,
        vec![edge("new.service", "Conflicts", "sshd.service")]
    );
    assert_eq!(p.units[1].deferral.as_ref().unwrap().touch.touches, "other.service");
}

#[test]
fn cycles_terminate() {
    let units = generation(&[
        ("a.service", "[Unit]\nRequires=b.service\nBindsTo=c.service\nConflicts=z.service\n"),
        ("b.service", "[Unit]\nRequires=a.service\nPartOf=c.service\n"),
        ("c.service", "[Unit]\nBindsTo=a.service\nRequires=b.service\nUpholds=a.service\n"),
    ]);
    let state = live(&[("a.service", "active", &[]), ("b.service", "active", &[]), ("c.service", "active", &[])]);
    let mut p = plan(&[("a.service", &[Action::Restart]), ("d.service", &[Action::Start])]);
    protect(&mut p, &units, &units, &state, &request(&["c.service"], Mode::Defer));
    assert_eq!(p.units[0].deferral.as_ref().unwrap().touch.touches, "c.service");
    assert!(p.units[1].deferral.is_none());
}

#[test]
fn refuse_mode_keeps_actions_and_lists_refusals() {
    let units = generation(&[("a.service", "[Unit]\nRequires=b.service\n"), ("b.service", "")]);
    let state = live(&[("a.service", "active", &[]), ("b.service", "active", &[])]);
    let mut p = plan(&[("b.service", &[Action::Restart]), ("c.service", &[Action::Restart])]);
    protect(&mut p, &units, &units, &state, &request(&["a"], Mode::Refuse));
    assert!(p.protection.refused);
    assert_eq!(p.units[0].actions, vec![Action::Restart]);
    assert!(p.units[0].deferral.is_none());
    assert_eq!(p.protection.refusals.len(), 1);
    assert_eq!(p.protection.refusals[0].unit, "b.service");
    assert!(p.touches_protected());
}

#[test]
fn socket_of_a_protected_instance_is_guarded() {
    let units = generation(&[
        ("sshd.socket", "[Socket]\nListenStream=22\nAccept=yes\n"),
        ("sshd@.service", "[Service]\nExecStart=/sshd -i\n"),
    ]);
    let state = live(&[("sshd.socket", "active", &[]), ("sshd@1-10.0.0.1:22-10.0.0.2:5555.service", "active", &[])]);
    let mut p = plan(&[("sshd.socket", &[Action::Stop, Action::Start])]);
    let analysis = protect(&mut p, &units, &units, &state, &request(&["sshd@*.service"], Mode::Defer));
    let d = p.units[0].deferral.as_ref().unwrap();
    assert_eq!(d.touch.touches, "sshd@1-10.0.0.1:22-10.0.0.2:5555.service");
    assert_eq!(d.touch.chain, vec![edge("sshd.socket", "Triggers", "sshd@1-10.0.0.1:22-10.0.0.2:5555.service")]);
    assert_eq!(
        analysis.protected.iter().collect::<Vec<_>>(),
        ["sshd@.service", "sshd@1-10.0.0.1:22-10.0.0.2:5555.service"]
    );
}

#[test]
fn selectors_match_names_instances_and_globs() {
    let universe: UnitNames<'_> = [
        "sshd.service",
        "sshd.socket",
        "sshd@.service",
        "sshd@1.service",
        "sshd-keygen.service",
        "gitlab-runner.service",
        "gitlab-runner-cleanup.timer",
        "docker.service",
        "docker.socket",
    ]
    .into_iter()
    .collect();
    let m = |s: &str| matching(&Selector::parse(s).unwrap(), &universe);
    assert_eq!(m("sshd"), ["sshd.service", "sshd.socket", "sshd@.service", "sshd@1.service"]);
    assert_eq!(m("sshd.service"), ["sshd.service"]);
    assert_eq!(m("gitlab-runner*"), ["gitlab-runner-cleanup.timer", "gitlab-runner.service"]);
    assert_eq!(m("docker*.service"), ["docker.service"]);
    assert!(m("nope").is_empty());
}

#[test]
fn unknown_selectors_get_close_matches() {
    let units = generation(&[("sshd.service", ""), ("gitlab-runner.service", "")]);
    let mut p = plan(&[]);
    let analysis =
        protect(&mut p, &units, &units, &LiveState::default(), &request(&["shd", "gitlab-runer.service"], Mode::Defer));
    assert_eq!(analysis.unknown.len(), 2);
    assert_eq!(analysis.unknown[0].close, ["sshd"]);
    assert_eq!(analysis.unknown[1].close, ["gitlab-runner.service"]);
    assert_eq!(p.diagnostics.len(), 2);
    assert!(p.diagnostics[0].message.contains("did you mean sshd?"), "{}", p.diagnostics[0].message);
}

#[test]
fn dbus_may_be_reloaded_but_not_restarted() {
    let units = generation(&[("dbus.service", ""), ("polkit.service", "[Unit]\nRequires=dbus.service\n")]);
    let state = live(&[("dbus.service", "active", &[]), ("polkit.service", "active", &[])]);
    let mut p = plan(&[("dbus.service", &[Action::Reload]), ("polkit.service", &[Action::Restart])]);
    protect(&mut p, &units, &units, &state, &request(&[], Mode::Defer));
    assert_eq!(p.units[0].actions, vec![Action::Reload]);
    assert!(p.units[1].deferral.is_none(), "restarting a dependent does not touch the bus");

    let mut p = plan(&[("dbus.service", &[Action::Restart])]);
    protect(&mut p, &units, &units, &state, &request(&[], Mode::Defer));
    let d = p.units[0].deferral.as_ref().unwrap();
    assert_eq!((d.touch.touches.as_str(), d.touch.chain.len()), ("dbus.service", 0));

    let mut p = plan(&[("dbus.service", &[Action::Restart])]);
    let mut no_implicit = request(&[], Mode::Defer);
    no_implicit.implicit.dbus = false;
    protect(&mut p, &units, &units, &state, &no_implicit);
    assert!(p.units[0].deferral.is_none());
}

#[test]
fn caller_cgroup_protects_its_units() {
    let units = generation(&[("gitlab-runner.service", "")]);
    let state = live(&[("gitlab-runner.service", "active", &[]), ("system.slice", "active", &[])]);
    let mut p = plan(&[("gitlab-runner.service", &[Action::Restart])]);
    let mut req = request(&[], Mode::Defer);
    req.caller_cgroups = vec!["/system.slice/gitlab-runner.service".into()];
    protect(&mut p, &units, &units, &state, &req);
    assert!(p.units[0].deferral.is_some());
    let selectors: Vec<&str> = p.protection.protected.iter().map(|p| p.selector.as_str()).collect();
    assert!(selectors.contains(&"gitlab-runner.service") && selectors.contains(&"system.slice"), "{selectors:?}");
}

#[test]
fn every_caller_cgroup_is_protected_and_a_shared_slice_listed_once() {
    let units = generation(&[("gitlab-runner.service", ""), ("safe-switch-1.service", "")]);
    let state = live(&[
        ("gitlab-runner.service", "active", &[]),
        ("safe-switch-1.service", "active", &[]),
        ("system.slice", "active", &[]),
    ]);
    let mut p = plan(&[("gitlab-runner.service", &[Action::Restart])]);
    let mut req = request(&[], Mode::Defer);
    req.caller_cgroups =
        vec!["/system.slice/safe-switch-1.service".into(), "/system.slice/gitlab-runner.service".into()];
    protect(&mut p, &units, &units, &state, &req);
    assert!(p.units[0].deferral.is_some(), "the second cgroup's unit is protected too");
    let selectors: Vec<&str> = p.protection.protected.iter().map(|p| p.selector.as_str()).collect();
    assert_eq!(
        selectors.iter().filter(|s| **s == "system.slice").count(),
        1,
        "system.slice is listed once: {selectors:?}"
    );
    assert!(selectors.contains(&"safe-switch-1.service"), "{selectors:?}");
}

/// The backward search and the forward walk must agree on every job of
/// every unit of a random graph with cycles, and every chain the backward
/// search reports must be made of real relations.
#[test]
fn backward_search_agrees_with_forward_walk() {
    let mut seed: u64 = 0x1234_5678_9abc_def1;
    let mut rnd = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let props = [
        "Requires",
        "RequiredBy",
        "BindsTo",
        "PartOf",
        "ConsistsOf",
        "Conflicts",
        "Wants",
        "PropagatesStopTo",
        "Upholds",
        "Requisite",
        "TriggeredBy",
    ];
    for round in 0..20 {
        let n = 40;
        let names: Vec<String> = (0..n).map(|i| format!("u{i}.service")).collect();
        let mut state = LiveState::default();
        for name in &names {
            let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for _ in 0..rnd(4) {
                deps.entry(props[rnd(props.len())].to_owned()).or_default().push(names[rnd(n)].clone());
            }
            let active = if rnd(4) == 0 { "inactive" } else { "active" };
            state.units.insert(name.clone(), LiveUnit { active_state: active.into(), deps, ..LiveUnit::default() });
        }
        let empty = generation(&[]);
        let graph = UnitGraph::build(&empty, &empty, &state);
        let protected: Vec<&str> = (0..3).map(|_| names[rnd(n)].as_str()).collect();
        let set: HashSet<&str> = protected.iter().copied().collect();
        let reach = graph.reach(&protected);
        let all_edges: HashSet<(String, String, String)> =
            names.iter().flat_map(|u| graph.relations_of(u)).map(|e| (e.from, e.relation, e.to)).collect();
        for name in &names {
            for job in [Job::Stop, Job::Restart, Job::Start] {
                let backward = reach.touch(&graph, name, job);
                let forward = graph.touches_from(name, job, &set);
                assert_eq!(
                    backward.is_some(),
                    !forward.is_empty(),
                    "round {round}: {name} {job:?}: {backward:?} vs {forward:?}"
                );
                if let Some(t) = backward {
                    assert!(set.contains(t.touches.as_str()));
                    assert!(
                        t.chain.iter().all(|e| all_edges.contains(&(e.from.clone(), e.relation.clone(), e.to.clone()))),
                        "{t:?}"
                    );
                    let shortest = forward.iter().map(|f| f.chain.len()).min().unwrap_or(0);
                    assert!(t.chain.len() <= shortest + 1, "round {round}: {name} {job:?}: {t:?} vs {forward:?}");
                }
            }
        }
    }
}

#[test]
fn caller_units_that_do_not_exist_here_are_not_listed() {
    let units = generation(&[("nginx.service", "")]);
    let mut p = plan(&[]);
    let mut req = request(&[], Mode::Defer);
    req.caller_cgroups = vec!["/user.slice/user-1000.slice/session-3.scope".into()];
    protect(&mut p, &units, &units, &LiveState::default(), &req);
    assert!(
        p.protection.protected.iter().all(|e| !e.selector.contains("session") && !e.selector.contains("user")),
        "{:?}",
        p.protection.protected
    );
}

#[test]
fn relation_table_matches_discriminants() {
    for (i, r) in Relation::ALL.iter().enumerate() {
        assert_eq!(*r as usize, i, "{r:?}");
    }
}

#[test]
fn the_plan_lists_what_systemd_does_to_other_units_with_its_jobs() {
    let units = generation(&[
        ("web.service", "[Unit]\nWants=cache.service\n"),
        ("helper.service", "[Unit]\nPartOf=web.service\n"),
        ("deep.service", "[Unit]\nBindsTo=helper.service\n"),
        ("idle-helper.service", "[Unit]\nPartOf=web.service\n"),
        ("cache.service", ""),
        ("db.service", ""),
        ("app.service", "[Unit]\nRequires=db.service\n"),
        ("multi-user.target", "[Unit]\nWants=app.service\n"),
        ("changed.service", "[Unit]\nPartOf=web.service\n"),
    ]);
    let state = live(&[
        ("web.service", "active", &[]),
        ("helper.service", "active", &[]),
        ("deep.service", "active", &[]),
        ("idle-helper.service", "inactive", &[]),
        ("cache.service", "inactive", &[]),
        ("db.service", "active", &[]),
        ("app.service", "active", &[]),
        ("multi-user.target", "active", &[]),
        ("changed.service", "active", &[]),
    ]);
    let mut p = plan(&[
        ("web.service", &[Action::Restart]),
        ("db.service", &[Action::Stop]),
        ("multi-user.target", &[Action::Start]),
        ("changed.service", &[Action::Stop, Action::Start]),
    ]);
    protect(&mut p, &units, &units, &state, &request(&[], Mode::Defer));
    let found: Vec<(&str, Action, &str, Action)> =
        p.consequences.iter().map(|c| (c.unit.as_str(), c.effect, c.by.as_str(), c.cause)).collect();
    assert_eq!(
        found,
        [
            // Stopped with db.service, started again with the target.
            ("app.service", Action::Stop, "db.service", Action::Stop),
            ("app.service", Action::Start, "multi-user.target", Action::Start),
            ("cache.service", Action::Start, "web.service", Action::Restart),
            ("deep.service", Action::Restart, "web.service", Action::Restart),
            ("helper.service", Action::Restart, "web.service", Action::Restart),
        ],
        "nothing for idle-helper.service (not running), nor for changed.service (its own stop and start)"
    );
    assert_eq!(
        p.consequences[3].chain,
        [edge("deep.service", "BindsTo", "helper.service"), edge("helper.service", "PartOf", "web.service")]
    );
    // A deferred action has no consequences.
    let mut p = plan(&[("web.service", &[Action::Restart])]);
    protect(&mut p, &units, &units, &state, &request(&["helper.service"], Mode::Defer));
    assert!(p.consequences.is_empty(), "{:?}", p.consequences);
}
