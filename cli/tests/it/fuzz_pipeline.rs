//! Fuzzing the offline pipeline end to end, and the saved-plan and launchd
//! live-state files.
//!
//! - The pipeline: a random small pair of generations (units with
//!   relations and switch flags, drop-ins, masks, aliases, dangling links,
//!   `.wants` links, fstab, `system.conf`, `init-interface-version`) is
//!   written to a temporary directory with a live state, protections and
//!   sometimes a policy file, and `safe-switch diff` plans it and writes
//!   every report format (text on standard output; JSON, JUnit, Code
//!   Quality and Markdown with `--report`). The binary must not panic, must
//!   exit 0, 1 or 3, its reports must parse, and every output and its peak
//!   memory must stay linear in the size of the input.
//! - Saved plans: the plan of each case is saved with `SavedPlan`, then
//!   mutated (values replaced by others of any type, keys dropped or added,
//!   the text cut or bytes flipped) and loaded again.
//! - launchd live states: JSON shaped like one, or not.
//!
//! Each property runs a fixed number of cases from a fixed seed
//! (`testbed::fuzz::check`), each under a watchdog. With `--nocapture` the
//! pipeline prints what its cases did (exit codes, units, deferrals);
//! `FUZZ_SHOW_PLANS=1` also prints every run's output and
//! `FUZZ_SHOW_ERRORS=1` the first line of every error.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::{Command, Stdio};

use launchd_plan::LaunchdLive;
use plan_model::policy::Selector;
use plan_model::{LiveState, Mode, Plan, ProtectionSource};
use proptest::prelude::*;
use safe_switch_cli::saved::{self, SavedPlan};
use serde_json::{Value, json};
use systemd_plan::protect::Request;
use testbed::fuzz::{self, peak_memory, select};

use crate::support::BIN;

/// The units of every generated generation. Relations only name units of
/// this list, so that they form graphs (chains, cycles, conflicts).
const UNITS: &[&str] = &[
    "a.service",
    "b.service",
    "c.service",
    "sshd.service",
    "sshd.socket",
    "sshd@.service",
    "getty@.service",
    "getty@tty1.service",
    "gitlab-runner.service",
    "dbus.service",
    "net.target",
    "multi-user.target",
    "sysinit-reactivation.target",
    "x.timer",
    "x.service",
    "y.path",
    "data.mount",
    "-.mount",
    "odd\\x2dname.service",
    "`tick`.service",
    "\u{1b}[31mred.service",
    "new\nline.service",
];

const ODD: &[&str] =
    &["\0", "\u{feff}", "\x1b[2J", "\r", "\u{202e}", "é", "\\", "%i", "%n", "%Z", "\"", "#", "`", "<!--"];

/// A unit of the list that can be named in a unit file's value.
fn one_line_unit() -> impl Strategy<Value = String> + Clone {
    select(UNITS).prop_filter("one line", |u| !u.contains('\n'))
}

/// A unit file systemd loads, with relations to other units of the list,
/// switch flags, a version that changes between generations, and now and
/// then an odd value. Broken files are [`Broken`]'s job.
fn unit_text() -> impl Strategy<Value = String> {
    let relation = (
        select(&["Requires", "Requisite", "Wants", "BindsTo", "PartOf", "Conflicts", "PropagatesStopTo", "Upholds"]),
        prop::collection::vec(one_line_unit(), 1..3),
    )
        .prop_map(|(key, units)| format!("{key}={}", units.join(" ")));
    let flag = (
        select(&[
            "X-RestartIfChanged",
            "X-ReloadIfChanged",
            "X-StopIfChanged",
            "X-StopOnRemoval",
            "X-OnlyManualStart",
            "X-NotSocketActivated",
            "X-StopOnReconfiguration",
            "RefuseManualStop",
            "RefuseManualStart",
        ]),
        select(&["true", "false", "yes", "0", "maybe"]),
    )
        .prop_map(|(k, v)| format!("{k}={v}"));
    let service = (0..3u8, prop::option::of(0..3u8), prop::option::of(0..3u8), prop::option::of(one_line_unit()))
        .prop_map(|(version, reload, trigger, socket)| {
            let mut s = format!("[Service]\nExecStart=/bin/daemon --v {version}\n");
            if let Some(r) = reload {
                s.push_str(&format!("ExecReload=/bin/kill -HUP $MAINPID {r}\n"));
            }
            if let Some(t) = trigger {
                s.push_str(&format!("X-Reload-Triggers={t}\n"));
            }
            if let Some(u) = socket {
                s.push_str(&format!("Sockets={u}\n"));
            }
            s
        });
    let odd = prop_oneof![
        select(ODD).prop_filter("one line", |o| o != "\r").prop_map(|o| format!("Description={o}")),
        select(&["Environment=\"A=b c\" D", "Description=a \\\n  continued", "; comment", "Requires="]),
        (select(ODD), 1..200usize).prop_map(|(o, n)| format!("Description={}", o.repeat(n))),
    ];
    (
        prop::collection::vec(relation, 0..3),
        prop::collection::vec(flag, 0..2),
        service,
        prop::option::weighted(0.2, odd),
    )
        .prop_map(|(relations, flags, service, odd)| {
            let mut text = "[Unit]\nDescription=unit\n".to_owned();
            for line in relations.iter().chain(&flags) {
                text.push_str(line);
                text.push('\n');
            }
            if let Some(odd) = odd {
                text.push_str(&odd);
                text.push('\n');
            }
            text.push_str(&service);
            text
        })
}

/// What a generation holds for one unit name.
#[derive(Clone, Debug)]
enum UnitFile {
    Absent,
    Text(String),
    /// A link to `/dev/null`.
    Masked,
    /// A relative link to another unit's file (an alias), when that file
    /// exists.
    Alias(String),
}

fn unit_file() -> impl Strategy<Value = UnitFile> {
    prop_oneof![
        3 => Just(UnitFile::Absent),
        12 => unit_text().prop_map(UnitFile::Text),
        1 => Just(UnitFile::Masked),
        1 => select(UNITS).prop_map(UnitFile::Alias),
    ]
}

/// A fault that makes a generation unloadable (the run must then fail
/// cleanly, naming the file).
#[derive(Clone, Debug)]
enum Broken {
    /// A link to nothing.
    Dangling(String),
    /// A unit file with a line systemd rejects.
    Garbage(String, String),
    /// A unit file starting with a byte-order mark.
    ByteOrderMark(String),
}

fn broken() -> impl Strategy<Value = Broken> {
    prop_oneof![
        select(&["zz.service", "sshd.service"]).prop_map(Broken::Dangling),
        (select(&["zz.service", "a.service"]), select(&["garbage line", "[Unit", "=value", "[]"]))
            .prop_map(|(u, l)| Broken::Garbage(u, l)),
        select(&["zz.service", "b.service"]).prop_map(Broken::ByteOrderMark),
    ]
}

/// One generation's view of a unit: its file, drop-ins and whether
/// `multi-user.target` wants it.
#[derive(Clone, Debug)]
struct UnitEntry {
    file: UnitFile,
    drop_ins: Vec<(String, String)>,
    wanted: bool,
}

fn unit_entry() -> impl Strategy<Value = UnitEntry> {
    let drop_in = (select(&["10-a.conf", "20-b.conf", "override.conf", "x.txt"]), unit_text());
    (unit_file(), prop::collection::vec(drop_in, 0..2), prop::bool::weighted(0.3))
        .prop_map(|(file, drop_ins, wanted)| UnitEntry { file, drop_ins, wanted })
}

fn fstab() -> impl Strategy<Value = Option<String>> {
    let line = prop_oneof![
        select(&[
            "/dev/sda1 / ext4 defaults 0 1",
            "/dev/sda2 /nix ext4 defaults",
            "/dev/sdb1 /data xfs noatime",
            "/dev/sdb1 /data xfs noatime,nofail",
            "/dev/sdc1 /data ext4 noatime",
            "/dev/sdd swap swap sw",
            "srv:/x /mnt/my\\040media nfs x-systemd.automount",
            "# comment",
            "",
        ]),
        select(ODD),
    ];
    prop::option::of(prop::collection::vec(line, 0..5).prop_map(|l| l.join("\n")))
}

/// What a generation boots: a kernel, its command line, NixOS's switch
/// inhibitors and a module tree (`(release, path, in modules.dep,
/// content)`), each well or badly shaped.
#[derive(Clone, Debug)]
struct BootSpec {
    kernel: String,
    params: String,
    inhibitors: String,
    modules: Vec<(String, String, bool, String)>,
}

fn boot() -> impl Strategy<Value = Option<BootSpec>> {
    let module = (
        select(&["6.6.1", "6.6.2", "weird release"]),
        select(&["kernel/fs/a.ko", "extra/b.ko.xz", "extra/c.ko.zst", "d.ko.gz", "extra/notes.txt", ".ko"]),
        any::<bool>(),
        select(&["v1", "v2"]),
    );
    let spec = (
        select(&["k1", "k2"]),
        select(&["loglevel=4", "loglevel=7", "\u{1b}[31m"]),
        prop_oneof![
            12 => select(&[
                r#"{"dbus-implementation":"dbus"}"#,
                r#"{"dbus-implementation":"broker","nixos-release":"25.11"}"#,
                "{}",
            ]),
            1 => select(&["[]", "{", r#"{"a":1}"#]),
        ],
        prop::collection::vec(module, 0..5),
    )
        .prop_map(|(kernel, params, inhibitors, modules)| BootSpec { kernel, params, inhibitors, modules });
    prop::option::weighted(0.5, spec)
}

/// One generation.
#[derive(Clone, Debug)]
struct GenerationSpec {
    boot: Option<BootSpec>,
    units: Vec<(String, UnitEntry)>,
    fstab: Option<String>,
    system_conf: Option<String>,
    interface: Option<String>,
    activate: bool,
    broken: Option<Broken>,
}

/// A part of the new generation: the old one's mostly, else another.
fn same_or<T: Clone + std::fmt::Debug>(other: impl Strategy<Value = T>) -> impl Strategy<Value = Option<T>> {
    prop::option::weighted(0.5, other)
}

/// Two generations: the new one keeps most of the old one's units and
/// files as they are and changes the rest, as a real switch does.
fn generations() -> impl Strategy<Value = (GenerationSpec, GenerationSpec)> {
    let fstabs = (fstab(), same_or(fstab()));
    let conf = prop::option::of(select(&["[Manager]\nDefaultTimeoutStopSec=10s\n", "[Manager]\n", "\u{feff}x"]));
    let confs = (conf.clone(), same_or(conf));
    let interface = prop::option::weighted(0.8, select(&["systemd 1\n", "systemd 2\n", ""]));
    let interfaces = (interface.clone(), prop::option::weighted(0.1, interface));
    let boots = (boot(), same_or(boot()));
    (
        prop::collection::vec((select(UNITS), unit_entry(), same_or(unit_entry())), 2..24),
        fstabs,
        confs,
        interfaces,
        (any::<bool>(), any::<bool>()),
        (prop::option::weighted(0.03, broken()), prop::option::weighted(0.03, broken())),
        boots,
    )
        .prop_map(|(units, fstabs, confs, interfaces, activate, broken, boots)| {
            let old = GenerationSpec {
                boot: boots.0.clone(),
                units: units.iter().map(|(name, old, _)| (name.clone(), old.clone())).collect(),
                fstab: fstabs.0.clone(),
                system_conf: confs.0.clone(),
                interface: interfaces.0.clone(),
                activate: activate.0,
                broken: broken.0,
            };
            let new = GenerationSpec {
                boot: boots.1.unwrap_or(boots.0),
                units: units.into_iter().map(|(name, old, new)| (name, new.unwrap_or(old))).collect(),
                fstab: fstabs.1.unwrap_or(fstabs.0),
                system_conf: confs.1.unwrap_or(confs.0),
                interface: interfaces.1.unwrap_or(interfaces.0),
                activate: activate.1,
                broken: broken.1,
            };
            (old, new)
        })
}

/// A live state: units of the list in some state, with relations.
fn live_state() -> impl Strategy<Value = Option<Value>> {
    let unit = (
        select(&["active", "inactive", "failed", "activating", "reloading"]),
        select(&["running", "exited", "dead", "auto-restart"]),
        select(&["loaded", "masked", "not-found"]),
        prop::bool::weighted(0.9),
        any::<u16>(),
        prop::collection::btree_map(
            select(&[
                "Requires",
                "RequiredBy",
                "BindsTo",
                "BoundBy",
                "PartOf",
                "ConsistsOf",
                "Conflicts",
                "TriggeredBy",
            ]),
            prop::collection::vec(select(UNITS), 1..3),
            0..3,
        ),
    );
    let units = prop::collection::btree_map(select(UNITS), unit, 0..10).prop_map(|units| {
        let units: serde_json::Map<String, Value> = units
            .into_iter()
            .map(|(name, (active, sub, load, ours, pid, deps))| {
                let fragment = if ours { format!("/etc/systemd/system/{name}") } else { format!("/run/{name}") };
                let unit = json!({
                    "active_state": active, "sub_state": sub, "load_state": load, "fragment_path": fragment,
                    "main_pid": pid, "invocation_id": format!("{pid:032x}"), "deps": deps,
                });
                (name, unit)
            })
            .collect();
        json!({ "units": units })
    });
    let kernel = (
        prop::option::of(select(&["6.6.1", "6.6.2"])),
        prop::collection::btree_map(select(&["a", "b", "c_d"]), prop::option::of(select(&["1.0", "2.0"])), 0..3),
        any::<bool>(),
    );
    prop::option::of((units, kernel)).prop_map(|state| {
        state.map(|(mut state, (release, loaded, marker))| {
            if let Some(release) = release {
                state["kernel_release"] = json!(release);
            }
            let loaded: serde_json::Map<String, Value> =
                loaded.into_iter().map(|(name, v)| (name.to_owned(), json!({ "version": v }))).collect();
            state["loaded_modules"] = Value::Object(loaded);
            state["reboot_required"] = json!(marker);
            state
        })
    })
}

/// Protections and options of one run.
#[derive(Clone, Debug)]
struct Options {
    protect: Vec<String>,
    on_protected: Option<String>,
    policy: Option<String>,
    explain: Option<String>,
}

fn options() -> impl Strategy<Value = Options> {
    let selector = prop_oneof![
        8 => select(&["sshd", "a.service", "b", "gitlab-runner*", "*.socket", "data.mount", "nope", "getty@*"]),
        1 => select(&["a b", "", "bad$name"]),
    ];
    let policy = (prop::collection::vec(select(&["sshd", "c.service", "x*", "dbus"]), 0..3), 0..3u8).prop_map(
        |(protect, mode)| {
            let mut text = format!("protect = {}\n", serde_json::to_string(&protect).unwrap());
            match mode {
                0 => text.push_str("mode = \"refuse\"\n"),
                1 => text.push_str("[implicit]\ndbus = false\n"),
                _ => {}
            }
            text
        },
    );
    (
        prop::collection::vec(selector, 0..3),
        prop::option::of(select(&["defer", "refuse"])),
        prop::option::weighted(0.3, policy),
        prop::option::weighted(0.2, select(UNITS)),
    )
        .prop_map(|(protect, on_protected, policy, explain)| Options { protect, on_protected, policy, explain })
}

/// A change to a saved plan's JSON.
#[derive(Clone, Debug)]
enum Mutation {
    /// Replace the n-th value (in document order) with another.
    Replace(usize, Value),
    /// Drop a key of the n-th object.
    Remove(usize),
    /// Add an unknown key to the n-th object.
    Add(usize),
    /// Flip a byte of the text.
    Flip(usize, u8),
    /// Cut the text at a fraction of its length (per mille).
    Cut(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let value = prop_oneof![
        Just(Value::Null),
        Just(json!([])),
        Just(json!({})),
        Just(json!(-1)),
        Just(json!(u64::MAX)),
        Just(json!(1.5)),
        Just(json!(true)),
        select(ODD).prop_map(Value::from),
        Just(json!("x".repeat(10_000))),
        Just(json!([[[[[[[[]]]]]]]])),
    ];
    prop_oneof![
        6 => (any::<usize>(), value).prop_map(|(n, v)| Mutation::Replace(n, v)),
        2 => any::<usize>().prop_map(Mutation::Remove),
        1 => any::<usize>().prop_map(Mutation::Add),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(n, b)| Mutation::Flip(n, b)),
        1 => (0..1000usize).prop_map(Mutation::Cut),
    ]
}

/// One whole case.
#[derive(Clone, Debug)]
struct Case {
    old: GenerationSpec,
    new: GenerationSpec,
    live: Option<Value>,
    options: Options,
    mutations: Vec<Vec<Mutation>>,
}

fn case() -> impl Strategy<Value = Case> {
    (generations(), live_state(), options(), prop::collection::vec(prop::collection::vec(mutation(), 1..4), 0..4))
        .prop_map(|((old, new), live, options, mutations)| Case { old, new, live, options, mutations })
}

/// Writes a file, counting its bytes into `size`.
fn write(path: &Path, text: &str, size: &mut usize) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
    *size += text.len();
}

/// File names cannot hold `/` or NUL; every other name of the list is kept
/// as it is.
fn file_name(unit: &str) -> Option<&str> {
    (!unit.contains(['/', '\0'])).then_some(unit)
}

/// Writes a generation; returns how many bytes of input it holds.
fn write_generation(root: &Path, spec: &GenerationSpec) -> usize {
    let mut size = 0;
    let dir = root.join("etc/systemd/system");
    fs::create_dir_all(&dir).unwrap();
    for (unit, entry) in &spec.units {
        let Some(name) = file_name(unit) else { continue };
        let path = dir.join(name);
        // A name listed twice: the first entry wins.
        if path.symlink_metadata().is_ok() {
            continue;
        }
        size += name.len();
        match &entry.file {
            UnitFile::Absent => {}
            UnitFile::Text(text) => write(&path, text, &mut size),
            UnitFile::Masked => symlink("/dev/null", &path).unwrap(),
            UnitFile::Alias(target) if dir.join(target).is_file() => symlink(target, &path).unwrap(),
            UnitFile::Alias(_) => {}
        }
        for (drop_in, text) in &entry.drop_ins {
            write(&dir.join(format!("{name}.d")).join(drop_in), text, &mut size);
        }
        if entry.wanted {
            let wants = dir.join("multi-user.target.wants");
            fs::create_dir_all(&wants).unwrap();
            let _ = symlink(format!("../{name}"), wants.join(name));
        }
    }
    match &spec.broken {
        None => {}
        Some(Broken::Dangling(unit)) => {
            let _ = fs::remove_file(dir.join(unit));
            symlink("gone.service", dir.join(unit)).unwrap();
        }
        Some(Broken::Garbage(unit, line)) => write(&dir.join(unit), &format!("[Unit]\n{line}\n"), &mut size),
        Some(Broken::ByteOrderMark(unit)) => write(&dir.join(unit), "\u{feff}[Unit]\nDescription=x\n", &mut size),
    }
    if let Some(text) = &spec.fstab {
        write(&root.join("etc/fstab"), text, &mut size);
    }
    if let Some(text) = &spec.system_conf {
        write(&root.join("etc/systemd/system.conf"), text, &mut size);
    }
    if let Some(text) = &spec.interface {
        write(&root.join("init-interface-version"), text, &mut size);
    }
    if let Some(boot) = &spec.boot {
        write(&root.join("kernel"), &boot.kernel, &mut size);
        write(&root.join("kernel-params"), &boot.params, &mut size);
        write(&root.join("switch-inhibitors"), &boot.inhibitors, &mut size);
        let mut deps: std::collections::BTreeMap<&str, String> = Default::default();
        for (release, path, listed, content) in &boot.modules {
            let dir = root.join("kernel-modules/lib/modules").join(release);
            write(&dir.join(path), content, &mut size);
            if *listed {
                deps.entry(release).or_default().push_str(&format!("{path}: \n"));
            }
        }
        for (release, text) in deps {
            write(&root.join("kernel-modules/lib/modules").join(release).join("modules.dep"), &text, &mut size);
        }
    }
    if spec.activate {
        write(&root.join("activate"), "#!/bin/sh\n", &mut size);
        fs::set_permissions(root.join("activate"), fs::Permissions::from_mode(0o755)).unwrap();
    }
    size
}

/// What one run of the binary left.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    /// Peak resident memory of the process, in bytes.
    max_rss: u64,
}

/// Runs the binary in `dir`, with its output in files, and reaps it with
/// `wait4` to learn its peak memory.
#[allow(clippy::zombie_processes, reason = "reaped with wait4, which std cannot do")]
fn run(dir: &Path, args: &[String]) -> Run {
    let (out, err) = (dir.join(".stdout"), dir.join(".stderr"));
    let child = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our child, not yet reaped (std's Child never waited);
    // both pointers are valid for writes.
    let reaped = unsafe { libc::wait4(pid, &raw mut status, 0, &raw mut usage) };
    assert_eq!(reaped, pid, "wait4: {}", std::io::Error::last_os_error());
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -libc::WTERMSIG(status) };
    let max_rss = u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024;
    Run {
        code,
        stdout: String::from_utf8_lossy(&fs::read(&out).unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&fs::read(&err).unwrap()).into_owned(),
        max_rss,
    }
}

const REPORTS: [(&str, &str); 4] =
    [("json", "plan.json"), ("junit", "junit.xml"), ("codequality", "cq.json"), ("markdown", "summary.md")];

/// The most a report may hold: linear in the input.
fn output_bound(input: usize) -> usize {
    256 * 1024 + 64 * input
}

/// The most memory the process may use: its own start-up plus a multiple
/// of the input.
fn rss_bound(input: usize) -> u64 {
    96 * 1024 * 1024 + 256 * u64::try_from(input).unwrap()
}

fn pipeline_case(case: &Case) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut size = write_generation(&root.join("old"), &case.old) + write_generation(&root.join("new"), &case.new);
    let mut args: Vec<String> = ["diff", "old", "new"].map(str::to_owned).into();
    if let Some(live) = &case.live {
        write(&root.join("live.json"), &live.to_string(), &mut size);
        args.extend(["--live".to_owned(), "live.json".to_owned()]);
    }
    if !case.options.protect.is_empty() {
        args.push(format!("--protect={}", case.options.protect.join(",")));
    }
    if let Some(mode) = &case.options.on_protected {
        args.push(format!("--on-protected={mode}"));
    }
    if let Some(policy) = &case.options.policy {
        write(&root.join("policy.toml"), policy, &mut size);
        fs::set_permissions(root.join("policy.toml"), fs::Permissions::from_mode(0o644)).unwrap();
        args.extend(["--policy".to_owned(), "policy.toml".to_owned()]);
    }
    for (format, file) in REPORTS {
        args.push(format!("--report={format}={file}"));
    }
    let out = run(root, &args);
    STATS.lock().unwrap().record(&out, size, root);
    if std::env::var_os("FUZZ_SHOW_PLANS").is_some() {
        eprintln!("=== {args:?}\n{}{}", out.stdout, out.stderr);
    }
    prop_assert!(!out.stderr.contains("panicked"), "the binary panicked:\n{}", out.stderr);
    prop_assert!(matches!(out.code, 0..=3), "exit {}: {}", out.code, out.stderr);
    // A usage error is a bad `--protect` value or one that matches no
    // unit (the only kinds the generated command lines can make).
    if out.code == 2 {
        prop_assert!(out.stderr.lines().any(|l| l.starts_with("error: --protect ")), "{}", out.stderr);
        return Ok(());
    }
    prop_assert!(out.max_rss <= rss_bound(size), "{} bytes of memory for {size} bytes of input", out.max_rss);
    prop_assert!(out.stderr.len() <= output_bound(size), "{} bytes on stderr", out.stderr.len());
    if out.code == 1 {
        prop_assert!(out.stderr.starts_with("error: ") || out.stderr.contains("\nerror: "), "{}", out.stderr);
        return Ok(());
    }
    prop_assert!(out.stdout.len() <= output_bound(size), "{} bytes of text for {size} of input", out.stdout.len());
    let mut plan_json = String::new();
    for (format, file) in REPORTS {
        let text = fs::read_to_string(root.join(file)).unwrap();
        prop_assert!(text.len() <= output_bound(size), "{format}: {} bytes for {size} of input", text.len());
        match format {
            "json" => plan_json = text,
            "codequality" => prop_assert!(serde_json::from_str::<Value>(&text).is_ok(), "{format}: {text}"),
            "junit" => {
                let parsed = roxmltree::Document::parse(&text);
                prop_assert!(parsed.is_ok(), "junit: {:?}\n{text}", parsed.err());
            }
            _ => {}
        }
    }
    let plan: Plan = serde_json::from_str(&plan_json).map_err(|e| TestCaseError::fail(format!("json: {e}")))?;
    {
        let mut stats = STATS.lock().unwrap();
        stats.units += plan.units.len();
        stats.deferred += plan.deferred().count();
        stats.refused += usize::from(plan.protection.refused);
        stats.reboot += usize::from(plan.needs_reboot());
        stats.modules += plan.kernel_modules.len();
    }
    if let Some(unit) = &case.options.explain {
        let mut explain = args.clone();
        explain.truncate(explain.len() - REPORTS.len());
        explain.push(format!("--explain={unit}"));
        let out = run(root, &explain);
        prop_assert!(!out.stderr.contains("panicked") && matches!(out.code, 0..=3), "{}", out.stderr);
        prop_assert!(out.stdout.len() <= output_bound(size), "--explain: {} bytes", out.stdout.len());
    }
    saved_plans(root, &plan, case)
}

/// Saves the case's plan, then loads mutated copies of it.
fn saved_plans(root: &Path, plan: &Plan, case: &Case) -> Result<(), TestCaseError> {
    let live = match &case.live {
        Some(live) => LiveState::from_json(&live.to_string()).unwrap(),
        None => LiveState::default(),
    };
    // The request the plan was made with, as far as a saved plan records
    // it: the `--protect` selectors and the mode (the policy file's
    // selectors are in the plan's protections already).
    let selectors = case
        .options
        .protect
        .iter()
        .filter_map(|s| Selector::parse(s).ok())
        .map(|s| (s, ProtectionSource::CommandLine))
        .collect();
    let mode = if plan.protection.mode == Mode::Refuse { Mode::Refuse } else { Mode::Defer };
    let request = Request { selectors, mode, ..Request::default() };
    let (old, new) = (Path::new(&plan.old.path), Path::new(&plan.new.path));
    let inputs = saved::record_inputs(old, new, plan, &live, &request);
    let original = SavedPlan::new(plan.clone(), inputs);
    let text = original.to_json();
    let path = root.join("saved.json");
    fs::write(&path, &text).unwrap();
    let loaded = SavedPlan::load(&path).map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
    prop_assert_eq!(&loaded, &original);
    // A refused plan is saved but never applied.
    prop_assert_eq!(saved::verify_digest(&loaded).is_ok(), !plan.protection.refused);
    for mutations in &case.mutations {
        let mutated = mutate(&text, mutations);
        fs::write(&path, &mutated).unwrap();
        let (result, peak) = peak_memory(|| SavedPlan::load(&path));
        prop_assert!(peak <= 1024 * 1024 + 64 * u64::try_from(mutated.len()).unwrap(), "{peak} bytes");
        match result {
            Ok(saved) => {
                let _ = saved::verify_digest(&saved).map_err(|r| r.to_string());
                let _ = saved::first_difference(&saved.plan, plan);
                let _ = saved::live_changes(&saved.inputs.live, &live);
            }
            Err(err) => {
                let shown = format!("{err:#}");
                prop_assert!(shown.len() <= 8 * mutated.len() + 1024, "{} bytes of error", shown.len());
            }
        }
    }
    Ok(())
}

/// Applies mutations to a saved plan's text.
fn mutate(text: &str, mutations: &[Mutation]) -> String {
    let mut value: Value = serde_json::from_str(text).unwrap();
    let mut bytes: Option<Vec<u8>> = None;
    for m in mutations {
        match m {
            Mutation::Replace(n, new) => {
                let count = count_values(&value);
                if let Some(v) = nth_value(&mut value, n % count) {
                    *v = new.clone();
                }
            }
            Mutation::Remove(n) | Mutation::Add(n) => {
                let count = count_objects(&value);
                let Some(object) = nth_object(&mut value, n % count.max(1)) else { continue };
                if matches!(m, Mutation::Add(_)) {
                    object.insert("unexpected".to_owned(), json!(1));
                } else if !object.is_empty() {
                    let key = object.keys().nth(n % object.len()).unwrap().clone();
                    object.remove(&key);
                }
            }
            Mutation::Flip(n, b) => {
                let bytes = bytes.get_or_insert_with(|| serde_json::to_vec_pretty(&value).unwrap());
                if !bytes.is_empty() {
                    let at = n % bytes.len();
                    bytes[at] ^= b | 1;
                }
            }
            Mutation::Cut(per_mille) => {
                let bytes = bytes.get_or_insert_with(|| serde_json::to_vec_pretty(&value).unwrap());
                bytes.truncate(bytes.len() * per_mille / 1000);
            }
        }
    }
    match bytes {
        Some(b) => String::from_utf8_lossy(&b).into_owned(),
        None => serde_json::to_string_pretty(&value).unwrap(),
    }
}

fn count_values(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(count_values).sum(),
        Value::Object(o) => o.values().map(count_values).sum(),
        _ => 0,
    }
}

fn nth_value(v: &mut Value, n: usize) -> Option<&mut Value> {
    if n == 0 {
        return Some(v);
    }
    let mut n = n - 1;
    let children: Vec<&mut Value> = match v {
        Value::Array(a) => a.iter_mut().collect(),
        Value::Object(o) => o.values_mut().collect(),
        _ => return None,
    };
    for child in children {
        let count = count_values(child);
        if n < count {
            return nth_value(child, n);
        }
        n -= count;
    }
    None
}

fn count_objects(v: &Value) -> usize {
    match v {
        Value::Array(a) => a.iter().map(count_objects).sum(),
        Value::Object(o) => 1 + o.values().map(count_objects).sum::<usize>(),
        _ => 0,
    }
}

/// The n-th object in document order (an object before its children).
fn nth_object(v: &mut Value, n: usize) -> Option<&mut serde_json::Map<String, Value>> {
    if n == 0 {
        return v.as_object_mut();
    }
    let mut n = n - usize::from(v.is_object());
    let children: Vec<&mut Value> = match v {
        Value::Object(o) => o.values_mut().collect(),
        Value::Array(a) => a.iter_mut().collect(),
        _ => return None,
    };
    for child in children {
        let count = count_objects(child);
        if n < count {
            return nth_object(child, n);
        }
        n -= count;
    }
    None
}

/// What the cases did, to show that they reach the planner and the
/// reports (printed with `--nocapture`).
#[derive(Debug, Default)]
struct Stats {
    /// Runs by exit code.
    exits: std::collections::BTreeMap<i32, usize>,
    /// The largest input, in bytes.
    max_input: usize,
    /// The largest ratio of a report's size to its input's.
    max_ratio: f64,
    /// The largest peak memory of a run, in bytes.
    max_rss: u64,
    /// Units in all plans.
    units: usize,
    /// Units deferred by protection, in all plans.
    deferred: usize,
    /// Plans refused by protection.
    refused: usize,
    /// Plans that need a reboot.
    reboot: usize,
    /// Kernel modules in all plans.
    modules: usize,
}

impl Stats {
    fn record(&mut self, out: &Run, input: usize, dir: &Path) {
        *self.exits.entry(out.code).or_default() += 1;
        if out.code == 1 && std::env::var_os("FUZZ_SHOW_ERRORS").is_some() {
            eprintln!("{}", out.stderr.lines().next().unwrap_or_default());
        }
        self.max_input = self.max_input.max(input);
        self.max_rss = self.max_rss.max(out.max_rss);
        let biggest = REPORTS
            .iter()
            .filter_map(|(_, file)| fs::metadata(dir.join(file)).ok())
            .map(|m| m.len())
            .chain([u64::try_from(out.stdout.len()).unwrap()])
            .max()
            .unwrap_or(0);
        #[allow(clippy::cast_precision_loss)]
        let ratio = biggest as f64 / input.max(1) as f64;
        self.max_ratio = self.max_ratio.max(ratio);
    }
}

static STATS: std::sync::Mutex<Stats> = std::sync::Mutex::new(Stats {
    exits: std::collections::BTreeMap::new(),
    max_input: 0,
    max_ratio: 0.0,
    max_rss: 0,
    units: 0,
    deferred: 0,
    refused: 0,
    reboot: 0,
    modules: 0,
});

#[test]
fn the_offline_pipeline_and_saved_plans() {
    // The peak memory of each run comes from `wait4`, which counts what
    // this process held when it started the run: the cases run in a
    // process of their own, not beside the other tests of this binary.
    if !fuzz::alone(testbed::test_name!()) {
        return;
    }
    fuzz::check("pipeline and saved plans", 256, case(), |case| pipeline_case(&case));
    eprintln!("pipeline: {:?}", STATS.lock().unwrap());
}

/// A launchd live state: mostly shaped like one, sometimes not.
fn launchd_live() -> impl Strategy<Value = String> {
    let scalar = prop_oneof![
        Just(Value::Null),
        Just(json!([])),
        Just(json!({})),
        Just(json!(-1)),
        Just(json!(u64::MAX)),
        Just(json!("running")),
        select(ODD).prop_map(Value::from),
    ];
    let job = (
        prop::option::of(any::<u32>()),
        prop::option::of(select(&["running", "not running"])),
        prop::option::of(scalar.clone()),
    )
        .prop_map(|(pid, state, odd)| {
            let mut job =
                json!({ "pid": pid, "state": state, "runs": 2, "last_exit_code": 0, "path": "/Library/x.plist" });
            if let Some(odd) = odd {
                job["runs"] = odd;
            }
            job
        });
    let domain = prop::collection::btree_map(select(&["org.nixos.a", "org.nixos.b", "com.x"]), job, 0..4);
    let shaped =
        (prop::option::of(domain.clone()), prop::option::of(domain), any::<bool>()).prop_map(|(system, gui, user)| {
            let mut live = json!({ "system": system, "gui": gui });
            if user {
                live["primary_user"] = json!({ "name": "alice", "uid": 501, "home": "/Users/alice" });
            }
            live
        });
    prop_oneof![6 => shaped, 1 => scalar, 1 => Just(json!([[], {}]))].prop_map(|v| v.to_string())
}

#[test]
fn launchd_live_states() {
    fuzz::check("launchd live states", 512, launchd_live(), |text| {
        let (result, peak) = peak_memory(|| LaunchdLive::from_json(&text, "live.json"));
        prop_assert!(peak <= 256 * 1024 + 32 * u64::try_from(text.len()).unwrap(), "{peak} bytes");
        match result {
            Ok(live) => {
                prop_assert!(text.starts_with('{'), "only an object is a live state: {text}");
                let again = LaunchdLive::from_json(&serde_json::to_string(&live).unwrap(), "x").unwrap();
                prop_assert_eq!(again, live);
            }
            Err(err) => prop_assert!(err.to_string().starts_with("live.json: "), "{err}"),
        }
        Ok(())
    });
}
