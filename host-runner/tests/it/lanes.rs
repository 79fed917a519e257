//! Ring lanes in the real host: a worker thread reads its calls from its lane and answers on
//! it, the frame loop keeps the rest; crash attribution, unload and idle CPU with lanes.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use wm_shared::protocol::{self, Message, ResultStatus};
use wm_shared::ring::Source;

use crate::host::{Host, NEXT, cpu_ticks, data_of};
use crate::util::*;

/// Calls sent into a worker's lanes are answered on the same lanes, in order per lane; a call
/// too large for a lane takes the control ring and is answered there; a crash during a lane
/// call names that call.
#[test]
fn lane_calls_are_answered_on_their_lane_and_a_crash_names_its_message() {
    let mut h = Host::spawn(&[]);
    assert!(h.load_lanes("one", &worker_c(), 1, &[0]).ok);
    assert!(h.load_lanes("two", &worker_c(), 2, &[1, 2]).ok);
    // Back to back on lane 0, and pipelined on lanes 1 and 2.
    for n in 0..50u64 {
        h.process_on(0, n, "one", "echo", format!("m{n}").as_bytes());
        let r = h.result(n);
        assert_eq!(r.status, ResultStatus::Ok, "{r:?}");
        assert_eq!(data_of(&r), format!("m{n}"));
        assert_eq!(h.result_sources[&n], Source::Lane(0));
    }
    for n in 100..140u64 {
        h.process_on(1 + (n % 2) as usize, n, "two", "echo", b"x");
    }
    for n in 100..140u64 {
        assert_eq!(h.result(n).status, ResultStatus::Ok);
        assert_eq!(h.result_sources[&n], Source::Lane(1 + (n % 2) as usize));
    }
    // Larger than a lane carries (half of RING_LANE_BYTES' default 64 KiB): the control ring.
    let big = vec![b'b'; 40 << 10];
    let r = h.call(200, "one", "echo", &big);
    assert_eq!((r.status, data_of(&r).len()), (ResultStatus::Ok, big.len()));
    assert_eq!(h.result_sources[&200], Source::Control);
    // A Process on a lane in the name of another worker is refused on that lane.
    h.process_on(0, 201, "two", "echo", b"");
    assert_eq!(h.result(201).status, ResultStatus::UnknownWorker);
    assert_eq!(h.result_sources[&201], Source::Lane(0));
    // The frame loop still answers control frames while lanes are busy.
    h.ping(5);
    h.process_on(2, 4242, "two", "segfault", b"");
    let st = h.wait_exit();
    assert_eq!(st.signal(), Some(libc::SIGSEGV), "{st:?}");
    let rec = h.crash().expect("crash slot written");
    assert_eq!((rec.worker_id.as_str(), rec.msg_id), ("two", 4242));
}

/// Unload ends the lane threads after the calls in their lanes; the lane can then be given to
/// another worker. An idle host with lane threads sleeps.
#[test]
fn unload_frees_a_lane_for_the_next_worker_and_an_idle_host_sleeps() {
    let mut h = Host::spawn(&[]);
    assert!(h.load_lanes("a", &worker_c(), 1, &[3]).ok);
    h.process_on(3, 1, "a", "sleep", b"100");
    h.process_on(3, 2, "a", "echo", b"queued");
    let request_id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    h.send(Message::UnloadWorker(protocol::UnloadWorker {
        request_id,
        worker_id: "a".into(),
    }));
    assert_eq!(h.result(1).status, ResultStatus::Ok);
    assert_eq!(
        data_of(&h.result(2)),
        "queued",
        "a queued lane call finishes first"
    );
    let u = h.wait_for("UnloadResult", |m| match m {
        Message::UnloadResult(r) if r.request_id == request_id => Some(r.clone()),
        _ => None,
    });
    assert!(u.ok, "{u:?}");
    // A frame left for "a" in its old lane, picked up by the lane's next owner.
    h.process_on(3, 3, "a", "echo", b"");
    assert!(h.load_lanes("b", &worker_c(), 1, &[3]).ok);
    let r = h.result(3);
    assert_eq!(r.status, ResultStatus::UnknownWorker, "{r:?}");
    assert_eq!(h.result_sources[&3], Source::Lane(3));
    h.process_on(3, 4, "b", "echo", b"b here");
    assert_eq!(data_of(&h.result(4)), "b here");
    // Busy calls on four lane threads, then a quiet window: the lane threads sleep.
    assert!(h.load_lanes("c", &worker_c(), 4, &[4, 5, 6, 7]).ok);
    for n in 10..410u64 {
        h.process_on(4 + (n % 4) as usize, n, "c", "echo", b"x");
        assert_eq!(h.result(n).status, ResultStatus::Ok);
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_ticks(h.pid());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(h.pid()) - before;
    assert!(used <= 2, "the idle host used {used} clock ticks in 2 s");
}

/// Calls running on lane threads count in `Stats.in_flight` (each lane keeps its own counter),
/// beside the calls queued through the control ring, and none is left once all are answered.
#[test]
fn stats_count_the_calls_in_flight_on_lanes() {
    let mut h = Host::spawn(&[]);
    assert!(h.load_lanes("w", &worker_c(), 2, &[3, 4]).ok);
    h.process_on(3, 1, "w", "sleep", b"300");
    h.process_on(4, 2, "w", "sleep", b"300");
    // Both lane threads are busy: this one waits in the worker's queue.
    h.process(3, "w", "echo", b"");
    std::thread::sleep(Duration::from_millis(100));
    h.send(Message::StatsRequest { request_id: 1 });
    let s = h.wait_for("Stats", |m| match m {
        Message::Stats(s) if s.request_id == 1 => Some(s.clone()),
        _ => None,
    });
    assert_eq!(s.in_flight, 3, "{s:?}");
    for n in 1..=3 {
        assert_eq!(h.result(n).status, ResultStatus::Ok);
    }
    h.send(Message::StatsRequest { request_id: 2 });
    let s = h.wait_for("Stats", |m| match m {
        Message::Stats(s) if s.request_id == 2 => Some(s.clone()),
        _ => None,
    });
    assert_eq!(s.in_flight, 0, "{s:?}");
}
