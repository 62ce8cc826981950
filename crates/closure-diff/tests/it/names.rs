//! Golden cases for splitting real-world store path names into package
//! name, version and output, and for ordering real-world version pairs.

use closure_diff::name::parse_name;
use closure_diff::version::{classify, compare_versions};

/// Store path names (after the hash) of the shapes found in NixOS
/// closures.
const NAMES: &[&str] = &[
    "hello-2.12.1",
    "python3-3.11.7",
    "python3.11-requests-2.31.0",
    "python3.12-pyyaml-6.0.1-dist",
    "libxml2-2.12.3",
    "libxml2-2.12.3-bin",
    "libxml2-2.12.3-dev",
    "gtk+3-3.24.41",
    "gtk+3-3.24.41-dev",
    "openssl-3.0.13-bin",
    "openssl-3.0.13-man",
    "gcc-13.2.0-lib",
    "glibc-2.38-44",
    "glibc-2.38-44-bin",
    "glibc-locales-2.38-44",
    "bash-5.2p26",
    "bash-interactive-5.2p26-man",
    "util-linux-minimal-2.39.3-lib",
    "systemd-minimal-libs-255.2",
    "linux-6.6.10-modules",
    "firmware-linux-nonfree-20240115-zstd",
    "nix-2.18.1-doc",
    "nix-doc",
    "nix-index-unstable-2024-01-01",
    "zoxide-0-unstable-2024-03-01",
    "nixos-system-myhost-24.05.20240101.abcdef0",
    "nixos-rebuild",
    "etc",
    "source",
    "system-path",
    "unit-sshd.service",
    "X-Restart-Triggers-sshd",
    "hello-2.12.1.drv",
    "perl5.38.2-XML-Parser-2.46",
    "go-1.21.6",
    "vim-9.1.0148",
    "e2fsprogs-1.47.0-bin",
    "7zz-23.01",
    "ncurses-6.4-20221231",
    "kernel-modules-shrunk",
    "linux-headers-6.6",
    "xz-5.4.6-bin",
    "libcap-ng-0.8.4",
    "lvm2-2.03.22-lib",
    "coreutils-full-9.4-info",
    "mailcap-2.1.53",
    "ca-certificates.crt",
    "tzdata-2024a",
    "ocaml4.14.1-findlib-1.9.6",
    "rustc-wrapper-1.75.0",
];

#[test]
fn store_path_names() {
    let mut table = String::new();
    for name in NAMES {
        let p = parse_name(name);
        table.push_str(&format!(
            "{name:<46} name={:<32} version={:<28} output={}\n",
            p.name,
            if p.version.is_empty() { "-" } else { &p.version },
            p.output.as_deref().unwrap_or("-"),
        ));
    }
    insta::assert_snapshot!(table);
}

/// Version pairs as they appear between two NixOS generations.
const PAIRS: &[(&str, &str)] = &[
    ("2.12.1", "2.12.2"),
    ("3.11.7", "3.12.1"),
    ("5.2p26", "5.2p32"),
    ("2.38-44", "2.39-5"),
    ("6.6.10", "6.1.71"),
    ("1.0pre1", "1.0"),
    ("1.0", "1.0.1"),
    ("2.3a", "2.3.1"),
    ("unstable-2024-01-01", "0-unstable-2024-03-01"),
    ("0-unstable-2024-03-01", "0-unstable-2024-02-01"),
    ("24.05.20240101.abcdef0", "24.05.20240301.1234abc"),
    ("24.05.20240101.abcdef0", "24.05.20240101.1234abc"),
    ("abcdef0", "1234abc"),
    ("2024a", "2024b"),
    ("9.1.0148", "9.1.0200"),
    ("1.75.0", "1.75.0"),
    ("6.4-20221231", "6.4-20231231"),
    ("1.2.3-rc1", "1.2.3"),
];

#[test]
fn version_pairs() {
    let mut table = String::new();
    for (old, new) in PAIRS {
        let ord = compare_versions(old, new);
        let direction = if old == new { "same".to_owned() } else { format!("{:?}", classify(&[old], &[new])) };
        table.push_str(&format!("{old:<24} {new:<24} cmp={ord:<8?} {direction}\n"));
    }
    insta::assert_snapshot!(table);
}
