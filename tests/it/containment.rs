//! The hostile-plugin suite (issue 10): every attack a plugin author could try from inside
//! `Process`, against a real daemon and real sandboxed hosts, with the data-driven fixtures
//! `tests/fixtures/native/hostile.c` and `tests/fixtures/dotnet/HostileLibc.cs`.
//!
//! Each run starts one daemon with three workers: the attacker and a healthy neighbour on the
//! same shared host, and a healthy neighbour on a dedicated host. Every attack is one event
//! invoked on the attacker; after it the suite checks (see [`Run::attack`]):
//!
//! 1. the daemon is alive with the same pid and answers `/health`;
//! 2. both neighbours answer an invoke within 1 s (the shared neighbour may first have to wait
//!    for its host's respawn: it is retried for a few seconds, then must answer within 1 s);
//!    the dedicated neighbour's host is the same process as before (nothing reached it);
//! 3. the attack is reported: the host's death with the forbidden syscall or the protocol
//!    violation named (`host.crashed` on `workmanager.infra.host`, and the invoke's error), or
//!    the error the kernel returned to the plugin (its reply), per the attack's [`Expect`];
//! 4. the data directory is the same (see [`volatile`] for what "the same" means).
//!
//! The whole table runs twice per engine: as configured, and with `SANDBOX_LANDLOCK=off`, so
//! the other layers are proved on their own. Attacks run one after the other on one daemon per
//! run (a daemon that dies is replaced, so one hole does not hide the others); each attack's
//! result is printed as a table row, and the test fails at the end listing every attack that
//! failed with why. `WM_CONTAINMENT_ONLY=socket,kill` runs only the attacks whose name contains
//! one of the words; `WM_CONTAINMENT_STDERR_BYTES` sizes the stderr flood (default 1 GiB).
//!
//! A shared host is one trust domain (its plugins share an address space), so forged
//! identities name a worker *not* placed on the attacker's host. Two single tests follow the
//! tables: forged crash slots must not get another worker quarantined, and a forbidden syscall
//! through the bus is named in the dead letter and in `lifecycle.failed`. The observed table
//! and the open findings are in docs/security.md ("Attacks and what stops them").

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use wm_shared::protocol::{GatewayCall, Log, Message, ProcessResult, ResultStatus};
use wm_testkit::daemon::{Daemon, DaemonOptions};
use wm_testkit::dotnet as dn;
use wm_testkit::fstree;
use wm_testkit::native::{Build, Lang};
use wm_testkit::nupkg;
use wm_testkit::sse::Sse;

/// How long a neighbour may take to come back after its shared host died.
const RESPAWN_WAIT: Duration = Duration::from_secs(15);
/// How fast a neighbour must answer once its host is up.
const ANSWER_WITHIN: Duration = Duration::from_secs(1);
/// How long one neighbour invoke may block (a call stuck on a wedged host fails after this).
const NEIGHBOUR_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the attacker's invoke may block (the floods take a while).
const ATTACK_TIMEOUT: Duration = Duration::from_secs(40);
/// How long to wait for the `host.crashed` of an attack that must end its host.
const CRASH_WAIT: Duration = Duration::from_secs(10);
/// Growth of the daemon's RSS during one flood that still counts as bounded.
const FLOOD_RSS_SLACK: u64 = 256 << 20;
/// `STATE_MAX_KEYS` / `STATE_MAX_VALUE_BYTES` of the runs.
const STATE_MAX_KEYS: usize = 100;
const STATE_MAX_VALUE_BYTES: usize = 65536;

const CRASHED: &str = "com.virtufin.workmanager.infra.host.crashed";
/// What the stderr control row writes; found in the daemon log behind the host-runner prefix.
const STDERR_MARK: &str = "hostile-plugin-stderr-line-reaches-the-log";

const EACCES: i64 = libc::EACCES as i64;
const ENOENT: i64 = libc::ENOENT as i64;
const EPERM: i64 = libc::EPERM as i64;
const EROFS: i64 = libc::EROFS as i64;
const ESRCH: i64 = libc::ESRCH as i64;
const ENOSYS: i64 = libc::ENOSYS as i64;
/// What "you may not read that process" looks like: another uid, a non-dumpable daemon, or a
/// pid namespace in which it does not exist.
const PROC_DENIED: &[i64] = &[EACCES, ENOENT, EPERM, ESRCH];
/// What "you may not write there" looks like: file modes and another uid, Landlock, a
/// read-only mount.
const WRITE_DENIED: &[i64] = &[EACCES, EROFS, EPERM];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    Native,
    DotNet,
}

/// A check over an attack's outcome.
type CheckFn = Box<dyn Fn(&Run, &Outcome) -> Result<(), String>>;
/// A step run right after an attack's invoke.
type AfterFn = Box<dyn Fn(&Run) -> Result<(), String>>;

/// What must happen for an attack to count as contained.
enum Expect {
    /// The host is ended and the death report names this syscall (and the attacker).
    Dies(&'static str),
    /// The plugin survives and its call failed with one of these errnos.
    Refused(&'static [i64]),
    /// The host is ended for breaking the host protocol, and the reason says so.
    Violation,
    /// A healthy call (a positive control): the reply's rc is not negative.
    Healthy,
    /// Anything else: a check over the outcome.
    Check(CheckFn),
}

struct Attack {
    /// Unique label (the table row).
    name: String,
    /// The event's data; `{ppid}`, `{sibling}`, `{data}`, ... are filled in by [`Run::fill`].
    data: String,
    expect: Expect,
    /// Run before the attack (e.g. a neighbour writing a file).
    before: Option<AfterFn>,
    /// Run after the attack's invoke, before the checks (e.g. a reload).
    after: Option<AfterFn>,
}

fn attack(name: &str, data: &str, expect: Expect) -> Attack {
    Attack {
        name: name.to_owned(),
        data: data.to_owned(),
        expect,
        before: None,
        after: None,
    }
}

fn check(f: impl Fn(&Run, &Outcome) -> Result<(), String> + 'static) -> Expect {
    Expect::Check(Box::new(f))
}

/// What one attack did.
#[derive(Debug, Default)]
struct Outcome {
    status: u16,
    /// The plugin's JSON reply, when it replied.
    reply: Option<Value>,
    /// The invoke's body when it was not a reply.
    error: String,
    /// `host.crashed` data of the attacker's host seen during the attack.
    crashed: Vec<Value>,
    /// Every `host.crashed` data seen during the attack (any host).
    all_crashed: Vec<Value>,
    /// The daemon's RSS and peak RSS before, and its peak RSS after, bytes. The peak, not the
    /// RSS after: a line buffered whole would be freed (and unmapped) once it is logged.
    rss: (u64, u64, u64),
    /// Every `/v1/hosts` answer seen while the attack ran (polled every 50 ms), so a flag on a
    /// host process that the attack then ended is still seen.
    hosts_seen: Vec<Value>,
}

impl Outcome {
    fn rc(&self) -> Option<i64> {
        self.reply.as_ref().and_then(|r| r["rc"].as_i64())
    }

    fn errno(&self) -> i64 {
        self.reply
            .as_ref()
            .and_then(|r| r["errno"].as_i64())
            .unwrap_or(0)
    }

    /// One line for the table.
    fn observed(&self) -> String {
        if let Some(c) = self.crashed.first() {
            return format!("host ended: {}", c["reason"].as_str().unwrap_or("?"));
        }
        match &self.reply {
            Some(r) => {
                let errno = self.errno();
                let mut s = format!("reply rc={} errno={}", r["rc"], errno);
                if errno != 0 {
                    s.push_str(&format!(
                        " ({})",
                        std::io::Error::from_raw_os_error(errno as i32)
                    ));
                }
                // The attack's own fields (what each step returned), without the echo.
                let mut extra = r.clone();
                if let Some(o) = extra.as_object_mut() {
                    for k in ["attack", "rc", "errno", "pid"] {
                        o.remove(k);
                    }
                    if !o.is_empty() {
                        s.push_str(&format!(" {extra}"));
                    }
                }
                s
            }
            None => format!("HTTP {}: {}", self.status, truncate(&self.error, 200)),
        }
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.len() <= n {
        s.to_owned()
    } else {
        let mut end = n;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    }
}

/// The workers of a run.
struct Workers {
    attacker: String,
    neighbour: String,
    dedicated: String,
    /// Package folders (`<data>/packages/<sha256>`) of the attacker and the dedicated neighbour.
    own_pkg: PathBuf,
    other_pkg: PathBuf,
    own_code: PathBuf,
    /// The attacker's package bytes (for the reload after writing into its folder).
    attacker_pkg: Vec<u8>,
}

struct Run {
    d: Daemon,
    pid: u32,
    w: Workers,
    infra: Sse,
    forged: Sse,
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn native_pkg(id: &str) -> Vec<u8> {
    let so = Build::plugin("hostile", Lang::C, &["hostile.c"]).build();
    nupkg::native(
        id,
        "hostile",
        &so,
        "<virtufinLibrary>hostile</virtufinLibrary>",
    )
}

/// The SQLite files the daemon itself rewrites all the time (bus, registry, their WAL and
/// shared-memory files) and the address file: their *content* is not compared (their kind,
/// mode and owner are). Everything else — `code/` blobs, every file of every package folder
/// under `packages/`, the lock, and the set of names in the whole tree — must be byte for byte
/// and mode for mode what it was before the attack: a hostile host may neither change, add,
/// remove nor re-permission anything in the data directory.
fn volatile(rel: &Path) -> bool {
    let name = rel.to_string_lossy();
    rel.components().count() == 1
        && (name.starts_with("bus.db")
            || name.starts_with("registry.db")
            || name.ends_with("-wal")
            || name.ends_with("-shm")
            || name == "listen.addr")
}

/// SQLite's WAL/SHM files come and go with checkpoints, and `hosts/<host id>/` are the hosts'
/// private temp folders (the one place a host may write; created and removed with each host
/// process): leave them out of the name set.
fn data_digest(dir: &Path) -> fstree::TreeDigest {
    let mut d = fstree::digest(dir, &volatile);
    d.retain(|k, _| {
        let n = k.to_string_lossy();
        !(n.ends_with("-wal")
            || n.ends_with("-shm")
            || n.ends_with("-journal")
            || k.starts_with("hosts"))
    });
    d
}

fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z ") && !s.contains(") X "))
        .unwrap_or(false)
}

/// A `/proc/<pid>/status` memory field in bytes: `VmRSS:` (now) or `VmHWM:` (peak so far).
fn mem_of(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

impl Run {
    fn start(engine: Engine, landlock: bool) -> Run {
        Run::start_with(engine, landlock, &[("CRASH_LOOP_MAX_CRASHES", "1000")])
    }

    fn start_with(engine: Engine, landlock: bool, env: &[(&str, &str)]) -> Run {
        let mut opts = DaemonOptions::default()
            .env("WORKER_RETRY_BASE_DELAY_MS", "10")
            .env("HOST_RESPAWN_BACKOFF_MS", "20")
            .env("CRASH_LOOP_WINDOW_SECONDS", "1")
            .env("MESSAGE_HANDLING_TIMEOUT_SECONDS", "30")
            .env("STATE_MAX_KEYS", &STATE_MAX_KEYS.to_string())
            .env("STATE_MAX_VALUE_BYTES", &STATE_MAX_VALUE_BYTES.to_string());
        for (k, v) in env {
            opts = opts.env(k, v);
        }
        if !landlock {
            opts = opts.env("SANDBOX_LANDLOCK", "off");
        }
        if engine == Engine::DotNet {
            dn::engine_dir();
            let root = dn::dotnet_root();
            opts = opts.env("DOTNET_ROOT", root.to_str().expect("utf-8 path"));
        }
        let d = Daemon::start(opts);
        let pid = d.pid().expect("daemon pid");
        let infra = Sse::subscribe(&d.base_url(), "workmanager.infra.host");
        let forged = Sse::subscribe(&d.base_url(), "containment.forged");
        let w = match engine {
            Engine::Native => {
                let a = native_pkg("Hostile.Attacker");
                let n = native_pkg("Hostile.Neighbour");
                let dd = native_pkg("Hostile.Dedicated");
                let attacker = deploy(&d, "application/x-native-dll", &a, "c.attacker", false);
                let neighbour = deploy(&d, "application/x-native-dll", &n, "c.neighbour", false);
                let dedicated = deploy(&d, "application/x-native-dll", &dd, "c.dedicated", true);
                Workers {
                    attacker,
                    neighbour,
                    dedicated,
                    own_pkg: d.data_dir().join("packages").join(sha256_hex(&a)),
                    other_pkg: d.data_dir().join("packages").join(sha256_hex(&dd)),
                    own_code: d.data_dir().join("code").join(sha256_hex(&a)),
                    attacker_pkg: a,
                }
            }
            Engine::DotNet => {
                let hostile = dn::build_library("HostileLibc", &["HostileLibc.cs"], &[]);
                let echo = dn::build_library("Echo", &["Echo.cs"], &[]);
                let a = dn::worker_nupkg("HostileLibc", &hostile, &[]);
                let e = dn::worker_nupkg("Echo", &echo, &[]);
                let mime = "application/x-dotnet-dll";
                let attacker = deploy(&d, mime, &a, "c.attacker", false);
                let neighbour = deploy(&d, mime, &e, "c.neighbour", false);
                let dedicated = deploy(&d, mime, &e, "c.dedicated", true);
                Workers {
                    attacker,
                    neighbour,
                    dedicated,
                    own_pkg: d.data_dir().join("packages").join(sha256_hex(&a)),
                    other_pkg: d.data_dir().join("packages").join(sha256_hex(&e)),
                    own_code: d.data_dir().join("code").join(sha256_hex(&a)),
                    attacker_pkg: a,
                }
            }
        };
        let run = Run {
            d,
            pid,
            w,
            infra,
            forged,
        };
        for id in [&run.w.attacker, &run.w.neighbour, &run.w.dedicated] {
            run.answers(id)
                .unwrap_or_else(|e| panic!("{id} does not answer before any attack: {e}"));
        }
        run
    }

    /// Invokes `worker` with `data`; a transport failure (the daemon gone, a read timeout)
    /// comes back as a status 0 response whose body says what happened.
    fn invoke(&self, worker: &str, data: &str) -> wm_testkit::daemon::http::Response {
        self.invoke_within(worker, data, NEIGHBOUR_TIMEOUT)
    }

    fn invoke_within(
        &self,
        worker: &str,
        data: &str,
        timeout: Duration,
    ) -> wm_testkit::daemon::http::Response {
        let body = json!({"specversion": "1.0", "id": "attack", "source": "urn:test:containment",
                "type": "containment.attack", "datacontenttype": "text/plain", "data": data});
        wm_testkit::daemon::http::request_with_timeout(
            self.d.addr(),
            "POST",
            &format!("/v1/workers/{worker}/invoke"),
            &[("content-type", "application/json")],
            body.to_string().as_bytes(),
            timeout,
        )
        .unwrap_or_else(|e| wm_testkit::daemon::http::Response {
            status: 0,
            headers: Vec::new(),
            body: format!("the invoke failed: {e}").into_bytes(),
        })
    }

    /// The plugin's JSON reply of a 200 invoke.
    fn reply_json(r: &wm_testkit::daemon::http::Response) -> Option<Value> {
        if r.status != 200 {
            return None;
        }
        let v: Value = serde_json::from_slice(&r.body).ok()?;
        match &v["data"] {
            Value::String(s) => serde_json::from_str(s).ok(),
            Value::Object(_) => Some(v["data"].clone()),
            _ => None,
        }
    }

    /// Retries `worker` until it answers (its host may be respawning), then requires one more
    /// answer within [`ANSWER_WITHIN`].
    fn answers(&self, worker: &str) -> Result<(), String> {
        let deadline = Instant::now() + RESPAWN_WAIT;
        let mut last = String::new();
        loop {
            let r = self.invoke(worker, "echo");
            if r.status == 200 {
                break;
            }
            last = format!("{} {}", r.status, truncate(&r.text(), 300));
            if Instant::now() > deadline {
                return Err(format!(
                    "did not answer within {RESPAWN_WAIT:?} (last: {last})"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let t = Instant::now();
        let r = self.invoke(worker, "echo");
        let took = t.elapsed();
        if r.status != 200 || took > ANSWER_WITHIN {
            return Err(format!(
                "answered {} in {took:?} (limit {ANSWER_WITHIN:?}; earlier: {last})",
                r.status
            ));
        }
        Ok(())
    }

    fn hosts(&self) -> Vec<Value> {
        self.d.get("/v1/hosts").json()["hosts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The host carrying `worker`: (id, pid).
    fn host_of(&self, worker: &str) -> Option<(String, i64)> {
        self.hosts().into_iter().find_map(|h| {
            let has = h["workers"]
                .as_array()
                .is_some_and(|a| a.iter().any(|w| w == worker || w["id"] == worker));
            has.then(|| {
                (
                    h["id"].as_str().unwrap_or("").to_owned(),
                    h["pid"].as_i64().unwrap_or(0),
                )
            })
        })
    }

    /// Fills the placeholders of an attack's data.
    fn fill(&self, data: &str) -> String {
        let sibling = self.host_of(&self.w.dedicated).map_or(0, |h| h.1);
        let data_dir = self.d.data_dir();
        let own_file = first_file(&self.w.own_pkg);
        let other_file = first_file(&self.w.other_pkg);
        let sibling_tmp = tmp_dir_of(sibling).unwrap_or_else(|| PathBuf::from("/nonexistent"));
        data.replace("{ppid}", &self.pid.to_string())
            .replace("{sibling_tmp}", &sibling_tmp.display().to_string())
            .replace("{sibling}", &sibling.to_string())
            .replace("{data}", &data_dir.display().to_string())
            .replace("{own_pkg}", &self.w.own_pkg.display().to_string())
            .replace("{other_pkg}", &self.w.other_pkg.display().to_string())
            .replace("{own_file}", &own_file.display().to_string())
            .replace("{other_file}", &other_file.display().to_string())
            .replace("{own_code}", &self.w.own_code.display().to_string())
            .replace("{neighbour}", &self.w.neighbour)
            .replace("{dedicated}", &self.w.dedicated)
            .replace("{attacker}", &self.w.attacker)
    }

    fn daemon_alive(&self) -> Result<(), String> {
        if self.d.pid() != Some(self.pid) || !pid_alive(self.pid) {
            return Err(format!(
                "the daemon (pid {}) is gone; its log ends:\n{}",
                self.pid,
                tail(&self.d.log(), 3000)
            ));
        }
        match wm_testkit::daemon::http::request(self.d.addr(), "GET", "/health", &[], b"") {
            Ok(r) if r.status == 200 => Ok(()),
            Ok(r) => Err(format!("/health answered {}", r.status)),
            Err(e) => Err(format!("/health failed: {e}")),
        }
    }

    /// Runs one attack and every check; Err lists what failed.
    fn attack(&self, a: &Attack, data: &str) -> (Outcome, Result<(), String>) {
        let mut out = Outcome::default();
        // Events of earlier attacks are not this attack's.
        while self.infra.next(Duration::ZERO).is_some() {}
        while self.forged.next(Duration::ZERO).is_some() {}
        // An earlier attack may have put a worker in ERROR (a timeout, a crash loop): start it
        // again, so each attack meets running workers.
        for id in [&self.w.attacker, &self.w.neighbour, &self.w.dedicated] {
            let w = self.d.get(&format!("/v1/workers/{id}")).json();
            if w["status"] != "RUNNING" {
                self.d.post(&format!("/v1/workers/{id}/start"));
            }
        }
        if let Some(before) = &a.before
            && let Err(e) = before(self)
        {
            return (Outcome::default(), Err(format!("before the attack: {e}")));
        }
        let before = data_digest(self.d.data_dir());
        let attacker_host = self.host_of(&self.w.attacker);
        let dedicated_host = self.host_of(&self.w.dedicated);
        let data = self.fill(data);
        out.rss.0 = mem_of(self.pid, "VmRSS:");
        out.rss.1 = mem_of(self.pid, "VmHWM:");

        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watcher = {
            let stop = stop.clone();
            let addr = self.d.addr();
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    if let Ok(r) = wm_testkit::daemon::http::request_with_timeout(
                        addr,
                        "GET",
                        "/v1/hosts",
                        &[],
                        b"",
                        Duration::from_secs(2),
                    ) && let Ok(v) = serde_json::from_slice::<Value>(&r.body)
                        && let Some(a) = v["hosts"].as_array()
                    {
                        seen.extend(a.iter().cloned());
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                seen
            })
        };
        let r = self.invoke_within(&self.w.attacker, &data, ATTACK_TIMEOUT);
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        out.hosts_seen = watcher.join().unwrap_or_default();
        out.status = r.status;
        out.reply = Run::reply_json(&r);
        if out.reply.is_none() {
            out.error = r.text();
        }
        let mut failures = Vec::new();
        if let Some(after) = &a.after
            && let Err(e) = after(self)
        {
            failures.push(format!("after the attack: {e}"));
        }
        out.rss.2 = mem_of(self.pid, "VmHWM:");

        if let Err(e) = self.daemon_alive() {
            failures.push(e);
            return (out, Err(failures.join("\n")));
        }
        for (who, id) in [
            ("shared neighbour", &self.w.neighbour),
            ("dedicated neighbour", &self.w.dedicated),
        ] {
            if let Err(e) = self.answers(id) {
                failures.push(format!("the {who} {e}"));
            }
        }

        // The death reports of this attack.
        let needs_crash = matches!(a.expect, Expect::Dies(_) | Expect::Violation);
        let attacker_host_id = attacker_host.as_ref().map(|h| h.0.clone());
        // `/v1/hosts` names the slot (`native-shared-1`), a death report the process
        // (`native-shared-1.6`: the slot's sixth host).
        let is_ours = |v: &Value| {
            let host = v["host_id"].as_str().unwrap_or("");
            attacker_host_id
                .as_deref()
                .is_some_and(|h| host == h || host.starts_with(&format!("{h}.")))
                || v["culprit_worker_id"] == self.w.attacker.as_str()
        };
        let deadline = Instant::now()
            + if needs_crash && out.reply.is_none() {
                CRASH_WAIT
            } else {
                Duration::from_millis(150)
            };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.infra.next(left) {
                Some(ev) if ev["type"] == CRASHED => {
                    let data = ev["data"].clone();
                    if is_ours(&data) {
                        out.crashed.push(data.clone());
                    }
                    out.all_crashed.push(data);
                    if needs_crash && !out.crashed.is_empty() {
                        // Give a second report (the neighbour's send) a moment to arrive.
                        while let Some(ev) = self.infra.next(Duration::from_millis(100)) {
                            if ev["type"] == CRASHED {
                                let data = ev["data"].clone();
                                if is_ours(&data) {
                                    out.crashed.push(data.clone());
                                }
                                out.all_crashed.push(data);
                            }
                        }
                        break;
                    }
                }
                Some(_) => {}
                None => break,
            }
        }

        // Nothing but the attacker's host may have died.
        for c in &out.all_crashed {
            if !is_ours(c) {
                failures.push(format!("another host died during the attack: {c}"));
            }
            for victim in [&self.w.neighbour, &self.w.dedicated] {
                if c["culprit_worker_id"] == victim.as_str() {
                    failures.push(format!("a neighbour was blamed for the crash: {c}"));
                }
            }
        }
        if let (Some(before), Some(now)) = (&dedicated_host, self.host_of(&self.w.dedicated))
            && before.1 != now.1
        {
            failures.push(format!(
                "the dedicated neighbour's host changed: pid {} -> {}",
                before.1, now.1
            ));
        }

        if let Err(e) = self.expectation(a, &out) {
            failures.push(e);
        }

        let after = data_digest(self.d.data_dir());
        let diff = fstree::diff(&before, &after);
        if !diff.is_empty() {
            failures.push(format!(
                "the data directory changed:\n  {}",
                diff.join("\n  ")
            ));
        }
        if failures.is_empty() {
            (out, Ok(()))
        } else {
            (out, Err(failures.join("\n")))
        }
    }

    fn expectation(&self, a: &Attack, out: &Outcome) -> Result<(), String> {
        match &a.expect {
            Expect::Dies(sc) => {
                let says = format!("called {sc}(2), which the sandbox forbids");
                let mut errs = Vec::new();
                if let Some(r) = &out.reply {
                    return Err(format!(
                        "the host survived {sc}(2): the plugin replied {r} (want the host ended with '{says}')"
                    ));
                }
                if !out.error.contains(&says) {
                    errs.push(format!(
                        "the invoke's error does not say '{says}': HTTP {} {}",
                        out.status,
                        truncate(&out.error, 400)
                    ));
                }
                let named = out.crashed.iter().any(|c| {
                    c["reason"].as_str().is_some_and(|r| {
                        r.contains(&says) && r.contains(&format!("worker '{}'", self.w.attacker))
                    }) && c["syscall"] == *sc
                        && c["culprit_worker_id"] == self.w.attacker.as_str()
                });
                if !named {
                    errs.push(format!(
                        "no host.crashed names {sc} and the attacker (syscall, reason, culprit): {:?}",
                        out.crashed
                    ));
                }
                if errs.is_empty() {
                    Ok(())
                } else {
                    Err(errs.join("\n"))
                }
            }
            Expect::Refused(errnos) => match (&out.reply, out.rc()) {
                (Some(_), Some(rc)) if rc < 0 && errnos.contains(&out.errno()) => Ok(()),
                (Some(r), _) => Err(format!(
                    "the call was not refused with one of errno {errnos:?}: {r}"
                )),
                (None, _) => Err(format!(
                    "no reply (want a refusal with errno {errnos:?}): HTTP {} {}; host.crashed: {:?}",
                    out.status,
                    truncate(&out.error, 300),
                    out.crashed
                )),
            },
            Expect::Violation => {
                let named = out
                    .crashed
                    .iter()
                    .any(|c| c["reason"].as_str().is_some_and(|r| r.contains("protocol")));
                if named {
                    Ok(())
                } else {
                    Err(format!(
                        "no host.crashed names a protocol violation; reply {:?}, HTTP {} {}, host.crashed {:?}",
                        out.reply,
                        out.status,
                        truncate(&out.error, 300),
                        out.crashed
                    ))
                }
            }
            Expect::Healthy => match out.rc() {
                Some(rc) if rc >= 0 => Ok(()),
                _ => Err(format!(
                    "a healthy call failed: reply {:?}, HTTP {} {}",
                    out.reply,
                    out.status,
                    truncate(&out.error, 300)
                )),
            },
            Expect::Check(f) => f(self, out),
        }
    }
}

fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Where an attacker would look for the private temp folder of host process `pid`: its
/// command line (the folder used to be passed as `--tmp-dir`). The supervisor now passes it
/// as `TMPDIR` in the environment (which a sibling cannot read: hosts are non-dumpable) under
/// an unguessable name in a folder nobody can list, so this finds nothing and the attack
/// aims at a path that does not exist.
fn tmp_dir_of(pid: i64) -> Option<PathBuf> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let i = args.iter().position(|a| *a == b"--tmp-dir")?;
    args.get(i + 1)
        .map(|a| PathBuf::from(String::from_utf8_lossy(a).into_owned()))
}

/// A sibling's temp folder is hidden (ENOENT: its name cannot be learnt) or, were the name
/// known, read-only in the attacker's mount namespace.
const HIDDEN_OR_DENIED: &[i64] = &[EACCES, EROFS, EPERM, ENOENT];

fn first_file(dir: &Path) -> PathBuf {
    fn walk(d: &Path) -> Option<PathBuf> {
        let mut entries: Vec<_> = std::fs::read_dir(d)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for p in &entries {
            if p.is_file() && p.extension().is_some_and(|x| x == "so" || x == "dll") {
                return Some(p.clone());
            }
        }
        entries.iter().filter(|p| p.is_dir()).find_map(|p| walk(p))
    }
    walk(dir).unwrap_or_else(|| dir.join("missing"))
}

fn deploy(d: &Daemon, mime: &str, pkg: &[u8], topic: &str, dedicated: bool) -> String {
    let mut body = json!({
        "mimeType": mime,
        "topic": topic,
        "codeSource": {"content": base64::engine::general_purpose::STANDARD.encode(pkg)},
    });
    if dedicated {
        body["isolation"] = json!("dedicated");
    }
    let r = d.send_json("POST", "/v1/workers", &body);
    assert_eq!(r.status, 201, "create: {}", r.text());
    let id = r.json()["id"].as_str().expect("worker id").to_owned();
    let r = d.post(&format!("/v1/workers/{id}/start"));
    assert!(r.status < 300, "start: {} {}", r.status, r.text());
    id
}

/// A host-protocol frame as hex, for `forge:<hex>`.
fn frame_hex(m: &Message) -> String {
    hex::encode(m.encode())
}

/// The attacker's host was flagged for a forged identity: `/v1/hosts` showed it
/// (`"identityViolations": n, "flagged": true`, issue 10 item 5) while the attack ran or after,
/// or its death report names the forged identity.
fn identity_flagged(run: &Run, out: &Outcome) -> bool {
    let flagged_field =
        |h: &Value| h["flagged"] == true || h["identityViolations"].as_u64().is_some_and(|n| n > 0);
    run.hosts().iter().any(flagged_field)
        || out.hosts_seen.iter().any(flagged_field)
        || out.crashed.iter().any(|c| {
            c["reason"]
                .as_str()
                .is_some_and(|r| r.contains("identity") || r.contains("not placed"))
        })
}

fn native_attacks() -> Vec<Attack> {
    let mut v = vec![attack("echo (control)", "echo", Expect::Healthy)];

    // Sockets of every family.
    for fam in [
        "inet",
        "inet6",
        "unix",
        "unix-abstract",
        "netlink",
        "packet",
    ] {
        v.push(attack(
            &format!("socket {fam}"),
            &format!("socket:{fam}"),
            Expect::Dies("socket"),
        ));
    }
    v.push(attack(
        "socketpair",
        "socketpair",
        Expect::Dies("socketpair"),
    ));

    // Every signal syscall at the parent, a sibling, pid 1, -1 and 0. SIGKILL where a hole
    // would only take down the daemon under test or a sibling host; signal 0 (the permission
    // probe, no effect) at 1, -1 and 0, so a hole never signals the machine's other processes.
    for sc in [
        "kill",
        "tgkill",
        "tkill",
        "rt_sigqueueinfo",
        "rt_tgsigqueueinfo",
        "pidfd_send_signal",
    ] {
        for (target, sig) in [
            ("{ppid}", 9),
            ("{sibling}", 9),
            ("1", 0),
            ("-1", 0),
            ("0", 0),
        ] {
            let label = target.trim_matches(['{', '}']);
            v.push(attack(
                &format!("{sc} at {label}"),
                &format!("{sc}:{target}:{sig}"),
                if target == "1" {
                    // Inside a PID namespace the host itself is pid 1: a signal to itself is
                    // allowed (and harmless); anywhere else pid 1 is init and the call dies.
                    let sc: &'static str = sc;
                    check(move |run, out| match &out.reply {
                        Some(r) if r["pid"] == 1 => Ok(()),
                        Some(r) => Err(format!("{sc} at pid 1 was not stopped: {r}")),
                        None => run.expectation(&attack("", "", Expect::Dies(sc)), out),
                    })
                } else {
                    Expect::Dies(sc)
                },
            ));
        }
    }
    // SIGIO as a weapon: F_SETOWN + F_SETSIG(SIGKILL) + O_ASYNC on a pipe. The checks every
    // attack gets (the daemon and the dedicated host are the same processes afterwards) are
    // what counts; F_SETOWN is expected to fail (pid namespace) or the kernel not to deliver.
    for (label, target) in [("parent", "{ppid}"), ("sibling", "{sibling}")] {
        v.push(attack(
            &format!("sigio at {label}"),
            &format!("sigio:{target}"),
            check(|_, out| match (&out.reply, out.crashed.first()) {
                (Some(_), _) => Ok(()),
                (None, Some(c)) if c["syscall"] == "fcntl" => Ok(()),
                _ => Err(format!(
                    "neither a reply nor a death naming fcntl: HTTP {} {}; {:?}",
                    out.status,
                    truncate(&out.error, 300),
                    out.crashed
                )),
            }),
        ));
    }
    for (label, target) in [("parent", "{ppid}"), ("sibling", "{sibling}")] {
        v.push(attack(
            &format!("ptrace {label}"),
            &format!("ptrace:{target}"),
            Expect::Dies("ptrace"),
        ));
        v.push(attack(
            &format!("process_vm_writev {label}"),
            &format!("process_vm_writev:{target}"),
            Expect::Dies("process_vm_writev"),
        ));
    }
    v.push(attack(
        "process_vm_readv parent",
        "process_vm_readv:{ppid}",
        Expect::Dies("process_vm_readv"),
    ));
    v.push(attack(
        "prlimit64 parent",
        "prlimit:{ppid}",
        Expect::Dies("prlimit64"),
    ));

    // The daemon's (and a sibling's) /proc files.
    for (label, data) in [
        ("/proc/ppid/mem rw", "open:rw:/proc/{ppid}/mem"),
        ("/proc/ppid/mem r", "open:r:/proc/{ppid}/mem"),
        ("/proc/ppid/environ", "open:r:/proc/{ppid}/environ"),
        ("/proc/ppid/cwd", "open:dir:/proc/{ppid}/cwd"),
        ("/proc/ppid/root", "open:dir:/proc/{ppid}/root"),
        ("/proc/sibling/environ", "open:r:/proc/{sibling}/environ"),
        ("/proc/sibling/mem", "open:rw:/proc/{sibling}/mem"),
    ] {
        v.push(attack(label, data, Expect::Refused(PROC_DENIED)));
    }
    v.push(attack(
        "/proc/ppid/fd/*",
        "procfd:{ppid}",
        check(|_, out| match (&out.reply, out.rc()) {
            (Some(r), Some(rc)) if rc < 0 && r["opened"] == 0 => Ok(()),
            _ => Err(format!(
                "the daemon's fds were opened: {:?} {}",
                out.reply,
                truncate(&out.error, 200)
            )),
        }),
    ));

    // The data directory and the package folders.
    for (label, data) in [
        ("create in the data dir", "write:{data}/evil"),
        ("append to registry.db", "write:{data}/registry.db"),
        ("append to a code blob", "write:{own_code}"),
        ("create in own package", "write:{own_pkg}/evil"),
        ("create in another's package", "write:{other_pkg}/evil"),
        ("append to another's library", "write:{other_file}"),
        ("unlink another's library", "unlink:{other_file}"),
        ("mkdir in the data dir", "mkdir:{data}/evil-dir"),
        ("chmod another's library", "fchmod:{other_file}"),
        ("chmod registry.db", "fchmod:{data}/registry.db"),
    ] {
        v.push(attack(label, data, Expect::Refused(WRITE_DENIED)));
    }
    // Its own library, then a reload: the folder must be intact and the worker still work.
    v.push(Attack {
        after: Some(Box::new(|run: &Run| {
            let r = run.d.request(
                "PUT",
                &format!("/v1/workers/{}/code", run.w.attacker),
                &[("content-type", "application/octet-stream")],
                &run.w.attacker_pkg,
            );
            if r.status >= 300 {
                return Err(format!("reload: {} {}", r.status, r.text()));
            }
            run.answers(&run.w.attacker)
                .map_err(|e| format!("after the reload the attacker {e}"))
        })),
        ..attack(
            "append to own library + reload",
            "write:{own_file}",
            Expect::Refused(WRITE_DENIED),
        )
    });
    // Outside the data directory: the shared world-writable folders, and a sibling host's
    // private temp folder (every host runs under the same HOST_UID).
    for (label, data) in [
        (
            "create in a sibling host's temp folder",
            "write:{sibling_tmp}/evil",
        ),
        (
            "list a sibling host's temp folder",
            "open:dir:{sibling_tmp}",
        ),
        ("create in /tmp", "write:/tmp/wm-containment-evil"),
        ("create in /dev/shm", "write:/dev/shm/wm-containment-evil"),
    ] {
        let denied = if data.contains("{sibling_tmp}") {
            HIDDEN_OR_DENIED
        } else {
            WRITE_DENIED
        };
        v.push(Attack {
            after: Some(Box::new(|_: &Run| {
                for f in ["/tmp/wm-containment-evil", "/dev/shm/wm-containment-evil"] {
                    let _ = std::fs::remove_file(f);
                }
                Ok(())
            })),
            ..attack(label, data, Expect::Refused(denied))
        });
    }
    // Reading another worker's package is not forbidden by the contract (packages are 0444 so
    // that every host uid can load them): recorded in the table, never failed.
    v.push(attack(
        "read another worker's library (recorded only)",
        "open:r:{other_file}",
        check(|_, _| Ok(())),
    ));
    // Landlock lets hosts read everywhere: a file a sibling keeps in its temp folder is
    // protected by nothing but the uid, which all hosts share.
    v.push(Attack {
        before: Some(Box::new(|run: &Run| {
            let r = run.invoke(&run.w.dedicated, "keep-tmp:secret");
            match Run::reply_json(&r) {
                Some(v) if v["rc"].as_i64().is_some_and(|rc| rc >= 0) => Ok(()),
                _ => Err(format!(
                    "the dedicated neighbour could not keep a file: {}",
                    r.text()
                )),
            }
        })),
        ..attack(
            "read a file in a sibling host's temp folder",
            "open:r:{sibling_tmp}/secret",
            Expect::Refused(PROC_DENIED),
        )
    });
    v.push(attack(
        "write in $TMPDIR (control)",
        "write-tmp",
        Expect::Healthy,
    ));

    // The ring memfd.
    v.push(attack(
        "ftruncate ring",
        "ftruncate-ring",
        Expect::Dies("ftruncate"),
    ));
    v.push(attack("grow ring", "grow-ring", Expect::Dies("fallocate")));
    v.push(attack("dup ring", "dup-ring", Expect::Dies("dup")));
    // The ring (3) and the doorbell eventfd (4): neither closed nor replaced.
    v.push(attack("close bell", "close:4", Expect::Dies("close")));
    v.push(attack("close ring", "close:3", Expect::Dies("close")));
    v.push(attack(
        "close bell, open a file onto 4",
        "close-bell-open",
        Expect::Dies("close"),
    ));
    v.push(attack(
        "dup2 onto bell",
        "dup2-onto:4",
        Expect::Dies("dup2"),
    ));
    v.push(attack(
        "dup3 onto ring",
        "dup3-onto:3",
        Expect::Dies("dup3"),
    ));
    v.push(attack(
        "close_range over 3-4",
        "close-range:3:4",
        Expect::Dies("close_range"),
    ));
    // The bell is written by the host and read only by the supervisor.
    v.push(attack("read bell", "read-bell:read", Expect::Dies("read")));
    v.push(attack(
        "readv bell",
        "read-bell:readv",
        Expect::Dies("readv"),
    ));
    // stdio: 2 is the supervisor's log pipe for the whole host, 0 and 1 hold /dev/null.
    v.push(attack("close stderr", "close:2", Expect::Dies("close")));
    v.push(attack(
        "steal stderr (dup2 a pipe onto 2)",
        "stderr-steal",
        Expect::Dies("dup2"),
    ));
    v.push(attack(
        "dup3 onto stdout",
        "dup3-onto:1",
        Expect::Dies("dup3"),
    ));
    v.push(attack(
        "close_range over stdio",
        "close-range:0:2",
        Expect::Dies("close_range"),
    ));
    v.push(attack(
        "write to stderr (control: reaches the daemon log)",
        &format!("stderr-line:{STDERR_MARK}"),
        check(|run, out| {
            if out.rc().is_none_or(|rc| rc < 0) {
                return Err(format!("the write failed: {:?}", out.reply));
            }
            let want = format!("host-runner: {STDERR_MARK}");
            let deadline = Instant::now() + Duration::from_secs(5);
            while !run.d.log().contains(&want) {
                if Instant::now() > deadline {
                    return Err(format!("'{want}' never reached the daemon log"));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(())
        }),
    ));
    v.push(attack(
        "clear O_NONBLOCK on the bell",
        "setfl-bell",
        Expect::Dies("fcntl"),
    ));
    v.push(attack(
        "reopen ring via /proc/self/fd/3, shrink/grow/seal",
        "reopen-ring",
        check(|_, out| {
            let Some(r) = &out.reply else {
                // A host that dies for it is fine too, as long as a syscall is named.
                return match out.crashed.first() {
                    Some(c) if !c["syscall"].is_null() => Ok(()),
                    _ => Err(format!(
                        "no reply and no syscall named: {} {:?}",
                        truncate(&out.error, 200),
                        out.crashed
                    )),
                };
            };
            let opened = r["open"].as_i64().unwrap_or(-1) >= 0;
            if !opened {
                return Ok(());
            }
            let mut bad = Vec::new();
            if r["rc"].as_i64() != Some(-1) || r["errno"] != EPERM {
                bad.push("shrinking was not refused with EPERM");
            }
            if r["grow"].as_i64() != Some(-1) || r["grow_errno"] != EPERM {
                bad.push("growing was not refused with EPERM");
            }
            if r["add_seal"].as_i64() != Some(-1) {
                bad.push("a seal could be added");
            }
            if bad.is_empty() {
                Ok(())
            } else {
                Err(format!("{}: {r}", bad.join(", ")))
            }
        }),
    ));
    // A hole punched through the region: every page reads as zeros under the supervisor's
    // mapping too (no SIGBUS: the size is sealed). The common checks are what counts; the host
    // may reply or be ended.
    v.push(attack(
        "punch a hole through the ring (reopened fd)",
        "punch-ring",
        check(|_, out| match (&out.reply, out.crashed.first()) {
            (Some(_), _) | (None, Some(_)) => Ok(()),
            _ => Err(format!(
                "neither a reply nor a death report: HTTP {} {}",
                out.status,
                truncate(&out.error, 300)
            )),
        }),
    ));
    for what in ["header", "to-ctl", "from-ctl"] {
        v.push(attack(
            &format!("scribble {what}"),
            &format!("scribble:{what}"),
            Expect::Violation,
        ));
    }
    v.push(attack(
        "scribble crash slots + SIGSEGV",
        "scribble:crash",
        check(|_, out| match out.crashed.first() {
            Some(_) => Ok(()),
            None => Err(format!("no host.crashed: {:?} {}", out.reply, out.error)),
        }),
    ));
    for (label, victim) in [("neighbour", "{neighbour}"), ("dedicated", "{dedicated}")] {
        v.push(attack(
            &format!("crash slots blame the {label}"),
            &format!("scribble:crash-frame:{victim}"),
            check(|run, out| {
                let Some(c) = out.crashed.first() else {
                    return Err(format!("no host.crashed: {:?} {}", out.reply, out.error));
                };
                let culprit = &c["culprit_worker_id"];
                if culprit.is_null() || culprit == run.w.attacker.as_str() {
                    Ok(())
                } else {
                    Err(format!("the crash was pinned on {culprit}: {c}"))
                }
            }),
        ));
    }

    // Forged frames into the from-host ring.
    v.push(attack(
        "forge GatewayCall state.Set as the dedicated neighbour",
        "forge:{forge_state}",
        check(|run, out| {
            let r = run.invoke(&run.w.dedicated, "state-get:forged");
            let got = Run::reply_json(&r);
            let value = got
                .as_ref()
                .and_then(|g| g["response"].as_str().map(str::to_owned))
                .and_then(|s| serde_json::from_str::<Value>(&s).ok())
                .map(|v| v["value"].clone());
            let mut bad = Vec::new();
            if value != Some(Value::Null) {
                bad.push(format!(
                    "the dedicated neighbour's state was written by the attacker's host: {got:?}"
                ));
            }
            if !identity_flagged(run, out) {
                bad.push(format!(
                    "the forged identity was not flagged in /v1/hosts: {:?}",
                    run.hosts()
                ));
            }
            if bad.is_empty() {
                Ok(())
            } else {
                Err(bad.join("\n"))
            }
        }),
    ));
    v.push(attack(
        "forge GatewayCall PublishEvent as the dedicated neighbour",
        "forge:{forge_publish}",
        check(|run, out| {
            let mut bad = Vec::new();
            if let Some(ev) = run.forged.next(Duration::from_millis(500)) {
                bad.push(format!("the forged publish went through: {ev}"));
            }
            if !identity_flagged(run, out) {
                bad.push(format!(
                    "the forged identity was not flagged in /v1/hosts: {:?}",
                    run.hosts()
                ));
            }
            if bad.is_empty() {
                Ok(())
            } else {
                Err(bad.join("\n"))
            }
        }),
    ));
    v.push(attack(
        "forge Log as the dedicated neighbour",
        "forge:{forge_log}",
        check(|run, out| {
            if identity_flagged(run, out) {
                Ok(())
            } else {
                Err(format!(
                    "the forged log identity was not flagged in /v1/hosts: {:?}",
                    run.hosts()
                ))
            }
        }),
    ));
    // A reply for a message that is not in flight cannot be told from a late reply; it must
    // change nothing (the common checks) and publish nothing.
    v.push(attack(
        "forge ProcessResult not in flight",
        "forge:{forge_result}",
        check(|run, _| match run.forged.next(Duration::from_millis(300)) {
            Some(ev) => Err(format!("the forged reply was published: {ev}")),
            None => Ok(()),
        }),
    ));
    v.push(attack(
        "forge a length past the ring",
        "forge-len",
        Expect::Violation,
    ));

    // Processes, namespaces and kernel interfaces.
    v.push(attack("fork", "fork", Expect::Dies("clone")));
    v.push(attack(
        "fork (raw syscall)",
        "fork-raw",
        Expect::Dies("fork"),
    ));
    v.push(attack("vfork", "vfork", Expect::Dies("vfork")));
    v.push(attack(
        "clone CLONE_NEWUSER",
        "clone-newuser",
        Expect::Dies("clone"),
    ));
    v.push(attack("clone3", "clone3", Expect::Refused(&[ENOSYS])));
    v.push(attack("execve", "execve", Expect::Dies("execve")));
    v.push(attack("execveat", "execveat", Expect::Dies("execveat")));
    for sc in [
        "io_uring_setup",
        "userfaultfd",
        "bpf",
        "perf_event_open",
        "keyctl",
        "add_key",
        "unshare",
        "setns",
        "mount",
        "personality",
    ] {
        v.push(attack(sc, sc, Expect::Dies(sc)));
    }
    v.push(attack(
        "rlimit raise",
        "rlimit-raise",
        Expect::Refused(&[EPERM]),
    ));
    v.push(attack(
        "prctl PR_SET_PDEATHSIG",
        "prctl-pdeathsig",
        Expect::Dies("prctl"),
    ));
    v.push(attack(
        "prctl PR_SET_DUMPABLE",
        "prctl-dumpable",
        Expect::Dies("prctl"),
    ));
    v.push(attack("TIOCSTI", "tiocsti", Expect::Dies("ioctl")));

    // Gateway state quotas (before the floods, so the gateway rate limit has its whole burst;
    // the value-size case first, while the worker still has keys to spare).
    v.push(attack(
        "state quota: value size",
        &format!("state-big:{}", STATE_MAX_VALUE_BYTES + 1000),
        check(|run, out| match &out.reply {
            Some(r)
                if r["rc"] == -1
                    && (r["response"]
                        .as_str()
                        .is_some_and(|s| s.contains("STATE_MAX_VALUE_BYTES"))
                        || run.d.log().contains("STATE_MAX_VALUE_BYTES")) =>
            {
                Ok(())
            }
            _ => Err(format!(
                "a value over STATE_MAX_VALUE_BYTES={STATE_MAX_VALUE_BYTES} was not refused naming it: {:?}",
                out.reply
            )),
        }),
    ));

    v.push(attack(
        "state quota: keys",
        "state-fill:1000",
        check(|run, out| match &out.reply {
            Some(r)
                if r["rc"] == -1
                    && r["stored"].as_u64() == Some(STATE_MAX_KEYS as u64)
                    && (r["response"]
                        .as_str()
                        .is_some_and(|s| s.contains("STATE_MAX_KEYS"))
                        || run.d.log().contains("STATE_MAX_KEYS")) =>
            {
                Ok(())
            }
            _ => Err(format!(
                "state Set was not refused at STATE_MAX_KEYS={STATE_MAX_KEYS} naming it: {:?}",
                out.reply
            )),
        }),
    ));
    // Floods.
    let stderr_bytes: u64 = std::env::var("WM_CONTAINMENT_STDERR_BYTES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1 << 30);
    v.push(attack(
        "stderr flood without a newline",
        &format!("stderr-flood:{stderr_bytes}"),
        check(move |_, out| {
            bounded_rss(out)?;
            match out.rc() {
                Some(0) => Ok(()),
                _ => Err(format!(
                    "the host could not write its {stderr_bytes} bytes: {:?} {}",
                    out.reply,
                    truncate(&out.error, 200)
                )),
            }
        }),
    ));
    v.push(attack(
        "log flood",
        "log-flood:200000",
        check(|run, out| {
            bounded_rss(out)?;
            if out.rc() != Some(0) {
                return Err(format!("{:?} {}", out.reply, truncate(&out.error, 200)));
            }
            // Rate-limited: dropped lines are counted (issue 10 item 5).
            let metrics = run.d.get("/metrics").text();
            let counted = metrics.lines().any(|l| {
                let l = l.to_ascii_lowercase();
                !l.starts_with('#')
                    && l.contains("log")
                    && l.contains("drop")
                    && l.split_whitespace()
                        .last()
                        .and_then(|n| n.parse::<f64>().ok())
                        .is_some_and(|n| n > 0.0)
            });
            if counted {
                Ok(())
            } else {
                Err("no dropped-log-lines counter above 0 in /metrics after 200000 lines".into())
            }
        }),
    ));
    v.push(attack(
        "gateway flood",
        "gateway-flood:20000",
        check(|_, out| {
            bounded_rss(out)?;
            match &out.reply {
                Some(r) if r["refused"].as_i64().is_some_and(|n| n > 0) => Ok(()),
                _ => Err(format!(
                    "20000 gateway calls, none refused by a rate limit: {:?} {}",
                    out.reply,
                    truncate(&out.error, 200)
                )),
            }
        }),
    ));
    // Crash attribution a plugin tries to dodge.
    v.push(attack(
        "own SIGSEGV handler, then a fault",
        "own-segv-handler",
        check(|run, out| match out.crashed.first() {
            Some(c)
                if c["signal_name"] == "SIGSEGV"
                    && c["culprit_worker_id"] == run.w.attacker.as_str() =>
            {
                Ok(())
            }
            _ => Err(format!(
                "the fault was not attributed to the attacker: reply {:?}, {} {:?}",
                out.reply,
                truncate(&out.error, 200),
                out.crashed
            )),
        }),
    ));
    for (label, data) in [
        ("SIGSEGV blocked, then a fault", "block-segv"),
        ("alternate stack off, then a stack overflow", "altstack-off"),
    ] {
        v.push(attack(
            label,
            data,
            check(|run, out| match out.crashed.first() {
                Some(c) if c["culprit_worker_id"] == run.w.attacker.as_str() => Ok(()),
                _ => Err(format!(
                    "the crash was not attributed to the attacker: {} {:?}",
                    truncate(&out.error, 200),
                    out.crashed
                )),
            }),
        ));
    }
    v.push(attack("echo (control, last)", "echo", Expect::Healthy));
    v
}

fn bounded_rss(out: &Outcome) -> Result<(), String> {
    let (rss, peak_before, peak) = out.rss;
    if peak > peak_before.max(rss + FLOOD_RSS_SLACK) {
        Err(format!(
            "the daemon's peak RSS rose to {} MiB (RSS before {} MiB, peak before {} MiB)",
            peak >> 20,
            rss >> 20,
            peak_before >> 20
        ))
    } else {
        Ok(())
    }
}

fn dotnet_attacks() -> Vec<Attack> {
    vec![
        attack("echo (control)", "echo", Expect::Healthy),
        attack(
            "ftruncate ring",
            "ftruncate-ring",
            Expect::Dies("ftruncate"),
        ),
        attack(
            "grow ring (ftruncate)",
            "grow-ring",
            Expect::Dies("ftruncate"),
        ),
        // close(4) and dup2(0, 3) by raw syscall number (x86_64).
        attack("close bell", "syscall:3:4", Expect::Dies("close")),
        attack("dup2 onto ring", "syscall:33:0:3", Expect::Dies("dup2")),
        // close(2), dup2(0, 2), read(4, NULL, 8): the filter refuses them before the kernel
        // looks at the buffer.
        attack("close stderr", "syscall:3:2", Expect::Dies("close")),
        attack("dup2 onto stderr", "syscall:33:0:2", Expect::Dies("dup2")),
        attack("read bell", "syscall:0:4:0:8", Expect::Dies("read")),
        attack("kill parent", "kill:{ppid}:9", Expect::Dies("kill")),
        attack("kill sibling", "kill:{sibling}:9", Expect::Dies("kill")),
        attack("kill -1 (signal 0)", "kill:-1:0", Expect::Dies("kill")),
        attack("syscall socket inet", "socket:inet", Expect::Dies("socket")),
        attack(
            "syscall socket inet6",
            "socket:inet6",
            Expect::Dies("socket"),
        ),
        attack("syscall socket unix", "socket:unix", Expect::Dies("socket")),
        // syscall(SYS_ptrace = 101, PTRACE_ATTACH = 16, ppid)
        attack(
            "syscall ptrace parent",
            "syscall:101:16:{ppid}",
            Expect::Dies("ptrace"),
        ),
        attack(
            "create in the data dir",
            "write:{data}/evil",
            Expect::Refused(WRITE_DENIED),
        ),
        attack(
            "append to another's package",
            "write:{other_file}",
            Expect::Refused(WRITE_DENIED),
        ),
        attack(
            "/proc/ppid/environ",
            "open:/proc/{ppid}/environ",
            Expect::Refused(PROC_DENIED),
        ),
        attack("echo (control, last)", "echo", Expect::Healthy),
    ]
}

/// Fills the forged frames, which need the run's worker ids.
fn forged_frames(run: &Run, data: &str) -> String {
    if !data.contains("{forge_") {
        return data.to_owned();
    }
    // Identities not placed on the attacker's host. (The shared neighbour is placed there: a
    // shared host is one trust domain, and what it says for its own workers is believed.)
    let state = Message::GatewayCall(GatewayCall {
        call_id: 0x0F0F_0001,
        worker_id: run.w.dedicated.clone(),
        msg_id: 0,
        service: "state".into(),
        method: "Set".into(),
        payload: br#"{"key":"forged","value":"by the attacker's host"}"#.to_vec(),
    });
    let publish = Message::GatewayCall(GatewayCall {
        call_id: 0x0F0F_0002,
        worker_id: run.w.dedicated.clone(),
        msg_id: 0,
        service: "pubsub".into(),
        method: "PublishEvent".into(),
        payload: br#"{"topic":"containment.forged","data":"forged","metadata":{"ce-type":"containment.forged"}}"#
            .to_vec(),
    });
    let log = Message::Log(Log {
        worker_id: run.w.dedicated.clone(),
        msg_id: 0,
        level: 4,
        message: "forged log line in the dedicated neighbour's name".into(),
    });
    let result = Message::ProcessResult(ProcessResult {
        msg_id: 0x00FF_FFFF_FFFF_0001,
        worker_id: run.w.attacker.clone(),
        status: ResultStatus::NoReply,
        code: 0,
        response: Vec::new(),
        error: String::new(),
        elapsed_ns: 1,
    });
    data.replace("{forge_state}", &frame_hex(&state))
        .replace("{forge_publish}", &frame_hex(&publish))
        .replace("{forge_log}", &frame_hex(&log))
        .replace("{forge_result}", &frame_hex(&result))
}

/// Runs the table of `engine` against a daemon with Landlock on or off; panics at the end
/// with every failed attack.
fn run_suite(engine: Engine, landlock: bool) {
    let started = Instant::now();
    let only: Vec<String> = std::env::var("WM_CONTAINMENT_ONLY")
        .map(|s| s.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    let mut attacks = match engine {
        Engine::Native => native_attacks(),
        Engine::DotNet => dotnet_attacks(),
    };
    if !only.is_empty() {
        attacks.retain(|a| only.iter().any(|w| a.name.contains(w.as_str())));
    }
    let config = format!(
        "{:?}, {}",
        engine,
        if landlock {
            "Landlock as configured"
        } else {
            "SANDBOX_LANDLOCK=off"
        }
    );
    let mut run = Run::start(engine, landlock);
    let sandbox = run.hosts();
    let mut rows: Vec<(String, bool, String, u128)> = Vec::new();
    let mut failed: BTreeMap<String, String> = BTreeMap::new();
    for a in &attacks {
        let t = Instant::now();
        eprintln!("containment [{config}]: {} ...", a.name);
        let data = forged_frames(&run, &a.data);
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| run.attack(a, &data)));
        let ms = t.elapsed().as_millis();
        let (observed, res) = match result {
            Ok((out, res)) => (out.observed(), res),
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "panic".to_owned());
                ("(the check panicked)".to_owned(), Err(msg))
            }
        };
        let ok = res.is_ok();
        if let Err(e) = res {
            failed.insert(a.name.clone(), e);
        }
        rows.push((a.name.clone(), ok, observed, ms));
        // A daemon that died, or whose hosts no longer answer, is replaced so the remaining
        // attacks still run against a clean one.
        let wedged = failed
            .get(&a.name)
            .is_some_and(|e| e.contains("did not answer") || e.contains("the invoke failed"));
        if run.daemon_alive().is_err() || wedged {
            eprintln!(
                "containment [{config}]: '{}' left the daemon dead or its hosts wedged; starting a new one",
                a.name
            );
            let mut old = run;
            let _ = std::panic::catch_unwind(AssertUnwindSafe(|| old.d.kill9()));
            run = Run::start(engine, landlock);
        }
    }
    eprintln!(
        "\ncontainment [{config}]: {} attacks in {:.1} s; hosts: {}",
        rows.len(),
        started.elapsed().as_secs_f64(),
        serde_json::to_string(&sandbox).unwrap_or_default()
    );
    eprintln!("| attack | result | observed | ms |\n|---|---|---|---|");
    for (name, ok, observed, ms) in &rows {
        eprintln!(
            "| {name} | {} | {} | {ms} |",
            if !*ok {
                "FAILED"
            } else if name.contains("(recorded only)") {
                "recorded"
            } else {
                "contained"
            },
            truncate(&observed.replace('|', "/").replace('\n', " "), 240)
        );
    }
    if !failed.is_empty() {
        let mut msg = format!(
            "{} of {} attacks not contained [{config}]:\n",
            failed.len(),
            rows.len()
        );
        for (name, why) in &failed {
            msg.push_str(&format!("\n--- {name}\n{why}\n"));
        }
        panic!("{msg}");
    }
}

#[test]
fn native_attacks_are_contained() {
    run_suite(Engine::Native, true);
}

#[test]
fn native_attacks_are_contained_without_landlock() {
    run_suite(Engine::Native, false);
}

#[test]
fn dotnet_attacks_are_contained() {
    run_suite(Engine::DotNet, true);
}

#[test]
fn dotnet_attacks_are_contained_without_landlock() {
    run_suite(Engine::DotNet, false);
}

/// The crash slots are the host's memory: a host that fills them with another worker's id
/// must not get that worker charged with its crashes, let alone quarantined for a crash loop
/// (neither the neighbour on its own host nor a worker on a dedicated host), and the worker
/// whose crashes they are is the one quarantined.
#[test]
fn forged_crash_slots_do_not_get_another_worker_quarantined() {
    let run = Run::start_with(
        Engine::Native,
        true,
        &[
            ("CRASH_LOOP_MAX_CRASHES", "2"),
            ("CRASH_LOOP_WINDOW_SECONDS", "120"),
        ],
    );
    let mut attacker_quarantined = false;
    for victim in [run.w.dedicated.clone(), run.w.neighbour.clone()] {
        let data = run.fill(&format!("scribble:crash-frame:{victim}"));
        for _ in 0..4 {
            run.invoke_within(&run.w.attacker, &data, ATTACK_TIMEOUT);
            std::thread::sleep(Duration::from_millis(300));
            let w = run.d.get(&format!("/v1/workers/{}", run.w.attacker)).json();
            if w["status"] != "RUNNING" {
                attacker_quarantined = true;
                run.d.post(&format!("/v1/workers/{}/start", run.w.attacker));
            }
        }
        let v = run.d.get(&format!("/v1/workers/{victim}")).json();
        assert_eq!(
            v["status"], "RUNNING",
            "a worker was quarantined for crashes another worker's plugin made: {v:#}"
        );
        run.answers(&victim)
            .unwrap_or_else(|e| panic!("the victim {victim} {e}"));
    }
    assert!(
        attacker_quarantined,
        "8 crashes of the attacker within the window, CRASH_LOOP_MAX_CRASHES=2: it was never quarantined"
    );
}

/// Through the bus, a forbidden syscall is reported everywhere a crash is: the dead letter's
/// `deadlettererror` and the worker's `lifecycle.failed` name the syscall and the worker, as
/// `host.crashed` and the invoke's error do in the tables above.
#[test]
fn a_forbidden_syscall_through_the_bus_is_dead_lettered_and_failed_with_the_syscall_named() {
    let run = Run::start_with(
        Engine::Native,
        true,
        &[
            ("CRASH_LOOP_MAX_CRASHES", "1000"),
            ("WORKER_RETRY_ATTEMPTS", "1"),
        ],
    );
    let dead = Sse::subscribe(&run.d.base_url(), "c.attacker-dead");
    let life = Sse::subscribe(&run.d.base_url(), "workmanager.lifecycle");
    let r = run.d.send_json(
        "POST",
        "/v1/topics/c.attacker/events",
        &json!({"specversion": "1.0", "id": "poison", "source": "urn:test:containment",
                "type": "c.attacker", "datacontenttype": "text/plain", "data": "socket:inet"}),
    );
    assert_eq!(r.status, 202, "publish: {}", r.text());
    let says = format!(
        "worker '{}' called socket(2), which the sandbox forbids",
        run.w.attacker
    );
    let dl = dead.wait_for(Duration::from_secs(30), "the dead letter", |v| {
        v["id"] == "poison"
    });
    assert_eq!(dl["deadletterreason"], "crash", "{dl:#}");
    assert!(
        dl["deadlettererror"]
            .as_str()
            .is_some_and(|e| e.contains(&says)),
        "{dl:#}"
    );
    let failed = life.wait_for(Duration::from_secs(30), "lifecycle.failed", |v| {
        v["type"] == "com.virtufin.workmanager.lifecycle.failed"
            && v["data"]["worker_id"] == run.w.attacker.as_str()
    });
    assert!(
        failed["data"]["error_message"]
            .as_str()
            .is_some_and(|e| e.contains(&says)),
        "{failed:#}"
    );
    run.answers(&run.w.neighbour)
        .unwrap_or_else(|e| panic!("the shared neighbour {e}"));
}
