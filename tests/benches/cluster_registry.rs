//! Issue 15: what the shared registry (`REGISTRY_BACKEND=jetstream`) costs against the
//! embedded one, measured in the same run, alternating embedded / jetstream rounds.
//! Results go to docs/benchmarks.md ("Cluster registry").
//!
//! - registry write: `PUT /v1/workers/{id}/tags/{key}` (one CAS on KV, then the local view;
//!   embedded: one SQLite transaction);
//! - gateway state: `POST /v1/workers/{id}/invoke` of the hostile fixture's
//!   `state-set:<key>:<value>` (the worker's `state` Set goes to KV; embedded: SQLite), the
//!   whole invoke timed;
//! - propagation (jetstream only): a tag written on daemon A until `GET` on daemon B shows it
//!   (polled every 2 ms).
//!
//! `cargo bench -p workmanager-tests --bench cluster_registry` (needs `nats-server`, see
//! scripts/install-deps.sh). `CLUSTER_BENCH_RUNS` (default 2) repeats the whole set.

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::json;
use wm_testkit::daemon::{Daemon, DaemonOptions};
use wm_testkit::native::{Build, Lang};
use wm_testkit::nats::NatsServer;
use wm_testkit::nupkg;

const OPS: usize = 200;
const PROPAGATIONS: usize = 50;

fn pct(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() - 1) as f64 * p) as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// A running hostile-fixture worker on `d`; its id.
fn worker(d: &Daemon, pkg: &str) -> String {
    let body = json!({
        "mimeType": "application/x-native-dll",
        "topic": "bench.reg",
        "codeSource": {"content": pkg},
    });
    let r = d.send_json("POST", "/v1/workers", &body);
    assert_eq!(r.status, 201, "create: {}", r.text());
    let id = r.json()["id"].as_str().expect("id").to_string();
    let r = d.post(&format!("/v1/workers/{id}/start"));
    assert!(r.status < 300, "start: {}", r.text());
    id
}

fn invoke(d: &Daemon, id: &str, data: &str) -> u16 {
    let ev = json!({"specversion": "1.0", "id": "b", "source": "urn:bench", "type": "bench",
                    "datacontenttype": "text/plain", "data": data});
    d.send_json("POST", &format!("/v1/workers/{id}/invoke"), &ev)
        .status
}

/// (tag write p50, p99, state invoke p50, p99) over `OPS` each.
fn measure(d: &Daemon, id: &str, round: usize) -> [Duration; 4] {
    // The host is warm and the worker answers before timing starts.
    let deadline = Instant::now() + Duration::from_secs(60);
    while invoke(d, id, "state-get:warm") != 200 {
        assert!(Instant::now() < deadline, "the worker never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut tags = Vec::with_capacity(OPS);
    for i in 0..OPS {
        let t = Instant::now();
        let r = d.send_json(
            "PUT",
            &format!("/v1/workers/{id}/tags/k{}", i % 40),
            &json!({"value": format!("v{round}-{i}")}),
        );
        tags.push(t.elapsed());
        assert!(r.status < 300, "tag: {}", r.text());
    }
    let mut states = Vec::with_capacity(OPS);
    for i in 0..OPS {
        let t = Instant::now();
        let status = invoke(d, id, &format!("state-set:s{}:v{i}", i % 40));
        states.push(t.elapsed());
        assert_eq!(status, 200, "state invoke");
    }
    [
        pct(&mut tags, 0.5),
        pct(&mut tags, 0.99),
        pct(&mut states, 0.5),
        pct(&mut states, 0.99),
    ]
}

fn propagation(a: &Daemon, b: &Daemon, id: &str) -> (Duration, Duration) {
    let mut v = Vec::with_capacity(PROPAGATIONS);
    for i in 0..PROPAGATIONS {
        let value = format!("p{i}");
        let t = Instant::now();
        let r = a.send_json(
            "PUT",
            &format!("/v1/workers/{id}/tags/prop"),
            &json!({"value": value}),
        );
        assert!(r.status < 300, "tag: {}", r.text());
        loop {
            if b.get(&format!("/v1/workers/{id}")).json()["tags"]["prop"] == value.as_str() {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(30), "never propagated");
            std::thread::sleep(Duration::from_millis(2));
        }
        v.push(t.elapsed());
    }
    (pct(&mut v, 0.5), pct(&mut v, 0.99))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runs: usize = std::env::var("CLUSTER_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let so = Build::plugin("hostile", Lang::C, &["hostile.c"]).build();
    let pkg = base64::engine::general_purpose::STANDARD.encode(nupkg::native(
        "Bench.Hostile",
        "hostile",
        &so,
        "<virtufinLibrary>hostile</virtufinLibrary>",
    ));
    let nats = NatsServer::start();
    let quiet = || DaemonOptions::default().env("WORKMANAGER_LOG", "warn");
    let embedded = Daemon::start(quiet());
    let shared = || {
        Daemon::start(
            quiet()
                .env("BUS_BACKEND", "jetstream")
                .env("REGISTRY_BACKEND", "jetstream")
                .env("NATS_URL", &nats.url()),
        )
    };
    let (a, b) = (shared(), shared());
    let e_id = worker(&embedded, &pkg);
    let j_id = worker(&a, &pkg);
    println!(
        "| run | registry | tag write p50 / p99 | ratio p50 | state Set invoke p50 / p99 | ratio p50 | load avg |"
    );
    println!("|---|---|---|---|---|---|---|");
    for round in 1..=runs {
        let e = measure(&embedded, &e_id, round);
        let j = measure(&a, &j_id, round);
        println!(
            "| {round} | embedded (baseline) | {:.2} / {:.2} ms | 1.00 | {:.2} / {:.2} ms | 1.00 | {} |",
            ms(e[0]),
            ms(e[1]),
            ms(e[2]),
            ms(e[3]),
            load_average()
        );
        println!(
            "| {round} | jetstream | {:.2} / {:.2} ms | {:.2} | {:.2} / {:.2} ms | {:.2} | {} |",
            ms(j[0]),
            ms(j[1]),
            ms(j[0]) / ms(e[0]).max(1e-3),
            ms(j[2]),
            ms(j[3]),
            ms(j[2]) / ms(e[2]).max(1e-3),
            load_average()
        );
        let (p50, p99) = propagation(&a, &b, &j_id);
        println!(
            "| {round} | jetstream, A to B propagation | {:.2} / {:.2} ms | | | | {} |",
            ms(p50),
            ms(p99),
            load_average()
        );
    }
}
