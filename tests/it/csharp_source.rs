//! The original's .NET worker surface and the C# source engine through the real daemon:
//! a DevKit 2.x `CommandWorker<T>` packaged as the seed shows, a static `ProcessAsync`, and
//! `text/x-csharp` source compiled by Roslyn in a sandboxed .NET host (valid, compile errors,
//! throws, loops, `Environment.FailFast`, the compile cache across a respawn), `/v1/engines`.

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use wm_testkit::daemon::{Daemon, DaemonOptions};
use wm_testkit::dotnet as dn;

const WAIT: Duration = Duration::from_secs(60);

fn daemon() -> Daemon {
    dn::engine_dir();
    let root = dn::dotnet_root();
    Daemon::start(
        DaemonOptions::default()
            .env("DOTNET_ROOT", root.to_str().expect("utf-8 path"))
            .env("TIMEOUT_RECLAIM_GRACE_SECONDS", "1"),
    )
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn create(d: &Daemon, mime: &str, topic: &str, code: &[u8], extra: Value) -> (u16, Value) {
    let mut body = json!({
        "mimeType": mime,
        "topic": topic,
        "codeSource": {"content": b64(code)},
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let r = d.send_json("POST", "/v1/workers", &body);
    (r.status, r.json())
}

fn create_started(d: &Daemon, mime: &str, topic: &str, code: &[u8], extra: Value) -> String {
    let (status, v) = create(d, mime, topic, code, extra);
    assert_eq!(status, 201, "{v:#}\n{}", d.log());
    let id = v["id"].as_str().expect("id").to_string();
    let r = d.post(&format!("/v1/workers/{id}/start"));
    assert!(r.status < 300, "start: {}", r.text());
    id
}

fn invoke(d: &Daemon, id: &str, event_id: &str, ct: &str, data: Value) -> (u16, Value) {
    let r = d.send_json(
        "POST",
        &format!("/v1/workers/{id}/invoke"),
        &json!({"specversion": "1.0", "id": event_id, "source": "urn:test", "type": "test.in",
                "datacontenttype": ct, "data": data, "correlationid": format!("corr-{event_id}")}),
    );
    let v = if r.text().is_empty() {
        Value::Null
    } else {
        r.json()
    };
    (r.status, v)
}

/// The reply's data as JSON (the API may give JSON payloads as a value or as text).
fn data_json(reply: &Value) -> Value {
    match &reply["data"] {
        Value::String(s) => serde_json::from_str(s).unwrap_or(Value::String(s.clone())),
        v => v.clone(),
    }
}

fn source(name: &str) -> Vec<u8> {
    let p = wm_testkit::fixtures_src("csharp").join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

fn host_pid_of(d: &Daemon, worker: &str) -> Option<i64> {
    d.get("/v1/hosts").json()["hosts"]
        .as_array()?
        .iter()
        .find(|h| {
            h["workers"]
                .as_array()
                .is_some_and(|w| w.iter().any(|x| x == worker))
        })
        .and_then(|h| h["pid"].as_i64())
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn a_worker_written_from_the_original_docs_runs_through_the_daemon() {
    let d = daemon();
    let order = dn::worker_nupkg(
        "OrderWorker",
        &dn::build_library_v2("OrderWorker", &["OrderWorker.cs"], &[]),
        &[],
    );
    let id = create_started(
        &d,
        "application/x-dotnet-dll",
        "orders.in",
        &order,
        json!({}),
    );
    let (status, reply) = invoke(
        &d,
        &id,
        "o1",
        "application/json",
        json!({"command": "create", "item": "tea"}),
    );
    assert_eq!(status, 200, "{reply:#}");
    assert_eq!(reply["type"], "orders.response");
    assert_eq!(reply["source"], "urn:virtufin:orders");
    assert_eq!(reply["correlationid"], "corr-o1");
    assert!(
        reply["time"].is_string(),
        "BuildResponse sets time: {reply:#}"
    );
    assert_eq!(
        data_json(&reply),
        json!({"command": "create", "success": true, "id": "order-tea-1", "message": "created"})
    );
    // Each documented error text comes back as an error envelope, correlationid copied.
    for (n, (data, ct, message)) in [
        (
            json!({"command": "dance"}),
            "application/json",
            "Unknown command: dance",
        ),
        (
            json!({"item": "tea"}),
            "application/json",
            "Missing 'command' field",
        ),
        (
            json!("{not json"),
            "text/plain",
            "Failed to parse command JSON",
        ),
        (
            json!({"command": "fail"}),
            "application/json",
            "Internal error: the order store is down",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let eid = format!("e{n}");
        let (status, reply) = invoke(&d, &id, &eid, ct, data);
        assert_eq!(status, 200, "{reply:#}");
        assert_eq!(reply["correlationid"], format!("corr-{eid}"));
        assert_eq!(
            data_json(&reply),
            json!({"command": "error", "success": false, "message": message})
        );
    }

    // A static ProcessAsync (no IWorker) is a worker too.
    let stat = dn::worker_nupkg(
        "StaticEcho",
        &dn::build_library_v2("StaticEcho", &["StaticEcho.cs"], &[]),
        &[],
    );
    let sid = create_started(
        &d,
        "application/x-dotnet-dll",
        "static.in",
        &stat,
        json!({}),
    );
    let (status, reply) = invoke(&d, &sid, "s1", "text/plain", json!("ping"));
    assert_eq!(status, 200, "{reply:#}");
    assert_eq!(reply["data"], "static ping #1");
    assert_eq!(reply["correlationid"], "corr-s1");

    // A worker built against the 1.x DevKit (its own CloudEvent type) still runs beside them.
    let old = dn::worker_nupkg("Echo", &dn::build_library("Echo", &["Echo.cs"], &[]), &[]);
    let oid = create_started(&d, "application/x-dotnet-dll", "old.in", &old, json!({}));
    let (status, reply) = invoke(&d, &oid, "x1", "text/plain", json!("old hello"));
    assert_eq!(status, 200, "{reply:#}");
    assert_eq!(reply["type"], "echo.reply");
    assert_eq!(reply["data"], "old hello");
}

#[test]
fn csharp_source_compiles_in_a_host_reports_errors_caches_and_is_contained() {
    let d = daemon();
    let engines = d.get("/v1/engines").json();
    let cs = engines["engines"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["mimeType"] == "text/x-csharp"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(cs["available"], true, "{engines:#}");
    assert_eq!(cs["language"], "C#", "{engines:#}");

    // Three compile errors: the create is refused with every diagnostic and its position.
    let (status, v) = create(
        &d,
        "text/x-csharp",
        "cs.bad",
        &source("ThreeErrors.cs"),
        json!({}),
    );
    assert_eq!(status, 422, "{v:#}");
    assert_eq!(v["error"]["code"], "compile_failed", "{v:#}\n{}", d.log());
    let details: Vec<&str> = v["error"]["details"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert_eq!(details.len(), 3, "{v:#}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("the C# source does not compile (3 errors): error CS0103: "),
        "{v:#}"
    );
    assert!(
        details.iter().all(|d| message.contains(d)),
        "the message lists them too: {v:#}"
    );
    assert_eq!(
        details[0],
        "error CS0103: The name 'undefinedName' does not exist in the current context (line 8, col 17)"
    );
    assert!(
        details[1].starts_with("error CS0029: ") && details[1].ends_with("(line 9, col 17)"),
        "{v:#}"
    );
    assert!(
        details[2].starts_with("error CS1061: ") && details[2].ends_with("(line 10, col 15)"),
        "{v:#}"
    );
    assert!(
        d.get("/v1/workers").json()["workers"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "nothing registered"
    );
    // No entry point: refused too.
    let (status, v) = create(
        &d,
        "text/x-csharp",
        "cs.none",
        b"public class Nothing { public int X; }",
        json!({}),
    );
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (422, Some("load_failed")),
        "{v:#}\n{}",
        d.log()
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("No Process or ProcessAsync method"),
        "{v:#}"
    );

    // A valid source: compiled once when created (the check), then loaded from the cache.
    let greeter_src = source("Greeter.cs");
    let sha = wm_supervisor::codestore::sha256_hex(&greeter_src);
    let greeter = create_started(&d, "text/x-csharp", "cs.greet", &greeter_src, json!({}));
    let cache_dir = d.data_dir().join("csharp").join(&sha);
    let images: Vec<String> = std::fs::read_dir(&cache_dir)
        .map(|r| {
            r.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.ends_with(".dll"))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        images.len(),
        1,
        "one cached image in {}: {images:?}",
        cache_dir.display()
    );
    assert!(images[0].starts_with(&format!("{sha}-")), "{images:?}");
    let (status, reply) = invoke(&d, &greeter, "g1", "text/plain", json!("world"));
    assert_eq!(status, 200, "{reply:#}");
    assert_eq!(
        (reply["type"].as_str(), reply["data"].as_str()),
        (Some("greeter.reply"), Some("hello world #1"))
    );
    assert_eq!(reply["correlationid"], "corr-g1");
    let log = d.log();
    let compiles = log
        .matches(&format!("C# source {}: compiled in", &sha[..12]))
        .count();
    assert_eq!(compiles, 1, "compiled once, by the check at create:\n{log}");
    assert!(
        log.lines()
            .any(|l| l.contains(&greeter) && l.contains("compiled image from the cache")),
        "the start loaded the cached image:\n{log}"
    );

    // A reload with code that does not compile is refused the same way; the old code runs on.
    let r = d.send_json(
        "POST",
        &format!("/v1/workers/{greeter}/code"),
        &json!({"codeSource": {"content": b64(&source("ThreeErrors.cs"))}}),
    );
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "compile_failed", "{}", r.text());
    let (status, reply) = invoke(&d, &greeter, "g1b", "text/plain", json!("still"));
    assert_eq!(
        (status, reply["data"].as_str()),
        (200, Some("hello still #2")),
        "{reply:#}"
    );

    // Throws: a worker error with the exception's text; the worker stays usable.
    let thrower = create_started(
        &d,
        "text/x-csharp",
        "cs.throw",
        &source("Throws.cs"),
        json!({}),
    );
    let (status, v) = invoke(&d, &thrower, "t1", "text/plain", json!("x"));
    assert_eq!(status, 502, "{v:#}");
    assert_eq!(v["error"]["errorType"], "worker_error", "{v:#}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("source worker refuses t1"),
        "{v:#}"
    );

    // Environment.FailFast: its own host dies (SIGABRT), is respawned, reloads the cached
    // image, and the worker answers again; the shared host of the others is untouched.
    let crasher = create_started(
        &d,
        "text/x-csharp",
        "cs.crash",
        &source("FailFast.cs"),
        json!({"isolation": "dedicated"}),
    );
    let shared_pid = host_pid_of(&d, &greeter).expect("greeter's host");
    let crash_pid = host_pid_of(&d, &crasher).expect("crasher's host");
    assert_ne!(shared_pid, crash_pid);
    let (status, v) = invoke(&d, &crasher, "die-1", "text/plain", json!("x"));
    assert_eq!(status, 502, "{v:#}");
    assert_eq!(v["error"]["errorType"], "crash", "{v:#}");
    wait_until("the crasher's host to be respawned", || {
        host_pid_of(&d, &crasher).is_some_and(|p| p != crash_pid)
    });
    let (status, reply) = invoke(&d, &crasher, "x2", "text/plain", json!("x"));
    assert_eq!(status, 200, "{reply:#}");
    assert_eq!(reply["id"], "alive-x2");
    let crasher_cache_loads = d
        .log()
        .lines()
        .filter(|l| l.contains(&crasher) && l.contains("compiled image from the cache"))
        .count();
    assert!(
        crasher_cache_loads >= 2,
        "start and respawn both used the cache:\n{}",
        d.log()
    );
    assert_eq!(
        host_pid_of(&d, &greeter),
        Some(shared_pid),
        "the shared host lived on"
    );
    let (status, reply) = invoke(&d, &greeter, "g2", "text/plain", json!("again"));
    assert_eq!(
        (status, reply["data"].as_str()),
        (200, Some("hello again #3")),
        "{reply:#}"
    );

    // An endless loop: the call times out, the worker goes to ERROR, its host is reclaimed;
    // start brings it back.
    let spinner = create_started(
        &d,
        "text/x-csharp",
        "cs.spin",
        &source("Loops.cs"),
        json!({"isolation": "dedicated", "messageTimeoutSeconds": 1}),
    );
    let spin_pid = host_pid_of(&d, &spinner).expect("spinner's host");
    let (status, v) = invoke(&d, &spinner, "spin-1", "text/plain", json!("x"));
    assert_eq!(status, 502, "{v:#}");
    assert_eq!(v["error"]["errorType"], "timeout", "{v:#}");
    wait_until("the spinner to be in ERROR", || {
        d.get(&format!("/v1/workers/{spinner}")).json()["status"] == "ERROR"
    });
    wait_until("the spinning host to be reclaimed", || {
        !std::path::Path::new(&format!("/proc/{spin_pid}")).exists()
    });
    let r = d.post(&format!("/v1/workers/{spinner}/start"));
    assert!(r.status < 300, "start after the timeout: {}", r.text());
    let (status, reply) = invoke(&d, &spinner, "fine-2", "text/plain", json!("x"));
    assert_eq!(
        (status, reply["id"].as_str()),
        (200, Some("ok-fine-2")),
        "{reply:#}"
    );
}
