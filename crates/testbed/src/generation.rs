//! Synthetic NixOS-like generations.
//!
//! A NixOS system toplevel is a directory with `etc/systemd/system/` (unit
//! files and drop-ins, each a symlink into the Nix store, plus
//! `<target>.wants/` links), `init-interface-version`, a `systemd` link to
//! the systemd package, and an `activate` script that makes the generation
//! current. [`Generation`] describes such a toplevel in a few lines and
//! [`Generation::build`] writes it, so that tests and the demo can switch
//! between realistic generations without nixpkgs.
//!
//! The layout written for a generation named `a`:
//!
//! ```text
//! a/activate                                   shell script, see below
//! a/init-interface-version                     "systemd 2"
//! a/systemd -> /usr                            so a/systemd/lib/systemd/systemd exists
//! a/etc/systemd/system.conf -> <store>/<hash>-system.conf
//! a/etc/systemd/system/<unit> -> <store>/<hash>-unit-<unit>/<unit>
//! a/etc/systemd/system/<unit>.d/<file> -> <store>/<hash>-dropin-<file>/<file>
//! a/etc/systemd/system/<target>.wants/<unit> -> ../<unit>
//! a/etc/systemd/system/multi-user.target       (always)
//! a/etc/systemd/system/sysinit-reactivation.target (always)
//! ```
//!
//! Files with equal content share one store path, as they would in a Nix
//! store, so an unchanged unit (or `system.conf`) resolves to the same
//! canonical path in both generations.
//!
//! `activate` does what the parts of NixOS's activation script that matter
//! to a switch do: it atomically re-points `/etc/systemd/system`,
//! `/etc/systemd/system.conf` and finally `/run/current-system` at its own
//! generation (each is a symlink inside the test bed, replaced with a
//! rename), and appends the generation's name to
//! `/run/testbed/activations`. It refuses to run outside a test bed (where
//! `/run/testbed/marker` does not exist), so that running it by mistake on a
//! real host changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result, io};

/// The default content of `init-interface-version`, the same as a NixOS
/// toplevel built with systemd's interface version 2.
pub const INIT_INTERFACE_VERSION: &str = "systemd 2";

/// The name of the sshd unit that [`Generation::sshd`] adds.
pub const SSHD_UNIT: &str = "sshd.service";

/// The `system.conf` every generation gets unless it sets its own. Task
/// accounting is off so that the test bed's systemd does not create
/// cgroups in the pids hierarchy, which it would then leave for the host
/// to clean up.
pub const DEFAULT_SYSTEM_CONF: &str = "[Manager]\nDefaultTasksAccounting=no\n";

const MULTI_USER_TARGET: &str = "\
[Unit]
Description=Multi-User System
Requires=basic.target
After=basic.target
AllowIsolate=yes
";

const SYSINIT_REACTIVATION_TARGET: &str = "\
[Unit]
Description=Reactivate sysinit units
";

/// How the sshd of a test bed is reached: filled in by the test bed when it
/// builds a generation that contains [`Generation::sshd`].
#[derive(Clone, Debug)]
pub struct SshdSettings {
    /// The loopback TCP port sshd listens on.
    pub port: u16,
    /// The private host key file.
    pub host_key: PathBuf,
    /// The `authorized_keys` file that admits the test bed's client key for
    /// root.
    pub authorized_keys: PathBuf,
}

/// Where a generation is written and what it may refer to.
#[derive(Clone, Debug)]
pub struct BuildContext {
    /// The directory that plays the Nix store: unit files, drop-ins and
    /// `system.conf` are written there once per distinct content and linked
    /// from the generation. safe-switch follows a generation's links only
    /// into `/nix/store` and the store that holds the generation, so a
    /// generation linking into this store is built inside it. With `None`
    /// they are plain files in the generation, and `activate` finds its
    /// generation from its own path: a self-contained directory that can be
    /// copied or committed.
    pub store: Option<PathBuf>,
    /// The sshd settings, needed when the generation contains sshd.
    pub sshd: Option<SshdSettings>,
}

/// What the generation's `activate` looks like.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
enum Activate {
    /// The standard script, followed by extra shell lines.
    #[default]
    Standard,
    /// No `activate` file at all (an invalid toplevel, for refusal tests).
    Missing,
}

/// The sshd unit's extra lines.
#[derive(Clone, Debug, Default)]
struct Sshd {
    unit_lines: String,
    service_lines: String,
}

/// A description of a NixOS-like generation. Cheap to build and clone;
/// nothing is written until [`Generation::build`] (or
/// `TestBed::build_generation`).
///
/// ```
/// use testbed::Generation;
/// let a = Generation::new("a")
///     .sshd()
///     .service("job.service", "[Service]\nExecStart=/bin/sleep infinity\n")
///     .dropin("job.service", "env.conf", "[Service]\nEnvironment=V=1\n");
/// assert!(a.units().contains(&"job.service".to_string()));
/// ```
#[derive(Clone, Debug)]
pub struct Generation {
    name: String,
    units: BTreeMap<String, String>,
    dropins: BTreeMap<String, BTreeMap<String, String>>,
    wants: BTreeSet<(String, String)>,
    sshd: Option<Sshd>,
    activate: Activate,
    activate_lines: String,
    init_interface_version: Option<String>,
    system_conf: String,
    files: BTreeMap<PathBuf, String>,
    system_manager: Option<crate::system_manager::Parts>,
}

impl Generation {
    /// An empty generation (it still gets `multi-user.target` and
    /// `sysinit-reactivation.target`). `name` becomes the directory name, so
    /// it must be a plain file name.
    pub fn new(name: impl Into<String>) -> Self {
        Generation {
            name: name.into(),
            units: BTreeMap::new(),
            dropins: BTreeMap::new(),
            wants: BTreeSet::new(),
            sshd: None,
            activate: Activate::Standard,
            activate_lines: String::new(),
            init_interface_version: Some(INIT_INTERFACE_VERSION.to_owned()),
            system_conf: DEFAULT_SYSTEM_CONF.to_owned(),
            files: BTreeMap::new(),
            system_manager: None,
        }
    }

    /// Makes it a generation with numtide system-manager's layout instead
    /// of NixOS's, with stand-ins for the engine's wrappers (see the
    /// [`system_manager`](crate::system_manager) module). Units wanted by
    /// `multi-user.target` are wanted by `system-manager.target`. Its
    /// toplevel has no `activate`, `systemd` or `init-interface-version`.
    pub fn system_manager(mut self) -> Self {
        self.system_manager.get_or_insert_with(Default::default);
        self
    }

    /// Whether it has system-manager's layout.
    pub fn is_system_manager(&self) -> bool {
        self.system_manager.is_some()
    }

    /// Adds shell lines to the stand-in for the engine's `wrapper`
    /// (`preActivationAssertions`, `register-profile`, `prepopulate`,
    /// `activate`), run before it does anything (e.g. `exit 1`, or a wait
    /// for a file); makes it a system-manager generation.
    pub fn engine_lines(mut self, wrapper: &str, lines: &str) -> Self {
        let parts = self.system_manager.get_or_insert_with(Default::default);
        let text = parts.engine_lines.entry(wrapper.to_owned()).or_default();
        text.push_str(lines);
        if !lines.ends_with('\n') {
            text.push('\n');
        }
        self
    }

    /// Adds a `tmpfiles.d` rule file to the static `/etc` tree; makes it a
    /// system-manager generation.
    pub fn tmpfiles(mut self, name: impl Into<String>, text: impl Into<String>) -> Self {
        self.system_manager.get_or_insert_with(Default::default).tmpfiles.insert(name.into(), text.into());
        self
    }

    /// The generation's name (its directory name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The same description under another name, e.g. to derive generation
    /// B from A.
    pub fn renamed(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The unit names this generation ships (besides the two targets every
    /// generation has), sorted.
    pub fn units(&self) -> Vec<String> {
        let mut names: Vec<String> = self.units.keys().cloned().collect();
        if self.sshd.is_some() {
            names.push(SSHD_UNIT.to_owned());
            names.sort();
        }
        names
    }

    /// Adds (or replaces) a unit file, not wanted by any target.
    pub fn unit(mut self, name: impl Into<String>, text: impl Into<String>) -> Self {
        self.units.insert(name.into(), text.into());
        self
    }

    /// Adds (or replaces) a unit wanted by `multi-user.target`, as
    /// `wantedBy = [ "multi-user.target" ]` does on NixOS.
    pub fn service(self, name: impl Into<String>, text: impl Into<String>) -> Self {
        let name = name.into();
        self.unit(name.clone(), text).wanted_by(name, "multi-user.target")
    }

    /// Adds a `<target>.wants/<unit>` link.
    pub fn wanted_by(mut self, unit: impl Into<String>, target: impl Into<String>) -> Self {
        self.wants.insert((target.into(), unit.into()));
        self
    }

    /// Removes a unit, its drop-ins and its wants links (to derive B from A).
    pub fn without(mut self, unit: &str) -> Self {
        self.units.remove(unit);
        self.dropins.remove(unit);
        self.wants.retain(|(_, u)| u != unit);
        if unit == SSHD_UNIT {
            self.sshd = None;
        }
        self
    }

    /// Adds (or replaces) the drop-in `<unit>.d/<file>`.
    pub fn dropin(mut self, unit: impl Into<String>, file: impl Into<String>, text: impl Into<String>) -> Self {
        self.dropins.entry(unit.into()).or_default().insert(file.into(), text.into());
        self
    }

    /// Adds the test bed's sshd as `sshd.service`, wanted by
    /// `multi-user.target`: `sshd -D` on the bed's loopback port with the
    /// bed's throwaway host key, admitting the bed's client key for root,
    /// `Type=notify` (so "active" means "listening") and
    /// `KillMode=process` (so restarting it keeps sessions, as on NixOS).
    pub fn sshd(self) -> Self {
        self.sshd_with("", "")
    }

    /// Like [`Generation::sshd`], with extra lines appended to the unit's
    /// `[Unit]` and `[Service]` sections (e.g. `Requires=keys.service` or
    /// `Environment=VERSION=2`, to make sshd's unit differ between two
    /// generations).
    pub fn sshd_with(mut self, unit_lines: &str, service_lines: &str) -> Self {
        self.sshd = Some(Sshd { unit_lines: unit_lines.to_owned(), service_lines: service_lines.to_owned() });
        self.wants.insert(("multi-user.target".to_owned(), SSHD_UNIT.to_owned()));
        self
    }

    /// Appends shell lines to `activate`, run after `/etc/systemd` moved and
    /// before `/run/current-system` moves (e.g. `sleep 5` to interrupt an
    /// apply in the middle, or `exit 1` for a failing activation).
    pub fn activate_lines(mut self, lines: &str) -> Self {
        self.activate_lines.push_str(lines);
        if !lines.ends_with('\n') {
            self.activate_lines.push('\n');
        }
        self
    }

    /// Leaves `activate` out (a toplevel that must be refused).
    pub fn without_activate(mut self) -> Self {
        self.activate = Activate::Missing;
        self
    }

    /// Sets `init-interface-version`, or leaves the file out with `None`.
    pub fn init_interface_version(mut self, content: Option<&str>) -> Self {
        self.init_interface_version = content.map(str::to_owned);
        self
    }

    /// Sets `etc/systemd/system.conf` (default: [`DEFAULT_SYSTEM_CONF`]).
    /// A different content means a different store path, which NixOS takes
    /// as a reason to re-execute systemd.
    pub fn system_conf(mut self, text: impl Into<String>) -> Self {
        self.system_conf = text.into();
        self
    }

    /// Adds an arbitrary file, relative to the toplevel.
    pub fn file(mut self, path: impl Into<PathBuf>, text: impl Into<String>) -> Self {
        self.files.insert(path.into(), text.into());
        self
    }

    /// Renders the sshd unit for the given settings.
    fn sshd_unit(&self, sshd: &Sshd, settings: &SshdSettings) -> String {
        format!(
            "[Unit]\n\
             Description=SSH Daemon\n\
             After=network.target\n\
             {unit_lines}\
             \n\
             [Service]\n\
             Type=notify\n\
             ExecStartPre=/bin/mkdir -p /run/sshd\n\
             ExecStart=/usr/sbin/sshd -D -e -f /dev/null -p {port} -h {host_key} \
             -o ListenAddress=127.0.0.1 -o PidFile=none -o AuthorizedKeysFile={keys} \
             -o PermitRootLogin=prohibit-password -o UsePAM=no -o StrictModes=no \
             -o PasswordAuthentication=no -o KbdInteractiveAuthentication=no -o UseDNS=no \
             -o PrintMotd=no -o PrintLastLog=no\n\
             KillMode=process\n\
             Restart=always\n\
             {service_lines}",
            unit_lines = with_newline(&sshd.unit_lines),
            port = settings.port,
            host_key = settings.host_key.display(),
            keys = settings.authorized_keys.display(),
            service_lines = with_newline(&sshd.service_lines),
        )
    }

    fn invalid(&self, reason: impl Into<String>) -> Error {
        Error::Generation { generation: self.name.clone(), reason: reason.into() }
    }

    /// Checks names before anything is written.
    fn validate(&self) -> Result<()> {
        if self.name.is_empty() || self.name.contains('/') || self.name.starts_with('.') {
            return Err(self.invalid("the name must be a plain directory name"));
        }
        let names = self.units.keys().chain(self.dropins.keys()).chain(self.wants.iter().flat_map(|(t, u)| [t, u]));
        for name in names {
            if !is_unit_name(name) {
                return Err(self.invalid(format!("{name:?} is not a unit file name")));
            }
        }
        for files in self.dropins.values() {
            for file in files.keys() {
                if file.is_empty() || file.contains('/') || !file.ends_with(".conf") {
                    return Err(self.invalid(format!("drop-in {file:?} must be a plain *.conf file name")));
                }
            }
        }
        for path in self.files.keys() {
            if path.is_absolute() || path.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
                return Err(self.invalid(format!("file {} must be relative and stay inside", path.display())));
            }
        }
        Ok(())
    }

    /// Writes the generation as `<parent>/<name>` and returns that path. The
    /// directory must not exist yet (generations are immutable, like store
    /// paths). `activate` embeds the absolute path, so build generations
    /// where they will stay.
    pub fn build(&self, parent: &Path, ctx: &BuildContext) -> Result<PathBuf> {
        self.validate()?;
        let parent = fs::canonicalize(parent).map_err(io("resolving", parent))?;
        let store = match &ctx.store {
            Some(store) => Some(fs::canonicalize(store).map_err(io("resolving", store))?),
            None => None,
        };
        let top = parent.join(&self.name);
        if top.exists() {
            return Err(self.invalid(format!("{} already exists", top.display())));
        }

        let mut units = self.units.clone();
        units.entry("multi-user.target".to_owned()).or_insert_with(|| MULTI_USER_TARGET.to_owned());
        units.entry("sysinit-reactivation.target".to_owned()).or_insert_with(|| SYSINIT_REACTIVATION_TARGET.to_owned());
        if let Some(sshd) = &self.sshd {
            let settings =
                ctx.sshd.as_ref().ok_or_else(|| self.invalid("it contains sshd but no sshd settings were given"))?;
            units.insert(SSHD_UNIT.to_owned(), self.sshd_unit(sshd, settings));
        }
        if let Some(parts) = &self.system_manager {
            let store = store.as_deref().ok_or_else(|| self.invalid("a system-manager generation needs a store"))?;
            let content = crate::system_manager::Content {
                name: &self.name,
                units: &units,
                dropins: &self.dropins,
                wants: &self.wants,
                system_conf: &self.system_conf,
                parts,
            };
            crate::system_manager::build(&content, &top, store)?;
            return Ok(top);
        }
        let units_dir = top.join("etc/systemd/system");
        mkdir(&units_dir)?;

        for (name, text) in &units {
            place(store.as_deref(), &format!("unit-{name}"), text, &units_dir.join(name))?;
        }
        for (unit, files) in &self.dropins {
            let dir = units_dir.join(format!("{unit}.d"));
            mkdir(&dir)?;
            for (file, text) in files {
                place(store.as_deref(), &format!("dropin-{file}"), text, &dir.join(file))?;
            }
        }
        for (target, unit) in &self.wants {
            let dir = units_dir.join(format!("{target}.wants"));
            mkdir(&dir)?;
            link(Path::new(&format!("../{unit}")), &dir.join(unit))?;
        }

        place(store.as_deref(), "system.conf", &self.system_conf, &top.join("etc/systemd/system.conf"))?;
        link(Path::new("/usr"), &top.join("systemd"))?;
        if let Some(version) = &self.init_interface_version {
            write(&top.join("init-interface-version"), version)?;
        }
        for (path, text) in &self.files {
            let path = top.join(path);
            if let Some(dir) = path.parent() {
                mkdir(dir)?;
            }
            write(&path, text)?;
        }
        if self.activate == Activate::Standard {
            let path = top.join("activate");
            let script = activate_script(&self.name, store.is_some().then_some(top.as_path()), &self.activate_lines);
            crate::exec::write_executable(&path, &script)?;
        }
        Ok(top)
    }
}

/// The `activate` script of a generation at `top`, or of one that finds
/// itself from the script's own path when `top` is `None`.
fn activate_script(name: &str, top: Option<&Path>, extra: &str) -> String {
    let system_config = match top {
        Some(top) => format!("'{}'", top.display()),
        None => r#""$(cd "$(dirname "$0")" && pwd -P)""#.to_owned(),
    };
    format!(
        r#"#!/bin/sh
# Activation script of the test-bed generation "{name}". Like a NixOS
# toplevel's activate, it makes this generation the current one.
set -eu
systemConfig={system_config}

# Only ever act inside a test bed: its /run carries this marker, and its
# /etc/systemd/system is a symlink that may be replaced.
if [ ! -e /run/testbed/marker ] || [ ! -L /etc/systemd/system ]; then
    echo "activate: not inside a test bed, refusing to touch this machine" >&2
    exit 1
fi

# Replaces the symlink $2 by one to $1 with a rename, so that every reader
# sees either the old or the new target.
relink() {{
    ln -sfn "$1" "$2.activate-$$"
    mv -Tf "$2.activate-$$" "$2"
}}

echo "setting up /etc..."
relink "$systemConfig/etc/systemd/system" /etc/systemd/system
relink "$systemConfig/etc/systemd/system.conf" /etc/systemd/system.conf
{extra}
relink "$systemConfig" /run/current-system
echo "{name}" >> /run/testbed/activations
"#
    )
}

/// Whether `name` looks like a unit file name (`foo.service`,
/// `foo@.service`, `multi-user.target`).
fn is_unit_name(name: &str) -> bool {
    const TYPES: &[&str] =
        &["service", "socket", "target", "timer", "path", "mount", "automount", "swap", "slice", "scope", "device"];
    match name.rsplit_once('.') {
        Some((stem, kind)) => {
            !stem.is_empty() && TYPES.contains(&kind) && !name.contains('/') && !name.chars().any(char::is_whitespace)
        }
        None => false,
    }
}

fn with_newline(lines: &str) -> String {
    if lines.is_empty() || lines.ends_with('\n') { lines.to_owned() } else { format!("{lines}\n") }
}

/// A stable 64-bit FNV-1a hash, so store paths do not depend on the Rust
/// version or process.
pub(crate) fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Writes `text` to `path`: through the store (a symlink to the stored
/// file) when there is one, else as a plain file.
fn place(store: Option<&Path>, label: &str, text: &str, path: &Path) -> Result<()> {
    match store {
        Some(store) => {
            let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
            let stored = store_file(store, label, &file, text)?;
            link(&stored, path)
        }
        None => write(path, text),
    }
}

/// Writes `text` into the store as `<store>/<hash>-<label>/<file>` (once per
/// distinct content) and returns the file's path.
pub(crate) fn store_file(store: &Path, label: &str, file: &str, text: &str) -> Result<PathBuf> {
    let hash = fnv1a(format!("{label}\0{text}").as_bytes());
    let dir = store.join(format!("{hash:016x}-{label}"));
    let path = dir.join(file);
    if !path.exists() {
        mkdir(&dir)?;
        // Write under a temporary name and rename, so that a concurrent
        // builder of the same content never sees a half-written file.
        let tmp = dir.join(format!(".{file}.{}", std::process::id()));
        write(&tmp, text)?;
        fs::rename(&tmp, &path).map_err(io("renaming into", &path))?;
    }
    Ok(path)
}

pub(crate) fn mkdir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(io("creating", dir))
}

pub(crate) fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).map_err(io("writing", path))
}

pub(crate) fn link(target: &Path, path: &Path) -> Result<()> {
    symlink(target, path).map_err(io("linking", path))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ctx(dir: &Path) -> BuildContext {
        let store = dir.join("store");
        fs::create_dir_all(&store).unwrap();
        BuildContext {
            store: Some(store),
            sshd: Some(SshdSettings {
                port: 2222,
                host_key: dir.join("host_key"),
                authorized_keys: dir.join("authorized_keys"),
            }),
        }
    }

    #[test]
    fn writes_a_nixos_like_toplevel() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = ctx(dir.path());
        let top = Generation::new("a")
            .sshd_with("Requires=keys.service", "")
            .service("job.service", "[Service]\nExecStart=/bin/sleep infinity\n")
            .dropin("job.service", "env.conf", "[Service]\nEnvironment=V=1\n")
            .build(dir.path(), &ctx)
            .unwrap();
        let units = top.join("etc/systemd/system");
        assert_eq!(
            fs::read_to_string(units.join("job.service")).unwrap(),
            "[Service]\nExecStart=/bin/sleep infinity\n"
        );
        assert!(fs::symlink_metadata(units.join("job.service")).unwrap().file_type().is_symlink());
        assert_eq!(fs::read_to_string(units.join("job.service.d/env.conf")).unwrap(), "[Service]\nEnvironment=V=1\n");
        assert_eq!(
            fs::read_link(units.join("multi-user.target.wants/job.service")).unwrap(),
            Path::new("../job.service")
        );
        assert!(units.join("multi-user.target.wants/sshd.service").exists());
        assert!(units.join("sysinit-reactivation.target").exists());
        let sshd = fs::read_to_string(units.join("sshd.service")).unwrap();
        assert!(sshd.contains("Requires=keys.service\n\n[Service]"), "{sshd}");
        assert!(sshd.contains("-p 2222 "), "{sshd}");
        assert_eq!(fs::read_to_string(top.join("init-interface-version")).unwrap(), INIT_INTERFACE_VERSION);
        let activate = fs::read_to_string(top.join("activate")).unwrap();
        assert!(activate.contains(&format!("systemConfig='{}'", top.display())), "{activate}");
        assert!(top.join("systemd/lib/systemd/systemd").exists() || !Path::new("/usr/lib/systemd/systemd").exists());
    }

    #[test]
    fn equal_content_shares_a_store_path_and_changes_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = ctx(dir.path());
        let a = Generation::new("a").service("x.service", "[Service]\nExecStart=/bin/true\n");
        let b = a.clone().renamed("b");
        let c = a.clone().renamed("c").service("x.service", "[Service]\nExecStart=/bin/false\n");
        let (a, b, c) = (
            a.build(dir.path(), &ctx).unwrap(),
            b.build(dir.path(), &ctx).unwrap(),
            c.build(dir.path(), &ctx).unwrap(),
        );
        let real = |top: &Path, p: &str| fs::canonicalize(top.join(p)).unwrap();
        assert_eq!(real(&a, "etc/systemd/system/x.service"), real(&b, "etc/systemd/system/x.service"));
        assert_ne!(real(&a, "etc/systemd/system/x.service"), real(&c, "etc/systemd/system/x.service"));
        assert_eq!(real(&a, "etc/systemd/system.conf"), real(&c, "etc/systemd/system.conf"));
    }

    #[test]
    fn removing_a_unit_removes_its_links_and_dropins() {
        let g = Generation::new("a")
            .service("x.service", "[Service]\nExecStart=/bin/true\n")
            .dropin("x.service", "a.conf", "")
            .without("x.service");
        assert!(g.units().is_empty());
        let dir = tempfile::tempdir().unwrap();
        let top = g.build(dir.path(), &ctx(dir.path())).unwrap();
        assert!(!top.join("etc/systemd/system/multi-user.target.wants").exists());
        assert!(!top.join("etc/systemd/system/x.service.d").exists());
    }

    #[test]
    fn bad_names_are_refused_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let err = Generation::new("a").unit("../evil", "").build(dir.path(), &ctx(dir.path())).unwrap_err();
        assert!(err.to_string().contains("\"../evil\" is not a unit file name"), "{err}");
        assert!(!dir.path().join("a").exists());
        let err =
            Generation::new("a").sshd().build(dir.path(), &BuildContext { store: Some(dir.path().into()), sshd: None });
        assert!(err.unwrap_err().to_string().contains("no sshd settings"));
    }

    #[test]
    fn missing_activate_and_interface_version() {
        let dir = tempfile::tempdir().unwrap();
        let top = Generation::new("a")
            .without_activate()
            .init_interface_version(None)
            .build(dir.path(), &ctx(dir.path()))
            .unwrap();
        assert!(!top.join("activate").exists());
        assert!(!top.join("init-interface-version").exists());
    }
}
