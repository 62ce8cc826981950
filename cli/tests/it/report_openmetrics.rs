//! The OpenMetrics report: every file is checked against the format's
//! rules by [`parse`] (which is itself shown to reject what the format
//! forbids), and read back: the counts are the plan's, the apply's result
//! is what `switch` and `apply` ended with, on a real systemd.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use plan_report::openmetrics::{self, ApplyResult, HostMetrics};
use serde_json::Value;
use testbed::{Config, Generation, TestBed};

use crate::support::{BIN, daemon, golden, hermetic, path_str as s, safe_switch};

/// One sample: metric name, labels, value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Checks `text` against the rules of the OpenMetrics text format (1.0)
/// that apply to gauges, and returns its samples:
///
/// - every line ends in a newline and the last one is `# EOF`;
/// - a family's `# TYPE`, `# UNIT` and `# HELP` (each at most once) come
///   before its samples, and a family's samples are not interleaved with
///   another's: a family name never comes back;
/// - names are `[a-zA-Z_:][a-zA-Z0-9_:]*`, label names
///   `[a-zA-Z_][a-zA-Z0-9_]*`, unique within a sample;
/// - a family with a unit has a name that ends in `_<unit>`;
/// - a gauge's samples carry the family's name;
/// - label values and help texts use only the escapes `\\`, `\"`, `\n`;
/// - values are numbers (or `NaN`, `+Inf`, `-Inf`); no timestamps (which
///   node-exporter's textfile collector refuses);
/// - no two samples of a family have the same labels.
pub(crate) fn parse(text: &str) -> Result<Vec<Sample>, String> {
    let body = text.strip_suffix("# EOF\n").ok_or("the text does not end with `# EOF` and a newline")?;
    if body.contains("# EOF") {
        return Err("`# EOF` before the end".to_owned());
    }
    let metric_name = |n: &str| {
        let mut c = n.chars();
        c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
            && c.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let label_name = |n: &str| {
        let mut c = n.chars();
        c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
            && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    let mut seen_families: Vec<String> = Vec::new();
    let mut current: Option<(String, Option<String>, Vec<&str>, bool)> = None; // name, type, descriptors, has samples
    let mut samples = Vec::new();
    let mut label_sets: Vec<(String, BTreeMap<String, String>)> = Vec::new();
    for (n, line) in body.lines().enumerate() {
        let n = n + 1;
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name, value) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next());
            if !["TYPE", "HELP", "UNIT"].contains(&kind) {
                return Err(format!("line {n}: unknown descriptor {kind:?}"));
            }
            if !metric_name(name) {
                return Err(format!("line {n}: bad metric name {name:?}"));
            }
            let starts_new = current.as_ref().is_none_or(|c| c.0 != name);
            if starts_new {
                if seen_families.iter().any(|f| f == name) {
                    return Err(format!("line {n}: family {name} comes back after another"));
                }
                seen_families.push(name.to_owned());
                current = Some((name.to_owned(), None, Vec::new(), false));
            }
            let cur = current.as_mut().unwrap();
            if cur.3 {
                return Err(format!("line {n}: {kind} of {name} after its samples"));
            }
            if cur.2.contains(&kind) {
                return Err(format!("line {n}: a second {kind} for {name}"));
            }
            cur.2.push(kind);
            let value = value.ok_or(format!("line {n}: {kind} without a value"))?;
            match kind {
                "TYPE" => {
                    let known =
                        ["counter", "gauge", "histogram", "gaugehistogram", "stateset", "info", "summary", "unknown"];
                    if !known.contains(&value) {
                        return Err(format!("line {n}: unknown type {value:?}"));
                    }
                    cur.1 = Some(value.to_owned());
                }
                "UNIT" => {
                    if !name.ends_with(&format!("_{value}")) {
                        return Err(format!("line {n}: {name} has the unit {value} but does not end in _{value}"));
                    }
                }
                _ => {
                    unescape(value).map_err(|e| format!("line {n}: HELP: {e}"))?;
                }
            }
            continue;
        }
        if line.starts_with('#') {
            return Err(format!("line {n}: a comment, which OpenMetrics does not have"));
        }
        // A sample: name, optional labels, value (and no timestamp).
        let name_end = line.find(['{', ' ']).ok_or(format!("line {n}: no value"))?;
        let name = &line[..name_end];
        if !metric_name(name) {
            return Err(format!("line {n}: bad metric name {name:?}"));
        }
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(after) = rest.strip_prefix('{') {
            let mut r = after;
            loop {
                if let Some(after) = r.strip_prefix('}') {
                    r = after;
                    break;
                }
                let eq = r.find('=').ok_or(format!("line {n}: a label without a value"))?;
                let label = &r[..eq];
                if !label_name(label) {
                    return Err(format!("line {n}: bad label name {label:?}"));
                }
                let after = r[eq + 1..].strip_prefix('"').ok_or(format!("line {n}: unquoted label value"))?;
                let mut end = None;
                let mut escaped = false;
                for (i, c) in after.char_indices() {
                    match c {
                        _ if escaped => escaped = false,
                        '\\' => escaped = true,
                        '"' => {
                            end = Some(i);
                            break;
                        }
                        _ => {}
                    }
                }
                let end = end.ok_or(format!("line {n}: unterminated label value"))?;
                let value = unescape(&after[..end]).map_err(|e| format!("line {n}: label {label}: {e}"))?;
                if labels.insert(label.to_owned(), value).is_some() {
                    return Err(format!("line {n}: label {label} twice"));
                }
                r = &after[end + 1..];
                if let Some(after) = r.strip_prefix(',') {
                    r = after;
                } else if !r.starts_with('}') {
                    return Err(format!("line {n}: expected , or }} after a label"));
                }
            }
            rest = r;
        }
        let value_text = rest.strip_prefix(' ').ok_or(format!("line {n}: no space before the value"))?;
        if value_text.contains(' ') {
            return Err(format!("line {n}: a timestamp or exemplar, which this report never writes"));
        }
        let value = match value_text {
            "NaN" => f64::NAN,
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v if v.chars().all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E')) => {
                v.parse().map_err(|_| format!("line {n}: bad value {v:?}"))?
            }
            v => return Err(format!("line {n}: bad value {v:?}")),
        };
        let Some(cur) = current.as_mut().filter(|c| c.0 == name) else {
            return Err(format!(
                "line {n}: sample {name} outside its family (no TYPE before it, or another family between)"
            ));
        };
        if cur.1.as_deref() != Some("gauge") {
            return Err(format!("line {n}: {name} is not a gauge"));
        }
        cur.3 = true;
        if label_sets.iter().any(|(f, l)| f == name && *l == labels) {
            return Err(format!("line {n}: a second sample of {name} with the same labels"));
        }
        label_sets.push((name.to_owned(), labels.clone()));
        samples.push(Sample { name: name.to_owned(), labels, value });
    }
    Ok(samples)
}

/// Undoes the escapes of a label value or help text: `\\`, `\"`, `\n`, and
/// nothing else.
fn unescape(s: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('"') => out.push('"'),
            Some('n') => out.push('\n'),
            other => return Err(format!("bad escape \\{}", other.map(String::from).unwrap_or_default())),
        }
    }
    Ok(out)
}

/// The value of the sample `name` with exactly these labels.
pub(crate) fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    samples.iter().find(|s| s.name == name && s.labels == want).map(|s| s.value)
}

#[test]
fn the_checker_rejects_what_the_format_forbids() {
    let good = "# TYPE a gauge\n# HELP a help \\\\ \\n\na{x=\"q\\\"\\\\\\n\"} 1\n# TYPE b_seconds gauge\n# UNIT b_seconds seconds\nb_seconds 1.5\n# EOF\n";
    let samples = parse(good).unwrap();
    assert_eq!(value(&samples, "a", &[("x", "q\"\\\n")]), Some(1.0));
    for (bad, why) in [
        ("# TYPE a gauge\na 1\n", "no EOF"),
        ("# TYPE a gauge\na 1\n# EOF", "no final newline"),
        ("# TYPE a gauge\na 1\n# EOF\nb 1\n", "text after EOF"),
        ("# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\n# TYPE a gauge\na{x=\"1\"} 1\n# EOF\n", "interleaved"),
        ("# TYPE a gauge\na 1\na 2\n# EOF\n", "same labels twice"),
        ("# TYPE a gauge\na{x=\"1\\q\"} 1\n# EOF\n", "bad escape"),
        ("# TYPE a gauge\n# UNIT a seconds\na 1\n# EOF\n", "unit without suffix"),
        ("# TYPE a gauge\na 1 1700000000\n# EOF\n", "timestamp"),
        ("# TYPE 1a gauge\n1a 1\n# EOF\n", "bad name"),
        ("a 1\n# EOF\n", "no TYPE"),
        ("# TYPE a gauge\na one\n# EOF\n", "bad value"),
        ("# TYPE a gauge\na 1\n# HELP a late\n# EOF\n", "descriptor after samples"),
        ("# TYPE a gauge\n# comment\na 1\n# EOF\n", "comment"),
        ("# TYPE a gauge\na{x=\"1\",x=\"2\"} 1\n# EOF\n", "label twice"),
    ] {
        assert!(parse(bad).is_err(), "accepted ({why}): {bad:?}");
    }
}

/// `diff --report openmetrics=PATH` on the report cases: a valid file whose
/// counts are the JSON plan's, counted there independently.
#[test]
fn a_plan_s_metrics_are_its_counts() {
    for (case, code) in [("report-service-changed", 0), ("report-protect-deferred", 0), ("report-protect-refused", 3)] {
        let dir = golden(case);
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("safe_switch.prom");
        let mut args: Vec<String> = crate::support::diff_args(&dir);
        args.extend(["--json".to_owned(), "--report".to_owned(), format!("openmetrics={}", file.display())]);
        let out = hermetic(&mut Command::new(BIN)).args(&args).current_dir(&dir).output().unwrap();
        assert_eq!(out.status.code(), Some(code), "{case}: {out:?}");
        let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        let samples = parse(&text).unwrap_or_else(|e| panic!("{case}: {e}\n{text}"));
        let units = plan["units"].as_array().unwrap();
        let refused = plan["protection"]["refused"].as_bool().unwrap_or(false);
        let refusals = plan["protection"]["refusals"].as_array().cloned().unwrap_or_default();
        let refused_actions: usize = refusals.iter().map(|r| r["actions"].as_array().unwrap().len()).sum();
        let listed: usize = units.iter().map(|u| u["actions"].as_array().unwrap().len()).sum();
        let deferred: usize =
            units.iter().filter_map(|u| u.get("deferral")).map(|d| d["actions"].as_array().unwrap().len()).sum();
        let fate = |f: &str| value(&samples, "safe_switch_plan_actions", &[("fate", f)]).unwrap() as usize;
        assert_eq!(fate("planned"), listed - refused_actions, "{case}\n{text}");
        assert_eq!(fate("deferred"), deferred, "{case}\n{text}");
        assert_eq!(fate("refused"), refused_actions, "{case}\n{text}");
        let verdict = if refused {
            "refused"
        } else if deferred > 0 {
            "deferred"
        } else {
            "safe"
        };
        for v in ["safe", "deferred", "refused"] {
            let want = if v == verdict { 1.0 } else { 0.0 };
            assert_eq!(value(&samples, "safe_switch_plan_verdict", &[("verdict", v)]), Some(want), "{case}: {v}");
        }
        assert_eq!(value(&samples, "safe_switch_reboot_needed", &[]), Some(0.0));
        assert_eq!(value(&samples, "safe_switch_pending_deferrals", &[]), Some(0.0));
        assert!(samples.iter().all(|s| !s.name.starts_with("safe_switch_last_apply")), "no apply, no apply metrics");
    }
    // Cases that deferred and refused something, so the counts above were
    // not all zero.
    assert!(
        std::fs::read_to_string(golden("report-protect-deferred/snapshots/json.snap")).unwrap().contains("deferral")
    );
}

/// The families of an apply, a plan's `reboot` field, and host labels with
/// characters that need escaping.
#[test]
fn apply_results_reboots_and_hosts() {
    let text = openmetrics::render_apply(
        None,
        Some(2),
        ApplyResult { exit_code: 4, duration_seconds: 12.3456, finished_unix: 1_700_000_000.5 },
    );
    let samples = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(value(&samples, "safe_switch_last_apply_success", &[]), Some(0.0));
    assert_eq!(value(&samples, "safe_switch_last_apply_exit_code", &[]), Some(4.0));
    assert_eq!(value(&samples, "safe_switch_last_apply_duration_seconds", &[]), Some(12.346));
    assert_eq!(value(&samples, "safe_switch_last_apply_timestamp_seconds", &[]), Some(1_700_000_000.5));
    assert_eq!(value(&samples, "safe_switch_pending_deferrals", &[]), Some(2.0));
    assert!(text.contains("# UNIT safe_switch_last_apply_duration_seconds seconds\n"), "{text}");

    let with_reboot: Value = serde_json::json!({"reboot": [{"reason": "kernel", "detail": "linux 6.6 -> 6.12"}]});
    let needs = plan_report::reboot_needs_in(&with_reboot).unwrap();
    assert_eq!(needs[0].reason, "kernel");
    assert!(plan_report::reboot_needs_in(&serde_json::json!({})).unwrap().is_empty());
    assert!(plan_report::reboot_needs_in(&serde_json::json!({"reboot": "yes"})).is_err());

    let hosts = [
        (Some("web-1"), HostMetrics { reboot: Some(true), pending: Some(1), ..HostMetrics::default() }),
        (Some("odd\"host\\\n"), HostMetrics { reboot: Some(false), ..HostMetrics::default() }),
    ];
    let text = openmetrics::render_hosts(&hosts);
    let samples = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(value(&samples, "safe_switch_reboot_needed", &[("host", "web-1")]), Some(1.0));
    assert_eq!(value(&samples, "safe_switch_reboot_needed", &[("host", "odd\"host\\\n")]), Some(0.0));
    assert_eq!(value(&samples, "safe_switch_pending_deferrals", &[("host", "web-1")]), Some(1.0));
}

/// `apply` takes a report of every format with the one `--report`
/// option (openmetrics among them), and nothing that is not a format.
#[test]
fn apply_takes_a_report_of_every_format() {
    // A failed apply still writes its OpenMetrics result: here, not in the
    // source tree.
    let dir = tempfile::tempdir().unwrap();
    for format in ["text", "json", "junit", "codequality", "markdown", "openmetrics"] {
        let out = hermetic(&mut Command::new(BIN))
            .current_dir(dir.path())
            .args(["apply", "/nonexistent/plan.json", "--report", &format!("{format}=r"), "--format", format])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{format}: {out:?}");
        assert!(stderr.contains("/nonexistent/plan.json"), "{format}: the plan is read: {stderr}");
    }
    let out = hermetic(&mut Command::new(BIN))
        .current_dir(dir.path())
        .args(["apply", "/nonexistent/plan.json", "--report", "pdf=r.pdf"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown report format \"pdf\""), "{out:?}");
}

/// On a real systemd: an isolated `apply` and a `switch` whose new unit
/// fails write their result, duration and the record's pending units; a
/// stale plan's refusal is a result too.
#[test]
fn switch_and_apply_write_how_they_ended() {
    testbed::require!(bed);
    let a = Generation::new("a").sshd().service("app.service", daemon("V=1")).service("runner.service", daemon("V=1"));
    let bed = TestBed::boot(&Config::new(a.clone())).expect("test bed boots");
    // Boot returns once sshd listens; the plan counts the others' actions.
    let started = std::time::Instant::now();
    while !["app.service", "runner.service"].iter().all(|u| bed.active_state(u).is_ok_and(|s| s == "active")) {
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "the services did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let b = bed
        .build_generation(
            &a.clone().renamed("b").service("app.service", daemon("V=2")).service("runner.service", daemon("V=2")),
        )
        .unwrap();
    let failing = testbed::unit::oneshot("fails", "ExecStart=/bin/false\n");
    let c = bed.build_generation(&a.clone().renamed("c").service("app.service", failing)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let plan = tmp.path().join("plan.json");
    let prom = tmp.path().join("safe_switch.prom");
    let report = format!("openmetrics={}", prom.display());
    let read = |what: &str| -> Vec<Sample> {
        let text = std::fs::read_to_string(&prom).unwrap();
        parse(&text).unwrap_or_else(|e| panic!("{what}: {e}\n{text}"))
    };

    let out = safe_switch(
        &bed,
        &["plan", "--toplevel", s(&b), "--protect", "sshd,runner", "--out", s(&plan), "--report", &report],
    );
    assert_eq!(out.code(), Some(0), "{out:?}");
    let m = read("plan");
    assert_eq!(value(&m, "safe_switch_plan_actions", &[("fate", "deferred")]), Some(2.0), "runner's stop and start");
    assert_eq!(value(&m, "safe_switch_last_apply_exit_code", &[]), None);

    // The isolated apply writes the other formats with what it did; the
    // process that started it, the metrics once it is over.
    let junit = tmp.path().join("junit.xml");
    let junit_report = format!("junit={}", junit.display());
    let out = safe_switch(&bed, &["apply", s(&plan), "--report", &report, "--report", &junit_report]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains(r#"<testcase name="observed" classname="safe-switch.applied""#), "{xml}");
    assert!(xml.contains(r#"<property name="observed.unplanned" value="0"/>"#), "{xml}");
    let m = read("apply");
    assert_eq!(value(&m, "safe_switch_last_apply_success", &[]), Some(1.0));
    assert_eq!(value(&m, "safe_switch_last_apply_exit_code", &[]), Some(0.0));
    assert!(value(&m, "safe_switch_last_apply_duration_seconds", &[]).unwrap() > 0.0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let at = value(&m, "safe_switch_last_apply_timestamp_seconds", &[]).unwrap();
    assert!((now - 120.0..=now + 1.0).contains(&at), "{at} is not now ({now})");
    assert_eq!(value(&m, "safe_switch_pending_deferrals", &[]), Some(1.0), "runner.service is pending");
    assert_eq!(value(&m, "safe_switch_plan_actions", &[("fate", "deferred")]), Some(2.0));

    // The same plan again: the running generation changed, refused.
    let out = safe_switch(&bed, &["apply", s(&plan), "--report", &report]);
    assert_eq!(out.code(), Some(3), "{out:?}");
    let m = read("stale apply");
    assert_eq!(value(&m, "safe_switch_last_apply_exit_code", &[]), Some(3.0));
    assert_eq!(value(&m, "safe_switch_last_apply_success", &[]), Some(0.0));

    let out = safe_switch(&bed, &["switch", "--toplevel", s(&c), "--protect", "sshd", "--report", &report]);
    assert_eq!(out.code(), Some(4), "{out:?}");
    let m = read("failed switch");
    assert_eq!(value(&m, "safe_switch_last_apply_exit_code", &[]), Some(4.0));
    assert_eq!(value(&m, "safe_switch_plan_verdict", &[("verdict", "safe")]), Some(1.0));
    assert!(Path::new(&prom).exists());
}
