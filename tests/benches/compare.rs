//! Issue 7's comparison, in one run on one machine (figures for docs/benchmarks.md, "End to
//! end (issue 7)"):
//!
//! - A: the chaos fixture's `Process` + `FreeResult` called in this process through libloading
//!   (the original's in-process model);
//! - B: the same plugin in a real, sandboxed `host-runner` over the shared-memory ring;
//! - C: the same plugin in a child process fed length-prefixed JSON CloudEvents over a Unix
//!   socket (4-byte big-endian length + UTF-8 JSON; the original's out-of-process model: the
//!   child decodes JSON, builds the FlatBuffer, calls the plugin, answers JSON);
//! - the real daemon: invoke and bus -> plugin -> reply latency, host respawn (native, .NET),
//!   RSS, idle CPU, and a REST publish load test from this (second) process, including
//!   publishers that outrun a slow worker.
//!
//! `DOTNET_ROOT=/work/main/.tools/dotnet cargo bench -p workmanager-tests --bench compare`.
//! Prints figures and a summary table; asserts only that every call worked (no thresholds:
//! the targets are DESIGN.md section 10, compared in docs/benchmarks.md).

use std::ffi::{c_char, c_void};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use wm_shared::generated::host_protocol::work_manager::host_protocol as hpfb;
use wm_shared::generated::worker_api::virtufin::worker::flat_buffers as wrfb;
use wm_shared::protocol::{self, EngineKind, Message, ResultStatus};
use wm_shared::ring::{self, FrameSender, HostState, MultiReceiver, Region, RingConfig, Side};
use wm_shared::{CloudEvent, WorkerResponse};
use wm_testkit::daemon::{Daemon, DaemonOptions};
use wm_testkit::native::{Build, Lang};
use wm_testkit::sse::Sse;
use wm_testkit::{dotnet as dn, nupkg};

/// The pause before each "after idle" sample of paths A, B and C.
const IDLE_GAP: Duration = Duration::from_millis(250);
/// Samples taken after an idle gap (paths A, B, C).
const IDLE_SAMPLES: usize = 24;
/// Back-to-back samples (paths A, B, C).
const BUSY_SAMPLES: usize = 20_000;
/// How long each throughput figure runs.
const THROUGHPUT_FOR: Duration = Duration::from_millis(2000);
/// Calls in flight per connection (C) or per host (B) in the throughput runs.
const WINDOW: usize = 256;

// ---------------------------------------------------------------------------------------------
// Figures
// ---------------------------------------------------------------------------------------------

/// p50 and p99 of a set of samples, in microseconds.
#[derive(Debug, Clone, Copy)]
struct Lat {
    p50: f64,
    p99: f64,
    n: usize,
}

fn lat(mut v: Vec<Duration>) -> Lat {
    assert!(!v.is_empty(), "no samples");
    v.sort_unstable();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e6;
    Lat {
        p50: at(0.5),
        p99: at(0.99),
        n: v.len(),
    }
}

impl std::fmt::Display for Lat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Microseconds below 10 ms, milliseconds above.
        let show = |us: f64| {
            if us >= 10_000.0 {
                format!("{:.1} ms", us / 1e3)
            } else {
                format!("{us:.2} us")
            }
        };
        write!(
            f,
            "p50 {}, p99 {} (n={})",
            show(self.p50),
            show(self.p99),
            self.n
        )
    }
}

/// The summary rows printed at the end (figure, value).
static SUMMARY: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

fn report(figure: &str, value: String) {
    println!("  {figure:58} {value}");
    SUMMARY
        .lock()
        .unwrap()
        .push((figure.to_string(), value.clone()));
}

fn section(title: &str) {
    println!("\n== {title} ==");
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with(field)).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
            })
        })
        .unwrap_or(0)
}

fn rss_mib(pid: u32) -> f64 {
    proc_status_kib(pid, "VmRSS:") as f64 / 1024.0
}

/// utime + stime of `pid`, in clock ticks (/proc/<pid>/stat fields 14 and 15).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may contain spaces: fields are counted after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // After ')': state is field 3, so field n is at index n - 3.
    get(14 - 3) + get(15 - 3)
}

/// Voluntary context switches of every thread of `pid` (a thread that blocks on a futex
/// switches out voluntarily; one that spins does not).
fn voluntary_switches(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
                .filter_map(|s| {
                    s.lines()
                        .find(|l| l.starts_with("voluntary_ctxt_switches:"))
                        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                })
                .sum()
        })
        .unwrap_or(0)
}

/// CPU time of the calling thread, in ns.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live local the call writes; CLOCK_THREAD_CPUTIME_ID always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no memory preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------------------------
// The plugin and the event
// ---------------------------------------------------------------------------------------------

fn chaos_so() -> PathBuf {
    Build::plugin("chaos", Lang::C, &["chaos.c"]).build()
}

/// The event every path sends: 4 attributes, JSON data, a correlation id.
fn event_json(id: &str, ty: &str) -> Value {
    json!({
        "specversion": "1.0", "id": id, "source": "urn:bench", "type": ty,
        "datacontenttype": "application/json", "data": {"hello": "world", "n": 42},
        "correlationid": "c-1",
    })
}

fn event_fb() -> Vec<u8> {
    CloudEvent::from_json_value(&event_json("id-1", "bench.request"))
        .expect("valid event")
        .to_flatbuffer()
}

type ProcessFn =
    unsafe extern "C" fn(*const HostAbi, *const u8, i32, *mut *mut u8, *mut i32) -> i32;
type FreeResultFn = unsafe extern "C" fn(*mut u8);
type LogFn = unsafe extern "C" fn(*mut c_void, i32, *const c_char);
type GatewayFn = unsafe extern "C" fn(
    *mut c_void,
    *const c_char,
    *const c_char,
    *const u8,
    i32,
    *mut *mut u8,
    *mut i32,
) -> i32;
type FreeResponseFn = unsafe extern "C" fn(*mut c_void, *mut u8);

/// `VirtufinHost` of schemas/virtufin_worker_api_c.h (40 bytes, abi_version 1).
#[repr(C)]
struct HostAbi {
    engine_ptr: *mut c_void,
    abi_version: i32,
    log: Option<LogFn>,
    gateway_call: Option<GatewayFn>,
    free_response: Option<FreeResponseFn>,
}

extern "C" fn no_log(_: *mut c_void, _: i32, _: *const c_char) {}

extern "C" fn no_gateway(
    _: *mut c_void,
    _: *const c_char,
    _: *const c_char,
    _: *const u8,
    _: i32,
    _: *mut *mut u8,
    _: *mut i32,
) -> i32 {
    // GW_UNAVAILABLE: the bench's event never asks for the gateway.
    -3
}

extern "C" fn no_free(_: *mut c_void, _: *mut u8) {}

impl HostAbi {
    fn new() -> HostAbi {
        HostAbi {
            engine_ptr: std::ptr::null_mut(),
            abi_version: 1,
            log: Some(no_log),
            gateway_call: Some(no_gateway),
            free_response: Some(no_free),
        }
    }
}

/// The plugin opened in this process (paths A and C).
struct Plugin {
    process: ProcessFn,
    free: FreeResultFn,
    // Declared last: dropped after the function pointers are gone.
    _lib: libloading::Library,
}

impl Plugin {
    fn open(so: &Path) -> Plugin {
        // SAFETY: loading runs the library's initialisers; chaos.c is our own fixture and has
        // none.
        let lib = unsafe { libloading::Library::new(so) }.expect("dlopen the fixture");
        // SAFETY: chaos.c defines Process with the ABI signature of virtufin_worker_api_c.h,
        // which ProcessFn mirrors; the pointer is used only while `_lib` is open (same struct).
        let process = unsafe { *lib.get::<ProcessFn>("Process").expect("Process") };
        // SAFETY: as above, FreeResult(uint8_t*).
        let free = unsafe { *lib.get::<FreeResultFn>("FreeResult").expect("FreeResult") };
        Plugin {
            process,
            free,
            _lib: lib,
        }
    }

    /// Process + copy the reply out + FreeResult, as the original's in-process engine does.
    fn call(&self, host: &HostAbi, ev: &[u8]) -> Vec<u8> {
        let mut out: *mut u8 = std::ptr::null_mut();
        let mut len: i32 = 0;
        let in_len = i32::try_from(ev.len()).expect("event fits i32");
        // SAFETY: `host` is a valid VirtufinHost for the call's duration; `ev` is readable for
        // `in_len` bytes; `out` and `len` point to live locals the plugin writes.
        let rc = unsafe { (self.process)(host, ev.as_ptr(), in_len, &mut out, &mut len) };
        assert_eq!(rc, 0, "Process failed");
        assert!(!out.is_null() && len > 0, "Process gave no reply");
        // SAFETY: the plugin returned `out` holding `len` bytes, valid until FreeResult.
        let v = unsafe { std::slice::from_raw_parts(out, len as usize) }.to_vec();
        // SAFETY: `out` came from this plugin's Process and is released exactly once.
        unsafe { (self.free)(out) };
        v
    }
}

// ---------------------------------------------------------------------------------------------
// Path A: in process
// ---------------------------------------------------------------------------------------------

fn path_a(so: &Path, ev: &[u8]) -> [f64; 3] {
    section("A: in-process call through libloading (Process + copy + FreeResult)");
    let plugin = Arc::new(Plugin::open(so));
    let host = HostAbi::new();
    for _ in 0..2000 {
        plugin.call(&host, ev);
    }
    let mut busy = Vec::with_capacity(BUSY_SAMPLES);
    for _ in 0..BUSY_SAMPLES {
        let t = Instant::now();
        std::hint::black_box(plugin.call(&host, ev));
        busy.push(t.elapsed());
    }
    report("A busy (back to back)", lat(busy).to_string());
    let mut idle = Vec::new();
    for _ in 0..IDLE_SAMPLES {
        std::thread::sleep(IDLE_GAP);
        let t = Instant::now();
        std::hint::black_box(plugin.call(&host, ev));
        idle.push(t.elapsed());
    }
    report(&format!("A after {IDLE_GAP:?} idle"), lat(idle).to_string());
    let mut rates = [0.0; 3];
    for (i, threads) in [1usize, 4, 16].into_iter().enumerate() {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                let (p, stop, done, ev) = (plugin.clone(), stop.clone(), done.clone(), ev.to_vec());
                std::thread::spawn(move || {
                    let host = HostAbi::new();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::black_box(p.call(&host, &ev));
                        n += 1;
                    }
                    done.fetch_add(n, Ordering::Relaxed);
                })
            })
            .collect();
        let t = Instant::now();
        std::thread::sleep(THROUGHPUT_FOR);
        stop.store(true, Ordering::Relaxed);
        for h in hs {
            h.join().unwrap();
        }
        rates[i] = done.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64();
        report(
            &format!("A throughput, {threads} threads"),
            format!("{:.0} msgs/s", rates[i]),
        );
    }
    rates
}

// ---------------------------------------------------------------------------------------------
// Path B: a host-runner over the ring
// ---------------------------------------------------------------------------------------------

fn host_runner_bin() -> PathBuf {
    // Builds workmanager and host-runner (same profile) if needed.
    wm_testkit::daemon::workmanager_bin();
    wm_testkit::bin_dir().join("host-runner")
}

/// A host-runner we spawned, as the pool does: memfd region on fd 3, then `Ready`.
struct Host {
    child: Child,
    tx: FrameSender,
    /// The region's lanes (empty: a region without lanes, as for an older host-runner).
    lanes: Vec<FrameSender>,
    /// The lane of each worker loaded with one (one thread, so one lane).
    lane_of: std::collections::HashMap<String, usize>,
    rx: MultiReceiver,
    buf: Vec<u8>,
    request: u64,
    /// Reused for every `Process` frame (as a supervisor encodes: no allocation per call).
    builder: flatbuffers::FlatBufferBuilder<'static>,
    /// The last result's response, copied out (what a supervisor hands to the caller).
    response: Vec<u8>,
    last_id: u64,
}

impl Host {
    /// Spawns and waits for `Ready`; returns the host and the time to `Ready`.
    fn spawn(engine: &str, name: &str) -> (Host, Duration) {
        Host::spawn_bin(&host_runner_bin(), engine, name, true)
    }

    /// As [`Host::spawn`], with the host-runner binary `bin` (a baseline build), and with the
    /// default lanes (`RING_LANES`) or none (`lanes` false: every call through the frame
    /// loop; what an older host-runner, which knows no lanes, needs).
    fn spawn_bin(bin: &Path, engine: &str, name: &str, lanes: bool) -> (Host, Duration) {
        let cfg = RingConfig {
            lanes: if lanes { ring::DEFAULT_LANES } else { 0 },
            ..RingConfig::default()
        };
        let region = Arc::new(Region::create(name, &cfg).expect("ring region"));
        let fd = region.as_fd().as_raw_fd();
        let mut cmd = Command::new(bin);
        cmd.args(["--ring-fd", "3", "--engine", engine, "--host-id", name])
            .env_clear()
            .env("DOTNET_ROOT", dn::dotnet_root())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: dup2 and fcntl are async-signal-safe; `fd` is open in the parent, so it is
        // open in the forked child.
        unsafe {
            cmd.pre_exec(move || {
                if fd != 3 {
                    libc::dup2(fd, 3);
                }
                libc::fcntl(3, libc::F_SETFD, 0);
                Ok(())
            });
        }
        let (tx, lanes, rx) = ring::supervisor_lanes(region);
        let t = Instant::now();
        let child = cmd.spawn().expect("spawn host-runner");
        let mut h = Host {
            child,
            tx,
            lanes,
            lane_of: Default::default(),
            rx,
            buf: Vec::new(),
            request: 0,
            builder: flatbuffers::FlatBufferBuilder::with_capacity(1024),
            response: Vec::new(),
            last_id: 0,
        };
        assert!(matches!(h.recv(), Message::Ready(_)));
        (h, t.elapsed())
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn send(&self, m: &Message) {
        self.tx
            .send(&m.encode(), Duration::from_secs(10))
            .expect("ring send");
    }

    /// The next frame that is not a log line.
    fn recv(&mut self) -> Message {
        loop {
            self.rx
                .recv(&mut self.buf, Some(Duration::from_secs(60)))
                .expect("ring recv");
            match Message::decode(&self.buf).expect("decode") {
                Message::Log(_) => continue,
                m => return m,
            }
        }
    }

    fn load(&mut self, worker: &str, engine: EngineKind, dir: &Path, lib: &str) {
        self.request += 1;
        // One thread, one lane, while the region has free ones (as the pool's link assigns).
        let lane = self.lane_of.len();
        let lanes = if lane < self.lanes.len() {
            self.lane_of.insert(worker.to_string(), lane);
            vec![lane as u32]
        } else {
            Vec::new()
        };
        self.send(&Message::LoadWorker(protocol::LoadWorker {
            lanes,
            request_id: self.request,
            worker_id: worker.into(),
            engine,
            package_dir: dir.to_string_lossy().into_owned(),
            library_path: lib.into(),
            max_concurrency: 1,
            timeout_ms: 5000,
            ..Default::default()
        }));
        match self.recv() {
            Message::LoadResult(r) => assert!(r.ok, "load {worker}: {r:?}"),
            other => panic!("expected LoadResult, got {other:?}"),
        }
    }

    fn process_frame(msg_id: u64, worker: &str, ev: &[u8]) -> Vec<u8> {
        Message::Process(protocol::Process {
            msg_id,
            worker_id: worker.into(),
            event: ev.to_vec(),
        })
        .encode()
    }

    /// The next `ProcessResult` (a verified view; its response copied out, as a supervisor
    /// hands it to the caller); log lines are skipped. Returns the message id.
    fn expect_result(&mut self) -> u64 {
        loop {
            self.rx
                .recv(&mut self.buf, Some(Duration::from_secs(60)))
                .expect("ring recv");
            if self.take_result() {
                return self.last_id;
            }
        }
    }

    /// Takes the frame in `buf`: `true` for a `ProcessResult` (checked, response copied),
    /// `false` for a log line; anything else is a failed bench.
    fn take_result(&mut self) -> bool {
        match protocol::hot::decode_process_result(&self.buf).expect("decode") {
            Some(r) => {
                assert_eq!(r.status, ResultStatus::Ok, "{r:?}");
                self.response.clear();
                self.response.extend_from_slice(r.response);
                self.last_id = r.msg_id;
                true
            }
            None => match Message::decode(&self.buf).expect("decode") {
                Message::Log(_) => false,
                other => panic!("expected ProcessResult, got {other:?}"),
            },
        }
    }

    /// The ring a call to `worker` goes through: its lane, or the control ring without one.
    fn call_ring(&self, worker: &str) -> &FrameSender {
        match self.lane_of.get(worker) {
            Some(&k) => &self.lanes[k],
            None => &self.tx,
        }
    }

    /// Sends a call into the worker's lane, or the control ring without one.
    fn send_call(&mut self, msg_id: u64, worker: &str, ev: &[u8]) {
        let tx = match self.lane_of.get(worker) {
            Some(&k) => &self.lanes[k],
            None => &self.tx,
        };
        let frame = protocol::hot::encode_process_into(&mut self.builder, msg_id, worker, ev);
        tx.send(frame, Duration::from_secs(10)).expect("ring send");
    }

    /// One sequential round trip: encode, send, receive, decode.
    fn round_trip(&mut self, msg_id: u64, worker: &str, ev: &[u8]) -> u64 {
        self.send_call(msg_id, worker, ev);
        self.expect_result()
    }

    /// Up to WINDOW calls in flight, split over `workers`, for THROUGHPUT_FOR.
    /// Also returns the CPU time per call of this (supervisor) thread and of the host (all
    /// its threads, spinning included), in ns.
    fn throughput(&mut self, workers: &[String], ev: &[u8]) -> (f64, f64, f64) {
        // With many calls in flight the supervisor's reader yields between checks at once
        // (WM_COMPARE_SUP_YIELD_US=<us> to yield later; 1 is the ring's default): its spin
        // between results would otherwise take a vCPU from the host's worker threads
        // (docs/benchmarks.md, "Lanes: fourth pass"). The same for every build compared.
        let saved = self.rx.spin();
        let us = std::env::var("WM_COMPARE_SUP_YIELD_US")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        self.rx
            .set_spin(ring::SpinBudget::default().with_yield_after(Duration::from_micros(us)));
        let (ticks, me) = (cpu_ticks(self.pid()), thread_cpu_ns());
        let t = Instant::now();
        let rate = self.throughput_window(workers, ev, WINDOW);
        let calls = rate * t.elapsed().as_secs_f64();
        let host_ns = (cpu_ticks(self.pid()) - ticks) as f64 / clock_ticks_per_second() * 1e9;
        let me_ns = (thread_cpu_ns() - me) as f64;
        self.rx.set_spin(saved);
        (rate, me_ns / calls, host_ns / calls)
    }

    /// Up to `window` calls in flight, split evenly over `workers` (each worker's share
    /// pipelined on its ring), for THROUGHPUT_FOR. Each pass reads every result that is ready,
    /// then tops up each worker's share with ONE batch (several frames per tail store, as a
    /// supervisor with many callers queued for one worker would send them); it waits only
    /// when nothing is ready.
    fn throughput_window(&mut self, workers: &[String], ev: &[u8], window: usize) -> f64 {
        // Each share also fits in half a lane (both directions of a lane full at once would
        // stall both ends until the send timeout); the same cap for every build compared.
        let frame =
            protocol::hot::encode_process_into(&mut self.builder, u64::MAX, &workers[0], ev);
        let fits = ring::DEFAULT_LANE_BYTES / 2 / RingConfig::frame_cost(frame.len());
        let per = (window / workers.len()).clamp(1, fits.max(1));
        // msg_id = worker index * 2^32 + sequence, so a result names its worker.
        let mut in_flight = vec![0usize; workers.len()];
        let mut seq = vec![0u64; workers.len()];
        let mut frames: Vec<Vec<u8>> = Vec::new();
        let (mut sent, mut done) = (0u64, 0u64);
        let t = Instant::now();
        let mut stopping = false;
        loop {
            if !stopping && t.elapsed() >= THROUGHPUT_FOR {
                stopping = true;
            }
            if stopping && done == sent {
                break;
            }
            if !stopping {
                for (w, name) in workers.iter().enumerate() {
                    let want = per - in_flight[w];
                    if want == 0 {
                        continue;
                    }
                    frames.resize_with(want, Vec::new);
                    for f in frames.iter_mut().take(want) {
                        let id = ((w as u64) << 32) | seq[w];
                        seq[w] += 1;
                        f.clear();
                        f.extend_from_slice(protocol::hot::encode_process_into(
                            &mut self.builder,
                            id,
                            name,
                            ev,
                        ));
                    }
                    self.call_ring(name)
                        .send_batch(&frames[..want], Duration::from_secs(10))
                        .expect("ring send");
                    in_flight[w] += want;
                    sent += want as u64;
                }
            }
            // One wait, then whatever else is ready without waiting.
            let id = self.expect_result();
            in_flight[(id >> 32) as usize] -= 1;
            done += 1;
            while self
                .rx
                .try_recv(&mut self.buf)
                .expect("ring recv")
                .is_some()
            {
                if self.take_result() {
                    in_flight[(self.last_id >> 32) as usize] -= 1;
                    done += 1;
                }
            }
        }
        done as f64 / t.elapsed().as_secs_f64()
    }

    fn shutdown(mut self) {
        self.send(&Message::Shutdown { deadline_ms: 500 });
        let _ = self.child.wait();
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Reaped already after shutdown(); otherwise do not leave a host behind.
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

const RING_CHILD_ENV: &str = "WM_COMPARE_RING_CHILD";

/// The ring alone: a child that echoes every frame straight back (no host-runner, no plugin).
fn ring_echo_child() {
    // SAFETY: the parent put the memfd at fd 3 (CLOEXEC cleared); nothing else owns it here.
    let fd = unsafe { OwnedFd::from_raw_fd(3) };
    let region = Arc::new(Region::open(fd).expect("open the ring"));
    let (tx, mut rx) = ring::host_channels(region.clone());
    region.set_host_state(HostState::Ready);
    let mut buf = Vec::new();
    while rx.recv(&mut buf, None).is_ok() {
        if tx.send(&buf, Duration::from_secs(30)).is_err() {
            return;
        }
    }
}

/// Round trips of a Process-sized frame through the ring alone, back to back.
/// Pins the calling thread to `cpu` (None: every CPU the process may use); returns the mask
/// it had.
fn pin_current_thread(cpu: Option<usize>) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is plain data; all zero is the empty set.
    let mut old: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `old` is a valid cpu_set_t of the size passed; pid 0 is this thread.
    unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut old) };
    if let Some(cpu) = cpu {
        // SAFETY: as above; CPU_SET only writes inside the set (cpu < CPU_SETSIZE here).
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid cpu_set_t and cpu is a small index.
        unsafe { libc::CPU_SET(cpu, &mut set) };
        // SAFETY: `set` is a valid cpu_set_t of the size passed.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    }
    old
}

fn restore_affinity(set: &libc::cpu_set_t) {
    // SAFETY: `set` is a valid cpu_set_t of the size passed (from sched_getaffinity).
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) };
}

/// The ring alone; with `pin`, this thread on vCPU 0 and the echo child on vCPU 1.
fn ring_alone(label: &str, frame: &[u8], pin: bool) -> Lat {
    let saved = pin_current_thread(pin.then_some(0));
    let region = Arc::new(Region::create("bench-ring", &RingConfig::default()).expect("region"));
    let fd = region.as_fd().as_raw_fd();
    let mut cmd = Command::new(std::env::current_exe().expect("current exe"));
    cmd.env(RING_CHILD_ENV, "1").stdin(Stdio::null());
    // SAFETY: prctl, sched_setaffinity, dup2 and fcntl are async-signal-safe system calls
    // (CPU_SET and zeroed only write the local set); `fd` is open in the parent, so it is open
    // in the forked child.
    unsafe {
        cmd.pre_exec(move || {
            // The echo child blocks in recv without a timeout: it must not outlive a bench
            // that panicked before closing the ring.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if pin {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(1, &mut set);
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            }
            if fd != 3 {
                libc::dup2(fd, 3);
            }
            libc::fcntl(3, libc::F_SETFD, 0);
            Ok(())
        });
    }
    let (tx, mut rx) = ring::supervisor_channels(region.clone());
    let mut child = cmd.spawn().expect("spawn the ring child");
    let mut buf = Vec::new();
    let mut rt = |buf: &mut Vec<u8>| {
        tx.send(frame, Duration::from_secs(10)).expect("send");
        rx.recv(buf, Some(Duration::from_secs(10))).expect("recv");
    };
    for _ in 0..20_000 {
        rt(&mut buf);
    }
    let mut v = Vec::with_capacity(100_000);
    let me = std::process::id();
    let sw = (voluntary_switches(child.id()), voluntary_switches(me));
    for _ in 0..100_000 {
        let t = Instant::now();
        rt(&mut buf);
        v.push(t.elapsed());
    }
    let per = |a: u64, b: u64| (a - b) as f64 / 100_000.0;
    let l = lat(v);
    report(
        &format!(
            "ring alone, {} B frame, back to back, {}{label}",
            frame.len(),
            if pin { "pinned to 2 vCPUs, " } else { "" }
        ),
        format!(
            "{}; voluntary switches per round trip: child {:.3}, parent {:.3}",
            l,
            per(voluntary_switches(child.id()), sw.0),
            per(voluntary_switches(me), sw.1)
        ),
    );
    region.mark_closed(Side::Supervisor);
    let _ = child.wait();
    restore_affinity(&saved);
    l
}

/// CPU cost of the frames of one call on each side (one thread, back to back, in this
/// process): what every path-B call pays besides the ring and the plugin, as ns per operation.
fn codec_costs(ev: &[u8]) {
    section("the frames of a call: encode/decode cost (one thread)");
    const N: u32 = 200_000;
    let time = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        for _ in 0..N {
            f();
        }
        t.elapsed().as_nanos() as f64 / f64::from(N)
    };
    let mut b = flatbuffers::FlatBufferBuilder::with_capacity(1024);
    let process = protocol::hot::encode_process_into(&mut b, 1, "w0", ev).to_vec();
    let response = vec![7u8; 120];
    let fields = protocol::hot::ProcessResultRef {
        msg_id: 1,
        worker_id: "w0",
        response: &response,
        elapsed_ns: 900,
        ..Default::default()
    };
    let result = protocol::hot::encode_process_result_into(&mut b, &fields).to_vec();
    let owned_result = Message::decode(&result).expect("result");
    // The generic FlatBuffers verifier as `hot` used it before the hand-written one (same
    // options as `protocol::verify_frame`): the same-run baseline of the two decode rows.
    fn generic(bytes: &[u8]) -> Option<hpfb::Frame<'_>> {
        let opts = flatbuffers::VerifierOptions {
            max_tables: 1 << 16,
            max_apparent_size: bytes.len().saturating_mul(2).max(1 << 10),
            ..Default::default()
        };
        hpfb::root_as_frame_with_opts(&opts, bytes).ok()
    }
    // What a plugin answers (the bench's event as its reply), verified by the host per call.
    let reply = WorkerResponse {
        result_event: CloudEvent::from_flatbuffer(ev).ok(),
        error_message: None,
    }
    .to_flatbuffer();
    let rows: [(&str, f64); 12] = [
        (
            "Process encode, reused builder (hot)",
            time(&mut || {
                std::hint::black_box(protocol::hot::encode_process_into(&mut b, 2, "w0", ev));
            }),
        ),
        (
            "Process encode, owned Message",
            time(&mut || {
                std::hint::black_box(
                    Message::Process(protocol::Process {
                        msg_id: 2,
                        worker_id: "w0".into(),
                        event: ev.to_vec(),
                    })
                    .encode(),
                );
            }),
        ),
        (
            "Process decode, verified view (hot)",
            time(&mut || {
                std::hint::black_box(protocol::hot::decode_process(&process).ok());
            }),
        ),
        (
            "Process decode, generic verifier + view (before)",
            time(&mut || {
                std::hint::black_box(generic(&process).and_then(|f| {
                    f.payload_as_process()
                        .map(|m| (m.msg_id(), m.worker_id(), m.event().map(|v| v.bytes())))
                }));
            }),
        ),
        (
            "Process decode, owned Message",
            time(&mut || {
                std::hint::black_box(Message::decode(&process).ok());
            }),
        ),
        (
            "ProcessResult encode, reused builder (hot)",
            time(&mut || {
                std::hint::black_box(protocol::hot::encode_process_result_into(&mut b, &fields));
            }),
        ),
        (
            "ProcessResult encode, owned Message",
            time(&mut || {
                std::hint::black_box(owned_result.encode());
            }),
        ),
        (
            "ProcessResult decode, verified view (hot)",
            time(&mut || {
                std::hint::black_box(protocol::hot::decode_process_result(&result).ok());
            }),
        ),
        (
            "ProcessResult decode, generic verifier + view (before)",
            time(&mut || {
                std::hint::black_box(generic(&result).and_then(|f| {
                    f.payload_as_process_result().map(|m| {
                        (
                            m.msg_id(),
                            m.worker_id(),
                            m.status(),
                            m.code(),
                            m.response().map(|v| v.bytes()),
                            m.error(),
                            m.elapsed_ns(),
                        )
                    })
                }));
            }),
        ),
        (
            "ProcessResult decode, owned Message",
            time(&mut || {
                std::hint::black_box(Message::decode(&result).ok());
            }),
        ),
        (
            "WorkerResponse check, hand verifier (host, per call)",
            time(&mut || {
                std::hint::black_box(protocol::hot::verify_worker_response(&reply).ok());
            }),
        ),
        (
            "WorkerResponse check, flatbuffers::root (before)",
            time(&mut || {
                std::hint::black_box(flatbuffers::root::<wrfb::WorkerResponse>(&reply).ok());
            }),
        ),
    ];
    for (what, ns) in rows {
        report(what, format!("{ns:.0} ns"));
    }
}

/// Back-to-back round trips to worker w0; the latency and the host's voluntary context
/// switches per call.
fn ring_busy(h: &mut Host, ev: &[u8]) -> (Lat, f64) {
    let mut busy = Vec::with_capacity(BUSY_SAMPLES);
    let sw = voluntary_switches(h.pid());
    for n in 0..BUSY_SAMPLES as u64 {
        let t = Instant::now();
        h.round_trip(n, "w0", ev);
        busy.push(t.elapsed());
    }
    let per = (voluntary_switches(h.pid()) - sw) as f64 / BUSY_SAMPLES as f64;
    (lat(busy), per)
}

/// Path B. Returns the 1/4/16-worker throughput and the first busy latency.
fn path_b(so: &Path, ev: &[u8]) -> ([f64; 3], Lat) {
    path_b_with(&host_runner_bin(), "", so, ev, true)
}

/// Path B with the host-runner binary `bin`, with lanes or not; `tag` prefixes the figures
/// ("baseline ").
fn path_b_with(bin: &Path, tag: &str, so: &Path, ev: &[u8], lanes: bool) -> ([f64; 3], Lat) {
    section(&format!(
        "{tag}B: host-runner over the shared-memory ring (Process frame -> ProcessResult)"
    ));
    let dir = so.parent().expect("fixture dir");
    let lib = so.file_name().expect("file").to_string_lossy().into_owned();
    let (mut h, _) = Host::spawn_bin(bin, "native", "bench-b", lanes);
    for i in 0..16 {
        h.load(&format!("w{i}"), EngineKind::Native, dir, &lib);
    }
    for n in 0..2000 {
        h.round_trip(n, "w0", ev);
    }
    let (busy, switches) = ring_busy(&mut h, ev);
    report(
        &format!("{tag}B busy (back to back), run 1"),
        format!("{busy}; host voluntary switches per call {switches:.2}"),
    );
    let mut idle = Vec::new();
    for n in 0..IDLE_SAMPLES as u64 {
        std::thread::sleep(IDLE_GAP);
        let t = Instant::now();
        h.round_trip(n, "w0", ev);
        idle.push(t.elapsed());
    }
    report(
        &format!("{tag}B after {IDLE_GAP:?} idle"),
        lat(idle).to_string(),
    );
    let mut rates = [0.0; 3];
    for (i, n) in [1usize, 4, 16].into_iter().enumerate() {
        let ws: Vec<String> = (0..n).map(|i| format!("w{i}")).collect();
        let (rate, me, host) = h.throughput(&ws, ev);
        rates[i] = rate;
        report(
            &format!("{tag}B throughput, {n} workers in one host ({WINDOW} in flight)"),
            format!(
                "{rate:.0} msgs/s; CPU per call: supervisor thread {me:.0} ns, host {host:.0} ns \
                 (spinning included)"
            ),
        );
    }
    h.shutdown();

    // The same load spread over 4 hosts (one supervisor-side thread per host, as the pool has
    // one link reader per host).
    for n in [4usize, 16] {
        let per_host = n / 4;
        let hosts: Vec<Host> = (0..4)
            .map(|k| {
                let (mut h, _) = Host::spawn_bin(bin, "native", &format!("bench-b-{n}-{k}"), lanes);
                for i in 0..per_host {
                    h.load(&format!("w{i}"), EngineKind::Native, dir, &lib);
                }
                h
            })
            .collect();
        let threads: Vec<_> = hosts
            .into_iter()
            .map(|mut h| {
                let ev = ev.to_vec();
                std::thread::spawn(move || {
                    let ws: Vec<String> = (0..per_host).map(|i| format!("w{i}")).collect();
                    let rate = h.throughput_window(&ws, &ev, WINDOW / 4);
                    h.shutdown();
                    rate
                })
            })
            .collect();
        let total: f64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        report(
            &format!("{tag}B throughput, {n} workers over 4 hosts ({WINDOW} in flight)"),
            format!("{total:.0} msgs/s"),
        );
    }
    (rates, busy)
}

/// Path B of the baseline host and this tree's (over lanes), alternating in short rounds
/// (`WM_COMPARE_B_ROUNDS=<n>`): on this 2-vCPU VM the figures swing between two modes with
/// whatever else holds a vCPU, and hosts measured one after the other (`path_b_with`) can land
/// in different modes; in rounds both builds see the same conditions within seconds, and the
/// per-round ratios show the spread. The order within a round alternates too.
fn path_b_rounds(so: &Path, ev: &[u8], base_bin: &Path, base_lanes: bool, rounds: usize) {
    section(&format!(
        "path B, the baseline host and this tree's, alternating in {rounds} rounds \
         (busy p50, then 4 workers in one host)"
    ));
    let dir = so.parent().expect("fixture dir");
    let lib = so.file_name().expect("file").to_string_lossy().into_owned();
    let spawn = |bin: &Path, lanes: bool, name: &str| {
        let (mut h, _) = Host::spawn_bin(bin, "native", name, lanes);
        for i in 0..4 {
            h.load(&format!("w{i}"), EngineKind::Native, dir, &lib);
        }
        for n in 0..2000 {
            h.round_trip(n, "w0", ev);
        }
        h
    };
    let mut hosts = [
        spawn(base_bin, base_lanes, "bench-rounds-base"),
        spawn(&host_runner_bin(), true, "bench-rounds-new"),
    ];
    let ws: Vec<String> = (0..4).map(|i| format!("w{i}")).collect();
    let (mut busy_ratio, mut rate_ratio) = (Vec::new(), Vec::new());
    let (mut busy, mut rates) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    for r in 0..rounds {
        let order = if r % 2 == 0 { [0, 1] } else { [1, 0] };
        let mut p50 = [0.0; 2];
        let mut rate = [0.0; 2];
        for k in order {
            p50[k] = ring_busy(&mut hosts[k], ev).0.p50;
            rate[k] = hosts[k].throughput(&ws, ev).0;
            busy[k].push(p50[k]);
            rates[k].push(rate[k]);
        }
        busy_ratio.push(p50[1] / p50[0]);
        rate_ratio.push(rate[1] / rate[0]);
        report(
            &format!("round {r}: busy p50, baseline / this tree"),
            format!(
                "{:.2} / {:.2} us = {:.2}x; 4 workers {:.0} / {:.0} k/s = {:.2}x",
                p50[0],
                p50[1],
                p50[1] / p50[0],
                rate[0] / 1e3,
                rate[1] / 1e3,
                rate[1] / rate[0]
            ),
        );
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let range = |v: &[f64]| {
        let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        format!("{lo:.2}-{hi:.2}")
    };
    report(
        "rounds: busy p50, baseline / this tree (median of rounds)",
        format!(
            "{:.2} / {:.2} us; ratio per round {} (median {:.2}x)",
            median(&mut busy[0]),
            median(&mut busy[1]),
            range(&busy_ratio),
            median(&mut busy_ratio)
        ),
    );
    report(
        "rounds: 4 workers in one host, baseline / this tree (median of rounds)",
        format!(
            "{:.0} / {:.0} k/s; ratio per round {} (median {:.2}x)",
            median(&mut rates[0]) / 1e3,
            median(&mut rates[1]) / 1e3,
            range(&rate_ratio),
            median(&mut rate_ratio)
        ),
    );
    for h in hosts {
        h.shutdown();
    }
}

/// Spawn -> Ready -> LoadWorker -> first ProcessResult of a native host, and RSS per host.
fn host_figures(so: &Path, ev: &[u8]) {
    section("B: native host respawn (no daemon) and RSS per host");
    let dir = so.parent().expect("fixture dir");
    let lib = so.file_name().expect("file").to_string_lossy().into_owned();
    let (mut ready, mut first) = (Vec::new(), Vec::new());
    for i in 0..15 {
        let t = Instant::now();
        let (mut h, r) = Host::spawn("native", &format!("bench-respawn-{i}"));
        h.load("w0", EngineKind::Native, dir, &lib);
        h.round_trip(0, "w0", ev);
        first.push(t.elapsed());
        ready.push(r);
        h.shutdown();
    }
    report(
        "native host: spawn -> Ready (exec + sandbox)",
        lat(ready).to_string(),
    );
    report(
        "native host: spawn -> Ready -> loaded -> first reply",
        lat(first).to_string(),
    );

    // Ten different libraries (ten package folders), as ten packages would be.
    let tmp = tempfile::tempdir().unwrap();
    let (mut h, _) = Host::spawn("native", "bench-rss");
    let empty = rss_mib(h.pid());
    let mut one = 0.0;
    for i in 0..10 {
        let d = tmp.path().join(format!("pkg{i}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(so, d.join(&lib)).unwrap();
        h.load(&format!("w{i}"), EngineKind::Native, &d, &lib);
        for n in 0..100 {
            h.round_trip(n, &format!("w{i}"), ev);
        }
        if i == 0 {
            one = rss_mib(h.pid());
        }
    }
    let ten = rss_mib(h.pid());
    report(
        "native host RSS: no worker / 1 worker / 10 workers",
        format!(
            "{empty:.1} / {one:.1} / {ten:.1} MiB (+{:.2} MiB per extra worker)",
            (ten - one) / 9.0
        ),
    );
    h.shutdown();
}

// ---------------------------------------------------------------------------------------------
// The machine's floor: one request and its answer between two processes over loopback TCP
// ---------------------------------------------------------------------------------------------

const TCP_ECHO_ENV: &str = "WM_COMPARE_TCP_ECHO";
/// Bytes each way: about a `POST /invoke` with its event, and its answer.
const FLOOR_MSG: usize = 512;

/// The child of the floor: echoes `FLOOR_MSG`-byte messages on one loopback connection.
fn tcp_echo_child(addr: &str) {
    let mut s = TcpStream::connect(addr).expect("connect to the parent");
    s.set_nodelay(true)
        .expect("disable Nagle on the loopback socket");
    let mut buf = [0u8; FLOOR_MSG];
    while s.read_exact(&mut buf).is_ok() {
        if s.write_all(&buf).is_err() {
            return;
        }
    }
}

/// Round trips of a `FLOOR_MSG`-byte message to a child process over loopback TCP (keep-alive,
/// `TCP_NODELAY`), back to back and after a quiet 250 ms. It is what one HTTP request and its
/// answer cost on this machine before any HTTP is parsed: two process wake-ups and the
/// loopback path. `POST /invoke` pays one of these plus the ring's round trip to a host; an
/// event one at a time pays the publish's, the host's and the SSE line's wake-ups.
fn loopback_floor() -> Lat {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let addr = listener.local_addr().expect("its address");
    let mut child = Command::new(std::env::current_exe().expect("this bench's path"))
        .env(TCP_ECHO_ENV, addr.to_string())
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn the echo child");
    let (mut s, _) = listener.accept().expect("the child connects");
    s.set_nodelay(true)
        .expect("disable Nagle on the loopback socket");
    let msg = [7u8; FLOOR_MSG];
    let mut back = [0u8; FLOOR_MSG];
    let mut once = || {
        let t = Instant::now();
        s.write_all(&msg).expect("send to the echo child");
        s.read_exact(&mut back).expect("the echo child answers");
        t.elapsed()
    };
    for _ in 0..1000 {
        once();
    }
    let busy = lat((0..5000).map(|_| once()).collect());
    let idle = lat((0..12)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(250));
            once()
        })
        .collect());
    drop(s);
    let _ = child.wait();
    report(
        "loopback TCP round trip, two processes, 512 B each way (the floor of one request)",
        busy.to_string(),
    );
    report("the same after a quiet 250 ms", idle.to_string());
    busy
}

// ---------------------------------------------------------------------------------------------
// Path C: Unix socket + JSON subprocess
// ---------------------------------------------------------------------------------------------

const CHILD_ENV: &str = "WM_COMPARE_SOCKET_CHILD";
const CHILD_SO_ENV: &str = "WM_COMPARE_SOCKET_SO";

fn write_frame(w: &mut impl Write, body: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(body.len()).expect("frame fits u32");
    w.write_all(&len.to_be_bytes())?;
    w.write_all(body)
}

fn read_frame(r: &mut impl Read, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    buf.resize(u32::from_be_bytes(len) as usize, 0);
    r.read_exact(buf)
}

/// The child of path C: JSON in, FlatBuffer to the plugin, JSON out. Flushes when no more
/// requests are buffered (the best case for a socket engine).
fn socket_child(sock: &Path, so: &Path) {
    let plugin = Plugin::open(so);
    let host = HostAbi::new();
    let s = UnixStream::connect(sock).expect("connect to the parent");
    let mut r = BufReader::with_capacity(64 << 10, s.try_clone().expect("clone socket"));
    let mut w = BufWriter::with_capacity(64 << 10, s);
    let mut buf = Vec::new();
    loop {
        if read_frame(&mut r, &mut buf).is_err() {
            return;
        }
        let ev = CloudEvent::from_json_slice(&buf).expect("a CloudEvent");
        let out = plugin.call(&host, &ev.to_flatbuffer());
        let resp = WorkerResponse::from_flatbuffer(&out).expect("a WorkerResponse");
        let body = serde_json::to_vec(&json!({
            "resultEvent": resp.result_event.map(|e| e.to_json_value()),
            "errorMessage": resp.error_message,
        }))
        .expect("json");
        if write_frame(&mut w, &body).is_err() {
            return;
        }
        if r.buffer().is_empty() && w.flush().is_err() {
            return;
        }
    }
}

/// The parent's end of one path-C child.
struct SocketWorker {
    child: Child,
    w: UnixStream,
    r: BufReader<UnixStream>,
    buf: Vec<u8>,
}

impl SocketWorker {
    fn spawn(dir: &Path, i: usize, so: &Path) -> SocketWorker {
        let path = dir.join(format!("c{i}.sock"));
        let listener = UnixListener::bind(&path).expect("bind");
        let child = Command::new(std::env::current_exe().expect("current exe"))
            .env(CHILD_ENV, &path)
            .env(CHILD_SO_ENV, so)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn the socket child");
        let (s, _) = listener.accept().expect("accept");
        SocketWorker {
            child,
            w: s.try_clone().expect("clone"),
            r: BufReader::with_capacity(64 << 10, s),
            buf: Vec::new(),
        }
    }

    fn send(&mut self, body: &[u8]) {
        // One write per request (length and body together).
        let mut frame = Vec::with_capacity(body.len() + 4);
        write_frame(&mut frame, body).expect("vec write");
        self.w.write_all(&frame).expect("socket write");
    }

    /// Reads and parses one reply (the parent parses JSON, as the original's engine does).
    fn recv(&mut self) -> Value {
        read_frame(&mut self.r, &mut self.buf).expect("socket read");
        let v: Value = serde_json::from_slice(&self.buf).expect("reply JSON");
        assert!(v["resultEvent"].is_object(), "{v}");
        v
    }

    fn round_trip(&mut self, body: &[u8]) -> Value {
        self.send(body);
        self.recv()
    }
}

impl Drop for SocketWorker {
    fn drop(&mut self) {
        let _ = self.w.shutdown(std::net::Shutdown::Both);
        let _ = self.child.wait();
    }
}

fn path_c(so: &Path) -> [f64; 3] {
    section(
        "C: Unix socket + length-prefixed JSON subprocess (the original's out-of-process model)",
    );
    let tmp = tempfile::tempdir().unwrap();
    let body = serde_json::to_vec(&event_json("id-1", "bench.request")).unwrap();
    let mut c = SocketWorker::spawn(tmp.path(), 0, so);
    for _ in 0..2000 {
        c.round_trip(&body);
    }
    let mut busy = Vec::with_capacity(BUSY_SAMPLES);
    for _ in 0..BUSY_SAMPLES {
        let t = Instant::now();
        c.round_trip(&body);
        busy.push(t.elapsed());
    }
    report("C busy (back to back)", lat(busy).to_string());
    let mut idle = Vec::new();
    for _ in 0..IDLE_SAMPLES {
        std::thread::sleep(IDLE_GAP);
        let t = Instant::now();
        c.round_trip(&body);
        idle.push(t.elapsed());
    }
    report(&format!("C after {IDLE_GAP:?} idle"), lat(idle).to_string());
    drop(c);
    let mut rates = [0.0; 3];
    for (i, n) in [1usize, 4, 16].into_iter().enumerate() {
        // One child per worker (the original runs one engine process per worker), one
        // parent thread per child keeping WINDOW / n requests in flight.
        let workers: Vec<SocketWorker> = (0..n)
            .map(|k| SocketWorker::spawn(tmp.path(), 100 * (i + 1) + k, so))
            .collect();
        let per = (WINDOW / n).max(1) as u64;
        let t = Instant::now();
        let hs: Vec<_> = workers
            .into_iter()
            .map(|mut c| {
                let body = body.clone();
                std::thread::spawn(move || {
                    let (mut sent, mut done) = (0u64, 0u64);
                    let mut stop_at = None;
                    loop {
                        if stop_at.is_none() && t.elapsed() >= THROUGHPUT_FOR {
                            stop_at = Some(sent);
                        }
                        if stop_at.is_some_and(|s| done >= s) {
                            break;
                        }
                        while stop_at.is_none() && sent - done < per {
                            c.send(&body);
                            sent += 1;
                        }
                        c.recv();
                        done += 1;
                    }
                    done
                })
            })
            .collect();
        let done: u64 = hs.into_iter().map(|h| h.join().unwrap()).sum();
        rates[i] = done as f64 / t.elapsed().as_secs_f64();
        report(
            &format!("C throughput, {n} worker processes"),
            format!("{:.0} msgs/s", rates[i]),
        );
    }
    rates
}

// ---------------------------------------------------------------------------------------------
// The daemon
// ---------------------------------------------------------------------------------------------

/// A keep-alive HTTP/1.1 connection (Content-Length bodies only, which is what the daemon's
/// JSON answers use).
struct Conn {
    w: TcpStream,
    r: BufReader<TcpStream>,
    line: String,
}

impl Conn {
    fn new(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        Conn {
            w: s.try_clone().unwrap(),
            r: BufReader::new(s),
            line: String::new(),
        }
    }

    fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> std::io::Result<(u16, Vec<u8>)> {
        self.request_typed(method, path, "application/cloudevents+json", body)
    }

    fn request_typed(
        &mut self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> std::io::Result<(u16, Vec<u8>)> {
        let mut msg = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        msg.extend_from_slice(body);
        self.w.write_all(&msg)?;
        self.line.clear();
        self.r.read_line(&mut self.line)?;
        let status: u16 = self
            .line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {:?}", self.line)))?;
        let mut len = 0usize;
        loop {
            self.line.clear();
            if self.r.read_line(&mut self.line)? == 0 {
                return Err(std::io::Error::other("connection closed in headers"));
            }
            let l = self.line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                if k == "content-length" {
                    len = v.trim().parse().unwrap_or(0);
                } else if k == "transfer-encoding" {
                    return Err(std::io::Error::other(
                        "chunked bodies are not supported here",
                    ));
                }
            }
        }
        let mut out = vec![0; len];
        self.r.read_exact(&mut out)?;
        Ok((status, out))
    }
}

fn daemon(dotnet: bool, extra: &[(&str, &str)]) -> Daemon {
    daemon_with(dotnet, extra, None)
}

/// [`daemon`] running `binary` (an older build, for same-run ratios) when given.
fn daemon_with(dotnet: bool, extra: &[(&str, &str)], binary: Option<&Path>) -> Daemon {
    let mut opts = DaemonOptions::default()
        .env("WORKMANAGER_LOG", "warn")
        // The respawn figure is the spawn + reload cost, not the configured first delay.
        .env("HOST_RESPAWN_BACKOFF_MS", "1")
        .env("CRASH_LOOP_MAX_CRASHES", "1000");
    if dotnet {
        opts = opts.env("DOTNET_ROOT", dn::dotnet_root().to_str().expect("utf-8"));
    }
    for (k, v) in extra {
        opts = opts.env(k, v);
    }
    if let Some(b) = binary {
        opts = opts.bin(b);
    }
    Daemon::start(opts)
}

fn chaos_package(id: &str, so: &Path) -> Vec<u8> {
    nupkg::native(id, "chaos", so, "<virtufinLibrary>chaos</virtufinLibrary>")
}

/// Creates and starts a worker; returns its id.
fn worker(d: &Daemon, mime: &str, topic: &str, pkg: &[u8], extra: Value) -> String {
    let mut body = json!({
        "mimeType": mime,
        "topic": topic,
        "codeSource": {"content": base64::engine::general_purpose::STANDARD.encode(pkg)},
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    let r = d.send_json("POST", "/v1/workers", &body);
    assert_eq!(r.status, 201, "create: {}", r.text());
    let id = r.json()["id"].as_str().expect("id").to_string();
    let r = d.post(&format!("/v1/workers/{id}/start"));
    assert!(r.status < 300, "start: {} {}", r.status, r.text());
    id
}

const NATIVE: &str = "application/x-native-dll";
const DOTNET: &str = "application/x-dotnet-dll";

/// (pid, workers) of the daemon's hosts of engine `mime`.
fn hosts(d: &Daemon, mime: &str) -> Vec<(u32, usize)> {
    d.get("/v1/hosts").json()["hosts"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|h| h["mimeType"] == mime)
                .filter_map(|h| {
                    Some((
                        u32::try_from(h["pid"].as_i64()?).ok()?,
                        h["workers"].as_array().map_or(0, Vec::len),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn invoke_ok(c: &mut Conn, worker: &str, body: &[u8]) -> bool {
    matches!(
        c.request("POST", &format!("/v1/workers/{worker}/invoke"), body),
        Ok((200, _))
    )
}

/// What one durable commit costs at least on this file system: a 256-byte append + fdatasync.
fn fsync_probe(dir: &Path) {
    let path = dir.join("fsync-probe");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("probe file");
    let mut v = Vec::new();
    for _ in 0..300 {
        let t = Instant::now();
        f.write_all(&[7u8; 256]).expect("write");
        f.sync_data().expect("fdatasync");
        v.push(t.elapsed());
    }
    drop(f);
    let _ = std::fs::remove_file(&path);
    report(
        "256 B append + fdatasync in the data directory",
        lat(v).to_string(),
    );
}

/// Invoke and bus latency through the daemon, busy and after a quiet second.
fn e2e_latency(so: &Path) {
    section("daemon: invoke and bus -> plugin -> reply");
    let d = daemon(false, &[]);
    fsync_probe(d.data_dir());
    let w = worker(
        &d,
        NATIVE,
        "bench.request",
        &chaos_package("Chaos.Worker", so),
        json!({}),
    );
    let mut c = Conn::new(d.addr());
    let body = serde_json::to_vec(&event_json("inv-1", "bench.request")).unwrap();
    for _ in 0..500 {
        assert!(invoke_ok(&mut c, &w, &body));
    }
    let mut busy = Vec::new();
    for _ in 0..3000 {
        let t = Instant::now();
        assert!(invoke_ok(&mut c, &w, &body));
        busy.push(t.elapsed());
    }
    report(
        "invoke (REST -> ring -> plugin -> REST), back to back",
        lat(busy).to_string(),
    );
    let mut idle = Vec::new();
    for _ in 0..12 {
        std::thread::sleep(Duration::from_secs(1));
        let t = Instant::now();
        assert!(invoke_ok(&mut c, &w, &body));
        idle.push(t.elapsed());
    }
    report("invoke after a quiet second", lat(idle).to_string());

    let replies = Sse::subscribe(&d.base_url(), "bench.request.reply");
    let publish = |c: &mut Conn, id: &str| {
        let b = serde_json::to_vec(&event_json(id, "bench.request")).unwrap();
        let (s, r) = c
            .request("POST", "/v1/topics/bench.request/events", &b)
            .expect("publish");
        assert_eq!(s, 202, "{}", String::from_utf8_lossy(&r));
    };
    let wait_reply = |id: &str| loop {
        let v = replies
            .next(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("no reply to {id}"));
        if v["id"] == id {
            return;
        }
    };
    for n in 0..100 {
        let id = format!("warm-{n}");
        publish(&mut c, &id);
        wait_reply(&id);
    }
    let (mut busy, mut acks) = (Vec::new(), Vec::new());
    for n in 0..1000 {
        let id = format!("busy-{n}");
        let t = Instant::now();
        publish(&mut c, &id);
        acks.push(t.elapsed());
        wait_reply(&id);
        busy.push(t.elapsed());
    }
    report(
        "bus publish acknowledged (durable commit)",
        lat(acks).to_string(),
    );
    report(
        "bus -> plugin -> reply on SSE, one at a time, back to back",
        lat(busy).to_string(),
    );
    // Work in flight: 8 events outstanding at all times (a new publish for every reply), so
    // the worker always has a queue but no backlog builds up.
    {
        const IN_FLIGHT: usize = 8;
        let mut sent_at: std::collections::HashMap<String, Instant> = Default::default();
        let mut lats = Vec::new();
        let mut n = 0;
        let started = Instant::now();
        while lats.len() < 3000 {
            while sent_at.len() < IN_FLIGHT {
                let id = format!("fl-{n}");
                n += 1;
                sent_at.insert(id.clone(), Instant::now());
                publish(&mut c, &id);
            }
            let v = replies
                .next(Duration::from_secs(30))
                .expect("a reply within 30 s");
            if let Some(at) = v["id"].as_str().and_then(|id| sent_at.remove(id)) {
                lats.push(at.elapsed());
            }
        }
        let rate = lats.len() as f64 / started.elapsed().as_secs_f64();
        report(
            &format!("bus -> plugin -> reply on SSE, {IN_FLIGHT} in flight"),
            format!(
                "{}; {rate:.0} events/s through one worker thread",
                lat(lats)
            ),
        );
        while !sent_at.is_empty() {
            let v = replies
                .next(Duration::from_secs(30))
                .expect("a reply within 30 s");
            if let Some(id) = v["id"].as_str() {
                sent_at.remove(id);
            }
        }
    }
    let mut idle = Vec::new();
    for n in 0..12 {
        std::thread::sleep(Duration::from_secs(1));
        let id = format!("idle-{n}");
        let t = Instant::now();
        publish(&mut c, &id);
        wait_reply(&id);
        idle.push(t.elapsed());
    }
    report(
        "bus -> plugin -> reply on SSE, after a quiet second",
        lat(idle).to_string(),
    );
}

/// Kills a host of engine `mime` and times until the worker answers an invoke again.
fn respawn_once(d: &Daemon, mime: &str, worker_id: &str, body: &[u8]) -> Duration {
    let (pid, _) = hosts(d, mime)[0];
    let mut c = Conn::new(d.addr());
    assert!(invoke_ok(&mut c, worker_id, body));
    let pid_t = libc::pid_t::try_from(pid).expect("pid");
    // SAFETY: kill(2) has no memory preconditions; the pid is a live host of this daemon
    // (read from /v1/hosts just now; the daemon holds a pidfd, so it is not reaped and reused
    // before it sees the death).
    unsafe { libc::kill(pid_t, libc::SIGKILL) };
    let t = Instant::now();
    loop {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no answer after the kill"
        );
        match c.request("POST", &format!("/v1/workers/{worker_id}/invoke"), body) {
            Ok((200, _)) => return t.elapsed(),
            Ok(_) => std::thread::sleep(Duration::from_micros(200)),
            Err(_) => c = Conn::new(d.addr()),
        }
    }
}

/// Waits until the daemon has an idle standby host of `mime` (`HOST_STANDBY`).
fn wait_standby(d: &Daemon, mime: &str) {
    let t = Instant::now();
    while !d.get("/v1/hosts").json()["standby"]
        .as_array()
        .is_some_and(|a| a.iter().any(|h| h["mimeType"] == mime))
    {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no {mime} standby host"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Respawn through the daemon, without and with warm standby hosts (`HOST_STANDBY` 0 and 1,
/// the before and after of issue 13's standby, in the same run). With
/// `WM_COMPARE_BASELINE_BIN` (a directory holding an older `workmanager` and its
/// `host-runner`), each round runs that build's daemon and this one's, alternating which goes
/// first, and reports both with their ratio.
fn respawn(so: &Path, dotnet: Option<&Path>) {
    let baseline = std::env::var_os("WM_COMPARE_BASELINE_BIN")
        .map(|d| Path::new(&d).join("workmanager"))
        .filter(|p| p.is_file());
    for standby in ["0", "1"] {
        section(&format!(
            "daemon (HOST_STANDBY={standby}): kill -9 a host, time until the worker answers an invoke again"
        ));
        let (mut native, mut managed) = (Vec::new(), Vec::new());
        let (mut base_native, mut base_managed) = (Vec::new(), Vec::new());
        let rounds: usize = std::env::var("WM_COMPARE_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5);
        for round in 0..rounds {
            let mut builds: Vec<Option<&Path>> = vec![None];
            if let Some(b) = &baseline {
                builds.insert(round % 2, Some(b.as_path()));
            }
            for binary in builds {
                let (n, m) = respawn_round(so, dotnet, standby, binary);
                let (to_n, to_m) = if binary.is_some() {
                    (&mut base_native, &mut base_managed)
                } else {
                    (&mut native, &mut managed)
                };
                to_n.push(n);
                to_m.extend(m);
            }
        }
        let ms = |v: &[Duration]| {
            v.iter()
                .map(|d| format!("{:.1}", d.as_secs_f64() * 1e3))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let figures = [
            (
                "native host respawn + reload -> answered",
                &native,
                &base_native,
            ),
            (
                ".NET host respawn -> first managed call answered",
                &managed,
                &base_managed,
            ),
        ];
        for (what, now, base) in figures {
            if now.is_empty() {
                continue;
            }
            report(
                &format!("HOST_STANDBY={standby}: {what} ({} kills, ms)", now.len()),
                format!("{} ms; {}", ms(now), lat(now.to_vec())),
            );
            if !base.is_empty() {
                let (l_now, l_base) = (lat(now.to_vec()), lat(base.to_vec()));
                report(
                    &format!(
                        "HOST_STANDBY={standby}: baseline build, {what} ({} kills, ms)",
                        base.len()
                    ),
                    format!(
                        "{} ms; {}; p50 now / baseline = {:.2}",
                        ms(base),
                        l_base,
                        l_now.p50 / l_base.p50
                    ),
                );
            }
        }
    }
}

/// One fresh daemon (`binary`, or this build's): kills its native host, then its .NET host
/// (when .NET is here), timing each until the worker answers again. A fresh daemon per sample,
/// as the backoff doubles per crash.
fn respawn_round(
    so: &Path,
    dotnet: Option<&Path>,
    standby: &str,
    binary: Option<&Path>,
) -> (Duration, Option<Duration>) {
    let body = serde_json::to_vec(&event_json("r-1", "bench.request")).unwrap();
    let d = daemon_with(dotnet.is_some(), &[("HOST_STANDBY", standby)], binary);
    let w = worker(
        &d,
        NATIVE,
        "bench.request",
        &chaos_package("Chaos.Worker", so),
        json!({}),
    );
    if standby == "1" {
        wait_standby(&d, NATIVE);
    }
    let native = respawn_once(&d, NATIVE, &w, &body);
    let managed = dotnet.map(|dll| {
        let w = worker(
            &d,
            DOTNET,
            "dn.in",
            &dn::worker_nupkg("Echo", dll, &[]),
            json!({}),
        );
        if standby == "1" {
            wait_standby(&d, DOTNET);
        }
        respawn_once(&d, DOTNET, &w, &body)
    });
    (native, managed)
}

/// RSS of the daemon and its hosts, and idle CPU with workers loaded.
fn memory_and_idle_cpu(so: &Path, dotnet: Option<&Path>) {
    section("daemon: memory and idle CPU");
    let d = daemon(dotnet.is_some(), &[]);
    let pid = d.pid().expect("pid");
    std::thread::sleep(Duration::from_millis(500));
    report(
        "daemon RSS, idle, no worker",
        format!("{:.1} MiB", rss_mib(pid)),
    );
    let body = serde_json::to_vec(&event_json("m-1", "bench.request")).unwrap();
    let mut c = Conn::new(d.addr());
    let mut per_host = String::new();
    for (mime, n_name) in [(NATIVE, "native"), (DOTNET, ".NET")] {
        if mime == DOTNET && dotnet.is_none() {
            continue;
        }
        let mut first = 0.0;
        for i in 0..10 {
            let pkg = match dotnet {
                Some(dll) if mime == DOTNET => dn::worker_nupkg(&format!("Echo{i}"), dll, &[]),
                _ => chaos_package(&format!("Chaos{i}.Worker"), so),
            };
            let w = worker(&d, mime, &format!("m.{n_name}.{i}"), &pkg, json!({}));
            for _ in 0..200 {
                assert!(invoke_ok(&mut c, &w, &body));
            }
            if i == 0 {
                first = rss_mib(hosts(&d, mime)[0].0);
            }
        }
        let hs = hosts(&d, mime);
        assert_eq!(hs.len(), 1, "one shared {n_name} host");
        let ten = rss_mib(hs[0].0);
        per_host.push_str(&format!("{n_name}: {first:.1} -> {ten:.1} MiB; "));
        report(
            &format!("{n_name} host RSS (daemon): 1 worker / 10 workers"),
            format!(
                "{first:.1} / {ten:.1} MiB (+{:.2} MiB per extra worker)",
                (ten - first) / 9.0
            ),
        );
    }
    report(
        "daemon RSS with the workers above, after traffic",
        format!("{:.1} MiB", rss_mib(pid)),
    );
    drop(c);
    std::thread::sleep(Duration::from_secs(1));
    let mut pids = vec![("daemon".to_string(), pid)];
    for mime in [NATIVE, DOTNET] {
        for (p, _) in hosts(&d, mime) {
            pids.push((format!("{mime} host"), p));
        }
    }
    let before: Vec<u64> = pids.iter().map(|(_, p)| cpu_ticks(*p)).collect();
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    let secs = t.elapsed().as_secs_f64();
    let hz = clock_ticks_per_second();
    let parts: Vec<String> = pids
        .iter()
        .zip(before)
        .map(|((name, p), b)| {
            let pct = (cpu_ticks(*p) - b) as f64 / hz / secs * 100.0;
            format!("{name} {pct:.2}%")
        })
        .collect();
    report(
        "idle CPU over 10 s with the workers loaded",
        parts.join(", "),
    );
}

// ---------------------------------------------------------------------------------------------
// The REST publish load test
// ---------------------------------------------------------------------------------------------

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

fn bus_metrics(d: &Daemon) -> String {
    let m = d.get("/metrics").text();
    format!(
        "published {}, settled {}, stored (on disk, unsettled) {}, store queue {}, overflowed (dead-lettered as overflow) {}, dropped (no consumer) {}",
        metric(&m, "workmanager_bus_published_total"),
        metric(&m, "workmanager_bus_settled_total"),
        metric(&m, "workmanager_bus_stored_events"),
        metric(&m, "workmanager_bus_store_queue_depth"),
        metric(&m, "workmanager_bus_overflowed_total"),
        metric(&m, "workmanager_bus_dropped_total"),
    )
}

/// `publishers` threads, each a keep-alive connection publishing `data` to `topic` for `for_`.
/// Returns (requests, latencies) and samples the daemon's RSS every 250 ms.
fn publish_load(
    d: &Daemon,
    topic: &str,
    data: &str,
    publishers: usize,
    for_: Duration,
) -> (usize, Vec<Duration>, Vec<f64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let hs: Vec<_> = (0..publishers)
        .map(|p| {
            let (stop, addr, topic, data) =
                (stop.clone(), d.addr(), topic.to_string(), data.to_string());
            std::thread::spawn(move || {
                let mut c = Conn::new(addr);
                let mut lats = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let mut ev = event_json(&format!("l{p}-{n}"), &topic);
                    ev["datacontenttype"] = json!("text/plain");
                    ev["data"] = json!(data);
                    let b = serde_json::to_vec(&ev).unwrap();
                    let t = Instant::now();
                    let (s, r) = c
                        .request("POST", &format!("/v1/topics/{topic}/events"), &b)
                        .expect("publish");
                    lats.push(t.elapsed());
                    assert_eq!(s, 202, "{}", String::from_utf8_lossy(&r));
                    n += 1;
                }
                lats
            })
        })
        .collect();
    let pid = d.pid().expect("pid");
    let mut rss = Vec::new();
    let t = Instant::now();
    while t.elapsed() < for_ {
        std::thread::sleep(Duration::from_millis(250));
        rss.push(rss_mib(pid));
    }
    stop.store(true, Ordering::Relaxed);
    let mut lats = Vec::new();
    for h in hs {
        lats.extend(h.join().unwrap());
    }
    (lats.len(), lats, rss)
}

fn load_test(so: &Path) {
    section("REST publish load test (publishers in this process, daemon in its own)");
    let d = daemon(false, &[]);
    worker(
        &d,
        NATIVE,
        "load.in",
        &chaos_package("Chaos.Worker", so),
        json!({"maxConcurrency": 4}),
    );
    let replies = Sse::subscribe(&d.base_url(), "load.in.reply");
    // When each reply arrived, until 5 s pass without one.
    let counter = std::thread::spawn(move || {
        let mut at = Vec::new();
        while replies.next(Duration::from_secs(5)).is_some() {
            at.push(Instant::now());
        }
        at
    });
    let mut total = 0usize;
    let mut windows = Vec::new();
    for publishers in [1usize, 4, 16] {
        let for_ = Duration::from_secs(4);
        let start = Instant::now();
        let (n, lats, rss) = publish_load(&d, "load.in", "hello", publishers, for_);
        windows.push((publishers, start, Instant::now()));
        total += n;
        report(
            &format!("publish, echo worker replying, {publishers} publishers"),
            format!(
                "{:.0} req/s, {}, daemon RSS max {:.1} MiB",
                n as f64 / for_.as_secs_f64(),
                lat(lats),
                rss.iter().cloned().fold(0.0, f64::max)
            ),
        );
        // Let the worker catch up before the next row, so rows do not overlap.
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            let m = d.get("/metrics").text();
            if metric(&m, "workmanager_bus_stored_events") == 0.0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let reply_at = counter.join().unwrap();
    for (publishers, start, end) in &windows {
        let during = reply_at.iter().filter(|t| *t >= start && *t <= end).count();
        let next_start = windows
            .iter()
            .find(|w| w.1 > *end)
            .map_or(Instant::now(), |w| w.1);
        let last = reply_at
            .iter()
            .filter(|t| *t > end && *t < &next_start)
            .max()
            .map_or(Duration::ZERO, |t| t.duration_since(*end));
        report(
            &format!("replies on SSE, {publishers} publishers"),
            format!(
                "{:.0} replies/s while publishing; last reply {:.0} ms after publishing stopped",
                during as f64 / end.duration_since(*start).as_secs_f64(),
                last.as_secs_f64() * 1e3
            ),
        );
    }
    report(
        "replies seen on SSE after the three runs",
        format!(
            "{} of {total} published; bus: {}",
            reply_at.len(),
            bus_metrics(&d)
        ),
    );

    section("publishers outrunning a slow worker (chaos data \"sleep:50\", one at a time)");
    worker(
        &d,
        NATIVE,
        "slow.in",
        &chaos_package("Slow.Worker", so),
        json!({}),
    );
    let rss_before = rss_mib(d.pid().expect("pid"));
    let for_ = Duration::from_secs(10);
    let (n, lats, rss) = publish_load(&d, "slow.in", "sleep:50", 16, for_);
    let db = std::fs::metadata(d.data_dir().join("bus.db")).map_or(0, |m| m.len())
        + std::fs::metadata(d.data_dir().join("bus.db-wal")).map_or(0, |m| m.len());
    report(
        "16 publishers vs a 20 msgs/s worker, 10 s",
        format!(
            "{n} accepted ({:.0} req/s), {}",
            n as f64 / for_.as_secs_f64(),
            lat(lats)
        ),
    );
    let rss_s: Vec<String> = rss.iter().step_by(4).map(|r| format!("{r:.1}")).collect();
    report(
        "daemon RSS during the overload, every second (MiB)",
        format!("before {rss_before:.1}; {}", rss_s.join(", ")),
    );
    report(
        "where the backlog waits",
        format!(
            "{}; bus.db + WAL {:.1} MiB",
            bus_metrics(&d),
            db as f64 / (1 << 20) as f64
        ),
    );
}

/// What the event-path figures are compared with, from the same run.
#[derive(Debug, Clone, Copy)]
struct Baselines {
    /// Path A, 1 worker: in-process calls per second.
    a: f64,
    /// The ring alone, back to back.
    ring: Lat,
    /// One request and its answer over loopback TCP between two processes, back to back.
    tcp: Lat,
}

impl Baselines {
    /// "x events/s = 1/n of A, 1/m of the ring".
    fn rate(&self, per_s: f64) -> String {
        let ring = 1e6 / self.ring.p50.max(0.001);
        format!(
            "{per_s:.0} events/s = A/{:.0}, ring/{:.0}",
            self.a / per_s.max(1.0),
            ring / per_s.max(1.0)
        )
    }

    /// "p50 x us = n x A's call, m x the ring's round trip, k x the loopback floor".
    fn latency(&self, l: Lat) -> String {
        let a_us = 1e6 / self.a.max(1.0);
        format!(
            "{l}; p50 = {:.0} x A's call, {:.0} x the ring's round trip, {:.1} x a loopback TCP round trip",
            l.p50 / a_us,
            l.p50 / self.ring.p50.max(0.001),
            l.p50 / self.tcp.p50.max(0.001)
        )
    }
}

/// Issue 12's figures: the event path end to end (HTTP publish -> bus -> native echo worker
/// -> reply stored -> reply seen on SSE), single and batch publishes, one at a time (fsync and
/// os), `POST /invoke`, and the daemon's RSS meanwhile.
/// `bin`: a `workmanager` binary to run instead of this tree's (an older build, measured in
/// the same run); `label` prefixes its rows. Returns the figures for the before/after ratios.
/// One group of rows (`one`, `single` or `batch`) of the event path, for one build; the
/// figures it did not measure stay 0.
fn event_path(
    so: &Path,
    base: Baselines,
    bin: Option<&Path>,
    label: &str,
    group: &str,
) -> EventFigures {
    section(&format!(
        "issue 12: the event path{}, rows '{group}' (ratios to path A, 1 worker, and to the ring alone)",
        bin.map_or(String::new(), |b| format!(" of {}", b.display()))
    ));
    let daemon = |extra: &[(&str, &str)]| {
        let mut opts = DaemonOptions::default()
            .env("WORKMANAGER_LOG", "warn")
            .env("HOST_RESPAWN_BACKOFF_MS", "1")
            .env("CRASH_LOOP_MAX_CRASHES", "1000");
        for (k, v) in extra {
            opts = opts.env(k, v);
        }
        if let Some(b) = bin {
            opts = opts.bin(b);
        }
        Daemon::start(opts)
    };
    let mut figures = EventFigures::default();
    let pkg = chaos_package("Chaos.Worker", so);
    let row = |name: &str| name == group;
    for durability in ["fsync", "os"] {
        if !row("one") {
            break;
        }
        let d = daemon(&[("BUS_DURABILITY", durability)]);
        let w = worker(&d, NATIVE, "one.in", &pkg, json!({}));
        let replies = Sse::subscribe(&d.base_url(), "one.in.reply");
        let mut c = Conn::new(d.addr());
        let mut one = |id: &str| {
            let b = serde_json::to_vec(&event_json(id, "one.in")).unwrap();
            let t = Instant::now();
            let (s, r) = c
                .request("POST", "/v1/topics/one.in/events", &b)
                .expect("publish");
            assert_eq!(s, 202, "{}", String::from_utf8_lossy(&r));
            loop {
                let v = replies
                    .next(Duration::from_secs(30))
                    .unwrap_or_else(|| panic!("no reply to {id}"));
                if v["id"] == id {
                    return t.elapsed();
                }
            }
        };
        for n in 0..200 {
            one(&format!("w{n}"));
        }
        let pid = d.pid().expect("pid");
        let ticks = cpu_ticks(pid);
        let lats: Vec<Duration> = (0..2000).map(|n| one(&format!("b{n}"))).collect();
        let cpu = cpu_us_per(cpu_ticks(pid) - ticks, 2000.0);
        let l = lat(lats);
        if durability == "fsync" {
            figures.one_fsync = l.p50;
            figures.cpu_one = cpu;
        } else {
            figures.one_os = l.p50;
        }
        report(
            &format!(
                "{label}bus -> plugin -> reply on SSE, one at a time, BUS_DURABILITY={durability}"
            ),
            format!("{}; daemon CPU {cpu:.0} us/event", base.latency(l)),
        );
        if durability == "fsync" {
            let body = serde_json::to_vec(&event_json("inv-1", "one.in")).unwrap();
            for _ in 0..500 {
                assert!(invoke_ok(&mut c, &w, &body));
            }
            let lats: Vec<Duration> = (0..3000)
                .map(|_| {
                    let t = Instant::now();
                    assert!(invoke_ok(&mut c, &w, &body));
                    t.elapsed()
                })
                .collect();
            let l = lat(lats);
            figures.invoke = l.p50;
            report(
                &format!("{label}POST /invoke, back to back"),
                base.latency(l),
            );
        }
    }

    // 16 publishers, one event a request, one worker with maxConcurrency 4.
    if row("single") {
        let d = daemon(&[]);
        worker(&d, NATIVE, "e2e.in", &pkg, json!({"maxConcurrency": 4}));
        let m = sustained(&d, "e2e.in", 16, 1, Duration::from_secs(6));
        figures.single = m.seen;
        figures.cpu_single = m.cpu_per_seen;
        report(
            &format!("{label}end to end, 16 publishers, single events, 1 worker x 4"),
            format!(
                "{}; {:.0} publishes/s accepted; daemon CPU {:.0} us/event ({:.0} per accepted event); RSS max {:.1} MiB",
                base.rate(m.seen),
                m.accepted,
                m.cpu_per_seen,
                m.cpu_per_accepted,
                m.rss_max
            ),
        );
    }
    // Batches of 100 events a request, four workers (4 threads each) on the topic.
    if row("batch") {
        // WM_COMPARE_BATCH_BACKLOG=<n>: the row's TOPIC_MAX_BACKLOG_EVENTS. At the default
        // (100,000) the publishers fill the backlog ~2.5 s in and ~70% of what is accepted then
        // overflows to `batch.in-dead` (docs/benchmarks.md, 12o): a limit above what the row
        // accepts measures the drain alone.
        let backlog = std::env::var("WM_COMPARE_BATCH_BACKLOG").ok();
        let extra: Vec<(&str, &str)> = backlog
            .as_deref()
            .map(|n| vec![("TOPIC_MAX_BACKLOG_EVENTS", n)])
            .unwrap_or_default();
        let d = daemon(&extra);
        for _ in 0..4 {
            worker(&d, NATIVE, "batch.in", &pkg, json!({"maxConcurrency": 4}));
        }
        let m = sustained(&d, "batch.in", 4, 100, Duration::from_secs(6));
        figures.batch = m.seen;
        figures.cpu_batch = m.cpu_per_seen;
        report(
            &format!("{label}end to end, 4 publishers x 100-event batches, 4 workers x 4"),
            format!(
                "{}; {:.0} events/s accepted; daemon CPU {:.0} us/event ({:.0} per accepted event); RSS max {:.1} MiB",
                base.rate(m.seen),
                m.accepted,
                m.cpu_per_seen,
                m.cpu_per_accepted,
                m.rss_max
            ),
        );
    }
    figures
}

/// The event-path figures of one build, for the before/after ratios.
#[derive(Debug, Default, Clone, Copy)]
struct EventFigures {
    /// Replies/s, 16 publishers of single events.
    single: f64,
    /// Replies/s, 100-event batches.
    batch: f64,
    /// p50 us, one at a time, fsync and os.
    one_fsync: f64,
    one_os: f64,
    /// p50 us, `POST /invoke`.
    invoke: f64,
    /// Daemon CPU (user + system) per event: one at a time (fsync), single events, batches.
    cpu_one: f64,
    cpu_single: f64,
    cpu_batch: f64,
}

impl EventFigures {
    /// Takes every figure `other` measured (a group of rows measures only its own).
    fn merge(&mut self, other: EventFigures) {
        let pick = |a: &mut f64, b: f64| {
            if b > 0.0 {
                *a = b;
            }
        };
        pick(&mut self.single, other.single);
        pick(&mut self.batch, other.batch);
        pick(&mut self.one_fsync, other.one_fsync);
        pick(&mut self.one_os, other.one_os);
        pick(&mut self.invoke, other.invoke);
        pick(&mut self.cpu_one, other.cpu_one);
        pick(&mut self.cpu_single, other.cpu_single);
        pick(&mut self.cpu_batch, other.cpu_batch);
    }
}

/// Microseconds of CPU per event for `ticks` clock ticks spent on `events` events.
fn cpu_us_per(ticks: u64, events: f64) -> f64 {
    ticks as f64 / clock_ticks_per_second() * 1e6 / events.max(1.0)
}

/// Rows "now / baseline" for the same run.
fn event_ratios(old: EventFigures, new: EventFigures) {
    section("issue 12: this tree / the baseline build (same run)");
    // Rows left out with WM_COMPARE_EVENT_ROWS measured nothing: no ratio for them.
    let report = |name: &str, (o, n): (f64, f64), text: String| {
        if o > 0.0 && n > 0.0 {
            report(name, text);
        }
    };
    let rate = |o: f64, n: f64| format!("{o:.0} -> {n:.0} events/s = {:.2}x", n / o.max(1.0));
    let p50 = |o: f64, n: f64| format!("p50 {o:.0} -> {n:.0} us = {:.2}x faster", o / n.max(0.001));
    report(
        "ratio: 16 publishers, single events",
        (old.single, new.single),
        rate(old.single, new.single),
    );
    report(
        "ratio: 100-event batches",
        (old.batch, new.batch),
        rate(old.batch, new.batch),
    );
    report(
        "ratio: one at a time, fsync",
        (old.one_fsync, new.one_fsync),
        p50(old.one_fsync, new.one_fsync),
    );
    report(
        "ratio: one at a time, os",
        (old.one_os, new.one_os),
        p50(old.one_os, new.one_os),
    );
    report(
        "ratio: POST /invoke",
        (old.invoke, new.invoke),
        p50(old.invoke, new.invoke),
    );
    let cpu = |o: f64, n: f64| format!("{o:.0} -> {n:.0} us/event = {:.2}x less", o / n.max(0.001));
    report(
        "ratio: daemon CPU per event, one at a time",
        (old.cpu_one, new.cpu_one),
        cpu(old.cpu_one, new.cpu_one),
    );
    report(
        "ratio: daemon CPU per event, single events",
        (old.cpu_single, new.cpu_single),
        cpu(old.cpu_single, new.cpu_single),
    );
    report(
        "ratio: daemon CPU per event, batches",
        (old.cpu_batch, new.cpu_batch),
        cpu(old.cpu_batch, new.cpu_batch),
    );
}

/// Per-round ratios "baseline / this tree" (rates: this tree / baseline) of alternating
/// rounds, each figure with its median over the rounds.
fn event_round_ratios(rounds: &[(EventFigures, EventFigures)]) {
    section("issue 12: this tree / the baseline build, alternating rounds");
    type Pick = fn(&EventFigures) -> f64;
    // (name, figure, higher is better)
    let figures: [(&str, Pick, bool); 8] = [
        ("16 publishers, single events, drained", |f| f.single, true),
        ("100-event batches, drained", |f| f.batch, true),
        ("one at a time, fsync, p50", |f| f.one_fsync, false),
        ("one at a time, os, p50", |f| f.one_os, false),
        ("POST /invoke, p50", |f| f.invoke, false),
        ("daemon CPU per event, one at a time", |f| f.cpu_one, false),
        (
            "daemon CPU per event, single events",
            |f| f.cpu_single,
            false,
        ),
        ("daemon CPU per event, batches", |f| f.cpu_batch, false),
    ];
    for (name, pick, higher_better) in figures {
        let pairs: Vec<(f64, f64)> = rounds
            .iter()
            .map(|(o, n)| (pick(o), pick(n)))
            .filter(|(o, n)| *o > 0.0 && *n > 0.0)
            .collect();
        if pairs.is_empty() {
            continue;
        }
        let mut ratios: Vec<f64> = pairs
            .iter()
            .map(|(o, n)| if higher_better { n / o } else { o / n })
            .collect();
        let each = pairs
            .iter()
            .zip(&ratios)
            .map(|((o, n), r)| format!("{o:.0} -> {n:.0} ({r:.2}x)"))
            .collect::<Vec<_>>()
            .join(", ");
        ratios.sort_by(f64::total_cmp);
        let mid = ratios.len() / 2;
        let median = if ratios.len().is_multiple_of(2) {
            (ratios[mid - 1] + ratios[mid]) / 2.0
        } else {
            ratios[mid]
        };
        report(
            &format!("rounds: {name}"),
            format!("median {median:.2}x better; per round {each}"),
        );
    }
}

/// `publishers` keep-alive connections publishing `batch` events a request to `topic` for
/// `for_`, while an SSE subscription counts the replies.
fn sustained(
    d: &Daemon,
    topic: &str,
    publishers: usize,
    batch: usize,
    for_: Duration,
) -> Sustained {
    let replies = Sse::subscribe(&d.base_url(), &format!("{topic}.reply"));
    let seen = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let counter = {
        let (seen, stop) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if replies.next(Duration::from_millis(200)).is_some() {
                    seen.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let accepted = Arc::new(AtomicU64::new(0));
    let hs: Vec<_> = (0..publishers)
        .map(|p| {
            let (stop, accepted, addr, topic) =
                (stop.clone(), accepted.clone(), d.addr(), topic.to_string());
            std::thread::spawn(move || {
                let mut c = Conn::new(addr);
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let events: Vec<Value> = (0..batch)
                        .map(|i| {
                            let mut ev = event_json(&format!("s{p}-{n}-{i}"), &topic);
                            ev["datacontenttype"] = json!("text/plain");
                            ev["data"] = json!("hello");
                            ev
                        })
                        .collect();
                    let path = format!("/v1/topics/{topic}/events");
                    let (s, r) = if batch == 1 {
                        let b = serde_json::to_vec(&events[0]).unwrap();
                        c.request("POST", &path, &b).expect("publish")
                    } else {
                        let b = serde_json::to_vec(&events).unwrap();
                        c.request_typed("POST", &path, "application/cloudevents-batch+json", &b)
                            .expect("publish")
                    };
                    assert_eq!(s, 202, "{}", String::from_utf8_lossy(&r));
                    accepted.fetch_add(batch as u64, Ordering::Relaxed);
                    n += 1;
                }
            })
        })
        .collect();
    // Warm-up second, then the measured window.
    std::thread::sleep(Duration::from_secs(1));
    let (a0, s0) = (
        accepted.load(Ordering::Relaxed),
        seen.load(Ordering::Relaxed),
    );
    let pid = d.pid().expect("pid");
    let ticks = cpu_ticks(pid);
    let mut rss = Vec::new();
    let t = Instant::now();
    while t.elapsed() < for_ {
        std::thread::sleep(Duration::from_millis(250));
        rss.push(rss_mib(pid));
    }
    let secs = t.elapsed().as_secs_f64();
    let (a1, s1) = (
        accepted.load(Ordering::Relaxed),
        seen.load(Ordering::Relaxed),
    );
    let spent = cpu_ticks(pid) - ticks;
    stop.store(true, Ordering::Relaxed);
    for h in hs {
        h.join().unwrap();
    }
    let _ = counter.join();
    Sustained {
        accepted: (a1 - a0) as f64 / secs,
        seen: (s1 - s0) as f64 / secs,
        rss_max: rss.iter().cloned().fold(0.0, f64::max),
        cpu_per_seen: cpu_us_per(spent, (s1 - s0) as f64),
        cpu_per_accepted: cpu_us_per(spent, (a1 - a0) as f64),
    }
}

/// What one sustained row measured over its window.
struct Sustained {
    /// Events accepted per second (publishes acknowledged, times events per request).
    accepted: f64,
    /// Replies seen on SSE per second.
    seen: f64,
    /// The daemon's largest RSS sample, MiB.
    rss_max: f64,
    /// Daemon CPU in microseconds per reply seen: what one drained event costs it (publish,
    /// dispatch, completion and SSE together). When publishers outrun the workers, the CPU
    /// spent storing the growing backlog is charged to the drained events too.
    cpu_per_seen: f64,
    /// The same CPU per event accepted: the fairer figure when the backlog grows.
    cpu_per_accepted: f64,
}

// ---------------------------------------------------------------------------------------------

fn main() {
    if let (Some(sock), Some(so)) = (std::env::var_os(CHILD_ENV), std::env::var_os(CHILD_SO_ENV)) {
        socket_child(Path::new(&sock), Path::new(&so));
        return;
    }
    if std::env::var_os(RING_CHILD_ENV).is_some() {
        ring_echo_child();
        return;
    }
    if let Some(addr) = std::env::var_os(TCP_ECHO_ENV) {
        tcp_echo_child(&addr.to_string_lossy());
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let so = chaos_so();
    let ev = event_fb();
    // Build the daemon and host-runner first (release when this runs as a bench).
    host_runner_bin();
    let dotnet = if dn::dotnet_root().join("dotnet").exists() {
        dn::engine_dir();
        Some(dn::build_library("Echo", &["Echo.cs"], &[]))
    } else {
        println!(
            "no .NET runtime at {}: .NET rows skipped",
            dn::dotnet_root().display()
        );
        None
    };
    println!(
        "compare: {} CPUs, load average {} at start; event {} B FlatBuffer, {} B JSON",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average(),
        ev.len(),
        serde_json::to_vec(&event_json("id-1", "bench.request"))
            .unwrap()
            .len()
    );

    let frame = Host::process_frame(1, "w0", &ev);
    section("the ring alone (this process <-> an echo child)");
    let ring = ring_alone("run 1 (start)", &frame, false);
    ring_alone("run 1 (start)", &frame, true);

    if std::env::var("WM_COMPARE_ONLY").as_deref() == Ok("events") {
        // Issue 12's figures alone (a few minutes): path A and the ring as the baselines, then
        // the event path through the daemon.
        // With WM_COMPARE_BASELINE_DAEMON (a directory holding an older `workmanager` and its
        // `host-runner`), that build's rows first, then this tree's, and their ratios.
        let a = path_a(&so, &ev);
        section("the machine's floor (two processes, loopback TCP)");
        let tcp = loopback_floor();
        let base = Baselines { a: a[0], ring, tcp };
        //
        // The builds alternate per group of rows (baseline then this tree), so that each
        // latency row runs after the same thing in both builds: run after the baseline's batch
        // row, this tree's fsync row measured 0.81-0.93x in four runs from the write-back of the
        // previous daemon's files alone, and 1.13-1.26x when it ran first (docs/benchmarks.md).
        // WM_COMPARE_EVENT_ROWS=one,single,batch (default: all) runs some groups only, e.g. to
        // attach a profiler to the daemon of one row.
        let rows = std::env::var("WM_COMPARE_EVENT_ROWS").unwrap_or_default();
        let old_bin = std::env::var_os("WM_COMPARE_BASELINE_DAEMON")
            .map(|dir| Path::new(&dir).join("workmanager"));
        let groups: Vec<&str> = ["one", "single", "batch"]
            .into_iter()
            .filter(|g| rows.is_empty() || rows.split(',').any(|r| r.trim() == *g))
            .collect();
        // WM_COMPARE_EVENT_ROUNDS=<n> (with a baseline): n rounds, the order of the two builds
        // flipping every round, then the ratios of every round and their median. Run alone, the
        // batch row favours whichever daemon runs first by 3-6% (the same code against itself
        // read 0.94-0.97x; docs/benchmarks.md, session 8's re-run), and invoke swings between
        // two modes with the machine's idleness: one ordering per run proves little.
        let rounds = std::env::var("WM_COMPARE_EVENT_ROUNDS")
            .ok()
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n > 0 && old_bin.is_some());
        if let (Some(rounds), Some(bin)) = (rounds, &old_bin) {
            let mut all = Vec::with_capacity(rounds);
            for round in 0..rounds {
                let baseline_first = round.is_multiple_of(2);
                let (mut old, mut new) = (EventFigures::default(), EventFigures::default());
                for &group in &groups {
                    let mut run_old =
                        || old.merge(event_path(&so, base, Some(bin), "baseline: ", group));
                    if baseline_first {
                        run_old();
                        new.merge(event_path(&so, base, None, "", group));
                    } else {
                        new.merge(event_path(&so, base, None, "", group));
                        run_old();
                    }
                }
                println!(
                    "round {} ({} first): load average {}",
                    round + 1,
                    if baseline_first {
                        "baseline"
                    } else {
                        "this tree"
                    },
                    load_average()
                );
                all.push((old, new));
            }
            event_round_ratios(&all);
        } else {
            let (mut old, mut new) = (EventFigures::default(), EventFigures::default());
            for &group in &groups {
                if let Some(bin) = &old_bin {
                    old.merge(event_path(&so, base, Some(bin), "baseline: ", group));
                    println!("load average after the baseline's rows: {}", load_average());
                }
                new.merge(event_path(&so, base, None, "", group));
            }
            if old_bin.is_some() {
                event_ratios(old, new);
            }
        }
        println!("\nload average at the end: {}", load_average());
        println!("\n| figure | measured |\n|---|---|");
        for (f, v) in SUMMARY.lock().unwrap().iter() {
            println!("| {f} | {v} |");
        }
        return;
    }

    if std::env::var("WM_COMPARE_ONLY").as_deref() == Ok("respawn") {
        // Issue 13's respawn figures alone: through the daemon, HOST_STANDBY 0 then 1.
        respawn(&so, dotnet.as_deref());
        println!("\nload average at the end: {}", load_average());
        return;
    }

    if std::env::var_os("WM_COMPARE_ONLY_RING").is_some() {
        // The key ring figures alone (ring, then ring + host-runner), to repeat them quickly;
        // with WM_COMPARE_BASELINE_BIN (a directory holding an older host-runner), that build's
        // path B first, in the same run, for before/after ratios.
        codec_costs(&ev);
        let a = path_a(&so, &ev);
        if let Some(dir) = std::env::var_os("WM_COMPARE_BASELINE_BIN") {
            // WM_COMPARE_BASELINE_LANES=1: drive the baseline over lanes too (a baseline
            // built with lanes, such as main since 3e5d641), so that "baseline" and "lanes"
            // differ only by the host's code.
            let base_lanes = std::env::var_os("WM_COMPARE_BASELINE_LANES").is_some();
            // WM_COMPARE_B_ROUNDS=<n>: the two hosts alternate in n short rounds instead.
            if let Some(rounds) = std::env::var("WM_COMPARE_B_ROUNDS")
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .filter(|n| *n > 0)
            {
                path_b_rounds(
                    &so,
                    &ev,
                    &Path::new(&dir).join("host-runner"),
                    base_lanes,
                    rounds,
                );
                ring_alone("run 2", &frame, false);
                return;
            }
            let base = path_b_with(
                &Path::new(&dir).join("host-runner"),
                if base_lanes {
                    "baseline (lanes) "
                } else {
                    "baseline "
                },
                &so,
                &ev,
                base_lanes,
            );
            // This build without lanes (RING_LANES=0: every call through the frame loop),
            // then with them.
            let no_lanes = path_b_with(&host_runner_bin(), "no lanes ", &so, &ev, false);
            let (now, busy) = path_b(&so, &ev);
            section("path B now / baseline (same run)");
            report(
                "B busy p50: baseline / no lanes / lanes",
                format!(
                    "{:.2} / {:.2} / {:.2} us; lanes = {:.2}x baseline",
                    base.1.p50,
                    no_lanes.1.p50,
                    busy.p50,
                    busy.p50 / base.1.p50
                ),
            );
            for (i, n) in [1, 4, 16].into_iter().enumerate() {
                report(
                    &format!("{n} workers: A / baseline B / B no lanes / B lanes"),
                    format!(
                        "{:.0} / {:.0} / {:.0} / {:.0} msgs/s; B lanes = {:.2}x baseline, {:.3} of A",
                        a[i],
                        base.0[i],
                        no_lanes.0[i],
                        now[i],
                        now[i] / base.0[i],
                        now[i] / a[i]
                    ),
                );
            }
        } else {
            path_b(&so, &ev);
        }
        ring_alone("run 2", &frame, false);
        ring_alone("run 2", &frame, true);
        return;
    }

    let a = path_a(&so, &ev);
    let (b, _) = path_b(&so, &ev);
    let c = path_c(&so);
    host_figures(&so, &ev);
    section("throughput ratios (A = 1)");
    for (i, n) in [1, 4, 16].into_iter().enumerate() {
        report(
            &format!("{n} workers: A / B / C"),
            format!(
                "{:.0} / {:.0} / {:.0} msgs/s = 1 : {:.3} : {:.3}",
                a[i],
                b[i],
                c[i],
                b[i] / a[i],
                c[i] / a[i]
            ),
        );
    }
    e2e_latency(&so);
    section("the machine's floor (two processes, loopback TCP)");
    let tcp = loopback_floor();
    for group in ["one", "single", "batch"] {
        event_path(&so, Baselines { a: a[0], ring, tcp }, None, "", group);
    }
    respawn(&so, dotnet.as_deref());
    memory_and_idle_cpu(&so, dotnet.as_deref());
    load_test(&so);

    // The key ring figure again, at the end of the run, to show the machine's noise.
    section("B busy again (noise check)");
    {
        let dir = so.parent().expect("fixture dir");
        let lib = so.file_name().expect("file").to_string_lossy().into_owned();
        let (mut h, _) = Host::spawn("native", "bench-b2");
        h.load("w0", EngineKind::Native, dir, &lib);
        for n in 0..2000 {
            h.round_trip(n, "w0", &ev);
        }
        let (busy, switches) = ring_busy(&mut h, &ev);
        report(
            "B busy (back to back), run 2",
            format!("{busy}; host voluntary switches per call {switches:.2}"),
        );
        h.shutdown();
    }
    ring_alone("run 2 (end)", &frame, false);
    ring_alone("run 2 (end)", &frame, true);

    println!("\nload average at the end: {}", load_average());
    println!("\n| figure | measured |\n|---|---|");
    for (f, v) in SUMMARY.lock().unwrap().iter() {
        println!("| {f} | {v} |");
    }
}
