//! Running programs with a deadline and captured output.
//!
//! Every program the test bed starts is awaited with a timeout: a wedged
//! `systemctl` or `ssh` must fail a test, not hang the test run.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// The captured result of a finished program.
#[derive(Clone, Debug)]
pub struct Output {
    /// The command line, for messages.
    pub command: String,
    /// How it exited.
    pub status: ExitStatus,
    /// Standard output, lossily decoded.
    pub stdout: String,
    /// Standard error, lossily decoded.
    pub stderr: String,
}

impl Output {
    /// Whether the program exited with status 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The exit code, or `None` when the program was killed by a signal.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Turns a non-zero exit into [`Error::Failed`].
    pub fn check(self) -> Result<Output> {
        if self.success() {
            Ok(self)
        } else {
            Err(Error::Failed {
                command: self.command,
                status: self.status.to_string(),
                stdout: self.stdout,
                stderr: self.stderr,
            })
        }
    }
}

/// Renders a command line for messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut out = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        out.push(' ');
        let arg = arg.to_string_lossy();
        if arg.contains(char::is_whitespace) || arg.is_empty() {
            out.push_str(&format!("'{arg}'"));
        } else {
            out.push_str(&arg);
        }
    }
    out
}

/// Runs `cmd` to completion with captured output, killing it when it runs
/// longer than `timeout`. Standard input is closed.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    run_with_input(cmd, None, timeout)
}

/// Like [`run`], with `input` as the program's standard input when given.
fn run_with_input(cmd: &mut Command, input: Option<&[u8]>, timeout: Duration) -> Result<Output> {
    let command = describe(cmd);
    let mut child = cmd
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn { command: command.clone(), source })?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        // Written on a thread of its own, so that a program that prints
        // before it reads never blocks; a program that stops reading fails
        // by itself. Dropping the pipe ends the input.
        let input = input.to_vec();
        thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
    }
    let status = wait_timeout(&mut child, timeout);
    let status = match status {
        Some(status) => status,
        None => {
            // The deadline passed: kill the program so that no stray is left
            // behind, then report the timeout.
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Timeout { what: command, timeout });
        }
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    Ok(Output { command, status, stdout, stderr })
}

/// Reads a pipe to its end on a separate thread, so that a chatty program
/// never blocks on a full pipe while we wait for it.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Waits for `child` to exit for at most `timeout`; `None` when it is still
/// running.
pub(crate) fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(_) => return None,
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Polls `probe` until it returns `Some`, for at most `timeout`.
pub(crate) fn poll<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    loop {
        if let Some(value) = probe()? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout { what: what.to_owned(), timeout });
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Runs `cmd` with the caller's standard output and error (so its output
/// appears as it is printed), killing it when it runs longer than
/// `timeout`.
pub fn run_inherited(cmd: &mut Command, timeout: Duration) -> Result<ExitStatus> {
    let command = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|source| Error::Spawn { command: command.clone(), source })?;
    match wait_timeout(&mut child, timeout) {
        Some(status) => Ok(status),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            Err(Error::Timeout { what: command, timeout })
        }
    }
}

/// Runs `cmd` and hands each line of its standard error, and of its
/// standard output when `with_stdout` (through the same pipe, so the lines
/// come in the order the program wrote them; otherwise standard output is
/// discarded), to `line` as it is printed. Kills the program when it runs
/// longer than `timeout`. Standard input is closed.
pub fn run_streamed(
    cmd: &mut Command,
    timeout: Duration,
    with_stdout: bool,
    mut line: impl FnMut(&str),
) -> Result<ExitStatus> {
    use std::io::BufRead;
    use std::sync::mpsc;

    let command = describe(cmd);
    let spawn_error = |source| Error::Spawn { command: command.clone(), source };
    let (reader, writer) = std::io::pipe().map_err(spawn_error)?;
    let stdout = if with_stdout { Stdio::from(writer.try_clone().map_err(spawn_error)?) } else { Stdio::null() };
    let spawned = cmd.stdin(Stdio::null()).stdout(stdout).stderr(writer).spawn();
    // Our copies of the pipe's write end are gone with the Command's
    // arguments: the reader sees the end when the program (and whatever
    // inherited the pipe) is done.
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = spawned.map_err(spawn_error)?;
    let (tx, rx) = mpsc::channel::<String>();
    let relay = thread::spawn(move || {
        for text in std::io::BufReader::new(reader).split(b'\n') {
            let Ok(text) = text else { break };
            if tx.send(String::from_utf8_lossy(&text).into_owned()).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + timeout;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(text) => line(&text),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Timeout { what: command, timeout });
            }
        }
    }
    let _ = relay.join();
    match wait_timeout(&mut child, deadline.saturating_duration_since(Instant::now())) {
        Some(status) => Ok(status),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            Err(Error::Timeout { what: command, timeout })
        }
    }
}

/// How long writing or copying one executable may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// Writes `text` to `path` as an executable file (mode 0755) through a
/// child process, so that no descriptor of the file open for writing ever
/// exists in this process. A test process starts programs from many
/// threads at once; a child forked while this process held the file open
/// for writing keeps that descriptor until it execs, and running the file
/// at that moment fails with "Text file busy" (ETXTBSY).
pub fn write_executable(path: &Path, text: &str) -> Result<()> {
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "cat > \"$1\" && chmod 0755 \"$1\"", "sh"]).arg(path);
    run_with_input(&mut cmd, Some(text.as_bytes()), WRITE_TIMEOUT)?.check()?;
    Ok(())
}

/// Copies the program `from` to `to` (mode 0755) with `cp`, for the reason
/// [`write_executable`] gives: the copy is never open for writing in this
/// process.
pub fn copy_executable(from: &Path, to: &Path) -> Result<()> {
    run(Command::new("cp").arg("--").arg(from).arg(to), WRITE_TIMEOUT)?.check()?;
    run(Command::new("chmod").arg("0755").arg(to), WRITE_TIMEOUT)?.check()?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn streamed_lines_keep_the_order_they_were_written_in() {
        let script = "echo one; echo two >&2; echo three; echo four >&2; exit 3";
        let mut lines = Vec::new();
        let status =
            run_streamed(Command::new("/bin/sh").args(["-c", script]), Duration::from_secs(10), true, |text| {
                lines.push(text.to_owned())
            })
            .unwrap();
        assert_eq!(status.code(), Some(3));
        assert_eq!(lines, ["one", "two", "three", "four"]);
        let mut lines = Vec::new();
        run_streamed(Command::new("/bin/sh").args(["-c", script]), Duration::from_secs(10), false, |text| {
            lines.push(text.to_owned())
        })
        .unwrap();
        assert_eq!(lines, ["two", "four"], "standard output is left out");
    }

    #[test]
    fn a_streamed_program_past_its_deadline_is_killed() {
        let err =
            run_streamed(Command::new("/bin/sleep").arg("10"), Duration::from_millis(200), true, |_| {}).unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    }

    /// An executable written while other threads start programs runs at
    /// once: no child of theirs holds it open for writing.
    #[test]
    fn an_executable_written_while_other_threads_spawn_programs_runs() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let spawners: Vec<_> = (0..4)
            .map(|_| {
                let stop = Arc::clone(&stop);
                thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let _ = Command::new("/bin/true").status();
                    }
                })
            })
            .collect();
        let mut busy = 0;
        for i in 0..300 {
            let path = dir.path().join(format!("run{i}"));
            write_executable(&path, "#!/bin/sh\nexit 7\n").unwrap();
            match Command::new(&path).status() {
                Ok(status) => assert_eq!(status.code(), Some(7)),
                Err(err) if err.kind() == std::io::ErrorKind::ExecutableFileBusy => busy += 1,
                Err(err) => panic!("{}: {err}", path.display()),
            }
        }
        stop.store(true, Ordering::Relaxed);
        for spawner in spawners {
            spawner.join().unwrap();
        }
        assert_eq!(busy, 0, "{busy} of 300 runs failed with ETXTBSY");
        let copy = dir.path().join("copy");
        copy_executable(&dir.path().join("run0"), &copy).unwrap();
        assert_eq!(Command::new(&copy).status().unwrap().code(), Some(7));
    }
}
