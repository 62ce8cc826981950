//! `safe-switch report merge`: the merged reports validate (JUnit against
//! the schema, Code Quality's keys and fingerprints that cover the host,
//! OpenMetrics by the format's rules), the Markdown of a large fleet stays
//! under 1 MiB and says what it left out, and plan files that are not
//! plans, too large, or not regular files are errors naming the file.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use plan_model::{Action, Plan, Reason, Rule, UnitPlan};
use plan_report::{Format, HostReport, Report, Style};
use serde_json::Value;

use crate::report_openmetrics::{parse, value};
use crate::support::{BIN, golden, hermetic, xmllint_ok};

/// The plans of the `merge-fleet` golden case, as `HOST=PATH` arguments.
fn fleet_args() -> Vec<String> {
    let case = golden("merge-fleet");
    crate::support::lines(&case.join("merge"))
        .into_iter()
        .map(|l| {
            let (host, path) = l.split_once('=').unwrap();
            format!("{host}={}", case.join(path).display())
        })
        .collect()
}

fn merge(args: &[String], extra: &[&str]) -> std::process::Output {
    hermetic(&mut Command::new(BIN)).args(["report", "merge"]).args(args).args(extra).output().unwrap()
}

/// Checks the merged reports a fleet job uploads, as written by `report
/// merge --report FORMAT=PATH` into `dir`, for `hosts`: the JUnit file
/// validates and has a suite per host, Code Quality findings have GitLab's
/// keys and unique fingerprints and name their host, the Markdown is under
/// 1 MiB and names every host, the JSON has every host, and the
/// OpenMetrics file keeps to its format.
pub(crate) fn check_merged_reports(dir: &Path, hosts: &[&str]) {
    let junit = dir.join("junit.xml");
    if let Some(result) = xmllint_ok(&junit) {
        result.unwrap_or_else(|e| panic!("the merged JUnit report does not validate: {e}"));
    }
    let text = std::fs::read_to_string(&junit).unwrap();
    let doc = roxmltree::Document::parse(&text).unwrap();
    let suites: Vec<&str> =
        doc.descendants().filter(|n| n.has_tag_name("testsuite")).map(|n| n.attribute("name").unwrap()).collect();
    assert_eq!(suites, hosts, "a test suite per host, in order");
    let mut names = BTreeSet::new();
    for case in doc.descendants().filter(|n| n.has_tag_name("testcase")) {
        let key = (case.attribute("classname").unwrap().to_owned(), case.attribute("name").unwrap().to_owned());
        assert!(names.insert(key.clone()), "test case {key:?} twice");
    }

    let cq: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("codequality.json")).unwrap()).unwrap();
    let mut fingerprints = BTreeSet::new();
    for f in cq.as_array().unwrap() {
        for key in ["description", "check_name", "fingerprint", "severity"] {
            assert!(f[key].is_string(), "a finding without {key}: {f}");
        }
        assert!(f["location"]["path"].is_string() && f["location"]["lines"]["begin"].is_u64(), "{f}");
        let severities = ["info", "minor", "major", "critical", "blocker"];
        assert!(severities.contains(&f["severity"].as_str().unwrap()), "{f}");
        assert!(fingerprints.insert(f["fingerprint"].as_str().unwrap().to_owned()), "fingerprint twice: {f}");
        let description = f["description"].as_str().unwrap();
        assert!(hosts.iter().any(|h| description.starts_with(&format!("{h}: "))), "no host in {description}");
    }

    let md = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    assert!(md.len() < 1 << 20, "{} bytes of Markdown", md.len());
    for host in hosts {
        assert!(md.contains(&format!("| `{host}` |")), "{host} is not in the Markdown table");
    }

    let json: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("merged.json")).unwrap()).unwrap();
    assert_eq!(json["merged_format_version"], 1);
    let names: Vec<&str> = json["hosts"].as_array().unwrap().iter().map(|h| h["host"].as_str().unwrap()).collect();
    assert_eq!(names, hosts);
    assert_eq!(json["summary"]["hosts"], hosts.len());

    let prom = std::fs::read_to_string(dir.join("safe_switch.prom")).unwrap();
    let samples = parse(&prom).unwrap_or_else(|e| panic!("{e}\n{prom}"));
    for host in hosts {
        assert!(value(&samples, "safe_switch_reboot_needed", &[("host", host)]).is_some(), "{host}");
    }
}

/// The `--report` arguments that write every merged report into `dir`.
pub(crate) fn report_args(dir: &Path) -> Vec<String> {
    [
        ("junit", "junit.xml"),
        ("codequality", "codequality.json"),
        ("markdown", "summary.md"),
        ("json", "merged.json"),
        ("openmetrics", "safe_switch.prom"),
    ]
    .iter()
    .flat_map(|(f, name)| ["--report".to_owned(), format!("{f}={}", dir.join(name).display())])
    .collect()
}

#[test]
fn the_merged_reports_validate() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = fleet_args();
    args.extend(report_args(dir.path()));
    let out = merge(&args, &[]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    check_merged_reports(dir.path(), &["web-1", "web-2", "db-1", "runner-1", "kernel-1"]);
    let json: Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("merged.json")).unwrap()).unwrap();
    let kernel = &json["hosts"][4];
    assert_eq!(kernel["reboot"][0]["reason"], "kernel", "the saved plan's reboot field is read: {kernel}");
    assert_eq!(json["summary"]["refused"], 1);
    assert_eq!(json["summary"]["deferred"], 2);
}

/// A finding's fingerprint covers its host: the same plan on two hosts
/// gives two sets of findings, and each host's fingerprints are the same
/// in another merge (another pipeline) with other hosts around it.
#[test]
fn fingerprints_cover_the_host_and_stay_the_same_across_merges() {
    let case = golden("merge-fleet");
    let plan = case.join("plans/web-2.json");
    let fingerprints = |args: &[String]| -> Vec<(String, String)> {
        let out = merge(args, &["--format", "codequality"]);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let cq: Value = serde_json::from_slice(&out.stdout).unwrap();
        cq.as_array()
            .unwrap()
            .iter()
            .map(|f| {
                let host = f["description"].as_str().unwrap().split(':').next().unwrap().to_owned();
                (host, f["fingerprint"].as_str().unwrap().to_owned())
            })
            .collect()
    };
    let two = fingerprints(&[format!("a={}", plan.display()), format!("b={}", plan.display())]);
    let of = |list: &[(String, String)], host: &str| -> BTreeSet<String> {
        list.iter().filter(|(h, _)| h == host).map(|(_, f)| f.clone()).collect()
    };
    assert!(!of(&two, "a").is_empty());
    assert!(of(&two, "a").is_disjoint(&of(&two, "b")), "the same finding on two hosts shares a fingerprint");
    let other =
        fingerprints(&[format!("c={}", case.join("plans/web-1.json").display()), format!("b={}", plan.display())]);
    assert_eq!(of(&other, "b"), of(&two, "b"), "b's fingerprints changed with the hosts around it");
}

/// A plan with `units` changed services, each with a long reason.
fn big_plan(units: usize) -> Plan {
    let mut plan = Plan::between("/nix/store/a-old", "/nix/store/b-new", Vec::new());
    for i in 0..units {
        let mut u =
            UnitPlan::new(&format!("service-{i:05}-with-a-rather-long-name.service"), &[Action::Stop, Action::Start]);
        u.reasons = vec![Reason { rule: Rule::UnitChanged, detail: Some("x".repeat(200)) }];
        plan.units.push(u);
    }
    plan
}

/// A thousand hosts of two hundred units each: the table names every
/// host, the Markdown stays under 1 MiB and says how many hosts' details
/// it left out; the details shown are the refused hosts', then the
/// deferred ones'; each host's details say what they cut.
#[test]
fn the_markdown_of_a_large_fleet_stays_under_a_mib_and_says_what_it_left_out() {
    let safe = big_plan(200);
    let mut refused = big_plan(10);
    refused.protection.refused = true;
    let names: Vec<String> = (0..1_000).map(|i| format!("runner-{i:03}.ci.example.com")).collect();
    let hosts: Vec<HostReport<'_>> = names
        .iter()
        .enumerate()
        .map(|(i, h)| HostReport { host: h, report: Report::of(if i == 700 { &refused } else { &safe }), reboot: &[] })
        .collect();
    let md = plan_report::render_hosts(Format::Markdown, &hosts, Style::default());
    assert!(md.len() <= plan_report::markdown::LIMIT, "{} bytes", md.len());
    for (i, h) in names.iter().enumerate() {
        let verdict = if i == 700 { "refused | 20" } else { "safe | 400" };
        assert!(md.contains(&format!("| `{h}` | {verdict} |")), "{h} is not in the table");
    }
    assert!(md.contains("> **Truncated** to stay under 1000000 bytes: the details of "), "{}", &md[md.len() - 600..]);
    let shown: Vec<&String> = names.iter().filter(|h| md.contains(&format!("## `{h}`: "))).collect();
    let left_out: usize = md
        .rsplit_once("the details of ")
        .and_then(|(_, rest)| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert_eq!(shown.len() + left_out, names.len(), "{} shown, {left_out} said left out", shown.len());
    assert!(shown.len() >= 100, "only {} hosts' details", shown.len());
    assert_eq!(shown[0], &names[0], "the first safe host after the refused one");
    assert!(md.find("## `runner-700.ci.example.com`: refused").unwrap() < md.find("## `runner-000").unwrap());
    let cut = md.matches("row(s) and 0 unit-file diff(s) are not shown").count();
    assert_eq!(cut, shown.len(), "every host's details say they were cut");

    // A small fleet is shown whole, without a note.
    let small = plan_report::render_hosts(Format::Markdown, &hosts[..2], Style::default());
    assert!(
        small.contains("## `runner-000.ci.example.com`: safe")
            && small.contains("## `runner-001.ci.example.com`: safe")
    );
    assert!(!small.contains("the details of"), "{small}");
}

/// Files that are not plans: a FIFO (no hang), a file larger than the
/// limit, a JSON array, a plan of another format version. Each is an
/// error naming the host and the file, and nothing is written.
#[test]
fn bad_plan_files_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.json");
    rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o600), 0)
        .unwrap();
    let big = dir.path().join("big.json");
    std::fs::File::create(&big).unwrap().set_len((64 << 20) + 1).unwrap();
    let array = dir.path().join("array.json");
    std::fs::write(&array, "[1, 2]\n").unwrap();
    let future = dir.path().join("future.json");
    let mut plan: Value =
        serde_json::from_str(&std::fs::read_to_string(golden("merge-fleet/plans/web-1.json")).unwrap()).unwrap();
    plan["format_version"] = 2.into();
    std::fs::write(&future, plan.to_string()).unwrap();
    let good = golden("merge-fleet/plans/web-1.json");
    let written = dir.path().join("out.md");
    for (file, expected) in [
        (&fifo, "not a regular file"),
        (&big, "longer than 67108864 bytes"),
        (&array, "invalid JSON"),
        (&future, "plan format 2 is not read"),
    ] {
        let args = [format!("ok={}", good.display()), format!("bad-1={}", file.display())];
        let started = std::time::Instant::now();
        let out = merge(&args, &["--report", &format!("markdown={}", written.display())]);
        assert!(started.elapsed() < std::time::Duration::from_secs(30));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{file:?}: {stderr}");
        assert!(stderr.contains(&file.display().to_string()) && stderr.contains("bad-1"), "{stderr}");
        assert!(stderr.contains(expected), "{expected}: {stderr}");
        assert!(!written.exists(), "a report was written");
    }
}
