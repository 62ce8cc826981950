//! Fuzzing the systemd planner's text inputs: unit files and fstab.
//!
//! Generators build inputs from the pieces these files are made of
//! (sections, keys, values, comments, continuations, a byte-order mark,
//! odd bytes; fstab fields, escapes and comments) rather than random
//! bytes, so that most cases get past the first line. Each property runs a
//! fixed number of cases from a fixed seed (`testbed::fuzz::check`) and
//! checks that parsing does not panic, ends, and uses memory and produces
//! output linear in the input.

use std::path::Path;

use proptest::prelude::*;
use systemd_plan::UnitFile;
use systemd_plan::fstab::{self, Fstab};
use testbed::fuzz::{self, peak_memory, select};

/// Odd bytes and characters: control characters, escapes, a byte-order
/// mark, bidirectional overrides, line separators, quoting and comment
/// characters, specifiers.
const ODD: &[&str] = &[
    "\0",
    "\u{feff}",
    "\x1b[31m",
    "\x1b]8;;http://x\x07",
    "\r",
    "\t",
    "\u{202e}",
    "\u{2028}",
    "\u{85}",
    "é",
    "\u{10ffff}",
    "\\",
    "\\\\",
    "%",
    "%i",
    "%n",
    "%%",
    "%P",
    "%Z",
    "\"",
    "'",
    "#",
    ";",
    "=",
    "[",
    "]",
    "`",
    "<",
    "&",
    " ",
    "$",
    "${X}",
    "\\x2d",
    "\\x",
    "\\xZZ",
    "-",
    "@",
    "/",
];

const KEYS: &[&str] = &[
    "Description",
    "Requires",
    "Requisite",
    "Wants",
    "BindsTo",
    "PartOf",
    "Upholds",
    "Conflicts",
    "After",
    "Before",
    "PropagatesStopTo",
    "PropagatesReloadTo",
    "ExecStart",
    "ExecReload",
    "ExecStop",
    "Environment",
    "Type",
    "Sockets",
    "Unit",
    "Triggers",
    "What",
    "Where",
    "Options",
    "DefaultDependencies",
    "RefuseManualStart",
    "RefuseManualStop",
    "X-RestartIfChanged",
    "X-ReloadIfChanged",
    "X-StopIfChanged",
    "X-StopOnRemoval",
    "X-StopOnReconfiguration",
    "X-OnlyManualStart",
    "X-NotSocketActivated",
    "X-Reload-Triggers",
    "WantedBy",
    "Alias",
];

const SECTIONS: &[&str] =
    &["Unit", "Service", "Socket", "Mount", "Swap", "Timer", "Path", "Install", "X-Custom", "Unit Extra"];

const UNITS: &[&str] = &[
    "a.service",
    "b.service",
    "sshd.service",
    "sshd.socket",
    "sshd@.service",
    "getty@tty1.service",
    "multi-user.target",
    "-.mount",
    "nix.mount",
    "var-lib.mount",
    "x.timer",
    "y.path",
    "z.slice",
    "dbus.service",
    "wg-%i.service",
];

/// One piece of a value.
fn value_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-zA-Z0-9/._=-]{1,12}",
        3 => select(UNITS),
        2 => select(&["yes", "No", "TRUE", "0", "1", "on", "off", "t", "maybe", ""]),
        3 => select(ODD),
        1 => (select(ODD), 1usize..400).prop_map(|(s, n)| s.repeat(n)),
        1 => any::<String>(),
    ]
}

fn value() -> impl Strategy<Value = String> {
    prop::collection::vec(value_piece(), 0..6).prop_map(|pieces| pieces.join(" "))
}

/// One line of a unit file (without its line ending).
fn unit_line() -> impl Strategy<Value = String> {
    let header = prop_oneof![
        6 => select(SECTIONS).prop_map(|s| format!("[{s}]")),
        1 => select(&["[Unit", "[]", "[[Unit]]", " [Service] ", "[Unit]x", "[\u{feff}Unit]"]),
    ];
    let key = prop_oneof![8 => select(KEYS), 1 => "[A-Za-z -]{0,8}", 1 => select(ODD)];
    let separator = select(&["=", " = ", "\t=\t", "==", "= "]);
    let assignment = (key, separator, value()).prop_map(|(k, s, v)| format!("{k}{s}{v}"));
    let continued =
        (select(KEYS), value(), select(&["\\", "\\\\\\", " \\"])).prop_map(|(k, v, tail)| format!("{k}={v}{tail}"));
    prop_oneof![
        2 => header,
        8 => assignment,
        2 => continued,
        1 => value().prop_map(|v| format!("# {v}")),
        1 => value().prop_map(|v| format!("  ; {v}")),
        1 => select(&["", "   ", "\t"]),
        1 => value(),
    ]
}

/// A unit file: an optional byte-order mark, lines, LF or CRLF endings.
fn unit_text() -> impl Strategy<Value = String> {
    (any::<bool>(), prop::collection::vec(unit_line(), 0..24), select(&["\n", "\r\n"]), any::<bool>()).prop_map(
        |(bom, lines, eol, final_eol)| {
            let mut text = if bom { "\u{feff}".to_owned() } else { String::new() };
            text.push_str(&lines.join(&eol));
            if final_eol {
                text.push_str(&eol);
            }
            text
        },
    )
}

/// A unit file, or a few random bytes read the way the loader reads them.
fn unit_input() -> impl Strategy<Value = (String, String)> {
    let name = prop_oneof![4 => select(UNITS), 1 => "[a-z@.\\\\%-]{0,16}", 1 => any::<String>()];
    let text = prop_oneof![
        8 => unit_text(),
        1 => prop::collection::vec(any::<u8>(), 0..256).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ];
    (name, text)
}

/// Memory a parse may use: a constant for the maps and a small multiple of
/// the input.
fn memory_bound(input: usize) -> u64 {
    64 * 1024 + 16 * u64::try_from(input).unwrap()
}

#[test]
fn unit_files_parse_without_panic_in_linear_memory() {
    fuzz::check("unit files", 1024, unit_input(), |(name, text)| {
        let path = Path::new("/etc/systemd/system").join(&name);
        let (result, peak) = peak_memory(|| UnitFile::parse(&path, &text));
        prop_assert!(peak <= memory_bound(text.len() + name.len()), "{peak} bytes for {} bytes of input", text.len());
        let lines = text.split('\n').count();
        match result {
            Ok(unit) => {
                let mut total = 0;
                for (section, keys) in unit.sections() {
                    prop_assert!(!section.is_empty() && section.len() <= text.len());
                    for (key, values) in keys.iter() {
                        prop_assert!(!values.is_empty(), "{section}.{key}: a key without values is dropped");
                        for v in values {
                            total += v.len();
                        }
                        // The accessors the planner uses, on every key.
                        let words = unit.words(section, key);
                        prop_assert!(words.iter().map(|w| w.len()).sum::<usize>() <= text.len());
                        let _ = unit.get_bool(section, key);
                        prop_assert_eq!(unit.get(section, key), values.last());
                    }
                }
                prop_assert!(total <= text.len(), "{total} bytes of values from {} bytes of text", text.len());
            }
            Err(err) => {
                prop_assert!(err.line >= 1 && usize::try_from(err.line).unwrap() <= lines, "line {}", err.line);
                // The message quotes the line, escaped: at most `\u{1b}`
                // (six bytes) for each byte.
                let shown = err.to_string();
                prop_assert!(shown.len() <= 6 * text.len() + path.as_os_str().len() + 64, "{} bytes", shown.len());
            }
        }
        Ok(())
    });
}

/// One fstab line.
fn fstab_line() -> impl Strategy<Value = String> {
    let device = prop_oneof![
        4 => select(&["/dev/sda1", "UUID=0a1b-2c3d", "LABEL=data\\040disk", "tmpfs", "none", "/dev/disk/by-id/x", "server:/export"]),
        1 => select(ODD),
        1 => "[a-z/\\\\0-9]{0,12}",
    ];
    let mount_point = prop_oneof![
        4 => select(&["/", "/nix", "/boot/efi", "/mnt/my\\040media", "/a//b/", "/.hidden", "none", "swap", "/var/lib"]),
        2 => select(&["\\777", "\\0", "\\", "/x\\1", "/x\\12", "/\\101\\102", "relative", "/-", "/\\x2d"]),
        1 => select(ODD),
        1 => "(/[a-z.\\\\0-9 -]{0,6}){0,4}",
    ];
    let fs_type = select(&["ext4", "swap", "tmpfs", "xfs", "nfs", "vfat", "auto", "#"]);
    let options = select(&["defaults", "x-systemd.automount", "noatime,nofail", "", "sw", "x-systemd.automount,ro"]);
    let blank = select(&[" ", "\t", "  \t "]);
    let entry = (device, mount_point, fs_type, options, select(&["", "0 0", "0 1", "x"]), blank)
        .prop_map(|(d, m, t, o, rest, b)| [d, m, t, o, rest].join(&b));
    prop_oneof![
        8 => entry,
        1 => value().prop_map(|v| format!("# {v}")),
        1 => select(&["", "   ", "short line", "a b", "\u{feff}/dev/x / ext4"]),
        1 => value(),
    ]
}

fn fstab_text() -> impl Strategy<Value = String> {
    prop::collection::vec(fstab_line(), 0..24).prop_map(|lines| lines.join("\n"))
}

#[test]
fn fstab_parses_without_panic_in_linear_memory() {
    fuzz::check("fstab", 1024, fstab_text(), |text| {
        let (parsed, peak) = peak_memory(|| Fstab::parse(&text));
        prop_assert!(peak <= memory_bound(text.len()), "{peak} bytes for {} bytes of input", text.len());
        let lines = text.lines().count();
        prop_assert!(parsed.file_systems.len() + parsed.swaps.len() <= lines);
        for (key, entry) in parsed.file_systems.iter().chain(&parsed.swaps) {
            prop_assert!(entry.line >= 1 && usize::try_from(entry.line).unwrap() <= lines);
            prop_assert!(key.len() <= text.len() && entry.options.len() <= text.len());
            // Unit names: every byte escapes to at most four.
            for unit in [fstab::mount_unit(&entry.mount_point), fstab::automount_unit(&entry.mount_point)] {
                prop_assert!(unit.len() <= 4 * entry.mount_point.len() + 16, "{unit}");
                prop_assert!(!unit.contains('/') && !unit.contains(char::is_control), "{unit:?}");
            }
        }
        Ok(())
    });
}

/// Fixed inputs a random generator rarely reaches: huge lines, long
/// continuations, deep brackets, a file of backslashes.
#[test]
fn extreme_unit_files_and_fstabs() {
    let big = 4 << 20;
    let cases = [
        format!("[Unit]\nDescription={}\n", "x".repeat(big)),
        format!("[Unit]\nDescription=a{}\n", " \\\n b".repeat(200_000)),
        "\\".repeat(big),
        "\\\n".repeat(200_000),
        format!("[{}]\n", "[".repeat(big)),
        format!("[Unit]\n{}", "Requires=a.service\n".repeat(200_000)),
        "\u{feff}".repeat(100_000),
        format!("[Unit]\n{}", "Requires=\n".repeat(200_000)),
    ];
    // The allocator counts: the first case keeps a copy of its 4 MiB value.
    let (_, peak) = peak_memory(|| UnitFile::parse(Path::new("a.service"), &cases[0]));
    assert!(peak >= u64::try_from(big).unwrap(), "{peak}");
    for text in &cases {
        let (_, peak) = peak_memory(|| UnitFile::parse(Path::new("a.service"), text));
        assert!(peak <= memory_bound(text.len()), "{peak} bytes for {} bytes", text.len());
        let (_, peak) = peak_memory(|| Fstab::parse(text));
        assert!(peak <= memory_bound(text.len()), "{peak} bytes for {} bytes", text.len());
    }
}
