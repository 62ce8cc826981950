//! A generation's systemd-relevant content, as an in-memory value.
//!
//! [`GenerationUnits`] is what the loader builds from a toplevel directory
//! and what the planner and the protection analysis read. Everything in it
//! is already parsed; nothing here touches the file system.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use plan_model::unit_name;

use crate::fstab::Fstab;
use crate::unit_file::{Fragment, UnitFile};

/// Units by name, sorted: a list, which takes far less memory than a map
/// for the thousands of units of a host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Units(Box<[(Box<str>, UnitFile)]>);

impl Units {
    /// The unit named `name`, with its name.
    pub fn get_key_value(&self, name: &str) -> Option<(&str, &UnitFile)> {
        let i = self.0.binary_search_by(|(n, _)| (**n).cmp(name)).ok()?;
        self.0.get(i).map(|(n, u)| (&**n, u))
    }

    /// The unit named `name`.
    pub fn get(&self, name: &str) -> Option<&UnitFile> {
        self.get_key_value(name).map(|(_, u)| u)
    }

    /// The units with their names, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &UnitFile)> {
        self.0.iter().map(|(n, u)| (&**n, u))
    }

    /// The names, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(n, _)| &**n)
    }

    /// How many units.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Tells whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl IntoIterator for Units {
    type Item = (Box<str>, UnitFile);
    type IntoIter = std::vec::IntoIter<(Box<str>, UnitFile)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_vec().into_iter()
    }
}

/// Of units given twice, the last one counts.
impl<N: Into<Box<str>>> FromIterator<(N, UnitFile)> for Units {
    fn from_iter<I: IntoIterator<Item = (N, UnitFile)>>(iter: I) -> Self {
        let mut units: Vec<(Box<str>, UnitFile)> = iter.into_iter().map(|(n, u)| (n.into(), u)).collect();
        // Stable: of equal names, the one given last stays last, and moves
        // into the place of the first.
        units.sort_by(|a, b| a.0.cmp(&b.0));
        units.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                std::mem::swap(&mut later.1, &mut kept.1);
            }
            same
        });
        Units(units.into_boxed_slice())
    }
}

/// The kinds of link directories next to unit files (`<unit>.wants/`...),
/// sorted.
pub(crate) const LINK_KINDS: [&str; 3] = ["requires", "upholds", "wants"];

/// A unit directory's `.wants`, `.requires` and `.upholds` links: for each
/// unit and kind, the linked names in one text, separated by newlines
/// (no unit name holds one). Sorted by unit and kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Links(Box<[Link]>);

/// The units one unit links in one kind of directory.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Link {
    unit: Box<str>,
    /// An index into [`LINK_KINDS`].
    kind: u8,
    names: Box<str>,
}

impl Link {
    fn kind(&self) -> &'static str {
        LINK_KINDS.get(usize::from(self.kind)).copied().unwrap_or_default()
    }

    fn names(&self) -> impl Iterator<Item = &str> + Clone {
        self.names.split('\n').filter(|n| !n.is_empty())
    }
}

impl Links {
    /// The links of units to lists of units (`unit → kind → linked`, the
    /// names joined by [`Links::join`]), kinds among [`LINK_KINDS`]; empty
    /// lists are left out.
    pub(crate) fn new(links: &BTreeMap<String, BTreeMap<&'static str, Box<str>>>) -> Links {
        let mut out = Vec::new();
        for (unit, kinds) in links {
            for (kind, names) in kinds.iter().filter(|(_, names)| !names.is_empty()) {
                let Some(kind) = LINK_KINDS.iter().position(|k| k == kind) else { continue };
                let kind = u8::try_from(kind).unwrap_or(u8::MAX);
                out.push(Link { unit: unit.as_str().into(), kind, names: names.clone() });
            }
        }
        Links(out.into_boxed_slice())
    }

    /// Linked unit names, as a list holds them.
    pub(crate) fn join(names: &[String]) -> Box<str> {
        names.join("\n").into()
    }
}

/// The identity of a file that is compared between generations (the
/// systemd binary, `system.conf`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileIdentity {
    /// The path after following symlinks. When a link points outside the
    /// machine's file system (a store path that is not present), this is the
    /// path the link names.
    pub path: String,
    /// The content, when the file could be read.
    pub content: Option<Vec<u8>>,
}

impl FileIdentity {
    /// Tells whether two identities denote the same file: equal paths, or,
    /// when both could be read, equal content.
    pub fn same_as(&self, other: &FileIdentity) -> bool {
        if self.path == other.path {
            return true;
        }
        match (&self.content, &other.content) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        }
    }
}

/// What of a generation takes effect only when it is booted: its kernel,
/// initrd and kernel command line, its kernel modules, and what it
/// declares about switching into it (NixOS's switch inhibitors). Files
/// are identified by their store path where they are in a store, so
/// that two generations linking the same file compare equal without
/// reading it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Boot {
    /// The kernel image (`kernel`), by identity.
    pub kernel: Option<String>,
    /// The initrd (`initrd`), by identity.
    pub initrd: Option<String>,
    /// The kernel command line (`kernel-params`).
    pub kernel_params: Option<String>,
    /// The kernel modules (`kernel-modules/lib/modules`).
    pub modules: Option<ModuleTree>,
    /// NixOS's switch inhibitors (`switch-inhibitors`, a JSON object of
    /// strings): values that, when they change, make NixOS's switch refuse
    /// and ask for a reboot.
    pub switch_inhibitors: Option<BTreeMap<String, String>>,
}

/// A generation's kernel module tree (`kernel-modules`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModuleTree {
    /// The store path `kernel-modules` leads to; `None` for a tree in no
    /// store. Two trees with the same identity hold the same modules, and
    /// a pair of such trees is not listed module by module.
    pub identity: Option<String>,
    /// Each kernel release directory (`lib/modules/<release>`).
    pub releases: BTreeMap<String, ModuleRelease>,
}

/// The modules of one kernel release.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModuleRelease {
    /// Every module file (`.ko`, `.ko.xz`, `.ko.zst`, `.ko.gz`) by its
    /// path relative to the release directory, with the file's identity
    /// (its store path, or `sha256:` and its content's digest for a file
    /// in no store). Empty when the tree was not listed.
    pub modules: BTreeMap<String, String>,
    /// The module paths `modules.dep` lists, relative to the release
    /// directory: what `modprobe` can find.
    pub dep: BTreeSet<String>,
}

/// The name `modprobe` knows a module file by: its file name without the
/// module extensions (`wireguard` for `.../wireguard.ko.xz`); `None` for a
/// file that is not a module.
pub fn module_name(path: &str) -> Option<&str> {
    let file = path.rsplit('/').next()?;
    ["ko", "ko.xz", "ko.zst", "ko.gz"]
        .iter()
        .find_map(|ext| file.strip_suffix(ext)?.strip_suffix('.'))
        .filter(|name| !name.is_empty())
}

/// One entry of a system-manager generation's `services/services.json`:
/// a unit system-manager manages, by the store path of its unit file, or
/// a unit it masks.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManagedUnit {
    /// The unit file in the store; `None` for a masked unit.
    #[serde(default)]
    pub store_path: Option<String>,
    /// Masked by system-manager.
    #[serde(default)]
    pub masked: bool,
}

/// The unit-relevant content of one generation (a system toplevel).
#[derive(Clone, Debug, Default)]
pub struct GenerationUnits {
    pub(crate) root: PathBuf,
    pub(crate) units: Units,
    pub(crate) user_units: Units,
    pub(crate) deps: Links,
    /// The system unit directory, as shown.
    pub(crate) unit_dir: PathBuf,
    pub(crate) fstab: Option<Fstab>,
    pub(crate) system_conf: Option<FileIdentity>,
    pub(crate) systemd_exe: Option<FileIdentity>,
    pub(crate) init_interface_version: Option<String>,
    pub(crate) activate: Option<PathBuf>,
    pub(crate) managed: Option<BTreeMap<String, ManagedUnit>>,
    pub(crate) boot: Boot,
}

impl GenerationUnits {
    /// Builds a generation from parts, for tests and for callers that have
    /// the units from elsewhere: each unit with its name.
    pub fn from_units(
        root: impl Into<PathBuf>,
        units: impl IntoIterator<Item = (impl Into<Box<str>>, UnitFile)>,
    ) -> GenerationUnits {
        GenerationUnits { root: root.into(), units: units.into_iter().collect(), ..GenerationUnits::default() }
    }

    /// For a system-manager generation, the units it manages
    /// (`services/services.json`), by name; `None` for a NixOS generation.
    pub fn managed_units(&self) -> Option<&BTreeMap<String, ManagedUnit>> {
        self.managed.as_ref()
    }

    /// The user units (`etc/systemd/user`), by name, drop-ins merged.
    pub fn user_units(&self) -> &Units {
        &self.user_units
    }

    /// The toplevel directory as given to the loader.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory the system units were read from, as shown in paths
    /// such as [`UnitFile::fragment`]: `<toplevel>/etc/systemd/system`,
    /// or for a system-manager generation its static `/etc` tree's
    /// `systemd/system`.
    pub fn unit_dir(&self) -> &Path {
        &self.unit_dir
    }

    /// The text of a system unit file or drop-in exactly as the loader read
    /// and parsed it, by its path relative to [`GenerationUnits::unit_dir`]
    /// (`a.service`, `a.service.d/10-x.conf`); `None` for a mask, a file
    /// the generation does not have, and a file that is part of no unit
    /// (drop-ins of a unit without a fragment, a masked unit's).
    pub fn unit_file_text(&self, rel: &str) -> Option<&str> {
        match rel.split_once('/') {
            Some((dir, file)) => {
                let unit = self.units.get(dir.strip_suffix(".d")?)?;
                unit.own_drop_ins().find(|d| d.file_name() == file).map(|d| d.text())
            }
            None => self.units.get(rel).filter(|u| u.fragment() == Some(Fragment::Own))?.text(),
        }
    }

    /// Returns the unit as systemd would load it from this generation.
    ///
    /// Names with a fragment or drop-in directory of their own are looked
    /// up directly. An instance without either (`getty@tty1.service`)
    /// falls back to its template (`getty@.service`) with the template's
    /// drop-ins (see [`GenerationUnits::unit_with_name`]). Masked units
    /// are returned too: check [`UnitFile::is_masked`].
    pub fn unit(&self, name: &str) -> Option<&UnitFile> {
        self.unit_with_name(name).map(|(_, unit)| unit)
    }

    /// Like [`GenerationUnits::unit`], with the name the unit is known by
    /// in the generation: `name`, or for an instance that falls back to
    /// its template, the template's.
    pub fn unit_with_name(&self, name: &str) -> Option<(&str, &UnitFile)> {
        if let Some(found) = self.units.get_key_value(name) {
            return Some(found);
        }
        let (template, _) = unit_name::split_instance(name)?;
        self.units.get_key_value(&template)
    }

    /// Tells whether `name` has a fragment of its own or through its
    /// template, and is not masked.
    pub fn has_unit(&self, name: &str) -> bool {
        self.unit(name).is_some_and(|u| !u.is_masked())
    }

    /// Iterates over every unit name with a fragment or drop-in directory of
    /// its own (templates included, as `foo@.service`), in name order.
    pub fn unit_names(&self) -> impl Iterator<Item = &str> {
        self.units.keys()
    }

    /// Iterates over every unit with its merged content, in name order.
    pub fn units(&self) -> impl Iterator<Item = (&str, &UnitFile)> {
        self.units.iter()
    }

    /// Returns the units linked into `<unit>.<kind>/` (`kind` is `wants`,
    /// `requires` or `upholds`), as NixOS installs `wantedBy` and
    /// `requiredBy`.
    pub fn linked(&self, unit: &str, kind: &str) -> impl Iterator<Item = &str> + Clone {
        let start = self.deps.0.partition_point(|l| &*l.unit < unit);
        let mut found = self.deps.0.get(start..).unwrap_or_default().iter().take_while(|l| &*l.unit == unit);
        found.find(|l| l.kind() == kind).map(Link::names).into_iter().flatten()
    }

    /// Iterates over `(unit, kind, linked units)` for every `.wants`,
    /// `.requires` and `.upholds` directory that links any, in name order.
    pub fn linked_all(&self) -> impl Iterator<Item = (&str, &'static str, impl Iterator<Item = &str> + Clone)> {
        self.deps.0.iter().map(|l| (&*l.unit, l.kind(), l.names()))
    }

    /// The parsed `etc/fstab`, if the generation has one.
    pub fn fstab(&self) -> Option<&Fstab> {
        self.fstab.as_ref()
    }

    /// `etc/systemd/system.conf`, if present.
    pub fn system_conf(&self) -> Option<&FileIdentity> {
        self.system_conf.as_ref()
    }

    /// The systemd binary the generation runs (`systemd/lib/systemd/systemd`),
    /// if the generation links a systemd package.
    pub fn systemd_exe(&self) -> Option<&FileIdentity> {
        self.systemd_exe.as_ref()
    }

    /// The content of `init-interface-version`, trimmed, if present.
    pub fn init_interface_version(&self) -> Option<&str> {
        self.init_interface_version.as_deref()
    }

    /// What of the generation takes effect only when it is booted.
    pub fn boot(&self) -> &Boot {
        &self.boot
    }

    /// The same generation with `boot` as what it boots, for tests and
    /// callers that have it from elsewhere.
    pub fn with_boot(mut self, boot: Boot) -> GenerationUnits {
        self.boot = boot;
        self
    }

    /// The activation script's path, if the generation has one.
    pub fn activate(&self) -> Option<&Path> {
        self.activate.as_deref()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn units_are_sorted_and_the_last_of_a_name_counts() {
        let masked = UnitFile { masked: true, ..UnitFile::default() };
        let units: Units =
            [("b.service", UnitFile::default()), ("a.service", UnitFile::default()), ("b.service", masked)]
                .into_iter()
                .collect();
        assert_eq!(units.keys().collect::<Vec<_>>(), ["a.service", "b.service"]);
        assert!(units.get("b.service").unwrap().is_masked() && !units.get("a.service").unwrap().is_masked());
        assert_eq!(units.get_key_value("a.service").map(|(n, _)| n), Some("a.service"));
        assert!(units.get("c.service").is_none());
    }
}
