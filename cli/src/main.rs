//! The `safe-switch` binary: parses the command line and hands over to the
//! library, which owns every decision, including the exit code.

fn main() -> std::process::ExitCode {
    safe_switch_cli::main()
}
