//! The bus contract, one generic suite run against every backend (as iceoryx2 runs one suite
//! per transport): the embedded SQLite bus and the NATS JetStream bus on a real `nats-server`
//! started on a free loopback port. What only one backend does (group commit, the memory
//! window, the backlog overflow, the store lock) stays in `bus_store.rs`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use wm_shared::CloudEvent;
use wm_supervisor::bus::{
    Bus, BusError, BusMetrics, Consumer, Delivery, JetStreamBus, JetStreamBusOptions, Outcome,
    SqliteBus, SqliteBusOptions,
};
use wm_supervisor::cluster::{NatsSettings, connect};
use wm_testkit::nats::NatsServer;

const WAIT: Duration = Duration::from_secs(20);

/// A place a bus can be opened, closed and opened again (the "restart" of the contract).
trait Backend: Sized {
    fn new() -> Self;
    async fn open(&self) -> Opened;
}

/// An open bus with its counters.
enum Opened {
    Sqlite(Arc<SqliteBus>),
    Js(Arc<JetStreamBus>),
}

impl Opened {
    fn bus(&self) -> Arc<dyn Bus> {
        match self {
            Opened::Sqlite(b) => b.clone(),
            Opened::Js(b) => b.clone(),
        }
    }
    fn metrics(&self) -> &BusMetrics {
        match self {
            Opened::Sqlite(b) => b.metrics(),
            Opened::Js(b) => b.metrics(),
        }
    }
}

struct Embedded(tempfile::TempDir);

impl Backend for Embedded {
    fn new() -> Self {
        Embedded(tempfile::tempdir().unwrap())
    }
    async fn open(&self) -> Opened {
        Opened::Sqlite(SqliteBus::open(self.0.path(), SqliteBusOptions::default()).unwrap())
    }
}

struct JetStream(NatsServer);

impl Backend for JetStream {
    fn new() -> Self {
        JetStream(NatsServer::start())
    }
    async fn open(&self) -> Opened {
        let mut s = NatsSettings::for_url(&self.0.url());
        // The shortest ack wait: a "crashed" bus's deliveries come back within seconds.
        s.ack_wait = Duration::from_secs(2);
        let conn = connect(&s, "contract-test").await.unwrap();
        Opened::Js(
            JetStreamBus::open(conn, s, JetStreamBusOptions::default())
                .await
                .unwrap(),
        )
    }
}

fn event(i: usize) -> CloudEvent {
    let mut e = CloudEvent::new(format!("id-{i}"), "com.example.test", "urn:test");
    e.datacontenttype = Some("application/json".into());
    e.data = Some(format!("{{\"n\":{i}}}").into_bytes());
    e.set_extension("tenant", "t1").unwrap();
    e.set_extension("correlationid", format!("c-{i}")).unwrap();
    e
}

async fn recv(c: &mut Consumer) -> Delivery {
    tokio::time::timeout(WAIT, c.recv())
        .await
        .expect("no delivery within the watchdog timeout")
        .expect("the bus closed the consumer")
}

async fn assert_quiet(c: &mut Consumer, ms: u64) {
    if let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(ms), c.recv()).await {
        panic!("unexpected delivery of seq {}", d.seq);
    }
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Events round-trip exactly, in order; unsettled ones come back after a restart with the
/// attempt counted; settled ones do not; sequence numbers are never reused.
async fn redelivery_after_restart<B: Backend>() {
    let b = B::new();
    let sent: Vec<CloudEvent> = (0..3).map(event).collect();
    let seqs = {
        let o = b.open().await;
        let bus = o.bus();
        let mut c = bus.consume("orders.v1", "w1");
        let seqs = bus.publish("orders.v1", sent.clone()).await.unwrap();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        for (i, seq) in seqs.iter().enumerate() {
            let d = recv(&mut c).await;
            assert_eq!((d.seq, d.deliveries), (*seq, 1));
            assert_eq!(d.event, sent[i], "the stored event round-trips exactly");
            assert_eq!(d.topic, "orders.v1");
        }
        bus.settle(seqs[0], Outcome::Replied).await.unwrap();
        bus.settle(seqs[0], Outcome::Replied).await.unwrap();
        drop(c);
        bus.close().await;
        seqs
    };
    let o = b.open().await;
    let bus = o.bus();
    let mut c = bus.consume("orders.v1", "w1");
    // Redeliveries come in any order (JetStream redelivers in the order of its timers).
    let mut again = Vec::new();
    for _ in &seqs[1..] {
        let d = recv(&mut c).await;
        again.push((d.seq, d.deliveries));
        bus.settle(d.seq, Outcome::Replied).await.unwrap();
    }
    again.sort();
    assert_eq!(
        again,
        vec![(seqs[1], 2), (seqs[2], 2)],
        "redelivery is counted"
    );
    assert_quiet(&mut c, 500).await;
    let next = bus.publish("orders.v1", vec![event(9)]).await.unwrap();
    assert!(next[0] > seqs[2]);
    assert_eq!(recv(&mut c).await.seq, next[0]);
}

/// Consumers of one topic compete: together they get every event, each exactly once.
async fn competing_consumers<B: Backend>() {
    let b = B::new();
    let o = b.open().await;
    let bus = o.bus();
    let mut a = bus.consume("jobs", "a");
    let mut c2 = bus.consume("jobs", "b");
    let seqs = bus
        .publish("jobs", (0..40).map(event).collect())
        .await
        .unwrap();
    let mut seen = HashSet::new();
    for _ in 0..40 {
        let d = tokio::select! {
            d = a.recv() => d,
            d = c2.recv() => d,
            _ = tokio::time::sleep(WAIT) => panic!("deliveries stopped at {}", seen.len()),
        }
        .unwrap();
        assert!(seen.insert(d.seq), "seq {} delivered twice", d.seq);
        bus.settle(d.seq, Outcome::Replied).await.unwrap();
    }
    assert_eq!(seen, seqs.into_iter().collect());
    assert_quiet(&mut a, 300).await;
    assert_quiet(&mut c2, 100).await;
}

/// `complete` publishes the reply and settles the input, once: a second completion of the
/// same delivery publishes nothing, and after a restart the input is gone.
async fn complete_exactly_once<B: Backend>() {
    let b = B::new();
    let o = b.open().await;
    let bus = o.bus();
    let mut c = bus.consume("in", "w");
    let mut replies = bus.watch("in.reply");
    bus.publish("in", vec![event(1)]).await.unwrap();
    let d = recv(&mut c).await;
    let mut reply = event(100);
    reply.ty = "in.reply".into();
    bus.complete(
        d.seq,
        Outcome::Replied,
        Some(("in.reply".into(), reply.clone())),
    )
    .await
    .unwrap();
    let p = tokio::time::timeout(WAIT, replies.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(p.event.id, "id-100");
    bus.complete(d.seq, Outcome::Replied, Some(("in.reply".into(), reply)))
        .await
        .unwrap();
    assert_eq!(o.metrics().published("in.reply"), 1);
    assert_eq!(o.metrics().settled("replied"), 1);
    drop(c);
    bus.close().await;
    let o = b.open().await;
    let bus = o.bus();
    let mut c = bus.consume("in", "w");
    let mut r = bus.consume("in.reply", "r");
    assert_eq!(recv(&mut r).await.event.id, "id-100");
    assert_quiet(&mut r, 300).await;
    assert_quiet(&mut c, 300).await;
}

/// Released deliveries go to the next consumer; one given back untried is not charged an
/// attempt; settled ones are not given back.
async fn release_and_untried<B: Backend>() {
    let b = B::new();
    let o = b.open().await;
    let bus = o.bus();
    let mut first = bus.consume("t", "first");
    let seqs = bus.publish("t", (0..3).map(event).collect()).await.unwrap();
    let d0 = recv(&mut first).await;
    let d1 = recv(&mut first).await;
    let d2 = recv(&mut first).await;
    bus.settle(d2.seq, Outcome::Replied).await.unwrap();
    let tried = d0.clone();
    let mut untried = d1.clone();
    untried.deliveries -= 1;
    bus.release(vec![tried, untried, d2]);
    drop(first);
    let mut second = bus.consume("t", "second");
    let mut got = [recv(&mut second).await, recv(&mut second).await];
    got.sort_by_key(|d| d.seq);
    assert_eq!(
        got.iter()
            .map(|d| (d.seq, d.deliveries))
            .collect::<Vec<_>>(),
        vec![(seqs[0], 2), (seqs[1], 1)],
        "a tried release counts, an untried one does not; the settled one stays settled"
    );
    assert_quiet(&mut second, 500).await;
}

/// Watchers see every published event, whatever becomes of it; replay reads a topic after a
/// sequence number; invalid input is refused; a closed bus refuses publishes.
async fn watch_replay_and_refusals<B: Backend>() {
    let b = B::new();
    let o = b.open().await;
    let bus = o.bus();
    let mut w = bus.watch("obs");
    let seqs = bus
        .publish("obs", (0..3).map(event).collect())
        .await
        .unwrap();
    for s in &seqs {
        let p = tokio::time::timeout(WAIT, w.recv()).await.unwrap().unwrap();
        assert_eq!(p.seq, *s);
    }
    bus.publish("other", vec![event(7)]).await.unwrap();
    let page = bus.replay("obs", 0, 100).await.unwrap();
    assert_eq!(page.events.iter().map(|p| p.seq).collect::<Vec<_>>(), seqs);
    assert_eq!(page.evicted_through, 0);
    let page = bus.replay("obs", seqs[0], 1).await.unwrap();
    assert_eq!(page.events.len(), 1, "limit and strictly-after");
    assert_eq!(page.events[0].event.id, "id-1");
    assert!(matches!(
        bus.publish("a b", vec![event(1)]).await,
        Err(BusError::InvalidTopic(_))
    ));
    let mut bad = event(1);
    bad.id = String::new();
    assert!(matches!(
        bus.publish("obs", vec![bad]).await,
        Err(BusError::InvalidEvent { index: 0, .. })
    ));
    bus.close().await;
    assert!(matches!(
        bus.publish("obs", vec![event(2)]).await,
        Err(BusError::Closed)
    ));
}

/// Before ready, events on a topic nobody consumes wait for a late consumer; after ready a
/// publish on a topic with neither consumer nor registered worker is dropped and counted,
/// while a held topic keeps its events for its worker.
async fn readiness_and_holds<B: Backend>() {
    let b = B::new();
    let o = b.open().await;
    let bus = o.bus();
    bus.publish("nobody", (0..3).map(event).collect())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(o.metrics().dropped("nobody"), 0);
    let mut late = bus.consume("nobody", "late");
    for _ in 0..3 {
        let d = recv(&mut late).await;
        bus.settle(d.seq, Outcome::Replied).await.unwrap();
    }
    drop(late);
    bus.hold("w-held", Some("held"));
    bus.set_ready();
    tokio::time::sleep(Duration::from_millis(200)).await;
    bus.publish("unheld", vec![event(7)]).await.unwrap();
    wait_until("the unheld event to be dropped", || {
        o.metrics().dropped("unheld") == 1
    })
    .await;
    let held = bus.publish("held", vec![event(8)]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(o.metrics().dropped("held"), 0);
    let mut c = bus.consume("held", "w-held");
    assert_eq!(recv(&mut c).await.seq, held[0]);
}

macro_rules! contract_suite {
    ($module:ident, $backend:ty) => {
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redelivery_after_restart() {
                super::redelivery_after_restart::<$backend>().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn competing_consumers() {
                super::competing_consumers::<$backend>().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn complete_exactly_once() {
                super::complete_exactly_once::<$backend>().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn release_and_untried() {
                super::release_and_untried::<$backend>().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn watch_replay_and_refusals() {
                super::watch_replay_and_refusals::<$backend>().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn readiness_and_holds() {
                super::readiness_and_holds::<$backend>().await;
            }
        }
    };
}

contract_suite!(embedded, Embedded);
contract_suite!(jetstream, JetStream);
