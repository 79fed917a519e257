//! The original's worker surface (DevKit 2.x over `CloudNative.CloudEvents`), static workers and
//! the C# source engine, in the engine test process (see `dotnet_engine.rs`).

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use wm_shared::CloudEvent;
use wm_testkit::dotnet as dn;
use workmanager_host_runner::engine::dotnet::{DotNetWorker, Outcome};

use super::{Env, event, text, unique};

fn json_event(id: &str, data: &str) -> CloudEvent {
    let mut e = CloudEvent::new(id, "orders.request", "urn:test");
    e.datacontenttype = Some("application/json".into());
    e.data = Some(data.as_bytes().to_vec());
    e.set_extension("correlationid", format!("corr-{id}"))
        .unwrap();
    e
}

fn payload(r: &CloudEvent) -> Value {
    serde_json::from_slice(r.data.as_deref().unwrap_or_default()).unwrap()
}

pub fn a_command_worker_from_the_original_docs_runs(env: &Env) {
    let dll = dn::build_library_v2("OrderWorker", &["OrderWorker.cs"], &[]);
    let w = env.load("orders", &dll, &[]).unwrap();
    let r = env.reply(
        &w,
        1,
        &json_event("o1", r#"{"command":"create","item":"tea"}"#),
    );
    // BuildResponse: source, type, a new id, time set, correlationid copied.
    assert_eq!(r.source, "urn:virtufin:orders");
    assert_eq!(r.ty, "orders.response");
    assert_ne!(r.id, "o1");
    assert!(r.time.is_some(), "BuildResponse sets time");
    assert_eq!(r.extension("correlationid"), Some("corr-o1"));
    assert_eq!(r.datacontenttype.as_deref(), Some("application/json"));
    let v = payload(&r);
    assert_eq!(v["command"], "create");
    assert_eq!(v["success"], true);
    assert_eq!(v["id"], "order-tea-1");
    assert_eq!(v["message"], "created");
    // Command names are case-insensitive; typed payload objects go out as JSON.
    let v = payload(&env.reply(
        &w,
        2,
        &json_event("o2", r#"{"command":"GET","id":"x7","quantity":3}"#),
    ));
    assert_eq!(
        (
            v["Id"].as_str(),
            v["Status"].as_str(),
            v["Quantity"].as_i64()
        ),
        (Some("x7"), Some("open"), Some(3))
    );
    // Every documented error text, as an error envelope reply.
    for (data, message) in [
        (r#"{"command":"dance"}"#, "Unknown command: dance"),
        (r#"{"item":"tea"}"#, "Missing 'command' field"),
        (r#"{"command":7}"#, "Missing 'command' field"),
        ("{not json", "Failed to parse command JSON"),
        (
            r#"{"command":"fail"}"#,
            "Internal error: the order store is down",
        ),
    ] {
        let r = env.reply(&w, 3, &json_event("e", data));
        let v = payload(&r);
        assert_eq!(v["command"], "error", "{data}: {v}");
        assert_eq!(v["success"], false, "{data}: {v}");
        assert_eq!(v["message"], message, "{data}");
        assert_eq!(r.extension("correlationid"), Some("corr-e"));
    }
    assert_eq!(
        env.call(&w, 4, &json_event("s", r#"{"command":"silent"}"#)),
        Outcome::NoReply
    );
    // The constructor-made instance keeps state.
    let v = payload(&env.reply(
        &w,
        5,
        &json_event("o3", r#"{"command":"create","item":"tea"}"#),
    ));
    assert_eq!(v["id"], "order-tea-2");
    assert!(
        env.rec
            .logs
            .lock()
            .unwrap()
            .iter()
            .any(|(wid, msg, _, m)| wid == "orders" && *msg == 1 && m == "order for tea"),
        "WorkerContext.Log reaches the host"
    );
    env.engine.unload(w).unwrap();
}

pub fn a_static_process_async_is_a_worker(env: &Env) {
    let dll = dn::build_library_v2("StaticEcho", &["StaticEcho.cs"], &[]);
    let w = env.load("static", &dll, &[]).unwrap();
    let mut ev = event("s1", "ping");
    ev.set_extension("correlationid", "k").unwrap();
    let r = env.reply(&w, 1, &ev);
    assert_eq!(r.id, "static-s1");
    assert_eq!(r.ty, "static.reply");
    assert_eq!(text(&r), "static ping #1");
    assert_eq!(r.extension("correlationid"), Some("k"));
    assert_eq!(text(&env.reply(&w, 2, &ev)), "static ping #2");
    env.engine.unload(w).unwrap();
}

/// Writes `tests/fixtures/csharp/<file>` as `worker.cs` into a fresh folder.
fn source_dir(env: &Env, file: &str) -> std::path::PathBuf {
    let src = wm_testkit::fixtures_src("csharp").join(file);
    let dir = env.tmp.path().join(format!("cs-{}", unique()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&src, dir.join("worker.cs")).unwrap();
    dir
}

fn load_source(env: &Env, id: &str, dir: &Path) -> Result<DotNetWorker, String> {
    env.engine
        .load(id, dir, "worker.cs", Duration::from_secs(5))
        .map_err(|e| e.to_string())
}

fn logs_of(env: &Env, id: &str) -> Vec<String> {
    env.rec
        .logs
        .lock()
        .unwrap()
        .iter()
        .filter(|(w, ..)| w == id)
        .map(|(.., m)| m.clone())
        .collect()
}

pub fn csharp_source_compiles_runs_and_reuses_its_image(env: &Env) {
    let dir = source_dir(env, "Greeter.cs");
    // Validate-only: compiled, the entry found, nothing created.
    let v = env
        .engine
        .load_with(
            "greeter-check",
            &dir,
            "worker.cs",
            "",
            Duration::from_secs(5),
            true,
        )
        .unwrap();
    assert!(
        logs_of(env, "greeter-check")
            .iter()
            .any(|m| m.contains("compiled in")),
        "{:?}",
        logs_of(env, "greeter-check")
    );
    assert!(
        matches!(env.call(&v, 1, &event("x", "y")), Outcome::Failed(t) if t.contains("validation only"))
    );
    env.engine.unload(v).unwrap();

    let w = load_source(env, "greeter", &dir).unwrap();
    assert!(
        logs_of(env, "greeter")
            .iter()
            .any(|m| m.contains("from this host's earlier compile")),
        "the second load in one host reuses its image: {:?}",
        logs_of(env, "greeter")
    );
    let mut ev = event("g1", "world");
    ev.set_extension("correlationid", "c1").unwrap();
    let r = env.reply(&w, 1, &ev);
    assert_eq!(
        (r.id.as_str(), r.ty.as_str(), text(&r).as_str()),
        ("greet-g1", "greeter.reply", "hello world #1")
    );
    assert_eq!(r.extension("correlationid"), Some("c1"));
    assert_eq!(text(&env.reply(&w, 2, &ev)), "hello world #2");
    assert_eq!(env.call(&w, 3, &event("q", "quiet")), Outcome::NoReply);
    env.engine.unload(w).unwrap();

    // What the supervisor does after a load: the host's image into the source's folder. A
    // load from there (another host, a respawn) maps it instead of compiling.
    let tmp = std::path::PathBuf::from(std::env::var("TMPDIR").unwrap()).join("csharp");
    let image = std::fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "dll"))
        .expect("the host's compiled image");
    let cached = dir.join(image.file_name().unwrap());
    std::fs::copy(&image, &cached).unwrap();
    let w = load_source(env, "greeter-cached", &dir).unwrap();
    assert!(
        logs_of(env, "greeter-cached")
            .iter()
            .any(|m| m.contains("from the cache")),
        "{:?}",
        logs_of(env, "greeter-cached")
    );
    assert_eq!(text(&env.reply(&w, 1, &ev)), "hello world #1");
    env.engine.unload(w).unwrap();
}

pub fn csharp_compile_errors_list_every_diagnostic(env: &Env) {
    let dir = source_dir(env, "ThreeErrors.cs");
    let err = load_source(env, "broken", &dir).unwrap_err();
    assert!(
        err.contains("the C# source does not compile (3 errors):"),
        "{err}"
    );
    for want in [
        "error CS0103: The name 'undefinedName' does not exist in the current context (line 8, col 17)",
        "error CS0029: Cannot implicitly convert type 'string' to 'int' (line 9, col 17)",
        "(line 10, col 15)",
    ] {
        assert!(err.contains(want), "missing {want:?} in {err}");
    }
    assert!(err.contains("error CS1061"), "{err}");
}

pub fn csharp_source_exceptions_are_worker_exceptions(env: &Env) {
    let dir = source_dir(env, "Throws.cs");
    let w = load_source(env, "thrower", &dir).unwrap();
    match env.call(&w, 1, &event("t1", "x")) {
        Outcome::WorkerException(t) => {
            assert!(
                t.contains("System.InvalidOperationException: source worker refuses t1"),
                "{t}"
            );
        }
        other => panic!("expected a worker exception, got {other:?}"),
    }
    env.engine.unload(w).unwrap();
}

/// In a child process of its own: a worker that hit the guard is not collected after unload
/// (see OpenSslGuard.cs), which `unloaded_workers_are_collected` would count.
pub fn cryptography_without_openssl_1_is_an_exception_not_an_abort(_env: &Env) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .arg(CRYPTO_CHILD)
        .env(CRYPTO_CHILD_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(&format!("test {CRYPTO_CHILD} ... ok")),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The child's test name and the variable that lets it run.
pub const CRYPTO_CHILD: &str = "crypto_child_guarded_call";
pub const CRYPTO_CHILD_ENV: &str = "WM_DOTNET_ENGINE_CRYPTO_CHILD";

/// .NET Core 3.1's cryptography needs OpenSSL 1.x; without it (Debian 12) its shim would abort
/// the whole host. The bridge's guard turns that into an exception for the calling worker, and
/// the process (this test binary) lives on.
pub fn crypto_child_guarded_call(env: &Env) {
    let dir = source_dir(env, "Hashes.cs");
    let w = load_source(env, "hasher", &dir).unwrap();
    let have_openssl1 = [
        "libssl.so.1.1",
        "libssl.so.1.0.2",
        "libssl.so.1.0.0",
        "libssl.so.10",
    ]
    .iter()
    .any(|n| {
        let c = std::ffi::CString::new(*n).unwrap();
        // SAFETY: dlopen with a NUL-terminated name; the handle is closed right away.
        unsafe {
            let h = libc::dlopen(c.as_ptr(), libc::RTLD_LAZY);
            if !h.is_null() {
                libc::dlclose(h);
            }
            !h.is_null()
        }
    });
    for msg in 1..=2 {
        match env.call(&w, msg, &event("h1", "abc")) {
            Outcome::Reply(_) => assert!(have_openssl1, "a reply without OpenSSL 1.x?"),
            Outcome::WorkerException(t) => {
                assert!(!have_openssl1, "{t}");
                assert!(t.contains("needs OpenSSL 1.x"), "{t}");
            }
            other => panic!("expected a reply or a worker exception, got {other:?}"),
        }
    }
    env.engine.unload(w).unwrap();
}

pub fn an_api_command_worker_calls_through_the_gateway(env: &Env) {
    let dll = dn::build_library_v2("ApiOrders", &["ApiOrders.cs"], &[]);
    let w = env.load("api-orders", &dll, &[]).unwrap();
    let r = env.reply(
        &w,
        7,
        &json_event(
            "a1",
            r#"{"command":"lookup","id":"o-9","api_host":"gw.local"}"#,
        ),
    );
    let v = payload(&r);
    assert_eq!(v["success"], true, "{v}");
    assert_eq!(v["id"], "gw.local:5002", "{v}");
    assert_eq!(v["message"], r#"gw:{"id":"o-9"}"#, "{v}");
    let calls = env.rec.gateway.lock().unwrap();
    assert!(
        calls
            .iter()
            .any(|(wid, msg, svc, method, body)| wid == "api-orders"
                && *msg == 7
                && svc == "echo-service"
                && method == "lookup"
                && body == br#"{"id":"o-9"}"#),
        "the call went through gateway_call of message 7"
    );
    drop(calls);
    env.engine.unload(w).unwrap();
}
