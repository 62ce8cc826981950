//! The `closure-diff` subcommand: which packages change between two store
//! paths (or links to them such as `/run/current-system`), as text or
//! JSON.
//!
//! Where the store lives follows Nix's own environment variables
//! (`NIX_STORE_DIR`, `NIX_STATE_DIR`, `NIX_DB_DIR`, `NIX_REMOTE`), so the
//! command reads the same store the `nix` commands would.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use closure_diff::{ClosureDiff, Options};

use crate::args;
use crate::exit::Outcome;

/// The options for reading the store, from the environment as Nix reads
/// it.
pub fn options_from_env() -> Options {
    Options::from_nix_env(|k| std::env::var(k).ok())
}

/// Reads and compares the closures of two store paths; the entry point
/// for other commands that show a closure diff next to their own output.
pub fn closure_diff(old: &Path, new: &Path) -> anyhow::Result<ClosureDiff> {
    let options = options_from_env();
    closure_diff::diff_store_paths(old, new, &options)
        .with_context(|| format!("comparing the closures of {} and {}", old.display(), new.display()))
}

/// Adds the package changes between the plan's two generations to
/// `plan.packages`, when both are store paths. Anything else (generation
/// directories outside the store, as in offline `diff` runs on fixtures)
/// is skipped silently; a store that cannot be read becomes a warning in
/// the plan, never a failed plan: the unit plan stands on its own.
pub fn attach_to_plan(plan: &mut plan_model::Plan, old: &Path, new: &Path) {
    let options = options_from_env();
    let in_store = |p: &Path| std::fs::canonicalize(p).is_ok_and(|p| p.starts_with(&options.store_dir));
    if !in_store(old) || !in_store(new) {
        return;
    }
    match closure_diff(old, new) {
        Ok(diff) => plan.packages = Some(diff),
        Err(err) => plan.diagnostics.push(plan_model::Diagnostic {
            severity: plan_model::Severity::Warning,
            message: format!("the package diff is not available: {err:#}"),
            unit: None,
            path: None,
            line: None,
        }),
    }
}

/// Runs `closure-diff`.
pub fn run(args: args::ClosureDiffArgs) -> anyhow::Result<Outcome> {
    let diff = closure_diff(&args.old, &args.new)?;
    // Say when the database could not be used, so a slow run or a
    // different answer has an explanation; it does not change the result.
    let reasons: Vec<&String> = [&diff.old, &diff.new].into_iter().filter_map(|s| s.fallback_reason.as_ref()).collect();
    if let Some(reason) = reasons.first() {
        say!("note: read the closures with `nix path-info` because the database failed: {reason}");
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &diff)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", plan_report::packages::text(&diff))?;
    }
    out.flush()?;
    Ok(Outcome::Ok)
}
