//! `BUS_WAL_PREALLOCATE`: the store's WAL is written to one checkpoint cycle's size when the
//! bus opens, commits overwrite it instead of growing it, and a store whose WAL still holds
//! committed frames (a daemon killed before its checkpoint, by this version or by one that did
//! not preallocate) opens with every event.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use wm_supervisor::bus::{Bus, SqliteBus, SqliteBusOptions};
use wm_testkit::daemon::{Daemon, DaemonOptions};

use crate::bus_store::{event, recv};

/// One checkpoint cycle with 4 KiB pages: 8,256 frames of 24 + 4,096 bytes and the header.
const CYCLE: u64 = 32 + 8_256 * 4_120;

fn wal_len(dir: &Path) -> u64 {
    std::fs::metadata(dir.join("bus.db-wal"))
        .map(|m| m.len())
        .unwrap_or(0)
}

fn opts(wal_preallocate: bool) -> SqliteBusOptions {
    SqliteBusOptions {
        wal_preallocate,
        ..SqliteBusOptions::default()
    }
}

/// A copy of the store's files as they are on disk now: what a `kill -9` would leave (every
/// acknowledged commit is fsync'd into the WAL; nothing is checkpointed yet).
fn crash_copy(from: &Path, to: &Path) {
    for f in ["bus.db", "bus.db-wal"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_overwrite_the_preallocated_wal_instead_of_growing_it() {
    let dir = tempfile::tempdir().unwrap();
    let bus = SqliteBus::open(dir.path(), opts(true)).unwrap();
    assert_eq!(
        wal_len(dir.path()),
        CYCLE,
        "one checkpoint cycle, written at open"
    );
    for i in 0..200 {
        bus.publish("wal", vec![event(i)]).await.unwrap();
    }
    assert_eq!(
        wal_len(dir.path()),
        CYCLE,
        "200 commits fit in the preallocated file"
    );
    bus.close().await;

    let off = tempfile::tempdir().unwrap();
    let bus = SqliteBus::open(off.path(), opts(false)).unwrap();
    for i in 0..200 {
        bus.publish("wal", vec![event(i)]).await.unwrap();
    }
    let grown = wal_len(off.path());
    assert!(
        grown > 0 && grown < CYCLE / 4,
        "without preallocation the WAL grows with the commits: {grown}"
    );
    bus.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_store_opens_with_every_event_before_and_after_preallocation() {
    // Written by a bus that does not preallocate (main before this change), left as a kill
    // would leave it: the events are only in the WAL's frames.
    let live = tempfile::tempdir().unwrap();
    let old = SqliteBus::open(live.path(), opts(false)).unwrap();
    let mut first = Vec::new();
    for i in 0..50 {
        first.extend(old.publish("kept", vec![event(i)]).await.unwrap());
    }
    let crashed = tempfile::tempdir().unwrap();
    crash_copy(live.path(), crashed.path());
    let frames = wal_len(crashed.path());
    assert!(frames > 0 && frames < CYCLE, "{frames}");
    old.close().await;

    // This version opens it: recovery reads the frames, then the zeros go after them.
    let bus = SqliteBus::open(crashed.path(), opts(true)).unwrap();
    assert_eq!(wal_len(crashed.path()), CYCLE);
    assert_eq!(
        bus.metrics().stored(),
        50,
        "every event of the old WAL is back"
    );
    let mut second = Vec::new();
    for i in 50..80 {
        second.extend(bus.publish("kept", vec![event(i)]).await.unwrap());
    }
    // Killed again, now with frames followed by zeros in the file.
    let again = tempfile::tempdir().unwrap();
    crash_copy(crashed.path(), again.path());
    bus.close().await;

    let bus = SqliteBus::open(again.path(), opts(true)).unwrap();
    assert_eq!(bus.metrics().stored(), 80);
    let mut c = bus.consume("kept", "w1");
    let mut seen = Vec::new();
    for _ in 0..80 {
        let d = recv(&mut c).await;
        seen.push(d.seq);
        assert_eq!(
            d.event,
            event(seen.len() - 1),
            "each event as published, in order"
        );
    }
    let all: Vec<u64> = first.into_iter().chain(second).collect();
    assert_eq!(seen, all);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), c.recv())
            .await
            .is_err(),
        "nothing else was recovered from the zeros"
    );
    bus.close().await;
}

/// The setting reaches the daemon's bus: a real daemon's store has the cycle written at start
/// and keeps it through published events; with `BUS_WAL_PREALLOCATE=0` it grows as before.
#[test]
fn a_daemon_preallocates_its_wal_unless_the_setting_is_off() {
    let publish = |d: &Daemon, n: usize| {
        for i in 0..n {
            let event = json!({"specversion": "1.0", "id": format!("e{i}"),
                "source": "urn:test", "type": "wal.in", "data": {"n": i}});
            let r = d.request(
                "POST",
                "/v1/topics/wal.in/events",
                &[("content-type", "application/cloudevents+json")],
                event.to_string().as_bytes(),
            );
            assert_eq!(r.status, 202, "{}", d.log());
        }
    };
    let on = Daemon::start(DaemonOptions::default());
    assert_eq!(wal_len(on.data_dir()), CYCLE, "{}", on.log());
    publish(&on, 20);
    assert_eq!(wal_len(on.data_dir()), CYCLE);

    let off = Daemon::start(DaemonOptions::default().env("BUS_WAL_PREALLOCATE", "0"));
    publish(&off, 20);
    let grown = wal_len(off.data_dir());
    assert!(grown < CYCLE / 4, "{grown}");
}
