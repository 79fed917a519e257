//! Resumable subscriptions against a real daemon: SSE `id:` is the bus sequence number;
//! `Last-Event-ID`, `?after=<seq>` and `?from=earliest` replay from the store (across a
//! `kill -9` of the daemon); `lagged` only when the replay window was exceeded.

use std::time::Duration;

use serde_json::json;
use wm_testkit::daemon::{Daemon, DaemonOptions};
use wm_testkit::sse::Sse;

const WAIT: Duration = Duration::from_secs(20);

fn publish(d: &Daemon, topic: &str, id: &str) -> u64 {
    let ev = json!({
        "specversion": "1.0", "id": id, "source": "urn:test", "type": "obs.t",
        "datacontenttype": "text/plain", "data": id,
    });
    let r = d.send_json("POST", &format!("/v1/topics/{topic}/events"), &ev);
    assert_eq!(r.status, 202, "publish: {}", r.text());
    r.json()["seqs"][0].as_u64().expect("a sequence number")
}

/// `n` events (ids and SSE ids) from `sse`.
fn take(sse: &Sse, n: usize) -> Vec<(u64, String)> {
    (0..n)
        .map(|i| {
            let (seq, v) = sse
                .next_with_id(WAIT)
                .unwrap_or_else(|| panic!("event {i} of {n} did not come"));
            (seq, v["id"].as_str().unwrap_or_default().to_string())
        })
        .collect()
}

#[test]
fn sse_resumes_from_last_event_id_after_from_earliest_across_a_daemon_kill() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut d = Daemon::start(DaemonOptions::default().data_dir(data.path()));
    let live = Sse::subscribe(&d.base_url(), "obs");
    let seqs: Vec<u64> = (0..5)
        .map(|i| publish(&d, "obs", &format!("a{i}")))
        .collect();
    let got = take(&live, 5);
    // `id:` is the bus sequence number the publish answered with.
    assert_eq!(
        got,
        seqs.iter()
            .zip(0..)
            .map(|(s, i)| (*s, format!("a{i}")))
            .collect::<Vec<_>>()
    );
    drop(live);

    // The daemon crashes; the observer saw up to a2 and reconnects after the restart.
    d.kill9();
    let d = Daemon::start(DaemonOptions::default().data_dir(data.path()));
    let resumed = Sse::resume(&d.base_url(), "obs", "", Some(seqs[2]));
    let more: Vec<u64> = (5..7)
        .map(|i| publish(&d, "obs", &format!("a{i}")))
        .collect();
    let got = take(&resumed, 4);
    let ids: Vec<&str> = got.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(
        ids,
        ["a3", "a4", "a5", "a6"],
        "the store first, then live, no gap"
    );
    assert_eq!(got[3].0, more[1]);
    assert!(
        resumed.drain(Duration::from_millis(300)).is_empty(),
        "no duplicates"
    );
    assert_eq!(resumed.lagged(), 0);

    // `?after=` does the same; `Last-Event-ID` wins over it (what a reconnect sends).
    let after = Sse::resume(&d.base_url(), "obs", &format!("after={}", seqs[3]), None);
    let ids: Vec<String> = take(&after, 3).into_iter().map(|(_, id)| id).collect();
    assert_eq!(ids, ["a4", "a5", "a6"]);
    let both = Sse::resume(&d.base_url(), "obs", "after=0", Some(more[0]));
    assert_eq!(take(&both, 1)[0].1, "a6");

    // `?from=earliest` starts at the oldest event kept.
    let earliest = Sse::resume(&d.base_url(), "obs", "from=earliest", None);
    let ids: Vec<String> = take(&earliest, 7).into_iter().map(|(_, id)| id).collect();
    assert_eq!(ids, ["a0", "a1", "a2", "a3", "a4", "a5", "a6"]);
    assert_eq!(earliest.lagged(), 0);

    // Nonsense is refused in the API's error shape.
    let refused = Sse::try_resume(&d.base_url(), "obs", "after=soon", None);
    assert!(refused.is_err_and(|s| s.contains(" 400")));
    let refused = Sse::try_resume(&d.base_url(), "obs", "from=yesterday", None);
    assert!(refused.is_err_and(|s| s.contains(" 400")));
}

#[test]
fn lagged_is_sent_only_when_the_replay_window_was_exceeded() {
    let d = Daemon::start(DaemonOptions::default().env("TOPIC_RETENTION_EVENTS", "3"));
    let seqs: Vec<u64> = (0..8)
        .map(|i| publish(&d, "win", &format!("w{i}")))
        .collect();
    // Inside the window: no lagged.
    let inside = Sse::resume(&d.base_url(), "win", &format!("after={}", seqs[5]), None);
    let ids: Vec<String> = take(&inside, 2).into_iter().map(|(_, id)| id).collect();
    assert_eq!(ids, ["w6", "w7"]);
    assert_eq!(inside.lagged(), 0);
    // Resuming from before the window: told so, then what the window still has.
    let outside = Sse::resume(&d.base_url(), "win", &format!("after={}", seqs[0]), None);
    let got = take(&outside, 1);
    assert!(outside.lagged() > 0, "a lagged comment before the events");
    assert!(got[0].0 > seqs[1], "{got:?}");
    // `from=earliest` asks for whatever is kept: no lagged.
    let earliest = Sse::resume(&d.base_url(), "win", "from=earliest", None);
    let first = take(&earliest, 1);
    assert!(first[0].0 >= seqs[4], "{first:?}");
    assert_eq!(earliest.lagged(), 0);
}

#[test]
fn ended_events_older_than_topic_retention_seconds_leave_the_window() {
    let d = Daemon::start(DaemonOptions::default().env("TOPIC_RETENTION_SECONDS", "1"));
    // Nobody consumes "aged": each event ends at once (dropped) and stays for the window.
    let seqs: Vec<u64> = (0..3)
        .map(|i| publish(&d, "aged", &format!("g{i}")))
        .collect();
    let young = Sse::resume(&d.base_url(), "aged", "from=earliest", None);
    let ids: Vec<String> = take(&young, 3).into_iter().map(|(_, id)| id).collect();
    assert_eq!(ids, ["g0", "g1", "g2"], "inside the window at first");
    drop(young);

    // Ended events are deleted once older than a second (the expiry runs every second).
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let earliest = Sse::resume(&d.base_url(), "aged", "from=earliest", None);
        if earliest.drain(Duration::from_millis(300)).is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "events older than TOPIC_RETENTION_SECONDS=1 were still replayed after {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // A reader resuming from before them is told it lagged, then gets what is new.
    let resumed = Sse::resume(&d.base_url(), "aged", &format!("after={}", seqs[0]), None);
    let fresh = publish(&d, "aged", "g3");
    let got = take(&resumed, 1);
    assert_eq!(got[0], (fresh, "g3".to_string()));
    assert!(
        resumed.lagged() > 0,
        "a lagged comment for the expired events"
    );
}
