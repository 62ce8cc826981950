//! Lays out the `safe-switch` binary's code for the commands that run
//! most: the functions a `plan` runs (listed in `link-order.txt`) are put
//! next to each other, so that the few hundred kilobytes a plan executes
//! are mapped as a few hundred kilobytes, not as the megabytes of the whole
//! program they are otherwise spread across (the kernel maps a binary's
//! code in 64-KiB windows around each page touched).
//!
//! The list names symbols as this workspace's release and bench builds
//! name them; `scripts/link-order` writes it anew. A stale or missing
//! entry only costs locality: the linker skips names it does not find.
//! The ordering needs a linker that takes `--symbol-ordering-file` (LLD,
//! which Rust uses by default on x86-64 Linux, or mold); whether the
//! linker of this build does is tried on a small program first, and
//! without one the binary is linked as usual.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=link-order.txt");
    println!("cargo::rerun-if-env-changed=SAFE_SWITCH_LINK_ORDER");
    if std::env::var_os("SAFE_SWITCH_LINK_ORDER").is_some_and(|v| v == "0") {
        return;
    }
    // The list names the optimized builds' symbols; a debug build has
    // others, and Linux's linkers are the ones tried.
    if std::env::var("PROFILE").as_deref() != Ok("release")
        || std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux")
    {
        return;
    }
    let (Some(manifest), Some(out)) = (std::env::var_os("CARGO_MANIFEST_DIR"), std::env::var_os("OUT_DIR")) else {
        return;
    };
    let order = Path::new(&manifest).join("link-order.txt");
    if !order.is_file() {
        return;
    }
    let args = [format!("-Wl,--symbol-ordering-file={}", order.display()), "-Wl,--no-warn-symbol-ordering".to_owned()];
    if links_with(&PathBuf::from(out), &args) {
        for arg in args {
            println!("cargo::rustc-link-arg-bin=safe-switch={arg}");
        }
    }
}

/// Tells whether a small program links with `args` given to the linker,
/// by the same compiler, target, flags and linker as this build.
fn links_with(out: &Path, args: &[String]) -> bool {
    let source = out.join("link_probe.rs");
    if std::fs::write(&source, "fn main() {}\n").is_err() {
        return false;
    }
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let mut cmd = Command::new(rustc);
    if let Ok(flags) = std::env::var("CARGO_ENCODED_RUSTFLAGS") {
        cmd.args(flags.split('\x1f').filter(|f| !f.is_empty()));
    }
    if let Some(target) = std::env::var_os("TARGET") {
        cmd.arg("--target").arg(target);
    }
    if let Some(linker) = std::env::var_os("RUSTC_LINKER") {
        cmd.arg("-C").arg(format!("linker={}", linker.to_string_lossy()));
    }
    for arg in args {
        cmd.arg("-C").arg(format!("link-arg={arg}"));
    }
    cmd.arg("--crate-type=bin").arg("-o").arg(out.join("link_probe")).arg(&source);
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    cmd.status().is_ok_and(|s| s.success())
}
