//! Per-worker resource limits (issue 13, item 4: "settings per engine and per worker"), end to
//! end: a worker's `limits.memoryBytes` gives it a host of its own spawned with that limit
//! (`RLIMIT_AS` native, the GC heap hard limit .NET), read back from `/proc/<pid>/limits`,
//! enforced on a plugin that allocates past it, kept across respawns, reloads and daemon
//! restarts, while a worker without limits in the same daemon runs on as before.

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use wm_testkit::daemon::{Daemon, DaemonOptions};
use wm_testkit::dotnet as dn;
use wm_testkit::native::{Build, Lang};
use wm_testkit::nupkg;

const NATIVE: &str = "application/x-native-dll";
const DOTNET: &str = "application/x-dotnet-dll";
const WAIT: Duration = Duration::from_secs(60);

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn chaos_package() -> Vec<u8> {
    let so = Build::plugin("chaos", Lang::C, &["chaos.c"]).build();
    nupkg::native(
        "Chaos.Worker",
        "chaos",
        &so,
        "<virtufinLibrary>chaos</virtufinLibrary>",
    )
}

/// POST /v1/workers with `extra` fields; returns the response.
fn create(d: &Daemon, mime: &str, pkg: &[u8], extra: Value) -> wm_testkit::daemon::http::Response {
    let mut body = json!({
        "mimeType": mime,
        "topic": "limits.in",
        "codeSource": {"content": b64(pkg)},
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    d.send_json("POST", "/v1/workers", &body)
}

fn started(d: &Daemon, mime: &str, pkg: &[u8], extra: Value) -> String {
    let r = create(d, mime, pkg, extra);
    assert_eq!(r.status, 201, "create: {}", r.text());
    let id = r.json()["id"].as_str().expect("worker id").to_string();
    let r = d.post(&format!("/v1/workers/{id}/start"));
    assert!(r.status < 300, "start: {} {}", r.status, r.text());
    id
}

/// Invokes `w` with `data`: (status, reply data or the error body).
fn invoke(d: &Daemon, w: &str, data: &str) -> (u16, Value) {
    let ev = json!({"specversion": "1.0", "id": "l1", "source": "urn:test", "type": "t",
                    "datacontenttype": "text/plain", "data": data});
    let r = d.send_json("POST", &format!("/v1/workers/{w}/invoke"), &ev);
    let v = if r.status == 200 {
        r.json()["data"].clone()
    } else {
        serde_json::from_str(&r.text()).unwrap_or(Value::Null)
    };
    (r.status, v)
}

fn host_pid(d: &Daemon, w: &str) -> Option<u32> {
    d.get(&format!("/v1/workers/{w}")).json()["hostPid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
}

/// The host of `w` once it is one other than `not`.
fn wait_host(d: &Daemon, w: &str, not: Option<u32>) -> u32 {
    let t = Instant::now();
    loop {
        if let Some(p) = host_pid(d, w).filter(|p| Some(*p) != not) {
            return p;
        }
        assert!(t.elapsed() < WAIT, "worker {w} got no new host");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The soft "Max address space" of a process, from `/proc/<pid>/limits` (`None`: unlimited).
fn address_space_limit(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/limits: {e}"));
    let line = text
        .lines()
        .find(|l| l.starts_with("Max address space"))
        .expect("a Max address space line");
    let soft = line
        .trim_start_matches("Max address space")
        .split_whitespace()
        .next()
        .expect("a soft limit");
    soft.parse().ok()
}

fn peak_rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

fn is_400(r: &wm_testkit::daemon::http::Response, needle: &str) {
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.error_code(), "invalid_argument", "{}", r.text());
    assert!(r.text().contains(needle), "names {needle}: {}", r.text());
}

#[test]
fn a_native_workers_memory_limit_is_its_own_hosts_rlimit_as_and_leaves_its_neighbours_alone() {
    const LIMIT: u64 = 256 << 20;
    let data = tempfile::tempdir().expect("tempdir");
    let opts = || {
        DaemonOptions::default()
            .data_dir(&data.path().join("data"))
            .env("HOST_RESPAWN_BACKOFF_MS", "1")
    };
    let d = Daemon::start(opts());
    let pkg = chaos_package();

    // Out of range for the engine, shared with limits, unknown limit names: refused.
    is_400(
        &create(
            &d,
            NATIVE,
            &pkg,
            json!({"limits": {"memoryBytes": 1 << 20}}),
        ),
        "67108864-1099511627776",
    );
    is_400(
        &create(
            &d,
            NATIVE,
            &pkg,
            json!({"limits": {"memoryBytes": LIMIT}, "isolation": "shared"}),
        ),
        "isolation 'shared' cannot go with limits",
    );
    let r = create(&d, NATIVE, &pkg, json!({"limits": {"memory": LIMIT}}));
    assert!(
        (400..500).contains(&r.status),
        "an unknown limit is refused: {}",
        r.text()
    );

    let tight = started(&d, NATIVE, &pkg, json!({"limits": {"memoryBytes": LIMIT}}));
    let free = started(&d, NATIVE, &pkg, json!({}));
    let w = d.get(&format!("/v1/workers/{tight}")).json();
    assert_eq!(w["limits"]["memoryBytes"], LIMIT, "{w:#}");
    assert_eq!(w["isolation"], "dedicated", "limits give a host of its own");
    assert_eq!(
        d.get(&format!("/v1/workers/{free}")).json()["limits"],
        Value::Null
    );

    let (tight_pid, free_pid) = (wait_host(&d, &tight, None), wait_host(&d, &free, None));
    assert_ne!(tight_pid, free_pid);
    assert_eq!(address_space_limit(tight_pid), Some(LIMIT));
    assert_eq!(
        address_space_limit(free_pid),
        None,
        "the neighbour's host keeps the engine's (unset) limit"
    );
    let hosts = d.get("/v1/hosts").json();
    let of = |pid: u32| {
        hosts["hosts"]
            .as_array()
            .and_then(|a| a.iter().find(|h| h["pid"] == pid).cloned())
            .unwrap_or_else(|| panic!("host {pid} in {hosts:#}"))
    };
    assert_eq!(of(tight_pid)["limits"]["memoryBytes"], LIMIT);
    assert_eq!(of(tight_pid)["isolation"], "dedicated");
    assert!(of(free_pid).get("limits").is_none(), "{hosts:#}");

    // The plugin mallocs until malloc fails at the limit, then answers (chaos.c "oom"): the
    // documented outcome of RLIMIT_AS for a plugin that checks malloc. Its host lives on and
    // never held much more than the limit.
    assert_eq!(invoke(&d, &tight, "oom"), (200, json!("oom-survived")));
    assert_eq!(host_pid(&d, &tight), Some(tight_pid));
    let peak = peak_rss_bytes(tight_pid);
    assert!(
        peak > 0 && peak <= LIMIT,
        "peak RSS {peak} over the {LIMIT} limit"
    );
    assert_eq!(invoke(&d, &free, "neighbour"), (200, json!("neighbour")));
    assert_eq!(
        host_pid(&d, &free),
        Some(free_pid),
        "the neighbour's host never died"
    );

    // A respawn keeps the limit.
    // SAFETY: kill(2) has no memory preconditions; the pid is this daemon's live host (the
    // daemon holds its pidfd, so it is not reaped and reused before the daemon sees it die).
    unsafe { libc::kill(tight_pid as libc::pid_t, libc::SIGKILL) };
    let respawned = wait_host(&d, &tight, Some(tight_pid));
    assert_eq!(address_space_limit(respawned), Some(LIMIT));
    let t = Instant::now();
    while invoke(&d, &tight, "back").0 != 200 {
        assert!(t.elapsed() < WAIT, "no answer after the respawn");
        std::thread::sleep(Duration::from_millis(20));
    }

    // A reload with other limits moves the worker to a host spawned with them; `{}` gives the
    // engine's settings back (the worker stays dedicated).
    let reload = |limits: Value| {
        let r = d.send_json(
            "POST",
            &format!("/v1/workers/{tight}/code"),
            &json!({"codeSource": {"content": b64(&pkg)}, "limits": limits}),
        );
        assert_eq!(r.status, 200, "reload: {}", r.text());
        r.json()
    };
    let w = reload(json!({"memoryBytes": 128u64 << 20}));
    assert_eq!(w["limits"]["memoryBytes"], 128u64 << 20, "{w:#}");
    let moved = wait_host(&d, &tight, Some(respawned));
    assert_eq!(address_space_limit(moved), Some(128 << 20));
    assert_eq!(invoke(&d, &tight, "moved"), (200, json!("moved")));
    let w = reload(json!({}));
    assert_eq!(w["limits"], Value::Null, "{w:#}");
    assert_eq!(w["isolation"], "dedicated");
    let unlimited = wait_host(&d, &tight, Some(moved));
    assert_eq!(address_space_limit(unlimited), None);
    let w = reload(json!({"memoryBytes": LIMIT}));
    assert_eq!(w["limits"]["memoryBytes"], LIMIT);

    // The registry keeps them: a new daemon on the same data directory starts the worker with
    // its limit.
    drop(d);
    let d = Daemon::start(opts());
    let w = d.get(&format!("/v1/workers/{tight}")).json();
    assert_eq!(w["limits"]["memoryBytes"], LIMIT, "{w:#}");
    let r = d.post(&format!("/v1/workers/{tight}/start"));
    assert!(r.status < 300, "start: {}", r.text());
    assert_eq!(
        address_space_limit(wait_host(&d, &tight, None)),
        Some(LIMIT)
    );
}

/// A .NET worker's `memoryBytes` is its host's GC heap hard limit, not RLIMIT_AS (which would
/// stop CoreCLR): the worker loads and answers under 64 MiB, an allocation past it is an
/// OutOfMemoryException (a `worker_error`), and the host lives on.
#[test]
fn a_dotnet_workers_memory_limit_is_its_hosts_gc_heap_hard_limit() {
    const LIMIT: u64 = 64 << 20;
    dn::engine_dir();
    let root = dn::dotnet_root();
    let d = Daemon::start(
        DaemonOptions::default().env("DOTNET_ROOT", root.to_str().expect("utf-8 path")),
    );
    let dll = dn::build_library("Hog", &["Hog.cs"], &[]);
    let pkg = dn::worker_nupkg("Hog", &dll, &[]);
    is_400(
        &create(
            &d,
            DOTNET,
            &pkg,
            json!({"limits": {"memoryBytes": 8 << 20}}),
        ),
        "16777216-1099511627776",
    );
    let hog = started(&d, DOTNET, &pkg, json!({"limits": {"memoryBytes": LIMIT}}));
    let pid = wait_host(&d, &hog, None);
    assert_eq!(
        address_space_limit(pid),
        None,
        "a .NET host never gets RLIMIT_AS"
    );
    let (status, seen) = invoke(&d, &hog, "limit");
    assert_eq!(status, 200, "{seen}");
    let seen: u64 = seen
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("a number");
    assert!(
        seen > 0 && seen <= LIMIT,
        "the GC sees {seen} bytes, not the {LIMIT}-byte limit"
    );
    let (status, err) = invoke(&d, &hog, "alloc:256");
    assert_eq!(status, 502, "{err:#}");
    assert_eq!(err["error"]["errorType"], "worker_error", "{err:#}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("OutOfMemory"),
        "{err:#}"
    );
    assert_eq!(invoke(&d, &hog, "alloc:8"), (200, json!("allocated 8 MiB")));
    assert_eq!(host_pid(&d, &hog), Some(pid), "the host lived on");
}
