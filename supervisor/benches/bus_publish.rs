//! Publish throughput of the embedded bus: 1 and 64 concurrent publishers, one event per
//! publish, each acknowledged only once committed (group commit). Prints events/s and the
//! group-commit factor (publishes per transaction) for both durability modes.
//!
//! Run: `cargo bench -p workmanager-supervisor --bench bus_publish`
//! (`BUS_BENCH_EVENTS` sets the events per run, default 4000).

use std::sync::Arc;
use std::time::Instant;

use wm_shared::CloudEvent;
use wm_supervisor::bus::{Bus, Durability, SqliteBus, SqliteBusOptions};

fn event(i: usize) -> CloudEvent {
    let mut e = CloudEvent::new(format!("id-{i}"), "com.example.bench", "urn:bench");
    e.datacontenttype = Some("application/json".into());
    e.data = Some(format!("{{\"n\":{i},\"payload\":\"{}\"}}", "x".repeat(200)).into_bytes());
    e
}

async fn run(durability: Durability, publishers: usize, total: usize) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let bus = SqliteBus::open(
        dir.path(),
        SqliteBusOptions {
            durability,
            ..SqliteBusOptions::default()
        },
    )
    .expect("open bus");
    let each = total / publishers;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let bus: Arc<SqliteBus> = bus.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..each {
                bus.publish("bench", vec![event(p * each + i)])
                    .await
                    .expect("publish");
            }
        }));
    }
    for t in tasks {
        t.await.expect("publisher task");
    }
    let secs = start.elapsed().as_secs_f64();
    let published = (each * publishers) as f64;
    let commits = bus.metrics().commits() as f64;
    bus.close().await;
    (published / secs, published / commits.max(1.0))
}

/// Publish -> consumer latency, one event at a time (each includes its commit).
async fn latency(durability: Durability, n: usize) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let bus = SqliteBus::open(
        dir.path(),
        SqliteBusOptions {
            durability,
            ..SqliteBusOptions::default()
        },
    )
    .expect("open bus");
    let mut consumer = bus.consume("lat", "bench");
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        bus.publish("lat", vec![event(i)]).await.expect("publish");
        let d = consumer.recv().await.expect("delivery");
        samples.push(start.elapsed().as_secs_f64() * 1e6);
        bus.settle(d.seq, wm_supervisor::bus::Outcome::Replied)
            .await
            .expect("settle");
    }
    samples.sort_by(f64::total_cmp);
    let p = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    drop(consumer);
    bus.close().await;
    (p(0.5), p(0.99))
}

fn main() {
    let total: usize = std::env::var("BUS_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("bus publish throughput, {total} events of ~260 bytes, one event per publish");
    for durability in [Durability::Fsync, Durability::Os] {
        for publishers in [1, 64] {
            let n = if publishers == 1 { total / 4 } else { total };
            let (rate, per_commit) = rt.block_on(run(durability, publishers, n));
            println!(
                "  {durability:?}, {publishers:>2} publisher(s): {rate:>9.0} publishes/s, {per_commit:>6.1} publishes per commit"
            );
        }
    }
    println!("publish -> delivery latency, one event at a time, settled after each");
    for durability in [Durability::Fsync, Durability::Os] {
        let (p50, p99) = rt.block_on(latency(durability, 500));
        println!("  {durability:?}: p50 {p50:.0} us, p99 {p99:.0} us");
    }
}
