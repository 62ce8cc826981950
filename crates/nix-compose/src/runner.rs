//! Running `nix`, behind a narrow trait so that the composition logic can be
//! tested with a fake.
//!
//! Two ways of running are needed. Quick queries (`flake lock`, `flake
//! metadata`, `eval`) capture everything: their output is parsed, and their
//! diagnostics are only worth showing when they fail. A build streams Nix's
//! progress to the user as it happens; the lines from Nix's first `error:`
//! on are held back instead, so that the caller can print them verbatim
//! under its own one-line summary without the user seeing them twice.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::error::NixError;

/// How Nix's standard error is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StderrMode {
    /// Captured whole, shown by the caller only on failure.
    Capture,
    /// Forwarded to our standard error line by line as it arrives, except
    /// the error report at the end, which is captured.
    Stream,
}

/// What a finished `nix` invocation left behind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NixOutput {
    /// Whether `nix` exited with status 0.
    pub success: bool,
    /// The exit status, when `nix` exited normally.
    pub code: Option<i32>,
    /// Everything `nix` printed on standard output.
    pub stdout: String,
    /// The captured part of standard error: all of it in
    /// [`StderrMode::Capture`], the error report in [`StderrMode::Stream`].
    pub stderr: String,
}

/// Runs `nix` with the given arguments (without the program name).
pub trait NixRunner {
    /// Runs one invocation to completion. Returns `Err` only when `nix`
    /// could not be started at all; a failing `nix` is an `Ok` output with
    /// `success == false`.
    fn run(&self, args: &[OsString], stderr: StderrMode) -> Result<NixOutput, NixError>;
}

/// The real `nix` program.
#[derive(Clone, Debug)]
pub struct NixCommand {
    /// The program to run (default: `nix`, found on `PATH`).
    pub program: PathBuf,
    /// Environment variables set for every invocation, on top of ours
    /// (e.g. `NIX_CONFIG`).
    pub env: Vec<(OsString, OsString)>,
}

impl Default for NixCommand {
    fn default() -> Self {
        NixCommand { program: PathBuf::from("nix"), env: Vec::new() }
    }
}

/// Options given to every invocation. Flakes and the new command line are
/// enabled for the invocation itself, as `nixos-rebuild` does, so that a
/// machine whose configuration does not enable them still works.
const COMMON_ARGS: &[&str] = &["--extra-experimental-features", "nix-command flakes"];

impl NixRunner for NixCommand {
    fn run(&self, args: &[OsString], mode: StderrMode) -> Result<NixOutput, NixError> {
        let mut cmd = Command::new(&self.program);
        cmd.args(COMMON_ARGS).args(args);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                NixError::NotFound { program: self.program.clone() }
            } else {
                NixError::Spawn { program: self.program.clone(), source }
            }
        })?;
        // Standard output is read on its own thread so that neither pipe can
        // fill up and stall Nix while the other is being read.
        let stdout = child.stdout.take();
        let reader = std::thread::spawn(move || {
            let mut buf = String::new();
            if let Some(mut out) = stdout {
                let _ = out.read_to_string(&mut buf);
            }
            buf
        });
        let mut captured = String::new();
        if let Some(err) = child.stderr.take() {
            match mode {
                StderrMode::Capture => {
                    let _ = BufReader::new(err).read_to_string(&mut captured);
                }
                StderrMode::Stream => stream_stderr(err, &mut captured),
            }
        }
        let status = child.wait().map_err(|source| NixError::Spawn { program: self.program.clone(), source })?;
        let stdout = reader.join().unwrap_or_default();
        Ok(NixOutput { success: status.success(), code: status.code(), stdout, stderr: captured })
    }
}

/// Forwards Nix's standard error to ours line by line until the first line
/// that starts an error report, and captures that line and the rest.
fn stream_stderr(err: impl Read, captured: &mut String) {
    let mut ours = std::io::stderr();
    let mut in_error = false;
    for line in BufReader::new(err).split(b'\n') {
        let Ok(line) = line else { break };
        let text = String::from_utf8_lossy(&line);
        if !in_error && starts_error_report(&text) {
            in_error = true;
        }
        if in_error {
            captured.push_str(&text);
            captured.push('\n');
        } else {
            let _ = ours.write_all(&line);
            let _ = ours.write_all(b"\n");
        }
    }
}

/// Whether a line of Nix's standard error opens an error report. Nix
/// colours the word `error` on terminals, so escape sequences are skipped.
pub fn starts_error_report(line: &str) -> bool {
    strip_ansi(line).starts_with("error:")
}

/// Removes ANSI escape sequences (colours and the like).
pub fn strip_ansi(s: &str) -> String {
    strip_ansi_escapes::strip_str(s)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn coloured_error_lines_are_recognised() {
        assert!(starts_error_report("error: flake 'x' does not provide attribute"));
        assert!(starts_error_report("\u{1b}[31;1merror:\u{1b}[0m builder failed"));
        assert!(!starts_error_report("building '/nix/store/abc-x.drv'..."));
        assert!(!starts_error_report("warning: error: not at start"));
    }

    #[test]
    fn streaming_captures_only_the_error_report() {
        let input = b"building '/nix/store/a.drv'...\nerror: builder failed\n  last log line\n";
        let mut captured = String::new();
        stream_stderr(&input[..], &mut captured);
        assert_eq!(captured, "error: builder failed\n  last log line\n");
    }

    #[test]
    fn a_missing_program_is_reported_as_such() {
        let nix = NixCommand { program: PathBuf::from("/nonexistent/bin/nix"), env: vec![] };
        let err = nix.run(&[], StderrMode::Capture).unwrap_err();
        assert!(matches!(err, NixError::NotFound { .. }), "{err:?}");
    }
}
