//! Figures for docs/benchmarks.md (".NET"): CoreCLR cold start to the first managed call, the
//! per-message cost of a bridge call (in process, no ring), and RSS with 1 and 10 workers.
//!
//! `cargo bench -p workmanager-host-runner --bench dotnet`. Cold starts run in fresh child
//! processes (one CoreCLR per process); the rest in this one.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wm_shared::CloudEvent;
use wm_shared::dotnet::RuntimeSearch;
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
