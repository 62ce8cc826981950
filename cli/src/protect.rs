//! Protection on the command line: the policy file, `--protect`,
//! `--on-protected`, the caller's cgroup and `--explain`.
//!
//! Every planning command (`diff`, `plan`, `check`, `switch`) calls
//! [`protect_plan`] right after planning. It reads the policy file and the
//! caller's cgroup, runs the analysis of `systemd_plan::protect` (which
//! decides everything), prints warnings for selectors that match nothing,
//! and returns a [`ProtectReport`] for `--explain`. [`render_text`] prints
//! the protection section of a text plan and [`outcome`] maps a refused
//! plan to exit code 3.
//!
//! The policy file is trusted input: it can switch implicit protections
//! off and choose the mode. When safe-switch runs as root, the file must
//! therefore be owned by root and writable by nobody else; otherwise the
//! run stops with an error before anything is planned. An unprivileged run
//! (an offline `diff`, say) skips the check: it cannot change the machine,
//! and it lets tests and users keep a policy file among their own files.

use std::fmt::Write as _;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use plan_model::policy::{Policy, Selector};
use plan_model::{Action, LiveState, Mode, Plan, ProtectionSource, Rule};
use systemd_plan::GenerationUnits;
use systemd_plan::protect::{self, Analysis, Explanation, Request, UnitNames};

use crate::args::{Format, OnProtected, ProtectArgs};
use crate::exit::Outcome;
use crate::report::{Blocker, chain_line};

/// Where the policy file is looked for when `--policy` is not given.
pub const DEFAULT_POLICY: &str = "/etc/safe-switch/policy.toml";

/// What [`protect_plan`] found besides the rewritten plan.
#[derive(Debug)]
pub struct ProtectReport {
    /// The analysis (the relation graph and the protected units).
    pub analysis: Analysis,
    /// The warnings printed on standard error, without the `warning: `
    /// prefix.
    pub warnings: Vec<String>,
}

impl ProtectReport {
    /// Explains why the units `selector` names get their actions
    /// (`--explain`): the selector is read as `--protect` reads it (`sshd`
    /// covers sshd.service, sshd.socket and its instances), and each unit
    /// it matches is explained, as text or as JSON.
    ///
    /// A selector that matches no unit is a usage error with close matches.
    pub fn explain(&self, plan: &Plan, selector: &str, format: Format) -> anyhow::Result<String> {
        let parsed = Selector::parse(selector)
            .map_err(|e| crate::exit::usage(format!("--explain {selector:?}: {}", e.reason)))?;
        let universe: UnitNames<'_> =
            self.analysis.graph.known_units().chain(plan.units.iter().map(|u| u.unit.as_str())).collect();
        let units = protect::matching(&parsed, &universe);
        if units.is_empty() {
            let close = protect::close_matches(&parsed, &universe);
            return Err(crate::exit::usage(format!(
                "--explain {selector:?} matches no unit in either generation, the live state or the plan{}",
                close_list(&close)
            )));
        }
        let explanations: Vec<Explanation> = units.iter().map(|u| protect::explain(plan, &self.analysis, u)).collect();
        match format {
            Format::Text => Ok(explanations.iter().map(render_explanation).collect()),
            Format::Json => {
                let json: Vec<serde_json::Value> = explanations.iter().map(explanation_json).collect();
                Ok(format!("{}\n", serde_json::to_string_pretty(&json)?))
            }
            other => Err(crate::exit::usage(format!(
                "--explain prints text or JSON, not {}",
                crate::report::format_name(other)
            ))),
        }
    }
}

/// Applies protection to a freshly built plan. Call it from every planning
/// command, after planning and before rendering or executing:
///
/// ```ignore
/// let mut plan = systemd_plan::plan(&old, &new, &live);
/// let report = crate::protect::protect_plan(&mut plan, &old, &new, &live, &args.protect)?;
/// // `plan.protection` is filled in; touching actions are deferred, or the
/// // plan is refused (`crate::protect::outcome(&plan)` is then `Blocked`).
/// if let Some(unit) = &args.protect.explain {
///     print!("{}", report.explain(&plan, unit));
/// }
/// ```
///
/// It reads the policy file (`--policy`, else [`DEFAULT_POLICY`] when it
/// exists) and the caller's cgroup (`--cgroup-file`, else
/// `/proc/self/cgroup`), merges the policy's protections with
/// `--protect` (the command line can only add), picks the mode
/// (`--on-protected`, else the policy's, else defer), and rewrites the
/// plan. Selectors that match no unit are printed as warnings on standard
/// error, with close matches, and recorded as plan diagnostics.
///
/// Errors (exit 1, nothing changed): an invalid selector, a missing
/// `--policy` file, a malformed policy file (the message names the line),
/// a policy file that fails the ownership check, an unreadable
/// `--cgroup-file`.
pub fn protect_plan(
    plan: &mut Plan,
    old: &GenerationUnits,
    new: &GenerationUnits,
    live: &LiveState,
    args: &ProtectArgs,
) -> anyhow::Result<ProtectReport> {
    let request = request(args)?;
    let analysis = protect::protect(plan, old, new, live, &request);
    // A name or full unit name on the command line that matches nothing is
    // a typo until proven otherwise, and a typo must never leave a unit
    // unprotected: stop before anything is done. A glob may match nothing
    // on this host, and one policy file serves hosts with different units,
    // so those stay warnings.
    let typos: Vec<(&str, &[String])> = analysis
        .unknown
        .iter()
        .filter(|u| u.source == ProtectionSource::CommandLine)
        .map(|u| (u.selector.as_str(), u.close.as_slice()))
        .collect();
    reject_typos(&typos)?;
    let warnings: Vec<String> = analysis
        .unknown
        .iter()
        .map(|u| {
            let origin = match &u.source {
                ProtectionSource::CommandLine => "--protect".to_owned(),
                ProtectionSource::Policy { path } => format!("policy file {path}"),
                ProtectionSource::Implicit { .. } => "implicit protection".to_owned(),
            };
            format!(
                "{origin}: {:?} matches no unit in either generation or the live state{}",
                u.selector,
                if u.close.is_empty() { " (no close match)".to_owned() } else { close_list(&u.close) }
            )
        })
        .collect();
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    Ok(ProtectReport { analysis, warnings })
}

/// Fails with a usage error when a `--protect` name or full unit name
/// (not a glob) matched nothing: `(selector, close matches)` of every
/// command-line selector that matched no unit.
///
/// A typo must never leave a unit unprotected, so it stops the command
/// before anything is done. A glob may match nothing on this host, and one
/// policy file serves hosts with different units, so those stay warnings.
pub fn reject_typos(unmatched: &[(&str, &[String])]) -> anyhow::Result<()> {
    let typos: Vec<&(&str, &[String])> = unmatched.iter().filter(|(s, _)| !s.contains(['*', '?', '['])).collect();
    let Some((first, close)) = typos.first() else { return Ok(()) };
    let mut message =
        format!("--protect {first:?} matches no unit in either generation or the live state{}", close_list(close));
    for (other, close) in &typos[1..] {
        let _ = write!(message, "\n--protect {other:?} matches no unit either{}", close_list(close));
    }
    message.push_str("\nnothing was changed");
    Err(crate::exit::usage(message))
}

/// `; close matches: a, b`, or nothing.
fn close_list(close: &[String]) -> String {
    if close.is_empty() { String::new() } else { format!("; close matches: {}", close.join(", ")) }
}

/// The outcome of a planning command for a protected plan: `Blocked` (exit
/// 3) when protection refused it, `Ok` otherwise.
pub fn outcome(plan: &Plan) -> Outcome {
    if plan.protection.refused { Outcome::Blocked } else { Outcome::Ok }
}

/// What the policy file and the command line ask to protect, before it is
/// read for a platform: each selector as written with where it comes
/// from, the mode, and the policy file itself.
pub struct Asked {
    /// The selectors: the policy file's, then `--protect`'s.
    pub selectors: Vec<(String, ProtectionSource)>,
    /// `--on-protected`, else the policy file's mode, else defer.
    pub mode: Mode,
    /// The policy file, when there is one.
    pub policy: Option<Policy>,
}

/// Reads what the options and the policy file ask to protect. The command
/// line only adds selectors to the policy file's.
pub fn asked(args: &ProtectArgs) -> anyhow::Result<Asked> {
    let loaded = load_policy(args)?;
    let mut selectors = Vec::new();
    if let Some((policy, policy_path)) = &loaded {
        let source = ProtectionSource::Policy { path: policy_path.display().to_string() };
        selectors.extend(policy.protect.iter().map(|(s, _)| (s.as_str().to_owned(), source.clone())));
    }
    // `--protect a,,b` and a trailing comma are harmless, but a
    // `--protect` that names nothing at all (`--protect "$UNITS"` with an
    // empty variable) would look like protection and be none.
    if !args.protect.is_empty() && args.protect.iter().all(|t| t.trim().is_empty()) {
        return Err(crate::exit::usage("--protect names no unit (an empty value); nothing was changed"));
    }
    let cli = args.protect.iter().map(|t| t.trim()).filter(|t| !t.is_empty());
    selectors.extend(cli.map(|t| (t.to_owned(), ProtectionSource::CommandLine)));
    let policy = loaded.map(|(p, _)| p);
    let mode = match args.on_protected {
        Some(OnProtected::Defer) => Mode::Defer,
        Some(OnProtected::Refuse) => Mode::Refuse,
        None => policy.as_ref().and_then(|p| p.mode).unwrap_or_default(),
    };
    Ok(Asked { selectors, mode, policy })
}

/// Builds the analysis request from the options, the policy file and the
/// caller's cgroup.
fn request(args: &ProtectArgs) -> anyhow::Result<Request> {
    let asked = asked(args)?;
    let selectors = asked
        .selectors
        .into_iter()
        .map(|(text, source)| {
            let selector = Selector::parse(&text).map_err(|e| match &source {
                ProtectionSource::CommandLine => crate::exit::usage(format!("--protect {text:?}: {}", e.reason)),
                _ => anyhow::anyhow!("{}: {text:?}: {}", protect::source_label(&source), e.reason),
            })?;
            Ok((selector, source))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Request {
        selectors,
        implicit: asked.policy.map(|p| p.implicit).unwrap_or_default(),
        caller_cgroup: caller_cgroup(args.cgroup_file.as_deref())?,
        mode: asked.mode,
    })
}

/// Loads the policy file the options name: `--policy PATH` (which must
/// exist), else [`DEFAULT_POLICY`] when it exists. Returns the policy and
/// its path, or `None` when there is no policy file. The ownership check
/// and parse errors (naming the line) are errors. Other readers of the
/// policy (the `base` and `host` of a composed switch) should load it here
/// too, so that every reader applies the same checks.
pub fn load_policy(args: &ProtectArgs) -> anyhow::Result<Option<(Policy, PathBuf)>> {
    match &args.policy {
        Some(path) => Ok(Some((read_policy(path)?, path.clone()))),
        None => {
            let path = PathBuf::from(DEFAULT_POLICY);
            match fs::symlink_metadata(&path) {
                Err(err) if err.kind() == ErrorKind::NotFound => Ok(None),
                _ => Ok(Some((read_policy(&path)?, path))),
            }
        }
    }
}

/// Reads and parses a policy file, checking who may write it first.
fn read_policy(path: &Path) -> anyhow::Result<Policy> {
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == ErrorKind::NotFound => bail!("policy file {} does not exist", path.display()),
        Err(err) => bail!("policy file {}: {err}", path.display()),
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    check_owner(euid, meta.uid(), meta.gid(), meta.mode())
        .with_context(|| format!("policy file {}", path.display()))?;
    let text = fs::read_to_string(path).with_context(|| format!("policy file {}", path.display()))?;
    Policy::parse(&text).with_context(|| format!("policy file {}", path.display()))
}

/// The ownership rule for the policy file: when running as root, the file
/// must belong to root and must not be writable by its group or by others.
/// Any write access for another user would let that user weaken the
/// protections that root's switch relies on.
fn check_owner(euid: u32, uid: u32, gid: u32, mode: u32) -> anyhow::Result<()> {
    if euid != 0 {
        return Ok(());
    }
    if uid != 0 {
        bail!("refusing a policy file owned by uid {uid} when running as root: it must be owned by root");
    }
    if mode & 0o002 != 0 {
        bail!("refusing a policy file writable by others (mode {:04o}): run `chmod o-w` on it", mode & 0o7777);
    }
    if mode & 0o020 != 0 && gid != 0 {
        bail!("refusing a policy file writable by group {gid} (mode {:04o}): run `chmod g-w` on it", mode & 0o7777);
    }
    Ok(())
}

/// Reads the caller's cgroup path: from `--cgroup-file` (an error when it
/// cannot be read), else from `/proc/self/cgroup` (absent on systems
/// without it, where there is simply no caller protection).
fn caller_cgroup(file: Option<&Path>) -> anyhow::Result<Option<String>> {
    let text = match file {
        Some(path) => fs::read_to_string(path).with_context(|| format!("cgroup file {}", path.display()))?,
        None => match fs::read_to_string("/proc/self/cgroup") {
            Ok(text) => text,
            Err(_) => return Ok(None),
        },
    };
    Ok(protect::cgroup::cgroup_path(&text).map(str::to_owned))
}

/// Renders the protection section of a text plan: the protections in
/// force, then every deferred or refused action with its reason chain.
pub fn render_text(out: &mut String, plan: &Plan) {
    let p = &plan.protection;
    let mode = match p.mode {
        Mode::Defer => "defer",
        Mode::Refuse => "refuse",
    };
    let _ = writeln!(out, "\nprotection (mode: {mode}):");
    // Implicit protections of units this machine does not have (dbus-broker
    // on a dbus-daemon host, say) are summed up in one line.
    let absent: Vec<&str> = p
        .protected
        .iter()
        .filter(|e| e.units.is_empty() && matches!(e.source, ProtectionSource::Implicit { .. }))
        .map(|e| e.selector.as_str())
        .collect();
    for entry in p.protected.iter().filter(|e| !absent.contains(&e.selector.as_str())) {
        let units = if entry.units.is_empty() { "no such unit".to_owned() } else { entry.units.join(", ") };
        let allow = if entry.allow.is_empty() {
            String::new()
        } else {
            let verbs: Vec<&str> = entry.allow.iter().map(|a| a.as_str()).collect();
            format!("; may {}", verbs.join(", "))
        };
        let _ = writeln!(out, "  {} [{}{allow}]: {units}", entry.selector, protect::source_label(&entry.source));
    }
    if !absent.is_empty() {
        let _ = writeln!(out, "  implicit, not present here: {}", absent.join(", "));
    }
    let deferred: Vec<_> = plan.units.iter().filter_map(|u| Some((u, u.deferral.as_ref()?))).collect();
    if !deferred.is_empty() {
        // launchd jobs cannot pick up a new plist without a restart, so a
        // deferred job keeps its old plist; systemd units get the new file.
        let old_plists = deferred.iter().any(|(u, _)| u.reasons.iter().any(|r| r.rule == Rule::OldPlistKept));
        out.push_str(if old_plists {
            "  deferred (the old plists stay installed and the jobs loaded as they are):\n"
        } else {
            "  deferred (the new unit files are installed; the running units stay as they are):\n"
        });
        for (unit, d) in deferred {
            let _ = writeln!(out, "    {}", touch_line(&d.actions, "deferred", &Blocker::of_deferral(&unit.unit, d)));
        }
    }
    if p.refused {
        out.push_str("  refused: see the top of the plan\n");
    }
}

/// Renders the refusal that leads a refused plan: how many units touch a
/// protected unit, then each with its reason chain.
pub fn render_refusal(out: &mut String, plan: &Plan) {
    let refusals = &plan.protection.refusals;
    let _ = writeln!(
        out,
        "REFUSED: nothing will be changed: {} unit{} would touch a protected unit",
        refusals.len(),
        if refusals.len() == 1 { "" } else { "s" }
    );
    for r in refusals {
        let _ = writeln!(out, "  {}", touch_line(&r.actions, "refused", &Blocker::of_refusal(r)));
    }
}

/// One deferred or refused action:
/// `network-setup.service: stop, start deferred: stopping it stops
/// protected sshd.service (sshd.service Requires=network-setup.service)`.
fn touch_line(actions: &[Action], verb: &str, blocker: &Blocker<'_>) -> String {
    let actions: Vec<&str> = actions.iter().map(|a| a.as_str()).collect();
    format!("{}: {} {verb}: {}", blocker.unit, actions.join(", "), chain_line(blocker))
}

/// The JSON form of an [`Explanation`].
fn explanation_json(e: &Explanation) -> serde_json::Value {
    let jobs: Vec<serde_json::Value> = e
        .touches
        .iter()
        .map(|(action, touches)| {
            let touches: Vec<serde_json::Value> = touches
                .iter()
                .map(|t| {
                    let blocker = Blocker {
                        unit: &e.unit,
                        touches: &t.touches,
                        effect: t.effect,
                        chain: &t.chain,
                        cause: Some(*action),
                        omitted: t.omitted,
                    };
                    serde_json::json!({
                        "touches": t.touches,
                        "effect": t.effect,
                        "chain": t.chain,
                        "why": chain_line(&blocker),
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
fn render_explanation(e: &Explanation) -> String {
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
            let _ = writeln!(out, "  protected by {} [{}]", p.selector, protect::source_label(&p.source));
        }
    }
    let blocked =
        e.deferral.as_ref().map(|d| (&d.actions, d.cause)).or(e.refusal.as_ref().map(|r| (&r.actions, r.cause)));
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
            let blocker = Blocker {
                unit: &e.unit,
                touches: &t.touches,
                effect: t.effect,
                chain: &t.chain,
                cause: Some(*action),
                omitted: t.omitted,
            };
            let _ = writeln!(out, "  {action}: {}", chain_line(&blocker));
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

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on bad fixtures")]
mod tests {
    use super::*;
    use plan_model::Edge;

    #[test]
    fn ownership_rule_applies_to_root_only() {
        assert!(check_owner(1000, 1000, 1000, 0o100_666).is_ok());
        assert!(check_owner(0, 0, 0, 0o100_644).is_ok());
        assert!(check_owner(0, 0, 0, 0o100_664).is_ok(), "group root may write");
        let err = check_owner(0, 1000, 0, 0o100_644).unwrap_err().to_string();
        assert!(err.contains("owned by uid 1000"), "{err}");
        let err = check_owner(0, 0, 0, 0o100_646).unwrap_err().to_string();
        assert!(err.contains("writable by others"), "{err}");
        let err = check_owner(0, 0, 100, 0o100_664).unwrap_err().to_string();
        assert!(err.contains("writable by group 100"), "{err}");
    }

    #[test]
    fn touch_lines_follow_the_jobs_along_the_chain() {
        let edge =
            |from: &str, relation: &str, to: &str| Edge { from: from.into(), relation: relation.into(), to: to.into() };
        let requires = vec![edge("sshd.service", "Requires", "network-setup.service")];
        let blocker = Blocker {
            unit: "network-setup.service",
            touches: "sshd.service",
            effect: Action::Restart,
            chain: &requires,
            cause: Some(Action::Restart),
            omitted: 0,
        };
        assert_eq!(
            touch_line(&[Action::Restart], "deferred", &blocker),
            "network-setup.service: restart deferred: restarting it restarts protected sshd.service \
             (sshd.service Requires=network-setup.service)"
        );
        let conflict = vec![
            edge("maintenance.service", "Conflicts", "sshd.service"),
            edge("multi-user.target", "Wants", "maintenance.service"),
        ];
        let blocker = Blocker {
            unit: "multi-user.target",
            touches: "sshd.service",
            effect: Action::Stop,
            chain: &conflict,
            cause: Some(Action::Start),
            omitted: 0,
        };
        assert_eq!(
            touch_line(&[Action::Start], "deferred", &blocker),
            "multi-user.target: start deferred: starting it starts maintenance.service \
             (multi-user.target Wants=maintenance.service), which stops protected sshd.service \
             (maintenance.service Conflicts=sshd.service)"
        );
        let own = Blocker { unit: "sshd.service", touches: "sshd.service", chain: &[], ..blocker };
        assert_eq!(chain_line(&own), "sshd.service is protected");
    }
}
