//! A generation is read from itself and the Nix store only, and nothing of
//! a file outside them reaches a report, in any format.
//!
//! Each test plans a generation whose files link where they must not (a
//! host file, `/proc/self/environ`, a secret next to the generation, a
//! FIFO, `/dev/zero`), through the binary, in all five formats, and checks
//! that the run ends (a deadline and a memory limit catch a hang or an
//! endless read), exits as it should and never prints the foreign
//! content. The golden cases of the same names snapshot the messages;
//! FIFOs cannot be committed, so those generations are made here.

use std::fs;
use std::os::unix::fs::symlink;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::{BIN, golden};

const FORMATS: [&str; 5] = ["text", "json", "junit", "codequality", "markdown"];
/// An environment variable whose value must never be printed.
const ENV_MARKER: (&str, &str) = ("SAFE_SWITCH_TEST_ENVIRON_MARKER", "environ-marker-7f3a9c");

/// What one run printed.
struct Run {
    format: &'static str,
    code: Option<i32>,
    out: String,
}

/// Runs `safe-switch diff old new [--live live.json] ARGS --format F` in
/// `dir` for every format, each within a deadline and a memory limit.
fn run_all_formats(dir: &Path, args: &[&str]) -> Vec<Run> {
    let mut runs = Vec::new();
    for format in FORMATS {
        let mut cmd = Command::new(BIN);
        cmd.current_dir(dir).args(["diff", "old", "new"]);
        if dir.join("live.json").exists() {
            cmd.args(["--live", "live.json"]);
        }
        cmd.args(args).args(["--format", format]).env("NO_COLOR", "1").env(ENV_MARKER.0, ENV_MARKER.1);
        // An endless read (a device) ends in a failed allocation, not in
        // the machine's memory.
        // SAFETY: setrlimit is async-signal-safe and touches no memory of
        // the parent.
        unsafe {
            cmd.pre_exec(|| {
                let limit = rustix::process::Rlimit { current: Some(2 << 30), maximum: Some(2 << 30) };
                Ok(rustix::process::setrlimit(rustix::process::Resource::As, limit)?)
            });
        }
        let out = testbed::exec::run(&mut cmd, Duration::from_secs(60))
            .unwrap_or_else(|err| panic!("{}: {format}: does not end: {err}", dir.display()));
        assert!(!out.stderr.contains("panicked"), "{format}: {}", out.stderr);
        runs.push(Run { format, code: out.code(), out: format!("{}{}", out.stdout, out.stderr) });
    }
    runs
}

/// Checks every run: exit code `code`, `expected` in the output, and none
/// of `markers`.
fn check(runs: &[Run], code: i32, expected: &str, markers: &[String]) {
    for run in runs {
        assert_eq!(run.code, Some(code), "{}:\n{}", run.format, run.out);
        assert!(run.out.contains(expected), "{}: expected {expected:?} in:\n{}", run.format, run.out);
        for marker in markers {
            assert!(!run.out.contains(marker.as_str()), "{}: prints {marker:?}:\n{}", run.format, run.out);
        }
    }
}

/// The lines of a host file that would give it away in a report: long
/// enough not to occur by chance.
fn host_lines(path: &str) -> Vec<String> {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<String> = text.lines().map(str::trim).filter(|l| l.len() >= 10).map(str::to_owned).collect();
    lines
}

#[test]
fn a_unit_linked_to_a_host_file_is_refused_and_neither_file_is_shown() {
    let mut markers = host_lines("/etc/os-release");
    // Nor the same-named file inside the generation, which is not what
    // the link names and not what systemd would load.
    markers.push("harmless-copy-inside-the-generation".into());
    let runs = run_all_formats(&golden("bad-link-outside-store"), &[]);
    check(
        &runs,
        1,
        "new/etc/systemd/system/app.service: links outside the generation and the Nix store (to /etc/os-release)",
        &markers,
    );
}

#[test]
fn a_unit_linked_to_the_environment_is_refused_unread() {
    let runs = run_all_formats(&golden("bad-link-proc-environ"), &[]);
    check(
        &runs,
        1,
        "app.service: links outside the generation and the Nix store (to /proc/self/environ)",
        &[ENV_MARKER.1.to_owned()],
    );
}

#[test]
fn a_relative_link_out_of_the_generation_is_refused_unread() {
    let runs = run_all_formats(&golden("bad-link-relative-escape"), &[]);
    let markers = ["AKIAGOLDENMARKER0001".to_owned(), "golden-secret-marker".to_owned()];
    check(&runs, 1, "app.service: links outside the generation and the Nix store", &markers);
}

#[test]
fn init_interface_version_linked_to_a_host_file_is_refused_unquoted() {
    let runs = run_all_formats(&golden("bad-init-interface-outside"), &[]);
    let expected = "new/init-interface-version: links outside the generation and the Nix store (to /etc/os-release)";
    check(&runs, 1, expected, &host_lines("/etc/os-release"));
}

#[test]
fn dev_zero_as_a_unit_or_fstab_is_refused_without_reading() {
    for case in ["bad-link-dev-zero", "bad-fstab-dev-zero"] {
        let runs = run_all_formats(&golden(case), &[]);
        check(&runs, 1, "links outside the generation and the Nix store (to /dev/zero)", &["\0".to_owned()]);
    }
}

#[test]
fn a_unit_directory_or_static_etc_tree_on_the_host_is_refused() {
    let runs = run_all_formats(&golden("bad-unit-dir-outside"), &[]);
    check(&runs, 1, "new/etc/systemd/system: links outside the generation and the Nix store", &[]);
    let runs = run_all_formats(&golden("bad-system-manager-static-outside"), &[]);
    check(&runs, 1, "new/etcFiles/etcFiles.json: links outside the generation and the Nix store", &[]);
}

#[test]
fn nixos_links_to_the_host_fstab_and_system_conf_plan_and_are_never_quoted() {
    let mut markers = host_lines("/etc/fstab");
    markers.extend(host_lines("/etc/systemd/system.conf"));
    let runs = run_all_formats(&golden("fstab-system-conf-host-links"), &[]);
    check(&runs, 0, "app.service", &markers);
}

/// A generation pair in a temporary directory: `app.service` changes.
fn pair() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (g, exec) in [("old", "/bin/app"), ("new", "/bin/app --new")] {
        let units = dir.path().join(g).join("etc/systemd/system");
        fs::create_dir_all(&units).unwrap();
        fs::write(units.join("app.service"), format!("[Service]\nExecStart={exec}\n")).unwrap();
    }
    dir
}

fn mkfifo(path: &Path) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    assert!(Command::new("mkfifo").arg(path).status().unwrap().success());
}

#[test]
fn a_fifo_anywhere_in_a_generation_is_an_error_not_a_hang() {
    for rel in ["etc/systemd/system/app.service", "etc/fstab", "etc/systemd/system.conf", "init-interface-version"] {
        let dir = pair();
        let path = dir.path().join("new").join(rel);
        let _ = fs::remove_file(&path);
        mkfifo(&path);
        let runs = run_all_formats(dir.path(), &[]);
        check(&runs, 1, &format!("error: new/{rel}: cannot read: a FIFO, not a regular file"), &[]);
    }
}

#[test]
fn a_unit_file_over_the_limit_is_an_error_naming_it() {
    let dir = pair();
    let file = fs::File::create(dir.path().join("new/etc/systemd/system/app.service")).unwrap();
    file.set_len((4 << 20) + 1).unwrap();
    let runs = run_all_formats(dir.path(), &[]);
    let expected = "new/etc/systemd/system/app.service: larger than 4 MiB, the most read from a unit file";
    check(&runs, 1, expected, &[]);
}

#[test]
fn an_ini_secret_linked_as_a_unit_is_refused_unread() {
    let dir = pair();
    let secret = dir.path().join("credentials");
    fs::write(&secret, "[Service]\nExecStart=/bin/app\naws_secret_access_key=tmp-secret-marker-41c2\n").unwrap();
    let unit = dir.path().join("new/etc/systemd/system/app.service");
    fs::remove_file(&unit).unwrap();
    symlink(&secret, &unit).unwrap();
    // And a drop-in of the old generation, through a link in its store.
    let store = dir.path().join("old/nix/store/aaaa-dropin");
    fs::create_dir_all(&store).unwrap();
    symlink(&secret, store.join("x.conf")).unwrap();
    fs::create_dir_all(dir.path().join("old/etc/systemd/system/app.service.d")).unwrap();
    symlink("/nix/store/aaaa-dropin/x.conf", dir.path().join("old/etc/systemd/system/app.service.d/x.conf")).unwrap();
    let runs = run_all_formats(dir.path(), &[]);
    check(&runs, 1, "links outside the generation and the Nix store", &["tmp-secret-marker-41c2".to_owned()]);
}

#[test]
fn a_system_manager_static_tree_outside_the_store_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("etc-static-env/systemd/system");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("app.service"), "[Service]\nExecStart=/bin/static-tree-marker-93d1\n").unwrap();
    for g in ["old", "new"] {
        let top = dir.path().join(g);
        fs::create_dir_all(top.join("services")).unwrap();
        fs::create_dir_all(top.join("etcFiles")).unwrap();
        fs::write(top.join("services/services.json"), r#"{"app.service": {"storePath": "/nix/store/x/app.service"}}"#)
            .unwrap();
        let etc = format!(r#"{{"entries": {{}}, "staticEnv": "{}"}}"#, dir.path().join("etc-static-env").display());
        fs::write(top.join("etcFiles/etcFiles.json"), etc).unwrap();
    }
    let runs = run_all_formats(dir.path(), &[]);
    check(
        &runs,
        1,
        "old/etcFiles/etcFiles.json: links outside the generation and the Nix store",
        &["static-tree-marker-93d1".to_owned()],
    );
}

#[test]
fn a_plist_linked_out_of_a_darwin_generation_is_refused_unread() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/launchd-plan/tests/fixtures/changed-daemon");
    let dir = tempfile::tempdir().unwrap();
    let copied =
        Command::new("cp").arg("-a").arg(fixture.join("old")).arg(fixture.join("new")).arg(dir.path()).status();
    assert!(copied.unwrap().success());
    fs::copy(fixture.join("live.json"), dir.path().join("live.json")).unwrap();
    let daemons = dir.path().join("new/Library/LaunchDaemons");
    let plist = fs::read_dir(&daemons)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "plist"));
    let plist = plist.expect("the fixture has a daemon");
    let secret = dir.path().join("secret.plist");
    let text = fs::read_to_string(&plist)
        .unwrap()
        .replace("</dict>", "<key>Secret</key><string>plist-marker-5be0</string></dict>");
    fs::write(&secret, text).unwrap();
    fs::remove_file(&plist).unwrap();
    symlink(&secret, &plist).unwrap();
    let runs = run_all_formats(dir.path(), &[]);
    check(&runs, 1, "links outside the generation and the Nix store", &["plist-marker-5be0".to_owned()]);
}
