//! Parsers for what `launchctl` prints, turning a capture from a Mac into
//! [`LiveJob`] values. Pure: the caller runs `launchctl` and hands over its
//! standard output.
//!
//! `launchctl print` is documented as not being an API, so only the few
//! top-level fields a switch needs are read, and unknown lines are
//! ignored. `launchctl list` is the legacy but stable table form.

use std::collections::BTreeMap;

use thiserror::Error;

use crate::live::LiveJob;

/// A `launchctl` capture that does not have the expected shape.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{what}, line {line}: {message}")]
pub struct CaptureError {
    /// Which output: `launchctl list` or `launchctl print`.
    pub what: &'static str,
    /// The 1-based line.
    pub line: usize,
    /// What is wrong with it.
    pub message: String,
}

/// Parses the table `launchctl list` prints (`PID`, `Status`, `Label`,
/// tab-separated, after a header line) into loaded jobs by label.
///
/// A PID of `-` means the job is loaded but not running. The status is the
/// last exit status; launchd reports a job killed by a signal as the
/// negated signal number, which is kept as it is.
pub fn parse_list(text: &str) -> Result<BTreeMap<String, LiveJob>, CaptureError> {
    let err = |line: usize, message: String| CaptureError { what: "launchctl list", line, message };
    let mut jobs = BTreeMap::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if line.trim().is_empty() || (index == 0 && line.starts_with("PID")) {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        let [pid, status, label] = fields.as_slice() else {
            return Err(err(number, format!("expected PID, status and label separated by tabs, got {line:?}")));
        };
        let pid = match pid.trim() {
            "-" => None,
            p => Some(p.parse::<u32>().map_err(|_| err(number, format!("bad PID {p:?}")))?),
        };
        let last_exit_code = match status.trim() {
            "-" => None,
            s => Some(s.parse::<i64>().map_err(|_| err(number, format!("bad status {s:?}")))?),
        };
        let job = LiveJob {
            pid,
            state: Some(if pid.is_some() { "running" } else { "not running" }.to_owned()),
            runs: None,
            last_exit_code,
            path: None,
        };
        jobs.insert(label.trim().to_owned(), job);
    }
    Ok(jobs)
}

/// Parses `launchctl print <domain>/<label>` for a loaded job and returns
/// its label and state.
///
/// Only lines directly inside the outer block (one tab deep) are read:
/// nested blocks such as the resource coalition have `state` lines of their
/// own that say nothing about the job. `last exit code = 78: EX_CONFIG`
/// gives 78; `(never exited)` gives none; a `last terminating signal`
/// (`Terminated: 15`) gives -15, the way `launchctl list` reports it.
pub fn parse_print(text: &str) -> Result<(String, LiveJob), CaptureError> {
    let err = |line: usize, message: String| CaptureError { what: "launchctl print", line, message };
    let mut lines = text.lines().enumerate().skip_while(|(_, l)| l.trim().is_empty());
    let Some((index, header)) = lines.next() else {
        return Err(err(1, "the output is empty".to_owned()));
    };
    let Some(target) = header.strip_suffix(" = {") else {
        return Err(err(index + 1, format!("expected `<service-target> = {{`, got {header:?}")));
    };
    let label = target.rsplit('/').next().unwrap_or(target).to_owned();
    let mut job = LiveJob::default();
    let mut signal = None;
    for (index, line) in lines {
        let Some(inner) = line.strip_prefix('\t') else {
            continue;
        };
        if inner.starts_with('\t') {
            continue;
        }
        let Some((key, value)) = inner.split_once(" = ") else {
            continue;
        };
        let number = index + 1;
        match key {
            "state" => job.state = Some(value.to_owned()),
            "path" => job.path = Some(value.to_owned()),
            "pid" => {
                job.pid = Some(value.parse().map_err(|_| err(number, format!("bad pid {value:?}")))?);
            }
            "runs" => {
                job.runs = Some(value.parse().map_err(|_| err(number, format!("bad runs {value:?}")))?);
            }
            "last exit code" => {
                let code = value.split(':').next().unwrap_or(value).trim();
                job.last_exit_code = code.parse().ok();
            }
            "last terminating signal" => {
                let number_part = value.rsplit(':').next().unwrap_or(value).trim();
                signal = number_part.parse::<i64>().ok();
            }
            _ => {}
        }
    }
    if let Some(signal) = signal {
        job.last_exit_code = Some(-signal);
    }
    Ok((label, job))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail by panicking")]
mod tests {
    use super::*;

    const PRINT_RUNNING: &str = "system/org.nixos.nix-daemon = {
\tactive count = 3
\tpath = /Library/LaunchDaemons/org.nixos.nix-daemon.plist
\ttype = LaunchDaemon
\tstate = running

\tprogram = /bin/sh
\targuments = {
\t\t/bin/sh
\t\t-c
\t}

\tdomain = system
\truns = 2
\tpid = 4711
\tlast terminating signal = Hangup: 1

\tresource coalition = {
\t\tID = 905
\t\tstate = active
\t\tpid = 1
\t}

\tjob state = running
}
";

    #[test]
    fn print_reads_top_level_fields_only() {
        let (label, job) = parse_print(PRINT_RUNNING).unwrap();
        assert_eq!(label, "org.nixos.nix-daemon");
        assert_eq!(job.state.as_deref(), Some("running"));
        assert_eq!(job.pid, Some(4711));
        assert_eq!(job.runs, Some(2));
        assert_eq!(job.last_exit_code, Some(-1));
        assert_eq!(job.path.as_deref(), Some("/Library/LaunchDaemons/org.nixos.nix-daemon.plist"));
    }

    #[test]
    fn print_of_an_exited_job() {
        let text =
            "gui/501/org.nixos.backup = {\n\tstate = not running\n\truns = 1\n\tlast exit code = 78: EX_CONFIG\n}\n";
        let (label, job) = parse_print(text).unwrap();
        assert_eq!(label, "org.nixos.backup");
        assert_eq!((job.pid, job.last_exit_code), (None, Some(78)));
        let never = "system/x = {\n\tstate = waiting\n\tlast exit code = (never exited)\n}\n";
        assert_eq!(parse_print(never).unwrap().1.last_exit_code, None);
    }

    #[test]
    fn print_errors_name_the_line() {
        let err = parse_print("Could not find service \"x\" in domain for system\n").unwrap_err();
        assert_eq!(err.line, 1);
        let err = parse_print("system/x = {\n\tpid = many\n}\n").unwrap_err();
        assert_eq!(err.to_string(), "launchctl print, line 2: bad pid \"many\"");
    }

    #[test]
    fn list_table() {
        let text = "PID\tStatus\tLabel\n-\t0\tcom.apple.SafeEjectGPUAgent\n4711\t0\torg.nixos.nix-daemon\n612\t-15\torg.nixos.gitlab-runner\n-\t78\torg.nixos.broken-thing\n";
        let jobs = parse_list(text).unwrap();
        assert_eq!(jobs.len(), 4);
        assert_eq!(jobs["org.nixos.nix-daemon"].pid, Some(4711));
        assert_eq!(jobs["org.nixos.gitlab-runner"].last_exit_code, Some(-15));
        let broken = &jobs["org.nixos.broken-thing"];
        assert_eq!((broken.pid, broken.last_exit_code), (None, Some(78)));
        assert_eq!(broken.describe(), "not running");
    }

    #[test]
    fn list_errors_name_the_line() {
        let err = parse_list("PID\tStatus\tLabel\n12 0 x\n").unwrap_err();
        assert_eq!(err.line, 2);
        let err = parse_list("x\t0\tlabel\n").unwrap_err();
        assert_eq!(err.to_string(), "launchctl list, line 1: bad PID \"x\"");
    }
}
