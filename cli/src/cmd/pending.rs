//! The `pending` subcommand: the deferred actions earlier switches left
//! pending on this host, in any report format.
//!
//! It reads `/run/safe-switch/pending.json` (root only, like the rest of
//! the run directory), asks systemd for the instance of each unit it names
//! and leaves out the deferrals whose unit was restarted or stopped since
//! (another `InvocationID`): those are no longer pending. It changes
//! nothing, the record included. Exit 0 when nothing is pending, 3 when
//! something is, 1 when the record cannot be read (the message names the
//! file).

use systemd_live::RunDir;

use crate::args;
use crate::exit::Outcome;
use crate::host;

/// Runs `pending`.
pub(crate) fn run(args: args::PendingArgs) -> anyhow::Result<Outcome> {
    if crate::darwin::is_darwin_host() {
        return crate::darwin::pending(args);
    }
    let run = RunDir::system();
    let record = crate::pending::read(&run)?;
    let pending = if record.is_empty() {
        record
    } else {
        let mut bus = host::connect()?;
        crate::pending::current(&run, &mut bus)?.0
    };
    crate::report::write_pending(&pending, &args.output)?;
    Ok(if pending.is_empty() { Outcome::Ok } else { Outcome::Blocked })
}
