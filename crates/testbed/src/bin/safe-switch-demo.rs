//! The safe-switch demo (see [`testbed::demo`]): the example CI runner
//! host switched from generation A to B twice, each time on a throwaway
//! systemd of its own with an SSH session ticking and a CI build running,
//! first without protection, then with `--protect sshd,gitlab-runner`,
//! and the difference. Every line of safe-switch output is real. Run it
//! as root through `scripts/demo`, or directly:
//!
//! ```text
//! safe-switch-demo --safe-switch PATH [--protect UNITS] [--no-isolate] [--keep]
//! safe-switch-demo --export-examples DIR
//! ```
//!
//! `--export-examples` writes the two generations as self-contained
//! directories (how the repository's `examples/ci-runner` is made).
//!
//! Exit status: 0 when the demo showed what it claims (without protection
//! sshd and the runner restarted and the build killed; with it, the
//! protected units, the build and the session untouched), 1 otherwise.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use testbed::demo::{self, Options};

const USAGE: &str = "usage: safe-switch-demo --safe-switch PATH [--protect UNITS] [--no-isolate] [--keep]
       safe-switch-demo --export-examples DIR";

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
    let bold = std::io::stdout().is_terminal();
    Ok(Run::Demo(Options { safe_switch, protect, no_isolate, keep, bold }))
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
    let outcome = match demo::run(&options, &mut std::io::stdout().lock()) {
        Ok(outcome) => outcome,
        Err(err) => {
            eprintln!("safe-switch-demo: {err}");
            return ExitCode::from(1);
        }
    };
    match demo::verdict(&outcome, &options.protect) {
        Ok(()) => ExitCode::SUCCESS,
        Err(wrong) => {
            eprintln!("safe-switch-demo: the demo did not show what it claims: {wrong}");
            ExitCode::from(1)
        }
    }
}
