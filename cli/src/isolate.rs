//! Isolation: `switch`, `apply` and `settle` run again inside a transient systemd
//! unit (as `systemd-run --collect --pipe` would start it), so that a
//! dropped SSH connection or a killed CI job cannot leave a half-switched
//! host. This process relays the isolated run's output and exit status.
//!
//! Also the run directory's lock, which both the caller (a quick check)
//! and the isolated run (holding it) take.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use systemd_live::{RunDir, ServiceManager, SystemdBus, TransientExit, TransientSpec};

use crate::exit::{IsolatedExit, Outcome};
use crate::source::Resolved;

/// Environment variables handed to the isolated apply; everything else
/// comes from systemd's clean service environment.
const PASSED_ENV: &[&str] = &[
    "DBUS_SYSTEM_BUS_ADDRESS",
    "PATH",
    "SAFE_SWITCH_PLATFORM",
    "NO_COLOR",
    "LOCALE_ARCHIVE",
    "TZDIR",
    "NIX_PATH",
    "NIX_CONFIG",
    "NIX_REMOTE",
    "RUST_BACKTRACE",
    "RUST_LOG",
    // The reports of an isolated switch are written as sudo's caller, as
    // those of a switch in the caller's own process.
    "SUDO_UID",
    "SUDO_GID",
];

/// Runs the command line of this process again, isolated, after checking
/// that no other safe-switch holds the lock (when `check_lock`: a run
/// that waits for the lock skips it), and hands it over what it must not
/// work out again: the caller's cgroup (always; protected in the isolated
/// run too) and, for a built `--flake`, the generation this process built
/// and showed. The hand-over files are removed afterwards.
pub(crate) fn run_isolated(run: &RunDir, built: Option<&Resolved>, check_lock: bool) -> anyhow::Result<Outcome> {
    let mut bus = crate::host::connect()?;
    hand_over(run, built, check_lock, |run, extra| isolate(&mut bus, run, extra))
}

/// Checks that no other safe-switch holds the lock (with `check_lock`),
/// writes the hand-over files (the caller's cgroup, the built
/// generation), runs `isolated` with the options that name them, and
/// removes them afterwards. Shared by the systemd and the launchd
/// isolation.
pub(crate) fn hand_over(
    run: &RunDir,
    built: Option<&Resolved>,
    check_lock: bool,
    isolated: impl FnOnce(&RunDir, &[String]) -> anyhow::Result<Outcome>,
) -> anyhow::Result<Outcome> {
    if check_lock && run.is_locked()? {
        return Err(LockHeld { path: run.lock_path(), isolated: false }.into());
    }
    let mut extra: Vec<String> = Vec::new();
    let mut files = Vec::new();
    if let Some(path) = save_caller_cgroup(run)? {
        extra.extend(["--cgroup-file".to_owned(), path.display().to_string()]);
        files.push(path);
    }
    if let Some(resolved) = built {
        let path = run.hand_over_path("resolved")?;
        crate::source::write_resolved(&path, resolved)?;
        extra.extend(["--resolved-file".to_owned(), path.display().to_string()]);
        files.push(path);
    }
    let outcome = isolated(run, &extra);
    for path in files {
        let _ = std::fs::remove_file(path);
    }
    outcome
}

/// Another safe-switch holds the run directory's lock: nothing was changed.
#[derive(Debug)]
pub(crate) struct LockHeld {
    /// The lock file.
    pub path: PathBuf,
    /// Whether this run was isolated by a calling safe-switch, which then
    /// reports the lock (see [`crate::exit::LOCK_HELD`]).
    pub isolated: bool,
}

impl std::fmt::Display for LockHeld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "another safe-switch is running (lock {} is held); nothing was changed", self.path.display())
    }
}

impl std::error::Error for LockHeld {}

/// Takes the run directory's lock; another safe-switch holding it is a
/// [`LockHeld`] error.
pub(crate) fn lock(run: &RunDir, isolated: bool) -> anyhow::Result<systemd_live::LockGuard> {
    match run.lock() {
        Ok(guard) => Ok(guard),
        Err(systemd_live::Error::Locked { path }) => Err(LockHeld { path, isolated }.into()),
        Err(e) => Err(e.into()),
    }
}

/// Writes the caller's cgroup where the isolated apply can read it, so the
/// implicit protection of the caller (its SSH session, its CI runner)
/// still covers the process that asked for the switch. The isolated apply
/// protects its own cgroup besides, and reads the file only from the run
/// directory, owned by root. Returns the file.
fn save_caller_cgroup(run: &RunDir) -> anyhow::Result<Option<PathBuf>> {
    let proc_file =
        crate::test_hooks::path(crate::test_hooks::PROC_CGROUP).unwrap_or_else(|| PathBuf::from("/proc/self/cgroup"));
    let Ok(text) = std::fs::read_to_string(proc_file) else {
        return Ok(None);
    };
    let path = run.hand_over_path("caller-cgroup")?;
    write_private(&path, text.as_bytes())?;
    Ok(Some(path))
}

/// Writes a hand-over file: created anew (never through an existing file
/// or link), mode 0600.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("{}: cannot write", path.display()))?;
    file.write_all(bytes).with_context(|| format!("{}: cannot write", path.display()))
}

/// The environment variables handed to the isolated apply: [`PASSED_ENV`],
/// and in a debug build the test-only ones ([`crate::test_hooks`]) but the
/// one that stands for this process's cgroup: the isolated apply has its
/// own, and gets this one through the hand-over file.
fn passed_env() -> impl Iterator<Item = &'static str> {
    let hooks: &[&str] = if crate::test_hooks::ENABLED { crate::test_hooks::ALL } else { &[] };
    PASSED_ENV.iter().chain(hooks.iter().filter(|h| **h != crate::test_hooks::PROC_CGROUP)).copied()
}

/// The command line without `--cgroup-file`: the isolated apply gets the
/// caller's own hand-over file instead.
fn without_cgroup_file(args: impl Iterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip_value = false;
    for arg in args {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        if arg == "--cgroup-file" {
            skip_value = true;
        } else if !arg.starts_with("--cgroup-file=") {
            out.push(arg);
        }
    }
    out
}

/// Runs this very command line again, with `--no-isolate`, as a transient
/// service, relays its output and returns its outcome.
fn isolate(bus: &mut SystemdBus, run: &RunDir, extra_args: &[String]) -> anyhow::Result<Outcome> {
    let argv = isolated_argv(extra_args)?;
    let id = isolated_id();
    let unit = format!("safe-switch-{id}.service");
    let (stdout, stderr) = run.unit_output_paths(&unit)?;
    let spec = TransientSpec {
        unit: unit.clone(),
        description: "safe-switch apply".to_owned(),
        argv,
        environment: isolated_env().into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
        working_directory: std::env::current_dir().ok(),
        stdout: stdout.clone(),
        stderr: stderr.clone(),
    };
    say!(
        "applying in the transient unit {unit}: the switch goes on even if this connection drops; its output is kept in {}",
        stderr.display()
    );
    let mut out = Relay::new(stdout.clone(), Box::new(std::io::stdout()));
    let mut err = Relay::new(stderr.clone(), Box::new(std::io::stderr()));
    let exit = bus
        .run_transient(&spec, &mut || {
            out.pump();
            err.pump();
        })
        .with_context(|| format!("cannot run the switch in the transient unit {unit}; nothing was changed"))?;
    out.pump();
    err.pump();
    let _ = std::fs::remove_file(&stdout);
    let _ = std::fs::remove_file(&stderr);
    match exit {
        TransientExit::Exited(code) => isolated_outcome(code, &unit, run),
        TransientExit::Killed(sig) => bail!(
            "the switch in {unit} was killed by signal {sig}; run `safe-switch switch` again to see where it stopped and resume it"
        ),
        TransientExit::Unknown(what) => {
            bail!("the switch in {unit} ended without an exit status ({what})")
        }
    }
}

/// The command line of the isolated run: this very command line, without
/// `--cgroup-file`, with `--no-isolate --isolated` and the hand-over
/// options.
pub(crate) fn isolated_argv(extra_args: &[String]) -> anyhow::Result<Vec<String>> {
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let mut argv = vec![exe.display().to_string()];
    argv.extend(without_cgroup_file(std::env::args().skip(1)));
    argv.extend(["--no-isolate".to_owned(), "--isolated".to_owned()]);
    argv.extend(extra_args.iter().cloned());
    Ok(argv)
}

/// The environment of the isolated run: the variables it is handed
/// ([`passed_env`]) that are set here.
pub(crate) fn isolated_env() -> Vec<(String, String)> {
    passed_env().filter_map(|k| std::env::var(k).ok().map(|v| (k.to_owned(), v))).collect()
}

/// A name for the isolated run, unique on this host.
pub(crate) fn isolated_id() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0)
    )
}

/// The outcome of an isolated run (`what` names where it ran) that exited
/// with `code`.
pub(crate) fn isolated_outcome(code: i32, what: &str, run: &RunDir) -> anyhow::Result<Outcome> {
    match crate::exit::of_isolated_run(code) {
        IsolatedExit::Outcome(outcome) => Ok(outcome),
        IsolatedExit::Usage => {
            Err(crate::exit::usage(format!("the switch in {what} refused its command line (see above)")))
        }
        // Another safe-switch took the lock between this process's
        // check and the isolated run's start.
        IsolatedExit::LockHeld => Err(LockHeld { path: run.lock_path(), isolated: false }.into()),
        IsolatedExit::Failed => bail!("the switch in {what} exited with status {code} (see above)"),
    }
}

/// Copies what a file gained since the last call to one of this process's
/// streams. Write errors are ignored: the caller may have gone away, and
/// the switch must not depend on it.
pub(crate) struct Relay {
    path: PathBuf,
    offset: u64,
    to: Box<dyn Write>,
}

impl Relay {
    pub(crate) fn new(path: PathBuf, to: Box<dyn Write>) -> Relay {
        Relay { path, offset: 0, to }
    }

    pub(crate) fn pump(&mut self) {
        let Ok(mut f) = File::open(&self.path) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        if let Ok(n) = f.read_to_end(&mut buf) {
            self.offset += n as u64;
            let _ = self.to.write_all(&buf);
            let _ = self.to.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_isolated_run_gets_no_cgroup_file_from_the_command_line() {
        let args =
            ["switch", "--cgroup-file", "/dev/null", "--toplevel", "/t", "--cgroup-file=/x", "--protect", "sshd"];
        assert_eq!(
            without_cgroup_file(args.iter().map(|a| (*a).to_owned())),
            ["switch", "--toplevel", "/t", "--protect", "sshd"]
        );
    }
}
