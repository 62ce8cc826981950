//! Golden tests: `safe-switch diff` on every case under `tests/golden/`.
//!
//! A case is a directory with `old/` and `new/` generations, an optional
//! `live.json` live-state snapshot, an optional `args` file (extra command
//! line arguments, one per line), an optional `formats` file (extra
//! `--format` values, one per line) and an optional `cgroup` file (what
//! `/proc/self/cgroup` says: the caller's cgroup). The real binary runs
//! with the case directory as its working directory, so paths print
//! relative:
//!
//! ```text
//! safe-switch diff old new [--live live.json] [ARGS...]            -> snapshots/text.snap
//! safe-switch diff old new [--live live.json] [ARGS...] --json     -> snapshots/json.snap
//! safe-switch diff old new [--live live.json] [ARGS...] --format F -> snapshots/format-F.snap
//! ```
//!
//! A case with a `merge` file instead of generations runs `safe-switch
//! report merge` with the file's lines (`HOST=PLAN.json`, the plans inside
//! the case) as its arguments, in the same three forms.
//!
//! The runs do not depend on the machine: the system policy file and the
//! process's cgroup are redirected through the debug-build-only variables
//! of `safe_switch_cli::test_hooks` (to a file that does not exist, or the
//! case's `cgroup`), so `/etc/safe-switch/policy.toml` and the cgroup of
//! whoever runs the tests are never read.
//!
//! Each snapshot holds the exit code, standard output and standard error.
//! When the text run fails (bad input, exit 1, or a usage error, exit 2),
//! only its snapshot is kept: the
//! other forms would show the same error.
//!
//! Every case runs even when one fails; the test then lists all failures.
//! Under `CI=true` insta writes nothing and fails on any mismatch; locally,
//! `INSTA_UPDATE=always cargo test -p safe-switch --test it golden` records
//! new snapshots, which must then be read and checked by hand, and
//! `GOLDEN_FILTER=report-` runs only the cases whose names start with that
//! prefix.
//!
//! The cases are listed here, not with insta's `glob!`: it walks the whole
//! tree below its base following links and stops at the first link it
//! cannot follow, and the cases' generations hold dangling links on
//! purpose (`bad-dangling-symlink`, the store links of
//! `nixos-store-layout`), as well as links into the host's `/etc` that a
//! walk must not enter (`bad-unit-dir-outside`).

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::Command;

use safe_switch_cli::test_hooks;

use crate::support::{self, BIN, NOWHERE, diff_args, golden_dir, lines};

/// Fewer cases than this means the directory was lost or emptied.
const MIN_CASES: usize = 40;

/// Makes a run of the binary in `case` independent of the machine: no
/// system policy, and the case's `cgroup` file (else none) as the
/// process's cgroup. Overrides whatever the test process inherited.
fn hermetic<'a>(cmd: &'a mut Command, case: &Path) -> &'a mut Command {
    let cgroup = case.join("cgroup");
    let cgroup = if cgroup.exists() { cgroup } else { PathBuf::from(NOWHERE) };
    support::hermetic(cmd).env(test_hooks::PROC_CGROUP, cgroup)
}

/// Runs the binary in `case` and renders the result as one snapshot text.
fn run(case: &Path, args: &[String]) -> (i32, String) {
    let mut cmd = Command::new(BIN);
    hermetic(&mut cmd, case);
    let output = cmd.args(args).current_dir(case).env_remove("RUST_BACKTRACE").env("NO_COLOR", "1").output().unwrap();
    let code = output.status.code().unwrap_or(-1);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{}: the binary panicked:\n{stderr}", case.display());
    let text = format!("$ safe-switch {}\nexit: {code}\n--- stdout\n{stdout}--- stderr\n{stderr}", args.join(" "));
    (code, text)
}

fn check_case(case: &Path) {
    let name = case.file_name().unwrap().to_string_lossy().into_owned();
    let base = if case.join("merge").exists() {
        let mut args = vec!["report".to_owned(), "merge".to_owned()];
        args.extend(lines(&case.join("merge")));
        args
    } else {
        diff_args(case)
    };

    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(case.join("snapshots"));
    settings.set_prepend_module_to_snapshot(false);
    settings.set_description(format!("golden case {name}"));
    settings.bind(|| {
        let (code, text) = run(case, &base);
        insta::assert_snapshot!("text", text);
        // Bad input (1) and a bad command line (2) print one error; the
        // other forms would show the same.
        if matches!(code, 1 | 2) {
            return;
        }
        let mut json = base.clone();
        json.push("--json".to_owned());
        insta::assert_snapshot!("json", run(case, &json).1);
        for format in lines(&case.join("formats")) {
            let mut args = base.clone();
            args.extend(["--format".to_owned(), format.clone()]);
            insta::assert_snapshot!(format!("format-{format}"), run(case, &args).1);
        }
    });
}

#[test]
fn golden_cases() {
    let dir = golden_dir();
    let mut cases: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= MIN_CASES, "only {} golden cases in {}", cases.len(), dir.display());

    // `GOLDEN_FILTER=report-` runs only the cases whose names start with
    // that prefix, to record or review one group of cases at a time.
    let filter = std::env::var("GOLDEN_FILTER").unwrap_or_default();
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with(&filter) {
            continue;
        }
        let merge = case.join("merge").exists();
        if !merge && (!case.join("old").is_dir() || !case.join("new").is_dir()) {
            failures.push(format!("{name}: a case needs old/ and new/ directories, or a merge file"));
            continue;
        }
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| check_case(case))) {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            failures.push(format!("{name}: {}", message.lines().next().unwrap_or("")));
        }
    }
    assert!(failures.is_empty(), "{} of {} golden cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// The harness is hermetic: a system policy (as a machine with safe-switch
/// installed has one) changes the plan when the binary is pointed at it,
/// and the harness's own settings override one inherited from the
/// environment, so the snapshots above cannot depend on it.
#[test]
fn the_harness_does_not_read_the_host_policy() {
    let case = support::golden("protect-direct-changed");
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    fs::write(&policy, "protect = [\"nginx\"]\nmode = \"refuse\"\n").unwrap();
    let args = ["diff", "old", "new", "--live", "live.json"];

    let mut plain = Command::new(BIN);
    plain.args(args).current_dir(&case);
    let plain = hermetic(&mut plain, &case).output().unwrap();
    assert_eq!(plain.status.code(), Some(0), "{plain:?}");

    // A "system policy" that protects nginx.service refuses the plan.
    let mut with_policy = Command::new(BIN);
    with_policy.args(args).current_dir(&case).env(test_hooks::SYSTEM_POLICY, &policy);
    with_policy.env(test_hooks::PROC_CGROUP, NOWHERE);
    let with_policy = with_policy.output().unwrap();
    assert_eq!(with_policy.status.code(), Some(3), "the system policy was not read: {with_policy:?}");
    let text = String::from_utf8_lossy(&with_policy.stdout);
    assert!(text.contains(&format!("[policy {}]", policy.display())), "{text}");

    // The harness's settings win over an inherited one.
    let mut inherited = Command::new(BIN);
    inherited.args(args).current_dir(&case).env(test_hooks::SYSTEM_POLICY, &policy);
    let inherited = hermetic(&mut inherited, &case).output().unwrap();
    assert_eq!(inherited.status.code(), Some(0));
    assert_eq!(inherited.stdout, plain.stdout, "the harness read the inherited policy");
}
