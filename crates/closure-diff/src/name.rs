//! Package identity from store path names.
//!
//! A store path's base name is `<hash>-<name>`, and by nixpkgs convention
//! `<name>` is `<pname>-<version>`, optionally followed by `-<output>` for
//! outputs other than `out`. Nothing in the store records `pname` and
//! `version` separately, so they are recovered from the name the way Nix
//! itself does for `nix-env` (`DrvName`): the version starts after the
//! first dash that is followed by something other than a letter.
//!
//! On top of that rule this module strips a trailing output name (from a
//! fixed list of output names that nixpkgs uses) and a `.drv` suffix, and
//! keeps the older `<pname>-unstable-<date>` convention together so that
//! it compares with the newer `0-unstable-<date>` versions.

use serde::Serialize;

/// The length of the hash part of a store path's base name.
pub const HASH_LEN: usize = 32;

/// Output names that nixpkgs appends to a store path name after the
/// version (`openssl-3.0.13-bin`). The list is closed on purpose: Nix's
/// own `diff-closures` strips any trailing lowercase word, which also
/// eats genuine name parts such as `system-path`'s `path`.
const OUTPUT_NAMES: &[&str] = &[
    "bin", "debug", "dev", "devdoc", "dist", "doc", "info", "lib", "lib32", "lib64", "man", "modules", "out", "python",
    "static", "terminfo", "tex", "texdoc",
];

/// A store path base name split into package identity, version and output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PackageName {
    /// The package identity (`python3`, `gtk+3`, `nixos-system-host`).
    pub name: String,
    /// The version, empty when the name carries none (`etc`, `source`).
    pub version: String,
    /// The output when the name ends with one (`bin`, `dev`, `man`), or
    /// `drv` for a derivation file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// Splits a name (the part of a store path after `<hash>-`) into name and
/// version with Nix's rule: the version starts after the first `-` that is
/// followed by a character other than an ASCII letter.
pub fn split_drv_name(name: &str) -> (&str, &str) {
    let bytes = name.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'-'
            && let Some(&next) = bytes.get(i + 1)
            && !next.is_ascii_alphabetic()
        {
            return (&name[..i], &name[i + 1..]);
        }
    }
    (name, "")
}

/// Parses the name part of a store path (without the hash).
pub fn parse_name(full: &str) -> PackageName {
    let (name, version, output) = split_name(full);
    PackageName { name: name.to_owned(), version: version.to_owned(), output: output.map(str::to_owned) }
}

/// [`parse_name`] without allocating: `(name, version, output)` as slices
/// of the input (`drv` for a derivation file).
pub fn split_name(full: &str) -> (&str, &str, Option<&str>) {
    let (base, mut output) = match full.strip_suffix(".drv") {
        Some(stripped) => (stripped, Some("drv")),
        None => (full, None),
    };

    // An output suffix only counts when a version precedes it: `nix-doc`
    // is a package of its own, `nix-2.18.1-doc` is the `doc` output of
    // `nix`.
    let mut rest = base;
    if let Some((head, last)) = base.rsplit_once('-')
        && OUTPUT_NAMES.contains(&last)
        && !split_drv_name(head).1.is_empty()
    {
        rest = head;
        if output.is_none() {
            output = Some(last);
        }
    }

    let (mut name, mut version) = split_drv_name(rest);
    // `foo-unstable-2024-01-01` splits into `foo-unstable` / `2024-01-01`
    // under Nix's rule, which would make it a different package from
    // `foo-0-unstable-2024-03-01`. Treat `unstable` as part of the
    // version so the two compare (and `unstable` sorts before `0`).
    if let Some(stripped) = name.strip_suffix("-unstable")
        && !version.is_empty()
        && !stripped.is_empty()
    {
        let start = stripped.len() + 1;
        name = stripped;
        version = &rest[start..];
    }
    (name, version, output)
}

/// Splits a store path's base name into its hash and name parts, checking
/// the hash's length and alphabet (Nix's base-32 digits).
pub fn split_base_name(base: &str) -> Option<(&str, &str)> {
    let hash = base.get(..HASH_LEN)?;
    let name = base.get(HASH_LEN + 1..)?;
    if base.as_bytes().get(HASH_LEN) != Some(&b'-') || name.is_empty() {
        return None;
    }
    if !hash.bytes().all(is_nix_base32) {
        return None;
    }
    Some((hash, name))
}

/// Nix's base-32 alphabet: digits and lowercase letters without e, o, t, u.
fn is_nix_base32(b: u8) -> bool {
    matches!(b, b'0'..=b'9' | b'a'..=b'd' | b'f'..=b'n' | b'p'..=b's' | b'v'..=b'z')
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests may unwrap")]
mod tests {
    use super::*;

    #[test]
    fn nix_rule_splits_at_first_dash_before_non_letter() {
        assert_eq!(split_drv_name("apache-httpd-2.0.48"), ("apache-httpd", "2.0.48"));
        assert_eq!(split_drv_name("python3-3.11.7"), ("python3", "3.11.7"));
        assert_eq!(split_drv_name("etc"), ("etc", ""));
        assert_eq!(split_drv_name("foo-"), ("foo-", ""));
        assert_eq!(split_drv_name("a-.b"), ("a", ".b"));
    }

    #[test]
    fn output_needs_a_version_before_it() {
        let p = parse_name("nix-doc");
        assert_eq!((p.name.as_str(), p.version.as_str(), p.output), ("nix-doc", "", None));
        let p = parse_name("nix-2.18.1-doc");
        assert_eq!(p.name, "nix");
        assert_eq!(p.output.as_deref(), Some("doc"));
    }

    #[test]
    fn base_name_validation() {
        assert!(split_base_name("g2xavc2jpzqxqql693khkwfkdb59d00d-app-2.3").is_some());
        // `e` is not a Nix base-32 digit.
        assert!(split_base_name("e2xavc2jpzqxqql693khkwfkdb59d00d-app").is_none());
        assert!(split_base_name("g2xavc2jpzqxqql693khkwfkdb59d00d").is_none());
        assert!(split_base_name("g2xavc2jpzqxqql693khkwfkdb59d00d-").is_none());
        assert!(split_base_name("short-app").is_none());
        assert!(split_base_name("g2xavc2jpzqxqql693khkwfkdb59d00d_app").is_none());
    }
}
