//! Composition and builds with the real `nix`, offline, on the fixture
//! flakes (see `tests/fixtures/README.md`).
//!
//! Each test works on its own temporary copy of the fixtures, so nothing is
//! written into the source tree; that no `flake.lock` appears in the copy
//! is itself asserted.

use nix_compose::{AttrRequest, Built, ComposeError, ComposeRequest, Composer, NixCommand, Platform, Request};
use plan_model::Provenance;
use testbed::flakes::{self, Fixtures, units};

fn composer(fx: &Fixtures) -> Composer<NixCommand> {
    Composer::new(NixCommand { env: fx.env(), ..NixCommand::default() })
}

fn compose(platform: Platform, base: &str, overlay: &str, hosts: &[&str], module: &str) -> Request {
    Request::Compose(ComposeRequest {
        platform,
        base: base.to_owned(),
        overlay: overlay.to_owned(),
        hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
        module: module.to_owned(),
    })
}

fn attr(platform: Platform, flake: &str, attr: &str) -> Request {
    Request::Attr(AttrRequest { platform, flake: flake.to_owned(), attr: attr.to_owned() })
}

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap()
}

/// The unit files of the fixture base's NixOS configuration.
const NIXOS_BASE_UNITS: &[&str] =
    &["base-db.service", "base-web.service", "multi-user.target", "sysinit-reactivation.target"];

/// The overlay's unit is added, every base unit is byte-identical to the
/// base built alone, and the base's `pins` input wins inside the base even
/// though the overlay has an input of the same name pinned elsewhere.
fn assert_composed_over_base(composed: &Built, base_only: &Built, base_units: &[&str], fx: &Fixtures) {
    let new = units(&composed.toplevel);
    let old = units(&base_only.toplevel);
    assert_eq!(old.keys().collect::<Vec<_>>(), base_units);
    assert_eq!(
        flakes::wants(&composed.toplevel, "multi-user.target"),
        ["base-db.service", "base-web.service", "project-ci.service"]
    );
    assert_eq!(flakes::wants(&base_only.toplevel, "multi-user.target"), ["base-db.service", "base-web.service"]);
    for (name, bytes) in &old {
        assert_eq!(new.get(name), Some(bytes), "{name} differs from the base-only build");
    }
    assert!(text(&old["base-web.service"]).contains("from pins-base 1.0"));
    let ci = text(&new["project-ci.service"]);
    assert!(
        ci.contains("from pins-overlay 1.0, on a base with pins-base 1.0"),
        "the overlay's module sees its own pin and the base's packages: {ci}"
    );
    assert_eq!(new.len(), old.len() + 1, "{:?}", new.keys());
    if composed.toplevel.join("services/services.json").is_file() {
        // system-manager's layout: its own activation entry point.
        assert!(composed.toplevel.join("bin/activate").is_file());
    } else {
        let version = std::fs::read_to_string(composed.toplevel.join("nixos-version")).unwrap();
        assert_eq!(version, "pins-base 1.0");
        assert!(composed.toplevel.join("activate").is_file());
        assert!(composed.toplevel.join("init-interface-version").is_file());
    }
    assert_eq!(fx.lock_files(), Vec::<std::path::PathBuf>::new(), "no lock file may be written");
}

#[test]
fn nixos_overlay_extends_the_base_and_keeps_its_pins() {
    testbed::require!(nix);
    let fx = Fixtures::new();
    let c = composer(&fx);
    let base_only = c.build(&attr(Platform::Nixos, &fx.flake("base"), "vm")).unwrap();
    let composed = c
        .build(&compose(Platform::Nixos, &fx.flake("base"), &fx.flake("overlay"), &["vm", "default"], "default"))
        .unwrap();
    assert_composed_over_base(&composed, &base_only, NIXOS_BASE_UNITS, &fx);

    let Provenance::Composed { base, overlay, platform, host, module, wrapper } = &composed.provenance else {
        panic!("{:?}", composed.provenance)
    };
    assert_eq!((platform.as_str(), host.as_str(), module.as_str()), ("nixos", "vm", "default"));
    assert_eq!(base.reference, fx.flake("base"));
    assert!(base.nar_hash.as_deref().is_some_and(|h| h.starts_with("sha256-")), "{base:?}");
    assert!(overlay.nar_hash.as_deref().is_some_and(|h| h.starts_with("sha256-")), "{overlay:?}");
    assert_ne!(base.nar_hash, overlay.nar_hash);
    assert!(base.locked_url.as_deref().unwrap().starts_with("path:"), "{base:?}");
    assert!(wrapper.contains("extendModules"), "{wrapper}");

    let Provenance::FlakeAttr { built, .. } = &base_only.provenance else { panic!() };
    assert_eq!(built.as_deref(), Some("nixosConfigurations.vm.config.system.build.toplevel"));
}

#[test]
fn the_host_falls_back_to_the_next_candidate_and_another_module_can_be_picked() {
    testbed::require!(nix);
    let fx = Fixtures::new();
    let built = composer(&fx)
        .build(&compose(Platform::Darwin, &fx.flake("base"), &fx.flake("overlay"), &["this-machine", "vm"], "extra"))
        .unwrap();
    let u = units(&built.toplevel);
    assert!(u.contains_key("project-extra.service"), "{:?}", u.keys());
    assert!(!u.contains_key("project-ci.service"));
    let Provenance::Composed { host, platform, .. } = &built.provenance else { panic!() };
    assert_eq!((host.as_str(), platform.as_str()), ("vm", "darwin"));
}

#[test]
fn system_manager_composition_follows_the_convention() {
    testbed::require!(nix);
    let fx = Fixtures::new();
    let c = composer(&fx);
    let base_only = c.build(&attr(Platform::SystemManager, &fx.flake("base"), "vm")).unwrap();
    let Provenance::FlakeAttr { built, .. } = &base_only.provenance else { panic!() };
    assert_eq!(built.as_deref(), Some("systemConfigs.vm"), "a derivation is built as it is");
    let composed = c
        .build(&compose(Platform::SystemManager, &fx.flake("base"), &fx.flake("overlay"), &["vm"], "default"))
        .unwrap();
    let mut base_units = NIXOS_BASE_UNITS.to_vec();
    base_units.push("site.service");
    base_units.sort();
    assert_composed_over_base(&composed, &base_only, &base_units, &fx);
    let site = text(&units(&composed.toplevel)["site.service"]).to_owned();
    assert!(site.contains("Description=Site base-site"), "systemManagerArgs are passed: {site}");

    // Both builds have system-manager's layout, and the planner reads it:
    // switching from the base alone to the composed generation adds the
    // overlay's unit and leaves every base unit alone, because their files'
    // store paths are the same.
    let services = |built: &Built| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(built.toplevel.join("services/services.json")).unwrap()).unwrap()
    };
    let (old_services, new_services) = (services(&base_only), services(&composed));
    assert!(new_services.get("project-ci.service").is_some(), "{new_services:#}");
    for name in &base_units {
        assert_eq!(old_services[name]["storePath"], new_services[name]["storePath"], "{name}");
    }
    let (old, new) = systemd_plan::load_pair(&base_only.toplevel, &composed.toplevel);
    let (old, new) = (old.unwrap(), new.unwrap());
    let plan = systemd_plan::plan(&old, &new, &systemd_plan::assumed_live_state(&old));
    let acted: Vec<&str> = plan.units.iter().filter(|u| !u.actions.is_empty()).map(|u| u.unit.as_str()).collect();
    assert_eq!(acted, ["system-manager.target"], "{}", plan.to_json());
    let ci = plan.units.iter().find(|u| u.unit == "project-ci.service").unwrap();
    assert_eq!(ci.reasons[0].rule, plan_model::Rule::NewUnit, "{}", plan.to_json());
}

#[test]
fn a_system_manager_base_without_the_convention_is_a_clear_error() {
    testbed::require!(nix);
    let fx = Fixtures::new();
    let err = composer(&fx)
        .build(&compose(
            Platform::SystemManager,
            &fx.flake("base-unconventional"),
            &fx.flake("overlay"),
            &["vm"],
            "default",
        ))
        .unwrap_err();
    assert!(matches!(err, ComposeError::SystemManagerConvention { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("builds systemConfigs (vm) but does not export their modules"), "{msg}");
    assert!(msg.contains("systemManagerModules.<host>"), "{msg}");
}

#[test]
fn missing_configurations_modules_and_flakes_are_named() {
    testbed::require!(nix);
    let fx = Fixtures::new();
    let c = composer(&fx);

    let err = c
        .build(&compose(Platform::Nixos, &fx.flake("base"), &fx.flake("overlay-missing"), &["vm"], "default"))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("the overlay flake `{}` has no nixosModules.default (available: other)", fx.flake("overlay-missing"))
    );

    let err = c
        .build(&compose(Platform::Nixos, &fx.flake("base"), &fx.flake("overlay"), &["runner7", "default"], "default"))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("the base flake `{}` has no nixosConfigurations.runner7 or default (available: vm)", fx.flake("base"))
    );

    let missing = fx.dir.path().join("no-such-base").display().to_string();
    let err = c.build(&compose(Platform::Nixos, &missing, &fx.flake("overlay"), &["vm"], "default")).unwrap_err();
    assert!(matches!(err, ComposeError::FlakeNotFound { role: "base", .. }), "{err:?}");

    let err = c.build(&attr(Platform::Nixos, &fx.flake("base"), "nope")).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("the flake `{}` has no attribute nope or nixosConfigurations.nope", fx.flake("base"))
    );
    assert_eq!(fx.lock_files(), Vec::<std::path::PathBuf>::new());
}

#[test]
fn a_broken_overlay_reports_nix_s_error_verbatim() {
    testbed::require!(nix);
    let fx = Fixtures::new();
    let err = composer(&fx)
        .build(&compose(Platform::Nixos, &fx.flake("base"), &fx.flake("overlay-broken"), &["vm"], "default"))
        .unwrap_err();
    let ComposeError::Build { what, stderr } = &err else { panic!("{err:?}") };
    assert!(what.contains("overlay-broken"), "{what}");
    assert!(stderr.starts_with("error:"), "{stderr}");
    assert!(stderr.contains("noSuchPackage"), "{stderr}");
    let first = err.to_string().lines().next().unwrap().to_owned();
    assert!(first.starts_with("building the base `"), "{first}");
}

#[test]
fn git_bases_record_their_revision_and_aliases_resolve() {
    testbed::require!(nix);
    if std::process::Command::new("git").arg("--version").output().is_err() {
        testbed::require::skip_or_fail(testbed::test_name!(), "git is not installed (scripts/deps installs it)");
        return;
    }
    let fx = Fixtures::new();
    fx.git_init("base");
    fx.alias("project-overlay", "overlay");
    let rev =
        std::process::Command::new("git").args(["rev-parse", "HEAD"]).current_dir(fx.path("base")).output().unwrap();
    let rev = String::from_utf8(rev.stdout).unwrap().trim().to_owned();

    let built = composer(&fx)
        .build(&compose(Platform::Nixos, &fx.flake("base"), "project-overlay", &["vm"], "default"))
        .unwrap();
    let Provenance::Composed { base, overlay, .. } = &built.provenance else { panic!() };
    assert_eq!(base.rev.as_deref(), Some(rev.as_str()), "{base:?}");
    assert!(base.locked_url.as_deref().unwrap().starts_with("git+file://"), "{base:?}");
    assert_eq!(overlay.reference, "project-overlay");
    assert_eq!(
        overlay.locked_url.as_deref().map(|u| u.starts_with(&format!("path:{}", fx.flake("overlay")))),
        Some(true),
        "{overlay:?}"
    );
    assert!(units(&built.toplevel).contains_key("project-ci.service"));
    // The Git checkout stays clean: no lock file was added to it.
    let status = std::process::Command::new("git")
        .args(["status", "--porcelain"])
        .current_dir(fx.path("base"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&status.stdout), "");
}
