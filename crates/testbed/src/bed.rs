//! The test bed: a throwaway systemd as PID 1 of new PID and mount
//! namespaces.
//!
//! [`TestBed::boot`] prepares a private directory (the namespace's `/run`,
//! a directory that plays the Nix store and holds the generations, as
//! NixOS's store holds its toplevels, SSH keys and a boot script) and
//! starts
//! `unshare --pid --fork --mount --mount-proc --kill-child <boot script>`.
//! The boot script, inside the new namespaces:
//!
//! 1. makes every mount private (`mount --make-rprivate /`), so nothing it
//!    mounts is seen by the host;
//! 2. moves itself into a cgroup of its own (`/testbed-<id>` in each
//!    cgroup hierarchy systemd tracks processes with), so that systemd takes
//!    that cgroup as its root and parallel test beds never share a unit's
//!    cgroup (systemd kills by cgroup);
//! 3. bind-mounts the host directory `<root>/run` onto `/run`, so that the
//!    host reaches the sockets systemd and D-Bus create there;
//! 4. mounts a tmpfs on `/etc/systemd` holding two symlinks,
//!    `system -> <generation>/etc/systemd/system` and
//!    `system.conf -> <generation>/etc/systemd/system.conf`, which a
//!    generation's `activate` replaces, as on NixOS where they point into
//!    `/etc/static`;
//! 5. bind-mounts a copy of the few Debian units a system needs
//!    ([`BASE_UNITS`], [`JOURNAL_UNITS`] unless switched off, and
//!    [`LOGIND_UNITS`] on request) onto
//!    `/lib/systemd/system`, and an empty tmpfs onto
//!    `/lib/systemd/system-generators` (the host's SysV scripts would
//!    otherwise become failing units);
//! 6. `exec`s `/lib/systemd/systemd --system --unit=<target>`.
//!
//! `/run/current-system` is a symlink to the booted generation. The copied
//! units get `.wants` links for the journal's and the bus's sockets, so they
//! are part of the boot transaction (Debian's own links are not copied).
//! After boot, the bed starts `dbus.service` (nothing but a client's
//! connection would) and, when asked, `systemd-logind.service`, then waits
//! until the boot job finished and sshd (when the generation has it)
//! accepts connections.
//!
//! Dropping the [`TestBed`] SIGKILLs the namespace's PID 1 by PID, which
//! kills every process of the namespace; it then removes the bed's cgroups
//! and its directory. As a safety net, the `unshare` process gets SIGKILL
//! when the thread that booted the bed dies, and `unshare --kill-child`
//! passes that on to systemd, so even a test process that aborts leaves no
//! systemd behind.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::net::TcpStream;
use std::os::unix::fs::symlink;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result, io};
use crate::exec::{self, Output};
use crate::generation::{BuildContext, Generation, SshdSettings};
use crate::ssh::{self, SshKeys, SshSession};

/// Debian units every test bed gets: the targets a unit with default
/// dependencies pulls in (without them a restart fails with "Unit
/// sysinit.target not found"), the slices, D-Bus, and what
/// `systemctl exit` needs.
pub const BASE_UNITS: &[&str] = &[
    "sysinit.target",
    "basic.target",
    "sockets.target",
    "timers.target",
    "paths.target",
    "slices.target",
    "swap.target",
    "local-fs.target",
    "local-fs-pre.target",
    "network.target",
    "network-pre.target",
    "network-online.target",
    "nss-user-lookup.target",
    "shutdown.target",
    "umount.target",
    "final.target",
    "exit.target",
    "systemd-exit.service",
    "user.slice",
    "dbus.socket",
    "dbus.service",
];

/// The extra Debian units for a test bed with `systemd-logind` (which
/// NixOS's switch asks for the logged-in users).
pub const LOGIND_UNITS: &[&str] =
    &["systemd-logind.service", "dbus-org.freedesktop.login1.service", "user-runtime-dir@.service", "user@.service"];

/// The extra Debian units for a test bed with a journal, so that
/// `systemctl status` and `journalctl` show what units printed.
pub const JOURNAL_UNITS: &[&str] =
    &["systemd-journald.service", "systemd-journald.socket", "systemd-journald-dev-log.socket"];

/// Where Debian keeps its units (on a merged-/usr system this is
/// `/usr/lib/systemd/system`).
const DISTRO_UNITS: &str = "/lib/systemd/system";

/// How to boot a test bed.
#[derive(Clone, Debug)]
pub struct Config {
    /// The generation to boot. It is built into the bed's directory and
    /// becomes `/run/current-system`.
    pub generation: Generation,
    /// The unit systemd starts at boot (default `multi-user.target`).
    pub target: String,
    /// Also start `systemd-logind.service` after D-Bus.
    pub logind: bool,
    /// Start `systemd-journald` first (on by default), so that units'
    /// output is kept (in the bed's `/run/log/journal`) and shows in
    /// `systemctl status` and [`TestBed::journal`].
    pub journal: bool,
    /// More units to copy from the distribution's unit directory.
    pub extra_distro_units: Vec<String>,
    /// The deadline of every single wait (boot, each `systemctl`, ...).
    pub timeout: Duration,
    /// Keep the bed's directory after teardown (for debugging); also
    /// switched on by the environment variable `TESTBED_KEEP=1`.
    pub keep: bool,
}

impl Config {
    /// A configuration booting `generation` into `multi-user.target`.
    pub fn new(generation: Generation) -> Self {
        Config {
            generation,
            target: "multi-user.target".to_owned(),
            logind: false,
            journal: true,
            extra_distro_units: Vec::new(),
            timeout: Duration::from_secs(30),
            keep: std::env::var_os("TESTBED_KEEP").is_some_and(|v| v == "1"),
        }
    }

    /// Also start systemd-logind.
    pub fn with_logind(mut self) -> Self {
        self.logind = true;
        self
    }
}

/// Whether this process can host a test bed: root, and the programs it
/// uses are installed. Returns the reason when it cannot.
pub fn unsupported_reason() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("it must run as root (it creates PID and mount namespaces)".to_owned());
    }
    for program in [
        "/lib/systemd/systemd",
        "/usr/bin/dbus-daemon",
        "/usr/sbin/sshd",
        "/usr/bin/ssh",
        "/usr/bin/ssh-keygen",
        "/usr/bin/unshare",
        "/usr/bin/nsenter",
    ] {
        if !Path::new(program).exists() {
            return Some(format!("{program} is missing (scripts/deps installs it)"));
        }
    }
    // Root is not enough inside some containers: try once per process.
    static NAMESPACES: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    NAMESPACES
        .get_or_init(|| {
            let out = exec::run(
                Command::new("unshare").args(["--pid", "--fork", "--mount", "--mount-proc", "true"]),
                Duration::from_secs(10),
            );
            match out {
                Ok(out) if out.success() => None,
                Ok(out) => Some(format!("cannot create PID and mount namespaces: {}", out.stderr.trim())),
                Err(err) => Some(format!("cannot create PID and mount namespaces: {err}")),
            }
        })
        .clone()
}

/// Decides whether something that needs a test bed (a benchmark; tests
/// use [`require!`](macro@crate::require)) runs. Returns `true` when it
/// can. Otherwise, under `CI=true` it panics, and elsewhere it prints why
/// `test` is skipped and returns `false`.
pub fn available(test: &str) -> bool {
    match unsupported_reason() {
        None => true,
        Some(reason) => {
            crate::require::skip_or_fail(test, &reason);
            false
        }
    }
}

/// What `systemctl show` says about a unit at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnitState {
    /// `ActiveState`: `active`, `inactive`, `failed`, ...
    pub active_state: String,
    /// `SubState`: `running`, `exited`, `dead`, ...
    pub sub_state: String,
    /// `MainPID` (in the bed's PID namespace), 0 when none.
    pub main_pid: u32,
    /// `InvocationID`: changes with every start of the unit; empty when it
    /// never ran.
    pub invocation_id: String,
}

impl UnitState {
    /// Whether the unit is active (or reloading).
    pub fn is_active(&self) -> bool {
        self.active_state == "active" || self.active_state == "reloading"
    }
}

/// A booted test bed. See the module documentation for what it is made of.
pub struct TestBed {
    root: PathBuf,
    keep: bool,
    unshare: Child,
    pid: u32,
    cgroup: String,
    keys: SshKeys,
    port: u16,
    timeout: Duration,
    boot_time: Duration,
    torn_down: bool,
}

static BEDS: AtomicU32 = AtomicU32::new(0);

impl TestBed {
    /// Boots a test bed for `config`: about half a second. Fails with
    /// [`Error::Unsupported`] when the machine cannot host one (see
    /// [`unsupported_reason`]) and with [`Error::Boot`] (carrying the boot
    /// console) when systemd does not come up.
    ///
    /// The bed lives at most as long as the thread that booted it (the
    /// kernel kills it when that thread ends), so boot it in the thread
    /// that uses it, not in a shared static initialised by whichever test
    /// runs first.
    ///
    /// Beds left behind by a test process that was killed (their cgroups
    /// and directories) are removed first.
    pub fn boot(config: &Config) -> Result<TestBed> {
        if let Some(reason) = unsupported_reason() {
            return Err(Error::Unsupported(reason));
        }
        let started = Instant::now();
        sweep_stale();
        let dir = tempfile::Builder::new()
            .prefix(&format!("testbed-{}-", std::process::id()))
            .tempdir()
            .map_err(io("creating", std::env::temp_dir()))?;
        let root = dir.keep();
        let id = format!("{}-{}", std::process::id(), BEDS.fetch_add(1, Ordering::Relaxed));
        match Self::boot_in(config, root.clone(), id, started) {
            Ok(bed) => Ok(bed),
            Err(err) => {
                if !config.keep {
                    let _ = fs::remove_dir_all(&root);
                }
                Err(err)
            }
        }
    }

    fn boot_in(config: &Config, root: PathBuf, id: String, started: Instant) -> Result<TestBed> {
        let run = root.join("run");
        for dir in ["run/testbed", "store", "distro-units"] {
            fs::create_dir_all(root.join(dir)).map_err(io("creating", root.join(dir)))?;
        }
        fs::write(run.join("testbed/marker"), format!("{id}\n")).map_err(io("writing", run.join("testbed/marker")))?;
        let keys = SshKeys::generate(&root.join("ssh"))?;
        let port = ssh::free_port()?;

        let ctx = build_context(&root, &keys, port);
        let generation = config.generation.build(&root.join("store"), &ctx)?;
        let mut units: Vec<String> = BASE_UNITS.iter().map(|s| (*s).to_owned()).collect();
        let boot_links = if config.generation.is_system_manager() {
            // The host's own multi-user.target pulls in system-manager.target.
            units.push("multi-user.target".to_owned());
            set_up_system_manager(&run, &generation)?;
            crate::system_manager::boot_links(&generation)?
        } else {
            symlink(&generation, run.join("current-system")).map_err(io("linking", run.join("current-system")))?;
            (generation.join("etc/systemd/system"), generation.join("etc/systemd/system.conf"))
        };

        if config.logind {
            units.extend(LOGIND_UNITS.iter().map(|s| (*s).to_owned()));
        }
        if config.journal {
            units.extend(JOURNAL_UNITS.iter().map(|s| (*s).to_owned()));
        }
        units.extend(config.extra_distro_units.iter().cloned());
        copy_distro_units(Path::new(DISTRO_UNITS), &root.join("distro-units"), &units)?;

        let cgroup = format!("testbed-{id}");
        let script = root.join("boot.sh");
        exec::write_executable(&script, &boot_script(&root, &boot_links, &cgroup_roots(), &cgroup, &config.target))?;

        let console_path = root.join("console.log");
        let console = fs::File::create(&console_path).map_err(io("creating", &console_path))?;
        let console_err = console.try_clone().map_err(io("duplicating", &console_path))?;
        let mut cmd = Command::new("unshare");
        cmd.args(["--pid", "--fork", "--mount", "--mount-proc", "--kill-child=SIGKILL"])
            .arg(&script)
            .env_clear()
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(console_err)
            // Its own process group: a Ctrl-C meant for the test runner must
            // not reach the namespace's systemd (which would take SIGINT as
            // Ctrl-Alt-Del).
            .process_group(0);
        // SAFETY: the closure runs in the forked child before exec and only
        // calls prctl, which is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                // Dies with the thread that booted the bed; --kill-child then
                // takes systemd down too.
                rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
                Ok(())
            });
        }
        let command = exec::describe(&cmd);
        let unshare = cmd.spawn().map_err(|source| Error::Spawn { command, source })?;

        let mut bed = TestBed {
            root,
            keep: config.keep,
            unshare,
            pid: 0,
            cgroup,
            keys,
            port,
            timeout: config.timeout,
            boot_time: Duration::ZERO,
            torn_down: false,
        };
        bed.pid = bed.wait_boot_step("the namespace's PID 1", |bed| bed.find_pid1())?;
        let private = bed.run_dir().join("systemd/private");
        bed.wait_boot_step("systemd's private socket", |_| Ok(private.exists().then_some(())))?;
        // The socket file can exist before systemd answers on it (on a
        // loaded machine systemctl was seen failing to connect right after
        // it appeared), so wait until systemctl gets an answer.
        bed.wait_boot_step("systemd to answer on its private socket", |bed| {
            let out = bed.run(&["systemctl", "show", "-p", "Version", "--value"])?;
            Ok(out.success().then_some(()))
        })?;

        let mut start = vec!["start"];
        if config.journal {
            start.extend(["systemd-journald.socket", "systemd-journald-dev-log.socket", "systemd-journald.service"]);
        }
        start.extend(["dbus.socket", "dbus.service"]);
        if config.logind {
            start.push("systemd-logind.service");
        }
        bed.systemctl(&start).map_err(|e| bed.boot_error(format!("starting D-Bus: {e}")))?;
        let state = bed.run(&["systemctl", "is-system-running", "--wait"])?;
        let state = state.stdout.trim().to_owned();
        if state != "running" && state != "degraded" {
            return Err(bed.boot_error(format!("the system is {state:?} after boot")));
        }
        if config.generation.units().iter().any(|u| u == crate::generation::SSHD_UNIT) {
            // sshd is Type=notify, so active means listening; a failed sshd
            // (its port taken meanwhile) must not pass for a working one.
            let sshd = bed.active_state(crate::generation::SSHD_UNIT)?;
            if sshd != "active" {
                let journal = bed.journal(crate::generation::SSHD_UNIT).unwrap_or_default();
                return Err(bed.boot_error(format!("sshd.service is {sshd}:\n{journal}")));
            }
            let port = bed.port;
            bed.wait_boot_step("sshd to accept connections", |_| {
                Ok(TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ()))
            })?;
        }
        bed.boot_time = started.elapsed();
        Ok(bed)
    }

    /// Polls `probe` during boot, failing early with the console when the
    /// namespace died.
    fn wait_boot_step<T>(&mut self, what: &str, mut probe: impl FnMut(&Self) -> Result<Option<T>>) -> Result<T> {
        let timeout = self.timeout;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = probe(self)? {
                return Ok(value);
            }
            if let Ok(Some(status)) = self.unshare.try_wait() {
                return Err(self.boot_error(format!("unshare exited ({status}) while waiting for {what}")));
            }
            if Instant::now() >= deadline {
                return Err(self.boot_error(format!("timed out after {timeout:?} waiting for {what}")));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn boot_error(&self, reason: String) -> Error {
        Error::Boot { reason, console: self.console() }
    }

    /// The host PID of unshare's only child, the namespace's PID 1.
    fn find_pid1(&self) -> Result<Option<u32>> {
        let id = self.unshare.id();
        let path = format!("/proc/{id}/task/{id}/children");
        let text = fs::read_to_string(&path).unwrap_or_default();
        Ok(text.split_whitespace().next().and_then(|p| p.parse().ok()))
    }

    /// The host PID of the namespace's PID 1 (systemd).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// How long [`TestBed::boot`] took, from the first file written to sshd
    /// accepting connections.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// The name of the bed's cgroup (`testbed-<pid>-<n>`), a child of the
    /// root of each cgroup hierarchy systemd uses. The bed's systemd takes
    /// it as its root cgroup.
    pub fn cgroup_name(&self) -> &str {
        &self.cgroup
    }

    /// The bed's private directory on the host.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The host directory mounted on the namespace's `/run`.
    pub fn run_dir(&self) -> PathBuf {
        self.root.join("run")
    }

    /// The D-Bus address of the namespace's system bus, usable from the
    /// host (e.g. as `DBUS_SYSTEM_BUS_ADDRESS`). Inside the namespace the
    /// default address works.
    pub fn dbus_address(&self) -> String {
        format!("unix:path={}", self.run_dir().join("dbus/system_bus_socket").display())
    }

    /// The generation `/run/current-system` points to now.
    pub fn current_generation(&self) -> Result<PathBuf> {
        let link = self.run_dir().join("current-system");
        fs::read_link(&link).map_err(io("reading", link))
    }

    /// The system-manager host's root on the host, the bed's
    /// [`crate::system_manager::SYSTEM_MANAGER_ROOT`].
    pub fn system_manager_root(&self) -> PathBuf {
        self.run_dir().join("testbed/system-manager")
    }

    /// system-manager's state file now, parsed.
    pub fn system_manager_state(&self) -> Result<serde_json::Value> {
        let path = self.system_manager_root().join(crate::system_manager::STATE_FILE);
        let text = fs::read_to_string(&path).map_err(io("reading", &path))?;
        serde_json::from_str(&text)
            .map_err(|e| Error::Generation { generation: path.display().to_string(), reason: format!("not JSON: {e}") })
    }

    /// The generation system-manager's profile points to now.
    pub fn system_manager_profile(&self) -> Result<PathBuf> {
        let path = self.system_manager_root().join(crate::system_manager::PROFILE);
        fs::canonicalize(&path).map_err(io("resolving", path))
    }

    /// The engine commands the stand-ins of system-manager generations
    /// ran, in order, as `<command> <generation>`.
    pub fn engine_log(&self) -> Vec<String> {
        fs::read_to_string(self.run_dir().join("testbed/engine.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The names of the generations whose `activate` ran, in order.
    pub fn activations(&self) -> Vec<String> {
        fs::read_to_string(self.run_dir().join("testbed/activations"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The directory that plays the Nix store for this bed's generations:
    /// it holds them and the files they link to, so that safe-switch,
    /// which follows a generation's links only into the store that holds
    /// it, reads them as it reads a NixOS toplevel.
    pub fn store_dir(&self) -> PathBuf {
        self.root.join("store")
    }

    /// Builds another generation (e.g. the one to switch to) next to the
    /// booted one, with this bed's sshd settings, and returns its path.
    pub fn build_generation(&self, generation: &Generation) -> Result<PathBuf> {
        generation.build(&self.store_dir(), &build_context(&self.root, &self.keys, self.port))
    }

    /// The loopback port of the bed's sshd.
    pub fn ssh_port(&self) -> u16 {
        self.port
    }

    /// The bed's SSH keys.
    pub fn ssh_keys(&self) -> &SshKeys {
        &self.keys
    }

    /// An `ssh` command that runs `remote` as root in the bed.
    pub fn ssh_command(&self, remote: &str) -> Command {
        ssh::ssh_command(self.port, &self.keys.client_key, remote)
    }

    /// Opens an SSH session that prints a tick every `interval` and waits
    /// for its first tick.
    pub fn ssh_session(&self, interval: Duration) -> Result<SshSession> {
        let mut session = SshSession::start(self.port, &self.keys.client_key, interval)?;
        session.wait_for_ticks(1, self.timeout)?;
        Ok(session)
    }

    /// A command that runs `program` inside the bed's namespaces (via
    /// `nsenter -t <pid> -m -p`), for callers that need to stream its output
    /// or set its environment. Its working directory is `/`.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.pid.to_string())
            .args(["-m", "-p", "--wd=/", "--"])
            .arg(program)
            .env("SYSTEMD_PAGER", "")
            .env("SYSTEMD_COLORS", "0")
            .env_remove("DBUS_SYSTEM_BUS_ADDRESS");
        cmd
    }

    /// Runs `argv` inside the bed with the bed's timeout and returns its
    /// output, whatever its exit status.
    pub fn run(&self, argv: &[&str]) -> Result<Output> {
        let (program, args) = argv.split_first().ok_or_else(|| Error::Spawn {
            command: String::new(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command line"),
        })?;
        exec::run(self.command(program).args(args), self.timeout)
    }

    /// Runs `systemctl <args>` inside the bed; a non-zero exit is an error.
    /// Returns standard output.
    pub fn systemctl(&self, args: &[&str]) -> Result<String> {
        let mut argv = vec!["systemctl", "--no-pager"];
        argv.extend_from_slice(args);
        Ok(self.run(&argv)?.check()?.stdout)
    }

    /// One property of a unit, as `systemctl show -p <prop> --value`
    /// prints it (e.g. `MainPID`, `InvocationID`, `ActiveState`).
    pub fn unit_property(&self, unit: &str, property: &str) -> Result<String> {
        Ok(self.systemctl(&["show", "-p", property, "--value", unit])?.trim_end_matches('\n').to_owned())
    }

    /// A unit's `MainPID` (0 when it has none).
    pub fn main_pid(&self, unit: &str) -> Result<u32> {
        let text = self.unit_property(unit, "MainPID")?;
        text.parse().map_err(|_| Error::Failed {
            command: format!("systemctl show -p MainPID {unit}"),
            status: format!("unexpected value {text:?}"),
            stdout: String::new(),
            stderr: String::new(),
        })
    }

    /// A unit's `ActiveState` (`active`, `inactive`, `failed`, ...).
    pub fn active_state(&self, unit: &str) -> Result<String> {
        self.unit_property(unit, "ActiveState")
    }

    /// A unit's `InvocationID` (empty when it never ran).
    pub fn invocation_id(&self, unit: &str) -> Result<String> {
        self.unit_property(unit, "InvocationID")
    }

    /// The state of several units at once (one `systemctl show` call), by
    /// unit name. A unit systemd does not know reads as `inactive` with no
    /// PID and no invocation.
    pub fn unit_states(&self, units: &[&str]) -> Result<BTreeMap<String, UnitState>> {
        let mut args = vec!["show", "-p", "Id,ActiveState,SubState,MainPID,InvocationID"];
        args.extend_from_slice(units);
        let text = self.systemctl(&args)?;
        let mut states = BTreeMap::new();
        // One block per unit, in the order asked, separated by blank lines.
        for (unit, block) in units.iter().zip(text.split("\n\n")) {
            let mut state = UnitState::default();
            for line in block.lines() {
                let Some((key, value)) = line.split_once('=') else {
                    continue;
                };
                match key {
                    "ActiveState" => state.active_state = value.to_owned(),
                    "SubState" => state.sub_state = value.to_owned(),
                    "MainPID" => state.main_pid = value.parse().unwrap_or(0),
                    "InvocationID" => state.invocation_id = value.to_owned(),
                    _ => {}
                }
            }
            states.insert((*unit).to_owned(), state);
        }
        Ok(states)
    }

    /// Waits until `unit`'s `ActiveState` is `state`.
    pub fn wait_for_state(&self, unit: &str, state: &str) -> Result<()> {
        exec::poll(&format!("{unit} to be {state}"), self.timeout, || {
            Ok((self.active_state(unit)? == state).then_some(()))
        })
    }

    /// What `unit` printed, from the journal (empty when the bed runs
    /// without one).
    pub fn journal(&self, unit: &str) -> Result<String> {
        Ok(self.run(&["journalctl", "--no-pager", "-o", "cat", "-u", unit])?.stdout)
    }

    /// What the bed's systemd and the boot script printed so far.
    pub fn console(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = fs::File::open(self.root.join("console.log")) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    /// Stops the bed and reports what could not be cleaned up. Dropping the
    /// bed does the same and ignores such errors.
    pub fn shutdown(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        // The PID is the namespace's PID 1, which is unshare's child and
        // cannot be reused before unshare reaps it.
        if let Some(pid) = i32::try_from(self.pid).ok().and_then(rustix::process::Pid::from_raw) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        // unshare exits once its child is gone, and the kernel reaps every
        // process of the namespace before the namespace's init is reaped.
        if exec::wait_timeout(&mut self.unshare, self.timeout).is_none() {
            let _ = self.unshare.kill();
            let _ = self.unshare.wait();
        }
        let cgroups = remove_cgroups(&self.cgroup, self.timeout);
        if self.keep {
            eprintln!("test bed kept in {}", self.root.display());
            return cgroups;
        }
        let removed = fs::remove_dir_all(&self.root).map_err(io("removing", &self.root));
        cgroups.and(removed)
    }
}

impl Drop for TestBed {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}

impl std::fmt::Debug for TestBed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestBed").field("root", &self.root).field("pid", &self.pid).field("port", &self.port).finish()
    }
}

/// Makes the bed a host system-manager activated `generation` on:
/// `/run/current-system` links to `/run/system-manager` (not a toplevel),
/// and below [`crate::system_manager::SYSTEM_MANAGER_ROOT`] the profile and
/// its GC root point at the generation, and the state file is the one the
/// engine leaves.
fn set_up_system_manager(run: &Path, generation: &Path) -> Result<()> {
    use crate::system_manager::{PROFILE, STATE_FILE, initial_state};
    let sw = run.join("system-manager/sw");
    fs::create_dir_all(&sw).map_err(io("creating", &sw))?;
    symlink("/run/system-manager", run.join("current-system")).map_err(io("linking", run.join("current-system")))?;
    let root = run.join("testbed/system-manager");
    let profile = root.join(PROFILE);
    let profiles = profile.parent().unwrap_or(&root).to_path_buf();
    let gcroots = root.join("nix/var/nix/gcroots");
    let state = root.join(STATE_FILE);
    for dir in [&profiles, &gcroots, &state.parent().unwrap_or(&root).to_path_buf()] {
        fs::create_dir_all(dir).map_err(io("creating", dir))?;
    }
    let first = profiles.join("system-manager-1-link");
    symlink(generation, &first).map_err(io("linking", &first))?;
    symlink("system-manager-1-link", &profile).map_err(io("linking", &profile))?;
    let gcroot = gcroots.join("system-manager-current");
    symlink(generation, &gcroot).map_err(io("linking", &gcroot))?;
    fs::write(&state, initial_state(generation)?).map_err(io("writing", &state))
}

fn build_context(root: &Path, keys: &SshKeys, port: u16) -> BuildContext {
    BuildContext {
        store: Some(root.join("store")),
        sshd: Some(SshdSettings {
            port,
            host_key: keys.host_key.clone(),
            authorized_keys: keys.authorized_keys.clone(),
        }),
    }
}

/// Copies the named units (and alias symlinks among them) from the
/// distribution's unit directory. A name that does not exist there is
/// skipped: the set differs a little between systemd versions.
fn copy_distro_units(from: &Path, to: &Path, names: &[String]) -> Result<()> {
    for name in names {
        let src = from.join(name);
        let dst = to.join(name);
        match fs::symlink_metadata(&src) {
            Err(_) => continue,
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = fs::read_link(&src).map_err(io("reading", &src))?;
                if target.is_relative() && target.components().count() == 1 {
                    // An alias within the directory (e.g.
                    // dbus-org.freedesktop.login1.service): keep it an alias.
                    symlink(&target, &dst).map_err(io("linking", &dst))?;
                } else {
                    fs::copy(&src, &dst).map_err(io("copying", &src))?;
                }
            }
            Ok(_) => {
                fs::copy(&src, &dst).map_err(io("copying", &src))?;
            }
        }
    }
    // The journal and the bus sockets belong to the boot transaction, as on
    // a real system: a unit that starts at boot must find the journal's
    // socket, or its output is lost.
    for (target, unit) in BOOT_WANTS {
        if to.join(unit).exists() {
            let dir = to.join(format!("{target}.wants"));
            fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
            let link = dir.join(unit);
            symlink(format!("../{unit}"), &link).map_err(io("linking", &link))?;
        }
    }
    Ok(())
}

/// The `.wants` links the copied units get (when they were copied).
const BOOT_WANTS: &[(&str, &str)] = &[
    ("sockets.target", "systemd-journald.socket"),
    ("sockets.target", "systemd-journald-dev-log.socket"),
    ("sysinit.target", "systemd-journald.service"),
    ("sockets.target", "dbus.socket"),
];

/// The cgroup hierarchies systemd tracks processes in: the unified one, and
/// on a hybrid or legacy host also the named `systemd` one.
fn cgroup_roots() -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    if base.join("cgroup.procs").exists() {
        return vec![base.to_path_buf()];
    }
    ["unified", "systemd"].iter().map(|h| base.join(h)).filter(|p| p.join("cgroup.procs").exists()).collect()
}

/// Removes `<hierarchy>/<name>` and everything below it in every mounted
/// cgroup hierarchy, deepest first, retrying while the kernel still
/// releases the killed processes.
fn remove_cgroups(name: &str, timeout: Duration) -> Result<()> {
    let base = Path::new("/sys/fs/cgroup");
    let mut tops = vec![base.join(name)];
    if let Ok(entries) = fs::read_dir(base) {
        tops.extend(entries.flatten().map(|e| e.path().join(name)));
    }
    let deadline = Instant::now() + timeout;
    for top in tops.into_iter().filter(|p| p.is_dir()) {
        loop {
            let mut dirs = Vec::new();
            collect_dirs(&top, &mut dirs);
            dirs.reverse();
            let failed = dirs.iter().filter(|d| fs::remove_dir(d).is_err()).count();
            if failed == 0 || !top.exists() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout { what: format!("removing cgroup {}", top.display()), timeout });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// Removes what killed test processes left behind: cgroups and
/// directories named after a process ID that no longer exists. A cgroup
/// that still holds a process cannot be removed and stays.
fn sweep_stale() {
    let dead = |name: &str| -> bool {
        name.strip_prefix("testbed-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    let base = Path::new("/sys/fs/cgroup");
    let mut hierarchies = vec![base.to_path_buf()];
    if let Ok(entries) = fs::read_dir(base) {
        hierarchies.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    for hierarchy in hierarchies {
        let Ok(entries) = fs::read_dir(&hierarchy) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_str().is_some_and(dead) {
                let mut dirs = Vec::new();
                collect_dirs(&entry.path(), &mut dirs);
                for dir in dirs.iter().rev() {
                    let _ = fs::remove_dir(dir);
                }
            }
        }
    }
    if let Ok(entries) = fs::read_dir(std::env::temp_dir()) {
        for entry in entries.flatten() {
            let is_bed = entry.path().join("run/testbed/marker").exists();
            if is_bed && entry.file_name().to_str().is_some_and(dead) {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// Collects `dir` and its subdirectories, parents before children.
fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&entry.path(), out);
            }
        }
    }
}

/// Quotes a path for a POSIX shell script.
fn sh_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

/// The script that builds the namespace's view of the system and becomes
/// systemd, with `/etc/systemd/system` and `/etc/systemd/system.conf`
/// linked to `links`.
fn boot_script(
    root: &Path,
    links: &(PathBuf, PathBuf),
    cgroup_roots: &[PathBuf],
    cgroup: &str,
    target: &str,
) -> String {
    let mut join = String::new();
    for hierarchy in cgroup_roots {
        let dir = hierarchy.join(cgroup);
        join.push_str(&format!("mkdir -p {d}\necho 0 > {d}/cgroup.procs\n", d = sh_quote(&dir)));
    }
    format!(
        r#"#!/bin/sh
# Boot script of a test bed: runs as PID 1 of fresh PID and mount
# namespaces, prepares the view of the system, then becomes systemd.
set -eu
mount --make-rprivate /
{join}mount --bind {run} /run
mount -t tmpfs -o mode=0755 testbed-etc-systemd /etc/systemd
ln -s {unit_dir} /etc/systemd/system
ln -s {system_conf} /etc/systemd/system.conf
mount -t tmpfs -o mode=0755 testbed-generators /lib/systemd/system-generators
mount --bind {units} /lib/systemd/system
echo "testbed: exec systemd --unit={target}"
# PID 1 logs to /dev/console, the host's (a slow serial port on a VM):
# the info lines of every job (Started, Stopped...) halved the speed of a
# switch of a thousand units. Warnings and errors still show there.
exec /lib/systemd/systemd --system --unit={target} --log-target=console --log-level=notice --show-status=false
"#,
        run = sh_quote(&root.join("run")),
        unit_dir = sh_quote(&links.0),
        system_conf = sh_quote(&links.1),
        units = sh_quote(&root.join("distro-units")),
    )
}
