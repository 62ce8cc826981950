//! system-manager generations through the binary: `switch` refuses them
//! before anything is asked of systemd or changed, naming the generation.
//! (Planning them is covered by the golden cases `system-manager*`.)
//!
//! `switch` checks for root first, so this needs root: under `CI=true` it
//! fails when it cannot run, elsewhere it skips with a message.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests may panic")]

mod hermetic;

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_safe-switch");

#[test]
fn switch_refuses_a_system_manager_generation() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        assert!(std::env::var_os("CI").is_none(), "this test needs root under CI");
        eprintln!("SKIPPED switch_refuses_a_system_manager_generation: needs root");
        return;
    }
    let new = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/system-manager/new");
    let out = hermetic::hermetic(&mut Command::new(BIN))
        .args(["switch", "--no-isolate", "--toplevel"])
        .arg(&new)
        // Nothing may be asked of systemd: no bus at this address.
        .env("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent/bus")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("a system-manager generation"), "{stderr}");
    assert!(stderr.contains("nothing was changed"), "{stderr}");
}
