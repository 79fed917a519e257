//! The real `host-runner` binary driven through a real ring, the test acting as a minimal
//! supervisor: spawn (fork+exec, ring memfd at fd 3), Ready, LoadWorker, Process, and the exact
//! outcome the supervisor will see (frame, status, wait status, crash slot).

use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wm_shared::protocol::{self, Message, ResultStatus};
use wm_shared::ring::{
    self, CrashRecord, FrameSender, HostState, MultiReceiver, Region, RingConfig, Side, Source,
};

use crate::util::*;

/// Every wait in these tests is bounded by this watchdog.
const WATCHDOG: Duration = Duration::from_secs(20);

pub(crate) static NEXT: AtomicU64 = AtomicU64::new(1);

/// A running host-runner and the supervisor's ends of its ring.
pub struct Host {
    child: Child,
    region: Arc<Region>,
    tx: FrameSender,
    /// The supervisor's ends of the region's lanes (to-host).
    pub lanes: Vec<FrameSender>,
    rx: MultiReceiver,
    /// Frames received but not yet asked for.
    backlog: Vec<Message>,
    /// The ring each `ProcessResult` came on, by message id.
    pub result_sources: std::collections::HashMap<u64, Source>,
    pub stderr: Arc<Mutex<Vec<String>>>,
    pub ready: protocol::Ready,
}

impl Host {
    /// Spawns the binary as the supervisor's pool does, and waits for `Ready`.
    pub fn spawn(extra: &[&str]) -> Host {
        Host::spawn_engine("native", extra, &[])
    }

    /// As [`Host::spawn`] with another engine and extra environment variables.
    pub fn spawn_engine(engine: &str, extra: &[&str], envs: &[(&str, &str)]) -> Host {
        Host::spawn_wrapped(&[], engine, extra, envs)
    }

    /// As [`Host::spawn_engine`], run through `wrapper` (a program and its arguments, such as
    /// `valgrind --tool=callgrind`; empty: the binary itself).
    pub fn spawn_wrapped(
        wrapper: &[&str],
        engine: &str,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Host {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let region = Arc::new(
            Region::create(
                &format!("test-host-{n}"),
                &RingConfig {
                    ring_bytes: 1 << 20,
                    max_frame: 256 << 10,
                    ..RingConfig::default()
                },
            )
            .expect("region"),
        );
        let ring_fd = region.as_fd().as_raw_fd();
        let bin = env!("CARGO_BIN_EXE_host-runner");
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(["--ring-fd", "3", "--engine", engine, "--host-id"])
            .arg(format!("h{n}"))
            .args(extra)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("SECRET_TOKEN", "must-not-leak")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: runs in the forked child before exec: dup2 and fcntl are async-signal-safe
        // and touch only the fd table; ring_fd is open in the parent (the Region owns it).
        unsafe {
            cmd.pre_exec(move || {
                if ring_fd != 3 && libc::dup2(ring_fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // dup2 onto itself keeps CLOEXEC: clear it explicitly.
                if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // A stray inherited fd the sandbox must close.
                libc::dup2(3, 9);
                libc::fcntl(9, libc::F_SETFD, 0);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("spawn host-runner");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let pipe = child.stderr.take().expect("stderr pipe");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let (tx, lanes, rx) = ring::supervisor_lanes(region.clone());
        let mut host = Host {
            child,
            region,
            tx,
            lanes,
            rx,
            backlog: Vec::new(),
            result_sources: Default::default(),
            stderr,
            ready: protocol::Ready::default(),
        };
        match host.next() {
            Message::Ready(r) => host.ready = r,
            other => panic!("expected Ready, got {other:?}"),
        }
        assert_eq!(host.region.host_state(), HostState::Ready);
        host
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn send(&self, m: Message) {
        self.tx
            .send(&m.encode(), Duration::from_secs(5))
            .expect("send to host");
    }

    fn recv_raw(&mut self, deadline: Instant) -> Option<Message> {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut buf = Vec::new();
        match self.rx.recv(&mut buf, Some(left)) {
            Ok(source) => {
                let m = Message::decode(&buf).expect("host frames decode");
                if let Message::ProcessResult(r) = &m {
                    self.result_sources.insert(r.msg_id, source);
                }
                Some(m)
            }
            Err(_) => None,
        }
    }

    /// The next frame (from the backlog first), or panic after the watchdog.
    pub fn next(&mut self) -> Message {
        if !self.backlog.is_empty() {
            return self.backlog.remove(0);
        }
        let deadline = Instant::now() + WATCHDOG;
        self.recv_raw(deadline).unwrap_or_else(|| {
            panic!(
                "no frame from the host within {WATCHDOG:?}; stderr: {:?}",
                self.stderr.lock().unwrap()
            )
        })
    }

    /// Waits for the first frame matching `pick`, keeping the others in the backlog.
    pub fn wait_for<T>(&mut self, what: &str, mut pick: impl FnMut(&Message) -> Option<T>) -> T {
        if let Some(i) = self.backlog.iter().position(|m| pick(m).is_some()) {
            let m = self.backlog.remove(i);
            return pick(&m).expect("matched");
        }
        let deadline = Instant::now() + WATCHDOG;
        loop {
            let m = self.recv_raw(deadline).unwrap_or_else(|| {
                panic!(
                    "no {what} within {WATCHDOG:?}; got {:?}; stderr: {:?}",
                    self.backlog,
                    self.stderr.lock().unwrap()
                )
            });
            if let Some(t) = pick(&m) {
                return t;
            }
            self.backlog.push(m);
        }
    }

    /// Whether a frame matching `pick` arrives within `d` (for "nothing arrives" checks).
    pub fn arrives_within(&mut self, d: Duration, mut pick: impl FnMut(&Message) -> bool) -> bool {
        if self.backlog.iter().any(&mut pick) {
            return true;
        }
        let deadline = Instant::now() + d;
        while let Some(m) = self.recv_raw(deadline) {
            let hit = pick(&m);
            self.backlog.push(m);
            if hit {
                return true;
            }
        }
        false
    }

    pub fn load(&mut self, worker_id: &str, so: &Path) -> protocol::LoadResult {
        let s = spec(worker_id, so);
        self.load_with(protocol::LoadWorker {
            request_id: NEXT.fetch_add(1, Ordering::Relaxed),
            worker_id: s.worker_id,
            package_dir: s.package_dir.to_string_lossy().into_owned(),
            library_path: s.library_path,
            entry_point: s.entry_point,
            free_result: s.free_result,
            topic: s.topic,
            max_concurrency: 1,
            timeout_ms: 2000,
            ..Default::default()
        })
    }

    pub fn load_with(&mut self, lw: protocol::LoadWorker) -> protocol::LoadResult {
        let id = lw.request_id;
        self.send(Message::LoadWorker(lw));
        self.wait_for("LoadResult", |m| match m {
            Message::LoadResult(r) if r.request_id == id => Some(r.clone()),
            _ => None,
        })
    }

    /// Loads `worker_id` with `threads` threads, thread i serving `lanes[i]`.
    pub fn load_lanes(
        &mut self,
        worker_id: &str,
        so: &Path,
        threads: u32,
        lanes: &[u32],
    ) -> protocol::LoadResult {
        let s = spec(worker_id, so);
        self.load_with(protocol::LoadWorker {
            request_id: NEXT.fetch_add(1, Ordering::Relaxed),
            worker_id: s.worker_id,
            package_dir: s.package_dir.to_string_lossy().into_owned(),
            library_path: s.library_path,
            entry_point: s.entry_point,
            free_result: s.free_result,
            topic: s.topic,
            max_concurrency: threads,
            timeout_ms: 2000,
            lanes: lanes.to_vec(),
            ..Default::default()
        })
    }

    /// Sends a `Process` into lane `lane` (as the supervisor's link does for a worker with
    /// lanes).
    pub fn process_on(&self, lane: usize, msg_id: u64, worker_id: &str, ty: &str, data: &[u8]) {
        let m = Message::Process(protocol::Process {
            msg_id,
            worker_id: worker_id.into(),
            event: event(ty, data),
        });
        self.lanes[lane]
            .send(&m.encode(), Duration::from_secs(5))
            .expect("send into the lane");
    }

    pub fn process(&self, msg_id: u64, worker_id: &str, ty: &str, data: &[u8]) {
        self.send(Message::Process(protocol::Process {
            msg_id,
            worker_id: worker_id.into(),
            event: event(ty, data),
        }));
    }

    pub fn result(&mut self, msg_id: u64) -> protocol::ProcessResult {
        self.wait_for("ProcessResult", |m| match m {
            Message::ProcessResult(r) if r.msg_id == msg_id => Some(r.clone()),
            _ => None,
        })
    }

    /// Process and wait for the result.
    pub fn call(
        &mut self,
        msg_id: u64,
        worker_id: &str,
        ty: &str,
        data: &[u8],
    ) -> protocol::ProcessResult {
        self.process(msg_id, worker_id, ty, data);
        self.result(msg_id)
    }

    pub fn ping(&mut self, nonce: u64) {
        self.send(Message::Ping { nonce });
        self.wait_for("Pong", |m| match m {
            Message::Pong { nonce: n } if *n == nonce => Some(()),
            _ => None,
        });
    }

    /// Log frames received so far (from the backlog; they are consumed).
    pub fn logs(&mut self) -> Vec<protocol::Log> {
        let (logs, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.backlog)
            .into_iter()
            .partition(|m| matches!(m, Message::Log(_)));
        self.backlog = rest;
        logs.into_iter()
            .filter_map(|m| match m {
                Message::Log(l) => Some(l),
                _ => None,
            })
            .collect()
    }

    /// Waits (bounded) for the child to exit, as the pool's waitpid does.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WATCHDOG;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let mut buf = Vec::new();
                let mut frames = Vec::new();
                while self.rx.try_recv(&mut buf).ok().flatten().is_some() {
                    frames.push(
                        Message::decode(&buf)
                            .map(|m| format!("{m:?}"))
                            .unwrap_or_default(),
                    );
                }
                panic!(
                    "host did not exit within {WATCHDOG:?}; frames {:?} {frames:?}; stderr {:?}",
                    self.backlog,
                    self.stderr.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The first crash record in the region.
    pub fn crash(&self) -> Option<CrashRecord> {
        self.region.crash_slots().iter().find_map(|s| s.read())
    }

    pub fn kill(&mut self) -> ExitStatus {
        let _ = self.child.kill();
        self.wait_exit()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub(crate) fn data_of(r: &protocol::ProcessResult) -> String {
    let ev = response(&r.response).result_event.expect("result event");
    String::from_utf8_lossy(ev.data.as_deref().unwrap_or_default()).into_owned()
}

#[test]
fn ready_reports_the_sandbox_steps_and_shutdown_exits_zero() {
    let mut h = Host::spawn(&[]);
    let steps: Vec<&str> = h.ready.sandbox.split(',').collect();
    assert_eq!(h.ready.pid, h.pid());
    assert_eq!(h.ready.engine, protocol::EngineKind::Native);
    // The mandatory steps, in order; landlock and netns are best effort (kernel permitting).
    let mandatory: Vec<&str> = steps
        .iter()
        .copied()
        .filter(|s| !(*s == "netns" || s.starts_with("landlock")))
        .collect();
    assert_eq!(
        mandatory,
        [
            "fds",
            "env",
            "rlimits",
            "pdeathsig",
            "caps",
            "no_new_privs",
            "seccomp:native"
        ],
        "{}",
        h.ready.sandbox
    );
    assert_eq!(steps.last(), Some(&"seccomp:native"));
    h.send(Message::Shutdown { deadline_ms: 1000 });
    let st = h.wait_exit();
    assert_eq!(st.code(), Some(0), "{st:?}");
    assert_eq!(h.region.host_state(), HostState::Exited);
    assert!(h.region.is_closed(Side::Host));
}

#[test]
fn echo_over_the_ring_with_a_clean_environment_and_no_stray_fds() {
    let mut h = Host::spawn(&[]);
    let r = h.load("echo", &worker_c());
    assert!(r.ok, "{r:?}");
    let res = h.call(1, "echo", "echo", b"ping");
    assert_eq!(res.status, ResultStatus::Ok, "{res:?}");
    assert_eq!(res.worker_id, "echo");
    assert!(res.elapsed_ns > 0);
    let ev = response(&res.response).result_event.expect("event");
    assert_eq!(ev.data.as_deref(), Some(&b"ping"[..]));
    assert_eq!(ev.extension("correlationid"), Some("corr-9"));
    assert_eq!(ev.extension("loadworker"), Some("echo"));
    assert_eq!(ev.extension("loadtopic"), Some("topic.echo"));
    // Restored after the load.
    assert_eq!(ev.extension("envnow"), Some("(unset)"));

    let env = data_of(&h.call(2, "echo", "env", b""));
    let mut names: Vec<&str> = env.split(';').collect();
    names.sort();
    assert_eq!(
        names,
        [
            "COMPlus_EnableDiagnostics",
            "DOTNET_EnableDiagnostics",
            "PATH"
        ],
        "SECRET_TOKEN must be gone"
    );

    // 0-2, the ring (3), the library's memfd, and the listing's own directory fd; fd 9,
    // inherited without CLOEXEC, is gone.
    let fds = data_of(&h.call(3, "echo", "fds", b""));
    let fds: Vec<i32> = fds.split(' ').filter_map(|f| f.parse().ok()).collect();
    assert!(fds.starts_with(&[0, 1, 2, 3]), "{fds:?}");
    assert!(!fds.contains(&9), "{fds:?}");
    assert_eq!(fds.len(), 6, "{fds:?}");
}

#[test]
fn logs_travel_as_frames_with_worker_and_message() {
    let mut h = Host::spawn(&[]);
    assert!(h.load("logger", &worker_c()).ok);
    let res = h.call(41, "logger", "log", b"");
    assert_eq!(res.status, ResultStatus::InvalidResponse);
    let logs = h.logs();
    let got: Vec<(i32, &str)> = logs.iter().map(|l| (l.level, l.message.as_str())).collect();
    assert_eq!(
        got,
        [
            (0, "level 0 from logger"),
            (1, "level 1 from logger"),
            (2, "level 2 from logger"),
            (3, "level 3 from logger"),
            (4, "level 4 from logger"),
            (2, "via host pointer"),
        ]
    );
    assert!(
        logs.iter()
            .all(|l| l.worker_id == "logger" && l.msg_id == 41)
    );
}

#[test]
fn gateway_calls_round_trip_and_time_out() {
    let mut h = Host::spawn(&[]);
    let lw = protocol::LoadWorker {
        request_id: 1,
        worker_id: "gw".into(),
        package_dir: worker_c().parent().unwrap().to_string_lossy().into_owned(),
        library_path: "libworker.so".into(),
        entry_point: "Process".into(),
        free_result: "FreeResult".into(),
        topic: "t".into(),
        max_concurrency: 1,
        timeout_ms: 300,
        ..Default::default()
    };
    assert!(h.load_with(lw).ok);
    h.process(7, "gw", "gateway", b"42");
    let call = h.wait_for("GatewayCall", |m| match m {
        Message::GatewayCall(c) => Some(c.clone()),
        _ => None,
    });
    assert_eq!(
        (
            call.worker_id.as_str(),
            call.msg_id,
            call.service.as_str(),
            call.method.as_str()
        ),
        ("gw", 7, "billing", "charge")
    );
    assert_eq!(call.payload, b"42");
    h.send(Message::GatewayReply(protocol::GatewayReply {
        call_id: call.call_id,
        status: 0,
        payload: b"paid".to_vec(),
        error: String::new(),
    }));
    let res = h.result(7);
    assert_eq!(data_of(&res), "rc=0 len=4 body=paid");

    // No reply: the plugin gets -2 after the worker's timeout (300 ms), not before.
    let started = Instant::now();
    h.process(8, "gw", "gateway", b"x");
    let res = h.result(8);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(data_of(&res), "rc=-2 len=0 body=");

    // A non-zero status reaches the plugin as its return value.
    h.process(9, "gw", "gateway", b"y");
    let call = h.wait_for("GatewayCall", |m| match m {
        Message::GatewayCall(c) if c.msg_id == 9 => Some(c.clone()),
        _ => None,
    });
    h.send(Message::GatewayReply(protocol::GatewayReply {
        call_id: call.call_id,
        status: 503,
        payload: Vec::new(),
        error: "down".into(),
    }));
    assert_eq!(data_of(&h.result(9)), "rc=503 len=0 body=");
}

#[test]
fn reply_shapes_reach_the_supervisor_with_their_status_and_free_result_runs_once() {
    let mut h = Host::spawn(&[]);
    assert!(h.load("shapes", &worker_c()).ok);
    let cases: &[(&str, ResultStatus, i32)] = &[
        ("nonzero", ResultStatus::ProcessFailed, 7),
        ("nonzero-null", ResultStatus::ProcessFailed, 5),
        ("neglen", ResultStatus::InvalidResponse, 0),
        ("garbage", ResultStatus::InvalidResponse, 0),
        ("huge", ResultStatus::InvalidResponse, 0),
        ("nothing", ResultStatus::InvalidResponse, 0),
        ("both", ResultStatus::Ok, 0),
        ("echo", ResultStatus::Ok, 0),
    ];
    for (i, (ty, status, code)) in cases.iter().enumerate() {
        let r = h.call(100 + i as u64, "shapes", ty, b"d");
        assert_eq!((r.status, r.code), (*status, *code), "{ty}: {r:?}");
        if *status == ResultStatus::Ok {
            WorkerResponseCheck::verify(&r.response);
        } else {
            assert!(r.response.is_empty(), "{ty}");
        }
    }
    let both = h.call(200, "shapes", "both", b"d");
    let resp = response(&both.response);
    assert!(resp.result_event.is_some());
    assert_eq!(resp.error_message.as_deref(), Some("partial failure"));

    h.call(201, "shapes", "count", b"");
    let line = h.logs().last().expect("count log").message.clone();
    // Buffers: nonzero, neglen, garbage, huge, both, echo, both = 7; each freed once.
    assert_eq!(line, "frees=7 buffers=7 calls=10");
}

/// What the supervisor does with a host-verified response: verify it again after copying.
struct WorkerResponseCheck;
impl WorkerResponseCheck {
    fn verify(bytes: &[u8]) {
        wm_shared::WorkerResponse::from_flatbuffer(bytes).expect("verifies on the supervisor side");
    }
}

#[test]
fn a_forbidden_syscall_ends_the_host_and_the_crash_slot_names_it_and_the_worker() {
    // The fixture's "syscalls" call tries socket() first: the allow-list traps it.
    let (st, rec, _h) = crash_with("syscalls", &[]);
    assert_eq!(st.signal(), Some(libc::SIGSYS), "{st:?}");
    let rec = rec.expect("crash slot written");
    assert_eq!(
        (rec.signal, rec.worker_id.as_str(), rec.msg_id),
        (libc::SIGSYS, "victim", 4242)
    );
    assert_eq!(
        rec.forbidden_syscall(),
        Some(libc::SYS_socket as i32),
        "{rec:?}"
    );
    assert_eq!(rec.forbidden_syscall_name().as_deref(), Some("socket"));
}

/// Loads `worker`, sends one call of `ty`, and returns how the host died plus its crash slot.
fn crash_with(ty: &str, extra: &[&str]) -> (ExitStatus, Option<CrashRecord>, Host) {
    let mut h = Host::spawn(extra);
    assert!(h.load("victim", &worker_c()).ok);
    // A bystander worker with a call that completes, to show whose call is recorded.
    assert!(h.load("bystander", &worker_c()).ok);
    assert_eq!(h.call(1, "bystander", "echo", b"").status, ResultStatus::Ok);
    h.process(4242, "victim", ty, b"");
    let st = h.wait_exit();
    let rec = h.crash();
    (st, rec, h)
}

/// Calls queued behind a slow one reach the worker thread as one batch; a crash in the middle
/// of the batch is recorded for its own message, the calls before it were answered, and the
/// ones after it never ran (the supervisor requeues them as bystanders).
#[test]
fn a_crash_mid_batch_names_its_own_message_and_the_rest_never_ran() {
    let mut h = Host::spawn(&[]);
    assert!(h.load("victim", &worker_c()).ok);
    h.process(10, "victim", "sleep", b"200");
    h.process(11, "victim", "echo", b"");
    h.process(12, "victim", "segfault", b"");
    h.process(13, "victim", "echo", b"");
    h.process(14, "victim", "echo", b"");
    let st = h.wait_exit();
    assert_eq!(st.signal(), Some(libc::SIGSEGV), "{st:?}");
    let rec = h.crash().expect("crash slot written");
    assert_eq!((rec.worker_id.as_str(), rec.msg_id), ("victim", 12));
    let mut answered: Vec<u64> = h
        .backlog
        .drain(..)
        .filter_map(|m| match m {
            Message::ProcessResult(r) => Some(r.msg_id),
            _ => None,
        })
        .collect();
    while let Some(m) = h.recv_raw(Instant::now() + Duration::from_millis(200)) {
        if let Message::ProcessResult(r) = m {
            answered.push(r.msg_id);
        }
    }
    assert_eq!(answered, [10, 11], "answered before the crash");
}

#[test]
fn a_segfault_kills_the_host_with_sigsegv_and_names_the_culprit() {
    let (st, rec, h) = crash_with("segfault", &[]);
    assert_eq!(st.signal(), Some(libc::SIGSEGV), "{st:?}");
    let rec = rec.expect("crash slot written");
    assert_eq!(rec.signal, libc::SIGSEGV);
    assert_eq!(rec.worker_id, "victim");
    assert_eq!(rec.msg_id, 4242);
    assert_eq!(rec.fault_addr, 16);
    assert!(
        rec.tid > 0 && rec.tid != h.pid(),
        "a worker thread, not main: {rec:?}"
    );
}

#[test]
fn abort_is_recorded_as_sigabrt() {
    let (st, rec, _h) = crash_with("abort", &[]);
    assert_eq!(st.signal(), Some(libc::SIGABRT), "{st:?}");
    let rec = rec.expect("crash slot written");
    assert_eq!(
        (rec.signal, rec.worker_id.as_str(), rec.msg_id),
        (libc::SIGABRT, "victim", 4242)
    );
}

#[test]
fn a_stack_overflow_is_caught_on_the_alternate_stack() {
    let (st, rec, _h) = crash_with("stack", &[]);
    assert_eq!(st.signal(), Some(libc::SIGSEGV), "{st:?}");
    let rec = rec.expect("crash slot written despite the exhausted stack");
    assert_eq!(
        (rec.signal, rec.worker_id.as_str(), rec.msg_id),
        (libc::SIGSEGV, "victim", 4242)
    );
}

#[test]
fn an_x32_syscall_kills_the_host_with_sigsys_and_is_recorded() {
    let (st, rec, _h) = crash_with("x32", &[]);
    assert_eq!(st.signal(), Some(libc::SIGSYS), "{st:?}");
    let rec = rec.expect("crash slot written");
    assert_eq!(
        (rec.signal, rec.worker_id.as_str(), rec.msg_id),
        (libc::SIGSYS, "victim", 4242)
    );
}

#[test]
fn exit_from_a_plugin_is_an_exit_code_with_a_signal_zero_record() {
    let (st, rec, _h) = crash_with("exit3", &[]);
    assert_eq!(st.code(), Some(3), "{st:?}");
    let rec = rec.expect("exit during a call is recorded");
    assert_eq!(
        (rec.signal, rec.worker_id.as_str(), rec.msg_id),
        (0, "victim", 4242)
    );
}

#[test]
fn malloc_fails_under_rlimit_as_and_the_host_survives() {
    let limit = (384u64 << 20).to_string();
    let mut h = Host::spawn(&["--rlimit-as", &limit]);
    assert!(h.load("hog", &worker_c()).ok);
    let r = h.call(1, "hog", "oom", b"");
    assert_eq!(
        (r.status, r.code),
        (ResultStatus::ProcessFailed, libc::ENOMEM),
        "{r:?}"
    );
    let warn = h
        .logs()
        .into_iter()
        .find(|l| l.level == 3)
        .expect("warn log");
    assert!(warn.message.starts_with("malloc failed after"), "{warn:?}");
    h.ping(1);
    assert_eq!(h.call(2, "hog", "echo", b"").status, ResultStatus::Ok);
}

#[test]
fn a_hung_plugin_blocks_only_its_own_worker_until_the_supervisor_kills_the_host() {
    let mut h = Host::spawn(&[]);
    assert!(h.load("hung", &worker_c()).ok);
    assert!(h.load("fine", &worker_c()).ok);
    h.process(1, "hung", "loop", b"");
    assert!(!h.arrives_within(Duration::from_millis(300), |m| matches!(
        m,
        Message::ProcessResult(r) if r.msg_id == 1
    )));
    // The reader and the other worker still answer.
    h.ping(9);
    assert_eq!(h.call(2, "fine", "echo", b"").status, ResultStatus::Ok);
    // The supervisor's grace period ends: SIGKILL, no crash record.
    let st = h.kill();
    assert_eq!(st.signal(), Some(libc::SIGKILL));
    assert_eq!(h.crash(), None);
}

#[test]
fn unknown_workers_missing_exports_and_unload() {
    let mut h = Host::spawn(&[]);
    let r = h.call(1, "nobody", "echo", b"");
    assert_eq!(r.status, ResultStatus::UnknownWorker);

    let custom = worker_c_custom();
    let r = h.load("custom", &custom);
    assert!(!r.ok);
    assert!(
        r.error.contains("\"Process\"") && r.error.contains("virtufinEntryPoint"),
        "{}",
        r.error
    );
    assert_eq!(
        h.call(2, "custom", "echo", b"").status,
        ResultStatus::UnknownWorker
    );
    // The same library with the names its nuspec would declare.
    let r = h.load_with(protocol::LoadWorker {
        request_id: 5,
        worker_id: "custom".into(),
        package_dir: custom.parent().unwrap().to_string_lossy().into_owned(),
        library_path: "libworker.so".into(),
        entry_point: "HandleEvent".into(),
        free_result: "Release".into(),
        max_concurrency: 1,
        timeout_ms: 1000,
        ..Default::default()
    });
    assert!(r.ok, "{r:?}");
    assert_eq!(h.call(20, "custom", "echo", b"").status, ResultStatus::Ok);
    h.call(21, "custom", "count", b"");
    let line = h.logs().last().expect("count log").message.clone();
    assert_eq!(
        line, "frees=1 buffers=1 calls=2",
        "Release is the free function that ran"
    );

    assert!(h.load("w", &worker_c()).ok);
    assert_eq!(h.call(3, "w", "echo", b"").status, ResultStatus::Ok);
    h.send(Message::UnloadWorker(protocol::UnloadWorker {
        request_id: 77,
        worker_id: "w".into(),
    }));
    let u = h.wait_for("UnloadResult", |m| match m {
        Message::UnloadResult(u) if u.request_id == 77 => Some(u.clone()),
        _ => None,
    });
    assert!(u.ok, "{u:?}");
    assert_eq!(
        h.call(4, "w", "echo", b"").status,
        ResultStatus::UnknownWorker
    );
    h.send(Message::UnloadWorker(protocol::UnloadWorker {
        request_id: 78,
        worker_id: "w".into(),
    }));
    let u = h.wait_for("UnloadResult", |m| match m {
        Message::UnloadResult(u) if u.request_id == 78 => Some(u.clone()),
        _ => None,
    });
    assert!(!u.ok && u.error.contains("not loaded"), "{u:?}");
}

#[test]
fn stats_report_workers_threads_and_memory() {
    let mut h = Host::spawn(&[]);
    assert!(h.load("a", &worker_c()).ok);
    assert!(h.load("b", &echo_cpp()).ok);
    h.send(Message::StatsRequest { request_id: 3 });
    let s = h.wait_for("Stats", |m| match m {
        Message::Stats(s) => Some(s.clone()),
        _ => None,
    });
    assert_eq!(s.request_id, 3);
    assert_eq!(s.workers, 2);
    assert_eq!(s.in_flight, 0);
    assert!(s.threads >= 3, "main + one per worker: {s:?}");
    assert!(s.rss_bytes > 1 << 20, "{s:?}");
    let r = h.call(1, "b", "anything", b"cpp");
    assert_eq!(r.status, ResultStatus::Ok, "{r:?}");
    let ev = response(&r.response).result_event.expect("event");
    assert_eq!(ev.extension("lang"), Some("cpp"));
}

#[test]
fn per_worker_order_with_one_thread_and_overlap_with_max_concurrency() {
    let mut h = Host::spawn(&[]);
    let dir = worker_c().parent().unwrap().to_string_lossy().into_owned();
    let lw = |id: &str, request_id, max_concurrency| protocol::LoadWorker {
        request_id,
        worker_id: id.into(),
        package_dir: dir.clone(),
        library_path: "libworker.so".into(),
        topic: "t".into(),
        max_concurrency,
        timeout_ms: 2000,
        ..Default::default()
    };
    assert!(h.load_with(lw("serial", 1, 1)).ok);
    assert!(h.load_with(lw("parallel", 2, 2)).ok);
    let order = |h: &mut Host, worker: &str, base: u64| {
        h.process(base, worker, "sleep", b"1000");
        h.process(base + 1, worker, "echo", b"");
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let id = h.wait_for("ProcessResult", |m| match m {
                Message::ProcessResult(r) if r.msg_id == base || r.msg_id == base + 1 => {
                    Some(r.msg_id)
                }
                _ => None,
            });
            seen.push(id - base);
        }
        seen
    };
    assert_eq!(
        order(&mut h, "serial", 10),
        [0, 1],
        "one thread keeps the order"
    );
    assert_eq!(
        order(&mut h, "parallel", 20),
        [1, 0],
        "two threads let the echo pass"
    );
}

#[test]
fn hot_reload_loads_beside_the_old_version_and_the_in_flight_call_finishes_on_it() {
    // Build both first: a compile must not sit between the slow call and the reload.
    let (v1, v2) = (worker_c_version(1), worker_c_version(2));
    let mut h = Host::spawn(&[]);
    assert!(h.load("hot", &v1).ok);
    assert_eq!(data_of(&h.call(1, "hot", "version", b"")), "1");
    // A slow call in flight on version 1...
    h.process(2, "hot", "sleep", b"1500");
    std::thread::sleep(Duration::from_millis(100));
    // ...while version 2 loads beside it: the load completes before the call does.
    let r = h.load("hot", &v2);
    assert!(r.ok, "{r:?}");
    assert!(
        !h.backlog
            .iter()
            .any(|m| matches!(m, Message::ProcessResult(r) if r.msg_id == 2)),
        "the reload waited for the in-flight call"
    );
    h.process(3, "hot", "version", b"");
    let slow = h.result(2);
    assert_eq!(
        data_of(&slow),
        "1",
        "the in-flight call finished on the old library"
    );
    assert_eq!(
        data_of(&h.result(3)),
        "2",
        "later calls use the new library"
    );
    assert_eq!(data_of(&h.call(4, "hot", "version", b"")), "2");
}

#[test]
fn the_host_exits_when_the_supervisor_closes_its_side() {
    let mut h = Host::spawn(&[]);
    assert!(h.load("x", &worker_c()).ok);
    h.region.mark_closed(Side::Supervisor);
    let st = h.wait_exit();
    assert_eq!(st.code(), Some(0), "{st:?}");
}

#[test]
fn a_bad_command_line_exits_with_the_usage_code() {
    let st = Command::new(env!("CARGO_BIN_EXE_host-runner"))
        .args(["--engine", "native"])
        .stderr(Stdio::null())
        .status()
        .expect("run");
    assert_eq!(
        st.code(),
        Some(i32::from(workmanager_host_runner::exit::USAGE))
    );
    let st = Command::new(env!("CARGO_BIN_EXE_host-runner"))
        .args(["--ring-fd", "3", "--engine", "native", "--host-id", "x"])
        .stderr(Stdio::null())
        .status()
        .expect("run");
    assert_eq!(
        st.code(),
        Some(i32::from(workmanager_host_runner::exit::RING))
    );
}

#[test]
fn landlock_denies_plugins_any_filesystem_write() {
    let mut h = Host::spawn(&[]);
    assert!(h.load("writer", &worker_c()).ok);
    let r = data_of(&h.call(1, "writer", "write", b""));
    if h.ready.sandbox.split(',').any(|s| s == "landlock") {
        assert_eq!(r, format!("open={}", libc::EACCES));
    } else {
        // Best effort: a kernel without Landlock leaves writes to the file permissions.
        eprintln!("landlock not available here: {r}");
    }
    // Debugging switches really switch the steps off.
    let h = Host::spawn(&["--no-landlock", "--no-seccomp"]);
    assert!(!h.ready.sandbox.contains("landlock"), "{}", h.ready.sandbox);
    assert!(!h.ready.sandbox.contains("seccomp"), "{}", h.ready.sandbox);
}

#[test]
fn a_crash_while_loading_is_charged_to_the_load() {
    let mut h = Host::spawn(&[]);
    h.send(Message::LoadWorker(protocol::LoadWorker {
        request_id: 1,
        worker_id: "crash-in-constructor".into(),
        package_dir: worker_c().parent().unwrap().to_string_lossy().into_owned(),
        library_path: "libworker.so".into(),
        max_concurrency: 1,
        timeout_ms: 1000,
        ..Default::default()
    }));
    let st = h.wait_exit();
    assert_eq!(st.signal(), Some(libc::SIGSEGV), "{st:?}");
    let rec = h.crash().expect("crash slot written");
    assert_eq!(
        (
            rec.signal,
            rec.worker_id.as_str(),
            rec.msg_id,
            rec.fault_addr
        ),
        (libc::SIGSEGV, "crash-in-constructor", 0, 8)
    );
}

#[test]
fn shutdown_with_a_hung_call_still_exits_zero_after_the_deadline() {
    let mut h = Host::spawn(&[]);
    assert!(h.load("hung", &worker_c()).ok);
    assert!(h.load("idle", &worker_c()).ok);
    h.process(1, "hung", "loop", b"");
    let started = Instant::now();
    h.send(Message::Shutdown { deadline_ms: 300 });
    let st = h.wait_exit();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(st.code(), Some(0), "{st:?}");
    assert_eq!(h.region.host_state(), HostState::Exited);
    assert_eq!(h.crash(), None);
}

#[test]
fn sigfpe_sigill_and_sigbus_are_recorded_too() {
    for (ty, signal) in [
        ("fpe", libc::SIGFPE),
        ("ill", libc::SIGILL),
        ("bus", libc::SIGBUS),
    ] {
        let (st, rec, _h) = crash_with(ty, &[]);
        assert_eq!(st.signal(), Some(signal), "{ty}: {st:?}");
        let rec = rec.expect("crash slot written");
        assert_eq!(
            (rec.signal, rec.worker_id.as_str(), rec.msg_id),
            (signal, "victim", 4242),
            "{ty}"
        );
        assert_ne!(rec.fault_addr, 0, "{ty}: faults carry si_addr");
    }
}

/// State letter of `pid` from /proc (None once it is gone).
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.trim().chars().next()
}

#[test]
fn the_host_dies_with_its_parent() {
    let region = Arc::new(
        Region::create(
            "test-pdeathsig",
            &RingConfig {
                ring_bytes: 1 << 16,
                max_frame: 1 << 14,
                ..RingConfig::default()
            },
        )
        .expect("region"),
    );
    let ring_fd = region.as_fd().as_raw_fd();
    // The host's parent is a shell that waits until the host is Ready, then exits.
    let script = format!(
        "{} --ring-fd 3 --engine native --host-id orphan 2>/dev/null & echo $!; read _",
        env!("CARGO_BIN_EXE_host-runner")
    );
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // SAFETY: as in Host::spawn: dup2/fcntl only, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if ring_fd != 3 && libc::dup2(ring_fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::fcntl(3, libc::F_SETFD, 0);
            Ok(())
        });
    }
    let mut shell = cmd.spawn().expect("spawn sh");
    let mut line = String::new();
    BufReader::new(shell.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("pid line");
    let host_pid: i32 = line.trim().parse().expect("host pid");
    let (_tx, mut rx) = ring::supervisor_channels(region.clone());
    let mut buf = Vec::new();
    rx.recv(&mut buf, Some(WATCHDOG)).expect("Ready");
    assert!(matches!(Message::decode(&buf), Ok(Message::Ready(_))));
    assert_eq!(proc_state(host_pid).map(|s| s != 'Z'), Some(true));

    // The parent goes (closing its stdin ends `read`); PR_SET_PDEATHSIG kills the host.
    drop(shell.stdin.take());
    shell.wait().expect("shell exits");
    let deadline = Instant::now() + WATCHDOG;
    while matches!(proc_state(host_pid), Some(s) if s != 'Z') {
        assert!(
            Instant::now() < deadline,
            "host {host_pid} outlived its parent"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn unload_lets_queued_calls_finish_first_and_stats_count_them_in_flight() {
    let mut h = Host::spawn(&[]);
    assert!(h.load("w", &worker_c()).ok);
    h.process(1, "w", "sleep", b"300");
    h.process(2, "w", "echo", b"");
    h.send(Message::StatsRequest { request_id: 1 });
    let s = h.wait_for("Stats", |m| match m {
        Message::Stats(s) => Some(s.clone()),
        _ => None,
    });
    assert_eq!(s.in_flight, 2, "{s:?}");
    h.send(Message::UnloadWorker(protocol::UnloadWorker {
        request_id: 9,
        worker_id: "w".into(),
    }));
    // Collect frames in arrival order until the UnloadResult.
    let mut order = Vec::new();
    loop {
        match h.next() {
            Message::ProcessResult(r) => {
                assert_eq!(r.status, ResultStatus::Ok, "{r:?}");
                order.push(r.msg_id);
            }
            Message::UnloadResult(u) => {
                assert!(u.ok, "{u:?}");
                break;
            }
            _ => {}
        }
    }
    assert_eq!(
        order,
        [1, 2],
        "both queued calls answered before the unload"
    );
    h.send(Message::StatsRequest { request_id: 2 });
    let s = h.wait_for("Stats", |m| match m {
        Message::Stats(s) if s.request_id == 2 => Some(s.clone()),
        _ => None,
    });
    assert_eq!((s.in_flight, s.workers), (0, 0), "{s:?}");
}

/// Clock ticks (utime + stime, all threads) the process has used.
pub(crate) fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name, which ends at the last ')'.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Worker threads and the frame loop spin only right after work: once calls stop, an idle host
/// (here with 4 workers, one of 4 threads) uses no CPU. A spin that never ends would burn a
/// whole vCPU: 100 ticks per second.
#[test]
fn an_idle_host_uses_no_cpu_after_busy_calls() {
    let mut h = Host::spawn(&[]);
    for w in ["i1", "i2", "i3"] {
        assert!(h.load(w, &worker_c()).ok);
    }
    let s = spec("i4", &worker_c());
    let r = h.load_with(protocol::LoadWorker {
        request_id: NEXT.fetch_add(1, Ordering::Relaxed),
        worker_id: s.worker_id,
        package_dir: s.package_dir.to_string_lossy().into_owned(),
        library_path: s.library_path,
        entry_point: s.entry_point,
        free_result: s.free_result,
        topic: s.topic,
        max_concurrency: 4,
        timeout_ms: 2000,
        ..Default::default()
    });
    assert!(r.ok, "{r:?}");
    for n in 0..400u64 {
        let w = ["i1", "i2", "i3", "i4"][n as usize % 4];
        assert_eq!(h.call(n, w, "echo", b"x").status, ResultStatus::Ok);
    }
    // Let the spin budgets run out, then measure a quiet window.
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_ticks(h.pid());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(h.pid()) - before;
    assert!(used <= 2, "the idle host used {used} clock ticks in 2 s");
}
