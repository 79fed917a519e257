//! Host input limits (issue 10, items 5-7; docs/security.md "Host input limits"), end to end:
//! a real daemon, real host-runners and the `flood` plugin (tests/fixtures/native/flood.c)
//! pushing each limit while a neighbour on the same shared host keeps answering.

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use wm_testkit::daemon::{Daemon, DaemonOptions};
use wm_testkit::native::{Build, Lang};
use wm_testkit::nupkg;

fn flood_package() -> Vec<u8> {
    let so = Build::plugin("flood", Lang::C, &["flood.c"]).build();
    nupkg::native(
        "Flood.Worker",
        "flood",
        &so,
        "<virtufinLibrary>flood</virtufinLibrary>",
    )
}

fn daemon(env: &[(&str, &str)]) -> Daemon {
    let mut opts = DaemonOptions::default();
    for (k, v) in env {
        opts = opts.env(k, v);
    }
    Daemon::start(opts)
}

/// Creates a flood worker on `topic` (with `extra` fields) and returns its id; `start` says
/// whether to start it too.
fn create(d: &Daemon, topic: &str, extra: Value) -> String {
    let mut body = json!({
        "mimeType": "application/x-native-dll",
        "topic": topic,
        "codeSource": {"content": base64::engine::general_purpose::STANDARD.encode(flood_package())},
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    let r = d.send_json("POST", "/v1/workers", &body);
    assert_eq!(r.status, 201, "create: {}", r.text());
    r.json()["id"].as_str().expect("worker id").to_string()
}

fn started(d: &Daemon, topic: &str, extra: Value) -> String {
    let id = create(d, topic, extra);
    let r = d.post(&format!("/v1/workers/{id}/start"));
    assert!(r.status < 300, "start: {} {}", r.status, r.text());
    id
}

fn event(data: &str) -> Value {
    json!({"specversion": "1.0", "id": "e1", "source": "urn:test", "type": "t",
           "datacontenttype": "text/plain", "data": data})
}

/// Invokes `w` with `data`; returns (status, reply data or error body).
fn invoke(d: &Daemon, w: &str, data: &str) -> (u16, String) {
    let r = d.send_json("POST", &format!("/v1/workers/{w}/invoke"), &event(data));
    let status = r.status;
    if status == 200 {
        (status, r.json()["data"].as_str().unwrap_or("").to_string())
    } else {
        (status, r.text())
    }
}

/// The value of one series in `/metrics` (0 when absent).
fn metric(d: &Daemon, series: &str) -> u64 {
    let text = d.get("/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

/// A `/proc/<pid>/status` field in KiB: `VmRSS` (now) or `VmHWM` (peak so far).
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Honest hosts are never flagged: no identity violation on any host.
fn assert_no_host_flagged(d: &Daemon) {
    let hosts = d.get("/v1/hosts").json();
    for h in hosts["hosts"].as_array().cloned().unwrap_or_default() {
        assert_eq!(h["identityViolations"], 0, "{h}");
        assert_eq!(h["flagged"], false, "{h}");
    }
    assert!(
        !d.log().contains("does not carry"),
        "no identity warning for honest hosts"
    );
}

#[test]
fn an_event_over_the_ring_frame_limit_is_refused_at_publish_and_invoke_with_413() {
    let d = daemon(&[("RING_MAX_FRAME_BYTES", "131072")]);
    let w = started(&d, "t.big", json!({}));
    let big = "x".repeat(200_000);
    let is_413 = |r: &wm_testkit::daemon::http::Response, what: &str| {
        assert_eq!(r.status, 413, "{what}: {}", r.text());
        assert_eq!(r.error_code(), "too_large", "{what}: {}", r.text());
        assert!(
            r.text().contains("RING_MAX_FRAME_BYTES=131072"),
            "{what} names the setting and its value: {}",
            r.text()
        );
    };
    // Structured, batch (the second event is the big one) and binary mode.
    let r = d.send_json("POST", "/v1/topics/t.big/events", &event(&big));
    is_413(&r, "structured publish");
    let batch = json!([event("small"), event(&big)]);
    let r = d.request(
        "POST",
        "/v1/topics/t.big/events",
        &[("content-type", "application/cloudevents-batch+json")],
        batch.to_string().as_bytes(),
    );
    is_413(&r, "batch publish");
    assert!(r.text().contains("event 1 "), "{}", r.text());
    let r = d.request(
        "POST",
        "/v1/topics/t.big/events",
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "b1"),
            ("ce-source", "urn:test"),
            ("ce-type", "t"),
            ("content-type", "text/plain"),
        ],
        big.as_bytes(),
    );
    is_413(&r, "binary publish");

    let r = d.send_json("POST", &format!("/v1/workers/{w}/invoke"), &event(&big));
    is_413(&r, "invoke");
    // Nothing was stored or wedged: the worker answers the next event at once.
    let started = Instant::now();
    assert_eq!(invoke(&d, &w, "after"), (200, "after".to_string()));
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[test]
fn a_start_beyond_host_pool_max_hosts_fails_with_503_naming_the_setting() {
    let d = daemon(&[("HOST_POOL_MAX_HOSTS", "1")]);
    let first = started(&d, "t.one", json!({"isolation": "dedicated"}));
    for extra in [json!({"isolation": "dedicated"}), json!({})] {
        let w = create(&d, "t.two", extra.clone());
        let r = d.post(&format!("/v1/workers/{w}/start"));
        assert_eq!(r.status, 503, "{extra}: {}", r.text());
        assert_eq!(r.error_code(), "unavailable");
        assert!(r.text().contains("HOST_POOL_MAX_HOSTS"), "{}", r.text());
    }
    assert_eq!(
        d.get("/v1/hosts").json()["hosts"].as_array().map(Vec::len),
        Some(1)
    );
    // The place comes back when the dedicated host ends.
    let r = d.post(&format!("/v1/workers/{first}/stop"));
    assert!(r.status < 300, "stop: {}", r.text());
    let third = started(&d, "t.three", json!({}));
    assert_eq!(invoke(&d, &third, "logs:3"), (200, "logged 3".to_string()));
    let r = d.post(&format!("/v1/workers/{third}/stop"));
    assert!(r.status < 300, "stop: {}", r.text());
    assert_no_host_flagged(&d);
}

#[test]
fn state_quotas_refuse_writes_and_leave_the_stored_state_as_it_was() {
    let d = daemon(&[("STATE_MAX_KEYS", "5"), ("STATE_MAX_VALUE_BYTES", "1024")]);
    let w = started(&d, "t.state", json!({}));
    // Keys k0..k4 fit; k5 is refused with status 5.
    assert_eq!(invoke(&d, &w, "keys:8"), (200, "set 5 rc 5".to_string()));
    assert_eq!(
        invoke(&d, &w, "keys:3"),
        (200, "set 3 rc 0".to_string()),
        "overwriting existing keys still works"
    );
    assert_eq!(invoke(&d, &w, "big:2000"), (200, "rc 5".to_string()));
    assert_eq!(
        invoke(&d, &w, "big:1000"),
        (200, "rc 5".to_string()),
        "a sixth key"
    );
    assert_eq!(
        invoke(&d, &w, "get:k0"),
        (200, r#"rc 0 {"value":"v"}"#.to_string())
    );
    for key in ["k5", "big"] {
        assert_eq!(
            invoke(&d, &w, &format!("get:{key}")),
            (200, r#"rc 0 {"value":null}"#.to_string()),
            "{key} was never stored"
        );
    }
    let log = d.log();
    assert!(
        log.contains("STATE_MAX_KEYS") && log.contains("STATE_MAX_VALUE_BYTES"),
        "the refusals name their settings in the log"
    );
}

#[test]
fn log_and_gateway_floods_are_rate_limited_and_counted_while_a_neighbour_answers() {
    let d = daemon(&[
        ("WORKER_LOG_LINES_PER_SECOND", "50"),
        ("WORKER_GATEWAY_CALLS_PER_SECOND", "50"),
    ]);
    let flooder = started(&d, "t.flood", json!({}));
    let neighbour = started(&d, "t.calm", json!({}));
    let hosts = d.get("/v1/hosts").json();
    assert_eq!(
        hosts["hosts"].as_array().map(Vec::len),
        Some(1),
        "one shared host: {hosts}"
    );

    std::thread::scope(|s| {
        let flood = s.spawn(|| {
            let logs = invoke(&d, &flooder, "logs:20000");
            let calls = invoke(&d, &flooder, "calls:400");
            (logs, calls)
        });
        // The neighbour keeps answering within a second while the flood runs.
        let mut answers = 0;
        while !flood.is_finished() || answers < 3 {
            let t = Instant::now();
            assert_eq!(invoke(&d, &neighbour, "hi"), (200, "hi".to_string()));
            assert!(
                t.elapsed() < Duration::from_secs(1),
                "the neighbour took {:?}",
                t.elapsed()
            );
            answers += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        let ((ls, logs), (cs, calls)) = flood.join().expect("flood thread");
        assert_eq!((ls, logs.as_str()), (200, "logged 20000"));
        assert_eq!(cs, 200, "{calls}");
        let n = |word: &str| -> u64 {
            let mut it = calls.split_whitespace();
            it.position(|w| w == word)
                .and_then(|_| it.next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        assert_eq!(n("ok") + n("refused"), 400, "{calls}");
        assert!(
            n("refused") >= 200,
            "most calls over the rate are refused: {calls}"
        );
    });

    let dropped = metric(
        &d,
        &format!("workmanager_worker_log_lines_dropped_total{{worker=\"{flooder}\"}}"),
    );
    assert!(dropped >= 15_000, "log lines dropped: {dropped}");
    let refused = metric(
        &d,
        &format!("workmanager_worker_gateway_calls_refused_total{{worker=\"{flooder}\"}}"),
    );
    assert!(refused >= 200, "gateway calls refused: {refused}");
    assert_eq!(
        metric(
            &d,
            &format!("workmanager_worker_log_lines_dropped_total{{worker=\"{neighbour}\"}}"),
        ),
        0,
        "the neighbour lost nothing"
    );
    assert_no_host_flagged(&d);
    let log = d.log();
    let summaries = log
        .lines()
        .filter(|l| l.contains("WORKER_LOG_LINES_PER_SECOND dropped"))
        .count();
    assert!(
        (1..=60).contains(&summaries),
        "drops are summarised at most once a second, not per line: {summaries}"
    );
    assert!(
        log.lines().filter(|l| l.contains("flood line")).count() < 2_000,
        "the dropped lines are not in the log"
    );
}

#[test]
fn a_host_writing_64_mib_of_stderr_without_a_newline_costs_the_daemon_bounded_memory() {
    let d = daemon(&[("MESSAGE_HANDLING_TIMEOUT_SECONDS", "120")]);
    let w = started(&d, "t.stderr", json!({}));
    let neighbour = started(&d, "t.calm", json!({}));
    let pid = d.pid().expect("daemon pid");
    let (rss_before, peak_before) = (status_kib(pid, "VmRSS"), status_kib(pid, "VmHWM"));
    assert!(rss_before > 0, "no VmRSS for pid {pid}");
    assert_eq!(invoke(&d, &w, "stderr:64"), (200, "written 64".to_string()));
    let t = Instant::now();
    assert_eq!(invoke(&d, &neighbour, "still"), (200, "still".to_string()));
    assert!(t.elapsed() < Duration::from_secs(1));
    // The peak, not the RSS now: a line buffered whole would be freed (and unmapped) after it
    // was logged, but it would have raised the peak by 64 MiB on the way.
    let peak = status_kib(pid, "VmHWM");
    assert!(
        peak <= peak_before.max(rss_before + 32 * 1024),
        "daemon peak RSS rose from {peak_before} KiB (RSS {rss_before} KiB) to {peak} KiB for 64 MiB of stderr"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&d, "workmanager_host_stderr_lines_truncated_total") == 0 {
        assert!(Instant::now() < deadline, "the long line was never cut");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        d.log()
            .contains("line cut at HOST_STDERR_LINE_MAX_BYTES=4096"),
        "the cut line is logged with its marker"
    );
}

#[test]
fn a_stored_event_that_cannot_be_sent_is_dead_lettered_at_once_and_the_worker_goes_on() {
    let d = daemon(&[
        ("RING_MAX_FRAME_BYTES", "131072"),
        ("WORKER_RETRY_ATTEMPTS", "3"),
    ]);
    // The worker's config is stamped onto every event before it is sent: 10 values of 4000
    // bytes push an event that fits past the frame limit after it was accepted and stored.
    let config: serde_json::Map<String, Value> = (0..10)
        .map(|i| (format!("pad{i}"), json!("p".repeat(4000))))
        .collect();
    let w = started(&d, "t.pad", json!({"config": config, "maxConcurrency": 1}));
    let dead = wm_testkit::sse::Sse::subscribe(&d.base_url(), "t.pad-dead");
    let t = Instant::now();
    let fits = "f".repeat(100_000);
    for id in ["p1", "p2", "p3"] {
        let mut ev = event(&fits);
        ev["id"] = json!(id);
        let r = d.send_json("POST", "/v1/topics/t.pad/events", &ev);
        assert_eq!(r.status, 202, "{}", r.text());
    }
    for id in ["p1", "p2", "p3"] {
        let dl = dead.wait_for(Duration::from_secs(20), "a dead letter", |v| v["id"] == id);
        assert_eq!(dl["deadletterreason"], "process_failed", "{dl:#}");
        assert_eq!(dl["deadletterattempts"], "1", "never retried: {dl:#}");
        assert!(
            dl["deadlettererror"]
                .as_str()
                .unwrap_or("")
                .contains("RING_MAX_FRAME_BYTES"),
            "{dl:#}"
        );
    }
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "one permit, three events: none was wedged ({:?})",
        t.elapsed()
    );
    let (status, body) = invoke(&d, &w, &fits);
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("process_failed") && body.contains("RING_MAX_FRAME_BYTES"),
        "{body}"
    );
}
