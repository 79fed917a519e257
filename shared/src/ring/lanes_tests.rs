//! Lanes: routing, the doorbell, the nudge, version-1 compatibility, and a hostile host
//! writing garbage into a lane (validated exactly like the control ring).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::layout::{self, KIND_FRAME};
use super::*;

fn cfg(lanes: usize) -> RingConfig {
    RingConfig {
        ring_bytes: 4096,
        max_frame: 2048,
        lanes,
        lane_bytes: 4096,
    }
}

fn pair(lanes: usize) -> (Arc<Region>, Arc<Region>) {
    let sup = Arc::new(Region::create("wm-lanes-test", &cfg(lanes)).expect("create region"));
    let fd = sup.as_fd().try_clone_to_owned().expect("dup memfd");
    let host = Arc::new(Region::open(fd).expect("open region"));
    (sup, host)
}

fn never_spin() -> SpinBudget {
    SpinBudget::new(Duration::ZERO, Duration::ZERO)
}

#[test]
fn each_lane_carries_its_own_frames_both_ways() {
    let (sup, host) = pair(3);
    let (_ctl, lanes, mut rx) = supervisor_lanes(sup);
    assert_eq!((lanes.len(), rx.lanes()), (3, 3));
    let mut ends: Vec<_> = (0..3)
        .map(|k| host_lane(host.clone(), k).unwrap())
        .collect();
    assert!(host_lane(host.clone(), 3).is_err(), "no lane 3");
    let mut buf = Vec::new();
    for (k, tx) in lanes.iter().enumerate() {
        tx.send(&[k as u8; 10], Duration::from_secs(1)).unwrap();
    }
    for (k, (htx, hrx)) in ends.iter_mut().enumerate() {
        hrx.recv(&mut buf, Some(Duration::from_secs(1))).unwrap();
        assert_eq!(buf, vec![k as u8; 10], "lane {k} got another lane's frame");
        htx.send(&[100 + k as u8], Duration::from_secs(1)).unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        match rx.recv(&mut buf, Some(Duration::from_secs(1))).unwrap() {
            Source::Lane(k) => {
                assert_eq!(buf, vec![100 + k as u8]);
                got.push(k);
            }
            Source::Control => panic!("a lane frame reported as control"),
        }
    }
    got.sort_unstable();
    assert_eq!(got, vec![0, 1, 2]);
    assert!(rx.try_recv(&mut buf).unwrap().is_none());
}

/// The supervisor's reader sleeps on the doorbell (no spinning at all) while the host writes
/// into lanes and the control ring from other threads: every frame wakes it, none is lost.
#[test]
fn the_doorbell_wakes_a_sleeping_reader_for_every_ring() {
    let (sup, host) = pair(2);
    let (_ctl, _lanes, mut rx) = supervisor_lanes(sup);
    rx.set_spin(never_spin());
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let host = host.clone();
            thread::spawn(move || {
                let tx = match w {
                    2 => host_channels(host).0,
                    k => host_lane(host, k).unwrap().0,
                };
                for i in 0..200u32 {
                    tx.send(&i.to_le_bytes(), Duration::from_secs(5)).unwrap();
                    if i % 20 == 0 {
                        thread::sleep(Duration::from_millis(2));
                    }
                }
            })
        })
        .collect();
    let mut buf = Vec::new();
    let mut next = [0u32; 3];
    let t = Instant::now();
    for _ in 0..600 {
        let src = rx.recv(&mut buf, Some(Duration::from_secs(10))).unwrap();
        let w = match src {
            Source::Lane(k) => k,
            Source::Control => 2,
        };
        assert_eq!(buf, next[w].to_le_bytes(), "ring {w} out of order");
        next[w] += 1;
    }
    for w in writers {
        w.join().unwrap();
    }
    // A lost wake-up would cost the 100 ms safety net each time.
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[test]
fn a_nudge_wakes_a_lane_reader_waiting_for_something_else() {
    let (_sup, host) = pair(1);
    let (_tx, mut rx) = host_lane(host, 0).unwrap();
    rx.set_spin(never_spin());
    let nudge = rx.nudger();
    let flag = Arc::new(AtomicBool::new(false));
    let f2 = flag.clone();
    let waiter = thread::spawn(move || {
        let mut buf = Vec::new();
        let t = Instant::now();
        let r = rx.recv_or(&mut buf, Some(Duration::from_secs(10)), &|| {
            f2.load(Ordering::SeqCst)
        });
        (r.unwrap(), t.elapsed())
    });
    thread::sleep(Duration::from_millis(50));
    flag.store(true, Ordering::SeqCst);
    nudge.nudge();
    let (got_frame, waited) = waiter.join().unwrap();
    assert!(!got_frame);
    assert!(waited < Duration::from_secs(5), "{waited:?}");
}

#[test]
fn a_region_without_lanes_is_a_version_1_region() {
    let (sup, host) = pair(0);
    assert_eq!(
        sup.header().layout_version.load(Ordering::Relaxed),
        layout::LAYOUT_VERSION_NO_LANES
    );
    assert_eq!(host.lanes(), 0);
    assert_eq!(
        sup.config().region_bytes(),
        Some(layout::DATA_OFFSET + 2 * 4096)
    );
    let (sup2, _) = pair(2);
    assert_eq!(
        sup2.header().layout_version.load(Ordering::Relaxed),
        layout::LAYOUT_VERSION
    );
    assert!(sup.header_snapshot().magic_ok && sup2.header_snapshot().magic_ok);
}

#[test]
fn lane_settings_are_validated() {
    for (lanes, lane_bytes, what) in [
        (257, 4096, "RING_LANES"),
        (1, 5000, "RING_LANE_BYTES"),
        (1, 1024, "RING_LANE_BYTES"),
    ] {
        let e = RingConfig {
            lanes,
            lane_bytes,
            ..cfg(1)
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains(what), "{e}");
    }
    // The lane's frame limit is half a lane, and never above RING_MAX_FRAME_BYTES.
    assert_eq!(cfg(1).lane_max_frame(), 2048);
    let big = RingConfig {
        lane_bytes: 1 << 20,
        ..cfg(1)
    };
    assert_eq!(big.lane_max_frame(), 2048);
}

/// A hostile host writes garbage into a lane: lengths over the lane's limit, a tail past the
/// capacity, an unaligned tail, an unknown kind. Each is `Corrupt` naming the lane, and the
/// receiver stays broken; the other lanes' data is never read as this lane's.
#[test]
fn garbage_in_a_lane_is_corrupt_and_names_the_lane() {
    let header = |len: u32, kind: u32| -> Vec<u8> {
        len.to_le_bytes()
            .into_iter()
            .chain(kind.to_le_bytes())
            .chain([0; 8])
            .collect()
    };
    let cases: Vec<(Vec<u8>, u64)> = vec![
        // over the lane's frame limit (2048), though within the control ring's
        (header(3000, KIND_FRAME), 4096),
        // a frame longer than what was published
        (header(100, KIND_FRAME), 16),
        // an unknown kind
        (header(8, 0xdead_beef), 16),
        // a tail beyond the lane's capacity
        (vec![0; 8], 1 << 20),
        // a tail that is not 8-aligned
        (header(0, KIND_FRAME), 12),
    ];
    for (bytes, publish) in cases {
        let (sup, host) = pair(2);
        let (htx, _) = host_lane(host, 1).unwrap();
        let (_, _, mut rx) = supervisor_lanes(sup);
        htx.inject_raw_for_tests(&bytes, publish);
        let mut buf = Vec::new();
        let r = rx.recv(&mut buf, Some(Duration::from_millis(200)));
        assert!(
            matches!(&r, Err(RingError::Corrupt { what }) if what.starts_with("lane 1:")),
            "{bytes:?}/{publish}: {r:?}"
        );
        let r = rx.try_recv(&mut buf);
        assert!(matches!(r, Err(RingError::Corrupt { .. })), "{r:?}");
    }
}

/// The host scribbles a lane's reader index (the supervisor writes into that lane): the
/// supervisor's send fails as `Corrupt`, it never writes outside the lane.
#[test]
fn a_lane_reader_index_moved_by_the_host_is_corrupt_for_the_supervisor() {
    let (sup, host) = pair(2);
    let (_, lanes, _) = supervisor_lanes(sup);
    host.ctl(lanes::lane_ring(0))
        .head
        .store(1 << 40, Ordering::Release);
    let r = lanes[0].send(b"x", Duration::from_millis(10));
    assert!(matches!(r, Err(RingError::Corrupt { .. })), "{r:?}");
    // Lane 1 is unaffected.
    lanes[1].send(b"y", Duration::from_millis(10)).unwrap();
}

#[test]
fn a_close_wakes_a_reader_asleep_on_the_doorbell_and_drains_first() {
    let (sup, host) = pair(2);
    let (_, _, mut rx) = supervisor_lanes(sup);
    rx.set_spin(never_spin());
    let (htx, _) = host_lane(host.clone(), 0).unwrap();
    let reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let first = rx.recv(&mut buf, None);
        let second = rx.recv(&mut buf, None);
        (first, second)
    });
    thread::sleep(Duration::from_millis(30));
    htx.send(b"last", Duration::from_secs(1)).unwrap();
    host.mark_closed(Side::Host);
    let (first, second) = reader.join().unwrap();
    assert_eq!(first.unwrap(), Source::Lane(0));
    assert!(matches!(second, Err(RingError::PeerGone)), "{second:?}");
}

/// The supervisor's reader stays on a lane that keeps delivering (fewer empty polls under
/// load) but takes at most `BURST` frames from it in a row: a frame waiting in another lane is
/// read within the next `BURST + 1`, however full the first lane is.
#[test]
fn a_busy_lane_cannot_starve_another() {
    let (sup, host) = pair(2);
    let (_ctl, _lanes, mut rx) = supervisor_lanes(sup);
    let (tx0, _rx0) = host_lane(host.clone(), 0).unwrap();
    let (tx1, _rx1) = host_lane(host.clone(), 1).unwrap();
    // Lane 0: more frames than a burst (8-byte frames, 16 bytes each in a 4 KiB lane).
    let frames: Vec<[u8; 8]> = (0..(2 * super::lanes::BURST as u64 + 10))
        .map(u64::to_le_bytes)
        .collect();
    tx0.send_batch(&frames, Duration::from_secs(1)).unwrap();
    let mut buf = Vec::new();
    // Lane 0's frames arrive complete and in order, whatever comes between them.
    let mut next0 = 0u64;
    let mut take0 = |buf: &[u8]| {
        assert_eq!(buf, next0.to_le_bytes(), "lane 0 out of order");
        next0 += 1;
    };
    // The reader starts on lane 0 and stays there...
    for _ in 0..5 {
        assert_eq!(rx.try_recv(&mut buf).unwrap(), Some(Source::Lane(0)));
        take0(&buf);
    }
    // ...until a burst is over, even with lane 1 waiting.
    tx1.send(b"lane one", Duration::from_secs(1)).unwrap();
    let mut seen = false;
    for _ in 0..=super::lanes::BURST {
        match rx.try_recv(&mut buf).unwrap() {
            Some(Source::Lane(1)) => {
                assert_eq!(buf, b"lane one");
                seen = true;
                break;
            }
            Some(Source::Lane(0)) => take0(&buf),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(seen, "lane 1 starved for more than a burst");
    while let Some(src) = rx.try_recv(&mut buf).unwrap() {
        assert_eq!(src, Source::Lane(0));
        take0(&buf);
    }
    assert_eq!(next0, frames.len() as u64, "lane 0 lost frames");
}
