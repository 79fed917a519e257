//! The chaos suite (issue 7): the real daemon with native and .NET workers on shared and
//! dedicated hosts, healthy and hostile, a stream of events with unique correlation ids, and
//! faults injected meanwhile: plugins that segfault, abort, exit, overflow their stack, exhaust
//! memory, hang or fail; host processes SIGKILLed from outside; the daemon SIGKILLed and
//! restarted with calls in flight and events queued; a crash-looping worker. At the end it
//! prints the invariants as a table and asserts each (docs/chaos.md).
//!
//! The stream runs `WM_SOAK_SECONDS` (default 30: the CI run), half before the daemon's SIGKILL
//! and half after its restart; `WM_CHAOS_RATE` sets events per second (default 30);
//! `WM_CHAOS_SEED` fixes the random moments of the host kills (the seed is printed). Faults
//! come every 1.8 s whatever the duration.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use wm_testkit::daemon::{Daemon, DaemonOptions};
use wm_testkit::dotnet as dn;
use wm_testkit::native::{Build, Lang};
use wm_testkit::sse::Sse;
use wm_testkit::{nupkg, procs};

/// Watchdog for every wait.
const WAIT: Duration = Duration::from_secs(90);
/// Between two injected faults.
const FAULT_STEP: Duration = Duration::from_millis(1800);
/// `CRASH_LOOP_WINDOW_SECONDS`: shorter than the gap between two poison events for one worker
/// (3 fault steps), so only the crash-looper is quarantined.
const CRASH_WINDOW_S: &str = "4";
/// Growth of the daemon's RSS over the stream that still counts as flat.
const RSS_SLACK_BYTES: u64 = 24 << 20;

/// What an event should end as.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    /// A reply (with this data, when the worker echoes).
    Reply(Option<String>),
    /// A dead letter with this `deadletterreason`.
    Dead(&'static str),
}

/// One accepted event.
#[derive(Debug, Clone)]
struct Sent {
    worker: &'static str,
    expect: Expect,
    /// A healthy event on a healthy worker (must never be dead-lettered).
    healthy: bool,
}

/// One outcome seen on a reply or dead-letter topic.
#[derive(Debug, Clone)]
struct Seen {
    dead: Option<String>,
    data: Option<String>,
    at: Instant,
}

#[derive(Default)]
struct Ledger {
    sent: Mutex<BTreeMap<String, Sent>>,
    seen: Mutex<HashMap<String, Vec<Seen>>>,
    /// Events in flight or queued when the daemon was killed: a second outcome is allowed.
    at_kill: Mutex<BTreeSet<String>>,
    next: AtomicU64,
}

impl Ledger {
    fn key(&self, prefix: &str) -> String {
        format!("{prefix}-{}", self.next.fetch_add(1, Ordering::SeqCst))
    }

    fn outcomes(&self, key: &str) -> usize {
        lock(&self.seen).get(key).map_or(0, Vec::len)
    }

    fn first_at(&self, key: &str) -> Option<Instant> {
        lock(&self.seen)
            .get(key)
            .and_then(|v| v.first().map(|s| s.at))
    }

    fn pending(&self) -> Vec<String> {
        let seen = lock(&self.seen);
        lock(&self.sent)
            .keys()
            .filter(|k| !seen.contains_key(*k))
            .cloned()
            .collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The workers: (name = topic, engine, isolation, hostile).
struct W {
    name: &'static str,
    dotnet: bool,
    /// A `text/x-python` worker (CHAOS_PY): `dotnet` is false then.
    python: bool,
    dedicated: bool,
    hostile: bool,
    /// Topic its replies go to.
    reply_topic: &'static str,
    extra: Value,
}

fn workers() -> Vec<W> {
    let w = |name, dotnet, dedicated, hostile, reply_topic, extra| W {
        name,
        dotnet,
        python: false,
        dedicated,
        hostile,
        reply_topic,
        extra,
    };
    vec![
        // The shared native host: two healthy workers, a hostile one, and one that hangs once.
        w("n.ok1", false, false, false, "n.ok1.reply", json!({})),
        w(
            "n.ok2",
            false,
            false,
            false,
            "n.ok2.reply",
            json!({"maxConcurrency": 4}),
        ),
        w("n.bad", false, false, true, "n.bad.reply", json!({})),
        w(
            "n.hang",
            false,
            false,
            true,
            "n.hang.reply",
            json!({"messageTimeoutSeconds": 2}),
        ),
        // Dedicated native hosts: a hostile worker and the crash-looper.
        w("d.bad", false, true, true, "d.bad.reply", json!({})),
        w("d.loop", false, true, true, "d.loop.reply", json!({})),
        // The shared .NET host: Echo (healthy) next to Hostile.
        w("dn.ok", true, false, false, "echo.reply", json!({})),
        w("dn.bad", true, false, true, "hostile.ok", json!({})),
        // One shared python host (one interpreter): a healthy echo next to a hostile worker.
        W {
            python: true,
            ..w("py.ok", false, false, false, "py.ok.reply", json!({}))
        },
        W {
            python: true,
            ..w("py.bad", false, false, true, "py.bad.reply", json!({}))
        },
    ]
}

/// The python workers' source: echo, or on request an exception or a segfault through ctypes.
const CHAOS_PY: &str = r#"
import ctypes

def Process(event):
    data = event["data"]
    if data == "segv":
        ctypes.string_at(0)
    if data == "error":
        raise RuntimeError("asked to fail")
    return {"type": event["type"] + ".reply", "data": data}
"#;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn create_worker(d: &Daemon, w: &W, native_pkg: &[u8], echo: &[u8], hostile: &[u8]) -> String {
    let (mime, pkg) = match (w.dotnet, w.hostile) {
        _ if w.python => ("text/x-python", CHAOS_PY.as_bytes()),
        (false, _) => ("application/x-native-dll", native_pkg),
        (true, false) => ("application/x-dotnet-dll", echo),
        (true, true) => ("application/x-dotnet-dll", hostile),
    };
    let mut body = json!({
        "mimeType": mime,
        "topic": w.name,
        "isolation": if w.dedicated { "dedicated" } else { "shared" },
        "codeSource": {"content": b64(pkg)},
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), w.extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    let r = d.send_json("POST", "/v1/workers", &body);
    assert_eq!(r.status, 201, "create {}: {}", w.name, r.text());
    let id = r.json()["id"].as_str().expect("worker id").to_string();
    start(d, &id);
    id
}

fn start(d: &Daemon, id: &str) {
    let r = d.post(&format!("/v1/workers/{id}/start"));
    assert!(r.status < 300, "start {id}: {} {}", r.status, r.text());
}

fn status(d: &Daemon, id: &str) -> Value {
    d.get(&format!("/v1/workers/{id}")).json()
}

/// Publishes one event and records it; panics unless it is accepted (202).
fn publish(d: &Daemon, ledger: &Ledger, worker: &'static str, data: &str, sent: Sent) -> String {
    let key = ledger.key(worker);
    let ev = json!({
        "specversion": "1.0", "id": key, "source": "urn:test:chaos", "type": worker,
        "datacontenttype": "text/plain", "data": data, "correlationid": key,
    });
    // Recorded before the publish: the reply may beat the 202.
    lock(&ledger.sent).insert(key.clone(), sent);
    let r = wm_testkit::daemon::http::request(
        d.addr(),
        "POST",
        &format!("/v1/topics/{worker}/events"),
        &[("content-type", "application/json")],
        ev.to_string().as_bytes(),
    )
    .unwrap_or_else(|e| panic!("publishing {key}: {e}"));
    assert_eq!(r.status, 202, "publish {key}: {}", r.text());
    key
}

fn echo(d: &Daemon, ledger: &Ledger, worker: &'static str, healthy: bool) -> String {
    let n = ledger.next.load(Ordering::SeqCst);
    let data = format!("e{n}");
    let expect = if worker == "dn.bad" {
        Expect::Reply(None)
    } else {
        Expect::Reply(Some(data.clone()))
    };
    publish(
        d,
        ledger,
        worker,
        &data,
        Sent {
            worker,
            expect,
            healthy,
        },
    )
}

fn poison(d: &Daemon, ledger: &Ledger, worker: &'static str, what: &str) -> String {
    let expect = match what {
        "error" => Expect::Dead("worker_error"),
        "fail" => Expect::Dead("process_failed"),
        "hang" => Expect::Dead("timeout"),
        "oom" => Expect::Reply(Some("oom-survived".into())),
        _ => Expect::Dead("crash"),
    };
    publish(
        d,
        ledger,
        worker,
        what,
        Sent {
            worker,
            expect,
            healthy: false,
        },
    )
}

/// Subscribes to every reply and dead-letter topic and moves what arrives into the ledger.
struct Collectors {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<u64>>,
}

impl Collectors {
    fn start(d: &Daemon, ledger: &Arc<Ledger>) -> Collectors {
        let mut topics: BTreeSet<String> = BTreeSet::new();
        for w in workers() {
            topics.insert(w.reply_topic.to_string());
            topics.insert(format!("{}-dead", w.name));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let threads = topics
            .into_iter()
            .map(|t| {
                let sse = Sse::subscribe(&d.base_url(), &t);
                let ledger = ledger.clone();
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let Some(v) = sse.next(Duration::from_millis(100)) else {
                            continue;
                        };
                        let Some(key) = v["correlationid"].as_str() else {
                            continue;
                        };
                        let seen = Seen {
                            dead: v["deadletterreason"].as_str().map(str::to_owned),
                            data: v["data"].as_str().map(str::to_owned),
                            at: Instant::now(),
                        };
                        lock(&ledger.seen)
                            .entry(key.to_string())
                            .or_default()
                            .push(seen);
                    }
                    sse.lagged()
                })
            })
            .collect();
        Collectors { stop, threads }
    }

    /// Stops the readers; returns how many events the server skipped for lagging readers.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.threads
            .into_iter()
            .map(|t| t.join().expect("collector thread"))
            .sum()
    }
}

/// Waits until every recorded event has at least one outcome; on timeout the failure names
/// the pending events and every worker's status (a quarantined worker holds its queue).
fn wait_settled(d: &Daemon, ledger: &Ledger, what: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let pending = ledger.pending();
        if pending.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            let workers: Vec<String> = d.get("/v1/workers").json()["workers"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|w| format!("{} {} {}", w["topic"], w["status"], w["lastError"]))
                        .collect()
                })
                .unwrap_or_default();
            let log = d.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect::<Vec<_>>();
            panic!(
                "{what}: {} events without an outcome after {WAIT:?}: {:?}\nworkers: {workers:#?}\nlog tail:\n{}",
                pending.len(),
                &pending[..pending.len().min(20)],
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The pid of the host carrying `worker_id`, if it has one now.
fn host_pid_of(d: &Daemon, worker_id: &str) -> Option<i32> {
    let hosts = d.get("/v1/hosts").json();
    hosts["hosts"].as_array()?.iter().find_map(|h| {
        let has = h["workers"]
            .as_array()
            .is_some_and(|w| w.iter().any(|x| x == worker_id));
        if has {
            h["pid"].as_i64().and_then(|p| i32::try_from(p).ok())
        } else {
            None
        }
    })
}

/// The daemon's host processes: those carrying workers and the idle standby ones.
fn host_pids(d: &Daemon) -> BTreeSet<i32> {
    let hosts = d.get("/v1/hosts").json();
    ["hosts", "standby"]
        .iter()
        .filter_map(|k| hosts[*k].as_array())
        .flatten()
        .filter_map(|h| h["pid"].as_i64().and_then(|p| i32::try_from(p).ok()))
        .collect()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn sigkill(pid: i32) {
    // SAFETY: kill(2) has no memory preconditions. `pid` was read from the daemon's host list
    // a moment ago; the daemon reaps its hosts only after they die, so until this signal is
    // delivered the pid still names that host (or, if it died meanwhile, is a zombie we cannot
    // hurt).
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// What happens at one fault step.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Poison(&'static str, &'static str),
    Kill(&'static str),
    Hang,
}

/// One cycle of faults (rotated through for the whole stream). The faults that can count as a
/// crash of one worker (its poison events: two deaths each with one retry; a SIGKILL of its
/// host: at most one, when it had a call in flight) are at least three steps apart, more than
/// `CRASH_WINDOW_S`, so only the crash-looper reaches `CRASH_LOOP_MAX_CRASHES`.
const CYCLE: &[Fault] = &[
    Fault::Poison("n.bad", "segv"),
    Fault::Poison("d.bad", "abort"),
    Fault::Poison("dn.bad", "failfast"),
    Fault::Poison("n.bad", "error"),
    Fault::Kill("n.ok1"),
    Fault::Poison("py.bad", "segv"),
    Fault::Poison("d.bad", "oom"),
    Fault::Poison("n.bad", "fail"),
    Fault::Kill("dn.ok"),
    Fault::Poison("n.bad", "exit"),
    Fault::Kill("d.bad"),
    Fault::Poison("dn.bad", "recurse"),
    Fault::Kill("py.ok"),
    Fault::Hang,
    Fault::Poison("n.bad", "stack"),
    Fault::Poison("d.bad", "stack"),
    Fault::Poison("d.bad", "error"),
    Fault::Poison("py.bad", "error"),
    Fault::Kill("n.ok1"),
];

/// A host death measured: from the moment the test saw the host gone to the first reply of a
/// healthy neighbour on the respawned host.
#[derive(Debug)]
struct Recovery {
    what: String,
    took: Duration,
}

/// xorshift64*: reproducible "random" moments (`WM_CHAOS_SEED`).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

struct Run {
    rng: Rng,
    ids: HashMap<&'static str, String>,
    recoveries: Vec<Recovery>,
    host_pids_seen: BTreeSet<i32>,
    hang_ok: Option<(bool, bool)>,
    hang_done: bool,
}

/// Waits for `pid` to die, then probes `neighbour` until a probe is answered.
fn measure_recovery(
    d: &Daemon,
    ledger: &Ledger,
    pid: i32,
    neighbour: &'static str,
    what: String,
) -> Option<Recovery> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while procs::alive(pid) {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let t0 = Instant::now();
    let mut probes = Vec::new();
    loop {
        probes.push(echo(d, ledger, neighbour, true));
        let answered = probes.iter().filter_map(|k| ledger.first_at(k)).min();
        if let Some(t1) = answered {
            return Some(Recovery {
                what,
                took: t1.saturating_duration_since(t0),
            });
        }
        assert!(
            t0.elapsed() < WAIT,
            "{neighbour} did not serve again after {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn inject(d: &Daemon, ledger: &Ledger, run: &mut Run, fault: Fault) {
    let neighbour_of = |w: &str| {
        if w.starts_with("dn.") {
            "dn.ok"
        } else if w.starts_with("py.") {
            "py.ok"
        } else {
            "n.ok1"
        }
    };
    match fault {
        Fault::Poison(w, what) => {
            let pid = host_pid_of(d, &run.ids[w]);
            poison(d, ledger, w, what);
            let crashes = !matches!(what, "error" | "fail" | "oom");
            if let (true, Some(pid), false) = (crashes, pid, w.starts_with("d.")) {
                run.host_pids_seen.insert(pid);
                if let Some(r) =
                    measure_recovery(d, ledger, pid, neighbour_of(w), format!("{w} {what}"))
                {
                    run.recoveries.push(r);
                }
            }
        }
        Fault::Kill(w) => {
            // A random moment within the step, so the kill lands anywhere in a call.
            std::thread::sleep(Duration::from_millis(run.rng.next() % 600));
            if let Some(pid) = host_pid_of(d, &run.ids[w]) {
                run.host_pids_seen.insert(pid);
                sigkill(pid);
                if !w.starts_with("d.")
                    && let Some(r) = measure_recovery(
                        d,
                        ledger,
                        pid,
                        neighbour_of(w),
                        format!("SIGKILL host of {w}"),
                    )
                {
                    run.recoveries.push(r);
                }
            }
        }
        Fault::Hang if run.hang_done => {
            poison(d, ledger, "n.bad", "error");
        }
        Fault::Hang => {
            run.hang_done = true;
            let id = run.ids["n.hang"].clone();
            let pid = host_pid_of(d, &id);
            poison(d, ledger, "n.hang", "hang");
            wait_until("n.hang in ERROR after its timeout", || {
                status(d, &id)["status"] == "ERROR"
            });
            let timeout = status(d, &id)["lastError"]["errorType"] == "timeout";
            // The grace period ends the hung call by killing its (shared) host.
            if let Some(pid) = pid {
                run.host_pids_seen.insert(pid);
                if let Some(r) =
                    measure_recovery(d, ledger, pid, "n.ok1", "timeout reclaim".to_string())
                {
                    run.recoveries.push(r);
                }
            }
            start(d, &id);
            let resumed = status(d, &id)["status"] == "RUNNING";
            run.hang_ok = Some((timeout, resumed));
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

struct Row {
    name: &'static str,
    expected: String,
    measured: String,
    ok: bool,
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn daemon_options(data: &std::path::Path) -> DaemonOptions {
    let root = dn::dotnet_root();
    DaemonOptions::default()
        .data_dir(data)
        .env("DOTNET_ROOT", root.to_str().expect("utf-8 path"))
        .env("WORKER_RETRY_ATTEMPTS", "1")
        .env("WORKER_RETRY_BASE_DELAY_MS", "10")
        .env("CRASH_LOOP_MAX_CRASHES", "4")
        .env("CRASH_LOOP_WINDOW_SECONDS", CRASH_WINDOW_S)
        .env("TIMEOUT_RECLAIM_GRACE_SECONDS", "1")
        .env("HOST_RESPAWN_BACKOFF_MS", "1")
        // The "oom" event fills this (touched: up to 3 GiB of RAM for a moment). CoreCLR 3.1
        // does not start below about 3 GiB of address space (it reserves ~2 GiB for code
        // up front), and the setting applies to every host, .NET ones included.
        .env("HOST_RLIMIT_AS_BYTES", &(3u64 << 30).to_string())
        .env("WORKMANAGER_LOG", "warn")
}

/// What one daemon's share of the stream came to.
struct Phase {
    steps: usize,
    rss: Vec<u64>,
    fds_base: procs::Fds,
    fds_end: procs::Fds,
    hosts_end: usize,
    memfd_maps: usize,
    zombies: usize,
    stray: Vec<procs::Proc>,
    replaced_alive: Vec<i32>,
    /// `host.crashed` per slot kind: (all, with a culprit).
    deaths: BTreeMap<String, (usize, usize)>,
    lagged: u64,
}

impl Phase {
    /// Medians of the first and the last third of the RSS samples.
    fn rss_first_last(&self) -> (u64, u64) {
        let third = (self.rss.len() / 3).max(1);
        let median = |s: &[u64]| {
            let mut v = s.to_vec();
            v.sort_unstable();
            v.get(v.len() / 2).copied().unwrap_or(0)
        };
        (
            median(&self.rss[..third.min(self.rss.len())]),
            median(&self.rss[self.rss.len().saturating_sub(third)..]),
        )
    }

    fn deaths_total(&self) -> usize {
        self.deaths.values().map(|d| d.0).sum()
    }
}

/// Runs the stream with faults on `d` for `duration`, waits until every event has an outcome,
/// then takes the daemon's process-table measures.
fn stream_phase(
    d: &Daemon,
    pid: i32,
    ledger: &Arc<Ledger>,
    run: &mut Run,
    duration: Duration,
    rate: u64,
    step: &mut usize,
) -> Phase {
    let infra = Sse::subscribe(&d.base_url(), "workmanager.infra.host");
    run.host_pids_seen.extend(host_pids(d));
    let fds_base = procs::fds(pid);
    let stream_workers: Vec<(&'static str, bool)> = workers()
        .iter()
        .filter(|w| w.name != "d.loop")
        .map(|w| (w.name, !w.hostile))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let stop = stop.clone();
        let ledger = ledger.clone();
        let addr = d.addr();
        std::thread::spawn(move || {
            let every = Duration::from_micros(1_000_000 / rate);
            let mut i = 0usize;
            let mut next = Instant::now();
            while !stop.load(Ordering::SeqCst) {
                let (w, healthy) = stream_workers[i % stream_workers.len()];
                i += 1;
                publish_to(addr, &ledger, w, healthy);
                next += every;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        })
    };
    let rss = Arc::new(Mutex::new(Vec::<u64>::new()));
    let sampler = {
        let stop = stop.clone();
        let rss = rss.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if let Some(r) = procs::rss_bytes(pid) {
                    lock(&rss).push(r);
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    let began = Instant::now();
    let first_step = *step;
    while began.elapsed() < duration {
        inject(d, ledger, run, CYCLE[*step % CYCLE.len()]);
        *step += 1;
        run.host_pids_seen.extend(host_pids(d));
        // A whole step after the fault was seen through (host dead, neighbour serving again),
        // so a slow respawn cannot bunch one worker's crashes into one crash-loop window.
        std::thread::sleep(FAULT_STEP);
    }
    stop.store(true, Ordering::SeqCst);
    publisher.join().expect("publisher");
    sampler.join().expect("sampler");
    wait_settled(d, ledger, "the stream");

    // Quiescent: what the daemon holds now.
    std::thread::sleep(Duration::from_millis(300));
    let hosts_now = host_pids(d);
    run.host_pids_seen.extend(hosts_now.iter().copied());
    let kids = procs::children(pid);
    let replaced_alive = run
        .host_pids_seen
        .iter()
        .copied()
        .filter(|p| !hosts_now.contains(p) && procs::alive(*p))
        .collect();
    let mut deaths: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for v in infra.drain(Duration::from_millis(200)) {
        if v["type"] != "com.virtufin.workmanager.infra.host.crashed" {
            continue;
        }
        let host = v["data"]["host_id"].as_str().unwrap_or("?");
        let kind = host.split('-').take(2).collect::<Vec<_>>().join("-");
        let e = deaths.entry(kind).or_default();
        e.0 += 1;
        if v["data"]["culprit_worker_id"].is_string() {
            e.1 += 1;
        }
    }
    let rss = lock(&rss).clone();
    Phase {
        steps: *step - first_step,
        rss,
        fds_base,
        fds_end: procs::fds(pid),
        hosts_end: hosts_now.len(),
        memfd_maps: procs::memfd_mappings(pid),
        zombies: kids.iter().filter(|p| p.state == 'Z').count(),
        stray: kids
            .into_iter()
            .filter(|p| p.state != 'Z' && !hosts_now.contains(&p.pid))
            .collect(),
        replaced_alive,
        deaths,
        lagged: infra.lagged(),
    }
}

#[test]
fn chaos_every_accepted_event_ends_once_and_nothing_leaks() {
    let soak = Duration::from_secs(env_u64("WM_SOAK_SECONDS", 30));
    let rate = env_u64("WM_CHAOS_RATE", 30).max(1);
    let tmp_before = procs::tmp_entries();
    let host_runner = wm_testkit::bin_dir().join("host-runner");

    // Packages.
    dn::engine_dir();
    let so = Build::plugin("chaos", Lang::C, &["chaos.c"]).build();
    let native_pkg = nupkg::native(
        "Chaos.Worker",
        "chaos",
        &so,
        "<virtufinLibrary>chaos</virtufinLibrary>",
    );
    let echo_pkg = dn::worker_nupkg("Echo", &dn::build_library("Echo", &["Echo.cs"], &[]), &[]);
    let hostile_pkg = dn::worker_nupkg(
        "Hostile",
        &dn::build_library("Hostile", &["Hostile.cs"], &[]),
        &[],
    );

    let data = tempfile::tempdir().expect("tempdir");
    let mut d = Daemon::start(daemon_options(data.path()));
    let mut daemon_pids: BTreeSet<i32> = BTreeSet::new();
    let pid1 = i32::try_from(d.pid().expect("daemon pid")).expect("pid fits");
    daemon_pids.insert(pid1);
    let seed = env_u64(
        "WM_CHAOS_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |t| t.as_secs()),
    );
    println!(
        "chaos: WM_SOAK_SECONDS={} WM_CHAOS_RATE={rate} WM_CHAOS_SEED={seed}",
        soak.as_secs()
    );
    let mut run = Run {
        rng: Rng(seed | 1),
        ids: HashMap::new(),
        recoveries: Vec::new(),
        host_pids_seen: BTreeSet::new(),
        hang_ok: None,
        hang_done: false,
    };
    for w in workers() {
        let id = create_worker(&d, &w, &native_pkg, &echo_pkg, &hostile_pkg);
        run.ids.insert(w.name, id);
    }
    let ledger = Arc::new(Ledger::default());
    let collectors = Collectors::start(&d, &ledger);
    // Every worker answers once before the faults start (warms the .NET host's JIT too).
    for w in workers() {
        echo(&d, &ledger, w.name, !w.hostile);
    }
    wait_settled(&d, &ledger, "warm-up");
    run.host_pids_seen.extend(host_pids(&d));

    // Phase A: the stream with faults, first half on this daemon.
    let mut step = 0usize;
    let half = soak / 2;
    let a1 = stream_phase(&d, pid1, &ledger, &mut run, half, rate, &mut step);
    if !run.hang_done {
        inject(&d, &ledger, &mut run, Fault::Hang);
        wait_settled(&d, &ledger, "the hang");
    }
    let stream_events_1 = lock(&ledger.sent).len();

    // Phase B: SIGKILL the daemon with calls in flight and events queued behind them.
    let mut at_kill = Vec::new();
    for w in ["n.ok1", "d.bad"] {
        let slow = publish(
            &d,
            &ledger,
            w,
            "sleep:4000",
            Sent {
                worker: w,
                expect: Expect::Reply(Some("sleep:4000".into())),
                healthy: w == "n.ok1",
            },
        );
        at_kill.push(slow);
    }
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..20 {
        let w = if i % 2 == 0 { "n.ok1" } else { "d.bad" };
        at_kill.push(echo(&d, &ledger, w, w == "n.ok1"));
    }
    std::thread::sleep(Duration::from_millis(700));
    let hosts_at_kill = host_pids(&d);
    lock(&ledger.at_kill).extend(at_kill.iter().cloned());
    let answered_before_kill = at_kill.iter().filter(|k| ledger.outcomes(k) > 0).count();
    let lagged_1 = collectors.stop();
    d.kill9();
    let killed_at = Instant::now();
    let mut hosts_outlived = hosts_at_kill.clone();
    while !hosts_outlived.is_empty() && killed_at.elapsed() < Duration::from_secs(10) {
        hosts_outlived.retain(|p| procs::alive(*p));
        std::thread::sleep(Duration::from_millis(10));
    }
    let orphans_after_kill = lasting_orphans(&host_runner);
    drop(d);
    let d = Daemon::start(daemon_options(data.path()));
    let pid2 = i32::try_from(d.pid().expect("daemon pid")).expect("pid fits");
    daemon_pids.insert(pid2);
    let collectors = Collectors::start(&d, &ledger);
    wait_settled(&d, &ledger, "events in flight or queued at the daemon kill");
    let after_kill_events = lock(&ledger.sent).len();

    // The second half of the stream, with faults, on the restarted daemon.
    let a2 = stream_phase(&d, pid2, &ledger, &mut run, soak - half, rate, &mut step);
    let stream_events = lock(&ledger.sent).len() - (after_kill_events - stream_events_1);

    // Phase C: a crash loop on a dedicated host; its queue waits for `start`.
    let loop_id = run.ids["d.loop"].clone();
    let life = Sse::subscribe(&d.base_url(), "workmanager.lifecycle");
    poison(&d, &ledger, "d.loop", "abort");
    poison(&d, &ledger, "d.loop", "abort");
    let queued: Vec<String> = (0..5).map(|_| echo(&d, &ledger, "d.loop", false)).collect();
    life.wait_for(WAIT, "a crash_loop failure of d.loop", |v| {
        v["type"] == "com.virtufin.workmanager.lifecycle.failed"
            && v["data"]["worker_id"] == loop_id.as_str()
            && v["data"]["error_type"] == "crash_loop"
    });
    wait_until("d.loop in ERROR", || {
        status(&d, &loop_id)["status"] == "ERROR"
    });
    let loop_error = status(&d, &loop_id)["lastError"]["errorType"].clone();
    std::thread::sleep(Duration::from_millis(700));
    let served_while_error = queued.iter().filter(|k| ledger.outcomes(k) > 0).count();
    start(&d, &loop_id);
    wait_settled(&d, &ledger, "the crash-looper's queue after start");
    let loop_resumed = status(&d, &loop_id)["status"] == "RUNNING";

    let lagged_2 = collectors.stop();
    let mut d = d;
    let stopped = d.stop();
    let log2 = d.log();
    let hosts_after_stop: Vec<i32> = run
        .host_pids_seen
        .iter()
        .copied()
        .filter(|p| procs::alive(*p))
        .collect();
    let orphans_end = lasting_orphans(&host_runner);
    drop(d);
    let mut pids_all = run.host_pids_seen.clone();
    pids_all.extend(daemon_pids.iter().copied());
    let leftovers = procs::new_tmp_files(&tmp_before, &procs::tmp_entries(), &pids_all);

    // The ledger.
    let sent = lock(&ledger.sent).clone();
    let seen = lock(&ledger.seen).clone();
    let at_kill_set = lock(&ledger.at_kill).clone();
    let mut lost = Vec::new();
    let mut wrong = Vec::new();
    let mut dup_explained = 0usize;
    let mut dup_unexplained = Vec::new();
    let mut healthy_dead = Vec::new();
    let (mut replies, mut deads) = (0usize, 0usize);
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for (key, s) in &sent {
        let Some(outs) = seen.get(key) else {
            lost.push(key.clone());
            continue;
        };
        if outs.len() > 1 {
            if at_kill_set.contains(key) {
                dup_explained += outs.len() - 1;
            } else {
                dup_unexplained.push(key.clone());
            }
        }
        let o = &outs[0];
        match &o.dead {
            Some(r) => {
                deads += 1;
                *reasons.entry(r.clone()).or_default() += 1;
            }
            None => replies += 1,
        }
        let right = match (&s.expect, &o.dead, &o.data) {
            (Expect::Reply(None), None, _) => true,
            (Expect::Reply(Some(want)), None, Some(got)) => want == got,
            (Expect::Dead(want), Some(got), _) => want == got,
            _ => false,
        };
        if !right {
            wrong.push(format!(
                "{key} ({}): expected {:?}, got {o:?}",
                s.worker, s.expect
            ));
        }
        if s.healthy && o.dead.is_some() {
            healthy_dead.push(key.clone());
        }
    }
    let mut rec: Vec<Duration> = run.recoveries.iter().map(|r| r.took).collect();
    rec.sort();
    let p50 = percentile(&rec, 50.0);
    let p99 = percentile(&rec, 99.0);
    let (hang_timeout, hang_resumed) = run.hang_ok.unwrap_or((false, false));

    let rows = vec![
        Row {
            name: "events accepted (202)",
            expected: "> 0".into(),
            measured: format!(
                "{} ({stream_events} in the stream, {} at the daemon kill or after; {}+{} fault steps, {:.0} s)",
                sent.len(),
                sent.len() - stream_events,
                a1.steps,
                a2.steps,
                soak.as_secs_f64()
            ),
            ok: !sent.is_empty(),
        },
        Row {
            name: "lost (no reply, no dead letter)",
            expected: "0".into(),
            measured: format!("{} {:?}", lost.len(), &lost[..lost.len().min(5)]),
            ok: lost.is_empty(),
        },
        Row {
            name: "outcomes",
            expected: "replies + dead letters = accepted".into(),
            measured: format!("{replies} replies, {deads} dead letters {reasons:?}"),
            ok: replies + deads + lost.len() == sent.len(),
        },
        Row {
            name: "wrong outcome (or dead-letter reason)",
            expected: "0".into(),
            measured: format!("{} {:?}", wrong.len(), &wrong[..wrong.len().min(3)]),
            ok: wrong.is_empty(),
        },
        Row {
            name: "duplicates explained by the daemon kill",
            expected: format!(
                "<= outcomes of the {} events in flight/queued",
                at_kill_set.len()
            ),
            measured: format!(
                "{dup_explained} ({answered_before_kill} of them answered before the kill)"
            ),
            ok: true,
        },
        Row {
            name: "duplicates unexplained",
            expected: "0".into(),
            measured: format!(
                "{} {:?}",
                dup_unexplained.len(),
                &dup_unexplained[..dup_unexplained.len().min(5)]
            ),
            ok: dup_unexplained.is_empty(),
        },
        Row {
            name: "healthy events dead-lettered",
            expected: "0".into(),
            measured: format!(
                "{} {:?}",
                healthy_dead.len(),
                &healthy_dead[..healthy_dead.len().min(5)]
            ),
            ok: healthy_dead.is_empty(),
        },
        Row {
            name: "neighbour recovery after a host death",
            expected: "every death recovered".into(),
            measured: format!(
                "n={} p50={} ms p99={} ms max={} ms",
                rec.len(),
                p50.as_millis(),
                p99.as_millis(),
                rec.last().copied().unwrap_or_default().as_millis()
            ),
            ok: !rec.is_empty(),
        },
        Row {
            name: "host deaths reported (host.crashed): (all, with a culprit)",
            expected: format!(">= {} measured recoveries", rec.len()),
            measured: format!(
                "{} {:?} then {:?}",
                a1.deaths_total() + a2.deaths_total(),
                a1.deaths,
                a2.deaths
            ),
            ok: a1.deaths_total() + a2.deaths_total() >= rec.len(),
        },
        Row {
            name: "SSE events skipped (observer lag)",
            expected: "0".into(),
            measured: format!("{}", lagged_1 + lagged_2 + a1.lagged + a2.lagged),
            ok: lagged_1 + lagged_2 + a1.lagged + a2.lagged == 0,
        },
        Row {
            name: "hang: ERROR timeout, dead letter, resumes",
            expected: "true, true".into(),
            measured: format!("{hang_timeout}, {hang_resumed}"),
            ok: hang_timeout && hang_resumed,
        },
        Row {
            name: "crash loop: ERROR crash_loop",
            expected: "crash_loop".into(),
            measured: format!("{loop_error}"),
            ok: loop_error == "crash_loop",
        },
        Row {
            name: "crash loop: queue held in ERROR, served after start",
            expected: "0 served in ERROR, RUNNING after".into(),
            measured: format!("{served_while_error} served in ERROR, RUNNING={loop_resumed}"),
            ok: served_while_error == 0 && loop_resumed,
        },
        Row {
            name: "zombie children of the daemon",
            expected: "0".into(),
            measured: format!("{} (first daemon), {} (second)", a1.zombies, a2.zombies),
            ok: a1.zombies == 0 && a2.zombies == 0,
        },
        Row {
            name: "children that are not listed hosts",
            expected: "0".into(),
            measured: format!("{:?} then {:?}", a1.stray, a2.stray),
            ok: a1.stray.is_empty() && a2.stray.is_empty(),
        },
        Row {
            name: "replaced hosts still alive",
            expected: "0".into(),
            measured: format!(
                "{} of {} host pids seen",
                a1.replaced_alive.len() + a2.replaced_alive.len(),
                run.host_pids_seen.len()
            ),
            ok: a1.replaced_alive.is_empty() && a2.replaced_alive.is_empty(),
        },
        Row {
            name: "hosts outliving a SIGKILLed daemon",
            expected: "0 (within 10 s)".into(),
            measured: format!("{} of {}", hosts_outlived.len(), hosts_at_kill.len()),
            ok: hosts_outlived.is_empty(),
        },
        Row {
            name: "orphan host-runners (ppid 1)",
            expected: "0".into(),
            measured: format!(
                "{} after the kill, {} at the end",
                orphans_after_kill.len(),
                orphans_end.len()
            ),
            ok: orphans_after_kill.is_empty() && orphans_end.is_empty(),
        },
        Row {
            name: "hosts alive after a clean stop",
            expected: "0".into(),
            measured: format!("{} (exit {stopped})", hosts_after_stop.len()),
            ok: hosts_after_stop.is_empty() && stopped.success(),
        },
        Row {
            name: "daemon fds (warm -> end of stream)",
            expected: "no growth".into(),
            measured: format!(
                "{:?} -> {:?}; then {:?} -> {:?}",
                a1.fds_base, a1.fds_end, a2.fds_base, a2.fds_end
            ),
            ok: [&a1, &a2].iter().all(|a| {
                a.fds_end.total <= a.fds_base.total
                    && a.fds_end.memfds <= a.fds_base.memfds
                    && a.fds_end.pidfds <= a.fds_base.pidfds
            }),
        },
        Row {
            name: "memfds mapped by the daemon = live hosts",
            expected: format!("{} then {}", a1.hosts_end, a2.hosts_end),
            measured: format!("{} then {}", a1.memfd_maps, a2.memfd_maps),
            ok: a1.memfd_maps <= a1.hosts_end && a2.memfd_maps <= a2.hosts_end,
        },
        Row {
            name: "files left in /tmp, /dev/shm",
            expected: "0".into(),
            measured: format!("{} {leftovers:?}", leftovers.len()),
            ok: leftovers.is_empty(),
        },
        Row {
            name: "daemon RSS over the stream (median of first/last third)",
            expected: format!("growth <= {:.0} MiB", mib(RSS_SLACK_BYTES)),
            measured: [&a1, &a2]
                .iter()
                .map(|a| {
                    let (first, last) = a.rss_first_last();
                    format!(
                        "{:.1} -> {:.1} MiB ({} samples)",
                        mib(first),
                        mib(last),
                        a.rss.len()
                    )
                })
                .collect::<Vec<_>>()
                .join("; then "),
            ok: [&a1, &a2].iter().all(|a| {
                let (first, last) = a.rss_first_last();
                last <= first + RSS_SLACK_BYTES
            }),
        },
    ];
    let mut by_kind: BTreeMap<&str, Vec<u128>> = BTreeMap::new();
    for r in &run.recoveries {
        by_kind.entry(&r.what).or_default().push(r.took.as_millis());
    }
    println!("\nneighbour recovery (ms) by fault: {by_kind:?}\nchaos invariants:");
    println!("| invariant | expected | measured | ok |\n|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} |",
            r.name,
            r.expected,
            r.measured,
            if r.ok { "ok" } else { "FAIL" }
        );
    }
    let failed: Vec<&str> = rows.iter().filter(|r| !r.ok).map(|r| r.name).collect();
    if !failed.is_empty() {
        let tail: Vec<&str> = log2.lines().rev().take(60).collect();
        println!("last lines of the second daemon's log:");
        for l in tail.iter().rev() {
            println!("  {l}");
        }
    }
    assert!(failed.is_empty(), "chaos invariants violated: {failed:?}");
}

/// Host-runners of this build whose parent is gone, still alive 2 s later (a host of another
/// test's SIGKILLed daemon is briefly an orphan before its death signal lands).
fn lasting_orphans(host_runner: &std::path::Path) -> Vec<procs::Proc> {
    let first = procs::orphans_of(host_runner);
    if first.is_empty() {
        return first;
    }
    std::thread::sleep(Duration::from_secs(2));
    first.into_iter().filter(|p| procs::alive(p.pid)).collect()
}

/// The publisher thread's publish (it has an address, not the `Daemon`).
fn publish_to(addr: std::net::SocketAddr, ledger: &Ledger, worker: &'static str, healthy: bool) {
    let key = ledger.key(worker);
    let data = format!("s{key}");
    let expect = if worker == "dn.bad" {
        Expect::Reply(None)
    } else {
        Expect::Reply(Some(data.clone()))
    };
    lock(&ledger.sent).insert(
        key.clone(),
        Sent {
            worker,
            expect,
            healthy,
        },
    );
    let ev = json!({
        "specversion": "1.0", "id": key, "source": "urn:test:chaos", "type": worker,
        "datacontenttype": "text/plain", "data": data, "correlationid": key,
    });
    let r = wm_testkit::daemon::http::request(
        addr,
        "POST",
        &format!("/v1/topics/{worker}/events"),
        &[("content-type", "application/json")],
        ev.to_string().as_bytes(),
    )
    .unwrap_or_else(|e| panic!("publishing {key}: {e}"));
    assert_eq!(r.status, 202, "publish {key}: {}", r.text());
}

/// Issue 12: the daemon is SIGKILLed at a random moment of a free-running stream (publishers
/// never pause) and the observer resumes with `Last-Event-ID`. A reply is stored in the same
/// transaction that settles its input (`Bus::complete`), so a call whose completion had not
/// committed leaves no reply behind and is simply handled again: every accepted event ends with
/// exactly one reply on the observer's stream, across the crash. Publishes cut by the kill are
/// counted as uncertain (at most one reply each).
#[test]
fn chaos_sigkill_mid_free_running_stream_observers_resume_with_last_event_id() {
    let so = Build::plugin("chaos", Lang::C, &["chaos.c"]).build();
    let pkg = nupkg::native(
        "Chaos.Worker",
        "chaos",
        &so,
        "<virtufinLibrary>chaos</virtufinLibrary>",
    );
    let data = tempfile::tempdir().expect("tempdir");
    let opts = || {
        DaemonOptions::default()
            .data_dir(data.path())
            .env("WORKER_RETRY_BASE_DELAY_MS", "10")
    };
    let mut d = Daemon::start(opts());
    let body = json!({
        "mimeType": "application/x-native-dll", "topic": "free", "maxConcurrency": 4,
        "codeSource": {"content": b64(&pkg)},
    });
    let r = d.send_json("POST", "/v1/workers", &body);
    assert_eq!(r.status, 201, "create: {}", r.text());
    let id = r.json()["id"].as_str().expect("id").to_string();
    let r = d.post(&format!("/v1/workers/{id}/start"));
    assert!(r.status < 300, "start: {}", r.text());

    let addr = Arc::new(Mutex::new(d.addr()));
    let accepted: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let uncertain: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let publishers: Vec<_> = (0..4)
        .map(|t| {
            let (addr, accepted, uncertain, stop) = (
                addr.clone(),
                accepted.clone(),
                uncertain.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let key = format!("f{t}-{n}");
                    let ev = json!({
                        "specversion": "1.0", "id": key, "source": "urn:test:free", "type": "free",
                        "datacontenttype": "text/plain", "data": key,
                    });
                    let to = *lock(&addr);
                    let r = wm_testkit::daemon::http::request(
                        to,
                        "POST",
                        "/v1/topics/free/events",
                        &[("content-type", "application/json")],
                        ev.to_string().as_bytes(),
                    );
                    match r {
                        Ok(r) if r.status == 202 => {
                            lock(&accepted).insert(key);
                        }
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(_) => {
                            lock(&uncertain).insert(key);
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                }
            })
        })
        .collect();

    // The observer, and the random moment of the kill.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let kill_after = Duration::from_millis(800 + u64::from(nanos % 1_700));
    let mut replies: HashMap<String, Vec<u64>> = HashMap::new();
    let mut ids_seen: Vec<u64> = Vec::new();
    let observer = Sse::subscribe(&d.base_url(), "free.reply");
    record(&observer, kill_after, &mut replies, &mut ids_seen);
    let accepted_before_kill = lock(&accepted).len();
    d.kill9();
    record(
        &observer,
        Duration::from_millis(200),
        &mut replies,
        &mut ids_seen,
    );
    let last = observer.last_id().expect("replies before the kill");
    drop(observer);

    let d = Daemon::start(opts());
    *lock(&addr) = d.addr();
    let resumed = Sse::resume(&d.base_url(), "free.reply", "", Some(last));
    record(
        &resumed,
        Duration::from_millis(1_500),
        &mut replies,
        &mut ids_seen,
    );
    stop.store(true, Ordering::SeqCst);
    for p in publishers {
        p.join().expect("publisher");
    }
    let accepted = lock(&accepted).clone();
    let uncertain = lock(&uncertain).clone();
    let deadline = Instant::now() + WAIT;
    while accepted.iter().any(|k| !replies.contains_key(k)) && Instant::now() < deadline {
        record(
            &resumed,
            Duration::from_millis(200),
            &mut replies,
            &mut ids_seen,
        );
    }
    record(
        &resumed,
        Duration::from_millis(300),
        &mut replies,
        &mut ids_seen,
    );

    let missing: Vec<&String> = accepted
        .iter()
        .filter(|k| !replies.contains_key(*k))
        .collect();
    let duplicated: Vec<(&String, &Vec<u64>)> =
        replies.iter().filter(|(_, s)| s.len() > 1).collect();
    let unknown: Vec<&String> = replies
        .keys()
        .filter(|k| !accepted.contains(*k) && !uncertain.contains(*k))
        .collect();
    let increasing = ids_seen.windows(2).all(|w| w[0] < w[1]);
    eprintln!(
        "free-running kill at {kill_after:?}: accepted {} ({accepted_before_kill} before the kill), uncertain {}, \
         replies seen {}, missing {}, duplicated {}, unknown {}, ids increasing {increasing}",
        accepted.len(),
        uncertain.len(),
        ids_seen.len(),
        missing.len(),
        duplicated.len(),
        unknown.len(),
    );
    assert!(
        accepted_before_kill > 0,
        "the stream was running at the kill"
    );
    assert!(
        missing.is_empty(),
        "accepted events without a reply: {missing:?}"
    );
    assert!(duplicated.is_empty(), "replies seen twice: {duplicated:?}");
    assert!(
        unknown.is_empty(),
        "replies to events never published: {unknown:?}"
    );
    assert!(increasing, "the resumed stream repeats or reorders ids");
}

/// Reads `sse` for `window`: each reply's data (the input's key) with its SSE id.
fn record(
    sse: &Sse,
    window: Duration,
    replies: &mut HashMap<String, Vec<u64>>,
    ids_seen: &mut Vec<u64>,
) {
    let until = Instant::now() + window;
    while let Some((seq, v)) = sse.next_with_id(until.saturating_duration_since(Instant::now())) {
        let key = v["data"].as_str().unwrap_or_default().to_string();
        replies.entry(key).or_default().push(seq);
        ids_seen.push(seq);
    }
}
