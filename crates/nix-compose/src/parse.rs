//! Parsing what `nix flake metadata --json`, `nix eval --json` and
//! `nix build --json` print. Only the fields safe-switch uses are read, and
//! unknown fields are ignored, so the same code reads Nix 2.8 and current
//! Nix.

use std::collections::BTreeMap;
use std::path::PathBuf;

use plan_model::FlakeInput;
use serde::Deserialize;

use crate::error::ComposeError;

#[derive(Debug, Deserialize)]
struct Metadata {
    locks: Locks,
}

#[derive(Debug, Deserialize)]
struct Locks {
    nodes: BTreeMap<String, Node>,
    root: String,
}

#[derive(Debug, Deserialize)]
struct Node {
    #[serde(default)]
    inputs: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    locked: Option<BTreeMap<String, serde_json::Value>>,
}

/// Reads the locked form of each of the wrapper's direct inputs from the
/// output of `nix flake metadata --json <wrapper>`, keyed by input name.
/// `references` gives the reference as the user wrote it, by input name.
pub fn locked_inputs(json: &str, references: &[(&str, &str)]) -> Result<BTreeMap<String, FlakeInput>, ComposeError> {
    let bad = |detail: String| ComposeError::UnexpectedOutput { command: "flake metadata", detail };
    let meta: Metadata = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
    let root = meta
        .locks
        .nodes
        .get(&meta.locks.root)
        .ok_or_else(|| bad(format!("no root node `{}` in the lock", meta.locks.root)))?;
    let mut out = BTreeMap::new();
    for (name, reference) in references {
        // A direct input is a node name; a `follows` is a list and cannot
        // occur for the wrapper's own inputs.
        let node_name = root
            .inputs
            .get(*name)
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad(format!("input `{name}` is not in the lock")))?;
        let node = meta.locks.nodes.get(node_name).ok_or_else(|| bad(format!("lock node `{node_name}` is missing")))?;
        let locked = node.locked.as_ref().ok_or_else(|| bad(format!("input `{name}` has no locked reference")))?;
        out.insert(
            (*name).to_owned(),
            FlakeInput {
                reference: (*reference).to_owned(),
                locked_url: Some(locked_url(locked)),
                rev: str_field(locked, "rev"),
                nar_hash: str_field(locked, "narHash"),
                last_modified: locked.get("lastModified").and_then(|v| v.as_u64()),
            },
        );
    }
    Ok(out)
}

fn str_field(attrs: &BTreeMap<String, serde_json::Value>, key: &str) -> Option<String> {
    attrs.get(key).and_then(|v| v.as_str()).map(str::to_owned)
}

/// Writes a locked input's attributes as a flake URL, the way Nix prints
/// them: the scheme from `type`, the location from `path`/`url` or
/// `owner`/`repo`, and the remaining attributes as query parameters.
pub fn locked_url(attrs: &BTreeMap<String, serde_json::Value>) -> String {
    let ty = str_field(attrs, "type").unwrap_or_default();
    let mut skip = vec!["type"];
    let base = match ty.as_str() {
        "path" => {
            skip.push("path");
            format!("path:{}", str_field(attrs, "path").unwrap_or_default())
        }
        "github" | "gitlab" | "sourcehut" => {
            skip.extend(["owner", "repo", "rev"]);
            let mut s = format!(
                "{ty}:{}/{}",
                str_field(attrs, "owner").unwrap_or_default(),
                str_field(attrs, "repo").unwrap_or_default()
            );
            if let Some(rev) = str_field(attrs, "rev") {
                s.push('/');
                s.push_str(&rev);
            }
            s
        }
        "indirect" => {
            skip.push("id");
            format!("flake:{}", str_field(attrs, "id").unwrap_or_default())
        }
        other => {
            skip.push("url");
            let url = str_field(attrs, "url").unwrap_or_default();
            // `git` with a `file://` URL prints as `git+file:///...`.
            if url.starts_with(&format!("{other}+")) || url.starts_with(&format!("{other}:")) {
                url
            } else {
                format!("{other}+{url}")
            }
        }
    };
    let query: Vec<String> = attrs
        .iter()
        .filter(|(k, _)| !skip.contains(&k.as_str()))
        .map(|(k, v)| {
            let v = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            format!("{k}={}", percent_encode(&v))
        })
        .collect();
    if query.is_empty() { base } else { format!("{base}?{}", query.join("&")) }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' | b'+' | b'=' | b':' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Reads the output paths from `nix build --json` (one entry per
/// installable; safe-switch builds exactly one, with one output `out`).
pub fn build_out_path(json: &str) -> Result<PathBuf, ComposeError> {
    #[derive(Deserialize)]
    struct Built {
        #[serde(default)]
        outputs: BTreeMap<String, String>,
    }
    let bad = |detail: String| ComposeError::UnexpectedOutput { command: "build", detail };
    let built: Vec<Built> = serde_json::from_str(json.trim()).map_err(|e| bad(e.to_string()))?;
    let [one] = built.as_slice() else {
        return Err(bad(format!("expected one built installable, got {}", built.len())));
    };
    one.outputs
        .get("out")
        .or_else(|| one.outputs.values().next())
        .map(PathBuf::from)
        .ok_or_else(|| bad("the build has no output path".to_owned()))
}

/// What a composition wrapper's `safeSwitch.info` evaluates to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct ComposeInfo {
    /// The first candidate configuration the base has, if any.
    pub host: Option<String>,
    /// Whether that configuration can be extended (NixOS and nix-darwin:
    /// has `extendModules`; system-manager: the base has a
    /// `system-manager` input).
    #[serde(default)]
    pub extendable: bool,
    /// The names under the base's configurations output.
    #[serde(default)]
    pub configurations: Vec<String>,
    /// The names under the overlay's modules output.
    #[serde(default)]
    pub modules: Vec<String>,
    /// system-manager only: the base's `systemConfigs`, to recognise a
    /// base that builds configurations but does not export its modules.
    #[serde(default)]
    pub system_configs: Vec<String>,
    /// system-manager only: the base's `nixosConfigurations`, to recognise
    /// a NixOS base composed on a machine taken for a system-manager one.
    #[serde(default)]
    pub nixos_configurations: Vec<String>,
}

/// What an attribute wrapper's `safeSwitch.info` evaluates to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct AttrInfo {
    /// The attribute path found, if any.
    pub path: Option<Vec<String>>,
    /// `configuration`, `derivation` or `other`.
    pub kind: Option<String>,
}

/// Parses `nix eval --json` output of a composition wrapper's info.
pub fn compose_info(json: &str) -> Result<ComposeInfo, ComposeError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Raw {
        host: Option<String>,
        #[serde(default)]
        extendable: bool,
        #[serde(default)]
        configurations: Vec<String>,
        #[serde(default)]
        modules: Vec<String>,
        #[serde(default)]
        system_configs: Vec<String>,
        #[serde(default)]
        nixos_configurations: Vec<String>,
    }
    let raw: Raw = serde_json::from_str(json.trim())
        .map_err(|e| ComposeError::UnexpectedOutput { command: "eval", detail: e.to_string() })?;
    Ok(ComposeInfo {
        host: raw.host,
        extendable: raw.extendable,
        configurations: raw.configurations,
        modules: raw.modules,
        system_configs: raw.system_configs,
        nixos_configurations: raw.nixos_configurations,
    })
}

/// Parses `nix eval --json` output of an attribute wrapper's info.
pub fn attr_info(json: &str) -> Result<AttrInfo, ComposeError> {
    serde_json::from_str(json.trim())
        .map_err(|e| ComposeError::UnexpectedOutput { command: "eval", detail: e.to_string() })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// Trimmed output of Nix 2.8's `nix flake metadata --json` for a
    /// wrapper whose inputs are a path flake and a Git checkout.
    const METADATA: &str = r#"{
      "lastModified": 1795632216,
      "locks": {
        "nodes": {
          "base": {
            "inputs": { "pins": "pins" },
            "locked": {
              "lastModified": 1795632192,
              "narHash": "sha256-01kXfwXcA++AksmDI/nvoJcdpEnKqxQgd6mh5lG9MrE=",
              "path": "/srv/base",
              "type": "path"
            },
            "original": { "id": "base", "type": "indirect" }
          },
          "overlay": {
            "locked": {
              "lastModified": 1700000000,
              "narHash": "sha256-qKKSvmTZoy2gAs8SRH3tMR9Ibo9GvEeIFs0MbccH8TU=",
              "ref": "main",
              "rev": "0123456789abcdef0123456789abcdef01234567",
              "revCount": 3,
              "type": "git",
              "url": "file:///srv/project"
            },
            "original": { "id": "overlay", "type": "indirect" }
          },
          "pins": { "locked": { "path": "/srv/pins", "type": "path" } },
          "root": { "inputs": { "base": "base", "overlay": "overlay" } }
        },
        "root": "root",
        "version": 7
      },
      "url": "path:/srv/wrapper"
    }"#;

    #[test]
    fn locked_inputs_are_read_from_the_lock() {
        let got = locked_inputs(METADATA, &[("base", "/srv/base"), ("overlay", "./ci")]).unwrap();
        let base = &got["base"];
        assert_eq!(base.reference, "/srv/base");
        assert_eq!(base.nar_hash.as_deref(), Some("sha256-01kXfwXcA++AksmDI/nvoJcdpEnKqxQgd6mh5lG9MrE="));
        assert_eq!(base.rev, None);
        assert_eq!(base.last_modified, Some(1795632192));
        assert_eq!(
            base.locked_url.as_deref(),
            Some("path:/srv/base?lastModified=1795632192&narHash=sha256-01kXfwXcA++AksmDI/nvoJcdpEnKqxQgd6mh5lG9MrE=")
        );
        let overlay = &got["overlay"];
        assert_eq!(overlay.rev.as_deref(), Some("0123456789abcdef0123456789abcdef01234567"));
        assert!(overlay.locked_url.as_deref().unwrap().starts_with("git+file:///srv/project?"), "{overlay:?}");
    }

    #[test]
    fn a_missing_input_is_an_error_not_a_panic() {
        let err = locked_inputs(METADATA, &[("flake", "x")]).unwrap_err();
        assert!(err.to_string().contains("input `flake` is not in the lock"), "{err}");
        assert!(locked_inputs("not json", &[]).is_err());
    }

    #[test]
    fn github_inputs_print_as_github_urls() {
        let attrs: BTreeMap<String, serde_json::Value> = serde_json::from_str(
            r#"{"type":"github","owner":"NixOS","repo":"nixpkgs","rev":"abc","narHash":"sha256-x"}"#,
        )
        .unwrap();
        assert_eq!(locked_url(&attrs), "github:NixOS/nixpkgs/abc?narHash=sha256-x");
    }

    #[test]
    fn build_json_gives_the_out_path() {
        let json = r#"[{"drvPath":"/nix/store/a-x.drv","outputs":{"out":"/nix/store/b-x"}}]"#;
        assert_eq!(build_out_path(json).unwrap(), PathBuf::from("/nix/store/b-x"));
        assert!(build_out_path("[]").is_err());
        assert!(build_out_path("").is_err());
    }

    #[test]
    fn info_json_is_read() {
        let info = compose_info(
            r#"{"configurations":["vm"],"extendable":true,"host":"vm","modules":["default"],"platform":"nixos"}"#,
        )
        .unwrap();
        assert_eq!(info.host.as_deref(), Some("vm"));
        assert!(info.extendable);
        let attr = attr_info(r#"{"kind":null,"path":null}"#).unwrap();
        assert_eq!(attr, AttrInfo::default());
    }
}
