//! `launchctl` calls and plist file changes as values, and the pure
//! function that turns a [`LaunchdPlan`] into their ordered list.
//!
//! An executor runs the list front to back and nothing else. Spawning
//! `launchctl` is not done here: [`Operation::argv`] gives the exact command
//! line, so the sequence can be printed, reviewed and snapshotted first.
//!
//! The verbs are the modern ones (`bootout`, `bootstrap`, `enable`,
//! `kickstart`) rather than the legacy `unload` / `load -w` that
//! nix-darwin's activation script still uses: their exit codes carry
//! meaning, and a GUI domain is named directly (`gui/501`) instead of being
//! reached through `launchctl asuser` and `sudo`. `enable` before
//! `bootstrap` does what `load -w` does: it clears a persisted "disabled"
//! override, without which `bootstrap` fails with 119.

use std::fmt;

use plan_model::{Action, Rule, UnitPlan};
use serde::{Deserialize, Serialize};

use crate::error::OpsError;
use crate::job::Scope;
use crate::planner::{JobTarget, LaunchdPlan};

/// A launchd domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Domain {
    /// The `system` domain (LaunchDaemons).
    System,
    /// A user's GUI login domain, `gui/<uid>` (LaunchAgents).
    Gui(u32),
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Domain::System => f.write_str("system"),
            Domain::Gui(uid) => write!(f, "gui/{uid}"),
        }
    }
}

/// One `launchctl` call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "kebab-case")]
pub enum Launchctl {
    /// `launchctl bootout <domain>/<label>`: stop the job and forget it.
    /// The service-target form is used because it works after the plist is
    /// gone and reports a job that is not loaded as 3 (`No such process`),
    /// distinct from other failures. launchd tears the job down
    /// asynchronously; an executor waits until `launchctl print` reports
    /// 113 before bootstrapping the same label again.
    Bootout {
        /// The domain the job is loaded in.
        domain: Domain,
        /// The job's label.
        label: String,
    },
    /// `launchctl enable <domain>/<label>`: clear a persisted "disabled"
    /// override.
    Enable {
        /// The domain.
        domain: Domain,
        /// The job's label.
        label: String,
    },
    /// `launchctl disable <domain>/<label>`: persist a "disabled"
    /// override, so that the job is not loaded again at boot (Remote Login
    /// turned off).
    Disable {
        /// The domain.
        domain: Domain,
        /// The job's label.
        label: String,
    },
    /// `launchctl bootstrap <domain> <plist>`: load the job; launchd starts
    /// it at once if it has `RunAtLoad` or `KeepAlive`.
    Bootstrap {
        /// The domain to load into.
        domain: Domain,
        /// The installed plist.
        path: String,
    },
    /// `launchctl kickstart [-k] <domain>/<label>`: run the job now; with
    /// `kill`, kill the running instance first (a restart with the same
    /// definition).
    Kickstart {
        /// The domain the job is loaded in.
        domain: Domain,
        /// The job's label.
        label: String,
        /// Kill the running instance first (`-k`).
        kill: bool,
    },
}

impl Launchctl {
    /// The command line, starting with `launchctl`.
    pub fn argv(&self) -> Vec<String> {
        let mut argv = vec!["launchctl".to_owned()];
        match self {
            Launchctl::Bootout { domain, label } => {
                argv.extend(["bootout".to_owned(), format!("{domain}/{label}")]);
            }
            Launchctl::Enable { domain, label } => {
                argv.extend(["enable".to_owned(), format!("{domain}/{label}")]);
            }
            Launchctl::Disable { domain, label } => {
                argv.extend(["disable".to_owned(), format!("{domain}/{label}")]);
            }
            Launchctl::Bootstrap { domain, path } => {
                argv.extend(["bootstrap".to_owned(), domain.to_string(), path.clone()]);
            }
            Launchctl::Kickstart { domain, label, kill } => {
                argv.push("kickstart".to_owned());
                if *kill {
                    argv.push("-k".to_owned());
                }
                argv.push(format!("{domain}/{label}"));
            }
        }
        argv
    }
}

/// One step of carrying out a launchd plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Operation {
    /// A `launchctl` call.
    Launchctl(Launchctl),
    /// Install the new generation's plist as a regular file (launchd
    /// refuses symlinked or group/world-writable plists in the system
    /// domain), owned by root or, for user agents, by the user.
    InstallPlist {
        /// The plist in the new generation.
        source: String,
        /// Where it is installed.
        target: String,
        /// The owning user; `None` means `root:wheel`.
        owner: Option<String>,
    },
    /// Delete an installed plist whose job left the generation.
    RemovePlist {
        /// The installed plist.
        path: String,
    },
}

impl Operation {
    /// The equivalent command line. `launchctl` calls are run as given; an
    /// executor may carry file operations out natively, with the same
    /// effect as this command.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Operation::Launchctl(call) => call.argv(),
            Operation::InstallPlist { source, target, owner } => {
                let mut argv: Vec<String> = ["install", "-m", "0644"].map(str::to_owned).to_vec();
                match owner {
                    Some(user) => argv.extend(["-o".to_owned(), user.clone()]),
                    None => argv.extend(["-o", "root", "-g", "wheel"].map(str::to_owned)),
                }
                argv.extend([source.clone(), target.clone()]);
                argv
            }
            Operation::RemovePlist { path } => vec!["rm".to_owned(), "-f".to_owned(), path.clone()],
        }
    }
}

impl fmt::Display for Operation {
    /// Renders the command line, quoting arguments that need it for a POSIX
    /// shell.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let words: Vec<String> = self.argv().iter().map(|w| shell_quote(w)).collect();
        f.write_str(&words.join(" "))
    }
}

fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:@%+=,".contains(c));
    if plain { word.to_owned() } else { format!("'{}'", word.replace('\'', "'\\''")) }
}

/// Turns a plan into the ordered operations that carry it out.
///
/// The order is: boot out every job that stops or is reloaded (agents
/// before daemons, so nothing a daemon serves disappears under a running
/// agent), delete the plists of removed jobs, install new plists, then
/// enable and bootstrap (daemons before agents), and finally kickstart jobs
/// restarted without a plist change. Grouping the boot-outs first also gives
/// launchd time to finish tearing jobs down before they are bootstrapped
/// again. Deferred units get no operation at all: their installed plist
/// stays as it is. Remote Login turned off is a boot-out followed by
/// `disable`, as nix-darwin does it.
pub fn operations(plan: &LaunchdPlan) -> Result<Vec<Operation>, OpsError> {
    if plan.plan.protection.refused {
        return Err(OpsError::Refused { labels: refused_labels(plan) });
    }
    let mut bootouts = Vec::new();
    let mut removes = Vec::new();
    let mut installs = Vec::new();
    let mut bootstraps = Vec::new();
    let mut kickstarts = Vec::new();

    for unit in &plan.plan.units {
        if unit.deferral.is_some() {
            continue;
        }
        let target = plan.jobs.get(&unit.unit).ok_or_else(|| OpsError::UnknownUnit { unit: unit.unit.clone() })?;
        let install = installs_new_plist(unit, target);
        let reload = unit.actions.contains(&Action::Restart) && install.is_some();
        let has = |a| unit.actions.contains(&a);
        let needs_domain = has(Action::Stop) || has(Action::Start) || has(Action::Restart);
        let domain = match target.domain {
            Some(domain) => Some(domain),
            None if needs_domain => {
                return Err(OpsError::NoDomain { unit: unit.unit.clone() });
            }
            None => None,
        };
        let order = scope_order(target.scope);

        if let Some(domain) = domain
            && (has(Action::Stop) || reload)
        {
            let label = target.loaded_label.clone().unwrap_or_else(|| target.label.clone());
            bootouts.push((
                std::cmp::Reverse(order),
                Operation::Launchctl(Launchctl::Bootout { domain, label: label.clone() }),
            ));
            if unit.reasons.iter().any(|r| r.rule == Rule::RemoteLoginOff) {
                bootouts.push((std::cmp::Reverse(order), Operation::Launchctl(Launchctl::Disable { domain, label })));
            }
        }
        if unit.reasons.iter().any(|r| r.rule == Rule::PlistRemoved)
            && let Some(path) = &target.installed
        {
            removes.push(Operation::RemovePlist { path: path.clone() });
        }
        if let Some(op) = install {
            installs.push((order, op));
        }
        if let (Some(domain), Some(path)) = (domain, &target.installed) {
            if has(Action::Start) || reload {
                let label = target.label.clone();
                bootstraps.push((order, Operation::Launchctl(Launchctl::Enable { domain, label })));
                bootstraps.push((order, Operation::Launchctl(Launchctl::Bootstrap { domain, path: path.clone() })));
            }
            if has(Action::Restart) && !reload {
                let label = target.label.clone();
                kickstarts.push(Operation::Launchctl(Launchctl::Kickstart { domain, label, kill: true }));
            }
        }
    }

    // Stable sorts keep the plan's unit order (by name) within each scope.
    bootouts.sort_by_key(|(order, _)| *order);
    installs.sort_by_key(|(order, _)| *order);
    bootstraps.sort_by_key(|(order, _)| *order);
    let mut ops = Vec::new();
    ops.extend(bootouts.into_iter().map(|(_, op)| op));
    ops.extend(removes);
    ops.extend(installs.into_iter().map(|(_, op)| op));
    ops.extend(bootstraps.into_iter().map(|(_, op)| op));
    ops.extend(kickstarts);
    Ok(ops)
}

/// Returns the install operation when the unit's new plist must be put in
/// place: it was added, changed or reformatted, and the unit was not
/// deferred.
fn installs_new_plist(unit: &UnitPlan, target: &JobTarget) -> Option<Operation> {
    let new_plist =
        unit.reasons.iter().any(|r| matches!(r.rule, Rule::PlistAdded | Rule::PlistChanged | Rule::PlistReformatted));
    if !new_plist {
        return None;
    }
    Some(Operation::InstallPlist {
        source: target.source.clone()?,
        target: target.installed.clone()?,
        owner: target.owner.clone(),
    })
}

fn scope_order(scope: Scope) -> usize {
    Scope::ALL.iter().position(|s| *s == scope).unwrap_or(Scope::ALL.len())
}

fn refused_labels(plan: &LaunchdPlan) -> Vec<String> {
    let mut labels: Vec<String> = plan.plan.protection.refusals.iter().map(|r| r.touch.touches.clone()).collect();
    labels.sort();
    labels.dedup();
    labels
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail by panicking")]
mod tests {
    use super::*;

    #[test]
    fn argv_forms() {
        let gui = Domain::Gui(501);
        let op = Launchctl::Kickstart { domain: gui, label: "org.nixos.x".into(), kill: true };
        assert_eq!(op.argv(), ["launchctl", "kickstart", "-k", "gui/501/org.nixos.x"]);
        let op = Launchctl::Bootstrap { domain: Domain::System, path: "/Library/LaunchDaemons/a.plist".into() };
        assert_eq!(op.argv(), ["launchctl", "bootstrap", "system", "/Library/LaunchDaemons/a.plist"]);
        let op =
            Operation::InstallPlist { source: "/s".into(), target: "/Users/a b/x".into(), owner: Some("a".into()) };
        assert_eq!(op.to_string(), "install -m 0644 -o a /s '/Users/a b/x'");
    }
}
