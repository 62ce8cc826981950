//! A system bus that accepts connections but never answers must not make
//! `plan` or `switch` wait forever: the connection's set-up (with its
//! `Hello`) and every call have a deadline, and the error names the call
//! that got no reply and says that nothing was changed.
//!
//! Two fake buses on a unix socket, named by `DBUS_SYSTEM_BUS_ADDRESS`:
//! one accepts and never writes a byte; the other completes the
//! authentication and answers `Hello`, then never replies to anything. The
//! deadline is shortened with `SAFE_SWITCH_TEST_DBUS_TIMEOUT_MS` (read by
//! debug builds only).

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::BIN;

/// The deadline the binary is given.
const DEADLINE_MS: u64 = 700;
/// How long a run may take at most: the deadline, a second call's
/// deadline, and a generous margin for a loaded machine.
const BOUND: Duration = Duration::from_secs(20);

fn example(generation: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/ci-runner").join(generation)
}

/// A fake bus: accepts every connection on `socket` and hands it to
/// `serve` in its own thread. The threads end with the test process.
fn fake_bus(socket: &Path, serve: fn(UnixStream)) {
    let listener = UnixListener::bind(socket).unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            thread::spawn(move || serve(stream));
        }
    });
}

/// Accepts and never answers, keeping the connection open.
fn silent(mut stream: UnixStream) {
    let mut sink = [0u8; 4096];
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
}

/// Answers the authentication (`AUTH`, `NEGOTIATE_UNIX_FD`, `BEGIN`) and
/// the `Hello` call that follows, then reads and ignores every call.
fn answers_hello_only(mut stream: UnixStream) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    // The client sends its commands and the Hello call in one go; the
    // Hello message's fixed header is 16 bytes.
    let begin = loop {
        if let Some(at) = seen.windows(7).position(|w| w == b"BEGIN\r\n")
            && seen.len() >= at + 7 + 16
        {
            break at;
        }
        match stream.read(&mut buf) {
            Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => return,
        }
    };
    let commands = String::from_utf8_lossy(&seen[..begin]).into_owned();
    let mut answer = b"OK 0123456789abcdef0123456789abcdef\r\n".to_vec();
    if commands.contains("NEGOTIATE_UNIX_FD") {
        answer.extend_from_slice(b"AGREE_UNIX_FD\r\n");
    }
    answer.extend_from_slice(&hello_reply());
    if stream.write_all(&answer).is_err() {
        return;
    }
    silent(stream);
}

/// The reply to `Hello`: a little-endian METHOD_RETURN with the header
/// fields REPLY_SERIAL (1) and SIGNATURE (`s`), and the unique name
/// `:1.1` as its body.
fn hello_reply() -> Vec<u8> {
    let mut m = vec![b'l', 2, 0, 1];
    m.extend_from_slice(&9u32.to_le_bytes()); // body length
    m.extend_from_slice(&1u32.to_le_bytes()); // serial
    m.extend_from_slice(&15u32.to_le_bytes()); // header fields' length
    m.extend_from_slice(&[5, 1, b'u', 0]); // REPLY_SERIAL: variant `u`
    m.extend_from_slice(&1u32.to_le_bytes());
    m.extend_from_slice(&[8, 1, b'g', 0, 1, b's', 0]); // SIGNATURE: variant `g`, "s"
    m.push(0); // padding to 8
    m.extend_from_slice(&4u32.to_le_bytes());
    m.extend_from_slice(b":1.1\0");
    m
}

/// Runs the binary against the bus at `socket`, killing it past [`BOUND`].
fn run(socket: &Path, args: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .args(args)
        .env("DBUS_SYSTEM_BUS_ADDRESS", format!("unix:path={}", socket.display()))
        .env("SAFE_SWITCH_TEST_DBUS_TIMEOUT_MS", DEADLINE_MS.to_string())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > BOUND {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "safe-switch {args:?} still waited after {BOUND:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
    let elapsed = started.elapsed();
    (child.wait_with_output().unwrap(), elapsed)
}

/// Runs `plan` (and, as root, `switch`) against the fake bus and checks
/// the exit code and that the error names `call` and says nothing changed.
fn check_commands(socket: &Path, call: &str) {
    let toplevel = example("b");
    let toplevel = toplevel.to_str().unwrap();
    let mut commands = vec![vec!["plan", "--toplevel", toplevel]];
    match testbed::require::root_reason() {
        // Without --no-isolate the switch connects before it takes the
        // lock or writes anything.
        None => commands.push(vec!["switch", "--toplevel", toplevel]),
        Some(reason) => testbed::require::skip_or_fail("the switch case", &reason),
    }
    for args in commands {
        let (out, elapsed) = run(socket, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(call), "{args:?}: the error names {call}: {stderr}");
        assert!(stderr.contains("got no reply within 700ms"), "{args:?}: {stderr}");
        assert!(stderr.contains("nothing was changed"), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: no plan is printed: {}", String::from_utf8_lossy(&out.stdout));
        assert!(elapsed >= Duration::from_millis(DEADLINE_MS), "{args:?} ended after {elapsed:?}, before the deadline");
        eprintln!("{args:?} ended after {elapsed:?}: {stderr}");
    }
}

#[test]
fn a_bus_that_never_answers_times_out_in_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("bus");
    fake_bus(&socket, silent);
    check_commands(&socket, "Hello (connection set-up on unix:path=");
}

#[test]
fn a_bus_that_answers_hello_only_times_out_in_the_first_call() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("bus");
    fake_bus(&socket, answers_hello_only);
    check_commands(&socket, "Subscribe (org.freedesktop.systemd1)");
}
