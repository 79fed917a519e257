//! The gRPC API (issue 16) from another language: a Python client generated from
//! `schemas/workmanager.proto` by grpcio-tools (`tests/fixtures/grpc/client.py`) drives all
//! twelve RPCs with their error codes, reflection and health against a real daemon; REST then
//! sees what gRPC did (one control plane), and `POST /v1/gateway/invoke-json` runs the same
//! calls. A second daemon serves gRPC over TLS (ALPN h2) and a Unix socket.
//!
//! Needs `.tools/grpc-python` (scripts/install-deps.sh), or `WM_GRPC_PYTHON` naming a Python
//! with grpcio, grpcio-tools, grpcio-reflection and grpcio-health-checking.

use std::path::PathBuf;
use std::process::Command;

use base64::Engine as _;
use serde_json::{Value, json};
use wm_testkit::daemon::{Daemon, DaemonOptions};
use wm_testkit::native::{Build, Lang};
use wm_testkit::nupkg;

const ADMIN: &str = "grpc-admin-token-0123456789";
const READ: &str = "grpc-read-token-0123456789";

fn python() -> PathBuf {
    let p = std::env::var_os("WM_GRPC_PYTHON").map_or_else(
        || wm_testkit::workspace_root().join(".tools/grpc-python/bin/python"),
        PathBuf::from,
    );
    assert!(
        p.exists(),
        "{} is missing: run scripts/install-deps.sh (it installs grpcio and grpcio-tools into .tools/grpc-python)",
        p.display()
    );
    p
}

fn tokens() -> String {
    let h = |t: &str| {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(t.as_bytes()))
    };
    format!("ops:{}:admin,viewer:{}:read", h(ADMIN), h(READ))
}

fn package(dir: &std::path::Path) -> (Vec<u8>, PathBuf) {
    let so = Build::plugin("chaos", Lang::C, &["chaos.c"]).build();
    let pkg = nupkg::native(
        "Chaos.Worker",
        "chaos",
        &so,
        "<virtufinLibrary>chaos</virtufinLibrary>",
    );
    let path = dir.join("chaos.nupkg");
    std::fs::write(&path, &pkg).unwrap();
    (pkg, path)
}

/// Runs the Python client; returns its JSON summary.
fn run_client(target: &str, package: &std::path::Path, extra: &[&str], quick: bool) -> Value {
    let root = wm_testkit::workspace_root();
    let out = Command::new(python())
        .env(
            "WM_GRPC_UNIX_READ_ONLY",
            if target.starts_with("unix:") {
                "1"
            } else {
                "0"
            },
        )
        .arg(root.join("tests/fixtures/grpc/client.py"))
        .arg(target)
        .arg(root.join("schemas"))
        .arg(package)
        .arg(ADMIN)
        .arg(READ)
        .args(extra)
        .env("WM_GRPC_QUICK", if quick { "1" } else { "0" })
        .output()
        .expect("running the Python gRPC client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the Python gRPC client failed ({}):\n{}\n{stdout}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("no summary ({e}): {stdout}"))
}

fn rest(d: &Daemon, method: &str, path: &str, token: &str, body: Option<&Value>) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
    let mut headers = vec![("Authorization", auth.as_str())];
    if body.is_some() {
        headers.push(("Content-Type", "application/json"));
    }
    let r = d.request(method, path, &headers, &bytes);
    let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    (r.status, v)
}

fn invoke_json(d: &Daemon, token: &str, method: &str, data: Value) -> (u16, Value) {
    let body =
        json!({"service": "workmanager", "method": method, "request_data": data.to_string()});
    rest(d, "POST", "/v1/gateway/invoke-json", token, Some(&body))
}

#[test]
fn python_client_drives_the_twelve_rpcs_and_rest_sees_the_same_workers() {
    let dir = tempfile::tempdir().unwrap();
    let (pkg, pkg_path) = package(dir.path());
    let d = Daemon::start(
        DaemonOptions::default()
            .env("WORKMANAGER_API_TOKENS", &tokens())
            // 127.0.0.1 is allowed (so a dead port is a fetch failure); other hosts are blocked.
            .env("ALLOWED_CODE_SOURCE_HOSTS", "127.0.0.1")
            .env("CODE_SOURCE_ALLOW_PRIVATE_NETWORKS", "true"),
    );
    let target = d.grpc_addr().expect("grpc.addr");
    assert!(target.starts_with("127.0.0.1:"), "{target}");
    let summary = run_client(&target, &pkg_path, &[], false);
    let checks = summary["checks"].as_array().unwrap();
    assert!(checks.len() >= 45, "{summary}");
    for c in ["limits.create", "limits.load_code", "limits.kept"] {
        assert!(checks.iter().any(|x| x == c), "{c} was checked: {summary}");
    }
    let id = summary["keep_id"].as_str().unwrap();

    // REST shows what gRPC did: one control plane.
    let (s, w) = rest(&d, "GET", &format!("/v1/workers/{id}"), READ, None);
    assert_eq!(s, 200, "{w}");
    assert_eq!(w["tags"], json!({"x": "1", "y": "2"}));
    assert_eq!(w["status"], "STOPPED");
    assert_eq!(w["group"], "g1");
    let (_, h) = rest(&d, "GET", &format!("/v1/workers/{id}/history"), READ, None);
    assert_eq!(h["entries"].as_array().unwrap().len(), 2, "{h}");
    let deleted = summary["deleted_id"].as_str().unwrap();
    let (s, _) = rest(&d, "GET", &format!("/v1/workers/{deleted}"), READ, None);
    assert_eq!(s, 404);
    // The changes were audited with the gRPC method and the token's name.
    let log = d.log();
    assert!(
        log.contains("gRPC virtufin.workmanager.WorkManager/CreateWorker")
            && log.contains("token:ops"),
        "{log}"
    );

    // The gateway's REST form of the same calls.
    let (s, r) = invoke_json(&d, READ, "ListWorkers", json!({}));
    assert_eq!(s, 200, "{r}");
    assert_eq!(
        (r["success"].clone(), r["status"].clone()),
        (json!(true), json!("OK")),
        "{r}"
    );
    let data: Value = serde_json::from_str(r["response_data"].as_str().unwrap()).unwrap();
    let w = data["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == id)
        .unwrap_or_else(|| panic!("{data}"));
    assert_eq!(w["status"], "STOPPED");
    assert_eq!(w["mime_type"], "application/x-native-dll");
    assert_eq!(w["tags"], json!({"x": "1", "y": "2"}));

    let (s, r) = invoke_json(&d, READ, "GetTags", json!({"id": deleted}));
    assert_eq!(s, 200);
    assert_eq!(r["success"], false, "{r}");
    assert_eq!(r["status"], "NOT_FOUND");
    assert_eq!(r["error_code"], "not_found");

    let content = base64::engine::general_purpose::STANDARD.encode(&pkg);
    let create = json!({"code_source": {"content": content}, "mime_type": "application/x-native-dll", "topic": "t.gw", "tags": {"via": "gateway"}});
    let (s, r) = invoke_json(&d, READ, "CreateWorker", create.clone());
    assert_eq!(s, 403, "read cannot create through the gateway either: {r}");
    assert_eq!(r["error"]["code"], "forbidden");
    let (s, r) = invoke_json(&d, ADMIN, "CreateWorker", create);
    assert_eq!((s, r["success"].clone()), (200, json!(true)), "{r}");
    let created: Value = serde_json::from_str(r["response_data"].as_str().unwrap()).unwrap();
    let gid = created["id"].as_str().unwrap();
    let (_, r) = invoke_json(&d, READ, "GetTag", json!({"id": gid, "key": "via"}));
    let data: Value = serde_json::from_str(r["response_data"].as_str().unwrap()).unwrap();
    assert_eq!(data["value"], "gateway", "{r}");
    let (_, r) = invoke_json(
        &d,
        ADMIN,
        "CreateWorker",
        json!({"codeSource": {"content": content}, "mimeType": "", "topic": "t.gw"}),
    );
    assert_eq!(r["status"], "INVALID_ARGUMENT", "{r}");
    let (s, r) = invoke_json(&d, ADMIN, "Frobnicate", json!({}));
    assert_eq!(
        (s, r["status"].clone()),
        (200, json!("UNIMPLEMENTED")),
        "{r}"
    );
    let (s, r) = rest(
        &d,
        "POST",
        "/v1/gateway/invoke-json",
        READ,
        Some(&json!({"service": "workmanager"})),
    );
    assert_eq!(s, 400, "a malformed envelope is a REST error: {r}");
}

#[test]
fn grpc_serves_tls_with_h2_and_unix_sockets_with_the_same_tokens() {
    use rcgen::{CertificateParams, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let sock = dir.path().join("grpc.sock");
    let d = Daemon::start(
        DaemonOptions::default()
            .env("WORKMANAGER_API_TOKENS", &tokens())
            .env("WORKMANAGER_TLS_CERT_FILE", cert_file.to_str().unwrap())
            .env("WORKMANAGER_TLS_KEY_FILE", key_file.to_str().unwrap())
            .env(
                "WORKMANAGER_UNIX_PEER_SCOPES",
                // SAFETY: geteuid has no preconditions.
                &format!("{}=read", unsafe { libc::geteuid() }),
            )
            .env(
                "WORKMANAGER_GRPC_LISTEN",
                &format!("127.0.0.1:0,unix:{}", sock.display()),
            ),
    );
    let tcp = d.grpc_addr().expect("grpc.addr");
    let pkg = dir.path().join("unused.nupkg");
    let r = run_client(&tcp, &pkg, &[cert_file.to_str().unwrap()], true);
    assert_eq!(r["workers"], 0, "{r}");
    // Plain text on the TLS port is refused.
    let out = Command::new(python())
        .arg(wm_testkit::workspace_root().join("tests/fixtures/grpc/client.py"))
        .args([tcp.as_str(), "/nonexistent", "/nonexistent", ADMIN, READ])
        .env("WM_GRPC_QUICK", "1")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "plain text must not reach a TLS listener"
    );
    // The Unix socket: the same service, scopes by the peer's uid (here: read only).
    let r = run_client(&format!("unix:{}", sock.display()), &pkg, &[], true);
    assert_eq!(r["workers"], 0, "{r}");
}
