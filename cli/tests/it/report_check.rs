//! `safe-switch check` on a real systemd: the CI gate's exit codes for
//! `--fail-on`, the reports it writes, and that it changes nothing.
//!
//! The test bed runs sshd with `Requires=net-setup.service`; the new
//! generation changes net-setup, so restarting it would stop sshd. With
//! `--protect sshd` that action is deferred (or refused), and `check`
//! fails. These tests need root and namespaces: under `CI=true` they fail
//! when they cannot run, elsewhere they skip with a message.

use std::path::Path;

use testbed::{Config, Generation, Output, TestBed};

use crate::support::safe_switch;

fn oneshot(v: &str) -> String {
    testbed::unit::oneshot("net setup", &format!("Environment=V={v}\nExecStart=/bin/true\n"))
}

fn daemon(v: &str) -> String {
    testbed::unit::daemon("app", &format!("V={v}"))
}

fn generation_a() -> Generation {
    Generation::new("a")
        .sshd_with("Requires=net-setup.service\nAfter=net-setup.service\n", "")
        .service("net-setup.service", oneshot("1"))
        .wanted_by("net-setup.service", "multi-user.target")
        .service("app.service", daemon("1"))
}

fn check(bed: &TestBed, args: &[&str]) -> Output {
    safe_switch(bed, &[&["check"], args].concat())
}

#[test]
fn check_gates_on_protected_units_and_changes_nothing() {
    testbed::require!(bed);
    let a = generation_a();
    let bed = TestBed::boot(&Config::new(a.clone())).expect("test bed boots");
    let current = bed.current_generation().unwrap();
    let touching = bed
        .build_generation(
            &a.clone().renamed("b").service("net-setup.service", oneshot("2")).service("app.service", daemon("2")),
        )
        .unwrap();
    let harmless = bed.build_generation(&a.clone().renamed("c").service("app.service", daemon("2"))).unwrap();
    let t = touching.to_str().unwrap();
    let units = ["sshd.service", "net-setup.service", "app.service"];
    let before = bed.unit_states(&units).unwrap();

    // Deferred: exit 3 by default and with --fail-on=deferred, 0 with never.
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit.xml");
    let cq = dir.path().join("cq.json");
    let out = check(
        &bed,
        &[
            "--toplevel",
            t,
            "--protect",
            "sshd",
            "--report",
            &format!("junit={}", junit.display()),
            "--report",
            &format!("codequality={}", cq.display()),
        ],
    );
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert!(out.stdout.contains("net-setup.service"), "{}", out.stdout);
    assert!(out.stderr.contains("check failed (--fail-on=blocked)"), "{}", out.stderr);
    let xml = std::fs::read_to_string(&junit).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let failed: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("testcase") && n.children().any(|c| c.has_tag_name("failure")))
        .map(|n| n.attribute("name").unwrap())
        .collect();
    assert!(failed.contains(&"stop net-setup.service"), "{failed:?}");
    assert!(xml.contains("sshd.service Requires=net-setup.service"), "{xml}");
    let findings: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cq).unwrap()).unwrap();
    assert!(findings.as_array().unwrap().iter().any(|f| f["check_name"] == "safe-switch/deferred"), "{findings}");

    assert_eq!(check(&bed, &["--toplevel", t, "--protect", "sshd", "--fail-on", "deferred"]).code(), Some(3));
    assert_eq!(check(&bed, &["--toplevel", t, "--protect", "sshd", "--fail-on", "never"]).code(), Some(0));

    // Refused: exit 3, and JSON on stdout says so.
    let out = check(&bed, &["--toplevel", t, "--protect", "sshd", "--on-protected", "refuse", "--json"]);
    assert_eq!(out.code(), Some(3), "{out:?}");
    let plan: plan_model::Plan = serde_json::from_str(&out.stdout).unwrap();
    assert!(plan.protection.refused);

    // Without protection, or with a change that touches nothing protected,
    // the gate passes; the control shows that the chain is real.
    let out = check(&bed, &["--toplevel", t, "--format", "markdown"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stdout.starts_with("## safe-switch: safe"), "{}", out.stdout);
    let out = check(&bed, &["--toplevel", harmless.to_str().unwrap(), "--protect", "sshd"]);
    assert_eq!(out.code(), Some(0), "{out:?}");

    // A bad --report value is a usage error that plans nothing.
    let out = check(&bed, &["--toplevel", t, "--report", "pdf=x.pdf"]);
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("\"pdf\""), "{}", out.stderr);

    // `check` never changes the machine.
    assert_eq!(bed.current_generation().unwrap(), current);
    assert_eq!(bed.activations(), Vec::<String>::new());
    assert_eq!(bed.unit_states(&units).unwrap(), before);
    assert!(!Path::new(&bed.run_dir().join("safe-switch/progress.json")).exists());
}

/// A generation with a kernel and a module tree for the release the test
/// machine runs, whose `modules.dep` lists `modules`.
fn booting(name: &str, kernel: &str, modules: &[&str]) -> Generation {
    let release = rustix::system::uname().release().to_str().unwrap().to_owned();
    let dir = format!("kernel-modules/lib/modules/{release}");
    let mut g = generation_a().renamed(name).file("kernel", kernel);
    let mut dep = String::new();
    for m in modules {
        g = g.file(format!("{dir}/{m}"), format!("module {m}"));
        dep.push_str(&format!("{m}:\n"));
    }
    g.file(format!("{dir}/modules.dep"), dep)
}

#[test]
fn check_fails_on_a_reboot_only_when_asked_and_reads_the_running_kernel() {
    testbed::require!(bed);
    let a = booting("a", "kernel 1", &["kernel/fs/base.ko"]);
    let bed = TestBed::boot(&Config::new(a)).expect("test bed boots");
    let modules = bed.build_generation(&booting("b", "kernel 1", &["kernel/fs/base.ko", "extra/ss_dummy.ko"])).unwrap();
    let kernel = bed.build_generation(&booting("c", "kernel 2", &["kernel/fs/base.ko"])).unwrap();
    let (m, k) = (modules.to_str().unwrap(), kernel.to_str().unwrap());
    let release = rustix::system::uname().release().to_str().unwrap().to_owned();

    // A module added for the running kernel, which nothing holds: usable
    // now, no reboot, and the gate passes even when it fails on one.
    let out = check(&bed, &["--toplevel", m, "--fail-on", "blocked,reboot", "--json"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let plan: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(plan["reboot"], serde_json::json!([]), "{plan}");
    let module = &plan["kernel_modules"][0];
    assert_eq!(
        (&module["module"], &module["release"], &module["usable"]),
        (&"ss_dummy".into(), &release.clone().into(), &"now".into())
    );

    // The same module loaded already (in a kernel state made for the
    // test): usable after a reboot, and `--fail-on reboot` fails.
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("proc")).unwrap();
    std::fs::create_dir_all(root.path().join("sys/module/ss_dummy")).unwrap();
    std::fs::write(root.path().join("proc/modules"), "ss_dummy 16384 0 - Live 0x0\n").unwrap();
    std::fs::write(root.path().join("sys/module/ss_dummy/version"), "0.9\n").unwrap();
    let env = [(safe_switch_cli::test_hooks::KERNEL_ROOT, root.path().to_str().unwrap())];
    let out = crate::support::safe_switch_with(&bed, &["check", "--toplevel", m, "--fail-on", "reboot"], &env);
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert!(
        out.stdout
            .contains("kernel-modules: 1 module usable only after a reboot: ss_dummy (loaded already (version 0.9)"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("check failed (--fail-on=reboot): the switch needs a reboot (kernel-modules)"),
        "{}",
        out.stderr
    );

    // Another kernel: a reboot; the default gate does not count it.
    let out = check(&bed, &["--toplevel", k, "--json"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let plan: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(plan["reboot"][0]["reason"], "kernel", "{plan}");
    assert!(plan["reboot"][0]["detail"].as_str().unwrap().starts_with("the kernel changes: sha256:"), "{plan}");
    assert_eq!(check(&bed, &["--toplevel", k, "--fail-on", "reboot"]).code(), Some(3));
    let out = check(&bed, &["--toplevel", k, "--fail-on", "never,reboot"]);
    assert_eq!(out.code(), Some(2), "{out:?}");

    // A reboot asked for on the host (the marker in the bed's /run).
    crate::support::bed_file(&bed, "reboot-required", "", 0o755, 0o644);
    let out = check(&bed, &["--toplevel", m, "--fail-on", "reboot"]);
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert!(out.stdout.contains("activation: /run/reboot-required exists"), "{}", out.stdout);
}
