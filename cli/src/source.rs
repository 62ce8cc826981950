//! Where the new generation comes from: the `--toplevel`, `--flake`,
//! `--base`, `--host`, `--module` and `--show-wrapper` options shared by
//! `plan`, `check` and `switch`.
//!
//! The commands call [`resolve`] once, before planning, and get back a
//! toplevel directory to plan against and its [`Provenance`], which they
//! store in the plan's `new.provenance`:
//!
//! ```ignore
//! let resolved = source::resolve_for_policy(&args.source, policy.as_ref())?;
//! // or: source::resolve(&args.source, policy_base)?
//! plan.new.provenance = Some(resolved.provenance);
//! ```
//!
//! - `--toplevel PATH`: a prebuilt generation. It must exist and be a
//!   directory; symbolic links (`./result`) are resolved to the store path.
//! - `--flake REF`: the overlay. The base (`--base`, else the policy file's
//!   `base`, else `/etc/nixos`) is extended with the overlay's module
//!   (`--module`, default `default`) from `nixosModules`, `darwinModules`
//!   or `systemManagerModules` depending on the platform. The base's
//!   configuration is `--host`, else the policy file's `host`, else this
//!   machine's host name, then `default`.
//! - `--flake REF#attr`: a complete configuration, built as it is
//!   (`attr`, or `nixosConfigurations.attr` and the like for a short name).
//!
//! The platform is macOS → nix-darwin, a machine with `/etc/NIXOS` → NixOS,
//! anything else → system-manager; the environment variable
//! `SAFE_SWITCH_PLATFORM` (`nixos`, `darwin`, `system-manager`) overrides
//! the guess.
//!
//! Nothing is activated: the generation is only built (`nix build
//! --no-link --json`). Nix's progress goes to standard error as it happens.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use nix_compose::{Composer, NixCommand, Platform, Request};
use plan_model::Provenance;

use crate::args::SourceArgs;

/// The base used when neither `--base` nor the policy file names one.
pub const DEFAULT_BASE: &str = "/etc/nixos";

/// The environment variable that overrides the platform guess.
pub const PLATFORM_ENV: &str = "SAFE_SWITCH_PLATFORM";

/// The new generation, ready to plan against. As a file, it is how
/// `switch` hands the generation it built to its isolated apply, so the
/// flake is not evaluated a second time.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Resolved {
    /// The toplevel directory (a store path when built).
    pub toplevel: PathBuf,
    /// Where it came from: store it in `plan.new.provenance`.
    pub provenance: Provenance,
}

/// Writes `resolved` to `path` for [`read_resolved`].
pub fn write_resolved(path: &Path, resolved: &Resolved) -> anyhow::Result<()> {
    let json = serde_json::to_vec(resolved)?;
    std::fs::write(path, json).with_context(|| format!("{}: cannot write", path.display()))
}

/// Reads what [`write_resolved`] wrote.
pub fn read_resolved(path: &Path) -> anyhow::Result<Resolved> {
    let text = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("{}: not a resolved generation", path.display()))
}

/// Defaults that do not come from the command line.
#[derive(Clone, Debug)]
pub struct ResolveOptions {
    /// The policy file's `base`.
    pub policy_base: Option<String>,
    /// The policy file's `host`.
    pub policy_host: Option<String>,
    /// The kind of system.
    pub platform: Platform,
    /// This machine's host name, when known.
    pub hostname: Option<String>,
    /// The `nix` program.
    pub nix: NixCommand,
}

impl ResolveOptions {
    /// The options for this machine: the platform guessed (or taken from
    /// `SAFE_SWITCH_PLATFORM`) and the host name read from the system.
    pub fn for_this_machine(policy_base: Option<&str>) -> anyhow::Result<ResolveOptions> {
        Ok(ResolveOptions {
            policy_base: policy_base.map(str::to_owned),
            policy_host: None,
            platform: detect_platform()?,
            hostname: hostname(),
            nix: NixCommand::default(),
        })
    }
}

/// Resolves the source options to a toplevel directory, building it with
/// Nix when it comes from a flake. `policy_base` is the policy file's
/// `base`, if any. Errors name the option, path or flake at fault; nothing
/// is activated or written outside the Nix store and a private temporary
/// directory.
pub fn resolve(source: &SourceArgs, policy_base: Option<&str>) -> anyhow::Result<Resolved> {
    resolve_with(source, &ResolveOptions::for_this_machine(policy_base)?)
}

/// [`resolve`] with the policy file's `base` and `host` as defaults.
pub fn resolve_for_policy(
    source: &SourceArgs,
    policy: Option<&plan_model::policy::Policy>,
) -> anyhow::Result<Resolved> {
    let mut options = ResolveOptions::for_this_machine(policy.and_then(|p| p.base.as_deref()))?;
    options.policy_host = policy.and_then(|p| p.host.clone());
    resolve_with(source, &options)
}

/// [`resolve`] with every default given explicitly.
pub fn resolve_with(source: &SourceArgs, options: &ResolveOptions) -> anyhow::Result<Resolved> {
    if let Some(path) = &source.toplevel {
        return prebuilt(path);
    }
    let Some(flake) = &source.flake else {
        bail!("no new generation given: use --toplevel PATH or --flake REF");
    };
    let request = request(source, flake, options)?;
    if source.show_wrapper {
        say!("safe-switch: wrapper flake:\n{}", request.wrapper().render());
    }
    let composer = Composer::new(options.nix.clone()).with_announce(|step| say!("safe-switch: {step}"));
    let built = composer.build(&request).map_err(|e| explain(e, options))?;
    Ok(Resolved { toplevel: built.toplevel, provenance: built.provenance })
}

/// Adds to an error what only this layer knows: that the platform was a
/// guess, when a base does not fit the guessed platform.
fn explain(err: nix_compose::ComposeError, options: &ResolveOptions) -> anyhow::Error {
    let platform_guessed = std::env::var_os(PLATFORM_ENV).is_none();
    match err {
        nix_compose::ComposeError::SystemManagerConvention { .. } if platform_guessed => {
            anyhow::anyhow!(
                "{err}\n(this machine was taken for a {} one; set {PLATFORM_ENV}=nixos or \
                 {PLATFORM_ENV}=darwin to compose another kind of configuration)",
                options.platform.name()
            )
        }
        err => err.into(),
    }
}

/// The build request the options describe.
pub fn request(source: &SourceArgs, flake: &str, options: &ResolveOptions) -> anyhow::Result<Request> {
    if flake.contains('#') {
        for (given, name) in [(&source.base, "--base"), (&source.host, "--host"), (&source.module, "--module")] {
            if given.is_some() {
                bail!(
                    "{name} applies to an overlay flake, but `{flake}` names a complete \
                     configuration (REF#attr); drop {name} or the `#attr`"
                );
            }
        }
    }
    let base = source.base.clone().or_else(|| options.policy_base.clone()).unwrap_or_else(|| DEFAULT_BASE.to_owned());
    let hosts = match (&source.host, &options.policy_host) {
        (Some(host), _) | (None, Some(host)) => vec![host.clone()],
        (None, None) => {
            let mut hosts: Vec<String> = options.hostname.iter().cloned().collect();
            if !hosts.iter().any(|h| h == "default") {
                hosts.push("default".to_owned());
            }
            hosts
        }
    };
    let module = source.module.as_deref().unwrap_or("default");
    Ok(Request::from_flake_arg(flake, options.platform, &base, hosts, module))
}

/// Validates a prebuilt generation.
fn prebuilt(path: &Path) -> anyhow::Result<Resolved> {
    let meta = std::fs::metadata(path).with_context(|| format!("--toplevel {}: cannot be read", path.display()))?;
    if !meta.is_dir() {
        bail!("--toplevel {}: not a directory (a system toplevel is one)", path.display());
    }
    let toplevel =
        std::fs::canonicalize(path).with_context(|| format!("--toplevel {}: cannot be resolved", path.display()))?;
    Ok(Resolved { toplevel, provenance: Provenance::Toplevel { given: path.display().to_string() } })
}

/// The platform: `SAFE_SWITCH_PLATFORM` if set, else macOS → nix-darwin,
/// `/etc/NIXOS` → NixOS, else system-manager.
pub fn detect_platform() -> anyhow::Result<Platform> {
    if let Some(value) = std::env::var_os(PLATFORM_ENV) {
        let value = value.to_string_lossy();
        return Platform::from_name(&value)
            .with_context(|| format!("{PLATFORM_ENV}={value}: expected nixos, darwin or system-manager"));
    }
    Ok(if cfg!(target_os = "macos") {
        Platform::Darwin
    } else if Path::new("/etc/NIXOS").exists() {
        Platform::Nixos
    } else {
        Platform::SystemManager
    })
}

/// This machine's short host name, as `nixos-rebuild` and `darwin-rebuild`
/// use it to pick a configuration: the kernel's (`uname`), or on macOS
/// the local host name (`scutil`).
pub fn hostname() -> Option<String> {
    let raw = if cfg!(target_os = "macos") {
        command_output("scutil", &["--get", "LocalHostName"])
    } else {
        Some(rustix::system::uname().nodename().to_string_lossy().into_owned())
    }?;
    let short = raw.trim().split('.').next().unwrap_or("").to_owned();
    (!short.is_empty()).then_some(short)
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use nix_compose::{AttrRequest, ComposeRequest};

    use super::*;

    fn options() -> ResolveOptions {
        ResolveOptions {
            policy_base: None,
            policy_host: None,
            platform: Platform::Nixos,
            hostname: Some("runner1".into()),
            nix: NixCommand::default(),
        }
    }

    fn flake(flake: &str) -> SourceArgs {
        SourceArgs { flake: Some(flake.into()), ..SourceArgs::default() }
    }

    #[test]
    fn defaults_come_from_the_policy_then_the_machine() {
        let r = request(&flake("./ci"), "./ci", &options()).unwrap();
        assert_eq!(
            r,
            Request::Compose(ComposeRequest {
                platform: Platform::Nixos,
                base: "/etc/nixos".into(),
                overlay: "./ci".into(),
                hosts: vec!["runner1".into(), "default".into()],
                module: "default".into(),
            })
        );
        let o = ResolveOptions { policy_base: Some("machine".into()), ..options() };
        let Request::Compose(r) = request(&flake("./ci"), "./ci", &o).unwrap() else { panic!() };
        assert_eq!(r.base, "machine");
        let o = ResolveOptions { policy_host: Some("ci".into()), ..o };
        let Request::Compose(r) = request(&flake("./ci"), "./ci", &o).unwrap() else { panic!() };
        assert_eq!(r.hosts, vec!["ci".to_owned()], "the policy's host replaces the guess");
        let args = SourceArgs {
            base: Some("/srv/base".into()),
            host: Some("vm".into()),
            module: Some("gpu".into()),
            ..flake("./ci")
        };
        let Request::Compose(r) = request(&args, "./ci", &o).unwrap() else { panic!() };
        assert_eq!((r.base.as_str(), r.hosts, r.module.as_str()), ("/srv/base", vec!["vm".into()], "gpu"));
    }

    #[test]
    fn a_fragment_names_a_configuration_and_excludes_overlay_options() {
        let r = request(&flake("/srv/sys#vm"), "/srv/sys#vm", &options()).unwrap();
        assert_eq!(
            r,
            Request::Attr(AttrRequest { platform: Platform::Nixos, flake: "/srv/sys".into(), attr: "vm".into() })
        );
        let args = SourceArgs { base: Some("/etc/nixos".into()), ..flake("/srv/sys#vm") };
        let err = request(&args, "/srv/sys#vm", &options()).unwrap_err().to_string();
        assert!(err.starts_with("--base applies to an overlay flake"), "{err}");
    }

    #[test]
    fn toplevel_must_be_an_existing_directory() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("result");
        std::os::unix::fs::symlink(dir.path(), &link).unwrap();
        let args = SourceArgs { toplevel: Some(link.clone()), ..SourceArgs::default() };
        let r = resolve_with(&args, &options()).unwrap();
        assert_eq!(r.toplevel, std::fs::canonicalize(dir.path()).unwrap());
        assert_eq!(r.provenance, Provenance::Toplevel { given: link.display().to_string() });

        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let args = SourceArgs { toplevel: Some(file.clone()), ..SourceArgs::default() };
        let err = resolve_with(&args, &options()).unwrap_err().to_string();
        assert!(err.ends_with("not a directory (a system toplevel is one)"), "{err}");
        let args = SourceArgs { toplevel: Some(dir.path().join("missing")), ..SourceArgs::default() };
        let err = format!("{:#}", resolve_with(&args, &options()).unwrap_err());
        assert!(err.contains("missing: cannot be read: No such file"), "{err}");
    }

    #[test]
    fn nothing_given_is_an_error() {
        let err = resolve_with(&SourceArgs::default(), &options()).unwrap_err();
        assert_eq!(err.to_string(), "no new generation given: use --toplevel PATH or --flake REF");
    }
}
