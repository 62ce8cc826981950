//! Version ordering, the way `nix-env` orders versions, plus a notion of
//! versions that cannot be ordered (commit hashes).
//!
//! A version is a sequence of components separated by `.` or `-`; a
//! component is either a run of digits or a run of other characters.
//! Components compare pairwise: two numbers numerically; a missing
//! component before a number (so `1.0 < 1.0.1`); `pre` before anything
//! else (so `2.0pre1 < 2.0`); a word before a number (so `2.3a < 2.3.1`);
//! two words as byte strings.

use std::cmp::Ordering;

/// Compares two versions with `nix-env`'s ordering.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let mut ca = Components::new(a);
    let mut cb = Components::new(b);
    loop {
        match (ca.next(), cb.next()) {
            (None, None) => return Ordering::Equal,
            (x, y) => {
                let x = x.unwrap_or("");
                let y = y.unwrap_or("");
                match compare_components(x, y) {
                    Ordering::Equal => continue,
                    other => return other,
                }
            }
        }
    }
}

/// The components of a version, in order.
struct Components<'a> {
    rest: &'a str,
}

impl<'a> Components<'a> {
    fn new(s: &'a str) -> Self {
        Components { rest: s }
    }
}

impl<'a> Iterator for Components<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let s = self.rest.trim_start_matches(['.', '-']);
        if s.is_empty() {
            self.rest = s;
            return None;
        }
        let first_is_digit = s.as_bytes().first().is_some_and(u8::is_ascii_digit);
        let end = s
            .char_indices()
            .find(
                |&(_, c)| {
                    if first_is_digit { !c.is_ascii_digit() } else { c.is_ascii_digit() || c == '.' || c == '-' }
                },
            )
            .map_or(s.len(), |(i, _)| i);
        let (component, rest) = s.split_at(end);
        self.rest = rest;
        Some(component)
    }
}

fn is_number(c: &str) -> bool {
    !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit())
}

/// Compares two digit strings as numbers of any length.
fn compare_numbers(a: &str, b: &str) -> Ordering {
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

fn compare_components(a: &str, b: &str) -> Ordering {
    if a == b {
        return Ordering::Equal;
    }
    if is_less(a, b) {
        Ordering::Less
    } else if is_less(b, a) {
        Ordering::Greater
    } else {
        // Numbers that differ only in leading zeros.
        Ordering::Equal
    }
}

/// `nix-env`'s component order, as a strict "less than".
fn is_less(a: &str, b: &str) -> bool {
    let (an, bn) = (is_number(a), is_number(b));
    if an && bn {
        compare_numbers(a, b) == Ordering::Less
    } else if (a.is_empty() && bn) || (a == "pre" && b != "pre") {
        true
    } else if b == "pre" {
        false
    } else if bn {
        true
    } else if an {
        false
    } else {
        a < b
    }
}

/// Whether a version component looks like a commit hash: at least seven
/// hexadecimal digits with at least one letter, optionally after `g` (as
/// `git describe` writes them).
pub fn is_hash_like(component: &str) -> bool {
    let hex = component.strip_prefix('g').filter(|h| h.len() >= 7).unwrap_or(component);
    hex.len() >= 7
        && hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        && hex.bytes().any(|b| b.is_ascii_alphabetic())
}

/// The part of a version before its first hash-like component (split on
/// `.`, `-`, `_` and `+`), or `None` when it has none.
fn ordered_prefix(version: &str) -> Option<&str> {
    let mut start = 0;
    for part in version.split(['.', '-', '_', '+']) {
        if is_hash_like(part) {
            return Some(version[..start].trim_end_matches(['.', '-', '_', '+']));
        }
        start += part.len() + 1;
    }
    None
}

pub use plan_model::packages::Direction;

/// Orders two versions, or returns `None` when they cannot be ordered
/// because they differ only in a commit-hash part.
pub fn order(old: &str, new: &str) -> Option<Ordering> {
    if old == new {
        return Some(Ordering::Equal);
    }
    match (ordered_prefix(old), ordered_prefix(new)) {
        (None, None) => Some(compare_versions(old, new)),
        (po, pn) => {
            let po = po.unwrap_or(old);
            let pn = pn.unwrap_or(new);
            match compare_versions(po, pn) {
                Ordering::Equal => None,
                other => Some(other),
            }
        }
    }
}

/// Classifies a change from the versions only in the old closure to the
/// versions only in the new one (both sets non-empty for a change).
pub fn classify(removed: &[&str], added: &[&str]) -> Direction {
    if removed.is_empty() || added.is_empty() {
        return Direction::Mixed;
    }
    let (mut up, mut down, mut unordered) = (false, false, false);
    for r in removed {
        for a in added {
            match order(r, a) {
                Some(Ordering::Less) => up = true,
                Some(Ordering::Greater) => down = true,
                // Versions that differ only in leading zeros.
                Some(Ordering::Equal) => unordered = true,
                None => unordered = true,
            }
        }
    }
    match (up, down, unordered) {
        (true, false, false) => Direction::Upgrade,
        (false, true, false) => Direction::Downgrade,
        (false, false, true) => Direction::Unordered,
        _ => Direction::Mixed,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests may unwrap")]
mod tests {
    use super::*;
    use Ordering::*;

    #[test]
    fn nix_env_ordering() {
        let cases = [
            ("1.0", "2.3", Less),
            ("2.1", "2.3", Less),
            ("2.3", "2.3", Equal),
            ("2.5", "2.3", Greater),
            ("3.1", "2.3", Greater),
            ("2.3.1", "2.3", Greater),
            ("2.3.1", "2.3a", Greater),
            ("2.3pre1", "2.3", Less),
            ("2.3pre3", "2.3pre12", Less),
            ("2.3a", "2.3c", Less),
            ("2.3pre1", "2.3c", Less),
            ("2.3pre1", "2.3q", Less),
            ("1.0", "1.0.1", Less),
            ("5.2p26", "5.2p32", Less),
            ("5.2", "5.2p26", Less),
            ("unstable-2024-01-01", "0-unstable-2024-03-01", Less),
            ("0-unstable-2024-01-01", "0-unstable-2024-03-01", Less),
            ("0-unstable-2024-03-01", "1.0", Less),
            ("2024-01-01", "2023-12-31", Greater),
            ("1.02", "1.2", Equal),
            ("99999999999999999999999", "100000000000000000000000", Less),
        ];
        for (a, b, want) in cases {
            assert_eq!(compare_versions(a, b), want, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn hash_like_components() {
        assert!(is_hash_like("abcdef0"));
        assert!(is_hash_like("g1a2b3c4"));
        assert!(is_hash_like("5d3f2a1e9c"));
        assert!(!is_hash_like("1234567"));
        assert!(!is_hash_like("abc12"));
        assert!(!is_hash_like("unstable"));
        assert!(!is_hash_like("ABCDEF0"));
    }

    #[test]
    fn hashes_with_equal_prefix_are_unordered() {
        assert_eq!(order("abcdef0", "1234abc"), None);
        assert_eq!(order("1.2-g1a2b3c4", "1.2-g9f8e7d6"), None);
        assert_eq!(order("1.2-g1a2b3c4", "1.3-g9f8e7d6"), Some(Less));
        assert_eq!(order("24.05.20240101.abcdef0", "24.05.20240301.1234abc"), Some(Less));
        assert_eq!(order("24.05.20240101.abcdef0", "24.05.20240101.1234abc"), None);
    }

    #[test]
    fn classify_sets() {
        assert_eq!(classify(&["1.0"], &["1.1"]), Direction::Upgrade);
        assert_eq!(classify(&["1.1"], &["1.0"]), Direction::Downgrade);
        assert_eq!(classify(&["abcdef0"], &["1234abc"]), Direction::Unordered);
        assert_eq!(classify(&["1.0", "3.0"], &["2.0"]), Direction::Mixed);
        assert_eq!(classify(&[], &["2.0"]), Direction::Mixed);
    }
}
