//! The repository's `examples/ci-runner` is exactly what
//! `testbed::example::export` writes, so the bundled generations and the
//! demo's never drift apart. After changing the examples, regenerate with
//! `rm -rf examples/ci-runner && cargo run -p testbed --bin safe-switch-demo
//! -- --export-examples examples/ci-runner`.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// What a tree holds: for each relative path, a description of the entry
/// (directory, symlink target, or file mode and content).
fn tree(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            let meta = fs::symlink_metadata(&path).unwrap();
            let desc = if meta.file_type().is_symlink() {
                format!("-> {}", fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                stack.push(path);
                "dir".to_owned()
            } else {
                let exec = meta.permissions().mode() & 0o111 != 0;
                format!("exec={exec}\n{}", fs::read_to_string(&path).unwrap())
            };
            out.insert(rel, desc);
        }
    }
    out
}

#[test]
fn bundled_examples_match_the_demo_generations() {
    let bundled = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/ci-runner");
    let fresh = tempfile::tempdir().unwrap();
    testbed::example::export(fresh.path()).unwrap();
    let (bundled, fresh) = (tree(&bundled), tree(fresh.path()));
    assert!(!fresh.is_empty());
    for (path, desc) in &fresh {
        assert_eq!(bundled.get(path), Some(desc), "examples/ci-runner/{} differs", path.display());
    }
    let extra: Vec<_> = bundled.keys().filter(|p| !fresh.contains_key(*p)).collect();
    assert!(extra.is_empty(), "examples/ci-runner has extra files: {extra:?}");
}
