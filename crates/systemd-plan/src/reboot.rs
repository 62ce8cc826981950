//! What a switch leaves for the next boot, as a pure function of the two
//! generations and the live state.
//!
//! The reasons, in the order the plan lists them:
//!
//! - `kernel`: the `kernel` link leads to another file; `kernel-params`
//!   (the kernel command line) differs; or the running kernel's release is
//!   none of the new generation's module releases (a kernel switched to
//!   earlier and never booted).
//! - `initrd`: the `initrd` link leads to another file.
//! - `kernel-modules`: a module the new generation adds or changes cannot
//!   be used before a reboot (see [`modules`]).
//! - `dbus`: the D-Bus implementation changes, dbus-daemon to dbus-broker
//!   or back: by NixOS's switch inhibitor `dbus-implementation` when both
//!   generations have it, else by the program `dbus.service` runs. The bus
//!   is never restarted; NixOS's switch refuses such a change.
//! - `systemd`: `init-interface-version` differs. NixOS's switch then
//!   changes nothing (exit 100) and says the new configuration takes effect
//!   at the next boot; a re-execution covers a new systemd binary or
//!   `system.conf` (the plan's `reexec` step), not a new interface between
//!   the init and the generation.
//! - `activation`: a NixOS switch inhibitor other than
//!   `dbus-implementation` changes (present in both, with another value:
//!   NixOS's rule), or `/run/reboot-required` exists on the host, the
//!   marker an activation writes to ask for a reboot (Debian's convention;
//!   `/run` is emptied at boot).
//!
//! Files are compared by identity (their store path), never by reading
//! them here: the loader identified them.

use std::collections::BTreeMap;

use plan_model::{KernelModule, LiveState, ModuleChange, ModuleUse, Reboot, RebootReason};

use crate::generation::{GenerationUnits, ModuleRelease, module_name};

/// The switch inhibitor through which NixOS names the D-Bus
/// implementation (`dbus` or `broker`).
const DBUS_INHIBITOR: &str = "dbus-implementation";

/// The most modules a `kernel-modules` reason names; the rest are counted.
const NAMED_MODULES: usize = 8;

/// The most characters of an inhibitor's value shown.
const VALUE_SHOWN: usize = 120;

/// The reboot reasons and the module list of a switch from `old` to `new`.
pub fn reboot(old: &GenerationUnits, new: &GenerationUnits, live: &LiveState) -> (Vec<Reboot>, Vec<KernelModule>) {
    let (ob, nb) = (old.boot(), new.boot());
    let mut out = Vec::new();
    let mut push = |reason, detail: String| out.push(Reboot { reason, detail });

    let kernel_changed = matches!((&ob.kernel, &nb.kernel), (Some(a), Some(b)) if a != b);
    if let (Some(a), Some(b)) = (&ob.kernel, &nb.kernel)
        && a != b
    {
        push(RebootReason::Kernel, format!("the kernel changes: {a} -> {b}"));
    }
    if let (Some(a), Some(b)) = (&ob.kernel_params, &nb.kernel_params)
        && a != b
    {
        push(RebootReason::Kernel, "the kernel command line (kernel-params) changes".to_owned());
    }
    let new_releases: Vec<&str> =
        nb.modules.iter().flat_map(|t| t.releases.keys().map(String::as_str)).collect::<Vec<_>>();
    if !kernel_changed
        && let Some(running) = &live.kernel_release
        && !new_releases.is_empty()
        && !new_releases.contains(&running.as_str())
    {
        push(
            RebootReason::Kernel,
            format!(
                "the running kernel is {running}, the new generation's is {}: the host was not booted into \
                 its kernel since it changed",
                new_releases.join(", ")
            ),
        );
    }
    if let (Some(a), Some(b)) = (&ob.initrd, &nb.initrd)
        && a != b
    {
        push(RebootReason::Initrd, format!("the initrd changes: {a} -> {b}"));
    }

    let modules = modules(old, new, live, kernel_changed);
    let later: Vec<&KernelModule> = modules.iter().filter(|m| m.usable == ModuleUse::AfterReboot).collect();
    if !later.is_empty() {
        let mut named: Vec<String> =
            later.iter().take(NAMED_MODULES).map(|m| format!("{} ({})", m.module, m.detail)).collect();
        if later.len() > NAMED_MODULES {
            named.push(format!("and {} more", later.len() - NAMED_MODULES));
        }
        let n = later.len();
        push(
            RebootReason::KernelModules,
            format!("{n} module{} usable only after a reboot: {}", if n == 1 { "" } else { "s" }, named.join("; ")),
        );
    }

    let inhibitors = match (&ob.switch_inhibitors, &nb.switch_inhibitors) {
        (Some(a), Some(b)) => changed_inhibitors(a, b),
        _ => Vec::new(),
    };
    match inhibitors.iter().find(|(key, _, _)| *key == DBUS_INHIBITOR) {
        Some((_, a, b)) => push(
            RebootReason::Dbus,
            format!(
                "the D-Bus implementation changes ({DBUS_INHIBITOR}: {a} -> {b}); the running message bus is never \
                 replaced by a switch, and NixOS's switch refuses this one"
            ),
        ),
        None => {
            if let (Some(a), Some(b)) = (dbus_implementation(old), dbus_implementation(new))
                && a.0 != b.0
            {
                push(
                    RebootReason::Dbus,
                    format!(
                        "the D-Bus implementation changes: {} ({}) -> {} ({}); the running message bus is never \
                         replaced by a switch, and NixOS's switch refuses this one",
                        a.0, a.1, b.0, b.1
                    ),
                );
            }
        }
    }

    if old.init_interface_version() != new.init_interface_version() {
        push(
            RebootReason::Systemd,
            format!(
                "init-interface-version changes ({} -> {}): the new generation's init is incompatible with the \
                 running one, which a re-execution does not change",
                old.init_interface_version().unwrap_or("none"),
                new.init_interface_version().unwrap_or("none")
            ),
        );
    }

    for (key, a, b) in inhibitors.iter().filter(|(key, _, _)| *key != DBUS_INHIBITOR) {
        push(
            RebootReason::Activation,
            format!(
                "the switch inhibitor {key} changes ({a} -> {b}): the new generation declares that it takes \
                 effect at the next boot (NixOS's switch refuses it)"
            ),
        );
    }
    if live.reboot_required {
        push(
            RebootReason::Activation,
            "/run/reboot-required exists: an activation (or a package manager) asked for a reboot that has not \
             happened yet"
                .to_owned(),
        );
    }
    out.sort_by_key(|r| r.reason);
    (out, modules)
}

/// The switch inhibitors present in both generations with another value,
/// as NixOS's pre-switch check finds them: `(key, old, new)`, values cut
/// to a readable length.
fn changed_inhibitors(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> Vec<(String, String, String)> {
    old.iter()
        .filter_map(|(key, a)| {
            let b = new.get(key)?;
            (a != b).then(|| (key.clone(), shorten(a), shorten(b)))
        })
        .collect()
}

/// A value cut to [`VALUE_SHOWN`] characters.
fn shorten(value: &str) -> String {
    match value.char_indices().nth(VALUE_SHOWN) {
        Some((at, _)) => format!("{}...", &value[..at]),
        None => value.to_owned(),
    }
}

/// The D-Bus implementation a generation runs, and the unit that tells:
/// the program `dbus.service` starts (`dbus-daemon` or
/// `dbus-broker-launch`; NixOS makes `dbus.service` an alias of
/// `dbus-daemon.service` or `dbus-broker.service`), or without a
/// `dbus.service`, which of `dbus-broker.service` and
/// `dbus-daemon.service` it has.
fn dbus_implementation(g: &GenerationUnits) -> Option<(&'static str, &'static str)> {
    let present = |name: &str| g.unit(name).is_some_and(|u| !u.is_masked() && u.fragment().is_some());
    if let Some(unit) = g.unit("dbus.service").filter(|u| !u.is_masked()) {
        let program = unit.get("Service", "ExecStart").and_then(|v| v.split_whitespace().next()).unwrap_or_default();
        let program = program.trim_start_matches(['@', '-', ':', '+', '!', '|']);
        let file = program.rsplit('/').next().unwrap_or_default();
        if file.starts_with("dbus-broker") {
            return Some(("dbus-broker", "dbus.service"));
        }
        if file.starts_with("dbus-daemon") {
            return Some(("dbus-daemon", "dbus.service"));
        }
    }
    if present("dbus-broker.service") {
        return Some(("dbus-broker", "dbus-broker.service"));
    }
    if present("dbus-daemon.service") {
        return Some(("dbus-daemon", "dbus-daemon.service"));
    }
    None
}

/// The kernel modules the new generation adds or changes, each with when
/// it can be used.
///
/// Modules are compared by their path under their release directory. A
/// module is listed as changed only when the kernel did not change: with a
/// new kernel every module is another file, and the `kernel` reason
/// already says they all wait for the boot; then only paths new to the
/// tree are listed. Two trees that are the same store path hold the same
/// modules.
///
/// A module can be used now when `modules.dep` of its release lists it,
/// it is built for the running kernel (`kernel_release`), the kernel does
/// not hold a module of that name already (the loaded one stays until it
/// is unloaded, which a switch never does), and `modprobe` reads the new
/// generation's tree: NixOS's kmod looks in the booted generation's tree
/// (`/run/booted-system/kernel-modules`) before the running one's, so
/// while the host runs a booted tree other than the new one
/// (`booted_kernel_modules`), what the switch adds waits for the reboot.
pub fn modules(
    old: &GenerationUnits,
    new: &GenerationUnits,
    live: &LiveState,
    kernel_changed: bool,
) -> Vec<KernelModule> {
    let Some(new_tree) = &new.boot().modules else { return Vec::new() };
    let old_tree = old.boot().modules.as_ref();
    if let (Some(a), Some(b)) = (old_tree.and_then(|t| t.identity.as_ref()), new_tree.identity.as_ref())
        && a == b
    {
        return Vec::new();
    }
    let empty = ModuleRelease::default();
    // With another release, the old tree's only release is what the paths
    // are compared with.
    let only_old = old_tree.filter(|t| t.releases.len() == 1).and_then(|t| t.releases.values().next());
    let mut out = Vec::new();
    for (release, rel) in &new_tree.releases {
        let same = old_tree.and_then(|t| t.releases.get(release));
        let before = same.or(only_old).unwrap_or(&empty);
        let list_changed = same.is_some() && !kernel_changed;
        for (path, identity) in &rel.modules {
            let change = match before.modules.get(path) {
                None => ModuleChange::Added,
                Some(was) if was != identity && list_changed => ModuleChange::Changed,
                Some(_) => continue,
            };
            let Some(name) = module_name(path) else { continue };
            let (usable, detail) = usable(name, release, path, rel, new_tree.identity.as_deref(), live);
            out.push(KernelModule {
                module: name.to_owned(),
                release: release.clone(),
                path: path.clone(),
                change,
                usable,
                detail,
            });
        }
    }
    out
}

/// When a module can be used, and why.
fn usable(
    name: &str,
    release: &str,
    path: &str,
    rel: &ModuleRelease,
    tree: Option<&str>,
    live: &LiveState,
) -> (ModuleUse, String) {
    if !rel.dep.contains(path) {
        return (ModuleUse::Unreachable, format!("modules.dep of {release} does not list it: modprobe cannot find it"));
    }
    let Some(running) = &live.kernel_release else {
        return (ModuleUse::Unknown, "the running kernel's release is not known".to_owned());
    };
    if running != release {
        return (ModuleUse::AfterReboot, format!("built for kernel {release}, the running kernel is {running}"));
    }
    if let Some(loaded) = live.loaded_modules.get(&name.replace('-', "_")) {
        let version = match &loaded.version {
            Some(v) => format!("version {v}"),
            None => "no version".to_owned(),
        };
        return (
            ModuleUse::AfterReboot,
            format!("loaded already ({version}); the kernel keeps that one until it is unloaded"),
        );
    }
    if let Some(booted) = &live.booted_kernel_modules
        && Some(booted.as_str()) != tree
    {
        return (
            ModuleUse::AfterReboot,
            format!("modprobe reads the booted generation's modules ({booted}) until the next boot"),
        );
    }
    (ModuleUse::Now, format!("built for the running kernel {running} and listed in modules.dep"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;

    use plan_model::LoadedModule;

    use super::*;
    use crate::generation::{Boot, ModuleTree};
    use crate::unit_file::UnitFile;

    const R: &str = "6.6.1";

    fn unit(name: &str, text: &str) -> (String, UnitFile) {
        (name.to_owned(), UnitFile::parse(Path::new(name), text).unwrap())
    }

    fn generation(units: &[(&str, &str)], boot: Boot) -> GenerationUnits {
        GenerationUnits::from_units("gen", units.iter().map(|(n, t)| unit(n, t))).with_boot(boot)
    }

    /// A module tree of one release: `(path, identity)` and the paths
    /// `modules.dep` lists.
    fn tree(identity: &str, release: &str, modules: &[(&str, &str)], dep: &[&str]) -> Option<ModuleTree> {
        let rel = ModuleRelease {
            modules: modules.iter().map(|(p, i)| ((*p).to_owned(), (*i).to_owned())).collect(),
            dep: dep.iter().map(|p| (*p).to_owned()).collect(),
        };
        Some(ModuleTree { identity: Some(identity.to_owned()), releases: [(release.to_owned(), rel)].into() })
    }

    fn boot(kernel: &str, modules: Option<ModuleTree>) -> Boot {
        Boot {
            kernel: Some(kernel.to_owned()),
            initrd: Some(format!("{kernel}-initrd")),
            kernel_params: Some("loglevel=4".to_owned()),
            modules,
            switch_inhibitors: None,
        }
    }

    fn running(release: &str) -> LiveState {
        LiveState { kernel_release: Some(release.to_owned()), ..LiveState::default() }
    }

    fn reasons(r: &[Reboot]) -> Vec<&'static str> {
        r.iter().map(|r| r.reason.as_str()).collect()
    }

    #[test]
    fn an_unchanged_boot_needs_nothing() {
        let b = boot("/nix/store/k/bzImage", tree("/nix/store/m", R, &[("kernel/a.ko", "x")], &["kernel/a.ko"]));
        let (reboot, modules) = super::reboot(&generation(&[], b.clone()), &generation(&[], b), &running(R));
        assert!(reboot.is_empty() && modules.is_empty(), "{reboot:?} {modules:?}");
    }

    #[test]
    fn a_new_kernel_initrd_or_command_line_waits_for_the_boot() {
        let old = boot("/nix/store/aaaa-linux/bzImage", None);
        let mut new = boot("/nix/store/bbbb-linux/bzImage", None);
        new.kernel_params = Some("loglevel=7".into());
        let (reboot, _) = super::reboot(&generation(&[], old.clone()), &generation(&[], new), &LiveState::default());
        assert_eq!(reasons(&reboot), ["kernel", "kernel", "initrd"]);
        assert_eq!(
            reboot[0].detail,
            "the kernel changes: /nix/store/aaaa-linux/bzImage -> /nix/store/bbbb-linux/bzImage"
        );
        assert!(reboot[1].detail.contains("kernel-params"), "{}", reboot[1].detail);
        // A generation without a kernel (a container) asks for none.
        let (reboot, _) =
            super::reboot(&generation(&[], old), &generation(&[], Boot::default()), &LiveState::default());
        assert!(reboot.is_empty(), "{reboot:?}");
    }

    #[test]
    fn a_kernel_switched_to_earlier_and_never_booted_is_named() {
        let b = boot("/nix/store/k/bzImage", tree("/nix/store/m", "6.6.2", &[], &[]));
        let (reboot, _) = super::reboot(&generation(&[], b.clone()), &generation(&[], b.clone()), &running(R));
        assert_eq!(reasons(&reboot), ["kernel"]);
        assert!(reboot[0].detail.starts_with("the running kernel is 6.6.1, the new generation's is 6.6.2"));
        let (reboot, _) = super::reboot(&generation(&[], b.clone()), &generation(&[], b), &running("6.6.2"));
        assert!(reboot.is_empty());
    }

    #[test]
    fn each_added_module_says_when_it_can_be_used() {
        let old = boot("/nix/store/k", tree("/nix/store/m1", R, &[("kernel/loop.ko.xz", "l")], &["kernel/loop.ko.xz"]));
        let modules = [
            ("kernel/loop.ko.xz", "l"),
            ("extra/wireguard.ko.xz", "w"),
            ("extra/v4l2loopback.ko", "v"),
            ("extra/nvidia-drm.ko.zst", "n"),
            ("extra/stray.ko", "s"),
        ];
        let dep = ["kernel/loop.ko.xz", "extra/wireguard.ko.xz", "extra/v4l2loopback.ko", "extra/nvidia-drm.ko.zst"];
        let new = boot("/nix/store/k", tree("/nix/store/m2", R, &modules, &dep));
        let mut live = running(R);
        live.loaded_modules.insert("nvidia_drm".into(), LoadedModule { version: Some("550.54".into()) });
        let (reboot, listed) = super::reboot(&generation(&[], old.clone()), &generation(&[], new.clone()), &live);
        let summary: Vec<(&str, ModuleChange, ModuleUse)> =
            listed.iter().map(|m| (m.module.as_str(), m.change, m.usable)).collect();
        assert_eq!(
            summary,
            [
                ("nvidia-drm", ModuleChange::Added, ModuleUse::AfterReboot),
                ("stray", ModuleChange::Added, ModuleUse::Unreachable),
                ("v4l2loopback", ModuleChange::Added, ModuleUse::Now),
                ("wireguard", ModuleChange::Added, ModuleUse::Now),
            ]
        );
        assert_eq!(listed[0].detail, "loaded already (version 550.54); the kernel keeps that one until it is unloaded");
        assert_eq!(listed[1].detail, "modules.dep of 6.6.1 does not list it: modprobe cannot find it");
        assert_eq!(reasons(&reboot), ["kernel-modules"]);
        assert!(reboot[0].detail.starts_with("1 module usable only after a reboot: nvidia-drm (loaded already"));

        // NixOS's modprobe reads the booted generation's tree first: while
        // that is the old one, nothing the switch adds is reachable.
        live.booted_kernel_modules = Some("/nix/store/m1".into());
        let (reboot, listed) = super::reboot(&generation(&[], old.clone()), &generation(&[], new.clone()), &live);
        let wireguard = listed.iter().find(|m| m.module == "wireguard").unwrap();
        assert_eq!(wireguard.usable, ModuleUse::AfterReboot);
        assert_eq!(
            wireguard.detail,
            "modprobe reads the booted generation's modules (/nix/store/m1) until the next boot"
        );
        assert!(reboot[0].detail.starts_with("3 modules usable only after a reboot"), "{}", reboot[0].detail);
        // ... unless the booted tree is the new one.
        live.booted_kernel_modules = Some("/nix/store/m2".into());
        let (_, listed) = super::reboot(&generation(&[], old.clone()), &generation(&[], new.clone()), &live);
        assert_eq!(listed.iter().find(|m| m.module == "wireguard").unwrap().usable, ModuleUse::Now);

        // Built for another kernel than the one running.
        let (_, listed) =
            super::reboot(&generation(&[], old.clone()), &generation(&[], new.clone()), &running("6.1.0"));
        let wireguard = listed.iter().find(|m| m.module == "wireguard").unwrap();
        assert_eq!(
            (wireguard.usable, wireguard.detail.as_str()),
            (ModuleUse::AfterReboot, "built for kernel 6.6.1, the running kernel is 6.1.0")
        );
        // Not known which kernel runs.
        let (reboot, listed) = super::reboot(&generation(&[], old), &generation(&[], new), &LiveState::default());
        assert!(listed.iter().filter(|m| m.module != "stray").all(|m| m.usable == ModuleUse::Unknown));
        assert!(reboot.is_empty(), "{reboot:?}");
    }

    #[test]
    fn changed_modules_are_listed_while_the_kernel_stays_and_only_new_paths_with_a_new_one() {
        let old_modules = [("kernel/a.ko", "a1"), ("extra/zfs.ko", "z1")];
        let new_modules = [("kernel/a.ko", "a1"), ("extra/zfs.ko", "z2"), ("extra/new.ko", "n")];
        let dep = ["kernel/a.ko", "extra/zfs.ko", "extra/new.ko"];
        let old = boot("/nix/store/k1", tree("/nix/store/m1", R, &old_modules, &dep));
        let new = boot("/nix/store/k1", tree("/nix/store/m2", R, &new_modules, &dep));
        let mut live = running(R);
        live.loaded_modules.insert("zfs".into(), LoadedModule { version: None });
        let (_, listed) = super::reboot(&generation(&[], old.clone()), &generation(&[], new), &live);
        let summary: Vec<(&str, ModuleChange, ModuleUse)> =
            listed.iter().map(|m| (m.path.as_str(), m.change, m.usable)).collect();
        assert_eq!(
            summary,
            [
                ("extra/new.ko", ModuleChange::Added, ModuleUse::Now),
                ("extra/zfs.ko", ModuleChange::Changed, ModuleUse::AfterReboot)
            ]
        );
        assert!(listed[1].detail.starts_with("loaded already (no version)"), "{}", listed[1].detail);
        // A new kernel of another release: every module is another file;
        // only the path new to the tree is listed, for the new release.
        let new = boot(
            "/nix/store/k2",
            tree(
                "/nix/store/m3",
                "6.6.2",
                &[("kernel/a.ko", "a2"), ("extra/zfs.ko", "z3"), ("extra/new.ko", "n")],
                &dep,
            ),
        );
        let (reboot, listed) = super::reboot(&generation(&[], old.clone()), &generation(&[], new), &live);
        assert_eq!(listed.iter().map(|m| m.path.as_str()).collect::<Vec<_>>(), ["extra/new.ko"]);
        assert_eq!(listed[0].release, "6.6.2");
        assert_eq!(reasons(&reboot), ["kernel", "initrd", "kernel-modules"]);
        // Two trees that are one store path are not compared.
        let same = boot("/nix/store/k1", tree("/nix/store/m1", R, &new_modules, &dep));
        let (_, listed) = super::reboot(&generation(&[], old), &generation(&[], same), &live);
        assert!(listed.is_empty(), "{listed:?}");
    }

    #[test]
    fn another_dbus_implementation_waits_for_the_boot() {
        let daemon = ("dbus.service", "[Service]\nExecStart=@/nix/store/d-dbus/bin/dbus-daemon --system\n");
        let broker =
            ("dbus.service", "[Service]\nExecStart=/nix/store/b-dbus-broker/bin/dbus-broker-launch --scope system\n");
        let (reboot, _) = super::reboot(
            &generation(&[daemon], Boot::default()),
            &generation(&[broker], Boot::default()),
            &LiveState::default(),
        );
        assert_eq!(reasons(&reboot), ["dbus"]);
        assert!(
            reboot[0].detail.starts_with(
                "the D-Bus implementation changes: dbus-daemon (dbus.service) -> dbus-broker (dbus.service)"
            )
        );
        // The same program in another version is a reload, not a reboot.
        let daemon2 = ("dbus.service", "[Service]\nExecStart=/nix/store/e-dbus/bin/dbus-daemon --system\n");
        let (reboot, _) = super::reboot(
            &generation(&[daemon], Boot::default()),
            &generation(&[daemon2], Boot::default()),
            &LiveState::default(),
        );
        assert!(reboot.is_empty());
        // NixOS's own inhibitor says it first.
        let inhibit = |v: &str| Boot {
            switch_inhibitors: Some([("dbus-implementation".into(), v.into())].into()),
            ..Boot::default()
        };
        let (reboot, _) = super::reboot(
            &generation(&[daemon], inhibit("dbus")),
            &generation(&[daemon], inhibit("broker")),
            &LiveState::default(),
        );
        assert_eq!(reasons(&reboot), ["dbus"]);
        assert!(reboot[0].detail.contains("(dbus-implementation: dbus -> broker)"), "{}", reboot[0].detail);
    }

    #[test]
    fn another_init_interface_or_a_declared_reboot_is_named() {
        let mut old = generation(&[], Boot::default());
        let mut new = generation(&[], Boot::default());
        old.init_interface_version = Some("systemd 1".into());
        new.init_interface_version = Some("systemd 2".into());
        let mut live = LiveState { reboot_required: true, ..LiveState::default() };
        let inhibitors = |release: &str| -> Option<BTreeMap<String, String>> {
            Some([("nixos-release".to_owned(), release.to_owned()), ("only-old".to_owned(), "x".to_owned())].into())
        };
        old.boot.switch_inhibitors = inhibitors("25.05");
        new.boot.switch_inhibitors = inhibitors("25.11");
        new.boot.switch_inhibitors.as_mut().unwrap().remove("only-old");
        let (reboot, _) = super::reboot(&old, &new, &live);
        assert_eq!(reasons(&reboot), ["systemd", "activation", "activation"]);
        assert!(reboot[0].detail.starts_with("init-interface-version changes (systemd 1 -> systemd 2)"));
        assert!(reboot[1].detail.starts_with("the switch inhibitor nixos-release changes (25.05 -> 25.11)"));
        assert!(reboot[2].detail.starts_with("/run/reboot-required exists"));
        live.reboot_required = false;
        new.init_interface_version = Some("systemd 1".into());
        new.boot.switch_inhibitors = inhibitors("25.05");
        assert!(super::reboot(&old, &new, &live).0.is_empty());
    }
}
