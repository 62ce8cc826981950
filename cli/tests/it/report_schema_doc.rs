//! `docs/plan-schema.md` documents every field of the JSON plan and every
//! rule: a plan with every optional field filled is serialized, and each
//! key it contains must appear in the document, as must each `Rule`
//! identifier declared in the plan model.

use std::collections::BTreeSet;
use std::path::Path;

use plan_model::{
    Action, Deferral, Diagnostic, Edge, FORMAT_VERSION, FlakeInput, Generation, KeyChange, Mode, Plan, ProtectedUnit,
    Protection, ProtectionSource, Provenance, Reason, Refusal, Rule, Severity, Step, UnitPlan,
};
use safe_switch_cli::saved::{
    Inputs, RecordedJob, RecordedLaunchd, RecordedProtection, RecordedSelector, RecordedUnit, SavedPlan,
};

fn doc() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/plan-schema.md")).unwrap()
}

fn flake() -> FlakeInput {
    FlakeInput {
        reference: "./ci".into(),
        locked_url: Some("path:/x".into()),
        rev: Some("abc".into()),
        nar_hash: Some("sha256-x".into()),
        last_modified: Some(1),
    }
}

fn full_plan() -> Plan {
    let edge = Edge { from: "a".into(), relation: "Requires".into(), to: "b".into() };
    Plan {
        format_version: FORMAT_VERSION,
        old: Generation {
            path: "/old".into(),
            init_interface_version: Some("systemd 2".into()),
            provenance: Some(Provenance::Toplevel { given: "/old".into() }),
        },
        new: Generation {
            path: "/new".into(),
            init_interface_version: Some("systemd 2".into()),
            provenance: Some(Provenance::Composed {
                base: flake(),
                overlay: flake(),
                platform: "nixos".into(),
                host: "h".into(),
                module: "default".into(),
                wrapper: "{}".into(),
            }),
        },
        units: vec![UnitPlan {
            unit: "a.service".into(),
            actions: vec![Action::Restart],
            reasons: vec![Reason { rule: Rule::UnitChanged, detail: Some("x".into()) }],
            changes: vec![KeyChange {
                section: "Service".into(),
                key: "ExecStart".into(),
                old: None,
                new: Some(vec![]),
            }],
            deferral: Some(Deferral {
                actions: vec![Action::Stop],
                touch: plan_model::Touch {
                    touches: "b".into(),
                    effect: Action::Stop,
                    chain: vec![edge.clone()],
                    cause: None,
                    omitted: 0,
                },
            }),
        }],
        steps: vec![
            Step::Swapoff { device: "/dev/x".into() },
            Step::Activate { script: "/new/activate".into() },
            Step::Reexec { reasons: vec!["x".into()] },
            Step::DaemonReload,
            Step::RestartSysinitReactivation,
            Step::Assertions { script: "/new/bin/preActivationAssertions".into() },
            Step::Mask { units: vec!["ssh.service".into()] },
        ],
        consequences: vec![plan_model::Consequence {
            unit: "c.service".into(),
            effect: Action::Restart,
            by: "a.service".into(),
            cause: Action::Restart,
            chain: vec![edge.clone()],
            omitted: 2,
        }],
        protection: Protection {
            mode: Mode::Refuse,
            protected: vec![
                ProtectedUnit {
                    selector: "b".into(),
                    source: ProtectionSource::Policy { path: "/p".into() },
                    units: vec!["b".into()],
                    allow: vec![Action::Reload],
                },
                ProtectedUnit {
                    selector: "c".into(),
                    source: ProtectionSource::Implicit { why: "x".into() },
                    units: vec![],
                    allow: vec![],
                },
            ],
            refused: true,
            refusals: vec![Refusal {
                unit: "a.service".into(),
                actions: vec![Action::Restart],
                touch: plan_model::Touch {
                    touches: "b".into(),
                    effect: Action::Stop,
                    chain: vec![edge],
                    cause: None,
                    omitted: 0,
                },
            }],
        },
        diagnostics: vec![Diagnostic {
            severity: Severity::Warning,
            message: "m".into(),
            unit: Some("a".into()),
            path: Some("/f".into()),
            line: Some(3),
        }],
        packages: Some(serde_json::from_value(serde_json::json!({
            "old": {"root": "/nix/store/a-nixos-system", "paths": 2, "nar_size": 10, "source": "database", "fallback_reason": "x"},
            "new": {"root": "/nix/store/b-nixos-system", "paths": 2, "nar_size": 12, "source": "database"},
            "changed": [{"name": "hello", "old_versions": ["1.0"], "new_versions": ["1.1"], "direction": "upgrade", "old_size": 1, "new_size": 2, "size_delta": 1}],
            "added": [{"name": "docker", "versions": ["27.1"], "size": 5}],
            "removed": [],
            "rebuilt": [{"name": "etc", "versions": [""], "old_size": 1, "new_size": 1, "size_delta": 0}],
            "paths_added": 1,
            "paths_removed": 1,
            "size_delta": 2
        }))
        .unwrap()),
        reboot: vec![plan_model::Reboot { reason: plan_model::RebootReason::Kernel, detail: "x".into() }],
        kernel_modules: vec![plan_model::KernelModule {
            module: "wireguard".into(),
            release: "6.6.1".into(),
            path: "extra/wireguard.ko".into(),
            change: plan_model::ModuleChange::Added,
            usable: plan_model::ModuleUse::AfterReboot,
            detail: "x".into(),
        }],
    }
}

/// An apply report of `plan` with every optional field filled.
fn full_applied(plan: &Plan) -> plan_model::ApplyReport {
    use plan_model::observe::{Activity, Observed, SeenJob};
    use plan_model::{ApplyReport, JobKind, JobRecord, JobResult, LeftUnit, LogTail, PhaseRecord, ProtectedCheck};
    use plan_model::{Phase, UnitFailure, UnitStatus};
    let status = UnitStatus { load_state: "loaded".into(), active_state: "failed".into(), ..UnitStatus::default() };
    let job = JobRecord { kind: JobKind::Start, unit: "a.service".into(), result: JobResult::TimedOut { seconds: 9 } };
    let failure = UnitFailure { unit: "a.service".into(), status: status.clone(), job: Some(job.clone()) };
    let mut observed = Observed::default();
    let up = |invocation: &str| Activity { active_state: "active".into(), invocation_id: Some(invocation.into()) };
    observed.before.insert("b".into(), up("1"));
    observed.after.insert("b".into(), up("2"));
    observed.jobs = vec![SeenJob { unit: "b".into(), job_type: Some("restart".into()), result: None, ours: false }];
    observed.dropped = 1;
    let mut predicted = plan.clone();
    predicted.consequences[0].unit = "b".into();
    let mut observation = plan_model::observe::classify(&predicted, &observed);
    observation.effects[0].protected = true;
    observation.not_seen = plan.consequences.clone();
    ApplyReport {
        new: "/new".into(),
        phases: vec![
            PhaseRecord { phase: Phase::Start, jobs: vec![job], note: None, ok: false },
            PhaseRecord { phase: Phase::Activate, jobs: vec![], note: Some("exit status 0".into()), ok: true },
        ],
        not_done: vec![Phase::Restart],
        aborted: Some("x".into()),
        left: vec![LeftUnit { unit: "a.service".into(), status: Some(status.clone()), remaining: vec![Action::Start] }],
        failed: vec![failure.clone()],
        failed_status: Some("x".into()),
        already_failed: vec![failure],
        protected: vec![ProtectedCheck {
            unit: "b".into(),
            before: status.clone(),
            after: status,
            disturbed: Some("x".into()),
        }],
        observed: Some(observation),
        log: Some(LogTail::of("/run/safe-switch/activation.log", 1 << 20, b"a\nb\n")),
        unchanged: true,
    }
}

fn keys(value: &serde_json::Value, out: &mut BTreeSet<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                out.insert(k.clone());
                keys(v, out);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| keys(v, out)),
        _ => {}
    }
}

#[test]
fn every_json_key_is_documented() {
    let doc = doc();
    let mut plan = full_plan();
    let mut found = BTreeSet::new();
    keys(&serde_json::to_value(&plan).unwrap(), &mut found);
    plan.new.provenance =
        Some(Provenance::FlakeAttr { flake: flake(), attr: "x".into(), built: Some("y".into()), wrapper: "{}".into() });
    keys(&serde_json::to_value(&plan).unwrap(), &mut found);
    let saved = SavedPlan::new(
        plan,
        Inputs {
            running_generation: "/old".into(),
            target_toplevel: "/new".into(),
            protection: RecordedProtection {
                selectors: vec![RecordedSelector {
                    selector: "sshd".into(),
                    source: plan_model::ProtectionSource::Policy { path: "/etc/safe-switch/policy.toml".into() },
                }],
                mode: plan_model::Mode::Refuse,
                implicit: plan_model::policy::ImplicitProtections::default(),
                caller_cgroups: vec!["/system.slice/gitlab-runner.service".into()],
            },
            live: [("a.service".to_owned(), Some(RecordedUnit::default()))].into(),
            launchd: Some(RecordedLaunchd {
                jobs: [("system/a".to_owned(), Some(RecordedJob { pid: Some(1), runs: Some(1) }))].into(),
            }),
        },
    );
    keys(&serde_json::to_value(&saved).unwrap(), &mut found);
    // The earlier deferrals of a plan's report, and the record itself.
    let deferral = plan_model::PendingDeferral {
        manager: plan_model::Manager::Systemd,
        unit: "a.service".into(),
        actions: vec![Action::Restart],
        from: "/a".into(),
        generation: "/b".into(),
        invocation: "0".into(),
        since_unix: 1,
        reasons: vec![Reason { rule: Rule::UnitChanged, detail: None }],
        touch: plan_model::Touch {
            touches: "b".into(),
            effect: Action::Stop,
            chain: vec![Edge { from: "a".into(), relation: "Requires".into(), to: "b".into() }],
            cause: Some(Action::Stop),
            omitted: 1,
        },
    };
    let earlier = [plan_model::Earlier { deferral: deferral.clone(), fate: plan_model::Fate::StillPending }];
    let full = full_plan();
    let applied = full_applied(&full);
    let report = plan_report::Report { pending: &earlier, applied: Some(&applied), ..plan_report::Report::of(&full) };
    keys(&serde_json::from_str(&plan_report::json::render(&report)).unwrap(), &mut found);
    let record = plan_model::Pending { deferrals: vec![deferral], ..plan_model::Pending::default() };
    keys(&serde_json::from_str(&record.to_json()).unwrap(), &mut found);
    // The merged document of several hosts.
    let reboot = [plan_report::RebootNeed { reason: "kernel".into(), detail: "x".into() }];
    let hosts = [plan_report::HostReport { host: "h", report, reboot: &reboot }];
    keys(&serde_json::from_str(&plan_report::json::render_hosts(&hosts)).unwrap(), &mut found);
    found.remove("a.service");
    found.remove("system/a");
    let missing: Vec<&String> = found.iter().filter(|k| !doc.contains(&format!("`{k}`"))).collect();
    assert!(missing.is_empty(), "docs/plan-schema.md does not document {missing:?}");
    // Enumerated values too.
    for value in [
        "swapoff",
        "activate",
        "reexec",
        "daemon-reload",
        "restart-sysinit-reactivation",
        "command-line",
        "policy",
        "implicit",
        "toplevel",
        "flake-attr",
        "composed",
        "defer",
        "refuse",
        "systemd",
        "still-pending",
        "deferred-again",
        "carried-out",
        "restarted-since",
        "done",
        "failed",
        "timed-out",
        "not-queued",
        "no-reply",
        "planned",
        "predicted",
        "unplanned",
        "start",
        "stop",
        "restart",
        "reload",
        "job",
        "kernel",
        "initrd",
        "kernel-modules",
        "dbus",
        "activation",
        "added",
        "changed",
        "now",
        "after-reboot",
        "unreachable",
        "unknown",
    ] {
        assert!(doc.contains(&format!("`{value}`")), "docs/plan-schema.md does not mention `{value}`");
    }
}

#[test]
fn every_rule_is_documented() {
    let source =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/plan-model/src/plan.rs"))
            .unwrap();
    let start = source.find("pub enum Rule {").unwrap();
    let end = start + source[start..].find("\n}").unwrap();
    let doc = doc();
    let mut count = 0;
    for line in source[start..end].lines() {
        let Some(name) = line.trim().strip_suffix(',') else { continue };
        if name.is_empty() || !name.chars().all(char::is_alphanumeric) {
            continue;
        }
        let id: Rule =
            serde_json::from_value(serde_json::Value::String(kebab(name))).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(doc.contains(&format!("| `{}` |", id.id())), "docs/plan-schema.md has no row for rule `{}`", id.id());
        count += 1;
    }
    assert!(count >= 30, "only {count} rules found in the plan model");
}

fn kebab(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('-');
        }
        out.extend(c.to_lowercase());
    }
    out
}
