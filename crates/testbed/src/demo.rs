//! The demo behind `scripts/demo` (`safe-switch-demo`): one switch of the
//! example CI runner host ([`crate::example`]) from generation A to B,
//! carried out twice, each time on a throwaway systemd of its own booted
//! from A, with an SSH session ticking and a CI build running under the
//! runner:
//!
//! 1. without protection (`safe-switch switch --toplevel B`), which acts
//!    as NixOS's `switch-to-configuration` would: sshd, its host-key unit
//!    and the runner are restarted, and the restart kills the build;
//! 2. with protection (`--protect sshd,gitlab-runner` by default): those
//!    actions are deferred, and the PIDs, the build and the session survive.
//!
//! The SSH session survives both: the example's sshd has
//! `KillMode=process`, as NixOS's has, so a restart kills only the
//! listening daemon and not the sessions it forked. The demo says so
//! rather than letting the session stand as proof.
//!
//! Every line of safe-switch output shown is real. The plan is printed
//! once, by the protected switch; of the unprotected switch only the
//! progress (its standard error) is shown.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::example::{ci_runner_a, ci_runner_b};
use crate::exec;
use crate::ssh::SessionReport;
use crate::{Config, TestBed, UnitState};

const TICK: Duration = Duration::from_millis(200);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
const SSHD: &str = "sshd.service";
const RUNNER: &str = "gitlab-runner.service";

/// How the demo runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// The safe-switch binary.
    pub safe_switch: PathBuf,
    /// `--protect` of the protected switch.
    pub protect: String,
    /// Pass `--no-isolate` to both switches.
    pub no_isolate: bool,
    /// Keep the beds' directories.
    pub keep: bool,
    /// Headings in bold (for a terminal).
    pub bold: bool,
}

/// What one of the two switches did.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    /// `--protect` given to it, if any.
    pub protect: Option<String>,
    /// safe-switch's exit status.
    pub status: ExitStatus,
    /// The example's units before the switch.
    pub before: BTreeMap<String, UnitState>,
    /// And after it.
    pub after: BTreeMap<String, UnitState>,
    /// The CI build's PID (inside the bed), if one was found.
    pub build: Option<u32>,
    /// Whether the build was still running after the switch.
    pub build_alive: bool,
    /// The SSH session.
    pub session: SessionReport,
    /// Whether the session kept ticking after the switch.
    pub still_ticking: bool,
    /// Whether the bed's systemd was gone after its teardown.
    pub torn_down: bool,
}

impl RunOutcome {
    /// Whether `unit` was restarted (another invocation) or stopped.
    pub fn disturbed(&self, unit: &str) -> bool {
        match (self.before.get(unit), self.after.get(unit)) {
            (Some(b), Some(a)) => b.main_pid != a.main_pid || b.invocation_id != a.invocation_id || !a.is_active(),
            _ => false,
        }
    }

    /// Whether the session ticked throughout, without a hole, and is still
    /// connected.
    pub fn session_intact(&self) -> bool {
        self.still_ticking && self.session.alive_at_end && self.session.consecutive()
    }
}

/// What the demo showed.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The switch without protection.
    pub unprotected: RunOutcome,
    /// The switch with `--protect`.
    pub protected: RunOutcome,
}

/// Runs the demo, writing what it shows to `out`. Returns what happened;
/// [`Outcome`] and [`verdict`] say whether it showed what it claims.
pub fn run(options: &Options, out: &mut dyn Write) -> Result<Outcome> {
    let mut demo = Demo { options, out };
    demo.intro()?;
    let unprotected = demo.switch_on_a_new_bed(1, None)?;
    let protected = demo.switch_on_a_new_bed(2, Some(&options.protect))?;
    let outcome = Outcome { unprotected, protected };
    demo.compare(&outcome)?;
    Ok(outcome)
}

/// Whether the demo showed what it claims: both switches succeeded;
/// without protection sshd and the runner were restarted and the build
/// killed; with protection every protected one of them kept its process
/// (and the runner its build), and the session ticked throughout. `Err`
/// names what did not hold.
pub fn verdict(outcome: &Outcome, protect: &str) -> std::result::Result<(), String> {
    let (u, p) = (&outcome.unprotected, &outcome.protected);
    let mut wrong = Vec::new();
    if !u.status.success() {
        wrong.push(format!("the unprotected switch failed ({})", u.status));
    }
    if !p.status.success() {
        wrong.push(format!("the protected switch failed ({})", p.status));
    }
    if !u.disturbed(SSHD) {
        wrong.push("without protection, sshd.service was not restarted".to_owned());
    }
    if !u.disturbed(RUNNER) {
        wrong.push("without protection, gitlab-runner.service was not restarted".to_owned());
    }
    if u.build.is_none() || u.build_alive {
        wrong.push("without protection, the CI build was not killed".to_owned());
    }
    for unit in [SSHD, RUNNER].into_iter().filter(|u| protected_by(protect, u)) {
        if p.disturbed(unit) {
            wrong.push(format!("with protection, {unit} was restarted"));
        }
    }
    if protected_by(protect, RUNNER) && !p.build_alive {
        wrong.push("with protection, the CI build did not survive".to_owned());
    }
    if !p.session_intact() {
        wrong.push("with protection, the SSH session was interrupted".to_owned());
    }
    if !u.torn_down || !p.torn_down {
        wrong.push("a test bed's systemd outlived its teardown".to_owned());
    }
    if wrong.is_empty() { Ok(()) } else { Err(wrong.join("; ")) }
}

/// Whether `--protect` names `unit` (by its bare name or in full).
fn protected_by(protect: &str, unit: &str) -> bool {
    let bare = unit.trim_end_matches(".service");
    protect.split(',').map(str::trim).any(|p| p == bare || p == unit)
}

struct Demo<'a> {
    options: &'a Options,
    out: &'a mut dyn Write,
}

impl Demo<'_> {
    fn say(&mut self, text: &str) -> Result<()> {
        writeln!(self.out, "{text}").map_err(output_error)
    }

    fn bold(&self, text: &str) -> String {
        if self.options.bold { format!("\x1b[1m{text}\x1b[0m") } else { text.to_owned() }
    }

    fn heading(&mut self, text: &str) -> Result<()> {
        let line = format!("\n{}", self.bold(&format!("== {text}")));
        self.say(&line)
    }

    fn intro(&mut self) -> Result<()> {
        self.heading("safe-switch demo: a CI runner host switched from generation A to generation B")?;
        self.say(
            "Generation A runs sshd, gitlab-runner (with a CI build running under it), node-exporter\n\
             and collectd. Generation B, a CI overlay, changes sshd, its host-key unit and the runner,\n\
             adds docker.service, changes node-exporter and drops collectd.\n\
             The same switch runs twice, each time on a throwaway systemd of its own booted from A\n\
             (this machine's systemd as PID 1 of new PID and mount namespaces, with D-Bus and a real\n\
             sshd on a loopback port), with an SSH session printing a tick every 200 ms:",
        )?;
        let protect = self.options.protect.clone();
        self.say(&format!(
            "  1. without protection, as NixOS's switch-to-configuration would do it;\n  \
             2. with --protect {protect}."
        ))
    }

    /// Boots a bed from A, opens the session, switches to B with or
    /// without protection, and shows what happened.
    fn switch_on_a_new_bed(&mut self, n: u32, protect: Option<&str>) -> Result<RunOutcome> {
        match protect {
            None => self.heading(&format!("{n}. The switch without protection"))?,
            Some(p) => self.heading(&format!("{n}. The same switch with --protect {p}"))?,
        }
        let mut config = Config::new(ci_runner_a());
        config.keep = config.keep || self.options.keep;
        let bed = TestBed::boot(&config)?;
        let b = bed.build_generation(&ci_runner_b())?;
        self.say(&format!(
            "booted a throwaway systemd {} with generation A (host PID {}) in {:.2} s",
            systemd_version(),
            bed.pid(),
            bed.boot_time().as_secs_f64()
        ))?;

        let units = units();
        let unit_refs: Vec<&str> = units.iter().map(String::as_str).collect();
        let before = bed.unit_states(&unit_refs)?;
        // The runner's child stands for a CI build in progress.
        let build = children(&bed, before.get(RUNNER).map_or(0, |s| s.main_pid)).into_iter().next();
        if let Some(build) = build {
            self.say(&format!("a CI build is running under {RUNNER} as PID {build}"))?;
        }
        let mut session = bed.ssh_session(TICK)?;
        session.wait_for_ticks(3, Duration::from_secs(10))?;
        self.say(&format!(
            "an SSH session to root@127.0.0.1:{} prints a tick every 200 ms ({} so far)",
            bed.ssh_port(),
            session.tick_count()
        ))?;

        let bin = self.options.safe_switch.to_string_lossy().into_owned();
        let b_str = b.to_string_lossy().into_owned();
        let mut argv = vec!["safe-switch", "switch", "--toplevel", &b_str];
        if let Some(p) = protect {
            argv.extend(["--protect", p]);
        }
        if self.options.no_isolate {
            argv.push("--no-isolate");
        }
        let shown = format!("\n$ {}", argv.join(" "));
        let shown = self.bold(&shown);
        self.say(&shown)?;
        if protect.is_none() {
            self.say("(its plan is left out: the plan is shown once, in part 2; its progress:)")?;
        }
        let switched_at = session.elapsed();
        let status = self.run_in(&bed, &argv, &bin, protect.is_some())?;
        let after = bed.unit_states(&unit_refs)?;
        let n_ticks = session.tick_count();
        // Let the session run a little longer, to show it is still alive.
        let still_ticking = session.wait_for_ticks(n_ticks + 5, Duration::from_secs(5)).is_ok();
        let build_alive = match build {
            Some(pid) => bed.run(&["test", "-d", &format!("/proc/{pid}")])?.success(),
            None => false,
        };
        let report = session.finish();

        self.say(&format!("\nwhat happened on bed {n}:"))?;
        self.print_changes(&before, &after)?;
        if let Some(build) = build {
            let fate = if build_alive { "still running" } else { "KILLED" };
            self.say(&format!("the CI build (PID {build}): {fate}"))?;
        }
        self.say(&format!(
            "the SSH session: {} ticks ({} after the switch began), numbered without a hole: {}, \
             longest pause {:.2} s, still connected: {}",
            report.ticks.len(),
            report.ticks_after(switched_at),
            yes_no(report.consecutive()),
            report.max_gap().as_secs_f64(),
            yes_no(report.alive_at_end)
        ))?;

        let pid = bed.pid();
        bed.shutdown()?;
        let torn_down = !Path::new(&format!("/proc/{pid}")).exists();
        if torn_down {
            self.say(&format!("bed {n} torn down: its systemd (host PID {pid}) and every process under it are gone"))?;
        } else {
            self.say(&format!("bed {n}: its systemd (host PID {pid}) is STILL RUNNING after the teardown"))?;
        }
        Ok(RunOutcome {
            protect: protect.map(str::to_owned),
            status,
            before,
            after,
            build,
            build_alive,
            session: report,
            still_ticking,
            torn_down,
        })
    }

    /// Runs a safe-switch command inside the bed, showing its output as it
    /// comes (standard output only when `with_stdout`).
    fn run_in(&mut self, bed: &TestBed, argv: &[&str], bin: &str, with_stdout: bool) -> Result<ExitStatus> {
        let mut cmd = bed.command(bin);
        cmd.args(&argv[1..]);
        let mut failed_write = None;
        let out = &mut self.out;
        let status = exec::run_streamed(&mut cmd, COMMAND_TIMEOUT, with_stdout, |text| {
            if failed_write.is_none()
                && let Err(e) = writeln!(out, "{text}")
            {
                failed_write = Some(e);
            }
        })?;
        if let Some(e) = failed_write {
            return Err(output_error(e));
        }
        if !status.success() {
            self.say(&format!("(exit status {})", status_text(status)))?;
        }
        Ok(status)
    }

    fn print_changes(
        &mut self,
        before: &BTreeMap<String, UnitState>,
        after: &BTreeMap<String, UnitState>,
    ) -> Result<()> {
        self.say(&format!(
            "{:<24} {:<10} {:<10} {:>10} {:>9}  EFFECT",
            "UNIT", "BEFORE", "AFTER", "PID BEFORE", "PID AFTER"
        ))?;
        for (unit, b) in before {
            let Some(a) = after.get(unit) else { continue };
            self.say(&format!(
                "{unit:<24} {:<10} {:<10} {:>10} {:>9}  {}",
                b.active_state,
                a.active_state,
                pid(b),
                pid(a),
                effect(b, a)
            ))?;
        }
        Ok(())
    }

    fn compare(&mut self, outcome: &Outcome) -> Result<()> {
        let (u, p) = (&outcome.unprotected, &outcome.protected);
        self.heading("The difference")?;
        let protect = format!("with --protect {}", self.options.protect);
        self.say(&format!("{:<24} {:<30} {protect}", "", "without protection"))?;
        for unit in [SSHD, "ssh-host-keys.service", RUNNER] {
            self.say(&format!("{unit:<24} {:<30} {}", fate(u, unit), fate(p, unit)))?;
        }
        let build = |r: &RunOutcome| match (r.build, r.build_alive) {
            (None, _) => "none found".to_owned(),
            (Some(_), true) => "still running".to_owned(),
            (Some(_), false) => "KILLED".to_owned(),
        };
        self.say(&format!("{:<24} {:<30} {}", "the CI build", build(u), build(p)))?;
        let session = |r: &RunOutcome| if r.session_intact() { "intact" } else { "INTERRUPTED" }.to_owned();
        self.say(&format!("{:<24} {:<30} {}", "the SSH session", session(u), session(p)))?;
        let switched = |r: &RunOutcome| format!("exit status {}", status_text(r.status));
        self.say(&format!("{:<24} {:<30} {}", "safe-switch", switched(u), switched(p)))?;
        self.say(
            "\nThe SSH session survives both switches, so it proves nothing by itself: this sshd, like\n\
             NixOS's, has KillMode=process, so restarting sshd.service kills only the listening daemon,\n\
             not the sessions it forked. What does not survive without protection is shown above: the\n\
             daemon itself (a new MainPID), the runner, and the CI build under it, which the runner's\n\
             restart kills. With protection their restarts are deferred: the new unit files are\n\
             installed, and the running processes stay as they are.",
        )
    }
}

/// What happened to a unit, with its PIDs.
fn fate(r: &RunOutcome, unit: &str) -> String {
    match (r.before.get(unit), r.after.get(unit)) {
        (Some(b), Some(a)) => match effect(b, a) {
            "restarted" if b.main_pid != 0 => format!("restarted (PID {} -> {})", b.main_pid, pid(a)),
            "untouched" if b.main_pid != 0 => format!("untouched (PID {})", b.main_pid),
            other => other.to_owned(),
        },
        _ => "-".to_owned(),
    }
}

fn effect(b: &UnitState, a: &UnitState) -> &'static str {
    match (b.is_active(), a.is_active()) {
        (false, true) => "started",
        (true, false) => "stopped",
        (true, true) if b.invocation_id != a.invocation_id => "restarted",
        _ => "untouched",
    }
}

/// The PIDs of the children of `pid` inside the bed.
fn children(bed: &TestBed, pid: u32) -> Vec<u32> {
    if pid == 0 {
        return Vec::new();
    }
    let path = format!("/proc/{pid}/task/{pid}/children");
    match bed.run(&["cat", &path]) {
        Ok(out) => out.stdout.split_whitespace().filter_map(|p| p.parse().ok()).collect(),
        Err(_) => Vec::new(),
    }
}

fn units() -> Vec<String> {
    let mut units: Vec<String> = ci_runner_a().units().into_iter().chain(ci_runner_b().units()).collect();
    units.sort();
    units.dedup();
    units
}

fn pid(state: &UnitState) -> String {
    if state.main_pid == 0 { "-".to_owned() } else { state.main_pid.to_string() }
}

fn status_text(status: ExitStatus) -> String {
    status.code().map_or_else(|| "killed".to_owned(), |c| c.to_string())
}

fn output_error(source: std::io::Error) -> Error {
    Error::Io { what: "writing to", path: PathBuf::from("the demo's output"), source }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "NO" }
}

fn systemd_version() -> String {
    let out = std::process::Command::new(Path::new("/lib/systemd/systemd")).arg("--version").output();
    out.ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(|l| l.trim_start_matches("systemd ").to_owned()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protect_names_units_by_bare_or_full_name() {
        assert!(protected_by("sshd,gitlab-runner", "gitlab-runner.service"));
        assert!(protected_by("sshd.service", "sshd.service"));
        assert!(!protected_by("sshd", "gitlab-runner.service"));
        assert!(!protected_by("sshdd", "sshd.service"));
    }
}
