//! Figures for docs/benchmarks.md (".NET"): CoreCLR cold start to the first managed call, the
//! per-message cost of a bridge call (in process, no ring), and RSS with 1 and 10 workers.
//!
//! `cargo bench -p workmanager-host-runner --bench dotnet`. Cold starts run in fresh child
//! processes (one CoreCLR per process); the rest in this one.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wm_shared::CloudEvent;
use wm_shared::dotnet::RuntimeSearch;
use wm_shared::protocol::{self, Message};
use wm_shared::ring::{self, Region, RingConfig};
use wm_testkit::dotnet as dn;
use workmanager_host_runner::engine::dotnet::{
    DotNetConfig, DotNetEngine, DotNetWorker, Outcome, RUNTIME_ENV,
};
use workmanager_host_runner::ffi::callbacks::{GatewayFailure, HostServices};

struct Quiet;

impl HostServices for Quiet {
    fn log(&self, _: &str, _: u64, _: i32, _: &str) {}
    fn gateway_call(
        &self,
        _: &str,
        _: u64,
        _: &str,
        _: &str,
        _: &[u8],
        _: Duration,
    ) -> Result<Vec<u8>, GatewayFailure> {
        Err(GatewayFailure::Unavailable)
    }
}

fn engine(engine_dir: &Path) -> DotNetEngine {
    DotNetEngine::new(
        DotNetConfig {
            engine_dir: engine_dir.to_path_buf(),
            search: RuntimeSearch {
                dotnet_root: Some(dn::dotnet_root()),
                exe_dir: None,
                system_dirs: Vec::new(),
            },
        },
        Arc::new(Quiet),
        1 << 20,
    )
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn load(e: &DotNetEngine, tmp: &Path, id: &str, dll: &Path) -> DotNetWorker {
    let dir = tmp.join(id);
    std::fs::create_dir_all(&dir).unwrap();
    let lib = dn::extract(&dn::worker_nupkg(id, dll, &[]), id, &dir);
    e.load(id, &dir, &lib, Duration::from_secs(5)).unwrap()
}

fn percentiles(mut v: Vec<u64>) -> (u64, u64, u64) {
    v.sort_unstable();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q) as usize];
    (at(0.5), at(0.99), at(0.999))
}

/// Child: process start (approximated by main's first instruction) to the first managed call.
fn cold_child(engine_dir: &Path, noop: &Path) {
    let t0 = Instant::now();
    let e = engine(engine_dir);
    let (_, start) = e.start().unwrap();
    let to_start = t0.elapsed();
    let tmp = tempfile::tempdir().unwrap();
    let w = load(&e, tmp.path(), "noop", noop);
    let loaded = t0.elapsed();
    let ev = CloudEvent::new("1", "t", "urn:b").to_flatbuffer();
    assert_eq!(e.process(&w, 1, &ev), Outcome::NoReply);
    let first = t0.elapsed();
    println!(
        "{} {} {} {}",
        start.as_micros(),
        to_start.as_micros(),
        loaded.as_micros(),
        first.as_micros()
    );
}

/// Child: RSS of a fresh process with the runtime, 1 worker, 10 workers, then after 100k calls.
fn rss_child(engine_dir: &Path, echo: &Path) {
    let e = engine(engine_dir);
    e.start().unwrap();
    let rt = rss_kib();
    let tmp = tempfile::tempdir().unwrap();
    let bytes = bench_event();
    let mut ws = Vec::new();
    let mut one = 0;
    for i in 0..10 {
        let w = load(&e, tmp.path(), &format!("echo{i}"), echo);
        assert!(matches!(e.process(&w, 1, &bytes), Outcome::Reply(_)));
        ws.push(w);
        if i == 0 {
            one = rss_kib();
        }
    }
    let ten = rss_kib();
    for i in 0..100_000u64 {
        e.process(&ws[(i % 10) as usize], i, &bytes);
    }
    println!("{rt} {one} {ten} {}", rss_kib());
}

fn bench_event() -> Vec<u8> {
    let mut ev = CloudEvent::new("id-1", "bench.request", "urn:bench");
    ev.datacontenttype = Some("application/json".into());
    ev.data = Some(br#"{"hello":"world","n":42}"#.to_vec());
    ev.set_extension("correlationid", "c-1").unwrap();
    ev.to_flatbuffer()
}

/// The real host-runner (`--engine dotnet`, full sandbox) over a ring: spawn -> Ready ->
/// LoadWorker (CoreCLR start + load) -> first ProcessResult; returns the three intervals and
/// the sequential warm round trip (median of 200).
fn host_runner_run(echo: &Path, tmp: &Path, i: usize) -> [Duration; 4] {
    let dir = tmp.join(format!("host-{i}"));
    std::fs::create_dir_all(&dir).unwrap();
    let lib = dn::extract(&dn::worker_nupkg("echo", echo, &[]), "echo", &dir);
    let region =
        Arc::new(Region::create(&format!("dotnet-bench-{i}"), &RingConfig::default()).unwrap());
    let fd = region.as_fd().as_raw_fd();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_host-runner"));
    cmd.args(["--ring-fd", "3", "--engine", "dotnet", "--host-id", "bench"])
        .env_clear()
        .env("DOTNET_ROOT", dn::dotnet_root())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
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
        rx.recv(buf, Some(Duration::from_secs(30))).unwrap();
        Message::decode(buf).unwrap()
    };
    let t0 = Instant::now();
    let mut child = cmd.spawn().unwrap();
    assert!(matches!(recv(&mut buf), Message::Ready(_)));
    let ready = t0.elapsed();
    let lw = Message::LoadWorker(protocol::LoadWorker {
        request_id: 1,
        worker_id: "echo".into(),
        engine: protocol::EngineKind::DotNet,
        package_dir: dir.to_string_lossy().into_owned(),
        library_path: lib,
        max_concurrency: 1,
        timeout_ms: 1000,
        ..Default::default()
    });
    tx.send(&lw.encode(), Duration::from_secs(1)).unwrap();
    match recv(&mut buf) {
        Message::LoadResult(r) => assert!(r.ok, "{r:?}"),
        other => panic!("{other:?}"),
    }
    let loaded = t0.elapsed();
    let ev = bench_event();
    let mut warm = Vec::new();
    let mut first = Duration::ZERO;
    for n in 0..201u64 {
        let t = Instant::now();
        let p = Message::Process(protocol::Process {
            msg_id: n,
            worker_id: "echo".into(),
            event: ev.clone(),
        });
        tx.send(&p.encode(), Duration::from_secs(1)).unwrap();
        assert!(matches!(recv(&mut buf), Message::ProcessResult(_)));
        if n == 0 {
            first = t0.elapsed();
        } else {
            warm.push(t.elapsed());
        }
    }
    tx.send(
        &Message::Shutdown { deadline_ms: 100 }.encode(),
        Duration::from_secs(1),
    )
    .unwrap();
    child.wait().unwrap();
    warm.sort();
    [ready, loaded, first, warm[warm.len() / 2]]
}

fn main() {
    for (k, v) in RUNTIME_ENV {
        // SAFETY: no other thread exists yet in this process.
        unsafe { std::env::set_var(k, v) };
    }
    let engine_dir = dn::engine_dir();
    let noop = dn::build_library("noop", &["Noop.cs"], &[]);
    let echo = dn::build_library("echo", &["Echo.cs"], &[]);
    if std::env::var_os("WM_DOTNET_BENCH_RSS").is_some() {
        rss_child(&engine_dir, &echo);
        return;
    }
    if std::env::var_os("WM_DOTNET_BENCH_COLD").is_some() {
        cold_child(&engine_dir, &noop);
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }

    // Cold start, in fresh processes.
    let mut rows = Vec::new();
    for _ in 0..7 {
        let out = Command::new(std::env::current_exe().unwrap())
            .env("WM_DOTNET_BENCH_COLD", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Vec<u64> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        rows.push(v);
    }
    let med = |i: usize| {
        let mut c: Vec<u64> = rows.iter().map(|r| r[i]).collect();
        c.sort_unstable();
        (c[c.len() / 2], c[0], c[c.len() - 1])
    };
    println!("cold start, 7 fresh processes (median [min..max], ms):");
    for (i, what) in [
        "hostfxr load -> bridge Init returned",
        "main() -> runtime started",
        "main() -> first worker loaded",
        "main() -> first managed call returned",
    ]
    .iter()
    .enumerate()
    {
        let (m, lo, hi) = med(i);
        println!(
            "  {what:40} {:7.1} [{:.1}..{:.1}]",
            m as f64 / 1e3,
            lo as f64 / 1e3,
            hi as f64 / 1e3
        );
    }

    // The real host-runner process, sandbox included.
    let tmp_hosts = tempfile::tempdir().unwrap();
    let mut host_rows: Vec<[Duration; 4]> = (0..7)
        .map(|i| host_runner_run(&echo, tmp_hosts.path(), i))
        .collect();
    println!("host-runner --engine dotnet through a ring, 7 spawns (median [min..max], ms):");
    for (i, what) in [
        "spawn -> Ready (exec + sandbox)",
        "spawn -> first worker loaded (CoreCLR)",
        "spawn -> first ProcessResult",
        "warm Process round trip (sequential)",
    ]
    .iter()
    .enumerate()
    {
        host_rows.sort_by_key(|r| r[i]);
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "  {what:40} {:7.3} [{:.3}..{:.3}]",
            ms(host_rows[3][i]),
            ms(host_rows[0][i]),
            ms(host_rows[6][i])
        );
    }

    // Per-message cost and RSS, in this process.
    let e = engine(&engine_dir);
    e.start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let wn = load(&e, tmp.path(), "noop", &noop);
    let we = load(&e, tmp.path(), "echo", &echo);
    let bytes = bench_event();
    for (name, w) in [("noop (no reply)", &wn), ("echo (reply)", &we)] {
        for _ in 0..20_000 {
            e.process(w, 1, &bytes);
        }
        let n = 200_000;
        let mut samples = Vec::with_capacity(n);
        let t = Instant::now();
        for i in 0..n {
            let s = Instant::now();
            let o = e.process(w, i as u64, &bytes);
            samples.push(s.elapsed().as_nanos() as u64);
            assert!(matches!(o, Outcome::NoReply | Outcome::Reply(_)));
        }
        let total = t.elapsed();
        let (p50, p99, p999) = percentiles(samples);
        println!(
            "bridge call, {name:16} {n} calls ({} B event): p50 {:.2} us, p99 {:.2} us, p99.9 {:.2} us, {:.0} calls/s on one thread",
            bytes.len(),
            p50 as f64 / 1e3,
            p99 as f64 / 1e3,
            p999 as f64 / 1e3,
            n as f64 / total.as_secs_f64()
        );
    }
    e.unload(wn).unwrap();
    e.unload(we).unwrap();

    // RSS in a fresh process: runtime only, 1 worker, 10 workers, then after 100k calls.
    let out = Command::new(std::env::current_exe().unwrap())
        .env("WM_DOTNET_BENCH_RSS", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|x| x.parse::<f64>().unwrap() / 1024.0)
        .collect();
    println!(
        "RSS of a fresh process (MiB): runtime started {:.1}, 1 echo worker {:.1}, 10 echo workers {:.1} (+{:.2} per extra worker), after 100k calls over the 10 {:.1}",
        r[0],
        r[1],
        r[2],
        (r[2] - r[1]) / 9.0,
        r[3]
    );

    let tmp2 = tempfile::tempdir().unwrap();
    let ws: Vec<DotNetWorker> = (0..10)
        .map(|i| load(&e, tmp2.path(), &format!("echo{i}"), &echo))
        .collect();
    for w in ws {
        e.unload(w).unwrap();
    }
    let t = Instant::now();
    let alive = e.collect_unloaded(50).unwrap();
    println!(
        "unload of 10 workers + GC until collected: {:.1} ms, {alive} contexts still alive, RSS {:.1} MiB",
        t.elapsed().as_secs_f64() * 1e3,
        rss_kib() as f64 / 1024.0
    );
}
