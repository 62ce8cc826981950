//! Generations with numtide system-manager's layout, and stand-ins for the
//! engine wrappers in their `bin/`.
//!
//! A system-manager toplevel (see [`Generation::system_manager`]) has no
//! `etc/`: `services/services.json` maps each unit the generation manages
//! to the store path of its file, and `etcFiles/etcFiles.json` names the
//! static `/etc` tree (`staticEnv`) whose `systemd/system` holds the unit
//! files and `.wants` links (a unit wanted by `multi-user.target` is
//! wanted by `system-manager.target` instead, as system-manager rewrites
//! it). The layout written for a generation named `a`:
//!
//! ```text
//! a/services/services.json
//! a/etcFiles/etcFiles.json                       {"entries": {}, "staticEnv": <store>/<hash>-etc-static-env}
//! a/bin/preActivationAssertions                  the stand-ins, below
//! a/bin/register-profile
//! a/bin/prepopulate
//! a/bin/activate
//! <store>/<hash>-etc-static-env/systemd/system/<unit> -> <store>/<hash>-unit-<unit>/<unit>
//! <store>/<hash>-etc-static-env/systemd/system/system-manager.target.wants/<unit> -> ../<unit>
//! <store>/<hash>-etc-static-env/systemd/system/multi-user.target.wants/system-manager.target
//! <store>/<hash>-etc-static-env/systemd/system.conf   (for the bed's boot only)
//! <store>/<hash>-etc-static-env/tmpfiles.d/<name>.conf
//! ```
//!
//! The wrappers behave as the engine's commands are documented to (the
//! project's research notes on system-manager), inside the bed only, on
//! the system-manager host below [`SYSTEM_MANAGER_ROOT`] (a test points
//! safe-switch there too). Each finds its toplevel as the real ones do,
//! from the directory it was started from, and first appends `<command>
//! <generation>` to `/run/testbed/engine.log`, then runs the extra lines
//! a test gave it ([`Generation::engine_lines`], e.g. `exit 1`):
//!
//! - `preActivationAssertions`: the generation's assertions (none: exit 0).
//! - `register-profile`: what `nix-env --profile ... --set` does to the
//!   profile `nix/var/nix/profiles/system-manager-profiles/system-manager`
//!   (a new `system-manager-<n>-link`, the profile link moved to it), and
//!   the GC root `nix/var/nix/gcroots/system-manager-current`.
//! - `prepopulate`: the assertions first, then, refusing a state file it
//!   cannot parse (not version 1), the `/etc` files (`/etc/systemd/system`
//!   re-pointed at the static tree with a rename) and the state file
//!   (`var/lib/system-manager/state/system-manager-state.json`: the file
//!   tree, the new services map, version 1), without starting, stopping or
//!   reloading anything.
//! - `activate`: the engine's whole activation, which restarts every
//!   changed unit. safe-switch never runs it: the stand-in only logs that
//!   it ran and fails.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result, io};

/// Where, inside a bed, the system-manager host's state lives: the state
/// file and the profile below it, as below `/` on a real host.
pub const SYSTEM_MANAGER_ROOT: &str = "/run/testbed/system-manager";

/// The state file, relative to [`SYSTEM_MANAGER_ROOT`].
pub const STATE_FILE: &str = "var/lib/system-manager/state/system-manager-state.json";

/// The profile link, relative to [`SYSTEM_MANAGER_ROOT`].
pub const PROFILE: &str = "nix/var/nix/profiles/system-manager-profiles/system-manager";

/// The engine's commands a generation has stand-ins for.
pub const WRAPPERS: [&str; 4] = ["preActivationAssertions", "register-profile", "prepopulate", "activate"];

/// What a system-manager generation has besides its units.
#[derive(Clone, Debug, Default)]
pub(crate) struct Parts {
    /// Extra shell lines of each wrapper, by wrapper name.
    pub(crate) engine_lines: BTreeMap<String, String>,
    /// `tmpfiles.d` rule files of the static tree, by file name.
    pub(crate) tmpfiles: BTreeMap<String, String>,
}

const SYSTEM_MANAGER_TARGET: &str = "\
[Unit]
Description=System Manager target
";

/// The unit directory and `system.conf` a bed boots a system-manager
/// generation at `top` with: those of its static `/etc` tree.
pub(crate) fn boot_links(top: &Path) -> Result<(PathBuf, PathBuf)> {
    let path = top.join("etcFiles/etcFiles.json");
    let text = std::fs::read_to_string(&path).map_err(io("reading", &path))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Generation {
        generation: top.display().to_string(),
        reason: format!("etcFiles.json: {e}"),
    })?;
    let static_env = PathBuf::from(value["staticEnv"].as_str().unwrap_or_default());
    Ok((static_env.join("systemd/system"), static_env.join("systemd/system.conf")))
}

/// The unit directory of the system-manager generation at `top`: its
/// static `/etc` tree's `systemd/system`.
pub fn unit_dir_of(top: &Path) -> Result<PathBuf> {
    Ok(boot_links(top)?.0)
}

/// A generation's units, drop-ins and wants, as the build has them.
pub(crate) struct Content<'a> {
    pub(crate) name: &'a str,
    pub(crate) units: &'a BTreeMap<String, String>,
    pub(crate) dropins: &'a BTreeMap<String, BTreeMap<String, String>>,
    pub(crate) wants: &'a BTreeSet<(String, String)>,
    pub(crate) system_conf: &'a str,
    pub(crate) parts: &'a Parts,
}

/// Writes the system-manager generation `content` as `top`, its files in
/// `store`.
pub(crate) fn build(content: &Content<'_>, top: &Path, store: &Path) -> Result<()> {
    use crate::generation::{link, mkdir, store_file, write};
    let mut units = content.units.clone();
    units.insert("system-manager.target".to_owned(), SYSTEM_MANAGER_TARGET.to_owned());
    // multi-user.target is the host's; sysinit-reactivation.target ships
    // with the tree but is not one system-manager manages.
    units.remove("multi-user.target");
    let mut wants: BTreeSet<(String, String)> = content
        .wants
        .iter()
        .map(|(t, u)| {
            (if t == "multi-user.target" { "system-manager.target".to_owned() } else { t.clone() }, u.clone())
        })
        .collect();
    wants.insert(("multi-user.target".to_owned(), "system-manager.target".to_owned()));

    // Every file of the static tree, by its path in it, as a store file.
    let mut files: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
    let mut services = serde_json::Map::new();
    for (name, text) in &units {
        let stored = store_file(store, &format!("unit-{name}"), name, text)?;
        if name != "sysinit-reactivation.target" {
            let entry = serde_json::json!({ "storePath": stored.display().to_string(), "masked": false });
            services.insert(name.clone(), entry);
        }
        files.insert(Path::new("systemd/system").join(name), stored);
    }
    for (unit, dropins) in content.dropins {
        for (file, text) in dropins {
            let stored = store_file(store, &format!("dropin-{file}"), file, text)?;
            files.insert(Path::new("systemd/system").join(format!("{unit}.d")).join(file), stored);
        }
    }
    files.insert("systemd/system.conf".into(), store_file(store, "system.conf", "system.conf", content.system_conf)?);
    for (name, text) in &content.parts.tmpfiles {
        files.insert(Path::new("tmpfiles.d").join(name), store_file(store, &format!("tmpfiles-{name}"), name, text)?);
    }

    // The static tree: named after what it holds, as a store path is.
    let mut listing = String::new();
    for (path, target) in &files {
        listing.push_str(&format!("{} {}\n", path.display(), target.display()));
    }
    for (target, unit) in &wants {
        listing.push_str(&format!("{target}.wants/{unit}\n"));
    }
    let static_env = store.join(format!("{:016x}-etc-static-env", crate::generation::fnv1a(listing.as_bytes())));
    if !static_env.exists() {
        let tmp = store.join(format!(".etc-static-env.{}", std::process::id()));
        for (path, target) in &files {
            let at = tmp.join(path);
            if let Some(dir) = at.parent() {
                mkdir(dir)?;
            }
            link(target, &at)?;
        }
        for (target, unit) in &wants {
            let dir = tmp.join("systemd/system").join(format!("{target}.wants"));
            mkdir(&dir)?;
            link(Path::new(&format!("../{unit}")), &dir.join(unit))?;
        }
        std::fs::rename(&tmp, &static_env).map_err(io("renaming into", &static_env))?;
    }

    mkdir(&top.join("services"))?;
    let services = serde_json::to_string_pretty(&serde_json::Value::Object(services)).unwrap_or_default();
    write(&top.join("services/services.json"), &services)?;
    mkdir(&top.join("etcFiles"))?;
    let etc_files = serde_json::json!({ "entries": {}, "staticEnv": static_env.display().to_string() });
    write(&top.join("etcFiles/etcFiles.json"), &etc_files.to_string())?;
    mkdir(&top.join("bin"))?;
    for wrapper in WRAPPERS {
        let extra = content.parts.engine_lines.get(wrapper).map(String::as_str).unwrap_or_default();
        let script = wrapper_script(content.name, wrapper, &static_env, extra);
        crate::exec::write_executable(&top.join("bin").join(wrapper), &script)?;
    }
    Ok(())
}

/// The state file system-manager leaves after activating the generation
/// at `top` (for a bed booted with it).
pub(crate) fn initial_state(top: &Path) -> Result<String> {
    let path = top.join("services/services.json");
    let services = std::fs::read_to_string(&path).map_err(io("reading", &path))?;
    Ok(state_text(services.trim()))
}

fn state_text(services: &str) -> String {
    format!(
        r#"{{"fileTree":{{"files":["/etc/systemd/system"],"backedUpFiles":[]}},"services":{services},"version":1}}"#
    )
}

/// The stand-in for the engine's command `wrapper` of the generation
/// `name`, whose static tree is `static_env`, with `extra` shell lines
/// after its log line.
fn wrapper_script(name: &str, wrapper: &str, static_env: &Path, extra: &str) -> String {
    let body = match wrapper {
        "preActivationAssertions" => "exit 0\n".to_owned(),
        "register-profile" => r#"profiles="$root/nix/var/nix/profiles/system-manager-profiles"
mkdir -p "$profiles" "$root/nix/var/nix/gcroots"
# As nix-env --profile "$profiles/system-manager" --set "$toplevel".
n=1
while [ -e "$profiles/system-manager-$n-link" ] || [ -L "$profiles/system-manager-$n-link" ]; do n=$((n + 1)); done
ln -s "$toplevel" "$profiles/system-manager-$n-link"
ln -sfn "system-manager-$n-link" "$profiles/.system-manager.$$"
mv -Tf "$profiles/.system-manager.$$" "$profiles/system-manager"
ln -sfn "$toplevel" "$root/nix/var/nix/gcroots/.system-manager-current.$$"
mv -Tf "$root/nix/var/nix/gcroots/.system-manager-current.$$" "$root/nix/var/nix/gcroots/system-manager-current"
"#
        .to_owned(),
        "prepopulate" => format!(
            r#""$toplevel/bin/preActivationAssertions"
state="$root/{STATE_FILE}"
mkdir -p "$(dirname "$state")"
if [ -e "$state" ] && ! grep -q '"version":1[,}}]' "$state"; then
    echo "prepopulate: Cannot parse state, it doesn't match any supported format" >&2
    exit 1
fi
# The /etc files: system-manager links them into its static tree.
ln -sfn '{static_env}/systemd/system' "/etc/systemd/.system.$$"
mv -Tf "/etc/systemd/.system.$$" /etc/systemd/system
# The state file: the file tree and the new services map.
printf '%s' '{state_head}' > "$state.$$"
cat "$toplevel/services/services.json" >> "$state.$$"
printf '%s' '{state_tail}' >> "$state.$$"
mv -f "$state.$$" "$state"
"#,
            static_env = static_env.display(),
            state_head = r#"{"fileTree":{"files":["/etc/systemd/system"],"backedUpFiles":[]},"services":"#,
            state_tail = r#","version":1}"#,
        ),
        _ => "echo \"activate: system-manager's own activation restarts every changed unit; it must not run here\" >&2\nexit 1\n"
            .to_owned(),
    };
    format!(
        r#"#!/bin/sh
# Stand-in for system-manager's `{wrapper}` of the test-bed generation
# "{name}" (see the testbed crate's system_manager module).
set -eu
if [ ! -e /run/testbed/marker ] || [ ! -L /etc/systemd/system ]; then
    echo "{wrapper}: not inside a test bed, refusing to touch this machine" >&2
    exit 1
fi
toplevel="$(cd "$(dirname "$0")/.." && pwd -P)"
root='{SYSTEM_MANAGER_ROOT}'
echo "{wrapper} {name}" >> /run/testbed/engine.log
{extra}
{body}"#
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::Generation;
    use crate::generation::BuildContext;

    #[test]
    fn writes_system_managers_layout_with_the_wrappers() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        std::fs::create_dir_all(&store).unwrap();
        let ctx = BuildContext { store: Some(store.clone()), sshd: None };
        let top = Generation::new("a")
            .system_manager()
            .service("job.service", "[Service]\nExecStart=/bin/sleep infinity\n")
            .tmpfiles("job.conf", "d /run/job 0755 root root -\n")
            .engine_lines("prepopulate", "exit 3")
            .build(dir.path(), &ctx)
            .unwrap();
        assert!(!top.join("etc").exists(), "no etc/: not NixOS's layout");
        let services: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(top.join("services/services.json")).unwrap()).unwrap();
        let names: Vec<&String> = services.as_object().unwrap().keys().collect();
        assert_eq!(names, ["job.service", "system-manager.target"]);
        let job = PathBuf::from(services["job.service"]["storePath"].as_str().unwrap());
        assert!(job.starts_with(&store), "{}", job.display());
        let (units, conf) = boot_links(&top).unwrap();
        assert_eq!(std::fs::canonicalize(units.join("job.service")).unwrap(), job);
        assert!(units.join("system-manager.target.wants/job.service").exists());
        assert!(units.join("multi-user.target.wants/system-manager.target").exists());
        assert!(units.join("sysinit-reactivation.target").exists());
        assert!(conf.is_file());
        assert!(units.parent().unwrap().parent().unwrap().join("tmpfiles.d/job.conf").is_file());
        for wrapper in WRAPPERS {
            let text = std::fs::read_to_string(top.join("bin").join(wrapper)).unwrap();
            assert!(text.contains("/run/testbed/marker"), "{wrapper}: {text}");
        }
        let prepopulate = std::fs::read_to_string(top.join("bin/prepopulate")).unwrap();
        assert!(prepopulate.contains("echo \"prepopulate a\" >> /run/testbed/engine.log\nexit 3\n"), "{prepopulate}");
        assert_eq!(
            initial_state(&top).unwrap(),
            state_text(std::fs::read_to_string(top.join("services/services.json")).unwrap().trim())
        );
        // The same units give the same static tree.
        let b = Generation::new("b")
            .system_manager()
            .service("job.service", "[Service]\nExecStart=/bin/sleep infinity\n")
            .tmpfiles("job.conf", "d /run/job 0755 root root -\n")
            .build(dir.path(), &ctx)
            .unwrap();
        assert_eq!(boot_links(&b).unwrap().0, units);
    }
}
