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
//! phase queues all its jobs before awaiting any of them.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::num::NonZeroUsize;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::future::join4;
use futures_util::stream::{self, TryStreamExt};
use plan_model::{LiveState, LiveUnit};
use zbus::proxy::CacheProperties;
use zbus::{Connection, OwnedObjectPath, OwnedVariant, Variant};

use crate::Error;
use crate::manager::{
    Dependencies, JobKind, JobOutcome, JobResult, ServiceManager, TransientExit, TransientSpec, UnitProcess, UnitStatus,
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
    /// Each listed unit's object path, from the last `ListUnits`.
    paths: Mutex<HashMap<String, OwnedObjectPath>>,
    /// Method calls made on the connection, for benchmarks.
    calls: std::sync::atomic::AtomicUsize,
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
        zbus::block_on(async {
            let build = zbus::connection::Builder::system()
                // A phase of hundreds of jobs produces as many JobRemoved
                // signals; they must not fill the queue while the calls
                // that queue the jobs are still waiting for replies.
                .max_queued(NonZeroUsize::new(1 << 16).unwrap_or(NonZeroUsize::MIN))
                .method_timeout(timeout)
                .build();
            // zbus's method timeout starts with the first call after the
            // handshake; the handshake (with its Hello) has its own.
            let conn = match with_timeout(timeout, build).await {
                Some(conn) => {
                    conn.map_err(|e| Error::Connect { address: address.clone(), message: error_message(&e) })?
                }
                None => {
                    return Err(Error::Timeout { call: format!("Hello (connection set-up on {address})"), timeout });
                }
            };
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
            Ok(SystemdBus { conn, address, timeout, paths: Mutex::default(), calls })
        })
    }

    /// The bus address in use.
    pub fn address(&self) -> &str {
        &self.address
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
async fn raw_get(conn: &Connection, path: &OwnedObjectPath, interface: &str, name: &str) -> zbus::Result<OwnedVariant> {
    let reply = conn
        .call_method(
            Some("org.freedesktop.systemd1"),
            path.as_str(),
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
        let mut paths = HashMap::with_capacity(listed.len());
        let units = listed
            .into_iter()
            .map(|(name, _description, load, active, sub, following, path, ..)| {
                paths.insert(name.clone(), path);
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
        if let Ok(mut cache) = self.paths.lock() {
            *cache = paths;
        }
        let manager_exe = std::fs::canonicalize("/proc/1/exe").ok().map(|p| p.to_string_lossy().into_owned());
        Ok(LiveState { units, manager_exe, ..Default::default() })
    }

    /// The object path of a unit: from the last listing, else `GetUnit`;
    /// `None` for a unit that is not loaded.
    async fn unit_path(&self, unit: &str) -> Result<Option<OwnedObjectPath>, Error> {
        if let Some(path) = self.paths.lock().ok().and_then(|c| c.get(unit).cloned()) {
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
                match raw_get(&self.conn, &path, UNIT_INTERFACE, property).await {
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

    async fn run_jobs_async(
        &self,
        jobs: &[(JobKind, String)],
        timeout: Duration,
        on_done: &mut dyn FnMut(&JobOutcome),
    ) -> Result<Vec<JobOutcome>, Error> {
        let manager = manager(&self.conn).await?;
        // The signal stream exists before the first job is queued, so no
        // JobRemoved can be missed, however fast a job finishes.
        let mut removed =
            manager.receive_job_removed().await.map_err(call_err("AddMatch(JobRemoved)", self.timeout))?;
        let queued_at = Instant::now();
        let calls = jobs.iter().map(|(kind, unit)| {
            let m = &manager;
            async move {
                let r = match kind {
                    JobKind::Stop => m.stop_unit(unit, "replace").await,
                    JobKind::Reload => m.reload_unit(unit, "replace").await,
                    JobKind::Restart => m.restart_unit(unit, "replace").await,
                    JobKind::Start => m.start_unit(unit, "replace").await,
                };
                r.map(|p| p.as_str().to_owned()).map_err(|e| {
                    if is_timeout(&e) {
                        format!("no reply within {:?}; the job may have been queued all the same", self.timeout)
                    } else {
                        error_message(&e)
                    }
                })
            }
        });
        let replies: Vec<Result<String, String>> = stream::iter(calls).buffered(CALLS_IN_FLIGHT).collect().await;
        let mut results: Vec<Option<JobResult>> = vec![None; jobs.len()];
        let mut pending: HashMap<String, usize> = HashMap::new();
        for (i, reply) in replies.into_iter().enumerate() {
            match reply {
                Ok(path) => {
                    pending.insert(path, i);
                }
                Err(message) => {
                    let r = JobResult::NotQueued { message };
                    on_done(&JobOutcome { unit: jobs[i].1.clone(), kind: jobs[i].0, result: r.clone() });
                    results[i] = Some(r);
                }
            }
        }
        let deadline = queued_at + timeout;
        while !pending.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(next) = with_timeout(left, removed.next()).await else {
                break;
            };
            let Some(signal) = next else { break };
            let Ok(args) = signal.args() else { continue };
            if let Some(i) = pending.remove(args.job.as_str()) {
                let r = if args.result == "done" {
                    JobResult::Done
                } else {
                    JobResult::Failed { systemd_result: args.result.clone() }
                };
                on_done(&JobOutcome { unit: jobs[i].1.clone(), kind: jobs[i].0, result: r.clone() });
                results[i] = Some(r);
            }
        }
        // Whatever is still pending ran out of time: cancel it, so that it
        // does not hold up the jobs of later phases.
        let timed_out: Vec<(String, usize)> = pending.into_iter().collect();
        for (path, i) in &timed_out {
            if let Some(id) = job_id(path) {
                // The job may have finished in the meantime; a failed
                // cancel then means there was nothing left to cancel.
                let _ = manager.cancel_job(id).await;
            }
            let r = JobResult::TimedOut { seconds: timeout.as_secs() };
            on_done(&JobOutcome { unit: jobs[*i].1.clone(), kind: jobs[*i].0, result: r.clone() });
            results[*i] = Some(r);
        }
        Ok(results
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
        let mut reloading = manager.receive_reloading().await.map_err(call_err("AddMatch(Reloading)", self.timeout))?;
        if reexec {
            // systemd drops its bus connection while it re-executes, so the
            // reply may never come; the Reloading(false) signal, sent once
            // the new instance is up, is what tells that it is done.
            let _ = with_timeout(Duration::from_secs(5), manager.reexecute()).await;
        } else {
            manager.reload().await.map_err(call_err("Reload", self.timeout))?;
        }
        let wait = async {
            while let Some(sig) = reloading.next().await {
                if let Ok(args) = sig.args()
                    && !args.active
                {
                    return true;
                }
            }
            false
        };
        match with_timeout(timeout, wait).await {
            Some(true) => {}
            _ => {
                return Err(Error::ReloadTimeout { what, seconds: timeout.as_secs() });
            }
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
        let mut removed =
            manager.receive_job_removed().await.map_err(call_err("AddMatch(JobRemoved)", self.timeout))?;
        let job = manager
            .start_transient_unit(&spec.unit, "fail", &properties, &[])
            .await
            .map_err(call_err(format!("StartTransientUnit({})", spec.unit), self.timeout))?;
        // A Type=exec unit's start job ends as soon as its program runs; a
        // bus that never says so gets the call deadline, and the job is
        // cancelled so that the unit cannot start behind the caller's back.
        let started = async {
            while let Some(sig) = removed.next().await {
                if let Ok(args) = sig.args()
                    && args.job.as_str() == job.as_str()
                {
                    return Some(args.result.clone());
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

    #[test]
    fn timeout_fires() {
        let r = zbus::block_on(with_timeout(Duration::from_millis(10), std::future::pending::<()>()));
        assert_eq!(r, None);
        let r = zbus::block_on(with_timeout(Duration::from_secs(5), async { 7 }));
        assert_eq!(r, Some(7));
    }
}
