//! The record of deferred actions still pending on this host
//! (`/run/safe-switch/pending.json`, see [`systemd_live::RunDir`]): read,
//! checked against the units' instances now, and merged with each switch's
//! plan ([`plan_model::Pending::merge`], which decides).
//!
//! `switch` and `settle` read it before changing anything, and a record
//! that cannot be read stops them (exit 1, nothing changed); `plan` and
//! `check`, which change nothing, show it when they can read it.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use plan_model::{Earlier, LiveState, LiveUnit, Manager, Pending, Plan};
use systemd_live::{RunDir, ServiceManager};

/// Reads the record; an invalid one is an error that names the file and
/// says that nothing was changed.
pub(crate) fn read(run: &RunDir) -> anyhow::Result<Pending> {
    match run.read_pending() {
        Err(systemd_live::Error::Io { path, source }) if source.kind() == std::io::ErrorKind::PermissionDenied => {
            anyhow::bail!("{}: permission denied: the record of pending deferrals is root's", path.display())
        }
        read => read.with_context(|| {
            format!(
                "cannot read the record of pending deferrals; nothing was changed (remove {} to start a new record)",
                run.pending_path().display()
            )
        }),
    }
}

/// The state and invocation of `units` now, as a live state holding them.
/// A unit whose file is gone is still there while it runs (systemd says
/// `not-found` and `active`); one that does not run has no instance.
pub(crate) fn instances(mgr: &mut dyn ServiceManager, units: &[String]) -> anyhow::Result<LiveState> {
    let status = mgr.unit_status(units).context("cannot read the units' invocations from systemd")?;
    let units = status
        .into_iter()
        .map(|(name, st)| {
            let unit = LiveUnit {
                active_state: st.active_state,
                sub_state: st.sub_state,
                load_state: st.load_state,
                main_pid: st.main_pid,
                invocation_id: st.invocation_id,
                ..LiveUnit::default()
            };
            (name, unit)
        })
        .collect();
    Ok(LiveState { units, ..LiveState::default() })
}

/// The units a merge of `plan` into `pending` needs the instances of.
fn merge_units(pending: &Pending, plan: &Plan) -> Vec<String> {
    let mut units: Vec<String> = pending.deferrals.iter().map(|d| d.unit.clone()).collect();
    units.extend(plan.deferred().map(|u| u.unit.clone()));
    units.sort();
    units.dedup();
    units
}

/// Seconds since the epoch.
pub(crate) fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The record of pending deferrals, to show what a plan does to them:
/// `None` when `relevant` finds nothing in it for this plan, when reading
/// it needs root (a plan by another user), or, with a warning, when it
/// cannot be read.
pub(crate) fn read_for_preview(run: &RunDir, relevant: impl Fn(&Pending) -> bool) -> Option<Pending> {
    match run.read_pending() {
        Ok(p) => relevant(&p).then_some(p),
        Err(systemd_live::Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::PermissionDenied => None,
        Err(e) => {
            say!("warning: {e}; the deferrals of earlier switches are not shown");
            None
        }
    }
}

/// What `plan` would do to the deferrals earlier switches left pending, for
/// the reports of `plan`, `check` and `switch`. A record that cannot be
/// read (`plan` without root) shows nothing; an invalid one, or systemd
/// not telling the units' invocations, is a warning.
pub(crate) fn preview(run: &RunDir, plan: &Plan, mgr: &mut dyn ServiceManager) -> Vec<Earlier> {
    let Some(pending) = read_for_preview(run, |p| !p.is_empty()) else { return Vec::new() };
    match instances(mgr, &merge_units(&pending, plan)) {
        Ok(live) => pending.merge(plan, Manager::Systemd, &live, now_unix()).earlier,
        Err(e) => {
            say!("warning: {e:#}; the deferrals of earlier switches are not shown");
            Vec::new()
        }
    }
}

/// Merges a plan that was just carried out (all of it, or as far as it
/// got) into the record and writes it: what it deferred is added, what it
/// carried out or what was restarted since is dropped. The caller holds
/// the lock. A failure is a warning: the switch itself is done.
pub(crate) fn record(run: &RunDir, plan: &Plan, mgr: &mut dyn ServiceManager) {
    match run.read_pending() {
        Ok(mut pending) => record_into(run, &mut pending, plan, mgr),
        Err(e) => say!("warning: the deferrals of this switch were not recorded: {e}"),
    }
}

/// Merges `plan` into `pending` (the record as read under the lock) and
/// writes it; as [`record`], a failure is a warning.
pub(crate) fn record_into(run: &RunDir, pending: &mut Pending, plan: &Plan, mgr: &mut dyn ServiceManager) {
    if pending.is_empty() && plan.deferred().next().is_none() {
        return;
    }
    let merged = instances(mgr, &merge_units(pending, plan))
        .map(|live| pending.merge(plan, Manager::Systemd, &live, now_unix()).pending);
    match merged.and_then(|merged| Ok(run.save_pending(&merged).map(|()| merged)?)) {
        Ok(merged) => *pending = merged,
        Err(e) => say!("warning: the deferrals of this switch were not recorded: {e:#}"),
    }
}

/// The record as it stands now: what was restarted or stopped since is
/// dropped (and returned apart). The caller holds the lock to write it
/// back.
pub(crate) fn current(run: &RunDir, mgr: &mut dyn ServiceManager) -> anyhow::Result<(Pending, Vec<Earlier>)> {
    let pending = read(run)?;
    if pending.is_empty() {
        return Ok((pending, Vec::new()));
    }
    let units: Vec<String> = pending.deferrals.iter().map(|d| d.unit.clone()).collect();
    let live = instances(mgr, &units)?;
    let merged = pending.checked(Manager::Systemd, &live);
    let gone = merged.earlier.into_iter().filter(|e| !e.fate.is_pending()).collect();
    Ok((merged.pending, gone))
}
