//! The composition itself: write the wrapper flake into a private
//! directory, lock it against the given references, check that the asked-for
//! configuration and module exist, and build the toplevel.
//!
//! Order matters for the promise "nothing changed": every check that can
//! fail for a user error (a missing path, configuration or module) runs
//! before `nix build`, and nothing but the wrapper's private directory (and
//! the Nix store) is ever written.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use plan_model::Provenance;

use crate::error::{ComposeError, is_flakes_unsupported};
use crate::parse;
use crate::runner::{NixOutput, NixRunner, StderrMode};
use crate::wrapper::{Platform, WrapperSpec};

/// Extend a base configuration with an overlay's module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ComposeRequest {
    /// The kind of system.
    pub platform: Platform,
    /// The base flake reference.
    pub base: String,
    /// The overlay flake reference.
    pub overlay: String,
    /// Candidate configuration names in the base, tried in order.
    pub hosts: Vec<String>,
    /// The overlay's module name.
    pub module: String,
}

/// Build a complete configuration named by `REF#attr`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttrRequest {
    /// The kind of system, which decides where a short name is looked up
    /// (`nixosConfigurations`, `darwinConfigurations`, `systemConfigs`).
    pub platform: Platform,
    /// The flake reference (before `#`).
    pub flake: String,
    /// The attribute (after `#`).
    pub attr: String,
}

/// What to build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// A base extended with an overlay.
    Compose(ComposeRequest),
    /// A flake attribute.
    Attr(AttrRequest),
}

/// A built generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Built {
    /// The toplevel store path.
    pub toplevel: PathBuf,
    /// Where it came from, for the plan.
    pub provenance: Provenance,
}

impl Request {
    /// Splits `--flake REF` or `--flake REF#attr` into a request. A `#`
    /// names a complete configuration; without it, `REF` is an overlay to
    /// compose with `base`.
    pub fn from_flake_arg(flake: &str, platform: Platform, base: &str, hosts: Vec<String>, module: &str) -> Request {
        match flake.split_once('#') {
            Some((reference, attr)) => {
                Request::Attr(AttrRequest { platform, flake: reference.to_owned(), attr: attr.to_owned() })
            }
            None => Request::Compose(ComposeRequest {
                platform,
                base: base.to_owned(),
                overlay: flake.to_owned(),
                hosts,
                module: module.to_owned(),
            }),
        }
    }

    /// The generated wrapper flake for this request.
    pub fn wrapper(&self) -> WrapperSpec {
        match self {
            Request::Compose(r) => WrapperSpec::Compose {
                platform: r.platform,
                hosts: r.hosts.clone(),
                module: r.module.clone(),
                base_ref: r.base.clone(),
                overlay_ref: r.overlay.clone(),
            },
            Request::Attr(r) => WrapperSpec::Attr { candidates: attr_candidates(r), flake_ref: r.flake.clone() },
        }
    }

    /// A short description, for messages: what is being built.
    pub fn describe(&self) -> String {
        match self {
            Request::Compose(r) => format!(
                "the base `{}` ({} configuration {}) extended with `{}` ({}.{})",
                r.base,
                r.platform.name(),
                r.hosts.join(" or "),
                r.overlay,
                r.platform.module_output(),
                r.module
            ),
            Request::Attr(r) => format!("`{}#{}`", r.flake, r.attr),
        }
    }

    /// The wrapper's inputs with the references they are overridden with.
    fn overrides(&self) -> Vec<(&'static str, String)> {
        match self {
            Request::Compose(r) => {
                vec![("base", absolute_ref(&r.base)), ("overlay", absolute_ref(&r.overlay))]
            }
            Request::Attr(r) => vec![("flake", absolute_ref(&r.flake))],
        }
    }

    /// The references as the user gave them, by wrapper input.
    fn given(&self) -> Vec<(&'static str, &str)> {
        match self {
            Request::Compose(r) => vec![("base", r.base.as_str()), ("overlay", r.overlay.as_str())],
            Request::Attr(r) => vec![("flake", r.flake.as_str())],
        }
    }
}

/// The attribute paths tried for `REF#attr`: the attribute as given, then
/// under the platform's configurations output (so that `REF#vm` finds
/// `nixosConfigurations.vm`, as `nixos-rebuild --flake` does).
fn attr_candidates(r: &AttrRequest) -> Vec<Vec<String>> {
    let path = split_attr_path(&r.attr);
    let configs = r.platform.configurations_output();
    let mut out = vec![path.clone()];
    if path.first().map(String::as_str) != Some(configs) {
        let mut under = vec![configs.to_owned()];
        under.extend(path);
        out.push(under);
    }
    out
}

/// Splits an attribute path on dots, keeping quoted names whole
/// (`nixosConfigurations."a.b"`).
pub fn split_attr_path(attr: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in attr.chars() {
        match c {
            '"' => quoted = !quoted,
            '.' if !quoted => parts.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    parts.push(current);
    parts.retain(|p| !p.is_empty());
    parts
}

/// Whether a reference is a plain local path (as opposed to a URL-like
/// reference or a registry name), following Nix's rule: it starts with `/`
/// or `.`.
fn is_plain_path(reference: &str) -> bool {
    reference.starts_with('/') || reference.starts_with('.')
}

/// Makes a plain relative path absolute, so that the wrapper's lock and the
/// recorded provenance do not depend on the working directory. Other
/// references are passed to Nix untouched.
fn absolute_ref(reference: &str) -> String {
    if is_plain_path(reference) {
        let (path, rest) = split_query(reference);
        if let Ok(abs) = std::path::absolute(path) {
            return format!("{}{rest}", abs.display());
        }
    }
    reference.to_owned()
}

fn split_query(reference: &str) -> (&str, &str) {
    match reference.find(['?', '#']) {
        Some(i) => reference.split_at(i),
        None => (reference, ""),
    }
}

/// The local directory a reference names, for references whose existence
/// can be checked without Nix: plain paths, `path:` and `git+file:`.
pub fn local_dir(reference: &str) -> Option<PathBuf> {
    let (head, _) = split_query(reference);
    if is_plain_path(head) {
        return Some(PathBuf::from(head));
    }
    if let Some(p) = head.strip_prefix("path:") {
        return Some(PathBuf::from(p));
    }
    head.strip_prefix("git+file://").or_else(|| head.strip_prefix("git+file:")).map(PathBuf::from)
}

/// Checks that a local reference exists and holds a flake. The `dir=`
/// query parameter (a flake in a subdirectory) is honoured.
fn check_local(role: &'static str, reference: &str) -> Result<(), ComposeError> {
    let Some(dir) = local_dir(reference) else {
        return Ok(());
    };
    let not_found = |detail: String| ComposeError::FlakeNotFound { role, reference: reference.to_owned(), detail };
    if !dir.exists() {
        return Err(not_found(format!("{} does not exist", dir.display())));
    }
    if !dir.is_dir() {
        return Err(not_found(format!("{} is not a directory", dir.display())));
    }
    let sub = split_query(reference)
        .1
        .trim_start_matches('?')
        .split(['&', '#'])
        .find_map(|kv| kv.strip_prefix("dir="))
        .unwrap_or("");
    let flake_nix = dir.join(sub).join("flake.nix");
    if !flake_nix.is_file() {
        return Err(not_found(format!("{} has no flake.nix", dir.join(sub).display())));
    }
    Ok(())
}

/// Composes and builds, running Nix through `R`.
pub struct Composer<R> {
    runner: R,
    announce: Box<dyn Fn(&str)>,
}

impl<R: NixRunner> Composer<R> {
    /// A composer that announces nothing.
    pub fn new(runner: R) -> Self {
        Composer { runner, announce: Box::new(|_| {}) }
    }

    /// Calls `announce` with a one-line description before each step that
    /// may take a while (fetching, building), so the user knows what Nix's
    /// output that follows belongs to.
    pub fn with_announce(mut self, announce: impl Fn(&str) + 'static) -> Self {
        self.announce = Box::new(announce);
        self
    }

    /// Builds what `request` names and returns the toplevel with its
    /// provenance. Activates nothing; writes nothing outside a private
    /// temporary directory and the Nix store.
    pub fn build(&self, request: &Request) -> Result<Built, ComposeError> {
        for (role, reference) in request.given() {
            check_local(role, reference)?;
        }
        let wrapper_text = request.wrapper().render();
        let dir = tempfile::Builder::new().prefix("safe-switch-wrapper-").tempdir().map_err(|source| {
            ComposeError::Io { what: "could not create a private directory for the wrapper flake".into(), source }
        })?;
        std::fs::write(dir.path().join("flake.nix"), &wrapper_text).map_err(|source| ComposeError::Io {
            what: format!("could not write {}", dir.path().join("flake.nix").display()),
            source,
        })?;
        let wrapper_ref = wrapper_ref(dir.path());

        // Lock: fetches the inputs and writes the lock file into the
        // wrapper's own directory only. The later steps read it and may not
        // change it (--no-update-lock-file), so the build uses exactly the
        // revisions recorded in the provenance.
        let overrides = request.overrides();
        let mut args: Vec<OsString> = vec!["flake".into(), "lock".into(), wrapper_ref.clone()];
        for (name, reference) in &overrides {
            args.extend(["--override-input".into(), (*name).into(), reference.into()]);
        }
        (self.announce)(&format!("fetching {}", describe_refs(request)));
        let out = self.run(&args, StderrMode::Capture)?;
        if !out.success {
            return Err(ComposeError::Lock { what: describe_refs(request), stderr: out.stderr });
        }
        // Nix's warnings about the flakes themselves (a dirty Git tree
        // whose untracked files are left out, for one) matter to the user;
        // the ones about the wrapper's own lock file do not.
        let private = dir.path().to_string_lossy();
        for line in out.stderr.lines() {
            if crate::runner::strip_ansi(line).starts_with("warning:") && !line.contains(&*private) {
                (self.announce)(line);
            }
        }

        let out = self.run(
            &["flake".into(), "metadata".into(), "--json".into(), "--no-update-lock-file".into(), wrapper_ref.clone()],
            StderrMode::Capture,
        )?;
        if !out.success {
            return Err(ComposeError::Lock { what: describe_refs(request), stderr: out.stderr });
        }
        let mut locked = parse::locked_inputs(&out.stdout, &request.given())?;

        let info_attr = attr_ref(&wrapper_ref, "safeSwitch.info");
        let out = self
            .run(&["eval".into(), "--json".into(), "--no-update-lock-file".into(), info_attr], StderrMode::Capture)?;
        if !out.success {
            return Err(ComposeError::Eval {
                what: format!("what the flakes provide for {}", request.describe()),
                stderr: out.stderr,
            });
        }
        // The provenance is settled here, before building: it depends only
        // on the locks and on what the wrapper found.
        let mut take = |name: &str| locked.remove(name).unwrap_or_default();
        let provenance = match request {
            Request::Compose(r) => {
                let host = check_compose(r, &parse::compose_info(&out.stdout)?)?;
                Provenance::Composed {
                    base: take("base"),
                    overlay: take("overlay"),
                    platform: r.platform.name().to_owned(),
                    host,
                    module: r.module.clone(),
                    wrapper: wrapper_text,
                }
            }
            Request::Attr(r) => {
                let built = check_attr(r, &parse::attr_info(&out.stdout)?)?;
                Provenance::FlakeAttr {
                    flake: take("flake"),
                    attr: r.attr.clone(),
                    built: Some(built),
                    wrapper: wrapper_text,
                }
            }
        };

        let what = request.describe();
        (self.announce)(&format!("building {what}"));
        let toplevel_attr = attr_ref(&wrapper_ref, "safeSwitch.toplevel");
        let out = self.run(
            &["build".into(), "--no-link".into(), "--json".into(), "--no-update-lock-file".into(), toplevel_attr],
            StderrMode::Stream,
        )?;
        if !out.success {
            return Err(ComposeError::Build { what, stderr: out.stderr });
        }
        let toplevel = parse::build_out_path(&out.stdout)?;

        Ok(Built { toplevel, provenance })
    }

    fn run(&self, args: &[OsString], mode: StderrMode) -> Result<NixOutput, ComposeError> {
        let out = self.runner.run(args, mode)?;
        if !out.success && is_flakes_unsupported(&out.stderr) {
            return Err(ComposeError::FlakesUnsupported { stderr: out.stderr });
        }
        Ok(out)
    }
}

fn wrapper_ref(dir: &Path) -> OsString {
    let mut s = OsString::from("path:");
    s.push(dir.as_os_str());
    s
}

fn attr_ref(wrapper: &OsString, attr: &str) -> OsString {
    let mut s = wrapper.clone();
    s.push("#");
    s.push(attr);
    s
}

fn describe_refs(request: &Request) -> String {
    match request {
        Request::Compose(r) => {
            format!("the base flake `{}` and the overlay flake `{}`", r.base, r.overlay)
        }
        Request::Attr(r) => format!("the flake `{}`", r.flake),
    }
}

/// Turns the wrapper's answer about a composition into the chosen host or a
/// precise error.
fn check_compose(r: &ComposeRequest, info: &parse::ComposeInfo) -> Result<String, ComposeError> {
    let platform = r.platform;
    if platform == Platform::SystemManager && info.configurations.is_empty() {
        let problem = if !info.nixos_configurations.is_empty() {
            format!(
                "it has no `systemManagerModules` output, but it has nixosConfigurations ({}): \
                 if this machine runs NixOS, compose it as NixOS",
                info.nixos_configurations.join(", ")
            )
        } else if info.system_configs.is_empty() {
            "it has no `systemManagerModules` output".to_owned()
        } else {
            format!(
                "it builds systemConfigs ({}) but does not export their modules as \
                 `systemManagerModules`",
                info.system_configs.join(", ")
            )
        };
        return Err(ComposeError::SystemManagerConvention { base: r.base.clone(), problem });
    }
    let Some(host) = info.host.clone() else {
        return Err(ComposeError::MissingConfiguration {
            base: r.base.clone(),
            output: platform.base_output(),
            tried: r.hosts.clone(),
            available: info.configurations.clone(),
        });
    };
    if !info.extendable {
        return Err(match platform {
            Platform::SystemManager => ComposeError::SystemManagerConvention {
                base: r.base.clone(),
                problem: "it has no input named `system-manager`".to_owned(),
            },
            _ => ComposeError::NotExtendable { base: r.base.clone(), output: platform.base_output(), host },
        });
    }
    if !info.modules.iter().any(|m| m == &r.module) {
        return Err(ComposeError::MissingModule {
            overlay: r.overlay.clone(),
            output: platform.module_output(),
            module: r.module.clone(),
            available: info.modules.clone(),
        });
    }
    Ok(host)
}

/// Turns the wrapper's answer about an attribute into the built attribute
/// path or a precise error.
fn check_attr(r: &AttrRequest, info: &parse::AttrInfo) -> Result<String, ComposeError> {
    let Some(path) = &info.path else {
        return Err(ComposeError::MissingAttribute {
            flake: r.flake.clone(),
            tried: attr_candidates(r).iter().map(|p| p.join(".")).collect(),
        });
    };
    let path = path.join(".");
    match info.kind.as_deref() {
        Some("configuration") => Ok(format!("{path}.config.system.build.toplevel")),
        Some("derivation") => Ok(path),
        _ => Err(ComposeError::NotAConfiguration { flake: r.flake.clone(), attr: path }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    /// Answers each `nix` subcommand with a canned output and records the
    /// calls.
    struct FakeNix {
        calls: RefCell<Vec<Vec<String>>>,
        answer: Answer,
    }

    type Answer = Box<dyn Fn(&[String]) -> NixOutput>;

    impl NixRunner for FakeNix {
        fn run(&self, args: &[OsString], _: StderrMode) -> Result<NixOutput, crate::NixError> {
            let args: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
            self.calls.borrow_mut().push(args.clone());
            Ok((self.answer)(&args))
        }
    }

    const METADATA: &str = r#"{"locks":{"root":"root","nodes":{
        "root":{"inputs":{"base":"base","overlay":"overlay"}},
        "base":{"locked":{"type":"github","owner":"o","repo":"machines","rev":"abc","narHash":"sha256-b"}},
        "overlay":{"locked":{"type":"path","path":"/srv/ci","narHash":"sha256-o"}}}}}"#;

    fn ok(stdout: &str) -> NixOutput {
        NixOutput { success: true, code: Some(0), stdout: stdout.into(), stderr: String::new() }
    }

    fn fake(info: &'static str) -> FakeNix {
        FakeNix {
            calls: RefCell::new(vec![]),
            answer: Box::new(move |args| match args[0].as_str() {
                "flake" if args[1] == "lock" => NixOutput {
                    stderr: format!(
                        "warning: Git tree '/etc/nixos' is dirty\n\
                         warning: creating lock file '{}/flake.lock'\n",
                        args[2].trim_start_matches("path:")
                    ),
                    ..ok("")
                },
                "flake" => ok(METADATA),
                "eval" => ok(info),
                "build" => ok(r#"[{"drvPath":"/nix/store/d.drv","outputs":{"out":"/nix/store/t"}}]"#),
                _ => NixOutput::default(),
            }),
        }
    }

    fn request() -> Request {
        Request::Compose(ComposeRequest {
            platform: Platform::Nixos,
            base: "github:o/machines".into(),
            overlay: "github:o/project".into(),
            hosts: vec!["runner1".into(), "default".into()],
            module: "default".into(),
        })
    }

    #[test]
    fn a_composition_locks_checks_then_builds_and_records_the_locks() {
        let nix = fake(r#"{"host":"default","extendable":true,"configurations":["default"],"modules":["default"]}"#);
        let built = Composer::new(nix).build(&request()).unwrap();
        assert_eq!(built.toplevel, PathBuf::from("/nix/store/t"));
        let Provenance::Composed { base, overlay, host, .. } = &built.provenance else { panic!() };
        assert_eq!(host, "default");
        assert_eq!(base.rev.as_deref(), Some("abc"));
        assert_eq!(base.reference, "github:o/machines");
        assert_eq!(overlay.nar_hash.as_deref(), Some("sha256-o"));
    }

    #[test]
    fn warnings_about_the_flakes_reach_the_user_and_the_wrapper_s_do_not() {
        let nix = fake(r#"{"host":"default","extendable":true,"configurations":["default"],"modules":["default"]}"#);
        let said = std::rc::Rc::new(RefCell::new(Vec::<String>::new()));
        let log = said.clone();
        Composer::new(nix).with_announce(move |line| log.borrow_mut().push(line.to_owned())).build(&request()).unwrap();
        let said = said.borrow();
        assert_eq!(said[1], "warning: Git tree '/etc/nixos' is dirty", "{said:?}");
        assert!(!said.iter().any(|l| l.contains("creating lock file")), "{said:?}");
        assert!(said[0].starts_with("fetching ") && said[2].starts_with("building "), "{said:?}");
    }

    #[test]
    fn nothing_is_built_when_the_module_is_missing() {
        let nix = fake(r#"{"host":"default","extendable":true,"configurations":["default"],"modules":["other"]}"#);
        let composer = Composer::new(nix);
        let err = composer.build(&request()).unwrap_err();
        assert!(matches!(err, ComposeError::MissingModule { .. }), "{err:?}");
        let calls = composer.runner.calls.borrow();
        let subcommands: Vec<&str> = calls.iter().map(|c| c[0].as_str()).collect();
        assert_eq!(subcommands, ["flake", "flake", "eval"]);
        let lock = &calls[0];
        assert_eq!(
            &lock[3..],
            ["--override-input", "base", "github:o/machines", "--override-input", "overlay", "github:o/project"]
        );
    }

    #[test]
    fn a_configuration_without_extend_modules_is_refused_before_building() {
        let nix = fake(r#"{"host":"runner1","extendable":false,"configurations":["runner1"],"modules":["default"]}"#);
        let err = Composer::new(nix).build(&request()).unwrap_err();
        assert!(matches!(err, ComposeError::NotExtendable { .. }), "{err:?}");
    }

    #[test]
    fn a_nixos_base_composed_as_system_manager_says_so() {
        let nix = fake(
            r#"{"host":null,"extendable":true,"configurations":[],"modules":["default"],"systemConfigs":[],"nixosConfigurations":["runner1"]}"#,
        );
        let Request::Compose(mut r) = request() else { panic!() };
        r.platform = Platform::SystemManager;
        let err = Composer::new(nix).build(&Request::Compose(r)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("but it has nixosConfigurations (runner1)"), "{msg}");
    }

    #[test]
    fn flakes_being_unavailable_is_its_own_error() {
        let nix = FakeNix {
            calls: RefCell::new(vec![]),
            answer: Box::new(|_| NixOutput {
                success: false,
                code: Some(1),
                stdout: String::new(),
                stderr: "error: unrecognised flag '--extra-experimental-features'\n".into(),
            }),
        };
        let err = Composer::new(nix).build(&request()).unwrap_err();
        assert!(matches!(err, ComposeError::FlakesUnsupported { .. }), "{err:?}");
    }

    #[test]
    fn a_build_failing_for_the_host_s_nix_set_up_names_the_cause_and_the_fix() {
        let nixbld = "error: the group 'nixbld' specified in 'build-users-group' does not exist\n";
        let info = r#"{"host":"default","extendable":true,"configurations":["default"],"modules":["default"]}"#;
        let mut nix = fake(info);
        let answer = std::mem::replace(&mut nix.answer, Box::new(|_| NixOutput::default()));
        nix.answer = Box::new(move |args| {
            if args[0] == "build" {
                NixOutput { success: false, code: Some(1), stdout: String::new(), stderr: nixbld.into() }
            } else {
                answer(args)
            }
        });
        let err = Composer::new(nix).build(&request()).unwrap_err();
        assert_eq!(err.nix_setup(), Some(crate::NixSetup::BuildUsers), "{err:?}");
        let text = err.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("building the base `github:o/machines`"), "{text}");
        assert_eq!(lines[1], nixbld.trim_end(), "Nix's report comes verbatim, under the summary");
        assert!(lines[2].starts_with("note: ") && lines[2].contains("`build-users-group`"), "{text}");
        assert!(lines[3].starts_with("help: ") && lines[3].contains("`build-users-group =`"), "{text}");
        assert_eq!(lines.len(), 4, "{text}");
    }

    #[test]
    fn flake_arg_with_a_fragment_names_a_configuration() {
        let r = Request::from_flake_arg("./sys#vm", Platform::Nixos, "/etc/nixos", vec![], "x");
        assert_eq!(
            r,
            Request::Attr(AttrRequest { platform: Platform::Nixos, flake: "./sys".into(), attr: "vm".into() })
        );
        let WrapperSpec::Attr { candidates, .. } = r.wrapper() else { panic!() };
        assert_eq!(candidates, vec![vec!["vm".to_owned()], vec!["nixosConfigurations".into(), "vm".into()]]);
    }

    #[test]
    fn attr_paths_keep_quoted_names() {
        assert_eq!(
            split_attr_path(r#"nixosConfigurations."a.b".config"#),
            vec!["nixosConfigurations", "a.b", "config"]
        );
        let r = AttrRequest { platform: Platform::SystemManager, flake: ".".into(), attr: "systemConfigs.x".into() };
        assert_eq!(attr_candidates(&r), vec![vec!["systemConfigs".to_owned(), "x".into()]]);
    }

    #[test]
    fn local_references_are_recognised() {
        assert_eq!(local_dir("/etc/nixos"), Some(PathBuf::from("/etc/nixos")));
        assert_eq!(local_dir("./ci?dir=sub"), Some(PathBuf::from("./ci")));
        assert_eq!(local_dir("path:/srv/x"), Some(PathBuf::from("/srv/x")));
        assert_eq!(local_dir("git+file:///srv/x?ref=main"), Some(PathBuf::from("/srv/x")));
        assert_eq!(local_dir("github:NixOS/nixpkgs"), None);
        assert_eq!(local_dir("mybase"), None);
    }

    #[test]
    fn relative_paths_become_absolute_and_urls_do_not_change() {
        assert!(absolute_ref("./ci").starts_with('/'));
        assert!(absolute_ref("./ci?dir=x").ends_with("/ci?dir=x"));
        assert_eq!(absolute_ref("github:o/r"), "github:o/r");
        assert_eq!(absolute_ref("path:./x"), "path:./x");
    }
}
