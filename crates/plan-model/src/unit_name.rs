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

/// Expands the unit-name specifiers of `systemd.unit(5)` in a value read
/// from the unit file of `unit` (an instance such as `getty@tty1.service`,
/// or a plain unit): `%n` full name, `%N` name without the type suffix,
/// `%p` prefix, `%i` instance, `%j` the prefix's last `-` component, their
/// unescaped forms `%P`, `%I`, `%J`, and `%%`.
///
/// Returns `None` when the value holds any other specifier (host, user,
/// paths: not knowable offline), a lone `%` at the end, or an instance
/// specifier in a template, which systemd never loads as such.
pub fn expand_specifiers(value: &str, unit: &str) -> Option<String> {
    if !value.contains('%') {
        return Some(value.to_owned());
    }
    let name_without_type = stem(unit);
    let (prefix, instance) = match name_without_type.split_once('@') {
        Some((prefix, instance)) => (prefix, Some(instance).filter(|i| !i.is_empty())),
        None => (name_without_type, None),
    };
    let last = prefix.rsplit_once('-').map_or(prefix, |(_, last)| last);
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            '%' => out.push('%'),
            'n' => out.push_str(unit),
            'N' => out.push_str(name_without_type),
            'p' => out.push_str(prefix),
            'P' => out.push_str(&unescape(prefix)),
            'i' => out.push_str(instance?),
            'I' => out.push_str(&unescape(instance?)),
            'j' => out.push_str(last),
            'J' => out.push_str(&unescape(last)),
            _ => return None,
        }
    }
    Some(out)
}

/// Escapes a path into a unit-name prefix like `systemd-escape --path`:
/// `/` becomes `-`, redundant slashes are dropped, and bytes outside
/// `[A-Za-z0-9:_.]` (and a leading `.`) become `\xNN`.
pub fn escape_path(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    if parts.is_empty() {
        return "-".to_owned();
    }
    let joined = parts.join("/");
    let mut out = String::with_capacity(joined.len());
    for (i, byte) in joined.bytes().enumerate() {
        match byte {
            b'/' => out.push('-'),
            b'.' if i == 0 => out.push_str("\\x2e"),
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b':' | b'_' | b'.' => out.push(char::from(byte)),
            _ => out.push_str(&format!("\\x{byte:02x}")),
        }
    }
    out
}

/// Undoes `systemd-escape`: `-` is `/`, `\xNN` is the byte NN. Invalid
/// escapes are kept as they are.
pub fn unescape(escaped: &str) -> String {
    let bytes = escaped.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'-' => out.push(b'/'),
            b'\\' if bytes.get(i + 1) == Some(&b'x') => {
                let hex = bytes.get(i + 2..i + 4).and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 4;
                        continue;
                    }
                    None => out.push(b'\\'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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

    #[test]
    fn escapes_like_systemd_escape_and_back() {
        assert_eq!(escape_path("/"), "-");
        assert_eq!(escape_path("/nix"), "nix");
        assert_eq!(escape_path("/var//lib/"), "var-lib");
        assert_eq!(escape_path("/mnt/my disk"), "mnt-my\\x20disk");
        assert_eq!(escape_path("/srv/a-b"), "srv-a\\x2db");
        assert_eq!(escape_path("/.hidden/x"), "\\x2ehidden-x");
        assert_eq!(unescape(&escape_path("/mnt/my disk/a-b")), "mnt/my disk/a-b");
    }

    #[test]
    fn specifiers_expand_for_instances() {
        let x = |v: &str, u: &str| expand_specifiers(v, u);
        assert_eq!(x("dev-%i.device", "serial-getty@ttyS0.service").as_deref(), Some("dev-ttyS0.device"));
        assert_eq!(x("%p-helper.service", "vpn-client@office.service").as_deref(), Some("vpn-client-helper.service"));
        assert_eq!(x("%n", "a@b.service").as_deref(), Some("a@b.service"));
        assert_eq!(x("%N.socket", "a@b.service").as_deref(), Some("a@b.socket"));
        assert_eq!(x("%j.target", "foo-bar@x.service").as_deref(), Some("bar.target"));
        assert_eq!(x("%I", "mount@mnt-data\\x2dold.service").as_deref(), Some("mnt/data-old"));
        assert_eq!(x("100%%", "a.service").as_deref(), Some("100%"));
        assert_eq!(x("plain.service", "a.service").as_deref(), Some("plain.service"));
        // Unknowable offline, a template's instance, a dangling percent.
        assert_eq!(x("%H.service", "a@b.service"), None);
        assert_eq!(x("x-%i.service", "a@.service"), None);
        assert_eq!(x("x-%i.service", "a.service"), None);
        assert_eq!(x("x%", "a@b.service"), None);
    }
}
