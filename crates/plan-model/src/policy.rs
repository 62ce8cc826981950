//! Protection selectors and the policy file.
//!
//! A [`Selector`] is one word of `--protect` or one entry of the policy
//! file's `protect` list. A [`Policy`] is the parsed policy file
//! (`/etc/safe-switch/policy.toml` by default), written by whoever owns the
//! base system: what is protected, the default mode, and which implicit
//! protections are switched off.
//!
//! This module only parses and validates text. Matching selectors against
//! unit names happens in the planner (`systemd-plan`), and reading the file,
//! with its ownership check, happens in the command-line program.
//!
//! The policy file format:
//!
//! ```toml
//! # Units that must not be stopped or restarted by a switch.
//! protect = ["sshd", "gitlab-runner*", "postgresql.service"]
//! # What happens when an action touches one: "defer" (the default) or
//! # "refuse".
//! mode = "refuse"
//! # The base configuration a composed switch extends (see `--base`).
//! base = "/etc/nixos"
//!
//! # Implicit protections, all on unless switched off here.
//! [implicit]
//! dbus = true     # dbus.service, dbus-broker.service, dbus.socket
//! logind = true   # systemd-logind.service
//! caller = true   # the units whose cgroup holds safe-switch itself
//! ```
//!
//! Unknown keys are errors, so that a misspelt `protect` cannot silently
//! drop a protection.
//!
//! Several policies can be in force at once (the system's policy file and
//! one added with `--policy`); [`Policy::merge`] combines them so that
//! adding a policy never weakens another.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::plan::Mode;
use crate::unit_name;

/// One protection selector, as written by the user.
///
/// - A bare name (`sshd`) covers `sshd.service`, `sshd.socket` and every
///   instance `sshd@*.service`: NixOS's socket-activated sshd is
///   `sshd.socket` plus `sshd@.service`, and protecting "sshd" must cover
///   both ways of running it.
/// - A full unit name (`sshd.service`) covers exactly that unit.
/// - A glob (`gitlab-runner*`, `docker*.service`) covers every unit name it
///   matches; `*`, `?` and `[...]` are the glob characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Selector {
    /// A bare name without a unit type suffix.
    Name(String),
    /// A full unit name.
    Unit(String),
    /// A glob over unit names.
    Glob(String),
}

/// A selector that cannot be used, with the reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid protection selector {selector:?}: {reason}")]
pub struct SelectorError {
    /// The selector as written.
    pub selector: String,
    /// Why it is rejected.
    pub reason: &'static str,
}

impl Selector {
    /// Parses and validates one selector.
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        let err = |reason| SelectorError { selector: text.to_owned(), reason };
        if text.is_empty() {
            return Err(err("empty selector"));
        }
        if text.len() > 256 {
            return Err(err("longer than a unit name can be"));
        }
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(err("contains white space or control characters"));
        }
        if text.contains('/') {
            return Err(err("unit names cannot contain '/'"));
        }
        // Brace alternation would clash with the comma that separates
        // selectors on the command line, so it is not offered.
        if text.contains(['{', '}', ',']) {
            return Err(err("'{', '}' and ',' are not allowed in a selector"));
        }
        if text.contains(['*', '?', '[']) {
            if text.contains('[') && !text.contains(']') {
                return Err(err("unclosed '[' in glob"));
            }
            return Ok(Selector::Glob(text.to_owned()));
        }
        if unit_name::is_valid(text) {
            return Ok(Selector::Unit(text.to_owned()));
        }
        let name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '.' | '-' | '\\' | '@');
        if !text.chars().all(name_char) {
            return Err(err("only letters, digits and ':_.-\\@' may appear in a unit name"));
        }
        if text.ends_with('.') || text.starts_with('@') {
            return Err(err("not a unit name"));
        }
        Ok(Selector::Name(text.to_owned()))
    }

    /// The selector as written.
    pub fn as_str(&self) -> &str {
        match self {
            Selector::Name(s) | Selector::Unit(s) | Selector::Glob(s) => s,
        }
    }

    /// The glob patterns over unit names that together make up this
    /// selector. Exact names are returned with glob characters escaped, so
    /// every selector can be compiled the same way.
    pub fn patterns(&self) -> Vec<String> {
        match self {
            Selector::Name(name) => {
                let name = escape_glob(name);
                vec![format!("{name}.service"), format!("{name}.socket"), format!("{name}@*.service")]
            }
            Selector::Unit(unit) => vec![escape_glob(unit)],
            Selector::Glob(glob) => vec![glob.clone()],
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Escapes the characters a glob would interpret. Unit names may contain a
/// backslash (from `systemd-escape`), which globs treat as an escape.
fn escape_glob(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '{' | '}' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Which implicit protections are in force. All are on unless the policy
/// file switches them off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImplicitProtections {
    /// The D-Bus daemon or broker (`dbus.service`, `dbus-broker.service`,
    /// `dbus.socket`): may be reloaded, never stopped or restarted.
    pub dbus: bool,
    /// `systemd-logind.service`.
    pub logind: bool,
    /// The service or scope and the slices that hold the running
    /// safe-switch process.
    pub caller: bool,
}

impl Default for ImplicitProtections {
    fn default() -> Self {
        ImplicitProtections { dbus: true, logind: true, caller: true }
    }
}

impl ImplicitProtections {
    /// The protections in force under two policies: each one stays on
    /// unless both switch it off.
    pub fn union(self, other: ImplicitProtections) -> ImplicitProtections {
        ImplicitProtections {
            dbus: self.dbus || other.dbus,
            logind: self.logind || other.logind,
            caller: self.caller || other.caller,
        }
    }
}

impl Mode {
    /// The stricter of two modes: `refuse` wins over `defer`.
    pub fn stricter(self, other: Mode) -> Mode {
        if self == Mode::Refuse || other == Mode::Refuse { Mode::Refuse } else { Mode::Defer }
    }
}

/// The parsed policy file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Protected units, with the 1-based line each selector is on.
    pub protect: Vec<(Selector, u32)>,
    /// The default mode; `None` leaves it to the command line, else defer.
    pub mode: Option<Mode>,
    /// Which implicit protections are in force.
    pub implicit: ImplicitProtections,
    /// The base flake a composed switch extends by default.
    pub base: Option<String>,
    /// The base's configuration to extend by default.
    pub host: Option<String>,
}

/// A policy file that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
pub struct PolicyError {
    /// The 1-based line of the problem, when known.
    pub line: Option<u32>,
    /// What is wrong.
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    protect: Vec<toml::Spanned<String>>,
    #[serde(default)]
    mode: Option<Mode>,
    #[serde(default)]
    implicit: ImplicitProtections,
    #[serde(default)]
    base: Option<String>,
    #[serde(default)]
    host: Option<String>,
}

impl Policy {
    /// Parses a policy file's text. Errors name the line.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        // Where each line ends, found once: counting newlines up to every
        // entry would take time quadratic in the file's length.
        let newlines: Vec<usize> = text.match_indices('\n').map(|(at, _)| at).collect();
        let line_of = |offset: usize| -> u32 {
            let line = newlines.partition_point(|&at| at < offset) + 1;
            u32::try_from(line).unwrap_or(u32::MAX)
        };
        let raw: RawPolicy = toml::from_str(text).map_err(|e| PolicyError {
            line: e.span().map(|s| line_of(s.start)),
            message: e.message().trim_end().to_owned(),
        })?;
        let mut protect = Vec::with_capacity(raw.protect.len());
        for entry in raw.protect {
            let line = line_of(entry.span().start);
            let selector = Selector::parse(entry.get_ref())
                .map_err(|e| PolicyError { line: Some(line), message: e.to_string() })?;
            protect.push((selector, line));
        }
        Ok(Policy { protect, mode: raw.mode, implicit: raw.implicit, base: raw.base, host: raw.host })
    }

    /// Combines the policies in force, the system's first, so that none
    /// is weakened by another: the protected units are all of theirs, an
    /// implicit protection is off only when every policy switches it off,
    /// the stricter mode wins, and `base` and `host` come from the first
    /// policy that sets them. No policy at all gives the default policy.
    pub fn merge(policies: &[&Policy]) -> Policy {
        let Some((first, rest)) = policies.split_first() else {
            return Policy::default();
        };
        let mut merged = (*first).clone();
        for p in rest {
            merged.protect.extend(p.protect.iter().cloned());
            merged.mode = match (merged.mode, p.mode) {
                (Some(a), Some(b)) => Some(a.stricter(b)),
                (a, b) => a.or(b),
            };
            merged.implicit = merged.implicit.union(p.implicit);
            merged.base = merged.base.or_else(|| p.base.clone());
            merged.host = merged.host.or_else(|| p.host.clone());
        }
        merged
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on bad fixtures")]
mod tests {
    use super::*;

    #[test]
    fn selector_kinds() {
        assert_eq!(Selector::parse("sshd"), Ok(Selector::Name("sshd".into())));
        assert_eq!(Selector::parse("sshd.service"), Ok(Selector::Unit("sshd.service".into())));
        assert_eq!(Selector::parse("docker*.service"), Ok(Selector::Glob("docker*.service".into())));
        assert_eq!(Selector::parse("getty@tty1"), Ok(Selector::Name("getty@tty1".into())));
        assert_eq!(Selector::parse("foo.bar"), Ok(Selector::Name("foo.bar".into())));
        assert!(Selector::parse("").is_err());
        assert!(Selector::parse("a b").is_err());
        assert!(Selector::parse("../x.service").is_err());
        assert!(Selector::parse("{a,b}").is_err());
        assert!(Selector::parse("x[ab").is_err());
        assert!(Selector::parse("bad$name").is_err());
    }

    #[test]
    fn selector_patterns_escape_names() {
        assert_eq!(Selector::Name("sshd".into()).patterns(), vec!["sshd.service", "sshd.socket", "sshd@*.service"]);
        assert_eq!(Selector::Unit(r"dev-x\x2d1.swap".into()).patterns(), vec![r"dev-x\\x2d1.swap"]);
    }

    #[test]
    fn parses_full_policy() {
        let policy = Policy::parse(
            "protect = [\n  \"sshd\",\n  \"gitlab-runner*\",\n]\nmode = \"refuse\"\n[implicit]\nlogind = false\n",
        )
        .unwrap();
        assert_eq!(
            policy.protect,
            vec![(Selector::Name("sshd".into()), 2), (Selector::Glob("gitlab-runner*".into()), 3)]
        );
        assert_eq!(policy.mode, Some(Mode::Refuse));
        assert_eq!(policy.implicit, ImplicitProtections { dbus: true, logind: false, caller: true });
    }

    #[test]
    fn empty_policy_is_default() {
        assert_eq!(Policy::parse("").unwrap(), Policy::default());
    }

    #[test]
    fn merged_policies_only_add() {
        let system = Policy::parse(
            "protect = [\"sshd\"]\nmode = \"refuse\"\nbase = \"/etc/nixos\"\n[implicit]\nlogind = false\ndbus = false\n",
        )
        .unwrap();
        let added = Policy::parse(
            "protect = [\"docker\"]\nmode = \"defer\"\nbase = \"/srv/base\"\nhost = \"ci\"\n[implicit]\ncaller = false\ndbus = false\n",
        )
        .unwrap();
        let merged = Policy::merge(&[&system, &added]);
        let names: Vec<&str> = merged.protect.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(names, ["sshd", "docker"]);
        assert_eq!(merged.mode, Some(Mode::Refuse), "defer in the added policy does not weaken refuse");
        assert_eq!(merged.implicit, ImplicitProtections { dbus: false, logind: true, caller: true });
        assert_eq!(merged.base.as_deref(), Some("/etc/nixos"), "the system policy's base comes first");
        assert_eq!(merged.host.as_deref(), Some("ci"));
        assert_eq!(Policy::merge(&[&added, &Policy::default()]).mode, Some(Mode::Defer));
        assert_eq!(Policy::merge(&[&Policy::default(), &system]).mode, Some(Mode::Refuse));
        assert_eq!(Policy::merge(&[]), Policy::default());
        assert_eq!(Mode::Defer.stricter(Mode::Refuse), Mode::Refuse);
        assert_eq!(Mode::Defer.stricter(Mode::Defer), Mode::Defer);
    }

    #[test]
    fn errors_name_the_line() {
        let err = Policy::parse("protect = [\"sshd\"]\n\nmode = \"sometimes\"\n").unwrap_err();
        assert_eq!(err.line, Some(3), "{err}");
        assert!(err.to_string().starts_with("line 3: "), "{err}");

        let err = Policy::parse("protect = [\"sshd\"]\nprotcet = [\"x\"]\n").unwrap_err();
        assert_eq!(err.line, Some(2), "{err}");
        assert!(err.message.contains("protcet"), "{err}");

        let err = Policy::parse("protect = [\n\"ok\",\n\"not ok\"]\n").unwrap_err();
        assert_eq!(err.line, Some(3), "{err}");
        assert!(err.message.contains("white space"), "{err}");

        let err = Policy::parse("protect = [\"sshd\"\n").unwrap_err();
        assert!(err.line.is_some(), "{err}");
    }
}
