//! The command line, as clap structs. Parsing validates shape only; it
//! reads no files and asks no service (that happens in `cmd::*`).

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

use crate::exit;

/// Switch a running Nix-managed machine to a new generation without
/// touching what must keep running.
#[derive(Debug, Parser)]
#[command(name = "safe-switch", version, after_long_help = exit::HELP, after_help = exit::HELP)]
pub(crate) struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Plan the switch between two generation directories (NixOS,
    /// system-manager or nix-darwin), offline.
    Diff(DiffArgs),
    /// Plan the switch from the running generation to a new one, with the
    /// live state from systemd.
    Plan(PlanArgs),
    /// Plan only, as a CI gate: exit 3 when anything touches a protected
    /// unit.
    Check(CheckArgs),
    /// Plan, then carry out the safe part of the switch.
    Switch(SwitchArgs),
    /// Carry out exactly a plan saved with `plan --out`.
    Apply(ApplyArgs),
    /// List the deferred actions earlier switches left pending: exit 3
    /// when there are any.
    Pending(PendingArgs),
    /// Carry out the pending deferred actions that the protections in
    /// force allow, re-planned against the running generation.
    Settle(SettleArgs),
    /// Show which packages change between two store paths.
    ClosureDiff(ClosureDiffArgs),
    /// Work with reports: merge the plans of several hosts into one.
    Report(ReportArgs),
    /// Print a shell completion script on standard output.
    Completions(CompletionsArgs),
    /// Print the manual page (roff) on standard output, or write one page
    /// per command into a directory.
    Man(ManArgs),
}

/// Arguments of `report`.
#[derive(Debug, Args)]
pub(crate) struct ReportArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ReportCommand,
}

/// The subcommands of `report`.
#[derive(Debug, Subcommand)]
pub(crate) enum ReportCommand {
    /// Merge the plans of several hosts into one report per format: a
    /// JUnit test suite per host, Markdown with a table of hosts, Code
    /// Quality findings per host, one JSON document.
    Merge(MergeArgs),
}

/// Arguments of `report merge`.
#[derive(Debug, Args)]
pub(crate) struct MergeArgs {
    /// A host and its plan: the JSON report (`plan --json`, `--report
    /// json=PATH`) or the saved plan (`plan --out`). Host names are
    /// letters, digits, `.`, `-`, `_` and `:`.
    #[arg(value_name = "HOST=PLAN.json", required = true, value_parser = crate::cmd::merge::parse_host_file)]
    pub hosts: Vec<crate::cmd::merge::HostFile>,
    /// Output.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Arguments of `completions`.
#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Arguments of `man`.
#[derive(Debug, Args)]
pub(crate) struct ManArgs {
    /// Write `safe-switch.1` and one page per command
    /// (`safe-switch-plan.1`, ...) into this directory instead.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// The command line's definition, as clap builds it: what the completion
/// scripts and the manual pages are generated from.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// Arguments of `diff`.
#[derive(Debug, Args)]
pub(crate) struct DiffArgs {
    /// The running generation (a toplevel directory).
    pub old: PathBuf,
    /// The new generation (a toplevel directory).
    pub new: PathBuf,
    /// A live-state snapshot (JSON): systemd's units, or launchd's jobs for
    /// nix-darwin generations. Without it, every unit of the old generation
    /// counts as active.
    #[arg(long, value_name = "STATE.json")]
    pub live: Option<PathBuf>,
    /// A record of deferrals earlier switches left pending (the form of
    /// /run/safe-switch/pending.json): the plan shows what it does to each.
    #[arg(long, value_name = "PENDING.json")]
    pub pending: Option<PathBuf>,
    /// What an apply of this plan did (the `applied` object of a switch's
    /// JSON report): the reports show it as `switch` and `apply` do.
    #[arg(long, value_name = "APPLIED.json")]
    pub applied: Option<PathBuf>,
    /// Protection.
    #[command(flatten)]
    pub protect: ProtectArgs,
    /// Output.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Where the new generation comes from.
#[derive(Debug, Args, Clone, Default)]
pub(crate) struct SourceArgs {
    /// A prebuilt generation (a system toplevel).
    #[arg(long, value_name = "PATH", conflicts_with = "flake")]
    pub toplevel: Option<PathBuf>,
    /// The overlay flake (`./ci`), or `REF#attr` naming a complete
    /// configuration.
    #[arg(long, value_name = "REF")]
    pub flake: Option<String>,
    /// The overlay's module output to use (default: `default`).
    #[arg(long, value_name = "NAME", requires = "flake")]
    pub module: Option<String>,
    /// The base flake (default: the policy file's `base`, else /etc/nixos).
    #[arg(long, value_name = "REF", requires = "flake")]
    pub base: Option<String>,
    /// The base's configuration to extend (default: the host name, then
    /// `default`).
    #[arg(long, value_name = "NAME", requires = "flake")]
    pub host: Option<String>,
    /// Print the generated wrapper flake.
    #[arg(long, requires = "flake")]
    pub show_wrapper: bool,
    /// The new generation as the calling safe-switch already resolved (and
    /// built) it: the isolated apply reads it instead of building again.
    #[arg(long, value_name = "PATH", hide = true)]
    pub resolved_file: Option<PathBuf>,
}

/// Arguments of `plan`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).args(["toplevel", "flake"])))]
pub(crate) struct PlanArgs {
    /// The new generation.
    #[command(flatten)]
    pub source: SourceArgs,
    /// Protection.
    #[command(flatten)]
    pub protect: ProtectArgs,
    /// Output.
    #[command(flatten)]
    pub output: OutputArgs,
    /// Save the plan for `apply`.
    #[arg(long, value_name = "PLAN.json")]
    pub out: Option<PathBuf>,
}

/// When `check` fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum FailOn {
    /// Fail when anything touches a protected unit (deferred or refused).
    #[default]
    Blocked,
    /// Fail only when actions were deferred.
    Deferred,
    /// Fail when part of the switch takes effect only at the next boot.
    Reboot,
    /// Never fail.
    Never,
}

/// Arguments of `check`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).args(["toplevel", "flake"])))]
pub(crate) struct CheckArgs {
    /// The new generation.
    #[command(flatten)]
    pub source: SourceArgs,
    /// Protection.
    #[command(flatten)]
    pub protect: ProtectArgs,
    /// Output.
    #[command(flatten)]
    pub output: OutputArgs,
    /// When to exit 3: any of these (comma-separated or repeated;
    /// `never` alone).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "blocked")]
    pub fail_on: Vec<FailOn>,
}

/// How a switch is carried out.
#[derive(Debug, Args, Clone)]
pub(crate) struct ExecutionArgs {
    /// Seconds to wait for each systemd job.
    #[arg(long, value_name = "SECONDS", default_value_t = 90)]
    pub job_timeout: u64,
    /// Run in this process instead of a transient systemd unit.
    #[arg(long)]
    pub no_isolate: bool,
    /// Re-activate the previous generation when units fail or a protected
    /// unit was disturbed.
    #[arg(long)]
    pub rollback_on_failure: bool,
    /// Set by the calling safe-switch on the run it isolates in a
    /// transient unit: a lock held by another run is then reported to the
    /// caller by exit status, and the caller says so.
    #[arg(long, hide = true)]
    pub isolated: bool,
}

/// Arguments of `switch`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).args(["toplevel", "flake"])))]
pub(crate) struct SwitchArgs {
    /// The new generation.
    #[command(flatten)]
    pub source: SourceArgs,
    /// Protection.
    #[command(flatten)]
    pub protect: ProtectArgs,
    /// Output.
    #[command(flatten)]
    pub output: OutputArgs,
    /// How to apply.
    #[command(flatten)]
    pub apply: ExecutionArgs,
}

/// Arguments of `apply`.
#[derive(Debug, Args)]
pub(crate) struct ApplyArgs {
    /// A plan saved with `plan --out`.
    pub plan: PathBuf,
    /// How to apply.
    #[command(flatten)]
    pub apply: ExecutionArgs,
    /// Where the reports of the plan and of what the apply did go
    /// (`--report openmetrics=PATH` also holds how the apply ended).
    #[command(flatten)]
    pub output: OutputArgs,
    /// The cgroup of the process that asked for an isolated apply, handed
    /// over in the run directory; protected besides this process's own.
    #[arg(long, value_name = "PATH", hide = true)]
    pub cgroup_file: Option<PathBuf>,
}

/// Arguments of `pending`.
#[derive(Debug, Args)]
pub(crate) struct PendingArgs {
    /// Output.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Arguments of `settle`.
#[derive(Debug, Args)]
pub(crate) struct SettleArgs {
    /// Settle only the deferrals of these units: names (`gitlab-runner`
    /// covers gitlab-runner.service), full unit names or globs, as
    /// `--protect` takes them. Default: every pending deferral.
    #[arg(value_name = "UNITS", value_delimiter = ',')]
    pub units: Vec<String>,
    /// Protection: what stays protected while settling.
    #[command(flatten)]
    pub protect: ProtectArgs,
    /// Output: the re-planned actions.
    #[command(flatten)]
    pub output: OutputArgs,
    /// Wait until each unit is idle before acting on it: nothing but its
    /// main process runs in its control group (for a CI runner, no job).
    #[arg(long)]
    pub when_idle: bool,
    /// How long to wait for units to become idle (and for another
    /// safe-switch's lock): `90s`, `10m`, `1h30m`, or seconds. Then exit 3,
    /// nothing done for the units still busy. Default: no limit.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub wait: Option<std::time::Duration>,
    /// With `--when-idle`: a unit is idle when this shell command exits 0
    /// (instead of when its control group holds only its main process);
    /// `SAFE_SWITCH_UNIT` names the unit. For runners whose jobs run
    /// elsewhere, such as a Docker executor.
    #[arg(long, value_name = "CMD", requires = "when_idle")]
    pub idle_command: Option<String>,
    /// Seconds to wait for each systemd job.
    #[arg(long, value_name = "SECONDS", default_value_t = 90)]
    pub job_timeout: u64,
    /// Run in this process instead of a transient systemd unit.
    #[arg(long)]
    pub no_isolate: bool,
    /// Set by the calling safe-switch on the run it isolates.
    #[arg(long, hide = true)]
    pub isolated: bool,
}

/// Parses a duration: a number of seconds, or numbers each followed by
/// `ms`, `s`, `m` or `h` (`90s`, `10m`, `1h30m`).
pub(crate) fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("{text:?} is not a duration (e.g. 90s, 10m, 1h30m, or seconds)");
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse::<u64>().map(std::time::Duration::from_secs).map_err(|_| bad());
    }
    let mut total = std::time::Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let unit_len = rest[digits..].bytes().take_while(u8::is_ascii_alphabetic).count();
        if digits == 0 || unit_len == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        let part = match &rest[digits..digits + unit_len] {
            "ms" => std::time::Duration::from_millis(n),
            "s" => std::time::Duration::from_secs(n),
            "m" | "min" => std::time::Duration::from_secs(n.checked_mul(60).ok_or_else(bad)?),
            "h" => std::time::Duration::from_secs(n.checked_mul(3600).ok_or_else(bad)?),
            _ => return Err(bad()),
        };
        total = total.checked_add(part).ok_or_else(bad)?;
        rest = &rest[digits + unit_len..];
    }
    if text.is_empty() { Err(bad()) } else { Ok(total) }
}

/// Arguments of `closure-diff`.
#[derive(Debug, Args)]
pub(crate) struct ClosureDiffArgs {
    /// The old store path (e.g. /run/current-system).
    pub old: PathBuf,
    /// The new store path.
    pub new: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// What happens to actions that touch a protected unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnProtected {
    /// Drop them and apply the rest.
    Defer,
    /// Refuse the whole switch (exit 3).
    Refuse,
}

/// Protection options shared by the planning commands.
#[derive(Debug, Args, Clone, Default)]
pub struct ProtectArgs {
    /// Units that must not be stopped or restarted: names (`sshd` covers
    /// sshd.service, sshd.socket and sshd@*.service), full unit names, or
    /// globs. Comma-separated; may repeat.
    #[arg(long, value_name = "UNITS", value_delimiter = ',')]
    pub protect: Vec<String>,
    /// A policy file added to the system's (/etc/safe-switch/policy.toml),
    /// which always applies.
    #[arg(long, value_name = "PATH")]
    pub policy: Option<PathBuf>,
    /// What to do when an action touches a protected unit (default: the
    /// policy's mode, else defer). It can make a policy's mode stricter,
    /// never weaker.
    #[arg(long, value_enum, value_name = "MODE")]
    pub on_protected: Option<OnProtected>,
    /// The cgroup of the process that asked for an isolated switch, handed
    /// over in the run directory; protected besides this process's own.
    #[arg(long, value_name = "PATH", hide = true)]
    pub cgroup_file: Option<PathBuf>,
    /// Print why the units this names get their actions, instead of the
    /// plan: a name, full unit name or glob as `--protect` takes them;
    /// with `--json`, as JSON.
    #[arg(long, value_name = "UNITS")]
    pub explain: Option<String>,
    /// The protections a saved plan recorded, added to those the options
    /// and the policy files ask for (`apply`). Not an option.
    #[arg(skip)]
    pub recorded: Option<systemd_plan::protect::Request>,
}

pub(crate) use plan_report::Format;

/// Output options shared by the planning commands.
#[derive(Debug, Args, Clone, Default)]
pub(crate) struct OutputArgs {
    /// Output format on standard output.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Shorthand for `--format json`.
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
    /// Also write a report: `FORMAT=PATH`. May repeat.
    #[arg(long, value_name = "FORMAT=PATH", value_parser = crate::report::parse_report_file)]
    pub report: Vec<crate::report::ReportFile>,
}

impl OutputArgs {
    /// The format for standard output.
    pub(crate) fn stdout_format(&self) -> Format {
        if self.json { Format::Json } else { self.format }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn durations_parse_and_bad_ones_are_named() {
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        for bad in ["", "s", "2x", "1.5s", "-1s", "99999999999999999999h"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("is not a duration"), "{bad}: {err}");
        }
    }
}
