//! `/run/safe-switch/`: the lock that keeps two switches apart, the
//! persisted progress of the apply in flight, the state it checks against
//! afterwards, the output of its activation script and programs, the
//! files a switch hands to its isolated apply, and the record of deferred
//! actions still pending. Every path in the directory is named here.
//!
//! The directory lives on `/run` on purpose: it is a tmpfs, so the record
//! of an interrupted apply survives a lost SSH session or a killed CI job,
//! but not a reboot, after which the interrupted switch no longer matters
//! (the boot generation is what runs). The same holds for deferred
//! actions: after a reboot every unit runs its installed file, and nothing
//! is pending.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use plan_model::{LogTail, Pending, Phase, Plan};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::manager::{JobKind, JobResult, UnitStatus};

/// The run directory used on a real host.
pub const DEFAULT_RUN_DIR: &str = "/run/safe-switch";

const PROGRESS: &str = "progress.json";
const LAST: &str = "last.json";
const LOCK: &str = "lock";
const PROTECTED_BEFORE: &str = "protected-before.json";
const FAILED_BEFORE: &str = "failed-before.json";
const PENDING: &str = "pending.json";
const LOG: &str = "activation.log";
const SYSTEM_MANAGER_STATE_BEFORE: &str = "system-manager-state-before.json";

/// How much of the output of an apply's activation script and programs
/// its log keeps: once the log holds twice as much, its start is dropped
/// down to this.
pub const LOG_KEEP: u64 = 1 << 20;

/// The largest record of pending deferrals read (far more than the
/// deferrals of every unit of a large host).
const PENDING_LIMIT: u64 = 16 << 20;

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
    phase.name()
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

    /// Creates the directory (mode 0700) unless it exists.
    pub fn create(&self) -> Result<(), Error> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.path).map_err(|e| Error::io(&self.path, e))
    }

    /// The lock file.
    pub fn lock_path(&self) -> PathBuf {
        self.path.join(LOCK)
    }

    /// Takes the exclusive lock without waiting. Fails with
    /// [`Error::Locked`] when another process holds it.
    pub fn lock(&self) -> Result<LockGuard, Error> {
        self.create()?;
        let path = self.lock_path();
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(|e| Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(LockGuard { _file: file, path }),
            Err(TryLockError::WouldBlock) => Err(Error::Locked { path }),
            Err(TryLockError::Error(e)) => Err(Error::io(&path, e)),
        }
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
        self.create()?;
        let path = self.progress_path();
        let text = serde_json::to_string_pretty(progress).unwrap_or_default();
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!(".{PROGRESS}."))
            .tempfile_in(&self.path)
            .map_err(|e| Error::io(&self.path, e))?;
        tmp.write_all(text.as_bytes()).map_err(|e| Error::io(&path, e))?;
        tmp.as_file().sync_data().map_err(|e| Error::io(&path, e))?;
        tmp.persist(&path).map_err(|e| Error::io(&path, e.error))?;
        Ok(())
    }

    /// Marks the apply finished: the progress becomes `last.json`, kept for
    /// inspection, and no longer counts as interrupted.
    pub fn finish(&self, progress: &ProgressFile) -> Result<(), Error> {
        self.save(progress)?;
        let last = self.path.join(LAST);
        std::fs::rename(self.progress_path(), &last).map_err(|e| Error::io(&last, e))
    }

    /// Where a switch leaves a file for its isolated apply to read: in the
    /// directory (created if needed), named after `what` and this process.
    /// The caller removes it once the apply has ended.
    pub fn hand_over_path(&self, what: &str) -> Result<PathBuf, Error> {
        self.create()?;
        Ok(self.path.join(format!("{what}-{}", std::process::id())))
    }

    /// The files that keep the standard output and error of the transient
    /// `unit` an isolated apply runs in (the directory is created if
    /// needed).
    pub fn unit_output_paths(&self, unit: &str) -> Result<(PathBuf, PathBuf), Error> {
        self.create()?;
        Ok((self.path.join(format!("{unit}.stdout")), self.path.join(format!("{unit}.stderr"))))
    }

    /// The copy of system-manager's state file as it was before the apply
    /// in flight (on a system-manager host): what a unit whose actions
    /// were deferred keeps in the state file. Kept with the progress, so
    /// that a resumed apply still has it.
    pub fn system_manager_state_before_path(&self) -> PathBuf {
        self.path.join(SYSTEM_MANAGER_STATE_BEFORE)
    }

    /// The record of deferred actions still pending.
    pub fn pending_path(&self) -> PathBuf {
        self.path.join(PENDING)
    }

    /// Reads the record of deferred actions still pending; an empty one
    /// when there is none. The file must be a regular file (a link or a
    /// FIFO is refused without being opened) of at most 16 MiB, and a
    /// record of this version ([`Pending::from_json`]): anything else is an
    /// [`Error::BadPending`] naming the file, whose message never quotes
    /// it.
    pub fn read_pending(&self) -> Result<Pending, Error> {
        use std::io::Read as _;
        let path = self.pending_path();
        let bad = |message: String| Error::BadPending { path: path.clone(), message };
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Pending::default()),
            Err(e) => return Err(Error::io(&path, e)),
        };
        if !meta.file_type().is_file() {
            return Err(bad("not a regular file".to_owned()));
        }
        if meta.len() > PENDING_LIMIT {
            return Err(bad(format!("larger than {} MiB", PENDING_LIMIT >> 20)));
        }
        let mut text = String::new();
        File::open(&path).and_then(|f| f.take(PENDING_LIMIT + 1).read_to_string(&mut text)).map_err(|e| {
            match e.kind() {
                std::io::ErrorKind::InvalidData => bad("not UTF-8 text".to_owned()),
                _ => Error::io(&path, e),
            }
        })?;
        if text.len() as u64 > PENDING_LIMIT {
            return Err(bad(format!("larger than {} MiB", PENDING_LIMIT >> 20)));
        }
        Pending::from_json(&text).map_err(|e| bad(e.to_string()))
    }

    /// Writes the record of deferred actions still pending atomically
    /// (write, fsync, rename), or removes it when nothing is pending.
    pub fn save_pending(&self, pending: &Pending) -> Result<(), Error> {
        let path = self.pending_path();
        if pending.is_empty() {
            return match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&path, e)),
                _ => Ok(()),
            };
        }
        self.create()?;
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!(".{PENDING}."))
            .tempfile_in(&self.path)
            .map_err(|e| Error::io(&self.path, e))?;
        tmp.write_all(pending.to_json().as_bytes()).map_err(|e| Error::io(&path, e))?;
        tmp.as_file().sync_data().map_err(|e| Error::io(&path, e))?;
        tmp.persist(&path).map_err(|e| Error::io(&path, e.error))?;
        Ok(())
    }

    /// Records the status of the protected units before the first action.
    /// The process that made the last apply recorded here: the one in
    /// progress or interrupted, else the last one finished.
    pub fn last_apply_pid(&self) -> Option<u32> {
        #[derive(Deserialize)]
        struct Pid {
            pid: u32,
        }
        [self.progress_path(), self.path.join(LAST)]
            .iter()
            .find_map(|path| std::fs::read_to_string(path).ok())
            .and_then(|text| serde_json::from_str::<Pid>(&text).ok())
            .map(|p| p.pid)
    }

    /// The log of the output of the apply's activation script and of its
    /// phases' programs.
    pub fn log_path(&self) -> PathBuf {
        self.path.join(LOG)
    }

    /// Opens the log for the apply about to run: emptied for a new apply
    /// (`fresh`), appended to for one that resumes an interrupted apply,
    /// whose output it keeps.
    pub fn open_log(&self, fresh: bool) -> Result<LogFile, Error> {
        self.create()?;
        let path = self.log_path();
        let mut options = OpenOptions::new();
        options.create(true);
        if fresh {
            options.write(true).truncate(true);
        } else {
            options.append(true);
        }
        let file = options.open(&path).map_err(|e| Error::io(&path, e))?;
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        let mut log = LogFile { file, path, len };
        if fresh {
            log.file = log.reopen()?;
        }
        Ok(log)
    }

    /// The end of the log, as the reports attach it; `None` when there is
    /// no log or it cannot be read.
    pub fn log_tail(&self) -> Option<LogTail> {
        let path = self.log_path();
        let mut file = File::open(&path).ok()?;
        let total = file.metadata().ok()?.len();
        // The tail and the kilobyte before it, where a line may start.
        let from = total.saturating_sub(LogTail::LIMIT as u64 + 1024);
        file.seek(std::io::SeekFrom::Start(from)).ok()?;
        let mut end = Vec::new();
        file.take(LogTail::LIMIT as u64 + 1024).read_to_end(&mut end).ok()?;
        Some(LogTail::of(&path.to_string_lossy(), total, &end))
    }

    pub(crate) fn save_protected_before(&self, status: &BTreeMap<String, UnitStatus>) -> Result<(), Error> {
        let path = self.path.join(PROTECTED_BEFORE);
        std::fs::write(&path, serde_json::to_string(status).unwrap_or_default()).map_err(|e| Error::io(&path, e))
    }

    /// The status of the protected units before the first action, as
    /// recorded; empty when there is no record to read.
    pub(crate) fn protected_before(&self) -> Result<BTreeMap<String, UnitStatus>, Error> {
        let path = self.path.join(PROTECTED_BEFORE);
        match std::fs::read_to_string(&path) {
            Ok(t) => serde_json::from_str(&t).map_err(|e| Error::BadProgress { path, message: e.to_string() }),
            Err(_) => Ok(BTreeMap::new()),
        }
    }

    /// Records which units are failed before the first action.
    pub(crate) fn save_failed_before(&self, units: &BTreeSet<String>) -> Result<(), Error> {
        let path = self.path.join(FAILED_BEFORE);
        std::fs::write(&path, serde_json::to_string(units).unwrap_or_default()).map_err(|e| Error::io(&path, e))
    }

    /// The units failed before the first action, as recorded; none when
    /// the record cannot be read.
    pub(crate) fn failed_before(&self) -> BTreeSet<String> {
        std::fs::read_to_string(self.path.join(FAILED_BEFORE))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    /// Removes the records of the state before the apply, once it is done.
    pub(crate) fn remove_before_records(&self) {
        let _ = std::fs::remove_file(self.path.join(PROTECTED_BEFORE));
        let _ = std::fs::remove_file(self.path.join(FAILED_BEFORE));
    }
}

/// The log of an apply's output ([`RunDir::open_log`]): a file appended
/// to, bounded by [`LOG_KEEP`].
#[derive(Debug)]
pub struct LogFile {
    file: File,
    path: PathBuf,
    len: u64,
}

impl LogFile {
    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file opened for appending.
    fn reopen(&self) -> Result<File, Error> {
        OpenOptions::new().append(true).open(&self.path).map_err(|e| Error::io(&self.path, e))
    }

    /// Keeps the last [`LOG_KEEP`] bytes, after a line saying how many
    /// were dropped, replacing the file in one rename.
    fn compact(&mut self) -> std::io::Result<()> {
        let mut file = File::open(&self.path)?;
        let total = file.metadata()?.len();
        file.seek(std::io::SeekFrom::Start(total.saturating_sub(LOG_KEEP)))?;
        let mut tail = Vec::new();
        file.take(LOG_KEEP).read_to_end(&mut tail)?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let mut tmp = tempfile::Builder::new().prefix(&format!(".{LOG}.")).tempfile_in(dir)?;
        let dropped = total - tail.len() as u64;
        writeln!(tmp, "[safe-switch: the first {dropped} bytes of output were dropped, to keep the log bounded]")?;
        tmp.write_all(&tail)?;
        tmp.persist(&self.path).map_err(|e| e.error)?;
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.len = self.file.metadata()?.len();
        Ok(())
    }
}

impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write_all(buf)?;
        self.len += buf.len() as u64;
        if self.len > 2 * LOG_KEEP {
            self.compact()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn the_log_is_bounded_keeps_its_end_and_a_resume_appends_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let rd = RunDir::new(dir.path().join("rs"));
        assert!(rd.log_tail().is_none());
        let mut log = rd.open_log(true).unwrap();
        assert_eq!(log.path(), rd.path().join("activation.log"));
        let line = [b'x'; 1023];
        for _ in 0..3 * 1024 {
            log.write_all(&line).unwrap();
            log.write_all(b"\n").unwrap();
        }
        log.write_all(b"the end\n").unwrap();
        drop(log);
        let len = std::fs::metadata(rd.log_path()).unwrap().len();
        assert!(len <= 2 * LOG_KEEP + 200, "{len}");
        let text = std::fs::read_to_string(rd.log_path()).unwrap();
        assert!(text.starts_with("[safe-switch: the first "), "{}", &text[..80]);
        assert!(text.ends_with("xxx\nthe end\n"));
        // A resume appends; a new apply starts afresh.
        rd.open_log(false).unwrap().write_all(b"resumed\n").unwrap();
        let tail = rd.log_tail().unwrap();
        assert!(tail.cut && tail.text.ends_with("the end\nresumed\n"), "{:?}", &tail.text[tail.text.len() - 40..]);
        assert_eq!(tail.bytes, std::fs::metadata(rd.log_path()).unwrap().len());
        rd.open_log(true).unwrap().write_all(b"new\n").unwrap();
        let tail = rd.log_tail().unwrap();
        assert_eq!((tail.text.as_str(), tail.cut, tail.bytes), ("new\n", false, 4));
    }

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

    #[test]
    fn hand_over_and_output_files_are_in_the_directory_it_creates_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let rd = RunDir::new(dir.path().join("rs"));
        let path = rd.hand_over_path("caller-cgroup").unwrap();
        assert_eq!(path, rd.path().join(format!("caller-cgroup-{}", std::process::id())));
        assert_eq!(std::fs::metadata(rd.path()).unwrap().permissions().mode() & 0o777, 0o700);
        std::fs::remove_dir(rd.path()).unwrap();
        let (out, err) = rd.unit_output_paths("safe-switch-1.service").unwrap();
        assert_eq!(out, rd.path().join("safe-switch-1.service.stdout"));
        assert_eq!(err, rd.path().join("safe-switch-1.service.stderr"));
        assert_eq!(std::fs::metadata(rd.path()).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(rd.lock_path(), rd.path().join("lock"));
    }

    #[test]
    fn the_pending_record_round_trips_and_a_bad_one_is_an_error_naming_it() {
        use plan_model::{Action, Manager, PendingDeferral, Touch};
        let dir = tempfile::tempdir().unwrap();
        let rd = RunDir::new(dir.path().join("rs"));
        assert!(rd.read_pending().unwrap().is_empty(), "no record: nothing pending");
        let touch =
            Touch { touches: "a.service".into(), effect: Action::Restart, chain: vec![], cause: None, omitted: 0 };
        let pending = Pending {
            deferrals: vec![PendingDeferral {
                manager: Manager::Systemd,
                unit: "a.service".into(),
                actions: vec![Action::Restart],
                from: "/gen/a".into(),
                generation: "/gen/b".into(),
                invocation: "0123".into(),
                since_unix: 1,
                reasons: vec![],
                touch,
            }],
            ..Pending::default()
        };
        rd.save_pending(&pending).unwrap();
        assert_eq!(rd.read_pending().unwrap(), pending);
        let names: Vec<_> = std::fs::read_dir(rd.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["pending.json"], "nothing but the record is left");
        rd.save_pending(&Pending::default()).unwrap();
        assert!(!rd.pending_path().exists(), "an empty record is removed");
        rd.save_pending(&Pending::default()).unwrap();

        let bad = |rd: &RunDir| match rd.read_pending().unwrap_err() {
            Error::BadPending { path, message } => {
                assert_eq!(path, rd.pending_path());
                message
            }
            other => panic!("{other}"),
        };
        std::fs::write(rd.pending_path(), "token=secret-value\n").unwrap();
        let message = bad(&rd);
        assert!(!message.contains("secret-value"), "{message}");
        std::fs::write(rd.pending_path(), b"\xff\xfe").unwrap();
        assert_eq!(bad(&rd), "not UTF-8 text");
        std::fs::remove_file(rd.pending_path()).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", rd.pending_path()).unwrap();
        assert_eq!(bad(&rd), "not a regular file");
        std::fs::remove_file(rd.pending_path()).unwrap();
        std::fs::File::create(rd.pending_path()).unwrap().set_len(PENDING_LIMIT + 1).unwrap();
        assert_eq!(bad(&rd), "larger than 16 MiB");
        let err = rd.read_pending().unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}: not a valid record of pending deferrals", rd.pending_path().display())),
            "{err}"
        );
    }

    #[test]
    fn the_records_of_the_state_before_round_trip_and_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let rd = RunDir::new(dir.path());
        assert!(rd.protected_before().unwrap().is_empty(), "no record: nothing known");
        assert!(rd.failed_before().is_empty());
        let status = UnitStatus { active_state: "active".into(), main_pid: 7, ..Default::default() };
        let before: BTreeMap<String, UnitStatus> = [("sshd.service".to_owned(), status)].into();
        rd.save_protected_before(&before).unwrap();
        rd.save_failed_before(&["flaky.service".to_owned()].into()).unwrap();
        assert!(dir.path().join("protected-before.json").is_file());
        assert!(dir.path().join("failed-before.json").is_file());
        assert_eq!(rd.protected_before().unwrap(), before);
        assert_eq!(rd.failed_before(), ["flaky.service".to_owned()].into());
        rd.remove_before_records();
        assert!(rd.protected_before().unwrap().is_empty());
        assert!(rd.failed_before().is_empty());

        std::fs::write(dir.path().join("protected-before.json"), "{").unwrap();
        let err = rd.protected_before().unwrap_err();
        assert!(matches!(err, Error::BadProgress { .. }), "{err}");
    }
}
