//! The executor: carries out a [`Plan`] on a live service manager, phase by
//! phase, in the order NixOS's switch uses, and reports what happened.
//!
//! It performs exactly the actions listed in the plan's [`UnitPlan`]s and
//! steps. Deferred actions are not in those lists, so they cannot happen
//! here. Progress is persisted to the [`RunDir`] before and after every
//! phase and after every job, so an interrupted apply can be described and
//! resumed ([`resume`]).
//!
//! [`UnitPlan`]: plan_model::UnitPlan

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use plan_model::observe::{Observation, Observed, SYSINIT_REACTIVATION, USERBORN, classify};
use plan_model::{Action, Phase, Plan, Step};
pub use plan_model::{ApplyReport, JobRecord, LeftUnit, PhaseRecord, ProtectedCheck, UnitFailure};

use crate::Error;
use crate::manager::{JobKind, JobOutcome, JobResult, ServiceManager, UnitStatus};
use crate::rundir::{Interrupted, LogFile, PersistedJob, PhaseState, ProgressFile, RunDir, phase_name};

/// How to carry a plan out.
#[derive(Clone, Debug)]
pub struct ApplyOptions {
    /// How long each job may take before it is cancelled and counted as
    /// failed.
    pub job_timeout: Duration,
    /// How long a daemon-reload or re-exec may take.
    pub reload_timeout: Duration,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions { job_timeout: Duration::from_secs(90), reload_timeout: Duration::from_secs(180) }
    }
}

/// What the executor needs from the host besides the service manager.
pub trait Host {
    /// Runs the activation script of `toplevel` with
    /// `NIXOS_ACTION=switch`, its output shown as it comes and written to
    /// `log`; returns its exit status (a negative number for a signal).
    fn activate(&mut self, script: &Path, toplevel: &Path, log: &mut dyn Write) -> Result<i32, Error>;
    /// Stops swapping to `device`, its output written to `log`.
    fn swapoff(&mut self, device: &str, log: &mut dyn Write) -> Result<(), String>;
    /// Returns a human-readable status of failed units (`systemctl status`),
    /// when one can be had.
    fn status_text(&mut self, units: &[String]) -> Option<String>;
    /// Carries out a step of system-manager's activation that is not the
    /// service manager's (the generation's own engine: assertions,
    /// register-profile, prepopulate; tmpfiles; masking; the state file),
    /// the output of its programs shown as it comes and written to `log`.
    /// Returns a short note on what happened, or why it failed. A host
    /// that is not a system-manager one has none of these steps.
    fn engine_step(&mut self, step: &Step, plan: &Plan, log: &mut dyn Write) -> Result<String, String> {
        let _ = (plan, log);
        Err(format!("not a system-manager host: cannot carry out the {} step", phase_name(step.phase())))
    }
}

/// The host's real processes.
#[derive(Debug, Default)]
pub struct ProcessHost;

impl Host for ProcessHost {
    fn activate(&mut self, script: &Path, toplevel: &Path, log: &mut dyn Write) -> Result<i32, Error> {
        // The script's output goes to standard error with the rest of the
        // progress, so that standard output holds only the report (which
        // may be JSON), and to the log.
        let child = Command::new(script)
            .arg(toplevel)
            .env("NIXOS_ACTION", "switch")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| Error::Activate { path: script.to_owned(), source })?;
        let status = tee(child, log).map_err(|source| Error::Activate { path: script.to_owned(), source })?;
        use std::os::unix::process::ExitStatusExt;
        Ok(status.code().unwrap_or_else(|| -status.signal().unwrap_or(0)))
    }

    fn swapoff(&mut self, device: &str, log: &mut dyn Write) -> Result<(), String> {
        let child = Command::new("swapoff")
            .arg(device)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        match tee(child, log) {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("swapoff exited with {s}")),
            Err(e) => Err(e.to_string()),
        }
    }

    fn status_text(&mut self, units: &[String]) -> Option<String> {
        let out = Command::new("systemctl")
            .args(["status", "--no-pager", "--full", "--lines=10", "--"])
            .args(units)
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (!text.trim().is_empty()).then_some(text)
    }
}

/// How long, once a program has exited, its output is still read: a
/// process it left behind may hold its pipes open for good.
const OUTPUT_AFTER_EXIT: Duration = Duration::from_secs(1);

/// Waits for `child`, whose standard output and error are pipes, copying
/// what it writes to this process's standard error and to `log` as it
/// comes. Its output is read until it has exited and its pipes are closed,
/// or [`OUTPUT_AFTER_EXIT`] after it has exited.
pub fn tee(mut child: std::process::Child, log: &mut dyn Write) -> std::io::Result<std::process::ExitStatus> {
    use std::io::Read;
    use std::sync::mpsc;
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let readers: Vec<Box<dyn Read + Send>> = [
        child.stdout.take().map(|o| Box::new(o) as Box<dyn Read + Send>),
        child.stderr.take().map(|e| Box::new(e) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .collect();
    for mut reader in readers {
        let tx = tx.clone();
        // Detached: a pipe a left-behind process holds keeps its reader
        // waiting, and nothing waits for that reader.
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 8192];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
    drop(tx);
    let mut exited: Option<(std::process::ExitStatus, std::time::Instant)> = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(chunk) => {
                let _ = std::io::stderr().write_all(&chunk);
                // The log is best effort: a full disk must not stop the
                // switch half-way.
                let _ = log.write_all(&chunk);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        match exited {
            Some((_, at)) if at.elapsed() >= OUTPUT_AFTER_EXIT => break,
            Some(_) => {}
            None => exited = child.try_wait()?.map(|s| (s, std::time::Instant::now())),
        }
    }
    let _ = log.flush();
    match exited {
        Some((status, _)) => Ok(status),
        None => child.wait(),
    }
}

/// Where progress is shown.
pub trait Progress {
    /// A phase begins; `what` names its units or its step.
    fn phase(&mut self, phase: Phase, what: &str);
    /// A job finished.
    fn job(&mut self, outcome: &JobOutcome);
    /// A free-form line.
    fn note(&mut self, line: &str);
}

/// Progress as plain lines on standard error, one per phase and one per
/// job that did not succeed. Plain lines read well in CI logs and over a
/// relayed pipe, where a redrawn progress bar would not.
#[derive(Debug, Default)]
pub struct StderrProgress;

impl Progress for StderrProgress {
    fn phase(&mut self, _phase: Phase, what: &str) {
        let _ = writeln!(std::io::stderr(), "{what}");
    }

    fn job(&mut self, o: &JobOutcome) {
        let _ = if o.result.is_done() {
            writeln!(std::io::stderr(), "  {} {}: done", o.kind, o.unit)
        } else {
            writeln!(std::io::stderr(), "  failed to {} {}: {}", o.kind, o.unit, o.result.describe())
        };
    }

    fn note(&mut self, line: &str) {
        let _ = writeln!(std::io::stderr(), "{line}");
    }
}

/// The phases of `plan` that have work, in execution order, with their
/// jobs (empty for steps).
fn phases_of(plan: &Plan) -> Vec<(Phase, Vec<(JobKind, String)>)> {
    let jobs = |action: Action| -> Vec<(JobKind, String)> {
        JobKind::for_action(action)
            .map(|k| plan.units_with(action).into_iter().map(|u| (k, u.to_owned())).collect())
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for &phase in plan.phase_order() {
        let js = match phase {
            Phase::Stop => jobs(Action::Stop),
            Phase::Reload => jobs(Action::Reload),
            Phase::Restart => jobs(Action::Restart),
            Phase::Start => jobs(Action::Start),
            _ => Vec::new(),
        };
        if !js.is_empty() || plan.has_step(phase) {
            out.push((phase, js));
        }
    }
    out
}

/// The units protection covers in `plan`.
fn protected_units(plan: &Plan) -> Vec<String> {
    let set: BTreeSet<&str> =
        plan.protection.protected.iter().flat_map(|p| p.units.iter().map(String::as_str)).collect();
    set.into_iter().map(str::to_owned).collect()
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The status of protected units before the switch, persisted with the
/// progress so that a resumed apply checks against the same baseline.
type Baseline = BTreeMap<String, UnitStatus>;

/// Carries out `plan`. The caller holds the run directory's lock.
///
/// Returns `Err` only when nothing was changed (the run directory cannot be
/// written, the manager cannot be asked about protected units). Once the
/// first phase has begun, problems are recorded in the [`ApplyReport`],
/// which says what was and was not done.
pub fn apply(
    plan: &Plan,
    mgr: &mut dyn ServiceManager,
    host: &mut dyn Host,
    run: &RunDir,
    opts: &ApplyOptions,
    progress: &mut dyn Progress,
) -> Result<ApplyReport, Error> {
    let protected = protected_units(plan);
    // An apply that follows another in the same run (the switch after
    // the resume of an interrupted one, a rollback) adds to its log.
    let fresh_log = run.last_apply_pid() != Some(std::process::id());
    let before: Baseline = mgr.unit_status(&protected)?;
    run.save_protected_before(&before)?;
    // A manager that cannot list the failed units leaves the record empty:
    // every unit failed afterwards then counts against the switch, as in
    // NixOS.
    run.save_failed_before(&mgr.failed_units().unwrap_or_default())?;
    let file = ProgressFile {
        plan: plan.clone(),
        started_unix: now_unix(),
        pid: std::process::id(),
        phases: phases_of(plan).into_iter().map(|(p, _)| (p, PhaseState::Pending)).collect(),
        jobs: Vec::new(),
        finished: false,
    };
    run.save(&file)?;
    let mut log = run.open_log(fresh_log)?;
    if !fresh_log {
        let _ = writeln!(log, "[safe-switch: another apply of the same run, to {}]", plan.new.path);
    }
    Ok(carry_out(file, &before, mgr, host, run, log, opts, progress))
}

/// What is left of an interrupted apply's plan: its actions without those
/// of the phases already done and without the jobs already done in the
/// phase that was running. Protect this plan again with the protections
/// in force now, then hand it to [`resume`] as `Interrupted::progress.plan`.
pub fn remaining(progress: &ProgressFile) -> Plan {
    let state = |phase: Phase| progress.phases.iter().find(|(p, _)| *p == phase).map(|(_, s)| *s);
    let done_jobs: BTreeSet<(JobKind, &str)> =
        progress.jobs.iter().filter(|j| j.result.is_done()).map(|j| (j.kind, j.unit.as_str())).collect();
    let mut plan = progress.plan.clone();
    for unit in &mut plan.units {
        let name = unit.unit.clone();
        unit.actions.retain(|&a| match (state(a.phase()), JobKind::for_action(a)) {
            (Some(PhaseState::Done), _) => false,
            (Some(PhaseState::Running), Some(kind)) => !done_jobs.contains(&(kind, name.as_str())),
            _ => true,
        });
    }
    plan
}

/// Resumes an interrupted apply: phases already done are skipped, and in
/// the phase that was running only the jobs that had not finished
/// successfully are queued again. The caller holds the lock.
///
/// `interrupted.progress.plan` is what is carried out: the caller may have
/// replaced it with the [`remaining`] plan protected again. The protected
/// units are checked afterwards against the state recorded when the
/// interrupted apply began, and units protected only now against their
/// state before this run's first action.
pub fn resume(
    interrupted: Interrupted,
    mgr: &mut dyn ServiceManager,
    host: &mut dyn Host,
    run: &RunDir,
    opts: &ApplyOptions,
    progress: &mut dyn Progress,
) -> Result<ApplyReport, Error> {
    let mut file = interrupted.progress;
    let mut before = run.protected_before()?;
    let unknown: Vec<String> = protected_units(&file.plan).into_iter().filter(|u| !before.contains_key(u)).collect();
    if !unknown.is_empty() {
        before.extend(mgr.unit_status(&unknown)?);
        run.save_protected_before(&before)?;
    }
    file.pid = std::process::id();
    run.save(&file)?;
    // The output of the interrupted run is kept, and this run's follows.
    let mut log = run.open_log(false)?;
    let _ = writeln!(log, "[safe-switch: resumed by process {}]", file.pid);
    Ok(carry_out(file, &before, mgr, host, run, log, opts, progress))
}

/// How many jobs systemd runs during an apply the executor keeps: far
/// more than a switch of thousands of units runs; past it, jobs are
/// counted, and the report says that the comparison may be incomplete.
const KEPT_JOBS: usize = 20_000;

/// The units whose invocation is read before and after an apply: those
/// the plan names, the consequences it predicts, the protected units and
/// the unit of its sysinit-reactivation step.
fn watched_units(plan: &Plan) -> Vec<String> {
    let mut set: BTreeSet<String> = plan.units.iter().map(|u| u.unit.clone()).collect();
    set.extend(plan.consequences.iter().map(|c| c.unit.clone()));
    set.extend(protected_units(plan));
    if plan.has_step(Phase::SysinitReactivation) {
        set.insert(SYSINIT_REACTIVATION.to_owned());
    }
    if plan.has_step(Phase::Userborn) {
        set.insert(USERBORN.to_owned());
    }
    set.into_iter().collect()
}

/// Carries out the phases of `file.plan` not done yet, in its order
/// ([`Plan::phase_order`]), watching what systemd does meanwhile, then
/// checks for failed units and disturbed protected units (against
/// `before`).
#[allow(clippy::too_many_arguments)]
fn carry_out(
    file: ProgressFile,
    before: &Baseline,
    mgr: &mut dyn ServiceManager,
    host: &mut dyn Host,
    run: &RunDir,
    log: LogFile,
    opts: &ApplyOptions,
    progress: &mut dyn Progress,
) -> ApplyReport {
    let plan = file.plan.clone();
    let report = ApplyReport {
        new: plan.new.path.clone(),
        phases: Vec::new(),
        not_done: Vec::new(),
        aborted: None,
        left: Vec::new(),
        failed: Vec::new(),
        failed_status: None,
        already_failed: Vec::new(),
        protected: Vec::new(),
        observed: None,
        log: None,
        unchanged: false,
    };
    let mut ex = Execution { file, report, failed_jobs: Vec::new(), mgr, host, run, log, opts, progress };
    let watched = ex.watch(&plan);
    for (phase, jobs) in phases_of(&plan) {
        ex.phase(&plan, phase, &jobs);
    }
    if let Some(watched) = watched {
        ex.report.observed = ex.observed(&plan, watched);
    }
    if !ex.report.unchanged {
        ex.check_failed_units(&plan);
    }
    if ex.report.aborted.is_some() && !ex.report.unchanged {
        ex.report.left = ex.left_units();
    }
    let names: Vec<String> = before.keys().cloned().collect();
    let after = ex.mgr.unit_status(&names);
    ex.report.protected = protected_checks(before, after);
    ex.finish()
}

/// An apply under way: the progress it persists, the report it builds,
/// and what it carries the plan out with.
struct Execution<'a> {
    file: ProgressFile,
    report: ApplyReport,
    /// The jobs that did not succeed, over all phases.
    failed_jobs: Vec<JobRecord>,
    mgr: &'a mut dyn ServiceManager,
    host: &'a mut dyn Host,
    run: &'a RunDir,
    /// Where the activation script's and the programs' output is kept.
    log: LogFile,
    opts: &'a ApplyOptions,
    progress: &'a mut dyn Progress,
}

/// What a watch started with: the units whose invocation it reads, and
/// their state before the first job.
struct Watched {
    units: Vec<String>,
    before: BTreeMap<String, plan_model::observe::Activity>,
}

impl Execution<'_> {
    /// Starts watching what systemd does, before the first job, and reads
    /// the units' states. A manager that cannot be watched is noted, and
    /// the apply goes on without the comparison.
    fn watch(&mut self, plan: &Plan) -> Option<Watched> {
        let units = watched_units(plan);
        let started = self.mgr.watch_jobs(KEPT_JOBS).and_then(|()| self.mgr.activity(&units));
        match started {
            Ok(before) => Some(Watched { units, before }),
            Err(e) => {
                let _ = self.mgr.stop_watching();
                self.progress.note(&format!(
                    "warning: cannot watch what systemd does during the switch ({e}); it is not compared with the plan"
                ));
                None
            }
        }
    }

    /// Ends the watch after the last phase, reads the units' states again
    /// (also of every unit a job was seen for), and compares what was
    /// seen with the plan.
    fn observed(&mut self, plan: &Plan, watched: Watched) -> Option<Observation> {
        let seen = self.mgr.stop_watching();
        let mut units: BTreeSet<String> = watched.units.into_iter().collect();
        units.extend(seen.jobs.iter().map(|j| j.unit.clone()));
        let units: Vec<String> = units.into_iter().collect();
        match self.mgr.activity(&units) {
            Ok(after) => Some(classify(
                plan,
                &Observed { jobs: seen.jobs, dropped: seen.dropped, before: watched.before, after },
            )),
            Err(e) => {
                self.progress.note(&format!(
                    "warning: cannot read the units' states after the switch ({e}); what systemd did is not compared with the plan"
                ));
                None
            }
        }
    }

    /// Carries out one phase, unless it is done already (a resumed apply)
    /// or the apply has stopped, and records its state before and after.
    fn phase(&mut self, plan: &Plan, phase: Phase, jobs: &[(JobKind, String)]) {
        // By phase, not by position: a resumed plan, planned again with
        // the protections in force then, may have lost a phase's jobs.
        let state = self.file.phases.iter().find(|(p, _)| *p == phase).map(|(_, s)| *s).unwrap_or(PhaseState::Pending);
        if state == PhaseState::Done {
            return;
        }
        if self.report.aborted.is_some() {
            self.report.not_done.push(phase);
            return;
        }
        set_state(&mut self.file, phase, PhaseState::Running);
        if let Err(e) = self.run.save(&self.file) {
            self.report.aborted = Some(format!("cannot record progress: {e}"));
            self.report.not_done.push(phase);
            return;
        }
        let record = match phase {
            Phase::Stop | Phase::Reload | Phase::Restart | Phase::Start => {
                self.unit_jobs(phase, jobs, state == PhaseState::Running)
            }
            Phase::Swapoff => self.swapoff(plan),
            Phase::Activate => self.activate(plan),
            Phase::Reexec => self.reexec(),
            Phase::DaemonReload => self.daemon_reload(),
            Phase::SysinitReactivation => self.restart_if_loaded(phase, SYSINIT_REACTIVATION),
            Phase::Userborn => self.restart_if_loaded(phase, USERBORN),
            Phase::Assertions => self.engine(plan, phase, Failure::Refuses),
            Phase::RegisterProfile | Phase::Prepopulate | Phase::SystemManagerState => {
                self.engine(plan, phase, Failure::Stops)
            }
            Phase::Tmpfiles => self.engine(plan, phase, Failure::GoesOn),
            Phase::Mask => self.mask(plan),
            Phase::Skip => PhaseRecord { phase, jobs: Vec::new(), note: None, ok: true },
        };
        let finished = self.report.aborted.is_none();
        self.report.phases.push(record);
        if finished {
            set_state(&mut self.file, phase, PhaseState::Done);
            let _ = self.run.save(&self.file);
        }
    }

    /// The jobs of a stop, reload, restart or start phase, queued as one
    /// batch; every finished job is persisted as it finishes. In a phase
    /// that was `running` when an apply was interrupted, the jobs that
    /// succeeded then are not queued again, and are reported done.
    fn unit_jobs(&mut self, phase: Phase, jobs: &[(JobKind, String)], resumed: bool) -> PhaseRecord {
        let already: BTreeSet<(JobKind, String)> = if resumed {
            self.file.jobs.iter().filter(|j| j.result.is_done()).map(|j| (j.kind, j.unit.clone())).collect()
        } else {
            BTreeSet::new()
        };
        let todo: Vec<(JobKind, String)> =
            jobs.iter().filter(|(k, u)| !already.contains(&(*k, u.clone()))).cloned().collect();
        let names: Vec<&str> = jobs.iter().map(|(_, u)| u.as_str()).collect();
        self.progress.phase(phase, &format!("{} the following units: {}", verb(phase), names.join(", ")));
        let (file, run, progress) = (&mut self.file, self.run, &mut *self.progress);
        let result = self.mgr.run_jobs(&todo, self.opts.job_timeout, &mut |o| {
            progress.job(o);
            file.jobs.push(PersistedJob { kind: o.kind, unit: o.unit.clone(), result: o.result.clone() });
            // Progress is best effort while jobs run: a failed write must
            // not leave jobs unawaited.
            let _ = run.save(file);
        });
        match result {
            Ok(outcomes) => {
                let mut recs: Vec<JobRecord> = jobs
                    .iter()
                    .filter(|(k, u)| already.contains(&(*k, u.clone())))
                    .map(|(k, u)| JobRecord { kind: *k, unit: u.clone(), result: JobResult::Done })
                    .collect();
                recs.extend(outcomes.into_iter().map(JobRecord::from));
                self.jobs_record(phase, recs)
            }
            Err(e) => {
                self.report.aborted = Some(format!("{} phase: {e}", phase_name(phase)));
                noted(phase, e.to_string(), false)
            }
        }
    }

    /// The record of a phase whose jobs ran. A failed job fails the phase
    /// but does not stop the apply; a failed stop included, as in NixOS's
    /// switch: the unit's later start or the final check shows whether it
    /// matters.
    ///
    /// A job systemd did not answer for is not a failure of its unit: its
    /// outcome is unknown, so the phase cannot count as done. The apply
    /// stops there, and the next run queues that job again.
    fn jobs_record(&mut self, phase: Phase, jobs: Vec<JobRecord>) -> PhaseRecord {
        let ok = jobs.iter().all(|j| j.result.is_done());
        let unanswered: Vec<&str> =
            jobs.iter().filter(|j| matches!(j.result, JobResult::NoReply { .. })).map(|j| j.unit.as_str()).collect();
        if !unanswered.is_empty() && self.report.aborted.is_none() {
            self.report.aborted = Some(format!(
                "{} phase: systemd did not answer for {} of its jobs ({}), so their outcome is not known",
                phase_name(phase),
                unanswered.len(),
                unanswered.join(", ")
            ));
        }
        self.failed_jobs.extend(
            jobs.iter().filter(|j| !j.result.is_done() && !matches!(j.result, JobResult::NoReply { .. })).cloned(),
        );
        PhaseRecord { phase, jobs, note: None, ok }
    }

    /// Every unit the plan still acts on, as the next run would resume it,
    /// with its state now.
    fn left_units(&mut self) -> Vec<LeftUnit> {
        let rest = remaining(&self.file);
        let left: Vec<(String, Vec<Action>)> = rest
            .units
            .into_iter()
            .map(|u| (u.unit, u.actions.into_iter().filter(|a| JobKind::for_action(*a).is_some()).collect()))
            .filter(|(_, actions): &(String, Vec<Action>)| !actions.is_empty())
            .collect();
        let names: Vec<String> = left.iter().map(|(u, _)| u.clone()).collect();
        let mut status = self.mgr.unit_status(&names).unwrap_or_default();
        left.into_iter().map(|(unit, remaining)| LeftUnit { status: status.remove(&unit), unit, remaining }).collect()
    }

    /// Stops swapping to the devices the plan lists; a failure is noted
    /// and the apply goes on.
    fn swapoff(&mut self, plan: &Plan) -> PhaseRecord {
        let mut notes = Vec::new();
        for step in &plan.steps {
            if let Step::Swapoff { device } = step {
                self.progress.phase(Phase::Swapoff, &format!("stopping swap device: {device}"));
                let _ = writeln!(self.log, "[safe-switch: swapoff {device}]");
                if let Err(e) = self.host.swapoff(device, &mut self.log) {
                    notes.push(format!("failed to stop swapping to {device}: {e}"));
                }
            }
        }
        if notes.is_empty() {
            noted(Phase::Swapoff, "done", true)
        } else {
            noted(Phase::Swapoff, notes.join("; "), false)
        }
    }

    /// Runs the new generation's activation script. A script that exits
    /// with a failure fails the phase and the apply goes on, as NixOS's
    /// switch does: the units still need their jobs. One that cannot be
    /// started stops the apply.
    fn activate(&mut self, plan: &Plan) -> PhaseRecord {
        let script = plan
            .steps
            .iter()
            .find_map(|s| match s {
                Step::Activate { script } => Some(PathBuf::from(script)),
                _ => None,
            })
            .unwrap_or_else(|| Path::new(&plan.new.path).join("activate"));
        self.progress.phase(Phase::Activate, "activating the configuration...");
        let _ = writeln!(self.log, "[safe-switch: {} {}]", script.display(), plan.new.path);
        let ran = self.host.activate(&script, Path::new(&plan.new.path), &mut self.log);
        if let Ok(code) = &ran {
            let _ = writeln!(self.log, "[safe-switch: the activation script exited with status {code}]");
        }
        match ran {
            Ok(0) => noted(Phase::Activate, "exit status 0", true),
            Ok(code) => {
                self.progress.note(&format!("the activation script {} exited with status {code}", script.display()));
                noted(Phase::Activate, format!("exit status {code}"), false)
            }
            Err(e) => {
                self.report.aborted = Some(e.to_string());
                noted(Phase::Activate, e.to_string(), false)
            }
        }
    }

    /// Re-executes the service manager.
    fn reexec(&mut self) -> PhaseRecord {
        self.progress.phase(Phase::Reexec, "restarting systemd...");
        let r = self.mgr.reexecute(self.opts.reload_timeout);
        self.step(Phase::Reexec, r)
    }

    /// Resets failed units, then reloads the service manager.
    fn daemon_reload(&mut self) -> PhaseRecord {
        self.progress.phase(Phase::DaemonReload, "reloading the service manager...");
        let r = self.mgr.reset_failed().and_then(|()| self.mgr.daemon_reload(self.opts.reload_timeout));
        self.step(Phase::DaemonReload, r)
    }

    /// Restarts `unit` (`sysinit-reactivation.target`, `userborn.service`)
    /// when the manager has it loaded; skipped otherwise.
    fn restart_if_loaded(&mut self, phase: Phase, unit: &str) -> PhaseRecord {
        match self.mgr.unit_status(&[unit.to_owned()]) {
            Ok(st) if st.get(unit).is_some_and(|s| s.load_state == "loaded") => {
                self.progress.phase(phase, &format!("restarting {unit}"));
                let progress = &mut *self.progress;
                let job = [(JobKind::Restart, unit.to_owned())];
                match self.mgr.run_jobs(&job, self.opts.job_timeout, &mut |o| progress.job(o)) {
                    Ok(outcomes) => self.jobs_record(phase, outcomes.into_iter().map(JobRecord::from).collect()),
                    Err(e) => self.step(phase, Err(e)),
                }
            }
            Ok(_) => noted(phase, format!("{unit} does not exist: skipped"), true),
            Err(e) => self.step(phase, Err(e)),
        }
    }

    /// A step of system-manager's activation the host carries out (see
    /// [`Host::engine_step`]). What a failure does depends on the step:
    /// the assertions refuse the switch before any change, a failed
    /// profile, prepopulate or state file stops the apply there (the next
    /// run resumes it), and a failed tmpfiles fails the phase while the
    /// apply goes on, as in system-manager's activation.
    fn engine(&mut self, plan: &Plan, phase: Phase, failure: Failure) -> PhaseRecord {
        let Some(step) = plan.steps.iter().find(|s| s.phase() == phase) else {
            return noted(phase, "not in the plan: skipped", true);
        };
        self.progress.phase(phase, &engine_line(step));
        let _ = writeln!(self.log, "[safe-switch: the {} step]", phase_name(phase));
        match self.host.engine_step(step, plan, &mut self.log) {
            Ok(note) => noted(phase, note, true),
            Err(why) => {
                self.progress.note(&format!("{} failed: {why}", phase_name(phase)));
                match failure {
                    Failure::GoesOn => {}
                    Failure::Stops => self.report.aborted = Some(format!("{} phase: {why}", phase_name(phase))),
                    Failure::Refuses => {
                        self.report.aborted = Some(format!("{} phase: {why}", phase_name(phase)));
                        self.report.unchanged = true;
                    }
                }
                noted(phase, why, false)
            }
        }
    }

    /// Masks the units the plan's mask step lists (by the host), then
    /// reloads the service manager, as system-manager does after its unit
    /// actions. A failure fails the phase; the apply goes on.
    fn mask(&mut self, plan: &Plan) -> PhaseRecord {
        let record = self.engine(plan, Phase::Mask, Failure::GoesOn);
        if !record.ok {
            return record;
        }
        let r = self.mgr.daemon_reload(self.opts.reload_timeout);
        match r {
            Ok(()) => record,
            Err(e) => noted(Phase::Mask, format!("masked, but the daemon-reload after it failed: {e}"), false),
        }
    }

    /// The record of a step; a step that failed stops the apply.
    fn step(&mut self, phase: Phase, r: Result<(), Error>) -> PhaseRecord {
        match r {
            Ok(()) => noted(phase, "done", true),
            Err(e) => {
                self.report.aborted = Some(format!("{} phase: {e}", phase_name(phase)));
                noted(phase, e.to_string(), false)
            }
        }
    }

    /// Which units failed: those whose job failed, and every unit the plan
    /// acted on that is failed now; then every other unit failed now, apart
    /// from those failed before the switch; then their `systemctl status`.
    fn check_failed_units(&mut self, plan: &Plan) {
        let acted = acted_on(plan, &self.failed_jobs);
        match self.mgr.unit_status(&acted) {
            Ok(status) => self.report.failed.extend(failures(status, &self.failed_jobs)),
            Err(e) => {
                if self.report.aborted.is_none() {
                    self.report.aborted = Some(format!("cannot read unit status after the switch: {e}"));
                }
            }
        }
        // Every other unit that is failed now: one the switch failed through
        // a dependency counts against it; one that was failed before and that
        // the switch did not act on is listed apart (NixOS's switch counts
        // both; see the golden README's table of differences).
        if let Ok(now) = self.mgr.failed_units() {
            let failed_before = self.run.failed_before();
            let others: Vec<String> = now.into_iter().filter(|u| !acted.contains(u)).collect();
            if let Ok(status) = self.mgr.unit_status(&others) {
                for (unit, st) in status {
                    let failure = UnitFailure { unit, status: st, job: None };
                    if failed_before.contains(&failure.unit) {
                        self.report.already_failed.push(failure);
                    } else {
                        self.report.failed.push(failure);
                    }
                }
            }
        }
        if !self.report.failed.is_empty() {
            let names: Vec<String> = self.report.failed.iter().map(|f| f.unit.clone()).collect();
            self.report.failed_status = self.host.status_text(&names);
        }
    }

    /// Ends the apply: a complete one becomes the run directory's last
    /// record, and its records of the state before are removed; one that
    /// stopped early stays to be resumed, unless it changed nothing.
    fn finish(mut self) -> ApplyReport {
        let _ = self.log.flush();
        self.report.log = self.run.log_tail();
        if self.report.aborted.is_none() || self.report.unchanged {
            self.file.finished = true;
            let _ = self.run.finish(&self.file);
            self.run.remove_before_records();
        }
        self.report
    }
}

/// What a failed step of system-manager's activation does to the apply.
#[derive(Clone, Copy)]
enum Failure {
    /// Nothing was changed yet: the apply ends, with nothing to resume.
    Refuses,
    /// The apply stops there; the next run resumes it.
    Stops,
    /// The phase fails, and the apply goes on.
    GoesOn,
}

/// The progress line of a step of system-manager's activation.
fn engine_line(step: &Step) -> String {
    match step {
        Step::Assertions { script } => format!("checking the pre-activation assertions ({script})..."),
        Step::RegisterProfile { script } => format!("registering the profile ({script})..."),
        Step::Prepopulate { script } => format!("placing the files and the services map ({script})..."),
        Step::Tmpfiles => "creating files from the generation's tmpfiles.d rules...".to_owned(),
        Step::Mask { units } => format!("masking the following units: {}", units.join(", ")),
        Step::SystemManagerState => "writing system-manager's state file...".to_owned(),
        other => format!("{}...", phase_name(other.phase())),
    }
}

impl From<JobOutcome> for JobRecord {
    fn from(o: JobOutcome) -> Self {
        JobRecord { kind: o.kind, unit: o.unit, result: o.result }
    }
}

/// The record of a phase without jobs.
fn noted(phase: Phase, note: impl Into<String>, ok: bool) -> PhaseRecord {
    PhaseRecord { phase, jobs: Vec::new(), note: Some(note.into()), ok }
}

/// The units whose state after the switch is the switch's doing, sorted:
/// every unit the plan names but those it only stops (being inactive is
/// what was asked of them), and every unit a job failed for.
fn acted_on(plan: &Plan, failed_jobs: &[JobRecord]) -> Vec<String> {
    let mut acted: BTreeSet<String> = plan
        .units
        .iter()
        .filter(|u| u.actions.is_empty() || u.actions.iter().any(|a| !matches!(a, Action::Stop)))
        .map(|u| u.unit.clone())
        .collect();
    acted.extend(failed_jobs.iter().map(|j| j.unit.clone()));
    acted.into_iter().collect()
}

/// The failures among units the switch acted on, from their `status`
/// now: a unit whose job failed, a unit failed now (a start that
/// succeeded and a service that died right after; a new unit a target
/// pulled in, whose start is not a job of ours: the target's start job
/// succeeds even when a unit it wants fails), and after a job timed out,
/// a unit still half-way through a state change: a dependency of the job
/// that timed out, queued by systemd rather than by us, that hung.
fn failures(status: BTreeMap<String, UnitStatus>, failed_jobs: &[JobRecord]) -> Vec<UnitFailure> {
    let any_timeout = failed_jobs.iter().any(|j| matches!(j.result, JobResult::TimedOut { .. }));
    let mut out = Vec::new();
    for (unit, st) in status {
        let job = failed_jobs.iter().rfind(|j| j.unit == unit).cloned();
        let hung = any_timeout && st.active_state.is_changing();
        if job.is_some() || st.is_failed() || hung {
            out.push(UnitFailure { unit, status: st, job });
        }
    }
    out
}

/// The check of every protected unit that was running `before`: it must
/// still run the same process in the same invocation `after`. When the
/// status after cannot be read, each of them is reported disturbed.
fn protected_checks(before: &Baseline, after: Result<BTreeMap<String, UnitStatus>, Error>) -> Vec<ProtectedCheck> {
    let running = before.iter().filter(|(_, b)| b.is_running());
    match after {
        Ok(after) => running
            .map(|(unit, b)| {
                let a = after.get(unit).cloned().unwrap_or_default();
                ProtectedCheck { unit: unit.clone(), before: b.clone(), disturbed: disturbance(b, &a), after: a }
            })
            .collect(),
        Err(e) => running
            .map(|(unit, b)| ProtectedCheck {
                unit: unit.clone(),
                before: b.clone(),
                after: UnitStatus::default(),
                disturbed: Some(format!("could not be checked: {e}")),
            })
            .collect(),
    }
}

/// Records the state of `phase` in the progress, adding the phase when
/// the progress did not list it.
fn set_state(file: &mut ProgressFile, phase: Phase, state: PhaseState) {
    match file.phases.iter_mut().find(|(p, _)| *p == phase) {
        Some(entry) => entry.1 = state,
        None => file.phases.push((phase, state)),
    }
}

fn verb(phase: Phase) -> &'static str {
    match phase {
        Phase::Stop => "stopping",
        Phase::Reload => "reloading",
        Phase::Restart => "restarting",
        Phase::Start => "starting",
        _ => "handling",
    }
}

/// What changed about a protected unit, if anything.
fn disturbance(before: &UnitStatus, after: &UnitStatus) -> Option<String> {
    let mut what = Vec::new();
    if !after.is_running() {
        what.push(format!("no longer running (now {}/{})", after.active_state, after.sub_state));
    }
    if before.main_pid != after.main_pid {
        what.push(format!("MainPID changed from {} to {}", before.main_pid, after.main_pid));
    }
    if before.invocation_id != after.invocation_id {
        what.push(format!(
            "InvocationID changed from {} to {}",
            or_none(&before.invocation_id),
            or_none(&after.invocation_id)
        ));
    }
    (!what.is_empty()).then(|| what.join(", "))
}

fn or_none(s: &str) -> &str {
    if s.is_empty() { "none" } else { s }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::fake::{Behaviour, Call, FakeManager};
    use plan_model::observe::Class;
    use plan_model::{
        Deferral, FORMAT_VERSION, Generation, Mode, ProtectedUnit, Protection, ProtectionSource, Reason, Rule, UnitPlan,
    };

    #[derive(Default)]
    struct FakeHost {
        activated: Vec<PathBuf>,
        exit: i32,
    }

    impl Host for FakeHost {
        fn activate(&mut self, script: &Path, _toplevel: &Path, log: &mut dyn Write) -> Result<i32, Error> {
            self.activated.push(script.to_owned());
            let _ = writeln!(log, "activation {} of {}", self.activated.len(), script.display());
            Ok(self.exit)
        }
        fn swapoff(&mut self, device: &str, log: &mut dyn Write) -> Result<(), String> {
            let _ = writeln!(log, "swapoff {device}");
            Ok(())
        }
        fn status_text(&mut self, units: &[String]) -> Option<String> {
            Some(format!("status of {}", units.join(" ")))
        }
    }

    /// A system-manager host whose engine steps succeed, but those it is
    /// told to fail, and are recorded.
    #[derive(Default)]
    struct EngineHost {
        steps: Vec<Phase>,
        fail: Vec<Phase>,
    }

    impl Host for EngineHost {
        fn activate(&mut self, _script: &Path, _toplevel: &Path, _log: &mut dyn Write) -> Result<i32, Error> {
            panic!("a system-manager plan never runs an activation script");
        }
        fn swapoff(&mut self, _device: &str, _log: &mut dyn Write) -> Result<(), String> {
            Ok(())
        }
        fn status_text(&mut self, _units: &[String]) -> Option<String> {
            None
        }
        fn engine_step(&mut self, step: &Step, _plan: &Plan, log: &mut dyn Write) -> Result<String, String> {
            let _ = writeln!(log, "engine {}", phase_name(step.phase()));
            self.steps.push(step.phase());
            if self.fail.contains(&step.phase()) {
                Err(format!("{} exited with status 1", phase_name(step.phase())))
            } else {
                Ok("done".to_owned())
            }
        }
    }

    /// A plan of system-manager's: its steps, a removed unit, a changed
    /// one, the target started.
    fn system_manager_plan() -> Plan {
        let mut p = plan(
            vec![
                unit("gone.service", &[Action::Stop]),
                unit("web.service", &[Action::Restart]),
                unit("system-manager.target", &[Action::Start]),
            ],
            &["sshd.service"],
        );
        p.steps = vec![
            Step::Assertions { script: "/gen/b/bin/preActivationAssertions".into() },
            Step::RegisterProfile { script: "/gen/b/bin/register-profile".into() },
            Step::Prepopulate { script: "/gen/b/bin/prepopulate".into() },
            Step::DaemonReload,
            Step::RestartSysinitReactivation,
            Step::RestartUserborn,
            Step::Tmpfiles,
            Step::Mask { units: vec!["ssh.service".into()] },
            Step::SystemManagerState,
        ];
        p
    }

    fn system_manager_units() -> FakeManager {
        let mut m = FakeManager::new();
        m.running("sshd.service");
        m.running("gone.service");
        m.running("web.service");
        m.running("userborn.service");
        m.inactive("system-manager.target");
        m
    }

    #[derive(Default)]
    struct Quiet(Vec<String>);

    impl Progress for Quiet {
        fn phase(&mut self, _phase: Phase, what: &str) {
            self.0.push(what.to_owned());
        }
        fn job(&mut self, o: &JobOutcome) {
            self.0.push(format!("{} {} {}", o.kind, o.unit, o.result.describe()));
        }
        fn note(&mut self, line: &str) {
            self.0.push(line.to_owned());
        }
    }

    fn unit(name: &str, actions: &[Action]) -> UnitPlan {
        UnitPlan {
            unit: name.into(),
            actions: actions.to_vec(),
            reasons: vec![Reason { rule: Rule::UnitChanged, detail: None }],
            changes: vec![],
            deferral: None,
        }
    }

    fn plan(units: Vec<UnitPlan>, protected: &[&str]) -> Plan {
        Plan {
            format_version: FORMAT_VERSION,
            old: Generation { path: "/gen/a".into(), ..Default::default() },
            new: Generation { path: "/gen/b".into(), ..Default::default() },
            units,
            steps: vec![
                Step::Activate { script: "/gen/b/activate".into() },
                Step::DaemonReload,
                Step::RestartSysinitReactivation,
            ],
            consequences: vec![],
            protection: Protection {
                mode: Mode::Defer,
                protected: protected
                    .iter()
                    .map(|u| ProtectedUnit {
                        selector: (*u).into(),
                        source: ProtectionSource::CommandLine,
                        units: vec![(*u).into()],
                        allow: vec![],
                    })
                    .collect(),
                refused: false,
                ..Default::default()
            },
            diagnostics: vec![],
            packages: None,
            reboot: Vec::new(),
            kernel_modules: Vec::new(),
        }
    }

    fn opts() -> ApplyOptions {
        ApplyOptions { job_timeout: Duration::from_secs(1), reload_timeout: Duration::from_secs(1) }
    }

    #[test]
    fn phases_run_in_nixos_order_and_only_listed_actions() {
        let mut m = FakeManager::new();
        m.running("sshd.service");
        m.running("changed.service");
        m.running("removed.service");
        m.running("web.service");
        m.inactive("new.service");
        m.inactive("sysinit-reactivation.target");
        let mut deferred = unit("cascade.service", &[]);
        deferred.deferral = Some(Deferral {
            actions: vec![Action::Restart],
            touch: plan_model::Touch {
                touches: "sshd.service".into(),
                effect: Action::Restart,
                chain: vec![],
                cause: None,
                omitted: 0,
            },
        });
        let p = plan(
            vec![
                unit("changed.service", &[Action::Stop, Action::Start]),
                deferred,
                unit("new.service", &[Action::Start]),
                unit("removed.service", &[Action::Stop]),
                unit("web.service", &[Action::Reload]),
            ],
            &["sshd.service"],
        );
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let mut host = FakeHost::default();
        let before_sshd = m.units["sshd.service"].status.clone();
        let r = apply(&p, &mut m, &mut host, &run, &opts(), &mut Quiet::default()).unwrap();
        assert!(r.success(), "{}", r.render_text());
        assert_eq!(
            m.calls,
            vec![
                Call::Job(JobKind::Stop, "changed.service".into()),
                Call::Job(JobKind::Stop, "removed.service".into()),
                Call::ResetFailed,
                Call::DaemonReload,
                Call::Job(JobKind::Restart, "sysinit-reactivation.target".into()),
                Call::Job(JobKind::Reload, "web.service".into()),
                Call::Job(JobKind::Start, "changed.service".into()),
                Call::Job(JobKind::Start, "new.service".into()),
            ]
        );
        assert_eq!(host.activated, vec![PathBuf::from("/gen/b/activate")]);
        assert_eq!(m.units["sshd.service"].status, before_sshd);
        assert_eq!(r.protected.len(), 1);
        assert!(r.protected[0].disturbed.is_none());
        assert!(run.interrupted().unwrap().is_none(), "a finished apply leaves nothing to resume");
        assert!(dir.path().join("last.json").exists());
    }

    #[test]
    fn failed_and_hung_units_are_reported_and_others_still_handled() {
        let mut m = FakeManager::new();
        m.inactive("bad.service").behaviour = Behaviour::FailsToStart;
        m.inactive("slow.service").behaviour = Behaviour::Hangs;
        m.inactive("good.service");
        let p = plan(
            vec![
                unit("bad.service", &[Action::Start]),
                unit("good.service", &[Action::Start]),
                unit("slow.service", &[Action::Start]),
            ],
            &[],
        );
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let r = apply(&p, &mut m, &mut FakeHost::default(), &run, &opts(), &mut Quiet::default()).unwrap();
        assert!(!r.success());
        assert!(r.aborted.is_none());
        assert_eq!(m.units["good.service"].status.active_state, plan_model::ActiveState::Active);
        let failed: Vec<&str> = r.failed.iter().map(|f| f.unit.as_str()).collect();
        assert_eq!(failed, vec!["bad.service", "slow.service"]);
        assert_eq!(r.failed[0].status.active_state, plan_model::ActiveState::Failed);
        assert_eq!(r.failed[1].job.as_ref().unwrap().result, JobResult::TimedOut { seconds: 1 });
        assert_eq!(r.failed_status.as_deref(), Some("status of bad.service slow.service"));
        let text = r.render_text();
        assert!(text.contains("warning: the following units failed"), "{text}");
        assert!(text.contains("bad.service: failed/failed"), "{text}");
    }

    #[test]
    fn failures_the_switch_caused_count_and_failures_from_before_are_listed_apart() {
        let mut m = FakeManager::new();
        m.running("web.service");
        // Restarted with web.service (PartOf=), and fails then: the switch
        // caused it although the plan never names it.
        let dep = m.running("web-helper.service");
        dep.part_of = vec!["web.service".into()];
        dep.behaviour = Behaviour::FailsToStart;
        // Crash-looping before the switch, and left alone by it.
        let looping = m.inactive("flaky.service");
        looping.status.active_state = "activating".into();
        looping.status.sub_state = "auto-restart".into();
        looping.status.exec_main_code = 1;
        looping.status.exec_main_status = 1;
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let mut host = FakeHost::default();

        let p = plan(vec![unit("web.service", &[Action::Restart])], &[]);
        let r = apply(&p, &mut m, &mut host, &run, &opts(), &mut Quiet::default()).unwrap();
        let failed: Vec<&str> = r.failed.iter().map(|f| f.unit.as_str()).collect();
        let already: Vec<&str> = r.already_failed.iter().map(|f| f.unit.as_str()).collect();
        assert_eq!(failed, vec!["web-helper.service"]);
        assert_eq!(already, vec!["flaky.service"]);
        assert!(!r.success(), "a failure the switch caused fails it");
        let text = r.render_text();
        assert!(text.contains("note: these units were failed before the switch as well"), "{text}");

        // Only the failure from before: the switch succeeded.
        m.units.remove("web-helper.service");
        let r = apply(&p, &mut m, &mut host, &run, &opts(), &mut Quiet::default()).unwrap();
        assert!(r.failed.is_empty(), "{}", r.render_text());
        assert_eq!(r.already_failed.len(), 1);
        assert!(r.success(), "{}", r.render_text());
    }

    #[test]
    fn a_disturbed_protected_unit_is_a_loud_failure() {
        let mut m = FakeManager::new();
        m.running("sshd.service").part_of = vec!["network.service".into()];
        m.running("network.service");
        // An unprotected plan: the restart of network.service reaches sshd
        // through PartOf=, and the check after the switch must see it.
        let p = plan(vec![unit("network.service", &[Action::Restart])], &["sshd.service"]);
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let r = apply(&p, &mut m, &mut FakeHost::default(), &run, &opts(), &mut Quiet::default()).unwrap();
        assert!(!r.success());
        assert!(r.protected_disturbed());
        let what = r.protected[0].disturbed.as_deref().unwrap();
        assert!(what.contains("MainPID changed"), "{what}");
        assert!(what.contains("InvocationID changed"), "{what}");
        assert!(r.render_text().contains("PROTECTED UNIT DISTURBED: sshd.service"));
    }

    #[test]
    fn a_system_manager_plan_runs_in_system_managers_order() {
        let mut m = system_manager_units();
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let mut host = EngineHost::default();
        let mut progress = Quiet::default();
        let r = apply(&system_manager_plan(), &mut m, &mut host, &run, &opts(), &mut progress).unwrap();
        assert!(r.success(), "{}", r.render_text());
        let phases: Vec<Phase> = r.phases.iter().map(|p| p.phase).collect();
        assert_eq!(
            phases,
            [
                Phase::Assertions,
                Phase::RegisterProfile,
                Phase::Prepopulate,
                Phase::DaemonReload,
                Phase::SysinitReactivation,
                Phase::Userborn,
                Phase::Tmpfiles,
                Phase::Stop,
                Phase::Restart,
                Phase::Start,
                Phase::Mask,
                Phase::SystemManagerState,
            ]
        );
        assert_eq!(
            host.steps,
            [
                Phase::Assertions,
                Phase::RegisterProfile,
                Phase::Prepopulate,
                Phase::Tmpfiles,
                Phase::Mask,
                Phase::SystemManagerState
            ]
        );
        // The stop comes after the daemon-reload, and the masks are
        // followed by one more.
        assert_eq!(
            m.calls,
            [
                Call::ResetFailed,
                Call::DaemonReload,
                Call::Job(JobKind::Restart, "userborn.service".into()),
                Call::Job(JobKind::Stop, "gone.service".into()),
                Call::Job(JobKind::Restart, "web.service".into()),
                Call::Job(JobKind::Start, "system-manager.target".into()),
                Call::DaemonReload,
            ]
        );
        assert!(r.render_text().contains("sysinit-reactivation: sysinit-reactivation.target does not exist: skipped"));
        assert!(run.interrupted().unwrap().is_none());
        // What systemd was seen doing is the plan's, the restart of
        // userborn included, and the engine's output is in the log.
        let o = r.observed.as_ref().expect("the apply was watched");
        let effects: Vec<(&str, &str, Class)> =
            o.effects.iter().map(|e| (e.unit.as_str(), e.effect.as_str(), e.class)).collect();
        assert_eq!(
            effects,
            [
                ("gone.service", "stop", Class::Planned),
                ("system-manager.target", "start", Class::Planned),
                ("userborn.service", "restart", Class::Planned),
                ("web.service", "restart", Class::Planned),
            ]
        );
        let log = &r.log.as_ref().expect("the log is attached").text;
        assert!(log.contains("[safe-switch: the prepopulate step]\nengine prepopulate\n"), "{log}");
    }

    #[test]
    fn failed_assertions_change_nothing_and_leave_nothing_to_resume() {
        let mut m = system_manager_units();
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let mut host = EngineHost { fail: vec![Phase::Assertions], ..Default::default() };
        let r = apply(&system_manager_plan(), &mut m, &mut host, &run, &opts(), &mut Quiet::default()).unwrap();
        assert!(r.unchanged && !r.success());
        assert_eq!(r.aborted.as_deref(), Some("assertions phase: assertions exited with status 1"));
        assert_eq!(host.steps, [Phase::Assertions]);
        assert!(m.calls.is_empty(), "{:?}", m.calls);
        assert!(r.left.is_empty() && r.failed.is_empty());
        let text = r.render_text();
        assert!(text.contains("\nnothing was changed\n"), "{text}");
        assert!(text.contains("not done: register-profile, prepopulate, daemon-reload"), "{text}");
        assert!(run.interrupted().unwrap().is_none(), "nothing to resume");
    }

    #[test]
    fn a_failed_prepopulate_stops_the_apply_there_and_the_next_run_resumes_from_it() {
        let mut m = system_manager_units();
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let mut host = EngineHost { fail: vec![Phase::Prepopulate], ..Default::default() };
        let r = apply(&system_manager_plan(), &mut m, &mut host, &run, &opts(), &mut Quiet::default()).unwrap();
        assert!(!r.unchanged);
        assert_eq!(r.aborted.as_deref(), Some("prepopulate phase: prepopulate exited with status 1"));
        assert_eq!(host.steps, [Phase::Assertions, Phase::RegisterProfile, Phase::Prepopulate]);
        assert!(m.calls.is_empty(), "nothing after prepopulate ran: {:?}", m.calls);
        assert_eq!(r.not_done.first(), Some(&Phase::DaemonReload));
        let interrupted = run.interrupted().unwrap().expect("left to resume");
        assert!(interrupted.describe().contains("stopped during: prepopulate"), "{}", interrupted.describe());

        let mut host = EngineHost::default();
        let r = resume(interrupted, &mut m, &mut host, &run, &opts(), &mut Quiet::default()).unwrap();
        assert!(r.success(), "{}", r.render_text());
        assert_eq!(host.steps, [Phase::Prepopulate, Phase::Tmpfiles, Phase::Mask, Phase::SystemManagerState]);
        assert!(m.calls.contains(&Call::Job(JobKind::Stop, "gone.service".into())));
    }

    #[test]
    fn a_failed_tmpfiles_fails_its_phase_and_the_units_are_still_handled() {
        let mut m = system_manager_units();
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let mut host = EngineHost { fail: vec![Phase::Tmpfiles], ..Default::default() };
        let r = apply(&system_manager_plan(), &mut m, &mut host, &run, &opts(), &mut Quiet::default()).unwrap();
        assert!(!r.success() && r.aborted.is_none(), "{}", r.render_text());
        assert!(r.render_text().contains("tmpfiles: tmpfiles exited with status 1\n"), "{}", r.render_text());
        assert!(m.calls.contains(&Call::Job(JobKind::Restart, "web.service".into())));
        assert_eq!(host.steps.last(), Some(&Phase::SystemManagerState));
    }

    #[test]
    fn a_plain_host_has_no_system_manager_steps() {
        let err = ProcessHost.engine_step(&Step::Tmpfiles, &system_manager_plan(), &mut std::io::sink()).unwrap_err();
        assert_eq!(err, "not a system-manager host: cannot carry out the tmpfiles step");
    }

    #[test]
    fn an_interrupted_apply_is_described_and_resumed() {
        let mut m = FakeManager::new();
        m.running("a.service");
        m.inactive("b.service");
        m.inactive("c.service");
        m.running("sshd.service");
        let p = plan(
            vec![
                unit("a.service", &[Action::Stop, Action::Start]),
                unit("b.service", &[Action::Start]),
                unit("c.service", &[Action::Start]),
            ],
            &["sshd.service"],
        );
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        // The bus goes away after the stop and one of the starts.
        m.unreachable_after_jobs = Some(2);
        let mut host = FakeHost::default();
        let r = apply(&p, &mut m, &mut host, &run, &opts(), &mut Quiet::default()).unwrap();
        assert!(!r.success());
        assert!(r.aborted.as_deref().unwrap().contains("start phase"), "{:?}", r.aborted);
        let interrupted = run.interrupted().unwrap().expect("progress is kept");
        let text = interrupted.describe();
        assert!(text.contains("phases done: stop, activate, daemon-reload, sysinit-reactivation"), "{text}");
        assert!(text.contains("stopped during: start"), "{text}");
        assert!(text.contains("start a.service (done)"), "{text}");

        // The next run resumes: only the starts not yet done are queued,
        // and nothing before the start phase runs again.
        m.unreachable_after_jobs = None;
        m.calls.clear();
        let r = resume(interrupted, &mut m, &mut host, &run, &opts(), &mut Quiet::default()).unwrap();
        assert!(r.success(), "{}", r.render_text());
        assert_eq!(
            m.calls,
            vec![Call::Job(JobKind::Start, "b.service".into()), Call::Job(JobKind::Start, "c.service".into()),]
        );
        assert_eq!(host.activated.len(), 1, "activation ran once");
        assert!(run.interrupted().unwrap().is_none());
    }

    #[test]
    fn a_job_systemd_did_not_answer_for_stops_the_apply_without_failing_its_unit_and_the_resume_finishes_it() {
        let mut m = FakeManager::new();
        m.running("a.service").behaviour = Behaviour::NoReply;
        m.running("b.service");
        m.inactive("c.service");
        let p = plan(
            vec![
                unit("a.service", &[Action::Stop, Action::Start]),
                unit("b.service", &[Action::Stop, Action::Start]),
                unit("c.service", &[Action::Start]),
            ],
            &[],
        );
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let mut host = FakeHost::default();
        let r = apply(&p, &mut m, &mut host, &run, &opts(), &mut Quiet::default()).unwrap();
        let text = r.render_text();
        assert_eq!(
            r.aborted.as_deref(),
            Some("stop phase: systemd did not answer for 1 of its jobs (a.service), so their outcome is not known"),
            "{text}"
        );
        assert!(r.failed.is_empty(), "no reply is not a failed unit: {text}");
        assert!(host.activated.is_empty(), "nothing after the stop phase ran");
        assert!(
            text.contains("stop: 1 of 2 jobs done; failed: a.service (no reply from systemd, outcome unknown:"),
            "{text}"
        );
        // Exactly which units are where, and what remains for each.
        let left: Vec<(&str, String, Vec<Action>)> = r
            .left
            .iter()
            .map(|l| (l.unit.as_str(), l.status.as_ref().unwrap().active_state.to_string(), l.remaining.clone()))
            .collect();
        assert_eq!(
            left,
            [
                ("a.service", "active".to_owned(), vec![Action::Stop, Action::Start]),
                ("b.service", "inactive".to_owned(), vec![Action::Start]),
                ("c.service", "inactive".to_owned(), vec![Action::Start]),
            ]
        );
        assert!(text.contains("left as they are until the next run resumes the switch:\n"), "{text}");
        assert!(text.contains("\n  active/running, still to stop, then start: a.service\n"), "{text}");
        assert!(text.contains("\n  inactive/dead, still to start: b.service, c.service\n"), "{text}");

        // The stop phase is not done: the next run queues the unanswered
        // stop again, and carries out the rest.
        let interrupted = run.interrupted().unwrap().expect("progress is kept");
        assert!(interrupted.describe().contains("stopped during: stop"), "{}", interrupted.describe());
        m.units.get_mut("a.service").unwrap().behaviour = Behaviour::Runs;
        m.calls.clear();
        let r = resume(interrupted, &mut m, &mut host, &run, &opts(), &mut Quiet::default()).unwrap();
        assert!(r.success(), "{}", r.render_text());
        assert!(r.left.is_empty());
        assert_eq!(
            m.jobs(),
            [
                (JobKind::Stop, "a.service".to_owned()),
                (JobKind::Start, "a.service".to_owned()),
                (JobKind::Start, "b.service".to_owned()),
                (JobKind::Start, "c.service".to_owned()),
            ]
        );
        for u in ["a.service", "b.service", "c.service"] {
            assert_eq!(m.units[u].status.active_state, plan_model::ActiveState::Active, "{u}");
        }
    }

    #[test]
    fn an_apply_that_stops_early_names_the_units_it_left_even_when_their_state_cannot_be_read() {
        let mut m = FakeManager::new();
        m.running("a.service");
        m.inactive("b.service");
        let p = plan(vec![unit("a.service", &[Action::Restart]), unit("b.service", &[Action::Start])], &[]);
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        // The bus goes away after the restart.
        m.unreachable_after_jobs = Some(1);
        let r = apply(&p, &mut m, &mut FakeHost::default(), &run, &opts(), &mut Quiet::default()).unwrap();
        assert!(r.aborted.as_deref().unwrap().starts_with("start phase:"), "{:?}", r.aborted);
        let left: Vec<(&str, bool, &[Action])> =
            r.left.iter().map(|l| (l.unit.as_str(), l.status.is_some(), l.remaining.as_slice())).collect();
        assert_eq!(left, [("b.service", false, &[Action::Start][..])], "the restart is done");
        assert!(r.render_text().contains("\n  state unknown, still to start: b.service\n"), "{}", r.render_text());
    }

    /// An apply of `p` interrupted after its first job (the bus goes
    /// away): the stop phase is done, the rest is not.
    fn interrupted_after_the_stop(p: &Plan, m: &mut FakeManager, run: &RunDir, host: &mut FakeHost) -> Interrupted {
        m.unreachable_after_jobs = Some(1);
        let r = apply(p, m, host, run, &opts(), &mut Quiet::default()).unwrap();
        assert!(r.aborted.is_some(), "{}", r.render_text());
        m.unreachable_after_jobs = None;
        m.calls.clear();
        run.interrupted().unwrap().expect("progress is kept")
    }

    #[test]
    fn a_resume_carries_out_what_remains_as_protected_now() {
        let mut m = FakeManager::new();
        m.running("a.service");
        m.running("r.service");
        m.running("sshd.service");
        let p = plan(
            vec![unit("a.service", &[Action::Stop, Action::Start]), unit("r.service", &[Action::Restart])],
            &["sshd.service"],
        );
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let mut host = FakeHost::default();
        let mut interrupted = interrupted_after_the_stop(&p, &mut m, &run, &mut host);
        let mut rest = remaining(&interrupted.progress);
        assert_eq!(rest.unit("a.service").unwrap().actions, vec![Action::Start], "the stop is done");
        assert_eq!(rest.unit("r.service").unwrap().actions, vec![Action::Restart]);
        // r.service is protected now: its restart is deferred.
        let r_entry = rest.units.iter_mut().find(|u| u.unit == "r.service").unwrap();
        r_entry.deferral = Some(Deferral {
            actions: std::mem::take(&mut r_entry.actions),
            touch: plan_model::Touch {
                touches: "r.service".into(),
                effect: Action::Restart,
                chain: vec![],
                cause: None,
                omitted: 0,
            },
        });
        rest.protection.protected.push(ProtectedUnit {
            selector: "r".into(),
            source: ProtectionSource::CommandLine,
            units: vec!["r.service".into()],
            allow: vec![],
        });
        interrupted.progress.plan = rest;
        let r_before = m.units["r.service"].status.clone();
        let report = resume(interrupted, &mut m, &mut host, &run, &opts(), &mut Quiet::default()).unwrap();
        assert!(report.success(), "{}", report.render_text());
        assert!(!m.calls.contains(&Call::Job(JobKind::Restart, "r.service".into())), "{:?}", m.calls);
        assert!(m.calls.contains(&Call::Job(JobKind::Start, "a.service".into())), "{:?}", m.calls);
        assert!(!m.calls.contains(&Call::Job(JobKind::Stop, "a.service".into())), "the stop is not repeated");
        assert_eq!(m.units["r.service"].status, r_before);
        let checked: Vec<&str> = report.protected.iter().map(|c| c.unit.as_str()).collect();
        assert_eq!(checked, ["r.service", "sshd.service"]);
    }

    #[test]
    fn a_unit_restarted_by_the_resumed_run_is_never_reported_untouched() {
        let mut m = FakeManager::new();
        m.running("a.service");
        m.running("r.service");
        let p =
            plan(vec![unit("a.service", &[Action::Stop, Action::Start]), unit("r.service", &[Action::Restart])], &[]);
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let mut host = FakeHost::default();
        let mut interrupted = interrupted_after_the_stop(&p, &mut m, &run, &mut host);
        // A plan that protects r.service and still restarts it: the check
        // afterwards must see the restart, measured from before this run.
        let mut rest = remaining(&interrupted.progress);
        rest.protection.protected.push(ProtectedUnit {
            selector: "r".into(),
            source: ProtectionSource::CommandLine,
            units: vec!["r.service".into()],
            allow: vec![],
        });
        interrupted.progress.plan = rest;
        let report = resume(interrupted, &mut m, &mut host, &run, &opts(), &mut Quiet::default()).unwrap();
        assert!(report.protected_disturbed(), "{}", report.render_text());
        assert!(report.render_text().contains("PROTECTED UNIT DISTURBED: r.service"), "{}", report.render_text());
    }

    fn status(active: &str, sub: &str, pid: u32) -> UnitStatus {
        UnitStatus {
            load_state: "loaded".into(),
            active_state: active.into(),
            sub_state: sub.into(),
            main_pid: pid,
            ..Default::default()
        }
    }

    #[test]
    fn units_only_stopped_are_not_checked_for_failure_and_units_of_failed_jobs_are() {
        let p = plan(
            vec![
                unit("gone.service", &[Action::Stop]),
                unit("moved.service", &[Action::Stop, Action::Start]),
                unit("kept.service", &[Action::Skip]),
            ],
            &[],
        );
        let failed = [JobRecord {
            kind: JobKind::Stop,
            unit: "gone.service".into(),
            result: JobResult::Failed { systemd_result: "failed".into() },
        }];
        assert_eq!(acted_on(&p, &[]), ["kept.service", "moved.service"]);
        assert_eq!(acted_on(&p, &failed), ["gone.service", "kept.service", "moved.service"]);
    }

    #[test]
    fn a_unit_half_way_through_a_change_failed_only_when_a_job_timed_out() {
        let status: BTreeMap<String, UnitStatus> = [
            ("dep.service".to_owned(), status("activating", "start", 7)),
            ("fine.service".to_owned(), status("active", "running", 8)),
            ("dead.service".to_owned(), status("failed", "failed", 0)),
        ]
        .into();
        let names = |f: Vec<UnitFailure>| f.into_iter().map(|f| f.unit).collect::<Vec<_>>();
        assert_eq!(names(failures(status.clone(), &[])), ["dead.service"]);
        let timed_out =
            [JobRecord { kind: JobKind::Start, unit: "top.target".into(), result: JobResult::TimedOut { seconds: 1 } }];
        assert_eq!(names(failures(status, &timed_out)), ["dead.service", "dep.service"]);
    }

    #[test]
    fn protected_units_not_running_before_are_not_checked_and_an_unreadable_state_is_a_disturbance() {
        let before: Baseline = [
            ("sshd.service".to_owned(), status("active", "running", 10)),
            ("idle.service".to_owned(), status("inactive", "dead", 0)),
        ]
        .into();
        let after: BTreeMap<String, UnitStatus> = [
            ("sshd.service".to_owned(), status("active", "running", 10)),
            ("idle.service".to_owned(), status("active", "running", 11)),
        ]
        .into();
        let checks = protected_checks(&before, Ok(after));
        assert_eq!(checks.len(), 1, "{checks:?}");
        assert_eq!((checks[0].unit.as_str(), checks[0].disturbed.as_deref()), ("sshd.service", None));

        let err = Error::Call { call: "GetAll(sshd.service)".into(), message: "gone".into() };
        let checks = protected_checks(&before, Err(err));
        assert_eq!(checks.len(), 1, "{checks:?}");
        let what = checks[0].disturbed.as_deref().unwrap();
        assert!(what.starts_with("could not be checked: D-Bus call GetAll(sshd.service) failed"), "{what}");
    }

    #[test]
    fn a_failed_activation_script_fails_the_apply_but_units_are_still_handled() {
        let mut m = FakeManager::new();
        m.inactive("b.service");
        let p = plan(vec![unit("b.service", &[Action::Start])], &[]);
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let mut host = FakeHost { exit: 2, ..Default::default() };
        let r = apply(&p, &mut m, &mut host, &run, &opts(), &mut Quiet::default()).unwrap();
        assert!(!r.success());
        assert_eq!(m.units["b.service"].status.active_state, plan_model::ActiveState::Active);
        assert!(r.render_text().contains("activate: exit status 2"), "{}", r.render_text());
    }

    #[test]
    fn what_systemd_does_is_compared_with_the_plan_and_nothing_of_a_correct_plan_is_unplanned() {
        let mut m = FakeManager::new();
        m.running("web.service");
        m.running("web-helper.service").part_of = vec!["web.service".into()];
        m.running("sshd.service");
        m.inactive("new.service");
        m.inactive("sysinit-reactivation.target");
        let mut p = plan(
            vec![unit("web.service", &[Action::Restart]), unit("new.service", &[Action::Start])],
            &["sshd.service"],
        );
        // The plan predicts the restart of web-helper.service.
        p.consequences = vec![plan_model::Consequence {
            unit: "web-helper.service".into(),
            effect: Action::Restart,
            by: "web.service".into(),
            cause: Action::Restart,
            chain: vec![plan_model::Edge {
                from: "web-helper.service".into(),
                relation: "PartOf".into(),
                to: "web.service".into(),
            }],
            omitted: 0,
        }];
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let r = apply(&p, &mut m, &mut FakeHost::default(), &run, &opts(), &mut Quiet::default()).unwrap();
        assert!(r.success(), "{}", r.render_text());
        let o = r.observed.as_ref().expect("the apply was watched");
        let effects: Vec<(&str, &str, Class)> =
            o.effects.iter().map(|e| (e.unit.as_str(), e.effect.as_str(), e.class)).collect();
        assert_eq!(
            effects,
            [
                ("new.service", "start", Class::Planned),
                ("sysinit-reactivation.target", "start", Class::Planned),
                ("web-helper.service", "restart", Class::Predicted),
                ("web.service", "restart", Class::Planned),
            ]
        );
        assert_eq!((o.jobs, o.ours, o.unplanned), (4, 3, 0));
        assert!(
            r.render_text()
                .contains("observed 4 effects (3 planned, 1 predicted, 0 unplanned) of 4 jobs systemd ran\n"),
            "{}",
            r.render_text()
        );
    }

    #[test]
    fn an_unplanned_restart_is_reported_and_fails_the_apply_when_it_hits_a_protected_unit() {
        let setup = |protect: &[&str]| {
            let mut m = FakeManager::new();
            m.running("web.service");
            // PartOf=web.service, which the plan knows nothing about.
            m.running("victim.service").part_of = vec!["web.service".into()];
            let p = plan(vec![unit("web.service", &[Action::Restart])], protect);
            (m, p)
        };
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let (mut m, p) = setup(&[]);
        let r = apply(&p, &mut m, &mut FakeHost::default(), &run, &opts(), &mut Quiet::default()).unwrap();
        let o = r.observed.as_ref().unwrap();
        let unplanned: Vec<(&str, &str, bool)> =
            o.unplanned().map(|e| (e.unit.as_str(), e.effect.as_str(), e.protected)).collect();
        assert_eq!(unplanned, [("victim.service", "restart", false)]);
        assert!(r.success(), "an unplanned effect on an unprotected unit is reported, not a failure");
        let text = r.render_text();
        assert!(
            text.contains("UNPLANNED: victim.service: restart (active -> active; jobs: restart: done)\n"),
            "{text}"
        );

        let (mut m, p) = setup(&["victim.service"]);
        let r = apply(&p, &mut m, &mut FakeHost::default(), &run, &opts(), &mut Quiet::default()).unwrap();
        assert!(!r.success());
        assert!(r.protected_disturbed());
        assert_eq!(r.unplanned_on_protected().map(|e| e.unit.as_str()).collect::<Vec<_>>(), ["victim.service"]);
    }

    #[test]
    fn an_unplanned_effect_on_a_protected_unit_fails_the_apply_even_when_its_process_is_the_same() {
        let mut m = FakeManager::new();
        m.running("web.service");
        m.running("sshd.service").reloaded_with = vec!["web.service".into()];
        let p = plan(vec![unit("web.service", &[Action::Reload])], &["sshd.service"]);
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let before = m.units["sshd.service"].status.clone();
        let r = apply(&p, &mut m, &mut FakeHost::default(), &run, &opts(), &mut Quiet::default()).unwrap();
        assert_eq!(m.units["sshd.service"].status, before, "same process, same invocation");
        assert!(r.protected.iter().all(|c| c.disturbed.is_none()), "the check of its process passes");
        assert!(!r.success(), "{}", r.render_text());
        let text = r.render_text();
        assert!(
            text.contains("UNPLANNED: sshd.service: reload (active -> active; jobs: reload: done) [protected]\n"),
            "{text}"
        );
        assert!(text.contains("PROTECTED UNIT DISTURBED: sshd.service: reload outside the plan\n"), "{text}");
        assert!(!text.contains("protected sshd.service: untouched"), "{text}");
    }

    #[test]
    fn the_activation_output_is_kept_with_the_progress_and_a_resumed_apply_adds_to_it() {
        let mut m = FakeManager::new();
        m.running("a.service");
        m.inactive("b.service");
        let p = plan(vec![unit("a.service", &[Action::Stop, Action::Start]), unit("b.service", &[Action::Start])], &[]);
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let mut host = FakeHost::default();
        // Interrupted after the stop and the first start.
        m.unreachable_after_jobs = Some(2);
        let r = apply(&p, &mut m, &mut host, &run, &opts(), &mut Quiet::default()).unwrap();
        assert!(r.aborted.is_some());
        let log = r.log.as_ref().expect("the log is attached");
        assert_eq!(log.path, dir.path().join("activation.log").display().to_string());
        assert!(log.text.contains("[safe-switch: /gen/b/activate /gen/b]\nactivation 1 of /gen/b/activate\n[safe-switch: the activation script exited with status 0]\n"), "{}", log.text);
        m.unreachable_after_jobs = None;
        let interrupted = run.interrupted().unwrap().unwrap();
        let r = resume(interrupted, &mut m, &mut host, &run, &opts(), &mut Quiet::default()).unwrap();
        assert!(r.success(), "{}", r.render_text());
        let log = r.log.as_ref().unwrap();
        assert!(log.text.starts_with("[safe-switch: /gen/b/activate /gen/b]\nactivation 1 of"), "{}", log.text);
        assert!(log.text.contains("[safe-switch: resumed by process "), "{}", log.text);
        assert!(r.render_text().contains("output of the activation and the phases' programs: "), "{}", r.render_text());
        // An apply that follows in the same run adds to it...
        let r = apply(&p, &mut m, &mut host, &run, &opts(), &mut Quiet::default()).unwrap();
        let text = r.log.unwrap().text;
        assert!(text.contains("resumed") && text.contains("[safe-switch: another apply of the same run, to /gen/b]"));
        // ...and the apply of another run starts a log of its own.
        let last = dir.path().join("last.json");
        let record = std::fs::read_to_string(&last).unwrap();
        let other = record.replacen(&format!("\"pid\": {}", std::process::id()), "\"pid\": 1", 1);
        assert_ne!(other, record);
        std::fs::write(&last, other).unwrap();
        let r = apply(&p, &mut m, &mut host, &run, &opts(), &mut Quiet::default()).unwrap();
        assert!(r.log.unwrap().text.starts_with("[safe-switch: /gen/b/activate /gen/b]\n"));
    }
}
