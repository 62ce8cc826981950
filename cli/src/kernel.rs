//! What the host's kernel runs, for the plan's reboot reasons and kernel
//! modules: the release (`uname -r`), the loaded modules with their
//! versions, the module tree NixOS's `modprobe` reads, and whether
//! something asked for a reboot.
//!
//! | live field | read from |
//! |---|---|
//! | `kernel_release` | `uname(2)` |
//! | `loaded_modules` | `/proc/modules` (the first word of each line), `/sys/module/<name>/version` |
//! | `booted_kernel_modules` | `/run/booted-system/kernel-modules`, resolved, when it has `lib/modules/<release>` |
//! | `reboot_required` | whether `/run/reboot-required` exists (never its content) |
//!
//! Every read is bounded and non-blocking, names are checked before they
//! make a path, and what cannot be read is left unknown with a warning:
//! planning goes on, and the plan says what it could not tell. A debug
//! build reads these below `SAFE_SWITCH_TEST_KERNEL_ROOT` instead of `/`.

use std::path::{Path, PathBuf};

use generation_fs::Limit;
use plan_model::{LiveState, LoadedModule, is_kernel_release, is_module_name, is_module_version};

/// The most read from `/proc/modules` (a host has a few hundred lines).
const PROC_MODULES_LIMIT: Limit = Limit::new(4 << 20, "/proc/modules");
/// The most read from a module's `version`.
const VERSION_LIMIT: Limit = Limit::new(256, "a module version");
/// The most modules taken from `/proc/modules`.
const MAX_MODULES: usize = 10_000;

/// Fills the kernel fields of `live` from this host. What cannot be read
/// is said on standard error and left unknown.
pub(crate) fn read_into(live: &mut LiveState) {
    let root = root();
    let release = rustix::system::uname().release().to_str().ok().filter(|r| is_kernel_release(r)).map(str::to_owned);
    if let Err(err) = read_below(&root, release, live) {
        say!("warning: cannot read the loaded kernel modules ({err}); the plan does not know them");
    }
}

/// `/` of the kernel state, or the test hook's directory.
fn root() -> PathBuf {
    crate::test_hooks::path(crate::test_hooks::KERNEL_ROOT).unwrap_or_else(|| PathBuf::from("/"))
}

/// Tells whether `/run/reboot-required` exists: something asked for a
/// reboot.
pub(crate) fn reboot_marker() -> bool {
    std::fs::symlink_metadata(root().join("run/reboot-required")).is_ok()
}

/// What still waits for the next boot after an apply of `plan`, as lines
/// to say: the plan's reasons, and a reboot the activation asked for
/// during the switch (`/run/reboot-required` appeared). `marker_before`
/// is whether the marker existed before the apply.
pub(crate) fn after_apply(plan: &plan_model::Plan, marker_before: bool, marker_after: bool) -> Vec<String> {
    let mut lines = Vec::new();
    if plan.needs_reboot() {
        lines.push(format!(
            "needs a reboot: part of this switch takes effect only at the next boot ({}); nothing was restarted in \
             its place",
            plan_report::reboot_reasons(plan)
        ));
    }
    if marker_after && !marker_before {
        lines.push(
            "needs a reboot: the activation asked for one (/run/reboot-required appeared during the switch)".to_owned(),
        );
    }
    lines
}

/// [`read_into`] below `root`, with the running kernel's release.
fn read_below(root: &Path, release: Option<String>, live: &mut LiveState) -> Result<(), generation_fs::ReadError> {
    live.reboot_required = std::fs::symlink_metadata(root.join("run/reboot-required")).is_ok();
    live.booted_kernel_modules = release.as_deref().and_then(|r| booted_tree(root, r));
    live.kernel_release = release;
    let proc_modules = root.join("proc/modules");
    let Some(bytes) = generation_fs::read_host(&proc_modules, Path::new("/proc/modules"), PROC_MODULES_LIMIT)? else {
        return Ok(());
    };
    let text = String::from_utf8_lossy(&bytes);
    for name in text.lines().filter_map(|line| line.split_whitespace().next()).filter(|n| is_module_name(n)) {
        if live.loaded_modules.len() == MAX_MODULES {
            break;
        }
        let version = version(root, name);
        live.loaded_modules.insert(name.replace('-', "_"), LoadedModule { version });
    }
    Ok(())
}

/// A loaded module's version, when it declares one that reads as one.
fn version(root: &Path, name: &str) -> Option<String> {
    let path = root.join("sys/module").join(name).join("version");
    let shown = Path::new("/sys/module").join(name).join("version");
    let bytes = generation_fs::read_host(&path, &shown, VERSION_LIMIT).ok()??;
    let text = String::from_utf8(bytes).ok()?;
    Some(text.trim().to_owned()).filter(|v| is_module_version(v))
}

/// Where `/run/booted-system/kernel-modules` leads, when it has the
/// running release's modules: NixOS's kmod reads that tree before the
/// running generation's.
fn booted_tree(root: &Path, release: &str) -> Option<String> {
    let tree = std::fs::canonicalize(root.join("run/booted-system/kernel-modules")).ok()?;
    if !tree.join("lib/modules").join(release).is_dir() {
        return None;
    }
    let shown = match tree.strip_prefix(root) {
        Ok(rest) if root != Path::new("/") => Path::new("/").join(rest),
        _ => tree,
    };
    shown.to_str().filter(|s| !s.chars().any(char::is_control)).map(str::to_owned)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::fs;
    use std::os::unix::fs::symlink;

    use super::*;

    fn write(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    #[test]
    fn reads_the_loaded_modules_the_booted_tree_and_the_marker() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(
            &root.join("proc/modules"),
            "wireguard 118784 0 - Live 0x0000000000000000\n\
             nvidia-drm 90112 2 nvidia_modeset, Live 0x0000000000000000 (POE)\n\
             ../../etc 1 0 - Live 0x0\n\
             loop 40960 0 - Live 0x0000000000000000\n",
        );
        write(&root.join("sys/module/wireguard/version"), "1.0.0\n");
        write(&root.join("sys/module/loop/version"), "\u{1b}[31m\n");
        fs::create_dir_all(root.join("nix/store/mmmm-kernel-modules/lib/modules/6.6.1")).unwrap();
        fs::create_dir_all(root.join("run/booted-system")).unwrap();
        symlink(root.join("nix/store/mmmm-kernel-modules"), root.join("run/booted-system/kernel-modules")).unwrap();
        let mut live = LiveState::default();
        read_below(root, Some("6.6.1".into()), &mut live).unwrap();
        assert_eq!(live.kernel_release.as_deref(), Some("6.6.1"));
        let loaded: Vec<(&str, Option<&str>)> =
            live.loaded_modules.iter().map(|(n, m)| (n.as_str(), m.version.as_deref())).collect();
        assert_eq!(loaded, [("loop", None), ("nvidia_drm", None), ("wireguard", Some("1.0.0"))]);
        assert_eq!(live.booted_kernel_modules.as_deref(), Some("/nix/store/mmmm-kernel-modules"));
        assert!(!live.reboot_required);

        // Another kernel than the booted tree's; a reboot asked for.
        write(&root.join("run/reboot-required"), "");
        let mut live = LiveState::default();
        read_below(root, Some("6.6.2".into()), &mut live).unwrap();
        assert_eq!(live.booted_kernel_modules, None);
        assert!(live.reboot_required);
        // The result is a live state that reads back.
        let again = LiveState::from_json(&serde_json::to_string(&live).unwrap()).unwrap();
        assert_eq!(again, live);
    }

    #[test]
    fn after_an_apply_what_waits_for_the_boot_is_said() {
        let mut plan = plan_model::Plan::between("/a", "/b", vec![]);
        assert!(after_apply(&plan, false, false).is_empty());
        assert!(after_apply(&plan, true, true).is_empty(), "a marker from before is the plan's to say");
        assert_eq!(
            after_apply(&plan, false, true),
            ["needs a reboot: the activation asked for one (/run/reboot-required appeared during the switch)"]
        );
        plan.reboot.push(plan_model::Reboot { reason: plan_model::RebootReason::Kernel, detail: "x".into() });
        assert_eq!(
            after_apply(&plan, true, true),
            ["needs a reboot: part of this switch takes effect only at the next boot (kernel); nothing was \
              restarted in its place"]
        );
    }

    #[test]
    fn a_host_without_those_files_knows_nothing_and_a_huge_list_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut live = LiveState::default();
        read_below(dir.path(), None, &mut live).unwrap();
        assert_eq!(live, LiveState::default());
        fs::create_dir_all(dir.path().join("proc")).unwrap();
        let big = fs::File::create(dir.path().join("proc/modules")).unwrap();
        big.set_len(PROC_MODULES_LIMIT.bytes + 1).unwrap();
        let err = read_below(dir.path(), None, &mut live).unwrap_err();
        assert_eq!(err.to_string(), "/proc/modules: larger than 4 MiB, the most read from /proc/modules");
    }
}
