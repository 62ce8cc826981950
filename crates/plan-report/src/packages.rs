//! Text rendering of a [`ClosureDiff`], and human-readable sizes.
//!
//! The layout follows what reviewers know from nvd and `nix store
//! diff-closures`: one section per kind of change, one line per package
//! with a status marker, the versions and the size change, then totals.

use std::fmt::Write as _;

use plan_model::packages::{ClosureDiff, Direction};

/// Formats a byte count with binary units (`512 B`, `1.5 KiB`, `2.0 GiB`).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    // Float precision is ample for one decimal place of display.
    #[expect(clippy::cast_precision_loss, reason = "display only")]
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Formats a signed byte delta (`+1.5 MiB`, `-512 B`, `0 B`).
pub fn human_delta(delta: i64) -> String {
    let magnitude = human_size(delta.unsigned_abs());
    match delta.signum() {
        1 => format!("+{magnitude}"),
        -1 => format!("-{magnitude}"),
        _ => magnitude,
    }
}

/// The marker for a version change.
fn marker(direction: Direction) -> &'static str {
    match direction {
        Direction::Upgrade => "[U]",
        Direction::Downgrade => "[D]",
        Direction::Unordered => "[C]",
        Direction::Mixed => "[M]",
    }
}

/// Joins versions for display; a path name without a version shows as
/// `(none)` so that an empty string never looks like a rendering bug.
fn versions(list: &[String]) -> String {
    list.iter().map(|v| if v.is_empty() { "(none)" } else { v.as_str() }).collect::<Vec<_>>().join(", ")
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The longest name and version column, capped so one odd name does not
/// push every size off screen.
fn width<'a>(items: impl Iterator<Item = &'a str>, cap: usize) -> usize {
    items.map(|s| s.chars().count()).max().unwrap_or(0).min(cap)
}

/// The full text report.
pub fn text(diff: &ClosureDiff) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "<<< {}", diff.old.root);
    let _ = writeln!(out, ">>> {}", diff.new.root);

    let rows_changed: Vec<(String, &str, String, i64)> = diff
        .changed
        .iter()
        .map(|c| {
            let text = format!("{} → {}", versions(&c.old_versions), versions(&c.new_versions));
            (text, c.name.as_str(), marker(c.direction).to_owned(), c.size_delta)
        })
        .collect();
    let rows_added: Vec<(String, &str, String, i64)> = diff
        .added
        .iter()
        .map(|p| (versions(&p.versions), p.name.as_str(), "[A]".to_owned(), size_i64(p.size)))
        .collect();
    let rows_removed: Vec<(String, &str, String, i64)> = diff
        .removed
        .iter()
        .map(|p| (versions(&p.versions), p.name.as_str(), "[R]".to_owned(), -size_i64(p.size)))
        .collect();

    let all = rows_changed.iter().chain(&rows_added).chain(&rows_removed);
    let name_w = width(all.clone().map(|r| r.1), 40);
    let ver_w = width(all.clone().map(|r| r.0.as_str()), 60);
    let size_w = all.map(|r| human_delta(r.3).len()).max().unwrap_or(0);

    for (title, rows) in [("CHANGED", &rows_changed), ("ADDED", &rows_added), ("REMOVED", &rows_removed)] {
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n{title}");
        for (ver, name, mark, delta) in rows {
            let size = human_delta(*delta);
            let line = format!("  {mark} {name:<name_w$}  {ver:<ver_w$}  {size:>size_w$}");
            let _ = writeln!(out, "{}", line.trim_end());
        }
    }
    if rows_changed.is_empty() && rows_added.is_empty() && rows_removed.is_empty() {
        let _ = writeln!(out, "\nNo version changes.");
    }

    out.push('\n');
    if !diff.rebuilt.is_empty() {
        let delta: i64 = diff.rebuilt.iter().map(|r| r.size_delta).fold(0, i64::saturating_add);
        let _ = writeln!(
            out,
            "Rebuilt without a version change: {} ({})",
            plural(diff.rebuilt.len(), "package", "packages"),
            human_delta(delta)
        );
    }
    let _ =
        writeln!(out, "Paths: {} → {} (+{} -{})", diff.old.paths, diff.new.paths, diff.paths_added, diff.paths_removed);
    let _ = writeln!(
        out,
        "Size: {} → {} ({})",
        human_size(diff.old.nar_size),
        human_size(diff.new.nar_size),
        human_delta(diff.size_delta)
    );
    out
}

/// A one-line summary for reports that show the closure change next to
/// other things (the switch plan).
pub fn summary(diff: &ClosureDiff) -> String {
    let mut parts = Vec::new();
    let other = diff.count(Direction::Unordered) + diff.count(Direction::Mixed);
    for (n, word) in [
        (diff.count(Direction::Upgrade), "upgraded"),
        (diff.count(Direction::Downgrade), "downgraded"),
        (other, "changed"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {word}"));
        }
    }
    if !diff.added.is_empty() {
        parts.push(format!("{} added", diff.added.len()));
    }
    if !diff.removed.is_empty() {
        parts.push(format!("{} removed", diff.removed.len()));
    }
    if parts.is_empty() {
        parts.push("no version changes".to_owned());
    }
    format!(
        "Packages: {}; closure {} ({} paths → {})",
        parts.join(", "),
        human_delta(diff.size_delta),
        diff.old.paths,
        diff.new.paths
    )
}

fn size_i64(size: u64) -> i64 {
    i64::try_from(size).unwrap_or(i64::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests may unwrap")]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1024), "1.0 KiB");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(5 * 1024 * 1024 * 1024), "5.0 GiB");
        assert_eq!(human_delta(-1536), "-1.5 KiB");
        assert_eq!(human_delta(2048), "+2.0 KiB");
        assert_eq!(human_delta(0), "0 B");
        assert_eq!(human_delta(i64::MIN), "-8192.0 PiB");
    }
}
