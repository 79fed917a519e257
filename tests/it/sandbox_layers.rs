//! The sandbox layers a real daemon gives its hosts (issue 10, part 3): PID namespace,
//! separate uid, seccomp profile, Landlock, as `/v1/hosts`, `/metrics` and the process table
//! show them; `SANDBOX_LANDLOCK=off` and `SANDBOX_REQUIRE`.

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use wm_testkit::daemon::{Daemon, DaemonOptions};
use wm_testkit::native::{Build, Lang};
use wm_testkit::nupkg;

fn echo_package() -> Vec<u8> {
    let so = Build::plugin("chaos", Lang::C, &["chaos.c"]).build();
    nupkg::native(
        "Chaos.Worker",
        "chaos",
        &so,
        "<virtufinLibrary>chaos</virtufinLibrary>",
    )
}

fn start_worker(d: &Daemon, topic: &str) -> String {
    let body = json!({
        "mimeType": "application/x-native-dll",
        "topic": topic,
        "codeSource": {"content": base64::engine::general_purpose::STANDARD.encode(echo_package())},
    });
    let r = d.send_json("POST", "/v1/workers", &body);
    assert_eq!(r.status, 201, "create: {}", r.text());
    let id = r.json()["id"].as_str().expect("worker id").to_string();
    let r = d.post(&format!("/v1/workers/{id}/start"));
    assert!(r.status < 300, "start: {} {}", r.status, r.text());
    id
}

/// The host carrying `worker`, once it is up.
fn host_of(d: &Daemon, worker: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let hosts = d.get("/v1/hosts").json();
        if let Some(h) = hosts["hosts"].as_array().and_then(|a| {
            a.iter()
                .find(|h| {
                    h["workers"]
                        .as_array()
                        .is_some_and(|w| w.iter().any(|x| x == worker))
                        && h["pid"].is_number()
                })
                .cloned()
        }) {
            return h;
        }
        assert!(Instant::now() < deadline, "no host for {worker}: {hosts}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `Uid:` (real) and the `NSpid:` chain of a process.
fn status_of(pid: i64) -> (u32, Vec<i64>) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("host status");
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_default()
            .split_whitespace()
            .map(|v| v.parse::<i64>().unwrap_or(-1))
            .collect::<Vec<_>>()
    };
    (field("Uid:")[0] as u32, field("NSpid:"))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn hosts_run_in_their_own_pid_namespace_as_the_host_uid_with_every_layer() {
    let d = Daemon::start(DaemonOptions::default());
    let id = start_worker(&d, "sandbox.layers");
    let h = host_of(&d, &id);
    let sandbox = &h["sandbox"];
    assert_eq!(sandbox["seccomp"], "native", "{h}");
    let pid = h["pid"].as_i64().expect("pid");
    let (uid, nspid) = status_of(pid);
    if is_root() {
        // A root daemon: a PID namespace (the host is pid 1 inside), the unprivileged
        // HOST_UID default, and /v1/hosts says so.
        assert_eq!(
            nspid.len(),
            2,
            "NSpid of a host in its own namespace: {nspid:?}"
        );
        assert_eq!(nspid[1], 1, "the host is pid 1 of its namespace: {nspid:?}");
        assert_eq!(uid, 65534, "hosts run as HOST_UID");
        assert_eq!(sandbox["uid"], 65534, "{h}");
        let layers: Vec<&str> = sandbox["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for l in ["seccomp", "pidns", "netns", "uid"] {
            assert!(layers.contains(&l), "{l} missing: {h}");
        }
        assert!(
            sandbox["namespaces"]
                .as_array()
                .is_some_and(|n| n.iter().any(|x| x == "pid")),
            "{h}"
        );
    }
    let metrics = d.get("/metrics").text();
    assert!(
        metrics.contains("workmanager_sandbox_layer{layer=\"seccomp\"} 1"),
        "{metrics}"
    );
    // Where the kernel has Landlock, the host says it took effect, with its ABI.
    if metrics.contains("workmanager_sandbox_layer{layer=\"landlock\"} 1") {
        let log = d.log();
        let said: Vec<&str> = log.lines().filter(|l| l.contains("landlock")).collect();
        assert!(
            sandbox["landlockAbi"].as_u64().is_some_and(|v| v >= 1),
            "{h}\n{said:#?}"
        );
    }
    // The worker answers from inside all of that.
    let r = d.send_json(
        "POST",
        &format!("/v1/workers/{id}/invoke"),
        &json!({"specversion": "1.0", "id": "e1", "source": "urn:t", "type": "t",
                "datacontenttype": "text/plain", "data": "hello"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn sandbox_landlock_off_leaves_landlock_out_and_the_rest_in() {
    let d = Daemon::start(DaemonOptions::default().env("SANDBOX_LANDLOCK", "off"));
    let id = start_worker(&d, "sandbox.nolandlock");
    let h = host_of(&d, &id);
    assert!(h["sandbox"]["landlockAbi"].is_null(), "{h}");
    assert_eq!(h["sandbox"]["seccomp"], "native", "{h}");
    let metrics = d.get("/metrics").text();
    assert!(
        metrics.contains("workmanager_sandbox_layer{layer=\"landlock\"} 0"),
        "{metrics}"
    );
    assert!(d.log().contains("SANDBOX_LANDLOCK=off"), "{}", d.log());
}

#[test]
fn sandbox_require_refuses_unknown_or_unavailable_layers() {
    let mut opts = DaemonOptions::default().env("SANDBOX_REQUIRE", "landlock,teleport");
    opts.no_wait = true;
    let mut d = Daemon::start(opts);
    let st = d.wait_exit();
    assert!(!st.success());
    let log = d.log();
    assert!(
        log.contains("SANDBOX_REQUIRE") && log.contains("teleport"),
        "{log}"
    );

    // Landlock required but switched off: refused at start, naming the layer.
    let mut opts = DaemonOptions::default()
        .env("SANDBOX_REQUIRE", "landlock")
        .env("SANDBOX_LANDLOCK", "off");
    opts.no_wait = true;
    let mut d = Daemon::start(opts);
    let st = d.wait_exit();
    assert!(!st.success());
    let log = d.log();
    assert!(log.contains("'landlock'"), "{log}");
}

fn worker_package() -> Vec<u8> {
    let so = Build::plugin("worker", Lang::C, &["worker.c"]).build();
    nupkg::native(
        "Sandbox.Worker",
        "worker",
        &so,
        "<virtufinLibrary>worker</virtufinLibrary>",
    )
}

fn invoke(d: &Daemon, id: &str, ty: &str) -> wm_testkit::daemon::http::Response {
    d.send_json(
        "POST",
        &format!("/v1/workers/{id}/invoke"),
        &json!({"specversion": "1.0", "id": format!("e-{ty}"), "source": "urn:t", "type": ty,
                "datacontenttype": "text/plain", "data": "x"}),
    )
}

/// Through the daemon (the host is pid 1 of its namespace there, where signals it sends
/// itself are ignored): a forbidden syscall still ends the host, the caller is told which
/// syscall and which worker, and the neighbour on the same host answers after the respawn.
#[test]
fn a_forbidden_syscall_ends_the_host_and_the_caller_learns_the_syscall_and_worker() {
    let d = Daemon::start(DaemonOptions::default().env("HOST_RESPAWN_BACKOFF_MS", "20"));
    let daemon_pid = d.pid();
    let body = json!({
        "mimeType": "application/x-native-dll",
        "topic": "sandbox.bad",
        "codeSource": {"content": base64::engine::general_purpose::STANDARD.encode(worker_package())},
    });
    let r = d.send_json("POST", "/v1/workers", &body);
    assert_eq!(r.status, 201, "{}", r.text());
    let bad = r.json()["id"].as_str().expect("id").to_string();
    assert!(d.post(&format!("/v1/workers/{bad}/start")).status < 300);
    let good = start_worker(&d, "sandbox.good");
    let before = host_of(&d, &good)["pid"].as_i64();

    let r = invoke(&d, &bad, "syscalls");
    assert!(r.status >= 400, "{} {}", r.status, r.text());
    let text = r.text();
    assert!(
        text.contains("called socket(2), which the sandbox forbids") && text.contains(&bad),
        "{text}"
    );
    assert_eq!(d.pid(), daemon_pid, "the daemon lives on");
    // The shared host was respawned; the neighbour answers from the new one.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = invoke(&d, &good, "echo");
        if r.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "neighbour: {} {}",
            r.status,
            r.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_ne!(
        host_of(&d, &good)["pid"].as_i64(),
        before,
        "a new host process"
    );
}
