//! The `diff` subcommand: the plan between two generation directories.
//!
//! `safe-switch diff OLD NEW [--live STATE.json] [--json]` loads both
//! generations, takes the live state from the snapshot (or assumes every
//! unit of the old generation is active, see
//! [`systemd_plan::assumed_live_state`]), plans, and prints the plan. It
//! needs no systemd and changes nothing. Two nix-darwin generations are
//! planned for launchd instead (see [`crate::cmd::darwin`]).
//!
//! `--pending PENDING.json` takes a record of deferrals earlier switches
//! left pending (the form of `/run/safe-switch/pending.json`) and shows
//! what the plan does to each, as `plan` does on a host: how a switch
//! merges into the record, offline.
//!
//! `--applied APPLIED.json` takes what an apply of the plan did (the
//! `applied` object of a switch's JSON report) and shows it with the plan,
//! in every format, as `switch` and `apply` report it.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::bail;
use plan_model::{LiveState, Pending, Plan};

use crate::args;
use crate::exit::Outcome;
use plan_model::FileDiff;

/// Runs `diff`.
pub(crate) fn run(args: args::DiffArgs) -> anyhow::Result<Outcome> {
    if crate::cmd::darwin::is_darwin_pair(&args.old, &args.new) {
        return crate::cmd::darwin::diff(&args);
    }
    let earlier_record = args.pending.as_deref().map(load_pending).transpose()?;
    let applied = args.applied.as_deref().map(load_applied).transpose()?;
    let (plan, protection, diffs, live) = build_protected(&args)?;
    if let Some(unit) = &args.protect.explain {
        let text = protection.explain(&plan, unit, args.output.stdout_format())?;
        std::io::stdout().lock().write_all(text.as_bytes())?;
        return Ok(crate::protect::outcome(&plan));
    }
    // The time of new deferrals does not show: only the earlier ones are
    // reported.
    let earlier =
        earlier_record.map(|p| p.merge(&plan, plan_model::Manager::Systemd, &live, 0).earlier).unwrap_or_default();
    let report =
        plan_report::Report { plan: &plan, diffs: &diffs, commands: &[], pending: &earlier, applied: applied.as_ref() };
    crate::report::write_outputs(&report, &args.output)?;
    Ok(crate::protect::outcome(&plan))
}

/// Loads the inputs named on the command line, plans and applies
/// protection; also returns what protection found (for `--explain`),
/// the diffs of the unit files the plan was made from and the live state
/// it was made with.
fn build_protected(
    args: &args::DiffArgs,
) -> anyhow::Result<(Plan, crate::protect::ProtectReport, Vec<FileDiff>, LiveState)> {
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
    Ok((plan, protection, diffs, live))
}

/// The largest `--pending` or `--applied` file read.
const PENDING_LIMIT: u64 = 16 << 20;

/// Reads a record of pending deferrals, naming the file in every error
/// and never quoting it: a regular file of at most 16 MiB, of this
/// version's form.
fn load_pending(path: &Path) -> anyhow::Result<Pending> {
    use std::io::Read as _;
    let meta =
        fs::metadata(path).map_err(|e| anyhow::anyhow!("{}: cannot read pending deferrals: {e}", path.display()))?;
    if !meta.is_file() {
        bail!("{}: cannot read pending deferrals: not a regular file", path.display());
    }
    let mut text = String::new();
    let read = fs::File::open(path).and_then(|f| f.take(PENDING_LIMIT + 1).read_to_string(&mut text));
    if let Err(e) = read {
        bail!("{}: cannot read pending deferrals: {e}", path.display());
    }
    if text.len() as u64 > PENDING_LIMIT {
        bail!("{}: cannot read pending deferrals: larger than {} MiB", path.display(), PENDING_LIMIT >> 20);
    }
    Pending::from_json(&text).map_err(|e| anyhow::anyhow!("{}: invalid pending deferrals: {e}", path.display()))
}

/// Reads what an apply did, naming the file in every error and never
/// quoting it: a regular file of at most 16 MiB.
fn load_applied(path: &Path) -> anyhow::Result<plan_model::ApplyReport> {
    use std::io::Read as _;
    let meta =
        fs::metadata(path).map_err(|e| anyhow::anyhow!("{}: cannot read the apply report: {e}", path.display()))?;
    if !meta.is_file() {
        bail!("{}: cannot read the apply report: not a regular file", path.display());
    }
    let mut text = String::new();
    let read = fs::File::open(path).and_then(|f| f.take(PENDING_LIMIT + 1).read_to_string(&mut text));
    if let Err(e) = read {
        bail!("{}: cannot read the apply report: {e}", path.display());
    }
    if text.len() as u64 > PENDING_LIMIT {
        bail!("{}: cannot read the apply report: larger than {} MiB", path.display(), PENDING_LIMIT >> 20);
    }
    plan_model::ApplyReport::from_json(&text)
        .map_err(|e| anyhow::anyhow!("{}: invalid apply report: {e}", path.display()))
}

/// The largest live-state snapshot read (one of a host with thousands of
/// units and their dependencies is a few MiB).
const LIVE_LIMIT: generation_fs::Limit = generation_fs::Limit::new(64 << 20, "a live state");

/// Reads a live-state snapshot, naming the file in every error: a regular
/// file, opened without blocking, of at most 64 MiB.
pub(crate) fn load_live(path: &Path) -> anyhow::Result<LiveState> {
    let bytes = match generation_fs::read_host(path, path, LIVE_LIMIT) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => bail!("{}: cannot read live state: No such file or directory (os error 2)", path.display()),
        Err(generation_fs::ReadError::Io { source, .. }) => {
            bail!("{}: cannot read live state: {source}", path.display())
        }
        Err(err) => bail!("{err}"),
    };
    let Ok(text) = String::from_utf8(bytes) else {
        bail!("{}: invalid live state: not UTF-8", path.display());
    };
    match LiveState::from_json(&text) {
        Ok(live) => Ok(live),
        Err(err) => bail!("{}: invalid live state: {err}", path.display()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_live_state_is_read_bounded_and_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("live.json");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let err = load_live(&fifo).unwrap_err().to_string();
        assert_eq!(err, format!("{}: cannot read live state: a FIFO, not a regular file", fifo.display()));
        std::fs::remove_file(&fifo).unwrap();
        std::fs::File::create(&fifo).unwrap().set_len(LIVE_LIMIT.bytes + 1).unwrap();
        let err = load_live(&fifo).unwrap_err().to_string();
        assert_eq!(err, format!("{}: larger than 64 MiB, the most read from a live state", fifo.display()));
        std::fs::write(&fifo, b"{\"units\": {}, \"kernel_release\": \"\xff\"}").unwrap();
        let err = load_live(&fifo).unwrap_err().to_string();
        assert_eq!(err, format!("{}: invalid live state: not UTF-8", fifo.display()));
        std::fs::write(&fifo, r#"{"kernel_release": "6.6.1", "loaded_modules": {"wireguard": {}}}"#).unwrap();
        assert_eq!(load_live(&fifo).unwrap().kernel_release.as_deref(), Some("6.6.1"));
    }
}
