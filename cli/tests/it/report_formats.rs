//! The report formats on hand-built plans: JUnit validated against the
//! schema with a real validator and parsed back, Code Quality parsed with
//! unique and stable fingerprints, Markdown kept under its size limit, and
//! text coloured only when asked.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use plan_model::FileDiff;
use plan_model::{
    Action, Deferral, Diagnostic, Edge, FORMAT_VERSION, Generation, Mode, Plan, ProtectedUnit, Protection,
    ProtectionSource, Reason, Refusal, Rule, Severity, Step, UnitPlan,
};
use plan_report::{Format, Report, Style, codequality, markdown};

use crate::support::BIN;

fn unit(name: &str, actions: &[Action], rule: Rule) -> UnitPlan {
    UnitPlan {
        unit: name.to_owned(),
        actions: actions.to_vec(),
        reasons: vec![Reason { rule, detail: None }],
        changes: vec![],
        deferral: None,
    }
}

fn base(old: &str, new: &str) -> Plan {
    Plan {
        format_version: FORMAT_VERSION,
        old: Generation { path: old.to_owned(), ..Generation::default() },
        new: Generation { path: new.to_owned(), ..Generation::default() },
        units: vec![
            unit("nginx.service", &[Action::Stop, Action::Start], Rule::StopStart),
            unit("app.service", &[Action::Restart], Rule::StopIfChangedFalse),
            unit("sshd.service", &[Action::Skip], Rule::RestartIfChangedFalse),
        ],
        steps: vec![Step::Activate { script: format!("{new}/activate") }, Step::DaemonReload],
        consequences: Vec::new(),
        protection: Protection::default(),
        diagnostics: vec![Diagnostic {
            severity: Severity::Warning,
            message: format!("cannot model {new}/etc/foo <&> \u{1} here"),
            unit: Some("weird.service".to_owned()),
            path: None,
            line: None,
        }],
        packages: None,
        reboot: Vec::new(),
        kernel_modules: Vec::new(),
    }
}

fn protected(selector: &str, units: &[&str]) -> ProtectedUnit {
    ProtectedUnit {
        selector: selector.to_owned(),
        source: ProtectionSource::CommandLine,
        units: units.iter().map(|u| (*u).to_owned()).collect(),
        allow: vec![],
    }
}

fn chain() -> Vec<Edge> {
    vec![Edge {
        from: "sshd.service".to_owned(),
        relation: "Requires".to_owned(),
        to: "network-setup.service".to_owned(),
    }]
}

/// A plan in which protection deferred the restart of network-setup.
fn deferred(old: &str, new: &str) -> Plan {
    let mut plan = base(old, new);
    let mut net = unit("network-setup.service", &[], Rule::StopStart);
    net.deferral = Some(Deferral {
        actions: vec![Action::Stop, Action::Start],
        touch: plan_model::Touch {
            touches: "sshd.service".to_owned(),
            effect: Action::Stop,
            chain: chain(),
            cause: None,
            omitted: 0,
        },
    });
    plan.units.push(net);
    plan.units.sort_by(|a, b| a.unit.cmp(&b.unit));
    plan.protection = Protection {
        mode: Mode::Defer,
        protected: vec![protected("sshd", &["sshd.service"])],
        refused: false,
        refusals: vec![],
    };
    plan
}

/// The same plan in refuse mode.
fn refused(old: &str, new: &str) -> Plan {
    let mut plan = base(old, new);
    plan.units.push(unit("network-setup.service", &[Action::Stop, Action::Start], Rule::StopStart));
    plan.units.sort_by(|a, b| a.unit.cmp(&b.unit));
    plan.protection = Protection {
        mode: Mode::Refuse,
        protected: vec![protected("sshd", &["sshd.service"])],
        refused: true,
        refusals: vec![Refusal {
            unit: "network-setup.service".to_owned(),
            actions: vec![Action::Stop, Action::Start],
            touch: plan_model::Touch {
                touches: "sshd.service".to_owned(),
                effect: Action::Stop,
                chain: chain(),
                cause: None,
                omitted: 0,
            },
        }],
    };
    plan
}

/// A safe plan that needs a reboot: a new kernel and command line, and
/// kernel modules usable now, after a reboot and never.
fn rebooting(old: &str, new: &str) -> Plan {
    use plan_model::{KernelModule, ModuleChange, ModuleUse, Reboot, RebootReason};
    let mut plan = base(old, new);
    let reboot = |reason, detail: String| Reboot { reason, detail };
    plan.reboot = vec![
        reboot(RebootReason::Kernel, format!("the kernel changes: {old}-linux/bzImage -> {new}-linux/bzImage")),
        reboot(RebootReason::Kernel, "the kernel command line (kernel-params) changes".into()),
        reboot(RebootReason::KernelModules, "1 module usable only after a reboot: zfs (<b>loaded</b>)".into()),
    ];
    let module = |name: &str, path: &str, usable| KernelModule {
        module: name.into(),
        release: "6.6.1".into(),
        path: path.into(),
        change: ModuleChange::Added,
        usable,
        detail: format!("why {name} | *"),
    };
    plan.kernel_modules = vec![
        module("wireguard", "extra/wireguard.ko.xz", ModuleUse::Now),
        module("zfs", "extra/zfs.ko.xz", ModuleUse::AfterReboot),
        module("stray", "extra/stray.ko", ModuleUse::Unreachable),
    ];
    plan
}

fn plans() -> Vec<(&'static str, Plan)> {
    let (o, n) = ("/nix/store/00000000000000000000000000000000-old", "/nix/store/11111111111111111111111111111111-new");
    vec![("safe", base(o, n)), ("deferred", deferred(o, n)), ("refused", refused(o, n)), ("reboot", rebooting(o, n))]
}

fn render(format: Format, plan: &Plan) -> String {
    plan_report::render(
        format,
        &Report { plan, diffs: &[], commands: &[], pending: &[], applied: None },
        Style::default(),
    )
}

fn schema() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/schema/junit.xsd")
}

/// Runs `xmllint --schema` on a document; `None` when xmllint is missing
/// (a failure under CI, where `scripts/deps` installs it).
fn xmllint(doc: &str) -> Option<(bool, String)> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("report.xml");
    std::fs::write(&file, doc).unwrap();
    match Command::new("xmllint").arg("--noout").arg("--schema").arg(schema()).arg(&file).output() {
        Ok(out) => Some((out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())),
        Err(err) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "xmllint is needed under CI=true (Debian package libxml2-utils, see scripts/deps): {err}"
            );
            eprintln!("skipping the schema validation: xmllint is not installed ({err})");
            None
        }
    }
}

#[test]
fn junit_validates_against_the_schema() {
    for (name, plan) in plans() {
        let xml = render(Format::Junit, &plan);
        if let Some((ok, err)) = xmllint(&xml) {
            assert!(ok, "{name}: the JUnit report does not validate:\n{err}\n{xml}");
        }
    }
}

#[test]
fn the_schema_rejects_what_gitlab_would_not_read() {
    // Proves the validation above can fail: a test case without a name, a
    // count that is not a number, and an element out of order.
    for bad in [
        r#"<testsuites><testsuite name="s" tests="1"><testcase classname="c"/></testsuite></testsuites>"#,
        r#"<testsuites><testsuite name="s" tests="one"><testcase name="a"/></testsuite></testsuites>"#,
        r#"<testsuites><testsuite name="s" tests="1"><testcase name="a"><system-out/><failure/></testcase></testsuite></testsuites>"#,
    ] {
        if let Some((ok, _)) = xmllint(bad) {
            assert!(!ok, "the schema accepted {bad}");
        }
    }
    let good = r#"<testsuite name="s" tests="1"><testcase name="a"><failure message="m">x</failure><system-out>o</system-out></testcase></testsuite>"#;
    if let Some((ok, err)) = xmllint(good) {
        assert!(ok, "{err}");
    }
}

/// A parsed test case: name, classname, and its failure's type if any.
#[derive(Debug)]
struct Case {
    name: String,
    failure: Option<(String, String)>,
    skipped: bool,
}

/// Parses the report with an XML parser and returns the suite's counts and
/// its test cases.
fn parse_junit(xml: &str) -> (Vec<(String, String)>, Vec<Case>) {
    let doc = roxmltree::Document::parse(xml).unwrap_or_else(|e| panic!("not XML: {e}\n{xml}"));
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "testsuites");
    let suites: Vec<_> = root.children().filter(|n| n.has_tag_name("testsuite")).collect();
    assert_eq!(suites.len(), 1);
    let suite = suites[0];
    let attrs = suite.attributes().map(|a| (a.name().to_owned(), a.value().to_owned())).collect();
    let cases = suite
        .children()
        .filter(|n| n.has_tag_name("testcase"))
        .map(|c| Case {
            name: c.attribute("name").unwrap().to_owned(),
            failure: c
                .children()
                .find(|n| n.has_tag_name("failure"))
                .map(|f| (f.attribute("type").unwrap_or_default().to_owned(), f.text().unwrap_or_default().to_owned())),
            skipped: c.children().any(|n| n.has_tag_name("skipped")),
        })
        .collect();
    (attrs, cases)
}

#[test]
fn junit_has_one_case_per_action_and_failures_carry_the_chain() {
    let count = |attrs: &[(String, String)], k: &str| -> usize {
        attrs.iter().find(|(n, _)| n == k).map(|(_, v)| v.parse().unwrap()).unwrap()
    };
    for (name, plan) in plans() {
        let (suite, cases) = parse_junit(&render(Format::Junit, &plan));
        let names: BTreeSet<&str> = cases.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names.len(), cases.len(), "{name}: test case names repeat");
        assert_eq!(count(&suite, "tests"), cases.len(), "{name}");
        assert_eq!(count(&suite, "failures"), cases.iter().filter(|c| c.failure.is_some()).count(), "{name}");
        assert_eq!(count(&suite, "skipped"), cases.iter().filter(|c| c.skipped).count(), "{name}");
        for expected in ["stop nginx.service", "start nginx.service", "restart app.service", "skip sshd.service"] {
            assert!(names.contains(expected), "{name}: no test case {expected:?} in {names:?}");
        }
        let failed: Vec<&Case> = cases.iter().filter(|c| c.failure.is_some()).collect();
        match name {
            "safe" => assert!(failed.is_empty(), "{failed:?}"),
            "reboot" => {
                // What waits for the boot is skipped, not failed: the exit
                // code of a gate counts it only when asked to.
                assert!(failed.is_empty(), "{failed:?}");
                let skipped: Vec<&str> = cases.iter().filter(|c| c.skipped).map(|c| c.name.as_str()).collect();
                assert_eq!(
                    skipped,
                    [
                        "reboot 1: kernel",
                        "reboot 2: kernel",
                        "reboot 3: kernel-modules",
                        "module 6.6.1/extra/zfs.ko.xz",
                        "module 6.6.1/extra/stray.ko"
                    ]
                );
                assert!(names.contains("module 6.6.1/extra/wireguard.ko.xz"));
                assert!(suite.iter().any(|(k, v)| k == "skipped" && v == "5"), "{suite:?}");
            }
            "deferred" | "refused" => {
                let stop = cases.iter().find(|c| c.name == "stop network-setup.service").unwrap();
                let (kind, text) = stop.failure.as_ref().unwrap();
                assert_eq!(kind, name);
                assert!(text.contains("sshd.service Requires=network-setup.service"), "{text}");
                assert!(cases.iter().any(|c| c.name == "protection" && c.failure.is_some()));
                // In a refused plan the unrelated actions are held back,
                // not failed; in a deferred one they pass.
                let nginx = cases.iter().find(|c| c.name == "stop nginx.service").unwrap();
                assert!(nginx.failure.is_none());
                assert_eq!(nginx.skipped, name == "refused");
            }
            _ => unreachable!(),
        }
    }
}

#[test]
fn codequality_parses_with_unique_stable_fingerprints() {
    const SEVERITIES: &[&str] = &["info", "minor", "major", "critical", "blocker"];
    for (name, plan) in plans() {
        let text = render(Format::Codequality, &plan);
        assert!(!text.starts_with('\u{feff}'), "no BOM allowed");
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let findings = value.as_array().unwrap_or_else(|| panic!("{name}: not an array"));
        assert!(!findings.is_empty());
        let mut fingerprints = BTreeSet::new();
        for f in findings {
            assert!(f["description"].as_str().is_some_and(|s| !s.is_empty()), "{f}");
            assert!(f["check_name"].as_str().is_some_and(|s| s.starts_with("safe-switch/")), "{f}");
            assert!(SEVERITIES.contains(&f["severity"].as_str().unwrap()), "{f}");
            assert!(f["location"]["path"].as_str().is_some_and(|p| !p.is_empty() && !p.starts_with('/')), "{f}");
            assert!(f["location"]["lines"]["begin"].as_u64().is_some_and(|l| l >= 1), "{f}");
            assert!(fingerprints.insert(f["fingerprint"].as_str().unwrap().to_owned()), "{name}: duplicate {f}");
        }
        if name == "refused" {
            assert!(findings.iter().any(|f| f["severity"] == "blocker"));
        }
        if name == "deferred" {
            assert!(findings.iter().any(|f| f["check_name"] == "safe-switch/deferred" && f["severity"] == "critical"));
        }
    }
    // The same findings on other generations (new store hashes, as every
    // pipeline builds) keep their fingerprints.
    let fps =
        |plan: &Plan| -> Vec<String> { codequality::findings(plan, &[]).into_iter().map(|f| f.fingerprint).collect() };
    let a =
        deferred("/nix/store/00000000000000000000000000000000-old", "/nix/store/11111111111111111111111111111111-new");
    let b =
        deferred("/nix/store/22222222222222222222222222222222-old", "/nix/store/33333333333333333333333333333333-new");
    assert_eq!(fps(&a), fps(&a));
    assert_eq!(fps(&a), fps(&b));
    // And a different finding gets a different one.
    let r =
        refused("/nix/store/00000000000000000000000000000000-old", "/nix/store/11111111111111111111111111111111-new");
    assert_ne!(fps(&a), fps(&r));
}

#[test]
fn a_reboot_and_the_kernel_modules_are_plain_in_every_format() {
    let (o, n) = ("/nix/store/00000000000000000000000000000000-old", "/nix/store/11111111111111111111111111111111-new");
    let plan = rebooting(o, n);
    let text = render(Format::Text, &plan);
    let reboot_block = "needs a reboot: these changes take effect only at the next boot (nothing is restarted in their place):\n  kernel: the kernel changes: ";
    assert!(text.contains(reboot_block), "{text}");
    assert!(text.contains("  zfs (6.6.1, extra/zfs.ko.xz): added, usable after a reboot: why zfs | *\n"), "{text}");
    assert!(text.find("needs a reboot").unwrap() < text.find("\nunits:\n").unwrap(), "right after the phases:\n{text}");
    let md = markdown::render(&Report::of(&plan), markdown::LIMIT);
    assert!(
        md.contains(
            "**Needs a reboot** (kernel, kernel-modules): part of this switch takes effect only at the next boot."
        ),
        "{md}"
    );
    assert!(
        md.contains("| `kernel-modules` | 1 module usable only after a reboot: zfs (&lt;b&gt;loaded&lt;/b&gt;) |"),
        "{md}"
    );
    assert!(
        md.contains("| `stray` | `6.6.1` | `extra/stray.ko` | added | not reachable by modprobe | why stray \\| \\* |"),
        "{md}"
    );
    let json: serde_json::Value = serde_json::from_str(&render(Format::Json, &plan)).unwrap();
    assert_eq!(json["reboot"][0]["reason"], "kernel");
    assert_eq!(json["kernel_modules"][1]["usable"], "after-reboot");
    // A plan that needs none says so with an empty array.
    let none: serde_json::Value = serde_json::from_str(&render(Format::Json, &base(o, n))).unwrap();
    assert_eq!(none["reboot"], serde_json::json!([]));
    assert!(none.get("kernel_modules").is_none());
    // Code Quality: a finding per reason and per module, whose
    // fingerprints stay when the store paths move.
    let fps = |plan: &Plan| -> Vec<(String, String)> {
        codequality::findings(plan, &[])
            .into_iter()
            .filter(|f| f.check_name == "safe-switch/reboot" || f.check_name == "safe-switch/kernel-module")
            .map(|f| (f.fingerprint, f.severity.to_owned()))
            .collect()
    };
    let moved =
        rebooting("/nix/store/22222222222222222222222222222222-old", "/nix/store/33333333333333333333333333333333-new");
    assert_eq!(fps(&plan), fps(&moved));
    let severities: Vec<String> = fps(&plan).into_iter().map(|(_, s)| s).collect();
    assert_eq!(severities, ["major", "major", "major", "info", "minor", "minor"]);
}

#[test]
fn json_is_the_versioned_plan_with_a_stable_key_order() {
    for (_, plan) in plans() {
        let text = render(Format::Json, &plan);
        assert!(text.starts_with("{\n  \"format_version\": 1,\n  \"old\":"), "{text}");
        let back: Plan = serde_json::from_str(&text).unwrap();
        assert_eq!(back, plan);
        assert_eq!(render(Format::Json, &back), text);
    }
}

#[test]
fn markdown_stays_under_its_limit_and_says_what_it_left_out() {
    let mut plan = deferred("/old", "/new");
    for i in 0..20_000 {
        plan.units.push(unit(&format!("worker-{i:05}.service"), &[Action::Restart], Rule::UnitChanged));
    }
    let diffs: Vec<FileDiff> = (0..300)
        .map(|i| FileDiff {
            unit: format!("worker-{i:05}.service"),
            path: format!("etc/systemd/system/worker-{i:05}.service"),
            diff: format!("--- a\n+++ b\n@@ -1 +1 @@\n-{}\n+{}\n", "x".repeat(2000), "y".repeat(2000)),
        })
        .collect();
    let full = markdown::render(
        &Report { plan: &plan, diffs: &diffs, commands: &[], pending: &[], applied: None },
        markdown::LIMIT,
    );
    assert!(full.len() <= markdown::LIMIT, "{} bytes", full.len());
    assert!(full.len() < 1024 * 1024);
    assert!(full.contains("**Truncated**"), "no truncation note");
    // The blocked units come first and survive truncation.
    assert!(full.contains("`network-setup.service` | stop |"), "{}", &full[..2000]);

    let small =
        markdown::render(&Report { plan: &plan, diffs: &diffs, commands: &[], pending: &[], applied: None }, 20_000);
    assert!(small.len() <= 20_000, "{}", small.len());
    assert!(small.contains("**Truncated**"));

    let plan = deferred("/old", "/new");
    let diffs = vec![FileDiff {
        unit: "app.service".to_owned(),
        path: "etc/systemd/system/app.service".to_owned(),
        diff: "--- a/x\n+++ b/x\n@@ -1 +1 @@\n-ExecStart=/bin/a\n+ExecStart=/bin/b\n".to_owned(),
    }];
    let md = markdown::render(
        &Report { plan: &plan, diffs: &diffs, commands: &[], pending: &[], applied: None },
        markdown::LIMIT,
    );
    assert!(!md.contains("Truncated"));
    assert!(md.contains("<details><summary><code>app.service</code>"), "{md}");
    assert!(md.contains("```diff\n--- a/x\n"), "{md}");
}

#[test]
fn text_has_colours_only_when_asked() {
    let plan = deferred("/old", "/new");
    let diffs = vec![FileDiff {
        unit: "app.service".to_owned(),
        path: "etc/systemd/system/app.service".to_owned(),
        diff: "--- a/x\n+++ b/x\n@@ -1 +1 @@\n-old\n+new\n".to_owned(),
    }];
    let report = Report { plan: &plan, diffs: &diffs, commands: &[], pending: &[], applied: None };
    let plain = plan_report::render(Format::Text, &report, Style { color: false });
    assert!(!plain.contains('\x1b'), "{plain}");
    assert!(plain.contains("\n+new\n"), "{plain}");
    let colored = plan_report::render(Format::Text, &report, Style { color: true });
    assert!(colored.contains("\x1b[32m+new\x1b[0m"), "{colored}");
    assert!(colored.contains("\x1b[31m-old\x1b[0m"), "{colored}");
}

#[test]
#[ignore = "prints the formats for reading"]
fn show() {
    for (name, plan) in plans() {
        for f in [Format::Junit, Format::Markdown, Format::Codequality, Format::Text] {
            println!("===== {name} {f:?}\n{}", render(f, &plan));
        }
    }
}

/// Two generations in which `sshd.service` requires `link1.service`, which
/// requires `link2.service`, and so on for `n` units, every one of them
/// changed, so that each link's stop is deferred with the chain to sshd.
fn chain_generations(n: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (generation, version) in [("old", 1), ("new", 2)] {
        let units = dir.path().join(generation).join("etc/systemd/system");
        std::fs::create_dir_all(&units).unwrap();
        std::fs::write(dir.path().join(generation).join("init-interface-version"), "systemd 2\n").unwrap();
        std::fs::write(units.join("sshd.service"), "[Unit]\nRequires=link1.service\n[Service]\nExecStart=/bin/sshd\n")
            .unwrap();
        for i in 1..=n {
            let requires = if i < n { format!("Requires=link{}.service\n", i + 1) } else { String::new() };
            let text = format!("[Unit]\n{requires}[Service]\nExecStart=/bin/link --version {version}\n");
            std::fs::write(units.join(format!("link{i}.service")), text).unwrap();
        }
    }
    dir
}

/// A long dependency chain into a protected unit gives reports that grow
/// linearly with the number of units: each deferral keeps the ends of its
/// chain and counts the relations in between.
#[test]
fn reports_stay_linear_along_a_long_chain() {
    let n = 1500;
    let dir = chain_generations(n);
    for format in ["text", "json", "junit", "codequality", "markdown"] {
        let out = Command::new(BIN)
            .current_dir(dir.path())
            .args(["diff", "old", "new", "--protect", "sshd", "--format", format])
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{format}: {}", String::from_utf8_lossy(&out.stderr));
        let per_unit = out.stdout.len() / n;
        assert!(per_unit < 10_000, "{format}: {} bytes for {n} units ({per_unit} a unit)", out.stdout.len());
        if format == "text" {
            let text = String::from_utf8_lossy(&out.stdout);
            let line = text.lines().find(|l| l.trim_start().starts_with(&format!("link{n}.service: stop"))).unwrap();
            assert!(line.contains(&format!("then {} more relations, then", n - 8)), "{line}");
            assert!(line.ends_with("stops protected sshd.service (sshd.service Requires=link1.service)"), "{line}");
        }
    }
}

/// File names from a generation cannot inject markup or terminal escapes:
/// a drop-in named with blank lines, a heading and a link stays inside its
/// Markdown `<details>` block, and an escape sequence reaches no format as
/// a raw control character.
#[test]
fn names_cannot_inject_markup_or_escapes() {
    let dir = tempfile::tempdir().unwrap();
    let evil = "x\n\n<b>\n\n# Owned\n\n[link](javascript:alert(1))`b``\u{1b}]0;title\u{7}.conf";
    for (generation, version) in [("old", 1), ("new", 2)] {
        let units = dir.path().join(generation).join("etc/systemd/system");
        std::fs::create_dir_all(units.join("app.service.d")).unwrap();
        std::fs::write(dir.path().join(generation).join("init-interface-version"), "systemd 2\n").unwrap();
        std::fs::write(units.join("app.service"), "[Service]\nExecStart=/bin/app\n").unwrap();
        let drop_in = format!("[Service]\nEnvironment=V={version} \u{1b}[2J\n");
        std::fs::write(units.join("app.service.d").join(evil), drop_in).unwrap();
    }
    for format in ["text", "json", "junit", "codequality", "markdown"] {
        let out = Command::new(BIN)
            .current_dir(dir.path())
            .args(["diff", "old", "new", "--format", format])
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{format}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(!text.contains('\u{1b}') && !text.contains('\u{7}'), "{format}: a raw control character:\n{text}");
        match format {
            "markdown" => {
                // Inside a code fence, text is shown as it is; outside, no
                // heading or link may appear.
                let mut in_fence = false;
                let outside: Vec<&str> = text
                    .lines()
                    .filter(|l| {
                        if l.starts_with("```") {
                            in_fence = !in_fence;
                        }
                        !in_fence
                    })
                    .collect();
                assert!(!outside.iter().any(|l| l.starts_with("# Owned")), "{text}");
                assert!(!outside.iter().any(|l| l.contains("[link](javascript")), "{text}");
                assert_eq!(text.matches("<details>").count(), text.matches("</details>").count(), "{text}");
                assert_eq!(text.matches("<summary>").count(), text.matches("</summary>").count(), "{text}");
            }
            "text" => assert!(text.contains("\\x1b[2J"), "the escape is shown, not sent:\n{text}"),
            "junit" => {
                roxmltree::Document::parse(&text).unwrap();
            }
            _ => {
                serde_json::from_str::<serde_json::Value>(&text).unwrap();
            }
        }
    }
}

fn pending_deferral(unit: &str, actions: &[Action]) -> plan_model::PendingDeferral {
    plan_model::PendingDeferral {
        manager: plan_model::Manager::Systemd,
        unit: unit.to_owned(),
        actions: actions.to_vec(),
        from: "/nix/store/00000000000000000000000000000000-a".into(),
        generation: "/nix/store/11111111111111111111111111111111-b".into(),
        invocation: "0123456789abcdef0123456789abcdef".into(),
        since_unix: 1_740_823_200,
        reasons: vec![Reason { rule: Rule::UnitChanged, detail: None }],
        touch: plan_model::Touch {
            touches: "sshd.service".into(),
            effect: Action::Stop,
            chain: chain(),
            cause: Some(Action::Stop),
            omitted: 0,
        },
    }
}

/// `safe-switch pending` in every format, empty and not: JUnit validates
/// and fails one case per pending action, Code Quality has one finding per
/// action with unique fingerprints, JSON is the record itself, Markdown
/// and text name each unit; a unit name cannot inject markup.
#[test]
fn pending_deferrals_in_every_format() {
    let record = plan_model::Pending {
        deferrals: vec![
            pending_deferral("network-setup.service", &[Action::Stop, Action::Start]),
            pending_deferral("odd<b>*[x](y)`.service", &[Action::Restart]),
        ],
        ..plan_model::Pending::default()
    };
    let empty = plan_model::Pending::default();
    for (name, pending) in [("empty", &empty), ("two", &record)] {
        let render = |format| plan_report::render_pending(format, pending, Style::default());
        let xml = render(Format::Junit);
        if let Some((ok, err)) = xmllint(&xml) {
            assert!(ok, "{name}: the JUnit report does not validate:\n{err}\n{xml}");
        }
        let (_, cases) = parse_junit(&xml);
        let failed: Vec<&str> = cases.iter().filter(|c| c.failure.is_some()).map(|c| c.name.as_str()).collect();
        let findings: Vec<serde_json::Value> = serde_json::from_str(&render(Format::Codequality)).unwrap();
        let fingerprints: BTreeSet<&str> = findings.iter().map(|f| f["fingerprint"].as_str().unwrap()).collect();
        assert_eq!(fingerprints.len(), findings.len(), "{name}");
        assert_eq!(&plan_model::Pending::from_json(&render(Format::Json)).unwrap(), pending);
        let (text, md) = (render(Format::Text), render(Format::Markdown));
        if pending.is_empty() {
            assert_eq!(cases.len(), 1, "{name}: one passing case");
            assert!(failed.is_empty() && findings.is_empty(), "{name}");
            assert!(text.contains("nothing is pending") && md.contains("nothing is pending"), "{text}\n{md}");
        } else {
            assert_eq!(
                failed,
                [
                    "pending stop network-setup.service",
                    "pending start network-setup.service",
                    "pending restart odd<b>*[x](y)`.service"
                ]
            );
            assert_eq!(findings.len(), 3);
            assert!(findings.iter().all(|f| f["check_name"] == "safe-switch/pending" && f["severity"] == "major"));
            assert!(text.contains(
                "network-setup.service: stop, start deferred since 2025-03-01 10:00 UTC: stopping it stops protected sshd.service (sshd.service Requires=network-setup.service)"
            ), "{text}");
            assert!(md.contains("| `network-setup.service` | stop, start | 2025-03-01 10:00 UTC |"), "{md}");
            // The odd name is shown in a code span, as text.
            assert!(md.contains("| `` odd<b>*[x](y)`.service `` |"), "{md}");
            assert_eq!(md.matches("<b>").count(), 1, "markup from a unit name: {md}");
        }
    }
}

/// A plan's reports with deferrals earlier switches left pending: JUnit
/// still validates and skips what stays pending (the plan's exit code does
/// not count them), and the JSON is the plan with `pending` after its own
/// keys.
#[test]
fn earlier_deferrals_in_a_plans_reports() {
    use plan_model::{Earlier, Fate};
    let (o, n) = ("/nix/store/00000000000000000000000000000000-old", "/nix/store/11111111111111111111111111111111-new");
    let plan = deferred(o, n);
    let earlier = [
        Earlier { deferral: pending_deferral("runner.service", &[Action::Restart]), fate: Fate::StillPending },
        Earlier { deferral: pending_deferral("web.service", &[Action::Restart]), fate: Fate::CarriedOut },
    ];
    let report = Report { pending: &earlier, ..Report::of(&plan) };
    let xml = plan_report::render(Format::Junit, &report, Style::default());
    if let Some((ok, err)) = xmllint(&xml) {
        assert!(ok, "the JUnit report does not validate:\n{err}\n{xml}");
    }
    let (_, cases) = parse_junit(&xml);
    let runner = cases.iter().find(|c| c.name == "pending restart runner.service").unwrap();
    assert!(runner.skipped && runner.failure.is_none(), "{runner:?}");
    let web = cases.iter().find(|c| c.name == "pending restart web.service").unwrap();
    assert!(!web.skipped && web.failure.is_none(), "{web:?}");
    let json = plan_report::render(Format::Json, &report, Style::default());
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    let keys: Vec<&String> = value.as_object().unwrap().keys().collect();
    assert_eq!(keys.last().map(|k| k.as_str()), Some("pending"), "{keys:?}");
    assert_eq!(value["pending"][1]["fate"], "carried-out");
    assert_eq!(serde_json::from_str::<Plan>(&json).unwrap(), plan, "the plan reads back as it was");
    let cq: Vec<serde_json::Value> =
        serde_json::from_str(&plan_report::render(Format::Codequality, &report, Style::default())).unwrap();
    let pending: Vec<&serde_json::Value> = cq.iter().filter(|f| f["check_name"] == "safe-switch/pending").collect();
    assert_eq!(pending.len(), 1, "only what stays pending: {cq:?}");
    let text = plan_report::render(Format::Text, &report, Style::default());
    assert!(text.contains("pending from earlier switches:\n  runner.service: restart deferred since"), "{text}");
    assert!(text.contains("; carried out by this switch"), "{text}");
}
