//! Figures for docs/benchmarks.md ("C# source engine"): the first compile of a source worker
//! (Roslyn cold, in a fresh process), a load from the compile cache (fresh process), and the
//! per-message cost, each against the same worker as a DLL measured in the same run.
//!
//! `cargo bench -p workmanager-host-runner --bench csharp_source`. The worker is
//! `tests/fixtures/dotnet/EchoV2.cs`, compiled by mcs for the DLL and by Roslyn for the source.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wm_shared::CloudEvent;
use wm_shared::dotnet::RuntimeSearch;
use wm_testkit::dotnet as dn;
use workmanager_host_runner::engine::dotnet::{DotNetConfig, DotNetEngine, Outcome, RUNTIME_ENV};
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

fn engine() -> DotNetEngine {
    DotNetEngine::new(
        DotNetConfig {
            engine_dir: dn::engine_dir(),
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

/// A folder holding the source as `worker.cs` (what the supervisor gives a host).
fn source_dir(root: &Path, name: &str) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        wm_testkit::fixtures_src("dotnet").join("EchoV2.cs"),
        dir.join("worker.cs"),
    )
    .unwrap();
    dir
}

fn dll_dir(root: &Path, dll: &Path) -> (PathBuf, String) {
    let dir = root.join("dll");
    std::fs::create_dir_all(&dir).unwrap();
    let lib = dn::extract(&dn::worker_nupkg("EchoV2", dll, &[]), "EchoV2", &dir);
    (dir, lib)
}

/// Child: start CoreCLR, then time one load of `WM_CS_BENCH_DIR`/`WM_CS_BENCH_LIB`; prints µs.
fn load_child() {
    let e = engine();
    e.start().unwrap();
    let dir = PathBuf::from(std::env::var("WM_CS_BENCH_DIR").unwrap());
    let lib = std::env::var("WM_CS_BENCH_LIB").unwrap();
    let t = Instant::now();
    let w = e.load("bench", &dir, &lib, Duration::from_secs(5)).unwrap();
    let took = t.elapsed();
    let ev = CloudEvent::new("x", "t", "urn:b");
    assert!(matches!(
        e.process(&w, 1, &ev.to_flatbuffer()),
        Outcome::Reply(_)
    ));
    println!("{}", took.as_micros());
}

fn load_in_child(dir: &Path, lib: &str, tmpdir: &Path) -> u64 {
    let out = Command::new(std::env::current_exe().unwrap())
        .env("WM_CS_BENCH_CHILD", "1")
        .env("WM_CS_BENCH_DIR", dir)
        .env("WM_CS_BENCH_LIB", lib)
        .env("TMPDIR", tmpdir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn summary(mut v: Vec<u64>) -> String {
    v.sort_unstable();
    let ms = |x: u64| x as f64 / 1000.0;
    format!(
        "{:.1} ms ({:.1}-{:.1})",
        ms(v[v.len() / 2]),
        ms(v[0]),
        ms(v[v.len() - 1])
    )
}

fn median(mut v: Vec<u64>) -> f64 {
    v.sort_unstable();
    v[v.len() / 2] as f64
}

fn main() {
    for (k, val) in RUNTIME_ENV {
        // SAFETY: no other thread exists yet in this process.
        unsafe { std::env::set_var(k, val) };
    }
    if std::env::var_os("WM_CS_BENCH_CHILD").is_some() {
        load_child();
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dll = dn::build_library_v2("EchoV2", &["EchoV2.cs"], &[]);
    let root = tempfile::tempdir().unwrap();
    let (dll_dir, dll_lib) = dll_dir(root.path(), &dll);
    const RUNS: usize = 5;

    // Loads in fresh processes (CoreCLR already started in each): DLL, first compile (an empty
    // TMPDIR and no cached image), cached (the image in the source's folder).
    let (mut dll_loads, mut compiles, mut cached) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..RUNS {
        let tmp = root.path().join(format!("tmp-{i}"));
        std::fs::create_dir_all(&tmp).unwrap();
        dll_loads.push(load_in_child(&dll_dir, &dll_lib, &tmp));
        let src = source_dir(root.path(), &format!("src-{i}"));
        compiles.push(load_in_child(&src, "worker.cs", &tmp));
        // What the supervisor does after that load: the host's image into the source folder.
        for e in std::fs::read_dir(tmp.join("csharp")).unwrap().flatten() {
            std::fs::copy(e.path(), src.join(e.file_name())).unwrap();
        }
        let fresh = root.path().join(format!("tmp-{i}-b"));
        std::fs::create_dir_all(&fresh).unwrap();
        cached.push(load_in_child(&src, "worker.cs", &fresh));
    }
    let dll_med = median(dll_loads.clone());
    println!("load, fresh process, CoreCLR started ({RUNS} runs, median (min-max)):");
    println!("  DLL worker (baseline):      {}", summary(dll_loads));
    println!(
        "  C# source, first compile:   {}  ({:.0}x the DLL)",
        summary(compiles.clone()),
        median(compiles) / dll_med
    );
    println!(
        "  C# source, cached image:    {}  ({:.1}x the DLL)",
        summary(cached.clone()),
        median(cached) / dll_med
    );

    // Per message, in this process: the same worker as a DLL and as compiled source.
    let e = engine();
    e.start().unwrap();
    let w_dll = e
        .load("dll", &dll_dir, &dll_lib, Duration::from_secs(5))
        .unwrap();
    let src = source_dir(root.path(), "src-msg");
    // SAFETY: the engine's threads do not read TMPDIR concurrently with this write (no call runs).
    unsafe { std::env::set_var("TMPDIR", root.path()) };
    let w_src = e
        .load("src", &src, "worker.cs", Duration::from_secs(5))
        .unwrap();
    let mut ev = CloudEvent::new("m", "t", "urn:b");
    ev.datacontenttype = Some("text/plain".into());
    ev.data = Some(b"hello".to_vec());
    ev.set_extension("correlationid", "c").unwrap();
    let buf = ev.to_flatbuffer();
    for round in 0..3 {
        let mut row = Vec::new();
        for (name, w) in [("DLL", &w_dll), ("source", &w_src)] {
            for _ in 0..2000 {
                let _ = e.process(w, 1, &buf);
            }
            let mut ns = Vec::with_capacity(20_000);
            for _ in 0..20_000 {
                let t = Instant::now();
                let _ = e.process(w, 1, &buf);
                ns.push(t.elapsed().as_nanos() as u64);
            }
            ns.sort_unstable();
            row.push((name, ns[ns.len() / 2], ns[ns.len() * 99 / 100]));
        }
        println!(
            "per message, round {round}: DLL p50 {} ns p99 {} ns; source p50 {} ns p99 {} ns (source/DLL p50 {:.2})",
            row[0].1,
            row[0].2,
            row[1].1,
            row[1].2,
            row[1].1 as f64 / row[0].1 as f64
        );
    }
    e.unload(w_dll).unwrap();
    e.unload(w_src).unwrap();
}
