//! Multi-process tests of the ring: the parent plays the supervisor, a real child process (this
//! same binary, re-executed with `WM_RING_CHILD=<role>`) plays the host and gets the memfd at
//! fd 3, exactly as the host-runner will.
//!
//! `harness = false`: `main` runs each case on its own thread under a watchdog, so a hang fails
//! the run instead of blocking it. Arguments that do not start with `-` filter cases by name.
//! The child is started with fork+exec (std `Command`), never a bare fork of this threaded
//! process, and with `PR_SET_PDEATHSIG=SIGKILL` so it cannot outlive a failed run.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use wm_shared::ring::{
    self, FrameReceiver, FrameSender, HostState, Region, RingConfig, RingError, Side,
};

const WATCHDOG: Duration = Duration::from_secs(60);
const CHILD_ENV: &str = "WM_RING_CHILD";

fn cfg() -> RingConfig {
    RingConfig {
        ring_bytes: 1 << 16,
        max_frame: 1 << 15,
        ..RingConfig::default()
    }
}

// ---------------------------------------------------------------- child side

fn child_channels() -> (Arc<Region>, FrameSender, FrameReceiver) {
    // SAFETY: the parent dup2()ed the memfd to fd 3 and cleared CLOEXEC for us, and nothing
    // else in this freshly exec'd process owns fd 3.
    let fd = unsafe { OwnedFd::from_raw_fd(3) };
    let region = Arc::new(Region::open(fd).expect("child: open ring fd 3"));
    let (tx, rx) = ring::host_channels(region.clone());
    region.set_host_state(HostState::Ready);
    (region, tx, rx)
}

fn child(role: &str) -> ! {
    let (region, tx, mut rx) = child_channels();
    let mut buf = Vec::new();
    match role {
        "echo" => {
            while rx.recv(&mut buf, None).is_ok() {
                if tx.send(&buf, Duration::from_secs(10)).is_err() {
                    break;
                }
            }
            region.set_host_state(HostState::Exited);
            std::process::exit(0);
        }
        "die-mid-frame" => {
            tx.send(b"hello", Duration::from_secs(5)).expect("send");
            // Header and half the payload of a 4000-byte frame, never published, then die.
            let mut partial = frame_header(4000);
            partial.extend_from_slice(&[0xAB; 2000]);
            tx.inject_raw_for_tests(&partial, 0);
            std::process::abort();
        }
        "die-mid-frame-published" => {
            // Publishes the header of a 4000-byte frame but only 8 bytes, then dies.
            tx.inject_raw_for_tests(&frame_header(4000), 8);
            std::process::abort();
        }
        "garbage-length" => {
            tx.inject_raw_for_tests(&frame_header(0xFFFF_FFF0), 8);
            std::process::exit(0);
        }
        "proto-echo" => {
            use wm_shared::protocol::{Message, ProcessResult, ResultStatus};
            while rx.recv(&mut buf, None).is_ok() {
                let reply = match Message::decode(&buf) {
                    Ok(Message::Process(p)) => Message::ProcessResult(ProcessResult {
                        msg_id: p.msg_id,
                        worker_id: p.worker_id,
                        status: ResultStatus::Ok,
                        response: p.event,
                        ..Default::default()
                    }),
                    Ok(Message::Ping { nonce }) => Message::Pong { nonce },
                    // Never answered: the parent kills us while it waits.
                    Ok(_) => continue,
                    Err(e) => {
                        eprintln!("child: bad frame: {e}");
                        std::process::exit(3);
                    }
                };
                if tx.send(&reply.encode(), Duration::from_secs(10)).is_err() {
                    break;
                }
            }
            std::process::exit(0);
        }
        "stop-reading" => loop {
            thread::sleep(Duration::from_secs(1));
        },
        other => {
            eprintln!("unknown child role {other}");
            std::process::exit(2);
        }
    }
}

fn frame_header(len: u32) -> Vec<u8> {
    let word = (u64::from(ring::layout::KIND_FRAME) << 32) | u64::from(len);
    word.to_le_bytes().to_vec()
}

// ---------------------------------------------------------------- parent side

struct Host {
    region: Arc<Region>,
    child: Child,
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(role: &str) -> Host {
    let region = Arc::new(Region::create(&format!("wm-test-{role}"), &cfg()).expect("create"));
    let fd = region.as_fd().as_raw_fd();
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.env(CHILD_ENV, role).stdin(Stdio::null());
    // SAFETY: the closure runs in the child between fork and exec and only calls dup2, fcntl
    // and prctl, which are async-signal-safe; it allocates nothing and touches no locks. `fd`
    // is open in the parent (the region outlives the spawn), so it is open in the child.
    unsafe {
        cmd.pre_exec(move || {
            if fd == 3 {
                // dup2 onto itself keeps CLOEXEC: clear it explicitly.
                if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("spawn child");
    Host { region, child }
}

/// Waits for the child to exit (polling; no test waits forever).
fn wait_exit(h: &mut Host, limit: Duration) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(st) = h.child.try_wait().expect("try_wait") {
            return st;
        }
        assert!(t.elapsed() < limit, "child did not exit within {limit:?}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until the child mapped the region and said Ready.
fn wait_ready(h: &Host) {
    let t = Instant::now();
    while h.region.host_state() != HostState::Ready {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "child never became ready"
        );
        thread::sleep(Duration::from_millis(1));
    }
}

fn echo_round_trips_then_the_child_exits_when_closed() {
    let mut h = spawn("echo");
    let (tx, mut rx) = ring::supervisor_channels(h.region.clone());
    let mut buf = Vec::new();
    for i in 0..2000usize {
        let len = (i * 7919) % (cfg().max_frame + 1);
        let msg: Vec<u8> = (0..len).map(|k| (k + i) as u8).collect();
        tx.send(&msg, Duration::from_secs(10)).expect("send");
        rx.recv(&mut buf, Some(Duration::from_secs(10)))
            .expect("recv");
        assert_eq!(buf, msg, "echo {i} of {len} bytes");
    }
    assert_eq!(h.region.host_state(), HostState::Ready);
    // Closing our side wakes the child's blocked recv; it exits on its own.
    h.region.mark_closed(Side::Supervisor);
    let st = wait_exit(&mut h, Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "{st:?}");
    assert_eq!(h.region.host_state(), HostState::Exited);
}

/// Waits in recv on another thread, lets `act` run, and returns recv's result and how long it
/// took after `act` returned.
fn recv_while(
    rx: FrameReceiver,
    act: impl FnOnce(),
) -> (Result<Vec<u8>, RingError>, Duration, FrameReceiver) {
    let (tx, done) = mpsc::channel();
    let waiter = thread::spawn(move || {
        let mut rx = rx;
        let mut buf = Vec::new();
        let r = rx.recv(&mut buf, None).map(|()| buf);
        let _ = tx.send(Instant::now());
        (r, rx)
    });
    act();
    let acted = Instant::now();
    let finished = done.recv_timeout(WATCHDOG).expect("recv did not wake up");
    let (r, rx) = waiter.join().expect("waiter");
    (r, finished.saturating_duration_since(acted), rx)
}

fn child_dying_mid_frame_gives_peer_gone() {
    let mut h = spawn("die-mid-frame");
    let (_tx, mut rx) = ring::supervisor_channels(h.region.clone());
    let mut buf = Vec::new();
    rx.recv(&mut buf, Some(Duration::from_secs(20)))
        .expect("first frame");
    assert_eq!(buf, b"hello");
    let region = h.region.clone();
    let (r, woke_after, _) = recv_while(rx, || {
        let st = wait_exit(&mut h, Duration::from_secs(20));
        assert_eq!(st.signal(), Some(libc::SIGABRT), "{st:?}");
        // What the pool does when waitpid reports the death.
        region.mark_closed(Side::Host);
    });
    assert!(matches!(r, Err(RingError::PeerGone)), "{r:?}");
    println!("    recv woke {woke_after:?} after mark_closed");
}

fn child_dying_after_publishing_half_a_frame_gives_corrupt() {
    let mut h = spawn("die-mid-frame-published");
    let (_tx, mut rx) = ring::supervisor_channels(h.region.clone());
    let mut buf = Vec::new();
    let r = rx.recv(&mut buf, Some(Duration::from_secs(20)));
    assert!(matches!(r, Err(RingError::Corrupt { .. })), "{r:?}");
    let st = wait_exit(&mut h, Duration::from_secs(20));
    assert_eq!(st.signal(), Some(libc::SIGABRT), "{st:?}");
}

fn garbage_length_gives_corrupt() {
    let mut h = spawn("garbage-length");
    let st = wait_exit(&mut h, Duration::from_secs(20));
    assert_eq!(st.code(), Some(0));
    let (_tx, mut rx) = ring::supervisor_channels(h.region.clone());
    let mut buf = Vec::new();
    let r = rx.recv(&mut buf, Some(Duration::from_secs(1)));
    match r {
        Err(RingError::Corrupt { what }) => assert!(what.contains("4294967280"), "{what}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

fn a_child_that_stops_reading_gets_backpressure_then_full() {
    let h = spawn("stop-reading");
    wait_ready(&h);
    let (tx, _rx) = ring::supervisor_channels(h.region.clone());
    let frame = vec![1u8; 1000];
    let cost = RingConfig::frame_cost(frame.len());
    let fits = cfg().ring_bytes / cost;
    for i in 0..fits {
        tx.send(&frame, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("frame {i} of {fits} should fit: {e}"));
    }
    let t = Instant::now();
    let r = tx.send(&frame, Duration::from_millis(200));
    assert!(matches!(r, Err(RingError::Full)), "{r:?}");
    assert!(t.elapsed() >= Duration::from_millis(200));
    assert!(r.unwrap_err().to_string().contains("RING_BYTES"));
}

fn sigkill_while_the_parent_waits_in_recv_wakes_it() {
    let mut h = spawn("echo");
    wait_ready(&h);
    let (_tx, rx) = ring::supervisor_channels(h.region.clone());
    let region = h.region.clone();
    let (r, woke_after, _) = recv_while(rx, || {
        // Let the waiter go to sleep on the futex first.
        thread::sleep(Duration::from_millis(300));
        h.child.kill().expect("SIGKILL");
        let st = wait_exit(&mut h, Duration::from_secs(20));
        assert_eq!(st.signal(), Some(libc::SIGKILL));
        region.mark_closed(Side::Host);
    });
    assert!(matches!(r, Err(RingError::PeerGone)), "{r:?}");
    println!("    recv woke {woke_after:?} after mark_closed");
}

/// HostLink against a real child: requests get their replies; a request pending when the child
/// is SIGKILLed fails with PeerGone once the pool-like code calls `peer_died`.
#[cfg(feature = "tokio")]
fn host_link_over_a_real_child_and_its_death() {
    use wm_shared::protocol::link::{HostLink, LinkError};
    use wm_shared::protocol::{Message, Process};
    let mut h = spawn("proto-echo");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let region = h.region.clone();
    rt.block_on(async {
        let (link, _events) = HostLink::new(region);
        for i in 0..200u64 {
            let r = link
                .request(Message::Process(Process {
                    msg_id: i,
                    worker_id: "w".into(),
                    event: vec![i as u8; (i as usize * 37) % 5000],
                }))
                .await
                .expect("reply");
            match r {
                Message::ProcessResult(r) => {
                    assert_eq!(r.msg_id, i);
                    assert_eq!(r.response.len(), (i as usize * 37) % 5000);
                }
                other => panic!("{other:?}"),
            }
        }
        let l2 = link.clone();
        let pending =
            tokio::spawn(async move { l2.request(Message::StatsRequest { request_id: 1 }).await });
        while link.in_flight() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        h.child.kill().expect("SIGKILL");
        let st = tokio::task::block_in_place(|| wait_exit(&mut h, Duration::from_secs(20)));
        assert_eq!(st.signal(), Some(libc::SIGKILL));
        link.peer_died();
        let r = pending.await.expect("join");
        assert!(matches!(r, Err(LinkError::PeerGone)), "{r:?}");
    });
}

fn a_foreign_fd_is_refused_by_the_child_side() {
    // The host side validates what it maps: a plain file is not a ring.
    let f = tempfile_fd();
    let r = Region::open(f);
    assert!(matches!(r, Err(RingError::BadRegion { .. })), "{r:?}");
}

fn tempfile_fd() -> OwnedFd {
    let f = tempfile::tempfile().expect("tempfile");
    f.set_len(1 << 20).expect("set_len");
    f.into()
}

fn main() {
    if let Ok(role) = std::env::var(CHILD_ENV) {
        child(&role);
    }
    let cases: &[(&str, fn())] = &[
        (
            "echo_round_trips_then_the_child_exits_when_closed",
            echo_round_trips_then_the_child_exits_when_closed,
        ),
        (
            "child_dying_mid_frame_gives_peer_gone",
            child_dying_mid_frame_gives_peer_gone,
        ),
        (
            "child_dying_after_publishing_half_a_frame_gives_corrupt",
            child_dying_after_publishing_half_a_frame_gives_corrupt,
        ),
        ("garbage_length_gives_corrupt", garbage_length_gives_corrupt),
        (
            "a_child_that_stops_reading_gets_backpressure_then_full",
            a_child_that_stops_reading_gets_backpressure_then_full,
        ),
        (
            "sigkill_while_the_parent_waits_in_recv_wakes_it",
            sigkill_while_the_parent_waits_in_recv_wakes_it,
        ),
        (
            "a_foreign_fd_is_refused_by_the_child_side",
            a_foreign_fd_is_refused_by_the_child_side,
        ),
        #[cfg(feature = "tokio")]
        (
            "host_link_over_a_real_child_and_its_death",
            host_link_over_a_real_child_and_its_death,
        ),
    ];
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut failed = Vec::new();
    let mut ran = 0;
    for (name, f) in cases {
        if !filters.is_empty() && !filters.iter().any(|flt| name.contains(flt.as_str())) {
            continue;
        }
        ran += 1;
        println!("test {name} ...");
        let (tx, rx) = mpsc::channel();
        let f = *f;
        thread::spawn(move || {
            let r = std::panic::catch_unwind(f);
            let _ = tx.send(r.is_ok());
        });
        match rx.recv_timeout(WATCHDOG) {
            Ok(true) => println!("test {name} ... ok"),
            Ok(false) => {
                println!("test {name} ... FAILED");
                failed.push(*name);
            }
            Err(_) => {
                // Children die with us (PR_SET_PDEATHSIG).
                println!("test {name} ... TIMED OUT after {WATCHDOG:?}");
                failed.push(*name);
                break;
            }
        }
    }
    println!(
        "\ntest result: {}. {} passed; {} failed",
        if failed.is_empty() { "ok" } else { "FAILED" },
        ran - failed.len(),
        failed.len()
    );
    if !failed.is_empty() {
        println!("failures: {failed:?}");
        std::process::exit(1);
    }
}
