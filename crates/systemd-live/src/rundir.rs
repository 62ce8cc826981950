//! `/run/safe-switch/`: the lock that keeps two switches apart and the
//! persisted progress of the apply in flight.
//!
//! The directory lives on `/run` on purpose: it is a tmpfs, so the record
//! of an interrupted apply survives a lost SSH session or a killed CI job,
//! but not a reboot, after which the interrupted switch no longer matters
//! (the boot generation is what runs).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use plan_model::{Phase, Plan};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::manager::{JobKind, JobResult};

/// The run directory used on a real host.
pub const DEFAULT_RUN_DIR: &str = "/run/safe-switch";

const PROGRESS: &str = "progress.json";
const LAST: &str = "last.json";
const LOCK: &str = "lock";

/// The run directory.
#[derive(Clone, Debug)]
pub struct RunDir {
    path: PathBuf,
}

/// The exclusive lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct LockGuard {
    _file: File,
    path: PathBuf,
}

impl LockGuard {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Where one phase of an apply stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PhaseState {
    /// Not started.
    Pending,
    /// Started, not finished.
    Running,
    /// Finished (whatever the job results).
    Done,
}

/// One finished job, as persisted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedJob {
    /// The job.
    pub kind: JobKind,
    /// The unit.
    pub unit: String,
    /// How it ended.
    #[serde(flatten)]
    pub result: JobResult,
}

/// The persisted progress of an apply: the plan and how far it got.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressFile {
    /// The plan being applied, exactly.
    pub plan: Plan,
    /// Seconds since the epoch when the apply started.
    pub started_unix: u64,
    /// The process that applies it.
    pub pid: u32,
    /// Each phase of the plan that has work, in order, with its state.
    pub phases: Vec<(Phase, PhaseState)>,
    /// Jobs that finished, in the order they finished.
    #[serde(default)]
    pub jobs: Vec<PersistedJob>,
    /// Set once every phase is done.
    #[serde(default)]
    pub finished: bool,
}

/// An apply that did not finish, as found by the next run.
#[derive(Clone, Debug)]
pub struct Interrupted {
    /// Its progress.
    pub progress: ProgressFile,
    /// The file it was read from.
    pub path: PathBuf,
}

impl Interrupted {
    /// Says exactly where the apply stopped, in a few lines.
    pub fn describe(&self) -> String {
        let p = &self.progress;
        let mut s = format!("an earlier apply (process {}) of {} was interrupted:\n", p.pid, p.plan.new.path);
        let names = |state: PhaseState| {
            p.phases.iter().filter(|(_, st)| *st == state).map(|(ph, _)| phase_name(*ph)).collect::<Vec<_>>().join(", ")
        };
        let done = names(PhaseState::Done);
        let running = names(PhaseState::Running);
        let pending = names(PhaseState::Pending);
        s.push_str(&format!("  phases done: {}\n", if done.is_empty() { "none" } else { &done }));
        if !running.is_empty() {
            s.push_str(&format!("  stopped during: {running}\n"));
            let in_phase: Vec<String> = p
                .jobs
                .iter()
                .filter(|j| p.phases.iter().any(|(ph, st)| *st == PhaseState::Running && job_phase(j.kind) == *ph))
                .map(|j| format!("{} {} ({})", j.kind, j.unit, j.result.describe()))
                .collect();
            if !in_phase.is_empty() {
                s.push_str(&format!("  jobs of that phase already finished: {}\n", in_phase.join(", ")));
            }
        }
        s.push_str(&format!("  phases not started: {}\n", if pending.is_empty() { "none" } else { &pending }));
        s
    }
}

/// The phase a job runs in.
pub(crate) fn job_phase(kind: JobKind) -> Phase {
    match kind {
        JobKind::Stop => Phase::Stop,
        JobKind::Reload => Phase::Reload,
        JobKind::Restart => Phase::Restart,
        JobKind::Start => Phase::Start,
    }
}

/// The name of a phase, as printed.
pub fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Swapoff => "swapoff",
        Phase::Stop => "stop",
        Phase::Skip => "skip",
        Phase::Activate => "activate",
        Phase::Reexec => "re-exec",
        Phase::DaemonReload => "daemon-reload",
        Phase::SysinitReactivation => "sysinit-reactivation",
        Phase::Reload => "reload",
        Phase::Restart => "restart",
        Phase::Start => "start",
    }
}

impl RunDir {
    /// The run directory at `path` (created on first use, mode 0700).
    pub fn new(path: impl Into<PathBuf>) -> RunDir {
        RunDir { path: path.into() }
    }

    /// The run directory of a real host.
    pub fn system() -> RunDir {
        RunDir::new(DEFAULT_RUN_DIR)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn ensure(&self) -> Result<(), Error> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.path).map_err(|e| Error::io(&self.path, e))
    }

    /// Takes the exclusive lock without waiting. Fails with
    /// [`Error::Locked`] when another process holds it.
    pub fn lock(&self) -> Result<LockGuard, Error> {
        self.ensure()?;
        let path = self.path.join(LOCK);
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(|e| Error::io(&path, e))?;
        // SAFETY: flock only reads the descriptor, which `file` keeps open
        // for the duration of the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(Error::Locked { path });
            }
            return Err(Error::io(&path, err));
        }
        Ok(LockGuard { _file: file, path })
    }

    /// Tells whether another process holds the lock, without keeping it.
    pub fn is_locked(&self) -> Result<bool, Error> {
        match self.lock() {
            Ok(_guard) => Ok(false),
            Err(Error::Locked { .. }) => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// The progress file path.
    pub fn progress_path(&self) -> PathBuf {
        self.path.join(PROGRESS)
    }

    /// Reads the progress of an apply that did not finish, if any.
    pub fn interrupted(&self) -> Result<Option<Interrupted>, Error> {
        let path = self.progress_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let progress: ProgressFile = serde_json::from_str(&text)
            .map_err(|e| Error::BadProgress { path: path.clone(), message: e.to_string() })?;
        if progress.finished {
            return Ok(None);
        }
        Ok(Some(Interrupted { progress, path }))
    }

    /// Writes the progress atomically (write, fsync, rename), so a crash
    /// leaves either the old or the new record, never half of one.
    pub fn save(&self, progress: &ProgressFile) -> Result<(), Error> {
        self.ensure()?;
        let path = self.progress_path();
        let tmp = self.path.join(format!("{PROGRESS}.tmp"));
        let text = serde_json::to_string_pretty(progress).unwrap_or_default();
        let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(text.as_bytes()).map_err(|e| Error::io(&tmp, e))?;
        f.sync_data().map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
    }

    /// Marks the apply finished: the progress becomes `last.json`, kept for
    /// inspection, and no longer counts as interrupted.
    pub fn finish(&self, progress: &ProgressFile) -> Result<(), Error> {
        self.save(progress)?;
        let last = self.path.join(LAST);
        std::fs::rename(self.progress_path(), &last).map_err(|e| Error::io(&last, e))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_fails() {
        let dir = tempfile::tempdir().unwrap();
        let rd = RunDir::new(dir.path().join("rs"));
        let g = rd.lock().unwrap();
        let err = rd.lock().unwrap_err();
        assert!(matches!(err, Error::Locked { .. }), "{err}");
        assert!(err.to_string().contains("another safe-switch is running"));
        drop(g);
        rd.lock().unwrap();
    }
}
