//! Protection selectors for launchd jobs and how they match labels.
//!
//! A selector is a label (`org.nixos.gitlab-runner`), a glob over labels
//! (`org.nixos.github-runner-*`), or a short name without a dot
//! (`gitlab-runner`, `tailscale*`), which matches the last dot-separated
//! part of a label. Short names let the same `--protect sshd,gitlab-runner`
//! list serve NixOS and nix-darwin hosts, where nix-darwin labels a job
//! `<labelPrefix>.<name>`.

use globset::{Glob, GlobMatcher};
use plan_model::{Mode, ProtectionSource};

use crate::error::SelectorError;

/// What protection applies to a switch.
#[derive(Clone, Debug, Default)]
pub struct Request {
    /// Defer or refuse.
    pub mode: Mode,
    /// The selectors in force.
    pub selectors: Vec<LabelMatcher>,
}

impl Request {
    /// Compiles selectors that all come from the same source, e.g. the
    /// command line's `--protect` list.
    pub fn from_selectors<S: AsRef<str>>(
        mode: Mode,
        selectors: &[S],
        source: &ProtectionSource,
    ) -> Result<Request, SelectorError> {
        let selectors =
            selectors.iter().map(|s| LabelMatcher::new(s.as_ref(), source.clone())).collect::<Result<_, _>>()?;
        Ok(Request { mode, selectors })
    }
}

/// One compiled protection selector.
#[derive(Clone, Debug)]
pub struct LabelMatcher {
    text: String,
    source: ProtectionSource,
    matcher: GlobMatcher,
    short: bool,
}

impl LabelMatcher {
    /// Compiles a selector. Globs use `*`, `?`, `[...]` and `{a,b}`.
    pub fn new(text: &str, source: ProtectionSource) -> Result<LabelMatcher, SelectorError> {
        let invalid = |reason: &str| SelectorError { selector: text.to_owned(), reason: reason.to_owned() };
        if text.is_empty() {
            return Err(invalid("it is empty"));
        }
        if text.contains('/') || text.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(invalid("labels contain no '/', spaces or control characters"));
        }
        let glob = Glob::new(text).map_err(|e| invalid(&e.kind().to_string()))?;
        Ok(LabelMatcher { text: text.to_owned(), source, matcher: glob.compile_matcher(), short: !text.contains('.') })
    }

    /// The selector as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Where the selector came from.
    pub fn source(&self) -> &ProtectionSource {
        &self.source
    }

    /// Tells whether the selector matches a job label.
    pub fn matches(&self, label: &str) -> bool {
        if self.matcher.is_match(label) {
            return true;
        }
        self.short && label.rsplit_once('.').is_some_and(|(_, last)| self.matcher.is_match(last))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail by panicking")]
mod tests {
    use super::*;

    fn sel(s: &str) -> LabelMatcher {
        LabelMatcher::new(s, ProtectionSource::CommandLine).unwrap()
    }

    #[test]
    fn labels_globs_and_short_names() {
        assert!(sel("org.nixos.nix-daemon").matches("org.nixos.nix-daemon"));
        assert!(!sel("org.nixos.nix").matches("org.nixos.nix-daemon"));
        assert!(sel("org.nixos.github-runner-*").matches("org.nixos.github-runner-ci1"));
        assert!(sel("gitlab-runner").matches("org.nixos.gitlab-runner"));
        assert!(sel("tailscale*").matches("com.tailscale.tailscaled"));
        assert!(!sel("runner").matches("org.nixos.gitlab-runner"));
        assert!(!sel("com.*").matches("org.nixos.x"));
    }

    #[test]
    fn rejects_bad_selectors() {
        let err = LabelMatcher::new("a/b", ProtectionSource::CommandLine).unwrap_err();
        assert!(err.to_string().contains("\"a/b\""), "{err}");
        assert!(LabelMatcher::new("org.[x", ProtectionSource::CommandLine).is_err());
        assert!(LabelMatcher::new("", ProtectionSource::CommandLine).is_err());
    }
}
