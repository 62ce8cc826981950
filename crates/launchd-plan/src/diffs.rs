//! The plists that changed between two generations, as diffs for the
//! reports, from the bytes the loader read (nothing here reads the disk).

use std::path::Path;

use plan_model::FileDiff;

use crate::{GenerationJobs, LaunchdPlan};

/// Unified diffs of the plists that changed, for each job in the plan,
/// from the bytes the planner read. Binary plists are shown as the XML
/// they decode to.
pub fn plist_diffs(planned: &LaunchdPlan, old: &GenerationJobs, new: &GenerationJobs) -> Vec<FileDiff> {
    let mut out = Vec::new();
    for unit in &planned.plan.units {
        let Some(target) = planned.jobs.get(&unit.unit) else { continue };
        let file_name = [&target.source, &target.installed]
            .into_iter()
            .flatten()
            .find_map(|p| Path::new(p).file_name().map(|f| f.to_string_lossy().into_owned()))
            .unwrap_or_else(|| format!("{}.plist", target.label));
        let rel = format!("{}/{file_name}", target.scope.generation_dir());
        let text = |g: &GenerationJobs| {
            g.jobs
                .iter()
                .find(|j| j.scope == target.scope && j.file_name == file_name)
                .and_then(|j| plist_text(&j.bytes))
        };
        out.extend(FileDiff::between(&unit.unit, rel, text(old).as_deref(), text(new).as_deref()));
    }
    out
}

/// A plist as text: XML as it is, a binary plist converted to XML.
fn plist_text(bytes: &[u8]) -> Option<String> {
    if !bytes.starts_with(b"bplist")
        && let Ok(text) = std::str::from_utf8(bytes)
    {
        return Some(text.to_owned());
    }
    let value = plist::Value::from_reader(std::io::Cursor::new(bytes)).ok()?;
    let mut xml = Vec::new();
    value.to_writer_xml(&mut xml).ok()?;
    String::from_utf8(xml).ok()
}
