//! A launchd simulator and nix-darwin generations, for tests of the
//! nix-darwin path on Linux, without root and without a Mac.
//!
//! - [`Simulator`]: a stand-in `launchctl` program (`launchctl.sh`, bash
//!   and `xmllint`) that keeps each domain's jobs in a directory, starts a
//!   real process for every job that runs (so PIDs are real and can be
//!   compared), gives launchctl's documented exit codes (113, 3, 5, 36, 37)
//!   and finishes `bootout` asynchronously. Faults: a bootstrap that fails
//!   with a given code a given number of times
//!   ([`Simulator::fail_bootstrap`]); a job that ignores SIGTERM is killed
//!   after its plist's `ExitTimeOut`. Dropping it kills every process it
//!   started, by process group. It can also write its commands into the
//!   marker file of an activation ([`Simulator::journal_to`]), so that a
//!   test sees in which order the two ran.
//! - [`DarwinGeneration`]: a nix-darwin toplevel with the real layout
//!   (`Library/LaunchDaemons`, `user/Library/LaunchAgents`, `etc/nix`,
//!   `systemConfig`, `darwin-version`) and an `activate` laid out as
//!   nix-darwin's, section comments included, whose steps other than the
//!   launchd ones only append their name to a marker file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result, io};

/// The simulator's program text.
const LAUNCHCTL: &str = include_str!("launchctl.sh");

/// A launchd simulator in a temporary directory.
#[derive(Debug)]
pub struct Simulator {
    dir: tempfile::TempDir,
}

impl Simulator {
    /// A simulator with no job loaded. Needs `bash`, `setsid` and
    /// `xmllint` (libxml2-utils).
    pub fn new() -> Result<Simulator> {
        if !Path::new("/usr/bin/xmllint").exists() && !Path::new("/bin/xmllint").exists() {
            return Err(Error::Unsupported("the launchd simulator needs xmllint (Debian: libxml2-utils)".to_owned()));
        }
        let dir = tempfile::Builder::new()
            .prefix("launchd-sim.")
            .tempdir()
            .map_err(io("creating", "a temporary directory"))?;
        std::fs::create_dir_all(dir.path().join("bin")).map_err(io("writing", dir.path()))?;
        std::fs::create_dir_all(dir.path().join("state")).map_err(io("writing", dir.path()))?;
        crate::exec::write_executable(&dir.path().join("bin/launchctl"), LAUNCHCTL)?;
        Ok(Simulator { dir })
    }

    /// The `launchctl` program to hand to the code under test.
    pub fn launchctl(&self) -> PathBuf {
        self.dir.path().join("bin/launchctl")
    }

    /// The directory that holds `launchctl` (to put first on `PATH`).
    pub fn bin_dir(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    fn job_dir(&self, target: &str) -> PathBuf {
        let key = match target.split_once('/') {
            Some(("system", label)) => format!("system/{label}"),
            Some(("gui", rest)) => match rest.split_once('/') {
                Some((uid, label)) => format!("gui_{uid}/{label}"),
                None => rest.to_owned(),
            },
            _ => target.to_owned(),
        };
        self.dir.path().join("state/domains").join(key)
    }

    /// Whether a job is loaded (`system/<label>`, `gui/<uid>/<label>`).
    pub fn loaded(&self, target: &str) -> bool {
        self.job_dir(target).is_dir()
    }

    /// The PID of a job's running process, if it runs.
    pub fn pid(&self, target: &str) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.job_dir(target).join("pid")).ok()?.trim().parse().ok()?;
        let alive = rustix::process::Pid::from_raw(i32::try_from(pid).ok()?)
            .is_some_and(|p| rustix::process::test_kill_process(p).is_ok());
        alive.then_some(pid)
    }

    /// How often a job was started.
    pub fn runs(&self, target: &str) -> u32 {
        std::fs::read_to_string(self.job_dir(target).join("runs")).ok().and_then(|r| r.trim().parse().ok()).unwrap_or(0)
    }

    /// Every command the simulator was given, one line each, in order.
    pub fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("state/calls.log"))
            .map(|t| t.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// Whether a job has a persisted "disabled" override (`launchctl
    /// disable`), by service target.
    pub fn disabled(&self, target: &str) -> bool {
        let Some((domain, label)) = target.rsplit_once('/') else { return false };
        self.dir.path().join("state/disabled").join(domain.replace('/', "_")).join(label).exists()
    }

    /// Also appends every command, as `launchctl ARGS`, to `path` (the
    /// marker file of a generation's activation, to see the order of both).
    pub fn journal_to(&self, path: &Path) -> Result<()> {
        let file = self.dir.path().join("state/journal");
        std::fs::write(&file, path.display().to_string()).map_err(io("writing", &file))
    }

    /// Makes the next `times` bootstraps of `label` fail with `code` (37:
    /// operation in progress; 5: I/O error).
    pub fn fail_bootstrap(&self, label: &str, code: i32, times: u32) -> Result<()> {
        let path = self.dir.path().join("state/faults").join(format!("bootstrap-{label}"));
        std::fs::create_dir_all(path.parent().unwrap_or(Path::new("/"))).map_err(io("writing", &path))?;
        std::fs::write(&path, format!("{code} {times}\n")).map_err(io("writing", &path))
    }

    /// Runs the simulator's `launchctl` with `args`, as a test's own
    /// set-up (loading the jobs of the running generation).
    pub fn run(&self, args: &[&str]) -> Result<crate::Output> {
        let mut cmd = std::process::Command::new(self.launchctl());
        cmd.args(args);
        crate::exec::run(&mut cmd, Duration::from_secs(30))
    }

    /// Waits until a job has a running process; its PID.
    pub fn wait_running(&self, target: &str) -> Result<u32> {
        for _ in 0..500 {
            if let Some(pid) = self.pid(target) {
                return Ok(pid);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(Error::Timeout { what: format!("{target} to start"), timeout: Duration::from_secs(5) })
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let state = self.dir.path().join("state");
        let mut groups = Vec::new();
        if let Ok(text) = std::fs::read_to_string(state.join("teardown-pids")) {
            groups.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()).map(|p| (p, false)));
        }
        let mut dirs = vec![state.join("domains")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.file_name().is_some_and(|n| n == "pgid")
                    && let Some(p) = std::fs::read_to_string(&path).ok().and_then(|t| t.trim().parse().ok())
                {
                    groups.push((p, true));
                }
            }
        }
        // The teardowns first, so that none starts anew; then each job's
        // process group (the job and its supervisor), by its id.
        for (pid, group) in groups {
            let Some(pid) = rustix::process::Pid::from_raw(pid) else { continue };
            if group {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            } else {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

/// Where a job's plist goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `launchd.daemons`: `Library/LaunchDaemons`, the `system` domain.
    Daemon,
    /// `launchd.user.agents`: `user/Library/LaunchAgents`, `gui/<uid>`.
    UserAgent,
}

/// One launchd job of a generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DarwinJob {
    /// Where it goes.
    pub kind: Kind,
    /// Its label.
    pub label: String,
    /// `ProgramArguments`.
    pub program: Vec<String>,
    /// `KeepAlive` (and so started at load).
    pub keep_alive: bool,
    /// `ExitTimeOut`, seconds.
    pub exit_timeout: Option<u32>,
}

impl DarwinJob {
    /// A daemon that runs `/bin/sh -c SCRIPT`, kept alive.
    pub fn daemon(label: &str, script: &str) -> DarwinJob {
        DarwinJob {
            kind: Kind::Daemon,
            label: label.to_owned(),
            program: vec!["/bin/sh".to_owned(), "-c".to_owned(), script.to_owned()],
            keep_alive: true,
            exit_timeout: Some(5),
        }
    }

    /// A user agent that runs `/bin/sh -c SCRIPT`, kept alive.
    pub fn user_agent(label: &str, script: &str) -> DarwinJob {
        DarwinJob { kind: Kind::UserAgent, ..DarwinJob::daemon(label, script) }
    }

    /// The plist, as nix-darwin's `toPlist` writes it.
    pub fn plist(&self) -> String {
        let mut s = String::from(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n<plist version=\"1.0\">\n<dict>\n",
        );
        if let Some(t) = self.exit_timeout {
            s.push_str(&format!("\t<key>ExitTimeOut</key>\n\t<integer>{t}</integer>\n"));
        }
        s.push_str(&format!("\t<key>KeepAlive</key>\n\t<{}/>\n", self.keep_alive));
        s.push_str(&format!("\t<key>Label</key>\n\t<string>{}</string>\n", xml(&self.label)));
        s.push_str("\t<key>ProgramArguments</key>\n\t<array>\n");
        for arg in &self.program {
            s.push_str(&format!("\t\t<string>{}</string>\n", xml(arg)));
        }
        s.push_str("\t</array>\n</dict>\n</plist>\n");
        s
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The activation steps other than the launchd ones, in nix-darwin's
/// order, each with the line its section starts with. The fixture's
/// sections only append their name to the marker file.
pub const STEPS_BEFORE: &[(&str, &str)] = &[
    ("preActivation", "# preActivation"),
    ("checks", "echo \"checking...\" >&2"),
    ("createRun", "echo \"setting up /run...\" >&2"),
    ("extraActivation", "# extraActivation"),
    ("groups", "echo \"setting up groups...\" >&2"),
    ("users", "echo \"setting up users...\" >&2"),
    ("applications", "echo \"setting up /Applications/Nix Apps...\" >&2"),
    ("pam", "echo \"setting up pam...\" >&2"),
    ("patches", "echo \"applying patches...\" >&2"),
    ("openssh", "# openssh"),
    ("etc", "echo \"setting up /etc...\" >&2"),
    ("defaults", "echo \"system defaults...\" >&2"),
    ("userDefaults", "echo \"user defaults...\" >&2"),
];

/// The steps after the nix-daemon one.
pub const STEPS_AFTER: &[(&str, &str)] = &[
    ("time", "echo \"configuring time...\" >&2"),
    ("networking", "echo \"configuring networking...\" >&2"),
    ("power", "echo \"configuring power...\" >&2"),
    ("keyboard", "echo \"configuring keyboard...\" >&2"),
    ("fonts", "echo \"configuring fonts...\" >&2"),
    ("nvram", "echo \"setting nvram variables...\" >&2"),
    ("homebrew", "echo \"Homebrew bundle...\" >&2"),
    ("postActivation", "# postActivation"),
];

/// A nix-darwin generation for tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DarwinGeneration {
    /// Its name (`darwin-version`), which also names its store path.
    pub name: String,
    /// Its jobs.
    pub jobs: Vec<DarwinJob>,
    /// `etc/nix/nix.conf`.
    pub nix_conf: String,
    /// The primary user (the user agents' owner).
    pub primary_user: String,
    /// A step whose section fails (`false` after its marker), to test an
    /// activation that fails half-way.
    pub fail_in: Option<String>,
    /// `services.openssh.enable`: `Some` appends nix-darwin's Remote Login
    /// block to the launchd section.
    pub openssh: Option<bool>,
}

impl DarwinGeneration {
    /// An empty generation whose primary user is `user`.
    pub fn new(name: &str, user: &str) -> DarwinGeneration {
        DarwinGeneration {
            name: name.to_owned(),
            jobs: Vec::new(),
            nix_conf: "experimental-features = nix-command flakes\n".to_owned(),
            primary_user: user.to_owned(),
            fail_in: None,
            openssh: None,
        }
    }

    /// With one more job (replacing one of the same label).
    pub fn job(mut self, job: DarwinJob) -> DarwinGeneration {
        self.jobs.retain(|j| j.label != job.label);
        self.jobs.push(job);
        self
    }

    /// Without the job of this label.
    pub fn without(mut self, label: &str) -> DarwinGeneration {
        self.jobs.retain(|j| j.label != label);
        self
    }

    /// The same generation under another name.
    pub fn renamed(&self, name: &str) -> DarwinGeneration {
        DarwinGeneration { name: name.to_owned(), ..self.clone() }
    }

    /// Writes the generation into `store` (a directory standing for
    /// `/nix/store`): its plists as store files linked from the toplevel,
    /// as nix-darwin builds them. Its `activate` appends each step's name
    /// to `markers` and takes `/run/current-system` to be below `root`.
    /// Returns the toplevel.
    pub fn write(&self, store: &Path, root: &Path, markers: &Path) -> Result<PathBuf> {
        let toplevel = store.join(format!("{}-darwin-system-{}", hash(&self.name), self.name));
        let mkdir = |p: &Path| std::fs::create_dir_all(p).map_err(io("writing", p));
        let write = |p: &Path, text: &str| std::fs::write(p, text).map_err(io("writing", p));
        mkdir(&toplevel.join("etc/nix"))?;
        for dir in ["Library/LaunchDaemons", "Library/LaunchAgents", "user/Library/LaunchAgents"] {
            mkdir(&toplevel.join(dir))?;
        }
        for job in &self.jobs {
            let text = job.plist();
            let file = store.join(format!("{}-{}.plist", hash(&text), job.label));
            write(&file, &text)?;
            let dir = match job.kind {
                Kind::Daemon => "Library/LaunchDaemons",
                Kind::UserAgent => "user/Library/LaunchAgents",
            };
            let link = toplevel.join(dir).join(format!("{}.plist", job.label));
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&file, &link).map_err(io("writing", &link))?;
        }
        write(&toplevel.join("etc/nix/nix.conf"), &self.nix_conf)?;
        write(&toplevel.join("systemConfig"), &toplevel.display().to_string())?;
        write(&toplevel.join("darwin-version"), &self.name)?;
        write(&toplevel.join("system"), "aarch64-darwin")?;
        crate::exec::write_executable(&toplevel.join("activate"), &self.activate(&toplevel, root, markers))?;
        Ok(toplevel)
    }

    /// The `activate` script, laid out as nix-darwin's
    /// (`modules/system/activation-scripts.nix`, `modules/system/launchd.nix`,
    /// `modules/nix/default.nix`).
    pub fn activate(&self, toplevel: &Path, root: &Path, markers: &Path) -> String {
        let out = toplevel.display();
        let user = &self.primary_user;
        let markers = markers.display();
        let mut s = format!(
            "#!/usr/bin/env -S -i /bin/bash\n# shellcheck shell=bash\n# shellcheck disable=SC2096\n\nset -e\nset -o pipefail\n\nPATH=\"/usr/bin:/bin:/usr/sbin:/sbin\"\n\nexport PATH\nexport USER=root\nexport LOGNAME=root\nexport HOME=~root\nexport SHELL=$BASH\nexport LANG=C\nexport LC_CTYPE=UTF-8\n\nsystemConfig={out}\n\n# Ensure a consistent umask.\numask 0022\n\ncd /\n\n"
        );
        let section = |s: &mut String, (name, first): &(&str, &str)| {
            s.push_str(&format!("{first}\necho {name} >> '{markers}'\n"));
            if self.fail_in.as_deref() == Some(*name) {
                s.push_str("false\n");
            }
            s.push('\n');
        };
        for step in STEPS_BEFORE {
            section(&mut s, step);
        }
        // launchd: as nix-darwin writes it; never run by safe-switch.
        s.push_str("# Set up launchd services in /Library/LaunchAgents and /Library/LaunchDaemons\necho \"setting up launchd services...\" >&2\n\n");
        for job in self.jobs.iter().filter(|j| j.kind == Kind::Daemon) {
            let t = format!("{}.plist", job.label);
            s.push_str(&format!(
                "if ! diff '{out}/Library/LaunchDaemons/{t}' '/Library/LaunchDaemons/{t}' &> /dev/null; then\n  if test -f '/Library/LaunchDaemons/{t}'; then\n    echo \"reloading service $(basename {t} .plist)\" >&2\n    launchctl unload '/Library/LaunchDaemons/{t}' || true\n  else\n    echo \"creating service $(basename {t} .plist)\" >&2\n  fi\n  if test -L '/Library/LaunchDaemons/{t}'; then\n    rm '/Library/LaunchDaemons/{t}'\n  fi\n  cp -f '{out}/Library/LaunchDaemons/{t}' '/Library/LaunchDaemons/{t}'\n  launchctl load -w '/Library/LaunchDaemons/{t}'\nfi\n"
            ));
        }
        for dir in ["LaunchAgents", "LaunchDaemons"] {
            s.push_str(&format!(
                "\nfor f in /run/current-system/Library/{dir}/*; do\n  [[ -e \"$f\" ]] || break  # handle when directory is empty\n  f=${{f#/run/current-system/Library/{dir}/}}\n\n  if [[ ! -e \"{out}/Library/{dir}/$f\" ]]; then\n    echo \"removing service $(basename \"$f\" .plist)\" >&2\n    launchctl unload \"/Library/{dir}/$f\" || true\n    if [[ -e \"/Library/{dir}/$f\" ]]; then\n      rm -f \"/Library/{dir}/$f\"\n    fi\n  fi\ndone\n"
            ));
        }
        // services.openssh.enable, as modules/services/openssh.nix appends
        // it to the launchd section.
        match self.openssh {
            Some(true) => s.push_str("if [[ \"$(systemsetup -getremotelogin | sed 's/Remote Login: //')\" == \"Off\" ]]; then\n  launchctl enable system/com.openssh.sshd\n  launchctl bootstrap system /System/Library/LaunchDaemons/ssh.plist\nfi\n"),
            Some(false) => s.push_str("if [[ \"$(systemsetup -getremotelogin | sed 's/Remote Login: //')\" == \"On\" ]]; then\n  launchctl bootout system/com.openssh.sshd\n  launchctl disable system/com.openssh.sshd\nfi\n"),
            None => {}
        }
        s.push_str(&format!(
            "\necho launchd >> '{markers}'\n\n# Set up user launchd services in ~/Library/LaunchAgents\necho \"setting up user launchd services...\"\n\nsudo --user={user} -- mkdir -p ~{user}/Library/LaunchAgents\n"
        ));
        for job in self.jobs.iter().filter(|j| j.kind == Kind::UserAgent) {
            let t = format!("{}.plist", job.label);
            s.push_str(&format!(
                "if ! diff {out}/user/Library/LaunchAgents/{t} ~{user}/Library/LaunchAgents/{t} &> /dev/null; then\n  if test -f ~{user}/Library/LaunchAgents/{t}; then\n    echo \"reloading user service $(basename {t} .plist)\" >&2\n    launchctl asuser \"$(id -u -- {user})\" sudo --user={user} -- launchctl unload ~{user}/Library/LaunchAgents/{t} || true\n  else\n    echo \"creating user service $(basename {t} .plist)\" >&2\n  fi\n  sudo --user={user} -- cp -f '{out}/user/Library/LaunchAgents/{t}' ~{user}/Library/LaunchAgents/{t}\n  launchctl asuser \"$(id -u -- {user})\" sudo --user={user} -- launchctl load -w ~{user}/Library/LaunchAgents/{t}\nfi\n"
            ));
        }
        s.push_str(&format!(
            "echo userLaunchd >> '{markers}'\n\n# Follow up on the `/etc/nix/nix.custom.conf` check.\n# TODO: Use a more generalized file placement mechanism for this.\nif [[ -e /etc/nix/nix.custom.conf.safe-switch-test ]]; then\n  mv /etc/nix/nix.custom.conf{{,.before-nix-darwin}}\nfi\necho nix-daemon >> '{markers}'\n\nif ! diff /etc/nix/nix.conf /run/current-system/etc/nix/nix.conf &> /dev/null || ! diff /etc/nix/machines /run/current-system/etc/nix/machines &> /dev/null; then\n    echo \"reloading nix-daemon...\" >&2\n    launchctl kill HUP system/org.nixos.nix-daemon\nfi\nwhile ! nix-store --store daemon -q --hash /bin/bash &>/dev/null; do\n    echo \"waiting for nix-daemon\" >&2\n    launchctl kickstart system/org.nixos.nix-daemon\ndone\n\n"
        ));
        for step in STEPS_AFTER {
            section(&mut s, step);
        }
        let current = root.join("run/current-system");
        s.push_str(&format!(
            "# Make this configuration the current configuration.\n# The readlink is there to ensure that when $systemConfig = /system\n# (which is a symlink to the store), /run/current-system is still\n# used as a garbage collection root.\nln -sfn \"$(readlink -f \"$systemConfig\")\" {}\n\n# Prevent the current configuration from being garbage-collected.\nif [[ -d /nix/var/nix/gcroots.safe-switch-test ]]; then\n  ln -sfn /run/current-system /nix/var/nix/gcroots/current-system\nfi\n",
            current.display()
        ));
        s
    }
}

/// 32 characters of Nix's base-32 alphabet, from `text`.
fn hash(text: &str) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut out = String::new();
    for round in 0..32u64 {
        for b in text.bytes().chain(round.to_le_bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        out.push(char::from(ALPHABET[(h % 32) as usize]));
    }
    out
}
