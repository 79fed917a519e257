//! Figures for docs/benchmarks.md ("Python"): the python engine beside the native one, both
//! through the real host-runner binary (full sandbox) and a ring, spawns interleaved so that
//! both see the same machine load:
//! - spawn -> Ready, -> first LoadResult (the "first load": host start, interpreter, module
//!   import), -> first ProcessResult;
//! - a warm echo round trip through the ring, sequential (p50, p99 of 2000);
//! - the host's RSS (its own Stats frame) after the calls, one worker.
//!
//! - the time the engine itself spent per call (the ProcessResult's `elapsed_ns`: decode,
//!   the call, the reply's encode), p50, which the ring's wake-ups do not blur.
//!
//! `cargo bench -p workmanager-host-runner --bench python`. With
//! `WM_PYTHON_BASELINE_BIN=<an older host-runner binary>` its python engine runs too,
//! interleaved, as `python-base` (before/after in the same run).

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wm_shared::CloudEvent;
use wm_shared::protocol::{self, Message};
use wm_shared::ring::{self, Region, RingConfig};
use wm_testkit::native::{Build, Lang};

const SPAWNS: usize = 7;
/// Calls per spawn; `WM_PYTHON_BENCH_CALLS` raises it (e.g. to profile the steady state with
/// `perf record`, where the interpreter's start-up would otherwise dominate).
fn calls() -> usize {
    std::env::var("WM_PYTHON_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

const ECHO_PY: &str =
    "def Process(event):\n    return {\"type\": \"echo.reply\", \"data\": event[\"data\"]}\n";

struct Run {
    ready: Duration,
    loaded: Duration,
    first: Duration,
    p50: Duration,
    p99: Duration,
    /// p50 of the engine's own time per call.
    engine_p50: Duration,
    rss: u64,
}

fn run(bin: &Path, engine: &str, dir: &Path, library: &str, i: usize) -> Run {
    let region = Arc::new(
        Region::create(&format!("py-bench-{engine}-{i}"), &RingConfig::default()).expect("region"),
    );
    let fd = region.as_fd().as_raw_fd();
    let mut cmd = Command::new(bin);
    cmd.args(["--ring-fd", "3", "--engine", engine, "--host-id", "bench"])
        .args(["--python-blocked-modules", "subprocess,os,socket"])
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    // SAFETY: dup2/fcntl in the forked child are async-signal-safe; fd is open in the parent.
    unsafe {
        cmd.pre_exec(move || {
            if fd != 3 {
                libc::dup2(fd, 3);
            }
            libc::fcntl(3, libc::F_SETFD, 0);
            Ok(())
        });
    }
    let (tx, mut rx) = ring::supervisor_channels(region.clone());
    let mut buf = Vec::new();
    let mut recv = |buf: &mut Vec<u8>| {
        rx.recv(buf, Some(Duration::from_secs(30))).expect("frame");
        Message::decode(buf).expect("decode")
    };
    let t0 = Instant::now();
    let mut child = cmd.spawn().expect("spawn host-runner");
    assert!(matches!(recv(&mut buf), Message::Ready(_)));
    let ready = t0.elapsed();
    let lw = Message::LoadWorker(protocol::LoadWorker {
        request_id: 1,
        worker_id: "echo".into(),
        engine: if engine == "python" {
            protocol::EngineKind::Python
        } else {
            protocol::EngineKind::Native
        },
        package_dir: dir.to_string_lossy().into_owned(),
        library_path: library.into(),
        max_concurrency: 1,
        timeout_ms: 1000,
        ..Default::default()
    });
    tx.send(&lw.encode(), Duration::from_secs(1)).expect("send");
    match recv(&mut buf) {
        Message::LoadResult(r) => assert!(r.ok, "{r:?}"),
        other => panic!("{other:?}"),
    }
    let loaded = t0.elapsed();
    let mut ev = CloudEvent::new("id-1", "echo", "urn:bench");
    ev.datacontenttype = Some("application/json".into());
    ev.data = Some(br#"{"hello":"world","n":42}"#.to_vec());
    ev.set_extension("correlationid", "c-1").expect("extension");
    let ev = ev.to_flatbuffer();
    let mut first = Duration::ZERO;
    let mut warm = Vec::with_capacity(calls());
    let mut in_engine = Vec::with_capacity(calls());
    for n in 0..=calls() as u64 {
        let t = Instant::now();
        let p = Message::Process(protocol::Process {
            msg_id: n,
            worker_id: "echo".into(),
            event: ev.clone(),
        });
        tx.send(&p.encode(), Duration::from_secs(1)).expect("send");
        match recv(&mut buf) {
            Message::ProcessResult(r) => {
                assert_eq!(r.status, protocol::ResultStatus::Ok, "{r:?}");
                in_engine.push(Duration::from_nanos(r.elapsed_ns));
            }
            other => panic!("{other:?}"),
        }
        if n == 0 {
            first = t0.elapsed();
        } else {
            warm.push(t.elapsed());
        }
    }
    tx.send(
        &Message::StatsRequest { request_id: 9 }.encode(),
        Duration::from_secs(1),
    )
    .expect("send");
    let rss = loop {
        if let Message::Stats(s) = recv(&mut buf) {
            break s.rss_bytes;
        }
    };
    tx.send(
        &Message::Shutdown { deadline_ms: 100 }.encode(),
        Duration::from_secs(1),
    )
    .expect("send");
    child.wait().expect("wait");
    warm.sort();
    in_engine.sort();
    Run {
        engine_p50: in_engine[in_engine.len() / 2],
        ready,
        loaded,
        first,
        p50: warm[warm.len() / 2],
        p99: warm[warm.len() * 99 / 100],
        rss,
    }
}

fn summary(name: &str, runs: &[Run], f: impl Fn(&Run) -> f64, unit: &str) -> f64 {
    let mut v: Vec<f64> = runs.iter().map(f).collect();
    v.sort_by(f64::total_cmp);
    let med = v[v.len() / 2];
    println!(
        "  {name:<44} {med:>9.2} {unit} [{:.2}..{:.2}]",
        v[0],
        v[v.len() - 1]
    );
    med
}

fn main() {
    let so = Build::plugin("worker", Lang::C, &["worker.c"]).build();
    let native_dir = so.parent().expect("dir").to_path_buf();
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(tmp.path().join("worker.py"), ECHO_PY).expect("write worker.py");
    let bin = Path::new(env!("CARGO_BIN_EXE_host-runner"));
    let base = std::env::var_os("WM_PYTHON_BASELINE_BIN").map(std::path::PathBuf::from);
    let (mut native, mut python, mut python_base) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..SPAWNS {
        native.push(run(bin, "native", &native_dir, "libworker.so", i));
        python.push(run(bin, "python", tmp.path(), "worker.py", i));
        if let Some(b) = &base {
            python_base.push(run(b, "python", tmp.path(), "worker.py", i));
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let mut med = Vec::new();
    let mut engines = vec![("native", &native), ("python", &python)];
    if !python_base.is_empty() {
        engines.push(("python-base", &python_base));
    }
    for (name, runs) in engines {
        println!("host-runner --engine {name}, {SPAWNS} spawns, median [min..max]:");
        med.push([
            summary("spawn -> Ready", runs, |r| ms(r.ready), "ms"),
            summary(
                "spawn -> first LoadResult (first load)",
                runs,
                |r| ms(r.loaded),
                "ms",
            ),
            summary("spawn -> first ProcessResult", runs, |r| ms(r.first), "ms"),
            summary("warm echo round trip p50", runs, |r| us(r.p50), "us"),
            summary("warm echo round trip p99", runs, |r| us(r.p99), "us"),
            summary(
                "in-engine time per call p50",
                runs,
                |r| us(r.engine_p50),
                "us",
            ),
            summary(
                "host RSS, one worker",
                runs,
                |r| r.rss as f64 / 1048576.0,
                "MiB",
            ),
        ]);
    }
    let names = [
        "ready",
        "first load",
        "first call",
        "p50",
        "p99",
        "engine p50",
        "rss",
    ];
    println!("python / native (medians):");
    for (k, name) in names.iter().enumerate() {
        println!("  {name:<12} {:.2}x", med[1][k] / med[0][k]);
    }
    if med.len() > 2 {
        println!("python / python-base (medians):");
        for (k, name) in names.iter().enumerate() {
            println!("  {name:<12} {:.2}x", med[1][k] / med[2][k]);
        }
    }
}
