//! The `settle` subcommand: carry out the actions earlier switches
//! deferred, as far as the protections in force now allow.
//!
//! A deferral is never replayed as it was recorded. Each round, under the
//! run directory's lock (as `switch` holds it):
//!
//! 1. An earlier apply that was interrupted is finished first, as `switch`
//!    does (first round only).
//! 2. The record is read (`/run/safe-switch/pending.json`; an invalid one
//!    stops here, nothing changed), and the deferrals whose unit was
//!    restarted or stopped since (another `InvocationID`) are dropped.
//! 3. The units still pending are planned again, from the generation their
//!    running instance was started from to the running generation, with
//!    the protections in force now (`--protect`, the policy files, the
//!    caller), and the plan is cut down to those units: a unit that went
//!    away gets its stop, one whose file changed again gets what the
//!    change asks for, one that needs nothing any more is dropped, one
//!    still touching a protected unit stays deferred.
//! 4. With `--when-idle`, a unit whose control group holds more than its
//!    main process (or whose `--idle-command` fails) is left for a later
//!    round; the others are checked once more right before their jobs are
//!    queued.
//! 5. The rest is carried out by the executor (progress file, protected
//!    units checked afterwards), and the plan is merged into the record
//!    (on a system-manager host, its state file then gives the units
//!    settled the running generation's entries).
//!
//! Between rounds the lock is not held: a settle waiting for a CI runner
//! to finish its job never blocks a switch. It waits for the lock instead
//! (with `--when-idle` or `--wait`), and re-reads the record once it has
//! it, so a deferral another run settled meanwhile is not carried out
//! twice. `--wait` bounds the wait; then exit 3, nothing done to the units
//! still busy.
//!
//! Exit codes: 0 when nothing chosen is pending any more, 3 when something
//! stays pending (protected, busy, or the plan refused), 4 when a unit
//! failed or a protected unit was disturbed, 1 on error.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use plan_model::policy::Selector;
use plan_model::{Diagnostic, Pending, Plan, Severity};
use systemd_live::{Idleness, JobResult, ProcessHost, RunDir, ServiceManager, StderrProgress};
use systemd_plan::protect::{self, UnitNames};

use crate::args::{self, ExecutionArgs};
use crate::cmd::switch;
use crate::exit::Outcome;
use crate::host;
use crate::isolate::LockHeld;

/// How often busy units are looked at again.
const POLL: Duration = Duration::from_millis(250);
/// How often `--idle-command` runs for one unit, at most (but always
/// right before the unit's jobs are queued).
const COMMAND_POLL: Duration = Duration::from_secs(2);
/// How long `--idle-command` may run before it is killed and the unit
/// counts as busy.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `settle`.
pub(crate) fn run(args: args::SettleArgs) -> anyhow::Result<Outcome> {
    if args.protect.explain.is_some() {
        return Err(crate::exit::usage(
            "settle does not take --explain; `safe-switch pending` lists what is pending and why",
        ));
    }
    if crate::darwin::is_darwin_host() {
        return crate::darwin::settle();
    }
    let selectors = args
        .units
        .iter()
        .map(|u| u.trim())
        .filter(|u| !u.is_empty())
        .map(|u| Selector::parse(u).map_err(|e| crate::exit::usage(format!("{u:?}: {}", e.reason))))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if !rustix::process::geteuid().is_root() {
        bail!("settle must run as root (it restarts units); nothing was changed");
    }
    let run = RunDir::system();
    let waits = args.when_idle || args.wait.is_some();
    if !args.no_isolate {
        // A settle that may wait for the lock does not give up on it here.
        return crate::isolate::run_isolated(&run, None, !waits);
    }
    let mut bus = host::connect()?;
    let mut settler = Settler {
        deadline: args.wait.map(|w| Instant::now() + w),
        args: &args,
        selectors,
        run: &run,
        resumed: false,
        printed: false,
        said: BTreeSet::new(),
        failed: false,
        idle: IdleCheck { command: args.idle_command.clone(), last: BTreeMap::new() },
    };
    settler.settle(&mut bus)
}

/// The end of one round.
enum Round {
    /// Nothing more to wait for.
    Done(Outcome),
    /// These units were busy; the rest is done.
    Busy(Vec<String>),
    /// Another safe-switch holds the lock.
    Locked(PathBuf),
}

/// A settle under way.
struct Settler<'a> {
    args: &'a args::SettleArgs,
    selectors: Vec<Selector>,
    run: &'a RunDir,
    deadline: Option<Instant>,
    /// Whether an interrupted apply was looked for.
    resumed: bool,
    /// Whether the plan was printed.
    printed: bool,
    /// What was said on standard error already (once each).
    said: BTreeSet<String>,
    /// Whether a unit failed or a protected unit was disturbed.
    failed: bool,
    idle: IdleCheck,
}

impl Settler<'_> {
    /// Runs rounds until nothing chosen is left to wait for.
    fn settle(&mut self, mgr: &mut dyn ServiceManager) -> anyhow::Result<Outcome> {
        let mut waiting: Vec<String> = Vec::new();
        loop {
            // Busy units are watched without the lock; a round (which
            // takes it and plans again) starts once one of them is idle.
            let any_idle = waiting.is_empty() || self.any_idle(mgr, &waiting)?;
            if any_idle {
                match self.round(mgr)? {
                    Round::Done(outcome) => return Ok(outcome),
                    Round::Busy(units) => waiting = units,
                    Round::Locked(path) => {
                        waiting.clear();
                        if self.expired() {
                            return Err(LockHeld { path, isolated: self.args.isolated }.into());
                        }
                    }
                }
            }
            if !waiting.is_empty() && self.expired() {
                return Ok(self.give_up(&waiting));
            }
            std::thread::sleep(if self.idle.command.is_some() { POLL.max(COMMAND_POLL / 4) } else { POLL });
        }
    }

    fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Says something once.
    fn once(&mut self, line: String) {
        if self.said.insert(line.clone()) {
            say!("{line}");
        }
    }

    /// Whether one of `units` is idle now.
    fn any_idle(&mut self, mgr: &mut dyn ServiceManager, units: &[String]) -> anyhow::Result<bool> {
        for unit in units {
            if self.idle.check(mgr, unit, false)?.is_none() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The end of the wait: the units still busy stay pending.
    fn give_up(&mut self, units: &[String]) -> Outcome {
        let waited = self.args.wait.map(|w| format!(" after {w:?}")).unwrap_or_default();
        say!("still busy{waited}: {}; nothing was done to them, they stay pending", units.join(", "));
        if self.failed { Outcome::UnitsFailed } else { Outcome::Blocked }
    }

    /// The deferrals of `record` chosen on the command line (all of them
    /// when no unit is named).
    fn chosen(&self, record: &Pending) -> BTreeSet<String> {
        let names: Vec<&str> = record.deferrals.iter().map(|d| d.unit.as_str()).collect();
        if self.selectors.is_empty() {
            return names.iter().map(|n| (*n).to_owned()).collect();
        }
        let universe: UnitNames<'_> = names.iter().copied().collect();
        self.selectors.iter().flat_map(|s| protect::matching(s, &universe)).collect()
    }

    /// One round under the lock: re-plan, carry out what is allowed and
    /// idle, record the rest.
    fn round(&mut self, mgr: &mut dyn ServiceManager) -> anyhow::Result<Round> {
        let _lock = match self.run.lock() {
            Ok(guard) => guard,
            Err(systemd_live::Error::Locked { path }) if self.args.when_idle || self.args.wait.is_some() => {
                self.once(format!("waiting for another safe-switch to finish (lock {} is held)", path.display()));
                return Ok(Round::Locked(path));
            }
            Err(systemd_live::Error::Locked { path }) => {
                return Err(LockHeld { path, isolated: self.args.isolated }.into());
            }
            Err(e) => return Err(e.into()),
        };
        let options = switch::apply_options(&self.execution());
        if !self.resumed {
            self.resumed = true;
            if let Some(outcome) = switch::finish_interrupted(mgr, self.run, &options, &self.args.protect)? {
                return Ok(Round::Done(outcome));
            }
        }
        let (mut record, gone) = crate::pending::current(self.run, mgr)?;
        for e in gone {
            self.once(format!("{}: no longer pending: restarted or stopped since", e.deferral.unit));
        }
        let chosen = self.chosen(&record);
        if chosen.is_empty() {
            self.run.save_pending(&record)?;
            let what =
                if self.args.units.is_empty() { String::new() } else { format!(" for {}", self.args.units.join(", ")) };
            self.once(format!("nothing is pending{what}"));
            return Ok(Round::Done(if self.failed { Outcome::UnitsFailed } else { Outcome::Ok }));
        }

        // Plan again, from where each running instance came from.
        let current = std::fs::canonicalize(host::running_generation())
            .context("cannot resolve the running generation; nothing was changed")?;
        let mut groups: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for d in record.deferrals.iter().filter(|d| chosen.contains(&d.unit)) {
            groups.entry(d.from.clone()).or_default().insert(d.unit.clone());
        }
        let mut plans = Vec::new();
        let mut diffs = Vec::new();
        for (from, units) in &groups {
            // A unit whose file the running generation no longer has is
            // listed without one: it runs what `from` had, as recorded.
            let orphans = |live: &mut plan_model::LiveState| {
                for unit in units {
                    if let Some(u) = live.units.get_mut(unit)
                        && u.is_active_before()
                        && u.fragment_path.is_empty()
                    {
                        u.fragment_path = format!("{}/{unit}", host::UNIT_DIR);
                    }
                }
            };
            let lp = host::live_plan_with(Path::new(from), &current, &self.args.protect, mgr, &orphans).with_context(|| {
                format!(
                    "cannot plan the deferrals of {} again from {from}, the generation their running instance was started from; nothing was changed",
                    units.iter().cloned().collect::<Vec<_>>().join(", ")
                )
            })?;
            diffs.extend(lp.diffs.into_iter().filter(|d| units.contains(&d.unit)));
            plans.push(restrict(lp.plan, units));
        }

        // A unit the new plan gives nothing to do needs nothing any more.
        for plan in &plans {
            for unit in &groups[&plan.old.path] {
                let entry = plan.unit(unit);
                if entry.is_none_or(|e| e.actions.is_empty() && e.deferral.is_none()) {
                    self.once(format!(
                        "{unit}: nothing left to do: planned again from {} to {}, its running instance needs no action",
                        plan.old.path, plan.new.path
                    ));
                    record.deferrals.retain(|d| d.unit != *unit);
                }
            }
        }
        let combined = combine(&plans, &current);
        if !self.printed {
            self.printed = true;
            crate::report::write_plan(&combined, &diffs, &[], &self.args.output)?;
        }
        if combined.protection.refused {
            self.run.save_pending(&record)?;
            say!("refused: settling would touch a protected unit (see the plan above); nothing was changed");
            return Ok(Round::Done(Outcome::Blocked));
        }

        let mut busy = Vec::new();
        for mut plan in plans {
            let acting: Vec<String> =
                plan.units.iter().filter(|u| !u.actions.is_empty()).map(|u| u.unit.clone()).collect();
            if self.args.when_idle {
                for unit in &acting {
                    if let Some(why) = self.idle.check(mgr, unit, false)? {
                        self.once(format!("waiting for {unit} to be idle: {why}"));
                        busy.push(unit.clone());
                    }
                }
                // Once more, right before the jobs are queued: a job that
                // started in between postpones the unit.
                let idle: Vec<String> = acting.iter().filter(|u| !busy.contains(u)).cloned().collect();
                for unit in &idle {
                    if let Some(why) = self.idle.check(mgr, unit, true)? {
                        say!("{unit} is busy again ({why}): postponed");
                        busy.push(unit.clone());
                    }
                }
                plan.units.retain(|u| !busy.contains(&u.unit));
            }
            let mut done = plan.clone();
            if plan.units.iter().any(|u| !u.actions.is_empty()) {
                let names: Vec<&str> =
                    plan.units.iter().filter(|u| !u.actions.is_empty()).map(|u| u.unit.as_str()).collect();
                say!("settling {}", names.join(", "));
                let report =
                    systemd_live::apply(&plan, mgr, &mut ProcessHost, self.run, &options, &mut StderrProgress)?;
                say_text!("{}", switch::report_text(&report));
                // A job systemd refused did nothing: its unit stays pending.
                let untouched: BTreeSet<&str> = report
                    .jobs()
                    .filter(|j| matches!(j.result, JobResult::NotQueued { .. }))
                    .map(|j| j.unit.as_str())
                    .collect();
                done.units.retain(|u| !untouched.contains(u.unit.as_str()));
                if report.aborted.is_some() {
                    crate::pending::record_into(self.run, &mut record, &done, mgr);
                    bail!("settling stopped early (see above); run again to resume");
                }
                self.failed |= !report.success();
            }
            crate::pending::record_into(self.run, &mut record, &done, mgr);
            // On a system-manager host, what was settled is what its state
            // file says now.
            crate::sysmgr::sync_state(self.run, &done);
        }
        if !busy.is_empty() {
            return Ok(Round::Busy(busy));
        }
        let left: Vec<String> = record
            .deferrals
            .iter()
            .filter(|d| chosen.contains(&d.unit))
            .map(|d| format!("  {}", plan_report::pending_line(d)))
            .collect();
        if self.failed {
            return Ok(Round::Done(Outcome::UnitsFailed));
        }
        if left.is_empty() {
            say!("settled: nothing chosen is pending any more");
            return Ok(Round::Done(Outcome::Ok));
        }
        say!("still pending:\n{}", left.join("\n"));
        Ok(Round::Done(Outcome::Blocked))
    }

    /// How jobs are carried out.
    fn execution(&self) -> ExecutionArgs {
        ExecutionArgs {
            job_timeout: self.args.job_timeout,
            no_isolate: true,
            rollback_on_failure: false,
            isolated: self.args.isolated,
        }
    }
}

/// A plan cut down to `units`: their entries, refusals and consequences,
/// no steps (the generation is already active), no diagnostics or
/// packages of the whole switch.
fn restrict(mut plan: Plan, units: &BTreeSet<String>) -> Plan {
    plan.units.retain(|u| units.contains(&u.unit));
    plan.consequences.retain(|c| units.contains(&c.by));
    plan.steps.clear();
    plan.diagnostics.clear();
    plan.packages = None;
    plan.protection.refusals.retain(|r| units.contains(&r.unit));
    plan.protection.refused = !plan.protection.refusals.is_empty();
    plan
}

/// The plans of every group as one, to print: the units of all, the
/// protection of the first, and a note for each group planned from
/// another generation than the first.
fn combine(plans: &[Plan], current: &Path) -> Plan {
    let mut combined = match plans.first() {
        Some(first) => first.clone(),
        None => Plan::between("", &current.display().to_string(), Vec::new()),
    };
    for plan in plans.iter().skip(1) {
        combined.units.extend(plan.units.iter().cloned());
        combined.consequences.extend(plan.consequences.iter().cloned());
        combined.protection.refusals.extend(plan.protection.refusals.iter().cloned());
        combined.protection.refused |= plan.protection.refused;
        let units: Vec<&str> = plan.units.iter().map(|u| u.unit.as_str()).collect();
        combined.diagnostics.push(Diagnostic {
            severity: Severity::Info,
            message: format!(
                "planned from {} (where their running instances come from): {}",
                plan.old.path,
                units.join(", ")
            ),
            unit: None,
            path: None,
            line: None,
        });
    }
    combined.units.sort_by(|a, b| a.unit.cmp(&b.unit));
    combined.consequences.sort_by(|a, b| (&a.unit, a.effect).cmp(&(&b.unit, b.effect)));
    combined
}

/// Whether a unit is idle: by its processes, or by `--idle-command`.
struct IdleCheck {
    command: Option<String>,
    /// When the command last ran for a unit, and what it said.
    last: BTreeMap<String, (Instant, Option<String>)>,
}

impl IdleCheck {
    /// `None` when `unit` is idle, else why it is busy. With `fresh`, the
    /// command runs whenever it is asked, not at most every
    /// [`COMMAND_POLL`].
    fn check(&mut self, mgr: &mut dyn ServiceManager, unit: &str, fresh: bool) -> anyhow::Result<Option<String>> {
        let Some(command) = &self.command else {
            return Ok(
                match Idleness::read(mgr, unit).with_context(|| format!("cannot tell whether {unit} is idle"))? {
                    Idleness::Idle => None,
                    Idleness::Busy { others } => {
                        let n = others.len();
                        let shown: Vec<String> = others
                            .iter()
                            .take(3)
                            .map(|p| format!("{} {}", p.pid, plan_report::printable(&shorten(&p.command))))
                            .collect();
                        let more = if n > 3 { format!(", and {} more", n - 3) } else { String::new() };
                        Some(format!(
                            "{n} other process{} in its control group ({}{more})",
                            if n == 1 { "" } else { "es" },
                            shown.join(", ")
                        ))
                    }
                },
            );
        };
        if !fresh
            && let Some((at, said)) = self.last.get(unit)
            && at.elapsed() < COMMAND_POLL
        {
            return Ok(said.clone());
        }
        let said = run_idle_command(command, unit);
        self.last.insert(unit.to_owned(), (Instant::now(), said.clone()));
        Ok(said)
    }
}

/// A command line cut to 80 characters.
fn shorten(command: &str) -> String {
    match command.char_indices().nth(80) {
        Some((at, _)) => format!("{}...", &command[..at]),
        None => command.to_owned(),
    }
}

/// Runs `--idle-command` for `unit` (`sh -c CMD`, `SAFE_SWITCH_UNIT` set,
/// its output on standard error): `None` when it exits 0, else why the
/// unit counts as busy. One that runs longer than [`COMMAND_TIMEOUT`] is
/// killed.
fn run_idle_command(command: &str, unit: &str) -> Option<String> {
    let mut child = match Command::new("/bin/sh")
        .args(["-c", command])
        .env("SAFE_SWITCH_UNIT", unit)
        .stdin(Stdio::null())
        .stdout(std::io::stderr())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => return Some(format!("the idle command could not be started: {e}")),
    };
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return None,
            Ok(Some(status)) => return Some(format!("the idle command exited with {status}")),
            Ok(None) if start.elapsed() > COMMAND_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Some(format!("the idle command ran longer than {} s", COMMAND_TIMEOUT.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Some(format!("the idle command could not be awaited: {e}")),
        }
    }
}
