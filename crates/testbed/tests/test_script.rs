//! `scripts/test`, the README's test command, on a small workspace of its
//! own: every test binary runs even after one fails, and the run ends with
//! the totals and the failed tests' names, with a non-zero exit status.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests may panic")]

use std::path::Path;
use std::process::Command;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A workspace whose first package's first test binary fails, whose
/// second crashes before reporting, and whose second package (run after
/// them) passes, with one skipped test.
fn workspace(root: &Path) {
    write(&root.join("Cargo.toml"), "[workspace]\nresolver = \"2\"\nmembers = [\"a\", \"b\"]\n");
    for name in ["a", "b"] {
        write(
            &root.join(name).join("Cargo.toml"),
            &format!("[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n"),
        );
        write(&root.join(name).join("src/lib.rs"), "");
    }
    write(
        &root.join("a/tests/mixed.rs"),
        "#[test] fn passes() {}\n\
         #[test] fn fails_first() { assert_eq!(1, 2); }\n\
         #[test] fn fails_second() { panic!(\"no\"); }\n\
         #[test] #[ignore] fn ignored() {}\n",
    );
    write(&root.join("a/tests/crash.rs"), "#[test] fn aborts() { std::process::abort(); }\n");
    write(
        &root.join("b/tests/later.rs"),
        "use std::io::Write;\n\
         #[test] fn runs_after_the_failures() {}\n\
         #[test] fn skips() { let _ = writeln!(std::io::stderr(), \"SKIPPED skips: not here\"); }\n",
    );
}

#[test]
fn every_test_binary_runs_and_the_run_ends_with_the_totals() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ws");
    workspace(&root);
    let manifest = root.join("Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let lock = Command::new(&cargo).arg("generate-lockfile").arg("--manifest-path").arg(&manifest).output().unwrap();
    assert!(lock.status.success(), "{}", String::from_utf8_lossy(&lock.stderr));

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/test");
    let out = Command::new(&script)
        .arg("--manifest-path")
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", dir.path().join("target"))
        .env_remove("CARGO_TERM_COLOR")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let all = format!("{stdout}\n--- stderr ---\n{stderr}");
    assert_eq!(out.status.code(), Some(101), "cargo's failure status is kept: {all}");
    assert!(stdout.contains("test runs_after_the_failures ... ok"), "the later binary ran: {all}");

    let summary: Vec<&str> = stdout.lines().skip_while(|l| !l.starts_with("scripts/test: ")).collect();
    assert_eq!(
        summary.get(..2),
        Some(&["scripts/test: 3 passed, 2 failed, 1 ignored (1 skipped: see the SKIPPED lines)", "failed:"][..]),
        "{all}"
    );
    // Tests of one binary run in parallel: their order varies.
    let mut failed = summary[2..].to_vec();
    failed.sort_unstable();
    assert_eq!(
        failed,
        [
            "    (-p a --test crash ended before reporting its results)",
            "    fails_first  (-p a --test mixed)",
            "    fails_second  (-p a --test mixed)",
        ],
        "{all}"
    );
}
