use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

const WATCHDOG: Duration = Duration::from_secs(20);

fn small() -> RingConfig {
    RingConfig {
        ring_bytes: 4096,
        max_frame: 2048,
        lanes: 2,
        lane_bytes: 4096,
    }
}

fn region(cfg: &RingConfig) -> Arc<Region> {
    Arc::new(Region::create("wm-ring-test", cfg).expect("create region"))
}

/// Runs `f` on a thread and fails the test if it does not finish within WATCHDOG.
fn with_watchdog<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(WATCHDOG)
        .expect("watchdog: the test did not finish in time (hung?)")
}

/// A second mapping of the same memfd, as a host would have.
fn reopen(r: &Region) -> Arc<Region> {
    let fd = r.as_fd().try_clone_to_owned().expect("dup memfd");
    Arc::new(Region::open(fd).expect("open region"))
}

#[test]
fn config_validation_names_the_settings() {
    assert!(RingConfig::default().validate().is_ok());
    let e = RingConfig {
        ring_bytes: 5000,
        max_frame: 100,
        ..RingConfig::default()
    }
    .validate()
    .unwrap_err();
    assert!(e.to_string().contains("RING_BYTES"), "{e}");
    let e = RingConfig {
        ring_bytes: 4096,
        max_frame: 4096,
        ..RingConfig::default()
    }
    .validate()
    .unwrap_err();
    assert!(e.to_string().contains("RING_MAX_FRAME_BYTES"), "{e}");
}

#[test]
fn frames_round_trip_between_two_mappings() {
    let sup = region(&small());
    let host = reopen(&sup);
    let (stx, mut srx) = supervisor_channels(sup);
    let (htx, mut hrx) = host_channels(host);
    let mut buf = Vec::new();
    for len in [0usize, 1, 7, 8, 9, 100, 2048] {
        let msg: Vec<u8> = (0..len).map(|i| (i * 31 + len) as u8).collect();
        stx.send(&msg, Duration::from_secs(1)).unwrap();
        hrx.recv(&mut buf, Some(Duration::from_secs(1))).unwrap();
        assert_eq!(buf, msg);
        htx.send(&msg, Duration::from_secs(1)).unwrap();
        srx.recv(&mut buf, Some(Duration::from_secs(1))).unwrap();
        assert_eq!(buf, msg);
    }
}

#[test]
fn open_refuses_a_foreign_fd() {
    let f = tempfile::tempfile().unwrap();
    f.set_len(8192).unwrap();
    let e = Region::open(f.into()).unwrap_err();
    assert!(matches!(e, RingError::BadRegion { .. }), "{e}");
}

#[test]
fn open_refuses_a_wrong_protocol_version() {
    let sup = region(&small());
    sup.header()
        .protocol_version
        .store(999, std::sync::atomic::Ordering::Relaxed);
    let fd = sup.as_fd().try_clone_to_owned().unwrap();
    let e = Region::open(fd).unwrap_err();
    assert!(matches!(e, RingError::Version { protocol: 999, .. }), "{e}");
}

#[test]
fn open_refuses_sizes_that_do_not_match_the_file() {
    let sup = region(&small());
    sup.header()
        .ring_bytes
        .store(1 << 20, std::sync::atomic::Ordering::Relaxed);
    let fd = sup.as_fd().try_clone_to_owned().unwrap();
    let e = Region::open(fd).unwrap_err();
    assert!(matches!(e, RingError::BadRegion { .. }), "{e}");
}

#[test]
fn too_large_names_the_limit_and_the_setting() {
    let (tx, _rx) = supervisor_channels(region(&small()));
    let e = tx.send(&[0u8; 2049], Duration::from_millis(1)).unwrap_err();
    assert!(matches!(
        e,
        RingError::TooLarge {
            len: 2049,
            max: 2048
        }
    ));
    let text = e.to_string();
    assert!(
        text.contains("2048") && text.contains("RING_MAX_FRAME_BYTES"),
        "{text}"
    );
}

#[test]
fn a_full_ring_waits_for_the_timeout_then_fails() {
    let r = region(&small());
    let (tx, _rx) = supervisor_channels(r);
    let frame = [7u8; 1000];
    // 4096 bytes hold four frames of 1008 bytes.
    for _ in 0..4 {
        tx.send(&frame, Duration::from_millis(10)).unwrap();
    }
    let t = Instant::now();
    let e = tx.send(&frame, Duration::from_millis(50)).unwrap_err();
    assert!(matches!(e, RingError::Full), "{e}");
    assert!(t.elapsed() >= Duration::from_millis(50));
}

#[test]
fn a_blocked_writer_resumes_when_the_reader_makes_room() {
    with_watchdog(|| {
        let sup = region(&small());
        let host = reopen(&sup);
        let (tx, _srx) = supervisor_channels(sup);
        let (_htx, mut rx) = host_channels(host);
        let writer = thread::spawn(move || {
            for i in 0..200u32 {
                let frame = vec![i as u8; 900 + (i as usize % 50)];
                tx.send(&frame, Duration::from_secs(10)).unwrap();
            }
        });
        let mut buf = Vec::new();
        for i in 0..200u32 {
            rx.recv(&mut buf, Some(Duration::from_secs(10))).unwrap();
            assert_eq!(buf.len(), 900 + (i as usize % 50));
            assert!(buf.iter().all(|&b| b == i as u8));
            if i % 7 == 0 {
                thread::sleep(Duration::from_millis(1));
            }
        }
        writer.join().unwrap();
    });
}

/// A batch that fits is published at once (all of it readable without waiting); one that does
/// not fit is published in parts while a slow reader drains it; order and contents hold.
#[test]
fn batches_arrive_whole_and_in_order_even_when_larger_than_the_ring() {
    with_watchdog(|| {
        let sup = region(&small());
        let host = reopen(&sup);
        let (tx, _srx) = supervisor_channels(sup);
        let (_htx, mut rx) = host_channels(host);
        let mut buf = Vec::new();

        let fits: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 100 + usize::from(i)]).collect();
        tx.send_batch(&fits, Duration::ZERO).unwrap();
        for f in &fits {
            assert!(
                rx.try_recv(&mut buf).unwrap(),
                "the whole batch is published"
            );
            assert_eq!(&buf, f);
        }
        assert!(!rx.try_recv(&mut buf).unwrap());

        // 40 frames of ~900 bytes through a 4 KiB ring: the writer must publish what it has
        // and wait for room several times within one batch.
        let big: Vec<Vec<u8>> = (0..40u32)
            .map(|i| vec![i as u8; 880 + (i as usize % 40)])
            .collect();
        let expect = big.clone();
        let writer = thread::spawn(move || tx.send_batch(&big, Duration::from_secs(10)));
        for f in &expect {
            rx.recv(&mut buf, Some(Duration::from_secs(10))).unwrap();
            assert_eq!(&buf, f);
        }
        writer.join().unwrap().unwrap();
    });
}

/// One frame over the limit fails the batch before anything is written.
#[test]
fn a_batch_with_an_oversized_frame_writes_nothing() {
    let sup = region(&small());
    let host = reopen(&sup);
    let (tx, _srx) = supervisor_channels(sup);
    let (_htx, mut rx) = host_channels(host);
    let frames = vec![vec![1u8; 10], vec![2u8; 4000]];
    match tx.send_batch(&frames, Duration::ZERO) {
        Err(RingError::TooLarge {
            len: 4000,
            max: 2048,
        }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let mut buf = Vec::new();
    assert!(!rx.try_recv(&mut buf).unwrap());
    tx.send_batch(&[vec![3u8; 10]], Duration::ZERO).unwrap();
    assert!(rx.try_recv(&mut buf).unwrap());
    assert_eq!(buf, vec![3u8; 10]);
}

#[test]
fn recv_times_out_after_at_least_the_timeout() {
    let (_tx, mut rx) = supervisor_channels(region(&small()));
    let t = Instant::now();
    let e = rx
        .recv(&mut Vec::new(), Some(Duration::from_millis(30)))
        .unwrap_err();
    assert!(matches!(e, RingError::Timeout));
    assert!(t.elapsed() >= Duration::from_millis(30));
}

#[test]
fn mark_closed_wakes_a_sleeping_reader_and_later_calls_fail() {
    with_watchdog(|| {
        let sup = region(&small());
        let host = reopen(&sup);
        let (stx, mut srx) = supervisor_channels(sup.clone());
        let (htx, _hrx) = host_channels(host);
        htx.send(b"last words", Duration::from_secs(1)).unwrap();
        let waiter = thread::spawn(move || {
            let mut buf = Vec::new();
            srx.recv(&mut buf, None).unwrap();
            assert_eq!(buf, b"last words");
            // Now it sleeps (well past any spin budget) until the close.
            srx.recv(&mut buf, None)
        });
        thread::sleep(Duration::from_millis(200));
        sup.mark_closed(Side::Host);
        let r = waiter.join().unwrap();
        assert!(matches!(r, Err(RingError::PeerGone)), "{r:?}");
        assert!(matches!(
            stx.send(b"x", Duration::from_secs(1)),
            Err(RingError::PeerGone)
        ));
        assert!(matches!(
            htx.send(b"x", Duration::from_secs(1)),
            Err(RingError::PeerGone)
        ));
    });
}

#[test]
fn mark_closed_wakes_a_writer_blocked_on_a_full_ring() {
    with_watchdog(|| {
        let sup = region(&small());
        let (tx, _rx) = supervisor_channels(sup.clone());
        for _ in 0..4 {
            tx.send(&[1u8; 1000], Duration::from_millis(10)).unwrap();
        }
        let w = thread::spawn(move || tx.send(&[1u8; 1000], Duration::from_secs(60)));
        thread::sleep(Duration::from_millis(100));
        sup.mark_closed(Side::Supervisor);
        let r = w.join().unwrap();
        assert!(matches!(r, Err(RingError::PeerGone)), "{r:?}");
    });
}

#[test]
fn garbage_lengths_are_corrupt_not_a_panic() {
    let cases: Vec<(Vec<u8>, u64)> = vec![
        // len u32::MAX, kind frame
        (
            [0xff, 0xff, 0xff, 0xff]
                .into_iter()
                .chain(layout::KIND_FRAME.to_le_bytes())
                .collect(),
            8,
        ),
        // kind unknown
        (vec![4, 0, 0, 0, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0], 16),
        // len 100 but only 16 bytes published
        (
            [100, 0, 0, 0]
                .into_iter()
                .chain(layout::KIND_FRAME.to_le_bytes())
                .chain([0; 8])
                .collect(),
            16,
        ),
        // a tail beyond the capacity
        (vec![0; 8], 1 << 20),
        // a tail that is not 8-aligned
        (
            [0, 0, 0, 0]
                .into_iter()
                .chain(layout::KIND_FRAME.to_le_bytes())
                .collect(),
            12,
        ),
    ];
    for (bytes, publish) in cases {
        let sup = region(&small());
        let host = reopen(&sup);
        let (htx, _) = host_channels(host);
        let (_, mut rx) = supervisor_channels(sup);
        htx.inject_raw_for_tests(&bytes, publish);
        let mut buf = Vec::new();
        let r = rx.recv(&mut buf, Some(Duration::from_millis(100)));
        assert!(
            matches!(r, Err(RingError::Corrupt { .. })),
            "{bytes:?}/{publish}: {r:?}"
        );
        // And it stays broken.
        let r = rx.recv(&mut buf, Some(Duration::from_millis(1)));
        assert!(matches!(r, Err(RingError::Corrupt { .. })), "{r:?}");
    }
}

#[test]
fn a_reader_index_moved_by_the_peer_is_corrupt_for_the_writer() {
    let sup = region(&small());
    let (tx, _rx) = supervisor_channels(sup.clone());
    sup.ctl(TO_HOST)
        .head
        .store(1 << 40, std::sync::atomic::Ordering::Relaxed);
    let e = tx.send(b"x", Duration::from_millis(10)).unwrap_err();
    assert!(matches!(e, RingError::Corrupt { .. }), "{e}");
}

#[test]
fn crash_slots_are_claimed_once_and_read_back() {
    let sup = region(&small());
    let host = reopen(&sup);
    let slot = &host.crash_slots()[0];
    assert!(sup.crash_slots()[0].read().is_none());
    assert!(slot.record(11, 1234, b"my-worker", 42, 0xdead));
    assert!(!slot.record(6, 1, b"other", 1, 1));
    let rec = sup.crash_slots()[0].read().unwrap();
    assert_eq!(
        rec,
        CrashRecord {
            signal: 11,
            tid: 1234,
            worker_id: "my-worker".into(),
            msg_id: 42,
            fault_addr: 0xdead
        }
    );
    let long = vec![b'a'; 300];
    assert!(sup.crash_slots()[1].record(9, 2, &long, 0, 0));
    assert_eq!(sup.crash_slots()[1].read().unwrap().worker_id.len(), 88);
    // A torn slot (claimed, never completed) reads as None.
    sup.crash_slots()[2]
        .state
        .store(1, std::sync::atomic::Ordering::Relaxed);
    assert!(sup.crash_slots()[2].read().is_none());
}

#[test]
fn host_state_is_shared() {
    let sup = region(&small());
    let host = reopen(&sup);
    assert_eq!(sup.host_state(), HostState::Starting);
    host.set_host_state(HostState::Ready);
    assert_eq!(sup.host_state(), HostState::Ready);
}

#[test]
fn many_threads_share_one_sender() {
    with_watchdog(|| {
        let sup = region(&RingConfig {
            ring_bytes: 1 << 16,
            max_frame: 1 << 12,
            ..RingConfig::default()
        });
        let host = reopen(&sup);
        let (tx, _) = supervisor_channels(sup);
        let (_, mut rx) = host_channels(host);
        let senders: Vec<_> = (0..4u8)
            .map(|t| {
                let tx = tx.clone();
                thread::spawn(move || {
                    for i in 0..500u32 {
                        let mut f = vec![t; 16 + (i as usize % 300)];
                        f[..4].copy_from_slice(&i.to_le_bytes());
                        tx.send(&f, Duration::from_secs(10)).unwrap();
                    }
                })
            })
            .collect();
        let mut next = [0u32; 4];
        let mut buf = Vec::new();
        for _ in 0..2000 {
            rx.recv(&mut buf, Some(Duration::from_secs(10))).unwrap();
            let t = buf[buf.len() - 1] as usize;
            let i = u32::from_le_bytes(buf[..4].try_into().unwrap());
            assert_eq!(i, next[t], "frames of one thread arrive in order");
            assert_eq!(buf.len(), 16 + (i as usize % 300));
            next[t] += 1;
        }
        for s in senders {
            s.join().unwrap();
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random frame sizes, sent in random bursts and drained, through a small ring so that the
    /// positions wrap many times: every frame comes out intact and in order, and the reader's
    /// position always equals the bytes the frames cost (skip markers included).
    #[test]
    fn framing_survives_random_sizes_and_wrap_around(
        sizes in proptest::collection::vec(0usize..=2048, 1..200),
        bursts in proptest::collection::vec(1usize..5, 1..50),
    ) {
        let sup = region(&small());
        let host = reopen(&sup);
        let (tx, _) = supervisor_channels(sup);
        let (_, mut rx) = host_channels(host);
        let mut buf = Vec::new();
        let mut i = 0;
        let mut b = 0;
        while i < sizes.len() {
            let burst = bursts[b % bursts.len()];
            b += 1;
            let mut sent = Vec::new();
            for _ in 0..burst {
                if i == sizes.len() { break; }
                let f: Vec<u8> = (0..sizes[i]).map(|k| (k ^ i) as u8).collect();
                match tx.send(&f, Duration::ZERO) {
                    Ok(()) => { sent.push(f); i += 1; }
                    Err(RingError::Full) => break,
                    Err(e) => return Err(TestCaseError::fail(format!("send: {e}"))),
                }
            }
            if sent.is_empty() {
                // The writer published a skip marker and the frame waits for the reader to
                // pass it (a reader that never polls would leave the writer Full forever).
                let got = rx.try_recv(&mut buf).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert!(!got, "a skip marker is not a frame");
            }
            for f in sent {
                rx.recv(&mut buf, Some(Duration::from_secs(1))).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(&buf, &f);
            }
            prop_assert!(rx.reader.head().is_multiple_of(8));
        }
        prop_assert!(!rx.try_recv(&mut buf).unwrap());
    }
}

#[test]
fn the_ring_memfd_cannot_shrink_or_grow_and_the_seals_cannot_be_removed() {
    use std::os::fd::AsRawFd;
    let sup = region(&small());
    // The host's view: its own descriptor on the same memfd, as after the spawn's dup2.
    let host_fd = sup.as_fd().try_clone_to_owned().unwrap();
    let raw = host_fd.as_raw_fd();
    let len = small().region_bytes().unwrap() as i64;
    for (what, size) in [
        ("truncate to 0", 0),
        ("shrink by a page", len - 4096),
        ("grow", len * 2),
    ] {
        // SAFETY: ftruncate on a descriptor we own; no memory is passed.
        let rc = unsafe { libc::ftruncate(raw, size) };
        let err = std::io::Error::last_os_error();
        assert_eq!(rc, -1, "{what} must fail");
        assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{what}: {err}");
    }
    // SAFETY: fallocate on a descriptor we own; growing past the end is what F_SEAL_GROW stops.
    let rc = unsafe { libc::fallocate(raw, 0, len, 4096) };
    assert_eq!(rc, -1, "fallocate past the end must fail");
    // SAFETY: fcntl with integer arguments on a descriptor we own.
    let rc = unsafe { libc::fcntl(raw, libc::F_ADD_SEALS, libc::F_SEAL_WRITE) };
    assert_eq!(rc, -1, "F_SEAL_SEAL must stop further seals");
    // SAFETY: as above.
    let seals = unsafe { libc::fcntl(raw, libc::F_GET_SEALS) };
    assert_eq!(seals & super::memfd::RING_SEALS, super::memfd::RING_SEALS);
    // The supervisor's mapping is whole: every byte of the last page is still readable.
    let (tx, rx) = supervisor_channels(sup.clone());
    drop((tx, rx));
    assert!(!sup.any_closed());
    let h = reopen(&sup);
    assert_eq!(h.config().ring_bytes, small().ring_bytes);
}

#[test]
fn open_refuses_an_unsealed_memfd() {
    // A memfd with the right size and header but no seals, as a forged fd 3 would be.
    let sup = region(&small());
    let len = small().region_bytes().unwrap();
    let fd =
        nix::sys::memfd::memfd_create(c"unsealed", nix::sys::memfd::MFdFlags::MFD_CLOEXEC).unwrap();
    nix::unistd::ftruncate(&fd, len as i64).unwrap();
    let mut f = std::fs::File::from(fd);
    let mut header = vec![0u8; len];
    // SAFETY: reads `len` bytes of the live mapping into a Vec of that length.
    unsafe {
        std::ptr::copy_nonoverlapping(
            std::ptr::from_ref(sup.header()).cast::<u8>(),
            header.as_mut_ptr(),
            crate::ring::layout::DATA_OFFSET,
        )
    };
    std::io::Write::write_all(&mut f, &header).unwrap();
    let e = Region::open(f.into()).unwrap_err();
    assert!(
        matches!(&e, RingError::BadRegion { reason } if reason.contains("seal")),
        "{e}"
    );
}
