//! The units that hold the caller, from its cgroup path.
//!
//! systemd places every process in the cgroup of its unit, under the cgroups
//! of the unit's slices: `/system.slice/gitlab-runner.service`, or
//! `/user.slice/user-1000.slice/session-3.scope`. Reading that path tells
//! which units safe-switch must not stop or restart under its own feet.
//! The text comes from `/proc/self/cgroup`; this module only parses it.

/// Returns the cgroup path of the caller from the text of
/// `/proc/self/cgroup`: the unified hierarchy's line (`0::/path`), or on a
/// legacy hierarchy the `name=systemd` line. `None` when neither is there.
pub fn cgroup_path(proc_self_cgroup: &str) -> Option<&str> {
    let mut legacy = None;
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            return Some(path.trim());
        }
        if controllers == "name=systemd" {
            legacy = Some(path.trim());
        }
    }
    legacy
}

/// Returns the system manager's units that contain the cgroup `path`,
/// innermost first: the service or scope, then its slices from the inside
/// out. Components below the first service or scope are the unit's own
/// sub-cgroups (or, under `user@UID.service`, the user manager's units) and
/// are not the system manager's units.
///
/// A process anywhere under `user-UID.slice` also depends on the user's
/// manager, `user@UID.service`, which runs the user's own services and
/// holds the session's runtime; it is added after the innermost unit.
pub fn caller_units(path: &str) -> Vec<String> {
    let mut slices = Vec::new();
    let mut leaf = None;
    for component in path.split('/').filter(|c| !c.is_empty()) {
        if component.ends_with(".slice") {
            slices.push(component.to_owned());
        } else if component.ends_with(".service") || component.ends_with(".scope") {
            leaf = Some(component.to_owned());
            break;
        } else {
            // An unknown component (a container's delegated cgroup, say):
            // whatever is below it is not a unit of this manager.
            break;
        }
    }
    let mut units = Vec::new();
    units.extend(leaf);
    let user_manager = slices.iter().find_map(|s| {
        let uid = s.strip_prefix("user-")?.strip_suffix(".slice")?;
        (!uid.is_empty() && uid.bytes().all(|b| b.is_ascii_digit())).then(|| format!("user@{uid}.service"))
    });
    if let Some(manager) = user_manager.filter(|m| !units.contains(m)) {
        units.push(manager);
    }
    units.extend(slices.into_iter().rev());
    units
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unified_and_legacy_lines() {
        assert_eq!(
            cgroup_path("0::/system.slice/gitlab-runner.service\n"),
            Some("/system.slice/gitlab-runner.service")
        );
        let legacy = "12:pids:/system.slice/x.service\n1:name=systemd:/system.slice/x.service\n";
        assert_eq!(cgroup_path(legacy), Some("/system.slice/x.service"));
        assert_eq!(cgroup_path("garbage"), None);
        assert_eq!(cgroup_path(""), None);
    }

    #[test]
    fn service_in_system_slice() {
        assert_eq!(caller_units("/system.slice/gitlab-runner.service"), ["gitlab-runner.service", "system.slice"]);
        assert_eq!(caller_units("/system.slice/docker-abc.scope/init.scope"), ["docker-abc.scope", "system.slice"]);
    }

    #[test]
    fn login_session() {
        assert_eq!(
            caller_units("/user.slice/user-1000.slice/session-3.scope"),
            ["session-3.scope", "user@1000.service", "user-1000.slice", "user.slice"]
        );
    }

    #[test]
    fn inside_the_user_manager() {
        assert_eq!(
            caller_units("/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service"),
            ["user@1000.service", "user-1000.slice", "user.slice"]
        );
    }

    #[test]
    fn root_and_nested_slices() {
        assert!(caller_units("/").is_empty());
        assert_eq!(
            caller_units("/system.slice/system-getty.slice/getty@tty1.service"),
            ["getty@tty1.service", "system-getty.slice", "system.slice"]
        );
        assert_eq!(caller_units("/machine.slice/weird/x.service"), ["machine.slice"]);
    }
}
