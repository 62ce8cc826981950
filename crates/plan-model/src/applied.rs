//! What carrying a plan out did: the jobs, phases and checks of an apply,
//! as the executor (`systemd-live`) records them and the reports show
//! them.
//!
//! An [`ApplyReport`] is an inert value like the plan: the executor fills
//! it, `plan-report` renders it in every format (the `applied` section of
//! a switch's or an apply's report), and the exit-code policy reads its
//! verdict ([`ApplyReport::success`]).

use serde::{Deserialize, Serialize};

use crate::observe::Observation;
use crate::{Action, ActiveState, Phase};

/// A job the executor queues for a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobKind {
    /// `StopUnit`.
    Stop,
    /// `ReloadUnit`.
    Reload,
    /// `RestartUnit`.
    Restart,
    /// `StartUnit`.
    Start,
}

impl JobKind {
    /// The job for a plan action; `None` for [`Action::Skip`], which does
    /// nothing to the running unit.
    pub fn for_action(action: Action) -> Option<JobKind> {
        match action {
            Action::Stop => Some(JobKind::Stop),
            Action::Reload => Some(JobKind::Reload),
            Action::Restart => Some(JobKind::Restart),
            Action::Start => Some(JobKind::Start),
            Action::Skip => None,
        }
    }

    /// The verb, as printed.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Stop => "stop",
            JobKind::Reload => "reload",
            JobKind::Restart => "restart",
            JobKind::Start => "start",
        }
    }
}

impl std::fmt::Display for JobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a job ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum JobResult {
    /// systemd reported `done`.
    Done,
    /// systemd reported another result: `failed`, `timeout`, `dependency`,
    /// `canceled`, `skipped`, `invalid`, ...
    Failed {
        /// systemd's result string.
        systemd_result: String,
    },
    /// The job did not finish within the job timeout; it was cancelled.
    TimedOut {
        /// The limit, in seconds.
        seconds: u64,
    },
    /// systemd refused to queue the job (the D-Bus call failed).
    NotQueued {
        /// systemd's error message.
        message: String,
    },
    /// systemd did not answer, even when asked again: whether the job was
    /// queued, and how it ended, is not known. This says nothing about
    /// the unit; the phase cannot be counted as done.
    NoReply {
        /// What went unanswered.
        message: String,
    },
}

impl JobResult {
    /// Tells whether the job succeeded.
    pub fn is_done(&self) -> bool {
        matches!(self, JobResult::Done)
    }

    /// A short description, e.g. `done`, `failed`, `timed out after 90 s`.
    pub fn describe(&self) -> String {
        match self {
            JobResult::Done => "done".to_owned(),
            JobResult::Failed { systemd_result } => systemd_result.clone(),
            JobResult::TimedOut { seconds } => format!("timed out after {seconds} s, cancelled"),
            JobResult::NotQueued { message } => format!("not queued: {message}"),
            JobResult::NoReply { message } => format!("no reply from systemd, outcome unknown: {message}"),
        }
    }
}

/// The state of one unit, re-read (never cached) from the manager.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitStatus {
    /// `LoadState` (`not-found` when the manager does not know the unit).
    pub load_state: String,
    /// `ActiveState`.
    pub active_state: ActiveState,
    /// `SubState`.
    pub sub_state: String,
    /// `MainPID` (services only; 0 otherwise).
    pub main_pid: u32,
    /// `InvocationID` as 32 lowercase hex digits, or empty.
    pub invocation_id: String,
    /// `Result` of a service (`success`, `exit-code`, `timeout`, ...).
    pub result: String,
    /// `ExecMainCode` (1 exited, 2 killed, 3 dumped; 0 when it never ran).
    pub exec_main_code: i32,
    /// `ExecMainStatus`: the exit status or signal number.
    pub exec_main_status: i32,
}

impl UnitStatus {
    /// Tells whether the unit counts as failed after a switch, as NixOS's
    /// switch decides it: `failed`, or a service waiting to auto-restart
    /// after a non-zero exit.
    pub fn is_failed(&self) -> bool {
        self.active_state == ActiveState::Failed || (self.sub_state == "auto-restart" && self.exec_main_status != 0)
    }

    /// One line: `failed (Result=exit-code, status=3)`.
    pub fn summary(&self) -> String {
        let mut s = format!("{}/{}", self.active_state, self.sub_state);
        if !self.result.is_empty() && self.result != "success" {
            s.push_str(&format!(", result {}", self.result));
        }
        if self.exec_main_code == 1 && self.exec_main_status != 0 {
            s.push_str(&format!(", main process exited with status {}", self.exec_main_status));
        } else if self.exec_main_code >= 2 {
            s.push_str(&format!(", main process killed by signal {}", self.exec_main_status));
        }
        s
    }
}

impl UnitStatus {
    /// Tells whether the unit is running or starting.
    pub fn is_running(&self) -> bool {
        self.active_state.is_running()
    }
}

/// One job as carried out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job.
    pub kind: JobKind,
    /// The unit.
    pub unit: String,
    /// How it ended.
    #[serde(flatten)]
    pub result: JobResult,
}

/// One phase as carried out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseRecord {
    /// The phase.
    pub phase: Phase,
    /// Its jobs, when it queues jobs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<JobRecord>,
    /// What happened, for steps (`exit status 0`, `not present: skipped`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Whether the phase succeeded as a whole.
    pub ok: bool,
}

/// A unit that failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitFailure {
    /// The unit.
    pub unit: String,
    /// Its status after the switch.
    pub status: UnitStatus,
    /// The failed job, when one failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobRecord>,
}

/// The check of one protected unit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtectedCheck {
    /// The unit.
    pub unit: String,
    /// Its status before the switch.
    pub before: UnitStatus,
    /// Its status after.
    pub after: UnitStatus,
    /// What changed, when something did; `None` means undisturbed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disturbed: Option<String>,
}

/// A unit an apply that stopped early left before the plan was carried
/// out for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeftUnit {
    /// The unit.
    pub unit: String,
    /// Its state when the apply stopped; `None` when it could not be read.
    pub status: Option<UnitStatus>,
    /// What the plan still does to it, in order: the next run's resume
    /// carries it out.
    pub remaining: Vec<Action>,
}

/// What an apply did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyReport {
    /// The generation switched to.
    pub new: String,
    /// Phases carried out, in order.
    pub phases: Vec<PhaseRecord>,
    /// Phases not carried out because the apply stopped early.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_done: Vec<Phase>,
    /// Why the apply stopped early.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aborted: Option<String>,
    /// When it stopped early: every unit the plan still acts on, with its
    /// state then, sorted by unit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left: Vec<LeftUnit>,
    /// Units that failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<UnitFailure>,
    /// `systemctl status` of the failed units, when available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_status: Option<String>,
    /// Units failed after the switch that were failed before it too and
    /// that it did not act on: listed, not counted against the switch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub already_failed: Vec<UnitFailure>,
    /// The check of every protected unit that was running before.
    #[serde(default)]
    pub protected: Vec<ProtectedCheck>,
    /// What systemd was seen doing while the plan was carried out,
    /// compared with the plan; absent when the manager could not be
    /// watched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<Observation>,
    /// The end of the output of the activation script and of the phases'
    /// programs, as kept in the run directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<LogTail>,
    /// The apply stopped at a check before any change (system-manager's
    /// pre-activation assertions): nothing was changed, and nothing is
    /// left to resume.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unchanged: bool,
}

impl ApplyReport {
    /// Reads an apply report from its JSON form (the `applied` object of
    /// a switch's JSON report). Errors never quote a value from the text.
    pub fn from_json(text: &str) -> Result<ApplyReport, crate::json::JsonError> {
        crate::json::object_from_str(text)
    }

    /// Tells whether everything went as planned: every phase ran and
    /// succeeded, no unit failed and no protected unit was disturbed.
    pub fn success(&self) -> bool {
        self.aborted.is_none()
            && self.phases.iter().all(|p| p.ok)
            && self.failed.is_empty()
            && !self.protected_disturbed()
    }

    /// Tells whether a protected unit was disturbed: its check afterwards
    /// found another process or invocation, or systemd was seen acting on
    /// it where the plan did not say it would.
    pub fn protected_disturbed(&self) -> bool {
        self.protected.iter().any(|c| c.disturbed.is_some()) || self.unplanned_on_protected().next().is_some()
    }

    /// The effects on protected units that the plan neither lists nor
    /// predicts.
    pub fn unplanned_on_protected(&self) -> impl Iterator<Item = &crate::observe::Effect> {
        self.observed.iter().flat_map(|o| o.unplanned_on_protected())
    }

    /// The jobs carried out, over all phases.
    pub fn jobs(&self) -> impl Iterator<Item = &JobRecord> {
        self.phases.iter().flat_map(|p| p.jobs.iter())
    }

    /// A summary for people: what was done, what failed, what was not
    /// done.
    pub fn render_text(&self) -> String {
        let mut s = String::new();
        for p in &self.phases {
            let failed: Vec<String> = p
                .jobs
                .iter()
                .filter(|j| !j.result.is_done())
                .map(|j| format!("{} ({})", j.unit, j.result.describe()))
                .collect();
            let done = p.jobs.iter().filter(|j| j.result.is_done()).count();
            let mut line = format!("{}: ", p.phase.name());
            if let Some(note) = &p.note {
                line.push_str(note);
            } else {
                line.push_str(&format!("{done} of {} jobs done", p.jobs.len()));
            }
            if !failed.is_empty() {
                line.push_str(&format!("; failed: {}", failed.join(", ")));
            }
            s.push_str(&line);
            s.push('\n');
        }
        if let Some(why) = &self.aborted {
            s.push_str(&format!("stopped early: {why}\n"));
        }
        if !self.not_done.is_empty() {
            let names: Vec<&str> = self.not_done.iter().map(|p| p.name()).collect();
            s.push_str(&format!("not done: {}\n", names.join(", ")));
        }
        if self.unchanged {
            s.push_str("nothing was changed\n");
        }
        if !self.left.is_empty() {
            s.push_str("left as they are until the next run resumes the switch:\n");
            for ((state, remaining), units) in left_groups(&self.left) {
                s.push_str(&format!("  {state}, still to {remaining}: {}\n", units.join(", ")));
            }
        }
        if !self.failed.is_empty() {
            s.push_str("warning: the following units failed:\n");
            for f in &self.failed {
                s.push_str(&format!("  {}: {}\n", f.unit, f.status.summary()));
            }
        }
        if !self.already_failed.is_empty() {
            s.push_str("note: these units were failed before the switch as well, and it did not act on them:\n");
            for f in &self.already_failed {
                s.push_str(&format!("  {}: {}\n", f.unit, f.status.summary()));
            }
        }
        if let Some(o) = &self.observed {
            s.push_str(&o.render_text());
        }
        for c in &self.protected {
            let outside: Vec<String> = self
                .unplanned_on_protected()
                .filter(|e| e.unit == c.unit)
                .map(|e| format!("{} outside the plan", e.effect))
                .collect();
            match &c.disturbed {
                None if outside.is_empty() => s.push_str(&format!(
                    "protected {}: untouched (MainPID {}, InvocationID {})\n",
                    c.unit, c.after.main_pid, c.after.invocation_id
                )),
                None => s.push_str(&format!("PROTECTED UNIT DISTURBED: {}: {}\n", c.unit, outside.join(", "))),
                Some(what) => s.push_str(&format!("PROTECTED UNIT DISTURBED: {}: {what}\n", c.unit)),
            }
        }
        // A protected unit that was not running before is not checked, but
        // systemd acting on it outside the plan disturbs it all the same.
        for e in self.unplanned_on_protected().filter(|e| !self.protected.iter().any(|c| c.unit == e.unit)) {
            s.push_str(&format!("PROTECTED UNIT DISTURBED: {}: {} outside the plan\n", e.unit, e.effect));
        }
        if let Some(log) = &self.log {
            s.push_str(&format!(
                "output of the activation and the phases' programs: {} ({} bytes)\n",
                log.path, log.bytes
            ));
        }
        s
    }
}

/// The end of the output the activation script and the phases' programs
/// wrote during an apply, as the reports attach it: at most
/// [`LogTail::LIMIT`] bytes, every control character but the line feed
/// and the tab, and the controls that reorder text, written as an escape
/// (`\x1b`, `\u{202e}`), so that nothing a generation's script prints
/// can drive a terminal or hide text in a report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogTail {
    /// The file the whole output (up to its bound) is kept in.
    pub path: String,
    /// How many bytes the file holds.
    pub bytes: u64,
    /// Whether the text starts after the beginning of the file.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cut: bool,
    /// The end of the output.
    pub text: String,
}

impl LogTail {
    /// The most bytes of output a report attaches.
    pub const LIMIT: usize = 64 << 10;

    /// The tail of the log at `path`, `total` bytes long, from `end`, its
    /// last bytes: at most [`LogTail::LIMIT`] of them, starting at a line
    /// when one starts in their first kilobyte, read as UTF-8 (invalid
    /// sequences replaced), control characters escaped.
    pub fn of(path: &str, total: u64, end: &[u8]) -> LogTail {
        let start = end.len().saturating_sub(Self::LIMIT);
        let mut tail = &end[start..];
        let cut = total > tail.len() as u64;
        if cut && let Some(nl) = tail.iter().take(1024).position(|&b| b == b'\n') {
            tail = &tail[nl + 1..];
        }
        let hidden = |c: char| {
            (c.is_control() && c != '\n' && c != '\t')
                || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        };
        let mut text = String::with_capacity(tail.len());
        for c in String::from_utf8_lossy(tail).chars() {
            match c {
                c if hidden(c) && (c as u32) < 0x100 => text.push_str(&format!("\\x{:02x}", c as u32)),
                c if hidden(c) => text.push_str(&format!("\\u{{{:x}}}", c as u32)),
                c => text.push(c),
            }
        }
        LogTail { path: path.to_owned(), bytes: total, cut, text }
    }
}

/// The units left by an apply that stopped early, grouped by their state
/// (`inactive/dead`) and what remains to do (`start`, `stop, then
/// start`), in the order of the first unit of each group.
fn left_groups(left: &[LeftUnit]) -> Vec<((String, String), Vec<&str>)> {
    let mut groups: Vec<((String, String), Vec<&str>)> = Vec::new();
    for l in left {
        let state = match &l.status {
            Some(st) => format!("{}/{}", st.active_state, st.sub_state),
            None => "state unknown".to_owned(),
        };
        let remaining = l.remaining.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(", then ");
        let key = (state, remaining);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, units)) => units.push(&l.unit),
            None => groups.push((key, vec![&l.unit])),
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_tail_keeps_the_end_from_a_line_start_and_escapes_controls() {
        let bytes = b"setting up /etc...\n\x1b[31mred\x1b[0m\ttab\r\n\xff\xfe\xe2\x80\xae\n";
        let short = LogTail::of("/run/x.log", bytes.len() as u64, bytes);
        assert_eq!(short.text, "setting up /etc...\n\\x1b[31mred\\x1b[0m\ttab\\x0d\n\u{fffd}\u{fffd}\\u{202e}\n");
        assert!(!short.cut);
        assert_eq!(short.bytes, 43);
        let mut long = Vec::new();
        for i in 0..10_000 {
            long.extend_from_slice(format!("line {i}\n").as_bytes());
        }
        let tail = LogTail::of("/run/x.log", long.len() as u64, &long);
        assert!(tail.cut);
        assert_eq!(tail.bytes, long.len() as u64);
        assert!(tail.text.len() <= LogTail::LIMIT);
        assert!(tail.text.starts_with("line "), "starts at a line: {:?}", &tail.text[..20]);
        assert!(tail.text.ends_with("line 9999\n"));
        // Only the end of a longer file given: cut all the same.
        let end = b"tail of a\nlong file\n";
        let tail = LogTail::of("/run/x.log", 1 << 30, end);
        assert!(tail.cut);
        assert_eq!(tail.text, "long file\n");
    }
}
