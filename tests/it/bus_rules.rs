//! The "nothing lost" rules of issue 12, each against a real daemon: a worker's backlog
//! survives `stop`, `ERROR` and restarts (also with `WORKER_RECOVERY_ON_START=false`); `start`
//! after a timeout reclaims the hung call before the worker gets another; group locks are
//! bounded by their settings and end in a `lock_contention` dead letter.

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use wm_testkit::daemon::{Daemon, DaemonOptions};
use wm_testkit::native::{Build, Lang};
use wm_testkit::nupkg;
use wm_testkit::sse::Sse;

const WAIT: Duration = Duration::from_secs(40);

fn chaos_package() -> Vec<u8> {
    let so = Build::plugin("chaos", Lang::C, &["chaos.c"]).build();
    nupkg::native(
        "Chaos.Worker",
        "chaos",
        &so,
        "<virtufinLibrary>chaos</virtufinLibrary>",
    )
}

fn options(env: &[(&str, &str)]) -> DaemonOptions {
    let mut opts = DaemonOptions::default()
        .env("WORKER_RETRY_BASE_DELAY_MS", "10")
        .env("HOST_RESPAWN_BACKOFF_MS", "20");
    for (k, v) in env {
        opts = opts.env(k, v);
    }
    opts
}

/// Creates (and starts) a chaos worker on `topic`; returns its id.
fn chaos_worker(d: &Daemon, topic: &str, extra: Value) -> String {
    let mut body = json!({
        "mimeType": "application/x-native-dll",
        "topic": topic,
        "codeSource": {"content": base64::engine::general_purpose::STANDARD.encode(chaos_package())},
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    let r = d.send_json("POST", "/v1/workers", &body);
    assert_eq!(r.status, 201, "create: {}", r.text());
    let id = r.json()["id"].as_str().expect("worker id").to_string();
    start(d, &id);
    id
}

fn start(d: &Daemon, id: &str) {
    let r = d.post(&format!("/v1/workers/{id}/start"));
    assert!(r.status < 300, "start: {} {}", r.status, r.text());
}

fn publish(d: &Daemon, topic: &str, id: &str, data: &str) {
    let ev = json!({
        "specversion": "1.0", "id": id, "source": "urn:test", "type": topic,
        "datacontenttype": "text/plain", "data": data,
    });
    let r = d.send_json("POST", &format!("/v1/topics/{topic}/events"), &ev);
    assert_eq!(r.status, 202, "publish: {}", r.text());
}

fn status(d: &Daemon, id: &str) -> String {
    let r = d.get(&format!("/v1/workers/{id}"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["status"].as_str().unwrap_or_default().to_string()
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

/// The value of a Prometheus sample (`name{labels}`), 0 when absent.
fn metric(d: &Daemon, sample: &str) -> f64 {
    let text = d.get("/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn wait_replies(sse: &Sse, ids: &[&str]) {
    let mut missing: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    let deadline = Instant::now() + WAIT;
    while !missing.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let v = sse
            .next(left)
            .unwrap_or_else(|| panic!("replies {missing:?} on {} never came", sse.topic()));
        let data = v["data"].as_str().unwrap_or_default().to_string();
        missing.retain(|m| *m != data);
    }
}

#[test]
fn backlogs_survive_stop_error_and_a_restart_without_recovery() {
    let data = tempfile::tempdir().expect("tempdir");
    let env = [
        ("MESSAGE_HANDLING_TIMEOUT_SECONDS", "1"),
        ("TIMEOUT_RECLAIM_GRACE_SECONDS", "1"),
    ];
    let mut d = Daemon::start(options(&env).data_dir(data.path()));
    let stopped = chaos_worker(&d, "keep.stop", json!({}));
    let erring = chaos_worker(&d, "keep.err", json!({}));

    // POST /stop used to unsubscribe and let the bus drop the queue as "nobody listens".
    let r = d.post(&format!("/v1/workers/{stopped}/stop"));
    assert!(r.status < 300, "stop: {}", r.text());
    for i in 0..3 {
        publish(&d, "keep.stop", &format!("s{i}"), &format!("s{i}"));
    }
    // A timeout puts the other worker in ERROR; its queue is kept (parked consumer).
    publish(&d, "keep.err", "stuck", "hang");
    wait_until("the worker to be in ERROR", || {
        status(&d, &erring) == "ERROR"
    });
    for i in 0..3 {
        publish(&d, "keep.err", &format!("e{i}"), &format!("e{i}"));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        metric(&d, "workmanager_bus_dropped_total{topic=\"keep.stop\"}"),
        0.0
    );
    assert_eq!(
        metric(&d, "workmanager_bus_dropped_total{topic=\"keep.err\"}"),
        0.0
    );

    // A crash and a restart that starts nobody: both queues are still there for `start`.
    d.kill9();
    let d = Daemon::start(
        options(&env)
            .env("WORKER_RECOVERY_ON_START", "false")
            .data_dir(data.path()),
    );
    let stop_replies = Sse::subscribe(&d.base_url(), "keep.stop.reply");
    let err_replies = Sse::subscribe(&d.base_url(), "keep.err.reply");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        metric(&d, "workmanager_bus_dropped_total{topic=\"keep.stop\"}"),
        0.0
    );
    assert_eq!(
        metric(&d, "workmanager_bus_dropped_total{topic=\"keep.err\"}"),
        0.0
    );
    start(&d, &stopped);
    start(&d, &erring);
    wait_replies(&stop_replies, &["s0", "s1", "s2"]);
    wait_replies(&err_replies, &["e0", "e1", "e2"]);

    // Only topics with no registered worker at all are dropped, counted per topic.
    publish(&d, "keep.nobody", "n0", "n0");
    wait_until("the drop of an unregistered topic", || {
        metric(&d, "workmanager_bus_dropped_total{topic=\"keep.nobody\"}") == 1.0
    });
}

#[test]
fn start_after_a_timeout_reclaims_the_hung_call_before_the_next_call() {
    // A long grace: without the reclaim at start, the next call would queue behind the hung
    // one in the host and time out too.
    let d = Daemon::start(options(&[
        ("MESSAGE_HANDLING_TIMEOUT_SECONDS", "2"),
        ("TIMEOUT_RECLAIM_GRACE_SECONDS", "600"),
    ]));
    let id = chaos_worker(&d, "reclaim.t", json!({}));
    let replies = Sse::subscribe(&d.base_url(), "reclaim.t.reply");
    let dead = Sse::subscribe(&d.base_url(), "reclaim.t-dead");
    publish(&d, "reclaim.t", "stuck", "hang");
    dead.wait_for(WAIT, "the timeout dead letter", |v| v["id"] == "stuck");
    wait_until("ERROR", || status(&d, &id) == "ERROR");

    start(&d, &id);
    let asked = Instant::now();
    publish(&d, "reclaim.t", "after", "after");
    replies.wait_for(WAIT, "the reply after the restart of the worker", |v| {
        v["data"] == "after"
    });
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "the call waited {:?}",
        asked.elapsed()
    );
    assert!(
        dead.drain(Duration::from_millis(300)).is_empty(),
        "nothing else timed out"
    );
    assert_eq!(status(&d, &id), "RUNNING");
}

#[test]
fn a_contended_group_lock_is_retried_per_its_settings_then_dead_lettered_as_lock_contention() {
    let d = Daemon::start(options(&[
        ("GROUP_LOCK_MAX_RETRIES", "2"),
        ("GROUP_LOCK_RETRY_BASE_DELAY_MS", "10"),
        ("WORKER_RETRY_ATTEMPTS", "1"),
    ]));
    let _holder = chaos_worker(&d, "lock.slow", json!({"group": "g1"}));
    let waiter = chaos_worker(&d, "lock.fast", json!({"group": "g1"}));
    let dead = Sse::subscribe(&d.base_url(), "lock.fast-dead");
    let replies = Sse::subscribe(&d.base_url(), "lock.fast.reply");
    publish(&d, "lock.slow", "long", "sleep:4000");
    std::thread::sleep(Duration::from_millis(500));
    let asked = Instant::now();
    publish(&d, "lock.fast", "blocked", "x");
    let dl = dead.wait_for(WAIT, "the lock_contention dead letter", |v| {
        v["id"] == "blocked"
    });
    assert_eq!(dl["deadletterreason"], "lock_contention", "{dl:#}");
    assert_eq!(dl["deadletterattempts"], "2", "{dl:#}");
    assert_eq!(dl["deadletterworker"], waiter.as_str());
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "bounded, not a wait for the holder: {:?}",
        asked.elapsed()
    );
    assert!(metric(&d, "workmanager_lock_contention_events_total{group=\"g1\"}") >= 2.0);
    // Once the lock is free again, the group's workers run as usual.
    std::thread::sleep(Duration::from_millis(4_000));
    publish(&d, "lock.fast", "free", "free");
    replies.wait_for(WAIT, "a reply once the lock is free", |v| {
        v["data"] == "free"
    });
}

#[test]
fn a_hot_reload_keeps_the_backlog() {
    let d = Daemon::start(options(&[]));
    let id = chaos_worker(&d, "reload.t", json!({}));
    let replies = Sse::subscribe(&d.base_url(), "reload.t.reply");
    let keys: Vec<String> = (0..20).map(|i| format!("r{i}")).collect();
    for k in &keys {
        let ev = json!({
            "specversion": "1.0", "id": k, "source": "urn:test", "type": "reload.t",
            "datacontenttype": "text/plain", "data": "sleep:40", "correlationid": k,
        });
        let r = d.send_json("POST", "/v1/topics/reload.t/events", &ev);
        assert_eq!(r.status, 202, "publish: {}", r.text());
    }
    // Mid-backlog: new code for the running worker (its consumer is replaced).
    std::thread::sleep(Duration::from_millis(150));
    let r = d.send_json(
        "POST",
        &format!("/v1/workers/{id}/code"),
        &json!({"codeSource": {"content": base64::engine::general_purpose::STANDARD.encode(chaos_package())}}),
    );
    assert_eq!(r.status, 200, "reload: {}", r.text());
    let mut missing: Vec<String> = keys.clone();
    let deadline = Instant::now() + WAIT;
    while !missing.is_empty() {
        let v = replies
            .next(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|| panic!("replies to {missing:?} never came"));
        let k = v["correlationid"].as_str().unwrap_or_default().to_string();
        missing.retain(|m| *m != k);
    }
    assert_eq!(
        metric(&d, "workmanager_bus_dropped_total{topic=\"reload.t\"}"),
        0.0
    );
}

#[test]
fn with_os_durability_lone_events_are_committed_inline_and_every_reply_arrives() {
    // BUS_INLINE_COMMIT defaults to `os`: one event at a time, the publish and the completion
    // are committed on the runtime thread (counted), and nothing is lost or reordered by it.
    let d = Daemon::start(options(&[("BUS_DURABILITY", "os")]));
    chaos_worker(&d, "lone.in", json!({}));
    let replies = Sse::subscribe(&d.base_url(), "lone.in.reply");
    let before = metric(&d, "workmanager_bus_inline_writes_total");
    for i in 0..10 {
        let id = format!("lone{i}");
        publish(&d, "lone.in", &id, &id);
        wait_replies(&replies, &[id.as_str()]);
    }
    let inline = metric(&d, "workmanager_bus_inline_writes_total") - before;
    assert!(
        inline >= 10.0,
        "{inline} inline writes for 10 lone events (a publish and a completion each)"
    );
    assert_eq!(metric(&d, "workmanager_bus_stored_events"), 0.0);
}

#[test]
fn with_fsync_a_quick_workers_completion_joins_its_publishs_commit() {
    // BUS_JOIN_WINDOW_US: the publish's transaction stays open until the event, handed to
    // the worker before the fsync, is completed; one commit per event instead of two. (A
    // window far above the round trip, so that a loaded machine does not split them.)
    let d = Daemon::start(options(&[("BUS_JOIN_WINDOW_US", "10000")]));
    chaos_worker(&d, "join.in", json!({}));
    let replies = Sse::subscribe(&d.base_url(), "join.in.reply");
    publish(&d, "join.in", "warm", "warm");
    wait_replies(&replies, &["warm"]);
    let commits = metric(&d, "workmanager_bus_commits_total");
    let joined = metric(&d, "workmanager_bus_joined_writes_total");
    for i in 0..10 {
        let id = format!("join{i}");
        publish(&d, "join.in", &id, &id);
        wait_replies(&replies, &[id.as_str()]);
    }
    let commits = metric(&d, "workmanager_bus_commits_total") - commits;
    let joined = metric(&d, "workmanager_bus_joined_writes_total") - joined;
    assert!(
        commits <= 11.0,
        "{commits} commits for 10 events one at a time: the completions did not join (20 without)"
    );
    assert!(
        joined >= 9.0,
        "{joined} completions joined their publish's commit"
    );
    assert_eq!(metric(&d, "workmanager_bus_stored_events"), 0.0);
}
