//! What the tests that run the binary share: runs that do not depend on
//! the machine, on the host or inside a test bed, and the golden cases.
//!
//! The binary under test is a debug build, which reads the test-only
//! variables of `safe_switch_cli::test_hooks`: [`hermetic`] points the
//! system policy at a file that does not exist, so a machine with
//! `/etc/safe-switch/policy.toml` gives the same results as one without;
//! [`in_bed`] also keeps the saved-plan key inside a test bed (its `/run`)
//! and takes the bed's generations directory as the Nix store.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use safe_switch_cli::test_hooks;
use testbed::{Output, TestBed};

/// The binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_safe-switch");

/// A path that does not exist.
pub(crate) const NOWHERE: &str = "/nonexistent/safe-switch-test";

/// Where [`in_bed`] keeps the saved-plan key, inside the bed.
pub(crate) const BED_STATE_DIR: &str = "/run/safe-switch-state";

/// How long one run of the binary inside a bed may take before it is
/// killed and fails the test.
const IN_BED_DEADLINE: Duration = Duration::from_secs(180);

/// No system policy for this run of the binary.
pub(crate) fn hermetic(cmd: &mut Command) -> &mut Command {
    // Reports are written as sudo's caller when these are set.
    cmd.env(test_hooks::SYSTEM_POLICY, NOWHERE).env_remove("SUDO_UID").env_remove("SUDO_GID")
}

/// A run inside `bed` (a command from `TestBed::command`): no system
/// policy, the saved-plan key in the bed's `/run`, the bed's generations
/// as the Nix store, and system-manager's state file and profile those of
/// the bed's system-manager host (below its `/run`), never the machine's.
pub(crate) fn in_bed<'a>(cmd: &'a mut Command, bed: &TestBed) -> &'a mut Command {
    hermetic(cmd)
        .env(test_hooks::STATE_DIR, BED_STATE_DIR)
        .env(test_hooks::STORE_DIR, bed.store_dir())
        .env(test_hooks::SYSTEM_MANAGER_ROOT, testbed::system_manager::SYSTEM_MANAGER_ROOT)
}

/// Runs the binary inside `bed` ([`in_bed`], no colours) with `args`.
pub(crate) fn safe_switch(bed: &TestBed, args: &[&str]) -> Output {
    safe_switch_with(bed, args, &[])
}

/// Like [`safe_switch`], with extra environment variables (the test-only
/// ones of `safe_switch_cli::test_hooks`).
pub(crate) fn safe_switch_with(bed: &TestBed, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = bed.command(BIN);
    in_bed(&mut cmd, bed).args(args).env("NO_COLOR", "1").envs(env.iter().copied());
    testbed::exec::run(&mut cmd, IN_BED_DEADLINE).expect("safe-switch runs")
}

/// Validates a JUnit file against `docs/schema/junit.xsd` with xmllint:
/// `None` where xmllint is not installed (outside CI only), else whether
/// it validates, with xmllint's complaint.
pub(crate) fn xmllint_ok(file: &Path) -> Option<Result<(), String>> {
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/schema/junit.xsd");
    match Command::new("xmllint").arg("--noout").arg("--schema").arg(&schema).arg(file).output() {
        Ok(out) if out.status.success() => Some(Ok(())),
        Ok(out) => Some(Err(String::from_utf8_lossy(&out.stderr).into_owned())),
        Err(err) => {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "xmllint is needed under CI=true: {err}");
            eprintln!("skipping the schema validation: xmllint is not installed ({err})");
            None
        }
    }
}

/// A path as an argument.
pub(crate) fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A service of a test generation that runs until stopped; changing `env`
/// changes it.
pub(crate) fn daemon(env: &str) -> String {
    testbed::unit::daemon("daemon", env)
}

/// Writes a file inside the bed at `/run/<rel>` with `mode`, its directory
/// with `dir_mode`; returns the path as the bed sees it.
pub(crate) fn bed_file(bed: &TestBed, rel: &str, text: &str, dir_mode: u32, mode: u32) -> String {
    let path = bed.run_dir().join(rel);
    let dir = path.parent().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(dir_mode)).unwrap();
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    format!("/run/{rel}")
}

/// Writes a policy file (or any file) that passes root's checks of the
/// file itself (mode 0644); returns its path.
pub(crate) fn write_policy(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    path.to_owned()
}

/// The golden cases' directory, `tests/golden`.
pub(crate) fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden")
}

/// One golden case's directory.
pub(crate) fn golden(case: &str) -> PathBuf {
    golden_dir().join(case)
}

/// The non-empty lines of a case's file (`args`, `formats`), trimmed; none
/// when it does not exist.
pub(crate) fn lines(path: &Path) -> Vec<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect(),
        Err(_) => Vec::new(),
    }
}

/// A golden case's command line, run inside the case's directory:
/// `diff old new [--live live.json] [ARGS...]`.
pub(crate) fn diff_args(case: &Path) -> Vec<String> {
    let mut args = vec!["diff".to_owned(), "old".to_owned(), "new".to_owned()];
    if case.join("live.json").exists() {
        args.extend(["--live".to_owned(), "live.json".to_owned()]);
    }
    args.extend(lines(&case.join("args")));
    args
}

/// Standard output and standard error of a run, as text.
pub(crate) fn text(out: &std::process::Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// What each apply a run made (a switch, the resume before it, its
/// rollback) saw systemd do, from the line its report has: how many
/// effects it observed, how many of them were unplanned, and how many
/// predicted.
pub(crate) fn observed(out: &Output) -> Vec<(usize, usize, usize)> {
    out.stderr
        .lines()
        .filter(|l| l.starts_with("observed ") && l.ends_with(" jobs systemd ran"))
        .map(|line| {
            let number = |text: Option<&str>| {
                text.and_then(|t| t.trim().parse::<usize>().ok()).unwrap_or_else(|| panic!("not a figure: {line}"))
            };
            let effects = number(line["observed ".len()..].split(" effects").next());
            let unplanned = number(line.split(" predicted, ").nth(1).and_then(|r| r.split(" unplanned").next()));
            let predicted = number(line.split(" planned, ").nth(1).and_then(|r| r.split(" predicted").next()));
            (effects, unplanned, predicted)
        })
        .collect()
}

/// Checks that the applies of a run of correct plans saw systemd do
/// nothing the plans did not list or predict, and says how much they saw
/// (`figure: ...: observed 6 effects, 0 unplanned`) on standard error,
/// where a passing test's output is not hidden.
/// Returns the number of effects.
pub(crate) fn assert_exact(test: &str, out: &Output) -> usize {
    use std::io::Write as _;
    let seen = observed(out);
    assert!(!seen.is_empty(), "{test}: no observation in the output: {}", out.stderr);
    let effects: usize = seen.iter().map(|(e, _, _)| e).sum();
    let unplanned: usize = seen.iter().map(|(_, u, _)| u).sum();
    let predicted: usize = seen.iter().map(|(_, _, p)| p).sum();
    // Written to the process's standard error itself, which the test
    // harness does not capture: the figure shows in every run.
    let _ = writeln!(
        std::io::stderr(),
        "figure: {test}: observed {effects} effects, {unplanned} unplanned ({predicted} of them predicted)"
    );
    assert_eq!(unplanned, 0, "{test}: unplanned effects on a correct plan: {}", out.stderr);
    effects
}
