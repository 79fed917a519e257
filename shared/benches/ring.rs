//! Ring vs Unix-domain socket between a parent and a real child process.
//!
//! Run: `cargo bench -p workmanager-shared --bench ring` (results go in docs/benchmarks.md).
//! The child is this binary re-executed with `WM_RING_BENCH_CHILD=ring|uds`; it gets the memfd
//! at fd 3 or one end of a socketpair at fd 4.
//!
//! Every frame starts with a mode byte: `E` echo, `S` spin for the µs in bytes 1..5 then echo
//! (a handler that takes a while), `T` count without reply, `D` reply with the count.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wm_shared::ring::{self, HostState, Region, RingConfig, SpinBudget};

const CHILD_ENV: &str = "WM_RING_BENCH_CHILD";
const SIZES: [usize; 4] = [64, 4 << 10, 64 << 10, 1 << 20];
const IDLE_SAMPLES: usize = 5;

/// `WM_BENCH_QUICK=1`: a smoke run with few samples and short idle gaps (checks the harness,
/// numbers meaningless).
fn quick() -> bool {
    std::env::var_os("WM_BENCH_QUICK").is_some()
}

fn spin_for(us: u32) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_micros(u64::from(us)) {
        std::hint::spin_loop();
    }
}

fn handle(frame: &[u8], count: &mut u64) -> Option<Vec<u8>> {
    match frame.first() {
        Some(b'E') => Some(frame.to_vec()),
        Some(b'S') => {
            let us = u32::from_le_bytes(frame[1..5].try_into().unwrap_or_default());
            spin_for(us);
            Some(frame.to_vec())
        }
        Some(b'T') => {
            *count += 1;
            None
        }
        Some(b'D') => {
            let mut r = vec![b'D'];
            r.extend_from_slice(&count.to_le_bytes());
            *count = 0;
            Some(r)
        }
        _ => None,
    }
}

fn ring_child() -> ! {
    // SAFETY: the parent put the memfd at fd 3 (CLOEXEC cleared); nothing else owns it here.
    let fd = unsafe { OwnedFd::from_raw_fd(3) };
    let region = Arc::new(Region::open(fd).expect("open ring"));
    let (tx, mut rx) = ring::host_channels(region.clone());
    region.set_host_state(HostState::Ready);
    let mut buf = Vec::new();
    let mut count = 0;
    while rx.recv(&mut buf, None).is_ok() {
        // Echo frames are written straight from the receive buffer.
        if buf.first() == Some(&b'E') {
            if tx.send(&buf, Duration::from_secs(30)).is_err() {
                break;
            }
        } else if buf.first() == Some(&b'P') && buf.len() >= 13 {
            rx.set_spin(policy_from(&buf[1..13]));
            if tx.send(b"P", Duration::from_secs(30)).is_err() {
                break;
            }
        } else if let Some(reply) = handle(&buf, &mut count)
            && tx.send(&reply, Duration::from_secs(30)).is_err()
        {
            break;
        }
    }
    std::process::exit(0);
}

/// A spin policy as sent to the child: min µs, max µs, yield-after µs (u32::MAX = never).
fn policy_bytes(min_us: u32, max_us: u32, yield_us: u32) -> Vec<u8> {
    let mut f = vec![b'P'];
    for v in [min_us, max_us, yield_us] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    f
}

fn policy_from(b: &[u8]) -> SpinBudget {
    let v = |i: usize| u32::from_le_bytes(b[i * 4..i * 4 + 4].try_into().unwrap_or_default());
    let y = if v(2) == u32::MAX {
        Duration::MAX
    } else {
        Duration::from_micros(u64::from(v(2)))
    };
    SpinBudget::new(
        Duration::from_micros(u64::from(v(0))),
        Duration::from_micros(u64::from(v(1))),
    )
    .with_yield_after(y)
}

fn read_frame(s: &mut UnixStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    buf.resize(u32::from_le_bytes(len) as usize, 0);
    s.read_exact(buf)
}

fn write_frame(s: &mut UnixStream, frame: &[u8]) -> std::io::Result<()> {
    // One write for small frames: a length prefix written separately costs a second syscall.
    let mut out = Vec::with_capacity(4 + frame.len());
    out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
    out.extend_from_slice(frame);
    s.write_all(&out)
}

fn uds_child() -> ! {
    // SAFETY: the parent put one end of a socketpair at fd 4; nothing else owns it here.
    let mut s = unsafe { UnixStream::from_raw_fd(4) };
    let mut buf = Vec::new();
    let mut count = 0;
    while read_frame(&mut s, &mut buf).is_ok() {
        if let Some(reply) = handle(&buf, &mut count)
            && write_frame(&mut s, &reply).is_err()
        {
            break;
        }
    }
    std::process::exit(0);
}

/// A CPU set holding `cpu`, or every online CPU for `None`.
fn cpu_set(cpu: Option<usize>) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is plain data; all-zero is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    for c in 0..n {
        if cpu.is_none_or(|p| p == c) {
            // SAFETY: c < CPU_SETSIZE (the online CPU count is far below 1024) and `set` is a
            // live cpu_set_t.
            unsafe { libc::CPU_SET(c, &mut set) };
        }
    }
    set
}

/// Pins the calling thread to `set`.
fn apply(set: &libc::cpu_set_t) -> bool {
    // SAFETY: `set` is a live, initialised cpu_set_t of the size passed; pid 0 = this thread.
    // sched_setaffinity is a plain syscall, async-signal-safe, so pre_exec may call this too.
    unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), set) == 0 }
}

fn set_affinity(cpu: Option<usize>) -> bool {
    apply(&cpu_set(cpu))
}

fn spawn(role: &str, fd: i32, target: i32) -> Child {
    spawn_on(role, fd, target, None)
}

fn spawn_on(role: &str, fd: i32, target: i32, cpu: Option<usize>) -> Child {
    let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
    cmd.env(CHILD_ENV, role).stdin(Stdio::null());
    let pin = cpu.map(|c| cpu_set(Some(c)));
    // SAFETY: only async-signal-safe calls (dup2, fcntl, prctl) between fork and exec; `fd` is
    // open in the parent for the whole spawn.
    unsafe {
        cmd.pre_exec(move || {
            if fd == target {
                libc::fcntl(target, libc::F_SETFD, 0);
            } else if libc::dup2(fd, target) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if let Some(set) = &pin {
                apply(set);
            }
            Ok(())
        });
    }
    cmd.spawn().expect("spawn child")
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn summary(mut ns: Vec<u64>) -> (f64, f64) {
    ns.sort_unstable();
    (pct(&ns, 0.5), pct(&ns, 0.99))
}

fn busy_samples(size: usize) -> usize {
    let q = if quick() { 100 } else { 1 };
    (match size {
        0..=64 => 100_000,
        65..=4096 => 50_000,
        4097..=65536 => 5_000,
        _ => 300,
    } / q)
        .max(10)
}

fn echo_frame(size: usize) -> Vec<u8> {
    let mut f = vec![0x5A; size];
    f[0] = b'E';
    f
}

/// Something that can do one round trip of a frame.
trait Pipe {
    fn round_trip(&mut self, frame: &[u8], reply: &mut Vec<u8>);
    fn send_one_way(&mut self, frame: &[u8]);
}

struct RingPipe {
    tx: ring::FrameSender,
    rx: ring::FrameReceiver,
}

impl Pipe for RingPipe {
    fn round_trip(&mut self, frame: &[u8], reply: &mut Vec<u8>) {
        self.tx
            .send(frame, Duration::from_secs(30))
            .expect("ring send");
        self.rx
            .recv(reply, Some(Duration::from_secs(30)))
            .expect("ring recv");
    }
    fn send_one_way(&mut self, frame: &[u8]) {
        self.tx
            .send(frame, Duration::from_secs(30))
            .expect("ring send");
    }
}

struct UdsPipe(UnixStream);

impl Pipe for UdsPipe {
    fn round_trip(&mut self, frame: &[u8], reply: &mut Vec<u8>) {
        write_frame(&mut self.0, frame).expect("uds write");
        read_frame(&mut self.0, reply).expect("uds read");
    }
    fn send_one_way(&mut self, frame: &[u8]) {
        write_frame(&mut self.0, frame).expect("uds write");
    }
}

fn rtt_busy(p: &mut dyn Pipe, size: usize) -> (f64, f64) {
    let frame = echo_frame(size);
    let mut reply = Vec::new();
    let n = busy_samples(size);
    for _ in 0..n / 10 {
        p.round_trip(&frame, &mut reply);
    }
    let mut ns = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        p.round_trip(&frame, &mut reply);
        ns.push(t.elapsed().as_nanos() as u64);
    }
    assert_eq!(reply.len(), size);
    summary(ns)
}

fn rtt_idle(p: &mut dyn Pipe, size: usize) -> (f64, f64) {
    let frame = echo_frame(size);
    let mut reply = Vec::new();
    let mut ns = Vec::new();
    for _ in 0..IDLE_SAMPLES {
        std::thread::sleep(if quick() {
            Duration::from_millis(20)
        } else {
            Duration::from_secs(1)
        });
        let t = Instant::now();
        p.round_trip(&frame, &mut reply);
        ns.push(t.elapsed().as_nanos() as u64);
    }
    summary(ns)
}

fn throughput(p: &mut dyn Pipe, size: usize) -> (f64, f64) {
    let mut frame = vec![0u8; size];
    frame[0] = b'T';
    let n = (256usize << 20) / size.max(64);
    let n = n.clamp(200, 2_000_000) / if quick() { 100 } else { 1 };
    let mut reply = Vec::new();
    let t = Instant::now();
    for _ in 0..n {
        p.send_one_way(&frame);
    }
    p.round_trip(b"D", &mut reply);
    let secs = t.elapsed().as_secs_f64();
    let got = u64::from_le_bytes(reply[1..9].try_into().expect("count"));
    assert_eq!(got as usize, n, "child counted every frame");
    (n as f64 / secs, n as f64 * size as f64 / secs / 1e9)
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the ")" that ends the command name: utime is the 14th field overall.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
    let stime: u64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    utime + stime
}

fn main() {
    match std::env::var(CHILD_ENV).as_deref() {
        Ok("ring") => ring_child(),
        Ok("uds") => uds_child(),
        _ => {}
    }
    // `cargo bench` passes --bench; ignore arguments.
    let cfg = RingConfig::default();
    let region = Arc::new(Region::create("wm-bench", &cfg).expect("region"));
    let mut ring_child = spawn("ring", region.as_fd().as_raw_fd(), 3);
    let (tx, rx) = ring::supervisor_channels(region.clone());
    while region.host_state() != HostState::Ready {
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut rp = RingPipe { tx, rx };

    let (a, b) = UnixStream::pair().expect("socketpair");
    let mut uds_child = spawn("uds", b.as_raw_fd(), 4);
    drop(b);
    let mut up = UdsPipe(a);

    println!("## Ring benchmark ({} cores online)\n", num_cpus());
    println!("### Round trip, parent <-> child (µs)\n");
    println!(
        "| size | ring busy p50 | ring busy p99 | ring after 1 s idle p50 | p99 | UDS busy p50 | UDS busy p99 | UDS after idle p50 | p99 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for size in SIZES {
        let (rb50, rb99) = rtt_busy(&mut rp, size);
        let budget = rp.rx.spin().current();
        let (ri50, ri99) = rtt_idle(&mut rp, size);
        let (ub50, ub99) = rtt_busy(&mut up, size);
        let (ui50, ui99) = rtt_idle(&mut up, size);
        println!(
            "| {} | {rb50:.2} | {rb99:.2} | {ri50:.1} | {ri99:.1} | {ub50:.2} | {ub99:.2} | {ui50:.1} | {ui99:.1} |",
            human(size)
        );
        eprintln!("  (spin budget after busy {}: {budget:?})", human(size));
    }

    println!("\n### One-way throughput\n");
    println!("| size | ring msgs/s | ring GB/s | UDS msgs/s | UDS GB/s |");
    println!("|---|---|---|---|---|");
    for size in [64usize, 4 << 10, 64 << 10, 1 << 20] {
        let (rm, rg) = throughput(&mut rp, size);
        let (um, ug) = throughput(&mut up, size);
        println!(
            "| {} | {:.0} | {rg:.2} | {:.0} | {ug:.2} |",
            human(size),
            rm,
            um
        );
    }

    // Pinned: parent on CPU 0, a second ring child on CPU 1, so each side has its own vCPU
    // (unless other load lands there). Shows the hand-off itself, and what the spin policy buys.
    let pinned = num_cpus() >= 2 && set_affinity(Some(0));
    if pinned {
        let region2 = Arc::new(Region::create("wm-bench-pinned", &cfg).expect("region"));
        let mut child2 = spawn_on("ring", region2.as_fd().as_raw_fd(), 3, Some(1));
        let (tx2, rx2) = ring::supervisor_channels(region2.clone());
        while region2.host_state() != HostState::Ready {
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut pp = RingPipe { tx: tx2, rx: rx2 };
        println!("\n### Round trip, parent pinned to CPU 0, child pinned to CPU 1 (ring, µs)\n");
        println!("| size | busy p50 | busy p99 |");
        println!("|---|---|---|");
        for size in SIZES {
            let (p50, p99) = rtt_busy(&mut pp, size);
            println!("| {} | {p50:.2} | {p99:.2} |", human(size));
        }
        spin_table(&mut pp, "pinned as above");
        region2.mark_closed(ring::Side::Supervisor);
        let _ = child2.wait();
        set_affinity(None);
    }
    spin_table(&mut rp, "not pinned");
    rp.rx.set_spin(SpinBudget::default());

    // Idle pair: the parent waits in recv on a thread, the child waits in recv.
    let RingPipe { tx: _tx, rx } = rp;
    let waiter = std::thread::spawn(move || {
        let mut rx = rx;
        let mut buf = Vec::new();
        let _ = rx.recv(&mut buf, None);
    });
    std::thread::sleep(Duration::from_millis(500));
    let me = std::process::id();
    let (p0, c0) = (cpu_ticks(me), cpu_ticks(ring_child.id()));
    let idle = Duration::from_secs(if quick() { 1 } else { 5 });
    std::thread::sleep(idle);
    let (p1, c1) = (cpu_ticks(me), cpu_ticks(ring_child.id()));
    let hz = clock_ticks();
    let pct_of = |d: u64| d as f64 / hz / idle.as_secs_f64() * 100.0;
    println!("\n### Idle pair\n");
    println!(
        "Both sides blocked in `recv` for {idle:?}: parent {:.2}% CPU ({} ticks), child {:.2}% CPU ({} ticks), {hz} ticks/s.",
        pct_of(p1 - p0),
        p1 - p0,
        pct_of(c1 - c0),
        c1 - c0
    );
    region.mark_closed(ring::Side::Supervisor);
    let _ = waiter.join();
    let _ = ring_child.wait();
    drop(up);
    let _ = uds_child.wait();
}

fn spin_table(p: &mut RingPipe, how: &str) {
    println!("\n### Spin budget vs. a handler that takes a while (ring, 64 B, µs, {how})\n");
    println!(
        "Spin policy (both sides) against a child that spins `d` µs before replying; p50/p99 of 3000 round trips.\n"
    );
    let policies: [(&str, u32, u32, u32); 6] = [
        ("futex only", 0, 0, 0),
        ("fixed 2 µs", 2, 2, 1),
        ("fixed 50 µs", 50, 50, 1),
        ("adaptive, yield after 1 µs (default)", 2, 50, 1),
        ("adaptive, yield after 10 µs", 2, 50, 10),
        ("adaptive, never yield", 2, 50, u32::MAX),
    ];
    let mut head = String::from("| handler d |");
    for (name, ..) in policies {
        head.push_str(&format!(" {name} |"));
    }
    println!("{head}");
    println!("|---|---|---|---|---|---|---|");
    for d in [0u32, 5, 20, 40, 100] {
        let mut row = format!("| {d} µs |");
        for (_, min, max, y) in policies {
            let pb = policy_bytes(min, max, y);
            p.rx.set_spin(policy_from(&pb[1..]));
            let mut reply = Vec::new();
            p.round_trip(&pb, &mut reply);
            let mut frame = vec![0u8; 64];
            frame[0] = b'S';
            frame[1..5].copy_from_slice(&d.to_le_bytes());
            for _ in 0..300 {
                p.round_trip(&frame, &mut reply);
            }
            let mut ns = Vec::new();
            for _ in 0..if quick() { 30 } else { 3000 } {
                let t = Instant::now();
                p.round_trip(&frame, &mut reply);
                ns.push(t.elapsed().as_nanos() as u64);
            }
            let (p50, p99) = summary(ns);
            row.push_str(&format!(" {p50:.1} / {p99:.1} |"));
        }
        println!("{row}");
    }
    let pb = policy_bytes(2, 50, 1);
    let mut reply = Vec::new();
    p.round_trip(&pb, &mut reply);
    p.rx.set_spin(SpinBudget::default());
}

fn human(size: usize) -> String {
    match size {
        s if s >= 1 << 20 => format!("{} MiB", s >> 20),
        s if s >= 1 << 10 => format!("{} KiB", s >> 10),
        s => format!("{s} B"),
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
