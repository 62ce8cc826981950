//! `plan`, `check` and `switch` on a nix-darwin host: the same pipeline as
//! on systemd (resolve the new generation, read the live state, plan from
//! the running generation with protection, print the same reports, take
//! the lock, isolate, carry the plan out, check, roll back), with launchd
//! behind `launchctl` ([`launchd_live`]) instead of systemd over D-Bus.
//!
//! A host is a nix-darwin one when its running generation
//! (`/run/current-system`) has nix-darwin's layout and no systemd units
//! (see [`crate::cmd::darwin::is_darwin_pair`]). The live state is
//! `launchctl print` of each label the two generations and the protection
//! name. A switch runs the new generation's `activate` without its launchd
//! steps, then the plan's `launchctl` operations, then points
//! `/run/current-system` and the system profile at the new generation.
//! Its isolation from a dropped connection is a launchd job of its own
//! (`safe-switch.<id>` in the `system` domain), whose output this process
//! relays.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use launchd_live::{DarwinHost, LaunchctlProgram, Launchd, ProgressFile};
use launchd_plan::{Domain, GenerationJobs, Host, LaunchdLive, LaunchdPlan, PrimaryUser, Request};
use plan_model::{Diagnostic, Mode, Severity};
use plan_report::Report;
use systemd_live::RunDir;

use crate::args::{self, OutputArgs, ProtectArgs};
use crate::exit::Outcome;

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
/// launchd's live state, with protection.
pub(crate) fn plan_to(
    env: &DarwinEnv,
    toplevel: &Path,
    protect: &ProtectArgs,
    launchd: &mut dyn Launchd,
) -> anyhow::Result<DarwinPlan> {
    let current = env.current_system();
    let old_path = std::fs::canonicalize(&current)
        .with_context(|| format!("{}: cannot resolve the running generation", current.display()))?;
    let new_path = std::fs::canonicalize(toplevel)
        .with_context(|| format!("{}: cannot resolve the toplevel", toplevel.display()))?;
    let old = launchd_plan::load_generation(&old_path)?;
    let new = launchd_plan::load_generation(&new_path)?;
    let cut = cut_activation(&new_path);
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
    let request = crate::cmd::darwin::policy(protect)?;
    let extra: Vec<String> = request
        .selectors
        .iter()
        .map(|s| s.text().to_owned())
        .filter(|t| t.contains('.') && !t.contains(['*', '?', '[', '{']))
        .collect();
    let reading =
        launchd_live::read_live(launchd, &old, &new, primary_user, &extra).context("cannot read launchd's state")?;
    let home = reading.live.primary_user.as_ref().map(|u| env.path(&u.home));
    let installed = launchd_plan::load_installed(&env.root, home.as_deref(), &old, &new)?;
    let host = Host { live: reading.live.clone(), installed: Some(installed) };
    let mut planned = launchd_plan::plan(&old, &new, &host, &request);
    crate::cmd::darwin::reject_typos(&planned)?;
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

/// Prints the plan with its commands and plist diffs, and writes the
/// `--report` files.
fn print(dp: &DarwinPlan, output: &OutputArgs) -> anyhow::Result<()> {
    let commands: Vec<String> = match launchd_plan::operations(&dp.planned) {
        Ok(ops) => ops.iter().map(ToString::to_string).collect(),
        Err(_) => Vec::new(),
    };
    let diffs = launchd_plan::plist_diffs(&dp.planned, &dp.old, &dp.new);
    crate::report::write_outputs(
        &Report { plan: &dp.planned.plan, diffs: &diffs, commands: &commands, pending: &[], applied: None },
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

/// `plan` on a nix-darwin host.
pub(crate) fn plan(args: args::PlanArgs) -> anyhow::Result<Outcome> {
    no_explain(&args.protect)?;
    if let Some(out) = &args.out {
        return Err(crate::exit::usage(format!(
            "--out {}: saved plans (`plan --out`, `apply`) are not supported on nix-darwin hosts yet; use `switch`",
            out.display()
        )));
    }
    let target = crate::host::resolve_source(&args.source, &args.protect)?;
    let env = DarwinEnv::get();
    report_interrupted(&env);
    let mut launchd = env.launchd(Duration::from_secs(60));
    let mut dp = plan_to(&env, &target.toplevel, &args.protect, &mut launchd)?;
    dp.planned.plan.new.provenance = Some(target.provenance);
    print(&dp, &args.output)?;
    Ok(crate::protect::outcome(&dp.planned.plan))
}

/// `check` on a nix-darwin host.
pub(crate) fn check(args: args::CheckArgs) -> anyhow::Result<Outcome> {
    no_explain(&args.protect)?;
    let target = crate::host::resolve_source(&args.source, &args.protect)?;
    let env = DarwinEnv::get();
    report_interrupted(&env);
    let mut launchd = env.launchd(Duration::from_secs(60));
    let mut dp = plan_to(&env, &target.toplevel, &args.protect, &mut launchd)?;
    dp.planned.plan.new.provenance = Some(target.provenance);
    print(&dp, &args.output)?;
    let outcome = crate::cmd::check::outcome(&dp.planned.plan, args.fail_on);
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
    let mut launchd = env.launchd(timeout.max(Duration::from_secs(60)));
    let options = launchd_live::Options { job_timeout: timeout, ..launchd_live::Options::default() };
    if let Some(outcome) = finish_interrupted(&env, &mut launchd, &options, &args.protect)? {
        return Ok(outcome);
    }
    let mut dp = plan_to(&env, &target.toplevel, &args.protect, &mut launchd)?;
    dp.planned.plan.new.provenance = Some(target.provenance.clone());
    print(&dp, &args.output)?;
    if dp.planned.plan.protection.refused {
        say!("refused: the switch would touch a protected launchd job (see the plan above); nothing was changed");
        return Ok(Outcome::Blocked);
    }
    let report = carry_out(&env, &dp, &mut launchd, &options)?;
    say_text!("{}", report.render_text());
    if report.success() {
        say!("switched to {}", dp.planned.plan.new.path);
        return Ok(Outcome::Ok);
    }
    if let Some(why) = &report.stopped {
        say!("the switch to {} stopped: {why}", dp.planned.plan.new.path);
    }
    if args.apply.rollback_on_failure {
        let old = dp.planned.plan.old.path.clone();
        say!("rolling back to {old} with the same protections");
        let back = plan_to(&env, Path::new(&old), &args.protect, &mut launchd).context("cannot plan the rollback")?;
        let rb = carry_out(&env, &back, &mut launchd, &options).context("cannot roll back")?;
        say_text!("rollback:\n{}", rb.render_text());
        if rb.success() {
            say!("rolled back to {old}; the switch to {} failed (see above)", dp.planned.plan.new.path);
        } else {
            say!("the rollback to {old} failed as well (see above)");
        }
    }
    Ok(Outcome::UnitsFailed)
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
    let activate = toplevel.join("activate");
    let meta = std::fs::metadata(&activate).with_context(|| {
        format!(
            "{}: the toplevel has no activation script; refusing to switch, nothing was changed",
            activate.display()
        )
    })?;
    use std::os::unix::fs::PermissionsExt;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        bail!("{}: not an executable file; refusing to switch, nothing was changed", activate.display());
    }
    Ok(())
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
    let steps = launchd_live::steps(&dp.planned, cut.script.clone(), &ops);
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
    let report = launchd_live::resume(progress, launchd, &mut env.host(), &file, options, &mut launchd_live::Stderr)?;
    say_text!("{}", report.render_text());
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
