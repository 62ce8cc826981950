//! A recording, in-memory [`ServiceManager`] for tests.
//!
//! It models just enough of systemd to test the executor: units with an
//! active state, a main PID and an invocation ID that change the way a
//! stop, start, restart or reload changes them; `PartOf=` propagation of
//! stops and restarts and `PropagatesReloadTo=` of reloads (so a cascade
//! into a protected unit can be seen); a watch that sees every job it
//! runs, its own and those it adds, as systemd's signals would;
//! units whose start fails or hangs, or whose job calls go unanswered;
//! a fault that makes the manager unreachable after a number of jobs, to
//! simulate an interrupted apply; and processes besides the main one in a
//! unit (a CI runner's job).

use std::collections::BTreeMap;
use std::time::Duration;

use plan_model::observe::{Activity, SeenJob};
use plan_model::{LiveState, LiveUnit};

use crate::Error;
use crate::manager::{
    JobKind, JobOutcome, JobResult, ServiceManager, TransientExit, TransientSpec, UnitProcess, UnitStatus, WatchedJobs,
};

/// How a fake unit reacts to a start or restart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Behaviour {
    /// Starts and keeps running.
    #[default]
    Runs,
    /// Its start job fails and the unit ends up `failed`.
    FailsToStart,
    /// Its start job never finishes (the executor's timeout applies).
    Hangs,
    /// No call that queues a job for it is ever answered: its jobs end
    /// [`JobResult::NoReply`] and do nothing.
    NoReply,
}

/// One fake unit.
#[derive(Clone, Debug, Default)]
pub struct FakeUnit {
    /// Its current status.
    pub status: UnitStatus,
    /// How it reacts to a start.
    pub behaviour: Behaviour,
    /// Units it is `PartOf=`: stopping or restarting them does the same to
    /// this unit.
    pub part_of: Vec<String>,
    /// Units whose reload reloads this unit too (`ReloadPropagatedFrom=`).
    pub reloaded_with: Vec<String>,
    /// Processes in its control group besides its main process (a CI
    /// runner's job); they end when the unit stops or restarts.
    pub children: Vec<u32>,
}

/// A call the fake received, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// `snapshot`.
    Snapshot,
    /// A job.
    Job(JobKind, String),
    /// `daemon_reload`.
    DaemonReload,
    /// `reexecute`.
    Reexecute,
    /// `reset_failed`.
    ResetFailed,
    /// `run_transient`.
    Transient(String),
    /// `unit_processes`.
    Processes(String),
}

/// The fake service manager.
#[derive(Debug, Default)]
pub struct FakeManager {
    /// The units, by name.
    pub units: BTreeMap<String, FakeUnit>,
    /// Every call received.
    pub calls: Vec<Call>,
    /// When set, the manager becomes unreachable once this many jobs have
    /// been queued.
    pub unreachable_after_jobs: Option<usize>,
    /// The watch in force: the jobs seen so far and how many it keeps.
    watch: Option<(WatchedJobs, usize)>,
    next_pid: u32,
    next_invocation: u32,
    jobs_queued: usize,
}

impl FakeManager {
    /// A manager with no units.
    pub fn new() -> FakeManager {
        FakeManager { next_pid: 1000, next_invocation: 1, ..Default::default() }
    }

    /// Adds a running unit with a fresh main PID and invocation.
    pub fn running(&mut self, name: &str) -> &mut FakeUnit {
        let mut st = UnitStatus {
            load_state: "loaded".into(),
            active_state: "active".into(),
            sub_state: "running".into(),
            result: "success".into(),
            ..Default::default()
        };
        self.fresh_process(&mut st, name);
        self.units.insert(name.to_owned(), FakeUnit { status: st, ..Default::default() });
        self.units.get_mut(name).unwrap_or_else(|| unreachable!())
    }

    /// Adds a loaded unit that is not running.
    pub fn inactive(&mut self, name: &str) -> &mut FakeUnit {
        let st = UnitStatus {
            load_state: "loaded".into(),
            active_state: "inactive".into(),
            sub_state: "dead".into(),
            ..Default::default()
        };
        self.units.insert(name.to_owned(), FakeUnit { status: st, ..Default::default() });
        self.units.get_mut(name).unwrap_or_else(|| unreachable!())
    }

    /// The jobs received, in order.
    pub fn jobs(&self) -> Vec<(JobKind, String)> {
        self.calls
            .iter()
            .filter_map(|c| match c {
                Call::Job(k, u) => Some((*k, u.clone())),
                _ => None,
            })
            .collect()
    }

    fn fresh_process(&mut self, st: &mut UnitStatus, name: &str) {
        if name.ends_with(".service") {
            self.next_pid += 1;
            st.main_pid = self.next_pid;
        }
        self.next_invocation += 1;
        st.invocation_id = format!("{:032x}", self.next_invocation);
    }

    fn stop(&mut self, name: &str) {
        let Some(u) = self.units.get_mut(name) else {
            return;
        };
        u.status.active_state = "inactive".into();
        u.status.sub_state = "dead".into();
        u.status.main_pid = 0;
        u.children.clear();
    }

    fn start(&mut self, name: &str) -> JobResult {
        let Some(u) = self.units.get(name) else {
            return JobResult::NotQueued { message: format!("Unit {name} not found.") };
        };
        match u.behaviour {
            Behaviour::Runs => {
                if u.status.is_running() {
                    return JobResult::Done;
                }
                let mut st = u.status.clone();
                self.fresh_process(&mut st, name);
                st.active_state = "active".into();
                st.sub_state = "running".into();
                st.result = "success".into();
                if let Some(u) = self.units.get_mut(name) {
                    u.status = st;
                }
                JobResult::Done
            }
            Behaviour::FailsToStart => {
                if let Some(u) = self.units.get_mut(name) {
                    u.status.active_state = "failed".into();
                    u.status.sub_state = "failed".into();
                    u.status.result = "exit-code".into();
                    u.status.exec_main_code = 1;
                    u.status.exec_main_status = 1;
                    u.status.main_pid = 0;
                }
                JobResult::Failed { systemd_result: "failed".into() }
            }
            Behaviour::Hangs => JobResult::TimedOut { seconds: 0 },
            Behaviour::NoReply => JobResult::NoReply { message: format!("StartUnit {name}, asked twice") },
        }
    }

    fn dependents(&self, name: &str) -> Vec<String> {
        self.units.iter().filter(|(_, u)| u.part_of.iter().any(|p| p == name)).map(|(n, _)| n.clone()).collect()
    }

    /// Tells the watch, if there is one, that a job ran.
    fn saw(&mut self, unit: &str, job_type: &str, result: &JobResult, ours: bool) {
        let Some((seen, keep)) = &mut self.watch else { return };
        if seen.jobs.len() >= *keep {
            seen.dropped += 1;
            return;
        }
        let result = match result {
            JobResult::Done => Some("done".to_owned()),
            JobResult::Failed { systemd_result } => Some(systemd_result.clone()),
            JobResult::TimedOut { .. } => Some("canceled".to_owned()),
            JobResult::NotQueued { .. } | JobResult::NoReply { .. } => return,
        };
        seen.jobs.push(SeenJob { unit: unit.to_owned(), job_type: Some(job_type.to_owned()), result, ours });
    }

    fn job(&mut self, kind: JobKind, name: &str, timeout: Duration) -> JobResult {
        match self.units.get(name) {
            None => return JobResult::NotQueued { message: format!("Unit {name} not found.") },
            Some(u) if u.behaviour == Behaviour::NoReply => {
                return JobResult::NoReply { message: format!("the {kind} of {name}, asked twice") };
            }
            Some(_) => {}
        }
        let r = match kind {
            JobKind::Stop => {
                self.stop(name);
                for d in self.dependents(name) {
                    self.stop(&d);
                    self.saw(&d, "stop", &JobResult::Done, false);
                }
                JobResult::Done
            }
            JobKind::Start => self.start(name),
            JobKind::Restart => {
                let deps = self.dependents(name);
                self.stop(name);
                let r = self.start(name);
                for d in deps {
                    // A try-restart: nothing for a unit that is not running.
                    if !self.units.get(&d).is_some_and(|u| u.status.is_running()) {
                        continue;
                    }
                    self.stop(&d);
                    let r = self.start(&d);
                    self.saw(&d, "restart", &r, false);
                }
                r
            }
            JobKind::Reload => match self.units.get(name) {
                Some(u) if u.status.is_running() => {
                    let with: Vec<String> = self
                        .units
                        .iter()
                        .filter(|(_, u)| u.status.is_running() && u.reloaded_with.iter().any(|w| w == name))
                        .map(|(n, _)| n.clone())
                        .collect();
                    for d in with {
                        self.saw(&d, "reload", &JobResult::Done, false);
                    }
                    JobResult::Done
                }
                _ => JobResult::Failed { systemd_result: "invalid".into() },
            },
        };
        match r {
            JobResult::TimedOut { .. } => JobResult::TimedOut { seconds: timeout.as_secs() },
            other => other,
        }
    }

    fn check_reachable(&self) -> Result<(), Error> {
        match self.unreachable_after_jobs {
            Some(n) if self.jobs_queued >= n => {
                Err(Error::Call { call: "StartUnit".into(), message: "the connection was closed".into() })
            }
            _ => Ok(()),
        }
    }
}

impl ServiceManager for FakeManager {
    fn failed_units(&mut self) -> Result<std::collections::BTreeSet<String>, Error> {
        self.check_reachable()?;
        Ok(self.units.iter().filter(|(_, u)| u.status.is_failed()).map(|(n, _)| n.clone()).collect())
    }

    fn list_units(&mut self) -> Result<LiveState, Error> {
        self.check_reachable()?;
        self.calls.push(Call::Snapshot);
        let units = self
            .units
            .iter()
            .map(|(n, u)| {
                let live = LiveUnit {
                    active_state: u.status.active_state.clone(),
                    sub_state: u.status.sub_state.clone(),
                    load_state: u.status.load_state.clone(),
                    deps_unread: true,
                    ..Default::default()
                };
                (n.clone(), live)
            })
            .collect();
        Ok(LiveState { units, ..Default::default() })
    }

    fn fragment_paths(&mut self, units: &[String]) -> Result<BTreeMap<String, String>, Error> {
        self.check_reachable()?;
        Ok(units
            .iter()
            .filter(|u| self.units.contains_key(*u))
            .map(|u| (u.clone(), format!("/etc/systemd/system/{u}")))
            .collect())
    }

    fn dependencies(
        &mut self,
        units: &[String],
        _properties: &[&str],
    ) -> Result<BTreeMap<String, crate::Dependencies>, Error> {
        self.check_reachable()?;
        Ok(units
            .iter()
            .filter_map(|name| {
                let unit = self.units.get(name)?;
                let mut deps = BTreeMap::new();
                if !unit.part_of.is_empty() {
                    deps.insert("PartOf".to_owned(), unit.part_of.clone());
                }
                Some((name.clone(), deps))
            })
            .collect())
    }

    fn unit_status(&mut self, units: &[String]) -> Result<BTreeMap<String, UnitStatus>, Error> {
        self.check_reachable()?;
        Ok(units
            .iter()
            .map(|u| {
                let st = self.units.get(u).map(|f| f.status.clone()).unwrap_or(UnitStatus {
                    load_state: "not-found".into(),
                    active_state: "inactive".into(),
                    sub_state: "dead".into(),
                    ..Default::default()
                });
                (u.clone(), st)
            })
            .collect())
    }

    fn run_jobs(
        &mut self,
        jobs: &[(JobKind, String)],
        timeout: Duration,
        on_done: &mut dyn FnMut(&JobOutcome),
    ) -> Result<Vec<JobOutcome>, Error> {
        let mut out = Vec::new();
        for (kind, unit) in jobs {
            self.check_reachable()?;
            self.jobs_queued += 1;
            self.calls.push(Call::Job(*kind, unit.clone()));
            let result = self.job(*kind, unit, timeout);
            self.saw(unit, kind.as_str(), &result, true);
            let o = JobOutcome { unit: unit.clone(), kind: *kind, result };
            on_done(&o);
            out.push(o);
        }
        Ok(out)
    }

    fn unit_processes(&mut self, unit: &str) -> Result<Vec<UnitProcess>, Error> {
        self.check_reachable()?;
        self.calls.push(Call::Processes(unit.to_owned()));
        let Some(u) = self.units.get(unit) else {
            return Err(Error::Call { call: format!("GetUnitProcesses({unit})"), message: "no such unit".into() });
        };
        let main = (u.status.main_pid != 0).then_some(u.status.main_pid);
        let cgroup = format!("/system.slice/{unit}");
        Ok(main
            .into_iter()
            .chain(u.children.iter().copied())
            .map(|pid| UnitProcess { cgroup: cgroup.clone(), pid, command: format!("process {pid}") })
            .collect())
    }

    fn daemon_reload(&mut self, _timeout: Duration) -> Result<(), Error> {
        self.check_reachable()?;
        self.calls.push(Call::DaemonReload);
        Ok(())
    }

    fn reexecute(&mut self, _timeout: Duration) -> Result<(), Error> {
        self.check_reachable()?;
        self.calls.push(Call::Reexecute);
        Ok(())
    }

    fn reset_failed(&mut self) -> Result<(), Error> {
        self.check_reachable()?;
        self.calls.push(Call::ResetFailed);
        Ok(())
    }

    fn watch_jobs(&mut self, keep: usize) -> Result<(), Error> {
        self.check_reachable()?;
        self.watch = Some((WatchedJobs::default(), keep));
        Ok(())
    }

    fn stop_watching(&mut self) -> WatchedJobs {
        self.watch.take().map(|(seen, _)| seen).unwrap_or_default()
    }

    fn activity(&mut self, units: &[String]) -> Result<BTreeMap<String, Activity>, Error> {
        self.check_reachable()?;
        let mut out: BTreeMap<String, Activity> = self
            .units
            .iter()
            .map(|(n, u)| (n.clone(), Activity { active_state: u.status.active_state.clone(), invocation_id: None }))
            .collect();
        let running = self.units.iter().filter(|(_, u)| u.status.is_running()).map(|(n, _)| n);
        let read: std::collections::BTreeSet<&String> = units.iter().chain(running).collect();
        for unit in read {
            let status = self.units.get(unit).map(|u| u.status.clone()).unwrap_or_default();
            out.insert(
                unit.clone(),
                Activity { active_state: status.active_state, invocation_id: Some(status.invocation_id) },
            );
        }
        Ok(out)
    }

    fn run_transient(&mut self, spec: &TransientSpec, tick: &mut dyn FnMut()) -> Result<TransientExit, Error> {
        self.check_reachable()?;
        self.calls.push(Call::Transient(spec.unit.clone()));
        tick();
        Ok(TransientExit::Exited(0))
    }
}
