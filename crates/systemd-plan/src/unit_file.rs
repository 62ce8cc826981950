//! Unit files, read the way systemd reads them.
//!
//! A [`UnitFile`] is the merged view of one unit: its fragment followed by
//! its drop-ins, folded into `section → key → values`. The folding follows
//! `systemd.syntax(7)` and `systemd.unit(5)`:
//!
//! - `[Section]` headers open a section; repeated headers merge in order.
//! - Repeated keys accumulate values; an empty assignment (`Key=`) clears
//!   everything assigned before it, in this file and in earlier files.
//! - Comments are whole lines whose first non-blank character is `#` or
//!   `;`. A `#` or `;` inside a value is part of the value, and so are
//!   quotes: systemd hands the raw value to each key's own parser.
//! - A line ending in an odd number of backslashes continues on the next
//!   line; the backslash becomes a space. Comment lines inside a continued
//!   value are skipped, as systemd does.
//! - Assignments before the first section header are ignored, as systemd
//!   ignores them (with a warning).
//! - A line that is neither a comment, a section header nor `key=value`
//!   is an error naming the file and line: systemd refuses to load such a
//!   unit, so the planner must not guess. The error quotes at most
//!   [`QUOTED_LINE`] characters of the line.
//! - A UTF-8 byte-order mark at the start of a file is skipped, as systemd
//!   skips it.
//!
//! This module does no IO: the loader reads the bytes and hands them here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The most characters of a line that a [`ParseError`] quotes.
pub const QUOTED_LINE: usize = 80;

/// Names mapped to values, sorted by name: a vector, which takes a
/// fraction of a `BTreeMap`'s memory for the handful of entries a unit's
/// section holds (a planned host has thousands of units, each parsed
/// twice).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SortedMap<V>(Vec<(String, V)>);

impl<V> Default for SortedMap<V> {
    fn default() -> Self {
        SortedMap(Vec::new())
    }
}

impl<V> SortedMap<V> {
    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&V> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(name)).ok().map(|i| &self.0[i].1)
    }

    /// The entries, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Tells whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<V> From<BTreeMap<String, V>> for SortedMap<V> {
    fn from(map: BTreeMap<String, V>) -> Self {
        let mut entries: Vec<(String, V)> = map.into_iter().collect();
        entries.shrink_to_fit();
        SortedMap(entries)
    }
}

/// The keys of one section, each with its values in assignment order.
pub type Section = SortedMap<Vec<String>>;

/// A syntax error in a unit file or drop-in.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}:{line}: {message}", path = path.display())]
pub struct ParseError {
    /// The file, as found in the generation.
    pub path: PathBuf,
    /// The 1-based line number (the first line of a continued value).
    pub line: u32,
    /// What is wrong with the line.
    pub message: String,
}

/// One unit as systemd would load it: fragment plus drop-ins, merged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnitFile {
    pub(crate) name: String,
    pub(crate) fragment: Option<PathBuf>,
    pub(crate) drop_ins: Vec<PathBuf>,
    pub(crate) own_drop_ins: Vec<PathBuf>,
    pub(crate) masked: bool,
    /// The sections, folded from the unit's files ([`Folding`]).
    pub(crate) sections: Arc<SortedMap<Section>>,
}

/// A unit's files being folded into its sections, one after the other.
#[derive(Debug, Default)]
pub(crate) struct Folding(BTreeMap<String, BTreeMap<String, Vec<String>>>);

impl UnitFile {
    /// Parses a single file's text as a unit named `name` (for tests and
    /// tools; the loader merges drop-ins with [`Folding`]).
    pub fn parse(name: &str, path: &Path, text: &str) -> Result<UnitFile, ParseError> {
        let mut folding = Folding::default();
        folding.apply(path, text)?;
        Ok(UnitFile {
            name: name.to_owned(),
            fragment: Some(path.to_owned()),
            sections: folding.finish(),
            ..UnitFile::default()
        })
    }

    /// The unit's name. For an instance that has no fragment or drop-ins
    /// of its own this is the template's name (`getty@.service`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The fragment's path inside the generation (before symlinks are
    /// followed), or `None` for a masked unit.
    pub fn fragment(&self) -> Option<&Path> {
        self.fragment.as_deref()
    }

    /// Every drop-in applied, in the order applied.
    pub fn drop_ins(&self) -> &[PathBuf] {
        &self.drop_ins
    }

    /// The drop-ins from the unit's own `<name>.d/` directory (for an
    /// instance: not the template's).
    pub fn own_drop_ins(&self) -> &[PathBuf] {
        &self.own_drop_ins
    }

    /// Tells whether the unit is masked (its fragment links to `/dev/null`).
    pub fn is_masked(&self) -> bool {
        self.masked
    }

    /// Tells whether two units have the same settings (their names, paths
    /// and masks aside). Units of two generations made of the same files
    /// share their parsed settings, which makes this one comparison.
    pub fn same_settings(&self, other: &UnitFile) -> bool {
        Arc::ptr_eq(&self.sections, &other.sections) || self.sections == other.sections
    }

    /// Iterates over the sections in name order.
    pub fn sections(&self) -> impl Iterator<Item = (&str, &Section)> {
        self.sections.iter()
    }

    /// Returns one section.
    pub fn section(&self, section: &str) -> Option<&Section> {
        self.sections.get(section)
    }

    /// Returns every value assigned to `key` in `section`, after resets;
    /// empty when the key is absent.
    pub fn values(&self, section: &str, key: &str) -> &[String] {
        self.sections.get(section).and_then(|s| s.get(key)).map_or(&[], Vec::as_slice)
    }

    /// Returns the last value of `key` in `section`: what systemd uses for a
    /// single-valued setting.
    pub fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.values(section, key).last().map(String::as_str)
    }

    /// Returns the whitespace-separated words of every value of `key`, as
    /// systemd reads list settings such as `Requires=` or `Sockets=`.
    pub fn words(&self, section: &str, key: &str) -> Vec<&str> {
        self.values(section, key).iter().flat_map(|v| v.split_whitespace()).collect()
    }

    /// Returns a boolean setting as systemd parses booleans
    /// (`parse_boolean`: `1 yes y true t on` and `0 no n false f off`, in
    /// any case). `None` when the key is absent or the value is not a
    /// boolean (systemd ignores such an assignment and keeps the default).
    pub fn get_bool(&self, section: &str, key: &str) -> Option<bool> {
        self.get(section, key).and_then(parse_boolean)
    }

    /// Returns a boolean setting, or `default` when absent or invalid.
    pub fn bool_or(&self, section: &str, key: &str, default: bool) -> bool {
        self.get_bool(section, key).unwrap_or(default)
    }
}

impl Folding {
    /// Folds one file's text in.
    pub(crate) fn apply(&mut self, path: &Path, text: &str) -> Result<(), ParseError> {
        let mut section: Option<String> = None;
        let mut continued: Option<(String, u32)> = None;
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (index, raw) in text.split('\n').enumerate() {
            let number = u32::try_from(index + 1).unwrap_or(u32::MAX);
            let raw = raw.strip_suffix('\r').unwrap_or(raw);
            let start = raw.trim_start();
            if start.starts_with('#') || start.starts_with(';') {
                continue;
            }
            if continued.is_none() && !ends_in_unescaped_backslash(raw) {
                // The common case: a line of its own, parsed in place.
                self.apply_line(path, &mut section, raw, number)?;
                continue;
            }
            let (mut line, first) = match continued.take() {
                Some((mut acc, first)) => {
                    acc.push_str(raw);
                    (acc, first)
                }
                None => (raw.to_owned(), number),
            };
            if ends_in_unescaped_backslash(&line) {
                line.pop();
                line.push(' ');
                continued = Some((line, first));
                continue;
            }
            self.apply_line(path, &mut section, &line, first)?;
        }
        if let Some((line, first)) = continued {
            // A continuation at the end of the file: systemd keeps what came
            // before the backslash.
            self.apply_line(path, &mut section, &line, first)?;
        }
        Ok(())
    }

    fn apply_line(
        &mut self,
        path: &Path,
        section: &mut Option<String>,
        line: &str,
        number: u32,
    ) -> Result<(), ParseError> {
        let error = |message: String| ParseError { path: path.to_owned(), line: number, message };
        let line = line.trim();
        if line.is_empty() {
            return Ok(());
        }
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest
                .strip_suffix(']')
                .filter(|name| !name.is_empty() && !name.contains(['[', ']']))
                .ok_or_else(|| error(format!("invalid section header {}", quote(line))))?;
            self.0.entry(name.to_owned()).or_default();
            *section = Some(name.to_owned());
            return Ok(());
        }
        let (key, value) = line.split_once('=').ok_or_else(|| error(format!("missing '=' in {}", quote(line))))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(error(format!("missing key name in {}", quote(line))));
        }
        let Some(section) = section else {
            // systemd ignores assignments outside of any section.
            return Ok(());
        };
        // Look up before inserting: most keys go into an existing section,
        // and cloning names for every line would dominate loading.
        // Every section was inserted when its header was read.
        let Some(keys) = self.0.get_mut(section.as_str()) else { return Ok(()) };
        if !keys.contains_key(key) {
            keys.insert(key.to_owned(), Vec::new());
        }
        let Some(values) = keys.get_mut(key) else { return Ok(()) };
        let value = value.trim();
        if value.is_empty() {
            values.clear();
        } else {
            values.push(value.to_owned());
        }
        Ok(())
    }

    /// Drops keys that an empty assignment left without values, and
    /// sections left empty, so that `Key=` compares equal to no `Key` at
    /// all, as it does for systemd.
    pub(crate) fn finish(self) -> Arc<SortedMap<Section>> {
        let sections: BTreeMap<String, Section> = self
            .0
            .into_iter()
            .map(|(name, keys)| {
                let keys: BTreeMap<String, Vec<String>> = keys
                    .into_iter()
                    .filter(|(_, values)| !values.is_empty())
                    .map(|(key, mut values)| {
                        values.shrink_to_fit();
                        (key, values)
                    })
                    .collect();
                (name, SortedMap::from(keys))
            })
            .filter(|(_, keys)| !keys.is_empty())
            .collect();
        Arc::new(SortedMap::from(sections))
    }
}

/// A line quoted for an error: escaped, and cut after [`QUOTED_LINE`]
/// characters.
fn quote(line: &str) -> String {
    match line.char_indices().nth(QUOTED_LINE) {
        Some((end, _)) => format!("{:?}...", &line[..end]),
        None => format!("{line:?}"),
    }
}

/// Tells whether a line ends in a backslash that is not itself escaped.
fn ends_in_unescaped_backslash(line: &str) -> bool {
    let trailing = line.bytes().rev().take_while(|&b| b == b'\\').count();
    trailing % 2 == 1
}

/// Parses a boolean the way systemd's `parse_boolean` does.
pub fn parse_boolean(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "yes" | "y" | "true" | "t" | "on" => Some(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(text: &str) -> UnitFile {
        UnitFile::parse("t.service", Path::new("t.service"), text).unwrap()
    }

    #[test]
    fn values_keep_hashes_semicolons_and_quotes() {
        let u = parse("[Service]\nExecStart=/bin/sh -c \"a ;b\" # not a comment\nEnvironment=\"A=1\" \"B=2\"\n");
        assert_eq!(u.values("Service", "ExecStart"), ["/bin/sh -c \"a ;b\" # not a comment"]);
        assert_eq!(u.get("Service", "Environment"), Some("\"A=1\" \"B=2\""));
    }

    #[test]
    fn empty_assignment_resets() {
        let u = parse("[Unit]\nAfter=a\nAfter=b\nAfter=\nAfter=c\nWants=x\nWants=\n");
        assert_eq!(u.values("Unit", "After"), ["c"]);
        assert!(u.values("Unit", "Wants").is_empty());
        assert!(u.section("Unit").unwrap().get("Wants").is_none());
    }

    #[test]
    fn continuation_and_comments() {
        let u = parse("[Service]\n  # comment\n; other\nExecStart=/bin/foo \\\n# skipped\n  --bar\nA=x\\\\\nB=y\n");
        assert_eq!(u.values("Service", "ExecStart"), ["/bin/foo    --bar"]);
        assert_eq!(u.values("Service", "A"), ["x\\\\"]);
        assert_eq!(u.values("Service", "B"), ["y"]);
    }

    #[test]
    fn garbage_names_file_and_line() {
        let err = UnitFile::parse("t.service", Path::new("dir/t.service"), "[Unit]\nDescription=x\nthis is garbage\n")
            .unwrap_err();
        assert_eq!(err.to_string(), "dir/t.service:3: missing '=' in \"this is garbage\"");
        let err = UnitFile::parse("t.service", Path::new("t"), "[Unit\n").unwrap_err();
        assert_eq!(err.line, 1);
    }

    #[test]
    fn a_byte_order_mark_is_skipped_as_systemd_does() {
        let u = parse("\u{feff}[Unit]\nDescription=x\n");
        assert_eq!(u.get("Unit", "Description"), Some("x"));
        // Only at the start of the file.
        let err = UnitFile::parse("t.service", Path::new("t"), "[Unit]\n\u{feff}A=b\n\u{feff}x\n").unwrap_err();
        assert_eq!(err.line, 3);
    }

    #[test]
    fn errors_quote_a_bounded_part_of_the_line() {
        let long = format!("[Unit]\n{}\n", "é".repeat(5000));
        let err = UnitFile::parse("t.service", Path::new("t"), &long).unwrap_err();
        assert_eq!(err.message, format!("missing '=' in {:?}...", "é".repeat(QUOTED_LINE)));
        let err = UnitFile::parse("t.service", Path::new("t"), &format!("[{}\n", "x".repeat(500))).unwrap_err();
        assert!(err.message.len() < 120, "{}", err.message);
    }

    #[test]
    fn booleans_follow_systemd() {
        let u = parse("[Unit]\nA=True\nB=off\nC=maybe\n");
        assert_eq!(u.get_bool("Unit", "A"), Some(true));
        assert_eq!(u.get_bool("Unit", "B"), Some(false));
        assert_eq!(u.get_bool("Unit", "C"), None);
        assert!(u.bool_or("Unit", "D", true));
    }

    #[test]
    fn assignments_outside_sections_are_ignored() {
        let u = parse("Foo=bar\n[Unit]\nA=b\n[Unit]\nC=d\n");
        assert_eq!(u.sections().count(), 1);
        assert_eq!(u.get("Unit", "C"), Some("d"));
    }
}
