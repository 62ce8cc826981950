//! Throwaway SSH keys and a ticking SSH session, the thing a switch must not
//! interrupt.
//!
//! [`SshSession`] runs a real `ssh` client against the test bed's sshd; the
//! remote shell prints `tick <n>` every interval. A reader thread stamps each
//! line with the time it arrived, so a test can check afterwards that the
//! ticks kept coming, numbered without holes, through a switch.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Error, Result, io};
use crate::exec;

/// The key material of one test bed: a host key for sshd and a client key
/// admitted for root.
#[derive(Clone, Debug)]
pub struct SshKeys {
    /// sshd's private host key.
    pub host_key: PathBuf,
    /// The client's private key.
    pub client_key: PathBuf,
    /// An `authorized_keys` file holding the client's public key.
    pub authorized_keys: PathBuf,
}

impl SshKeys {
    /// Makes fresh ed25519 keys in `dir` with `ssh-keygen`.
    pub fn generate(dir: &Path) -> Result<SshKeys> {
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        let host_key = dir.join("ssh_host_ed25519_key");
        let client_key = dir.join("id_ed25519");
        for (key, comment) in [(&host_key, "testbed-host"), (&client_key, "testbed-client")] {
            exec::run(
                Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"]).arg(key),
                Duration::from_secs(30),
            )?
            .check()?;
        }
        let public = client_key.with_extension("pub");
        let authorized_keys = dir.join("authorized_keys");
        std::fs::copy(&public, &authorized_keys).map_err(io("copying", &public))?;
        Ok(SshKeys { host_key, client_key, authorized_keys })
    }
}

/// Picks a loopback TCP port that is free right now. Another process could
/// take it before sshd binds it; the kernel hands out ephemeral ports in a
/// rotating order, so parallel test beds do not collide in practice.
pub fn free_port() -> Result<u16> {
    // Ports handed out before in this process are never handed out again,
    // even when they are free by now: the bed that got one may not have
    // bound it yet.
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..64 {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(io("binding", "127.0.0.1:0"))?;
        let port = listener.local_addr().map_err(io("reading the address of", "127.0.0.1:0"))?.port();
        if given.insert(port) {
            return Ok(port);
        }
    }
    Err(Error::Unsupported("no free loopback port found".to_owned()))
}

/// The `ssh` command line that logs in as root to the test bed's sshd and
/// runs `remote` (without starting it).
pub fn ssh_command(port: u16, client_key: &Path, remote: &str) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.arg("-p")
        .arg(port.to_string())
        .arg("-i")
        .arg(client_key)
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "ServerAliveInterval=1",
            "-o",
            "ServerAliveCountMax=5",
            "-T",
            "root@127.0.0.1",
        ])
        .arg(remote);
    cmd
}

/// One `tick <n>` line of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tick {
    /// The number the remote shell printed.
    pub n: u64,
    /// When the line arrived, relative to the session's start.
    pub at: Duration,
}

/// What a session did, once it is over (see [`SshSession::finish`]).
#[derive(Clone, Debug)]
pub struct SessionReport {
    /// Every tick, in arrival order.
    pub ticks: Vec<Tick>,
    /// Lines that were not ticks (the remote shell's PID line, errors).
    pub other: Vec<String>,
    /// The remote shell's PID inside the test bed, from the first line.
    pub remote_pid: Option<u32>,
    /// Whether the connection was still up when the session was finished
    /// (false when it dropped by itself).
    pub alive_at_end: bool,
    /// ssh's standard error.
    pub stderr: String,
}

impl SessionReport {
    /// The longest time between two consecutive ticks (and between the
    /// last tick and the end of the session).
    pub fn max_gap(&self) -> Duration {
        self.ticks.windows(2).map(|w| w[1].at.saturating_sub(w[0].at)).max().unwrap_or_default()
    }

    /// Whether the tick numbers run 1, 2, 3, ... without a hole or a
    /// restart.
    pub fn consecutive(&self) -> bool {
        self.ticks.iter().enumerate().all(|(i, t)| t.n == i as u64 + 1)
    }

    /// Ticks that arrived after `instant` (relative to the session start).
    pub fn ticks_after(&self, at: Duration) -> usize {
        self.ticks.iter().filter(|t| t.at > at).count()
    }
}

#[derive(Default)]
struct Shared {
    ticks: Vec<Tick>,
    other: Vec<String>,
    eof: bool,
}

/// A running SSH session that prints a tick every interval. Dropping it
/// kills the `ssh` client.
pub struct SshSession {
    child: Child,
    started: Instant,
    shared: Arc<Mutex<Shared>>,
    reader: Option<thread::JoinHandle<()>>,
    stderr: Option<thread::JoinHandle<String>>,
}

impl SshSession {
    /// Opens the session: `ssh` to `127.0.0.1:<port>` as root, running a
    /// shell loop that first prints `pid <remote shell pid>`, then
    /// `tick 1`, `tick 2`, ... every `interval`, forever.
    pub fn start(port: u16, client_key: &Path, interval: Duration) -> Result<SshSession> {
        let remote =
            format!("echo pid $$; i=0; while :; do i=$((i+1)); echo tick $i; sleep {}; done", interval.as_secs_f64());
        let mut cmd = ssh_command(port, client_key, &remote);
        let command = exec::describe(&cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| Error::Spawn { command, source })?;
        let started = Instant::now();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let stdout = child.stdout.take();
        let reader = {
            let shared = Arc::clone(&shared);
            thread::spawn(move || {
                let Some(stdout) = stdout else { return };
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let at = started.elapsed();
                    let mut shared = shared.lock().unwrap_or_else(|e| e.into_inner());
                    match line.strip_prefix("tick ").and_then(|n| n.trim().parse().ok()) {
                        Some(n) => shared.ticks.push(Tick { n, at }),
                        None => shared.other.push(line),
                    }
                }
                shared.lock().unwrap_or_else(|e| e.into_inner()).eof = true;
            })
        };
        let stderr = child.stderr.take().map(|mut pipe| {
            thread::spawn(move || {
                let mut text = String::new();
                let _ = std::io::Read::read_to_string(&mut pipe, &mut text);
                text
            })
        });
        Ok(SshSession { child, started, shared, reader: Some(reader), stderr })
    }

    /// Time since the session started (the clock of [`Tick::at`]).
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The number of ticks so far.
    pub fn tick_count(&self) -> usize {
        self.shared.lock().unwrap_or_else(|e| e.into_inner()).ticks.len()
    }

    /// Waits until at least `n` ticks have arrived; fails when the
    /// connection ends first or `timeout` passes.
    pub fn wait_for_ticks(&mut self, n: usize, timeout: Duration) -> Result<()> {
        let what = format!("{n} ticks of the SSH session");
        exec::poll(&what, timeout, || {
            let shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            if shared.ticks.len() >= n {
                return Ok(Some(()));
            }
            if shared.eof {
                return Err(Error::Failed {
                    command: "ssh session".to_owned(),
                    status: format!("ended after {} ticks", shared.ticks.len()),
                    stdout: shared.other.join("\n"),
                    stderr: String::new(),
                });
            }
            Ok(None)
        })
    }

    /// Ends the session (kills the client when it is still connected) and
    /// returns what it saw.
    pub fn finish(mut self) -> SessionReport {
        let alive_at_end =
            matches!(self.child.try_wait(), Ok(None)) && !self.shared.lock().unwrap_or_else(|e| e.into_inner()).eof;
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let stderr = self.stderr.take().and_then(|h| h.join().ok()).unwrap_or_default();
        let shared = std::mem::take(&mut *self.shared.lock().unwrap_or_else(|e| e.into_inner()));
        let remote_pid = shared.other.iter().find_map(|l| l.strip_prefix("pid ")?.trim().parse().ok());
        SessionReport { ticks: shared.ticks, other: shared.other, remote_pid, alive_at_end, stderr }
    }
}

impl Drop for SshSession {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
