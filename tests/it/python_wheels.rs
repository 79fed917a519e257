//! Python wheels (`application/x-python`) through the real daemon: dependencies installed by
//! the daemon with pip from a local folder of wheels the test builds (or vendored in the
//! wheel), what the install did in the create response and as `lifecycle.dependencies.*`
//! events, and its failures: a missing project, one `PYTHON_ALLOWED_PACKAGES` does not name,
//! an index that never answers, hostile wheels.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use wm_testkit::daemon::{Daemon, DaemonOptions};
use wm_testkit::sse::Sse;
use wm_testkit::wheel;

const WAIT: Duration = Duration::from_secs(60);

const WHEEL_WORKER: &str = r#"
import tinydep
from helper import greet

def Process(event):
    return {"type": "py.wheel", "data": {"doubled": tinydep.double(event["data"]["n"]),
                                         "greeting": greet("wheel")}}
"#;

const VENDORED_WORKER: &str = r#"
import vendored_dep

def Process(event):
    return {"type": "py.vendored", "data": vendored_dep.VALUE}
"#;

const NOOP: &[u8] = b"def Process(e):\n    return None\n";

fn create_wheel(d: &Daemon, topic: &str, wheel: &[u8]) -> wm_testkit::daemon::http::Response {
    d.send_json(
        "POST",
        "/v1/workers",
        &json!({
            "mimeType": "application/x-python",
            "topic": topic,
            "codeSource": {"content": base64::engine::general_purpose::STANDARD.encode(wheel)},
        }),
    )
}

fn invoke(d: &Daemon, id: &str, n: i64) -> wm_testkit::daemon::http::Response {
    d.send_json(
        "POST",
        &format!("/v1/workers/{id}/invoke"),
        &json!({"specversion": "1.0", "id": format!("w-{n}"), "source": "urn:test",
                "type": "py.in", "datacontenttype": "application/json", "data": {"n": n}}),
    )
}

/// The `lifecycle.dependencies.*` events up to and including the first that `last` matches.
fn events_until(life: &Sse, what: &str, last: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = std::time::Instant::now() + WAIT;
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Some(v) = life.next(left) else {
            panic!("no event matched ({what}) within {WAIT:?}; seen: {out:#?}");
        };
        let ty = v["type"].as_str().unwrap_or_default();
        if !ty.starts_with("com.virtufin.workmanager.lifecycle.dependencies.") {
            continue;
        }
        let done = last(&v);
        out.push(v);
        if done {
            return out;
        }
    }
}

fn step(v: &Value) -> &str {
    v["type"]
        .as_str()
        .and_then(|t| t.rsplit('.').next())
        .unwrap_or_default()
}

/// The one project of a create response's `dependencies` named `name`.
fn project<'a>(body: &'a Value, name: &str) -> &'a Value {
    body["dependencies"]["projects"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("no project {name} in {body:#}"))
}

#[test]
fn python_wheels_get_their_dependencies_from_a_local_index() {
    // The local package folder: small pure-Python projects the test writes and builds, one
    // the allow-list does not name.
    let links = tempfile::tempdir().expect("tempdir");
    for (name, body) in [
        ("tinydep", "def double(x):\n    return 2 * x\n"),
        ("otherdep", "VALUE = 1\n"),
    ] {
        let w = wheel::build(
            name,
            "1.0",
            &[],
            &[(&format!("{name}/__init__.py"), body.as_bytes())],
        );
        std::fs::write(links.path().join(wheel::file_name(name, "1.0")), w).expect("write");
    }
    let d = Daemon::start(
        DaemonOptions::default()
            .env("PYTHON_DEFAULT_INDEX_URL", "none")
            .env("PYTHON_FIND_LINKS", links.path().to_str().expect("utf-8"))
            .env("PYTHON_ALLOWED_PACKAGES", "tinydep,nosuchdep"),
    );
    let life = Sse::subscribe(&d.base_url(), "workmanager.lifecycle");

    // A wheel with a vendored module and a dependency installed by the daemon: the response
    // and the events say what came from where.
    let good = wheel::build(
        "my-worker",
        "1.0",
        &["tinydep (>=1.0)"],
        &[
            ("worker.py", WHEEL_WORKER.as_bytes()),
            ("helper.py", b"def greet(who):\n    return 'hello ' + who\n"),
        ],
    );
    let r = create_wheel(&d, "py.wheel", &good);
    assert_eq!(r.status, 201, "{}", r.text());
    let body = r.json();
    let id = body["id"].as_str().expect("id").to_string();
    let tiny = project(&body, "tinydep");
    assert_eq!(tiny["version"], "1.0", "{body:#}");
    assert_eq!(tiny["source"], "index", "{body:#}");
    assert_eq!(tiny["requested"], true, "{body:#}");
    assert!(
        tiny["url"].as_str().is_some_and(
            |u| u.starts_with("file://") && u.ends_with(&wheel::file_name("tinydep", "1.0"))
        ),
        "{body:#}"
    );
    assert_eq!(body["dependencies"]["requires"], json!(["tinydep (>=1.0)"]));
    assert_eq!(body["dependencies"]["reused"], false);
    assert!(body["dependencies"]["elapsedMs"].is_u64(), "{body:#}");
    let seen = events_until(&life, "the install of my-worker finished", |v| {
        v["data"]["worker_id"] == id.as_str() && step(v) == "finished"
    });
    let steps: Vec<&str> = seen.iter().map(step).collect();
    assert_eq!(steps.first(), Some(&"started"), "{seen:#?}");
    let progress = seen
        .iter()
        .find(|v| step(v) == "progress" && v["data"]["project"] == "tinydep")
        .unwrap_or_else(|| panic!("no progress for tinydep: {seen:#?}"));
    assert_eq!(progress["data"]["step"], "fetching");
    assert_eq!(progress["subject"], format!("worker/{id}"));
    let finished = seen.last().expect("finished");
    assert_eq!(finished["data"]["package"]["name"], "my-worker");
    assert_eq!(finished["data"]["operation"], "create");
    assert_eq!(finished["data"]["projects"][0]["name"], "tinydep");
    assert_eq!(finished["data"]["projects"][0]["source"], "index");
    let r = d.post(&format!("/v1/workers/{id}/start"));
    assert!(r.status < 300, "start: {}", r.text());
    let r = invoke(&d, &id, 21);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["data"],
        json!({"doubled": 42, "greeting": "hello wheel"})
    );

    // The same wheel again: its folder is reused (same sha256), on a create and on a reload
    // of the running worker.
    let r = create_wheel(&d, "py.wheel2", &good);
    assert_eq!(r.status, 201, "{}", r.text());
    let body = r.json();
    assert_eq!(body["dependencies"]["reused"], true, "{body:#}");
    assert_eq!(project(&body, "tinydep")["source"], "cache", "{body:#}");
    let r = d.send_json(
        "POST",
        &format!("/v1/workers/{id}/code"),
        &json!({"codeSource": {"content": base64::engine::general_purpose::STANDARD.encode(&good)}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(project(&body, "tinydep")["source"], "cache", "{body:#}");
    let reload = events_until(&life, "the reload's install finished", |v| {
        v["data"]["worker_id"] == id.as_str()
            && v["data"]["operation"] == "reload"
            && step(v) == "finished"
    });
    assert_eq!(reload.last().expect("finished")["data"]["reused"], true);
    let r = invoke(&d, &id, 4);
    assert_eq!(r.status, 200, "{}", r.text());

    // A dependency vendored in the wheel as a wheel of its own: from the package, without
    // the index and outside the allow-list.
    let vendored = wheel::build(
        "vendored-dep",
        "2.0",
        &[],
        &[("vendored_dep/__init__.py", b"VALUE = 'from the package'\n")],
    );
    let bundle = wheel::build(
        "bundle-worker",
        "1.0",
        &["vendored-dep==2.0"],
        &[
            ("worker.py", VENDORED_WORKER.as_bytes()),
            (
                &format!("wheels/{}", wheel::file_name("vendored-dep", "2.0")),
                &vendored,
            ),
        ],
    );
    let r = create_wheel(&d, "py.vendored", &bundle);
    assert_eq!(r.status, 201, "{}", r.text());
    let body = r.json();
    let v = project(&body, "vendored-dep");
    assert_eq!(
        (&v["source"], &v["version"]),
        (&json!("package"), &json!("2.0")),
        "{body:#}"
    );
    let vid = body["id"].as_str().expect("id").to_string();
    let r = d.post(&format!("/v1/workers/{vid}/start"));
    assert!(r.status < 300, "start: {}", r.text());
    let r = invoke(&d, &vid, 1);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"], "from the package");

    // A dependency no index has: 422 with pip's words, and a failure event naming the
    // package and the project although no worker was created.
    let missing = wheel::build("missing-dep", "1.0", &["nosuchdep"], &[("worker.py", NOOP)]);
    let r = create_wheel(&d, "py.missing", &missing);
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("nosuchdep"), "{}", r.text());
    let failed = events_until(&life, "the failure of missing-dep", |v| {
        v["data"]["package"]["name"] == "missing-dep" && step(v) == "failed"
    });
    let failed = failed.last().expect("failed");
    assert_eq!(failed["data"]["project"], "nosuchdep", "{failed:#}");
    assert_eq!(failed["data"]["error_type"], "dependency_install_failed");
    assert!(
        failed["data"]["error_message"]
            .as_str()
            .is_some_and(|m| m.contains("No matching distribution found for nosuchdep")),
        "{failed:#}"
    );
    let never = failed["data"]["worker_id"].as_str().expect("worker id");
    assert_eq!(d.get(&format!("/v1/workers/{never}")).status, 404);

    // A dependency the allow-list does not name.
    let disallowed = wheel::build(
        "disallowed-dep",
        "1.0",
        &["otherdep"],
        &[("worker.py", NOOP)],
    );
    let r = create_wheel(&d, "py.other", &disallowed);
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(
        r.text().contains("otherdep") && r.text().contains("PYTHON_ALLOWED_PACKAGES"),
        "{}",
        r.text()
    );
    let failed = events_until(&life, "the failure of disallowed-dep", |v| {
        v["data"]["package"]["name"] == "disallowed-dep" && step(v) == "failed"
    });
    let failed = failed.last().expect("failed");
    assert_eq!(failed["data"]["project"], "otherdep", "{failed:#}");
    assert!(
        failed["data"]["error_message"]
            .as_str()
            .is_some_and(|m| m.contains("PYTHON_ALLOWED_PACKAGES")),
        "{failed:#}"
    );

    // Hostile wheels: zip-slip, a decompression bomb, no worker.py.
    let slip = wm_testkit::nupkg::Nupkg::new()
        .file("worker.py", NOOP)
        .file("../escape.py", "print('out')\n")
        .file("x-1.0.dist-info/METADATA", "Name: x\nVersion: 1.0\n")
        .build();
    let r = create_wheel(&d, "py.slip", &slip);
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("escape.py"), "{}", r.text());
    let bomb = wm_testkit::nupkg::Nupkg::new()
        .file("worker.py", NOOP)
        .file("zeros.bin", vec![0u8; 64 << 20])
        .file("x-1.0.dist-info/METADATA", "Name: x\nVersion: 1.0\n")
        .build();
    let r = create_wheel(&d, "py.bomb", &bomb);
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("zeros.bin"), "{}", r.text());
    let r = create_wheel(
        &d,
        "py.noworker",
        &wheel::build("noworker", "1.0", &[], &[("other.py", b"x = 1\n")]),
    );
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("worker.py"), "{}", r.text());
}

#[test]
fn a_python_dependency_install_past_its_timeout_is_refused() {
    // An index that accepts connections and never answers: pip waits until the daemon kills
    // it at PYTHON_DEPENDENCY_INSTALL_TIMEOUT_SECONDS.
    let index = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/simple", index.local_addr().expect("addr"));
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in index.incoming() {
            held.push(s);
        }
    });
    let d = Daemon::start(
        DaemonOptions::default()
            .env("PYTHON_DEFAULT_INDEX_URL", &url)
            .env("PYTHON_DEPENDENCY_INSTALL_TIMEOUT_SECONDS", "2"),
    );
    let life = Sse::subscribe(&d.base_url(), "workmanager.lifecycle");
    let slow = wheel::build("slow-dep", "1.0", &["tinydep"], &[("worker.py", NOOP)]);
    let started = std::time::Instant::now();
    let r = create_wheel(&d, "py.slow", &slow);
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(
        r.text()
            .contains("PYTHON_DEPENDENCY_INSTALL_TIMEOUT_SECONDS"),
        "{}",
        r.text()
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    let seen = events_until(&life, "the timeout of slow-dep", |v| step(v) == "failed");
    let failed = seen.last().expect("failed");
    assert_eq!(failed["data"]["package"]["name"], "slow-dep");
    assert_eq!(failed["data"]["project"], "tinydep", "{seen:#?}");
    assert!(
        failed["data"]["error_message"]
            .as_str()
            .is_some_and(|m| m.contains("longer than 2s")),
        "{failed:#}"
    );
}
