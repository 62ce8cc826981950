//! `--explain`: why units get their actions, as text or JSON.

use std::fmt::Write as _;

use plan_model::Explanation;

use crate::text::touch_line;
use crate::{Blocker, chain_line};

/// The explanations as text, one block a unit.
pub fn explain_text(explanations: &[Explanation]) -> String {
    explanations.iter().map(text_of).collect()
}

/// The explanations as a pretty-printed JSON array, with a trailing
/// newline.
pub fn explain_json(explanations: &[Explanation]) -> String {
    let json: Vec<serde_json::Value> = explanations.iter().map(json_of).collect();
    let mut text = serde_json::to_string_pretty(&json).unwrap_or_default();
    text.push('\n');
    text
}

/// The JSON form of an [`Explanation`].
fn json_of(e: &Explanation) -> serde_json::Value {
    let jobs: Vec<serde_json::Value> = e
        .touches
        .iter()
        .map(|(action, touches)| {
            let touches: Vec<serde_json::Value> = touches
                .iter()
                .map(|t| {
                    serde_json::json!({
                        "touches": t.touches,
                        "effect": t.effect,
                        "chain": t.chain,
                        "why": chain_line(&Blocker { unit: &e.unit, touch: t }),
                    })
                })
                .collect();
            serde_json::json!({ "action": action, "touches": touches })
        })
        .collect();
    serde_json::json!({
        "unit": e.unit,
        "running": e.running,
        "actions": e.actions,
        "reasons": e.reasons,
        "deferral": e.deferral,
        "refusal": e.refusal,
        "protected_by": e.protected_by,
        "jobs": jobs,
        "relations": e.relations,
    })
}

/// Renders an [`Explanation`] as text.
fn text_of(e: &Explanation) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}:", e.unit);
    if !e.known {
        let _ = writeln!(out, "  not a unit of either generation, the live state or the plan");
        return out;
    }
    let _ = writeln!(out, "  running: {}", if e.running { "yes" } else { "no" });
    let actions: Vec<&str> = e.actions.iter().map(|a| a.as_str()).collect();
    let _ =
        writeln!(out, "  planned: {}", if actions.is_empty() { "no action".to_owned() } else { actions.join(", ") });
    for r in &e.reasons {
        let _ = write!(out, "    {}: {}", r.rule.id(), r.rule.explain());
        if let Some(detail) = &r.detail {
            let _ = write!(out, " ({detail})");
        }
        out.push('\n');
    }
    if let Some(d) = &e.deferral {
        let _ = writeln!(out, "  {}", touch_line(&d.actions, "deferred", &Blocker::of_deferral(&e.unit, d)));
    }
    if let Some(r) = &e.refusal {
        let _ = writeln!(out, "  {}", touch_line(&r.actions, "refused", &Blocker::of_refusal(r)));
    }
    if e.protected_by.is_empty() {
        let _ = writeln!(out, "  protected: no");
    } else {
        for p in &e.protected_by {
            let _ = writeln!(out, "  protected by {} [{}]", p.selector, p.source.label());
        }
    }
    let blocked = e
        .deferral
        .as_ref()
        .map(|d| (&d.actions, d.touch.cause))
        .or(e.refusal.as_ref().map(|r| (&r.actions, r.touch.cause)));
    for (action, touches) in &e.touches {
        if touches.is_empty() {
            match blocked {
                Some((actions, Some(cause))) if actions.contains(action) && cause != *action => {
                    let _ = writeln!(
                        out,
                        "  {action}: touches no protected unit by itself; held back with the {cause}, as its other half"
                    );
                }
                _ => {
                    let _ = writeln!(out, "  {action}: touches no protected unit");
                }
            }
        }
        for t in touches {
            let _ = writeln!(out, "  {action}: {}", chain_line(&Blocker { unit: &e.unit, touch: t }));
        }
    }
    if e.relations.is_empty() {
        let _ = writeln!(out, "  relations: none");
    } else {
        let _ = writeln!(out, "  relations:");
        for r in &e.relations {
            let _ = writeln!(out, "    {} {}={}", r.from, r.relation, r.to);
        }
    }
    out
}
