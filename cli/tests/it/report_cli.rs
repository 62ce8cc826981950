//! `--report FORMAT=PATH` end to end, on every `tests/golden/report-*`
//! case: the binary writes all five formats at once, the JUnit file
//! validates against `docs/schema/junit.xsd` (xmllint) and parses, the Code
//! Quality file parses with unique fingerprints that are the same on a
//! second run, the JSON file is the `--json` output, and bad `--report`
//! values fail before anything is written.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::{BIN, diff_args as base_args, golden, golden_dir, hermetic, xmllint_ok};

fn report_cases() -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("report-"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 8, "only {} report-* golden cases", cases.len());
    cases
}

fn run(case: &Path, args: &[String]) -> Output {
    hermetic(&mut Command::new(BIN)).args(args).current_dir(case).env("NO_COLOR", "1").output().unwrap()
}

fn write_all(case: &Path, dir: &Path) -> Output {
    let mut args = base_args(case);
    for (format, name) in
        [("junit", "r.xml"), ("codequality", "cq.json"), ("markdown", "s.md"), ("json", "p.json"), ("text", "t.txt")]
    {
        args.push("--report".to_owned());
        args.push(format!("{format}={}", dir.join(name).display()));
    }
    run(case, &args)
}

#[test]
fn every_format_is_written_valid_and_stable() {
    for case in report_cases() {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let dir = tempfile::tempdir().unwrap();
        let out = write_all(&case, dir.path());
        let code = out.status.code();
        assert!(matches!(code, Some(0) | Some(3)), "{name}: {out:?}");

        let junit = dir.path().join("r.xml");
        if let Some(result) = xmllint_ok(&junit) {
            result.unwrap_or_else(|e| panic!("{name}: the JUnit report does not validate: {e}"));
        }
        let xml = fs::read_to_string(&junit).unwrap();
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let cases: Vec<_> = doc.descendants().filter(|n| n.has_tag_name("testcase")).collect();
        let names: BTreeSet<(&str, &str)> =
            cases.iter().map(|c| (c.attribute("classname").unwrap(), c.attribute("name").unwrap())).collect();
        assert_eq!(names.len(), cases.len(), "{name}: repeated test case names");
        let failures = cases.iter().filter(|c| c.children().any(|n| n.has_tag_name("failure"))).count();
        // JUnit failures appear exactly when the plan touches a protected
        // unit (its verdict property says how) or, once it was carried
        // out, when the apply did not go as planned; and a refusal (exit 3
        // from `diff`) always shows as failures, so a CI system shows what
        // made the job fail.
        let property = |key: &str| {
            doc.descendants()
                .find(|n| n.has_tag_name("property") && n.attribute("name") == Some(key))
                .and_then(|n| n.attribute("value"))
        };
        let verdict = property("verdict").unwrap();
        let applied_ok =
            property("applied").is_none_or(|a| a == "done") && property("observed.unplanned").is_none_or(|n| n == "0");
        assert_eq!(
            verdict != "safe" || !applied_ok,
            failures > 0,
            "{name}: verdict {verdict} with {failures} JUnit failures"
        );
        assert_eq!(code == Some(3), verdict == "refused", "{name}: exit {code:?}, verdict {verdict}");

        let cq_text = fs::read_to_string(dir.path().join("cq.json")).unwrap();
        let cq: serde_json::Value = serde_json::from_str(&cq_text).unwrap();
        let fingerprints: Vec<&str> =
            cq.as_array().unwrap().iter().map(|f| f["fingerprint"].as_str().unwrap()).collect();
        let unique: BTreeSet<&str> = fingerprints.iter().copied().collect();
        assert_eq!(unique.len(), fingerprints.len(), "{name}: duplicate fingerprints");

        let md = fs::read_to_string(dir.path().join("s.md")).unwrap();
        assert!(md.starts_with("## safe-switch: "), "{name}: {md}");
        let text = fs::read_to_string(dir.path().join("t.txt")).unwrap();
        assert!(!text.contains('\x1b'), "{name}: colours in a file");
        assert_eq!(String::from_utf8_lossy(&out.stdout), text, "{name}: stdout and the text report differ");

        let mut json_args = base_args(&case);
        json_args.push("--json".to_owned());
        let json = run(&case, &json_args);
        assert_eq!(fs::read(dir.path().join("p.json")).unwrap(), json.stdout, "{name}");

        // A second run gives the same Code Quality file, byte for byte.
        let again = tempfile::tempdir().unwrap();
        write_all(&case, again.path());
        assert_eq!(cq_text, fs::read_to_string(again.path().join("cq.json")).unwrap(), "{name}: not stable");
    }
}

#[test]
fn bad_report_values_fail_before_anything_is_written() {
    let case = golden("report-protect-deferred");
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("r.xml");
    for (bad, needle) in [("xml=out.xml", "\"xml\""), ("junit", "FORMAT=PATH"), ("junit=", "empty")] {
        let mut args = base_args(&case);
        args.extend([
            "--report".to_owned(),
            format!("junit={}", good.display()),
            "--report".to_owned(),
            bad.to_owned(),
        ]);
        let out = run(&case, &args);
        assert_eq!(out.status.code(), Some(2), "{bad}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{bad}: {stderr}");
        assert!(out.stdout.is_empty(), "{bad}: printed a plan");
        assert!(!good.exists(), "{bad}: the valid report was written anyway");
    }
    let mut args = base_args(&case);
    args.extend(["--report".to_owned(), "junit=/nonexistent-dir/r.xml".to_owned()]);
    let out = run(&case, &args);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent-dir/r.xml"), "{out:?}");
}

/// Runs the binary on a terminal (a pseudo-terminal from util-linux's
/// `script`) and returns what it printed.
fn on_a_terminal(case: &Path, no_color: Option<&str>) -> Option<String> {
    let cmd = format!("{BIN} {}", base_args(case).join(" "));
    let mut script = Command::new("script");
    hermetic(&mut script).args(["-q", "-e", "-c", &cmd, "/dev/null"]).current_dir(case).env_remove("NO_COLOR");
    if let Some(v) = no_color {
        script.env("NO_COLOR", v);
    }
    match script.output() {
        Ok(out) => Some(String::from_utf8_lossy(&out.stdout).into_owned()),
        Err(err) => {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "`script` (bsdutils) is needed under CI=true: {err}");
            eprintln!("skipping the terminal test: `script` is not available ({err})");
            None
        }
    }
}

#[test]
fn colours_on_a_terminal_unless_no_color_is_set() {
    let case = golden("report-service-changed");
    let Some(tty) = on_a_terminal(&case, None) else { return };
    assert!(tty.contains("\x1b[32m+"), "no coloured diff on a terminal:\n{tty}");
    let Some(plain) = on_a_terminal(&case, Some("1")) else { return };
    assert!(!plain.contains('\x1b'), "colours with NO_COLOR set:\n{plain}");
    assert!(plain.contains("\n+"), "{plain}");
    // An empty NO_COLOR does not count as set (no-color.org).
    let Some(empty) = on_a_terminal(&case, Some("")) else { return };
    assert!(empty.contains("\x1b["), "{empty}");
    // A pipe gets no colours either.
    let out = hermetic(&mut Command::new(BIN))
        .args(base_args(&case))
        .current_dir(&case)
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    let piped = String::from_utf8_lossy(&out.stdout);
    assert!(piped.contains("\n+") && !piped.contains('\x1b'), "{piped}");
}

/// A reader that goes away (`safe-switch ... | head -c 1`) ends the program
/// quietly with 0, as `ripgrep` does, in every format and for `--explain`.
#[test]
fn a_closed_pipe_ends_quietly() {
    use std::io::Read as _;
    let dir = tempfile::tempdir().unwrap();
    // Enough output to fill a pipe several times over.
    for (generation, version) in [("old", 1), ("new", 2)] {
        let units = dir.path().join(generation).join("etc/systemd/system");
        fs::create_dir_all(&units).unwrap();
        fs::write(dir.path().join(generation).join("init-interface-version"), "systemd 2\n").unwrap();
        for i in 0..600 {
            fs::write(units.join(format!("s{i}.service")), format!("[Service]\nExecStart=/bin/s{i} --v{version}\n"))
                .unwrap();
        }
    }
    let formats = ["text", "json", "junit", "codequality", "markdown"];
    let runs = formats.iter().map(|f| vec!["--format", f]).chain([vec!["--explain", "s*"]]);
    for extra in runs {
        let mut child = Command::new(BIN)
            .current_dir(dir.path())
            .args(["diff", "old", "new"])
            .args(&extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = [0u8; 1];
        child.stdout.take().unwrap().read_exact(&mut first).unwrap();
        // The read end is closed here; the program is still writing.
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{extra:?}: {stderr}");
        assert!(stderr.is_empty(), "{extra:?}: nothing on standard error: {stderr}");
    }
    // Standard error on the same closed pipe, after a warning was printed.
    let script =
        format!("'{BIN}' diff old new --protect 'nothing*' 2>&1 | head -c 1 >/dev/null; echo ${{PIPESTATUS[0]}}");
    let out = Command::new("bash").arg("-c").arg(&script).current_dir(dir.path()).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0", "{}", String::from_utf8_lossy(&out.stderr));
}

/// Run as root through sudo, the reports are written as sudo's caller: a
/// sudo rule that lets a CI user run safe-switch does not let it write
/// into a directory only root may write to.
#[test]
fn reports_are_written_as_sudo_s_caller() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    testbed::require!(root);
    let case = golden("report-protect-deferred");
    let dir = tempfile::tempdir().unwrap();
    let (root_only, open) = (dir.path().join("root-only"), dir.path().join("open"));
    fs::create_dir(&root_only).unwrap();
    fs::create_dir(&open).unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&root_only, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).unwrap();
    let nobody = "65534";
    let run_as_sudo = |report: &Path| {
        let mut args = base_args(&case);
        args.extend(["--report".to_owned(), format!("json={}", report.display())]);
        Command::new(BIN)
            .args(&args)
            .current_dir(&case)
            .env("SUDO_UID", nobody)
            .env("SUDO_GID", nobody)
            .output()
            .unwrap()
    };
    let denied = root_only.join("r.json");
    let out = run_as_sudo(&denied);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"), "{out:?}");
    assert!(!denied.exists(), "root wrote where sudo's caller may not");
    let allowed = open.join("r.json");
    let out = run_as_sudo(&allowed);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(fs::metadata(&allowed).unwrap().uid(), 65534, "the report belongs to sudo's caller");
    // Without sudo, root writes where root may.
    let mut args = base_args(&case);
    args.extend(["--report".to_owned(), format!("json={}", denied.display())]);
    let out = run(&case, &args);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(denied.exists());
}
