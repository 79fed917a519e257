//! The embedded bus on real SQLite files: durability, settling, group commit, competing
//! consumers, the no-consumer rule, bounded memory, watchers, dead letters, daemon events.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use wm_shared::CloudEvent;
use wm_supervisor::bus::{
    Bus, Consumer, DeadLetterReason, Delivery, Outcome, SqliteBus, SqliteBusOptions, dead_letter,
};
use wm_supervisor::events::{ErrorType, Events, LIFECYCLE_TOPIC, Lifecycle, WorkerRef};

/// Watchdog for every wait: a broken bus fails the test instead of hanging it.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn event(i: usize) -> CloudEvent {
    let mut e = CloudEvent::new(format!("id-{i}"), "com.example.test", "urn:test");
    e.datacontenttype = Some("application/json".into());
    e.data = Some(format!("{{\"n\":{i}}}").into_bytes());
    e.set_extension("tenant", "t1").unwrap();
    e.set_extension("correlationid", format!("c-{i}")).unwrap();
    e
}

pub fn open(dir: &Path) -> Arc<SqliteBus> {
    SqliteBus::open(dir, SqliteBusOptions::default()).unwrap()
}

pub async fn recv(c: &mut Consumer) -> Delivery {
    tokio::time::timeout(WAIT, c.recv())
        .await
        .expect("no delivery within the watchdog timeout")
        .expect("the bus closed the consumer")
}

/// Nothing arrives within a short while (used where an event must NOT be delivered).
async fn assert_quiet(c: &mut Consumer) {
    if let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(300), c.recv()).await {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsettled_events_are_delivered_again_after_reopen_and_settle_removes_them() {
    let dir = tempfile::tempdir().unwrap();
    let sent: Vec<CloudEvent> = (0..3).map(event).collect();
    let seqs = {
        let bus = open(dir.path());
        let mut c = bus.consume("orders", "w1");
        let seqs = bus.publish("orders", sent.clone()).await.unwrap();
        assert_eq!(seqs.len(), 3);
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        for (i, seq) in seqs.iter().enumerate() {
            let d = recv(&mut c).await;
            assert_eq!((d.seq, d.deliveries), (*seq, 1));
            assert_eq!(d.event, sent[i], "the stored event round-trips exactly");
            assert_eq!(d.topic, "orders");
        }
        // Not settled: the daemon "stops" here.
        bus.close().await;
        seqs
    };

    let bus = open(dir.path());
    assert_eq!(bus.metrics().stored(), 3);
    let mut c = bus.consume("orders", "w1");
    for (i, seq) in seqs.iter().enumerate() {
        let d = recv(&mut c).await;
        assert_eq!((d.seq, d.deliveries), (*seq, 2), "redelivery is counted");
        assert_eq!(d.event, sent[i]);
    }
    bus.settle(seqs[0], Outcome::Replied).await.unwrap();
    bus.settle(
        seqs[1],
        Outcome::DeadLettered {
            reason: "timeout".into(),
        },
    )
    .await
    .unwrap();
    // Settling twice is harmless.
    bus.settle(seqs[0], Outcome::Replied).await.unwrap();
    assert_eq!(bus.metrics().settled("replied"), 1);
    assert_eq!(bus.metrics().settled("dead_lettered"), 1);
    drop(c);
    bus.close().await;
    drop(bus);

    let bus = open(dir.path());
    let mut c = bus.consume("orders", "w1");
    let d = recv(&mut c).await;
    assert_eq!((d.seq, d.deliveries), (seqs[2], 3));
    assert_quiet(&mut c).await;
    bus.settle(d.seq, Outcome::Replied).await.unwrap();
    assert_eq!(bus.metrics().stored(), 0);
    // New events get new sequence numbers, never reused ones.
    let next = bus.publish("orders", vec![event(9)]).await.unwrap();
    assert!(next[0] > seqs[2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_share_commits_and_nothing_is_lost() {
    const PUBLISHERS: usize = 64;
    const EACH: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let bus = open(dir.path());
    let barrier = Arc::new(tokio::sync::Barrier::new(PUBLISHERS));
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let bus = bus.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut seqs = Vec::new();
            for i in 0..EACH {
                let s = bus
                    .publish("load", vec![event(p * EACH + i)])
                    .await
                    .unwrap();
                seqs.extend(s);
            }
            seqs
        }));
    }
    let mut acked = BTreeSet::new();
    for t in tasks {
        for s in tokio::time::timeout(WAIT, t).await.unwrap().unwrap() {
            assert!(acked.insert(s), "seq {s} acknowledged twice");
        }
    }
    let total = PUBLISHERS * EACH;
    assert_eq!(acked.len(), total);
    let commits = bus.metrics().commits();
    assert!(
        commits < total as u64,
        "{commits} commits for {total} concurrent publishes: no group commit happened"
    );
    assert_eq!(bus.metrics().published("load"), total as u64);
    bus.close().await;
    drop(bus);

    let bus = open(dir.path());
    assert_eq!(bus.metrics().stored(), total as i64);
    let mut c = bus.consume("load", "w");
    let mut got = BTreeSet::new();
    let mut last = 0;
    for _ in 0..total {
        let d = recv(&mut c).await;
        assert!(d.seq > last, "delivered in sequence order");
        last = d.seq;
        got.insert(d.seq);
    }
    assert_eq!(got, acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn competing_consumers_each_get_distinct_events() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(dir.path());
    let mut a = bus.consume("jobs", "a");
    let mut b = bus.consume("jobs", "b");
    let seqs = bus
        .publish("jobs", (0..40).map(event).collect())
        .await
        .unwrap();
    let mut seen_a = HashSet::new();
    let mut seen_b = HashSet::new();
    for _ in 0..20 {
        seen_a.insert(recv(&mut a).await.seq);
        seen_b.insert(recv(&mut b).await.seq);
    }
    assert!(seen_a.is_disjoint(&seen_b));
    let all: HashSet<u64> = seen_a.union(&seen_b).copied().collect();
    assert_eq!(all, seqs.into_iter().collect());
    assert_quiet(&mut a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_without_a_consumer_wait_until_ready_then_are_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(dir.path());
    // Before ready (recovery not done): held for a worker that comes back.
    bus.publish("nobody", (0..3).map(event).collect())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(bus.metrics().dropped("nobody"), 0);
    assert_eq!(bus.metrics().stored(), 3);
    let mut late = bus.consume("nobody", "late");
    for _ in 0..3 {
        let d = recv(&mut late).await;
        bus.settle(d.seq, Outcome::Replied).await.unwrap();
    }
    drop(late);

    bus.publish("held", (0..5).map(event).collect())
        .await
        .unwrap();
    bus.set_ready();
    wait_until("the held events to be dropped", || {
        bus.metrics().dropped("held") == 5
    })
    .await;
    // After ready: dropped at once, counted per topic and as an outcome.
    bus.publish("nobody", vec![event(7)]).await.unwrap();
    wait_until("the late event to be dropped", || {
        bus.metrics().dropped("nobody") == 1
    })
    .await;
    assert_eq!(bus.metrics().settled("dropped"), 6);
    assert_eq!(bus.metrics().stored(), 0);
    let mut text = String::new();
    bus.render_prometheus(&mut text);
    assert!(text.contains("workmanager_bus_dropped_total{topic=\"held\"} 5\n"));

    // A topic with a consumer is not affected by readiness.
    let mut c = bus.consume("served", "w");
    bus.publish("served", vec![event(1)]).await.unwrap();
    let d = recv(&mut c).await;
    assert_eq!(d.deliveries, 1);
    assert_eq!(bus.metrics().dropped("served"), 0);
    bus.close().await;
    drop(bus);
    let bus = open(dir.path());
    assert_eq!(
        bus.metrics().stored(),
        1,
        "only the unsettled delivery is left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_larger_than_the_memory_window_is_delivered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let opts = SqliteBusOptions {
        memory_window: 8,
        consumer_prefetch: 2,
        ..SqliteBusOptions::default()
    };
    let bus = SqliteBus::open(dir.path(), opts.clone()).unwrap();
    let seqs = bus
        .publish("big", (0..100).map(event).collect())
        .await
        .unwrap();
    let mut c = bus.consume("big", "w");
    for (i, seq) in seqs.iter().enumerate() {
        let d = recv(&mut c).await;
        assert_eq!(d.seq, *seq);
        assert_eq!(d.event.id, format!("id-{i}"));
        bus.settle(d.seq, Outcome::Replied).await.unwrap();
    }
    assert_quiet(&mut c).await;
    drop(c);
    // And on reopen, with more stored than the window.
    bus.publish("big", (0..30).map(event).collect())
        .await
        .unwrap();
    bus.close().await;
    drop(bus);
    let bus = SqliteBus::open(dir.path(), opts).unwrap();
    let mut c = bus.consume("big", "w");
    for i in 0..30 {
        assert_eq!(recv(&mut c).await.event.id, format!("id-{i}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_leaves_gives_back_what_it_had_buffered_without_charging_an_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let opts = SqliteBusOptions {
        consumer_prefetch: 4,
        ..SqliteBusOptions::default()
    };
    let bus = SqliteBus::open(dir.path(), opts).unwrap();
    let first = bus.consume("t", "first");
    let seqs = bus.publish("t", (0..4).map(event).collect()).await.unwrap();
    // Let the writer fill `first`'s buffer, then leave without reading.
    wait_until("the deliveries to be counted", || {
        bus.metrics().commits() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(first);
    let mut second = bus.consume("t", "second");
    // Never returned by `recv`, so never tried: `deliveries` counts attempts, not hand-outs.
    for seq in &seqs {
        let d = recv(&mut second).await;
        assert_eq!((d.seq, d.deliveries), (*seq, 1));
    }
    drop(second);
    // The count given back is also what the store keeps across a restart.
    bus.close().await;
    drop(bus);
    let bus = open(dir.path());
    let mut third = bus.consume("t", "third");
    for seq in seqs {
        let d = recv(&mut third).await;
        assert_eq!(
            (d.seq, d.deliveries),
            (seq, 2),
            "one hand-out was returned by recv"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_see_every_event_and_dead_letters_and_daemon_events_are_published() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(dir.path());
    bus.set_ready();
    let mut watch = bus.watch("orders");
    let mut dead_watch = bus.watch("orders-dead");
    let mut life = bus.watch(LIFECYCLE_TOPIC);
    // No consumer and ready: dropped, yet watchers see it.
    let seqs = bus.publish("orders", vec![event(1)]).await.unwrap();
    let p = tokio::time::timeout(WAIT, watch.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((p.seq, p.event.id.as_str()), (seqs[0], "id-1"));

    let reason = DeadLetterReason {
        error_type: ErrorType::Timeout,
        message: "no reply within 30s".into(),
        attempts: 1,
        worker_id: Some("w1".into()),
    };
    let dyn_bus: Arc<dyn Bus> = bus.clone();
    let dseq = dead_letter(dyn_bus.as_ref(), "orders", &event(1), &reason)
        .await
        .unwrap();
    let d = tokio::time::timeout(WAIT, dead_watch.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.seq, dseq);
    assert_eq!(d.event.extension("deadletterreason"), Some("timeout"));
    assert_eq!(d.event.extension("deadletterworker"), Some("w1"));
    assert_eq!(d.event.extension("correlationid"), Some("c-1"));

    let events = Events::new(dyn_bus);
    let w = WorkerRef {
        id: "w1",
        group: Some("g"),
        topic: "orders",
    };
    events
        .worker(Lifecycle::Failed, w, Some((ErrorType::Crash, "signal 11")))
        .await;
    let l = tokio::time::timeout(WAIT, life.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(l.event.ty, "com.virtufin.workmanager.lifecycle.failed");
    let data: serde_json::Value = serde_json::from_slice(l.event.data.as_deref().unwrap()).unwrap();
    assert_eq!(data["error_type"], "crash");
    assert_eq!(data["group"], "g");

    // After close: publishes are refused, watchers end, events are best effort.
    bus.close().await;
    assert!(matches!(
        bus.publish("orders", vec![event(2)]).await,
        Err(wm_supervisor::bus::BusError::Closed)
    ));
    events.worker(Lifecycle::Stopped, w, None).await;
    assert!(
        tokio::time::timeout(WAIT, watch.recv())
            .await
            .unwrap()
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_input_is_refused_by_the_bus_itself() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(dir.path());
    let err = bus.publish("a b", vec![event(1)]).await.unwrap_err();
    assert!(
        err.to_string().contains("topic name 'a b' is invalid"),
        "{err}"
    );
    let mut bad = event(1);
    bad.source.clear();
    let err = bus.publish("ok", vec![event(0), bad]).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "event 1 of the publish on topic 'ok' is invalid: required attribute 'source' is missing or empty"
    );
    assert_eq!(bus.metrics().stored(), 0, "an invalid batch stores nothing");
    assert!(bus.publish("ok", vec![]).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_on_disk_without_a_consumer_is_dropped_whole_once_ready() {
    let dir = tempfile::tempdir().unwrap();
    let opts = SqliteBusOptions {
        memory_window: 8,
        ..SqliteBusOptions::default()
    };
    let bus = SqliteBus::open(dir.path(), opts.clone()).unwrap();
    bus.publish("orphan", (0..50).map(event).collect())
        .await
        .unwrap();
    bus.close().await;
    drop(bus);
    // After a restart the backlog waits (only the window is in memory) until recovery is done.
    let bus = SqliteBus::open(dir.path(), opts).unwrap();
    assert_eq!(bus.metrics().stored(), 50);
    bus.set_ready();
    wait_until("the backlog to be dropped", || {
        bus.metrics().dropped("orphan") == 50
    })
    .await;
    assert_eq!(bus.metrics().stored(), 0);
    bus.close().await;
    drop(bus);
    let bus = open(dir.path());
    assert_eq!(bus.metrics().stored(), 0, "the drops were persisted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_cannot_open_the_same_store() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(dir.path());
    let opts = SqliteBusOptions {
        lock_timeout: Duration::from_millis(100),
        ..SqliteBusOptions::default()
    };
    let err = SqliteBus::open(dir.path(), opts.clone())
        .err()
        .expect("the store is locked by the first bus");
    assert!(
        err.to_string().contains("is in use by another process"),
        "{err}"
    );
    bus.close().await;
    drop(bus);
    SqliteBus::open(dir.path(), opts).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_deliveries_go_to_the_next_consumer_and_settled_ones_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(dir.path());
    let mut a = bus.consume("q", "a");
    let seqs = bus.publish("q", (0..2).map(event).collect()).await.unwrap();
    let first = recv(&mut a).await;
    let second = recv(&mut a).await;
    bus.settle(second.seq, Outcome::Replied).await.unwrap();
    drop(a);
    let mut b = bus.consume("q", "b");
    // The worker behind `a` stopped with both still queued; one was settled meanwhile.
    bus.release(vec![first, second]);
    let d = recv(&mut b).await;
    assert_eq!((d.seq, d.deliveries), (seqs[0], 2));
    assert_quiet(&mut b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_outrunning_a_topic_overflow_into_dead_letters_not_into_memory_or_loss() {
    let dir = tempfile::tempdir().unwrap();
    let opts = SqliteBusOptions {
        max_topic_backlog: 3,
        ..SqliteBusOptions::default()
    };
    let bus = SqliteBus::open(dir.path(), opts.clone()).unwrap();
    let mut dead = bus.consume("orders-dead", "ops");
    let mut c = bus.consume("orders", "slow");
    let seqs = bus
        .publish("orders", (0..5).map(event).collect())
        .await
        .unwrap();
    assert_eq!(
        seqs.len(),
        5,
        "every event is acknowledged with a sequence number"
    );

    // Three wait on the topic; the two beyond the limit went to its dead-letter topic.
    let first = recv(&mut c).await;
    assert_eq!(first.event.id, "id-0");
    let mut overflowed = [recv(&mut dead).await, recv(&mut dead).await];
    overflowed.sort_by_key(|d| d.event.id.clone());
    for (d, want) in overflowed.iter().zip(["id-3", "id-4"]) {
        assert_eq!(d.event.id, want);
        assert_eq!(d.event.extension("deadletterreason"), Some("overflow"));
        assert!(
            d.event
                .extension("deadlettererror")
                .is_some_and(|e| e.contains("TOPIC_MAX_BACKLOG_EVENTS")),
            "{:?}",
            d.event
        );
    }
    assert_eq!(bus.metrics().overflowed("orders"), 2);

    // Settling makes room again: the next publish stays on the topic.
    bus.settle(first.seq, Outcome::Replied).await.unwrap();
    bus.publish("orders", vec![event(5)]).await.unwrap();
    let mut ids: Vec<String> = Vec::new();
    for _ in 0..3 {
        ids.push(recv(&mut c).await.event.id);
    }
    assert_eq!(ids, ["id-1", "id-2", "id-5"]);
    assert_quiet(&mut dead).await;

    // The count survives a restart: the store still holds three events of the topic.
    drop((c, dead));
    bus.close().await;
    drop(bus);
    let bus = SqliteBus::open(dir.path(), opts).unwrap();
    let mut dead = bus.consume("orders-dead", "ops");
    bus.publish("orders", vec![event(6)]).await.unwrap();
    let d = recv(&mut dead).await;
    // The two earlier dead letters are still unsettled too; find the new one.
    let mut seen = vec![d.event.id.clone()];
    while !seen.iter().any(|i| i == "id-6") {
        seen.push(recv(&mut dead).await.event.id);
    }
    assert!(seen.contains(&"id-6".to_string()), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_stores_the_reply_and_settles_in_one_transaction_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(dir.path());
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
    // A second completion of the same delivery stores nothing: one reply per completion.
    bus.complete(d.seq, Outcome::Replied, Some(("in.reply".into(), reply)))
        .await
        .unwrap();
    assert_eq!(bus.metrics().published("in.reply"), 1);
    assert_eq!(bus.metrics().settled("replied"), 1);
    assert_eq!(
        bus.metrics().stored(),
        1,
        "only the reply is open (no consumer yet)"
    );
    // Completions are atomic across a restart too: the input is gone, the reply is there.
    bus.close().await;
    drop(bus);
    let bus = open(dir.path());
    let mut c = bus.consume("in", "w");
    assert_quiet(&mut c).await;
    let mut r = bus.consume("in.reply", "r");
    assert_eq!(recv(&mut r).await.event.id, "id-100");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replay_window_keeps_ended_events_and_reports_what_left_it() {
    let dir = tempfile::tempdir().unwrap();
    let opts = SqliteBusOptions {
        retention_events: 5,
        ..SqliteBusOptions::default()
    };
    let bus = SqliteBus::open(dir.path(), opts.clone()).unwrap();
    bus.set_ready();
    // Nobody consumes "obs": each event is dropped (counted) but stays readable.
    let first = bus
        .publish("obs", (0..3).map(event).collect())
        .await
        .unwrap();
    wait_until("the drops", || bus.metrics().dropped("obs") == 3).await;
    let page = bus.replay("obs", 0, 100).await.unwrap();
    let seqs: Vec<u64> = page.events.iter().map(|p| p.seq).collect();
    assert_eq!(seqs, first);
    assert_eq!(page.evicted_through, 0);
    let page = bus.replay("obs", first[0], 100).await.unwrap();
    assert_eq!(
        page.events.len(),
        2,
        "strictly after the given sequence number"
    );
    assert_eq!(page.events[0].event.id, "id-1");

    // Beyond 5 events the oldest ended ones leave the window, and the reader is told so.
    let more = bus
        .publish("obs", (3..9).map(event).collect())
        .await
        .unwrap();
    wait_until("the drops", || bus.metrics().dropped("obs") == 9).await;
    bus.publish("obs", vec![event(9)]).await.unwrap();
    let page = bus.replay("obs", 0, 100).await.unwrap();
    assert!(page.events.len() <= 6, "{} events kept", page.events.len());
    assert!(page.evicted_through >= first[2], "{page:?}");
    assert!(page.events.iter().all(|p| p.seq > page.evicted_through));
    assert_eq!(page.events.last().unwrap().event.id, "id-9");
    // The window and what left it survive a restart.
    bus.close().await;
    drop(bus);
    let bus = SqliteBus::open(dir.path(), opts).unwrap();
    let again = bus.replay("obs", more[0], 100).await.unwrap();
    assert_eq!(again.evicted_through, page.evicted_through);
    assert_eq!(again.events.last().unwrap().event.id, "id-9");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_beyond_the_replay_window_is_kept_and_leaves_it_only_once_ended() {
    // The window counts a topic's rows, open or ended, but only ended rows may leave it; a
    // commit trims no more than the topic has ended (the trim would otherwise walk the whole
    // open backlog on every commit: docs/benchmarks.md, the lead's sixth-pass re-run).
    let dir = tempfile::tempdir().unwrap();
    let opts = SqliteBusOptions {
        retention_events: 3,
        consumer_prefetch: 1,
        ..SqliteBusOptions::default()
    };
    let bus = SqliteBus::open(dir.path(), opts).unwrap();
    // Not ready: events of a topic nobody consumes yet wait (a backlog of 8, all open).
    let seqs = bus
        .publish("work", (0..8).map(event).collect())
        .await
        .unwrap();
    bus.publish("work", vec![event(8)]).await.unwrap();
    let page = bus.replay("work", 0, 100).await.unwrap();
    assert_eq!(page.events.len(), 9, "open events never leave the window");
    assert_eq!(page.evicted_through, 0);

    let mut c = bus.consume("work", "w");
    for (i, seq) in seqs.iter().take(2).enumerate() {
        let d = recv(&mut c).await;
        assert_eq!(
            (d.seq, d.event.id.as_str()),
            (*seq, format!("id-{i}").as_str())
        );
        bus.complete(d.seq, Outcome::Replied, None).await.unwrap();
    }
    // The next append to the topic trims the two ended events, and only them.
    bus.publish("work", vec![event(9)]).await.unwrap();
    let page = bus.replay("work", 0, 100).await.unwrap();
    assert_eq!(page.evicted_through, seqs[1], "{page:?}");
    let kept: Vec<&str> = page.events.iter().map(|p| p.event.id.as_str()).collect();
    let want: Vec<String> = (2..10).map(|i| format!("id-{i}")).collect();
    assert_eq!(kept, want);
    // And the backlog is still delivered whole, in order.
    for i in 2..10 {
        let d = recv(&mut c).await;
        assert_eq!(d.event.id, format!("id-{i}"));
        bus.settle(d.seq, Outcome::Replied).await.unwrap();
    }
    assert_quiet(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_topics_wait_for_their_worker_and_dead_letters_are_kept_then_evicted_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let opts = SqliteBusOptions {
        dead_letter_max_events: 3,
        ..SqliteBusOptions::default()
    };
    let bus = SqliteBus::open(dir.path(), opts).unwrap();
    bus.hold("w1", Some("orders"));
    bus.set_ready();
    bus.publish("orders", (0..4).map(event).collect())
        .await
        .unwrap();
    bus.publish("orders-dead", (0..5).map(event).collect())
        .await
        .unwrap();
    // Neither is dropped for want of a consumer: a registered (stopped) worker holds "orders",
    // and dead letters wait for whoever reads them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(bus.metrics().dropped("orders"), 0);
    assert_eq!(bus.metrics().dropped("orders-dead"), 0);
    // Over DEAD_LETTER_MAX_EVENTS: the oldest are evicted (checked every second), counted.
    bus.publish("tick", vec![event(0)]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    bus.publish("tick", vec![event(1)]).await.unwrap();
    wait_until("the eviction", || bus.metrics().evicted("orders-dead") == 2).await;
    let mut text = String::new();
    bus.render_prometheus(&mut text);
    assert!(text.contains("workmanager_bus_dead_letters_evicted_total{topic=\"orders-dead\"} 2\n"));
    let mut dead = bus.consume("orders-dead", "reader");
    let ids: Vec<String> = [
        recv(&mut dead).await,
        recv(&mut dead).await,
        recv(&mut dead).await,
    ]
    .into_iter()
    .map(|d| d.event.id)
    .collect();
    assert_eq!(ids, ["id-2", "id-3", "id-4"]);
    assert_quiet(&mut dead).await;
    // The worker comes back: it gets the whole backlog.
    let mut w = bus.consume("orders", "w1");
    for i in 0..4 {
        assert_eq!(recv(&mut w).await.event.id, format!("id-{i}"));
    }
    drop(w);
    // Once the worker is deleted, its topic is an ordinary one again: dropped and counted.
    bus.hold("w1", None);
    bus.publish("orders", vec![event(9)]).await.unwrap();
    wait_until("the released topic to be dropped", || {
        bus.metrics().dropped("orders") == 1
    })
    .await;
}

/// `commit_delay` (BUS_COMMIT_DELAY_US): a lone publish is committed at once, while
/// concurrent closed-loop publishers are gathered into about one commit per round (one
/// fsync each; without the delay, the spread-out publishers here make several times as many
/// commits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_group_commits_gather_and_a_lone_publish_does_not_wait() {
    const DELAY: Duration = Duration::from_millis(300);
    let dir = tempfile::tempdir().unwrap();
    let bus = SqliteBus::open(
        dir.path(),
        SqliteBusOptions {
            commit_delay: DELAY,
            ..SqliteBusOptions::default()
        },
    )
    .unwrap();
    let before = bus.metrics().commits();
    let t = std::time::Instant::now();
    for i in 0..3 {
        bus.publish("lone", vec![event(i)]).await.unwrap();
    }
    assert!(
        t.elapsed() < DELAY,
        "three lone publishes took {:?}: a lone write must not wait for company",
        t.elapsed()
    );
    assert_eq!(
        bus.metrics().commits() - before,
        3,
        "one commit per lone publish"
    );

    const PUBLISHERS: usize = 16;
    const EACH: usize = 5;
    let before = bus.metrics().commits();
    let barrier = Arc::new(tokio::sync::Barrier::new(PUBLISHERS));
    let tasks: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let (bus, barrier) = (bus.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                for i in 0..EACH {
                    // The first round is a burst, so that a commit carries several writes and
                    // the gathering starts whatever the machine's timing (spread-out lone
                    // writes are committed one by one, by design). After it, each publisher
                    // "thinks" a different while between publishes (like an HTTP round trip),
                    // so their writes arrive spread out and only the delay gathers them.
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(2 + p as u64)).await;
                    }
                    bus.publish("busy", vec![event(100 + p * EACH + i)])
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        tokio::time::timeout(WAIT, t).await.unwrap().unwrap();
    }
    let total = (PUBLISHERS * EACH) as u64;
    let commits = bus.metrics().commits() - before;
    assert!(
        commits <= 2 * EACH as u64,
        "{commits} commits for {total} publishes of {PUBLISHERS} closed-loop publishers: the busy commits did not gather"
    );
    assert_eq!(bus.metrics().published("busy"), total);

    // The company ages out: once a burst made the writer gather (its commit carried several
    // writes), a lone publish after the writer went idle is committed at once, not after
    // the delay.
    let mut gathered = false;
    for round in 0..5 {
        let before = bus.metrics().commits();
        let burst: Vec<_> = (0..8)
            .map(|i| bus.publish("burst", vec![event(1_000 + round * 8 + i)]))
            .collect();
        for r in futures_util::future::join_all(burst).await {
            r.unwrap();
        }
        if bus.metrics().commits() - before == 1 {
            gathered = true; // all eight in one commit: the last batch had company
            break;
        }
    }
    assert!(
        gathered,
        "no burst of 8 concurrent publishes was gathered into one commit"
    );
    tokio::time::sleep(DELAY + Duration::from_millis(100)).await;
    let t = std::time::Instant::now();
    bus.publish("lone", vec![event(2_000)]).await.unwrap();
    assert!(
        t.elapsed() < DELAY,
        "a lone publish after the writer idled took {:?}: it waited for company that left long ago",
        t.elapsed()
    );
    bus.close().await;
}
