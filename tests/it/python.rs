//! Python workers (`text/x-python`) through the real daemon: source deployed over REST,
//! checked by the import policy, run by a python host-runner (embedded CPython), reached by
//! invoke and through the bus; failures contained like a native worker's.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use wm_testkit::daemon::{Daemon, DaemonOptions};
use wm_testkit::sse::Sse;

const WAIT: Duration = Duration::from_secs(60);

/// POST /v1/workers with Python source; returns the response.
fn create(
    d: &Daemon,
    topic: &str,
    source: &str,
    extra: Value,
) -> wm_testkit::daemon::http::Response {
    let mut body = json!({
        "mimeType": "text/x-python",
        "topic": topic,
        "codeSource": {"content": base64::engine::general_purpose::STANDARD.encode(source)},
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    d.send_json("POST", "/v1/workers", &body)
}

/// Creates and starts a Python worker; returns its id.
fn worker(d: &Daemon, topic: &str, source: &str, extra: Value) -> String {
    let r = create(d, topic, source, extra);
    assert_eq!(r.status, 201, "create: {}", r.text());
    let id = r.json()["id"].as_str().expect("worker id").to_string();
    let r = d.post(&format!("/v1/workers/{id}/start"));
    assert!(r.status < 300, "start: {} {}", r.status, r.text());
    id
}

fn invoke(d: &Daemon, id: &str, event: Value) -> wm_testkit::daemon::http::Response {
    d.send_json("POST", &format!("/v1/workers/{id}/invoke"), &event)
}

fn event(id: &str, data: Value) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "urn:test", "type": "py.in",
           "datacontenttype": "application/json", "data": data})
}

const ECHO: &str = r#"
import json

def Process(event):
    # Everything the worker saw, so the test can check the event dict.
    return {
        "type": "py.reply",
        "data": {"seen": {k: v for k, v in event.items() if k != "data"},
                 "data": event["data"], "datatype": type(event["data"]).__name__},
    }
"#;

const CONTRACT: &str = r#"
import virtufin

def Process(event):
    kind = event.get("subject")
    if kind == "none":
        return None
    if kind == "raise":
        raise ValueError("boom " + event["id"])
    if kind == "bare":
        return {"data": "no type or source"}
    if kind == "text":
        return {"type": "py.text", "data": event["data"]}
    if kind == "sleep":
        import time
        time.sleep(0.6)  # releases the GIL
        return {"type": "py.slept", "data": event["id"]}
    if kind == "dynamic-import":
        import importlib
        importlib.import_module("o" + "s")
    if kind == "builtin-import":
        __import__("sub" + "process")
    if kind == "recursion":
        def f(n):
            return f(n + 1) + 1
        return {"type": "never", "data": f(0)}
    if kind == "memory":
        hog = []
        while True:
            hog.append(bytearray(64 << 20))
    if kind == "gateway":
        virtufin.log("info", "python worker " + event["id"] + " says hello")
        virtufin.gateway_call("state", "Set", {"key": "k", "value": event["data"]["v"]})
        got = virtufin.gateway_call("state", "Get", {"key": "k"})
        virtufin.gateway_call("pubsub", "PublishEvent", {
            "topic": "py.published", "data": '{"from":"python"}',
            "metadata": {"ce-type": "py.published", "ce-source": "urn:py", "ce-id": "pub-" + event["id"]}})
        try:
            virtufin.gateway_call("nosuch", "Method", {})
            unknown = None
        except virtufin.GatewayError as e:
            unknown = e.status
        return {"type": "py.gw", "data": {"state": got, "unknown_status": unknown}}
    return {"type": "py.other", "data": kind}
"#;

const ASYNC: &str = r#"
import asyncio

async def helper(x):
    await asyncio.sleep(0.01)
    return x * 2

async def Process(event):
    return {"type": "py.async", "data": {"doubled": await helper(event["data"]["n"])}}
"#;

#[test]
fn python_workers_follow_the_documented_contract() {
    let d = Daemon::start(DaemonOptions::default().env("WORKER_RETRY_ATTEMPTS", "0"));
    let engines = d.get("/v1/engines").json();
    let py = engines["engines"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["mimeType"] == "text/x-python"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(py["available"], true, "{engines:#}");
    assert_eq!(py["language"], "Python", "{engines:#}");

    // Static import policy: each blocked module named with its line; nothing stored.
    let r = create(
        &d,
        "py.bad",
        "import json\n\nimport subprocess\nfrom os import path\ndef Process(e):\n    return None\n",
        json!({}),
    );
    assert_eq!(r.status, 422, "{}", r.text());
    let text = r.text();
    assert!(
        text.contains("ImportError: subprocess is not allowed (line 3)")
            && text.contains("ImportError: os is not allowed (line 4)"),
        "{text}"
    );
    let r = create(&d, "py.bad", "def handle(e):\n    pass\n", json!({}));
    assert_eq!(r.status, 422, "no Process: {}", r.text());

    // Echo with JSON data: the event dict carries the attributes and extensions.
    let echo = worker(&d, "py.echo", ECHO, json!({}));
    let mut ev = event("e1", json!({"a": [1, 2, {"b": null}]}));
    ev["correlationid"] = json!("corr-7");
    ev["subject"] = json!("subj");
    let r = invoke(&d, &echo, ev);
    assert_eq!(r.status, 200, "{}", r.text());
    let reply = r.json();
    assert_eq!(reply["type"], "py.reply", "{reply:#}");
    assert_eq!(reply["data"]["data"], json!({"a": [1, 2, {"b": null}]}));
    assert_eq!(reply["data"]["datatype"], "dict");
    let seen = &reply["data"]["seen"];
    assert_eq!(seen["id"], "e1", "{seen:#}");
    assert_eq!(seen["source"], "urn:test");
    assert_eq!(seen["specversion"], "1.0");
    assert_eq!(seen["subject"], "subj");
    assert_eq!(seen["correlationid"], "corr-7");
    assert_eq!(reply["correlationid"], "corr-7", "correlation carried over");
    // Missing type/source are filled.
    assert!(
        reply["source"]
            .as_str()
            .is_some_and(|s| s.contains(echo.as_str())),
        "{reply:#}"
    );

    // Through the bus.
    let replies = Sse::subscribe(&d.base_url(), "py.reply");
    let r = d.send_json(
        "POST",
        "/v1/topics/py.echo/events",
        &event("b1", json!({"via": "bus"})),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    replies.wait_for(WAIT, "the python worker's reply", |v| {
        v["data"]["data"]["via"] == "bus"
    });

    let c = worker(&d, "py.contract", CONTRACT, json!({"maxConcurrency": 2}));
    let call = |subject: &str, data: Value| {
        let mut ev = event(&format!("{subject}-1"), data);
        ev["subject"] = json!(subject);
        invoke(&d, &c, ev)
    };
    // No reply.
    assert_eq!(call("none", json!(null)).status, 204);
    // Text data in, text data out.
    let mut ev = event("t-1", json!(null));
    ev["subject"] = json!("text");
    ev["datacontenttype"] = json!("text/plain");
    ev["data"] = json!("plain words");
    let r = invoke(&d, &c, ev);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"], "plain words");
    assert_eq!(r.json()["datacontenttype"], "text/plain");
    // Missing type and source are filled as documented.
    let r = call("bare", json!(null));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["type"], "unknown");
    assert_eq!(r.json()["source"], format!("urn:virtufin:worker:{c}"));

    // An exception is a worker_error with its traceback, in the reply and the lifecycle event.
    let life = Sse::subscribe(&d.base_url(), "workmanager.lifecycle");
    let r = call("raise", json!(null));
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(
        r.json()["error"]["errorType"],
        "worker_error",
        "{}",
        r.text()
    );
    let msg = r.json()["error"]["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        msg.contains("Traceback (most recent call last)")
            && msg.contains("line 9, in Process")
            && msg.contains("ValueError: boom raise-1"),
        "{msg}"
    );
    let publish = |id: &str, subject: &str| {
        let mut ev = event(id, json!(null));
        ev["subject"] = json!(subject);
        let r = d.send_json("POST", "/v1/topics/py.contract/events", &ev);
        assert_eq!(r.status, 202, "{}", r.text());
    };
    publish("raise-bus", "raise");
    let failed = life.wait_for(WAIT, "the worker_error lifecycle event", |v| {
        v["data"]["worker_id"] == c.as_str() && v["data"]["error_type"] == "worker_error"
    });
    assert!(
        failed["data"]["error_message"]
            .as_str()
            .is_some_and(|m| m.contains("Traceback") && m.contains("ValueError: boom raise-bus")),
        "{failed:#}"
    );

    // Run-time import hook: names computed at run time are refused too.
    for (subject, module) in [("dynamic-import", "os"), ("builtin-import", "subprocess")] {
        let r = call(subject, json!(null));
        assert_eq!(r.status, 502, "{}", r.text());
        let msg = r.json()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .to_string();
        assert!(
            msg.contains(&format!("ImportError: {module} is not allowed")),
            "{subject}: {msg}"
        );
    }

    // A recursion bomb is a RecursionError, and the host serves on.
    let r = call("recursion", json!(null));
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("RecursionError"), "{}", r.text());

    // log and gateway_call: state and pubsub.
    let published = Sse::subscribe(&d.base_url(), "py.published");
    let r = call("gateway", json!({"v": "stored by python"}));
    assert_eq!(r.status, 200, "{}", r.text());
    let data = &r.json()["data"];
    assert_eq!(data["state"]["value"], "stored by python", "{data:#}");
    assert_eq!(data["unknown_status"], 2, "unknown service: {data:#}");
    published.wait_for(WAIT, "the event published by gateway_call", |v| {
        v["id"] == "pub-gateway-1" && v["data"]["from"] == "python"
    });
    let deadline = std::time::Instant::now() + WAIT;
    while !d.log().contains("says hello") {
        assert!(
            std::time::Instant::now() < deadline,
            "virtufin.log line missing from the daemon log"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // maxConcurrency 2: two calls that release the GIL (time.sleep) overlap.
    let t0 = std::time::Instant::now();
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| call("sleep", json!(null)).status);
        let b = s.spawn(|| call("sleep", json!(null)).status);
        (a.join().unwrap_or(0), b.join().unwrap_or(0))
    });
    assert_eq!((a, b), (200, 200));
    assert!(
        t0.elapsed() < Duration::from_millis(1100),
        "two 0.6 s sleeps took {:?}: they did not overlap",
        t0.elapsed()
    );

    // async def Process is awaited.
    let a = worker(&d, "py.async", ASYNC, json!({}));
    let r = invoke(&d, &a, event("a-1", json!({"n": 21})));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"]["doubled"], 42);
    // Twice: the worker thread's event loop is reused.
    let r = invoke(&d, &a, event("a-2", json!({"n": 2})));
    assert_eq!(r.json()["data"]["doubled"], 4, "{}", r.text());

    // Hot reload: the new version replaces the old one in the running host; its module stays
    // importable by name (pickle looks classes up in sys.modules) after the old one unloads.
    let v2 = "import dataclasses, pickle\n\n@dataclasses.dataclass\nclass Box:\n    n: int\n\n\
              def Process(event):\n    return {\"type\": \"py.v2\", \
              \"data\": pickle.loads(pickle.dumps(Box(7))).n}\n";
    let r = d.send_json(
        "POST",
        &format!("/v1/workers/{echo}/code"),
        &json!({"codeSource": {"content": base64::engine::general_purpose::STANDARD.encode(v2)}}),
    );
    assert_eq!(r.status, 200, "reload: {}", r.text());
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let r = invoke(&d, &echo, event("v2-1", json!(null)));
        assert_eq!(r.status, 200, "{}", r.text());
        if r.json()["type"] == "py.v2" {
            assert_eq!(r.json()["data"], 7);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "reload never took: {}",
            r.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    let r = invoke(&d, &echo, event("v2-2", json!(null)));
    assert_eq!(
        r.status,
        200,
        "after the old version unloaded: {}",
        r.text()
    );
    assert_eq!(r.json()["data"], 7);

    // Python hosts are dedicated by default and show their engine and the python seccomp layer.
    let hosts = d.get("/v1/hosts").json();
    let py_hosts: Vec<&Value> = hosts["hosts"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|h| h["mimeType"] == "text/x-python")
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(py_hosts.len(), 3, "one host per python worker: {hosts:#}");
    assert!(
        py_hosts.iter().all(|h| h["sandbox"]["seccomp"] == "python"),
        "{hosts:#}"
    );
}

const HANG: &str = r#"
import time

def Process(event):
    if event.get("subject") == "hang":
        while True:
            time.sleep(0.05)
    return {"type": "py.hang.ok", "data": "fine"}
"#;

const SEGV: &str = r#"
import ctypes

def Process(event):
    if event.get("subject") == "segv":
        ctypes.string_at(0)
    return {"type": "py.segv.ok", "data": "fine"}
"#;

const ESCAPE: &str = r#"
def Process(event):
    what = event.get("subject")
    if what == "write":
        with open("/etc/wm-python-escape", "w") as f:
            f.write("x")
    if what == "socket":
        import _socket  # not on the blocked list: the sandbox is the boundary
        _socket.socket()
    return {"type": "py.escape.ok", "data": what}
"#;

const NEIGHBOUR: &str = r#"
def Process(event):
    return {"type": "py.neighbour", "data": event["data"]}
"#;

#[test]
fn python_failures_stay_contained() {
    let d = Daemon::start(
        DaemonOptions::default()
            .env("WORKER_RETRY_ATTEMPTS", "0")
            .env("HOST_RESPAWN_BACKOFF_MS", "20")
            .env("CRASH_LOOP_MAX_CRASHES", "50")
            .env("TIMEOUT_RECLAIM_GRACE_SECONDS", "1")
            .env("HOST_RLIMIT_AS_BYTES", &(2u64 << 30).to_string()),
    );
    // The segfaulting worker and its neighbour share one interpreter (isolation: shared).
    let segv = worker(&d, "py.segv", SEGV, json!({"isolation": "shared"}));
    let neighbour = worker(&d, "py.nb", NEIGHBOUR, json!({"isolation": "shared"}));
    let r = invoke(&d, &neighbour, event("n-1", json!("before")));
    assert_eq!(r.status, 200, "{}", r.text());

    let mut ev = event("s-1", json!(null));
    ev["subject"] = json!("segv");
    let r = invoke(&d, &segv, ev);
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["error"]["errorType"], "crash", "{}", r.text());
    assert!(r.text().contains("SIGSEGV"), "{}", r.text());
    // The host is respawned with both workers; the neighbour still answers.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let r = invoke(&d, &neighbour, event("n-2", json!("after")));
        if r.status == 200 {
            assert_eq!(r.json()["data"], "after");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "neighbour: {}",
            r.text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The sandbox, not the import policy, is the boundary: a write outside the temp folder
    // fails (read-only mount namespace); a socket ends the host by SIGSYS, named in the error.
    let esc = worker(&d, "py.escape", ESCAPE, json!({}));
    let mut ev = event("x-1", json!(null));
    ev["subject"] = json!("write");
    let r = invoke(&d, &esc, ev);
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(
        r.json()["error"]["errorType"],
        "worker_error",
        "{}",
        r.text()
    );
    assert!(
        r.text().contains("Read-only file system") || r.text().contains("Permission denied"),
        "{}",
        r.text()
    );
    assert!(!std::path::Path::new("/etc/wm-python-escape").exists());
    let mut ev = event("x-2", json!(null));
    ev["subject"] = json!("socket");
    let r = invoke(&d, &esc, ev);
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["error"]["errorType"], "crash", "{}", r.text());
    assert!(r.text().contains("socket(2)"), "{}", r.text());

    // A memory bomb meets the host's RLIMIT_AS as a MemoryError; the host lives on.
    let c = worker(&d, "py.mem", CONTRACT, json!({}));
    let mut ev = event("m-1", json!(null));
    ev["subject"] = json!("memory");
    let r = invoke(&d, &c, ev);
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("MemoryError"), "{}", r.text());
    let mut ev = event("m-2", json!(null));
    ev["subject"] = json!("text");
    ev["datacontenttype"] = json!("text/plain");
    ev["data"] = json!("still here");
    let r = invoke(&d, &c, ev);
    assert_eq!(r.status, 200, "after the bomb: {}", r.text());

    // A hang: the timeout fires, the worker goes to ERROR, a start reclaims the host.
    let hang = worker(&d, "py.hang", HANG, json!({"messageTimeoutSeconds": 1}));
    let mut ev = event("h-1", json!(null));
    ev["subject"] = json!("hang");
    let r = invoke(&d, &hang, ev);
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["error"]["errorType"], "timeout", "{}", r.text());
    assert_eq!(
        d.get(&format!("/v1/workers/{hang}")).json()["status"],
        "ERROR",
        "a timed-out worker is in ERROR"
    );
    // The hung host is killed after TIMEOUT_RECLAIM_GRACE_SECONDS; start brings the worker
    // back on a fresh one.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let r = d.post(&format!("/v1/workers/{hang}/start"));
        assert!(r.status < 300, "restart after the timeout: {}", r.text());
        let r = invoke(&d, &hang, event("h-2", json!(null)));
        if r.status == 200 {
            assert_eq!(r.json()["data"], "fine");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after reclaim: {}",
            r.text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
