//! The closure diff: pure cases over values (golden text and JSON), two
//! generated generations in a real database, and a pair of closures built
//! by Nix into the machine's own store.

use std::path::Path;
use std::process::Command;

use closure_diff::{Closure, Direction, Options, diff, diff_store_paths};
use testbed::store::{TempStore, generations};

use crate::StoreOptions as _;

fn p(hash: char, name: &str) -> String {
    format!("/nix/store/{}-{name}", hash.to_string().repeat(32))
}

/// Two generations of a small system with every kind of change.
fn sample() -> (Closure, Closure) {
    const MIB: u64 = 1024 * 1024;
    let old = Closure::from_pairs(
        p('a', "nixos-system-host-24.05.20240101.abcdef0"),
        [
            (p('a', "nixos-system-host-24.05.20240101.abcdef0"), 20_000),
            (p('b', "firefox-122.0"), 250 * MIB),
            (p('c', "python3-3.11.7"), 100 * MIB),
            (p('d', "openssl-3.0.13"), 6 * MIB),
            (p('f', "openssl-3.0.13-bin"), MIB),
            (p('g', "nano-7.2"), 3 * MIB),
            (p('h', "foo-2.0"), 1000),
            (p('i', "bar-2.1-abcdef0"), 2000),
            (p('j', "etc"), 50_000),
            (p('k', "glibc-2.38-44"), 30 * MIB),
            (p('l', "zoxide-unstable-2024-01-01"), 2 * MIB),
        ],
    );
    let new = Closure::from_pairs(
        p('m', "nixos-system-host-24.05.20240301.1234abc"),
        [
            (p('m', "nixos-system-host-24.05.20240301.1234abc"), 20_500),
            (p('n', "firefox-123.0"), 252 * MIB),
            (p('c', "python3-3.11.7"), 100 * MIB),
            (p('p', "python3-3.12.1"), 110 * MIB),
            (p('q', "openssl-3.0.14"), 6 * MIB),
            (p('r', "openssl-3.0.14-bin"), MIB + 4096),
            (p('s', "ripgrep-14.1.0"), 4 * MIB),
            (p('v', "foo-1.9"), 900),
            (p('w', "bar-2.1-1234abc"), 2100),
            (p('x', "etc"), 51_000),
            (p('k', "glibc-2.38-44"), 30 * MIB),
            (p('y', "zoxide-0-unstable-2024-03-01"), 2 * MIB),
        ],
    );
    (old, new)
}

#[test]
fn every_kind_of_change() {
    let (old, new) = sample();
    let d = diff(&old, &new);
    let dir = |name: &str| d.changed.iter().find(|c| c.name == name).map(|c| c.direction);
    assert_eq!(dir("firefox"), Some(Direction::Upgrade));
    assert_eq!(dir("openssl"), Some(Direction::Upgrade));
    assert_eq!(dir("foo"), Some(Direction::Downgrade));
    assert_eq!(dir("bar"), Some(Direction::Unordered));
    assert_eq!(dir("python3"), Some(Direction::Mixed));
    assert_eq!(dir("zoxide"), Some(Direction::Upgrade));
    assert_eq!(dir("nixos-system-host"), Some(Direction::Upgrade));
    assert_eq!(dir("glibc"), None);
    assert_eq!(d.added.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(), ["ripgrep"]);
    assert_eq!(d.removed.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(), ["nano"]);
    assert_eq!(d.rebuilt.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(), ["etc"]);
    assert_eq!((d.old.paths, d.new.paths, d.paths_added, d.paths_removed), (11, 12, 10, 9));
    let openssl = d.changed.iter().find(|c| c.name == "openssl").unwrap();
    assert_eq!(openssl.size_delta, 4096);
    assert_eq!(d.size_delta, i64::try_from(new.nar_size()).unwrap() - i64::try_from(old.nar_size()).unwrap());
    insta::assert_snapshot!("text", plan_report::packages::text(&d));
    insta::assert_snapshot!("summary", plan_report::packages::summary(&d));
    insta::assert_json_snapshot!("json", d);
}

#[test]
fn identical_closures() {
    let (old, _) = sample();
    let d = diff(&old, &old);
    assert!(d.is_empty());
    assert!(d.changed.is_empty() && d.added.is_empty() && d.removed.is_empty() && d.rebuilt.is_empty());
    assert_eq!(d.size_delta, 0);
    insta::assert_snapshot!(plan_report::packages::text(&d));
}

#[test]
fn generated_generations_in_a_real_database() {
    testbed::require!(nix);
    let g = generations(11, 400, 40);
    let store = TempStore::new();
    store.register(&g.entries);
    let d = diff_store_paths(Path::new(&g.old), Path::new(&g.new), &store.options()).unwrap();
    assert_eq!(d.old.source, closure_diff::Source::Database);
    assert_eq!((d.old.paths, d.new.paths), (400, 400));
    assert_eq!((d.paths_added, d.paths_removed), (40, 40));
    // Of 40 changed paths (k = 0..40, by k % 20): 4 renamed, 6 rebuilt,
    // 2 downgraded, 28 upgraded.
    assert_eq!((d.added.len(), d.removed.len(), d.rebuilt.len()), (4, 4, 6));
    assert_eq!(d.count(Direction::Downgrade), 2);
    assert_eq!(d.count(Direction::Upgrade), 28);
    // Every changed path is 100 bytes larger (renamed ones included).
    assert_eq!(d.size_delta, 40 * 100);

    // The recursive query and the fallback see exactly the same diff.
    for options in [
        Options { scan_limit: 0, ..store.options() },
        Options { source: closure_diff::SourcePolicy::NixOnly, ..store.options() },
    ] {
        let other = diff_store_paths(Path::new(&g.old), Path::new(&g.new), &options).unwrap();
        assert_eq!(other.changed, d.changed);
        assert_eq!(other.added, d.added);
        assert_eq!(other.removed, d.removed);
        assert_eq!(other.rebuilt, d.rebuilt);
        assert_eq!(other.size_delta, d.size_delta);
        assert_eq!((other.paths_added, other.paths_removed), (d.paths_added, d.paths_removed));
    }
}

/// Builds two generations of small derivations (with `/bin/sh` as
/// builder) into the machine's store, then diffs them with the default
/// options: `/nix/store` and `/nix/var/nix/db/db.sqlite`.
#[test]
fn closures_built_by_nix_in_the_system_store() {
    testbed::require!(nix);
    let dir = tempfile::tempdir().unwrap();
    // A nonce keeps this run's store paths apart from earlier runs'.
    let nonce = format!("{:?}", std::time::SystemTime::now());
    let expr = format!(
        r#"
let
  mk = name: deps: derivation {{
    inherit name deps;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    nonce = "{nonce}";
    args = [ "-c" "echo $name > $out; for d in $deps; do echo $d >> $out; done" ];
  }};
  libfoo1 = mk "libfoo-1.0" [];
  libfoo2 = mk "libfoo-1.1" [];
  tool = mk "tool-0.5" [];
  extra = mk "extra-3" [];
in {{
  old = mk "app-2.3" [ libfoo1 tool ];
  new = mk "app-2.4" [ libfoo2 extra ];
}}"#
    );
    let file = dir.path().join("gens.nix");
    std::fs::write(&file, expr).unwrap();
    let build = |attr: &str| {
        let link = dir.path().join(attr);
        let out = testbed::nix::command("nix-build").arg(&file).args(["-A", attr, "-o"]).arg(&link).output().unwrap();
        assert!(out.status.success(), "nix-build: {}", String::from_utf8_lossy(&out.stderr));
        link
    };
    let old = build("old");
    let new = build("new");
    // Through the `result`-style links, as a user would pass them.
    let d = diff_store_paths(&old, &new, &Options::default()).unwrap();
    assert_eq!(d.old.source, closure_diff::Source::Database);
    let names = |v: &[closure_diff::Package]| v.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&d.added), ["extra"]);
    assert_eq!(names(&d.removed), ["tool"]);
    let changed: Vec<(&str, &[String], &[String], Direction)> =
        d.changed.iter().map(|c| (c.name.as_str(), &c.old_versions[..], &c.new_versions[..], c.direction)).collect();
    assert_eq!(
        changed,
        [
            ("app", &["2.3".to_owned()][..], &["2.4".to_owned()][..], Direction::Upgrade),
            ("libfoo", &["1.0".to_owned()][..], &["1.1".to_owned()][..], Direction::Upgrade),
        ]
    );
    // The sizes are the NAR sizes Nix recorded.
    let nar_size = |path: &Path| {
        let out = Command::new("nix-store").args(["--query", "--size"]).arg(path).output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().parse::<u64>().unwrap()
    };
    let app_new = d.changed.iter().find(|c| c.name == "app").unwrap();
    assert_eq!(app_new.new_size, nar_size(&new));

    // The fallback reads the same store through `nix path-info`.
    let options = Options { source: closure_diff::SourcePolicy::NixOnly, ..Options::default() };
    let via_nix = diff_store_paths(&old, &new, &options).unwrap();
    assert_eq!(via_nix.changed, d.changed);
    assert_eq!(via_nix.added, d.added);
    assert_eq!(via_nix.removed, d.removed);
}
