//! Reading launchd's live state for a plan: `launchctl print` of every
//! label the two generations (and the protection selectors) name, in the
//! `system` domain for daemons and the primary user's `gui/<uid>` domain
//! for agents. Only the stable top-level fields are read
//! ([`launchd_plan::parse_print`]).

use std::collections::BTreeMap;

use launchd_plan::{Domain, GenerationJobs, LaunchdLive, LiveJob, PrimaryUser, Scope};

use crate::Error;
use crate::launchctl::{Launchd, print};

/// The live state the planner needs, with what could not be read.
#[derive(Clone, Debug, Default)]
pub struct Reading {
    /// The state, as the planner takes it.
    pub live: LaunchdLive,
    /// Why a domain was not captured (the planner then assumes, as
    /// nix-darwin does, that the old generation's jobs are loaded).
    pub warnings: Vec<String>,
}

/// Prints every label of `old` and `new` (and `extra`, e.g. the labels a
/// protection selector names) in its domain. The `system` domain must
/// answer; a `gui/<uid>` domain that does not (no GUI login) is left
/// uncaptured, with a warning.
pub fn read_live(
    launchd: &mut dyn Launchd,
    old: &GenerationJobs,
    new: &GenerationJobs,
    primary_user: Option<PrimaryUser>,
    extra: &[String],
) -> Result<Reading, Error> {
    let mut system_labels: Vec<String> = Vec::new();
    let mut gui_labels: Vec<String> = Vec::new();
    for job in old.jobs.iter().chain(&new.jobs) {
        let labels = if job.scope == Scope::Daemon { &mut system_labels } else { &mut gui_labels };
        labels.push(job.label_or_stem().to_owned());
    }
    system_labels.extend(extra.iter().cloned());
    for labels in [&mut system_labels, &mut gui_labels] {
        labels.sort();
        labels.dedup();
    }
    let mut reading = Reading::default();
    reading.live.system = Some(domain_jobs(launchd, Domain::System, &system_labels)?);
    if let Some(user) = &primary_user {
        match domain_jobs(launchd, Domain::Gui(user.uid), &gui_labels) {
            Ok(jobs) => reading.live.gui = Some(jobs),
            Err(e) => reading.warnings.push(format!(
                "the GUI domain gui/{} of {} could not be read ({e}); its agents are taken as loaded",
                user.uid, user.name
            )),
        }
    }
    reading.live.primary_user = primary_user;
    Ok(reading)
}

fn domain_jobs(
    launchd: &mut dyn Launchd,
    domain: Domain,
    labels: &[String],
) -> Result<BTreeMap<String, LiveJob>, Error> {
    let mut jobs = BTreeMap::new();
    for label in labels {
        if let Some(job) = print(launchd, domain, label)? {
            jobs.insert(label.clone(), job);
        }
    }
    Ok(jobs)
}
