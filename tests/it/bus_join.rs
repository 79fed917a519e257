//! The join window (`BUS_JOIN_WINDOW_US`, fsync only): a group commit whose events went to
//! their consumer before the COMMIT keeps its transaction open for their completions, so one
//! event of a quick worker is one commit (one fsync), not two; a worker that does not answer
//! within the window does not hold the publish back (it is committed alone).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use wm_supervisor::bus::{Bus, Consumer, Outcome, SqliteBus, SqliteBusOptions};

use crate::bus_store::{WAIT, event, recv};

fn open(dir: &std::path::Path, window: Duration) -> Arc<SqliteBus> {
    SqliteBus::open(
        dir,
        SqliteBusOptions {
            join_window: window,
            ..SqliteBusOptions::default()
        },
    )
    .unwrap()
}

/// Marks the bus ready and waits until the writer applied it (a replay queues behind it).
async fn ready(bus: &SqliteBus) {
    bus.set_ready();
    bus.replay("in", 0, 1).await.unwrap();
}

/// A quick worker: completes each event with a reply as soon as it has it, counting the
/// completions the bus acknowledged in `done`.
fn echo(
    bus: Arc<SqliteBus>,
    mut c: Consumer,
    done: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(d) = c.recv().await {
            let mut r = d.event.clone();
            r.id = format!("r-{}", d.event.id);
            match bus
                .complete(d.seq, Outcome::Replied, Some(("in.reply".into(), r)))
                .await
            {
                Ok(()) => done.fetch_add(1, Ordering::SeqCst),
                Err(_) => break,
            };
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quick_workers_completion_joins_its_publishs_commit() {
    // A window far longer than any round trip: each publish ends as soon as its completion
    // is in (the test would take N windows otherwise), never by the window's end.
    const WINDOW: Duration = Duration::from_secs(5);
    const N: usize = 10;
    let dir = tempfile::tempdir().unwrap();
    let bus = open(dir.path(), WINDOW);
    let c = bus.consume("in", "w");
    ready(&bus).await;
    let done = Arc::new(AtomicUsize::new(0));
    let worker = echo(bus.clone(), c, done.clone());
    let commits = bus.metrics().commits();
    let joined = bus.metrics().joined_writes();
    let started = Instant::now();
    for i in 0..N {
        tokio::time::timeout(WAIT, bus.publish("in", vec![event(i)]))
            .await
            .expect("a publish hung")
            .unwrap();
        // One event at a time: the next is published once this one's completion is answered.
        let deadline = Instant::now() + WAIT;
        while done.load(Ordering::SeqCst) <= i {
            assert!(Instant::now() < deadline, "event {i} was never completed");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    assert!(
        started.elapsed() < WINDOW,
        "{N} events took {:?}: the commits waited for the window's end instead of the completions",
        started.elapsed()
    );
    assert_eq!(
        bus.metrics().commits() - commits,
        N as u64,
        "one commit per event (its publish and its completion)"
    );
    assert_eq!(bus.metrics().joined_writes() - joined, N as u64);
    assert_eq!(
        bus.metrics().published("in.reply"),
        N as u64,
        "one reply each"
    );
    assert_eq!(bus.metrics().stored(), 0, "every event settled");
    bus.close().await;
    worker.await.unwrap();

    // Durable: after a reopen nothing is open and every reply is there, once.
    let bus = open(dir.path(), WINDOW);
    assert_eq!(bus.metrics().stored(), 0);
    let page = bus.replay("in.reply", 0, 100).await.unwrap();
    let ids: Vec<&str> = page.events.iter().map(|p| p.event.id.as_str()).collect();
    let want: Vec<String> = (0..N).map(|i| format!("r-id-{i}")).collect();
    assert_eq!(ids, want);
    bus.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_does_not_answer_within_the_window_does_not_hold_the_publish() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(dir.path(), Duration::from_millis(20));
    let mut c = bus.consume("in", "w");
    ready(&bus).await;
    let commits = bus.metrics().commits();
    // The worker answers only after the 202: the window ends without its completion and
    // the publish is committed alone, its event still open.
    let seq = tokio::time::timeout(WAIT, bus.publish("in", vec![event(0)]))
        .await
        .expect("the publish waited for a completion that could not come")
        .unwrap()[0];
    assert_eq!(bus.metrics().commits() - commits, 1);
    assert_eq!(bus.metrics().joined_writes(), 0);
    assert_eq!(bus.metrics().stored(), 1, "committed alone, still open");
    let d = recv(&mut c).await;
    assert_eq!(
        d.seq, seq,
        "handed out before its commit, as without the window"
    );
    bus.complete(d.seq, Outcome::Replied, Some(("in.reply".into(), event(1))))
        .await
        .unwrap();
    // The completion is a commit of its own. One more commit may come before it: when this
    // thread is slow to complete (a loaded machine: seen once in CI), the event's attempt
    // count, deferred to the next group commit, is stored alone 2 ms after its hand-out.
    let after = bus.metrics().commits() - commits;
    assert!(
        after == 2 || after == 3,
        "the completion: a commit of its own (after at most one of the attempt count), got {after} commits"
    );
    assert_eq!(
        bus.metrics().joined_writes(),
        0,
        "nothing joined the publish"
    );
    assert_eq!(bus.metrics().stored(), 0);
    assert_eq!(bus.metrics().published("in.reply"), 1);
    bus.close().await;
}
