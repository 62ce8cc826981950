//! `diff` for nix-darwin generations: the launchd part of the switch.
//!
//! A nix-darwin toplevel has no `etc/systemd/system`; its jobs are the
//! plists in `Library/LaunchDaemons`, `Library/LaunchAgents` and
//! `user/Library/LaunchAgents`. [`launchd_plan`] plans them as nix-darwin's
//! activation would, with protection by label (`--protect gitlab-runner`
//! matches `org.nixos.gitlab-runner`), and turns the plan into the ordered
//! `launchctl` calls that carry it out. The plan is the same [`Plan`] value
//! as for systemd, so every report format shows it; the text and Markdown
//! reports add the commands and the plist diffs.

use std::path::Path;

use anyhow::Context;
use launchd_plan::{GenerationJobs, Host, LabelMatcher, LaunchdLive, LaunchdPlan, Request};
use plan_model::ProtectionSource;

use crate::args::{self, ProtectArgs};
use crate::exit::Outcome;
use plan_report::Report;

use crate::report;

/// The directories of a nix-darwin toplevel that hold jobs.
const JOB_DIRS: [&str; 3] = ["Library/LaunchDaemons", "Library/LaunchAgents", "user/Library/LaunchAgents"];

/// Tells whether `old` and `new` are nix-darwin generations: neither has a
/// systemd layout (NixOS's or system-manager's) and one of them has launchd jobs or a
/// `darwin-version`. `SAFE_SWITCH_PLATFORM=darwin` says so outright.
pub(crate) fn is_darwin_pair(old: &Path, new: &Path) -> bool {
    if let Some(platform) = std::env::var_os(crate::source::PLATFORM_ENV) {
        return platform == "darwin";
    }
    let systemd =
        |g: &Path| !matches!(systemd_plan::unit_directory(g), Err(systemd_plan::LoadError::NoUnitDirectory { .. }));
    let darwin = |g: &Path| g.join("darwin-version").exists() || JOB_DIRS.iter().any(|d| g.join(d).is_dir());
    !systemd(old) && !systemd(new) && (darwin(old) || darwin(new))
}

/// Runs `diff` on two nix-darwin generations.
pub(crate) fn diff(args: &args::DiffArgs) -> anyhow::Result<Outcome> {
    if let Some(unit) = &args.protect.explain {
        return Err(crate::exit::usage(format!(
            "--explain {unit}: launchd plans have no dependency graph to explain; \
             each job's entry names the rule that fired"
        )));
    }
    let (planned, old, new) = build(&args.old, &args.new, args.live.as_deref(), &args.protect)?;
    let commands: Vec<String> = match launchd_plan::operations(&planned) {
        Ok(ops) => ops.iter().map(ToString::to_string).collect(),
        // A refused plan has no commands; the plan says why.
        Err(_) => Vec::new(),
    };
    let diffs = launchd_plan::plist_diffs(&planned, &old, &new);
    report::write_outputs(
        &Report { plan: &planned.plan, diffs: &diffs, commands: &commands, pending: &[], applied: None },
        &args.output,
    )?;
    Ok(crate::protect::outcome(&planned.plan))
}

/// Loads both generations, the live state and the protection policy, and
/// plans; returns the plan and the two generations it was made from.
fn build(
    old: &Path,
    new: &Path,
    live: Option<&Path>,
    protect: &ProtectArgs,
) -> anyhow::Result<(LaunchdPlan, GenerationJobs, GenerationJobs)> {
    let old_generation = launchd_plan::load_generation(old)?;
    let new_generation = launchd_plan::load_generation(new)?;
    let live = match live {
        Some(path) => launchd_plan::load_live(path)?,
        // Nothing captured: every job of the old generation counts as
        // loaded, as nix-darwin's activation assumes.
        None => LaunchdLive::default(),
    };
    let policy = policy(protect)?;
    let planned = launchd_plan::plan(&old_generation, &new_generation, &Host { live, installed: None }, &policy);
    reject_typos(&planned)?;
    Ok((planned, old_generation, new_generation))
}

/// Fails when a `--protect` name matched no job (see
/// [`crate::protect::reject_typos`]); close matches are the labels, or
/// their last part, nearest to it.
pub(crate) fn reject_typos(planned: &LaunchdPlan) -> anyhow::Result<()> {
    let labels: Vec<&str> = planned
        .plan
        .protection
        .protected
        .iter()
        .flat_map(|p| &p.units)
        .map(String::as_str)
        .chain(planned.plan.units.iter().map(|u| u.unit.as_str()))
        .chain(planned.jobs.values().map(|j| j.label.as_str()))
        .collect();
    let unmatched: Vec<(&str, Vec<String>)> = planned
        .plan
        .protection
        .protected
        .iter()
        .filter(|p| p.units.is_empty() && p.source == ProtectionSource::CommandLine)
        .map(|p| (p.selector.as_str(), close_labels(&p.selector, &labels)))
        .collect();
    let unmatched: Vec<(&str, &[String])> = unmatched.iter().map(|(s, c)| (*s, c.as_slice())).collect();
    crate::protect::reject_typos(&unmatched)
}

/// Up to three labels (or their last dot-separated part, for a short name)
/// close to `wanted`.
fn close_labels(wanted: &str, labels: &[&str]) -> Vec<String> {
    let short = !wanted.contains('.');
    let mut candidates: Vec<&str> =
        labels.iter().map(|l| if short { l.rsplit('.').next().unwrap_or(l) } else { l }).collect();
    candidates.sort_unstable();
    candidates.dedup();
    let mut scored: Vec<(f64, &str)> = candidates
        .into_iter()
        .map(|c| (strsim::normalized_damerau_levenshtein(wanted, c), c))
        .filter(|(score, _)| *score >= 0.6)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
    scored.into_iter().take(3).map(|(_, c)| c.to_owned()).collect()
}

/// The protection policy: the policy file's selectors and mode, plus
/// `--protect` and `--on-protected`. The implicit protections of a systemd
/// host (D-Bus, logind, the caller's cgroup) have no launchd counterpart.
pub(crate) fn policy(args: &ProtectArgs) -> anyhow::Result<Request> {
    let asked = crate::protect::asked(args)?;
    let selectors = asked
        .selectors
        .into_iter()
        .map(|(text, source)| {
            let place = match &source {
                ProtectionSource::Policy { path } => format!("policy file {path}"),
                _ => "--protect".to_owned(),
            };
            LabelMatcher::new(&text, source).with_context(|| format!("{place}: {text:?}"))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Request { mode: asked.mode, selectors })
}
