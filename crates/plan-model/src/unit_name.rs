//! Helpers for systemd unit names: suffixes, templates and instances.
//!
//! These follow systemd's own naming rules (`systemd.unit(5)`): a unit name
//! is `prefix[@instance].type`, and a template is the same with an empty
//! instance (`getty@.service`).

/// Returns the unit type, the part after the last dot (`service`, `socket`).
pub fn unit_type(name: &str) -> Option<&str> {
    let (_, ty) = name.rsplit_once('.')?;
    (!ty.is_empty()).then_some(ty)
}

/// Returns the name without its type suffix (`sshd.service` → `sshd`).
pub fn stem(name: &str) -> &str {
    name.rsplit_once('.').map_or(name, |(stem, _)| stem)
}

/// Splits an instance name into `(template, instance)`:
/// `sshd@1-2.service` → `("sshd@.service", "1-2")`.
///
/// Returns `None` for names that are not instances (no `@`, or a template
/// with an empty instance).
pub fn split_instance(name: &str) -> Option<(String, &str)> {
    let (prefix, rest) = name.split_once('@')?;
    let (instance, ty) = rest.rsplit_once('.')?;
    if instance.is_empty() || prefix.is_empty() || ty.is_empty() {
        return None;
    }
    Some((format!("{prefix}@.{ty}"), instance))
}

/// Tells whether `name` is a template (`foo@.service`).
pub fn is_template(name: &str) -> bool {
    name.split_once('@').is_some_and(|(prefix, rest)| !prefix.is_empty() && rest.starts_with('.'))
}

/// Checks a unit name the way a user may type it on the command line or in a
/// file: a known type suffix and no path separators or control characters.
pub fn is_valid(name: &str) -> bool {
    const TYPES: &[&str] =
        &["service", "socket", "target", "device", "mount", "automount", "swap", "timer", "path", "slice", "scope"];
    !name.is_empty()
        && name.len() <= 256
        && !name.contains('/')
        && !name.chars().any(|c| c.is_control() || c.is_whitespace())
        && unit_type(name).is_some_and(|ty| TYPES.contains(&ty))
        && !stem(name).is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_and_templates() {
        assert_eq!(split_instance("sshd@1-2.service"), Some(("sshd@.service".to_owned(), "1-2")));
        assert_eq!(split_instance("sshd@.service"), None);
        assert_eq!(split_instance("sshd.service"), None);
        assert!(is_template("getty@.service"));
        assert!(!is_template("getty@tty1.service"));
        assert_eq!(unit_type("a.b.mount"), Some("mount"));
        assert_eq!(stem("a.b.mount"), "a.b");
        assert!(is_valid("-.mount"));
        assert!(!is_valid("../x.service"));
        assert!(!is_valid("noext"));
    }
}
