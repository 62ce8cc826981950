//! House rules checked as ordinary tests: every source file starts with a
//! `//!` module doc, no pending insta snapshot is left behind, and every
//! snapshot belongs to a fixture case that still exists.

use std::path::Path;

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn every_rust_file_has_a_module_doc_and_no_snapshot_is_pending() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    walk(&root.join("src"), &mut files);
    walk(&root.join("tests"), &mut files);
    for file in files {
        let name = file.display().to_string();
        assert!(!name.ends_with(".snap.new"), "pending snapshot: {name}");
        if name.ends_with(".rs") {
            let text = std::fs::read_to_string(&file).unwrap();
            assert!(text.starts_with("//!"), "{name} does not start with a //! module doc");
        }
    }
}

#[test]
fn every_snapshot_belongs_to_a_fixture_case() {
    let cases = crate::fixtures::cases();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/snapshots");
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".snap") else {
            continue;
        };
        let case = stem.split_once('@').map(|(_, case)| case).unwrap_or(stem);
        assert!(cases.iter().any(|c| c == case), "snapshot {name} has no fixture case");
    }
}
