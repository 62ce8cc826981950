//! `etc/fstab` as systemd's fstab generator reads it, and path escaping.
//!
//! File systems are keyed by mount point and swaps by device, because that
//! is how the switch compares generations (a mount point whose device
//! changed is the same unit with new content). Mount units are named with
//! [`unit_name::escape_path`], the equivalent of `systemd-escape --path`.

use std::collections::BTreeMap;

use plan_model::unit_name;

/// One fstab entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FstabEntry {
    /// The device (`fs_spec`), with octal escapes decoded.
    pub device: String,
    /// The mount point (`fs_file`), with octal escapes decoded; for swaps
    /// usually `none`.
    pub mount_point: String,
    /// The file-system type (`fs_vfstype`).
    pub fs_type: String,
    /// The mount options (`fs_mntops`), empty when absent.
    pub options: String,
    /// The 1-based line in fstab.
    pub line: u32,
}

impl FstabEntry {
    /// Tells whether the options ask for an automount unit.
    pub fn is_automount(&self) -> bool {
        self.options.split(',').any(|o| o == "x-systemd.automount")
    }
}

/// A parsed fstab: file systems by mount point, swaps by device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fstab {
    /// Non-swap entries, keyed by mount point. A later line for the same
    /// mount point replaces an earlier one.
    pub file_systems: BTreeMap<String, FstabEntry>,
    /// Swap entries, keyed by device.
    pub swaps: BTreeMap<String, FstabEntry>,
}

impl Fstab {
    /// Parses fstab text. Lines whose first non-blank character is `#` are
    /// comments; a `#` later in a line is data, as for `getmntent(3)`.
    /// Lines with fewer than three fields are skipped.
    pub fn parse(text: &str) -> Fstab {
        let mut fstab = Fstab::default();
        for (index, line) in text.lines().enumerate() {
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = trimmed.split_whitespace().collect();
            let [device, mount_point, fs_type, rest @ ..] = fields.as_slice() else {
                continue;
            };
            let entry = FstabEntry {
                device: unescape_octal(device),
                mount_point: unescape_octal(mount_point),
                fs_type: (*fs_type).to_owned(),
                options: rest.first().map_or_else(String::new, |o| (*o).to_owned()),
                line: u32::try_from(index + 1).unwrap_or(u32::MAX),
            };
            if entry.fs_type == "swap" {
                fstab.swaps.insert(entry.device.clone(), entry);
            } else {
                fstab.file_systems.insert(entry.mount_point.clone(), entry);
            }
        }
        fstab
    }
}

/// Decodes the `\NNN` octal escapes fstab uses for blanks in paths.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let value = bytes[i + 1..i + 4].iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount unit for a mount point (`/var/lib` → `var-lib.mount`).
pub fn mount_unit(mount_point: &str) -> String {
    format!("{}.mount", unit_name::escape_path(mount_point))
}

/// The automount unit for a mount point.
pub fn automount_unit(mount_point: &str) -> String {
    format!("{}.automount", unit_name::escape_path(mount_point))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_systemd_escape() {
        assert_eq!(mount_unit("/boot/efi"), "boot-efi.mount");
    }

    #[test]
    fn parses_entries_swaps_and_comments() {
        let f = Fstab::parse(
            "# header\n/dev/sda1 / ext4 defaults 0 1\n/dev/sdb1 /mnt/my\\040disk xfs noatime # note\n/dev/sdc swap swap\nshort line\n",
        );
        assert_eq!(f.file_systems["/"].device, "/dev/sda1");
        let disk = &f.file_systems["/mnt/my disk"];
        assert_eq!(disk.options, "noatime");
        assert_eq!(disk.line, 3);
        assert_eq!(f.swaps["/dev/sdc"].options, "");
        assert_eq!(f.file_systems.len(), 2);
    }
}
