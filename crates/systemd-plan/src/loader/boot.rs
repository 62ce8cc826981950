//! Reading what a generation boots: `kernel`, `initrd`, `kernel-params`,
//! the module tree `kernel-modules` and NixOS's `switch-inhibitors`.
//!
//! Everything is read under the generation's rule ([`GenerationDir`]):
//! inside the generation and the store only. The kernel and the initrd are
//! identified by the store path their links name and never read (a link
//! out of the store is identified by the path it names, unfollowed, as the
//! systemd binary is); the module tree is walked, bounded in depth and in
//! entries, and a module file is identified by its store path, or by the
//! digest of its content when it is in no store or in the generation
//! itself (two generations are two store paths even where a file of each
//! is the same). Nothing of these files
//! reaches a report but their names and store paths.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use generation_fs::{GenerationDir, Limit, ReadError, Resolved};
use sha2::{Digest, Sha256};

use super::{LoadError, list_dir, outside_error, read_text, utf8};
use crate::generation::{Boot, ModuleRelease, ModuleTree, module_name};

/// The most read from `kernel-params` and `switch-inhibitors`.
const SMALL_FILE_LIMIT: Limit = Limit::new(64 << 10, "a boot file");
/// The most read from one release's `modules.dep` (a real one is about
/// 1 MiB).
const MODULES_DEP_LIMIT: Limit = Limit::new(32 << 20, "modules.dep");
/// The most read from one module file in no store, to identify it.
const MODULE_LIMIT: Limit = Limit::new(256 << 20, "a kernel module");
/// The most bytes of module files in no store read for one generation.
const MODULE_BYTES_BUDGET: u64 = 1 << 30;
/// The most entries looked at in one generation's module tree (a kernel
/// has about 6,000 modules).
const MAX_ENTRIES: usize = 200_000;
/// The deepest directory looked at below a release directory.
const MAX_DEPTH: usize = 16;
/// The most release directories in one tree (NixOS's has one).
const MAX_RELEASES: usize = 64;

/// Reads what the generation at `g` boots. The module files are listed
/// only when `list_modules` is set: a pair of generations whose trees are
/// the same store path hold the same modules.
pub(super) fn read(g: &GenerationDir, shown_root: &Path, list_modules: bool) -> Result<Boot, LoadError> {
    let kernel = link_identity(g, "kernel", &shown_root.join("kernel"))?;
    let initrd = link_identity(g, "initrd", &shown_root.join("initrd"))?;
    let params_path = shown_root.join("kernel-params");
    let kernel_params = read_text(g, "kernel-params", &params_path, SMALL_FILE_LIMIT)?.map(|t| t.trim().to_owned());
    let switch_inhibitors = inhibitors(g, &shown_root.join("switch-inhibitors"))?;
    let modules = module_tree(g, shown_root, list_modules)?;
    Ok(Boot { kernel, initrd, kernel_params, modules, switch_inhibitors })
}

/// Tells whether two generations' module trees must be listed to be
/// compared: not when both are the same store path.
pub(super) fn must_list(old: &GenerationDir, new: &GenerationDir) -> bool {
    match (tree_identity(old), tree_identity(new)) {
        (Some(a), Some(b)) => a != b,
        _ => true,
    }
}

/// The store path `kernel-modules` leads to, when it leads to one.
fn tree_identity(g: &GenerationDir) -> Option<String> {
    match g.resolve(Path::new("kernel-modules"), Path::new("kernel-modules")).ok()? {
        Resolved::Found(physical) => store_path(g, &physical),
        _ => None,
    }
}

/// The store path of a file the generation links to in another store path:
/// what identifies it without reading it. A file of the generation itself
/// has none (two generations are two store paths, even where their files
/// are the same), nor has a file in no store.
fn store_path(g: &GenerationDir, physical: &Path) -> Option<String> {
    if physical.starts_with(g.root()) && !physical.starts_with(g.root().join("nix/store")) {
        return None;
    }
    g.store_path(physical).map(|p| p.display().to_string())
}

/// A file the generation links to, identified without reading it: the
/// store path it leads to, or the path a link names where it leads out of
/// the store or to nothing on this machine. A file in no store is
/// identified by its content.
fn link_identity(g: &GenerationDir, rel: &str, shown: &Path) -> Result<Option<String>, LoadError> {
    Ok(match g.resolve(Path::new(rel), shown)? {
        Resolved::Found(physical) => match store_path(g, &physical) {
            Some(path) => Some(path),
            None if physical.is_dir() => Some(format!("directory {}", g.show(&physical).display())),
            None => Some(digest(&g.read(&physical, shown, MODULE_LIMIT)?)),
        },
        Resolved::Missing(target) if target.is_absolute() && !target.starts_with(g.root()) => {
            Some(target.display().to_string())
        }
        Resolved::Outside { target, rest, .. } if target.is_absolute() => Some(target.join(rest).display().to_string()),
        Resolved::Missing(_) | Resolved::DevNull => None,
        outside @ Resolved::Outside { .. } => return Err(outside_error(&outside, shown)),
    })
}

/// `sha256:` and the hex digest of `bytes`.
fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// `switch-inhibitors`: a JSON object of strings, as NixOS writes it.
fn inhibitors(g: &GenerationDir, shown: &Path) -> Result<Option<BTreeMap<String, String>>, LoadError> {
    let Some(text) = read_text(g, "switch-inhibitors", shown, SMALL_FILE_LIMIT)? else { return Ok(None) };
    let map = plan_model::json::object_from_str::<Inhibitors>(&text).map_err(|err| LoadError::Invalid {
        path: shown.to_owned(),
        message: format!("line {}: not a JSON object of strings, as NixOS writes its switch inhibitors", err.line()),
    })?;
    Ok(Some(map.0))
}

/// The switch inhibitors, read as a JSON object only.
#[derive(serde::Deserialize)]
#[serde(transparent)]
struct Inhibitors(BTreeMap<String, String>);

/// The module tree: its identity and, per release, `modules.dep` and (when
/// listed) the module files.
fn module_tree(g: &GenerationDir, shown_root: &Path, list: bool) -> Result<Option<ModuleTree>, LoadError> {
    let shown = shown_root.join("kernel-modules");
    let physical = match g.resolve(Path::new("kernel-modules"), &shown)? {
        Resolved::Found(physical) if physical.is_dir() => physical,
        outside @ Resolved::Outside { .. } => return Err(outside_error(&outside, &shown)),
        _ => return Ok(None),
    };
    let identity = store_path(g, &physical);
    let modules_shown = shown.join("lib/modules");
    let modules_dir = match g.resolve_in(&physical, "lib", &modules_shown)? {
        Resolved::Found(lib) if lib.is_dir() => match g.resolve_in(&lib, "modules", &modules_shown)? {
            Resolved::Found(dir) if dir.is_dir() => dir,
            outside @ Resolved::Outside { .. } => return Err(outside_error(&outside, &modules_shown)),
            _ => return Ok(Some(ModuleTree { identity, releases: BTreeMap::new() })),
        },
        outside @ Resolved::Outside { .. } => return Err(outside_error(&outside, &modules_shown)),
        _ => return Ok(Some(ModuleTree { identity, releases: BTreeMap::new() })),
    };
    let mut walk = Walk { g, entries: 0, bytes: 0 };
    let mut releases = BTreeMap::new();
    for name in list_dir(&modules_shown, &modules_dir)? {
        let release_shown = modules_shown.join(&name);
        let dir = match g.resolve_in(&modules_dir, &name, &release_shown)? {
            Resolved::Found(dir) if dir.is_dir() => dir,
            outside @ Resolved::Outside { .. } => return Err(outside_error(&outside, &release_shown)),
            _ => continue,
        };
        if releases.len() == MAX_RELEASES {
            return Err(LoadError::Invalid {
                path: modules_shown,
                message: format!("more than {MAX_RELEASES} kernel releases"),
            });
        }
        let dep = modules_dep(g, &dir, &name, &release_shown)?;
        let mut modules = BTreeMap::new();
        if list {
            walk.release(&dir, &release_shown, &mut modules)?;
        }
        releases.insert(name, ModuleRelease { modules, dep });
    }
    Ok(Some(ModuleTree { identity, releases }))
}

/// The module paths a release's `modules.dep` lists (the part of each line
/// before its `:`), relative to the release directory; depmod of old wrote
/// them absolute (`/lib/modules/<release>/kernel/...`). No `modules.dep`
/// lists nothing.
fn modules_dep(g: &GenerationDir, dir: &Path, release: &str, shown: &Path) -> Result<BTreeSet<String>, LoadError> {
    let shown = shown.join("modules.dep");
    let bytes = match g.resolve_in(dir, "modules.dep", &shown)? {
        Resolved::Found(physical) => g.read(&physical, &shown, MODULES_DEP_LIMIT)?,
        outside @ Resolved::Outside { .. } => return Err(outside_error(&outside, &shown)),
        _ => return Ok(BTreeSet::new()),
    };
    let text = utf8(&shown, bytes)?;
    let absolute = format!("/lib/modules/{release}/");
    Ok(text
        .lines()
        .filter_map(|line| line.split_once(':').map(|(path, _)| path.trim()))
        .filter(|path| !path.is_empty())
        .map(|path| match path.find(&absolute) {
            Some(at) if path.starts_with('/') => path[at + absolute.len()..].to_owned(),
            _ => path.to_owned(),
        })
        .collect())
}

/// A walk through one generation's module tree, bounded in entries and in
/// the bytes read.
struct Walk<'g> {
    g: &'g GenerationDir,
    entries: usize,
    bytes: u64,
}

impl Walk<'_> {
    /// Lists every module file below a release directory, by its path
    /// relative to it. The kernel's `build` and `source` links (its
    /// headers and sources) are not modules and are not entered.
    fn release(&mut self, dir: &Path, shown: &Path, out: &mut BTreeMap<String, String>) -> Result<(), LoadError> {
        let mut stack: Vec<(PathBuf, String, usize)> = vec![(dir.to_owned(), String::new(), 0)];
        while let Some((dir, prefix, depth)) = stack.pop() {
            let dir_shown = shown.join(&prefix);
            for name in list_dir(&dir_shown, &dir)? {
                if depth == 0 && (name == "build" || name == "source" || name.starts_with("modules.")) {
                    continue;
                }
                self.entries += 1;
                if self.entries > MAX_ENTRIES {
                    return Err(LoadError::Invalid {
                        path: shown.to_owned(),
                        message: format!("more than {MAX_ENTRIES} entries in the kernel module tree"),
                    });
                }
                let rel = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
                let entry_shown = shown.join(&rel);
                match self.g.resolve_in(&dir, &name, &entry_shown)? {
                    Resolved::Found(physical) if physical.is_dir() => {
                        if depth + 1 > MAX_DEPTH {
                            return Err(LoadError::Invalid {
                                path: entry_shown,
                                message: format!("nested more than {MAX_DEPTH} directories deep"),
                            });
                        }
                        stack.push((physical, rel, depth + 1));
                    }
                    Resolved::Found(physical) => {
                        if module_name(&name).is_some() {
                            let identity = self.identity(&physical, &entry_shown)?;
                            out.insert(rel, identity);
                        }
                    }
                    Resolved::DevNull => {}
                    Resolved::Missing(target) => {
                        let target = self.g.show(&target);
                        return Err(LoadError::Read(ReadError::Dangling { path: entry_shown, target }));
                    }
                    outside @ Resolved::Outside { .. } => return Err(outside_error(&outside, &entry_shown)),
                }
            }
        }
        Ok(())
    }

    /// A module file's identity: its store path, or the digest of its
    /// content when it is in no store.
    fn identity(&mut self, physical: &Path, shown: &Path) -> Result<String, LoadError> {
        if let Some(path) = store_path(self.g, physical) {
            return Ok(path);
        }
        let bytes = self.g.read(physical, shown, MODULE_LIMIT)?;
        self.bytes += bytes.len() as u64;
        if self.bytes > MODULE_BYTES_BUDGET {
            return Err(LoadError::Invalid {
                path: shown.to_owned(),
                message: format!("more than {} MiB of kernel modules outside the Nix store", MODULE_BYTES_BUDGET >> 20),
            });
        }
        Ok(digest(&bytes))
    }
}
