//! The `diff` subcommand: the plan between two generation directories.
//!
//! `safe-switch diff OLD NEW [--live STATE.json] [--json]` loads both
//! generations, takes the live state from the snapshot (or assumes every
//! unit of the old generation is active, see
//! [`systemd_plan::assumed_live_state`]), plans, and prints the plan. It
//! needs no systemd and changes nothing. Two nix-darwin generations are
//! planned for launchd instead (see [`crate::cmd::darwin`]).

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::bail;
use plan_model::{LiveState, Plan};

use crate::args;
use crate::exit::Outcome;
use plan_model::FileDiff;

/// Runs `diff`.
pub fn run(args: args::DiffArgs) -> anyhow::Result<Outcome> {
    if crate::cmd::darwin::is_darwin_pair(&args.old, &args.new) {
        return crate::cmd::darwin::diff(&args);
    }
    let (plan, protection, diffs) = build_protected(&args)?;
    if let Some(unit) = &args.protect.explain {
        let text = protection.explain(&plan, unit, args.output.stdout_format())?;
        std::io::stdout().lock().write_all(text.as_bytes())?;
        return Ok(crate::protect::outcome(&plan));
    }
    crate::report::write_plan(&plan, &diffs, &args.output)?;
    Ok(crate::protect::outcome(&plan))
}

/// Loads the inputs named on the command line, plans and applies
/// protection.
pub fn build(args: &args::DiffArgs) -> anyhow::Result<Plan> {
    Ok(build_protected(args)?.0)
}

/// Like [`build`], also returning what protection found (for `--explain`)
/// and the diffs of the unit files the plan was made from.
fn build_protected(args: &args::DiffArgs) -> anyhow::Result<(Plan, crate::protect::ProtectReport, Vec<FileDiff>)> {
    let (old, new) = systemd_plan::load_pair(&args.old, &args.new);
    let (old, new) = (old?, new?);
    let live = match &args.live {
        Some(path) => load_live(path)?,
        None => systemd_plan::assumed_live_state(&old),
    };
    let mut plan = systemd_plan::plan(&old, &new, &live);
    crate::cmd::closure_diff::attach_to_plan(&mut plan, &args.old, &args.new);
    let protection = crate::protect::protect_plan(&mut plan, &old, &new, &live, &args.protect)?;
    let diffs = systemd_plan::unit_diffs(&plan, &old, &new);
    Ok((plan, protection, diffs))
}

/// Reads a live-state snapshot, naming the file in every error.
pub fn load_live(path: &Path) -> anyhow::Result<LiveState> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) => bail!("{}: cannot read live state: {err}", path.display()),
    };
    match LiveState::from_json(&text) {
        Ok(live) => Ok(live),
        Err(err) => bail!("{}: invalid live state: {err}", path.display()),
    }
}
