//! The link against fake hosts in this process (threads on a host-side mapping).

use super::*;
use crate::protocol::{Process, ProcessResult, ResultStatus};
use crate::ring::RingConfig;

fn pair() -> (Arc<Region>, Arc<Region>) {
    let sup = Arc::new(Region::create("wm-link-test", &RingConfig::default()).unwrap());
    let fd = sup.as_fd().try_clone_to_owned().unwrap();
    let bell = sup.bell_fd().unwrap().try_clone_to_owned().unwrap();
    let host = Arc::new(Region::open_with_bell(fd, Some(bell)).unwrap());
    (sup, host)
}

/// A host thread answering Process and Ping, and sending one Log first.
fn fake_host(host: Arc<Region>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let (tx, mut rx) = ring::host_channels(host);
        let log = Message::Log(crate::protocol::Log {
            message: "hello".into(),
            ..Default::default()
        });
        tx.send(&log.encode(), Duration::from_secs(5)).unwrap();
        let mut buf = Vec::new();
        while rx.recv(&mut buf, None).is_ok() {
            let reply = match Message::decode(&buf).unwrap() {
                Message::Process(p) => Message::ProcessResult(ProcessResult {
                    msg_id: p.msg_id,
                    worker_id: p.worker_id,
                    status: ResultStatus::Ok,
                    response: p.event,
                    ..Default::default()
                }),
                Message::Ping { nonce } => Message::Pong { nonce },
                Message::StatsRequest { .. } => continue, // never answered
                Message::Shutdown { .. } => break,
                other => panic!("unexpected {other:?}"),
            };
            if tx.send(&reply.encode(), Duration::from_secs(5)).is_err() {
                break;
            }
        }
    })
}

/// Waits for a fake host's thread to end without blocking the runtime.
async fn join_host<T: Send + 'static>(h: std::thread::JoinHandle<T>) -> T {
    tokio::task::spawn_blocking(move || h.join().unwrap())
        .await
        .unwrap()
}

async fn watchdog<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("watchdog: test hung")
}

type NewLink = fn(Arc<Region>) -> (HostLink, mpsc::Receiver<Message>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_get_their_own_replies_and_events_flow() {
    requests_and_events(HostLink::new_async).await;
}

/// The same over the reader thread (`HostLink::new`), which hosts without the doorbell
/// eventfd still use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reader_thread_still_serves_requests_and_events() {
    requests_and_events(HostLink::new).await;
}

async fn requests_and_events(new_link: NewLink) {
    watchdog(async {
        let (sup, host) = pair();
        let h = fake_host(host);
        let (link, mut events) = new_link(sup);
        let ev = events.recv().await.unwrap();
        assert!(matches!(ev, Message::Log(l) if l.message == "hello"));
        let mut tasks = Vec::new();
        for i in 0..50u64 {
            let link = link.clone();
            tasks.push(tokio::spawn(async move {
                let r = link
                    .request(Message::Process(Process {
                        msg_id: i,
                        worker_id: format!("w{i}"),
                        event: vec![i as u8; i as usize],
                    }))
                    .await
                    .unwrap();
                match r {
                    Message::ProcessResult(r) => {
                        assert_eq!(r.msg_id, i);
                        assert_eq!(r.response, vec![i as u8; i as usize]);
                    }
                    other => panic!("{other:?}"),
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            link.request(Message::Ping { nonce: 9 }).await.unwrap(),
            Message::Pong { nonce: 9 }
        );
        assert!(matches!(
            link.request(Message::Shutdown { deadline_ms: 1 }).await,
            Err(LinkError::NotARequest { .. })
        ));
        link.send(&Message::Shutdown { deadline_ms: 1 }).unwrap();
        join_host(h).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_died_fails_pending_requests_and_ends_the_event_stream() {
    watchdog(async {
        let (sup, host) = pair();
        let h = fake_host(host);
        let (link, mut events) = HostLink::new_async(sup);
        let _ = events.recv().await; // the Log
        let l2 = link.clone();
        let pending =
            tokio::spawn(async move { l2.request(Message::StatsRequest { request_id: 1 }).await });
        while link.in_flight() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        link.peer_died();
        assert!(matches!(pending.await.unwrap(), Err(LinkError::PeerGone)));
        assert!(matches!(
            link.request(Message::Ping { nonce: 1 }).await,
            Err(LinkError::PeerGone)
        ));
        assert!(events.recv().await.is_none());
        assert!(link.is_dead());
        join_host(h).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_frame_disconnects_the_host() {
    watchdog(async {
        let (sup, host) = pair();
        let (link, mut events) = HostLink::new_async(sup.clone());
        let l2 = link.clone();
        let pending = tokio::spawn(async move { l2.request(Message::Ping { nonce: 3 }).await });
        let (htx, _hrx) = ring::host_channels(host);
        while link.in_flight() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        htx.send(b"not a flatbuffer at all", Duration::from_secs(1))
            .unwrap();
        assert!(matches!(
            pending.await.unwrap(),
            Err(LinkError::HostMisbehaved { .. })
        ));
        assert!(events.recv().await.is_none());
        assert!(sup.is_closed(Side::Host));
    })
    .await;
}

fn result_for(p: Process) -> Message {
    Message::ProcessResult(ProcessResult {
        msg_id: p.msg_id,
        worker_id: p.worker_id,
        status: ResultStatus::Ok,
        response: p.event,
        ..Default::default()
    })
}

/// A host thread serving lane `k`: answers each Process on the lane, counts them.
fn lane_host(host: Arc<Region>, k: usize) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let (tx, mut rx) = ring::host_lane(host, k).unwrap();
        let mut buf = Vec::new();
        let mut served = 0;
        while rx.recv(&mut buf, None).is_ok() {
            let Ok(Message::Process(p)) = Message::decode(&buf) else {
                panic!("lane {k} got something else than a Process");
            };
            served += 1;
            if tx
                .send(&result_for(p).encode(), Duration::from_secs(5))
                .is_err()
            {
                break;
            }
        }
        served
    })
}

fn process(msg_id: u64, worker: &str) -> Message {
    Message::Process(Process {
        msg_id,
        worker_id: worker.into(),
        event: msg_id.to_le_bytes().to_vec(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_of_a_worker_with_lanes_take_its_lanes_and_others_the_control_ring() {
    watchdog(async {
        let (sup, host) = pair();
        let control = fake_host(host.clone());
        let (link, mut events) = HostLink::new_async(sup.clone());
        let _ = events.recv().await; // the fake host's Log
        assert_eq!(link.assign_lanes("w", 2), vec![0, 1]);
        assert_eq!(
            link.assign_lanes("w", 2),
            vec![0, 1],
            "a reload keeps its lanes"
        );
        assert_eq!(link.assign_lanes("v", 1), vec![2]);
        let lanes: Vec<_> = (0..3).map(|k| lane_host(host.clone(), k)).collect();
        let mut tasks = Vec::new();
        for i in 0..40u64 {
            let link = link.clone();
            let worker = ["w", "v", "nolanes"][i as usize % 3];
            tasks.push(tokio::spawn(async move {
                match link.request(process(i, worker)).await.unwrap() {
                    Message::ProcessResult(r) => {
                        assert_eq!((r.msg_id, r.response), (i, i.to_le_bytes().to_vec()))
                    }
                    other => panic!("{other:?}"),
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // A frame too large for a lane takes the control ring.
        let big = Message::Process(Process {
            msg_id: 99,
            worker_id: "v".into(),
            event: vec![7; sup.config().lane_max_frame() + 1],
        });
        assert!(matches!(
            link.request(big).await.unwrap(),
            Message::ProcessResult(r) if r.msg_id == 99
        ));
        assert_eq!(link.in_flight(), 0);
        link.release_lanes("w");
        assert!(link.lanes_of("w").is_empty());
        assert_eq!(link.assign_lanes("u", 4), vec![0, 1, 3, 4]);
        link.peer_died();
        let served: Vec<usize> = lanes.into_iter().map(|h| h.join().unwrap()).collect();
        // 40 calls: 14 for w over lanes 0 and 1, 13 for v on lane 2, 13 on the control ring.
        assert_eq!(served[0] + served[1], 14, "{served:?}");
        assert_eq!(served[2], 13, "{served:?}");
        join_host(control).await;
    })
    .await;
}

/// The host answers a call sent on lane 0 on lane 1: cut off as misbehaving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_on_another_lane_than_its_call_cuts_the_host_off() {
    watchdog(async {
        let (sup, host) = pair();
        let (link, mut events) = HostLink::new_async(sup.clone());
        assert_eq!(link.assign_lanes("w", 1), vec![0]);
        let h = std::thread::spawn(move || {
            let (_, mut rx0) = ring::host_lane(host.clone(), 0).unwrap();
            let (tx1, _) = ring::host_lane(host, 1).unwrap();
            let mut buf = Vec::new();
            rx0.recv(&mut buf, Some(Duration::from_secs(10))).unwrap();
            let Ok(Message::Process(p)) = Message::decode(&buf) else {
                panic!("expected a Process on lane 0");
            };
            tx1.send(&result_for(p).encode(), Duration::from_secs(5))
                .unwrap();
        });
        let r = link.request(process(5, "w")).await;
        assert!(
            matches!(&r, Err(LinkError::HostMisbehaved { reason }) if reason.contains("lane 1") && reason.contains("lane 0")),
            "{r:?}"
        );
        assert!(events.recv().await.is_none());
        assert!(sup.is_closed(Side::Host));
        h.join().unwrap();
    })
    .await;
}

/// A lane carries only results: a Log (or anything else) on a lane cuts the host off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anything_but_a_result_on_a_lane_cuts_the_host_off() {
    watchdog(async {
        let (sup, host) = pair();
        let (link, mut events) = HostLink::new_async(sup.clone());
        let (tx, _) = ring::host_lane(host, 3).unwrap();
        let log = Message::Log(crate::protocol::Log {
            message: "sneaky".into(),
            ..Default::default()
        });
        tx.send(&log.encode(), Duration::from_secs(1)).unwrap();
        assert!(events.recv().await.is_none(), "the Log must not be delivered");
        assert!(matches!(
            link.dead_reason(),
            Some(LinkError::HostMisbehaved { reason }) if reason.contains("lanes carry only ProcessResult")
        ));
    })
    .await;
}

/// A result on a lane that nobody waits for (a late answer, or a forged one) goes to the
/// event stream, where the pool checks it against the calls in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_nobody_waits_for_on_a_lane_goes_to_the_events() {
    watchdog(async {
        let (sup, host) = pair();
        let (link, mut events) = HostLink::new_async(sup);
        let (tx, _) = ring::host_lane(host, 2).unwrap();
        let Message::Process(p) = process(77, "w") else {
            unreachable!()
        };
        tx.send(&result_for(p).encode(), Duration::from_secs(1))
            .unwrap();
        assert!(matches!(
            events.recv().await,
            Some(Message::ProcessResult(r)) if r.msg_id == 77
        ));
        assert!(!link.is_dead());
    })
    .await;
}

/// The host moves the to-host control ring's reader index while its calls go through a
/// lane: the link notices at the next frame the host sends, not at its next control send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scribbled_control_ring_is_noticed_while_calls_take_lanes() {
    watchdog(async {
        let (sup, host) = pair();
        let (link, mut events) = HostLink::new_async(sup.clone());
        assert_eq!(link.assign_lanes("w", 1), vec![0]);
        let h = std::thread::spawn(move || {
            let (tx, mut rx) = ring::host_lane(host.clone(), 0).unwrap();
            let mut buf = Vec::new();
            rx.recv(&mut buf, Some(Duration::from_secs(10))).unwrap();
            let Ok(Message::Process(p)) = Message::decode(&buf) else {
                panic!("expected a Process on lane 0");
            };
            host.ctl(0).head.store(0x5A5A_5A58, std::sync::atomic::Ordering::Release);
            tx.send(&result_for(p).encode(), Duration::from_secs(5))
                .unwrap();
        });
        let r = link.request(process(1, "w")).await;
        assert!(
            matches!(&r, Err(LinkError::HostMisbehaved { reason }) if reason.contains("to-host ring is corrupt")),
            "{r:?}"
        );
        assert!(events.recv().await.is_none());
        h.join().unwrap();
    })
    .await;
}

// --- The async reader against hostile hosts (docs/ring.md, "The runtime reads its lanes") ---

/// CPU time of the calling thread so far.
fn thread_cpu() -> Duration {
    // SAFETY: getrusage writes one rusage into the zeroed local it is given.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// A host that writes the doorbell eventfd in a tight loop without publishing anything: the
/// reader (on this test's one runtime thread, whose CPU is measured) is throttled to about
/// one wake-up per `THROTTLE`, and the link still answers promptly.
#[tokio::test(flavor = "current_thread")]
async fn a_host_flooding_the_doorbell_costs_bounded_cpu_and_the_link_stays_responsive() {
    watchdog(async {
        let (sup, host) = pair();
        let h = fake_host(host.clone());
        let (link, mut events) = HostLink::new_async(sup);
        let _ = events.recv().await; // the Log
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flood = {
            let (host, stop) = (host.clone(), stop.clone());
            std::thread::spawn(move || {
                use std::os::fd::AsRawFd;
                let fd = host.bell_fd().unwrap().as_raw_fd();
                let one = 1u64.to_ne_bytes();
                let mut writes = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // SAFETY: write(2) reads 8 bytes from a live local.
                    unsafe { libc::write(fd, one.as_ptr().cast(), 8) };
                    writes += 1;
                }
                writes
            })
        };
        let (cpu0, t0) = (thread_cpu(), std::time::Instant::now());
        let mut worst = Duration::ZERO;
        for nonce in 0..20 {
            let t = std::time::Instant::now();
            let r = link.request(Message::Ping { nonce }).await.unwrap();
            assert_eq!(r, Message::Pong { nonce });
            worst = worst.max(t.elapsed());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (cpu, wall) = (thread_cpu() - cpu0, t0.elapsed());
        stop.store(true, Ordering::Relaxed);
        let writes = flood.join().unwrap();
        println!(
            "flood: {writes} signals in {wall:?}; reader thread CPU {cpu:?}; worst ping {worst:?}"
        );
        assert!(writes > 10_000, "the flood did not flood: {writes} signals");
        // Unthrottled, the reader would wake once per signal and use its whole thread.
        assert!(
            cpu < wall / 8,
            "the reader used {cpu:?} of CPU in {wall:?} against a flooding host"
        );
        assert!(worst < Duration::from_millis(500), "a ping took {worst:?}");
        assert!(!link.is_dead());
        link.send(&Message::Shutdown { deadline_ms: 1 }).unwrap();
        join_host(h).await;
    })
    .await;
}

/// A host that publishes but never signals the doorbell (it closed or lost its eventfd):
/// its calls wait for their own deadlines, and its death still fails them at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_never_signals_leaves_its_calls_to_their_deadlines_and_death_still_ends_them() {
    watchdog(async {
        let sup = Arc::new(Region::create("wm-link-test", &RingConfig::default()).unwrap());
        // The host side without the eventfd: its writers only know the futex.
        let host = Arc::new(Region::open(sup.as_fd().try_clone_to_owned().unwrap()).unwrap());
        let h = fake_host(host);
        let (link, _events) = HostLink::new_async(sup.clone());
        // Let the reader go to sleep first: a reply that lands while it is still draining (or
        // re-checking after announcing its sleep) is read without a signal, as it should be.
        let asleep = std::time::Instant::now();
        while sup.doorbell().waiting.load(Ordering::SeqCst) & crate::ring::layout::BELL_EVENTFD == 0
        {
            assert!(
                asleep.elapsed() < Duration::from_secs(5),
                "the reader never went to sleep"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let deadline = Duration::from_millis(300);
        let t = std::time::Instant::now();
        let r = tokio::time::timeout(deadline, link.request(Message::Ping { nonce: 1 })).await;
        let took = t.elapsed();
        assert!(r.is_err(), "the reply arrived without a signal: {r:?}");
        assert!(
            took >= deadline && took < deadline + Duration::from_secs(2),
            "the deadline fired after {took:?}"
        );
        assert!(!link.is_dead(), "silence alone is not a protocol violation");
        let l2 = link.clone();
        // A request the fake host never answers (a Pong could still race the death).
        let pending =
            tokio::spawn(async move { l2.request(Message::StatsRequest { request_id: 2 }).await });
        while link.in_flight() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let t = std::time::Instant::now();
        link.peer_died();
        assert!(matches!(pending.await.unwrap(), Err(LinkError::PeerGone)));
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        join_host(h).await;
    })
    .await;
}

/// A host that scribbles a lane's frame header: cut off as misbehaving, naming the lane, as
/// with the reader thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scribbled_lane_frame_header_cuts_the_host_off() {
    watchdog(async {
        let (sup, host) = pair();
        let (link, mut events) = HostLink::new_async(sup.clone());
        assert_eq!(link.assign_lanes("w", 1), vec![0]);
        let l2 = link.clone();
        let pending = tokio::spawn(async move { l2.request(process(4, "w")).await });
        while link.in_flight() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (tx, _rx) = ring::host_lane(host, 0).unwrap();
        // A header claiming a frame far larger than the lane, published as 16 bytes.
        let mut raw = 0x574D_0001_0FFF_FFF0u64.to_le_bytes().to_vec();
        raw.extend_from_slice(&[0xAB; 8]);
        tx.inject_raw_for_tests(&raw, 16);
        let r = pending.await.unwrap();
        assert!(
            matches!(&r, Err(LinkError::HostMisbehaved { reason }) if reason.contains("lane 0")),
            "{r:?}"
        );
        assert!(events.recv().await.is_none());
        assert!(sup.is_closed(Side::Host));
    })
    .await;
}
