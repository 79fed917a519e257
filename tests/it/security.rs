//! Control-plane security (issue 11) against the real daemon: the insecure-remote refusal,
//! Unix socket listeners, tokens from `workmanager token create`, scopes, rate limits, the
//! browser guards, per-route body limits, the audit topic, TLS and mTLS with certificates made
//! here by rcgen, and the TLS reload on SIGHUP.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use wm_testkit::daemon::{Daemon, DaemonOptions, workmanager_bin};
use wm_testkit::sse::Sse;

fn entry(name: &str, token: &str, scopes: &str) -> String {
    format!("{name}:{}:{scopes}", crate::api::sha256(token.as_bytes()))
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

// SAFETY of the two calls below: getuid/getgid have no preconditions and cannot fail.
fn uid() -> u32 {
    // SAFETY: getuid(2) takes no arguments, touches no memory and always succeeds.
    unsafe { libc::getuid() }
}

fn gid() -> u32 {
    // SAFETY: getgid(2) takes no arguments, touches no memory and always succeeds.
    unsafe { libc::getgid() }
}

#[test]
fn non_loopback_listener_is_refused_without_tls_and_tokens() {
    let mut d = Daemon::start(DaemonOptions {
        no_wait: true,
        ..DaemonOptions::default().listen("0.0.0.0:0")
    });
    let status = d.wait_exit();
    assert_eq!(status.code(), Some(1), "{}", d.log());
    let log = d.log();
    assert!(log.contains("--allow-insecure-remote"), "{log}");
    assert!(log.contains("without TLS and authentication"), "{log}");

    // The override starts it, with a warning at start.
    let d = Daemon::start(
        DaemonOptions::default()
            .listen("0.0.0.0:0")
            .arg("--allow-insecure-remote"),
    );
    assert_eq!(d.get("/health/live").status, 200);
    assert!(
        d.log()
            .contains("--allow-insecure-remote: serving a non-loopback address"),
        "{}",
        d.log()
    );
}

#[test]
fn unix_socket_is_0660_in_its_group_and_authorises_by_peer_uid() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let unix = format!("unix:{}", sock.display());
    let admin = "admin-token-0123456789";
    let opts = DaemonOptions::default()
        .listen("127.0.0.1:0")
        .listen(&unix)
        .env("WORKMANAGER_API_TOKENS", &entry("ci", admin, "admin"))
        .env("WORKMANAGER_UNIX_SOCKET_GROUP", &gid().to_string());
    let mut d = Daemon::start(opts.clone());
    // listen.addr keeps its one-address form; listen.addrs lists every listener.
    let first = std::fs::read_to_string(d.data_dir().join("listen.addr")).unwrap();
    assert_eq!(first, format!("{}\n", d.addr()));
    let all = std::fs::read_to_string(d.data_dir().join("listen.addrs")).unwrap();
    assert_eq!(all, format!("{}\n{unix}\n", d.addr()));
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), gid());
    // TCP needs the token; the socket's permissions are the boundary.
    assert_eq!(d.get("/v1/workers").status, 401);
    assert_eq!(d.request_unix("GET", "/v1/workers", &[], b"").status, 200);
    assert_eq!(
        d.request_unix("POST", "/v1/workers/recover", &[], b"")
            .status,
        200
    );
    assert!(
        d.log().contains(&format!("uid:{}", uid())),
        "the audit names the peer uid: {}",
        d.log()
    );
    // A crashed daemon leaves its socket file; the next one replaces it.
    d.kill9();
    assert!(sock.exists());
    let d = Daemon::start(
        opts.clone()
            .env("WORKMANAGER_UNIX_PEER_SCOPES", &format!("{}=read", uid())),
    );
    assert_eq!(d.request_unix("GET", "/v1/workers", &[], b"").status, 200);
    let r = d.request_unix("POST", "/v1/workers/recover", &[], b"");
    assert_eq!((r.status, r.error_code().as_str()), (403, "forbidden"));
    assert!(r.text().contains("'admin'"), "{}", r.text());
    drop(d);
    // An unmapped uid has no scope at all.
    let d = Daemon::start(opts.env("WORKMANAGER_UNIX_PEER_SCOPES", "4000000000=admin"));
    assert_eq!(d.request_unix("GET", "/v1/workers", &[], b"").status, 403);
    // A clean stop removes the socket file.
    let mut d = d;
    assert!(d.stop().success());
    assert!(!sock.exists());
}

#[test]
fn tokens_from_the_cli_scopes_and_rate_limits() {
    let out = Command::new(workmanager_bin())
        .args([
            "token", "create", "--name", "ci", "--scope", "admin", "read",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let mut lines = stdout.lines();
    let token = lines.next().unwrap().trim().to_owned();
    let line = entry("ci", &token, "admin read");
    assert_eq!(
        lines.next(),
        Some(format!("WORKMANAGER_API_TOKENS = [\"{line}\"]").as_str()),
        "{stdout}"
    );
    let bad = Command::new(workmanager_bin())
        .args(["token", "create", "--name", "x", "--scope", "root"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));

    let team = "team-token-0123456789";
    let d = Daemon::start(
        DaemonOptions::default()
            .env(
                "WORKMANAGER_API_TOKENS",
                &format!("{line},{}", entry("team", team, "publish:orders.*")),
            )
            .env("WORKMANAGER_RATE_LIMIT_PER_SECOND", "2")
            .env("WORKMANAGER_RATE_LIMIT_BURST", "3"),
    );
    let r = d.get("/v1/workers");
    assert_eq!((r.status, r.error_code().as_str()), (401, "unauthorized"));
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert_eq!(d.get("/health").status, 200);
    let ev = json!({"specversion": "1.0", "id": "1", "source": "urn:t", "type": "t"});
    let publish = |topic: &str| {
        d.request(
            "POST",
            &format!("/v1/topics/{topic}/events"),
            &[
                ("authorization", &bearer(team)),
                ("content-type", "application/cloudevents+json"),
            ],
            ev.to_string().as_bytes(),
        )
    };
    assert_eq!(publish("orders.eu").status, 202);
    let r = publish("payments");
    assert_eq!((r.status, r.error_code().as_str()), (403, "forbidden"));
    assert!(r.text().contains("publish:payments"), "{}", r.text());
    assert!(r.text().contains("token:team"), "{}", r.text());
    // The admin token: a burst of 3, then 2 per second; the 429 says when to come back.
    let auth = bearer(&token);
    let statuses: Vec<_> = (0..8)
        .map(|_| d.request("GET", "/v1/workers", &[("authorization", &auth)], b""))
        .collect();
    let limited = statuses
        .iter()
        .find(|r| r.status == 429)
        .unwrap_or_else(|| {
            panic!(
                "no 429 in {:?}",
                statuses.iter().map(|r| r.status).collect::<Vec<_>>()
            )
        });
    assert_eq!(limited.error_code(), "rate_limited");
    let retry: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(statuses[0].status, 200);
    // Other tokens have their own budget.
    assert_eq!(publish("orders.eu").status, 202);
}

#[test]
fn sse_subscriptions_are_capped_per_token() {
    let tok = "sub-token-0123456789";
    let d = Daemon::start(
        DaemonOptions::default()
            .env(
                "WORKMANAGER_API_TOKENS",
                &entry("watcher", tok, "subscribe:orders.*"),
            )
            .env("WORKMANAGER_MAX_SSE_PER_TOKEN", "1"),
    );
    let auth = bearer(tok);
    let first = Sse::subscribe_with(&d.base_url(), "orders.a", &[("authorization", &auth)]);
    let r = d.request(
        "GET",
        "/v1/topics/orders.b/events",
        &[("authorization", &auth)],
        b"",
    );
    assert_eq!((r.status, r.error_code().as_str()), (429, "rate_limited"));
    assert!(r.header("retry-after").is_some());
    drop(first);
    // The slot comes back when the stream closes.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = subscribe_status(&d, &auth);
        if s == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "slot not released: {s}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The status of a subscription attempt (headers only, then the connection is closed).
fn subscribe_status(d: &Daemon, auth: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(d.addr()).unwrap();
    write!(
        s,
        "GET /v1/topics/orders.c/events HTTP/1.1\r\nHost: {}\r\nAuthorization: {auth}\r\n\r\n",
        d.addr()
    )
    .unwrap();
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[9..12]).parse().unwrap_or(0)
}

#[test]
fn browser_requests_are_refused_and_curl_is_not() {
    let d = Daemon::start(DaemonOptions::default());
    // DNS rebinding: a name that resolves to us is not one of ours.
    let port = d.addr().port();
    let evil_host = format!("attacker.example:{port}");
    let r = d.request("GET", "/v1/workers", &[("host", &evil_host)], b"");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (403, "host_not_allowed")
    );
    let local = format!("localhost:{port}");
    assert_eq!(
        d.request("GET", "/v1/workers", &[("host", &local)], b"")
            .status,
        200
    );
    // Cross-site requests of each simple form.
    let origin = ("origin", "https://evil.example");
    for (ct, body) in [
        ("application/x-www-form-urlencoded", &b"a=b"[..]),
        ("multipart/form-data; boundary=x", b"--x--"),
        ("text/plain", b"{}"),
    ] {
        let r = d.request(
            "POST",
            "/v1/topics/orders/events",
            &[origin, ("content-type", ct)],
            body,
        );
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (403, "origin_not_allowed"),
            "{ct}"
        );
        // Without an Origin (a stripped one), the body type alone is refused.
        let r = d.request(
            "POST",
            "/v1/topics/orders/events",
            &[("content-type", ct)],
            body,
        );
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (415, "unsupported_media_type"),
            "{ct}"
        );
    }
    // A publish without a content type is no longer read as JSON.
    let r = d.request("POST", "/v1/topics/orders/events", &[], b"{}");
    assert_eq!(r.status, 415);
    // Body-less POSTs: from a page (Origin, Sec-Fetch-Site) refused, from curl served.
    for path in [
        "/v1/workers/recover",
        "/v1/workers/w-1/start",
        "/v1/workers/w-1/stop",
    ] {
        let r = d.request("POST", path, &[origin], b"");
        assert_eq!(r.status, 403, "{path}");
        let r = d.request("POST", path, &[("sec-fetch-site", "cross-site")], b"");
        assert_eq!(r.status, 403, "{path}");
        let r = d.post(path);
        assert!(r.status == 200 || r.status == 404, "{path}: {}", r.status);
    }
    // GETs with a foreign Origin are refused too (no CORS by default).
    let r = d.request("GET", "/v1/workers", &[origin], b"");
    assert_eq!(r.status, 403);
    assert!(r.header("access-control-allow-origin").is_none());
    // Refusals are counted by code.
    let m = d.get("/metrics").text();
    assert!(
        m.contains("workmanager_api_rejections_total{code=\"host_not_allowed\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("workmanager_api_rejections_total{code=\"origin_not_allowed\"}"),
        "{m}"
    );
    drop(d);

    // An allowed origin gets CORS answers and is served.
    let d = Daemon::start(
        DaemonOptions::default().env("WORKMANAGER_ALLOWED_ORIGINS", "https://ops.example"),
    );
    let r = d.request(
        "OPTIONS",
        "/v1/workers/recover",
        &[
            ("origin", "https://ops.example"),
            ("access-control-request-method", "POST"),
        ],
        b"",
    );
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://ops.example")
    );
    let r = d.request(
        "POST",
        "/v1/workers/recover",
        &[("origin", "https://ops.example")],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn oversize_bodies_are_refused_per_route() {
    let d = Daemon::start(
        DaemonOptions::default()
            .env("PACKAGE_MAX_BYTES", "4096")
            .env("RING_MAX_FRAME_BYTES", "1024"),
    );
    let json = ("content-type", "application/json");
    let cases: [(&str, &str, usize); 7] = [
        ("POST", "/v1/workers", 4096 / 3 * 4 + 65536),
        ("POST", "/v1/workers/w-1/code", 4096 / 3 * 4 + 65536),
        ("PUT", "/v1/workers/w-1/code", 4096),
        ("POST", "/v1/workers/w-1/invoke", 1024 / 3 * 4 + 65536),
        ("POST", "/v1/topics/orders/events", 16 * 1024),
        ("PUT", "/v1/workers/w-1/tags", 65536),
        ("POST", "/v1/workers/w-1/code-from-url", 65536),
    ];
    for (method, path, limit) in cases {
        let over = (limit + 1).to_string();
        let r = d.request(method, path, &[json, ("content-length", &over)], b"");
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (413, "too_large"),
            "{method} {path}"
        );
        assert!(
            r.text().contains(&limit.to_string()),
            "{method} {path}: {}",
            r.text()
        );
        // At the limit the size is not the problem.
        let at = limit.to_string();
        let r = d.request(
            method,
            path,
            &[json, ("content-length", &at)],
            &vec![b' '; limit],
        );
        assert_ne!(r.status, 413, "{method} {path}: {}", r.text());
    }
    // A real oversized package upload (body sent, no early Content-Length trick).
    let r = d.request(
        "PUT",
        "/v1/workers/w-1/code",
        &[("content-type", "application/octet-stream")],
        &vec![0u8; 5000],
    );
    assert_eq!(r.status, 413);
}

#[test]
fn control_plane_changes_are_audited_with_who_worker_and_package() {
    let tok = "audit-admin-0123456789";
    let sock_dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        DaemonOptions::default()
            .env("WORKMANAGER_API_TOKENS", &entry("deployer", tok, "admin"))
            .listen("127.0.0.1:0")
            .listen(&format!("unix:{}", sock_dir.path().join("s").display())),
    );
    let auth = bearer(tok);
    let audit = Sse::subscribe_with(
        &d.base_url(),
        "workmanager.audit",
        &[("authorization", &auth)],
    );
    let pkg = crate::api::package("1.0.0");
    let r = d.request(
        "POST",
        "/v1/workers",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        crate::api::create_body(&pkg).to_string().as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let ev = audit.wait_for(Duration::from_secs(10), "audit of create", |e| {
        e["type"] == "workmanager.audit.create"
    });
    let data = &ev["data"];
    assert_eq!(data["who"], "token:deployer");
    assert_eq!(data["worker_id"], id.as_str());
    assert_eq!(data["package_sha256"], crate::api::sha256(&pkg).as_str());
    assert_eq!(data["status"], 201);
    // Over the socket, the peer uid is the who; the worker id comes from the path.
    let r = d.request_unix("DELETE", &format!("/v1/workers/{id}"), &[], b"");
    assert_eq!(r.status, 204, "{}", r.text());
    let ev = audit.wait_for(Duration::from_secs(10), "audit of delete", |e| {
        e["type"] == "workmanager.audit.delete"
    });
    assert_eq!(ev["data"]["who"], format!("uid:{}", uid()).as_str());
    assert_eq!(ev["data"]["worker_id"], id.as_str());
    assert!(d.log().contains("workmanager::audit"), "{}", d.log());
}

mod tls {
    //! TLS and mTLS with rcgen certificates; a raw HTTP/1.1 client over tokio-rustls.

    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::client::TlsStream;

    struct Pki {
        ca: rcgen::Certificate,
        ca_key: KeyPair,
    }

    impl Pki {
        fn new() -> Pki {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.distinguished_name.push(DnType::CommonName, "test CA");
            let ca_key = KeyPair::generate().unwrap();
            let ca = p.self_signed(&ca_key).unwrap();
            Pki { ca, ca_key }
        }

        /// A leaf signed by the CA: (cert PEM, key PEM, cert DER).
        fn leaf(&self, cn: &str, sans: &[&str]) -> (String, String, Vec<u8>) {
            let mut p =
                CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                    .unwrap();
            p.distinguished_name.push(DnType::CommonName, cn);
            let key = KeyPair::generate().unwrap();
            let cert = p.signed_by(&key, &self.ca, &self.ca_key).unwrap();
            (cert.pem(), key.serialize_pem(), cert.der().to_vec())
        }
    }

    fn client_config(ca_pem: &str, identity: Option<(&str, &str)>) -> Arc<rustls::ClientConfig> {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
            .unwrap();
        let b = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        Arc::new(match identity {
            None => b.with_no_client_auth(),
            Some((cert, key)) => b
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap(),
        })
    }

    async fn connect(
        addr: std::net::SocketAddr,
        cfg: Arc<rustls::ClientConfig>,
    ) -> TlsStream<tokio::net::TcpStream> {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio_rustls::TlsConnector::from(cfg)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap()
    }

    /// One keep-alive request; returns (status, body).
    async fn req(
        s: &mut TlsStream<tokio::net::TcpStream>,
        method: &str,
        path: &str,
        auth: Option<&str>,
    ) -> (u16, String) {
        req_host(s, "localhost", method, path, auth).await
    }

    /// [`req`] with a `Host` header.
    async fn req_host(
        s: &mut TlsStream<tokio::net::TcpStream>,
        host: &str,
        method: &str,
        path: &str,
        auth: Option<&str>,
    ) -> (u16, String) {
        let auth = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        s.write_all(
            format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: 0\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse().unwrap())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    let status = head[9..12].parse().unwrap();
                    let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                    return (status, body);
                }
            }
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn tls_mtls_scopes_and_reload_on_sighup() {
        let pki = Pki::new();
        let ca_pem = pki.ca.pem();
        let (cert1, key1, der1) =
            pki.leaf("server one", &["localhost", "127.0.0.1", "wm.test.example"]);
        let (client_cert, client_key, _) = pki.leaf("deployer", &[]);
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        std::fs::write(p("cert.pem"), &cert1).unwrap();
        std::fs::write(p("key.pem"), &key1).unwrap();
        std::fs::write(p("ca.pem"), &ca_pem).unwrap();
        let admin = "tls-admin-0123456789";
        let opts = DaemonOptions::default()
            .env("WORKMANAGER_TLS_CERT_FILE", p("cert.pem").to_str().unwrap())
            .env("WORKMANAGER_TLS_KEY_FILE", p("key.pem").to_str().unwrap())
            .env(
                "WORKMANAGER_TLS_CLIENT_CA_FILE",
                p("ca.pem").to_str().unwrap(),
            )
            .env("WORKMANAGER_TLS_CLIENT_SCOPES", "deployer=read")
            .env("WORKMANAGER_API_TOKENS", &entry("ci", admin, "admin"));
        let d = tokio::task::spawn_blocking(move || Daemon::start(opts))
            .await
            .unwrap();
        let addr = d.addr();
        // Plain HTTP gets no HTTP answer.
        let plain = wm_testkit::daemon::http::request(addr, "GET", "/health", &[], b"");
        assert!(plain.is_err() || plain.is_ok_and(|r| r.status != 200));

        let anon = client_config(&ca_pem, None);
        let mut c = connect(addr, anon.clone()).await;
        assert_eq!(req(&mut c, "GET", "/health", None).await.0, 200);
        assert_eq!(req(&mut c, "GET", "/v1/workers", None).await.0, 401);
        let auth = bearer(admin);
        assert_eq!(req(&mut c, "GET", "/v1/workers", Some(&auth)).await.0, 200);
        // The certificate's DNS names are the listener's own names for the Host guard.
        let named = req_host(&mut c, "wm.test.example:443", "GET", "/health/live", None).await;
        assert_eq!(named.0, 200, "{}", named.1);
        let (s, body) = req_host(&mut c, "rebound.example", "GET", "/health/live", None).await;
        assert_eq!(s, 403, "{body}\n{}", d.log());
        assert!(body.contains("host_not_allowed"), "{body}");

        // A client certificate: its common name maps to read.
        let with_cert = client_config(&ca_pem, Some((&client_cert, &client_key)));
        let mut m = connect(addr, with_cert).await;
        assert_eq!(req(&mut m, "GET", "/v1/workers", None).await.0, 200);
        let (s, body) = req(&mut m, "POST", "/v1/workers/recover", None).await;
        assert_eq!(s, 403, "{body}");
        assert!(
            body.contains("cert:CN=deployer") && body.contains("'admin'"),
            "{body}"
        );
        // A certificate from another CA is refused at the handshake.
        let other = Pki::new();
        let (oc, ok, _) = other.leaf("deployer", &[]);
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let rogue = tokio_rustls::TlsConnector::from(client_config(&ca_pem, Some((&oc, &ok))))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await;
        if let Ok(mut s) = rogue {
            // TLS 1.3: the refusal arrives after the client's handshake finished.
            let mut b = [0u8; 1];
            let _ = s
                .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .await;
            assert!(s.read(&mut b).await.map(|n| n == 0).unwrap_or(true));
        }

        // SIGHUP: new connections get the new certificate, the open one keeps working.
        assert_eq!(
            c.get_ref().1.peer_certificates().unwrap()[0].as_ref(),
            &der1[..]
        );
        let (cert2, key2, der2) = pki.leaf(
            "server two",
            &["localhost", "127.0.0.1", "wm2.test.example"],
        );
        std::fs::write(p("cert.pem"), &cert2).unwrap();
        std::fs::write(p("key.pem"), &key2).unwrap();
        d.hangup();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !d.log().contains("TLS certificate and key reloaded") {
            assert!(std::time::Instant::now() < deadline, "{}", d.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut n = connect(addr, anon).await;
        assert_eq!(
            n.get_ref().1.peer_certificates().unwrap()[0].as_ref(),
            &der2[..]
        );
        assert_eq!(req(&mut n, "GET", "/health", None).await.0, 200);
        let renamed = req_host(&mut n, "wm2.test.example", "GET", "/health/live", None).await;
        assert_eq!(renamed.0, 200, "{}", renamed.1);
        assert_eq!(req(&mut c, "GET", "/v1/workers", Some(&auth)).await.0, 200);
        drop(d);
    }
}

#[test]
fn packages_need_a_valid_signature_when_trusted_keys_are_set() {
    use wm_testkit::minisign::Signer;
    let signer = Signer::new();
    let other = Signer::new();
    let d =
        Daemon::start(DaemonOptions::default().env("PACKAGE_TRUSTED_KEYS", &signer.public_key()));
    let pkg = crate::api::package("2.0.0");
    let create = |signature: Option<String>| {
        let mut body = crate::api::create_body(&pkg);
        if let Some(s) = signature {
            body["codeSource"]["signature"] = json!(s);
        }
        d.send_json("POST", "/v1/workers", &body)
    };
    let r = create(None);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (422, "invalid_signature")
    );
    assert!(r.text().contains("no signature"), "{}", r.text());
    let r = create(Some(other.sign(&pkg)));
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (422, "invalid_signature")
    );
    assert!(r.text().contains("does not verify"), "{}", r.text());
    let r = create(Some(signer.sign(b"another package")));
    assert_eq!(r.status, 422);
    let r = create(Some(signer.sign(&pkg)));
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    // Reload: raw upload with the signature (base64 of the .minisig) in a header.
    use base64::Engine as _;
    let pkg2 = crate::api::package("2.0.1");
    let path = format!("/v1/workers/{id}/code");
    let octet = ("content-type", "application/octet-stream");
    let r = d.request("PUT", &path, &[octet], &pkg2);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (422, "invalid_signature")
    );
    let sig = base64::engine::general_purpose::STANDARD.encode(signer.sign(&pkg2));
    let r = d.request("PUT", &path, &[octet, ("x-package-signature", &sig)], &pkg2);
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn url_sources_are_verified_with_the_minisig_next_to_them() {
    use wm_testkit::minisign::Signer;
    let signer = Signer::new();
    let pkg = crate::api::package("3.0.0");
    let sig = signer.sign(&pkg).into_bytes();
    let p = pkg.clone();
    let server = crate::api::FileServer::start(move |path| match path {
        "/signed.nupkg" | "/unsigned.nupkg" => (200, vec![], p.clone()),
        "/signed.nupkg.minisig" => (200, vec![], sig.clone()),
        _ => (404, vec![], vec![]),
    });
    let d = Daemon::start(
        DaemonOptions::default()
            .env("PACKAGE_TRUSTED_KEYS", &signer.public_key())
            .env("CODE_SOURCE_ALLOW_PRIVATE_NETWORKS", "true"),
    );
    let body = |name: &str| {
        json!({"mimeType": "application/x-native-dll", "topic": "t",
               "codeSource": {"url": format!("http://127.0.0.1:{}/{name}", server.port)}})
    };
    let r = d.send_json("POST", "/v1/workers", &body("signed.nupkg"));
    assert_eq!(r.status, 201, "{}", r.text());
    let r = d.send_json("POST", "/v1/workers", &body("unsigned.nupkg"));
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (422, "invalid_signature")
    );
    assert!(r.text().contains("unsigned.nupkg.minisig"), "{}", r.text());
}

#[test]
fn a_bad_trusted_key_stops_the_daemon() {
    let mut d = Daemon::start(DaemonOptions {
        no_wait: true,
        ..DaemonOptions::default().env("PACKAGE_TRUSTED_KEYS", "not-a-key")
    });
    assert_eq!(d.wait_exit().code(), Some(1));
    assert!(d.log().contains("PACKAGE_TRUSTED_KEYS"), "{}", d.log());
}
