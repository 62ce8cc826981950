//! The planner: old generation, new generation, live state and protection
//! protection request in, a [`LaunchdPlan`] out. Pure: no IO, no clock, no environment.
//!
//! The decisions follow nix-darwin's launchd activation, with three
//! deliberate refinements that a careful operator would make by hand:
//! a plist whose bytes changed but whose content did not is replaced
//! without reloading the job; a job of the generation that is not loaded is
//! bootstrapped (nix-darwin only looks at files, never at launchd); and
//! protected jobs are deferred or refused.

use std::collections::{BTreeMap, BTreeSet};

use plan_model::{
    Action, Deferral, Diagnostic, FORMAT_VERSION, KeyChange, Mode, Plan, ProtectedUnit, Protection, Reason, Refusal,
    Rule, Severity, UnitPlan,
};

use crate::job::{GenerationJobs, Installed, Job, RemoteLogin, Scope};
use crate::live::{LaunchdLive, LiveJob};
use crate::ops::Domain;
use crate::policy::Request;

/// The label nix-darwin gives the Nix daemon it manages.
pub const NIX_DAEMON_LABEL: &str = "org.nixos.nix-daemon";

/// The label of macOS's own sshd (Remote Login).
pub const SSHD_LABEL: &str = "com.openssh.sshd";

/// The plist of macOS's own sshd, part of the system.
pub const SSHD_PLIST: &str = "/System/Library/LaunchDaemons/ssh.plist";

/// A plan for launchd jobs, with what the operations need to know about
/// each job beyond the shared [`Plan`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchdPlan {
    /// The shared plan value: one entry per job the switch acts on or
    /// changes, keyed by label.
    pub plan: Plan,
    /// Where each unit of `plan` lives, by unit name.
    pub jobs: BTreeMap<String, JobTarget>,
}

/// Where one job lives on the machine and in the new generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobTarget {
    /// The job's label in the new generation (the old one for a removed
    /// job).
    pub label: String,
    /// The label the job is loaded under now: the old generation's label,
    /// which a changed plist may have renamed.
    pub loaded_label: Option<String>,
    /// Which of nix-darwin's three plist sets the job belongs to.
    pub scope: Scope,
    /// The launchd domain the job is loaded into; `None` for agents when the
    /// live state names no primary user.
    pub domain: Option<Domain>,
    /// The installed plist; `None` for user agents without a known primary
    /// user.
    pub installed: Option<String>,
    /// The new generation's plist, when the job is part of it.
    pub source: Option<String>,
    /// The user that owns the installed plist, for user agents.
    pub owner: Option<String>,
}

/// Whether a job is loaded, as far as the live state tells.
#[derive(Clone, Copy, Debug)]
enum Loaded<'a> {
    /// The domain was not captured.
    Unknown,
    /// Loaded, with its live details.
    Yes(&'a LiveJob),
    /// Not loaded.
    No,
}

impl Loaded<'_> {
    /// Tells whether the job must be treated as loaded; an unknown state
    /// counts as loaded because that is what nix-darwin assumes.
    fn assume_loaded(self) -> bool {
        !matches!(self, Loaded::No)
    }

    fn detail(self) -> Option<String> {
        match self {
            Loaded::Unknown => None,
            Loaded::Yes(job) => Some(job.describe()),
            Loaded::No => Some("not loaded".to_owned()),
        }
    }
}

/// What the planner knows about the machine: launchd's live state and,
/// when read, the plists installed now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Host {
    /// Loaded jobs and the primary user.
    pub live: LaunchdLive,
    /// The installed copies of the generations' plists. When present, a new
    /// plist is compared with its installed copy, as nix-darwin does, so a
    /// change deferred by an earlier switch (or a hand edit) is seen even
    /// when the generations agree. When absent, the old generation stands in
    /// for what is installed.
    pub installed: Option<Installed>,
}

/// Plans the launchd part of a switch from `old` to `new`.
pub fn plan(old: &GenerationJobs, new: &GenerationJobs, host: &Host, request: &Request) -> LaunchdPlan {
    let live = &host.live;
    let mut diagnostics = Vec::new();
    let names = unit_names(old, new, &mut diagnostics);

    let mut keys: BTreeSet<(Scope, &str)> = BTreeSet::new();
    keys.extend(old.jobs.iter().map(|j| (j.scope, j.file_name.as_str())));
    keys.extend(new.jobs.iter().map(|j| (j.scope, j.file_name.as_str())));

    let mut units: BTreeMap<String, UnitPlan> = BTreeMap::new();
    let mut jobs: BTreeMap<String, JobTarget> = BTreeMap::new();
    let mut unreachable_agents = Vec::new();

    for (scope, file_name) in keys {
        let old_job = old.job(scope, file_name);
        let new_job = new.job(scope, file_name);
        let Some(job) = new_job.or(old_job) else {
            continue;
        };
        let unit = names.get(&(scope, file_name.to_owned())).cloned().unwrap_or_else(|| job.label_or_stem().to_owned());
        let label = job.label_or_stem().to_owned();
        let loaded_label = old_job.map(|j| j.label_or_stem().to_owned());
        let target = job_target(scope, file_name, &label, loaded_label.clone(), new, new_job.is_some(), live);
        let loaded = loaded_state(live, scope, loaded_label.as_deref().unwrap_or(&label));

        // nix-darwin compares a new plist with the installed copy, and
        // decides removals from the old generation's list.
        let base = match (&host.installed, new_job) {
            (Some(installed), Some(_)) => {
                let copy = installed.job(scope, file_name);
                if old_job.is_some() && copy.map(|c| &c.bytes) != old_job.map(|o| &o.bytes) {
                    diagnostics.push(Diagnostic {
                        severity: Severity::Info,
                        message: "the installed plist differs from the old generation's (a deferred change or a manual edit); the new plist is compared with the installed copy".to_owned(),
                        unit: Some(unit.clone()),
                        path: target.installed.clone(),
                        line: None,
                    });
                }
                copy
            }
            _ => old_job,
        };

        let Some(mut entry) = decide(base, new_job, loaded, &unit) else {
            continue;
        };
        if target.domain.is_none() && !entry.actions.is_empty() {
            entry.actions.clear();
            unreachable_agents.push(unit.clone());
        }
        jobs.insert(unit.clone(), target);
        units.insert(unit, entry);
    }

    if !unreachable_agents.is_empty() {
        diagnostics.push(Diagnostic {
            severity: Severity::Warning,
            message: format!(
                "the live state names no primary user, so these launch agents are neither loaded nor unloaded: {}",
                unreachable_agents.join(", ")
            ),
            unit: None,
            path: None,
            line: None,
        });
    }

    nix_conf_restart(old, new, live, &mut units, &mut jobs);
    remote_login(new, live, &mut units, &mut jobs);

    let mut plan = Plan {
        format_version: FORMAT_VERSION,
        old: plan_model::Generation { path: old.path.clone(), ..Default::default() },
        new: plan_model::Generation { path: new.path.clone(), ..Default::default() },
        units: units.into_values().collect(),
        steps: Vec::new(),
        consequences: Vec::new(),
        protection: Protection { mode: request.mode, ..Protection::default() },
        diagnostics,
        packages: None,
        reboot: Vec::new(),
        kernel_modules: Vec::new(),
    };
    apply_protection(&mut plan, &jobs, old, new, live, request);
    LaunchdPlan { plan, jobs }
}

/// Decides what happens to one job, given the plist it is compared with
/// (`old`: the installed copy or the old generation's) and the new one.
/// Returns `None` when the switch neither changes nor touches it.
fn decide(old: Option<&Job>, new: Option<&Job>, loaded: Loaded<'_>, unit: &str) -> Option<UnitPlan> {
    let mut entry = UnitPlan {
        unit: unit.to_owned(),
        actions: Vec::new(),
        reasons: Vec::new(),
        changes: Vec::new(),
        deferral: None,
    };
    let reason = |rule, detail: Option<String>| Reason { rule, detail };
    match (old, new) {
        (None, Some(new)) => {
            entry.reasons.push(reason(Rule::PlistAdded, Some(start_detail(new).to_owned())));
            if let Loaded::Yes(live) = loaded {
                // A job of that label is already loaded (installed by hand or
                // left behind): bootstrapping over it would fail, so it is
                // booted out first, which makes this a restart.
                entry.reasons.push(reason(
                    Rule::PlistChanged,
                    Some(format!("already loaded, {}: booted out first", live.describe())),
                ));
                entry.actions.push(Action::Restart);
            } else {
                entry.actions.push(Action::Start);
            }
        }
        (Some(_), None) => {
            entry.reasons.push(reason(Rule::PlistRemoved, loaded.detail()));
            if loaded.assume_loaded() {
                entry.actions.push(Action::Stop);
            }
        }
        (Some(old), Some(new)) => {
            if old.bytes == new.bytes {
                if !matches!(loaded, Loaded::No) {
                    return None;
                }
            } else if old.keys == new.keys {
                entry.reasons.push(reason(Rule::PlistReformatted, None));
            } else {
                entry.changes = key_changes(old, new);
                entry.reasons.push(reason(Rule::PlistChanged, loaded.detail()));
            }
            if matches!(loaded, Loaded::No) {
                entry.reasons.push(reason(Rule::JobNotLoaded, Some(start_detail(new).to_owned())));
                entry.actions.push(Action::Start);
            } else if entry.reasons.iter().any(|r| r.rule == Rule::PlistChanged) {
                entry.actions.push(Action::Restart);
            }
        }
        (None, None) => return None,
    }
    Some(entry)
}

/// Says whether bootstrapping the job starts its process.
fn start_detail(job: &Job) -> &'static str {
    if job.starts_at_load { "starts at load (RunAtLoad or KeepAlive)" } else { "loaded; starts on demand" }
}

fn key_changes(old: &Job, new: &Job) -> Vec<KeyChange> {
    let keys: BTreeSet<&String> = old.keys.keys().chain(new.keys.keys()).collect();
    keys.into_iter()
        .filter_map(|key| {
            let (o, n) = (old.keys.get(key), new.keys.get(key));
            (o != n).then(|| KeyChange {
                section: "plist".to_owned(),
                key: key.clone(),
                old: o.cloned(),
                new: n.cloned(),
            })
        })
        .collect()
}

/// Names every job by its label; a label found in two scopes is qualified
/// with the scope (`user-agent:org.nixos.x`) so unit names stay unique.
fn unit_names(
    old: &GenerationJobs,
    new: &GenerationJobs,
    diagnostics: &mut Vec<Diagnostic>,
) -> BTreeMap<(Scope, String), String> {
    let mut scopes_by_label: BTreeMap<String, BTreeSet<Scope>> = BTreeMap::new();
    for job in old.jobs.iter().chain(&new.jobs) {
        scopes_by_label.entry(job.label_or_stem().to_owned()).or_default().insert(job.scope);
    }
    // Naming problems are reported once per plist: from the new generation,
    // or from the old one for a plist the new generation dropped.
    let dropped = old.jobs.iter().filter(|j| new.job(j.scope, &j.file_name).is_none()).map(|j| (old, j));
    for (generation, job) in new.jobs.iter().map(|j| (new, j)).chain(dropped) {
        let path = format!("{}/{}/{}", generation.path, job.scope.generation_dir(), job.file_name);
        let stem = job.file_name.strip_suffix(".plist").unwrap_or(&job.file_name);
        match &job.label {
            None => diagnostics.push(Diagnostic {
                severity: Severity::Warning,
                message: format!("the plist has no Label key; the job is named {stem:?} after its file"),
                unit: Some(stem.to_owned()),
                path: Some(path),
                line: None,
            }),
            Some(label) if label != stem => diagnostics.push(Diagnostic {
                severity: Severity::Warning,
                message: format!(
                    "the label {label:?} differs from the file name; nix-darwin always names a plist after its label"
                ),
                unit: Some(label.clone()),
                path: Some(path),
                line: None,
            }),
            Some(_) => {}
        }
    }
    let mut names = BTreeMap::new();
    for job in old.jobs.iter().chain(&new.jobs) {
        let label = job.label_or_stem();
        let shared = scopes_by_label.get(label).is_some_and(|s| s.len() > 1);
        let name = if shared { format!("{}:{label}", job.scope.as_str()) } else { label.to_owned() };
        names.insert((job.scope, job.file_name.clone()), name);
    }
    for (label, scopes) in &scopes_by_label {
        if scopes.len() > 1 {
            let list: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
            diagnostics.push(Diagnostic {
                severity: Severity::Warning,
                message: format!(
                    "the label is used by more than one kind of job ({}); units are named <kind>:<label>",
                    list.join(", ")
                ),
                unit: Some(label.clone()),
                path: None,
                line: None,
            });
        }
    }
    names
}

fn job_target(
    scope: Scope,
    file_name: &str,
    label: &str,
    loaded_label: Option<String>,
    new: &GenerationJobs,
    in_new: bool,
    live: &LaunchdLive,
) -> JobTarget {
    let user = live.primary_user.as_ref();
    let (domain, installed, owner) = match scope {
        Scope::Daemon => (Some(Domain::System), Some(format!("/Library/LaunchDaemons/{file_name}")), None),
        Scope::Agent => (user.map(|u| Domain::Gui(u.uid)), Some(format!("/Library/LaunchAgents/{file_name}")), None),
        Scope::UserAgent => (
            user.map(|u| Domain::Gui(u.uid)),
            user.map(|u| format!("{}/Library/LaunchAgents/{file_name}", u.home.trim_end_matches('/'))),
            user.map(|u| u.name.clone()),
        ),
    };
    JobTarget {
        label: label.to_owned(),
        loaded_label,
        scope,
        domain,
        installed,
        source: in_new.then(|| format!("{}/{}/{file_name}", new.path, scope.generation_dir())),
        owner,
    }
}

fn live_domain(live: &LaunchdLive, scope: Scope) -> Option<&BTreeMap<String, LiveJob>> {
    match scope {
        Scope::Daemon => live.system.as_ref(),
        Scope::Agent | Scope::UserAgent => live.gui.as_ref(),
    }
}

fn loaded_state<'a>(live: &'a LaunchdLive, scope: Scope, label: &str) -> Loaded<'a> {
    match live_domain(live, scope) {
        None => Loaded::Unknown,
        Some(jobs) => jobs.get(label).map_or(Loaded::No, Loaded::Yes),
    }
}

/// Models nix-darwin's nix-daemon step: when `nix.conf` or `machines`
/// changed, activation sends the daemon SIGHUP, which it does not handle as a
/// reload; the daemon exits and launchd starts it again. That is a restart,
/// planned here as `kickstart -k` unless the plist change already restarts
/// the daemon.
fn nix_conf_restart(
    old: &GenerationJobs,
    new: &GenerationJobs,
    live: &LaunchdLive,
    units: &mut BTreeMap<String, UnitPlan>,
    jobs: &mut BTreeMap<String, JobTarget>,
) {
    let Some(daemon) = new.jobs.iter().find(|j| j.scope == Scope::Daemon && j.label_or_stem() == NIX_DAEMON_LABEL)
    else {
        return;
    };
    let mut changed = Vec::new();
    if old.nix_conf != new.nix_conf {
        changed.push("etc/nix/nix.conf");
    }
    if old.nix_machines != new.nix_machines {
        changed.push("etc/nix/machines");
    }
    if changed.is_empty() {
        return;
    }
    let detail = format!("{} changed", changed.join(" and "));
    if let Some(entry) = units.get_mut(NIX_DAEMON_LABEL)
        && entry.actions.iter().any(|a| matches!(a, Action::Restart | Action::Start))
    {
        entry
            .reasons
            .push(Reason { rule: Rule::NixConfChanged, detail: Some(format!("{detail}; covered by the reload")) });
        return;
    }
    let loaded = loaded_state(live, Scope::Daemon, NIX_DAEMON_LABEL);
    if !loaded.assume_loaded() {
        return;
    }
    let detail = match loaded.detail() {
        Some(state) => format!("{detail}; {state}"),
        None => detail,
    };
    let entry = units.entry(NIX_DAEMON_LABEL.to_owned()).or_insert_with(|| UnitPlan {
        unit: NIX_DAEMON_LABEL.to_owned(),
        actions: Vec::new(),
        reasons: Vec::new(),
        changes: Vec::new(),
        deferral: None,
    });
    entry.reasons.push(Reason { rule: Rule::NixConfChanged, detail: Some(detail) });
    entry.actions.push(Action::Restart);
    jobs.entry(NIX_DAEMON_LABEL.to_owned()).or_insert_with(|| {
        job_target(
            Scope::Daemon,
            &daemon.file_name,
            NIX_DAEMON_LABEL,
            Some(NIX_DAEMON_LABEL.to_owned()),
            new,
            true,
            live,
        )
    });
}

/// Models what nix-darwin's `services.openssh.enable` appends to the
/// launchd step: Remote Login (macOS's own sshd) turned on when it is off,
/// or off when it is on. nix-darwin asks `systemsetup -getremotelogin`;
/// the plan reads whether `com.openssh.sshd` is loaded, which is what
/// Remote Login is. Its plist belongs to macOS: it is never installed or
/// deleted.
fn remote_login(
    new: &GenerationJobs,
    live: &LaunchdLive,
    units: &mut BTreeMap<String, UnitPlan>,
    jobs: &mut BTreeMap<String, JobTarget>,
) {
    let Some(wanted) = new.remote_login else {
        return;
    };
    let loaded = loaded_state(live, Scope::Daemon, SSHD_LABEL);
    let (action, rule) = match (wanted, loaded) {
        (RemoteLogin::On, Loaded::No) => (Action::Start, Rule::RemoteLoginOn),
        (RemoteLogin::Off, Loaded::Yes(_) | Loaded::Unknown) => (Action::Stop, Rule::RemoteLoginOff),
        (RemoteLogin::On, _) | (RemoteLogin::Off, Loaded::No) => return,
    };
    if units.contains_key(SSHD_LABEL) {
        // A generation that ships a plist of that label: the plist's
        // entry stands, as the two would fight over one job.
        return;
    }
    units.insert(
        SSHD_LABEL.to_owned(),
        UnitPlan {
            unit: SSHD_LABEL.to_owned(),
            actions: vec![action],
            reasons: vec![Reason { rule, detail: loaded.detail() }],
            changes: Vec::new(),
            deferral: None,
        },
    );
    jobs.insert(
        SSHD_LABEL.to_owned(),
        JobTarget {
            label: SSHD_LABEL.to_owned(),
            loaded_label: Some(SSHD_LABEL.to_owned()),
            scope: Scope::Daemon,
            domain: Some(Domain::System),
            installed: Some(SSHD_PLIST.to_owned()),
            source: None,
            owner: None,
        },
    );
}

/// Records which jobs each selector protects, then defers or refuses every
/// stop and restart of a protected job.
///
/// launchd has no way to replace a job's definition without booting it out,
/// so a protected job whose plist changed keeps the old plist installed and
/// loaded; the new plist takes effect at the next switch that does not
/// protect it.
fn apply_protection(
    plan: &mut Plan,
    jobs: &BTreeMap<String, JobTarget>,
    old: &GenerationJobs,
    new: &GenerationJobs,
    live: &LaunchdLive,
    request: &Request,
) {
    let mut known: BTreeSet<String> = plan.units.iter().map(|u| u.unit.clone()).collect();
    known.extend(old.jobs.iter().chain(&new.jobs).map(|j| j.label_or_stem().to_owned()));
    for domain in [live.system.as_ref(), live.gui.as_ref()].into_iter().flatten() {
        known.extend(domain.keys().cloned());
    }
    for selector in &request.selectors {
        plan.protection.protected.push(ProtectedUnit {
            selector: selector.text().to_owned(),
            source: selector.source().clone(),
            units: known.iter().filter(|l| selector.matches(l)).cloned().collect(),
            allow: Vec::new(),
        });
    }

    for entry in &mut plan.units {
        let Some(target) = jobs.get(&entry.unit) else {
            continue;
        };
        let labels = [Some(target.label.as_str()), target.loaded_label.as_deref()];
        let protected = request.selectors.iter().any(|s| labels.iter().flatten().any(|l| s.matches(l)));
        let effect = if entry.actions.contains(&Action::Restart) {
            Action::Restart
        } else if entry.actions.contains(&Action::Stop) {
            Action::Stop
        } else {
            continue;
        };
        if !protected {
            continue;
        }
        match request.mode {
            Mode::Defer => {
                let plist_involved = entry
                    .reasons
                    .iter()
                    .any(|r| matches!(r.rule, Rule::PlistChanged | Rule::PlistAdded | Rule::PlistRemoved));
                if plist_involved {
                    let installed = target.installed.as_deref().unwrap_or("the installed plist");
                    let detail = if effect == Action::Stop {
                        format!("{installed} stays installed and the job stays loaded")
                    } else {
                        format!(
                            "the installed plist at {installed} stays as it is; the job keeps running its current definition"
                        )
                    };
                    entry.reasons.push(Reason { rule: Rule::OldPlistKept, detail: Some(detail) });
                }
                if effect == Action::Stop && entry.reasons.iter().any(|r| r.rule == Rule::PlistRemoved) {
                    // Removals are found from the old generation's list; once
                    // this switch makes the new generation current, no later
                    // switch lists this job again, so the operator must be
                    // told to retire it by hand.
                    let installed = target.installed.as_deref().unwrap_or("its plist");
                    plan.diagnostics.push(Diagnostic {
                        severity: Severity::Warning,
                        message: format!(
                            "{} left the generation but stays loaded; later switches will not list it, so boot it out and delete {installed} once it may stop",
                            target.label
                        ),
                        unit: Some(entry.unit.clone()),
                        path: target.installed.clone(),
                        line: None,
                    });
                }
                entry.deferral = Some(Deferral {
                    actions: std::mem::take(&mut entry.actions),
                    touch: plan_model::Touch {
                        touches: target.label.clone(),
                        effect,
                        chain: Vec::new(),
                        cause: None,
                        omitted: 0,
                    },
                });
            }
            Mode::Refuse => {
                plan.protection.refused = true;
                plan.protection.refusals.push(Refusal {
                    unit: entry.unit.clone(),
                    actions: entry.actions.clone(),
                    touch: plan_model::Touch {
                        touches: target.label.clone(),
                        effect,
                        chain: Vec::new(),
                        cause: None,
                        omitted: 0,
                    },
                });
                let verb = if effect == Action::Stop { "stop" } else { "restart" };
                plan.diagnostics.push(Diagnostic {
                    severity: Severity::Warning,
                    message: format!("the switch would {verb} the protected launchd job {}; refused", target.label),
                    unit: Some(entry.unit.clone()),
                    path: None,
                    line: None,
                });
            }
        }
    }
}
