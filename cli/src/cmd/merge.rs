//! The `report merge` subcommand: the plans of several hosts, one report
//! per format. A fleet job collects each host's plan (`plan --out`, or the
//! JSON report) and uploads the merged reports, since a CI system shows one
//! report of each kind per pipeline.
//!
//! The plan files come from other machines: each is read non-blocking, as
//! a regular file, up to 64 MiB (and 1 GiB for all of them); JSON errors
//! give the line and column and never quote a value; every error names
//! the host and the file. A host name is checked (letters, digits, `.`,
//! `-`, `_`, `:`; at most 253 characters) and given once.

use std::path::PathBuf;

use anyhow::Context;
use plan_model::json::JsonError;
use plan_model::{Earlier, FORMAT_VERSION, Fate, PendingDeferral, Plan};
use plan_report::{HostReport, RebootNeed, Report};
use serde_json::Value;

use crate::args::MergeArgs;
use crate::exit::{self, Outcome};

/// The longest plan file read.
const MAX_PLAN_BYTES: u64 = 64 << 20;

/// The most bytes read over all the plan files.
const MAX_TOTAL_BYTES: u64 = 1 << 30;

/// The longest host name (a DNS name's limit).
const MAX_HOST: usize = 253;

/// One `HOST=PLAN.json` argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HostFile {
    /// The host's name.
    pub host: String,
    /// Its plan file.
    pub path: PathBuf,
}

/// Parses `HOST=PLAN.json` (clap's value parser: a bad one is a usage
/// error naming it).
pub(crate) fn parse_host_file(value: &str) -> Result<HostFile, String> {
    let Some((host, path)) = value.split_once('=') else {
        return Err("expected HOST=PLAN.json, e.g. web-1=plans/web-1.json".to_owned());
    };
    check_host(host)?;
    if path.is_empty() {
        return Err(format!("the path after {host}= is empty"));
    }
    Ok(HostFile { host: host.to_owned(), path: PathBuf::from(path) })
}

/// Checks a host name: 1 to 253 characters, letters, digits, `.`, `-`,
/// `_` and `:` (an IPv6 address), starting with a letter or digit (or `:`).
fn check_host(host: &str) -> Result<(), String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':');
    if host.is_empty() {
        return Err("a host name is empty".to_owned());
    }
    if host.len() > MAX_HOST {
        return Err(format!("a host name is longer than {MAX_HOST} characters"));
    }
    if let Some(bad) = host.chars().find(|c| !ok(*c)) {
        return Err(format!(
            "host name {:?}: {bad:?} is not allowed (letters, digits, '.', '-', '_', ':')",
            plan_report::printable(host)
        ));
    }
    if host.starts_with(['.', '-', '_']) {
        return Err(format!("host name {host:?} must start with a letter or digit"));
    }
    Ok(())
}

/// One host's plan as read.
struct HostPlan {
    host: String,
    plan: Plan,
    pending: Vec<Earlier>,
    reboot: Vec<RebootNeed>,
}

/// Runs `report merge`.
pub(crate) fn run(args: MergeArgs) -> anyhow::Result<Outcome> {
    for (i, h) in args.hosts.iter().enumerate() {
        if args.hosts[..i].iter().any(|o| o.host == h.host) {
            return Err(exit::usage(format!("host {} is given twice", h.host)));
        }
    }
    let mut total = 0u64;
    let mut hosts = Vec::with_capacity(args.hosts.len());
    for h in &args.hosts {
        let text = crate::saved::read_bounded(&h.path, MAX_PLAN_BYTES)
            .with_context(|| format!("cannot read the plan of {} from {}", h.host, h.path.display()))?;
        total += text.len() as u64;
        if total > MAX_TOTAL_BYTES {
            anyhow::bail!("the plan files add up to more than {MAX_TOTAL_BYTES} bytes (at {})", h.path.display());
        }
        let host = parse_plan(&h.host, &text)
            .with_context(|| format!("{} (the plan of {}) is not a plan", h.path.display(), h.host))?;
        hosts.push(host);
    }
    let reports: Vec<HostReport<'_>> = hosts
        .iter()
        .map(|h| HostReport {
            host: &h.host,
            report: Report { pending: &h.pending, ..Report::of(&h.plan) },
            reboot: &h.reboot,
        })
        .collect();
    write_outputs(&reports, &args.output)?;
    Ok(Outcome::Ok)
}

/// Prints the standard-output format and writes every `--report` file, as
/// [`crate::report::write_outputs`] does for one plan.
fn write_outputs(hosts: &[HostReport<'_>], output: &crate::args::OutputArgs) -> anyhow::Result<()> {
    use std::io::Write as _;
    for file in &output.report {
        let text = plan_report::render_hosts(file.format, hosts, plan_report::Style::default());
        crate::report::write_atomically(&file.path, text.as_bytes())
            .with_context(|| format!("cannot write the {} report to {}", file.format.name(), file.path.display()))?;
    }
    let text = plan_report::render_hosts(output.stdout_format(), hosts, crate::report::stdout_style());
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Reads a plan file's text: a saved plan (its `plan`) or a plan's JSON
/// report (the plan, with the deferrals earlier switches left pending under
/// `pending`). Either may carry the plan's `reboot` needs.
fn parse_plan(host: &str, text: &str) -> anyhow::Result<HostPlan> {
    /// A saved plan, of which only the plan is read.
    #[derive(serde::Deserialize)]
    struct Saved {
        plan: plan_model::json::Object<Plan>,
    }
    let mut value: Value = plan_model::json::object_from_str(text).context("invalid JSON")?;
    let is_saved = value.get("saved_plan_version").is_some();
    let (plan_value, pending_value) = if is_saved {
        (value.get_mut("plan").map(Value::take).unwrap_or(Value::Null), Value::Null)
    } else {
        let pending = value.as_object_mut().and_then(|o| o.remove("pending")).unwrap_or(Value::Null);
        (value, pending)
    };
    let version = plan_value.get("format_version").and_then(Value::as_u64);
    if version != Some(u64::from(FORMAT_VERSION)) {
        match version {
            Some(v) => anyhow::bail!("plan format {v} is not read by this version (it reads format {FORMAT_VERSION})"),
            None => anyhow::bail!("no format_version: write it with `safe-switch plan --out` or `--json`"),
        }
    }
    // Parsed from the text again, so that an error gives its line and
    // column.
    let plan: Plan = if is_saved {
        plan_model::json::object_from_str::<Saved>(text).context("invalid plan")?.plan.0
    } else {
        plan_model::json::object_from_str(text).context("invalid plan")?
    };
    let reboot = plan_report::reboot_needs_in(&plan_value)
        .map_err(JsonError::from)
        .context("`reboot` is not a list of {\"reason\", \"detail\"} objects")?;
    let pending = match pending_value {
        Value::Null => Vec::new(),
        Value::Array(items) => {
            items.into_iter().map(earlier).collect::<anyhow::Result<_>>().context("invalid `pending` deferrals")?
        }
        _ => anyhow::bail!("`pending` is not a list"),
    };
    Ok(HostPlan { host: host.to_owned(), plan, pending, reboot })
}

/// One earlier deferral of a plan's report: a pending deferral and its
/// `fate`.
fn earlier(item: Value) -> anyhow::Result<Earlier> {
    let Value::Object(mut map) = item else { anyhow::bail!("an entry is not an object") };
    let fate = map.remove("fate").ok_or_else(|| anyhow::anyhow!("an entry has no fate"))?;
    let fate: Fate = serde_json::from_value(fate).map_err(JsonError::from)?;
    let deferral: PendingDeferral = serde_json::from_value(Value::Object(map)).map_err(JsonError::from)?;
    Ok(Earlier { deferral, fate })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn host_names_are_checked() {
        assert_eq!(parse_host_file("web-1=p.json").unwrap().host, "web-1");
        assert_eq!(parse_host_file("db.example.com=p.json").unwrap().host, "db.example.com");
        assert_eq!(parse_host_file("fe80::1=p.json").unwrap().host, "fe80::1");
        assert_eq!(parse_host_file("a=b=c.json").unwrap().path, Path::new("b=c.json"));
        for bad in ["=p.json", "web 1=p.json", "-x=p.json", "web/1=p.json", "we\u{1b}b=p.json", "web-1", "web-1="] {
            assert!(parse_host_file(bad).is_err(), "{bad}");
        }
        assert!(parse_host_file(&format!("{}=p.json", "a".repeat(254))).is_err());
        let err = parse_host_file("we\u{1b}[31mb=p.json").unwrap_err();
        assert!(!err.contains('\u{1b}'), "{err}");
    }
}
