//! Deferrals on a nix-darwin host, end to end on the launchd simulator
//! (see `darwin_switch`): a switch records what protection deferred in the
//! record of pending deferrals, as on systemd; `pending` lists it until
//! the job runs another plist (a restart by launchd with the old plist
//! installed does not settle it), or, for the Nix daemon's restart for a
//! changed `nix.conf`, until it was restarted; `plan` shows it; a later
//! switch that does not protect the job carries it out; `settle` is
//! refused.

use plan_model::{Action, Manager, Pending, Rule};

use crate::darwin_switch::{Mac, generations, text};

const RUNNER: &str = "org.nixos.gitlab-runner";
const NIX_DAEMON: &str = "org.nixos.nix-daemon";

impl Mac {
    /// The record of pending deferrals, as the last switch left it.
    fn record(&self) -> Pending {
        match std::fs::read_to_string(self.path("/run/safe-switch/pending.json")) {
            Ok(text) => Pending::from_json(&text).unwrap(),
            Err(_) => Pending::default(),
        }
    }
}

#[test]
fn a_protected_switch_records_its_deferrals_until_a_switch_carries_them_out() {
    let mac = Mac::new();
    let (a, b) = generations(&mac.user);
    let old = mac.boot(&a);
    let new = mac.write(&b);
    let new_arg = new.to_str().unwrap();
    let out = mac.safe_switch(&["switch", "--no-isolate", "--toplevel", new_arg, "--protect", "gitlab-runner"]);
    assert_eq!(out.code(), Some(0), "{}", text(&out));

    let record = mac.record();
    assert_eq!(record.deferrals.len(), 1, "{record:?}");
    let d = &record.deferrals[0];
    assert_eq!((d.manager, d.unit.as_str(), d.actions.as_slice()), (Manager::Launchd, RUNNER, &[Action::Restart][..]));
    assert_eq!((d.from.as_str(), d.generation.as_str()), (old.to_str().unwrap(), new_arg));
    assert!(d.invocation.starts_with("plist sha256:"), "{}", d.invocation);
    assert_eq!(d.touch.touches, RUNNER);

    let out = mac.safe_switch(&["pending"]);
    assert_eq!(out.code(), Some(3), "{}", text(&out));
    assert!(out.stdout.contains("pending: 1 unit with deferred actions"), "{}", text(&out));
    assert!(out.stdout.contains("org.nixos.gitlab-runner: restart deferred since"), "{}", text(&out));
    assert!(
        out.stdout
            .contains(&format!("loaded from the plist of {}; the plist of {new_arg} is not installed yet", d.from)),
        "{}",
        text(&out)
    );
    assert!(out.stdout.contains("`safe-switch settle` is not built for nix-darwin hosts"), "{}", text(&out));
    let json = mac.safe_switch(&["pending", "--json"]);
    assert_eq!(Pending::from_json(&json.stdout).unwrap(), record);

    // launchd restarts the runner with the plist still installed, the old
    // one: the deferral stands.
    assert!(mac.sim.run(&["kickstart", "-k", &format!("system/{RUNNER}")]).unwrap().success());
    mac.sim.wait_running(&format!("system/{RUNNER}")).unwrap();
    let out = mac.safe_switch(&["pending"]);
    assert_eq!(out.code(), Some(3), "{}", text(&out));

    // A plan to the same generation shows it, and that a switch without
    // the protection carries it out.
    let out = mac.safe_switch(&["plan", "--toplevel", new_arg]);
    assert!(out.stdout.contains("pending from earlier switches:"), "{}", text(&out));
    assert!(out.stdout.contains("carried out by this switch"), "{}", text(&out));
    let runner = mac.pid(RUNNER).unwrap();
    let out = mac.safe_switch(&["switch", "--no-isolate", "--toplevel", new_arg]);
    assert_eq!(out.code(), Some(0), "{}", text(&out));
    assert_ne!(mac.pid(RUNNER), Some(runner), "the runner runs its new plist");
    assert!(mac.record().is_empty(), "{:?}", mac.record());
    let out = mac.safe_switch(&["pending"]);
    assert_eq!(out.code(), Some(0), "{}", text(&out));
    assert!(out.stdout.contains("nothing is pending"), "{}", text(&out));
}

/// A job that ran another plist since (nix-darwin's own activation, or
/// someone's hand) is no longer pending.
#[test]
fn a_job_reloaded_since_is_no_longer_pending() {
    let mac = Mac::new();
    let (a, b) = generations(&mac.user);
    mac.boot(&a);
    let new = mac.write(&b);
    let out = mac.safe_switch(&["switch", "--no-isolate", "--toplevel", new.to_str().unwrap(), "--protect", RUNNER]);
    assert_eq!(out.code(), Some(0), "{}", text(&out));
    assert_eq!(mac.record().deferrals.len(), 1);
    let installed = mac.path(&format!("/Library/LaunchDaemons/{RUNNER}.plist"));
    std::fs::copy(new.join(format!("Library/LaunchDaemons/{RUNNER}.plist")), &installed).unwrap();
    assert!(mac.sim.run(&["bootout", &format!("system/{RUNNER}")]).unwrap().success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while mac.sim.loaded(&format!("system/{RUNNER}")) {
        assert!(std::time::Instant::now() < deadline, "the boot-out never finished");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(mac.sim.run(&["bootstrap", "system", installed.to_str().unwrap()]).unwrap().success());
    let out = mac.safe_switch(&["pending"]);
    assert_eq!(out.code(), Some(0), "{}", text(&out));
}

/// A Nix daemon restart deferred for a changed `nix.conf` alone (its plist
/// unchanged) is done by any restart of the daemon.
#[test]
fn a_deferred_nix_daemon_restart_is_done_by_a_restart() {
    let mac = Mac::new();
    let (a, _) = generations(&mac.user);
    mac.boot(&a);
    let mut b = a.renamed("b");
    b.nix_conf.push_str("max-jobs = 8\n");
    let new = mac.write(&b);
    let out =
        mac.safe_switch(&["switch", "--no-isolate", "--toplevel", new.to_str().unwrap(), "--protect", NIX_DAEMON]);
    assert_eq!(out.code(), Some(0), "{}", text(&out));
    let record = mac.record();
    assert_eq!(record.deferrals.len(), 1, "{record:?}");
    let d = &record.deferrals[0];
    assert_eq!(d.unit, NIX_DAEMON);
    assert_eq!(d.reasons.iter().map(|r| r.rule).collect::<Vec<_>>(), [Rule::NixConfChanged]);
    let pid = mac.pid(NIX_DAEMON).unwrap();
    assert!(d.invocation.ends_with(&format!(", pid {pid}")), "{}", d.invocation);
    assert_eq!(mac.safe_switch(&["pending"]).code(), Some(3));

    assert!(mac.sim.run(&["kickstart", "-k", &format!("system/{NIX_DAEMON}")]).unwrap().success());
    mac.sim.wait_running(&format!("system/{NIX_DAEMON}")).unwrap();
    let out = mac.safe_switch(&["pending"]);
    assert_eq!(out.code(), Some(0), "{}", text(&out));
}

#[test]
fn settle_is_refused_on_a_mac() {
    let mac = Mac::new();
    let (a, b) = generations(&mac.user);
    let old = mac.boot(&a);
    let new = mac.write(&b);
    let out = mac.safe_switch(&["switch", "--no-isolate", "--toplevel", new.to_str().unwrap(), "--protect", RUNNER]);
    assert_eq!(out.code(), Some(0), "{}", text(&out));
    let runner = mac.pid(RUNNER).unwrap();
    let calls = mac.sim.calls().len();
    let out = mac.safe_switch(&["settle", "--no-isolate", RUNNER]);
    assert_eq!(out.code(), Some(2), "{}", text(&out));
    assert!(out.stderr.contains("settle is not built for nix-darwin hosts yet"), "{}", text(&out));
    assert!(out.stderr.contains("nothing was changed"), "{}", text(&out));
    assert_eq!(mac.sim.calls().len(), calls, "launchctl was not called");
    assert_eq!(mac.pid(RUNNER), Some(runner));
    assert_eq!(mac.record().deferrals.len(), 1);
    assert_ne!(mac.current_system(), old);
}

/// A record that is not one stops a switch before any change, naming the
/// file.
#[test]
fn a_bad_record_stops_a_switch_before_any_change() {
    let mac = Mac::new();
    let (a, b) = generations(&mac.user);
    let old = mac.boot(&a);
    let new = mac.write(&b);
    let record = mac.path("/run/safe-switch/pending.json");
    std::fs::create_dir_all(record.parent().unwrap()).unwrap();
    std::fs::write(&record, "{\"format_version\": 1, \"deferrals\": \"secret-value\"}").unwrap();
    let out = mac.safe_switch(&["switch", "--no-isolate", "--toplevel", new.to_str().unwrap()]);
    assert_eq!(out.code(), Some(1), "{}", text(&out));
    assert!(out.stderr.contains("pending.json"), "{}", text(&out));
    assert!(!out.stderr.contains("secret-value"), "{}", text(&out));
    assert!(mac.markers().is_empty());
    assert_eq!(mac.current_system(), old);
}
