//! The shared registry end to end (`REGISTRY_BACKEND=jetstream`, docs/cluster.md): three real
//! daemons on one real nats-server. A worker created on one runs on all three; events
//! published on each are handled; tags, state, deletes reach every daemon; `replicas: 1`
//! runs on exactly one daemon and moves when that daemon is SIGKILLed; the start-up recovery
//! is run by exactly one daemon.

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use wm_testkit::daemon::Daemon;
use wm_testkit::native::{Build, Lang};
use wm_testkit::nats::NatsServer;
use wm_testkit::nupkg;

use crate::cluster::{Reader, WAIT, cluster_daemon, publish, tail};

fn package(name: &str) -> String {
    let so = Build::plugin(name, Lang::C, &[&format!("{name}.c")]).build();
    let pkg = nupkg::native(
        "Cluster.Worker",
        name,
        &so,
        &format!("<virtufinLibrary>{name}</virtufinLibrary>"),
    );
    base64::engine::general_purpose::STANDARD.encode(pkg)
}

/// Creates and starts a worker on `d`; `extra` is merged into the create body.
fn create(d: &Daemon, code: &str, topic: &str, extra: Value) -> String {
    let mut body = json!({
        "mimeType": "application/x-native-dll",
        "topic": topic,
        "codeSource": {"content": code},
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let r = d.send_json("POST", "/v1/workers", &body);
    assert_eq!(r.status, 201, "create: {}", r.text());
    let id = r.json()["id"].as_str().expect("id").to_string();
    let r = d.post(&format!("/v1/workers/{id}/start"));
    assert!(r.status < 300, "start: {}", r.text());
    id
}

fn invoke(d: &Daemon, id: &str, data: &str) -> wm_testkit::daemon::http::Response {
    let ev = json!({"specversion": "1.0", "id": format!("inv-{data}"), "source": "urn:test",
                    "type": "cl.invoke", "datacontenttype": "text/plain", "data": data});
    d.send_json("POST", &format!("/v1/workers/{id}/invoke"), &ev)
}

/// Polls `check` on `d` until it returns `Some`, or fails with the daemon's log.
fn wait_for<T>(d: &Daemon, what: &str, mut check: impl FnMut(&Daemon) -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check(d) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {WAIT:?}\ndaemon log:\n{}",
            tail(&d.log())
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn instance_of(d: &Daemon) -> String {
    let pid = d.pid().expect("pid");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    format!("workmanager@{}:{pid}", host.trim())
}

fn leader_runs(d: &Daemon) -> u64 {
    d.get("/metrics")
        .text()
        .lines()
        .find_map(|l| l.strip_prefix("workmanager_recovery_leader_runs_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("workmanager_recovery_leader_runs_total in /metrics")
}

/// The reply data of a 200 invoke of the hostile fixture (a JSON text).
fn reply_json(r: &wm_testkit::daemon::http::Response) -> Value {
    assert_eq!(r.status, 200, "invoke: {}", r.text());
    let v = r.json();
    match &v["data"] {
        Value::String(s) => serde_json::from_str(s).unwrap_or(Value::Null),
        other => other.clone(),
    }
}

#[test]
fn three_daemons_share_one_registry_placement_state_and_recovery() {
    let nats = NatsServer::start();
    let env = [("REGISTRY_BACKEND", "jetstream")];
    let mut ds: Vec<Daemon> = (0..3).map(|_| cluster_daemon(&nats.url(), &env)).collect();

    // Recovery at start: exactly one daemon ran it as the lease holder.
    let runs: Vec<u64> = ds.iter().map(leader_runs).collect();
    assert_eq!(runs.iter().sum::<u64>(), 1, "recovery leaders: {runs:?}");

    // A worker created on one daemon runs on all three and is listed by all.
    let chaos = package("chaos");
    let id = create(&ds[0], &chaos, "reg.in", json!({"maxConcurrency": 2}));
    for d in &ds {
        wait_for(d, "the worker RUNNING here, placed on all three", |d| {
            let w = d.get(&format!("/v1/workers/{id}")).json();
            (w["status"] == "RUNNING"
                && w["placement"]["instances"].as_array().map(Vec::len) == Some(3)
                && w["placement"]["replicas"].is_null())
            .then_some(())
        });
        let listed = d.get("/v1/workers").json();
        assert!(
            listed["workers"]
                .as_array()
                .is_some_and(|a| a.iter().any(|w| w["id"] == id.as_str())),
            "not listed: {listed:#}"
        );
        wait_for(d, "the worker answering an invoke here", |d| {
            (invoke(d, &id, "hello").status == 200).then_some(())
        });
    }
    // Events published on each daemon are handled.
    let reader = Reader::new(&nats.url(), 1);
    for (i, d) in ds.iter().enumerate() {
        for n in 0..4 {
            publish(d, "reg.in", &format!("e{i}-{n}"), "x");
        }
    }
    let replies = reader.wait_ids(
        "reg.in.reply",
        12,
        "replies of events published on all three",
    );
    assert!(replies.values().all(|&n| n == 1), "duplicates: {replies:?}");

    // A tag set on one daemon is seen on another.
    let r = ds[2].send_json(
        "PUT",
        &format!("/v1/workers/{id}/tags/owner"),
        &json!({"value": "team-c"}),
    );
    assert!(r.status < 300, "tag: {}", r.text());
    wait_for(&ds[0], "the tag set on daemon 2", |d| {
        (d.get(&format!("/v1/workers/{id}")).json()["tags"]["owner"] == "team-c").then_some(())
    });

    // Gateway state written by a call on one daemon is read by a call on another.
    let hostile = package("hostile");
    let st = create(&ds[1], &hostile, "reg.state", json!({}));
    for d in [&ds[1], &ds[2]] {
        wait_for(d, "the state worker loaded", |d| {
            (invoke(d, &st, "state-get:none").status == 200).then_some(())
        });
    }
    let set = reply_json(&invoke(&ds[1], &st, "state-set:color:blue"));
    assert_eq!(set["status"], 0, "state Set on daemon 1: {set:#}");
    let got = reply_json(&invoke(&ds[2], &st, "state-get:color"));
    assert!(
        got["response"].as_str().is_some_and(|r| r.contains("blue")),
        "state Get on daemon 2 sees daemon 1's write: {got:#}"
    );

    // Delete on one daemon removes it everywhere (registry and runtime).
    let r = ds[2].delete(&format!("/v1/workers/{st}"));
    assert!(r.status < 300, "delete: {}", r.text());
    for d in &ds {
        wait_for(d, "the deleted worker gone", |d| {
            (d.get(&format!("/v1/workers/{st}")).status == 404
                && invoke(d, &st, "state-get:color").status == 404)
                .then_some(())
        });
    }

    // replicas: 1 runs on exactly one daemon, the same one on every daemon's view.
    let one = create(&ds[0], &chaos, "reg.one", json!({"replicas": 1}));
    let placed = wait_for(&ds[0], "replicas: 1 placed", |d| {
        let w = d.get(&format!("/v1/workers/{one}")).json();
        let inst = w["placement"]["instances"].as_array()?.clone();
        (w["status"] == "RUNNING" && inst.len() == 1 && w["placement"]["replicas"] == 1)
            .then(|| inst[0].as_str().unwrap_or_default().to_owned())
    });
    let holder = ds
        .iter()
        .position(|d| instance_of(d) == placed)
        .unwrap_or_else(|| panic!("{placed} is none of the daemons"));
    for (i, d) in ds.iter().enumerate() {
        let loaded = wait_for(d, "the replicas: 1 worker loaded only where placed", |d| {
            let w = d.get(&format!("/v1/workers/{one}")).json();
            let here = !w["hostPid"].is_null();
            (w["placement"]["instances"] == json!([placed]) && here == (i == holder))
                .then_some(here)
        });
        assert_eq!(loaded, i == holder);
    }
    assert_eq!(invoke(&ds[holder], &one, "x").status, 200);

    // SIGKILL the daemon running it: it moves to a survivor once the dead one's membership
    // ages out (three missed heartbeats).
    ds[holder].kill9();
    let killed = Instant::now();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != holder).collect();
    let moved_to = wait_for(&ds[survivors[0]], "the worker re-placed", |d| {
        let w = d.get(&format!("/v1/workers/{one}")).json();
        let inst = w["placement"]["instances"].as_array()?.clone();
        (inst.len() == 1 && inst[0] != placed.as_str())
            .then(|| inst[0].as_str().unwrap_or_default().to_owned())
    });
    let new_holder = survivors
        .iter()
        .copied()
        .find(|&i| instance_of(&ds[i]) == moved_to)
        .expect("moved to a survivor");
    wait_for(&ds[new_holder], "the moved worker answering", |d| {
        (invoke(d, &one, "x").status == 200).then_some(())
    });
    eprintln!(
        "replicas: 1 moved from daemon {holder} to {new_holder} {:?} after the kill",
        killed.elapsed()
    );
    publish(&ds[new_holder], "reg.one", "after-move", "x");
    reader.wait_ids("reg.one.reply", 1, "an event handled after the move");
}
