//! `plan`, `check` and `switch` on a nix-darwin host, end to end on the
//! launchd simulator of the `testbed` crate: a fake `launchctl` that runs
//! real processes, below a root directory standing for the Mac's `/`
//! (`SAFE_SWITCH_TEST_DARWIN_ROOT`), with generations laid out as
//! nix-darwin's (their `activate` included). No root and no Mac needed.
//! [`Mac`] is shared with the saved-plan tests (`darwin_apply`).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use safe_switch_cli::test_hooks;
use testbed::launchd::{DarwinGeneration, DarwinJob, STEPS_AFTER, STEPS_BEFORE, Simulator};

/// Where macOS keeps its own sshd's plist.
const SSH_PLIST: &str = "/System/Library/LaunchDaemons/ssh.plist";

use crate::support::{BIN, hermetic};

/// A Mac in a temporary directory: its root, its Nix store, the markers
/// its activation scripts leave, launchd, and the saved-plan key's
/// directory.
pub(crate) struct Mac {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub store: PathBuf,
    pub markers: PathBuf,
    pub sim: Simulator,
    pub user: String,
    pub uid: u32,
    pub home: String,
}

fn sh(script: &str) -> String {
    let out = Command::new("/bin/sh").args(["-c", script]).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A daemon that sleeps; `version` changes its plist.
pub(crate) fn daemon(label: &str, version: &str) -> DarwinJob {
    DarwinJob::daemon(label, &format!("exec /bin/sleep 3600 # {version}"))
}

impl Mac {
    pub(crate) fn new() -> Mac {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        for d in ["Library/LaunchDaemons", "Library/LaunchAgents", "run", "nix/var/nix/profiles", "nix/var/nix/gcroots"]
        {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let store = dir.path().join("nix/store");
        std::fs::create_dir_all(&store).unwrap();
        let user = sh("id -un");
        let home = sh(&format!("printf %s ~{user}"));
        Mac {
            markers: dir.path().join("markers"),
            root,
            store,
            sim: Simulator::new().unwrap(),
            uid: sh("id -u").parse().unwrap(),
            user,
            home,
            dir,
        }
    }

    pub(crate) fn path(&self, absolute: &str) -> PathBuf {
        self.root.join(absolute.trim_start_matches('/'))
    }

    pub(crate) fn write(&self, g: &DarwinGeneration) -> PathBuf {
        g.write(&self.store, &self.root, &self.markers).unwrap()
    }

    /// Boots generation `g` as nix-darwin leaves a Mac: its plists
    /// installed, its jobs loaded, `/run/current-system` pointing at it.
    pub(crate) fn boot(&self, g: &DarwinGeneration) -> PathBuf {
        let toplevel = self.write(g);
        std::os::unix::fs::symlink(&toplevel, self.path("/run/current-system")).unwrap();
        for job in &g.jobs {
            let (dir, domain) = match job.kind {
                testbed::launchd::Kind::Daemon => ("/Library/LaunchDaemons".to_owned(), "system".to_owned()),
                testbed::launchd::Kind::UserAgent => {
                    (format!("{}/Library/LaunchAgents", self.home), format!("gui/{}", self.uid))
                }
            };
            let installed = self.path(&dir).join(format!("{}.plist", job.label));
            std::fs::create_dir_all(installed.parent().unwrap()).unwrap();
            std::fs::write(&installed, job.plist()).unwrap();
            let out = self.sim.run(&["bootstrap", &domain, installed.to_str().unwrap()]).unwrap();
            assert!(out.success(), "{out:?}");
            self.sim.wait_running(&format!("{domain}/{}", job.label)).unwrap();
        }
        let _ = std::fs::remove_file(&self.markers);
        toplevel
    }

    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        hermetic(&mut cmd)
            .env(test_hooks::DARWIN_ROOT, &self.root)
            .env(test_hooks::LAUNCHCTL, self.sim.launchctl())
            .env(test_hooks::STATE_DIR, self.dir.path().join("state"))
            .env(test_hooks::STORE_DIR, &self.store)
            .env_remove("SAFE_SWITCH_PLATFORM")
            .env("NO_COLOR", "1")
            .args(args);
        cmd
    }

    pub(crate) fn safe_switch(&self, args: &[&str]) -> testbed::Output {
        testbed::exec::run(&mut self.command(args), Duration::from_secs(120)).unwrap()
    }

    pub(crate) fn markers(&self) -> Vec<String> {
        std::fs::read_to_string(&self.markers).unwrap_or_default().lines().map(str::to_owned).collect()
    }

    pub(crate) fn pid(&self, label: &str) -> Option<u32> {
        self.sim.pid(&format!("system/{label}"))
    }

    pub(crate) fn current_system(&self) -> PathBuf {
        std::fs::read_link(self.path("/run/current-system")).unwrap()
    }

    /// Installs macOS's own sshd (`com.openssh.sshd`, a sleeping daemon
    /// here) and turns Remote Login on: loads it; returns its pid.
    fn remote_login_on(&self) -> u32 {
        let plist = self.path(SSH_PLIST);
        std::fs::create_dir_all(plist.parent().unwrap()).unwrap();
        std::fs::write(&plist, daemon("com.openssh.sshd", "macos").plist()).unwrap();
        let out = self.sim.run(&["bootstrap", "system", plist.to_str().unwrap()]).unwrap();
        assert!(out.success(), "{out:?}");
        self.sim.wait_running("system/com.openssh.sshd").unwrap()
    }
}

/// The steps of nix-darwin's activation other than the launchd ones.
pub(crate) fn other_steps() -> Vec<String> {
    let mut steps: Vec<String> = STEPS_BEFORE.iter().map(|(n, _)| (*n).to_owned()).collect();
    steps.push("nix-daemon".to_owned());
    steps.extend(STEPS_AFTER.iter().map(|(n, _)| (*n).to_owned()));
    steps
}

/// Generation A of a CI runner, and B: the runner, the Nix daemon (and
/// nix.conf) and node-exporter changed, collectd removed, docker added;
/// the user agent backup unchanged.
pub(crate) fn generations(user: &str) -> (DarwinGeneration, DarwinGeneration) {
    let a = DarwinGeneration::new("a", user)
        .job(daemon("org.nixos.nix-daemon", "nix-2.28"))
        .job(daemon("org.nixos.gitlab-runner", "runner-17"))
        .job(daemon("org.nixos.node-exporter", "1.8"))
        .job(daemon("org.nixos.collectd", "5"))
        .job(DarwinJob::user_agent("org.nixos.backup", "exec /bin/sleep 3600 # backup"));
    let mut b = a
        .renamed("b")
        .job(daemon("org.nixos.nix-daemon", "nix-2.29"))
        .job(daemon("org.nixos.gitlab-runner", "runner-18"))
        .job(daemon("org.nixos.node-exporter", "1.9"))
        .without("org.nixos.collectd")
        .job(daemon("org.nixos.docker", "27"));
    b.nix_conf.push_str("max-jobs = 8\n");
    (a, b)
}

pub(crate) fn text(out: &testbed::Output) -> String {
    format!("--- stdout\n{}\n--- stderr\n{}", out.stdout, out.stderr)
}

#[test]
fn a_protected_switch_keeps_the_runner_and_the_nix_daemon_and_carries_out_the_rest() {
    let mac = Mac::new();
    let (a, b) = generations(&mac.user);
    let old = mac.boot(&a);
    let new = mac.write(&b);
    let runner = mac.pid("org.nixos.gitlab-runner").unwrap();
    let nix_daemon = mac.pid("org.nixos.nix-daemon").unwrap();
    let exporter = mac.pid("org.nixos.node-exporter").unwrap();
    let backup = mac.sim.pid(&format!("gui/{}/org.nixos.backup", mac.uid)).unwrap();
    let installed_runner = std::fs::read(mac.path("/Library/LaunchDaemons/org.nixos.gitlab-runner.plist")).unwrap();

    let out = mac.safe_switch(&[
        "switch",
        "--no-isolate",
        "--toplevel",
        new.to_str().unwrap(),
        "--protect",
        "gitlab-runner,nix-daemon",
    ]);
    assert_eq!(out.code(), Some(0), "{}", text(&out));
    assert!(out.stdout.contains("org.nixos.gitlab-runner: restart deferred"), "{}", text(&out));
    assert!(out.stderr.contains("protected org.nixos.gitlab-runner: untouched"), "{}", text(&out));

    // The protected jobs kept their process and their installed plist.
    assert_eq!(mac.pid("org.nixos.gitlab-runner"), Some(runner));
    assert_eq!(mac.pid("org.nixos.nix-daemon"), Some(nix_daemon));
    assert_eq!(
        std::fs::read(mac.path("/Library/LaunchDaemons/org.nixos.gitlab-runner.plist")).unwrap(),
        installed_runner
    );
    // The changed job was reloaded with its new plist, the added one
    // bootstrapped, the removed one booted out and its plist deleted; the
    // unchanged agent left alone.
    let reloaded = mac.pid("org.nixos.node-exporter").expect("node-exporter runs");
    assert_ne!(reloaded, exporter, "node-exporter was reloaded");
    let installed = std::fs::read_to_string(mac.path("/Library/LaunchDaemons/org.nixos.node-exporter.plist")).unwrap();
    assert!(installed.contains("# 1.9"), "{installed}");
    assert!(mac.pid("org.nixos.docker").is_some(), "docker was bootstrapped");
    assert!(!mac.sim.loaded("system/org.nixos.collectd"), "collectd was booted out");
    assert!(!mac.path("/Library/LaunchDaemons/org.nixos.collectd.plist").exists());
    assert_eq!(mac.sim.pid(&format!("gui/{}/org.nixos.backup", mac.uid)), Some(backup));
    // Every other step of the activation ran, the launchd ones did not.
    assert_eq!(mac.markers(), other_steps(), "{}", text(&out));
    // Then /run/current-system and the profile point at the new generation.
    assert_eq!(mac.current_system(), new);
    assert_eq!(std::fs::canonicalize(mac.path("/nix/var/nix/profiles/system")).unwrap(), new);
    assert_ne!(old, new);
    // Modern launchctl only, and each boot-out waited for.
    let calls = mac.sim.calls();
    assert!(calls.iter().all(|c| !c.starts_with("load") && !c.starts_with("unload")), "{calls:?}");
    let bootout = calls.iter().position(|c| c == "bootout system/org.nixos.node-exporter").unwrap();
    let bootstrap = bootout
        + calls[bootout..]
            .iter()
            .position(|c| c.starts_with("bootstrap system") && c.ends_with("node-exporter.plist"))
            .unwrap();
    assert!(
        calls[bootout..bootstrap].iter().any(|c| c == "print system/org.nixos.node-exporter"),
        "the boot-out was awaited: {calls:?}"
    );
}

#[test]
fn without_protection_the_runner_is_restarted() {
    let mac = Mac::new();
    let (a, b) = generations(&mac.user);
    mac.boot(&a);
    let new = mac.write(&b);
    let runner = mac.pid("org.nixos.gitlab-runner").unwrap();
    let out = mac.safe_switch(&["switch", "--no-isolate", "--toplevel", new.to_str().unwrap()]);
    assert_eq!(out.code(), Some(0), "{}", text(&out));
    let now = mac.pid("org.nixos.gitlab-runner").expect("the runner runs again");
    assert_ne!(now, runner);
}

#[test]
fn plan_and_check_read_launchd_and_gate_on_protection() {
    let mac = Mac::new();
    let (a, b) = generations(&mac.user);
    mac.boot(&a);
    let new = mac.write(&b);
    let out = mac.safe_switch(&["plan", "--toplevel", new.to_str().unwrap(), "--protect", "gitlab-runner"]);
    assert_eq!(out.code(), Some(0), "{}", text(&out));
    assert!(out.stdout.contains("launchctl bootout system/org.nixos.node-exporter"), "{}", text(&out));
    assert!(out.stdout.contains("org.nixos.collectd"), "{}", text(&out));
    let check = mac.safe_switch(&["check", "--toplevel", new.to_str().unwrap(), "--protect", "gitlab-runner"]);
    assert_eq!(check.code(), Some(3), "{}", text(&check));
    let json = mac.safe_switch(&["plan", "--json", "--toplevel", new.to_str().unwrap()]);
    let plan: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(plan["old"]["path"], std::fs::canonicalize(mac.current_system()).unwrap().to_str().unwrap());
    // Nothing was changed.
    assert!(mac.sim.calls().iter().all(|c| c.starts_with("print ") || c.starts_with("bootstrap ")));
    assert!(mac.markers().is_empty());
}

#[test]
fn an_activation_that_fails_half_way_stops_before_launchd() {
    let mac = Mac::new();
    let (a, mut b) = generations(&mac.user);
    let old = mac.boot(&a);
    b.fail_in = Some("etc".to_owned());
    let new = mac.write(&b);
    let exporter = mac.pid("org.nixos.node-exporter").unwrap();
    let booted = mac.sim.calls().len();
    let out = mac.safe_switch(&["switch", "--no-isolate", "--toplevel", new.to_str().unwrap()]);
    assert_eq!(out.code(), Some(4), "{}", text(&out));
    assert!(out.stderr.contains("the activation script exited with status 1"), "{}", text(&out));
    let markers = mac.markers();
    assert_eq!(markers.last().map(String::as_str), Some("etc"), "{markers:?}");
    assert!(!markers.iter().any(|m| m == "time"), "{markers:?}");
    // No job was touched, and the running generation is still the old one.
    assert!(mac.sim.calls()[booted..].iter().all(|c| c.starts_with("print ")), "{:?}", mac.sim.calls());
    assert_eq!(mac.pid("org.nixos.node-exporter"), Some(exporter));
    assert_eq!(mac.current_system(), old);
}

#[test]
fn a_bootstrap_that_meets_a_teardown_in_progress_is_tried_again() {
    let mac = Mac::new();
    let (a, b) = generations(&mac.user);
    mac.boot(&a);
    let new = mac.write(&b);
    mac.sim.fail_bootstrap("org.nixos.node-exporter", 37, 2).unwrap();
    let booted = mac.sim.calls().len();
    let out = mac.safe_switch(&["switch", "--no-isolate", "--toplevel", new.to_str().unwrap()]);
    assert_eq!(out.code(), Some(0), "{}", text(&out));
    let tries = mac.sim.calls()[booted..]
        .iter()
        .filter(|c| c.starts_with("bootstrap") && c.ends_with("node-exporter.plist"))
        .count();
    assert_eq!(tries, 3, "{:?}", mac.sim.calls());
    assert!(mac.pid("org.nixos.node-exporter").is_some());
}

/// A job that ignores SIGTERM: launchd kills it after its `ExitTimeOut`.
fn stubborn(label: &str, version: &str, exit_timeout: u32) -> DarwinJob {
    let mut job = DarwinJob::daemon(label, &format!("trap '' TERM; while :; do /bin/sleep 1; done # {version}"));
    job.exit_timeout = Some(exit_timeout);
    job
}

#[test]
fn a_job_that_does_not_exit_on_bootout_is_waited_for_or_reported() {
    // Killed by launchd within the job timeout: the switch waits for it.
    let mac = Mac::new();
    let (a, b) = generations(&mac.user);
    let a = a.job(stubborn("org.nixos.stubborn", "1", 1));
    mac.boot(&a);
    let new = mac.write(&b.job(stubborn("org.nixos.stubborn", "2", 1)));
    let before = mac.pid("org.nixos.stubborn").unwrap();
    let out = mac.safe_switch(&["switch", "--no-isolate", "--toplevel", new.to_str().unwrap()]);
    assert_eq!(out.code(), Some(0), "{}", text(&out));
    let after = mac.pid("org.nixos.stubborn").expect("runs again");
    assert_ne!(after, before);

    // Not gone within the job timeout: reported, its bootstrap skipped,
    // the rest carried out, exit 4.
    let mac = Mac::new();
    let (a, b) = generations(&mac.user);
    mac.boot(&a.job(stubborn("org.nixos.stubborn", "1", 30)));
    let new = mac.write(&b.job(stubborn("org.nixos.stubborn", "2", 30)));
    let out = mac.safe_switch(&["switch", "--no-isolate", "--job-timeout", "1", "--toplevel", new.to_str().unwrap()]);
    assert_eq!(out.code(), Some(4), "{}", text(&out));
    assert!(out.stderr.contains("system/org.nixos.stubborn was still loaded"), "{}", text(&out));
    assert!(out.stderr.contains("skipped: an earlier step of org.nixos.stubborn failed"), "{}", text(&out));
    assert!(mac.pid("org.nixos.docker").is_some(), "the rest was carried out");
    assert_eq!(mac.current_system(), new);
}

#[test]
fn a_failed_job_rolls_back_when_asked() {
    let mac = Mac::new();
    let (a, b) = generations(&mac.user);
    let old = mac.boot(&a);
    let mut broken = DarwinJob::daemon("org.nixos.docker", "exit 3");
    broken.keep_alive = true;
    let new = mac.write(&b.job(broken));
    let out =
        mac.safe_switch(&["switch", "--no-isolate", "--rollback-on-failure", "--toplevel", new.to_str().unwrap()]);
    assert_eq!(out.code(), Some(4), "{}", text(&out));
    assert!(out.stderr.contains("org.nixos.docker: not running, last exit status 3"), "{}", text(&out));
    assert!(out.stderr.contains("rolled back to"), "{}", text(&out));
    assert_eq!(mac.current_system(), old);
    assert!(!mac.sim.loaded("system/org.nixos.docker"));
    assert!(mac.pid("org.nixos.collectd").is_some(), "collectd is back");
    let installed = std::fs::read_to_string(mac.path("/Library/LaunchDaemons/org.nixos.node-exporter.plist")).unwrap();
    assert!(installed.contains("# 1.8"), "{installed}");
}

#[test]
fn an_isolated_switch_runs_as_a_launchd_job_and_relays_its_outcome() {
    let mac = Mac::new();
    let (a, b) = generations(&mac.user);
    mac.boot(&a);
    let new = mac.write(&b);
    let runner = mac.pid("org.nixos.gitlab-runner").unwrap();
    let out = mac.safe_switch(&["switch", "--toplevel", new.to_str().unwrap(), "--protect", "gitlab-runner"]);
    assert_eq!(out.code(), Some(0), "{}", text(&out));
    assert!(out.stderr.contains("applying in the launchd job system/safe-switch."), "{}", text(&out));
    assert!(out.stderr.contains("switched to"), "the isolated run's output is relayed: {}", text(&out));
    assert_eq!(mac.pid("org.nixos.gitlab-runner"), Some(runner));
    assert_eq!(mac.current_system(), new);
    let calls = mac.sim.calls();
    let job = calls
        .iter()
        .find(|c| c.starts_with("bootstrap system") && c.contains("/run/safe-switch/safe-switch."))
        .unwrap();
    assert!(job.ends_with(".plist"), "{calls:?}");
    assert!(calls.iter().any(|c| c.starts_with("bootout system/safe-switch.")), "the job is booted out afterwards");
    // The lock: a second switch while one holds it is refused.
    let run = mac.path("/run/safe-switch");
    assert!(run.join("launchd-last.json").exists());
}

#[test]
fn an_activation_script_without_the_expected_markers_is_refused() {
    let mac = Mac::new();
    let (a, b) = generations(&mac.user);
    mac.boot(&a);
    let new = mac.write(&b.renamed("c"));
    let script = std::fs::read_to_string(new.join("activate")).unwrap();
    let script = script.replace("# Set up launchd services in /Library/LaunchAgents and /Library/LaunchDaemons\n", "");
    std::fs::remove_file(new.join("activate")).unwrap();
    testbed::exec::write_executable(&new.join("activate"), &script).unwrap();
    let booted = mac.sim.calls().len();
    let out = mac.safe_switch(&["switch", "--no-isolate", "--toplevel", new.to_str().unwrap()]);
    assert_eq!(out.code(), Some(1), "{}", text(&out));
    assert!(out.stderr.contains("does not have the launchd sections"), "{}", text(&out));
    assert!(out.stderr.contains("no launchd marker"), "{}", text(&out));
    assert!(mac.sim.calls()[booted..].iter().all(|c| c.starts_with("print ")));
    assert!(mac.markers().is_empty());
}

#[test]
fn the_simulator_answers_as_launchctl_does() {
    let mac = Mac::new();
    let out = mac.sim.run(&["print", "system/org.nixos.none"]).unwrap();
    assert_eq!(out.code(), Some(113));
    assert!(out.stderr.contains("Could not find service \"org.nixos.none\" in domain for system"));
    let out = mac.sim.run(&["bootout", "system/org.nixos.none"]).unwrap();
    assert_eq!(out.code(), Some(3));
    let (a, _) = generations(&mac.user);
    mac.boot(&a);
    let plist = mac.path("/Library/LaunchDaemons/org.nixos.collectd.plist");
    let out = mac.sim.run(&["bootstrap", "system", plist.to_str().unwrap()]).unwrap();
    assert_eq!(out.code(), Some(5), "already loaded");
    let out = mac.sim.run(&["bootout", "system/org.nixos.collectd"]).unwrap();
    assert_eq!(out.code(), Some(0));
    // Still being torn down: asynchronous.
    let out = mac.sim.run(&["bootstrap", "system", plist.to_str().unwrap()]).unwrap();
    assert_eq!(out.code(), Some(37), "{out:?}");
    let print = mac.sim.run(&["print", "system/org.nixos.nix-daemon"]).unwrap();
    let (label, job) = launchd_plan::parse_print(&print.stdout).unwrap();
    assert_eq!(label, "org.nixos.nix-daemon");
    assert_eq!(job.pid, mac.pid("org.nixos.nix-daemon"));
    assert_eq!(job.runs, Some(1));
}

#[test]
fn an_interrupted_switch_is_described_and_resumed_by_the_next() {
    let mac = Mac::new();
    let (a, b) = generations(&mac.user);
    mac.boot(&a.job(stubborn("org.nixos.stubborn", "1", 3)));
    let new = mac.write(&b.job(stubborn("org.nixos.stubborn", "2", 3)));
    // Killed while it waits for a boot-out.
    let mut child = mac
        .command(&["switch", "--no-isolate", "--toplevel", new.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..1000 {
        if mac.sim.calls().iter().any(|c| c == "bootout system/org.nixos.stubborn") {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let plan = mac.safe_switch(&["plan", "--toplevel", new.to_str().unwrap()]);
    assert!(plan.stderr.contains("an earlier launchd switch"), "{}", text(&plan));

    let out = mac.safe_switch(&["switch", "--no-isolate", "--toplevel", new.to_str().unwrap()]);
    assert_eq!(out.code(), Some(0), "{}", text(&out));
    assert!(out.stderr.contains("was interrupted"), "{}", text(&out));
    assert!(out.stderr.contains("is finished"), "{}", text(&out));
    assert!(mac.pid("org.nixos.stubborn").is_some(), "{}", text(&out));
    assert!(mac.pid("org.nixos.docker").is_some());
    assert!(!mac.sim.loaded("system/org.nixos.collectd"));
    assert_eq!(mac.current_system(), new);
    // The activation ran in the interrupted switch, was not run again by
    // the resume, and ran once more for the switch asked for now (to the
    // same generation, as a second `darwin-rebuild switch` would).
    assert_eq!(mac.markers().iter().filter(|m| *m == "etc").count(), 2, "{}", text(&out));
}

#[test]
fn the_steps_after_the_launchd_sections_run_after_the_launchctl_operations() {
    let mac = Mac::new();
    let (a, b) = generations(&mac.user);
    mac.boot(&a);
    let new = mac.write(&b);
    // launchctl's commands go into the marker file too, in order.
    mac.sim.journal_to(&mac.markers).unwrap();
    let out = mac.safe_switch(&["switch", "--no-isolate", "--toplevel", new.to_str().unwrap()]);
    assert_eq!(out.code(), Some(0), "{}", text(&out));
    let lines = mac.markers();
    let at = |step: &str| lines.iter().position(|l| l == step).unwrap_or_else(|| panic!("{step}: {lines:#?}"));
    let changes: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("launchctl ") && !lines[i].starts_with("launchctl print "))
        .collect();
    assert!(changes.len() > 5, "{lines:#?}");
    // nix-darwin's order: userDefaults, launchd, userLaunchd, nix-daemon,
    // time, …, postActivation.
    let (last_before, first_after) = (at(STEPS_BEFORE[STEPS_BEFORE.len() - 1].0), at("nix-daemon"));
    assert!(changes.iter().all(|&i| last_before < i && i < first_after), "{lines:#?}");
    assert!(at("time") > first_after && at("postActivation") > at("homebrew"), "{lines:#?}");
    let steps: Vec<String> = lines.iter().filter(|l| !l.starts_with("launchctl ")).cloned().collect();
    assert_eq!(steps, other_steps());
}

#[test]
fn an_activation_that_fails_after_launchd_leaves_the_current_system() {
    let mac = Mac::new();
    let (a, mut b) = generations(&mac.user);
    let old = mac.boot(&a);
    b.fail_in = Some("homebrew".to_owned());
    let new = mac.write(&b);
    let out = mac.safe_switch(&["switch", "--no-isolate", "--toplevel", new.to_str().unwrap()]);
    assert_eq!(out.code(), Some(4), "{}", text(&out));
    assert!(
        out.stderr.contains("the rest of the activation script, after its launchd steps: FAILED"),
        "{}",
        text(&out)
    );
    // The launchd part was carried out, the end of the script was not.
    assert!(mac.pid("org.nixos.docker").is_some(), "{}", text(&out));
    assert_eq!(mac.markers().last().map(String::as_str), Some("homebrew"));
    assert_eq!(mac.current_system(), old);
}

#[test]
fn remote_login_turned_off_keeps_a_protected_sshd_and_records_the_deferral() {
    let mac = Mac::new();
    let (a, b) = generations(&mac.user);
    let sshd = mac.remote_login_on();
    mac.boot(&a);
    let new = mac.write(&DarwinGeneration { openssh: Some(false), ..b });
    let booted = mac.sim.calls().len();
    let out = mac.safe_switch(&["switch", "--no-isolate", "--toplevel", new.to_str().unwrap(), "--protect", "sshd"]);
    assert_eq!(out.code(), Some(0), "{}", text(&out));
    assert!(out.stdout.contains("com.openssh.sshd: stop deferred"), "{}", text(&out));
    assert!(out.stderr.contains("protected com.openssh.sshd: untouched"), "{}", text(&out));
    assert_eq!(mac.sim.pid("system/com.openssh.sshd"), Some(sshd));
    assert!(!mac.sim.disabled("system/com.openssh.sshd"));
    let calls = mac.sim.calls();
    assert!(calls[booted..].iter().all(|c| !c.contains("com.openssh.sshd") || c.starts_with("print ")), "{calls:?}");
    assert_eq!(mac.current_system(), new);
    // Recorded as pending, while sshd stays loaded.
    let pending = mac.safe_switch(&["pending"]);
    assert_eq!(pending.code(), Some(3), "{}", text(&pending));
    assert!(pending.stdout.contains("com.openssh.sshd: stop deferred"), "{}", text(&pending));

    // In refuse mode, nothing is done at all.
    let mac = Mac::new();
    let (a, b) = generations(&mac.user);
    mac.remote_login_on();
    let old = mac.boot(&a);
    let new = mac.write(&DarwinGeneration { openssh: Some(false), ..b });
    let out = mac.safe_switch(&[
        "switch",
        "--no-isolate",
        "--toplevel",
        new.to_str().unwrap(),
        "--protect",
        "sshd",
        "--on-protected",
        "refuse",
    ]);
    assert_eq!(out.code(), Some(3), "{}", text(&out));
    assert!(mac.markers().is_empty());
    assert_eq!(mac.current_system(), old);
}

#[test]
fn remote_login_is_turned_off_and_on_as_nix_darwin_does_when_sshd_is_not_protected() {
    let mac = Mac::new();
    let (a, b) = generations(&mac.user);
    mac.remote_login_on();
    mac.boot(&a);
    let new = mac.write(&DarwinGeneration { openssh: Some(false), ..b.clone() });
    mac.sim.journal_to(&mac.markers).unwrap();
    let out = mac.safe_switch(&["switch", "--no-isolate", "--toplevel", new.to_str().unwrap()]);
    assert_eq!(out.code(), Some(0), "{}", text(&out));
    assert!(out.stdout.contains("launchctl bootout system/com.openssh.sshd"), "{}", text(&out));
    assert!(!mac.sim.loaded("system/com.openssh.sshd"));
    assert!(mac.sim.disabled("system/com.openssh.sshd"));
    assert!(mac.path(SSH_PLIST).exists(), "macOS's plist is never deleted");
    // Where nix-darwin does it: with the launchd steps.
    let lines = mac.markers();
    let bootout = lines.iter().position(|l| l == "launchctl bootout system/com.openssh.sshd").unwrap();
    assert!(bootout < lines.iter().position(|l| l == "nix-daemon").unwrap(), "{lines:#?}");

    // And on again.
    let on = mac.write(&DarwinGeneration { openssh: Some(true), ..b.renamed("c") });
    let out = mac.safe_switch(&["switch", "--no-isolate", "--toplevel", on.to_str().unwrap()]);
    assert_eq!(out.code(), Some(0), "{}", text(&out));
    assert!(mac.sim.wait_running("system/com.openssh.sshd").is_ok());
    assert!(!mac.sim.disabled("system/com.openssh.sshd"));
}
