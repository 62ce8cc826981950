//! The narrow view of a service manager that the executor needs.
//!
//! The trait is shaped by what a switch does, not by systemd's D-Bus API:
//! jobs are queued and awaited as one batch per phase, because that is how
//! NixOS's switch runs them (systemd orders a batch by its dependencies),
//! and reload and re-exec include their wait for `Reloading(false)`. This
//! keeps the executor a plain sequence of phases and makes the fake small.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use plan_model::observe::{Activity, SeenJob};
use plan_model::{ActiveState, DEPENDENCY_PROPERTIES, LiveState};
pub use plan_model::{JobKind, JobResult, UnitStatus};

use crate::Error;

/// The outcome of one job of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobOutcome {
    /// The unit.
    pub unit: String,
    /// The job.
    pub kind: JobKind,
    /// How it ended.
    pub result: JobResult,
}

/// One process of a unit, as systemd's `GetUnitProcesses` lists it: every
/// process of the unit's control group and its sub-groups, and its main
/// and control processes wherever they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitProcess {
    /// The control group it is in.
    pub cgroup: String,
    /// The process (a thread-group leader: threads are not listed apart).
    pub pid: u32,
    /// Its command line, as systemd shows it.
    pub command: String,
}

/// Whether a unit is idle: nothing runs in it but its main process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Idleness {
    /// Its control group holds its main process (with that process's
    /// threads) and nothing else, or nothing at all.
    Idle,
    /// Other processes run in it: a CI runner's job, a reload, a helper.
    Busy {
        /// Those processes.
        others: Vec<UnitProcess>,
    },
}

impl Idleness {
    /// Judges a unit's processes against its main process (0 when it has
    /// none): idle when no other process is listed. systemd lists thread
    /// groups, so the main process's threads never count.
    pub fn of(main_pid: u32, processes: &[UnitProcess]) -> Idleness {
        let others: Vec<UnitProcess> = processes.iter().filter(|p| p.pid != main_pid).cloned().collect();
        if others.is_empty() { Idleness::Idle } else { Idleness::Busy { others } }
    }

    /// Asks `mgr` whether `unit` is idle now: its main process and every
    /// process of its control group, read afresh.
    pub fn read(mgr: &mut dyn ServiceManager, unit: &str) -> Result<Idleness, Error> {
        let status = mgr.unit_status(&[unit.to_owned()])?;
        let main_pid = status.get(unit).map(|s| s.main_pid).unwrap_or(0);
        let processes = mgr.unit_processes(unit)?;
        Ok(Idleness::of(main_pid, &processes))
    }

    /// Tells whether the unit is idle.
    pub fn is_idle(&self) -> bool {
        matches!(self, Idleness::Idle)
    }
}

/// A command to run as a transient service, the way
/// `systemd-run --collect --service-type=exec` does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransientSpec {
    /// The unit name, ending in `.service`.
    pub unit: String,
    /// `Description=`.
    pub description: String,
    /// The program and its arguments (`argv[0]` included).
    pub argv: Vec<String>,
    /// `Environment=` entries (`NAME=value`).
    pub environment: Vec<String>,
    /// `WorkingDirectory=`.
    pub working_directory: Option<PathBuf>,
    /// Standard output goes to this file (truncated).
    pub stdout: PathBuf,
    /// Standard error goes to this file (truncated).
    pub stderr: PathBuf,
}

/// How a transient service ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransientExit {
    /// The main process exited with this status.
    Exited(i32),
    /// The main process was killed by this signal.
    Killed(i32),
    /// The unit went away without an exit status being seen.
    Unknown(String),
}

/// The jobs a watch saw ([`ServiceManager::watch_jobs`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchedJobs {
    /// The jobs, in the order they were queued, at most as many as the
    /// watch keeps.
    pub jobs: Vec<SeenJob>,
    /// How many more were seen.
    pub dropped: usize,
}

/// A unit's dependency properties, by property name (`Requires`,
/// `RequiredBy`, ...), the non-empty ones.
pub type Dependencies = BTreeMap<String, Vec<String>>;

/// What the executor needs from a service manager.
///
/// Every method re-reads state from the manager; nothing is cached between
/// calls, because the point of most calls is to see what changed.
pub trait ServiceManager {
    /// Lists the loaded units with their load, active and sub states and
    /// whom they follow: one call, and nothing that makes the manager
    /// work out anything per unit. Every unit's dependencies are marked as
    /// not read ([`plan_model::LiveUnit::deps_unread`]).
    fn list_units(&mut self) -> Result<LiveState, Error>;

    /// Reads `FragmentPath` of each of `units` (units the manager does not
    /// have loaded are left out).
    fn fragment_paths(&mut self, units: &[String]) -> Result<BTreeMap<String, String>, Error>;

    /// Reads `properties` (dependency properties, such as
    /// [`DEPENDENCY_PROPERTIES`]) of each of `units`, the non-empty ones
    /// by property name.
    fn dependencies(&mut self, units: &[String], properties: &[&str]) -> Result<BTreeMap<String, Dependencies>, Error>;

    /// Everything about every loaded unit: the listing, every unit's
    /// fragment path and dependencies, and the main process and invocation
    /// of every unit that is not inactive. A plan needs far less (see
    /// `safe-switch`'s live planning); this is for tests and tools.
    fn snapshot(&mut self) -> Result<LiveState, Error> {
        let mut live = self.list_units()?;
        let names: Vec<String> = live.units.keys().cloned().collect();
        let fragments = self.fragment_paths(&names)?;
        let mut deps = self.dependencies(&names, &DEPENDENCY_PROPERTIES)?;
        let up: Vec<String> = live
            .units
            .iter()
            .filter(|(_, u)| u.active_state != ActiveState::Inactive)
            .map(|(n, _)| n.clone())
            .collect();
        let status = self.unit_status(&up)?;
        for (name, unit) in &mut live.units {
            unit.fragment_path = fragments.get(name).cloned().unwrap_or_default();
            unit.deps = deps.remove(name).unwrap_or_default();
            unit.deps_unread = false;
            if let Some(st) = status.get(name) {
                unit.main_pid = st.main_pid;
                unit.invocation_id = st.invocation_id.clone();
                unit.exec_main_status = st.exec_main_status;
            }
        }
        Ok(live)
    }

    /// How many calls this manager has made so far (D-Bus method calls for
    /// the real one), for benchmarks and `SAFE_SWITCH_STATS`.
    fn calls_made(&self) -> usize {
        0
    }

    /// Reads the current status of the given units. Units the manager does
    /// not know come back with `load_state` `not-found`.
    fn unit_status(&mut self, units: &[String]) -> Result<BTreeMap<String, UnitStatus>, Error>;

    /// The units that are failed now: `failed`, or waiting to restart
    /// after a main process that failed (`auto-restart` with a non-zero
    /// `ExecMainStatus`), as NixOS's switch counts them.
    fn failed_units(&mut self) -> Result<BTreeSet<String>, Error> {
        let live = self.list_units()?;
        let mut failed: BTreeSet<String> =
            live.units.iter().filter(|(_, u)| u.active_state == ActiveState::Failed).map(|(n, _)| n.clone()).collect();
        let restarting: Vec<String> =
            live.units.iter().filter(|(_, u)| u.sub_state == "auto-restart").map(|(n, _)| n.clone()).collect();
        if !restarting.is_empty() {
            let status = self.unit_status(&restarting)?;
            failed.extend(status.into_iter().filter(|(_, st)| st.exec_main_status != 0).map(|(n, _)| n));
        }
        Ok(failed)
    }

    /// Queues `jobs` (mode `replace`) and waits until each has finished
    /// or `timeout` has passed since it was queued. A job that times out
    /// is cancelled. `on_done` is called as each job finishes. Returns one
    /// outcome per job, in the order given.
    ///
    /// The jobs are queued together, so that the manager orders them by
    /// their dependencies, up to a limit of jobs at once that the
    /// implementation sets (systemd over D-Bus: 256); a larger batch is
    /// queued as a sliding window, the next job as soon as one finished.
    fn run_jobs(
        &mut self,
        jobs: &[(JobKind, String)],
        timeout: Duration,
        on_done: &mut dyn FnMut(&JobOutcome),
    ) -> Result<Vec<JobOutcome>, Error>;

    /// The processes of `unit` (`GetUnitProcesses`): every process of its
    /// control group, on cgroup v1, hybrid and v2 hosts alike. A unit
    /// without a control group (a target) has none.
    fn unit_processes(&mut self, unit: &str) -> Result<Vec<UnitProcess>, Error>;

    /// `daemon-reload`, waiting for `Reloading(false)` up to `timeout`.
    fn daemon_reload(&mut self, timeout: Duration) -> Result<(), Error>;

    /// Re-executes the manager, waiting for `Reloading(false)` up to
    /// `timeout`.
    fn reexecute(&mut self, timeout: Duration) -> Result<(), Error>;

    /// `ResetFailed`.
    fn reset_failed(&mut self) -> Result<(), Error>;

    /// Starts watching every job the manager runs (its `JobNew` and
    /// `JobRemoved` signals, the job's type when it can be read in time),
    /// whoever queued it, until [`ServiceManager::stop_watching`]: jobs
    /// [`ServiceManager::run_jobs`] queues are marked as ours, by job
    /// path. At most `keep` jobs are kept; the rest are counted. The watch
    /// is read all along, whatever else the caller does meanwhile (runs
    /// the activation script, waits for a reload).
    fn watch_jobs(&mut self, keep: usize) -> Result<(), Error>;

    /// Ends the watch, once the jobs it saw queued have ended or after a
    /// short while, and returns what it saw; nothing when no watch runs.
    fn stop_watching(&mut self) -> WatchedJobs;

    /// Every loaded unit's `ActiveState`, and the `InvocationID` of each
    /// of `units` and of every unit that is running (empty for one that
    /// has none, or is not loaded): a restart shows as another
    /// invocation, whichever job did it.
    fn activity(&mut self, units: &[String]) -> Result<BTreeMap<String, Activity>, Error> {
        let live = self.list_units()?;
        let mut read: BTreeSet<String> = units.iter().cloned().collect();
        read.extend(live.units.iter().filter(|(_, u)| u.is_running()).map(|(n, _)| n.clone()));
        let mut out: BTreeMap<String, Activity> = live
            .units
            .into_iter()
            .map(|(name, u)| (name, Activity { active_state: u.active_state, invocation_id: None }))
            .collect();
        for (name, st) in self.unit_status(&read.into_iter().collect::<Vec<_>>())? {
            out.insert(name, Activity { active_state: st.active_state, invocation_id: Some(st.invocation_id) });
        }
        Ok(out)
    }

    /// Starts `spec` as a transient service and waits until it has ended,
    /// calling `tick` about ten times a second meanwhile (to relay its
    /// output). The unit is garbage-collected afterwards.
    fn run_transient(&mut self, spec: &TransientSpec, tick: &mut dyn FnMut()) -> Result<TransientExit, Error>;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn process(pid: u32) -> UnitProcess {
        UnitProcess { cgroup: "/system.slice/runner.service".into(), pid, command: format!("cmd {pid}") }
    }

    #[test]
    fn a_unit_is_idle_when_nothing_but_its_main_process_runs_in_it() {
        assert_eq!(Idleness::of(10, &[process(10)]), Idleness::Idle);
        assert_eq!(Idleness::of(0, &[]), Idleness::Idle, "a target, or a unit with nothing running");
        assert_eq!(Idleness::of(10, &[process(10), process(11)]), Idleness::Busy { others: vec![process(11)] });
        assert!(!Idleness::of(0, &[process(12)]).is_idle(), "a process without a main one: busy");
    }

    #[test]
    fn a_runner_on_the_fake_manager_is_busy_until_its_job_ends() {
        let mut m = crate::fake::FakeManager::new();
        m.running("runner.service").children = vec![4242];
        let busy = Idleness::read(&mut m, "runner.service").unwrap();
        assert!(matches!(&busy, Idleness::Busy { others } if others.iter().map(|p| p.pid).eq([4242])), "{busy:?}");
        // A restart ends the job with the old process.
        m.run_jobs(&[(JobKind::Restart, "runner.service".into())], Duration::from_secs(1), &mut |_| {}).unwrap();
        assert_eq!(Idleness::read(&mut m, "runner.service").unwrap(), Idleness::Idle);
        assert!(Idleness::read(&mut m, "nope.service").is_err());
    }
}
