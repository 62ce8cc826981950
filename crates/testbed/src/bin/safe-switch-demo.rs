//! The safe-switch demo: a CI runner host switched to a new generation
//! while an SSH session into it keeps ticking.
//!
//! It boots a throwaway systemd (the test bed) with the example generation
//! A, opens an SSH session, shows `safe-switch plan`,
//! runs `safe-switch switch --protect sshd,gitlab-runner` inside the bed,
//! and then shows what happened to the session and to every unit. Every
//! line of safe-switch output is real. Run it as root through
//! `scripts/demo`, or directly:
//!
//! ```text
//! safe-switch-demo --safe-switch PATH [--protect UNITS] [--no-isolate] [--keep]
//! safe-switch-demo --export-examples DIR
//! ```
//!
//! `--export-examples` writes the two generations as self-contained
//! directories (how the repository's `examples/ci-runner` is made).
//!
//! Exit status: 0 when the switch succeeded and the protected units and the
//! session were untouched, 1 otherwise.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use testbed::example::{ci_runner_a, ci_runner_b};
use testbed::{Config, TestBed, UnitState};

const USAGE: &str = "usage: safe-switch-demo --safe-switch PATH [--protect UNITS] [--no-isolate] [--keep]
       safe-switch-demo --export-examples DIR";
const TICK: Duration = Duration::from_millis(200);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

struct Options {
    safe_switch: PathBuf,
    protect: String,
    no_isolate: bool,
    keep: bool,
}

/// What the command line asks for.
enum Run {
    /// The demo.
    Demo(Options),
    /// Write the example generations into a directory.
    Export(PathBuf),
}

fn parse_args() -> Result<Run, String> {
    let mut safe_switch = None;
    let mut protect = "sshd,gitlab-runner".to_owned();
    let mut no_isolate = false;
    let mut keep = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--export-examples" => {
                return Ok(Run::Export(PathBuf::from(args.next().ok_or(USAGE)?)));
            }
            "--safe-switch" => safe_switch = Some(PathBuf::from(args.next().ok_or(USAGE)?)),
            "--protect" => protect = args.next().ok_or(USAGE)?,
            "--no-isolate" => no_isolate = true,
            "--keep" => keep = true,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    let safe_switch = safe_switch.ok_or(USAGE)?;
    let safe_switch = std::fs::canonicalize(&safe_switch)
        .map_err(|e| format!("the safe-switch binary {}: {e}", safe_switch.display()))?;
    Ok(Run::Demo(Options { safe_switch, protect, no_isolate, keep }))
}

fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(Run::Demo(options)) => options,
        Ok(Run::Export(dir)) => {
            return match testbed::example::export(&dir) {
                Ok(()) => {
                    println!("wrote {} and {}", dir.join("a").display(), dir.join("b").display());
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("safe-switch-demo: {err}");
                    ExitCode::from(1)
                }
            };
        }
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    if let Some(reason) = testbed::unsupported_reason() {
        eprintln!("safe-switch-demo: {reason}");
        return ExitCode::from(1);
    }
    match demo(&options) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(err) => {
            eprintln!("safe-switch-demo: {err}");
            ExitCode::from(1)
        }
    }
}

/// Prints `text` in bold when standard output is a terminal.
fn bold(text: &str) -> String {
    if std::io::stdout().is_terminal() { format!("\x1b[1m{text}\x1b[0m") } else { text.to_owned() }
}

fn heading(text: &str) {
    println!("\n{}", bold(&format!("== {text}")));
}

fn shown_command(args: &[&str]) {
    println!("{}", bold(&format!("$ {}", args.join(" "))));
}

fn demo(options: &Options) -> Result<bool, testbed::Error> {
    heading("Booting a throwaway systemd with generation A (a CI runner host)");
    let mut config = Config::new(ci_runner_a());
    config.keep = config.keep || options.keep;
    let bed = TestBed::boot(&config)?;
    let a = bed.current_generation()?;
    let b = bed.build_generation(&ci_runner_b())?;
    println!(
        "systemd {} is PID 1 of its own PID and mount namespaces (host PID {}), booted in {:.2} s",
        systemd_version(),
        bed.pid(),
        bed.boot_time().as_secs_f64()
    );
    println!("generation A: {}\ngeneration B: {}", a.display(), b.display());

    let units = units();
    let unit_refs: Vec<&str> = units.iter().map(String::as_str).collect();
    let before = bed.unit_states(&unit_refs)?;
    print_states(&before);
    // The runner's child stands for a CI build in progress: restarting the
    // runner would kill it.
    let build = children(&bed, before["gitlab-runner.service"].main_pid).into_iter().next();
    if let Some(build) = build {
        println!("\na CI build is running under gitlab-runner.service as PID {build}");
    }

    heading(&format!("Opening an SSH session to root@127.0.0.1:{} that ticks every 200 ms", bed.ssh_port()));
    let mut session = bed.ssh_session(TICK)?;
    session.wait_for_ticks(3, Duration::from_secs(10))?;
    println!("ticks so far: {}", session.tick_count());

    let bin = options.safe_switch.to_string_lossy().into_owned();
    let b_str = b.to_string_lossy().into_owned();

    heading("The plan against the live systemd");
    run_shown(&bed, &["safe-switch", "plan", "--toplevel", &b_str, "--protect", &options.protect], &bin)?;

    heading("The switch");
    let mut switch = vec!["safe-switch", "switch", "--toplevel", &b_str, "--protect", &options.protect];
    if options.no_isolate {
        switch.push("--no-isolate");
    }
    let switched_at = session.elapsed();
    let status = run_shown(&bed, &switch, &bin)?;
    let after = bed.unit_states(&unit_refs)?;
    let n = session.tick_count();
    // Let the session run a little longer, to show it is still alive.
    let still_ticking = session.wait_for_ticks(n + 5, Duration::from_secs(5)).is_ok();

    heading("What happened");
    let report = session.finish();
    let session_ok = still_ticking && report.alive_at_end && report.consecutive();
    println!(
        "SSH session: {} ticks ({} after the switch began), numbered without a hole: {}, \
         longest pause {:.2} s, still connected: {}",
        report.ticks.len(),
        report.ticks_after(switched_at),
        yes_no(report.consecutive()),
        report.max_gap().as_secs_f64(),
        yes_no(report.alive_at_end)
    );
    println!("/run/current-system -> {}", bed.current_generation()?.display());
    print_changes(&before, &after);
    if let Some(build) = build {
        let alive = bed.run(&["test", "-d", &format!("/proc/{build}")])?.success();
        println!("\nthe CI build (PID {build}) is still running: {}", yes_no(alive));
    }

    let protected_ok = ["sshd.service", "gitlab-runner.service"]
        .iter()
        .filter(|u| options.protect.contains(u.trim_end_matches(".service")))
        .all(|u| before[*u].main_pid == after[*u].main_pid && before[*u].invocation_id == after[*u].invocation_id);
    let switched = status.success();
    println!(
        "\nswitch exit status: {}; protected units untouched: {}; SSH session intact: {}",
        status.code().map_or_else(|| "killed".to_owned(), |c| c.to_string()),
        yes_no(protected_ok),
        yes_no(session_ok)
    );

    heading(&format!("Tearing down (SIGKILL to host PID {})", bed.pid()));
    let pid = bed.pid();
    bed.shutdown()?;
    if Path::new(&format!("/proc/{pid}")).exists() {
        println!("the test bed's systemd (PID {pid}) is still running");
        return Ok(false);
    }
    println!("done: the test bed's systemd and every process under it are gone");
    Ok(switched && protected_ok && session_ok)
}

/// Runs a safe-switch command inside the bed, printing the command line
/// (with `safe-switch` for the binary's path) and its output as it comes.
fn run_shown(bed: &TestBed, argv: &[&str], bin: &str) -> Result<std::process::ExitStatus, testbed::Error> {
    shown_command(argv);
    let mut cmd = bed.command(bin);
    cmd.args(&argv[1..]);
    let status = testbed::exec::run_inherited(&mut cmd, COMMAND_TIMEOUT)?;
    if !status.success() {
        println!("(exit status {})", status.code().map_or_else(|| "killed".to_owned(), |c| c.to_string()));
    }
    Ok(status)
}

/// The PIDs of the children of `pid` inside the bed.
fn children(bed: &TestBed, pid: u32) -> Vec<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    match bed.run(&["cat", &path]) {
        Ok(out) => out.stdout.split_whitespace().filter_map(|p| p.parse().ok()).collect(),
        Err(_) => Vec::new(),
    }
}

fn units() -> Vec<String> {
    let mut units: Vec<String> = ci_runner_a().units().into_iter().chain(ci_runner_b().units()).collect();
    units.sort();
    units.dedup();
    units
}

fn print_states(states: &BTreeMap<String, UnitState>) {
    println!("\n{:<24} {:<10} {:>8}", "UNIT", "STATE", "MAIN PID");
    for (unit, state) in states {
        println!("{unit:<24} {:<10} {:>8}", state.active_state, pid(state));
    }
}

fn print_changes(before: &BTreeMap<String, UnitState>, after: &BTreeMap<String, UnitState>) {
    println!("\n{:<24} {:<10} {:<10} {:>10} {:>9}  EFFECT", "UNIT", "BEFORE", "AFTER", "PID BEFORE", "PID AFTER");
    for (unit, b) in before {
        let Some(a) = after.get(unit) else { continue };
        let effect = match (b.active_state == "active", a.active_state == "active") {
            (false, true) => "started",
            (true, false) => "stopped",
            (true, true) if b.invocation_id != a.invocation_id => "restarted",
            _ => "untouched",
        };
        println!("{unit:<24} {:<10} {:<10} {:>10} {:>9}  {effect}", b.active_state, a.active_state, pid(b), pid(a));
    }
}

fn pid(state: &UnitState) -> String {
    if state.main_pid == 0 { "-".to_owned() } else { state.main_pid.to_string() }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "NO" }
}

fn systemd_version() -> String {
    let out = std::process::Command::new(Path::new("/lib/systemd/systemd")).arg("--version").output();
    out.ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(|l| l.trim_start_matches("systemd ").to_owned()))
        .unwrap_or_default()
}
