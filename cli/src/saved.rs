//! Saved plans: the file `plan --out` writes and `apply` carries out.
//!
//! A saved plan is the [`Plan`] together with the inputs it was computed
//! from: the running generation, the target toplevel, the protections in
//! force (every selector with its source, the mode, the implicit
//! protections, the caller's cgroups), and the live state (`ActiveState`,
//! `MainPID`, `InvocationID`) of every unit the plan names. A SHA-256
//! digest covers all of it, and an HMAC-SHA256 keyed by a secret only root
//! on this host can read ([`PlanKey`]) authenticates it.
//!
//! A plan for launchd (a nix-darwin host) is the same file: its units are
//! jobs, its selectors labels, and the live state it records is each job's
//! (`pid`, `runs`) by service target, in [`Inputs::launchd`].
//!
//! `apply` carries out exactly the saved actions, but only while the plan
//! is still true. It refuses, before changing anything, when
//!
//! - the digest does not match (the file was edited or damaged);
//! - the MAC is missing or wrong: the plan was not written by root on this
//!   host ([`verify_mac`]);
//! - the plan disagrees with its own recorded inputs (its `old`/`new` are
//!   not the recorded generations);
//! - the target toplevel is not in the Nix store, where nothing changes
//!   after planning ([`check_target_in_store`]);
//! - the running generation or the target toplevel is not what was
//!   recorded;
//! - a unit the plan names changed state, was restarted (a new
//!   `InvocationID` or `MainPID`; for a launchd job a new `pid` or `runs`),
//!   appeared or disappeared;
//! - the plan was made for the other service manager (launchd on a
//!   systemd host, or the reverse);
//! - planning again from the recorded inputs, with the recorded protections
//!   plus those in force now (the current system policy, this process's
//!   cgroup: protection only adds), against today's live state gives a
//!   different plan. This last check does not trust the file: a plan whose
//!   recorded protections were cleared or whose deferrals were turned into
//!   actions is still caught, because its actions are not what the planner
//!   produces.
//!
//! The checks themselves are pure functions ([`verify_digest`],
//! [`verify_mac`], [`check_fresh`]) over values, so they are tested without
//! a service manager; `cmd::apply` gathers the observations and calls them.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{ErrorKind, Read as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use hmac::{KeyInit, Mac};
use launchd_plan::{Domain, LabelMatcher, LaunchdLive, LaunchdPlan, LiveJob};
use plan_model::policy::{ImplicitProtections, Selector};
use plan_model::{LiveState, Mode, Plan, ProtectionSource};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use systemd_plan::protect::Request;

use crate::args::ProtectArgs;

/// The version of the saved-plan file format. Bump it when a field changes
/// meaning; `apply` refuses files of any other version.
pub const SAVED_FORMAT_VERSION: u32 = 2;

/// A plan saved for `apply`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedPlan {
    /// Always [`SAVED_FORMAT_VERSION`] when written by this version.
    pub saved_plan_version: u32,
    /// The safe-switch version that wrote the file (informational).
    pub written_by: String,
    /// What the plan was computed from.
    pub inputs: Inputs,
    /// The plan, as `plan --format json` prints it.
    pub plan: Plan,
    /// `sha256:` and the hex SHA-256 of the version, inputs and plan (see
    /// [`digest`]).
    pub digest: String,
    /// `hmac-sha256:` and the hex HMAC-SHA256 of the same bytes, keyed by
    /// this host's [`PlanKey`]; `null` when the plan was written without
    /// root, which `apply` refuses.
    #[serde(default)]
    pub mac: Option<String>,
}

/// The recorded inputs of a saved plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inputs {
    /// The running generation's store path when the plan was made.
    pub running_generation: String,
    /// The toplevel being switched to.
    pub target_toplevel: String,
    /// The protections the plan was made with; `apply` plans again with
    /// these plus those in force then.
    pub protection: RecordedProtection,
    /// The live state of every unit the plan names, by unit name; `null`
    /// for a unit that was not loaded. Empty for a launchd plan.
    pub live: BTreeMap<String, Option<RecordedUnit>>,
    /// For a launchd plan (a nix-darwin host), the state of its jobs;
    /// absent for a systemd plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launchd: Option<RecordedLaunchd>,
}

/// The launchd state a plan was made against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedLaunchd {
    /// Every job the plan names or protects, by service target
    /// (`system/<label>`, `gui/<uid>/<label>`); `null` for a job that was
    /// not loaded.
    pub jobs: BTreeMap<String, Option<RecordedJob>>,
}

/// The recorded state of one loaded launchd job.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedJob {
    /// Its process, while it runs.
    pub pid: Option<u32>,
    /// How often launchd started it, when `launchctl print` says.
    pub runs: Option<u64>,
}

impl RecordedJob {
    fn from_live(job: &LiveJob) -> RecordedJob {
        RecordedJob { pid: job.pid, runs: job.runs }
    }
}

/// The protections a plan was made with: everything the policy files, the
/// command line and the caller's cgroup asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedProtection {
    /// Every selector, with where it came from (a policy file, the
    /// command line).
    pub selectors: Vec<RecordedSelector>,
    /// The mode.
    pub mode: Mode,
    /// The implicit protections in force.
    pub implicit: ImplicitProtections,
    /// The cgroups of the process that planned (and of the process that
    /// started it in an isolating unit, if any). The units holding them are
    /// protected implicitly, and `apply` keeps protecting them, so that a
    /// plan made from, say, a CI runner's job keeps deferring that runner
    /// even when `apply` runs elsewhere.
    pub caller_cgroups: Vec<String>,
}

/// One recorded selector.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedSelector {
    /// The selector as written.
    pub selector: String,
    /// Where it came from.
    pub source: ProtectionSource,
}

impl Default for RecordedProtection {
    fn default() -> Self {
        RecordedProtection::from_request(&Request::default())
    }
}

impl RecordedProtection {
    /// Records the protection request a plan was made with.
    pub fn from_request(request: &Request) -> RecordedProtection {
        RecordedProtection {
            selectors: request
                .selectors
                .iter()
                .map(|(s, source)| RecordedSelector { selector: s.as_str().to_owned(), source: source.clone() })
                .collect(),
            mode: request.mode,
            implicit: request.implicit,
            caller_cgroups: request.caller_cgroups.clone(),
        }
    }

    /// Records the protection request a launchd plan was made with: its
    /// selectors and mode (launchd has no implicit protections).
    pub fn from_launchd(request: &launchd_plan::Request) -> RecordedProtection {
        RecordedProtection {
            selectors: request
                .selectors
                .iter()
                .map(|s| RecordedSelector { selector: s.text().to_owned(), source: s.source().clone() })
                .collect(),
            mode: request.mode,
            implicit: ImplicitProtections { dbus: false, logind: false, caller: false },
            caller_cgroups: Vec::new(),
        }
    }

    /// The recorded protections as a launchd request.
    pub fn to_launchd_request(&self) -> anyhow::Result<launchd_plan::Request> {
        let selectors = self
            .selectors
            .iter()
            .map(|r| {
                LabelMatcher::new(&r.selector, r.source.clone())
                    .map_err(|e| anyhow::anyhow!("the saved plan records an invalid selector: {e}"))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(launchd_plan::Request { mode: self.mode, selectors })
    }

    /// The recorded protections as a request.
    pub fn to_request(&self) -> anyhow::Result<Request> {
        let selectors = self
            .selectors
            .iter()
            .map(|r| {
                let selector = Selector::parse(&r.selector)
                    .map_err(|e| anyhow::anyhow!("the saved plan records an invalid selector: {e}"))?;
                Ok((selector, r.source.clone()))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Request { selectors, implicit: self.implicit, caller_cgroups: self.caller_cgroups.clone(), mode: self.mode })
    }

    /// The options `apply` plans again with: no selector, policy or mode of
    /// its own, the recorded protections added to those in force now (the
    /// system policy, this process's cgroup).
    pub fn to_args(&self) -> anyhow::Result<ProtectArgs> {
        Ok(ProtectArgs { recorded: Some(self.to_request()?), ..ProtectArgs::default() })
    }
}

/// Records the inputs of a plan made from `old` to `new` against `live`
/// with the protection `request`.
pub fn record_inputs(old: &Path, new: &Path, plan: &Plan, live: &LiveState, request: &Request) -> Inputs {
    Inputs {
        running_generation: old.display().to_string(),
        target_toplevel: new.display().to_string(),
        protection: RecordedProtection::from_request(request),
        live: record_live(plan, live),
        launchd: None,
    }
}

/// Records the inputs of a launchd plan made against `live` with the
/// protection `request`.
pub fn record_launchd_inputs(planned: &LaunchdPlan, live: &LaunchdLive, request: &launchd_plan::Request) -> Inputs {
    let mut targets: Vec<String> = Vec::new();
    for unit in &planned.plan.units {
        let Some(job) = planned.jobs.get(&unit.unit) else { continue };
        let Some(domain) = job.domain else { continue };
        targets.push(service_target(domain, job.loaded_label.as_deref().unwrap_or(&job.label)));
    }
    let gui = live.primary_user.as_ref().map(|u| Domain::Gui(u.uid));
    for label in planned.plan.protection.protected.iter().flat_map(|p| &p.units) {
        let in_gui = live.gui.as_ref().is_some_and(|g| g.contains_key(label));
        let domain = match gui {
            Some(gui) if in_gui && !live.system.as_ref().is_some_and(|s| s.contains_key(label)) => gui,
            _ => Domain::System,
        };
        targets.push(service_target(domain, label));
    }
    let jobs = targets.into_iter().map(|t| (t.clone(), observe_job(live, &t))).collect();
    Inputs {
        running_generation: planned.plan.old.path.clone(),
        target_toplevel: planned.plan.new.path.clone(),
        protection: RecordedProtection::from_launchd(request),
        live: BTreeMap::new(),
        launchd: Some(RecordedLaunchd { jobs }),
    }
}

fn service_target(domain: Domain, label: &str) -> String {
    format!("{domain}/{label}")
}

/// A job's state in `live`, by service target; `None` when it is not
/// loaded (or its domain is not the primary user's, or not read).
fn observe_job(live: &LaunchdLive, target: &str) -> Option<RecordedJob> {
    let job = if let Some(label) = target.strip_prefix("system/") {
        live.system.as_ref()?.get(label)
    } else {
        let (uid, label) = target.strip_prefix("gui/")?.split_once('/')?;
        let uid: u32 = uid.parse().ok()?;
        if live.primary_user.as_ref()?.uid != uid {
            return None;
        }
        live.gui.as_ref()?.get(label)
    };
    job.map(RecordedJob::from_live)
}

/// The recorded live state of one unit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedUnit {
    /// `ActiveState`.
    pub active_state: plan_model::ActiveState,
    /// `MainPID` (0 when none).
    pub main_pid: u32,
    /// `InvocationID` (empty when none).
    pub invocation_id: String,
}

impl RecordedUnit {
    /// Records a unit from a live-state snapshot; `None` when not loaded.
    pub fn from_live(live: &LiveState, unit: &str) -> Option<RecordedUnit> {
        live.get(unit).map(|u| RecordedUnit {
            active_state: u.active_state.clone(),
            main_pid: u.main_pid,
            invocation_id: u.invocation_id.clone(),
        })
    }
}

/// Records the live state of every unit the plan names (with or without
/// actions, deferred or not) and of every protected unit it lists.
pub fn record_live(plan: &Plan, live: &LiveState) -> BTreeMap<String, Option<RecordedUnit>> {
    let mut units: Vec<&str> = plan.units.iter().map(|u| u.unit.as_str()).collect();
    for p in &plan.protection.protected {
        units.extend(p.units.iter().map(String::as_str));
    }
    units.into_iter().map(|u| (u.to_owned(), RecordedUnit::from_live(live, u))).collect()
}

/// The longest saved plan read.
const MAX_SAVED_PLAN_BYTES: u64 = 64 << 20;

impl SavedPlan {
    /// Builds a saved plan and computes its digest. It carries no MAC
    /// until [`SavedPlan::sign`].
    pub fn new(plan: Plan, inputs: Inputs) -> SavedPlan {
        let mut saved = SavedPlan {
            saved_plan_version: SAVED_FORMAT_VERSION,
            written_by: env!("CARGO_PKG_VERSION").to_owned(),
            inputs,
            plan,
            digest: String::new(),
            mac: None,
        };
        saved.digest = digest(&saved);
        saved
    }

    /// Computes the MAC with this host's key.
    pub fn sign(&mut self, key: &PlanKey) {
        self.mac = Some(key.mac(&covered_bytes(self)));
    }

    /// The file's text: pretty JSON with a trailing newline.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Parses a saved plan, naming the file in errors. The file is opened
    /// non-blocking, must be a regular file and is read up to 64 MiB.
    pub fn load(path: &Path) -> anyhow::Result<SavedPlan> {
        let text = read_bounded(path, MAX_SAVED_PLAN_BYTES)
            .with_context(|| format!("cannot read the saved plan {}", path.display()))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(plan_model::json::JsonError::from)
            .with_context(|| format!("{} is not a saved plan: invalid JSON", path.display()))?;
        let version = value.get("saved_plan_version").and_then(serde_json::Value::as_u64);
        match version {
            Some(v) if v == u64::from(SAVED_FORMAT_VERSION) => {}
            Some(v) => anyhow::bail!(
                "{}: saved plan format {v} is not supported by this version (it reads format {SAVED_FORMAT_VERSION}); plan again",
                path.display()
            ),
            None => anyhow::bail!(
                "{} is not a saved plan (no saved_plan_version); write one with `safe-switch plan --out`",
                path.display()
            ),
        }
        serde_json::from_value(value)
            .map_err(plan_model::json::JsonError::from)
            .with_context(|| format!("{} is not a valid saved plan", path.display()))
    }

    /// Writes the file atomically.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        crate::report::write_atomically(path, self.to_json().as_bytes())
            .with_context(|| format!("cannot write the saved plan to {}", path.display()))
    }
}

/// Reads a regular file as UTF-8, non-blocking (a FIFO cannot hang the
/// run) and up to `max` bytes.
pub(crate) fn read_bounded(path: &Path, max: u64) -> anyhow::Result<String> {
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path)?;
    if !file.metadata()?.is_file() {
        bail!("not a regular file");
    }
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        bail!("longer than {max} bytes");
    }
    String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("not UTF-8 text"))
}

/// The bytes the digest and the MAC cover: the compact JSON of the
/// version, inputs and plan, in that order. The compact form of the parsed
/// values is used (not the file's bytes), so reformatting the file does
/// not change it but changing any value does.
fn covered_bytes(saved: &SavedPlan) -> Vec<u8> {
    #[derive(Serialize)]
    struct Covered<'a> {
        saved_plan_version: u32,
        inputs: &'a Inputs,
        plan: &'a Plan,
    }
    let covered = Covered { saved_plan_version: saved.saved_plan_version, inputs: &saved.inputs, plan: &saved.plan };
    serde_json::to_vec(&covered).unwrap_or_default()
}

/// The digest of a saved plan: `sha256:` and the SHA-256 of
/// [`covered_bytes`].
pub fn digest(saved: &SavedPlan) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(covered_bytes(saved))))
}

/// Where the saved-plan key is kept: `/var/lib/safe-switch`, or in a debug
/// build the directory `SAFE_SWITCH_TEST_STATE_DIR` names (see
/// [`crate::test_hooks`]).
pub fn state_dir() -> PathBuf {
    crate::test_hooks::path(crate::test_hooks::STATE_DIR).unwrap_or_else(|| PathBuf::from("/var/lib/safe-switch"))
}

/// The key file's name in the state directory.
const KEY_FILE: &str = "plan-key";
/// The key's length in bytes.
const KEY_BYTES: usize = 32;

type HmacSha256 = hmac::Hmac<Sha256>;

/// The secret that authenticates saved plans: 32 random bytes in
/// `/var/lib/safe-switch/plan-key`, created on first use by `plan --out`
/// as root (directory 0700, file 0600, both owned by root), readable by
/// root only. A plan whose MAC this key does not reproduce was not written
/// by root on this host.
pub struct PlanKey([u8; KEY_BYTES]);

impl fmt::Debug for PlanKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PlanKey(..)")
    }
}

impl PlanKey {
    /// Reads the key in `dir`; `None` when there is none yet. A key file
    /// that is not a regular file of 32 bytes, owned by root with mode
    /// 0600 (or stricter), in a directory only root may write, is an
    /// error.
    pub fn load(dir: &Path) -> anyhow::Result<Option<PlanKey>> {
        let path = dir.join(KEY_FILE);
        let name = || format!("the saved-plan key {}", path.display());
        let physical = match crate::protect::trusted_path(&path) {
            Ok(p) => p,
            Err(crate::protect::TrustError::Io(e)) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(crate::protect::TrustError::Io(e)) => bail!("{}: {e}", name()),
            Err(crate::protect::TrustError::Untrusted(why)) => bail!("refusing {}: {why}", name()),
        };
        let flags = libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY;
        let file = match std::fs::OpenOptions::new().read(true).custom_flags(flags).open(&physical) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => bail!("{}: {e}", name()),
        };
        let meta = file.metadata().with_context(name)?;
        if !meta.is_file() || meta.uid() != 0 || meta.mode() & 0o077 != 0 {
            bail!(
                "refusing {}: it must be a regular file owned by root with mode 0600 (it is owned by uid {}, mode {:04o})",
                name(),
                meta.uid(),
                meta.mode() & 0o7777
            );
        }
        let mut key = [0u8; KEY_BYTES];
        let mut bytes = Vec::new();
        file.take(KEY_BYTES as u64 + 1).read_to_end(&mut bytes).with_context(name)?;
        if bytes.len() != KEY_BYTES {
            bail!("refusing {}: it is not {KEY_BYTES} bytes long", name());
        }
        key.copy_from_slice(&bytes);
        Ok(Some(PlanKey(key)))
    }

    /// Reads the key in `dir`, creating the directory (0700) and the key
    /// (0600, 32 random bytes) on first use. The key appears atomically:
    /// it is written to a private temporary file and linked into place,
    /// so two runs at once end up with the same key.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<PlanKey> {
        if let Some(key) = PlanKey::load(dir)? {
            return Ok(key);
        }
        use std::os::unix::fs::DirBuilderExt as _;
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => bail!("{}: cannot create the directory for the saved-plan key: {e}", dir.display()),
        }
        let meta = std::fs::symlink_metadata(dir).with_context(|| dir.display().to_string())?;
        if !meta.is_dir() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
            bail!(
                "refusing {} as the saved-plan key's directory: it must be a directory owned by root and writable by root only",
                dir.display()
            );
        }
        let mut key = [0u8; KEY_BYTES];
        fill_random(&mut key).context("cannot read random bytes for the saved-plan key")?;
        let tmp = tempfile::Builder::new()
            .prefix(".plan-key-")
            .tempfile_in(dir)
            .with_context(|| format!("{}: cannot create the saved-plan key", dir.display()))?;
        // tempfile creates the file with mode 0600.
        tmp.as_file().write_all(&key).and_then(|()| tmp.as_file().sync_all()).context("writing the saved-plan key")?;
        match std::fs::hard_link(tmp.path(), dir.join(KEY_FILE)) {
            Ok(()) => Ok(PlanKey(key)),
            // Another run created it first: use that one.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                PlanKey::load(dir)?.ok_or_else(|| anyhow::anyhow!("{}: the saved-plan key vanished", dir.display()))
            }
            Err(e) => bail!("{}: cannot create the saved-plan key: {e}", dir.join(KEY_FILE).display()),
        }
    }

    /// `hmac-sha256:` and the hex HMAC-SHA256 of `bytes`.
    fn mac(&self, bytes: &[u8]) -> String {
        format!("hmac-sha256:{}", hex::encode(self.tag(bytes)))
    }

    fn tag(&self, bytes: &[u8]) -> Vec<u8> {
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable_key_length());
        mac.update(bytes);
        mac.finalize().into_bytes().to_vec()
    }

    /// Tells, in constant time, whether `mac` is this key's MAC of `bytes`.
    fn verifies(&self, bytes: &[u8], mac: &str) -> bool {
        let Some(tag) = mac.strip_prefix("hmac-sha256:").and_then(|h| hex::decode(h).ok()) else {
            return false;
        };
        let Ok(mut m) = <HmacSha256 as KeyInit>::new_from_slice(&self.0) else {
            return false;
        };
        m.update(bytes);
        m.verify_slice(&tag).is_ok()
    }
}

/// HMAC takes keys of any length; this cannot be reached.
fn unreachable_key_length() -> HmacSha256 {
    <HmacSha256 as KeyInit>::new(&Default::default())
}

/// Fills `buf` from the kernel's random number generator.
#[cfg(target_os = "linux")]
fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        match rustix::rand::getrandom(&mut buf[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Fills `buf` from the kernel's random number generator (macOS has no
/// `getrandom`; its `/dev/urandom` never blocks).
#[cfg(not(target_os = "linux"))]
fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read as _;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

/// Checks that a saved plan was written by root on this host: its MAC is
/// what this host's key gives. `key` is `None` when the host has no key
/// yet (no plan was ever signed here).
pub fn verify_mac(saved: &SavedPlan, key: Option<&PlanKey>) -> Result<(), Rejection> {
    match (&saved.mac, key) {
        (Some(mac), Some(key)) if key.verifies(&covered_bytes(saved), mac) => Ok(()),
        (None, _) => Err(Rejection::NotFromThisHost("it carries no MAC (was it written as root?)".to_owned())),
        (Some(_), None) => Err(Rejection::NotFromThisHost("this host has no saved-plan key yet".to_owned())),
        (Some(_), Some(_)) => Err(Rejection::NotFromThisHost("its MAC does not match this host's key".to_owned())),
    }
}

/// The Nix store: `/nix/store`, or in a debug build the directory
/// `SAFE_SWITCH_TEST_STORE_DIR` names (see [`crate::test_hooks`]).
pub fn store_dir() -> PathBuf {
    crate::test_hooks::path(crate::test_hooks::STORE_DIR).unwrap_or_else(|| PathBuf::from("/nix/store"))
}

/// Refuses a target toplevel outside the Nix store: a store path cannot
/// change after it was built, any other directory can (its `activate`
/// could be swapped between `plan` and `apply`). `canonical` is the
/// target's canonical path.
pub fn check_target_in_store(canonical: &Path, store: &Path) -> Result<(), Rejection> {
    let store = std::fs::canonicalize(store).unwrap_or_else(|_| store.to_owned());
    if canonical.parent() == Some(store.as_path()) {
        return Ok(());
    }
    Err(Rejection::TargetOutsideStore { target: canonical.display().to_string(), store: store.display().to_string() })
}

/// Why a saved plan is not carried out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The digest does not match the content.
    DigestMismatch {
        /// The digest in the file.
        recorded: String,
        /// The digest of the content.
        computed: String,
    },
    /// The MAC is missing or does not verify with this host's key.
    NotFromThisHost(String),
    /// The target toplevel is not in the Nix store.
    TargetOutsideStore {
        /// The target's canonical path.
        target: String,
        /// The store.
        store: String,
    },
    /// The plan's own fields disagree with its recorded inputs.
    Inconsistent(String),
    /// The running generation is not the recorded one.
    RunningGenerationChanged {
        /// Recorded.
        recorded: String,
        /// Now.
        now: String,
    },
    /// The target toplevel is not the recorded one, or is gone.
    TargetChanged(String),
    /// Units changed state since the plan was made.
    UnitsChanged(Vec<UnitChange>),
    /// Planning again from the recorded inputs gives another plan.
    PlanMismatch(String),
}

/// How one unit's live state moved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitChange {
    /// The unit.
    pub unit: String,
    /// What changed, as a phrase.
    pub what: String,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::DigestMismatch { recorded, computed } => write!(
                f,
                "the plan file was changed after it was written: its digest is {recorded} but its content hashes to {computed}"
            ),
            Rejection::NotFromThisHost(why) => write!(
                f,
                "the plan was not written by root on this host: {why}; write it with `safe-switch plan --out` as root here"
            ),
            Rejection::TargetOutsideStore { target, store } => write!(
                f,
                "the target toplevel {target} is not in the Nix store ({store}): it could have changed since it was planned \
                 (its activation script is what `apply` runs); use `safe-switch switch`, or a toplevel built into the store"
            ),
            Rejection::Inconsistent(what) => write!(f, "the plan file does not match its recorded inputs: {what}"),
            Rejection::RunningGenerationChanged { recorded, now } => {
                write!(f, "the plan is stale: it was made on running generation {recorded}, but {now} is running now")
            }
            Rejection::TargetChanged(what) => write!(f, "the plan is stale: {what}"),
            Rejection::UnitsChanged(changes) => {
                write!(f, "the plan is stale: units changed since it was made:")?;
                for c in changes {
                    write!(f, "\n  {}: {}", c.unit, c.what)?;
                }
                Ok(())
            }
            Rejection::PlanMismatch(what) => write!(
                f,
                "the plan file does not match a fresh plan from its recorded inputs ({what}); \
                 it was edited, or the machine changed since: plan again"
            ),
        }
    }
}

impl std::error::Error for Rejection {}

/// Checks the digest and that the plan agrees with its recorded inputs.
pub fn verify_digest(saved: &SavedPlan) -> Result<(), Rejection> {
    let computed = digest(saved);
    if computed != saved.digest {
        return Err(Rejection::DigestMismatch { recorded: saved.digest.clone(), computed });
    }
    if saved.plan.old.path != saved.inputs.running_generation {
        return Err(Rejection::Inconsistent(format!(
            "plan.old.path is {} but the recorded running generation is {}",
            saved.plan.old.path, saved.inputs.running_generation
        )));
    }
    if saved.plan.new.path != saved.inputs.target_toplevel {
        return Err(Rejection::Inconsistent(format!(
            "plan.new.path is {} but the recorded target is {}",
            saved.plan.new.path, saved.inputs.target_toplevel
        )));
    }
    if saved.plan.protection.refused {
        return Err(Rejection::Inconsistent("the plan is refused by protection and cannot be applied".to_owned()));
    }
    Ok(())
}

/// What `apply` sees on the machine right before it would act.
#[derive(Clone, Debug)]
pub struct Observed<'a> {
    /// The running generation's store path now.
    pub running_generation: &'a str,
    /// The target toplevel as it resolves now (its canonical path), or
    /// `None` when it no longer exists.
    pub target_toplevel: Option<&'a str>,
    /// The live state now (systemd's).
    pub live: &'a LiveState,
    /// launchd's state now, on a nix-darwin host.
    pub launchd: Option<&'a LaunchdLive>,
}

/// Checks a saved plan against the machine as it is now, and against a
/// plan computed again from the recorded inputs and today's live state.
/// Call [`verify_digest`] first.
pub fn check_fresh(saved: &SavedPlan, now: &Observed<'_>, replanned: &Plan) -> Result<(), Rejection> {
    if now.running_generation != saved.inputs.running_generation {
        return Err(Rejection::RunningGenerationChanged {
            recorded: saved.inputs.running_generation.clone(),
            now: now.running_generation.to_owned(),
        });
    }
    match now.target_toplevel {
        None => {
            return Err(Rejection::TargetChanged(format!(
                "the target toplevel {} no longer exists",
                saved.inputs.target_toplevel
            )));
        }
        Some(t) if t != saved.inputs.target_toplevel => {
            return Err(Rejection::TargetChanged(format!(
                "the target toplevel {} now resolves to {t}",
                saved.inputs.target_toplevel
            )));
        }
        Some(_) => {}
    }
    let changes = match (&saved.inputs.launchd, now.launchd) {
        (None, None) => live_changes(&saved.inputs.live, now.live),
        (Some(recorded), Some(live)) => launchd_changes(&recorded.jobs, live),
        (Some(_), None) => {
            return Err(Rejection::Inconsistent(
                "it was made for launchd (a nix-darwin host), and this host runs systemd".to_owned(),
            ));
        }
        (None, Some(_)) => {
            return Err(Rejection::Inconsistent(
                "it was made for systemd, and this host runs nix-darwin (launchd)".to_owned(),
            ));
        }
    };
    if !changes.is_empty() {
        return Err(Rejection::UnitsChanged(changes));
    }
    if let Some(diff) = first_difference(&saved.plan, replanned) {
        return Err(Rejection::PlanMismatch(diff));
    }
    Ok(())
}

/// Compares recorded unit states with the live state now.
pub fn live_changes(recorded: &BTreeMap<String, Option<RecordedUnit>>, live: &LiveState) -> Vec<UnitChange> {
    let mut out = Vec::new();
    for (unit, before) in recorded {
        let after = RecordedUnit::from_live(live, unit);
        let what = match (before, &after) {
            (None, None) => continue,
            (None, Some(a)) => format!("was not loaded, now {}", a.active_state),
            (Some(b), None) => format!("was {}, now not loaded", b.active_state),
            (Some(b), Some(a)) => {
                let mut parts = Vec::new();
                if b.active_state != a.active_state {
                    parts.push(format!("ActiveState {} -> {}", b.active_state, a.active_state));
                }
                if b.main_pid != a.main_pid {
                    parts.push(format!("MainPID {} -> {}", b.main_pid, a.main_pid));
                }
                if b.invocation_id != a.invocation_id {
                    parts.push(format!(
                        "InvocationID {} -> {} (restarted by someone else)",
                        or_none(&b.invocation_id),
                        or_none(&a.invocation_id)
                    ));
                }
                if parts.is_empty() {
                    continue;
                }
                parts.join(", ")
            }
        };
        out.push(UnitChange { unit: unit.clone(), what });
    }
    out
}

/// Compares recorded launchd jobs with launchd's state now.
pub fn launchd_changes(recorded: &BTreeMap<String, Option<RecordedJob>>, live: &LaunchdLive) -> Vec<UnitChange> {
    let number = |n: Option<u64>| n.map_or("none".to_owned(), |n| n.to_string());
    let mut out = Vec::new();
    for (target, before) in recorded {
        let after = observe_job(live, target);
        let what = match (before, &after) {
            (None, None) => continue,
            (None, Some(_)) => "was not loaded, now loaded".to_owned(),
            (Some(_), None) => "was loaded, now not loaded".to_owned(),
            (Some(b), Some(a)) => {
                let mut parts = Vec::new();
                if b.pid != a.pid {
                    parts.push(format!("pid {} -> {}", number(b.pid.map(u64::from)), number(a.pid.map(u64::from))));
                }
                if b.runs != a.runs {
                    parts.push(format!("runs {} -> {} (restarted by someone else)", number(b.runs), number(a.runs)));
                }
                if parts.is_empty() {
                    continue;
                }
                parts.join(", ")
            }
        };
        out.push(UnitChange { unit: target.clone(), what });
    }
    out
}

fn or_none(s: &str) -> &str {
    if s.is_empty() { "(none)" } else { s }
}

/// Names the first difference between the saved plan and a fresh one, in
/// terms a person can check: a unit's actions, a step, protection.
///
/// Only what the executor acts on counts: the units (actions, deferrals,
/// reasons, changes), the steps, the generations and whether the plan is
/// refused. The list of protections and the diagnostics may legitimately
/// differ (the implicit protection of the process that runs `apply`), and
/// the digest already covers them.
pub fn first_difference(saved: &Plan, fresh: &Plan) -> Option<String> {
    // Provenance (which flake built the target) is not compared: `apply`
    // plans again from the recorded toplevel, which has none.
    if saved.old.path != fresh.old.path || saved.new.path != fresh.new.path {
        return Some("the generations differ".to_owned());
    }
    if saved.units == fresh.units
        && saved.steps == fresh.steps
        && saved.protection.refused == fresh.protection.refused
        && saved.protection.refusals == fresh.protection.refusals
    {
        return None;
    }
    let saved_units: BTreeMap<&str, _> = saved.units.iter().map(|u| (u.unit.as_str(), u)).collect();
    let fresh_units: BTreeMap<&str, _> = fresh.units.iter().map(|u| (u.unit.as_str(), u)).collect();
    for (name, s) in &saved_units {
        match fresh_units.get(name) {
            None => return Some(format!("{name} is in the file but not in a fresh plan")),
            Some(f) if f.actions != s.actions => {
                return Some(format!(
                    "{name}: the file says [{}], a fresh plan says [{}]",
                    join(&s.actions),
                    join(&f.actions)
                ));
            }
            Some(f) if f.deferral != s.deferral => return Some(format!("{name}: deferral differs")),
            Some(f) if f != s => return Some(format!("{name}: reasons or changes differ")),
            Some(_) => {}
        }
    }
    if let Some(name) = fresh_units.keys().find(|n| !saved_units.contains_key(*n)) {
        return Some(format!("{name} is in a fresh plan but not in the file"));
    }
    if saved.steps != fresh.steps {
        return Some("the global steps differ".to_owned());
    }
    if saved.protection.refused != fresh.protection.refused || saved.protection.refusals != fresh.protection.refusals {
        return Some("protection refuses one of them and not the other".to_owned());
    }
    Some("the plans differ".to_owned())
}

fn join(actions: &[plan_model::Action]) -> String {
    actions.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use plan_model::{Action, FORMAT_VERSION, Generation, LiveUnit, Protection, UnitPlan};

    fn live(invocation: &str, pid: u32) -> LiveState {
        let mut live = LiveState::default();
        live.units.insert(
            "a.service".into(),
            LiveUnit {
                active_state: "active".into(),
                main_pid: pid,
                invocation_id: invocation.into(),
                ..LiveUnit::default()
            },
        );
        live
    }

    fn plan() -> Plan {
        Plan {
            format_version: FORMAT_VERSION,
            old: Generation { path: "/old".into(), ..Generation::default() },
            new: Generation { path: "/new".into(), ..Generation::default() },
            units: vec![
                UnitPlan {
                    unit: "a.service".into(),
                    actions: vec![Action::Restart],
                    reasons: vec![],
                    changes: vec![],
                    deferral: None,
                },
                UnitPlan {
                    unit: "b.service".into(),
                    actions: vec![Action::Start],
                    reasons: vec![],
                    changes: vec![],
                    deferral: None,
                },
            ],
            steps: vec![],
            consequences: Vec::new(),
            protection: Protection::default(),
            diagnostics: vec![],
            packages: None,
            reboot: Vec::new(),
            kernel_modules: Vec::new(),
        }
    }

    fn saved() -> SavedPlan {
        let p = plan();
        let inputs = Inputs {
            running_generation: "/old".into(),
            target_toplevel: "/new".into(),
            protection: RecordedProtection::default(),
            live: record_live(&p, &live("1111", 10)),
            launchd: None,
        };
        SavedPlan::new(p, inputs)
    }

    #[test]
    fn records_every_named_unit_and_null_for_unloaded_ones() {
        let s = saved();
        assert_eq!(s.inputs.live["a.service"].as_ref().map(|u| u.invocation_id.as_str()), Some("1111"));
        assert_eq!(s.inputs.live["b.service"], None);
        assert!(s.digest.starts_with("sha256:") && s.digest.len() == 7 + 64, "{}", s.digest);
    }

    #[test]
    fn the_digest_survives_a_round_trip_and_catches_edits() {
        let s = saved();
        let back: SavedPlan = serde_json::from_str(&s.to_json()).unwrap();
        assert_eq!(verify_digest(&back), Ok(()));
        // Reformatting the file does not matter, changing a value does.
        let compact: SavedPlan = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(verify_digest(&compact), Ok(()));
        let mut edited = s.clone();
        edited.plan.units[0].actions = vec![Action::Reload];
        assert!(matches!(verify_digest(&edited), Err(Rejection::DigestMismatch { .. })));
        let mut edited = s.clone();
        edited.inputs.live.insert("a.service".into(), None);
        assert!(matches!(verify_digest(&edited), Err(Rejection::DigestMismatch { .. })));
        // A resealed plan whose own paths disagree with its inputs.
        let mut p = s.plan.clone();
        p.old.path = "/elsewhere".into();
        let resealed = SavedPlan::new(p, s.inputs.clone());
        assert!(matches!(verify_digest(&resealed), Err(Rejection::Inconsistent(_))));
    }

    #[test]
    fn staleness_is_named() {
        let s = saved();
        let fresh = plan();
        let now = live("1111", 10);
        let ok = Observed { running_generation: "/old", target_toplevel: Some("/new"), live: &now, launchd: None };
        assert_eq!(check_fresh(&s, &ok, &fresh), Ok(()));

        let other = Observed { running_generation: "/other", ..ok.clone() };
        assert!(matches!(check_fresh(&s, &other, &fresh), Err(Rejection::RunningGenerationChanged { .. })));
        let gone = Observed { target_toplevel: None, ..ok.clone() };
        assert!(matches!(check_fresh(&s, &gone, &fresh), Err(Rejection::TargetChanged(_))));

        let restarted = live("2222", 11);
        let err = check_fresh(&s, &Observed { live: &restarted, ..ok.clone() }, &fresh).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("a.service: MainPID 10 -> 11, InvocationID 1111 -> 2222"), "{text}");

        let mut appeared = now.clone();
        appeared.units.insert("b.service".into(), LiveUnit { active_state: "active".into(), ..LiveUnit::default() });
        let err = check_fresh(&s, &Observed { live: &appeared, ..ok.clone() }, &fresh).unwrap_err();
        assert!(err.to_string().contains("b.service: was not loaded, now active"), "{err}");

        let mut different = fresh.clone();
        different.units[1].actions = vec![];
        let err = check_fresh(&s, &ok, &different).unwrap_err();
        assert!(err.to_string().contains("b.service: the file says [start], a fresh plan says []"), "{err}");
    }

    #[test]
    fn loading_names_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        std::fs::write(&path, "not json").unwrap();
        assert!(format!("{:#}", SavedPlan::load(&path).unwrap_err()).contains("p.json is not a saved plan"));
        std::fs::write(&path, "{\"format_version\": 1}").unwrap();
        assert!(format!("{:#}", SavedPlan::load(&path).unwrap_err()).contains("plan --out"));
        std::fs::write(&path, "{\"saved_plan_version\": 9}").unwrap();
        assert!(format!("{:#}", SavedPlan::load(&path).unwrap_err()).contains("format 9 is not supported"));
        saved().save(&path).unwrap();
        assert_eq!(SavedPlan::load(&path).unwrap(), saved());
    }

    fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    #[test]
    fn a_plan_signed_with_this_hosts_key_verifies_and_no_other_does() {
        if !is_root() {
            assert!(std::env::var_os("CI").is_none(), "this test needs root under CI");
            say!("SKIPPED a_plan_signed_with_this_hosts_key_verifies_and_no_other_does: needs root");
            return;
        }
        let here = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let key_dir = here.path().join("state");
        assert!(PlanKey::load(&key_dir).unwrap().is_none());
        let key = PlanKey::load_or_create(&key_dir).unwrap();
        let meta = std::fs::metadata(&key_dir).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o700);
        let key_meta = std::fs::metadata(key_dir.join(KEY_FILE)).unwrap();
        assert_eq!(key_meta.mode() & 0o7777, 0o600);
        assert_eq!(key_meta.len(), 32);
        // The same key is read back, and no temporary file is left.
        let again = PlanKey::load_or_create(&key_dir).unwrap();
        assert_eq!(again.0, key.0);
        assert_eq!(std::fs::read_dir(&key_dir).unwrap().count(), 1);

        let mut s = saved();
        assert!(matches!(verify_mac(&s, Some(&key)), Err(Rejection::NotFromThisHost(_))), "unsigned");
        s.sign(&key);
        assert!(s.mac.as_deref().unwrap().starts_with("hmac-sha256:"));
        assert_eq!(verify_mac(&s, Some(&key)), Ok(()));
        let back: SavedPlan = serde_json::from_str(&s.to_json()).unwrap();
        assert_eq!(verify_mac(&back, Some(&key)), Ok(()), "survives the file");
        assert!(matches!(verify_mac(&s, None), Err(Rejection::NotFromThisHost(_))));

        // Another host's key.
        let other = PlanKey::load_or_create(&elsewhere.path().join("state")).unwrap();
        let err = verify_mac(&s, Some(&other)).unwrap_err();
        assert!(err.to_string().contains("not written by root on this host"), "{err}");

        // An edit with the digest recomputed keeps the old MAC: refused.
        let mut edited = s.clone();
        edited.plan.units[0].actions.clear();
        edited.digest = digest(&edited);
        assert_eq!(verify_digest(&edited), Ok(()));
        assert!(matches!(verify_mac(&edited, Some(&key)), Err(Rejection::NotFromThisHost(_))));
        let mut garbage = s.clone();
        garbage.mac = Some("hmac-sha256:zz".into());
        assert!(verify_mac(&garbage, Some(&key)).is_err());
    }

    #[test]
    fn a_key_others_could_read_or_write_is_refused() {
        if !is_root() {
            assert!(std::env::var_os("CI").is_none(), "this test needs root under CI");
            say!("SKIPPED a_key_others_could_read_or_write_is_refused: needs root");
            return;
        }
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let key_dir = dir.path().join("state");
        PlanKey::load_or_create(&key_dir).unwrap();
        let key_file = key_dir.join(KEY_FILE);
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = format!("{:#}", PlanKey::load(&key_dir).unwrap_err());
        assert!(err.contains("mode 0600") && err.contains("0644"), "{err}");
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(&key_file, Some(65534), None).unwrap();
        let err = format!("{:#}", PlanKey::load(&key_dir).unwrap_err());
        assert!(err.contains("uid 65534"), "{err}");
        std::os::unix::fs::chown(&key_file, Some(0), None).unwrap();
        std::fs::set_permissions(&key_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = format!("{:#}", PlanKey::load(&key_dir).unwrap_err());
        assert!(err.contains("writable by others"), "{err}");
        assert!(PlanKey::load_or_create(&key_dir).is_err());
    }

    #[test]
    fn a_mac_is_read_as_plain_hex_only() {
        let key = PlanKey([7; KEY_BYTES]);
        // A message whose MAC has a byte below 0x10: `+a` spells it too
        // for a parser of signed numbers, and must not verify.
        let zero_pair = |mac: &str| mac.as_bytes().chunks(2).skip(6).position(|c| c[0] == b'0');
        let (bytes, mac) =
            (0..=u8::MAX).map(|i| (vec![i], key.mac(&[i]))).find(|(_, m)| zero_pair(m).is_some()).unwrap();
        let hex = mac.strip_prefix("hmac-sha256:").unwrap();
        assert!(key.verifies(&bytes, &mac));
        assert!(key.verifies(&bytes, &format!("hmac-sha256:{}", hex.to_uppercase())));
        let at = zero_pair(&mac).unwrap() * 2;
        let signed = format!("hmac-sha256:{}+{}", &hex[..at], &hex[at + 1..]);
        assert!(!key.verifies(&bytes, &signed), "{signed}");
        assert!(!key.verifies(&bytes, &mac[..mac.len() - 1]), "odd length");
    }

    #[test]
    fn only_a_target_in_the_store_is_applied() {
        let store = tempfile::tempdir().unwrap();
        let store = std::fs::canonicalize(store.path()).unwrap();
        assert_eq!(check_target_in_store(&store.join("abc-nixos-system"), &store), Ok(()));
        let err = check_target_in_store(Path::new("/srv/result"), &store).unwrap_err();
        assert!(matches!(err, Rejection::TargetOutsideStore { .. }));
        assert!(err.to_string().contains("not in the Nix store"), "{err}");
        assert!(check_target_in_store(&store.join("abc/inner"), &store).is_err());
    }

    #[test]
    fn recorded_protections_come_back_as_the_same_request() {
        let request = Request {
            selectors: vec![(Selector::parse("sshd").unwrap(), ProtectionSource::CommandLine)],
            implicit: ImplicitProtections { dbus: true, logind: false, caller: true },
            caller_cgroups: vec!["/system.slice/gitlab-runner.service".into()],
            mode: Mode::Refuse,
        };
        let recorded = RecordedProtection::from_request(&request);
        let back = recorded.to_request().unwrap();
        assert_eq!(back.selectors, request.selectors);
        assert_eq!(back.implicit, request.implicit);
        assert_eq!(back.caller_cgroups, request.caller_cgroups);
        assert_eq!(back.mode, request.mode);
        let args = recorded.to_args().unwrap();
        assert!(args.protect.is_empty() && args.policy.is_none() && args.on_protected.is_none());
        let mut bad = recorded.clone();
        bad.selectors[0].selector = "bad name".into();
        assert!(bad.to_request().is_err());
    }
}
