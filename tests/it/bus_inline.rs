//! Lone writes committed on the caller's thread (`BUS_INLINE_COMMIT`): when the bus writer is
//! idle a publish or completion is applied inline, and mixing inline and queued writes never
//! reorders anything.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use wm_supervisor::bus::{Bus, Durability, InlineCommit, Outcome, SqliteBus, SqliteBusOptions};

use crate::bus_store::{WAIT, event, recv};

fn open_os(dir: &std::path::Path) -> Arc<SqliteBus> {
    SqliteBus::open(
        dir,
        SqliteBusOptions {
            durability: Durability::Os,
            ..SqliteBusOptions::default()
        },
    )
    .unwrap()
}

/// Marks the bus ready (replies to topics nobody consumes end at once, as in the daemon) and
/// waits until the writer thread applied that and the subscriptions before it: a replay is
/// queued behind them and answered after them.
async fn ready(bus: &SqliteBus) {
    bus.set_ready();
    bus.replay("in", 0, 1).await.unwrap();
}

/// The reply a worker would make to `input`.
fn reply_to(input: &wm_shared::CloudEvent) -> wm_shared::CloudEvent {
    let mut r = input.clone();
    r.id = format!("r-{}", input.id);
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_write_after_idle_is_committed_on_the_callers_thread() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open_os(dir.path());
    let mut c = bus.consume("lone", "w");
    let mut replies = bus.watch("lone.reply");
    ready(&bus).await;
    for round in 0..3 {
        // Idle: the writer thread has applied everything and sleeps.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let before = bus.metrics().inline_writes();
        bus.publish("lone", vec![event(round)]).await.unwrap();
        assert_eq!(
            bus.metrics().inline_writes(),
            before + 1,
            "round {round}: a lone publish to an idle writer is committed inline"
        );
        let d = recv(&mut c).await;
        bus.complete(
            d.seq,
            Outcome::Replied,
            Some(("lone.reply".into(), reply_to(&d.event))),
        )
        .await
        .unwrap();
        assert_eq!(
            bus.metrics().inline_writes(),
            before + 2,
            "round {round}: the lone completion too"
        );
        let p = tokio::time::timeout(WAIT, replies.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(p.event.id, format!("r-id-{round}"));
        assert!(p.seq > d.seq, "the reply is stored after its input");
    }
    assert_eq!(bus.metrics().settled("replied"), 3);
    assert_eq!(bus.metrics().stored(), 0);

    // `off` (and `os` with fsync) keeps every write on the writer thread.
    let dir = tempfile::tempdir().unwrap();
    let bus = SqliteBus::open(
        dir.path(),
        SqliteBusOptions {
            durability: Durability::Os,
            inline: InlineCommit::Off,
            ..SqliteBusOptions::default()
        },
    )
    .unwrap();
    bus.publish("lone", vec![event(1)]).await.unwrap();
    let fsync_dir = tempfile::tempdir().unwrap();
    let fsync = SqliteBus::open(fsync_dir.path(), SqliteBusOptions::default()).unwrap();
    fsync.publish("lone", vec![event(1)]).await.unwrap();
    assert_eq!(bus.metrics().inline_writes(), 0);
    assert_eq!(fsync.metrics().inline_writes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_and_queued_writes_keep_commit_order_and_replies_follow_their_inputs() {
    keeps_commit_order(Durability::Os).await;
}

/// With fsync, events are handed to their consumer before the publish's commit (its fsync):
/// the replies still follow their inputs, and watchers see both in commit order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_handed_out_before_the_fsync_keep_commit_order_and_replies_follow_their_inputs() {
    keeps_commit_order(Durability::Fsync).await;
}

async fn keeps_commit_order(durability: Durability) {
    const PUBLISHERS: usize = 8;
    const EACH: usize = 25;
    const BURST: usize = 16;
    let dir = tempfile::tempdir().unwrap();
    let bus = SqliteBus::open(
        dir.path(),
        SqliteBusOptions {
            durability,
            ..SqliteBusOptions::default()
        },
    )
    .unwrap();
    let inline = durability == Durability::Os;
    let mut inputs = bus.watch("in");
    let mut replies = bus.watch("in.reply");
    let mut c = bus.consume("in", "w");
    ready(&bus).await;
    // Idle: the writer thread has let go of its lock after answering the replay.
    tokio::time::sleep(Duration::from_millis(20)).await;

    // A burst of publishes at once: the first few go inline, and once more than a few events
    // are open the rest queue for the writer thread, which commits them as a group.
    let burst: Vec<_> = (0..BURST)
        .map(|i| bus.publish("in", vec![event(10_000 + i)]))
        .collect();
    let mut burst_seqs = Vec::new();
    for r in futures_util::future::join_all(burst).await {
        burst_seqs.extend(r.unwrap());
    }
    let inline_after_burst = bus.metrics().inline_writes();
    if inline {
        assert!(
            inline_after_burst >= 1 && inline_after_burst < BURST as u64,
            "{inline_after_burst} of {BURST} burst publishes inline: expected the first ones only"
        );
    } else {
        assert_eq!(
            inline_after_burst, 0,
            "no inline writes with fsync (default)"
        );
    }
    assert!(
        burst_seqs.windows(2).all(|w| w[0] < w[1]),
        "the burst's publishes were committed in the order they were made: {burst_seqs:?}"
    );

    // The worker completes everything, while closed-loop publishers keep coming: each write
    // goes inline or to the writer thread depending on who else is in flight at that moment
    // (mostly the writer thread: eight publishers keep more than a few events open).
    let worker = {
        let bus = bus.clone();
        tokio::spawn(async move {
            let mut last = 0;
            for n in 0..BURST + PUBLISHERS * EACH {
                let d = recv(&mut c).await;
                // One consumer, nothing given back: it gets the topic's events in order,
                // whether they went to it before their commit or from the line after it.
                assert!(d.seq > last, "delivery {n}: seq {} after {last}", d.seq);
                last = d.seq;
                if n % 7 == 0 {
                    // A slow moment: buffers fill and later events wait in line.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                bus.complete(
                    d.seq,
                    Outcome::Replied,
                    Some(("in.reply".into(), reply_to(&d.event))),
                )
                .await
                .unwrap();
            }
        })
    };
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let bus = bus.clone();
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..EACH {
                    let s = bus.publish("in", vec![event(p * EACH + i)]).await.unwrap();
                    seqs.extend(s);
                    if i % 5 == p % 5 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                seqs
            })
        })
        .collect();
    for p in publishers {
        let seqs = tokio::time::timeout(WAIT, p).await.unwrap().unwrap();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "one publisher's events were committed in its order: {seqs:?}"
        );
    }
    tokio::time::timeout(WAIT, worker).await.unwrap().unwrap();

    // Watchers see commits in commit order: sequence numbers strictly increase, and every
    // reply was committed after its input.
    let total = BURST + PUBLISHERS * EACH;
    let mut input_seq: HashMap<String, u64> = HashMap::new();
    let mut last = 0;
    for _ in 0..total {
        let p = tokio::time::timeout(WAIT, inputs.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(
            p.seq > last,
            "inputs out of commit order: {} after {last}",
            p.seq
        );
        last = p.seq;
        input_seq.insert(p.event.id.clone(), p.seq);
    }
    let mut last = 0;
    for _ in 0..total {
        let p = tokio::time::timeout(WAIT, replies.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(
            p.seq > last,
            "replies out of commit order: {} after {last}",
            p.seq
        );
        last = p.seq;
        let input = p.event.id.strip_prefix("r-").expect("a reply id");
        let seq = input_seq[input];
        assert!(
            p.seq > seq,
            "reply {} (seq {}) before its input (seq {seq})",
            p.event.id,
            p.seq
        );
    }
    let m = bus.metrics();
    assert_eq!(m.settled("replied"), total as u64);
    assert_eq!(m.stored(), 0, "every input settled, nothing open");
    assert_eq!(m.published("in"), total as u64);
    assert_eq!(m.published("in.reply"), total as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_never_overtakes_a_command_queued_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open_os(dir.path());
    ready(&bus).await;
    for i in 0..50 {
        // The subscription is queued for the writer thread (nothing waits for it); the publish
        // right behind it must not be committed inline before it, or the bus (ready, the
        // topic without a consumer) would drop the event.
        let topic = format!("fresh-{i}");
        let mut c = bus.consume(&topic, "w");
        bus.publish(&topic, vec![event(i)]).await.unwrap();
        let d = recv(&mut c).await;
        assert_eq!(d.event.id, format!("id-{i}"));
        bus.complete(d.seq, Outcome::Replied, None).await.unwrap();
        assert_eq!(bus.metrics().dropped(&topic), 0);
    }
}

/// `INLINE_MAX_OPEN` is per topic: a backlog on one topic (a stopped or slow worker's) keeps
/// that topic's writes on the writer thread (group commits), while a lone write to another
/// topic still goes inline; a completion counts its input's topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_keeps_only_its_own_topic_off_the_inline_path() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open_os(dir.path());
    // Nobody takes "a"'s events out of its consumer's buffer: a worker that stopped working.
    let mut a = bus.consume("a", "stuck");
    let mut b = bus.consume("b", "w");
    ready(&bus).await;
    bus.publish("a", (0..10).map(event).collect())
        .await
        .unwrap();
    let idle = || tokio::time::sleep(Duration::from_millis(20));

    idle().await;
    let before = bus.metrics().inline_writes();
    bus.publish("b", vec![event(100)]).await.unwrap();
    assert_eq!(
        bus.metrics().inline_writes(),
        before + 1,
        "a lone publish to b goes inline whatever a's backlog"
    );
    let d = recv(&mut b).await;
    idle().await;
    let reply = Some(("b.reply".into(), reply_to(&d.event)));
    bus.complete(d.seq, Outcome::Replied, reply).await.unwrap();
    assert_eq!(
        bus.metrics().inline_writes(),
        before + 2,
        "its completion too"
    );

    // a's own writes stay with the writer thread: a completion of one of its events...
    let d = recv(&mut a).await;
    idle().await;
    let before = bus.metrics().inline_writes();
    let reply = Some(("a.reply".into(), reply_to(&d.event)));
    bus.complete(d.seq, Outcome::Replied, reply).await.unwrap();
    // ... and a publish to it.
    idle().await;
    bus.publish("a", vec![event(200)]).await.unwrap();
    assert_eq!(
        bus.metrics().inline_writes(),
        before,
        "writes to the backlogged topic are group-committed by the writer thread"
    );

    // Once b has a backlog of its own, its lone publish is queued too.
    bus.publish("b", (300..310).map(event).collect())
        .await
        .unwrap();
    idle().await;
    let before = bus.metrics().inline_writes();
    bus.publish("b", vec![event(400)]).await.unwrap();
    assert_eq!(bus.metrics().inline_writes(), before);
    assert_eq!(bus.metrics().settled("replied"), 2);
    bus.close().await;
}
