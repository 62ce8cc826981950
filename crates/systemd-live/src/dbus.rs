//! The zbus adapter: [`ServiceManager`] over systemd's D-Bus API on the
//! system bus.
//!
//! This module is the only one that knows zbus. It connects to the system
//! bus (honouring `DBUS_SYSTEM_BUS_ADDRESS`), never to systemd's private
//! socket: systemd answers there with its well-known name as sender, which
//! zbus rejects, and NixOS's switch uses the bus too.
//!
//! Every public method runs its async body with `zbus::block_on`, so the
//! rest of the crate stays synchronous. Inside, calls are pipelined: a
//! snapshot issues every `GetAll` at once and joins the replies, and a
//! phase queues its jobs while it reads their signals.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::num::NonZeroUsize;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::future::{join, join4};
use futures_util::stream::{self, FuturesUnordered, TryStreamExt};
use plan_model::observe::{Activity, SeenJob};
use plan_model::{LiveState, LiveUnit};
use zbus::proxy::CacheProperties;
use zbus::{Connection, OwnedObjectPath, OwnedVariant, Variant};

use crate::Error;
use crate::manager::{
    Dependencies, JobKind, JobOutcome, JobResult, ServiceManager, TransientExit, TransientSpec, UnitProcess,
    UnitStatus, WatchedJobs,
};
use crate::search_path::SearchPath;

const UNIT_INTERFACE: &str = "org.freedesktop.systemd1.Unit";
const SERVICE_INTERFACE: &str = "org.freedesktop.systemd1.Service";

/// How many units a snapshot asks about at once. Each has at most three
/// calls in flight, and the D-Bus daemon refuses more than 128 pending
/// replies per connection by default (`max_replies_per_connection`), so
/// this keeps well under that limit while still keeping the bus busy.
const UNITS_IN_FLIGHT: usize = 40;

/// How many job calls are in flight at once, for the same reason.
const CALLS_IN_FLIGHT: usize = 96;

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    fn subscribe(&self) -> zbus::Result<()>;

    #[allow(clippy::type_complexity)]
    fn list_units(
        &self,
    ) -> zbus::Result<
        Vec<(String, String, String, String, String, String, OwnedObjectPath, u32, String, OwnedObjectPath)>,
    >;

    fn get_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;

    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;

    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

    fn reload_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

    fn reload(&self) -> zbus::Result<()>;

    fn reexecute(&self) -> zbus::Result<()>;

    fn reset_failed(&self) -> zbus::Result<()>;

    fn cancel_job(&self, id: u32) -> zbus::Result<()>;

    fn get_unit_processes(&self, name: &str) -> zbus::Result<Vec<(String, u32, String)>>;

    fn start_transient_unit(
        &self,
        name: &str,
        mode: &str,
        properties: &[(&str, Variant<'_>)],
        aux: &[(&str, &[(&str, Variant<'_>)])],
    ) -> zbus::Result<OwnedObjectPath>;

    #[zbus(signal)]
    fn job_removed(&self, id: u32, job: OwnedObjectPath, unit: String, result: String) -> zbus::Result<()>;

    #[zbus(signal)]
    fn reloading(&self, active: bool) -> zbus::Result<()>;
}

#[zbus::proxy(interface = "org.freedesktop.systemd1.Unit", default_service = "org.freedesktop.systemd1")]
trait Unit {
    fn unref(&self) -> zbus::Result<()>;
}

#[zbus::proxy(interface = "org.freedesktop.DBus.Properties", default_service = "org.freedesktop.systemd1")]
trait Props {
    fn get(&self, interface: &str, name: &str) -> zbus::Result<OwnedVariant>;
}

/// systemd on the D-Bus system bus.
pub struct SystemdBus {
    conn: Connection,
    address: String,
    /// How long any one call may wait for its reply.
    timeout: Duration,
    /// The names of the units the last `ListUnits` listed: loaded units,
    /// whose object paths are made from their names ([`unit_object_path`]).
    listed: Mutex<HashSet<Box<str>>>,
    /// Method calls made on the connection, for benchmarks.
    calls: std::sync::atomic::AtomicUsize,
    /// The watch of every job systemd runs, while one is in force.
    watch: Option<JobWatch>,
}

impl std::fmt::Debug for SystemdBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemdBus").field("address", &self.address).finish()
    }
}

/// How long a D-Bus call may wait for its reply, by default: the limit
/// systemd's own clients (`systemctl`, `busctl`) and NixOS's switch use.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(25);

/// Maps a failed call to the crate's error: [`Error::Timeout`] when no
/// reply came within `timeout` (zbus's method timeout), else
/// [`Error::Call`].
fn call_err(call: impl Into<String>, timeout: Duration) -> impl FnOnce(zbus::Error) -> Error {
    let call = call.into();
    move |e| {
        if is_timeout(&e) { Error::Timeout { call, timeout } } else { Error::Call { call, message: error_message(&e) } }
    }
}

/// Tells whether a call failed because its reply did not come in time.
fn is_timeout(e: &zbus::Error) -> bool {
    matches!(e, zbus::Error::InputOutput(io) if io.kind() == std::io::ErrorKind::TimedOut)
}

/// Renders a zbus error as systemd's own message when there is one
/// (`Unit foo.service not found.`), else zbus's description.
/// How long an isolated apply's caller waits for systemd to come back
/// after it left the bus (a re-exec takes a second or two).
const SYSTEMD_AWAY_GRACE: Duration = Duration::from_secs(120);

/// Tells whether a call failed because systemd is not on the bus at the
/// moment (as while it re-executes), rather than because the call itself
/// was wrong.
fn systemd_away(e: &zbus::Error) -> bool {
    use zbus::DBusError as _;
    const AWAY: [&str; 5] = [
        "org.freedesktop.DBus.Error.NoReply",
        "org.freedesktop.DBus.Error.ServiceUnknown",
        "org.freedesktop.DBus.Error.NameHasNoOwner",
        "org.freedesktop.DBus.Error.Timeout",
        "org.freedesktop.DBus.Error.TimedOut",
    ];
    let name = match e {
        // No reply within the call deadline: as NoReply from the bus.
        e if is_timeout(e) => return true,
        zbus::Error::MethodError(name, ..) => name.as_str().to_owned(),
        zbus::Error::FDO(fdo) => fdo.name().as_str().to_owned(),
        _ => return false,
    };
    AWAY.contains(&name.as_str())
}

fn error_message(e: &zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, Some(text), _) => format!("{text} ({})", name.as_str()),
        other => other.to_string(),
    }
}

impl SystemdBus {
    /// Connects to the system bus (`DBUS_SYSTEM_BUS_ADDRESS`, else the
    /// default socket) and subscribes to the manager's signals, with
    /// [`DEFAULT_CALL_TIMEOUT`] for every call.
    pub fn connect() -> Result<SystemdBus, Error> {
        SystemdBus::connect_with_timeout(DEFAULT_CALL_TIMEOUT)
    }

    /// Like [`SystemdBus::connect`], with `timeout` as the deadline of the
    /// connection's set-up (connect, authentication and `Hello`) and of
    /// every call made on it afterwards. A bus that accepts the connection
    /// but never answers is then an [`Error::Timeout`] naming the call,
    /// not a wait without end.
    pub fn connect_with_timeout(timeout: Duration) -> Result<SystemdBus, Error> {
        let address = std::env::var("DBUS_SYSTEM_BUS_ADDRESS")
            .unwrap_or_else(|_| "unix:path=/var/run/dbus/system_bus_socket".to_owned());
        SystemdBus::connect_to(&address, timeout)
    }

    /// Like [`SystemdBus::connect_with_timeout`], to the bus at `address`
    /// (a D-Bus address such as `unix:path=/run/dbus/system_bus_socket`)
    /// whatever the environment says.
    pub fn connect_to(address: &str, timeout: Duration) -> Result<SystemdBus, Error> {
        let address = address.to_owned();
        zbus::block_on(async {
            let conn = open(&address, timeout).await?;
            let manager = manager(&conn).await?;
            manager.subscribe().await.map_err(|e| {
                if is_timeout(&e) {
                    Error::Timeout { call: "Subscribe (org.freedesktop.systemd1)".to_owned(), timeout }
                } else {
                    Error::Connect {
                        address: address.clone(),
                        message: format!("org.freedesktop.systemd1 did not answer: {}", error_message(&e)),
                    }
                }
            })?;
            // The first call made is that Subscribe.
            let calls = std::sync::atomic::AtomicUsize::new(1);
            Ok(SystemdBus { conn, address, timeout, listed: Mutex::default(), calls, watch: None })
        })
    }

    /// The bus address in use.
    pub fn address(&self) -> &str {
        &self.address
    }
}

/// A connection to the bus at `address`, with `timeout` as the deadline
/// of its set-up and of every call made on it.
async fn open(address: &str, timeout: Duration) -> Result<Connection, Error> {
    let build = zbus::connection::Builder::address(address)
        // A phase of hundreds of jobs produces as many JobRemoved
        // signals; they must not fill the queue while the calls
        // that queue the jobs are still waiting for replies.
        .max_queued(NonZeroUsize::new(1 << 16).unwrap_or(NonZeroUsize::MIN))
        .method_timeout(timeout)
        .build();
    // zbus's method timeout starts with the first call after the
    // handshake; the handshake (with its Hello) has its own.
    match with_timeout(timeout, build).await {
        Some(conn) => conn.map_err(|e| Error::Connect { address: address.to_owned(), message: error_message(&e) }),
        None => Err(Error::Timeout { call: format!("Hello (connection set-up on {address})"), timeout }),
    }
}

async fn manager(conn: &Connection) -> Result<ManagerProxy<'static>, Error> {
    ManagerProxy::builder(conn)
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .map_err(|e| Error::Call { call: "Manager proxy".to_owned(), message: error_message(&e) })
}

async fn props(conn: &Connection, path: OwnedObjectPath) -> Result<PropsProxy<'static>, Error> {
    PropsProxy::builder(conn)
        .path(path)
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .map_err(|e| Error::Call { call: "Properties proxy".to_owned(), message: error_message(&e) })
}

fn bytes_hex(v: Option<&OwnedVariant>) -> String {
    match v.map(|v| &**v) {
        Some(Variant::Array(a)) => hex::encode(a.iter().filter_map(|x| u8::try_from(x).ok()).collect::<Vec<u8>>()),
        _ => String::new(),
    }
}

/// Fails with [`Error::Timeout`] when one of a unit's property reads got
/// no reply; other failures leave the property empty (`None`: not asked).
fn answered<const N: usize>(
    unit: &str,
    replies: [(&str, Option<&zbus::Result<OwnedVariant>>); N],
    timeout: Duration,
) -> Result<(), Error> {
    match replies.into_iter().find(|(_, reply)| matches!(reply, Some(Err(e)) if is_timeout(e))) {
        Some((property, _)) => Err(Error::Timeout { call: format!("Get({unit} {property})"), timeout }),
        None => Ok(()),
    }
}

fn u32_of(v: Result<OwnedVariant, zbus::Error>) -> u32 {
    v.ok().and_then(|v| u32::try_from(v).ok()).unwrap_or(0)
}

fn i32_of(v: Result<OwnedVariant, zbus::Error>) -> i32 {
    v.ok().and_then(|v| i32::try_from(v).ok()).unwrap_or(0)
}

fn string_of(v: Result<OwnedVariant, zbus::Error>) -> String {
    v.ok().and_then(|v| String::try_from(v).ok()).unwrap_or_default()
}

/// `Get` of one property as one plain method call: a snapshot makes
/// hundreds of them, and a proxy per unit object costs more than the call
/// itself.
async fn raw_get(conn: &Connection, path: &str, interface: &str, name: &str) -> zbus::Result<OwnedVariant> {
    let reply = conn
        .call_method(
            Some("org.freedesktop.systemd1"),
            path,
            Some("org.freedesktop.DBus.Properties"),
            "Get",
            &(interface, name),
        )
        .await?;
    reply.body().deserialize()
}

/// A future that resolves after `d`, driven by a short-lived thread so it
/// does not depend on which runtime polls it.
fn delay(d: Duration) -> impl Future<Output = ()> {
    struct State {
        fired: bool,
        waker: Option<Waker>,
    }
    let state = Arc::new(Mutex::new(State { fired: false, waker: None }));
    let thread_state = Arc::clone(&state);
    std::thread::spawn(move || {
        std::thread::sleep(d);
        if let Ok(mut s) = thread_state.lock() {
            s.fired = true;
            if let Some(w) = s.waker.take() {
                w.wake();
            }
        }
    });
    std::future::poll_fn(move |cx| match state.lock() {
        Ok(s) if s.fired => Poll::Ready(()),
        Ok(mut s) => {
            s.waker = Some(cx.waker().clone());
            Poll::Pending
        }
        Err(_) => Poll::Ready(()),
    })
}

/// Races `fut` against a delay; `None` when the delay won.
async fn with_timeout<T>(d: Duration, fut: impl Future<Output = T>) -> Option<T> {
    let mut fut = pin!(fut);
    let mut timer = pin!(delay(d));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        timer.as_mut().poll(cx).map(|()| None)
    })
    .await
}

/// The object path systemd gives the unit `name` (its
/// `unit_dbus_path_from_name`): under `/org/freedesktop/systemd1/unit/`,
/// the name with every byte other than an ASCII letter, or a digit after
/// the first byte, written as `_` and two lowercase hex digits.
fn unit_object_path(name: &str) -> String {
    use std::fmt::Write as _;
    const PREFIX: &str = "/org/freedesktop/systemd1/unit/";
    let mut path = String::with_capacity(PREFIX.len() + name.len() * 3);
    path.push_str(PREFIX);
    if name.is_empty() {
        path.push('_');
    }
    for (i, b) in name.bytes().enumerate() {
        if b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()) {
            path.push(char::from(b));
        } else {
            let _ = write!(path, "_{b:02x}");
        }
    }
    path
}

fn job_id(path: &str) -> Option<u32> {
    path.rsplit('/').next()?.parse().ok()
}

impl SystemdBus {
    /// Counts `n` method calls.
    fn count(&self, n: usize) {
        self.calls.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    async fn list_units_async(&self) -> Result<LiveState, Error> {
        let manager = manager(&self.conn).await?;
        self.count(1);
        let listed = manager.list_units().await.map_err(call_err("ListUnits", self.timeout))?;
        let mut names = HashSet::with_capacity(listed.len());
        let units = listed
            .into_iter()
            .map(|(name, _description, load, active, sub, following, ..)| {
                names.insert(Box::from(name.as_str()));
                let unit = LiveUnit {
                    active_state: active.into(),
                    sub_state: sub,
                    load_state: load,
                    following,
                    deps_unread: true,
                    ..LiveUnit::default()
                };
                (name, unit)
            })
            .collect();
        if let Ok(mut cache) = self.listed.lock() {
            *cache = names;
        }
        let manager_exe = std::fs::canonicalize("/proc/1/exe").ok().map(|p| p.to_string_lossy().into_owned());
        Ok(LiveState { units, manager_exe, ..Default::default() })
    }

    /// The object path of a unit: made from its name when the last listing
    /// has it, else asked with `GetUnit`; `None` for a unit that is not
    /// loaded (a property read on a made-up path would load it).
    async fn unit_path(&self, unit: &str) -> Result<Option<OwnedObjectPath>, Error> {
        if self.listed.lock().is_ok_and(|listed| listed.contains(unit))
            && let Ok(path) = OwnedObjectPath::try_from(unit_object_path(unit))
        {
            return Ok(Some(path));
        }
        self.count(1);
        match manager(&self.conn).await?.get_unit(unit).await {
            Ok(path) => Ok(Some(path)),
            Err(e) if is_timeout(&e) => Err(Error::Timeout { call: format!("GetUnit({unit})"), timeout: self.timeout }),
            Err(_) => Ok(None),
        }
    }

    /// Reads properties of the `Unit` interface of many units, pipelined:
    /// `properties` of each of `units`. A unit that went away in between
    /// is left out; a property that cannot be read is left out too.
    async fn unit_properties(
        &self,
        units: &[String],
        properties: &[&str],
    ) -> Result<BTreeMap<String, Vec<(String, OwnedVariant)>>, Error> {
        let reads = units.iter().flat_map(|unit| properties.iter().map(move |p| (unit, *p))).map(
            |(unit, property)| async move {
                let Some(path) = self.unit_path(unit).await? else { return Ok(None) };
                self.count(1);
                match raw_get(&self.conn, path.as_str(), UNIT_INTERFACE, property).await {
                    Ok(value) => Ok(Some((unit.clone(), property.to_owned(), value))),
                    Err(e) if is_timeout(&e) => {
                        Err(Error::Timeout { call: format!("Get({unit} {property})"), timeout: self.timeout })
                    }
                    Err(_) => Ok(None),
                }
            },
        );
        let read: Vec<Option<(String, String, OwnedVariant)>> =
            stream::iter(reads).buffer_unordered(CALLS_IN_FLIGHT).try_collect().await?;
        let mut out: BTreeMap<String, Vec<(String, OwnedVariant)>> = BTreeMap::new();
        for (unit, property, value) in read.into_iter().flatten() {
            out.entry(unit).or_default().push((property, value));
        }
        Ok(out)
    }

    /// `FragmentPath` of each unit: told by the unit search path where it
    /// can be ([`SearchPath`]), read from systemd for the rest.
    async fn fragment_paths_async(&self, units: &[String]) -> Result<BTreeMap<String, String>, Error> {
        let search = SearchPath::read(std::path::Path::new("/"));
        let mut out = BTreeMap::new();
        let mut asked = Vec::new();
        for unit in units {
            match search.fragment(unit) {
                Some(path) => {
                    out.insert(unit.clone(), path);
                }
                None => asked.push(unit.clone()),
            }
        }
        let read = self.unit_properties(&asked, &["FragmentPath"]).await?;
        out.extend(read.into_iter().filter_map(|(unit, mut values)| {
            let (_, value) = values.pop()?;
            Some((unit, String::try_from(value).ok()?))
        }));
        Ok(out)
    }

    async fn dependencies_async(
        &self,
        units: &[String],
        properties: &[&str],
    ) -> Result<BTreeMap<String, Dependencies>, Error> {
        let read = self.unit_properties(units, properties).await?;
        Ok(read
            .into_iter()
            .map(|(unit, values)| {
                let deps = values
                    .into_iter()
                    .filter_map(|(property, value)| {
                        let names = Vec::<String>::try_from(value).ok().filter(|v| !v.is_empty())?;
                        Some((property, names))
                    })
                    .collect();
                (unit, deps)
            })
            .collect())
    }

    async fn status_async(&self, name: &str) -> Result<UnitStatus, Error> {
        let manager = manager(&self.conn).await?;
        let path = match manager.load_unit(name).await {
            Ok(p) => p,
            Err(e) if is_timeout(&e) => {
                return Err(Error::Timeout { call: format!("LoadUnit({name})"), timeout: self.timeout });
            }
            Err(_) => {
                return Ok(UnitStatus { load_state: "not-found".into(), ..Default::default() });
            }
        };
        let p = props(&self.conn, path).await?;
        let (load, active, sub, inv) = join4(
            p.get(UNIT_INTERFACE, "LoadState"),
            p.get(UNIT_INTERFACE, "ActiveState"),
            p.get(UNIT_INTERFACE, "SubState"),
            p.get(UNIT_INTERFACE, "InvocationID"),
        )
        .await;
        let replies = [("LoadState", &load), ("ActiveState", &active), ("SubState", &sub), ("InvocationID", &inv)];
        answered(name, replies.map(|(p, r)| (p, Some(r))), self.timeout)?;
        let mut st = UnitStatus {
            load_state: string_of(load),
            active_state: string_of(active).into(),
            sub_state: string_of(sub),
            invocation_id: bytes_hex(inv.ok().as_ref()),
            ..Default::default()
        };
        if name.ends_with(".service") {
            let (pid, result, code, status) = join4(
                p.get(SERVICE_INTERFACE, "MainPID"),
                p.get(SERVICE_INTERFACE, "Result"),
                p.get(SERVICE_INTERFACE, "ExecMainCode"),
                p.get(SERVICE_INTERFACE, "ExecMainStatus"),
            )
            .await;
            let replies =
                [("MainPID", &pid), ("Result", &result), ("ExecMainCode", &code), ("ExecMainStatus", &status)];
            answered(name, replies.map(|(p, r)| (p, Some(r))), self.timeout)?;
            st.main_pid = u32_of(pid);
            st.result = string_of(result);
            st.exec_main_code = i32_of(code);
            st.exec_main_status = i32_of(status);
        }
        Ok(st)
    }

    /// Queues `jobs` and awaits their ends, all in one loop that never
    /// stops reading: the `JobRemoved` signals as they come (a signal
    /// stream left unread fills up and stops the connection from reading
    /// replies), the replies of at most [`CALLS_IN_FLIGHT`] calls, and at
    /// most [`JOBS_IN_FLIGHT`] jobs queued at once. A job whose signal is
    /// late is not taken for timed out: systemd is asked whether it still
    /// exists (`GetJob`) and, when it does not, where its unit is; only a
    /// job still there at its timeout is cancelled and timed out. A call
    /// that gets no answer is made once more, then reported as
    /// [`JobResult::NoReply`].
    async fn run_jobs_async(
        &self,
        jobs: &[(JobKind, String)],
        timeout: Duration,
        on_done: &mut dyn FnMut(&JobOutcome),
    ) -> Result<Vec<JobOutcome>, Error> {
        let manager = manager(&self.conn).await?;
        // The signal stream exists before the first job is queued, so no
        // JobRemoved can be missed, however fast a job finishes; and it is
        // read all along, between the calls too.
        let mut removed = signal_stream(&self.conn, "JobRemoved", SIGNALS_QUEUED, self.timeout).await?;
        let ours: HashSet<&str> = jobs.iter().map(|(_, unit)| unit.as_str()).collect();
        let mut batch = Batch { jobs, timeout, on_done, results: vec![None; jobs.len()], pending: HashMap::new() };
        // Signals of our units whose call has not been answered yet: the
        // signal can be read before the reply that names its job.
        let mut early: HashMap<String, String> = HashMap::new();
        let mut calls = FuturesUnordered::new();
        let mut checks = FuturesUnordered::new();
        let mut next = 0;
        let mut tick = Box::pin(delay(JOB_TICK));
        let mut signals_open = true;
        loop {
            while next < jobs.len()
                && calls.len() + checks.len() < CALLS_IN_FLIGHT
                && calls.len() + batch.pending.len() < JOBS_IN_FLIGHT
            {
                calls.push(queue_job(&manager, jobs[next].0, &jobs[next].1, next, false));
                next += 1;
            }
            if next == jobs.len() && calls.is_empty() && checks.is_empty() && batch.pending.is_empty() {
                break;
            }
            // Signals first, so that a job's signal is always seen before
            // an answer about it that came later.
            let event = std::future::poll_fn(|cx| {
                if signals_open && let Poll::Ready(signal) = removed.poll_next_unpin(cx) {
                    return Poll::Ready(JobEvent::Signal(signal));
                }
                if let Poll::Ready(Some(queued)) = calls.poll_next_unpin(cx) {
                    return Poll::Ready(JobEvent::Queued(queued));
                }
                if let Poll::Ready(Some(checked)) = checks.poll_next_unpin(cx) {
                    return Poll::Ready(JobEvent::Checked(checked));
                }
                tick.as_mut().poll(cx).map(|()| JobEvent::Tick)
            })
            .await;
            match event {
                JobEvent::Signal(Some(Ok(msg))) => {
                    let Some((job, unit, result)) = job_removed(&msg) else { continue };
                    if let Some(waiting) = batch.pending.remove(&job) {
                        // A job cancelled here for its timeout ends
                        // "canceled": that is the timeout.
                        let r = if waiting.cancelling && result == "canceled" {
                            JobResult::TimedOut { seconds: timeout.as_secs() }
                        } else {
                            job_result(&result)
                        };
                        batch.finish(waiting.index, r);
                    } else if ours.contains(unit.as_str()) {
                        early.insert(job, result);
                    }
                }
                JobEvent::Signal(Some(Err(_))) => {}
                JobEvent::Signal(None) => {
                    // The connection is gone: every job still waiting is
                    // asked about (and those calls will tell).
                    signals_open = false;
                    let now = Instant::now();
                    batch.pending.values_mut().for_each(|w| w.next_check = now);
                }
                JobEvent::Queued((index, _, Ok(path))) => {
                    let path = path.as_str().to_owned();
                    if let Some(watch) = &self.watch {
                        watch.ours(&path);
                    }
                    match early.remove(&path) {
                        Some(result) => batch.finish(index, job_result(&result)),
                        None => {
                            let now = Instant::now();
                            let next_check = if signals_open { now + FIRST_JOB_CHECK.min(timeout) } else { now };
                            let waiting =
                                Waiting { index, queued_at: now, next_check, checking: false, cancelling: false };
                            batch.pending.insert(path, waiting);
                        }
                    }
                }
                JobEvent::Queued((index, retried, Err(e))) => {
                    let (kind, unit) = &jobs[index];
                    if !unanswered(&e) {
                        batch.finish(index, JobResult::NotQueued { message: error_message(&e) });
                    } else if !retried {
                        // With mode "replace", queueing the same job again
                        // is harmless: it merges with the job the first
                        // call may have queued, or replaces it.
                        calls.push(queue_job(&manager, *kind, unit, index, true));
                    } else {
                        let message = format!("{} {unit}, asked twice: {}", job_call(*kind), error_message(&e));
                        batch.finish(index, JobResult::NoReply { message });
                    }
                }
                JobEvent::Checked((path, check)) => batch.checked(&path, check),
                JobEvent::Tick => {
                    tick = Box::pin(delay(JOB_TICK));
                    let now = Instant::now();
                    for (path, w) in &mut batch.pending {
                        if calls.len() + checks.len() >= CALLS_IN_FLIGHT {
                            break;
                        }
                        if w.checking || now < w.next_check {
                            continue;
                        }
                        w.checking = true;
                        let (kind, unit) = &jobs[w.index];
                        let cancel = now >= w.queued_at + timeout;
                        w.cancelling |= cancel;
                        checks.push(check_job(&self.conn, &manager, path.clone(), *kind, unit, cancel));
                    }
                }
            }
        }
        Ok(batch
            .results
            .into_iter()
            .zip(jobs)
            .map(|(r, (kind, unit))| JobOutcome {
                unit: unit.clone(),
                kind: *kind,
                result: r.unwrap_or(JobResult::TimedOut { seconds: timeout.as_secs() }),
            })
            .collect())
    }

    async fn reload_like(&self, reexec: bool, timeout: Duration) -> Result<(), Error> {
        let what = if reexec { "re-exec" } else { "daemon-reload" };
        let manager = manager(&self.conn).await?;
        let mut reloading = signal_stream(&self.conn, "Reloading", NonZeroUsize::MIN, self.timeout).await?;
        let call = async {
            if reexec {
                // systemd drops its bus connection while it re-executes, so
                // the reply may never come; the Reloading(false) signal,
                // sent once the new instance is up, is what tells that it
                // is done.
                let _ = with_timeout(Duration::from_secs(5), manager.reexecute()).await;
                None
            } else {
                // systemd answers Reload once the reload is done.
                Some(manager.reload().await)
            }
        };
        // The call and the signal are awaited together: the signal stream
        // is read while the call waits.
        let wait = async {
            let mut call = pin!(call);
            let (mut answered, mut signals_open) = (false, true);
            loop {
                let event = std::future::poll_fn(|cx| {
                    if signals_open && let Poll::Ready(signal) = reloading.poll_next_unpin(cx) {
                        return Poll::Ready(Err(signal));
                    }
                    if !answered && let Poll::Ready(reply) = call.as_mut().poll(cx) {
                        return Poll::Ready(Ok(reply));
                    }
                    Poll::Pending
                })
                .await;
                match event {
                    Err(Some(Ok(msg))) => {
                        if let Ok((false,)) = msg.body().deserialize::<(bool,)>() {
                            return Ok(());
                        }
                    }
                    Err(Some(Err(_))) => {}
                    Err(None) => signals_open = false,
                    // A reload that takes longer than the call deadline is
                    // still awaited, by its signal.
                    Ok(Some(Err(e))) if !is_timeout(&e) => return Err(call_err("Reload", self.timeout)(e)),
                    Ok(Some(Ok(()))) => return Ok(()),
                    Ok(_) => answered = true,
                }
                if answered && !signals_open {
                    return Err(Error::ReloadTimeout { what, seconds: timeout.as_secs() });
                }
            }
        };
        match with_timeout(timeout, wait).await {
            Some(done) => done?,
            None => return Err(Error::ReloadTimeout { what, seconds: timeout.as_secs() }),
        }
        if reexec {
            // systemd carries its subscribers over a re-exec; subscribing
            // again covers a manager that did not, and "already
            // subscribed" is the answer when it did.
            match manager.subscribe().await {
                Ok(()) => {}
                Err(zbus::Error::MethodError(name, ..))
                    if name.as_str() == "org.freedesktop.systemd1.AlreadySubscribed" => {}
                Err(e) => return Err(call_err("Subscribe", self.timeout)(e)),
            }
        }
        Ok(())
    }

    /// Tells whether the transient unit's program ran and exited by
    /// itself: exit statuses from 200 on are systemd's own, for a program
    /// it could not set up or execute.
    async fn ran_and_exited(&self, manager: &ManagerProxy<'_>, unit: &str) -> bool {
        let Ok(path) = manager.get_unit(unit).await else { return false };
        let Ok(props) = props(&self.conn, path).await else { return false };
        let code = i32_of(props.get(SERVICE_INTERFACE, "ExecMainCode").await);
        let status = i32_of(props.get(SERVICE_INTERFACE, "ExecMainStatus").await);
        code == 1 && (0..200).contains(&status)
    }

    async fn run_transient_async(&self, spec: &TransientSpec) -> Result<OwnedObjectPath, Error> {
        let manager = manager(&self.conn).await?;
        let exec = vec![(spec.argv.first().cloned().unwrap_or_default(), spec.argv.clone(), false)];
        let mut properties: Vec<(&str, Variant<'_>)> = vec![
            ("Description", Variant::from(spec.description.as_str())),
            ("Type", Variant::from("exec")),
            ("CollectMode", Variant::from("inactive-or-failed")),
            // Keep the unit (and its exit status) around while this client
            // is connected, as `systemd-run --wait` does.
            ("AddRef", Variant::from(true)),
            ("ExecStart", Variant::from(exec)),
            ("Environment", Variant::from(spec.environment.clone())),
            ("StandardInput", Variant::from("null")),
            ("StandardOutputFileToTruncate", Variant::from(spec.stdout.to_string_lossy().into_owned())),
            ("StandardErrorFileToTruncate", Variant::from(spec.stderr.to_string_lossy().into_owned())),
        ];
        if let Some(dir) = &spec.working_directory {
            properties.push(("WorkingDirectory", Variant::from(dir.to_string_lossy().into_owned())));
        }
        let mut removed = signal_stream(&self.conn, "JobRemoved", SIGNALS_QUEUED, self.timeout).await?;
        // The signals that come while the call waits are kept: the start
        // job can end before its reply is read.
        let mut seen: HashMap<String, String> = HashMap::new();
        let call = manager.start_transient_unit(&spec.unit, "fail", &properties, &[]);
        let job = reading_job_signals(call, &mut removed, &mut seen)
            .await
            .map_err(call_err(format!("StartTransientUnit({})", spec.unit), self.timeout))?;
        // A Type=exec unit's start job ends as soon as its program runs; a
        // bus that never says so gets the call deadline, and the job is
        // cancelled so that the unit cannot start behind the caller's back.
        let started = async {
            if let Some(result) = seen.remove(job.as_str()) {
                return Some(result);
            }
            while let Some(msg) = removed.next().await {
                if let Some((path, _, result)) = msg.ok().as_ref().and_then(job_removed)
                    && path == job.as_str()
                {
                    return Some(result);
                }
            }
            None
        };
        match with_timeout(self.timeout, started).await {
            // A run that ends at once (it found the lock held, say) can
            // make the start job fail although its program ran and exited:
            // its exit status is then the answer.
            Some(Some(result)) if result != "done" && !self.ran_and_exited(&manager, &spec.unit).await => {
                return Err(Error::Call {
                    call: format!("StartTransientUnit({})", spec.unit),
                    message: format!("the start job ended with result {result}"),
                });
            }
            Some(_) => {}
            None => {
                if let Some(id) = job_id(job.as_str()) {
                    let _ = manager.cancel_job(id).await;
                }
                return Err(Error::Timeout {
                    call: format!("StartTransientUnit({}) (its start job)", spec.unit),
                    timeout: self.timeout,
                });
            }
        }
        manager.get_unit(&spec.unit).await.map_err(call_err(format!("GetUnit({})", spec.unit), self.timeout))
    }
}

/// How long [`ServiceManager::stop_watching`] waits for the jobs a watch
/// saw queued to end: a unit a target pulled in may still be starting
/// when the target's own job has ended.
const WATCH_GRACE: Duration = Duration::from_secs(5);

/// How many reads of a job's type a watch has in flight at once; a job
/// seen while that many are waiting keeps its type unread.
const TYPES_IN_FLIGHT: usize = 64;

/// A watch of every job systemd runs: its signal streams, read all along
/// by a thread of its own, so that nothing fills up however long the
/// caller does something else (an activation script, a re-exec). It has
/// a bus connection of its own: its reads of job types do not count
/// against the pending replies the bus allows the connection that queues
/// the jobs, and its signals never hold that connection's replies back.
struct JobWatch {
    conn: Connection,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<Flag>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl JobWatch {
    /// Marks the job at `path` as queued by this client.
    fn ours(&self, path: &str) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.ours(path);
        }
    }

    /// Tells whether a job the watch saw queued has not ended yet.
    fn jobs_open(&self) -> bool {
        self.seen.lock().is_ok_and(|s| s.open > 0)
    }

    /// Stops the thread, once it has read what is already queued.
    fn end(&mut self) {
        self.stop.raise();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for JobWatch {
    fn drop(&mut self) {
        self.end();
    }
}

/// What a watch has seen.
#[derive(Debug, Default)]
struct Seen {
    keep: usize,
    jobs: Vec<SeenJob>,
    /// Each kept job's position, by job path.
    index: HashMap<String, usize>,
    /// The paths of jobs seen but not kept.
    left_out: HashSet<String>,
    /// The paths of the jobs this client queued.
    ours: HashSet<String>,
    /// How many kept jobs have not ended.
    open: usize,
}

impl Seen {
    /// A job was queued (`JobNew`); returns its position when it is kept.
    fn queued(&mut self, path: String, unit: String) -> Option<usize> {
        if self.index.contains_key(&path) || self.left_out.contains(&path) {
            return None;
        }
        self.keep(path, SeenJob { unit, job_type: None, result: None, ours: false }).inspect(|_| self.open += 1)
    }

    /// A job ended (`JobRemoved`). One whose start was not seen (queued
    /// before the watch, or its signal lost) is kept all the same.
    fn ended(&mut self, path: String, unit: String, result: String) {
        match self.index.get(&path) {
            Some(&i) => {
                if let Some(job) = self.jobs.get_mut(i)
                    && job.result.is_none()
                {
                    job.result = Some(result);
                    self.open = self.open.saturating_sub(1);
                }
            }
            None if !self.left_out.contains(&path) => {
                let _ = self.keep(path, SeenJob { unit, job_type: None, result: Some(result), ours: false });
            }
            None => {}
        }
    }

    fn keep(&mut self, path: String, mut job: SeenJob) -> Option<usize> {
        if self.jobs.len() >= self.keep {
            self.left_out.insert(path);
            return None;
        }
        job.ours = self.ours.contains(&path);
        self.index.insert(path, self.jobs.len());
        self.jobs.push(job);
        Some(self.jobs.len() - 1)
    }

    fn ours(&mut self, path: &str) {
        self.ours.insert(path.to_owned());
        if let Some(job) = self.index.get(path).and_then(|&i| self.jobs.get_mut(i)) {
            job.ours = true;
        }
    }
}

/// A flag a thread waits on: raised once, wakes the waiting task.
#[derive(Debug, Default)]
struct Flag(Mutex<(bool, Option<Waker>)>);

impl Flag {
    fn raise(&self) {
        if let Ok(mut state) = self.0.lock() {
            state.0 = true;
            if let Some(waker) = state.1.take() {
                waker.wake();
            }
        }
    }

    fn poll(&self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        match self.0.lock() {
            Ok(state) if state.0 => Poll::Ready(()),
            Ok(mut state) => {
                state.1 = Some(cx.waker().clone());
                Poll::Pending
            }
            Err(_) => Poll::Ready(()),
        }
    }
}

/// What a watch's thread reads next.
enum WatchEvent {
    New(Option<zbus::Result<zbus::Message>>),
    Removed(Option<zbus::Result<zbus::Message>>),
    Typed((usize, Option<String>)),
    Stop,
}

/// Reads a watch's signals until `stop` is raised: signals first, so that
/// every signal already queued is read before the watch ends.
async fn watch_jobs_loop(
    conn: Connection,
    mut new: zbus::MessageStream,
    mut removed: zbus::MessageStream,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<Flag>,
) {
    let mut types = FuturesUnordered::new();
    let (mut new_open, mut removed_open) = (true, true);
    loop {
        let event = std::future::poll_fn(|cx| {
            if new_open && let Poll::Ready(m) = new.poll_next_unpin(cx) {
                return Poll::Ready(WatchEvent::New(m));
            }
            if removed_open && let Poll::Ready(m) = removed.poll_next_unpin(cx) {
                return Poll::Ready(WatchEvent::Removed(m));
            }
            if let Poll::Ready(Some(typed)) = types.poll_next_unpin(cx) {
                return Poll::Ready(WatchEvent::Typed(typed));
            }
            stop.poll(cx).map(|()| WatchEvent::Stop)
        })
        .await;
        match event {
            WatchEvent::New(Some(Ok(msg))) => {
                let Ok((_, job, unit)) = msg.body().deserialize::<(u32, OwnedObjectPath, String)>() else { continue };
                let path = job.as_str().to_owned();
                let kept = seen.lock().ok().and_then(|mut s| s.queued(path.clone(), unit));
                if let Some(i) = kept
                    && types.len() < TYPES_IN_FLIGHT
                {
                    types.push(job_type(&conn, path, i));
                }
            }
            WatchEvent::Removed(Some(Ok(msg))) => {
                if let Some((path, unit, result)) = job_removed(&msg)
                    && let Ok(mut s) = seen.lock()
                {
                    s.ended(path, unit, result);
                }
            }
            WatchEvent::New(None) => new_open = false,
            WatchEvent::Removed(None) => removed_open = false,
            WatchEvent::New(Some(Err(_))) | WatchEvent::Removed(Some(Err(_))) => {}
            WatchEvent::Typed((i, Some(job_type))) => {
                if let Ok(mut s) = seen.lock()
                    && let Some(job) = s.jobs.get_mut(i)
                {
                    job.job_type = Some(job_type);
                }
            }
            WatchEvent::Typed((_, None)) => {}
            WatchEvent::Stop => return,
        }
    }
}

/// The `JobType` of the job at `path`, while it exists.
async fn job_type(conn: &Connection, path: String, index: usize) -> (usize, Option<String>) {
    let job_type = raw_get(conn, &path, "org.freedesktop.systemd1.Job", "JobType")
        .await
        .ok()
        .and_then(|v| String::try_from(v).ok())
        .filter(|t| !t.is_empty());
    (index, job_type)
}

/// How many jobs a batch keeps queued at once. systemd watches the client
/// of every job queued over the bus with a match rule of its own bus
/// connection, and the bus daemon allows a connection 512 match rules
/// (`max_match_rules_per_connection`); when systemd cannot add one, it
/// drops its connection to the bus, and with it every reply and signal
/// in flight and every client's `Subscribe` (which a batch of 600 jobs at
/// once did). Half the limit leaves room for systemd's own rules and for
/// other clients' jobs. A larger batch is queued as a sliding window, so
/// systemd orders a job only against the jobs queued with it.
const JOBS_IN_FLIGHT: usize = 256;

/// How long a job may go without its `JobRemoved` signal before systemd is
/// asked whether it still exists; after each answer that it does, twice
/// as long (from when it was queued), up to the job timeout.
const FIRST_JOB_CHECK: Duration = Duration::from_secs(5);

/// How often a batch looks at its jobs' deadlines and checks.
const JOB_TICK: Duration = Duration::from_millis(250);

/// How many signals a stream holds between two reads. The streams are
/// read continuously; this absorbs bursts. A full queue would stop the
/// connection from reading anything else, replies included.
const SIGNALS_QUEUED: NonZeroUsize = match NonZeroUsize::new(4096) {
    Some(n) => n,
    None => NonZeroUsize::MIN,
};

/// How long to wait before a job call that got no answer is made again.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// A stream of the manager's signal `member`, holding up to `queued`
/// signals between reads.
async fn signal_stream(
    conn: &Connection,
    member: &'static str,
    queued: NonZeroUsize,
    timeout: Duration,
) -> Result<zbus::MessageStream, Error> {
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender("org.freedesktop.systemd1")
        .path("/org/freedesktop/systemd1")
        .interface("org.freedesktop.systemd1.Manager")
        .member(member)
        .build()
        .map_err(|e| Error::Call { call: format!("AddMatch({member})"), message: error_message(&e) })?;
    zbus::MessageStream::for_match_rule(rule, conn, Some(queued))
        .await
        .map_err(call_err(format!("AddMatch({member})"), timeout))
}

/// A `JobRemoved` signal's job path, unit and result.
fn job_removed(msg: &zbus::Message) -> Option<(String, String, String)> {
    let (_, job, unit, result): (u32, OwnedObjectPath, String, String) = msg.body().deserialize().ok()?;
    Some((job.as_str().to_owned(), unit, result))
}

fn job_result(systemd_result: &str) -> JobResult {
    if systemd_result == "done" {
        JobResult::Done
    } else {
        JobResult::Failed { systemd_result: systemd_result.to_owned() }
    }
}

/// The manager's method for a job.
fn job_call(kind: JobKind) -> &'static str {
    match kind {
        JobKind::Stop => "StopUnit",
        JobKind::Reload => "ReloadUnit",
        JobKind::Restart => "RestartUnit",
        JobKind::Start => "StartUnit",
    }
}

/// Tells whether a call went unanswered (no reply in time, systemd away
/// from the bus, the connection lost) rather than refused.
fn unanswered(e: &zbus::Error) -> bool {
    systemd_away(e) || matches!(e, zbus::Error::InputOutput(_))
}

/// Awaits `call` while reading `signals`, keeping the job path and result
/// of every `JobRemoved` that comes meanwhile in `seen`.
async fn reading_job_signals<T>(
    call: impl Future<Output = T>,
    signals: &mut zbus::MessageStream,
    seen: &mut HashMap<String, String>,
) -> T {
    let mut call = pin!(call);
    let mut open = true;
    std::future::poll_fn(|cx| {
        while open {
            match signals.poll_next_unpin(cx) {
                Poll::Ready(Some(msg)) => {
                    if let Some((job, _, result)) = msg.ok().as_ref().and_then(job_removed) {
                        seen.insert(job, result);
                    }
                }
                Poll::Ready(None) => open = false,
                Poll::Pending => break,
            }
        }
        call.as_mut().poll(cx)
    })
    .await
}

/// Queues one job; `again` after a first call went unanswered.
async fn queue_job(
    m: &ManagerProxy<'_>,
    kind: JobKind,
    unit: &str,
    index: usize,
    again: bool,
) -> (usize, bool, zbus::Result<OwnedObjectPath>) {
    if again {
        delay(RETRY_PAUSE).await;
        // systemd may have left the bus and come back, without the
        // subscription that makes it send JobRemoved to us.
        let _ = m.subscribe().await;
    }
    let r = match kind {
        JobKind::Stop => m.stop_unit(unit, "replace").await,
        JobKind::Reload => m.reload_unit(unit, "replace").await,
        JobKind::Restart => m.restart_unit(unit, "replace").await,
        JobKind::Start => m.start_unit(unit, "replace").await,
    };
    (index, again, r)
}

/// What systemd says about a job whose `JobRemoved` has not come.
enum JobCheck {
    /// It is still queued or running; cancelled, when asked to.
    Exists {
        /// Whether it was cancelled.
        cancelled: bool,
    },
    /// It is gone; the unit's `ActiveState` and `SubState` now.
    Gone(String, String),
    /// systemd did not answer.
    Unanswered(String),
}

/// Asks systemd whether the job at `path` still exists (`GetJob`), and when
/// it does not, what state its unit is in. With `cancel`, a job that still
/// exists is cancelled.
async fn check_job(
    conn: &Connection,
    m: &ManagerProxy<'_>,
    path: String,
    kind: JobKind,
    unit: &str,
    cancel: bool,
) -> (String, JobCheck) {
    let Some(id) = job_id(&path) else {
        return (path, JobCheck::Gone(String::new(), String::new()));
    };
    let reply = conn
        .call_method(
            Some("org.freedesktop.systemd1"),
            "/org/freedesktop/systemd1",
            Some("org.freedesktop.systemd1.Manager"),
            "GetJob",
            &(id,),
        )
        .await;
    let check = match reply {
        Ok(_) => {
            if cancel {
                // The job may finish in the meantime; a failed cancel then
                // means there was nothing left to cancel.
                let _ = m.cancel_job(id).await;
            }
            JobCheck::Exists { cancelled: cancel }
        }
        Err(zbus::Error::MethodError(name, ..)) if name.as_str() == "org.freedesktop.systemd1.NoSuchJob" => {
            // Its signal was lost (systemd left the bus, or the
            // subscription did): subscribe again for the jobs to come.
            let _ = m.subscribe().await;
            match unit_state(conn, m, unit).await {
                Ok((active, sub)) => JobCheck::Gone(active, sub),
                Err(e) => JobCheck::Unanswered(format!("the state of {unit}: {}", error_message(&e))),
            }
        }
        Err(e) => JobCheck::Unanswered(format!("GetJob({id}) for the {kind} of {unit}: {}", error_message(&e))),
    };
    (path, check)
}

/// A unit's `ActiveState` and `SubState`; `inactive`/`dead` for a unit
/// systemd no longer has loaded.
async fn unit_state(conn: &Connection, m: &ManagerProxy<'_>, unit: &str) -> zbus::Result<(String, String)> {
    let path = match m.get_unit(unit).await {
        Ok(path) => path,
        Err(zbus::Error::MethodError(name, ..)) if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit" => {
            return Ok(("inactive".to_owned(), "dead".to_owned()));
        }
        Err(e) => return Err(e),
    };
    let get = |name: &'static str| {
        let path = &path;
        async move {
            Ok::<_, zbus::Error>(
                String::try_from(raw_get(conn, path.as_str(), UNIT_INTERFACE, name).await?).unwrap_or_default(),
            )
        }
    };
    let (active, sub) = join(get("ActiveState"), get("SubState")).await;
    Ok((active?, sub?))
}

/// Tells whether a unit in `active_state` is where `kind` takes it, so
/// that a job whose end was not signalled can count as done.
fn reached(kind: JobKind, active_state: &str) -> bool {
    match kind {
        JobKind::Stop => matches!(active_state, "inactive" | "failed"),
        JobKind::Start | JobKind::Restart | JobKind::Reload => matches!(active_state, "active" | "reloading"),
    }
}

/// What happens while a batch of jobs runs.
enum JobEvent {
    Signal(Option<zbus::Result<zbus::Message>>),
    Queued((usize, bool, zbus::Result<OwnedObjectPath>)),
    Checked((String, JobCheck)),
    Tick,
}

/// A queued job awaiting its end.
struct Waiting {
    /// Its position in the batch.
    index: usize,
    queued_at: Instant,
    /// When systemd is asked about it, if its signal has not come by then.
    next_check: Instant,
    /// Whether a check is under way.
    checking: bool,
    /// Whether it is being cancelled for its timeout.
    cancelling: bool,
}

/// The jobs of one `run_jobs` call and how far they got.
struct Batch<'a> {
    jobs: &'a [(JobKind, String)],
    timeout: Duration,
    on_done: &'a mut dyn FnMut(&JobOutcome),
    results: Vec<Option<JobResult>>,
    /// The queued jobs by job path.
    pending: HashMap<String, Waiting>,
}

impl Batch<'_> {
    fn finish(&mut self, index: usize, result: JobResult) {
        let (kind, unit) = &self.jobs[index];
        (self.on_done)(&JobOutcome { unit: unit.clone(), kind: *kind, result: result.clone() });
        self.results[index] = Some(result);
    }

    /// Takes in systemd's answer about a job whose signal had not come.
    fn checked(&mut self, path: &str, check: JobCheck) {
        // A job whose signal came meanwhile is no longer pending.
        let Some(w) = self.pending.get_mut(path) else { return };
        w.checking = false;
        let now = Instant::now();
        let deadline = w.queued_at + self.timeout;
        let (kind, unit) = &self.jobs[w.index];
        let index = w.index;
        let result = match check {
            JobCheck::Exists { cancelled: true } => JobResult::TimedOut { seconds: self.timeout.as_secs() },
            // Its deadline may have passed while systemd answered: the
            // next check then cancels it.
            JobCheck::Exists { cancelled: false } => {
                w.next_check = (now + (now - w.queued_at)).min(deadline);
                return;
            }
            JobCheck::Gone(active, _) if reached(*kind, &active) => JobResult::Done,
            JobCheck::Gone(active, sub) => JobResult::Failed {
                systemd_result: format!("unknown (its end was not signalled; {unit} is {active}/{sub})"),
            },
            JobCheck::Unanswered(message) if now >= deadline => JobResult::NoReply { message },
            JobCheck::Unanswered(_) => {
                w.next_check = (now + FIRST_JOB_CHECK).min(deadline);
                return;
            }
        };
        self.pending.remove(path);
        self.finish(index, result);
    }
}

impl ServiceManager for SystemdBus {
    fn list_units(&mut self) -> Result<LiveState, Error> {
        zbus::block_on(self.list_units_async())
    }

    fn fragment_paths(&mut self, units: &[String]) -> Result<BTreeMap<String, String>, Error> {
        zbus::block_on(self.fragment_paths_async(units))
    }

    fn dependencies(&mut self, units: &[String], properties: &[&str]) -> Result<BTreeMap<String, Dependencies>, Error> {
        zbus::block_on(self.dependencies_async(units, properties))
    }

    fn calls_made(&self) -> usize {
        self.calls.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn unit_status(&mut self, units: &[String]) -> Result<BTreeMap<String, UnitStatus>, Error> {
        let this = &*self;
        zbus::block_on(async {
            let all: Vec<(String, UnitStatus)> = stream::iter(
                units.iter().map(|u| async move { Ok::<_, Error>((u.clone(), this.status_async(u).await?)) }),
            )
            .buffer_unordered(UNITS_IN_FLIGHT / 4)
            .try_collect()
            .await?;
            Ok(all.into_iter().collect())
        })
    }

    fn run_jobs(
        &mut self,
        jobs: &[(JobKind, String)],
        timeout: Duration,
        on_done: &mut dyn FnMut(&JobOutcome),
    ) -> Result<Vec<JobOutcome>, Error> {
        zbus::block_on(self.run_jobs_async(jobs, timeout, on_done))
    }

    fn unit_processes(&mut self, unit: &str) -> Result<Vec<UnitProcess>, Error> {
        self.count(1);
        let listed = zbus::block_on(async {
            manager(&self.conn)
                .await?
                .get_unit_processes(unit)
                .await
                .map_err(call_err(format!("GetUnitProcesses({unit})"), self.timeout))
        })?;
        Ok(listed.into_iter().map(|(cgroup, pid, command)| UnitProcess { cgroup, pid, command }).collect())
    }

    fn daemon_reload(&mut self, timeout: Duration) -> Result<(), Error> {
        zbus::block_on(self.reload_like(false, timeout))
    }

    fn reexecute(&mut self, timeout: Duration) -> Result<(), Error> {
        zbus::block_on(self.reload_like(true, timeout))
    }

    fn reset_failed(&mut self) -> Result<(), Error> {
        zbus::block_on(async {
            manager(&self.conn).await?.reset_failed().await.map_err(call_err("ResetFailed", self.timeout))
        })
    }

    fn watch_jobs(&mut self, keep: usize) -> Result<(), Error> {
        drop(self.watch.take());
        let (conn, new, removed) = zbus::block_on(async {
            let conn = open(&self.address, self.timeout).await?;
            let new = signal_stream(&conn, "JobNew", SIGNALS_QUEUED, self.timeout).await?;
            let removed = signal_stream(&conn, "JobRemoved", SIGNALS_QUEUED, self.timeout).await?;
            manager(&conn).await?.subscribe().await.map_err(call_err("Subscribe", self.timeout))?;
            Ok::<_, Error>((conn, new, removed))
        })?;
        let seen = Arc::new(Mutex::new(Seen { keep, ..Seen::default() }));
        let stop = Arc::new(Flag::default());
        let (thread_conn, thread_seen, thread_stop) = (conn.clone(), Arc::clone(&seen), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("safe-switch-watch".to_owned())
            .spawn(move || zbus::block_on(watch_jobs_loop(thread_conn, new, removed, thread_seen, thread_stop)))
            .map_err(|e| Error::Call { call: "AddMatch(JobNew)".to_owned(), message: e.to_string() })?;
        self.watch = Some(JobWatch { conn, seen, stop, thread: Some(thread) });
        Ok(())
    }

    fn stop_watching(&mut self) -> WatchedJobs {
        let Some(mut watch) = self.watch.take() else { return WatchedJobs::default() };
        // Every signal the other connection has seen was routed to this
        // one too: a round trip to the bus makes sure it has been read.
        let _ = zbus::block_on(with_timeout(
            self.timeout,
            watch.conn.call_method(
                Some("org.freedesktop.DBus"),
                "/org/freedesktop/DBus",
                Some("org.freedesktop.DBus.Peer"),
                "Ping",
                &(),
            ),
        ));
        let until = Instant::now() + WATCH_GRACE;
        while watch.jobs_open() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        watch.end();
        let seen = watch.seen.lock().map(|mut s| std::mem::take(&mut *s)).unwrap_or_default();
        WatchedJobs { jobs: seen.jobs, dropped: seen.left_out.len() }
    }

    fn activity(&mut self, units: &[String]) -> Result<BTreeMap<String, Activity>, Error> {
        zbus::block_on(async {
            let live = self.list_units_async().await?;
            let mut wanted: std::collections::BTreeSet<String> = units.iter().cloned().collect();
            wanted.extend(live.units.iter().filter(|(_, u)| u.is_running()).map(|(n, _)| n.clone()));
            let wanted: Vec<String> = wanted.into_iter().collect();
            let mut out: BTreeMap<String, Activity> = live
                .units
                .into_iter()
                .map(|(name, u)| (name, Activity { active_state: u.active_state, invocation_id: None }))
                .collect();
            let read = self.unit_properties(&wanted, &["InvocationID"]).await?;
            for unit in &wanted {
                let invocation = read.get(unit).and_then(|values| values.first()).map(|(_, v)| bytes_hex(Some(v)));
                out.entry(unit.clone()).or_default().invocation_id = Some(invocation.unwrap_or_default());
            }
            Ok(out)
        })
    }

    fn run_transient(&mut self, spec: &TransientSpec, tick: &mut dyn FnMut()) -> Result<TransientExit, Error> {
        let path = zbus::block_on(self.run_transient_async(spec))?;
        // Poll rather than watch PropertiesChanged: ten reads a second are
        // nothing next to a switch, and polling cannot miss a transition.
        // The switch may re-execute systemd, which then leaves the bus for
        // a moment: calls fail with "no reply" or "unknown name" until it
        // is back. The unit and this client's reference on it survive the
        // re-exec, so such failures are waited out, for a while.
        let props = zbus::block_on(props(&self.conn, path.clone()))?;
        let mut away_since: Option<std::time::Instant> = None;
        let exit = loop {
            tick();
            let (active, code, status, result) = zbus::block_on(join4(
                props.get(UNIT_INTERFACE, "ActiveState"),
                props.get(SERVICE_INTERFACE, "ExecMainCode"),
                props.get(SERVICE_INTERFACE, "ExecMainStatus"),
                props.get(SERVICE_INTERFACE, "Result"),
            ));
            match active {
                Err(e) if systemd_away(&e) => {
                    let since = *away_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() > SYSTEMD_AWAY_GRACE {
                        break TransientExit::Unknown(format!(
                            "systemd did not answer for {} s: {}",
                            SYSTEMD_AWAY_GRACE.as_secs(),
                            error_message(&e)
                        ));
                    }
                }
                Err(e) => break TransientExit::Unknown(error_message(&e)),
                Ok(active) => {
                    away_since = None;
                    let active = String::try_from(active).unwrap_or_default();
                    if active == "inactive" || active == "failed" {
                        let status = i32_of(status);
                        break match i32_of(code) {
                            1 => TransientExit::Exited(status),
                            2 | 3 => TransientExit::Killed(status),
                            _ => TransientExit::Unknown(format!("{active}, result {}", string_of(result))),
                        };
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        tick();
        zbus::block_on(async {
            let unit = UnitProxy::builder(&self.conn).path(path.clone()).cache_properties(CacheProperties::No);
            if let Ok(u) = unit.build().await {
                // Dropping our reference lets systemd collect the unit.
                let _ = u.unref().await;
            }
        });
        Ok(exit)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn unit_object_paths_are_made_as_systemd_makes_them() {
        // Escapes of the kinds a real systemd's ListUnits shows: `.`, `-`,
        // `@`, `\\`, `_`, a leading digit.
        for (name, path) in [
            ("sshd.service", "sshd_2eservice"),
            ("getty@tty1.service", "getty_40tty1_2eservice"),
            ("-.mount", "_2d_2emount"),
            ("usr-lib-systemd-system\\x2dgenerators.mount", "usr_2dlib_2dsystemd_2dsystem_5cx2dgenerators_2emount"),
            ("mnt-model_tools_env-v1.mount", "mnt_2dmodel_5ftools_5fenv_2dv1_2emount"),
            ("blockdev@dev-vda.target", "blockdev_40dev_2dvda_2etarget"),
            ("1password.service", "_31password_2eservice"),
            ("bench-00120.service", "bench_2d00120_2eservice"),
        ] {
            assert_eq!(unit_object_path(name), format!("/org/freedesktop/systemd1/unit/{path}"), "{name}");
        }
        assert_eq!(unit_object_path(""), "/org/freedesktop/systemd1/unit/_");
        assert_eq!(unit_object_path("é.service"), "/org/freedesktop/systemd1/unit/_c3_a9_2eservice");
    }

    #[test]
    fn job_ids_from_paths() {
        assert_eq!(job_id("/org/freedesktop/systemd1/job/1234"), Some(1234));
        assert_eq!(job_id("/org/freedesktop/systemd1/job/x"), None);
    }

    #[test]
    fn a_call_without_reply_is_a_timeout_naming_the_call() {
        let timed_out = zbus::Error::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"));
        let err = call_err("ListUnits", Duration::from_secs(25))(timed_out);
        assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
        assert_eq!(err.to_string(), "D-Bus call ListUnits got no reply within 25s");
        let refused = zbus::Error::from(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"));
        assert!(matches!(call_err("ListUnits", Duration::from_secs(25))(refused), Error::Call { .. }));
    }

    /// A batch of `jobs` whose first job was queued `ago` and whose signal
    /// has not come; outcomes go to `done`.
    fn waiting<'a>(jobs: &'a [(JobKind, String)], ago: Duration, done: &'a mut dyn FnMut(&JobOutcome)) -> Batch<'a> {
        let queued_at = Instant::now().checked_sub(ago).unwrap();
        let waiting = Waiting { index: 0, queued_at, next_check: queued_at, checking: true, cancelling: false };
        let pending = [("/org/freedesktop/systemd1/job/7".to_owned(), waiting)].into();
        Batch { jobs, timeout: Duration::from_secs(90), on_done: done, results: vec![None; jobs.len()], pending }
    }

    const JOB: &str = "/org/freedesktop/systemd1/job/7";

    #[test]
    fn a_job_without_its_signal_is_judged_by_what_systemd_says_of_it() {
        let gone = |kind: JobKind, active: &str| {
            let jobs = [(kind, "a.service".to_owned())];
            let mut seen = Vec::new();
            let mut done = |o: &JobOutcome| seen.push(o.result.clone());
            let mut batch = waiting(&jobs, Duration::from_secs(6), &mut done);
            batch.checked(JOB, JobCheck::Gone(active.to_owned(), "x".to_owned()));
            assert!(batch.pending.is_empty());
            let result = batch.results[0].clone().unwrap();
            assert_eq!(seen, std::slice::from_ref(&result), "reported as it ends");
            result
        };
        // Gone, and its unit where the job takes it: done, not timed out.
        assert_eq!(gone(JobKind::Stop, "inactive"), JobResult::Done);
        assert_eq!(gone(JobKind::Stop, "failed"), JobResult::Done);
        assert_eq!(gone(JobKind::Start, "active"), JobResult::Done);
        assert_eq!(gone(JobKind::Restart, "active"), JobResult::Done);
        assert_eq!(gone(JobKind::Reload, "active"), JobResult::Done);
        // Gone, its unit elsewhere: it ended otherwise, unseen.
        assert_eq!(
            gone(JobKind::Start, "failed"),
            JobResult::Failed {
                systemd_result: "unknown (its end was not signalled; a.service is failed/x)".to_owned()
            }
        );
        assert!(matches!(gone(JobKind::Stop, "active"), JobResult::Failed { .. }));
    }

    #[test]
    fn a_job_still_there_is_waited_for_until_its_timeout_and_only_then_timed_out() {
        let jobs = [(JobKind::Start, "a.service".to_owned())];
        let mut seen = Vec::new();
        let mut done = |o: &JobOutcome| seen.push(o.result.clone());
        let mut batch = waiting(&jobs, Duration::from_secs(6), &mut done);
        batch.checked(JOB, JobCheck::Exists { cancelled: false });
        let w = &batch.pending[JOB];
        assert!(!w.checking);
        // Asked again twice as long after it was queued.
        let again = w.next_check.duration_since(w.queued_at);
        assert!(again >= Duration::from_secs(12) && again < Duration::from_secs(13), "{again:?}");
        batch.checked(JOB, JobCheck::Unanswered("GetJob(7): no reply".into()));
        assert!(batch.results[0].is_none(), "an unanswered question before the timeout is asked again");

        // Past its timeout, it is cancelled first, then timed out.
        let mut batch = waiting(&jobs, Duration::from_secs(91), &mut done);
        batch.checked(JOB, JobCheck::Exists { cancelled: false });
        assert!(batch.results[0].is_none());
        assert!(batch.pending[JOB].next_check <= Instant::now(), "checked again at once, to cancel it");
        batch.checked(JOB, JobCheck::Exists { cancelled: true });
        assert_eq!(batch.results[0], Some(JobResult::TimedOut { seconds: 90 }));
        let mut batch = waiting(&jobs, Duration::from_secs(91), &mut done);
        batch.checked(JOB, JobCheck::Unanswered("GetJob(7): no reply".into()));
        assert_eq!(batch.results[0], Some(JobResult::NoReply { message: "GetJob(7): no reply".into() }));
        // A job whose signal came while it was being checked is left alone.
        batch.checked(JOB, JobCheck::Exists { cancelled: true });
        assert_eq!(seen.len(), 2);
    }

    /// Against a real systemd in a test bed, on the bed's bus.
    mod live {
        use testbed::{Config, Generation, TestBed};

        use super::*;

        fn oneshot(lines: &str) -> String {
            format!("[Service]\nType=oneshot\nRemainAfterExit=yes\n{lines}")
        }

        /// The match rule a batch's JobRemoved stream adds.
        fn job_removed_rule() -> String {
            zbus::MatchRule::builder()
                .msg_type(zbus::message::Type::Signal)
                .sender("org.freedesktop.systemd1")
                .path("/org/freedesktop/systemd1")
                .interface("org.freedesktop.systemd1.Manager")
                .member("JobRemoved")
                .build()
                .unwrap()
                .to_string()
        }

        #[test]
        fn a_job_whose_signal_is_lost_is_judged_by_systemd_s_answer_not_timed_out() {
            testbed::require!(bed);
            let generation = Generation::new("a")
                .unit("slow.service", oneshot("ExecStartPre=/bin/sleep 2\nExecStart=/bin/true\n"))
                .unit("broken.service", oneshot("ExecStartPre=/bin/sleep 2\nExecStart=/bin/false\n"));
            let bed = TestBed::boot(&Config::new(generation)).unwrap();
            let bus = SystemdBus::connect_to(&bed.dbus_address(), DEFAULT_CALL_TIMEOUT).unwrap();
            let jobs = [(JobKind::Start, "slow.service".to_owned()), (JobKind::Start, "broken.service".to_owned())];
            let started = Instant::now();
            let mut seen = Vec::new();
            let mut on_done = |o: &JobOutcome| seen.push(o.unit.clone());
            // Once both jobs are queued, and while they still run, the bus
            // is told to stop sending JobRemoved here: their signals are
            // lost, as when systemd leaves the bus for a moment.
            let (outcomes, unmatched) =
                zbus::block_on(join(bus.run_jobs_async(&jobs, Duration::from_secs(30), &mut on_done), async {
                    delay(Duration::from_millis(500)).await;
                    bus.conn
                        .call_method(
                            Some("org.freedesktop.DBus"),
                            "/org/freedesktop/DBus",
                            Some("org.freedesktop.DBus"),
                            "RemoveMatch",
                            &(job_removed_rule(),),
                        )
                        .await
                }));
            unmatched.expect("the batch's match rule is removed");
            let outcomes = outcomes.unwrap();
            let took = started.elapsed();
            assert_eq!(outcomes[0].result, JobResult::Done, "{outcomes:?}");
            assert_eq!(
                outcomes[1].result,
                JobResult::Failed {
                    systemd_result: "unknown (its end was not signalled; broken.service is failed/failed)".into()
                },
            );
            seen.sort();
            assert_eq!(seen, ["broken.service", "slow.service"], "each reported once");
            assert!(took < Duration::from_secs(15), "asked systemd at the first check, not at the timeout: {took:?}");
            assert_eq!(bed.active_state("slow.service").unwrap(), "active");
        }

        #[test]
        fn a_watch_sees_every_job_whoever_queued_it_while_the_caller_does_something_else_and_keeps_a_bound() {
            testbed::require!(bed);
            let generation = Generation::new("a")
                .unit("a.service", oneshot("ExecStart=/bin/true\n"))
                .unit("b.service", oneshot("ExecStart=/bin/true\n"))
                .unit("c.service", oneshot("ExecStart=/bin/true\n"));
            let bed = TestBed::boot(&Config::new(generation)).unwrap();
            let mut bus = SystemdBus::connect_to(&bed.dbus_address(), DEFAULT_CALL_TIMEOUT).unwrap();
            bus.watch_jobs(100).unwrap();
            let ours = [(JobKind::Start, "a.service".to_owned())];
            assert_eq!(bus.run_jobs(&ours, Duration::from_secs(30), &mut |_| {}).unwrap()[0].result, JobResult::Done);
            // Someone else's jobs, while this client reads nothing.
            bed.systemctl(&["start", "b.service", "c.service"]).unwrap();
            std::thread::sleep(Duration::from_millis(500));
            let seen = bus.stop_watching();
            let jobs: Vec<(&str, bool, Option<&str>)> =
                seen.jobs.iter().map(|j| (j.unit.as_str(), j.ours, j.result.as_deref())).collect();
            assert!(jobs.contains(&("a.service", true, Some("done"))), "{jobs:?}");
            assert!(jobs.contains(&("b.service", false, Some("done"))), "{jobs:?}");
            assert!(jobs.contains(&("c.service", false, Some("done"))), "{jobs:?}");
            assert_eq!(seen.dropped, 0);
            assert_eq!(bus.stop_watching(), WatchedJobs::default(), "no watch runs any more");

            // Past its bound, a watch counts what it does not keep.
            bus.watch_jobs(1).unwrap();
            bed.systemctl(&["restart", "a.service", "b.service", "c.service"]).unwrap();
            let seen = bus.stop_watching();
            assert_eq!((seen.jobs.len(), seen.dropped), (1, 2), "{seen:?}");
        }

        #[test]
        fn a_daemon_reload_is_done_when_systemd_answers_even_if_its_signal_never_comes() {
            testbed::require!(bed);
            let bed = TestBed::boot(&Config::new(Generation::new("a"))).unwrap();
            let mut bus = SystemdBus::connect_to(&bed.dbus_address(), DEFAULT_CALL_TIMEOUT).unwrap();
            // Without a subscriber, systemd sends no Reloading signal, as
            // after it left the bus and came back.
            zbus::block_on(bus.conn.call_method(
                Some("org.freedesktop.systemd1"),
                "/org/freedesktop/systemd1",
                Some("org.freedesktop.systemd1.Manager"),
                "Unsubscribe",
                &(),
            ))
            .unwrap();
            let started = Instant::now();
            bus.daemon_reload(Duration::from_secs(20)).unwrap();
            assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
        }

        /// Sends `signal` to the bed's systemd; SIGCONT again when dropped.
        struct Paused(u32);

        impl Paused {
            fn send(&self, signal: rustix::process::Signal) {
                let pid = rustix::process::Pid::from_raw(i32::try_from(self.0).unwrap()).unwrap();
                rustix::process::kill_process(pid, signal).unwrap();
            }
        }

        impl Drop for Paused {
            fn drop(&mut self) {
                self.send(rustix::process::Signal::CONT);
            }
        }

        #[test]
        fn a_job_call_systemd_never_answers_is_asked_again_then_reported_as_unanswered() {
            testbed::require!(bed);
            let generation = Generation::new("a").unit("idle.service", "[Service]\nExecStart=/bin/sleep infinity\n");
            let bed = TestBed::boot(&Config::new(generation)).unwrap();
            let mut bus = SystemdBus::connect_to(&bed.dbus_address(), Duration::from_secs(2)).unwrap();
            let paused = Paused(bed.pid());
            paused.send(rustix::process::Signal::STOP);
            let jobs = [(JobKind::Start, "idle.service".to_owned())];
            let started = Instant::now();
            let outcomes = bus.run_jobs(&jobs, Duration::from_secs(30), &mut |_| {}).unwrap();
            let took = started.elapsed();
            drop(paused);
            match &outcomes[0].result {
                JobResult::NoReply { message } => {
                    assert!(message.starts_with("StartUnit idle.service, asked twice: "), "{message}");
                }
                other => panic!("not reported as unanswered: {other:?}"),
            }
            // Two calls of 2 s, a pause and a Subscribe in between.
            assert!(took >= Duration::from_secs(5), "asked twice: {took:?}");
            // systemd, running again, answers normally.
            let outcomes = bus.run_jobs(&jobs, Duration::from_secs(30), &mut |_| {}).unwrap();
            assert_eq!(outcomes[0].result, JobResult::Done);
        }
    }

    #[test]
    fn timeout_fires() {
        let r = zbus::block_on(with_timeout(Duration::from_millis(10), std::future::pending::<()>()));
        assert_eq!(r, None);
        let r = zbus::block_on(with_timeout(Duration::from_secs(5), async { 7 }));
        assert_eq!(r, Some(7));
    }
}
