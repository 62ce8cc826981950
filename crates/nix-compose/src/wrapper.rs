//! The generated wrapper flake: a pure function from what the user asked for
//! to the text of a `flake.nix`.
//!
//! The wrapper declares its inputs without a URL (`inputs.base = { };`);
//! the real references are supplied with `--override-input` when the wrapper
//! is locked. That way the text names no machine path, the base and the
//! overlay are fetched exactly as Nix's command line would fetch them
//! (relative paths, Git detection, registry aliases), and neither flake's
//! own `flake.lock` is read for writing.
//!
//! Every wrapper exposes two outputs under `safeSwitch`:
//! - `info`: cheap facts, evaluated with `nix eval --json` before anything
//!   is built, so that a base without the configuration or an overlay
//!   without the module becomes a precise error instead of an evaluation
//!   trace;
//! - `toplevel`: the system toplevel derivation that `nix build` realises.

use std::fmt::Write as _;

/// The kind of system being composed, which decides the flake outputs used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Platform {
    /// NixOS: `nixosConfigurations.<host>.extendModules`, `nixosModules`.
    Nixos,
    /// nix-darwin: `darwinConfigurations.<host>.extendModules`,
    /// `darwinModules`.
    Darwin,
    /// system-manager: the base exports `systemManagerModules.<host>` and
    /// has a `system-manager` input whose `lib.makeSystemConfig` is called
    /// with the base's modules plus the overlay's module.
    SystemManager,
}

impl Platform {
    /// The name used in plans and messages: `nixos`, `darwin`,
    /// `system-manager`.
    pub fn name(self) -> &'static str {
        match self {
            Platform::Nixos => "nixos",
            Platform::Darwin => "darwin",
            Platform::SystemManager => "system-manager",
        }
    }

    /// Parses a name as returned by [`Platform::name`].
    pub fn from_name(name: &str) -> Option<Platform> {
        match name {
            "nixos" => Some(Platform::Nixos),
            "darwin" | "nix-darwin" => Some(Platform::Darwin),
            "system-manager" => Some(Platform::SystemManager),
            _ => None,
        }
    }

    /// The base flake's output that holds the configurations (NixOS and
    /// nix-darwin) or module lists (system-manager), by host.
    pub fn base_output(self) -> &'static str {
        match self {
            Platform::Nixos => "nixosConfigurations",
            Platform::Darwin => "darwinConfigurations",
            Platform::SystemManager => "systemManagerModules",
        }
    }

    /// The overlay flake's output that holds its modules.
    pub fn module_output(self) -> &'static str {
        match self {
            Platform::Nixos => "nixosModules",
            Platform::Darwin => "darwinModules",
            Platform::SystemManager => "systemManagerModules",
        }
    }

    /// The output under which complete configurations usually live, used
    /// to resolve a short `--flake REF#name`.
    pub fn configurations_output(self) -> &'static str {
        match self {
            Platform::Nixos => "nixosConfigurations",
            Platform::Darwin => "darwinConfigurations",
            Platform::SystemManager => "systemConfigs",
        }
    }
}

/// What the wrapper flake builds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WrapperSpec {
    /// Extend a base configuration with one module of an overlay flake.
    Compose {
        /// The kind of system.
        platform: Platform,
        /// Candidate configuration names, tried in order (e.g. the host
        /// name, then `default`).
        hosts: Vec<String>,
        /// The overlay's module name.
        module: String,
        /// The base reference, for the header comment only.
        base_ref: String,
        /// The overlay reference, for the header comment only.
        overlay_ref: String,
    },
    /// Build a complete configuration or derivation named by an attribute
    /// of one flake.
    Attr {
        /// Candidate attribute paths, tried in order.
        candidates: Vec<Vec<String>>,
        /// The flake reference, for the header comment only.
        flake_ref: String,
    },
}

impl WrapperSpec {
    /// The wrapper's input names, in the order they are declared.
    pub fn inputs(&self) -> &'static [&'static str] {
        match self {
            WrapperSpec::Compose { .. } => &["base", "overlay"],
            WrapperSpec::Attr { .. } => &["flake"],
        }
    }

    /// Renders the wrapper's `flake.nix`.
    pub fn render(&self) -> String {
        match self {
            WrapperSpec::Compose { platform, hosts, module, base_ref, overlay_ref } => {
                render_compose(*platform, hosts, module, base_ref, overlay_ref)
            }
            WrapperSpec::Attr { candidates, flake_ref } => render_attr(candidates, flake_ref),
        }
    }
}

/// Quotes a string as a Nix string literal. Only `"`, `\` and `${` are
/// special inside double quotes; newlines and tabs are escaped so that the
/// literal stays on one line.
pub fn nix_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '$' if chars.peek() == Some(&'{') => out.push_str("\\$"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn nix_list<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let items: Vec<String> = items.into_iter().map(nix_string).collect();
    format!("[ {} ]", items.join(" "))
}

/// Turns a reference into something safe to place in a `#` comment.
fn comment_safe(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

fn render_compose(platform: Platform, hosts: &[String], module: &str, base_ref: &str, overlay_ref: &str) -> String {
    let mut s = String::new();
    let what = match platform {
        Platform::SystemManager => {
            "# It builds the base's system-manager modules plus the overlay's module\n\
             # with the base's own system-manager input (makeSystemConfig).\n"
        }
        _ => {
            "# It builds the base configuration extended with the overlay's module\n\
             # (extendModules), which keeps the base's nixpkgs and specialArgs.\n"
        }
    };
    let _ = write!(
        s,
        "# Generated by safe-switch.\n\
         {what}\
         # The inputs are given at build time with --override-input:\n\
         #   base    = {base}\n\
         #   overlay = {overlay}\n\
         # so neither flake's lock file is written, and the base keeps its own\n\
         # inputs (nixpkgs and other pins) whatever the overlay pins.\n",
        base = comment_safe(base_ref),
        overlay = comment_safe(overlay_ref),
    );
    let hosts = nix_list(hosts.iter().map(String::as_str));
    let module = nix_string(module);
    let base_output = platform.base_output();
    let module_output = platform.module_output();
    let _ = write!(
        s,
        r#"{{
  description = "safe-switch composition of a base and an overlay";

  inputs.base = {{ }};
  inputs.overlay = {{ }};

  outputs = {{ self, base, overlay }}:
    let
      hosts = {hosts};
      module = {module};
      configurations = base.{base_output} or {{ }};
      modules = overlay.{module_output} or {{ }};
      found = builtins.filter (h: configurations ? ${{h}}) hosts;
      host = if found == [ ] then null else builtins.head found;
"#
    );
    match platform {
        Platform::Nixos | Platform::Darwin => {
            let _ = write!(
                s,
                r#"      extendable = host != null && configurations.${{host}} ? extendModules;
    in
    {{
      safeSwitch.info = {{
        platform = {platform};
        inherit host extendable;
        configurations = builtins.attrNames configurations;
        modules = builtins.attrNames modules;
      }};
      safeSwitch.toplevel =
        (configurations.${{host}}.extendModules {{
          modules = [ modules.${{module}} ];
        }}).config.system.build.toplevel;
    }};
}}
"#,
                platform = nix_string(platform.name()),
            );
        }
        Platform::SystemManager => {
            let _ = write!(
                s,
                r#"      hasSystemManager = (base.inputs or {{ }}) ? system-manager;
      baseModules = configurations.${{host}};
      baseArgs = (base.systemManagerArgs or {{ }}).${{host}} or {{ }};
    in
    {{
      safeSwitch.info = {{
        platform = {platform};
        inherit host;
        extendable = hasSystemManager;
        configurations = builtins.attrNames configurations;
        modules = builtins.attrNames modules;
        systemConfigs = builtins.attrNames (base.systemConfigs or {{ }});
        nixosConfigurations = builtins.attrNames (base.nixosConfigurations or {{ }});
      }};
      safeSwitch.toplevel =
        base.inputs.system-manager.lib.makeSystemConfig (baseArgs // {{
          modules =
            (if builtins.isList baseModules then baseModules else [ baseModules ])
            ++ [ modules.${{module}} ];
        }});
    }};
}}
"#,
                platform = nix_string(platform.name()),
            );
        }
    }
    s
}

fn render_attr(candidates: &[Vec<String>], flake_ref: &str) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "# Generated by safe-switch.\n\
         # It builds a complete configuration named by a flake attribute.\n\
         # The input is given at build time with --override-input:\n\
         #   flake = {flake}\n\
         # so the flake's lock file is not written.\n",
        flake = comment_safe(flake_ref),
    );
    let candidates: Vec<String> = candidates.iter().map(|c| nix_list(c.iter().map(String::as_str))).collect();
    let candidates = format!("[\n        {}\n      ]", candidates.join("\n        "));
    let _ = write!(
        s,
        r#"{{
  description = "safe-switch build of a flake attribute";

  inputs.flake = {{ }};

  outputs = {{ self, flake }}:
    let
      candidates = {candidates};
      # Whether `set` has the attribute path `path`, without evaluating
      # more than the attribute sets along it.
      hasPath = path: set:
        path == [ ]
        || (builtins.isAttrs set
          && set ? ${{builtins.head path}}
          && hasPath (builtins.tail path) set.${{builtins.head path}});
      getPath = path: set:
        if path == [ ] then set else getPath (builtins.tail path) set.${{builtins.head path}};
      found = builtins.filter (p: hasPath p flake) candidates;
      path = if found == [ ] then null else builtins.head found;
      value = getPath path flake;
      kind =
        if path == null then null
        else if hasPath [ "config" "system" "build" "toplevel" ] value then "configuration"
        else if (value.type or null) == "derivation" then "derivation"
        else "other";
    in
    {{
      safeSwitch.info = {{
        inherit path kind;
      }};
      safeSwitch.toplevel =
        if kind == "configuration" then value.config.system.build.toplevel else value;
    }};
}}
"#
    );
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn nix_string_escapes_what_nix_interprets() {
        assert_eq!(nix_string("plain"), r#""plain""#);
        assert_eq!(nix_string(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(nix_string("${x} $y"), r#""\${x} $y""#);
        assert_eq!(nix_string("a\nb"), r#""a\nb""#);
    }

    #[test]
    fn platform_names_round_trip() {
        for p in [Platform::Nixos, Platform::Darwin, Platform::SystemManager] {
            assert_eq!(Platform::from_name(p.name()), Some(p));
        }
        assert_eq!(Platform::from_name("windows"), None);
    }

    #[test]
    fn hostile_host_names_stay_inside_their_string() {
        let text = WrapperSpec::Compose {
            platform: Platform::Nixos,
            hosts: vec!["x\"; y = ${builtins.abort \"no\"}".into()],
            module: "default".into(),
            base_ref: "/etc/nixos\nrm".into(),
            overlay_ref: "./ci".into(),
        }
        .render();
        assert!(text.contains(r#"hosts = [ "x\"; y = \${builtins.abort \"no\"}" ];"#), "{text}");
        assert!(text.contains("#   base    = /etc/nixos rm\n"), "{text}");
    }
}
