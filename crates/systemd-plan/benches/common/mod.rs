//! The fixture the benchmarks share: a pair of generations laid out as
//! NixOS lays them out, and the live state of a host running the old one.

#![allow(dead_code, reason = "each benchmark uses a part")]

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use plan_model::{LiveState, LiveUnit};

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().expect("paths in the tree have parents")).expect("create directory");
    fs::write(path, text).expect("write file");
}

/// Where a generation's unit files are.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Layout<'a> {
    /// In the generation's own `nix/store` (services, linked as
    /// `/nix/store/...`) or in its unit directory (the rest): every file is
    /// the generation's own, even where the other generation's is the same.
    Own,
    /// Every unit file and drop-in in the store directory that holds the
    /// generation, linked by its absolute path, named after what it holds:
    /// a file the other generation has unchanged is the same file, as in a
    /// Nix store.
    Shared(&'a Path),
}

/// Writes one generation. `version` changes every tenth service and every
/// hundredth drop-in, so the plan has work to do. In the [`Layout::Shared`]
/// layout `root` is a directory of the store.
pub(crate) fn generation(root: &Path, version: u32, count: usize) {
    generation_in(Layout::Own, root, version, count);
}

/// [`generation`], laid out as `layout` says.
pub(crate) fn generation_in(layout: Layout<'_>, root: &Path, version: u32, count: usize) {
    let (units, link) = match layout {
        Layout::Own => {
            let store = format!("nix/store/{version:08}-system-units");
            (root.join(&store), std::path::PathBuf::from(format!("/{store}")))
        }
        Layout::Shared(store) => {
            let units = store.join(format!("{version:08}-system-units"));
            (units.clone(), units)
        }
    };
    fs::create_dir_all(root.join("etc/systemd")).expect("create etc");
    fs::create_dir_all(&units).expect("create unit directory");
    symlink(link, root.join("etc/systemd/system")).expect("link unit dir");
    write(&root.join("init-interface-version"), "systemd 2\n");
    write(&root.join("activate"), "#!/bin/sh\n");
    write(&root.join("etc/fstab"), "/dev/sda1 / ext4 defaults 0 1\n/dev/sda2 /nix ext4 defaults 0 2\n");
    // A unit file or drop-in at `rel` in the unit directory. In the own
    // layout, written there; in the shared layout, linked from the store
    // path `store_name`.
    let place = |rel: &str, store_name: &str, text: &str| match layout {
        Layout::Own => write(&units.join(rel), text),
        Layout::Shared(store) => {
            let file_name = Path::new(rel).file_name().expect("a file name");
            let file = store.join(store_name).join(file_name);
            if !file.exists() {
                write(&file, text);
            }
            let at = units.join(rel);
            fs::create_dir_all(at.parent().expect("paths in the tree have parents")).expect("create directory");
            symlink(&file, at).expect("link unit");
        }
    };
    let mut wants = Vec::new();
    let services = count - 100;
    for i in 0..services {
        let name = format!("svc-{i:05}.service");
        let changed = if i % 10 == 0 { version } else { 0 };
        let mut text = String::new();
        let _ = write!(
            text,
            "[Unit]\nDescription=Service {i}\nAfter=network.target svc-{:05}.service\nRequires=svc-{:05}.service\n\
             X-Restart-Triggers=/nix/store/{changed:08}-config-{i}\n\n[Service]\nType=simple\n\
             ExecStart=/nix/store/aaaa-app/bin/app --id {i} --flag \\\n  --more-flags\nEnvironment=ID={i}\n\
             Environment=\"PATH=/nix/store/bbbb-coreutils/bin\"\nRestart=always\nUser=svc{i}\n",
            (i + 1) % services,
            (i + 7) % services,
        );
        match i % 50 {
            10 => text.push_str("X-RestartIfChanged=false\n"),
            20 => text.push_str("X-ReloadIfChanged=true\nExecReload=/bin/kill -HUP $MAINPID\n"),
            30 => text.push_str("X-StopIfChanged=false\n"),
            _ => {}
        }
        text.push_str("\n[Install]\nWantedBy=multi-user.target\n");
        match layout {
            Layout::Own => {
                let file = root.join(format!("nix/store/{i:05}-{version}-unit-{name}/{name}"));
                write(&file, &text);
                symlink(format!("/nix/store/{i:05}-{version}-unit-{name}/{name}"), units.join(&name))
                    .expect("link unit");
            }
            Layout::Shared(_) => place(&name, &format!("{i:05}-{changed}-unit-{name}"), &text),
        }
        if i % 20 == 0 {
            let drop_in_version = if i % 100 == 0 { version } else { 0 };
            place(
                &format!("{name}.d/overrides.conf"),
                &format!("{i:05}-{drop_in_version}-overrides"),
                &format!("[Service]\nNice={drop_in_version}\nLimitNOFILE=4096\n"),
            );
        }
        if i % 25 == 0 {
            place(
                &format!("svc-{i:05}.socket"),
                &format!("{i:05}-socket"),
                &format!("[Socket]\nListenStream=/run/svc-{i}.sock\n"),
            );
        }
        wants.push(name);
    }
    for i in 0..50 {
        place(
            &format!("tpl-{i}@.service"),
            &format!("tpl-{i}-{version}"),
            &format!("[Service]\nExecStart=/bin/tpl {i} %i v{version}\n"),
        );
        place(&format!("other-{i}.target"), &format!("other-{i}-target"), &format!("[Unit]\nDescription=Target {i}\n"));
    }
    place("multi-user.target", "multi-user-target", "[Unit]\nDescription=Multi-User System\n");
    let wants_dir = units.join("multi-user.target.wants");
    fs::create_dir_all(&wants_dir).expect("create wants");
    for name in wants {
        symlink(format!("../{name}"), wants_dir.join(&name)).expect("link wants");
    }
}

/// The live state: every unit of the old generation active, plus a few
/// template instances.
pub(crate) fn live(old: &systemd_plan::GenerationUnits) -> LiveState {
    let mut live = systemd_plan::assumed_live_state(old);
    for i in 0..50 {
        live.units.insert(
            format!("tpl-{i}@x.service"),
            LiveUnit {
                active_state: "active".into(),
                fragment_path: format!("/etc/systemd/system/tpl-{i}@.service"),
                ..LiveUnit::default()
            },
        );
    }
    live
}
