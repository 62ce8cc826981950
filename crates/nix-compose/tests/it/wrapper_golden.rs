//! Golden tests of the generated wrapper flakes: the text a user sees with
//! `--show-wrapper` and finds in a JSON plan's provenance.
//!
//! The snapshots were read and checked by hand: inputs without URLs (given
//! with `--override-input`), the base's configuration extended through
//! `extendModules` (NixOS, nix-darwin) or rebuilt with the base's own
//! `system-manager` input (system-manager), and `safeSwitch.info` exposing
//! only names, so that checking it evaluates no configuration.

use nix_compose::{AttrRequest, ComposeRequest, Platform, Request};

fn composed(platform: Platform) -> String {
    Request::Compose(ComposeRequest {
        platform,
        base: "/etc/nixos".into(),
        overlay: "/srv/project/ci".into(),
        hosts: vec!["runner1".into(), "default".into()],
        module: "default".into(),
    })
    .wrapper()
    .render()
}

#[test]
fn nixos_wrapper() {
    insta::assert_snapshot!(composed(Platform::Nixos));
}

#[test]
fn darwin_wrapper_differs_from_nixos_only_in_output_names() {
    let nixos = composed(Platform::Nixos);
    let darwin = composed(Platform::Darwin);
    let expected = nixos
        .replace("nixosConfigurations", "darwinConfigurations")
        .replace("nixosModules", "darwinModules")
        .replace("platform = \"nixos\"", "platform = \"darwin\"");
    assert_eq!(darwin, expected);
}

#[test]
fn system_manager_wrapper() {
    insta::assert_snapshot!(composed(Platform::SystemManager));
}

#[test]
fn attribute_wrapper() {
    let text = Request::Attr(AttrRequest {
        platform: Platform::Nixos,
        flake: "github:example/machines".into(),
        attr: "runner1".into(),
    })
    .wrapper()
    .render();
    insta::assert_snapshot!(text);
}
