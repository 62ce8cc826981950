//! The executor: carries out a launchd plan on a Mac, step by step, and
//! checks the jobs afterwards.
//!
//! The steps, in nix-darwin's order: the new generation's activation
//! script up to its launchd steps ([`crate::activation::cut`]); the plan's
//! operations exactly as [`launchd_plan::operations`] lists them; the rest
//! of the activation script (the nix-daemon section without its
//! `launchctl` calls, `time` … `postActivation`); then
//! `/run/current-system` and the system profile. An activation part that
//! fails stops the switch there: the steps after it are skipped, and
//! `/run/current-system` and the profile stay as they were, as when
//! nix-darwin's own script fails. A boot-out is waited for
//! until `launchctl print` reports the job gone (launchd tears jobs down
//! asynchronously), and a bootstrap that finds a teardown still under way
//! (exit 5, 36 or 37) is tried again until the job timeout. Every step is
//! recorded in the progress file before the next one begins, so an
//! interrupted switch can be described and resumed.
//!
//! Afterwards every job the plan started or restarted must be loaded and
//! not have exited with a failure, every job it stopped must be gone, and
//! every protected job that ran before must run the same process, with the
//! same `runs` count.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use launchd_plan::{Domain, Launchctl, LaunchdPlan, LiveJob, Operation};
use plan_model::{Action, Plan};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::activation::Cut;
use crate::host::Machine;
use crate::launchctl::{IN_PROGRESS, IO_ERROR, Launchd, NO_SUCH_PROCESS, NOW_IN_PROGRESS, command, print};

/// How to carry a plan out.
#[derive(Clone, Debug)]
pub struct Options {
    /// How long a boot-out may take to finish, and how long a bootstrap is
    /// tried again while launchd is busy.
    pub job_timeout: Duration,
    /// How often launchd is asked again while waiting.
    pub poll: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options { job_timeout: Duration::from_secs(90), poll: Duration::from_millis(100) }
    }
}

/// One step of a switch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
    /// The activation script up to its launchd steps.
    Activate {
        /// The script's text, as it is run.
        script: String,
    },
    /// The rest of the activation script, after its launchd steps.
    FinishActivation {
        /// The script's text, as it is run.
        script: String,
    },
    /// One operation of the plan.
    Operation {
        /// The operation.
        operation: Operation,
        /// The job it belongs to.
        label: String,
    },
    /// `/run/current-system` to the new generation.
    CurrentSystem {
        /// The generation.
        toplevel: String,
    },
    /// The system profile to the new generation.
    Profile {
        /// The generation.
        toplevel: String,
    },
}

impl Step {
    /// The step in a few words, as progress shows it.
    pub fn describe(&self) -> String {
        match self {
            Step::Activate { .. } => "the activation script up to its launchd steps".to_owned(),
            Step::FinishActivation { .. } => "the rest of the activation script, after its launchd steps".to_owned(),
            Step::Operation { operation, .. } => operation.to_string(),
            Step::CurrentSystem { toplevel } => format!("ln -sfn {toplevel} /run/current-system"),
            Step::Profile { toplevel } => format!("set the system profile to {toplevel}"),
        }
    }
}

/// Where a step stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum StepState {
    /// Not done yet.
    Pending,
    /// Done.
    Done,
    /// Tried, and it failed.
    Failed {
        /// Why.
        message: String,
    },
    /// Not tried, because an earlier step of its job failed.
    Skipped {
        /// Why.
        message: String,
    },
}

/// A step and where it stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// The step.
    #[serde(flatten)]
    pub step: Step,
    /// Where it stands.
    pub state: StepState,
}

/// A job's state at a point in time, with its domain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobState {
    /// The domain.
    pub domain: Domain,
    /// The state; `None` when not loaded.
    pub job: Option<LiveJob>,
}

/// The persisted progress of a launchd switch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The plan being carried out.
    pub plan: Plan,
    /// Seconds since the epoch when it started.
    pub started_unix: u64,
    /// The process carrying it out.
    pub pid: u32,
    /// The steps, in order.
    pub steps: Vec<StepRecord>,
    /// The protected jobs that ran before the first step, by label.
    pub protected_before: BTreeMap<String, JobState>,
    /// The job each started, restarted or stopped unit is, by unit: its
    /// label and domain, for the check afterwards.
    pub checked: BTreeMap<String, (String, Domain, Action)>,
    /// Set once every step was tried.
    #[serde(default)]
    pub finished: bool,
}

impl Progress {
    /// Says where an interrupted switch stopped, in a few lines.
    pub fn describe(&self) -> String {
        let count = |f: fn(&StepState) -> bool| self.steps.iter().filter(|s| f(&s.state)).count();
        let done = count(|s| matches!(s, StepState::Done));
        let mut text = format!(
            "an earlier launchd switch (process {}) to {} was interrupted: {done} of {} steps done\n",
            self.pid,
            self.plan.new.path,
            self.steps.len()
        );
        if let Some(next) = self.steps.iter().find(|s| !matches!(s.state, StepState::Done)) {
            text.push_str(&format!("  next: {}\n", next.step.describe()));
        }
        text
    }
}

/// Where the progress is kept.
#[derive(Clone, Debug)]
pub struct ProgressFile {
    /// The record of the switch under way.
    pub path: PathBuf,
    /// Where a finished record is moved.
    pub last: PathBuf,
}

impl ProgressFile {
    /// Reads the progress of a switch that did not finish, if any.
    pub fn interrupted(&self) -> Result<Option<Progress>, Error> {
        let text = match std::fs::read(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&self.path, e)),
        };
        let progress: Progress = serde_json::from_slice(&text)
            .map_err(|e| Error::BadProgress { path: self.path.clone(), message: e.to_string() })?;
        Ok((!progress.finished).then_some(progress))
    }

    /// Writes the progress atomically.
    pub fn save(&self, progress: &Progress) -> Result<(), Error> {
        let dir = self.path.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let text = serde_json::to_vec_pretty(progress).unwrap_or_default();
        let mut tmp =
            tempfile::Builder::new().prefix(".launchd-progress.").tempfile_in(dir).map_err(|e| Error::io(dir, e))?;
        std::io::Write::write_all(&mut tmp, &text).map_err(|e| Error::io(&self.path, e))?;
        tmp.as_file().sync_data().map_err(|e| Error::io(&self.path, e))?;
        tmp.persist(&self.path).map_err(|e| Error::io(&self.path, e.error))?;
        Ok(())
    }

    /// Marks the switch finished: the record becomes the last one.
    fn finish(&self, progress: &Progress) -> Result<(), Error> {
        self.save(progress)?;
        std::fs::rename(&self.path, &self.last).map_err(|e| Error::io(&self.last, e))
    }
}

/// A job that failed through the switch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFailure {
    /// The unit (the job's label).
    pub unit: String,
    /// What is wrong.
    pub what: String,
}

/// The check of one protected job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtectedCheck {
    /// The label.
    pub label: String,
    /// Before the switch.
    pub before: LiveJob,
    /// After it; `None` when no longer loaded.
    pub after: Option<LiveJob>,
    /// What changed; `None` means untouched.
    pub disturbed: Option<String>,
}

/// What a switch did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The generation switched to.
    pub new: String,
    /// The steps, with how each ended.
    pub steps: Vec<StepRecord>,
    /// Why the switch stopped (a part of the activation script failed).
    pub stopped: Option<String>,
    /// Jobs that failed.
    pub failed: Vec<JobFailure>,
    /// The protected jobs that ran before, checked.
    pub protected: Vec<ProtectedCheck>,
}

impl Report {
    /// Whether everything went as planned.
    pub fn success(&self) -> bool {
        self.stopped.is_none()
            && self.steps.iter().all(|s| s.state == StepState::Done)
            && self.failed.is_empty()
            && self.protected.iter().all(|c| c.disturbed.is_none())
    }

    /// What happened, for people.
    pub fn render_text(&self) -> String {
        let mut s = String::new();
        for record in &self.steps {
            let state = match &record.state {
                StepState::Done => "done".to_owned(),
                StepState::Pending => "not done".to_owned(),
                StepState::Failed { message } => format!("FAILED: {message}"),
                StepState::Skipped { message } => format!("skipped: {message}"),
            };
            s.push_str(&format!("{}: {state}\n", record.step.describe()));
        }
        if let Some(why) = &self.stopped {
            s.push_str(&format!("stopped: {why}\n"));
        }
        if !self.failed.is_empty() {
            s.push_str("warning: the following jobs failed:\n");
            for f in &self.failed {
                s.push_str(&format!("  {}: {}\n", f.unit, f.what));
            }
        }
        for c in &self.protected {
            match (&c.disturbed, &c.after) {
                (None, Some(after)) => s.push_str(&format!(
                    "protected {}: untouched (pid {}, runs {})\n",
                    c.label,
                    after.pid.map_or("none".to_owned(), |p| p.to_string()),
                    after.runs.map_or("?".to_owned(), |r| r.to_string()),
                )),
                _ => s.push_str(&format!(
                    "PROTECTED JOB DISTURBED: {}: {}\n",
                    c.label,
                    c.disturbed.as_deref().unwrap_or("no longer loaded")
                )),
            }
        }
        s
    }
}

/// Where progress is shown.
pub trait Show {
    /// One line.
    fn line(&mut self, text: &str);
}

/// Progress as lines on standard error.
#[derive(Debug, Default)]
pub struct Stderr;

impl Show for Stderr {
    fn line(&mut self, text: &str) {
        let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("{text}\n").as_bytes());
    }
}

/// The steps that carry out `planned` with the cut activation script and
/// `ops`, in nix-darwin's order.
pub fn steps(planned: &LaunchdPlan, cut: &Cut, ops: &[Operation]) -> Vec<StepRecord> {
    let pending = |step| StepRecord { step, state: StepState::Pending };
    let new = planned.plan.new.path.clone();
    let mut out = vec![pending(Step::Activate { script: cut.before.clone() })];
    for op in ops {
        out.push(pending(Step::Operation { operation: op.clone(), label: label_of(planned, op) }));
    }
    out.push(pending(Step::FinishActivation { script: cut.after.clone() }));
    out.push(pending(Step::CurrentSystem { toplevel: new.clone() }));
    out.push(pending(Step::Profile { toplevel: new }));
    out
}

/// The label of the job an operation belongs to.
fn label_of(planned: &LaunchdPlan, op: &Operation) -> String {
    let by_path =
        |path: &str| planned.jobs.values().find(|t| t.installed.as_deref() == Some(path)).map(|t| t.label.clone());
    match op {
        Operation::Launchctl(
            Launchctl::Bootout { label, .. } | Launchctl::Enable { label, .. } | Launchctl::Disable { label, .. },
        ) => label.clone(),
        Operation::Launchctl(Launchctl::Kickstart { label, .. }) => label.clone(),
        Operation::Launchctl(Launchctl::Bootstrap { path, .. }) => by_path(path).unwrap_or_else(|| path.clone()),
        Operation::InstallPlist { target, .. } => by_path(target).unwrap_or_else(|| target.clone()),
        Operation::RemovePlist { path } => by_path(path).unwrap_or_else(|| path.clone()),
    }
}

/// The jobs the check afterwards looks at: each unit the plan starts,
/// restarts or stops, by its label and domain.
fn checked_jobs(planned: &LaunchdPlan) -> BTreeMap<String, (String, Domain, Action)> {
    let mut out = BTreeMap::new();
    for unit in &planned.plan.units {
        let Some(target) = planned.jobs.get(&unit.unit) else { continue };
        let Some(domain) = target.domain else { continue };
        let action = if unit.actions.contains(&Action::Restart) || unit.actions.contains(&Action::Start) {
            Action::Start
        } else if unit.actions.contains(&Action::Stop) {
            Action::Stop
        } else {
            continue;
        };
        let label = if action == Action::Stop {
            target.loaded_label.clone().unwrap_or_else(|| target.label.clone())
        } else {
            target.label.clone()
        };
        out.insert(unit.unit.clone(), (label, domain, action));
    }
    out
}

/// The protected jobs of `plan`, each with the domain it is loaded in now
/// (`live`): those loaded and running.
pub fn protected_running(plan: &Plan, live: &launchd_plan::LaunchdLive) -> BTreeMap<String, JobState> {
    let mut out = BTreeMap::new();
    let gui = live.primary_user.as_ref().map(|u| Domain::Gui(u.uid));
    for label in plan.protection.protected.iter().flat_map(|p| &p.units) {
        let found = live
            .system
            .as_ref()
            .and_then(|s| s.get(label))
            .map(|j| (Domain::System, j))
            .or_else(|| live.gui.as_ref().and_then(|g| g.get(label)).zip(gui).map(|(j, d)| (d, j)));
        if let Some((domain, job)) = found
            && job.pid.is_some()
        {
            out.insert(label.clone(), JobState { domain, job: Some(job.clone()) });
        }
    }
    out
}

/// Starts a switch: records the progress, then carries out every step.
/// `protected_before` is the state of the protected jobs now
/// ([`protected_running`]). The caller holds the lock.
#[allow(clippy::too_many_arguments)]
pub fn apply(
    planned: &LaunchdPlan,
    steps: Vec<StepRecord>,
    protected_before: BTreeMap<String, JobState>,
    launchd: &mut dyn Launchd,
    machine: &mut dyn Machine,
    file: &ProgressFile,
    options: &Options,
    show: &mut dyn Show,
) -> Result<Report, Error> {
    let progress = Progress {
        plan: planned.plan.clone(),
        started_unix: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        pid: std::process::id(),
        steps,
        protected_before,
        checked: checked_jobs(planned),
        finished: false,
    };
    file.save(&progress)?;
    Ok(carry_out(progress, launchd, machine, file, options, show))
}

/// Resumes an interrupted switch: every step not done is tried again
/// (`progress.steps` may have had steps dropped by the caller, for jobs
/// protected now). The caller holds the lock.
pub fn resume(
    mut progress: Progress,
    launchd: &mut dyn Launchd,
    machine: &mut dyn Machine,
    file: &ProgressFile,
    options: &Options,
    show: &mut dyn Show,
) -> Result<Report, Error> {
    progress.pid = std::process::id();
    for record in &mut progress.steps {
        if record.state != StepState::Done {
            record.state = StepState::Pending;
        }
    }
    file.save(&progress)?;
    Ok(carry_out(progress, launchd, machine, file, options, show))
}

fn carry_out(
    mut progress: Progress,
    launchd: &mut dyn Launchd,
    machine: &mut dyn Machine,
    file: &ProgressFile,
    options: &Options,
    show: &mut dyn Show,
) -> Report {
    let mut report = Report { new: progress.plan.new.path.clone(), ..Report::default() };
    let mut failed_labels: Vec<String> = Vec::new();
    // Whether the switch stopped before any launchd operation.
    let mut before_launchd = false;
    for i in 0..progress.steps.len() {
        if progress.steps[i].state == StepState::Done {
            continue;
        }
        let step = progress.steps[i].step.clone();
        let state = match &step {
            Step::Operation { label, .. } if failed_labels.contains(label) => {
                StepState::Skipped { message: format!("an earlier step of {label} failed") }
            }
            _ if report.stopped.is_some() => StepState::Skipped { message: "the switch stopped".to_owned() },
            _ => {
                show.line(&step.describe());
                match run_step(&step, launchd, machine, options) {
                    Ok(()) => StepState::Done,
                    Err(message) => {
                        show.line(&format!("  failed: {message}"));
                        StepState::Failed { message }
                    }
                }
            }
        };
        match (&state, &step) {
            (StepState::Failed { message }, Step::Activate { .. }) => {
                before_launchd = true;
                report.stopped = Some(format!(
                    "{message}; its launchd steps, the rest of it, /run/current-system and the profile were left as they were"
                ));
            }
            (StepState::Failed { message }, Step::FinishActivation { .. }) => {
                report.stopped = Some(format!("{message}; /run/current-system and the profile were left as they were"));
            }
            _ => {}
        }
        if let (StepState::Failed { .. }, Step::Operation { label, .. }) = (&state, &step) {
            failed_labels.push(label.clone());
        }
        progress.steps[i].state = state;
        // Best effort while the switch goes on: a failed write must not
        // stop it half-way.
        let _ = file.save(&progress);
    }
    report.steps = progress.steps.clone();
    if !before_launchd {
        check_jobs(&progress, launchd, &mut report);
    }
    check_protected(&progress, launchd, &mut report);
    progress.finished = true;
    let _ = file.finish(&progress);
    report
}

fn run_step(
    step: &Step,
    launchd: &mut dyn Launchd,
    machine: &mut dyn Machine,
    options: &Options,
) -> Result<(), String> {
    match step {
        Step::Activate { script } | Step::FinishActivation { script } => match machine.activate(script) {
            Ok(0) => Ok(()),
            Ok(code) => Err(format!("the activation script exited with status {code}")),
            Err(e) => Err(e.to_string()),
        },
        Step::Operation { operation, .. } => operation_step(operation, launchd, machine, options),
        Step::CurrentSystem { toplevel } => machine.link_current_system(toplevel).map_err(|e| e.to_string()),
        Step::Profile { toplevel } => machine.set_profile(toplevel).map_err(|e| e.to_string()),
    }
}

fn operation_step(
    op: &Operation,
    launchd: &mut dyn Launchd,
    machine: &mut dyn Machine,
    options: &Options,
) -> Result<(), String> {
    match op {
        Operation::InstallPlist { source, target, owner } => {
            machine.install_plist(source, target, owner.as_deref()).map_err(|e| e.to_string())
        }
        Operation::RemovePlist { path } => machine.remove_plist(path).map_err(|e| e.to_string()),
        Operation::Launchctl(call) => {
            let mut args: Vec<String> = call.argv().into_iter().skip(1).collect();
            if let Launchctl::Bootstrap { path, .. } = call
                && let Some(last) = args.last_mut()
            {
                *last = machine.path(path).display().to_string();
            }
            launchctl_step(call, &args, launchd, options)
        }
    }
}

fn launchctl_step(
    call: &Launchctl,
    args: &[String],
    launchd: &mut dyn Launchd,
    options: &Options,
) -> Result<(), String> {
    let deadline = Instant::now() + options.job_timeout;
    loop {
        let out = launchd.run(args).map_err(|e| e.to_string())?;
        let busy = matches!(out.code, IO_ERROR | IN_PROGRESS | NOW_IN_PROGRESS);
        match (call, out.code) {
            (Launchctl::Bootout { domain, label }, 0 | NOW_IN_PROGRESS) => {
                return wait_gone(launchd, *domain, label, deadline, options);
            }
            // Not loaded: what a boot-out is for.
            (Launchctl::Bootout { .. }, NO_SUCH_PROCESS) => return Ok(()),
            (_, 0) => return Ok(()),
            (Launchctl::Bootstrap { .. }, _) if busy && Instant::now() < deadline => {
                std::thread::sleep(options.poll);
            }
            (_, code) => {
                return Err(format!("`{}` exited with status {code}: {}", command(args), out.first_error_line()));
            }
        }
    }
}

/// Waits until launchd reports the job gone (exit 113 from `print`).
fn wait_gone(
    launchd: &mut dyn Launchd,
    domain: Domain,
    label: &str,
    deadline: Instant,
    options: &Options,
) -> Result<(), String> {
    loop {
        match print(launchd, domain, label) {
            Ok(None) => return Ok(()),
            Ok(Some(job)) if Instant::now() >= deadline => {
                return Err(format!(
                    "{domain}/{label} was still loaded ({}) {} s after its boot-out",
                    job.describe(),
                    options.job_timeout.as_secs()
                ));
            }
            Ok(Some(_)) => std::thread::sleep(options.poll),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Every job the plan started or restarted must be loaded and not have
/// exited with a failure; every job it stopped must be gone.
fn check_jobs(progress: &Progress, launchd: &mut dyn Launchd, report: &mut Report) {
    for (unit, (label, domain, action)) in &progress.checked {
        let what = match (print(launchd, *domain, label), action) {
            (Err(e), _) => Some(format!("could not be checked: {e}")),
            (Ok(None), Action::Start) => Some(format!("not loaded in {domain}")),
            (Ok(Some(job)), Action::Start) => match (job.pid, job.last_exit_code) {
                (None, Some(code)) if code != 0 => Some(format!("{}, last exit status {code}", job.describe())),
                _ => None,
            },
            (Ok(Some(job)), _) => Some(format!("still loaded in {domain} ({})", job.describe())),
            (Ok(None), _) => None,
        };
        if let Some(what) = what {
            report.failed.push(JobFailure { unit: unit.clone(), what });
        }
    }
}

/// Every protected job that ran before must run the same process, with
/// the same `runs` count.
fn check_protected(progress: &Progress, launchd: &mut dyn Launchd, report: &mut Report) {
    for (label, before) in &progress.protected_before {
        let Some(was) = &before.job else { continue };
        let (after, disturbed) = match print(launchd, before.domain, label) {
            Err(e) => (None, Some(format!("could not be checked: {e}"))),
            Ok(None) => (None, Some("no longer loaded".to_owned())),
            Ok(Some(now)) => {
                let mut what = Vec::new();
                if now.pid != was.pid {
                    what.push(format!("pid changed from {:?} to {:?}", was.pid, now.pid));
                }
                if was.runs.is_some() && now.runs != was.runs {
                    what.push(format!("runs changed from {:?} to {:?}", was.runs, now.runs));
                }
                let disturbed = (!what.is_empty()).then(|| what.join(", "));
                (Some(now), disturbed)
            }
        };
        report.protected.push(ProtectedCheck { label: label.clone(), before: was.clone(), after, disturbed });
    }
}
