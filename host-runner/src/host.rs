//! The host's life: arguments, ring, crash handler, sandbox, `Ready`, then the frame loop.
//!
//! `main.rs` calls [`main`]; everything it does is here so that the order of the start-up
//! steps reads top-down.

use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wm_shared::ring::{self, FrameSender, HostState, Region, RingError, Side};

use crate::crash::{self, CrashSink};
use crate::engine::dotnet::{DotNetConfig, DotNetEngine, RUNTIME_ENV};
use crate::engine::native::NativeEngine;
use crate::engine::{Engine, LoadSpec, ProcessOutcome};
use crate::exit;
use crate::ffi::callbacks::{GatewayFailure, HostServices};
use crate::sandbox::{self, SandboxConfig, SandboxError, log};
use crate::worker::{Outbox, Workers};
use wm_shared::protocol::{self, Message};

/// How long a frame send may wait for room in the ring before giving up.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of a `ProcessResult` frame besides the response (ids, strings, FlatBuffer overhead).
const RESULT_OVERHEAD: usize = 64 * 1024;

/// The command line: `host-runner --ring-fd 3 --engine native|dotnet --host-id <id>
/// [--rlimit-as <bytes>] [--rlimit-nofile <n>] [--uid <uid> --gid <gid>] [--no-seccomp]
/// [--no-landlock]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub ring_fd: RawFd,
    pub engine: String,
    pub host_id: String,
    pub rlimit_as: Option<u64>,
    pub rlimit_nofile: u64,
    pub seccomp: bool,
    pub landlock: bool,
    /// The unprivileged uid and gid to switch to (the supervisor passes them when it runs as
    /// root).
    pub ids: Option<(u32, u32)>,
}

/// A command line the host cannot run with.
#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    #[error(
        "missing {0}; the supervisor starts host-runner with --ring-fd 3 --engine <native|dotnet> --host-id <id>"
    )]
    Missing(&'static str),
    #[error("{flag} needs a value")]
    NoValue { flag: String },
    #[error("{flag} {value:?} is not a number")]
    NotANumber { flag: String, value: String },
    #[error("unknown argument {0:?}")]
    Unknown(String),
}

impl Args {
    /// Parses the arguments after the program name.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Args, ArgsError> {
        let mut it = args.into_iter();
        let (mut ring_fd, mut engine, mut host_id) = (None, None, None);
        let mut a = Args {
            ring_fd: 3,
            engine: String::new(),
            host_id: String::new(),
            rlimit_as: None,
            rlimit_nofile: sandbox::rlimits::DEFAULT_NOFILE,
            seccomp: true,
            landlock: true,
            ids: None,
        };
        let (mut uid, mut gid) = (None, None);
        while let Some(flag) = it.next() {
            let mut value = |flag: &str| {
                it.next().ok_or_else(|| ArgsError::NoValue {
                    flag: flag.to_string(),
                })
            };
            let number = |flag: &str, v: String| {
                v.parse::<u64>().map_err(|_| ArgsError::NotANumber {
                    flag: flag.to_string(),
                    value: v,
                })
            };
            match flag.as_str() {
                "--ring-fd" => {
                    let v = value(&flag)?;
                    ring_fd = Some(number(&flag, v)?);
                }
                "--engine" => engine = Some(value(&flag)?),
                "--host-id" => host_id = Some(value(&flag)?),
                "--rlimit-as" => {
                    let v = value(&flag)?;
                    a.rlimit_as = Some(number(&flag, v)?);
                }
                "--rlimit-nofile" => {
                    let v = value(&flag)?;
                    a.rlimit_nofile = number(&flag, v)?;
                }
                "--uid" => {
                    let v = value(&flag)?;
                    uid = Some(number(&flag, v)?);
                }
                "--gid" => {
                    let v = value(&flag)?;
                    gid = Some(number(&flag, v)?);
                }
                "--no-seccomp" => a.seccomp = false,
                "--no-landlock" => a.landlock = false,
                _ => return Err(ArgsError::Unknown(flag)),
            }
        }
        let fd = ring_fd.ok_or(ArgsError::Missing("--ring-fd"))?;
        a.ring_fd = RawFd::try_from(fd).map_err(|_| ArgsError::NotANumber {
            flag: "--ring-fd".into(),
            value: fd.to_string(),
        })?;
        a.engine = engine.ok_or(ArgsError::Missing("--engine"))?;
        a.host_id = host_id.ok_or(ArgsError::Missing("--host-id"))?;
        a.ids = match (uid, gid) {
            (None, None) => None,
            (Some(u), Some(g)) => {
                let id = |flag: &str, v: u64| {
                    u32::try_from(v).map_err(|_| ArgsError::NotANumber {
                        flag: flag.into(),
                        value: v.to_string(),
                    })
                };
                Some((id("--uid", u)?, id("--gid", g)?))
            }
            (None, Some(_)) => return Err(ArgsError::Missing("--uid (with --gid)")),
            (Some(_), None) => return Err(ArgsError::Missing("--gid (with --uid)")),
        };
        Ok(a)
    }
}

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
    let args = match Args::parse(argv) {
        Ok(a) => a,
        Err(e) => {
            log(&format!("{e}"));
            return exit::USAGE;
        }
    };
    let kind = match args.engine.as_str() {
        "native" => protocol::EngineKind::Native,
        "dotnet" => protocol::EngineKind::DotNet,
        other => {
            log(&format!(
                "engine {other:?} is not built into this host-runner (supported: native, dotnet)"
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
    let region = match Region::open(fd) {
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
        rlimit_nofile: args.rlimit_nofile,
        rlimit_as: args.rlimit_as,
        seccomp: args.seccomp,
        profile: match kind {
            protocol::EngineKind::DotNet => sandbox::seccomp::Profile::DotNet,
            _ => sandbox::seccomp::Profile::Native,
        },
        landlock: args.landlock,
        ids: args.ids,
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
            let config = DotNetConfig::from_env();
            start_engine(&region, &report, kind, |services, max_response| {
                DotNetEngine::new(config, services, max_response)
            })
        }
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
    let services = Arc::new(RingServices {
        tx: tx.clone(),
        pending: Mutex::new(HashMap::new()),
        next_call: AtomicU64::new(1),
    });
    let max_response = region.config().max_frame.saturating_sub(RESULT_OVERHEAD);
    let engine = Arc::new(make(services.clone(), max_response));
    let outbox = Arc::new(RingOutbox { tx: tx.clone() });
    let workers = Workers::new(engine, outbox);

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

/// Results to the supervisor.
struct RingOutbox {
    tx: FrameSender,
}

impl Outbox for RingOutbox {
    fn load_result(&self, request_id: u64, worker_id: &str, result: Result<(), String>) {
        let (ok, error) = match result {
            Ok(()) => (true, String::new()),
            Err(e) => (false, e),
        };
        send(
            &self.tx,
            &Message::LoadResult(protocol::LoadResult {
                request_id,
                worker_id: worker_id.into(),
                ok,
                error,
            }),
        );
    }

    fn unload_result(&self, request_id: u64, worker_id: &str, result: Result<(), String>) {
        let (ok, error) = match result {
            Ok(()) => (true, String::new()),
            Err(e) => (false, e),
        };
        send(
            &self.tx,
            &Message::UnloadResult(protocol::UnloadResult {
                request_id,
                worker_id: worker_id.into(),
                ok,
                error,
            }),
        );
    }

    fn process_result(&self, msg_id: u64, worker_id: &str, o: ProcessOutcome) {
        let status = status_of(o.status);
        let frame = Message::ProcessResult(protocol::ProcessResult {
            msg_id,
            worker_id: worker_id.into(),
            status,
            code: o.code,
            response: o.response,
            error: o.error,
            elapsed_ns: o.elapsed_ns,
        });
        match self.tx.send(&frame.encode(), SEND_TIMEOUT) {
            Ok(()) => {}
            // The response was checked against the frame limit, but a long error text or worker
            // id could still push the frame over: answer without the payload.
            Err(RingError::TooLarge { .. }) => send(
                &self.tx,
                &Message::ProcessResult(protocol::ProcessResult {
                    msg_id,
                    worker_id: worker_id.into(),
                    status: protocol::ResultStatus::InvalidResponse,
                    error: "the reply frame exceeds the ring's frame limit".into(),
                    elapsed_ns: o.elapsed_ns,
                    ..Default::default()
                }),
            ),
            Err(e) => log(&format!("cannot send the result of message {msg_id}: {e}")),
        }
    }
}

fn status_of(s: crate::engine::ResultStatus) -> protocol::ResultStatus {
    use crate::engine::ResultStatus as E;
    match s {
        E::Ok => protocol::ResultStatus::Ok,
        E::NoReply => protocol::ResultStatus::NoReply,
        E::ProcessFailed => protocol::ResultStatus::ProcessFailed,
        E::InvalidResponse => protocol::ResultStatus::InvalidResponse,
        E::WorkerException => protocol::ResultStatus::WorkerException,
        E::UnknownWorker => protocol::ResultStatus::UnknownWorker,
    }
}

/// The callbacks' traffic: `Log` frames, and `GatewayCall`s matched to their replies.
struct RingServices {
    tx: FrameSender,
    pending: Mutex<HashMap<u64, SyncSender<protocol::GatewayReply>>>,
    next_call: AtomicU64,
}

impl RingServices {
    /// Hands a `GatewayReply` to the call waiting for it; a late reply (after a timeout) is
    /// dropped.
    fn deliver(&self, reply: protocol::GatewayReply) {
        let waiter = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&reply.call_id);
        match waiter {
            Some(w) => {
                let _ = w.try_send(reply);
            }
            None => log(&format!(
                "dropping a GatewayReply for call {} (timed out or unknown)",
                reply.call_id
            )),
        }
    }
}

impl HostServices for RingServices {
    fn log(&self, worker_id: &str, msg_id: u64, level: i32, message: &str) {
        send(
            &self.tx,
            &Message::Log(protocol::Log {
                worker_id: worker_id.into(),
                msg_id,
                level,
                message: message.into(),
            }),
        );
    }

    fn gateway_call(
        &self,
        worker_id: &str,
        msg_id: u64,
        service: &str,
        method: &str,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, GatewayFailure> {
        let call_id = self.next_call.fetch_add(1, Ordering::Relaxed);
        let (wake, wait) = sync_channel(1);
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(call_id, wake);
        let forget = || {
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&call_id);
        };
        let call = Message::GatewayCall(protocol::GatewayCall {
            call_id,
            worker_id: worker_id.into(),
            msg_id,
            service: service.into(),
            method: method.into(),
            payload: payload.to_vec(),
        });
        if let Err(e) = self.tx.send(&call.encode(), timeout.min(SEND_TIMEOUT)) {
            forget();
            log(&format!("gateway call {call_id} not sent: {e}"));
            return Err(GatewayFailure::Unavailable);
        }
        match wait.recv_timeout(timeout) {
            Ok(r) if r.status == 0 => Ok(r.payload),
            Ok(r) => Err(GatewayFailure::Status(r.status)),
            Err(_) => {
                forget();
                Err(GatewayFailure::Timeout)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Args, ArgsError> {
        Args::parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn the_supervisor_command_line_parses() {
        let a = parse("--ring-fd 3 --engine native --host-id h1 --rlimit-as 1000 --no-landlock")
            .expect("parses");
        assert_eq!(a.ring_fd, 3);
        assert_eq!(a.engine, "native");
        assert_eq!(a.host_id, "h1");
        assert_eq!(a.rlimit_as, Some(1000));
        assert!(a.seccomp && !a.landlock);
    }

    #[test]
    fn bad_command_lines_say_what_is_wrong() {
        assert!(matches!(
            parse("--engine native --host-id h"),
            Err(ArgsError::Missing("--ring-fd"))
        ));
        assert!(matches!(
            parse("--ring-fd x"),
            Err(ArgsError::NotANumber { .. })
        ));
        assert!(matches!(
            parse("--ring-fd 3 --bogus"),
            Err(ArgsError::Unknown(_))
        ));
        assert!(matches!(parse("--ring-fd"), Err(ArgsError::NoValue { .. })));
    }
}
