//! Cluster mode: a failed call is retried through JetStream (`Nak` with the backoff delay),
//! not by the daemon holding the event, and dead-lettered by the daemon after
//! `WORKER_RETRY_ATTEMPTS` retries (docs/cluster.md, "How the bus contract maps").

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::json;
use wm_testkit::native::{Build, Lang};
use wm_testkit::nats::NatsServer;
use wm_testkit::nupkg;

use crate::cluster::{Reader, cluster_daemon, publish};

fn metric(d: &wm_testkit::daemon::Daemon, name: &str) -> u64 {
    d.get("/metrics")
        .text()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} in /metrics"))
}

#[test]
fn retries_are_naks_with_the_backoff_delay_then_a_dead_letter() {
    let nats = NatsServer::start();
    let d = cluster_daemon(
        &nats.url(),
        &[
            ("WORKER_RETRY_ATTEMPTS", "2"),
            ("WORKER_RETRY_BASE_DELAY_MS", "400"),
        ],
    );
    let so = Build::plugin("chaos", Lang::C, &["chaos.c"]).build();
    let pkg = nupkg::native(
        "Chaos.Worker",
        "chaos",
        &so,
        "<virtufinLibrary>chaos</virtufinLibrary>",
    );
    let body = json!({
        "mimeType": "application/x-native-dll",
        "topic": "rt.in",
        "codeSource": {"content": base64::engine::general_purpose::STANDARD.encode(pkg)},
    });
    let r = d.send_json("POST", "/v1/workers", &body);
    assert_eq!(r.status, 201, "create: {}", r.text());
    let id = r.json()["id"].as_str().expect("id").to_string();
    assert!(d.post(&format!("/v1/workers/{id}/start")).status < 300);

    let reader = Reader::new(&nats.url(), 1);
    let started = Instant::now();
    publish(&d, "rt.in", "poison", "fail");
    reader.wait_ids("rt.in-dead", 1, "the dead letter");
    let took = started.elapsed();
    eprintln!("dead-lettered {took:?} after the publish");
    // Two retries, 400 ms then 800 ms later (WORKER_RETRY_BASE_DELAY_MS doubling).
    assert!(
        took >= Duration::from_millis(1200),
        "dead-lettered after {took:?}: the retry delays were not kept"
    );
    assert_eq!(
        metric(&d, "workmanager_bus_retries_delayed_total"),
        2,
        "both retries went through JetStream"
    );
    let dead = reader.events("rt.in-dead");
    assert_eq!(dead.len(), 1, "one dead letter");
    assert_eq!(dead[0].id, "poison", "the original message id");
    assert_eq!(dead[0].extension("deadletterattempts"), Some("3"));
    // A good event still goes through at once.
    publish(&d, "rt.in", "fine", "x");
    reader.wait_ids("rt.in.reply", 1, "the reply of a good event");
}
