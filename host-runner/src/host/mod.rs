//! The host's life: arguments, ring, crash handler, sandbox, `Ready`, then the frame loop.
//!
//! `main.rs` calls [`main`]; everything it does is here so that the order of the start-up
//! steps reads top-down. The command line is `args.rs`; what worker threads and plugins
//! send through the ring (results, logs, gateway calls) is `services.rs`, with results going
//! out through the lock-free batching lane of `replies.rs`.

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use wm_shared::ring::{self, FrameSender, HostState, Region, RingError, Side};

use crate::crash::{self, CrashSink};
use crate::engine::dotnet::{DotNetConfig, DotNetEngine, RUNTIME_ENV};
use crate::engine::native::NativeEngine;
use crate::engine::{Engine, LoadSpec};
use crate::exit;
use crate::ffi::callbacks::HostServices;
use crate::sandbox::{self, SandboxConfig, SandboxError, log};
use crate::worker::Workers;
use wm_shared::protocol::{self, Message};

/// How long a frame send may wait for room in the ring before giving up.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// The engines this build can run (`--engine`).
pub const SUPPORTED_ENGINES: &[&str] = &[
    "native",
    "dotnet",
    #[cfg(feature = "python")]
    "python",
];
/// Bytes of a `ProcessResult` frame besides the response (ids, strings, FlatBuffer overhead).
const RESULT_OVERHEAD: usize = 64 * 1024;

mod args;
mod replies;
mod services;

pub use args::{Args, ArgsError};
use services::{RingOutbox, RingServices};

/// The whole process: returns the exit code (see [`crate::exit`]).
pub fn main() -> u8 {
    // Before anything else: the parent we were forked from, to detect its early death.
    // SAFETY: getppid has no preconditions.
    let parent_pid = unsafe { libc::getppid() };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("--version") {
        println!("host-runner {}", env!("CARGO_PKG_VERSION"));
        return exit::OK;
    }
    // The supervisor asks which engines this build has (/v1/engines).
    if argv.first().map(String::as_str) == Some("--engines") {
        println!("{}", SUPPORTED_ENGINES.join("\n"));
        return exit::OK;
    }
    let args = match Args::parse(argv) {
        Ok(a) => a,
        Err(e) => {
            log(&format!("{e}"));
            return exit::USAGE;
        }
    };
    if args.no_spin {
        crate::handoff::disable_spinning();
    }
    let kind = match args.engine.as_str() {
        "native" => protocol::EngineKind::Native,
        "dotnet" => protocol::EngineKind::DotNet,
        #[cfg(feature = "python")]
        "python" => protocol::EngineKind::Python,
        other => {
            log(&format!(
                "engine {other:?} is not built into this host-runner (supported: {}); the \
                 python engine needs a build with the `python` feature (libpython3.11)",
                SUPPORTED_ENGINES.join(", ")
            ));
            return exit::USAGE;
        }
    };

    // 1. Map the ring (fd 3).
    // SAFETY: fcntl(F_GETFD) only queries the fd table.
    if unsafe { libc::fcntl(args.ring_fd, libc::F_GETFD) } < 0 {
        log(&format!(
            "fd {} is not open; the supervisor passes the ring memfd there",
            args.ring_fd
        ));
        return exit::RING;
    }
    // SAFETY: the fd is open (checked above) and nothing else in this process owns it: it was
    // inherited from the supervisor for exactly this purpose.
    let fd = unsafe { OwnedFd::from_raw_fd(args.ring_fd) };
    // The doorbell eventfd, if the supervisor passed one (its async reader awaits it).
    let bell = match args.bell_fd {
        None => None,
        // SAFETY: fcntl(F_GETFD) only queries the fd table.
        Some(b) if unsafe { libc::fcntl(b, libc::F_GETFD) } < 0 || b == args.ring_fd => {
            log(&format!(
                "--bell-fd {b} is not an open fd besides the ring; the supervisor passes the \
                 doorbell eventfd there"
            ));
            return exit::RING;
        }
        // SAFETY: the fd is open (checked above), is not the ring fd, and nothing else in this
        // process owns it: it was inherited from the supervisor for exactly this purpose.
        Some(b) => Some(unsafe { OwnedFd::from_raw_fd(b) }),
    };
    let region = match Region::open_with_bell(fd, bell) {
        Ok(r) => Arc::new(r),
        Err(e) => {
            log(&format!("cannot map the ring: {e}"));
            return exit::RING;
        }
    };

    // 2. The crash handler, before any plugin code can run.
    let sink: &'static RegionSink = Box::leak(Box::new(RegionSink(region.clone())));
    if let Err(e) = crash::install(sink) {
        log(&format!("cannot install the crash handler: {e}"));
        return exit::SANDBOX;
    }

    // 3. The sandbox, in order (see sandbox::enter).
    let cfg = SandboxConfig {
        ring_fd: args.ring_fd,
        bell_fd: args.bell_fd,
        rlimit_nofile: args.rlimit_nofile,
        rlimit_as: args.rlimit_as,
        seccomp: args.seccomp,
        profile: match kind {
            protocol::EngineKind::DotNet => sandbox::seccomp::Profile::DotNet,
            protocol::EngineKind::Python => sandbox::seccomp::Profile::Python,
            _ => sandbox::seccomp::Profile::Native,
        },
        landlock: args.landlock,
        ids: args.ids,
        tmp_dir: args.tmp_dir.clone(),
        parent_pid,
    };
    let report = match sandbox::enter(&cfg) {
        Ok(r) => r,
        Err(e @ SandboxError::ParentGone { .. }) => {
            log(&format!("{e}"));
            return exit::PARENT_GONE;
        }
        Err(e) => {
            log(&format!("sandbox: {e}"));
            return exit::SANDBOX;
        }
    };
    // INVARIANT: from here on the seccomp filter is in place; no plugin was opened before.
    let _alt = crash::AltStack::install();

    // 4. Engine, workers, Ready, serve.
    let code = match kind {
        protocol::EngineKind::Native => start_engine(&region, &report, kind, NativeEngine::new),
        protocol::EngineKind::DotNet => {
            // CoreCLR reads these when it starts (on the first LoadWorker). Set them now, while
            // the process still has one thread, whatever the supervisor passed.
            for (k, v) in RUNTIME_ENV {
                // SAFETY: setenv races only with concurrent environment readers; sandbox::enter
                // checked this process has a single thread, and nothing since started one.
                unsafe { std::env::set_var(k, v) };
            }
            if let Some(limit) = args.gc_heap_hard_limit {
                // CoreCLR reads COMPlus_ settings as hexadecimal.
                // SAFETY: as above (still one thread).
                unsafe { std::env::set_var("COMPlus_GCHeapHardLimit", format!("{limit:x}")) };
            }
            let config = DotNetConfig::from_env();
            let prestart = args.prestart;
            start_engine(&region, &report, kind, move |services, max_response| {
                let engine = DotNetEngine::new(config, services, max_response);
                if prestart {
                    // A standby host: CoreCLR and the bridge start now, off the respawn's
                    // critical path. A failure is only logged: the first load reports it.
                    match engine.start() {
                        Ok((_, took)) => {
                            log(&format!("prestarted .NET in {} ms", took.as_millis()))
                        }
                        Err(e) => log(&format!("cannot prestart .NET: {e}")),
                    }
                }
                engine
            })
        }
        #[cfg(feature = "python")]
        protocol::EngineKind::Python => {
            let config = crate::engine::python::PythonConfig {
                blocked_modules: args.python_blocked_modules.clone(),
            };
            start_engine(&region, &report, kind, |services, max_response| {
                crate::engine::python::PythonEngine::new(config, services, max_response)
            })
        }
        #[cfg(not(feature = "python"))]
        protocol::EngineKind::Python => exit::USAGE,
    };
    region.set_host_state(HostState::Exited);
    region.mark_closed(Side::Host);
    code
}

/// Builds the engine with `make(services, max_response_bytes)`, sends `Ready` and serves
/// frames until `Shutdown` or until the supervisor goes. Engine-neutral: each engine plugs in
/// its constructor.
pub fn start_engine<E: Engine>(
    region: &Arc<Region>,
    report: &sandbox::SandboxReport,
    kind: protocol::EngineKind,
    make: impl FnOnce(Arc<dyn HostServices>, usize) -> E,
) -> u8 {
    let (tx, rx) = ring::host_channels(region.clone());
    let services = Arc::new(RingServices::new(tx.clone()));
    let max_response = region.config().max_frame.saturating_sub(RESULT_OVERHEAD);
    let engine = Arc::new(make(services.clone(), max_response));
    let outbox = Arc::new(RingOutbox::new(tx.clone()));
    let workers = Workers::with_lanes(engine, outbox, region.clone());

    region.set_host_state(HostState::Ready);
    let ready = Message::Ready(protocol::Ready {
        pid: std::process::id() as i32,
        engine: kind,
        version: env!("CARGO_PKG_VERSION").to_string(),
        sandbox: report.joined(),
    });
    if let Err(e) = tx.send(&ready.encode(), SEND_TIMEOUT) {
        log(&format!("cannot send Ready: {e}"));
        return exit::PROTOCOL;
    }
    serve(rx, &tx, &services, &workers, region)
}

fn serve<E: Engine>(
    mut rx: ring::FrameReceiver,
    tx: &FrameSender,
    services: &RingServices,
    workers: &Arc<Workers<E, RingOutbox>>,
    region: &Region,
) -> u8 {
    rx.set_spin(crate::handoff::spin_budget());
    let mut buf = Vec::new();
    loop {
        match rx.recv(&mut buf, None) {
            Ok(()) => {}
            // The supervisor closed its side: it is going away (or it saw us as dead).
            Err(RingError::PeerGone) => return exit::OK,
            Err(e) => {
                log(&format!("ring receive failed: {e}"));
                return exit::PROTOCOL;
            }
        }
        let msg = match Message::decode(&buf) {
            Ok(m) => m,
            Err(e) => {
                log(&format!(
                    "ignoring an undecodable frame of {} bytes: {e}",
                    buf.len()
                ));
                continue;
            }
        };
        match msg {
            Message::LoadWorker(m) => workers.load(
                m.request_id,
                LoadSpec {
                    worker_id: m.worker_id,
                    package_dir: m.package_dir.into(),
                    library_path: m.library_path,
                    entry_point: m.entry_point,
                    free_result: m.free_result,
                    topic: m.topic,
                    config: m.config,
                    max_concurrency: m.max_concurrency.max(1),
                    timeout_ms: m.timeout_ms,
                },
                &m.lanes,
            ),
            Message::Process(m) => workers.process(m.msg_id, &m.worker_id, m.event),
            Message::UnloadWorker(m) => workers.unload(m.request_id, &m.worker_id),
            Message::GatewayReply(r) => services.deliver(r),
            Message::Ping { nonce } => send(tx, &Message::Pong { nonce }),
            Message::StatsRequest { request_id } => {
                let (rss_bytes, threads) = self_usage();
                send(
                    tx,
                    &Message::Stats(protocol::Stats {
                        request_id,
                        rss_bytes,
                        threads,
                        in_flight: workers.in_flight(),
                        workers: workers.count(),
                    }),
                );
            }
            Message::Shutdown { deadline_ms } => {
                region.set_host_state(HostState::Draining);
                if !workers.shutdown(Duration::from_millis(u64::from(deadline_ms))) {
                    log("shutdown deadline passed with calls still running; exiting anyway");
                    // A plugin is still running: exit() would run library destructors and
                    // atexit handlers under its feet. Leave without them.
                    region.set_host_state(HostState::Exited);
                    region.mark_closed(Side::Host);
                    // SAFETY: _exit ends the process at once; nothing is left to flush (stderr
                    // is unbuffered) and the region's state is already published.
                    unsafe { libc::_exit(i32::from(exit::OK)) };
                }
                return exit::OK;
            }
            other => log(&format!(
                "ignoring a frame the supervisor should not send: {}",
                other.kind()
            )),
        }
    }
}

fn send(tx: &FrameSender, m: &Message) {
    if let Err(e) = tx.send(&m.encode(), SEND_TIMEOUT) {
        log(&format!("cannot send {}: {e}", m.kind()));
    }
}

/// (resident bytes, threads) of this process, from /proc (allowed under the sandbox).
fn self_usage() -> (u64, u32) {
    // SAFETY: sysconf takes an integer only.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page);
    let threads = std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count() as u32);
    (rss, threads)
}

/// The crash handler's view of the region: the first free crash slot.
struct RegionSink(Arc<Region>);

impl CrashSink for RegionSink {
    fn record(
        &self,
        signal: i32,
        tid: i32,
        worker_id: &[u8],
        msg_id: u64,
        fault_addr: u64,
    ) -> bool {
        // crash_slots() is pointer arithmetic on the mapping; record() is atomics only.
        self.0
            .crash_slots()
            .iter()
            .any(|slot| slot.record(signal, tid, worker_id, msg_id, fault_addr))
    }
}
