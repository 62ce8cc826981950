//! The `switch` subcommand: plan, protect, then carry out the safe part of
//! the switch on this host.
//!
//! The order of a switch:
//!
//! 1. Checks that change nothing: root, the toplevel exists and has an
//!    executable `activate`, systemd answers on the system bus, no other
//!    safe-switch holds `/run/safe-switch/lock`.
//! 2. Unless `--no-isolate`, the same command line runs again inside a
//!    transient service (`safe-switch-<id>.service`, as `systemd-run
//!    --collect --service-type=exec` would start it). This process only
//!    relays its output and exit status; if it is killed, or the SSH
//!    connection or CI job it belongs to goes away, the switch carries on to
//!    the end, and its output stays in `/run/safe-switch/`.
//! 3. The lock is taken. An earlier apply that was interrupted is
//!    described and finished first.
//! 4. The plan is made (as `safe-switch plan` prints it) and printed. A plan
//!    refused by protection stops here with exit 3.
//! 5. The executor carries it out (stop, activate, re-exec, daemon-reload,
//!    `sysinit-reactivation.target`, reload, restart, start), then checks
//!    every protected unit.
//! 6. With `--rollback-on-failure`, a failed unit or a disturbed protected
//!    unit makes it switch back to the previous generation with the same
//!    protections, and both results are reported.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use plan_model::Plan;
use systemd_live::{
    ApplyOptions, ApplyReport, ProcessHost, RunDir, ServiceManager, StderrProgress, SystemdBus, TransientExit,
    TransientSpec,
};

use plan_report::Blocker;

use crate::args::{self, ProtectArgs};
use crate::cmd::plan::{self as live, CURRENT_SYSTEM};
use crate::exit::Outcome;

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

/// Runs `switch`.
pub fn run(args: args::SwitchArgs) -> anyhow::Result<Outcome> {
    let resolved = live::resolve_source(&args.source, &args.protect)?;
    let toplevel = resolved.toplevel.clone();
    preflight(&toplevel)?;
    let run = RunDir::system();
    if !args.apply.no_isolate {
        let mut bus = live::connect()?;
        if run.is_locked()? {
            bail!("another safe-switch is running (lock {} is held); nothing was changed", run.lock_path().display());
        }
        // The caller's own cgroup, always: a `--cgroup-file` given on the
        // command line is not handed on (see `isolate`).
        let cgroup_file = save_caller_cgroup(&run)?;
        let mut extra: Vec<String> = Vec::new();
        if let Some(path) = &cgroup_file {
            extra.extend(["--cgroup-file".to_owned(), path.display().to_string()]);
        }
        // A built flake is handed over as it is: the isolated apply must
        // switch to the generation this process built and showed, without
        // evaluating the flake again.
        let resolved_file = match (&args.source.flake, &args.source.resolved_file) {
            (Some(_), None) => {
                let path = run.hand_over_path("resolved")?;
                crate::source::write_resolved(&path, &resolved)?;
                extra.extend(["--resolved-file".to_owned(), path.display().to_string()]);
                Some(path)
            }
            _ => None,
        };
        let outcome = isolate(&mut bus, &run, &extra);
        for path in cgroup_file.into_iter().chain(resolved_file) {
            let _ = std::fs::remove_file(path);
        }
        return outcome;
    }
    let _lock = lock(&run, args.apply.isolated)?;
    let mut bus = live::connect()?;
    let options = apply_options(&args.apply);
    if let Some(outcome) = finish_interrupted(&mut bus, &run, &options, &args.protect)? {
        return Ok(outcome);
    }
    let mut lp = live::live_plan(Path::new(CURRENT_SYSTEM), &toplevel, &args.protect, &mut bus)?;
    lp.plan.new.provenance = Some(resolved.provenance);
    live::print_plan(&lp, &args.output)?;
    if lp.plan.protection.refused {
        say!("refused: the switch would touch a protected unit (see the plan above); nothing was changed");
        return Ok(Outcome::Blocked);
    }
    apply_plan(&mut bus, &run, &lp.plan, &args.apply, &args.protect)
}

/// Exit status of an isolated run that found the lock held by another
/// safe-switch. Only the calling safe-switch sees it: it reports the lock
/// and exits 1 itself.
pub const LOCK_HELD_STATUS: u8 = 75;

/// Another safe-switch holds the run directory's lock: nothing was changed.
#[derive(Debug)]
pub struct LockHeld {
    /// The lock file.
    pub path: PathBuf,
    /// Whether this run was isolated by a calling safe-switch, which then
    /// reports the lock (see [`LOCK_HELD_STATUS`]).
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
pub fn lock(run: &RunDir, isolated: bool) -> anyhow::Result<systemd_live::LockGuard> {
    match run.lock() {
        Ok(guard) => Ok(guard),
        Err(systemd_live::Error::Locked { path }) => Err(LockHeld { path, isolated }.into()),
        Err(e) => Err(e.into()),
    }
}

/// Refuses, before any change, what cannot be switched: a caller that is
/// not root and a toplevel without an executable `activate`.
pub fn preflight(toplevel: &Path) -> anyhow::Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!(
            "switch must run as root (it stops and starts units and runs the activation script); \
             nothing was changed. `safe-switch plan` shows the plan without root"
        );
    }
    if let Ok((_, systemd_plan::Layout::SystemManager)) = systemd_plan::unit_directory(toplevel) {
        bail!(
            "{}: a system-manager generation; safe-switch plans and checks system-manager hosts \
             (`safe-switch plan`, `check`) but does not switch them yet; nothing was changed",
            toplevel.display()
        );
    }
    let activate = toplevel.join("activate");
    let meta = std::fs::metadata(&activate).with_context(|| {
        format!(
            "{}: the toplevel has no activation script; refusing to switch, nothing was changed",
            activate.display()
        )
    })?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        bail!("{}: not an executable file; refusing to switch, nothing was changed", activate.display());
    }
    Ok(())
}

/// The executor's options from the command line.
pub fn apply_options(a: &args::ExecutionArgs) -> ApplyOptions {
    ApplyOptions { job_timeout: Duration::from_secs(a.job_timeout.max(1)), ..ApplyOptions::default() }
}

/// Finishes an apply that was interrupted, if there is one. Returns the
/// outcome to exit with when it could not be finished (the new switch is
/// then not attempted).
///
/// What remains of the interrupted plan is protected again with the
/// protections in force now (`protect`, the policy files, the caller)
/// besides those it was planned with: a unit protected only now is
/// deferred, or in refuse mode the resume is refused (exit 3) and nothing
/// more is changed.
pub fn finish_interrupted(
    mgr: &mut dyn ServiceManager,
    run: &RunDir,
    options: &ApplyOptions,
    protect: &ProtectArgs,
) -> anyhow::Result<Option<Outcome>> {
    let Some(mut interrupted) = run.interrupted()? else {
        return Ok(None);
    };
    say_text!("{}", interrupted.describe());
    let target = interrupted.progress.plan.new.path.clone();
    let plan = reprotect_remaining(mgr, &interrupted.progress, protect).with_context(|| {
        format!("cannot plan what remains of the interrupted switch to {target}; nothing more was changed")
    })?;
    if plan.protection.refused {
        say_text!("{}", plan_report::text::refusal_text(&plan));
        say!(
            "refused to finish the interrupted switch to {target}: what remains of it would touch a unit protected now; nothing more was changed"
        );
        return Ok(Some(Outcome::Blocked));
    }
    let before: std::collections::BTreeSet<&str> =
        interrupted.progress.plan.units.iter().filter(|u| u.deferral.is_some()).map(|u| u.unit.as_str()).collect();
    for unit in plan.units.iter().filter(|u| u.deferral.is_some() && !before.contains(u.unit.as_str())) {
        if let Some(d) = &unit.deferral {
            let line = plan_report::text::touch_line(&d.actions, "deferred", &Blocker::of_deferral(&unit.unit, d));
            say!("  {line} (protected now)");
        }
    }
    say!("resuming it first, with the protections in force now");
    interrupted.progress.plan = plan;
    let report = systemd_live::resume(interrupted, mgr, &mut ProcessHost, run, options, &mut StderrProgress)?;
    say_text!("{}", report_text(&report));
    if report.aborted.is_some() {
        bail!("the interrupted switch to {target} could not be finished (see above); run again to resume it");
    }
    if !report.success() {
        say!("the interrupted switch to {target} finished with failures; not switching further");
        return Ok(Some(Outcome::UnitsFailed));
    }
    say!("the interrupted switch to {target} is finished");
    Ok(None)
}

/// What remains of an interrupted apply's plan, protected with the
/// protections it was made with plus those in force now, against the live
/// state now.
fn reprotect_remaining(
    mgr: &mut dyn ServiceManager,
    progress: &systemd_live::ProgressFile,
    protect: &ProtectArgs,
) -> anyhow::Result<Plan> {
    let mut plan = systemd_live::remaining(progress);
    let old = systemd_plan::load(Path::new(&plan.old.path))?;
    let new = systemd_plan::load(Path::new(&plan.new.path))?;
    let live = mgr.snapshot().context("cannot read the live state from systemd")?;
    let mut args = protect.clone();
    let earlier = crate::protect::recorded_in(&progress.plan);
    args.recorded = Some(match &args.recorded {
        Some(recorded) => crate::protect::union(recorded, earlier),
        None => earlier,
    });
    crate::protect::protect_plan(&mut plan, &old, &new, &live, &args)?;
    Ok(plan)
}

fn report_text(report: &ApplyReport) -> String {
    let mut s = report.render_text();
    if let Some(status) = &report.failed_status {
        s.push_str(status);
        if !status.ends_with('\n') {
            s.push('\n');
        }
    }
    s
}

/// Carries out `plan` (the caller holds the lock), prints what happened,
/// and rolls back when asked to and needed. Returns the outcome: `Ok`,
/// or `UnitsFailed` when a unit failed or a protected unit was disturbed.
/// An apply that stopped early (systemd unreachable, a reload that never
/// finished) is an error that says which phases were done; the next run
/// resumes it.
pub fn apply_plan(
    bus: &mut dyn ServiceManager,
    run: &RunDir,
    plan: &Plan,
    apply: &args::ExecutionArgs,
    protect: &ProtectArgs,
) -> anyhow::Result<Outcome> {
    let options = apply_options(apply);
    let report = systemd_live::apply(plan, bus, &mut ProcessHost, run, &options, &mut StderrProgress)?;
    say_text!("{}", report_text(&report));
    if report.success() {
        say!("switched to {}", plan.new.path);
        return Ok(Outcome::Ok);
    }
    if apply.rollback_on_failure {
        say!("rolling back to {} with the same protections", plan.old.path);
        let back = live::live_plan(Path::new(CURRENT_SYSTEM), Path::new(&plan.old.path), protect, bus)
            .context("cannot plan the rollback")?;
        let rb = systemd_live::apply(&back.plan, bus, &mut ProcessHost, run, &options, &mut StderrProgress)?;
        say_text!("rollback:\n{}", report_text(&rb));
        if rb.success() {
            say!("rolled back to {}; the switch to {} failed (see above)", plan.old.path, plan.new.path);
        } else {
            say!("the rollback to {} failed as well (see above)", plan.old.path);
        }
        if rb.aborted.is_some() {
            bail!("the rollback stopped early; run `safe-switch switch` again to resume it");
        }
        return Ok(Outcome::UnitsFailed);
    }
    if let Some(why) = &report.aborted {
        bail!(
            "the switch to {} stopped early ({why}); the phases above marked done were carried out, the rest was not; run again to resume",
            plan.new.path
        );
    }
    Ok(Outcome::UnitsFailed)
}

/// Writes the caller's cgroup where the isolated apply can read it, so the
/// implicit protection of the caller (its SSH session, its CI runner)
/// still covers the process that asked for the switch. The isolated apply
/// protects its own cgroup besides, and reads the file only from the run
/// directory, owned by root. Returns the file.
pub fn save_caller_cgroup(run: &RunDir) -> anyhow::Result<Option<PathBuf>> {
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
pub fn isolate(bus: &mut SystemdBus, run: &RunDir, extra_args: &[String]) -> anyhow::Result<Outcome> {
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let mut argv = vec![exe.display().to_string()];
    argv.extend(without_cgroup_file(std::env::args().skip(1)));
    argv.extend(["--no-isolate".to_owned(), "--isolated".to_owned()]);
    argv.extend(extra_args.iter().cloned());
    let id = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0)
    );
    let unit = format!("safe-switch-{id}.service");
    let (stdout, stderr) = run.unit_output_paths(&unit)?;
    let spec = TransientSpec {
        unit: unit.clone(),
        description: "safe-switch apply".to_owned(),
        argv,
        environment: passed_env().filter_map(|k| std::env::var(k).ok().map(|v| format!("{k}={v}"))).collect(),
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
        TransientExit::Exited(0) => Ok(Outcome::Ok),
        TransientExit::Exited(3) => Ok(Outcome::Blocked),
        TransientExit::Exited(4) => Ok(Outcome::UnitsFailed),
        TransientExit::Exited(2) => {
            Err(crate::exit::usage(format!("the switch in {unit} refused its command line (see above)")))
        }
        // Another safe-switch took the lock between this process's check
        // and the isolated run's start.
        TransientExit::Exited(code) if code == i32::from(LOCK_HELD_STATUS) => {
            bail!("another safe-switch is running (lock {} is held); nothing was changed", run.lock_path().display())
        }
        TransientExit::Exited(code) => {
            bail!("the switch in {unit} exited with status {code} (see above)")
        }
        TransientExit::Killed(sig) => bail!(
            "the switch in {unit} was killed by signal {sig}; run `safe-switch switch` again to see where it stopped and resume it"
        ),
        TransientExit::Unknown(what) => {
            bail!("the switch in {unit} ended without an exit status ({what})")
        }
    }
}

/// Copies what a file gained since the last call to one of this process's
/// streams. Write errors are ignored: the caller may have gone away, and
/// the switch must not depend on it.
struct Relay {
    path: PathBuf,
    offset: u64,
    to: Box<dyn Write>,
}

impl Relay {
    fn new(path: PathBuf, to: Box<dyn Write>) -> Relay {
        Relay { path, offset: 0, to }
    }

    fn pump(&mut self) {
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
