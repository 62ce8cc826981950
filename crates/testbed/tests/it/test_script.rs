//! `scripts/test`, the README's test command, on a small workspace of its
//! own: every test binary runs even after one fails, and the run ends with
//! the totals and the failed tests' names, with a non-zero exit status.

use std::path::Path;
use std::process::Command;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A workspace whose first package's first test binary (one binary of
/// modules, as this workspace's crates have) fails, whose second crashes
/// before reporting, and whose second package (run after them) passes,
/// with one skipped test.
fn workspace(root: &Path) {
    write(&root.join("Cargo.toml"), "[workspace]\nresolver = \"2\"\nmembers = [\"a\", \"b\"]\n");
    for name in ["a", "b"] {
        write(
            &root.join(name).join("Cargo.toml"),
            &format!("[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n"),
        );
        write(&root.join(name).join("src/lib.rs"), "");
    }
    write(&root.join("a/tests/it/main.rs"), "mod mixed;\n");
    write(
        &root.join("a/tests/it/mixed.rs"),
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

/// Runs `scripts/test` on the workspace at `root` (with its own target
/// directory under `dir`): exit code, standard output, and both streams
/// for messages.
fn run_script(dir: &Path, root: &Path) -> (Option<i32>, String, String) {
    let manifest = root.join("Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let lock = Command::new(&cargo).arg("generate-lockfile").arg("--manifest-path").arg(&manifest).output().unwrap();
    assert!(lock.status.success(), "{}", String::from_utf8_lossy(&lock.stderr));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/test");
    let out = Command::new(&script)
        .arg("--manifest-path")
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .env_remove("CARGO_TERM_COLOR")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let all = format!("{stdout}\n--- stderr ---\n{}", String::from_utf8_lossy(&out.stderr));
    (out.status.code(), stdout, all)
}

/// The summary at the end of the output.
fn summary(stdout: &str) -> Vec<&str> {
    stdout.lines().skip_while(|l| !l.starts_with("scripts/test: ")).collect()
}

#[test]
fn every_test_binary_runs_and_the_run_ends_with_the_totals() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ws");
    workspace(&root);
    let (code, stdout, all) = run_script(dir.path(), &root);
    assert_eq!(code, Some(101), "cargo's failure status is kept: {all}");
    assert!(stdout.contains("test runs_after_the_failures ... ok"), "the later binary ran: {all}");

    let summary = summary(&stdout);
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
            "    mixed::fails_first  (-p a --test it)",
            "    mixed::fails_second  (-p a --test it)",
        ],
        "{all}"
    );
}

#[test]
fn code_that_does_not_compile_is_named_in_the_totals() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ws");
    write(&root.join("Cargo.toml"), "[workspace]\nresolver = \"2\"\nmembers = [\"a\"]\n");
    write(&root.join("a/Cargo.toml"), "[package]\nname = \"a\"\nversion = \"0.1.0\"\nedition = \"2021\"\n");
    write(&root.join("a/src/lib.rs"), "pub fn broken() -> u32 { \"not a number\" }\n");
    let (code, stdout, all) = run_script(dir.path(), &root);
    assert_eq!(code, Some(101), "{all}");
    let summary = summary(&stdout);
    assert_eq!(summary.first(), Some(&"scripts/test: 0 passed, 0 failed, 0 ignored"), "{all}");
    assert!(summary.contains(&"    (`a` (lib) did not compile)"), "{all}");
}
