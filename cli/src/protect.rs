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
//! The system policy file (`/etc/safe-switch/policy.toml`) always applies
//! when it exists; `--policy PATH` adds a second policy, it never replaces
//! the first, and the command line can only add to both (see [`asked`]).
//! A policy file is trusted input: it can switch implicit protections off
//! and choose the mode. When safe-switch runs as root, the file and every
//! directory on its path must therefore be owned by root and writable by
//! nobody else; otherwise the run stops with an error before anything is
//! planned. An unprivileged run (an offline `diff`, say) skips the check:
//! it cannot change the machine, and it lets tests and users keep a policy
//! file among their own files.

use std::fmt::Write as _;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use plan_model::policy::{Policy, Selector};
use plan_model::{LiveState, Mode, Plan, ProtectionSource};
use systemd_plan::GenerationUnits;
use systemd_plan::protect::{self, Analysis, Explanation, Request, UnitNames};

use crate::args::{Format, OnProtected, ProtectArgs};
use crate::exit::Outcome;

/// Where the policy file is looked for when `--policy` is not given.
pub(crate) const DEFAULT_POLICY: &str = "/etc/safe-switch/policy.toml";

/// What [`protect_plan`] found besides the rewritten plan.
#[derive(Debug)]
pub(crate) struct ProtectReport {
    /// The analysis (the relation graph and the protected units).
    pub analysis: Analysis,
    /// What was protected, and how: what a saved plan records.
    pub request: Request,
}

impl ProtectReport {
    /// Explains why the units `selector` names get their actions
    /// (`--explain`): the selector is read as `--protect` reads it (`sshd`
    /// covers sshd.service, sshd.socket and its instances), and each unit
    /// it matches is explained, as text or as JSON.
    ///
    /// A selector that matches no unit is a usage error with close matches.
    pub(crate) fn explain(&self, plan: &Plan, selector: &str, format: Format) -> anyhow::Result<String> {
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
            Format::Text => Ok(plan_report::explain_text(&explanations)),
            Format::Json => Ok(plan_report::explain_json(&explanations)),
            other => Err(crate::exit::usage(format!("--explain prints text or JSON, not {}", other.name()))),
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
/// It reads the policy files ([`DEFAULT_POLICY`] when it exists, plus
/// `--policy`) and the caller's cgroup (`/proc/self/cgroup`, plus the
/// isolating caller's hand-over file), merges the policies' protections
/// with `--protect` (the command line can only add), picks the stricter of
/// `--on-protected` and the policies' mode (else defer), adds what a saved
/// plan recorded (`ProtectArgs::recorded`), and rewrites the plan. Selectors that match no unit are printed as warnings on standard
/// error, with close matches, and recorded as plan diagnostics.
///
/// Errors (exit 1, nothing changed): an invalid selector, a missing
/// `--policy` file, a malformed policy file (the message names the line),
/// a policy file that fails the ownership check.
pub(crate) fn protect_plan(
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
        say!("warning: {w}");
    }
    Ok(ProtectReport { analysis, request })
}

/// Fails with a usage error when a `--protect` name or full unit name
/// (not a glob) matched nothing: `(selector, close matches)` of every
/// command-line selector that matched no unit.
///
/// A typo must never leave a unit unprotected, so it stops the command
/// before anything is done. A glob may match nothing on this host, and one
/// policy file serves hosts with different units, so those stay warnings.
pub(crate) fn reject_typos(unmatched: &[(&str, &[String])]) -> anyhow::Result<()> {
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
pub(crate) fn outcome(plan: &Plan) -> Outcome {
    if plan.protection.refused { Outcome::Blocked } else { Outcome::Ok }
}

/// What the policy files and the command line ask to protect, before it
/// is read for a platform: each selector as written with where it comes
/// from, the mode, and the policies in force merged.
pub(crate) struct Asked {
    /// The selectors: the system policy's, the added policy's, then
    /// `--protect`'s.
    pub selectors: Vec<(String, ProtectionSource)>,
    /// The stricter of `--on-protected` and the policies' mode, else
    /// defer.
    pub mode: Mode,
    /// The policies in force, merged ([`Policy::merge`]), when there is
    /// one.
    pub policy: Option<Policy>,
}

/// Reads what the options and the policy files ask to protect. The command
/// line only adds: selectors to the policies', and `--on-protected` can
/// make the mode stricter, never weaker (a note says so when it asked for
/// `defer` under a policy that says `refuse`).
pub(crate) fn asked(args: &ProtectArgs) -> anyhow::Result<Asked> {
    let loaded = load_policies(args)?;
    let mut selectors = Vec::new();
    for (policy, policy_path) in &loaded {
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
    let policy = (!loaded.is_empty()).then(|| Policy::merge(&loaded.iter().map(|(p, _)| p).collect::<Vec<_>>()));
    let policy_mode = policy.as_ref().and_then(|p| p.mode);
    let asked_mode = args.on_protected.map(|m| match m {
        OnProtected::Defer => Mode::Defer,
        OnProtected::Refuse => Mode::Refuse,
    });
    let mode = match (asked_mode, policy_mode) {
        (Some(asked), Some(policy)) => asked.stricter(policy),
        (asked, policy) => asked.or(policy).unwrap_or_default(),
    };
    if asked_mode == Some(Mode::Defer) && mode == Mode::Refuse {
        let paths: Vec<String> = loaded
            .iter()
            .filter(|(p, _)| p.mode == Some(Mode::Refuse))
            .map(|(_, path)| path.display().to_string())
            .collect();
        say!(
            "note: --on-protected defer does not apply: the policy file {} says mode = \"refuse\", and the command line can only make protection stricter",
            paths.join(" and ")
        );
    }
    Ok(Asked { selectors, mode, policy })
}

/// Builds the analysis request from the options, the policy files, the
/// caller's cgroup and, for `apply`, the protections recorded in the saved
/// plan (which only add).
pub(crate) fn request(args: &ProtectArgs) -> anyhow::Result<Request> {
    let asked = asked(args)?;
    let selectors: Vec<(Selector, ProtectionSource)> = asked
        .selectors
        .into_iter()
        .map(|(text, source)| {
            let selector = Selector::parse(&text).map_err(|e| match &source {
                ProtectionSource::CommandLine => crate::exit::usage(format!("--protect {text:?}: {}", e.reason)),
                _ => anyhow::anyhow!("{}: {text:?}: {}", source.label(), e.reason),
            })?;
            Ok((selector, source))
        })
        .collect::<anyhow::Result<_>>()?;
    let current = Request {
        selectors,
        implicit: asked.policy.map(|p| p.implicit).unwrap_or_default(),
        caller_cgroups: caller_cgroups(args.cgroup_file.as_deref())?,
        mode: asked.mode,
    };
    Ok(match &args.recorded {
        Some(recorded) => union(recorded, current),
        None => current,
    })
}

/// Two requests in force together: every selector and caller cgroup of
/// both, each implicit protection unless both switch it off, the stricter
/// mode.
pub(crate) fn union(first: &Request, second: Request) -> Request {
    let mut out = first.clone();
    for (selector, source) in second.selectors {
        if !out.selectors.iter().any(|(s, _)| *s == selector) {
            out.selectors.push((selector, source));
        }
    }
    for cgroup in second.caller_cgroups {
        if !out.caller_cgroups.contains(&cgroup) {
            out.caller_cgroups.push(cgroup);
        }
    }
    out.implicit = out.implicit.union(second.implicit);
    out.mode = out.mode.stricter(second.mode);
    out
}

/// The protections a plan was made with, as a request: its selectors from
/// the command line and the policy files, the units its caller's cgroup
/// held (as exact unit names), and its mode. The D-Bus and logind
/// protections are not taken from it: the implicit ones in force are
/// always added.
pub(crate) fn recorded_in(plan: &Plan) -> Request {
    let mut request = Request { mode: plan.protection.mode, ..Request::default() };
    for entry in &plan.protection.protected {
        let selector = match &entry.source {
            ProtectionSource::CommandLine | ProtectionSource::Policy { .. } => Selector::parse(&entry.selector).ok(),
            ProtectionSource::Implicit { why } if why.starts_with("holds this process") => {
                Selector::parse(&entry.selector).ok()
            }
            ProtectionSource::Implicit { .. } => None,
        };
        if let Some(selector) = selector.filter(|s| !request.selectors.iter().any(|(t, _)| t == s)) {
            request.selectors.push((selector, entry.source.clone()));
        }
    }
    request
}

/// The system policy file: [`DEFAULT_POLICY`], or in a debug build the
/// file `SAFE_SWITCH_TEST_SYSTEM_POLICY` names (see [`crate::test_hooks`]).
pub(crate) fn system_policy_path() -> PathBuf {
    crate::test_hooks::path(crate::test_hooks::SYSTEM_POLICY).unwrap_or_else(|| PathBuf::from(DEFAULT_POLICY))
}

/// Loads the policy files in force: the system policy when it exists,
/// then the one `--policy PATH` adds (which must exist; it never replaces
/// the system policy, and naming the system policy again loads it once).
/// Returns each policy with its path, the system's first; merge them with
/// [`Policy::merge`]. Every reader of the policy (protection, and the
/// `base` and `host` of a composed switch) loads it here, so that every
/// reader applies the same checks (see [`read_policy`]).
pub(crate) fn load_policies(args: &ProtectArgs) -> anyhow::Result<Vec<(Policy, PathBuf)>> {
    let mut out = Vec::new();
    let system = system_policy_path();
    match fs::symlink_metadata(&system) {
        Err(err) if err.kind() == ErrorKind::NotFound => check_missing_system_policy(&system)?,
        _ => out.push((read_policy(&system)?, system.clone())),
    }
    if let Some(path) = &args.policy {
        let same = |a: &Path, b: &Path| matches!((fs::canonicalize(a), fs::canonicalize(b)), (Ok(a), Ok(b)) if a == b);
        if !(out.first().is_some_and(|(_, system)| same(system, path))) {
            out.push((read_policy(path)?, path.clone()));
        }
    }
    Ok(out)
}

/// The longest policy file read.
const MAX_POLICY_BYTES: u64 = 1 << 20;

/// Reads and parses a policy file, checking who may write it first.
///
/// When running as root, the path is resolved component by component and
/// every directory on the way, through symlinks, must belong to root and be
/// writable by no one else ([`check_dir`]); the file itself is then opened
/// without following a link and must belong to root and be writable by no
/// one else ([`check_owner`]). In every case the file is opened
/// non-blocking (a FIFO cannot hang the run), must be a regular file, and
/// is read up to [`MAX_POLICY_BYTES`].
fn read_policy(path: &Path) -> anyhow::Result<Policy> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let name = || format!("policy file {}", path.display());
    let euid = rustix::process::geteuid().as_raw();
    let (physical, flags) = if euid == 0 {
        let physical = match trusted_path(path) {
            Ok(p) => p,
            Err(TrustError::Io(err)) if err.kind() == ErrorKind::NotFound => {
                bail!("{} does not exist", name())
            }
            Err(TrustError::Io(err)) => bail!("{}: {err}", name()),
            Err(TrustError::Untrusted(why)) => bail!("refusing the {}: {why}", name()),
        };
        (physical, libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY)
    } else {
        (path.to_owned(), libc::O_NONBLOCK | libc::O_NOCTTY)
    };
    let file = match fs::OpenOptions::new().read(true).custom_flags(flags).open(&physical) {
        Ok(file) => file,
        Err(err) if err.kind() == ErrorKind::NotFound => bail!("{} does not exist", name()),
        Err(err) => bail!("{}: {err}", name()),
    };
    let meta = file.metadata().with_context(name)?;
    if !meta.is_file() {
        bail!("{}: not a regular file ({})", name(), file_kind(&meta));
    }
    check_owner(euid, meta.uid(), meta.gid(), meta.mode()).with_context(name)?;
    let mut bytes = Vec::new();
    file.take(MAX_POLICY_BYTES + 1).read_to_end(&mut bytes).with_context(name)?;
    if bytes.len() as u64 > MAX_POLICY_BYTES {
        bail!("{}: longer than {MAX_POLICY_BYTES} bytes", name());
    }
    let text = String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{}: not UTF-8 text", name()))?;
    Policy::parse(&text).with_context(name)
}

/// What a non-regular file is, in words.
fn file_kind(meta: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    let ty = meta.file_type();
    if ty.is_dir() {
        "a directory"
    } else if ty.is_fifo() {
        "a FIFO"
    } else if ty.is_socket() {
        "a socket"
    } else if ty.is_char_device() {
        "a character device"
    } else if ty.is_block_device() {
        "a block device"
    } else {
        "not a file"
    }
}

/// Refuses a missing system policy whose directory others could write: it
/// may have been removed by someone other than root. Only checked when
/// running as root.
fn check_missing_system_policy(path: &Path) -> anyhow::Result<()> {
    if !rustix::process::geteuid().is_root() {
        return Ok(());
    }
    let Some(dir) = path.parent() else { return Ok(()) };
    let physical = match trusted_path(dir) {
        Ok(p) => p,
        Err(TrustError::Io(_)) => return Ok(()),
        Err(TrustError::Untrusted(why)) => bail!("refusing the policy directory {}: {why}", dir.display()),
    };
    let meta = fs::metadata(&physical).with_context(|| format!("policy directory {}", dir.display()))?;
    if meta.is_dir() {
        // `u32::MAX` is no owner: a sticky directory is not enough here.
        check_dir(&physical, &meta, u32::MAX).map_err(|why| {
            anyhow::anyhow!("refusing the policy directory {}: {why}; the policy file could be removed", dir.display())
        })?;
    }
    Ok(())
}

/// Why a path cannot be trusted.
#[derive(Debug)]
pub(crate) enum TrustError {
    /// A component could not be looked up.
    Io(std::io::Error),
    /// A directory on the way could be changed by someone other than root.
    Untrusted(String),
}

/// The longest chain of symlinks followed, as in the kernel.
const MAX_SYMLINKS: u32 = 40;

/// Resolves `path` to its physical path, component by component, checking
/// every directory a name is looked up in ([`check_dir`]) on the way,
/// through every symlink, so that nobody but root could make the path lead
/// elsewhere. Returns the physical path of the last component (not checked
/// itself: the caller opens it without following links and checks it).
pub(crate) fn trusted_path(path: &Path) -> Result<PathBuf, TrustError> {
    use std::ffi::OsString;
    use std::path::Component;
    fn push(path: &Path, pending: &mut Vec<OsString>) {
        let names: Vec<OsString> = path
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_owned()),
                Component::ParentDir => Some(OsString::from("..")),
                _ => None,
            })
            .collect();
        pending.extend(names.into_iter().rev());
    }
    let root_meta = || fs::metadata("/").map_err(TrustError::Io);
    let absolute = std::path::absolute(path).map_err(TrustError::Io)?;
    let mut pending = Vec::new();
    push(&absolute, &mut pending);
    let mut cur = PathBuf::from("/");
    let mut cur_meta = root_meta()?;
    let mut links = 0;
    while let Some(name) = pending.pop() {
        if name == ".." {
            cur.pop();
            cur_meta = fs::metadata(&cur).map_err(TrustError::Io)?;
            continue;
        }
        let next = cur.join(&name);
        let meta = fs::symlink_metadata(&next).map_err(TrustError::Io)?;
        check_dir(&cur, &cur_meta, meta.uid()).map_err(TrustError::Untrusted)?;
        if meta.file_type().is_symlink() {
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(TrustError::Untrusted(format!("too many levels of symbolic links at {}", next.display())));
            }
            let target = fs::read_link(&next).map_err(TrustError::Io)?;
            if target.is_absolute() {
                cur = PathBuf::from("/");
                cur_meta = root_meta()?;
            }
            push(&target, &mut pending);
            continue;
        }
        cur = next;
        cur_meta = meta;
    }
    Ok(cur)
}

/// The rule for a directory a policy file is looked up in, as sshd's
/// `StrictModes` has it: it must belong to root and must not be writable
/// by its group (unless that is root's group) or by others. A sticky
/// directory writable by others (the Nix store, `/tmp`) is accepted when
/// the entry looked up in it belongs to root (`entry_uid`): nobody else
/// may then rename or remove that entry.
fn check_dir(dir: &Path, meta: &fs::Metadata, entry_uid: u32) -> Result<(), String> {
    let mode = meta.mode();
    if meta.uid() != 0 {
        return Err(format!("the directory {} is owned by uid {}, not root", dir.display(), meta.uid()));
    }
    let others = mode & 0o002 != 0;
    let group = mode & 0o020 != 0 && meta.gid() != 0;
    if (others || group) && !(mode & 0o1000 != 0 && entry_uid == 0) {
        let who = if others { "others".to_owned() } else { format!("group {}", meta.gid()) };
        return Err(format!("the directory {} is writable by {who} (mode {:04o})", dir.display(), mode & 0o7777));
    }
    Ok(())
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

/// The caller's cgroups, for its implicit protection. This process's own
/// cgroup is always read (`/proc/self/cgroup`; absent on systems without
/// it). `--cgroup-file` can only add one: the cgroup of the process that
/// started this one in an isolating transient unit, handed over in the run
/// directory. Any other file is ignored with a warning.
fn caller_cgroups(hand_over: Option<&Path>) -> anyhow::Result<Vec<String>> {
    let proc_file =
        crate::test_hooks::path(crate::test_hooks::PROC_CGROUP).unwrap_or_else(|| PathBuf::from("/proc/self/cgroup"));
    let mut out = Vec::new();
    if let Ok(text) = read_small(&proc_file) {
        out.extend(protect::cgroup::cgroup_path(&text).map(str::to_owned));
    }
    if let Some(path) = hand_over {
        match read_hand_over(path) {
            Ok(text) => {
                let extra = protect::cgroup::cgroup_path(&text).map(str::to_owned);
                out.extend(extra.filter(|c| !out.contains(c)));
            }
            Err(why) => say!("warning: ignoring --cgroup-file {}: {why}", path.display()),
        }
    }
    Ok(out)
}

/// Reads a small text file (a cgroup file), non-blocking and bounded.
fn read_small(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path)?;
    let mut text = String::new();
    file.take(64 * 1024).read_to_string(&mut text)?;
    Ok(text)
}

/// Reads the hand-over file of the isolating `safe-switch`: accepted only
/// as a regular file directly in the run directory, both owned by root and
/// writable by nobody else, read without following links.
fn read_hand_over(path: &Path) -> Result<String, String> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let run = systemd_live::RunDir::system();
    let only = format!("only safe-switch's own hand-over file in {} is read", run.path().display());
    let (Some(dir), Some(_)) = (path.parent(), path.file_name()) else { return Err(only) };
    let same_dir = matches!((fs::canonicalize(dir), fs::canonicalize(run.path())), (Ok(a), Ok(b)) if a == b);
    if !same_dir {
        return Err(only);
    }
    let dir_meta = fs::metadata(dir).map_err(|e| e.to_string())?;
    let flags = libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY;
    let file = fs::OpenOptions::new().read(true).custom_flags(flags).open(path).map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    let private = |m: &fs::Metadata| m.uid() == 0 && m.mode() & 0o022 == 0;
    if !meta.is_file() || !private(&meta) || !private(&dir_meta) {
        return Err(format!("{only}, as a regular file owned by root and writable by nobody else"));
    }
    let mut text = String::new();
    file.take(64 * 1024).read_to_string(&mut text).map_err(|e| e.to_string())?;
    Ok(text)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on bad fixtures")]
mod tests {
    use super::*;
    use plan_model::policy::ImplicitProtections;

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

    fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    fn write_policy(path: &Path, text: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt as _;
        fs::write(path, text).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn directories_on_the_way_must_be_roots_alone() {
        if !is_root() {
            assert!(std::env::var_os("CI").is_none(), "this test needs root under CI");
            say!("SKIPPED directories_on_the_way_must_be_roots_alone: needs root");
            return;
        }
        use std::os::unix::fs::PermissionsExt as _;
        // A private directory in /tmp: /tmp is sticky, and the entry in it
        // belongs to root, so it is accepted (as the Nix store is).
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        fs::create_dir(&good).unwrap();
        fs::set_permissions(&good, fs::Permissions::from_mode(0o755)).unwrap();
        write_policy(&good.join("policy.toml"), "protect = [\"sshd\"]\n", 0o644);
        let policy = read_policy(&good.join("policy.toml")).unwrap();
        assert_eq!(policy.protect.len(), 1);

        // A directory others may write: someone could swap the file.
        let open = dir.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        write_policy(&open.join("policy.toml"), "", 0o644);
        let err = format!("{:#}", read_policy(&open.join("policy.toml")).unwrap_err());
        assert!(err.contains("writable by others") && err.contains("open"), "{err}");

        // A link from a good directory into the open one is checked on
        // what it resolves to.
        std::os::unix::fs::symlink(open.join("policy.toml"), good.join("link.toml")).unwrap();
        let err = format!("{:#}", read_policy(&good.join("link.toml")).unwrap_err());
        assert!(err.contains("writable by others"), "{err}");

        // A directory owned by someone else.
        let theirs = dir.path().join("theirs");
        fs::create_dir(&theirs).unwrap();
        write_policy(&theirs.join("policy.toml"), "", 0o644);
        std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
        let err = format!("{:#}", read_policy(&theirs.join("policy.toml")).unwrap_err());
        assert!(err.contains("owned by uid 65534"), "{err}");

        // A sticky directory others may write does not cover an entry
        // that is not root's.
        let sticky = dir.path().join("sticky");
        fs::create_dir(&sticky).unwrap();
        fs::set_permissions(&sticky, fs::Permissions::from_mode(0o1777)).unwrap();
        let sub = sticky.join("sub");
        fs::create_dir(&sub).unwrap();
        write_policy(&sub.join("policy.toml"), "", 0o644);
        assert!(read_policy(&sub.join("policy.toml")).is_ok(), "root's entry in a sticky directory");
        std::os::unix::fs::chown(&sub, Some(65534), None).unwrap();
        let err = format!("{:#}", read_policy(&sub.join("policy.toml")).unwrap_err());
        assert!(err.contains("writable by others") || err.contains("uid 65534"), "{err}");
    }

    #[test]
    fn a_fifo_or_a_directory_as_the_policy_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("policy.toml");
        rustix::fs::mkfifoat(rustix::fs::CWD, &fifo, rustix::fs::Mode::from_raw_mode(0o644)).unwrap();
        let err = format!("{:#}", read_policy(&fifo).unwrap_err());
        assert!(err.contains("not a regular file (a FIFO)"), "{err}");
        let err = format!("{:#}", read_policy(dir.path()).unwrap_err());
        assert!(err.contains("not a regular file (a directory)") || err.contains("Is a directory"), "{err}");
        let big = dir.path().join("big.toml");
        fs::write(&big, "#".repeat(usize::try_from(MAX_POLICY_BYTES).unwrap() + 1)).unwrap();
        let err = format!("{:#}", read_policy(&big).unwrap_err());
        assert!(err.contains("longer than"), "{err}");
    }

    #[test]
    fn a_union_of_requests_only_adds() {
        let sel = |s: &str| (Selector::parse(s).unwrap(), ProtectionSource::CommandLine);
        let recorded = Request {
            selectors: vec![sel("sshd")],
            implicit: ImplicitProtections { dbus: false, logind: false, caller: true },
            caller_cgroups: vec!["/system.slice/gitlab-runner.service".into()],
            mode: Mode::Defer,
        };
        let now = Request {
            selectors: vec![sel("sshd"), sel("r")],
            implicit: ImplicitProtections { dbus: true, logind: false, caller: false },
            caller_cgroups: vec!["/system.slice/safe-switch-1.service".into()],
            mode: Mode::Refuse,
        };
        let u = union(&recorded, now);
        let names: Vec<&str> = u.selectors.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(names, ["sshd", "r"]);
        assert_eq!(u.implicit, ImplicitProtections { dbus: true, logind: false, caller: true });
        assert_eq!(u.caller_cgroups.len(), 2);
        assert_eq!(u.mode, Mode::Refuse);
    }
}
