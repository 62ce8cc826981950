//! Nix for tests: the one offline configuration every test that runs Nix
//! uses, and the one probe of whether Nix can build here.
//!
//! Debian's `nix-bin`, run as root without further set-up, builds as the
//! users of the group `nixbld` (`build-users-group`), which nothing
//! creates, and in a sandbox. The configuration here makes a root store
//! usable by itself: builds run as the calling user
//! (`build-users-group =`), unsandboxed, without a binary cache, with
//! flakes on and, for tests that use flakes, a local registry file, so
//! nothing is fetched from the network. It is passed as `NIX_CONFIG`, so
//! the machine's own `nix.conf` is left alone.
//!
//! [`unusable_reason`] runs a real tiny build (a derivation whose builder is
//! `/bin/sh`) once per test process: finding `nix` and being root is not
//! enough to know that Nix can build.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::exec;

/// The offline configuration, for `NIX_CONFIG`. `registry` is a flake
/// registry file (JSON, version 2) for tests that resolve flake names;
/// without it, Nix's default (a download) applies, so tests that use
/// flakes must give one.
pub fn config(registry: Option<&Path>) -> String {
    let mut text = String::from(
        "experimental-features = nix-command flakes\n\
         build-users-group =\n\
         sandbox = false\n\
         substituters =\n\
         warn-dirty = false\n",
    );
    if let Some(registry) = registry {
        text.push_str(&format!("flake-registry = {}\n", registry.display()));
    }
    text
}

/// A command running `program` (`nix`, `nix-build`, `nix-store`...) with
/// the offline configuration and no flake registry.
pub fn command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("NIX_CONFIG", config(None));
    cmd
}

/// Why Nix cannot build here with the offline configuration, or `None`
/// when it can: `nix` builds a tiny derivation (with a new nonce, so it is
/// really built) into this machine's `/nix/store`. Tried once per process.
pub fn unusable_reason() -> Option<String> {
    static PROBE: OnceLock<Option<String>> = OnceLock::new();
    PROBE.get_or_init(|| probe(&[])).clone()
}

/// The derivation the probe builds.
fn probe_expression(nonce: &str) -> String {
    format!(
        r#"derivation {{
  name = "safe-switch-nix-probe";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "echo ok > $out" ];
  nonce = "{nonce}";
}}"#
    )
}

/// The probe, with `env` set on top of the offline configuration.
fn probe(env: &[(&str, &str)]) -> Option<String> {
    let nonce = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
    );
    let mut cmd = command("nix");
    cmd.envs(env.iter().copied());
    cmd.args(["build", "--no-link", "--json", "--impure", "--expr", &probe_expression(&nonce)]);
    let out = match exec::run(&mut cmd, Duration::from_secs(120)) {
        Ok(out) => out,
        Err(crate::Error::Spawn { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Some("`nix` is not installed (scripts/deps installs nix-bin)".to_owned());
        }
        Err(err) => return Some(format!("a tiny build with `nix build` could not run: {err}")),
    };
    if !out.success() {
        return Some(format!("a tiny build with `nix build` fails: {}", nix_error(&out.stderr)));
    }
    // Without root or a daemon, Nix may build into a store elsewhere (a
    // chroot store under the home directory): the tests need this
    // machine's.
    let Some(path) = out_path(&out.stdout) else {
        return Some(format!("`nix build --json` printed no output path: {}", out.stdout.trim()));
    };
    if !Path::new(&path).exists() {
        return Some(format!("Nix built {path}, which is not in this machine's /nix/store (another store is in use)"));
    }
    None
}

/// Nix's error report: from its first `error:` line on (warnings before
/// it left out), or the whole standard error when there is none.
fn nix_error(stderr: &str) -> String {
    let plain = strip_ansi(stderr);
    let lines: Vec<&str> = plain.lines().collect();
    let from = lines.iter().position(|l| l.starts_with("error:")).unwrap_or(0);
    lines[from..].join("\n").trim().to_owned()
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The first `"out"` path of `nix build --json`'s answer.
fn out_path(stdout: &str) -> Option<String> {
    let rest = &stdout[stdout.find("\"out\":\"")? + "\"out\":\"".len()..];
    Some(rest[..rest.find('"')?].to_owned())
}

/// Decides whether something that runs Nix (a benchmark; tests use
/// [`require!`](macro@crate::require)) runs. Returns `true` when Nix can
/// build here. Otherwise, under `CI=true` it panics with the probe's
/// reason (Nix's own error), and elsewhere it prints
/// `SKIPPED <test>: <why>` and returns `false`.
pub fn available(test: &str) -> bool {
    match unusable_reason() {
        None => true,
        Some(reason) => {
            crate::require::skip_or_fail(test, &reason);
            false
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_makes_a_root_store_usable_by_itself() {
        let text = config(None);
        for line in
            ["build-users-group =", "sandbox = false", "substituters =", "experimental-features = nix-command flakes"]
        {
            assert!(text.lines().any(|l| l == line), "{line} missing from {text}");
        }
        assert!(!text.contains("flake-registry"));
        assert!(config(Some(Path::new("/tmp/r.json"))).contains("\nflake-registry = /tmp/r.json\n"));
    }

    #[test]
    fn nix_s_error_is_kept_and_warnings_before_it_dropped() {
        let stderr = "warning: error: unable to download 'https://cache.nixos.org/nix-cache-info'\n\
                      warning: the group 'nixbld' specified in 'build-users-group' does not exist\n\
                      \u{1b}[31;1merror:\u{1b}[0m the group 'nixbld' specified in 'build-users-group' does not exist\n";
        assert_eq!(nix_error(stderr), "error: the group 'nixbld' specified in 'build-users-group' does not exist");
        assert_eq!(nix_error("killed\n"), "killed");
    }

    #[test]
    fn a_nix_that_cannot_build_is_reported_with_nix_s_error() {
        crate::require!(nix);
        // `nix` runs, but its store (a daemon that is not there) cannot
        // build: the probe says so in Nix's words.
        let reason = probe(&[("NIX_REMOTE", "unix:///nonexistent/daemon-socket")]).unwrap();
        assert!(reason.starts_with("a tiny build with `nix build` fails: error: "), "{reason}");
        assert!(reason.contains("'/nonexistent/daemon-socket'"), "{reason}");
    }

    #[test]
    fn the_output_path_is_read_from_nix_s_json() {
        let json = r#"[{"drvPath":"/nix/store/c-probe.drv","outputs":{"out":"/nix/store/j-probe"}}]"#;
        assert_eq!(out_path(json).as_deref(), Some("/nix/store/j-probe"));
        assert_eq!(out_path("[]"), None);
    }
}
