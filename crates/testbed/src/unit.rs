//! The text of the unit files tests put into their generations.

/// A service that runs until it is stopped (`/bin/sleep infinity`), with
/// one `Environment=` line: a generation that changes `env` changes the
/// unit.
pub fn daemon(description: &str, env: &str) -> String {
    format!("[Unit]\nDescription={description}\n\n[Service]\nEnvironment={env}\nExecStart=/bin/sleep infinity\n")
}

/// A oneshot service that stays active once it ran
/// (`RemainAfterExit=yes`), with the rest of its `[Service]` section
/// (`ExecStart=` among it) in `service_lines`.
pub fn oneshot(description: &str, service_lines: &str) -> String {
    format!("[Unit]\nDescription={description}\n\n[Service]\nType=oneshot\nRemainAfterExit=yes\n{service_lines}")
}
