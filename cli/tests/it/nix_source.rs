//! `--flake`, `--base`, `--host` and `--module` through the `safe-switch`
//! binary, with the real `nix`, offline, on the fixture flakes of
//! `crates/nix-compose/tests/fixtures`.
//!
//! The error cases fail while resolving the source, before systemd is
//! asked anything, so they run on the host. The end-to-end case composes,
//! builds and plans inside the test bed's namespaces, against its live
//! systemd, exactly as a CI job on a runner would run it.
//!
//! These tests need a writable Nix store (root): under `CI=true` they fail
//! when they cannot run, elsewhere they skip with a message.

use std::process::{Command, Output};

use testbed::flakes::Fixtures;

use crate::support::{BIN, hermetic, in_bed};

/// The binary with the offline Nix configuration and the platform fixed to
/// NixOS (the fixtures' base has `nixosConfigurations.vm`).
fn safe_switch(fx: &Fixtures, cmd: &mut Command) {
    hermetic(cmd).envs(fx.env()).env("SAFE_SWITCH_PLATFORM", "nixos");
}

fn run(fx: &Fixtures, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    safe_switch(fx, &mut cmd);
    cmd.args(args).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_broken_overlay_is_a_clear_error_with_exit_1() {
    testbed::require!(nix);
    let fx = Fixtures::new();
    let (base, overlay) = (fx.flake("base"), fx.flake("overlay-broken"));
    for command in ["plan", "check", "switch"] {
        let out = run(&fx, &[command, "--flake", &overlay, "--base", &base, "--host", "vm"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{command}: {err}");
        let summary = format!(
            "error: building the base `{base}` (nixos configuration vm) extended with \
             `{overlay}` (nixosModules.default) failed\nerror: attribute 'noSuchPackage' missing"
        );
        assert!(err.contains(&summary), "{command}: {err}");
        assert!(out.stdout.is_empty(), "{command}: nothing on stdout");
    }
    assert_eq!(fx.lock_files(), Vec::<std::path::PathBuf>::new());
}

#[test]
fn missing_outputs_and_flakes_are_named() {
    testbed::require!(nix);
    let fx = Fixtures::new();
    let base = fx.flake("base");
    let out = run(&fx, &["plan", "--flake", &fx.flake("overlay-missing"), "--base", &base]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!(
            "error: the overlay flake `{}` has no nixosModules.default (available: other)",
            fx.flake("overlay-missing")
        )),
        "{}",
        stderr(&out)
    );

    let out = run(&fx, &["plan", "--flake", &fx.flake("overlay"), "--base", &base, "--host", "ci7"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out)
            .contains(&format!("error: the base flake `{base}` has no nixosConfigurations.ci7 (available: vm)")),
        "{}",
        stderr(&out)
    );

    let gone = fx.dir.path().join("gone").display().to_string();
    let out = run(&fx, &["switch", "--flake", &fx.flake("overlay"), "--base", &gone]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(&format!("error: the base flake `{gone}` does not exist")), "{}", stderr(&out));

    let out = run(&fx, &["plan", "--flake", &format!("{base}#vm"), "--module", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--module applies to an overlay flake"), "{}", stderr(&out));
    assert_eq!(fx.lock_files(), Vec::<std::path::PathBuf>::new());
}

/// A host whose Nix builds as the users of a group that does not exist,
/// as Debian's `nix-bin` run as root does without `nix-setup-systemd`
/// (there the group is `nixbld`; here one no machine has, so the test does
/// not depend on this one's groups): Nix's error comes verbatim, then the
/// cause and the setting that fixes it.
#[test]
fn a_build_failing_for_the_host_s_nix_set_up_names_the_cause_and_the_fix() {
    // Root: Nix uses build users only when it runs as root.
    testbed::require!(nix, root);
    let fx = Fixtures::new();
    // A unit no earlier run has built, so that Nix has to build.
    let overlay = fx.path("overlay").join("flake.nix");
    let nonce = format!("{}-{:?}", std::process::id(), std::time::SystemTime::now());
    let text = std::fs::read_to_string(&overlay).unwrap().replacen(
        "ExecStart=/bin/sleep infinity",
        &format!("ExecStart=/bin/sleep infinity\n        Environment=NONCE={nonce}"),
        1,
    );
    std::fs::write(&overlay, text).unwrap();
    let config = testbed::nix::config(Some(&fx.registry()))
        .replace("build-users-group =\n", "build-users-group = safe-switch-test-no-such-group\n");
    let out = Command::new(BIN)
        .env("NIX_CONFIG", config)
        .env("SAFE_SWITCH_PLATFORM", "nixos")
        .args(["plan", "--flake", &fx.flake("overlay"), "--base", &fx.flake("base"), "--host", "vm"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let report = err.split_once("error: building the base `").map(|(_, r)| r).unwrap_or_else(|| panic!("{err}"));
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(
        lines.get(1).copied(),
        Some("error: the group 'safe-switch-test-no-such-group' specified in 'build-users-group' does not exist"),
        "{err}"
    );
    assert!(lines.get(2).is_some_and(|l| l.starts_with("note: ") && l.contains("`build-users-group`")), "{err}");
    assert!(
        lines.get(3).is_some_and(|l| l.starts_with("help: ")
            && l.contains("nix-setup-systemd")
            && l.contains("`build-users-group =` (empty)")),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn a_missing_nix_is_a_clear_error() {
    let fx = Fixtures::new();
    let mut cmd = Command::new(BIN);
    safe_switch(&fx, &mut cmd);
    let out = cmd
        .env("PATH", fx.dir.path())
        .args(["plan", "--flake", &fx.flake("overlay"), "--base", &fx.flake("base")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("error: `nix` was not found: install Nix"), "{}", stderr(&out));
}

/// Compose, build and plan inside the test bed: the new generation is the
/// fixture base extended with the overlay, planned against the bed's
/// running generation and live systemd.
#[test]
fn compose_build_and_plan_against_a_live_systemd() {
    testbed::require!(nix, bed);
    let fx = Fixtures::new();
    // The running generation has an older base-web.service (another
    // ExecStart) than the base now builds.
    let running =
        testbed::Generation::new("a").service("base-web.service", "[Service]\nExecStart=/bin/sleep 1000000\n");
    let bed = testbed::TestBed::boot(&testbed::Config::new(running)).unwrap();
    bed.wait_for_state("base-web.service", "active").unwrap();

    let mut cmd = bed.command(BIN);
    safe_switch(&fx, &mut cmd);
    in_bed(&mut cmd, &bed);
    let out = cmd
        .args(["plan", "--json", "--show-wrapper", "--flake", &fx.flake("overlay")])
        .args(["--base", &fx.flake("base"), "--host", "vm"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("safe-switch: building the base"), "{err}");
    assert!(err.contains("extendModules {"), "--show-wrapper prints the wrapper: {err}");

    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let new_path = plan["new"]["path"].as_str().unwrap();
    assert!(new_path.starts_with("/nix/store/"), "{new_path}");

    // The overlay's unit is new and wanted by multi-user.target, which
    // starts it (as NixOS's switch does for new units).
    let units = plan["units"].as_array().unwrap();
    let unit = |name: &str| units.iter().find(|u| u["unit"] == name).cloned();
    let ci = unit("project-ci.service").unwrap_or_else(|| panic!("{plan:#}"));
    assert_eq!(ci["reasons"][0]["rule"], "new-unit", "{ci:#}");
    assert!(ci["reasons"][0]["detail"].as_str().unwrap().contains("multi-user.target"), "{ci:#}");
    // The base's web server runs and its ExecStart changed: stopped and
    // started (NixOS's default for a changed service).
    let web = unit("base-web.service").unwrap_or_else(|| panic!("{plan:#}"));
    assert_eq!(web["actions"], serde_json::json!(["stop", "start"]), "{web:#}");
    // Planning changed nothing on the bed.
    assert_eq!(bed.active_state("project-ci.service").unwrap(), "inactive");
    assert_eq!(fx.lock_files(), Vec::<std::path::PathBuf>::new());

    // The plan says what was built from what.
    let provenance = &plan["new"]["provenance"];
    assert_eq!(
        provenance["kind"], "composed",
        "the plan must carry source::Resolved::provenance in new.provenance: {plan:#}"
    );
    assert_eq!(provenance["host"], "vm");
    assert_eq!(provenance["base"]["ref"], fx.flake("base").as_str());
    assert!(provenance["base"]["nar_hash"].as_str().unwrap().starts_with("sha256-"), "{plan:#}");
    assert!(provenance["overlay"]["nar_hash"].as_str().unwrap().starts_with("sha256-"));
    assert!(provenance["wrapper"].as_str().unwrap().contains("inputs.overlay = { };"));

    // Switch to it, isolated in a transient unit (the default). The build
    // happens once: the isolated apply switches to the generation this
    // process built, it does not evaluate the flake again.
    let web_pid = bed.main_pid("base-web.service").unwrap();
    let mut cmd = bed.command(BIN);
    safe_switch(&fx, &mut cmd);
    in_bed(&mut cmd, &bed);
    let out = cmd
        .args(["switch", "--json", "--flake", &fx.flake("overlay")])
        .args(["--base", &fx.flake("base"), "--host", "vm"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("applying in the transient unit"), "{err}");
    assert_eq!(err.matches("safe-switch: building the base").count(), 1, "built more than once: {err}");
    let switched: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(switched["new"]["path"], new_path, "{switched:#}");
    assert_eq!(switched["new"]["provenance"], *provenance, "the isolated apply keeps the provenance");
    assert_eq!(bed.current_generation().unwrap().to_str(), Some(new_path));
    bed.wait_for_state("project-ci.service", "active").unwrap();
    assert_ne!(bed.main_pid("base-web.service").unwrap(), web_pid, "base-web.service was restarted");
    assert_eq!(fx.lock_files(), Vec::<std::path::PathBuf>::new());
}
