//! The narrow view of launchd the live side needs, and `launchctl` behind
//! it.
//!
//! [`Launchd`] runs one `launchctl` command and returns its exit status and
//! output; [`LaunchctlProgram`] does it with the real program (or, in
//! tests, the launchd simulator of the `testbed` crate, which takes its
//! place). The typed calls on top ([`print`], [`call`]) read launchctl's
//! documented exit codes: 113 is "not loaded" (`Could not find service`),
//! 3 a boot-out of a job that is not loaded, 5 and 37 a bootstrap that
//! races a teardown or finds the job still loaded.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use launchd_plan::{Domain, LiveJob};

use crate::Error;

/// launchctl's exit status for a service that is not loaded.
pub const NOT_LOADED: i32 = 113;
/// `Boot-out failed: 3: No such process`.
pub const NO_SUCH_PROCESS: i32 = 3;
/// `Bootstrap failed: 5: Input/output error`: already loaded, still
/// being torn down, or a bad plist.
pub const IO_ERROR: i32 = 5;
/// `Bootstrap failed: 37: Operation already in progress`.
pub const IN_PROGRESS: i32 = 37;
/// `Boot-out failed: 36: Operation now in progress`.
pub const NOW_IN_PROGRESS: i32 = 36;

/// The path of `launchctl` on a Mac.
pub const DEFAULT_LAUNCHCTL: &str = "/bin/launchctl";

/// The most read of one command's standard output or error.
const OUTPUT_LIMIT: u64 = 1 << 20;

/// How one `launchctl` command ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallOutput {
    /// The exit status (a negative signal number when killed).
    pub code: i32,
    /// Standard output, at most 1 MiB of it.
    pub stdout: String,
    /// Standard error, at most 1 MiB of it.
    pub stderr: String,
}

impl CallOutput {
    /// The first line of standard error, for messages.
    pub fn first_error_line(&self) -> String {
        self.stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim().chars().take(300).collect()
    }
}

/// Runs `launchctl` commands.
pub trait Launchd {
    /// Runs `launchctl ARGS` and returns how it ended. An error means it
    /// could not be run or did not end in time.
    fn run(&mut self, args: &[String]) -> Result<CallOutput, Error>;
}

/// The `launchctl` program.
#[derive(Clone, Debug)]
pub struct LaunchctlProgram {
    /// The program; `/bin/launchctl` on a Mac.
    pub path: PathBuf,
    /// How long one command may take before it is killed.
    pub timeout: Duration,
}

impl Default for LaunchctlProgram {
    fn default() -> Self {
        LaunchctlProgram { path: PathBuf::from(DEFAULT_LAUNCHCTL), timeout: Duration::from_secs(60) }
    }
}

impl Launchd for LaunchctlProgram {
    fn run(&mut self, args: &[String]) -> Result<CallOutput, Error> {
        let fail = |message: String| Error::Run { program: self.path.clone(), message };
        let mut child = Command::new(&self.path)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| fail(format!("cannot run it: {e}")))?;
        let readers = [child.stdout.take().map(reader), child.stderr.take().map(reader)];
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(fail(format!("`{}` did not end within {:?}; killed", args.join(" "), self.timeout)));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => return Err(fail(format!("cannot wait for it: {e}"))),
            }
        };
        let [stdout, stderr] = readers.map(|r| r.and_then(|h| h.join().ok()).unwrap_or_default());
        use std::os::unix::process::ExitStatusExt;
        let code = status.code().unwrap_or_else(|| -status.signal().unwrap_or(0));
        Ok(CallOutput { code, stdout, stderr })
    }
}

/// Reads a pipe to its end on a thread of its own, keeping at most
/// [`OUTPUT_LIMIT`] bytes of it.
fn reader(pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut pipe = pipe;
        let mut bytes = Vec::new();
        let _ = (&mut pipe).take(OUTPUT_LIMIT).read_to_end(&mut bytes);
        let _ = std::io::copy(&mut pipe, &mut std::io::sink());
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// The service target `<domain>/<label>`.
pub fn target(domain: Domain, label: &str) -> String {
    format!("{domain}/{label}")
}

/// `launchctl print <domain>/<label>`: the job's state, or `None` when it
/// is not loaded (exit 113).
pub fn print(launchd: &mut dyn Launchd, domain: Domain, label: &str) -> Result<Option<LiveJob>, Error> {
    let args = vec!["print".to_owned(), target(domain, label)];
    let out = launchd.run(&args)?;
    match out.code {
        0 => {
            let (_, job) = launchd_plan::parse_print(&out.stdout)
                .map_err(|source| Error::Capture { command: command(&args), source })?;
            Ok(Some(job))
        }
        NOT_LOADED => Ok(None),
        // Older macOS: a non-zero status other than 113 with the same words.
        _ if out.stderr.contains("Could not find service") => Ok(None),
        code => Err(Error::Launchctl { command: command(&args), code, stderr: out.first_error_line() }),
    }
}

/// Runs one call and returns how it ended (the caller reads the code).
pub fn call(launchd: &mut dyn Launchd, args: &[String]) -> Result<CallOutput, Error> {
    launchd.run(args)
}

/// A command line as printed: `launchctl ARGS`.
pub fn command(args: &[String]) -> String {
    format!("launchctl {}", args.join(" "))
}
