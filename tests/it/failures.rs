//! The failure table of DESIGN.md §4, end to end: a real daemon, real host-runners, and the
//! data-driven `chaos` plugin (tests/fixtures/native/chaos.c) crashing, hanging and failing on
//! request while a healthy neighbour keeps serving.

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

fn daemon(env: &[(&str, &str)]) -> Daemon {
    let mut opts = DaemonOptions::default()
        .env("WORKER_RETRY_BASE_DELAY_MS", "10")
        .env("HOST_RESPAWN_BACKOFF_MS", "20");
    for (k, v) in env {
        opts = opts.env(k, v);
    }
    Daemon::start(opts)
}

/// Creates and starts a chaos worker on `topic`; returns its id.
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
    let r = d.post(&format!("/v1/workers/{id}/start"));
    assert!(r.status < 300, "start: {} {}", r.status, r.text());
    id
}

/// Publishes one structured event with `data` (text) on `topic`.
fn publish(d: &Daemon, topic: &str, id: &str, data: &str, ext: &[(&str, &str)]) {
    let mut ev = json!({
        "specversion": "1.0", "id": id, "source": "urn:test", "type": topic,
        "datacontenttype": "text/plain", "data": data,
    });
    for (k, v) in ext {
        ev[*k] = json!(v);
    }
    let r = d.send_json("POST", &format!("/v1/topics/{topic}/events"), &ev);
    assert_eq!(r.status, 202, "publish: {}", r.text());
}

fn worker(d: &Daemon, id: &str) -> Value {
    let r = d.get(&format!("/v1/workers/{id}"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
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

fn is_failed(v: &Value, worker: &str, error_type: &str) -> bool {
    v["type"] == "com.virtufin.workmanager.lifecycle.failed"
        && v["data"]["worker_id"] == worker
        && v["data"]["error_type"] == error_type
}

fn host_pids(d: &Daemon) -> Vec<i64> {
    let r = d.get("/v1/hosts");
    r.json()["hosts"]
        .as_array()
        .map(|a| a.iter().filter_map(|h| h["pid"].as_i64()).collect())
        .unwrap_or_default()
}

fn pid_alive(pid: i64) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
}

#[test]
fn a_segfault_is_retried_then_dead_lettered_while_a_neighbour_on_the_same_host_keeps_serving() {
    let d = daemon(&[
        ("WORKER_RETRY_ATTEMPTS", "2"),
        ("CRASH_LOOP_MAX_CRASHES", "50"),
    ]);
    let crasher = chaos_worker(&d, "t.crash", json!({}));
    let healthy = chaos_worker(&d, "t.ok", json!({}));
    let dead = Sse::subscribe(&d.base_url(), "t.crash-dead");
    let replies = Sse::subscribe(&d.base_url(), "t.ok.reply");
    let life = Sse::subscribe(&d.base_url(), "workmanager.lifecycle");
    let infra = Sse::subscribe(&d.base_url(), "workmanager.infra.host");

    publish(
        &d,
        "t.ok",
        "before",
        "hello-before",
        &[("correlationid", "c-1")],
    );
    let r = replies.wait_for(WAIT, "reply before the crash", |v| {
        v["data"] == "hello-before"
    });
    assert_eq!(r["correlationid"], "c-1");

    publish(&d, "t.crash", "poison", "segv", &[]);
    let dl = dead.wait_for(WAIT, "dead letter of the poison event", |v| {
        v["id"] == "poison"
    });
    assert_eq!(dl["deadletterreason"], "crash", "{dl:#}");
    assert_eq!(dl["deadletterattempts"], "3", "1 call + 2 retries: {dl:#}");
    assert!(
        dl["deadlettererror"]
            .as_str()
            .unwrap_or("")
            .contains("SIGSEGV"),
        "{dl:#}"
    );
    assert_eq!(
        dl["data"], "segv",
        "the original event travels with its dead letter"
    );

    let failed = life.wait_for(WAIT, "a crash failure event", |v| {
        is_failed(v, &crasher, "crash")
    });
    assert!(
        failed["data"]["error_message"]
            .as_str()
            .unwrap_or("")
            .contains("SIGSEGV")
    );
    let crashed = infra.wait_for(WAIT, "host.crashed", |v| {
        v["type"] == "com.virtufin.workmanager.infra.host.crashed"
    });
    assert_eq!(crashed["data"]["signal_name"], "SIGSEGV", "{crashed:#}");
    assert_eq!(
        crashed["data"]["culprit_worker_id"],
        crasher.as_str(),
        "{crashed:#}"
    );

    publish(&d, "t.ok", "after", "hello-after", &[]);
    replies.wait_for(WAIT, "reply after the crashes", |v| {
        v["data"] == "hello-after"
    });
    assert_eq!(worker(&d, &crasher)["status"], "RUNNING");
    assert_eq!(worker(&d, &healthy)["status"], "RUNNING");
    let hosts = d.get("/v1/hosts").json();
    let restarts: i64 = hosts["hosts"]
        .as_array()
        .map(|a| a.iter().filter_map(|h| h["restarts"].as_i64()).sum())
        .unwrap_or(0);
    assert!(restarts >= 3, "three crashes, three respawns: {hosts:#}");
}

#[test]
fn a_hang_times_out_puts_the_worker_in_error_and_its_host_is_reclaimed() {
    let d = daemon(&[
        ("MESSAGE_HANDLING_TIMEOUT_SECONDS", "1"),
        ("TIMEOUT_RECLAIM_GRACE_SECONDS", "1"),
    ]);
    let hung = chaos_worker(&d, "t.hang", json!({}));
    let _healthy = chaos_worker(&d, "t.fine", json!({}));
    let dead = Sse::subscribe(&d.base_url(), "t.hang-dead");
    let replies = Sse::subscribe(&d.base_url(), "t.fine.reply");
    let life = Sse::subscribe(&d.base_url(), "workmanager.lifecycle");
    let pids_before = host_pids(&d);
    assert_eq!(pids_before.len(), 1, "both workers share one native host");

    publish(&d, "t.hang", "stuck", "hang", &[]);
    life.wait_for(WAIT, "timeout failure event", |v| {
        is_failed(v, &hung, "timeout")
    });
    let dl = dead.wait_for(WAIT, "dead letter of the hung event", |v| {
        v["id"] == "stuck"
    });
    assert_eq!(
        dl["deadletterreason"], "timeout",
        "a hang is not retried: {dl:#}"
    );
    wait_until("the worker to be in ERROR", || {
        worker(&d, &hung)["status"] == "ERROR"
    });
    assert_eq!(worker(&d, &hung)["lastError"]["errorType"], "timeout");

    // After the grace period the host running the endless call is killed and replaced.
    wait_until("the host to be reclaimed", || {
        let now = host_pids(&d);
        !now.is_empty() && now != pids_before && !pid_alive(pids_before[0])
    });
    publish(&d, "t.fine", "fine", "still-here", &[]);
    replies.wait_for(WAIT, "the neighbour's reply after the reclaim", |v| {
        v["data"] == "still-here"
    });
}

/// The doorbell eventfd is fd 4 in the host, beside the ring at 3. A plugin that closes it
/// (and opens a file, which would take fd 4 and receive the host's doorbell writes) is
/// refused by the sandbox like an `ftruncate` of the ring: the host ends with SIGSYS at the
/// `close` (so the `open` never runs), the crash names the worker and `close(2)`, and the
/// neighbour in the same host serves again on the new host. With the runtime reading the
/// host's replies (`HOST_LINK_READER=runtime`, which also proves that mode serves calls end
/// to end).
#[test]
fn a_plugin_that_closes_the_doorbell_fd_is_refused_and_its_neighbour_keeps_serving() {
    let d = daemon(&[
        ("HOST_LINK_READER", "runtime"),
        ("WORKER_RETRY_ATTEMPTS", "1"),
        ("CRASH_LOOP_MAX_CRASHES", "1000"),
    ]);
    let mute = chaos_worker(&d, "t.mute", json!({}));
    let _healthy = chaos_worker(&d, "t.fine", json!({}));
    let dead = Sse::subscribe(&d.base_url(), "t.mute-dead");
    let replies = Sse::subscribe(&d.base_url(), "t.fine.reply");
    let muted = Sse::subscribe(&d.base_url(), "t.mute.reply");
    let life = Sse::subscribe(&d.base_url(), "workmanager.lifecycle");
    publish(&d, "t.fine", "before", "before", &[]);
    replies.wait_for(WAIT, "the neighbour's reply", |v| v["data"] == "before");
    let pids_before = host_pids(&d);
    assert_eq!(pids_before.len(), 1, "both workers share one native host");

    publish(&d, "t.mute", "mute", "closebell", &[]);
    let says = format!("worker '{mute}' called close(2), which the sandbox forbids");
    let failed = life.wait_for(WAIT, "crash failure event", |v| {
        is_failed(v, &mute, "crash")
    });
    assert!(
        failed["data"]["error_message"]
            .as_str()
            .is_some_and(|e| e.contains(&says)),
        "{failed:#}"
    );
    let dl = dead.wait_for(WAIT, "dead letter of the muted event", |v| {
        v["id"] == "mute"
    });
    assert_eq!(dl["deadletterreason"], "crash", "{dl:#}");
    wait_until("the host to be replaced", || {
        let now = host_pids(&d);
        !now.is_empty() && now != pids_before && !pid_alive(pids_before[0])
    });
    publish(&d, "t.fine", "fine", "after", &[]);
    replies.wait_for(WAIT, "the neighbour's reply after the crash", |v| {
        v["data"] == "after"
    });
    assert!(
        muted.next(Duration::from_millis(200)).is_none(),
        "the refused plugin must not have replied"
    );
}

#[test]
fn a_crash_loop_quarantines_the_worker_keeps_its_queue_and_start_resumes_it() {
    let d = daemon(&[
        ("WORKER_RETRY_ATTEMPTS", "1"),
        ("CRASH_LOOP_MAX_CRASHES", "2"),
        ("CRASH_LOOP_WINDOW_SECONDS", "120"),
    ]);
    let w = chaos_worker(&d, "t.loop", json!({"isolation": "dedicated"}));
    let dead = Sse::subscribe(&d.base_url(), "t.loop-dead");
    let replies = Sse::subscribe(&d.base_url(), "t.loop.reply");
    let life = Sse::subscribe(&d.base_url(), "workmanager.lifecycle");

    publish(&d, "t.loop", "poison", "abort", &[]);
    life.wait_for(WAIT, "crash_loop failure", |v| {
        is_failed(v, &w, "crash_loop")
    });
    wait_until("status ERROR", || worker(&d, &w)["status"] == "ERROR");
    assert_eq!(worker(&d, &w)["lastError"]["errorType"], "crash_loop");
    let dl = dead.wait_for(WAIT, "the poison event dead-lettered", |v| {
        v["id"] == "poison"
    });
    assert!(
        dl["deadlettererror"]
            .as_str()
            .unwrap_or("")
            .contains("SIGABRT"),
        "{dl:#}"
    );

    // Published while quarantined: queued, not processed, not dropped.
    publish(&d, "t.loop", "queued", "kept", &[]);
    assert!(
        replies.drain(Duration::from_millis(700)).is_empty(),
        "a quarantined worker must not process"
    );
    let r = d.post(&format!("/v1/workers/{w}/start"));
    assert!(r.status < 300, "start: {}", r.text());
    replies.wait_for(WAIT, "the queued event processed after start", |v| {
        v["data"] == "kept"
    });
    assert_eq!(worker(&d, &w)["status"], "RUNNING");
}

#[test]
fn replies_go_to_replytopic_else_to_their_type_with_correlationid_and_config_stamped() {
    let d = daemon(&[]);
    chaos_worker(&d, "t.route", json!({"config": {"tenant": "acme"}}));
    let by_type = Sse::subscribe(&d.base_url(), "custom.reply.type");
    let by_ext = Sse::subscribe(&d.base_url(), "explicit.replies");

    publish(
        &d,
        "t.route",
        "a",
        "one",
        &[("replytype", "custom.reply.type"), ("correlationid", "k1")],
    );
    let r = by_type.wait_for(WAIT, "reply routed by type", |v| v["data"] == "one");
    assert_eq!(r["correlationid"], "k1");
    assert_eq!(r["type"], "custom.reply.type");

    publish(
        &d,
        "t.route",
        "b",
        "two",
        &[
            ("replytopic", "explicit.replies"),
            ("replytype", "custom.reply.type"),
        ],
    );
    by_ext.wait_for(WAIT, "reply routed by replytopic", |v| v["data"] == "two");
}

#[test]
fn invoke_returns_the_reply_or_the_classified_error_without_retries() {
    let d = daemon(&[("WORKER_RETRY_ATTEMPTS", "3")]);
    let w = chaos_worker(&d, "t.invoke", json!({}));
    let call = |data: &str| {
        d.send_json(
            "POST",
            &format!("/v1/workers/{w}/invoke"),
            &json!({"specversion": "1.0", "id": "i1", "source": "urn:test", "type": "t.invoke",
                    "datacontenttype": "text/plain", "data": data}),
        )
    };
    let ok = call("ping");
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["data"], "ping");
    assert_eq!(ok.json()["type"], "t.invoke.reply");

    let none = call("none");
    assert_eq!(none.status, 502, "{}", none.text());
    assert_eq!(none.error_code(), "invoke_failed");
    assert!(
        none.text().contains("invalid_response"),
        "no buffer with return 0 is an invalid response: {}",
        none.text()
    );
    let failed = call("fail");
    assert!(failed.status >= 400, "{}", failed.text());
    assert!(
        failed.text().contains("process_failed"),
        "{}",
        failed.text()
    );
    let err = call("error");
    assert!(err.text().contains("worker_error"), "{}", err.text());
    assert!(
        err.text().contains("chaos: requested error"),
        "{}",
        err.text()
    );

    // The status check before the call (read without a blocking hand-off when the registry
    // can): an unknown worker is 404, a stopped one 409 naming its status.
    let unknown = d.send_json(
        "POST",
        "/v1/workers/no-such-worker/invoke",
        &json!({"specversion": "1.0", "id": "i2", "source": "urn:test", "type": "t.invoke",
                "datacontenttype": "text/plain", "data": "ping"}),
    );
    assert_eq!(unknown.status, 404, "{}", unknown.text());
    assert!(unknown.text().contains("not_found"), "{}", unknown.text());
    let r = d.post(&format!("/v1/workers/{w}/stop"));
    assert!(r.status < 300, "stop: {} {}", r.status, r.text());
    let stopped = call("ping");
    assert_eq!(stopped.status, 409, "{}", stopped.text());
    assert!(
        stopped.text().contains("is STOPPED; start it first"),
        "{}",
        stopped.text()
    );
}

#[test]
fn a_plugin_publishes_through_gateway_call() {
    let d = daemon(&[]);
    chaos_worker(&d, "t.gw", json!({}));
    let side = Sse::subscribe(&d.base_url(), "side.channel");
    let replies = Sse::subscribe(&d.base_url(), "t.gw.reply");
    publish(
        &d,
        "t.gw",
        "g1",
        r#"gateway:{"topic":"side.channel","data":{"n":7},"metadata":{"ce-type":"side.event"}}"#,
        &[],
    );
    let ev = side.wait_for(WAIT, "the event the plugin published", |v| {
        v["type"] == "side.event"
    });
    assert_eq!(ev["data"], json!({"n": 7}));
    let r = replies.wait_for(WAIT, "the plugin's reply", |_| true);
    let body: Value = serde_json::from_str(r["data"].as_str().unwrap_or("{}"))
        .unwrap_or_else(|e| panic!("reply data is not JSON: {e}: {r:#}"));
    assert_eq!(body["rc"], 0, "{body:#}");
}

#[test]
fn running_workers_come_back_after_a_restart_and_hosts_die_with_a_killed_daemon() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut d = Daemon::start(DaemonOptions::default().data_dir(data.path()));
    chaos_worker(&d, "t.back", json!({}));
    let pids = host_pids(&d);
    assert_eq!(pids.len(), 1);
    d.kill9();
    wait_until("the host to die with its daemon", || !pid_alive(pids[0]));

    let d = Daemon::start(DaemonOptions::default().data_dir(data.path()));
    let replies = Sse::subscribe(&d.base_url(), "t.back.reply");
    publish(&d, "t.back", "r1", "again", &[]);
    replies.wait_for(WAIT, "a reply from the recovered worker", |v| {
        v["data"] == "again"
    });
}
