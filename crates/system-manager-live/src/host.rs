//! [`SystemManagerHost`]: the executor's [`Host`] on a system-manager host.
//!
//! system-manager's activation, in its order, is the generation's
//! pre-activation assertions, its `/etc` files and state, daemon-reload and
//! `sysinit-reactivation.target`, userborn, tmpfiles, the unit actions, the
//! masks, and the state file. A switch runs the parts that are not unit
//! actions with the generation's own engine where the engine has a command
//! that touches no unit (`bin/preActivationAssertions`,
//! `bin/register-profile`, `bin/prepopulate`); the rest is done here, as
//! the engine does it, or by the executor through systemd.
//!
//! The state file tells the truth at every step: `prepopulate` writes the
//! new generation's services map into it, so right after it every unit
//! whose actions are still to come (or deferred) gets its entry from
//! before the switch back ([`kept_until_acted`]); once the unit actions
//! are done, only the units whose running instance is still not the new
//! generation's keep theirs ([`kept_after`]).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use plan_model::{Action, LiveState, LiveUnit, Manager, Pending, Plan, Step};
use systemd_live::{Host, ProcessHost};

use crate::state::{self, Services, State};

/// Where system-manager registers the generation it activates (a Nix
/// profile).
pub const PROFILE: &str = "/nix/var/nix/profiles/system-manager-profiles/system-manager";

/// The host path `absolute` below `root` (`/` on a real host).
pub fn below(root: &Path, absolute: &str) -> PathBuf {
    root.join(absolute.trim_start_matches('/'))
}

/// The units whose running instance is not the new generation's once
/// `plan` is carried out: those it defers, and those earlier switches
/// deferred (`pending`) that it does not carry out. This is the record of
/// pending deferrals the switch leaves ([`Pending::merge`]), taking every
/// recorded instance for still running: a unit restarted by hand since
/// keeps its old entry until the record is next checked.
pub fn kept_after(plan: &Plan, pending: &Pending) -> BTreeSet<String> {
    let mut live = LiveState::default();
    for d in pending.deferrals.iter().filter(|d| d.manager == Manager::Systemd) {
        live.units.insert(d.unit.clone(), running(&d.invocation));
    }
    for unit in plan.deferred() {
        live.units.entry(unit.unit.clone()).or_insert_with(|| running(""));
    }
    let merged = pending.merge(plan, Manager::Systemd, &live, 0).pending;
    merged.deferrals.into_iter().filter(|d| d.manager == Manager::Systemd).map(|d| d.unit).collect()
}

/// [`kept_after`], plus every unit `plan` stops, reloads, restarts or
/// starts: what the state file says while the unit actions are still to
/// come.
pub fn kept_until_acted(plan: &Plan, pending: &Pending) -> BTreeSet<String> {
    let mut keep = kept_after(plan, pending);
    keep.extend(plan.units.iter().filter(|u| u.actions.iter().any(|a| *a != Action::Skip)).map(|u| u.unit.clone()));
    keep
}

fn running(invocation: &str) -> LiveUnit {
    LiveUnit {
        active_state: plan_model::ActiveState::Active,
        sub_state: "running".to_owned(),
        load_state: "loaded".to_owned(),
        invocation_id: invocation.to_owned(),
        ..LiveUnit::default()
    }
}

/// The executor's host on a system-manager host. The activation script,
/// `swapoff` and `systemctl status` are [`ProcessHost`]'s.
#[derive(Debug)]
pub struct SystemManagerHost {
    state_file: PathBuf,
    before: PathBuf,
    generation: Services,
    pending: Pending,
    static_etc: Option<PathBuf>,
    processes: ProcessHost,
}

impl SystemManagerHost {
    /// A host whose state file is `state_file`, with the copy of it from
    /// before the switch at `before` (written by the caller before the
    /// first step, and kept for a resumed apply), the new generation's
    /// services map `generation`, the record of deferrals earlier switches
    /// left pending, and the new generation's static `/etc` tree (where
    /// its `tmpfiles.d` rules are).
    pub fn new(
        state_file: PathBuf,
        before: PathBuf,
        generation: Services,
        pending: Pending,
        static_etc: Option<PathBuf>,
    ) -> SystemManagerHost {
        SystemManagerHost { state_file, before, generation, pending, static_etc, processes: ProcessHost }
    }

    /// The state file as it was before the switch.
    fn before(&self) -> Result<State, String> {
        match State::read(&self.before) {
            Ok(Some(state)) => Ok(state),
            Ok(None) => {
                Err(format!("{}: the copy of the state file from before the switch is gone", self.before.display()))
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// The state file now, which must exist.
    fn now(&self, after: &str) -> Result<State, String> {
        match State::read(&self.state_file) {
            Ok(Some(state)) => Ok(state),
            Ok(None) => Err(format!("{}: no state file after {after}", self.state_file.display())),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Right after `prepopulate`: the units whose actions are still to
    /// come or deferred get their entries from before back.
    fn after_prepopulate(&self, plan: &Plan, script: &str, log: &mut dyn Write) -> Result<String, String> {
        run(&mut Command::new(script), script, log)?;
        let before = self.before()?;
        let mut state = self.now(script)?;
        let keep = kept_until_acted(plan, &self.pending);
        state.set_services(state::services_after(state.services(), before.services(), &keep));
        state.write(&self.state_file).map_err(|e| e.to_string())?;
        Ok(format!("exit status 0; in the state file, {} until their actions are done", count(keep.len())))
    }

    /// Once the unit actions are done: the new generation's services map,
    /// but for the units whose running instance is still not the new
    /// generation's.
    fn final_state(&self, plan: &Plan) -> Result<String, String> {
        let before = self.before()?;
        let mut state = self.now("the switch")?;
        let keep = kept_after(plan, &self.pending);
        state.set_services(state::services_after(&self.generation, before.services(), &keep));
        state.write(&self.state_file).map_err(|e| e.to_string())?;
        Ok(if keep.is_empty() {
            format!("{}: every unit as the new generation has it", self.state_file.display())
        } else {
            let names: Vec<&str> = keep.iter().map(String::as_str).collect();
            format!("{}: kept from before the switch: {}", self.state_file.display(), names.join(", "))
        })
    }

    /// `systemd-tmpfiles --create --remove` on the generation's
    /// `tmpfiles.d` rules, as system-manager runs it on the rules it
    /// placed in `/etc/tmpfiles.d` (the same files). A generation without
    /// rules runs nothing (system-manager would then run every rule of the
    /// host).
    fn tmpfiles(&self, log: &mut dyn Write) -> Result<String, String> {
        let Some(dir) = self.static_etc.as_ref().map(|d| d.join("tmpfiles.d")) else {
            return Ok("no static /etc tree: skipped".to_owned());
        };
        let mut rules: Vec<PathBuf> = match std::fs::read_dir(&dir) {
            Ok(entries) => {
                entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "conf")).collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(format!("{}: {e}", dir.display())),
        };
        if rules.is_empty() {
            return Ok("no tmpfiles.d rules: skipped".to_owned());
        }
        rules.sort();
        run(Command::new("systemd-tmpfiles").args(["--create", "--remove"]).args(&rules), "systemd-tmpfiles", log)?;
        Ok(format!("systemd-tmpfiles --create --remove on {}", count_of(rules.len(), "rule file")))
    }

    /// `systemctl mask --force` of `units` (the executor reloads systemd
    /// afterwards), as system-manager masks them (`MaskUnitFiles`, forced).
    fn mask(&self, units: &[String], log: &mut dyn Write) -> Result<String, String> {
        let mut mask = Command::new("systemctl");
        mask.args(["mask", "--force", "--no-reload", "--"]).args(units);
        run(&mut mask, "systemctl mask", log)?;
        Ok(format!("masked {}", units.join(", ")))
    }
}

impl Host for SystemManagerHost {
    fn activate(&mut self, script: &Path, toplevel: &Path, log: &mut dyn Write) -> Result<i32, systemd_live::Error> {
        self.processes.activate(script, toplevel, log)
    }

    fn swapoff(&mut self, device: &str, log: &mut dyn Write) -> Result<(), String> {
        self.processes.swapoff(device, log)
    }

    fn status_text(&mut self, units: &[String]) -> Option<String> {
        self.processes.status_text(units)
    }

    fn engine_step(&mut self, step: &Step, plan: &Plan, log: &mut dyn Write) -> Result<String, String> {
        match step {
            Step::Assertions { script } | Step::RegisterProfile { script } => {
                run(&mut Command::new(script), script, log).map(|()| "exit status 0".to_owned())
            }
            Step::Prepopulate { script } => self.after_prepopulate(plan, script, log),
            Step::Tmpfiles => self.tmpfiles(log),
            Step::Mask { units } => self.mask(units, log),
            Step::SystemManagerState => self.final_state(plan),
            other => Err(format!("not a step of system-manager's activation: {other:?}")),
        }
    }
}

/// Runs a program with no input and its output on standard error (where
/// the switch's progress goes; standard output holds the report) and in
/// `log` (the apply's activation log).
fn run(cmd: &mut Command, what: &str, log: &mut dyn Write) -> Result<(), String> {
    use std::os::unix::process::ExitStatusExt as _;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: cannot run it: {e}"))?;
    let status = systemd_live::tee(child, log).map_err(|e| format!("{what}: {e}"))?;
    match (status.code(), status.signal()) {
        (Some(0), _) => Ok(()),
        (Some(code), _) => Err(format!("{what} exited with status {code}")),
        (None, Some(signal)) => Err(format!("{what} was killed by signal {signal}")),
        (None, None) => Err(format!("{what} ended with {status}")),
    }
}

fn count(n: usize) -> String {
    match n {
        0 => "no unit keeps its entry from before".to_owned(),
        1 => "1 unit keeps its entry from before".to_owned(),
        n => format!("{n} units keep their entries from before"),
    }
}

fn count_of(n: usize, what: &str) -> String {
    if n == 1 { format!("1 {what}") } else { format!("{n} {what}s") }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use plan_model::{Deferral, PendingDeferral, Touch, UnitPlan};

    use super::*;
    use crate::state::entry;

    fn touch(unit: &str) -> Touch {
        Touch { touches: unit.into(), effect: Action::Restart, chain: vec![], cause: None, omitted: 0 }
    }

    fn deferred(unit: &str) -> UnitPlan {
        let mut u = UnitPlan::new(unit, &[]);
        u.deferral = Some(Deferral { actions: vec![Action::Restart], touch: touch(unit) });
        u
    }

    fn pending(units: &[&str]) -> Pending {
        Pending {
            deferrals: units
                .iter()
                .map(|u| PendingDeferral {
                    manager: Manager::Systemd,
                    unit: (*u).into(),
                    actions: vec![Action::Restart],
                    from: "/gen/0".into(),
                    generation: "/gen/a".into(),
                    invocation: format!("{u}-1"),
                    since_unix: 1,
                    reasons: vec![],
                    touch: touch(u),
                })
                .collect(),
            ..Pending::default()
        }
    }

    fn plan() -> Plan {
        let units = vec![
            deferred("sshd.service"),
            UnitPlan::new("web.service", &[Action::Restart]),
            UnitPlan::new("gone.service", &[Action::Stop]),
            UnitPlan::new("upgrader.service", &[Action::Skip]),
            UnitPlan::new("system-manager.target", &[Action::Start]),
        ];
        Plan::between("/gen/a", "/gen/b", units)
    }

    fn names(set: &BTreeSet<String>) -> Vec<&str> {
        set.iter().map(String::as_str).collect()
    }

    #[test]
    fn units_deferred_now_or_still_pending_keep_their_entries_and_the_rest_once_acted_on() {
        // runner was deferred earlier and this plan does nothing to it;
        // web was deferred earlier and this plan restarts it.
        let earlier = pending(&["runner.service", "web.service"]);
        assert_eq!(names(&kept_after(&plan(), &earlier)), ["runner.service", "sshd.service"]);
        assert_eq!(
            names(&kept_until_acted(&plan(), &earlier)),
            ["gone.service", "runner.service", "sshd.service", "system-manager.target", "web.service"]
        );
        assert_eq!(names(&kept_after(&plan(), &Pending::default())), ["sshd.service"]);
    }

    /// The state file through the steps of a switch: the engine's
    /// prepopulate writes the new map, the host gives the units still to
    /// act on their entries back, and the last step leaves the new map but
    /// for the deferred unit.
    #[test]
    fn the_state_file_tells_the_truth_after_prepopulate_and_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let old: Services = [
            ("sshd.service", entry(Some("/old/sshd"), false)),
            ("web.service", entry(Some("/old/web"), false)),
            ("gone.service", entry(Some("/old/gone"), false)),
        ]
        .into_iter()
        .map(|(u, e)| (u.to_owned(), e))
        .collect();
        let new: Services = [
            ("sshd.service", entry(Some("/new/sshd"), false)),
            ("web.service", entry(Some("/new/web"), false)),
            ("system-manager.target", entry(Some("/new/target"), false)),
        ]
        .into_iter()
        .map(|(u, e)| (u.to_owned(), e))
        .collect();
        let state_file = dir.path().join("state.json");
        let before = dir.path().join("before.json");
        State::with_services(old.clone()).write(&before).unwrap();
        State::with_services(old.clone()).write(&state_file).unwrap();
        // A stand-in for the engine's prepopulate: it writes the new map.
        let script = dir.path().join("prepopulate");
        let new_state = State::with_services(new.clone());
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho placing the files\necho a warning >&2\ncat > '{}' <<'EOF'\n{}\nEOF\n",
                state_file.display(),
                new_state.to_json()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

        let mut host = SystemManagerHost::new(state_file.clone(), before, new.clone(), Pending::default(), None);
        let plan = plan();
        let script = script.display().to_string();
        let mut log = Vec::new();
        let note = host.engine_step(&Step::Prepopulate { script }, &plan, &mut log).unwrap();
        assert!(note.contains("4 units keep their entries from before"), "{note}");
        let log = String::from_utf8(log).unwrap();
        assert!(
            log.contains("placing the files\n") && log.contains("a warning\n"),
            "the engine's output is logged: {log}"
        );
        let now = State::read(&state_file).unwrap().unwrap();
        let expected: Services = [
            ("gone.service", entry(Some("/old/gone"), false)),
            ("sshd.service", entry(Some("/old/sshd"), false)),
            ("web.service", entry(Some("/old/web"), false)),
        ]
        .into_iter()
        .map(|(u, e)| (u.to_owned(), e))
        .collect();
        assert_eq!(now.services(), &expected, "nothing acted on yet: the old entries");

        let note = host.engine_step(&Step::SystemManagerState, &plan, &mut std::io::sink()).unwrap();
        assert!(note.ends_with("kept from before the switch: sshd.service"), "{note}");
        let end = State::read(&state_file).unwrap().unwrap();
        let expected: Services = [
            ("sshd.service", entry(Some("/old/sshd"), false)),
            ("system-manager.target", entry(Some("/new/target"), false)),
            ("web.service", entry(Some("/new/web"), false)),
        ]
        .into_iter()
        .map(|(u, e)| (u.to_owned(), e))
        .collect();
        assert_eq!(end.services(), &expected);
    }

    #[test]
    fn a_failing_engine_command_names_itself_and_its_status() {
        let dir = tempfile::tempdir().unwrap();
        let mut host = SystemManagerHost::new(
            dir.path().join("state.json"),
            dir.path().join("before.json"),
            Services::new(),
            Pending::default(),
            None,
        );
        let err = host
            .engine_step(&Step::Assertions { script: "/bin/false".into() }, &plan(), &mut std::io::sink())
            .unwrap_err();
        assert_eq!(err, "/bin/false exited with status 1");
        let missing = dir.path().join("bin/register-profile").display().to_string();
        let err = host
            .engine_step(&Step::RegisterProfile { script: missing.clone() }, &plan(), &mut std::io::sink())
            .unwrap_err();
        assert!(err.starts_with(&format!("{missing}: cannot run it: ")), "{err}");
        assert!(host.engine_step(&Step::DaemonReload, &plan(), &mut std::io::sink()).is_err());
        assert_eq!(
            host.engine_step(&Step::Tmpfiles, &plan(), &mut std::io::sink()).unwrap(),
            "no static /etc tree: skipped"
        );
    }
}
