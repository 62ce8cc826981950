//! system-manager generations through the binary: `switch` refuses them
//! before anything is asked of systemd or changed, naming the generation.
//! (Planning them is covered by the golden cases `system-manager*`.)
//!
//! `switch` checks for root first, so this needs root: under `CI=true` it
//! fails when it cannot run, elsewhere it skips with a message.

use std::process::Command;

use crate::support::{BIN, golden, hermetic};

#[test]
fn switch_refuses_a_system_manager_generation() {
    testbed::require!(root);
    let new = golden("system-manager/new");
    let out = hermetic(&mut Command::new(BIN))
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
