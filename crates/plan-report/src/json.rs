//! The JSON report: the versioned plan itself (`docs/plan-schema.md`).
//!
//! Keys come out in the order the plan model declares its fields, so two
//! runs over the same inputs give byte-identical files that diff cleanly.

use plan_model::Plan;

/// Renders the plan as pretty-printed JSON with a trailing newline.
pub fn render(plan: &Plan) -> String {
    plan.to_json()
}
