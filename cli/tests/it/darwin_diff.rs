//! `safe-switch diff` on two nix-darwin generations: the launchd plan, its
//! protection by label, the `launchctl` commands and the plist diffs,
//! through the binary, on the launchd planner's fixture generations.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::{BIN, hermetic, text, write_policy};

fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/launchd-plan/tests/fixtures").join(case)
}

/// Runs `safe-switch diff old new --live live.json ARGS` inside a fixture
/// case, with an empty policy file and no platform override from the
/// caller.
fn diff(case: &str, args: &[&str]) -> Output {
    diff_with_policy(case, "", args)
}

/// Like [`diff`], with a policy file of the given text.
fn diff_with_policy(case: &str, policy: &str, args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    hermetic(&mut Command::new(BIN))
        .current_dir(fixture(case))
        .env_remove("SAFE_SWITCH_PLATFORM")
        .env("NO_COLOR", "1")
        .args(["diff", "old", "new", "--live", "live.json", "--policy"])
        .arg(write_policy(&dir.path().join("policy.toml"), policy))
        .args(args)
        .output()
        .unwrap()
}

/// The lines of the text plan's command section.
fn commands(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .skip_while(|l| *l != "commands, in order:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| l.trim().to_owned())
        .collect()
}

#[test]
fn protected_jobs_are_deferred_and_left_out_of_the_commands() {
    let out = diff("protected-defer", &["--protect", "gitlab-runner,org.nixos.github-runner-*"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stdout.contains("org.nixos.gitlab-runner: restart deferred: org.nixos.gitlab-runner is protected"),
        "{stdout}"
    );
    assert!(stdout.contains("org.nixos.github-runner-ci1: stop deferred"), "{stdout}");
    assert!(stdout.contains("the old plists stay installed"), "{stdout}");
    let commands = commands(&stdout);
    assert_eq!(
        commands.first().map(String::as_str),
        Some("launchctl bootout system/org.nixos.prometheus-node-exporter"),
        "{stdout}"
    );
    assert!(
        commands
            .iter()
            .any(|c| c == "launchctl bootstrap system /Library/LaunchDaemons/org.nixos.prometheus-node-exporter.plist")
    );
    assert!(!commands.iter().any(|c| c.contains("runner")), "protected jobs are not touched: {commands:?}");
    // The plist that changed, as a unified diff.
    assert!(stdout.contains("+++ b/Library/LaunchDaemons/org.nixos.prometheus-node-exporter.plist"), "{stdout}");
    assert!(stdout.contains("+\t\t<string>/bin/wait4path /nix/store &amp;&amp; exec /nix/store/05cs28vjzv4bc35dx91dmlmc7wlprzj9-node_exporter-1.9.1"), "{stdout}");
}

#[test]
fn without_protection_every_change_is_a_command() {
    let out = diff("protected-defer", &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let commands = commands(&stdout);
    assert!(commands.contains(&"launchctl bootout system/org.nixos.gitlab-runner".to_owned()), "{commands:?}");
    assert!(commands.contains(&"launchctl bootout system/org.nixos.github-runner-ci1".to_owned()), "{commands:?}");
    assert!(
        commands.iter().any(|c| c.starts_with("rm ") && c.contains("org.nixos.github-runner-ci1.plist")),
        "{commands:?}"
    );
}

#[test]
fn refuse_mode_exits_3_with_no_commands() {
    let out = diff("protected-refuse", &["--protect", "gitlab-runner", "--on-protected", "refuse"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
    assert!(
        stdout
            .starts_with("switch old -> new\n\nREFUSED: nothing will be changed: 1 unit would touch a protected unit"),
        "{stdout}"
    );
    assert!(commands(&stdout).is_empty(), "a refused plan has nothing to run: {stdout}");
}

#[test]
fn the_policy_file_protects_labels_and_sets_the_mode() {
    let out = diff_with_policy("protected-defer", "protect = [\"gitlab-runner\"]\nmode = \"refuse\"\n", &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
    assert!(stdout.contains("protection (mode: refuse):"), "{stdout}");
    assert!(stdout.contains("org.nixos.gitlab-runner: restart refused"), "{stdout}");
    // The command line adds to the policy file; it can make the mode
    // stricter, never weaker: `defer` under a policy that says `refuse`
    // stays `refuse`, with a note.
    let out = diff_with_policy(
        "protected-defer",
        "protect = [\"gitlab-runner\"]\nmode = \"refuse\"\n",
        &["--protect", "org.nixos.github-runner-*", "--on-protected", "defer"],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stdout.contains("protection (mode: refuse):"), "{stdout}");
    assert!(stdout.contains("org.nixos.gitlab-runner: restart refused"), "{stdout}");
    assert!(stdout.contains("org.nixos.github-runner-ci1: stop refused"), "{stdout}");
    assert!(stderr.contains("note: --on-protected defer does not apply"), "{stderr}");
    let out = diff_with_policy(
        "protected-defer",
        "protect = [\"gitlab-runner\"]\nmode = \"defer\"\n",
        &["--protect", "org.nixos.github-runner-*"],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("org.nixos.gitlab-runner: restart deferred"), "{stdout}");
    assert!(stdout.contains("org.nixos.github-runner-ci1: stop deferred"), "{stdout}");
}

#[test]
fn json_and_junit_reports_carry_the_launchd_plan() {
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit.xml");
    let codequality = dir.path().join("codequality.json");
    let out = diff(
        "protected-defer",
        &[
            "--protect",
            "gitlab-runner",
            "--json",
            "--report",
            &format!("junit={}", junit.display()),
            "--report",
            &format!("codequality={}", codequality.display()),
        ],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(plan["format_version"], 1, "{plan:#}");
    let units = plan["units"].as_array().unwrap();
    let runner = units.iter().find(|u| u["unit"] == "org.nixos.gitlab-runner").unwrap();
    assert_eq!(runner["deferral"]["actions"], serde_json::json!(["restart"]), "{runner:#}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let failed: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("testcase") && n.children().any(|c| c.has_tag_name("failure")))
        .filter_map(|n| n.attribute("name"))
        .collect();
    assert!(failed.iter().any(|name| name.contains("org.nixos.gitlab-runner")), "{xml}");
    assert!(!failed.iter().any(|name| name.contains("prometheus")), "{xml}");
    // Code Quality findings point at the job's plist.
    let findings: serde_json::Value = serde_json::from_slice(&std::fs::read(&codequality).unwrap()).unwrap();
    let deferred = findings
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check_name"] == "safe-switch/deferred")
        .unwrap_or_else(|| panic!("{findings:#}"));
    assert_eq!(deferred["location"]["path"], "Library/LaunchDaemons/org.nixos.gitlab-runner.plist", "{deferred:#}");
}

#[test]
fn explain_is_refused_for_launchd_plans() {
    let out = diff("protected-defer", &["--explain", "org.nixos.gitlab-runner"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--explain org.nixos.gitlab-runner: launchd plans have no dependency graph"), "{stderr}");
}

#[test]
fn a_bad_plist_names_the_file() {
    let out = diff("bad-plist", &[]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(".plist"), "{stderr}");
}

#[test]
fn a_live_state_that_is_not_an_object_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("launchd-live.json");
    std::fs::write(&live, "[]").unwrap();
    let out = Command::new(BIN)
        .current_dir(fixture("changed-daemon"))
        .env_remove("SAFE_SWITCH_PLATFORM")
        .env("NO_COLOR", "1")
        .args(["diff", "old", "new", "--live"])
        .arg(&live)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    let expected =
        format!("{}: invalid launchd live state: invalid type: sequence, expected a JSON object", live.display());
    assert!(stderr.contains(&expected), "{stderr}");
}
