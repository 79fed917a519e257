//! A group commit whose COMMIT fails after its events were handed out early (`fsync`, see
//! `flow::hand_out_early`): the publisher gets the error, the consumer's completion finds no
//! open row and stores no reply, and the event's sequence number is never handed out again.
//! A completion that joined the failed commit (its join window) is refused with it.
//!
//! The COMMIT is made to fail with `RLIMIT_FSIZE` (the WAL file cannot grow), in a child
//! process because the limit is per process: the test re-runs its own binary as the child.
//! The stores here are opened without `BUS_WAL_PREALLOCATE`: a preallocated WAL does not grow
//! for a whole checkpoint cycle, so the limit would not stop the commit.

use std::time::Duration;

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::signal::{SigHandler, Signal, signal};
use wm_supervisor::bus::{Bus, Outcome, SqliteBus, SqliteBusOptions};

use crate::bus_store::{event, recv};

const CHILD_ENV: &str = "WM_BUS_COMMIT_FAILS_CHILD_DIR";
const TEST_NAME: &str =
    "bus_commit_fails::a_failed_commit_after_an_early_hand_out_stores_nothing_and_reuses_no_number";

/// Runs `child` in a copy of this test binary (the resource limit is per process), or, in that
/// copy, runs it here; the parent checks that the child got to its end.
fn run_in_child(test: &str, env: &str, child: fn(&std::path::Path)) {
    if let Some(dir) = std::env::var_os(env) {
        child(std::path::Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = crate::self_child::command(test, env, dir.path())
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("CHILD OK"),
        "child failed: {text}"
    );
}

/// Caps this process's file size at the WAL's current size, so that the next commit that
/// stores anything fails; returns the hard limit to restore.
fn wal_cannot_grow(dir: &std::path::Path) -> u64 {
    let wal = std::fs::metadata(dir.join("bus.db-wal")).unwrap().len();
    // SAFETY: ignoring SIGXFSZ installs no handler; a write over the limit then fails
    // with EFBIG instead of killing the process.
    unsafe { signal(Signal::SIGXFSZ, SigHandler::SigIgn) }.unwrap();
    let (_, hard) = getrlimit(Resource::RLIMIT_FSIZE).unwrap();
    setrlimit(Resource::RLIMIT_FSIZE, wal, hard).unwrap();
    hard
}

/// The default options, with a WAL that grows with each commit (see the module's comment).
fn growing_wal() -> SqliteBusOptions {
    SqliteBusOptions {
        wal_preallocate: false,
        ..SqliteBusOptions::default()
    }
}

fn reply(input: &wm_shared::CloudEvent) -> Option<(String, wm_shared::CloudEvent)> {
    let mut r = input.clone();
    r.id = format!("r-{}", input.id);
    Some(("in.reply".into(), r))
}

/// After the failed commit of event 1 between events 0 (`first`) and 2 (`next`): the inputs
/// and replies of 0 and 2 are stored, nothing of 1, and nothing is left open.
async fn only_the_committed_events_are_stored(bus: &SqliteBus, first: u64, next: u64) {
    let inputs = bus.replay("in", 0, 100).await.unwrap();
    let seqs: Vec<u64> = inputs.events.iter().map(|p| p.seq).collect();
    assert_eq!(seqs, [first, next], "only the committed inputs are stored");
    let replies = bus.replay("in.reply", 0, 100).await.unwrap();
    let ids: Vec<&str> = replies.events.iter().map(|p| p.event.id.as_str()).collect();
    assert_eq!(ids, ["r-id-0", "r-id-2"], "no reply to the failed event");
    assert_eq!(bus.metrics().stored(), 0, "nothing left open");
}

fn child(dir: &std::path::Path) {
    let rt = crate::self_child::runtime();
    rt.block_on(async {
        // The default: fsync, so events go to their consumer before the COMMIT.
        let bus = SqliteBus::open(dir, growing_wal()).unwrap();
        let mut c = bus.consume("in", "w");
        bus.set_ready();
        let first = bus.publish("in", vec![event(0)]).await.unwrap()[0];
        let d = recv(&mut c).await;
        bus.complete(d.seq, Outcome::Replied, reply(&d.event))
            .await
            .unwrap();

        // From here the WAL cannot grow: the next commit that stores anything fails.
        let hard = wal_cannot_grow(dir);
        let failed = bus.publish("in", vec![event(1)]).await;
        assert!(
            failed.is_err(),
            "the publish whose COMMIT failed is refused"
        );
        // Handed out before the COMMIT: the consumer has it anyway.
        let early = recv(&mut c).await;
        assert_eq!(early.event.id, "id-1");
        setrlimit(Resource::RLIMIT_FSIZE, hard, hard).unwrap();
        // Its completion finds no open row: nothing is settled, no reply is stored.
        bus.complete(early.seq, Outcome::Replied, reply(&early.event))
            .await
            .unwrap();

        // The store works on, and the number of the failed event is not handed out again.
        let next = bus.publish("in", vec![event(2)]).await.unwrap()[0];
        assert!(
            next > early.seq,
            "seq {next} after the failed event's {}: a number handed out early was reused",
            early.seq
        );
        let d = recv(&mut c).await;
        assert_eq!(d.event.id, "id-2");
        bus.complete(d.seq, Outcome::Replied, reply(&d.event))
            .await
            .unwrap();

        only_the_committed_events_are_stored(&bus, first, next).await;
        assert_eq!(bus.metrics().settled("replied"), 2);
        // Nothing else is delivered (the failed event is not in line any more).
        assert!(
            tokio::time::timeout(Duration::from_millis(200), c.recv())
                .await
                .is_err()
        );
        bus.close().await;
    });
    println!("CHILD OK");
}

#[test]
fn a_failed_commit_after_an_early_hand_out_stores_nothing_and_reuses_no_number() {
    run_in_child(TEST_NAME, CHILD_ENV, child);
}

const JOINED_ENV: &str = "WM_BUS_COMMIT_FAILS_JOINED_CHILD_DIR";
const JOINED_TEST: &str =
    "bus_commit_fails::a_failed_commit_refuses_the_completions_that_joined_it_too";

/// The join window's case: the completion of an event handed out early joined the publish's
/// open transaction (`BUS_JOIN_WINDOW_US`); the COMMIT fails, and both are refused.
fn joined_child(dir: &std::path::Path) {
    let rt = crate::self_child::runtime();
    rt.block_on(async {
        let opts = SqliteBusOptions {
            // Far above the round trip: the completions always join.
            join_window: Duration::from_secs(5),
            ..growing_wal()
        };
        let bus = SqliteBus::open(dir, opts).unwrap();
        let mut c = bus.consume("in", "w");
        bus.set_ready();
        // A quick worker: completes each event at once and reports the bus's answer.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let worker = {
            let bus = bus.clone();
            tokio::spawn(async move {
                while let Some(d) = c.recv().await {
                    let r = bus.complete(d.seq, Outcome::Replied, reply(&d.event)).await;
                    let _ = tx.send((d.seq, r.is_ok()));
                }
            })
        };
        let first = bus.publish("in", vec![event(0)]).await.unwrap()[0];
        assert_eq!(rx.recv().await, Some((first, true)));
        assert_eq!(bus.metrics().joined_writes(), 1, "the completion joined");

        let hard = wal_cannot_grow(dir);
        assert!(bus.publish("in", vec![event(1)]).await.is_err());
        let (failed, completed) = rx.recv().await.unwrap();
        assert!(
            !completed,
            "the completion in the failed commit is refused too"
        );
        assert_eq!(bus.metrics().joined_writes(), 2);
        setrlimit(Resource::RLIMIT_FSIZE, hard, hard).unwrap();

        let next = bus.publish("in", vec![event(2)]).await.unwrap()[0];
        assert!(next > failed, "no number reused");
        assert_eq!(rx.recv().await, Some((next, true)));
        only_the_committed_events_are_stored(&bus, first, next).await;
        bus.close().await;
        let _ = worker.await;
    });
    println!("CHILD OK");
}

#[test]
fn a_failed_commit_refuses_the_completions_that_joined_it_too() {
    run_in_child(JOINED_TEST, JOINED_ENV, joined_child);
}
