//! nix-darwin's `activate` without its launchd steps, in two parts: a pure
//! function of the script's text.
//!
//! nix-darwin inlines every activation snippet into one script, in a fixed
//! order (`… etc, defaults, userDefaults, launchd, userLaunchd,
//! nix-daemon, time, …, postActivation`), and ends it by pointing
//! `/run/current-system` at the generation. The section comments survive
//! into the script, and they are the markers [`cut`] looks for:
//!
//! | section | marker (a line of its own) | what is taken out |
//! |---|---|---|
//! | launchd | `# Set up launchd services in /Library/LaunchAgents and /Library/LaunchDaemons`, then `echo "setting up launchd services..."` | everything up to the nix-daemon section, the userLaunchd section with it |
//! | userLaunchd | `# Set up user launchd services in ~/Library/LaunchAgents` or `echo "setting up user launchd services..."` (optional) | (with the launchd section) |
//! | openssh (`services.openssh.enable`, appended to the launchd section) | `if [[ "$(systemsetup -getremotelogin …` up to its `fi` | the block, wherever it is; what it does is a [`RemoteLogin`], which the plan carries out or defers |
//! | nix-daemon (managed Nix) | ``# Follow up on the `/etc/nix/nix.custom.conf` check.`` | the `launchctl kill HUP` block and the `launchctl kickstart` wait loop; the `nix.custom.conf` move stays |
//! | nix-daemon (`nix.enable = false`) | `# Restore unmanaged Nix daemon if present` | the block that copies the unmanaged daemon's plist back and loads it |
//! | the end | `# Make this configuration the current configuration.` | the rest of the script: `/run/current-system` and its GC root are set once the launchd part is done |
//!
//! Each marker must appear exactly once and in this order; anything else
//! (an older or newer nix-darwin, a hand-written script) is a
//! [`MarkerError`], and nothing is run.
//!
//! What remains is run in nix-darwin's order around the plan's launchd
//! operations: [`Cut::before`], the script up to its launchd section, runs
//! first; [`Cut::after`], the script's header (up to `cd /` and the root
//! check) followed by what comes after the launchd sections (the rest of
//! the nix-daemon section, `time`, `networking`, …, `homebrew`,
//! `postActivation`), runs once the operations are done. The two parts are
//! two shells: a variable set before the launchd section is not seen
//! after it.

use launchd_plan::RemoteLogin;
use thiserror::Error;

/// The launchd section's first line.
pub const LAUNCHD_MARKER: &str = "# Set up launchd services in /Library/LaunchAgents and /Library/LaunchDaemons";
/// The launchd section's second line (its start).
const LAUNCHD_ECHO: &str = "echo \"setting up launchd services...\"";
/// The userLaunchd section's first line, in the versions that have it.
const USER_MARKERS: [&str; 2] =
    ["# Set up user launchd services in ~/Library/LaunchAgents", "echo \"setting up user launchd services...\""];
/// The nix-daemon section's first line, with a managed Nix.
pub const NIX_DAEMON_MARKER: &str = "# Follow up on the `/etc/nix/nix.custom.conf` check.";
/// The nix-daemon section's first line, with `nix.enable = false`.
pub const NIX_UNMANAGED_MARKER: &str = "# Restore unmanaged Nix daemon if present";
/// The first line of the script's end, which sets `/run/current-system`.
pub const TAIL_MARKER: &str = "# Make this configuration the current configuration.";

/// Which nix-daemon section the script has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NixDaemon {
    /// A managed Nix: the daemon gets SIGHUP when `nix.conf` changed.
    Managed,
    /// `nix.enable = false`: the script restores an unmanaged daemon's
    /// plist when the old generation managed it.
    Unmanaged,
}

/// The first line of the header's end, `cd /`.
const HEADER_END: &str = "cd /";
/// The header's root check, in the versions that have it.
const ROOT_CHECK: &str = "if [[ $(id -u) -ne 0 ]]";
/// The first line of the openssh block (`services.openssh.enable`).
const REMOTE_LOGIN_OPENER: &str = "if [[ \"$(systemsetup -getremotelogin";
/// What the openssh block runs when `services.openssh.enable = true`.
const REMOTE_LOGIN_ON: [&str; 2] =
    ["launchctl enable system/com.openssh.sshd", "launchctl bootstrap system /System/Library/LaunchDaemons/ssh.plist"];
/// What it runs when `services.openssh.enable = false`.
const REMOTE_LOGIN_OFF: [&str; 2] =
    ["launchctl bootout system/com.openssh.sshd", "launchctl disable system/com.openssh.sshd"];

/// The activation script with its launchd steps taken out, in two parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cut {
    /// The script up to its launchd section, run before the plan's
    /// launchd operations.
    pub before: String,
    /// The script's header and what follows its launchd sections (the
    /// nix-daemon section without its `launchctl` calls, then `time` …
    /// `postActivation`), run after the plan's launchd operations.
    pub after: String,
    /// The nix-daemon section found.
    pub nix_daemon: NixDaemon,
    /// The users the launchd sections act as (`sudo --user=NAME`): the
    /// primary user, when the generation has agents.
    pub users: Vec<String>,
    /// What the openssh block does to Remote Login, taken out of the
    /// script to be planned with the launchd jobs; `None` when the script
    /// has no such block (`services.openssh.enable = null`).
    pub remote_login: Option<RemoteLogin>,
    /// What was taken out, as `(first line, last line)`, 1-based, for the
    /// progress messages.
    pub removed: Vec<(usize, usize)>,
}

/// The script does not have the layout [`cut`] knows.
#[derive(Debug, Error, PartialEq, Eq)]
#[error(
    "the activation script does not have the launchd sections of the nix-darwin versions safe-switch knows ({what}); refusing to run it, nothing was changed"
)]
pub struct MarkerError {
    /// What was not as expected.
    pub what: String,
}

fn missing(what: impl Into<String>) -> MarkerError {
    MarkerError { what: what.into() }
}

/// The one line whose trimmed text is one of `markers`; an error when
/// there is none or more than one.
fn one(lines: &[&str], markers: &[&str], name: &str) -> Result<usize, MarkerError> {
    let found: Vec<usize> =
        lines.iter().enumerate().filter(|(_, l)| markers.contains(&l.trim())).map(|(i, _)| i).collect();
    match found.as_slice() {
        [i] => Ok(*i),
        [] => Err(missing(format!("no {name} marker {:?}", markers[0]))),
        _ => Err(missing(format!("the {name} marker {:?} appears {} times", markers[0], found.len()))),
    }
}

/// The first line at or after `from` and before `to` that starts (trimmed)
/// with `prefix`.
fn find(lines: &[&str], from: usize, to: usize, prefix: &str) -> Option<usize> {
    (from..to).find(|&i| lines[i].trim_start().starts_with(prefix))
}

/// The block from the line starting with `opener` to the first following
/// line that is `closer`, which must contain a line starting with `needs`.
fn block(
    lines: &[&str],
    from: usize,
    to: usize,
    opener: &str,
    closer: &str,
    needs: &str,
) -> Result<(usize, usize), MarkerError> {
    let start = find(lines, from, to, opener).ok_or_else(|| missing(format!("no line starting {opener:?}")))?;
    let end = (start + 1..to)
        .find(|&i| lines[i].trim() == closer)
        .ok_or_else(|| missing(format!("no {closer:?} after {opener:?}")))?;
    if find(lines, start, end, needs).is_none() {
        return Err(missing(format!("no {needs:?} between {opener:?} and {closer:?}")));
    }
    Ok((start, end))
}

/// Takes the launchd steps and the final `/run/current-system` update out
/// of an activation script (see the module docs).
pub fn cut(text: &str) -> Result<Cut, MarkerError> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let launchd = one(&lines, &[LAUNCHD_MARKER], "launchd")?;
    if !lines.get(launchd + 1).is_some_and(|l| l.trim().starts_with(LAUNCHD_ECHO)) {
        return Err(missing(format!("the launchd marker is not followed by {LAUNCHD_ECHO:?}")));
    }
    let daemon = one(&lines, &[NIX_DAEMON_MARKER, NIX_UNMANAGED_MARKER], "nix-daemon")?;
    let tail = one(&lines, &[TAIL_MARKER], "end")?;
    if !(launchd < daemon && daemon < tail) {
        return Err(missing("the launchd, nix-daemon and end markers are not in this order"));
    }
    for (i, line) in lines.iter().enumerate() {
        if USER_MARKERS.contains(&line.trim()) && !(launchd < i && i < daemon) {
            return Err(missing(format!(
                "the userLaunchd marker on line {} is not between launchd and nix-daemon",
                i + 1
            )));
        }
    }
    let tail_text: String = lines[tail..].concat();
    if !tail_text.contains("/run/current-system") {
        return Err(missing("the end of the script does not set /run/current-system"));
    }

    let mut removed = vec![(launchd, daemon - 1)];
    let nix_daemon = if lines[daemon].trim() == NIX_DAEMON_MARKER {
        removed.push(block(
            &lines,
            daemon,
            tail,
            "if ! diff /etc/nix/nix.conf /run/current-system/etc/nix/nix.conf",
            "fi",
            "launchctl kill HUP system/org.nixos.nix-daemon",
        )?);
        removed.push(block(
            &lines,
            daemon,
            tail,
            "while ! nix-store --store daemon",
            "done",
            "launchctl kickstart system/org.nixos.nix-daemon",
        )?);
        NixDaemon::Managed
    } else {
        let (_, end) = block(
            &lines,
            daemon,
            tail,
            "if [[",
            "fi",
            "launchctl load -w /Library/LaunchDaemons/org.nixos.nix-daemon.plist",
        )?;
        removed.push((daemon, end));
        NixDaemon::Unmanaged
    };
    removed.push((tail, lines.len() - 1));
    let remote_login = remote_login_blocks(&lines, &mut removed)?;
    let header = header_end(&lines, launchd)?;

    let mut users = Vec::new();
    for &line in &lines[launchd..daemon] {
        for (_, rest) in line.match_indices("sudo --user=").map(|(at, m)| (at, &line[at + m.len()..])) {
            let name = rest.split_whitespace().next().unwrap_or("").trim_matches('\'');
            if !name.is_empty() && !users.iter().any(|u| u == name) {
                users.push(name.to_owned());
            }
        }
    }

    removed.sort_unstable();
    let part = |out: &mut String, from: usize, to: usize| {
        let mut i = from;
        while i < to {
            if let Some(&(start, end)) = removed.iter().find(|(s, _)| *s == i) {
                let what = if start == launchd {
                    "the launchd and userLaunchd steps"
                } else if start == tail {
                    "the end of the script, which links the current system,"
                } else if lines[start].trim_start().starts_with(REMOTE_LOGIN_OPENER) {
                    "the openssh step"
                } else {
                    "a nix-daemon step"
                };
                out.push_str(&format!(
                    "# safe-switch: {what} (lines {}-{}) carried out natively\n",
                    start + 1,
                    end + 1
                ));
                i = end + 1;
            } else {
                out.push_str(lines[i]);
                i += 1;
            }
        }
    };
    let mut before = String::new();
    part(&mut before, 0, launchd);
    before.push_str(&format!(
        "# safe-switch: the launchd and userLaunchd steps (lines {}-{}) are carried out natively; lines {}-{} run after them\n",
        launchd + 1,
        daemon,
        daemon + 1,
        lines.len()
    ));
    let mut after = String::new();
    part(&mut after, 0, header);
    after.push_str(&format!(
        "# safe-switch: lines {}-{} ran before the launchd steps (lines {}-{}), which were carried out natively\n",
        header + 1,
        launchd,
        launchd + 1,
        daemon
    ));
    part(&mut after, daemon, lines.len());
    Ok(Cut {
        before,
        after,
        nix_daemon,
        users,
        remote_login,
        removed: removed.into_iter().map(|(s, e)| (s + 1, e + 1)).collect(),
    })
}

/// The end of the script's header: the line after `cd /`, or after the
/// root check that follows it. Both parts of the cut script start with the
/// header (the shell options, `PATH`, `systemConfig`, the umask).
fn header_end(lines: &[&str], launchd: usize) -> Result<usize, MarkerError> {
    let cd = (0..launchd).find(|&i| lines[i].trim() == HEADER_END).ok_or_else(|| {
        missing(format!("no {HEADER_END:?} line ending the script's header before the launchd section"))
    })?;
    let next = (cd + 1..launchd).find(|&i| !lines[i].trim().is_empty());
    match next {
        Some(i) if lines[i].trim_start().starts_with(ROOT_CHECK) => (i + 1..launchd)
            .find(|&j| lines[j].trim() == "fi")
            .map(|fi| fi + 1)
            .ok_or_else(|| missing(format!("no \"fi\" after {ROOT_CHECK:?}"))),
        _ => Ok(cd + 1),
    }
}

/// Finds the openssh block (`if [[ "$(systemsetup -getremotelogin …` to
/// its `fi`), tells what it does, and adds it to `removed` unless it lies
/// in a part already taken out (nix-darwin appends it to the launchd
/// section). More than one block, or one that runs anything else, is a
/// [`MarkerError`].
fn remote_login_blocks(lines: &[&str], removed: &mut Vec<(usize, usize)>) -> Result<Option<RemoteLogin>, MarkerError> {
    let mut found = None;
    let mut i = 0;
    while i < lines.len() {
        if !lines[i].trim_start().starts_with(REMOTE_LOGIN_OPENER) {
            i += 1;
            continue;
        }
        let end = (i + 1..lines.len())
            .find(|&j| lines[j].trim() == "fi")
            .ok_or_else(|| missing(format!("no \"fi\" after the openssh block on line {}", i + 1)))?;
        let body: Vec<&str> = lines[i + 1..end].iter().map(|l| l.trim()).filter(|l| !l.is_empty()).collect();
        let what = if body == REMOTE_LOGIN_ON {
            RemoteLogin::On
        } else if body == REMOTE_LOGIN_OFF {
            RemoteLogin::Off
        } else {
            return Err(missing(format!(
                "the openssh block on line {} runs neither {:?} nor {:?}",
                i + 1,
                REMOTE_LOGIN_ON.join("; "),
                REMOTE_LOGIN_OFF.join("; ")
            )));
        };
        if found.replace(what).is_some() {
            return Err(missing(format!("a second openssh block on line {}", i + 1)));
        }
        if !removed.iter().any(|&(s, e)| s <= i && end <= e) {
            removed.push((i, end));
        }
        i = end + 1;
    }
    Ok(found)
}
