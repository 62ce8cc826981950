//! The example generations of the demo: a small CI runner host.
//!
//! Generation A is the running host: sshd (which `Requires=` its host
//! keys), a GitLab-runner-like service with a build running under it, a
//! node exporter, and a collectd that the next generation drops.
//! Generation B is what a CI overlay makes of it: the runner's
//! concurrency goes up and it now wants Docker, a `docker.service` appears,
//! the exporter gets a new flag, collectd is gone, sshd gets a hardening
//! option and its host-key unit changes (so restarting that unit would take
//! sshd down with it).
//!
//! Without protection a switch from A to B restarts sshd, its host-key
//! unit and the runner (whose restart kills the build); an SSH session
//! survives even that, because sshd has `KillMode=process`, as NixOS's
//! has. With `--protect sshd,gitlab-runner` it restarts the exporter,
//! starts Docker, stops collectd, and defers everything that would touch
//! sshd or the runner.

use std::path::Path;

use crate::error::{Result, io};
use crate::generation::{BuildContext, Generation, SshdSettings};

/// sshd's relation to its host keys, the same in both generations.
const SSHD_UNIT_LINES: &str = "Requires=ssh-host-keys.service\nAfter=ssh-host-keys.service\n";

fn host_keys(version: u32) -> String {
    format!(
        "[Unit]\nDescription=Generate SSH host keys\n\n[Service]\nType=oneshot\nRemainAfterExit=yes\n\
         Environment=KEY_TYPES=ed25519 KEYS_VERSION={version}\nExecStart=/bin/true\n"
    )
}

fn runner(concurrent: u32, extra_unit_lines: &str) -> String {
    // The runner's "build" is a child process that lives as long as the
    // runner: restarting the runner would kill it, as it would kill a real
    // CI job.
    format!(
        "[Unit]\nDescription=GitLab Runner\nAfter=network.target\n{extra_unit_lines}\n\
         [Service]\nEnvironment=CONCURRENT={concurrent}\n\
         ExecStart=/bin/sh -c 'sleep infinity & exec sleep infinity'\n\
         KillMode=mixed\n"
    )
}

fn exporter(flags: &str) -> String {
    format!(
        "[Unit]\nDescription=Prometheus node exporter\n\n[Service]\n\
         Environment=\"ARGS={flags}\"\nExecStart=/bin/sleep infinity\n"
    )
}

/// The running CI runner host.
pub fn ci_runner_a() -> Generation {
    Generation::new("a")
        .sshd_with(SSHD_UNIT_LINES, "")
        .service("ssh-host-keys.service", host_keys(1))
        .service("gitlab-runner.service", runner(4, ""))
        .service("node-exporter.service", exporter("--collector.systemd"))
        .service(
            "collectd.service",
            "[Unit]\nDescription=Statistics collection daemon\n\n[Service]\nExecStart=/bin/sleep infinity\n",
        )
}

/// The host with the CI overlay applied.
pub fn ci_runner_b() -> Generation {
    ci_runner_a()
        .renamed("b")
        .sshd_with(SSHD_UNIT_LINES, "Environment=SSHD_OPTS=-oMaxStartups=20")
        .service("ssh-host-keys.service", host_keys(2))
        .service("gitlab-runner.service", runner(8, "Wants=docker.service\nAfter=docker.service\n"))
        .service(
            "docker.service",
            "[Unit]\nDescription=Docker Application Container Engine\n\n[Service]\n\
             Environment=DOCKER_OPTS=--storage-driver=overlay2\nExecStart=/bin/sleep infinity\n",
        )
        .service("node-exporter.service", exporter("--collector.systemd --collector.processes"))
        .without("collectd.service")
}

/// The sshd settings of the exported examples: the usual port and paths of
/// a real host (the examples are read, not booted).
fn exported_sshd() -> SshdSettings {
    SshdSettings {
        port: 22,
        host_key: "/etc/ssh/ssh_host_ed25519_key".into(),
        authorized_keys: "/etc/ssh/authorized_keys.d/%u".into(),
    }
}

/// Writes A and B as self-contained directories `<dir>/a` and `<dir>/b`
/// (plain files, no store links), for `safe-switch diff` without a test
/// bed. The repository's `examples/ci-runner` is made this way.
pub fn export(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let ctx = BuildContext { store: None, sshd: Some(exported_sshd()) };
    for generation in [ci_runner_a(), ci_runner_b()] {
        generation.build(dir, &ctx)?;
    }
    Ok(())
}
