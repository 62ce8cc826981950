//! Plans the launchd part of a nix-darwin switch as a pure function, and
//! renders the plan as an ordered list of `launchctl` calls.
//!
//! Inputs: the old and new generations' plists ([`load_generation`] reads
//! them from a toplevel), the [`Host`]: the live launchd state
//! ([`LaunchdLive`], what `launchctl print` and `launchctl list` report, as a
//! JSON value; [`parse_print`] and [`parse_list`] read real captures) and,
//! optionally, the installed plists ([`load_installed`]); and a protection
//! [`Request`]. Output: a [`LaunchdPlan`], the shared [`plan_model::Plan`]
//! keyed by job label plus where each job lives, which [`operations`] turns
//! into [`Operation`]s whose [`Operation::argv`] is the exact command line.
//!
//! Architecture Invariant: only the `io` module touches the filesystem;
//! [`plan`] and [`operations`] are pure and never spawn `launchctl`.
//!
//! API Boundary: [`plan`], [`operations`] and the loaders; the executor that
//! runs the operations on a Mac lives elsewhere.
//!
//! # What nix-darwin does, and what is modelled
//!
//! nix-darwin installs `Library/LaunchDaemons/*.plist` into
//! `/Library/LaunchDaemons`, `Library/LaunchAgents/*.plist` into
//! `/Library/LaunchAgents` and `user/Library/LaunchAgents/*.plist` into the
//! primary user's `~/Library/LaunchAgents`, as regular files. For each plist
//! of the new generation whose bytes differ from the installed copy it runs
//! `launchctl unload`, copies the file and runs `launchctl load -w`; for each
//! plist of the old generation missing from the new one it unloads the job
//! and deletes the file. A changed plist is therefore always a full stop and
//! start: launchd has no reload. After that, if `nix.conf` or `machines`
//! changed, it sends the Nix daemon SIGHUP, which ends the daemon and lets
//! launchd start it again.
//!
//! The planner makes the same decisions, per job label. A new plist is
//! compared with the installed copy when the host's installed plists were
//! read (so a change deferred by an earlier switch is still applied later),
//! otherwise with the old generation's:
//!
//! - added plist: installed, enabled and bootstrapped (`start`); if a job of
//!   that label is already loaded, it is booted out first (`restart`);
//! - changed plist: booted out, installed, enabled and bootstrapped
//!   (`restart`), with every differing plist key as a [`plan_model::KeyChange`]
//!   in section `plist` (nested dictionaries as dotted key paths);
//! - removed plist (in the old generation, not in the new one): booted out
//!   (`stop`) if loaded, and its file deleted;
//! - bytes changed but content equal (re-encoded or reformatted): the file is
//!   replaced and the job left running, where nix-darwin would reload it;
//! - a job of the new generation that the live state shows as not loaded:
//!   bootstrapped (`start`), which nix-darwin never does;
//! - `nix.conf` or `machines` changed with a managed Nix daemon:
//!   `kickstart -k system/org.nixos.nix-daemon` (`restart`);
//! - `services.openssh.enable` ([`GenerationJobs::remote_login`], read by
//!   the caller from the generation's `activate`): macOS's own sshd,
//!   `com.openssh.sshd`, enabled and bootstrapped from
//!   `/System/Library/LaunchDaemons/ssh.plist` when it is not loaded
//!   (`start`), or booted out and disabled when it is (`stop`), as
//!   nix-darwin does when Remote Login is off or on; its plist is never
//!   installed or deleted;
//! - protection: a protected job that would be stopped or restarted is, in
//!   defer mode, left alone entirely, its installed plist staying as it is
//!   and the job loaded (recorded as a deferral plus an `old-plist-kept`
//!   reason); in refuse mode the plan is refused (with one refusal per job)
//!   and [`operations`] declines it. nix-darwin has no per-job
//!   `restartIfChanged`, so keeping the old plist is the only way to leave a
//!   job's process untouched. A deferred removal gets a warning, because no
//!   later switch lists that job again.
//!
//! When a domain was not captured, every job of the old generation counts as
//! loaded, which is what nix-darwin assumes. A launch agent from
//! `/Library/LaunchAgents` is loaded into the primary user's `gui/<uid>`
//! domain (nix-darwin loads it as root, which newer macOS refuses); other
//! users pick it up at their next login. Without a known primary user,
//! agents are installed or deleted but not loaded, with a warning.
//!
//! # What is not modelled
//!
//! The rest of the activation script (`/etc`, defaults, users, homebrew),
//! `launchctl setenv` of `launchd.envVariables`, the `org.nixos.activate-system`
//! job's boot-time re-activation, GUI domains of users other than the
//! primary user, a missing GUI session (bootstrap then fails with 125), the
//! plist `Disabled` key, and launchd's asynchronous boot-out (the executor
//! waits until `launchctl print` reports the job gone before bootstrapping
//! it again).

#![warn(missing_docs)]

mod capture;
mod diffs;
mod error;
mod io;
mod job;
mod live;
mod ops;
mod planner;
mod policy;

pub use capture::{CaptureError, parse_list, parse_print};
pub use diffs::plist_diffs;
pub use error::{LoadError, OpsError, SelectorError};
pub use io::{load_generation, load_installed, load_live};
pub use job::{GenerationJobs, Installed, Job, RemoteLogin, Scope, flatten};
pub use live::{LaunchdLive, LiveJob, PrimaryUser};
pub use ops::{Domain, Launchctl, Operation, operations};
pub use planner::{Host, JobTarget, LaunchdPlan, NIX_DAEMON_LABEL, SSHD_LABEL, SSHD_PLIST, plan};
pub use policy::{LabelMatcher, Request};
