//! The JSON report: the versioned plan itself (`docs/plan-schema.md`),
//! with the deferrals earlier switches left pending under `pending` when
//! there are any, and what the apply did under `applied` once it was
//! carried out.
//!
//! Keys come out in the order the plan model declares its fields, so two
//! runs over the same inputs give byte-identical files that diff cleanly.

use plan_model::{ApplyReport, Earlier, Plan};
use serde::Serialize;

use crate::Report;

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
