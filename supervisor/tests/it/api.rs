//! The API's handlers through `Router::oneshot` (axum's testing example): shapes, status
//! codes, error bodies and the control plane's state transitions.
//!
//! The runtime here is [`LoadCheck`], a stand-in for the host pool at the `Runtime` seam: it
//! runs no plugin; it checks that the spec points at an extracted package containing the
//! library, and keeps the set of "loaded" workers, so start/stop/reload/recover transitions of
//! the control plane can be tested before the real pool exists. The end-to-end tests in
//! `tests/it/api.rs` (workspace) run the real binary.

use std::collections::HashSet;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine as _;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;
use wm_shared::CloudEvent;
use wm_supervisor::runtime::{
    BoxFuture, EngineInfo, ErrorType, HostInfo, InvokeError, Runtime, RuntimeError,
    WorkerRuntimeInfo, WorkerSpec,
};
use wm_supervisor::{Config, Daemon};

#[derive(Default)]
struct LoadCheck {
    loaded: Mutex<HashSet<String>>,
    starts: Mutex<Vec<String>>,
}

impl Runtime for LoadCheck {
    fn start(&self, spec: WorkerSpec) -> BoxFuture<'_, Result<(), RuntimeError>> {
        Box::pin(async move {
            let lib = spec.package_dir.join(&spec.package.library_path);
            if !lib.is_file() {
                return Err(RuntimeError::LoadFailed {
                    worker: spec.id,
                    message: format!("{} missing", lib.display()),
                });
            }
            self.starts.lock().unwrap().push(spec.id.clone());
            self.loaded.lock().unwrap().insert(spec.id);
            Ok(())
        })
    }
    fn reload(&self, spec: WorkerSpec) -> BoxFuture<'_, Result<(), RuntimeError>> {
        Box::pin(async move {
            if self.loaded.lock().unwrap().contains(&spec.id) {
                Ok(())
            } else {
                Err(RuntimeError::NotLoaded(spec.id))
            }
        })
    }
    fn stop(&self, worker_id: &str) -> BoxFuture<'_, Result<(), RuntimeError>> {
        let id = worker_id.to_owned();
        Box::pin(async move {
            if self.loaded.lock().unwrap().remove(&id) {
                Ok(())
            } else {
                Err(RuntimeError::NotLoaded(id))
            }
        })
    }
    fn invoke(
        &self,
        _worker_id: &str,
        event: CloudEvent,
    ) -> BoxFuture<'_, Result<Option<CloudEvent>, InvokeError>> {
        Box::pin(async move {
            match event.ty.as_str() {
                "noreply" => Ok(None),
                "fail" => Err(InvokeError {
                    error_type: ErrorType::WorkerError,
                    message: "asked to fail".into(),
                }),
                _ => Ok(Some(event)),
            }
        })
    }
    fn worker_info(&self, worker_id: &str) -> Option<WorkerRuntimeInfo> {
        self.loaded
            .lock()
            .unwrap()
            .contains(worker_id)
            .then(|| WorkerRuntimeInfo {
                host_pid: Some(4242),
                ..Default::default()
            })
    }
    fn hosts(&self) -> Vec<HostInfo> {
        Vec::new()
    }
    fn engines(&self) -> Vec<EngineInfo> {
        Vec::new()
    }
    fn shutdown(&self, _deadline: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

struct App {
    router: Router,
    daemon: Daemon,
    runtime: Arc<LoadCheck>,
    _dir: tempfile::TempDir,
}

fn app_with(edit: impl FnOnce(&mut Config)) -> App {
    let dir = tempfile::tempdir().unwrap();
    app_in(dir, edit)
}

fn app_in(dir: tempfile::TempDir, edit: impl FnOnce(&mut Config)) -> App {
    let mut config = Config::defaults_with_data_dir(dir.path().to_path_buf());
    edit(&mut config);
    let runtime = Arc::new(LoadCheck::default());
    let rt = runtime.clone();
    let daemon = Daemon::new(config, move |_| rt as Arc<dyn Runtime>).unwrap();
    App {
        router: daemon.router(),
        daemon,
        runtime,
        _dir: dir,
    }
}

async fn ready_app() -> App {
    let app = app_with(|_| {});
    app.daemon.control().startup_recovery().await.unwrap();
    app
}

async fn send(router: &Router, req: Request<Body>) -> (StatusCode, Value) {
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    (status, v)
}

fn json_req(method: &str, uri: &str, body: &Value) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn empty(method: &str, uri: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .unwrap()
}

fn zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut zw = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default();
    for (name, bytes) in entries {
        zw.start_file(*name, opts).unwrap();
        zw.write_all(bytes).unwrap();
    }
    zw.finish().unwrap().into_inner()
}

fn native_pkg(marker: &[u8]) -> Vec<u8> {
    zip(&[
        (
            "echo.nuspec",
            b"<?xml version=\"1.0\"?><package><metadata><id>echo</id><version>1.0.0</version></metadata></package>",
        ),
        ("runtimes/linux-x64/native/libecho.so", marker),
    ])
}

fn create_body(pkg: &[u8]) -> Value {
    json!({
        "mimeType": "application/x-native-dll",
        "topic": "commands.echo",
        "group": "echo-group",
        "codeSource": { "content": base64::engine::general_purpose::STANDARD.encode(pkg) },
        "config": { "region": "eu" },
        "tags": { "team": "a" },
    })
}

async fn create(app: &App) -> Value {
    let (s, v) = send(
        &app.router,
        json_req("POST", "/v1/workers", &create_body(&native_pkg(b"v1"))),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v
}

fn error_code(v: &Value) -> &str {
    v["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error body: {v}"))
}

#[tokio::test]
async fn every_route_is_in_the_openapi_document() {
    let doc: Value = serde_json::from_str(wm_supervisor::api::health::OPENAPI).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    for route in wm_supervisor::api::route_table() {
        let m = route.method.as_str().to_ascii_lowercase();
        assert!(
            doc["paths"][route.path][&m].is_object(),
            "{} {} is missing from openapi.json",
            route.method,
            route.path
        );
    }
    let app = ready_app().await;
    let (s, v) = send(&app.router, empty("GET", "/openapi.json")).await;
    assert_eq!(s, 200);
    assert_eq!(v, doc);
}

#[tokio::test]
async fn health_is_unready_until_recovery_finished() {
    let app = app_with(|_| {});
    let mut ready = app.daemon.control().ready_watch();
    assert!(!*ready.borrow());
    let (s, v) = send(&app.router, empty("GET", "/health")).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(v["status"], "Degraded");
    assert_eq!(v["entries"]["recovery"]["status"], "Degraded");
    let (s, _) = send(&app.router, empty("GET", "/health/live")).await;
    assert_eq!(s, 200);
    app.daemon.control().startup_recovery().await.unwrap();
    ready.wait_for(|r| *r).await.unwrap();
    let (s, v) = send(&app.router, empty("GET", "/health")).await;
    assert_eq!(s, 200);
    assert_eq!(v["status"], "Healthy");
}

#[tokio::test]
async fn create_shows_the_worker_without_its_code() {
    let app = ready_app().await;
    let pkg = native_pkg(b"v1");
    let v = create(&app).await;
    assert_eq!(v["status"], "STOPPED");
    assert_eq!(v["mimeType"], "application/x-native-dll");
    assert_eq!(v["language"], "Native");
    assert_eq!(v["topic"], "commands.echo");
    assert_eq!(v["group"], "echo-group");
    assert_eq!(v["config"]["region"], "eu");
    assert_eq!(v["tags"]["team"], "a");
    assert_eq!(v["isolation"], "shared");
    assert_eq!(v["messageTimeoutSeconds"], 30);
    assert_eq!(v["maxConcurrency"], 1);
    assert_eq!(v["code"]["source"], "content");
    assert_eq!(v["code"]["size"], pkg.len());
    assert_eq!(
        v["code"]["sha256"],
        wm_supervisor::codestore::sha256_hex(&pkg)
    );
    assert!(v["lastError"].is_null());
    assert!(v["hostPid"].is_null());
    assert!(v.get("content").is_none() && v["code"].get("content").is_none());
    let text = v.to_string();
    assert!(!text.contains(&base64::engine::general_purpose::STANDARD.encode(&pkg)));
    // Stored content-addressed and extracted.
    let sha = v["code"]["sha256"].as_str().unwrap();
    let data = app._dir.path();
    assert_eq!(std::fs::read(data.join("code").join(sha)).unwrap(), pkg);
    assert!(
        data.join("packages")
            .join(sha)
            .join("runtimes/linux-x64/native/libecho.so")
            .is_file()
    );

    let id = v["id"].as_str().unwrap();
    let (s, got) = send(&app.router, empty("GET", &format!("/v1/workers/{id}"))).await;
    assert_eq!(s, 200);
    assert_eq!(got["id"], id);
    let (s, list) = send(&app.router, empty("GET", "/v1/workers")).await;
    assert_eq!(s, 200);
    assert_eq!(list["workers"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn snake_case_input_is_accepted() {
    let app = ready_app().await;
    let body = json!({
        "mime_type": "application/x-native-dll",
        "topic": "t1",
        "code_source": { "content": base64::engine::general_purpose::STANDARD.encode(native_pkg(b"x")) },
        "message_timeout_seconds": 5,
        "max_concurrency": 4,
        "isolation": "dedicated",
    });
    let (s, v) = send(&app.router, json_req("POST", "/v1/workers", &body)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["messageTimeoutSeconds"], 5);
    assert_eq!(v["maxConcurrency"], 4);
    assert_eq!(v["isolation"], "dedicated");
}

#[tokio::test]
async fn create_errors_have_the_documented_codes() {
    let app = app_with(|c| c.max_code_bytes = 2048);
    app.daemon.control().startup_recovery().await.unwrap();
    let r = &app.router;
    let mut body = create_body(&native_pkg(b"x"));
    body["mimeType"] = json!("text/x-cobol");
    let (s, v) = send(r, json_req("POST", "/v1/workers", &body)).await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::BAD_REQUEST, "engine_not_found")
    );

    let bad = Request::builder()
        .method("POST")
        .uri("/v1/workers")
        .header("content-type", "application/json")
        .body(Body::from("{\"mimeType\": "))
        .unwrap();
    let (s, v) = send(r, bad).await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::BAD_REQUEST, "invalid_argument")
    );

    let wrong_type = Request::builder()
        .method("POST")
        .uri("/v1/workers")
        .header("content-type", "text/plain")
        .body(Body::from(create_body(&native_pkg(b"x")).to_string()))
        .unwrap();
    let (s, v) = send(r, wrong_type).await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
    );

    let mut body = create_body(&native_pkg(b"x"));
    body["colour"] = json!("blue");
    let (s, v) = send(r, json_req("POST", "/v1/workers", &body)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("colour"),
        "{v}"
    );

    for (field, value) in [
        ("topic", json!("")),
        ("topic", json!("a/b")),
        ("isolation", json!("solo")),
        ("maxConcurrency", json!(0)),
        ("messageTimeoutSeconds", json!(0)),
        ("config", json!({"Not-Valid": "x"})),
        ("codeSource", json!({})),
        (
            "codeSource",
            json!({"content": "AAAA", "url": "http://example.com/x"}),
        ),
        ("codeSource", json!({"content": "!!not base64!!"})),
        (
            "codeSource",
            json!({"url": "http://example.com/x", "sha256": "abc"}),
        ),
    ] {
        let mut body = create_body(&native_pkg(b"x"));
        body[field] = value.clone();
        let (s, v) = send(r, json_req("POST", "/v1/workers", &body)).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_argument")),
            "{field}={value}: {v}"
        );
    }

    // Every problem of a package at once.
    let broken = zip(&[("lib/../evil.so", b"x"), ("readme.txt", b"hi")]);
    let (s, v) = send(r, json_req("POST", "/v1/workers", &create_body(&broken))).await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_package")
    );
    let details = v["error"]["details"].as_array().unwrap();
    assert!(details.len() >= 2, "{v}");
    let (s, v) = send(
        r,
        json_req("POST", "/v1/workers", &create_body(b"not a zip")),
    )
    .await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_package")
    );

    // Incompressible bytes, so the package itself is over the limit.
    let mut x: u32 = 1;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect();
    let big = native_pkg(&noise);
    let (s, v) = send(r, json_req("POST", "/v1/workers", &create_body(&big))).await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
        "{v}"
    );

    // Nothing of the refused requests was stored.
    let (_, list) = send(r, empty("GET", "/v1/workers")).await;
    assert_eq!(list["workers"], json!([]));
    assert_eq!(
        std::fs::read_dir(app._dir.path().join("code"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test]
async fn unknown_routes_methods_and_ids() {
    let app = ready_app().await;
    let r = &app.router;
    let (s, v) = send(r, empty("GET", "/v2/nothing")).await;
    assert_eq!((s, error_code(&v)), (StatusCode::NOT_FOUND, "not_found"));
    let (s, v) = send(r, empty("GET", "/v1/workers/%FF%FE")).await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::BAD_REQUEST, "invalid_argument")
    );
    let (s, v) = send(r, empty("PATCH", "/v1/workers")).await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
    for (m, p) in [
        ("GET", "/v1/workers/nope"),
        ("DELETE", "/v1/workers/nope"),
        ("POST", "/v1/workers/nope/start"),
        ("POST", "/v1/workers/nope/stop"),
        ("GET", "/v1/workers/nope/history"),
        ("GET", "/v1/workers/nope/tags"),
    ] {
        let (s, v) = send(r, empty(m, p)).await;
        assert_eq!(
            (s, error_code(&v)),
            (StatusCode::NOT_FOUND, "not_found"),
            "{m} {p}"
        );
    }
}

#[tokio::test]
async fn lifecycle_start_stop_delete() {
    let app = ready_app().await;
    let heard = Arc::new(Mutex::new(Vec::new()));
    let h = heard.clone();
    app.daemon
        .control()
        .add_listener(Box::new(move |e| h.lock().unwrap().push(e.kind)));
    let r = &app.router;
    let id = create(&app).await["id"].as_str().unwrap().to_owned();
    let (s, v) = send(r, empty("POST", &format!("/v1/workers/{id}/start"))).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "RUNNING");
    assert_eq!(v["hostPid"], 4242);
    // Idempotent: a second start does not load again.
    let (s, v) = send(r, empty("POST", &format!("/v1/workers/{id}/start"))).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("RUNNING")));
    assert_eq!(app.runtime.starts.lock().unwrap().len(), 1);
    let (s, v) = send(r, empty("POST", &format!("/v1/workers/{id}/stop"))).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("STOPPED")));
    let (s, v) = send(r, empty("POST", &format!("/v1/workers/{id}/stop"))).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("STOPPED")));
    send(r, empty("POST", &format!("/v1/workers/{id}/start"))).await;
    let (s, _) = send(r, empty("DELETE", &format!("/v1/workers/{id}"))).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(
        app.runtime.loaded.lock().unwrap().is_empty(),
        "delete unloads"
    );
    use wm_supervisor::control::ControlEventKind as K;
    // The second stop was a no-op and is not heard.
    assert_eq!(
        *heard.lock().unwrap(),
        [K::Registered, K::Stopped, K::Deleted]
    );
    let (s, _) = send(r, empty("GET", &format!("/v1/workers/{id}"))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn runtime_reported_errors_show_as_error_and_start_resumes() {
    let app = ready_app().await;
    let r = &app.router;
    let id = create(&app).await["id"].as_str().unwrap().to_owned();
    send(r, empty("POST", &format!("/v1/workers/{id}/start"))).await;
    // What the pool does after a crash loop.
    app.runtime.loaded.lock().unwrap().remove(&id);
    app.daemon
        .control()
        .registry()
        .set_status(
            &id,
            wm_supervisor::registry::Status::Error,
            Some(wm_supervisor::registry::LastError {
                error_type: "crash_loop".into(),
                message: "crashed its host 5 times in 60 s".into(),
                at: "2026-01-01T00:00:00.000Z".into(),
            }),
        )
        .unwrap();
    let (_, v) = send(r, empty("GET", &format!("/v1/workers/{id}"))).await;
    assert_eq!(v["status"], "ERROR");
    assert_eq!(v["lastError"]["errorType"], "crash_loop");
    assert!(v["lastError"]["at"].is_string());
    // Recovery leaves ERROR workers alone.
    let (_, v) = send(r, empty("POST", "/v1/workers/recover")).await;
    assert_eq!(v, json!({"recoveredCount": 0}));
    let (s, v) = send(r, empty("POST", &format!("/v1/workers/{id}/start"))).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("RUNNING")));
    assert!(v["lastError"].is_null());
}

#[tokio::test]
async fn invoke_routes_replies_and_errors() {
    let app = ready_app().await;
    let r = &app.router;
    let id = create(&app).await["id"].as_str().unwrap().to_owned();
    let ev = json!({"specversion": "1.0", "id": "1", "type": "ping", "source": "test", "data": {"x": 1}});
    let uri = format!("/v1/workers/{id}/invoke");
    let (s, v) = send(r, json_req("POST", &uri, &ev)).await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::CONFLICT, "conflict"),
        "stopped workers are not invoked"
    );
    send(r, empty("POST", &format!("/v1/workers/{id}/start"))).await;
    let (s, v) = send(r, json_req("POST", &uri, &ev)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["type"], "ping");
    assert_eq!(v["data"]["x"], 1);
    let mut nr = ev.clone();
    nr["type"] = json!("noreply");
    let (s, _) = send(r, json_req("POST", &uri, &nr)).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let mut f = ev.clone();
    f["type"] = json!("fail");
    let (s, v) = send(r, json_req("POST", &uri, &f)).await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::BAD_GATEWAY, "invoke_failed")
    );
    assert_eq!(v["error"]["errorType"], "worker_error");
    let (s, v) = send(r, json_req("POST", &uri, &json!({"id": "1"}))).await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::BAD_REQUEST, "invalid_argument")
    );
}

#[tokio::test]
async fn hot_reload_keeps_history_oldest_first() {
    let app = ready_app().await;
    let r = &app.router;
    let v1 = create(&app).await;
    let id = v1["id"].as_str().unwrap().to_owned();
    send(r, empty("POST", &format!("/v1/workers/{id}/start"))).await;
    let v2pkg = native_pkg(b"v2");
    let body = json!({"codeSource": {"content": base64::engine::general_purpose::STANDARD.encode(&v2pkg)}});
    let (s, v) = send(
        r,
        json_req("POST", &format!("/v1/workers/{id}/code"), &body),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "RUNNING");
    assert_eq!(
        v["code"]["sha256"],
        wm_supervisor::codestore::sha256_hex(&v2pkg)
    );
    let v3pkg = native_pkg(b"v3");
    let put = Request::builder()
        .method("PUT")
        .uri(format!("/v1/workers/{id}/code"))
        .header("content-type", "application/octet-stream")
        .body(Body::from(v3pkg.clone()))
        .unwrap();
    let (s, v) = send(r, put).await;
    assert_eq!(s, 200, "{v}");
    let (s, h) = send(r, empty("GET", &format!("/v1/workers/{id}/history"))).await;
    assert_eq!(s, 200);
    let entries = h["entries"].as_array().unwrap();
    let shas: Vec<&str> = entries
        .iter()
        .map(|e| e["code"]["sha256"].as_str().unwrap())
        .collect();
    assert_eq!(
        shas,
        [
            v1["code"]["sha256"].as_str().unwrap(),
            &wm_supervisor::codestore::sha256_hex(&v2pkg),
            &wm_supervisor::codestore::sha256_hex(&v3pkg)
        ]
    );
    assert_eq!(entries[0]["version"], 1);
    // An invalid package is refused and changes nothing.
    let put = Request::builder()
        .method("PUT")
        .uri(format!("/v1/workers/{id}/code"))
        .header("content-type", "application/octet-stream")
        .body(Body::from("garbage"))
        .unwrap();
    let (s, v) = send(r, put).await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_package")
    );
    let (_, h) = send(r, empty("GET", &format!("/v1/workers/{id}/history"))).await;
    assert_eq!(h["entries"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn tags_limits_and_operations() {
    let app = ready_app().await;
    let r = &app.router;
    let id = create(&app).await["id"].as_str().unwrap().to_owned();
    let base = format!("/v1/workers/{id}/tags");
    let (s, v) = send(r, empty("GET", &base)).await;
    assert_eq!(
        (s, v.clone()),
        (StatusCode::OK, json!({"tags": {"team": "a"}}))
    );
    let (s, v) = send(
        r,
        json_req("PUT", &format!("{base}/env"), &json!({"value": "prod"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = send(r, empty("GET", &format!("{base}/env"))).await;
    assert_eq!(
        (s, v),
        (StatusCode::OK, json!({"key": "env", "value": "prod"}))
    );
    let (s, _) = send(r, empty("DELETE", &format!("{base}/env"))).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = send(r, empty("GET", &format!("{base}/env"))).await;
    assert_eq!((s, error_code(&v)), (StatusCode::NOT_FOUND, "not_found"));

    let long_key = "k".repeat(129);
    let (s, v) = send(
        r,
        json_req("PUT", &format!("{base}/{long_key}"), &json!({"value": "x"})),
    )
    .await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::BAD_REQUEST, "invalid_argument")
    );
    let (s, v) = send(
        r,
        json_req(
            "PUT",
            &format!("{base}/k"),
            &json!({"value": "v".repeat(1025)}),
        ),
    )
    .await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::BAD_REQUEST, "invalid_argument")
    );

    let fifty: serde_json::Map<String, Value> =
        (0..50).map(|i| (format!("k{i}"), json!("v"))).collect();
    let (s, v) = send(r, json_req("PUT", &base, &json!({"tags": fifty}))).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["tags"].as_object().unwrap().len(), 50);
    let (s, v) = send(
        r,
        json_req("PUT", &format!("{base}/one-more"), &json!({"value": "x"})),
    )
    .await;
    assert_eq!((s, error_code(&v)), (StatusCode::CONFLICT, "conflict"));
    // Overwriting an existing key is fine at the limit.
    let (s, _) = send(
        r,
        json_req("PUT", &format!("{base}/k1"), &json!({"value": "y"})),
    )
    .await;
    assert_eq!(s, 200);
    let mut fifty_one = fifty.clone();
    fifty_one.insert("k50".into(), json!("v"));
    let (s, v) = send(r, json_req("PUT", &base, &Value::Object(fifty_one))).await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::BAD_REQUEST, "invalid_argument")
    );
    // Bare map form, empty clears.
    let (s, v) = send(r, json_req("PUT", &base, &json!({}))).await;
    assert_eq!((s, v), (StatusCode::OK, json!({"tags": {}})));
}

#[tokio::test]
async fn bearer_token_guards_all_but_health() {
    let app = app_with(|c| c.api_token = Some("s3cret-token-0123456789".into()));
    app.daemon.control().startup_recovery().await.unwrap();
    let r = &app.router;
    let (s, v) = send(r, empty("GET", "/v1/workers")).await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let wrong = Request::builder()
        .uri("/metrics")
        .header("authorization", "Bearer nope")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(r, wrong).await.0, StatusCode::UNAUTHORIZED);
    let right = Request::builder()
        .uri("/v1/workers")
        .header("authorization", "Bearer s3cret-token-0123456789")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(r, right).await.0, StatusCode::OK);
    assert_eq!(send(r, empty("GET", "/health")).await.0, StatusCode::OK);
    assert_eq!(
        send(r, empty("GET", "/health/live")).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn recovery_restarts_workers_that_were_running() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let open = |recovery_on_start: bool| {
        let mut config = Config::defaults_with_data_dir(path.clone());
        config.recovery_on_start = recovery_on_start;
        let runtime = Arc::new(LoadCheck::default());
        let rt = runtime.clone();
        let daemon = Daemon::new(config, move |_| rt as Arc<dyn Runtime>).unwrap();
        (daemon.router(), daemon, runtime)
    };
    let (router, daemon, _) = open(true);
    daemon.control().startup_recovery().await.unwrap();
    let body = create_body(&native_pkg(b"v1"));
    let (_, a) = send(&router, json_req("POST", "/v1/workers", &body)).await;
    let (_, b) = send(&router, json_req("POST", "/v1/workers", &body)).await;
    let (running, stopped) = (
        a["id"].as_str().unwrap().to_owned(),
        b["id"].as_str().unwrap().to_owned(),
    );
    send(
        &router,
        empty("POST", &format!("/v1/workers/{running}/start")),
    )
    .await;
    drop((router, daemon));

    // Recovery off: nothing is started and the worker shows STOPPED, but keeps its wish to run.
    let (router, daemon, runtime) = open(false);
    assert_eq!(daemon.control().startup_recovery().await.unwrap(), 0);
    assert!(runtime.starts.lock().unwrap().is_empty());
    let (_, v) = send(&router, empty("GET", &format!("/v1/workers/{running}"))).await;
    assert_eq!(v["status"], "STOPPED");
    drop((router, daemon));

    // Recovery on: the worker that was started comes back RUNNING, the other stays STOPPED.
    let (router, daemon, runtime) = open(true);
    assert_eq!(daemon.control().startup_recovery().await.unwrap(), 1);
    assert_eq!(*runtime.starts.lock().unwrap(), vec![running.clone()]);
    let (_, v) = send(&router, empty("GET", &format!("/v1/workers/{running}"))).await;
    assert_eq!(v["status"], "RUNNING");
    let (_, v) = send(&router, empty("GET", &format!("/v1/workers/{stopped}"))).await;
    assert_eq!(v["status"], "STOPPED");
    // A manual recovery finds nothing more to do.
    let (_, v) = send(&router, empty("POST", "/v1/workers/recover")).await;
    assert_eq!(v, json!({"recoveredCount": 0}));
}

#[tokio::test]
async fn metrics_and_pool_views() {
    let app = ready_app().await;
    create(&app).await;
    let resp = app
        .router
        .clone()
        .oneshot(empty("GET", "/metrics"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(
        text.contains("workmanager_http_requests_total{method=\"POST\",status=\"201\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("workmanager_workers{status=\"STOPPED\"} 1"),
        "{text}"
    );
    let (s, v) = send(&app.router, empty("GET", "/v1/hosts")).await;
    assert_eq!((s, v), (StatusCode::OK, json!({"hosts": []})));
    let (s, _) = send(&app.router, empty("GET", "/v1/engines")).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn added_routes_and_metrics_sit_behind_the_same_middleware() {
    let mut app = app_with(|c| c.api_token = Some("s3cret-token-0123456789".into()));
    app.daemon
        .add_routes(Router::new().route("/v1/extra", axum::routing::get(|| async { "extra" })));
    app.daemon
        .add_metrics(|out| out.push_str("workmanager_bus_dropped_total{topic=\"t\"} 0\n"));
    let router = app.daemon.router();
    let metrics = Request::builder()
        .uri("/metrics")
        .header("authorization", "Bearer s3cret-token-0123456789")
        .body(Body::empty())
        .unwrap();
    let (s, v) = send(&router, metrics).await;
    assert_eq!(s, 200);
    assert!(
        v.as_str()
            .unwrap()
            .contains("workmanager_bus_dropped_total{topic=\"t\"} 0")
    );
    let (s, v) = send(&router, empty("GET", "/v1/extra")).await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let ok = Request::builder()
        .uri("/v1/extra")
        .header("authorization", "Bearer s3cret-token-0123456789")
        .body(Body::empty())
        .unwrap();
    let (s, v) = send(&router, ok).await;
    assert_eq!((s, v), (StatusCode::OK, Value::String("extra".into())));
}
