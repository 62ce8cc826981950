//! What a loaded pair of generations holds in memory: `safe-switch plan`
//! keeps both for the whole plan, and a host has thousands of units.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use testbed::fuzz::{held_memory, peak_memory};

/// Services per generation: few enough that the loader reads them on the
/// calling thread, whose allocations the counting allocator counts.
const SERVICES: usize = 200;

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

/// Writes a generation into `store` as NixOS lays one out: every unit file
/// and drop-in linked from its own store path, so that the files of units
/// the other generation has unchanged are the same files. Every tenth
/// service changes with `version`. Returns the bytes of the files it
/// wrote that were not in the store yet.
fn generation(store: &Path, version: u32) -> usize {
    let root = store.join(format!("{version}-system"));
    let units = store.join(format!("{version}-units"));
    fs::create_dir_all(root.join("etc/systemd")).unwrap();
    fs::create_dir_all(units.join("multi-user.target.wants")).unwrap();
    symlink(&units, root.join("etc/systemd/system")).unwrap();
    let mut written = 0;
    let mut place = |rel: &str, store_name: &str, text: &str| {
        let file = store.join(store_name).join(Path::new(rel).file_name().unwrap());
        if !file.exists() {
            write(&file, text);
            written += text.len();
        }
        fs::create_dir_all(units.join(rel).parent().unwrap()).unwrap();
        symlink(&file, units.join(rel)).unwrap();
    };
    for i in 0..SERVICES {
        let name = format!("svc-{i:05}.service");
        let changed = if i % 10 == 0 { version } else { 0 };
        let mut text = String::new();
        write!(
            text,
            "[Unit]\nDescription=Service {i}\nAfter=network.target\nX-Restart-Triggers=/nix/store/{changed:08}-config\n\n\
             [Service]\nType=simple\nExecStart=/nix/store/aaaa-app/bin/app --id {i}\nEnvironment=ID={i}\n\
             Environment=\"PATH=/nix/store/bbbb-coreutils/bin\"\nRestart=always\nUser=svc{i}\n\n\
             [Install]\nWantedBy=multi-user.target\n"
        )
        .unwrap();
        place(&name, &format!("{i:05}-{changed}-unit"), &text);
        if i % 20 == 0 {
            place(&format!("{name}.d/overrides.conf"), &format!("{i:05}-overrides"), "[Service]\nNice=5\n");
        }
        symlink(format!("../{name}"), units.join("multi-user.target.wants").join(&name)).unwrap();
    }
    place("multi-user.target", "multi-user-target", "[Unit]\nDescription=Multi-User System\n");
    written
}

#[test]
fn a_loaded_pair_of_generations_holds_its_texts_and_little_more() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let texts = generation(&store, 1) + generation(&store, 2);
    let units = 2 * (SERVICES + 1);
    let before = held_memory();
    let ((old, new), peak) = peak_memory(|| systemd_plan::load_pair(&store.join("1-system"), &store.join("2-system")));
    let (old, new) = (old.unwrap(), new.unwrap());
    let held = usize::try_from(held_memory() - before).unwrap();
    let peak = usize::try_from(peak).unwrap();
    assert_eq!(old.unit_names().count() + new.unit_names().count(), units);
    // Every text is kept once, whichever generations have it; the rest
    // (names, settings, links) takes a few hundred bytes a unit.
    let per_unit = held.saturating_sub(texts) / units;
    println!("{held} bytes held for {units} units and {texts} bytes of text: {per_unit} bytes a unit besides");
    assert!(per_unit <= 400, "{per_unit} bytes a unit besides the texts");
    // What reading takes on top, and lets go once done: what was read of
    // each file, held until the units are put together.
    let reading = (peak - held) / units;
    println!("{peak} bytes at the peak of loading: {reading} bytes a unit more than held after");
    assert!(reading <= 200, "{reading} bytes a unit while loading");
}

#[test]
fn the_relation_graph_holds_each_name_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    generation(&store, 1);
    generation(&store, 2);
    let (old, new) = systemd_plan::load_pair(&store.join("1-system"), &store.join("2-system"));
    let (old, new) = (old.unwrap(), new.unwrap());
    let live = systemd_plan::assumed_live_state(&old);
    let before = held_memory();
    let graph = systemd_plan::protect::UnitGraph::build(&old, &new, &live);
    let held = usize::try_from(held_memory() - before).unwrap();
    let per_unit = held / graph.unit_count();
    println!("{held} bytes held for {} units and {} relations", graph.unit_count(), graph.relation_count());
    // A node, its name, its relations and its entry in the name index.
    assert!(per_unit <= 120, "{per_unit} bytes a unit");
}
