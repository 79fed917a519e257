//! The runtime's own behaviour through the real daemon: heartbeats, group locks, warm standby
//! hosts, and no host left behind after a graceful stop.

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use wm_testkit::daemon::{Daemon, DaemonOptions};
use wm_testkit::native::{Build, Lang};
use wm_testkit::nupkg;
use wm_testkit::sse::Sse;

const WAIT: Duration = Duration::from_secs(40);

fn chaos_worker(d: &Daemon, topic: &str, extra: Value) -> String {
    let so = Build::plugin("chaos", Lang::C, &["chaos.c"]).build();
    let pkg = nupkg::native(
        "Chaos.Worker",
        "chaos",
        &so,
        "<virtufinLibrary>chaos</virtufinLibrary>",
    );
    let mut body = json!({
        "mimeType": "application/x-native-dll",
        "topic": topic,
        "codeSource": {"content": base64::engine::general_purpose::STANDARD.encode(pkg)},
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    let r = d.send_json("POST", "/v1/workers", &body);
    assert_eq!(r.status, 201, "create: {}", r.text());
    let id = r.json()["id"].as_str().expect("id").to_string();
    let r = d.post(&format!("/v1/workers/{id}/start"));
    assert!(r.status < 300, "start: {}", r.text());
    id
}

fn publish(d: &Daemon, topic: &str, id: &str, data: &str) {
    let ev = json!({"specversion": "1.0", "id": id, "source": "urn:test", "type": topic,
                    "datacontenttype": "text/plain", "data": data});
    let r = d.send_json("POST", &format!("/v1/topics/{topic}/events"), &ev);
    assert_eq!(r.status, 202, "publish: {}", r.text());
}

fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

#[test]
fn started_workers_send_heartbeats_with_their_counters() {
    let d = Daemon::start(DaemonOptions::default().env("WORKER_HEARTBEAT_SECONDS", "1"));
    let id = chaos_worker(&d, "t.hb", json!({}));
    let replies = Sse::subscribe(&d.base_url(), "t.hb.reply");
    let beats = Sse::subscribe(&d.base_url(), "workmanager.infra.worker");
    publish(&d, "t.hb", "h1", "x");
    replies.wait_for(WAIT, "the reply", |v| v["id"] == "h1");
    let hb = beats.wait_for(WAIT, "a heartbeat counting the message", |v| {
        v["type"] == "com.virtufin.workmanager.infra.worker.heartbeat"
            && v["data"]["worker_id"] == id.as_str()
            && v["data"]["processed"] == 1
    });
    assert_eq!(hb["data"]["status"], "RUNNING", "{hb:#}");
    assert!(hb["data"]["host_pid"].as_i64().is_some(), "{hb:#}");
}

#[test]
fn workers_of_one_group_never_run_at_the_same_time() {
    let d = Daemon::start(DaemonOptions::default());
    chaos_worker(&d, "t.g1", json!({"group": "g", "isolation": "dedicated"}));
    chaos_worker(&d, "t.g2", json!({"group": "g", "isolation": "dedicated"}));
    let r1 = Sse::subscribe(&d.base_url(), "t.g1.reply");
    let r2 = Sse::subscribe(&d.base_url(), "t.g2.reply");
    let started = Instant::now();
    publish(&d, "t.g1", "a", "sleep:400");
    publish(&d, "t.g2", "b", "sleep:400");
    r1.wait_for(WAIT, "first reply", |v| v["id"] == "a");
    r2.wait_for(WAIT, "second reply", |v| v["id"] == "b");
    // Two 400 ms calls on two hosts overlap unless the group lock serialises them.
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "calls of one group overlapped: both done after {:?}",
        started.elapsed()
    );
}

#[test]
fn a_graceful_stop_leaves_no_host_process_behind() {
    let mut d = Daemon::start(DaemonOptions::default());
    chaos_worker(&d, "t.s1", json!({}));
    chaos_worker(&d, "t.s2", json!({"isolation": "dedicated"}));
    let hosts = d.get("/v1/hosts").json();
    let mut pids: Vec<i64> = hosts["hosts"]
        .as_array()
        .map(|a| a.iter().filter_map(|h| h["pid"].as_i64()).collect())
        .unwrap_or_default();
    assert_eq!(
        pids.len(),
        2,
        "one shared and one dedicated host: {hosts:#}"
    );
    // The warm standby host (HOST_STANDBY) is stopped with the others.
    pids.push(wait_standby(&d, None).0);
    let status = d.stop();
    assert!(
        status.success(),
        "SIGTERM ends the daemon cleanly: {status:?}"
    );
    for pid in pids {
        assert!(!alive(pid), "host {pid} outlived its daemon");
    }
}

/// (pid, rssBytes) of the idle native standby host, once there is one other than `not`.
fn wait_standby(d: &Daemon, not: Option<i64>) -> (i64, u64) {
    let t = Instant::now();
    loop {
        let hosts = d.get("/v1/hosts").json();
        let found = hosts["standby"].as_array().and_then(|a| {
            a.iter().find_map(|h| {
                let pid = h["pid"].as_i64()?;
                (h["mimeType"] == "application/x-native-dll" && Some(pid) != not)
                    .then(|| (pid, h["rssBytes"].as_u64().unwrap_or(0)))
            })
        });
        if let Some(f) = found {
            return f;
        }
        assert!(t.elapsed() < WAIT, "no native standby host: {hosts:#}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn host_of(d: &Daemon, worker: &str) -> Option<i64> {
    let hosts = d.get("/v1/hosts").json();
    hosts["hosts"].as_array()?.iter().find_map(|h| {
        let has = h["workers"].as_array()?.iter().any(|w| w == worker);
        if has { h["pid"].as_i64() } else { None }
    })
}

fn invoke_ok(d: &Daemon, worker: &str) -> bool {
    let ev = json!({"specversion": "1.0", "id": "sb", "source": "urn:test", "type": "t.sb",
                    "datacontenttype": "text/plain", "data": "x"});
    d.send_json("POST", &format!("/v1/workers/{worker}/invoke"), &ev)
        .status
        == 200
}

#[test]
fn a_crash_adopts_the_warm_standby_which_is_replaced_and_none_outlives_the_daemon() {
    let mut d = Daemon::start(DaemonOptions::default().env("HOST_RESPAWN_BACKOFF_MS", "1"));
    let id = chaos_worker(&d, "t.sb", json!({}));
    assert!(invoke_ok(&d, &id));
    let (standby, rss) = wait_standby(&d, None);
    assert!(rss > 0, "the standby's memory is reported");
    assert!(alive(standby));
    let host = host_of(&d, &id).expect("the worker's host");
    assert_ne!(host, standby);

    // SAFETY: kill(2) has no memory preconditions; `host` is a live host of this daemon.
    unsafe { libc::kill(host as libc::pid_t, libc::SIGKILL) };
    let t = Instant::now();
    while host_of(&d, &id).is_none_or(|p| p == host) || !invoke_ok(&d, &id) {
        assert!(t.elapsed() < WAIT, "the worker never answered again");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        host_of(&d, &id),
        Some(standby),
        "the respawn adopted the standby host"
    );
    let (next, _) = wait_standby(&d, Some(standby));
    assert!(alive(next), "a new standby replaced the adopted one");

    // The daemon dies without a shutdown: its hosts, the standby included, die with it.
    d.kill9();
    let t = Instant::now();
    while alive(next) || alive(standby) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "a host outlived its daemon (standby {next} alive: {}, adopted {standby} alive: {})",
            alive(next),
            alive(standby)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn host_standby_0_keeps_no_standby() {
    let d = Daemon::start(DaemonOptions::default().env("HOST_STANDBY", "0"));
    let id = chaos_worker(&d, "t.nosb", json!({}));
    assert!(invoke_ok(&d, &id));
    std::thread::sleep(Duration::from_millis(300));
    let hosts = d.get("/v1/hosts").json();
    assert!(hosts.get("standby").is_none(), "{hosts:#}");
}
