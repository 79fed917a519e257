//! The .NET engine in this process: real CoreCLR, the real bridge, C# fixture workers compiled
//! by mcs and packed as `.nupkg` (see `wm_testkit::dotnet`).
//!
//! CoreCLR can start once per process, so this binary has its own `main` (harness = false):
//! it sets the runtime environment while it is still single-threaded, then runs every test in
//! turn against one runtime. `cargo test -p workmanager-host-runner --test dotnet_engine [filter]`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wm_shared::dotnet::RuntimeSearch;
use wm_shared::{CloudEvent, WorkerResponse};
use wm_testkit::dotnet as dn;
use workmanager_host_runner::engine::dotnet::{
    DotNetConfig, DotNetEngine, DotNetError, DotNetWorker, Outcome, RUNTIME_ENV, StartError,
};
use workmanager_host_runner::ffi::callbacks::{GatewayFailure, HostServices};

#[path = "dotnet_engine/devkit2.rs"]
mod devkit2;

/// (worker id, msg id, level, message)
type LogLine = (String, u64, i32, String);
/// (worker id, msg id, service, method, payload)
type GatewayRequest = (String, u64, String, String, Vec<u8>);

/// Log lines and gateway calls the workers made, as the ring would carry them.
#[derive(Default)]
struct Recorder {
    logs: Mutex<Vec<LogLine>>,
    gateway: Mutex<Vec<GatewayRequest>>,
}

impl HostServices for Recorder {
    fn log(&self, worker_id: &str, msg_id: u64, level: i32, message: &str) {
        self.logs
            .lock()
            .unwrap()
            .push((worker_id.into(), msg_id, level, message.into()));
    }

    fn gateway_call(
        &self,
        worker_id: &str,
        msg_id: u64,
        service: &str,
        method: &str,
        payload: &[u8],
        _timeout: Duration,
    ) -> Result<Vec<u8>, GatewayFailure> {
        self.gateway.lock().unwrap().push((
            worker_id.into(),
            msg_id,
            service.into(),
            method.into(),
            payload.to_vec(),
        ));
        match service {
            "echo-service" => Ok([b"gw:".as_slice(), payload].concat()),
            _ => Err(GatewayFailure::Status(7)),
        }
    }
}

struct Env {
    engine: DotNetEngine,
    rec: Arc<Recorder>,
    tmp: tempfile::TempDir,
}

impl Env {
    /// Packs `dll` (+ siblings) as `<id>.nupkg`, extracts it, loads it as worker `id`.
    fn load(&self, id: &str, dll: &Path, siblings: &[&Path]) -> Result<DotNetWorker, DotNetError> {
        let pkg = dn::worker_nupkg(id, dll, siblings);
        let dir = self.tmp.path().join(format!("{id}-{}", unique()));
        std::fs::create_dir_all(&dir).unwrap();
        let lib = dn::extract(&pkg, id, &dir);
        self.engine.load(id, &dir, &lib, Duration::from_secs(5))
    }

    fn call(&self, w: &DotNetWorker, msg_id: u64, ev: &CloudEvent) -> Outcome {
        self.engine.process(w, msg_id, &ev.to_flatbuffer())
    }

    fn reply(&self, w: &DotNetWorker, msg_id: u64, ev: &CloudEvent) -> CloudEvent {
        match self.call(w, msg_id, ev) {
            Outcome::Reply(b) => WorkerResponse::from_flatbuffer(&b)
                .unwrap()
                .result_event
                .expect("a result event"),
            other => panic!("expected a reply, got {other:?}"),
        }
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn event(id: &str, data: &str) -> CloudEvent {
    let mut e = CloudEvent::new(id, "test.request", "urn:test");
    e.datacontenttype = Some("text/plain".into());
    e.data = Some(data.as_bytes().to_vec());
    e
}

fn text(e: &CloudEvent) -> String {
    String::from_utf8(e.data.clone().unwrap_or_default()).unwrap()
}

fn lib(name: &str, sources: &[&str]) -> PathBuf {
    dn::build_library(name, sources, &[])
}

fn echo_round_trips_every_attribute(env: &Env) {
    let w = env.load("echo", &lib("echo", &["Echo.cs"]), &[]).unwrap();
    let mut ev = event("m-1", "hello, wörld");
    ev.subject = Some("subj".into());
    ev.time = Some("2026-11-21T14:00:00.5Z".into());
    ev.set_extension("correlationid", "c-42").unwrap();
    ev.set_extension("other", "x").unwrap();
    let r = env.reply(&w, 1, &ev);
    assert_eq!(r.id, "reply-m-1");
    assert_eq!(r.ty, "echo.reply");
    assert_eq!(r.source, "urn:fixture:echo");
    assert_eq!(r.specversion, "1.0");
    assert_eq!(r.subject.as_deref(), Some("subj"));
    assert_eq!(r.time.as_deref(), Some("2026-11-21T14:00:00.5Z"));
    assert_eq!(r.datacontenttype.as_deref(), Some("text/plain"));
    assert_eq!(text(&r), "hello, wörld");
    assert_eq!(r.extension("correlationid"), Some("c-42"));
    assert_eq!(r.extension("seentype"), Some("test.request"));
    // Binary payloads pass through untouched.
    let mut bin = CloudEvent::new("m-2", "t", "urn:test");
    bin.datacontenttype = Some("application/octet-stream".into());
    bin.data = Some(vec![0, 159, 255, 1]);
    assert_eq!(env.reply(&w, 2, &bin).data, Some(vec![0, 159, 255, 1]));
    env.engine.unload(w).unwrap();
}

fn large_payloads_and_many_extensions_round_trip(env: &Env) {
    let w = env
        .load("echo-big", &lib("echo", &["Echo.cs"]), &[])
        .unwrap();
    let mut ev = CloudEvent::new("big", "test.request", "urn:test");
    ev.datacontenttype = Some("application/octet-stream".into());
    let data: Vec<u8> = (0..(1usize << 20)).map(|i| (i * 31 % 251) as u8).collect();
    ev.data = Some(data.clone());
    for i in 0..40 {
        ev.set_extension(format!("ext{i}"), format!("välue-{i}-{}", "x".repeat(i)))
            .unwrap();
    }
    ev.set_extension("correlationid", "").unwrap();
    let r = env.reply(&w, 1, &ev);
    assert_eq!(r.data.as_deref(), Some(&data[..]));
    assert_eq!(r.extension("correlationid"), Some(""));
    // An event with nothing optional set.
    let bare = CloudEvent::new("b", "t", "s");
    let r = env.reply(&w, 2, &bare);
    assert_eq!(r.data, None);
    assert_eq!(r.subject, None);
    assert_eq!(r.extension("seentype"), Some("t"));
    env.engine.unload(w).unwrap();
}

fn a_reply_over_the_frame_limit_is_refused(env: &Env) {
    // A second engine over the same runtime, with a 4 KiB reply limit.
    let small = DotNetEngine::new(
        DotNetConfig {
            engine_dir: dn::engine_dir(),
            search: RuntimeSearch::default(),
        },
        env.rec.clone(),
        4096,
    );
    let dir = env.tmp.path().join("limit");
    std::fs::create_dir_all(&dir).unwrap();
    let pkg = dn::worker_nupkg("echo", &lib("echo", &["Echo.cs"]), &[]);
    let libpath = dn::extract(&pkg, "echo", &dir);
    let w = small
        .load("limit", &dir, &libpath, Duration::from_secs(1))
        .unwrap();
    assert!(matches!(
        small.process(&w, 1, &event("s", "small").to_flatbuffer()),
        Outcome::Reply(_)
    ));
    match small.process(&w, 2, &event("b", &"x".repeat(8192)).to_flatbuffer()) {
        Outcome::InvalidResponse(t) => assert!(t.contains("exceeds the 4096-byte limit"), "{t}"),
        other => panic!("expected a refused reply, got {other:?}"),
    }
    small.unload(w).unwrap();
}

fn counter_keeps_state_across_calls_and_threads(env: &Env) {
    let w = env
        .load("counter", &lib("counter", &["Counter.cs"]), &[])
        .unwrap();
    for n in 1..=3 {
        assert_eq!(text(&env.reply(&w, n, &event("c", "x"))), n.to_string());
    }
    assert_eq!(env.call(&w, 4, &event("c", "none")), Outcome::NoReply);
    // Concurrent calls share the one instance.
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..50 {
                    assert!(matches!(
                        env.call(&w, 5, &event("c", "none")),
                        Outcome::NoReply
                    ));
                }
            });
        }
    });
    assert_eq!(text(&env.reply(&w, 6, &event("c", "x"))), "205");
    env.engine.unload(w).unwrap();
}

fn a_worker_exception_is_an_error_with_its_text(env: &Env) {
    let w = env
        .load("throws", &lib("throws", &["Throws.cs"]), &[])
        .unwrap();
    match env.call(&w, 9, &event("m-9", "x")) {
        Outcome::WorkerException(t) => {
            assert!(t.contains("System.InvalidOperationException"), "{t}");
            assert!(t.contains("boom from the throwing worker: m-9"), "{t}");
        }
        other => panic!("expected a worker exception, got {other:?}"),
    }
    // The worker stays usable after throwing.
    assert!(matches!(
        env.call(&w, 10, &event("m-10", "x")),
        Outcome::WorkerException(_)
    ));
    env.engine.unload(w).unwrap();
}

fn a_missing_reference_is_listed_in_the_load_error(env: &Env) {
    let missing = dn::build_library("MissingLib", &["MissingLib.cs"], &[]);
    let dll = dn::build_library("missingref", &["MissingRef.cs"], &[&missing]);
    let err = env.load("missingref", &dll, &[]).unwrap_err();
    let DotNetError::Load { worker_id, message } = &err else {
        panic!("expected a load error, got {err:?}")
    };
    assert_eq!(worker_id, "missingref");
    assert!(message.contains("loader errors"), "{message}");
    assert!(
        message.contains("Could not load file or assembly 'MissingLib"),
        "{message}"
    );
}

fn an_assembly_without_iworker_gets_the_original_message(env: &Env) {
    let err = env
        .load("noworker", &lib("noworker", &["NoWorker.cs"]), &[])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "worker noworker: No IWorker implementation found in the worker assembly. \
         Implement Virtufin.Worker.DevKit.IWorker on a public, non-abstract class."
    );
    // Not an assembly at all.
    let junk = env.tmp.path().join("junk.dll");
    std::fs::write(&junk, b"not a PE file").unwrap();
    let err = env.load("junk", &junk, &[]).unwrap_err();
    assert!(err.to_string().contains("could not be loaded"), "{err}");
}

fn the_hosts_devkit_wins_over_a_bundled_copy(env: &Env) {
    let decoy =
        dn::build_library_without_devkit("Virtufin.Worker.DevKit", &["DecoyDevKit.cs"], &[]);
    let dll = lib("bundled", &["BundledDevKit.cs"]);
    let w = env.load("bundled", &dll, &[&decoy]).unwrap();
    let mut ev = event("b-1", r#"{"command":"WHERE"}"#);
    ev.datacontenttype = Some("application/json".into());
    ev.set_extension("correlationid", "corr-b").unwrap();
    let r = env.reply(&w, 1, &ev);
    let v: serde_json::Value = serde_json::from_slice(r.data.as_deref().unwrap()).unwrap();
    assert_eq!(v["command"], "where");
    assert_eq!(v["success"], true);
    assert_eq!(
        v["id"], "worker:bundled",
        "the worker itself is in its own context"
    );
    let devkit_ctx = v["message"].as_str().unwrap();
    assert!(
        !devkit_ctx.starts_with("worker:"),
        "DevKit bound to {devkit_ctx}"
    );
    assert_eq!(r.extension("correlationid"), Some("corr-b"));
    assert_eq!(r.ty, "bundled.reply");
    // CommandWorker's documented error texts.
    ev.data = Some(br#"{"command":"dance"}"#.to_vec());
    let v: serde_json::Value =
        serde_json::from_slice(env.reply(&w, 2, &ev).data.as_deref().unwrap()).unwrap();
    assert_eq!(v["message"], "Unknown command: dance");
    assert_eq!(v["success"], false);
    ev.data = Some(b"{not json".to_vec());
    let v: serde_json::Value =
        serde_json::from_slice(env.reply(&w, 3, &ev).data.as_deref().unwrap()).unwrap();
    assert_eq!(v["message"], "Failed to parse command JSON");
    env.engine.unload(w).unwrap();
}

fn a_private_helper_loads_from_the_package(env: &Env) {
    let helper = dn::build_library("FixtureHelper", &["Helper.cs"], &[]);
    let dll = dn::build_library("useshelper", &["UsesHelper.cs"], &[&helper]);
    let w = env.load("useshelper", &dll, &[&helper]).unwrap();
    assert_eq!(
        text(&env.reply(&w, 1, &event("h", "hi"))),
        "HI! via worker:useshelper"
    );
    env.engine.unload(w).unwrap();
}

fn thread_static_state_does_not_survive_a_reload(env: &Env) {
    let dll = lib("threadstatic", &["ThreadStatic.cs"]);
    let w = env.load("ts", &dll, &[]).unwrap();
    assert_eq!(text(&env.reply(&w, 1, &event("t", ""))), "1");
    assert_eq!(text(&env.reply(&w, 2, &event("t", ""))), "2");
    env.engine.unload(w).unwrap();
    let w = env.load("ts", &dll, &[]).unwrap();
    assert_eq!(text(&env.reply(&w, 3, &event("t", ""))), "1");
    env.engine.unload(w).unwrap();
}

fn logs_and_gateway_calls_reach_the_host(env: &Env) {
    let w = env
        .load("loggw", &lib("loggw", &["LogGateway.cs"]), &[])
        .unwrap();
    assert_eq!(text(&env.reply(&w, 77, &event("m-77", "ping"))), "gw:ping");
    let logs = env.rec.logs.lock().unwrap().clone();
    let mine: Vec<_> = logs.iter().filter(|l| l.0 == "loggw").collect();
    assert!(
        mine.contains(&&("loggw".into(), 0, 1, "constructed loggw".into())),
        "{mine:?}"
    );
    assert!(
        mine.contains(&&("loggw".into(), 77, 2, "handling m-77".into())),
        "{mine:?}"
    );
    // Logged from a thread-pool continuation after an await: still attributed to message 77.
    assert!(
        mine.contains(&&("loggw".into(), 77, 3, "after await m-77".into())),
        "{mine:?}"
    );
    let calls = env.rec.gateway.lock().unwrap().clone();
    assert!(calls.contains(&(
        "loggw".into(),
        77,
        "echo-service".into(),
        "Call".into(),
        b"ping".to_vec()
    )));
    let answer = text(&env.reply(&w, 78, &event("m-78", "fail")));
    assert!(answer.starts_with("gateway error 7: "), "{answer}");
    env.engine.unload(w).unwrap();
}

fn a_typed_worker_decodes_json_and_wraps_errors(env: &Env) {
    let w = env
        .load("typed", &lib("typed", &["Typed.cs"]), &[])
        .unwrap();
    let mut ev = event("t-1", r#"{"a":7,"b":2}"#);
    ev.datacontenttype = Some("application/json".into());
    ev.set_extension("correlationid", "k").unwrap();
    let r = env.reply(&w, 1, &ev);
    let v: serde_json::Value = serde_json::from_slice(r.data.as_deref().unwrap()).unwrap();
    assert_eq!(v["Sum"], 9);
    assert_eq!(v["Quotient"], 3);
    assert_eq!(r.ty, "typed.reply");
    assert_eq!(r.extension("correlationid"), Some("k"));
    assert!(r.time.is_some());
    ev.data = Some(br#"{"a":1,"b":0}"#.to_vec());
    let v: serde_json::Value =
        serde_json::from_slice(env.reply(&w, 2, &ev).data.as_deref().unwrap()).unwrap();
    assert_eq!(v["command"], "error");
    assert_eq!(v["success"], false);
    assert!(
        v["message"].as_str().unwrap().contains("divide by zero"),
        "{v}"
    );
    env.engine.unload(w).unwrap();
}

fn bad_input_is_a_failure_not_a_crash(env: &Env) {
    let w = env
        .load("echo-bad", &lib("echo", &["Echo.cs"]), &[])
        .unwrap();
    for junk in [&b""[..], b"\xff\xff\xff\x7f", b"\x04\0\0\0\xf0\xff\xff\xff"] {
        match env.engine.process(&w, 1, junk) {
            Outcome::Failed(t) => assert!(t.contains("not a valid CloudEvent FlatBuffer"), "{t}"),
            other => panic!("expected a failure for {junk:?}, got {other:?}"),
        }
    }
    env.engine.unload(w).unwrap();
}

/// Runs last: every context unloaded by the tests above (and by failed loads) is collected.
fn unloaded_workers_are_collected(env: &Env) {
    let w = env
        .load("collect", &lib("echo", &["Echo.cs"]), &[])
        .unwrap();
    env.reply(&w, 1, &event("x", "y"));
    env.engine.unload(w).unwrap();
    assert_eq!(env.engine.collect_unloaded(100).unwrap(), 0);
}

/// In a child process (no runtime anywhere): the first load fails naming the searched paths,
/// and so does the second (the failure is remembered).
fn a_missing_runtime_fails_the_load_with_the_searched_paths(_env: &Env) {
    let out = Command::new(std::env::current_exe().unwrap())
        .env("WM_DOTNET_ENGINE_CHILD", "missing-runtime")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("cannot start the .NET runtime: no usable .NET runtime"),
        "{stdout}"
    );
    assert!(
        stdout.contains("/nonexistent/dotnet-root (DOTNET_ROOT): no such directory"),
        "{stdout}"
    );
    assert!(
        stdout.contains("/nonexistent/system (system install)"),
        "{stdout}"
    );
    assert_eq!(
        stdout.matches("no usable .NET runtime").count(),
        2,
        "{stdout}"
    );
}

fn missing_runtime_child() -> ExitCode {
    let engine = DotNetEngine::new(
        DotNetConfig {
            engine_dir: dn::engine_dir(),
            search: RuntimeSearch {
                dotnet_root: Some("/nonexistent/dotnet-root".into()),
                exe_dir: None,
                system_dirs: vec!["/nonexistent/system".into()],
            },
        },
        Arc::new(Recorder::default()),
        8 << 20,
    );
    for _ in 0..2 {
        match engine.load("w", Path::new("/tmp"), "w.dll", Duration::from_secs(1)) {
            Err(e @ DotNetError::Start(_)) => {
                let mut s = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(x) = src {
                    s.push_str(": ");
                    s.push_str(&x.to_string());
                    src = x.source();
                }
                println!("{s}");
            }
            other => {
                println!("unexpected: {other:?}");
                return ExitCode::FAILURE;
            }
        }
    }
    if DotNetEngine::runtime_started() {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

type Test = (&'static str, fn(&Env));

const TESTS: &[Test] = &[
    (
        "a_command_worker_from_the_original_docs_runs",
        devkit2::a_command_worker_from_the_original_docs_runs,
    ),
    (
        "a_static_process_async_is_a_worker",
        devkit2::a_static_process_async_is_a_worker,
    ),
    (
        "an_api_command_worker_calls_through_the_gateway",
        devkit2::an_api_command_worker_calls_through_the_gateway,
    ),
    (
        "csharp_source_compiles_runs_and_reuses_its_image",
        devkit2::csharp_source_compiles_runs_and_reuses_its_image,
    ),
    (
        "csharp_compile_errors_list_every_diagnostic",
        devkit2::csharp_compile_errors_list_every_diagnostic,
    ),
    (
        "csharp_source_exceptions_are_worker_exceptions",
        devkit2::csharp_source_exceptions_are_worker_exceptions,
    ),
    (
        "cryptography_without_openssl_1_is_an_exception_not_an_abort",
        devkit2::cryptography_without_openssl_1_is_an_exception_not_an_abort,
    ),
    (devkit2::CRYPTO_CHILD, devkit2::crypto_child_guarded_call),
    (
        "echo_round_trips_every_attribute",
        echo_round_trips_every_attribute,
    ),
    (
        "large_payloads_and_many_extensions_round_trip",
        large_payloads_and_many_extensions_round_trip,
    ),
    (
        "a_reply_over_the_frame_limit_is_refused",
        a_reply_over_the_frame_limit_is_refused,
    ),
    (
        "counter_keeps_state_across_calls_and_threads",
        counter_keeps_state_across_calls_and_threads,
    ),
    (
        "a_worker_exception_is_an_error_with_its_text",
        a_worker_exception_is_an_error_with_its_text,
    ),
    (
        "a_missing_reference_is_listed_in_the_load_error",
        a_missing_reference_is_listed_in_the_load_error,
    ),
    (
        "an_assembly_without_iworker_gets_the_original_message",
        an_assembly_without_iworker_gets_the_original_message,
    ),
    (
        "the_hosts_devkit_wins_over_a_bundled_copy",
        the_hosts_devkit_wins_over_a_bundled_copy,
    ),
    (
        "a_private_helper_loads_from_the_package",
        a_private_helper_loads_from_the_package,
    ),
    (
        "thread_static_state_does_not_survive_a_reload",
        thread_static_state_does_not_survive_a_reload,
    ),
    (
        "logs_and_gateway_calls_reach_the_host",
        logs_and_gateway_calls_reach_the_host,
    ),
    (
        "a_typed_worker_decodes_json_and_wraps_errors",
        a_typed_worker_decodes_json_and_wraps_errors,
    ),
    (
        "bad_input_is_a_failure_not_a_crash",
        bad_input_is_a_failure_not_a_crash,
    ),
    (
        "a_missing_runtime_fails_the_load_with_the_searched_paths",
        a_missing_runtime_fails_the_load_with_the_searched_paths,
    ),
    (
        "unloaded_workers_are_collected",
        unloaded_workers_are_collected,
    ),
];

fn main() -> ExitCode {
    // Single-threaded here: nothing else can read the environment while it changes.
    for (k, v) in RUNTIME_ENV {
        // SAFETY: no other thread exists yet in this process.
        unsafe { std::env::set_var(k, v) };
    }
    // The C# source engine writes its compiled images to $TMPDIR/csharp (a host's private temp
    // folder under the supervisor): a folder of this run's own.
    let tmpdir = std::env::temp_dir().join(format!("wm-dotnet-engine-{}", std::process::id()));
    std::fs::create_dir_all(&tmpdir).unwrap();
    // SAFETY: no other thread exists yet in this process.
    unsafe { std::env::set_var("TMPDIR", &tmpdir) };
    if std::env::var("WM_DOTNET_ENGINE_CHILD").as_deref() == Ok("missing-runtime") {
        return missing_runtime_child();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        for (name, _) in TESTS {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let child = std::env::var_os(devkit2::CRYPTO_CHILD_ENV).is_some();
    let selected: Vec<&Test> = TESTS
        .iter()
        .filter(|(n, _)| filters.is_empty() || filters.iter().any(|f| n.contains(f.as_str())))
        // The crypto child runs only as the child of its parent test.
        .filter(|(n, _)| (*n == devkit2::CRYPTO_CHILD) == child)
        .collect();
    println!(
        "\nrunning {} tests (one CoreCLR, in this process)",
        selected.len()
    );
    if selected.is_empty() {
        return ExitCode::SUCCESS;
    }
    let rec = Arc::new(Recorder::default());
    let engine = DotNetEngine::new(
        DotNetConfig {
            engine_dir: dn::engine_dir(),
            search: RuntimeSearch {
                dotnet_root: Some(dn::dotnet_root()),
                exe_dir: None,
                system_dirs: Vec::new(),
            },
        },
        rec.clone(),
        8 << 20,
    );
    match engine.start() {
        Ok((rt, took)) => println!(
            "CoreCLR {} from {} started in {took:?}",
            rt.hostfxr_version,
            rt.root.display()
        ),
        Err(e) => {
            let chain = match &e {
                DotNetError::Start(s) => format!(
                    "{e}: {s}: {:?}",
                    std::error::Error::source(&**s as &StartError)
                ),
                _ => e.to_string(),
            };
            eprintln!("cannot start the runtime for the tests: {chain}");
            return ExitCode::FAILURE;
        }
    }
    let env = Env {
        engine,
        rec,
        tmp: tempfile::tempdir().unwrap(),
    };
    let mut failed = Vec::new();
    for (name, f) in selected {
        // A watchdog: a hung worker call fails the run instead of hanging CI.
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let d = done.clone();
        let n = *name;
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(120));
            if !d.load(std::sync::atomic::Ordering::SeqCst) {
                eprintln!("test {n} did not finish within 120 s");
                std::process::exit(101);
            }
        });
        let r = catch_unwind(AssertUnwindSafe(|| f(&env)));
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        match r {
            Ok(()) => println!("test {name} ... ok"),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed.push(*name);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&tmpdir);
    if failed.is_empty() {
        println!("\ntest result: ok");
        ExitCode::SUCCESS
    } else {
        println!("\ntest result: FAILED: {failed:?}");
        ExitCode::FAILURE
    }
}
