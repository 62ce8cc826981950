//! `plan`, `check`, `switch` and `apply` on a nix-darwin host: the same
//! pipeline as on systemd (resolve the new generation, read the live state,
//! plan from the running generation with protection, print the same
//! reports, save a plan and check it again before applying it, take the
//! lock, isolate, carry the plan out, check, roll back), with launchd
//! behind `launchctl` ([`launchd_live`]) instead of systemd over D-Bus.
//!
//! A host is a nix-darwin one when its running generation
//! (`/run/current-system`) has nix-darwin's layout and no systemd units
//! (see [`crate::cmd::darwin::is_darwin_pair`]). The live state is
//! `launchctl print` of each label the two generations and the protection
//! name. A switch runs the new generation's `activate` up to its launchd
//! steps, then the plan's `launchctl` operations, then the rest of
//! `activate`, then points `/run/current-system` and the system profile at
//! the new generation. A saved plan is the systemd one's format
//! ([`crate::saved`]) with the jobs' state in place of the units'.
//! Its isolation from a dropped connection is a launchd job of its own
//! (`safe-switch.<id>` in the `system` domain), whose output this process
//! relays.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use launchd_live::{DarwinHost, LaunchctlProgram, Launchd, ProgressFile};
use launchd_plan::{Domain, GenerationJobs, Host, JobTarget, LaunchdLive, LaunchdPlan, PrimaryUser, Request};
use plan_model::{ActiveState, Diagnostic, Earlier, LiveState, LiveUnit, Manager, Mode, Pending, Plan, Rule, Severity};
use plan_report::Report;
use sha2::Digest as _;
use systemd_live::RunDir;

use crate::args::{self, ExecutionArgs, OutputArgs, ProtectArgs};
use crate::exit::Outcome;
use crate::saved::{self, Observed, PlanKey, Rejection, SavedPlan};

/// Where a nix-darwin host keeps what safe-switch needs: `/`, and
/// `launchctl`. Tests point both elsewhere ([`crate::test_hooks`]).
#[derive(Clone, Debug)]
pub(crate) struct DarwinEnv {
    /// The root of the host's paths.
    pub root: PathBuf,
    /// The `launchctl` program.
    pub launchctl: PathBuf,
    /// Whether the root is a test's (a switch then needs no root).
    pub test_root: bool,
}

impl DarwinEnv {
    /// This host's.
    pub(crate) fn get() -> DarwinEnv {
        let root = crate::test_hooks::path(crate::test_hooks::DARWIN_ROOT);
        DarwinEnv {
            test_root: root.is_some(),
            root: root.unwrap_or_else(|| PathBuf::from("/")),
            launchctl: crate::test_hooks::path(crate::test_hooks::LAUNCHCTL)
                .unwrap_or_else(|| PathBuf::from(launchd_live::DEFAULT_LAUNCHCTL)),
        }
    }

    fn path(&self, absolute: &str) -> PathBuf {
        launchd_live::below(&self.root, absolute)
    }

    /// `/run/current-system`.
    fn current_system(&self) -> PathBuf {
        self.path(launchd_live::CURRENT_SYSTEM)
    }

    /// `/run/safe-switch`.
    pub(crate) fn run_dir(&self) -> RunDir {
        RunDir::new(self.path(systemd_live::DEFAULT_RUN_DIR))
    }

    fn progress(&self) -> ProgressFile {
        let run = self.run_dir();
        ProgressFile { path: run.path().join("launchd-progress.json"), last: run.path().join("launchd-last.json") }
    }

    fn launchd(&self, timeout: Duration) -> LaunchctlProgram {
        LaunchctlProgram { path: self.launchctl.clone(), timeout }
    }

    fn host(&self) -> DarwinHost {
        DarwinHost::new(self.root.clone(), self.run_dir().path().to_owned())
    }
}

/// Whether this host runs nix-darwin: its running generation has
/// nix-darwin's layout and no systemd units.
pub(crate) fn is_darwin_host() -> bool {
    let current = DarwinEnv::get().current_system();
    current.exists() && crate::cmd::darwin::is_darwin_pair(&current, &current)
}

/// A launchd plan against this host, with what it was made from.
pub(crate) struct DarwinPlan {
    /// The plan, protection applied.
    pub planned: LaunchdPlan,
    /// The running generation's jobs.
    pub old: GenerationJobs,
    /// The new generation's jobs.
    pub new: GenerationJobs,
    /// The live state the plan was made from.
    pub live: LaunchdLive,
    /// The new generation's `activate` without its launchd steps, or why
    /// it cannot be cut.
    pub cut: Result<launchd_live::activation::Cut, launchd_live::Error>,
}

/// Reads and cuts a generation's `activate`.
fn cut_activation(toplevel: &Path) -> Result<launchd_live::activation::Cut, launchd_live::Error> {
    let path = toplevel.join("activate");
    let text = read_script(&path)?;
    launchd_live::activation::cut(&text).map_err(|source| launchd_live::Error::Markers { path, source })
}

/// An activation script, at most 16 MiB of it.
fn read_script(path: &Path) -> Result<String, launchd_live::Error> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(16 << 20).read_to_end(&mut bytes))
        .map_err(|e| launchd_live::Error::Io { path: path.to_owned(), source: e })?;
    String::from_utf8(bytes).map_err(|_| launchd_live::Error::Io {
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"),
    })
}

/// Plans the switch from the running generation to `toplevel` against
/// launchd's live state, with the protection `request`.
pub(crate) fn plan_to(
    env: &DarwinEnv,
    toplevel: &Path,
    request: &Request,
    launchd: &mut dyn Launchd,
) -> anyhow::Result<DarwinPlan> {
    let current = env.current_system();
    let old_path = std::fs::canonicalize(&current)
        .with_context(|| format!("{}: cannot resolve the running generation", current.display()))?;
    let new_path = std::fs::canonicalize(toplevel)
        .with_context(|| format!("{}: cannot resolve the toplevel", toplevel.display()))?;
    let old = launchd_plan::load_generation(&old_path)?;
    let mut new = launchd_plan::load_generation(&new_path)?;
    let cut = cut_activation(&new_path);
    // What `services.openssh.enable` does, planned with the jobs so that
    // protection covers it.
    new.remote_login = cut.as_ref().ok().and_then(|c| c.remote_login);
    // The primary user, as the launchd sections name it (`sudo --user=`):
    // the new generation's, else the running one's.
    let user = match &cut {
        Ok(c) => c.users.first().cloned(),
        Err(_) => None,
    }
    .or_else(|| cut_activation(&old_path).ok().and_then(|c| c.users.first().cloned()));
    let primary_user = match user {
        Some(name) => {
            let account = launchd_live::account(&name).with_context(|| format!("the primary user {name}"))?;
            Some(PrimaryUser { name, uid: account.uid, home: account.home })
        }
        None => None,
    };
    let mut extra: Vec<String> = request
        .selectors
        .iter()
        .map(|s| s.text().to_owned())
        .filter(|t| t.contains('.') && !t.contains(['*', '?', '[', '{']))
        .collect();
    if new.remote_login.is_some() {
        extra.push(launchd_plan::SSHD_LABEL.to_owned());
    }
    let reading =
        launchd_live::read_live(launchd, &old, &new, primary_user, &extra).context("cannot read launchd's state")?;
    let home = reading.live.primary_user.as_ref().map(|u| env.path(&u.home));
    let installed = launchd_plan::load_installed(&env.root, home.as_deref(), &old, &new)?;
    let host = Host { live: reading.live.clone(), installed: Some(installed) };
    let mut planned = launchd_plan::plan(&old, &new, &host, request);
    for warning in reading.warnings {
        planned.plan.diagnostics.push(diagnostic(Severity::Warning, warning));
    }
    if let Err(e) = &cut {
        planned.plan.diagnostics.push(diagnostic(Severity::Warning, format!("`switch` will refuse: {e}")));
    }
    Ok(DarwinPlan { planned, old, new, live: reading.live, cut })
}

fn diagnostic(severity: Severity, message: String) -> Diagnostic {
    Diagnostic { severity, message, unit: None, path: None, line: None }
}

/// Prints the plan with its commands, plist diffs and what it does to
/// earlier deferrals, and writes the `--report` files.
fn print(dp: &DarwinPlan, earlier: &[Earlier], output: &OutputArgs) -> anyhow::Result<()> {
    let commands: Vec<String> = match launchd_plan::operations(&dp.planned) {
        Ok(ops) => ops.iter().map(ToString::to_string).collect(),
        Err(_) => Vec::new(),
    };
    let diffs = launchd_plan::plist_diffs(&dp.planned, &dp.old, &dp.new);
    crate::report::write_outputs(
        &Report { plan: &dp.planned.plan, diffs: &diffs, commands: &commands, pending: earlier, applied: None },
        output,
    )
}

fn no_explain(protect: &ProtectArgs) -> anyhow::Result<()> {
    match &protect.explain {
        Some(unit) => Err(crate::exit::usage(format!(
            "--explain {unit}: launchd plans have no dependency graph to explain; each job's entry names the rule that fired"
        ))),
        None => Ok(()),
    }
}

/// Says on standard error that an earlier launchd switch was interrupted.
fn report_interrupted(env: &DarwinEnv) {
    if let Ok(Some(p)) = env.progress().interrupted() {
        say_text!("warning: {}", p.describe());
        say!("  `safe-switch switch` resumes it before switching.");
    }
}

/// Plans against this host with the options' protection, refusing a
/// `--protect` name that matches no job.
fn plan_asked(
    env: &DarwinEnv,
    toplevel: &Path,
    protect: &ProtectArgs,
    launchd: &mut dyn Launchd,
) -> anyhow::Result<(DarwinPlan, Request)> {
    let request = crate::cmd::darwin::policy(protect)?;
    let dp = plan_to(env, toplevel, &request, launchd)?;
    crate::cmd::darwin::reject_typos(&dp.planned)?;
    Ok((dp, request))
}

/// `plan` on a nix-darwin host.
pub(crate) fn plan(args: args::PlanArgs) -> anyhow::Result<Outcome> {
    no_explain(&args.protect)?;
    let target = crate::host::resolve_source(&args.source, &args.protect)?;
    let env = DarwinEnv::get();
    report_interrupted(&env);
    let mut launchd = env.launchd(Duration::from_secs(60));
    let (mut dp, request) = plan_asked(&env, &target.toplevel, &args.protect, &mut launchd)?;
    dp.planned.plan.new.provenance = Some(target.provenance);
    if let Some(out) = &args.out {
        let inputs = saved::record_launchd_inputs(&dp.planned, &dp.live, &request);
        crate::cmd::plan::save(dp.planned.plan.clone(), inputs, out)?;
    }
    let earlier = earlier_deferrals(&env, &mut launchd, &dp);
    print(&dp, &earlier, &args.output)?;
    Ok(crate::protect::outcome(&dp.planned.plan))
}

/// `check` on a nix-darwin host.
pub(crate) fn check(args: args::CheckArgs) -> anyhow::Result<Outcome> {
    no_explain(&args.protect)?;
    crate::cmd::check::fail_on_alone(&args.fail_on)?;
    let target = crate::host::resolve_source(&args.source, &args.protect)?;
    let env = DarwinEnv::get();
    report_interrupted(&env);
    let mut launchd = env.launchd(Duration::from_secs(60));
    let (mut dp, _) = plan_asked(&env, &target.toplevel, &args.protect, &mut launchd)?;
    dp.planned.plan.new.provenance = Some(target.provenance);
    let earlier = earlier_deferrals(&env, &mut launchd, &dp);
    print(&dp, &earlier, &args.output)?;
    let outcome = crate::cmd::check::outcome(&dp.planned.plan, &args.fail_on);
    if outcome == Outcome::Blocked {
        say!("check failed: the switch touches a protected launchd job (see the plan above)");
    }
    Ok(outcome)
}

/// `switch` on a nix-darwin host.
pub(crate) fn switch(args: args::SwitchArgs) -> anyhow::Result<Outcome> {
    no_explain(&args.protect)?;
    let target = crate::host::resolve_source(&args.source, &args.protect)?;
    let env = DarwinEnv::get();
    preflight(&env, &target.toplevel)?;
    let run = env.run_dir();
    let timeout = Duration::from_secs(args.apply.job_timeout.max(1));
    if !args.apply.no_isolate {
        let built = (args.source.flake.is_some() && args.source.resolved_file.is_none()).then_some(&target);
        let mut launchd = env.launchd(Duration::from_secs(60));
        return crate::isolate::hand_over(&run, built, true, |run, extra| isolate(&mut launchd, run, extra));
    }
    let _lock = crate::isolate::lock(&run, args.apply.isolated)?;
    // The record of earlier deferrals is merged after the switch: one that
    // cannot be read stops it before any change.
    crate::pending::read(&run)?;
    let mut launchd = env.launchd(timeout.max(Duration::from_secs(60)));
    let options = launchd_live::Options { job_timeout: timeout, ..launchd_live::Options::default() };
    if let Some(outcome) = finish_interrupted(&env, &mut launchd, &options, &args.protect)? {
        return Ok(outcome);
    }
    let (mut dp, request) = plan_asked(&env, &target.toplevel, &args.protect, &mut launchd)?;
    dp.planned.plan.new.provenance = Some(target.provenance.clone());
    let earlier = earlier_deferrals(&env, &mut launchd, &dp);
    print(&dp, &earlier, &args.output)?;
    if dp.planned.plan.protection.refused {
        say!("refused: the switch would touch a protected launchd job (see the plan above); nothing was changed");
        return Ok(Outcome::Blocked);
    }
    finish(&env, &dp, &mut launchd, &options, &args.apply, &request)
}

/// Carries out a plan (the caller holds the lock), says how it went, and
/// rolls back when it failed and `--rollback-on-failure` asks for it.
fn finish(
    env: &DarwinEnv,
    dp: &DarwinPlan,
    launchd: &mut dyn Launchd,
    options: &launchd_live::Options,
    apply: &ExecutionArgs,
    request: &Request,
) -> anyhow::Result<Outcome> {
    let report = carry_out(env, dp, launchd, options)?;
    say_text!("{}", report.render_text());
    let user = dp.live.primary_user.as_ref();
    record_deferrals(env, launchd, &dp.planned.plan, &dp.planned.jobs, user);
    if report.success() {
        say!("switched to {}", dp.planned.plan.new.path);
        return Ok(Outcome::Ok);
    }
    if let Some(why) = &report.stopped {
        say!("the switch to {} stopped: {why}", dp.planned.plan.new.path);
    }
    if apply.rollback_on_failure {
        let old = dp.planned.plan.old.path.clone();
        say!("rolling back to {old} with the same protections");
        let back = plan_to(env, Path::new(&old), request, launchd).context("cannot plan the rollback")?;
        let rb = carry_out(env, &back, launchd, options).context("cannot roll back")?;
        say_text!("rollback:\n{}", rb.render_text());
        record_deferrals(env, launchd, &back.planned.plan, &back.planned.jobs, back.live.primary_user.as_ref());
        if rb.success() {
            say!("rolled back to {old}; the switch to {} failed (see above)", dp.planned.plan.new.path);
        } else {
            say!("the rollback to {old} failed as well (see above)");
        }
    }
    Ok(Outcome::UnitsFailed)
}

/// `apply` on a nix-darwin host: the checks of [`crate::saved`] (digest,
/// MAC, a target in the Nix store, the running generation, the state of
/// every job the plan names, a fresh plan with the recorded protections
/// plus those in force now), then the saved plan carried out as `switch`
/// carries out its own: lock, isolation as a launchd job, progress,
/// checks, rollback.
pub(crate) fn apply(args: args::ApplyArgs) -> anyhow::Result<Outcome> {
    let refuse = |r: &Rejection| Ok(crate::cmd::apply::refuse(&args.plan, r));
    let saved = SavedPlan::load(&args.plan)?;
    if let Err(refusal) = saved::verify_digest(&saved) {
        return refuse(&refusal);
    }
    if saved.inputs.launchd.is_none() {
        return refuse(&Rejection::Inconsistent(
            "it was made for systemd, and this host runs nix-darwin (launchd)".to_owned(),
        ));
    }
    let env = DarwinEnv::get();
    let target = Path::new(&saved.inputs.target_toplevel);
    if !target.exists() {
        return refuse(&Rejection::TargetChanged(format!("the target toplevel {} no longer exists", target.display())));
    }
    preflight(&env, target)?;
    let key = PlanKey::load(&saved::state_dir())?;
    if let Err(refusal) = saved::verify_mac(&saved, key.as_ref()) {
        return refuse(&refusal);
    }
    let canonical_target = std::fs::canonicalize(target)
        .with_context(|| format!("{}: cannot resolve the target toplevel; nothing was changed", target.display()))?;
    if let Err(refusal) = saved::check_target_in_store(&canonical_target, &saved::store_dir()) {
        return refuse(&refusal);
    }
    let run = env.run_dir();
    if !args.apply.no_isolate {
        let mut launchd = env.launchd(Duration::from_secs(60));
        return crate::isolate::hand_over(&run, None, true, |run, extra| isolate(&mut launchd, run, extra));
    }
    let _lock = crate::isolate::lock(&run, args.apply.isolated)?;
    crate::pending::read(&run)?;
    let timeout = Duration::from_secs(args.apply.job_timeout.max(1));
    let mut launchd = env.launchd(timeout.max(Duration::from_secs(60)));
    let options = launchd_live::Options { job_timeout: timeout, ..launchd_live::Options::default() };
    if let Some(interrupted) = env.progress().interrupted()? {
        bail!(
            "{}an earlier switch was interrupted; finish it with `safe-switch switch` and plan again; nothing was changed",
            interrupted.describe()
        );
    }
    let current = env.current_system();
    let current = std::fs::canonicalize(&current)
        .with_context(|| format!("{}: cannot resolve the running generation; nothing was changed", current.display()))?
        .display()
        .to_string();
    if current != saved.inputs.running_generation {
        return refuse(&Rejection::RunningGenerationChanged {
            recorded: saved.inputs.running_generation.clone(),
            now: current,
        });
    }
    // Plan again against launchd as it is now, with the recorded
    // protections plus those in force now (the system policy as it is
    // today): a plan made with fewer gets other actions, and is refused.
    let request =
        union(saved.inputs.protection.to_launchd_request()?, crate::cmd::darwin::policy(&ProtectArgs::default())?);
    let mut dp = plan_to(&env, &canonical_target, &request, &mut launchd)?;
    let canonical_target = canonical_target.display().to_string();
    let no_units = LiveState::default();
    let observed = Observed {
        running_generation: &current,
        target_toplevel: Some(&canonical_target),
        live: &no_units,
        launchd: Some(&dp.live),
    };
    if let Err(refusal) = saved::check_fresh(&saved, &observed, &dp.planned.plan) {
        return refuse(&refusal);
    }

    say!("applying the saved plan {} ({})", args.plan.display(), saved.digest);
    crate::report::write_outputs(&Report::of(&saved.plan), &args.output)?;
    // The saved actions, which are the fresh plan's; the fresh plan's
    // protections, which hold at least the recorded ones, for the check
    // afterwards.
    dp.planned.plan = plan_model::Plan { protection: dp.planned.plan.protection.clone(), ..saved.plan.clone() };
    finish(&env, &dp, &mut launchd, &options, &args.apply, &request)
}

/// The recorded protections and those in force now: every selector of
/// both, the stricter mode.
fn union(recorded: Request, now: Request) -> Request {
    let mut selectors = recorded.selectors;
    for selector in now.selectors {
        if !selectors.iter().any(|s| s.text() == selector.text() && s.source() == selector.source()) {
            selectors.push(selector);
        }
    }
    Request { mode: recorded.mode.stricter(now.mode), selectors }
}

/// Refuses, before any change, what cannot be switched: a caller that is
/// not root, a toplevel without an executable `activate`.
fn preflight(env: &DarwinEnv, toplevel: &Path) -> anyhow::Result<()> {
    if !env.test_root && !rustix::process::geteuid().is_root() {
        bail!(
            "switch must run as root (it loads and unloads launchd jobs and runs the activation script); \
             nothing was changed. `safe-switch plan` shows the plan without root"
        );
    }
    crate::cmd::switch::require_executable(&toplevel.join("activate"), "the toplevel has no activation script")
}

/// Carries out a plan made against this host (the caller holds the lock).
fn carry_out(
    env: &DarwinEnv,
    dp: &DarwinPlan,
    launchd: &mut dyn Launchd,
    options: &launchd_live::Options,
) -> anyhow::Result<launchd_live::Report> {
    let cut = match &dp.cut {
        Ok(cut) => cut,
        Err(e) => bail!("{e}"),
    };
    let removes_daemon = dp.old.jobs.iter().any(|j| j.label_or_stem() == launchd_plan::NIX_DAEMON_LABEL)
        && !dp.new.jobs.iter().any(|j| j.label_or_stem() == launchd_plan::NIX_DAEMON_LABEL);
    if cut.nix_daemon == launchd_live::activation::NixDaemon::Unmanaged && removes_daemon {
        bail!(
            "the new generation hands the Nix daemon over to an unmanaged installation (nix.enable = false); \
             safe-switch does not carry that hand-over out, use darwin-rebuild; nothing was changed"
        );
    }
    let ops = launchd_plan::operations(&dp.planned)?;
    let steps = launchd_live::steps(&dp.planned, cut, &ops);
    let before = launchd_live::protected_running(&dp.planned.plan, &dp.live);
    let mut machine = env.host();
    Ok(launchd_live::apply(
        &dp.planned,
        steps,
        before,
        launchd,
        &mut machine,
        &env.progress(),
        options,
        &mut launchd_live::Stderr,
    )?)
}

/// Finishes a launchd switch that was interrupted, if there is one: its
/// steps not done are carried out, but those of jobs protected now, which
/// are dropped (in refuse mode the resume is refused, exit 3). Returns the
/// outcome to exit with when it could not be finished.
fn finish_interrupted(
    env: &DarwinEnv,
    launchd: &mut dyn Launchd,
    options: &launchd_live::Options,
    protect: &ProtectArgs,
) -> anyhow::Result<Option<Outcome>> {
    let file = env.progress();
    let Some(mut progress) = file.interrupted()? else {
        return Ok(None);
    };
    say_text!("{}", progress.describe());
    let target = progress.plan.new.path.clone();
    let request: Request = crate::cmd::darwin::policy(protect)?;
    let protected_now = |label: &str| request.selectors.iter().any(|s| s.matches(label));
    let mut dropped = Vec::new();
    progress.steps.retain(|record| match &record.step {
        launchd_live::Step::Operation { label, .. }
            if record.state != launchd_live::StepState::Done && protected_now(label) =>
        {
            dropped.push(format!("{} ({label} is protected now)", record.step.describe()));
            false
        }
        _ => true,
    });
    if !dropped.is_empty() && request.mode == Mode::Refuse {
        say!(
            "refused to finish the interrupted switch to {target}: what remains of it touches jobs protected now: {}; nothing more was changed",
            dropped.join(", ")
        );
        return Ok(Some(Outcome::Blocked));
    }
    for line in &dropped {
        say!("  deferred: {line}");
    }
    say!("resuming it first, with the protections in force now");
    let resumed = progress.plan.clone();
    let report = launchd_live::resume(progress, launchd, &mut env.host(), &file, options, &mut launchd_live::Stderr)?;
    say_text!("{}", report.render_text());
    record_deferrals(env, launchd, &resumed, &BTreeMap::new(), running_primary_user(env).as_ref());
    if !report.success() {
        say!("the interrupted switch to {target} finished with failures; not switching further");
        return Ok(Some(Outcome::UnitsFailed));
    }
    say!("the interrupted switch to {target} is finished");
    Ok(None)
}

/// Runs this command line again as a launchd job of its own in the
/// `system` domain, relays its output and returns its outcome: the switch
/// goes on when the connection that started it drops.
fn isolate(launchd: &mut dyn Launchd, run: &RunDir, extra: &[String]) -> anyhow::Result<Outcome> {
    let argv = crate::isolate::isolated_argv(extra)?;
    let label = format!("safe-switch.{}", crate::isolate::isolated_id());
    let (stdout, stderr) = run.unit_output_paths(&label)?;
    let plist_path = run.path().join(format!("{label}.plist"));
    let mut dict = plist::Dictionary::new();
    dict.insert("Label".into(), label.clone().into());
    dict.insert("ProgramArguments".into(), plist::Value::Array(argv.into_iter().map(Into::into).collect()));
    let envs: plist::Dictionary =
        crate::isolate::isolated_env().into_iter().map(|(k, v)| (k, plist::Value::from(v))).collect();
    dict.insert("EnvironmentVariables".into(), plist::Value::Dictionary(envs));
    dict.insert("RunAtLoad".into(), true.into());
    dict.insert("KeepAlive".into(), false.into());
    dict.insert("AbandonProcessGroup".into(), true.into());
    dict.insert("StandardOutPath".into(), stdout.display().to_string().into());
    dict.insert("StandardErrorPath".into(), stderr.display().to_string().into());
    if let Ok(dir) = std::env::current_dir() {
        dict.insert("WorkingDirectory".into(), dir.display().to_string().into());
    }
    plist::Value::Dictionary(dict)
        .to_file_xml(&plist_path)
        .with_context(|| format!("{}: cannot write; nothing was changed", plist_path.display()))?;
    say!(
        "applying in the launchd job system/{label}: the switch goes on even if this connection drops; its output is kept in {}",
        stderr.display()
    );
    let cleanup = |launchd: &mut dyn Launchd| {
        let _ = launchd.run(&["bootout".to_owned(), format!("system/{label}")]);
        let _ = std::fs::remove_file(&plist_path);
    };
    let bootstrap = launchd.run(&["bootstrap".to_owned(), "system".to_owned(), plist_path.display().to_string()])?;
    if bootstrap.code != 0 {
        cleanup(launchd);
        bail!(
            "cannot start the switch as the launchd job system/{label} (bootstrap exited with status {}: {}); nothing was changed",
            bootstrap.code,
            bootstrap.first_error_line()
        );
    }
    let mut out = crate::isolate::Relay::new(stdout.clone(), Box::new(std::io::stdout()));
    let mut err = crate::isolate::Relay::new(stderr.clone(), Box::new(std::io::stderr()));
    let code = loop {
        out.pump();
        err.pump();
        match launchd_live::print(launchd, Domain::System, &label) {
            Ok(Some(job)) if job.pid.is_none() && job.last_exit_code.is_some() => {
                break job.last_exit_code.unwrap_or(1);
            }
            Ok(Some(_)) => {}
            Ok(None) => break 1,
            Err(e) => say!("warning: {e}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    out.pump();
    err.pump();
    cleanup(launchd);
    let _ = std::fs::remove_file(&stdout);
    let _ = std::fs::remove_file(&stderr);
    if code < 0 {
        bail!(
            "the switch in the launchd job system/{label} was killed by signal {}; run `safe-switch switch` again to see where it stopped and resume it",
            -code
        );
    }
    crate::isolate::isolated_outcome(i32::try_from(code).unwrap_or(1), &format!("the launchd job system/{label}"), run)
}

/// The most bytes of an installed plist read for its digest.
const PLIST_LIMIT: u64 = 1 << 20;

/// The primary user of the running generation, as its `activate` names it.
fn running_primary_user(env: &DarwinEnv) -> Option<PrimaryUser> {
    let current = std::fs::canonicalize(env.current_system()).ok()?;
    let name = cut_activation(&current).ok()?.users.into_iter().next()?;
    let account = launchd_live::account(&name).ok()?;
    Some(PrimaryUser { name, uid: account.uid, home: account.home })
}

/// What identifies, now, the instance of each job that `pending` records
/// (of launchd) or `plan` defers, as the record of pending deferrals keeps
/// it (see [`Manager::Launchd`]): a live state holding every such job that
/// is loaded, with that identity as its invocation. A job whose domain
/// does not answer keeps its recorded identity.
fn job_instances(
    env: &DarwinEnv,
    launchd: &mut dyn Launchd,
    pending: &Pending,
    plan: Option<&Plan>,
    jobs: &BTreeMap<String, JobTarget>,
    user: Option<&PrimaryUser>,
) -> LiveState {
    let mut wanted: BTreeMap<&str, (Vec<Rule>, Option<&str>)> = BTreeMap::new();
    for d in pending.deferrals.iter().filter(|d| d.manager == Manager::Launchd) {
        wanted.insert(&d.unit, (d.reasons.iter().map(|r| r.rule).collect(), Some(&d.invocation)));
    }
    for unit in plan.into_iter().flat_map(Plan::deferred) {
        let recorded = wanted.get(unit.unit.as_str()).and_then(|(_, r)| *r);
        wanted.insert(&unit.unit, (unit.reasons.iter().map(|r| r.rule).collect(), recorded));
    }
    let mut live = LiveState::default();
    for (name, (rules, recorded)) in wanted {
        // Only a restart for a changed nix.conf is done by restarting the
        // process; anything else by loading another plist.
        let by_pid = !rules.is_empty() && rules.iter().all(|r| *r == Rule::NixConfChanged);
        let mut unanswered = false;
        let mut found = None;
        for (domain, label) in job_places(name, jobs.get(name), user) {
            match launchd_live::print(launchd, domain, &label) {
                Ok(Some(job)) => {
                    found = Some(job_identity(env, domain, &label, &job, by_pid, user));
                    break;
                }
                Ok(None) => {}
                Err(_) => unanswered = true,
            }
        }
        let invocation = match (found, recorded) {
            (Some(id), _) => id,
            (None, Some(recorded)) if unanswered => recorded.to_owned(),
            (None, _) => continue,
        };
        let unit = LiveUnit { active_state: ActiveState::Active, invocation_id: invocation, ..LiveUnit::default() };
        live.units.insert(name.to_owned(), unit);
    }
    live
}

/// Where a job a plan names (`unit`) may be loaded: its plan's domain and
/// label when the plan has it; else, by the name (`daemon:LABEL`,
/// `agent:LABEL` when a label is shared), the `system` domain and then
/// the primary user's GUI domain.
fn job_places(unit: &str, target: Option<&JobTarget>, user: Option<&PrimaryUser>) -> Vec<(Domain, String)> {
    if let Some(t) = target
        && let Some(domain) = t.domain
    {
        return vec![(domain, t.loaded_label.clone().unwrap_or_else(|| t.label.clone()))];
    }
    let gui = user.map(|u| Domain::Gui(u.uid));
    let (domains, label) = match unit.split_once(':') {
        Some(("daemon", label)) => (vec![Some(Domain::System)], label),
        Some(("agent" | "user-agent", label)) => (vec![gui], label),
        _ => (vec![Some(Domain::System), gui], unit),
    };
    domains.into_iter().flatten().map(|d| (d, label.to_owned())).collect()
}

/// The identity of a loaded job's instance: the digest of the plist
/// installed for it (nix-darwin names it after the label), or `loaded`
/// when it has none there (macOS's own sshd); with `by_pid`, its pid too.
fn job_identity(
    env: &DarwinEnv,
    domain: Domain,
    label: &str,
    job: &launchd_plan::LiveJob,
    by_pid: bool,
    user: Option<&PrimaryUser>,
) -> String {
    let mut dirs = Vec::new();
    match domain {
        Domain::System => dirs.push("/Library/LaunchDaemons".to_owned()),
        Domain::Gui(_) => {
            dirs.push("/Library/LaunchAgents".to_owned());
            dirs.extend(user.map(|u| format!("{}/Library/LaunchAgents", u.home.trim_end_matches('/'))));
        }
    }
    let plist = dirs.iter().find_map(|dir| read_installed(&env.path(&format!("{dir}/{label}.plist"))));
    let mut id = match plist {
        Some(bytes) => format!("plist sha256:{}", hex::encode(sha2::Sha256::digest(&bytes))),
        None => "loaded".to_owned(),
    };
    if by_pid {
        id.push_str(&match job.pid {
            Some(pid) => format!(", pid {pid}"),
            None => ", not running".to_owned(),
        });
    }
    id
}

/// An installed plist's bytes: a regular file, opened without blocking,
/// at most [`PLIST_LIMIT`] of it; `None` when there is none.
fn read_installed(path: &Path) -> Option<Vec<u8>> {
    use rustix::fs::{Mode, OFlags};
    use std::io::Read as _;
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let file = std::fs::File::from(rustix::fs::open(path, flags, Mode::empty()).ok()?);
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut bytes = Vec::new();
    file.take(PLIST_LIMIT).read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

/// What a plan does to the launchd deferrals earlier switches left
/// pending, for its reports. A record that cannot be read (not root)
/// shows nothing; an invalid one is a warning.
fn earlier_deferrals(env: &DarwinEnv, launchd: &mut dyn Launchd, dp: &DarwinPlan) -> Vec<Earlier> {
    let launchd_deferrals = |p: &plan_model::Pending| p.deferrals.iter().any(|d| d.manager == Manager::Launchd);
    let Some(pending) = crate::pending::read_for_preview(&env.run_dir(), launchd_deferrals) else {
        return Vec::new();
    };
    let user = dp.live.primary_user.as_ref();
    let live = job_instances(env, launchd, &pending, Some(&dp.planned.plan), &dp.planned.jobs, user);
    pending.merge(&dp.planned.plan, Manager::Launchd, &live, crate::pending::now_unix()).earlier
}

/// Merges a plan that was just carried out (all of it, or as far as it
/// got) into the record of pending deferrals, as a switch on systemd does
/// ([`crate::pending::record`]): what it deferred is added, what it
/// carried out, or what was reloaded since, is dropped. The caller holds
/// the lock. A failure is a warning: the switch itself is done.
fn record_deferrals(
    env: &DarwinEnv,
    launchd: &mut dyn Launchd,
    plan: &Plan,
    jobs: &BTreeMap<String, JobTarget>,
    user: Option<&PrimaryUser>,
) {
    let run = env.run_dir();
    let pending = match run.read_pending() {
        Ok(p) => p,
        Err(e) => return say!("warning: the deferrals of this switch were not recorded: {e}"),
    };
    if pending.deferrals.iter().all(|d| d.manager != Manager::Launchd) && plan.deferred().next().is_none() {
        return;
    }
    let live = job_instances(env, launchd, &pending, Some(plan), jobs, user);
    let merged = pending.merge(plan, Manager::Launchd, &live, crate::pending::now_unix()).pending;
    if let Err(e) = run.save_pending(&merged) {
        say!("warning: the deferrals of this switch were not recorded: {e}");
    }
}

/// `pending` on a nix-darwin host: the record, less the launchd deferrals
/// whose job was reloaded or unloaded since.
pub(crate) fn pending(args: args::PendingArgs) -> anyhow::Result<Outcome> {
    let env = DarwinEnv::get();
    let record = crate::pending::read(&env.run_dir())?;
    let pending = if record.deferrals.iter().all(|d| d.manager != Manager::Launchd) {
        record
    } else {
        let mut launchd = env.launchd(Duration::from_secs(60));
        let user = running_primary_user(&env);
        let live = job_instances(&env, &mut launchd, &record, None, &BTreeMap::new(), user.as_ref());
        record.checked(Manager::Launchd, &live).pending
    };
    crate::report::write_pending(&pending, &args.output)?;
    Ok(if pending.is_empty() { Outcome::Ok } else { Outcome::Blocked })
}

/// `settle` on a nix-darwin host: not built; refused before any change.
pub(crate) fn settle() -> anyhow::Result<Outcome> {
    Err(crate::exit::usage(
        "settle is not built for nix-darwin hosts yet; `safe-switch pending` lists the deferred launchd jobs, \
         and a later `safe-switch switch` that does not protect a job carries its deferral out; nothing was changed",
    ))
}
