//! What a test needs from the machine, and the one way to skip or fail
//! when it is missing: [`require!`](macro@crate::require).
//!
//! A test that needs root, a test bed or a Nix that builds starts with
//! `testbed::require!(bed);` (or `root`, `nix`, several at once:
//! `testbed::require!(nix, bed);`). When the machine has it, the test goes
//! on. When it does not, the test fails under `CI=true` (such tests must
//! run in CI) and elsewhere prints `SKIPPED <test>: <why>` and returns.
//! The macro names the test itself, as the test harness does
//! (`module::function`).

/// Why this process does not run as root, or `None` when it does.
pub fn root_reason() -> Option<String> {
    if rustix::process::geteuid().is_root() { None } else { Some("it must run as root".to_owned()) }
}

/// Under `CI=true`, panics: `test` must run there. Elsewhere prints
/// `SKIPPED <test>: <reason>` for the reader and for `scripts/test`,
/// which counts these lines. Tests call it through
/// [`require!`](macro@crate::require).
#[track_caller]
pub fn skip_or_fail(test: &str, reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: cannot run under CI=true: {reason}");
    }
    // Written to the process's standard error directly, not with
    // eprintln!, which the test harness captures and hides for passing
    // tests: a skip must be seen.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
}

/// The test's name as the harness prints it, from the type name of a
/// function item declared in the test's body
/// (`crate::module::test::here`): the crate and the item are cut off.
#[doc(hidden)]
pub fn test_name(type_name: &str) -> &str {
    let path = type_name.rsplit_once("::").map_or(type_name, |(path, _)| path);
    path.split_once("::").map_or(path, |(_, rest)| rest)
}

/// The name of the test this is used in, as the test harness prints it
/// (`module::function`).
#[macro_export]
macro_rules! test_name {
    () => {{
        fn here() {}
        $crate::require::test_name(::std::any::type_name_of_val(&here))
    }};
}

/// Returns from the calling test unless the machine has what it needs:
/// `bed` (root, namespaces and the programs of a test bed), `nix` (a Nix
/// that builds into this machine's store) and `root`, one or several. Under
/// `CI=true` a missing requirement fails the test; elsewhere the test
/// prints `SKIPPED <test>: <why>` and passes.
///
/// ```no_run
/// #[test]
/// fn switches_on_a_real_systemd() {
///     testbed::require!(bed);
///     // ... boot a bed and switch in it.
/// }
/// ```
#[macro_export]
macro_rules! require {
    ($($what:ident),+ $(,)?) => {
        $(
            if let Some(reason) = $crate::require!(@reason $what) {
                $crate::require::skip_or_fail($crate::test_name!(), &reason);
                return;
            }
        )+
    };
    (@reason bed) => { $crate::unsupported_reason() };
    (@reason nix) => { $crate::nix::unusable_reason() };
    (@reason root) => { $crate::require::root_reason() };
}

#[cfg(test)]
mod tests {
    use super::test_name;

    #[test]
    fn the_name_is_the_harness_s() {
        assert_eq!(test_name("it::live_switch::a_test::here"), "live_switch::a_test");
        assert_eq!(test_name("testbed::require::tests::the_name::here"), "require::tests::the_name");
        assert_eq!(crate::test_name!(), "require::tests::the_name_is_the_harness_s");
    }
}
