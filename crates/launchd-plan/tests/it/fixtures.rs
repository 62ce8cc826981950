//! Walks `tests/fixtures/*`, plans each case and snapshots the plan (JSON)
//! and the operation sequence (one command line per line).

use std::path::{Path, PathBuf};

use launchd_plan::{
    Host, LaunchdPlan, LoadError, Request, load_generation, load_installed, load_live, operations, plan,
};
use plan_model::{Mode, ProtectionSource};
use serde::Deserialize;

/// The stand-in store paths of the fixture generations, so snapshots do
/// not depend on where the checkout lives.
pub(crate) const OLD: &str = "/nix/store/00000000000000000000000000000000-darwin-system-old";
pub(crate) const NEW: &str = "/nix/store/11111111111111111111111111111111-darwin-system-new";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    mode: Mode,
    protect: Vec<String>,
}

pub(crate) fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub(crate) fn cases() -> Vec<String> {
    let mut cases: Vec<String> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    cases.sort();
    cases
}

/// Loads and plans one fixture case.
pub(crate) fn run_case(case: &str) -> Result<LaunchdPlan, LoadError> {
    let dir = fixtures_dir().join(case);
    let mut old = load_generation(&dir.join("old"))?;
    let mut new = load_generation(&dir.join("new"))?;
    old.path = OLD.to_owned();
    new.path = NEW.to_owned();
    let live = load_live(&dir.join("live.json"))?;
    // An `installed` directory stands for the machine's root, with the
    // primary user's home at `installed/home`.
    let installed_root = dir.join("installed");
    let installed = if installed_root.is_dir() {
        Some(load_installed(&installed_root, Some(&installed_root.join("home")), &old, &new)?)
    } else {
        None
    };
    let host = Host { live, installed };
    let policy = match std::fs::read_to_string(dir.join("policy.json")) {
        Ok(text) => {
            let file: PolicyFile = serde_json::from_str(&text).unwrap();
            Request::from_selectors(file.mode, &file.protect, &ProtectionSource::CommandLine).unwrap()
        }
        Err(_) => Request::default(),
    };
    Ok(plan(&old, &new, &host, &policy))
}

fn render_ops(plan: &LaunchdPlan) -> String {
    match operations(plan) {
        Ok(ops) if ops.is_empty() => "(no operations)\n".to_owned(),
        Ok(ops) => ops.iter().map(|op| format!("{op}\n")).collect(),
        Err(e) => format!("error: {e}\n"),
    }
}

/// Every case, with insta's `glob!`: the snapshots are
/// `snapshots/{plan,ops,error}@<case>.snap`, and every case runs even when
/// one does not match (`INSTA_GLOB_FILTER=added` runs one).
#[test]
fn fixture_cases() {
    let cases = cases();
    assert!(cases.len() >= 8, "expected at least 8 fixture cases, found {cases:?}");
    let root = fixtures_dir().display().to_string();
    // `?*`, not `*`: the base directory itself would match `*`.
    insta::glob!("../fixtures", "?*", |dir| {
        let case = dir.file_name().unwrap().to_str().unwrap();
        let mut settings = insta::Settings::clone_current();
        settings.set_prepend_module_to_snapshot(false);
        settings.bind(|| match run_case(case) {
            Ok(plan) => {
                insta::assert_snapshot!("plan", plan.plan.to_json());
                insta::assert_snapshot!("ops", render_ops(&plan));
            }
            Err(e) => {
                let msg = e.to_string().replace(&root, "tests/fixtures");
                insta::assert_snapshot!("error", msg);
            }
        });
    });
}
