//! The unit relation graph and how systemd propagates jobs along it.
//!
//! Relations come from three places: the old generation's unit files, the
//! new generation's, and the live dependency properties systemd reports.
//! The union is taken, which is conservative: a relation that exists on
//! either side of the switch, or in the running manager, counts. Every
//! relation is stored in its forward form, the way a unit file writes it
//! (`sshd.service Requires=network-setup.service`); reverse properties
//! (`RequiredBy`, `BoundBy`, `ConsistsOf`, ...) are turned around.
//!
//! The propagation rules follow systemd's transaction code
//! (`transaction_add_job_and_dependencies` and the dependency atoms of
//! `unit-dependency-atom.c`):
//!
//! - A stop job on X adds a stop job to every unit that `Requires=`,
//!   `Requisite=`, `BindsTo=` or is `PartOf=` X, and to every unit X lists
//!   in `PropagatesStopTo=`. Stop jobs propagate through inactive units too.
//! - A restart job on X adds a try-restart to the same dependents (it turns
//!   into nothing on a unit that is not running, so it does not propagate
//!   past one), a stop job to its `PropagatesStopTo=` units, and everything
//!   a start job adds. (systemd 252 does not carry a restart along
//!   `PropagatesStopTo=`; later transaction code does. Protection takes the
//!   reading that stops more.)
//! - A start job on X adds start jobs to the units it `Requires=`,
//!   `BindsTo=`, `Wants=` or `Upholds=`, and stop jobs to every unit it
//!   conflicts with, in either direction of `Conflicts=`.
//! - `Triggers=` (a socket, timer or path and the unit it activates) does
//!   not propagate jobs: a running service survives the stop of its socket.
//!   It matters for protection all the same (see [`Reach`]).
//!
//! Cycles are common (`Conflicts=` is symmetric, `BindsTo=` pairs point at
//! each other), so every walk is an iterative breadth-first search with a
//! visited set; nothing recurses.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher as _, BuildHasherDefault, Hasher};

use hashbrown::HashTable;

use petgraph::Direction::{Incoming, Outgoing};
use petgraph::graph::{DiGraph, EdgeIndex, NodeIndex};
use petgraph::visit::EdgeRef;
use plan_model::{Action, CHAIN_ENDS, Consequence, Edge, LiveState, Touch, unit_name};

use crate::generation::GenerationUnits;
use crate::unit_file::UnitFile;

/// A relation between two units, named by its forward unit-file key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Relation {
    /// `Requires=`.
    Requires,
    /// `Requisite=`.
    Requisite,
    /// `BindsTo=`.
    BindsTo,
    /// `PartOf=`.
    PartOf,
    /// `Conflicts=`.
    Conflicts,
    /// `PropagatesStopTo=` (and `StopPropagatedFrom=` turned around).
    PropagatesStopTo,
    /// `Upholds=`.
    Upholds,
    /// `Wants=`.
    Wants,
    /// A socket, timer or path unit and the unit it activates.
    Triggers,
}

impl Relation {
    /// Every relation, in declaration order (`ALL[r as usize] == r`).
    pub(crate) const ALL: [Relation; 9] = [
        Relation::Requires,
        Relation::Requisite,
        Relation::BindsTo,
        Relation::PartOf,
        Relation::Conflicts,
        Relation::PropagatesStopTo,
        Relation::Upholds,
        Relation::Wants,
        Relation::Triggers,
    ];

    /// The unit-file key (or D-Bus property) of the forward form.
    pub fn key(self) -> &'static str {
        match self {
            Relation::Requires => "Requires",
            Relation::Requisite => "Requisite",
            Relation::BindsTo => "BindsTo",
            Relation::PartOf => "PartOf",
            Relation::Conflicts => "Conflicts",
            Relation::PropagatesStopTo => "PropagatesStopTo",
            Relation::Upholds => "Upholds",
            Relation::Wants => "Wants",
            Relation::Triggers => "Triggers",
        }
    }

    /// Maps a dependency property as systemd reports it to a relation and
    /// whether the property is the reverse form (`RequiredBy` is
    /// `Requires` seen from the other end).
    pub fn from_property(name: &str) -> Option<(Relation, bool)> {
        Some(match name {
            "Requires" => (Relation::Requires, false),
            "RequiredBy" => (Relation::Requires, true),
            "Requisite" => (Relation::Requisite, false),
            "RequisiteOf" => (Relation::Requisite, true),
            "BindsTo" => (Relation::BindsTo, false),
            "BoundBy" => (Relation::BindsTo, true),
            "PartOf" => (Relation::PartOf, false),
            "ConsistsOf" => (Relation::PartOf, true),
            "Conflicts" => (Relation::Conflicts, false),
            "ConflictedBy" => (Relation::Conflicts, true),
            "PropagatesStopTo" => (Relation::PropagatesStopTo, false),
            "StopPropagatedFrom" => (Relation::PropagatesStopTo, true),
            "Upholds" => (Relation::Upholds, false),
            "UpheldBy" => (Relation::Upholds, true),
            "Wants" => (Relation::Wants, false),
            "WantedBy" => (Relation::Wants, true),
            "Triggers" => (Relation::Triggers, false),
            "TriggeredBy" => (Relation::Triggers, true),
            _ => return None,
        })
    }

    /// Relations whose holder goes down (or is restarted) with its target.
    fn follows_stop(self) -> bool {
        matches!(self, Relation::Requires | Relation::Requisite | Relation::BindsTo | Relation::PartOf)
    }

    /// Relations along which a start job pulls in another start job.
    fn pulls_in_start(self) -> bool {
        matches!(self, Relation::Requires | Relation::BindsTo | Relation::Wants | Relation::Upholds)
    }
}

/// The relation a `[Unit]` key names, for the forward keys read from unit
/// files. `StopPropagatedFrom=` is the reverse form and is handled apart.
fn unit_key(key: &str) -> Option<Relation> {
    Some(match key {
        "Requires" => Relation::Requires,
        "Requisite" => Relation::Requisite,
        "BindsTo" => Relation::BindsTo,
        "PartOf" => Relation::PartOf,
        "Conflicts" => Relation::Conflicts,
        "PropagatesStopTo" => Relation::PropagatesStopTo,
        "Upholds" => Relation::Upholds,
        "Wants" => Relation::Wants,
        _ => return None,
    })
}

/// The job systemd would run on a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Job {
    /// A stop job.
    Stop = 0,
    /// A restart (or try-restart) job.
    Restart = 1,
    /// A start job.
    Start = 2,
}

impl Job {
    const ALL: [Job; 3] = [Job::Stop, Job::Restart, Job::Start];

    /// The job a plan action queues, if it queues one that propagates.
    pub fn of_action(action: Action) -> Option<Job> {
        match action {
            Action::Stop => Some(Job::Stop),
            Action::Restart => Some(Job::Restart),
            Action::Start => Some(Job::Start),
            Action::Reload | Action::Skip => None,
        }
    }

    /// The plan action with the same name.
    pub fn action(self) -> Action {
        match self {
            Job::Stop => Action::Stop,
            Job::Restart => Action::Restart,
            Job::Start => Action::Start,
        }
    }
}

/// Every unit relation of both generations and the live state, as one
/// directed graph (edges point from the unit that holds the relation to
/// the unit it names), plus which units are running.
#[derive(Debug, Default)]
pub struct UnitGraph {
    graph: DiGraph<Box<str>, Relation>,
    /// The node of each unit name, hashed and compared through the node's
    /// name: each name is held once, by its node.
    index: HashTable<NodeIndex>,
    /// Relations collected while building, deduplicated before they become
    /// edges.
    pending: Vec<(u32, u32, Relation)>,
    running: Vec<bool>,
    /// The first `known` nodes are the units of the generations and the
    /// live state; the rest are only named by relations.
    known: usize,
}

/// A multiply-rotate hash over 8-byte words (the scheme of rustc's
/// `FxHasher`). Unit names are short and come from the machine's own
/// configuration, so hash flooding is no concern, and the default SipHash
/// is the largest cost of building the name index for a large graph.
#[derive(Default)]
struct WordHash(u64);

impl WordHash {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for WordHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte));
    }
}

/// The hash of a unit name in the name index.
fn hash(name: &str) -> u64 {
    BuildHasherDefault::<WordHash>::default().hash_one(name)
}

impl UnitGraph {
    /// Builds the graph from both generations and the live state.
    ///
    /// A unit counts as running when the live state says so. When the live
    /// state is empty (an offline `diff` without a snapshot), every unit of
    /// the old generation counts as running, as the planner assumes.
    pub fn build(old: &GenerationUnits, new: &GenerationUnits, live: &LiveState) -> UnitGraph {
        let mut g = UnitGraph::default();
        // Growing the name index rehashes every name it holds, so it is
        // sized once for every unit it will certainly hold.
        let units = live.units.len() + old.unit_names().count() + new.unit_names().count();
        let graph = &g.graph;
        g.index.reserve(units, |&n| hash(&graph[n]));
        g.graph.reserve_nodes(units);
        g.pending.reserve(live.units.values().map(|u| u.deps.values().map(Vec::len).sum::<usize>()).sum::<usize>() * 2);
        // Every known unit is a node, so that a unit without relations can
        // still be found protected and running.
        for name in live.units.keys().map(String::as_str).chain(old.unit_names()).chain(new.unit_names()) {
            g.node(name);
        }
        g.known = g.graph.node_count();
        for (name, unit) in &live.units {
            let me = g.node(name);
            for (property, targets) in &unit.deps {
                let Some((relation, reverse)) = Relation::from_property(property) else { continue };
                for target in targets {
                    let other = g.node(target);
                    if reverse {
                        g.push(other, relation, me);
                    } else {
                        g.push(me, relation, other);
                    }
                }
            }
        }
        // Instances without a file of their own take their template's
        // relations; the running ones are the instances that matter.
        let instances: Vec<&str> =
            live.units.keys().map(String::as_str).filter(|n| unit_name::split_instance(n).is_some()).collect();
        for (side, generation) in [old, new].into_iter().enumerate() {
            let is_new = side == 1;
            for (name, unit) in generation.units() {
                // Most units are the same on both sides of a switch; their
                // relations were read from the old generation already.
                if is_new && old.unit(name).is_some_and(|o| o.is_masked() == unit.is_masked() && o.same_settings(unit))
                {
                    continue;
                }
                g.add_unit_file(name, unit, &instances);
            }
            for (name, kind, targets) in generation.linked_all() {
                let relation = match kind {
                    "wants" => Relation::Wants,
                    "requires" => Relation::Requires,
                    "upholds" => Relation::Upholds,
                    _ => continue,
                };
                for target in targets {
                    g.relate_checked(name, relation, target);
                }
            }
            for &instance in &instances {
                // `unit` falls back to the template, whose name then differs;
                // an instance with a file of its own was handled above.
                if let Some((_, unit)) = generation.unit_with_name(instance).filter(|(name, _)| *name != instance) {
                    g.add_unit_file(instance, unit, &instances);
                }
            }
        }
        // The same relation usually comes from several sources (both
        // generations and the live state). Sorting packed integers is the
        // cheapest way to drop the copies.
        let mut pending: Vec<u128> = std::mem::take(&mut g.pending)
            .into_iter()
            .map(|(a, b, r)| (u128::from(a) << 40) | (u128::from(b) << 8) | r as u128)
            .collect();
        pending.sort_unstable();
        pending.dedup();
        g.graph.reserve_edges(pending.len());
        for key in pending {
            let (a, b) = ((key >> 40) as u32, (key >> 8) as u32);
            let Some(relation) = Relation::ALL.get((key & 0xff) as usize) else { continue };
            g.graph.add_edge(NodeIndex::new(a as usize), NodeIndex::new(b as usize), *relation);
        }
        // The nodes were reserved for every name, most of them given more
        // than once.
        g.graph.shrink_to_fit();
        g.running = vec![false; g.graph.node_count()];
        if live.units.is_empty() {
            for name in old.unit_names() {
                if let Some(n) = g.lookup(name) {
                    g.running[n.index()] = old.has_unit(name) && !unit_name::is_template(name);
                }
            }
        }
        for (name, unit) in &live.units {
            if let Some(n) = g.lookup(name) {
                g.running[n.index()] = unit.is_running();
            }
        }
        g
    }

    /// Adds the dependency properties systemd reported for `unit` (read
    /// after the graph was built), as [`UnitGraph::build`] adds those of
    /// the live state. A relation the graph has already may be added a
    /// second time, which changes nothing a walk finds.
    pub fn add_live_dependencies(&mut self, unit: &str, deps: &BTreeMap<String, Vec<String>>) {
        let me = self.node(unit);
        for (property, targets) in deps {
            let Some((relation, reverse)) = Relation::from_property(property) else { continue };
            for target in targets {
                let other = self.node(target);
                let (a, b) = if reverse { (other, me) } else { (me, other) };
                if a != b {
                    self.graph.add_edge(a, b, relation);
                }
            }
        }
        // Units only named by the answer are not running as far as the
        // graph knows, as when built.
        self.running.resize(self.graph.node_count(), false);
    }

    fn add_unit_file(&mut self, name: &str, unit: &UnitFile, instances: &[&str]) {
        if unit.is_masked() {
            return;
        }
        let Some(me) = self.checked_node(name) else { return };
        // Specifiers (`%i`, `%p`, ...) are expanded for this unit's name, as
        // systemd does when it loads an instance from its template; values
        // whose specifiers cannot be known here are left out.
        let expand = |word: &str| unit_name::expand_specifiers(word, name);
        if let Some(section) = unit.section("Unit") {
            for (key, values) in section.iter() {
                // systemd splits list settings at ASCII white space.
                let words = values.iter().flat_map(|v| v.split_ascii_whitespace()).filter_map(expand);
                if key == "StopPropagatedFrom" {
                    for source in words {
                        if let Some(other) = self.checked_node(&source) {
                            self.push(other, Relation::PropagatesStopTo, me);
                        }
                    }
                } else if let Some(relation) = unit_key(key) {
                    for target in words {
                        if let Some(other) = self.checked_node(&target) {
                            self.push(me, relation, other);
                        }
                    }
                }
            }
        }
        // What a socket, timer or path unit activates; an `Accept=yes`
        // socket activates instances of a template.
        let stem = unit_name::stem(name);
        let words = |section: &str, key: &str| -> Vec<String> {
            unit.words(section, key).into_iter().filter_map(expand).collect()
        };
        let triggered: Vec<String> = match unit_name::unit_type(name) {
            Some("socket") => match words("Socket", "Service").pop() {
                Some(service) => vec![service],
                None if unit.bool_or("Socket", "Accept", false) => vec![format!("{stem}@.service")],
                None => vec![format!("{stem}.service")],
            },
            Some("timer") => one_or_default(words("Timer", "Unit"), stem),
            Some("path") => one_or_default(words("Path", "Unit"), stem),
            _ => Vec::new(),
        };
        for target in triggered {
            if unit_name::is_template(&target) {
                let prefix = target.split_once('@').map_or("", |(p, _)| p);
                for instance in instances.iter().filter(|i| {
                    i.split_once('@').is_some_and(|(p, _)| p == prefix)
                        && unit_name::unit_type(i) == unit_name::unit_type(&target)
                }) {
                    self.relate_checked(name, Relation::Triggers, instance);
                }
            }
            self.relate_checked(name, Relation::Triggers, &target);
        }
        if unit_name::unit_type(name) == Some("service") {
            for socket in words("Service", "Sockets") {
                self.relate_checked(&socket, Relation::Triggers, name);
            }
        }
    }

    /// Adds a relation read from a unit file. Values that still hold a
    /// specifier (`%i` in a template) or that are not unit names are
    /// skipped: the first name no unit, and systemd would reject the latter.
    fn relate_checked(&mut self, from: &str, relation: Relation, to: &str) {
        if let (Some(a), Some(b)) = (self.checked_node(from), self.checked_node(to)) {
            self.push(a, relation, b);
        }
    }

    fn push(&mut self, a: NodeIndex, relation: Relation, b: NodeIndex) {
        if a != b {
            let index = |n: NodeIndex| u32::try_from(n.index()).unwrap_or(u32::MAX);
            self.pending.push((index(a), index(b), relation));
        }
    }

    /// Looks a name up, adding it only when it is a usable unit name. Known
    /// names were validated (or came from systemd) when first added, so the
    /// check runs once per name, not once per relation.
    fn checked_node(&mut self, name: &str) -> Option<NodeIndex> {
        if let Some(n) = self.lookup(name) {
            return Some(n);
        }
        if name.contains('%') || !unit_name::is_valid(name) {
            return None;
        }
        Some(self.node(name))
    }

    fn node(&mut self, name: &str) -> NodeIndex {
        let hash = hash(name);
        let graph = &self.graph;
        if let Some(&n) = self.index.find(hash, |&n| &*graph[n] == name) {
            return n;
        }
        let n = self.graph.add_node(name.into());
        let graph = &self.graph;
        self.index.insert_unique(hash, n, |&n| self::hash(&graph[n]));
        n
    }

    /// The node of a unit name.
    fn lookup(&self, name: &str) -> Option<NodeIndex> {
        self.index.find(hash(name), |&n| &*self.graph[n] == name).copied()
    }

    /// The number of units in the graph.
    pub fn unit_count(&self) -> usize {
        self.graph.node_count()
    }

    /// The number of distinct relations.
    pub fn relation_count(&self) -> usize {
        self.graph.edge_count()
    }

    /// The units of either generation or the live state, in no particular
    /// order.
    pub fn known_units(&self) -> impl Iterator<Item = &str> {
        self.graph.node_weights().take(self.known).map(|name| &**name)
    }

    /// Tells whether `unit` is a unit of either generation or the live
    /// state (not only named by a relation).
    pub fn is_known(&self, unit: &str) -> bool {
        self.lookup(unit).is_some_and(|n| n.index() < self.known)
    }

    /// Tells whether the graph knows the unit.
    pub fn contains(&self, unit: &str) -> bool {
        self.lookup(unit).is_some()
    }

    /// Tells whether a unit counts as running.
    pub fn is_running(&self, unit: &str) -> bool {
        self.lookup(unit).is_some_and(|n| self.running[n.index()])
    }

    /// Every relation that names `unit` on either end, in forward form,
    /// sorted.
    pub fn relations_of(&self, unit: &str) -> Vec<Edge> {
        let Some(n) = self.lookup(unit) else { return Vec::new() };
        let mut out: Vec<Edge> = self
            .graph
            .edges_directed(n, Outgoing)
            .chain(self.graph.edges_directed(n, Incoming))
            .map(|e| self.edge(e.id()))
            .collect();
        out.sort_by(|a, b| (&a.from, &a.relation, &a.to).cmp(&(&b.from, &b.relation, &b.to)));
        out
    }

    fn edge(&self, e: EdgeIndex) -> Edge {
        let (a, b) = self.graph.edge_endpoints(e).unwrap_or((NodeIndex::end(), NodeIndex::end()));
        Edge {
            from: self.graph.node_weight(a).map(|name| name.to_string()).unwrap_or_default(),
            relation: self.graph.edge_weight(e).map_or("", |r| r.key()).to_owned(),
            to: self.graph.node_weight(b).map(|name| name.to_string()).unwrap_or_default(),
        }
    }

    /// The jobs that a job on `unit` adds, each with the relation that
    /// carries it, in graph order.
    fn successors(&self, n: NodeIndex, job: Job, out: &mut Vec<(NodeIndex, Job, EdgeIndex)>) {
        out.clear();
        if matches!(job, Job::Stop | Job::Restart) {
            for e in self.graph.edges_directed(n, Incoming) {
                if e.weight().follows_stop() {
                    let dependent = e.source();
                    match job {
                        Job::Stop => out.push((dependent, Job::Stop, e.id())),
                        _ if self.running[dependent.index()] => out.push((dependent, Job::Restart, e.id())),
                        _ => {}
                    }
                }
            }
            for e in self.graph.edges_directed(n, Outgoing) {
                if *e.weight() == Relation::PropagatesStopTo {
                    out.push((e.target(), Job::Stop, e.id()));
                }
            }
        }
        if matches!(job, Job::Start | Job::Restart) {
            for e in self.graph.edges_directed(n, Outgoing) {
                if e.weight().pulls_in_start() {
                    out.push((e.target(), Job::Start, e.id()));
                } else if *e.weight() == Relation::Conflicts {
                    out.push((e.target(), Job::Stop, e.id()));
                }
            }
            for e in self.graph.edges_directed(n, Incoming) {
                if *e.weight() == Relation::Conflicts {
                    out.push((e.source(), Job::Stop, e.id()));
                }
            }
        }
    }

    /// The jobs that would add a job `job` on `n`: the successors relation
    /// turned around.
    fn predecessors(&self, n: NodeIndex, job: Job, out: &mut Vec<(NodeIndex, Job, EdgeIndex)>) {
        out.clear();
        match job {
            Job::Stop => {
                for e in self.graph.edges_directed(n, Outgoing) {
                    if e.weight().follows_stop() {
                        out.push((e.target(), Job::Stop, e.id()));
                    } else if *e.weight() == Relation::Conflicts {
                        out.push((e.target(), Job::Start, e.id()));
                        out.push((e.target(), Job::Restart, e.id()));
                    }
                }
                for e in self.graph.edges_directed(n, Incoming) {
                    match e.weight() {
                        Relation::PropagatesStopTo => {
                            out.push((e.source(), Job::Stop, e.id()));
                            out.push((e.source(), Job::Restart, e.id()));
                        }
                        Relation::Conflicts => {
                            out.push((e.source(), Job::Start, e.id()));
                            out.push((e.source(), Job::Restart, e.id()));
                        }
                        _ => {}
                    }
                }
            }
            Job::Restart => {
                if self.running[n.index()] {
                    for e in self.graph.edges_directed(n, Outgoing) {
                        if e.weight().follows_stop() {
                            out.push((e.target(), Job::Restart, e.id()));
                        }
                    }
                }
            }
            Job::Start => {
                for e in self.graph.edges_directed(n, Incoming) {
                    if e.weight().pulls_in_start() {
                        out.push((e.source(), Job::Start, e.id()));
                        out.push((e.source(), Job::Restart, e.id()));
                    }
                }
            }
        }
    }

    /// Computes, for every job on every unit, whether it would touch one of
    /// `protected`, by a breadth-first search backwards from the protected
    /// units. The cost is linear in the size of the graph, whatever the
    /// number of protected units or planned actions.
    ///
    /// A protected unit is touched when it is running and gets a stop or
    /// restart job. The units that trigger a protected unit (its socket,
    /// timer or path unit) count as part of it: stopping `sshd.socket`
    /// leaves running sessions alone but refuses every new connection,
    /// which is what protecting sshd is meant to prevent.
    pub fn reach(&self, protected: &[&str]) -> Reach {
        let n_states = self.graph.node_count() * 3;
        let mut reach = Reach { hops: vec![None; n_states], origins: Vec::new() };
        let mut queue = VecDeque::new();
        let mut names: Vec<&str> = protected.to_vec();
        names.sort_unstable();
        names.dedup();
        let nodes: Vec<NodeIndex> = names.iter().filter_map(|u| self.lookup(u)).collect();
        // Direct protections first, so that a unit that is protected in its
        // own right is reported as such rather than as a trigger.
        for &p in &nodes {
            if !self.running[p.index()] {
                continue;
            }
            for job in [Job::Stop, Job::Restart] {
                let origin = reach.origins.len();
                reach.origins.push(Origin { protected: p, effect: job, trigger: None });
                reach.seed(p, job, origin, &mut queue);
            }
        }
        // Running protected units first: a socket that activates a running
        // instance is better explained by that instance than by its
        // template.
        let mut by_running = nodes.clone();
        by_running.sort_by_key(|p| !self.running[p.index()]);
        for &p in &by_running {
            for e in self.graph.edges_directed(p, Incoming) {
                if *e.weight() == Relation::Triggers && self.running[e.source().index()] {
                    for job in [Job::Stop, Job::Restart] {
                        let origin = reach.origins.len();
                        reach.origins.push(Origin { protected: p, effect: Job::Stop, trigger: Some(e.id()) });
                        reach.seed(e.source(), job, origin, &mut queue);
                    }
                }
            }
        }
        let mut preds = Vec::new();
        while let Some(state) = queue.pop_front() {
            let (n, job) = split(state);
            let origin = reach.hops[state].map_or(0, |h| h.origin);
            self.predecessors(n, job, &mut preds);
            for &(m, mjob, e) in &preds {
                let s = join(m, mjob);
                if reach.hops[s].is_none() {
                    reach.hops[s] = Some(Hop { next: small(state), edge: Some(e), origin });
                    queue.push_back(s);
                }
            }
        }
        reach
    }

    /// Follows the jobs a job on `unit` adds, forwards, and returns every
    /// touched protected unit with the shortest chain to it. This is the
    /// slow, per-action form of [`UnitGraph::reach`], used by `--explain`
    /// (and by tests, as a cross-check).
    pub fn touches_from(&self, unit: &str, job: Job, protected: &HashSet<&str>) -> Vec<Touch> {
        let Some(start) = self.lookup(unit) else { return Vec::new() };
        let mut parent: HashMap<usize, (usize, EdgeIndex)> = HashMap::new();
        let mut visited = HashSet::new();
        let mut queue = VecDeque::new();
        let first = join(start, job);
        visited.insert(first);
        queue.push_back(first);
        let mut found: Vec<Touch> = Vec::new();
        let mut found_units = HashSet::new();
        let mut succ = Vec::new();
        while let Some(state) = queue.pop_front() {
            let (n, j) = split(state);
            let name = &*self.graph[n];
            let chain = || {
                let mut edges = Vec::new();
                let mut s = state;
                while let Some(&(prev, e)) = parent.get(&s) {
                    edges.push(self.edge(e));
                    s = prev;
                }
                edges
            };
            if matches!(j, Job::Stop | Job::Restart) && self.running[n.index()] {
                if protected.contains(name) && found_units.insert(n) {
                    found.push(Touch {
                        touches: name.to_owned(),
                        effect: j.action(),
                        chain: chain(),
                        cause: Some(job.action()),
                        omitted: 0,
                    });
                }
                for e in self.graph.edges_directed(n, Outgoing) {
                    if *e.weight() == Relation::Triggers
                        && protected.contains(&*self.graph[e.target()])
                        && found_units.insert(e.target())
                    {
                        let mut edges = vec![self.edge(e.id())];
                        edges.extend(chain());
                        found.push(Touch {
                            touches: self.graph[e.target()].to_string(),
                            effect: Action::Stop,
                            chain: edges,
                            cause: Some(job.action()),
                            omitted: 0,
                        });
                    }
                }
            }
            self.successors(n, j, &mut succ);
            for &(m, mjob, e) in &succ {
                let s = join(m, mjob);
                if visited.insert(s) {
                    parent.insert(s, (state, e));
                    queue.push_back(s);
                }
            }
        }
        found
    }

    /// The consequences of `jobs` (a plan's jobs, each a unit and the job
    /// it gets): every job systemd adds to carry them out, followed
    /// forwards from all of them at once, that acts on a unit: a stop or
    /// restart of a running unit, a start of a known unit that is not
    /// running, and a start of a running unit that one of them stops (it
    /// comes back). Each is attributed to the nearest of `jobs`, with the
    /// relations from the unit back to it (a long chain keeps its ends,
    /// as in [`Reach::touch`]), sorted by unit and effect. The units of
    /// `jobs` themselves are included when a job reaches them. Linear in
    /// the size of the graph, whatever the number of jobs.
    pub fn consequences(&self, jobs: &[(String, Job)]) -> Vec<Consequence> {
        // For each state reached: the state it was reached from, the
        // relation, and which of `jobs` it follows from.
        let mut parent: Vec<Option<(u32, Option<EdgeIndex>, u32)>> = vec![None; self.graph.node_count() * 3];
        let mut queue = VecDeque::new();
        for (i, (unit, job)) in jobs.iter().enumerate() {
            if let Some(s) = self.state_of(unit, *job)
                && parent[s].is_none()
            {
                parent[s] = Some((small(s), None, small(i)));
                queue.push_back(s);
            }
        }
        let mut reached = Vec::new();
        let mut succ = Vec::new();
        while let Some(state) = queue.pop_front() {
            let (n, job) = split(state);
            let Some((_, edge, origin)) = parent[state] else { continue };
            let running = self.running[n.index()];
            let acts = match job {
                Job::Stop | Job::Restart => running,
                Job::Start => !running && n.index() < self.known,
            };
            if edge.is_some() && acts {
                reached.push(state);
            }
            self.successors(n, job, &mut succ);
            for &(m, mjob, e) in &succ {
                let s = join(m, mjob);
                if parent[s].is_none() {
                    parent[s] = Some((small(state), Some(e), origin));
                    queue.push_back(s);
                }
            }
        }
        // A running unit that is stopped and gets a start job comes back.
        let stopped: Vec<usize> = reached.iter().copied().filter(|&s| split(s).1 == Job::Stop).collect();
        for s in stopped {
            let start = join(split(s).0, Job::Start);
            if parent[start].is_some_and(|(_, edge, _)| edge.is_some()) {
                reached.push(start);
            }
        }
        let mut out: Vec<Consequence> = reached
            .into_iter()
            .filter_map(|state| {
                let (n, job) = split(state);
                let (_, _, origin) = parent[state]?;
                let (by, cause) = jobs.get(origin as usize)?;
                let mut head = Vec::new();
                let mut tail = VecDeque::new();
                let mut omitted = 0;
                let mut s = state;
                // Bounded by the number of states, as in `Reach::touch`.
                for _ in 0..parent.len() {
                    let Some((prev, Some(e), _)) = parent[s] else { break };
                    if head.len() < CHAIN_ENDS {
                        head.push(e);
                    } else {
                        tail.push_back(e);
                        if tail.len() > CHAIN_ENDS {
                            tail.pop_front();
                            omitted += 1;
                        }
                    }
                    s = prev as usize;
                }
                let chain = head.into_iter().chain(tail).map(|e| self.edge(e)).collect();
                Some(Consequence {
                    unit: self.graph[n].to_string(),
                    effect: job.action(),
                    by: by.clone(),
                    cause: cause.action(),
                    chain,
                    omitted,
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.unit, a.effect).cmp(&(&b.unit, b.effect)));
        out
    }

    fn state_of(&self, unit: &str, job: Job) -> Option<usize> {
        self.lookup(unit).map(|n| join(n, job))
    }
}

fn one_or_default(mut values: Vec<String>, stem: &str) -> Vec<String> {
    match values.pop() {
        Some(unit) => vec![unit],
        None => vec![format!("{stem}.service")],
    }
}

fn join(n: NodeIndex, job: Job) -> usize {
    n.index() * 3 + job as usize
}

fn split(state: usize) -> (NodeIndex, Job) {
    (NodeIndex::new(state / 3), Job::ALL[state % 3])
}

/// A state or an index into a table of states, in 32 bits: a graph has
/// fewer than a billion units, and the tables of a walk hold one entry
/// per state.
fn small(index: usize) -> u32 {
    u32::try_from(index).unwrap_or(u32::MAX)
}

#[derive(Clone, Copy, Debug)]
struct Hop {
    /// The state this one adds a job to, one step closer to the protected
    /// unit; equal to the state itself for a seed.
    next: u32,
    edge: Option<EdgeIndex>,
    origin: u32,
}

// A walk's table holds one for each job on each unit.
const _: () = assert!(size_of::<Option<Hop>>() <= 16);

#[derive(Clone, Copy, Debug)]
struct Origin {
    protected: NodeIndex,
    effect: Job,
    trigger: Option<EdgeIndex>,
}

/// The result of [`UnitGraph::reach`]: for every job on every unit, the
/// nearest protected unit it would touch, if any.
#[derive(Debug)]
pub struct Reach {
    hops: Vec<Option<Hop>>,
    origins: Vec<Origin>,
}

impl Reach {
    fn seed(&mut self, n: NodeIndex, job: Job, origin: usize, queue: &mut VecDeque<usize>) {
        let s = join(n, job);
        if self.hops[s].is_none() {
            self.hops[s] = Some(Hop { next: small(s), edge: None, origin: small(origin) });
            queue.push_back(s);
        }
    }

    /// Tells whether any job on `unit` would touch a protected unit.
    pub fn reaches(&self, graph: &UnitGraph, unit: &str) -> bool {
        Job::ALL
            .iter()
            .any(|&job| graph.state_of(unit, job).is_some_and(|s| self.hops.get(s).is_some_and(Option::is_some)))
    }

    /// Tells whether a job on `unit` would touch a protected unit, and
    /// which, with the chain of relations. A chain longer than
    /// `2 * CHAIN_ENDS` relations keeps its ends and counts the rest in
    /// [`Touch::omitted`], so that the touches of every unit of a long
    /// chain take linear space.
    pub fn touch(&self, graph: &UnitGraph, unit: &str, job: Job) -> Option<Touch> {
        let mut state = graph.state_of(unit, job)?;
        let job = job.action();
        let first = self.hops.get(state).copied().flatten()?;
        let origin = self.origins.get(first.origin as usize)?;
        // Nearest this unit first; the tail holds the relations nearest the
        // protected unit.
        let mut head = Vec::new();
        let mut tail = VecDeque::new();
        let mut omitted = 0;
        // The walk follows `next` pointers towards a seed; the number of
        // steps is bounded by the number of states, which guards against a
        // corrupted table ever looping.
        for _ in 0..self.hops.len() {
            let Some(hop) = self.hops[state] else { break };
            let Some(e) = hop.edge else { break };
            if head.len() < CHAIN_ENDS {
                head.push(graph.edge(e));
            } else {
                tail.push_back(e);
                if tail.len() > CHAIN_ENDS {
                    tail.pop_front();
                    omitted += 1;
                }
            }
            state = hop.next as usize;
        }
        let mut edges = head;
        edges.extend(tail.into_iter().map(|e| graph.edge(e)));
        if let Some(trigger) = origin.trigger {
            edges.push(graph.edge(trigger));
        }
        edges.reverse();
        Some(Touch {
            touches: graph.graph[origin.protected].to_string(),
            effect: origin.effect.action(),
            chain: edges,
            cause: Some(job),
            omitted,
        })
    }
}
