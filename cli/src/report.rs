//! Writing the reports: the renderers are the `plan-report` crate; this
//! module parses `--report FORMAT=PATH`, prints one format on standard
//! output and writes the files.
//!
//! Every planning command (`diff`, `plan`, `check`) ends the same way: it
//! hands its [`Report`] to [`write_outputs`].

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use plan_report::{Format, Report, Style};

use crate::args::OutputArgs;

/// The style for standard output: colours only on a terminal that takes
/// them, never with `NO_COLOR` (<https://no-color.org>), as anstream
/// decides it (`CLICOLOR_FORCE` forces them).
pub(crate) fn stdout_style() -> Style {
    let choice = anstream::AutoStream::choice(&std::io::stdout());
    Style { color: !matches!(choice, anstream::ColorChoice::Never) }
}

/// The style for standard error, as [`stdout_style`] decides it for
/// standard output.
pub(crate) fn stderr_style() -> Style {
    let choice = anstream::AutoStream::choice(&std::io::stderr());
    Style { color: !matches!(choice, anstream::ColorChoice::Never) }
}

/// One `--report FORMAT=PATH` request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ReportFile {
    /// The format to write.
    pub format: Format,
    /// Where to write it.
    pub path: PathBuf,
}

/// Parses one `--report FORMAT=PATH` value (clap's value parser, so a bad
/// one is a usage error naming it).
pub(crate) fn parse_report_file(value: &str) -> Result<ReportFile, String> {
    let names: Vec<&str> = Format::ALL.iter().map(|f| f.name()).collect();
    let Some((format, path)) = value.split_once('=') else {
        return Err(format!("expected FORMAT=PATH, e.g. junit=report.xml (formats: {})", names.join(", ")));
    };
    let format = Format::from_name(format)
        .ok_or_else(|| format!("unknown report format {format:?} (formats: {})", names.join(", ")))?;
    if path.is_empty() {
        return Err("the path after '=' is empty".to_owned());
    }
    Ok(ReportFile { format, path: PathBuf::from(path) })
}

/// Prints the standard-output format and writes every `--report` file.
///
/// The `--report` values are parsed before anything is written, so a typo
/// in the last one does not leave the others half written. Each file is
/// written to a temporary sibling and renamed into place, so a CI job never
/// picks up a truncated report.
pub(crate) fn write_outputs(report: &Report<'_>, output: &OutputArgs) -> anyhow::Result<()> {
    write_files(report, output)?;
    write_stdout(report, output)
}

/// Writes every `--report` file.
fn write_files(report: &Report<'_>, output: &OutputArgs) -> anyhow::Result<()> {
    for file in &output.report {
        let text = plan_report::render(file.format, report, Style::default());
        write_atomically(&file.path, text.as_bytes())
            .with_context(|| format!("cannot write the {} report to {}", file.format.name(), file.path.display()))?;
    }
    Ok(())
}

/// Prints the standard-output format.
fn write_stdout(report: &Report<'_>, output: &OutputArgs) -> anyhow::Result<()> {
    let text = plan_report::render(output.stdout_format(), report, stdout_style());
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Prints and writes the reports of a systemd plan with its unit-file
/// diffs ([`systemd_plan::unit_diffs`]) and what it does to the deferrals
/// earlier switches left pending.
pub(crate) fn write_plan(
    plan: &plan_model::Plan,
    diffs: &[plan_model::FileDiff],
    pending: &[plan_model::Earlier],
    output: &OutputArgs,
) -> anyhow::Result<()> {
    write_outputs(&Report { plan, diffs, commands: &[], pending, applied: None }, output)
}

/// The reports of a plan that `switch` or `apply` carries out: written
/// once before the apply ([`Applying::before`]) and again with what it did
/// ([`Applying::after`]).
///
/// The `--report` files hold the plan first and the plan with its
/// `applied` section at the end, so that a file read after a dropped
/// connection shows at least the plan. Standard output in text shows the
/// plan before the apply (what the apply did follows on standard error,
/// as its progress does); in the other formats it is one document,
/// printed once the apply is done.
pub(crate) struct Applying<'a> {
    /// The plan and what goes with it.
    pub report: Report<'a>,
    /// Where the reports go.
    pub output: &'a OutputArgs,
}

impl Applying<'_> {
    /// The reports of the plan alone, before the apply.
    pub(crate) fn before(&self) -> anyhow::Result<()> {
        write_files(&self.report, self.output)?;
        if self.output.stdout_format() == plan_report::Format::Text {
            write_stdout(&self.report, self.output)?;
        }
        Ok(())
    }

    /// The reports of the plan refused by protection: nothing is applied.
    pub(crate) fn refused(&self) -> anyhow::Result<()> {
        write_outputs(&self.report, self.output)
    }

    /// The reports with what the apply did.
    pub(crate) fn after(&self, applied: &plan_model::ApplyReport) -> anyhow::Result<()> {
        let report = Report { applied: Some(applied), ..self.report };
        write_files(&report, self.output)?;
        if self.output.stdout_format() != plan_report::Format::Text {
            write_stdout(&report, self.output)?;
        }
        Ok(())
    }
}

/// Prints and writes the reports of the record of pending deferrals
/// (`safe-switch pending`), as [`write_outputs`] does those of a plan.
pub(crate) fn write_pending(pending: &plan_model::Pending, output: &OutputArgs) -> anyhow::Result<()> {
    for file in &output.report {
        let text = plan_report::render_pending(file.format, pending, Style::default());
        write_atomically(&file.path, text.as_bytes())
            .with_context(|| format!("cannot write the {} report to {}", file.format.name(), file.path.display()))?;
    }
    let text = plan_report::render_pending(output.stdout_format(), pending, stdout_style());
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Writes the `--report openmetrics=PATH` files of a `switch` or `apply`
/// once it is over: the plan's metrics (when there is a plan), the units
/// still pending in the record the apply left, and how the apply ended
/// (`result`: its outcome, or its error's exit code) and how long it ran
/// since `started`. Other formats are left as they were written. A file
/// that cannot be written is a warning: the apply's outcome stands.
pub(crate) fn write_apply_metrics(
    files: &[ReportFile],
    plan: Option<&plan_model::Plan>,
    run: &systemd_live::RunDir,
    result: &anyhow::Result<crate::exit::Outcome>,
    started: std::time::Instant,
) {
    let files: Vec<&ReportFile> = files.iter().filter(|f| f.format == Format::Openmetrics).collect();
    if files.is_empty() {
        return;
    }
    let exit_code = match result {
        Ok(outcome) => outcome.code(),
        Err(err) => crate::exit::error_code(err),
    };
    let finished = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let apply = plan_report::openmetrics::ApplyResult {
        exit_code,
        duration_seconds: started.elapsed().as_secs_f64(),
        finished_unix: finished.as_secs_f64(),
    };
    let pending = run.read_pending().ok().map(|p| p.deferrals.len());
    let text = plan_report::openmetrics::render_apply(plan, pending, apply);
    for file in files {
        if let Err(err) = write_atomically(&file.path, text.as_bytes()) {
            say!("warning: cannot write the openmetrics report to {}: {err}", file.path.display());
        }
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory,
/// renamed into place. A path that exists and is not a plain file (a
/// symbolic link, `/dev/stdout`, a named pipe) is written in place instead:
/// renaming over it would replace the link or device node itself.
///
/// Run as root through sudo, the file is written with the file-system
/// identity of the user who ran sudo (see [`as_invoking_user`]): a sudo
/// rule that lets a CI user run safe-switch must not let it write a report
/// over `/etc/sudoers`.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    as_invoking_user(|| write_atomically_here(path, bytes))
}

fn write_atomically_here(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Ok(meta) = fs::symlink_metadata(path)
        && !meta.file_type().is_file()
    {
        return fs::write(path, bytes);
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp = tempfile::Builder::new().prefix(".safe-switch-").suffix(".tmp").tempfile_in(&dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Runs `f` with the file-system user and group of the user who ran
/// safe-switch through sudo (`SUDO_UID`, `SUDO_GID`), when this process
/// runs as root and they name another user; otherwise runs `f` as it is.
/// The kernel then checks the paths `f` opens as that user's.
///
/// Only this thread's identity changes, and it is restored before
/// returning: on Linux the file-system identity (`setfsuid`, `setfsgid`;
/// the supplementary groups stay root's), on macOS the thread's effective
/// identity (`pthread_setugid_np`, which also drops the supplementary
/// groups for the thread).
pub(crate) fn as_invoking_user<T>(f: impl FnOnce() -> std::io::Result<T>) -> std::io::Result<T> {
    let id = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u32>().ok());
    let (Some(uid), Some(gid)) = (id("SUDO_UID"), id("SUDO_GID")) else { return f() };
    if uid == 0 || !rustix::process::geteuid().is_root() {
        return f();
    }
    thread_identity::with(uid, gid, f)
}

/// Taking another user's identity for the current thread.
#[cfg(target_os = "linux")]
mod thread_identity {
    /// Runs `f` with the file-system identity `uid`, `gid`.
    pub(super) fn with<T>(uid: u32, gid: u32, f: impl FnOnce() -> std::io::Result<T>) -> std::io::Result<T> {
        // SAFETY: setfsgid and setfsuid take plain integers, change only
        // this thread's credentials and cannot fail in a way that breaks
        // memory safety; success is checked by reading the value back.
        let (old_gid, old_uid) = unsafe { (libc::setfsgid(gid), libc::setfsuid(uid)) };
        // SAFETY: as above; `u32::MAX` (-1) only reads the current value.
        let now = unsafe { (libc::setfsgid(u32::MAX), libc::setfsuid(u32::MAX)) };
        let result = if now == (gid as i32, uid as i32) {
            f()
        } else {
            Err(std::io::Error::other(format!("cannot take the file-system identity of uid {uid} (sudo's caller)")))
        };
        // SAFETY: as above, back to the identity this thread had.
        unsafe {
            libc::setfsuid(old_uid as u32);
            libc::setfsgid(old_gid as u32);
        }
        result
    }
}

/// Taking another user's identity for the current thread.
#[cfg(target_os = "macos")]
mod thread_identity {
    /// `KAUTH_UID_NONE` and `KAUTH_GID_NONE` (`<sys/kauth.h>`): back to
    /// the process's identity.
    const NONE: u32 = !0 - 100;

    // SAFETY: the declaration is that of `<pthread.h>` (libsystem_pthread,
    // macOS 10.4 and later).
    unsafe extern "C" {
        fn pthread_setugid_np(uid: libc::uid_t, gid: libc::gid_t) -> libc::c_int;
    }

    /// Runs `f` with the effective identity `uid`, `gid` for this thread.
    pub(super) fn with<T>(uid: u32, gid: u32, f: impl FnOnce() -> std::io::Result<T>) -> std::io::Result<T> {
        // SAFETY: takes plain integers and changes only this thread's
        // credentials; its result is checked.
        if unsafe { pthread_setugid_np(uid, gid) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(std::io::Error::other(format!("cannot take the identity of uid {uid} (sudo's caller): {e}")));
        }
        let now = (rustix::process::geteuid().as_raw(), rustix::process::getegid().as_raw());
        let result = if now == (uid, gid) {
            f()
        } else {
            Err(std::io::Error::other(format!("cannot take the identity of uid {uid} (sudo's caller)")))
        };
        // SAFETY: as above, back to the process's identity.
        unsafe { pthread_setugid_np(NONE, NONE) };
        result
    }
}

/// Taking another user's identity for the current thread: not built here.
#[cfg(not(any(target_os = "linux", target_os = "macos")))]
mod thread_identity {
    /// Refuses: there is no known per-thread way on this system.
    pub(super) fn with<T>(uid: u32, _: u32, _: impl FnOnce() -> std::io::Result<T>) -> std::io::Result<T> {
        Err(std::io::Error::other(format!(
            "cannot write as uid {uid} (sudo's caller) on this system; run safe-switch as that user or as root itself"
        )))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn links_and_devices_are_written_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("real.xml");
        let link = dir.path().join("link.xml");
        fs::write(&target, "old").unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_atomically(&link, b"new").unwrap();
        assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link was replaced");
        assert_eq!(fs::read_to_string(&target).unwrap(), "new");
        let plain = dir.path().join("plain.xml");
        write_atomically(&plain, b"x").unwrap();
        write_atomically(&plain, b"y").unwrap();
        assert_eq!(fs::read_to_string(&plain).unwrap(), "y");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 3, "temporary files left behind: {names:?}");
        write_atomically(Path::new("/dev/null"), b"z").unwrap();
    }

    #[test]
    fn report_values_parse_and_bad_ones_are_named() {
        assert_eq!(
            parse_report_file("junit=out/r.xml").unwrap(),
            ReportFile { format: Format::Junit, path: "out/r.xml".into() }
        );
        assert_eq!(parse_report_file("CodeQuality=cq.json").unwrap().format, Format::Codequality);
        let err = parse_report_file("xml=r.xml").unwrap_err();
        assert!(err.contains("\"xml\""), "{err}");
        let err = parse_report_file("junit").unwrap_err();
        assert!(err.contains("FORMAT=PATH"), "{err}");
        let err = parse_report_file("junit=").unwrap_err();
        assert!(err.contains("empty"), "{err}");
    }
}
