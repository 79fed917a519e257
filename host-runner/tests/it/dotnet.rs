//! The .NET engine in the real host-runner binary: CoreCLR started inside the sandbox
//! (seccomp, Landlock, rlimits), workers loaded from extracted `.nupkg`s, frames over a real
//! ring; then the hostile workers only a separate process can survive.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wm_shared::protocol::{self, EngineKind, Message, ResultStatus};
use wm_testkit::dotnet as dn;

use crate::host::Host;
use crate::util::*;

/// Extracted packages live here for the whole test run.
fn packages() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("tempdir"))
        .path()
}

/// Builds fixture `sources` as worker `id`, packs it and extracts it into a directory of its
/// own (tests run in parallel: a package being rewritten while another host maps it would make
/// that host fail); returns (package dir, dll path relative to it).
fn package(id: &str, sources: &[&str], refs: &[&Path], siblings: &[&Path]) -> (PathBuf, String) {
    static N: AtomicU64 = AtomicU64::new(0);
    let dll = dn::build_library(id, sources, refs);
    let dir = packages().join(format!("{id}-{}", N.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir_all(&dir).unwrap();
    let lib = dn::extract(&dn::worker_nupkg(id, &dll, siblings), id, &dir);
    (dir, lib)
}

fn spawn(extra: &[&str]) -> Host {
    // The bridge and DevKit next to the binary, where the host-runner looks for them.
    dn::engine_dir();
    let root = dn::dotnet_root();
    Host::spawn_engine("dotnet", extra, &[("DOTNET_ROOT", root.to_str().unwrap())])
}

fn load(h: &mut Host, id: &str, pkg: &(PathBuf, String)) -> protocol::LoadResult {
    h.load_with(protocol::LoadWorker {
        request_id: 1000 + id.len() as u64,
        worker_id: id.into(),
        engine: EngineKind::DotNet,
        package_dir: pkg.0.to_string_lossy().into_owned(),
        library_path: pkg.1.clone(),
        topic: format!("topic.{id}"),
        max_concurrency: 1,
        timeout_ms: 2000,
        ..Default::default()
    })
}

fn text(r: &protocol::ProcessResult) -> String {
    let ev = response(&r.response).result_event.expect("a result event");
    String::from_utf8(ev.data.unwrap_or_default()).unwrap()
}

#[test]
fn dotnet_workers_run_in_the_sandboxed_host() {
    let mut h = spawn(&[]);
    assert_eq!(h.ready.engine, EngineKind::DotNet);
    assert!(h.ready.sandbox.contains("seccomp"), "{}", h.ready.sandbox);

    let echo = package("echo", &["Echo.cs"], &[], &[]);
    let r = load(&mut h, "echo", &echo);
    assert!(r.ok, "{r:?}\n{:?}", h.stderr.lock().unwrap());
    let res = h.call(1, "echo", "echo", b"ping");
    assert_eq!(res.status, ResultStatus::Ok, "{res:?}");
    assert!(res.elapsed_ns > 0);
    let ev = response(&res.response).result_event.unwrap();
    assert_eq!(ev.ty, "echo.reply");
    assert_eq!(ev.data.as_deref(), Some(&b"ping"[..]));
    assert_eq!(ev.extension("correlationid"), Some("corr-9"));

    // A worker exception is a WorkerException with the text; the host carries on.
    let throws = package("throws", &["Throws.cs"], &[], &[]);
    assert!(load(&mut h, "throws", &throws).ok);
    let res = h.call(2, "throws", "x", b"");
    assert_eq!(res.status, ResultStatus::WorkerException);
    assert!(
        res.error.contains("boom from the throwing worker"),
        "{}",
        res.error
    );

    // VIRTUFIN_WORKER_ID/TOPIC are set while the worker loads (its constructor sees them)
    // and restored afterwards (a call does not), as in the native engine.
    let env = package("workerenv", &["WorkerEnv.cs"], &[], &[]);
    assert!(load(&mut h, "workerenv", &env).ok);
    let res = h.call(3, "workerenv", "x", b"");
    assert_eq!(res.status, ResultStatus::Ok, "{res:?}");
    assert_eq!(text(&res), "workerenv|topic.workerenv|(unset)");

    // Load errors come back in LoadResult with every loader error.
    let missing = dn::build_library("MissingLib", &["MissingLib.cs"], &[]);
    let bad = package("missingref", &["MissingRef.cs"], &[&missing], &[]);
    let r = load(&mut h, "missingref", &bad);
    assert!(!r.ok);
    assert!(
        r.error
            .contains("Could not load file or assembly 'MissingLib"),
        "{}",
        r.error
    );

    // Logs and a gateway call travel as frames, stamped with worker and message.
    let gw = package("loggw", &["LogGateway.cs"], &[], &[]);
    assert!(load(&mut h, "loggw", &gw).ok);
    h.process(7, "loggw", "t", b"42");
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
        ("loggw", 7, "echo-service", "Call")
    );
    assert_eq!(call.payload, b"42");
    h.send(Message::GatewayReply(protocol::GatewayReply {
        call_id: call.call_id,
        status: 0,
        payload: b"answer".to_vec(),
        error: String::new(),
    }));
    assert_eq!(text(&h.result(7)), "answer");
    let logs = h.logs();
    let got: Vec<(u64, i32, &str)> = logs
        .iter()
        .filter(|l| l.worker_id == "loggw")
        .map(|l| (l.msg_id, l.level, l.message.as_str()))
        .collect();
    assert!(got.contains(&(7, 2, "handling msg-1")), "{got:?}");
    assert!(got.contains(&(7, 3, "after await msg-1")), "{got:?}");

    // Unload, then the id is unknown.
    h.send(Message::UnloadWorker(protocol::UnloadWorker {
        request_id: 99,
        worker_id: "echo".into(),
    }));
    let u = h.wait_for("UnloadResult", |m| match m {
        Message::UnloadResult(u) if u.request_id == 99 => Some(u.clone()),
        _ => None,
    });
    assert!(u.ok, "{u:?}");
    assert_eq!(
        h.call(3, "echo", "echo", b"x").status,
        ResultStatus::UnknownWorker
    );
    h.ping(5);
}

#[test]
fn a_missing_runtime_fails_the_load_with_every_path_searched() {
    dn::engine_dir();
    let mut h = Host::spawn_engine("dotnet", &[], &[("DOTNET_ROOT", "/nonexistent/dotnet")]);
    let echo = package("echo", &["Echo.cs"], &[], &[]);
    let r = load(&mut h, "echo", &echo);
    assert!(!r.ok);
    assert!(
        r.error.contains("cannot start the .NET runtime"),
        "{}",
        r.error
    );
    assert!(
        r.error
            .contains("/nonexistent/dotnet (DOTNET_ROOT): no such directory"),
        "{}",
        r.error
    );
    assert!(r.error.contains("/usr/share/dotnet"), "{}", r.error);
    // The host stays up and answers.
    h.ping(1);
}

#[test]
fn a_spinning_worker_leaves_the_host_and_its_other_workers_responsive() {
    let mut h = spawn(&[]);
    let hostile = package("hostile", &["Hostile.cs"], &[], &[]);
    let echo = package("echo", &["Echo.cs"], &[], &[]);
    assert!(load(&mut h, "hostile", &hostile).ok);
    assert!(load(&mut h, "echo", &echo).ok);
    h.process(1, "hostile", "t", b"spin");
    assert!(!h.arrives_within(Duration::from_millis(300), |m| matches!(
        m,
        Message::ProcessResult(r) if r.msg_id == 1
    )));
    h.ping(2);
    assert_eq!(
        h.call(3, "echo", "echo", b"still here").status,
        ResultStatus::Ok
    );
    // The supervisor's timeout path: kill the host.
    let st = h.kill();
    assert_eq!(st.signal(), Some(9));
}

#[test]
fn fail_fast_kills_only_the_host_and_names_the_culprit() {
    let mut h = spawn(&[]);
    let hostile = package("hostile", &["Hostile.cs"], &[], &[]);
    assert!(load(&mut h, "hostile", &hostile).ok);
    let started = Instant::now();
    h.process(11, "hostile", "t", b"failfast");
    let st = h.wait_exit();
    assert!(
        st.signal().is_some() || st.code().is_some_and(|c| c != 0),
        "{st:?}"
    );
    eprintln!(
        "FailFast: {st:?} after {:?}; crash record {:?}; stderr {:?}",
        started.elapsed(),
        h.crash(),
        h.stderr.lock().unwrap()
    );
    let rec = h.crash().expect("a crash record");
    assert_eq!(rec.worker_id, "hostile");
    assert_eq!(rec.msg_id, 11);
}

#[test]
fn unbounded_recursion_kills_only_the_host_and_names_the_culprit() {
    let mut h = spawn(&[]);
    let hostile = package("hostile", &["Hostile.cs"], &[], &[]);
    assert!(load(&mut h, "hostile", &hostile).ok);
    h.process(12, "hostile", "t", b"recurse");
    let st = h.wait_exit();
    assert!(
        st.signal().is_some() || st.code().is_some_and(|c| c != 0),
        "{st:?}"
    );
    eprintln!(
        "stack overflow: {st:?}; crash record {:?}; stderr {:?}",
        h.crash(),
        h.stderr.lock().unwrap()
    );
    let rec = h.crash().expect("a crash record");
    assert_eq!(rec.worker_id, "hostile");
    assert_eq!(rec.msg_id, 12);
}

/// A .NET host's memory bound is the GC heap hard limit (`--gc-heap-hard-limit`, from
/// `HOST_DOTNET_GC_HEAP_HARD_LIMIT_BYTES`), not RLIMIT_AS: CoreCLR starts under a 64 MiB
/// limit, a worker allocating past it gets an OutOfMemoryException (a WorkerException), and the
/// host lives on.
#[test]
fn the_gc_heap_hard_limit_bounds_a_dotnet_host_without_breaking_coreclr() {
    const LIMIT: u64 = 64 << 20;
    let mut h = spawn(&["--gc-heap-hard-limit", &LIMIT.to_string()]);
    let hog = package("hog", &["Hog.cs"], &[], &[]);
    let r = load(&mut h, "hog", &hog);
    assert!(r.ok, "{r:?}\n{:?}", h.stderr.lock().unwrap());
    let res = h.call(1, "hog", "x", b"limit");
    assert_eq!(res.status, ResultStatus::Ok, "{res:?}");
    let seen: u64 = text(&res).parse().expect("a number");
    assert!(
        seen <= LIMIT,
        "the GC sees {seen} bytes available, over the {LIMIT}-byte limit"
    );
    let res = h.call(2, "hog", "x", b"alloc:256");
    assert_eq!(res.status, ResultStatus::WorkerException, "{res:?}");
    assert!(res.error.contains("OutOfMemory"), "{}", res.error);
    let res = h.call(3, "hog", "x", b"alloc:8");
    assert_eq!(res.status, ResultStatus::Ok, "{res:?}");
    assert_eq!(text(&res), "allocated 8 MiB");
}
