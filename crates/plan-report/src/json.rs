//! The JSON report: the versioned plan itself (`docs/plan-schema.md`),
//! with the deferrals earlier switches left pending under `pending` when
//! there are any, and what the apply did under `applied` once it was
//! carried out.
//!
//! Keys come out in the order the plan model declares its fields, so two
//! runs over the same inputs give byte-identical files that diff cleanly.

use plan_model::{ApplyReport, Earlier, Plan};
use serde::Serialize;

use crate::{ActionCounts, HostReport, RebootNeed, Report, Verdict};

/// The plan, and after its own keys the earlier deferrals and the apply.
#[derive(Serialize)]
struct WithPending<'a> {
    #[serde(flatten)]
    plan: &'a Plan,
    #[serde(skip_serializing_if = "<[Earlier]>::is_empty")]
    pending: &'a [Earlier],
    #[serde(skip_serializing_if = "Option::is_none")]
    applied: Option<&'a ApplyReport>,
}

/// Renders the plan as pretty-printed JSON with a trailing newline.
pub fn render(report: &Report<'_>) -> String {
    if report.pending.is_empty() && report.applied.is_none() {
        return report.plan.to_json();
    }
    // Serializing plain structs of strings and vectors cannot fail.
    let with = WithPending { plan: report.plan, pending: report.pending, applied: report.applied };
    let mut s = serde_json::to_string_pretty(&with).unwrap_or_default();
    s.push('\n');
    s
}

/// The version of the merged document's JSON form
/// (`merged_format_version`, `docs/plan-schema.md`).
pub const MERGED_FORMAT_VERSION: u32 = 1;

/// The merged document of several hosts.
#[derive(Serialize)]
struct Merged<'a> {
    merged_format_version: u32,
    summary: Summary,
    hosts: Vec<HostEntry<'a>>,
}

/// How many hosts have each verdict, need a reboot, have deferrals pending.
#[derive(Serialize)]
struct Summary {
    hosts: usize,
    safe: usize,
    deferred: usize,
    refused: usize,
    reboot: usize,
    pending: usize,
}

/// One host: its name, what a gate reads, and its plan.
#[derive(Serialize)]
struct HostEntry<'a> {
    host: &'a str,
    verdict: &'static str,
    actions: ActionCounts,
    pending: usize,
    reboot: &'a [RebootNeed],
    plan: WithPending<'a>,
}

/// Renders the reports of several hosts as one JSON document: a summary
/// over the hosts, then per host its verdict, action counts, deferrals
/// pending, reboot needs and plan (as [`render`] prints it).
pub fn render_hosts(hosts: &[HostReport<'_>]) -> String {
    let verdicts: Vec<Verdict> = hosts.iter().map(|h| Verdict::of(h.report.plan)).collect();
    let count = |v: Verdict| verdicts.iter().filter(|x| **x == v).count();
    let merged = Merged {
        merged_format_version: MERGED_FORMAT_VERSION,
        summary: Summary {
            hosts: hosts.len(),
            safe: count(Verdict::Safe),
            deferred: count(Verdict::Deferred),
            refused: count(Verdict::Refused),
            reboot: hosts.iter().filter(|h| !h.reboot.is_empty()).count(),
            pending: hosts.iter().filter(|h| crate::pending_now(h.report.pending) > 0).count(),
        },
        hosts: hosts
            .iter()
            .zip(&verdicts)
            .map(|(h, v)| HostEntry {
                host: h.host,
                verdict: v.as_str(),
                actions: ActionCounts::of(h.report.plan),
                pending: crate::pending_now(h.report.pending),
                reboot: h.reboot,
                plan: WithPending { plan: h.report.plan, pending: h.report.pending, applied: h.report.applied },
            })
            .collect(),
    };
    // Serializing plain structs of strings and vectors cannot fail.
    let mut s = serde_json::to_string_pretty(&merged).unwrap_or_default();
    s.push('\n');
    s
}
