//! The package diff next to the unit plan: `safe-switch diff` of two
//! generations built by a real Nix into the machine's store shows which
//! packages changed, in the text and in the JSON plan.
//!
//! Needs a Nix that can build into this machine's store
//! (`testbed::require!(nix)`). Under CI it fails when it cannot run;
//! elsewhere it skips with a message.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{BIN, hermetic};

/// Builds two generations whose toplevels carry a unit file and depend on
/// packages: `hello` 1.0 → 1.1, `tool` removed, `docker` added.
fn build_generations(dir: &Path) -> (PathBuf, PathBuf) {
    let nonce = format!("{:?}", std::time::SystemTime::now());
    let expr = format!(
        r#"
let
  mk = name: deps: script: derivation {{
    inherit name deps;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    PATH = "/bin:/usr/bin";
    nonce = "{nonce}";
    args = [ "-c" script ];
  }};
  pkg = name: mk name [] "echo $name > $out";
  gen = name: deps: unit: mk name deps ''
    mkdir -p $out/etc/systemd/system
    printf '[Service]\nExecStart=%s\n' "${{unit}}" > $out/etc/systemd/system/app.service
    echo "systemd 2" > $out/init-interface-version
    for d in $deps; do echo $d >> $out/deps; done
  '';
in {{
  old = gen "nixos-system-runner-1" [ (pkg "hello-1.0") (pkg "tool-0.5") ] "/bin/app --old";
  new = gen "nixos-system-runner-2" [ (pkg "hello-1.1") (pkg "docker-27.1") ] "/bin/app --new";
}}"#
    );
    let file = dir.join("gens.nix");
    std::fs::write(&file, expr).expect("write expression");
    let build = |attr: &str| {
        let link = dir.join(attr);
        let out = testbed::nix::command("nix-build")
            .arg(&file)
            .args(["-A", attr, "-o"])
            .arg(&link)
            .output()
            .expect("run nix-build");
        assert!(out.status.success(), "nix-build: {}", String::from_utf8_lossy(&out.stderr));
        std::fs::canonicalize(&link).expect("resolve the build result")
    };
    (build("old"), build("new"))
}

fn safe_switch(args: &[&Path], json: bool) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    hermetic(&mut cmd).arg("diff").args(args).env("NO_COLOR", "1");
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().expect("run safe-switch");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn diff_of_store_generations_shows_package_changes() {
    testbed::require!(nix);
    let dir = tempfile::tempdir().expect("temp dir");
    let (old, new) = build_generations(dir.path());

    let (code, text, stderr) = safe_switch(&[&old, &new], false);
    assert_eq!(code, 0, "{stderr}");
    assert!(text.contains("app.service"), "the unit plan is still there:\n{text}");
    let packages = text.split("\npackages:\n").nth(1).unwrap_or_else(|| panic!("no packages section:\n{text}"));
    assert!(packages.contains("hello") && packages.contains("1.0") && packages.contains("1.1"), "{packages}");
    assert!(packages.contains("docker"), "{packages}");
    assert!(packages.contains("tool"), "{packages}");

    let (code, json, stderr) = safe_switch(&[&old, &new], true);
    assert_eq!(code, 0, "{stderr}");
    let plan: serde_json::Value = serde_json::from_str(&json).expect("JSON plan");
    let pk = &plan["packages"];
    assert_eq!(pk["old"]["root"], old.display().to_string());
    assert_eq!(pk["new"]["root"], new.display().to_string());
    let changed = pk["changed"].as_array().expect("changed");
    let hello = changed.iter().find(|c| c["name"] == "hello").expect("hello changed");
    assert_eq!(hello["old_versions"], serde_json::json!(["1.0"]));
    assert_eq!(hello["new_versions"], serde_json::json!(["1.1"]));
    assert_eq!(hello["direction"], "upgrade");
    let names = |key: &str| -> Vec<String> {
        pk[key].as_array().expect(key).iter().map(|p| p["name"].as_str().unwrap_or("").to_owned()).collect()
    };
    assert_eq!(names("added"), ["docker"]);
    assert_eq!(names("removed"), ["tool"]);
}

#[test]
fn generations_outside_the_store_have_no_package_diff() {
    // Fixture generations are plain directories: the plan carries no
    // package diff and no warning about it.
    let dir = tempfile::tempdir().expect("temp dir");
    for g in ["old", "new"] {
        let units = dir.path().join(g).join("etc/systemd/system");
        std::fs::create_dir_all(&units).expect("mkdir");
        std::fs::write(units.join("a.service"), format!("[Service]\nExecStart=/bin/{g}\n")).expect("write");
    }
    let (code, json, stderr) = safe_switch(&[&dir.path().join("old"), &dir.path().join("new")], true);
    assert_eq!(code, 0, "{stderr}");
    let plan: serde_json::Value = serde_json::from_str(&json).expect("JSON plan");
    assert!(plan.get("packages").is_none(), "{json}");
    assert!(!json.contains("package diff"), "{json}");
}
